//! Open-time user-mode stacks (issue 16): when the tracker says an open is in the capture
//! scope, the opening thread's user-mode return addresses, walked with `RtlWalkFrameChain`
//! and `RTL_WALK_USER_MODE_STACK`.
//!
//! Called from the post-open notification at `PASSIVE_LEVEL` in the opener's thread, with
//! no lock held: the walk reads user memory and may take page faults; the routine catches
//! an unreadable stack itself and then returns 0 (Windows Research Kernel `stkwalk.c`: the
//! walk runs under an exception handler whose filter sets the count to 0; `ReactOS` likewise;
//! the kernel emulator's `td-user-stack` models it: the key is reported with no stack). A
//! walk that meets code it cannot unwind stops there and returns the frames so far (WRK),
//! which the CLI flags as possibly partial. Only a user-mode opener whose handle goes into its own
//! process is walked: a kernel-mode caller has no user stack of its own, and a thread
//! attached to another process (`KeStackAttachProcess`) would read that process's
//! addresses. Those opens are reported as having no frames.

use core::ffi::c_void;

use protocol::capture::MAX_FRAMES;
use tracker::{ProcessKey, Token};
use wdk_sys::ntddk::PsGetCurrentProcessId;

use crate::routines;
use crate::tracking::DriverTracker;

/// The start of the kernel half of the x64 address space: user-mode addresses lie below
/// (the 128 TiB user space of x64 Windows; docs, "Virtual address spaces").
const USER_LIMIT: u64 = 0x0000_8000_0000_0000;
/// `RTL_WALK_USER_MODE_STACK` (ntddk.h).
const RTL_WALK_USER_MODE_STACK: u32 = 1;

/// Captures the stack of the open that returned `token` for `object`, opened by `holder`;
/// `user_mode`: the open came from user mode (`CheckAccessMode`).
#[inline(never)] // only with capture on: kept out of the callback's frame
pub fn capture(
    tracker: &DriverTracker,
    token: Token,
    object: u64,
    holder: ProcessKey,
    user_mode: bool,
) {
    // SAFETY: always callable; the id of the thread's own process.
    let own = (unsafe { PsGetCurrentProcessId() }) as u64;
    let walk = routines::rtl_walk_frame_chain().filter(|_| user_mode && own == holder.pid);
    let Some(walk) = walk else {
        tracker.stack_captured(token, object, &[], false);
        return;
    };
    // A 32-bit program's registry calls reach the kernel through the 64-bit Wow64 layer, so
    // the walk shows that layer, never its own 32-bit callers (audit 20a, M2): the reports
    // say so. Learn `IoIs32bitProcess`: IRP NULL asks about the current process context,
    // which the check above made the opener's; IRQL <= DISPATCH_LEVEL.
    if let Some(is_32bit) = routines::io_is_32bit_process() {
        // SAFETY: IRP NULL is allowed (docs); the callback runs at <= APC_LEVEL.
        if unsafe { is_32bit(core::ptr::null_mut()) } != 0 {
            tracker.process_is_32bit(holder);
        }
    }
    // One more than kept, to tell a deeper stack from one that fits exactly.
    let mut callers = [core::ptr::null_mut::<c_void>(); MAX_FRAMES + 1];
    #[allow(clippy::cast_possible_truncation, reason = "17")]
    let count = callers.len() as u32;
    // PASSIVE_LEVEL, no lock held, a buffer of `count` pointers (the routine writes at
    // most `count`; ReactOS kmtest RtlStack.c).
    // SAFETY: `callers` is valid for `count` writes.
    let n = unsafe { walk(callers.as_mut_ptr(), count, RTL_WALK_USER_MODE_STACK) } as usize;
    let n = n.min(callers.len());
    let mut frames = [0u64; MAX_FRAMES];
    let mut kept = 0;
    for (dst, src) in frames.iter_mut().zip(&callers[..n]) {
        let address = *src as u64;
        // A user-mode walk gives user addresses; anything else is not reported (no kernel
        // address reaches user mode), and the stack ends there.
        if address >= USER_LIMIT {
            break;
        }
        *dst = address;
        kept += 1;
    }
    let truncated = n > MAX_FRAMES && kept == MAX_FRAMES;
    tracker.stack_captured(token, object, &frames[..kept], truncated);
}
