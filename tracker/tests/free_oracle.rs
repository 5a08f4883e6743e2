//! Audit 22a: a cross-thread oracle for "free while held". Holder threads each keep an
//! anchor key open for a stretch and publish an epoch (odd while the anchor is linked);
//! churn threads of other processes open and destroy keys of the same hive (through the
//! key cache, so the held key's shortcut and fresh holdings both run) and exit processes.
//! A checker asks `hive_free` and asserts `Held` whenever an anchor was live before and
//! after the question. `HIVETRACK_ORACLE_EVENTS` sets the events per thread; `ORACLE_ONLY`
//! skips the end-of-run check.
//!
//! Shown to fail (session 22, 3 runs of 3, with `ORACLE_ONLY=1`, so by the oracle itself):
//! on a mutant of `Tracker::remove` that resets the hive's `open_keys` and `holders` to 0
//! and adds back what should remain, a transient zero of both counts while other keys are
//! linked. Lost updates alone (load + store instead of `fetch_add`/`fetch_sub`) drift the
//! counts but were never seen to bring both to 0 at once (audit 22a, T1).

#![allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::similar_names,
    clippy::cast_possible_truncation,
    reason = "one scenario, read best whole; small indices on a 64-bit host"
)]

mod support;

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

use support::*;
use tracker::{Config, HiveFree, ProcessKey, Token, Tracker};

const HOLDERS: u64 = 2;
const CHURN: u64 = 4;

fn open(
    t: &TestTracker<'_>,
    obj: u64,
    id: u64,
    p: ProcessKey,
    name: &[u16],
    time: u64,
) -> Option<Token> {
    match t.opened_known(obj, id, p, 1, 1, time) {
        Ok(r) => r.ok(),
        Err(miss) => t.opened_named(miss, obj, p, 1, name, 1, time).ok(),
    }
}

#[test]
fn a_key_linked_throughout_is_never_reported_free() {
    let per = std::env::var("HIVETRACK_ORACLE_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400_000u64);
    let pool = CountingPool::new(Failure::Never, false);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    let mount = w(r"\REGISTRY\USER\S-1-5-21-9");
    t.hive_loaded(&mount, &w(r"C:\Users\x\NTUSER.DAT"), 1);
    let (watched, state) = t.watch_hive(&mount).unwrap();
    assert_eq!(state, HiveFree::Free);
    let names: Vec<Vec<u16>> = (0..16)
        .map(|k| w(&format!(r"\REGISTRY\USER\S-1-5-21-9\Software\K{k}")))
        .collect();
    let epochs: Vec<AtomicU64> = (0..HOLDERS).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let checked = AtomicU64::new(0);
    std::thread::scope(|s| {
        let (t, names, epochs, stop, checked) = (&t, &names, &epochs, &stop, &checked);
        let checker = s.spawn(move || {
            while !stop.load(Relaxed) {
                for e in epochs {
                    let e1 = e.load(Acquire);
                    if e1 % 2 == 0 {
                        continue;
                    }
                    let r = t.hive_free(watched);
                    let e2 = e.load(SeqCst);
                    if e1 == e2 {
                        checked.fetch_add(1, Relaxed);
                        assert_eq!(
                            r,
                            HiveFree::Held,
                            "a key linked throughout the question was reported {r:?}"
                        );
                    }
                }
            }
        });
        let mut workers = Vec::new();
        for ti in 0..HOLDERS + CHURN {
            workers.push(s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9 ^ ((ti + 1) * 0x1234_5678_9ABC));
                let mut start = 1;
                let mut live: Vec<(u64, Token)> = Vec::new();
                let mut anchor: Option<(u64, Token)> = None;
                for n in 0..per {
                    let r = rng.next();
                    let p = ProcessKey {
                        pid: 100 + ti * 4 + (r >> 50) % 2,
                        start_key: start,
                    };
                    let k = (r >> 8) % 16;
                    let obj = ((ti << 40) | (n + 1)) * 16;
                    if ti < HOLDERS && n % 64 == 0 {
                        // Toggle the anchor.
                        if let Some((o, tok)) = anchor.take() {
                            epochs[ti as usize].fetch_add(1, SeqCst); // even: not held from here
                            t.object_destroyed(tok, o);
                        } else if let Some(tok) = open(t, obj, 1000 + k, p, &names[k as usize], n) {
                            anchor = Some((obj, tok));
                            epochs[ti as usize].fetch_add(1, Release); // odd: linked
                        }
                        continue;
                    }
                    match r % 10 {
                        0..=4 if live.len() < 8 => {
                            if let Some(tok) = open(t, obj, 1000 + k, p, &names[k as usize], n) {
                                live.push((obj, tok));
                            }
                        }
                        5..=8 if !live.is_empty() => {
                            let (o, tok) = live.swap_remove((r >> 32) as usize % live.len());
                            t.object_destroyed(tok, o);
                        }
                        9 if ti >= HOLDERS => {
                            for (o, tok) in std::mem::take(&mut live) {
                                t.object_destroyed(tok, o);
                            }
                            t.process_exited(p);
                            start += 1;
                        }
                        _ => {}
                    }
                }
                if let Some((o, tok)) = anchor.take() {
                    epochs[ti as usize].fetch_add(1, SeqCst);
                    t.object_destroyed(tok, o);
                }
                for (o, tok) in live {
                    t.object_destroyed(tok, o);
                }
            }));
        }
        for h in workers {
            h.join().unwrap();
        }
        stop.store(true, Relaxed);
        checker.join().unwrap();
    });
    println!(
        "{} questions asked with an anchor live throughout",
        checked.load(Relaxed)
    );
    assert!(checked.load(Relaxed) > 0);
    if std::env::var("ORACLE_ONLY").is_err() {
        assert_eq!(t.hive_free(watched), HiveFree::Free, "all keys gone");
        t.check_consistency().expect("consistent");
    }
}
