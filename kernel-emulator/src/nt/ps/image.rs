//! Image loads and the load-image notify routines drivers register for them
//! (`PsSetLoadImageNotifyRoutine`, `PsSetLoadImageNotifyRoutineEx`,
//! `PsRemoveLoadImageNotifyRoutine`): how a driver learns each process's modules (base, size,
//! full name) to attribute user-mode return addresses ([`crate::nt::ps::thread`]) to them.
//!
//! Modelled, each from its source:
//! - Registration: classic and Ex routines share one table of **64** slots
//!   ([PsSetLoadImageNotifyRoutine](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-pssetloadimagenotifyroutine):
//!   eight, 64 after the 2014 update of Windows 8.1 / the Windows 7 SP1 hotfix;
//!   [PsSetLoadImageNotifyRoutineEx](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-pssetloadimagenotifyroutineex):
//!   64, Windows 10 1709+; one array `PspLoadImageNotifyRoutine[PSP_MAX_LOAD_IMAGE_NOTIFY]`
//!   for both in ReactOS `ntoskrnl/ps/psnotify.c`); a full table or a callback block that
//!   cannot be allocated (fault injection) is STATUS_INSUFFICIENT_RESOURCES; an Ex flag other
//!   than `PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE` (1) is STATUS_INVALID_PARAMETER_2 (Learn,
//!   Ex page). The same routine may be registered twice and takes two slots (ReactOS
//!   `PsSetLoadImageNotifyRoutine` does not look for it; Windows: *inference*). All three
//!   routines: PASSIVE_LEVEL (Learn).
//! - Removal: `PsRemoveLoadImageNotifyRoutine` removes one registration, waits for calls of
//!   it in progress (ReactOS `ExWaitForCallBacks`), and returns STATUS_PROCEDURE_NOT_FOUND for
//!   a routine that is not registered (ReactOS psnotify.c). A removal from inside a call of
//!   the routine is a verifier violation (Learn, PsRemoveLoadImageNotifyRoutine: "the
//!   callback routine itself must not call PsRemoveLoadImageNotifyRoutine"). "A driver must remove any
//!   callbacks it registers before it unloads" (Learn, both pages): a routine left registered
//!   at unload is reported like a process-notify routine (a leak line: Windows would call
//!   into the unloaded image, bugcheck 0xCE).
//! - The call ([PLOAD_IMAGE_NOTIFY_ROUTINE](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nc-ntddk-pload_image_notify_routine)):
//!   `(FullImageName, ProcessId, ImageInfo)` at PASSIVE_LEVEL "inside a critical region with
//!   normal kernel APCs always disabled" (`sync::in_critical_region`); ProcessId 0 for a driver image;
//!   "when the main executable image for a newly created process is loaded, the load-image
//!   notify routine runs in the context of the new process"; FullImageName "can be NULL in
//!   cases in which the operating system is unable to obtain the full name of the image at
//!   process creation time" ([`with_names_unavailable`]).
//! - [IMAGE_INFO](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/ns-ntddk-_image_info)
//!   (0x28 bytes: Properties — ImageAddressingMode:8 = IMAGE_ADDRESSING_MODE_32BIT (3,
//!   ntddk.h), SystemModeImage:1 (1 for a driver, 0 for a user image), ImageMappedToAllPids:1,
//!   ExtendedInfoPresent:1, MachineTypeMismatch:1, ImageSignatureLevel:4, ImageSignatureType:3,
//!   ImagePartialMap:1 — ImageBase, ImageSelector 0, ImageSize, ImageSectionNumber 0) and
//!   [IMAGE_INFO_EX](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/ns-ntddk-_image_info_ex)
//!   (Size, ImageInfo at 8, FileObject at 0x30; 0x38 bytes), reached with CONTAINING_RECORD
//!   when ExtendedInfoPresent is set.
//! - Process creation ([`notify_process_created`]): after the create-process notifications,
//!   the new process's first thread reports, in the new process's context, its main image
//!   (name: the process's image path, as `MmGetFileNameForSection` gives it, NULL when that
//!   fails) and then `\SystemRoot\System32\ntdll.dll` at the one system-wide ntdll base; both
//!   with plain IMAGE_INFO (ExtendedInfoPresent 0, SystemModeImage 0) — ReactOS
//!   `ntoskrnl/dbgk/dbgkutil.c` `DbgkCreateThread` (run by `PspUserThreadStartup`, after the
//!   notifications of `PspInsertThread`). The model picks the bases: [`main_image_base`] (one
//!   per pid) and [`NTDLL_BASE`].
//! - DLLs ([`load_image`]) are reported in the loading process's context with IMAGE_INFO_EX
//!   (ExtendedInfoPresent 1, a FILE_OBJECT of the model's): *inference* — Learn says the
//!   extended form exists since Windows Vista, not when it is used; a driver must handle both
//!   forms. Driver images ([`load_driver_image`]): ProcessId 0, SystemModeImage 1, plain
//!   IMAGE_INFO (ReactOS `ntoskrnl/mm/ARM3/sysldr.c` `MmLoadSystemImage`), from a System
//!   thread.
//! - A conflicting-architecture image ([`load_image_conflicting_architecture`]) reaches only
//!   Ex routines registered with `PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE` (Learn, Ex page);
//!   its MachineTypeMismatch stays 0 (IMAGE_INFO: "Always set to zero").
//! - **There is no image-unload notification** (no such routine exists in the DDI): a DLL
//!   unloaded and another mapped at the same base are both reported as loads, in order; a
//!   driver must keep the latest load at an address. The model records each process's loads
//!   in order ([`modules_of`]) and drops them at process exit.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use crate::machine::cpu::PASSIVE_LEVEL;
use crate::nt::exports::Export;
use crate::nt::io;
use crate::nt::kernel::{self, call_driver};
use crate::nt::layout::{OwnedUnicode, UnicodeString};
use crate::nt::status::{
    NtStatus, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER_2, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::require_irql;

/// STATUS_PROCEDURE_NOT_FOUND.
pub const STATUS_PROCEDURE_NOT_FOUND: NtStatus = 0xC000_007A_u32 as NtStatus;
/// PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE.
pub const PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE: usize = 1;
/// IMAGE_ADDRESSING_MODE_32BIT (ntddk.h).
pub const IMAGE_ADDRESSING_MODE_32BIT: u32 = 3;
/// IMAGE_INFO.Properties: SystemModeImage.
pub const SYSTEM_MODE_IMAGE: u32 = 1 << 8;
/// IMAGE_INFO.Properties: ExtendedInfoPresent.
pub const EXTENDED_INFO_PRESENT: u32 = 1 << 10;
/// Slots in the load-image routine table (Windows 10: 64).
pub const MAX_LOAD_IMAGE_NOTIFY: usize = 64;
/// Where the model maps ntdll.dll in every process (one system-wide base, `PspSystemDllBase`).
pub const NTDLL_BASE: u64 = 0x7FFB_4C6C_0000;
/// ntdll.dll's SizeOfImage in the model.
pub const NTDLL_SIZE: u64 = 0x1F_8000;
/// ntdll.dll's full name as the kernel reports it (ReactOS `DbgkCreateThread`).
pub const NTDLL_NAME: &str = r"\SystemRoot\System32\ntdll.dll";
/// A main image's SizeOfImage in the model.
pub const MAIN_IMAGE_SIZE: u64 = 0x2_4000;

/// PLOAD_IMAGE_NOTIFY_ROUTINE.
type NotifyFn = unsafe extern "win64" fn(*const UnicodeString, usize, *mut ImageInfo);

/// IMAGE_INFO (0x28 bytes on x64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageInfo {
    /// 0x00: the Properties bitfield.
    pub properties: u32,
    /// padding
    pub pad0: u32,
    /// 0x08
    pub image_base: u64,
    /// 0x10: always 0.
    pub image_selector: u32,
    /// padding
    pub pad1: u32,
    /// 0x18
    pub image_size: u64,
    /// 0x20: always 0.
    pub image_section_number: u32,
    /// padding
    pub pad2: u32,
}

