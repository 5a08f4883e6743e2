//! Processes and their (process, hive) holdings.
//!
//! A process is its pid plus a start key, so a reused pid is another process. The table is
//! hashed by that pair into 4,096 chains under 64 shard locks (a lookup walks about one
//! record per 4,096 processes, so 10,000 processes cost no more than 100); each process has
//! its own lock, which guards its holdings list and
//! the key lists inside them. A holding is one process's open keys in one hive: its count
//! (O(1)), and its keys as a list ordered by (open time, sequence), so the oldest is the
//! head and an insert with a non-decreasing time is O(1).
//!
//! Lifetimes: a holding lives while it has keys; a process lives until it has exited and
//! holds nothing. Lock order (a lock is only ever taken while holding locks to its left):
//! hive shard, process shard, process, name shard. The hive shard's holdings lock
//! (`crate::hives`) is a leaf, taken under a process lock (a holding made or emptied) or
//! under nothing (an unload's holders, found from the hive's list of its holdings without
//! a walk of every process). The key-cache shard
//! (`crate::keys`) is a leaf, taken under the hive shard by an open that fills the cache and
//! under nothing else, and nothing is taken under it. The object shard's lock is a leaf too,
//! taken under nothing (a slot is taken and given back without it: `crate::objects`; it
//! guards a shard's growth and `identify`'s walk). A held key's open takes the process shard
//! and the process without the hive shard when the process's holding pins the hive. The
//! top dropper's lock (`crate::budget::TopDropper`) is a leaf: taken under a process lock
//! (an open refused for its share, on the fresh path with the hive shard held too) or
//! under nothing (`stats`), and nothing is taken under it. The table's teardown
//! (`Tracker`'s drop) unlinks the holdings under a process shard and a process, and unpins
//! their hives (which may take a hive shard) after releasing both, so it keeps this order
//! too (Driver Verifier's Deadlock Detection reports an order loop even if never
//! simultaneous: audit 24a, F1).
//!
//! Issues 16 and 17 add: the capture scope's lock (`crate::capture`), taken first, under
//! nothing, and holding the hive shard (resolving a hive scope, then the name shard) or a
//! process lock (an image scope) under it; the stack table's lock (`crate::stacks`) and the
//! history's lock (`crate::history`, the event stream), leaves taken under nothing and
//! holding nothing (a stack is stored before the record is linked, and given back after it
//! is freed). The driver's wait table lock (`driver/src/waiters.rs`) holds the hive
//! shard (a wait's hive test) under it; an event page is written after it is released, and
//! no tracker lock is held when it is taken.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::counters::{locked_add32, locked_sub32};
use crate::hives::Hive;
use crate::lock::{Exclusive, Hold, RawLock, Shared};
use crate::names::{NameEntry, NameRef};
use crate::pool::{BlockClass, Pool, alloc_init, free_block};

const SHARDS: usize = 64;
/// Chains per shard.
const BUCKETS: usize = 64;
/// Size class of a process record.
pub const PROCESS_CLASS: BlockClass = BlockClass::B256;
/// What a process record costs: charged to the process itself ([`Process::charged`]).
pub const PROCESS_COST: u64 = crate::budget::pool_cost(PROCESS_CLASS.size());
/// Size class of a holding.
pub const HOLDING_CLASS: BlockClass = BlockClass::B64;

/// A process as the driver names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    /// Process id.
    pub pid: u64,
    /// Start key (`PsGetProcessStartKey`, or the creation time): makes a reused pid another
    /// process.
    pub start_key: u64,
}

