//! Threads' user-mode call stacks and `RtlWalkFrameChain`, the routine a driver uses to
//! capture them (issue 16: attributing a registry open to the user-mode code that made it).
//!
//! The model runs a call "as" a process on the current OS thread ([`io::with_pid`]); a
//! scenario says what user-mode stack that emulated thread has with [`with_user_stack`]. The
//! walk runs natively in the driver's call, so it answers from that description:
//!
//! - **Frames** (innermost first): the walk returns them, at most `Count` (less the frames to
//!   skip), and the number written.
//! - **A hostile stack** ([`UserStack::FaultsAfter`]): the walk reads `readable` frames, then
//!   touches an unreadable address. Every source runs the walk under an exception handler
//!   whose handler sets the result to **0** — not the frames found so far: Windows Research
//!   Kernel `base/ntos/rtl/amd64/stkwalk.c` (`RtlpWalkFrameChain`: `except (...) { Index = 0;
//!   }`), ReactOS `ntoskrnl/rtl/libsupp.c` (x86 `RtlWalkFrameChain`: `i = 0`) and
//!   `sdk/lib/rtl/amd64/unwind.c` (`RtlWalkFrameChain`: `i = 0`). The entries written before
//!   the fault stay in the caller's buffer (nothing clears them), so a driver must trust the
//!   return value only.
//! - **No user stack** ([`UserStack::None`], and every thread of the System process: the
//!   System worker that closes keys in deferred mode, `OBJ_KERNEL_HANDLE` opens from System):
//!   0. ReactOS `libsupp.c`, x86 `RtlWalkFrameChain` with `Flags == 1`: `if (!(Teb) ||
//!   (KeIsAttachedProcess()) || (KeGetCurrentIrql() >= DISPATCH_LEVEL)) return 0;` — a system
//!   thread has no TEB. The same check makes a thread **attached** to another process
//!   (`KeStackAttachProcess`) and any walk at **DISPATCH_LEVEL or above** return 0 (the Windows
//!   Research Kernel's `RtlWalkFrameChain` also returns 0 when `MmCanThreadFault()` is FALSE,
//!   i.e. above APC_LEVEL). A user thread whose previous mode is KernelMode (a `Zw*` call,
//!   `OBJ_KERNEL_HANDLE` from a user thread) still has its TEB and trap frame: its user stack
//!   is walked (*inference* from the same check, which looks at the TEB only).
//! - **Default** (a thread the scenario set nothing for): a short plausible stack — the
//!   `ntdll.dll` system-call stub's return, then two return addresses inside the process's
//!   main image (both mapped and reported to load-image notify routines at process creation,
//!   see [`crate::nt::ps::image`]), so a driver that captures stacks sees something it can attribute.
//!   *Model choice*, not a Windows behaviour: every user thread on Windows has some stack.
//!
//! `Flags` (ntddk.h: `RTL_WALK_USER_MODE_STACK 0x00000001`, `RTL_WALK_VALID_FLAGS
//! 0x00000001`, `RTL_STACK_WALKING_MODE_FRAMES_TO_SKIP_SHIFT 8`, and the SAL annotation
//! `_Out_writes_(Count - (Flags >> RTL_STACK_WALKING_MODE_FRAMES_TO_SKIP_SHIFT)) PVOID
//! *Callers`, quoted in KNSoft.NDK `Source/Include/KNSoft/NDK/NT/Rtl/Stack.h`; ReactOS
//! `unwind.c`: "The upper bits in Flags define how many frames to skip"): the low byte must be
//! within `RTL_WALK_VALID_FLAGS`, else 0 (*inference* from the Windows Research Kernel's amd64
//! walk, which returns 0 for any flag it does not support); the frames to skip are walked but
//! not written, and at most `Count - skip` entries are written (the SAL bound; ReactOS writes
//! up to `Count` after skipping — the model keeps to the header's narrower contract). `Count`
//! 0 or `Callers` NULL: 0, nothing written (ReactOS kmtest `modules/rostests/kmtests/rtl/
//! RtlStack.c`, run against Windows: `RtlWalkFrameChain(NULL, 5, 0) == 0`, and a `Count` of 0
//! leaves the buffer's 0x55 fill). The kernel-mode walk (`Flags` without bit 0): the model
//! cannot unwind the driver's native stack and returns 0, which Windows also returns whenever
//! the walk cannot proceed (a driver cannot rely on kernel frames; *model limitation*).
//! Windows x64 returns only the user frames for `RTL_WALK_USER_MODE_STACK` (*inference*:
//! KProcessHacker's `KphCaptureStack` appends a `RTL_WALK_USER_MODE_STACK` walk to a kernel
//! walk; ReactOS x86 walks from the trap frame's user EBP). Note the oldest x64 source: the
//! Windows Research Kernel (Server 2003 SP1) amd64 `RtlpWalkFrameChain` returns 0 for *any*
//! non-zero Flags ("No flag values are currently supported on amd64 platforms"), so a driver
//! must treat 0 as "no stack available" even on a healthy user thread; the model answers as
//! the later systems do that drivers such as KProcessHacker rely on.
//!
//! Learn: [RtlWalkFrameChain](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-rtlwalkframechain)
//! ("reserved for system use"; Windows 2000 on), so everything above is from the sources.

