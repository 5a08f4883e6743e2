//! Resident copies of the strings the kernel hands the driver.
//!
//! The tracker reads names under its spin locks, at `DISPATCH_LEVEL`, where pageable memory
//! must not be touched: with Driver Verifier's Force IRQL Checking, "whenever a driver being
//! verified requests a spin lock [...] all of the system pageable pool, code, and data [...]
//! are trimmed from the working set. If the driver attempts to access any of this memory,
//! Driver Verifier issues a bug check" (Learn, "Force IRQL Checking"). The names
//! `CmCallbackGetKeyObjectID(Ex)` return are paged pool (`ReactOS`
//! `ntoskrnl/config/cmkcbncb.c`, `CmpConstructName`: `CmpAllocate(…, TRUE /* Paged */, …)`;
//! the kernel emulator's `td-paged-key-name`); the pool of the notification structures'
//! strings and of image names is not documented, so they are copied as well. Each is copied
//! here, at `PASSIVE_LEVEL`, before the tracker sees it: a name of up to [`STACK_UNITS`] onto
//! the stack, a longer one into a non-paged pool block. Until 2026-12-04 the kernel's buffers
//! went to the tracker as they were (found in review).

use core::{mem::MaybeUninit, ptr, slice};

use crate::pool;

/// Names up to this many UTF-16 units (512 bytes of stack) are copied onto the stack: every
/// path of a realistic profile (`\REGISTRY\USER\S-1-5-21-…\Software\…`, about 110).
const STACK_UNITS: usize = 256;

/// A longer name is copied into one pool block of up to this many units: one more than the
/// tracker stores, so that it still sees, and flags, a name it has to cut.
const POOL_UNITS: usize = tracker::names::MAX_NAME_UNITS + 1;

/// Runs `f` on a resident copy of `units` (cut to [`POOL_UNITS`]); `None` when a long name
/// finds no pool for its copy (the caller counts it as a name it could not get).
/// `PASSIVE_LEVEL` or `APC_LEVEL`: `units` may be pageable.
#[inline(never)] // its buffer stays out of the callers' frames (the held open's, issue 14)
pub fn with_copy<R>(units: &[u16], f: impl FnOnce(&[u16]) -> R) -> Option<R> {
    if units.len() <= STACK_UNITS {
        let mut buf = MaybeUninit::<[u16; STACK_UNITS]>::uninit();
        let dst = buf.as_mut_ptr().cast::<u16>();
        // The stack buffer cannot overlap `units`.
        // SAFETY: `units.len() <= STACK_UNITS` units fit the stack buffer.
        unsafe { ptr::copy_nonoverlapping(units.as_ptr(), dst, units.len()) };
        // SAFETY: the first `units.len()` units of the buffer were just written.
        return Some(f(unsafe { slice::from_raw_parts(dst, units.len()) }));
    }
    let n = units.len().min(POOL_UNITS);
    let block = pool::alloc_zeroed(n * 2)?;
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "pool blocks are at least 16-byte aligned (docs: ExAllocatePool2)"
    )]
    let dst = block.as_ptr().cast::<u16>();
    // Pool blocks are at least 16-byte aligned; `n <= units.len()`.
    // SAFETY: the block holds `n` units and is ours alone.
    unsafe { ptr::copy_nonoverlapping(units.as_ptr(), dst, n) };
    // SAFETY: the block's `n` units were just written; it lives until freed below.
    let r = f(unsafe { slice::from_raw_parts(dst, n) });
    // SAFETY: allocated above by `pool::alloc_zeroed`; the slice given to `f` is gone.
    unsafe { pool::free(block) };
    Some(r)
}
