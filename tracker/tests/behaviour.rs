//! Event semantics, one behaviour per test: tokens, resolution, counters, paging, teardown.
#![allow(
    clippy::cast_possible_truncation,
    clippy::many_single_char_names,
    reason = "test code: small sizes, short names"
)]

mod support;

use protocol::cursor::Cursor;
use protocol::history::{UnloadHistory, UnloadRecord};
use protocol::hives::Hives;
use protocol::holders::{HiveKind, HiveState, HolderKey, HolderProcess, HolderRecord, Holders};
use protocol::processes::Processes;
use protocol::request::{QueryKind, QueryRequest};
use protocol::snapshot::Snapshot;
use protocol::text::Text;
use support::*;
use tracker::{BlockClass, Config, NotTracked, ProcessKey, QueryError, Token, Tracker};

const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    Tracker::new(pool, Config::default()).unwrap()
}

fn holders_of(t: &TestTracker<'_>, path: &str) -> Vec<(u64, u64, Vec<String>)> {
    let mut out: Vec<(u64, u64, Vec<String>)> = Vec::new();
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(path), c, 0, 0, b),
        |p| {
            for r in p.records() {
                match r {
                    HolderRecord::Process(pr) => {
                        if pr.flags & HolderProcess::CONTINUED == 0 {
                            out.push((pr.pid, pr.open_keys, vec![]));
                        }
                    }
                    HolderRecord::Key(k) => out.last_mut().unwrap().2.push(k.name.to_string()),
                }
            }
        },
    );
    out
}

#[test]
fn open_close_destroy_round_trip_leaves_nothing() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.hive_loaded(&w(SOFTWARE), &w(r"\SystemRoot\System32\Config\SOFTWARE"), 5);
        let tok = t
            .opened(
                0x1000,
                P1,
                7,
                &w(r"\REGISTRY\MACHINE\SOFTWARE\Microsoft"),
                0x2_0019,
                10,
            )
            .unwrap();
        assert_ne!(tok.0, 0);
        assert_ne!(tok.0, 0x1000, "the id is not the kernel address");
        let s = t.stats();
        assert_eq!(
            (s.objects_tracked, s.processes_tracked, s.holdings_tracked),
            (1, 1, 1)
        );
        t.handle_closed(tok, 0x1000);
        t.object_destroyed(tok, 0x1000);
        let s = t.stats();
        assert_eq!(
            (s.objects_tracked, s.holdings_tracked, s.not_recorded()),
            (0, 0, 0)
        );
        assert_eq!(s.processes_tracked, 1, "the process lives until it exits");
        t.process_exited(P1);
        assert_eq!(t.stats().processes_tracked, 0);
        assert_eq!(t.stats().hives_tracked, 1);
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn stale_and_foreign_tokens_are_rejected_and_counted() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    let name = w(r"\REGISTRY\MACHINE\SOFTWARE\A");
    let a = t.opened(0x1000, P1, 1, &name, 1, 1).unwrap();
    t.object_destroyed(a, 0x1000);
    // The slot is reused by the next open in the same shard; the old token is stale.
    let b = t.opened(0x1000, P1, 1, &name, 1, 2).unwrap();
    assert_ne!(a, b);
    t.handle_closed(a, 0x1000);
    t.object_destroyed(a, 0x1000);
    // Foreign values: garbage, out-of-range shard/index, right token but other object.
    for raw in [0, 1, u64::MAX, 0xFFFF_FFFF, b.0 ^ (1 << 32), b.0 + 1] {
        t.handle_closed(Token(raw), 0x1000);
    }
    t.handle_closed(b, 0x2000);
    t.object_destroyed(b, 0x2000);
    let s = t.stats();
    assert_eq!(s.closes_unknown_object, 8);
    assert_eq!(s.destroys_unknown_object, 2);
    assert_eq!(s.objects_tracked, 1, "b is still tracked");
    t.object_destroyed(b, 0x1000);
    assert_eq!(t.stats().objects_tracked, 0);
}

#[test]
fn duplicated_handle_closes_are_counted_without_underflow() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    let tok = t
        .opened(0x1000, P1, 1, &w(r"\REGISTRY\MACHINE\SOFTWARE\A"), 1, 1)
        .unwrap();
    for _ in 0..3 {
        t.handle_closed(tok, 0x1000);
    }
    assert_eq!(t.stats().closes_exceeding_opens, 2);
    let mut closes = 0;
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(SOFTWARE), c, 0, 0, b),
        |p| {
            for r in p.records() {
                if let HolderRecord::Key(k) = r {
                    closes = k.handle_closes;
                    assert_eq!(k.handle_opens, 1);
                }
            }
        },
    );
    assert_eq!(closes, 3);
}

