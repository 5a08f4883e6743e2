//! `cargo xtask bench-driver`: the driver's added cost per registry open+close cycle, measured
//! in the kernel emulator for three workloads (a short path; a real-length profile path,
//! fresh each cycle and already held by another handle) — nanoseconds and the kernel calls
//! the driver makes per cycle (spin locks, lookaside and pool operations, key-name fetches),
//! without a driver, with hivetrack.sys and with the emulator's test driver; and
//! instructions under cachegrind (which counts them deterministically): those executed inside
//! the driver image, and the total added (the driver plus the emulator's models of the
//! kernel routines it calls). Figures only; nothing here asserts a speed.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    setup::{Package, ensure_packages},
    util::{capture, cargo, run},
};

/// Cycles of the shorter run: subtracted from the longer one's, load, set-up and teardown
/// cancel out.
pub const CYCLES_SHORT: u32 = 1_000;
/// Cycles of the longer run.
pub const CYCLES_LONG: u32 = 3_000;

/// Builds the kernel emulator (release) for the bench and the profile.
///
/// # Errors
/// When cargo fails.
pub fn build_emulator() -> Result<()> {
    run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "--package",
        "kernel-emulator",
    ]))
}

/// The emulator `build_emulator` built.
pub fn emulator(target: &Path) -> std::path::PathBuf {
    target.join("release/kernel-emulator")
}

/// The workloads: (label, `bench-hivetrack` arguments). Issue 14: a real-length profile
/// path, fresh each cycle and already held by another handle (of the same process, or of
/// another process while the measured one holds nothing else in the hive), beside the short
/// path.
pub const WORKLOADS: [(&str, &[&str]); 6] = [
    ("short name (50 chars), fresh", &["--name", "short"]),
    ("profile path (96 chars), fresh", &["--name", "profile"]),
    ("profile path, held open", &["--name", "profile", "--held"]),
    (
        "profile path, held open by another process only",
        &["--name", "profile", "--held", "--by-other"],
    ),
    (
        "profile path, fresh, stack capture on (14 frames)",
        &["--name", "profile", "--capture"],
    ),
    (
        "profile path, held open, stack capture on (14 frames)",
        &["--name", "profile", "--held", "--capture"],
    ),
];

