//! The key cache: the kernel's key id of a key with tracked objects → its name (a private
//! copy, [`NameTable::store_private`]: the cache shares it by id, not by name).
//!
//! An open of a key already held needs neither the key's name from the kernel (which builds
//! and allocates it each time) nor a hash and compare of the whole name to intern it.
//!
//! The id is the `ObjectID` of `CmCallbackGetKeyObjectIDEx` (Learn, Remarks: identical for
//! every object of one key, unchanged when the key is renamed, "unique across all keys in
//! the registry"). Nothing promises that an id outlives its key's objects (on Windows it is
//! the key control block's address, freed once no key object refers to it; the kernel
//! emulator's `td-key-id` reuses it at once), so an entry lives exactly as long as tracked
//! objects opened through it do: each tracked record counts on its entry, and the last one
//! to go frees it. While a record of the key lives, its key object does, and so does the id.
//!
//! A rename changes the name of the key and of every key below it, whose ids do not change.
//! Its pre-notification starts a new epoch and marks a rename in flight; its post starts
//! another and ends it. An entry from an older epoch is not trusted: the next open of its key
//! fetches the name again and refreshes the entry. The epoch is read before the name is
//! fetched, so a name fetched across a rename is stored under an older epoch; and a name
//! fetched while a rename is in flight (it may be the old name or the new) is not cached at
//! all, or an open of the new path between the rename and its post would be filed under the
//! old name (found in review). A post that never comes leaves caching off: safe, only slower.
//!
//! A rename the driver is not told of is possible: a registry call a filter makes inside its
//! own callback reaches only the callbacks below it (Learn, "Supporting Layered Registry
//! Filtering Drivers": "the configuration manager does not restart at the top of the filter
//! stack"), so a lower filter's `ZwRenameKey` renames keys under unchanged ids with no
//! notification here. A cached name is therefore trusted for at most [`MAX_NAME_AGE`] after
//! it was fetched: the next open of its key after that fetches the name again and refreshes
//! the entry. Opens within that second after such a rename are filed under the old name, as
//! objects opened before any rename keep theirs (fidelity audit, 2026-12-05; the kernel
//! emulator's `hidden-rename`). A clock set back counts as stale too.
//!
//! The hive is not pinned: an entry holding a reference would keep the hive record past its
//! last key (an idle implicit hive stays listed, a pending unload is never taken as done),
//! and the records opened through one entry may even be in different hive records (a hive
//! unloaded and loaded again while a key object of the old one lives). An entry keeps a
//! [`HiveHint`] instead: where its name resolved and that hive shard's generation then. An
//! open of the key takes the hint's hive while the shard's live list is unchanged, and
//! resolves the cached name otherwise (the path lookup was most of a held key's open).
//!
//! Sharded by id, each shard with its own lock and a bucket array allocated on first use.
//! A failed allocation only means the key is not cached (its opens fetch names as before).

use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicPtr, AtomicU16, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use crate::counters::{locked_add32, locked_sub32, release_unless_last};
use crate::hives::{Hive, HiveHint};
use crate::lock::{Exclusive, RawLock, Shared};
use crate::names::{NameRef, NameTable};
use crate::pool::{BlockClass, Pool};

/// How long a cached name is trusted after it was fetched, in 100 ns units: one second.
pub const MAX_NAME_AGE: u64 = 10_000_000;

/// True when a name fetched at `fetched` is too old to trust at `time`, or `time` is that far
/// before it (the clock was set back). Two opens racing read times a little out of order:
/// that is neither (review 16: `time < fetched` by a hair made an older name replace a
/// newer one in [`KeyCache::insert`]).
const fn too_old(time: u64, fetched: u64) -> bool {
    time.abs_diff(fetched) > MAX_NAME_AGE
}

/// A hive shard index as stored in an entry (hive shards number fewer than 2^16).
#[allow(
    clippy::cast_possible_truncation,
    reason = "hive shard indices are below crate::hives' SHARDS (16)"
)]
const fn shard16(shard: u32) -> u16 {
    shard as u16
}

/// Shards of the cache.
const SHARDS: usize = 64;
/// Buckets per shard (one 4 KiB block of pointers).
const BUCKETS: usize = BlockClass::B4096.size() / size_of::<usize>();

