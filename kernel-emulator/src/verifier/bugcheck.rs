//! Bugchecks and verifier stops: what Windows would show on a blue screen, printed with the
//! faulting address symbolized against the driver image (and its linker map), wdk-panic's
//! file:line decoded, then the process exits with [`EXIT_BUGCHECK`] — the "machine" stops.
//!
//! Also holds the per-thread label of the driver operation in progress, for every report.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::loader::pe::Image;
use crate::machine::cpu;

/// Exit code: every check passed.
pub const EXIT_PASS: i32 = 0;
/// Exit code: a check failed (for example a leak at unload).
pub const EXIT_CHECK_FAILED: i32 = 1;
/// Exit code: the image was refused (unresolved imports are named).
pub const EXIT_REFUSED: i32 = 2;
/// Exit code: the driver caused a bugcheck (KeBugCheckEx, a fault, a verifier violation).
pub const EXIT_BUGCHECK: i32 = 86;

/// The wdk-panic bugcheck code, `u32::from_be_bytes(*b"RPNC")`.
pub const RUST_PANIC: u32 = 0x5250_4E43;

thread_local! {
    static OPERATION: RefCell<String> = const { RefCell::new(String::new()) };
}

static IMAGE: AtomicPtr<Image> = AtomicPtr::new(std::ptr::null_mut());

/// Registers the loaded image for symbolized reports. The image must live for the rest of
/// the process (the emulator leaks loaded images on purpose: driver code may be running).
pub fn set_image(image: &'static Image) {
    IMAGE.store(std::ptr::from_ref(image).cast_mut(), Ordering::Release);
}

/// The registered image, if any.
#[must_use]
pub fn image() -> Option<&'static Image> {
    // SAFETY: only `set_image` stores here, with a `&'static Image`.
    unsafe { IMAGE.load(Ordering::Acquire).as_ref() }
}

/// Symbolizes `addr` against the registered image.
#[must_use]
pub fn symbolize(addr: usize) -> String {
    image().map_or_else(|| format!("{addr:#x}"), |i| i.symbolize(addr))
}

/// Sets the label of the operation this thread is running ("DriverEntry", "IRP_MJ_CREATE").
/// Returns the previous label.
#[must_use = "restore the previous label when the operation ends"]
pub fn set_operation(op: &str) -> String {
    OPERATION.with(|o| std::mem::replace(&mut *o.borrow_mut(), op.to_string()))
}

/// The label of the operation in progress on this thread.
#[must_use]
pub fn operation() -> String {
    OPERATION.with(|o| {
        o.try_borrow()
            .map_or_else(|_| "(busy)".to_string(), |s| s.clone())
    })
}

/// The name Windows gives a bugcheck code.
#[must_use]
pub const fn name(code: u32) -> &'static str {
    match code {
        0x0F => "SPIN_LOCK_ALREADY_OWNED",
        0x1E => "KMODE_EXCEPTION_NOT_HANDLED",
        0x44 => "MULTIPLE_IRP_COMPLETE_REQUESTS",
        0x48 => "CANCEL_STATE_IN_COMPLETED_IRP",
        0x4A => "IRQL_GT_ZERO_AT_SYSTEM_SERVICE",
        0x50 => "PAGE_FAULT_IN_NONPAGED_AREA",
        0x7E => "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
        0x7F => "UNEXPECTED_KERNEL_MODE_TRAP",
        0x93 => "INVALID_KERNEL_HANDLE",
        0x11B => "DRIVER_RETURNED_HOLDING_CANCEL_LOCK",
        0x139 => "KERNEL_SECURITY_CHECK_FAILURE",
        0xC1 => "SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION",
        0xC2 => "BAD_POOL_CALLER",
        0xC4 => "DRIVER_VERIFIER_DETECTED_VIOLATION",
        0xC7 => "TIMER_OR_DPC_INVALID",
        0xC9 => "DRIVER_VERIFIER_IOMANAGER_VIOLATION",
        0xCE => "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
        0xD1 => "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        0xF7 => "DRIVER_OVERRAN_STACK_BUFFER",
        RUST_PANIC => "RUST_PANIC ('RPNC', wdk-panic)",
        _ => "?",
    }
}

