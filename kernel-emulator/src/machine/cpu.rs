//! The emulated processor state of each emulator thread: a fake KPCR/KPRCB/KTHREAD reached
//! through the gs segment base (`arch_prctl(ARCH_SET_GS)`), so that inlined
//! `KeGetCurrentThread` (gs:\[0x188\]) and `KeGetCurrentProcessorNumber` (gs:\[0x1A4\]) run
//! natively; the per-thread IRQL and interrupt flag that [`crate::machine::trap`] updates when the
//! driver executes `mov cr8` or `cli`/`sti`; and a KUSER_SHARED_DATA page whose time fields are
//! refreshed from the host clocks.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// PASSIVE_LEVEL.
pub const PASSIVE_LEVEL: u8 = 0;
/// APC_LEVEL.
pub const APC_LEVEL: u8 = 1;
/// DISPATCH_LEVEL.
pub const DISPATCH_LEVEL: u8 = 2;

/// Kernel-mode address of KUSER_SHARED_DATA on x64.
pub const KUSER_SHARED_DATA: u64 = 0xFFFF_F780_0000_0000;

/// arch_prctl code that sets the gs base.
const ARCH_SET_GS: libc::c_int = 0x1001;
/// KPCR offset of the KPRCB.
const KPCR_PRCB: usize = 0x180;
/// Offsets into the fake KTHREAD: ApcState.Process, PreviousMode.
const KTHREAD_PROCESS: usize = 0xB8;
const KTHREAD_PREVIOUS_MODE: usize = 0x232;

thread_local! {
    static IRQL: Cell<u8> = const { Cell::new(PASSIVE_LEVEL) };
    static INTERRUPTS_OFF: Cell<bool> = const { Cell::new(false) };
    static KPCR: Cell<usize> = const { Cell::new(0) };
    static THREAD: Cell<usize> = const { Cell::new(0) };
}

static KUSD_PAGE: AtomicUsize = AtomicUsize::new(0);
static SYSTEM_PROCESS: AtomicUsize = AtomicUsize::new(0);

/// The current IRQL of this thread.
#[must_use]
pub fn irql() -> u8 {
    IRQL.with(Cell::get)
}

/// Sets the IRQL of this thread (KeRaiseIrql / KeLowerIrql / `mov cr8`). A raise to
/// `DISPATCH_LEVEL` or above trims the pageable buffers (Force IRQL Checking,
/// [`crate::nt::mm::paged`]).
pub fn set_irql(v: u8) {
    let old = IRQL.with(|c| c.replace(v));
    if v >= DISPATCH_LEVEL && old < DISPATCH_LEVEL {
        crate::nt::mm::paged::trim();
    }
}

/// Whether the driver disabled interrupts (`cli`) on this thread.
#[must_use]
pub fn interrupts_off() -> bool {
    INTERRUPTS_OFF.with(Cell::get)
}

/// Records `cli` (true) or `sti` (false).
pub fn set_interrupts_off(v: bool) {
    INTERRUPTS_OFF.with(|c| c.set(v));
}

/// This thread's fake KPCR (the gs base), 0 before [`enter_thread`].
#[must_use]
pub fn kpcr() -> usize {
    KPCR.with(Cell::get)
}

/// This thread's fake KTHREAD (what gs:\[0x188\] holds).
#[must_use]
pub fn current_thread() -> usize {
    THREAD.with(Cell::get)
}

/// This thread's emulated processor number (what gs:\[0x1A4\] holds; 0 before
/// [`enter_thread`]).
#[must_use]
pub fn processor_number() -> u32 {
    let kpcr = kpcr();
    if kpcr == 0 {
        return 0;
    }
    // SAFETY: KPRCB.Number inside this thread's live fake KPCR (written by enter_thread).
    unsafe { ((kpcr + KPCR_PRCB + 0x24) as *const u32).read_unaligned() }
}

/// The address of the variable holding the System process's EPROCESS: what the kernel
/// exports as `PsInitialSystemProcess` (wdm.h: `extern PEPROCESS PsInitialSystemProcess`),
/// set once the first emulator thread starts.
#[must_use]
pub fn initial_system_process_variable() -> usize {
    // An AtomicUsize has the layout of a usize: the driver reads a PEPROCESS there.
    SYSTEM_PROCESS.as_ptr() as usize
}

/// The fake EPROCESS of the System process.
#[must_use]
pub fn system_process() -> usize {
    SYSTEM_PROCESS.load(Ordering::Acquire)
}

/// Every emulated processor's KPCR and KTHREAD pages, and the System process's EPROCESS.
static PROCESSOR_PAGES: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// The address ranges of [`enter_thread`]'s fake processor structures (KPCR, KPRCB,
/// KTHREAD) and of the System process's EPROCESS: kernel addresses a driver can read
/// (`PsGetCurrentThread`, `PsInitialSystemProcess`) and must never copy into an answer.
#[must_use]
pub fn processor_pages() -> Vec<(usize, usize)> {
    let mut v = PROCESSOR_PAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let system = system_process();
    if system != 0 {
        v.push((system, system + 0x1000));
    }
    v
}

