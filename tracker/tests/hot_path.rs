//! Issue 14's hot path, counted in lock acquisitions (what the driver pays in spin-lock round
//! trips; `cargo xtask bench-driver` counts the same in the emulator): a held key's open
//! takes at most three (key cache shard, process table shard, process), its close none and
//! its cleanup one (the process). And the shortcut that gives those numbers (the hive shard
//! skipped when the process already holds the hive the key's name resolved to) never files
//! an open under the wrong hive: not when the hive list changed, not for another process.
#![allow(clippy::cast_possible_truncation, reason = "test code: small sizes")]

mod support;

use protocol::holders::{HolderRecord, Holders};
use support::*;
use tracker::{Config, NotTracked, ProcessKey, Token, Tracker};

type T<'a> = Tracker<&'a CountingPool, CountingLock>;

const PROFILE: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";
const P1: ProcessKey = ProcessKey {
    pid: 100,
    start_key: 1,
};
const P2: ProcessKey = ProcessKey {
    pid: 200,
    start_key: 1,
};

fn key(sub: &str) -> String {
    format!(r"{PROFILE}\{sub}")
}

/// The driver's open: by key id first, by name on a miss; and whether it hit.
fn open(t: &T<'_>, p: ProcessKey, object: u64, id: u64, name: &str) -> (Token, bool) {
    let r: (Result<Token, NotTracked>, bool) = match t.opened_known(object, id, p, 7, 1, 10) {
        Ok(r) => (r, true),
        Err(miss) => (t.opened_named(miss, object, p, 7, &w(name), 1, 10), false),
    };
    (r.0.expect("tracked"), r.1)
}

/// (pid, key name) of every key held in the hive mounted at `mount`, sorted.
fn holders(t: &T<'_>, mount: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut pid = 0;
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(mount), c, 0, 0, b),
        |p| {
            for r in p.records() {
                match r {
                    HolderRecord::Process(p) => pid = p.pid,
                    HolderRecord::Key(k) => out.push((pid, k.name.to_string())),
                }
            }
        },
    );
    out.sort();
    out
}

fn tracker(pool: &CountingPool) -> T<'_> {
    let t = Tracker::new(pool, Config::default()).unwrap();
    t.hive_loaded(&w(PROFILE), &w(r"C:\Users\u\NTUSER.DAT"), 1);
    t
}

