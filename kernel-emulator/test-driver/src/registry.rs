//! The test driver's registry callback and process-notify routine: they exercise the
//! emulator's registry model the way a tracking filter does — a context allocated and attached
//! in post-open/post-create on success only, freed on RegNtCallbackObjectContextCleanup, a
//! CallContext handed from pre to post, the key name fetched and released in pre-close — and
//! count what they saw. An optional "pin" references a key object to prove the emulator
//! refuses to unload a hive a driver pins.

use core::{
    ffi::c_void,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering},
};

use wdk_sys::{DRIVER_OBJECT, NTSTATUS, STATUS_SUCCESS, UNICODE_STRING};

/// EX_CALLBACK_FUNCTION.
type RegistryCallback = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> NTSTATUS;
/// PCREATE_PROCESS_NOTIFY_ROUTINE_EX.
type ProcessNotifyEx = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void);

unsafe extern "system" {
    fn CmRegisterCallbackEx(
        function: RegistryCallback,
        altitude: *const UNICODE_STRING,
        driver: *mut c_void,
        context: *mut c_void,
        cookie: *mut i64,
        reserved: *mut c_void,
    ) -> NTSTATUS;
    fn CmUnRegisterCallback(cookie: i64) -> NTSTATUS;
    fn CmSetCallbackObjectContext(
        object: *mut c_void,
        cookie: *const i64,
        new_context: *mut c_void,
        old_context: *mut *mut c_void,
    ) -> NTSTATUS;
    pub(crate) fn CmCallbackGetKeyObjectIDEx(
        cookie: *const i64,
        object: *mut c_void,
        object_id: *mut usize,
        object_name: *mut *const UNICODE_STRING,
        flags: u32,
    ) -> NTSTATUS;
    pub(crate) fn CmCallbackReleaseKeyObjectIDEx(name: *const UNICODE_STRING);
    fn PsSetCreateProcessNotifyRoutineEx(routine: ProcessNotifyEx, remove: u8) -> NTSTATUS;
    fn ObfReferenceObject(object: *mut c_void) -> isize;
    pub(crate) fn ObfDereferenceObject(object: *mut c_void) -> isize;
    fn ExAllocatePool2(flags: u64, size: usize, tag: u32) -> *mut c_void;
    fn ExFreePoolWithTag(p: *mut c_void, tag: u32);
    fn PsGetCurrentProcessId() -> *mut c_void;
    pub(crate) fn KeAreApcsDisabled() -> u8;
}

const POOL_FLAG_NON_PAGED: u64 = 0x40;
const CONTEXT_TAG: u32 = u32::from_le_bytes(*b"kctx");
const CALL_CONTEXT_MAGIC: usize = 0x0CA1_1C0E;

// Counter slots (IOCTL_STATS block n returns slots 4n..4n+4).
const POST_SUCCESS: usize = 0;
const CONTEXTS_SET: usize = 1;
const CONTEXTS_FREED: usize = 2;
const CALL_CONTEXT_MISMATCH: usize = 3;
const PRE_CLOSE: usize = 4;
const POST_CLOSE: usize = 5;
const NAMES_OK: usize = 6;
const POST_FAILED: usize = 7;
const PROCESS_CREATES: usize = 8;
const PROCESS_EXITS: usize = 9;
const PRE_OPEN: usize = 10;
const NOT_V1: usize = 11;
const PROCESS_NOTIFY_STATUS: usize = 12;
const PRE_UNLOAD: usize = 13;
const POST_LOAD: usize = 14;
const POST_REPARSE: usize = 15; // post-open/create with STATUS_REPARSE
const POST_PREDEFINED: usize = 16; // post-open/create with STATUS_PREDEFINED_HANDLE
const PRE_OPEN_RELATIVE: usize = 17; // pre-open/create with a RootObject
const ROOT_CONTEXT_SEEN: usize = 18; // ... whose RootObjectContext is ours
const LAST_POST_STATUS: usize = 19; // (a value) the last post-open/create Status
const LAST_CLOSE_PID: usize = 20; // (a value) PsGetCurrentProcessId in the last pre-close
const LAST_CLEANUP_PID: usize = 21; // (a value) PsGetCurrentProcessId in the last cleanup
const PRE_CLOSE_NO_CONTEXT: usize = 22; // pre-close of an object with no context of ours
const NAME_TOUCHED: usize = 23; // key names read again at PASSIVE_LEVEL after a raise
const ABSOLUTE_ROOT_REGISTRY: usize = 24; // pre-open/create, absolute name, RootObject \REGISTRY
const ABSOLUTE_ROOT_OTHER: usize = 25; // ... absolute name, RootObject NULL or another key
const POST_CLOSE_NAMED: usize = 26; // post-close whose Object CmCallbackGetKeyObjectIDEx named
const PROCESS_NOTIFY_APCS_DISABLED: usize = 27; // process notifications with KeAreApcsDisabled TRUE

