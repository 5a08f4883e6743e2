//! Non-paged lookaside lists: the fixed-size blocks the tracker runs on.
//!
//! One list per [`BlockClass`], in static (non-paged, immovable) storage. The `Ex` flavour
//! (`ExInitializeLookasideListEx`, Windows Vista+) is used where the system exports it; Wine 8
//! does not, so there the older `ExInitializeNPagedLookasideList` flavour is used.
//! `ExAllocateFromLookasideListEx` / `ExFreeToLookasideListEx` and their `NPaged` twins are
//! `FORCEINLINE` in wdm.h, so bindgen emits nothing for them: they are ported here from the
//! header's definitions (pop from the list's SLIST, else call its allocate routine; push back
//! unless the list is at its depth, else call its free routine). The header updates the
//! statistics fields with plain increments; here they are atomic, which is what the plain
//! increments are on x64 hardware and keeps the Rust side free of data races.
//!
//! Blocks that miss the list come from [`crate::pool`] (tagged, fallible), through the
//! allocate and free routines registered with each list. Facts: docs "Using Lookaside Lists",
//! `ExInitializeLookasideListEx` (the structure must be non-paged, must not move, and is
//! deleted with `ExDeleteLookasideListEx` before the driver unloads; bugcheck 0xCE otherwise).

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    mem::MaybeUninit,
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering},
};

use tracker::pool::{BlockClass, Pool};
use wdk_sys::{
    _POOL_TYPE::NonPagedPoolNx,
    GENERAL_LOOKASIDE_POOL, LOOKASIDE_LIST_EX, NPAGED_LOOKASIDE_LIST, NTSTATUS, PLOOKASIDE_LIST_EX,
    POOL_TYPE, SLIST_HEADER, STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS,
    ntddk::{
        ExDeleteNPagedLookasideList, ExInitializeNPagedLookasideList, ExQueryDepthSList,
        ExpInterlockedPopEntrySList, ExpInterlockedPushEntrySList,
    },
};

use crate::{pool, routines};

/// Number of lists: one per block class.
const LISTS: usize = BlockClass::ALL.len();

/// Storage for one list of either flavour; both begin with the same `GENERAL_LOOKASIDE`
/// layout (wdm.h), which is all the ported inline routines touch, apart from the routine
/// signatures that differ per flavour.
#[repr(C)]
union RawList {
    ex: LOOKASIDE_LIST_EX,
    npaged: NPAGED_LOOKASIDE_LIST,
}

/// Cache-line aligned, as `LOOKASIDE_ALIGN` asks.
#[repr(C, align(64))]
struct Slot(UnsafeCell<MaybeUninit<RawList>>);

/// The static storage of all lists.
struct Storage {
    slots: [Slot; LISTS],
    in_use: AtomicBool,
}

// SAFETY: the lists are shared between threads only through the kernel's interlocked SLIST
// routines and atomic statistics updates; initialisation and deletion happen while no other
// thread can use them (`LookasidePool::create` / `destroy`, guarded by `in_use`).
unsafe impl Sync for Storage {}

static STORAGE: Storage = Storage {
    slots: [const { Slot(UnsafeCell::new(MaybeUninit::uninit())) }; LISTS],
    in_use: AtomicBool::new(false),
};

/// Which API family initialised the lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `ExInitializeLookasideListEx`.
    Ex,
    /// `ExInitializeNPagedLookasideList` (Wine, or any system without the Ex routines).
    NPaged,
}

/// The tracker's [`Pool`]: seven non-paged lookaside lists. At most one exists at a time.
#[derive(Debug)]
pub struct LookasidePool {
    flavour: Flavour,
}

fn general(class: BlockClass) -> *mut GENERAL_LOOKASIDE_POOL {
    // Both union members start with the GENERAL_LOOKASIDE(_POOL) `L`.
    STORAGE.slots[class.index()].0.get().cast()
}

fn list_ex(class: BlockClass) -> PLOOKASIDE_LIST_EX {
    STORAGE.slots[class.index()].0.get().cast()
}

fn list_npaged(class: BlockClass) -> *mut NPAGED_LOOKASIDE_LIST {
    STORAGE.slots[class.index()].0.get().cast()
}

/// Allocate routine of the Ex lists: tagged pool through [`pool`].
unsafe extern "C" fn allocate_ex(
    _pool_type: POOL_TYPE,
    size: u64,
    _tag: u32,
    _lookaside: PLOOKASIDE_LIST_EX,
) -> *mut c_void {
    usize::try_from(size)
        .ok()
        .and_then(pool::alloc_zeroed)
        .map_or(core::ptr::null_mut(), |p| p.as_ptr().cast())
}

