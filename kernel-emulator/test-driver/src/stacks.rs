//! User-mode stack capture and load-image notifications, as a driver attributing registry
//! opens to user-mode code uses them (issue 16): `RtlWalkFrameChain` with
//! `RTL_WALK_USER_MODE_STACK` in the caller's context (an IOCTL, or the registry callback's
//! post-open/create and pre-close), and a load-image notify routine registered with
//! `PsSetLoadImageNotifyRoutineEx` — resolved with `MmGetSystemRoutineAddress`, falling back
//! to `PsSetLoadImageNotifyRoutine` where the system lacks it — that logs what it receives.

use core::{
    ffi::c_void,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

use wdk_sys::{NTSTATUS, STATUS_SUCCESS, UNICODE_STRING, ntddk::MmGetSystemRoutineAddress};

unsafe extern "system" {
    fn RtlWalkFrameChain(callers: *mut *mut c_void, count: u32, flags: u32) -> u32;
    fn PsSetLoadImageNotifyRoutine(routine: LoadImageNotify) -> NTSTATUS;
    fn PsRemoveLoadImageNotifyRoutine(routine: LoadImageNotify) -> NTSTATUS;
    fn PsGetCurrentProcessId() -> *mut c_void;
    fn IoIs32bitProcess(irp: *mut c_void) -> u8;
}

/// PLOAD_IMAGE_NOTIFY_ROUTINE.
type LoadImageNotify = unsafe extern "C" fn(*const UNICODE_STRING, *mut c_void, *mut c_void);
/// PsSetLoadImageNotifyRoutineEx.
type SetEx = unsafe extern "system" fn(LoadImageNotify, usize) -> NTSTATUS;

/// Frames a capture holds.
pub const FRAMES: usize = 16;
/// Output slots of a walk or capture: [returned, PsGetCurrentProcessId, IRQL, frames...,
/// IoIs32bitProcess(NULL)].
pub const WALK_SLOTS: usize = 4 + FRAMES;
/// What an unwritten frame slot holds.
const UNWRITTEN: u64 = 0x5555_5555_5555_5555;

/// Reads the IRQL (KeGetCurrentIrql's inline form).
fn irql() -> u64 {
    let v: u64;
    // SAFETY: reading cr8 (trapped and emulated by the emulator).
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) v) };
    v
}

/// One walk: `RtlWalkFrameChain(frames or NULL, count (at most FRAMES), flags)`.
fn walk(count: u64, flags: u64, null_callers: bool) -> [u64; WALK_SLOTS] {
    let mut frames = [UNWRITTEN as usize as *mut c_void; FRAMES];
    let count = u32::try_from(count.min(FRAMES as u64)).unwrap_or(0);
    let callers = if null_callers {
        core::ptr::null_mut()
    } else {
        frames.as_mut_ptr()
    };
    #[allow(clippy::cast_possible_truncation)] // Flags is a ULONG
    let flags = flags as u32;
    let level = irql();
    // SAFETY: `callers` is NULL or has room for `count` (<= FRAMES) entries.
    let n = unsafe { RtlWalkFrameChain(callers, count, flags) };
    // SAFETY: callable at any IRQL.
    let pid = unsafe { PsGetCurrentProcessId() } as u64;
    let mut out = [0u64; WALK_SLOTS];
    out[0] = u64::from(n);
    out[1] = pid;
    out[2] = level;
    for (o, f) in out[3..].iter_mut().zip(frames) {
        *o = f as usize as u64;
    }
    // SAFETY: IRP NULL asks about the current process context; IRQL <= DISPATCH_LEVEL.
    out[3 + FRAMES] = u64::from(unsafe { IoIs32bitProcess(core::ptr::null_mut()) });
    out
}

