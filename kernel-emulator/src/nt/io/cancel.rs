//! IRP cancellation: the one system-wide cancel spin lock (IoAcquireCancelSpinLock /
//! IoReleaseCancelSpinLock) and IoCancelIrp as the I/O manager runs it for CancelIoEx and at
//! process exit.
//!
//! IoSetCancelRoutine and IoMarkIrpPending are inline in wdm.h (an
//! InterlockedExchangePointer on Irp->CancelRoutine; `stack->Control |= SL_PENDING_RETURNED`):
//! the driver writes the IRP directly and the model reads what it wrote.

use std::ffi::c_void;

use crate::machine::cpu::{self, DISPATCH_LEVEL};
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::layout::{DeviceObject, DispatchFn, Irp};
use crate::verifier::bugcheck::{require_irql, verifier_violation};

/// The storage whose address names the cancel spin lock in [`crate::nt::ke::sync`]'s lock table.
static CANCEL_LOCK: u64 = 0;

/// The address the cancel spin lock is tracked under.
#[must_use]
pub fn cancel_lock_address() -> usize {
    std::ptr::addr_of!(CANCEL_LOCK) as usize
}

/// IoAcquireCancelSpinLock — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-ioacquirecancelspinlock>:
/// acquires the system-wide cancel spin lock, raises to DISPATCH_LEVEL, stores the previous
/// IRQL at `*Irql`. IRQL <= DISPATCH_LEVEL. Held like any spin lock: recursion is bugcheck
/// 0xF (SPIN_LOCK_ALREADY_OWNED), holding it when a dispatch routine, DPC or cancel routine returns (or at unload) is
/// reported.
unsafe extern "win64" fn IoAcquireCancelSpinLock(irql: *mut u8) {
    require_irql("IoAcquireCancelSpinLock", DISPATCH_LEVEL);
    if irql.is_null() {
        verifier_violation("IoAcquireCancelSpinLock(NULL)");
    }
    let old = cpu::irql();
    crate::nt::ke::sync::acquire_spin_lock(cancel_lock_address());
    cpu::set_irql(DISPATCH_LEVEL);
    // SAFETY: the driver passes a writable KIRQL (checked non-NULL).
    unsafe { irql.write(old) };
}

/// IoReleaseCancelSpinLock — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-ioreleasecancelspinlock>:
/// releases the cancel spin lock and lowers to `Irql` (what IoAcquireCancelSpinLock returned,
/// or Irp->CancelIrql in a cancel routine). Must be called at DISPATCH_LEVEL by the holder.
unsafe extern "win64" fn IoReleaseCancelSpinLock(irql: u8) {
    if cpu::irql() != DISPATCH_LEVEL {
        verifier_violation(&format!(
            "IoReleaseCancelSpinLock at IRQL {} (must be DISPATCH_LEVEL)",
            cpu::irql()
        ));
    }
    crate::nt::ke::sync::release_spin_lock(cancel_lock_address(), "IoReleaseCancelSpinLock");
    if irql > DISPATCH_LEVEL {
        verifier_violation(&format!(
            "IoReleaseCancelSpinLock({irql}): raises instead of lowering"
        ));
    }
    cpu::set_irql(irql);
}

/// Whether this thread holds the cancel spin lock.
fn holds_cancel_lock() -> bool {
    crate::nt::ke::sync::spin_locks_held_by_current_thread()
        .iter()
        .any(|l| l.starts_with("the cancel spin lock"))
}

