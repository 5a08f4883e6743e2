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
use core::ptr::null_mut;

use protocol::{
    identify::{Identified, IdentifyAnswer, IdentifyOutcome, IdentifyRequest, MAX_IDENTIFY},
    wire::{self, HEADER_LEN},
};
use wdk_sys::{
    _MODE::UserMode,
    STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_NOT_READY, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
    ntddk::{ObReferenceObjectByHandle, ObfDereferenceObject},
};

use crate::{
    ioctl::{Outcome, encode_answer},
    tracking,
};

/// The largest request: header, count and reserved word, 64 handles.
const MAX_REQUEST: usize = HEADER_LEN + 8 + 8 * MAX_IDENTIFY;

/// `UserMode` as the `KPROCESSOR_MODE` (`CCHAR`) the API takes (the constant is 1).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the constant is 1"
)]
const USER_MODE: i8 = UserMode as i8;

/// Answers the request in the first `in_len` bytes of `buffer` (the `METHOD_BUFFERED` system
/// buffer), writing the answer over it.
pub fn identify(buffer: &mut [u8], in_len: usize, out_len: usize) -> Outcome {
    if in_len > MAX_REQUEST || in_len > buffer.len() || out_len > buffer.len() {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    let Ok(request) = wire::decode::<IdentifyRequest>(&buffer[..in_len]) else {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    };
    let handles = request.handles();
    if out_len < IdentifyAnswer::encoded_len(handles.len()) {
        return Outcome::error(STATUS_BUFFER_TOO_SMALL);
    }
    let Some(tracker) = tracking::get().filter(|_| tracking::status() == STATUS_SUCCESS) else {
        return Outcome::error(STATUS_DEVICE_NOT_READY);
    };
    let mut objects = [0u64; MAX_IDENTIFY];
    let mut referenced = [null_mut::<c_void>(); MAX_IDENTIFY];
    for (i, &handle) in handles.iter().enumerate() {
        let mut object: *mut c_void = null_mut();
        // At PASSIVE_LEVEL (IRP_MJ_DEVICE_CONTROL dispatch), `object` a writable PVOID:
        // SAFETY: a UserMode lookup of any handle value is safe (an invalid one fails).
        let status = unsafe {
            ObReferenceObjectByHandle(
                handle as *mut c_void,
                0,
                null_mut(),
                USER_MODE,
                &raw mut object,
                null_mut(),
            )
        };
        if status == STATUS_SUCCESS && !object.is_null() {
            objects[i] = object as u64;
            referenced[i] = object;
        }
    }
    let mut found = [None; MAX_IDENTIFY];
    tracker.identify(&objects[..handles.len()], &mut found[..handles.len()]);
    for &object in referenced.iter().filter(|o| !o.is_null()) {
        // SAFETY: the reference taken above, released once; PASSIVE_LEVEL; no lock held.
        unsafe { ObfDereferenceObject(object) };
    }
    let mut entries = [Identified::default(); MAX_IDENTIFY];
    for (i, e) in entries.iter_mut().enumerate().take(handles.len()) {
        *e = match (referenced[i].is_null(), found[i]) {
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
    IdentifyAnswer::new(&entries[..handles.len()]).map_or_else(
        || Outcome::error(STATUS_INVALID_PARAMETER),
        |answer| encode_answer(&answer, &mut buffer[..out_len]),
    )
}
