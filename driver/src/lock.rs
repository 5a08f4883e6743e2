//! The tracker's lock: an executive spin lock (`KSPIN_LOCK`).
//!
//! Spin locks exist on every Windows and under Wine; push locks would need routines Windows 7
//! and Wine lack. Holding one raises to `DISPATCH_LEVEL`, where the tracker's work (pointer
//! updates, non-paged lookaside blocks) is allowed. Shared holds are exclusive holds: correct,
//! if less concurrent. The IRQL to restore is kept in the lock, which is sound because holds of
//! one lock never overlap and nested holds of different locks are released in reverse order
//! (the tracker's holds are scoped guards).

use core::cell::UnsafeCell;

use tracker::lock::RawLock;
use wdk_sys::{
    KIRQL, KSPIN_LOCK,
    ntddk::{KeAcquireSpinLockRaiseToDpc, KeReleaseSpinLock},
};

/// A `KSPIN_LOCK` and the IRQL its holder came from.
pub struct SpinLock {
    lock: UnsafeCell<KSPIN_LOCK>,
    old_irql: UnsafeCell<KIRQL>,
}

// SAFETY: the lock word is only touched by the kernel's interlocked spin-lock routines;
// `old_irql` is written and read only by the current holder.
unsafe impl Sync for SpinLock {}
// SAFETY: nothing in the lock is tied to a thread.
unsafe impl Send for SpinLock {}

// SAFETY: KeAcquireSpinLockRaiseToDpc / KeReleaseSpinLock give mutual exclusion (docs:
// KeAcquireSpinLockRaiseToDpc); shared holds are exclusive, which is allowed.
unsafe impl RawLock for SpinLock {
    fn new() -> Self {
        // KeInitializeSpinLock sets the lock word to zero (wdm.h, inline).
        Self {
            lock: UnsafeCell::new(0),
            old_irql: UnsafeCell::new(0),
        }
    }

    fn lock_exclusive(&self) {
        // SAFETY: the lock word is a valid, initialised KSPIN_LOCK that does not move while held.
        let old = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        // SAFETY: we hold the lock, so no one else touches `old_irql` now.
        unsafe { *self.old_irql.get() = old };
    }

    unsafe fn unlock_exclusive(&self) {
        // SAFETY: the caller holds the lock; the value was stored by its own acquisition.
        let old = unsafe { *self.old_irql.get() };
        // SAFETY: the caller holds the lock at DISPATCH_LEVEL, acquired by `lock_exclusive`.
        unsafe { KeReleaseSpinLock(self.lock.get(), old) };
    }

    fn lock_shared(&self) {
        self.lock_exclusive();
    }

    unsafe fn unlock_shared(&self) {
        // SAFETY: a shared hold is an exclusive hold here.
        unsafe { self.unlock_exclusive() };
    }
}