/// IoCancelIrp — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iocancelirp>
/// and the Windows Research Kernel's `base/ntos/io/iomgr/iosubs.c` IoCancelIrp (the same
/// steps; the I/O manager calls it at APC_LEVEL, the model at the caller's IRQL),
/// as CancelIoEx and thread exit run it: acquires the cancel spin lock (saving the IRQL in
/// Irp->CancelIrql), sets Irp->Cancel, exchanges Irp->CancelRoutine with NULL and, if one
/// was set, calls it with the IRP's device object at DISPATCH_LEVEL holding the lock; the
/// routine must release it with IoReleaseCancelSpinLock(Irp->CancelIrql) (checked: it
/// returns at that IRQL without the lock: else bugcheck 0x11B DRIVER_RETURNED_HOLDING_CANCEL_LOCK,
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/debugger/bug-check-0x11b---driver-returned-holding-cancel-lock>).
/// Without a cancel routine the lock is released and the result is FALSE.
///
/// # Safety
/// `irp` must be a live IRP the driver currently owns.
pub unsafe fn cancel_irp(irp: *mut Irp) -> bool {
    require_irql("IoCancelIrp", DISPATCH_LEVEL);
    let mut old = 0u8;
    // SAFETY: a local KIRQL.
    unsafe { IoAcquireCancelSpinLock(&raw mut old) };
    // SAFETY: the caller guarantees `irp` is live.
    unsafe { (*irp).cancel_irql = old };
    // SAFETY: as above.
    unsafe { (*irp).cancel = 1 };
    // IoSetCancelRoutine(Irp, NULL): the same interlocked exchange the driver inlines.
    // SAFETY: the caller guarantees `irp` is live.
    let slot = unsafe { &raw mut (*irp).cancel_routine };
    // SAFETY: CancelRoutine is a pointer-sized, pointer-aligned field of the live IRP; the
    // driver accesses it only with interlocked operations.
    let field = unsafe { std::sync::atomic::AtomicPtr::from_ptr(slot) };
    let routine = field.swap(
        std::ptr::null_mut::<c_void>(),
        std::sync::atomic::Ordering::AcqRel,
    );
    if routine.is_null() {
        // SAFETY: releasing the lock acquired above, back to the caller's IRQL.
        unsafe { IoReleaseCancelSpinLock(old) };
        return false;
    }
    // SAFETY: the caller guarantees `irp` is live.
    let stack = unsafe { (*irp).current_stack_location };
    // SAFETY: the IRP's current stack location is live while the driver owns the IRP.
    let device: *mut DeviceObject = unsafe { (*stack).device_object };
    // SAFETY: the driver stored a DRIVER_CANCEL routine here via IoSetCancelRoutine.
    let f = unsafe { std::mem::transmute::<*mut c_void, DispatchFn>(routine) };
    let operation = format!(
        "cancel routine {}",
        crate::verifier::bugcheck::symbolize(routine as usize)
    );
    // DRIVER_CANCEL returns VOID: the dispatch signature's return register is ignored.
    kernel::call_driver_returning_at(&operation, Some(old), || {
        // SAFETY: calling the driver's cancel routine as IoCancelIrp does.
        let _ = unsafe { f(device, irp) };
        if holds_cancel_lock() {
            crate::verifier::bugcheck::emit_stderr(&format!(
                "*** kernel-emulator: {operation} returned without \
                 IoReleaseCancelSpinLock(Irp->CancelIrql)\n"
            ));
            // DRIVER_RETURNED_HOLDING_CANCEL_LOCK (IRP, cancel routine).
            crate::verifier::bugcheck::bugcheck(0x11B, irp as usize, routine as usize, 0, 0);
        }
    });
    true
}

/// IoCancelIrp as a driver calls it (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iocancelirp>):
/// [`cancel_irp`] on an IRP the driver currently holds. An IRP the model does not know (or
/// one already completed) is a verifier violation: "if a driver that does not own the IRP
/// calls IoCancelIrp, the results are unpredictable". IRQL <= DISPATCH_LEVEL.
unsafe extern "win64" fn IoCancelIrp(irp: *mut Irp) -> u8 {
    require_irql("IoCancelIrp", DISPATCH_LEVEL);
    let live = kernel::with(|k| {
        k.io.irps
            .get(&(irp as usize))
            .is_some_and(|t| t.completions == 0)
    });
    if !live {
        verifier_violation(&format!(
            "IoCancelIrp({irp:p}): not an IRP in progress (unknown or already completed)"
        ));
    }
    // SAFETY: a live IRP the driver holds (checked above).
    u8::from(unsafe { cancel_irp(irp) })
}

