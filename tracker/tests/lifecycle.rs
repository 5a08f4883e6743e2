//! Hive lifecycle: application hives forgotten with their last tracked key, deferred unloads
//! pending until a read of the hive list finds them gone, and the master hive's mount not
//! swallowing implicit hives.
#![allow(clippy::cast_possible_truncation, reason = "test code: small sizes")]

mod support;

use protocol::cursor::Cursor;
use protocol::hives::Hives;
use protocol::holders::{HiveKind, HiveState};
use support::*;
use tracker::{Config, QueryError, Tracker};

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001";
const SYSTEM: &str = r"\REGISTRY\MACHINE\SYSTEM";

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    Tracker::new(pool, Config::default()).unwrap()
}

/// Every hive: (mount, state, kind, open keys).
fn hives(t: &TestTracker<'_>) -> Vec<(String, HiveState, HiveKind, u64)> {
    let mut out = Vec::new();
    drain::<Hives>(
        4096,
        |c, b| t.hives(c, 0, b),
        |p| {
            for r in p.records() {
                out.push((fold_text(&r.mount), r.state, r.kind, r.open_keys));
            }
        },
    );
    out
}

fn state_of(t: &TestTracker<'_>, mount: &str) -> Option<HiveState> {
    let m = fold(&w(mount));
    hives(t)
        .into_iter()
        .find(|(x, ..)| *x == m)
        .map(|(_, s, ..)| s)
}

fn app(n: u32) -> String {
    format!(r"\REGISTRY\A\{{{n:08X}-0000-0000-0000-000000000000}}")
}

#[test]
fn an_app_hive_goes_with_its_last_tracked_key() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(1);
        for n in 0..200 {
            let mount = app(n);
            t.hive_loaded(&w(&mount), &w(r"\??\C:\ProgramData\App\settings.dat"), 10);
            let obj = 0x1000 + u64::from(n);
            let tok = t
                .opened(obj, P1, 7, &w(&format!(r"{mount}\Settings")), 1, 11)
                .unwrap();
            assert_eq!(state_of(&t, &mount), Some(HiveState::Loaded));
            t.handle_closed(tok, obj);
            t.object_destroyed(tok, obj);
            assert_eq!(state_of(&t, &mount), None, "forgotten with its last key");
            let mut buf = [0u8; 512];
            assert_eq!(
                t.holders(&w(&mount), &Cursor::START, 0, 0, &mut buf),
                Err(QueryError::UnknownHive),
                "an answer about it says unknown, never free"
            );
        }
        assert!(t.stats().hives_tracked <= 2, "{:?}", hives(&t));
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn an_app_hive_with_a_loss_stays() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(1);
    let mount = app(1);
    t.hive_loaded(&w(&mount), &w(""), 10);
    t.open_lost(&w(&format!(r"{mount}\Lost")), 12);
    let tok = t
        .opened(0x10, P1, 7, &w(&format!(r"{mount}\Kept")), 1, 13)
        .unwrap();
    t.object_destroyed(tok, 0x10);
    assert_eq!(
        state_of(&t, &mount),
        Some(HiveState::Loaded),
        "kept: its answers must keep saying what was lost"
    );
}

#[test]
fn app_hives_kept_by_losses_are_capped_and_their_losses_stay_counted() {
    // A user loading app hive after app hive, each with a loss (an open refused past its
    // share, say): the records must not pile up, and no answer may forget the losses.
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(1);
        for n in 0..2_000 {
            let mount = app(n);
            t.hive_loaded(&w(&mount), &w(""), 10);
            t.open_lost(&w(&format!(r"{mount}\Lost")), 12 + u64::from(n));
        }
        let apps = hives(&t)
            .iter()
            .filter(|(_, _, k, _)| *k == HiveKind::App)
            .count();
        assert!(
            apps <= 16 * (tracker::hives::IDLE_APP_HIVES + 1),
            "{apps} app hive records kept for 2,000 loads"
        );
        let global = t.completeness_of(u32::MAX);
        let kept = hives(&t).len() as u64;
        assert!(
            global.global_lost >= 2_000 - kept && global.global_lost_since == 12,
            "the forgotten hives' losses are global now: {global:?}"
        );
        assert!(!global.nothing_lost(), "so no answer says nothing was lost");
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn never_opened_app_hives_are_capped() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(1);
        for n in 0..500 {
            t.hive_loaded(&w(&app(n)), &w(""), 10);
        }
        let apps = hives(&t)
            .iter()
            .filter(|(_, _, k, _)| *k == HiveKind::App)
            .count();
        assert!(apps <= 16 * tracker::hives::IDLE_APP_HIVES, "{apps} kept");
        assert!(apps >= tracker::hives::IDLE_APP_HIVES, "{apps} kept");
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

/// One check of the hive list (the driver's read before a query) that finds `listed`.
fn check(t: &TestTracker<'_>, listed: &[&str], whole: bool) -> u32 {
    let begun = t.unload_check_begin();
    for m in listed {
        t.hive_listed(&w(m));
    }
    t.unload_check_done(begun, whole)
}

/// The holders answer's hive state and open keys, or `None` for an unknown hive.
fn holders_state(t: &TestTracker<'_>, mount: &str) -> Option<(HiveState, u64)> {
    use protocol::holders::Holders;
    use protocol::page::Page;
    let mut buf = [0u8; 4096];
    let n = t.holders(&w(mount), &Cursor::START, 0, 0, &mut buf).ok()?;
    let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..n]).unwrap();
    Some((page.prefix.state, page.prefix.open_keys))
}

