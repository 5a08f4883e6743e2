//! The lock the tracker is generic over, RAII guards for it, and a spin implementation.
//!
//! The driver implements [`RawLock`] with an executive reader/writer spin lock
//! (`EX_SPIN_LOCK`: shared holds overlap), falling back to a `KSPIN_LOCK` (shared =
//! exclusive) where the system lacks it. A shared hold may hand a token from
//! [`RawLock::lock_shared`] to [`RawLock::unlock_shared`] (the driver's: the IRQL to return
//! to, which cannot live in a lock several readers hold). Host tests use a parking lock;
//! [`SpinLock`] is a portable reader-writer spin lock, model-checked with loom (`cargo xtask
//! loom`, or `RUSTFLAGS="--cfg loom" cargo test -p hivetrack-tracker --release --lib lock`).

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU32, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, Ordering};

/// A reader-writer lock without data.
///
/// # Safety
/// An implementation must provide mutual exclusion: while one holder is inside
/// `lock_exclusive`/`unlock_exclusive`, no other holder (shared or exclusive) is; acquire
/// must synchronise-with (happens-after) the previous release. Shared holders may overlap
/// one another. An implementation may treat shared as exclusive.
pub unsafe trait RawLock: Sync + Send {
    /// A new, unlocked lock. The tracker never moves a lock while it is held.
    fn new() -> Self;
    /// Takes the lock exclusively.
    fn lock_exclusive(&self);
    /// Releases an exclusive hold.
    ///
    /// # Safety
    /// The caller holds the lock exclusively.
    unsafe fn unlock_exclusive(&self);
    /// What a shared hold carries from its acquisition to its release (`()` where nothing
    /// does; the driver's: the IRQL to restore).
    type SharedToken: Copy;
    /// Takes the lock shared; the token goes to the matching [`Self::unlock_shared`].
    fn lock_shared(&self) -> Self::SharedToken;
    /// Releases a shared hold.
    ///
    /// # Safety
    /// The caller holds the lock shared, and `token` is what that hold's `lock_shared`
    /// returned.
    unsafe fn unlock_shared(&self, token: Self::SharedToken);
}

/// An exclusive hold, released on drop.
pub(crate) struct Exclusive<'a, L: RawLock>(&'a L);

impl<'a, L: RawLock> Exclusive<'a, L> {
    pub(crate) fn new(lock: &'a L) -> Self {
        lock.lock_exclusive();
        Self(lock)
    }
}

impl<L: RawLock> Drop for Exclusive<'_, L> {
    fn drop(&mut self) {
        // SAFETY: `new` took the lock exclusively and this guard is its only release.
        unsafe { self.0.unlock_exclusive() }
    }
}

/// A hold of either mode, released on drop.
pub(crate) enum Hold<'a, L: RawLock> {
    /// Shared.
    Shared(#[allow(dead_code, reason = "held for its drop")] Shared<'a, L>),
    /// Exclusive.
    Exclusive(#[allow(dead_code, reason = "held for its drop")] Exclusive<'a, L>),
}

/// A shared hold, released on drop.
pub struct Shared<'a, L: RawLock> {
    lock: &'a L,
    token: L::SharedToken,
}

impl<'a, L: RawLock> Shared<'a, L> {
    /// Takes `lock` shared.
    pub fn new(lock: &'a L) -> Self {
        let token = lock.lock_shared();
        Self { lock, token }
    }
}

impl<L: RawLock> Drop for Shared<'_, L> {
    fn drop(&mut self) {
        // SAFETY: `new` took the lock shared, this guard is its only release, and `token` is
        // what that acquisition returned.
        unsafe { self.lock.unlock_shared(self.token) }
    }
}

/// A reader-writer spin lock.
///
/// Bit 31 is the writer, bits 0..31 count readers. Writers wait for readers to drain; new
/// readers wait while a writer holds the lock. Fine at
/// `DISPATCH_LEVEL` and in tests; the driver uses the kernel's own reader/writer spin lock
/// (`EX_SPIN_LOCK`), which Driver Verifier and debuggers know.
#[derive(Debug)]
pub struct SpinLock {
    state: AtomicU32,
}

const WRITER: u32 = 1 << 31;

impl SpinLock {
    fn relax() {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        core::hint::spin_loop();
    }
}

// SAFETY: exclusive holders set WRITER with an Acquire CAS from 0 (no reader, no writer) and
// clear it with Release; readers increment with an Acquire CAS only while WRITER is clear
// and decrement with Release. So a writer excludes everyone, readers exclude writers, and
// every acquire synchronises with the release before it. Checked by the loom tests below.
unsafe impl RawLock for SpinLock {
    fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    fn lock_exclusive(&self) {
        while self
            .state
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            Self::relax();
        }
    }

    unsafe fn unlock_exclusive(&self) {
        self.state.store(0, Ordering::Release);
    }

    type SharedToken = ();

    fn lock_shared(&self) {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            Self::relax();
        }
    }

    unsafe fn unlock_shared(&self, (): ()) {
        self.state.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct Guarded {
        lock: SpinLock,
        data: UnsafeCell<u32>,
    }
    // SAFETY: `data` is only touched under `lock`.
    unsafe impl Sync for Guarded {}

    /// Spin loops multiply loom's branches; a preemption bound of 3 is the usual remedy
    /// (it still explores every interleaving with up to two forced switches).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.max_branches = 100_000;
        b.check(f);
    }

    #[test]
    fn writers_exclude_each_other() {
        model(|| {
            let g = Arc::new(Guarded {
                lock: SpinLock::new(),
                data: UnsafeCell::new(0),
            });
            let hs: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let g = g.clone();
                    loom::thread::spawn(move || {
                        let _x = Exclusive::new(&g.lock);
                        // SAFETY: exclusive hold.
                        g.data.with_mut(|p| unsafe { *p += 1 });
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let _x = Exclusive::new(&g.lock);
            // SAFETY: exclusive hold.
            assert_eq!(g.data.with(|p| unsafe { *p }), 2);
        });
    }

    #[test]
    fn readers_and_a_writer() {
        model(|| {
            let g = Arc::new(Guarded {
                lock: SpinLock::new(),
                data: UnsafeCell::new(0),
            });
            let w = {
                let g = g.clone();
                loom::thread::spawn(move || {
                    let _x = Exclusive::new(&g.lock);
                    // SAFETY: exclusive hold.
                    g.data.with_mut(|p| unsafe { *p = 5 });
                })
            };
            {
                let _s = Shared::new(&g.lock);
                // SAFETY: shared hold.
                let v = g.data.with(|p| unsafe { *p });
                assert!(v == 0 || v == 5);
            }
            w.join().unwrap();
            let _s = Shared::new(&g.lock);
            // SAFETY: shared hold; the writer has finished.
            assert_eq!(g.data.with(|p| unsafe { *p }), 5);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn spin_lock_counts_readers() {
        let l = SpinLock::new();
        {
            let _a = Shared::new(&l);
            let _b = Shared::new(&l);
            assert_eq!(l.state.load(Ordering::Relaxed), 2);
        }
        {
            let _x = Exclusive::new(&l);
            assert_eq!(l.state.load(Ordering::Relaxed), WRITER);
        }
        assert_eq!(l.state.load(Ordering::Relaxed), 0);
    }
}
