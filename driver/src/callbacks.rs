//! Registry callbacks (`CmRegisterCallbackEx`): who opens and closes which key object, and
//! hive loads and unloads.
//!
//! Rules kept here (docs: "Filtering Registry Calls", "Invalid Key Object Pointers in Registry
//! Notifications"; `../shared` notes on Windows semantics):
//! - the callback never changes the caller's result: it always returns `STATUS_SUCCESS`;
//! - it never calls `Zw*` routines and never references a key object (a reference would keep
//!   the very hive being diagnosed loaded): objects are only used as lookup keys and passed to
//!   `Cm*` routines while the notification is in progress;
//! - opens are recorded in the post-notification and only when `Status == STATUS_SUCCESS`
//!   (the object is undefined otherwise); the tracker's token becomes the object's context,
//!   which comes back on close and on cleanup (last reference gone, or `CmUnRegisterCallback`);
//! - nothing is allocated in a pre-notification: a post-notification may never come (another
//!   filter can fail or bypass the operation). The unload's mount name is carried from pre to
//!   post in a fixed per-thread slot instead ([`UnloadSlots`]).

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};

use tracker::hives::{LoadMount, LoadPre};
use tracker::{MAX_QUERY_PATH, ProcessKey, Token};
use wdk_sys::{
    _MODE::{KernelMode, UserMode},
    _REG_NOTIFY_CLASS::{
        RegNtCallbackObjectContextCleanup, RegNtPostCreateKeyEx, RegNtPostDeleteKey,
        RegNtPostLoadKey, RegNtPostOpenKeyEx, RegNtPostRenameKey, RegNtPostUnLoadKey,
        RegNtPreKeyHandleClose, RegNtPreLoadKey, RegNtPreRenameKey, RegNtPreUnLoadKey,
    },
    DRIVER_OBJECT, LARGE_INTEGER, NTSTATUS, OBJ_KERNEL_HANDLE,
    REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION, REG_CREATE_KEY_INFORMATION_V1,
    REG_KEY_HANDLE_CLOSE_INFORMATION, REG_LOAD_KEY_INFORMATION, REG_POST_OPERATION_INFORMATION,
    REG_RENAME_KEY_INFORMATION, REG_UNLOAD_KEY_INFORMATION, STATUS_INVALID_PARAMETER,
    STATUS_PENDING, STATUS_PROCEDURE_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
    ntddk::{IoGetCurrentProcess, PsGetCurrentThreadId, PsGetProcessId},
};

use crate::{
    clock,
    registry_read::Altitude,
    routines,
    tracking::{self, DriverTracker},
    waiters,
};

/// The cookie `CmRegisterCallbackEx` returned.
static COOKIE: AtomicI64 = AtomicI64::new(0);
/// Whether the callback is registered.
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// The altitude handed to `CmRegisterCallbackEx`, its `UNICODE_STRING` and the code units it
/// points at, kept for the image's life (so until after `CmUnRegisterCallback`). Learn's
/// `CmRegisterCallbackEx` does not say whether the kernel copies the string, and the one
/// Microsoft sample keeps it alive for the whole registration: regfltr `sys/util.c`
/// `CreateCallbackContext` puts the `UNICODE_STRING` and its buffer in the pool-allocated
/// callback context passed as `&CallbackCtx->Altitude`, freed only after
/// `CmUnRegisterCallback` (`sys/pre.c`). Until 2026-12-06 both lay in `start_tracking`'s
/// stack frame, reused as soon as `DriverEntry` returned (fidelity audit 21a, A1; the kernel
/// emulator re-reads the string when another filter registers).
struct RegisteredAltitude {
    units: UnsafeCell<Altitude>,
    string: UnsafeCell<UNICODE_STRING>,
}

// SAFETY: written only by `register`, in `DriverEntry` (one thread, once per load) before the
// callback is registered; after that only the kernel reads it, and nothing writes it again.
unsafe impl Sync for RegisteredAltitude {}

static ALTITUDE: RegisteredAltitude = RegisteredAltitude {
    units: UnsafeCell::new(Altitude::EMPTY),
    string: UnsafeCell::new(UNICODE_STRING {
        Length: 0,
        MaximumLength: 0,
        Buffer: null_mut(),
    }),
};

fn cookie() -> LARGE_INTEGER {
    LARGE_INTEGER {
        QuadPart: COOKIE.load(Ordering::Acquire),
    }
}