const STATUS_REPARSE: NTSTATUS = 0x104;
const STATUS_PREDEFINED_HANDLE: NTSTATUS = 0x4000_0016;

static COUNTERS: [AtomicU64; 28] = [const { AtomicU64::new(0) }; 28];

/// Name buffers (UTF-16): the last key name CmCallbackGetKeyObjectIDEx gave in a successful
/// post-open/create, and the last CompleteName a pre-open/create carried.
const NAME_UNITS: usize = 256;
static LAST_NAME: [AtomicU16; NAME_UNITS] = [const { AtomicU16::new(0) }; NAME_UNITS];
static LAST_COMPLETE: [AtomicU16; NAME_UNITS] = [const { AtomicU16::new(0) }; NAME_UNITS];

fn set_value(slot: usize, v: u64) {
    COUNTERS[slot].store(v, Ordering::Relaxed);
}

fn current_pid() -> u64 {
    // SAFETY: always callable.
    (unsafe { PsGetCurrentProcessId() }) as u64
}

/// Copies a counted string into a name buffer (truncated, NUL-padded).
///
/// # Safety
/// `s` must be null or a valid UNICODE_STRING.
unsafe fn remember(buffer: &[AtomicU16; NAME_UNITS], s: *const UNICODE_STRING) {
    let units: &[u16] = if s.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        let us = unsafe { &*s };
        if us.Buffer.is_null() {
            &[]
        } else {
            // SAFETY: a valid UNICODE_STRING holds Length bytes of UTF-16.
            unsafe { core::slice::from_raw_parts(us.Buffer, usize::from(us.Length / 2)) }
        }
    };
    for (i, slot) in buffer.iter().enumerate() {
        slot.store(units.get(i).copied().unwrap_or(0), Ordering::Relaxed);
    }
}

/// Whether counted string `s` starts with a backslash (an absolute registry path).
///
/// # Safety
/// `s` must be null or a valid UNICODE_STRING.
unsafe fn is_absolute(s: *const UNICODE_STRING) -> bool {
    if s.is_null() {
        return false;
    }
    // SAFETY: guaranteed by the caller.
    let us = unsafe { &*s };
    // SAFETY: a valid UNICODE_STRING holds Length bytes; the first unit is read only if any.
    us.Length >= 2 && !us.Buffer.is_null() && unsafe { us.Buffer.read() } == u16::from(b'\\')
}

/// Whether the kernel names key object `object` `\REGISTRY` (any case).
///
/// # Safety
/// `object` must be a key object of the notification being handled.
unsafe fn names_registry_root(object: *mut c_void) -> bool {
    let mut name: *const UNICODE_STRING = null_mut();
    // SAFETY: a live key object, our cookie, a valid out pointer, Flags 0.
    let s = unsafe {
        CmCallbackGetKeyObjectIDEx(COOKIE.as_ptr(), object, null_mut(), &raw mut name, 0)
    };
    if s != STATUS_SUCCESS || name.is_null() {
        return false;
    }
    // SAFETY: the kernel returned a valid UNICODE_STRING, not yet released.
    let us = unsafe { &*name };
    let units: &[u16] = if us.Buffer.is_null() {
        &[]
    } else {
        // SAFETY: a valid UNICODE_STRING holds Length bytes of UTF-16.
        unsafe { core::slice::from_raw_parts(us.Buffer, usize::from(us.Length / 2)) }
    };
    let want = "\\REGISTRY".encode_utf16();
    let same = units.len() == 9
        && units.iter().zip(want).all(|(&u, w)| {
            u == w || (u16::from(b'a')..=u16::from(b'z')).contains(&u) && u - 32 == w
        });
    // SAFETY: releasing the name the call above handed out.
    unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
    same
}

