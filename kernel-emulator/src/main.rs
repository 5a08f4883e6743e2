//! `kernel-emulator`: runs a Windows x64 WDM driver (.sys) natively in this Linux process
//! against the emulator's model of ntoskrnl. See README.md.
//!
//! - `kernel-emulator suite --sys hivetrack.sys [--map M] [--test-driver T [--test-driver-map TM]] [SCENARIO...]`
//! - `kernel-emulator run --sys X [--map M] SCENARIO` (one scenario, in this process)
//! - `kernel-emulator run --sys hivetrack.sys --procmon-csv FILE ht-procmon-replay` (replay a
//!   Process Monitor capture; exit 1 when the driver's answers differ from the model's)
//! - `kernel-emulator list`
//!
//! Exit codes: 0 pass, 1 a check failed, 2 the image was refused, 86 bugcheck.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kernel_emulator::harness::scenario::{self, RunOptions, Target};
use kernel_emulator::harness::suite::{self, SuiteOptions};
use kernel_emulator::harness::{bench, sweep};
use kernel_emulator::verifier::bugcheck;
use kernel_emulator::verifier::faults::FaultPolicy;

/// Runs a Windows x64 WDM driver natively against a model of ntoskrnl.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios, each in its own child process; prints `ok NAME` / `FAIL NAME: reason`
    /// and `N passed, M failed`.
    Suite {
        /// hivetrack.sys.
        #[arg(long)]
        sys: PathBuf,
        /// Its linker map (for symbolized reports).
        #[arg(long)]
        map: Option<PathBuf>,
        /// The emulator's test driver (kemu-test-driver.sys).
        #[arg(long)]
        test_driver: Option<PathBuf>,
        /// Its linker map.
        #[arg(long)]
        test_driver_map: Option<PathBuf>,
        /// Print every child's output.
        #[arg(long, short)]
        verbose: bool,
        /// Allocate pool from the ordinary heap instead of special pool.
        #[arg(long)]
        no_special_pool: bool,
        /// Scenarios to run (default: all).
        scenarios: Vec<String>,
    },
    /// Run one scenario in this process (for debugging).
    Run {
        /// The driver image the scenario targets.
        #[arg(long)]
        sys: PathBuf,
        /// Its linker map.
        #[arg(long)]
        map: Option<PathBuf>,
        /// Hide a routine from the loader and `MmGetSystemRoutineAddress` (repeatable; also
        /// `KEMU_HIDE_ROUTINES=A,B`).
        #[arg(long = "hide-routine")]
        hide: Vec<String>,
        /// Allocate pool from the ordinary heap instead of special pool.
        #[arg(long)]
        no_special_pool: bool,
        /// A Process Monitor CSV export to replay (scenarios ht-procmon-replay, which exits 1
        /// when the driver's answers differ from the model's handle table, and td-procmon-replay).
        #[arg(long)]
        procmon_csv: Option<PathBuf>,
        /// A step script to run (scenarios script and td-script).
        #[arg(long)]
        script: Option<PathBuf>,
        /// Fail fallible kernel calls from the start: `nth:K` (the K-th only), `from:K` (the
        /// K-th and every one after); `nth:0` fails none and counts them.
        #[arg(long, value_parser = parse_fault)]
        fault: Option<FaultPolicy>,
        /// A faulted run: the scenario's own checks are reported, not required; leaks,
        /// uninitialised output, silently wrong answers and bugchecks still fail it.
        #[arg(long)]
        faulted: bool,
        /// Scenario name.
        scenario: String,
    },
    /// The systematic sweep: every hivetrack scenario that makes fallible kernel calls, run
    /// again with its K-th call failed (and from its K-th call on), each run in its own
    /// process, each ending in the leak check.
    Sweep {
        /// hivetrack.sys.
        #[arg(long)]
        sys: PathBuf,
        /// Its map.
        #[arg(long)]
        map: Option<PathBuf>,
        /// At most this many runs per scenario and policy (K spread evenly over its calls).
        #[arg(long, default_value_t = 40)]
        max_runs: u64,
        /// Parallel child processes.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Scenarios to sweep (default: every hivetrack scenario not excluded).
        scenarios: Vec<String>,
    },
    /// Print what the emulator's machinery costs (IOCTL round trip, traps, registry
    /// notifications) with the test driver.
    Bench {
        /// The emulator's test driver (kemu-test-driver.sys).
        #[arg(long)]
        test_driver: PathBuf,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// Registry open+close cycles with a driver loaded (`--sys`: hivetrack.sys, or the test
    /// driver for the minimal callback) or without any: prints the time per cycle and the
    /// kernel calls the driver makes per cycle. Figures only.
    BenchHivetrack {
        /// The driver; omit to measure the registry model without one.
        #[arg(long)]
        sys: Option<PathBuf>,
        /// Measured cycles.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// The key opened: `short` (a 50-character path) or `profile` (a real-length
        /// profile path: `\REGISTRY\USER\S-1-5-21-…-1001\Software\…\Explorer\Advanced`).
        #[arg(long, default_value = "short")]
        name: String,
        /// Keep another handle to the key open throughout (its name is then already held).
        #[arg(long)]
        held: bool,
        /// With `--held`: the other handle is another process's, and the measured process
        /// holds nothing else in the hive (hivetrack then files each open through the hive
        /// table, not the holding the process already has).
        #[arg(long, requires = "held")]
        by_other: bool,
        /// Turn hivetrack's open-time stack capture on for every open (issue 16); the
        /// opening thread has a 14-frame user stack.
        #[arg(long)]
        capture: bool,
    },
    /// List the scenarios.
    List,
}

