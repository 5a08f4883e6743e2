//! Paging holders and the snapshot through 3,000 processes, a few records a page, while
//! other processes come and go between pages: every stable process's keys come exactly once
//! (the process table's walk order, resumed from the cursor's key).
mod support;

use std::collections::HashMap;

use protocol::cursor::Cursor;
use protocol::holders::{HolderRecord, Holders};
use protocol::page::Page;
use protocol::snapshot::Snapshot;
use support::*;
use tracker::{Config, ProcessKey, Tracker};

const SW: &str = r"\REGISTRY\MACHINE\SOFTWARE";

#[test]
fn paged_holders_and_snapshot_neither_repeat_nor_skip() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(SW), &w(r"C:\x"), 1);
    let mut obj = 0x1000u64;
    let mut open = |t: &TestTracker<'_>, p: ProcessKey, n: u64| {
        let mut v = vec![];
        for k in 0..n {
            obj += 16;
            v.push((
                t.opened(obj, p, 1, &w(&format!(r"{SW}\K{k}")), 1, 1)
                    .unwrap(),
                obj,
            ));
        }
        v
    };
    // Stable processes: pids spread, some with several keys (continuation across pages).
    let stable: Vec<ProcessKey> = (0..3000u64)
        .map(|i| ProcessKey {
            pid: i * 4,
            start_key: i % 3,
        })
        .collect();
    let mut expect: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, p) in stable.iter().enumerate() {
        let n = 1 + (i % 4) as u64;
        open(&t, *p, n);
        expect.insert((p.pid, p.start_key), usize::try_from(n).unwrap());
    }
    for kind in 0..2 {
        let mut churn: Vec<(ProcessKey, Vec<(tracker::Token, u64)>)> = vec![];
        let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
        let mut cursor = Cursor::START;
        let mut buf = vec![0u8; 4096];
        let mut page_no = 0u64;
        loop {
            let n = if kind == 0 {
                t.holders(&w(SW), &cursor, 0, 3, &mut buf).unwrap()
            } else {
                t.snapshot(&cursor, 3, 0, &mut buf).unwrap()
            };
            let (next, done) = if kind == 0 {
                let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..n]).unwrap();
                let mut cur = (0, 0);
                for r in page.records() {
                    match r {
                        HolderRecord::Process(p) => cur = (p.pid, p.start_key),
                        HolderRecord::Key(_) => *seen.entry(cur).or_default() += 1,
                    }
                }
                (page.info.next, page.info.done())
            } else {
                let page = protocol::wire::decode::<Page<'_, Snapshot>>(&buf[..n]).unwrap();
                for r in page.records() {
                    *seen.entry((r.pid, r.start_key)).or_default() += 1;
                }
                (page.info.next, page.info.done())
            };
            if done {
                break;
            }
            cursor = next;
            // Churn: new processes (pids that interleave the stable ones) and exits/reaps.
            page_no += 1;
            let p = ProcessKey {
                pid: 1_000_000 + page_no * 4,
                start_key: 7 + kind,
            };
            let toks = open(&t, p, 2);
            churn.push((p, toks));
            if page_no.is_multiple_of(3) {
                let (p, toks) = churn.remove(0);
                for (tok, o) in toks {
                    t.object_destroyed(tok, o);
                }
                t.process_exited(p);
            }
        }
        for (k, n) in &expect {
            assert_eq!(seen.get(k), Some(n), "kind {kind}: process {k:?} keys seen");
        }
        for (p, toks) in churn {
            for (tok, o) in toks {
                t.object_destroyed(tok, o);
            }
            t.process_exited(p);
        }
    }
}

