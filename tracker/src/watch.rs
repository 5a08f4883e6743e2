//! The hive-free test behind the driver's wait-free request: which hive a path names, and
//! whether any process still holds a key in it.
//!
//! A hive is free when no tracked key object lies in it and no process holds it, or when it
//! has been unloaded (a hive the tracker has forgotten was unloaded and then released). The
//! test reads the hive's counters under its shard lock, so it costs one shard walk: the
//! driver runs it only while a wait is pending.

use core::sync::atomic::Ordering::Relaxed;

use protocol::holders::HiveState;

use crate::hives::Hive;
use crate::lock::RawLock;
use crate::pool::Pool;
use crate::tracker::Tracker;

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
    pub fn watch_hive(&self, path: &[u16]) -> Option<(u32, HiveFree)> {
        let h = self
            .hives
            .resolve(&self.pool, &self.names, path, false)
            .ok()
            .flatten()?;
        let seen = self.hives.with_locked(h, |hive| (hive.id, state_of(hive)));
        self.hives.unpin(&self.pool, &self.names, h, self.vouch());
        Some(seen)
    }

    /// Whether the hive with `id` (from [`Tracker::watch_hive`]) is free now.
    pub fn hive_free(&self, id: u32) -> HiveFree {
        self.hives
            .with_id(id, state_of)
            .unwrap_or(HiveFree::Unloaded)
    }
}
