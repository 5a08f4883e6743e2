//! Output of the stack features (issue 16): the capture state, the stack lines under each
//! key of `holders --stacks`, and the `modules` ranking.

use std::fmt::Write as _;

use crate::model::{CaptureReport, HeldKey, HoldersReport, KeyStack, ModulesReport, StackCoverage};
use crate::render::{Align, Format, csv, json, source_line, table};

/// Renders `capture`.
///
/// # Errors
/// JSON serialisation failure (not expected).
pub fn capture(r: &CaptureReport, f: Format) -> serde_json::Result<String> {
    let since = r.since.as_ref().map(|t| t.utc.clone());
    Ok(match f {
        Format::Json => json(r)?,
        Format::Csv => csv(
            &["scope", "target", "since", "max_frames"],
            &[vec![
                r.scope.clone(),
                r.target.clone().unwrap_or_default(),
                since.unwrap_or_default(),
                r.max_frames.to_string(),
            ]],
        ),
        Format::Table => {
            let mut out = String::new();
            let since = since.map(|s| format!(" since {s}")).unwrap_or_default();
            let target = r.target.as_deref().unwrap_or_default();
            let what = match r.scope.as_str() {
                "off" => String::new(),
                "all" => "every tracked open".to_owned(),
                "hive" => format!(
                    "opens of keys in hive {} ({target})",
                    r.hive.as_deref().unwrap_or(target)
                ),
                "process" => {
                    format!("opens by process {target} (and any later process given the same id)")
                }
                _ => format!("opens by processes of image {target}"),
            };
            if r.scope == "off" {
                let _ = writeln!(
                    out,
                    "Stack capture is off{since}.\nTurn it on with `hivetrack capture on` (every open), `--hive HIVE`, `--image NAME` or `--pid PID`."
                );
            } else {
                let _ = writeln!(
                    out,
                    "Stack capture is on for {what}{since}, at most {} frames per stack.\nKeys opened while it is on carry their stack (`hivetrack holders HIVE --stacks`, `hivetrack modules HIVE`); keys opened before have none.",
                    r.max_frames
                );
            }
            out.push('\n');
            out.push_str(&source_line(&r.source));
            out.push('\n');
            out
        }
    })
}

/// The header line of one stack under a key (`opened from stack 3 (truncated …):`), or
/// the whole sentence when it has no frames.
fn stack_header(s: &KeyStack, of: Option<(usize, usize)>) -> String {
    let has = |f: &str| s.flags.iter().any(|x| x == f);
    let share = of.map_or_else(String::new, |(n, all)| format!(" ({n} of {all} opens)"));
    if has("empty") {
        return format!(
            "opened from: no user-mode frames{share} (a kernel-mode opener, or a stack that could not be read)"
        );
    }
    if has("dropped") {
        return format!(
            "opened from: not known{share} (the stack was captured but not stored: the driver's stack table was full or out of memory)"
        );
    }
    if has("out_of_scope") {
        return format!(
            "opened from: not captured{share} (capture was on for another hive or image: `hivetrack capture status`)"
        );
    }
    if has("not_captured") {
        return format!(
            "opened from: not captured{share} (capture was off for this open: `hivetrack capture on`)"
        );
    }
    if has("unknown_stack") {
        return format!(
            "opened from stack {}{share}: not on the driver's stacks page (the key was closed while the report was read)",
            s.id
        );
    }
    if has("truncated") {
        return format!(
            "opened from stack {}{share} (truncated: only its innermost {} frames were kept):",
            s.id,
            s.frames.len()
        );
    }
    if has("wow64") {
        return format!(
            "opened from stack {}{share} (a 32-bit process: these are the frames of its 64-bit Wow64 layer; its own 32-bit callers cannot be seen by the driver):",
            s.id
        );
    }
    if has("may_be_partial") {
        return format!(
            "opened from stack {}{share} (may be partial: it does not end in ntdll.dll, where a thread's stack starts, so the walk may have stopped at code it could not unwind, as JIT-compiled code):",
            s.id
        );
    }
    format!("opened from stack {}{share}:", s.id)
}

/// The stack lines of a group of keys with one name: each distinct stack once.
pub(crate) fn key_stacks(keys: &[&HeldKey], out: &mut String) {
    let stacks: Vec<&KeyStack> = keys.iter().filter_map(|k| k.stack.as_ref()).collect();
    let mut distinct: Vec<(&KeyStack, usize)> = Vec::new();
    for s in &stacks {
        match distinct
            .iter_mut()
            .find(|(d, _)| d.id == s.id && d.flags == s.flags)
        {
            Some((_, n)) => *n += 1,
            None => distinct.push((s, 1)),
        }
    }
    for (s, n) in &distinct {
        let of = (distinct.len() > 1).then_some((*n, stacks.len()));
        let _ = writeln!(out, "  {}", stack_header(s, of));
        for f in &s.frames {
            let _ = writeln!(out, "    {}", f.text);
        }
    }
}

/// What the stacks could not show, one sentence each.
fn coverage_notes(c: &StackCoverage, out: &mut String) {
    if c.image_loads_tracked == Some(false) {
        out.push_str(
            "The driver is not told of image loads (stats image_loads_tracked = 0): frames cannot be resolved to modules.\n",
        );
    }
    if c.modules_dropped > 0 {
        let _ = writeln!(
            out,
            "{} image load(s) could not be recorded, or only without their path (stats modules_dropped): frames in those images show as (no module) or <image at …>.",
            c.modules_dropped
        );
    }
    if c.stacks_dropped > 0 {
        let _ = writeln!(
            out,
            "{} stack(s) could not be stored (stats stacks_dropped): their keys say so.",
            c.stacks_dropped
        );
    }
}

