//! The tracker: configuration, construction, the events the driver reports, and teardown.

use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use protocol::history::{MAX_UNLOAD_HOLDERS, UnloadRecord};
use protocol::holders::HiveKind;

use crate::budget::{Budgeted, TopDropper};
use crate::capture::Capture;
use crate::counters::{Counters, bump};
use crate::counters::{locked_add32, locked_add64, locked_sub32, locked_sub64};
use crate::held_after::Watches;
use crate::history::{HistEntry, HistHolder, History};
use crate::hives::{Hive, HiveHint, HiveTable, Vouch, hive_of};
use crate::keys::{ENTRY_COST, KeyCache, KeyHit, KeyMiss, KeyRef};
use crate::links::RecLink;
use crate::lock::{Exclusive, RawLock};
use crate::names::{NameRef, NameTable, name_of};
use crate::objects::{
    DYING, F_KEY_CHARGED, F_NAME_CHARGED, F_NAME_MISSING, F_NAME_TRUNCATED, LIVE, MAX_PER_SHARD,
    MAX_SHARDS, ObjRecord, ObjShard, RECORD_COST, RESERVED, SlotError, Token, split_ref,
};
use crate::pool::Pool;
use crate::processes::{
    Holding, LockedProcess, Process, ProcessKey, ProcessTable, free_holding, holding_of,
    new_holding, process_of,
};
use crate::stacks::StackTable;

/// Tracker settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Cap on tracked objects. Each object shard holds at most `cap / shards` (rounded up);
    /// an open whose shard is full takes a slot from the next shard with room, so opens are
    /// refused only when every shard is full.
    pub max_objects: u32,
    /// Object shards: a power of two, 1..=64.
    pub object_shards: u32,
    /// Unload attempts kept.
    pub history_len: u32,
    /// All tracking memory, in bytes of non-paged pool ([`crate::budget::pool_cost`] of every
    /// block): allocations past it are refused and counted like any failed allocation.
    pub budget_bytes: u64,
    /// The most one process's opens may be charged (its records plus the names they added):
    /// an open past it is dropped and counted as `opens_dropped_process_share`.
    pub process_share_bytes: u64,
    /// Open keys of one process that raise a key-count alarm in the event stream
    /// ([`protocol::events`]), again at each doubling (10,000, 20,000, 40,000, …: a leak of
    /// 65,602 handles raises three); 0 turns alarms off.
    pub key_alarm_threshold: u64,
    /// Seconds after a failed unload attempt at which the hive is looked at again and, if
    /// still held, reported in the event stream ([`crate::held_after`]); 0 turns it off.
    pub held_after_seconds: u64,
    /// Keys the hashes of stored stacks ([`crate::stacks`]) and names ([`crate::names`]); the
    /// driver gives a per-boot value.
    pub hash_seed: u64,
}

/// What a process's new holding of a hive is charged against its share.
///
/// For an application hive: the holding's block, the hive's record and its mount and file names at their
/// largest (a block each). Any user can load application hives (`RegLoadAppKey` needs no
/// privilege, Microsoft Learn, `RegLoadAppKeyW`), and one the process keeps a key open in
/// stays recorded for as long as it does ([`crate::hives`]): charged to nobody, one
/// process's app hives took the whole budget (audit 21b F4). The largest names are charged,
/// not the actual ones, so that the charge given back when the holding goes is the one taken
/// whatever happened to the hive's file name meanwhile (a load again at the mount replaces
/// it). A regular hive is loaded by an administrator and its holdings are bounded by the
/// hives there are: not charged (the shares' calibration stays records, names and keys).
#[must_use]
pub const fn holding_charge(kind: HiveKind) -> u64 {
    match kind {
        HiveKind::App => {
            crate::budget::pool_cost(crate::processes::HOLDING_CLASS.size())
                + crate::budget::pool_cost(crate::hives::HIVE_CLASS.size())
                + 2 * crate::budget::pool_cost(crate::pool::BlockClass::B4096.size())
        }
        HiveKind::Regular => 0,
    }
}

/// The default budget: 112 MiB.
///
/// A fixed figure because no documented kernel routine reports the size of non-paged pool
/// ("Memory Limits for Windows and Windows Server Releases" on Microsoft Learn gives it as
/// limited only by kernel address space and RAM on 64-bit Windows); it holds 1,048,576
/// records (98 bytes of pool each, 42 to a 4 KiB chunk) plus the names of a real workload
/// with room to spare (`tracker/tests/budget.rs` asserts at least 8 MiB left), and is under
/// 6% of the 2 GB of RAM the smallest supported x64 Windows needs. It was 96 MiB until the
/// records grew from 80 to 96 bytes (2026-12-06, issue 14's links by pointer), which left a
/// million objects less than 1 MiB (review 19c, A1).
pub const DEFAULT_BUDGET_BYTES: u64 = 112 << 20;
/// The default key-count alarm: 10,000 open keys in one process (a healthy process holds a
/// few hundred; the leak users report reached 65,602).
pub const DEFAULT_KEY_ALARM: u64 = 10_000;
/// The default delay before a hive whose unload failed is looked at again: 60 s. The User
/// Profile Service retries a profile hive's unload for a while after logoff before it logs
/// event 1530; a minute later a hive still held is a leak, not a slow close.
pub const DEFAULT_HELD_AFTER_SECONDS: u64 = 60;
/// The ceiling on a configured budget: 512 MiB.
pub const MAX_BUDGET_BYTES: u64 = 512 << 20;
/// The floor on a configured budget: 1 MiB.
pub const MIN_BUDGET_BYTES: u64 = 1 << 20;

impl Config {
    /// The share of one process for a budget: a quarter of it, so at least three quarters
    /// stay for everyone else whatever one process does.
    #[must_use]
    pub const fn share_of(budget_bytes: u64) -> u64 {
        budget_bytes / 4
    }

    /// This configuration with a budget of `bytes` (clamped to
    /// [`MIN_BUDGET_BYTES`]..=[`MAX_BUDGET_BYTES`]) and the matching process share.
    #[must_use]
    pub const fn with_budget(mut self, bytes: u64) -> Self {
        let b = if bytes < MIN_BUDGET_BYTES {
            MIN_BUDGET_BYTES
        } else if bytes > MAX_BUDGET_BYTES {
            MAX_BUDGET_BYTES
        } else {
            bytes
        };
        self.budget_bytes = b;
        self.process_share_bytes = Self::share_of(b);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_objects: 1 << 20,
            object_shards: 64,
            history_len: 32,
            budget_bytes: DEFAULT_BUDGET_BYTES,
            process_share_bytes: Self::share_of(DEFAULT_BUDGET_BYTES),
            key_alarm_threshold: DEFAULT_KEY_ALARM,
            held_after_seconds: DEFAULT_HELD_AFTER_SECONDS,
            hash_seed: 0,
        }
    }
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `object_shards` is not a power of two in 1..=64.
    Shards,
    /// `max_objects` is 0 or more than the shards can hold.
    Cap,
    /// `budget_bytes` or `process_share_bytes` is 0.
    Budget,
}

/// Why an open was not tracked (each reason is also counted in [`crate::Tracker::stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTracked {
    /// The object cap is reached.
    Cap,
    /// An allocation failed.
    NoMemory,
    /// The opening process has used its share of the budget.
    Share,
}

/// The tracking engine. `P` supplies memory, `L` is the lock; see the crate docs.
pub struct Tracker<P: Pool, L: RawLock> {
    pub(crate) pool: Budgeted<P>,
    pub(crate) config: Config,
    pub(crate) shard_mask: u32,
    pub(crate) shard_cap: u32,
    pub(crate) objects: [ObjShard<L>; MAX_SHARDS],
    /// Object shards found at their share of the cap, a bit each: set when an allocation
    /// fails there, cleared when a slot is released (ordered without a lock: `take_slot`).
    /// Opens skip those shards, so an open past its process's shard and a
    /// refusal at the cap cost about what an open does (issue 14's cliffs).
    pub(crate) full_shards: AtomicU64,
    pub(crate) names: NameTable<L>,
    /// Key ids of keys with tracked objects → name and hive ([`crate::keys`]).
    pub(crate) keys: KeyCache<L>,
    pub(crate) hives: HiveTable<L>,
    pub(crate) processes: ProcessTable<L>,
    pub(crate) history: History<L>,
    /// Hives to look at again after a failed unload ([`crate::held_after`]).
    pub(crate) watches: Watches<L>,
    pub(crate) counters: Counters,
    pub(crate) top_dropper: TopDropper<L>,
    /// The process with the most opens not tracked for want of memory (`stats`).
    pub(crate) top_refused: TopDropper<L>,
    /// Bytes exited processes that still hold keys keep charged ([`Self::leftovers`]).
    pub(crate) leftovers: AtomicU64,
    /// Open-time stacks ([`crate::stacks`]).
    pub(crate) stacks: StackTable<L>,
    /// The capture scope ([`crate::capture`]).
    pub(crate) capture: Capture<L>,
}

