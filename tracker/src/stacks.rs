//! Open-time user-mode stacks (issue 16), deduplicated: one entry per distinct stack,
//! counted by the tracked objects opened from it, named to user mode by a small id.
//!
//! Entries are fixed 152-byte slots in 4 KiB chunks (26 a chunk, at most [`MAX_STACKS`]),
//! found by a hash of their frames through 1,024 chains of slot links; every block comes from
//! the budgeted pool and is allocated only when capture first stores a stack. When the last
//! stack goes with capture off (or capture is turned off with none stored) every block is
//! given back; while capture is on they stay, so a workload of fresh opens does not allocate
//! the table again at every open. One lock guards the
//! table: it is taken only by opens in the capture scope, by destroys of objects that carry
//! a stack, and by the `stacks` query, and nothing is taken under it.
//!
//! An id is `generation << 14 | (slot + 1)`: never 0, never a kernel address. Generations come
//! from one 18-bit counter of the table that survives the table's blocks being given back,
//! so an id names another stack only after 262,144 more stacks were stored; a stale id is
//! refused. The hash of the frames is keyed with a per-boot seed, so a process cannot choose
//! return addresses that all fall in one chain.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use protocol::capture::MAX_FRAMES;

use crate::counters::{locked_add32, locked_sub32};
use crate::lock::{Exclusive, RawLock};
use crate::pool::{BlockClass, Pool};

/// Size class of a chunk, of the chunk directory and of the chain heads.
const CLASS: BlockClass = BlockClass::B4096;
/// One slot.
#[repr(C)]
struct Slot {
    /// Hash of the frames.
    hash: u32,
    /// Objects that carry it; 0 = free.
    uses: u32,
    /// Next slot in its chain or in the free list (a slot index), or [`NIL`].
    next: u32,
    /// Frames in use.
    len: u8,
    /// [`protocol::stacks::StackRecord`] flags.
    flags: u8,
    /// Padding.
    _pad: u16,
    /// Generation: the table's counter when the slot was last taken.
    generation: u32,
    /// Return addresses.
    frames: [u64; MAX_FRAMES],
}

const SLOT_SIZE: usize = core::mem::size_of::<Slot>();
const _: () = assert!(SLOT_SIZE == 152);
/// [`protocol::stacks::StackRecord::TRUNCATED`] as a slot stores it.
#[allow(clippy::cast_possible_truncation, reason = "the flag is 1")]
pub const TRUNCATED: u8 = protocol::stacks::StackRecord::TRUNCATED as u8;
#[allow(clippy::cast_possible_truncation, reason = "4096 / 152 = 26")]
const PER_CHUNK: u32 = (CLASS.size() / SLOT_SIZE) as u32;
#[allow(clippy::cast_possible_truncation, reason = "4096 / 8 = 512")]
const MAX_CHUNKS: u32 = (CLASS.size() / core::mem::size_of::<usize>()) as u32;
/// Most distinct stacks stored at once.
pub const MAX_STACKS: u32 = PER_CHUNK * MAX_CHUNKS;
const CHAINS: u32 = 1024;
const NIL: u32 = u32::MAX;
/// Bits of an id that hold the slot (+1).
const SLOT_BITS: u32 = 14;
/// The generation counter's range (18 bits).
const GENERATION_MASK: u32 = (1 << (32 - SLOT_BITS)) - 1;
const _: () = assert!(MAX_STACKS < (1 << SLOT_BITS));

/// A stored stack, as read under the lock for a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredStack {
    /// Its id.
    pub id: u32,
    /// Flags.
    pub flags: u8,
    /// Objects that carry it.
    pub uses: u32,
    /// Frames in use.
    pub len: u8,
    /// Frames.
    pub frames: [u64; MAX_FRAMES],
}

