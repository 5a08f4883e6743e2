//! The tracker's lock: an executive spin lock (`KSPIN_LOCK`).
//!
//! Spin locks exist on every Windows and under Wine; push locks would need routines Windows 7
//! and Wine lack. Holding one raises to `DISPATCH_LEVEL`, where the tracker's work (pointer
//! updates, non-paged lookaside blocks) is allowed. Shared holds are exclusive holds: correct,
//! if less concurrent.
//!
//! The tracker releases nested locks in any order (it hands over from a table lock to a
//! process lock, releasing the outer one first), so the IRQL to return to cannot be kept per
//! lock: releasing the outer lock first would drop to `PASSIVE_LEVEL` while the inner one is
//! still held (the emulator's verifier caught exactly that). It is kept per processor
//! instead: a holder runs at `DISPATCH_LEVEL`, so it cannot be preempted or migrate, and the
//! processor's nesting depth and the IRQL it came from are its own. Every release but the
//! last stays at `DISPATCH_LEVEL`; the last returns to the IRQL of the first acquisition.

use core::{
    cell::UnsafeCell,
    ptr::null_mut,
    sync::atomic::{AtomicU8, AtomicU32, Ordering},
};

use tracker::lock::RawLock;
use wdk_sys::{
    DISPATCH_LEVEL, KIRQL, KSPIN_LOCK,
    ntddk::{KeAcquireSpinLockRaiseToDpc, KeGetCurrentProcessorNumberEx, KeReleaseSpinLock},
};

/// Processors with per-processor lock state (Windows supports at most 2,048 logical ones).
const MAX_PROCESSORS: usize = 2048;

/// One processor's tracker-lock nesting: touched only by that processor, at `DISPATCH_LEVEL`.
struct PerProcessor {
    depth: AtomicU32,
    base_irql: AtomicU8,
}

static PER_PROCESSOR: [PerProcessor; MAX_PROCESSORS] = [const {
    PerProcessor {
        depth: AtomicU32::new(0),
        base_irql: AtomicU8::new(0),
    }
}; MAX_PROCESSORS];

/// `DISPATCH_LEVEL` as a `KIRQL` (the constant is 2).
#[allow(clippy::cast_possible_truncation, reason = "the constant is 2")]
const DISPATCH: KIRQL = DISPATCH_LEVEL as KIRQL;

fn this_processor() -> Option<&'static PerProcessor> {
    // SAFETY: callable at any IRQL; a null PROCESSOR_NUMBER pointer is allowed.
    let index = unsafe { KeGetCurrentProcessorNumberEx(null_mut()) };
    PER_PROCESSOR.get(index as usize)
}

/// A `KSPIN_LOCK`, and the IRQL its holder came from for the (theoretical) processors beyond
/// [`MAX_PROCESSORS`], where only LIFO release is supported.
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
// `old_irql` is written and read only by the current holder.
unsafe impl Sync for SpinLock {}
// SAFETY: nothing in the lock is tied to a thread.
unsafe impl Send for SpinLock {}

// SAFETY: KeAcquireSpinLockRaiseToDpc / KeReleaseSpinLock give mutual exclusion (docs:
// `KeAcquireSpinLockRaiseToDpc`); shared holds are exclusive, which is allowed.
unsafe impl RawLock for SpinLock {
    fn new() -> Self {
        Self::unlocked()
    }

    fn lock_exclusive(&self) {
        // SAFETY: the lock word is a valid, initialised KSPIN_LOCK that does not move while held.
        let old = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        if let Some(p) = this_processor() {
            let depth = p.depth.load(Ordering::Relaxed);
            if depth == 0 {
                p.base_irql.store(old, Ordering::Relaxed);
            }
            p.depth.store(depth + 1, Ordering::Relaxed);
        } else {
            // SAFETY: we hold the lock, so no one else touches `old_irql` now.
            unsafe { *self.old_irql.get() = old };
        }
    }

    unsafe fn unlock_exclusive(&self) {
        let new_irql = this_processor().map_or_else(
            // SAFETY: the caller holds the lock; the value was stored by its own acquisition.
            || unsafe { *self.old_irql.get() },
            |p| {
                let depth = p.depth.load(Ordering::Relaxed).saturating_sub(1);
                p.depth.store(depth, Ordering::Relaxed);
                if depth == 0 {
                    p.base_irql.load(Ordering::Relaxed)
                } else {
                    DISPATCH
                }
            },
        );
        // SAFETY: the caller holds the lock at DISPATCH_LEVEL, acquired by `lock_exclusive`.
        unsafe { KeReleaseSpinLock(self.lock.get(), new_irql) };
    }

    fn lock_shared(&self) {
        self.lock_exclusive();
    }

    unsafe fn unlock_shared(&self) {
        // SAFETY: a shared hold is an exclusive hold here.
        unsafe { self.unlock_exclusive() };
    }
}
