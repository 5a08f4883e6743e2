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
use kernel_emulator::scenario::{self, RunOptions, Target};
use kernel_emulator::suite::{self, SuiteOptions};

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
        /// Scenario name.
        scenario: String,
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
    /// Registry open+close cycles with hivetrack.sys loaded (`--sys`) or without any driver:
    /// prints the time per cycle (the difference is the driver's cost). Figures only.
    BenchHivetrack {
        /// hivetrack.sys; omit to measure the registry model without a driver.
        #[arg(long)]
        sys: Option<PathBuf>,
        /// Measured cycles.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
    },
    /// List the scenarios.
    List,
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
            scenario: name,
        } => {
            let Some(s) = scenario::find(&name) else {
                eprintln!("kernel-emulator: no scenario {name:?} (see `kernel-emulator list`)");
                std::process::exit(64);
            };
            if !sys.is_file() {
                eprintln!("kernel-emulator: {} not found", sys.display());
                std::process::exit(kernel_emulator::bugcheck::EXIT_REFUSED);
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
                },
            )
        }
        Command::Bench {
            test_driver,
            iterations,
        } => kernel_emulator::bench::run(&test_driver, iterations),
        Command::BenchHivetrack { sys, iterations } => {
            kernel_emulator::bench::hivetrack(sys.as_deref(), iterations)
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