// SAFETY: every field reachable through `&Tracker` is an atomic, a lock, or a raw pointer to
// a pool block whose accesses follow the lock discipline in the module docs; `P: Pool` is
// `Sync` and `L: RawLock` is `Sync + Send`.
unsafe impl<P: Pool, L: RawLock> Sync for Tracker<P, L> {}
// SAFETY: as above; the tracker owns its blocks, which any thread may free.
unsafe impl<P: Pool + Send, L: RawLock> Send for Tracker<P, L> {}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// A tracker drawing its memory from `pool`. Allocates nothing yet.
    ///
    /// # Errors
    /// [`ConfigError`] for an unusable configuration.
    pub fn new(pool: P, config: Config) -> Result<Self, ConfigError> {
        let shards = config.object_shards;
        if shards == 0 || shards as usize > MAX_SHARDS || !shards.is_power_of_two() {
            return Err(ConfigError::Shards);
        }
        let shard_cap = config.max_objects.div_ceil(shards);
        if config.max_objects == 0 || shard_cap > MAX_PER_SHARD {
            return Err(ConfigError::Cap);
        }
        if config.budget_bytes == 0 || config.process_share_bytes == 0 {
            return Err(ConfigError::Budget);
        }
        Ok(Self {
            pool: Budgeted::new(pool, config.budget_bytes),
            config,
            shard_mask: shards - 1,
            shard_cap,
            objects: core::array::from_fn(|i| ObjShard::with_id(i)),
            full_shards: AtomicU64::new(0),
            names: NameTable::with_seed(config.hash_seed),
            keys: KeyCache::new(),
            hives: HiveTable::new(),
            processes: ProcessTable::new(),
            history: History::new(),
            watches: Watches::new(),
            counters: Counters::default(),
            top_dropper: TopDropper::new(),
            top_refused: TopDropper::new(),
            leftovers: AtomicU64::new(0),
            stacks: StackTable::with_seed(config.hash_seed),
            capture: Capture::new(),
        })
    }

    /// Builds a tracker directly in `slot`, field by field, so that no stack frame ever holds
    /// a whole tracker (about 40 KiB): a kernel driver keeps it in static storage and runs on a
    /// 24 KiB stack. Same checks as [`Tracker::new`]; on error `slot` stays uninitialised and
    /// `pool` is dropped.
    ///
    /// # Errors
    /// [`ConfigError`] for an unusable configuration.
    pub fn init_in_place(
        slot: &mut core::mem::MaybeUninit<Self>,
        pool: P,
        config: Config,
    ) -> Result<&mut Self, ConfigError> {
        let shards = config.object_shards;
        if shards == 0 || shards as usize > MAX_SHARDS || !shards.is_power_of_two() {
            return Err(ConfigError::Shards);
        }
        let shard_cap = config.max_objects.div_ceil(shards);
        if config.max_objects == 0 || shard_cap > MAX_PER_SHARD {
            return Err(ConfigError::Cap);
        }
        if config.budget_bytes == 0 || config.process_share_bytes == 0 {
            return Err(ConfigError::Budget);
        }
        let p = slot.as_mut_ptr();
        // Each field is written exactly once through a raw field pointer, with no reference to
        // the partially built value, before `assume_init_mut`.
        macro_rules! put {
            ($field:ident, $value:expr) => {{
                // SAFETY: `p` points to the caller's slot; this only computes a field address.
                let field = unsafe { &raw mut (*p).$field };
                // SAFETY: the field is uninitialised and written exactly once, here.
                unsafe { field.write($value) };
            }};
        }
        put!(pool, Budgeted::new(pool, config.budget_bytes));
        put!(config, config);
        put!(shard_mask, shards - 1);
        put!(shard_cap, shard_cap);
        put!(full_shards, AtomicU64::new(0));
        // SAFETY: `p` points to the caller's slot; this only computes a field address.
        let objects = unsafe { &raw mut (*p).objects }.cast::<ObjShard<L>>();
        for i in 0..MAX_SHARDS {
            let element = objects.wrapping_add(i);
            // SAFETY: `i` < MAX_SHARDS, inside the array; each element is written once.
            unsafe { element.write(ObjShard::with_id(i)) };
        }
        put!(names, NameTable::with_seed(config.hash_seed));
        put!(keys, KeyCache::new());
        put!(hives, HiveTable::new());
        // SAFETY: `p` points to the caller's slot; this only computes a field address.
        let processes = unsafe { &raw mut (*p).processes };
        // SAFETY: the field is uninitialised, valid for writes, and written once, here.
        unsafe { ProcessTable::init_at(processes) };
        put!(history, History::new());
        put!(watches, Watches::new());
        put!(counters, Counters::default());
        put!(top_dropper, TopDropper::new());
        put!(top_refused, TopDropper::new());
        put!(leftovers, AtomicU64::new(0));
        put!(stacks, StackTable::with_seed(config.hash_seed));
        put!(capture, Capture::new());
        // SAFETY: every field was written above.
        Ok(unsafe { slot.assume_init_mut() })
    }

    /// The configuration.
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// The pool.
    pub const fn pool(&self) -> &P {
        self.pool.inner()
    }

    /// The budget every block is charged to.
    pub const fn budget(&self) -> &Budgeted<P> {
        &self.pool
    }

    /// The first object shard an open of `process` tries. Keys of one process share a
    /// shard (and so its chunks: a holders report walks them with far fewer cache misses);
    /// their opens already serialise on the process lock, so this adds no contention.
    const fn shard_for(&self, process: ProcessKey) -> u32 {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the top bits of the product are the hash"
        )]
        let h = (crate::processes::process_hash(process) >> 40) as u32;
        h & self.shard_mask
    }

    /// Takes a slot: from the process's shard, or (when that shard is at its share of the
    /// cap) from the next ones, so one process can hold more than a shard's share.
    /// `init` fills the record before anyone can name it; returns (shard, index, generation,
    /// record). Lock-free unless the shard grows ([`ObjShard::alloc`]). The preferred
    /// shard's attempt is inlined; the search of the others is out of line
    /// ([`Self::take_slot_elsewhere`]), so that the common open pays for none of its setup
    /// (issue 14).
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn take_slot(
        &self,
        process: ProcessKey,
        init: impl FnOnce(&ObjRecord, u32),
    ) -> Result<(u32, u32, u32, &ObjRecord), NotTracked> {
        let first = self.shard_for(process);
        let shard = &self.objects[first as usize];
        // The preferred shard is always asked, and counts the open.
        bump(&shard.opens_seen);
        let (si, index, rec) = match shard.alloc(&self.pool, self.shard_cap) {
            Ok((index, rec)) => (first, index, rec),
            Err(error) => self.take_slot_elsewhere(first, error)?,
        };
        // The slot is this thread's alone until its token is out.
        // Its generation is read once: only this thread changes it until the token is out.
        let generation = rec.generation();
        init(rec, generation);
        Ok((si, index, generation, rec))
    }

    /// [`Self::take_slot`] after the preferred shard `first` refused with `error`: a slot
    /// of another shard (shard, index, record), not yet filled.
    #[cold]
    #[inline(never)]
    fn take_slot_elsewhere(
        &self,
        first: u32,
        error: SlotError,
    ) -> Result<(u32, u32, &ObjRecord), NotTracked> {
        let all = u64::MAX >> (63 - self.shard_mask);
        let mut tried = 1u64 << first;
        let mut si = first;
        let mut error = error;
        loop {
            match error {
                SlotError::Cap => {
                    // No lock orders this with a release in the shard (slots are lock-free):
                    // the bit is set, then the count read again, while a release lowers the
                    // count, then reads the bit (`shard_has_room`), all SeqCst. Either this
                    // read sees the slot given back and clears the bit, or the release sees
                    // the bit and clears it: never a shard with room left marked full (its
                    // opens would be refused at the cap: found in review).
                    self.full_shards.fetch_or(1 << si, SeqCst);
                    if self.objects[si as usize].live.load(SeqCst) < self.shard_cap {
                        self.full_shards.fetch_and(!(1 << si), SeqCst);
                    }
                }
                SlotError::NoMemory => {
                    // `alloc` gave back the count it took (SeqCst), as a release does: so it
                    // looks for the bit as a release does (found in a second review).
                    self.shard_has_room(si);
                    bump(&self.counters.opens_dropped_no_memory_object);
                    return Err(NotTracked::NoMemory);
                }
            }
            // The next shards after the preferred one, in order round the ring, that are
            // not known full, found with one bit search each (one process with a million
            // keys fills shard after shard, and stepping over them one by one cost a 1M-key
            // open a third more). A bit read stale can only skip a shard that got room this
            // instant: at the cap, such an open is refused and counted.
            let open = !self.full_shards.load(Relaxed) & all & !tried;
            if open == 0 {
                break;
            }
            let after = open & u64::MAX.checked_shl(first + 1).unwrap_or(0);
            si = if after == 0 { open } else { after }.trailing_zeros();
            tried |= 1 << si;
            match self.objects[si as usize].alloc(&self.pool, self.shard_cap) {
                Ok((index, rec)) => return Ok((si, index, rec)),
                Err(e) => error = e,
            }
        }
        bump(&self.counters.opens_dropped_cap);
        Err(NotTracked::Cap)
    }

    /// Gives back record `rec` of object shard `si`, taken by an open that is not tracked.
    fn give_back(&self, si: u32, rec: &ObjRecord) {
        self.objects[si as usize].release(rec);
        self.shard_has_room(si);
    }

    /// A slot of object shard `si` was released: it is not full.
    fn shard_has_room(&self, si: u32) {
        let bit = 1u64 << si;
        // SeqCst: see `take_slot`.
        if self.full_shards.load(SeqCst) & bit != 0 {
            self.full_shards.fetch_and(!bit, SeqCst);
        }
    }

    /// The record a holding list's link points at, or `None` (issue 14: no walk of the chunk
    /// directory). A link can only be made from a record ([`crate::links`]), records exist
    /// only in chunks, and a holding only ever links records of its own tracker
    /// ([`Self::link`] stores the record its open took from a shard, [`Self::unlink`] copies
    /// links already there), and chunks are never freed while
    /// the tracker lives: [`ObjShard::teardown`] runs only in its `Drop`, which the driver
    /// runs at unload after `CmUnRegisterCallback` returned (every context cleaned up) and
    /// its process notification was removed. So a link, even one read stale, is an
    /// initialised record of live memory.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[allow(
        clippy::unused_self,
        reason = "the record is borrowed from the tracker, whose `Drop` frees the chunks"
    )]
    #[inline(always)]
    pub(crate) fn at(&self, link: RecLink) -> Option<&ObjRecord> {
        // SAFETY: a link names a record in a chunk that lives as long as `self` (above and
        // `crate::links`: it can be made only from a record), initialised before the chunk
        // was published.
        link.target().map(|p| unsafe { p.as_ref() })
    }

    /// The record a token (an object's context from the kernel, an open's own token, or any
    /// value at all) names, and its shard, for the caller to check against the token
    /// (generation, state, object): `None` when its shard or chunk does not exist.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub(crate) fn token_rec(&self, token: Token) -> Option<(&ObjShard<L>, &ObjRecord)> {
        let (s, i) = split_ref(token.slot());
        if s > self.shard_mask {
            return None;
        }
        let shard = &self.objects[s as usize];
        Some((shard, shard.for_token(i)?))
    }

    /// A key object was opened (`RegNtPostCreateKeyEx`/`RegNtPostOpenKeyEx` with
    /// `STATUS_SUCCESS`). `object` is the key object's address (a private lookup key, never
    /// reported); `name` its full name. Returns the token to store as the object's context.
    ///
    /// # Errors
    /// [`NotTracked`] when the open could not be recorded (counted in `stats`).
    #[allow(clippy::too_many_arguments, reason = "these are the facts of one open")]
    pub fn opened(
        &self,
        object: u64,
        process: ProcessKey,
        thread: u64,
        name: &[u16],
        access: u32,
        time: u64,
    ) -> Result<Token, NotTracked> {
        self.open_record(
            object,
            process,
            thread,
            access,
            time,
            Source::Name(name, None),
        )
        .inspect_err(|e| self.note_refused(*e, process))
    }

    /// An open of the key whose kernel key id is `key` (`CmCallbackGetKeyObjectIDEx`'s
    /// `ObjectID`, asked for without the name): tracked at once when a tracked object of
    /// that key already told the tracker its name and hive ([`crate::keys`]), with no name
    /// and no path lookup. Otherwise the [`KeyMiss`] to pass to [`Self::opened_named`] with
    /// the key's name.
    ///
    /// # Errors
    /// `Err(miss)` when the key is not cached; `Ok(Err(_))` as for [`Self::opened`].
    #[allow(clippy::too_many_arguments, reason = "these are the facts of one open")]
    pub fn opened_known(
        &self,
        object: u64,
        key: u64,
        process: ProcessKey,
        thread: u64,
        access: u32,
        time: u64,
    ) -> Result<Result<Token, NotTracked>, KeyMiss> {
        let hit = self.keys.lookup(&self.names, key, time)?;
        Ok(self
            .open_hit(object, process, thread, access, time, hit)
            .inspect_err(|e| self.note_refused(*e, process)))
    }

    /// An open of `process` was refused with `e`: one refused for want of memory counts
    /// against it, and the process with the most such refusals is named in `stats`
    /// (`top_refused_*`): the budget's refusals name a process as its shares' do.
    #[cold]
    #[inline(never)]
    fn note_refused(&self, e: NotTracked, process: ProcessKey) {
        if e != NotTracked::NoMemory {
            return;
        }
        // A process whose own record could not be made counts one.
        let drops = self
            .processes
            .with(process, |p| {
                let drops = p.memory_drops.load(Relaxed) + 1;
                p.memory_drops.store(drops, Relaxed); // under its lock
                drops
            })
            .unwrap_or(1);
        self.top_refused.note(process, drops);
    }

    /// A key cache hit's open: the held key's shortcut ([`Self::link_held`]) inlined into
    /// the caller, so that the common open of a key its process already holds passes no
    /// [`Source`] through memory and pays no frame of [`Self::open_in_slot`] (issue 14: 40
    /// instructions of a held cycle); anything else continues there with the slot taken.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn open_hit(
        &self,
        object: u64,
        process: ProcessKey,
        thread: u64,
        access: u32,
        time: u64,
        hit: KeyHit,
    ) -> Result<Token, NotTracked> {
        let slot = match self.take_slot(process, |rec, generation| {
            init_record(rec, generation, object, thread, access, time);
        }) {
            Ok(s) => s,
            Err(e) => {
                self.open_refused(Source::Hit(hit), time);
                return Err(e);
            }
        };
        let (si, _, generation, rec) = slot;
        if let Some(hint) = hit.hint {
            let truncated = name_of(hit.name).truncated();
            rec.name.store(hit.name.as_ptr(), Relaxed);
            if let Some(linked) = self.link_held(process, rec, hint, time) {
                if truncated {
                    bump(&self.counters.names_truncated);
                }
                return match linked {
                    Ok(alarm) => {
                        let flags = if truncated { F_NAME_TRUNCATED } else { 0 };
                        Ok(self.open_done(
                            rec,
                            Some(hit.entry),
                            flags,
                            alarm,
                            process,
                            generation,
                            time,
                        ))
                    }
                    Err(refused) => {
                        self.names.release(&self.pool, hit.name);
                        self.give_back(si, rec);
                        self.release_key(hit.entry);
                        Err(refused)
                    }
                };
            }
        }
        self.open_in_slot(slot, process, time, Source::Hit(hit))
    }

    /// The open [`Self::opened_known`] missed, with the key's full `name`: tracked as by
    /// [`Self::opened`], and the key cached for the next opens of it.
    ///
    /// # Errors
    /// As for [`Self::opened`].
    #[allow(clippy::too_many_arguments, reason = "these are the facts of one open")]
    pub fn opened_named(
        &self,
        miss: KeyMiss,
        object: u64,
        process: ProcessKey,
        thread: u64,
        name: &[u16],
        access: u32,
        time: u64,
    ) -> Result<Token, NotTracked> {
        self.open_record(
            object,
            process,
            thread,
            access,
            time,
            Source::Name(name, Some(miss)),
        )
        .inspect_err(|e| self.note_refused(*e, process))
    }

    /// Key `key` (a key id, as for [`Self::opened_known`]) was deleted
    /// (`RegNtPostDeleteKey` with `STATUS_SUCCESS`): the objects of it that are tracked through
    /// the key cache are reported as deleted from now on ([`crate::keys`]). They still hold
    /// the hive, but the kernel's own list of open keys omits them (Windows Research Kernel
    /// `cmsubs.c` `CmpSearchForOpenSubKeys` walks the KCB hash, which `cmapi2.c` `CmDeleteKey`
    /// takes the key out of), so a report would otherwise count them as records the kernel
    /// does not list. Objects tracked without a cache entry are not marked (counted in
    /// `keys_not_cached` when they were opened): they stay unmatched, which only makes a
    /// report not complete.
    pub fn key_deleted(&self, key: u64) {
        self.keys.mark_deleted(key);
    }

    /// A key is being renamed (`RegNtPreRenameKey`): it and every key below it are getting
    /// new names under unchanged key ids, so no cached name is trusted any more, and names
    /// fetched until the rename ends are not cached ([`crate::keys`]). Objects already
    /// tracked keep the name they were opened with.
    pub fn rename_started(&self) {
        self.keys.rename_started();
    }

    /// The rename ended (`RegNtPostRenameKey`, whatever its status); `had_pre`: its pre was
    /// seen and counted by [`Self::rename_started`].
    pub fn rename_ended(&self, had_pre: bool) {
        self.keys.rename_ended(had_pre);
    }

    /// Links record `rec` into `process`'s holding for `hive`, charging it.
    fn link_open(
        &self,
        process: ProcessKey,
        rec: &ObjRecord,
        hive: NonNull<Hive>,
        charge: u64,
        time: u64,
    ) -> Result<Option<u64>, NotTracked> {
        let lp = self
            .processes
            .lock_process(&self.pool, process, true)
            .map_err(|_| {
                bump(&self.counters.opens_dropped_no_memory_process);
                NotTracked::NoMemory
            })?;
        let proc = process_of(lp.process);
        if lp.created || proc.naming_deferred.load(Relaxed) {
            // A process the tracker never saw start (it ran before the driver), or one whose
            // naming was put off: the driver names it ([`Self::attention`]).
            bump(&self.counters.attention);
        }
        // A new holding of an application hive is charged too, with what it keeps alive
        // ([`holding_charge`], 0 for a regular hive), given back when the holding goes. The
        // share must have room for it at every open in the hive, held or not: one compare
        // less on the fresh open's path (the bench's fresh open makes a holding each time),
        // and a process holding an app hive keeps that much of its share free.
        let hold_charge = holding_charge(hive_of(hive).kind);
        if !self.within_share(proc, charge + hold_charge) {
            return Err(self.refused_late(lp, process, NotTracked::Share));
        }
        let hive_id = hive_of(hive).id;
        let h = match proc.holding(hive_id) {
            Some(h) => h,
            None => match self.hold_new(proc, lp.process, hive, hold_charge) {
                Ok(h) => h,
                Err(e) => return Err(self.refused_late(lp, process, e)),
            },
        };
        let alarm = self.link_counted(proc, h, rec, charge, time);
        lp.unlock();
        Ok(alarm)
    }

    /// An open of `process` refused after its record was had (`lp`): returns `why`. A record
    /// made for this open for a process whose exit was seen already (an open linking late,
    /// audit 22a F3) holds nothing and no exit will come to reap it, so it goes now, as in
    /// [`Self::process_started`] (review 22c, M1).
    #[cold]
    #[inline(never)]
    fn refused_late(
        &self,
        lp: LockedProcess<'_, L>,
        process: ProcessKey,
        why: NotTracked,
    ) -> NotTracked {
        let gone = lp.created && process_of(lp.process).exited.load(Relaxed);
        lp.unlock();
        if gone {
            self.reap_process(process);
        }
        why
    }

    /// A new holding of `hive` for `proc` (its lock held, `process` its record), linked in
    /// the process's and the hive's lists, and charged `hold_charge` ([`holding_charge`],
    /// within the share: the caller checked), which [`Self::remove`] gives back.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a fresh open makes a holding (issue 14)"
    )]
    #[inline(always)]
    fn hold_new(
        &self,
        proc: &Process<L>,
        process: NonNull<Process<L>>,
        hive: NonNull<Hive>,
        hold_charge: u64,
    ) -> Result<NonNull<Holding<L>>, NotTracked> {
        let Some(h) = new_holding(&self.pool, hive, process) else {
            bump(&self.counters.opens_dropped_no_memory_holding);
            return Err(NotTracked::NoMemory);
        };
        locked_add64(&proc.charged, hold_charge);
        HiveTable::<L>::add_ref(hive);
        hive_of(hive).holders.fetch_add(1, Relaxed);
        self.counters.holdings.fetch_add(1, Relaxed);
        proc.insert_holding(h);
        self.hives
            .with_holdings(hive, true, |head| Holding::link_in_hive(head, h));
        Ok(h)
    }

    /// A held key's open, without its hive shard's lock (issue 14: a held key's open takes
    /// at most three spin locks: the key cache shard, the process table shard, the process).
    /// When the process already holds the hive of `hint` (found by address under the process
    /// lock: that holding pins it) and the hint is current ([`HiveTable::hint_current`]), the
    /// record is linked there. `None` when not (the process holds nothing in that hive yet, or
    /// the hive list changed): the caller takes the path with the hive shard.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn link_held(
        &self,
        process: ProcessKey,
        rec: &ObjRecord,
        hint: HiveHint,
        time: u64,
    ) -> Option<Result<Option<u64>, NotTracked>> {
        let lp = self
            .processes
            .lock_process(&self.pool, process, false)
            .ok()?;
        let proc = process_of(lp.process);
        let h = proc.holding_at(hint.hive)?;
        if !self.hives.hint_current(hint) {
            return None;
        }
        if !self.within_share(proc, RECORD_COST) {
            // Counted against the hive while the holding keeps it alive.
            let hive = hive_of(holding_of(h).hive);
            crate::losses::count(&hive.lost, &hive.lost_since, time);
            return Some(Err(NotTracked::Share));
        }
        let alarm = self.link_counted(proc, h, rec, RECORD_COST, time);
        lp.unlock();
        Some(Ok(alarm))
    }

    /// Links `rec` into holding `h` of `proc` (its lock held), charging `charge`, and
    /// counts the key on the process and the hive; `Some(count)` when the process reached a
    /// key-count alarm level it never reached before.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn link_counted(
        &self,
        proc: &Process<L>,
        h: NonNull<Holding<L>>,
        rec: &ObjRecord,
        charge: u64,
        time: u64,
    ) -> Option<u64> {
        rec.holding.store(h.as_ptr().cast(), Relaxed);
        let hold = holding_of(h);
        self.link(hold, rec, time);
        let count = proc.open_keys.load(Relaxed) + 1;
        proc.open_keys.store(count, Relaxed); // under the process lock
        locked_add64(&proc.charged, charge);
        hive_of(hold.hive).open_keys.fetch_add(1, Relaxed);
        // A key-count alarm when the process reaches a level it never reached before (one
        // compare while it is below the threshold).
        let level = crate::events::alarm_level(count, self.config.key_alarm_threshold);
        if level > proc.alarm_level.load(Relaxed) {
            proc.alarm_level.store(level, Relaxed);
            return Some(count);
        }
        None
    }

    /// The open's key cache entry: the hit's, or (after a miss) the entry made or refreshed
    /// for `name`, whose creation is charged to the open's process. Cached only under a
    /// stored name (a key whose name could not be stored is named again at its next open) and
    /// when no rename was in flight as the name was fetched.
    fn cache_key(
        &self,
        key: Option<Result<KeyRef, KeyMiss>>,
        name: Option<NameRef>,
        hint: Option<HiveHint>,
        charge: &mut u64,
        flags: &mut u32,
    ) -> Option<KeyRef> {
        match (key, name, hint) {
            (Some(Ok(k)), _, _) => Some(k),
            (Some(Err(miss)), Some(n), Some(hint)) if miss.cacheable() => {
                match self.keys.insert(&self.pool, &self.names, miss, n, hint) {
                    None => {
                        bump(&self.counters.keys_not_cached);
                        None
                    }
                    Some((k, created)) => {
                        if created {
                            *charge += ENTRY_COST;
                            *flags |= F_KEY_CHARGED;
                        }
                        Some(k)
                    }
                }
            }
            _ => None,
        }
    }

    /// An open refused before it had a slot: counted against its hive, and what its source
    /// holds given back.
    fn open_refused(&self, source: Source<'_>, time: u64) {
        match source {
            Source::Name(name, _) => self.open_lost(name, time),
            Source::Hit(hit) => {
                self.open_lost(name_of(hit.name).units(), time);
                self.names.release(&self.pool, hit.name);
                self.release_key(hit.entry);
            }
        }
    }

    fn release_key(&self, key: KeyRef) {
        self.keys.release(&self.pool, &self.names, key);
    }

    /// An open named by `source`: a slot, then [`Self::open_in_slot`].
    fn open_record(
        &self,
        object: u64,
        process: ProcessKey,
        thread: u64,
        access: u32,
        time: u64,
        source: Source<'_>,
    ) -> Result<Token, NotTracked> {
        match self.take_slot(process, |rec, generation| {
            init_record(rec, generation, object, thread, access, time);
        }) {
            Ok(slot) => self.open_in_slot(slot, process, time, source),
            Err(e) => {
                self.open_refused(source, time);
                Err(e)
            }
        }
    }

    /// The rest of an open once it has its slot (taken by [`Self::take_slot`], filled by
    /// [`init_record`]): its name and hive, its key cache entry, and its process's holding.
    /// Out of line: its frame is the fresh open's, which the held key's shortcut
    /// ([`Self::open_hit`]) does not pay.
    #[allow(
        clippy::too_many_lines,
        reason = "one open's steps, in order, read best in one piece"
    )]
    #[inline(never)]
    fn open_in_slot(
        &self,
        slot: (u32, u32, u32, &ObjRecord),
        process: ProcessKey,
        time: u64,
        source: Source<'_>,
    ) -> Result<Token, NotTracked> {
        let (si, _, generation, rec) = slot;
        let undo_slot = || self.give_back(si, rec);

        // 1. The name (from the key cache, or interned) and the hive its path is in.
        let mut flags = 0;
        // The process is charged for its record and for a name entry its open created
        // (a name already interned is shared, and costs nothing more).
        let mut charge = RECORD_COST;
        let (name, interned, key, hinted) = match source {
            Source::Hit(hit) => (
                name_of(hit.name).units(),
                Some((hit.name, false)),
                Some(Ok(hit.entry)),
                Some((hit.hint, hit.epoch)),
            ),
            Source::Name(name, miss) => (name, None, miss.map(Err), None),
        };
        // The hive shard stays locked shared until the key is linked: that keeps the hive
        // alive without a reference count round trip (lock order: hive shard first). A hit
        // takes the hive its name resolved to last while that shard is unchanged.
        let by_hint = hinted
            .and_then(|(hint, _)| hint)
            .and_then(|hint| self.hives.held_by_hint(hint));
        let (hive_guard, hive, fresh_hint) = if let Some((g, h)) = by_hint {
            (g, h, None)
        } else if let Ok((g, h, hint)) = self.hives.resolve_held(&self.pool, &self.names, name) {
            (g, h, Some(hint))
        } else {
            bump(&self.counters.opens_dropped_no_memory_hive);
            // No known hive contains the path (its implicit hive could not be made).
            self.lost_globally(time);
            if let Some((n, _)) = interned {
                self.names.release(&self.pool, n);
            }
            if let Some(Ok(k)) = key {
                self.release_key(k);
            }
            undo_slot();
            return Err(NotTracked::NoMemory);
        };
        if let (Some(Ok(k)), Some((_, epoch)), Some(hint)) = (key, hinted, fresh_hint) {
            self.keys.set_hint(k, epoch, hint);
        }
        // A name the key cache will hold is a private copy (issue 14: the cache shares it
        // with every later open of the key, by id; interning it would only hash and compare
        // it, [`crate::names`]); a name no entry will hold is interned, so that opens of one
        // key without the cache (before Windows 8, during a rename) share one copy.
        let interned = interned.or_else(|| match key {
            Some(Err(miss)) if miss.cacheable() => self
                .names
                .store_private(&self.pool, name)
                .ok()
                .map(|n| (n, true)),
            _ => self.names.intern_new(&self.pool, name).ok(),
        });
        if let Some((n, true)) = interned {
            charge += name_of(n).cost();
            flags |= F_NAME_CHARGED;
        }
        let name_ref = interned.map(|(n, _)| n);
        let key = self.cache_key(key, name_ref, fresh_hint, &mut charge, &mut flags);
        match name_ref {
            Some(n) if name_of(n).truncated() => {
                bump(&self.counters.names_truncated);
                flags |= F_NAME_TRUNCATED;
            }
            Some(_) => {}
            None => {
                bump(&self.counters.names_dropped_no_memory);
                flags |= F_NAME_MISSING;
            }
        }
        rec.name
            .store(name_ref.map_or(ptr::null_mut(), NonNull::as_ptr), Relaxed);

        // 2. The process (locked), its share, and its holding for the hive.
        let linked = self.link_open(process, rec, hive, charge, time);
        if linked.is_err() {
            let h = hive_of(hive);
            crate::losses::count(&h.lost, &h.lost_since, time);
        }
        drop(hive_guard);
        let alarm = match linked {
            Ok(alarm) => alarm,
            Err(refused) => {
                if let Some(n) = name_ref {
                    self.names.release(&self.pool, n);
                }
                undo_slot();
                if let Some(k) = key {
                    self.release_key(k);
                }
                return Err(refused);
            }
        };
        Ok(self.open_done(rec, key, flags, alarm, process, generation, time))
    }

    /// The last step of a tracked open: the record goes live with its key cache entry and
    /// flags, and a key-count alarm it raised is recorded. Returns its token.
    #[allow(
        clippy::too_many_arguments,
        reason = "the facts of the open being finished"
    )]
    fn open_done(
        &self,
        rec: &ObjRecord,
        key: Option<KeyRef>,
        flags: u32,
        alarm: Option<u64>,
        process: ProcessKey,
        generation: u32,
        time: u64,
    ) -> Token {
        rec.key
            .store(key.map_or(ptr::null_mut(), NonNull::as_ptr), Relaxed);
        rec.set_state(generation, LIVE | flags);
        if let Some(count) = alarm {
            self.key_alarm(process, count, time);
            bump(&self.counters.attention);
        }
        Token::new(generation, rec.slot)
    }

    /// True when `proc` can be charged `charge` more within its share; otherwise counts the
    /// drop against it (caller holds its lock).
    fn within_share(&self, proc: &Process<L>, charge: u64) -> bool {
        if proc.charged.load(Relaxed).saturating_add(charge) <= self.config.process_share_bytes {
            return true;
        }
        bump(&self.counters.opens_dropped_process_share);
        let drops = proc.share_drops.load(Relaxed) + 1;
        locked_add64(&proc.share_drops, 1);
        self.top_dropper.note(proc.key, drops);
        false
    }

    /// Links `rec` into `hold` in (time, sequence) order; caller holds the process lock.
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn link(&self, hold: &Holding<L>, rec: &ObjRecord, time: u64) {
        locked_add32(&hold.seq, 1);
        let seq = hold.seq.load(Relaxed);
        rec.seq.store(seq, Relaxed);
        // The record to insert after, or none: then at the head.
        let mut after = self.at(hold.tail.load());
        while let Some(a) = after {
            if a.time.load(Relaxed) <= time {
                break;
            }
            after = self.at(a.prev.load());
        }
        let this = RecLink::to(rec);
        let next = after.map_or_else(|| hold.head.load(), |a| a.next.load());
        rec.prev.store(after.map_or(RecLink::NONE, RecLink::to));
        rec.next.store(next);
        match after {
            None => hold.head.store(this),
            Some(a) => a.next.store(this),
        }
        match self.at(next) {
            None => hold.tail.store(this),
            Some(n) => n.prev.store(this),
        }
        locked_add32(&hold.count, 1);
    }

    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    fn unlink(&self, hold: &Holding<L>, rec: &ObjRecord) {
        let prev = rec.prev.load();
        let next = rec.next.load();
        // Under the process lock, `holding` set means "linked here": a query's resume hint
        // relies on it.
        rec.holding.store(ptr::null_mut(), Relaxed);
        match self.at(prev) {
            None => hold.head.store(next),
            Some(p) => p.next.store(next),
        }
        match self.at(next) {
            None => hold.tail.store(prev),
            Some(n) => n.prev.store(prev),
        }
        locked_sub32(&hold.count, 1);
    }

    /// Runs `f` on the live record `token` names for `object`, claimed (state `RESERVED`)
    /// meanwhile so that no destroy can end it under `f`. Called by the thread that opened
    /// it before the token is the object's context (stack capture), so no destroy of it can
    /// be under way; were one, it would find the record claimed and count it unknown.
    pub(crate) fn with_live<R>(
        &self,
        token: Token,
        object: u64,
        f: impl FnOnce(&ObjShard<L>, &ObjRecord) -> R,
    ) -> Option<R> {
        let (shard, rec) = self.token_rec(token)?;
        rec.claim(token.generation(), object, RESERVED)?;
        let r = f(shard, rec);
        rec.unclaim(RESERVED);
        Some(r)
    }

    /// The kernel would not give a key's name for an unload attempt or a load, or a relative
    /// load came with no object to place it, so it cannot be recorded. Counted as
    /// `names_unavailable`.
    pub fn name_unavailable(&self) {
        bump(&self.counters.names_unavailable);
    }

    /// The kernel would not give an opened key's name, so the open is not tracked (the
    /// driver also counts it against the hive the caller's path names, [`Self::open_lost`]).
    /// Counted as `opens_dropped_no_name`: with `opens_seen`, it accounts for every
    /// successful open the driver was told of.
    pub fn open_unnamed(&self) {
        bump(&self.counters.opens_dropped_no_name);
    }

    /// An unload attempt the driver could not carry to its outcome (no storage for it):
    /// counted as `history_dropped_no_memory`, and as a number of the event stream that its
    /// readers are told they missed.
    pub fn unload_not_recorded(&self) {
        bump(&self.counters.history_dropped_no_memory);
        self.history.skip_sequence();
    }

    /// An unload attempt whose key the kernel would not name: counted as
    /// `names_unavailable`, and as a number of the event stream its readers missed.
    pub fn unload_unnamed(&self) {
        bump(&self.counters.names_unavailable);
        self.history.skip_sequence();
    }

    /// A handle to the object was closed (`RegNtPreKeyHandleClose`). Closes beyond the
    /// opens counted (duplicated handles) are counted, never underflow.
    ///
    /// Lock-free (issue 14: one spin-lock round trip fewer per cycle). The record cannot end
    /// or be reused under it: the kernel holds the object for its close notification and
    /// ends it (cleanup, [`Self::object_destroyed`]) only after, and records live until
    /// teardown (chunks are never freed), so reading a stale or foreign token's slot is
    /// safe and fails the same checks as under the lock.
    pub fn handle_closed(&self, token: Token, object: u64) {
        let found = self.token_rec(token);
        let Some((shard, rec)) = found.filter(|(_, rec)| rec.is_live(token.generation(), object))
        else {
            bump(&self.counters.closes_unknown_object);
            return;
        };
        bump(&shard.closes_seen);
        let closes = rec.closes.fetch_add(1, Relaxed).saturating_add(1);
        if closes > rec.opens.load(Relaxed) {
            bump(&self.counters.closes_exceeding_opens);
        }
    }

    /// The object is gone (`RegNtCallbackObjectContextCleanup`).
    pub fn object_destroyed(&self, token: Token, object: u64) {
        if !self.remove(token, object, true) {
            bump(&self.counters.destroys_unknown_object);
        }
    }

    /// The object's context was replaced by a newer token: `CmSetCallbackObjectContext`
    /// returned `token` as the previous context of `object` (docs: `OldContext`). That
    /// happens when an object hivetrack already tracks comes back from another open (a
    /// lower filter completing an open with `STATUS_CALLBACK_BYPASS` and an object it opened
    /// earlier, outside its callback, regfltr `pre.c`; an open it makes inside its callback
    /// reaches only the callbacks below it, Learn "Supporting Layered Registry Filtering
    /// Drivers"). The object keeps exactly one record, the newer one: only its
    /// context will come back at cleanup, so the older record would otherwise outlive the
    /// object and hold its hive for ever. Nothing is lost (the object stays tracked), so no
    /// loss is counted; its end counts as a destroy, which keeps `opens_seen` balanced.
    pub fn superseded(&self, token: Token, object: u64) {
        if !self.remove(token, object, true) {
            bump(&self.counters.destroys_unknown_object);
        }
    }

    /// Forgets an object the driver could not attach its token to (so no destroy will ever
    /// come for it); counted as `objects_abandoned`.
    pub fn abandon(&self, token: Token, object: u64) {
        if self.remove(token, object, false) {
            bump(&self.counters.objects_abandoned);
        } else {
            bump(&self.counters.destroys_unknown_object);
        }
    }

    fn remove(&self, token: Token, object: u64, count_destroy: bool) -> bool {
        let Some((shard, rec)) = self.token_rec(token) else {
            return false;
        };
        // Whoever moves the record from LIVE to DYING ends it: no lock (issue 14), and a
        // second ender of the same record finds it DYING and refuses.
        let Some(flags) = rec.claim(token.generation(), object, DYING) else {
            return false;
        };
        if count_destroy {
            bump(&shard.destroys_seen);
        }
        let name = rec.name.load(Relaxed);
        let hold_ptr = NonNull::new(rec.holding.load(Relaxed).cast::<Holding<L>>())
            .unwrap_or_else(|| unreachable_link());
        let hold = holding_of(hold_ptr);
        let proc = process_of(hold.process);
        let hive = hold.hive;
        if !count_destroy && !cfg!(feature = "mutant-uncounted-abandon") {
            // Abandoned: the object lives on untracked, a loss of its hive (the holding
            // keeps the hive alive here).
            let h = hive_of(hive);
            crate::losses::count(&h.lost, &h.lost_since, rec.time.load(Relaxed));
        }
        let (emptied, reap) = {
            let _pg = Exclusive::new(&proc.lock);
            self.unlink(hold, rec);
            locked_sub64(&proc.open_keys, 1);
            let name_charge = if flags & F_NAME_CHARGED == 0 {
                0
            } else {
                NonNull::new(name).map_or(0, |n| name_of(n).cost())
            };
            let key_charge = if flags & F_KEY_CHARGED == 0 {
                0
            } else {
                ENTRY_COST
            };
            locked_sub64(&proc.charged, RECORD_COST + name_charge + key_charge);
            if rec.stack.load(Relaxed) != 0 {
                locked_sub32(&proc.stacked, 1);
            }
            hive_of(hive).open_keys.fetch_sub(1, Relaxed);
            let emptied = hold.count.load(Relaxed) == 0;
            if emptied {
                // What the holding was charged when it was made ([`holding_charge`]).
                locked_sub64(&proc.charged, holding_charge(hive_of(hive).kind));
                proc.remove_holding(hold_ptr);
                self.hives
                    .with_holdings(hive, true, |head| Holding::unlink_from_hive(head, hold_ptr));
                hive_of(hive).holders.fetch_sub(1, Relaxed);
            }
            // The key is read here, under the process lock: once it is released, a process
            // left holding nothing can be reaped (and freed) by its exit on another
            // processor at any moment (found in review: it was read after the release).
            (
                emptied,
                (proc.exited.load(Relaxed) && proc.holdings.load(Relaxed).is_null())
                    .then_some(proc.key),
            )
        };
        let key_entry = NonNull::new(rec.key.swap(ptr::null_mut(), Relaxed));
        let stack = rec.stack.swap(0, Relaxed);
        shard.release(rec);
        self.shard_has_room(shard.id());
        if emptied {
            self.counters.holdings.fetch_sub(1, Relaxed);
            // SAFETY: unlinked from its process under the process lock, and its last key is
            // gone: nothing reaches it.
            unsafe { free_holding(&self.pool, hold_ptr) };
            self.hives
                .unpin(&self.pool, &self.names, hive, self.vouch());
        }
        if let Some(key) = reap {
            self.reap_process(key);
        }
        if let Some(n) = NonNull::new(name) {
            self.names.release(&self.pool, n);
        }
        if let Some(k) = key_entry {
            self.release_key(k);
        }
        self.release_stack(stack);
        true
    }

    fn reap_process(&self, key: ProcessKey) {
        if let Some((image, modules, leftover)) = self.processes.reap(&self.pool, key) {
            self.leftovers.fetch_sub(leftover, Relaxed);
            if let Some(image) = image {
                self.names.release(&self.pool, image);
            }
            self.free_modules(modules);
        }
    }

    /// A value that changes when an open needs the driver's attention afterwards: it raised
    /// an event (wake the event stream's readers) or made the record of a process the
    /// tracker never saw start (name it: [`Self::image_missing`], [`Self::process_started`]).
    /// One load; the driver reads it before and after an open.
    pub fn attention(&self) -> u64 {
        crate::counters::get(&self.counters.attention)
    }

    /// The driver could not name `process` now (`deferred`: `SeLocateProcessImageName` is
    /// documented at `PASSIVE_LEVEL` only, and a registry callback may run at `APC_LEVEL`), so
    /// its next new open asks again; or it tried (`!deferred`).
    #[inline(never)]
    pub fn defer_naming(&self, process: ProcessKey, deferred: bool) {
        let _ = self
            .processes
            .with(process, |p| p.naming_deferred.store(deferred, Relaxed));
    }

    /// `process` is a 32-bit (Wow64) program (the driver asked `IoIs32bitProcess` at one of
    /// its captured opens): its holders records say so.
    #[inline(never)]
    pub fn process_is_32bit(&self, process: ProcessKey) {
        let _ = self
            .processes
            .with(process, |p| p.wow64.store(true, Relaxed));
    }

    /// True when `process` is known without its image path.
    #[inline(never)]
    pub fn image_missing(&self, process: ProcessKey) -> bool {
        self.processes
            .with(process, |p| p.image().is_none())
            .unwrap_or(false)
    }

    /// A process started (or was found at start-up): records its image path, charged to the
    /// process's share with its record when the name is new. Optional: a process first seen
    /// in `opened` is created without an image.
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn process_started(&self, process: ProcessKey, image: &[u16]) {
        let Ok(lp) = self.processes.lock_process(&self.pool, process, true) else {
            bump(&self.counters.images_dropped_no_memory);
            return;
        };
        let proc = process_of(lp.process);
        if lp.created && proc.exited.load(Relaxed) {
            // Made for a process whose exit was seen and whose record went (its naming after
            // an open that linked late, audit 22a F3): it holds nothing, so it goes again.
            lp.unlock();
            self.reap_process(process);
            return;
        }
        if proc.image().is_some() || image.is_empty() {
            return;
        }
        match self.names.intern_new(&self.pool, image) {
            Ok((n, new)) => {
                if name_of(n).truncated() {
                    bump(&self.counters.names_truncated);
                }
                if new {
                    // Charged to the process like its record (shared with later processes of
                    // the same image, as a key's name is: only the one that stored it pays).
                    let cost = name_of(n).cost();
                    locked_add64(&proc.charged, cost);
                    locked_add64(&proc.own_charged, cost);
                }
                // Release: `collect_holders` reads it without the process lock.
                proc.image.store(n.as_ptr(), Release);
            }
            Err(_) => bump(&self.counters.images_dropped_no_memory),
        }
    }

    /// A process's image could not be stored: the driver had no memory to get or copy it
    /// (counted in `images_dropped_no_memory`, so reports say a name is missing).
    #[cold]
    pub fn image_not_stored(&self) {
        bump(&self.counters.images_dropped_no_memory);
    }

    /// A process exited. Its record goes when it no longer holds keys.
    ///
    /// One that still holds keys (objects it opened live on: a handle duplicated into
    /// another process, a kernel reference) keeps its record, image name and module list,
    /// which its share no longer bounds: a new process has a share of its own, so N processes
    /// exiting so would leave N shares' worth (audit 21b F4). What its record, image and
    /// modules are charged moves to the pool of exited processes' leftovers, which holds at
    /// most one process share ([`Self::leftovers`]); when its modules do not fit there they
    /// are freed now, counted in `modules_dropped`, and its `lost_since` says its module list
    /// is incomplete from the start (the modules page then vouches for none of its frames).
    /// Its record and image stay charged to the pool whatever it holds: each is pinned by a
    /// key still open, and the keys themselves stay charged to the process that opened them.
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn process_exited(&self, process: ProcessKey) {
        bump(&self.counters.process_exits_seen);
        let limit = self.config.process_share_bytes;
        // A record made after this (an open linking late: [`crate::processes::ProcessTable::exited`])
        // is made exited, so that it goes with its last key.
        let known = self.processes.exited(process, |p| {
            // An exit told twice moves nothing twice (the pool would keep a charge no reap
            // gives back).
            if p.exited.swap(true, Relaxed) || p.holdings.load(Relaxed).is_null() {
                return None; // reaped below, if it holds nothing
            }
            let own = p.own_charged.load(Relaxed);
            let fits = self
                .leftovers
                .fetch_update(Relaxed, Relaxed, |used| {
                    let next = used.saturating_add(own);
                    (next <= limit).then_some(next)
                })
                .is_ok();
            if fits {
                p.leftover.store(own, Relaxed);
                return None;
            }
            let modules = NonNull::new(p.modules.swap(ptr::null_mut(), Relaxed));
            p.modules_tail.store(ptr::null_mut(), Relaxed);
            p.modules_hint.store(ptr::null_mut(), Relaxed);
            p.modules_hint_index.store(0, Relaxed);
            let dropped = p.nmodules.swap(0, Relaxed);
            let freed = p.modules_charged.swap(0, Relaxed);
            locked_sub64(&p.charged, freed);
            locked_sub64(&p.own_charged, freed);
            if dropped != 0 {
                // Lost from the start: no frame of it can be put down to a module now.
                p.modules_lost_since.store(1, Relaxed);
            }
            let kept = own - freed;
            self.leftovers.fetch_add(kept, Relaxed);
            p.leftover.store(kept, Relaxed);
            Some((modules, dropped))
        });
        let Some(dropped) = known else {
            bump(&self.counters.process_exits_unknown);
            return;
        };
        if let Some((modules, n)) = dropped {
            self.free_modules(modules);
            self.counters
                .modules_dropped
                .fetch_add(u64::from(n), Relaxed);
        }
        self.reap_process(process);
    }

    /// Bytes of exited processes' records, image names and module lists kept because the
    /// processes still hold keys ([`Self::process_exited`]): at most one process share, but
    /// for the records and images of those whose modules were freed.
    #[must_use]
    pub fn leftovers(&self) -> u64 {
        self.leftovers.load(Relaxed)
    }

    /// A hive was loaded at `mount` from `file` (also used to seed from the hive list).
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn hive_loaded(&self, mount: &[u16], file: &[u16], time: u64) {
        let _ = self.record_load(mount, file, time, false);
    }

    /// A hive read from the hive list (loaded at an unknown time; at start, or by a later
    /// seed): recorded unless the callback already recorded it loaded, which the list may be
    /// older than, or saw it unloaded since the seed began ([`crate::seed_window`]).
    /// Returns whether it recorded something (a record made or changed): a seed counts a
    /// file path it had to cut only then, not at every later read of a hive already recorded
    /// (review 20a, L2).
    #[inline(never)] // rare: seeds only
    pub fn hive_seeded(&self, mount: &[u16], file: &[u16]) -> bool {
        self.record_load(mount, file, 0, true)
    }

    /// Whether a read of the hive list may find a deferred unload completed: a regular hive
    /// is (or may be) unload-pending. See [`crate::hives`] and [`Self::unload_check_begin`].
    #[must_use]
    pub fn unload_check_wanted(&self) -> bool {
        self.hives.unload_check_wanted()
    }

    /// A read of the hive list to find deferred unloads that completed begins: Windows sends
    /// no notification when the late unload is done (WRK `cmdelete.c`
    /// `CmpLateUnloadHiveWorker`), but it deletes the hive's value from the list. The caller
    /// reads the list at `PASSIVE_LEVEL` outside any registry callback, one read at a time,
    /// calls [`Self::hive_listed`] for every value and ends with [`Self::unload_check_done`].
    /// Returns what that takes.
    #[must_use]
    pub fn unload_check_begin(&self) -> u32 {
        self.hives.unload_check_begin()
    }

    /// The check's read found the value of `mount`. Returns whether a record of it exists.
    pub fn hive_listed(&self, mount: &[u16]) -> bool {
        self.hives.listed(mount)
    }

    /// Live tracking is off (the registry callback never registered) and a query is about to
    /// be answered: the hive list is read again to bring the hive set up to date (review 21a,
    /// L4). Every regular hive is marked unseen; [`Self::hive_listed`] clears the mark of each
    /// one read, [`Self::hive_seeded`] records a hive loaded since (load time unknown).
    #[must_use]
    pub fn refresh_begin(&self) -> u32 {
        self.counters.refresh_unrecorded.store(0, Relaxed);
        self.hives.refresh_begin()
    }

    /// A refresh's read found `mount`'s value, naming `file`: the hive is marked seen when
    /// its record names that file; otherwise (no record, or one for a file unloaded since:
    /// [`crate::hives::HiveTable::refreshed`], review 22a L3) it is recorded, load time
    /// unknown. Returns whether a record was made. A refresh's record is no load seen: it
    /// does not move `hive_loads_seen` (nor [`Self::hive_changes`]), and a hive it cannot
    /// record is counted in `hive_loads_dropped_no_memory` once, however many passes and
    /// refreshes meet it, until a refresh records every hive it finds (review 22a, L4).
    #[inline(never)] // rare: refreshes with tracking off only
    pub fn hive_refreshed(&self, mount: &[u16], file: &[u16]) -> bool {
        if self.hives.refreshed(&self.pool, &self.names, mount, file) {
            return false;
        }
        self.record(mount, file, 0, true).unwrap_or_else(|_| {
            self.counters.refresh_unrecorded.store(1, Relaxed);
            false
        })
    }

    /// The refresh begun with [`Self::refresh_begin`] is over (`whole`: as
    /// [`Self::unload_check_done`]): every regular hive no read found is retired as unloaded.
    /// Returns how many were.
    pub fn refresh_done(&self, begun: u32, whole: bool) -> u32 {
        let short = self.counters.refresh_unrecorded.load(Relaxed);
        let before = self.counters.refresh_unrecorded_last.swap(short, Relaxed);
        if short != 0 && before == 0 {
            bump(&self.counters.hive_loads_dropped_no_memory);
        }
        self.hives
            .refresh_end(&self.pool, &self.names, begun, whole)
    }

    /// The check is over (`begun` from [`Self::unload_check_begin`]); `whole`: its reads saw
    /// every value of a list that held still. A whole check retires the unload-pending hives
    /// whose values are gone (unloaded); returns how many.
    pub fn unload_check_done(&self, begun: u32, whole: bool) -> u32 {
        self.hives
            .unload_check_end(&self.pool, &self.names, begun, whole)
    }

    /// Loads and unloads seen so far: a check's two reads of the hive list that agree prove it
    /// whole only if this did not change from the start of the first to the end of the second.
    #[must_use]
    pub fn hive_changes(&self) -> u64 {
        self.counters
            .hive_loads_seen
            .load(Relaxed)
            .wrapping_add(self.counters.hive_unloads_seen.load(Relaxed))
    }

    /// How many loads and unloads the callback has seen while a seed's window was open:
    /// [`Self::seed_done`]: the seed trusts two reads of the hive list that agree only if
    /// this did not change from the start of the first to the end of the second.
    #[must_use]
    pub fn changes_during_seed(&self) -> u32 {
        self.hives.seed.changes()
    }

    /// A start-up seed from the hive list is to come (before the callback is registered):
    /// until it is done with the whole list, no load is given a time that vouches for its
    /// hive ([`crate::seed_window`]).
    pub fn seed_begin(&self) {
        self.hives.seed.begin();
    }

    /// Whether a seed has read the whole hive list (or none was begun): until then no load
    /// is given a load time, and `names_unavailable` carries one name not got.
    #[must_use]
    pub fn seed_complete(&self) -> bool {
        self.hives.seed.complete()
    }

    /// A later seed is to read the hive list again, because no seed has read it whole
    /// ([`Self::seed_complete`]): opens the window of unload marks again (callbacks may run
    /// meanwhile). Returns false, with nothing opened, when the seed is complete. The caller
    /// runs one seed at a time, at `PASSIVE_LEVEL` outside any registry callback, and ends it
    /// with [`Self::seed_done`].
    ///
    /// What a late seed that reads the whole list vouches for: every hive mounted at its read
    /// is known from then on, so later loads get their time again, and the one name not got
    /// that the seed counted is withdrawn. What it does not: a load seen before it keeps "no
    /// load time" (it may have been the same file loaded again at a mount no seed had read,
    /// whose keys opened before tracking still hold it), and a hive it finds is recorded as
    /// loaded before tracking (time 0), as at start. A hive the missed seed let be tracked
    /// as implicit becomes that loaded record with its keys (still time 0, so no report of it
    /// is complete); losses counted elsewhere stay.
    pub fn seed_again(&self) -> bool {
        self.hives.seed.reopen()
    }

    /// A seed from the hive list is over: later unloads leave no mark. `whole`: it read every
    /// value of a list that held still. Until a seed is whole (or when more unloads ran during
    /// it than the window tells apart, which left hives unrecorded) one name not got is
    /// reported in `names_unavailable` (once, however many seeds), and every later load is
    /// left without a load time: any of them may be the same file loaded again at a mount the
    /// seed missed, whose keys opened before tracking would still hold it. A whole seed
    /// withdraws that one name (a later seed that completes it: [`Self::seed_again`]).
    pub fn seed_done(&self, whole: bool) {
        let overflowed = self.hives.seed.close(whole);
        let unread = u64::from(overflowed || !whole);
        self.counters.seed_unread.store(unread, Relaxed);
    }

    fn record_load(&self, mount: &[u16], file: &[u16], time: u64, seeded: bool) -> bool {
        bump(&self.counters.hive_loads_seen);
        self.record(mount, file, time, seeded).unwrap_or_else(|_| {
            bump(&self.counters.hive_loads_dropped_no_memory);
            false
        })
    }

    /// Records a loaded hive ([`crate::hives::HiveTable::loaded`]), counting nothing itself.
    fn record(
        &self,
        mount: &[u16],
        file: &[u16],
        time: u64,
        seeded: bool,
    ) -> Result<bool, crate::names::NoMemory> {
        self.hives.loaded(
            &self.pool,
            &self.names,
            mount,
            file,
            time,
            seeded,
            |lost, since| {
                crate::losses::fold(
                    &self.counters.global_lost,
                    &self.counters.global_lost_since,
                    lost,
                    since,
                );
            },
        )
    }

    /// The hive at `mount` was unloaded.
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn hive_unloaded(&self, mount: &[u16]) {
        bump(&self.counters.hive_unloads_seen);
        if !self.hives.unloaded(&self.pool, &self.names, mount) {
            bump(&self.counters.unloads_unknown_hive);
        }
    }

    /// A deferred unload of `mount` is pending (`NtUnloadKeyEx` returned `STATUS_PENDING`): the
    /// hive is reported as [`protocol::holders::HiveState::UnloadPending`] until a read of the
    /// hive list finds it gone ([`Self::unload_check_begin`]) or a load makes it loaded again,
    /// also after its last tracked key went (see [`crate::hives`]).
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn hive_unload_pending(&self, mount: &[u16]) {
        if !self
            .hives
            .unload_pending(&self.pool, &self.names, mount, self.vouch())
        {
            bump(&self.counters.unloads_unknown_hive);
        }
    }

    /// An unload of `mount` was attempted with `outcome` (an NTSTATUS): records who held keys
    /// in the hive at this moment, in the bounded history. Returns the hive's id when the
    /// mount point is a known hive (for [`Tracker::watch_held_after`]). The record carries no
    /// interrupt time (0); the driver stamps it through [`Self::unload_attempted_with`].
    pub fn unload_attempted(&self, mount: &[u16], outcome: u32, time: u64) -> Option<u32> {
        self.unload_attempted_with(mount, outcome, (time, 0), None)
    }

    /// [`Self::unload_attempted`] of an unload that holds a key object of its own: `own` is
    /// that object's token, address (from `RegNtPreUnLoadKey`'s `ObjectContext` and
    /// `Object`) and the unloading thread, which opened it. Windows' `NtUnloadKey2`/`NtUnloadKeyEx` open the hive's root themselves, with a
    /// kernel handle, "just to take a reference on the object" (Windows Research Kernel
    /// `base/ntos/config/ntapi.c`), so the driver tracks that open (System holds it) and it is
    /// still open when the unload's post-notification comes; it is the unload's, not a
    /// holder's, and is left out of the record's keys and holders (the emulator's
    /// `td-unload-sequence`). An `own` the tracker does not hold live changes nothing.
    /// `(time, interrupt_time)`: the system time and the interrupt time (the driver's
    /// `KeQueryInterruptTime` count, 0 when not stamped) the record carries; the interrupt
    /// time lets a reader date it whatever the system clock did (review 22d, L3).
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn unload_attempted_with(
        &self,
        mount: &[u16],
        outcome: u32,
        (time, interrupt_time): (u64, u64),
        own: Option<(Token, u64, u64)>,
    ) -> Option<u32> {
        bump(&self.counters.unload_attempts_seen);
        let mut entry = HistEntry::new(time, outcome, 0);
        entry.interrupt_time = interrupt_time;
        match self.hives.find_exact(mount) {
            None => entry.flags |= UnloadRecord::UNKNOWN_HIVE,
            Some(h) => {
                let hive = hive_of(h);
                entry.hive_id = hive.id;
                entry.open_keys = hive.open_keys.load(Relaxed);
                if self.holders_unseen(hive) {
                    entry.flags |= UnloadRecord::HOLDERS_UNSEEN;
                }
                let own = own
                    .and_then(|(token, object, thread)| self.live_holding(token, object, thread));
                self.collect_holders(h, own, &mut entry);
                self.hives.unpin(&self.pool, &self.names, h, self.vouch());
            }
        }
        // A success ends the hive's watch before the success is numbered, so no held-after
        // record of the hive can follow it ([`crate::held_after`]).
        if outcome == 0 {
            self.unwatch_unloaded(entry.hive_id, mount);
        }
        let Ok(m) = self.names.intern(&self.pool, mount) else {
            bump(&self.counters.history_dropped_no_memory);
            self.release_entry_names(&entry);
            self.history.skip_sequence();
            return (entry.hive_id != 0).then_some(entry.hive_id);
        };
        entry.mount = Some(m);
        let _ = self.record_event(&entry);
        (entry.hive_id != 0).then_some(entry.hive_id)
    }

    /// The holding of the live record `token` of `object` opened by `thread`, if there is
    /// one. The caller must know the object cannot go meanwhile (the unload holds a reference
    /// on its own object): the holding lives as long as the record. The opening thread must
    /// be the unloading one: an object a filter handed back from an earlier open of its own
    /// (a bypassed create) is someone's real key, not the unload's (review, 2026-12-05).
    fn live_holding(&self, token: Token, object: u64, thread: u64) -> Option<NonNull<Holding<L>>> {
        let (_, rec) = self.token_rec(token)?;
        let rec = Some(rec).filter(|rec| {
            rec.is_live(token.generation(), object)
                && rec.thread.load(Relaxed) == u32::try_from(thread).unwrap_or(0)
        })?;
        NonNull::new(rec.holding.load(Relaxed).cast::<Holding<L>>())
    }

    /// Adds `entry` to the history (the event stream), evicting the oldest past the
    /// configured length; an entry that cannot be stored still takes its sequence number, so
    /// the stream's readers count it as missed. Returns whether it was stored.
    pub(crate) fn record_event(&self, entry: &HistEntry) -> bool {
        match self
            .history
            .push(&self.pool, entry, self.config.history_len.max(1))
        {
            Ok(Some(old)) => {
                History::<L>::free_entry(&self.pool, old, |n| self.names.release(&self.pool, n));
                true
            }
            Ok(None) => true,
            Err(()) => {
                bump(&self.counters.history_dropped_no_memory);
                self.release_entry_names(entry);
                self.history.skip_sequence();
                false
            }
        }
    }

    fn release_entry_names(&self, entry: &HistEntry) {
        if let Some(m) = entry.mount {
            self.names.release(&self.pool, m);
        }
        for h in &entry.holders[..usize::from(entry.n)] {
            if let Some(i) = h.image {
                self.names.release(&self.pool, i);
            }
        }
    }

    /// Keeps the biggest holders of `hive` in `entry` (images counted).
    ///
    /// Walks the hive's own list of holdings under its shard's holdings lock, so the cost is
    /// that hive's holders, not every process the tracker knows (until 2026-12-06 it walked
    /// the whole process table, exited processes a duplicated handle keeps alive included:
    /// 15.9 ms per unload attempt with 100,000 of them, in the registry callback). The
    /// holdings lock is a leaf: the images are referenced (an atomic add) under it, and the
    /// biggest are chosen before that, so no name is released under it.
    pub(crate) fn collect_holders(
        &self,
        h: NonNull<Hive>,
        own: Option<NonNull<Holding<L>>>,
        entry: &mut HistEntry,
    ) {
        let mut total = 0u32;
        let mut chosen: [Option<NonNull<Process<L>>>; MAX_UNLOAD_HOLDERS] =
            [None; MAX_UNLOAD_HOLDERS];
        self.hives.with_holdings(h, false, |head| {
            Holding::<L>::each_in_hive(head, |hp| {
                let hold = holding_of(hp);
                let mut keys = u64::from(hold.count.load(Relaxed));
                if own == Some(hp) {
                    // The unload's own key (see `unload_attempted_with`): not a holder's.
                    entry.open_keys = entry.open_keys.saturating_sub(1);
                    keys = keys.saturating_sub(1);
                    if keys == 0 {
                        return;
                    }
                }
                total = total.saturating_add(1);
                let n = usize::from(entry.n);
                let slot = if n < MAX_UNLOAD_HOLDERS {
                    entry.n += 1;
                    n
                } else {
                    let (i, min) = entry
                        .holders
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, x)| x.open_keys)
                        .map_or((0, 0), |(i, x)| (i, x.open_keys));
                    if keys <= min {
                        return;
                    }
                    i
                };
                let key = process_of(hold.process).key;
                entry.holders[slot] = HistHolder {
                    pid: key.pid,
                    start_key: key.start_key,
                    open_keys: keys,
                    image: None,
                };
                chosen[slot] = Some(hold.process);
            });
            // Still under the lock: each chosen process holds a listed holding, so it lives.
            for (holder, p) in entry.holders.iter_mut().zip(chosen) {
                let image = p.and_then(|p| NonNull::new(process_of(p).image.load(Acquire)));
                if let Some(i) = image {
                    self.names.add_ref(i);
                }
                holder.image = image;
            }
        });
        entry.holders_total = total;
        if usize::try_from(total).unwrap_or(usize::MAX) > usize::from(entry.n) {
            entry.flags |= UnloadRecord::HOLDERS_TRUNCATED;
            bump(&self.counters.history_holders_truncated);
        }
        entry.holders[..usize::from(entry.n)].sort_unstable_by(|a, b| {
            b.open_keys
                .cmp(&a.open_keys)
                .then(a.pid.cmp(&b.pid))
                .then(a.start_key.cmp(&b.start_key))
        });
    }
}

