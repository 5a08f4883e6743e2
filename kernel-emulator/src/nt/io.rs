//! I/O manager: device objects and symbolic links (IoCreateDevice, IoDeleteDevice,
//! IoCreateSymbolicLink, IoDeleteSymbolicLink), and the user-mode side of I/O — opening a
//! device by its Win32 name as a given caller (the DACL access check happens here, before the
//! driver sees IRP_MJ_CREATE), METHOD_BUFFERED device-control requests through a system buffer
//! pre-filled with a poison byte and bounded by a guard page, and closing. Each IRP is checked
//! when dispatch returns: completed exactly once (a second IofCompleteRequest is bugcheck
//! 0x44), IoStatus.Status equal to the returned status, Information within the output buffer.
//!
//! Asynchronous device control ([`device_io_control_async`]): a dispatch routine that marked
//! the IRP pending (IoMarkIrpPending) and returned STATUS_PENDING keeps it; the driver
//! completes it later on any thread (a DPC, another request, IRP_MJ_CLEANUP, DriverUnload)
//! and [`PendingIoctl::poll`] then copies the output back as the synchronous path does.
//! [`PendingIoctl::cancel`] is IoCancelIrp ([`crate::nt::io::cancel`]); [`terminate_process_io`] is
//! what process exit does to a process's I/O. Completing an IRP whose cancel routine is still
//! set is bugcheck 0x48 CANCEL_STATE_IN_COMPLETED_IRP; an IRP still pending after
//! IRP_MJ_CLEANUP of its file object is a verifier violation (the process would hang at exit).

/// The cancel spin lock and `IoCancelIrp`.
pub mod cancel;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;

