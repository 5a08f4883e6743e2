//! Configuration manager callbacks: CmRegisterCallbackEx / CmUnRegisterCallback (altitude,
//! cookie, collision), the delivery of pre- and post-notifications with their real x64
//! structure layouts (per-callback CallContext from pre to post, ObjectContext per callback,
//! an error or STATUS_CALLBACK_BYPASS from a pre-callback stops the round and sends the
//! post-notification, with that status, to the callbacks above it that returned success —
//! see [`PreOutcome::unwind`] —, a post-callback changing the status through ReturnStatus), key
//! object contexts (CmSetCallbackObjectContext, cleanup on object deletion and on
//! unregistration), and CmCallbackGetKeyObjectIDEx / CmCallbackReleaseKeyObjectIDEx /
//! CmCallbackGetKeyObjectID. The hives, keys and handles themselves live in [`crate::nt::cm::hive`].
//!
//! Order (docs, "Filtering Registry Calls"): pre-notifications go from the highest altitude to
//! the lowest, post-notifications from the lowest to the highest.

use std::ffi::c_void;

use crate::machine::cpu::APC_LEVEL;
use crate::nt::cm::altitude::Altitude;
use crate::nt::exports::Export;
use crate::nt::kernel::{self, call_driver};
use crate::nt::layout::{ExCallbackFn, UnicodeString, poke, read_unicode};
use crate::nt::status::{
    self, NtStatus, STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER, STATUS_INVALID_PARAMETER_3, STATUS_INVALID_PARAMETER_6,
    STATUS_SUCCESS,
};
use crate::verifier::bugcheck::{require_irql, verifier_violation};

/// STATUS_UNSUCCESSFUL: the generic failure the model gives an injected CmUnRegisterCallback
/// failure (the page names no specific code besides STATUS_INVALID_PARAMETER).
const STATUS_UNSUCCESSFUL: NtStatus = 0xC000_0001_u32.cast_signed();

/// What a pre-callback returns when it completed the operation itself.
pub use crate::nt::status::STATUS_CALLBACK_BYPASS;

/// REG_NOTIFY_CLASS values (wdm.h; the enumeration in ReactOS `sdk/include/xdk/cmtypes.h`
/// counts them: RegNtPreRenameKey = RegNtRenameKey is the fifth, 4; RegNtPostRenameKey 19).
pub mod class {
    /// RegNtPreDeleteKey (= RegNtDeleteKey).
    pub const PRE_DELETE_KEY: usize = 0;
    /// RegNtPostDeleteKey.
    pub const POST_DELETE_KEY: usize = 15;
    /// RegNtPreRenameKey (= RegNtRenameKey).
    pub const PRE_RENAME_KEY: usize = 4;
    /// RegNtPostRenameKey.
    pub const POST_RENAME_KEY: usize = 19;
    /// RegNtPreKeyHandleClose (= RegNtKeyHandleClose).
    pub const PRE_KEY_HANDLE_CLOSE: usize = 14;
    /// RegNtPostKeyHandleClose.
    pub const POST_KEY_HANDLE_CLOSE: usize = 25;
    /// RegNtPreCreateKeyEx.
    pub const PRE_CREATE_KEY_EX: usize = 26;
    /// RegNtPostCreateKeyEx.
    pub const POST_CREATE_KEY_EX: usize = 27;
    /// RegNtPreOpenKeyEx.
    pub const PRE_OPEN_KEY_EX: usize = 28;
    /// RegNtPostOpenKeyEx.
    pub const POST_OPEN_KEY_EX: usize = 29;
    /// RegNtPreLoadKey.
    pub const PRE_LOAD_KEY: usize = 32;
    /// RegNtPostLoadKey.
    pub const POST_LOAD_KEY: usize = 33;
    /// RegNtPreUnLoadKey.
    pub const PRE_UNLOAD_KEY: usize = 34;
    /// RegNtPostUnLoadKey.
    pub const POST_UNLOAD_KEY: usize = 35;
    /// RegNtCallbackObjectContextCleanup.
    pub const CALLBACK_OBJECT_CONTEXT_CLEANUP: usize = 40;
}

/// REG_CREATE_KEY_INFORMATION_V1 / REG_OPEN_KEY_INFORMATION_V1 (0x88).
#[repr(C)]
#[derive(Debug)]
pub struct RegCreateKeyInformationV1 {
    /// 0x00
    pub complete_name: *mut UnicodeString,
    /// 0x08
    pub root_object: *mut c_void,
    /// 0x10
    pub object_type: *mut c_void,
    /// 0x18
    pub options: u32,
    /// padding
    pub pad0: u32,
    /// 0x20
    pub class: *mut UnicodeString,
    /// 0x28
    pub security_descriptor: *mut c_void,
    /// 0x30
    pub security_quality_of_service: *mut c_void,
    /// 0x38
    pub desired_access: u32,
    /// 0x3C
    pub granted_access: u32,
    /// 0x40
    pub disposition: *mut u32,
    /// 0x48
    pub result_object: *mut *mut c_void,
    /// 0x50
    pub call_context: *mut c_void,
    /// 0x58
    pub root_object_context: *mut c_void,
    /// 0x60
    pub transaction: *mut c_void,
    /// 0x68: 1 for the _V1 layout
    pub version: usize,
    /// 0x70
    pub remaining_name: *mut UnicodeString,
    /// 0x78
    pub wow64_flags: u32,
    /// 0x7C
    pub attributes: u32,
    /// 0x80
    pub check_access_mode: i8,
    /// padding
    pub pad1: [u8; 7],
}

/// REG_POST_OPERATION_INFORMATION (0x38).
#[repr(C)]
#[derive(Debug)]
pub struct RegPostOperationInformation {
    /// 0x00: valid only when `status` is STATUS_SUCCESS.
    pub object: *mut c_void,
    /// 0x08
    pub status: NtStatus,
    /// padding
    pub pad0: u32,
    /// 0x10
    pub pre_information: *mut c_void,
    /// 0x18
    pub return_status: NtStatus,
    /// padding
    pub pad1: u32,
    /// 0x20
    pub call_context: *mut c_void,
    /// 0x28
    pub object_context: *mut c_void,
    /// 0x30
    pub reserved: *mut c_void,
}

/// REG_KEY_HANDLE_CLOSE_INFORMATION (0x20).
#[repr(C)]
#[derive(Debug)]
pub struct RegKeyHandleCloseInformation {
    /// 0x00
    pub object: *mut c_void,
    /// 0x08
    pub call_context: *mut c_void,
    /// 0x10
    pub object_context: *mut c_void,
    /// 0x18
    pub reserved: *mut c_void,
}

/// REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION (0x18).
#[repr(C)]
#[derive(Debug)]
pub struct RegCallbackContextCleanupInformation {
    /// 0x00
    pub object: *mut c_void,
    /// 0x08
    pub object_context: *mut c_void,
    /// 0x10
    pub reserved: *mut c_void,
}

/// REG_LOAD_KEY_INFORMATION (0x58).
#[repr(C)]
#[derive(Debug)]
pub struct RegLoadKeyInformation {
    /// 0x00
    pub object: *mut c_void,
    /// 0x08
    pub key_name: *mut UnicodeString,
    /// 0x10
    pub source_file: *mut UnicodeString,
    /// 0x18
    pub flags: u32,
    /// padding
    pub pad0: u32,
    /// 0x20
    pub trust_class_object: *mut c_void,
    /// 0x28
    pub user_event: *mut c_void,
    /// 0x30
    pub desired_access: u32,
    /// padding
    pub pad1: u32,
    /// 0x38
    pub root_handle: *mut u64,
    /// 0x40
    pub call_context: *mut c_void,
    /// 0x48
    pub object_context: *mut c_void,
    /// 0x50
    pub reserved: *mut c_void,
}

/// REG_RENAME_KEY_INFORMATION (0x28): Learn
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_rename_key_information>
/// (Object, NewName, CallContext, ObjectContext, Reserved).
#[repr(C)]
#[derive(Debug)]
pub struct RegRenameKeyInformation {
    /// 0x00: the key object of the key being renamed
    pub object: *mut c_void,
    /// 0x08: the new name (the last path component)
    pub new_name: *mut UnicodeString,
    /// 0x10
    pub call_context: *mut c_void,
    /// 0x18
    pub object_context: *mut c_void,
    /// 0x20
    pub reserved: *mut c_void,
}

/// REG_DELETE_KEY_INFORMATION (0x20): Learn
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_delete_key_information>
/// (Object, CallContext, ObjectContext, Reserved).
#[repr(C)]
#[derive(Debug)]
pub struct RegDeleteKeyInformation {
    /// 0x00: the key object of the key being deleted
    pub object: *mut c_void,
    /// 0x08
    pub call_context: *mut c_void,
    /// 0x10
    pub object_context: *mut c_void,
    /// 0x18
    pub reserved: *mut c_void,
}

