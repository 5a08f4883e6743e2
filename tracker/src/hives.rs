//! Hives and hive resolution: which hive a key path lives in.
//!
//! A path resolves to the loaded hive with the longest mount point that is a prefix of it at
//! a component boundary, compared case-insensitively. Mount points are seeded from the hive
//! list and kept current by load/unload notifications. A path under no known mount point
//! falls back to an implicit hive `\REGISTRY\<root>\<first component>` (its first three
//! components), created on first sight — and a path of fewer components (`\REGISTRY\MACHINE`)
//! to the master hive `\REGISTRY`, whose keys the roots are; application hives `\REGISTRY\A\{guid}` are
//! recognised by their root and flagged.
//!
//! The table is sharded by the (folded) first three components of a path: every mount point
//! that can be a prefix of a path shares them with it, so resolution looks at one shard,
//! under that shard's lock taken shared. Hives are reference counted by the (process, hive)
//! records that point at them and by in-flight resolutions; an unloaded hive is kept on the
//! shard's retired list until its count drops to zero.
//!
//! Some hives go without a notification, so their records are forgotten when nothing the
//! tracker records is in them any more (the table then holds the hives in use, not every hive
//! seen since boot):
//! - an application hive (`\REGISTRY\A\{GUID}`, [`HiveKind::App`]) unloads by itself when
//!   its last key object goes, with no unload notification (Learn, `RegLoadAppKeyW`:
//!   "automatically unloaded when all handles to the keys inside the hive are closed"; the
//!   emulator's `td-app-hive`). Its record goes with its last tracked key, unless a loss was
//!   counted in it (an answer must keep saying so); one with no tracked key left (its keys
//!   never tracked: a caller's root handle whose open no notification announced, which
//!   the emulator no longer models (Learn implies the open is notified) but no Windows run
//!   has ruled out; or a loss
//!   kept it) is forgotten when more than [`IDLE_APP_HIVES`] such sit in its shard, its
//!   losses moved to the global count (every answer then says opens were lost somewhere).
//!   Without that, a user loading app hive after app hive, each with one refused open, grew
//!   the table without bound (audit 2026-12-05: 5,001 records for 5,000 loads).
//! - an implicit hive (a mount point seen only in key paths: no load notification was seen
//!   for it, so none of its unload will be either) goes the same way with its last tracked
//!   key, unless a loss was counted in it; it is made again by the next open in it.
//! - a deferred unload (`NtUnloadKeyEx` with an event) is reported once, as `STATUS_PENDING`, and
//!   completes later with no notification (the emulator's `td-deferred-unload`, after the
//!   Windows Research Kernel's `CmpLateUnloadHiveWorker`). The hive is marked
//!   [`HiveState::UnloadPending`] and stays so after its last tracked key goes: Windows
//!   completes the unload only after the delayed dereference of the closed keys' control
//!   blocks, up to about 5 s later (WRK `cmdelay.c`, `cmdelete.c` `CmpDoQueueLateUnloadWorker`;
//!   the emulator's `td-deferred-unload`), and keys the tracker cannot see (opened before
//!   tracking started) may hold it longer; until then the hive is loaded and its file in use.
//!   Until 2026-12-06 a hive the tracker could vouch for (loaded while tracking ran, nothing
//!   lost) was forgotten at its last tracked key, so in that window `hives` did not list it
//!   and `holders` called it unknown. The record goes when a read of the hive list at
//!   `PASSIVE_LEVEL` (the driver's, before a query is answered: [`HiveTable::unload_check_begin`])
//!   finds its value gone — the late unload deletes it after unlinking the hive (WRK
//!   `cmdelete.c` `CmpLateUnloadHiveWorker` → `cmapi.c` `CmUnloadKey` → `cmhvlist.c`
//!   `CmpRemoveFromHiveFileList`) — provided the value was there once: a read saw it, or the
//!   hive's load was notified (`CmLoadKey` adds the value before its caller sends the
//!   post-notification; review 21a, M1: a hive loaded after the driver started was retired
//!   only if a query ran in the ≤5 s window) — or it stays, loaded again, when a load at the
//!   mount cancels the unload. A load whose `CmpAddToHiveFileList` failed is loaded but
//!   unlisted (`cmapi.c` `CmLoadKey` ignores its result): a check may retire it while its late
//!   unload is still to run, which only forgets it, as below. At most
//!   [`IDLE_PENDING_HIVES`] such records with no tracked key that the tracker can vouch for
//!   are kept per shard; past them the oldest is forgotten, as before (an answer about it
//!   says "unknown hive", and `hivetrack wait` asks the kernel).

use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
};

use protocol::holders::{HiveKind, HiveState};

use crate::counters::{locked_add32, locked_sub32};
use crate::lock::{Exclusive, Hold, RawLock, Shared};
use crate::names::{NameEntry, NameRef, NameTable, NoMemory, eq_fold as eq_folded, name_of};
use crate::pool::{BlockClass, Pool, alloc_init, free_block};
use crate::seed_window::SeedWindow;

const SHARDS: usize = 16;
/// Flag in [`Hive`]'s reference count: the hive was unloaded and sits on its shard's retired
/// list, to be freed by whoever drops its last reference.
const RETIRED: u32 = 1 << 31;
const BACKSLASH: u16 = b'\\' as u16;
/// Application hives with no tracked key kept per shard before the oldest is forgotten.
pub const IDLE_APP_HIVES: usize = 4;
/// The most units of an application hive's file name stored.
///
/// The rest is cut, and the hive reported with `FILE_TRUNCATED`: any user can load app hives
/// (`RegLoadAppKey`), each named by a path of up to 2,036 stored units (a 4 KiB block); 512
/// units hold any path short of the long-path opt-in, in a 1 KiB block (audit 21b F4).
pub const MAX_APP_FILE_UNITS: usize = 512;
/// Idle vouched unload-pending hives kept per shard before the oldest is forgotten.
///
/// Regular hives with a pending deferred unload, no tracked key and nothing the tracker could
/// not see: without a query nothing retires them (module doc).
pub const IDLE_PENDING_HIVES: usize = 4;
/// [`Hive::list`]: a read of the hive list saw the hive's value once.
const LISTED: u8 = 1;
/// [`Hive::list`]: the hive list check under way has not (yet) seen the hive's value.
const UNSEEN: u8 = 2;
/// Size class of a hive record.
pub const HIVE_CLASS: BlockClass = BlockClass::B128;

/// A hive the tracker knows.
pub struct Hive {
    next: AtomicPtr<Self>,
    /// Opaque id, never reused while the tracker lives (1, 2, …).
    pub id: u32,
    pub(crate) shard: u32,
    /// Regular or application hive.
    pub kind: HiveKind,
    state: AtomicU8,
    mount: NameRef,
    file: AtomicPtr<NameEntry>,
    /// Holdings and pins referring to it, plus [`RETIRED`] once unloaded.
    refs: AtomicU32,
    /// Tracked key objects in the hive.
    pub open_keys: AtomicU64,
    /// Processes holding keys in the hive.
    pub holders: AtomicU32,
    /// The first of those holdings (`crate::processes::Holding`, type-erased: a hive is not
    /// generic over the lock type), a list guarded by its shard's holdings lock
    /// ([`HiveTable::with_holdings`]), so that an unload's holders are found without a walk
    /// of every process.
    pub(crate) holdings: AtomicPtr<()>,
    loaded_time: AtomicU64,
    /// Opens in the hive the tracker lost since this record was made (see
    /// `crate::losses`); a new load of the mount makes a new record, so they age out.
    pub lost: AtomicU64,
    /// When the first of them happened (0 when none).
    pub lost_since: AtomicU64,
    /// A tracked key was in it once: an application or implicit hive's record then goes with
    /// its last tracked key (an application hive never opened is left to [`IDLE_APP_HIVES`]).
    held: AtomicBool,
    /// What reads of the hive list saw of it ([`LISTED`], [`UNSEEN`]).
    list: AtomicU8,
}

