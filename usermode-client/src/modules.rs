//! `hivetrack modules`: which modules opened the keys still held — the list to hand to a
//! vendor (issue 16).
//!
//! Every held key with a stack is attributed to its **first frame outside the OS registry
//! plumbing** ([`PLUMBING`]: the system DLLs every registry call passes through on its way
//! to the kernel), innermost first: the code that asked for the key. A frame in no known
//! module counts as code (JIT code, an image whose load was not recorded) and is attributed
//! as `(no module)`; one in an image whose path was not recorded, as `<image at 0x…>` (its
//! base). When every frame of a whole stack is plumbing (an OS component's own
//! opens), the key goes to the **innermost frame's module**
//! and the row says `plumbing only`: that frame is the one that entered the kernel, the same
//! module for every such stack, so those keys form one row that reads as the OS rather than
//! being scattered over thread-start routines (the outermost frame of a whole stack is
//! `ntdll!RtlUserThreadStart` for every thread, and names nobody). A stack cut at the
//! driver's frame limit before it left the plumbing, and a 32-bit process's (only the Wow64
//! layer), name no caller: those keys are counted, not ranked.

use std::collections::HashMap;

use crate::hive_name::display;
use crate::model::{
    Frame, HoldersReport, KeyStack, ModulesReport, RankedModule, Source, StackCoverage,
    WithoutStack, schema,
};
use crate::stacks::file_name;

/// The OS registry plumbing, by file name (compared case-insensitively): one list for the
/// live report and the capture's replay.
pub use capture::plumbing::PLUMBING;

/// Most example keys per module.
pub const EXAMPLES: usize = 3;

/// True when the image at `path` is OS registry plumbing.
#[must_use]
pub fn is_plumbing(path: &str) -> bool {
    let name = file_name(path);
    PLUMBING.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The frame a key's stack is attributed to, and whether every frame was plumbing;
/// `None` for a stack without frames.
#[must_use]
pub fn attribute(stack: &KeyStack) -> Option<(&Frame, bool)> {
    stack
        .frames
        .iter()
        .find(|f| !f.module.as_deref().is_some_and(is_plumbing))
        .map(|f| (f, false))
        .or_else(|| stack.frames.first().map(|f| (f, true)))
}

/// [`attribute`], but `None` also for a stack that names no caller though it has frames.
///
/// Those are a 32-bit process's (`wow64`: only the Wow64 layer; audit 20a, M2) and one cut
/// at the driver's frame limit before it left the plumbing (the caller is in the frames not
/// kept; filing it under the OS would clear whoever it was; audit 20b, L7). What `hivetrack
/// modules` ranks and event 1001 names.
#[must_use]
pub fn caller(stack: &KeyStack) -> Option<(&Frame, bool)> {
    let has = |f: &str| stack.flags.iter().any(|x| x == f);
    if has("wow64") {
        return None;
    }
    attribute(stack).filter(|&(_, plumbing_only)| !(plumbing_only && has("truncated")))
}

/// What a ranking calls the module of `frame`.
///
/// Its file name; `<image at 0x…>` (its base) for an image whose path the driver could not
/// record (`module` null, `offset` set: an
/// image, so not code in none, and not the same as another such image; until 2026-12-06
/// these were all "(no module) … as JIT code", review 20b, R7); `(no module)` for code in no
/// image the driver recorded.
#[must_use]
pub fn frame_label(frame: &Frame) -> String {
    match (&frame.module, frame.offset) {
        (Some(m), _) => file_name(m).to_owned(),
        (None, Some(offset)) => format!("<image at {:#x}>", frame.address - offset),
        (None, None) => NO_MODULE.to_owned(),
    }
}

/// The label of code in no recorded image ([`frame_label`]).
pub const NO_MODULE: &str = capture::plumbing::NO_MODULE;

/// Counts a held key whose stack names no caller under its reason.
fn count_without(without: &mut WithoutStack, stack: Option<&KeyStack>) {
    let has = |f: &str| stack.is_some_and(|s| s.flags.iter().any(|x| x == f));
    if has("wow64") {
        without.wow64 += 1;
    } else if has("truncated") {
        without.cut_in_plumbing += 1;
    } else if has("empty") {
        without.empty += 1;
    } else if has("dropped") {
        without.dropped += 1;
    } else {
        without.not_captured += 1;
    }
}

/// One row while it is counted.
struct Row {
    module: Option<String>,
    name: String,
    plumbing_only: bool,
    keys: u64,
    processes: Vec<(u64, u64)>,
    holders: Vec<String>,
    example_keys: Vec<String>,
}

/// Ranks the modules that opened the keys of `reports`.
///
/// The keys carry resolved stacks ([`crate::stacks::StackTable::annotate`]). Most keys
/// first, then most processes, then callers before plumbing-only rows.
#[must_use]
pub fn rank(reports: &[HoldersReport], source: Source, coverage: StackCoverage) -> ModulesReport {
    let mut rows: Vec<Row> = Vec::new();
    let mut index: HashMap<(String, bool), usize> = HashMap::new();
    let mut without = WithoutStack::default();
    let mut held_keys = 0;
    for r in reports {
        // Keys only the kernel lists are held too; with no record there is no stack.
        let untracked: u64 = r.untracked.iter().map(|u| u.open_keys).sum();
        held_keys += untracked;
        without.untracked += untracked;
        for h in &r.holders {
            for k in &h.keys {
                held_keys += 1;
                let Some((frame, plumbing_only)) = k.stack.as_ref().and_then(caller) else {
                    count_without(&mut without, k.stack.as_ref());
                    continue;
                };
                // By path; an image without one by its base; code in none, one row.
                let name = frame_label(frame);
                let key = (
                    frame
                        .module
                        .as_ref()
                        .map_or_else(|| name.to_lowercase(), |m| m.to_lowercase()),
                    plumbing_only,
                );
                let i = *index.entry(key).or_insert_with(|| {
                    rows.push(Row {
                        module: frame.module.clone(),
                        name,
                        plumbing_only,
                        keys: 0,
                        processes: Vec::new(),
                        holders: Vec::new(),
                        example_keys: Vec::new(),
                    });
                    rows.len() - 1
                });
                let row = &mut rows[i];
                row.keys += 1;
                if !row.processes.contains(&(h.pid, h.start_key)) {
                    row.processes.push((h.pid, h.start_key));
                    let image = h.image.as_deref().map_or("image unknown", file_name);
                    let exited = if h.exited { ", exited" } else { "" };
                    row.holders.push(format!("{image} ({}{exited})", h.pid));
                }
                let name = k
                    .name
                    .clone()
                    .unwrap_or_else(|| "<name not recorded>".to_owned());
                if row.example_keys.len() < EXAMPLES
                    && !row
                        .example_keys
                        .iter()
                        .any(|e| e.eq_ignore_ascii_case(&name))
                {
                    row.example_keys.push(name);
                }
            }
        }
    }
    let mut modules: Vec<RankedModule> = rows
        .into_iter()
        .map(|r| RankedModule {
            name: r.name,
            module: r.module,
            plumbing_only: r.plumbing_only,
            keys: r.keys,
            processes: r.processes.len() as u64,
            holders: r.holders,
            example_keys: r.example_keys,
        })
        .collect();
    modules.sort_by(|a, b| {
        (b.keys, b.processes, a.plumbing_only)
            .cmp(&(a.keys, a.processes, b.plumbing_only))
            .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
    });
    ModulesReport {
        schema: schema("modules"),
        source,
        hives: reports.iter().map(|r| display(&r.hive.path)).collect(),
        held_keys,
        modules,
        without_stack: without,
        stacks: coverage,
    }
}
