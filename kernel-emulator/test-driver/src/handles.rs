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

use wdk_sys::{NTSTATUS, UNICODE_STRING};

use crate::registry::{
    CmCallbackGetKeyObjectIDEx, CmCallbackReleaseKeyObjectIDEx, ObfDereferenceObject, cookie,
};

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

/// The key object behind the caller's `handle`, referenced (UserMode lookup), or the failure.
fn reference_key(handle: u64) -> Result<*mut c_void, NTSTATUS> {
    let mut object: *mut c_void = null_mut();
    // SAFETY: PASSIVE_LEVEL (IRP_MJ_DEVICE_CONTROL dispatch); a writable out pointer.
    let status = unsafe {
        ObReferenceObjectByHandle(
            handle as *mut c_void,
            0,
            null_mut(),
            1,
            &raw mut object,
            null_mut(),
        )
    };
    if status != 0 || object.is_null() {
        return Err(status);
    }
    Ok(object)
}

/// NTSTATUS bits as a slot.
#[allow(clippy::cast_sign_loss)] // NTSTATUS bits
const fn bits(s: NTSTATUS) -> u64 {
    s as u32 as u64
}

/// IOCTL_KEY_ID: what a tracking driver learns about the key behind the caller's handle
/// `handle` (UserMode lookup, reference released before returning): `[status bits, ObjectID
/// asked for alone (ObjectName NULL, the way a name cache keyed by id asks), hash of the
/// ObjectName, ObjectID returned with the name]`. The status is the first failure, if any.
pub fn key_id(handle: u64) -> [u64; 4] {
    let object = match reference_key(handle) {
        Ok(o) => o,
        Err(status) => return [bits(status), 0, 0, 0],
    };
    let mut id = 0usize;
    // SAFETY: a referenced key object, our registered cookie, a writable id, no name, Flags 0.
    let s1 = unsafe { CmCallbackGetKeyObjectIDEx(cookie(), object, &raw mut id, null_mut(), 0) };
    let mut named_id = 0usize;
    let mut name: *const UNICODE_STRING = null_mut();
    // SAFETY: as above, with a writable name pointer.
    let s2 = unsafe {
        CmCallbackGetKeyObjectIDEx(cookie(), object, &raw mut named_id, &raw mut name, 0)
    };
    let name_hash = if s2 == 0 && !name.is_null() {
        let h = crate::lifecycle::hash(name);
        // SAFETY: releasing the name handed out above.
        unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
        h
    } else {
        0
    };
    // SAFETY: the reference ObReferenceObjectByHandle took above, released once.
    unsafe { ObfDereferenceObject(object) };
    [
        bits(if s1 == 0 { s2 } else { s1 }),
        id as u64,
        name_hash,
        named_id as u64,
    ]
}

/// IOCTL_KEY_ID_BAD_COOKIE: `CmCallbackGetKeyObjectIDEx` on the key behind `handle` with a
/// cookie that is not a registered callback's (ours plus one: what a driver passes when its
/// callback runs before it stored the cookie `CmRegisterCallbackEx` returned, or after it
/// forgot it). Returns `[status bits, 1 if an ObjectID was written, 1 if an ObjectName was
/// handed out, 0]`; a name handed out anyway is released.
pub fn key_id_bad_cookie(handle: u64) -> [u64; 4] {
    let object = match reference_key(handle) {
        Ok(o) => o,
        Err(status) => return [bits(status), 0, 0, 0],
    };
    // SAFETY: our cookie's storage, read once.
    let bogus = unsafe { cookie().read() }.wrapping_add(1);
    let mut id = 0usize;
    let mut name: *const UNICODE_STRING = null_mut();
    // SAFETY: a referenced key object, a readable cookie, writable out pointers, Flags 0.
    let s = unsafe {
        CmCallbackGetKeyObjectIDEx(&raw const bogus, object, &raw mut id, &raw mut name, 0)
    };
    let named = !name.is_null();
    if named {
        // SAFETY: a name the call handed out, released once.
        unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
    }
    // SAFETY: the reference taken above, released once.
    unsafe { ObfDereferenceObject(object) };
    [bits(s), u64::from(id != 0), u64::from(named), 0]
}

/// `CmCallbackGetKeyObjectID` (the Windows 7 routine: the name stays the kernel's).
type GetKeyObjectIdFn = unsafe extern "system" fn(
    *const i64,
    *mut c_void,
    *mut usize,
    *mut *const UNICODE_STRING,
) -> NTSTATUS;

/// The Windows 7 routine's answer for the key behind `handle` (UserMode lookup, reference
/// released before returning): `[status bits, ObjectID, hash of the ObjectName, 0]`; the
/// name is the kernel's and is not released. Status `STATUS_PROCEDURE_NOT_FOUND` where the
/// system lacks the routine.
pub fn key_name_old(handle: u64) -> [u64; 4] {
    let mut name = [0u16; 24];
    for (d, c) in name.iter_mut().zip(b"CmCallbackGetKeyObjectID") {
        *d = u16::from(*c);
    }
    let mut us = UNICODE_STRING {
        Length: 48,
        MaximumLength: 48,
        Buffer: name.as_mut_ptr(),
    };
    // SAFETY: a valid UNICODE_STRING; PASSIVE_LEVEL (IRP_MJ_DEVICE_CONTROL dispatch).
    let routine = unsafe { wdk_sys::ntddk::MmGetSystemRoutineAddress(&raw mut us) };
    if routine.is_null() {
        return [0xC000_007A, 0, 0, 0];
    }
    // SAFETY: the address MmGetSystemRoutineAddress returned for CmCallbackGetKeyObjectID.
    let get = unsafe { core::mem::transmute::<*mut c_void, GetKeyObjectIdFn>(routine) };
    let object = match reference_key(handle) {
        Ok(o) => o,
        Err(status) => return [bits(status), 0, 0, 0],
    };
    let mut id = 0usize;
    let mut kernel_name: *const UNICODE_STRING = null_mut();
    // SAFETY: a referenced key object, our registered cookie, writable out pointers.
    let s = unsafe { get(cookie(), object, &raw mut id, &raw mut kernel_name) };
    let hash = if s == 0 && !kernel_name.is_null() {
        crate::lifecycle::hash(kernel_name)
    } else {
        0
    };
    // SAFETY: the reference ObReferenceObjectByHandle took above, released once.
    unsafe { ObfDereferenceObject(object) };
    [bits(s), id as u64, hash, 0]
}
