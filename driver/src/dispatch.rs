//! IRP dispatch for the control device: create, close and device control.
//!
//! The routines here only translate between the IRP and safe Rust: the request is handed to
//! [`crate::ioctl::handle`] as a byte slice, and the IRP is completed exactly once with the
//! status and byte count it returns. The one exception is the wait-free request, which
//! [`crate::waiters`] may keep pending; `IRP_MJ_CLEANUP` cancels the waits of the file
//! object whose last handle is closing.

use core::ffi::c_void;

use protocol::{
    ioctl::{
        IOCTL_HIVETRACK_WAIT_EVENTS, IOCTL_HIVETRACK_WAIT_FREE, METHOD_BUFFERED, split_ctl_code,
    },
    wait::WaitFreeAnswer,
};
use wdk_sys::{
    DRIVER_OBJECT, IO_NO_INCREMENT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL, NTSTATUS, PDEVICE_OBJECT, PIRP, STATUS_CANCELLED,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_PENDING, STATUS_SUCCESS, ntddk::IofCompleteRequest,
};

use crate::{
    ffi::current_stack_location,
    ioctl,
    waiters::{self, Queued},
};

/// `IO_NO_INCREMENT` as the `CCHAR` `IofCompleteRequest` takes (the constant is 0).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the constant is 0"
)]
const NO_INCREMENT: i8 = IO_NO_INCREMENT as i8;

/// Points the driver's create, close and device-control entries at this module.
pub fn install(driver: &mut DRIVER_OBJECT) {
    driver.MajorFunction[IRP_MJ_CREATE as usize] = Some(dispatch_create);
    driver.MajorFunction[IRP_MJ_CLOSE as usize] = Some(dispatch_close);
    driver.MajorFunction[IRP_MJ_CLEANUP as usize] = Some(dispatch_cleanup);
    driver.MajorFunction[IRP_MJ_DEVICE_CONTROL as usize] = Some(dispatch_device_control);
}

/// Completes `irp` with `status` and `information` bytes, and returns `status` (what a
/// dispatch routine that does not pend returns). Also completes the waits that pended.
///
/// # Safety
/// `irp` must be an IRP this driver owns and has not completed yet.
pub unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    {
        // IoStatus is ours to fill; nothing else touches the IRP until it is completed below.
        // SAFETY: per the contract the IRP is ours and live.
        let irp = unsafe { &mut *irp };
        irp.IoStatus.__bindgen_anon_1.Status = status;
        irp.IoStatus.Information = information as u64;
    }
    // SAFETY: the IRP is completed exactly once, here; after this call it is not touched.
    unsafe { IofCompleteRequest(irp, NO_INCREMENT) };
    status
}

/// `IRP_MJ_CREATE`: an open of the device itself succeeds (the I/O manager already checked
/// the caller against the device's DACL); an open of a name inside the device's namespace
/// (`\\.\HiveTrack\x`, `FileObject->FileName` not empty) is refused.
///
/// Learn, "Controlling Device Namespace Access": a driver that does not support a namespace
/// must either set `FILE_DEVICE_SECURE_OPEN` (which `device.rs` does, so that the I/O
/// manager applies the device's DACL to such opens too) or "fail any `IRP_MJ_CREATE` request
/// that specifies an `IrpSp->FileObject->FileName` parameter whose length is nonzero". Doing
/// both is defence in depth (audit 21a, A3): a lost characteristic bit cannot open the
/// device to every user through its namespace.
unsafe extern "C" fn dispatch_create(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP in one of our dispatch routines.
    let stack = unsafe { current_stack_location(irp) };
    // SAFETY: the current stack location of a live IRP is valid while we own the IRP.
    let file = unsafe { (*stack).FileObject };
    let named = !file.is_null() && {
        // Only the length of its name is read.
        // SAFETY: a create IRP's file object is the one being opened, live for the IRP.
        unsafe { (*file).FileName.Length != 0 }
    };
    let status = if named {
        STATUS_OBJECT_NAME_NOT_FOUND
    } else {
        STATUS_SUCCESS
    };
    // SAFETY: the IRP is live and not completed.
    unsafe { complete(irp, status, 0) }
}

