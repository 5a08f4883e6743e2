//! hivetrack.sys scenarios at scale (issue 14): reports over many processes page through
//! every one of them exactly once, in the order each report promises.

use std::collections::BTreeMap;

use super::tracking::{
    CLASSES, Client, KEY_READ, USER, ensure_parents, load_profile, spawn, start, unload_all,
};
use super::{Ctx, Scenario};
use crate::nt::cm::hive;
use crate::nt::kernel;
use crate::nt::ps::process;

/// Processes in `many-processes`.
const PROCESSES: u32 = 10_000;

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::hivetrack(
        "many-processes",
        "10,000 processes hold 1-3 keys each in the profile hive: holders, processes and the snapshot page through all of them, each process once with its own keys, processes ranked by open keys; once they exit nobody holds the hive",
        many_processes,
    )]
}

/// How many keys process number `i` holds.
const fn keys_of(i: u32) -> u32 {
    i % 3 + 1
}

fn many_processes(ctx: &mut Ctx) {
    // Special pool maps every allocation apart (with guard pages); 10,000 processes, each
    // with its records and the modules its image loads reported, pass the kernel's mapping
    // limit (vm.max_map_count). Overruns are what the other scenarios catch; this one is
    // about scale, on the ordinary heap.
    kernel::with(|k| k.pool.special = false);
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let base = format!(r"{USER}\Software\Many");
    let first = spawn(ctx, r"\Device\HarddiskVolume2\Windows\explorer.exe");
    ensure_parents(first, &format!(r"{base}\K0\x"));
    // pid -> keys it holds.
    let mut expected: BTreeMap<u64, u32> = BTreeMap::new();
    let mut pids = Vec::new();
    for i in 0..PROCESSES {
        let pid = if i == 0 {
            first
        } else {
            spawn(
                ctx,
                &format!(r"\Device\HarddiskVolume2\Apps\app{}.exe", i % 100),
            )
        };
        for k in 0..keys_of(i) {
            let path = format!(r"{base}\K{k}");
            if hive::open_key(pid, &path, KEY_READ, true).is_err() {
                ctx.check(false, format!("process {pid} opens {path}"));
            }
        }
        expected.insert(u64::from(pid), keys_of(i));
        pids.push(pid);
    }
    let total: u64 = expected.values().map(|&k| u64::from(k)).sum();

    let holders = c.holders(ctx, USER);
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut twice = 0;
    let mut wrong_keys = 0;
    for h in &holders {
        if seen.insert(h.pid, 1).is_some() {
            twice += 1;
        }
        let keys_ok = u32::try_from(h.keys.len()).ok() == expected.get(&h.pid).copied()
            && h.open_keys == h.keys.len() as u64;
        wrong_keys += usize::from(!keys_ok);
    }
    ctx.check(
        holders.len() == expected.len() && twice == 0 && wrong_keys == 0,
        format!(
            "holders: {} processes (expected {}), {twice} listed twice, {wrong_keys} with the wrong keys",
            holders.len(),
            expected.len()
        ),
    );

    let listed_all = c.processes(ctx);
    let listed: BTreeMap<u64, u64> = listed_all.iter().map(|p| (p.0, p.1)).collect();
    let all_there = expected
        .iter()
        .all(|(pid, k)| listed.get(pid) == Some(&u64::from(*k)));
    ctx.check(
        listed_all.len() == listed.len() && all_there,
        format!(
            "processes: {} listed, each once: {}, with its open keys: {all_there}",
            listed_all.len(),
            listed_all.len() == listed.len()
        ),
    );

    let rows = c.snapshot(ctx);
    let mut per_pid: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &rows {
        *per_pid.entry(r.pid).or_default() += 1;
    }
    ctx.check(
        rows.len() as u64 == total && per_pid == expected,
        format!(
            "snapshot: {} keys of {} processes (expected {total} of {})",
            rows.len(),
            per_pid.len(),
            expected.len()
        ),
    );

    for pid in pids {
        process::exit_process(pid);
    }
    let left = c.holders(ctx, USER);
    ctx.check(
        left.is_empty(),
        format!("all exited: nobody holds the hive ({} holders)", left.len()),
    );
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}