/// Name block `n`: bit 8 of `n` selects the buffer (0 = last object name, 1 = last
/// CompleteName), its low byte the block of 16 units, 4 per slot.
pub fn name_block(n: usize) -> [u64; 4] {
    let buffer = if n & 0x100 == 0 {
        &LAST_NAME
    } else {
        &LAST_COMPLETE
    };
    let base = (n & 0xFF) * 16;
    let mut out = [0u64; 4];
    for (i, v) in out.iter_mut().enumerate() {
        for j in 0..4 {
            let unit = buffer
                .get(base + i * 4 + j)
                .map_or(0, |u| u.load(Ordering::Relaxed));
            *v |= u64::from(unit) << (16 * j);
        }
    }
    out
}
static COOKIE: AtomicI64 = AtomicI64::new(0);
static REGISTERED: AtomicBool = AtomicBool::new(false);
static PROCESS_NOTIFY: AtomicBool = AtomicBool::new(false);
static PIN_NEXT: AtomicBool = AtomicBool::new(false);
static PINNED: AtomicUsize = AtomicUsize::new(0);
/// How post-open reads the key name again around a raise to `DISPATCH_LEVEL`
/// (IOCTL_NAME_TOUCH): 0 not at all; [`TOUCH_AFTER`] after lowering the IRQL again (allowed:
/// the name is paged pool, paged back in); [`TOUCH_RAISED`] while raised (the bug Driver
/// Verifier's Force IRQL Checking catches: bug check 0xD1).
static NAME_TOUCH: AtomicU64 = AtomicU64::new(0);
/// Read the name after lowering the IRQL again.
pub const TOUCH_AFTER: u64 = 1;
/// Read the name at `DISPATCH_LEVEL` (a bug).
pub const TOUCH_RAISED: u64 = 2;

/// Sets how post-open reads the key name around a raise ([`NAME_TOUCH`]).
pub fn set_name_touch(mode: u64) {
    NAME_TOUCH.store(mode, Ordering::Relaxed);
}

/// Reads the first unit of `name`'s buffer around a raise to `DISPATCH_LEVEL` (`mov cr8`,
/// `KeRaiseIrql`'s inline form), as [`NAME_TOUCH`] says.
///
/// # Safety
/// `name` is a valid `UNICODE_STRING` from `CmCallbackGetKeyObjectIDEx`, not yet released,
/// or a process-creation notification's `ImageFileName` during the call.
unsafe fn touch_name(name: *const UNICODE_STRING) {
    let mode = NAME_TOUCH.load(Ordering::Relaxed);
    // SAFETY: guaranteed by the caller; the header is read at PASSIVE_LEVEL.
    let header = unsafe { &*name };
    let (buffer, length) = (header.Buffer, header.Length);
    if mode == 0 || buffer.is_null() || length == 0 {
        return;
    }
    let before: u64;
    // SAFETY: KeGetCurrentIrql's inline form.
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) before) };
    // SAFETY: KeRaiseIrql(DISPATCH_LEVEL)'s inline form; lowered again below.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 2u64) };
    if mode == TOUCH_RAISED {
        // SAFETY: the buffer is valid (the bug is only the IRQL it is read at).
        let _ = unsafe { core::ptr::read_volatile(buffer) };
    }
    // SAFETY: KeLowerIrql back to the entry IRQL.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) before) };
    if mode == TOUCH_AFTER {
        // SAFETY: as above, at the entry IRQL.
        let _ = unsafe { core::ptr::read_volatile(buffer) };
        count(NAME_TOUCHED);
    }
}

/// The next post-close sets an object context on its object (IOCTL_CONTEXT_LATE): a bug,
/// the object's contexts were already taken for their cleanup.
static CONTEXT_LATE: AtomicBool = AtomicBool::new(false);

/// Arms [`CONTEXT_LATE`].
pub fn context_late() {
    CONTEXT_LATE.store(true, Ordering::Relaxed);
}

/// The context the late call sets: a static's address, so that nothing is allocated.
static LATE_MARK: u8 = 0;

/// Post-close notifications complete the pending waits (IOCTL_RELEASE_ON_CLOSE).
static RELEASE_ON_CLOSE: AtomicBool = AtomicBool::new(false);

