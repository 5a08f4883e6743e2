//! The tracker's lock: an executive reader/writer spin lock (`EX_SPIN_LOCK`), or a
//! `KSPIN_LOCK` where the system lacks the `EX_SPIN_LOCK` routines.
//!
//! Shared holds (queries, and the open path's hive-shard, key-cache and process-table
//! lookups) overlap one another, so an administrator's query does not stall registry opens
//! and lookups on one shard do not serialise across processors. The routines (`ExAcquireSpinLockShared`,
//! `ExReleaseSpinLockShared`, `ExAcquireSpinLockExclusive`, `ExReleaseSpinLockExclusive`) exist
//! from Windows Vista SP1 (docs, Requirements) but not in Wine 8's ntoskrnl.exe, so they are
//! resolved at run time (`routines.rs`, all four or none) and every lock is a `KSPIN_LOCK`
//! without them: correct, shared holds then being exclusive. Either way a hold raises to
//! `DISPATCH_LEVEL`, where the tracker's work (pointer updates, non-paged lookaside blocks)
//! is allowed.
//!
//! Rules this depends on (docs: the four routines' pages and "Reader/Writer Spin Locks"):
//! the lock is a 32-bit `EX_SPIN_LOCK` initialised to zero in non-paged memory; acquiring one
//! the caller already holds, in either mode, deadlocks (there is no shared-to-exclusive
//! upgrade but a *try*, `ExTryConvertSharedSpinLockExclusive`, unused here: the tracker
//! retakes a lock exclusively only after dropping its shared hold); each release takes the
//! IRQL its own acquisition returned, at `DISPATCH_LEVEL`; and the release must match the
//! mode.
//!
//! The IRQL to return to: a shared hold hands it from `lock_shared` to `unlock_shared` as the
//! guard's token (several readers hold the lock at once, so it cannot live in the lock). An
//! exclusive hold keeps it in the lock. The tracker releases nested locks in reverse order
//! everywhere (a process is locked inside its table shard's lock and released first), so
//! each release restores exactly the IRQL its own acquisition returned, as the release
//! routines require ("Set this parameter to the KIRQL value that was returned by the
//! `ExAcquireSpinLockShared` call that acquired the spin lock"; `KeReleaseSpinLock`: "the IRQL
//! value saved from the preceding call"). It once released the table lock first, handing
//! the IRQLs over; the emulator's verifier now checks that rule and failed 44 scenarios on
//! that code.

use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicPtr, Ordering},
};

use tracker::lock::RawLock;
use wdk_sys::{
    KIRQL, KSPIN_LOCK,
    ntddk::{KeAcquireSpinLockRaiseToDpc, KeReleaseSpinLock},
};

use crate::routines::{self, ExAcquireSpinLock, ExReleaseSpinLock};

/// The routine each lock call goes through, chosen once by [`choose_routines`] in
/// `DriverEntry`: the four `EX_SPIN_LOCK` routines, or the `KSPIN_LOCK` adapters below
/// (issue 14: a pointer that is never null is called without a test and a branch, 3
/// instructions fewer per lock call, 8 calls a held key's cycle).
static ACQUIRE_SHARED: AtomicPtr<()> = AtomicPtr::new(ke_acquire as *mut ());
static RELEASE_SHARED: AtomicPtr<()> = AtomicPtr::new(ke_release as *mut ());
static ACQUIRE_EXCLUSIVE: AtomicPtr<()> = AtomicPtr::new(ke_acquire as *mut ());
static RELEASE_EXCLUSIVE: AtomicPtr<()> = AtomicPtr::new(ke_release as *mut ());

