//! Audit 22a, F3: the interleaving of a post-open attributed to a process (an attached
//! thread's open into its handle table) with that process's exit notification on another
//! processor. The exit is seen first and reaps the record (it held nothing yet); the open's
//! link then makes a new record for the same (pid, start key) with `exited` false, which
//! nothing ever reaps: `remove` reaps only exited processes, and no second exit comes.
//! Played in the order the race gives on two CPUs (the tracker calls are the same).
//! On bea5d24 (before the fix: `crate::processes`' remembered exits) 4 of these 5 tests fail;
//! the last, a reused pid, passes on both.

mod support;

use support::*;
use tracker::{Config, ProcessKey, Tracker};

#[test]
fn an_open_linked_after_its_process_exit_leaves_a_live_looking_record_forever() {
    let pool = CountingPool::new(Failure::Never, false);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    let mount = w(r"\REGISTRY\USER\S-1-5-21-9");
    t.hive_loaded(&mount, &w(r"C:\Users\x\NTUSER.DAT"), 1);
    let p = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    t.process_started(p, &w(r"\Device\HarddiskVolume1\x.exe"));
    assert_eq!(t.stats().processes_tracked, 1);
    // CPU 2: the process's exit notification (it holds no tracked key yet): reaped.
    t.process_exited(p);
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "exited and holding nothing: reaped"
    );
    // CPU 1: the post-open that was already under way for a handle in its table links now.
    let tok = t
        .opened(
            0x1000,
            p,
            9,
            &w(r"\REGISTRY\USER\S-1-5-21-9\Software\K"),
            1,
            2,
        )
        .expect("tracked");
    // ObKillProcess closes that handle: the object goes.
    t.object_destroyed(tok, 0x1000);
    // The process is gone for good, yet its record stays, not marked exited.
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "review 22a F3: a process whose exit was seen is tracked again, as live, until unload"
    );
}

fn setup(pool: &CountingPool) -> TestTracker<'_> {
    setup_with(pool, Config::default())
}

fn setup_with(pool: &CountingPool, config: Config) -> TestTracker<'_> {
    let t: TestTracker<'_> = Tracker::new(pool, config).unwrap();
    t.hive_loaded(
        &w(r"\REGISTRY\USER\S-1-5-21-9"),
        &w(r"C:\Users\x\NTUSER.DAT"),
        1,
    );
    t
}

fn open(t: &TestTracker<'_>, obj: u64, p: ProcessKey) -> tracker::Token {
    try_open(t, obj, p).expect("tracked")
}

fn try_open(
    t: &TestTracker<'_>,
    obj: u64,
    p: ProcessKey,
) -> Result<tracker::Token, tracker::NotTracked> {
    t.opened(obj, p, 9, &w(r"\REGISTRY\USER\S-1-5-21-9\Software\K"), 1, 2)
}

#[test]
fn a_late_open_of_a_process_never_seen_before_its_exit_goes_with_its_key() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup(&pool);
    let p = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    // Its exit comes first: the tracker never knew it (it ran before the driver).
    t.process_exited(p);
    assert_eq!(t.stats().process_exits_unknown, 1);
    let tok = open(&t, 0x1000, p);
    assert_eq!(t.stats().processes_tracked, 1, "the key's holder is listed");
    t.object_destroyed(tok, 0x1000);
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "review 22a F3: gone with its last key"
    );
}

#[test]
fn a_late_open_after_the_last_key_of_an_exited_process_went_goes_with_its_key() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup(&pool);
    let p = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    let first = open(&t, 0x1000, p);
    // Exit while it holds a key: kept, exited, until ObKillProcess closes the key.
    t.process_exited(p);
    assert_eq!(t.stats().processes_tracked, 1);
    t.object_destroyed(first, 0x1000);
    assert_eq!(t.stats().processes_tracked, 0);
    let late = open(&t, 0x2000, p);
    t.object_destroyed(late, 0x2000);
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "review 22a F3: gone with its last key"
    );
}

#[test]
fn naming_a_process_after_its_record_went_makes_no_record() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup(&pool);
    let p = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    let tok = open(&t, 0x1000, p);
    t.process_exited(p);
    t.object_destroyed(tok, 0x1000);
    assert_eq!(t.stats().processes_tracked, 0);
    // The driver names the process its open made a record of (`name_current`) only now.
    t.process_started(p, &w(r"\Device\HarddiskVolume1\x.exe"));
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "review 22a F3: a name for a process gone makes no record"
    );
}

#[test]
fn a_new_process_reusing_the_pid_is_not_taken_for_the_gone_one() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup(&pool);
    let old = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    t.process_exited(old);
    let new = ProcessKey {
        pid: 4321,
        start_key: 78,
    };
    let tok = open(&t, 0x1000, new);
    t.object_destroyed(tok, 0x1000);
    assert_eq!(
        t.stats().processes_tracked,
        1,
        "running: kept after its key went"
    );
    t.process_started(new, &w(r"\Device\HarddiskVolume1\y.exe"));
    assert!(!t.image_missing(new), "named");
    t.process_exited(new);
    assert_eq!(t.stats().processes_tracked, 0);
}

/// Review 22c, M1: a late open (its process's exit seen, its record gone) refused by the
/// share: the record made exited for it holds nothing, and nothing but the refusal can reap
/// it. Fails before `Tracker::refused_late` (one process left tracked).
#[test]
fn a_late_open_refused_by_the_share_leaves_no_record() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup_with(
        &pool,
        Config {
            process_share_bytes: 300,
            ..Config::default()
        },
    );
    let p = ProcessKey {
        pid: 4321,
        start_key: 77,
    };
    t.process_exited(p);
    let r = try_open(&t, 0x1000, p);
    assert!(r.is_err(), "the share is smaller than a record: refused");
    assert_eq!(
        t.stats().processes_tracked,
        0,
        "no exited record left behind"
    );
}

/// Review 22c, M1: the same, refused for want of memory at each allocation in turn.
#[test]
fn a_late_open_refused_for_memory_leaves_no_record() {
    for k in 1..40 {
        let pool = CountingPool::new(Failure::Never, false);
        let t = setup(&pool);
        let p = ProcessKey {
            pid: 4321,
            start_key: 77,
        };
        t.process_exited(p);
        pool.set_failure(Failure::Kth(pool.calls() + k));
        let r = try_open(&t, 0x1000, p);
        pool.set_failure(Failure::Never);
        if let Ok(tok) = r {
            t.object_destroyed(tok, 0x1000);
        }
        assert_eq!(
            t.stats().processes_tracked,
            0,
            "allocation {k} refused: no exited record left behind"
        );
    }
}

/// Review 22c, L2: without a start key (the driver had neither `PsGetProcessStartKey` nor a
/// creation time) a remembered exit would match a new process that reuses the pid, which
/// would be made exited and reaped with its image. Such exits are not remembered.
#[test]
fn an_exit_without_a_start_key_is_not_held_against_a_reused_pid() {
    let pool = CountingPool::new(Failure::Never, false);
    let t = setup(&pool);
    let p = ProcessKey {
        pid: 4321,
        start_key: 0,
    };
    t.process_exited(p); // not known: would be remembered gone
    t.process_started(p, &w(r"\Device\HarddiskVolume1\new.exe"));
    assert_eq!(
        t.stats().processes_tracked,
        1,
        "the new process with the reused pid is tracked, with its image"
    );
}