#[test]
fn hive_resolution_longest_prefix_case_insensitive_and_fallbacks() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    t.hive_loaded(
        &w(r"\REGISTRY\USER\S-1-5-21-1-1001"),
        &w(r"C:\Users\a\NTUSER.DAT"),
        1,
    );
    t.hive_loaded(
        &w(r"\REGISTRY\USER\S-1-5-21-1-1001_Classes"),
        &w(r"C:\Users\a\UsrClass.dat"),
        1,
    );
    t.hive_loaded(&w(r"\REGISTRY\MACHINE\SOFTWARE\Nested"), &w(r"C:\n.hve"), 1);
    let opens = [
        (
            r"\registry\user\s-1-5-21-1-1001\Software\X",
            r"\REGISTRY\USER\S-1-5-21-1-1001",
        ),
        (
            r"\REGISTRY\USER\S-1-5-21-1-1001_Classes\CLSID",
            r"\REGISTRY\USER\S-1-5-21-1-1001_Classes",
        ),
        (
            r"\REGISTRY\MACHINE\SOFTWARE\NESTED\deep",
            r"\REGISTRY\MACHINE\SOFTWARE\Nested",
        ),
        (
            r"\REGISTRY\MACHINE\SOFTWARE\NestedNot",
            r"\REGISTRY\MACHINE\SOFTWARE",
        ),
        (r"\REGISTRY\A\{1234}\Root", r"\REGISTRY\A\{1234}"),
        (r"\REGISTRY\MACHINE", r"\REGISTRY\MACHINE"),
    ];
    for (i, (path, _)) in opens.iter().enumerate() {
        t.opened(0x100 * (i as u64 + 1), P1, 1, &w(path), 1, 1)
            .unwrap();
    }
    for (path, mount) in opens {
        let h = holders_of(&t, path);
        assert_eq!(h.len(), 1, "{path}");
        assert!(
            h[0].2.iter().any(|n| n == path),
            "{path} not under {mount}: {h:?}"
        );
    }
    let mut hives = vec![];
    drain::<Hives>(
        4096,
        |c, b| t.hives(c, 0, b),
        |p| {
            for r in p.records() {
                hives.push((
                    r.mount.to_string(),
                    r.state,
                    r.kind,
                    r.open_keys,
                    r.file.to_string(),
                ));
            }
        },
    );
    let find = |m: &str| {
        hives
            .iter()
            .find(|h| h.0 == m)
            .unwrap_or_else(|| panic!("{m} in {hives:?}"))
            .clone()
    };
    assert_eq!(find(r"\REGISTRY\A\{1234}").2, HiveKind::App);
    assert_eq!(find(r"\REGISTRY\A\{1234}").1, HiveState::Implicit);
    assert_eq!(find(r"\REGISTRY\MACHINE\SOFTWARE").1, HiveState::Implicit);
    assert_eq!(find(r"\REGISTRY\MACHINE\SOFTWARE\Nested").4, r"C:\n.hve");
    assert_eq!(find(r"\REGISTRY\USER\S-1-5-21-1-1001").3, 1);
    // Holders of an unknown hive.
    let mut buf = [0u8; 1024];
    assert_eq!(
        t.holders(&w(r"\REGISTRY\WC\x"), &Cursor::START, 0, 0, &mut buf),
        Err(QueryError::UnknownHive)
    );
}