/// `IRP_MJ_CLOSE`: the last reference to a file object went; nothing of ours is attached to
/// it (its waits went at `IRP_MJ_CLEANUP`), so closing always succeeds.
unsafe extern "C" fn dispatch_close(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP we have not completed.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// `IRP_MJ_CLEANUP`: the last handle to a file object is closing; its pending waits are
/// cancelled so that the process can exit (docs: "`DispatchCleanup` Routines").
unsafe extern "C" fn dispatch_cleanup(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP in one of our dispatch routines.
    let stack = unsafe { current_stack_location(irp) };
    // SAFETY: the current stack location of a live IRP is valid while we own the IRP.
    let file = unsafe { (*stack).FileObject };
    waiters::cleanup(file.cast());
    // SAFETY: the IRP is live and not completed.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// `IRP_MJ_DEVICE_CONTROL`: validates the transfer method, exposes the system buffer as a
/// slice and lets [`ioctl::handle`] answer.
unsafe extern "C" fn dispatch_device_control(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP in one of our dispatch routines.
    let stack = unsafe { current_stack_location(irp) };
    // SAFETY: the current stack location of a live IRP is valid while we own the IRP.
    let stack = unsafe { &*stack };
    // Docs: `IRP_MJ_DEVICE_CONTROL`; the member is plain data, copied out.
    // SAFETY: for this major function, `Parameters.DeviceIoControl` is the valid member.
    let params = unsafe { stack.Parameters.DeviceIoControl };
    let code = params.IoControlCode;
    if split_ctl_code(code).method != METHOD_BUFFERED {
        // Only `METHOD_BUFFERED` codes are ours: any other method would hand us user
        // addresses, never the system buffer.
        // SAFETY: the IRP is live and not completed.
        return unsafe { complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0) };
    }
    let in_len = params.InputBufferLength as usize;
    let out_len = params.OutputBufferLength as usize;
    let len = in_len.max(out_len);
    let system_buffer = {
        // SAFETY: the IRP is live and ours; only a pointer field is read.
        let irp = unsafe { &*irp };
        // SAFETY: for METHOD_BUFFERED requests `AssociatedIrp` holds `SystemBuffer`.
        unsafe { irp.AssociatedIrp.SystemBuffer }.cast::<u8>()
    };
    if len != 0 && system_buffer.is_null() {
        // SAFETY: the IRP is live and not completed.
        return unsafe { complete(irp, STATUS_INVALID_PARAMETER, 0) };
    }
    if code == IOCTL_HIVETRACK_WAIT_FREE || code == IOCTL_HIVETRACK_WAIT_EVENTS {
        // Raw pointers only: a wait may be queued, and once queued the IRP, its stack
        // location and its system buffer may be completed and freed on another CPU while
        // `wait_free` still runs, so no reference into them may be a live argument.
        let file = stack.FileObject.cast();
        // `system_buffer` is its system buffer of `len` bytes (unused when `len` is 0).
        // SAFETY: the IRP is live, ours and not completed; `file` is its file object.
        return unsafe { wait_free(irp, file, system_buffer, len, in_len, out_len, code) };
    }
    let buffer: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // For `METHOD_BUFFERED` the I/O manager allocates a non-paged system buffer of
        // max(input, output) bytes, holding the input, for the life of the IRP.
        // This request never pends, so the IRP and the buffer stay ours until `complete`.
        // SAFETY: that buffer is `len` bytes, untouched by anyone else while we own the IRP.
        unsafe { core::slice::from_raw_parts_mut(system_buffer, len) }
    };
    let outcome = ioctl::handle(code, buffer, in_len, out_len);
    // SAFETY: the IRP is live and not completed; `information` never exceeds `out_len`.
    unsafe { complete(irp, outcome.status, outcome.information) }
}

