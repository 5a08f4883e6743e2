//! Later reads of the hive list: when the start-up one was not whole, and to find deferred
//! unloads that completed.
//!
//! The start-up seed (`registry_read::seed_hives`) may not read the whole hive list: a value
//! it could not take (no resources; Driver Verifier's low-resources simulation fails such
//! calls), a `Scratch` it could not allocate, a list that kept moving. Until a seed is
//! whole no load gets a load time and one name not got is reported
//! (`tracker::seed_window`), so one bad moment at start would leave every answer of the
//! boot without load times. This module reads the list again, before a query IOCTL is
//! answered, while no seed was whole:
//!
//! - **Where**: in the IOCTL path (`ioctl::query`), at `PASSIVE_LEVEL` in the caller's
//!   thread, outside any registry callback (never `Zw*` from a callback). A highest-level
//!   driver's `DispatchDeviceControl` runs at `PASSIVE_LEVEL` in the requester's thread (Learn,
//!   "Dispatch Routines and IRQLs"). Every query kind triggers it, so the CLI needs nothing new: the
//!   first query after the bad moment (stats, hives, holders, ...) brings the seed whole, and
//!   its answer already counts on it. One IOCTL reads the list at most once (the seed's own
//!   passes, up to four), and not twice within [`INTERVAL`]: a list that stays unreadable
//!   costs at most one seed a second, not one per page of a listing.
//! - **Completed deferred unloads**: once a seed is whole, while a regular hive is (or may be)
//!   unload-pending, the same read tells the tracker which hives are still listed
//!   ([`registry_read::check_unloads`]): a late unload, which Windows does not notify, deletes
//!   the hive's value once the hive is unlinked, so a pending hive whose value is gone is
//!   unloaded, and its record goes (`tracker::hives`). Until it goes, `hives` and `holders`
//!   report the hive unload-pending: loaded, its file in use.
//! - **Which key**: the handle opened before the callback was registered (review 18b: an
//!   open the callback saw but could not record would count a loss forever), kept open for
//!   the driver's life (until 2026-12-06: only while no seed was whole). It is a key of the `SYSTEM` hive, which stays loaded while Windows
//!   runs; the open key would keep it anyway (WRK `cmapi.c` `CmUnloadKey` fails while a key
//!   control block of the hive is referenced, `Kcb->RefCount != 1`, unless forced, which
//!   marks open handles invalid: a read through one then fails, taken as a value not read),
//!   so the handle stays good. It is a kernel handle (`OBJ_KERNEL_HANDLE`: Learn, "Object
//!   Handles", "can only be accessed from kernel mode"), kept in the kernel's handle table,
//!   not the System process's (WRK `obref.c` `ObReferenceObjectByHandle` looks a negative
//!   handle up in `ObpKernelHandleTable`), so the read works in the requester's process too.
//!   Closed at `DriverUnload` ([`close`]). With no tracker (it could not start) it is never
//!   opened.
//! - **Tracking off** (the registry callback did not register: another filter holds the
//!   altitude): no load or unload is ever notified, so every query refreshes the hive set
//!   from the list, at most once per [`INTERVAL`] ([`keep_untracked`],
//!   [`registry_read::refresh_untracked`]; review 21a, L4).
//! - **One at a time**: a second IOCTL that finds a seed running does not wait and does not
//!   read: it answers with what the tracker knows (the seed not whole, said by
//!   `names_unavailable`). The handle is taken out of its slot for the read and put back
//!   after, so nothing else can close it meanwhile.
//! - **Driver unload**: the I/O manager calls `DriverUnload` only once no handle to the
//!   device is open (no IOCTL in flight, hence no seed running), so [`close`] cannot race a
//!   read; it takes the handle out of its slot all the same.

use core::{
    ffi::c_void,
    ptr::null_mut,
    sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU64,
        Ordering::{AcqRel, Acquire, Relaxed, Release},
    },
};

use crate::{
    clock,
    registry_read::{self, HiveList},
    tracking::DriverTracker,
};

