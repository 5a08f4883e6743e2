//! The hivetrack tracking engine: who holds which registry key, in which hive, since when.
//!
//! `no_std`, and no global allocator: all memory comes from a [`Pool`] of fixed-size blocks
//! (the driver's non-paged lookaside lists), and every allocation failure is counted and
//! survived. Locks are a type parameter ([`RawLock`]): an executive reader/writer spin lock
//! (`EX_SPIN_LOCK`, or a `KSPIN_LOCK` where the system lacks it) in the driver, a parking or
//! spin lock on the host.
//!
//! The driver reports events to a [`Tracker`]:
//! [`Tracker::opened`] returns a [`Token`] to store as the key object's callback context;
//! [`Tracker::handle_closed`], [`Tracker::object_destroyed`] and [`Tracker::abandon`] take it
//! back (a stale or foreign token is detected and counted, never followed);
//! [`Tracker::hive_loaded`], [`Tracker::hive_unloaded`], [`Tracker::unload_attempted`],
//! [`Tracker::process_started`] and [`Tracker::process_exited`] keep hives and processes
//! current. Queries ([`Tracker::answer`], or [`Tracker::holders`], [`Tracker::hives`],
//! [`Tracker::processes`], [`Tracker::snapshot`], [`Tracker::unload_history`],
//! [`Tracker::stats`]) write protocol pages into caller buffers and resume with a cursor.
//! [`Tracker::watch_hive`] and [`Tracker::hive_free`] tell a wait whether a hive is free.
//!
//! Names are compared case-insensitively with [`protocol::text::fold_unit`] (ASCII folding
//! plus Unicode simple upper-casing).
#![cfg_attr(not(test), no_std)]

pub mod budget;
pub mod capture;
pub mod census;
mod counters;
pub mod events;
pub mod held_after;
mod history;
pub mod hives;
mod identify;
pub mod keys;
mod links;
pub mod lock;
mod losses;
pub mod modules;
pub mod names;
pub mod objects;
pub mod pool;
pub mod processes;
mod queries;
pub mod seed_window;
pub mod stacks;
mod tracker;
pub mod units;
mod watch;

pub use census::Census;
pub use identify::Wanted;
pub use keys::{KeyMiss, MAX_NAME_AGE};
pub use lock::{RawLock, SpinLock};
pub use objects::Token;
pub use pool::{BLOCK_ALIGN, BlockClass, Pool};
pub use processes::ProcessKey;
pub use queries::{MAX_PAGE_RECORDS, MAX_QUERY_PATH, QueryError, query_path};
pub use tracker::{
    Config, ConfigError, DEFAULT_BUDGET_BYTES, MAX_BUDGET_BYTES, MIN_BUDGET_BYTES, NotTracked,
    Tracker, holding_charge,
};
pub use watch::{HiveFree, WatchedHive};