/// The registry callback's cookie (for CmCallbackGetKeyObjectIDEx).
pub fn cookie() -> *const i64 {
    COOKIE.as_ptr()
}

/// From now on, every key handle closed completes the pending waits.
pub fn release_on_close() {
    RELEASE_ON_CLOSE.store(true, Ordering::Relaxed);
}

fn count(slot: usize) {
    COUNTERS[slot].fetch_add(1, Ordering::Relaxed);
}

/// Counters block `n` (4 slots).
pub fn stats(n: usize) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, v) in out.iter_mut().enumerate() {
        if let Some(c) = n.checked_mul(4).and_then(|b| COUNTERS.get(b + i)) {
            *v = c.load(Ordering::Relaxed);
        }
    }
    out
}

/// Pin (reference) the next key object opened successfully.
pub fn pin_next() {
    PIN_NEXT.store(true, Ordering::Relaxed);
}

/// Releases the pinned key object; true if there was one.
pub fn unpin() -> bool {
    let o = PINNED.swap(0, Ordering::Relaxed);
    if o != 0 {
        // SAFETY: the reference taken in post-open keeps the object alive until now.
        unsafe { ObfDereferenceObject(o as *mut c_void) };
    }
    o != 0
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

/// Writes a field of a notification structure.
///
/// # Safety
/// `base + offset` must be a writable `T` inside the structure the kernel passed.
unsafe fn set_field<T>(base: *mut c_void, offset: usize, v: T) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        base.cast::<u8>()
            .wrapping_add(offset)
            .cast::<T>()
            .write_unaligned(v)
    };
}

