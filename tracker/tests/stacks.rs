//! Open-time stacks and process modules (`tracker::capture`, `tracker::stacks`,
//! `tracker::modules`): capture is off until asked and then follows its scope; equal stacks
//! are stored once and go with their last key; a stack that cannot be stored is flagged and
//! counted; modules stay with their process while its keys are reported, in load order, and
//! go with it; every allocation failure is survived with nothing leaked.
#![allow(
    clippy::cast_possible_truncation,
    clippy::many_single_char_names,
    reason = "test code: small sizes, short names"
)]

mod support;

use protocol::capture::{CaptureOp, CaptureRequest, CaptureScope, CaptureState};
use protocol::cursor::Cursor;
use protocol::holders::{HolderKey, HolderRecord, Holders};
use protocol::modules::{ModuleRecord, Modules};
use protocol::stacks::{StackRecord, Stacks};
use protocol::text::Text;
use protocol::wire::{decode, encode};
use support::*;
use tracker::{Config, ProcessKey, Token, Tracker};

const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-1001";
const EXPLORER: ProcessKey = ProcessKey {
    pid: 0x40,
    start_key: 1,
};
const OTHER: ProcessKey = ProcessKey {
    pid: 0x80,
    start_key: 2,
};
const SHELLEXT: [u64; 3] = [0x7FF8_1000_2000, 0x7FF8_3000_0100, 0x7FF6_0000_1000];

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    let t = Tracker::new(pool, Config::default()).unwrap();
    t.hive_loaded(&w(SOFTWARE), &w(r"\SystemRoot\System32\Config\SOFTWARE"), 1);
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 1);
    t.process_started(
        EXPLORER,
        &w(r"\Device\HarddiskVolume3\Windows\explorer.exe"),
    );
    t.process_started(
        OTHER,
        &w(r"\Device\HarddiskVolume3\Windows\System32\svchost.exe"),
    );
    t
}

fn set(t: &TestTracker<'_>, scope: CaptureScope, text: &str) -> (CaptureScope, String) {
    let units = w(text);
    let req = CaptureRequest {
        op: CaptureOp::Set,
        scope,
        text: Text::Units(&units),
    };
    let mut input = [0u8; 256];
    let n = encode(&req, &mut input).unwrap();
    let mut out = [0u8; 256];
    let m = t.answer_capture(&input[..n], &mut out, 42).unwrap();
    let st = decode::<CaptureState<'_>>(&out[..m]).unwrap();
    (st.scope, fold_text(&st.text))
}

/// The driver's sequence: open, ask, walk, hand the frames over.
fn open(t: &TestTracker<'_>, p: ProcessKey, object: u64, name: &str, frames: &[u64]) -> Token {
    let token = t.opened(object, p, 7, &w(name), 0x2_0019, 10).unwrap();
    if t.capture_wanted(token) {
        t.stack_captured(token, object, frames, false);
    }
    token
}

/// (key name, stack id, flags) of every key held in `hive`.
fn keys(t: &TestTracker<'_>, hive: &str) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(hive), c, 0, 0, b),
        |p| {
            for r in p.records() {
                if let HolderRecord::Key(k) = r {
                    out.push((fold_text(&k.name), k.stack, k.flags));
                }
            }
        },
    );
    out.sort();
    out
}

fn stacks(t: &TestTracker<'_>) -> Vec<StackRecord> {
    let mut out = Vec::new();
    drain::<Stacks>(200, |c, b| t.stacks(c, 0, b), |p| out.extend(p.records()));
    out
}

/// (pid, [(base, name)]) per process listed.
fn modules(t: &TestTracker<'_>, buf: usize) -> Vec<(u64, Vec<(u64, String)>)> {
    let mut out: Vec<(u64, Vec<(u64, String)>)> = Vec::new();
    drain::<Modules>(
        buf,
        |c, b| t.modules(c, 0, b),
        |p| {
            for r in p.records() {
                match r {
                    ModuleRecord::Process(pr) => {
                        if out.last().is_none_or(|(pid, _)| *pid != pr.pid) {
                            out.push((pr.pid, Vec::new()));
                        }
                    }
                    ModuleRecord::Module(m) => {
                        out.last_mut().unwrap().1.push((m.base, fold_text(&m.name)));
                    }
                }
            }
        },
    );
    out
}

