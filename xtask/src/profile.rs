//! `cargo xtask profile-driver`: where the instructions of one registry open+close cycle go
//! inside the real hivetrack.sys, function by function.
//!
//! `bench-driver` counts the instructions inside the driver image with cachegrind, which
//! sees the emulator-mapped image as one nameless blob; callgrind, which would split it,
//! aborts on the trap the emulator serves the driver's clock from (`bench.rs`). Valgrind's
//! `exp-bbv` tool runs under the same option (`--px-default=allregs-at-mem-access`) and
//! writes, per thread and interval, how many instructions each basic block executed, with a
//! file giving each block's address. The emulator tells where it mapped the image
//! (`KEMU_PRINT_IMAGE_BASE`); the image's `.pdata` gives every function's range (x64 unwind
//! data: one `RUNTIME_FUNCTION` per function or function part) and the linker's map names
//! them. As for the bench, two runs (1,000 and 3,000 cycles) are subtracted, so that load,
//! set-up and teardown cancel out.
//!
//! `exp-bbv` writes an interval only when it is full: a thread's last partial interval is
//! not written. The intervals are 10,000 instructions, so at most that many per thread go
//! missing per run, about 5 per cycle of the difference (with 100,000, the driver's unload
//! showed up at 19 per cycle); the total printed is to be read beside `bench-driver`'s
//! exact one. The output files (tens of MB) are removed once read.

use std::{collections::HashMap, fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection};

use crate::{
    bench::{CYCLES_LONG, CYCLES_SHORT, WORKLOADS, build_emulator, emulator},
    setup::{Package, ensure_packages},
};

const INTERVAL: u32 = 10_000;

/// A function of the image: its range (RVAs, end exclusive) and name.
struct Function {
    begin: u64,
    end: u64,
    name: String,
}

/// The image's functions from its `.pdata`, named from the map (a part with no symbol of
/// its own, such as a cold split-off block, is named after the symbol before it).
fn functions(sys: &Path, map: &str) -> Result<Vec<Function>> {
    let data = fs::read(sys).with_context(|| format!("reading {}", sys.display()))?;
    let file = object::File::parse(&*data).context("parsing the driver image")?;
    let base = file.relative_address_base();
    let pdata = file
        .section_by_name(".pdata")
        .context("the image has no .pdata")?
        .data()
        .context("reading .pdata")?;
    let mut symbols = map_symbols(map, base);
    symbols.sort_unstable();
    let mut out: Vec<Function> = pdata
        .chunks_exact(12)
        .map(|entry| {
            let word = |i: usize| {
                u64::from(u32::from_le_bytes([
                    entry[i],
                    entry[i + 1],
                    entry[i + 2],
                    entry[i + 3],
                ]))
            };
            let (begin, end) = (word(0), word(4));
            let at = symbols.partition_point(|(rva, _)| *rva <= begin);
            let name = match at.checked_sub(1).map(|i| &symbols[i]) {
                Some((rva, name)) if *rva == begin => name.clone(),
                Some((rva, name)) => format!("{name} (part at +{:#x})", begin - rva),
                None => format!("function at RVA {begin:#x}"),
            };
            Function { begin, end, name }
        })
        .filter(|f| f.begin < f.end)
        .collect();
    out.sort_unstable_by_key(|f| f.begin);
    Ok(out)
}

/// (RVA, demangled name) of every code symbol the map lists.
fn map_symbols(map: &str, base: u64) -> Vec<(u64, String)> {
    map.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let section = fields.next()?;
            let name = fields.next()?;
            let va = u64::from_str_radix(fields.next()?, 16).ok()?;
            (section.starts_with("0001:") && va >= base)
                .then(|| (va - base, format!("{:#}", rustc_demangle::demangle(name))))
        })
        .collect()
}

/// Instructions executed per basic-block address, summed over every thread's intervals:
/// `pc` is exp-bbv's `--pc-out-file` (`F:<block>:<hex address>:<function>` lines), `bbs` its
/// `--bb-out-file`s (one per thread; `T:<block>:<instructions> ...` per interval).
fn block_counts(pc: &str, bbs: &[String]) -> HashMap<u64, u64> {
    let address: HashMap<u64, u64> = pc
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            fields.next()?;
            let block = fields.next()?.parse().ok()?;
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            Some((block, address))
        })
        .collect();
    let mut counts = HashMap::new();
    for text in bbs {
        for line in text.lines().filter(|l| l.starts_with('T')) {
            for pair in line.split_whitespace() {
                let mut fields = pair.trim_start_matches('T').split(':').skip(1);
                let (Some(block), Some(n)) = (fields.next(), fields.next()) else {
                    continue;
                };
                let (Ok(block), Ok(n)) = (block.parse::<u64>(), n.parse::<u64>()) else {
                    continue;
                };
                if let Some(&a) = address.get(&block) {
                    *counts.entry(a).or_insert(0) += n;
                }
            }
        }
    }
    counts
}

