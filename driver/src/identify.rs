//! `IOCTL_HIVETRACK_IDENTIFY_HANDLES`: which tracked key each of the caller's handles is.
//!
//! A duplicated or inherited key handle reaches its new holder with no registry notification,
//! so the driver's records name only the opener. The CLI duplicates the key handles it finds
//! in the system handle table into its own process and sends them here. Each handle is
//! resolved in the caller's handle table — `ObReferenceObjectByHandle` with `UserMode`, as
//! Microsoft Learn says drivers must for handles from user space; the dispatch routine of this
//! top-level device runs in the requesting thread's context (Learn, "Dispatch routines":
//! highest-level drivers' dispatch routines are called in the context of the thread that
//! originated the request). `ObjectType` is NULL: the object is never touched, only its
//! address compared with the tracked records', so a handle to another kind of object simply
//! matches nothing. Every reference is held until the lookup is done — an address cannot be
//! reused by another key object meanwhile — and dropped before the answer is written, with no
//! tracker lock held (dropping the last reference can delete a key object, and its close and
//! cleanup notifications come back into this driver). No reference outlives the request and
//! no address reaches the answer: only the key ids of `holders` answers.

use core::ffi::c_void;
use core::mem::{align_of, size_of};
use core::ptr::{NonNull, null_mut};

use protocol::{
    identify::{Identified, IdentifyAnswer, IdentifyOutcome, IdentifyRequest, MAX_IDENTIFY},
    wire::{self, HEADER_LEN},
};
use tracker::Wanted;
use wdk_sys::{
    _MODE::UserMode,
    STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_NOT_READY, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
    ntddk::{ObReferenceObjectByHandle, ObfDereferenceObject},
};

use crate::{
    ioctl::{Outcome, encode_answer},
    pool, tracking,
};

/// `STATUS_INVALID_HANDLE` (ntstatus.h; not in wdk-sys's constants): what the kernel answers
/// a handle value [`refused_up_front`].
#[allow(clippy::cast_possible_wrap, reason = "NTSTATUS bits")]
const STATUS_INVALID_HANDLE: i32 = 0xC000_0008_u32 as i32;

/// The largest request: header, count and reserved word, [`MAX_IDENTIFY`] handles.
const MAX_REQUEST: usize = HEADER_LEN + 8 + 8 * MAX_IDENTIFY;

/// `UserMode` as the `KPROCESSOR_MODE` (`CCHAR`) the API takes (the constant is 1).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the constant is 1"
)]
const USER_MODE: i8 = UserMode as i8;

/// One request's working memory, too large for a kernel stack at [`MAX_IDENTIFY`] handles:
/// `n` [`Wanted`] (what the tracker looks up, sorted by it) then `n` [`Identified`] (the
/// answer, in request order), in one tagged non-paged block (the tracker reads it under spin
/// locks), freed when dropped, on every path. At most 96 KiB, the same order as the
/// request's own system buffer.
struct Scratch {
    block: NonNull<u8>,
    n: usize,
}

impl Scratch {
    /// Working memory for `n` handles, every element written; `None` when the pool refuses.
    fn new(n: usize) -> Option<Self> {
        let size = n.checked_mul(size_of::<Wanted>() + size_of::<Identified>())?;
        let scratch = Self {
            block: pool::alloc_zeroed(size)?,
            n,
        };
        // Pool blocks are 16-aligned on x64 (docs: ExAllocatePool2); checked, not assumed.
        if scratch.block.as_ptr().align_offset(align_of::<Wanted>()) != 0 {
            return None; // dropped: freed
        }
        let (wanted, entries) = scratch.starts();
        for i in 0..n {
            // SAFETY: element `i` of the `n` Wanted at the block's start, inside the block.
            unsafe { wanted.wrapping_add(i).write(Wanted::default()) };
        }
        for i in 0..n {
            // SAFETY: element `i` of the `n` Identified after them, inside the block.
            unsafe { entries.wrapping_add(i).write(Identified::default()) };
        }
        Some(scratch)
    }

