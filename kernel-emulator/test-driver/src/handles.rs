//! `ObReferenceObjectByHandle` as a driver sees it: which table a handle value is looked up
//! in (the caller's, or the System process's for a kernel handle in `KernelMode` only), and
//! that the reference it takes keeps the object — a key object included — alive after its
//! last handle is closed, until `ObDereferenceObject`.
//!
//! One reference at a time is kept (in `HELD`) between `reference` and `release`, so the
//! scenario can close handles in between.

use core::{
    ffi::c_void,
    ptr::null_mut,
    sync::atomic::{AtomicUsize, Ordering},
};

use wdk_sys::NTSTATUS;

use crate::registry::ObfDereferenceObject;

unsafe extern "system" {
    fn ObReferenceObjectByHandle(
        handle: *mut c_void,
        desired: u32,
        object_type: *mut c_void,
        access_mode: i8,
        object: *mut *mut c_void,
        handle_information: *mut c_void,
    ) -> NTSTATUS;
}

/// The object referenced by the last successful [`reference`], not yet released.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// `ObReferenceObjectByHandle(handle, 0, NULL, mode, ...)` in the caller's context: returns
/// `[status bits, object address (0 on failure), 0, 0]` and keeps the reference (releasing
/// the one kept before).
pub fn reference(handle: u64, mode: i8) -> [u64; 4] {
    let mut object: *mut c_void = null_mut();
    // SAFETY: PASSIVE_LEVEL (IRP_MJ_DEVICE_CONTROL dispatch); a writable out pointer.
    let status = unsafe {
        ObReferenceObjectByHandle(
            handle as *mut c_void,
            0,
            null_mut(),
            mode,
            &raw mut object,
            null_mut(),
        )
    };
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    let bits = u64::from(status as u32);
    if status != 0 || object.is_null() {
        return [bits, 0, 0, 0];
    }
    release();
    HELD.store(object as usize, Ordering::Relaxed);
    [bits, object as u64, 0, 0]
}

/// Releases the kept reference, if any; returns the object it was on (0 when none).
pub fn release() -> u64 {
    let object = HELD.swap(0, Ordering::Relaxed);
    if object != 0 {
        // SAFETY: the reference `reference` took, released once.
        unsafe { ObfDereferenceObject(object as *mut c_void) };
    }
    object as u64
}
