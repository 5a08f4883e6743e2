//! The key cache's names across refreshes (issue 14: a key's name is a private copy the
//! cache shares by id; a rename makes the entry stale and the next open refreshes it):
//! every allocation failure in turn, a share refusal at the refresh, and threads renaming,
//! opening and querying at once leave only real names listed and nothing behind. Written by
//! an independent review of the private names.
#![allow(clippy::cast_possible_truncation, reason = "test code")]

mod support;

use protocol::holders::{HolderRecord, Holders};
use support::*;
use tracker::{Config, NotTracked, ProcessKey, Token, Tracker};

const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
const RUN: &str = r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
const RUN2: &str = r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Run2";
const P1: ProcessKey = ProcessKey {
    pid: 100,
    start_key: 1,
};
const P2: ProcessKey = ProcessKey {
    pid: 200,
    start_key: 1,
};
const KEY: u64 = 0xFFFF_A000_1234_5670;

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    let t = Tracker::new(pool, Config::default()).unwrap();
    t.hive_loaded(&w(SOFTWARE), &w(r"\SystemRoot\System32\Config\SOFTWARE"), 1);
    t
}

fn open_as(
    t: &TestTracker<'_>,
    p: ProcessKey,
    object: u64,
    name: &str,
) -> Result<Token, NotTracked> {
    match t.opened_known(object, KEY, p, 7, 1, 10) {
        Ok(r) => r,
        Err(miss) => t.opened_named(miss, object, p, 7, &w(name), 1, 10),
    }
}

fn held(t: &TestTracker<'_>) -> Vec<String> {
    let mut out = Vec::new();
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(SOFTWARE), c, 0, 0, b),
        |p| {
            for r in p.records() {
                if let HolderRecord::Key(k) = r {
                    out.push(k.name.to_string());
                }
            }
        },
    );
    out.sort();
    out
}

#[test]
fn every_failure_with_refreshes_leaves_nothing() {
    for drop_live in [false, true] {
        let mut k = 1;
        loop {
            let pool = CountingPool::new(Failure::Kth(k), true);
            {
                let t = tracker(&pool);
                let base = t.stats().names_interned;
                let mut live = Vec::new();
                let steps: [(ProcessKey, &str, u8); 8] = [
                    (P1, RUN, 0),
                    (P2, RUN, 0),
                    (P1, RUN, 1), // rename after
                    (P2, RUN2, 0),
                    (P1, RUN2, 0),
                    (P2, RUN2, 1),
                    (P1, RUN, 0),
                    (P2, RUN, 0),
                ];
                for (i, (p, name, rename)) in steps.iter().enumerate() {
                    let object = 0x1000 * (i as u64 + 1);
                    match open_as(&t, *p, object, name) {
                        Ok(tok) => live.push((tok, object, *name)),
                        Err(e) => assert_eq!(e, NotTracked::NoMemory, "at {k}"),
                    }
                    if *rename == 1 {
                        t.rename_started();
                        t.rename_ended(true);
                    }
                    for n in held(&t).iter().filter(|n| !n.is_empty()) {
                        assert!(n == RUN || n == RUN2, "garbage name {n:?} at failure {k}");
                    }
                }
                if !drop_live {
                    for (tok, object, _) in std::mem::take(&mut live) {
                        t.object_destroyed(tok, object);
                    }
                    let s = t.stats();
                    assert_eq!(s.keys_cached, 0, "entry left, failure {k}");
                    assert_eq!(s.names_interned, base, "name left, failure {k}");
                }
            }
            assert_eq!(
                pool.outstanding_blocks(),
                0,
                "blocks leaked, failure at {k} drop_live {drop_live}"
            );
            if pool.failed() == 0 {
                break;
            }
            k += 1;
        }
    }
}

#[test]
fn concurrent_refreshes_hits_and_queries_show_only_real_names() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let pool = CountingPool::new(
        Failure::Random {
            per_million: 20_000,
            seed: 7,
        },
        false,
    );
    {
        let t = tracker(&pool);
        let stop = AtomicBool::new(false);
        let names: Vec<String> = (0..4).map(|k| format!(r"{SOFTWARE}\K{k}")).collect();
        std::thread::scope(|s| {
            let (t2, stop2, names2) = (&t, &stop, &names);
            s.spawn(move || {
                while !stop2.load(Relaxed) {
                    for n in held(t2).iter().filter(|n| !n.is_empty()) {
                        assert!(
                            names2.iter().any(|x| x == n) || n.ends_with('X'),
                            "garbage {n:?}"
                        );
                    }
                }
            });
            let mut hs = Vec::new();
            for thread in 0..6u64 {
                let (t, names) = (&t, &names);
                hs.push(s.spawn(move || {
                    let mut live = std::collections::VecDeque::new();
                    for i in 0..40_000u64 {
                        let k = (i * 7 + thread) % 4;
                        let key = KEY + k * 0x40;
                        let object = (thread << 40) | (i + 1) << 4;
                        let p = if i % 2 == 0 { P1 } else { P2 };
                        let r = match t.opened_known(object, key, p, 7, 1, i) {
                            Ok(r) => r,
                            Err(miss) => {
                                t.opened_named(miss, object, p, 7, &w(&names[k as usize]), 1, i)
                            }
                        };
                        if let Ok(tok) = r {
                            live.push_back((tok, object));
                        }
                        if i % 13 == thread {
                            t.rename_started();
                            t.rename_ended(true);
                        }
                        if live.len() > 5 {
                            let (tok, obj) = live.pop_front().unwrap();
                            t.object_destroyed(tok, obj);
                        }
                    }
                    for (tok, obj) in live {
                        t.object_destroyed(tok, obj);
                    }
                }));
            }
            for h in hs {
                h.join().unwrap();
            }
            stop.store(true, Relaxed);
        });
        assert_eq!(t.stats().objects_tracked, 0);
        assert_eq!(t.stats().keys_cached, 0);
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_refresh_refused_for_the_share_leaves_nothing() {
    for drop_live in [false, true] {
        let pool = CountingPool::new(Failure::Never, true);
        {
            let tr = Tracker::new(
                &pool,
                Config {
                    process_share_bytes: 400,
                    ..Config::default()
                },
            )
            .unwrap();
            let t = &tr;
            t.hive_loaded(&w(SOFTWARE), &w(r"\SystemRoot\System32\Config\SOFTWARE"), 1);
            let base = t.stats().names_interned;
            let first = open_as(t, P1, 0x1000, RUN).unwrap();
            let second = open_as(t, P2, 0x2000, RUN).unwrap(); // a hit: shares the entry's name
            t.rename_started();
            t.rename_ended(true);
            // P1 is near its share: the refresh's new entry and name do not fit.
            let r = open_as(t, P1, 0x3000, RUN2);
            assert_eq!(r, Err(NotTracked::Share));
            assert_eq!(held(t), [RUN, RUN]);
            let third = open_as(
                t,
                ProcessKey {
                    pid: 300,
                    start_key: 1,
                },
                0x4000,
                RUN2,
            )
            .unwrap();
            if !drop_live {
                for (tok, o) in [(first, 0x1000), (second, 0x2000), (third, 0x4000)] {
                    t.object_destroyed(tok, o);
                }
                assert_eq!(t.stats().keys_cached, 0);
                assert_eq!(t.stats().names_interned, base);
            }
        }
        assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
    }
}
