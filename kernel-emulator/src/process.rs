//! Processes: creation and exit with the process-notify routines a driver registered
//! (PsSetCreateProcessNotifyRoutine and PsSetCreateProcessNotifyRoutineEx with
//! PS_CREATE_NOTIFY_INFO), handle inheritance at creation, and exit, which delivers the exit
//! notification and then closes every handle of the process (each key handle close is a
//! registry notification in that process's context).
//!
//! Order at exit (exit notification before the handle-table sweep) follows the documented
//! "called when the last thread exits" with ObKillProcess running after; *inference*.

use std::collections::BTreeMap;
use std::ffi::c_void;

use crate::bugcheck::require_irql;
use crate::cpu::PASSIVE_LEVEL;
use crate::exports::Export;
use crate::hive;
use crate::io;
use crate::kernel::{self, call_driver};
use crate::layout::{OwnedUnicode, UnicodeString};
use crate::status::{NtStatus, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, nt_success};

/// STATUS_PROCEDURE_NOT_FOUND.
const STATUS_PROCEDURE_NOT_FOUND: NtStatus = 0xC000_007A_u32 as NtStatus;
/// STATUS_ACCESS_DENIED.
const STATUS_ACCESS_DENIED: NtStatus = 0xC000_0022_u32 as NtStatus;
/// IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY (/INTEGRITYCHECK).
const FORCE_INTEGRITY: u16 = 0x80;
/// At most 64 routines of each kind (docs).
const MAX_ROUTINES: usize = 64;

/// PCREATE_PROCESS_NOTIFY_ROUTINE.
type NotifyFn = unsafe extern "win64" fn(usize, usize, u8);
/// PCREATE_PROCESS_NOTIFY_ROUTINE_EX.
type NotifyExFn = unsafe extern "win64" fn(*mut c_void, usize, *mut PsCreateNotifyInfo);

/// PS_CREATE_NOTIFY_INFO (0x48).
#[repr(C)]
#[derive(Debug)]
pub struct PsCreateNotifyInfo {
    /// 0x00
    pub size: usize,
    /// 0x08: FileOpenNameAvailable:1, IsSubsystemProcess:1
    pub flags: u32,
    /// padding
    pub pad0: u32,
    /// 0x10
    pub parent_process_id: usize,
    /// 0x18: CLIENT_ID { UniqueProcess, UniqueThread }
    pub creating_thread_id: [usize; 2],
    /// 0x28
    pub file_object: *mut c_void,
    /// 0x30
    pub image_file_name: *const UnicodeString,
    /// 0x38
    pub command_line: *const UnicodeString,
    /// 0x40
    pub creation_status: NtStatus,
    /// padding
    pub pad1: u32,
}

const _: () = {
    assert!(core::mem::size_of::<PsCreateNotifyInfo>() == 0x48);
    assert!(core::mem::offset_of!(PsCreateNotifyInfo, image_file_name) == 0x30);
    assert!(core::mem::offset_of!(PsCreateNotifyInfo, creation_status) == 0x40);
};

/// One process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Image path.
    pub image: String,
    /// Parent pid.
    pub parent: u32,
    /// Fake EPROCESS.
    pub eprocess: usize,
}

/// Process state.
#[derive(Debug, Default)]
pub struct ProcessState {
    /// Live processes.
    pub processes: BTreeMap<u32, Process>,
    /// Registered routines: (function, is Ex).
    pub routines: Vec<(usize, bool)>,
    /// DllCharacteristics of the loaded driver image.
    pub driver_dll_characteristics: u16,
    /// Calls in progress, by routine (removal waits for them, as the kernel's rundown does).
    in_flight: std::collections::HashMap<usize, u32>,
    next_pid: u32,
}

impl ProcessState {
    /// Notify routines left registered, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        self.routines
            .iter()
            .map(|(f, ex)| {
                format!(
                    "process notify routine {} ({}) still registered: Windows would call into unloaded code (bugcheck 0xCE)",
                    crate::bugcheck::symbolize(*f),
                    if *ex { "Ex" } else { "classic" }
                )
            })
            .collect()
    }
}

/// Enters a call of routine `f` if it is still registered.
fn enter(f: usize, ex: bool) -> bool {
    kernel::with(|k| {
        let p = &mut k.processes;
        let registered = p.routines.contains(&(f, ex));
        if registered {
            *p.in_flight.entry(f).or_insert(0) += 1;
        }
        registered
    })
}

/// Leaves a call entered with [`enter`].
fn leave(f: usize) {
    kernel::with(|k| {
        if let Some(n) = k.processes.in_flight.get_mut(&f) {
            *n -= 1;
        }
    });
}

