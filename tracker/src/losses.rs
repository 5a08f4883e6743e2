//! Losses attributed to the hive they concern, and since when tracking runs.
//!
//! An open the tracker cannot record makes reports incomplete, but only reports about the
//! hive it was in: it is counted on that hive's record when its path is known (the hive is
//! looked up, never created, so counting allocates nothing), and in a global account only
//! when no hive can be named (then every hive's report says so), or when the record of an
//! application hive that kept losses is forgotten to make room (its losses move there). A
//! hive's account lives on its record: when the hive is unloaded its key objects are all
//! gone, and a new load makes a new record with an empty account, so a loss ages out with
//! the hive it concerns.
//! Detail losses that leave the object tracked (a name cut or not stored) are flagged on
//! that key and do not make the hive's list incomplete.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use protocol::completeness::Completeness;

use crate::counters::{bump, get};
use crate::hives::{Hive, Vouch, hive_of};
use crate::lock::RawLock;
use crate::pool::Pool;
use crate::tracker::Tracker;

/// Counts one loss in `(count, since)`, stamping the first one with `time`.
pub fn count(lost: &AtomicU64, since: &AtomicU64, time: u64) {
    bump(lost);
    let _ = since.compare_exchange(0, time.max(1), Relaxed, Relaxed);
}

/// Adds `n` losses, the first of them at `first` (0: not known), to (`lost`, `since`):
/// `since` keeps the earliest.
pub fn fold(lost: &AtomicU64, since: &AtomicU64, n: u64, first: u64) {
    lost.fetch_add(n, Relaxed);
    let first = first.max(1);
    let _ = since.fetch_update(Relaxed, Relaxed, |cur| {
        (cur == 0 || first < cur).then_some(first)
    });
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// Live tracking began at `time` (the callback is registered): reports say so.
    pub fn tracking_started(&self, time: u64) {
        self.counters.tracking_since.store(time.max(1), Relaxed);
    }

    /// When live tracking began (0 = it has not).
    pub fn tracking_since(&self) -> u64 {
        get(&self.counters.tracking_since)
    }

    /// An open in the key at `path` could not be recorded: counted against the hive that
    /// contains `path`, or globally when no known hive does (or `path` is empty).
    pub fn open_lost(&self, path: &[u16], time: u64) {
        let hive = if path.is_empty() {
            None
        } else {
            self.hives
                .resolve(&self.pool, &self.names, path, false)
                .ok()
                .flatten()
        };
        match hive {
            Some(h) => {
                let hv = hive_of(h);
                count(&hv.lost, &hv.lost_since, time);
                self.hives.unpin(&self.pool, &self.names, h, self.vouch());
            }
            None => self.lost_globally(time),
        }
    }

    /// Since when the tracker has seen every open in any hive (see [`Vouch`]).
    pub(crate) fn vouch(&self) -> Vouch {
        let since = get(&self.counters.tracking_since);
        Vouch((since != 0 && get(&self.counters.global_lost) == 0).then_some(since))
    }

    /// A loss whose hive cannot be known.
    pub fn lost_globally(&self, time: u64) {
        count(
            &self.counters.global_lost,
            &self.counters.global_lost_since,
            time,
        );
    }

    /// The completeness of an answer about `hive`.
    pub(crate) fn completeness(&self, hive: &Hive) -> Completeness {
        Completeness {
            tracking_since: get(&self.counters.tracking_since),
            hive_lost: hive.lost.load(Relaxed),
            hive_lost_since: hive.lost_since.load(Relaxed),
            global_lost: get(&self.counters.global_lost),
            global_lost_since: get(&self.counters.global_lost_since),
        }
    }

    /// The completeness of an answer about the hive with `id` (a wait on a hive that is
    /// gone: its losses went with it).
    pub fn completeness_of(&self, id: u32) -> Completeness {
        self.hives
            .with_id(id, |h| self.completeness(h))
            .unwrap_or_else(|| Completeness {
                tracking_since: get(&self.counters.tracking_since),
                global_lost: get(&self.counters.global_lost),
                global_lost_since: get(&self.counters.global_lost_since),
                ..Completeness::default()
            })
    }
}
