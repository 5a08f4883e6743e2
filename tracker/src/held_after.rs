//! Hives looked at again after a failed unload (issue 17).
//!
//! A hive still held the configured delay after its unload failed is an event of the stream
//! ([`UnloadRecord::HELD_AFTER`]), so a collector that was not running at the attempt, or
//! restarted since, still learns it.
//!
//! A failed or deferred attempt on a known hive puts a watch (hive id, the attempt's status, when it is
//! due) in a fixed table of [`MAX_WATCHES`] slots inside the tracker: watching allocates
//! nothing and cannot fail for memory. One watch per hive: a retry while one is pending keeps
//! the first (the delay counts from the first failed attempt of a run of retries). A full
//! table counts the attempt as `held_after_unwatched` and takes a number of the stream for
//! it, so the stream's readers are told they missed one rather than told nothing.
//!
//! The caller's clock is monotonic (the driver's interrupt time, in 100 ns units); the event
//! is stamped with the system time the caller gives. The driver's timer calls
//! [`Tracker::held_after_check`] at the earliest due time, at `DISPATCH_LEVEL`: it takes
//! spin locks and non-paged blocks only.
//!
//! A successful unload of the hive ends its watch (matched by id or by mount name). A
//! watched application or implicit hive the tracker forgot before the check (its last
//! tracked key closed) is reported with [`UnloadRecord::HOLDERS_UNSEEN`]: a key it never saw
//! may hold it. At the due time the hive is reported
//! when it is still loaded (unloaded since: nothing to say) and some process holds a key in
//! it, or the
//! tracker cannot vouch that it saw every open in it (keys opened before tracking began,
//! opens lost): then the record carries [`UnloadRecord::HOLDERS_UNSEEN`]. A hive whose keys
//! are all closed and whose opens were all seen is free: no event.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use protocol::history::UnloadRecord;

use crate::counters::{bump, get};
use crate::history::HistEntry;
use crate::hives::{Hive, hive_of};
use crate::lock::{Exclusive, RawLock};
use crate::names::NameRef;
use crate::pool::Pool;
use crate::tracker::Tracker;
use protocol::holders::{HiveKind, HiveState};

/// Failed unloads watched at once: more hives than a mass logoff of a large terminal server
/// fails to unload within one delay.
pub const MAX_WATCHES: usize = 64;

/// Due watches looked at by one check, at most.
///
/// Each walks the process table for the hive's
/// holders at `DISPATCH_LEVEL` (the driver's timer DPC), and a DPC should be short (docs,
/// "Guidelines for Writing DPC Routines"); the rest stay due and the check says so, so the
/// caller sets its timer again at once.
pub const MAX_PER_CHECK: usize = 4;

/// `STATUS_SUCCESS`: an unload that succeeded is not watched.
const SUCCESS: u32 = 0;

/// 100 ns units in a second.
const SECOND: u64 = 10_000_000;

/// One watched hive (`hive_id` 0: the slot is free).
#[derive(Clone, Copy, Debug, Default)]
struct Watch {
    hive_id: u32,
    outcome: u32,
    due: u64,
    /// The hive's mount point (a counted reference, or none when it could not be had): the
    /// event's name should the hive's record be forgotten before the check.
    mount: Option<NameRef>,
    /// The hive is one the tracker forgets when its last tracked key goes, whether or not
    /// a key it never saw still holds it (an application hive, whose loader's handle may
    /// come with no open notification on some Windows, see `holders_unseen`, or
    /// an implicit one, which may hold keys opened before tracking began): gone at the check, it is reported as possibly held, not as free.
    forgotten_unseen: bool,
}

/// The watch table.
pub struct Watches<L> {
    lock: L,
    slots: UnsafeCell<[Watch; MAX_WATCHES]>,
    /// Slots in use, readable without the lock.
    used: AtomicU32,
}

// SAFETY: `slots` is only touched under `lock`.
unsafe impl<L: RawLock> Sync for Watches<L> {}
#[allow(
    clippy::non_send_fields_in_send_ty,
    reason = "the NameRef in a watch is a counted pointer into the name table, not thread-bound"
)]
// SAFETY: nothing in it is tied to a thread: the name references are counted entries of the
// tracker's name table, released by whichever thread ends the watch.
unsafe impl<L: RawLock> Send for Watches<L> {}

impl<L: RawLock> Default for Watches<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> Watches<L> {
    /// No watch.
    #[must_use]
    pub fn new() -> Self {
        Self {
            lock: L::new(),
            slots: UnsafeCell::new([Watch::default(); MAX_WATCHES]),
            used: AtomicU32::new(0),
        }
    }

