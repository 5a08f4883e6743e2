//! hivetrack.sys soak: registry operations on 8 emulated threads through the real driver at
//! 6% random failures of its fallible calls, with queries, process churn and a hive loaded
//! and unloaded in between, and keys deleted and renamed while held (the key cache's deleted
//! mark and its epochs under concurrency); it ends in the leak check and the exact
//! accounting "opens = tracked + destroyed + abandoned + counted drops".
//!
//! The size is `HIVETRACK_SOAK_OPS` (registry operations in all; default 40,000 in the
//! suite); `cargo xtask soak --ops N` sets it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use protocol::{cursor::Cursor, ioctl::query_ioctl, request::QueryKind};

use super::tracking::{
    APP1, CLASSES, Client, KEY_READ, SOFTWARE, SYSTEM_PID, USER, load_profile, start, unload_all,
};
use super::{Ctx, Scenario, Target};
use crate::nt::cm::hive;
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::status::{STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};
use crate::verifier::faults::FaultPolicy;

/// The hive loaded and unloaded during the soak.
const SPARE: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1002";
const SPARE_FILE: &str = r"\Device\HarddiskVolume2\Users\spare\NTUSER.DAT";
const THREADS: u64 = 8;
/// Operations when `HIVETRACK_SOAK_OPS` is not set.
const DEFAULT_OPS: u64 = 40_000;

/// The soak scenario.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "soak",
        Target::Hivetrack,
        "HIVETRACK_SOAK_OPS registry operations (default 40,000) on 8 threads at 6% random failures, with queries (holders too), process churn, hive load/unload and keys deleted and renamed while held: no bugcheck, no leak, opens = tracked + destroyed + abandoned + counted drops",
        soak,
    )]
}