/// IOCTL_WALK: a walk in the caller's context. `options` bit 0: pass Callers NULL; bit 1:
/// walk at DISPATCH_LEVEL (raised with cr8, lowered after).
pub fn walk_request(count: u64, flags: u64, options: u64) -> [u64; WALK_SLOTS] {
    if options & 2 == 0 {
        return walk(count, flags, options & 1 != 0);
    }
    let before = irql();
    // SAFETY: KeRaiseIrql(DISPATCH_LEVEL)'s inline form; lowered again below.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) 2u64) };
    let out = walk(count, flags, options & 1 != 0);
    // SAFETY: KeLowerIrql back to the entry IRQL.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) before) };
    out
}

/// Captures armed in the registry callback: Count, Flags (0: off).
static CAPTURE_COUNT: AtomicU64 = AtomicU64::new(0);
static CAPTURE_FLAGS: AtomicU64 = AtomicU64::new(0);
/// The last capture of a post-open/create (0) and of a pre-close (1).
static CAPTURES: [[AtomicU64; WALK_SLOTS]; 2] =
    [const { [const { AtomicU64::new(0) }; WALK_SLOTS] }; 2];

/// IOCTL_CAPTURE_ARM: from now on the registry callback walks with (`count`, `flags`) in
/// every post-open/create and pre-close (`count` 0 stops it).
pub fn arm(count: u64, flags: u64) {
    for c in &CAPTURES {
        for s in c {
            s.store(0, Ordering::Relaxed);
        }
    }
    CAPTURE_FLAGS.store(flags, Ordering::Relaxed);
    CAPTURE_COUNT.store(count, Ordering::Release);
}

/// Called by the registry callback with each notification class.
pub fn on_notification(class: usize) {
    let count = CAPTURE_COUNT.load(Ordering::Acquire);
    let which = match class {
        27 | 29 => 0,
        14 => 1,
        _ => return,
    };
    if count == 0 {
        return;
    }
    let out = walk(count, CAPTURE_FLAGS.load(Ordering::Relaxed), false);
    for (s, v) in CAPTURES[which].iter().zip(out) {
        s.store(v, Ordering::Relaxed);
    }
}

/// IOCTL_CAPTURE_READ: the last capture `which` (0 post-open/create, 1 pre-close).
pub fn capture(which: u64) -> [u64; WALK_SLOTS] {
    let mut out = [0u64; WALK_SLOTS];
    if let Some(c) = CAPTURES.get(usize::try_from(which).unwrap_or(usize::MAX)) {
        for (o, s) in out.iter_mut().zip(c) {
            *o = s.load(Ordering::Relaxed);
        }
    }
    out
}

/// Slots per image log entry.
pub const IMAGE_SLOTS: usize = 8;
const IMAGE_ENTRIES: usize = 32;
static IMAGE_LOG: [[AtomicU64; IMAGE_SLOTS]; IMAGE_ENTRIES] =
    [const { [const { AtomicU64::new(0) }; IMAGE_SLOTS] }; IMAGE_ENTRIES];
static IMAGE_NEXT: AtomicUsize = AtomicUsize::new(0);
/// Registrations this driver holds (each removed at unload).
static REGISTERED: AtomicU32 = AtomicU32::new(0);
/// Whether the last registration went through PsSetLoadImageNotifyRoutineEx.
static USED_EX: AtomicBool = AtomicBool::new(false);
/// Set by IOCTL_IMAGE_REMOVE_INSIDE: the next notification removes its own routine (a bug the
/// model must report).
static REMOVE_INSIDE: AtomicBool = AtomicBool::new(false);

/// IOCTL_IMAGE_REMOVE_INSIDE: arms the self-removal bug.
pub fn remove_inside() {
    REMOVE_INSIDE.store(true, Ordering::Relaxed);
}

/// Set by IOCTL_IMAGE_LEAK: DriverUnload "forgets" to remove the routine (a bug to catch).
static LEAK: AtomicBool = AtomicBool::new(false);

/// FNV-1a over a name's UTF-16 code units (0 for a NULL name).
fn name_hash(name: *const UNICODE_STRING) -> u64 {
    crate::lifecycle::hash(name)
}

