//! Kernel routines that not every supported Windows (or Wine) exports, resolved at run time
//! with `MmGetSystemRoutineAddress` in `DriverEntry` and called only when present.
//!
//! A static import of a missing routine keeps the driver from loading on older Windows
//! (`ExAllocatePool2` appeared in Windows 10 2004) and kills `winedevice.exe` when called under
//! Wine 8 (`CmRegisterCallbackEx`, the `*LookasideListEx` routines, ...). `cargo xtask
//! check-image` refuses an image that imports any of these statically.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicUsize, Ordering},
};

use wdk_sys::{
    LARGE_INTEGER, LOOKASIDE_LIST_EX, NTSTATUS, PALLOCATE_FUNCTION_EX,
    PCREATE_PROCESS_NOTIFY_ROUTINE_EX, PEX_CALLBACK_FUNCTION, PFREE_FUNCTION_EX, POOL_TYPE,
    UNICODE_STRING, ntddk::MmGetSystemRoutineAddress,
};

use crate::unicode::{unicode_string, wide};

/// `ExAllocatePool2` (docs: `ExAllocatePool2`, Windows 10 2004+).
pub type ExAllocatePool2 =
    unsafe extern "system" fn(flags: u64, size: usize, tag: u32) -> *mut c_void;
/// `CmRegisterCallbackEx` (docs: `CmRegisterCallbackEx`, Vista+; absent from Wine 8).
pub type CmRegisterCallbackEx = unsafe extern "system" fn(
    function: PEX_CALLBACK_FUNCTION,
    altitude: *const UNICODE_STRING,
    driver: *mut c_void,
    context: *mut c_void,
    cookie: *mut LARGE_INTEGER,
    reserved: *mut c_void,
) -> NTSTATUS;
/// `CmUnRegisterCallback` (docs: `CmUnRegisterCallback`).
pub type CmUnRegisterCallback = unsafe extern "system" fn(cookie: LARGE_INTEGER) -> NTSTATUS;
/// `CmCallbackGetKeyObjectIDEx` (docs: `CmCallbackGetKeyObjectIDEx`, Windows 8+).
pub type CmCallbackGetKeyObjectIdEx = unsafe extern "system" fn(
    cookie: *const LARGE_INTEGER,
    object: *mut c_void,
    object_id: *mut usize,
    object_name: *mut *const UNICODE_STRING,
    flags: u32,
) -> NTSTATUS;
/// `CmCallbackReleaseKeyObjectIDEx` (docs: `CmCallbackReleaseKeyObjectIDEx`, Windows 8+).
pub type CmCallbackReleaseKeyObjectIdEx =
    unsafe extern "system" fn(object_name: *const UNICODE_STRING);
/// `CmCallbackGetKeyObjectID` (docs: `CmCallbackGetKeyObjectID`; the name stays the kernel's).
pub type CmCallbackGetKeyObjectId = unsafe extern "system" fn(
    cookie: *const LARGE_INTEGER,
    object: *mut c_void,
    object_id: *mut usize,
    object_name: *mut *const UNICODE_STRING,
) -> NTSTATUS;
/// `CmSetCallbackObjectContext` (docs: `CmSetCallbackObjectContext`).
pub type CmSetCallbackObjectContext = unsafe extern "system" fn(
    object: *mut c_void,
    cookie: *const LARGE_INTEGER,
    new_context: *mut c_void,
    old_context: *mut *mut c_void,
) -> NTSTATUS;
/// `PsSetCreateProcessNotifyRoutineEx` (docs: `PsSetCreateProcessNotifyRoutineEx`, Vista SP1+).
pub type PsSetCreateProcessNotifyRoutineEx =
    unsafe extern "system" fn(routine: PCREATE_PROCESS_NOTIFY_ROUTINE_EX, remove: u8) -> NTSTATUS;