/// The registry callback.
unsafe extern "C" fn registry_callback(
    _context: *mut c_void,
    arg1: *mut c_void,
    arg2: *mut c_void,
) -> NTSTATUS {
    let class = arg1 as usize;
    crate::lifecycle::record(class, arg2);
    crate::stacks::on_notification(class);
    match class {
        // RegNtPreCreateKeyEx, RegNtPreOpenKeyEx: REG_CREATE/OPEN_KEY_INFORMATION_V1.
        26 | 28 => {
            count(PRE_OPEN);
            // SAFETY: Version is at 0x68 of the _V1 structure.
            if unsafe { field::<usize>(arg2, 0x68) } != 1 {
                count(NOT_V1);
            }
            // SAFETY: CallContext is at 0x50.
            unsafe { set_field(arg2, 0x50, CALL_CONTEXT_MAGIC ^ class) };
            // SAFETY: CompleteName is at 0x00.
            let complete: *const UNICODE_STRING = unsafe { field(arg2, 0x00) };
            // SAFETY: a valid PUNICODE_STRING during the call.
            unsafe { remember(&LAST_COMPLETE, complete) };
            // SAFETY: RootObject is at 0x08.
            let root: *mut c_void = unsafe { field(arg2, 0x08) };
            // SAFETY: a valid PUNICODE_STRING during the call.
            if unsafe { is_absolute(complete) } {
                // Learn REG_CREATE_KEY_INFORMATION_V1: "For an absolute path, the RootObject
                // member specifies the \REGISTRY key".
                // SAFETY: RootObject is a key object of this notification, or NULL.
                let registry = !root.is_null() && unsafe { names_registry_root(root) };
                count(if registry {
                    ABSOLUTE_ROOT_REGISTRY
                } else {
                    ABSOLUTE_ROOT_OTHER
                });
            } else if !root.is_null() {
                count(PRE_OPEN_RELATIVE);
                // SAFETY: as above.
                if !unsafe { field::<*mut c_void>(arg2, 0x58) }.is_null() {
                    count(ROOT_CONTEXT_SEEN);
                }
            }
        }
        // RegNtPostCreateKeyEx, RegNtPostOpenKeyEx: REG_POST_OPERATION_INFORMATION.
        27 | 29 => {
            // SAFETY: CallContext is at 0x20 of REG_POST_OPERATION_INFORMATION.
            if unsafe { field::<usize>(arg2, 0x20) } != CALL_CONTEXT_MAGIC ^ (class - 1) {
                count(CALL_CONTEXT_MISMATCH);
            }
            // SAFETY: Status is at 0x08.
            let status: NTSTATUS = unsafe { field(arg2, 0x08) };
            #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
            set_value(LAST_POST_STATUS, u64::from(status as u32));
            if status != STATUS_SUCCESS {
                // Object is undefined unless Status == STATUS_SUCCESS, success-class statuses
                // included: do not touch it.
                count(match status {
                    STATUS_REPARSE => POST_REPARSE,
                    STATUS_PREDEFINED_HANDLE => POST_PREDEFINED,
                    _ => POST_FAILED,
                });
                return STATUS_SUCCESS;
            }
            count(POST_SUCCESS);
            // SAFETY: Object is at 0x00 and valid because Status is STATUS_SUCCESS.
            let object: *mut c_void = unsafe { field(arg2, 0x00) };
            let mut name: *const UNICODE_STRING = null_mut();
            // SAFETY: a live key object, our cookie, a valid out pointer, Flags 0.
            let s = unsafe {
                CmCallbackGetKeyObjectIDEx(COOKIE.as_ptr(), object, null_mut(), &raw mut name, 0)
            };
            if s == STATUS_SUCCESS && !name.is_null() {
                // SAFETY: the kernel returned a valid UNICODE_STRING.
                unsafe { remember(&LAST_NAME, name) };
                // SAFETY: as above, not yet released.
                unsafe { touch_name(name) };
                // SAFETY: releasing the name the call above handed out.
                unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
            }
            // SAFETY: non-paged pool at PASSIVE/APC level.
            let ctx = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, 16, CONTEXT_TAG) };
            if !ctx.is_null() {
                // An object can succeed a second post (a filter below bypassed an open with
                // an object whose own create we saw): the context it had is handed back.
                let mut old: *mut c_void = null_mut();
                // SAFETY: a live key object, our registered cookie, a writable out pointer.
                let s = unsafe {
                    CmSetCallbackObjectContext(object, COOKIE.as_ptr(), ctx, &raw mut old)
                };
                if s == STATUS_SUCCESS && !old.is_null() {
                    // SAFETY: our context from the earlier post, detached by the call above.
                    unsafe { ExFreePoolWithTag(old, CONTEXT_TAG) };
                } else if s == STATUS_SUCCESS {
                    count(CONTEXTS_SET);
                } else {
                    // SAFETY: allocated above, never attached.
                    unsafe { ExFreePoolWithTag(ctx, CONTEXT_TAG) };
                }
            }
            if PIN_NEXT.swap(false, Ordering::Relaxed) {
                // SAFETY: a live key object; the reference is released by `unpin`.
                unsafe { ObfReferenceObject(object) };
                PINNED.store(object as usize, Ordering::Relaxed);
            }
        }
        // RegNtPreKeyHandleClose: REG_KEY_HANDLE_CLOSE_INFORMATION; the name is fetched here
        // (post-close is too late).
        14 => {
            count(PRE_CLOSE);
            set_value(LAST_CLOSE_PID, current_pid());
            // SAFETY: ObjectContext is at 0x10 of REG_KEY_HANDLE_CLOSE_INFORMATION.
            if unsafe { field::<usize>(arg2, 0x10) } == 0 {
                // An object this driver never attached a context to: opened before it
                // registered (or its context allocation failed).
                count(PRE_CLOSE_NO_CONTEXT);
            }
            // SAFETY: Object is at 0x00.
            let object: *mut c_void = unsafe { field(arg2, 0x00) };
            let mut id = 0usize;
            let mut name: *const UNICODE_STRING = null_mut();
            // SAFETY: a live key object, our cookie, valid out pointers, Flags 0.
            let s = unsafe {
                CmCallbackGetKeyObjectIDEx(COOKIE.as_ptr(), object, &raw mut id, &raw mut name, 0)
            };
            if s == STATUS_SUCCESS && !name.is_null() {
                // SAFETY: the kernel returned a valid UNICODE_STRING.
                if unsafe { (*name).Length } > 0 && id != 0 {
                    count(NAMES_OK);
                }
                // SAFETY: releasing the name the call above handed out.
                unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
            }
        }
        25 => {
            count(POST_CLOSE);
            // A configuration manager routine may take the object in a post-close (Learn,
            // "Invalid Key Object Pointers in Registry Notifications": "However, during ...").
            // SAFETY: Object is at 0x00 of REG_POST_OPERATION_INFORMATION.
            let object: *mut c_void = unsafe { field(arg2, 0x00) };
            let mut name: *const UNICODE_STRING = null_mut();
            // SAFETY: the closing key object, our cookie, a valid out pointer, Flags 0.
            let s = unsafe {
                CmCallbackGetKeyObjectIDEx(COOKIE.as_ptr(), object, null_mut(), &raw mut name, 0)
            };
            if s == STATUS_SUCCESS && !name.is_null() {
                count(POST_CLOSE_NAMED);
                // SAFETY: releasing the name the call above handed out.
                unsafe { CmCallbackReleaseKeyObjectIDEx(name) };
            }
            if CONTEXT_LATE.swap(false, Ordering::Relaxed) {
                let mut old: *mut c_void = null_mut();
                let mark = core::ptr::from_ref(&LATE_MARK).cast_mut().cast();
                // SAFETY: the closing key object, our cookie, a writable out pointer (the bug
                // is only when it is called).
                let _ = unsafe {
                    CmSetCallbackObjectContext(object, COOKIE.as_ptr(), mark, &raw mut old)
                };
            }
            // The product's pattern: a registry notification (here: a key handle closed)
            // completes the pending waits, on whatever thread closed the key.
            if RELEASE_ON_CLOSE.load(Ordering::Relaxed) {
                let _ = crate::pending::release_all();
            }
        }
        // RegNtCallbackObjectContextCleanup: REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION.
        40 => {
            set_value(LAST_CLEANUP_PID, current_pid());
            // SAFETY: ObjectContext is at 0x08.
            let ctx: *mut c_void = unsafe { field(arg2, 0x08) };
            if !ctx.is_null() {
                // SAFETY: the context allocated in post-open.
                unsafe { ExFreePoolWithTag(ctx, CONTEXT_TAG) };
                count(CONTEXTS_FREED);
            }
        }
        33 => count(POST_LOAD),
        34 => count(PRE_UNLOAD),
        _ => {}
    }
    STATUS_SUCCESS
}

