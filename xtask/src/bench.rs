//! `cargo xtask bench-driver`: the driver's added cost per registry open+close cycle, measured
//! in the kernel emulator — nanoseconds (the same cycles without and with hivetrack.sys), and
//! instructions under callgrind (which counts them deterministically): the instructions
//! executed inside the driver image, and the total added (the driver plus the emulator's
//! models of the kernel routines it calls). Figures only; nothing here asserts a speed.

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

/// Instructions callgrind counted: (whole program, inside anonymous code = the driver image).
fn callgrind(target: &Path, sys: Option<&Path>, cycles: u32, out: &Path) -> Result<(u64, u64)> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(emulator(target))
        .arg("bench-hivetrack")
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
    println!("== time per open+close cycle (20,000 cycles, native)");
    for with in [None, Some(sys)] {
        let mut cmd = Command::new(emulator(target));
        cmd.arg("bench-hivetrack");
        if let Some(s) = with {
            cmd.arg("--sys").arg(s);
        }
        print!("{}", capture(&mut cmd)?);
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
    let mut per = Vec::new();
    for (name, with) in [("without", None), ("with", Some(sys))] {
        let a = callgrind(
            target,
            with,
            CYCLES_SHORT,
            &dir.join(format!("{name}-short.out")),
        )?;
        let b = callgrind(
            target,
            with,
            CYCLES_LONG,
            &dir.join(format!("{name}-long.out")),
        )?;
        let cycles = f64::from(CYCLES_LONG - CYCLES_SHORT);
        #[allow(
            clippy::cast_precision_loss,
            reason = "instruction counts far below 2^52"
        )]
        let (total, driver) = ((b.0 - a.0) as f64 / cycles, (b.1 - a.1) as f64 / cycles);
        per.push((total, driver));
        println!("bench: {name} hivetrack.sys: {total:.0} instructions per cycle in all");
    }
    let (without, with) = (per[0], per[1]);
    println!(
        "bench: added by hivetrack.sys: {:.0} instructions per cycle in all",
        with.0 - without.0
    );
    println!(
        "bench: executed inside hivetrack.sys itself: {:.0} instructions per cycle (goal: <= 1,500)",
        with.1
    );
    Ok(())
}
