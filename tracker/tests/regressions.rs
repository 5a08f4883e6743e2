//! Findings of the independent review of issues 16 and 17, each a test that failed before
//! its fix (stack ids reused across a table restart, alarms flooding the stream, image loads
//! leaving process records, cursors from a previous driver run, the image scope missing a
//! process that ran before the driver).
#![allow(clippy::cast_possible_truncation, reason = "test code")]

mod support;

use protocol::capture::{CaptureOp, CaptureRequest, CaptureScope};
use protocol::events::{Events, EventsRequest};
use protocol::history::UnloadHistory;
use protocol::holders::{HolderRecord, Holders};
use protocol::page::Page;
use protocol::text::Text;
use protocol::wire::{decode, encode};
use support::*;
use tracker::{Config, ProcessKey, Token, Tracker};

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-1001";
const P: ProcessKey = ProcessKey {
    pid: 0x40,
    start_key: 1,
};

fn base(pool: &CountingPool, cfg: Config) -> TestTracker<'_> {
    let t = Tracker::new(pool, cfg).unwrap();
    t.tracking_started(7);
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 1);
    t.process_started(P, &w(r"\Device\HarddiskVolume3\Windows\explorer.exe"));
    t
}

fn set(t: &TestTracker<'_>, scope: CaptureScope) {
    let req = CaptureRequest {
        op: CaptureOp::Set,
        scope,
        text: Text::EMPTY,
    };
    let mut input = [0u8; 256];
    let n = encode(&req, &mut input).unwrap();
    let mut out = [0u8; 256];
    t.answer_capture(&input[..n], &mut out, 42).unwrap();
}

fn open(t: &TestTracker<'_>, object: u64, name: &str, frames: &[u64]) -> Token {
    let token = t.opened(object, P, 7, &w(name), 0x2_0019, 10).unwrap();
    if t.capture_wanted(token) {
        t.stack_captured(token, object, frames, false);
    }
    token
}

fn stack_of(t: &TestTracker<'_>, name: &str) -> u32 {
    let mut id = None;
    drain::<Holders>(
        4096,
        |c, b| t.holders(&w(USER), c, 0, 0, b),
        |p| {
            for r in p.records() {
                if let HolderRecord::Key(k) = r
                    && fold_text(&k.name) == fold(&w(name))
                {
                    id = Some(k.stack);
                }
            }
        },
    );
    id.unwrap()
}

/// Finding: a stack id names another stack after the table was given back and started
/// again (every new chunk's slots start at generation 1), so a client that read a key's id
/// before and the stacks page after shows the key with another key's stack.
#[test]
fn stack_id_is_not_reused_after_the_table_restarts() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = base(&pool, Config::default());
    set(&t, CaptureScope::All);
    let k1 = format!(r"{USER}\Software\A");
    let tok = open(&t, 0x1000, &k1, &[0x7FF8_0000_1000, 0x7FF8_0000_2000]);
    let id1 = stack_of(&t, &k1);
    assert_ne!(id1, 0);
    set(&t, CaptureScope::Off);
    t.object_destroyed(tok, 0x1000); // last stack, capture off: the table is given back
    set(&t, CaptureScope::All);
    let k2 = format!(r"{USER}\Software\B");
    open(&t, 0x2000, &k2, &[0x7FF9_0000_9000]);
    let id2 = stack_of(&t, &k2);
    assert_ne!(
        id1, id2,
        "a different stack got the id a client may still hold for the old key"
    );
}