/// REG_UNLOAD_KEY_INFORMATION (0x28).
#[repr(C)]
#[derive(Debug)]
pub struct RegUnloadKeyInformation {
    /// 0x00: the hive's root key object
    pub object: *mut c_void,
    /// 0x08
    pub user_event: *mut c_void,
    /// 0x10
    pub call_context: *mut c_void,
    /// 0x18
    pub object_context: *mut c_void,
    /// 0x20
    pub reserved: *mut c_void,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RegCreateKeyInformationV1>() == 0x88);
    assert!(offset_of!(RegCreateKeyInformationV1, desired_access) == 0x38);
    assert!(offset_of!(RegCreateKeyInformationV1, disposition) == 0x40);
    assert!(offset_of!(RegCreateKeyInformationV1, call_context) == 0x50);
    assert!(offset_of!(RegCreateKeyInformationV1, root_object_context) == 0x58);
    assert!(offset_of!(RegCreateKeyInformationV1, version) == 0x68);
    assert!(offset_of!(RegCreateKeyInformationV1, check_access_mode) == 0x80);
    assert!(size_of::<RegPostOperationInformation>() == 0x38);
    assert!(offset_of!(RegPostOperationInformation, status) == 0x08);
    assert!(offset_of!(RegPostOperationInformation, call_context) == 0x20);
    assert!(offset_of!(RegPostOperationInformation, object_context) == 0x28);
    assert!(size_of::<RegKeyHandleCloseInformation>() == 0x20);
    assert!(size_of::<RegCallbackContextCleanupInformation>() == 0x18);
    assert!(size_of::<RegLoadKeyInformation>() == 0x58);
    assert!(offset_of!(RegLoadKeyInformation, call_context) == 0x40);
    assert!(size_of::<RegUnloadKeyInformation>() == 0x28);
    assert!(size_of::<RegDeleteKeyInformation>() == 0x20);
    assert!(offset_of!(RegDeleteKeyInformation, call_context) == 0x08);
    assert!(offset_of!(RegDeleteKeyInformation, object_context) == 0x10);
    assert!(size_of::<RegRenameKeyInformation>() == 0x28);
    assert!(offset_of!(RegRenameKeyInformation, new_name) == 0x08);
    assert!(offset_of!(RegRenameKeyInformation, call_context) == 0x10);
    assert!(offset_of!(RegRenameKeyInformation, object_context) == 0x18);
    assert!(offset_of!(RegUnloadKeyInformation, object_context) == 0x18);
};

/// One registered callback.
#[derive(Debug, Clone)]
pub struct Callback {
    /// Cookie handed back to the driver.
    pub cookie: i64,
    /// Function.
    pub function: usize,
    /// Context.
    pub context: usize,
    /// Altitude string, as it read at registration (for ordering and reports).
    pub altitude: String,
    /// Where the driver's altitude string is: the model keeps the caller's pointer, as
    /// Windows may ([`KeptAltitude`]). `None` for an emulated filter.
    pub kept: Option<KeptAltitude>,
    /// Registered by the emulator itself (an "other filter"), not by the driver.
    pub emulated: bool,
}

/// The `UNICODE_STRING` a driver handed to CmRegisterCallbackEx as its Altitude, kept by
/// pointer and read again when the kernel needs the callback's altitude later: when another
/// filter registers (its altitude is compared with every registered one). A string that no
/// longer reads as it did at registration is a verifier violation.
///
/// An *inference*, not a documented rule: Learn's CmRegisterCallbackEx says only that
/// Altitude points to a UNICODE_STRING holding the driver's altitude, and neither the WRK
/// (whose cmhook.c has only CmRegisterCallback, without an altitude) nor ReactOS has the Ex
/// routine. The one Microsoft sample keeps the string alive for the whole registration:
/// regfltr `sys/util.c` CreateCallbackContext puts the UNICODE_STRING and its buffer in the
/// pool-allocated callback context passed as `&CallbackCtx->Altitude`, freed only after
/// CmUnRegisterCallback (`sys/pre.c`). Until 2026-12-06 the model copied the string at
/// registration without saying so, and a driver that passed one from its stack frame (as
/// hivetrack did, fidelity audit 21a, A1) passed every test. The dead part of a driver's
/// stack is poisoned after each call into it ([`crate::nt::kernel::call_driver`]), so such a
/// string reads differently by the next registration.
#[derive(Debug, Clone, Copy)]
pub struct KeptAltitude {
    /// Address of the driver's UNICODE_STRING.
    string: usize,
    /// Its Length, MaximumLength and Buffer at registration.
    header: (u16, u16, usize),
}

/// Reads every driver's kept altitude string again ([`KeptAltitude`]), as a registration
/// comparing altitudes would; a string changed since its registration is a verifier violation.
fn check_kept_altitudes() {
    let kept: Vec<(i64, String, KeptAltitude)> = kernel::with(|k| {
        k.registry
            .callbacks
            .iter()
            .filter_map(|c| c.kept.map(|kept| (c.cookie, c.altitude.clone(), kept)))
            .collect()
    });
    for (cookie, altitude, kept) in kept {
        let us = kept.string as *const UnicodeString;
        // SAFETY: `us` pointed to a readable UNICODE_STRING at registration. Driver stack and
        // pool stay mapped in the model; memory that does not faults as Windows would.
        let now = unsafe { us.read_unaligned() };
        let header = (now.length, now.maximum_length, now.buffer as usize);
        // SAFETY: the same header as at registration, whose buffer was readable for Length.
        let same =
            header == kept.header && unsafe { read_unicode(us) }.is_some_and(|a| a == altitude);
        if !same {
            verifier_violation(&format!(
                "the Altitude string of registry callback cookie {cookie:#x} (\"{altitude}\") \
                 no longer reads the same when another filter registers: the driver let it go \
                 before CmUnRegisterCallback (UNICODE_STRING at {:#x}: Length {}, \
                 MaximumLength {}, Buffer {:#x}; the regfltr sample keeps it for the \
                 registration's life; that Windows keeps the pointer is the model's inference)",
                kept.string, header.0, header.1, header.2
            ));
        }
    }
}

impl Callback {
    /// Its altitude as an exact decimal ([`crate::nt::cm::altitude`]); a string that is not one
    /// sorts lowest (Learn documents no status for it).
    fn altitude_value(&self) -> Altitude {
        Altitude::parse(&self.altitude).unwrap_or_else(Altitude::zero)
    }
}

/// Registry callback state.
#[derive(Debug, Default)]
pub struct RegistryState {
    /// Registered callbacks in registration order.
    pub callbacks: Vec<Callback>,
    next_cookie: i64,
    /// Names handed out by CmCallbackGetKeyObjectIDEx and not yet released: buffer address ->
    /// (name, operation).
    pub names: std::collections::HashMap<usize, (String, String)>,
    /// Notifications delivered, by class.
    pub delivered: std::collections::BTreeMap<usize, u64>,
    /// Calls in progress, by cookie (CmUnRegisterCallback waits for them).
    pub in_flight: std::collections::HashMap<i64, u32>,
    /// Cookies being unregistered: no new notification reaches them.
    pub unregistering: std::collections::HashSet<i64>,
    /// A post also goes to the callbacks registered after its pre (with CallContext NULL),
    /// as the Windows Research Kernel does: `base/ntos/config/cmhook.c` CmpCallCallBacks
    /// calls a post (`Wind == FALSE`) on every callback in `CmpCallBackVector`, and nothing
    /// records which callbacks saw the pre. Off by default: the model delivers a post only
    /// to the callbacks that saw its pre, since a per-callback CallContext (Vista and later)
    /// needs that record; no source says which Windows 10 does, so a scenario that depends
    /// on it turns this on ([`set_late_posts`]).
    pub late_posts: bool,
}

/// Whether posts also reach the callbacks registered after their pre
/// ([`RegistryState::late_posts`]).
pub fn set_late_posts(on: bool) {
    kernel::with(|k| k.registry.late_posts = on);
}