#[test]
fn off_by_default_then_all_opens_deduplicated() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    let a = open(
        &t,
        EXPLORER,
        0x1000,
        &format!(r"{USER}\Software\A"),
        &SHELLEXT,
    );
    assert_eq!(keys(&t, USER)[0].1, 0, "captured while off");
    assert_eq!(
        set(&t, CaptureScope::All, ""),
        (CaptureScope::All, String::new())
    );
    let b = open(
        &t,
        EXPLORER,
        0x2000,
        &format!(r"{USER}\Software\B"),
        &SHELLEXT,
    );
    let c = open(&t, OTHER, 0x3000, &format!(r"{SOFTWARE}\C"), &SHELLEXT[1..]);
    let held = keys(&t, USER);
    let id = held.iter().find(|k| k.0.ends_with("\\B")).unwrap().1;
    assert_ne!(id, 0);
    let st = stacks(&t);
    assert_eq!(st.len(), 2, "equal stacks stored once: {st:?}");
    let shared = st.iter().find(|s| s.id == id).unwrap();
    assert_eq!(shared.frames(), SHELLEXT);
    assert_eq!(shared.uses, 1);
    let d = open(&t, OTHER, 0x4000, &format!(r"{SOFTWARE}\D"), &SHELLEXT);
    assert_eq!(stacks(&t).iter().find(|s| s.id == id).unwrap().uses, 2);
    assert_eq!(t.stats().stacks_stored, 2);
    assert_eq!(t.stats().stacks_captured, 3);
    for (tok, obj) in [(a, 0x1000), (b, 0x2000), (c, 0x3000), (d, 0x4000)] {
        t.object_destroyed(tok, obj);
    }
    assert_eq!(t.stats().stacks_stored, 0);
    assert!(stacks(&t).is_empty());
}

#[test]
fn scope_by_hive_and_by_image() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    // Any key path inside the hive names it.
    set(&t, CaptureScope::Hive, &format!(r"{USER}\Software"));
    open(
        &t,
        EXPLORER,
        0x1000,
        &format!(r"{USER}\Software\A"),
        &SHELLEXT,
    );
    open(&t, EXPLORER, 0x2000, &format!(r"{SOFTWARE}\B"), &SHELLEXT);
    assert_ne!(keys(&t, USER)[0].1, 0);
    assert_eq!(keys(&t, SOFTWARE)[0].1, 0, "captured outside the hive");
    // An image's file name, case-insensitively.
    set(&t, CaptureScope::Image, "EXPLORER.EXE");
    open(&t, EXPLORER, 0x3000, &format!(r"{SOFTWARE}\C"), &SHELLEXT);
    open(&t, OTHER, 0x4000, &format!(r"{SOFTWARE}\D"), &SHELLEXT);
    let sw = keys(&t, SOFTWARE);
    assert_ne!(sw.iter().find(|k| k.0.ends_with("\\C")).unwrap().1, 0);
    assert_eq!(sw.iter().find(|k| k.0.ends_with("\\D")).unwrap().1, 0);
    assert_eq!(set(&t, CaptureScope::Off, "").0, CaptureScope::Off);
    open(&t, EXPLORER, 0x5000, &format!(r"{SOFTWARE}\E"), &SHELLEXT);
    assert_eq!(
        keys(&t, SOFTWARE)
            .iter()
            .find(|k| k.0.ends_with("\\E"))
            .unwrap()
            .1,
        0
    );
}

/// Audit 23b M5: one process id, not every process of its image. Two `svchost.exe`
/// processes: only the named one's opens are captured; the other's are flagged out of
/// scope, not "capture off".
#[test]
fn scope_by_process_id() {
    const SVC_A: ProcessKey = ProcessKey {
        pid: 0x1234,
        start_key: 3,
    };
    const SVC_B: ProcessKey = ProcessKey {
        pid: 0x1238,
        start_key: 4,
    };
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    for p in [SVC_A, SVC_B] {
        t.process_started(
            p,
            &w(r"\Device\HarddiskVolume3\Windows\System32\svchost.exe"),
        );
    }
    let pid = SVC_A.pid.to_string();
    assert_eq!(
        set(&t, CaptureScope::Process, &pid),
        (CaptureScope::Process, pid)
    );
    open(&t, SVC_A, 0x1000, &format!(r"{SOFTWARE}\A"), &SHELLEXT);
    open(&t, SVC_B, 0x2000, &format!(r"{SOFTWARE}\B"), &SHELLEXT);
    let sw = keys(&t, SOFTWARE);
    let a = sw.iter().find(|k| k.0.ends_with("\\A")).unwrap();
    let b = sw.iter().find(|k| k.0.ends_with("\\B")).unwrap();
    assert_ne!(a.1, 0, "the named process's open is captured: {a:?}");
    assert_eq!(
        (b.1, b.2 & HolderKey::STACK_OUT_OF_SCOPE),
        (0, HolderKey::STACK_OUT_OF_SCOPE),
        "the same image's other process is out of scope: {b:?}"
    );
}