/// Writes straight to fd 2 (usable from the trap handler).
pub fn emit_stderr(s: &str) {
    let _ = std::io::stdout().flush();
    // SAFETY: writes a live buffer to stderr.
    unsafe { libc::write(2, s.as_ptr().cast(), s.len()) };
}

/// KeBugCheckEx: prints the stop screen and exits with [`EXIT_BUGCHECK`].
pub fn bugcheck(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> ! {
    let mut s = format!(
        "\n*** STOP: {code:#010X} ({p1:#018x}, {p2:#018x}, {p3:#018x}, {p4:#018x})\n\
         *** {}\n*** during: {} (IRQL {})\n",
        name(code),
        operation(),
        cpu::irql()
    );
    if code == RUST_PANIC {
        s += &describe_rust_panic(p1, p2, p3, p4);
    }
    let _ = writeln!(s, "*** bugcheck {code:#x} {}", name(code));
    emit_stderr(&s);
    // SAFETY: ends the process without unwinding through driver frames.
    unsafe { libc::_exit(EXIT_BUGCHECK) }
}

/// wdk-panic passes (file pointer, file length, line, column).
fn describe_rust_panic(file: usize, len: usize, line: usize, column: usize) -> String {
    let in_image = image().is_some_and(|i| i.contains(file) && i.contains(file + len));
    if file == 0 || len == 0 || len > 4096 || !in_image {
        return format!("*** Rust panic (location not decodable: {file:#x}/{len})\n");
    }
    // SAFETY: the range lies inside the mapped driver image (checked above) and wdk-panic
    // passes the panic location's file name there.
    let bytes = unsafe { std::slice::from_raw_parts(file as *const u8, len) };
    format!(
        "*** Rust panic at {}:{line}:{column}\n",
        String::from_utf8_lossy(bytes)
    )
}

/// A Driver Verifier style violation: reported as bugcheck 0xC4 with `message`.
pub fn verifier_violation(message: &str) -> ! {
    emit_stderr(&format!("*** kernel-emulator verifier: {message}\n"));
    bugcheck(0xC4, 0, 0, 0, 0)
}

/// Verifier rule: `routine` may be called at IRQL <= `max` with interrupts enabled.
pub fn require_irql(routine: &str, max: u8) {
    let now = cpu::irql();
    if now > max || cpu::interrupts_off() {
        let off = if cpu::interrupts_off() {
            " with interrupts disabled"
        } else {
            ""
        };
        verifier_violation(&format!(
            "{routine} called at IRQL {now}{off} (documented maximum {max})"
        ));
    }
}

/// KeBugCheckEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kebugcheckex>:
/// brings the system down; never returns. A naked thunk passes the caller's return address
/// as a sixth argument so the report names the calling function.
#[unsafe(naked)]
unsafe extern "win64" fn KeBugCheckEx() {
    std::arch::naked_asm!(
        "mov rax, [rsp]",         // return address into the driver
        "sub rsp, 0x38",          // entry RSP is 16n+8: this re-aligns to 16
        "mov r10, [rsp + 0x60]",  // BugCheckParameter4 (the caller's fifth argument)
        "mov [rsp + 0x20], r10",
        "mov [rsp + 0x28], rax",
        "call {imp}",
        "ud2",
        imp = sym bugcheck_from_driver,
    )
}

/// The body of KeBugCheckEx.
unsafe extern "win64" fn bugcheck_from_driver(
    code: u32,
    p1: usize,
    p2: usize,
    p3: usize,
    p4: usize,
    caller: usize,
) -> ! {
    emit_stderr(&format!(
        "*** KeBugCheckEx called from {}\n",
        symbolize(caller)
    ));
    bugcheck(code, p1, p2, p3, p4)
}

/// KeBugCheck — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kebugcheck>.
unsafe extern "win64" fn KeBugCheck(code: u32) -> ! {
    bugcheck(code, 0, 0, 0, 0)
}

/// The bugcheck routines.
pub(crate) fn exports() -> Vec<crate::nt::exports::Export> {
    use crate::nt::exports::Export;
    vec![
        Export::function("KeBugCheck", KeBugCheck as *const () as usize),
        Export::function("KeBugCheckEx", KeBugCheckEx as *const () as usize),
    ]
}
