//! What the scale benchmarks (`bench_queries`, `bench_scale`) share: a tracker on the host
//! pool with room for a million objects and the largest budget, and a profile hive loaded.

use support::{ParkingLock, SysPool, w};
use tracker::{Config, Tracker};

#[path = "../../tests/support/mod.rs"]
pub mod support;

/// The tracker the benchmarks measure.
pub type T<'a> = Tracker<&'a SysPool, ParkingLock>;

/// The profile hive every benchmark key lives in.
pub const MOUNT: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";

/// Objects the tracker may hold (the driver's default cap).
pub const CAP: u32 = 1 << 20;

/// A tracker with room for [`CAP`] objects, the largest budget (no process share limit) and
/// [`MOUNT`] loaded.
pub fn tracker(pool: &SysPool) -> T<'_> {
    let t = Tracker::new(
        pool,
        Config {
            max_objects: CAP,
            budget_bytes: tracker::MAX_BUDGET_BYTES,
            process_share_bytes: tracker::MAX_BUDGET_BYTES,
            ..Config::default()
        },
    )
    .expect("tracker");
    t.hive_loaded(&w(MOUNT), &w(r"C:\Users\u\NTUSER.DAT"), 0);
    t
}