#[test]
fn empty_and_dropped_stacks_are_flagged_and_counted() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    set(&t, CaptureScope::All, "");
    open(&t, EXPLORER, 0x1000, &format!(r"{USER}\K1"), &[]);
    let tok = t
        .opened(0x2000, EXPLORER, 7, &w(&format!(r"{USER}\K2")), 1, 10)
        .unwrap();
    // The stack table's first blocks (directory, chains, a chunk) fail.
    pool.set_failure(Failure::FromK(pool.calls() + 1));
    assert!(t.capture_wanted(tok));
    t.stack_captured(tok, 0x2000, &SHELLEXT, false);
    pool.set_failure(Failure::Never);
    let k = keys(&t, USER);
    assert_eq!(k[0].2 & HolderKey::STACK_EMPTY, HolderKey::STACK_EMPTY);
    assert_eq!(k[1].2 & HolderKey::STACK_DROPPED, HolderKey::STACK_DROPPED);
    assert_eq!((k[0].1, k[1].1), (0, 0));
    let s = t.stats();
    assert_eq!(
        (s.stacks_empty, s.stacks_dropped, s.stacks_captured),
        (1, 1, 0)
    );
    // Deeper than kept: cut and flagged.
    let deep: Vec<u64> = (1..=40).map(|i| 0x7FF0_0000_0000 + i).collect();
    let tok = t
        .opened(0x3000, EXPLORER, 7, &w(&format!(r"{USER}\K3")), 1, 10)
        .unwrap();
    t.stack_captured(tok, 0x3000, &deep, true);
    let st = stacks(&t);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].frames(), &deep[..protocol::capture::MAX_FRAMES]);
    assert_eq!(st[0].flags, StackRecord::TRUNCATED);
}

#[test]
fn modules_in_load_order_outlive_the_process_while_its_keys_do() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    set(&t, CaptureScope::All, "");
    let exe = r"\Device\HarddiskVolume3\Windows\explorer.exe";
    t.image_loaded(EXPLORER, 0x7FF6_0000_0000, 0x40_0000, &w(exe), 5);
    t.image_loaded(
        EXPLORER,
        0x7FF8_1000_0000,
        0x10_0000,
        &w(r"C:\x\shellext.dll"),
        6,
    );
    // Unmapped without a notification, then another image at the same base.
    t.image_loaded(
        EXPLORER,
        0x7FF8_1000_0000,
        0x8_0000,
        &w(r"C:\x\other.dll"),
        9,
    );
    t.image_loaded(OTHER, 0x7FF6_1000_0000, 0x1000, &w(r"C:\svchost.exe"), 5);
    // Only processes whose keys carry a stack are listed.
    assert!(modules(&t, 4096).is_empty());
    let tok = open(
        &t,
        EXPLORER,
        0x1000,
        &format!(r"{USER}\Software\A"),
        &SHELLEXT,
    );
    let listed = modules(&t, 4096);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, EXPLORER.pid);
    let bases: Vec<u64> = listed[0].1.iter().map(|m| m.0).collect();
    assert_eq!(
        bases,
        [0x7FF6_0000_0000, 0x7FF8_1000_0000, 0x7FF8_1000_0000]
    );
    // Pages too small for the whole list resume inside it.
    assert_eq!(modules(&t, 150), listed);
    t.process_exited(EXPLORER);
    assert_eq!(
        modules(&t, 4096),
        listed,
        "modules went with the exited process's keys"
    );
    assert_eq!(t.stats().modules_tracked, 4);
    t.object_destroyed(tok, 0x1000);
    // The process record went with its last key, and its modules with it.
    assert_eq!(t.stats().modules_tracked, 1);
    t.process_exited(OTHER);
    assert_eq!(t.stats().modules_tracked, 0);
    assert_eq!(t.stats().stacks_stored, 0);
}

