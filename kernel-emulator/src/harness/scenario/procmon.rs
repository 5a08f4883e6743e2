//! The Process Monitor replay through hivetrack.sys (`ht-procmon-replay`): a capture's rows
//! drive the registry model ([`crate::harness::replay`]) with the real driver loaded, and before each
//! Process Exit row and at the end the driver's holders and processes answers are printed
//! beside the model's own handle table; any difference fails the run. Without
//! `--procmon-csv` it replays every fixture under `kernel-emulator/tests/procmon/` and
//! compares each printed report with the fixture's hand-checked `.expected` file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::tracking::{Client, boot_hives, load_driver};
use super::{Ctx, Scenario, Target};
use crate::harness::replay::{self, OpenHandle};
use crate::nt::kernel;

/// The fixtures: (name, capture, expected report).
const FIXTURES: [(&str, &str, &str); 5] = [
    (
        "rules.csv",
        include_str!("../../../tests/procmon/rules.csv"),
        include_str!("../../../tests/procmon/rules.expected"),
    ),
    (
        "logoff.csv",
        include_str!("../../../tests/procmon/logoff.csv"),
        include_str!("../../../tests/procmon/logoff.expected"),
    ),
    (
        "no-closes.csv",
        include_str!("../../../tests/procmon/no-closes.csv"),
        include_str!("../../../tests/procmon/no-closes.expected"),
    ),
    (
        "notepad-win7.csv",
        include_str!("../../../tests/procmon/notepad-win7.csv"),
        include_str!("../../../tests/procmon/notepad-win7.expected"),
    ),
    (
        "registry-win10.csv",
        include_str!("../../../tests/procmon/registry-win10.csv"),
        include_str!("../../../tests/procmon/registry-win10.expected"),
    ),
];

/// The scenario.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "ht-procmon-replay",
        Target::Hivetrack,
        "a Process Monitor capture (run --procmon-csv FILE, or every fixture in kernel-emulator/tests/procmon) replayed through hivetrack.sys: the driver's holders and processes answers equal the model's handle table before each Process Exit and at the end",
        ht_procmon_replay,
    )]
}

fn ht_procmon_replay(ctx: &mut Ctx) {
    if let Some(path) = ctx.opts.procmon_csv.clone() {
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                ctx.check(false, format!("read {}: {e}", path.display()));
                return;
            }
        };
        if let Some(report) = replay_capture(ctx, &path.display().to_string(), &text, true) {
            print!("{report}");
        }
        return;
    }
    for (name, text, expected) in FIXTURES {
        kernel::reset();
        let Some(report) = replay_capture(ctx, name, text, false) else {
            continue;
        };
        print!("{report}");
        let differs: Vec<(usize, &str, &str)> = report
            .lines()
            .zip(expected.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i + 1, a, b))
            .take(3)
            .collect();
        for (n, got, want) in &differs {
            println!("    line {n}: got      {got}\n    line {n}: expected {want}");
        }
        ctx.check(
            differs.is_empty() && report.lines().count() == expected.lines().count(),
            format!(
                "{name}: the report equals the hand-checked tests/procmon/{}",
                name.replace(".csv", ".expected")
            ),
        );
    }
}

/// Replays one capture with the driver loaded; returns the report (None when the capture
/// does not parse). The report ends with whether the driver and the model agreed at every
/// checkpoint; with `strict`, a disagreement is also a failed check (exit 1). Fixtures are
/// not strict: their hand-checked expected reports hold the known disagreements.
fn replay_capture(ctx: &mut Ctx, name: &str, text: &str, strict: bool) -> Option<String> {
    let rows = match replay::parse_procmon(text) {
        Ok(r) => r,
        Err(e) => {
            ctx.check(false, format!("{name}: parse the capture: {e}"));
            return None;
        }
    };
    boot_hives(ctx);
    replay::mount_hives(&rows);
    let mut d = load_driver(ctx);
    kernel::with(|k| k.quiet_debug_print = true);
    let client = Client::open(ctx)?;
    let mut out = format!("== replay of {name}: {} rows\n", rows.len());
    if !rows.iter().any(|r| r.operation == "RegCloseKey") {
        out.push_str(
            "   this capture has no RegCloseKey row: it cannot say who holds what (see the end)\n",
        );
    }
    let mut disagreements = Vec::new();
    let acc = replay::replay(&rows, &mut |label, model| {
        let (text, agree) = compare(ctx, &client, label, model);
        out.push_str(&text);
        if !agree {
            disagreements.push(label.to_string());
        }
    });
    for line in acc.lines() {
        let _ = writeln!(out, "  {line}");
    }
    if disagreements.is_empty() {
        out.push_str("== the driver and the model agree at every checkpoint\n");
    } else {
        let _ = writeln!(
            out,
            "== THE DRIVER AND THE MODEL DIFFER at: {}",
            disagreements.join("; ")
        );
    }
    if strict {
        ctx.check(
            disagreements.is_empty(),
            format!(
                "{name}: the driver's holders and processes answers equal the model's handle table at every checkpoint (differ at: {disagreements:?})"
            ),
        );
    }
    ctx.check(
        acc.mismatches.is_empty(),
        format!(
            "{name}: every replayed row had the capture's result in the model ({} mismatches)",
            acc.mismatches.len()
        ),
    );
    ctx.check(
        acc.replayed_rows() + acc.skipped.values().sum::<usize>() == rows.len(),
        format!("{name}: every row is replayed or counted as not replayed"),
    );
    client.close();
    ctx.unload_and_check_clean(&mut d);
    Some(out)
}

