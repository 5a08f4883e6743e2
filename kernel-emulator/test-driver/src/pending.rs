//! Pending IRPs the way a correct WDM driver keeps them, and the classic ways to get it
//! wrong: the emulator's asynchronous I/O, cancel, KTIMER/KDPC and unload models are proven
//! against this.
//!
//! A "wait" request is kept in one of [`SLOTS`] slots until its timer's DPC completes it
//! (STATUS_SUCCESS, [`WAIT_MAGIC`]), a release request completes it ([`RELEASE_MAGIC`]), it
//! is cancelled (its cancel routine completes it with STATUS_CANCELLED), or IRP_MJ_CLEANUP of
//! its file object completes it (STATUS_CANCELLED). Every slot's `irp` field is protected by
//! the system cancel spin lock (the old-school pattern: one lock for the queue and the cancel
//! routine), and whoever takes an IRP out of a slot first clears its cancel routine with
//! IoSetCancelRoutine(Irp, NULL); only if that returned the routine may it complete the IRP.
//! DriverUnload cancels every timer and flushes the DPCs.
//!
//! The buggy variants: STATUS_PENDING without IoMarkIrpPending; a timer left set at unload;
//! an IRP completed with its cancel routine still set; a wait that IRP_MJ_CLEANUP ignores.

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    mem::offset_of,
    ptr::null_mut,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use wdk_sys::{
    IO_STACK_LOCATION, KDPC, KIRQL, KTIMER, NTSTATUS, PDEVICE_OBJECT, PIRP, STATUS_CANCELLED,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_PENDING, STATUS_SUCCESS,
    ntddk::{
        IoAcquireCancelSpinLock, IoReleaseCancelSpinLock, KeCancelTimer, KeFlushQueuedDpcs,
        KeInitializeDpc, KeInitializeTimer, KeInsertQueueDpc, KeReadStateTimer, KeRemoveQueueDpc,
        KeSetTimer,
    },
};

use alloc::boxed::Box;

use crate::complete;

/// Waits that can be pending at once.
pub const SLOTS: usize = 4;
/// Slot 0 of a wait's output when its timer completed it (then: KeReadStateTimer, the
/// timeout, the DPC's IRQL).
pub const WAIT_MAGIC: u64 = 0x7469_6d65_6f75_7421; // "timeout!"
/// Slot 0 of a wait's output when a release request completed it.
pub const RELEASE_MAGIC: u64 = 0x7265_6c65_6173_6564; // "released"
/// wdm.h SL_PENDING_RETURNED.
const SL_PENDING_RETURNED: u8 = 0x01;

/// One pending wait.
struct Waiter {
    timer: KTIMER,
    dpc: KDPC,
    /// The pending IRP, NULL when free (under the cancel spin lock).
    irp: PIRP,
    /// Its file object (under the cancel spin lock).
    file: *mut c_void,
    /// Its timeout, echoed in the output.
    timeout_ms: u64,
    /// Deliberately ignored by IRP_MJ_CLEANUP (the buggy variant).
    orphan: bool,
}

/// Driver-global storage the kernel writes into (timers, DPCs) and that the cancel spin lock
/// protects.
struct Global<T>(UnsafeCell<T>);

// SAFETY: every access goes through raw pointers under the documented synchronisation (the
// cancel spin lock for the slots; the kernel owns timers and DPCs once initialised).
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    const fn get(&self) -> *mut T {
        self.0.get()
    }
}

