//! The key cache (`tracker::keys`): a held key's opens need no name; an entry never outlives
//! its key's last tracked object (the kernel may give its id to another key); a rename makes
//! every cached name stale, including one fetched across it; every allocation failure leaves
//! the open tracked or counted, and nothing leaks.
#![allow(
    clippy::cast_possible_truncation,
    clippy::many_single_char_names,
    reason = "test code: small sizes, short names"
)]

mod support;

use protocol::holders::{HolderRecord, Holders};
use support::*;
use tracker::{Config, KeyMiss, NotTracked, ProcessKey, Token, Tracker};

const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
const RUN: &str = r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
const RUN_RENAMED: &str = r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Run2";
const POLICIES: &str = r"\REGISTRY\MACHINE\SOFTWARE\Policies";
const P1: ProcessKey = ProcessKey {
    pid: 100,
    start_key: 1,
};
/// A key id, as the kernel gives it (an address).
const KEY: u64 = 0xFFFF_A000_1234_5670;

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    let t = Tracker::new(pool, Config::default()).unwrap();
    t.hive_loaded(&w(SOFTWARE), &w(r"\SystemRoot\System32\Config\SOFTWARE"), 1);
    t
}

/// The driver's open: by key id first, by name on a miss.
fn open(t: &TestTracker<'_>, object: u64, key: u64, name: &str) -> (Token, bool) {
    match t.opened_known(object, key, P1, 7, 0x2_0019, 10) {
        Ok(tracked) => (tracked.unwrap(), true),
        Err(miss) => (named(t, miss, object, name), false),
    }
}

fn named(t: &TestTracker<'_>, miss: KeyMiss, object: u64, name: &str) -> Token {
    t.opened_named(miss, object, P1, 7, &w(name), 0x2_0019, 10)
        .unwrap()
}

/// The names of the keys `P1` holds in SOFTWARE, sorted.
fn held(t: &TestTracker<'_>) -> Vec<String> {
    let mut out = Vec::new();
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(SOFTWARE), c, 0, 0, b),
        |p| {
            for r in p.records() {
                match r {
                    HolderRecord::Key(k) => out.push(k.name.to_string()),
                    HolderRecord::Process(_) => {}
                }
            }
        },
    );
    out.sort();
    out
}