/// IMAGE_INFO_EX (0x38 bytes on x64).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageInfoEx {
    /// 0x00: sizeof(IMAGE_INFO_EX).
    pub size: usize,
    /// 0x08
    pub image_info: ImageInfo,
    /// 0x30: the image's backing FILE_OBJECT.
    pub file_object: usize,
}

const _: () = {
    assert!(size_of::<ImageInfo>() == 0x28);
    assert!(core::mem::offset_of!(ImageInfo, image_size) == 0x18);
    assert!(core::mem::offset_of!(ImageInfo, image_section_number) == 0x20);
    assert!(size_of::<ImageInfoEx>() == 0x38);
    assert!(core::mem::offset_of!(ImageInfoEx, image_info) == 0x08);
    assert!(core::mem::offset_of!(ImageInfoEx, file_object) == 0x30);
};

/// One registered routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routine {
    f: usize,
    /// Registered with PsSetLoadImageNotifyRoutineEx.
    ex: bool,
    /// Its Flags (Ex only).
    flags: usize,
}

/// One image mapped into a process, as the model reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Full name (None: reported with FullImageName NULL).
    pub name: Option<String>,
    /// ImageBase.
    pub base: u64,
    /// ImageSize.
    pub size: u64,
}

/// Load-image routines and the images the model reported.
#[derive(Debug, Default)]
pub struct ImageState {
    routines: Vec<Routine>,
    in_flight: HashMap<usize, u32>,
    /// Loads per process (pid 0: driver images), in order.
    modules: BTreeMap<u32, Vec<Module>>,
}

