//! Processes: creation and exit with the process-notify routines a driver registered
//! (PsSetCreateProcessNotifyRoutine and PsSetCreateProcessNotifyRoutineEx with
//! PS_CREATE_NOTIFY_INFO), handle inheritance at creation, and exit, which delivers the exit
//! notification and then closes every handle of the process (each key handle close is a
//! registry notification in that process's context). The routines run inside a critical
//! region (Learn, PsSetCreateProcessNotifyRoutineEx: "at PASSIVE_LEVEL inside a critical
//! region with normal kernel APCs disabled"); removing a routine from inside a call of it is a
//! verifier violation ("A driver must not make this call from its implementation of the
//! PCREATE_PROCESS_NOTIFY_ROUTINE_EX callback routine").
//!
//! Order at exit (exit notification before the handle-table sweep): ReactOS
//! `ntoskrnl/ps/kill.c` `PspExitThread`, whose last thread calls `PspExitProcess(TRUE, …)`
//! (it runs `PspRunCreateProcessNotifyRoutines(Process, FALSE)`) and only then
//! `ObKillProcess` (the handle table); Learn documents the routine as called when the last
//! thread exits. Until 2026-12-05 this was marked an inference.
//!
//! Identity as the kernel has it:
//! - `PsGetProcessStartKey` (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetprocessstartkey>,
//!   Windows 10 1703+): a key unique to each process, which the model hands out from a counter
//!   that only grows during one emulated boot (the encoding Windows uses is not documented).
//! - Threads attached to another process (`KeStackAttachProcess` /
//!   `KeUnstackDetachProcess`, <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-kestackattachprocess>):
//!   `PsGetCurrentProcessId` still names the thread's own process ("identifies the current
//!   thread's process"; ReactOS: `PsGetCurrentThread()->Cid.UniqueProcess`) while
//!   `IoGetCurrentProcess` / `PsGetCurrentProcess` return the attached one (ReactOS:
//!   `KeGetCurrentThread()->ApcState.Process`), and handles created without
//!   `OBJ_KERNEL_HANDLE` go into the attached process's table (ReactOS `ObpCreateHandle`:
//!   `PsGetCurrentProcess()->ObjectTable`).
//! - PIDs reused: a PID is a handle in `PspCidTable`, freed when the process object is deleted
//!   (its last reference) and handed out again by `ExCreateHandle` (ReactOS ntoskrnl/ps). The
//!   model's default allocator never reuses; [`create_process_with_pid`] reuses on request,
//!   once nothing references the old process object.

pub use crate::nt::ps::image::load_image;
pub use crate::nt::ps::thread::{UserStack, with_user_stack};

use std::collections::BTreeMap;
use std::ffi::c_void;

use crate::machine::cpu::{self, PASSIVE_LEVEL};
use crate::nt::cm::hive;
use crate::nt::exports::Export;
use crate::nt::io;
use crate::nt::kernel::{self, call_driver};
use crate::nt::layout::{OwnedUnicode, UnicodeString};
use crate::nt::status::{
    NtStatus, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NO_MEMORY,
    STATUS_SUCCESS, nt_success,
};
use crate::verifier::bugcheck::require_irql;

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
    /// What PsGetProcessStartKey answers for it.
    pub start_key: u64,
    /// What PsGetProcessCreateTimeQuadPart answers for it: the system time at creation.
    pub create_time: i64,
    /// A 32-bit (x86) program under Wow64 ([`set_wow64`], [`IoIs32bitProcess`]).
    pub wow64: bool,
}

/// The start key of the System process (the first process of the boot).
pub const SYSTEM_START_KEY: u64 = START_KEY_BOOT | 1;
/// The model's boot part of every start key (one emulated boot).
const START_KEY_BOOT: u64 = 1 << 32;

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
    /// Start keys handed out so far (System has the first).
    start_keys: u64,
    /// Exited processes by pid: their EPROCESS, which keeps the pid taken while referenced.
    exited: BTreeMap<u32, usize>,
    /// Fake ETHREADs handed out by PsGetCurrentThread, one per model thread: address -> the
    /// thread's own process and its id (`io::current_thread_id`, its `Cid.UniqueThread`).
    threads: BTreeMap<usize, (u32, usize)>,
    /// ETHREADs of threads whose process exited: never handed out again, still scanned.
    exited_threads: Vec<usize>,
}