use std::cell::RefCell;
use std::ffi::c_void;

use crate::machine::cpu::DISPATCH_LEVEL;
use crate::nt::exports::Export;
use crate::nt::io;

/// RTL_WALK_USER_MODE_STACK (ntddk.h).
pub const RTL_WALK_USER_MODE_STACK: u32 = 1;
/// RTL_WALK_VALID_FLAGS (ntddk.h).
pub const RTL_WALK_VALID_FLAGS: u32 = 1;
/// RTL_STACK_WALKING_MODE_FRAMES_TO_SKIP_SHIFT (ntddk.h).
pub const FRAMES_TO_SKIP_SHIFT: u32 = 8;

/// A thread's user-mode call stack, as a scenario describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStack {
    /// Return addresses, innermost first; the walk ends after the last.
    Frames(Vec<u64>),
    /// A hostile or corrupt stack: the walk reads the first `readable` of `frames`, then
    /// faults (the next frame pointer is unreadable). A walk that needs no more than
    /// `readable` frames never reaches the fault.
    FaultsAfter {
        /// The return addresses the walk can read, innermost first.
        frames: Vec<u64>,
        /// How many of them it reads before the fault.
        readable: usize,
    },
    /// No user-mode stack (no TEB): a system thread.
    None,
}

thread_local! {
    /// The user stacks set on this OS thread, innermost last: (pid, stack).
    static STACKS: RefCell<Vec<(u32, UserStack)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the emulated thread of process `pid` on this OS thread having `stack` as its
/// user-mode call stack: a driver's `RtlWalkFrameChain(.., RTL_WALK_USER_MODE_STACK)` inside
/// `f` (in a registry callback of `hive::open_key(pid, ..)`, a dispatch routine of a request
/// `pid` sends) walks it. Calls made as another process inside `f` (a System worker, another
/// pid) do not see it. Nests; the innermost setting for `pid` wins.
pub fn with_user_stack<R>(pid: u32, stack: UserStack, f: impl FnOnce() -> R) -> R {
    STACKS.with(|s| s.borrow_mut().push((pid, stack)));
    let r = f();
    STACKS.with(|s| s.borrow_mut().pop());
    r
}

/// The user stack the current emulated thread has: the System process's threads none, else
/// the innermost [`with_user_stack`] setting for its pid, else the default (see the module
/// docs).
#[must_use]
pub fn current_user_stack() -> UserStack {
    let pid = io::current_pid();
    if pid == 4 {
        return UserStack::None;
    }
    let set = STACKS.with(|s| {
        s.borrow()
            .iter()
            .rev()
            .find(|(p, _)| *p == pid)
            .map(|(_, st)| st.clone())
    });
    set.unwrap_or_else(|| UserStack::Frames(default_frames(pid)))
}

/// The default user stack of a thread of `pid`: the `NtOpenKeyEx`-style stub's return in
/// ntdll.dll, two return addresses in the main image, and the thread's start in ntdll.dll,
/// where every user thread's stack ends (`RtlUserThreadStart`; a model choice of addresses,
/// audit 20a, M3: a whole stack ending elsewhere is read as possibly partial).
#[must_use]
pub fn default_frames(pid: u32) -> Vec<u64> {
    let exe = crate::nt::ps::image::main_image_base(pid);
    vec![
        crate::nt::ps::image::NTDLL_BASE + 0x9_D4C4,
        exe + 0x1A2B,
        exe + 0x1140,
        crate::nt::ps::image::NTDLL_BASE + 0x5_26A1,
    ]
}

/// RtlWalkFrameChain — see the module docs for every rule and its source.
unsafe extern "win64" fn RtlWalkFrameChain(
    callers: *mut *mut c_void,
    count: u32,
    flags: u32,
) -> u32 {
    let mode = flags & ((1 << FRAMES_TO_SKIP_SHIFT) - 1);
    let skip = (flags >> FRAMES_TO_SKIP_SHIFT) as usize;
    if callers.is_null() || count == 0 || mode & !RTL_WALK_VALID_FLAGS != 0 {
        return 0;
    }
    if mode & RTL_WALK_USER_MODE_STACK == 0 {
        // The kernel-mode walk: not modelled (0, as when the walk cannot proceed).
        return 0;
    }
    if crate::machine::cpu::irql() >= DISPATCH_LEVEL || crate::nt::ps::process::is_attached() {
        return 0;
    }
    let room = (count as usize).saturating_sub(skip);
    let (frames, fault_at) = match current_user_stack() {
        UserStack::None => return 0,
        UserStack::Frames(f) => (f, None),
        UserStack::FaultsAfter { frames, readable } => (frames, Some(readable)),
    };
    let mut written = 0usize;
    for (walked, frame) in frames.iter().enumerate() {
        if written == room {
            break;
        }
        if fault_at.is_some_and(|r| walked >= r) {
            // The exception handler: the frames written so far stay, the count is 0.
            return 0;
        }
        if walked >= skip {
            let slot = callers.wrapping_add(written);
            // SAFETY: `callers` has room for `count - skip` entries (ntddk.h's SAL bound);
            // `written < room` here.
            unsafe { slot.write_unaligned(*frame as usize as *mut c_void) };
            written += 1;
        }
    }
    if written < room && fault_at.is_some_and(|r| r <= frames.len()) {
        // The walk went on past the readable frames (the buffer had room): it faults.
        return 0;
    }
    written as u32
}

/// The thread routines.
/// KernelMode and UserMode (wdm.h `KPROCESSOR_MODE`).
pub const KERNEL_MODE: i8 = 0;
/// UserMode.
pub const USER_MODE: i8 = 1;

thread_local! {
    /// The previous processor mode of the system service this emulated thread is in: UserMode
    /// for a call from user mode (`NtOpenKey`), KernelMode for a `Zw*` call or outside a
    /// service ([`with_previous_mode`]).
    static PREVIOUS_MODE: std::cell::Cell<i8> = const { std::cell::Cell::new(KERNEL_MODE) };
}

/// Runs `f` as a system service entered from `mode` ([`KERNEL_MODE`] or [`USER_MODE`]): what
/// `ExGetPreviousMode` answers inside it, the callbacks' notifications included.
pub fn with_previous_mode<R>(mode: i8, f: impl FnOnce() -> R) -> R {
    let saved = PREVIOUS_MODE.with(|m| m.replace(mode));
    let r = f();
    PREVIOUS_MODE.with(|m| m.set(saved));
    r
}

/// The previous mode of the service this thread is in ([`with_previous_mode`]).
#[must_use]
pub fn previous_mode() -> i8 {
    PREVIOUS_MODE.with(std::cell::Cell::get)
}

/// ExGetPreviousMode — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exgetpreviousmode>:
/// "the previous processor mode for the current thread" (UserMode when the system service
/// was called from user mode, KernelMode for a `Zw*` call from kernel mode). Any IRQL.
unsafe extern "win64" fn ExGetPreviousMode() -> i8 {
    PREVIOUS_MODE.with(std::cell::Cell::get)
}

pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("RtlWalkFrameChain", RtlWalkFrameChain as *const () as usize),
        Export::function("ExGetPreviousMode", ExGetPreviousMode as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(count: u32, flags: u32) -> (u32, Vec<u64>) {
        let mut buf = [0x5555_5555_5555_5555usize as *mut c_void; 8];
        // SAFETY: an 8-entry buffer; count <= 8 in these tests.
        let n = unsafe { RtlWalkFrameChain(buf.as_mut_ptr(), count, flags) };
        (n, buf.iter().map(|p| *p as u64).collect())
    }

    #[test]
    fn the_walk_follows_the_stack_it_was_given() {
        const S: u64 = 0x5555_5555_5555_5555;
        std::thread::spawn(|| {
            crate::machine::cpu::enter_thread(40);
            let frames = vec![0x7ff8_0000_1000, 0x7ff8_0000_2000, 0x7ff6_0000_3000];
            io::with_pid(2000, || {
                with_user_stack(2000, UserStack::Frames(frames.clone()), || {
                    let (n, b) = walk(8, RTL_WALK_USER_MODE_STACK);
                    assert_eq!((n, &b[..4]), (3, &[frames[0], frames[1], frames[2], S][..]));
                    let (n, b) = walk(2, RTL_WALK_USER_MODE_STACK);
                    assert_eq!((n, &b[..3]), (2, &[frames[0], frames[1], S][..]));
                    let (n, b) = walk(3, RTL_WALK_USER_MODE_STACK | 1 << 8);
                    assert_eq!((n, &b[..3]), (2, &[frames[1], frames[2], S][..]));
                    assert_eq!(walk(0, 1).0, 0);
                    assert_eq!(walk(8, 0).0, 0);
                    assert_eq!(walk(8, 2 | 1).0, 0);
                    // SAFETY: NULL Callers is refused before any write.
                    assert_eq!(unsafe { RtlWalkFrameChain(std::ptr::null_mut(), 5, 1) }, 0);
                });
                let hostile = UserStack::FaultsAfter {
                    frames: frames.clone(),
                    readable: 1,
                };
                with_user_stack(2000, hostile, || {
                    let (n, b) = walk(8, 1);
                    assert_eq!((n, b[0], b[1]), (0, frames[0], S));
                    assert_eq!(walk(1, 1).0, 1);
                });
                // Another process's setting is not this thread's; System has none.
                with_user_stack(2004, UserStack::None, || assert_eq!(walk(8, 1).0, 4));
            });
            io::with_pid(4, || assert_eq!(walk(8, 1).0, 0));
        })
        .join()
        .unwrap();
    }
}