/// Registers the registry callback at `altitude`, which is kept in [`ALTITUDE`] for the
/// registration's life. Called once, from `DriverEntry`.
///
/// # Errors
/// `STATUS_PROCEDURE_NOT_FOUND` when the system has no `CmRegisterCallbackEx` (Wine), or the
/// status it returned (`STATUS_FLT_INSTANCE_ALTITUDE_COLLISION` when another filter holds the
/// altitude).
pub fn register(driver: &mut DRIVER_OBJECT, altitude: Altitude) -> Result<(), NTSTATUS> {
    let (Some(register), Some(_)) = (
        routines::cm_register_callback_ex(),
        routines::cm_unregister_callback(),
    ) else {
        return Err(STATUS_PROCEDURE_NOT_FOUND);
    };
    let string = ALTITUDE.string.get();
    // `DriverEntry` writes the slot once per load, before the registration: nothing else
    // reads or writes it yet (`RegisteredAltitude`'s Sync contract).
    // SAFETY: the only reference to the slot (see above).
    let units = unsafe { &mut *ALTITUDE.units.get() };
    *units = altitude;
    let value = units.as_unicode();
    // SAFETY: as above; `string` is the static's own, aligned UNICODE_STRING.
    unsafe { string.write(value) };
    // The cookie is written where the callback reads it, by the routine itself: the WRK's
    // `cmhook.c` CmRegisterCallback writes `*Cookie` before it installs the callback
    // (`ExCompareExchangeCallBack`), and a notification on another thread can reach the
    // callback before the routine returns. Copied from a local after the return, the cookie
    // was 0 in that window: the notification's `CmCallbackGetKeyObjectIDEx` failed and its
    // open was counted as a loss that never ages out (kernel emulator
    // `open-during-registration`).
    let cookie: *mut LARGE_INTEGER = COOKIE.as_ptr().cast();
    // Docs: `CmRegisterCallbackEx`. The callback is valid for the driver's lifetime. `cookie`
    // is the static's own 8 aligned bytes (LARGE_INTEGER is an i64 union), written before the
    // callback can run and read only through the atomic after.
    // The altitude stays valid for the image's life ([`ALTITUDE`]).
    // SAFETY: `Driver` is our DRIVER_OBJECT, `Reserved` NULL, the other pointers valid.
    let status = unsafe {
        register(
            Some(registry_callback),
            string,
            core::ptr::from_mut(driver).cast(),
            null_mut(),
            cookie,
            null_mut(),
        )
    };
    if status != STATUS_SUCCESS {
        COOKIE.store(0, Ordering::Release);
        return Err(status);
    }
    REGISTERED.store(true, Ordering::Release);
    Ok(())
}

/// Unregisters the callback. `CmUnRegisterCallback` waits for callbacks in flight and delivers
/// `RegNtCallbackObjectContextCleanup` for every object that still carries our context, so
/// every tracked object is forgotten before it returns.
///
/// # Errors
/// The status of a failed `CmUnRegisterCallback` (docs: it can fail with "the appropriate
/// NTSTATUS error code"): the callback may then still be called, so what it uses must stay.
/// `STATUS_INVALID_PARAMETER` means the cookie is not registered: nothing can call us, so
/// it counts as success.
pub fn unregister() -> Result<(), NTSTATUS> {
    if REGISTERED.swap(false, Ordering::AcqRel)
        && let Some(unregister) = routines::cm_unregister_callback()
    {
        // SAFETY: the cookie is the one our registration returned; PASSIVE_LEVEL (unload).
        let status = unsafe { unregister(cookie()) };
        if status != STATUS_SUCCESS && status != STATUS_INVALID_PARAMETER {
            return Err(status);
        }
    }
    Ok(())
}

/// The process whose handle table receives the handle an open creates: the key's holder,
/// pid and start key both taken from that one process.
///
/// - A kernel handle (`OBJ_KERNEL_HANDLE` in the open's `Attributes`, from a kernel-mode
///   caller: docs, `REG_CREATE_KEY_INFORMATION_V1` and `InitializeObjectAttributes`, "the
///   handle can only be accessed in kernel mode") goes into the System process's table
///   (`ReactOS` `ObpCreateHandle`), whichever thread opened it: System holds it. The table
///   depends on the attribute alone, which capture strips from user-mode callers (Windows
///   Research Kernel `ob/obcreate.c`, `ob/obhandle.c`), so the caller's mode is the thread's
///   previous mode (`ExGetPreviousMode`), not `CheckAccessMode`: a kernel caller that sets
///   `OBJ_FORCE_ACCESS_CHECK` has `CheckAccessMode` `UserMode` (docs; the WRK's
///   `ex/sysinfo.c` opens HKCU keys so) and its handle is still System's (fidelity audit
///   16b, F3; the kernel emulator's `kernel-handle-forced`). Where the routine is missing,
///   `CheckAccessMode` stands in. A system service's own kernel-handle open for a user-mode
///   caller (`NtUnloadKey2`'s open of the hive's root: WRK `ntapi.c`) keeps that caller's
///   previous mode, so it is named after the caller, as the kernel's own list names it (the
///   kernel emulator's `unload-own-open-holder`).
/// - Any other handle goes into the current process's table, which for a thread attached
///   to another process (`KeStackAttachProcess`) is the attached one (docs,
///   `IoGetCurrentProcess`; `ReactOS` `ObpCreateHandle`: `PsGetCurrentProcess()->ObjectTable`),
///   not the thread's own (`PsGetCurrentProcessId`). Its exit closes the handle, not the
///   opener's.
///
/// The kernel's own list (`NtQueryOpenSubKeysEx`) names the opener instead
/// (`CM_KEY_BODY.ProcessID`); the CLI reconciles the two by name where they differ.
fn holder_process(pre: Option<&REG_CREATE_KEY_INFORMATION_V1>) -> ProcessKey {
    // Version 1 is the _V1 layout, whose Attributes and CheckAccessMode exist (docs).
    // The attribute first: most opens lack it, and they need not ask for the caller's mode
    // (issue 14: `ExGetPreviousMode` was called on every open).
    let kernel_handle = pre.is_some_and(|pre| {
        pre.Version == 1
            && pre.Attributes & OBJ_KERNEL_HANDLE != 0
            && routines::ex_get_previous_mode().map_or_else(
                || i32::from(pre.CheckAccessMode) == KernelMode,
                // SAFETY: no arguments; callable at any IRQL (docs).
                |previous| i32::from(unsafe { previous() }) == KernelMode,
            )
    });
    let system = if kernel_handle {
        routines::ps_initial_system_process()
            .map(|variable| {
                let variable = core::ptr::with_exposed_provenance::<*mut c_void>(variable.0);
                // SAFETY: the exported variable, set before any driver loads, never changed.
                unsafe { variable.read() }
            })
            .filter(|p| !p.is_null())
    } else {
        None
    };
    let process: *mut c_void = system.unwrap_or_else(|| {
        // SAFETY: always callable; the current process outlives this call.
        unsafe { IoGetCurrentProcess() }.cast()
    });
    // SAFETY: a live EPROCESS (the current process, or System); any IRQL.
    let pid = (unsafe { PsGetProcessId(process.cast()) }) as u64;
    ProcessKey {
        pid,
        start_key: start_key(process),
    }
}