impl ImageState {
    /// Routines left registered, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        self.routines
            .iter()
            .map(|r| {
                format!(
                    "load-image notify routine {} ({}) still registered at unload: Windows would call into unloaded code (bugcheck 0xCE)",
                    crate::verifier::bugcheck::symbolize(r.f),
                    if r.ex { "Ex" } else { "classic" }
                )
            })
            .collect()
    }
}

thread_local! {
    /// Whether image names are unavailable on this thread ([`with_names_unavailable`]).
    static NAMES_UNAVAILABLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the full names of the images it loads unavailable: process creations (their
/// main image; ntdll.dll keeps its constant name) and image loads inside `f` pass
/// FullImageName NULL (Learn: "unable to obtain the full name of
/// the image at process creation time"; ReactOS `DbgkCreateThread` when
/// `MmGetFileNameForSection` fails).
pub fn with_names_unavailable<R>(f: impl FnOnce() -> R) -> R {
    let previous = NAMES_UNAVAILABLE.with(|c| c.replace(true));
    let r = f();
    NAMES_UNAVAILABLE.with(|c| c.set(previous));
    r
}

/// Where the model maps the main image of process `pid` (one 1 MiB-aligned base per pid,
/// in the range Windows x64 gives ASLR'd executables).
#[must_use]
pub fn main_image_base(pid: u32) -> u64 {
    0x7FF6_0000_0000 + u64::from((pid / 4) % 0x4000) * 0x10_0000
}

/// The images reported for `pid` so far, in load order (0: driver images).
#[must_use]
pub fn modules_of(pid: u32) -> Vec<Module> {
    kernel::with(|k| k.images.modules.get(&pid).cloned().unwrap_or_default())
}

/// What kind of image a load maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A process's main image, at its creation.
    Main,
    /// ntdll.dll, at a process's creation (its name is a constant the kernel always has).
    Ntdll,
    /// A DLL (IMAGE_INFO_EX).
    Dll,
    /// A DLL of another architecture (IMAGE_INFO_EX).
    ConflictingDll,
    /// A driver (ProcessId 0, SystemModeImage).
    Driver,
}

/// What one load looks like to the notify routines.
struct Load<'a> {
    /// The ProcessId parameter (0 for a driver image).
    pid: u32,
    name: Option<&'a str>,
    base: u64,
    size: u64,
    kind: Kind,
}

