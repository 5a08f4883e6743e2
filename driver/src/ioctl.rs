//! IOCTL handlers: safe code over the request's bytes.
//!
//! Each handler validates the input length and fields, writes its answer with the protocol
//! crate's `encode` into the output part of the buffer, and reports exactly how many bytes it
//! wrote: the I/O manager copies only those back, so no uninitialised byte leaves the kernel.

use protocol::{
    cursor::CURSOR_LEN,
    events::{Events, EventsPrefix, EventsRequest},
    ioctl::{
        IOCTL_HIVETRACK_CAPTURE, IOCTL_HIVETRACK_GET_VERSION, IOCTL_HIVETRACK_IDENTIFY_HANDLES,
        IOCTL_HIVETRACK_QUERY_HIVES, IOCTL_HIVETRACK_QUERY_HOLDERS, IOCTL_HIVETRACK_QUERY_MODULES,
        IOCTL_HIVETRACK_QUERY_PROCESSES, IOCTL_HIVETRACK_QUERY_SNAPSHOT,
        IOCTL_HIVETRACK_QUERY_STACKS, IOCTL_HIVETRACK_QUERY_STATS,
        IOCTL_HIVETRACK_QUERY_UNLOAD_HISTORY,
    },
    request::{QueryKind, QueryRequest},
    version::{BuildId, VersionInfo},
    wait::{WaitFreeAnswer, WaitFreeRequest},
    wire::{self, EncodeError, HEADER_LEN, encode},
};
use tracker::{MAX_QUERY_PATH, QueryError, query_path};
use wdk_sys::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_NOT_READY, STATUS_INTERNAL_ERROR,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_SUCCESS,
};

use crate::{
    clock,
    tracking::{self, DriverTracker},
    waiters::{EventsWait, Request},
};

/// The largest query request: header, query/flags/max-records, cursor, and the longest hive
/// path with its length prefix (protocol/src/request.rs).
const MAX_REQUEST: usize = HEADER_LEN + 8 + CURSOR_LEN + 2 + 2 * MAX_QUERY_PATH;

/// The build id baked in by the build (`HIVETRACK_BUILD_ID`, the git revision), or `dev`.
pub const BUILD_ID: BuildId = BuildId::new(match option_env!("HIVETRACK_BUILD_ID") {
    Some(id) => id,
    None => "dev",
});

/// Parses a decimal version component at compile time.
const fn parse_u16(s: &str) -> u16 {
    let b = s.as_bytes();
    let mut v: u16 = 0;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "version components are decimal");
        v = v * 10 + (b[i] - b'0') as u16;
        i += 1;
    }
    v
}