#[test]
fn names_are_interned_case_insensitively_and_long_ones_truncated() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    let a = t
        .opened(0x10, P1, 1, &w(r"\REGISTRY\MACHINE\SOFTWARE\Key"), 1, 1)
        .unwrap();
    let b = t
        .opened(0x20, P2, 1, &w(r"\registry\machine\software\KEY"), 1, 1)
        .unwrap();
    // Hive mount + one shared key name.
    assert_eq!(t.stats().names_interned, 2);
    let long: String = format!(r"\REGISTRY\MACHINE\SOFTWARE\{}", "x".repeat(5000));
    let c = t.opened(0x30, P1, 1, &w(&long), 1, 1).unwrap();
    assert_eq!(t.stats().names_truncated, 1);
    let mut flags = vec![];
    let mut small = [0u8; 4096];
    match t.holders(&w(SOFTWARE), &Cursor::START, 0, 1, &mut small) {
        Ok(_) => {}
        Err(e) => panic!("{e:?}"),
    }
    drain::<Holders>(
        16384,
        |cu, buf| t.holders(&w(SOFTWARE), cu, 0, 0, buf),
        |p| {
            for r in p.records() {
                if let HolderRecord::Key(k) = r {
                    flags.push((k.flags, k.name.len()));
                }
            }
        },
    );
    assert!(
        flags.contains(&(HolderKey::NAME_TRUNCATED, tracker::names::MAX_NAME_UNITS)),
        "{flags:?}"
    );
    for (tok, obj) in [(a, 0x10), (b, 0x20), (c, 0x30)] {
        t.object_destroyed(tok, obj);
    }
    assert_eq!(
        t.stats().names_interned,
        0,
        "nothing is left: the implicit hive (and its mount) went with its last key"
    );
    assert!(pool.outstanding_of(BlockClass::B4096) > 0);
}