/// Free routine of the Ex lists.
unsafe extern "C" fn free_ex(buffer: *mut c_void, _lookaside: PLOOKASIDE_LIST_EX) {
    if let Some(block) = NonNull::new(buffer.cast()) {
        // SAFETY: the list hands back only blocks its allocate routine got from the pool.
        unsafe { pool::free(block) };
    }
}

/// Allocate routine of the `NPaged` lists.
unsafe extern "C" fn allocate_npaged(_pool_type: POOL_TYPE, size: u64, _tag: u32) -> *mut c_void {
    // SAFETY: same contract as the Ex routine, without the list pointer.
    unsafe { allocate_ex(NonPagedPoolNx, size, 0, core::ptr::null_mut()) }
}

/// Free routine of the `NPaged` lists.
unsafe extern "C" fn free_npaged(buffer: *mut c_void) {
    // SAFETY: same contract as the Ex routine.
    unsafe { free_ex(buffer, core::ptr::null_mut()) };
}

/// Size of a class as the `ULONG`/`SIZE_T` the APIs take (at most 4 KiB).
fn class_size(class: BlockClass) -> u32 {
    u32::try_from(class.size()).unwrap_or(u32::MAX)
}

impl LookasidePool {
    /// Initialises the lists (Ex flavour when available). Call at `PASSIVE_LEVEL`.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES` when a pool already exists; the status of a failing
    /// initialisation (every list initialised before it is deleted again).
    pub fn create() -> Result<Self, NTSTATUS> {
        if STORAGE.in_use.swap(true, Ordering::AcqRel) {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let ex = routines::ex_initialize_lookaside_list_ex()
            .zip(routines::ex_delete_lookaside_list_ex());
        let flavour = if ex.is_some() {
            Flavour::Ex
        } else {
            Flavour::NPaged
        };
        for (i, class) in BlockClass::ALL.into_iter().enumerate() {
            let status = if let Some((init, _)) = ex {
                // Flags 0 make a failed allocation return NULL.
                // SAFETY: the storage is static, non-paged, immovable, aligned and unused.
                unsafe {
                    init(
                        list_ex(class),
                        Some(allocate_ex),
                        Some(free_ex),
                        NonPagedPoolNx,
                        0,
                        class.size(),
                        pool::POOL_TAG,
                        0,
                    )
                }
            } else {
                // SAFETY: as above; ExInitializeNPagedLookasideList cannot fail.
                unsafe {
                    ExInitializeNPagedLookasideList(
                        list_npaged(class),
                        Some(allocate_npaged),
                        Some(free_npaged),
                        0,
                        u64::from(class_size(class)),
                        pool::POOL_TAG,
                        0,
                    );
                }
                STATUS_SUCCESS
            };
            if status != STATUS_SUCCESS {
                // No `Self` exists yet, so no Drop runs: delete what was made here.
                delete_lists(flavour, i);
                STORAGE.in_use.store(false, Ordering::Release);
                return Err(status);
            }
        }
        Ok(Self { flavour })
    }
}

impl Drop for LookasidePool {
    /// Deletes every list, returning their cached blocks to pool. Every block handed out must
    /// have been freed before (the tracker frees all of its blocks when it is dropped, before
    /// its pool); runs at `PASSIVE_LEVEL` from `DriverUnload` or a failed `DriverEntry`.
    fn drop(&mut self) {
        delete_lists(self.flavour, LISTS);
        STORAGE.in_use.store(false, Ordering::Release);
    }
}

/// Deletes the first `count` lists of `flavour`.
fn delete_lists(flavour: Flavour, count: usize) {
    for class in BlockClass::ALL.into_iter().take(count) {
        match (flavour, routines::ex_delete_lookaside_list_ex()) {
            // Deleting frees every cached block through `free_ex`.
            // SAFETY: the list was initialised by `create`; no block is out (caller's contract).
            (Flavour::Ex, Some(delete)) => unsafe { delete(list_ex(class)) },
            // SAFETY: as above, for the NPaged flavour.
            _ => unsafe { ExDeleteNPagedLookasideList(list_npaged(class)) },
        }
    }
}

/// Addresses of the fields the ported inline routines touch (computing them reads nothing).
struct Fields {
    head: *mut SLIST_HEADER,
    depth: *mut u16,
    total_allocates: *mut u32,
    allocate_misses: *mut u32,
    total_frees: *mut u32,
    free_misses: *mut u32,
}

impl Fields {
    fn of(class: BlockClass) -> Self {
        let l = general(class);
        // Only field addresses are computed below: no memory is read or referenced.
        // SAFETY: `l` points into the static storage (likewise for each field below).
        let head = unsafe { &raw mut (*l).__bindgen_anon_1.ListHead };
        // SAFETY: as above.
        let depth = unsafe { &raw mut (*l).Depth };
        // SAFETY: as above.
        let total_allocates = unsafe { &raw mut (*l).TotalAllocates };
        // SAFETY: as above.
        let allocate_misses = unsafe { &raw mut (*l).__bindgen_anon_2.AllocateMisses };
        // SAFETY: as above.
        let total_frees = unsafe { &raw mut (*l).TotalFrees };
        // SAFETY: as above.
        let free_misses = unsafe { &raw mut (*l).__bindgen_anon_3.FreeMisses };
        Self {
            head,
            depth,
            total_allocates,
            allocate_misses,
            total_frees,
            free_misses,
        }
    }
}

/// Treats a `ULONG` statistics field of a live list as an atomic counter.
///
/// # Safety
/// `p` points into an initialised list in static storage.
const unsafe fn counter(p: *mut u32) -> &'static AtomicU32 {
    // Every Rust access to the field is atomic.
    // SAFETY: the field is 4-byte aligned and lives as long as the static storage.
    unsafe { AtomicU32::from_ptr(p) }
}