/// A zeroed, page-aligned allocation that lives for the rest of the process.
fn leak_zeroed(len: usize) -> usize {
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
    // SAFETY: non-zero size, valid alignment.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null(), "out of memory creating processor state");
    p as usize
}

/// Writes a value into one of this module's own fake structures.
///
/// # Safety
/// `addr` must point into a live allocation made by [`leak_zeroed`] with room for `T`.
unsafe fn put<T>(addr: usize, v: T) {
    // SAFETY: guaranteed by the caller.
    unsafe { (addr as *mut T).write_unaligned(v) };
}

/// Makes this thread an emulated processor: KPCR (gs base) with the KPRCB at +0x180,
/// CurrentThread at gs:\[0x188\], Number at gs:\[0x1A4\]; a KTHREAD in the System process;
/// an alternate signal stack for [`crate::machine::trap`]; IRQL PASSIVE_LEVEL.
///
/// # Panics
/// If `arch_prctl(ARCH_SET_GS)` or `sigaltstack` fails.
pub fn enter_thread(number: u32) {
    if SYSTEM_PROCESS.load(Ordering::Acquire) == 0 {
        let p = leak_zeroed(0x1000);
        if SYSTEM_PROCESS
            .compare_exchange(0, p, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread won the race; the page stays unused.
        }
    }
    let kpcr = leak_zeroed(0x2000);
    let prcb = kpcr + KPCR_PRCB;
    let thread = leak_zeroed(0x1000);
    PROCESSOR_PAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend([(kpcr, kpcr + 0x2000), (thread, thread + 0x1000)]);
    // SAFETY: all addresses below lie inside the two fresh allocations above.
    unsafe {
        put(kpcr + 0x18, kpcr); // KPCR.Self
    }
    // SAFETY: as above.
    unsafe { put(kpcr + 0x20, prcb) }; // KPCR.CurrentPrcb
    // SAFETY: as above (prcb + 0x08 = gs:[0x188]).
    unsafe { put(prcb + 0x08, thread) };
    // SAFETY: as above (prcb + 0x24 = gs:[0x1A4]).
    unsafe { put(prcb + 0x24, number) };
    // SAFETY: as above.
    unsafe { put(thread + KTHREAD_PROCESS, system_process()) };
    // SAFETY: as above; KernelMode.
    unsafe { put(thread + KTHREAD_PREVIOUS_MODE, 0u8) };
    // SAFETY: sets this thread's gs base; Linux x86-64 user space does not use gs.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, kpcr) };
    assert_eq!(r, 0, "arch_prctl(ARCH_SET_GS) failed");
    let stack = libc::stack_t {
        ss_sp: leak_zeroed(0x10000) as *mut libc::c_void,
        ss_flags: 0,
        ss_size: 0x10000,
    };
    // SAFETY: installs a live, never-freed alternate signal stack for this thread.
    let r = unsafe { libc::sigaltstack(&raw const stack, std::ptr::null_mut()) };
    assert_eq!(r, 0, "sigaltstack failed");
    KPCR.with(|c| c.set(kpcr));
    THREAD.with(|c| c.set(thread));
    set_irql(PASSIVE_LEVEL);
    set_interrupts_off(false);
}

/// 100 ns units from a host clock (async-signal-safe).
fn now_100ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a local timespec.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    ts.tv_sec as u64 * 10_000_000 + ts.tv_nsec as u64 / 100
}

/// Seconds between 1601-01-01 and 1970-01-01, in 100 ns units.
pub const EPOCH_DIFFERENCE_100NS: u64 = 116_444_736_000_000_000;

/// How far [`advance_clock`] moved the emulated clocks ahead of the host's, in 100 ns units.
static CLOCK_OFFSET_100NS: AtomicU64 = AtomicU64::new(0);

/// Moves every emulated clock (system time, interrupt time, the performance counter, the
/// KUSER_SHARED_DATA copies) forward by `delta` 100 ns units: the emulated machine then runs
/// that far ahead of the host. Used by [`crate::nt::ke::timer::advance`].
pub fn advance_clock(delta: u64) {
    CLOCK_OFFSET_100NS.fetch_add(delta, Ordering::AcqRel);
    refresh_kuser_shared_data();
}

/// How far the emulated clocks run ahead of the host's (100 ns units): the time scenarios
/// moved with [`advance_clock`] only, so a kernel-internal delay measured on it expires at a
/// scenario's say, never because the host was slow.
#[must_use]
pub fn emulated_offset() -> u64 {
    CLOCK_OFFSET_100NS.load(Ordering::Acquire)
}

/// The system time as Windows counts it (100 ns since 1601, UTC).
#[must_use]
pub fn system_time() -> u64 {
    now_100ns(libc::CLOCK_REALTIME)
        + EPOCH_DIFFERENCE_100NS
        + CLOCK_OFFSET_100NS.load(Ordering::Acquire)
}