/// Finding: the alarm is raised each time the count equals threshold * 2^k, so a process
/// that hovers at the threshold (close one, open one) raises one alarm per open and the
/// alarms evict every unload attempt from the shared ring (the unload history empties).
#[test]
fn a_process_hovering_at_the_threshold_does_not_flood_the_stream() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = base(
        &pool,
        Config {
            history_len: 8,
            key_alarm_threshold: 4,
            ..Config::default()
        },
    );
    let mut tokens = Vec::new();
    for i in 0..4u64 {
        tokens.push(open(&t, 0x1000 + i, &format!(r"{USER}\K{i}"), &[]));
    }
    t.unload_attempted(&w(USER), 0xC000_0121, 20);
    for i in 4..24u64 {
        let last = tokens.pop().unwrap();
        t.object_destroyed(last, 0x1000 + i - 1);
        tokens.push(open(&t, 0x1000 + i, &format!(r"{USER}\K{i}"), &[]));
    }
    let mut unloads = 0;
    drain::<UnloadHistory>(
        4096,
        |c, b| t.unload_history(c, 0, b),
        |p| unloads += p.records().count(),
    );
    println!("key_alarms = {}", t.stats().key_alarms);
    assert!(
        t.stats().key_alarms <= 2 && unloads == 1,
        "{} alarms for one process that never held more than 4 keys; unload history now \
         holds {unloads} of the 1 unload attempt",
        t.stats().key_alarms
    );
}

/// Finding: an image load for a process the tracker already saw exit (or for any process when
/// exits are not seen: `process::register` failed) creates a process record that nothing
/// reaps; its modules stay until the driver unloads.
#[test]
fn an_image_load_after_the_exit_leaves_no_record_behind() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = base(&pool, Config::default());
    let before = t.stats().processes_tracked;
    let q = ProcessKey {
        pid: 0x99,
        start_key: 9,
    };
    t.process_started(q, &w(r"\Device\HarddiskVolume3\x.exe"));
    t.process_exited(q);
    assert_eq!(t.stats().processes_tracked, before);
    let used = pool.outstanding_blocks();
    // The load notification of a cross-process mapping, delivered after the exit one.
    t.image_loaded(
        q,
        0x7FF8_0000_0000,
        0x1000,
        &w(r"\Device\HarddiskVolume3\y.dll"),
        5,
    );
    assert_eq!(
        (
            t.stats().processes_tracked,
            t.stats().modules_tracked,
            pool.outstanding_blocks()
        ),
        (before, 0, used),
        "a process record and its module outlive the process's exit for good"
    );
}

/// Finding: a reader whose cursor is past the newest number (the driver restarted and
/// numbers began again at 1) is neither answered at once nor told it missed anything: its
/// wait pends until the new run numbers past its cursor, and the events in between are
/// never delivered or counted.
#[test]
fn a_cursor_from_a_previous_run_is_answered_at_once() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = base(&pool, Config::default());
    for i in 0..3 {
        t.unload_attempted(&w(USER), 0xC000_0121, 10 + i);
    }
    let mut buf = vec![0u8; 16 * 1024];
    let n = t.events(50, 0, &mut buf).unwrap();
    let p = decode::<Page<'_, Events>>(&buf[..n]).unwrap();
    println!(
        "after=50: records={} missed={} done={} next={} events_after={}",
        p.records().count(),
        p.prefix.missed,
        p.info.done(),
        EventsRequest::after_cursor(&p.info.next),
        t.events_after(50)
    );
    assert!(
        t.events_after(50) || p.prefix.missed > 0,
        "events 1..=3 are neither delivered nor counted for a reader at 50, and its wait pends"
    );
}

/// Finding: the image scope matches only processes whose image the tracker was told by a
/// process-creation notification, so a process already running when the (demand-start)
/// driver loaded, such as the user's explorer.exe, is never captured while `capture status`
/// says capture is on for its image.
#[test]
fn image_scope_captures_a_process_that_was_running_before_the_driver() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.tracking_started(7);
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 1);
    // Running before the driver: no creation notification; its image loads came before too,
    // except a DLL it maps now.
    let explorer = ProcessKey {
        pid: 0x40,
        start_key: 1,
    };
    t.image_loaded(
        explorer,
        0x7FF8_1000_0000,
        0x10000,
        &w(r"\Device\HarddiskVolume3\Program Files\Contoso\shellext.dll"),
        5,
    );
    let units = w("explorer.exe");
    let req = CaptureRequest {
        op: CaptureOp::Set,
        scope: CaptureScope::Image,
        text: Text::Units(&units),
    };
    let mut input = [0u8; 256];
    let n = encode(&req, &mut input).unwrap();
    let mut out = [0u8; 256];
    t.answer_capture(&input[..n], &mut out, 42).unwrap();
    let attention = t.attention();
    let token = t
        .opened(
            0x1000,
            explorer,
            7,
            &w(&format!(r"{USER}\Software\A")),
            1,
            10,
        )
        .unwrap();
    // The driver's part: an open that made the record of a process never seen to start
    // asks for attention, and the driver names the process (SeLocateProcessImageName).
    assert_ne!(
        t.attention(),
        attention,
        "the open did not ask for the process's name"
    );
    assert!(t.image_missing(explorer));
    t.process_started(
        explorer,
        &w(r"\Device\HarddiskVolume3\Windows\explorer.exe"),
    );
    assert!(
        t.capture_wanted(token),
        "capture is on for explorer.exe, yet explorer's open is not captured"
    );
}

