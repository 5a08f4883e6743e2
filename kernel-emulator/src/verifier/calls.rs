//! Counts of some kernel calls a driver makes, for the benchmarks: spin-lock acquisitions
//! (every kind; the EX_SPIN_LOCK ones also by mode),
//! lookaside (SList) pops and pushes, pool allocations, and `CmCallbackGetKeyObjectIDEx`
//! with and without the name. Figures for the benchmarks; `rename-key` checks the name
//! fetches around a rename.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counted kind of call.
#[derive(Clone, Copy, Debug)]
pub enum Call {
    /// Every spin-lock acquisition: `KeAcquireSpinLockRaiseToDpc` /
    /// `KeAcquireSpinLockAtDpcLevel` and every `ExAcquireSpinLock{Shared,Exclusive}[AtDpcLevel]`.
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
    /// Of [`Call::SpinLock`]: an EX_SPIN_LOCK taken shared.
    ExSpinLockShared,
    /// Of [`Call::SpinLock`]: an EX_SPIN_LOCK taken exclusive.
    ExSpinLockExclusive,
}

/// The counted kinds, in [`snapshot`]'s order, with the names the benchmark prints.
pub const NAMES: [&str; 8] = [
    "spin-lock acquisitions (all kinds)",
    "lookaside pops",
    "lookaside pushes",
    "pool allocations",
    "key-name fetches (CmCallbackGetKeyObjectIDEx with a name)",
    "key-id-only lookups (CmCallbackGetKeyObjectIDEx without a name)",
    "of the spin locks: EX_SPIN_LOCK shared",
    "of the spin locks: EX_SPIN_LOCK exclusive",
];

static COUNTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Counts one call.
pub fn count(c: Call) {
    COUNTS[c as usize].fetch_add(1, Relaxed);
}

/// The counts so far, in [`NAMES`]' order.
#[must_use]
pub fn snapshot() -> [u64; 8] {
    core::array::from_fn(|i| COUNTS[i].load(Relaxed))
}