impl ProcessState {
    /// Every fake EPROCESS and ETHREAD page handed out and still allocated (live processes,
    /// exited ones still referenced, threads): addresses a driver gets from `Ps*` routines
    /// and must never copy into an answer (the IOCTL fuzz scans for them).
    #[must_use]
    pub fn object_pages(&self) -> Vec<(usize, usize)> {
        self.processes
            .values()
            .map(|p| p.eprocess)
            .chain(self.exited.values().copied())
            .chain(self.threads.keys().copied())
            .chain(self.exited_threads.iter().copied())
            .map(|a| (a, a + 0x1000))
            .collect()
    }

    /// Notify routines left registered, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        self.routines
            .iter()
            .map(|(f, ex)| {
                format!(
                    "process notify routine {} ({}) still registered: Windows would call into unloaded code (bugcheck 0xCE)",
                    crate::verifier::bugcheck::symbolize(*f),
                    if *ex { "Ex" } else { "classic" }
                )
            })
            .collect()
    }
}

thread_local! {
    /// The process-notify routines this thread is inside (innermost last).
    static INSIDE: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls notify routine `f` through `call` the way the kernel does: inside a critical region
/// (Learn, PsSetCreateProcessNotifyRoutineEx: "calls the driver's process-notify routine at
/// PASSIVE_LEVEL inside a critical region with normal kernel APCs disabled";
/// `sync::in_critical_region`), with the thread marked as inside `f` for
/// [`set_routine`]'s self-removal check.
fn call_routine(f: usize, operation: &str, call: impl FnOnce()) {
    INSIDE.with(|i| i.borrow_mut().push(f));
    crate::nt::ke::sync::in_critical_region(|| call_driver(operation, call));
    INSIDE.with(|i| i.borrow_mut().pop());
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
    if remove && INSIDE.with(|i| i.borrow().contains(&f)) {
        // Learn, PsSetCreateProcessNotifyRoutineEx (and PsSetCreateProcessNotifyRoutine): "A
        // driver must not make this call from its implementation of the
        // PCREATE_PROCESS_NOTIFY_ROUTINE_EX callback routine" — the removal waits for the
        // calls in flight, this one among them: a deadlock on Windows, reported, not hung.
        crate::verifier::bugcheck::verifier_violation(&format!(
            "{} removes process notify routine {} from inside that routine: a deadlock on Windows",
            if ex {
                "PsSetCreateProcessNotifyRoutineEx"
            } else {
                "PsSetCreateProcessNotifyRoutine"
            },
            crate::verifier::bugcheck::symbolize(f)
        ));
    }
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
    // Registering allocates the callback block first (Windows Research Kernel `ps/create.c`
    // PsSetCreateProcessNotifyRoutine: `ExAllocateCallBack` NULL is
    // STATUS_INSUFFICIENT_RESOURCES; fidelity audit 18b, F7). Removing allocates nothing.
    if remove == 0 && kernel::should_fail("PsSetCreateProcessNotifyRoutineEx", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
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

/// Creates a process (`parent` 0 for none). With `inherit` (CreateProcess bInheritHandles),
/// the parent's key handles that hold OBJ_INHERIT are copied into the child at their own
/// values ([`hive::inherit_handles`], WRK `ob/obinit.c` ObInitProcess; no registry
/// notification); its other handles stay the parent's alone. Ex routines may veto through
/// CreationStatus; then the process does not exist and the vetoing status is returned.
///
/// # Errors
/// The CreationStatus a notify routine set.
pub fn create_process(parent: u32, image: &str, inherit: bool) -> Result<u32, NtStatus> {
    create(parent, image, inherit, None)
}

/// [`create_process`] with the PID of an exited process: Windows hands a freed PID out again
/// (it is a `PspCidTable` handle, freed when the process object is deleted). The pid must
/// belong to no live process, and nothing may still reference the old process object
/// (PsLookupProcessByProcessId without ObDereferenceObject keeps it taken).
///
/// # Errors
/// `STATUS_OBJECT_NAME_COLLISION` (a model-API answer) if the pid is still taken, or the
/// CreationStatus a notify routine set.
pub fn create_process_with_pid(
    parent: u32,
    image: &str,
    inherit: bool,
    pid: u32,
) -> Result<u32, NtStatus> {
    create(parent, image, inherit, Some(pid))
}

fn create(parent: u32, image: &str, inherit: bool, reuse: Option<u32>) -> Result<u32, NtStatus> {
    let eprocess = fake_eprocess();
    let pid = kernel::with(|k| {
        let referenced = |e: &usize| k.objects.references.get(e).copied().unwrap_or(0) > 0;
        let p = &mut k.processes;
        let pid = if let Some(pid) = reuse {
            if pid == 0
                || pid == 4
                || p.processes.contains_key(&pid)
                || p.exited.get(&pid).is_some_and(referenced)
            {
                return None;
            }
            p.exited.remove(&pid);
            pid
        } else {
            // A replayed capture may have taken pids of its own: the next free one.
            p.next_pid = p.next_pid.max(2000) + 4;
            while p.processes.contains_key(&p.next_pid) || p.exited.contains_key(&p.next_pid) {
                p.next_pid += 4;
            }
            p.next_pid
        };
        p.start_keys = p.start_keys.max(1) + 1;
        p.processes.insert(
            pid,
            Process {
                image: image.to_string(),
                parent,
                eprocess,
                start_key: START_KEY_BOOT | p.start_keys,
                create_time: i64::try_from(crate::machine::cpu::system_time()).unwrap_or(i64::MAX),
                wow64: false,
            },
        );
        Some(pid)
    });
    let Some(pid) = pid else {
        return Err(crate::nt::status::STATUS_OBJECT_NAME_COLLISION);
    };
    if inherit {
        let _ = hive::inherit_handles(parent, pid);
    }
    let name = OwnedUnicode::pageable(image);
    let command = OwnedUnicode::pageable(&format!("\"{image}\""));
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
                call_routine(f, "CreateProcessNotifyEx(create)", || unsafe {
                    g(eprocess as *mut c_void, pid as usize, info_ptr);
                });
                if !nt_success(info.creation_status) {
                    status = info.creation_status;
                }
            } else {
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE.
                let g = unsafe { std::mem::transmute::<usize, NotifyFn>(f) };
                // SAFETY: calling the routine with (ParentId, ProcessId, Create = TRUE).
                call_routine(f, "CreateProcessNotify(create)", || unsafe {
                    g(parent as usize, pid as usize, 1);
                });
            }
            leave(f);
        }
    });
    if nt_success(status) {
        // The first thread starts: it reports the main image and ntdll.dll (image.rs).
        crate::nt::ps::image::notify_process_created(pid, image);
        Ok(pid)
    } else {
        for h in kernel::with(|k| k.hives.handles_of(pid)) {
            let _ = hive::close_key(pid, h);
        }
        kernel::with(|k| k.processes.processes.remove(&pid));
        Err(status)
    }
}

