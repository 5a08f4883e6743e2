//! The byte budget every block of tracking memory is charged to.
//!
//! [`Budgeted`] wraps the tracker's [`Pool`]: each allocation is charged what it costs in
//! non-paged pool ([`pool_cost`]) before the inner pool is asked, and is refused (counted,
//! like any failed allocation) when the charge would pass the limit. Records, slabs,
//! directories, hash buckets, names, hives, processes and history all come through it, so
//! the driver's tracking memory never exceeds the budget. Each process's share of it is
//! enforced by the tracker on the opens it charges (see `Tracker::opened`).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::lock::{Exclusive, RawLock};
use crate::pool::{BlockClass, Pool};
use crate::processes::ProcessKey;

/// The pool header of a small allocation on x64, and its granule: blocks below a page are
/// carved in 16-byte units after a 16-byte `POOL_HEADER` (`ReactOS` `ntoskrnl/mm/ARM3/expool.c`,
/// `POOL_BLOCK_SIZE`, and `sdk/include/ndk/extypes.h` for the header).
const POOL_UNIT: usize = 16;
/// A page: allocations that do not fit in a page with their header take whole pages ("If
/// `NumberOfBytes` is `PAGE_SIZE` or greater, a page-aligned buffer is allocated",
/// `ExAllocatePoolWithTag` on Microsoft Learn; `ReactOS` `POOL_MAX_ALLOC`).
const PAGE: usize = 4096;

/// What an allocation of `bytes` takes from non-paged pool: rounded up to 16 bytes plus a
/// 16-byte header below a page, whole pages above.
#[must_use]
pub const fn pool_cost(bytes: usize) -> u64 {
    let cost = if bytes + POOL_UNIT > PAGE {
        bytes.div_ceil(PAGE) * PAGE
    } else {
        bytes.div_ceil(POOL_UNIT) * POOL_UNIT + POOL_UNIT
    };
    cost as u64
}

/// A pool whose blocks are charged to a byte budget.
pub struct Budgeted<P> {
    inner: P,
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
    refused: AtomicU64,
}

impl<P: Pool> Budgeted<P> {
    /// `inner`, limited to `limit` bytes of pool cost.
    pub const fn new(inner: P, limit: u64) -> Self {
        Self {
            inner,
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The pool underneath.
    pub const fn inner(&self) -> &P {
        &self.inner
    }

    /// The limit in bytes.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// The most bytes ever charged at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Relaxed)
    }

    /// Allocations refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Charges `cost`, or refuses (and counts) when it would pass the limit.
    fn charge(&self, cost: u64) -> bool {
        let mut used = self.used.load(Relaxed);
        loop {
            let next = used.saturating_add(cost);
            if next > self.limit {
                self.refused.fetch_add(1, Relaxed);
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, next, Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    fn refund(&self, cost: u64) {
        self.used.fetch_sub(cost, Relaxed);
    }
}

// SAFETY: every block comes from `inner`, which upholds the contract, and is given back to it
// with the same class or size; the budget only decides whether to ask.
unsafe impl<P: Pool> Pool for Budgeted<P> {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        let cost = pool_cost(class.size());
        if !self.charge(cost) {
            return None;
        }
        let block = self.inner.alloc(class);
        if block.is_none() {
            self.refund(cost);
        }
        block
    }

    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.inner.free(class, block) };
        self.refund(pool_cost(class.size()));
    }

    fn alloc_bytes(&self, bytes: usize) -> Option<NonNull<u8>> {
        let cost = pool_cost(bytes);
        if !self.charge(cost) {
            return None;
        }
        let block = self.inner.alloc_bytes(bytes);
        if block.is_none() {
            self.refund(cost);
        }
        block
    }

    unsafe fn free_bytes(&self, bytes: usize, block: NonNull<u8>) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.inner.free_bytes(bytes, block) };
        self.refund(pool_cost(bytes));
    }
}

/// The process with the most opens dropped for its share, for `stats`.
pub(crate) struct TopDropper<L> {
    lock: L,
    pid: AtomicU64,
    start_key: AtomicU64,
    drops: AtomicU64,
}

impl<L: RawLock> TopDropper<L> {
    pub(crate) fn new() -> Self {
        Self {
            lock: L::new(),
            pid: AtomicU64::new(0),
            start_key: AtomicU64::new(0),
            drops: AtomicU64::new(0),
        }
    }

    /// `process` has now had `drops` opens dropped: it becomes the top one when that is
    /// the most (ties keep the first).
    pub(crate) fn note(&self, process: ProcessKey, drops: u64) {
        if drops <= self.drops.load(Relaxed) {
            return;
        }
        let _g = Exclusive::new(&self.lock);
        if drops > self.drops.load(Relaxed) {
            self.pid.store(process.pid, Relaxed);
            self.start_key.store(process.start_key, Relaxed);
            self.drops.store(drops, Relaxed);
        }
    }

    /// (process, drops) of the top one, consistent with each other.
    pub(crate) fn get(&self) -> (ProcessKey, u64) {
        let _g = Exclusive::new(&self.lock);
        (
            ProcessKey {
                pid: self.pid.load(Relaxed),
                start_key: self.start_key.load(Relaxed),
            },
            self.drops.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_cost_rounds_like_the_pool() {
        assert_eq!(pool_cost(1), 32);
        assert_eq!(pool_cost(16), 32);
        assert_eq!(pool_cost(17), 48);
        assert_eq!(pool_cost(174), 192);
        assert_eq!(pool_cost(4080), 4096);
        assert_eq!(pool_cost(4081), 4096);
        assert_eq!(pool_cost(4096), 4096);
        assert_eq!(pool_cost(4097), 8192);
    }
}