/// Review 18d: a hive unloaded between the seed's read of its hive-list value and its
/// record was recorded as loaded afterwards, and listed so for the driver's life.
#[test]
fn a_hive_unloaded_during_the_seed_is_not_recorded_by_it() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    let gone = r"\REGISTRY\USER\S-1-5-21-1-1008";
    let other = r"\REGISTRY\USER\S-1-5-21-1-1009";
    let before = t.changes_during_seed();
    // The list was read (both listed), then `gone` unloads, then the seed records.
    t.hive_unloaded(&w(gone));
    assert_eq!(t.changes_during_seed(), before + 1);
    t.hive_seeded(&w(&gone.to_lowercase()), &w(r"C:\Users\gone\NTUSER.DAT"));
    t.hive_seeded(&w(other), &w(r"C:\Users\other\NTUSER.DAT"));
    assert_eq!(
        t.unload_attempted(&w(gone), 0, 2),
        None,
        "gone is not a known hive"
    );
    assert!(t.unload_attempted(&w(other), 0xC000_0022, 2).is_some());
    // After the seed, unloads leave no mark: a later seed-like record is not refused.
    t.seed_done(true);
    let late = r"\REGISTRY\USER\S-1-5-21-1-1010";
    t.hive_unloaded(&w(late));
    assert_eq!(t.changes_during_seed(), before + 1);
    t.hive_seeded(&w(late), &w(r"C:\Users\late\NTUSER.DAT"));
    assert!(t.unload_attempted(&w(late), 0xC000_0022, 3).is_some());
}

/// Review 19c, B1: a hive the start-up seed missed (the list not read whole) and then loaded
/// again (logon after a failed logoff: the same file at the same mount succeeds, nothing
/// mounted) was given the load's time, so a refused unload said every holder was seen while
/// a key opened before tracking held the hive.
fn reload_after_incomplete_seed(key_in_it: bool) -> Vec<u16> {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.seed_begin();
    t.tracking_started(7);
    t.seed_done(false); // a value of the list could not be read
    let token = key_in_it.then(|| {
        t.opened(0x1000, P, 9, &w(&format!(r"{USER}\Software")), 1, 10)
            .unwrap()
    });
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 12);
    if let Some(tok) = token {
        t.handle_closed(tok, 0x1000);
        t.object_destroyed(tok, 0x1000);
    }
    let denied = 0xC000_0022;
    t.unload_attempted(&w(USER), denied, 20).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = t.events(0, 0, &mut buf).unwrap();
    let page = decode::<Page<'_, protocol::events::Events>>(&buf[..n]).unwrap();
    page.records().map(|r| r.flags).collect()
}

#[test]
fn a_reload_after_an_incomplete_seed_does_not_vouch_for_its_hive() {
    let unseen = protocol::history::UnloadRecord::HOLDERS_UNSEEN;
    for key_in_it in [false, true] {
        let flags = reload_after_incomplete_seed(key_in_it);
        assert!(
            !flags.is_empty() && flags.iter().all(|f| f & unseen != 0),
            "the refused unload says holders may be unseen (key in it: {key_in_it}): {flags:?}"
        );
    }
}