/// One cached key: 64 bytes, in a 64-byte block (the last word holds the hint's shard and
/// the deleted mark, 16 bits each, and the objects count).
#[repr(C)]
pub struct KeyEntry {
    next: AtomicPtr<Self>,
    id: u64,
    /// The key's name (one counted reference, the entry's own).
    name: AtomicPtr<crate::names::NameEntry>,
    /// The epoch its name was fetched in.
    epoch: AtomicU64,
    /// When its name was fetched (the time of the open that fetched it).
    fetched: AtomicU64,
    /// Where its name resolved ([`HiveHint`]; null hive: none): not a reference, only
    /// trusted while the hive shard's generation is unchanged. Read and written under this
    /// entry's shard lock.
    hint_hive: AtomicPtr<Hive>,
    hint_generation: AtomicU64,
    /// The hint's hive shard (fewer than 2^16).
    hint_shard: AtomicU16,
    /// Nonzero once the key was deleted ([`KeyCache::mark_deleted`]): its objects live on,
    /// holding the hive, but the kernel's own list of open keys no longer has them.
    deleted: AtomicU16,
    /// Tracked records opened through this entry, and opens between lookup and link. Taken
    /// under the shard lock only; given back without it unless it may be the last.
    objects: AtomicU32,
}

const _: () = assert!(size_of::<KeyEntry>() <= BlockClass::B64.size());

/// What a cache entry costs the budget (charged to the process whose open created it, as a
/// name entry is).
pub const ENTRY_COST: u64 = crate::budget::pool_cost(BlockClass::B64.size());

/// A counted use of a cache entry, from [`KeyCache::lookup`] or [`KeyCache::insert`]: given
/// back with [`KeyCache::release`] (through the record it ends up in, or at once when the
/// open is not tracked).
pub type KeyRef = NonNull<KeyEntry>;

/// What a hit gives: the entry (counted) and its name (a reference of the caller's own).
pub struct KeyHit {
    /// The entry, counted for the caller.
    pub entry: KeyRef,
    /// The key's name, with a reference taken for the caller.
    pub name: NameRef,
    /// Where the name resolved last, if known.
    pub hint: Option<HiveHint>,
    /// The entry's epoch (for [`KeyCache::set_hint`]).
    pub epoch: u64,
}

/// A lookup that found nothing current.
///
/// It carries the id, the epoch read before the name is fetched (what [`KeyCache::insert`]
/// stores the name under), and whether a rename was in flight then (the name is then not
/// cached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMiss {
    pub(crate) id: u64,
    pub(crate) epoch: u64,
    pub(crate) renaming: bool,
    /// The time of the open (read before the name is fetched).
    pub(crate) time: u64,
}

impl KeyMiss {
    /// Whether the name fetched for this miss may be cached.
    #[must_use]
    pub const fn cacheable(&self) -> bool {
        !self.renaming
    }
}

/// The rename state word: renames in flight in the top 16 bits, the epoch below.
const RENAMING_ONE: u64 = 1 << 48;
const EPOCH_MASK: u64 = RENAMING_ONE - 1;
/// The most renames counted in flight (the count saturates there).
const EPOCH_LIMIT_RENAMES: u64 = u16::MAX as u64;

struct Shard<L> {
    lock: L,
    buckets: AtomicPtr<AtomicPtr<KeyEntry>>,
    count: AtomicU32,
}

/// The cache.
pub struct KeyCache<L> {
    shards: [Shard<L>; SHARDS],
    /// Renames in flight and the epoch ([`RENAMING_ONE`], [`EPOCH_MASK`]).
    state: AtomicU64,
}