/// The notes `holders --stacks` ends with (before the source line); nothing without
/// `--stacks`.
pub(crate) fn holders_notes(r: &HoldersReport, out: &mut String) {
    if let Some(c) = &r.stacks {
        let mut notes = String::new();
        coverage_notes(c, &mut notes);
        if !notes.is_empty() {
            out.push('\n');
            out.push_str(&notes);
        }
    }
}

/// A key's stack as one CSV cell: the frames' texts joined by ` | `, or its flags.
pub(crate) fn stack_cell(k: &HeldKey) -> String {
    k.stack.as_ref().map_or_else(String::new, |s| {
        let mut parts: Vec<String> = s.flags.iter().map(|f| format!("[{f}]")).collect();
        parts.extend(s.frames.iter().map(|f| f.text.clone()));
        parts.join(" | ")
    })
}

/// Renders `modules`.
///
/// # Errors
/// JSON serialisation failure (not expected).
pub fn modules(r: &ModulesReport, f: Format) -> serde_json::Result<String> {
    Ok(match f {
        Format::Json => json(r)?,
        Format::Csv => csv(
            &[
                "rank",
                "module",
                "path",
                "plumbing_only",
                "keys",
                "processes",
                "holders",
                "example_keys",
            ],
            &r.modules
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    vec![
                        (i + 1).to_string(),
                        m.name.clone(),
                        m.module.clone().unwrap_or_default(),
                        m.plumbing_only.to_string(),
                        m.keys.to_string(),
                        m.processes.to_string(),
                        m.holders.join(";"),
                        m.example_keys.join(";"),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "Modules that opened the {} key(s) still held in {}",
                r.held_keys,
                if r.hives.len() == 1 {
                    r.hives[0].clone()
                } else {
                    format!("{} hive(s)", r.hives.len())
                }
            );
            if r.modules.is_empty() {
                out.push_str("No held key carries a stack.\n");
            } else {
                out.push('\n');
                let rows: Vec<Vec<String>> = r
                    .modules
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        vec![
                            (i + 1).to_string(),
                            m.keys.to_string(),
                            m.processes.to_string(),
                            if m.plumbing_only {
                                format!("{} [OS plumbing only]", m.name)
                            } else {
                                m.name.clone()
                            },
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &[
                        ("#", Align::Right),
                        ("KEYS", Align::Right),
                        ("PROCS", Align::Right),
                        ("MODULE", Align::Left),
                    ],
                    &rows,
                ));
                module_details(r, &mut out);
            }
            notes(r, &mut out);
            out.push('\n');
            out.push_str(&source_line(&r.source));
            out.push('\n');
            out
        }
    })
}

/// Per ranked module: its path, its holders, a few of its keys.
fn module_details(r: &ModulesReport, out: &mut String) {
    for (i, m) in r.modules.iter().enumerate() {
        let what = match &m.module {
            Some(path) => path.clone(),
            None if m.name == crate::modules::NO_MODULE => {
                "(no module: code in no image the driver recorded, as JIT code)".to_owned()
            }
            // `<image at 0x…>`: an image, not JIT code (review 20b, R7).
            None => format!(
                "{} (an image whose path the driver could not record: stats modules_dropped)",
                m.name
            ),
        };
        let _ = writeln!(out, "\n{}. {what}", i + 1);
        let _ = writeln!(out, "   held by {}", m.holders.join(", "));
        for k in &m.example_keys {
            let _ = writeln!(out, "   {k}");
        }
        if m.keys > m.example_keys.len() as u64 {
            let _ = writeln!(out, "   … {} more", m.keys - m.example_keys.len() as u64);
        }
    }
}

/// How the ranking was made and what it could not attribute.
fn notes(r: &ModulesReport, out: &mut String) {
    out.push_str(
                "\nEach key is attributed to its first frame outside the OS registry plumbing (ntdll, kernelbase, kernel32, advapi32, sechost, shlwapi, shcore, wow64); [OS plumbing only]: no frame left it (the innermost frame's module is named).\n",
            );
    let w = &r.without_stack;
    if w.not_captured + w.empty + w.dropped + w.untracked > 0 {
        let _ = writeln!(
            out,
            "{} held key(s) without a stack: {} not captured (opened while capture was off or outside its scope), {} empty (a kernel-mode opener, or an unreadable stack), {} dropped (not stored), {} not in hivetrack's records (the kernel lists them: opened before tracking started, or lost).",
            w.not_captured + w.empty + w.dropped + w.untracked,
            w.not_captured,
            w.empty,
            w.dropped,
            w.untracked
        );
    }
    if w.cut_in_plumbing > 0 {
        let _ = writeln!(
            out,
            "{} held key(s) are not ranked: their stacks were cut at the driver's frame limit while still inside the OS registry plumbing, so the code that asked was not captured.",
            w.cut_in_plumbing
        );
    }
    if w.wow64 > 0 {
        let _ = writeln!(
            out,
            "{} held key(s) opened by 32-bit processes are not ranked: their stacks show only the 64-bit Wow64 layer, and their own 32-bit callers cannot be seen by the driver.",
            w.wow64
        );
    }
    coverage_notes(&r.stacks, out);
}