// SAFETY: KTIMER, KDPC, pointers, integers and bool are all valid when zeroed; DriverEntry
// initialises the timers and DPCs before anything uses them.
static WAITERS: Global<[Waiter; SLOTS]> = Global(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// A timer and DPC that a buggy request sets and DriverUnload forgets.
struct Stray {
    timer: KTIMER,
    dpc: KDPC,
    /// A standalone DPC for the queue checks.
    queued: KDPC,
}

// SAFETY: as above.
static STRAY: Global<Stray> = Global(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Runs of the standalone DPC and of the stray timer's DPC.
static QUEUED_RUNS: AtomicU64 = AtomicU64::new(0);
static STRAY_RUNS: AtomicU64 = AtomicU64::new(0);
/// Waits completed by their timer.
static TIMEOUTS: AtomicUsize = AtomicUsize::new(0);

fn waiter(i: usize) -> *mut Waiter {
    WAITERS.get().cast::<Waiter>().wrapping_add(i)
}

/// The KTIMER inside a waiter (address arithmetic only: no access).
const fn timer_of(w: *mut Waiter) -> *mut KTIMER {
    w.wrapping_byte_add(offset_of!(Waiter, timer)).cast()
}

/// The KDPC inside a waiter.
const fn dpc_of(w: *mut Waiter) -> *mut KDPC {
    w.wrapping_byte_add(offset_of!(Waiter, dpc)).cast()
}

/// A field of the stray objects.
fn stray_field<T>(offset: usize) -> *mut T {
    STRAY.get().wrapping_byte_add(offset).cast()
}

/// IoSetCancelRoutine, inline in wdm.h: an interlocked exchange of Irp->CancelRoutine.
///
/// # Safety
/// `irp` must be a live IRP this driver owns.
unsafe fn set_cancel_routine(
    irp: PIRP,
    routine: Option<unsafe extern "C" fn(PDEVICE_OBJECT, PIRP)>,
) -> bool {
    let new = routine.map_or(0, |f| f as usize);
    // SAFETY: the caller guarantees `irp` is live.
    let field = unsafe { &raw mut (*irp).CancelRoutine }.cast::<usize>();
    // SAFETY: CancelRoutine is a pointer-sized, aligned field accessed only atomically.
    let atomic = unsafe { AtomicUsize::from_ptr(field) };
    atomic.swap(new, Ordering::AcqRel) != 0
}

/// The IRP's current stack location.
///
/// # Safety
/// `irp` must be a live IRP this driver owns.
pub(crate) unsafe fn stack(irp: PIRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees `irp` is live.
    let irp_ref = unsafe { &*irp };
    // SAFETY: while a driver owns an IRP, Tail.Overlay is the live member.
    let overlay = unsafe { &irp_ref.Tail.Overlay };
    // SAFETY: the stack-location pointer is the live member of this union.
    unsafe {
        overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    }
}

/// Writes four output slots into a METHOD_BUFFERED system buffer (the dispatch routine
/// checked it holds at least 32 output bytes before pending the IRP).
///
/// # Safety
/// `irp` must be a live device-control IRP this driver owns with >= 32 output bytes.
unsafe fn write_output(irp: PIRP, out: [u64; 4]) {
    // SAFETY: the caller guarantees `irp` is live.
    let irp_ref = unsafe { &*irp };
    // SAFETY: METHOD_BUFFERED: AssociatedIrp.SystemBuffer is the live member.
    let buffer = unsafe { irp_ref.AssociatedIrp.SystemBuffer }.cast::<u64>();
    for (i, v) in out.iter().enumerate() {
        // SAFETY: at least 4 u64 slots of output (the caller's guarantee).
        unsafe { buffer.wrapping_add(i).write_unaligned(*v) };
    }
}

/// Acquires the cancel spin lock; returns the IRQL to restore.
fn lock() -> KIRQL {
    let mut old: KIRQL = 0;
    // SAFETY: IRQL <= DISPATCH_LEVEL everywhere this driver calls it.
    unsafe { IoAcquireCancelSpinLock(&raw mut old) };
    old
}

fn unlock(old: KIRQL) {
    // SAFETY: held by this thread (acquired by `lock`).
    unsafe { IoReleaseCancelSpinLock(old) };
}

/// DriverEntry: initialises every timer and DPC.
pub fn start() {
    for i in 0..SLOTS {
        let w = waiter(i);
        // SAFETY: driver-global KTIMER storage; PASSIVE_LEVEL.
        unsafe { KeInitializeTimer(timer_of(w)) };
        // SAFETY: driver-global KDPC storage; the routine and context outlive the driver.
        unsafe { KeInitializeDpc(dpc_of(w), Some(timeout_dpc), i as *mut c_void) };
    }
    // SAFETY: as above.
    unsafe { KeInitializeTimer(stray_field(offset_of!(Stray, timer))) };
    // SAFETY: as above.
    unsafe {
        KeInitializeDpc(
            stray_field(offset_of!(Stray, dpc)),
            Some(stray_dpc),
            null_mut(),
        )
    };
    // SAFETY: as above.
    unsafe {
        KeInitializeDpc(
            stray_field(offset_of!(Stray, queued)),
            Some(queued_dpc),
            null_mut(),
        );
    }
}

/// DriverUnload: no timer of a slot may fire after this returns, and no DPC may still run.
/// (The stray timer is deliberately forgotten: that is the buggy variant.)
pub fn stop() {
    for i in 0..SLOTS {
        // SAFETY: initialised in `start`; PASSIVE_LEVEL.
        let _ = unsafe { KeCancelTimer(timer_of(waiter(i))) };
    }
    // SAFETY: PASSIVE_LEVEL; waits for DPCs already queued or running.
    unsafe { KeFlushQueuedDpcs() };
}

/// How a wait request behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// As a correct driver does.
    Correct,
    /// Bug: returns STATUS_PENDING without IoMarkIrpPending.
    Unmarked,
    /// Bug: IRP_MJ_CLEANUP leaves it pending.
    Orphan,
    /// Bug: its cancel routine returns holding the cancel spin lock.
    HoldsCancelLock,
}

/// A wait request: keeps the IRP pending until its timer (`timeout_ms`) fires, it is
/// released, cancelled or cleaned up (or misbehaves as `variant` says).
///
/// # Safety
/// `irp` is a live device-control IRP this driver owns with >= 32 output bytes.
pub unsafe fn wait(irp: PIRP, timeout_ms: u64, variant: Variant) -> NTSTATUS {
    let (mark, orphan) = (variant != Variant::Unmarked, variant == Variant::Orphan);
    let cancel: unsafe extern "C" fn(PDEVICE_OBJECT, PIRP) = if variant == Variant::HoldsCancelLock
    {
        cancel_routine_holding_lock
    } else {
        cancel_routine
    };
    // SAFETY: the caller guarantees `irp` is live.
    let st = unsafe { stack(irp) };
    // SAFETY: the current stack location of a live IRP.
    let file = unsafe { (*st).FileObject }.cast::<c_void>();
    let old = lock();
    let Some(i) = (0..SLOTS).find(|&i| {
        // SAFETY: slots are read under the cancel spin lock.
        unsafe { (*waiter(i)).irp }.is_null()
    }) else {
        unlock(old);
        // SAFETY: `irp` is live and not yet completed.
        return unsafe { complete(irp, STATUS_INSUFFICIENT_RESOURCES, 0) };
    };
    let w = waiter(i);
    // SAFETY: the slot is free and we hold the cancel spin lock.
    unsafe {
        (*w).irp = irp;
    }
    // SAFETY: as above.
    unsafe { (*w).file = file };
    // SAFETY: as above.
    unsafe { (*w).timeout_ms = timeout_ms };
    // SAFETY: as above.
    unsafe { (*w).orphan = orphan };
    // SAFETY: `irp` is live and ours.
    let _ = unsafe { set_cancel_routine(irp, Some(cancel)) };
    // SAFETY: as above.
    let cancelled = unsafe { (*irp).Cancel } != 0;
    // SAFETY: as above: if the I/O manager already cancelled it, take the routine back.
    if cancelled && unsafe { set_cancel_routine(irp, None) } {
        // SAFETY: under the cancel spin lock.
        unsafe { (*w).irp = null_mut() };
        unlock(old);
        // SAFETY: ours, not completed, cancel routine cleared.
        return unsafe { complete(irp, STATUS_CANCELLED, 0) };
    }
    if mark {
        // IoMarkIrpPending, inline in wdm.h.
        // SAFETY: the current stack location of a live IRP we own.
        unsafe { (*st).Control |= SL_PENDING_RETURNED };
    }
    let due = -i64::try_from(timeout_ms.saturating_mul(10_000)).unwrap_or(i64::MAX);
    let due_time = wdk_sys::LARGE_INTEGER { QuadPart: due };
    // SAFETY: the slot's timer and DPC were initialised in DriverEntry; DISPATCH_LEVEL.
    let _ = unsafe { KeSetTimer(timer_of(w), due_time, dpc_of(w)) };
    unlock(old);
    STATUS_PENDING
}

/// Takes the IRP out of slot `i` if it is still there and still cancelable (its cancel
/// routine cleared here first). Called under the cancel spin lock.
///
/// # Safety
/// The caller holds the cancel spin lock.
unsafe fn take(i: usize) -> PIRP {
    let w = waiter(i);
    // SAFETY: under the cancel spin lock.
    let irp = unsafe { (*w).irp };
    // SAFETY: a pending IRP we own; if its cancel routine is already gone, IoCancelIrp owns
    // the completion.
    if irp.is_null() || !unsafe { set_cancel_routine(irp, None) } {
        return null_mut();
    }
    // SAFETY: under the cancel spin lock.
    unsafe { (*w).irp = null_mut() };
    irp
}

/// The slot's timer expired: complete its wait with STATUS_SUCCESS.
unsafe extern "C" fn timeout_dpc(
    _dpc: *mut KDPC,
    context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    let i = context as usize;
    let w = waiter(i);
    let old = lock();
    // SAFETY: we hold the cancel spin lock.
    let irp = unsafe { take(i) };
    // SAFETY: the slot's timer, initialised in DriverEntry.
    let signalled = unsafe { KeReadStateTimer(timer_of(w)) };
    // SAFETY: under the cancel spin lock.
    let timeout = unsafe { (*w).timeout_ms };
    unlock(old);
    if !irp.is_null() {
        TIMEOUTS.fetch_add(1, Ordering::Relaxed);
        let irql: u64;
        // SAFETY: KeGetCurrentIrql's inline form (the emulator traps and answers it).
        unsafe { core::arch::asm!("mov {}, cr8", out(reg) irql) };
        // SAFETY: taken from the slot with its cancel routine cleared: ours to complete.
        unsafe { write_output(irp, [WAIT_MAGIC, u64::from(signalled), timeout, irql]) };
        // SAFETY: as above, exactly once.
        unsafe { complete(irp, STATUS_SUCCESS, 32) };
    }
}

/// DRIVER_CANCEL: called by IoCancelIrp holding the cancel spin lock.
unsafe extern "C" fn cancel_routine(_device: PDEVICE_OBJECT, irp: PIRP) {
    for i in 0..SLOTS {
        let w = waiter(i);
        // SAFETY: IoCancelIrp holds the cancel spin lock for us.
        if unsafe { (*w).irp } == irp {
            // SAFETY: as above.
            unsafe { (*w).irp = null_mut() };
            // SAFETY: the slot's timer; DISPATCH_LEVEL is allowed.
            let _ = unsafe { KeCancelTimer(timer_of(w)) };
        }
    }
    // SAFETY: the I/O manager stored the IRQL to return to in Irp->CancelIrql.
    let irql = unsafe { (*irp).CancelIrql };
    unlock(irql);
    // SAFETY: IoCancelIrp cleared the cancel routine; the IRP is ours to complete once.
    unsafe { complete(irp, STATUS_CANCELLED, 0) };
}

/// The buggy cancel routine: does everything but release the cancel spin lock (bugcheck
/// 0x11B DRIVER_RETURNED_HOLDING_CANCEL_LOCK).
unsafe extern "C" fn cancel_routine_holding_lock(_device: PDEVICE_OBJECT, irp: PIRP) {
    for i in 0..SLOTS {
        let w = waiter(i);
        // SAFETY: IoCancelIrp holds the cancel spin lock for us.
        if unsafe { (*w).irp } == irp {
            // SAFETY: as above.
            unsafe { (*w).irp = null_mut() };
            // SAFETY: the slot's timer; DISPATCH_LEVEL is allowed.
            let _ = unsafe { KeCancelTimer(timer_of(w)) };
        }
    }
    // SAFETY: IoCancelIrp cleared the cancel routine; the IRP is ours to complete once.
    unsafe { complete(irp, STATUS_CANCELLED, 0) };
    // Deliberately missing: IoReleaseCancelSpinLock(Irp->CancelIrql).
}

/// The buggy variant: a pool-allocated timer set, then its memory freed without
/// KeCancelTimer (bugcheck 0xC7 TIMER_OR_DPC_INVALID).
pub fn free_set_timer() {
    struct Pair {
        timer: KTIMER,
        dpc: KDPC,
    }
    // SAFETY: KTIMER and KDPC are valid zeroed; initialised below before use.
    let pair = Box::new(unsafe { core::mem::zeroed::<Pair>() });
    let p = Box::into_raw(pair);
    let timer: *mut KTIMER = p.wrapping_byte_add(offset_of!(Pair, timer)).cast();
    let dpc: *mut KDPC = p.wrapping_byte_add(offset_of!(Pair, dpc)).cast();
    // SAFETY: pool storage for a KTIMER; PASSIVE_LEVEL.
    unsafe { KeInitializeTimer(timer) };
    // SAFETY: pool storage for a KDPC.
    unsafe { KeInitializeDpc(dpc, Some(stray_dpc), null_mut()) };
    let due_time = wdk_sys::LARGE_INTEGER {
        QuadPart: -10_000_000,
    };
    // SAFETY: both initialised above.
    let _ = unsafe { KeSetTimer(timer, due_time, dpc) };
    // SAFETY: deliberately wrong: the timer is still set in the memory freed here.
    drop(unsafe { Box::from_raw(p) });
}

/// Completes, outside the lock, every wait `pick` selects, with `status` (and the release
/// output on success). Returns how many.
fn complete_waits(pick: impl Fn(*mut c_void, bool) -> bool, status: NTSTATUS) -> u64 {
    let mut taken: [PIRP; SLOTS] = [null_mut(); SLOTS];
    let old = lock();
    for (i, slot) in taken.iter_mut().enumerate() {
        let w = waiter(i);
        // SAFETY: under the cancel spin lock.
        let irp = unsafe { (*w).irp };
        // SAFETY: as above.
        let file = unsafe { (*w).file };
        // SAFETY: as above.
        let orphan = unsafe { (*w).orphan };
        let chosen = !irp.is_null() && pick(file, orphan);
        if chosen {
            // SAFETY: we hold the cancel spin lock.
            *slot = unsafe { take(i) };
            if !slot.is_null() {
                // SAFETY: the slot's timer.
                let _ = unsafe { KeCancelTimer(timer_of(w)) };
            }
        }
    }
    unlock(old);
    let mut n = 0;
    for (i, &irp) in taken.iter().enumerate() {
        if irp.is_null() {
            continue;
        }
        n += 1;
        if status == STATUS_SUCCESS {
            // SAFETY: taken with its cancel routine cleared: ours; >= 32 output bytes.
            unsafe { write_output(irp, [RELEASE_MAGIC, 0, 0, i as u64]) };
            // SAFETY: as above, exactly once.
            unsafe { complete(irp, status, 32) };
        } else {
            // SAFETY: as above.
            unsafe { complete(irp, status, 0) };
        }
    }
    n
}

/// The release request: every pending wait completes now with STATUS_SUCCESS (on the
/// caller's thread). Returns how many.
pub fn release_all() -> u64 {
    complete_waits(|_, _| true, STATUS_SUCCESS)
}

/// The buggy variant for the emulator's address scan: the address of the first pending
/// wait's IRP (0 if none), which the caller copies into an answer — a kernel address no
/// answer may carry, however long ago the IRP pended.
pub fn leak_pending_irp() -> u64 {
    let old = lock();
    let mut found = 0;
    for i in 0..SLOTS {
        // SAFETY: under the cancel spin lock.
        let irp = unsafe { (*waiter(i)).irp };
        if !irp.is_null() {
            found = irp as u64;
            break;
        }
    }
    unlock(old);
    found
}

/// IRP_MJ_CLEANUP of `file`: its waits complete with STATUS_CANCELLED (except the
/// deliberately orphaned ones).
pub fn cleanup(file: *mut c_void) {
    let _ = complete_waits(|f, orphan| f == file && !orphan, STATUS_CANCELLED);
}

/// The buggy variant: a cancel routine set, then the IRP completed with it still set
/// (bugcheck 0x48).
///
/// # Safety
/// `irp` is a live IRP this driver owns, not yet completed.
pub unsafe fn complete_cancelable(irp: PIRP) -> NTSTATUS {
    // SAFETY: the caller's guarantee.
    let _ = unsafe { set_cancel_routine(irp, Some(cancel_routine)) };
    // SAFETY: deliberately wrong: IoSetCancelRoutine(Irp, NULL) is missing.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// The buggy variant's first half: sets the stray timer (`ms`); DriverUnload forgets it.
/// Returns whether it was already set.
pub fn set_stray_timer(ms: u64) -> u64 {
    let due_time = wdk_sys::LARGE_INTEGER {
        QuadPart: -i64::try_from(ms.saturating_mul(10_000)).unwrap_or(i64::MAX),
    };
    // SAFETY: initialised in DriverEntry; PASSIVE_LEVEL.
    u64::from(unsafe {
        KeSetTimer(
            stray_field(offset_of!(Stray, timer)),
            due_time,
            stray_field(offset_of!(Stray, dpc)),
        )
    })
}

/// The standalone DPC: queue twice (TRUE, then FALSE: already queued), remove twice (TRUE,
/// FALSE), queue again (TRUE). It runs at the next clock tick or KeFlushQueuedDpcs.
pub fn queue_dpc() -> [u64; 4] {
    let dpc: *mut KDPC = stray_field(offset_of!(Stray, queued));
    // SAFETY: the DPC was initialised in DriverEntry; any IRQL.
    let q = || u64::from(unsafe { KeInsertQueueDpc(dpc, null_mut(), null_mut()) });
    // SAFETY: as above.
    let r = || u64::from(unsafe { KeRemoveQueueDpc(dpc) });
    let (a, b) = (q(), q());
    let (c, d) = (r(), r());
    let e = q();
    [a, b, (c << 1) | d, e]
}

/// Counters: standalone-DPC runs, stray-DPC runs, timeouts.
pub fn counters() -> [u64; 4] {
    [
        QUEUED_RUNS.load(Ordering::Relaxed),
        STRAY_RUNS.load(Ordering::Relaxed),
        TIMEOUTS.load(Ordering::Relaxed) as u64,
        0,
    ]
}

unsafe extern "C" fn queued_dpc(
    _dpc: *mut KDPC,
    _context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    QUEUED_RUNS.fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn stray_dpc(
    _dpc: *mut KDPC,
    _context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    STRAY_RUNS.fetch_add(1, Ordering::Relaxed);
}