/// `PsGetProcessStartKey` of `process`; where the system lacks it, its creation time
/// (`PsGetProcessCreateTimeQuadPart`, Windows XP+), so that a reused pid is another process
/// even without the start key; 0 only where both are missing (then a reused pid is told
/// apart only by the exit notification that retired the old one).
pub fn start_key(process: *mut c_void) -> u64 {
    // The current process, or the one a notify routine is called for: a live EPROCESS.
    if let Some(get) = routines::ps_get_process_start_key() {
        // SAFETY: `process` is a live EPROCESS.
        return unsafe { get(process) };
    }
    routines::ps_get_process_create_time_quad_part().map_or(0, |get| {
        // SAFETY: `process` is a live EPROCESS; callable at any IRQL (docs).
        (unsafe { get(process) }).cast_unsigned()
    })
}

/// The kernel's key id of key object `object`: `CmCallbackGetKeyObjectIDEx` asked for the
/// `ObjectID` alone, which builds and allocates nothing (docs: "Drivers can use
/// `CmCallbackGetKeyObjectIDEx` to obtain the registry key identifier, the object name, or
/// both"; the id is the same for every object of one key and survives renames). `None` where
/// the routine is missing (before Windows 8: the older routine's names go stale after a
/// rename, so its opens are named each time) or fails.
fn key_id(object: *mut c_void) -> Option<u64> {
    let get = routines::cm_callback_get_key_object_id_ex()?;
    let cookie = cookie();
    let mut id = 0usize;
    // SAFETY: called during a notification for `object`; ObjectName NULL is allowed (docs).
    let status = unsafe { get(&raw const cookie, object, &raw mut id, null_mut(), 0) };
    (status == STATUS_SUCCESS && id != 0).then_some(id as u64)
}

/// Runs `f` on the full name of key object `object` (`\REGISTRY\...`), if it can be had.
fn with_key_name<R>(object: *mut c_void, f: impl FnOnce(&[u16]) -> R) -> Option<R> {
    let cookie = cookie();
    let mut id = 0usize;
    let mut name: *const UNICODE_STRING = core::ptr::null();
    if let (Some(get), Some(release)) = (
        routines::cm_callback_get_key_object_id_ex(),
        routines::cm_callback_release_key_object_id_ex(),
    ) {
        // Docs: `CmCallbackGetKeyObjectIDEx`.
        // SAFETY: called during a notification for `object`; the out pointers are valid.
        let status = unsafe { get(&raw const cookie, object, &raw mut id, &raw mut name, 0) };
        if status != STATUS_SUCCESS || name.is_null() {
            return None;
        }
        // A paged-pool buffer: the tracker gets a resident copy ([`crate::resident`]).
        // SAFETY: on success the routine returns a valid UNICODE_STRING it owns until released.
        let r = crate::resident::with_copy(unicode_units(unsafe { &*name }), f);
        // SAFETY: released exactly once, as the routine's contract requires.
        unsafe { release(name) };
        return r;
    }
    let get = routines::cm_callback_get_key_object_id()?;
    // SAFETY: documented call (docs: CmCallbackGetKeyObjectID); the name stays the kernel's.
    let status = unsafe { get(&raw const cookie, object, &raw mut id, &raw mut name) };
    if status != STATUS_SUCCESS || name.is_null() {
        return None;
    }
    // SAFETY: on success the string is valid while the notification runs.
    crate::resident::with_copy(unicode_units(unsafe { &*name }), f)
}

/// The UTF-16 units of a counted string (empty for a null buffer).
pub fn unicode_units(s: &UNICODE_STRING) -> &[u16] {
    if s.Buffer.is_null() {
        return &[];
    }
    // SAFETY: a UNICODE_STRING's buffer holds `Length` bytes of UTF-16 while it is valid.
    unsafe { core::slice::from_raw_parts(s.Buffer, usize::from(s.Length / 2)) }
}

/// A `PUNICODE_STRING` field as units (empty when null).
fn units_of<'a>(p: *const UNICODE_STRING) -> &'a [u16] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: the notification structures' string pointers are valid during the notification.
    unicode_units(unsafe { &*p })
}