/// The table's state, guarded by its lock.
struct Inner {
    /// Chunk directory (a 4 KiB block of chunk pointers), or null before the first store.
    dir: *mut *mut Slot,
    /// Chain heads (a 4 KiB block of slot links).
    heads: *mut u32,
    chunks: u32,
    free: u32,
    live: u32,
    /// The next generation (kept when the blocks are given back).
    next_generation: u32,
    /// The hash key.
    seed: u64,
}

/// The stack table.
pub struct StackTable<L> {
    lock: L,
    inner: core::cell::UnsafeCell<Inner>,
    /// Stacks stored now (read without the lock for `stats`).
    count: AtomicU32,
}

// SAFETY: `inner` is read and written only under `lock`; the rest are atomics.
unsafe impl<L: RawLock> Sync for StackTable<L> {}
// SAFETY: the blocks `Inner` points to are owned by the table alone and may be freed from
// any thread.
unsafe impl Send for Inner {}

/// FNV-1a over the frames' bytes, keyed with `seed`, folded to 32 bits.
fn hash_of(frames: &[u64], flags: u8, seed: u64) -> u32 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ u64::from(flags) ^ seed;
    for &f in frames {
        h ^= f;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
        h ^= h >> 29;
    }
    #[allow(clippy::cast_possible_truncation, reason = "folded")]
    let folded = (h ^ (h >> 32)) as u32;
    folded
}

impl<L: RawLock> Default for StackTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> StackTable<L> {
    /// An empty table; allocates nothing.
    #[must_use]
    pub fn new() -> Self {
        Self {
            lock: L::new(),
            inner: core::cell::UnsafeCell::new(Inner {
                dir: ptr::null_mut(),
                heads: ptr::null_mut(),
                chunks: 0,
                free: NIL,
                live: 0,
                next_generation: 1,
                seed: 0,
            }),
            count: AtomicU32::new(0),
        }
    }