#[test]
fn a_held_key_is_opened_by_its_id_alone() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        let (a, hit_a) = open(&t, 0x1000, KEY, RUN);
        assert!(!hit_a, "the first open of a key needs its name");
        let (b, hit_b) = open(&t, 0x2000, KEY, RUN);
        assert!(hit_b, "a key already held is found by its id");
        assert_eq!(held(&t), [RUN, RUN]);
        t.object_destroyed(a, 0x1000);
        t.object_destroyed(b, 0x2000);
        assert!(held(&t).is_empty());
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn an_entry_goes_with_the_last_object_of_its_key() {
    // The kernel may give a freed key id to another key (the emulator's td-key-id): once the
    // last tracked object of RUN is gone, an open of POLICIES under the same id must be
    // named, not filed as RUN.
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        let (a, _) = open(&t, 0x1000, KEY, RUN);
        let (b, hit) = open(&t, 0x2000, KEY, RUN);
        assert!(hit);
        t.handle_closed(a, 0x1000);
        t.object_destroyed(a, 0x1000);
        let (c, hit) = open(&t, 0x3000, KEY, RUN);
        assert!(hit, "one object of the key still lives");
        t.object_destroyed(b, 0x2000);
        t.object_destroyed(c, 0x3000);
        let (d, hit) = open(&t, 0x4000, KEY, POLICIES);
        assert!(
            !hit,
            "an id whose key has no tracked object left is not trusted"
        );
        assert_eq!(held(&t), [POLICIES]);
        t.object_destroyed(d, 0x4000);
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_rename_makes_every_cached_name_stale() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        let (a, _) = open(&t, 0x1000, KEY, RUN);
        t.key_renamed(); // RegNtPreRenameKey
        t.key_renamed(); // RegNtPostRenameKey
        let (b, hit) = open(&t, 0x2000, KEY, RUN_RENAMED);
        assert!(!hit, "after a rename the key is named again");
        let (c, hit) = open(&t, 0x3000, KEY, RUN_RENAMED);
        assert!(hit, "and then found by its id again, under the new name");
        // The object opened before the rename keeps the name it was opened with.
        assert_eq!(held(&t), [RUN, RUN_RENAMED, RUN_RENAMED]);
        for (tok, obj) in [(a, 0x1000), (b, 0x2000), (c, 0x3000)] {
            t.object_destroyed(tok, obj);
        }
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_name_fetched_across_a_rename_is_not_trusted() {
    // The open missed, the key was renamed while its name was being fetched, and the name it
    // got is the old one: it is stored under the epoch read before the fetch, so the next
    // open names the key again instead of filing it under the old name.
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        let miss = t
            .opened_known(0x1000, KEY, P1, 7, 0x2_0019, 10)
            .expect_err("nothing cached yet");
        t.key_renamed();
        let a = named(&t, miss, 0x1000, RUN);
        let (b, hit) = open(&t, 0x2000, KEY, RUN_RENAMED);
        assert!(
            !hit,
            "a name from before the rename is not handed out after it"
        );
        let (c, hit) = open(&t, 0x3000, KEY, RUN_RENAMED);
        assert!(hit);
        assert_eq!(held(&t), [RUN, RUN_RENAMED, RUN_RENAMED]);
        for (tok, obj) in [(a, 0x1000), (b, 0x2000), (c, 0x3000)] {
            t.object_destroyed(tok, obj);
        }
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn every_allocation_failure_leaves_the_open_tracked_or_counted() {
    // Each allocation of a workload of cached and uncached opens fails in turn: an open is
    // either tracked (its key listed) or refused; nothing leaks; a later open of the key
    // still works.
    let mut k = 1;
    loop {
        let pool = CountingPool::new(Failure::Kth(k), true);
        {
            let t = tracker(&pool);
            let mut live = Vec::new();
            for (i, name) in [RUN, RUN, POLICIES, RUN, POLICIES].iter().enumerate() {
                let object = 0x1000 * (i as u64 + 1);
                let key = if *name == RUN { KEY } else { KEY + 0x40 };
                let r = match t.opened_known(object, key, P1, 7, 0x2_0019, 10) {
                    Ok(r) => r,
                    Err(miss) => t.opened_named(miss, object, P1, 7, &w(name), 0x2_0019, 10),
                };
                match r {
                    Ok(tok) => live.push((tok, object, *name)),
                    Err(e) => assert_eq!(e, NotTracked::NoMemory),
                }
            }
            // A name that could not be stored is listed empty (flagged missing, as ever).
            let got = held(&t);
            assert_eq!(got.len(), live.len(), "failure at allocation {k}");
            for name in got.iter().filter(|n| !n.is_empty()) {
                assert!(live.iter().any(|l| l.2 == name), "{name} at failure {k}");
            }
            for (tok, object, _) in live {
                t.object_destroyed(tok, object);
            }
        }
        assert_eq!(
            pool.outstanding_blocks(),
            0,
            "blocks leaked, failure at {k}"
        );
        if pool.failed() == 0 {
            break;
        }
        k += 1;
    }
    assert!(k > 5, "the workload allocates");
}

#[test]
fn concurrent_opens_and_closes_of_shared_keys_leave_nothing() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        std::thread::scope(|s| {
            for thread in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..4000u64 {
                        let key = KEY + (i % 7) * 0x40;
                        let name = format!(r"{SOFTWARE}\K{}", i % 7);
                        let object = (thread << 32) | (i + 1) << 4;
                        let r = match t.opened_known(object, key, P1, thread, 1, i) {
                            Ok(r) => r,
                            Err(miss) => t.opened_named(miss, object, P1, thread, &w(&name), 1, i),
                        };
                        let tok = r.unwrap();
                        if i % 13 == 0 {
                            t.key_renamed();
                        }
                        t.object_destroyed(tok, object);
                    }
                });
            }
        });
        assert!(held(&t).is_empty());
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}