/// The start key PsGetProcessStartKey answers for `pid` (None if no such live process).
#[must_use]
pub fn start_key_of(pid: u32) -> Option<u64> {
    if pid == 4 {
        return Some(SYSTEM_START_KEY);
    }
    kernel::with(|k| k.processes.processes.get(&pid).map(|p| p.start_key))
}

/// Ends a process: exit notifications (CreateInfo NULL / Create FALSE) in its context, then
/// every handle it holds is closed.
pub fn exit_process(pid: u32) {
    exit_process_with(pid, || {});
}

/// [`exit_process`], running `between` after the exit notifications and before the handle
/// table is swept: what another processor does in that window. The last thread's
/// `PspExitProcess (TRUE, Process)` calls the notify routines before `ObKillProcess (Process)`
/// runs the table down (Windows Research Kernel `base/ntos/ps/psdelete.c` `PspExitThread`),
/// and until `ObKillProcess` waits out the process's rundown protection
/// (`base/ntos/ob/obinit.c`) a thread attached to the process still puts handles in its table
/// (`base/ntos/ob/obhandle.c` `ObReferenceProcessHandleTable` takes that protection).
pub fn exit_process_with(pid: u32, between: impl FnOnce()) {
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
                call_routine(f, "CreateProcessNotifyEx(exit)", || unsafe {
                    g(e, pid as usize, std::ptr::null_mut());
                });
            } else {
                // SAFETY: registered by the driver as a PCREATE_PROCESS_NOTIFY_ROUTINE.
                let g = unsafe { std::mem::transmute::<usize, NotifyFn>(f) };
                // SAFETY: calling the routine with (ParentId, ProcessId, Create = FALSE).
                call_routine(f, "CreateProcessNotify(exit)", || unsafe {
                    g(proc_.parent as usize, pid as usize, 0);
                });
            }
            leave(f);
        }
    });
    between();
    for h in kernel::with(|k| k.hives.handles_of(pid)) {
        let _ = hive::close_key(pid, h);
    }
    kernel::with(|k| {
        let p = &mut k.processes;
        p.processes.remove(&pid);
        p.exited.insert(pid, proc_.eprocess);
        // Its threads are gone with it: a thread of a later process of the same pid (and so
        // the same model thread id) is another ETHREAD.
        let gone: Vec<usize> = p
            .threads
            .iter()
            .filter(|(_, (owner, _))| *owner == pid)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            p.threads.remove(&t);
            p.exited_threads.push(t);
        }
    });
    crate::nt::ps::image::process_exited(pid);
}