/// Set by IOCTL_PROCESS_REMOVE_INSIDE: the next notification removes its own routine (a bug
/// the model must report: Windows deadlocks waiting for the call it is made from).
static REMOVE_INSIDE: AtomicBool = AtomicBool::new(false);

/// IOCTL_PROCESS_REMOVE_INSIDE: arms the self-removal bug.
pub fn remove_inside() {
    REMOVE_INSIDE.store(true, Ordering::Relaxed);
}

/// The process-notify routine: counts, logs, and records whether normal kernel APCs are
/// disabled (the kernel calls it inside a critical region).
unsafe extern "C" fn process_notify(
    process: *mut c_void,
    pid: *mut c_void,
    create_info: *mut c_void,
) {
    // SAFETY: callable at IRQL <= DISPATCH_LEVEL.
    if unsafe { KeAreApcsDisabled() } != 0 {
        count(PROCESS_NOTIFY_APCS_DISABLED);
    }
    if REMOVE_INSIDE.swap(false, Ordering::Relaxed) {
        // SAFETY: the bug on purpose: removing this routine from inside it.
        let _ = unsafe { PsSetCreateProcessNotifyRoutineEx(process_notify, 1) };
    }
    crate::lifecycle::record_process(process, pid, create_info.is_null());
    if !create_info.is_null() {
        // PS_CREATE_NOTIFY_INFO (ntddk.h, x64): ImageFileName, a PCUNICODE_STRING, at 0x30.
        let field = create_info
            .cast::<u8>()
            .wrapping_add(0x30)
            .cast::<*const UNICODE_STRING>();
        // SAFETY: a non-null CreateInfo is a PS_CREATE_NOTIFY_INFO valid during the call.
        let image = unsafe { field.read_unaligned() };
        if !image.is_null() {
            // SAFETY: ImageFileName, when set, is a valid counted string during the call
            // (the same raise-and-read as for a key name: td-paged-image-name*).
            unsafe { touch_name(image) };
        }
    }
    count(if create_info.is_null() {
        PROCESS_EXITS
    } else {
        PROCESS_CREATES
    });
}

/// The code units of the test driver's altitude, "385200.5" (ASCII digits and '.').
static ALTITUDE_UNITS: [u16; 9] = [0x33, 0x38, 0x35, 0x32, 0x30, 0x30, 0x2E, 0x35, 0];