/// The `processes` listing pages through processes whose key counts change between pages
/// (a leaking process keeps opening, others close): every process that exists throughout
/// comes exactly once. A cursor in the order of the counts themselves could not promise it:
/// a process that climbs past the cursor between two pages was never listed, one that falls
/// behind it was listed twice.
#[test]
fn paged_processes_neither_repeat_nor_skip_while_counts_change() {
    use protocol::processes::Processes;
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(SW), &w(r"C:\x"), 1);
    let name = w(&format!(r"{SW}\K"));
    let mut obj = 0x1000u64;
    let mut held: HashMap<(u64, u64), Vec<(tracker::Token, u64)>> = HashMap::new();
    let mut open = |t: &TestTracker<'_>,
                    held: &mut HashMap<(u64, u64), Vec<(tracker::Token, u64)>>,
                    p: ProcessKey,
                    n: u64| {
        for _ in 0..n {
            obj += 16;
            let tok = t.opened(obj, p, 1, &name, 1, 1).unwrap();
            held.entry((p.pid, p.start_key))
                .or_default()
                .push((tok, obj));
        }
    };
    let procs: Vec<ProcessKey> = (0..300u64)
        .map(|i| ProcessKey {
            pid: 8 + i * 4,
            start_key: 1,
        })
        .collect();
    for (i, p) in procs.iter().enumerate() {
        open(&t, &mut held, *p, 1 + (i as u64 % 7));
    }
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    let mut cursor = Cursor::START;
    let mut buf = vec![0u8; 4096];
    let mut page_no = 0usize;
    loop {
        let n = t.processes(&cursor, 5, &mut buf).unwrap();
        let page = protocol::wire::decode::<Page<'_, Processes>>(&buf[..n]).unwrap();
        for r in page.records() {
            *seen.entry((r.pid, r.start_key)).or_default() += 1;
        }
        if page.info.done() {
            break;
        }
        cursor = page.info.next;
        // Between pages: one process climbs (a leak: 40 more keys), one sheds all but one.
        page_no += 1;
        let climber = procs[(page_no * 37) % procs.len()];
        open(&t, &mut held, climber, 40);
        let shedder = procs[(page_no * 53 + 11) % procs.len()];
        let toks = held.get_mut(&(shedder.pid, shedder.start_key)).unwrap();
        while toks.len() > 1 {
            let (tok, o) = toks.pop().unwrap();
            t.handle_closed(tok, o);
            t.object_destroyed(tok, o);
        }
    }
    let missing: Vec<_> = procs
        .iter()
        .filter(|p| !seen.contains_key(&(p.pid, p.start_key)))
        .collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && seen.len() == procs.len(),
        "{} listed of {}; never listed: {missing:?}; listed more than once: {twice:?}",
        seen.len(),
        procs.len()
    );
}

