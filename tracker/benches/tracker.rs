//! Criterion benchmarks of the tracker. They print figures; they assert nothing.
//!
//! `cargo bench -p hivetrack-tracker` runs: one open+close+destroy cycle on one thread and
//! on eight; bytes per tracked object; a full holders report of a hive with 100,000 open
//! keys across 100 processes; and cycles, queries and memory with 1,000,000 objects tracked.
//! The host lock is `parking_lot`'s (a CAS when uncontended, like a push lock), the pool is
//! the system allocator (a lookaside list is cheaper).
#![allow(
    missing_docs,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::missing_panics_doc,
    clippy::many_single_char_names,
    reason = "benchmark code"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::cursor::Cursor;
use protocol::request::QueryRequest;
use support::{ParkingLock, SysPool, w};
use tracker::{BlockClass, Config, ProcessKey, Tracker};

type T<'a> = Tracker<&'a SysPool, ParkingLock>;

const NAME: &str = r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion\Explorer";

fn new_tracker(pool: &SysPool, cap: u32) -> T<'_> {
    let t = Tracker::new(
        pool,
        Config {
            max_objects: cap,
            ..Config::default()
        },
    )
    .unwrap();
    t.hive_loaded(
        &w(r"\REGISTRY\MACHINE\SOFTWARE"),
        &w(r"\SystemRoot\System32\Config\SOFTWARE"),
        0,
    );
    t
}

/// One open, one handle close, one destroy. `anchor` keeps the name and the holding alive,
/// as the many long-lived keys of a real system do.
fn cycle(t: &T<'_>, object: u64, p: ProcessKey, name: &[u16], time: u64) {
    let tok = t.opened(object, p, 1, name, 0x2_0019, time).unwrap();
    t.handle_closed(tok, object);
    t.object_destroyed(tok, object);
}

fn bench_cycles(c: &mut Criterion) {
    let pool = SysPool::default();
    let t = new_tracker(&pool, 1 << 20);
    let name = w(NAME);
    let p = ProcessKey {
        pid: 1234,
        start_key: 1,
    };
    let _anchor = t.opened(0xFFFF_0000, p, 1, &name, 1, 0).unwrap();
    let mut g = c.benchmark_group("cycle");
    let mut i = 0u64;
    g.bench_function("open_close_destroy_1_thread", |b| {
        b.iter(|| {
            i += 1;
            cycle(&t, black_box(0x1_0000 + (i & 0xFFF) * 16), p, &name, i);
        });
    });
    // The same with the crate's spin lock (its release is a plain store, like a push lock's
    // fast path is a single interlocked operation).
    {
        let spool = SysPool::default();
        let st: Tracker<&SysPool, tracker::SpinLock> =
            Tracker::new(&spool, Config::default()).unwrap();
        let _anchor = st.opened(0xFFFF_0000, p, 1, &name, 1, 0).unwrap();
        let mut j = 0u64;
        g.bench_function("open_close_destroy_1_thread_spinlock", |b| {
            b.iter(|| {
                j += 1;
                let obj = black_box(0x1_0000 + (j & 0xFFF) * 16);
                let tok = st.opened(obj, p, 1, &name, 0x2_0019, j).unwrap();
                st.handle_closed(tok, obj);
                st.object_destroyed(tok, obj);
            });
        });
    }
    // Eight threads, each its own process, same hive and name; throughput per cycle.
    let names: Vec<Vec<u16>> = (0..8).map(|k| w(&format!(r"{NAME}\T{k}"))).collect();
    for (k, n) in names.iter().enumerate() {
        let _ = t.opened(
            0xFFFE_0000 + k as u64 * 16,
            ProcessKey {
                pid: 5000 + k as u64,
                start_key: 1,
            },
            1,
            n,
            1,
            0,
        );
    }
    for threads in [1usize, 2, 8] {
        g.bench_function(
            format!("open_close_destroy_{threads}_threads_aggregate"),
            |b| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    let barrier = Barrier::new(threads + 1);
                    let start = std::thread::scope(|s| {
                        for k in 0..threads {
                            let (t, names, barrier) = (&t, &names, &barrier);
                            s.spawn(move || {
                                let p = ProcessKey {
                                    pid: 5000 + k as u64,
                                    start_key: 1,
                                };
                                barrier.wait();
                                for j in 0..per {
                                    cycle(
                                        t,
                                        ((k as u64) << 32) + (j & 0xFFF) * 16 + 16,
                                        p,
                                        &names[k],
                                        j,
                                    );
                                }
                            });
                        }
                        barrier.wait();
                        Instant::now()
                    });
                    // Time per cycle of the whole machine: total / (threads * per) * threads…
                    // reported as wall time for `iters` cycles spread over the threads.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * threads as u64) as f64)
                });
            },
        );
    }
    g.finish();
}

#[allow(
    clippy::needless_pass_by_ref_mut,
    reason = "criterion's group signature"
)]
fn bytes_per_object(c: &mut Criterion) {
    let _ = c;
    for n in [100_000u64, 1_000_000] {
        let pool = SysPool::default();
        let t = new_tracker(&pool, 1 << 20);
        let name = w(NAME);
        let before = pool.outstanding_bytes();
        let names_before = name_bytes(&pool);
        for i in 0..n {
            t.opened(
                0x10_0000 + i * 16,
                ProcessKey {
                    pid: 4 + (i % 100) * 4,
                    start_key: 1,
                },
                1,
                &name,
                1,
                i,
            )
            .unwrap();
        }
        let grown = pool.outstanding_bytes() - before - (name_bytes(&pool) - names_before);
        println!(
            "figure: bytes per tracked object (names excluded, {n} objects, 100 processes): {:.1} (record {} B, slab chunks {} x 4 KiB)",
            grown as f64 / n as f64,
            std::mem::size_of::<tracker::objects::ObjRecord>(),
            pool.outstanding_of(BlockClass::B4096)
        );
    }
}

