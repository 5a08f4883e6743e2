//! The memory budget: every block is charged, one process cannot take more than its share,
//! and what the default budget holds (figures printed; run with `--nocapture` to see them).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "test code: small sizes, figures"
)]

mod support;

use protocol::holders::HiveKind;
use support::{SysPool, w};
use tracker::modules::MODULE_COST;
use tracker::objects::RECORD_COST;
use tracker::processes::PROCESS_COST;
use tracker::{
    Config, DEFAULT_BUDGET_BYTES, NotTracked, ProcessKey, Tracker, budget::pool_cost,
    holding_charge, names::MAX_NAME_UNITS,
};

type T<'a> = Tracker<&'a SysPool, support::ParkingLock>;

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";

fn tracker(pool: &SysPool, config: Config) -> T<'_> {
    let t = Tracker::new(pool, config).unwrap();
    t.hive_loaded(
        &w(USER),
        &w(r"\Device\HarddiskVolume2\Users\u\NTUSER.DAT"),
        0,
    );
    t
}

const fn proc(pid: u64) -> ProcessKey {
    ProcessKey {
        pid,
        start_key: pid * 7,
    }
}

/// A distinct name of `units` units under the profile hive.
fn long_name(i: u64, units: usize) -> Vec<u16> {
    let mut s = format!(r"{USER}\Software\Flood\{i:08}\");
    while s.len() < units {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s.truncate(units);
    w(&s)
}

#[test]
fn a_process_flooding_long_distinct_names_is_dropped_at_its_share_and_named() {
    let pool = SysPool::default();
    let config = Config::default().with_budget(8 << 20);
    let t = tracker(&pool, config);
    let flooder = proc(0x1234);
    let mut tracked = 0u64;
    let mut refused = 0u64;
    for i in 0..4_000u64 {
        match t.opened(i + 1, flooder, 1, &long_name(i, MAX_NAME_UNITS), 1, i) {
            Ok(_) => tracked += 1,
            Err(NotTracked::Share) => refused += 1,
            Err(e) => panic!("open {i}: {e:?}"),
        }
    }
    let s = t.stats();
    println!(
        "flood: {tracked} tracked, {refused} dropped; budget used {} of {} (share {})",
        s.budget_used_bytes, s.budget_bytes, s.process_share_bytes
    );
    assert!(refused > 0 && tracked > 0);
    // Each tracked open cost its record and its name (a page): the share holds about
    // share / (page + record) of them.
    // Its own record is charged to it too.
    let each = pool_cost(MAX_NAME_UNITS * 2 + 24) + RECORD_COST;
    assert_eq!(tracked, (s.process_share_bytes - PROCESS_COST) / each);
    assert_eq!(s.opens_dropped_process_share, refused);
    assert_eq!(s.top_dropper_pid, flooder.pid);
    assert_eq!(s.top_dropper_start_key, flooder.start_key);
    assert_eq!(s.top_dropper_drops, refused);
    assert!(s.budget_used_bytes <= s.budget_bytes);
    // Everyone else keeps being tracked: 2,000 keys of two other processes.
    for i in 0..2_000u64 {
        let p = proc(100 + i % 2);
        let name = w(&format!(r"{USER}\Software\App{}\Key{}", i % 2, i % 50));
        t.opened(1_000_000 + i, p, 1, &name, 1, i).unwrap();
    }
    assert_eq!(t.stats().opens_dropped_process_share, refused);
}

/// Audit 21b F4: any user can load application hives (`RegLoadAppKey`), and one it keeps
/// a key open in stays recorded with its file name (up to a 4 KiB block). Charged to
/// nobody, 1,790 of them took the whole 8 MiB budget while their process was charged 175 KB
/// of its 2 MiB share, and every other process's opens were dropped. Now each holding of an
/// app hive is charged the hive's record and names: the loader is stopped at its share,
/// named as the top dropper, and another process's open is tracked. On the old code this
/// fails at the other process's open (`NoMemory`).
#[test]
fn app_hives_of_one_process_are_charged_to_it_and_leave_room_for_others() {
    let pool = SysPool::default();
    let t = tracker(&pool, Config::default().with_budget(8 << 20));
    let loader = proc(0x51);
    let deep = "d".repeat(2_000);
    let (mut kept, mut refused) = (0u64, 0u64);
    let mut keys = Vec::new();
    for i in 0..4_000u64 {
        let mount = format!(r"\REGISTRY\A\{{{i:08X}-0000-0000-0000-000000000000}}");
        let file = format!(r"\??\C:\Users\u\{deep}\h{i}.dat");
        t.hive_loaded(&w(&mount), &w(&file), 1);
        match t.opened(10 + i, loader, 1, &w(&mount), 1, 2) {
            Ok(token) => {
                kept += 1;
                keys.push((token, 10 + i));
            }
            Err(NotTracked::Share) => refused += 1,
            Err(e) => panic!("app hive {i}: {e:?}"),
        }
    }
    let s = t.stats();
    println!(
        "app hives: {kept} kept, {refused} refused; budget used {} of {}; share {}",
        s.budget_used_bytes, s.budget_bytes, s.process_share_bytes
    );
    let each = holding_charge(HiveKind::App) + RECORD_COST;
    assert_eq!(
        kept,
        (s.process_share_bytes - PROCESS_COST) / each,
        "charged per app hive held"
    );
    assert_eq!(s.opens_dropped_process_share, refused);
    assert_eq!(
        (
            s.top_dropper_pid,
            s.top_dropper_start_key,
            s.top_dropper_drops
        ),
        (loader.pid, loader.start_key, refused),
        "the loader is named"
    );
    let other = proc(0x204);
    let r = t.opened(1, other, 1, &w(&format!(r"{USER}\Software\Other")), 1, 3);
    assert!(r.is_ok(), "another process's open was dropped: {r:?}");
    // Closing the app hives gives their charge back: the loader can hold as many again.
    for (token, object) in keys {
        t.object_destroyed(token, object);
    }
    let mount = w(r"\REGISTRY\A\{FFFFFFFF-0000-0000-0000-000000000000}");
    t.hive_loaded(&mount, &w(r"\??\C:\h.dat"), 1);
    assert!(
        t.opened(5, loader, 1, &mount, 1, 4).is_ok(),
        "charge given back"
    );
}

/// Audit 21b F4 (the rest): a process's record, image name and module list. A process that
/// exits while objects it opened live on (handles duplicated into another process) kept them
/// charged to a share nobody could exceed again, a new process having a share of its own: a
/// dozen processes each loading 400 images with long distinct paths, opening a key and
/// exiting took the whole 8 MiB budget, and another process's open was dropped (`NoMemory`
/// on the old code). Now exited processes' leftovers share one process share: past it their
/// modules are freed at exit, counted in `modules_dropped`, and their module lists say
/// lost from the start.
#[test]
fn exited_processes_leftovers_are_bounded_by_one_share() {
    let pool = SysPool::default();
    let t = tracker(&pool, Config::default().with_budget(8 << 20));
    let deep = "m".repeat(2_000);
    let loads = 400u64;
    let mut images = 0u64;
    for p in 0..12u64 {
        let exiting = proc(0x1000 + p);
        t.process_started(exiting, &w(&format!(r"\Device\HarddiskVolume2\p{p}.exe")));
        for m in 0..loads {
            let path = format!(r"\Device\HarddiskVolume2\{deep}\p{p}\m{m}.dll");
            t.image_loaded(exiting, 0x1_0000 * (m + 1), 0x1000, &w(&path), 1);
        }
        images += t.stats().modules_tracked;
        // Its key outlives it (a handle duplicated into another process).
        let r = t.opened(
            0x10_0000 + p,
            exiting,
            1,
            &w(&format!(r"{USER}\Software\X{p}")),
            1,
            2,
        );
        assert!(r.is_ok(), "process {p}'s open: {r:?}");
        t.process_exited(exiting);
        assert_eq!(t.stats().processes_tracked, p + 1, "kept: it holds a key");
    }
    let s = t.stats();
    println!(
        "exited leftovers: {} B (share {}); modules kept {} dropped {}; budget used {} of {}",
        t.leftovers(),
        s.process_share_bytes,
        s.modules_tracked,
        s.modules_dropped,
        s.budget_used_bytes,
        s.budget_bytes
    );
    assert!(images >= loads, "the first process's images were kept");
    let other = proc(0x204);
    let r = t.opened(1, other, 1, &w(&format!(r"{USER}\Software\Other")), 1, 3);
    assert!(r.is_ok(), "another process's open was dropped: {r:?}");
    // One process's modules fit the pool; the others' were freed at exit and counted.
    assert_eq!(s.modules_tracked, loads);
    assert_eq!(s.modules_dropped, 11 * loads);
    // The pool: one share, and the records and (short) images of the others past it.
    assert!(t.leftovers() <= s.process_share_bytes + 11 * (PROCESS_COST + 64));
    assert!(t.leftovers() >= loads * MODULE_COST);
    assert_eq!(t.stats().exited_leftover_bytes, t.leftovers());
    // An exit told again moves nothing again.
    let before = t.leftovers();
    t.process_exited(proc(0x1000));
    t.process_exited(proc(0x1001));
    assert_eq!(t.leftovers(), before);
    assert_eq!(t.stats().modules_dropped, 11 * loads);
}

#[test]
fn the_global_budget_bounds_every_block_and_counts_refusals() {
    let pool = SysPool::default();
    let config = Config::default().with_budget(1 << 20);
    let t = tracker(&pool, config);
    let mut dropped = 0u64;
    // Many processes, each well within its share, together past the budget.
    for i in 0..20_000u64 {
        let name = w(&format!(r"{USER}\Software\Many\{i}"));
        if t.opened(i + 1, proc(1_000 + i / 100), 1, &name, 1, i)
            .is_err()
        {
            dropped += 1;
        }
        assert!(t.stats().budget_used_bytes <= 1 << 20);
    }
    let s = t.stats();
    assert!(dropped > 0 && s.allocations_refused_budget > 0);
    assert!(s.not_recorded() >= dropped);
    assert!(s.budget_peak_bytes <= s.budget_bytes);
}

/// Names like a real workload's: user-hive paths of 60-120 characters, each repeated.
fn real_name(i: u64) -> Vec<u16> {
    const PARTS: [&str; 8] = [
        r"Software\Microsoft\Windows\CurrentVersion\Explorer",
        r"Software\Microsoft\Office\16.0\Common\General",
        r"Software\Classes\Local Settings\Software\Microsoft",
        r"Software\Microsoft\Windows NT\CurrentVersion\Winlogon",
        r"Control Panel\Desktop",
        r"Software\Policies\Microsoft\Windows\System",
        r"Software\Microsoft\Internet Explorer\Main",
        r"Environment",
    ];
    let s = format!(r"{USER}\{}\K{}", PARTS[(i % 8) as usize], i % 5_000);
    w(&s)
}

#[test]
fn the_default_budget_holds_a_million_objects_with_real_names() {
    const OBJECTS: u64 = 1_000_000;
    let pool = SysPool::default();
    let t = tracker(&pool, Config::default());
    let mut lens = (usize::MAX, 0);
    for i in 0..OBJECTS {
        let name = real_name(i);
        lens = (lens.0.min(name.len()), lens.1.max(name.len()));
        t.opened(i + 1, proc(8 + i % 200), 1, &name, 1, i).unwrap();
    }
    let s = t.stats();
    println!(
        "real names ({}..{} units, {} distinct): {} objects in {:.1} MiB of the {} MiB budget",
        lens.0,
        lens.1,
        s.names_interned,
        s.objects_tracked,
        s.budget_used_bytes as f64 / 1_048_576.0,
        DEFAULT_BUDGET_BYTES >> 20
    );
    assert!(lens.0 >= 60 && lens.1 <= 120, "{lens:?}");
    assert_eq!(s.objects_tracked, OBJECTS);
    assert_eq!(s.not_recorded(), 0);
    // Holds them with room to spare, not by a hair (review 19c, A1: 95 of 96 MiB once the
    // records grew to 96 bytes).
    assert!(
        s.budget_used_bytes + (8 << 20) <= DEFAULT_BUDGET_BYTES,
        "{} MiB used of {} MiB",
        s.budget_used_bytes >> 20,
        DEFAULT_BUDGET_BYTES >> 20
    );
}

/// Fills the default budget with distinct names of `units` units (spread over processes so
/// no share is reached first) and returns how many objects it held with their names (the
/// first refusal is a record or a name; both are counted losses).
fn distinct_capacity(units: usize) -> (u64, u64) {
    let pool = SysPool::default();
    let t = tracker(&pool, Config::default());
    let mut i = 0u64;
    while t
        .opened(i + 1, proc(8 + i % 64), 1, &long_name(i, units), 1, i)
        .is_ok()
        && (t.budget().used() + 8192 < t.budget().limit() || t.stats().names_dropped_no_memory == 0)
    {
        i += 1;
    }
    let s = t.stats();
    assert_eq!(s.not_recorded(), 1, "the first refusal ends the fill");
    assert!(s.budget_used_bytes <= s.budget_bytes);
    (i, s.budget_used_bytes)
}

#[test]
fn what_the_default_budget_holds_when_every_name_is_distinct() {
    for units in [100, 255, MAX_NAME_UNITS] {
        let (held, used) = distinct_capacity(units);
        // Each object costs its record (its share of a chunk) and its name's pool block; the
        // budget's fixed part (directories, buckets) is small: at least 95% of the ideal.
        let each = pool_cost(units * 2 + 24) as f64 + RECORD_COST as f64;
        println!(
            "distinct names of {units} units: {held} objects ({each:.0} bytes each, {:.1} MiB used)",
            used as f64 / 1_048_576.0
        );
        let ideal = DEFAULT_BUDGET_BYTES as f64 / each;
        assert!(
            (held as f64) <= ideal && held as f64 >= ideal * 0.95,
            "{held} vs {ideal:.0}"
        );
    }
}

/// Audit 21b F4: an application hive's file name was stored whole (up to 2,036 units, a
/// 4 KiB block) for any user's `RegLoadAppKey`. Now its first 512 units are kept and the
/// hive is reported with `FILE_TRUNCATED` in the hives page and the holders prefix; a
/// regular hive's short name is whole and unflagged. On the old code the app hive's file
/// came back with all its 2,020 units (and no flag existed).
#[test]
fn an_app_hives_file_name_is_capped_and_said_cut() {
    use protocol::cursor::Cursor;
    use protocol::hives::{HiveRecord, Hives};
    use protocol::holders::{Holders, HoldersPrefix};
    use protocol::page::Page;
    use tracker::hives::MAX_APP_FILE_UNITS;

    let pool = SysPool::default();
    let t = tracker(&pool, Config::default());
    let mount = w(r"\REGISTRY\A\{00000001-0000-0000-0000-000000000000}");
    let file = w(&format!(r"\??\C:\Users\u\{}\h.dat", "d".repeat(2_000)));
    t.hive_loaded(&mount, &file, 1);
    let token = t.opened(1, proc(9), 1, &mount, 1, 2).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let n = t.hives(&Cursor::START, 0, &mut buf).unwrap();
    let page = protocol::wire::decode::<Page<'_, Hives>>(&buf[..n]).unwrap();
    let recs: Vec<_> = page.records().collect();
    let app = recs.iter().find(|r| r.kind == HiveKind::App).unwrap();
    let units: Vec<u16> = app.file.units().collect();
    assert_eq!(units.len(), MAX_APP_FILE_UNITS, "stored cut");
    assert_eq!(units[..], file[..MAX_APP_FILE_UNITS]);
    assert_eq!(app.flags, HiveRecord::FILE_TRUNCATED, "said cut");
    let user = recs.iter().find(|r| r.kind == HiveKind::Regular).unwrap();
    assert_eq!(user.flags, 0, "a whole name is not flagged");
    let n = t.holders(&mount, &Cursor::START, 0, 0, &mut buf).unwrap();
    let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..n]).unwrap();
    assert_eq!(page.prefix.flags, HoldersPrefix::FILE_TRUNCATED);
    assert_eq!(page.prefix.file.units().count(), MAX_APP_FILE_UNITS);
    t.object_destroyed(token, 1);
}