/// The registry callback (docs: `EX_CALLBACK_FUNCTION`). Never changes the operation's result.
///
/// A thin dispatcher: every class it handles is a call, so the classes it ignores (a
/// pre-open, a post-close) and the hot ones pay for no register saves or stack frame that
/// only the rare classes need (issue 14: with the rare classes inlined here, entering and
/// leaving the callback cost about 23 instructions a call, 115 of a held key's open+close).
#[allow(
    non_upper_case_globals,
    reason = "bindgen names the REG_NOTIFY_CLASS constants in C style"
)]
unsafe extern "C" fn registry_callback(
    _context: *mut c_void,
    argument1: *mut c_void,
    argument2: *mut c_void,
) -> NTSTATUS {
    let Some(tracker) = tracking::get() else {
        return STATUS_SUCCESS;
    };
    if argument2.is_null() {
        return STATUS_SUCCESS;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "Argument1 carries a REG_NOTIFY_CLASS"
    )]
    let class = argument1 as usize as i32;
    match class {
        RegNtPostCreateKeyEx | RegNtPostOpenKeyEx => {
            // SAFETY: for these classes Argument2 is a REG_POST_OPERATION_INFORMATION.
            post_open(tracker, unsafe {
                &*argument2.cast::<REG_POST_OPERATION_INFORMATION>()
            });
        }
        RegNtPreKeyHandleClose => {
            // SAFETY: for this class Argument2 is a REG_KEY_HANDLE_CLOSE_INFORMATION.
            pre_close(tracker, unsafe {
                &*argument2.cast::<REG_KEY_HANDLE_CLOSE_INFORMATION>()
            });
        }
        RegNtCallbackObjectContextCleanup => {
            // SAFETY: for this class Argument2 is a REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION.
            context_cleanup(tracker, unsafe {
                &*argument2.cast::<REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION>()
            });
        }
        RegNtPreRenameKey | RegNtPostRenameKey | RegNtPostDeleteKey | RegNtPreLoadKey
        | RegNtPostLoadKey | RegNtPreUnLoadKey | RegNtPostUnLoadKey => {
            // SAFETY: Argument2 is the structure of `class`, valid during the notification.
            unsafe { hive_or_name_change(tracker, class, argument2) };
        }
        _ => {}
    }
    STATUS_SUCCESS
}

/// A handle to a key object is being closed (`RegNtPreKeyHandleClose`). No wait is woken:
/// a hive is free when none of its key objects is left (`tracker::watch`), and the object
/// outlives its handle's close until its cleanup, which wakes them.
#[inline(never)]
fn pre_close(tracker: &DriverTracker, info: &REG_KEY_HANDLE_CLOSE_INFORMATION) {
    if !info.ObjectContext.is_null() {
        tracker.handle_closed(Token(info.ObjectContext as u64), info.Object as u64);
    }
}

/// A key object that carries our context is going (`RegNtCallbackObjectContextCleanup`).
#[inline(never)]
fn context_cleanup(tracker: &DriverTracker, info: &REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION) {
    if !info.ObjectContext.is_null() {
        tracker.object_destroyed(Token(info.ObjectContext as u64), info.Object as u64);
        waiters::hive_may_be_free();
    }
}

