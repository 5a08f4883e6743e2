//! Tracked key objects: a slab of fixed 96-byte records in 4 KiB chunks, sharded by the
//! kernel object's address, and the tokens that name them.
//!
//! A holding's list links its records by address (issue 14: a held key's cycle resolved
//! the list's tail and the neighbour it unlinks from through the chunk directory); tokens
//! and the free list name a slot by shard and index, checked against the directory.
//!
//! A slot is taken and given back without a lock (issue 14: two spin-lock round trips
//! fewer per open+close): chunks live until teardown (a record's memory is never returned
//! while the tracker lives, so a stale read of one is safe), and the free list is a stack
//! whose head carries a tag bumped by every push and pop, so a pop that read a slot's link
//! before another thread took and gave the slot back fails its compare-exchange instead of
//! installing a stale link (the ABA problem; the same scheme as the kernel's
//! `SLIST_HEADER`, Learn: "Singly and Doubly Linked Lists", interlocked lists). The shard
//! lock remains for growing the shard (a new chunk) and for walks that want its slots to
//! stay handed out ([`crate::identify`]). A record is ended by whoever moves its state from
//! `LIVE` to `DYING` ([`ObjRecord::claim`]: one compare-exchange of the generation and state,
//! which share a word), so two enders of one record cannot both free it, and a stale or
//! foreign token changes nothing. The tag is 32 bits: a pop could only be fooled by a thread
//! paused inside it while exactly a multiple of 2^32 changes were made to the list.
//! Model-checked with loom (`cargo xtask loom`, `loom_tests` below): one ender per record,
//! no stale token honoured, no slot handed out twice.
//!
//! A [`Token`] is `generation << 32 | shard << 26 | index`. The driver stores it as the
//! object's callback context and hands it back; a stale token (the slot was freed, so its
//! generation moved on), a foreign value (shard or index out of range, never-used slot) or a
//! token for another object (the kernel address stored in the record differs) is rejected,
//! never followed. Tokens are also the opaque object ids reported to user mode: they are
//! never derived from a kernel address.