/// The cancel spin lock routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "IoAcquireCancelSpinLock",
            IoAcquireCancelSpinLock as *const () as usize,
        ),
        Export::function("IoCancelIrp", IoCancelIrp as *const () as usize),
        Export::function(
            "IoReleaseCancelSpinLock",
            IoReleaseCancelSpinLock as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nt::layout::IoStackLocation;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// (IRQL the cancel routine ran at, Irp->Cancel, Irp->CancelIrql, lock held) packed.
    static SEEN: AtomicU64 = AtomicU64::new(0);

    unsafe extern "win64" fn releasing_cancel_routine(_d: *mut DeviceObject, irp: *mut Irp) -> i32 {
        // SAFETY: IoCancelIrp passes the live test IRP.
        let i = unsafe { &*irp };
        let (cancel, cancel_irql) = (i.cancel, i.cancel_irql);
        let held = u64::from(holds_cancel_lock());
        SEEN.store(
            u64::from(cpu::irql())
                | u64::from(cancel) << 8
                | u64::from(cancel_irql) << 16
                | held << 24,
            Ordering::SeqCst,
        );
        // SAFETY: held by this thread, at DISPATCH_LEVEL.
        unsafe { IoReleaseCancelSpinLock(cancel_irql) };
        0
    }

    #[test]
    fn io_cancel_irp_calls_the_cancel_routine_once_under_the_lock() {
        std::thread::spawn(|| {
            // SAFETY: IRP and stack location are plain C structures; zeroed is a valid start.
            let mut irp: Box<Irp> = Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: as above.
            let mut stack: Box<IoStackLocation> = Box::new(unsafe { std::mem::zeroed() });
            irp.current_stack_location = &raw mut *stack;
            irp.cancel_routine = releasing_cancel_routine as *mut c_void;
            let p: *mut Irp = &raw mut *irp;
            kernel::with(|k| {
                k.io.irps
                    .insert(p as usize, crate::nt::io::IrpTrack::default())
            });
            // SAFETY: a tracked IRP with a cancel routine; PASSIVE_LEVEL.
            assert_eq!(unsafe { IoCancelIrp(p) }, 1);
            let seen = SEEN.load(Ordering::SeqCst);
            assert_eq!(
                seen & 0xFF,
                u64::from(DISPATCH_LEVEL),
                "ran at DISPATCH_LEVEL"
            );
            assert_eq!((seen >> 8) & 0xFF, 1, "Irp->Cancel set before the call");
            assert_eq!(
                (seen >> 16) & 0xFF,
                0,
                "Irp->CancelIrql = the caller's IRQL"
            );
            assert_eq!(seen >> 24, 1, "called holding the cancel lock");
            assert!(irp.cancel_routine.is_null(), "exchanged with NULL");
            assert_eq!(cpu::irql(), crate::machine::cpu::PASSIVE_LEVEL);
            assert!(!holds_cancel_lock());
            // SAFETY: as above: no cancel routine any more, so FALSE, lock released.
            assert_eq!(unsafe { IoCancelIrp(p) }, 0);
            assert!(!holds_cancel_lock());
            kernel::with(|k| k.io.irps.remove(&(p as usize)));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_cancel_lock_raises_to_dispatch_and_is_tracked_while_held() {
        std::thread::spawn(|| {
            let mut old = 0xFF;
            // SAFETY: a local KIRQL; PASSIVE_LEVEL.
            unsafe { IoAcquireCancelSpinLock(&raw mut old) };
            assert_eq!(old, crate::machine::cpu::PASSIVE_LEVEL);
            assert_eq!(cpu::irql(), DISPATCH_LEVEL);
            assert!(holds_cancel_lock());
            // SAFETY: held by this thread at DISPATCH_LEVEL.
            unsafe { IoReleaseCancelSpinLock(old) };
            assert_eq!(cpu::irql(), crate::machine::cpu::PASSIVE_LEVEL);
            assert!(!holds_cancel_lock());
        })
        .join()
        .unwrap();
    }
}