const fn mix(id: u64) -> u64 {
    // Key ids are addresses: the low bits are alignment, the high bits constant.
    (id ^ (id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<L: RawLock> Default for KeyCache<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> KeyCache<L> {
    /// An empty cache (allocates nothing).
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| Shard {
                lock: L::new(),
                buckets: AtomicPtr::new(ptr::null_mut()),
                count: AtomicU32::new(0),
            }),
            state: AtomicU64::new(1),
        }
    }

    const fn place(&self, id: u64) -> (&Shard<L>, usize) {
        let h = mix(id);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the top bits pick the shard"
        )]
        let s = (h >> 58) as usize % SHARDS;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the middle bits pick the bucket"
        )]
        let b = (h >> 20) as usize % BUCKETS;
        (&self.shards[s], b)
    }

    fn bucket<'a>(buckets: *mut AtomicPtr<KeyEntry>, b: usize) -> &'a AtomicPtr<KeyEntry> {
        // SAFETY: `buckets` is a live bucket block of BUCKETS pointers (allocated by
        // `insert`, freed only by `teardown`), and `b < BUCKETS`.
        unsafe { &*buckets.wrapping_add(b) }
    }

    fn find(shard: &Shard<L>, b: usize, id: u64) -> Option<&KeyEntry> {
        let buckets = shard.buckets.load(Relaxed);
        if buckets.is_null() {
            return None;
        }
        let mut cur = Self::bucket(buckets, b).load(Relaxed);
        while let Some(e) = NonNull::new(cur) {
            let entry = entry_of(e);
            if entry.id == id {
                return Some(entry);
            }
            cur = entry.next.load(Relaxed);
        }
        None
    }

    /// `RegNtPreRenameKey`: every entry filled before now is stale, and names fetched until
    /// the rename ends are not cached.
    pub fn rename_started(&self) {
        self.update(|renaming| renaming.saturating_add(1).min(EPOCH_LIMIT_RENAMES));
    }

    /// `RegNtPostRenameKey`: every entry filled before now is stale (names fetched during the
    /// rename were not cached); caching resumes when no other rename is in flight.
    /// `had_pre` says whether this rename's pre was counted (the driver marks it in the
    /// pre's `CallContext`): a post without its pre (the callback registered in between)
    /// only starts an epoch, and must not end another rename's count (found in review). A
    /// saturated count stays saturated: caching then stays off, which is only slower.
    pub fn rename_ended(&self, had_pre: bool) {
        self.update(|renaming| {
            if !had_pre || renaming == EPOCH_LIMIT_RENAMES {
                renaming
            } else {
                renaming.saturating_sub(1)
            }
        });
    }

    fn update(&self, renaming: impl Fn(u64) -> u64) {
        let mut s = self.state.load(Relaxed);
        loop {
            let next = (renaming(s >> 48) << 48) | ((s + 1) & EPOCH_MASK);
            match self.state.compare_exchange_weak(s, next, AcqRel, Relaxed) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
    }

    /// The current epoch's entry for `id`, counted, with a name reference for the caller;
    /// otherwise the miss to hand to [`Self::insert`] once the name is known.
    ///
    /// # Errors
    /// The [`KeyMiss`] when nothing current is cached for `id`.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn lookup(&self, names: &NameTable<L>, id: u64, time: u64) -> Result<KeyHit, KeyMiss> {
        // Read first: a name fetched after this read is at least as new as this epoch.
        let state = self.state.load(Acquire);
        let miss = KeyMiss {
            id,
            epoch: state & EPOCH_MASK,
            renaming: state >> 48 != 0,
            time,
        };
        let epoch = miss.epoch;
        let (shard, b) = self.place(id);
        // An empty bucket is a miss without the lock (a fresh key's open): a miss is always
        // safe, `insert` finds an entry linked meanwhile. The bucket block, once published
        // (Release in `link_new`), lives until teardown.
        let buckets = shard.buckets.load(Acquire);
        if buckets.is_null() || Self::bucket(buckets, b).load(Relaxed).is_null() {
            return Err(miss);
        }
        // Shared (issue 14: opens of one key on several processors overlap): the chain, an
        // entry's name, epoch and hint change only under the exclusive lock, and a use is
        // counted atomically, so the last use's release (exclusive) cannot free the entry
        // under this one.
        let _g = Shared::new(&shard.lock);
        if let Some(e) = Self::find(shard, b, id)
            && e.epoch.load(Relaxed) == epoch
            && !too_old(time, e.fetched.load(Relaxed))
            && let Some(name) = NonNull::new(e.name.load(Relaxed))
        {
            e.objects.fetch_add(1, Relaxed);
            // The entry holds a reference, so this one is not the first: no lock needed.
            names.add_ref(name);
            return Ok(KeyHit {
                entry: NonNull::from(e),
                name,
                hint: hint_of(e),
                epoch,
            });
        }
        Err(miss)
    }

    /// Records that key `miss.id` is named `name` (the caller holds a reference on it) and
    /// counts one use of the entry: a new entry, or the existing one, refreshed when it is
    /// older than `miss.epoch` or its name older than [`MAX_NAME_AGE`] at `miss.time`; also
    /// says whether this call created the entry. `None` when no
    /// entry could be allocated (the key is then not cached). The caller asks only for a
    /// [`KeyMiss::cacheable`] miss.
    pub fn insert<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        miss: KeyMiss,
        name: NameRef,
        hint: HiveHint,
    ) -> Option<(KeyRef, bool)> {
        let (shard, b) = self.place(miss.id);
        let mut old = None;
        let entry = {
            let _g = Exclusive::new(&shard.lock);
            let Some(e) = Self::find(shard, b, miss.id) else {
                return Self::link_new(pool, names, shard, b, miss, name, hint).map(|e| (e, true));
            };
            e.objects.fetch_add(1, Relaxed);
            let epoch = e.epoch.load(Relaxed);
            if miss.epoch > epoch
                || (miss.epoch == epoch && too_old(miss.time, e.fetched.load(Relaxed)))
            {
                names.add_ref(name);
                old = NonNull::new(e.name.swap(name.as_ptr(), Relaxed));
                e.epoch.store(miss.epoch, Relaxed);
                e.fetched.store(miss.time, Relaxed);
            }
            // The hint goes with the name it was resolved from: not onto a newer name.
            if miss.epoch >= epoch {
                store_hint(e, hint);
            }
            NonNull::from(e)
        };
        if let Some(n) = old {
            names.release(pool, n);
        }
        Some((entry, false))
    }

    fn link_new<P: Pool>(
        pool: &P,
        names: &NameTable<L>,
        shard: &Shard<L>,
        b: usize,
        miss: KeyMiss,
        name: NameRef,
        hint: HiveHint,
    ) -> Option<KeyRef> {
        let mut buckets = shard.buckets.load(Relaxed);
        if buckets.is_null() {
            let block = pool.alloc(BlockClass::B4096)?;
            let bl = block.cast::<AtomicPtr<KeyEntry>>().as_ptr();
            for i in 0..BUCKETS {
                // SAFETY: the block is 4096 bytes = BUCKETS pointers, 16-aligned, ours.
                unsafe { bl.wrapping_add(i).write(AtomicPtr::new(ptr::null_mut())) };
            }
            shard.buckets.store(bl, Release);
            buckets = bl;
        }
        let e = pool.alloc(BlockClass::B64)?.cast::<KeyEntry>();
        let head = Self::bucket(buckets, b);
        names.add_ref(name);
        let entry = KeyEntry {
            next: AtomicPtr::new(head.load(Relaxed)),
            id: miss.id,
            name: AtomicPtr::new(name.as_ptr()),
            objects: AtomicU32::new(1),
            epoch: AtomicU64::new(miss.epoch),
            fetched: AtomicU64::new(miss.time),
            hint_hive: AtomicPtr::new(hint.hive.as_ptr()),
            hint_shard: AtomicU16::new(shard16(hint.shard)),
            deleted: AtomicU16::new(0),
            hint_generation: AtomicU64::new(hint.generation),
        };
        // SAFETY: a fresh 64-byte block, 16-aligned, ours alone, big enough (asserted above).
        unsafe { e.write(entry) };
        head.store(e.as_ptr(), Relaxed);
        locked_add32(&shard.count, 1);
        Some(e)
    }

    /// Records where the name of a hit resolved after its hint went stale, unless the entry
    /// was refreshed meanwhile (`epoch` is the hit's).
    pub fn set_hint(&self, entry: KeyRef, epoch: u64, hint: HiveHint) {
        let e = entry_of(entry);
        let (shard, _) = self.place(e.id);
        let _g = Exclusive::new(&shard.lock);
        if e.epoch.load(Relaxed) == epoch {
            store_hint(e, hint);
        }
    }

    /// Gives back one use of `entry`; the last frees it (its name reference goes).
    ///
    /// A use that is not the last goes without the shard lock (as a name reference does,
    /// [`NameTable::release`]): uses are only taken under the lock, so the count cannot reach
    /// zero behind a lookup's back; what may be the last is dropped under the lock. Release on
    /// every decrement and Acquire on the last order each user's reads before the free.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn release<P: Pool>(&self, pool: &P, names: &NameTable<L>, entry: KeyRef) {
        let e = entry_of(entry);
        if release_unless_last(&e.objects) {
            return;
        }
        let (shard, b) = self.place(e.id);
        {
            let _g = Exclusive::new(&shard.lock);
            if e.objects.fetch_sub(1, AcqRel) != 1 {
                return;
            }
            let head = Self::bucket(shard.buckets.load(Relaxed), b);
            let mut link = head;
            loop {
                let cur = link.load(Relaxed);
                if cur == entry.as_ptr() {
                    link.store(e.next.load(Relaxed), Relaxed);
                    break;
                }
                let Some(c) = NonNull::new(cur) else {
                    unreachable_entry();
                };
                link = &entry_of(c).next;
            }
            locked_sub32(&shard.count, 1);
        }
        Self::free(pool, names, entry);
    }

    fn free<P: Pool>(pool: &P, names: &NameTable<L>, entry: KeyRef) {
        let e = entry_of(entry);
        let name = NonNull::new(e.name.load(Relaxed));
        // SAFETY: unlinked (or the table is being torn down): no one else reaches the block,
        // which came from `pool.alloc(B64)`.
        unsafe { pool.free(BlockClass::B64, entry.cast()) };
        if let Some(n) = name {
            names.release(pool, n);
        }
    }

    /// Key `id` was deleted (`RegNtPostDeleteKey` with `STATUS_SUCCESS`): its entry, if
    /// cached, is marked, and every record opened through it reads as deleted from now on.
    /// A deleted key keeps its id while its objects live and is never found by name again
    /// (a key created with the name later is another key, with another id: Windows Research
    /// Kernel `cmapi2.c` `CmDeleteKey` sets the KCB's `Delete` and takes it out of the KCB
    /// hash). Returns whether an entry was marked.
    pub fn mark_deleted(&self, id: u64) -> bool {
        let (shard, b) = self.place(id);
        // Shared: the entry cannot be freed under it (freeing takes it exclusively).
        let _g = Shared::new(&shard.lock);
        Self::find(shard, b, id).is_some_and(|e| {
            e.deleted.store(1, Relaxed);
            true
        })
    }

    /// Entries cached now.
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.count.load(Relaxed)))
            .sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees every entry and bucket block (teardown: no concurrent use).
    pub fn teardown<P: Pool>(&mut self, pool: &P, names: &NameTable<L>) {
        for shard in &self.shards {
            let buckets = shard.buckets.swap(ptr::null_mut(), Relaxed);
            if buckets.is_null() {
                continue;
            }
            for b in 0..BUCKETS {
                let mut cur = Self::bucket(buckets, b).swap(ptr::null_mut(), Relaxed);
                while let Some(e) = NonNull::new(cur) {
                    cur = entry_of(e).next.load(Relaxed);
                    Self::free(pool, names, e);
                }
            }
            shard.count.store(0, Relaxed);
            if let Some(block) = NonNull::new(buckets) {
                // SAFETY: the bucket block came from `pool.alloc(B4096)`; nothing refers to it.
                unsafe { pool.free(BlockClass::B4096, block.cast()) };
            }
        }
    }
}