/// The fake EPROCESS of `pid` (the System process for 4), if it exists.
fn eprocess_of(pid: u32) -> Option<usize> {
    if pid == 4 {
        return Some(cpu::system_process());
    }
    kernel::with(|k| k.processes.processes.get(&pid).map(|p| p.eprocess))
}

/// The pid and image of a fake EPROCESS.
fn process_of(eprocess: usize) -> Option<(u32, String)> {
    if eprocess != 0 && eprocess == cpu::system_process() {
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

thread_local! {
    /// The process this thread is attached to (KeStackAttachProcess), if any, and the
    /// KAPC_STATE blocks of the attachments in force, innermost last.
    static ATTACHED: std::cell::RefCell<(Option<u32>, Vec<usize>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// The process whose address space and handle table this thread uses: the attached process,
/// else the thread's own ([`io::current_pid`]). IoGetCurrentProcess answers this one.
#[must_use]
pub fn address_space_pid() -> u32 {
    ATTACHED
        .with(|a| a.borrow().0)
        .unwrap_or_else(io::current_pid)
}

/// Whether this thread is attached to another process (KeStackAttachProcess,
/// [`attached`]): ReactOS `KeIsAttachedProcess`.
#[must_use]
pub fn is_attached() -> bool {
    ATTACHED.with(|a| a.borrow().0.is_some())
}

/// The handle table a thread of `pid` uses for `handle`: the System process's for a kernel
/// handle (the kernel-handle bit set), else the attached process's, else `pid`'s own.
#[must_use]
pub fn handle_table_of(pid: u32, handle: u64) -> u32 {
    if handle & crate::nt::ob::object::KERNEL_HANDLE_BIT == crate::nt::ob::object::KERNEL_HANDLE_BIT
    {
        return 4;
    }
    ATTACHED.with(|a| a.borrow().0).unwrap_or(pid)
}

/// Runs `f` with this thread attached to process `pid`, as kernel code between
/// KeStackAttachProcess and KeUnstackDetachProcess runs: PsGetCurrentProcessId still answers
/// the thread's own process (set with [`io::with_pid`], e.g. by `hive::open_key`), while
/// IoGetCurrentProcess/PsGetCurrentProcess answer `pid`, and key handles opened without
/// OBJ_KERNEL_HANDLE go into `pid`'s handle table. Nests like the real routine.
pub fn attached<R>(pid: u32, f: impl FnOnce() -> R) -> R {
    let previous = ATTACHED.with(|a| a.borrow_mut().0.replace(pid));
    let r = f();
    ATTACHED.with(|a| a.borrow_mut().0 = previous);
    r
}

/// IoGetCurrentProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iogetcurrentprocess>
/// (PsGetCurrentProcess is the same routine): the current process, which for a thread
/// attached with KeStackAttachProcess is the attached one (ReactOS:
/// `KeGetCurrentThread()->ApcState.Process`), not the thread's own (PsGetCurrentProcessId).
unsafe extern "win64" fn IoGetCurrentProcess() -> usize {
    eprocess_of(address_space_pid()).unwrap_or_else(crate::machine::cpu::system_process)
}

/// What KeStackAttachProcess writes into the caller's KAPC_STATE (opaque to the caller).
const APC_STATE_MAGIC: u64 = 0x4b41_5043_5354_4154; // "KAPCSTAT"

/// KeStackAttachProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-kestackattachprocess>:
/// attaches the thread to `process`'s address space; `apc_state` (caller storage, opaque)
/// receives the previous state; every call must be matched by KeUnstackDetachProcess.
/// IRQL < DISPATCH_LEVEL.
unsafe extern "win64" fn KeStackAttachProcess(process: usize, apc_state: *mut u64) {
    require_irql("KeStackAttachProcess", crate::machine::cpu::APC_LEVEL);
    let Some((pid, _)) = process_of(process) else {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "KeStackAttachProcess({process:#x}): not a process object"
        ));
    };
    if apc_state.is_null() {
        crate::verifier::bugcheck::verifier_violation("KeStackAttachProcess: ApcState is NULL");
    }
    let previous = ATTACHED.with(|a| {
        let mut a = a.borrow_mut();
        a.1.push(apc_state as usize);
        a.0.replace(pid)
    });
    // SAFETY: the caller provides KAPC_STATE storage (0x30 bytes on x64).
    unsafe { apc_state.write_unaligned(APC_STATE_MAGIC) };
    // SAFETY: as above: the second u64 of that storage.
    unsafe {
        apc_state
            .wrapping_add(1)
            .write_unaligned(previous.map_or(u64::MAX, u64::from));
    };
}

/// KeUnstackDetachProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-keunstackdetachprocess>:
/// restores the state saved in `apc_state` by the matching KeStackAttachProcess (the
/// innermost one: a mismatch is a verifier violation). IRQL < DISPATCH_LEVEL.
unsafe extern "win64" fn KeUnstackDetachProcess(apc_state: *mut u64) {
    require_irql("KeUnstackDetachProcess", crate::machine::cpu::APC_LEVEL);
    let innermost = ATTACHED.with(|a| a.borrow().1.last().copied());
    if apc_state.is_null() || innermost != Some(apc_state as usize) {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "KeUnstackDetachProcess({apc_state:p}): not the KAPC_STATE of the innermost KeStackAttachProcess"
        ));
    }
    // SAFETY: the KAPC_STATE KeStackAttachProcess filled (checked above).
    let magic = unsafe { apc_state.read_unaligned() };
    // SAFETY: as above: its second u64.
    let previous = unsafe { apc_state.wrapping_add(1).read_unaligned() };
    if magic != APC_STATE_MAGIC {
        crate::verifier::bugcheck::verifier_violation(
            "KeUnstackDetachProcess: KAPC_STATE overwritten",
        );
    }
    ATTACHED.with(|a| {
        let mut a = a.borrow_mut();
        a.1.pop();
        a.0 = u32::try_from(previous).ok();
    });
}