#[test]
fn a_deferred_unload_stays_listed_after_the_last_key_until_the_hive_list_loses_it() {
    // Windows unloads the hive only after the delayed dereference of its closed keys (up to
    // 5 s, WRK `cmdelay.c`), and says nothing when it does: until 2026-12-06 the record went
    // at the last close, and in that window `hives` left the loaded hive out and `holders`
    // called it unknown.
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(5);
        t.hive_loaded(&w(USER), &w(r"\??\C:\Users\u\NTUSER.DAT"), 10);
        let tok = t
            .opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
            .unwrap();
        t.unload_attempted(&w(USER), 0x103, 12);
        t.hive_unload_pending(&w(USER));
        assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
        assert!(t.unload_check_wanted());
        // A read while the key is open: the value is there.
        assert_eq!(check(&t, &[USER, r"\REGISTRY\MACHINE\SYSTEM"], true), 0);
        t.object_destroyed(tok, 0x20);
        assert_eq!(
            state_of(&t, USER),
            Some(HiveState::UnloadPending),
            "still loaded, its unload completing"
        );
        assert_eq!(
            holders_state(&t, USER),
            Some((HiveState::UnloadPending, 0)),
            "holders answers for it: pending, no key"
        );
        // A read in the window: the value is still there.
        assert_eq!(check(&t, &[USER], true), 0);
        assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
        // A read that could not see the whole list retires nothing.
        assert_eq!(check(&t, &[], false), 0);
        assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
        // The late unload deleted the value: unloaded.
        assert_eq!(check(&t, &[r"\REGISTRY\MACHINE\SYSTEM"], true), 1);
        assert_eq!(state_of(&t, USER), None, "gone from the list: unloaded");
        assert_eq!(holders_state(&t, USER), None, "an unknown hive now");
        assert!(!t.unload_check_wanted(), "nothing pending is left to check");
        // A later load at the mount is a fresh hive, with its time.
        t.hive_loaded(&w(USER), &w(r"\??\C:\Users\u\NTUSER.DAT"), 40);
        assert_eq!(state_of(&t, USER), Some(HiveState::Loaded));
        let loaded = hives(&t).len();
        assert_eq!(loaded, 1);
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn a_pending_hive_no_read_ever_listed_is_not_taken_as_gone() {
    // A hive with no load notification and no value a read saw (an implicit hive: keys seen
    // under a mount no load named): only a value that was there, then lost, says the hive
    // unloaded. A whole check that does not find it stops wanting checks for it (review 21a,
    // M1: every query re-read the list for good).
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
        .unwrap();
    assert_eq!(state_of(&t, USER), Some(HiveState::Implicit));
    t.hive_unload_pending(&w(USER));
    assert!(t.unload_check_wanted());
    assert_eq!(check(&t, &[], false), 0);
    assert!(t.unload_check_wanted(), "a partial read proves nothing");
    assert_eq!(check(&t, &[], true), 0);
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
    assert!(
        !t.unload_check_wanted(),
        "no later read can retire it: no more reads for it"
    );
    // A load cancels the unload (the same file at the same spot): loaded, not pending.
    t.hive_loaded(&w(USER), &w(""), 20);
    assert_eq!(state_of(&t, USER), Some(HiveState::Loaded));
    assert_eq!(check(&t, &[], true), 0);
    assert_eq!(
        state_of(&t, USER),
        Some(HiveState::Loaded),
        "a loaded hive is never retired"
    );
    assert!(!t.unload_check_wanted());
}

#[test]
fn a_notified_load_counts_as_listed() {
    // Review 21a, M1: `CmLoadKey` adds the hive's value before its caller sends the load's
    // post-notification (WRK `cmapi.c`), so the deferred unload of a hive loaded after the
    // driver started is retired by the first whole check that misses the value, even when no
    // query ran while the value was there (the normal logoff: nobody asks within 5 s). Until
    // then it stayed unload-pending for good. A hive whose value `CmpAddToHiveFileList`
    // failed to add (rare) is retired too: forgotten, an answer about it says "unknown hive".
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_loaded(&w(USER), &w(""), 10);
    assert!(!t.unload_check_wanted(), "nothing pending: no read wanted");
    t.hive_unload_pending(&w(USER));
    assert!(t.unload_check_wanted());
    assert_eq!(check(&t, &[], false), 0, "a partial read retires nothing");
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
    assert_eq!(check(&t, &[], true), 1);
    assert_eq!(state_of(&t, USER), None);
    assert_eq!(holders_state(&t, USER), None, "an unknown hive, never free");
    assert!(!t.unload_check_wanted());
}

#[test]
fn a_hive_that_goes_pending_during_a_check_is_left_to_the_next() {
    // Its value may have been read before it went pending, or not at all: this check says
    // nothing of it, and the next must still come.
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_seeded(&w(USER), &w(""));
    let begun = t.unload_check_begin();
    t.hive_unload_pending(&w(USER));
    assert_eq!(
        t.unload_check_done(begun, true),
        0,
        "not marked: not retired"
    );
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
    assert!(t.unload_check_wanted(), "the next check is still wanted");
    assert_eq!(check(&t, &[], true), 1, "and it finds the value gone");
    assert!(!t.unload_check_wanted());
}

#[test]
fn a_pending_hive_with_a_tracked_key_is_not_taken_as_gone() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_seeded(&w(USER), &w(""));
    t.opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
        .unwrap();
    t.hive_unload_pending(&w(USER));
    assert_eq!(check(&t, &[], true), 0, "a key it tracks holds the hive");
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
}