/// Runs the emulator's bench for `cycles` under exp-bbv: (image base, per-block counts).
fn run_bbv(
    target: &Path,
    sys: &Path,
    workload: &[&str],
    cycles: u32,
    dir: &Path,
) -> Result<(u64, HashMap<u64, u64>)> {
    let bb = dir.join(format!("bb-{cycles}"));
    let pc = dir.join(format!("pc-{cycles}"));
    remove_outputs(dir, cycles)?;
    let output = Command::new("valgrind")
        .arg("--tool=exp-bbv")
        .arg("--px-default=allregs-at-mem-access")
        .arg(format!("--interval-size={INTERVAL}"))
        .arg(format!("--bb-out-file={}", bb.display()))
        .arg(format!("--pc-out-file={}", pc.display()))
        .arg(emulator(target))
        .arg("bench-hivetrack")
        .args(workload)
        .args(["--iterations", &cycles.to_string(), "--sys"])
        .arg(sys)
        .env("KEMU_PRINT_IMAGE_BASE", "1")
        .output()
        .context("running valgrind")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("exp-bbv run failed: {stderr}");
    }
    let image = sys
        .file_name()
        .and_then(|n| n.to_str())
        .context("the image has no file name")?;
    let base = stderr
        .lines()
        .find_map(|l| {
            l.split_once(&format!("{image} mapped at 0x"))?
                .1
                .split(' ')
                .next()
        })
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .context("the emulator did not say where it mapped the image")?;
    let mut bbs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("bb-{cycles}")))
        {
            bbs.push(fs::read_to_string(path)?);
        }
    }
    let pc_text = fs::read_to_string(&pc).context("reading exp-bbv's block addresses")?;
    remove_outputs(dir, cycles)?;
    fs::remove_file(&pc)?;
    Ok((base, block_counts(&pc_text, &bbs)))
}

/// Removes a run's per-thread block files (`bb-<cycles>`, `bb-<cycles>.<thread>`).
fn remove_outputs(dir: &Path, cycles: u32) -> Result<()> {
    let prefix = format!("bb-{cycles}");
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix))
        {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Instructions per function of the image (by name), from per-block counts.
fn per_function(
    functions: &[Function],
    base: u64,
    counts: &HashMap<u64, u64>,
) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (&address, &n) in counts {
        let Some(rva) = address.checked_sub(base) else {
            continue;
        };
        let at = functions.partition_point(|f| f.begin <= rva);
        let Some(f) = at.checked_sub(1).map(|i| &functions[i]) else {
            continue;
        };
        if rva < f.end {
            *out.entry(f.name.clone()).or_insert(0) += n;
        }
    }
    out
}

