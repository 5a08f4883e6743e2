//! Hive lifecycle and process identity as the test driver sees them: a log of the registry
//! notifications of loads, unloads, opens and closes, and of process creations and exits, each
//! with who the kernel says is calling (`PsGetCurrentProcessId`, the process of
//! `IoGetCurrentProcess`, its start key), plus two requests that exercise the routines
//! directly: attaching to a process (`KeStackAttachProcess`) and reading a start key.
//!
//! `PsGetProcessStartKey` exists from Windows 10 1703 on: it is resolved with
//! `MmGetSystemRoutineAddress` at start, and a key of 0 means "not available".

use core::{
    ffi::c_void,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use wdk_sys::{NTSTATUS, STATUS_SUCCESS, UNICODE_STRING, ntddk::MmGetSystemRoutineAddress};

use crate::registry::{
    CmCallbackGetKeyObjectIDEx, CmCallbackReleaseKeyObjectIDEx, ObfDereferenceObject,
};

unsafe extern "system" {
    fn PsGetCurrentProcessId() -> *mut c_void;
    fn PsGetCurrentThreadId() -> *mut c_void;
    fn PsGetCurrentThread() -> *mut c_void;
    fn PsGetThreadId(thread: *mut c_void) -> *mut c_void;
    fn IoGetCurrentProcess() -> *mut c_void;
    fn PsGetCurrentProcess() -> *mut c_void;
    fn PsGetProcessId(process: *mut c_void) -> *mut c_void;
    fn PsLookupProcessByProcessId(pid: *mut c_void, process: *mut *mut c_void) -> NTSTATUS;
    fn KeStackAttachProcess(process: *mut c_void, apc_state: *mut c_void);
    fn KeUnstackDetachProcess(apc_state: *mut c_void);
}

/// `PsGetProcessStartKey`.
type StartKeyFn = unsafe extern "system" fn(*mut c_void) -> u64;

/// Slots per log entry.
pub const ENTRY_SLOTS: usize = 11;
/// Entries the log holds; later events are dropped (and counted).
const ENTRIES: usize = 48;
/// The log's pseudo-class of a process creation / exit notification.
const PROCESS_CREATE: u64 = 0x1000;
const PROCESS_EXIT: u64 = 0x1001;

static LOG: [[AtomicU64; ENTRY_SLOTS]; ENTRIES] =
    [const { [const { AtomicU64::new(0) }; ENTRY_SLOTS] }; ENTRIES];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);
static START_KEY: AtomicUsize = AtomicUsize::new(0);

/// Resolves the optional routines (PASSIVE_LEVEL, from DriverEntry).
pub fn start() {
    let mut name = [0u16; 20];
    for (d, c) in name.iter_mut().zip(b"PsGetProcessStartKey") {
        *d = u16::from(*c);
    }
    let mut us = UNICODE_STRING {
        Length: 40,
        MaximumLength: 40,
        Buffer: name.as_ptr().cast_mut(),
    };
    // SAFETY: a valid UNICODE_STRING; PASSIVE_LEVEL.
    let p = unsafe { MmGetSystemRoutineAddress(&raw mut us) };
    START_KEY.store(p as usize, Ordering::Relaxed);
}

/// The start key of `process`, 0 where the system lacks PsGetProcessStartKey.
fn start_key(process: *mut c_void) -> u64 {
    let f = START_KEY.load(Ordering::Relaxed);
    if f == 0 || process.is_null() {
        return 0;
    }
    // SAFETY: the address MmGetSystemRoutineAddress returned for PsGetProcessStartKey.
    let f = unsafe { core::mem::transmute::<usize, StartKeyFn>(f) };
    // SAFETY: a live process object (the current one, or one the caller references).
    unsafe { f(process) }
}

