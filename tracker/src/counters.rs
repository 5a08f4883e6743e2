//! Completeness counters: every event the tracker could not record fully is counted under
//! a name, and [`crate::Tracker::stats`] reports them (their sum goes into every page as
//! `not_recorded`). They are touched only on failures and rare events, never on the
//! successful open/close path, so they do not contend.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One counter per loss or rare event; see [`protocol::stats::Stats`] for the meanings.
#[derive(Default)]
#[allow(
    missing_docs,
    reason = "each field is documented on the Stats field of the same name"
)]
pub struct Counters {
    pub hive_loads_seen: AtomicU64,
    pub hive_unloads_seen: AtomicU64,
    pub unload_attempts_seen: AtomicU64,
    pub process_exits_seen: AtomicU64,
    pub closes_exceeding_opens: AtomicU64,
    pub keys_not_cached: AtomicU64,
    pub opens_dropped_cap: AtomicU64,
    pub opens_dropped_no_memory_object: AtomicU64,
    pub opens_dropped_no_memory_process: AtomicU64,
    pub opens_dropped_no_memory_hive: AtomicU64,
    pub opens_dropped_no_memory_holding: AtomicU64,
    pub names_dropped_no_memory: AtomicU64,
    pub names_unavailable: AtomicU64,
    /// 1 while the hive list has not been read whole (a seed not whole, or its marks
    /// overflowed): reported inside `names_unavailable`, and withdrawn by a later seed that
    /// reads the whole list ([`crate::seed_window`]).
    pub seed_unread: AtomicU64,
    pub names_truncated: AtomicU64,
    pub images_dropped_no_memory: AtomicU64,
    pub closes_unknown_object: AtomicU64,
    pub destroys_unknown_object: AtomicU64,
    pub objects_abandoned: AtomicU64,
    pub hive_loads_dropped_no_memory: AtomicU64,
    /// 1 while the refresh under way (live tracking off) could not record a hive it found.
    pub refresh_unrecorded: AtomicU64,
    /// 1 when the last refresh over could not record one: a hive that stays unrecordable is
    /// counted in `hive_loads_dropped_no_memory` once, not at every refresh (review 22a, L4).
    pub refresh_unrecorded_last: AtomicU64,
    pub unloads_unknown_hive: AtomicU64,
    pub process_exits_unknown: AtomicU64,
    pub history_dropped_no_memory: AtomicU64,
    pub history_holders_truncated: AtomicU64,
    pub holdings: AtomicU64,
    /// When live tracking began (FILETIME; 0 = not yet).
    pub tracking_since: AtomicU64,
    /// Opens lost whose hive is unknown (see `crate::losses`).
    pub global_lost: AtomicU64,
    /// When the first of them happened.
    pub global_lost_since: AtomicU64,
    pub opens_dropped_process_share: AtomicU64,
    pub opens_dropped_no_name: AtomicU64,
    pub stacks_captured: AtomicU64,
    pub stacks_empty: AtomicU64,
    pub stacks_dropped: AtomicU64,
    pub image_loads_seen: AtomicU64,
    pub modules_dropped: AtomicU64,
    pub key_alarms: AtomicU64,
    pub held_after_events: AtomicU64,
    pub held_after_unwatched: AtomicU64,
    /// Bumped when something the driver must act on happened inside an open: an event (a
    /// key-count alarm) was recorded, or a process record was made without its image.
    pub attention: AtomicU64,
    /// Module records kept now (a gauge).
    pub modules: AtomicU64,
}

/// Adds one.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Reads.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// Adds to a `u32` only ever written under one lock, which the caller holds: a plain load
/// and store (no locked instruction on the hot path).
pub fn locked_add32(a: &core::sync::atomic::AtomicU32, delta: u32) {
    a.store(a.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// Subtracts from a `u32` written only under the lock the caller holds; returns the old value.
pub fn locked_sub32(a: &core::sync::atomic::AtomicU32, delta: u32) -> u32 {
    let old = a.load(Relaxed);
    a.store(old.wrapping_sub(delta), Relaxed);
    old
}

/// Adds to a `u64` written only under the lock the caller holds.
pub fn locked_add64(a: &AtomicU64, delta: u64) {
    a.store(a.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// Subtracts from a `u64` written only under the lock the caller holds.
pub fn locked_sub64(a: &AtomicU64, delta: u64) {
    a.store(a.load(Relaxed).wrapping_sub(delta), Relaxed);
}

/// Drops one of reference count `count` without a lock while more than one is left, and says
/// so; `false` when what is left may be the last, which the caller then drops under the lock
/// that new references are taken under (so the count never reaches zero behind a taker's
/// back). Release on the decrement orders the holder's reads before a later free.
pub fn release_unless_last(count: &core::sync::atomic::AtomicU32) -> bool {
    let mut n = count.load(Relaxed);
    while n > 1 {
        match count.compare_exchange_weak(n, n - 1, core::sync::atomic::Ordering::Release, Relaxed)
        {
            Ok(_) => return true,
            Err(now) => n = now,
        }
    }
    false
}
