//! Process creation and exit (`PsSetCreateProcessNotifyRoutineEx`, resolved at run time):
//! images for the reports, and exits so that a process's records go with it.
//!
//! The routine needs an image linked with `/INTEGRITYCHECK` (wdk-build sets it) or it returns
//! `STATUS_ACCESS_DENIED`; Wine returns success and never calls back. Either way the driver
//! still tracks: an exited process's keys go when their objects are cleaned up.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicBool, Ordering},
};

use tracker::ProcessKey;
use wdk_sys::{
    HANDLE, NTSTATUS, PASSIVE_LEVEL, PEPROCESS, PPS_CREATE_NOTIFY_INFO,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_NO_MEMORY, STATUS_PROCEDURE_NOT_FOUND, STATUS_SUCCESS,
};

use crate::{callbacks, routines, tracking, waiters};

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers the notify routine.
///
/// # Errors
/// `STATUS_PROCEDURE_NOT_FOUND` where the system lacks the routine, or what it returned.
pub fn register() -> Result<(), NTSTATUS> {
    let set =
        routines::ps_set_create_process_notify_routine_ex().ok_or(STATUS_PROCEDURE_NOT_FOUND)?;
    // Documented call (docs: `PsSetCreateProcessNotifyRoutineEx`).
    // SAFETY: the routine stays valid until `unregister` removes it.
    let status = unsafe { set(Some(process_notify), 0) };
    if status != STATUS_SUCCESS {
        return Err(status);
    }
    REGISTERED.store(true, Ordering::Release);
    Ok(())
}

/// Whether the notify routine is registered (process exits are seen).
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Acquire)
}

/// Removes the notify routine; the system waits for calls in progress.
pub fn unregister() {
    if REGISTERED.swap(false, Ordering::AcqRel)
        && let Some(set) = routines::ps_set_create_process_notify_routine_ex()
    {
        // SAFETY: removes the routine registered above; PASSIVE_LEVEL (unload).
        let _ = unsafe { set(Some(process_notify), 1) };
    }
}

/// Names `process` — the current process, which the tracker knew without its image (it ran
/// before the driver) — with `SeLocateProcessImageName` (documented at `PASSIVE_LEVEL`, which
/// post-open notifications run at; resolved at run time). A process whose handle went to
/// System (a kernel handle) or another process is left unnamed.
pub fn name_current(tracker: &crate::tracking::DriverTracker, process: ProcessKey) {
    let Some(locate) = routines::se_locate_process_image_name() else {
        return;
    };
    // Learn documents SeLocateProcessImageName at PASSIVE_LEVEL only. Registry callbacks are
    // documented at PASSIVE_LEVEL (Learn `EX_CALLBACK_FUNCTION`), but have been seen at
    // APC_LEVEL in practice (System Informer; kernel-emulator `td-registry-faults`): then the
    // process is named at its next new open instead (audit 20a, M4).
    // SAFETY: always callable; the current process outlives this call.
    let current = unsafe { wdk_sys::ntddk::IoGetCurrentProcess() };
    // SAFETY: a live EPROCESS; any IRQL.
    if (unsafe { wdk_sys::ntddk::PsGetProcessId(current) }) as u64 != process.pid {
        // Not the process to name: leave its deferral, if any, to its own next open
        // (review 20a, L3).
        return;
    }
    let passive = u32::from(crate::ffi::current_irql()) == PASSIVE_LEVEL;
    tracker.defer_naming(process, !passive);
    if !passive {
        return;
    }
    let mut name: *mut wdk_sys::UNICODE_STRING = core::ptr::null_mut();
    // Docs: SeLocateProcessImageName allocates the string; the caller frees it (ExFreePool).
    // SAFETY: a live EPROCESS and a valid out pointer; PASSIVE_LEVEL.
    let status = unsafe { locate(current.cast(), &raw mut name) };
    if status != STATUS_SUCCESS || name.is_null() {
        // It allocates the string (docs): out of memory, the process stays unnamed, which
        // the reports must say (found by the emulator's low-resources sweep once unloads
        // opened the hive root as System, td-unload-sequence).
        if status == STATUS_INSUFFICIENT_RESOURCES || status == STATUS_NO_MEMORY {
            tracker.image_not_stored();
        }
        return;
    }
    // A resident copy ([`crate::resident`]): the tracker reads it under its locks.
    // SAFETY: on success `name` is a valid counted string until freed below.
    let image = callbacks::unicode_units(unsafe { &*name });
    if crate::resident::with_copy(image, |image| tracker.process_started(process, image)).is_none()
    {
        // No memory for the copy: the name is lost, and counted.
        tracker.image_not_stored();
    }
    // SAFETY: allocated by SeLocateProcessImageName for us; freed once.
    unsafe { wdk_sys::ntddk::ExFreePool(name.cast()) };
}

/// Called at `PASSIVE_LEVEL` for every process creation (`create_info` set) and exit
/// (`create_info` null) (docs: `PCREATE_PROCESS_NOTIFY_ROUTINE_EX`).
unsafe extern "C" fn process_notify(
    process: PEPROCESS,
    process_id: HANDLE,
    create_info: PPS_CREATE_NOTIFY_INFO,
) {
    let Some(tracker) = tracking::get() else {
        return;
    };
    let key = ProcessKey {
        pid: process_id as u64,
        start_key: callbacks::start_key(process.cast::<c_void>()),
    };
    if create_info.is_null() {
        tracker.process_exited(key);
        waiters::hive_may_be_free();
        return;
    }
    // SAFETY: a non-null CreateInfo is valid for the duration of the call.
    let info = unsafe { &*create_info };
    let image = if info.ImageFileName.is_null() {
        &[][..]
    } else {
        // SAFETY: ImageFileName, when set, is a valid counted string during the call.
        callbacks::unicode_units(unsafe { &*info.ImageFileName })
    };
    // A resident copy ([`crate::resident`]): the tracker reads it under its locks.
    if crate::resident::with_copy(image, |image| tracker.process_started(key, image)).is_none() {
        // No memory for the copy: the process is recorded without its image, and the loss
        // counted (review, 2026-12-05: it went unsaid here as it did in `name_current`).
        tracker.process_started(key, &[]);
        tracker.image_not_stored();
    }
}