/// `ExInitializeLookasideListEx` (docs: `ExInitializeLookasideListEx`; absent from Wine 8).
pub type ExInitializeLookasideListEx = unsafe extern "system" fn(
    lookaside: *mut LOOKASIDE_LIST_EX,
    allocate: PALLOCATE_FUNCTION_EX,
    free: PFREE_FUNCTION_EX,
    pool_type: POOL_TYPE,
    flags: u32,
    size: usize,
    tag: u32,
    depth: u16,
) -> NTSTATUS;
/// `ExDeleteLookasideListEx` (docs: `ExDeleteLookasideListEx`).
pub type ExDeleteLookasideListEx = unsafe extern "system" fn(lookaside: *mut LOOKASIDE_LIST_EX);
/// `ExAcquireSpinLockShared` / `ExAcquireSpinLockExclusive` (docs, wdm.h: Windows Vista SP1+;
/// absent from Wine 8's ntoskrnl.exe): acquire an `EX_SPIN_LOCK` (a zero-initialised LONG),
/// raise to `DISPATCH_LEVEL`, return the entry IRQL.
pub type ExAcquireSpinLock = unsafe extern "system" fn(lock: *mut i32) -> u8;
/// `ExReleaseSpinLockShared` / `ExReleaseSpinLockExclusive` (docs, Vista SP1+): release the
/// hold of that mode at `DISPATCH_LEVEL` and return to `old_irql`, the acquisition's value.
pub type ExReleaseSpinLock = unsafe extern "system" fn(lock: *mut i32, old_irql: u8);
/// `KeQuerySystemTimePrecise` (docs: `KeQuerySystemTimePrecise`, Windows 8+).
pub type KeQuerySystemTimePrecise = unsafe extern "system" fn(time: *mut LARGE_INTEGER);

/// `RtlWalkFrameChain` (ntddk.h, "reserved for system use"; exported since Windows 2000):
/// with `RTL_WALK_USER_MODE_STACK` (1) in `flags`, the current thread's user-mode return
/// addresses, innermost first; returns how many it wrote (at most `count`).
pub type RtlWalkFrameChain =
    unsafe extern "system" fn(callers: *mut *mut c_void, count: u32, flags: u32) -> u32;
/// `IoIs32bitProcess` (docs: `IoIs32bitProcess`, 64-bit Windows): with `irp` NULL, whether
/// the current process context is a 32-bit (Wow64) process, for a `UserMode` previous mode.
pub type IoIs32bitProcess = unsafe extern "system" fn(irp: *mut c_void) -> u8;
/// `SeLocateProcessImageName` (docs, Vista+): the process's image path in a new string the
/// caller frees with `ExFreePool`.
pub type SeLocateProcessImageName =
    unsafe extern "system" fn(process: *mut c_void, name: *mut *mut UNICODE_STRING) -> NTSTATUS;
/// `PLOAD_IMAGE_NOTIFY_ROUTINE` (docs: `PLOAD_IMAGE_NOTIFY_ROUTINE`).
pub type LoadImageNotifyRoutine = unsafe extern "C" fn(
    full_image_name: *mut UNICODE_STRING,
    process_id: *mut c_void,
    image_info: *mut c_void,
);
/// `ExGetPreviousMode` (docs, wdm.h; any IRQL): the previous processor mode of the current
/// thread's system service, `UserMode` or `KernelMode`.
pub type ExGetPreviousMode = unsafe extern "system" fn() -> i8;
/// `PsSetLoadImageNotifyRoutine` (docs, Windows 2000+).
pub type PsSetLoadImageNotifyRoutine =
    unsafe extern "system" fn(routine: Option<LoadImageNotifyRoutine>) -> NTSTATUS;
/// `PsSetLoadImageNotifyRoutineEx` (docs, Windows 10 1709+).
pub type PsSetLoadImageNotifyRoutineEx =
    unsafe extern "system" fn(routine: Option<LoadImageNotifyRoutine>, flags: usize) -> NTSTATUS;
/// `PsRemoveLoadImageNotifyRoutine` (docs).
pub type PsRemoveLoadImageNotifyRoutine =
    unsafe extern "system" fn(routine: Option<LoadImageNotifyRoutine>) -> NTSTATUS;

