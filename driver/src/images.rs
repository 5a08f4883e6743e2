//! Image loads (issue 16): every executable and DLL mapped into a user process, so that a
//! captured frame resolves to `module+offset` after the process is gone.
//!
//! `PsSetLoadImageNotifyRoutineEx` (Windows 10 1709+), else `PsSetLoadImageNotifyRoutine`,
//! both resolved at run time; removed at unload with `PsRemoveLoadImageNotifyRoutine`
//! (docs: a driver must remove its routine before it unloads). The routine runs at
//! `PASSIVE_LEVEL` (docs: `PLOAD_IMAGE_NOTIFY_ROUTINE`); `ProcessId` is 0 for a driver
//! image, which is skipped, as is any image whose `IMAGE_INFO.SystemModeImage` is set.
//! `FullImageName` may be NULL (docs): the module is then kept without a name. Windows sends
//! no unload notification, so modules are kept in load order and the reports resolve a
//! frame with the last load before the open.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicBool, Ordering},
};

use tracker::ProcessKey;
use wdk_sys::{
    NTSTATUS, PEPROCESS, STATUS_PROCEDURE_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
    ntddk::{
        IoGetCurrentProcess, ObfDereferenceObject, PsGetProcessId, PsLookupProcessByProcessId,
    },
};

use crate::{callbacks, clock, routines, tracking};

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// `IMAGE_INFO` (ntddk.h): the `Properties` bit field, then the image's base and size.
#[repr(C)]
#[allow(dead_code, reason = "the C layout: every field places the next")]
struct ImageInfo {
    /// ImageAddressingMode:8, SystemModeImage:1, ImageMappedToAllPids:1,
    /// ExtendedInfoPresent:1, MachineTypeMismatch:1, ImageSignatureLevel:4,
    /// ImageSignatureType:3, ImagePartialMap:1, Reserved:12.
    properties: u32,
    image_base: *mut c_void,
    image_selector: u32,
    image_size: usize,
    image_section_number: u32,
}

/// `IMAGE_INFO.SystemModeImage`.
const SYSTEM_MODE_IMAGE: u32 = 1 << 8;

/// Registers the notify routine.
///
/// # Errors
/// `STATUS_PROCEDURE_NOT_FOUND` where the system lacks both routines (or the one that
/// removes them), or what it returned.
pub fn register() -> Result<(), NTSTATUS> {
    // A routine that could not be removed again would be called in the unloaded image at
    // the next image load (docs, PsSetLoadImageNotifyRoutine: the driver "must remove any
    // callbacks it registers before it unloads"): no removal routine, no registration
    // (found in review).
    if routines::ps_remove_load_image_notify_routine().is_none() {
        return Err(STATUS_PROCEDURE_NOT_FOUND);
    }
    let status = if let Some(set) = routines::ps_set_load_image_notify_routine_ex() {
        // Flags 0: native images only (docs: PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE adds
        // the other architecture's).
        // SAFETY: the routine stays valid until `unregister` removes it.
        unsafe { set(Some(load_image), 0) }
    } else if let Some(set) = routines::ps_set_load_image_notify_routine() {
        // SAFETY: as above.
        unsafe { set(Some(load_image)) }
    } else {
        return Err(STATUS_PROCEDURE_NOT_FOUND);
    };
    if status != STATUS_SUCCESS {
        return Err(status);
    }
    REGISTERED.store(true, Ordering::Release);
    Ok(())
}

/// Whether image loads are seen.
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Acquire)
}

/// Removes the notify routine.
pub fn unregister() {
    if REGISTERED.swap(false, Ordering::AcqRel)
        && let Some(remove) = routines::ps_remove_load_image_notify_routine()
    {
        // SAFETY: removes the routine registered above; PASSIVE_LEVEL (unload).
        let _ = unsafe { remove(Some(load_image)) };
    }
}

/// The process key of process id `pid`, or `None` when it is gone. A DLL's notification
/// runs in the process that maps it (docs: `PLOAD_IMAGE_NOTIFY_ROUTINE`), which is then the
/// current one; otherwise (an executable mapped while its process is created) the process
/// is looked up by id.
fn process_key(pid: *mut c_void) -> Option<ProcessKey> {
    // SAFETY: always callable; the process whose address space is current.
    let current = unsafe { IoGetCurrentProcess() };
    // SAFETY: a live EPROCESS; any IRQL.
    if unsafe { PsGetProcessId(current) } == pid {
        return Some(ProcessKey {
            pid: pid as u64,
            start_key: callbacks::start_key(current.cast()),
        });
    }
    let mut process: PEPROCESS = core::ptr::null_mut();
    // PASSIVE_LEVEL (docs: PsLookupProcessByProcessId, <= APC_LEVEL).
    // SAFETY: `process` receives a referenced EPROCESS on success.
    let status = unsafe { PsLookupProcessByProcessId(pid, &raw mut process) };
    if status != STATUS_SUCCESS || process.is_null() {
        return None;
    }
    let key = ProcessKey {
        pid: pid as u64,
        start_key: callbacks::start_key(process.cast()),
    };
    // SAFETY: drops the reference PsLookupProcessByProcessId took.
    unsafe { ObfDereferenceObject(process.cast()) };
    Some(key)
}

/// Called at `PASSIVE_LEVEL` for every image mapped (docs: `PLOAD_IMAGE_NOTIFY_ROUTINE`).
unsafe extern "C" fn load_image(
    full_image_name: *mut UNICODE_STRING,
    process_id: *mut c_void,
    image_info: *mut c_void,
) {
    let Some(tracker) = tracking::get() else {
        return;
    };
    if process_id.is_null() || image_info.is_null() {
        return;
    }
    // SAFETY: the system passes a valid IMAGE_INFO for the duration of the call.
    let info = unsafe { &*image_info.cast::<ImageInfo>() };
    if info.properties & SYSTEM_MODE_IMAGE != 0 {
        return;
    }
    let name = if full_image_name.is_null() {
        &[][..]
    } else {
        // SAFETY: a non-null FullImageName is a valid counted string during the call.
        callbacks::unicode_units(unsafe { &*full_image_name })
    };
    let Some(key) = process_key(process_id) else {
        tracker.image_load_unknown();
        return;
    };
    let loaded = |name: &[u16]| {
        tracker.image_loaded(
            key,
            info.image_base as u64,
            info.image_size as u64,
            name,
            clock::now(),
        );
    };
    // A resident copy ([`crate::resident`]): the tracker reads it under its locks.
    if crate::resident::with_copy(name, loaded).is_none() {
        loaded(&[]);
    }
}