#[test]
fn full_shards_are_skipped_and_found_again_when_a_slot_frees() {
    // 4 shards of 4: one process fills its own shard, then the others (skipping the ones
    // found full), is refused at 16, and gets a slot again in whichever shard one frees.
    let pool = CountingPool::new(Failure::Never, false);
    let t: TestTracker<'_> = Tracker::new(
        &pool,
        Config {
            max_objects: 16,
            object_shards: 4,
            history_len: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let name = w(r"\REGISTRY\MACHINE\SOFTWARE\A");
    let toks: Vec<_> = (0..18u64)
        .map(|i| t.opened(0x10 * (i + 1), P1, 1, &name, 1, i))
        .collect();
    assert_eq!(toks.iter().filter(|r| r.is_ok()).count(), 16);
    assert_eq!(toks[16], Err(NotTracked::Cap));
    assert_eq!(t.stats().opens_dropped_cap, 2);
    for (i, tok) in toks.iter().enumerate().take(16).step_by(5) {
        let object = 0x10 * (i as u64 + 1);
        t.object_destroyed(*tok.as_ref().unwrap(), object);
        let again = t.opened(0x1000 + object, P1, 1, &name, 1, 100);
        assert!(
            again.is_ok(),
            "a freed slot of a full shard is found: {again:?}"
        );
        assert_eq!(
            t.opened(0x2000 + object, P1, 1, &name, 1, 101),
            Err(NotTracked::Cap)
        );
    }
    t.check_consistency().unwrap();
}

#[test]
fn cap_is_enforced_and_counted() {
    let pool = CountingPool::new(Failure::Never, false);
    let t: TestTracker<'_> = Tracker::new(
        &pool,
        Config {
            max_objects: 3,
            object_shards: 1,
            history_len: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let name = w(r"\REGISTRY\MACHINE\SOFTWARE\A");
    let toks: Vec<_> = (0..5)
        .map(|i| t.opened(0x10 * (i + 1), P1, 1, &name, 1, 1))
        .collect();
    assert_eq!(toks.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(toks[4], Err(NotTracked::Cap));
    assert_eq!(t.stats().opens_dropped_cap, 2);
    assert_eq!(t.stats().not_recorded(), 2);
    assert!(
        Tracker::<&CountingPool, ParkingLock>::new(
            &pool,
            Config {
                max_objects: 10,
                object_shards: 3,
                history_len: 1,
                ..Config::default()
            }
        )
        .is_err()
    );
}

#[test]
fn holders_pages_resume_without_loss_or_repeat() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    let mut expected = 0;
    for p in 0..10u64 {
        for k in 0..57u64 {
            let name = w(&format!(r"\REGISTRY\MACHINE\SOFTWARE\P{p}\K{k}"));
            // Times out of order on purpose, with ties.
            t.opened(
                (p * 1000 + k + 1) * 16,
                ProcessKey {
                    pid: p,
                    start_key: 9,
                },
                k,
                &name,
                1,
                (k * 7) % 13,
            )
            .unwrap();
            expected += 1;
        }
    }
    for (buf_len, max) in [(400usize, 0u32), (700, 0), (4096, 3), (1 << 20, 0)] {
        let mut seen = std::collections::HashSet::new();
        let mut last_time: Option<(u64, u64)> = None;
        let mut pid = None;
        let pages = drain::<Holders>(
            buf_len,
            |c, b| t.holders(&w(SOFTWARE), c, 0, max, b),
            |p| {
                for r in p.records() {
                    match r {
                        HolderRecord::Process(pr) => {
                            if pr.flags & HolderProcess::CONTINUED == 0 {
                                last_time = None;
                                assert_eq!(pr.open_keys, 57);
                                assert_eq!(pr.oldest_open, 0);
                            }
                            pid = Some(pr.pid);
                        }
                        HolderRecord::Key(k) => {
                            assert!(seen.insert(k.id), "key repeated");
                            let now = (pid.unwrap(), k.open_time);
                            assert!(last_time.is_none_or(|l| l <= now), "keys out of order");
                            last_time = Some(now);
                        }
                    }
                }
            },
        );
        assert_eq!(seen.len(), expected, "buf {buf_len}");
        if buf_len < 1000 {
            assert!(pages > 10);
        }
    }
    // Too small for any record.
    let mut tiny = [0u8; 120];
    assert!(matches!(
        t.holders(&w(SOFTWARE), &Cursor::START, 0, 0, &mut tiny),
        Err(QueryError::BufferTooSmall { .. })
    ));
}

#[test]
fn processes_list_everyone_with_their_counts_and_snapshot_lists_everything() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    t.process_started(P2, &w(r"\Device\HarddiskVolume3\leaky.exe"));
    for i in 0..5u64 {
        t.opened(
            0x100 + i * 16,
            P2,
            1,
            &w(r"\REGISTRY\MACHINE\SOFTWARE\Leak"),
            1,
            i,
        )
        .unwrap();
    }
    t.opened(0x900, P1, 1, &w(r"\REGISTRY\MACHINE\SYSTEM\Select"), 1, 1)
        .unwrap();
    let mut ranked = vec![];
    drain::<Processes>(
        200,
        |c, b| t.processes(c, 0, b),
        |p| {
            for r in p.records() {
                ranked.push((r.pid, r.open_keys, r.image.to_string()));
            }
        },
    );
    // Ranked as the CLI ranks them: most open keys first.
    ranked.sort_by_key(|r| (std::cmp::Reverse(r.1), r.0));
    assert_eq!(
        ranked,
        vec![
            (200, 5, r"\Device\HarddiskVolume3\leaky.exe".to_string()),
            (100, 1, String::new())
        ]
    );
    let mut rows = vec![];
    drain::<Snapshot>(
        256,
        |c, b| t.snapshot(c, 0, 77, b),
        |p| {
            assert_eq!(p.prefix.taken_at, 77);
            for r in p.records() {
                rows.push(protocol::diff::SnapshotRow::from(&r));
            }
        },
    );
    assert_eq!(rows.len(), 6);
    // Per process in the table's walk order: each process's rows together.
    assert_eq!(rows.iter().filter(|r| r.pid == 100).count(), 1);
    let first = rows.iter().position(|r| r.pid == 200).unwrap();
    assert!(rows[first..first + 5].iter().all(|r| r.pid == 200));
    let d = protocol::diff::diff(&rows[first..=first], &rows);
    assert_eq!(d[0].pid, 200);
    assert_eq!(d[0].after - d[0].before, 4);
}

#[test]
fn unload_history_keeps_the_holders_and_is_bounded() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t: TestTracker<'_> = Tracker::new(
            &pool,
            Config {
                history_len: 2,
                ..Config::default()
            },
        )
        .unwrap();
        let mount = w(r"\REGISTRY\USER\S-1-5-21-9");
        t.hive_loaded(&mount, &w(r"C:\u\NTUSER.DAT"), 1);
        for pid in 0..12u64 {
            t.process_started(ProcessKey { pid, start_key: 1 }, &w(&format!("p{pid}.exe")));
            for k in 0..=pid {
                t.opened(
                    (pid * 100 + k + 1) * 16,
                    ProcessKey { pid, start_key: 1 },
                    1,
                    &w(&format!(r"\REGISTRY\USER\S-1-5-21-9\K{k}")),
                    1,
                    1,
                )
                .unwrap();
            }
        }
        t.unload_attempted(&mount, 0xC000_0022, 50);
        t.unload_attempted(&w(r"\REGISTRY\USER\nope"), 0, 51);
        t.unload_attempted(&mount, 0xC000_0022, 52);
        let mut recs = vec![];
        drain::<UnloadHistory>(
            4096,
            |c, b| t.unload_history(c, 0, b),
            |p| {
                for r in p.records() {
                    let holders: Vec<_> = r
                        .holders
                        .iter()
                        .map(|h| (h.pid, h.open_keys, h.image.to_string()))
                        .collect();
                    recs.push((r.sequence, r.flags, r.holders_total, holders));
                }
            },
        );
        assert_eq!(recs.len(), 2, "bounded to 2");
        assert_eq!(recs[0].0, 3);
        assert_eq!(recs[1].1, UnloadRecord::UNKNOWN_HIVE);
        // Live tracking never started here: the record cannot vouch for every holder.
        assert_eq!(
            recs[0].1,
            UnloadRecord::HOLDERS_TRUNCATED | UnloadRecord::HOLDERS_UNSEEN
        );
        assert_eq!(recs[0].2, 12);
        assert_eq!(recs[0].3.len(), 8);
        assert_eq!(recs[0].3[0], (11, 12, "p11.exe".to_string()));
        assert_eq!(recs[0].3[7].0, 4);
        t.hive_unloaded(&mount);
        assert_eq!(t.stats().hives_tracked, 1, "unloaded but still referenced");
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn answer_dispatches_ioctls_and_validates_requests() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    t.opened(0x10, P1, 1, &w(r"\REGISTRY\MACHINE\SOFTWARE\A"), 1, 1)
        .unwrap();
    let hive = w(SOFTWARE);
    let req = QueryRequest {
        query: QueryKind::Holders,
        flags: 0,
        max_records: 0,
        cursor: Cursor::START,
        hive: Text::Units(&hive),
    };
    let mut input = vec![0u8; 256];
    let n = protocol::wire::encode(&req, &mut input).unwrap();
    let mut out = vec![0u8; 4096];
    let code = protocol::ioctl::IOCTL_HIVETRACK_QUERY_HOLDERS;
    let len = t.answer(code, &input[..n], &mut out, 0).unwrap();
    let page = protocol::wire::decode::<protocol::page::Page<'_, Holders>>(&out[..len]).unwrap();
    assert_eq!(page.len(), 2);
    assert!(page.info.done());
    assert_eq!(
        t.answer(
            protocol::ioctl::IOCTL_HIVETRACK_QUERY_HIVES,
            &input[..n],
            &mut out,
            0
        ),
        Err(QueryError::WrongQuery)
    );
    assert!(matches!(
        t.answer(code, &input[..n - 1], &mut out, 0),
        Err(QueryError::BadRequest(_))
    ));
    let sreq = QueryRequest {
        query: QueryKind::Stats,
        hive: Text::EMPTY,
        ..req
    };
    let n = protocol::wire::encode(&sreq, &mut input).unwrap();
    let len = t
        .answer(
            protocol::ioctl::IOCTL_HIVETRACK_QUERY_STATS,
            &input[..n],
            &mut out,
            0,
        )
        .unwrap();
    let s = protocol::wire::decode::<protocol::stats::Stats>(&out[..len]).unwrap();
    assert_eq!(s.objects_tracked, 1);
}