fn name_bytes(pool: &SysPool) -> u64 {
    // Every class but the slab's 4 KiB one holds names (and process/hive/holding records,
    // counted as per-object overhead here only through 4 KiB chunks and directories).
    [
        BlockClass::B64,
        BlockClass::B128,
        BlockClass::B256,
        BlockClass::B512,
        BlockClass::B1024,
        BlockClass::B2048,
    ]
    .iter()
    .map(|c| pool.outstanding_of(*c) * c.size() as u64)
    .sum()
}

/// Pages through a holders report. Only the page's fixed fields are read (the tracker's
/// cost is measured, not the client's decoding; the tests decode every page).
fn drain_holders(t: &T<'_>, mount: &[u16], flags: u16, buf: &mut [u8]) -> (u64, u64) {
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut cursor = Cursor::START;
    let (mut pages, mut records) = (0, 0);
    loop {
        let n = t.holders(mount, &cursor, flags, 0, buf).unwrap();
        let page = &buf[..n];
        pages += 1;
        records += u64::from(u32::from_le_bytes(page[56..60].try_into().unwrap()));
        if u16::from_le_bytes([page[60], page[61]]) & protocol::page::PageInfo::DONE != 0 {
            return (pages, records);
        }
        cursor = Cursor([
            word(page, 16),
            word(page, 24),
            word(page, 32),
            word(page, 40),
            word(page, 48),
        ]);
    }
}

fn bench_holders_100k(c: &mut Criterion) {
    let pool = SysPool::default();
    let t = new_tracker(&pool, 1 << 20);
    let mount = w(r"\REGISTRY\USER\S-1-5-21-1-1001");
    t.hive_loaded(&mount, &w(r"C:\Users\u\NTUSER.DAT"), 0);
    for p in 0..100u64 {
        t.process_started(
            ProcessKey {
                pid: 4 + p * 4,
                start_key: 1,
            },
            &w(&format!(r"\Device\HarddiskVolume3\p{p}.exe")),
        );
        for k in 0..1000u64 {
            let name = w(&format!(
                r"\REGISTRY\USER\S-1-5-21-1-1001\Software\App{}\Key{k}",
                p % 10
            ));
            t.opened(
                0x100_0000 + (p * 1000 + k) * 16,
                ProcessKey {
                    pid: 4 + p * 4,
                    start_key: 1,
                },
                1,
                &name,
                1,
                k,
            )
            .unwrap();
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let (pages, records) = drain_holders(&t, &mount, 0, &mut buf);
    println!(
        "figure: holders of a hive with 100,000 keys across 100 processes: {records} records in {pages} pages of 64 KiB"
    );
    let mut g = c.benchmark_group("holders_100k_keys_100_processes");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("full_report_64KiB_pages", |b| {
        b.iter(|| drain_holders(&t, &mount, 0, &mut buf));
    });
    g.bench_function("summary_only", |b| {
        b.iter(|| drain_holders(&t, &mount, QueryRequest::FLAG_SUMMARY_ONLY, &mut buf));
    });
    g.finish();
}

fn bench_million(c: &mut Criterion) {
    let pool = SysPool::default();
    let t = new_tracker(&pool, 1 << 20);
    let start = Instant::now();
    let names: Vec<Vec<u16>> = (0..1000).map(|i| w(&format!(r"{NAME}\K{i}"))).collect();
    let mut n = 0u64;
    for i in 0..1_000_000u64 {
        if t.opened(
            0x1_0000_0000 + i * 16,
            ProcessKey {
                pid: 4 + (i % 300) * 4,
                start_key: 1,
            },
            1,
            &names[(i % 1000) as usize],
            1,
            i,
        )
        .is_ok()
        {
            n += 1;
        }
    }
    let fill = start.elapsed();
    let s = t.stats();
    println!(
        "figure: 1,000,000 opens tracked {n} in {:.2} s ({:.0} ns/open while growing); pool {:.1} MiB; cap drops {}",
        fill.as_secs_f64(),
        fill.as_nanos() as f64 / 1e6,
        pool.outstanding_bytes() as f64 / f64::from(1u32 << 20),
        s.opens_dropped_cap
    );
    let name = w(NAME);
    let p = ProcessKey {
        pid: 9999,
        start_key: 1,
    };
    let _anchor = t.opened(0xFFFF_0000, p, 1, &name, 1, 0);
    let mut g = c.benchmark_group("at_1M_objects");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let mut i = 0u64;
    g.bench_function("open_close_destroy_1_thread", |b| {
        b.iter(|| {
            i += 1;
            let obj = 0x10_0000 + (i & 0xFFF) * 16;
            if let Ok(tok) = t.opened(obj, p, 1, &name, 1, i) {
                t.handle_closed(tok, obj);
                t.object_destroyed(tok, obj);
            }
        });
    });
    g.bench_function("stats", |b| b.iter(|| black_box(t.stats())));
    let mut buf = vec![0u8; 64 * 1024];
    g.bench_function("processes_first_page_64KiB", |b| {
        b.iter(|| t.processes(&Cursor::START, 0, &mut buf).unwrap());
    });
    g.bench_function("snapshot_first_page_64KiB", |b| {
        b.iter(|| t.snapshot(&Cursor::START, 0, 0, &mut buf).unwrap());
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_cycles,
    bytes_per_object,
    bench_holders_100k,
    bench_million
);
criterion_main!(benches);
