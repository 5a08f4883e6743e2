//! IRP dispatch for the control device: create, close and device control.
//!
//! The routines here only translate between the IRP and safe Rust: the request is handed to
//! [`crate::ioctl::handle`] as a byte slice, and the IRP is completed exactly once with the
//! status and byte count it returns. The one exception is the wait-free request, which
//! [`crate::waiters`] may keep pending; `IRP_MJ_CLEANUP` cancels the waits of the file
//! object whose last handle is closing.

use protocol::{
    ioctl::{
        IOCTL_HIVETRACK_WAIT_EVENTS, IOCTL_HIVETRACK_WAIT_FREE, METHOD_BUFFERED, split_ctl_code,
    },
    wait::WaitFreeAnswer,
};
use wdk_sys::{
    DRIVER_OBJECT, IO_NO_INCREMENT, IO_STACK_LOCATION, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE,
    IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, NTSTATUS, PDEVICE_OBJECT, PIRP, STATUS_CANCELLED,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_PENDING, STATUS_SUCCESS,
    ntddk::IofCompleteRequest,
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
    driver.MajorFunction[IRP_MJ_CREATE as usize] = Some(dispatch_create_close);
    driver.MajorFunction[IRP_MJ_CLOSE as usize] = Some(dispatch_create_close);
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

/// `IRP_MJ_CREATE` and `IRP_MJ_CLOSE`: the I/O manager already checked the caller against the
/// device's DACL, so opening and closing always succeed.
unsafe extern "C" fn dispatch_create_close(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
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
    let buffer: &mut [u8] = if len == 0 {
        &mut []
    } else if system_buffer.is_null() {
        // SAFETY: the IRP is live and not completed.
        return unsafe { complete(irp, STATUS_INVALID_PARAMETER, 0) };
    } else {
        // For `METHOD_BUFFERED` the I/O manager allocates a non-paged system buffer of
        // max(input, output) bytes, holding the input, for the life of the IRP.
        // SAFETY: that buffer is `len` bytes and nothing else accesses it while we own the IRP.
        unsafe { core::slice::from_raw_parts_mut(system_buffer, len) }
    };
    if code == IOCTL_HIVETRACK_WAIT_FREE || code == IOCTL_HIVETRACK_WAIT_EVENTS {
        // SAFETY: the IRP is live, ours and not completed; `stack` and `buffer` are its own.
        return unsafe { wait_free(irp, stack, buffer, in_len, out_len, code) };
    }
    let outcome = ioctl::handle(code, buffer, in_len, out_len);
    // SAFETY: the IRP is live and not completed; `information` never exceeds `out_len`.
    unsafe { complete(irp, outcome.status, outcome.information) }
}

/// `IOCTL_HIVETRACK_WAIT_FREE` and `IOCTL_HIVETRACK_WAIT_EVENTS`: answered at once when the
/// request is invalid or can be answered (the hive is free; an event after the caller's
/// last one exists); otherwise queued, and `STATUS_PENDING` returned.
///
/// # Safety
/// `irp` must be the live, uncompleted IRP being dispatched; `stack` its current stack
/// location and `buffer` its whole system buffer.
unsafe fn wait_free(
    irp: *mut IRP,
    stack: &IO_STACK_LOCATION,
    buffer: &mut [u8],
    in_len: usize,
    out_len: usize,
    code: u32,
) -> NTSTATUS {
    let parsed = if code == IOCTL_HIVETRACK_WAIT_EVENTS {
        ioctl::events_request(buffer, in_len, out_len)
    } else {
        ioctl::wait_request(buffer, in_len, out_len)
    };
    let request = match parsed {
        Ok(r) => r,
        // SAFETY: the IRP is live and not completed.
        Err(o) => return unsafe { complete(irp, o.status, o.information) },
    };
    let (file, system) = (stack.FileObject.cast(), buffer.as_mut_ptr());
    // `system` holds at least `out_len` bytes (checked by `wait_request`).
    // SAFETY: the IRP is the one being dispatched, with its own system buffer and file object.
    match unsafe { waiters::enqueue(irp, system, out_len, file, request) } {
        Queued::Pending => STATUS_PENDING,
        Queued::Now(Ok(Some(_))) if request.events.is_some() => {
            let o = request
                .events
                .map_or(ioctl::Outcome::error(STATUS_CANCELLED), |ev| {
                    ioctl::events_answer(ev, &mut buffer[..out_len])
                });
            // SAFETY: not queued, so still ours and not completed.
            unsafe { complete(irp, o.status, o.information) }
        }
        Queued::Now(Ok(Some(outcome))) => {
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
        // SAFETY: not queued (cancelled before it could be), so still ours.
        Queued::Now(Ok(None)) => unsafe { complete(irp, STATUS_CANCELLED, 0) },
        // SAFETY: not queued, so still ours.
        Queued::Now(Err(status)) => unsafe { complete(irp, status, 0) },
    }
}