    /// The first Wanted and the first Identified.
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "the block's alignment is checked in `new`"
    )]
    const fn starts(&self) -> (*mut Wanted, *mut Identified) {
        let wanted = self.block.as_ptr().cast::<Wanted>();
        // Aligned for Identified (8): `n` Wanted of 32 bytes after an aligned start.
        let entries = wanted.wrapping_add(self.n).cast::<Identified>();
        (wanted, entries)
    }

    /// The two arrays.
    const fn parts(&mut self) -> (&mut [Wanted], &mut [Identified]) {
        let (wanted, entries) = self.starts();
        // SAFETY: `n` initialised Wanted, ours alone while `self` is borrowed mutably.
        let wanted = unsafe { core::slice::from_raw_parts_mut(wanted, self.n) };
        // SAFETY: `n` initialised Identified after them, disjoint from the Wanted.
        let entries = unsafe { core::slice::from_raw_parts_mut(entries, self.n) };
        (wanted, entries)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated by `pool::alloc_zeroed` in `new`, freed once, never used after.
        unsafe { pool::free(self.block) };
    }
}

/// A handle value a `UserMode` `ObReferenceObjectByHandle` refuses before any lookup, so the
/// driver answers it without the kernel call: 0 (never a handle; Learn's "Bug Check 0xC4"
/// table has a row, 0xF5, for a driver that passed a NULL handle to
/// `ObReferenceObjectByHandle`, not said to be `KernelMode` only: audit 24a, F3), and a value whose low 32 bits are negative other than
/// the two pseudo-handles `NtCurrentProcess()` / `NtCurrentThread()` (-1, -2): such a value
/// is decoded as a kernel handle only for `KernelMode`, and is `STATUS_INVALID_HANDLE` for
/// `UserMode` (Windows Research Kernel `ob/obref.c`, `ObReferenceObjectByHandle`).
#[must_use]
pub const fn refused_up_front(handle: u64) -> bool {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low 32 bits, as obref.c tests them"
    )]
    let low = handle as u32;
    handle == 0 || (low.cast_signed() < 0 && handle != u64::MAX && handle != u64::MAX - 1)
}

/// Answers the request in the first `in_len` bytes of `buffer` (the `METHOD_BUFFERED` system
/// buffer), writing the answer over it.
pub fn identify(buffer: &mut [u8], in_len: usize, out_len: usize) -> Outcome {
    if in_len > MAX_REQUEST || in_len > buffer.len() || out_len > buffer.len() {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    let Ok(request) = wire::decode::<IdentifyRequest>(&buffer[..in_len]) else {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    };
    let n = request.len();
    if out_len < IdentifyAnswer::encoded_len(n) {
        return Outcome::error(STATUS_BUFFER_TOO_SMALL);
    }
    let Some(tracker) = tracking::get().filter(|_| tracking::status() == STATUS_SUCCESS) else {
        return Outcome::error(STATUS_DEVICE_NOT_READY);
    };
    let Some(mut scratch) = Scratch::new(n) else {
        return Outcome::error(STATUS_INSUFFICIENT_RESOURCES);
    };
    let (wanted, entries) = scratch.parts();
    for (i, (w, handle)) in wanted.iter_mut().zip(request.handles()).enumerate() {
        let mut object: *mut c_void = null_mut();
        let status = if refused_up_front(handle) {
            STATUS_INVALID_HANDLE
        } else {
            // At PASSIVE_LEVEL (IRP_MJ_DEVICE_CONTROL dispatch), `object` a writable PVOID:
            // SAFETY: a UserMode lookup of any handle value is safe (an invalid one fails).
            unsafe {
                ObReferenceObjectByHandle(
                    handle as *mut c_void,
                    0,
                    null_mut(),
                    USER_MODE,
                    &raw mut object,
                    null_mut(),
                )
            }
        };
        *w = Wanted {
            object: if status == STATUS_SUCCESS && !object.is_null() {
                object as u64
            } else {
                0
            },
            index: u32::try_from(i).unwrap_or(u32::MAX),
            found: None,
        };
    }
    tracker.identify(wanted);
    for w in wanted.iter().filter(|w| w.object != 0) {
        // SAFETY: the reference taken above, released once; PASSIVE_LEVEL; no lock held.
        unsafe { ObfDereferenceObject(w.object as *mut c_void) };
    }
    for w in wanted.iter() {
        let Some(e) = entries.get_mut(w.index as usize) else {
            continue;
        };
        *e = match (w.object == 0, w.found) {
            (true, _) => Identified {
                outcome: IdentifyOutcome::InvalidHandle,
                id: 0,
            },
            (false, Some(token)) => Identified {
                outcome: IdentifyOutcome::Tracked,
                id: token.0,
            },
            (false, None) => Identified {
                outcome: IdentifyOutcome::NotTracked,
                id: 0,
            },
        };
    }
    IdentifyAnswer::new(entries).map_or_else(
        || Outcome::error(STATUS_INVALID_PARAMETER),
        |answer| encode_answer(&answer, &mut buffer[..out_len]),
    )
}