// SAFETY: `alloc` returns blocks of exactly `class.size()` bytes from a list of that size
// (pool blocks are 16-byte aligned on x64), owned by the caller until `free`; the SLIST
// routines and atomic counters make both callable from any thread at IRQL <= DISPATCH_LEVEL.
unsafe impl Pool for LookasidePool {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        let f = Fields::of(class);
        // SAFETY: a statistics field of an initialised list.
        unsafe { counter(f.total_allocates) }.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the list head of an initialised list, used through the interlocked routine.
        let entry = unsafe { ExpInterlockedPopEntrySList(f.head) };
        if let Some(entry) = NonNull::new(entry.cast::<u8>()) {
            return Some(entry);
        }
        // SAFETY: as above.
        unsafe { counter(f.allocate_misses) }.fetch_add(1, Ordering::Relaxed);
        let size = class.size() as u64;
        let block = match self.flavour {
            // SAFETY: the Ex list's allocate routine is `allocate_ex`, set by `create`.
            Flavour::Ex => unsafe { allocate_ex(NonPagedPoolNx, size, 0, list_ex(class)) },
            // SAFETY: the NPaged list's allocate routine is `allocate_npaged`, set by `create`.
            Flavour::NPaged => unsafe { allocate_npaged(NonPagedPoolNx, size, 0) },
        };
        NonNull::new(block.cast())
    }

    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        let f = Fields::of(class);
        // SAFETY: a statistics field of an initialised list.
        unsafe { counter(f.total_frees) }.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the list head of an initialised list.
        let depth = unsafe { ExQueryDepthSList(f.head) };
        // SAFETY: `Depth` is a USHORT the balance manager adjusts; read it atomically.
        let max = unsafe { AtomicU16::from_ptr(f.depth) }.load(Ordering::Relaxed);
        if depth >= max {
            // SAFETY: as above.
            unsafe { counter(f.free_misses) }.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller gives back a block of this class it no longer uses.
            unsafe { free_ex(block.as_ptr().cast(), list_ex(class)) };
        } else {
            // An SLIST entry must be at least 16 bytes and 16-byte aligned; this block is both.
            // SAFETY: the block is a valid entry that no one uses any more.
            unsafe { ExpInterlockedPushEntrySList(f.head, block.as_ptr().cast()) };
        }
    }

    /// Names: a pool block of exactly `bytes` (the pool rounds to 16 bytes), so a name costs
    /// what it is, not the next class.
    fn alloc_bytes(&self, bytes: usize) -> Option<NonNull<u8>> {
        pool::alloc_zeroed(bytes)
    }

    unsafe fn free_bytes(&self, _bytes: usize, block: NonNull<u8>) {
        // SAFETY: the caller gives back a block from `alloc_bytes`, i.e. `pool::alloc_zeroed`.
        unsafe { pool::free(block) };
    }
}