/// Chooses the lock routines: the `EX_SPIN_LOCK` ones when the system has all four
/// (`routines::resolve_all` keeps all or none), the `KSPIN_LOCK` adapters otherwise. Call
/// once from `DriverEntry`, after `routines::resolve_all` and before any lock is taken (a
/// hold must be released with the kind it was taken with).
pub fn choose_routines() {
    if let (Some(acquire_shared), Some(release_shared), Some(acquire), Some(release)) = (
        routines::ex_acquire_spin_lock_shared(),
        routines::ex_release_spin_lock_shared(),
        routines::ex_acquire_spin_lock_exclusive(),
        routines::ex_release_spin_lock_exclusive(),
    ) {
        ACQUIRE_SHARED.store(acquire_shared as *mut (), Ordering::Release);
        RELEASE_SHARED.store(release_shared as *mut (), Ordering::Release);
        ACQUIRE_EXCLUSIVE.store(acquire as *mut (), Ordering::Release);
        RELEASE_EXCLUSIVE.store(release as *mut (), Ordering::Release);
    }
}

/// An acquisition routine from its slot.
#[inline]
fn acquire_routine(slot: &AtomicPtr<()>) -> ExAcquireSpinLock {
    let routine = slot.load(Ordering::Acquire);
    // The slots hold only `ke_acquire` or an `ExAcquireSpinLock*` export resolved for that
    // name, both of this prototype, and never null.
    // SAFETY: a non-null pointer to a function of type `ExAcquireSpinLock`.
    unsafe { core::mem::transmute::<*mut (), ExAcquireSpinLock>(routine) }
}

/// A release routine from its slot.
#[inline]
fn release_routine(slot: &AtomicPtr<()>) -> ExReleaseSpinLock {
    let routine = slot.load(Ordering::Acquire);
    // The slots hold only `ke_release` or an `ExReleaseSpinLock*` export resolved for that
    // name, both of this prototype, and never null.
    // SAFETY: a non-null pointer to a function of type `ExReleaseSpinLock`.
    unsafe { core::mem::transmute::<*mut (), ExReleaseSpinLock>(routine) }
}

/// `KeAcquireSpinLockRaiseToDpc` on the whole `KSPIN_LOCK` word whose low half `lock` is
/// (without the `EX_SPIN_LOCK` routines, shared holds are exclusive).
///
/// # Safety
/// `lock` is [`SpinLock::ex`] of a lock that does not move while held.
#[allow(
    clippy::cast_ptr_alignment,
    reason = "`lock` is the start of an 8-aligned KSPIN_LOCK word (`SpinLock::ex`)"
)]
unsafe extern "system" fn ke_acquire(lock: *mut i32) -> KIRQL {
    // SAFETY: the 8-aligned word `lock` points at is a valid, initialised KSPIN_LOCK.
    unsafe { KeAcquireSpinLockRaiseToDpc(lock.cast::<KSPIN_LOCK>()) }
}

/// `KeReleaseSpinLock` of a hold taken by [`ke_acquire`], to `irql`.
///
/// # Safety
/// The caller holds the lock (taken by [`ke_acquire`]); `irql` is what that returned.
#[allow(
    clippy::cast_ptr_alignment,
    reason = "`lock` is the start of an 8-aligned KSPIN_LOCK word (`SpinLock::ex`)"
)]
unsafe extern "system" fn ke_release(lock: *mut i32, irql: KIRQL) {
    // SAFETY: the caller holds this KSPIN_LOCK, and `irql` is its acquisition's.
    unsafe { KeReleaseSpinLock(lock.cast::<KSPIN_LOCK>(), irql) }
}

/// A lock word, and the IRQL its exclusive holder returns to on release.
pub struct SpinLock {
    /// A `KSPIN_LOCK` (`ULONG_PTR`), or, when the system has the `EX_SPIN_LOCK` routines, an
    /// `EX_SPIN_LOCK` in its low four bytes (x64 is little-endian; the `LONG` is 4-aligned
    /// inside the 8-aligned word). Zero is released for both.
    word: UnsafeCell<KSPIN_LOCK>,
    old_irql: UnsafeCell<KIRQL>,
}