/// Since when the tracker has seen every open.
///
/// Used to forget a hive whose deferred unload is pending: the time live tracking began when
/// no open was lost without a known hive, `None` otherwise (then no pending unload is ever
/// taken as done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vouch(pub Option<u64>);

impl Vouch {
    /// Vouches for nothing (teardown, tests).
    pub const NONE: Self = Self(None);
}

impl Hive {
    /// Mount point.
    pub fn mount(&self) -> &[u16] {
        name_of(self.mount).units()
    }

    /// Its mount point's name reference (for a record that keeps it: add a reference).
    pub(crate) const fn mount_ref(&self) -> NameRef {
        self.mount
    }

    /// Hive file, if known. Valid while the caller holds the hive's shard lock.
    pub fn file(&self) -> &[u16] {
        NonNull::new(self.file.load(Relaxed)).map_or(&[], |f| name_of(f).units())
    }

    /// The hive file's name is stored cut ([`MAX_APP_FILE_UNITS`] units of an application
    /// hive's, [`crate::names::MAX_NAME_UNITS`] of any other). Under the shard lock, as
    /// [`Self::file`].
    pub fn file_truncated(&self) -> bool {
        NonNull::new(self.file.load(Relaxed)).is_some_and(|f| name_of(f).truncated())
    }

    /// State now.
    pub fn state(&self) -> HiveState {
        HiveState::from_u8(self.state.load(Relaxed)).unwrap_or(HiveState::Implicit)
    }

    /// Load time, 0 when not known.
    pub fn loaded_time(&self) -> u64 {
        self.loaded_time.load(Relaxed)
    }

    /// Whether `vouch` covers it: loaded while tracking ran, with nothing lost globally.
    fn vouched(&self, vouch: Vouch) -> bool {
        vouch.0.is_some_and(|since| {
            let loaded = self.loaded_time();
            since != 0 && loaded != 0 && loaded >= since
        })
    }

    /// Whether its record can go now that nothing refers to it (see the module doc). A
    /// regular hive's pending unload is never done at its last key: a read of the hive list
    /// retires it ([`HiveTable::unload_check_end`]).
    fn forgettable(&self, vouch: Vouch) -> bool {
        if self.refs.load(Relaxed) != 0 || self.lost.load(Relaxed) != 0 {
            return false;
        }
        match self.state() {
            HiveState::UnloadPending => self.kind == HiveKind::App && self.vouched(vouch),
            HiveState::Unloaded => false,
            HiveState::Implicit => self.held.load(Relaxed),
            HiveState::Loaded => self.kind == HiveKind::App && self.held.load(Relaxed),
        }
    }
}

/// Reads a hive the caller keeps alive (a pin, a holding, or its shard lock).
#[must_use]
pub const fn hive_of<'a>(h: NonNull<Hive>) -> &'a Hive {
    // SAFETY: hives are freed only when unloaded, unreferenced and unlinked under their
    // shard lock; every caller holds a reference count or that lock.
    unsafe { h.as_ref() }
}

struct Shard<L> {
    lock: L,
    live: AtomicPtr<Hive>,
    retired: AtomicPtr<Hive>,
    count: AtomicU32,
    /// Guards the holdings lists of the shard's hives ([`Hive::holdings`]): a leaf, taken
    /// under a process lock (a holding made or emptied) or under nothing (an unload's
    /// holders), and nothing is taken under it.
    holdings_lock: L,
    /// Bumped under the exclusive lock whenever `live` changes (a hive added or unlinked):
    /// while it stays the same, every path of the shard resolves as before and every hive
    /// found on `live` is still there ([`HiveHint`]).
    generation: AtomicU64,
}

/// What [`HiveTable::unload_check_end`] found in a shard at one look.
enum Unseen {
    /// No (more) hive the check takes as unloaded.
    None,
    /// One retired: to free after the lock when nothing referred to it.
    Retired(Option<NonNull<Hive>>),
}

/// Where a path resolved: its hive, the hive's shard, and the shard's generation then.
///
/// The key cache keeps it so that an open of a held key skips the path lookup while the
/// shard's live list has not changed ([`HiveTable::held_by_hint`]); it holds no reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiveHint {
    pub(crate) hive: NonNull<Hive>,
    pub(crate) shard: u32,
    pub(crate) generation: u64,
}

/// The hive table.
pub struct HiveTable<L> {
    shards: [Shard<L>; SHARDS],
    next_id: AtomicU32,
    /// Unloads seen while the start-up seed reads the hive list ([`crate::seed_window`]).
    pub(crate) seed: SeedWindow,
    /// Non-zero while a regular hive may be unload-pending and a read of the hive list may
    /// retire it: deferred unloads marked since the last check of the hive list, plus the
    /// pending hives that check left that a later read can retire (not those a whole check
    /// found never listed) ([`Self::unload_check_wanted`]). May say more than there is (a
    /// reload cancelled one), never less.
    pending_hint: AtomicU32,
}

/// The largest hive id: ids have 31 bits (the top bit of the word they share marks a
/// retired record, [`RETIRED`]).
const MAX_HIVE_ID: u32 = 0x7FFF_FFFF;

/// Takes the next hive id from `next`, or `None` once all 2^31 - 1 of them have been handed
/// out in this run. Ids are never reused: a reused id would name two hives at once (a
/// held-after watch ended for the wrong hive, a listing cursor skipping one; until
/// 2026-12-05 the counter wrapped to 0 and on). Past the last id no new hive is recorded:
/// its opens are counted as `opens_dropped_no_memory_hive`, so reports say they are
/// incomplete.
fn take_id(next: &AtomicU32) -> Option<u32> {
    next.fetch_update(Relaxed, Relaxed, |id| (id <= MAX_HIVE_ID).then(|| id + 1))
        .ok()
}

/// The first three components of `path` (or all of it when shorter): the shard key.
#[must_use]
pub fn shard_prefix(path: &[u16]) -> &[u16] {
    const BACKSLASHES: u64 = 0x005C_005C_005C_005C;
    const LOW: u64 = 0x7FFF_7FFF_7FFF_7FFF;
    // A lane of `x` is zero (a backslash) exactly when its top bit stays clear in
    // `(x & LOW) + LOW | x`; the result has the top bit of each such lane set.
    let backslashes = |c: &[u16]| {
        let x = crate::names::word4(c) ^ BACKSLASHES;
        !(((x & LOW) + LOW) | x) & !LOW
    };
    // Sixteen units a step first ([`crate::units`]): most steps find no backslash (a SID
    // component is 40-odd units).
    let (mut base, seen) = match crate::units::nth_backslash(path, 4) {
        Ok(i) => return &path[..i],
        Err(progress) => progress,
    };
    let mut seen = seen as usize;
    // The rest eight units a step, two words tested at once.
    let mut steps = path[base..].chunks_exact(8);
    for c in &mut steps {
        let (lo, hi) = c.split_at(4);
        let (a, b) = (backslashes(lo), backslashes(hi));
        if a | b != 0 {
            for (offset, mut zeros) in [(0, a), (4, b)] {
                while zeros != 0 {
                    seen += 1;
                    if seen == 4 {
                        return &path[..base + offset + zeros.trailing_zeros() as usize / 16];
                    }
                    zeros &= zeros - 1;
                }
            }
        }
        base += 8;
    }
    for (i, &u) in path.iter().enumerate().skip(base) {
        if u == BACKSLASH {
            seen += 1;
            if seen == 4 {
                return &path[..i];
            }
        }
    }
    master_or(path, seen)
}

