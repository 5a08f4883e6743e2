//! The hive-free test behind the driver's wait-free request: which hive a path names, and
//! whether any process still holds a key in it.
//!
//! A hive is free when no tracked key object lies in it and no process holds it, or when it
//! has been unloaded (a hive the tracker has forgotten was unloaded and then released). The
//! test reads the hive's counters under its shard lock, so it costs one walk of that
//! shard's lists (the [`WatchedHive`] says which: walking every shard, under the driver's
//! wait-table lock, on every key cleanup while a wait is pending, cost 311 us with 20,000
//! hives: audit 2026-12-05); the driver runs it only while a wait is pending.

use core::sync::atomic::Ordering::Relaxed;

use protocol::holders::HiveState;

use crate::hives::Hive;
use crate::lock::RawLock;
use crate::pool::Pool;
use crate::tracker::Tracker;

/// The hive a wait watches: its id, and the shard of the hive table it is in (a hive
/// never changes shard), so that the test walks that shard alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedHive {
    /// The hive's id (as in the protocol's records).
    pub id: u32,
    /// Its shard in the hive table (a wrong one only makes the hive look unloaded).
    pub shard: u32,
}

impl WatchedHive {
    /// No hive (an unused wait slot).
    pub const NONE: Self = Self { id: 0, shard: 0 };
}

/// What a wait sees of its hive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiveFree {
    /// Some process still holds a key in it.
    Held,
    /// Nobody holds a key in it.
    Free,
    /// It was unloaded.
    Unloaded,
}

fn state_of(h: &Hive) -> HiveFree {
    if h.state() == HiveState::Unloaded {
        HiveFree::Unloaded
    } else if h.open_keys.load(Relaxed) == 0 && h.holders.load(Relaxed) == 0 {
        HiveFree::Free
    } else {
        HiveFree::Held
    }
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// The loaded (or implicit) hive that contains `path` — its mount point or any key path
    /// inside it —, as its id and whether it is free now. `None` when no known hive
    /// contains the path (nothing is created).
    pub fn watch_hive(&self, path: &[u16]) -> Option<(WatchedHive, HiveFree)> {
        let h = self
            .hives
            .resolve(&self.pool, &self.names, path, false)
            .ok()
            .flatten()?;
        let seen = self.hives.with_locked(h, |hive| {
            let watched = WatchedHive {
                id: hive.id,
                shard: hive.shard,
            };
            (watched, state_of(hive))
        });
        self.hives.unpin(&self.pool, &self.names, h, self.vouch());
        Some(seen)
    }

    /// Whether `hive` (from [`Tracker::watch_hive`]) is free now: one walk of its shard.
    pub fn hive_free(&self, hive: WatchedHive) -> HiveFree {
        self.hives
            .with_id_in(hive.shard, hive.id, state_of)
            .unwrap_or(HiveFree::Unloaded)
    }
}