#[test]
fn an_image_whose_name_cannot_be_stored_still_covers_its_range() {
    // Windows sends no unload notification, so a DLL unloaded and another mapped at its base
    // are two loads at one base: the later one must still cover the range when its name
    // cannot be stored, or frames in it resolve to the unloaded DLL (audit 20a, H1).
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    set(&t, CaptureScope::All, "");
    let base = 0x7FF8_1000_0000;
    t.image_loaded(EXPLORER, base, 0x10_0000, &w(r"C:\x\shellext.dll"), 6);
    // Only the next allocation fails: the second image's name.
    pool.set_failure(Failure::Kth(pool.calls() + 1));
    t.image_loaded(EXPLORER, base, 0x8_0000, &w(r"C:\x\other.dll"), 9);
    pool.set_failure(Failure::Never);
    assert_eq!(pool.failed(), 1, "the name's allocation was the one failed");
    let _tok = open(
        &t,
        EXPLORER,
        0x1000,
        &format!(r"{USER}\Software\A"),
        &SHELLEXT,
    );
    let listed = modules(&t, 4096);
    assert_eq!(
        listed,
        [(
            EXPLORER.pid,
            vec![
                (base, r"C:\X\SHELLEXT.DLL".to_owned()),
                (base, String::new())
            ]
        )],
        "the second image is listed, unnamed, over the first one's range"
    );
    // Counted as not recorded in full; the first load as recorded.
    assert_eq!(
        (t.stats().image_loads_seen, t.stats().modules_dropped),
        (1, 1)
    );
}

#[test]
fn every_allocation_failure_is_survived_and_nothing_leaks() {
    // Count the allocations of a whole run, then fail each in turn.
    let run = |pool: &CountingPool| {
        let t = tracker(pool);
        set(&t, CaptureScope::All, "");
        for i in 0..6u64 {
            t.image_loaded(
                EXPLORER,
                0x7FF8_0000_0000 + (i << 20),
                0x1000,
                &w(&format!(r"C:\m{i}.dll")),
                i,
            );
            let tok = t.opened(0x1000 + i, EXPLORER, 7, &w(&format!(r"{USER}\K{i}")), 1, 10);
            if let Ok(tok) = tok
                && t.capture_wanted(tok)
            {
                t.stack_captured(tok, 0x1000 + i, &SHELLEXT[..=(i as usize % 3)], false);
            }
        }
        let s = t.stats();
        let _ = (stacks(&t), modules(&t, 300));
        assert_eq!(
            s.image_loads_seen + s.modules_dropped,
            6,
            "an image load neither kept nor counted"
        );
        drop(t);
    };
    let probe = CountingPool::new(Failure::Never, true);
    run(&probe);
    let total = probe.calls();
    assert_eq!(probe.outstanding_blocks(), 0);
    for k in 1..=total {
        let pool = CountingPool::new(Failure::Kth(k), true);
        run(&pool);
        assert_eq!(
            pool.outstanding_blocks(),
            0,
            "leak when allocation {k} failed"
        );
    }
}

#[test]
fn stale_stack_ids_are_ignored() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    set(&t, CaptureScope::All, "");
    let a = open(&t, EXPLORER, 0x1000, &format!(r"{USER}\A"), &SHELLEXT);
    let b = open(&t, EXPLORER, 0x2000, &format!(r"{USER}\B"), &SHELLEXT[..1]);
    let ids: Vec<u32> = stacks(&t).iter().map(|s| s.id).collect();
    t.object_destroyed(a, 0x1000);
    let c = open(&t, EXPLORER, 0x3000, &format!(r"{USER}\C"), &SHELLEXT[..2]);
    let now: Vec<u32> = stacks(&t).iter().map(|s| s.id).collect();
    assert_eq!(now.len(), 2);
    // The freed slot was reused under a new id.
    assert!(
        now.iter().all(|id| *id == ids[1] || !ids.contains(id)),
        "{ids:?} {now:?}"
    );
    t.object_destroyed(b, 0x2000);
    t.object_destroyed(c, 0x3000);
    assert_eq!(t.stats().stacks_stored, 0);
    let _ = Cursor::START;
}