    /// An empty table whose hash is keyed with `seed` (a per-boot value the opening
    /// processes cannot know).
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        let t = Self::new();
        t.locked(|i| i.seed = seed);
        t
    }

    /// Stacks stored now.
    pub fn len(&self) -> u64 {
        u64::from(self.count.load(Relaxed))
    }

    /// True when none is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the state under the lock.
    fn locked<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let _g = Exclusive::new(&self.lock);
        // SAFETY: the lock is held: no other reference to `inner` exists.
        let inner = unsafe { &mut *self.inner.get() };
        f(inner)
    }

    /// Stores `frames` (1..=[`MAX_FRAMES`] of them; more are cut and flagged) or counts one
    /// more use of the same stack stored before. Returns its id, or `None` when it could not
    /// be stored (no memory, or [`MAX_STACKS`] distinct stacks stored).
    pub fn intern<P: Pool>(&self, pool: &P, frames: &[u64], mut flags: u8) -> Option<u32> {
        if frames.is_empty() {
            return None;
        }
        let frames = if frames.len() > MAX_FRAMES {
            flags |= TRUNCATED;
            &frames[..MAX_FRAMES]
        } else {
            frames
        };
        self.locked(|t| {
            let hash = hash_of(frames, flags, t.seed);
            if t.heads.is_null() && !Self::start(pool, t) {
                return None;
            }
            let chain = (hash % CHAINS) as usize;
            // SAFETY: `heads` is a live block of CHAINS links; chain < CHAINS.
            let head = unsafe { &mut *t.heads.wrapping_add(chain) };
            let mut cur = *head;
            while cur != NIL {
                let s = Self::slot(t, cur);
                if s.hash == hash
                    && s.flags == flags
                    && usize::from(s.len) == frames.len()
                    && s.frames[..frames.len()] == *frames
                {
                    s.uses += 1;
                    return Some(Self::id_of(cur, s.generation));
                }
                cur = s.next;
            }
            let index = Self::take_free(pool, t)?;
            let s = Self::slot(t, index);
            s.hash = hash;
            s.uses = 1;
            s.flags = flags;
            #[allow(clippy::cast_possible_truncation, reason = "at most MAX_FRAMES")]
            let len = frames.len() as u8;
            s.len = len;
            s.frames = [0; MAX_FRAMES];
            s.frames[..frames.len()].copy_from_slice(frames);
            s.next = *head;
            *head = index;
            let id = Self::id_of(index, s.generation);
            t.live += 1;
            locked_add32(&self.count, 1);
            Some(id)
        })
    }

    /// One use of stack `id` is gone; the stack goes with its last use, and the table's
    /// blocks with its last stack unless `keep` says so (capture is on: the next open would
    /// allocate them again; asked under the table's lock, so a `trim` that ran before it
    /// is not undone). A stale or foreign id is ignored (returns false).
    pub fn release<P: Pool>(&self, pool: &P, id: u32, keep: impl FnOnce() -> bool) -> bool {
        self.locked(|t| {
            let Some(index) = Self::valid(t, id) else {
                return false;
            };
            let s = Self::slot(t, index);
            s.uses -= 1;
            if s.uses > 0 {
                return true;
            }
            let chain = (s.hash % CHAINS) as usize;
            // The table is started (a valid id was found); chain < CHAINS.
            let mut link: *mut u32 = t.heads.wrapping_add(chain);
            // SAFETY: `link` points at a chain head or a live slot's `next`, both in blocks
            // the table owns.
            while unsafe { *link } != index {
                // SAFETY: as above; the chain holds `index`, so the walk ends there.
                let cur = unsafe { *link };
                link = &raw mut Self::slot(t, cur).next;
            }
            let s = Self::slot(t, index);
            // SAFETY: `link` is the link that names `index` (see the loop).
            unsafe { *link = s.next };
            s.next = t.free;
            t.free = index;
            t.live -= 1;
            locked_sub32(&self.count, 1);
            if t.live == 0 && !keep() {
                Self::stop(pool, t);
            }
            true
        })
    }

    /// Gives the table's blocks back if it stores no stack (capture was turned off).
    pub fn trim<P: Pool>(&self, pool: &P) {
        self.locked(|t| {
            if t.live == 0 && !t.heads.is_null() {
                Self::stop(pool, t);
            }
        });
    }

    /// The first stored stack at or after slot `from` (a query's resume position), with the
    /// slot after it.
    pub fn next_from(&self, from: u32) -> Option<(StoredStack, u32)> {
        self.locked(|t| {
            let end = t.chunks * PER_CHUNK;
            let mut i = from;
            while i < end {
                let s = Self::slot(t, i);
                if s.uses > 0 {
                    return Some((
                        StoredStack {
                            id: Self::id_of(i, s.generation),
                            flags: s.flags,
                            uses: s.uses,
                            len: s.len,
                            frames: s.frames,
                        },
                        i + 1,
                    ));
                }
                i += 1;
            }
            None
        })
    }

    /// Frees every block (teardown; stacks still counted are dropped).
    pub fn teardown<P: Pool>(&self, pool: &P) {
        self.locked(|t| {
            if !t.heads.is_null() {
                Self::stop(pool, t);
            }
            self.count.store(0, Relaxed);
        });
    }

    const fn id_of(index: u32, generation: u32) -> u32 {
        ((generation & GENERATION_MASK) << SLOT_BITS) | (index + 1)
    }

    /// The slot `id` names while it is in use.
    fn valid(t: &Inner, id: u32) -> Option<u32> {
        let index = (id & ((1 << SLOT_BITS) - 1)).checked_sub(1)?;
        if t.heads.is_null() || index >= t.chunks * PER_CHUNK {
            return None;
        }
        let s = Self::slot(t, index);
        (s.uses > 0 && s.generation & GENERATION_MASK == id >> SLOT_BITS).then_some(index)
    }

    #[allow(
        clippy::mut_from_ref,
        reason = "the table's lock is held by the caller"
    )]
    fn slot(t: &Inner, index: u32) -> &mut Slot {
        let chunk = index / PER_CHUNK;
        debug_assert!(chunk < t.chunks);
        // SAFETY: `dir` holds `chunks` live chunk pointers and chunk < chunks (every index
        // handed out or walked is below `chunks * PER_CHUNK`); the lock is held.
        let base = unsafe { *t.dir.wrapping_add(chunk as usize) };
        // SAFETY: a chunk holds PER_CHUNK slots; the lock makes this the only reference.
        unsafe { &mut *base.wrapping_add((index % PER_CHUNK) as usize) }
    }

    /// Allocates the directory and chain heads.
    fn start<P: Pool>(pool: &P, t: &mut Inner) -> bool {
        let Some(dir) = pool.alloc(CLASS) else {
            return false;
        };
        let Some(heads) = pool.alloc(CLASS) else {
            // SAFETY: just allocated from this class, never shared.
            unsafe { pool.free(CLASS, dir) };
            return false;
        };
        #[allow(clippy::cast_ptr_alignment, reason = "pool blocks are 16-byte aligned")]
        let heads = heads.as_ptr().cast::<u32>();
        for i in 0..CHAINS as usize {
            // SAFETY: a 4 KiB block holds CHAINS (1,024) u32 links.
            unsafe { heads.wrapping_add(i).write(NIL) };
        }
        t.dir = dir.as_ptr().cast();
        t.heads = heads;
        t.chunks = 0;
        t.free = NIL;
        t.live = 0;
        true
    }

    /// Gives back every block.
    fn stop<P: Pool>(pool: &P, t: &mut Inner) {
        for c in 0..t.chunks as usize {
            // SAFETY: `dir` holds `chunks` live chunk pointers.
            let chunk = unsafe { *t.dir.wrapping_add(c) };
            if let Some(chunk) = NonNull::new(chunk) {
                // SAFETY: allocated from CLASS by `take_free`; nothing refers to it now.
                unsafe { pool.free(CLASS, chunk.cast()) };
            }
        }
        for block in [t.dir.cast::<u8>(), t.heads.cast::<u8>()] {
            if let Some(b) = NonNull::new(block) {
                // SAFETY: both were allocated from CLASS by `start`.
                unsafe { pool.free(CLASS, b) };
            }
        }
        *t = Inner {
            dir: ptr::null_mut(),
            heads: ptr::null_mut(),
            chunks: 0,
            free: NIL,
            live: 0,
            next_generation: t.next_generation,
            seed: t.seed,
        };
    }

    /// A free slot: from the free list, or a new chunk.
    fn take_free<P: Pool>(pool: &P, t: &mut Inner) -> Option<u32> {
        if t.free == NIL {
            if t.chunks >= MAX_CHUNKS {
                return None;
            }
            #[allow(clippy::cast_ptr_alignment, reason = "pool blocks are 16-byte aligned")]
            let chunk = pool.alloc(CLASS)?.as_ptr().cast::<Slot>();
            let first = t.chunks * PER_CHUNK;
            for i in 0..PER_CHUNK {
                let next = if i + 1 < PER_CHUNK {
                    first + i + 1
                } else {
                    NIL
                };
                // SAFETY: the chunk holds PER_CHUNK slots; each is written once here.
                unsafe {
                    chunk.wrapping_add(i as usize).write(Slot {
                        hash: 0,
                        uses: 0,
                        next,
                        len: 0,
                        flags: 0,
                        _pad: 0,
                        generation: 0,
                        frames: [0; MAX_FRAMES],
                    });
                }
            }
            // SAFETY: chunks < MAX_CHUNKS, inside the directory block.
            unsafe { t.dir.wrapping_add(t.chunks as usize).write(chunk) };
            t.chunks += 1;
            t.free = first;
        }
        let index = t.free;
        let generation = t.next_generation;
        t.next_generation = (generation + 1) & GENERATION_MASK;
        let s = Self::slot(t, index);
        s.generation = generation;
        let next = s.next;
        t.free = next;
        Some(index)
    }
}
