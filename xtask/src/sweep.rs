//! `cargo xtask sweep`: the kernel emulator's systematic fault sweep over the hivetrack
//! scenarios (`kernel-emulator sweep`, see `kernel-emulator/src/harness/sweep.rs`), and its self-test:
//! with `--mutant` a driver built with a deliberate bug (`mutant-uncounted-abandon`: an
//! abandoned object is not counted as a loss) must be caught — some faulted run must fail
//! with a holders answer that says complete while a key is missing.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cross::CrossEnv;
use crate::util::repo_root;
use crate::util::{describe, run};
use crate::{driver_dirs, package_dir, target_dir};

/// Runs per scenario and policy in CI (every scenario's calls fit; see the README).
pub const CI_MAX_RUNS: u64 = 200;

/// Scenarios the mutant check sweeps: workloads whose opens can be abandoned.
const MUTANT_SCENARIOS: [&str; 3] = ["logoff", "process-exit", "duplicated-handle"];

fn sweep_command(sys: &Path, max_runs: u64, scenarios: &[String]) -> Command {
    let mut cmd = crate::emulator_command();
    cmd.arg("sweep")
        .arg("--sys")
        .arg(sys)
        .arg("--map")
        .arg(sys.with_extension("map"))
        .arg("--max-runs")
        .arg(max_runs.to_string())
        .args(scenarios);
    cmd
}

/// Sweeps the packaged driver.
///
/// # Errors
/// No package, or a faulted run failed.
pub fn sweep(max_runs: u64, scenarios: &[String]) -> Result<()> {
    let sys = package_dir().join("hivetrack.sys");
    if !sys.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask build` first",
            sys.display()
        );
    }
    run(&mut sweep_command(&sys, max_runs, scenarios))
}

/// Builds the mutant driver and requires the sweep to catch it.
///
/// # Errors
/// The build fails, or the sweep passes the mutant.
pub fn mutant(max_runs: u64) -> Result<()> {
    let dir = target_dir().join("mutant");
    let env = CrossEnv::prepare(&target_dir(), &driver_dirs())?;
    // In the driver's own target directory (wdk-build's configuration is found from it);
    // the feature set has its own fingerprint, so the normal build is not disturbed.
    let (image, map) = env.build_driver_with(
        &repo_root().join("driver"),
        &["--features", "mutant-uncounted-abandon"],
    )?;
    std::fs::create_dir_all(&dir)?;
    let sys = dir.join("hivetrack-mutant.sys");
    std::fs::copy(&image, &sys)?;
    std::fs::copy(&map, sys.with_extension("map"))?;
    let names: Vec<String> = MUTANT_SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    let mut cmd = sweep_command(&sys, max_runs, &names);
    eprintln!("xtask: $ {}", describe(&cmd));
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let caught = text
        .lines()
        .filter(|l| l.starts_with("FAIL ") && l.contains("silently wrong"))
        .count();
    for l in text.lines().filter(|l| !l.starts_with("FAIL ")) {
        println!("{l}");
    }
    if out.status.success() || caught == 0 {
        bail!("the sweep did not catch the mutant driver (mutant-uncounted-abandon)");
    }
    println!(
        "xtask: the sweep caught the mutant: {caught} faulted run(s) got an answer that said complete while a key was missing"
    );
    Ok(())
}