fn set_routine(f: usize, ex: bool, remove: bool) -> NtStatus {
    let status = update_routines(f, ex, remove);
    if remove && status == STATUS_SUCCESS {
        // Wait for calls in flight on other threads, as the kernel's rundown protection does.
        while kernel::with(|k| k.processes.in_flight.get(&f).copied().unwrap_or(0)) > 0 {
            std::thread::yield_now();
        }
    }
    status
}

fn update_routines(f: usize, ex: bool, remove: bool) -> NtStatus {
    kernel::with(|k| {
        let p = &mut k.processes;
        if remove {
            return match p.routines.iter().position(|r| *r == (f, ex)) {
                Some(i) => {
                    p.routines.remove(i);
                    STATUS_SUCCESS
                }
                None => STATUS_PROCEDURE_NOT_FOUND,
            };
        }
        if p.routines.iter().filter(|r| r.1 == ex).count() >= MAX_ROUTINES
            || p.routines.contains(&(f, ex))
        {
            return STATUS_INVALID_PARAMETER;
        }
        p.routines.push((f, ex));
        STATUS_SUCCESS
    })
}

/// PsSetCreateProcessNotifyRoutine — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-pssetcreateprocessnotifyroutine>:
/// adds or removes a routine (STATUS_PROCEDURE_NOT_FOUND when removing an unknown one).
/// PASSIVE_LEVEL.
unsafe extern "win64" fn PsSetCreateProcessNotifyRoutine(routine: usize, remove: u8) -> NtStatus {
    require_irql("PsSetCreateProcessNotifyRoutine", PASSIVE_LEVEL);
    if routine == 0 {
        return STATUS_INVALID_PARAMETER;
    }
    set_routine(routine, false, remove != 0)
}

/// PsSetCreateProcessNotifyRoutineEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-pssetcreateprocessnotifyroutineex>:
/// as above; the driver image must be linked with /INTEGRITYCHECK
/// (IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY), else STATUS_ACCESS_DENIED. PASSIVE_LEVEL.
unsafe extern "win64" fn PsSetCreateProcessNotifyRoutineEx(routine: usize, remove: u8) -> NtStatus {
    require_irql("PsSetCreateProcessNotifyRoutineEx", PASSIVE_LEVEL);
    if routine == 0 {
        return STATUS_INVALID_PARAMETER;
    }
    if remove == 0
        && kernel::with(|k| k.processes.driver_dll_characteristics & FORCE_INTEGRITY == 0)
    {
        return STATUS_ACCESS_DENIED;
    }
    set_routine(routine, true, remove != 0)
}

fn fake_eprocess() -> usize {
    let layout = std::alloc::Layout::from_size_align(0x1000, 4096).expect("layout");
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
    assert!(p != 0, "host out of memory");
    p
}

/// Creates a process (`parent` 0 for none). With `inherit`, every key handle of the parent is
/// duplicated into the child (no registry notification). Ex routines may veto through
/// CreationStatus; then the process does not exist and the vetoing status is returned.
///
/// # Errors
/// The CreationStatus a notify routine set.
pub fn create_process(parent: u32, image: &str, inherit: bool) -> Result<u32, NtStatus> {
    let pid = kernel::with(|k| {
        let p = &mut k.processes;
        p.next_pid = p.next_pid.max(2000) + 4;
        while p.processes.contains_key(&p.next_pid) {
            p.next_pid += 4;
        }
        p.next_pid
    });
    create_process_with_pid(pid, parent, image, inherit)
}