/// A process.
pub struct Process<L> {
    /// Guards `holdings` and every key list inside them.
    pub lock: L,
    next: AtomicPtr<Self>,
    /// Identity.
    pub key: ProcessKey,
    /// Image path (counted), or null. Set once (Release, under its lock) and released only
    /// when the record is freed, so a reader that keeps the process alive otherwise (a
    /// listed holding) may load it with Acquire without the lock.
    pub image: AtomicPtr<NameEntry>,
    /// Set by `process_exited`.
    pub exited: AtomicBool,
    /// Its naming was put off (the open that made its record came at `APC_LEVEL`): its next
    /// new open asks the driver again ([`crate::Tracker::defer_naming`]).
    pub naming_deferred: AtomicBool,
    /// A 32-bit (Wow64) program, as the driver learnt at a captured open.
    pub wow64: AtomicBool,
    /// Tracked objects it opened.
    pub open_keys: AtomicU64,
    /// Holdings, sorted by hive id.
    pub holdings: AtomicPtr<Holding<L>>,
    /// Number of holdings.
    pub nholdings: AtomicU32,
    /// Bytes its tracked opens are charged against its share of the budget (written under
    /// its lock).
    pub charged: AtomicU64,
    /// Its opens dropped because its share was used (written under its lock).
    pub share_drops: AtomicU64,
    /// Its opens not tracked for want of memory (an allocation refused; written under its
    /// lock).
    pub memory_drops: AtomicU64,
    /// What its own record, image name and module list are charged (part of `charged`;
    /// written under its lock): what stays when it exits still holding keys.
    pub own_charged: AtomicU64,
    /// What its module list is charged (part of `own_charged`; written under its lock).
    pub modules_charged: AtomicU64,
    /// What it moved to the tracker's pool of exited processes' leftovers at its exit
    /// (`Tracker::process_exited`), given back when it is reaped (written under its lock).
    pub leftover: AtomicU64,
    /// Its mapped images, oldest first ([`crate::modules`]; written under its lock).
    pub modules: AtomicPtr<crate::modules::Module>,
    /// The last of them.
    pub modules_tail: AtomicPtr<crate::modules::Module>,
    /// How many.
    pub nmodules: AtomicU32,
    /// When its first image load could not be kept (0: none; written under its lock).
    pub modules_lost_since: AtomicU64,
    /// Where the last modules page stopped in its list (the module and its index), so the
    /// next page resumes there without a walk (written under its lock).
    pub modules_hint: AtomicPtr<crate::modules::Module>,
    /// The index of `modules_hint` (below [`crate::modules::MAX_MODULES`]).
    pub modules_hint_index: AtomicU32,
    /// Its tracked objects that carry a captured stack (written under its lock).
    pub stacked: AtomicU32,
    /// The highest key-count alarm level it reached (1: the threshold, 2: twice it, …; 0:
    /// none), so that a process hovering at a level raises it once (written under its lock).
    pub alarm_level: AtomicU32,
}

/// One process's keys in one hive.
pub struct Holding<L> {
    /// Next holding of the process.
    pub next: AtomicPtr<Self>,
    /// The hive (counted).
    pub hive: NonNull<Hive>,
    /// The process.
    pub process: NonNull<Process<L>>,
    /// Keys in the list (at most the tracker's object cap, a `u32`).
    pub count: AtomicU32,
    /// First (oldest) key, or none ([`crate::links::Link`], as the records' own links).
    pub(crate) head: crate::links::Link,
    /// Last key, or none.
    pub(crate) tail: crate::links::Link,
    /// Next sequence number.
    pub seq: AtomicU32,
    /// Next holding of the hive ([`Hive`]'s holdings list, under its shard's holdings lock).
    hive_next: AtomicPtr<Self>,
    /// Previous one, or null for the list's first.
    hive_prev: AtomicPtr<Self>,
}

impl<L> Holding<L> {
    /// The hive's id (fixed for the hive's life, which the holding's count on it spans;
    /// read through the hive, so that a holding with its list's two links fits 64 bytes).
    pub const fn hive_id(&self) -> u32 {
        crate::hives::hive_of(self.hive).id
    }