fn notify(load: &Load<'_>) {
    let extended = matches!(load.kind, Kind::Dll | Kind::ConflictingDll);
    let name = if NAMES_UNAVAILABLE.with(Cell::get) && load.kind != Kind::Ntdll {
        None
    } else {
        load.name
    };
    // A FILE_OBJECT of the model's, kept for the run (a driver may reference it).
    let file_object = if extended {
        Box::leak(Box::new([0u64; 32])).as_ptr() as usize
    } else {
        0
    };
    kernel::with(|k| {
        k.images.modules.entry(load.pid).or_default().push(Module {
            name: name.map(str::to_string),
            base: load.base,
            size: load.size,
        });
    });
    let routines = kernel::with(|k| k.images.routines.clone());
    let owned = name.map(OwnedUnicode::pageable);
    let name_ptr = owned
        .as_ref()
        .map_or(std::ptr::null(), |o| o.as_ptr().cast_const());
    let context = if load.pid == 0 { 4 } else { load.pid };
    io::with_pid(context, || {
        for r in routines {
            if load.kind == Kind::ConflictingDll
                && !(r.ex && r.flags & PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE != 0)
            {
                continue;
            }
            if !enter(r) {
                continue;
            }
            let mut info = ImageInfoEx {
                size: size_of::<ImageInfoEx>(),
                image_info: ImageInfo {
                    properties: IMAGE_ADDRESSING_MODE_32BIT
                        | if load.kind == Kind::Driver {
                            SYSTEM_MODE_IMAGE
                        } else {
                            0
                        }
                        | if extended { EXTENDED_INFO_PRESENT } else { 0 },
                    image_base: load.base,
                    image_size: load.size,
                    ..ImageInfo::default()
                },
                file_object,
            };
            let info_ptr = &raw mut info.image_info;
            // SAFETY: registered by the driver as a PLOAD_IMAGE_NOTIFY_ROUTINE.
            let g = unsafe { std::mem::transmute::<usize, NotifyFn>(r.f) };
            // Learn, PLOAD_IMAGE_NOTIFY_ROUTINE: "at PASSIVE_LEVEL inside a critical region
            // with normal kernel APCs always disabled".
            INSIDE.with(|i| i.borrow_mut().push(r.f));
            crate::nt::ke::sync::in_critical_region(|| {
                // SAFETY: calling the routine with a name (or NULL), the pid and an IMAGE_INFO
                // (inside an IMAGE_INFO_EX when ExtendedInfoPresent is set), at PASSIVE_LEVEL.
                call_driver("LoadImageNotify", || unsafe {
                    g(name_ptr, load.pid as usize, info_ptr);
                });
            });
            INSIDE.with(|i| i.borrow_mut().pop());
            leave(r.f);
        }
    });
}