use crate::machine::cpu::{DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::nt::exports::Export;
use crate::nt::kernel::{self, call_driver};
use crate::nt::layout::{
    ACCESS_STATE_SIZE, DO_DEVICE_INITIALIZING, DO_EXCLUSIVE, DeviceObject, DispatchFn,
    DriverObject, FILE_DEVICE_SECURE_OPEN, FILE_OBJECT_DEVICE_OBJECT, FILE_OBJECT_SIZE,
    IO_SECURITY_CONTEXT_SIZE, IO_TYPE_DEVICE, IO_TYPE_FILE, IO_TYPE_IRP, IRP_MJ_CLEANUP,
    IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, IoStackLocation, IoStatusBlock, Irp,
    UnicodeString, poke, read_unicode,
};
use crate::nt::se::security::{self, Caller, FILE_READ_DATA, FILE_WRITE_DATA, SecurityDescriptor};
use crate::nt::status::{
    self, NtStatus, STATUS_ACCESS_DENIED, STATUS_DELETE_PENDING, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_SUPPORTED,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_INVALID, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_PENDING, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::{self, bugcheck, emit_stderr, require_irql, verifier_violation};

/// Size of the DEVOBJ_EXTENSION the model appends.
const DEVOBJ_EXTENSION_SIZE: usize = 0x70;

/// One device object.
#[derive(Debug)]
pub struct Device {
    /// NT name, if named.
    pub name: Option<String>,
    /// Owning DRIVER_OBJECT.
    pub driver: usize,
    /// Current security descriptor.
    pub security: SecurityDescriptor,
    /// Open file objects on it.
    pub open_files: u32,
    /// IoDeleteDevice was called while files were open.
    pub delete_pending: bool,
    /// The driver's service was stopped while files were open: DriverUnload runs when the
    /// last file object on the driver's devices goes; new opens fail.
    pub unload_pending: bool,
    /// Bytes allocated for DEVICE_OBJECT + extension + DEVOBJ_EXTENSION.
    alloc_len: usize,
}

/// One open file object (a user handle to a device).
#[derive(Debug, Clone, Copy)]
pub struct OpenFile {
    /// Device object.
    pub device: usize,
    /// Access granted at open.
    pub granted: u32,
    /// Process that opened it.
    pub pid: u32,
    /// Open order (a process's handles close in this order at exit).
    pub seq: u64,
}

/// Per-IRP bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
pub struct IrpTrack {
    /// IofCompleteRequest calls.
    pub completions: u32,
    /// The first IofCompleteRequest has returned: the IRP is back with the I/O manager, and
    /// its requester may see the result and free it. Until then the completing thread is
    /// still reading the IRP (its cancel routine, its stack location, its status).
    pub released: bool,
    /// Dispatch returned STATUS_PENDING: the driver owns the IRP until it completes it.
    pub pending: bool,
    /// The file object the request was sent on.
    pub file: usize,
    /// The requesting process.
    pub pid: u32,
    /// Issue order.
    pub seq: u64,
    /// Another thread is inside IoCancelIrp for it ([`cancel_during_dispatch`]): the
    /// dispatching thread does not take the IRP back (and its requester does not free it)
    /// until that returns.
    pub cancelling: bool,
    /// The whole mapping of its METHOD_BUFFERED system buffer, (0, 0) for none: scanned by
    /// [`object_ranges`] as long as the IRP is tracked, however old.
    pub buffer: (usize, usize),
}

/// I/O manager state.
#[derive(Debug, Default)]
pub struct IoState {
    /// Device objects by address.
    pub devices: HashMap<usize, Device>,
    /// Symbolic links: canonical (upper-case) link name -> (link as created, target).
    pub links: BTreeMap<String, (String, String)>,
    /// IRPs the driver currently owns (and completed asynchronous IRPs whose
    /// [`PendingIoctl`] is still alive).
    pub irps: HashMap<usize, IrpTrack>,
    /// Open file objects by address.
    pub files: HashMap<usize, OpenFile>,
    /// The `FileObject->FileName` buffers of file objects opened inside a device's namespace
    /// (freed with the file object, as the I/O manager frees its `'mNoI'` name buffer).
    pub file_names: HashMap<usize, Box<[u16]>>,
    /// Issue order of IRPs and file objects.
    pub seq: u64,
    /// Stopped drivers (DRIVER_OBJECT address) whose DriverUnload waits for the last file
    /// object on their devices: the image to unload.
    pub unload_pending: HashMap<usize, &'static crate::loader::pe::Image>,
    /// Drivers (DRIVER_OBJECT address) whose DriverUnload has run.
    pub unloaded: std::collections::HashSet<usize>,
    /// File objects whose next IRP is cancelled from another processor once it is queued
    /// and before its dispatch routine runs ([`cancel_before_dispatch`]).
    pub cancel_before_dispatch: std::collections::HashSet<usize>,
}

impl IoState {
    /// Devices, links, IRPs and file objects left over, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (p, d) in &self.devices {
            v.push(format!(
                "device object {p:#x} ({}) not deleted",
                d.name.as_deref().unwrap_or("unnamed")
            ));
        }
        for (link, target) in self.links.values() {
            v.push(format!("symbolic link {link} -> {target} not deleted"));
        }
        for (i, t) in self.irps.iter().filter(|(_, t)| t.completions == 0) {
            v.push(format!(
                "IRP {i:#x} still outstanding ({})",
                if t.pending {
                    "pending, never completed"
                } else {
                    "never completed"
                }
            ));
        }
        v.sort();
        v
    }

    /// The security descriptor of a live device object.
    #[must_use]
    pub fn device_security(&self, device: usize) -> Option<SecurityDescriptor> {
        self.devices.get(&device).map(|d| d.security.clone())
    }

    /// Changes a device's security descriptor in place.
    pub fn update_device_security(
        &mut self,
        device: usize,
        f: impl FnOnce(&mut SecurityDescriptor),
    ) {
        if let Some(d) = self.devices.get_mut(&device) {
            f(&mut d.security);
        }
    }

    /// Finds a device by NT name (case-insensitive).
    #[must_use]
    pub fn device_by_name(&self, name: &str) -> Option<usize> {
        self.devices
            .iter()
            .find(|(_, d)| {
                d.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .map(|(p, _)| *p)
    }
}

/// `\DosDevices\X` and `\GLOBAL??\X` are `\??\X`; names compare case-insensitively.
fn canonical_link(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    for prefix in ["\\DOSDEVICES\\", "\\GLOBAL??\\"] {
        if let Some(rest) = upper.strip_prefix(prefix) {
            return format!("\\??\\{rest}");
        }
    }
    upper
}

thread_local! {
    /// The process on whose behalf this thread runs driver code (0 = System, pid 4).
    static CURRENT_PID: Cell<u32> = const { Cell::new(4) };
}

/// Runs `f` on behalf of process `pid` (PsGetCurrentProcessId reports it).
pub fn with_pid<R>(pid: u32, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT_PID.with(|c| c.replace(pid));
    let r = f();
    CURRENT_PID.with(|c| c.set(previous));
    r
}

/// The process id PsGetCurrentProcessId reports on this thread.
#[must_use]
pub fn current_pid() -> u32 {
    CURRENT_PID.with(Cell::get)
}

/// IoCreateDevice — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iocreatedevice>:
/// allocates DEVICE_OBJECT + extension (zeroed), links it at the head of DriverObject's list,
/// sets DO_DEVICE_INITIALIZING (cleared by the I/O manager after DriverEntry: WRK
/// `base/ntos/io/iomgr/iosubs.c` IoCreateDevice, `deviceObject->Flags = DO_DEVICE_INITIALIZING`
/// at line 4605; Learn, "What does DO_DEVICE_INITIALIZING really do?", "the I/O manager sets
/// DO_DEVICE_INITIALIZING"), gives it the default device security; a taken name is
/// STATUS_OBJECT_NAME_COLLISION. PASSIVE_LEVEL.
unsafe extern "win64" fn IoCreateDevice(
    driver: *mut DriverObject,
    extension_size: u32,
    name: *const UnicodeString,
    device_type: u32,
    characteristics: u32,
    exclusive: u8,
    out: *mut *mut DeviceObject,
) -> NtStatus {
    require_irql("IoCreateDevice", PASSIVE_LEVEL);
    if driver.is_null() || out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the driver passes a UNICODE_STRING or NULL (validated by read_unicode).
    let name = unsafe { read_unicode(name) };
    if name.as_deref().is_some_and(|n| !n.starts_with('\\')) {
        return STATUS_OBJECT_NAME_INVALID;
    }
    if kernel::should_fail("IoCreateDevice", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if let Some(n) = &name
        && kernel::with(|k| k.io.device_by_name(n).is_some())
    {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    let ext = (extension_size as usize).div_ceil(16) * 16;
    let base = size_of::<DeviceObject>();
    let alloc_len = base + ext + DEVOBJ_EXTENSION_SIZE;
    let layout = std::alloc::Layout::from_size_align(alloc_len, 16).expect("device layout");
    // SAFETY: non-zero size.
    let dev = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<DeviceObject>();
    assert!(!dev.is_null(), "host out of memory");
    // SAFETY: `dev` is a fresh, zeroed, exclusively owned allocation of `alloc_len` bytes.
    let d = unsafe { &mut *dev };
    // SAFETY: `driver` is the live DRIVER_OBJECT the driver passed.
    let drv = unsafe { &mut *driver };
    d.type_ = IO_TYPE_DEVICE;
    d.size = (base + ext) as u16;
    d.driver_object = driver;
    d.next_device = drv.device_object;
    d.flags = DO_DEVICE_INITIALIZING | if exclusive != 0 { DO_EXCLUSIVE } else { 0 };
    d.characteristics = characteristics;
    d.device_type = device_type;
    d.stack_size = 1;
    if ext > 0 {
        d.device_extension = (dev as usize + base) as *mut c_void;
    }
    let doe = dev as usize + base + ext;
    // SAFETY: the DEVOBJ_EXTENSION lies inside the allocation, after the device extension.
    unsafe { poke(doe, 13i16) }; // IO_TYPE_DEVICE_OBJECT_EXTENSION
    // SAFETY: as above.
    unsafe { poke(doe + 2, DEVOBJ_EXTENSION_SIZE as u16) };
    // SAFETY: as above.
    unsafe { poke(doe + 8, dev) };
    d.device_object_extension = doe as *mut c_void;
    drv.device_object = dev;
    // SAFETY: checked non-null; the driver passes a writable PDEVICE_OBJECT.
    unsafe { out.write(dev) };
    kernel::with(|k| {
        k.io.devices.insert(
            dev as usize,
            Device {
                name,
                driver: driver as usize,
                security: SecurityDescriptor::default_device(),
                open_files: 0,
                delete_pending: false,
                unload_pending: false,
                alloc_len,
            },
        );
    });
    STATUS_SUCCESS
}

/// Unlinks and frees a device object (after the last file object is gone). A timer still set
/// or a DPC still queued in its extension is bugcheck 0xC7 ([`crate::nt::ke::timer::check_free`]).
fn free_device(dev: *mut DeviceObject, alloc_len: usize) {
    crate::nt::ke::timer::check_free(dev as usize, alloc_len);
    // SAFETY: `dev` is a live device object owned by the model.
    let driver = unsafe { (*dev).driver_object };
    // SAFETY: its driver object outlives it.
    let mut link = unsafe { &raw mut (*driver).device_object };
    loop {
        // SAFETY: `link` points at the list head or at a live device's NextDevice field.
        let cur = unsafe { *link };
        if cur.is_null() {
            break;
        }
        if cur == dev {
            // SAFETY: `dev` is live.
            let next = unsafe { (*dev).next_device };
            // SAFETY: `link` points at a live NextDevice field (or the list head).
            unsafe { *link = next };
            break;
        }
        // SAFETY: `cur` is a live device object of this driver.
        link = unsafe { &raw mut (*cur).next_device };
    }
    // SAFETY: `dev` is the model's own allocation of `alloc_len` bytes, no longer referenced.
    unsafe { std::ptr::write_bytes(dev.cast::<u8>(), 0xFE, alloc_len) };
    let layout = std::alloc::Layout::from_size_align(alloc_len, 16).expect("layout");
    // SAFETY: allocated by IoCreateDevice with this layout.
    unsafe { std::alloc::dealloc(dev.cast(), layout) };
}

/// IoDeleteDevice — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iodeletedevice>:
/// removes the device; the memory goes when the last reference (open file) goes. Deleting a
/// device the model does not know is a verifier violation. PASSIVE_LEVEL.
unsafe extern "win64" fn IoDeleteDevice(dev: *mut DeviceObject) {
    require_irql("IoDeleteDevice", PASSIVE_LEVEL);
    let action = kernel::with(|k| match k.io.devices.get_mut(&(dev as usize)) {
        None => None,
        Some(d) if d.open_files > 0 => {
            d.delete_pending = true;
            Some(None)
        }
        Some(_) => {
            k.io.devices
                .remove(&(dev as usize))
                .map(|d| Some(d.alloc_len))
        }
    });
    match action {
        None => verifier_violation(&format!(
            "IoDeleteDevice({dev:p}): not a live device object"
        )),
        Some(Some(len)) => free_device(dev, len),
        Some(None) => {}
    }
}

/// IoCreateSymbolicLink — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iocreatesymboliclink>:
/// `\DosDevices\X` names `\??\X`; an existing link is STATUS_OBJECT_NAME_COLLISION.
/// PASSIVE_LEVEL.
unsafe extern "win64" fn IoCreateSymbolicLink(
    link: *const UnicodeString,
    target: *const UnicodeString,
) -> NtStatus {
    require_irql("IoCreateSymbolicLink", PASSIVE_LEVEL);
    // SAFETY: the driver passes UNICODE_STRINGs (validated by read_unicode).
    let (Some(l), Some(t)) = (unsafe { read_unicode(link) }, unsafe {
        read_unicode(target)
    }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if !l.starts_with('\\') {
        return STATUS_OBJECT_NAME_INVALID;
    }
    if kernel::should_fail("IoCreateSymbolicLink", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    kernel::with(|k| {
        let key = canonical_link(&l);
        if k.io.links.contains_key(&key) {
            return STATUS_OBJECT_NAME_COLLISION;
        }
        k.io.links.insert(key, (l, t));
        STATUS_SUCCESS
    })
}

/// IoDeleteSymbolicLink — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iodeletesymboliclink>:
/// STATUS_OBJECT_NAME_NOT_FOUND if there is no such link. PASSIVE_LEVEL.
unsafe extern "win64" fn IoDeleteSymbolicLink(link: *const UnicodeString) -> NtStatus {
    require_irql("IoDeleteSymbolicLink", PASSIVE_LEVEL);
    // SAFETY: the driver passes a UNICODE_STRING (validated by read_unicode).
    let Some(l) = (unsafe { read_unicode(link) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    kernel::with(|k| match k.io.links.remove(&canonical_link(&l)) {
        Some(_) => STATUS_SUCCESS,
        None => STATUS_OBJECT_NAME_NOT_FOUND,
    })
}

/// IofCompleteRequest — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-iocompleterequest>:
/// the IRP goes back to the I/O manager; completing it twice is bugcheck 0x44
/// (MULTIPLE_IRP_COMPLETE_REQUESTS); completing it with its cancel routine still set is
/// bugcheck 0x48 (CANCEL_STATE_IN_COMPLETED_IRP,
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/debugger/bug-check-0x48--cancel-state-in-completed-irp>:
/// IoSetCancelRoutine(Irp, NULL) must come first — a free build of Windows stops with it
/// only when IoCancelIrp later finds the stale routine in the completed IRP, a checked build
/// and Driver Verifier's I/O verification catch it at completion, as the model does, so the
/// report names the completing code); completing with STATUS_PENDING is a
/// verifier violation. Irp->PendingReturned takes the stack location's SL_PENDING_RETURNED.
/// Any thread, any time after dispatch for a pending IRP. IRQL <= DISPATCH_LEVEL.
unsafe extern "win64" fn IofCompleteRequest(irp: *mut Irp, _boost: i8) {
    require_irql("IofCompleteRequest", DISPATCH_LEVEL);
    let completions = kernel::with(|k| {
        k.io.irps.get_mut(&(irp as usize)).map(|t| {
            t.completions += 1;
            t.completions
        })
    });
    match completions {
        None => {
            emit_stderr(&format!(
                "*** kernel-emulator: IoCompleteRequest({irp:p}): not an IRP the driver owns\n"
            ));
            bugcheck(0x44, irp as usize, 0xEAE, 0, 0);
        }
        Some(n) if n > 1 => {
            emit_stderr(&format!(
                "*** kernel-emulator: IoCompleteRequest({irp:p}) called {n} times during {}\n",
                bugcheck::operation()
            ));
            bugcheck(0x44, irp as usize, 0xEAE, 0, 0);
        }
        Some(_) => {}
    }
    // SAFETY: the IRP is live (tracked above).
    let slot = unsafe { &raw mut (*irp).cancel_routine };
    // SAFETY: CancelRoutine is a pointer-sized, aligned field of the live IRP, read as the
    // interlocked field it is.
    let cancel_routine = unsafe { std::sync::atomic::AtomicPtr::from_ptr(slot) }
        .load(std::sync::atomic::Ordering::Acquire);
    if !cancel_routine.is_null() {
        emit_stderr(&format!(
            "*** kernel-emulator: IoCompleteRequest({irp:p}) with its cancel routine {} still set \
             (IoSetCancelRoutine(Irp, NULL) first)\n",
            bugcheck::symbolize(cancel_routine as usize)
        ));
        bugcheck(0x48, irp as usize, cancel_routine as usize, 0, 0);
    }
    // SAFETY: the IRP is live (tracked above).
    let stack = unsafe { (*irp).current_stack_location };
    // SAFETY: its current stack location is live with it.
    let control = unsafe { (*stack).control };
    // SAFETY: as above.
    unsafe { (*irp).pending_returned = control & SL_PENDING_RETURNED };
    // SAFETY: the IRP is live (tracked above).
    let status = unsafe { (*irp).io_status.status };
    if status == STATUS_PENDING {
        verifier_violation(&format!(
            "IoCompleteRequest({irp:p}) with IoStatus.Status == STATUS_PENDING"
        ));
    }
    // Only now does the requester see the completion (and may free the IRP). ReactOS
    // ntoskrnl/io/iomgr/irp.c, IofCompleteRequest: queueing the IopCompleteRequest APC (which
    // copies the system buffer back, signals the caller and frees the IRP) is its last use
    // of the IRP. Publishing the completion at the call's start let a scenario free the IRP
    // under a DPC still checking it (wait-free-races, 1 run in a few hundred: bugcheck 0x48
    // naming the bytes of the next request's buffer as the cancel routine).
    kernel::with(|k| {
        if let Some(t) = k.io.irps.get_mut(&(irp as usize)) {
            t.released = true;
        }
    });
}

/// What MajorFunction entries hold before the driver sets them (IopInvalidDeviceRequest):
/// completes with STATUS_INVALID_DEVICE_REQUEST.
///
/// # Safety
/// `irp` must be a live IRP the I/O manager dispatched.
pub unsafe extern "win64" fn invalid_device_request(
    _dev: *mut DeviceObject,
    irp: *mut Irp,
) -> NtStatus {
    // SAFETY: the I/O manager passes a live IRP.
    let i = unsafe { &mut *irp };
    i.io_status.status = status::STATUS_INVALID_DEVICE_REQUEST;
    i.io_status.information = 0;
    // SAFETY: as above; completed once here.
    unsafe { IofCompleteRequest(irp, 0) };
    status::STATUS_INVALID_DEVICE_REQUEST
}

/// PsGetCurrentProcessId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetcurrentprocessid>:
/// the process on whose behalf the thread runs (the requesting process in a dispatch routine).
unsafe extern "win64" fn PsGetCurrentProcessId() -> usize {
    current_pid() as usize
}

/// PsGetCurrentThreadId — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-psgetcurrentthreadid>:
/// "the identifier of the current thread" — each thread its own, whatever process it acts
/// for (WRK `base/ntos/ps/create.c` PspCreateThread: `Thread->Cid.UniqueThread` is a fresh
/// `ExCreateHandle(PspCidTable, Thread)` entry per thread). See [`current_thread_id`].
unsafe extern "win64" fn PsGetCurrentThreadId() -> usize {
    current_thread_id()
}

thread_local! {
    /// Which thread of its process this OS thread plays now ([`with_thread`]; 0 by default).
    static THREAD_INDEX: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` as thread `index` of the current process on this OS thread: the model is
/// single-threaded where a scenario plays an interleaving, so two threads of one process
/// (say one unloading while another unloads inside its window, `hive::unload_hive_interrupted`)
/// are told apart by this index. Each (process, processor, index) has its own thread id.
pub fn with_thread<R>(index: u32, f: impl FnOnce() -> R) -> R {
    let previous = THREAD_INDEX.with(|c| c.replace(index));
    let r = f();
    THREAD_INDEX.with(|c| c.set(previous));
    r
}

/// The thread id `PsGetCurrentThreadId` reports: one per emulated thread — per process, per
/// emulated processor (each OS thread of the model is another thread of the process it acts
/// for) and per [`with_thread`] index. The first thread of a process on processor 0 keeps
/// `pid * 4 + 4`; any other gets `pid * 4 + 4 + (processor * 256 + index + 1) * 0x10_0000`,
/// so ids stay multiples of 4 and distinct for pids below 0x40000 (*model choice*: Windows
/// draws thread ids from the same CID table as process ids, never two alike at once; the
/// numbers themselves carry no meaning). Until 2026-12-06 the id was `pid * 4 + 4` alone:
/// every thread of a process shared it (fidelity audit 22e, H1).
#[must_use]
pub fn current_thread_id() -> usize {
    let pid = current_pid() as usize;
    let processor = crate::machine::cpu::processor_number() as usize;
    let index = THREAD_INDEX.with(Cell::get) as usize;
    let first = pid * 4 + 4;
    if processor == 0 && index == 0 {
        first
    } else {
        first + (processor * 256 + index + 1) * 0x10_0000
    }
}

/// The I/O manager routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("IoCreateDevice", IoCreateDevice as *const () as usize),
        Export::function("IoDeleteDevice", IoDeleteDevice as *const () as usize),
        Export::function(
            "IoCreateSymbolicLink",
            IoCreateSymbolicLink as *const () as usize,
        ),
        Export::function(
            "IoDeleteSymbolicLink",
            IoDeleteSymbolicLink as *const () as usize,
        ),
        Export::function(
            "IofCompleteRequest",
            IofCompleteRequest as *const () as usize,
        ),
        Export::function(
            "PsGetCurrentProcessId",
            PsGetCurrentProcessId as *const () as usize,
        ),
        Export::function(
            "PsGetCurrentThreadId",
            PsGetCurrentThreadId as *const () as usize,
        ),
    ]
}

// ------------------------------------------------------------------ the user-mode side

/// A user-mode handle to an opened device: its file object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandle(usize);

/// The result of a device-control request as user mode sees it.
#[derive(Debug, Clone)]
pub struct IoctlResult {
    /// Final status.
    pub status: NtStatus,
    /// IoStatus.Information.
    pub information: usize,
    /// The bytes copied back to the caller's output buffer.
    pub output: Vec<u8>,
}

/// An IRP with its single stack location, as the I/O manager allocates it.
struct IrpAllocation {
    irp: *mut Irp,
    layout: std::alloc::Layout,
}

impl IrpAllocation {
    fn new(major: usize, device: usize, file: usize, pid: u32) -> Self {
        let size = size_of::<Irp>() + size_of::<IoStackLocation>();
        let layout = std::alloc::Layout::from_size_align(size, 16).expect("irp layout");
        // SAFETY: non-zero size.
        let irp = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Irp>();
        assert!(!irp.is_null(), "host out of memory");
        note_handed(irp as usize, size);
        // SAFETY: a fresh, zeroed, exclusively owned allocation with room for the IRP.
        let i = unsafe { &mut *irp };
        i.type_ = IO_TYPE_IRP;
        i.size = size as u16;
        i.stack_count = 1;
        i.current_location = 1; // IoCallDriver already moved to the driver's location
        i.requestor_mode = 1; // UserMode
        // Not yet completed: a value the driver must overwrite.
        i.io_status = IoStatusBlock {
            status: STATUS_NOT_SUPPORTED,
            pad: 0,
            information: 0xBAAD_F00D,
        };
        i.thread = crate::machine::cpu::current_thread() as *mut c_void;
        i.original_file_object = file as *mut c_void;
        let sl = (irp as usize + size_of::<Irp>()) as *mut IoStackLocation;
        // SAFETY: the stack location follows the IRP inside the same fresh allocation.
        let st = unsafe { &mut *sl };
        st.major_function = major as u8;
        st.device_object = device as *mut DeviceObject;
        st.file_object = file as *mut c_void;
        i.current_stack_location = sl;
        let _ = pid;
        Self { irp, layout }
    }

    fn stack(&self) -> *mut IoStackLocation {
        // SAFETY: set in `new`, the IRP is live.
        unsafe { (*self.irp).current_stack_location }
    }

    /// Sets the four Parameters slots of the stack location.
    fn set_parameters(&self, p: [u64; 4]) {
        // SAFETY: the stack location is live and ours while the driver does not own the IRP.
        unsafe { (*self.stack()).parameters = p };
    }
}

impl Drop for IrpAllocation {
    fn drop(&mut self) {
        // SAFETY: the IRP allocated in `new`; the driver no longer owns it.
        unsafe { std::ptr::write_bytes(self.irp.cast::<u8>(), 0xFE, self.layout.size()) };
        // SAFETY: as above, with its own layout.
        unsafe { std::alloc::dealloc(self.irp.cast(), self.layout) };
    }
}

/// Stack location Control flag IoMarkIrpPending sets (wdm.h SL_PENDING_RETURNED).
pub const SL_PENDING_RETURNED: u8 = 0x01;

/// Sends one IRP to the driver that owns `device` and checks the completion rules. With
/// `may_pend`, a dispatch routine may keep the IRP (IoMarkIrpPending + STATUS_PENDING): the
/// IRP then stays tracked as pending and STATUS_PENDING is returned.
fn dispatch(
    irp: &IrpAllocation,
    buffer: (usize, usize),
    device: usize,
    major: usize,
    operation: &str,
    pid: u32,
    may_pend: bool,
) -> NtStatus {
    let driver = kernel::with(|k| k.io.devices.get(&device).map(|d| d.driver));
    let Some(driver) = driver else {
        return STATUS_NO_SUCH_DEVICE;
    };
    // SAFETY: the DRIVER_OBJECT lives as long as the loaded driver.
    let routine: Option<DispatchFn> =
        unsafe { (*(driver as *mut DriverObject)).major_function[major] };
    let routine = routine.unwrap_or(invalid_device_request);
    // SAFETY: the IRP is live and ours until dispatch.
    let file = unsafe { (*irp.irp).original_file_object } as usize;
    kernel::with(|k| {
        k.io.seq += 1;
        let seq = k.io.seq;
        k.io.irps.insert(
            irp.irp as usize,
            IrpTrack {
                file,
                pid,
                seq,
                buffer,
                ..IrpTrack::default()
            },
        )
    });
    if major == IRP_MJ_DEVICE_CONTROL && kernel::with(|k| k.io.cancel_before_dispatch.remove(&file))
    {
        // CancelIoEx on another processor once the IRP is queued, before IoCallDriver
        // ([`cancel_before_dispatch`]): Irp->Cancel is set, no routine to call yet.
        let at = irp.irp as usize;
        let cancelled = std::thread::spawn(move || {
            crate::machine::cpu::enter_thread(121);
            at_apc_level(|| {
                // SAFETY: the IRP is live: this thread is joined before it is dispatched.
                with_pid(pid, || unsafe {
                    crate::nt::io::cancel::cancel_irp(at as *mut Irp)
                })
            })
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert!(
            !cancelled,
            "IoCancelIrp before dispatch found a cancel routine (the IRP is zeroed)"
        );
    }
    let previous = CURRENT_PID.with(|c| c.replace(pid));
    let (dev, i) = (device as *mut DeviceObject, irp.irp);
    // SAFETY: calling the driver's dispatch routine with a live device object and IRP.
    let returned = call_driver(operation, || unsafe { routine(dev, i) });
    CURRENT_PID.with(|c| c.set(previous));
    let held = crate::nt::ke::sync::spin_locks_held_by_current_thread();
    if !held.is_empty() {
        verifier_violation(&format!(
            "{operation} returned to user mode holding {}",
            held.join(", ")
        ));
    }
    // SAFETY: the I/O manager's own stack location of the IRP (still allocated: until the
    // IRP is freed, which only its owner here does).
    let marked = unsafe { (*irp.stack()).control } & SL_PENDING_RETURNED != 0;
    if returned == STATUS_PENDING {
        if !may_pend {
            verifier_violation(&format!(
                "{operation} returned STATUS_PENDING: this request was sent synchronously \
                 (io::device_io_control, open, close); send a request that may pend with \
                 io::device_io_control_async"
            ));
        }
        if !marked {
            verifier_violation(&format!(
                "{operation} returned STATUS_PENDING without IoMarkIrpPending \
                 (SL_PENDING_RETURNED not set in the stack location's Control)"
            ));
        }
        kernel::with(|k| {
            if let Some(t) = k.io.irps.get_mut(&(irp.irp as usize)) {
                t.pending = true;
            }
        });
        return STATUS_PENDING;
    }
    // An IoCancelIrp another thread began ([`cancel_during_dispatch`]) ends before the IRP
    // goes back to its requester, who frees it: on Windows the IRP is on the issuing
    // thread's list, which the canceller holds while it cancels.
    wait_for_canceller(irp.irp as usize);
    let track = kernel::with(|k| k.io.irps.remove(&(irp.irp as usize))).unwrap_or_default();
    // SAFETY: the IRP is still allocated (we own it again).
    let io_status = unsafe { (*irp.irp).io_status.status };
    if marked {
        verifier_violation(&format!(
            "{operation} called IoMarkIrpPending but returned {} (a pending IRP's dispatch \
             routine must return STATUS_PENDING)",
            status::describe(returned)
        ));
    }
    if track.completions == 0 {
        verifier_violation(&format!(
            "{operation} returned {} without completing the IRP",
            status::describe(returned)
        ));
    }
    if io_status != returned {
        verifier_violation(&format!(
            "{operation} returned {} but IoStatus.Status is {}",
            status::describe(returned),
            status::describe(io_status)
        ));
    }
    returned
}

/// How many of the last IRPs, system buffers and file objects handed to a driver stay
/// listed in [`object_ranges`] after they are freed: a driver that copies the address of the
/// very IRP it answers into the answer writes it while the IRP lives, and the scan runs after
/// the IRP went back (review 21a, L6).
const HANDED_KEEP: usize = 256;

/// How many IRPs still tracked (the driver holds them: pending, or completed and not yet
/// taken back) [`object_ranges`] lists besides the last [`HANDED_KEEP`], newest first: every
/// one a driver can hold in practice (hivetrack keeps a bounded queue of waits), and a bound
/// on the scan's cost. Until 2026-12-06 an IRP pended before the last 256 handed objects was
/// not scanned for (the emulator's `td-scan-pending-irp`).
const TRACKED_KEEP: usize = 4096;

/// The address ranges of the last [`HANDED_KEEP`] IRPs (with their stack location), system
/// buffers and file objects the I/O manager built for a driver, newest last.
static HANDED: std::sync::Mutex<std::collections::VecDeque<(usize, usize)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Notes an object handed to a driver ([`HANDED`]).
fn note_handed(addr: usize, len: usize) {
    let mut h = HANDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if h.len() == HANDED_KEEP {
        h.pop_front();
    }
    h.push_back((addr, addr + len.max(1)));
}

/// The newest IRP (or other I/O object) handed to a driver, for a scan's self-check.
#[must_use]
pub fn newest_handed() -> Option<usize> {
    HANDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .back()
        .map(|r| r.0)
}

/// Every I/O-manager object address a driver holds or was recently handed, unsorted, possibly
/// overlapping: live DEVICE_OBJECTs (with extension and DEVOBJ_EXTENSION), their
/// DRIVER_OBJECTs, live FILE_OBJECTs and their name buffers, every IRP still tracked (up to
/// [`TRACKED_KEEP`], with its system buffer: a wait pended long ago) and the last
/// [`HANDED_KEEP`] IRPs, system buffers and file objects ([`HANDED`]). None of them is a pool block in the
/// model (the host allocator or their own mappings), so a pool scan cannot see them; the
/// IOCTL fuzz scans answers for them (review 21a, L6).
#[must_use]
pub fn object_ranges() -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = kernel::with(|k| {
        let mut v: Vec<(usize, usize)> = Vec::new();
        for (&a, d) in &k.io.devices {
            v.push((a, a + d.alloc_len));
            v.push((d.driver, d.driver + size_of::<DriverObject>()));
        }
        v.extend(k.io.files.keys().map(|&f| (f, f + FILE_OBJECT_SIZE)));
        // Every IRP the driver still holds, however many were handed since it pended, with
        // its system buffer.
        let mut tracked: Vec<(&usize, &IrpTrack)> = k.io.irps.iter().collect();
        tracked.sort_unstable_by_key(|(_, t)| std::cmp::Reverse(t.seq));
        for (&irp, t) in tracked.into_iter().take(TRACKED_KEEP) {
            v.push((irp, irp + size_of::<Irp>() + size_of::<IoStackLocation>()));
            if t.buffer.1 > t.buffer.0 {
                v.push(t.buffer);
            }
        }
        v.extend(k.io.file_names.values().map(|n| {
            (
                n.as_ptr() as usize,
                n.as_ptr() as usize + n.len().max(1) * 2,
            )
        }));
        v
    });
    v.extend(
        HANDED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied(),
    );
    v
}

/// The address of `handle`'s FILE_OBJECT (a kernel address a driver is handed).
#[must_use]
pub const fn file_object_address(handle: FileHandle) -> usize {
    handle.0
}

/// A guarded, poisoned METHOD_BUFFERED system buffer: `len` bytes ending right before a
/// PROT_NONE page, so that a driver writing past max(input, output) length faults.
struct SystemBuffer {
    base: usize,
    map_len: usize,
    ptr: *mut u8,
}

impl SystemBuffer {
    fn new(len: usize, poison: u8) -> Self {
        let pages = len.max(1).div_ceil(4096);
        let map_len = (pages + 1) * 4096;
        // SAFETY: a fresh anonymous mapping.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(m != libc::MAP_FAILED, "system buffer mmap failed");
        let base = m as usize;
        // SAFETY: the last page of our mapping becomes the guard.
        unsafe { libc::mprotect((base + pages * 4096) as *mut c_void, 4096, libc::PROT_NONE) };
        // SAFETY: the data pages are writable.
        unsafe { std::ptr::write_bytes(base as *mut u8, poison, pages * 4096) };
        // The I/O manager's pool buffer is 16-byte aligned; keep that, end as close to the
        // guard as alignment allows.
        let ptr = ((base + pages * 4096 - len) & !15) as *mut u8;
        note_handed(base, pages * 4096);
        Self { base, map_len, ptr }
    }
}

impl Drop for SystemBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base as *mut c_void, self.map_len) };
    }
}

/// `FILE_DEVICE_DISK` and `FILE_DEVICE_CD_ROM` (`wdm.h`): the device types whose
/// namespace opens are traverse-checked even for a caller with the traverse privilege.
const FILE_DEVICE_DISK: u32 = 0x07;
/// See [`FILE_DEVICE_DISK`].
const FILE_DEVICE_CD_ROM: u32 = 0x02;
/// `FILE_TRAVERSE`, the right the traverse check asks for.
const FILE_TRAVERSE: u32 = 0x20;
/// `FILE_OBJECT.FileName` (a `UNICODE_STRING`) on x64.
const FILE_OBJECT_FILE_NAME: usize = 0x58;

/// Splits an NT path into a device and the name inside its namespace (the object manager's
/// RemainingName): the longest prefix that is a device, or a symbolic link to one, wins;
/// the rest (with its leading backslash, possibly just `\`) is handed to the device.
fn resolve_device(k: &kernel::Kernel, nt: &str) -> Option<(usize, String)> {
    let cuts = std::iter::once(nt.len()).chain(
        nt.char_indices()
            .rev()
            .filter(|&(i, c)| c == '\\' && i > 0)
            .map(|(i, _)| i),
    );
    for cut in cuts {
        let (prefix, rest) = nt.split_at(cut);
        let target =
            k.io.links
                .get(&canonical_link(prefix))
                .map_or_else(|| prefix.to_string(), |(_, t)| t.clone());
        if let Some(d) = k.io.device_by_name(&target) {
            return Some((d, rest.to_string()));
        }
    }
    None
}

/// Opens `path` (`\\.\Name`, `\??\Name`, `\DosDevices\Name` or `\Device\Name`, each
/// optionally followed by `\name` inside the device's namespace) for `caller` with `desired`
/// access, as NtCreateFile does for a device: resolve the link, check the caller against the
/// device's DACL (STATUS_ACCESS_DENIED before the driver is involved), then send
/// IRP_MJ_CREATE with `FileObject->FileName` set to the name inside the namespace.
///
/// The access check follows WRK `base/ntos/io/iomgr/parse.c` IopParseDevice:
/// - the device itself (RemainingName empty): a full SeAccessCheck of `desired` against the
///   device's DACL (lines 597-655);
/// - a name inside its namespace (`\\.\HiveTrack\x`): only a traverse check, and that only
///   when the caller lacks the traverse privilege or the device is a disk or CD-ROM (lines
///   657-748). Every caller the model has holds SeChangeNotifyPrivilege (Windows grants
///   "Bypass traverse checking" to Everyone, Users and the service accounts by default:
///   Learn, "Bypass traverse checking" security policy setting), so for a non-disk device
///   no check is made — the handle gets the generic-mapped rights asked for, masked to the
///   file type's valid rights (WRK `ob/obhandle.c` ObpCreateHandle lines 2630-2634:
///   `(RemainingDesiredAccess | PreviouslyGrantedAccess) & (ValidAccessMask |
///   ACCESS_SYSTEM_SECURITY)`; `io/iomgr/ioinit.c` line 2151: the file type's
///   `ValidAccessMask = FILE_ALL_ACCESS`). `MAXIMUM_ALLOWED`, which only an access check
///   turns into rights, is masked off and grants nothing;
/// - unless the device has `FILE_DEVICE_SECURE_OPEN`: then the full SeAccessCheck is made for
///   the namespace open too (lines 940-1008).
///
/// Learn, "Controlling Device Namespace Access": "By default, security checks for file open
/// requests within the device's namespace ... are left entirely up to the driver—the device
/// object ACL is not checked by the operating system"; FILE_DEVICE_SECURE_OPEN makes the
/// I/O manager apply the device object's security descriptor to them. The name is copied into
/// the file object before the driver is called (parse.c lines 1251-1278).
///
/// # Errors
/// The failing status.
#[allow(clippy::too_many_lines)] // one routine, in IopParseDevice's order
pub fn open(path: &str, caller: Caller, pid: u32, desired: u32) -> Result<FileHandle, NtStatus> {
    let nt = path
        .strip_prefix("\\\\.\\")
        .map_or_else(|| path.to_string(), |rest| format!("\\??\\{rest}"));
    let device = kernel::with(|k| {
        resolve_device(k, &nt).map(|(d, rest)| (d, rest, k.io.devices[&d].security.clone()))
    });
    let Some((device, remaining, sd)) = device else {
        return Err(STATUS_OBJECT_NAME_NOT_FOUND);
    };
    // SAFETY: a live device object (tracked by the model).
    let (flags, characteristics, device_type) = unsafe {
        let d = &*(device as *mut DeviceObject);
        (d.flags, d.characteristics, d.device_type)
    };
    // A device still initializing cannot be opened, by its NT name or a link, whatever its
    // security: WRK `base/ntos/io/iomgr/parse.c` IopCheckDeviceAndDriver (lines 81-85,
    // STATUS_NO_SUCH_DEVICE), called by IopParseDevice (line 504) before its access check
    // (SeAccessCheck, line 614); Learn, "What does DO_DEVICE_INITIALIZING really do?" ("If
    // DO_DEVICE_INITIALIZING is set, the I/O Manager won't allow another component to open the
    // device by name"). hivetrack relies on it: its device has the default security until
    // DriverEntry's ZwSetSecurityObject (`open-during-entry`).
    if flags & DO_DEVICE_INITIALIZING != 0 {
        return Err(STATUS_NO_SUCH_DEVICE);
    }
    if kernel::with(|k| k.io.devices[&device].unload_pending) {
        return Err(STATUS_NO_SUCH_DEVICE);
    }
    if kernel::with(|k| k.io.devices[&device].delete_pending) {
        return Err(STATUS_DELETE_PENDING);
    }
    let token = caller.token();
    let granted = if remaining.is_empty() {
        // parse.c lines 597-655: the device itself, a full access check.
        security::access_check(&sd, &token, desired)
    } else {
        // parse.c lines 657-748: traverse only, skipped with the traverse privilege (every
        // model caller has it) unless the device is a disk or CD-ROM.
        let traverse = device_type != FILE_DEVICE_DISK && device_type != FILE_DEVICE_CD_ROM
            || security::access_check(&sd, &token, FILE_TRAVERSE).is_some();
        if !traverse {
            return Err(STATUS_ACCESS_DENIED);
        }
        if characteristics & FILE_DEVICE_SECURE_OPEN != 0 {
            // parse.c lines 940-1008: FILE_DEVICE_SECURE_OPEN, the full check after all.
            security::access_check(&sd, &token, desired)
        } else {
            // ob/obhandle.c lines 2630-2634: the handle gets what was asked for, unchecked,
            // masked to the file type's ValidAccessMask (FILE_ALL_ACCESS, io/iomgr/ioinit.c
            // line 2151) | ACCESS_SYSTEM_SECURITY. MAXIMUM_ALLOWED is not in that mask: with no
            // access check to turn it into rights it grants nothing. Until 2026-12-06 the
            // model granted FILE_ALL_ACCESS for it (review 22a, L5).
            Some(
                security::map_generic_file(desired)
                    & (security::FILE_ALL_ACCESS | security::ACCESS_SYSTEM_SECURITY),
            )
        }
    };
    let Some(granted) = granted else {
        return Err(STATUS_ACCESS_DENIED);
    };
    if flags & DO_EXCLUSIVE != 0 && kernel::with(|k| k.io.devices[&device].open_files > 0) {
        return Err(STATUS_ACCESS_DENIED);
    }
    let file = alloc_file_object(device);
    if !remaining.is_empty() {
        // parse.c lines 1251-1278: the remaining name is copied into `FileObject->FileName`.
        let name: Box<[u16]> = remaining.encode_utf16().collect();
        let bytes = u16::try_from(name.len() * 2).unwrap_or(0xFFFE);
        // SAFETY: a fresh FILE_OBJECT; FileName is a UNICODE_STRING at this offset (Length).
        unsafe { poke(file + FILE_OBJECT_FILE_NAME, bytes) };
        // SAFETY: as above (MaximumLength).
        unsafe { poke(file + FILE_OBJECT_FILE_NAME + 2, bytes) };
        // SAFETY: as above (Buffer); the buffer is kept in `file_names` with the file object.
        unsafe { poke(file + FILE_OBJECT_FILE_NAME + 8, name.as_ptr() as usize) };
        kernel::with(|k| k.io.file_names.insert(file, name));
    }
    let security_context =
        vec![0u8; IO_SECURITY_CONTEXT_SIZE + ACCESS_STATE_SIZE].into_boxed_slice();
    let irp = IrpAllocation::new(IRP_MJ_CREATE, device, file, pid);
    let sc = security_context.as_ptr() as usize;
    // SAFETY: the security context buffer is ours and holds IO_SECURITY_CONTEXT + ACCESS_STATE.
    unsafe { poke(sc + 8, sc + IO_SECURITY_CONTEXT_SIZE) }; // AccessState
    // SAFETY: as above.
    unsafe { poke(sc + 16, granted) }; // DesiredAccess
    // Create.SecurityContext; Options = FILE_OPEN << 24 | FILE_SYNCHRONOUS_IO_NONALERT.
    irp.set_parameters([sc as u64, 0x0100_0000 | 0x20, 0, 0]);
    kernel::with(|k| {
        k.io.seq += 1;
        let seq = k.io.seq;
        k.io.files.insert(
            file,
            OpenFile {
                device,
                granted,
                pid,
                seq,
            },
        );
        if let Some(d) = k.io.devices.get_mut(&device) {
            d.open_files += 1;
        }
    });
    let status = dispatch(
        &irp,
        (0, 0),
        device,
        IRP_MJ_CREATE,
        "IRP_MJ_CREATE",
        pid,
        false,
    );
    drop(security_context);
    if status::nt_success(status) {
        Ok(FileHandle(file))
    } else {
        release_file(file);
        Err(status)
    }
}

fn alloc_file_object(device: usize) -> usize {
    let layout = std::alloc::Layout::from_size_align(FILE_OBJECT_SIZE, 16).expect("layout");
    // SAFETY: non-zero size.
    let f = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!f.is_null(), "host out of memory");
    let f = f as usize;
    note_handed(f, FILE_OBJECT_SIZE);
    // SAFETY: a fresh FILE_OBJECT-sized allocation.
    unsafe { poke(f, IO_TYPE_FILE) };
    // SAFETY: as above.
    unsafe { poke(f + 2, FILE_OBJECT_SIZE as i16) };
    // SAFETY: as above.
    unsafe { poke(f + FILE_OBJECT_DEVICE_OBJECT, device) };
    f
}

/// Drops a file object; frees a delete-pending device when its last file goes; runs the
/// deferred DriverUnload of a stopped driver when the last file on its devices goes.
fn release_file(file: usize) {
    let (freed, unload) = kernel::with(|k| {
        k.io.file_names.remove(&file);
        let Some(f) = k.io.files.remove(&file) else {
            return (None, None);
        };
        let Some(d) = k.io.devices.get_mut(&f.device) else {
            return (None, None);
        };
        d.open_files -= 1;
        let driver = d.driver;
        let freed = if d.open_files == 0 && d.delete_pending {
            k.io.devices
                .remove(&f.device)
                .map(|d| (f.device, d.alloc_len))
        } else {
            None
        };
        let busy =
            k.io.devices
                .values()
                .any(|d| d.driver == driver && d.open_files > 0);
        let unload = if busy {
            None
        } else {
            k.io.unload_pending
                .remove(&driver)
                .map(|image| (driver, image))
        };
        (freed, unload)
    });
    if let Some((dev, len)) = freed {
        free_device(dev as *mut DeviceObject, len);
    }
    let layout = std::alloc::Layout::from_size_align(FILE_OBJECT_SIZE, 16).expect("layout");
    // SAFETY: allocated by alloc_file_object with this layout; no IRP references it now.
    unsafe { std::alloc::dealloc(file as *mut u8, layout) };
    if let Some((driver, image)) = unload {
        // IopUnloadDriver's deferred half, in the System process.
        with_pid(4, || {
            crate::loader::driver::run_unload(driver as *mut DriverObject, image);
        });
    }
}

/// A device-control request built as the I/O manager builds it: the IRP, the
/// METHOD_BUFFERED system buffer, the caller's buffers (METHOD_NEITHER passes them as they
/// are). Owned by the caller until dispatch, by the driver while pending, then by the caller
/// again.
struct IoctlRequest {
    irp: IrpAllocation,
    system: Option<SystemBuffer>,
    user_out: Vec<u8>,
    /// METHOD_NEITHER's Type3InputBuffer: must live as long as the request.
    _user_in: Vec<u8>,
    code: u32,
    output_len: u32,
    device: usize,
    pid: u32,
}

impl IoctlRequest {
    /// Checks the handle and the code's RequiredAccess, then builds the IRP and buffers.
    ///
    /// WRK `base/ntos/io/iomgr/internal.c` IopXxxControlFile: a code's RequiredAccess other
    /// than FILE_ANY_ACCESS must be granted to the handle, else STATUS_ACCESS_DENIED (lines
    /// 8687-8697); a NULL caller buffer counts as length 0 (8616-8633); METHOD_BUFFERED
    /// allocates one system buffer of max(InputBufferLength, OutputBufferLength), copies the
    /// input in when there is one and zeroes nothing (9061-9075) — the model fills the rest
    /// with a poison byte so that a driver returning bytes it never wrote is seen. Learn,
    /// "Buffer Descriptions for I/O Control Codes" (METHOD_BUFFERED: one buffer for both).
    fn new(
        handle: FileHandle,
        code: u32,
        input: &[u8],
        output_len: u32,
        poison: u8,
    ) -> Result<Self, IoctlResult> {
        let refused = |status| IoctlResult {
            status,
            information: 0,
            output: Vec::new(),
        };
        let Some(file) = kernel::with(|k| k.io.files.get(&handle.0).copied()) else {
            return Err(refused(status::STATUS_INVALID_HANDLE));
        };
        let access = (code >> 14) & 3;
        if (access & 1 != 0 && file.granted & FILE_READ_DATA == 0)
            || (access & 2 != 0 && file.granted & FILE_WRITE_DATA == 0)
        {
            return Err(refused(STATUS_ACCESS_DENIED));
        }
        let method = code & 3;
        assert!(
            method == 0 || method == 3,
            "METHOD_IN_DIRECT/OUT_DIRECT are not modelled"
        );
        let irp = IrpAllocation::new(IRP_MJ_DEVICE_CONTROL, file.device, handle.0, file.pid);
        let len = input.len().max(output_len as usize);
        let mut user_out = vec![poison ^ 0xFF; output_len as usize];
        let mut user_in = input.to_vec();
        let system = (method == 0 && len > 0).then(|| SystemBuffer::new(len, poison));
        if let Some(sb) = &system {
            // SAFETY: the system buffer holds `len` >= input.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), sb.ptr, input.len()) };
        }
        // SAFETY: the IRP is live and ours until dispatch.
        let i = unsafe { &mut *irp.irp };
        i.system_buffer = system
            .as_ref()
            .map_or(std::ptr::null_mut(), |s| s.ptr.cast());
        let type3 = if method == 3 {
            i.user_buffer = user_out.as_mut_ptr().cast();
            user_in.as_mut_ptr() as u64
        } else {
            0
        };
        irp.set_parameters([
            u64::from(output_len),
            input.len() as u64,
            u64::from(code),
            type3,
        ]);
        Ok(Self {
            irp,
            system,
            user_out,
            _user_in: user_in,
            code,
            output_len,
            device: file.device,
            pid: file.pid,
        })
    }

    fn dispatch(&self, may_pend: bool) -> NtStatus {
        dispatch(
            &self.irp,
            self.system
                .as_ref()
                .map_or((0, 0), |b| (b.base, b.base + b.map_len)),
            self.device,
            IRP_MJ_DEVICE_CONTROL,
            "IRP_MJ_DEVICE_CONTROL",
            self.pid,
            may_pend,
        )
    }

    /// What the I/O manager does once the IRP is completed with `status`: copy Information
    /// bytes of the system buffer back to the caller (none for an error status or
    /// STATUS_VERIFY_REQUIRED), after checking Information against OutputBufferLength.
    ///
    /// WRK `base/ntos/io/iomgr/internal.c` IopCompleteRequest (lines 1222-1239): with
    /// IRP_INPUT_OPERATION (an output buffer was given), a status that is neither `NT_ERROR`
    /// nor STATUS_VERIFY_REQUIRED copies `IoStatus.Information` bytes to the caller's buffer —
    /// with no clamp to its length, so on Windows an oversized Information reads pool past
    /// the system buffer into user mode; the model reports it as a verifier violation instead
    /// (stricter). Until 2026-12-06 the model copied on STATUS_VERIFY_REQUIRED too.
    fn finish(&mut self, status: NtStatus) -> IoctlResult {
        // STATUS_VERIFY_REQUIRED (a warning the WRK does not copy back for).
        const STATUS_VERIFY_REQUIRED: u32 = 0x8000_0016;
        let (code, output_len) = (self.code, self.output_len);
        // SAFETY: the IRP is ours again.
        let information = unsafe { (*self.irp.irp).io_status.information };
        let copy = if status as u32 >= 0xC000_0000 || status as u32 == STATUS_VERIFY_REQUIRED {
            0
        } else {
            information
        };
        if self.system.is_some() && copy > output_len as usize {
            verifier_violation(&format!(
                "IRP_MJ_DEVICE_CONTROL {code:#x}: IoStatus.Information {information} exceeds OutputBufferLength {output_len}"
            ));
        }
        if let Some(sb) = &self.system {
            // SAFETY: copy <= output_len <= len bytes of the system buffer.
            unsafe { std::ptr::copy_nonoverlapping(sb.ptr, self.user_out.as_mut_ptr(), copy) };
        }
        let mut output = std::mem::take(&mut self.user_out);
        output.truncate(copy.min(output_len as usize));
        IoctlResult {
            status,
            information,
            output,
        }
    }
}

/// DeviceIoControl on an open handle. METHOD_BUFFERED: one system buffer of max(in, out)
/// bytes, input copied in, the rest poisoned with `poison`; after completion `Information`
/// bytes are copied back unless the status is an error. The control code's RequiredAccess is
/// checked against the handle first (FILE_READ_ACCESS needs FILE_READ_DATA, ...).
/// METHOD_NEITHER passes the caller's buffers as they are. The request is synchronous: a
/// dispatch routine returning STATUS_PENDING is a verifier violation (use
/// [`device_io_control_async`]).
///
/// # Panics
/// For METHOD_IN_DIRECT / METHOD_OUT_DIRECT (MDLs are not modelled).
#[must_use]
pub fn device_io_control(
    handle: FileHandle,
    code: u32,
    input: &[u8],
    output_len: u32,
    poison: u8,
) -> IoctlResult {
    let mut request = match IoctlRequest::new(handle, code, input, output_len, poison) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let status = request.dispatch(false);
    request.finish(status)
}

/// The outcome of [`device_io_control_async`].
#[derive(Debug)]
pub enum IoctlCall {
    /// The dispatch routine completed the request (or the I/O manager refused it).
    Done(IoctlResult),
    /// The dispatch routine returned STATUS_PENDING: the driver owns the IRP.
    Pending(PendingIoctl),
}

/// DeviceIoControl on an overlapped handle: like [`device_io_control`], but a dispatch
/// routine that returns STATUS_PENDING (having called IoMarkIrpPending, else verifier
/// violation) leaves the IRP with the driver and returns [`IoctlCall::Pending`].
///
/// # Panics
/// For METHOD_IN_DIRECT / METHOD_OUT_DIRECT (MDLs are not modelled).
#[must_use]
pub fn device_io_control_async(
    handle: FileHandle,
    code: u32,
    input: &[u8],
    output_len: u32,
    poison: u8,
) -> IoctlCall {
    let mut request = match IoctlRequest::new(handle, code, input, output_len, poison) {
        Ok(r) => r,
        Err(refused) => return IoctlCall::Done(refused),
    };
    let status = request.dispatch(true);
    if status == STATUS_PENDING {
        IoctlCall::Pending(PendingIoctl {
            request: Some(request),
            result: None,
        })
    } else {
        IoctlCall::Done(request.finish(status))
    }
}

/// A device-control request the driver returned STATUS_PENDING for (an OVERLAPPED in flight).
/// The IRP and its buffers stay allocated while the driver owns them; once the driver has
/// completed the IRP this value owns them. Dropped while still pending, it leaks them (the
/// driver may still write there) and the IRP is reported by [`IoState::leaks`].
#[derive(Debug)]
pub struct PendingIoctl {
    request: Option<IoctlRequest>,
    result: Option<IoctlResult>,
}

impl std::fmt::Debug for IoctlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IRP {:p} (code {:#x})", self.irp.irp, self.code)
    }
}

#[allow(clippy::non_send_fields_in_send_ty)] // the raw pointers are owned allocations, see below
// SAFETY: the IRP and buffers are exclusively owned by this value (or by the driver, which
// synchronises through the model's kernel lock); nothing in it is tied to the creating thread.
unsafe impl Send for PendingIoctl {}

impl PendingIoctl {
    /// The IRP's address (for assertions and reports).
    #[must_use]
    pub fn irp(&self) -> usize {
        self.request.as_ref().map_or(0, |r| r.irp.irp as usize)
    }

    fn completed(&self) -> bool {
        let irp = self.irp();
        self.result.is_some() || kernel::with(|k| k.io.irps.get(&irp).is_some_and(|t| t.released))
    }

    /// Some(result) once the driver completed the IRP (output copied back exactly as the
    /// synchronous path does, same Information/output-length checks); None while pending.
    /// Idempotent after completion.
    pub fn poll(&mut self) -> Option<IoctlResult> {
        if let Some(r) = &self.result {
            return Some(r.clone());
        }
        if !self.completed() {
            return None;
        }
        let request = self.request.as_mut()?;
        // SAFETY: the driver completed the IRP: it is ours again.
        let status = unsafe { (*request.irp.irp).io_status.status };
        let r = request.finish(status);
        self.result = Some(r.clone());
        Some(r)
    }

    /// IoCancelIrp, as CancelIoEx does: sets Irp->Cancel, takes the cancel spin lock,
    /// exchanges CancelRoutine with NULL and, if it was set, calls it (at DISPATCH_LEVEL, with
    /// Irp->CancelIrql set; the routine must release the cancel lock with
    /// IoReleaseCancelSpinLock(Irp->CancelIrql) — checked). Returns IoCancelIrp's result.
    /// No-op returning false once completed.
    // Not #[must_use]: a scenario may cancel for the effect alone, as CancelIoEx callers do.
    #[allow(clippy::must_use_candidate)]
    pub fn cancel(&self) -> bool {
        if self.completed() {
            return false;
        }
        let Some(request) = &self.request else {
            return false;
        };
        let irp = request.irp.irp;
        // SAFETY: the driver owns the live IRP (not completed); its memory is ours until drop.
        with_pid(request.pid, || unsafe {
            crate::nt::io::cancel::cancel_irp(irp)
        })
    }
}

impl Drop for PendingIoctl {
    fn drop(&mut self) {
        if self.result.is_none() && self.completed() {
            // The I/O manager copies the output back at completion whether or not the caller
            // looks: the same checks apply.
            let _ = self.poll();
        }
        let Some(request) = self.request.take() else {
            return;
        };
        if self.result.is_some() {
            // A cross-thread IoCancelIrp ([`cancel_during_dispatch`]) may still be reading
            // the completed IRP: its memory goes only after that returns.
            wait_for_canceller(request.irp.irp as usize);
            kernel::with(|k| k.io.irps.remove(&(request.irp.irp as usize)));
            drop(request);
        } else {
            // The driver still owns the IRP and may write to it and its buffers: never free
            // memory it owns. The IRP stays tracked, so it shows up as a leak.
            std::mem::forget(request);
        }
    }
}

/// Waits until no other thread is inside IoCancelIrp for `irp` ([`cancel_during_dispatch`]).
fn wait_for_canceller(irp: usize) {
    while kernel::with(|k| k.io.irps.get(&irp).is_some_and(|t| t.cancelling)) {
        std::thread::yield_now();
    }
}

/// Runs `f` at APC_LEVEL, as the I/O manager cancels (Windows Research Kernel `misc.c`
/// NtCancelIoFile and `iosubs.c` IoCancelThreadIo raise to APC_LEVEL first).
fn at_apc_level<R>(f: impl FnOnce() -> R) -> R {
    let old = crate::machine::cpu::irql();
    crate::machine::cpu::set_irql(crate::machine::cpu::APC_LEVEL);
    let r = f();
    crate::machine::cpu::set_irql(old);
    r
}

/// CancelIoEx from another processor for the next device-control request sent on `handle`,
/// once the I/O manager has queued its IRP and before the driver's dispatch routine runs: the
/// dispatch routine finds `Irp->Cancel` set and no cancel routine of its own called.
/// Deterministic: the earliest point of [`cancel_during_dispatch`]'s window. Sources: Learn
/// [CancelIoEx](https://learn.microsoft.com/en-us/windows/win32/fileio/cancelioex-func)
/// (Vista and later: it cancels requests of any thread on the handle) and "Synchronizing IRP
/// Cancellation" (a cancel may come while the driver is still queueing the IRP). The Windows
/// Research Kernel has only the per-thread CancelIo (`misc.c` NtCancelIoFile) and queues the
/// IRP on the thread before IoCallDriver for an overlapped handle (`internal.c`); the
/// shipped client's handle is synchronous, a difference the emulator's README states. The
/// mark is dropped when the handle closes.
pub fn cancel_before_dispatch(handle: FileHandle) {
    kernel::with(|k| k.io.cancel_before_dispatch.insert(handle.0));
}

/// CancelIoEx from another processor while a request on `handle` is still in its dispatch
/// routine (sources as for [`cancel_before_dispatch`]): a cancel can land between the
/// dispatch routine's entry and its STATUS_PENDING (Learn "Synchronizing IRP Cancellation").
/// Run on a thread of its own (`machine::cpu::enter_thread`): spins until an IRP sent on `handle` is dispatched
/// but neither pending nor completed, with its CancelRoutine set (`routine_set`) or not yet,
/// and cancels it there; returns IoCancelIrp's result, or `None` when `stop` was raised first
/// (the moment never came).
#[must_use]
pub fn cancel_during_dispatch(
    handle: FileHandle,
    routine_set: bool,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<bool> {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Acquire) {
        let irp = kernel::with(|k| {
            let (&irp, t) = k.io.irps.iter_mut().find(|(_, t)| {
                t.file == handle.0 && !t.pending && t.completions == 0 && !t.cancelling
            })?;
            // SAFETY: a tracked IRP not yet back with its requester is live.
            let slot = unsafe { &raw mut (*(irp as *mut Irp)).cancel_routine };
            // SAFETY: CancelRoutine is pointer-sized and aligned, and the driver writes it
            // only with interlocked operations.
            let field = unsafe { std::sync::atomic::AtomicPtr::from_ptr(slot) };
            if field.load(Ordering::SeqCst).is_null() == routine_set {
                return None;
            }
            t.cancelling = true;
            Some(irp)
        });
        let Some(irp) = irp else {
            std::hint::spin_loop();
            continue;
        };
        let pid = kernel::with(|k| k.io.irps.get(&irp).map_or(0, |t| t.pid));
        let r = at_apc_level(|| {
            // SAFETY: marked `cancelling`, the IRP is not freed until this returns: `dispatch`
            // and `PendingIoctl`'s drop wait for the mark to clear.
            with_pid(pid, || unsafe {
                crate::nt::io::cancel::cancel_irp(irp as *mut Irp)
            })
        });
        kernel::with(|k| {
            if let Some(t) = k.io.irps.get_mut(&irp) {
                t.cancelling = false;
            }
        });
        return Some(r);
    }
    None
}

/// IRPs of `pid` the driver still holds pending, in issue order.
fn pending_irps(filter: impl Fn(&IrpTrack) -> bool) -> Vec<usize> {
    let mut v: Vec<(u64, usize)> = kernel::with(|k| {
        k.io.irps
            .iter()
            .filter(|(_, t)| t.pending && t.completions == 0 && filter(t))
            .map(|(i, t)| (t.seq, *i))
            .collect()
    });
    v.sort_unstable();
    v.into_iter().map(|(_, i)| i).collect()
}

/// Process exit for the I/O of `pid`: IoCancelIrp on every IRP it has pending (as thread
/// rundown does), then closes (IRP_MJ_CLEANUP + IRP_MJ_CLOSE) every handle it has open, in
/// the order they were opened. Windows Research Kernel `base/ntos/ps/psdelete.c`
/// PspExitThread: IoCancelThreadIo (`io/iomgr/iosubs.c`: IoCancelIrp on each of the thread's
/// IRPs at APC_LEVEL, then waits for them) on every thread's exit, then for the last thread
/// PspExitProcess (the notify routines) and ObKillProcess (the handles, so IRP_MJ_CLEANUP).
/// Not modelled (fidelity audit 17b): a thread's own exit cancelling its IRPs while the
/// process lives (IRPs carry a pid, not a thread), and the APC_LEVEL the cancel runs at (the
/// model cancels at the caller's PASSIVE_LEVEL).
pub fn terminate_process_io(pid: u32) {
    for irp in pending_irps(|t| t.pid == pid) {
        // Re-check: a cancel routine may complete other IRPs too.
        if pending_irps(|t| t.pid == pid).contains(&irp) {
            // SAFETY: a live IRP the driver still holds pending (its memory is owned by a
            // PendingIoctl or leaked, never freed while pending).
            let _ = with_pid(pid, || unsafe {
                crate::nt::io::cancel::cancel_irp(irp as *mut Irp)
            });
        }
    }
    let mut files: Vec<(u64, usize)> = kernel::with(|k| {
        k.io.files
            .iter()
            .filter(|(_, f)| f.pid == pid)
            .map(|(a, f)| (f.seq, *a))
            .collect()
    });
    files.sort_unstable();
    for (_, file) in files {
        close(FileHandle(file));
    }
}

/// The access granted to `handle` at open, or None for a closed handle.
#[must_use]
pub fn granted_access(handle: FileHandle) -> Option<u32> {
    kernel::with(|k| k.io.files.get(&handle.0).map(|f| f.granted))
}

/// `FileObject->FileName` of `handle`'s file object as the driver was handed it (empty for
/// an open of the device itself).
#[must_use]
pub fn file_name(handle: FileHandle) -> String {
    // SAFETY: a live file object of the model; FileName is a UNICODE_STRING at this offset
    // whose buffer (when not empty) is the model's own, kept in `file_names`.
    unsafe { read_unicode((handle.0 + FILE_OBJECT_FILE_NAME) as *const UnicodeString) }
        .unwrap_or_default()
}

/// CloseHandle of the last handle: IRP_MJ_CLEANUP (if the driver handles it) then
/// IRP_MJ_CLOSE. Any IRP of the file object still pending once IRP_MJ_CLEANUP returns is a
/// verifier violation: Windows sends IRP_MJ_CLOSE only after the file's IRPs complete (Learn
/// [IRP_MJ_CLOSE](https://learn.microsoft.com/en-us/windows-hardware/drivers/kernel/irp-mj-close):
/// "all outstanding I/O requests have been completed or canceled"), so the process would hang
/// at exit. Stricter than Windows in one case (fidelity audit 17b, never seen to fire): an IRP
/// whose cancel routine another thread has already entered is reported too, where Windows just
/// sends IRP_MJ_CLOSE once it completes. Kinder in another: a handle opened without
/// FILE_FLAG_OVERLAPPED is synchronous, and Windows serialises its requests and its close on
/// the file-object lock (WRK `io/iomgr/internal.c` IopXxxControlFile, `objsup.c`
/// IopCloseFile), so a close from another thread waits for a pending wait rather than
/// cancelling it; the model lets them overlap (the driver handles both; a client that stopped
/// a wait by closing its handle would pass here and hang on Windows — the CLI uses CancelIoEx). When this releases the last file object of a stopped driver
/// ([`crate::loader::driver::LoadedDriver::stop`]), its DriverUnload runs here.
pub fn close(handle: FileHandle) {
    send_close_irps(handle, &[IRP_MJ_CLEANUP, IRP_MJ_CLOSE]);
}

/// The last handle to the file object is closed while something still references the
/// object: IRP_MJ_CLEANUP only. Docs, "IRP_MJ_CLEANUP": "the last handle for a file object
/// ... has been closed (but, due to outstanding I/O requests, might not have been
/// released)"; the FS page adds that the file object "might still be being used" after
/// it. A request another thread referenced the file object for before the close (its
/// `DeviceIoControl` was already past the handle lookup) is dispatched after the cleanup:
/// the handle stays usable here for exactly that. [`release_reference`] drops the
/// reference (IRP_MJ_CLOSE).
pub fn cleanup_keeping_reference(handle: FileHandle) {
    send_close_irps(handle, &[IRP_MJ_CLEANUP]);
}

/// The last reference to a file object cleaned up with [`cleanup_keeping_reference`] goes:
/// IRP_MJ_CLOSE (a verifier violation if IRPs of the file still pend) and the file is freed.
pub fn release_reference(handle: FileHandle) {
    send_close_irps(handle, &[IRP_MJ_CLOSE]);
}

fn send_close_irps(handle: FileHandle, majors: &[usize]) {
    kernel::with(|k| k.io.cancel_before_dispatch.remove(&handle.0));
    let Some(file) = kernel::with(|k| k.io.files.get(&handle.0).copied()) else {
        return;
    };
    for (major, name) in [
        (IRP_MJ_CLEANUP, "IRP_MJ_CLEANUP"),
        (IRP_MJ_CLOSE, "IRP_MJ_CLOSE"),
    ]
    .into_iter()
    .filter(|(m, _)| majors.contains(m))
    {
        let driver = kernel::with(|k| k.io.devices.get(&file.device).map(|d| d.driver));
        let Some(driver) = driver else { break };
        // SAFETY: the DRIVER_OBJECT lives as long as the loaded driver.
        let handled = unsafe { (*(driver as *mut DriverObject)).major_function[major] }
            .is_some_and(|f| f as usize != invalid_device_request as *const () as usize);
        if major == IRP_MJ_CLEANUP && !handled {
            continue;
        }
        if major == IRP_MJ_CLOSE {
            let stuck = pending_irps(|t| t.file == handle.0);
            if let Some(irp) = stuck.first() {
                verifier_violation(&format!(
                    "IRP {irp:#x} still pending after IRP_MJ_CLEANUP of its file object \
                     {:#x}: the process would hang at exit ({} pending; complete or cancel \
                     them in IRP_MJ_CLEANUP)",
                    handle.0,
                    stuck.len()
                ));
            }
        }
        let irp = IrpAllocation::new(major, file.device, handle.0, file.pid);
        let _ = dispatch(&irp, (0, 0), file.device, major, name, file.pid, false);
    }
    if majors.contains(&IRP_MJ_CLOSE) {
        release_file(handle.0);
    }
}

/// Clears DO_DEVICE_INITIALIZING on every device of `driver`, as the I/O manager does when
/// DriverEntry returns success: WRK `base/ntos/io/iomgr/internal.c` IopLoadDriver calls
/// IopReadyDeviceObjects (line 4305) after `DriverInit` (line 4225), which clears the flag on
/// each device of the driver (line 6321); Learn, "What does DO_DEVICE_INITIALIZING really
/// do?" ("The I/O Manager clears DO_DEVICE_INITIALIZING for any device object that the driver
/// creates in its DriverEntry routine").
///
/// # Safety
/// `driver` must be a live DRIVER_OBJECT whose device list is consistent.
pub unsafe fn finish_initializing(driver: *mut DriverObject) {
    // SAFETY: a live driver object.
    let mut d = unsafe { (*driver).device_object };
    while !d.is_null() {
        // SAFETY: `d` is a live device object on the driver's list.
        let dev = unsafe { &mut *d };
        dev.flags &= !DO_DEVICE_INITIALIZING;
        d = dev.next_device;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_device_names_are_one_namespace() {
        assert_eq!(canonical_link(r"\DosDevices\HiveTrack"), r"\??\HIVETRACK");
        assert_eq!(canonical_link(r"\??\hivetrack"), r"\??\HIVETRACK");
        assert_eq!(canonical_link(r"\GLOBAL??\HiveTrack"), r"\??\HIVETRACK");
    }

    #[test]
    fn system_buffers_end_at_a_guard_page_and_are_poisoned() {
        let sb = SystemBuffer::new(100, 0xD5);
        assert_eq!(sb.ptr as usize % 16, 0);
        let end = sb.ptr as usize + 100;
        let guard = sb.base + sb.map_len - 4096;
        assert!(end <= guard && guard - end < 16);
        // SAFETY: 100 bytes inside the live system buffer.
        let bytes = unsafe { std::slice::from_raw_parts(sb.ptr, 100) };
        assert!(bytes.iter().all(|&b| b == 0xD5));
    }
}
