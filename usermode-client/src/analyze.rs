//! `hivetrack analyze`: the report of a Process Monitor capture (read and replayed by the
//! `capture` crate) as a table, CSV, or JSON (`hivetrack.analysis/1`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use capture::Analysis;
use capture::replay::{At, Options};
use capture::report::{Holder, Key};

use crate::cli::AnalyzeView;
use crate::commands::CliError;
use crate::exit;
use crate::model::utc_text;
use crate::render::{Align, Format, csv, table};

/// The replay options from the command line (`from_boot`: the capture began at boot, so no
/// key can have been opened before it).
///
/// # Errors
/// [`CliError::BadArgument`] for an `--at` that is neither a row nor a time of day, or an
/// `--hkcu-sid` that is not `[USER=]SID`.
pub fn options(
    hkcu_sid: &[String],
    hive: &Option<String>,
    pid: Option<u32>,
    at: Option<&str>,
    from_boot: bool,
    all_events: bool,
) -> Result<Options, CliError> {
    let mut hkcu = capture::paths::HkcuSids::default();
    for a in hkcu_sid {
        hkcu.add(a).map_err(CliError::BadArgument)?;
    }
    Ok(Options {
        hkcu,
        hive: hive.clone(),
        pid,
        at: at
            .map(At::parse)
            .transpose()
            .map_err(CliError::BadArgument)?,
        from_boot,
        all_events,
    })
}

/// The exit code of an analysis, as the live reports' (`holders --fail-if-held`, `wait`).
///
/// 4 with `--strict` when the analysis is not complete; 1 with `--fail-if-held` when keys
/// are held at the chosen point (held is held, however much the capture could not see); 4
/// with `--fail-if-held` when nothing held was seen but the analysis is not complete (holders
/// not named, keys opened before the capture, `HKCU` keys that may be in the hive, nothing
/// replayed): a script gated on the verdict must not go on as if the hive were free. Until
/// 2026-12-05 these exited 0 (found in review).
#[must_use]
pub const fn verdict(a: &Analysis, strict: bool, fail_if_held: bool) -> u8 {
    match () {
        () if strict && !a.complete => exit::INCOMPLETE,
        () if fail_if_held && !a.open.is_empty() => exit::HELD,
        () if fail_if_held && !a.complete => exit::INCOMPLETE,
        () => exit::OK,
    }
}

/// The analysis's completeness in one line, as the live reports' `source:` line: printed
/// on stderr with CSV (whose rows cannot carry it without changing every consumer).
#[must_use]
pub fn status_line(a: &Analysis) -> String {
    let mut s = format!(
        "analysis: {} ({}), {} of {} rows replayed",
        a.capture.path, a.capture.format, a.capture.rows, a.capture.total_rows
    );
    if a.complete {
        s.push_str(", complete");
    } else {
        let _ = write!(s, ", INCOMPLETE: {}", a.missing.join("; "));
    }
    s
}

/// A capture time: date and time when the capture has dates, else the time of day.
fn when(filetime: u64, csv_clock: bool) -> String {
    const DAY: u64 = 864_000_000_000;
    if filetime == 0 {
        return String::new();
    }
    if filetime < DAY {
        let s = filetime / 10_000_000;
        return format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    }
    let t = utc_text(filetime);
    if csv_clock {
        t.trim_end_matches('Z').to_owned()
    } else {
        t
    }
}

/// One CSV row per key `h` holds; `unseen`: the report of that point may miss holders
/// (the `holders_unseen` column, as `unload-history`'s).
fn key_rows(
    section: &str,
    at: &(u64, String, bool),
    hive: &str,
    h: &Holder,
    rows: &mut Vec<Vec<String>>,
) {
    for k in &h.keys {
        rows.push(vec![
            section.to_owned(),
            at.0.to_string(),
            at.1.clone(),
            hive.to_owned(),
            h.pid.to_string(),
            h.image.clone(),
            k.path.clone(),
            k.row.to_string(),
            k.module.clone().unwrap_or_default(),
            at.2.to_string(),
        ]);
    }
}

/// Renders `a` in `view` and `format`. JSON is always the whole `hivetrack.analysis/1`
/// document (the views are projections of it).
///
/// # Errors
/// JSON serialisation failures.
pub fn render(a: &Analysis, view: AnalyzeView, format: Format) -> serde_json::Result<String> {
    if format == Format::Json {
        let mut s = serde_json::to_string_pretty(a)?;
        s.push('\n');
        return Ok(s);
    }
    let csv_clock = a.capture.format == "csv";
    Ok(match view {
        AnalyzeView::Report | AnalyzeView::Holders => report(a, view, format, csv_clock),
        AnalyzeView::Processes => processes(a, format),
        AnalyzeView::Modules => modules(a, format),
    })
}

