//! The driver's one tracker, in static (non-paged) storage, and its life cycle.
//!
//! `DriverEntry` creates it ([`start`]); callbacks and IOCTLs reach it through [`get`];
//! `DriverUnload` drops it ([`stop`]) after every callback that could use it is unregistered.
//! Creation can fail (the lookaside lists): the driver then still loads and answers IOCTLs,
//! and reports that tracking is off.

use core::{
    cell::UnsafeCell,
    mem::MaybeUninit,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

use tracker::{Config, Tracker};
use wdk_sys::{
    NTSTATUS, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, ntddk::KeQueryPerformanceCounter,
};

use crate::{lock::SpinLock, lookaside::LookasidePool};

/// The tracker type of the driver.
pub type DriverTracker = Tracker<LookasidePool, SpinLock>;

// The tracker's records hold the driver's lock: each must still fit its block (a record that
// does not fit is never allocated, and every open would be dropped).
const _: () = assert!(
    core::mem::size_of::<tracker::processes::Process<SpinLock>>()
        <= tracker::processes::PROCESS_CLASS.size()
);
const _: () = assert!(
    core::mem::size_of::<tracker::processes::Holding<SpinLock>>()
        <= tracker::processes::HOLDING_CLASS.size()
);

struct Slot {
    tracker: UnsafeCell<MaybeUninit<DriverTracker>>,
    ready: AtomicBool,
}

// SAFETY: the tracker is written once in `start` before `ready` is published (Release) and
// dropped in `stop` after every user is gone; in between it is only shared (`&`), and
// `DriverTracker` is `Sync`.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot {
    tracker: UnsafeCell::new(MaybeUninit::uninit()),
    ready: AtomicBool::new(false),
};

/// Why live tracking is off, as an NTSTATUS (`STATUS_SUCCESS` while it is on).
static TRACKING_STATUS: AtomicI32 = AtomicI32::new(STATUS_SUCCESS);

/// The service key's `Parameters` values the tracker is configured with (`None`: the
/// tracker's default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Parameters {
    /// Bytes of tracking memory (`MemoryBudgetMiB`).
    pub budget: Option<u64>,
    /// Open keys of one process that raise an alarm (`KeyAlarmThreshold`).
    pub key_alarm: Option<u64>,
    /// Seconds after a failed unload to look at the hive again (`HeldAfterSeconds`).
    pub held_after: Option<u64>,
}

/// Creates the tracker on its lookaside pool, configured by `parameters`. Call once, from
/// `DriverEntry`.
///
/// # Errors
/// The status of the failing step; nothing is left allocated then.
pub fn start(parameters: Parameters) -> Result<(), NTSTATUS> {
    let mut config = parameters
        .budget
        .map_or_else(Config::default, |b| Config::default().with_budget(b));
    if let Some(threshold) = parameters.key_alarm {
        config.key_alarm_threshold = threshold;
    }
    if let Some(seconds) = parameters.held_after {
        config.held_after_seconds = seconds;
    }
    // The stack table's hash key: the performance counter at start, which no process
    // chooses. (Not the interrupt time: the emulator traps `KUSER_SHARED_DATA` loads, which
    // callgrind cannot replay, so reading it here ended `cargo xtask bench-driver` in a
    // bugcheck at DriverEntry.) Docs: `KeQueryPerformanceCounter`, any IRQL.
    // SAFETY: a documented call; a null frequency pointer is allowed.
    let counter = unsafe { KeQueryPerformanceCounter(null_mut()) };
    // SAFETY: the routine returns the counter in QuadPart.
    let counter = unsafe { counter.QuadPart }.cast_unsigned();
    config.hash_seed = counter.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    let pool = LookasidePool::create()?;
    // SAFETY: `start` runs once, single-threaded, before `ready` is set; the slot is unused.
    let slot = unsafe { &mut *SLOT.tracker.get() };
    // Built in place: the tracker is about 40 KiB (33 KiB of it the process table's chains)
    // and the kernel stack 24 KiB. On error the
    // pool is dropped, deleting its lists.
    Tracker::init_in_place(slot, pool, config).map_err(|_| STATUS_INVALID_PARAMETER)?;
    SLOT.ready.store(true, Ordering::Release);
    Ok(())
}

/// The tracker, once [`start`] succeeded and until [`stop`].
pub fn get() -> Option<&'static DriverTracker> {
    if !SLOT.ready.load(Ordering::Acquire) {
        return None;
    }
    // `ready` is set only after the tracker was written, and cleared by `stop` only when no
    // callback or request can still be running.
    // SAFETY: so the slot is initialised, and only shared, while `ready` is set.
    let slot = unsafe { &*SLOT.tracker.get() };
    // SAFETY: initialised, as above.
    Some(unsafe { slot.assume_init_ref() })
}

/// Drops the tracker (freeing every block) and then its pool. Call from `DriverUnload`, after
/// the registry and process callbacks are unregistered and no request is in flight.
pub fn stop() {
    if SLOT.ready.swap(false, Ordering::AcqRel) {
        // SAFETY: nothing uses the tracker any more (see the caller's contract).
        let slot = unsafe { &mut *SLOT.tracker.get() };
        // SAFETY: it was initialised by `start` and is dropped once.
        unsafe { slot.assume_init_drop() };
    }
}

/// Records why live tracking is off (`STATUS_SUCCESS` = on).
pub fn set_status(status: NTSTATUS) {
    TRACKING_STATUS.store(status, Ordering::Release);
}

/// Why live tracking is off, or `STATUS_SUCCESS` when it is on.
pub fn status() -> NTSTATUS {
    TRACKING_STATUS.load(Ordering::Acquire)
}