    /// Links `h` first in its hive's holdings list `head` (caller holds the hive shard's
    /// holdings lock exclusively, and `h`'s process lock).
    pub fn link_in_hive(head: &AtomicPtr<()>, h: NonNull<Self>) {
        let first = head.load(Relaxed).cast::<Self>();
        let hold = holding_of(h);
        hold.hive_prev.store(ptr::null_mut(), Relaxed);
        hold.hive_next.store(first, Relaxed);
        if let Some(f) = NonNull::new(first) {
            holding_of(f).hive_prev.store(h.as_ptr(), Relaxed);
        }
        head.store(h.as_ptr().cast(), Relaxed);
    }

    /// Unlinks `h` from its hive's holdings list `head` in O(1) (same locks as
    /// [`Self::link_in_hive`]).
    pub fn unlink_from_hive(head: &AtomicPtr<()>, h: NonNull<Self>) {
        let hold = holding_of(h);
        let next = hold.hive_next.load(Relaxed);
        let prev = hold.hive_prev.load(Relaxed);
        if let Some(n) = NonNull::new(next) {
            holding_of(n).hive_prev.store(prev, Relaxed);
        }
        match NonNull::new(prev) {
            Some(p) => holding_of(p).hive_next.store(next, Relaxed),
            None => head.store(next.cast(), Relaxed),
        }
    }

    /// Calls `f` on every holding of the hive whose list is `head` (caller holds the hive
    /// shard's holdings lock: a listed holding, and so its process, lives while it does).
    pub fn each_in_hive(head: &AtomicPtr<()>, mut f: impl FnMut(NonNull<Self>)) {
        let mut cur = head.load(Relaxed).cast::<Self>();
        while let Some(h) = NonNull::new(cur) {
            f(h);
            cur = holding_of(h).hive_next.load(Relaxed);
        }
    }
}

/// Reads a process the caller keeps alive (its shard lock, its own lock via a holding, or a
/// linked key).
#[must_use]
pub const fn process_of<'a, L>(p: NonNull<Process<L>>) -> &'a Process<L> {
    // SAFETY: processes are freed only under their shard lock and their own lock once they
    // have exited and hold nothing; every caller holds one of the references listed above.
    unsafe { p.as_ref() }
}

/// Reads a holding the caller keeps alive (its process's lock, or a linked key).
#[must_use]
pub const fn holding_of<'a, L>(h: NonNull<Holding<L>>) -> &'a Holding<L> {
    // SAFETY: holdings are freed only under their process's lock once empty; callers hold
    // that lock or a key still linked into the holding.
    unsafe { h.as_ref() }
}

impl<L> Process<L> {
    /// The image, if known.
    pub fn image(&self) -> Option<NameRef> {
        NonNull::new(self.image.load(Relaxed))
    }

    /// Finds the holding for `hive_id` (caller holds the process lock).
    pub fn holding(&self, hive_id: u32) -> Option<NonNull<Holding<L>>> {
        let mut cur = self.holdings.load(Relaxed);
        while let Some(h) = NonNull::new(cur) {
            let hold = holding_of(h);
            if hold.hive_id() == hive_id {
                return Some(h);
            }
            if hold.hive_id() > hive_id {
                return None;
            }
            cur = hold.next.load(Relaxed);
        }
        None
    }

    /// The holding for the hive at `hive` (caller holds the process lock). Compares
    /// addresses only, so `hive` need not be alive: a match is, pinned by the holding.
    pub fn holding_at(&self, hive: NonNull<Hive>) -> Option<NonNull<Holding<L>>> {
        let mut cur = self.holdings.load(Relaxed);
        while let Some(h) = NonNull::new(cur) {
            let hold = holding_of(h);
            if hold.hive == hive {
                return Some(h);
            }
            cur = hold.next.load(Relaxed);
        }
        None
    }

    /// The first holding with a hive id >= `hive_id` (caller holds the process lock).
    pub fn holding_from(&self, hive_id: u32) -> Option<NonNull<Holding<L>>> {
        let mut cur = self.holdings.load(Relaxed);
        while let Some(h) = NonNull::new(cur) {
            if holding_of(h).hive_id() >= hive_id {
                return Some(h);
            }
            cur = holding_of(h).next.load(Relaxed);
        }
        None
    }

