//! The tracker's lock: an executive spin lock (`KSPIN_LOCK`).
//!
//! Spin locks exist on every Windows and under Wine; push locks would need routines Windows 7
//! and Wine lack. Holding one raises to `DISPATCH_LEVEL`, where the tracker's work (pointer
//! updates, non-paged lookaside blocks) is allowed. Shared holds are exclusive holds: correct,
//! if less concurrent.
//!
//! Each lock keeps the IRQL its holder is to return to. The tracker releases nested locks in
//! reverse order everywhere but one place: it hands over from a table lock to a process lock,
//! releasing the outer one first (`RawLock::unlock_exclusive_keeping`). A naive release there
//! would drop to the outer acquisition's IRQL (`PASSIVE_LEVEL`) while the inner lock is still
//! held (the emulator's verifier catches exactly that), so the hand-over swaps the two saved
//! IRQLs: the outer lock is released to `DISPATCH_LEVEL` (what the inner acquisition saw),
//! and the inner lock will return to the IRQL the outer acquisition came from. With that, every
//! release restores the IRQL its hold is owed, with no per-processor bookkeeping on the
//! hot path (which cost two `KeGetCurrentProcessorNumberEx` calls per lock round trip).

use core::cell::UnsafeCell;

use tracker::lock::RawLock;
use wdk_sys::{
    KIRQL, KSPIN_LOCK,
    ntddk::{KeAcquireSpinLockRaiseToDpc, KeReleaseSpinLock},
};

/// A `KSPIN_LOCK`, and the IRQL its current holder returns to on release.
pub struct SpinLock {
    lock: UnsafeCell<KSPIN_LOCK>,
    old_irql: UnsafeCell<KIRQL>,
}

impl SpinLock {
    /// A released lock, for static storage (`KeInitializeSpinLock` zeroes the word).
    pub const fn unlocked() -> Self {
        Self {
            lock: UnsafeCell::new(0),
            old_irql: UnsafeCell::new(0),
        }
    }
}

// SAFETY: the lock word is only touched by the kernel's interlocked spin-lock routines;
// `old_irql` is written and read only by the current holder (the hand-over writes the inner
// lock's, which the same caller holds too).
unsafe impl Sync for SpinLock {}
// SAFETY: nothing in the lock is tied to a thread.
unsafe impl Send for SpinLock {}

// SAFETY: KeAcquireSpinLockRaiseToDpc / KeReleaseSpinLock give mutual exclusion (docs:
// `KeAcquireSpinLockRaiseToDpc`); shared holds are exclusive, which is allowed.
unsafe impl RawLock for SpinLock {
    fn new() -> Self {
        Self::unlocked()
    }

    #[inline]
    fn lock_exclusive(&self) {
        // SAFETY: the lock word is a valid, initialised KSPIN_LOCK that does not move while held.
        let old = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        // SAFETY: we hold the lock, so no one else touches `old_irql` now.
        unsafe { *self.old_irql.get() = old };
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // The value was stored by this hold's acquisition, or handed over by an outer lock.
        // SAFETY: the caller holds the lock, so only it touches `old_irql`.
        let irql = unsafe { *self.old_irql.get() };
        // SAFETY: the caller holds the lock at DISPATCH_LEVEL, acquired by `lock_exclusive`.
        unsafe { KeReleaseSpinLock(self.lock.get(), irql) };
    }

    #[inline]
    unsafe fn unlock_exclusive_keeping(&self, next: &Self) {
        // SAFETY: the caller holds `self`: its saved IRQL is the caller's to read.
        let outer = unsafe { *self.old_irql.get() };
        // SAFETY: the caller holds `next` too (taken after `self`, so this is DISPATCH_LEVEL).
        let inner = unsafe { *next.old_irql.get() };
        // SAFETY: as above; `next` now returns to where the outer acquisition came from.
        unsafe { *next.old_irql.get() = outer };
        // The caller keeps holding `next`, so the processor stays at `inner` (DISPATCH_LEVEL).
        // SAFETY: the caller holds `self` at DISPATCH_LEVEL, acquired by `lock_exclusive`.
        unsafe { KeReleaseSpinLock(self.lock.get(), inner) };
    }

    #[inline]
    fn lock_shared(&self) {
        self.lock_exclusive();
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: a shared hold is an exclusive hold here.
        unsafe { self.unlock_exclusive() };
    }
}