#[test]
fn idle_vouched_pending_hives_are_capped() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(5);
        for n in 0..500 {
            let m = format!(r"\REGISTRY\USER\S-1-5-21-1-2-3-{n}");
            t.hive_loaded(&w(&m), &w(""), 10);
            t.hive_unload_pending(&w(&m));
        }
        let kept = hives(&t).len();
        assert!(
            kept <= 16 * (tracker::hives::IDLE_PENDING_HIVES + 1),
            "{kept} pending records kept for 500 deferred unloads with no query"
        );
        assert!(kept >= tracker::hives::IDLE_PENDING_HIVES, "{kept}");
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn a_seed_counts_a_record_only_once() {
    // Review 20a, L2: a later read of the list must not count again a hive recorded already.
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    assert!(t.hive_seeded(&w(USER), &w("")), "recorded");
    assert!(
        !t.hive_seeded(&w(USER), &w("")),
        "already recorded: nothing changes"
    );
}

#[test]
fn a_deferred_unload_stays_pending_when_keys_may_predate_tracking() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    // Seeded from the hive list: its load time is not known, keys may predate tracking.
    t.hive_loaded(&w(USER), &w(""), 0);
    t.tracking_started(5);
    let tok = t
        .opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
        .unwrap();
    t.hive_unload_pending(&w(USER));
    t.object_destroyed(tok, 0x20);
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
    // The late unload completed: a read of the list no longer finds it.
    assert_eq!(check(&t, &[USER], true), 0);
    assert_eq!(check(&t, &[], true), 1);
    assert_eq!(
        state_of(&t, USER),
        None,
        "an unvouched pending hive retired too"
    );
    // A new load at the mount: a new record, state Loaded.
    t.hive_loaded(&w(USER), &w(""), 20);
    assert_eq!(state_of(&t, USER), Some(HiveState::Loaded));
    assert_eq!(hives(&t).len(), 1);
}