    /// Inserts a new holding in hive-id order (caller holds the process lock).
    pub fn insert_holding(&self, h: NonNull<Holding<L>>) {
        let id = holding_of(h).hive_id();
        let mut link = &self.holdings;
        loop {
            let cur = link.load(Relaxed);
            match NonNull::new(cur) {
                Some(c) if holding_of(c).hive_id() < id => link = &holding_of(c).next,
                _ => {
                    holding_of(h).next.store(cur, Relaxed);
                    link.store(h.as_ptr(), Relaxed);
                    break;
                }
            }
        }
        locked_add32(&self.nholdings, 1);
    }

    /// Unlinks a holding (caller holds the process lock).
    pub fn remove_holding(&self, h: NonNull<Holding<L>>) {
        let mut link = &self.holdings;
        loop {
            let cur = link.load(Relaxed);
            if cur == h.as_ptr() {
                link.store(holding_of(h).next.load(Relaxed), Relaxed);
                locked_sub32(&self.nholdings, 1);
                return;
            }
            match NonNull::new(cur) {
                Some(c) => link = &holding_of(c).next,
                None => return,
            }
        }
    }
}

struct Shard<L> {
    lock: L,
    heads: [AtomicPtr<Process<L>>; BUCKETS],
    count: AtomicU32,
    /// The shard's last [`GONE`] processes whose exit was seen and whose record is gone
    /// (reaped, or never made), oldest overwritten first (under the exclusive lock).
    gone: [Gone; GONE],
    /// Where the next one is written.
    gone_next: AtomicU32,
}

/// Processes remembered gone per shard (4,096 bytes for the table). A record for one of
/// them made afterwards is made exited ([`ProcessTable::lock_process`]): see [`Gone`].
const GONE: usize = 4;

/// A process whose exit was seen and whose record is gone.
///
/// Audit 22a, F3: an open can link after its process's exit notification. The last
/// thread's `PspExitProcess` calls the process notify routines before `ObKillProcess` runs
/// the handle table down (Windows Research Kernel `base/ntos/ps/psdelete.c`,
/// `PspExitThread`: `PspExitProcess (TRUE, Process)` then `ObKillProcess (Process)`), so a
/// thread attached to the process (its open's handle goes into the process's table and is
/// put down to it) can still be between its key's creation and its post-open. Its link
/// would make a record nothing reaps (no second exit comes). A record made for a
/// remembered key is made exited instead, and goes with its last key. Only the last
/// [`GONE`] of a shard are remembered: a record made after more of its shard's exits than
/// that is kept until unload, as before (listed as running: more held, never less).
struct Gone {
    pid: AtomicU64,
    start_key: AtomicU64,
}

impl Gone {
    const fn new() -> Self {
        Self {
            pid: AtomicU64::new(u64::MAX),
            start_key: AtomicU64::new(u64::MAX),
        }
    }
}

impl<L: RawLock> Shard<L> {
    fn new() -> Self {
        Self {
            lock: L::new(),
            heads: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            count: AtomicU32::new(0),
            gone: [const { Gone::new() }; GONE],
            gone_next: AtomicU32::new(0),
        }
    }

    /// Remembers `key` gone (caller holds the lock exclusively). A key without a start key
    /// (the driver had neither `PsGetProcessStartKey` nor a creation time) is not
    /// remembered: a reused pid would then match it and a running process be made exited
    /// (review 22c, L2).
    fn remember_gone(&self, key: ProcessKey) {
        if key.start_key == 0 || self.was_gone(key) {
            return;
        }
        let i = self.gone_next.load(Relaxed) as usize % GONE;
        self.gone[i].pid.store(key.pid, Relaxed);
        self.gone[i].start_key.store(key.start_key, Relaxed);
        #[allow(clippy::cast_possible_truncation, reason = "GONE is 4")]
        self.gone_next.store(((i + 1) % GONE) as u32, Relaxed);
    }

