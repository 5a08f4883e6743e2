//! The event stream (`tracker::events`): unload attempts and key-count alarms read by
//! sequence number, oldest first; every event not delivered (evicted, or never stored for
//! want of memory) is counted as missed; alarms do not show in the unload history.
#![allow(clippy::cast_possible_truncation, reason = "test code: small sizes")]

mod support;

use protocol::events::{Events, EventsRequest};
use protocol::history::{UnloadHistory, UnloadRecord};
use protocol::page::Page;
use protocol::wire::decode;
use support::*;
use tracker::{Config, ProcessKey, Tracker};

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-1001";
const P: ProcessKey = ProcessKey {
    pid: 0x40,
    start_key: 1,
};

fn tracker(pool: &CountingPool, history: u32, alarm: u64) -> TestTracker<'_> {
    let t = Tracker::new(
        pool,
        Config {
            history_len: history,
            key_alarm_threshold: alarm,
            ..Config::default()
        },
    )
    .unwrap();
    t.tracking_started(7);
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 8);
    t.process_started(P, &w(r"\Device\HarddiskVolume3\leak.exe"));
    t
}

/// (sequences, flags, missed, done, next) of the page after `after`.
fn page(t: &TestTracker<'_>, after: u64, max: u32) -> (Vec<u64>, Vec<u16>, u64, bool, u64) {
    let mut buf = vec![0u8; 16 * 1024];
    let n = t.events(after, max, &mut buf).unwrap();
    let p = decode::<Page<'_, Events>>(&buf[..n]).unwrap();
    assert_eq!(p.prefix.tracking_since, 7);
    let recs: Vec<UnloadRecord<'_>> = p.records().collect();
    (
        recs.iter().map(|r| r.sequence).collect(),
        recs.iter().map(|r| r.flags).collect(),
        p.prefix.missed,
        p.info.done(),
        EventsRequest::after_cursor(&p.info.next),
    )
}

#[test]
fn unload_attempts_in_order_then_resumed_and_missed_when_evicted() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool, 4, 0);
    assert!(!t.events_after(0));
    for i in 0..3 {
        t.unload_attempted(&w(USER), 0xC000_0121, 10 + i);
    }
    assert!(t.events_after(0) && !t.events_after(3));
    assert_eq!(page(&t, 0, 0), (vec![1, 2, 3], vec![0, 0, 0], 0, true, 3));
    assert_eq!(page(&t, 1, 1), (vec![2], vec![0], 0, false, 2));
    // Nothing new: an empty page that keeps the position.
    assert_eq!(page(&t, 3, 0), (vec![], vec![], 0, true, 3));
    for i in 0..5 {
        t.unload_attempted(&w(USER), 0xC000_0121, 20 + i);
    }
    // 8 numbered, 4 kept (5..=8): a reader at 3 missed 4.
    assert_eq!(page(&t, 3, 0), (vec![5, 6, 7, 8], vec![0; 4], 1, true, 8));
    assert_eq!(page(&t, 0, 2).0, vec![5, 6], "the oldest kept come first");
    assert_eq!(page(&t, 0, 2).2, 4);
}

#[test]
fn an_event_not_stored_is_counted_as_missed() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool, 8, 0);
    t.unload_attempted(&w(USER), 0xC000_0121, 10);
    pool.set_failure(Failure::FromK(pool.calls() + 1));
    t.unload_attempted(&w(USER), 0xC000_0121, 11);
    pool.set_failure(Failure::Never);
    t.unload_attempted(&w(USER), 0xC000_0121, 12);
    assert!(t.events_after(1));
    // Sequence 2 was numbered but never stored: the reader after 1 is told it missed one.
    assert_eq!(page(&t, 1, 0), (vec![3], vec![0], 1, true, 3));
    assert_eq!(page(&t, 0, 0).0, vec![1, 3]);
}