#[test]
fn a_held_keys_open_takes_three_locks_its_close_none_its_cleanup_one() {
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let name = key(r"Software\Microsoft\Windows\CurrentVersion\Explorer\Advanced");
        let (held, hit) = open(&t, P1, 0x1000, 77, &name);
        assert!(!hit);
        // Warm: the first hit may refresh the entry's hint.
        let (warm, hit) = open(&t, P1, 0x2000, 77, &name);
        assert!(hit);
        t.object_destroyed(warm, 0x2000);
        for i in 0..4u64 {
            let object = 0x3000 + i * 16;
            let before = CountingLock::acquired();
            let (tok, hit) = open(&t, P1, object, 77, &name);
            let opened = CountingLock::acquired() - before;
            assert!(hit, "a held key is found by its id");
            t.handle_closed(tok, object);
            let closed = CountingLock::acquired() - before - opened;
            t.object_destroyed(tok, object);
            let destroyed = CountingLock::acquired() - before - opened - closed;
            assert!(
                opened <= 3,
                "issue 14: a held key's open takes at most 3 locks, took {opened}"
            );
            assert_eq!(closed, 0, "a handle close takes no lock");
            assert!(
                destroyed <= 1,
                "a cleanup takes the process lock only, took {destroyed}"
            );
        }
        assert_eq!(holders(&t, PROFILE), [(100, name)]);
        t.object_destroyed(held, 0x1000);
        assert!(holders(&t, PROFILE).is_empty());
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_hit_after_a_hive_loads_below_its_path_is_filed_under_the_new_hive() {
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let sub = key("Mounted");
        let name = key(r"Mounted\Settings");
        // Opened while the path is still inside the profile hive.
        let (first, _) = open(&t, P1, 0x1000, 77, &name);
        let (second, hit) = open(&t, P1, 0x2000, 77, &name);
        assert!(hit);
        assert_eq!(holders(&t, PROFILE).len(), 2);
        // A hive mounted at a path above the key (same hive shard: the hint goes stale).
        t.hive_loaded(&w(&sub), &w(r"C:\Data\mounted.dat"), 2);
        let (third, hit) = open(&t, P1, 0x3000, 77, &name);
        assert!(hit, "still found by id");
        assert_eq!(
            holders(&t, &sub),
            [(100, name)],
            "the open after the load is the new hive's, though the process holds the old one"
        );
        assert_eq!(holders(&t, PROFILE).len(), 2);
        for (tok, obj) in [(first, 0x1000), (second, 0x2000), (third, 0x3000)] {
            t.object_destroyed(tok, obj);
        }
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_hit_by_a_process_holding_nothing_in_the_hive_is_filed_under_it() {
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let name = key(r"Software\Shared");
        let (a, _) = open(&t, P1, 0x1000, 77, &name);
        let (b, hit) = open(&t, P2, 0x2000, 77, &name);
        assert!(hit, "held by another process: still found by id");
        let (c, hit) = open(&t, P2, 0x3000, 77, &name);
        assert!(hit);
        assert_eq!(
            holders(&t, PROFILE),
            [(100, name.clone()), (200, name.clone()), (200, name)]
        );
        for (tok, obj) in [(a, 0x1000), (b, 0x2000), (c, 0x3000)] {
            t.object_destroyed(tok, obj);
        }
        assert!(holders(&t, PROFILE).is_empty());
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

#[test]
fn a_fresh_keys_name_is_neither_interned_nor_locked_for() {
    // Issue 14: a key's first open names it once, for the key cache, which shares the name
    // with every later open by id; interning it too cost a hash and a compare of the whole
    // name and the name table's lock at the open and again at the last release.
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let base = t.stats().names_interned; // the hive's mount and file
        // The hive is held through another key, as a logged-on user's profile is.
        let (other, _) = open(&t, P1, 0x1000, 1, &key("Other"));
        let name = key(r"Software\Microsoft\Windows\CurrentVersion\Explorer\Advanced");
        // Warm: the first open past the shard's used slots takes its lock to claim one.
        let (warm, _) = open(&t, P1, 0x2000, 99, &name);
        t.object_destroyed(warm, 0x2000);
        let names_before = t.stats().names_interned;
        for i in 0..4u64 {
            let object = 0x3000 + i * 16;
            let before = CountingLock::acquired();
            let (tok, hit) = open(&t, P1, object, 100 + i, &name);
            let opened = CountingLock::acquired() - before;
            assert!(!hit, "a fresh key");
            assert_eq!(
                t.stats().names_interned,
                names_before + 1,
                "its name is stored"
            );
            t.handle_closed(tok, object);
            let before = CountingLock::acquired();
            t.object_destroyed(tok, object);
            let destroyed = CountingLock::acquired() - before;
            assert!(
                opened <= 4,
                "a fresh key's open: key cache, hive shard, process table, process; took {opened}"
            );
            assert!(
                destroyed <= 2,
                "its cleanup: the process and the key cache entry; took {destroyed}"
            );
            assert_eq!(
                t.stats().names_interned,
                names_before,
                "and freed with the key"
            );
        }
        // A second object of the key shares the cache's name: stored once.
        let (a, _) = open(&t, P1, 0x5000, 500, &name);
        let (b, hit) = open(&t, P2, 0x6000, 500, &name);
        assert!(hit);
        assert_eq!(t.stats().names_interned, names_before + 1);
        assert_eq!(
            holders(&t, PROFILE),
            [(100, key("Other")), (100, name.clone()), (200, name)]
        );
        for (tok, obj) in [(a, 0x5000), (b, 0x6000), (other, 0x1000)] {
            t.object_destroyed(tok, obj);
        }
        assert_eq!(t.stats().names_interned, base);
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

/// Issue 14: "readers (queries) take shared locks so they do not stall opens". A lock that
/// the held opens of two different processes both take (a key cache shard, a process table
/// shard) guards a structure every processor's opens go through: a held key's open and
/// every query take such a lock only shared, so they overlap one another; what they take
/// exclusively is one process's own lock at a time.
#[test]
fn held_opens_and_queries_take_no_lock_they_share_exclusively() {
    use std::collections::{BTreeMap, BTreeSet};
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let name = key(r"Software\Microsoft\Windows\CurrentVersion\Explorer\Advanced");
        let procs: Vec<ProcessKey> = (0..200u64)
            .map(|i| ProcessKey {
                pid: 1000 + i * 4,
                start_key: 1,
            })
            .collect();
        let mut object = 0x10_0000u64;
        let mut held = Vec::new();
        for p in &procs {
            object += 16;
            held.push((open(&t, *p, object, 77, &name).0, object));
        }
        // Warm: a slot's first use takes its object shard's lock (to grow the shard); slots
        // given back are taken again without it.
        let warm: Vec<_> = procs
            .iter()
            .map(|p| {
                object += 16;
                (open(&t, *p, object, 77, &name).0, object)
            })
            .collect();
        for (tok, o) in warm {
            t.object_destroyed(tok, o);
        }
        // Each process opens the key again, now held (by id, without the hive shard).
        let mut taken_by: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        let mut exclusive_in_opens = BTreeSet::new();
        for p in &procs {
            object += 16;
            let ((tok, hit), log) = CountingLock::logged(|| open(&t, *p, object, 77, &name));
            assert!(hit, "a held key");
            for (lock, exclusive) in log {
                taken_by.entry(lock).or_default().insert(p.pid);
                if exclusive {
                    exclusive_in_opens.insert(lock);
                }
            }
            held.push((tok, object));
        }
        let shared_structures: BTreeSet<usize> = taken_by
            .iter()
            .filter(|(_, pids)| pids.len() > 1)
            .map(|(lock, _)| *lock)
            .collect();
        assert!(
            shared_structures.len() >= 2,
            "the key cache shard and some process table shards are taken by several processes"
        );
        let in_opens: Vec<_> = exclusive_in_opens
            .intersection(&shared_structures)
            .collect();
        assert!(
            in_opens.is_empty(),
            "a held key's open took {} lock(s) other processes' opens take, exclusively",
            in_opens.len()
        );
        let queries: [(&str, &dyn Fn()); 3] = [
            ("holders", &|| {
                holders(&t, PROFILE);
            }),
            ("processes", &|| {
                drain::<protocol::processes::Processes>(512, |c, b| t.processes(c, 0, b), |_| {});
            }),
            ("snapshot", &|| {
                drain::<protocol::snapshot::Snapshot>(512, |c, b| t.snapshot(c, 0, 0, b), |_| {});
            }),
        ];
        for (query, run) in queries {
            let ((), log) = CountingLock::logged(run);
            let stalls = log
                .iter()
                .filter(|(lock, exclusive)| *exclusive && shared_structures.contains(lock))
                .count();
            assert_eq!(
                stalls, 0,
                "{query} took locks the opens of several processes take, exclusively"
            );
        }
        for (tok, o) in held {
            t.object_destroyed(tok, o);
        }
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}

/// An unload attempt's holders (recorded in the registry callback) cost the hive's own
/// holders, not every process the tracker knows: found 2026-12-05 in the bounded-memory
/// audit, where 100,000 exited processes kept alive by duplicated handles made each attempt
/// walk them all (15.9 ms). Counted in locks: the old walk took every process-table shard
/// and every process's lock.
#[test]
fn an_unload_attempt_takes_locks_for_its_hives_holders_not_for_every_process() {
    let pool = CountingPool::new(Failure::Never, false);
    {
        let t = tracker(&pool);
        let other = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1002";
        t.hive_loaded(&w(other), &w(r"C:\Users\v\NTUSER.DAT"), 1);
        let mut tokens = Vec::new();
        let mut locks = Vec::new();
        for round in 0..2u64 {
            // 2,000 more processes holding keys in the other hive, half of them exited.
            for i in 0..2_000u64 {
                let p = ProcessKey {
                    pid: 1_000 + round * 10_000 + i * 4,
                    start_key: 1,
                };
                let object = 0x10_0000 + (round * 10_000 + i) * 16;
                let tok = t
                    .opened(object, p, 7, &w(&format!(r"{other}\Software")), 1, 10)
                    .unwrap();
                if i % 2 == 0 {
                    t.process_exited(p);
                }
                tokens.push((tok, object));
            }
            let before = CountingLock::acquired();
            t.unload_attempted(&w(PROFILE), 0xC000_0121, 20 + round);
            locks.push(CountingLock::acquired() - before);
        }
        assert_eq!(
            locks[0], locks[1],
            "the profile's unload attempt cost the same with 2,000 and 4,000 other processes: {locks:?}"
        );
        assert!(locks[0] <= 16, "took {} locks", locks[0]);
        for (tok, object) in tokens {
            t.object_destroyed(tok, object);
        }
    }
    assert_eq!(pool.outstanding_blocks(), 0, "blocks leaked");
}