/// The report as CSV: one row per held key (and per unload attempt without holders).
fn report_csv(a: &Analysis, view: AnalyzeView, csv_clock: bool) -> String {
    const HEAD: [&str; 10] = [
        "section",
        "row",
        "time",
        "hive",
        "pid",
        "image",
        "key",
        "opened_row",
        "module",
        "holders_unseen",
    ];
    let t = |ft| when(ft, csv_clock);
    let mut rows = Vec::new();
    if view == AnalyzeView::Report {
        for u in &a.unload_attempts {
            if u.holders.is_empty() {
                rows.push(vec![
                    "unload".into(),
                    u.row.to_string(),
                    t(u.time),
                    u.hive.clone(),
                    String::new(),
                    format!(
                        "({}; {})",
                        if u.complete {
                            "no holders"
                        } else {
                            "no holders seen"
                        },
                        u.result
                    ),
                    String::new(),
                    String::new(),
                    String::new(),
                    (!u.complete).to_string(),
                ]);
            }
            let at = (u.row, t(u.time), !u.complete);
            for h in &u.holders {
                key_rows("unload", &at, &u.hive, h, &mut rows);
            }
        }
        for e in &a.exits {
            let at = (e.row, t(e.time), !a.complete);
            key_rows("exit-leak", &at, "", &e.holder, &mut rows);
        }
    }
    let end = a.capture.at_row.unwrap_or(a.capture.rows);
    for hh in &a.open {
        for h in &hh.holders {
            key_rows(
                "open",
                &(end, t(a.capture.last_time), !a.complete),
                &hh.hive,
                h,
                &mut rows,
            );
        }
    }
    csv(&HEAD, &rows)
}

/// The report (unload attempts, exits, what is open) or the holders view alone.
fn report(a: &Analysis, view: AnalyzeView, format: Format, csv_clock: bool) -> String {
    if format == Format::Csv {
        return report_csv(a, view, csv_clock);
    }
    let t = |ft| when(ft, csv_clock);
    let mut out = String::new();
    header(a, &mut out);
    if view == AnalyzeView::Report {
        let _ = writeln!(out, "\nunload attempts: {}", a.unload_attempts.len());
        for u in &a.unload_attempts {
            let n: u64 = u.holders.iter().map(|h| h.open_keys).sum();
            let _ = writeln!(
                out,
                "  row {} {} {} by {} ({}): {}; {} keys held by {} processes",
                u.row,
                t(u.time),
                u.hive,
                u.image,
                u.pid,
                u.result,
                n,
                u.holders.len()
            );
            for h in &u.holders {
                let _ = writeln!(out, "    {} ({}): {} keys", h.image, h.pid, h.open_keys);
                for k in &h.keys {
                    let _ = writeln!(out, "      {}  (row {}{})", k.path, k.row, module_note(k));
                }
            }
            for m in &u.missing {
                let _ = writeln!(out, "    INCOMPLETE: {m}");
            }
            for h in &u.maybe_holders {
                let _ = writeln!(
                    out,
                    "    may hold it: {} ({}): {} HKCU keys of a user whose SID was not given",
                    h.image, h.pid, h.open_keys
                );
                for k in &h.keys {
                    let _ = writeln!(out, "      {}  (row {}{})", k.path, k.row, module_note(k));
                }
            }
        }
        let _ = writeln!(
            out,
            "\nprocess exits with keys still open (leaks): {}",
            a.exits.len()
        );
        for e in &a.exits {
            let _ = writeln!(
                out,
                "  row {} {} {} ({}): {} keys closed only by the exit",
                e.row,
                t(e.time),
                e.holder.image,
                e.holder.pid,
                e.holder.open_keys
            );
            for k in &e.holder.keys {
                let _ = writeln!(out, "      {}  (row {}{})", k.path, k.row, module_note(k));
            }
        }
    }
    open_table(a, &mut out);
    unknowns(a, &mut out);
    out
}

/// What was read, whether holders are named, and what the analysis could not see: the
/// head of every text view.
fn header(a: &Analysis, out: &mut String) {
    let csv_clock = a.capture.format == "csv";
    let t = |ft| when(ft, csv_clock);
    let _ = writeln!(
        out,
        "capture: {} ({}), {} of {} rows replayed, {} .. {}{}",
        a.capture.path,
        a.capture.format,
        a.capture.rows,
        a.capture.total_rows,
        t(a.capture.first_time),
        t(a.capture.last_time),
        if csv_clock {
            " (capture machine's clock)"
        } else {
            " (UTC)"
        }
    );
    if let Some(r) = &a.refusal {
        let _ = writeln!(out, "holders NOT named: {r}");
    }
    if a.complete && a.capture.all_events_stated {
        let _ = writeln!(
            out,
            "complete, given the capture holds every event as --all-events states (no capture can show it): the capture shows no sign of keys it could not see"
        );
    } else if a.complete {
        let _ = writeln!(
            out,
            "complete: the capture shows no sign of keys it could not see"
        );
    } else {
        let _ = writeln!(
            out,
            "INCOMPLETE: keys the capture could not see may be held (--fail-if-held never says free: 1 held, else 4):"
        );
        for m in &a.missing {
            let _ = writeln!(out, "  - {m}");
        }
    }
}