/// Instructions cachegrind counted: (whole program, inside code no symbol names = the driver
/// image the emulator maps).
///
/// Cachegrind, not callgrind: the driver reads `KUSER_SHARED_DATA` (its clock), which the
/// emulator emulates in its SIGSEGV handler; under valgrind that needs
/// `--px-default=allregs-at-mem-access` (otherwise the faulting RIP the handler sees is not the
/// load's, and the run ends in bugcheck 0x50), and callgrind then aborts on the signal
/// (`threads.c: Assertion 'sigNum == vgCallgrind_current_state.sig' failed`, valgrind 3.19).
/// Cachegrind counts the same instructions (`Ir`).
fn cachegrind(
    target: &Path,
    sys: Option<&Path>,
    workload: &[&str],
    cycles: u32,
    out: &Path,
) -> Result<(u64, u64)> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=cachegrind")
        .arg("--cache-sim=no")
        .arg("--px-default=allregs-at-mem-access")
        .arg(format!("--cachegrind-out-file={}", out.display()))
        .arg(emulator(target))
        .arg("bench-hivetrack")
        .args(workload)
        .args(["--iterations", &cycles.to_string()]);
    if let Some(sys) = sys {
        cmd.arg("--sys").arg(sys);
    }
    let status = cmd.output().context("running valgrind")?;
    if !status.status.success() {
        bail!(
            "cachegrind run failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let text = fs::read_to_string(out).context("reading the cachegrind output")?;
    Ok(cachegrind_counts(&text))
}

/// (whole program, inside `fl=??? fn=???`) from a cachegrind output file: the `summary:`
/// line, and the cost lines (`line Ir`) of the function with neither file nor name — code
/// outside every file-backed object, the emulator-mapped `.sys`.
fn cachegrind_counts(text: &str) -> (u64, u64) {
    let (mut total, mut driver) = (0u64, 0u64);
    let (mut file_unknown, mut in_driver) = (false, false);
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("fl=") {
            file_unknown = f == "???";
            in_driver = false;
        } else if let Some(f) = line.strip_prefix("fn=") {
            in_driver = file_unknown && f == "???";
        } else if let Some(n) = line.strip_prefix("summary:") {
            total = n.trim().parse().unwrap_or(0);
        } else if in_driver {
            driver += line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (total, driver)
}

/// `cargo xtask bench-driver` for the package's hivetrack.sys.
///
/// # Errors
/// When the emulator cannot be built or run.
pub fn bench_driver(sys: &Path, target: &Path) -> Result<()> {
    if !sys.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask build` first",
            sys.display()
        );
    }
    build_emulator()?;
    let test_driver = sys
        .parent()
        .map(|p| p.join("test/kemu-test-driver.sys"))
        .filter(|p| p.is_file())
        .context("the package has no test/kemu-test-driver.sys: run `cargo xtask build`")?;
    let drivers = [
        ("no driver", None),
        ("hivetrack.sys", Some(sys)),
        // Not a minimal callback: it fetches the name twice per cycle and keeps a context per
        // object and statistics (kernel-emulator/test-driver).
        ("the emulator's test driver", Some(test_driver.as_path())),
    ];
    println!("== time per open+close cycle (20,000 cycles, native) and kernel calls per cycle");
    for (label, args) in WORKLOADS {
        println!("-- {label}");
        for (driver, with) in drivers {
            print!("{driver:>27}: ");
            let mut cmd = Command::new(emulator(target));
            cmd.arg("bench-hivetrack").args(args);
            if let Some(s) = with {
                cmd.arg("--sys").arg(s);
            }
            print!("{}", capture(&mut cmd)?);
        }
    }
    ensure_packages(&[Package {
        name: "valgrind",
        why: "cachegrind counts instructions",
    }])?;
    println!(
        "== instructions per open+close cycle (cachegrind; {CYCLES_LONG} - {CYCLES_SHORT} cycles)"
    );
    let dir = target.join("bench");
    fs::create_dir_all(&dir)?;
    for (w, (label, args)) in WORKLOADS.iter().enumerate() {
        let mut per = Vec::new();
        for (d, (_, with)) in drivers.iter().enumerate() {
            let a = cachegrind(
                target,
                *with,
                args,
                CYCLES_SHORT,
                &dir.join(format!("w{w}-d{d}-short.out")),
            )?;
            let b = cachegrind(
                target,
                *with,
                args,
                CYCLES_LONG,
                &dir.join(format!("w{w}-d{d}-long.out")),
            )?;
            let cycles = f64::from(CYCLES_LONG - CYCLES_SHORT);
            #[allow(
                clippy::cast_precision_loss,
                reason = "instruction counts far below 2^52"
            )]
            per.push(((b.0 - a.0) as f64 / cycles, (b.1 - a.1) as f64 / cycles));
        }
        let (none, ht, td) = (per[0], per[1], per[2]);
        println!(
            "bench: {label}: inside hivetrack.sys {:.0} instructions per cycle (goal: <= 600), inside the emulator's test driver {:.0} (two name fetches, contexts, statistics): ratio {:.2}; added in all (with the kernel models) {:.0} by hivetrack.sys, {:.0} by the test driver",
            ht.1,
            td.1,
            ht.1 / td.1,
            ht.0 - none.0,
            td.0 - none.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cachegrind_counts;

    #[test]
    fn counts_the_nameless_code_and_the_summary() {
        let text = "events: Ir\nfl=???\nfn=main\n0 5\nfn=???\n0 7\n0 3\nfl=/x.c\nfn=???\n1 100\nsummary: 115\n";
        assert_eq!(cachegrind_counts(text), (115, 10));
    }
}