/// Clears the log and starts recording.
pub fn log_start() {
    for e in &LOG {
        for s in e {
            s.store(0, Ordering::Relaxed);
        }
    }
    NEXT.store(0, Ordering::Relaxed);
    DROPPED.store(0, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
}

/// Entry `i` (all zero past the end); slot 7 of a read past the end is the count of entries
/// recorded and slot 6 the count dropped.
pub fn log_read(i: usize) -> [u64; ENTRY_SLOTS] {
    let mut out = [0u64; ENTRY_SLOTS];
    if let Some(e) = LOG.get(i).filter(|_| i < NEXT.load(Ordering::Acquire)) {
        for (o, s) in out.iter_mut().zip(e) {
            *o = s.load(Ordering::Relaxed);
        }
    } else {
        out[6] = DROPPED.load(Ordering::Relaxed);
        out[7] = NEXT.load(Ordering::Acquire).min(ENTRIES) as u64;
    }
    out
}

fn push(entry: [u64; ENTRY_SLOTS]) {
    if !ENABLED.load(Ordering::Acquire) {
        return;
    }
    let i = NEXT.fetch_add(1, Ordering::AcqRel);
    let Some(slot) = LOG.get(i) else {
        NEXT.fetch_sub(1, Ordering::AcqRel);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    for (s, v) in slot.iter().zip(entry) {
        s.store(v, Ordering::Relaxed);
    }
}

/// FNV-1a over the UTF-16 code units of a name (0 for none).
pub fn hash(name: *const UNICODE_STRING) -> u64 {
    if name.is_null() {
        return 0;
    }
    // SAFETY: the kernel passed a valid UNICODE_STRING.
    let us = unsafe { name.read_unaligned() };
    let (len, buf) = (us.Length as usize / 2, us.Buffer);
    if buf.is_null() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..len {
        // SAFETY: `len` code units are readable.
        let c = unsafe { buf.wrapping_add(i).read_unaligned() };
        for b in c.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The hash of the name CmCallbackGetKeyObjectIDEx gives `object` (0 if none).
fn object_name_hash(object: *mut c_void) -> u64 {
    if object.is_null() {
        return 0;
    }
    let mut id = 0usize;
    let mut name: *const UNICODE_STRING = null_mut();
    // SAFETY: a live key object (pre-notifications and post-open on success), our cookie.
    let s = unsafe {
        CmCallbackGetKeyObjectIDEx(
            crate::registry::cookie(),
            object,
            &raw mut id,
            &raw mut name,
            0,
        )
    };
    if s != STATUS_SUCCESS || name.is_null() {
        return 0;
    }
    let h = hash(name);
    // SAFETY: releasing the name handed out above.
    unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
    h
}

/// The ObjectID CmCallbackGetKeyObjectIDEx gives `object` with ObjectName NULL (0 if none).
fn object_id(object: *mut c_void) -> u64 {
    if object.is_null() {
        return 0;
    }
    let mut id = 0usize;
    // SAFETY: a live key object (a pre-notification's Object), our cookie, no name, Flags 0.
    let s = unsafe {
        CmCallbackGetKeyObjectIDEx(
            crate::registry::cookie(),
            object,
            &raw mut id,
            null_mut(),
            0,
        )
    };
    if s == STATUS_SUCCESS { id as u64 } else { 0 }
}

/// Reads a field of a notification structure.
///
/// # Safety
/// `base + offset` must be a readable `T` inside the structure the kernel passed.
unsafe fn field<T: Copy>(base: *mut c_void, offset: usize) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe {
        base.cast::<u8>()
            .wrapping_add(offset)
            .cast::<T>()
            .read_unaligned()
    }
}

/// Who the kernel says is calling: (PsGetCurrentProcessId, the current process's pid, its
/// start key).
fn caller() -> (u64, u64, u64) {
    // SAFETY: callable at any IRQL the callbacks run at.
    let owner = unsafe { PsGetCurrentProcessId() } as u64;
    // SAFETY: as above.
    let current = unsafe { IoGetCurrentProcess() };
    // SAFETY: a live process object.
    let current_pid = unsafe { PsGetProcessId(current) } as u64;
    (owner, current_pid, start_key(current))
}

/// Records a registry notification. Entry: class, PsGetCurrentProcessId, current process
/// pid, its start key, Object, hash of the name passed (KeyName / CompleteName), hash of the
/// Object's name, and a class-specific word (load: RootHandle non-NULL | UserEvent non-NULL
/// << 1 | Flags << 32; unload: UserEvent non-NULL; open: Attributes | CheckAccessMode << 32;
/// pre-rename and pre-delete: the ObjectID of the Object; posts: Status; post-load: the Object
/// of its PreInformation and that object's name), and `PsGetCurrentThreadId` (a callback
/// runs "in the context of the thread that is performing the registry operation", Learn
/// `EX_CALLBACK_FUNCTION` Remarks: a pre and its post log the same thread), then
/// `PsGetCurrentThread` (the current thread's ETHREAD) and `PsGetThreadId` of it (WRK
/// `ps/pshelper.c`: `Thread->Cid.UniqueThread`, what `PsGetCurrentThreadId` answers). The name passed of a
/// pre-rename is its NewName; the Object's name of a successful post-open/create/rename/delete
/// is fetched there (post-delete: the deleted key's object, which NtDeleteKey still
/// references, WRK `ntapi.c`).
pub fn record(class: usize, info: *mut c_void) {
    if !ENABLED.load(Ordering::Acquire) || info.is_null() {
        return;
    }
    let (owner, current, key) = caller();
    let word = |offset: usize| -> u64 {
        // SAFETY: only offsets inside the structure documented for `class` are read below
        // (REG_LOAD_KEY_INFORMATION 0x58, REG_UNLOAD_KEY_INFORMATION 0x28,
        // REG_CREATE_KEY_INFORMATION_V1 0x88, REG_KEY_HANDLE_CLOSE_INFORMATION 0x20,
        // REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION 0x18,
        // REG_RENAME_KEY_INFORMATION 0x28, REG_DELETE_KEY_INFORMATION 0x20,
        // REG_POST_OPERATION_INFORMATION 0x38 bytes).
        unsafe { field::<u64>(info, offset) }
    };
    let name_at = |offset: usize| hash(word(offset) as usize as *const UNICODE_STRING);
    let object = word(0x00) as usize as *mut c_void;
    let (object, name, object_name, extra): (*mut c_void, u64, u64, u64) = match class {
        // RegNtPreLoadKey: REG_LOAD_KEY_INFORMATION: Object, KeyName 0x08, Flags 0x18,
        // UserEvent 0x28, RootHandle 0x38.
        32 => (
            object,
            name_at(0x08),
            object_name_hash(object),
            u64::from(word(0x38) != 0)
                | u64::from(word(0x28) != 0) << 1
                | (word(0x18) & 0xFFFF_FFFF) << 32,
        ),
        // RegNtPreUnLoadKey: REG_UNLOAD_KEY_INFORMATION: Object, UserEvent 0x08.
        34 => (
            object,
            0,
            object_name_hash(object),
            u64::from(word(0x08) != 0),
        ),
        // RegNtPreCreateKeyEx / RegNtPreOpenKeyEx: REG_CREATE_KEY_INFORMATION_V1:
        // CompleteName 0x00, Attributes 0x7C, CheckAccessMode 0x80.
        26 | 28 => (
            null_mut(),
            name_at(0x00),
            0,
            (word(0x78) >> 32) | (word(0x80) & 0xFF) << 32,
        ),
        // RegNtPreKeyHandleClose: REG_KEY_HANDLE_CLOSE_INFORMATION: Object.
        14 => (object, 0, object_name_hash(object), 0),
        // RegNtCallbackObjectContextCleanup: REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION: Object,
        // ObjectContext 0x08 (the object is going: its name is not asked for).
        40 => (object, 0, 0, u64::from(word(0x08) != 0)),
        // RegNtPreRenameKey (4): REG_RENAME_KEY_INFORMATION: Object, NewName 0x08.
        4 => (
            object,
            name_at(0x08),
            object_name_hash(object),
            object_id(object),
        ),
        // RegNtPreDeleteKey (0): REG_DELETE_KEY_INFORMATION (Learn): Object.
        0 => (object, 0, object_name_hash(object), object_id(object)),
        // RegNtPostLoadKey: REG_POST_OPERATION_INFORMATION Status 0x08, PreInformation
        // 0x10 (the load's REG_LOAD_KEY_INFORMATION, valid during the post: Learn
        // REG_POST_OPERATION_INFORMATION): logged is that structure's Object as the post
        // sees it, and its name on STATUS_SUCCESS (the readings of `Object`: the model's
        // `hive::LoadObject`).
        33 => {
            let status = word(0x08) & 0xFFFF_FFFF;
            let pre = word(0x10) as usize as *mut c_void;
            let load_object: *mut c_void = if pre.is_null() {
                null_mut()
            } else {
                // SAFETY: PreInformation points at the load's REG_LOAD_KEY_INFORMATION,
                // whose first field is Object.
                unsafe { field(pre, 0x00) }
            };
            let name = if status == 0 && !load_object.is_null() {
                object_name_hash(load_object)
            } else {
                0
            };
            (load_object, 0, name, status)
        }
        // Posts: REG_POST_OPERATION_INFORMATION: Object (valid only on STATUS_SUCCESS),
        // Status 0x08.
        // RegNtPostRenameKey (19): the Object is the renamed key's on STATUS_SUCCESS.
        // RegNtPostDeleteKey (15): the Object is the deleted key's, still referenced.
        // RegNtPostUnLoadKey (35): the name slot carries the Object of its PreInformation
        // (the unload's REG_UNLOAD_KEY_INFORMATION, valid during the post: Learn
        // REG_POST_OPERATION_INFORMATION), the object the pre named.
        27 | 29 | 35 | 25 | 19 | 15 => {
            let status = word(0x08) & 0xFFFF_FFFF;
            let name = if status == 0 && matches!(class, 27 | 29 | 19 | 15) {
                object_name_hash(object)
            } else {
                0
            };
            let pre = word(0x10) as usize as *mut c_void;
            let pre_object = if class == 35 && !pre.is_null() {
                // SAFETY: PreInformation points at the unload's REG_UNLOAD_KEY_INFORMATION,
                // whose first field is Object.
                unsafe { field::<u64>(pre, 0x00) }
            } else {
                0
            };
            (object, pre_object, name, status)
        }
        _ => return,
    };
    // SAFETY: callable at any IRQL the callbacks run at.
    let thread = unsafe { PsGetCurrentThreadId() } as u64;
    // SAFETY: as above.
    let ethread = unsafe { PsGetCurrentThread() };
    // SAFETY: the current thread's ETHREAD, live while it runs; any IRQL.
    let ethread_id = unsafe { PsGetThreadId(ethread) } as u64;
    push([
        class as u64,
        owner,
        current,
        key,
        object as u64,
        name,
        object_name,
        extra,
        thread,
        ethread as u64,
        ethread_id,
    ]);
}

/// Records a process creation or exit: pseudo-class, PsGetCurrentProcessId, the notified pid,
/// the notified process's start key.
pub fn record_process(process: *mut c_void, pid: *mut c_void, exit: bool) {
    if !ENABLED.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: callable in the notify routine.
    let owner = unsafe { PsGetCurrentProcessId() } as u64;
    push([
        if exit { PROCESS_EXIT } else { PROCESS_CREATE },
        owner,
        pid as u64,
        start_key(process),
        process as u64,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
}

/// IOCTL_ATTACH: attaches to process `pid` and reports who the kernel says is calling before,
/// during and after: [PsGetCurrentProcessId inside, IoGetCurrentProcess's pid inside,
/// PsGetCurrentProcess's pid inside, (PsGetCurrentProcessId after << 32) | current pid
/// after]; all zero with slot 3 = the status if the lookup fails.
pub fn attach(pid: u64) -> [u64; 4] {
    let mut process: *mut c_void = null_mut();
    // SAFETY: PASSIVE_LEVEL; a valid out pointer; the pid is only a number.
    let s = unsafe { PsLookupProcessByProcessId(pid as usize as *mut c_void, &raw mut process) };
    if s != STATUS_SUCCESS {
        #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
        return [0, 0, 0, u64::from(s as u32)];
    }
    // KAPC_STATE is 0x30 bytes on x64: caller storage, here on the stack.
    let mut apc_state = [0u64; 6];
    // SAFETY: a referenced process object and KAPC_STATE storage; PASSIVE_LEVEL.
    unsafe { KeStackAttachProcess(process, apc_state.as_mut_ptr().cast()) };
    let (owner, current, _) = caller();
    // SAFETY: as in `caller`.
    let ps_process = unsafe { PsGetCurrentProcess() };
    // SAFETY: a live process object.
    let ps_current = unsafe { PsGetProcessId(ps_process) } as u64;
    // SAFETY: the KAPC_STATE of the attach above, innermost.
    unsafe { KeUnstackDetachProcess(apc_state.as_mut_ptr().cast()) };
    let (owner_after, current_after, _) = caller();
    // SAFETY: the reference PsLookupProcessByProcessId took.
    unsafe { ObfDereferenceObject(process) };
    [
        owner,
        current,
        ps_current,
        owner_after << 32 | current_after,
    ]
}

/// IOCTL_START_KEY: [1, PsGetProcessStartKey(process of `pid`), PsGetProcessId, 0], or
/// [0, 0, 0, status] if there is no such process; slot 1 is 0 without the routine.
pub fn start_key_of(pid: u64) -> [u64; 4] {
    let mut process: *mut c_void = null_mut();
    // SAFETY: PASSIVE_LEVEL; a valid out pointer.
    let s = unsafe { PsLookupProcessByProcessId(pid as usize as *mut c_void, &raw mut process) };
    if s != STATUS_SUCCESS {
        #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
        return [0, 0, 0, u64::from(s as u32)];
    }
    let key = start_key(process);
    // SAFETY: a referenced process object.
    let id = unsafe { PsGetProcessId(process) } as u64;
    // SAFETY: the reference PsLookupProcessByProcessId took.
    unsafe { ObfDereferenceObject(process) };
    [1, key, id, 0]
}

/// IOCTL_SYSTEM_PROCESS: the System process as a driver reaches it through the
/// `PsInitialSystemProcess` data export (wdm.h `extern PEPROCESS PsInitialSystemProcess`),
/// resolved with `MmGetSystemRoutineAddress` and read as hivetrack does
/// (`driver/src/callbacks.rs` `holder_process`, a kernel handle's holder):
/// [bit 0 resolved | bit 1 the variable holds a process | bit 2 it is the object
/// `PsLookupProcessByProcessId(4)` answers, PsGetProcessId of it, its start key,
/// (bit 32: `IoGetCurrentProcess` is it while attached to it) | PsGetCurrentProcessId while
/// attached]. Slots 1 to 3 are 0 when the variable is missing or NULL.
pub fn system_process() -> [u64; 4] {
    let mut name = [0u16; 22];
    for (d, c) in name.iter_mut().zip(b"PsInitialSystemProcess") {
        *d = u16::from(*c);
    }
    let mut us = UNICODE_STRING {
        Length: 44,
        MaximumLength: 44,
        Buffer: name.as_ptr().cast_mut(),
    };
    // SAFETY: a valid UNICODE_STRING; PASSIVE_LEVEL.
    let variable = unsafe { MmGetSystemRoutineAddress(&raw mut us) }.cast::<*mut c_void>();
    if variable.is_null() {
        return [0; 4];
    }
    // SAFETY: the exported PEPROCESS variable, set before any driver loads.
    let system = unsafe { variable.read() };
    if system.is_null() {
        return [1, 0, 0, 0];
    }
    let mut looked_up: *mut c_void = null_mut();
    // SAFETY: PASSIVE_LEVEL; a valid out pointer; pid 4 is only a number.
    let s = unsafe { PsLookupProcessByProcessId(4 as *mut c_void, &raw mut looked_up) };
    let same = s == STATUS_SUCCESS && looked_up == system;
    if s == STATUS_SUCCESS {
        // SAFETY: the reference PsLookupProcessByProcessId took.
        unsafe { ObfDereferenceObject(looked_up) };
    }
    // SAFETY: a live process object (the System process lives as long as the system).
    let id = unsafe { PsGetProcessId(system) } as u64;
    let key = start_key(system);
    let mut apc_state = [0u64; 6];
    // SAFETY: a live process object and KAPC_STATE storage; PASSIVE_LEVEL.
    unsafe { KeStackAttachProcess(system, apc_state.as_mut_ptr().cast()) };
    // SAFETY: callable at PASSIVE_LEVEL.
    let current = unsafe { IoGetCurrentProcess() };
    // SAFETY: as above.
    let owner = unsafe { PsGetCurrentProcessId() } as u64;
    // SAFETY: the KAPC_STATE of the attach above, innermost.
    unsafe { KeUnstackDetachProcess(apc_state.as_mut_ptr().cast()) };
    [
        3 | u64::from(same) << 2,
        id,
        key,
        u64::from(current == system) << 32 | owner,
    ]
}