/// Where an open's name and hive come from.
enum Source<'a> {
    /// The key's full name (and the cache miss to fill, if the driver asked the cache).
    Name(&'a [u16], Option<KeyMiss>),
    /// The key cache.
    Hit(KeyHit),
}

/// Fills a slot just taken for an open, before anyone can name it: the token is not out
/// yet, and a forged one is refused while the state is `RESERVED`.
#[allow(
    clippy::inline_always,
    reason = "hot path: a call's register saves cost more than its body (issue 14)"
)]
#[inline(always)]
fn init_record(rec: &ObjRecord, generation: u32, object: u64, thread: u64, access: u32, time: u64) {
    rec.set_state(generation, RESERVED);
    // Release: a lock-free reader that sees this object also sees the state above
    // (`identify` reads the object between two reads of the state word).
    rec.object.store(object, Release);
    rec.time.store(time, Relaxed);
    rec.thread
        .store(u32::try_from(thread).unwrap_or(0), Relaxed);
    // A free record has no stack and no key entry: `remove` takes both before its slot is
    // released, and a slot given back untracked never had either. Still stored: a path that
    // broke that rule would hand the next open another key's stack or key entry, a wrong
    // answer no release build would notice (the lean branch's saving of a few instructions
    // here was not taken).
    debug_assert_eq!(rec.stack.load(Relaxed), 0);
    debug_assert!(rec.key.load(Relaxed).is_null());
    rec.stack.store(0, Relaxed);
    rec.key.store(ptr::null_mut(), Relaxed);
    rec.access.store(access, Relaxed);
    rec.opens.store(1, Relaxed);
    rec.closes.store(0, Relaxed);
}

