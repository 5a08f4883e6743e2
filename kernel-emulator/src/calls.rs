//! Counts of some kernel calls a driver makes, for the benchmarks: spin-lock acquisitions,
//! lookaside (SList) pops and pushes, pool allocations, and `CmCallbackGetKeyObjectIDEx`
//! with and without the name. Figures for the benchmarks; `rename-key` checks the name
//! fetches around a rename.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counted kind of call.
#[derive(Clone, Copy, Debug)]
pub enum Call {
    /// `KeAcquireSpinLockRaiseToDpc` / `KeAcquireSpinLockAtDpcLevel`.
    SpinLock,
    /// An SList pop (a lookaside allocation's first step).
    LookasidePop,
    /// An SList push (a lookaside free).
    LookasidePush,
    /// `ExAllocatePool2` / `ExAllocatePoolWithTag`.
    PoolAlloc,
    /// `CmCallbackGetKeyObjectIDEx` asked for the name.
    KeyName,
    /// `CmCallbackGetKeyObjectIDEx` asked for the ObjectID only.
    KeyIdOnly,
}

/// The counted kinds, in [`snapshot`]'s order, with the names the benchmark prints.
pub const NAMES: [&str; 6] = [
    "spin-lock acquisitions",
    "lookaside pops",
    "lookaside pushes",
    "pool allocations",
    "key-name fetches (CmCallbackGetKeyObjectIDEx with a name)",
    "key-id-only lookups (CmCallbackGetKeyObjectIDEx without a name)",
];

static COUNTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Counts one call.
pub fn count(c: Call) {
    COUNTS[c as usize].fetch_add(1, Relaxed);
}

/// The counts so far, in [`NAMES`]' order.
#[must_use]
pub fn snapshot() -> [u64; 6] {
    core::array::from_fn(|i| COUNTS[i].load(Relaxed))
}