/// A `UNICODE_STRING` in a static, for the kernel to read as long as it likes.
#[repr(transparent)]
struct KeptString(UNICODE_STRING);

// SAFETY: never written; the kernel only reads it.
unsafe impl Sync for KeptString {}

/// The altitude handed to CmRegisterCallbackEx, alive until after CmUnRegisterCallback as
/// regfltr keeps its own (`sys/util.c` CreateCallbackContext: in the callback context, freed
/// after unregistration); the kernel emulator re-reads it when another filter registers.
static ALTITUDE: KeptString = KeptString(UNICODE_STRING {
    Length: 16,
    MaximumLength: 18,
    Buffer: ALTITUDE_UNITS.as_ptr().cast_mut(),
});

/// Registers the callbacks; the registry one is required, the process one best-effort.
pub fn start(driver: *mut DRIVER_OBJECT) -> NTSTATUS {
    DRIVER.store(driver, Ordering::Relaxed);
    let mut cookie = 0i64;
    // SAFETY: a valid function, altitude (static), driver object and cookie pointer;
    // PASSIVE_LEVEL.
    let s = unsafe {
        CmRegisterCallbackEx(
            registry_callback,
            &raw const ALTITUDE.0,
            driver.cast(),
            null_mut(),
            &raw mut cookie,
            null_mut(),
        )
    };
    if s != STATUS_SUCCESS {
        return s;
    }
    COOKIE.store(cookie, Ordering::Relaxed);
    REGISTERED.store(true, Ordering::Relaxed);
    // SAFETY: a valid routine; PASSIVE_LEVEL.
    let p = unsafe { PsSetCreateProcessNotifyRoutineEx(process_notify, 0) };
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    COUNTERS[PROCESS_NOTIFY_STATUS].store(u64::from(p as u32), Ordering::Relaxed);
    PROCESS_NOTIFY.store(p == STATUS_SUCCESS, Ordering::Relaxed);
    STATUS_SUCCESS
}

/// Our DRIVER_OBJECT, kept by `start`.
static DRIVER: AtomicPtr<DRIVER_OBJECT> = AtomicPtr::new(null_mut());

/// The cookie of the second callback IOCTL_ALTITUDE_ON_STACK registered (0: none).
static STACK_COOKIE: AtomicI64 = AtomicI64::new(0);

/// IOCTL_ALTITUDE_ON_STACK (a bug on purpose): registers a second callback, at "385100",
/// whose altitude string lives in this function's stack frame, dead once it returns.
/// Returns the status.
#[inline(never)]
pub fn register_stack_altitude() -> NTSTATUS {
    let driver = DRIVER.load(Ordering::Relaxed);
    let altitude: [u16; 7] = [b'3', b'8', b'5', b'1', b'0', b'0', 0].map(u16::from);
    let us = UNICODE_STRING {
        Length: 12,
        MaximumLength: 14,
        Buffer: altitude.as_ptr().cast_mut(),
    };
    let mut cookie = 0i64;
    // SAFETY: valid pointers for the call; the string dies with the frame (the bug).
    let s = unsafe {
        CmRegisterCallbackEx(
            registry_callback,
            &raw const us,
            driver.cast(),
            null_mut(),
            &raw mut cookie,
            null_mut(),
        )
    };
    if s == STATUS_SUCCESS {
        STACK_COOKIE.store(cookie, Ordering::Relaxed);
    }
    s
}

/// Unregisters everything `start` registered.
pub fn stop() {
    let stack = STACK_COOKIE.swap(0, Ordering::Relaxed);
    if stack != 0 {
        // SAFETY: the cookie of the second registration.
        let _ = unsafe { CmUnRegisterCallback(stack) };
    }
    if PROCESS_NOTIFY.swap(false, Ordering::Relaxed) {
        // SAFETY: removing the routine registered in `start`.
        let _ = unsafe { PsSetCreateProcessNotifyRoutineEx(process_notify, 1) };
    }
    let _ = unpin();
    if REGISTERED.swap(false, Ordering::Relaxed) {
        // SAFETY: the cookie from CmRegisterCallbackEx; contexts are cleaned up through
        // RegNtCallbackObjectContextCleanup during this call.
        let _ = unsafe { CmUnRegisterCallback(COOKIE.load(Ordering::Relaxed)) };
    }
}