#[test]
fn a_deferred_unload_stays_pending_after_a_global_loss() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_loaded(&w(USER), &w(""), 10);
    let tok = t
        .opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
        .unwrap();
    t.lost_globally(12);
    t.hive_unload_pending(&w(USER));
    t.object_destroyed(tok, 0x20);
    assert_eq!(state_of(&t, USER), Some(HiveState::UnloadPending));
}

#[test]
fn the_master_hive_does_not_swallow_implicit_hives() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.hive_loaded(&w(r"\REGISTRY"), &w(""), 0);
    for n in 0..64 {
        let key = format!(r"\REGISTRY\WC\Silo{n}\Key");
        t.opened(0x100 + n, P1, 7, &w(&key), 1, 11).unwrap();
    }
    let all = hives(&t);
    let master = all.iter().find(|(m, ..)| m == r"\REGISTRY").unwrap();
    assert_eq!(
        master.3, 0,
        "no key of a three-component hive is in the master: {all:?}"
    );
    assert_eq!(all.len(), 65, "{all:?}");
}

#[test]
fn an_implicit_hive_goes_with_its_last_tracked_key_unless_it_lost_one() {
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.tracking_started(1);
        for n in 0..100 {
            let key = format!(r"\REGISTRY\WC\Silo{n}\Key");
            let tok = t.opened(0x40 + n, P1, 7, &w(&key), 1, 2).unwrap();
            assert_eq!(
                state_of(&t, &format!(r"\REGISTRY\WC\Silo{n}")),
                Some(HiveState::Implicit)
            );
            t.object_destroyed(tok, 0x40 + n);
        }
        assert_eq!(t.stats().hives_tracked, 0, "{:?}", hives(&t));
        let tok = t
            .opened(0x10, P1, 7, &w(r"\REGISTRY\WC\Lossy\A"), 1, 2)
            .unwrap();
        t.open_lost(&w(r"\REGISTRY\WC\Lossy\B"), 3);
        t.object_destroyed(tok, 0x10);
        assert_eq!(
            state_of(&t, r"\REGISTRY\WC\Lossy"),
            Some(HiveState::Implicit),
            "kept: its answers must say what was lost"
        );
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

/// Review 21a, M1 (R1; its four tests failed before a notified load counted as listed): the
/// common logoff. The profile is loaded (notified) after the driver started, a key
/// is held, the deferred unload goes pending, the key closes, and the late unload completes
/// (value deleted) before anybody runs a query (no check ran while the value was there).
/// Every later check sees a whole list without the value. Before the fix the record was
/// never retired (never listed), so `holders` said "unload-pending: loaded, file in use" for a
/// hive Windows unloaded, and every query re-read the hive list for the driver's life.
#[test]
fn review21a_r1_a_late_unload_done_before_any_query_is_retired() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_seeded(&w(SYSTEM), &w(""));
    t.hive_loaded(&w(USER), &w(r"\??\C:\Users\u\NTUSER.DAT"), 10);
    let tok = t
        .opened(0x20, P1, 7, &w(&format!(r"{USER}\Software")), 1, 11)
        .unwrap();
    t.unload_attempted(&w(USER), 0x103, 12);
    t.hive_unload_pending(&w(USER));
    t.handle_closed(tok, 0x20);
    t.object_destroyed(tok, 0x20);
    // ... 5 s later the late unload deletes the value; the first query comes after that.
    let mut retired = 0;
    for _ in 0..5 {
        retired += check(&t, &[SYSTEM], true);
    }
    assert!(
        !t.unload_check_wanted(),
        "every query re-reads the hive list for the driver's life"
    );
    assert_eq!(
        (retired, state_of(&t, USER)),
        (1, None),
        "a hive Windows unloaded is still reported unload-pending (loaded, file in use)"
    );
}

/// R1b: the same with one global loss (no vouch): nothing caps these records, so they must
/// be retired, or distinct deferred unloads pile up (before the fix: 301 records for 300,
/// bounded only by the byte budget).
#[test]
fn review21a_r1b_unvouched_never_listed_pending_records_do_not_pile_up() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.lost_globally(6);
    t.hive_seeded(&w(SYSTEM), &w(""));
    for n in 0..300u64 {
        let m = format!(r"\REGISTRY\USER\S-1-5-21-9-9-9-{n}");
        t.hive_loaded(&w(&m), &w(""), 10);
        let obj = 0x1000 + n;
        let tok = t
            .opened(obj, P1, 7, &w(&format!(r"{m}\Software")), 1, 11)
            .unwrap();
        t.hive_unload_pending(&w(&m));
        t.handle_closed(tok, obj);
        t.object_destroyed(tok, obj);
    }
    for _ in 0..3 {
        check(&t, &[SYSTEM], true);
    }
    let kept = hives(&t).len();
    assert!(
        kept <= 16 * 5 + 1,
        "{kept} records for 300 completed deferred unloads"
    );
}

