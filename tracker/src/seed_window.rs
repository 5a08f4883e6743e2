//! Unloads seen while a seed reads the hive list (the start-up one, or a later one that
//! completes a start-up seed that was not whole).
//!
//! The driver registers its registry callback and then reads
//! `HKLM\SYSTEM\CurrentControlSet\Control\hivelist` value by value (the hives loaded before
//! it), recording each as loaded. An unload can run on another thread between reading a
//! hive's value and recording it: the unload's notification then finds no record (nothing
//! to retire), and the seed records afterwards a hive that is gone, listed as loaded for the
//! driver's life (review 18d). While the window is open, each unload (or deferred unload)
//! leaves a mark — its mount's folded hash, written under the mount's hive-shard lock — and
//! a seeded load of a marked mount is not recorded; the load is checked under the same lock,
//! so either the unload found the record or the seed finds the mark.
//!
//! A false match (two mounts with one hash) leaves a loaded hive unrecorded: its keys are
//! then tracked under an implicit hive, which no report calls complete, so it is never a
//! wrong answer. Past [`MARKS`] unloads in the window every seeded load counts as marked, for
//! the same reason, and the overflow is counted when the window closes.
//!
//! The count of marks also tells the seed whether any unload ran during its read: an
//! unload deletes its value from the list and the values after it move down one index
//! (WRK `base/ntos/config/cmvalue.c` `CmpRemoveValueFromList` squeezes the list; `cmhvlist.c`
//! `CmpRemoveFromHiveFileList` deletes the value), so a read by index can skip a hive that
//! is still loaded; the seed reads the list again then.
//!
//! A seed that was not whole may be done again later ([`SeedWindow::reopen`], at
//! `PASSIVE_LEVEL` outside any callback), while callbacks run. The counts are never reset:
//! a window covers the unloads from its `base` on, so an unload that took its index before
//! the window reopened (a straggler of the earlier window, still in [`SeedWindow::note_unload`])
//! writes a slot no reader of the new window looks at, and every unload of the new window
//! has a slot of its own.

