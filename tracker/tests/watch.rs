//! The hive-free test behind the wait-free request (held, free, unloaded, unknown), and the
//! smallest holders page a client can ask for.

mod support;

use support::*;
use tracker::{Config, HiveFree, Tracker};

const USER: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001";
const CLASSES: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001_Classes";

#[test]
fn a_hive_is_free_once_its_last_holder_closes_or_exits() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(USER), &w(r"C:\Users\u\NTUSER.DAT"), 1);
    t.hive_loaded(&w(CLASSES), &w(r"C:\Users\u\UsrClass.dat"), 1);
    let (id, state) = t.watch_hive(&w(USER)).unwrap();
    assert_eq!(state, HiveFree::Free, "nobody holds a fresh hive");
    let policies = w(&format!(r"{USER}\Software\Policies"));
    let a = t.opened(0x10, P1, 1, &policies, 1, 2).unwrap();
    let b = t.opened(0x20, P2, 2, &policies, 1, 3).unwrap();
    let c = t
        .opened(0x30, P2, 2, &w(&format!(r"{CLASSES}\CLSID")), 1, 3)
        .unwrap();
    // Any key path inside the hive names it, case-insensitively; the sibling
    // `_Classes` hive is another hive.
    let inside = w(&format!(r"{}\software", USER.to_lowercase()));
    assert_eq!(t.watch_hive(&inside), Some((id, HiveFree::Held)));
    assert_ne!(t.watch_hive(&w(CLASSES)).unwrap().0, id);
    t.handle_closed(a, 0x10);
    t.object_destroyed(a, 0x10);
    assert_eq!(t.hive_free(id), HiveFree::Held, "P2 still holds it");
    t.process_exited(P2);
    // P2's handles are closed by the exit: the kernel closes them one by one.
    t.handle_closed(b, 0x20);
    t.object_destroyed(b, 0x20);
    assert_eq!(t.hive_free(id), HiveFree::Free);
    assert_eq!(
        t.watch_hive(&w(CLASSES)).unwrap().1,
        HiveFree::Held,
        "the other hive is not affected"
    );
    t.handle_closed(c, 0x30);
    t.object_destroyed(c, 0x30);
    t.process_exited(P1);
}

#[test]
fn an_unloaded_or_forgotten_hive_counts_as_unloaded_and_unknown_paths_name_none() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(USER), &w(r"C:\Users\u\NTUSER.DAT"), 1);
    let (id, _) = t.watch_hive(&w(USER)).unwrap();
    t.hive_unloaded(&w(USER));
    assert_eq!(t.hive_free(id), HiveFree::Unloaded);
    assert_eq!(
        t.hive_free(tracker::WatchedHive {
            id: 0xDEAD,
            shard: 0
        }),
        HiveFree::Unloaded,
        "never seen"
    );
    assert_eq!(
        t.hive_free(tracker::WatchedHive { shard: 99, ..id }),
        HiveFree::Unloaded,
        "no such shard"
    );
    assert_eq!(t.watch_hive(&w(USER)), None, "no longer mounted");
    assert_eq!(t.watch_hive(&w(r"\REGISTRY\NOWHERE\X")), None);
    // Reloading mounts a new hive with a new id; the old wait's hive stays unloaded.
    t.hive_loaded(&w(USER), &w(r"C:\Users\u\NTUSER.DAT"), 9);
    let (again, state) = t.watch_hive(&w(USER)).unwrap();
    assert_ne!(again, id);
    assert_eq!(state, HiveFree::Free);
    assert_eq!(t.hive_free(id), HiveFree::Unloaded);
}

#[test]
fn holders_with_a_limit_of_one_record_still_reach_the_end() {
    use protocol::holders::{HolderRecord, Holders};
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(USER), &w(r"C:\Users\u\NTUSER.DAT"), 1);
    for (i, p) in [P1, P2].into_iter().enumerate() {
        for k in 0..3u64 {
            let key = w(&format!(r"{USER}\Software\K{k}"));
            t.opened(0x100 * (i as u64 + 1) + k, p, 1, &key, 1, 10 + k)
                .unwrap();
        }
    }
    let (mut processes, mut keys) = (0, 0);
    let pages = drain::<Holders>(
        4096,
        |c, b| t.holders(&w(USER), c, 0, 1, b),
        |page| {
            // A limit of one is taken as two: a summary and a key.
            assert!(page.records().count() <= 2, "{}", page.records().count());
            for r in page.records() {
                match r {
                    HolderRecord::Process(_) => processes += 1,
                    HolderRecord::Key(_) => keys += 1,
                }
            }
        },
    );
    assert_eq!(keys, 6, "every key is reached one page at a time");
    assert!(processes >= 2, "each process is announced ({processes})");
    assert!(pages >= 3, "{pages} pages");
}
