//! `cargo xtask`: hivetrack's build orchestrator.
//!
//! - `setup`: installs what the Linux cross build needs (idempotent).
//! - `build`: cross-builds `hivetrack.sys` and `hivetrack.exe` and writes `target/package/`.
//! - `check-image [PATH]`, `check-inf [PATH]`: verify the driver image and the INF.
//! - `emulate [SCENARIO...]`: runs the kernel-emulator suite against the package.
//! - `soak --ops N`, `fuzz-ioctl --inputs N`: the emulator soak and IOCTL fuzz at any size.
//! - `test`: everything CI runs.

mod bench;
mod cross;
mod demo;
mod make_check;
mod messages;
mod profile;
mod setup;
mod soak;
mod sweep;
mod toolchain;
mod util;
mod wdkroot;
mod wine;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xtask::{image, inf};

use crate::{
    cross::CrossEnv,
    util::{cargo, copy, repo_root, run},
};

/// hivetrack build orchestrator.
#[derive(Parser)]
#[command(name = "cargo xtask", about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages and rustup targets the Linux cross build needs.
    Setup,
    /// Cross-build hivetrack.sys and hivetrack.exe into target/package/.
    Build,
    /// Check a driver image (default: target/package/hivetrack.sys and its map).
    CheckImage {
        /// The image to check.
        path: Option<PathBuf>,
        /// The linker map (default: the image's path with .map).
        #[arg(long)]
        map: Option<PathBuf>,
    },
    /// Check an INF (default: driver/hivetrack.inx against target/package/).
    CheckInf {
        /// The INF to check.
        path: Option<PathBuf>,
    },
    /// Run the kernel-emulator suite against target/package/hivetrack.sys.
    Emulate {
        /// Scenarios to run (default: all).
        scenarios: Vec<String>,
    },
    /// Install, start, query, stop and uninstall the package under Wine.
    WineE2e,
    /// Run the Windows `cargo make` flow with the real cargo-make (installed from crates.io
    /// into `~/.cache/hivetrack-tools/`) and stand-ins for rust-script, the driver build and
    /// the WDK tools; see `xtask/src/make_check.rs`.
    MakeCheck {
        /// Also reintroduce each known break and require each to fail with its message.
        #[arg(long)]
        mutate: bool,
    },
    /// The main job on Linux: build, then run the real CLI against the real driver in the
    /// kernel emulator (logoff and handle-leak scenarios).
    Demo,
    /// Model-check the tracker's lock-free parts with loom (the spin lock, the object slot
    /// protocol): every interleaving of two threads. Own target dir (target/loom).
    Loom,
    /// Print the driver's added cost per registry open+close in the emulator (ns and
    /// cachegrind instructions). Figures only; not part of `test`.
    BenchDriver,
    /// Print where one open+close cycle's instructions go inside hivetrack.sys, function by
    /// function (valgrind exp-bbv, the image's .pdata and map). Figures only.
    ProfileDriver {
        /// The bench workload: held, fresh, short-fresh, held-by-other, fresh-capture,
        /// held-capture.
        #[arg(default_value = "held")]
        workload: String,
        /// Also list, block by block, where the instructions of the functions whose name
        /// contains this go (image RVAs, to read beside `objdump -d`).
        #[arg(long)]
        blocks: Option<String>,
    },
    /// The systematic fault sweep over the hivetrack scenarios in the emulator (each
    /// scenario's K-th fallible call failed, and every call from its K-th on).
    Sweep {
        /// Most runs per scenario and policy (K spread over its calls when it makes more).
        #[arg(long, default_value_t = sweep::CI_MAX_RUNS)]
        max_runs: u64,
        /// Instead: build a driver with a deliberate bug and require the sweep to catch it.
        #[arg(long)]
        mutant: bool,
        /// Scenarios (default: every hivetrack scenario the sweep does not exclude).
        scenarios: Vec<String>,
    },
    /// Soak the driver in the emulator: N registry operations on 8 threads at 6% failures.
    Soak {
        /// Registry operations in all.
        #[arg(long, default_value_t = soak::CI_SOAK_OPS)]
        ops: u64,
    },
    /// Fuzz the driver's IOCTLs in the emulator with N structure-aware inputs.
    FuzzIoctl {
        /// Inputs in all.
        #[arg(long, default_value_t = soak::CI_FUZZ_INPUTS)]
        inputs: u64,
    },
    /// Print `hivetrack analyze`'s replay rate (events per second from PML and CSV, one core)
    /// and its memory for two capture lengths. Figures only; not part of `test`.
    BenchAnalyze,
    /// What the admin queries cost as the tracked state grows (holders, processes; 1k, 10k,
    /// 100k keys): figures and ratios, never asserted.
    BenchQueries,
    /// Whether an open's cost stays flat from 1k to 1M tracked objects (many processes, one
    /// process) and what a refusal at the cap costs: figures and ratios, never asserted.
    BenchScale,
    /// The lints CI runs, alone: clippy on the host workspace, on both driver crates for the
    /// Windows target and on the CLI for Windows (`-D warnings`).
    Lint,
    /// Everything CI runs: setup, fmt, clippy, host tests, build, image and INF checks,
    /// emulator suite.
    Test {
        /// Skip these steps (by name, as printed), for local iteration; CI skips nothing.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
    },
}