#[test]
fn record_sizes_fit_their_classes() {
    assert_eq!(std::mem::size_of::<tracker::objects::ObjRecord>(), 96);
    assert!(
        std::mem::size_of::<tracker::processes::Process<ParkingLock>>()
            <= tracker::processes::PROCESS_CLASS.size()
    );
    assert!(
        std::mem::size_of::<tracker::processes::Process<tracker::SpinLock>>()
            <= tracker::processes::PROCESS_CLASS.size()
    );
    assert!(
        std::mem::size_of::<tracker::processes::Holding<ParkingLock>>()
            <= tracker::processes::HOLDING_CLASS.size()
    );
    assert!(std::mem::size_of::<tracker::hives::Hive>() <= tracker::hives::HIVE_CLASS.size());
}

#[test]
fn a_record_larger_than_the_buffer_is_an_error_not_a_loop() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    let long: String = format!(r"\REGISTRY\MACHINE\SOFTWARE\{}", "y".repeat(1800));
    t.opened(0x10, P1, 1, &w(&long), 1, 1).unwrap();
    let mut buf = vec![0u8; 2048];
    // The summary fits, the key does not: first page has the summary only.
    let n = t
        .holders(&w(SOFTWARE), &Cursor::START, 0, 0, &mut buf)
        .unwrap();
    let p = protocol::wire::decode::<protocol::page::Page<'_, Holders>>(&buf[..n]).unwrap();
    assert_eq!(p.len(), 1);
    let next = p.info.next;
    // Resuming can only repeat the summary: the tracker says how much room it needs.
    match t.holders(&w(SOFTWARE), &next, 0, 0, &mut buf) {
        Err(QueryError::BufferTooSmall { needed }) => {
            assert!(needed > 3600, "{needed}");
            let mut big = vec![0u8; needed];
            let n = t.holders(&w(SOFTWARE), &next, 0, 0, &mut big).unwrap();
            let p = protocol::wire::decode::<protocol::page::Page<'_, Holders>>(&big[..n]).unwrap();
            assert_eq!(p.len(), 2);
            assert!(p.info.done());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tracker_struct_stays_small_and_is_never_built_on_the_stack() {
    // KERNEL_STACK_SIZE is 24 KiB on x64. The driver builds the tracker in place in a static
    // (`Tracker::init_in_place`, the process table shard by shard), so its size costs image
    // memory, not stack; the kernel emulator measures DriverEntry's stack (bugcheck 0x7F past
    // 24 KiB). This bounds the static.
    let size = std::mem::size_of::<Tracker<&CountingPool, ParkingLock>>();
    println!("size_of::<Tracker>() = {size}");
    assert!(size < 64 * 1024, "{size}");
}

#[test]
fn forged_cursor_hints_are_validated_not_followed() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    let mut toks = vec![];
    for k in 0..40u64 {
        toks.push(
            t.opened(
                (k + 1) * 16,
                P1,
                1,
                &w(&format!(r"\REGISTRY\MACHINE\SOFTWARE\K{k}")),
                1,
                k % 7,
            )
            .unwrap(),
        );
    }
    let other = t
        .opened(0x9990, P2, 1, &w(r"\REGISTRY\MACHINE\SOFTWARE\Other"), 1, 3)
        .unwrap();
    let mut buf = vec![0u8; 600];
    let n = t
        .holders(&w(SOFTWARE), &Cursor::START, 0, 0, &mut buf)
        .unwrap();
    let next = protocol::wire::decode::<protocol::page::Page<'_, Holders>>(&buf[..n])
        .unwrap()
        .info
        .next;
    let ids = |c: &Cursor| {
        let mut b = vec![0u8; 600];
        let n = t.holders(&w(SOFTWARE), c, 0, 0, &mut b).unwrap();
        let p = protocol::wire::decode::<protocol::page::Page<'_, Holders>>(&b[..n]).unwrap();
        p.records()
            .filter_map(|r| {
                if let HolderRecord::Key(k) = r {
                    Some(k.id)
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
    };
    let want = ids(&next);
    assert!(!want.is_empty());
    for hint in [
        0,
        1,
        u64::MAX,
        other.0,
        toks[39].0,
        toks[0].0,
        next.0[4] ^ (1 << 32),
        next.0[4] + 1,
    ] {
        let mut c = next;
        c.0[4] = hint;
        assert_eq!(ids(&c), want, "hint {hint:#x}");
    }
    // A destroyed hinted key falls back to the walk.
    let hinted = Token(next.0[4]);
    let obj = toks
        .iter()
        .position(|t| *t == hinted)
        .map(|i| (i as u64 + 1) * 16)
        .unwrap();
    t.object_destroyed(hinted, obj);
    assert_eq!(ids(&next), want);
}

#[test]
fn one_process_can_fill_the_whole_cap_across_shards() {
    // The 65,602-handle leak case: one process must not be limited to one shard's share.
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(
        &pool,
        Config {
            max_objects: 64,
            object_shards: 4,
            history_len: 1,
            ..Config::default()
        },
    )
    .unwrap();
    let name = w(r"\REGISTRY\MACHINE\SOFTWARE\Leak");
    let toks: Vec<_> = (0..64u64)
        .map(|i| t.opened((i + 1) * 16, P1, 1, &name, 1, i).unwrap())
        .collect();
    assert_eq!(
        t.opened(0x10_0000, P1, 1, &name, 1, 99),
        Err(NotTracked::Cap)
    );
    assert_eq!(t.stats().objects_tracked, 64);
    t.check_consistency().unwrap();
    for (i, tok) in toks.iter().enumerate() {
        t.object_destroyed(*tok, (i as u64 + 1) * 16);
    }
    assert_eq!(t.stats().objects_tracked, 0);
}

#[test]
fn a_process_leaking_65602_key_handles_is_found_by_snapshot_diff() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = tracker(&pool);
    let leaker = ProcessKey {
        pid: 4242,
        start_key: 77,
    };
    t.process_started(
        leaker,
        &w(r"\Device\HarddiskVolume3\Program Files\Vendor\agent.exe"),
    );
    let leak = w(r"\REGISTRY\MACHINE\SOFTWARE\Policies\Vendor\Agent");
    let other = w(r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Cryptography");
    let snapshot = |t: &TestTracker<'_>| {
        let mut rows = vec![];
        drain::<Snapshot>(
            64 * 1024,
            |c, b| t.snapshot(c, 0, 0, b),
            |p| {
                rows.extend(p.records().map(|r| protocol::diff::SnapshotRow::from(&r)));
            },
        );
        rows
    };
    for i in 0..1000u64 {
        t.opened(0x100_0000 + i * 16, leaker, 1, &leak, 0x2_0019, i)
            .unwrap();
        t.opened(0x900_0000 + i * 16, P1, 1, &other, 0x2_0019, i)
            .unwrap();
    }
    let before = snapshot(&t);
    for i in 1000..65_602u64 {
        t.opened(0x100_0000 + i * 16, leaker, 1, &leak, 0x2_0019, i)
            .unwrap();
    }
    let after = snapshot(&t);
    assert_eq!(after.len(), 65_602 + 1000);
    let d = protocol::diff::diff(&before, &after);
    assert_eq!(d.len(), 1, "only the leak changed");
    assert_eq!(
        (d[0].pid, d[0].start_key, d[0].before, d[0].after),
        (4242, 77, 1000, 65_602)
    );
    // The process with the most keys, as the CLI ranks the listing.
    let mut top = None;
    drain::<Processes>(
        4096,
        |c, b| t.processes(c, 0, b),
        |p| {
            for r in p.records() {
                if top
                    .as_ref()
                    .is_none_or(|t: &(u64, u64, String)| r.open_keys > t.1)
                {
                    top = Some((r.pid, r.open_keys, r.image.to_string()));
                }
            }
        },
    );
    assert_eq!(
        top,
        Some((
            4242,
            65_602,
            r"\Device\HarddiskVolume3\Program Files\Vendor\agent.exe".to_string()
        ))
    );
    assert_eq!(t.stats().not_recorded(), 0);
}

#[test]
fn an_open_finds_the_one_shard_with_room_whatever_the_shard_count() {
    // Issue 14: shards known full are skipped by a bit search, not one by one; the search
    // wraps round the ring (a process whose preferred shard is the last one included).
    for shards in [1u32, 2, 64] {
        let pool = CountingPool::new(Failure::Never, true);
        let cap = 2 * shards;
        let t: TestTracker<'_> = Tracker::new(
            &pool,
            Config {
                max_objects: cap,
                object_shards: shards,
                history_len: 1,
                ..Config::default()
            },
        )
        .unwrap();
        let name = w(r"\REGISTRY\MACHINE\SOFTWARE\Leak");
        let process = |i: u64| ProcessKey {
            pid: 4 * (i % 7 + 1),
            start_key: 1,
        };
        let object = |i: usize| (i as u64 + 1) * 16;
        let mut toks: Vec<_> = (0..cap as usize)
            .map(|i| t.opened(object(i), process(i as u64), 1, &name, 1, i as u64))
            .collect::<Result<_, _>>()
            .expect("the whole cap is usable");
        for k in 0..7u64 {
            assert_eq!(
                t.opened(0x10_0000 + k, process(k), 1, &name, 1, 99),
                Err(NotTracked::Cap),
                "{shards} shards"
            );
            // One slot given back somewhere: the next open, of any process, finds it.
            let victim = (k as usize * 5 + 3) % toks.len();
            t.object_destroyed(toks[victim], object(victim));
            toks[victim] = t
                .opened(object(victim), process(k), 1, &name, 1, 100)
                .expect("the freed slot is found");
            assert_eq!(t.stats().objects_tracked, u64::from(cap), "{shards} shards");
        }
        t.check_consistency().unwrap();
        for (i, tok) in toks.iter().enumerate() {
            t.object_destroyed(*tok, object(i));
        }
        assert_eq!(t.stats().objects_tracked, 0);
        assert_eq!(t.stats().destroys_unknown_object, 0);
    }
}
