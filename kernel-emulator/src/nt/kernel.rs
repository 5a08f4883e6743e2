//! The emulated kernel's shared state (one per process: each scenario runs in its own child
//! process) and the gate every call into driver code goes through.
//!
//! Rule: the state lock is never held while driver code runs — the driver calls back into
//! the model (a lookaside FreeEx, a completion, a nested dispatch).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use crate::machine::cpu;
use crate::nt::cm::hive::HiveState;
use crate::nt::cm::registry::RegistryState;
use crate::nt::ex::lookaside::LookasideState;
use crate::nt::ex::pool::PoolState;
use crate::nt::io::IoState;
use crate::nt::ob::object::ObjectState;
use crate::nt::ps::process::ProcessState;
use crate::verifier::bugcheck::{self, verifier_violation};
use crate::verifier::faults::FaultInjector;

/// The 24 KiB x64 kernel stack: deeper use would have overflowed on Windows (bugcheck 0x7F).
pub const KERNEL_STACK_BYTES: usize = 24 * 1024;

/// Everything the model tracks.
#[derive(Default)]
pub struct Kernel {
    /// Pool blocks and special-pool mode.
    pub pool: PoolState,
    /// Fault injection.
    pub faults: FaultInjector,
    /// Devices, symbolic links, file objects, IRPs.
    pub io: IoState,
    /// Kernel handles and object types.
    pub objects: ObjectState,
    /// Registry callbacks.
    pub registry: RegistryState,
    /// Lookaside lists.
    pub lookasides: LookasideState,
    /// Hives, keys, key objects and key handles.
    pub hives: HiveState,
    /// Processes and process-notify routines.
    pub processes: ProcessState,
    /// Load-image notify routines and the images reported.
    pub images: crate::nt::ps::image::ImageState,
    /// Set timers and queued DPCs.
    pub timers: crate::nt::ke::timer::TimerState,
    /// Registry values and key handles of the driver's own `Zw*` registry reads.
    pub zwreg: crate::nt::cm::zwreg::ZwRegState,
    /// Routines hidden from the loader and from MmGetSystemRoutineAddress.
    pub hidden_routines: BTreeSet<String>,
    /// Names the driver asked MmGetSystemRoutineAddress for, in order.
    pub routine_queries: Vec<String>,
    /// DbgPrint output, one entry per call.
    pub debug_log: Vec<String>,
    /// Do not echo DbgPrint to stdout.
    pub quiet_debug_print: bool,
    /// IRQL registry callbacks run at: PASSIVE_LEVEL as documented (Learn
    /// `EX_CALLBACK_FUNCTION` Remarks), or APC_LEVEL as observed on Windows (so Zw* calls
    /// from a callback are caught): System Informer issue #2498
    /// (<https://github.com/winsiderss/systeminformer/issues/2498>, 2025-06-01: a kernel
    /// debugger stack of its registry callback under `CmpCallCallBacksEx` <- `CmpParseKey` <-
    /// `CmOpenKey` <- `NtOpenKeyEx`, called by a Plug and Play worker (`ExpWorkerThread`),
    /// with `!irql` APC_LEVEL) and the documentation pull request it led to,
    /// MicrosoftDocs/windows-driver-docs-ddi #1617 ("Correct CM IRQL documentation", closed
    /// without a change: it asks Microsoft whether the docs or the kernel are wrong). Observed
    /// on one System worker's open only; the model raises *every* callback when set — a
    /// stricter reading.
    pub callback_irql: u8,
    /// Deepest stack use of one driver call so far, and the operation.
    pub max_stack: (usize, String),
}