/// Sanity for the holders answer in R1's state.
#[test]
fn review21a_r1c_holders_does_not_answer_for_a_gone_hive() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_loaded(&w(USER), &w(""), 10);
    t.hive_unload_pending(&w(USER));
    check(&t, &[], true);
    check(&t, &[], true);
    let mut buf = [0u8; 4096];
    let n = t.holders(&w(USER), &Cursor::START, 0, 0, &mut buf);
    assert!(n.is_err(), "holders still answers for the hive: {n:?}");
}

/// R1d: the user's next logon after a deferred unload the driver retired is a fresh load,
/// with its time. Before the fix the record stayed pending (never listed), and the reload
/// took it as "may have completed unseen": load time 0, so that hive's answers could never
/// vouch for its keys again.
#[test]
fn review21a_r1d_the_next_logon_after_a_retired_unload_has_its_load_time() {
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.tracking_started(5);
    t.hive_seeded(&w(SYSTEM), &w(""));
    t.hive_loaded(&w(USER), &w(r"\??\C:\Users\u\NTUSER.DAT"), 10);
    assert!(
        !t.unload_check_wanted(),
        "nothing pending: no read of the list wanted"
    );
    t.hive_unload_pending(&w(USER));
    check(&t, &[SYSTEM], true);
    t.hive_loaded(&w(USER), &w(r"\??\C:\Users\u\NTUSER.DAT"), 40);
    let mut time = None;
    drain::<Hives>(
        4096,
        |c, b| t.hives(c, 0, b),
        |p| {
            for r in p.records() {
                if fold_text(&r.mount) == fold(&w(USER)) {
                    time = Some((r.state, r.loaded_time));
                }
            }
        },
    );
    assert_eq!(time, Some((HiveState::Loaded, 40)));
}

/// Every hive's (mount, file), folded.
fn files(t: &TestTracker<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    drain::<Hives>(
        4096,
        |c, b| t.hives(c, 0, b),
        |p| {
            for r in p.records() {
                out.push((fold_text(&r.mount), fold_text(&r.file)));
            }
        },
    );
    out
}

/// One refresh with live tracking off (the driver's `refresh_untracked`) that finds
/// `listed` (mount, file).
fn refresh(t: &TestTracker<'_>, listed: &[(&str, &str)], whole: bool) -> u32 {
    let begun = t.refresh_begin();
    for (m, f) in listed {
        t.hive_refreshed(&w(m), &w(f));
    }
    t.refresh_done(begun, whole)
}

const OFFLINE: &str = r"\REGISTRY\MACHINE\OFFLINE";
const FILE_A: &str = r"\Device\HarddiskVolume2\a\SOFTWARE";
const FILE_B: &str = r"\Device\HarddiskVolume2\b\SOFTWARE";

#[test]
fn a_refresh_retires_only_after_a_whole_read_and_never_app_hives() {
    // Review 22a, L4: refresh_begin/refresh_done had no host test.
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.hive_seeded(
        &w(SYSTEM),
        &w(r"\Device\HarddiskVolume2\Windows\System32\config\SYSTEM"),
    );
    t.hive_seeded(&w(USER), &w(""));
    t.hive_loaded(&w(&app(1)), &w(r"\??\C:\app.dat"), 10);
    let loads = t.stats().hive_loads_seen;
    assert_eq!(
        refresh(&t, &[(SYSTEM, "")], false),
        0,
        "not whole: nothing retired"
    );
    assert_eq!(state_of(&t, USER), Some(HiveState::Loaded));
    // A hive recorded by this refresh is not retired by it, though listed only once.
    let begun = t.refresh_begin();
    t.hive_refreshed(&w(SYSTEM), &w(""));
    assert!(
        t.hive_refreshed(&w(OFFLINE), &w(FILE_A)),
        "a new hive is recorded"
    );
    assert_eq!(
        t.refresh_done(begun, true),
        1,
        "USER, no longer listed, goes"
    );
    assert_eq!(state_of(&t, USER), None, "an unknown hive, never free");
    assert_eq!(state_of(&t, OFFLINE), Some(HiveState::Loaded));
    assert_eq!(state_of(&t, SYSTEM), Some(HiveState::Loaded));
    assert_eq!(
        state_of(&t, &app(1)),
        Some(HiveState::Loaded),
        "an application hive is never in the list, never retired by it"
    );
    assert_eq!(
        t.stats().hive_loads_seen,
        loads,
        "a refresh's record is no load seen"
    );
}