/// The hint stored in `e` (its shard lock held).
fn hint_of(e: &KeyEntry) -> Option<HiveHint> {
    NonNull::new(e.hint_hive.load(Relaxed)).map(|hive| HiveHint {
        hive,
        shard: u32::from(e.hint_shard.load(Relaxed)),
        generation: e.hint_generation.load(Relaxed),
    })
}

/// Stores `hint` in `e` (its shard lock held).
fn store_hint(e: &KeyEntry, hint: HiveHint) {
    e.hint_hive.store(hint.hive.as_ptr(), Relaxed);
    e.hint_shard.store(shard16(hint.shard), Relaxed);
    e.hint_generation.store(hint.generation, Relaxed);
}

/// Whether the key of `entry` was deleted ([`KeyCache::mark_deleted`]). The caller holds a
/// counted use of the entry (a live record's).
#[must_use]
pub fn is_deleted(entry: KeyRef) -> bool {
    entry_of(entry).deleted.load(Relaxed) != 0
}

/// Reads an entry the caller holds a use of (or that is linked and its shard locked).
const fn entry_of<'a>(e: KeyRef) -> &'a KeyEntry {
    // SAFETY: entries are freed only when their last use is given back, under the shard
    // lock, after being unlinked; the caller holds a use or the lock.
    unsafe { e.as_ref() }
}

#[cold]
fn unreachable_entry() -> ! {
    // A used entry is always linked in its bucket until its last use goes.
    panic!("hivetrack: key cache entry not in its bucket")
}
