//! The driver's event stream, read: `IOCTL_HIVETRACK_WAIT_EVENTS` ([`protocol::events`])
//! sent through a [`Transport`] and its page turned into owned records.

use protocol::events::{Events, EventsPrefix, EventsRequest};
use protocol::history::UnloadRecord;
use protocol::ioctl::{IOCTL_HIVETRACK_GET_VERSION, IOCTL_HIVETRACK_WAIT_EVENTS};
use protocol::page::Page;
use protocol::version::VersionInfo;
use protocol::wire::{self, DecodeError, HEADER_LEN};

use crate::transport::{ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA, Transport, TransportError};

/// Win32 `ERROR_OPERATION_ABORTED` (`STATUS_CANCELLED`): the request was cancelled
/// (`CancelIoEx` when the service stops).
pub const ERROR_OPERATION_ABORTED: u32 = 995;

/// First output buffer of an events request; grown (4×, up to [`MAX_BUFFER`]) while the
/// driver says one record does not fit.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest output buffer.
pub const MAX_BUFFER: usize = 4 * 1024 * 1024;

/// A process in a stream record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHolder {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Keys it held (a key-count alarm: its open keys).
    pub open_keys: u64,
    /// Image path; `None` when the driver had none.
    pub image: Option<String>,
}

/// One record of the stream: an unload attempt, a key-count alarm, or a hive still held
/// the driver's delay after a failed (or deferred) unload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// Sequence number (1 = first since the driver's tracking started).
    pub sequence: u64,
    /// When (FILETIME).
    pub time: u64,
    /// The driver's interrupt time when it made the record (100 ns units since boot), 0 when
    /// not stamped (a key-count alarm): what the service dates the record by when it can read
    /// the same count (`QueryInterruptTime`), whatever the system clock did (review 22d, L3).
    pub interrupt_time: u64,
    /// The unload's NTSTATUS (0 for an alarm; a held-after record: the watched attempt's, an
    /// error or `STATUS_PENDING` for a deferred unload).
    pub outcome: u32,
    /// [`UnloadRecord`] flags.
    pub flags: u16,
    /// The mount point (empty for an alarm).
    pub mount: String,
    /// The driver's id of the hive (0 when it did not know it): which load of the mount the
    /// record is about, as a holders report's `hive.id` names it. A later load of the same
    /// mount has another id.
    pub hive_id: u32,
    /// Keys open in the hive then (an alarm: the process's count).
    pub open_keys: u64,
    /// Processes holding keys then.
    pub holders_total: u32,
    /// The biggest holders (an alarm: the process).
    pub holders: Vec<StreamHolder>,
}

impl StreamRecord {
    /// A key-count alarm, not an unload.
    #[must_use]
    pub const fn is_key_alarm(&self) -> bool {
        self.flags & UnloadRecord::KEY_ALARM != 0
    }

    /// Not an unload either: the driver looked at the hive again its delay after a failed
    /// (or deferred) unload and found it still held (or could not see whether it was).
    /// `outcome` is that attempt's status, so this must be asked before
    /// [`crate::fleet_event::failed`].
    #[must_use]
    pub const fn is_held_after(&self) -> bool {
        self.flags & UnloadRecord::HELD_AFTER != 0
    }

    /// The driver cannot vouch that it saw every open in the hive: processes not listed may
    /// hold keys in it (opened before its tracking began, or opens it lost). So too when it
    /// did not know the hive at all ([`UnloadRecord::UNKNOWN_HIVE`]: it never saw it loaded,
    /// or forgot it), whatever the driver flagged: found in review (2026-12-05), such a 1001
    /// said "No key opened since tracking started held it".
    #[must_use]
    pub const fn holders_unseen(&self) -> bool {
        self.flags & (UnloadRecord::HOLDERS_UNSEEN | UnloadRecord::UNKNOWN_HIVE) != 0
    }
}

/// One answer of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamPage {
    /// The page's prefix: missed events, tracking since, alarm threshold, held-after delay.
    pub prefix: EventsPrefix,
    /// Records, oldest first (empty when the wait timed out).
    pub records: Vec<StreamRecord>,
    /// The sequence number to ask after next, from the page's cursor (0 when it gave none).
    /// It accounts for numbers the driver took and never stored (`missed`): a reader that
    /// asked after its last record instead would be told of them again on every request
    /// (audit 22b, H1).
    pub next_after: u64,
    /// The page delivered everything the driver had numbered when it answered (its cursor is
    /// marked done): nothing more is there now.
    pub done: bool,
}

fn malformed(e: impl std::fmt::Display) -> TransportError {
    TransportError::Os(std::io::Error::other(format!(
        "the driver sent a malformed events page: {e}"
    )))
}

/// Whether the driver says it has the event stream (`VersionInfo::CAP_EVENTS`).
///
/// # Errors
/// The version request's failure, or a malformed answer.
pub fn has_event_stream(transport: &mut dyn Transport) -> Result<bool, TransportError> {
    let mut buf = [0u8; 256];
    let n = transport.ioctl(IOCTL_HIVETRACK_GET_VERSION, &[], &mut buf)?;
    let v = wire::decode::<VersionInfo>(&buf[..n.min(buf.len())]).map_err(malformed)?;
    Ok(v.has(VersionInfo::CAP_EVENTS))
}