/// `path` itself when it has three components, else its first one (`\REGISTRY`): a key of
/// fewer components (`\REGISTRY`, `\REGISTRY\MACHINE`, `\REGISTRY\USER`) is a key of the
/// master hive `\REGISTRY`, in which every other hive is mounted (`ReactOS`
/// `ntoskrnl/config/cmsysini.c`: `CmpCreateRegistryRoot` creates the root node `REGISTRY` in
/// `CmpMasterHive`, and `CmInitSystem1` its `MACHINE` and `USER` keys there; the kernel
/// emulator files them so too). `seen` is the number of backslashes in `path`.
fn master_or(path: &[u16], seen: usize) -> &[u16] {
    if seen >= 3 {
        return path;
    }
    path.iter()
        .skip(1)
        .position(|&u| u == BACKSLASH)
        .map_or(path, |i| &path[..=i])
}

/// The shard of a path: a hash of its [`shard_prefix`]'s length and last eight units (fold
/// keys, so case variants agree). Every path starts with one of a few roots and top keys
/// (`\REGISTRY\MACHINE`, `\REGISTRY\USER`, ...), so the end of the third component is
/// what tells prefixes apart; hashing the whole prefix cost as much as hashing the name.
fn shard_of(path: &[u16]) -> usize {
    shard_of_prefix(shard_prefix(path))
}

/// [`shard_of`] for a path whose [`shard_prefix`] is `p` (an open computes it once, for the
/// shard and for [`longest`]: it was a fifth of a fresh key's open, twice).
fn shard_of_prefix(p: &[u16]) -> usize {
    use crate::names::{key4, word4};
    let tail = &p[p.len().saturating_sub(8)..];
    let (a, b) = if let Some((x, y)) = tail.split_at_checked(4).filter(|_| tail.len() == 8) {
        (word4(x), word4(y))
    } else {
        let mut t = [0u64; 2];
        for (k, &u) in tail.iter().enumerate() {
            t[(k / 4) & 1] |= u64::from(u) << (16 * (k % 4));
        }
        t.into()
    };
    let h = ((key4(a).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key4(b)) + p.len() as u64)
        .wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    #[allow(clippy::cast_possible_truncation, reason = "the top four bits")]
    let shard = (h >> 60) as usize;
    shard % SHARDS
}

/// True when `mount` is `path` or a prefix of it ending at a component boundary.
#[must_use]
pub fn is_mount_of(mount: &[u16], path: &[u16]) -> bool {
    path.len() >= mount.len()
        && (path.len() == mount.len() || path[mount.len()] == BACKSLASH)
        && eq_folded(&path[..mount.len()], mount)
}

fn kind_of(mount: &[u16]) -> HiveKind {
    const APP: [u16; 12] = [92, 82, 69, 71, 73, 83, 84, 82, 89, 92, 65, 92]; // \REGISTRY\A\
    if mount.len() > APP.len() && eq_folded(&mount[..APP.len()], &APP) {
        HiveKind::App
    } else {
        HiveKind::Regular
    }
}

fn find(list: &AtomicPtr<Hive>, mut pred: impl FnMut(&Hive) -> bool) -> Option<NonNull<Hive>> {
    let mut cur = list.load(Relaxed);
    while let Some(h) = NonNull::new(cur) {
        let hive = hive_of(h);
        if pred(hive) {
            return Some(h);
        }
        cur = hive.next.load(Relaxed);
    }
    None
}

fn unlink(list: &AtomicPtr<Hive>, target: NonNull<Hive>) -> bool {
    let mut link = list;
    loop {
        let cur = link.load(Relaxed);
        if cur == target.as_ptr() {
            link.store(hive_of(target).next.load(Relaxed), Relaxed);
            return true;
        }
        match NonNull::new(cur) {
            Some(c) => link = &hive_of(c).next,
            None => return false,
        }
    }
}

/// The longest live mount that is a prefix of `path`. A mount shorter than the path's
/// [`shard_prefix`] is not its hive: only the master hive `\REGISTRY` is, and it contains
/// just the keys of fewer than three components (whose shard prefix is `\REGISTRY` itself);
/// a deeper path under no mount of its shard belongs to an implicit hive, even when its
/// shard happens to be the master hive's. `least` is the length of that prefix.
fn longest(list: &AtomicPtr<Hive>, path: &[u16], least: usize) -> Option<NonNull<Hive>> {
    let mut best: Option<(NonNull<Hive>, usize)> = None;
    find(list, |h| {
        let m = h.mount();
        if m.len() >= least && is_mount_of(m, path) && best.is_none_or(|(_, l)| m.len() > l) {
            best = Some((NonNull::from(h), m.len()));
        }
        false
    });
    best.map(|(h, _)| h)
}

