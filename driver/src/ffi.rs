//! Kernel routines and inline helpers that wdk-sys does not bind.
//!
//! - `ZwSetSecurityObject` is declared in `ntifs.h`, which wdk-sys's WDM bindings do not cover;
//!   it is exported by ntoskrnl.exe on every supported Windows, so it is imported statically
//!   (docs: "`ZwSetSecurityObject` function (`ntifs.h`)").
//! - `IoGetCurrentIrpStackLocation` and AMD64's `KeGetCurrentIrql` are `FORCEINLINE` in
//!   `wdm.h`, so bindgen emits nothing for them.

use wdk_sys::{
    HANDLE, IO_STACK_LOCATION, IRP, NTSTATUS, PSECURITY_DESCRIPTOR, SECURITY_INFORMATION,
};

unsafe extern "system" {
    /// Sets an object's security state (docs: `ZwSetSecurityObject`). IRQL `PASSIVE_LEVEL`.
    pub fn ZwSetSecurityObject(
        handle: HANDLE,
        security_information: SECURITY_INFORMATION,
        security_descriptor: PSECURITY_DESCRIPTOR,
    ) -> NTSTATUS;
}

/// The port of `wdm.h`'s inline `IoGetCurrentIrpStackLocation`: the stack location of the
/// driver that currently owns `irp`.
///
/// # Safety
/// `irp` must be an IRP the I/O manager delivered to one of this driver's dispatch routines.
pub unsafe fn current_stack_location(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: per the caller's contract `irp` is valid and owned by this driver.
    let irp = unsafe { &*irp };
    // wdm.h: `Tail.Overlay.CurrentStackLocation`.
    // SAFETY: while a driver owns an IRP in dispatch, `Tail.Overlay` is `Tail`'s live member.
    let overlay = unsafe { &irp.Tail.Overlay };
    // The packet-type member of this union is used only by the I/O manager's queue.
    // SAFETY: the stack-location pointer is the live member while the IRP is dispatched.
    unsafe {
        overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    }
}

unsafe extern "system" {
    /// Allocates pool memory with a tag (docs: `ExAllocatePoolWithTag`). Deprecated in favour
    /// of `ExAllocatePool2` from Windows 10 2004, but the only choice on 1809, so it is the
    /// fallback of [`crate::pool`]; not bound by wdk-sys, declared with its real prototype.
    pub fn ExAllocatePoolWithTag(
        pool_type: i32,
        number_of_bytes: usize,
        tag: u32,
    ) -> *mut core::ffi::c_void;
}

/// The port of `wdm.h`'s AMD64 inline `KeGetCurrentIrql` (`return (KIRQL)ReadCR8();`): the
/// current IRQL. No import, so nothing for a loader to resolve.
pub fn current_irql() -> u8 {
    let cr8: u64;
    // SAFETY: reading CR8 is allowed at CPL 0 at any IRQL and has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr8", out(reg) cr8, options(nomem, nostack, preserves_flags));
    }
    // The task priority is CR8's low 4 bits.
    #[allow(clippy::cast_possible_truncation, reason = "masked to 4 bits")]
    let irql = (cr8 & 0xF) as u8;
    irql
}