/// `cargo xtask profile-driver [WORKLOAD]`: the per-function split of one bench workload
/// (`held` by default).
///
/// # Errors
/// When the package, the emulator or valgrind's exp-bbv cannot be had or run.
pub fn profile_driver(
    sys: &Path,
    target: &Path,
    workload: &str,
    blocks: Option<&str>,
) -> Result<()> {
    let map_path = sys.with_extension("map");
    if !sys.is_file() || !map_path.is_file() {
        bail!(
            "{} or its map does not exist: run `cargo xtask build` first",
            sys.display()
        );
    }
    let Some((label, args)) = WORKLOADS
        .iter()
        .find(|(_, args)| workload_name(args) == workload)
    else {
        let names: Vec<String> = WORKLOADS.iter().map(|(_, a)| workload_name(a)).collect();
        bail!(
            "no workload {workload:?}; the workloads are: {}",
            names.join(", ")
        );
    };
    build_emulator()?;
    ensure_packages(&[Package {
        name: "valgrind",
        why: "exp-bbv counts the instructions of each basic block",
    }])?;
    let map = fs::read_to_string(&map_path)?;
    let functions = functions(sys, &map)?;
    let dir = target.join("profile");
    fs::create_dir_all(&dir)?;
    let (base_a, a) = run_bbv(target, sys, args, CYCLES_SHORT, &dir)?;
    let (base_b, b) = run_bbv(target, sys, args, CYCLES_LONG, &dir)?;
    let cycles = f64::from(CYCLES_LONG - CYCLES_SHORT);
    if let Some(wanted) = blocks {
        print_blocks(&functions, wanted, (base_a, &a), (base_b, &b), cycles);
    }
    let a = per_function(&functions, base_a, &a);
    let b = per_function(&functions, base_b, &b);
    #[allow(
        clippy::cast_precision_loss,
        reason = "instruction counts far below 2^52"
    )]
    let mut rows: Vec<(f64, &str)> = b
        .iter()
        .map(|(name, &n)| {
            let before = a.get(name).copied().unwrap_or(0);
            ((n as f64 - before as f64) / cycles, name.as_str())
        })
        .filter(|(per, _)| per.abs() >= 0.5)
        .collect();
    rows.sort_by(|x, y| y.0.total_cmp(&x.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    println!(
        "== instructions per open+close cycle inside hivetrack.sys, by function (exp-bbv; {CYCLES_LONG} - {CYCLES_SHORT} cycles)"
    );
    println!("-- {label}");
    for (per, name) in &rows {
        println!("{per:8.1}  {name}");
    }
    println!("{total:8.1}  in all (bench-driver's cachegrind count is the exact total)");
    Ok(())
}

/// Prints, for each function whose name contains `wanted`, its blocks (RVA) and the
/// instructions each executed per cycle (the two runs' difference), in address order.
fn print_blocks(
    functions: &[Function],
    wanted: &str,
    (base_a, a): (u64, &HashMap<u64, u64>),
    (base_b, b): (u64, &HashMap<u64, u64>),
    cycles: f64,
) {
    let rvas = |base: u64, counts: &HashMap<u64, u64>| -> HashMap<u64, u64> {
        counts
            .iter()
            .filter_map(|(&addr, &n)| Some((addr.checked_sub(base)?, n)))
            .collect()
    };
    let (a, b) = (rvas(base_a, a), rvas(base_b, b));
    for f in functions.iter().filter(|f| f.name.contains(wanted)) {
        let mut rows: Vec<(u64, f64)> = b
            .iter()
            .filter(|&(&rva, _)| rva >= f.begin && rva < f.end)
            .map(|(&rva, &n)| {
                #[allow(
                    clippy::cast_precision_loss,
                    reason = "instruction counts far below 2^52"
                )]
                let per = (n as f64 - a.get(&rva).copied().unwrap_or(0) as f64) / cycles;
                (rva, per)
            })
            .filter(|&(_, per)| per.abs() >= 0.5)
            .collect();
        rows.sort_by_key(|r| r.0);
        println!("-- blocks of {} (RVA: instructions per cycle)", f.name);
        for (rva, per) in rows {
            println!("  {rva:#08x}: {per:7.1}");
        }
    }
}

/// A workload's short name: `held`, `fresh`, ... from its bench arguments.
pub fn workload_name(args: &[&str]) -> String {
    let mut name = String::new();
    let short = args.windows(2).any(|w| w == ["--name", "short"]);
    name.push_str(if args.contains(&"--held") {
        "held"
    } else {
        "fresh"
    });
    if short {
        name.insert_str(0, "short-");
    }
    if args.contains(&"--by-other") {
        name.push_str("-by-other");
    }
    if args.contains(&"--capture") {
        name.push_str("-capture");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::{Function, block_counts, per_function, workload_name};
    use crate::bench::WORKLOADS;

    #[test]
    fn blocks_are_summed_over_threads_and_filed_under_their_function() {
        let pc = "F:1:1000:x\nF:2:1010:y\nF:3:2000:z\n";
        let bbs = [
            "T:1:5   :3:7\nT:1:1\n".to_owned(),
            "T:2:10   :1:2\n".to_owned(),
        ];
        let counts = block_counts(pc, &bbs);
        assert_eq!(counts.get(&0x1000), Some(&8));
        assert_eq!(counts.get(&0x1010), Some(&10));
        assert_eq!(counts.get(&0x2000), Some(&7));
        let functions = [
            Function {
                begin: 0x0,
                end: 0x20,
                name: "f".into(),
            },
            Function {
                begin: 0x30,
                end: 0x40,
                name: "g".into(),
            },
        ];
        let per = per_function(&functions, 0x1000, &counts);
        assert_eq!(per.get("f"), Some(&18));
        // 0x2000 is past every function: counted nowhere.
        assert_eq!(per.len(), 1);
    }

    #[test]
    fn every_workload_has_its_own_name() {
        let mut names: Vec<String> = WORKLOADS.iter().map(|(_, a)| workload_name(a)).collect();
        assert!(names.contains(&"held".to_owned()));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), WORKLOADS.len());
    }
}
