//! The bounded history of hive unload attempts, each with the biggest holders at that
//! moment (the question after a failed unload is "who held it").

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering::Relaxed};

use protocol::history::{MAX_UNLOAD_HOLDERS, UnloadRecord};

use crate::counters::locked_add32;
use crate::lock::{Exclusive, RawLock};
use crate::names::NameRef;
use crate::pool::{BlockClass, Pool, alloc_init, free_block};

/// Size class of a history entry.
pub const ENTRY_CLASS: BlockClass = BlockClass::B512;

/// A holder stored in an entry (the image reference is counted).
#[derive(Clone, Copy, Debug)]
pub struct HistHolder {
    /// Process id.
    pub pid: u64,
    /// Start key.
    pub start_key: u64,
    /// Keys held in the hive.
    pub open_keys: u64,
    /// Image (counted), if known.
    pub image: Option<NameRef>,
}

impl HistHolder {
    /// An unused holder slot.
    pub const EMPTY: Self = Self {
        pid: 0,
        start_key: 0,
        open_keys: 0,
        image: None,
    };
}

/// One unload attempt.
pub struct HistEntry {
    pub(crate) next: AtomicPtr<Self>,
    /// Sequence number (1, 2, …).
    pub sequence: u64,
    /// When (the system time the caller gave).
    pub time: u64,
    /// The caller's interrupt time when the entry was made (the driver's
    /// `KeQueryInterruptTime` count), 0 when not stamped: a reader dates the entry by it
    /// whatever the system clock did meanwhile (review 22d, L3). Only failed or deferred
    /// unloads and held-after entries are stamped; the open and close paths make no entry.
    pub interrupt_time: u64,
    /// NTSTATUS.
    pub outcome: u32,
    /// Hive id, 0 when unknown.
    pub hive_id: u32,
    /// Open keys then.
    pub open_keys: u64,
    /// Holders then.
    pub holders_total: u32,
    /// Protocol flags.
    pub flags: u16,
    /// Stored holders.
    pub n: u16,
    /// Mount as given (counted), if it could be stored.
    pub mount: Option<NameRef>,
    /// The biggest holders.
    pub holders: [HistHolder; MAX_UNLOAD_HOLDERS],
}

impl HistEntry {
    /// An entry at `time` with `outcome` and `flags`, no hive, no holders yet; its sequence
    /// number is given under the history's lock by [`History::push`].
    pub const fn new(time: u64, outcome: u32, flags: u16) -> Self {
        Self {
            next: AtomicPtr::new(ptr::null_mut()),
            sequence: 0,
            time,
            interrupt_time: 0,
            outcome,
            hive_id: 0,
            open_keys: 0,
            holders_total: 0,
            flags,
            n: 0,
            mount: None,
            holders: [HistHolder::EMPTY; MAX_UNLOAD_HOLDERS],
        }
    }
}

/// The history list, newest first, at most `max` entries.
pub struct History<L> {
    lock: L,
    head: AtomicPtr<HistEntry>,
    len: AtomicU32,
    next_seq: AtomicU64,
}

impl<L: RawLock> History<L> {
    /// Empty.
    pub fn new() -> Self {
        Self {
            lock: L::new(),
            head: AtomicPtr::new(ptr::null_mut()),
            len: AtomicU32::new(0),
            next_seq: AtomicU64::new(1),
        }
    }

    /// Takes a sequence number for an event that could not be stored: readers of the
    /// stream see the gap and count it as missed.
    pub fn skip_sequence(&self) {
        self.next_seq.fetch_add(1, Relaxed);
    }

    /// The sequence number of the newest event numbered (stored or not), 0 before the first.
    pub fn last_sequence(&self) -> u64 {
        self.next_seq.load(Relaxed) - 1
    }