#[test]
fn key_count_alarms_at_the_threshold_and_each_doubling_only() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool, 32, 4);
    for i in 0..17u64 {
        t.opened(0x1000 + i, P, 7, &w(&format!(r"{USER}\K{i}")), 1, 10)
            .unwrap();
    }
    let (seqs, flags, missed, _, _) = page(&t, 0, 0);
    assert_eq!(seqs, vec![1, 2, 3], "alarms at 4, 8 and 16 keys");
    assert!(flags.iter().all(|f| f & UnloadRecord::KEY_ALARM != 0));
    assert_eq!(missed, 0);
    let mut buf = vec![0u8; 16 * 1024];
    let n = t.events(0, 0, &mut buf).unwrap();
    let p = decode::<Page<'_, Events>>(&buf[..n]).unwrap();
    let counts: Vec<(u64, u64, String)> = p
        .records()
        .map(|r| {
            let h = r.holders.iter().next().unwrap();
            (r.open_keys, h.pid, h.image.to_string())
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            (4, 0x40, r"\Device\HarddiskVolume3\leak.exe".to_string()),
            (8, 0x40, r"\Device\HarddiskVolume3\leak.exe".to_string()),
            (16, 0x40, r"\Device\HarddiskVolume3\leak.exe".to_string()),
        ]
    );
    assert_eq!(t.stats().key_alarms, 3);
    // The unload history lists unload attempts only.
    t.unload_attempted(&w(USER), 0xC000_0121, 30);
    let mut seen = Vec::new();
    drain::<UnloadHistory>(
        4096,
        |c, b| t.unload_history(c, 0, b),
        |p| seen.extend(p.records().map(|r| r.sequence)),
    );
    assert_eq!(seen, vec![4]);
    // Alarms off: none.
    let pool2 = CountingPool::new(Failure::Never, true);
    let quiet = tracker(&pool2, 32, 0);
    for i in 0..20u64 {
        quiet
            .opened(0x1000 + i, P, 7, &w(&format!(r"{USER}\K{i}")), 1, 10)
            .unwrap();
    }
    assert!(!quiet.events_after(0));
}