thread_local! {
    /// Cookies of the callbacks this thread is inside (innermost last).
    static INSIDE: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Key objects whose pre- or post-close notification this thread is delivering.
    static CLOSING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f`, which delivers RegNtPreKeyHandleClose or RegNtPostKeyHandleClose for key
/// `object`: meanwhile the callbacks may pass that object to configuration manager routines
/// even though it is being destroyed ([`may_name`]).
pub(crate) fn delivering_close<R>(object: usize, f: impl FnOnce() -> R) -> R {
    CLOSING.with(|c| c.borrow_mut().push(object));
    let r = f();
    CLOSING.with(|c| c.borrow_mut().pop());
    r
}

/// Whether a driver may pass key object `object` (`destroyed`: its destruction has begun) to
/// a configuration manager routine such as CmCallbackGetKeyObjectIDEx. A key object being
/// destroyed "is not in a valid state" in the pre-close, post-close and context-cleanup
/// notifications, "However, during a RegistryCallback call to handle a
/// RegNtPreKeyHandleClose or RegNtPostKeyHandleClose notification, a registry filter driver
/// can call a configuration manager routine (for example, CmGetBoundTransaction) that takes a
/// registry object as a parameter" (Learn, "Invalid Key Object Pointers in Registry
/// Notifications"). So: always before its destruction, and after it only inside its close
/// notifications — not in its cleanup. Until 2026-12-05 the model called a post-close's use
/// a violation.
fn may_name(object: usize, destroyed: bool) -> bool {
    !destroyed || CLOSING.with(|c| c.borrow().contains(&object))
}

impl RegistryState {
    /// Callbacks left registered and names not released, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .callbacks
            .iter()
            .filter(|c| !c.emulated)
            .map(|c| {
                format!(
                    "registry callback cookie {:#x} (altitude {}) still registered: Windows would call into unloaded code (bugcheck 0xCE)",
                    c.cookie, c.altitude
                )
            })
            .collect();
        v.extend(self.names.iter().map(|(p, (n, op))| {
            format!("key object name {p:#x} ({n}) from CmCallbackGetKeyObjectIDEx during {op} never released")
        }));
        v.sort();
        v
    }
}

/// Registers a callback on behalf of the emulator (another filter at `altitude`).
///
/// # Errors
/// STATUS_FLT_INSTANCE_ALTITUDE_COLLISION when the altitude is taken.
pub fn register_emulated(
    function: ExCallbackFn,
    context: usize,
    altitude: &str,
) -> Result<i64, NtStatus> {
    register(function as usize, context, altitude.to_string(), None, None)
}

/// Registers a callback; `kept` is the driver's altitude string (None for an emulated
/// filter), `cookie_out` where the driver wants its cookie.
///
/// The cookie is written before the callback is published, in the same step: the WRK's
/// `base/ntos/config/cmhook.c` CmRegisterCallback stores `*Cookie` (line 112) before it
/// installs the callback with `ExCompareExchangeCallBack` (line 121), after which another
/// thread's notification can reach it. Until 2026-12-06 the model published first and wrote
/// the cookie after, so such a notification found the driver's cookie still unset (fidelity
/// audit 21a, A8).
fn register(
    function: usize,
    context: usize,
    altitude: String,
    kept: Option<KeptAltitude>,
    cookie_out: Option<*mut i64>,
) -> Result<i64, NtStatus> {
    // Comparing altitudes reads every registered one (where Windows keeps only a pointer).
    check_kept_altitudes();
    kernel::with(|k| {
        let r = &mut k.registry;
        // One callback per altitude, compared as numbers ("385200" and "385200.0" are one).
        let wanted = Altitude::parse(&altitude).unwrap_or_else(Altitude::zero);
        if r.callbacks.iter().any(|c| c.altitude_value() == wanted) {
            return Err(STATUS_FLT_INSTANCE_ALTITUDE_COLLISION);
        }
        r.next_cookie += 1;
        let cookie = 0x01DA_0000_0000_0000 + r.next_cookie * 0x10;
        if let Some(out) = cookie_out {
            // SAFETY: checked non-null by CmRegisterCallbackEx; the driver passes a writable
            // LARGE_INTEGER.
            unsafe { out.write_unaligned(cookie) };
        }
        r.callbacks.push(Callback {
            cookie,
            function,
            context,
            altitude,
            kept,
            emulated: cookie_out.is_none(),
        });
        Ok(cookie)
    })
}

/// The callbacks a registry operation on this thread reaches, by altitude: highest first.
///
/// An operation a callback makes itself (a filter's own `ZwCreateKey`, `ZwClose`, or an
/// `ObDereferenceObject` that ends a key object) reaches only the callbacks *below* the
/// innermost callback this thread is in: "if a driver modifies an operation by calling a
/// different registry function, the configuration manager does not restart at the top of
/// the filter stack" (Learn, [Supporting Layered Registry Filtering Drivers](https://learn.microsoft.com/en-us/windows-hardware/drivers/kernel/supporting-layered-registry-filtering-drivers));
/// regfltr `multialt.c`, MultipleAltitudeInternalInvocationSample: the highest callback "does
/// not get notifications for the registry operations called by the middle callback", the
/// middle one "does not get notifications for the registry operations that it calls", the
/// lowest gets them all. Until 2026-12-04 such an operation reached every callback, the
/// calling one included (found in review). Context cleanups are not a round of the stack:
/// each goes to the callback whose context it is ([`notify_context_cleanup`]).
pub(crate) fn by_altitude() -> Vec<Callback> {
    let inside = INSIDE.with(|i| i.borrow().last().copied());
    let mut v = kernel::with(|k| {
        let r = &k.registry;
        let ceiling = inside.and_then(|cookie| {
            r.callbacks
                .iter()
                .find(|c| c.cookie == cookie)
                .map(Callback::altitude_value)
        });
        r.callbacks
            .iter()
            .filter(|c| !r.unregistering.contains(&c.cookie))
            .filter(|c| ceiling.as_ref().is_none_or(|top| c.altitude_value() < *top))
            .cloned()
            .collect::<Vec<_>>()
    });
    v.sort_by_cached_key(|c| std::cmp::Reverse(c.altitude_value()));
    v
}

/// Calls one callback, unless it is being or has been unregistered.
///
/// A round takes its snapshot of the callbacks before calling any; by the time it reaches
/// one, `CmUnRegisterCallback` may have begun or even returned (and the driver's image been
/// unmapped). ReactOS `ntoskrnl/config/cmhook.c`, CmiCallRegisteredCallbacks: each call
/// first takes the callback's rundown protection (`!PendingDelete &&
/// ExAcquireRundownProtection`), which fails once CmUnRegisterCallback has marked it
/// PendingDelete; CmUnRegisterCallback waits for the protections granted
/// (ExWaitForRundownProtectionRelease) before unlinking it. So a callback is never entered
/// after its unregistration began, and never after it returned.
pub(crate) fn invoke(cb: &Callback, class: usize, argument: usize) -> NtStatus {
    let gone = kernel::with(|k| {
        let r = &mut k.registry;
        let registered = r.callbacks.iter().any(|c| c.cookie == cb.cookie);
        if !registered
            || (r.unregistering.contains(&cb.cookie)
                && class != class::CALLBACK_OBJECT_CONTEXT_CLEANUP)
        {
            return true;
        }
        *r.delivered.entry(class).or_insert(0) += 1;
        *r.in_flight.entry(cb.cookie).or_insert(0) += 1;
        false
    });
    if gone {
        return STATUS_SUCCESS;
    }
    INSIDE.with(|i| i.borrow_mut().push(cb.cookie));
    // SAFETY: `function` was registered as an EX_CALLBACK_FUNCTION (by the driver through
    // CmRegisterCallbackEx, or by the emulator).
    let f = unsafe { std::mem::transmute::<usize, ExCallbackFn>(cb.function) };
    let (ctx, arg1, arg2) = (
        cb.context as *mut c_void,
        class as *mut c_void,
        argument as *mut c_void,
    );
    let label = format!("RegistryCallback(class {class}, altitude {})", cb.altitude);
    let (irql, previous) = (
        kernel::with(|k| k.callback_irql),
        crate::machine::cpu::irql(),
    );
    crate::machine::cpu::set_irql(irql.max(previous));
    // SAFETY: calling the registered callback with its context and a live argument structure.
    let status = call_driver(&label, || unsafe { f(ctx, arg1, arg2) });
    crate::machine::cpu::set_irql(previous);
    INSIDE.with(|i| i.borrow_mut().pop());
    kernel::with(|k| {
        if let Some(n) = k.registry.in_flight.get_mut(&cb.cookie) {
            *n -= 1;
        }
    });
    status
}

/// Where the per-callback fields live in a pre-information structure.
#[derive(Clone, Copy, Debug)]
pub struct PreFields {
    /// Offset of CallContext.
    pub call_context: usize,
    /// Offset of ObjectContext (RootObjectContext for create/open), if any.
    pub object_context: Option<usize>,
    /// The object whose per-callback context goes into `object_context`.
    pub object: usize,
}

/// What the pre-notification round decided.
#[derive(Debug)]
pub struct PreOutcome {
    /// STATUS_SUCCESS, an error from a callback, or STATUS_CALLBACK_BYPASS.
    pub status: NtStatus,
    /// (cookie, CallContext) of every callback that saw the pre-notification.
    pub call_contexts: Vec<(i64, usize)>,
}

impl PreOutcome {
    /// Whether the operation goes on (and post-notifications will be delivered).
    #[must_use]
    pub const fn proceeds(&self) -> bool {
        self.status == STATUS_SUCCESS
    }

    /// After a veto (an error or STATUS_CALLBACK_BYPASS from a pre-callback): delivers
    /// `post_class` to the callbacks above the one that vetoed — they returned success, so
    /// they are owed a post —, lowest first; the vetoing callback and those below it get
    /// none. Returns the status the caller gets.
    ///
    /// An error reaches the caller as is, and is the post's Status (Object undefined).
    /// STATUS_CALLBACK_BYPASS means the filter completed the operation itself: the caller
    /// gets STATUS_SUCCESS ("Handling Notifications": "it simply returns STATUS_SUCCESS to
    /// the calling thread and does not process the operation"; EX_CALLBACK_FUNCTION: "returns
    /// STATUS_SUCCESS to the calling thread"), and the post carries that STATUS_SUCCESS
    /// (REG_POST_OPERATION_INFORMATION.Status is "the value that the system will return")
    /// with `object` (for an open/create, the object the filter put in ResultObject, regfltr
    /// `pre.c` CallbackPreNotificationBypass) — that the callbacks above see STATUS_SUCCESS,
    /// not STATUS_CALLBACK_BYPASS, is an *inference* from that field's definition. A
    /// post-callback may still change the result (see [`notify_post`]).
    ///
    /// Sources: regfltr sample `multialt.c`, MultipleAltitudeBlockDuringPreSample (the
    /// callback above the blocker sees 1 pre and 1 post, the blocker 1 pre and 0 post, the one
    /// below none); Windows Research Kernel `base/ntos/config/cmhook.c`, CmpCallCallBacks
    /// ("switch direction and start calling the posts", PostInfo.Status = the failing status;
    /// that kernel predates STATUS_CALLBACK_BYPASS).
    #[must_use = "the status the operation ends with"]
    pub fn unwind(&self, post_class: usize, pre: usize, object: usize) -> NtStatus {
        let owed = self.call_contexts.len().saturating_sub(1);
        let above = Self {
            status: self.status,
            call_contexts: self.call_contexts[..owed].to_vec(),
        };
        if self.status == STATUS_CALLBACK_BYPASS {
            notify_post(post_class, object, STATUS_SUCCESS, pre, &above)
        } else {
            notify_post(post_class, 0, self.status, pre, &above)
        }
    }

    /// Whether a pre-callback completed the operation itself (STATUS_CALLBACK_BYPASS).
    #[must_use]
    pub fn bypassed(&self) -> bool {
        self.status == STATUS_CALLBACK_BYPASS
    }
}

/// The context the callback with `cookie` attached to `object`, if any.
fn object_context(object: usize, cookie: i64) -> usize {
    kernel::with(|k| k.hives.context_of(object, cookie))
}

/// Delivers a pre-notification, highest altitude first. Each callback gets its own
/// CallContext slot (reset to NULL) and ObjectContext; the first error or
/// STATUS_CALLBACK_BYPASS stops the round. Synchronously, on the calling (emulated) thread:
/// a RegistryCallback "executes ... in the context of the thread that is performing the
/// registry operation" (Learn [EX_CALLBACK_FUNCTION](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nc-wdm-ex_callback_function)
/// Remarks), so a pre and its [`notify_post`] see the same `PsGetCurrentThreadId`
/// (`io::current_thread_id`; the emulator's `td-thread-ids`).
#[must_use]
pub fn notify_pre(class: usize, info: usize, fields: PreFields) -> PreOutcome {
    notify_pre_round(class, info, fields, true)
}

/// Delivers a pre-notification no callback can block, to every callback, highest altitude
/// first: RegNtPreKeyHandleClose ("Drivers can monitor this registry operation but they
/// cannot block or modify it": Learn, [REG_NOTIFY_CLASS](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ne-wdm-_reg_notify_class)).
/// A callback's error changes nothing: the callbacks below it still get the pre, and every
/// one its post. Until 2026-12-04 an error stopped the round, and the callbacks below missed
/// both (found in review).
#[must_use]
pub fn notify_pre_unblockable(class: usize, info: usize, fields: PreFields) -> PreOutcome {
    notify_pre_round(class, info, fields, false)
}

fn notify_pre_round(class: usize, info: usize, fields: PreFields, blockable: bool) -> PreOutcome {
    let mut call_contexts = Vec::new();
    for cb in by_altitude() {
        // SAFETY: `info` is a live pre-information structure of the emulator with CallContext
        // (and ObjectContext) at the given offsets.
        unsafe { poke(info + fields.call_context, 0usize) };
        if let Some(off) = fields.object_context {
            // SAFETY: as above.
            unsafe { poke(info + off, object_context(fields.object, cb.cookie)) };
        }
        let s = invoke(&cb, class, info);
        // SAFETY: as above; the callback may have set its CallContext.
        let cc = unsafe { ((info + fields.call_context) as *const usize).read_unaligned() };
        call_contexts.push((cb.cookie, cc));
        if blockable && (s == STATUS_CALLBACK_BYPASS || !status::nt_success(s)) {
            return PreOutcome {
                status: s,
                call_contexts,
            };
        }
    }
    PreOutcome {
        status: STATUS_SUCCESS,
        call_contexts,
    }
}

/// A pointer the driver must never dereference: what `Object` holds in a post-notification
/// whose status is a success-class status other than STATUS_SUCCESS ("undefined" per the
/// docs; an error status has NULL).
pub const INVALID_OBJECT: usize = 0xDEAD_0B1E_C700_0000;

/// Delivers a post-notification, lowest altitude first, to the callbacks that saw the pre,
/// on the same thread as the pre (Learn `EX_CALLBACK_FUNCTION` Remarks: the thread performing
/// the operation; see [`notify_pre`]). `PreInformation` is the pre's structure, still valid:
/// Learn [REG_POST_OPERATION_INFORMATION](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_post_operation_information)
/// ("A pointer to the structure that contains preprocessing information for the registry
/// operation that has completed"; `td-thread-ids` reads an unload's `Object` through it).
/// Returns the status the operation ends with: a post-callback may change it by setting
/// ReturnStatus and returning STATUS_CALLBACK_BYPASS (regfltr sample `post.c`,
/// CallbackPostNotificationOverrideSuccess; REG_POST_OPERATION_INFORMATION: "If the driver's
/// RegistryCallback routine returns STATUS_CALLBACK_BYPASS, the operating system uses the
/// ReturnStatus member's value"); the callbacks above it then see the new Status, and an
/// Object that is undefined unless that status is STATUS_SUCCESS.
#[allow(clippy::must_use_candidate)] // for most operations the final status is not needed
pub fn notify_post(
    class: usize,
    object: usize,
    status: NtStatus,
    pre: usize,
    outcome: &PreOutcome,
) -> NtStatus {
    let mut cbs = by_altitude();
    cbs.reverse();
    let mut status = status;
    let late_posts = kernel::with(|k| k.registry.late_posts);
    for cb in cbs {
        let cc = match outcome.call_contexts.iter().find(|(c, _)| *c == cb.cookie) {
            Some(&(_, cc)) => cc,
            // Registered after the pre ([`RegistryState::late_posts`]): no CallContext.
            None if late_posts && outcome.proceeds() => 0,
            None => continue,
        };
        let mut info = RegPostOperationInformation {
            // Callback version 1.1 (Windows 7 and later): "the Object member is always NULL
            // if the Status member is set to an error status value" (Learn,
            // CmGetCallbackVersion); for a success-class status other than STATUS_SUCCESS
            // (STATUS_REPARSE, STATUS_PREDEFINED_HANDLE) it is undefined ("valid only if the
            // Status member [...] is set to STATUS_SUCCESS": REG_POST_OPERATION_INFORMATION),
            // and the model makes it a pointer that faults if touched. Until 2026-12-04 the
            // error statuses had the poison too (found in review).
            object: if status == STATUS_SUCCESS {
                object
            } else if status::nt_success(status) {
                INVALID_OBJECT
            } else {
                0
            } as *mut c_void,
            status,
            pad0: 0,
            pre_information: pre as *mut c_void,
            return_status: status,
            pad1: 0,
            call_context: cc as *mut c_void,
            object_context: if status == STATUS_SUCCESS {
                object_context(object, cb.cookie)
            } else {
                0
            } as *mut c_void,
            reserved: std::ptr::null_mut(),
        };
        if invoke(&cb, class, (&raw mut info) as usize) == STATUS_CALLBACK_BYPASS {
            status = info.return_status;
        }
    }
    status
}

/// Delivers RegNtCallbackObjectContextCleanup to `cookie`'s callback for `object`.
pub fn notify_context_cleanup(object: usize, cookie: i64, context: usize) {
    let Some(cb) = kernel::with(|k| {
        k.registry
            .callbacks
            .iter()
            .find(|c| c.cookie == cookie)
            .cloned()
    }) else {
        return;
    };
    let mut info = RegCallbackContextCleanupInformation {
        object: object as *mut c_void,
        object_context: context as *mut c_void,
        reserved: std::ptr::null_mut(),
    };
    let _ = invoke(
        &cb,
        class::CALLBACK_OBJECT_CONTEXT_CLEANUP,
        (&raw mut info) as usize,
    );
}

/// CmRegisterCallbackEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmregistercallbackex>:
/// one callback per altitude (STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, Learn "Return value"),
/// IRQL <= APC_LEVEL. The Altitude string is kept by pointer, not copied ([`KeptAltitude`],
/// an inference from the regfltr sample). The argument statuses (NULL Driver:
/// STATUS_INVALID_PARAMETER_3; non-NULL Reserved: STATUS_INVALID_PARAMETER_6; NULL function,
/// altitude or cookie: STATUS_INVALID_PARAMETER) are the model's *inference*: Learn lists only
/// the collision and STATUS_INSUFFICIENT_RESOURCES and says of Reserved only "reserved for
/// future use", and no WRK or ReactOS text has the Ex routine (hivetrack never passes such
/// arguments).
unsafe extern "win64" fn CmRegisterCallbackEx(
    function: Option<ExCallbackFn>,
    altitude: *const UnicodeString,
    driver: *mut c_void,
    context: *mut c_void,
    cookie: *mut i64,
    reserved: *mut c_void,
) -> NtStatus {
    // IRQL <= APC_LEVEL (ReactOS `sdk/include/xdk/cmfuncs.h`: `_IRQL_requires_max_(APC_LEVEL)`).
    require_irql("CmRegisterCallbackEx", APC_LEVEL);
    // SAFETY: the driver passes a UNICODE_STRING (validated by read_unicode).
    let (Some(f), Some(alt)) = (function, unsafe { read_unicode(altitude) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if driver.is_null() {
        return STATUS_INVALID_PARAMETER_3;
    }
    if !reserved.is_null() {
        return STATUS_INVALID_PARAMETER_6;
    }
    if cookie.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if kernel::should_fail("CmRegisterCallbackEx", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    // SAFETY: read by read_unicode above.
    let header = unsafe { altitude.read_unaligned() };
    let kept = KeptAltitude {
        string: altitude as usize,
        header: (header.length, header.maximum_length, header.buffer as usize),
    };
    // The cookie is written inside `register`, before the callback is published; another
    // thread's notification can then reach it before this routine returns
    // ([`during_registration`]).
    match register(f as usize, context as usize, alt, Some(kept), Some(cookie)) {
        Ok(_) => {
            run_during_registration();
            STATUS_SUCCESS
        }
        Err(s) => s,
    }
}

thread_local! {
    static DURING_REGISTRATION: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `step` once, inside the next successful `CmRegisterCallbackEx`, at the first moment
/// another thread's notification can reach the callback — right after the step that wrote the
/// cookie and published the callback — and before the routine returns: another thread's work
/// (an open, whose notifications reach the new callback) in the window a single-threaded model
/// cannot otherwise reach. The step runs on the calling thread, as that other thread would at
/// that moment.
pub fn during_registration(step: impl FnOnce() + 'static) {
    DURING_REGISTRATION.with(|d| *d.borrow_mut() = Some(Box::new(step)));
}

/// Whether a step set by [`during_registration`] is still waiting (and drops it).
#[must_use]
pub fn cancel_during_registration() -> bool {
    DURING_REGISTRATION
        .with(|d| d.borrow_mut().take())
        .is_some()
}

fn run_during_registration() {
    if let Some(step) = DURING_REGISTRATION.with(|d| d.borrow_mut().take()) {
        step();
    }
}

/// CmUnRegisterCallback — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmunregistercallback>:
/// delivers RegNtCallbackObjectContextCleanup for every key object that still has a context
/// of this callback, then removes it; an unknown cookie is STATUS_INVALID_PARAMETER.
/// IRQL <= APC_LEVEL. New notifications stop reaching the callback at once; calls in flight on
/// other threads are waited for; calling it from inside the callback is a deadlock (reported).
/// The WRK's `base/ntos/config/cmhook.c` CmUnRegisterCallback does so for Windows itself: it
/// removes the block from the vector (`ExCompareExchangeCallBack(.., NULL, RoutineBlock)`,
/// line 168), waits for the references callers took (`ExWaitForCallBacks`, line 175), then
/// returns STATUS_SUCCESS (line 179); a cookie it does not find is STATUS_INVALID_PARAMETER
/// (line 189, as Learn says; ReactOS returns STATUS_UNSUCCESSFUL there).
unsafe extern "win64" fn CmUnRegisterCallback(cookie: i64) -> NtStatus {
    // IRQL <= APC_LEVEL (Learn, CmUnRegisterCallback, Requirements).
    require_irql("CmUnRegisterCallback", APC_LEVEL);
    if !kernel::with(|k| k.registry.callbacks.iter().any(|c| c.cookie == cookie)) {
        return STATUS_INVALID_PARAMETER;
    }
    // Docs, "Return value": "the appropriate NTSTATUS error code if it fails". A failure
    // leaves the callback registered (injected with `faults.only = CmUnRegisterCallback`).
    if kernel::should_fail("CmUnRegisterCallback", false) {
        return STATUS_UNSUCCESSFUL;
    }
    if INSIDE.with(|i| i.borrow().contains(&cookie)) {
        verifier_violation(
            "CmUnRegisterCallback called from inside the callback it unregisters: a deadlock on Windows",
        );
    }
    // No new notification reaches it, and the contexts still attached are taken in the same
    // step: an object destroyed on another thread either took its context (and reserved a
    // call in flight) before this, and is waited for below, or finds none after it. Taking
    // them after the wait left a window where such a cleanup ran after this returned.
    let mut contexts = kernel::with(|k| {
        k.registry.unregistering.insert(cookie);
        k.hives.take_contexts_of(cookie)
    });
    // A call in flight may still attach a context (a post-open's CmSetCallbackObjectContext):
    // Learn, REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION (Remarks): the cleanup notification
    // also comes when the driver calls CmUnRegisterCallback, for the objects that carry its
    // context; none may outlive the unregistration, the driver's image goes next. So after each
    // wait the contexts are taken again, until a wait leaves none (the sweep met a cleanup
    // delivered into the unloaded image through such a context, once in ~3,700 runs).
    //
    // The loop ends only when one step finds no context left and no call in flight: a
    // cleanup an object's destruction started on another thread (it took its context, and
    // reserved its call, after the wait below) is a call in flight too, and is waited for
    // (ReactOS `ntoskrnl/config/cmhook.c`, CmUnRegisterCallback: ExWaitForRundownProtection-
    // Release covers every call; the sweep met such a cleanup running in the unloaded image,
    // once in ~40 runs of `unload-while-waiting`, when the loop ended on "no context" alone).
    loop {
        // Wait for the calls in flight on other threads.
        while kernel::with(|k| k.registry.in_flight.get(&cookie).copied().unwrap_or(0)) > 0 {
            std::thread::yield_now();
        }
        for (object, context) in contexts {
            notify_context_cleanup(object, cookie, context);
        }
        let (next, idle) = kernel::with(|k| {
            let next = k.hives.take_contexts_of(cookie);
            let idle = k.registry.in_flight.get(&cookie).copied().unwrap_or(0) == 0;
            (next, idle)
        });
        if next.is_empty() && idle {
            break;
        }
        contexts = next;
    }
    kernel::with(|k| {
        k.registry.callbacks.retain(|c| c.cookie != cookie);
        k.registry.unregistering.remove(&cookie);
        k.registry.in_flight.remove(&cookie);
    });
    STATUS_SUCCESS
}

/// CmSetCallbackObjectContext — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmsetcallbackobjectcontext>:
/// attaches NewContext to a live key object for the callback identified by Cookie; returns
/// the previous one in OldContext. Only a live key object is valid, and only from inside that
/// callback's notifications up to the object's pre-close: "A RegistryCallback routine can call
/// CmSetCallbackObjectContext during a post-notification for a create operation, an open
/// operation, or any subsequent notification up to the pre-notification of handle closure"
/// (Remarks). Later (in the post-close, or in the context cleanup) the kernel has already
/// taken the object's contexts for their cleanup, so a context set then never gets one: the
/// model reports the call, where it used to accept it and drop the context silently (found
/// in review, 2026-12-05; `td-context-after-close`).
unsafe extern "win64" fn CmSetCallbackObjectContext(
    object: *mut c_void,
    cookie: *const i64,
    new_context: *mut c_void,
    old_context: *mut *mut c_void,
) -> NtStatus {
    require_irql("CmSetCallbackObjectContext", APC_LEVEL);
    if cookie.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; the driver passes its cookie.
    let cookie = unsafe { cookie.read_unaligned() };
    if !kernel::with(|k| k.registry.callbacks.iter().any(|c| c.cookie == cookie)) {
        return STATUS_INVALID_PARAMETER;
    }
    // Learn: "Otherwise, it returns an appropriate NTSTATUS error code" — the call can fail;
    // which error and why is not documented. Under fault injection the model fails it with
    // STATUS_INSUFFICIENT_RESOURCES (*inference*: the context is kept in memory the kernel
    // allocates per object and callback), leaving the object without the context.
    if kernel::should_fail("CmSetCallbackObjectContext", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if !INSIDE.with(|i| i.borrow().contains(&cookie)) {
        verifier_violation(&format!(
            "CmSetCallbackObjectContext({object:p}) outside a notification of its callback (Learn: \
             \"during a post-notification for a create operation, an open operation, or any \
             subsequent notification up to the pre-notification of handle closure\")"
        ));
    }
    let identified = kernel::with(|k| k.hives.identify(object as usize));
    if identified
        .as_ref()
        .is_some_and(|(_, _, destroyed)| *destroyed)
    {
        verifier_violation(&format!(
            "CmSetCallbackObjectContext({object:p}) after the pre-notification of its handle \
             closure: the object's contexts were already taken for their cleanup, so this one \
             would never get a RegNtCallbackObjectContextCleanup"
        ));
    }
    let old = kernel::with(|k| {
        k.hives
            .set_context(object as usize, cookie, new_context as usize)
    });
    let Some(old) = old else {
        verifier_violation(&format!(
            "CmSetCallbackObjectContext({object:p}): not a live key object"
        ));
    };
    if !old_context.is_null() {
        // SAFETY: checked non-null; the driver passes a writable PVOID.
        unsafe { old_context.write_unaligned(old as *mut c_void) };
    }
    STATUS_SUCCESS
}

/// Allocates a UNICODE_STRING + buffer for a key name, in one block as `CmpConstructName`
/// builds it (ReactOS `ntoskrnl/config/cmkcbncb.c`); `pageable`: from paged pool, as there
/// ([`crate::nt::mm::paged`]: trimmed at every raise to DISPATCH_LEVEL), freed by
/// CmCallbackReleaseKeyObjectIDEx.
fn alloc_name(name: &str, pageable: bool) -> usize {
    let units: Vec<u16> = name.encode_utf16().collect();
    let len = units.len() * 2;
    let total = 16 + len;
    let p = if pageable {
        crate::nt::mm::paged::alloc(total)
    } else {
        let layout = std::alloc::Layout::from_size_align(total, 16).expect("layout");
        // SAFETY: non-zero size.
        unsafe { std::alloc::alloc(layout) as usize }
    };
    assert!(p != 0, "host out of memory");
    let us = UnicodeString {
        length: len as u16,
        maximum_length: len as u16,
        pad: 0,
        buffer: (p + 16) as *mut u16,
    };
    // SAFETY: the allocation holds the UNICODE_STRING then `len` bytes of buffer.
    unsafe { poke(p, us) };
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(units.as_ptr(), (p + 16) as *mut u16, units.len()) };
    // A block the driver keeps until it hands it back: the IOCTL fuzz's scan knows it.
    crate::nt::layout::note_name_handed(p, total);
    p
}

/// Whether `cookie` points to the cookie of a registered callback (one being unregistered
/// included: its close and cleanup notifications still run). The key-id routines fail
/// otherwise (Learn, Return value: CmCallbackGetKeyObjectIDEx, "STATUS_INVALID_PARAMETER —
/// The Cookie, Object, or Flags parameter is invalid"; CmCallbackGetKeyObjectID, "The Cookie
/// or Object parameter is invalid"). The model
/// used to check only for NULL, so a driver naming keys with a cookie it had not stored yet
/// (its callback already running on another thread while CmRegisterCallbackEx returns) or
/// had forgotten got names Windows would refuse (found in review, 2026-12-05;
/// `td-key-id-cookie`).
fn registered_cookie(cookie: *const i64) -> bool {
    if cookie.is_null() {
        return false;
    }
    // SAFETY: checked non-null; the driver passes a PLARGE_INTEGER.
    let cookie = unsafe { cookie.read_unaligned() };
    kernel::with(|k| k.registry.callbacks.iter().any(|c| c.cookie == cookie))
}

/// CmCallbackGetKeyObjectIDEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmcallbackgetkeyobjectidex>:
/// a unique id for the registry key (the same for every object opened on the same key) and its
/// full name, which the caller must release with CmCallbackReleaseKeyObjectIDEx. Flags must be
/// 0. Calling it on an object being destroyed outside its close notifications (in its
/// context cleanup, or after) is a verifier violation ([`may_name`]).
unsafe extern "win64" fn CmCallbackGetKeyObjectIDEx(
    cookie: *const i64,
    object: *mut c_void,
    object_id: *mut usize,
    object_name: *mut *mut UnicodeString,
    flags: u32,
) -> NtStatus {
    require_irql("CmCallbackGetKeyObjectIDEx", APC_LEVEL);
    crate::verifier::calls::count(if object_name.is_null() {
        crate::verifier::calls::Call::KeyIdOnly
    } else {
        crate::verifier::calls::Call::KeyName
    });
    if flags != 0 || !registered_cookie(cookie) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some((id, name, destroyed)) = kernel::with(|k| k.hives.identify(object as usize)) else {
        verifier_violation(&format!(
            "CmCallbackGetKeyObjectIDEx({object:p}): not a key object"
        ));
    };
    if !may_name(object as usize, destroyed) {
        verifier_violation(&format!(
            "CmCallbackGetKeyObjectIDEx({object:p}) on a key object that is being destroyed, outside its close notifications"
        ));
    }
    if !object_id.is_null() {
        // SAFETY: checked non-null; the driver passes a writable ULONG_PTR.
        unsafe { object_id.write_unaligned(id) };
    }
    if !object_name.is_null() {
        // An injected failure (the name's allocation): STATUS_INSUFFICIENT_RESOURCES, with
        // ObjectID already written — *model choice, no Windows value*: Learn lists only
        // STATUS_INVALID_PARAMETER among the errors, not exhaustively; the driver treats any
        // failure as "no name" (fidelity audit 22e, L3).
        if kernel::should_fail("CmCallbackGetKeyObjectIDEx", true) {
            return STATUS_INSUFFICIENT_RESOURCES;
        }
        let p = alloc_name(&name, true);
        let op = crate::verifier::bugcheck::operation();
        kernel::with(|k| k.registry.names.insert(p, (name, op)));
        // SAFETY: checked non-null; the driver passes a writable PCUNICODE_STRING.
        unsafe { object_name.write_unaligned(p as *mut UnicodeString) };
    }
    STATUS_SUCCESS
}

/// CmCallbackReleaseKeyObjectIDEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmcallbackreleasekeyobjectidex>:
/// "frees an object name string obtained from the CmCallbackGetKeyObjectIDEx routine" (the
/// pointer one "the driver previously obtained ... by calling CmCallbackGetKeyObjectIDEx").
/// Releasing anything else (a pointer never handed out, or one released already) is a
/// verifier violation (*model choice*: Windows would free a foreign pointer into pool, a
/// corruption the model stops at once); the released buffer is unmapped, so a read after the
/// release faults; a name never released is a leak line at the scenario's end (`leaks`).
unsafe extern "win64" fn CmCallbackReleaseKeyObjectIDEx(name: *const UnicodeString) {
    // IRQL <= APC_LEVEL (Learn, CmCallbackReleaseKeyObjectIDEx, Requirements).
    require_irql("CmCallbackReleaseKeyObjectIDEx", APC_LEVEL);
    let p = name as usize;
    let Some((text, _)) = kernel::with(|k| k.registry.names.remove(&p)) else {
        verifier_violation(&format!(
            "CmCallbackReleaseKeyObjectIDEx({name:p}): not a name the kernel handed out"
        ));
    };
    let _ = text;
    // Unmapped: a use after the release faults (PAGE_FAULT_IN_NONPAGED_AREA).
    let freed = crate::nt::mm::paged::free(p);
    debug_assert!(freed, "a handed-out name is a pageable buffer");
}

/// Frees a kernel-owned name from [`alloc_name`] (not pageable): the Windows 7 routine's,
/// when its key goes.
pub(crate) fn free_kernel_name(p: usize) {
    // SAFETY: `p` is a UNICODE_STRING header made by `alloc_name`, its buffer after it.
    let len = usize::from(unsafe { (p as *const UnicodeString).read() }.length);
    let layout = std::alloc::Layout::from_size_align(16 + len, 16).expect("layout");
    // SAFETY: allocated by `alloc_name` with this layout (not pageable), freed once.
    unsafe { std::alloc::dealloc(p as *mut u8, layout) };
}

/// CmCallbackGetKeyObjectID — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmcallbackgetkeyobjectid>:
/// the Windows 7 form: the name belongs to the kernel (the caller must not free it), one per
/// key, kept until the key's handles are closed, and *stale* after a rename: "subsequent calls
/// to CmCallbackGetKeyObjectID get a pointer to a stale copy of the ObjectName structure,
/// which contains the old key name. The stale copy of this structure persists until all
/// handles to the key are closed" (Learn, CmCallbackGetKeyObjectIDEx, Remarks). The model
/// keeps it while the key's id lives (until no object of the key or below it is left: at
/// least as long; *inference* for the difference). Until 2026-12-04 each call built the
/// current name afresh (and never freed it); found in review.
unsafe extern "win64" fn CmCallbackGetKeyObjectID(
    cookie: *const i64,
    object: *mut c_void,
    object_id: *mut usize,
    object_name: *mut *mut UnicodeString,
) -> NtStatus {
    require_irql("CmCallbackGetKeyObjectID", APC_LEVEL);
    if !registered_cookie(cookie) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some((id, name, destroyed)) = kernel::with(|k| k.hives.identify(object as usize)) else {
        verifier_violation(&format!(
            "CmCallbackGetKeyObjectID({object:p}): not a key object"
        ));
    };
    if !may_name(object as usize, destroyed) {
        verifier_violation(&format!(
            "CmCallbackGetKeyObjectID({object:p}) on a key object that is being destroyed, outside its close notifications"
        ));
    }
    if !object_id.is_null() {
        // SAFETY: checked non-null; the driver passes a writable ULONG_PTR.
        unsafe { object_id.write_unaligned(id) };
    }
    if !object_name.is_null() {
        // Kernel-owned: never freed by the driver, so not tracked as the driver's. Not
        // modelled as pageable. The key's first name is handed out again, stale or not.
        let cached = kernel::with(|k| k.hives.old_names.get(&id).copied());
        let p = cached.unwrap_or_else(|| {
            let p = alloc_name(&name, false);
            kernel::with(|k| k.hives.old_names.insert(id, p));
            p
        });
        // SAFETY: checked non-null; the driver passes a writable PCUNICODE_STRING.
        unsafe { object_name.write_unaligned(p as *mut UnicodeString) };
    }
    STATUS_SUCCESS
}

/// The configuration manager routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "CmRegisterCallbackEx",
            CmRegisterCallbackEx as *const () as usize,
        ),
        Export::function(
            "CmUnRegisterCallback",
            CmUnRegisterCallback as *const () as usize,
        ),
        Export::function(
            "CmSetCallbackObjectContext",
            CmSetCallbackObjectContext as *const () as usize,
        ),
        Export::function(
            "CmCallbackGetKeyObjectIDEx",
            CmCallbackGetKeyObjectIDEx as *const () as usize,
        ),
        Export::function(
            "CmCallbackGetKeyObjectID",
            CmCallbackGetKeyObjectID as *const () as usize,
        ),
        Export::function(
            "CmCallbackReleaseKeyObjectIDEx",
            CmCallbackReleaseKeyObjectIDEx as *const () as usize,
        ),
    ]
}

/// Marker in a key path that [`filter_deny`] refuses.
pub const DENY_MARKER: &str = "KEMU-DENIED";
/// Marker in a key path that [`filter_bypass`] completes itself.
pub const BYPASS_MARKER: &str = "KEMU-BYPASS";
/// What [`filter_bypass`] creates instead of the key whose name holds [`BYPASS_MARKER`]
/// (regfltr `pre.c`: the bypassed create makes MODIFIED_KEY_NAME).
pub const BYPASS_REDIRECT: &str = "KEMU-REDIRECTED";

/// Reads the CompleteName of a pre-create/open notification.
///
/// # Safety
/// `info` must be a live REG_CREATE_KEY_INFORMATION_V1.
unsafe fn complete_name(info: *mut c_void) -> String {
    // SAFETY: guaranteed by the caller.
    let name = unsafe { (*info.cast::<RegCreateKeyInformationV1>()).complete_name };
    // SAFETY: the model's own UNICODE_STRING.
    unsafe { read_unicode(name) }.unwrap_or_default()
}

/// Another filter (emulated): fails pre-open/pre-create of paths containing [`DENY_MARKER`]
/// with STATUS_ACCESS_DENIED.
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_deny(
    _ctx: *mut c_void,
    class: *mut c_void,
    info: *mut c_void,
) -> NtStatus {
    let c = class as usize;
    if (c == class::PRE_OPEN_KEY_EX || c == class::PRE_CREATE_KEY_EX)
        // SAFETY: the model passes the _V1 structure for these classes.
        && unsafe { complete_name(info) }.contains(DENY_MARKER)
    {
        return 0xC000_0022_u32 as NtStatus;
    }
    STATUS_SUCCESS
}

/// Another filter (emulated): fails every RegNtPreKeyHandleClose with STATUS_ACCESS_DENIED,
/// which changes nothing ([`notify_pre_unblockable`]).
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_fail_close(
    _ctx: *mut c_void,
    class: *mut c_void,
    _info: *mut c_void,
) -> NtStatus {
    if class as usize == class::PRE_KEY_HANDLE_CLOSE {
        return 0xC000_0022_u32 as NtStatus;
    }
    STATUS_SUCCESS
}

/// Another filter (emulated): completes pre-open/pre-create of paths containing
/// [`BYPASS_MARKER`] itself, as regfltr `pre.c` CallbackPreNotificationBypass does: it
/// creates the key under another name ([`BYPASS_REDIRECT`] for the marker) with its own
/// kernel-handle ZwCreateKey (a pre/post pair only the callbacks below it see: [`by_altitude`]),
/// references the object,
/// closes its handle, stores the object in ResultObject and returns STATUS_CALLBACK_BYPASS.
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_bypass(
    _ctx: *mut c_void,
    class: *mut c_void,
    info: *mut c_void,
) -> NtStatus {
    // SAFETY: called by the model with a notification class and its structure.
    let Some(name) = (unsafe { bypass_asked(class, info) }) else {
        return STATUS_SUCCESS;
    };
    // SAFETY: a pre-open/create's _V1 structure (`bypass_asked`).
    let root = unsafe { (*info.cast::<RegCreateKeyInformationV1>()).root_object } as usize;
    let modified = name.replace(BYPASS_MARKER, BYPASS_REDIRECT);
    let Some(object) = crate::nt::cm::hive::filter_create_referenced(root, &modified) else {
        return crate::nt::status::STATUS_OBJECT_NAME_NOT_FOUND;
    };
    // SAFETY: as above.
    unsafe { bypass_with(info, object) }
}

/// The CompleteName of a pre-open/pre-create that names [`BYPASS_MARKER`], or `None` (any
/// other notification).
///
/// # Safety
/// `class` and `info` are a notification's, as the model passes them.
unsafe fn bypass_asked(class: *mut c_void, info: *mut c_void) -> Option<String> {
    let c = class as usize;
    if c != class::PRE_OPEN_KEY_EX && c != class::PRE_CREATE_KEY_EX {
        return None;
    }
    // SAFETY: the model passes the _V1 structure for these classes.
    let name = unsafe { complete_name(info) };
    name.contains(BYPASS_MARKER).then_some(name)
}

/// Completes a pre-open/pre-create with `object` (referenced for the caller) in
/// ResultObject: STATUS_CALLBACK_BYPASS (regfltr `pre.c`, CallbackPreNotificationBypass).
///
/// # Safety
/// `info` is a pre-open/pre-create's _V1 structure.
unsafe fn bypass_with(info: *mut c_void, object: usize) -> NtStatus {
    // SAFETY: guaranteed by the caller.
    let result = unsafe { (*info.cast::<RegCreateKeyInformationV1>()).result_object };
    // SAFETY: ResultObject points at the configuration manager's PVOID.
    unsafe { result.write(object as *mut c_void) };
    STATUS_CALLBACK_BYPASS
}

/// The referenced key object [`filter_bypass_cached`] hands back (0: none).
static BYPASS_CACHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Gives [`filter_bypass_cached`] the key object to hand back: one the filter opened
/// earlier *outside* its callback (on a system thread of its own, so every filter above it saw
/// that open) and keeps referenced. Returns the object it had before (0: none), whose
/// reference the caller now owns.
pub fn set_bypass_object(object: usize) -> usize {
    BYPASS_CACHED.swap(object, std::sync::atomic::Ordering::Relaxed)
}

/// Another filter (emulated): in pre-open/pre-create of a path containing [`BYPASS_MARKER`],
/// completes the operation with STATUS_CALLBACK_BYPASS and the key object set by
/// [`set_bypass_object`], referenced once more for the caller's handle (ResultObject holds a
/// referenced object: regfltr `pre.c`, CallbackPreNotificationBypass). Unlike
/// [`filter_bypass`], whose `ZwCreateKey` inside its callback reaches only the callbacks below
/// it ([`by_altitude`]), this object's open was seen by the filters above: handed back to
/// them in the bypassed open's post, it already carries their context.
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_bypass_cached(
    _ctx: *mut c_void,
    class: *mut c_void,
    info: *mut c_void,
) -> NtStatus {
    // SAFETY: called by the model with a notification class and its structure.
    if unsafe { bypass_asked(class, info) }.is_none() {
        return STATUS_SUCCESS;
    }
    let object = BYPASS_CACHED.load(std::sync::atomic::Ordering::Relaxed);
    if object == 0 {
        return crate::nt::status::STATUS_OBJECT_NAME_NOT_FOUND;
    }
    kernel::with(|k| *k.objects.references.entry(object).or_insert(0) += 1);
    // SAFETY: a pre-open/create's _V1 structure (`bypass_asked`).
    unsafe { bypass_with(info, object) }
}

/// Marker in a key path whose pre-open/pre-create makes [`filter_rename_hidden`] rename.
pub const RENAME_MARKER: &str = "KEMU-RENAME";

/// The rename [`filter_rename_hidden`] makes: (the pid whose handle table has the handle,
/// the handle, the new name); taken by the rename.
static HIDDEN_RENAME: std::sync::Mutex<Option<(u32, u64, String)>> = std::sync::Mutex::new(None);

/// Gives [`filter_rename_hidden`] its one rename: the key behind `pid`'s `handle` (a handle
/// the filter opened itself, a kernel handle) to `new_name`.
pub fn set_hidden_rename(pid: u32, handle: u64, new_name: &str) {
    if let Ok(mut r) = HIDDEN_RENAME.lock() {
        *r = Some((pid, handle, new_name.to_string()));
    }
}

/// Another filter (emulated): in the pre-open/pre-create of a path containing
/// [`RENAME_MARKER`], renames the key set by [`set_hidden_rename`], once. It renames from
/// inside its callback, so the rename's notifications reach only the callbacks below it
/// ([`by_altitude`]: Learn, "Supporting Layered Registry Filtering Drivers", "the
/// configuration manager does not restart at the top of the filter stack"; regfltr
/// `multialt.c`): a filter above it, hivetrack, is never told of the rename, while the key's
/// id stays and its name changes (`hive::rename_key`; fidelity audit 2026-12-05, F1).
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_rename_hidden(
    _ctx: *mut c_void,
    class: *mut c_void,
    info: *mut c_void,
) -> NtStatus {
    let c = class as usize;
    if c != class::PRE_OPEN_KEY_EX && c != class::PRE_CREATE_KEY_EX {
        return STATUS_SUCCESS;
    }
    // SAFETY: the model passes the _V1 structure for these classes.
    if !unsafe { complete_name(info) }.contains(RENAME_MARKER) {
        return STATUS_SUCCESS;
    }
    let rename = HIDDEN_RENAME.lock().ok().and_then(|mut r| r.take());
    if let Some((pid, handle, name)) = rename {
        let _ = crate::nt::cm::hive::rename_key(pid, handle, &name);
    }
    STATUS_SUCCESS
}

/// What [`filter_keep_open`] does: the key it opens at its next pre-open/pre-create (taken
/// then), and the kernel handles it keeps.
static KEEP_OPEN: std::sync::Mutex<(Option<String>, Vec<u64>)> =
    std::sync::Mutex::new((None, Vec::new()));

/// Gives [`filter_keep_open`] the key to open, once, at the next pre-open/pre-create it gets.
pub fn set_keep_open(path: &str) {
    if let Ok(mut k) = KEEP_OPEN.lock() {
        k.0 = Some(path.to_string());
    }
}

/// The kernel handles [`filter_keep_open`] opened and kept, handed over (the caller closes
/// them with [`crate::nt::cm::hive::close_key`]).
pub fn take_kept_open() -> Vec<u64> {
    KEEP_OPEN
        .lock()
        .map(|mut k| std::mem::take(&mut k.1))
        .unwrap_or_default()
}

/// Another filter (emulated), as an antivirus or EDR registry filter that caches a handle:
/// in a pre-open/pre-create (of any key), opens the key set by [`set_keep_open`] with its own
/// kernel-handle `ZwOpenKey` on the caller's thread, keeps the handle ([`take_kept_open`])
/// and lets the operation go on. Its open is made inside its callback, so it reaches only the
/// callbacks *below* it ([`by_altitude`]): Learn, "Supporting Layered Registry Filtering
/// Drivers" ("If a driver modifies an operation by calling a different registry function, the
/// configuration manager does not restart at the top of the filter stack"); regfltr
/// `multialt.c` MultipleAltitudeInternalInvocationSample (the higher callback "does not get
/// notifications for the registry operations called by the middle callback"). A filter above
/// it — hivetrack, at 385217 over the antivirus range 320000-329999 — never learns of the
/// key, which the kernel lists (opened by the caller's process: `CM_KEY_BODY.ProcessID`) and
/// which holds its hive.
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_keep_open(
    _ctx: *mut c_void,
    class: *mut c_void,
    _info: *mut c_void,
) -> NtStatus {
    let c = class as usize;
    if c != class::PRE_OPEN_KEY_EX && c != class::PRE_CREATE_KEY_EX {
        return STATUS_SUCCESS;
    }
    let Some(path) = KEEP_OPEN.lock().ok().and_then(|mut k| k.0.take()) else {
        return STATUS_SUCCESS;
    };
    let pid = crate::nt::io::current_pid();
    if let Ok(h) = crate::nt::cm::hive::open_kernel_key(pid, &path, 0x2_0019, false)
        && let Ok(mut k) = KEEP_OPEN.lock()
    {
        k.1.push(h);
    }
    STATUS_SUCCESS
}

/// Marker in a key path whose successful open or create [`filter_fail_post`] turns into
/// STATUS_ACCESS_DENIED in the post-notification.
pub const FAIL_POST_MARKER: &str = "KEMU-FAILPOST";

/// Another filter (emulated): in post-open/post-create of a path containing
/// [`FAIL_POST_MARKER`] that succeeded, changes the result to STATUS_ACCESS_DENIED through
/// ReturnStatus + STATUS_CALLBACK_BYPASS, as the regfltr sample's `post.c`
/// (CallbackPostNotificationOverrideSuccess) does — including its cleanup: "Dereference the
/// object because it will not be returned to the user", `ObDereferenceObject(PostInfo->Object)`
/// and NULL in `PostInfo->Object` and `*ResultObject`. That dereference destroys the key
/// object the open had created (its close and cleanup notifications run inside this call).
///
/// # Safety
/// Called by the model with a notification class and its structure.
pub unsafe extern "win64" fn filter_fail_post(
    _ctx: *mut c_void,
    class: *mut c_void,
    info: *mut c_void,
) -> NtStatus {
    let c = class as usize;
    if c != class::POST_OPEN_KEY_EX && c != class::POST_CREATE_KEY_EX {
        return STATUS_SUCCESS;
    }
    let post = info.cast::<RegPostOperationInformation>();
    // SAFETY: the model passes REG_POST_OPERATION_INFORMATION for these classes, whose
    // PreInformation is the _V1 structure of the pre call.
    let status = unsafe { (*post).status };
    // SAFETY: as above.
    let pre = unsafe { (*post).pre_information };
    // SAFETY: as above.
    if status == STATUS_SUCCESS && unsafe { complete_name(pre) }.contains(FAIL_POST_MARKER) {
        // SAFETY: as above: Object is valid because Status is STATUS_SUCCESS.
        let object = unsafe { (*post).object } as usize;
        crate::nt::ob::object::dereference(object);
        // SAFETY: as above; the filter clears the pointers to the object it released.
        unsafe { (*post).object = std::ptr::null_mut() };
        let v1 = pre.cast::<RegCreateKeyInformationV1>();
        // SAFETY: PreInformation is the _V1 structure of the pre call.
        let result = unsafe { (*v1).result_object };
        // SAFETY: ResultObject points at the configuration manager's PVOID.
        unsafe { result.write(std::ptr::null_mut()) };
        // SAFETY: as above; ReturnStatus is the field a post-callback may set.
        unsafe { (*post).return_status = crate::nt::status::STATUS_ACCESS_DENIED };
        return STATUS_CALLBACK_BYPASS;
    }
    STATUS_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::RegistryState;

    /// A name `CmCallbackGetKeyObjectIDEx` handed out and `CmCallbackReleaseKeyObjectIDEx`
    /// never got is a leak line at the scenario's end; released (removed), it is not.
    #[test]
    fn unreleased_name_is_a_leak() {
        let mut r = RegistryState::default();
        r.names.insert(
            0x1000,
            ("\\REGISTRY\\USER".into(), "RegNtPreOpenKeyEx".into()),
        );
        let leaks = r.leaks();
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert!(leaks[0].contains("never released"), "{leaks:?}");
        r.names.remove(&0x1000);
        assert!(r.leaks().is_empty());
    }
}