/// The hives listing is paged by (shard, id) in the table's order: every hive that exists
/// throughout a listing comes exactly once, while others are loaded, unloaded and
/// forgotten between pages, and a retired hive (unloaded, still referenced) comes once too.
/// Its cost per page is one visit per hive at most: before 2026-12-04 it looked the whole
/// table up for each hive written (10,000 app hives: some 10^8 visits for one listing).
#[test]
fn paged_hives_neither_repeat_nor_skip_while_hives_come_and_go() {
    use protocol::hives::Hives;
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.tracking_started(1);
    let p = ProcessKey {
        pid: 0x40,
        start_key: 1,
    };
    let mut tokens = Vec::new();
    for i in 0..600u64 {
        let m = format!(r"\REGISTRY\A\{{{i:08}-0000-0000-0000-000000000000}}");
        t.hive_loaded(&w(&m), &w(r"C:\h.dat"), 2);
        // Every third one held by a key: it stays while others come and go.
        if i % 3 == 0 {
            tokens.push((
                t.opened(0x1_0000 + i, p, 1, &w(&format!(r"{m}\K")), 1, 3)
                    .unwrap(),
                0x1_0000 + i,
            ));
        }
    }
    // A user hive unloaded while a key still holds it: retired, still listed.
    let user = r"\REGISTRY\USER\S-1-5-21-9-1001";
    t.hive_loaded(&w(user), &w(r"C:\Users\u\NTUSER.DAT"), 2);
    let _held = t
        .opened(0x9_0000, p, 1, &w(&format!(r"{user}\Software")), 1, 3)
        .unwrap();
    t.hive_unloaded(&w(user));
    // The hives held by a key (and the retired one, held too) exist throughout.
    let must: std::collections::BTreeSet<u32> = {
        let mut ids = std::collections::BTreeSet::new();
        drain::<Hives>(
            1 << 20,
            |c, b| t.hives(c, 0, b),
            |pg| ids.extend(pg.records().filter(|r| r.open_keys > 0).map(|r| r.id)),
        );
        ids
    };
    assert_eq!(
        must.len(),
        201,
        "200 held app hives and the retired user hive"
    );
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let mut churn = 0u64;
    let pages = drain::<Hives>(
        4096,
        |c, b| {
            // Between pages: a hive loaded (and, past the idle limit, an idle one forgotten).
            churn += 1;
            let m = format!(r"\REGISTRY\A\{{new{churn:05}-0000-0000-0000-000000000000}}");
            t.hive_loaded(&w(&m), &w(r"C:\n.dat"), 2);
            t.hives(c, 7, b)
        },
        |pg| {
            for r in pg.records() {
                *seen.entry(r.id).or_default() += 1;
            }
        },
    );
    assert!(pages > 25, "paged: {pages} pages");
    for id in &must {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "hive {id} (held throughout) listed once"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no hive twice");
    for (tok, obj) in tokens {
        t.object_destroyed(tok, obj);
    }
}

/// Audit 21b F5: a holders or snapshot page writes one process's keys under that process's
/// lock, and ended only at the caller's buffer or `max_records` (0: as many as fit): one
/// request with a large buffer held the lock over all of a process's keys. Now a page ends
/// after [`tracker::MAX_PAGE_RECORDS`] records and the cursor resumes. One process with
/// 50,000 keys, `max_records` 0 and a 16 MiB buffer: every page holds at most the cap, and
/// paging through yields every key exactly once. On the old code the first page held all
/// 50,001 records (holders) and 50,000 (snapshot).
#[test]
fn a_page_stops_at_the_record_cap_however_large_the_buffer() {
    const KEYS: u64 = 50_000;
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(SW), &w(r"C:\x"), 1);
    let p = ProcessKey {
        pid: 4,
        start_key: 1,
    };
    for k in 0..KEYS {
        t.opened(0x1000 + k * 16, p, 1, &w(&format!(r"{SW}\K{k}")), 1, k / 7)
            .unwrap();
    }
    let cap = usize::try_from(tracker::MAX_PAGE_RECORDS).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    for kind in 0..2 {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = Cursor::START;
        let mut pages = 0;
        loop {
            let (next, done, records) = if kind == 0 {
                let n = t.holders(&w(SW), &cursor, 0, 0, &mut buf).unwrap();
                let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..n]).unwrap();
                let mut records = 0;
                for r in page.records() {
                    records += 1;
                    if let HolderRecord::Key(k) = r {
                        assert!(seen.insert(k.id), "key {} repeated", k.id);
                    }
                }
                (page.info.next, page.info.done(), records)
            } else {
                let n = t.snapshot(&cursor, 0, 0, &mut buf).unwrap();
                let page = protocol::wire::decode::<Page<'_, Snapshot>>(&buf[..n]).unwrap();
                let mut records = 0;
                for r in page.records() {
                    records += 1;
                    assert!(seen.insert(r.id), "key {} repeated", r.id);
                }
                (page.info.next, page.info.done(), records)
            };
            assert!(
                records <= cap,
                "page {pages} of kind {kind} holds {records} records, over the cap {cap}"
            );
            pages += 1;
            if done {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), usize::try_from(KEYS).unwrap(), "kind {kind}");
        assert!(pages > 1, "kind {kind}: paged");
    }
}