/// Processes ranked by keys held at the chosen point.
fn processes(a: &Analysis, format: Format) -> String {
    let mut out = String::new();
    let mut by: BTreeMap<(u32, u64), (String, bool, u64)> = BTreeMap::new();
    for hh in &a.open {
        for h in &hh.holders {
            let e = by
                .entry((h.pid, h.instance))
                .or_insert_with(|| (h.image.clone(), h.exited, 0));
            e.2 += h.open_keys;
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.2.cmp(&a.1.2).then(a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = v
        .into_iter()
        .map(|((pid, inst), (image, exited, n))| {
            vec![
                pid.to_string(),
                inst.to_string(),
                n.to_string(),
                if exited {
                    "exited".into()
                } else {
                    String::new()
                },
                image,
            ]
        })
        .collect();
    if format == Format::Csv {
        return csv(&["pid", "instance", "open_keys", "state", "image"], &rows);
    }
    header(a, &mut out);
    out.push('\n');
    out.push_str(&table(
        &[
            ("PID", Align::Right),
            ("INSTANCE", Align::Right),
            ("KEYS", Align::Right),
            ("STATE", Align::Left),
            ("IMAGE", Align::Left),
        ],
        &rows,
    ));
    unknowns(a, &mut out);
    out
}

/// The modules that opened the keys held at the chosen point.
fn modules(a: &Analysis, format: Format) -> String {
    let mut out = String::new();
    let mut by: BTreeMap<String, (u64, std::collections::BTreeSet<u32>)> = BTreeMap::new();
    for hh in &a.open {
        for h in &hh.holders {
            for k in &h.keys {
                let m = match (&k.module, k.plumbing_only) {
                    (None, _) => "(no stack)".to_owned(),
                    (Some(m), false) => m.clone(),
                    (Some(m), true) => format!("{m} (plumbing only)"),
                };
                let e = by.entry(m).or_default();
                e.0 += 1;
                e.1.insert(h.pid);
            }
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = v
        .into_iter()
        .map(|(m, (n, pids))| {
            let p: Vec<String> = pids.iter().map(u32::to_string).collect();
            vec![n.to_string(), p.join(" "), m]
        })
        .collect();
    if format == Format::Csv {
        return csv(&["open_keys", "pids", "module"], &rows);
    }
    header(a, &mut out);
    out.push('\n');
    out.push_str(&table(
        &[
            ("KEYS", Align::Right),
            ("PIDS", Align::Left),
            ("MODULE", Align::Left),
        ],
        &rows,
    ));
    unknowns(a, &mut out);
    out
}

/// What is open at the chosen point, per hive.
fn open_table(a: &Analysis, out: &mut String) {
    let end = a.capture.at_row.unwrap_or(a.capture.rows);
    let _ = writeln!(out, "\nopen at row {end}: {} hives", a.open.len());
    for hh in &a.open {
        let _ = writeln!(out, "  {}: {} keys", hh.hive, hh.open_keys);
        let r: Vec<Vec<String>> = hh
            .holders
            .iter()
            .map(|h| {
                vec![
                    h.pid.to_string(),
                    h.open_keys.to_string(),
                    if h.exited {
                        "exited".into()
                    } else {
                        String::new()
                    },
                    h.image.clone(),
                ]
            })
            .collect();
        for line in table(
            &[
                ("PID", Align::Right),
                ("KEYS", Align::Right),
                ("STATE", Align::Left),
                ("IMAGE", Align::Left),
            ],
            &r,
        )
        .lines()
        {
            let _ = writeln!(out, "    {line}");
        }
    }
}

fn module_note(k: &Key) -> String {
    match (&k.module, k.plumbing_only) {
        (None, _) => String::new(),
        (Some(m), false) => format!(", opened from {m}"),
        (Some(m), true) => format!(", opened from {m} (plumbing only)"),
    }
}

fn unknowns(a: &Analysis, out: &mut String) {
    let u = &a.unknowns;
    let _ = writeln!(out, "\nwhat this capture cannot show:");
    let _ = writeln!(
        out,
        "  {} closes without an open (keys opened before the capture started, or handles \
         duplicated/inherited): such keys still open at the end are not listed",
        u.closes_without_open
    );
    for k in &u.closes_without_open_sample {
        let _ = writeln!(out, "    e.g. {k}");
    }
    let _ = writeln!(
        out,
        "  {} failed opens (not opens); {} RegCloseKey rows",
        u.failed_opens, u.close_rows
    );
    let skipped: u64 = u.skipped.values().sum();
    let _ = writeln!(out, "  {skipped} rows skipped:");
    let mut s: Vec<_> = u.skipped.iter().collect();
    s.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in s {
        let _ = writeln!(out, "    {n:>9}  {op}");
    }
    for n in &u.notes {
        let _ = writeln!(out, "  note: {n}");
    }
}
