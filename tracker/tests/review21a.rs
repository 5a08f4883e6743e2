//! Review 21a, M1: the deferred unload of a hive loaded after the driver started (a logon's
//! profile) must be retired by a read of the hive list that misses its value even when no
//! query ran while the value was there. All four failed before the fix (a notified load now
//! counts as listed: WRK `cmapi.c` `CmLoadKey` adds the value before the post-notification).
#![allow(clippy::cast_possible_truncation, reason = "test code")]

mod support;

use protocol::cursor::Cursor;
use protocol::hives::Hives;
use protocol::holders::{HiveKind, HiveState};
use support::*;
use tracker::{Config, Tracker};

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001";
const SYSTEM: &str = r"\REGISTRY\MACHINE\SYSTEM";

fn tracker(pool: &CountingPool) -> TestTracker<'_> {
    Tracker::new(pool, Config::default()).unwrap()
}

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

fn check(t: &TestTracker<'_>, listed: &[&str], whole: bool) -> u32 {
    let begun = t.unload_check_begin();
    for m in listed {
        t.hive_listed(&w(m));
    }
    t.unload_check_done(begun, whole)
}

/// R1: the common logoff. The profile is loaded (notified) after the driver started, a key
/// is held, the deferred unload goes pending, the key closes, and the late unload completes
/// (value deleted) before anybody runs a query (no check ran while the value was there).
/// Every later check sees a whole list without the value. Today the record is never
/// retired (its `list` is 0, never LISTED), so `holders` says "unload-pending: loaded, file in
/// use" for a hive Windows unloaded, and every query re-reads the hive list for the driver's
/// life.
#[test]
fn r1_a_late_unload_done_before_any_query_is_retired() {
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

/// R1b: the same with one global loss (no vouch): nothing caps these records, and none is
/// ever retired, so distinct deferred unloads pile up (bounded only by the byte budget).
#[test]
fn r1b_unvouched_never_listed_pending_records_pile_up() {
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
fn r1c_holders_answers_pending_for_a_gone_hive() {
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
fn r1d_the_next_logon_after_a_retired_unload_has_its_load_time() {
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