/// The load-image notify routine: logs [ProcessId, PsGetCurrentProcessId, name hash,
/// Properties | (name NULL) << 32 | IRQL << 40 | KeAreApcsDisabled << 48, ImageBase, ImageSize, ImageSelector |
/// ImageSectionNumber << 32, IMAGE_INFO_EX Size | (FileObject non-NULL) << 32 when
/// ExtendedInfoPresent, else 0].
unsafe extern "C" fn image_notify(
    name: *const UNICODE_STRING,
    pid: *mut c_void,
    info: *mut c_void,
) {
    let i = IMAGE_NEXT.fetch_add(1, Ordering::AcqRel);
    let Some(slot) = IMAGE_LOG.get(i) else {
        IMAGE_NEXT.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let base = info.cast::<u8>();
    // SAFETY: IMAGE_INFO: Properties at 0x00.
    let properties = unsafe { base.cast::<u32>().read_unaligned() };
    // SAFETY: ImageBase at 0x08.
    let image_base = unsafe { base.wrapping_add(0x08).cast::<u64>().read_unaligned() };
    // SAFETY: ImageSelector at 0x10.
    let selector = unsafe { base.wrapping_add(0x10).cast::<u32>().read_unaligned() };
    // SAFETY: ImageSize at 0x18.
    let size = unsafe { base.wrapping_add(0x18).cast::<u64>().read_unaligned() };
    // SAFETY: ImageSectionNumber at 0x20.
    let section = unsafe { base.wrapping_add(0x20).cast::<u32>().read_unaligned() };
    let extended = if properties & (1 << 10) != 0 {
        // CONTAINING_RECORD(info, IMAGE_INFO_EX, ImageInfo): ImageInfo is at 8.
        let ex = base.wrapping_sub(8);
        // SAFETY: ExtendedInfoPresent: the IMAGE_INFO is inside an IMAGE_INFO_EX.
        let ex_size = unsafe { ex.cast::<u64>().read_unaligned() };
        // SAFETY: FileObject at 0x30 of IMAGE_INFO_EX.
        let file = unsafe { ex.wrapping_add(0x30).cast::<u64>().read_unaligned() };
        (ex_size & 0xFFFF_FFFF) | u64::from(file != 0) << 32
    } else {
        0
    };
    // SAFETY: callable at PASSIVE_LEVEL.
    let current = unsafe { PsGetCurrentProcessId() } as u64;
    // SAFETY: callable at IRQL <= DISPATCH_LEVEL.
    let apcs_disabled = u64::from(unsafe { crate::registry::KeAreApcsDisabled() } != 0);
    if REMOVE_INSIDE.swap(false, Ordering::Relaxed) {
        // SAFETY: the bug on purpose: removing this routine from inside it.
        let _ = unsafe { PsRemoveLoadImageNotifyRoutine(image_notify) };
    }
    let entry = [
        pid as u64,
        current,
        name_hash(name),
        u64::from(properties)
            | u64::from(name.is_null()) << 32
            | irql() << 40
            | apcs_disabled << 48,
        image_base,
        size,
        u64::from(selector) | u64::from(section) << 32,
        extended,
    ];
    for (s, v) in slot.iter().zip(entry) {
        s.store(v, Ordering::Relaxed);
    }
}

/// A routine never registered (for PsRemoveLoadImageNotifyRoutine's unknown-routine case).
unsafe extern "C" fn never_registered(_: *const UNICODE_STRING, _: *mut c_void, _: *mut c_void) {}

/// PsSetLoadImageNotifyRoutineEx, if the system has it.
fn set_ex() -> Option<SetEx> {
    let mut name = [0u16; 29];
    for (d, c) in name.iter_mut().zip(b"PsSetLoadImageNotifyRoutineEx") {
        *d = u16::from(*c);
    }
    let mut us = UNICODE_STRING {
        Length: 58,
        MaximumLength: 58,
        Buffer: name.as_mut_ptr(),
    };
    // SAFETY: a valid UNICODE_STRING; PASSIVE_LEVEL.
    let p = unsafe { MmGetSystemRoutineAddress(&raw mut us) };
    if p.is_null() {
        return None;
    }
    // SAFETY: the address of PsSetLoadImageNotifyRoutineEx.
    Some(unsafe { core::mem::transmute::<*mut c_void, SetEx>(p) })
}

/// IOCTL_IMAGE_REGISTER: clears the log, then registers the routine `times` times (at least
/// once) with `flags`, through the Ex routine unless `classic` or it is missing. Answers
/// [registrations that succeeded, the last status, 1 if the Ex routine was used, 0].
pub fn register(flags: u64, classic: bool, times: u64) -> [u64; 4] {
    for e in &IMAGE_LOG {
        for s in e {
            s.store(0, Ordering::Relaxed);
        }
    }
    IMAGE_NEXT.store(0, Ordering::Release);
    let ex = if classic { None } else { set_ex() };
    let (mut ok, mut last) = (0u64, STATUS_SUCCESS);
    for _ in 0..times.max(1) {
        last = match ex {
            // SAFETY: a valid routine that stays mapped until it is removed; PASSIVE_LEVEL.
            Some(f) => unsafe { f(image_notify, usize::try_from(flags).unwrap_or(usize::MAX)) },
            // SAFETY: as above.
            None => unsafe { PsSetLoadImageNotifyRoutine(image_notify) },
        };
        if last == STATUS_SUCCESS {
            ok += 1;
            REGISTERED.fetch_add(1, Ordering::AcqRel);
        }
    }
    USED_EX.store(ex.is_some(), Ordering::Relaxed);
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    [ok, u64::from(last as u32), u64::from(ex.is_some()), 0]
}

/// IOCTL_IMAGE_REMOVE: removes one registration (`unknown`: the never-registered routine
/// instead). Answers [the status, registrations left, 0, 0].
pub fn remove(unknown: bool) -> [u64; 4] {
    let s = if unknown {
        // SAFETY: removing a routine is safe whether or not it is registered; PASSIVE_LEVEL.
        unsafe { PsRemoveLoadImageNotifyRoutine(never_registered) }
    } else {
        // SAFETY: as above.
        unsafe { PsRemoveLoadImageNotifyRoutine(image_notify) }
    };
    if s == STATUS_SUCCESS && !unknown {
        REGISTERED.fetch_sub(1, Ordering::AcqRel);
    }
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    [
        u64::from(s as u32),
        u64::from(REGISTERED.load(Ordering::Acquire)),
        0,
        0,
    ]
}

/// IOCTL_IMAGE_LEAK: DriverUnload will leave the routine registered.
pub fn leak() {
    LEAK.store(true, Ordering::Relaxed);
}

/// IOCTL_IMAGE_READ: entry `i`; past the end, slot 7 is the number of entries.
pub fn image_entry(i: u64) -> [u64; IMAGE_SLOTS] {
    let mut out = [0u64; IMAGE_SLOTS];
    let n = IMAGE_NEXT.load(Ordering::Acquire).min(IMAGE_ENTRIES);
    match usize::try_from(i).ok().filter(|i| *i < n) {
        Some(i) => {
            for (o, s) in out.iter_mut().zip(&IMAGE_LOG[i]) {
                *o = s.load(Ordering::Relaxed);
            }
        }
        None => out[7] = n as u64,
    }
    out
}

/// DriverUnload: removes every registration (unless told to leak) and disarms the capture.
pub fn stop() {
    CAPTURE_COUNT.store(0, Ordering::Release);
    if LEAK.load(Ordering::Relaxed) {
        return;
    }
    while REGISTERED.load(Ordering::Acquire) > 0 {
        // SAFETY: removing a routine this driver registered; PASSIVE_LEVEL.
        if unsafe { PsRemoveLoadImageNotifyRoutine(image_notify) } != STATUS_SUCCESS {
            break;
        }
        REGISTERED.fetch_sub(1, Ordering::AcqRel);
    }
}