#[test]
fn every_allocation_failure_leaves_the_stream_consistent_and_nothing_leaks() {
    let run = |pool: &CountingPool| {
        let t = tracker(pool, 3, 2);
        for i in 0..9u64 {
            let _ = t.opened(0x1000 + i, P, 7, &w(&format!(r"{USER}\K{i}")), 1, 10);
            if i % 3 == 0 {
                t.unload_attempted(&w(USER), 0xC000_0121, 20 + i);
            }
        }
        // Whatever was lost, sequences delivered plus missed account for every number.
        let (seqs, _, missed, done, next) = page(&t, 0, 0);
        assert!(
            done && !t.events_after(next),
            "the page covers every number"
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order: {seqs:?}"
        );
        assert_eq!(
            missed + seqs.len() as u64,
            next,
            "a number neither delivered nor missed"
        );
        drop(t);
    };
    let probe = CountingPool::new(Failure::Never, true);
    run(&probe);
    for k in 1..=probe.calls() {
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
fn alarms_push_out_failed_unloads_only_while_those_hold_more_than_half_of_the_history() {
    // Any user can raise key-count alarms (a process opening one key over and over): 40 of
    // them must not erase the failed unloads an administrator needs after a logoff.
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool, 8, 2);
    for i in 0..6 {
        t.unload_attempted(&w(USER), 0xC000_0121, 10 + i);
    }
    for p in 0..40u64 {
        let who = ProcessKey {
            pid: 0x100 + p * 4,
            start_key: 1,
        };
        for k in 0..2u64 {
            let obj = 0x10_000 + p * 16 + k;
            t.opened(obj, who, 7, &w(&format!(r"{USER}\K{p}")), 1, 20)
                .unwrap();
        }
    }
    assert_eq!(t.stats().key_alarms, 40);
    let mut seen = Vec::new();
    drain::<UnloadHistory>(
        4096,
        |c, b| t.unload_history(c, 0, b),
        |p| seen.extend(p.records().map(|r| r.sequence)),
    );
    assert_eq!(
        seen,
        vec![6, 5, 4, 3],
        "half of the 8 entries keep failed unloads"
    );
    let (seqs, flags, missed, done, next) = page(&t, 0, 0);
    let alarms = flags
        .iter()
        .filter(|&&f| f & UnloadRecord::KEY_ALARM != 0)
        .count();
    assert_eq!(alarms, 4);
    assert_eq!(seqs, vec![3, 4, 5, 6, 43, 44, 45, 46], "the newest alarms");
    assert_eq!(
        (missed, done, next),
        (38, true, 46),
        "the evicted are counted as missed"
    );
}

/// The unload's own open of the hive root (Windows' `NtUnloadKey2` opens it with a kernel
/// handle, so System holds it until after the post) is not a holder: with it named, the
/// record counts only the others' keys; a System key besides it stays listed; an `own` the
/// tracker does not hold live (wrong object, or already gone) changes nothing.
#[test]
fn an_unloads_own_root_key_is_not_recorded_as_a_holder() {
    const SYSTEM: ProcessKey = ProcessKey {
        pid: 4,
        start_key: 0,
    };
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool, 8, 0);
    t.opened(0x1000, P, 7, &w(&format!(r"{USER}\Software")), 1, 10)
        .unwrap();
    t.opened(0x1100, P, 7, &w(&format!(r"{USER}\Console")), 1, 10)
        .unwrap();
    let kernel_key = t
        .opened(0x1200, SYSTEM, 7, &w(&format!(r"{USER}\Policies")), 1, 10)
        .unwrap();
    let own = t.opened(0x2000, SYSTEM, 8, &w(USER), 0x2_0006, 11).unwrap();
    let holders = |t: &TestTracker<'_>| {
        let mut out = Vec::new();
        drain::<UnloadHistory>(
            4096,
            |c, b| t.unload_history(c, 0, b),
            |p| {
                out.extend(p.records().map(|r| {
                    let mut h: Vec<(u64, u64)> =
                        r.holders.iter().map(|h| (h.pid, h.open_keys)).collect();
                    h.sort_unstable();
                    (r.sequence, r.open_keys, r.holders_total, h)
                }));
            },
        );
        out.sort_unstable();
        out.pop().unwrap()
    };
    t.unload_attempted_with(&w(USER), 0xC000_0121, (12, 0), Some((own, 0x2000, 8)));
    assert_eq!(holders(&t), (1, 3, 2, vec![(4, 1), (0x40, 2)]));
    // Without it (or with a token of another object, or of an object another thread
    // opened: a filter's earlier open handed back) the open is counted, as before.
    t.unload_attempted_with(&w(USER), 0xC000_0121, (13, 0), Some((own, 0x2001, 8)));
    assert_eq!(holders(&t), (2, 4, 2, vec![(4, 2), (0x40, 2)]));
    t.unload_attempted_with(&w(USER), 0xC000_0121, (13, 0), Some((own, 0x2000, 9)));
    assert_eq!(holders(&t), (3, 4, 2, vec![(4, 2), (0x40, 2)]));
    // Its last key is the unload's own: System is not listed at all.
    t.object_destroyed(kernel_key, 0x1200);
    t.unload_attempted_with(&w(USER), 0xC000_0121, (14, 0), Some((own, 0x2000, 8)));
    assert_eq!(holders(&t), (4, 2, 1, vec![(0x40, 2)]));
    // Gone before the post: nothing to leave out.
    t.object_destroyed(own, 0x2000);
    t.unload_attempted_with(&w(USER), 0xC000_0121, (15, 0), Some((own, 0x2000, 8)));
    assert_eq!(holders(&t), (5, 2, 1, vec![(0x40, 2)]));
}