/// Asks for the events after sequence `after`, waiting up to `timeout_ms` for one
/// ([`EventsRequest::NO_TIMEOUT`]: until one comes or the request is cancelled).
///
/// # Errors
/// The transport's failure ([`ERROR_OPERATION_ABORTED`] when cancelled), or a malformed
/// answer (another protocol version included).
pub fn wait_events(
    transport: &mut dyn Transport,
    after: u64,
    timeout_ms: u32,
    buf: &mut Vec<u8>,
) -> Result<StreamPage, TransportError> {
    let req = EventsRequest {
        after,
        timeout_ms,
        max_records: 0,
    };
    request_events(transport, &req, buf)
}

/// The event stream's prefix (tracking since, missed events, thresholds) without its history.
///
/// Asked with no wait and at most one record: a listing's scope needs only the prefix; with
/// no limit, each listing copied a whole page of unload history.
///
/// # Errors
/// As for [`wait_events`].
pub fn stream_prefix(transport: &mut dyn Transport) -> Result<EventsPrefix, TransportError> {
    let req = EventsRequest {
        after: u64::MAX,
        timeout_ms: 0,
        max_records: 1,
    };
    let mut buf = Vec::new();
    request_events(transport, &req, &mut buf).map(|page| page.prefix)
}

/// The event stream's prefix asked from its start (`after` 0, no wait, one record).
///
/// Its `missed` is then how many event numbers before the oldest entry the driver still holds
/// it no longer keeps (evicted by newer ones: the history holds 32 entries, key-count alarms
/// and held-after records among them; or never stored), with `tracking_since`.
///
/// # Errors
/// As for [`wait_events`].
pub fn stream_head(transport: &mut dyn Transport) -> Result<EventsPrefix, TransportError> {
    let req = EventsRequest {
        after: 0,
        timeout_ms: 0,
        max_records: 1,
    };
    let mut buf = Vec::new();
    request_events(transport, &req, &mut buf).map(|page| page.prefix)
}

/// Sends one events request, growing `buf` while the driver says it is too small.
fn request_events(
    transport: &mut dyn Transport,
    req: &EventsRequest,
    buf: &mut Vec<u8>,
) -> Result<StreamPage, TransportError> {
    let mut input = [0u8; 64];
    let len = wire::encode(req, &mut input).map_err(malformed)?;
    if buf.len() < INITIAL_BUFFER {
        buf.resize(INITIAL_BUFFER, 0);
    }
    let n = loop {
        match transport.ioctl(IOCTL_HIVETRACK_WAIT_EVENTS, &input[..len], buf) {
            Ok(n) => break n.min(buf.len()),
            Err(TransportError::Request {
                code: ERROR_INSUFFICIENT_BUFFER | ERROR_MORE_DATA,
            }) if buf.len() < MAX_BUFFER => {
                let grown = (buf.len() * 4).min(MAX_BUFFER);
                buf.resize(grown, 0);
            }
            Err(e) => return Err(e),
        }
    };
    let answer = &buf[..n];
    if answer.len() >= HEADER_LEN
        && let Err(DecodeError::UnsupportedVersion { found }) = wire::decode_header(answer)
    {
        return Err(malformed(format!(
            "protocol version {found}, this client speaks {}",
            protocol::PROTOCOL_VERSION
        )));
    }
    let page = wire::decode::<Page<'_, Events>>(answer).map_err(malformed)?;
    let records = page
        .records()
        .map(|r| StreamRecord {
            sequence: r.sequence,
            time: r.time,
            interrupt_time: r.interrupt_time,
            outcome: r.outcome,
            flags: r.flags,
            mount: r.mount.to_string(),
            hive_id: r.hive_id,
            open_keys: r.open_keys,
            holders_total: r.holders_total,
            holders: r
                .holders
                .iter()
                .map(|h| StreamHolder {
                    pid: h.pid,
                    start_key: h.start_key,
                    open_keys: h.open_keys,
                    image: (!h.image.is_empty()).then(|| h.image.to_string()),
                })
                .collect(),
        })
        .collect();
    Ok(StreamPage {
        prefix: page.prefix,
        records,
        next_after: EventsRequest::after_cursor(&page.info.next),
        done: page.info.flags & protocol::page::PageInfo::DONE != 0,
    })
}

#[cfg(test)]
mod tests {
    use protocol::events::EventsRequest;
    use protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS;
    use protocol::wire;

    use super::stream_prefix;
    use crate::transport::{Transport, TransportError};

    /// Keeps the events requests it is sent and refuses them.
    struct Recorder(Vec<EventsRequest>);

    impl Transport for Recorder {
        fn backend(&self) -> &'static str {
            "recorder"
        }

        fn ioctl(
            &mut self,
            code: u32,
            input: &[u8],
            _output: &mut [u8],
        ) -> Result<usize, TransportError> {
            assert_eq!(code, IOCTL_HIVETRACK_WAIT_EVENTS);
            self.0.push(wire::decode::<EventsRequest>(input).unwrap());
            Err(TransportError::Request { code: 1 })
        }
    }

    #[test]
    fn the_prefix_is_asked_for_without_the_history_or_a_wait() {
        let mut t = Recorder(Vec::new());
        assert!(stream_prefix(&mut t).is_err());
        assert_eq!(t.0.len(), 1);
        assert_eq!(
            t.0[0].max_records, 1,
            "a listing needs no page of unload history"
        );
        assert_eq!(t.0[0].timeout_ms, 0, "a listing never waits for an event");
    }
}