/// The rare classes: renames, hive loads and unloads. Out of line and cold, so that their
/// frame (a stack buffer for joined names, the unload slots) is paid only by them.
///
/// # Safety
/// `argument2` is the notification structure of `class` (docs: `EX_CALLBACK_FUNCTION`),
/// valid and not null while the notification runs.
#[cold]
#[inline(never)]
#[allow(
    non_upper_case_globals,
    reason = "bindgen names the REG_NOTIFY_CLASS constants in C style"
)]
unsafe fn hive_or_name_change(tracker: &DriverTracker, class: i32, argument2: *mut c_void) {
    match class {
        // The key and every key below it get new names under unchanged key ids: no name
        // cached before is trusted after, and none fetched in between is cached (it may be
        // either name). A post comes even when a filter vetoes the pre (docs: "Filtering
        // Registry Calls"; the emulator's td-post-after-veto).
        RegNtPreRenameKey => {
            // Its CallContext is the driver's to set during the notification (docs).
            // SAFETY: for this class Argument2 is a writable REG_RENAME_KEY_INFORMATION.
            let info = unsafe { &mut *argument2.cast::<REG_RENAME_KEY_INFORMATION>() };
            // Marks this rename as counted: its post carries the mark back (docs,
            // REG_POST_OPERATION_INFORMATION.CallContext), a post whose pre we never saw
            // does not (the callback registered in between) and must not end another count.
            info.CallContext = rename_mark();
            tracker.rename_started();
        }
        RegNtPostRenameKey => {
            // SAFETY: for this class Argument2 is a REG_POST_OPERATION_INFORMATION.
            let post = unsafe { &*argument2.cast::<REG_POST_OPERATION_INFORMATION>() };
            tracker.rename_ended(post.CallContext == rename_mark());
        }
        RegNtPostDeleteKey => {
            // SAFETY: for this class Argument2 is a REG_POST_OPERATION_INFORMATION.
            let post = unsafe { &*argument2.cast::<REG_POST_OPERATION_INFORMATION>() };
            // Deleted: the key's objects live on and hold the hive, but the kernel's list of
            // open keys omits them from now on (Windows Research Kernel `cmapi2.c`
            // CmDeleteKey takes the KCB out of the hash `cmsubs.c` CmpSearchForOpenSubKeys
            // walks). `Object` is valid with STATUS_SUCCESS only (docs,
            // REG_POST_OPERATION_INFORMATION); NtDeleteKey holds it through the post (WRK
            // `ntapi.c`). The kernel emulator's td-delete-key and delete-held-key.
            if post.Status == STATUS_SUCCESS
                && !post.Object.is_null()
                && let Some(key) = key_id(post.Object)
            {
                tracker.key_deleted(key);
            }
        }
        // Marks the load as seen from its start: the hive is linked into the namespace
        // inside the operation, between its pre and its post (Windows Research Kernel
        // `cmapi.c` CmLoadKey links it, `CmpLinkHiveToMaster`, before it returns; the WRK
        // predates the load notifications, so their place around it is an inference), and
        // only a load whose pre this callback saw had every open of its keys reach it. Its
        // post carries the mark back (docs, REG_POST_OPERATION_INFORMATION.CallContext).
        // The mark is the pre's `Object` when it has one (a key that existed before the
        // load: the root directory a relative name hangs from, see `post_load`), otherwise
        // a static's address.
        RegNtPreLoadKey => {
            // SAFETY: for this class Argument2 is a writable REG_LOAD_KEY_INFORMATION.
            let info = unsafe { &mut *argument2.cast::<REG_LOAD_KEY_INFORMATION>() };
            info.CallContext = if info.Object.is_null() {
                load_mark()
            } else {
                info.Object
            };
        }
        RegNtPostLoadKey => {
            // SAFETY: for this class Argument2 is a REG_POST_OPERATION_INFORMATION.
            let post = unsafe { &*argument2.cast::<REG_POST_OPERATION_INFORMATION>() };
            if post.Status == STATUS_SUCCESS && !post.PreInformation.is_null() {
                // SAFETY: its PreInformation is the REG_LOAD_KEY_INFORMATION of the pre call.
                let load = unsafe { &*post.PreInformation.cast::<REG_LOAD_KEY_INFORMATION>() };
                // A post without the mark: the callback registered during the load (where
                // a post goes to every callback registered at post time, as in the WRK's
                // `cmp.h` CmPostCallbackNotification and `cmhook.c` CmpCallCallBacks for the
                // classes it has; the kernel emulator's load-during-start). Keys
                // opened before it registered are unknown, so the load time, which vouches
                // that every key of the hive was seen, is not known: 0, as for a hive read
                // from the hive list at start.
                let pre = if !load.Object.is_null() && post.CallContext == load.Object {
                    LoadPre::Carried
                } else if post.CallContext == load_mark() {
                    LoadPre::Seen
                } else {
                    LoadPre::Unseen
                };
                post_load(
                    tracker,
                    load,
                    pre,
                    if pre == LoadPre::Unseen {
                        0
                    } else {
                        clock::now()
                    },
                );
            }
        }
        RegNtPreUnLoadKey => {
            // SAFETY: for this class Argument2 is a writable REG_UNLOAD_KEY_INFORMATION.
            let info = unsafe { &mut *argument2.cast::<REG_UNLOAD_KEY_INFORMATION>() };
            // Marks the unload as seen (recorded or counted as missed here): its post carries
            // the mark back, a post whose pre went by before this callback registered does
            // not (see `post_unload`).
            info.CallContext = unload_mark();
            // The unload's own key object: NtUnloadKey2/NtUnloadKeyEx open the hive's root
            // with a private kernel handle "just to take a reference on the object" (Windows
            // Research Kernel `base/ntos/config/ntapi.c`), an open this callback tracked (its
            // context is our token) and that lives until after the post. It is left out of
            // the attempt's holders (emulator: td-unload-sequence, unload-holders-exact).
            let own = (info.ObjectContext as u64, info.Object as u64);
            match with_key_name(info.Object, |name| {
                UNLOAD_SLOTS.put(current_thread(), name, own)
            }) {
                // Not recorded: the event stream's readers are told they missed one.
                None => {
                    tracker.unload_unnamed();
                    waiters::events_may_be_ready();
                }
                // Every slot taken, or this thread's slot held another unload not yet
                // recorded (one nested in it, from a callback's own unload, or one whose post
                // never came): that one is now missed.
                Some(Stored::Full | Stored::Replaced) => {
                    tracker.unload_not_recorded();
                    waiters::events_may_be_ready();
                }
                Some(Stored::Fresh) => {}
            }
        }
        RegNtPostUnLoadKey => {
            // SAFETY: for this class Argument2 is a REG_POST_OPERATION_INFORMATION.
            let post = unsafe { &*argument2.cast::<REG_POST_OPERATION_INFORMATION>() };
            post_unload(tracker, post);
        }
        _ => {}
    }
}