/// `IOCTL_HIVETRACK_WAIT_FREE` and `IOCTL_HIVETRACK_WAIT_EVENTS`: answered at once when the
/// request is invalid or can be answered (the hive is free; an event after the caller's
/// last one exists); otherwise queued, and `STATUS_PENDING` returned.
///
/// # Safety
/// `irp` must be the live, uncompleted IRP being dispatched; `file` its file object and
/// `system` its whole system buffer of `len` bytes (unused when `len` is 0).
///
/// Only raw pointers come in (audit 21b, F7): once [`waiters::enqueue`] has queued the IRP,
/// another CPU may complete it (hive freed, timeout, cancel), which frees the IRP and its
/// system buffer, so no reference into either may live across that call. Slices over the
/// buffer are built only where the IRP is certainly still ours: before the enqueue, and in
/// the branches where it was not queued.
unsafe fn wait_free(
    irp: *mut IRP,
    file: *mut c_void,
    system: *mut u8,
    len: usize,
    in_len: usize,
    out_len: usize,
    code: u32,
) -> NTSTATUS {
    let parsed = {
        // The slice ends with this block, before the enqueue.
        // SAFETY: not yet queued, so the IRP and its `len`-byte buffer are ours.
        let buffer = unsafe { system_slice(system, len) };
        if code == IOCTL_HIVETRACK_WAIT_EVENTS {
            ioctl::events_request(buffer, in_len, out_len)
        } else {
            ioctl::wait_request(buffer, in_len, out_len)
        }
    };
    let request = match parsed {
        Ok(r) => r,
        // SAFETY: the IRP is live and not completed.
        Err(o) => return unsafe { complete(irp, o.status, o.information) },
    };
    // `system` holds at least `out_len` bytes (checked by `wait_request`/`events_request`).
    // After `Pending` the IRP may already be completed and freed: nothing of it is touched.
    // SAFETY: the IRP is the one being dispatched, with its own system buffer and file object.
    match unsafe { waiters::enqueue(irp, system, out_len, file, request) } {
        Queued::Pending => STATUS_PENDING,
        Queued::Now(Ok(Some(_))) if request.events.is_some() => {
            // SAFETY: not queued, so the IRP and its buffer are still ours.
            let buffer = unsafe { system_slice(system, len) };
            let o = request
                .events
                .map_or(ioctl::Outcome::error(STATUS_CANCELLED), |ev| {
                    ioctl::events_answer(ev, &mut buffer[..out_len])
                });
            // SAFETY: not queued, so still ours and not completed.
            unsafe { complete(irp, o.status, o.information) }
        }
        Queued::Now(Ok(Some(outcome))) => {
            // SAFETY: not queued, so the IRP and its buffer are still ours.
            let buffer = unsafe { system_slice(system, len) };
            let answer = WaitFreeAnswer {
                outcome,
                hive_id: request.hive.id,
                waited: 0,
                completeness: waiters::completeness(request.hive.id),
            };
            let o = ioctl::wait_answer(&answer, &mut buffer[..out_len]);
            // SAFETY: not queued, so still ours and not completed.
            unsafe { complete(irp, o.status, o.information) }
        }
        // Not queued: cancelled before it could be, or its file object already cleaned up.
        // SAFETY: not queued (see above), so still ours and not completed.
        Queued::Now(Ok(None)) => unsafe { complete(irp, STATUS_CANCELLED, 0) },
        // SAFETY: not queued, so still ours.
        Queued::Now(Err(status)) => unsafe { complete(irp, status, 0) },
    }
}

/// The system buffer as a slice (empty when `len` is 0).
///
/// # Safety
/// `system` must be the system buffer of `len` bytes of an IRP that is ours and not queued
/// for the whole life of the slice (or anything when `len` is 0).
const unsafe fn system_slice<'a>(system: *mut u8, len: usize) -> &'a mut [u8] {
    if len == 0 || system.is_null() {
        &mut []
    } else {
        // SAFETY: per the contract, `len` bytes owned by us for the slice's life.
        unsafe { core::slice::from_raw_parts_mut(system, len) }
    }
}