impl<L: RawLock> Default for HiveTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> HiveTable<L> {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| Shard {
                lock: L::new(),
                holdings_lock: L::new(),
                live: AtomicPtr::new(ptr::null_mut()),
                retired: AtomicPtr::new(ptr::null_mut()),
                count: AtomicU32::new(0),
                generation: AtomicU64::new(0),
            }),
            next_id: AtomicU32::new(1),
            seed: SeedWindow::new(),
            pending_hint: AtomicU32::new(0),
        }
    }

    fn create<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        shard: usize,
        mount: &[u16],
        state: HiveState,
    ) -> Result<NonNull<Hive>, NoMemory> {
        let id = take_id(&self.next_id).ok_or(NoMemory)?;
        let mount_ref = names.intern(pool, mount)?;
        #[allow(clippy::cast_possible_truncation, reason = "shard < SHARDS")]
        let hive = Hive {
            next: AtomicPtr::new(self.shards[shard].live.load(Relaxed)),
            id,
            shard: shard as u32,
            kind: kind_of(mount),
            state: AtomicU8::new(state as u8),
            mount: mount_ref,
            file: AtomicPtr::new(ptr::null_mut()),
            refs: AtomicU32::new(0),
            open_keys: AtomicU64::new(0),
            holders: AtomicU32::new(0),
            holdings: AtomicPtr::new(ptr::null_mut()),
            loaded_time: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            lost_since: AtomicU64::new(0),
            held: AtomicBool::new(false),
            list: AtomicU8::new(0),
        };
        let Some(h) = alloc_init(pool, HIVE_CLASS, hive) else {
            names.release(pool, mount_ref);
            return Err(NoMemory);
        };
        self.shards[shard].live.store(h.as_ptr(), Relaxed);
        self.shards[shard].generation.fetch_add(1, Relaxed);
        locked_add32(&self.shards[shard].count, 1);
        Ok(h)
    }

    /// Resolves `path` to its hive and pins it (release with [`HiveTable::unpin`]). With
    /// `create`, a path under no known mount creates its implicit hive; without, it gives
    /// `Ok(None)`.
    ///
    /// # Errors
    /// [`NoMemory`] when the implicit hive could not be created.
    pub fn resolve<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        path: &[u16],
        create: bool,
    ) -> Result<Option<NonNull<Hive>>, NoMemory> {
        let prefix = shard_prefix(path);
        let si = shard_of_prefix(prefix);
        let shard = &self.shards[si];
        {
            let _g = Shared::new(&shard.lock);
            if let Some(h) = longest(&shard.live, path, prefix.len()) {
                hive_of(h).refs.fetch_add(1, Relaxed);
                return Ok(Some(h));
            }
        }
        if !create {
            return Ok(None);
        }
        let _g = Exclusive::new(&shard.lock);
        if let Some(h) = longest(&shard.live, path, prefix.len()) {
            hive_of(h).refs.fetch_add(1, Relaxed);
            return Ok(Some(h));
        }
        let h = self.create(pool, names, si, prefix, HiveState::Implicit)?;
        hive_of(h).refs.fetch_add(1, Relaxed);
        Ok(Some(h))
    }

    /// Resolves `path` (creating its implicit hive if needed) and returns the hive with its
    /// shard lock held shared: the hive stays alive while the guard lives, without touching
    /// its reference count (the open path's cheaper alternative to `resolve` + `unpin`); and
    /// the hint for resolving it again ([`Self::held_by_hint`]).
    ///
    /// # Errors
    /// [`NoMemory`] when the implicit hive could not be created.
    pub fn resolve_held<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        path: &[u16],
    ) -> Result<(Shared<'_, L>, NonNull<Hive>, HiveHint), NoMemory> {
        let prefix = shard_prefix(path);
        let si = shard_of_prefix(prefix);
        let shard = &self.shards[si];
        loop {
            let g = Shared::new(&shard.lock);
            if let Some(h) = longest(&shard.live, path, prefix.len()) {
                #[allow(clippy::cast_possible_truncation, reason = "si < SHARDS")]
                let hint = HiveHint {
                    hive: h,
                    shard: si as u32,
                    generation: shard.generation.load(Relaxed),
                };
                return Ok((g, h, hint));
            }
            drop(g);
            let _x = Exclusive::new(&shard.lock);
            if longest(&shard.live, path, prefix.len()).is_none() {
                self.create(pool, names, si, prefix, HiveState::Implicit)?;
            }
            // Retake it shared; an unload in between sends us round again.
        }
    }

    /// The hive of `hint` with its shard lock held shared, as [`Self::resolve_held`] gave it
    /// for the same path, when the shard's live list has not changed since: then the path
    /// still resolves to it and it is still live (no hive can be added to or unlinked from
    /// the list without bumping the generation under the exclusive lock). `None` otherwise:
    /// resolve by the path.
    pub fn held_by_hint(&self, hint: HiveHint) -> Option<(Shared<'_, L>, NonNull<Hive>)> {
        let shard = &self.shards[hint.shard as usize % SHARDS];
        let g = Shared::new(&shard.lock);
        (shard.generation.load(Relaxed) == hint.generation).then_some((g, hint.hive))
    }

    /// Whether `hint` still holds without its shard lock: the shard's live list has not
    /// changed since it was made. The caller keeps the hint's hive alive some other way (a
    /// holding of it, found by address under a process lock): then the hive has stayed on the
    /// list all along, and its path still resolves to it. A load or unload that bumps the
    /// generation right after this read is ordered after the open that asked.
    pub fn hint_current(&self, hint: HiveHint) -> bool {
        self.shards[hint.shard as usize % SHARDS]
            .generation
            .load(Acquire)
            == hint.generation
    }

    /// Takes one more reference on a hive the caller keeps alive, for a holding (a tracked
    /// key in it).
    pub fn add_ref(h: NonNull<Hive>) {
        let hive = hive_of(h);
        hive.refs.fetch_add(1, Relaxed);
        hive.held.store(true, Relaxed);
    }

    /// Drops a reference; frees the hive if it was unloaded and this was the last one.
    ///
    /// Lock-free unless it frees: `refs` carries the [`RETIRED`] flag, set by `unloaded` in
    /// the same atomic word, so the decrement alone tells whether this was the last
    /// reference to a retired hive. (A live hive at zero references needs nothing: `unloaded`
    /// frees it at once if it is still unreferenced then.) Release on the decrement and
    /// Acquire for the last one order every holder's use of the hive before its free.
    ///
    /// A live hive left with no reference is forgotten when [`Hive::forgettable`] says so
    /// (`vouch`: see [`Vouch`]); that takes the shard lock, and happens only to application
    /// and implicit hives (checked before the decrement, while the reference keeps the hive
    /// alive).
    pub fn unpin<P: Pool>(&self, pool: &P, names: &NameTable<L>, h: NonNull<Hive>, vouch: Vouch) {
        let hive = hive_of(h);
        let shard = hive.shard as usize;
        let may_forget = hive.kind == HiveKind::App || hive.state() == HiveState::Implicit;
        let before = hive.refs.fetch_sub(1, AcqRel);
        if before == 1 && may_forget {
            // `hive` may be freed by another thread from here on: only its address is used
            // until it is found again on the live list under the shard lock.
            self.forget_if_idle(pool, names, shard, h, vouch);
            return;
        }
        if before != RETIRED | 1 {
            return;
        }
        // Retired, and no reference is left: nobody else can reach or free it (a retired
        // hive is on no list a lookup searches). `unloaded` may still be pushing it onto the
        // retired list: the shard lock waits for that.
        let s = &self.shards[shard];
        let found = {
            let _g = Exclusive::new(&s.lock);
            let dead = find(&s.retired, |x| {
                ptr::eq(x, h.as_ptr()) && x.refs.load(Relaxed) == RETIRED
            });
            if let Some(d) = dead {
                unlink(&s.retired, d);
                locked_sub32(&s.count, 1);
            }
            dead
        };
        if let Some(d) = found {
            Self::free(pool, names, d);
        }
    }

    /// Forgets the hive at `h` if it is still on shard `si`'s live list, unreferenced and
    /// [`Hive::forgettable`].
    ///
    /// Found by address alone (the hive may have been freed since the caller's decrement):
    /// another hive record made at the same address meanwhile is forgotten too, but only when
    /// it is itself forgettable — what its own last unpin would do. Harmless as long as
    /// `forgettable` checks everything a forget needs (audit 22a, F5: keep it so).
    fn forget_if_idle<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        si: usize,
        h: NonNull<Hive>,
        vouch: Vouch,
    ) {
        let s = &self.shards[si];
        let gone = {
            let _g = Exclusive::new(&s.lock);
            find(&s.live, |x| ptr::eq(x, h.as_ptr()) && x.forgettable(vouch))
                .inspect(|&d| Self::forget_locked(s, d))
        };
        if let Some(d) = gone {
            Self::free(pool, names, d);
        }
    }

    /// Unlinks an unreferenced live hive (caller holds the shard lock exclusively); the
    /// caller frees it after the lock.
    fn forget_locked(s: &Shard<L>, h: NonNull<Hive>) {
        unlink(&s.live, h);
        s.generation.fetch_add(1, Relaxed);
        locked_sub32(&s.count, 1);
    }

    fn free<P: Pool>(pool: &P, names: &NameTable<L>, h: NonNull<Hive>) {
        let hive = hive_of(h);
        names.release(pool, hive.mount);
        if let Some(f) = NonNull::new(hive.file.load(Relaxed)) {
            names.release(pool, f);
        }
        // SAFETY: unlinked and unreferenced: nobody can reach it any more.
        unsafe { free_block(pool, HIVE_CLASS, h) };
    }

    /// Records a loaded hive (from the hive list or a load notification). `seeded`: read from
    /// the hive list, which may be older than what the callback already recorded, so a
    /// record that says loaded (or unload pending) is left as it is (review 18d: the seed
    /// overwrote a load's time with 0 and its file with the list's).
    ///
    /// Returns whether the hive's record was made or changed (a seeded load of a hive the
    /// callback already recorded, or of a mount unloaded during the seed, changes nothing).
    ///
    /// # Errors
    /// [`NoMemory`]; nothing changed then.
    /// An application hive forgotten to make room hands its losses (count, since) to
    /// `fold_losses`, which keeps them in the global count.
    #[allow(clippy::too_many_arguments, reason = "the facts of one load")]
    pub fn loaded<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        mount: &[u16],
        file: &[u16],
        time: u64,
        seeded: bool,
        fold_losses: impl Fn(u64, u64),
    ) -> Result<bool, NoMemory> {
        // An application hive's file name is kept to its first `MAX_APP_FILE_UNITS` units
        // (flagged cut): any user loads app hives, each named by a path of up to 4 KiB.
        let cap = match kind_of(mount) {
            HiveKind::App => MAX_APP_FILE_UNITS,
            HiveKind::Regular => crate::names::MAX_NAME_UNITS,
        };
        let file_ref = if file.is_empty() {
            None
        } else {
            Some(names.intern_capped(pool, file, cap)?.0)
        };
        let si = shard_of(mount);
        let shard = &self.shards[si];
        let mut gone = [None; 2];
        let old_file = {
            let guard = Exclusive::new(&shard.lock);
            let found = find(&shard.live, |h| eq_folded(h.mount(), mount));
            if seeded
                && (found.is_some_and(|p| {
                    matches!(
                        hive_of(p).state(),
                        HiveState::Loaded | HiveState::UnloadPending
                    )
                }) || self.seed.unloaded(mount, names.seed()))
            {
                // The list has its value: a later check of the list may retire it
                // ([`Self::unload_check_end`]).
                if let Some(p) = found {
                    hive_of(p).list.fetch_or(LISTED, Relaxed);
                }
                drop(guard);
                if let Some(f) = file_ref {
                    names.release(pool, f);
                }
                return Ok(false);
            }
            // A load that succeeds where a hive is recorded as loaded: while a hive is linked
            // at the mount, only the same file loads there again, and that load changes
            // nothing but a pending deferred unload, which it cancels (WRK `cmapi.c` CmLoadKey
            // → CmpIsHiveAlreadyLoaded: "same file; same spot", STATUS_SUCCESS, "unfreeze the
            // hive"; ReactOS `ntoskrnl/config/cmapi.c` CmLoadKey: "That's okay then"). So the
            // record stays, with its keys, its losses and its load time, not the post's (a
            // hive read from the hive list keeps "unknown", or a report would vouch for opens
            // made before tracking; audit 19a, F1). A pending unload whose hive still has
            // tracked keys cannot have completed: cancelled, the hive is loaded as before.
            // With none, it may also have completed unseen and this be a fresh load of the
            // same file: its load time is then not known (0), and the old losses stay
            // counted — a report may say less than it could, never more. Until 2026-12-06 the
            // pending record was retired as unloaded, keys and all, and the hive they still
            // held looked free. An implicit record (keys seen under a mount no load named:
            // opened in the new hive between its link and this post, which the callback saw
            // all of) takes the load's time, as before.
            if !seeded {
                self.seed.note_load();
            }
            // And while the start-up seed has not read the whole hive list, a mount with no
            // loaded record may be a hive loaded before tracking that the seed missed: its
            // reload is no fresh load either, so no load time (review 19c, B1).
            let fresh = if self.seed.complete() { time } else { 0 };
            let load_time = found.map_or(Some(fresh), |p| {
                let h = hive_of(p);
                match h.state() {
                    HiveState::Loaded => None,
                    HiveState::UnloadPending if h.open_keys.load(Relaxed) != 0 => None,
                    HiveState::UnloadPending => Some(0),
                    HiveState::Implicit | HiveState::Unloaded => Some(fresh),
                }
            });
            if found.is_none() && kind_of(mount) == HiveKind::App {
                gone[1] = Self::forget_idle_app(shard);
                if let Some(d) = gone[1] {
                    let h = hive_of(d);
                    let lost = h.lost.load(Relaxed);
                    if lost != 0 {
                        fold_losses(lost, h.lost_since.load(Relaxed));
                    }
                }
            }
            let h = match found.map_or_else(
                || self.create(pool, names, si, mount, HiveState::Loaded),
                Ok,
            ) {
                Ok(h) => h,
                Err(e) => {
                    drop(guard);
                    if let Some(f) = file_ref {
                        names.release(pool, f);
                    }
                    for d in gone.into_iter().flatten() {
                        Self::free(pool, names, d);
                    }
                    return Err(e);
                }
            };
            let hive = hive_of(h);
            hive.state.store(HiveState::Loaded as u8, Relaxed);
            // Read from the list: its value is there. Loaded (a successful load's post): its
            // value is there too, as a rule: `CmLoadKey` adds it once the hive is linked and
            // before it returns, so before the post-notification its caller sends (WRK
            // `cmapi.c` `CmLoadKey`: `CmpLinkHiveToMaster`, then `CmpAddToHiveFileList`;
            // `ntapi.c` `NtLoadKeyEx` calls `CmLoadKey`); a reload of the same file at the same
            // spot keeps the value its first load added (`CmpIsHiveAlreadyLoaded`). Until
            // review 21a (M1) only a read of the list marked it, so the deferred unload of a
            // hive loaded after the driver started (every logon's profile) was never retired
            // unless a query ran while its value was still listed. The rare exception:
            // `CmLoadKey` ignores `CmpAddToHiveFileList`'s failure, so such a hive is loaded
            // but unlisted, and a check may retire it while it is pending and still loaded
            // (its last tracked key gone, its late unload not yet run). Retired, the record is
            // only forgotten, as every pending hive was until 2026-12-06: an answer about it
            // never says free (`holders` answers "unknown hive"; `hivetrack wait` asks the
            // kernel whether the hive is still loaded). Storing (not or-ing) also clears an
            // unseen mark: a check under way never retires a hive loaded meanwhile. An
            // application hive is never in the list.
            let listed = seeded || hive.kind == HiveKind::Regular;
            hive.list.store(if listed { LISTED } else { 0 }, Relaxed);
            if let Some(t) = load_time {
                hive.loaded_time.store(t, Relaxed);
            }
            let old = hive
                .file
                .swap(file_ref.map_or(ptr::null_mut(), NonNull::as_ptr), Relaxed);
            drop(guard);
            old
        };
        if let Some(f) = NonNull::new(old_file) {
            names.release(pool, f);
        }
        for d in gone.into_iter().flatten() {
            Self::free(pool, names, d);
        }
        Ok(true)
    }

    /// Before a new application hive is recorded in `shard`: when [`IDLE_APP_HIVES`] or more
    /// of its application hives have no reference (no tracked key, no query or watch pinning
    /// it), unlinks the oldest (the caller folds its losses into the global count and frees
    /// it after the lock). Nothing tells when such a hive unloads; forgetting one makes an
    /// answer about it say "unknown hive", never "free", and its losses stay counted.
    fn forget_idle_app(shard: &Shard<L>) -> Option<NonNull<Hive>> {
        let mut idle = 0;
        let mut oldest = None;
        find(&shard.live, |h| {
            if h.kind == HiveKind::App && h.refs.load(Relaxed) == 0 {
                idle += 1;
                oldest = Some(NonNull::from(h));
            }
            false
        });
        let d = oldest.filter(|_| idle >= IDLE_APP_HIVES)?;
        Self::forget_locked(shard, d);
        Some(d)
    }

    /// Unlinks a live hive as unloaded (caller holds the shard lock exclusively). Returns it
    /// when nothing refers to it (the caller frees it after the lock); otherwise it waits on
    /// the retired list for its last [`HiveTable::unpin`].
    fn retire_locked(shard: &Shard<L>, h: NonNull<Hive>) -> Option<NonNull<Hive>> {
        unlink(&shard.live, h);
        shard.generation.fetch_add(1, Relaxed);
        let hive = hive_of(h);
        hive.state.store(HiveState::Unloaded as u8, Relaxed);
        // No reference can be taken any more (lookups only search the live list, under
        // this lock); one may still be dropped concurrently, and whichever of this and
        // the last `unpin` comes second sees the other's effect in `refs` and frees.
        if hive.refs.fetch_or(RETIRED, AcqRel) == 0 {
            locked_sub32(&shard.count, 1);
            Some(h)
        } else {
            // In place by id (newest first), as on the live list: a listing walks the two
            // merged in one order ([`HiveTable::walk_from`]). Retired hives are few (each
            // waits only for its last reference).
            let mut link = &shard.retired;
            while let Some(c) = NonNull::new(link.load(Relaxed)) {
                if hive_of(c).id < hive.id {
                    break;
                }
                link = &hive_of(c).next;
            }
            hive.next.store(link.load(Relaxed), Relaxed);
            link.store(h.as_ptr(), Relaxed);
            None
        }
    }

    /// Records that a deferred unload of `mount` is pending (`NtUnloadKeyEx` returned
    /// `STATUS_PENDING`). The record stays, also once nothing tracked is in it, until a read
    /// of the hive list finds it gone or a load makes it loaded again (module doc); an
    /// application hive (never in the list) is forgotten as before when nothing tracked is in
    /// it and `vouch` covers it. Past [`IDLE_PENDING_HIVES`] vouched pending hives with no
    /// tracked key in the shard, the oldest is forgotten. Returns false when `mount` was not
    /// a known hive.
    pub fn unload_pending<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        mount: &[u16],
        vouch: Vouch,
    ) -> bool {
        let shard = &self.shards[shard_of(mount)];
        let gone = {
            let _g = Exclusive::new(&shard.lock);
            // No seed-window mark: a pending unload leaves the hive loaded and its hive-list
            // value in place (WRK `cmapi.c` CmUnloadKeyEx only freezes it;
            // CmpRemoveFromHiveFileList runs at the real unload), so a read that finds the
            // value must record the hive, or a reload of it (which cancels the unload) would
            // take a load time and vouch for keys opened before tracking (review 20a, H1).
            // The completion, unnotified, changes the list, which the reads' comparison sees.
            let Some(h) = find(&shard.live, |h| eq_folded(h.mount(), mount)) else {
                return false;
            };
            let hive = hive_of(h);
            if hive.state() != HiveState::Unloaded {
                hive.state.store(HiveState::UnloadPending as u8, Relaxed);
                if hive.kind == HiveKind::Regular {
                    self.pending_hint.fetch_add(1, Relaxed);
                }
            }
            if hive.forgettable(vouch) {
                Self::forget_locked(shard, h);
                Some(h)
            } else {
                Self::forget_idle_pending(shard, vouch)
            }
        };
        if let Some(h) = gone {
            Self::free(pool, names, h);
        }
        true
    }

    /// When more than [`IDLE_PENDING_HIVES`] regular hives of `shard` are unload-pending with
    /// nothing referring to them, no loss and `vouch` covering them, unlinks the oldest (the
    /// caller frees it after the lock): such a record waits for a query's read of the hive
    /// list, and without queries they would pile up (a logoff leaves two: the profile and its
    /// classes hive). Forgotten, it is what every such hive was until 2026-12-06: an answer
    /// about it says "unknown hive", never free. Caller holds the shard lock exclusively.
    fn forget_idle_pending(shard: &Shard<L>, vouch: Vouch) -> Option<NonNull<Hive>> {
        let mut idle = 0;
        let mut oldest = None;
        find(&shard.live, |h| {
            if h.kind == HiveKind::Regular
                && h.state() == HiveState::UnloadPending
                && h.refs.load(Relaxed) == 0
                && h.lost.load(Relaxed) == 0
                && h.vouched(vouch)
            {
                idle += 1;
                oldest = Some(NonNull::from(h));
            }
            false
        });
        let d = oldest.filter(|_| idle > IDLE_PENDING_HIVES)?;
        Self::forget_locked(shard, d);
        Some(d)
    }

    /// Whether a read of the hive list may retire a record: a regular hive may be
    /// unload-pending ([`Self::unload_check_begin`]).
    pub fn unload_check_wanted(&self) -> bool {
        self.pending_hint.load(Relaxed) != 0
    }

    /// A check of the hive list begins (at `PASSIVE_LEVEL`, one at a time, outside any
    /// registry callback): every regular unload-pending hive is marked unseen, and
    /// [`Self::listed`] clears the mark of each hive whose value the reads find. Returns what
    /// [`Self::unload_check_end`] takes.
    pub fn unload_check_begin(&self) -> u32 {
        self.check_begin(false)
    }

    /// A refresh of the hive set with live tracking off (review 21a, L4) begins: as
    /// [`Self::unload_check_begin`], but every regular hive (loaded or unload-pending) is
    /// marked unseen. Without the registry callback no unload is ever notified, so the hive
    /// list is the only thing that says a hive went: [`Self::refresh_end`] retires the
    /// hives no read found. Only for a tracker whose callback never registered: with
    /// tracking on, a loaded hive's value may be missing while it stays loaded (`CmLoadKey`
    /// ignores `CmpAddToHiveFileList`'s failure), and the callback tells its unload anyway.
    pub fn refresh_begin(&self) -> u32 {
        self.check_begin(true)
    }

    /// [`Self::unload_check_begin`] (`all` false) or [`Self::refresh_begin`] (`all` true).
    fn check_begin(&self, all: bool) -> u32 {
        let hint = self.pending_hint.load(Acquire);
        for s in &self.shards {
            let _g = Shared::new(&s.lock);
            find(&s.live, |h| {
                if h.kind == HiveKind::Regular && Self::checked_state(h.state(), all) {
                    h.list.fetch_or(UNSEEN, Relaxed);
                }
                false
            });
        }
        hint
    }

    /// A read of the hive list found `mount`'s value: its record, if any, is listed and not
    /// unseen. Returns whether there is a record (loaded, pending, implicit).
    pub fn listed(&self, mount: &[u16]) -> bool {
        let shard = &self.shards[shard_of(mount)];
        let _g = Shared::new(&shard.lock);
        find(&shard.live, |h| eq_folded(h.mount(), mount)).is_some_and(|h| {
            let hive = hive_of(h);
            hive.list.fetch_or(LISTED, Relaxed);
            hive.list.fetch_and(!UNSEEN, Relaxed);
            true
        })
    }

    /// A refresh's read (live tracking off, [`Self::refresh_begin`]) found `mount`'s value,
    /// naming `file`. Returns true when the record at `mount` stands for that file: it is
    /// marked listed and seen, as [`Self::listed`] does. False when there is no record, or
    /// when it names another file: that hive was unloaded (a mount holds one hive at a time,
    /// and a load where a hive is linked succeeds only for the same file in the same spot:
    /// WRK `cmapi.c` `CmLoadKey` → `CmpIsHiveAlreadyLoaded`, "same file; same spot"), so its
    /// record is retired here and the caller records the new hive (review 22a, L3: until
    /// 2026-12-06 the record kept naming the first file for as long as the mount stayed
    /// loaded). A file not known, or one of the two a case-insensitive prefix of the other
    /// (either may be stored or read cut), counts as the same.
    pub fn refreshed<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        mount: &[u16],
        file: &[u16],
    ) -> bool {
        let shard = &self.shards[shard_of(mount)];
        let freed = {
            let _g = Exclusive::new(&shard.lock);
            let Some(h) = find(&shard.live, |h| eq_folded(h.mount(), mount)) else {
                return false;
            };
            let hive = hive_of(h);
            let known = hive.file();
            let n = known.len().min(file.len());
            let same = n == 0 || eq_folded(&known[..n], &file[..n]);
            let replaced =
                !same && hive.kind == HiveKind::Regular && Self::checked_state(hive.state(), true);
            if !replaced {
                hive.list.fetch_or(LISTED, Relaxed);
                hive.list.fetch_and(!UNSEEN, Relaxed);
                return true;
            }
            Self::retire_locked(shard, h)
        };
        if let Some(h) = freed {
            Self::free(pool, names, h);
        }
        false
    }

    /// The check begun with [`Self::unload_check_begin`] (which returned `begun`) is over.
    /// `whole`: its reads saw every value of a list that held still. Then every hive still
    /// marked unseen that is still unload-pending with no tracked key, and whose value was
    /// there once (an earlier read saw it, or its load was notified: [`Self::loaded`]), is
    /// retired as unloaded: Windows deletes a hive's value only once it
    /// has unlinked the hive (WRK `cmapi.c` `CmUnloadKey`: `CmpDestroyHive`, then
    /// `CmpRemoveFromHiveFileList`; its files close just after, on the same thread), and
    /// nothing else does. A hive loaded again meanwhile is `Loaded`, one pending only since
    /// the check began is not marked. Returns how many were retired.
    pub fn unload_check_end<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        begun: u32,
        whole: bool,
    ) -> u32 {
        self.check_end(pool, names, begun, whole, false)
    }

    /// The refresh begun with [`Self::refresh_begin`] is over: as [`Self::unload_check_end`],
    /// but a loaded hive no whole read found is retired too.
    pub fn refresh_end<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        begun: u32,
        whole: bool,
    ) -> u32 {
        self.check_end(pool, names, begun, whole, true)
    }

    /// The states a check (`all` false: unload-pending only) or a refresh (`all` true: also
    /// loaded) marks and may retire.
    fn checked_state(state: HiveState, all: bool) -> bool {
        state == HiveState::UnloadPending || (all && state == HiveState::Loaded)
    }

    /// [`Self::unload_check_end`] (`all` false) or [`Self::refresh_end`] (`all` true).
    fn check_end<P: Pool>(
        &self,
        pool: &P,
        names: &NameTable<L>,
        begun: u32,
        whole: bool,
        all: bool,
    ) -> u32 {
        let mut retired = 0;
        let mut left = 0u32;
        for s in &self.shards {
            // One gone hive at a time, freed after the lock; then the marks are cleared and
            // the pending hives left counted.
            if whole {
                while let Unseen::Retired(freed) = Self::retire_one_unseen(s, all) {
                    retired += 1;
                    if let Some(h) = freed {
                        Self::free(pool, names, h);
                    }
                }
            }
            let _g = Exclusive::new(&s.lock);
            find(&s.live, |h| {
                let list = h.list.fetch_and(!UNSEEN, Relaxed);
                // After a whole check, a pending hive no read ever listed is not in the list
                // (an implicit hive, or a load whose value was not added): no later read can
                // retire it, so it does not keep queries reading the list (review 21a, M1:
                // the hint never dropped to 0 and every query re-read the list for good). A
                // load at its mount makes it loaded and listed; a new pending unload of it
                // counts again ([`Self::unload_pending`]).
                if h.kind == HiveKind::Regular
                    && h.state() == HiveState::UnloadPending
                    && (!whole || list & LISTED != 0)
                {
                    left += 1;
                }
                false
            });
        }
        // The deferred unloads marked since the check began, and the pending hives it left.
        self.pending_hint.fetch_sub(begun, Relaxed);
        self.pending_hint.fetch_add(left, Relaxed);
        retired
    }

    /// Retires one hive of `s` that [`Self::unload_check_end`] takes as unloaded (regular,
    /// unload-pending, no tracked key, listed (read or notified load) and unseen by this
    /// check), if there is one,
    /// with what [`Self::retire_locked`] gives (the hive to free after the lock, if nothing
    /// refers to it).
    fn retire_one_unseen(s: &Shard<L>, all: bool) -> Unseen {
        let _g = Exclusive::new(&s.lock);
        find(&s.live, |h| {
            h.kind == HiveKind::Regular
                && Self::checked_state(h.state(), all)
                && h.list.load(Relaxed) == LISTED | UNSEEN
                && h.open_keys.load(Relaxed) == 0
        })
        .map_or(Unseen::None, |h| Unseen::Retired(Self::retire_locked(s, h)))
    }

    /// Records an unload; returns false when `mount` was not a known hive.
    pub fn unloaded<P: Pool>(&self, pool: &P, names: &NameTable<L>, mount: &[u16]) -> bool {
        let shard = &self.shards[shard_of(mount)];
        let freed = {
            let _g = Exclusive::new(&shard.lock);
            self.seed.note_unload(mount, names.seed());
            let Some(h) = find(&shard.live, |h| eq_folded(h.mount(), mount)) else {
                return false;
            };
            Self::retire_locked(shard, h)
        };
        if let Some(h) = freed {
            Self::free(pool, names, h);
        }
        true
    }

    /// Pins the live hive whose mount point is exactly `mount`.
    pub fn find_exact(&self, mount: &[u16]) -> Option<NonNull<Hive>> {
        let shard = &self.shards[shard_of(mount)];
        let _g = Shared::new(&shard.lock);
        let h = find(&shard.live, |h| eq_folded(h.mount(), mount))?;
        hive_of(h).refs.fetch_add(1, Relaxed);
        Some(h)
    }

    /// Pins the live hive (loaded, implicit or with an unload pending: not unloaded) with `id`.
    pub fn pin_live_id(&self, id: u32) -> Option<NonNull<Hive>> {
        for s in &self.shards {
            let _g = Shared::new(&s.lock);
            if let Some(h) = find(&s.live, |h| h.id == id) {
                hive_of(h).refs.fetch_add(1, Relaxed);
                return Some(h);
            }
        }
        None
    }

    /// Calls `f` on every hive (live and retired) under its shard lock, shared.
    pub fn for_each(&self, mut f: impl FnMut(&Hive)) {
        for s in &self.shards {
            let _g = Shared::new(&s.lock);
            for list in [&s.live, &s.retired] {
                find(list, |h| {
                    f(h);
                    false
                });
            }
        }
    }

    /// Calls `f` on every hive (live and retired) of shard `shard` whose id is below `below`,
    /// newest first, under the shard lock (shared), until `f` returns false; returns the id
    /// it returned false on, `None` when it went through. Each shard's two lists are kept
    /// newest first (a new hive goes at the head of `live`, [`Self::create`]; a retired one
    /// in place by id), so this is a merge: a listing resumed at (shard, id) visits each
    /// hive at most once per page (a listing by ids looked the whole table up for each hive
    /// it wrote: found in review). But a resumed page starts from the lists' heads and steps
    /// over the hives at or above `below` before it writes one: a page costs the hives of the
    /// shard newer than where it resumes plus what it writes, so a listing paged through a
    /// shard of n hives k at a time visits about n²/2k (audit 21b F14: thousands of held
    /// application hives make that 10⁵–10⁶ visits under the shard lock, shared). No index by
    /// id lets a page seek to `below` yet.
    pub fn walk_from(
        &self,
        shard: usize,
        below: u64,
        mut f: impl FnMut(&Hive) -> bool,
    ) -> Option<u32> {
        let table = self.shards.get(shard)?;
        let _guard = Shared::new(&table.lock);
        let mut live = table.live.load(Relaxed);
        let mut retired = table.retired.load(Relaxed);
        loop {
            let on_live = NonNull::new(live).map(hive_of);
            let on_retired = NonNull::new(retired).map(hive_of);
            let next = match (on_live, on_retired) {
                (None, None) => return None,
                (Some(one), None) | (None, Some(one)) => one,
                (Some(l), Some(r)) => {
                    if l.id >= r.id {
                        l
                    } else {
                        r
                    }
                }
            };
            if on_live.is_some_and(|l| ptr::eq(l, next)) {
                live = next.next.load(Relaxed);
            } else {
                retired = next.next.load(Relaxed);
            }
            if u64::from(next.id) >= below {
                continue;
            }
            if !f(next) {
                return Some(next.id);
            }
        }
    }

    /// Shards of the table (a listing's outer loop, [`Self::walk_from`]).
    #[must_use]
    pub const fn shard_count() -> usize {
        SHARDS
    }

    /// [`Self::with_id`] in shard `shard` alone (a hive never changes shard): `None` also
    /// when `shard` is not the hive's.
    pub fn with_id_in<R>(&self, shard: u32, id: u32, f: impl FnOnce(&Hive) -> R) -> Option<R> {
        let s = self.shards.get(shard as usize)?;
        let _g = Shared::new(&s.lock);
        [&s.live, &s.retired]
            .into_iter()
            .find_map(|list| find(list, |h| h.id == id))
            .map(|h| f(hive_of(h)))
    }

    /// Calls `f` on the hive with `id` under its shard lock; returns `f`'s result.
    pub fn with_id<R>(&self, id: u32, f: impl FnOnce(&Hive) -> R) -> Option<R> {
        for s in &self.shards {
            let _g = Shared::new(&s.lock);
            for list in [&s.live, &s.retired] {
                if let Some(h) = find(list, |h| h.id == id) {
                    return Some(f(hive_of(h)));
                }
            }
        }
        None
    }

    /// Calls `f` with the head of a pinned hive's holdings list under its shard's holdings
    /// lock: exclusive to link or unlink a holding (the caller holds that holding's process
    /// lock), shared to read the list. `f` takes no lock (the holdings lock is a leaf).
    pub(crate) fn with_holdings<R>(
        &self,
        h: NonNull<Hive>,
        exclusive: bool,
        f: impl FnOnce(&AtomicPtr<()>) -> R,
    ) -> R {
        let hive = hive_of(h);
        let lock = &self.shards[hive.shard as usize].holdings_lock;
        let _g = if exclusive {
            Hold::Exclusive(Exclusive::new(lock))
        } else {
            Hold::Shared(Shared::new(lock))
        };
        f(&hive.holdings)
    }

    /// Calls `f` on a pinned hive under its shard lock (so its file name is stable).
    pub fn with_locked<R>(&self, h: NonNull<Hive>, f: impl FnOnce(&Hive) -> R) -> R {
        let hive = hive_of(h);
        let _g = Shared::new(&self.shards[hive.shard as usize].lock);
        f(hive)
    }

    /// Hives known now.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.count.load(Relaxed)))
            .sum()
    }

    /// Frees every hive (at teardown, after every holding is gone).
    pub fn teardown<P: Pool>(&mut self, pool: &P, names: &NameTable<L>) {
        for s in &mut self.shards {
            for list in [&s.live, &s.retired] {
                let mut cur = list.swap(ptr::null_mut(), Relaxed);
                while let Some(h) = NonNull::new(cur) {
                    cur = hive_of(h).next.load(Relaxed);
                    Self::free(pool, names, h);
                }
            }
            s.count.store(0, Relaxed);
        }
    }
}

