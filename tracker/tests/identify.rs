//! The identify lookup: object addresses to the tokens (key ids) of their live records.

mod support;

use support::*;
use tracker::{Config, Tracker};

#[test]
fn addresses_map_to_their_live_records_only() {
    let pool = CountingPool::new(Failure::Never, true);
    let t: TestTracker<'_> = Tracker::new(&pool, Config::default()).unwrap();
    t.hive_loaded(&w(r"\REGISTRY\MACHINE\SOFTWARE"), &w(""), 1);
    let mut tokens = vec![];
    for (k, p) in [P1, P2].iter().cycle().take(300).enumerate() {
        let obj = 0x10_0000 + 0x40 * k as u64;
        let name = format!(r"\REGISTRY\MACHINE\SOFTWARE\K{}", k % 7);
        tokens.push((obj, t.opened(obj, *p, 1, &w(&name), 1, 2).unwrap()));
    }
    let (a, ta) = tokens[5];
    let (b, tb) = tokens[299];
    let out = identify(&t, &[b, 0xDEAD_0000, a, a, 0]);
    assert_eq!(out, [Some(tb), None, Some(ta), Some(ta), None]);
    assert!(
        out.iter().flatten().all(|tok| tok.0 != a && tok.0 != b),
        "never an address"
    );
    t.object_destroyed(ta, a);
    assert_eq!(
        identify(&t, &[a, b]),
        [None, Some(tb)],
        "a destroyed object is no longer identified"
    );
    // A new object at the same address is a new record, with a new token.
    let ta2 = t
        .opened(a, P2, 1, &w(r"\REGISTRY\MACHINE\SOFTWARE\New"), 1, 3)
        .unwrap();
    assert_eq!(identify(&t, &[a]), [Some(ta2)]);
    assert_ne!(ta2, ta);
}