impl SpinLock {
    /// A released lock, for static storage (`KeInitializeSpinLock` zeroes the word; an
    /// `EX_SPIN_LOCK` is initialised to zero).
    pub const fn unlocked() -> Self {
        Self {
            word: UnsafeCell::new(0),
            old_irql: UnsafeCell::new(0),
        }
    }

    /// The word as an `EX_SPIN_LOCK` (`volatile LONG`).
    const fn ex(&self) -> *mut i32 {
        self.word.get().cast::<i32>()
    }

    /// Takes the lock exclusively; returns the IRQL to restore.
    #[inline]
    fn acquire_exclusive(&self) -> KIRQL {
        let acquire = acquire_routine(&ACQUIRE_EXCLUSIVE);
        // The word is used only through the routines chosen once (all four EX ones or none).
        // SAFETY: a zero-initialised lock word in non-paged memory that does not move.
        unsafe { acquire(self.ex()) }
    }

    /// Releases an exclusive hold to `irql`.
    ///
    /// # Safety
    /// The caller holds the lock exclusively, at `DISPATCH_LEVEL`.
    #[inline]
    unsafe fn release_exclusive(&self, irql: KIRQL) {
        let release = release_routine(&RELEASE_EXCLUSIVE);
        // Taken by `acquire_exclusive` through the matching routine (chosen once).
        // SAFETY: the caller holds the lock exclusively, at DISPATCH_LEVEL.
        unsafe { release(self.ex(), irql) };
    }
}

// SAFETY: the lock word is only touched by the kernel's interlocked spin-lock routines;
// `old_irql` is written and read only by the current exclusive holder.
unsafe impl Sync for SpinLock {}
// SAFETY: nothing in the lock is tied to a thread.
unsafe impl Send for SpinLock {}

// SAFETY: ExAcquireSpinLockExclusive excludes every other holder and ExAcquireSpinLockShared
// excludes exclusive holders (docs: "Reader/Writer Spin Locks"); without them,
// KeAcquireSpinLockRaiseToDpc / KeReleaseSpinLock give mutual exclusion and shared holds are
// exclusive, which is allowed. Acquisitions and releases are full barriers.
unsafe impl RawLock for SpinLock {
    /// The IRQL the shared hold's acquisition returned (docs, `ExReleaseSpinLockShared`:
    /// "Set this parameter to the KIRQL value that was returned by the
    /// `ExAcquireSpinLockShared` call").
    type SharedToken = KIRQL;

    fn new() -> Self {
        Self::unlocked()
    }

    #[inline]
    fn lock_exclusive(&self) {
        let old = self.acquire_exclusive();
        // SAFETY: we hold the lock exclusively, so no one else touches `old_irql` now.
        unsafe { *self.old_irql.get() = old };
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // The value was stored by this hold's acquisition.
        // SAFETY: the caller holds the lock exclusively, so only it touches `old_irql`.
        let irql = unsafe { *self.old_irql.get() };
        // SAFETY: the caller holds the lock exclusively at DISPATCH_LEVEL.
        unsafe { self.release_exclusive(irql) };
    }

    #[inline]
    fn lock_shared(&self) -> KIRQL {
        let acquire = acquire_routine(&ACQUIRE_SHARED);
        // The caller does not hold it already: the tracker never nests a lock in itself
        // (that deadlocks, docs "Recursive acquisition"). Without the EX routines this is
        // an exclusive `KSPIN_LOCK` hold.
        // SAFETY: as in `acquire_exclusive`: a zero-initialised, unmoving lock word.
        unsafe { acquire(self.ex()) }
    }

    #[inline]
    unsafe fn unlock_shared(&self, irql: KIRQL) {
        let release = release_routine(&RELEASE_SHARED);
        // `irql` is what the matching shared acquisition returned.
        // SAFETY: the caller holds the lock shared (taken by `lock_shared`) at DISPATCH_LEVEL.
        unsafe { release(self.ex(), irql) };
    }
}
