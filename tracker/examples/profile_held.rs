//! Profiling aid for issue 14: a held key's open+close+destroy cycles on the host engine
//! (`profile_held N` runs N cycles; any second argument opens a fresh key each cycle). Built
//! with debug info (`CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release --example
//! profile_held`) and run under `valgrind --tool=callgrind` with 1,000 and 3,000 cycles, the
//! difference of the two per-function counts is what one cycle costs in the tracker (the
//! driver's image has no symbols valgrind can read, and its clock read defeats callgrind).
#![allow(missing_docs, reason = "a profiling program")]

mod common;

use common::support::{SysPool, w};
use common::{MOUNT, tracker};
use tracker::ProcessKey;

fn main() {
    let pool = SysPool::default();
    let t = tracker(&pool);
    let p = ProcessKey {
        pid: 1234,
        start_key: 7,
    };
    let name = w(&format!(
        r"{MOUNT}\Software\Microsoft\Windows\CurrentVersion\Explorer\Advanced"
    ));
    let fresh = std::env::args().nth(2).is_some();
    // Fresh: nothing else holds the key or its name, so each cycle fetches, interns, caches
    // and frees them (the driver bench's "fresh"); the profile hive is held through another
    // key, as a logged-on user's is.
    let held_name = if fresh {
        w(&format!(r"{MOUNT}\Software\Other"))
    } else {
        name.clone()
    };
    let held = match t.opened_known(0x10, 77, p, 1, 1, 1) {
        Ok(r) => r.expect("tracked"),
        Err(miss) => t
            .opened_named(miss, 0x10, p, 1, &held_name, 1, 1)
            .expect("tracked"),
    };
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    for i in 0..n {
        let object = 0x8000_0000 + i * 16;
        let key = if fresh { 1000 + 64 * i } else { 77 };
        let tok = match t.opened_known(object, key, p, 1, 1, 2 + i) {
            Ok(r) => r.expect("tracked"),
            Err(miss) => t
                .opened_named(miss, object, p, 1, &name, 1, 2 + i)
                .expect("tracked"),
        };
        t.handle_closed(tok, object);
        t.object_destroyed(tok, object);
    }
    t.handle_closed(held, 0x10);
    t.object_destroyed(held, 0x10);
}