/// How a load's mount point is made from a relative `KeyName` and the name of the load's
/// `Object` (`REG_LOAD_KEY_INFORMATION`, read in the post-notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMount {
    /// The object's name is the mount: `Object` is the loaded hive's own root key.
    ObjectName,
    /// The object's name, `\`, then `KeyName`: `Object` is the root directory the name is
    /// relative to.
    Joined,
}

/// What the callback saw of a load's pre-notification, for [`load_mount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadPre {
    /// The pre carried this same `Object`: it existed before the load, so it is the root
    /// directory, whatever its name.
    Carried,
    /// The pre was seen, without this object (none: Learn's reading, where the hive's root
    /// exists only after the load).
    Seen,
    /// The pre went by before the callback registered (a post alone): which reading the
    /// object follows is not known.
    Unseen,
}

/// Which [`LoadMount`] a relative load has; `None` when its post cannot tell.
///
/// `RegLoadKey(HKEY_USERS, "S-1-5-21-…", file)` is
/// `NtLoadKey` with the HKU handle as root directory and the relative SID
/// (`ReactOS` `RegLoadKeyW`); what the notification's `Object` then points at is not settled: the Learn
/// page says "the root key of the hive that is about to be loaded", filters in the field read
/// it as the root directory, and no Windows Research Kernel or `ReactOS` code sends the
/// notification (fidelity audit 16b, F5; the kernel emulator plays both, `hive::LoadObject`).
/// A pre that carried the object ([`LoadPre::Carried`]) makes it the root directory: joined.
/// Otherwise an object whose name already ends with `\KeyName` (case-insensitively) is the
/// hive's own root when the pre was seen without it: joining would name the mount
/// `…\S-1-5-21-…\S-1-5-21-…` and match no unload. A post alone ([`LoadPre::Unseen`]) whose
/// object ends with `\KeyName` is either reading: the hive's root, or a root directory whose
/// last component is `KeyName` (`\REGISTRY\USER` and `USER`), which taken as the root would
/// record the hive one level too high (review 18a) — `None`, and the caller counts the load
/// as unrecorded rather than guess.
#[must_use]
pub fn load_mount(object_name: &[u16], key_name: &[u16], pre: LoadPre) -> Option<LoadMount> {
    if pre == LoadPre::Carried || key_name.is_empty() || object_name.len() <= key_name.len() {
        return Some(LoadMount::Joined);
    }
    let (head, tail) = object_name.split_at(object_name.len() - key_name.len());
    if head.last() == Some(&u16::from(b'\\')) && crate::names::eq_fold(tail, key_name) {
        (pre == LoadPre::Seen).then_some(LoadMount::ObjectName)
    } else {
        Some(LoadMount::Joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn a_load_mount_is_joined_unless_the_object_is_the_hive_root() {
        use LoadPre::{Carried, Seen, Unseen};
        let sid = w("S-1-5-21-1-2-3-1001");
        let joined = Some(LoadMount::Joined);
        // The root directory (HKU), carried by the pre or not.
        for pre in [Carried, Seen, Unseen] {
            assert_eq!(load_mount(&w(r"\REGISTRY\USER"), &sid, pre), joined);
        }
        // The new hive's root, named the whole mount, in any case.
        let root = w(r"\REGISTRY\USER\s-1-5-21-1-2-3-1001");
        assert_eq!(load_mount(&root, &sid, Seen), Some(LoadMount::ObjectName));
        // Carried by the pre: it existed before the load, so it is a root directory.
        assert_eq!(load_mount(&root, &sid, Carried), joined);
        // A post alone cannot tell the hive's root from a root directory named like it
        // (review 18a: `\REGISTRY\USER` + `USER` was recorded as `\REGISTRY\USER`).
        assert_eq!(load_mount(&root, &sid, Unseen), None);
        assert_eq!(load_mount(&w(r"\REGISTRY\USER"), &w("USER"), Unseen), None);
        // A suffix that is not a whole component, an empty or longer name.
        assert_eq!(
            load_mount(&w(r"\REGISTRY\USER\XS-1-5-21-1-2-3-1001"), &sid, Seen),
            joined
        );
        assert_eq!(load_mount(&root, &[], Seen), joined);
        assert_eq!(load_mount(&sid, &sid, Seen), joined);
        // A relative name of several components.
        assert_eq!(
            load_mount(&w(r"\REGISTRY\MACHINE\A\B"), &w(r"A\B"), Seen),
            Some(LoadMount::ObjectName)
        );
    }

    fn naive_prefix(path: &[u16]) -> &[u16] {
        let mut seen = 0;
        for (i, &u) in path.iter().enumerate() {
            if u == BACKSLASH {
                seen += 1;
                if seen == 4 {
                    return &path[..i];
                }
            }
        }
        if seen < 3 {
            // The master hive's keys: the first component.
            if let Some(i) = path.iter().skip(1).position(|&u| u == BACKSLASH) {
                return &path[..=i];
            }
        }
        path
    }

    #[test]
    fn hive_ids_run_out_rather_than_wrap() {
        let next = AtomicU32::new(MAX_HIVE_ID - 1);
        assert_eq!(take_id(&next), Some(MAX_HIVE_ID - 1));
        assert_eq!(take_id(&next), Some(MAX_HIVE_ID));
        assert_eq!(
            take_id(&next),
            None,
            "no id 0 or 1 again while hive 1 may live"
        );
        assert_eq!(take_id(&next), None);
    }

    #[test]
    fn shard_prefix_agrees_with_a_unit_by_unit_scan() {
        let mut seed = 0x9E37_79B9_u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 71) as usize;
            let path: Vec<u16> = (0..len)
                .map(|k| match (seed >> (k % 29)) & 3 {
                    0 => BACKSLASH,
                    1 => 0x5C5C,
                    2 => 0x015C,
                    _ => u16::from(b'a') + u16::try_from(k % 26).unwrap_or(0),
                })
                .collect();
            assert_eq!(shard_prefix(&path), naive_prefix(&path), "{path:x?}");
        }
        let p: Vec<u16> = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001\Software\Bench"
            .encode_utf16()
            .collect();
        assert_eq!(shard_prefix(&p).len(), 34);
        for (path, prefix) in [
            (r"\REGISTRY\MACHINE", r"\REGISTRY"),
            (r"\REGISTRY\USER", r"\REGISTRY"),
            (r"\REGISTRY", r"\REGISTRY"),
            (r"\REGISTRY\MACHINE\SOFTWARE", r"\REGISTRY\MACHINE\SOFTWARE"),
        ] {
            let p: Vec<u16> = path.encode_utf16().collect();
            let want: Vec<u16> = prefix.encode_utf16().collect();
            assert_eq!(shard_prefix(&p), &want[..], "{path}");
        }
    }
}