use core::sync::atomic::{
    AtomicBool, AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::names::hash_seeded;

/// How many unloads the window tells apart; more is taken as "any mount may be gone".
pub const MARKS: usize = 16;

/// The marks of unloads seen while the seed runs, and whether the seed knows every hive
/// loaded before tracking.
pub struct SeedWindow {
    open: AtomicBool,
    /// Unloads noted since the tracker was made (never reset; wraps).
    count: AtomicU32,
    /// `count` when the window last opened: the window's unloads are `base..count`.
    base: AtomicU32,
    marks: [AtomicU32; MARKS],
    /// Loads seen while the window is open.
    loads: AtomicU32,
    /// False from [`SeedWindow::begin`] until a seed that read the whole list closes the
    /// window. While false, a hive loaded before tracking may be unknown to the tracker,
    /// and a load at its mount (the same file loaded again, which Windows answers with
    /// success) cannot be told from a fresh one: no load is given a time that would vouch
    /// for every key of its hive (review 19c, B1).
    complete: AtomicBool,
}

impl Default for SeedWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// A mark's value for `mount` under the name table's per-boot key (no one can make two mounts
/// collide on purpose): never 0, which means "not yet written".
fn mark_of(mount: &[u16], key: u64) -> u32 {
    hash_seeded(mount, key).max(1)
}

impl SeedWindow {
    /// An open window (the tracker is made before the callback is registered).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            open: AtomicBool::new(true),
            count: AtomicU32::new(0),
            base: AtomicU32::new(0),
            marks: [const { AtomicU32::new(0) }; MARKS],
            loads: AtomicU32::new(0),
            complete: AtomicBool::new(true),
        }
    }

    /// A seed is to come (the driver, before it registers its callback): until it closes
    /// the window having read the whole list, loads are given no time ([`Self::complete`]).
    pub fn begin(&self) {
        self.complete.store(false, Relaxed);
    }

    /// Opens the window again for a later seed that may complete one that was not whole: the
    /// marks of the unloads from now on are read, the earlier ones are not. Returns false
    /// (and opens nothing) when the seed is complete already. One seed at a time (the caller
    /// keeps a second from starting while one runs).
    pub fn reopen(&self) -> bool {
        if self.complete() {
            return false;
        }
        self.base.store(self.count.load(Relaxed), Relaxed);
        // Release: an unload that sees the window open sees its base. An unload whose value
        // the seed reads after this store notes its mark after it too: the kernel deletes
        // the value before the unload's post (WRK `cmapi.c` CmUnloadKey), under the registry
        // lock the read takes.
        self.open.store(true, Release);
        true
    }

    /// The unloads of the window now (past [`MARKS`]: every mount counts as unloaded).
    fn in_window(&self) -> usize {
        self.count
            .load(Relaxed)
            .wrapping_sub(self.base.load(Relaxed)) as usize
    }

    /// Whether every hive loaded before tracking is known (no seed was begun, or one read
    /// the whole list).
    #[must_use]
    pub fn complete(&self) -> bool {
        self.complete.load(Relaxed)
    }

    /// Marks an unload (or deferred unload) of `mount`, while the window is open. Called
    /// under `mount`'s hive-shard lock.
    pub fn note_unload(&self, mount: &[u16], key: u64) {
        if !self.open.load(Acquire) {
            return;
        }
        let i = self.count.fetch_add(1, Relaxed);
        // An index taken before the window reopened falls outside it (a huge offset).
        let slot = i.wrapping_sub(self.base.load(Relaxed)) as usize;
        if let Some(m) = self.marks.get(slot) {
            m.store(mark_of(mount, key), Relaxed);
        }
    }

    /// Whether a seeded load of `mount` must be left unrecorded: an unload of it (or of
    /// some mount, past [`MARKS`]) was seen in the window. Called under `mount`'s hive-shard
    /// lock, so a mark its unload wrote under that lock is seen.
    #[must_use]
    pub fn unloaded(&self, mount: &[u16], key: u64) -> bool {
        let n = self.in_window();
        if n > MARKS {
            return true;
        }
        let mark = mark_of(mount, key);
        self.marks[..n].iter().any(|m| m.load(Relaxed) == mark)
    }

    /// How many unloads the window has seen: the seed reads the list again when it changed
    /// during a read.
    #[must_use]
    pub fn unloads(&self) -> u32 {
        u32::try_from(self.in_window()).unwrap_or(u32::MAX)
    }

    /// Notes a load seen while the window is open (it adds a value to the list).
    pub fn note_load(&self) {
        if self.open.load(Relaxed) {
            self.loads.fetch_add(1, Relaxed);
        }
    }

    /// How many loads and unloads the window has seen: two reads of the list that agree prove
    /// it whole only if none was seen from the start of the first to the end of the second
    /// (review 19c, C1: an unload during one read and a load during the other can leave two
    /// reads alike that both skipped a hive).
    #[must_use]
    pub fn changes(&self) -> u32 {
        self.count
            .load(Relaxed)
            .wrapping_add(self.loads.load(Relaxed))
    }

    /// Closes the window: the seed is over, and later unloads leave no mark. `whole`: it read
    /// every value of the list. Returns whether the marks overflowed (every hive read after
    /// that was left unrecorded: the caller counts it, and the seed is not complete).
    pub fn close(&self, whole: bool) -> bool {
        self.open.store(false, Relaxed);
        let overflowed = self.in_window() > MARKS;
        if whole && !overflowed {
            self.complete.store(true, Relaxed);
        }
        overflowed
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_begun_seed_is_complete_only_when_it_read_the_whole_list() {
        let s = super::SeedWindow::new();
        assert!(s.complete(), "no seed begun: nothing to miss");
        s.begin();
        assert!(!s.complete());
        assert!(!s.close(false));
        assert!(!s.complete(), "a value not read keeps it incomplete");
        let s = super::SeedWindow::new();
        s.begin();
        assert!(!s.close(true));
        assert!(s.complete());
    }

    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn a_marked_mount_is_left_unrecorded_in_any_case() {
        let s = SeedWindow::new();
        s.note_unload(&w(r"\REGISTRY\USER\S-1-5-21-1"), 7);
        assert!(s.unloaded(&w(r"\Registry\User\s-1-5-21-1"), 7));
        assert!(!s.unloaded(&w(r"\REGISTRY\USER\S-1-5-21-2"), 7));
        assert_eq!(s.unloads(), 1);
        assert!(!s.close(true));
    }

    #[test]
    fn past_the_marks_every_mount_counts_as_unloaded() {
        let s = SeedWindow::new();
        for i in 0..=MARKS {
            s.note_unload(&w(&format!(r"\REGISTRY\A\{i}")), 7);
        }
        assert!(s.unloaded(&w(r"\REGISTRY\MACHINE\SOFTWARE"), 7));
        s.begin();
        assert!(
            s.close(true),
            "the overflow is reported when the window closes"
        );
        assert!(!s.complete(), "and the seed is not complete");
    }

    #[test]
    fn a_reopened_window_reads_only_its_own_unloads() {
        let s = SeedWindow::new();
        s.begin();
        s.note_unload(&w(r"\REGISTRY\USER\OLD"), 7);
        assert!(!s.close(false));
        assert!(!s.complete());
        assert!(s.reopen(), "a seed not whole can be done again");
        assert!(
            !s.unloaded(&w(r"\REGISTRY\USER\OLD"), 7),
            "an unload before the window reopened is not in it"
        );
        s.note_unload(&w(r"\REGISTRY\USER\NEW"), 7);
        assert!(s.unloaded(&w(r"\REGISTRY\USER\NEW"), 7));
        for i in 0..MARKS {
            s.note_unload(&w(&format!(r"\REGISTRY\A\{i}")), 7);
        }
        assert!(s.close(true), "past the marks of this window");
        assert!(!s.complete());
        assert!(s.reopen());
        assert!(!s.unloaded(&w(r"\REGISTRY\USER\NEW"), 7));
        assert!(!s.close(true));
        assert!(s.complete(), "a whole later read completes the seed");
        assert!(!s.reopen(), "nothing to do once complete");
    }

    #[test]
    fn a_closed_window_marks_nothing() {
        let s = SeedWindow::new();
        assert!(!s.close(true));
        s.note_unload(&w(r"\REGISTRY\USER\X"), 7);
        assert!(!s.unloaded(&w(r"\REGISTRY\USER\X"), 7));
        assert_eq!(s.unloads(), 0);
    }
}