use core::mem::size_of;
use core::ptr::{self, NonNull};
#[cfg(not(loom))]
use core::sync::atomic::{
    AtomicPtr, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
// Under `--cfg loom` the slot protocol's atomics are loom's, for the model below
// (`loom_tests`; run: `cargo xtask loom`).
#[cfg(loom)]
use loom::sync::atomic::{
    AtomicPtr, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

use crate::links::Link;
use crate::lock::RawLock;
use crate::names::NameEntry;
use crate::pool::{BlockClass, Pool};

/// Most object shards.
pub const MAX_SHARDS: usize = 64;
/// Size class of a slab chunk (and of a shard's chunk directory).
pub const CHUNK_CLASS: BlockClass = BlockClass::B4096;
/// Records per chunk.
#[allow(clippy::cast_possible_truncation, reason = "4096 / 96 = 42")]
pub const PER_CHUNK: u32 = (CHUNK_CLASS.size() / size_of::<ObjRecord>()) as u32;
/// Chunks per shard (one directory block of pointers).
#[allow(clippy::cast_possible_truncation, reason = "4096 / 8 = 512")]
pub const MAX_CHUNKS: u32 = (CHUNK_CLASS.size() / size_of::<usize>()) as u32;
/// What one record costs the budget: its share of a chunk (a page), rounded up.
#[allow(clippy::cast_possible_truncation, reason = "a page over 42")]
pub const RECORD_COST: u64 =
    crate::budget::pool_cost(CHUNK_CLASS.size()).div_ceil(PER_CHUNK as u64);
/// Slots per shard at most.
pub const MAX_PER_SHARD: u32 = PER_CHUNK * MAX_CHUNKS;
const INDEX_BITS: u32 = 26;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
/// "No slot" in a list link.
pub const NIL: u32 = u32::MAX;
/// An empty free list's head (tag 0, index [`NIL`]).
const FREE_LIST_EMPTY: u64 = 0xFFFF_FFFF;
const _: () = assert!(FREE_LIST_EMPTY == NIL as u64);

/// Slot states.
pub const FREE: u32 = 0;
/// Allocated by an `opened` that has not finished linking it.
pub const RESERVED: u32 = 1;
/// Tracked.
pub const LIVE: u32 = 2;
/// Being removed.
pub const DYING: u32 = 3;
/// The state's bits of the state word (the rest are flags).
pub const STATE_MASK: u32 = 0xFF;
/// Record flag: the name is cut.
pub const F_NAME_TRUNCATED: u32 = 1 << 8;
/// Record flag: the name could not be stored.
pub const F_NAME_MISSING: u32 = 1 << 9;
/// Record flag: this open created its name entry and its process was charged for it.
pub const F_NAME_CHARGED: u32 = 1 << 10;
/// Record flag: this open created its key cache entry and its process was charged for it.
pub const F_KEY_CHARGED: u32 = 1 << 11;

/// The handle a driver stores as object context and passes back on later events. Never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    pub(crate) const fn new(generation: u32, slot: u32) -> Self {
        Self(object_id(generation, slot))
    }
    #[allow(clippy::cast_possible_truncation, reason = "the low half is the slot")]
    pub(crate) const fn slot(self) -> u32 {
        self.0 as u32
    }
    pub(crate) const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The object id reported to user mode (and the [`Token`]) for the record of `generation`
/// at slot `slot` (a [`slot_ref`]): never derived from an address; [`split_id`] reads it
/// back.
#[must_use]
pub const fn object_id(generation: u32, slot: u32) -> u64 {
    ((generation as u64) << 32) | slot as u64
}

/// (generation, slot) of an [`object_id`].
#[must_use]
#[allow(clippy::cast_possible_truncation, reason = "the two halves")]
pub const fn split_id(id: u64) -> (u32, u32) {
    ((id >> 32) as u32, id as u32)
}

/// One tracked key object (96 bytes). Fields are atomics so that readers under the owning
/// process's lock and the thread that owns the slot (its opener, or its claimer) never race
/// in the language's sense.
#[repr(C)]
pub struct ObjRecord {
    /// Generation (high half; bumped when the slot is freed, never 0) and state (low byte of
    /// the low half) with flags: one word, so that a token's generation and the record's
    /// state are checked and changed in one compare-exchange ([`Self::claim`]).
    gen_state: AtomicU64,
    /// The kernel object address: a private lookup key, never reported.
    pub object: AtomicU64,
    /// Open time.
    pub time: AtomicU64,
    /// Interned name (counted), or null.
    pub name: AtomicPtr<NameEntry>,
    /// Opening thread (a Win32 thread id is a DWORD: `GetCurrentThreadId`; 0 if one ever
    /// did not fit).
    pub thread: AtomicU32,
    /// The stack captured at its open ([`crate::stacks`] id), or 0.
    pub stack: AtomicU32,
    /// The (process, hive) record it is linked into (erased `Holding<L>`).
    pub holding: AtomicPtr<()>,
    /// Next in the holding's list, or none ([`Link`]: a record of the chunks or none, by
    /// construction, since `Tracker::at` follows it unchecked).
    pub(crate) next: Link,
    /// Previous in the holding's list, or none.
    pub(crate) prev: Link,
    /// The key cache entry it was opened through (counted), or null.
    pub key: AtomicPtr<crate::keys::KeyEntry>,
    /// Granted access.
    pub access: AtomicU32,
    /// Handle opens counted.
    pub opens: AtomicU32,
    /// Handle closes seen.
    pub closes: AtomicU32,
    /// Order within its holding among equal times.
    pub seq: AtomicU32,
    /// Next in the free list (a slot index of this shard), or [`NIL`]: only ever a slot
    /// handed out before, or `NIL`.
    free_next: AtomicU32,
    /// Its own slot ([`slot_ref`]: shard and index), fixed when its chunk is made.
    pub slot: u32,
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<ObjRecord>() == 96);

const fn gen_state(generation: u32, state: u32) -> u64 {
    ((generation as u64) << 32) | state as u64
}

impl ObjRecord {
    /// A free record of generation 1 at slot `slot`.
    #[allow(
        clippy::missing_const_for_fn,
        reason = "not const under loom, whose atomics are built at run time"
    )]
    fn new(slot: u32) -> Self {
        Self {
            gen_state: AtomicU64::new(gen_state(1, FREE)),
            object: AtomicU64::new(0),
            time: AtomicU64::new(0),
            name: AtomicPtr::new(ptr::null_mut()),
            thread: AtomicU32::new(0),
            stack: AtomicU32::new(0),
            holding: AtomicPtr::new(ptr::null_mut()),
            next: Link::new(),
            prev: Link::new(),
            key: AtomicPtr::new(ptr::null_mut()),
            access: AtomicU32::new(0),
            opens: AtomicU32::new(0),
            closes: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            free_next: AtomicU32::new(NIL),
            slot,
        }
    }

    /// (generation, state with flags), read at once.
    pub fn read(&self) -> (u32, u32) {
        let w = self.gen_state.load(Acquire);
        #[allow(clippy::cast_possible_truncation, reason = "the two halves")]
        ((w >> 32) as u32, w as u32)
    }

    /// The generation.
    pub fn generation(&self) -> u32 {
        self.read().0
    }

    /// State without flags.
    pub fn state(&self) -> u32 {
        self.read().1 & STATE_MASK
    }

    /// State with flags.
    pub fn state_and_flags(&self) -> u32 {
        self.read().1
    }

    /// Sets `flags` (record flags, never state bits).
    pub fn set_flags(&self, flags: u32) {
        self.gen_state
            .fetch_or(u64::from(flags & !STATE_MASK), Relaxed);
    }

    /// Sets the state and flags of a record the caller owns (its opener, before the token
    /// is out): `Release`, so that a claimer or a lock-free reader that sees the state sees
    /// the fields written before it.
    pub fn set_state(&self, generation: u32, state: u32) {
        self.gen_state.store(gen_state(generation, state), Release);
    }

    /// Whether this is the live record of (`generation`, `object`).
    pub fn is_live(&self, generation: u32, object: u64) -> bool {
        Self::names_live(self.gen_state.load(Acquire), generation) && self.object_is(object)
    }

    /// Whether state word `word` is `generation`'s, live.
    fn names_live(word: u64, generation: u32) -> bool {
        word >> 32 == u64::from(generation) && word & u64::from(STATE_MASK) == u64::from(LIVE)
    }

    fn object_is(&self, object: u64) -> bool {
        self.object.load(Relaxed) == object
    }

    /// Moves the record named by (`generation`, `object`) from `LIVE` to `to` (`DYING` to
    /// end it, `RESERVED` to work on it while no one can end it); returns its flags. `None`
    /// when it is not that live record (a stale or foreign token, or another thread holds
    /// it): nothing is changed then. Generation and state are one word, and the object is
    /// fixed for a generation, so the check and the move are one compare-exchange.
    pub fn claim(&self, generation: u32, object: u64, to: u32) -> Option<u32> {
        let mut cur = self.gen_state.load(Acquire);
        loop {
            #[allow(clippy::cast_possible_truncation, reason = "the low half")]
            let state = cur as u32;
            if !Self::names_live(cur, generation) || !self.object_is(object) {
                return None;
            }
            // The word's generation is `generation` (checked above): only the state byte
            // changes (issue 14: 7 instructions fewer a cleanup than building the word anew).
            let next = (cur & !u64::from(STATE_MASK)) | u64::from(to);
            match self
                .gen_state
                .compare_exchange_weak(cur, next, Acquire, Acquire)
            {
                Ok(_) => return Some(state & !STATE_MASK),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back a claim made with `claim(.., to)`: the record is `LIVE` again, with every
    /// flag set meanwhile kept.
    pub fn unclaim(&self, to: u32) {
        // The state is `to` while claimed: xor-ing `to ^ LIVE` turns it into LIVE and leaves
        // the generation and the flag bits alone.
        self.gen_state.fetch_xor(u64::from(to ^ LIVE), Release);
    }

    /// Ends a record the caller claimed: the next generation, `FREE`. A token of the old
    /// generation is stale from here on, whatever else it reads.
    fn retire(&self) {
        let g = self.generation().wrapping_add(1);
        self.gen_state
            .store(gen_state(if g == 0 { 1 } else { g }, FREE), Release);
    }
}

/// One shard of the slab.
pub struct ObjShard<L> {
    /// Its number in the tracker's shards (its records' [`slot_ref`]s carry it).
    id: u32,
    /// Taken to grow the shard (a new chunk, the first use of a slot) and by walks that want
    /// its slots to stay handed out; taking and giving back a slot is lock-free.
    pub lock: L,
    dir: AtomicPtr<AtomicPtr<ObjRecord>>,
    chunks: AtomicU32,
    /// The free list's head: a tag bumped by every change (high half) and the first free
    /// slot's index or [`NIL`] (low half).
    free: AtomicU64,
    unused: AtomicU32,
    /// Slots LIVE or RESERVED or DYING.
    pub live: AtomicU32,
    /// `opened` calls routed here (statistics: the core atomic under loom too).
    pub opens_seen: core::sync::atomic::AtomicU64,
    /// `handle_closed` calls routed here.
    pub closes_seen: core::sync::atomic::AtomicU64,
    /// `object_destroyed` calls routed here.
    pub destroys_seen: core::sync::atomic::AtomicU64,
}

/// Why a slot could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// The shard is at its share of the cap.
    Cap,
    /// No block for a chunk or the directory.
    NoMemory,
}

impl<L: RawLock> Default for ObjShard<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> ObjShard<L> {
    /// An empty shard.
    #[must_use]
    pub fn new() -> Self {
        Self::with_id(0)
    }

    /// An empty shard, number `id` (below [`MAX_SHARDS`]) of its tracker.
    #[must_use]
    pub fn with_id(id: usize) -> Self {
        debug_assert!(id < MAX_SHARDS);
        #[allow(clippy::cast_possible_truncation, reason = "below MAX_SHARDS")]
        let id = id as u32;
        Self {
            id,
            lock: L::new(),
            dir: AtomicPtr::new(ptr::null_mut()),
            chunks: AtomicU32::new(0),
            free: AtomicU64::new(FREE_LIST_EMPTY),
            unused: AtomicU32::new(0),
            live: AtomicU32::new(0),
            opens_seen: core::sync::atomic::AtomicU64::new(0),
            closes_seen: core::sync::atomic::AtomicU64::new(0),
            destroys_seen: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Its number in the tracker's shards.
    #[must_use]
    pub const fn id(&self) -> u32 {
        self.id
    }

    /// The record at `index` if that slot has ever been handed out.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn get(&self, index: u32) -> Option<&ObjRecord> {
        if index >= self.unused.load(Acquire) {
            return None;
        }
        self.record(index)
    }

    /// The record a token names at `index`, if its chunk exists, for the caller to check
    /// against the token (generation, state, object): without [`Self::get`]'s check that the
    /// slot was ever handed out (issue 14: a token is resolved twice a cycle). A slot never
    /// handed out is as safe to read (its chunk's records were all initialised before the
    /// chunk was published) and reads `FREE`, which no token's check accepts.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn for_token(&self, index: u32) -> Option<&ObjRecord> {
        self.record(index)
    }

    /// The record at `index` if its chunk exists (handed out or not).
    #[inline]
    fn record(&self, index: u32) -> Option<&ObjRecord> {
        let chunk = index / PER_CHUNK;
        if chunk >= self.chunks.load(Acquire) {
            return None;
        }
        let dir = self.dir.load(Acquire);
        // SAFETY: `chunk < chunks <= MAX_CHUNKS`, so the entry is inside the directory block,
        // which exists once `chunks > 0` and lives until teardown.
        let base = unsafe { &*dir.wrapping_add(chunk as usize) }.load(Acquire);
        // SAFETY: chunk `chunk` was published (Release) before `chunks` was raised past it;
        // `index % PER_CHUNK < PER_CHUNK` records fit the 4 KiB block; chunks live until
        // teardown and their records were initialised when the chunk was allocated.
        Some(unsafe { &*base.wrapping_add((index % PER_CHUNK) as usize) })
    }

    /// Takes a free slot (no lock held: the shard lock is taken here only to grow the
    /// shard). Returns its index and record.
    ///
    /// # Errors
    /// [`SlotError`] at the cap or without memory.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn alloc<P: Pool>(&self, pool: &P, cap: u32) -> Result<(u32, &ObjRecord), SlotError> {
        // The slot is counted before it is taken, so that concurrent takers never pass the
        // cap together; only below the cap, so that a refused taker never raises the count
        // (another taker would then be refused with a slot free: found in review).
        let mut live = self.live.load(Relaxed);
        loop {
            if live >= cap {
                return Err(SlotError::Cap);
            }
            match self
                .live
                .compare_exchange_weak(live, live + 1, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(now) => live = now,
            }
        }
        self.pop().map_or_else(|| self.alloc_locked(pool), Ok)
    }

    /// [`Self::alloc`] with its slot counted and the free list empty: takes one under the
    /// lock, growing the shard if none was given back meanwhile; gives the count back on
    /// failure. Out of line, so that an open that pops a slot pays for none of it.
    #[cold]
    #[inline(never)]
    fn alloc_locked<P: Pool>(&self, pool: &P) -> Result<(u32, &ObjRecord), SlotError> {
        let grown = {
            let _g = crate::lock::Exclusive::new(&self.lock);
            // A slot given back while this thread waited for the lock is taken first.
            self.pop().map_or_else(|| self.first_use(pool), Ok)
        };
        if grown.is_err() {
            self.live.fetch_sub(1, SeqCst);
        }
        grown
    }

    /// Pops the free list.
    fn pop(&self) -> Option<(u32, &ObjRecord)> {
        let mut head = self.free.load(Acquire);
        loop {
            #[allow(clippy::cast_possible_truncation, reason = "the low half is the index")]
            let index = head as u32;
            if index == NIL {
                return None;
            }
            // A listed slot was handed out once, so its chunk exists; it may have been taken
            // by another thread since `head` was read, and its link rewritten: then the head's
            // tag has moved on and the exchange below fails. The chunk is still checked:
            // should the 32-bit tag come round while a thread waits here (2^32 changes of the
            // head), its exchange could install a stale link as the head (review 18c). The
            // free list has its own link (`free_next`, never a holding list's), which only
            // ever holds a slot handed out before or `NIL`, so a stale link names at worst a
            // slot another thread took meanwhile (the hazard the tag makes need 2^32
            // changes); the check (a compare and a branch) keeps any bad index from reading
            // outside the directory all the same.
            let rec = self.record(index)?;
            let next = rec.free_next.load(Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match self.free.compare_exchange_weak(
                head,
                (tag << 32) | u64::from(next),
                Acquire,
                Acquire,
            ) {
                Ok(_) => return Some((index, rec)),
                Err(now) => head = now,
            }
        }
    }

    /// A slot never handed out before (the shard lock held), growing the shard by a chunk
    /// when its chunks are all handed out.
    fn first_use<P: Pool>(&self, pool: &P) -> Result<(u32, &ObjRecord), SlotError> {
        let index = self.unused.load(Relaxed);
        if index >= MAX_PER_SHARD {
            return Err(SlotError::Cap);
        }
        let chunks = self.chunks.load(Relaxed);
        if index / PER_CHUNK >= chunks {
            self.grow(pool, chunks)?;
        }
        // The chunk exists now (it was there, or `grow` published it).
        let rec = self.record(index).ok_or(SlotError::NoMemory)?;
        self.unused.store(index + 1, Release);
        Ok((index, rec))
    }

    fn grow<P: Pool>(&self, pool: &P, chunks: u32) -> Result<(), SlotError> {
        let mut dir = self.dir.load(Relaxed);
        if dir.is_null() {
            let block = pool.alloc(CHUNK_CLASS).ok_or(SlotError::NoMemory)?;
            let d = block.cast::<AtomicPtr<ObjRecord>>().as_ptr();
            for i in 0..MAX_CHUNKS as usize {
                // SAFETY: the block holds MAX_CHUNKS pointers, is aligned and ours.
                unsafe { d.wrapping_add(i).write(AtomicPtr::new(ptr::null_mut())) };
            }
            self.dir.store(d, Release);
            dir = d;
        }
        let block = pool.alloc(CHUNK_CLASS).ok_or(SlotError::NoMemory)?;
        let recs = block.cast::<ObjRecord>().as_ptr();
        for i in 0..PER_CHUNK {
            let slot = slot_ref(self.id, chunks * PER_CHUNK + i);
            // SAFETY: PER_CHUNK records of 96 bytes fit the 4 KiB block, aligned to 16 >= 8.
            unsafe { recs.wrapping_add(i as usize).write(ObjRecord::new(slot)) };
        }
        // SAFETY: `chunks < MAX_CHUNKS` (index < MAX_PER_SHARD), inside the directory block.
        unsafe { &*dir.wrapping_add(chunks as usize) }.store(recs, Release);
        self.chunks.store(chunks + 1, Release);
        Ok(())
    }

    /// Returns record `rec` of this shard (from [`ObjShard::alloc`], or a token's, and taken
    /// or claimed by the caller alone) to the free list, bumping its generation. No lock
    /// held.
    pub fn release(&self, rec: &ObjRecord) {
        let (shard, index) = split_ref(rec.slot);
        debug_assert_eq!(shard, self.id, "a record goes back to its own shard");
        rec.name.store(ptr::null_mut(), Relaxed);
        // Unlinked (`Tracker::unlink` clears it under the process lock) or never linked;
        // cleared all the same, so that no broken path leaves a free record a holding.
        debug_assert!(rec.holding.load(Relaxed).is_null());
        rec.holding.store(ptr::null_mut(), Relaxed);
        rec.retire();
        let mut head = self.free.load(Relaxed);
        loop {
            #[allow(clippy::cast_possible_truncation, reason = "the low half is the index")]
            rec.free_next.store(head as u32, Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            // Release: the record's writes (and the link just stored) happen before a pop
            // that takes it.
            match self.free.compare_exchange_weak(
                head,
                (tag << 32) | u64::from(index),
                Release,
                Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        // SeqCst, with the load of the shard's "full" bit after it
        // (`Tracker::shard_has_room`): see `Tracker::take_slot`.
        self.live.fetch_sub(1, SeqCst);
    }

    /// Frees the chunks and the directory (teardown; records must have been released).
    pub fn teardown<P: Pool>(&mut self, pool: &P) {
        let dir = self.dir.load(Relaxed);
        let Some(d) = NonNull::new(dir) else {
            return;
        };
        for c in 0..self.chunks.load(Relaxed) as usize {
            // SAFETY: c < chunks: a published directory entry.
            let chunk = unsafe { &*dir.wrapping_add(c) }.load(Relaxed);
            if let Some(b) = NonNull::new(chunk) {
                // SAFETY: the chunk came from `pool.alloc(CHUNK_CLASS)` in `grow`.
                unsafe { pool.free(CHUNK_CLASS, b.cast()) };
            }
        }
        // SAFETY: the directory came from `pool.alloc(CHUNK_CLASS)` in `grow`.
        unsafe { pool.free(CHUNK_CLASS, d.cast()) };
        self.dir.store(ptr::null_mut(), Relaxed);
        self.chunks.store(0, Relaxed);
        self.unused.store(0, Relaxed);
        self.free.store(FREE_LIST_EMPTY, Relaxed);
        self.live.store(0, Relaxed);
    }
}

/// Packs a shard and index into a slot reference.
#[must_use]
pub const fn slot_ref(shard: u32, index: u32) -> u32 {
    (shard << INDEX_BITS) | index
}

/// Splits a list link.
#[must_use]
pub const fn split_ref(r: u32) -> (u32, u32) {
    (r >> INDEX_BITS, r & INDEX_MASK)
}

/// A model of the slot protocol (audit 22a): every interleaving of two threads taking,
/// ending and giving back slots of one shard, loom's atomics standing in for the kernel's.
/// Run: `cargo xtask loom` (or `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo
/// test -p hivetrack-tracker --release --lib objects::loom_tests`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::lock::SpinLock;
    use std::sync::Arc;

    /// Blocks from the global allocator.
    struct Heap;

    fn layout(class: BlockClass) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(class.size(), crate::pool::BLOCK_ALIGN)
            .unwrap_or_else(|_| unreachable!("a block class is a valid layout"))
    }

    // SAFETY: every block is a fresh allocation of the class's size and alignment, freed
    // with the same layout.
    unsafe impl Pool for Heap {
        fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
            // SAFETY: the layout's size is not zero.
            NonNull::new(unsafe { std::alloc::alloc(layout(class)) })
        }
        unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
            // SAFETY: the caller's block came from `alloc` with this class.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout(class)) };
        }
    }

    type Shard = ObjShard<SpinLock>;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.max_branches = 100_000;
        b.check(f);
    }

    /// Takes a slot, as an open does: it is the taker's alone (its `opens` says how many
    /// takers hold it: 1, or a slot was handed out twice).
    fn take(s: &Shard, object: u64) -> (u32, u32) {
        let (i, rec) = s.alloc(&Heap, 8).unwrap_or_else(|_| unreachable!("room"));
        assert_eq!(
            rec.opens.fetch_add(1, Relaxed),
            0,
            "slot {i} handed out twice"
        );
        rec.object.store(object, Relaxed);
        let g = rec.generation();
        rec.set_state(g, LIVE);
        (i, g)
    }

    /// Ends the record (`claim` to DYING, as a cleanup does) and gives the slot back.
    fn end(s: &Shard, i: u32, g: u32, object: u64) -> bool {
        let Some(rec) = s.for_token(i) else {
            return false;
        };
        if rec.claim(g, object, DYING).is_none() {
            return false;
        }
        rec.opens.fetch_sub(1, Relaxed);
        s.release(rec);
        true
    }

    /// The slots on the free list, in order (at most `max`: a cycle shows as a repeat).
    fn drain(s: &Shard, max: usize) -> std::vec::Vec<u32> {
        let mut v = std::vec::Vec::new();
        while v.len() < max {
            let Some((i, _)) = s.pop() else { break };
            v.push(i);
        }
        v
    }

    #[test]
    fn a_record_has_one_ender_and_its_old_token_then_changes_nothing() {
        model(|| {
            let s = Arc::new(Shard::new());
            let (i, g) = take(&s, 0x10);
            let enders: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let s = s.clone();
                    loom::thread::spawn(move || end(&s, i, g, 0x10))
                })
                .collect();
            let wins = enders
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| unreachable!("no panic")))
                .filter(|&w| w)
                .count();
            assert_eq!(wins, 1, "one ender");
            assert_eq!(s.live.load(Relaxed), 0);
            // The slot comes back with the next generation: the old token names nothing.
            let (j, g2) = take(&s, 0x10);
            assert_eq!(j, i);
            assert_ne!(g2, g, "the generation moved on");
            assert!(!end(&s, i, g, 0x10), "a stale token ends nothing");
            assert!(end(&s, j, g2, 0x10));
            let mut s = Arc::try_unwrap(s).unwrap_or_else(|_| unreachable!("joined"));
            s.teardown(&Heap);
        });
    }

    #[test]
    fn takers_and_givers_never_share_a_slot() {
        model(|| {
            let s = Arc::new(Shard::new());
            // Two slots handed out once and given back: the free list is 1 -> 0.
            let (a, ga) = take(&s, 1);
            let (b, gb) = take(&s, 2);
            assert!(end(&s, a, ga, 1) && end(&s, b, gb, 2));
            // One thread takes both, gives the first back, then the second (the pattern that
            // fools an untagged pop: the head is the same slot again, its link is not); the
            // other takes one and gives it back.
            let two = {
                let s = s.clone();
                loom::thread::spawn(move || {
                    let (x, gx) = take(&s, 3);
                    let (y, gy) = take(&s, 4);
                    assert!(end(&s, x, gx, 3));
                    assert!(end(&s, y, gy, 4));
                })
            };
            let (z, gz) = take(&s, 5);
            assert!(end(&s, z, gz, 5));
            two.join().unwrap_or_else(|_| unreachable!("no panic"));
            assert_eq!(s.live.load(Relaxed), 0);
            // Every slot ever handed out (a third when the one taker found the list empty
            // while the other held both) is back on the free list, once.
            let handed_out = s.unused.load(Relaxed);
            let mut free = drain(&s, 8);
            free.sort_unstable();
            assert_eq!(
                free,
                (0..handed_out).collect::<std::vec::Vec<_>>(),
                "each slot once on the free list"
            );
            let mut s = Arc::try_unwrap(s).unwrap_or_else(|_| unreachable!("joined"));
            s.teardown(&Heap);
        });
    }
}