    /// Runs `f` on the slots under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut [Watch; MAX_WATCHES], &AtomicU32) -> R) -> R {
        let _g = Exclusive::new(&self.lock);
        // SAFETY: the lock is held: this is the only reference to the slots.
        let slots = unsafe { &mut *self.slots.get() };
        f(slots, &self.used)
    }
}

/// What [`Tracker::held_after_check`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldAfterChecked {
    /// Stream numbers taken (events stored, or numbered and counted missed): wake readers.
    pub events: u32,
    /// When the next watch is due (the caller's clock), if any.
    pub next_due: Option<u64>,
}

fn earliest(slots: &[Watch]) -> Option<u64> {
    slots.iter().filter(|w| w.hive_id != 0).map(|w| w.due).min()
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// An unload of hive `hive_id` (from [`Tracker::unload_attempted`]) ended with `outcome`
    /// at `now` (the caller's monotonic clock): unless it succeeded, or looking again is
    /// turned off, the hive is watched. Returns when the watch is due, for the caller's timer
    /// (an earlier watch of the same hive keeps its due time); `None` when nothing is watched.
    /// A full table is counted and takes a number of the stream (its readers count it missed).
    pub fn watch_held_after(&self, hive_id: u32, outcome: u32, now: u64) -> Option<u64> {
        let secs = self.config.held_after_seconds;
        if secs == 0 || outcome == SUCCESS || hive_id == 0 {
            return None;
        }
        let due = now.saturating_add(secs.saturating_mul(SECOND));
        // Before the table's lock (lock order: the table, then the hive shards).
        let (mount, forgotten_unseen) = self
            .hives
            .with_id(hive_id, |h| {
                let m = h.mount_ref();
                self.names.add_ref(m);
                (
                    Some(m),
                    h.kind == HiveKind::App || h.state() == HiveState::Implicit,
                )
            })
            .unwrap_or((None, false));
        let mut kept = false;
        let watched = self.watches.with(|slots, used| {
            if let Some(w) = slots.iter().find(|w| w.hive_id == hive_id) {
                return Some(w.due);
            }
            let free = slots.iter_mut().find(|w| w.hive_id == 0)?;
            *free = Watch {
                hive_id,
                outcome,
                due,
                mount,
                forgotten_unseen,
            };
            kept = true;
            used.fetch_add(1, Relaxed);
            Some(due)
        });
        if !kept && let Some(m) = mount {
            self.names.release(&self.pool, m);
        }
        if watched.is_none() {
            bump(&self.counters.held_after_unwatched);
            self.history.skip_sequence();
        }
        watched
    }

    /// When the earliest watch is due, if any.
    pub fn next_held_after(&self) -> Option<u64> {
        if self.watches.used.load(Relaxed) == 0 {
            return None;
        }
        self.watches.with(|slots, _| earliest(slots))
    }

    /// Looks at the hives whose watch is due at `now` (the caller's monotonic clock), at most
    /// [`MAX_PER_CHECK`] (the rest stay due: `next_due` is then at or before `now`), and
    /// records a [`UnloadRecord::HELD_AFTER`] event, stamped `time` and `now`, for each still held (see
    /// the module doc).
    ///
    /// The table's lock is held while the due watches' events are recorded, and a successful
    /// unload ends its hive's watch under the same lock before its own record is numbered
    /// ([`Tracker::unwatch_unloaded`]): a held-after record is numbered before the success
    /// of its hive's unload or not at all. (Lock order: the watch table, then the hive,
    /// process and history locks; nothing takes the table's lock holding those.)
    pub fn held_after_check(&self, now: u64, time: u64) -> HeldAfterChecked {
        if self.watches.used.load(Relaxed) == 0 {
            return HeldAfterChecked::default();
        }
        self.watches.with(|slots, used| {
            let mut events = 0;
            let due = slots.iter_mut().filter(|w| w.hive_id != 0 && w.due <= now);
            for w in due.take(MAX_PER_CHECK) {
                let watch = *w;
                *w = Watch::default();
                used.fetch_sub(1, Relaxed);
                events += u32::from(self.held_after_event(watch, time, now));
            }
            HeldAfterChecked {
                events,
                next_due: earliest(slots),
            }
        })
    }

    /// An unload of the hive mounted at `mount` (id `hive_id`, 0 when its record was gone)
    /// succeeded: its watches end (it is not held any more; their slots are free for the next
    /// failed unload). Called before the success is numbered. Matched by id, and by mount
    /// name too: a watched hive the tracker forgot (or made again under another id) before
    /// this success would otherwise be reported held after it (found in review).
    pub(crate) fn unwatch_unloaded(&self, hive_id: u32, mount: &[u16]) {
        if self.watches.used.load(Relaxed) == 0 {
            return;
        }
        let mut ended: [Option<NameRef>; MAX_WATCHES] = [None; MAX_WATCHES];
        self.watches.with(|slots, used| {
            for (w, out) in slots.iter_mut().zip(ended.iter_mut()) {
                let same_mount = w.mount.is_some_and(|m| {
                    crate::names::eq_fold(crate::names::name_of(m).units(), mount)
                });
                if w.hive_id != 0 && ((hive_id != 0 && w.hive_id == hive_id) || same_mount) {
                    *out = w.mount;
                    *w = Watch::default();
                    used.fetch_sub(1, Relaxed);
                }
            }
        });
        for m in ended.into_iter().flatten() {
            self.names.release(&self.pool, m);
        }
    }

    /// Whether the tracker cannot vouch that it saw every open in `hive`: opens lost, or the
    /// hive loaded before tracking began (or at an unknown time), so keys opened before may
    /// still be held unseen.
    ///
    /// An application hive is never vouched for: the handle its loader gets
    /// (`RegLoadAppKey`, `NtLoadKeyEx` with a root handle) is opened by the registry manager,
    /// an open Learn implies filters see ("Filtering Registry Operations on Application
    /// Hives"; the emulator's `td-app-hive` since 2026-12-05), but no Windows run has shown
    /// every version announces it, and one it did not would hold the hive unseen.
    pub(crate) fn holders_unseen(&self, hive: &Hive) -> bool {
        let since = get(&self.counters.tracking_since);
        let loaded = hive.loaded_time();
        hive.kind == HiveKind::App
            || !self.completeness(hive).nothing_lost()
            || loaded == 0
            || loaded < since
    }

    /// Records the event of one due watch (its mount reference is used or released here),
    /// stamped `time` (system) and `now` (the caller's monotonic clock, the driver's interrupt
    /// time); true when it took a stream number.
    fn held_after_event(&self, w: Watch, time: u64, now: u64) -> bool {
        let Some(h) = self.hives.pin_live_id(w.hive_id) else {
            return self.held_after_gone(w, time, now);
        };
        if let Some(m) = w.mount {
            self.names.release(&self.pool, m);
        }
        let hive = hive_of(h);
        let open_keys = hive.open_keys.load(Relaxed);
        let unseen = self.holders_unseen(hive);
        if open_keys == 0 && hive.holders.load(Relaxed) == 0 && !unseen {
            self.hives.unpin(&self.pool, &self.names, h, self.vouch());
            return false; // free, and every open in it was seen
        }
        let mount = self.hives.with_locked(h, |hive| {
            let m = hive.mount_ref();
            self.names.add_ref(m);
            m
        });
        let mut entry = HistEntry::new(time, w.outcome, UnloadRecord::HELD_AFTER);
        entry.interrupt_time = now;
        entry.hive_id = w.hive_id;
        entry.open_keys = open_keys;
        entry.mount = Some(mount);
        if unseen {
            entry.flags |= UnloadRecord::HOLDERS_UNSEEN;
        }
        self.collect_holders(h, None, &mut entry);
        self.hives.unpin(&self.pool, &self.names, h, self.vouch());
        // Not stored (no memory): its number is taken all the same (readers count it
        // missed), and it counts as a failed unload not looked at again.
        if self.record_event(&entry) {
            bump(&self.counters.held_after_events);
        } else {
            bump(&self.counters.held_after_unwatched);
        }
        true
    }

    /// A watched hive whose record is gone at the check. Unloaded (a deferred unload the
    /// tracker vouched for), it is free: no event. Forgotten when its last tracked key went
    /// ([`Watch::forgotten_unseen`]), it may still be held by a key the tracker never saw: the
    /// event says so ([`UnloadRecord::HOLDERS_UNSEEN`], no holder known). Until 2026-12-04
    /// both were taken as free (found in review).
    fn held_after_gone(&self, w: Watch, time: u64, now: u64) -> bool {
        let Some(mount) = w.mount else {
            return false;
        };
        if !w.forgotten_unseen {
            self.names.release(&self.pool, mount);
            return false;
        }
        let mut entry = HistEntry::new(time, w.outcome, UnloadRecord::HELD_AFTER);
        entry.interrupt_time = now;
        entry.hive_id = w.hive_id;
        entry.flags |= UnloadRecord::HOLDERS_UNSEEN;
        entry.mount = Some(mount);
        if self.record_event(&entry) {
            bump(&self.counters.held_after_events);
        } else {
            bump(&self.counters.held_after_unwatched);
        }
        true
    }

    /// Releases the watches' name references (teardown).
    pub(crate) fn drop_watches(&mut self) {
        let slots = self.watches.slots.get_mut();
        for w in slots.iter_mut() {
            if let Some(m) = w.mount.take() {
                self.names.release(&self.pool, m);
            }
        }
    }
}
