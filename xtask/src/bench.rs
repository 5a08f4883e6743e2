//! `cargo xtask bench-driver`: the driver's added cost per registry open+close cycle, measured
//! in the kernel emulator for three workloads (a short path; a real-length profile path,
//! fresh each cycle and already held by another handle) — nanoseconds and the kernel calls
//! the driver makes per cycle (spin locks, lookaside and pool operations, key-name fetches),
//! without a driver, with hivetrack.sys and with the emulator's test driver; and
//! instructions under callgrind (which counts them deterministically): those executed inside
//! the driver image, and the total added (the driver plus the emulator's models of the
//! kernel routines it calls). Figures only; nothing here asserts a speed.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    setup::{Package, ensure_packages},
    util::{capture, cargo, run},
};

const CYCLES_SHORT: u32 = 1_000;
const CYCLES_LONG: u32 = 3_000;

fn emulator(target: &Path) -> std::path::PathBuf {
    target.join("release/kernel-emulator")
}

/// The workloads: (label, `bench-hivetrack` arguments). Issue 14: a real-length profile
/// path, fresh each cycle and already held by another handle, beside the short path.
const WORKLOADS: [(&str, &[&str]); 5] = [
    ("short name (50 chars), fresh", &["--name", "short"]),
    ("profile path (96 chars), fresh", &["--name", "profile"]),
    ("profile path, held open", &["--name", "profile", "--held"]),
    (
        "profile path, fresh, stack capture on (14 frames)",
        &["--name", "profile", "--capture"],
    ),
    (
        "profile path, held open, stack capture on (14 frames)",
        &["--name", "profile", "--held", "--capture"],
    ),
];

/// Instructions callgrind counted: (whole program, inside anonymous code = the driver image).
fn callgrind(
    target: &Path,
    sys: Option<&Path>,
    workload: &[&str],
    cycles: u32,
    out: &Path,
) -> Result<(u64, u64)> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
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
            "callgrind run failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let annotated = capture(
        Command::new("callgrind_annotate")
            .args(["--inclusive=no", "--threshold=100"])
            .arg(out),
    )?;
    let (mut total, mut driver) = (0u64, 0u64);
    for line in annotated.lines() {
        let t = line.trim_start();
        let Some((count, rest)) = t.split_once(' ') else {
            continue;
        };
        let Ok(n) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        if rest.contains("PROGRAM TOTALS") {
            total = n;
        } else if rest.trim_end().ends_with("[???]") {
            driver += n; // code outside every file-backed object: the emulator-mapped .sys
        }
    }
    Ok((total, driver))
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
    run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "--package",
        "kernel-emulator",
    ]))?;
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
        why: "callgrind counts instructions",
    }])?;
    println!(
        "== instructions per open+close cycle (callgrind; {CYCLES_LONG} - {CYCLES_SHORT} cycles)"
    );
    let dir = target.join("bench");
    fs::create_dir_all(&dir)?;
    for (w, (label, args)) in WORKLOADS.iter().enumerate() {
        let mut per = Vec::new();
        for (d, (_, with)) in drivers.iter().enumerate() {
            let a = callgrind(
                target,
                *with,
                args,
                CYCLES_SHORT,
                &dir.join(format!("w{w}-d{d}-short.out")),
            )?;
            let b = callgrind(
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