fn ops_wanted() -> u64 {
    std::env::var("HIVETRACK_SOAK_OPS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_OPS)
}

/// Opens `path` as `pid`, counting a success in `opens`.
fn counted_open(pid: u32, path: &str, opens: &AtomicU64) -> Option<u64> {
    let h = hive::open_key(pid, path, KEY_READ, true).ok()?;
    opens.fetch_add(1, Relaxed);
    Some(h)
}

/// The hives `load_profile` loads (each load opens the hive list itself).
const PROFILE_LOADS: u64 = 2;

struct Totals {
    opens: AtomicU64,
    closes: AtomicU64,
    queries: AtomicU64,
    exits: AtomicU64,
    loads: AtomicU64,
    unloads: AtomicU64,
    /// Deletes and renames carried out.
    deletes: AtomicU64,
    renames: AtomicU64,
}

#[allow(
    clippy::too_many_lines,
    clippy::needless_collect,
    clippy::many_single_char_names,
    reason = "one soak, read top to bottom; every worker is spawned before any is joined; d, c, h, t as elsewhere"
)]
fn soak(ctx: &mut Ctx) {
    let ops = ops_wanted();
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let totals = Arc::new(Totals {
        // Opens the driver saw before the soak: DriverEntry's own ZwOpenKey of the hive list
        // would be one, but the driver makes it before its callback registers (0); and the
        // kernel's own ZwCreateKey of the hive list in each of the profile's two loads
        // (Windows Research Kernel `cmapi.c` CmLoadKey -> `cmhvlist.c` CmpAddToHiveFileList).
        opens: AtomicU64::new(kernel::with(|k| k.zwreg.announced_opens) + PROFILE_LOADS),
        closes: AtomicU64::new(0),
        queries: AtomicU64::new(0),
        exits: AtomicU64::new(0),
        loads: AtomicU64::new(0),
        unloads: AtomicU64::new(0),
        deletes: AtomicU64::new(0),
        renames: AtomicU64::new(0),
    });
    let hives = [USER, CLASSES, SOFTWARE, SPARE];
    // The parents every worker opens below, made before the faults start.
    for h in [USER, CLASSES, SOFTWARE] {
        if let Some(k) = counted_open(SYSTEM_PID, &format!(r"{h}\Soak"), &totals.opens) {
            let _ = hive::close_key(SYSTEM_PID, k);
            totals.closes.fetch_add(1, Relaxed);
        }
    }
    // Under Driver Verifier lookasides keep nothing (`lookaside::force_depth_zero`).
    let _ = crate::nt::ex::lookaside::force_depth_zero();
    kernel::with(|k| {
        k.faults.calls = 0;
        k.faults.injected.clear();
        k.faults.policy = FaultPolicy::Random {
            per_mille: 60,
            seed: 0x9E37_79B9_7F4A_7C15,
        };
    });
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread = ops.div_ceil(THREADS);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let totals = Arc::clone(&totals);
            let h = c.h;
            std::thread::spawn(move || {
                crate::machine::cpu::enter_thread(40 + u32::try_from(t).unwrap_or(0));
                let mut rnd = super::wait_free::xorshift(
                    0x2545_F491_4F6C_DD1D_u64 ^ (t + 1).wrapping_mul(0x9E37_79B9),
                );
                let mut pid = process::create_process(SYSTEM_PID, APP1, false).unwrap_or(0);
                let mut handles: Vec<u64> = Vec::new();
                for _ in 0..per_thread {
                    let r = rnd() % 1000;
                    if r < 560 || handles.is_empty() {
                        let hive_path = hives[(rnd() % 4) as usize];
                        let path = format!(r"{hive_path}\Soak\T{t}K{}", rnd() % 200);
                        if let Some(k) = counted_open(pid, &path, &totals.opens) {
                            if hive_path == SPARE {
                                // Short-lived, so the spare hive is often free to unload.
                                let _ = hive::close_key(pid, k);
                                totals.closes.fetch_add(1, Relaxed);
                            } else {
                                handles.push(k);
                            }
                        }
                    } else if r < 940 {
                        let i = (rnd() as usize) % handles.len();
                        let k = handles.swap_remove(i);
                        let _ = hive::close_key(pid, k);
                        totals.closes.fetch_add(1, Relaxed);
                    } else if r < 955 {
                        // Deleted while held: the handle stays open, its object now of a
                        // deleted key (a later open of the name makes a new key).
                        let k = handles[(rnd() as usize) % handles.len()];
                        if hive::delete_key(pid, k) == STATUS_SUCCESS {
                            totals.deletes.fetch_add(1, Relaxed);
                        }
                    } else if r < 965 {
                        let k = handles[(rnd() as usize) % handles.len()];
                        let name = format!("T{t}R{}", rnd() % 200);
                        if hive::rename_key(pid, k, &name) == STATUS_SUCCESS {
                            totals.renames.fetch_add(1, Relaxed);
                        }
                    } else if r < 990 {
                        let kind = [
                            QueryKind::Processes,
                            QueryKind::Hives,
                            QueryKind::Stats,
                            QueryKind::Holders,
                        ][(rnd() % 4) as usize];
                        let hive: Vec<u16> = if kind == QueryKind::Holders {
                            USER.encode_utf16().collect()
                        } else {
                            Vec::new()
                        };
                        let input = Client::request(kind, &hive, Cursor::START);
                        let _ =
                            io::device_io_control(h, query_ioctl(kind), &input, 16 * 1024, 0xA5);
                        totals.queries.fetch_add(1, Relaxed);
                    } else {
                        // Churn: the process exits with whatever it holds; a new one starts.
                        process::exit_process(pid);
                        handles.clear();
                        totals.exits.fetch_add(1, Relaxed);
                        pid = process::create_process(SYSTEM_PID, APP1, false).unwrap_or(0);
                    }
                }
                pid
            })
        })
        .collect();
    let loader = {
        let totals = Arc::clone(&totals);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            crate::machine::cpu::enter_thread(60);
            while !stop.load(Relaxed) {
                // Only this thread loads and unloads the spare hive: still mounted (its last
                // unload refused), the load is a reload of the same file, which succeeds and
                // mounts nothing (WRK `cmapi.c` CmpIsHiveAlreadyLoaded).
                let mounted = crate::nt::cm::zwreg::hive_list()
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(SPARE));
                if hive::load_hive(SYSTEM_PID, SPARE, SPARE_FILE) == STATUS_SUCCESS {
                    totals.loads.fetch_add(1, Relaxed);
                    if !mounted {
                        // The load's own ZwCreateKey of the hive list (WRK
                        // CmpAddToHiveFileList).
                        totals.opens.fetch_add(1, Relaxed);
                    }
                    if let Some(k) =
                        counted_open(SYSTEM_PID, &format!(r"{SPARE}\Soak"), &totals.opens)
                    {
                        let _ = hive::close_key(SYSTEM_PID, k);
                        totals.closes.fetch_add(1, Relaxed);
                    }
                }
                std::thread::yield_now();
                let unloaded = hive::unload_hive(SYSTEM_PID, SPARE);
                if unloaded != STATUS_OBJECT_NAME_NOT_FOUND {
                    // The unload opened the hive's root itself (td-unload-sequence).
                    totals.opens.fetch_add(1, Relaxed);
                }
                if unloaded == STATUS_SUCCESS {
                    totals.unloads.fetch_add(1, Relaxed);
                    // The unload's own ZwOpenKey of the hive list (WRK
                    // CmpRemoveFromHiveFileList).
                    totals.opens.fetch_add(1, Relaxed);
                }
                std::thread::yield_now();
            }
        })
    };
    let pids: Vec<u32> = workers.into_iter().map(|w| w.join().unwrap_or(0)).collect();
    stop.store(true, Relaxed);
    let _ = loader.join();
    let injected = kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        (k.faults.calls, k.faults.injected.len())
    });
    let elapsed = started.elapsed();
    for pid in pids {
        process::exit_process(pid);
    }
    let s = c.stats(ctx);
    let t = &totals;
    let opens = t.opens.load(Relaxed);
    println!(
        "  soak: {ops} operations on {THREADS} threads in {:.1} s: {opens} opens, {} closes, {} deletes, {} renames, {} queries, {} process exits, {} hive loads / {} unloads; {} fallible calls, {} failures injected",
        elapsed.as_secs_f64(),
        t.closes.load(Relaxed),
        t.deletes.load(Relaxed),
        t.renames.load(Relaxed),
        t.queries.load(Relaxed),
        t.exits.load(Relaxed),
        t.loads.load(Relaxed),
        t.unloads.load(Relaxed),
        injected.0,
        injected.1,
    );
    let drops = s.opens_dropped_cap
        + s.opens_dropped_no_memory_object
        + s.opens_dropped_no_memory_process
        + s.opens_dropped_no_memory_hive
        + s.opens_dropped_no_memory_holding
        + s.opens_dropped_process_share;
    println!(
        "  accounting: opens seen {}, tracked {}, destroyed {}, abandoned {}, dropped {drops}; {} not recorded",
        s.opens_seen,
        s.objects_tracked,
        s.destroys_seen,
        s.objects_abandoned,
        s.not_recorded()
    );
    ctx.check(injected.1 > 0, "failures were injected");
    ctx.check(
        t.deletes.load(Relaxed) > 0 && t.renames.load(Relaxed) > 0,
        "keys were deleted and renamed while held",
    );
    ctx.check(
        s.opens_seen + s.opens_dropped_no_name == opens,
        format!(
            "the driver saw every open of the registry: {} tracked or dropped by the tracker + {} the kernel would not name vs {opens}",
            s.opens_seen, s.opens_dropped_no_name
        ),
    );
    ctx.check(
        s.opens_seen == s.objects_tracked + s.destroys_seen + s.objects_abandoned + drops,
        "opens = tracked + destroyed + abandoned + counted drops",
    );
    ctx.check(
        s.objects_tracked == 0,
        format!(
            "after every process exits nothing is tracked ({})",
            s.objects_tracked
        ),
    );
    let _ = hive::unload_hive(SYSTEM_PID, SPARE);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}