/// `RegNtPostUnLoadKey`: the attempt recorded under the mount its pre stored, with the
/// unload's own key object (see `RegNtPreUnLoadKey`). A post without its pre's mark comes
/// from an unload whose pre went by before this callback registered (where posts go to every
/// callback registered at post time, as in the Windows Research Kernel's `cmhook.c`
/// `CmpCallCallBacks` for the classes it has; the kernel emulator's `unload-during-start`):
/// the hive may be in the hive list the driver read at start, so dropping the post would
/// leave a hive listed as loaded after it is gone. The unload's object is named instead: its
/// `PreInformation` is valid during the post (docs, `REG_POST_OPERATION_INFORMATION`) and
/// the unload holds that object until after the post (WRK `ntapi.c` `NtUnloadKey2`
/// dereferences it after `CmUnloadKey` returns); one that cannot be named is counted as an
/// unrecorded unload. Its own open went by before the callback too: nothing to leave out.
fn post_unload(tracker: &DriverTracker, post: &REG_POST_OPERATION_INFORMATION) {
    #[allow(clippy::cast_sign_loss, reason = "an NTSTATUS is reported as its bits")]
    let outcome = post.Status as u32;
    let record = |mount: &[u16], (token, object): (u64, u64)| {
        let own = (token != 0).then_some((Token(token), object, current_thread()));
        // One interrupt-time reading stamps the record and starts its watch: the service
        // dates the record by it (the record's age is its own `QueryInterruptTime` count
        // less this one, the same count: Learn, "Interrupt Time"), so the watch is due
        // exactly the delay after the stamp whatever the system clock did (review 22d, L3).
        let interrupt = clock::interrupt_time();
        let hive = tracker.unload_attempted_with(mount, outcome, (clock::now(), interrupt), own);
        // A failed (or deferred) unload: the hive is looked at again after the
        // configured delay, by the waiters' timer (issue 17).
        let failed = hive.filter(|_| post.Status != STATUS_SUCCESS);
        if let Some(due) = failed.and_then(|id| tracker.watch_held_after(id, outcome, interrupt)) {
            waiters::held_after_due(due);
        }
        if post.Status == STATUS_SUCCESS {
            tracker.hive_unloaded(mount);
            waiters::hive_may_be_free();
        } else if post.Status == STATUS_PENDING {
            // NtUnloadKeyEx with an event on a held hive: Windows unloads it later,
            // when its last key object goes, with no further notification
            // (REG_UNLOAD_KEY_INFORMATION `UserEvent`; the emulator's
            // td-deferred-unload). The tracker marks it pending, which may end its
            // record at once (nothing tracked left in it): waits on it look again
            // (found in review).
            tracker.hive_unload_pending(mount);
            waiters::hive_may_be_free();
        }
        // Every attempt is an event of the stream (issue 17): wake its readers.
        waiters::events_may_be_ready();
    };
    if post.CallContext == unload_mark() {
        // Its pre stored the mount (or counted the unload as missed): only this post takes
        // the thread's slot, so a post without the mark never takes another unload's.
        UNLOAD_SLOTS.take(current_thread(), record);
        return;
    }
    let named = (!post.PreInformation.is_null())
        .then(|| {
            // SAFETY: its PreInformation is the REG_UNLOAD_KEY_INFORMATION of the pre call.
            let info = unsafe { &*post.PreInformation.cast::<REG_UNLOAD_KEY_INFORMATION>() };
            (!info.Object.is_null())
                .then(|| with_key_name(info.Object, |mount| record(mount, (0, 0))))
                .flatten()
        })
        .flatten();
    if named.is_none() {
        tracker.unload_unnamed();
        waiters::events_may_be_ready();
    }
}

/// The `CallContext` a counted rename's pre leaves for its post: the address of a static,
/// never a pointer to anything the post reads.
fn rename_mark() -> *mut c_void {
    static MARK: u8 = 0;
    core::ptr::from_ref(&MARK).cast_mut().cast()
}

/// The `CallContext` an unload's pre leaves for its post, as [`rename_mark`] (another static).
fn unload_mark() -> *mut c_void {
    static MARK: u8 = 0;
    core::ptr::from_ref(&MARK).cast_mut().cast()
}

/// The `CallContext` a load's pre without an `Object` leaves for its post, as [`rename_mark`]
/// (another static).
fn load_mark() -> *mut c_void {
    static MARK: u8 = 0;
    core::ptr::from_ref(&MARK).cast_mut().cast()
}

fn current_thread() -> u64 {
    // SAFETY: always callable; returns the current thread id.
    (unsafe { PsGetCurrentThreadId() }) as u64
}

