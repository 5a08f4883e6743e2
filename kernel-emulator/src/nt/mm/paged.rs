//! Pageable memory the kernel hands a driver, and Driver Verifier's Force IRQL Checking.
//!
//! Some buffers the kernel gives a driver are paged pool: the key name
//! `CmCallbackGetKeyObjectIDEx` returns is built by `CmpConstructName`, which allocates it
//! with `CmpAllocate(..., TRUE /* Paged */, ...)` (ReactOS `ntoskrnl/config/cmkcbncb.c`). A
//! driver must not touch pageable memory at `DISPATCH_LEVEL` or above, and Force IRQL Checking
//! makes sure it is caught: "whenever a driver being verified requests a spin lock, calls
//! KeSynchronizeExecution, or raises the IRQL to DISPATCH_LEVEL or higher, all of the system
//! pageable pool, code, and data [...] are trimmed from the working set. If the driver
//! attempts to access any of this memory, Driver Verifier issues a bug check" (Learn, [Force
//! IRQL Checking](https://learn.microsoft.com/en-us/windows-hardware/drivers/devtest/force-irql-checking)).
//! The bug check is 0xD1 DRIVER_IRQL_NOT_LESS_OR_EQUAL ("a kernel-mode driver attempted to
//! access pageable memory at a process IRQL that was too high"; parameters: the address, the
//! IRQL, 0 read / 1 write, the instruction: Learn, [Bug Check 0xD1](https://learn.microsoft.com/en-us/windows-hardware/drivers/debugger/bug-check-0xd1--driver-irql-not-less-or-equal)).
//!
//! The model: each pageable buffer is its own host mapping. Every raise of a thread's IRQL to
//! `DISPATCH_LEVEL` or above ([`crate::machine::cpu::set_irql`]) trims them all (no access); a touch of
//! a trimmed buffer below `DISPATCH_LEVEL` pages it back in (the access is made again), and at
//! or above it is bug check 0xD1 ([`crate::machine::trap`]). Stricter than Windows in one way only: a
//! raise by the kernel's own code (a DPC's delivery) trims too. Checking is on by default, as
//! on the VMs that run hivetrack under Driver Verifier; `cargo xtask bench-driver` turns it
//! off ([`set_checking`]), since timing the trims is not timing the driver.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The trimmable buffers: (start, length) of each mapping, page-aligned.
static REGIONS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
static CHECKING: AtomicBool = AtomicBool::new(true);
static TRIMS: AtomicU64 = AtomicU64::new(0);
static PAGE_INS: AtomicU64 = AtomicU64::new(0);

const PAGE: usize = 4096;

fn regions() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    REGIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Turns Force IRQL Checking on or off (on by default).
pub fn set_checking(on: bool) {
    CHECKING.store(on, Ordering::Relaxed);
}

/// Whether Force IRQL Checking is on ([`set_checking`]).
#[must_use]
pub fn checking() -> bool {
    CHECKING.load(Ordering::Relaxed)
}

/// Trims so far (raises to `DISPATCH_LEVEL` with pageable buffers live) and page-ins.
#[must_use]
pub fn counts() -> (u64, u64) {
    (
        TRIMS.load(Ordering::Relaxed),
        PAGE_INS.load(Ordering::Relaxed),
    )
}

/// Allocates `bytes` of pageable memory (its own mapping, readable and writable now).
///
/// # Panics
/// If the host has no memory left.
#[must_use]
pub fn alloc(bytes: usize) -> usize {
    let len = bytes.max(1).div_ceil(PAGE) * PAGE;
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "host out of memory");
    regions().push((p as usize, len));
    p as usize
}

/// Frees a buffer from [`alloc`]; false if `p` is not one.
#[must_use = "false: not a pageable buffer"]
pub fn free(p: usize) -> bool {
    let found = {
        let mut r = regions();
        r.iter()
            .position(|&(s, _)| s == p)
            .map(|i| r.swap_remove(i))
    };
    let Some((s, len)) = found else {
        return false;
    };
    // SAFETY: the mapping made by `alloc`, unlisted above: nothing refers to it any more.
    unsafe { libc::munmap(s as *mut libc::c_void, len) };
    true
}

/// The IRQL was raised to `DISPATCH_LEVEL` or above: every pageable buffer is trimmed.
/// Async-signal-safe apart from the lock, which no code holds while driver code runs on its
/// thread (a raise from a trapped `mov cr8` calls this inside the signal handler).
pub(crate) fn trim() {
    if !CHECKING.load(Ordering::Relaxed) {
        return;
    }
    let r = regions();
    if r.is_empty() {
        return;
    }
    for &(s, len) in r.iter() {
        // SAFETY: a live mapping of ours; only its protection changes.
        unsafe { libc::mprotect(s as *mut libc::c_void, len, libc::PROT_NONE) };
    }
    // Held until every buffer is trimmed: one allocated meanwhile would stay untrimmed.
    drop(r);
    TRIMS.fetch_add(1, Ordering::Relaxed);
}

/// What a fault at `addr` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A trimmed pageable buffer touched below `DISPATCH_LEVEL`: paged in; retry.
    PagedIn,
    /// Touched at `DISPATCH_LEVEL` or above: bug check 0xD1.
    TooHighIrql,
}

/// Handles a fault at `addr` on a thread at `irql`: `None` if `addr` is in no pageable
/// buffer.
pub(crate) fn fault(addr: usize, irql: u8) -> Option<Fault> {
    // Held across the protection change, as `trim` holds it: a trim or a free on another
    // thread cannot come between (found in review).
    let r = regions();
    let (s, len) = r
        .iter()
        .copied()
        .find(|&(s, len)| addr >= s && addr < s + len)?;
    if irql >= crate::machine::cpu::DISPATCH_LEVEL {
        return Some(Fault::TooHighIrql);
    }
    // SAFETY: a live mapping of ours; only its protection changes.
    unsafe {
        libc::mprotect(
            s as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    drop(r);
    PAGE_INS.fetch_add(1, Ordering::Relaxed);
    Some(Fault::PagedIn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_buffer_pages_in_below_dispatch_and_faults_at_it() {
        let p = alloc(100);
        assert_eq!(p % PAGE, 0);
        trim();
        assert_eq!(fault(p + 8, 2), Some(Fault::TooHighIrql));
        assert_eq!(fault(p + 8, 0), Some(Fault::PagedIn));
        // SAFETY: paged in above: readable and writable again.
        unsafe { (p as *mut u8).write(7) };
        assert_eq!(fault(p + PAGE, 0), None, "past the mapping");
        assert!(free(p));
        assert!(!free(p));
    }
}