/// PsGetProcessStartKey — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetprocessstartkey>:
/// a key unique to the process (Windows 10 1703+; older systems lack the export, which
/// `--hide-routine PsGetProcessStartKey` reproduces). IRQL <= DISPATCH_LEVEL.
unsafe extern "win64" fn PsGetProcessStartKey(eprocess: usize) -> u64 {
    require_irql("PsGetProcessStartKey", crate::machine::cpu::DISPATCH_LEVEL);
    let key = process_of(eprocess).and_then(|(pid, _)| start_key_of(pid));
    key.unwrap_or_else(|| {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "PsGetProcessStartKey({eprocess:#x}): not a live process object"
        ))
    })
}

/// PsGetProcessCreateTimeQuadPart — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetprocesscreatetimequadpart>:
/// the process's creation time, "the system time at which the process was created" in
/// KeQuerySystemTime units; any IRQL. The model answers the emulated system time at
/// [`create_process`] (so two processes created without the clock moving share it, as two
/// created within one clock tick can on Windows); the System process, the boot time 0.
unsafe extern "win64" fn PsGetProcessCreateTimeQuadPart(eprocess: usize) -> i64 {
    if eprocess != 0 && eprocess == cpu::system_process() {
        return 0;
    }
    let time = kernel::with(|k| {
        k.processes
            .processes
            .values()
            .find(|p| p.eprocess == eprocess)
            .map(|p| p.create_time)
    });
    time.unwrap_or_else(|| {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "PsGetProcessCreateTimeQuadPart({eprocess:#x}): not a live process object"
        ))
    })
}