static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Kernel>> {
    KERNEL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` with the kernel state locked. Never call driver code inside `f`.
pub fn with<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    let mut guard = lock();
    f(guard.get_or_insert_with(Kernel::default))
}

/// Like [`with`] but gives up instead of blocking (for the trap handler).
pub fn try_with<R>(f: impl FnOnce(&mut Kernel) -> R) -> Option<R> {
    let mut guard = KERNEL.try_lock().ok()?;
    Some(f(guard.get_or_insert_with(Kernel::default)))
}

/// Forgets all state but the configuration (hidden routines, special pool): used between the
/// independent driver loads of a DriverEntry sweep.
pub fn reset() {
    with(|k| {
        let hidden = std::mem::take(&mut k.hidden_routines);
        let special = k.pool.special;
        let quiet = k.quiet_debug_print;
        // A run under fault injection keeps lookasides off across the resets its scenario
        // makes (review 18b: `random-faults` and the DriverEntry sweeps reset the kernel).
        let lookasides_off = k.lookasides.depth_zero;
        *k = Kernel::default();
        crate::nt::ke::sync::reset();
        k.hidden_routines = hidden;
        k.pool.special = special;
        k.quiet_debug_print = quiet;
        k.lookasides.depth_zero = lookasides_off;
    });
}

/// A fallible routine asks whether to fail now (fault injection).
#[must_use]
pub fn should_fail(routine: &str, is_pool: bool) -> bool {
    let op = bugcheck::operation();
    with(|k| k.faults.should_fail(routine, is_pool, &op))
}

/// Measure the stack high-water mark of every driver call (on by default; benchmarks turn it
/// off).
pub static WATERMARK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Bytes painted below the caller: the kernel stack plus 8 KiB. A call that goes deeper
/// overwrites the lowest painted word, so its depth reads as the whole region, which is past
/// [`KERNEL_STACK_BYTES`]: still reported. (It was 256 KiB, which dominated every short call:
/// painting and scanning it was most of a soak's time.)
const STACK_PAINT: usize = KERNEL_STACK_BYTES + 8 * 1024;
const STACK_PATTERN: u64 = 0x6b65_6d75_5f73_746b;

std::thread_local! {
    /// The bottom of the region the outermost driver call on this thread painted, while one
    /// runs ([`with_stack_watermark`]).
    static PAINTED_BOTTOM: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// Whether this thread's stack is listed in [`KERNEL_STACKS`].
    static STACK_LISTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The stacks of every thread that has run driver code: the model's kernel stacks. A driver's
/// locals, and the structures the model passes it by pointer (a callback's REG_* argument,
/// an IO_STATUS_BLOCK), live there, so their addresses are kernel addresses an answer must
/// not carry (review 21a, L6). A thread that ended keeps its entry (its range may be reused by
/// a later thread's stack: still kernel stack).
static KERNEL_STACKS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// Lists this thread's whole stack mapping in [`KERNEL_STACKS`], once.
fn list_this_stack() {
    if STACK_LISTED.with(std::cell::Cell::get) {
        return;
    }
    STACK_LISTED.with(|l| l.set(true));
    // SAFETY: pthread_attr_t is plain data; zero is a valid value to hand to
    // pthread_getattr_np, which initialises it.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: no precondition.
    let me = unsafe { libc::pthread_self() };
    // SAFETY: `attr` is ours; it is initialised for the calling thread.
    if unsafe { libc::pthread_getattr_np(me, &raw mut attr) } != 0 {
        return;
    }
    let mut addr: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialised above; the out pointers are ours.
    let ok =
        unsafe { libc::pthread_attr_getstack(&raw const attr, &raw mut addr, &raw mut size) } == 0;
    // SAFETY: `attr` was initialised above and is not used again.
    unsafe { libc::pthread_attr_destroy(&raw mut attr) };
    let range = ok.then(|| (addr as usize, addr as usize + size));
    if let Some(r) = range {
        KERNEL_STACKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(r);
    }
}

/// The stacks of the threads that have run driver code ([`KERNEL_STACKS`]).
#[must_use]
pub fn kernel_stacks() -> Vec<(usize, usize)> {
    KERNEL_STACKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Paints the unused stack below the caller, runs `f`, measures how deep it went, and, for
/// the outermost driver call of the thread, paints the frames it used again (dead once it
/// returned).
///
/// A driver call nested in another on the same thread (the driver's Zw* call reaching its own
/// registry callback, a notification inside `CmRegisterCallbackEx`) runs on the same kernel
/// stack, below the outer call's live frames, inside the region the outer call painted: it
/// neither paints nor poisons, so its frames count in the outer call's depth (review 21a, M2:
/// poisoning after every call, bcb0671, hid them, and a nested callback's frames were no longer
/// checked against [`KERNEL_STACK_BYTES`]). Its own depth is measured from its own top down to
/// the lowest word written in the outer region, which may include dead frames of the outer
/// call from before it: never less than its real depth, never more than the outer call's.
/// Emulator threads have stacks far larger than [`STACK_PAINT`].
#[inline(never)]
fn with_stack_watermark<R>(f: impl FnOnce() -> R) -> (R, usize) {
    /// Ends the outermost call's mark on this thread, also when `f` unwinds.
    struct Outermost;
    impl Drop for Outermost {
        fn drop(&mut self) {
            PAINTED_BOTTOM.with(|b| b.set(None));
        }
    }
    let top = (cpu::rsp() - 128) & !7;
    // Nested: below our frame, the outer call's region holds the pattern or its dead frames;
    // scanning it from its bottom finds how deep the stack went. (No call between the paint
    // and `f`: a callee's frame lies below `top` and the paint would overwrite it.)
    let nested = PAINTED_BOTTOM.with(std::cell::Cell::get);
    let bottom = nested.unwrap_or(top - STACK_PAINT);
    let outermost = nested.is_none().then_some(Outermost);
    if outermost.is_some() {
        list_this_stack();
        PAINTED_BOTTOM.with(|b| b.set(Some(bottom)));
        let mut p = bottom;
        while p < top {
            // SAFETY: [bottom, top) is unused stack of this thread, below the live frames and
            // inside its (64 MiB) mapping.
            unsafe { std::ptr::write_volatile(p as *mut u64, STACK_PATTERN) };
            p += 8;
        }
    }
    let r = f();
    let mut p = bottom;
    // SAFETY: as above; the region is still mapped and below our frame.
    while p < top && unsafe { std::ptr::read_volatile(p as *const u64) } == STACK_PATTERN {
        p += 8;
    }
    let depth = top - p;
    if let Some(end) = outermost {
        // The driver's frames are dead now: a Windows thread's kernel stack is reused by
        // whatever it runs next, so the model poisons them at once. A pointer the driver left
        // in the kernel into its own stack (say, CmRegisterCallbackEx's Altitude string:
        // [`crate::nt::cm::registry::KeptAltitude`]) then reads the pattern, not the old
        // bytes. Only the outermost call does: its scan has counted every nested call.
        while p < top {
            // SAFETY: as above: [p, top) is below our frame, inside the mapping, and dead.
            unsafe { std::ptr::write_volatile(p as *mut u64, STACK_PATTERN) };
            p += 8;
        }
        drop(end);
    }
    (r, depth)
}

/// The gate for every call into driver code: labels the operation for reports, measures the
/// stack high-water mark (a bugcheck 0x7F report past 24 KiB; a nested call's frames count in
/// the outer call's) and poisons the frames the outermost call used once it returned
/// ([`with_stack_watermark`]), and checks that the driver
/// returned at the IRQL it was called at, with interrupts enabled.
pub fn call_driver<R>(operation: &str, f: impl FnOnce() -> R) -> R {
    call_driver_returning_at(operation, None, f)
}

/// [`call_driver`] for a routine that returns at another IRQL than it was called at: a
/// cancel routine is called at DISPATCH_LEVEL holding the cancel spin lock and returns at
/// Irp->CancelIrql, having released it. `None` means "the IRQL it was called at".
pub fn call_driver_returning_at<R>(
    operation: &str,
    exit_irql: Option<u8>,
    f: impl FnOnce() -> R,
) -> R {
    let previous = bugcheck::set_operation(operation);
    let irql_before = exit_irql.unwrap_or_else(cpu::irql);
    let (r, depth) = if WATERMARK.load(std::sync::atomic::Ordering::Relaxed) {
        with_stack_watermark(f)
    } else {
        (f(), 0)
    };
    with(|k| {
        if depth > k.max_stack.0 {
            k.max_stack = (depth, operation.to_string());
        }
    });
    if depth > KERNEL_STACK_BYTES {
        bugcheck::emit_stderr(&format!(
            "*** kernel-emulator: {operation} used {depth} bytes of stack; the x64 kernel \
             stack is {KERNEL_STACK_BYTES} bytes\n"
        ));
        bugcheck::bugcheck(0x7F, 0x8, depth, 0, 0);
    }
    if cpu::irql() != irql_before || cpu::interrupts_off() {
        verifier_violation(&format!(
            "{operation} returned at IRQL {} (expected {irql_before}){}",
            cpu::irql(),
            if cpu::interrupts_off() {
                " with interrupts disabled"
            } else {
                ""
            }
        ));
    }
    let _ = bugcheck::set_operation(&previous);
    r
}

/// Everything the driver still owns, one line each: empty means clean.
#[must_use]
pub fn leaks() -> Vec<String> {
    let mut v = with(|k| {
        let mut v = k.pool.leaks();
        v.extend(k.io.leaks());
        v.extend(k.objects.leaks());
        v.extend(k.registry.leaks());
        v.extend(k.processes.leaks());
        v.extend(k.images.leaks());
        v.extend(k.lookasides.leaks());
        v.extend(k.zwreg.leaks());
        v.extend(k.timers.leaks());
        v
    });
    v.extend(crate::nt::ke::sync::leaks());
    v
}

#[cfg(test)]
mod tests {
    use super::with_stack_watermark;
    use std::hint::black_box;

    #[inline(never)]
    fn frame(bytes: usize) -> u64 {
        let mut a = [0u8; 8192];
        for (i, b) in a.iter_mut().take(bytes).enumerate() {
            *b = u8::try_from(i & 0xFF).unwrap_or(0);
        }
        black_box(&mut a);
        a.iter().map(|&b| u64::from(b)).sum()
    }

    /// Review 21a, M2: a driver call nested in another (the driver's own Zw* read reaching its
    /// registry callback, a notification inside CmRegisterCallbackEx) runs on the same kernel
    /// stack; the outer call's high-water mark must include the nested one's frames. Failed
    /// ("outer 4360") while every call poisoned its frames at its return.
    #[test]
    fn a_nested_driver_call_counts_in_the_outer_depth() {
        let ((_, inner), outer) = with_stack_watermark(|| {
            let mut a = [3u8; 4096];
            black_box(&mut a);
            let r = with_stack_watermark(|| frame(8192));
            black_box(&a);
            r
        });
        assert!(inner >= 8192, "inner {inner}");
        assert!(outer >= 4096 + 8192, "outer {outer} (inner alone {inner})");
    }
}