fn parse_fault(s: &str) -> Result<FaultPolicy, String> {
    let (kind, k) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected nth:K or from:K"))?;
    let k: u64 = k.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match kind {
        "nth" => Ok(FaultPolicy::Nth(k)),
        "from" => Ok(FaultPolicy::FromNth(k)),
        _ => Err(format!("{s:?}: expected nth:K or from:K")),
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Suite {
            sys,
            map,
            test_driver,
            test_driver_map,
            verbose,
            no_special_pool,
            scenarios,
        } => suite::run(&SuiteOptions {
            sys,
            map,
            test_driver,
            test_driver_map,
            only: scenarios,
            verbose,
            no_special_pool,
        }),
        Command::Run {
            sys,
            map,
            hide,
            no_special_pool,
            procmon_csv,
            script,
            fault,
            faulted,
            scenario: name,
        } => {
            let Some(s) = scenario::find(&name) else {
                eprintln!("kernel-emulator: no scenario {name:?} (see `kernel-emulator list`)");
                std::process::exit(64);
            };
            if !sys.is_file() {
                eprintln!("kernel-emulator: {} not found", sys.display());
                std::process::exit(bugcheck::EXIT_REFUSED);
            }
            scenario::run_in_process(
                s,
                RunOptions {
                    sys,
                    map,
                    special_pool: !no_special_pool,
                    hide,
                    procmon_csv,
                    script,
                    fault,
                    faulted,
                },
            )
        }
        Command::Sweep {
            sys,
            map,
            max_runs,
            jobs,
            scenarios,
        } => sweep::run(&sweep::SweepOptions {
            sys,
            map,
            max_runs,
            jobs,
            only: scenarios,
        }),
        Command::Bench {
            test_driver,
            iterations,
        } => bench::run(&test_driver, iterations),
        Command::BenchHivetrack {
            sys,
            iterations,
            name,
            held,
            by_other,
            capture,
        } => {
            let holder = bench::Holder::of(held, by_other);
            bench::hivetrack(sys.as_deref(), iterations, &name, holder, capture)
        }
        Command::List => {
            for s in scenario::all() {
                let target = match s.target {
                    Target::Hivetrack => "hivetrack",
                    Target::TestDriver => "test-driver",
                };
                println!(
                    "{:22} {:11} expect exit {:2}  {}",
                    s.name, target, s.expect.exit, s.about
                );
            }
            0
        }
    };
    std::process::exit(code);
}