    /// True when `key` is remembered gone (caller holds the lock exclusively).
    fn was_gone(&self, key: ProcessKey) -> bool {
        key.start_key != 0
            && self.gone.iter().any(|g| {
                g.pid.load(Relaxed) == key.pid && g.start_key.load(Relaxed) == key.start_key
            })
    }
}

/// The process table.
pub struct ProcessTable<L> {
    shards: [Shard<L>; SHARDS],
}

/// Why a process could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoProcess;

/// The hash of a process key.
///
/// Its top 12 bits place it in this table ([`place_of`]); the tracker picks the process's
/// object shard from bits below them (`Tracker::shard_for`), so that an open hashes its
/// process once (issue 14).
#[must_use]
pub const fn process_hash(k: ProcessKey) -> u64 {
    (k.pid >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ k.start_key.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// (shard, chain) of a process: the hash's top 6 bits pick the shard, the next 6 the chain.
const fn place_of(k: ProcessKey) -> (usize, usize) {
    let h = process_hash(k);
    ((h >> 58) as usize % SHARDS, (h >> 52) as usize % BUCKETS)
}

/// Where a process comes in a walk of the table ([`ProcessTable::next_in_walk`]).
///
/// Its chain, then its key. Reports that list processes (holders, snapshot) use this order:
/// stable for a given key, and resumable from a key in constant time.
#[must_use]
pub const fn walk_order(k: ProcessKey) -> (usize, ProcessKey) {
    let (shard, chain) = place_of(k);
    (shard * BUCKETS + chain, k)
}

/// A process locked by [`ProcessTable::lock_process`]; unlocks on drop.
///
/// Its own lock goes first, then its table shard's (fields drop in order): no lock is
/// released out of order, so each release can restore the IRQL its own acquisition returned
/// (docs, `ExReleaseSpinLockShared`: "Set this parameter to the KIRQL value that was
/// returned by the `ExAcquireSpinLockShared` call").
pub struct LockedProcess<'a, L: RawLock> {
    /// The process.
    pub process: NonNull<Process<L>>,
    _guard: Exclusive<'a, L>,
    /// Its shard: shared (a lookup) or exclusive (an insertion); held while the process is,
    /// which also keeps it from being reaped.
    _table: Hold<'a, L>,
    /// True when this call created the record.
    pub created: bool,
}

impl<L: RawLock> LockedProcess<'_, L> {
    /// Unlocks the process, then its table shard, as the drop does, but inline: the drop
    /// glue is a call of its own (issue 14: 19 instructions a held open).
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn unlock(self) {
        let Self {
            _guard: process,
            _table: table,
            ..
        } = self;
        drop(process);
        match table {
            Hold::Shared(table) => drop(table),
            Hold::Exclusive(table) => drop(table),
        }
    }
}