/// Review 20: a start-up seed that was not whole left every load of the boot without a load
/// time. A later seed that reads the whole list (the driver's, before a query) lets the loads
/// after it vouch for their hives again and withdraws the name not got; a load seen before it
/// still does not vouch (it may be the same file loaded again at a mount no seed had read).
#[test]
fn a_late_whole_seed_gives_later_loads_their_time_and_earlier_ones_none() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.seed_begin();
    t.tracking_started(7);
    t.seed_done(false);
    assert_eq!(t.stats().names_unavailable, 1, "the seed not whole is said");
    t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 12);
    assert!(t.seed_again(), "a seed not whole can be done again");
    t.hive_seeded(&w(r"\REGISTRY\MACHINE\SOFTWARE"), &w(r"C:\SOFTWARE"));
    t.seed_done(false); // the list moved again
    assert_eq!(
        t.stats().names_unavailable,
        1,
        "said once, however many seeds"
    );
    assert!(t.seed_again());
    t.seed_done(true);
    assert_eq!(t.stats().names_unavailable, 0, "a whole seed withdraws it");
    assert!(!t.seed_again(), "nothing to do once whole");
    let later = r"\REGISTRY\USER\S-1-5-21-1-1030";
    t.hive_loaded(&w(later), &w(r"C:\Users\b\NTUSER.DAT"), 30);
    let denied = 0xC000_0022;
    t.unload_attempted(&w(USER), denied, 40).unwrap();
    t.unload_attempted(&w(later), denied, 41).unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = t.events(0, 0, &mut buf).unwrap();
    let page = decode::<Page<'_, protocol::events::Events>>(&buf[..n]).unwrap();
    let flags: Vec<u32> = page.records().map(|r| u32::from(r.flags)).collect();
    let unseen = u32::from(protocol::history::UnloadRecord::HOLDERS_UNSEEN);
    assert_eq!(flags.len(), 2, "{flags:?}");
    assert!(
        flags[0] & unseen != 0,
        "the load before the late seed does not vouch: {flags:?}"
    );
    assert!(flags[1] & unseen == 0, "the load after it does: {flags:?}");
}

/// Review 20a, H1: a deferred unload (`STATUS_PENDING`) leaves the hive loaded and its
/// hive-list value in place (WRK `cmapi.c` `CmUnloadKeyEx` freezes it; `CmpRemoveFromHiveFileList`
/// runs only at the real unload). Its notification during a read of the list must not make
/// the read skip the hive, or a reload of the same file (which cancels the pending unload)
/// took a load time and vouched for a hive that keys opened before tracking hold. Both the
/// start-up read and a later one.
#[test]
fn a_pending_unload_during_a_seed_does_not_let_a_reload_vouch() {
    for late in [false, true] {
        let pool = CountingPool::new(Failure::Never, true);
        let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
        t.seed_begin();
        t.tracking_started(7);
        if late {
            t.seed_done(false);
            assert!(t.seed_again());
        }
        // Keys opened before tracking hold USER; NtUnloadKeyEx returns STATUS_PENDING.
        t.hive_unload_pending(&w(USER));
        // The read finds USER's value, still in the list.
        t.hive_seeded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"));
        t.seed_done(true);
        // The user logs on again: the same file at the same mount (cancels the unload).
        t.hive_loaded(&w(USER), &w(r"C:\Users\a\NTUSER.DAT"), 30);
        let denied = 0xC000_0022;
        t.unload_attempted(&w(USER), denied, 40).unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = t.events(0, 0, &mut buf).unwrap();
        let page = decode::<Page<'_, protocol::events::Events>>(&buf[..n]).unwrap();
        let flags: Vec<u32> = page.records().map(|r| u32::from(r.flags)).collect();
        let unseen = u32::from(protocol::history::UnloadRecord::HOLDERS_UNSEEN);
        assert!(
            !flags.is_empty() && flags.iter().all(|f| f & unseen != 0),
            "late {late}: holders opened before tracking may hold it: {flags:?}"
        );
    }
}