/// Interrupt time: 100 ns units since "boot" (the host's monotonic clock).
#[must_use]
pub fn interrupt_time() -> u64 {
    now_100ns(libc::CLOCK_MONOTONIC) + CLOCK_OFFSET_100NS.load(Ordering::Acquire)
}

/// Creates the KUSER_SHARED_DATA page (idempotent).
pub fn init_kuser_shared_data(processors: u32) {
    if KUSD_PAGE.load(Ordering::Acquire) != 0 {
        return;
    }
    let p = leak_zeroed(0x1000);
    // SAFETY: every offset below is inside the fresh page (layout: ntddk.h KUSER_SHARED_DATA).
    unsafe { put(p + 0x4, 0x0FA0_0000u32) }; // TickCountMultiplier
    // SAFETY: as above.
    unsafe { put(p + 0x2C, 0x8664u16) }; // ImageNumberLow
    // SAFETY: as above.
    unsafe { put(p + 0x2E, 0x8664u16) }; // ImageNumberHigh
    for (i, c) in "C:\\Windows".encode_utf16().enumerate() {
        // SAFETY: NtSystemRoot at 0x30, 260 code units.
        unsafe { put(p + 0x30 + i * 2, c) };
    }
    // SAFETY: as above.
    unsafe { put(p + 0x260, 22_621u32) }; // NtBuildNumber
    // SAFETY: as above.
    unsafe { put(p + 0x264, 1u32) }; // NtProductType = NtProductWinNt
    // SAFETY: as above.
    unsafe { put(p + 0x268, 1u8) }; // ProductTypeIsValid
    // SAFETY: as above.
    unsafe { put(p + 0x26C, 10u32) }; // NtMajorVersion
    // SAFETY: as above.
    unsafe { put(p + 0x3C0, processors) }; // ActiveProcessorCount
    KUSD_PAGE.store(p, Ordering::Release);
    refresh_kuser_shared_data();
}

/// Refreshes the time fields (async-signal-safe: called from the trap handler).
pub fn refresh_kuser_shared_data() {
    let p = KUSD_PAGE.load(Ordering::Acquire);
    if p == 0 {
        return;
    }
    let interrupt = interrupt_time();
    let system = system_time();
    let ticks = interrupt / 156_250; // 15.625 ms clock tick
    for (off, v) in [(0x8, interrupt), (0x14, system), (0x320, ticks)] {
        // KSYSTEM_TIME: LowPart, High1Time, High2Time.
        // SAFETY: offsets inside the KUSD page.
        unsafe { put(p + off, v as u32) };
        // SAFETY: as above.
        unsafe { put(p + off + 4, (v >> 32) as u32) };
        // SAFETY: as above.
        unsafe { put(p + off + 8, (v >> 32) as u32) };
    }
}

/// Reads `len` (1..=8) bytes of the emulated KUSER_SHARED_DATA at `offset`.
#[must_use]
pub fn read_kuser_shared_data(offset: usize, len: usize) -> Option<u64> {
    let p = KUSD_PAGE.load(Ordering::Acquire);
    if p == 0 || !(1..=8).contains(&len) || offset + len > 0x1000 {
        return None;
    }
    refresh_kuser_shared_data();
    let mut b = [0u8; 8];
    // SAFETY: offset + len <= 0x1000 inside the KUSD page.
    unsafe { std::ptr::copy_nonoverlapping((p + offset) as *const u8, b.as_mut_ptr(), len) };
    Some(u64::from_le_bytes(b))
}

/// The current stack pointer.
#[inline]
#[must_use]
pub fn rsp() -> usize {
    let r: usize;
    // SAFETY: reads rsp into a register, no memory access.
    unsafe { std::arch::asm!("mov {}, rsp", out(reg) r, options(nomem, nostack)) };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gs_points_at_this_threads_kpcr() {
        std::thread::spawn(|| {
            enter_thread(3);
            let (thread, number, self_ptr): (usize, u32, usize);
            // SAFETY: reads through the gs base set by enter_thread.
            unsafe { std::arch::asm!("mov {}, gs:[0x188]", out(reg) thread) };
            // SAFETY: as above.
            unsafe { std::arch::asm!("mov {:e}, gs:[0x1A4]", out(reg) number) };
            // SAFETY: as above.
            unsafe { std::arch::asm!("mov {}, gs:[0x18]", out(reg) self_ptr) };
            assert_eq!(thread, current_thread());
            assert_eq!(number, 3);
            assert_eq!(self_ptr, kpcr());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn kuser_shared_data_time_tracks_the_host_clock() {
        init_kuser_shared_data(2);
        let t = read_kuser_shared_data(0x14, 8).unwrap();
        assert!(t.abs_diff(system_time()) < 10_000_000);
        assert_eq!(read_kuser_shared_data(0x4, 4), Some(0x0FA0_0000));
        assert_eq!(read_kuser_shared_data(0xFFC, 8), None);
    }
}