/// A successful create or open: track the new key object and attach the token as context.
/// Not inlined: the callback's other classes (pre-open, close, cleanup) need none of its
/// registers or stack, and pay for them in the prologue when it is.
#[inline(never)]
fn post_open(tracker: &DriverTracker, post: &REG_POST_OPERATION_INFORMATION) {
    if post.Status != STATUS_SUCCESS || post.Object.is_null() {
        return;
    }
    let object = post.Object;
    // PreInformation is the REG_CREATE_KEY_INFORMATION_V1 or REG_OPEN_KEY_INFORMATION_V1 of
    // the pre call, which share one layout: Windows 7 and later always pass the V1
    // structures for these classes (docs: EX_CALLBACK_FUNCTION, "Starting with Windows 7,
    // the actual data structure passed in [...] is the V1 version"). Before it, the original
    // structures end at `Reserved`, where V1 has `Version` ("Check the Reserved member to
    // determine the version"): the fields after it (Attributes, CheckAccessMode) are read
    // only when `Version == 1` (`holder_process`, the capture's user-mode test). The pre
    // information lives while its post-notification runs.
    // SAFETY: so PreInformation may be read as REG_CREATE_KEY_INFORMATION_V1, or is null.
    let pre = unsafe {
        post.PreInformation
            .cast::<REG_CREATE_KEY_INFORMATION_V1>()
            .as_ref()
    };
    let access = pre.map_or(0, |pre| {
        if pre.GrantedAccess == 0 {
            pre.DesiredAccess
        } else {
            pre.GrantedAccess
        }
    });
    let process = holder_process(pre);
    let thread = current_thread();
    let now = clock::now();
    let attention = tracker.attention();
    // A key already held is found by its id: no name is built, fetched or compared.
    let known = key_id(object)
        .map(|key| tracker.opened_known(object as u64, key, process, thread, access, now));
    let opened = match known {
        Some(Ok(outcome)) => Some(outcome),
        Some(Err(miss)) => with_key_name(object, |name| {
            tracker.opened_named(miss, object as u64, process, thread, name, access, now)
        }),
        None => with_key_name(object, |name| {
            tracker.opened(object as u64, process, thread, name, access, now)
        }),
    };
    let Some(opened) = opened else {
        // The kernel would not name the object (docs: CmCallbackGetKeyObjectIDEx can fail).
        // Not tracked: a key with no name would be filed under no real hive and make that
        // hive look free. The loss is counted against the hive the caller's path names.
        tracker.open_unnamed();
        lost_open(tracker, pre, now);
        return;
    };
    let Ok(token) = opened else {
        return; // counted by the tracker (cap or allocation failure)
    };
    if tracker.attention() != attention {
        open_needs_attention(tracker, process);
    }
    if tracker.capture_wanted(token) {
        // Version 1 has CheckAccessMode (docs): UserMode is an open from user mode.
        let user_mode =
            pre.is_some_and(|pre| pre.Version == 1 && i32::from(pre.CheckAccessMode) == UserMode);
        crate::stacks::capture(tracker, token, object as u64, process, user_mode);
    }
    let attached = routines::cm_set_callback_object_context().is_some_and(|set| {
        let cookie = cookie();
        let mut old: *mut c_void = null_mut();
        // Docs: `CmSetCallbackObjectContext`; the context is an opaque token, not a pointer.
        // SAFETY: `object` is the object of this post-notification; the pointers are valid.
        let status = unsafe {
            set(
                object,
                &raw const cookie,
                token.0 as *mut c_void,
                &raw mut old,
            )
        };
        if status == STATUS_SUCCESS && !old.is_null() {
            // The object was already ours (a lower filter's bypass handed back an object
            // it opened earlier outside its callback, an open hivetrack saw: kernel emulator
            // `bypassed-open`). Only the new context comes back at cleanup, so the old
            // record goes now.
            tracker.superseded(Token(old as u64), object as u64);
        }
        status == STATUS_SUCCESS
    });
    if !attached {
        // No cleanup notification would ever come for it: forget it now (counted).
        tracker.abandon(token, object as u64);
        waiters::hive_may_be_free();
    }
}

/// After an open that raised an event (a key-count alarm, issue 17: wake the event stream's
/// readers) or made the record of a process the tracker never saw start (it ran before the
/// driver): name that process now, so that reports and the image capture scope know it.
#[cold]
#[inline(never)]
fn open_needs_attention(tracker: &DriverTracker, process: ProcessKey) {
    waiters::events_may_be_ready();
    if tracker.image_missing(process) {
        crate::process::name_current(tracker, process);
    }
}

/// A hive loaded: recorded at its full mount point. `RegLoadKey(HKEY_USERS, "S-1-5-21-…",
/// file)` is `NtLoadKey` with the HKU handle as `RootDirectory` and a relative name (`ReactOS`
/// `RegLoadKeyW`): the notification's `KeyName` is then relative to the root directory. Its
/// `Object` is read two ways (docs, `REG_LOAD_KEY_INFORMATION`: "the root key of the hive
/// that is about to be loaded"; filters in the field: the root directory's key object), so
/// [`tracker::hives::load_mount`] decides from its name and from what the callback saw of the
/// pre (`pre`) whether to join (the kernel emulator's `relative-load` and
/// `relative-load-hive-root`). Done here in the post-notification, while the operation still
/// holds that object (its pre information is valid during the post: docs,
/// `REG_POST_OPERATION_INFORMATION.PreInformation`), in a stack buffer: nothing is allocated
/// in the pre-notification that a missing post would leave behind. A relative name whose
/// object is missing or cannot be named is not recorded as a bogus mount: counted as an
/// unrecorded load. `time` is the load's time, 0 when the callback did not see its pre (not
/// known).
fn post_load(tracker: &DriverTracker, load: &REG_LOAD_KEY_INFORMATION, pre: LoadPre, time: u64) {
    // Resident copies ([`crate::resident`]): the tracker reads them under its locks.
    let recorded = crate::resident::with_copy(units_of(load.SourceFile), |file| {
        let name = units_of(load.KeyName);
        if name.first() == Some(&u16::from(b'\\')) {
            crate::resident::with_copy(name, |name| {
                tracker.hive_loaded(name, file, time);
            })
        } else if load.Object.is_null() {
            None
        } else {
            with_key_name(load.Object, |object_name| {
                match tracker::hives::load_mount(object_name, name, pre) {
                    // A resident copy already ([`with_key_name`]).
                    Some(LoadMount::ObjectName) => {
                        tracker.hive_loaded(object_name, file, time);
                        Some(())
                    }
                    Some(LoadMount::Joined) => {
                        with_joined(object_name, name, |mount| {
                            tracker.hive_loaded(mount, file, time);
                        });
                        Some(())
                    }
                    // Either reading fits: not recorded at a guessed mount.
                    None => None,
                }
            })
            .flatten()
        }
    })
    .flatten();
    if recorded.is_none() {
        tracker.name_unavailable();
    }
}