    /// Adds a copy of `entry` (its name references move into the copy) under the next
    /// sequence number, taken under the lock so that the list stays in sequence order. On
    /// success returns the evicted entry, if any, for [`History::free_entry`].
    ///
    /// A full list evicts its oldest entry, except that an alarm that would make key-count
    /// alarms more than half of it evicts the oldest alarm instead: alarms push out other
    /// events (failed unloads, held-after checks) only while those hold more than half of
    /// the list. Any user can raise alarms (a few processes opening one key 10,000 times each); without the
    /// cap, 32 of them pushed every failed unload out of `unload-history` (audit,
    /// 2026-12-05). A reader of the stream counts the evicted number as missed either way.
    ///
    /// # Errors
    /// `()` when no block could be had; the caller still owns `entry`'s names then.
    pub fn push<P: Pool>(
        &self,
        pool: &P,
        entry: &HistEntry,
        max: u32,
    ) -> Result<Option<NonNull<HistEntry>>, ()> {
        let copy = HistEntry {
            next: AtomicPtr::new(ptr::null_mut()),
            ..*entry
        };
        let e = alloc_init(pool, ENTRY_CLASS, copy).ok_or(())?;
        let _g = Exclusive::new(&self.lock);
        let sequence = self.next_seq.fetch_add(1, Relaxed);
        // SAFETY: `e` was just allocated and is not linked yet: this is its only reference.
        unsafe { (*e.as_ptr()).sequence = sequence };
        Self::entry(e).next.store(self.head.load(Relaxed), Relaxed);
        self.head.store(e.as_ptr(), Relaxed);
        if self.len.load(Relaxed) < max {
            locked_add32(&self.len, 1);
            return Ok(None);
        }
        if entry.flags & UnloadRecord::KEY_ALARM != 0
            && let Some(oldest_alarm) = self.alarm_over_half(max)
        {
            return Ok(Some(oldest_alarm));
        }
        // Evict the oldest (the list's last entry).
        let mut link = &self.head;
        loop {
            let cur = NonNull::new(link.load(Relaxed));
            match cur {
                Some(c) if !Self::entry(c).next.load(Relaxed).is_null() => {
                    link = &Self::entry(c).next;
                }
                Some(c) => {
                    link.store(ptr::null_mut(), Relaxed);
                    return Ok(Some(c));
                }
                None => return Ok(None),
            }
        }
    }

    /// When key-count alarms are more than half of the `max` entries, the new one counted
    /// (caller holds the lock, the list full), unlinks and returns the oldest of them.
    fn alarm_over_half(&self, max: u32) -> Option<NonNull<HistEntry>> {
        let mut alarms = 0u32;
        let mut oldest: Option<&AtomicPtr<HistEntry>> = None;
        let mut link = &self.head;
        while let Some(c) = NonNull::new(link.load(Relaxed)) {
            if Self::entry(c).flags & UnloadRecord::KEY_ALARM != 0 {
                alarms += 1;
                oldest = Some(link);
            }
            link = &Self::entry(c).next;
        }
        if alarms <= max / 2 {
            return None;
        }
        let link = oldest?;
        let e = NonNull::new(link.load(Relaxed))?;
        link.store(Self::entry(e).next.load(Relaxed), Relaxed);
        Some(e)
    }

    const fn entry<'a>(e: NonNull<HistEntry>) -> &'a HistEntry {
        // SAFETY: entries are freed only after being unlinked under the lock (eviction or
        // teardown); readers hold the lock or own the evicted entry.
        unsafe { e.as_ref() }
    }

    /// Frees an evicted entry after `release` was called on its names.
    pub fn free_entry<P: Pool>(pool: &P, e: NonNull<HistEntry>, mut release: impl FnMut(NameRef)) {
        let entry = Self::entry(e);
        if let Some(m) = entry.mount {
            release(m);
        }
        for h in &entry.holders[..usize::from(entry.n)] {
            if let Some(i) = h.image {
                release(i);
            }
        }
        // SAFETY: the entry is unlinked (evicted or torn down) and owned by the caller.
        unsafe { free_block(pool, ENTRY_CLASS, e) };
    }

    /// Runs `f` under the lock with the newest entry (the list continues through `next`).
    pub fn with_newest<R>(&self, f: impl FnOnce(Option<&HistEntry>) -> R) -> R {
        let _g = Exclusive::new(&self.lock);
        f(NonNull::new(self.head.load(Relaxed)).map(Self::entry))
    }

    /// Calls `f` on each entry, newest first, under the lock; stops when `f` returns false.
    pub fn for_each(&self, mut f: impl FnMut(&HistEntry) -> bool) {
        let _g = Exclusive::new(&self.lock);
        let mut cur = self.head.load(Relaxed);
        while let Some(e) = NonNull::new(cur) {
            let entry = Self::entry(e);
            if !f(entry) {
                return;
            }
            cur = entry.next.load(Relaxed);
        }
    }

    /// Entries now.
    pub fn len(&self) -> u32 {
        self.len.load(Relaxed)
    }

    /// Unlinks every entry, handing each to `f`.
    pub fn drain(&self, mut f: impl FnMut(NonNull<HistEntry>)) {
        let mut cur = self.head.swap(ptr::null_mut(), Relaxed);
        while let Some(e) = NonNull::new(cur) {
            cur = Self::entry(e).next.load(Relaxed);
            f(e);
        }
        self.len.store(0, Relaxed);
    }
}