impl<L: RawLock> Default for ProcessTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> ProcessTable<L> {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| Shard::new()),
        }
    }

    /// Writes an empty table at `p` shard by shard, so that the 33 KiB table is never
    /// built on the (kernel) stack first.
    ///
    /// # Safety
    /// `p` is valid for writes of a `ProcessTable<L>` and properly aligned.
    pub unsafe fn init_at(p: *mut Self) {
        // SAFETY: the caller's guarantee; this only computes a field address.
        let shards = unsafe { &raw mut (*p).shards }.cast::<Shard<L>>();
        for i in 0..SHARDS {
            let element = shards.wrapping_add(i);
            // SAFETY: `i` < SHARDS, inside the array; each element is written once.
            unsafe {
                element.write(Shard::new());
            }
        }
    }

    fn find(shard: &Shard<L>, chain: usize, key: ProcessKey) -> Option<NonNull<Process<L>>> {
        let mut cur = shard.heads[chain].load(Relaxed);
        while let Some(p) = NonNull::new(cur) {
            let proc = process_of(p);
            if proc.key == key {
                return Some(p);
            }
            cur = proc.next.load(Relaxed);
        }
        None
    }

    /// Finds (or, with `create`, creates) the process and returns it locked, with its shard
    /// lock held as long. A process already known is looked up with the shard lock shared
    /// (issue 14: opens of different processes of one shard, and queries, overlap); only a
    /// new one's insertion takes it exclusively.
    ///
    /// # Errors
    /// [`NoProcess`] when it does not exist (and `create` is false) or no memory.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn lock_process<'a, P: Pool>(
        &'a self,
        pool: &P,
        key: ProcessKey,
        create: bool,
    ) -> Result<LockedProcess<'a, L>, NoProcess> {
        let (si, chain) = place_of(key);
        let shard = &self.shards[si];
        {
            // The chains change only under the exclusive lock; the process, once found,
            // is freed only under it too, after its own lock showed it unused (`reap`).
            let sg = Shared::new(&shard.lock);
            if let Some(p) = Self::find(shard, chain, key) {
                return Ok(LockedProcess {
                    process: p,
                    _guard: Exclusive::new(&process_of(p).lock),
                    _table: Hold::Shared(sg),
                    created: false,
                });
            }
        }
        if !create {
            return Err(NoProcess);
        }
        self.insert(pool, key)
    }

    /// [`Self::lock_process`] for a process not found: inserted unless another open
    /// inserted it meanwhile. Cold and out of line: a known process's open (the hot path)
    /// carries none of it.
    #[cold]
    #[inline(never)]
    fn insert<'a, P: Pool>(
        &'a self,
        pool: &P,
        key: ProcessKey,
    ) -> Result<LockedProcess<'a, L>, NoProcess> {
        let (si, chain) = place_of(key);
        let shard = &self.shards[si];
        let sg = Exclusive::new(&shard.lock);
        let (p, created) = if let Some(p) = Self::find(shard, chain, key) {
            (p, false)
        } else {
            let p = alloc_init(
                pool,
                PROCESS_CLASS,
                Process {
                    lock: L::new(),
                    next: AtomicPtr::new(shard.heads[chain].load(Relaxed)),
                    key,
                    image: AtomicPtr::new(ptr::null_mut()),
                    // Its exit was seen already (an open linking late, [`Gone`]): no
                    // other exit will come to mark it.
                    exited: AtomicBool::new(shard.was_gone(key)),
                    naming_deferred: AtomicBool::new(false),
                    wow64: AtomicBool::new(false),
                    open_keys: AtomicU64::new(0),
                    holdings: AtomicPtr::new(ptr::null_mut()),
                    nholdings: AtomicU32::new(0),
                    // Its own record is charged to it from the start.
                    charged: AtomicU64::new(PROCESS_COST),
                    share_drops: AtomicU64::new(0),
                    memory_drops: AtomicU64::new(0),
                    own_charged: AtomicU64::new(PROCESS_COST),
                    modules_charged: AtomicU64::new(0),
                    leftover: AtomicU64::new(0),
                    modules: AtomicPtr::new(ptr::null_mut()),
                    modules_tail: AtomicPtr::new(ptr::null_mut()),
                    nmodules: AtomicU32::new(0),
                    modules_lost_since: AtomicU64::new(0),
                    modules_hint: AtomicPtr::new(ptr::null_mut()),
                    modules_hint_index: AtomicU32::new(0),
                    stacked: AtomicU32::new(0),
                    alarm_level: AtomicU32::new(0),
                },
            )
            .ok_or(NoProcess)?;
            shard.heads[chain].store(p.as_ptr(), Relaxed);
            locked_add32(&shard.count, 1);
            (p, true)
        };
        Ok(LockedProcess {
            process: p,
            _guard: Exclusive::new(&process_of(p).lock),
            _table: Hold::Exclusive(sg),
            created,
        })
    }

    /// Frees the process if it has exited and holds nothing. Returns its image reference
    /// and its module list for the caller to release (names come last in the lock order),
    /// and what it had moved to the exited processes' leftovers ([`Process::leftover`]).
    pub fn reap<P: Pool>(
        &self,
        pool: &P,
        key: ProcessKey,
    ) -> Option<(
        Option<NameRef>,
        Option<NonNull<crate::modules::Module>>,
        u64,
    )> {
        let (si, chain) = place_of(key);
        let shard = &self.shards[si];
        let _sg = Exclusive::new(&shard.lock);
        let p = Self::find(shard, chain, key)?;
        let proc = process_of(p);
        {
            let _pg = Exclusive::new(&proc.lock);
            if !proc.exited.load(Relaxed) || !proc.holdings.load(Relaxed).is_null() {
                return None;
            }
        }
        let mut link = &shard.heads[chain];
        loop {
            let cur = link.load(Relaxed);
            if cur == p.as_ptr() {
                link.store(proc.next.load(Relaxed), Relaxed);
                break;
            }
            match NonNull::new(cur) {
                Some(c) => link = &process_of(c).next,
                None => break,
            }
        }
        locked_sub32(&shard.count, 1);
        shard.remember_gone(key);
        let image = proc.image();
        let modules = NonNull::new(proc.modules.load(Relaxed));
        let leftover = proc.leftover.load(Relaxed);
        // SAFETY: unlinked under the shard lock, and its own lock showed it holds nothing:
        // no key, holding or lookup can reach it any more.
        unsafe { free_block(pool, PROCESS_CLASS, p) };
        Some((image, modules, leftover))
    }

    /// `key` exited: calls `f` on its record (under its shard lock, exclusive, and its own
    /// lock; `f` marks it exited) and returns what `f` returns; or, with no record,
    /// remembers it gone ([`Gone`]) and returns `None`. Takes its shard exclusively, as a
    /// record's creation does, so a record is either made before (and marked by `f`) or made
    /// after, exited.
    pub fn exited<R>(&self, key: ProcessKey, f: impl FnOnce(&Process<L>) -> R) -> Option<R> {
        let (si, chain) = place_of(key);
        let shard = &self.shards[si];
        let _sg = Exclusive::new(&shard.lock);
        if let Some(p) = Self::find(shard, chain, key) {
            let proc = process_of(p);
            let _pg = Exclusive::new(&proc.lock);
            return Some(f(proc));
        }
        shard.remember_gone(key);
        None
    }

    /// Calls `f` on every process of chain `head` (the caller holds its shard's lock).
    fn each_in_chain(head: &AtomicPtr<Process<L>>, mut f: impl FnMut(&Process<L>)) {
        let mut cur = head.load(Relaxed);
        while let Some(p) = NonNull::new(cur) {
            let proc = process_of(p);
            f(proc);
            cur = proc.next.load(Relaxed);
        }
    }

    /// Calls `f` on every process, under its shard lock only (`f` takes the process lock
    /// itself where it needs one).
    fn each(&self, mut f: impl FnMut(&Process<L>)) {
        for s in &self.shards {
            let _sg = Shared::new(&s.lock);
            for head in &s.heads {
                Self::each_in_chain(head, &mut f);
            }
        }
    }

    /// Calls `f` on every process, under its shard lock and its own lock.
    pub fn for_each(&self, mut f: impl FnMut(&Process<L>)) {
        self.each(|proc| {
            let _pg = Exclusive::new(&proc.lock);
            f(proc);
        });
    }

    /// The next process after `after` in the table's walk order ([`walk_order`]) for which
    /// `keep` (called under the process's lock) is true. A walk resumes from a key alone, in
    /// time proportional to the chains it passes: from the key's own chain, on. So a paged
    /// report over the whole table costs one pass over it, however many pages it takes.
    pub fn next_in_walk(
        &self,
        after: Option<ProcessKey>,
        mut keep: impl FnMut(&Process<L>) -> bool,
    ) -> Option<ProcessKey> {
        let start = after.map_or(0, |k| walk_order(k).0);
        for si in start / BUCKETS..SHARDS {
            let s = &self.shards[si];
            // Shared: a walk reads the chains, and opens of the shard's processes go on.
            let _sg = Shared::new(&s.lock);
            let first = if si == start / BUCKETS {
                start % BUCKETS
            } else {
                0
            };
            for chain in first..BUCKETS {
                // Chains are unordered and short: the smallest qualifying key of the chain
                // (above `after` in `after`'s own chain) is the next one.
                let bound = after.filter(|_| si * BUCKETS + chain == start);
                let mut best: Option<ProcessKey> = None;
                Self::each_in_chain(&s.heads[chain], |proc| {
                    let k = proc.key;
                    if bound.is_none_or(|b| k > b) && best.is_none_or(|b| k < b) {
                        let _pg = Exclusive::new(&proc.lock);
                        if keep(proc) {
                            best = Some(k);
                        }
                    }
                });
                if best.is_some() {
                    return best;
                }
            }
        }
        None
    }

    /// Calls `f` on the process `key` under its own lock and its shard's, shared: a query
    /// writing a page of one process's keys holds up the opens of that process, and a
    /// writer of its shard (a new process's insertion, a reap) — behind which, writers
    /// going first, the shard's other lookups then wait too — for that one page.
    pub fn with<R>(&self, key: ProcessKey, f: impl FnOnce(&Process<L>) -> R) -> Option<R> {
        let (si, chain) = place_of(key);
        let s = &self.shards[si];
        let _sg = Shared::new(&s.lock);
        let p = Self::find(s, chain, key)?;
        let proc = process_of(p);
        let _pg = Exclusive::new(&proc.lock);
        Some(f(proc))
    }

    /// Processes known now.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.count.load(Relaxed)))
            .sum()
    }

    /// Unlinks and frees every process (teardown: holdings must be gone); calls `image` with
    /// each image reference to release.
    pub fn teardown<P: Pool>(&mut self, pool: &P, mut image: impl FnMut(NameRef)) {
        for s in &mut self.shards {
            for head in &s.heads {
                let mut cur = head.swap(ptr::null_mut(), Relaxed);
                while let Some(p) = NonNull::new(cur) {
                    let proc = process_of(p);
                    cur = proc.next.load(Relaxed);
                    if let Some(i) = proc.image() {
                        image(i);
                    }
                    // SAFETY: teardown has exclusive access; the record is unlinked.
                    unsafe { free_block(pool, PROCESS_CLASS, p) };
                }
            }
            s.count.store(0, Relaxed);
        }
    }
}

/// Allocates a holding.
pub fn new_holding<P: Pool, L>(
    pool: &P,
    hive: NonNull<Hive>,
    process: NonNull<Process<L>>,
) -> Option<NonNull<Holding<L>>> {
    alloc_init(
        pool,
        HOLDING_CLASS,
        Holding {
            next: AtomicPtr::new(ptr::null_mut()),
            hive,
            process,
            count: AtomicU32::new(0),
            head: crate::links::Link::new(),
            tail: crate::links::Link::new(),
            seq: AtomicU32::new(0),
            hive_next: AtomicPtr::new(ptr::null_mut()),
            hive_prev: AtomicPtr::new(ptr::null_mut()),
        },
    )
}

/// Frees an empty, unlinked holding.
///
/// # Safety
/// `h` came from [`new_holding`] on `pool`, is unlinked and holds no key.
pub unsafe fn free_holding<P: Pool, L>(pool: &P, h: NonNull<Holding<L>>) {
    // SAFETY: the caller's guarantee.
    unsafe { free_block(pool, HOLDING_CLASS, h) }
}