/// Runs `f` on `root`'s full name joined with `relative` (`root\relative`, cut to
/// [`MAX_QUERY_PATH`]) in a stack buffer; `None` when the kernel will not name `root`.
fn with_joined_name<R>(
    root: *mut c_void,
    relative: &[u16],
    f: impl FnOnce(&[u16]) -> R,
) -> Option<R> {
    with_key_name(root, |root| with_joined(root, relative, f))
}

/// Runs `f` on `root\relative` (cut to [`MAX_QUERY_PATH`]) in a stack buffer.
fn with_joined<R>(root: &[u16], relative: &[u16], f: impl FnOnce(&[u16]) -> R) -> R {
    // A fixed buffer on the stack: nothing is allocated.
    let mut path = [0u16; MAX_QUERY_PATH];
    let mut n = 0;
    for &u in root
        .iter()
        .chain(&[u16::from(b'\\')])
        .chain(relative.iter())
    {
        if n == path.len() {
            break;
        }
        path[n] = u;
        n += 1;
    }
    f(&path[..n])
}

/// Counts an open that cannot be tracked against the hive its pre-information names: the
/// root object's name joined with a relative `CompleteName`, or an absolute one; globally
/// when neither can be had.
fn lost_open(tracker: &DriverTracker, pre: Option<&REG_CREATE_KEY_INFORMATION_V1>, now: u64) {
    let Some(pre) = pre else {
        tracker.lost_globally(now);
        return;
    };
    let complete = units_of(pre.CompleteName);
    if complete.first() == Some(&u16::from(b'\\')) {
        // A resident copy ([`crate::resident`]): the tracker reads it under its locks.
        if crate::resident::with_copy(complete, |c| tracker.open_lost(c, now)).is_none() {
            tracker.lost_globally(now);
        }
        return;
    }
    if pre.RootObject.is_null() {
        tracker.lost_globally(now);
        return;
    }
    let joined = with_joined_name(pre.RootObject, complete, |path| {
        tracker.open_lost(path, now);
    });
    if joined.is_none() {
        tracker.lost_globally(now);
    }
}

/// Mount names (and the unload's own key object: its context and address) carried from
/// `RegNtPreUnLoadKey` to `RegNtPostUnLoadKey`, per thread, in fixed storage: no allocation
/// in a pre-notification, and a post that never comes only leaves a slot to be reused.
struct UnloadSlots {
    slots: [UnloadSlot; UNLOAD_SLOTS_N],
}

const UNLOAD_SLOTS_N: usize = 4;

/// What [`UnloadSlots::put`] did.
#[derive(Clone, Copy)]
enum Stored {
    /// In a free slot.
    Fresh,
    /// In the slot of an entry the same thread left, which is lost.
    Replaced,
    /// Nowhere: every slot is taken.
    Full,
}

struct UnloadSlot {
    /// Thread id owning the slot, 0 = free.
    thread: AtomicU64,
    len: UnsafeCell<usize>,
    name: UnsafeCell<[u16; MAX_QUERY_PATH]>,
    /// The unload's own key object: (its context, 0 if none; its address).
    own: UnsafeCell<(u64, u64)>,
}

// SAFETY: a slot's `len`, `name` and `own` are written only by the thread that claimed it (by a
// compare-exchange of `thread` from 0) and read only by that same thread before it frees it.
unsafe impl Sync for UnloadSlots {}

static UNLOAD_SLOTS: UnloadSlots = UnloadSlots {
    slots: [const {
        UnloadSlot {
            thread: AtomicU64::new(0),
            len: UnsafeCell::new(0),
            name: UnsafeCell::new([0; MAX_QUERY_PATH]),
            own: UnsafeCell::new((0, 0)),
        }
    }; UNLOAD_SLOTS_N],
};

impl UnloadSlots {
    /// Stores `name` and `own` for `thread`: in a free slot, or in place of an entry the same
    /// thread left ([`Stored::Replaced`]: that unload is not recorded).
    fn put(&self, thread: u64, name: &[u16], own: (u64, u64)) -> Stored {
        let mut stored = Stored::Replaced;
        let slot = self
            .slots
            .iter()
            .find(|s| s.thread.load(Ordering::Acquire) == thread)
            .or_else(|| {
                stored = Stored::Fresh;
                self.slots.iter().find(|s| {
                    s.thread
                        .compare_exchange(0, thread, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                })
            });
        let Some(slot) = slot else {
            return Stored::Full; // four unloads in flight at once: this one goes unrecorded
        };
        let n = name.len().min(MAX_QUERY_PATH);
        // SAFETY: this thread owns the slot (see the Sync impl).
        let dst = unsafe { &mut *slot.name.get() };
        dst[..n].copy_from_slice(&name[..n]);
        // SAFETY: as above.
        unsafe { *slot.len.get() = n };
        // SAFETY: as above.
        unsafe { *slot.own.get() = own };
        stored
    }

    /// Runs `f` on the name and own object stored for `thread`, and frees the slot.
    fn take(&self, thread: u64, f: impl FnOnce(&[u16], (u64, u64))) {
        let Some(slot) = self
            .slots
            .iter()
            .find(|s| s.thread.load(Ordering::Acquire) == thread)
        else {
            return;
        };
        // SAFETY: this thread owns the slot.
        let n = unsafe { *slot.len.get() };
        // SAFETY: as above.
        let name = unsafe { &*slot.name.get() };
        // SAFETY: as above.
        let own = unsafe { *slot.own.get() };
        f(&name[..n.min(MAX_QUERY_PATH)], own);
        slot.thread.store(0, Ordering::Release);
    }
}