/// The least time between two later reads of the list: one second (interrupt time, 100 ns).
pub const INTERVAL: u64 = 10_000_000;

/// The hive list's handle (null when it could not be opened, while a read has it, and after
/// [`close`]).
static HIVE_LIST: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
/// Set while a later seed runs.
static BUSY: AtomicBool = AtomicBool::new(false);
/// Set when live tracking is off ([`keep_untracked`]): every read is a refresh.
static UNTRACKED: AtomicBool = AtomicBool::new(false);
/// When the last later seed began, then when it ended (interrupt time + 1; 0: never).
static LAST: AtomicU64 = AtomicU64::new(0);

/// Keeps the hive list's key open for later reads.
pub fn keep(list: HiveList) {
    let old = HIVE_LIST.swap(list.into_raw(), AcqRel);
    if !old.is_null() {
        // SAFETY: a handle `keep` stored, taken out of the slot by this swap.
        drop(unsafe { HiveList::from_raw(old) });
    }
}

/// Keeps the hive list's key open with live tracking off (the registry callback did not
/// register): every query reads the list again, at most once per [`INTERVAL`], to retire the
/// hives unloaded and record those loaded since ([`registry_read::refresh_untracked`]; review
/// 21a, L4). Until 2026-12-06 the handle was closed on that path and the hive set stayed as
/// `DriverEntry` read it.
pub fn keep_untracked(list: HiveList) {
    UNTRACKED.store(true, Release);
    keep(list);
}

/// Reads the hive list again when no seed was whole (a seed) or a hive may be unload-pending
/// (a check), no other read runs and the last began and ended at least [`INTERVAL`] ago.
/// Called at `PASSIVE_LEVEL`, outside any registry callback, before a query is answered.
pub fn maybe(tracker: &DriverTracker) {
    let untracked = UNTRACKED.load(Acquire);
    if HIVE_LIST.load(Acquire).is_null()
        || (!untracked && tracker.seed_complete() && !tracker.unload_check_wanted())
    {
        return;
    }
    // The Zw* reads are documented at PASSIVE_LEVEL; a kernel-mode requester could send the
    // IOCTL at APC_LEVEL, and then the list waits for another request (review 20a, L1).
    if u32::from(crate::ffi::current_irql()) != wdk_sys::PASSIVE_LEVEL {
        return;
    }
    let now = clock::interrupt_time();
    let last = LAST.load(Relaxed);
    if last != 0 && now.saturating_sub(last - 1) < INTERVAL {
        return;
    }
    if BUSY.swap(true, Acquire) {
        return; // another IOCTL reads it now
    }
    LAST.store(now.saturating_add(1), Relaxed);
    let handle = HIVE_LIST.swap(null_mut(), AcqRel);
    if !handle.is_null() {
        // SAFETY: a handle `keep` stored, taken out of the slot by this swap.
        let kept = unsafe { HiveList::from_raw(handle) };
        // A seed that is no longer needed (completed between the check and here) opens
        // nothing and reads nothing; once a seed is whole, the read is a check.
        // A seed that turns out whole leaves the pending hives to the next read.
        if tracker.seed_again() {
            registry_read::seed_hives(tracker, Some(&kept));
        } else if untracked {
            registry_read::refresh_untracked(tracker, &kept);
        } else {
            registry_read::check_unloads(tracker, &kept);
        }
        // Back in its slot for the next read.
        HIVE_LIST.store(kept.into_raw(), Release);
    }
    // The interval runs from the end of the read too: a read that took long (many values, a
    // slow disk) is not followed at once by the next.
    LAST.store(clock::interrupt_time().saturating_add(1), Relaxed);
    BUSY.store(false, Release);
}

/// Closes the kept handle, if any (`DriverUnload`).
pub fn close() {
    let handle = HIVE_LIST.swap(null_mut(), AcqRel);
    if !handle.is_null() {
        // SAFETY: a handle `keep` stored, taken out of the slot by this swap.
        drop(unsafe { HiveList::from_raw(handle) });
    }
}