/// This driver's version, from its Cargo manifest.
pub const VERSION: VersionInfo = VersionInfo {
    major: parse_u16(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u16(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u16(env!("CARGO_PKG_VERSION_PATCH")),
    capabilities: VersionInfo::CAP_WAIT_FREE
        | VersionInfo::CAP_IDENTIFY_HANDLES
        | VersionInfo::CAP_STACKS
        | VersionInfo::CAP_EVENTS,
    build_id: BUILD_ID,
};

/// The largest wait-free request: header, timeout and reserved word, and the longest hive
/// path with its length prefix (protocol/src/wait.rs).
const MAX_WAIT_REQUEST: usize = HEADER_LEN + 8 + 2 + 2 * MAX_QUERY_PATH;

/// The size of a wait-free answer.
const WAIT_ANSWER_LEN: usize = HEADER_LEN + 16 + protocol::completeness::Completeness::LEN;

/// Validates a wait-free request (in the first `in_len` bytes of `buffer`) and finds its
/// hive. `Err` is the outcome to complete the request with at once.
///
/// # Errors
/// `STATUS_INVALID_PARAMETER` for a malformed request, `STATUS_BUFFER_TOO_SMALL` when the
/// output cannot hold the answer, `STATUS_DEVICE_NOT_READY` while live tracking is off (the
/// driver cannot know when a hive becomes free), `STATUS_OBJECT_NAME_NOT_FOUND` for a path
/// in no known hive.
pub fn wait_request(buffer: &[u8], in_len: usize, out_len: usize) -> Result<Request, Outcome> {
    if in_len > MAX_WAIT_REQUEST || in_len > buffer.len() || out_len > buffer.len() {
        return Err(Outcome::error(STATUS_INVALID_PARAMETER));
    }
    let Ok(req) = wire::decode::<WaitFreeRequest<'_>>(&buffer[..in_len]) else {
        return Err(Outcome::error(STATUS_INVALID_PARAMETER));
    };
    if out_len < WAIT_ANSWER_LEN {
        return Err(Outcome::error(STATUS_BUFFER_TOO_SMALL));
    }
    let Some(tracker) = tracking::get().filter(|_| tracking::status() == STATUS_SUCCESS) else {
        return Err(Outcome::error(STATUS_DEVICE_NOT_READY));
    };
    let mut path = [0u16; MAX_QUERY_PATH];
    let Some((hive, _)) = tracker.watch_hive(query_path(&req.hive, &mut path)) else {
        return Err(Outcome::error(STATUS_OBJECT_NAME_NOT_FOUND));
    };
    Ok(Request {
        hive,
        timeout_ms: req.timeout_ms,
        events: None,
    })
}

/// The largest event-stream request (protocol/src/events.rs).
const EVENTS_REQUEST_LEN: usize = HEADER_LEN + 16;

/// Validates an event-stream request. `Err` is the outcome to complete it with at once.
///
/// # Errors
/// `STATUS_INVALID_PARAMETER` for a malformed request, `STATUS_BUFFER_TOO_SMALL` when the
/// output cannot hold an empty page, `STATUS_DEVICE_NOT_READY` while live tracking is off.
pub fn events_request(buffer: &[u8], in_len: usize, out_len: usize) -> Result<Request, Outcome> {
    if in_len != EVENTS_REQUEST_LEN || in_len > buffer.len() || out_len > buffer.len() {
        return Err(Outcome::error(STATUS_INVALID_PARAMETER));
    }
    let Ok(req) = wire::decode::<EventsRequest>(&buffer[..in_len]) else {
        return Err(Outcome::error(STATUS_INVALID_PARAMETER));
    };
    if out_len < protocol::page::empty_page_len::<Events>(&EventsPrefix::default()) {
        return Err(Outcome::error(STATUS_BUFFER_TOO_SMALL));
    }
    if tracking::get().is_none() || tracking::status() != STATUS_SUCCESS {
        return Err(Outcome::error(STATUS_DEVICE_NOT_READY));
    }
    Ok(Request {
        hive: tracker::WatchedHive::NONE,
        timeout_ms: req.timeout_ms,
        events: Some(EventsWait {
            after: req.after,
            max_records: req.max_records,
        }),
    })
}

/// Writes the event-stream page for `wait` into `out`.
pub fn events_answer(wait: EventsWait, out: &mut [u8]) -> Outcome {
    let Some(tracker) = tracking::get() else {
        return Outcome::error(STATUS_DEVICE_NOT_READY);
    };
    match tracker.events(wait.after, wait.max_records, out) {
        Ok(n) => Outcome::success(n),
        Err(QueryError::BufferTooSmall { .. }) => Outcome::error(STATUS_BUFFER_TOO_SMALL),
        Err(_) => Outcome::error(STATUS_INVALID_PARAMETER),
    }
}

/// Writes the answer of a wait that ends at once.
pub fn wait_answer(answer: &WaitFreeAnswer, out: &mut [u8]) -> Outcome {
    encode_answer(answer, out)
}

/// How a request ends: the IRP's status and the number of output bytes to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Completion status.
    pub status: NTSTATUS,
    /// Bytes of the output buffer filled (0 on every error).
    pub information: usize,
}

impl Outcome {
    /// An error: no output.
    pub const fn error(status: NTSTATUS) -> Self {
        Self {
            status,
            information: 0,
        }
    }

    const fn success(information: usize) -> Self {
        Self {
            status: STATUS_SUCCESS,
            information,
        }
    }
}