thread_local! {
    /// The load-image notify routines this thread is inside (innermost last).
    static INSIDE: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn enter(r: Routine) -> bool {
    kernel::with(|k| {
        let registered = k.images.routines.contains(&r);
        if registered {
            *k.images.in_flight.entry(r.f).or_insert(0) += 1;
        }
        registered
    })
}

fn leave(f: usize) {
    kernel::with(|k| {
        if let Some(n) = k.images.in_flight.get_mut(&f) {
            *n -= 1;
        }
    });
}

/// Reports a new process's main image and ntdll.dll, in its context (called by
/// `process::create_process` once the process exists).
pub fn notify_process_created(pid: u32, image: &str) {
    for (name, base, size, kind) in [
        (image, main_image_base(pid), MAIN_IMAGE_SIZE, Kind::Main),
        (NTDLL_NAME, NTDLL_BASE, NTDLL_SIZE, Kind::Ntdll),
    ] {
        notify(&Load {
            pid,
            name: Some(name),
            base,
            size,
            kind,
        });
    }
}

/// Forgets the images of an exited process.
pub fn process_exited(pid: u32) {
    kernel::with(|k| k.images.modules.remove(&pid));
}

/// Maps a DLL (or any user image) at `base` into process `pid`: the notify routines are
/// called in that process's context with IMAGE_INFO_EX. Nothing is unmapped first: an image
/// at the same base replaces the old one only in what a driver concludes.
pub fn load_image(pid: u32, path: &str, base: u64, size: u64) {
    notify(&Load {
        pid,
        name: Some(path),
        base,
        size,
        kind: Kind::Dll,
    });
}

/// [`load_image`] for an image of another architecture than the system's: only routines
/// registered with `PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE` see it.
pub fn load_image_conflicting_architecture(pid: u32, path: &str, base: u64, size: u64) {
    notify(&Load {
        pid,
        name: Some(path),
        base,
        size,
        kind: Kind::ConflictingDll,
    });
}

/// Loads a driver image (another driver starting): ProcessId 0, SystemModeImage 1, from a
/// System thread.
pub fn load_driver_image(path: &str, base: u64, size: u64) {
    notify(&Load {
        pid: 0,
        name: Some(path),
        base,
        size,
        kind: Kind::Driver,
    });
}

fn register(f: usize, ex: bool, flags: usize, routine: &str) -> NtStatus {
    require_irql(routine, PASSIVE_LEVEL);
    if f == 0 {
        crate::verifier::bugcheck::verifier_violation(&format!("{routine}: NotifyRoutine is NULL"));
    }
    if ex && flags & !PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE != 0 {
        return STATUS_INVALID_PARAMETER_2;
    }
    if kernel::should_fail(routine, false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    kernel::with(|k| {
        let r = &mut k.images.routines;
        if r.len() >= MAX_LOAD_IMAGE_NOTIFY {
            return STATUS_INSUFFICIENT_RESOURCES;
        }
        r.push(Routine { f, ex, flags });
        STATUS_SUCCESS
    })
}

/// PsSetLoadImageNotifyRoutine — see the module docs.
unsafe extern "win64" fn PsSetLoadImageNotifyRoutine(routine: usize) -> NtStatus {
    register(routine, false, 0, "PsSetLoadImageNotifyRoutine")
}

/// PsSetLoadImageNotifyRoutineEx — see the module docs (Windows 10 1709+: hide it to play an
/// older Windows).
unsafe extern "win64" fn PsSetLoadImageNotifyRoutineEx(routine: usize, flags: usize) -> NtStatus {
    register(routine, true, flags, "PsSetLoadImageNotifyRoutineEx")
}

/// PsRemoveLoadImageNotifyRoutine — see the module docs.
unsafe extern "win64" fn PsRemoveLoadImageNotifyRoutine(routine: usize) -> NtStatus {
    require_irql("PsRemoveLoadImageNotifyRoutine", PASSIVE_LEVEL);
    if INSIDE.with(|i| i.borrow().contains(&routine)) {
        // Learn, PsRemoveLoadImageNotifyRoutine: "If the driver's callback routine is
        // currently running, PsRemoveLoadImageNotifyRoutine waits until the callback routine
        // exits before removing it. Therefore, the callback routine itself must not call
        // PsRemoveLoadImageNotifyRoutine." Reported rather than hung.
        crate::verifier::bugcheck::verifier_violation(&format!(
            "PsRemoveLoadImageNotifyRoutine removes load-image notify routine {} from inside that routine: a deadlock on Windows",
            crate::verifier::bugcheck::symbolize(routine)
        ));
    }
    let removed = kernel::with(|k| {
        let r = &mut k.images.routines;
        r.iter().position(|x| x.f == routine).map(|i| r.remove(i))
    });
    if removed.is_none() {
        return STATUS_PROCEDURE_NOT_FOUND;
    }
    // Wait for calls in progress on other threads (ReactOS ExWaitForCallBacks), unless the
    // routine is still registered in another slot.
    while kernel::with(|k| {
        !k.images.routines.iter().any(|x| x.f == routine)
            && k.images.in_flight.get(&routine).copied().unwrap_or(0) > 0
    }) {
        std::thread::yield_now();
    }
    STATUS_SUCCESS
}

/// The load-image routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "PsSetLoadImageNotifyRoutine",
            PsSetLoadImageNotifyRoutine as *const () as usize,
        ),
        Export::function(
            "PsSetLoadImageNotifyRoutineEx",
            PsSetLoadImageNotifyRoutineEx as *const () as usize,
        ),
        Export::function(
            "PsRemoveLoadImageNotifyRoutine",
            PsRemoveLoadImageNotifyRoutine as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "win64" fn noop(_: *const UnicodeString, _: usize, _: *mut ImageInfo) {}

    #[test]
    fn the_table_holds_64_and_removal_names_unknown_routines() {
        std::thread::spawn(|| {
            crate::machine::cpu::enter_thread(41);
            let f = noop as *const () as usize;
            for _ in 0..MAX_LOAD_IMAGE_NOTIFY {
                // SAFETY: an exported routine called as a driver would, at PASSIVE_LEVEL.
                assert_eq!(unsafe { PsSetLoadImageNotifyRoutine(f) }, STATUS_SUCCESS);
            }
            // SAFETY: as above.
            let full = unsafe { PsSetLoadImageNotifyRoutineEx(f, 0) };
            assert_eq!(full, STATUS_INSUFFICIENT_RESOURCES);
            // SAFETY: as above.
            let bad_flags = unsafe { PsSetLoadImageNotifyRoutineEx(f, 2) };
            assert_eq!(bad_flags, STATUS_INVALID_PARAMETER_2);
            for _ in 0..MAX_LOAD_IMAGE_NOTIFY {
                // SAFETY: as above.
                assert_eq!(unsafe { PsRemoveLoadImageNotifyRoutine(f) }, STATUS_SUCCESS);
            }
            // SAFETY: as above.
            let unknown = unsafe { PsRemoveLoadImageNotifyRoutine(f) };
            assert_eq!(unknown, STATUS_PROCEDURE_NOT_FOUND);
            assert!(kernel::with(|k| k.images.leaks().is_empty()));
        })
        .join()
        .unwrap();
    }
}