#[cold]
fn unreachable_link() -> ! {
    // A list link or a validated token always names a handed-out slot; reaching this means
    // memory corruption, which the kernel build turns into a bug check.
    panic!("hivetrack: internal link to an unallocated slot")
}

impl<P: Pool, L: RawLock> Drop for Tracker<P, L> {
    /// Frees every block. The driver calls this after `CmUnRegisterCallback` (which
    /// delivers a cleanup for every object still carrying a context) and after its
    /// process-notify routine is removed, so no event can run concurrently.
    fn drop(&mut self) {
        // Keys: release names, holdings, hive pins.
        for s in 0..MAX_SHARDS {
            let mut i = 0;
            while let Some(rec) = self.objects[s].get(i) {
                let state = rec.state();
                if matches!(state, LIVE | DYING | RESERVED)
                    && let Some(n) = NonNull::new(rec.name.swap(ptr::null_mut(), Relaxed))
                {
                    self.names.release(&self.pool, n);
                }
                i += 1;
            }
        }
        self.keys.teardown(&self.pool, &self.names);
        self.drop_watches();
        self.stacks.teardown(&self.pool);
        let pool = &self.pool;
        let names = &self.names;
        let hives = &self.hives;
        // Lock order: `unpin` may take a hive shard exclusively (a retired or forgettable
        // hive's last reference), and the documented order (`crate::processes`) puts the hive
        // shard before the process shard and the process. So the walk under those locks only
        // unlinks each process's holdings onto one local chain, and the unpins run after it,
        // under no tracker lock. Driver Verifier's Deadlock Detection reports an order loop
        // even where the two orders can never run at once (Learn, devtest "Deadlock
        // Detection": "find lock hierarchy violations that are not necessarily
        // simultaneous"), so "nothing else runs now" (the driver drops the tracker after
        // `CmUnRegisterCallback` and its notify removals: audit 22a, F6) was no defence
        // (audit 24a, F1). In the driver `CmUnRegisterCallback`'s context cleanups usually
        // empty every holding first (the kernel emulator reached this loop in no scenario);
        // the host test `teardown_keeps_the_lock_order_with_an_app_hive_held` does.
        let mut unlinked: *mut Holding<L> = ptr::null_mut();
        self.processes.for_each(|p| {
            let modules = NonNull::new(p.modules.swap(ptr::null_mut(), Relaxed));
            p.modules_tail.store(ptr::null_mut(), Relaxed);
            self.free_modules(modules);
            let mut cur = p.holdings.swap(ptr::null_mut(), Relaxed);
            while let Some(h) = NonNull::new(cur) {
                let hold = holding_of(h);
                cur = hold.next.load(Relaxed);
                hold.next.store(unlinked, Relaxed);
                unlinked = h.as_ptr();
            }
        });
        while let Some(h) = NonNull::new(unlinked) {
            let hold = holding_of(h);
            unlinked = hold.next.load(Relaxed);
            hives.unpin(pool, names, hold.hive, Vouch::NONE);
            // SAFETY: teardown: exclusive access; the holding is unlinked from its process
            // and from the local chain.
            unsafe { free_holding(pool, h) };
        }
        self.processes.teardown(pool, |i| names.release(pool, i));
        self.history
            .drain(|e| History::<L>::free_entry(pool, e, |n| names.release(pool, n)));
        self.hives.teardown(pool, names);
        for s in &mut self.objects {
            s.teardown(pool);
        }
        let leaked = self.names.teardown(pool);
        // Every holder released its names above: a name still referenced here is a
        // reference some path took and never gave back (freed anyway). Host tests, built
        // with debug assertions, fail on it; the driver's release build only frees.
        debug_assert_eq!(leaked, 0, "names still referenced at teardown");
    }
}