/// One key at a checkpoint: (pid, image, key name, hive mount, the row that opened it).
type KeyLine = (u64, String, String, String, String);

/// Compared as Windows compares names: case-insensitively.
fn fold(k: &KeyLine) -> (u64, String, String, String, String) {
    (
        k.0,
        k.1.to_ascii_uppercase(),
        k.2.to_ascii_uppercase(),
        k.3.to_ascii_uppercase(),
        k.4.clone(),
    )
}

/// When a handle was opened: the capture row.
fn opened(h: &OpenHandle) -> String {
    if h.row == 0 {
        "before the replay".to_string()
    } else {
        format!("row {} at {}", h.row, h.time)
    }
}

/// The driver's holders answers for every hive its hives answer lists; each open time is
/// mapped back to the row whose open it falls within.
fn driver_keys(ctx: &mut Ctx, client: &Client, model: &[OpenHandle]) -> Vec<KeyLine> {
    let mut keys = Vec::new();
    for (mount, _) in client.hives(ctx) {
        for holder in client.holders(ctx, &mount) {
            for (key, time) in &holder.keys {
                let row = model.iter().find(|h| {
                    u64::from(h.pid) == holder.pid
                        && h.name.eq_ignore_ascii_case(key)
                        && (h.window.0..=h.window.1).contains(time)
                });
                let when = row.map_or_else(
                    || format!("at {time} (no replayed open at that instant)"),
                    opened,
                );
                keys.push((
                    holder.pid,
                    holder.image.clone(),
                    key.clone(),
                    mount.clone(),
                    when,
                ));
            }
        }
    }
    keys
}

/// Per process: the model's image and parent, its open keys, the driver's processes answer;
/// returns the lines and whether they agree.
fn process_lines(ctx: &mut Ctx, client: &Client, model: &[OpenHandle]) -> (String, bool) {
    let mut counts: BTreeMap<u64, (String, u64, u64)> = BTreeMap::new();
    for h in model {
        counts
            .entry(h.pid.into())
            .or_insert_with(|| (format!("{} (parent {})", h.image, h.parent), 0, 0))
            .1 += 1;
    }
    let mut agree = true;
    for (pid, keys, image) in client.processes(ctx) {
        if keys > 0 {
            let e = counts.entry(pid).or_insert_with(|| (image.clone(), 0, 0));
            e.2 = keys;
            let same =
                e.0.to_ascii_uppercase()
                    .starts_with(&format!("{} (", image.to_ascii_uppercase()));
            if !same {
                e.0 = format!("{} (driver: {image})", e.0);
                agree = false;
            }
        }
    }
    let mut out = String::new();
    for (pid, (image, model_keys, driver_keys)) in &counts {
        agree &= model_keys == driver_keys;
        let _ = writeln!(
            out,
            "   processes  PID {pid} {image}: model {model_keys} open keys, driver {driver_keys}"
        );
    }
    (out, agree)
}

/// Prints the model's handle table beside the driver's holders and processes answers;
/// returns the text and whether the two agree.
fn compare(ctx: &mut Ctx, client: &Client, label: &str, model: &[OpenHandle]) -> (String, bool) {
    // The driver's own key of the hive list, opened in DriverEntry before its callback
    // registered (so that no callback of its sees it: review 18b) and kept open for its later
    // reads (`driver/src/reseed.rs`): a System kernel handle no capture row opened, which the
    // driver by design does not track.
    let model: Vec<OpenHandle> = model
        .iter()
        .filter(|h| {
            !(h.pid == 4
                && h.row == 0
                && h.name.to_ascii_lowercase().ends_with(r"\control\hivelist"))
        })
        .cloned()
        .collect();
    let model = &model[..];
    let mut model_keys: Vec<KeyLine> = model
        .iter()
        .map(|h| {
            (
                h.pid.into(),
                h.image.clone(),
                h.name.clone(),
                h.hive.clone(),
                opened(h),
            )
        })
        .collect();
    let mut driver_keys = driver_keys(ctx, client, model);
    model_keys.sort_by_key(fold);
    driver_keys.sort_by_key(fold);
    let mut out = format!(
        "-- {label}: model {} open keys, driver {}\n",
        model_keys.len(),
        driver_keys.len()
    );
    let mut agree = true;
    let (mut i, mut j) = (0, 0);
    loop {
        let (mark, k) = match (model_keys.get(i), driver_keys.get(j)) {
            (None, None) => break,
            (Some(a), Some(b)) if fold(a) == fold(b) => {
                i += 1;
                j += 1;
                ("both       ", a)
            }
            (Some(a), b) if b.is_none_or(|b| fold(a) < fold(b)) => {
                i += 1;
                ("model only ", a)
            }
            (_, Some(b)) => {
                j += 1;
                ("driver only", b)
            }
            (Some(a), None) => {
                i += 1;
                ("model only ", a)
            }
        };
        agree &= mark.starts_with("both");
        let _ = writeln!(
            out,
            "   {mark} PID {} {}: {} [hive {}] opened {}",
            k.0,
            k.1,
            k.2,
            k.3.to_ascii_uppercase(),
            k.4
        );
    }
    let (processes, same) = process_lines(ctx, client, model);
    out.push_str(&processes);
    (out, agree && same)
}