/// Audit 21b F4: opens refused because the budget was spent named no process (`top_dropper`
/// names share refusals only). Many processes, each within its share, fill a 1 MiB budget;
/// the one refused most is named in `top_refused_*` with its count. On the old code (no
/// such naming: mutant, `note_refused` doing nothing) the pid stays 0.
#[test]
fn the_process_refused_by_the_budget_is_named() {
    let pool = SysPool::default();
    let t = tracker(&pool, Config::default().with_budget(1 << 20));
    let victim = proc(0x777);
    let mut refused = 0u64;
    for i in 0..20_000u64 {
        // Fillers: a new process every 100 opens, each well within its share.
        let _ = t.opened(i + 1, proc(1_000 + i / 100), 1, &long_name(i, 200), 1, i);
        if i % 10 == 0 {
            let name = w(&format!(r"{USER}\Software\Victim\{i}"));
            if t.opened(1_000_000 + i, victim, 1, &name, 1, i) == Err(NotTracked::NoMemory) {
                refused += 1;
            }
        }
    }
    let s = t.stats();
    println!(
        "budget refusals: victim refused {refused}; named pid {:#x} with {}",
        s.top_refused_pid, s.top_refused_drops
    );
    assert!(s.allocations_refused_budget > 0 && refused > 0);
    assert_eq!(s.top_dropper_drops, 0, "no share refusal");
    assert_eq!(
        (
            s.top_refused_pid,
            s.top_refused_start_key,
            s.top_refused_drops
        ),
        (victim.pid, victim.start_key, refused),
        "the process refused most by the budget is named"
    );
}