macro_rules! routines {
    ($( $(#[$doc:meta])* $slot:ident, $getter:ident: $ty:ty = $name:literal; )*) => {
        $( static $slot: AtomicUsize = AtomicUsize::new(0); )*

        /// Resolves every optional routine. Call once, from `DriverEntry` (`PASSIVE_LEVEL`),
        /// before anything else can run (a lock taken before would not know its kind).
        pub fn resolve_all() {
            $(
                let mut name = unicode_string(wide!($name));
                // The routine is documented for PASSIVE_LEVEL, which DriverEntry runs at.
                // SAFETY: `name` is a valid UNICODE_STRING over a static string.
                let address = unsafe { MmGetSystemRoutineAddress(&raw mut name) };
                $slot.store(address as usize, Ordering::Release);
            )*
            ex_spin_locks_all_or_none();
        }

        $(
            $(#[$doc])*
            #[must_use]
            pub fn $getter() -> Option<$ty> {
                let address = $slot.load(Ordering::Acquire);
                if address == 0 {
                    return None;
                }
                // The address came from MmGetSystemRoutineAddress for exactly this exported
                // name, and exported kernel routines stay mapped while the system runs.
                // SAFETY: that export's documented prototype is `$ty`.
                Some(unsafe { core::mem::transmute::<usize, $ty>(address) })
            }
        )*

        /// Names of the optional routines this system lacks, for diagnostics.
        pub fn missing() -> impl Iterator<Item = &'static str> {
            [$( ($name, $slot.load(Ordering::Acquire) == 0), )*]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
        }
    };
}

routines! {
    /// `ExAllocatePool2`, when the system has it.
    EX_ALLOCATE_POOL2, ex_allocate_pool2: ExAllocatePool2 = "ExAllocatePool2";
    /// `CmRegisterCallbackEx`, when the system has it.
    CM_REGISTER_CALLBACK_EX, cm_register_callback_ex: CmRegisterCallbackEx = "CmRegisterCallbackEx";
    /// `CmUnRegisterCallback`, when the system has it.
    CM_UNREGISTER_CALLBACK, cm_unregister_callback: CmUnRegisterCallback = "CmUnRegisterCallback";
    /// `CmCallbackGetKeyObjectIDEx`, when the system has it.
    CM_GET_KEY_OBJECT_ID_EX, cm_callback_get_key_object_id_ex: CmCallbackGetKeyObjectIdEx = "CmCallbackGetKeyObjectIDEx";
    /// `CmCallbackReleaseKeyObjectIDEx`, when the system has it.
    CM_RELEASE_KEY_OBJECT_ID_EX, cm_callback_release_key_object_id_ex: CmCallbackReleaseKeyObjectIdEx = "CmCallbackReleaseKeyObjectIDEx";
    /// `CmCallbackGetKeyObjectID` (Windows 7), when the system has it.
    CM_GET_KEY_OBJECT_ID, cm_callback_get_key_object_id: CmCallbackGetKeyObjectId = "CmCallbackGetKeyObjectID";
    /// `CmSetCallbackObjectContext`, when the system has it.
    CM_SET_OBJECT_CONTEXT, cm_set_callback_object_context: CmSetCallbackObjectContext = "CmSetCallbackObjectContext";
    /// `PsSetCreateProcessNotifyRoutineEx`, when the system has it.
    PS_SET_PROCESS_NOTIFY_EX, ps_set_create_process_notify_routine_ex: PsSetCreateProcessNotifyRoutineEx = "PsSetCreateProcessNotifyRoutineEx";
    /// `ExInitializeLookasideListEx`, when the system has it.
    EX_INIT_LOOKASIDE_EX, ex_initialize_lookaside_list_ex: ExInitializeLookasideListEx = "ExInitializeLookasideListEx";
    /// `ExDeleteLookasideListEx`, when the system has it.
    EX_DELETE_LOOKASIDE_EX, ex_delete_lookaside_list_ex: ExDeleteLookasideListEx = "ExDeleteLookasideListEx";
    /// `ExAcquireSpinLockShared`, when the system has all four `EX_SPIN_LOCK` routines.
    EX_ACQUIRE_SPIN_LOCK_SHARED, ex_acquire_spin_lock_shared: ExAcquireSpinLock = "ExAcquireSpinLockShared";
    /// `ExReleaseSpinLockShared`, when the system has all four `EX_SPIN_LOCK` routines.
    EX_RELEASE_SPIN_LOCK_SHARED, ex_release_spin_lock_shared: ExReleaseSpinLock = "ExReleaseSpinLockShared";
    /// `ExAcquireSpinLockExclusive`, when the system has all four `EX_SPIN_LOCK` routines.
    EX_ACQUIRE_SPIN_LOCK_EXCLUSIVE, ex_acquire_spin_lock_exclusive: ExAcquireSpinLock = "ExAcquireSpinLockExclusive";
    /// `ExReleaseSpinLockExclusive`, when the system has all four `EX_SPIN_LOCK` routines.
    EX_RELEASE_SPIN_LOCK_EXCLUSIVE, ex_release_spin_lock_exclusive: ExReleaseSpinLock = "ExReleaseSpinLockExclusive";
    /// `KeQuerySystemTimePrecise`, when the system has it.
    KE_QUERY_TIME_PRECISE, ke_query_system_time_precise: KeQuerySystemTimePrecise = "KeQuerySystemTimePrecise";
    /// `PsGetProcessStartKey`, when the system has it.
    PS_GET_PROCESS_START_KEY, ps_get_process_start_key: PsGetProcessStartKey = "PsGetProcessStartKey";
    /// `PsGetProcessCreateTimeQuadPart` (ntddk.h, Windows XP+, any IRQL): the start key where
    /// `PsGetProcessStartKey` is missing.
    PS_GET_PROCESS_CREATE_TIME, ps_get_process_create_time_quad_part: PsGetProcessCreateTimeQuadPart = "PsGetProcessCreateTimeQuadPart";
    /// `ExGetPreviousMode`, when the system has it (resolved, not imported: Wine's
    /// ntoskrnl is not known to export it).
    EX_GET_PREVIOUS_MODE, ex_get_previous_mode: ExGetPreviousMode = "ExGetPreviousMode";
    /// `PsInitialSystemProcess` (a data export, wdm.h): the variable holding the System
    /// process, whose handle table kernel handles go into.
    PS_INITIAL_SYSTEM_PROCESS, ps_initial_system_process: PsInitialSystemProcess = "PsInitialSystemProcess";
    /// `SeLocateProcessImageName`, when the system has it.
    SE_LOCATE_PROCESS_IMAGE_NAME, se_locate_process_image_name: SeLocateProcessImageName = "SeLocateProcessImageName";
    /// `IoIs32bitProcess`, when the system has it (resolved, not imported: Wine's ntoskrnl
    /// is not known to export it).
    IO_IS_32BIT_PROCESS, io_is_32bit_process: IoIs32bitProcess = "IoIs32bitProcess";
    /// `RtlWalkFrameChain`, when the system has it (Wine 8 may not).
    RTL_WALK_FRAME_CHAIN, rtl_walk_frame_chain: RtlWalkFrameChain = "RtlWalkFrameChain";
    /// `PsSetLoadImageNotifyRoutine`, when the system has it.
    PS_SET_LOAD_IMAGE_NOTIFY, ps_set_load_image_notify_routine: PsSetLoadImageNotifyRoutine = "PsSetLoadImageNotifyRoutine";
    /// `PsSetLoadImageNotifyRoutineEx` (Windows 10 1709+), when the system has it.
    PS_SET_LOAD_IMAGE_NOTIFY_EX, ps_set_load_image_notify_routine_ex: PsSetLoadImageNotifyRoutineEx = "PsSetLoadImageNotifyRoutineEx";
    /// `PsRemoveLoadImageNotifyRoutine`, when the system has it.
    PS_REMOVE_LOAD_IMAGE_NOTIFY, ps_remove_load_image_notify_routine: PsRemoveLoadImageNotifyRoutine = "PsRemoveLoadImageNotifyRoutine";
}

/// The tracker's locks use the four `EX_SPIN_LOCK` routines together or not at all
/// (`lock.rs`): a hold taken with one kind of lock must be released with the same kind, so
/// unless the system has all four, none is kept and every lock is a `KSPIN_LOCK`.
fn ex_spin_locks_all_or_none() {
    let slots = [
        &EX_ACQUIRE_SPIN_LOCK_SHARED,
        &EX_RELEASE_SPIN_LOCK_SHARED,
        &EX_ACQUIRE_SPIN_LOCK_EXCLUSIVE,
        &EX_RELEASE_SPIN_LOCK_EXCLUSIVE,
    ];
    if slots.iter().any(|s| s.load(Ordering::Acquire) == 0) {
        for s in slots {
            s.store(0, Ordering::Release);
        }
    }
}

/// `PsGetProcessCreateTimeQuadPart`: the process's creation time (FILETIME units); the
/// value `KeQuerySystemTime` gave when the process was created, unaffected by later clock
/// changes (docs), so a reused pid has another one.
pub type PsGetProcessCreateTimeQuadPart = unsafe extern "system" fn(process: *mut c_void) -> i64;
/// `PsInitialSystemProcess`: the address of the exported `PEPROCESS` variable (an export's
/// address is the variable's for data, as `MmGetSystemRoutineAddress` returns it).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct PsInitialSystemProcess(pub usize);

/// `PsGetProcessStartKey` (Windows 10 1703+): a per-boot unique key of a process.
pub type PsGetProcessStartKey = unsafe extern "system" fn(process: *mut c_void) -> u64;