/// PsGetCurrentThread — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetcurrentthread>:
/// "Returns a pointer to the current thread's ETHREAD" — each thread its own object (WRK
/// `base/ntos/ps/pshelper.c` PsGetCurrentThread is `_PsGetCurrentThread()`, the running
/// thread; `create.c` PsGetCurrentThreadId is `PsGetCurrentThread()->Cid.UniqueThread`). The
/// model hands out one fake ETHREAD per model thread, keyed by the id
/// `PsGetCurrentThreadId` reports ([`io::current_thread_id`]: per process, processor and
/// `io::with_thread` index), the same address for the thread's whole life (until its process
/// exits); its process is the thread's own, [`io::current_pid`], whatever process it is
/// attached to. Until 2026-12-06 it was one ETHREAD per process, shared by all its threads.
/// *Model limitation*: on Windows this is also the KTHREAD at gs:\[0x188\] (WRK `inc/ps.h`:
/// `#define _PsGetCurrentThread() ((PETHREAD)KeGetCurrentThread())`); the model's gs:\[0x188\]
/// is the emulated processor's one KTHREAD (`cpu::current_thread`, per OS thread), another
/// address. Neither hivetrack nor the test driver compares the two.
unsafe extern "win64" fn PsGetCurrentThread() -> usize {
    let pid = io::current_pid();
    let tid = io::current_thread_id();
    let existing = kernel::with(|k| {
        k.processes
            .threads
            .iter()
            .find(|(_, t)| **t == (pid, tid))
            .map(|(t, _)| *t)
    });
    existing.unwrap_or_else(|| {
        let thread = fake_eprocess();
        kernel::with(|k| k.processes.threads.insert(thread, (pid, tid)));
        thread
    })
}

/// PsGetThreadId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetthreadid>:
/// the thread's identifier, WRK `base/ntos/ps/pshelper.c` PsGetThreadId:
/// `Thread->Cid.UniqueThread`, so for the current thread what `PsGetCurrentThreadId`
/// answers. Any IRQL.
unsafe extern "win64" fn PsGetThreadId(thread: usize) -> usize {
    let tid = kernel::with(|k| k.processes.threads.get(&thread).map(|t| t.1));
    tid.unwrap_or_else(|| {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "PsGetThreadId({thread:#x}): not a live thread"
        ))
    })
}

/// IoThreadToProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-iothreadtoprocess>:
/// "a pointer to the process for the specified thread": the process the thread belongs to
/// (ReactOS `IoThreadToProcess`: `Thread->ThreadsProcess`), not the one it is attached to
/// (that is IoGetCurrentProcess). Any IRQL.
unsafe extern "win64" fn IoThreadToProcess(thread: usize) -> usize {
    let pid = kernel::with(|k| k.processes.threads.get(&thread).map(|t| t.0));
    pid.and_then(eprocess_of).unwrap_or_else(|| {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "IoThreadToProcess({thread:#x}): not a live thread of a live process"
        ))
    })
}

/// PsGetProcessId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetprocessid>.
unsafe extern "win64" fn PsGetProcessId(eprocess: usize) -> usize {
    match process_of(eprocess) {
        Some((pid, _)) => pid as usize,
        None => crate::verifier::bugcheck::verifier_violation(&format!(
            "PsGetProcessId({eprocess:#x}): not a process object"
        )),
    }
}