/// Answers control code `code`. `buffer` is the `METHOD_BUFFERED` system buffer of
/// `max(in_len, out_len)` bytes: the input at its start, the answer written over it.
pub fn handle(code: u32, buffer: &mut [u8], in_len: usize, out_len: usize) -> Outcome {
    if in_len > buffer.len() || out_len > buffer.len() {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    match code {
        IOCTL_HIVETRACK_GET_VERSION => get_version(in_len, &mut buffer[..out_len]),
        IOCTL_HIVETRACK_QUERY_HOLDERS
        | IOCTL_HIVETRACK_QUERY_HIVES
        | IOCTL_HIVETRACK_QUERY_PROCESSES
        | IOCTL_HIVETRACK_QUERY_STATS
        | IOCTL_HIVETRACK_QUERY_SNAPSHOT
        | IOCTL_HIVETRACK_QUERY_UNLOAD_HISTORY
        | IOCTL_HIVETRACK_QUERY_STACKS
        | IOCTL_HIVETRACK_QUERY_MODULES => query(code, buffer, in_len, out_len),
        IOCTL_HIVETRACK_CAPTURE => capture(buffer, in_len, out_len),
        IOCTL_HIVETRACK_IDENTIFY_HANDLES => crate::identify::identify(buffer, in_len, out_len),
        _ => Outcome::error(STATUS_INVALID_DEVICE_REQUEST),
    }
}

/// `IOCTL_HIVETRACK_GET_VERSION`: no input; the answer is a `VersionInfo` message.
fn get_version(in_len: usize, out: &mut [u8]) -> Outcome {
    if in_len != 0 {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    encode_answer(&VERSION, out)
}

/// The query IOCTLs: the request is copied out of the system buffer (input and output share
/// it), then the tracker writes its page over the buffer.
fn query(code: u32, buffer: &mut [u8], in_len: usize, out_len: usize) -> Outcome {
    if in_len > MAX_REQUEST {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    let mut request = [0u8; MAX_REQUEST];
    request[..in_len].copy_from_slice(&buffer[..in_len]);
    if code == IOCTL_HIVETRACK_QUERY_STATS {
        if let Some(tracker) = tracking::get() {
            crate::reseed::maybe(tracker);
        }
        return stats(&request[..in_len], &mut buffer[..out_len]);
    }
    let Some(tracker) = tracking::get() else {
        return Outcome::error(STATUS_DEVICE_NOT_READY);
    };
    // A start-up read of the hive list that was not whole is done again first (rate-limited),
    // so the answer can count on it (`reseed`).
    crate::reseed::maybe(tracker);
    match tracker.answer(
        code,
        &request[..in_len],
        &mut buffer[..out_len],
        clock::now(),
    ) {
        Ok(n) => Outcome::success(n),
        Err(QueryError::BufferTooSmall { .. }) => Outcome::error(STATUS_BUFFER_TOO_SMALL),
        Err(QueryError::UnknownHive) => Outcome::error(STATUS_OBJECT_NAME_NOT_FOUND),
        Err(_) => Outcome::error(STATUS_INVALID_PARAMETER),
    }
}

/// `IOCTL_HIVETRACK_CAPTURE`: the request is copied out of the shared system buffer, the
/// scope set (for a set), and the state after it written over the buffer.
fn capture(buffer: &mut [u8], in_len: usize, out_len: usize) -> Outcome {
    if in_len > MAX_REQUEST {
        return Outcome::error(STATUS_INVALID_PARAMETER);
    }
    let mut request = [0u8; MAX_REQUEST];
    request[..in_len].copy_from_slice(&buffer[..in_len]);
    let Some(tracker) = tracking::get() else {
        return Outcome::error(STATUS_DEVICE_NOT_READY);
    };
    match tracker.answer_capture(&request[..in_len], &mut buffer[..out_len], clock::now()) {
        Ok(n) => Outcome::success(n),
        Err(QueryError::BufferTooSmall { .. }) => Outcome::error(STATUS_BUFFER_TOO_SMALL),
        Err(_) => Outcome::error(STATUS_INVALID_PARAMETER),
    }
}

/// Stats: the tracker's counters (zero when it could not be created) and why live tracking is
/// off, which only the driver knows. Answered even without a tracker, so that the CLI can say
/// why.
fn stats(input: &[u8], out: &mut [u8]) -> Outcome {
    match wire::decode::<QueryRequest<'_>>(input) {
        Ok(req) if req.query == QueryKind::Stats => {}
        _ => return Outcome::error(STATUS_INVALID_PARAMETER),
    }
    let mut stats = tracking::get()
        .map(DriverTracker::stats)
        .unwrap_or_default();
    #[allow(
        clippy::cast_sign_loss,
        reason = "an NTSTATUS is reported as its 32 bits"
    )]
    let why_off = tracking::status() as u32;
    stats.tracking_status = u64::from(why_off);
    stats.process_exits_tracked = u64::from(crate::process::registered());
    stats.image_loads_tracked = u64::from(crate::images::registered());
    encode_answer(&stats, out)
}

/// Writes `msg` into `out`: the outcome with its exact length, or the error.
pub fn encode_answer<'a, M: protocol::wire::Message<'a>>(msg: &M, out: &mut [u8]) -> Outcome {
    match encode(msg, out) {
        Ok(n) => Outcome::success(n),
        Err(EncodeError::BufferTooSmall { .. }) => Outcome::error(STATUS_BUFFER_TOO_SMALL),
        Err(EncodeError::FieldTooLarge { .. }) => Outcome::error(STATUS_INTERNAL_ERROR),
    }
}