/// [`create_process`] with a given process id (a replayed capture keeps its PIDs).
///
/// # Errors
/// STATUS_INVALID_PARAMETER when `pid` is 0, 4 (System) or a live process; else as
/// [`create_process`].
pub fn create_process_with_pid(
    pid: u32,
    parent: u32,
    image: &str,
    inherit: bool,
) -> Result<u32, NtStatus> {
    if pid == 0 || pid == 4 || kernel::with(|k| k.processes.processes.contains_key(&pid)) {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let eprocess = fake_eprocess();
    kernel::with(|k| {
        k.processes.processes.insert(
            pid,
            Process {
                image: image.to_string(),
                parent,
                eprocess,
            },
        );
    });
    if inherit {
        for h in kernel::with(|k| k.hives.handles_of(parent)) {
            let _ = hive::duplicate_handle(parent, h, pid);
        }
    }
    let name = OwnedUnicode::new(image);
    let command = OwnedUnicode::new(&format!("\"{image}\""));
    let routines = kernel::with(|k| k.processes.routines.clone());
    let mut status = STATUS_SUCCESS;
    io::with_pid(parent, || {
        for (f, ex) in routines {
            if !enter(f, ex) {
                continue;
            }
            if ex {
                let mut info = PsCreateNotifyInfo {
                    size: size_of::<PsCreateNotifyInfo>(),
                    flags: 1,
                    pad0: 0,
                    parent_process_id: parent as usize,
                    creating_thread_id: [parent as usize, parent as usize + 4],
                    file_object: std::ptr::null_mut(),
                    image_file_name: name.as_ptr(),
                    command_line: command.as_ptr(),
                    creation_status: STATUS_SUCCESS,
                    pad1: 0,
                };
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE_EX.
                let g = unsafe { std::mem::transmute::<usize, NotifyExFn>(f) };
                let info_ptr = &raw mut info;
                // SAFETY: calling the routine with a live EPROCESS and PS_CREATE_NOTIFY_INFO.
                call_driver("CreateProcessNotifyEx(create)", || unsafe {
                    g(eprocess as *mut c_void, pid as usize, info_ptr);
                });
                if !nt_success(info.creation_status) {
                    status = info.creation_status;
                }
            } else {
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE.
                let g = unsafe { std::mem::transmute::<usize, NotifyFn>(f) };
                // SAFETY: calling the routine with (ParentId, ProcessId, Create = TRUE).
                call_driver("CreateProcessNotify(create)", || unsafe {
                    g(parent as usize, pid as usize, 1);
                });
            }
            leave(f);
        }
    });
    if nt_success(status) {
        Ok(pid)
    } else {
        for h in kernel::with(|k| k.hives.handles_of(pid)) {
            let _ = hive::close_key(pid, h);
        }
        kernel::with(|k| k.processes.processes.remove(&pid));
        Err(status)
    }
}

/// Ends a process: exit notifications (CreateInfo NULL / Create FALSE) in its context, then
/// every handle it holds is closed.
pub fn exit_process(pid: u32) {
    let Some(proc_) = kernel::with(|k| k.processes.processes.get(&pid).cloned()) else {
        return;
    };
    let routines = kernel::with(|k| k.processes.routines.clone());
    io::with_pid(pid, || {
        for (f, ex) in routines {
            if !enter(f, ex) {
                continue;
            }
            if ex {
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE_EX.
                let g = unsafe { std::mem::transmute::<usize, NotifyExFn>(f) };
                let e = proc_.eprocess as *mut c_void;
                // SAFETY: calling the routine with (Process, ProcessId, NULL) for an exit.
                call_driver("CreateProcessNotifyEx(exit)", || unsafe {
                    g(e, pid as usize, std::ptr::null_mut());
                });
            } else {
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE.
                let g = unsafe { std::mem::transmute::<usize, NotifyFn>(f) };
                // SAFETY: calling the routine with (ParentId, ProcessId, Create = FALSE).
                call_driver("CreateProcessNotify(exit)", || unsafe {
                    g(proc_.parent as usize, pid as usize, 0);
                });
            }
            leave(f);
        }
    });
    for h in kernel::with(|k| k.hives.handles_of(pid)) {
        let _ = hive::close_key(pid, h);
    }
    kernel::with(|k| k.processes.processes.remove(&pid));
}

/// The fake EPROCESS of `pid` (the System process for 4), if it exists.
fn eprocess_of(pid: u32) -> Option<usize> {
    if pid == 4 {
        return Some(crate::cpu::system_process());
    }
    kernel::with(|k| k.processes.processes.get(&pid).map(|p| p.eprocess))
}

/// The pid and image of a fake EPROCESS.
fn process_of(eprocess: usize) -> Option<(u32, String)> {
    if eprocess != 0 && eprocess == crate::cpu::system_process() {
        return Some((4, String::new()));
    }
    kernel::with(|k| {
        k.processes
            .processes
            .iter()
            .find(|(_, p)| p.eprocess == eprocess)
            .map(|(pid, p)| (*pid, p.image.clone()))
    })
}

/// IoGetCurrentProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetcurrentprocess>
/// (PsGetCurrentProcess is the same routine): the process on whose behalf the thread runs.
unsafe extern "win64" fn IoGetCurrentProcess() -> usize {
    eprocess_of(io::current_pid()).unwrap_or_else(crate::cpu::system_process)
}

/// PsGetProcessId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetprocessid>.
unsafe extern "win64" fn PsGetProcessId(eprocess: usize) -> usize {
    match process_of(eprocess) {
        Some((pid, _)) => pid as usize,
        None => crate::bugcheck::verifier_violation(&format!(
            "PsGetProcessId({eprocess:#x}): not a process object"
        )),
    }
}

/// PsLookupProcessByProcessId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-pslookupprocessbyprocessid>:
/// returns a referenced EPROCESS the caller must release with ObDereferenceObject (an
/// unreleased one is reported at unload); STATUS_INVALID_PARAMETER for an unknown pid.
unsafe extern "win64" fn PsLookupProcessByProcessId(pid: usize, out: *mut usize) -> NtStatus {
    require_irql("PsLookupProcessByProcessId", crate::cpu::APC_LEVEL);
    let Some(e) = u32::try_from(pid).ok().and_then(eprocess_of) else {
        return STATUS_INVALID_PARAMETER;
    };
    kernel::with(|k| *k.objects.references.entry(e).or_insert(0) += 1);
    // SAFETY: the driver passes a writable PEPROCESS.
    unsafe { out.write_unaligned(e) };
    STATUS_SUCCESS
}

/// SeLocateProcessImageName — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-selocateprocessimagename>:
/// a UNICODE_STRING with the image's full path in one pool block that the caller frees with
/// ExFreePool (tracked like any pool block). PASSIVE_LEVEL.
unsafe extern "win64" fn SeLocateProcessImageName(
    eprocess: usize,
    name: *mut *mut UnicodeString,
) -> NtStatus {
    require_irql("SeLocateProcessImageName", PASSIVE_LEVEL);
    let Some((_, image)) = process_of(eprocess) else {
        return STATUS_INVALID_PARAMETER;
    };
    let units: Vec<u16> = image.encode_utf16().collect();
    let bytes = units.len() * 2;
    let block = crate::pool::allocate(
        16 + bytes + 2,
        u32::from_le_bytes(*b"SeIn"),
        true,
        "SeLocateProcessImageName",
    );
    if block.is_null() {
        return 0xC000_009A_u32 as NtStatus;
    }
    let us = UnicodeString {
        length: bytes as u16,
        maximum_length: bytes as u16 + 2,
        pad: 0,
        buffer: block.wrapping_add(16).cast(),
    };
    // SAFETY: the fresh block holds the UNICODE_STRING and the buffer after it.
    unsafe { crate::layout::poke(block as usize, us) };
    // SAFETY: as above.
    unsafe {
        std::ptr::copy_nonoverlapping(
            units.as_ptr(),
            block.wrapping_add(16).cast::<u16>(),
            units.len(),
        );
    };
    // SAFETY: the driver passes a writable PUNICODE_STRING.
    unsafe { name.write_unaligned(block.cast()) };
    STATUS_SUCCESS
}

/// The process routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "IoGetCurrentProcess",
            IoGetCurrentProcess as *const () as usize,
        ),
        Export::function(
            "PsGetCurrentProcess",
            IoGetCurrentProcess as *const () as usize,
        ),
        Export::function("PsGetProcessId", PsGetProcessId as *const () as usize),
        Export::function(
            "PsLookupProcessByProcessId",
            PsLookupProcessByProcessId as *const () as usize,
        ),
        Export::function(
            "SeLocateProcessImageName",
            SeLocateProcessImageName as *const () as usize,
        ),
        Export::function(
            "PsSetCreateProcessNotifyRoutine",
            PsSetCreateProcessNotifyRoutine as *const () as usize,
        ),
        Export::function(
            "PsSetCreateProcessNotifyRoutineEx",
            PsSetCreateProcessNotifyRoutineEx as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_identity_routines_agree() {
        std::thread::spawn(|| {
            crate::cpu::enter_thread(30);
            let image = r"\Device\HarddiskVolume2\unit.exe";
            let pid = create_process(4, image, false).unwrap();
            // SAFETY: exported routines called as a driver would, at PASSIVE_LEVEL.
            let e = io::with_pid(pid, || unsafe { IoGetCurrentProcess() });
            // SAFETY: as above.
            assert_eq!(unsafe { PsGetProcessId(e) }, pid as usize);
            let mut looked_up = 0usize;
            // SAFETY: as above, with a writable out pointer.
            let s = unsafe { PsLookupProcessByProcessId(pid as usize, &raw mut looked_up) };
            assert_eq!((s, looked_up), (STATUS_SUCCESS, e));
            assert_eq!(
                kernel::with(|k| k.objects.references.get(&e).copied()),
                Some(1)
            );
            kernel::with(|k| k.objects.references.remove(&e));
            let mut name: *mut UnicodeString = std::ptr::null_mut();
            assert_eq!(
                // SAFETY: as above.
                unsafe { SeLocateProcessImageName(e, &raw mut name) },
                STATUS_SUCCESS
            );
            assert_eq!(
                // SAFETY: the routine returned a valid UNICODE_STRING.
                unsafe { crate::layout::read_unicode(name) }.as_deref(),
                Some(image)
            );
            // SAFETY: the block SeLocateProcessImageName allocated.
            unsafe { crate::pool::free(name.cast(), None, "test") };
            assert_eq!(
                // SAFETY: as above.
                unsafe { PsLookupProcessByProcessId(999_999, &raw mut looked_up) },
                STATUS_INVALID_PARAMETER
            );
            exit_process(pid);
        })
        .join()
        .unwrap();
    }
}
