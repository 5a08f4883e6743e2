//! Object manager: the kernel handle table (handles the driver opens with
//! ObOpenObjectByPointer and must close with ZwClose — leftovers are leaks at unload), object
//! types (the `IoDeviceObjectType` data export), object references, and ZwSetSecurityObject,
//! which replaces parts of an object's security descriptor through a handle that holds the
//! right access (WRITE_DAC for the DACL, WRITE_OWNER for owner and group).

use std::collections::HashMap;
use std::ffi::c_void;

use crate::machine::cpu::{DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::se::security::{self, Caller, SecurityDescriptor, WRITE_DAC, WRITE_OWNER};
use crate::nt::status::{
    NtStatus, STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_OBJECT_TYPE_MISMATCH, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::{self, bugcheck, emit_stderr, require_irql};

/// OBJ_KERNEL_HANDLE.
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// OBJ_INHERIT: "This handle can be inherited by child processes of the current process"
/// (Learn `InitializeObjectAttributes`).
pub const OBJ_INHERIT: u32 = 0x2;
/// OWNER_SECURITY_INFORMATION.
const OWNER_SECURITY_INFORMATION: u32 = 0x1;
/// GROUP_SECURITY_INFORMATION.
const GROUP_SECURITY_INFORMATION: u32 = 0x2;
/// DACL_SECURITY_INFORMATION.
const DACL_SECURITY_INFORMATION: u32 = 0x4;
/// SACL_SECURITY_INFORMATION.
const SACL_SECURITY_INFORMATION: u32 = 0x8;
/// Kernel handles have the top bit set (KERNEL_HANDLE_MASK).
pub(crate) const KERNEL_HANDLE_BIT: u64 = 0xFFFF_FFFF_8000_0000;

/// One open handle.
#[derive(Debug, Clone)]
pub struct HandleEntry {
    /// The object (a device object, for now).
    pub object: usize,
    /// Granted access.
    pub granted: u32,
    /// Operation that opened it.
    pub opened_during: String,
}

/// Object manager state.
#[derive(Debug, Default)]
pub struct ObjectState {
    /// Handles by value.
    pub handles: HashMap<u64, HandleEntry>,
    next_handle: u64,
    /// Extra references taken with ObReferenceObject, by object.
    pub references: HashMap<usize, i64>,
    /// Of those, the ones the object manager itself holds for an operation still in progress
    /// on some thread: a key open's parse reference, until it becomes the handle or is handed
    /// to a filter that failed the open in its post (ReactOS `ntoskrnl/ob/obhandle.c`,
    /// ObOpenObjectByName: the object the lookup returned referenced gets its handle from
    /// ObpCreateHandle, or is dereferenced on failure). Not a leak of anyone's while the
    /// operation runs, so a leak check beside a running workload skips them.
    pub in_operation: HashMap<usize, i64>,
    /// Objects the kernel itself keeps one reference on for ever: the `\REGISTRY` key
    /// (ReactOS `ntoskrnl/config/cmsysini.c` CmpCreateRegistryRoot: "Reference the key again
    /// so that we never lose it", `CmpRegistryRootObject`). That reference is nobody's leak.
    pub permanent: HashMap<usize, i64>,
}

impl ObjectState {
    /// Handles and references still held, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .handles
            .iter()
            .map(|(h, e)| {
                format!(
                    "handle {h:#x} to object {:#x} (access {:#x}) opened during {} not closed",
                    e.object, e.granted, e.opened_during
                )
            })
            .collect();
        v.extend(self.references.iter().filter_map(|(o, n)| {
            let n = n
                - self.in_operation.get(o).copied().unwrap_or(0)
                - self.permanent.get(o).copied().unwrap_or(0);
            (n != 0).then(|| format!("object {o:#x}: {n} reference(s) taken and not released"))
        }));
        v.sort();
        v
    }
}

/// The fake OBJECT_TYPE of device objects; `IoDeviceObjectType` points at it.
static DEVICE_OBJECT_TYPE: [u64; 32] = [0; 32];

/// The `POBJECT_TYPE` data export `IoDeviceObjectType` (a variable holding the pointer).
#[repr(transparent)]
struct TypePointer(*const c_void);
// SAFETY: the pointer targets an immutable static; sharing it between threads is harmless.
unsafe impl Sync for TypePointer {}
static IO_DEVICE_OBJECT_TYPE: TypePointer = TypePointer(DEVICE_OBJECT_TYPE.as_ptr().cast());

/// ObOpenObjectByPointer — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-obopenobjectbypointer>:
/// opens a handle to an object the caller has a pointer to. KernelMode skips the access check;
/// UserMode checks the object's DACL against the System token. A non-null ObjectType must
/// match. PASSIVE_LEVEL.
unsafe extern "win64" fn ObOpenObjectByPointer(
    object: *mut c_void,
    attributes: u32,
    _access_state: *mut c_void,
    desired: u32,
    object_type: *mut c_void,
    access_mode: i8,
    handle: *mut u64,
) -> NtStatus {
    require_irql("ObOpenObjectByPointer", PASSIVE_LEVEL);
    if handle.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(security) = kernel::with(|k| k.io.device_security(object as usize)) else {
        emit_stderr(&format!(
            "*** kernel-emulator: ObOpenObjectByPointer({object:p}): not an object the model knows\n"
        ));
        bugcheck(0x18, 0, object as usize, 0, 0); // REFERENCE_BY_POINTER
    };
    if !object_type.is_null() && object_type.cast_const() != IO_DEVICE_OBJECT_TYPE.0 {
        return STATUS_OBJECT_TYPE_MISMATCH;
    }
    let granted = if access_mode == 0 {
        security::map_generic_file(desired)
    } else {
        match security::access_check(&security, &Caller::System.token(), desired) {
            Some(g) => g,
            None => return STATUS_ACCESS_DENIED,
        }
    };
    if kernel::should_fail("ObOpenObjectByPointer", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let op = bugcheck::operation();
    let value = kernel::with(|k| {
        let o = &mut k.objects;
        o.next_handle += 4;
        let mut value = o.next_handle;
        if attributes & OBJ_KERNEL_HANDLE != 0 {
            value |= KERNEL_HANDLE_BIT;
        }
        o.handles.insert(
            value,
            HandleEntry {
                object: object as usize,
                granted,
                opened_during: op,
            },
        );
        value
    });
    // SAFETY: checked non-null; the driver passes a writable HANDLE.
    unsafe { handle.write_unaligned(value) };
    STATUS_SUCCESS
}

/// ZwClose — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-zwclose>:
/// closing an invalid kernel handle is bugcheck 0x93 (INVALID_KERNEL_HANDLE). PASSIVE_LEVEL.
unsafe extern "win64" fn ZwClose(handle: u64) -> NtStatus {
    require_irql("ZwClose", PASSIVE_LEVEL);
    if kernel::with(|k| k.objects.handles.remove(&handle)).is_some() {
        return STATUS_SUCCESS;
    }
    if crate::nt::cm::zwreg::close(handle) {
        return STATUS_SUCCESS;
    }
    if handle & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT {
        emit_stderr(&format!(
            "*** kernel-emulator: ZwClose({handle:#x}): not an open kernel handle\n"
        ));
        bugcheck(0x93, handle as usize, 0, 0, 0);
    }
    STATUS_INVALID_HANDLE
}

thread_local! {
    static BEFORE_SET_SECURITY: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `step` once, at the start of the next ZwSetSecurityObject on this thread, before the
/// descriptor changes: another component's work (an open of the device a driver is about to
/// secure, say) in the window between IoCreateDevice and the driver's own descriptor.
pub fn before_set_security(step: impl FnOnce() + 'static) {
    BEFORE_SET_SECURITY.with(|b| *b.borrow_mut() = Some(Box::new(step)));
}

/// Whether a step set by [`before_set_security`] is still waiting (and drops it).
#[must_use]
pub fn cancel_before_set_security() -> bool {
    BEFORE_SET_SECURITY
        .with(|b| b.borrow_mut().take())
        .is_some()
}

/// ZwSetSecurityObject — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-zwsetsecurityobject>:
/// the handle needs WRITE_DAC for DACL_SECURITY_INFORMATION and WRITE_OWNER for owner/group;
/// the descriptor (absolute or self-relative) is captured and validated; only the parts named
/// by SecurityInformation change. PASSIVE_LEVEL.
unsafe extern "win64" fn ZwSetSecurityObject(
    handle: u64,
    information: u32,
    descriptor: *mut c_void,
) -> NtStatus {
    require_irql("ZwSetSecurityObject", PASSIVE_LEVEL);
    if let Some(step) = BEFORE_SET_SECURITY.with(|b| b.borrow_mut().take()) {
        step();
    }
    let Some(entry) = kernel::with(|k| k.objects.handles.get(&handle).cloned()) else {
        return STATUS_INVALID_HANDLE;
    };
    if information & DACL_SECURITY_INFORMATION != 0 && entry.granted & WRITE_DAC == 0 {
        return STATUS_ACCESS_DENIED;
    }
    if information & (OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION) != 0
        && entry.granted & WRITE_OWNER == 0
    {
        return STATUS_ACCESS_DENIED;
    }
    if information & SACL_SECURITY_INFORMATION != 0 {
        // Needs SeSecurityPrivilege and ACCESS_SYSTEM_SECURITY: not modelled.
        return STATUS_ACCESS_DENIED;
    }
    // SAFETY: the driver passes a readable security descriptor (validated while parsing).
    let sd = match unsafe { SecurityDescriptor::capture(descriptor as usize) } {
        Ok(sd) => sd,
        Err(status) => return status,
    };
    if kernel::should_fail("ZwSetSecurityObject", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    kernel::with(|k| {
        k.io.update_device_security(entry.object, |cur: &mut SecurityDescriptor| {
            if information & DACL_SECURITY_INFORMATION != 0 {
                cur.dacl.clone_from(&sd.dacl);
                cur.dacl_protected = sd.dacl_protected;
            }
            if information & OWNER_SECURITY_INFORMATION != 0 {
                cur.owner.clone_from(&sd.owner);
            }
            if information & GROUP_SECURITY_INFORMATION != 0 {
                cur.group.clone_from(&sd.group);
            }
        });
    });
    STATUS_SUCCESS
}

/// Calls of `ObReferenceObjectByHandle` so far (whatever their outcome): a scenario shows
/// with it that the driver skips a handle value without a kernel call.
static BY_HANDLE_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times the driver called `ObReferenceObjectByHandle` so far.
#[must_use]
pub fn references_by_handle() -> u64 {
    BY_HANDLE_CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// ObReferenceObjectByHandle — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-obreferenceobjectbyhandle>:
/// the object behind `handle`, referenced (released with ObDereferenceObject), or
/// STATUS_INVALID_HANDLE. The handle is looked up in the current process's table (the
/// attached one, as `PsGetCurrentProcess`); only with `KernelMode` does a handle with the
/// kernel-handle bits name the System process's table — with `UserMode` such a value is
/// looked up in the process's own table like any other (ReactOS
/// `ntoskrnl/include/internal/ob.h` `ObpIsKernelHandle` requires `KernelMode`;
/// `ntoskrnl/ob/obref.c` `ObReferenceObjectByHandle`). Key handles are the registry model's;
/// the model has no key object type to export, so a non-null `ObjectType` never matches a
/// key (STATUS_OBJECT_TYPE_MISMATCH); device handles match `IoDeviceObjectType`. Access is
/// not checked: the model keeps no granted access for key handles (a DesiredAccess of 0, as
/// hivetrack passes, needs none). PASSIVE_LEVEL (Learn: "Callers of
/// ObReferenceObjectByHandle must be running at IRQL = PASSIVE_LEVEL").
unsafe extern "win64" fn ObReferenceObjectByHandle(
    handle: u64,
    _desired: u32,
    object_type: *mut c_void,
    access_mode: i8,
    object: *mut *mut c_void,
    handle_information: *mut u64,
) -> NtStatus {
    require_irql("ObReferenceObjectByHandle", PASSIVE_LEVEL);
    if object.is_null() {
        bugcheck::verifier_violation("ObReferenceObjectByHandle with a NULL Object");
    }
    BY_HANDLE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Driver Verifier's Miscellaneous Checks (Learn, devtest "Miscellaneous Checks", "User-mode
    // handles with kernel-mode access"): "Starting with Windows 7, when you select the
    // Miscellaneous Checks option, Driver Verifier also checks calls to
    // ObReferenceObjectByHandle. You cannot pass a user-mode handle with kernel-mode access. If
    // such an operation occurs, Driver Verifier issues Bug Check 0xC4, with a parameter 1 value
    // of 0xF6." A user-mode handle: one of a user process's table (the current process not
    // System), not a kernel handle (negative: ReactOS `ObpIsKernelHandle`, WRK obref.c) and
    // so not a pseudo-handle either (also negative). Only that: the page names no other
    // handle check for this routine here (a NULL handle is left to STATUS_INVALID_HANDLE).
    let user_process = !matches!(crate::nt::ps::process::address_space_pid(), 0 | 4);
    if access_mode == 0 && handle != 0 && (handle as u32).cast_signed() >= 0 && user_process {
        bugcheck::emit_stderr(&format!(
            "*** kernel-emulator verifier: ObReferenceObjectByHandle({handle:#x}, AccessMode KernelMode) in process {}: a user-mode handle with kernel-mode access (Learn, devtest \"Miscellaneous Checks\")\n",
            crate::nt::ps::process::address_space_pid()
        ));
        #[allow(clippy::cast_possible_truncation, reason = "a handle value")]
        bugcheck::bugcheck(0xC4, 0xF6, handle as usize, 0, 0);
    }
    let kernel = access_mode == 0 && handle & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT;
    let table = if kernel {
        4
    } else {
        match crate::nt::ps::process::address_space_pid() {
            0 => 4,
            pid => pid,
        }
    };
    let found = kernel::with(|k| {
        if let Some(&key) = k.hives.handles.get(&(table, handle)) {
            return Some((key, false));
        }
        kernel
            .then(|| k.objects.handles.get(&handle).map(|e| (e.object, true)))
            .flatten()
    });
    let Some((target, device)) = found else {
        return STATUS_INVALID_HANDLE;
    };
    if !object_type.is_null() && (!device || object_type.cast_const() != IO_DEVICE_OBJECT_TYPE.0) {
        return STATUS_OBJECT_TYPE_MISMATCH;
    }
    kernel::with(|k| *k.objects.references.entry(target).or_insert(0) += 1);
    // SAFETY: checked non-null; the caller passes a writable PVOID.
    unsafe { object.write_unaligned(target as *mut c_void) };
    if !handle_information.is_null() {
        // OBJECT_HANDLE_INFORMATION { HandleAttributes, GrantedAccess }: none recorded.
        // SAFETY: the caller passes a writable OBJECT_HANDLE_INFORMATION (8 bytes).
        unsafe { handle_information.write_unaligned(0) };
    }
    STATUS_SUCCESS
}

/// ObfReferenceObject — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-obfreferenceobject>.
unsafe extern "win64" fn ObfReferenceObject(object: *mut c_void) -> isize {
    require_irql("ObfReferenceObject", DISPATCH_LEVEL);
    kernel::with(|k| {
        let n = k.objects.references.entry(object as usize).or_insert(0);
        *n += 1;
        *n as isize
    })
}

/// ObfDereferenceObject — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-obfdereferenceobject>:
/// releasing a reference that was never taken is a verifier violation.
unsafe extern "win64" fn ObfDereferenceObject(object: *mut c_void) -> isize {
    require_irql("ObfDereferenceObject", DISPATCH_LEVEL);
    let n = kernel::with(|k| {
        let n = k.objects.references.entry(object as usize).or_insert(0);
        *n -= 1;
        *n
    });
    if n < 0 {
        bugcheck::verifier_violation(&format!(
            "ObDereferenceObject({object:p}) without a matching reference"
        ));
    }
    if n == 0 {
        kernel::with(|k| k.objects.references.remove(&(object as usize)));
        crate::nt::cm::hive::on_last_reference(object as usize);
    }
    n as isize
}

/// ObDereferenceObject as an emulated filter calls it (same checks and effects as the export).
pub fn dereference(object: usize) {
    // SAFETY: the export's own body; it checks the reference it releases.
    let _ = unsafe { ObfDereferenceObject(object as *mut c_void) };
}

/// The object manager routines and the IoDeviceObjectType data export.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "ObOpenObjectByPointer",
            ObOpenObjectByPointer as *const () as usize,
        ),
        Export::function("ZwClose", ZwClose as *const () as usize),
        Export::function("NtClose", ZwClose as *const () as usize),
        Export::function(
            "ZwSetSecurityObject",
            ZwSetSecurityObject as *const () as usize,
        ),
        Export::function(
            "ObfReferenceObject",
            ObfReferenceObject as *const () as usize,
        ),
        Export::function(
            "ObReferenceObjectByHandle",
            ObReferenceObjectByHandle as *const () as usize,
        ),
        Export::function(
            "ObfDereferenceObject",
            ObfDereferenceObject as *const () as usize,
        ),
        Export::function(
            "IoDeviceObjectType",
            std::ptr::from_ref(&IO_DEVICE_OBJECT_TYPE) as usize,
        ),
    ]
}