/// PsLookupProcessByProcessId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-pslookupprocessbyprocessid>:
/// returns a referenced EPROCESS the caller must release with ObDereferenceObject (an
/// unreleased one is reported at unload); STATUS_INVALID_PARAMETER for an unknown pid.
unsafe extern "win64" fn PsLookupProcessByProcessId(pid: usize, out: *mut usize) -> NtStatus {
    require_irql("PsLookupProcessByProcessId", crate::machine::cpu::APC_LEVEL);
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
    // Windows Research Kernel `se/sepaudit.c` SeLocateProcessImageName: `*pImageFileName =
    // NULL` first, and STATUS_NO_MEMORY when the copy's allocation fails (fidelity audit 18b,
    // F4; the model answered STATUS_INSUFFICIENT_RESOURCES and left the pointer alone).
    if !name.is_null() {
        // SAFETY: the caller passes a writable PUNICODE_STRING*.
        unsafe { name.write(std::ptr::null_mut()) };
    }
    let Some((_, image)) = process_of(eprocess) else {
        return STATUS_INVALID_PARAMETER;
    };
    let units: Vec<u16> = image.encode_utf16().collect();
    let bytes = units.len() * 2;
    let block = crate::nt::ex::pool::allocate(
        16 + bytes + 2,
        u32::from_le_bytes(*b"SeIn"),
        true,
        "SeLocateProcessImageName",
    );
    if block.is_null() {
        return STATUS_NO_MEMORY;
    }
    let us = UnicodeString {
        length: bytes as u16,
        maximum_length: bytes as u16 + 2,
        pad: 0,
        buffer: block.wrapping_add(16).cast(),
    };
    // SAFETY: the fresh block holds the UNICODE_STRING and the buffer after it.
    unsafe { crate::nt::layout::poke(block as usize, us) };
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

/// Marks `pid` as a 32-bit (x86) program running under Wow64, or not (a scenario step;
/// processes are 64-bit by default). Returns false when `pid` is not a live process.
#[must_use]
pub fn set_wow64(pid: u32, wow64: bool) -> bool {
    kernel::with(|k| {
        k.processes
            .processes
            .get_mut(&pid)
            .map(|process| process.wow64 = wow64)
            .is_some()
    })
}

/// IoIs32bitProcess — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iois32bitprocess>:
/// TRUE when the originator of the current request is a 32-bit user-mode process. With `irp`
/// NULL, WRK `io/iomgr/iosubs.c` IoIs32bitProcess answers for the current process context
/// (`PsGetCurrentProcess`, so the attached process when attached) and only when the previous
/// mode is UserMode (a `Zw*` call from kernel mode answers FALSE); with an IRP, for the IRP's
/// requestor when its `RequestorMode` is UserMode (`IoGetRequestorProcess`). IRQL <=
/// DISPATCH_LEVEL (Learn, Requirements). The IRP case is not used by any driver here: the
/// model answers FALSE for it, as for a driver-allocated IRP ("assumed to be 64-bit-ready").
unsafe extern "win64" fn IoIs32bitProcess(irp: usize) -> u8 {
    require_irql("IoIs32bitProcess", crate::machine::cpu::DISPATCH_LEVEL);
    if irp != 0 || crate::nt::ps::thread::previous_mode() != crate::nt::ps::thread::USER_MODE {
        return 0;
    }
    let pid = address_space_pid();
    u8::from(kernel::with(|k| {
        k.processes
            .processes
            .get(&pid)
            .is_some_and(|process| process.wow64)
    }))
}

/// The process routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("IoIs32bitProcess", IoIs32bitProcess as *const () as usize),
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
            "PsGetProcessCreateTimeQuadPart",
            PsGetProcessCreateTimeQuadPart as *const () as usize,
        ),
        Export::function(
            "PsGetCurrentThread",
            PsGetCurrentThread as *const () as usize,
        ),
        Export::function("IoThreadToProcess", IoThreadToProcess as *const () as usize),
        Export::function("PsGetThreadId", PsGetThreadId as *const () as usize),
        // A data export (wdm.h, `PsInitialSystemProcess`: "a pointer to the system process"):
        // its address is that of the variable, as MmGetSystemRoutineAddress returns it.
        Export::function(
            "PsInitialSystemProcess",
            crate::machine::cpu::initial_system_process_variable(),
        ),
        Export::function(
            "PsGetProcessStartKey",
            PsGetProcessStartKey as *const () as usize,
        ),
        Export::function(
            "KeStackAttachProcess",
            KeStackAttachProcess as *const () as usize,
        ),
        Export::function(
            "KeUnstackDetachProcess",
            KeUnstackDetachProcess as *const () as usize,
        ),
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
            crate::machine::cpu::enter_thread(30);
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
                unsafe { crate::nt::layout::read_unicode(name) }.as_deref(),
                Some(image)
            );
            // SAFETY: the block SeLocateProcessImageName allocated.
            unsafe { crate::nt::ex::pool::free(name.cast(), None, "test") };
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

    #[test]
    fn a_thread_names_its_own_process_and_creation_times_differ() {
        std::thread::spawn(|| {
            crate::machine::cpu::enter_thread(32);
            let a = create_process(4, r"\Device\HarddiskVolume2\a.exe", false).unwrap();
            crate::nt::ke::timer::advance(16);
            let b = create_process(4, r"\Device\HarddiskVolume2\b.exe", false).unwrap();
            let (ea, eb) = (eprocess_of(a).unwrap(), eprocess_of(b).unwrap());
            io::with_pid(a, || {
                attached(b, || {
                    // SAFETY: exported routines called as a driver would.
                    let thread = unsafe { PsGetCurrentThread() };
                    // SAFETY: as above, with the current thread.
                    assert_eq!(unsafe { IoThreadToProcess(thread) }, ea);
                    // SAFETY: as above.
                    assert_eq!(unsafe { IoGetCurrentProcess() }, eb);
                    // SAFETY: as above: the same thread gets the same ETHREAD.
                    assert_eq!(unsafe { PsGetCurrentThread() }, thread);
                });
            });
            // SAFETY: exported routine called with a live EPROCESS.
            let ta = unsafe { PsGetProcessCreateTimeQuadPart(ea) };
            // SAFETY: as above.
            let tb = unsafe { PsGetProcessCreateTimeQuadPart(eb) };
            assert!(tb - ta >= 160_000, "{ta} {tb}");
            exit_process(a);
            exit_process(b);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn each_thread_has_its_own_ethread_for_its_life() {
        std::thread::spawn(|| {
            crate::machine::cpu::enter_thread(33);
            let a = create_process(4, r"\Device\HarddiskVolume2\a.exe", false).unwrap();
            // SAFETY: exported routines called as a driver would.
            let mine = || unsafe { (PsGetCurrentThread(), io::current_thread_id()) };
            let (first, first_id) = io::with_pid(a, mine);
            let (second, second_id) = io::with_pid(a, || io::with_thread(1, mine));
            assert_ne!(first, second);
            assert_ne!(first_id, second_id);
            // SAFETY: as above, with a live ETHREAD.
            let ids_first = unsafe { PsGetThreadId(first) };
            // SAFETY: as above.
            let ids_second = unsafe { PsGetThreadId(second) };
            let ids = (ids_first, ids_second);
            assert_eq!(ids, (first_id, second_id));
            assert_eq!(
                io::with_pid(a, mine).0,
                first,
                "stable for the thread's life"
            );
            exit_process(a);
            let b = create_process_with_pid(4, r"\Device\HarddiskVolume2\b.exe", false, a).unwrap();
            let (again, again_id) = io::with_pid(b, mine);
            assert_eq!(again_id, first_id);
            assert_ne!(
                again, first,
                "a thread of a later process is another ETHREAD"
            );
            assert!(
                kernel::with(|k| k.processes.object_pages()).contains(&(first, first + 0x1000))
            );
            exit_process(b);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pid_reuse_waits_for_the_last_reference_and_attachments_nest() {
        std::thread::spawn(|| {
            crate::machine::cpu::enter_thread(31);
            let a = create_process(4, r"\Device\HarddiskVolume2\a.exe", false).unwrap();
            let ea = eprocess_of(a).unwrap();
            let key_a = start_key_of(a).unwrap();
            let mut looked_up = 0usize;
            // SAFETY: an exported routine called as a driver would, with a writable out pointer.
            let s = unsafe { PsLookupProcessByProcessId(a as usize, &raw mut looked_up) };
            assert_eq!(s, STATUS_SUCCESS);
            exit_process(a);
            let reuse = || create_process_with_pid(4, r"\Device\HarddiskVolume2\b.exe", false, a);
            assert_eq!(
                reuse(),
                Err(crate::nt::status::STATUS_OBJECT_NAME_COLLISION)
            );
            kernel::with(|k| k.objects.references.remove(&ea));
            let b = reuse().unwrap();
            assert_eq!(b, a);
            assert!(start_key_of(b).unwrap() > key_a);
            let c = create_process(4, r"\Device\HarddiskVolume2\c.exe", false).unwrap();
            let (eb, ec) = (eprocess_of(b).unwrap(), eprocess_of(c).unwrap());
            let (mut outer, mut inner) = ([0u64; 6], [0u64; 6]);
            io::with_pid(b, || {
                // SAFETY: exported routines called as a driver would, with KAPC_STATE storage.
                unsafe { KeStackAttachProcess(ec, outer.as_mut_ptr()) };
                // SAFETY: as above.
                assert_eq!(unsafe { IoGetCurrentProcess() }, ec);
                // SAFETY: as above.
                unsafe { KeStackAttachProcess(cpu::system_process(), inner.as_mut_ptr()) };
                // SAFETY: as above.
                let current = unsafe { IoGetCurrentProcess() };
                assert_eq!(current, cpu::system_process());
                assert_eq!(io::current_pid(), b);
                // SAFETY: the innermost attachment's KAPC_STATE.
                unsafe { KeUnstackDetachProcess(inner.as_mut_ptr()) };
                // SAFETY: as above.
                assert_eq!(unsafe { IoGetCurrentProcess() }, ec);
                // SAFETY: as above.
                unsafe { KeUnstackDetachProcess(outer.as_mut_ptr()) };
                // SAFETY: as above.
                assert_eq!(unsafe { IoGetCurrentProcess() }, eb);
            });
            exit_process(b);
            exit_process(c);
        })
        .join()
        .unwrap();
    }
}