/// Driver crates the cross build produces, and where their images go in the package.
const DRIVERS: &[(&str, &str)] = &[
    ("driver", "hivetrack"),
    ("kernel-emulator/test-driver", "test/kemu-test-driver"),
];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

fn package_dir() -> PathBuf {
    target_dir().join("package")
}

fn driver_crates() -> impl Iterator<Item = (PathBuf, &'static str)> {
    let root = repo_root();
    DRIVERS
        .iter()
        .map(move |(dir, out)| (root.join(dir), *out))
        .filter(|(dir, _)| dir.join("Cargo.toml").is_file())
}

fn driver_dirs() -> Vec<PathBuf> {
    driver_crates().map(|(dir, _)| dir).collect()
}

fn build() -> Result<()> {
    let started = Instant::now();
    let env = CrossEnv::prepare(&target_dir(), &driver_dirs())?;
    let package = package_dir();
    for (dir, out) in driver_crates() {
        let (image, map) = env.build_driver(&dir)?;
        copy(&image, &package.join(format!("{out}.sys")))?;
        copy(&map, &package.join(format!("{out}.map")))?;
    }
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "hivetrack-cli",
        "--target",
        "x86_64-pc-windows-gnu",
    ]))?;
    copy(
        &target_dir().join("x86_64-pc-windows-gnu/release/hivetrack.exe"),
        &package.join("hivetrack.exe"),
    )?;
    copy(
        &repo_root().join("driver/hivetrack.inx"),
        &package.join("hivetrack.inf"),
    )?;
    messages::build(&package, &target_dir().join("messages"))?;
    eprintln!(
        "xtask: package ready in {} ({:.0} s): hivetrack.sys, hivetrack.map, hivetrack.inf, hivetrack.exe, hivetrack-events.dll",
        package.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_image(path: Option<PathBuf>, map: Option<PathBuf>) -> Result<()> {
    let path = path.unwrap_or_else(|| package_dir().join("hivetrack.sys"));
    let map = map.or_else(|| Some(path.with_extension("map")).filter(|m| m.is_file()));
    let report = image::check_image(&path, map.as_deref())
        .with_context(|| format!("checking {}", path.display()))?;
    println!("{report}");
    if !report.failures().is_empty() {
        bail!(
            "{} failed {} image check(s)",
            path.display(),
            report.failures().len()
        );
    }
    Ok(())
}

fn check_inf(path: Option<PathBuf>) -> Result<()> {
    let path = path.unwrap_or_else(|| repo_root().join("driver/hivetrack.inx"));
    let package = package_dir();
    let package = package.join("hivetrack.sys").is_file().then_some(package);
    let report = inf::check_inf(&path, package.as_deref())
        .with_context(|| format!("checking {}", path.display()))?;
    println!("{report}");
    if !report.failures().is_empty() {
        bail!(
            "{} failed {} INF check(s)",
            path.display(),
            report.failures().len()
        );
    }
    Ok(())
}

fn emulate(scenarios: &[String]) -> Result<()> {
    let package = package_dir();
    let sys = package.join("hivetrack.sys");
    if !sys.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask build` first",
            sys.display()
        );
    }
    let mut cmd = emulator_command();
    cmd.arg("suite")
        .arg("--sys")
        .arg(&sys)
        .arg("--map")
        .arg(sys.with_extension("map"));
    let test_driver = package.join("test/kemu-test-driver.sys");
    if test_driver.is_file() {
        cmd.arg("--test-driver")
            .arg(&test_driver)
            .arg("--test-driver-map")
            .arg(test_driver.with_extension("map"));
    }
    cmd.args(scenarios);
    run(&mut cmd)
}

/// `cargo run` of the kernel emulator (release), ready for its subcommand.
fn emulator_command() -> std::process::Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--locked",
        "--package",
        "kernel-emulator",
        "--",
    ]);
    cmd
}

fn wine_e2e() -> Result<()> {
    wine::wine_e2e(&package_dir(), &target_dir().join("wine"))
}

fn fmt_check(manifest: &Path) -> Result<()> {
    run(cargo()
        .args(["fmt", "--check", "--manifest-path"])
        .arg(manifest))
}

fn clippy_host() -> Result<()> {
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

fn clippy_drivers() -> Result<()> {
    let env = CrossEnv::prepare(&target_dir(), &driver_dirs())?;
    for (dir, _) in driver_crates() {
        run(env.cargo("clippy", &dir).args(["--", "-D", "warnings"]))?;
    }
    // The CLI as Windows builds it: its Windows backend compiles only there.
    run(cargo().args([
        "clippy",
        "--locked",
        "--package",
        "hivetrack-cli",
        "--target",
        "x86_64-pc-windows-gnu",
        "--",
        "-D",
        "warnings",
    ]))
}

fn fmt_all() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    for (dir, _) in driver_crates() {
        fmt_check(&dir.join("Cargo.toml"))?;
    }
    Ok(())
}

fn host_tests() -> Result<()> {
    run(cargo().args(["test", "--workspace", "--locked"]))
}

/// The loom models (`tracker/src/lock.rs`, `tracker/src/objects.rs`: their `loom_tests`),
/// built with `--cfg loom` in a target dir of their own, so that the other builds are not
/// invalidated by the flag.
fn loom() -> Result<()> {
    run(cargo()
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", target_dir().join("loom"))
        .args([
            "test",
            "--locked",
            "--release",
            "--package",
            "hivetrack-tracker",
            "--lib",
            "loom_tests",
        ]))
}

fn check_images() -> Result<()> {
    check_image(None, None)?;
    let test_driver = package_dir().join("test/kemu-test-driver.sys");
    if test_driver.is_file() {
        // The emulator's test driver misbehaves on purpose (it leaks, overruns, panics):
        // its image is shown, not held to the product's rules.
        let report = image::check_image(&test_driver, None)?;
        eprintln!("xtask: emulator test driver (informational):\n{report}");
    }
    Ok(())
}

/// A step of `cargo xtask test`.
type Step = fn() -> Result<()>;

/// The steps of `cargo xtask test`, in order; the first failure stops the run.
const TEST_STEPS: &[(&str, Step)] = &[
    ("setup", setup::setup),
    ("fmt", fmt_all),
    ("clippy-host", clippy_host),
    ("host-tests", host_tests),
    ("loom", loom),
    ("build", build),
    ("clippy-windows", clippy_drivers),
    ("check-image", check_images),
    ("check-inf", || check_inf(None)),
    ("make-check", || make_check::make_check(&target_dir(), true)),
    ("emulate", || emulate(&[])),
    ("sweep", || sweep::sweep(sweep::CI_MAX_RUNS, &[])),
    ("soak", || soak::soak(soak::CI_SOAK_OPS)),
    ("fuzz-ioctl", || soak::fuzz_ioctl(soak::CI_FUZZ_INPUTS)),
    ("demo", || demo::demo(&package_dir(), &target_dir())),
    ("wine-e2e", wine_e2e),
];

fn test(skip: &[String]) -> Result<()> {
    let started = Instant::now();
    let mut passed = 0;
    for (name, step) in TEST_STEPS {
        if skip.iter().any(|s| s == name) {
            eprintln!("\nxtask: ==== {name}: SKIPPED (--skip)");
            continue;
        }
        eprintln!("\nxtask: ==== {name} ====");
        let t = Instant::now();
        if let Err(e) = step() {
            eprintln!(
                "xtask: ==== {name}: FAILED ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
            println!("xtask: {passed} passed, 1 failed");
            return Err(e.context(format!("step `{name}` failed")));
        }
        passed += 1;
        eprintln!(
            "xtask: ==== {name}: ok ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "\nxtask: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("xtask: {passed} passed, 0 failed");
    Ok(())
}

/// Runs a benchmark example of `package` (release build, figures only).
fn bench_example(package: &str, example: &str) -> Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--release", "-p", package, "--example", example])
            .status()?;
    anyhow::ensure!(status.success(), "{example} failed: {status}");
    Ok(())
}

fn main() -> ExitCode {
    // make-check's stand-ins are links to this executable, named as the tools they replace.
    if let Some(tool) = make_check::stand_in::invoked_as() {
        return make_check::stand_in::main(tool);
    }
    let args = Args::parse();
    let result = match args.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build(),
        Cmd::CheckImage { path, map } => check_image(path, map),
        Cmd::CheckInf { path } => check_inf(path),
        Cmd::Emulate { scenarios } => emulate(&scenarios),
        Cmd::Test { skip } => test(&skip),
        Cmd::Lint => clippy_host().and_then(|()| clippy_drivers()),
        Cmd::WineE2e => wine_e2e(),
        Cmd::Sweep {
            max_runs,
            mutant,
            scenarios,
        } => {
            if mutant {
                sweep::mutant(max_runs)
            } else {
                sweep::sweep(max_runs, &scenarios)
            }
        }
        Cmd::Soak { ops } => soak::soak(ops),
        Cmd::FuzzIoctl { inputs } => soak::fuzz_ioctl(inputs),
        Cmd::MakeCheck { mutate } => make_check::make_check(&target_dir(), mutate),
        Cmd::Demo => build().and_then(|()| demo::demo(&package_dir(), &target_dir())),
        Cmd::Loom => loom(),
        Cmd::BenchDriver => {
            bench::bench_driver(&package_dir().join("hivetrack.sys"), &target_dir())
        }
        Cmd::ProfileDriver { workload, blocks } => profile::profile_driver(
            &package_dir().join("hivetrack.sys"),
            &target_dir(),
            &workload,
            blocks.as_deref(),
        ),
        Cmd::BenchAnalyze => bench_example("hivetrack-capture", "bench_analyze"),
        Cmd::BenchQueries => bench_example("hivetrack-tracker", "bench_queries"),
        Cmd::BenchScale => bench_example("hivetrack-tracker", "bench_scale"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