#[test]
fn a_refresh_that_finds_another_file_at_a_mount_shows_the_new_file() {
    // Review 22a, L3: `reg unload HKLM\OFFLINE` + `reg load HKLM\OFFLINE other` between two
    // refreshes: the record kept the first file for as long as the mount stayed loaded.
    let pool = CountingPool::new(Failure::Never, true);
    {
        let t = tracker(&pool);
        t.hive_seeded(&w(OFFLINE), &w(FILE_A));
        assert_eq!(
            refresh(&t, &[(OFFLINE, &FILE_A.to_uppercase())], true),
            0,
            "same file"
        );
        assert_eq!(files(&t), vec![(fold(&w(OFFLINE)), fold(&w(FILE_A)))]);
        refresh(&t, &[(OFFLINE, FILE_B)], true);
        assert_eq!(
            files(&t),
            vec![(fold(&w(OFFLINE)), fold(&w(FILE_B)))],
            "the mount's hive is the new file's"
        );
        assert_eq!(state_of(&t, OFFLINE), Some(HiveState::Loaded));
    }
    assert_eq!(pool.outstanding_blocks(), 0);
}

#[test]
fn a_hive_a_refresh_cannot_record_is_counted_once() {
    // Review 22a, L4: it bumped the loads seen and the no-memory count at every pass of
    // every refresh.
    let pool = CountingPool::new(Failure::Never, true);
    let t = tracker(&pool);
    t.hive_seeded(&w(SYSTEM), &w(""));
    let before = t.stats();
    pool.set_failure(Failure::FromK(pool.calls() + 1));
    for _ in 0..3 {
        refresh(&t, &[(SYSTEM, ""), (OFFLINE, FILE_A)], true);
    }
    pool.set_failure(Failure::Never);
    assert_eq!(state_of(&t, OFFLINE), None, "not recorded");
    let after = t.stats();
    assert_eq!(after.hive_loads_seen, before.hive_loads_seen);
    assert_eq!(
        after.hive_loads_dropped_no_memory,
        before.hive_loads_dropped_no_memory + 1,
        "counted once while it lasts"
    );
    refresh(&t, &[(SYSTEM, ""), (OFFLINE, FILE_A)], true);
    assert_eq!(
        state_of(&t, OFFLINE),
        Some(HiveState::Loaded),
        "recorded now"
    );
}

/// The tracker's teardown with a process still holding a key of an application hive (the
/// service stopped while an app keeps its `RegLoadAppKey` hive open): unpinning the hive
/// (its last reference) takes the hive shard, which the documented order puts before the
/// process shard and the process (`tracker/src/processes.rs`). Driver Verifier's Deadlock
/// Detection reports a loop in the acquisition order even if the two orders never run at
/// once (Learn, devtest "Deadlock Detection"; audit 24a, F1). Before 2026-12-06 the teardown
/// unpinned under the process locks.
#[test]
fn teardown_keeps_the_lock_order_with_an_app_hive_held() {
    let pool = CountingPool::new(Failure::Never, true);
    OrderLock::reset();
    {
        let t: Tracker<&CountingPool, OrderLock> = Tracker::new(&pool, Config::default()).unwrap();
        t.tracking_started(1);
        let mount = app(7);
        t.hive_loaded(&w(&mount), &w(r"\??\C:\ProgramData\App\settings.dat"), 10);
        let tok = t
            .opened(0x1000, P1, 7, &w(&format!(r"{mount}\Settings")), 1, 11)
            .unwrap();
        let _ = tok;
        assert!(OrderLock::cycle().is_none(), "no loop before the teardown");
    }
    assert_eq!(
        OrderLock::cycle(),
        None,
        "a lock-order loop in the teardown"
    );
    assert_eq!(pool.outstanding_blocks(), 0);
}
