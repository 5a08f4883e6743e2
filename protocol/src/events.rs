//! The event stream (issue 17): what a collector (the `hivetrack service`) drains from the
//! driver to put in the Windows Event Log, in order, with every loss counted.
//!
//! Events are the driver's unload history ([`crate::history`]) read by sequence number: a
//! hive unload attempt with the processes that held keys in the hive at that moment, and a
//! key-count alarm ([`UnloadRecord::KEY_ALARM`]: a process reached the alarm threshold of
//! open keys, the 65,602-handle leak; its record names no hive, `open_keys` is the process's
//! count and its one holder is the process), and a hive still held after a failed unload
//! ([`UnloadRecord::HELD_AFTER`]: the driver looked again the configured delay after the
//! attempt and some process still held a key in it, or it could not see whether one did).
//! The history is a bounded ring in the driver's
//! memory budget: a collector that falls behind is told how many events it missed.
//!
//! `IOCTL_HIVETRACK_WAIT_EVENTS` takes an [`EventsRequest`] (the last sequence number the
//! caller has, and how long to wait) and answers an [`Events`] page once an event after it
//! exists, or when the timeout passes (an empty page), or `STATUS_CANCELLED` when the caller
//! cancels. The page's next cursor carries the sequence number to ask after next
//! ([`EventsRequest::after_cursor`]).
//!
//! Request body: after u64 (0: from the oldest kept), timeout in ms u32 (0 answers at once;
//! [`EventsRequest::NO_TIMEOUT`]), max records u32 (0: as many as fit).
//!
//! Page prefix: missed u64 (events after `after` no longer kept when this page was
//! written), tracking since u64 (when the driver's tracking started: another value means the
//! driver restarted and sequence numbers started again at 1), key alarm threshold u64 (0:
//! alarms off), held-after delay in seconds u64 (0: the driver does not look again after a
//! failed unload).

use crate::cursor::Cursor;
use crate::history::UnloadRecord;
use crate::page::{Codec, PageKind};
use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// The input of `IOCTL_HIVETRACK_WAIT_EVENTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsRequest {
    /// The last sequence number the caller has (0: none).
    pub after: u64,
    /// Milliseconds to wait for an event at most; 0 answers at once.
    pub timeout_ms: u32,
    /// At most this many events in the answer; 0: as many as fit.
    pub max_records: u32,
}

impl EventsRequest {
    /// Wait until an event comes or the request is cancelled.
    pub const NO_TIMEOUT: u32 = u32::MAX;

    /// The sequence number a page's next cursor says to ask after.
    #[must_use]
    pub const fn after_cursor(next: &Cursor) -> u64 {
        next.0[0]
    }
}

impl Message<'_> for EventsRequest {
    const KIND: MessageKind = MessageKind::EventsRequest;

    fn body_len(&self) -> usize {
        16
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.after)?;
        w.u32(self.timeout_ms)?;
        w.u32(self.max_records)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            after: r.u64()?,
            timeout_ms: r.u32()?,
            max_records: r.u32()?,
        })
    }
}

/// What an events page says about the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsPrefix {
    /// Events after the request's `after` that were no longer kept (overflow).
    pub missed: u64,
    /// When the driver's tracking started (a new value: the driver restarted).
    pub tracking_since: u64,
    /// Open keys per process that raise a key-count alarm (0: alarms off).
    pub key_alarm_threshold: u64,
    /// Seconds after a failed unload attempt at which the driver looks at the hive again
    /// and reports it if still held ([`UnloadRecord::HELD_AFTER`]); 0: it does not.
    pub held_after_seconds: u64,
}

impl Codec<'_> for EventsPrefix {
    fn encoded_len(&self) -> usize {
        32
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.missed)?;
        w.u64(self.tracking_since)?;
        w.u64(self.key_alarm_threshold)?;
        w.u64(self.held_after_seconds)
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            missed: r.u64()?,
            tracking_since: r.u64()?,
            key_alarm_threshold: r.u64()?,
            held_after_seconds: r.u64()?,
        })
    }
}

/// The events page ([`MessageKind::EventsPage`]): unload records, oldest first.
#[derive(Clone, Copy, Debug)]
pub struct Events;

impl PageKind for Events {
    const KIND: MessageKind = MessageKind::EventsPage;
    type Prefix<'a> = EventsPrefix;
    type Record<'a> = UnloadRecord<'a>;

    fn check_sequence(
        prev: Option<&UnloadRecord<'_>>,
        rec: &UnloadRecord<'_>,
    ) -> Result<(), DecodeError> {
        match prev {
            Some(p) if p.sequence >= rec.sequence => Err(DecodeError::InvalidField {
                field: "event sequence",
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    #[test]
    fn request_golden_and_round_trip() {
        let req = EventsRequest {
            after: 0x0102,
            timeout_ms: EventsRequest::NO_TIMEOUT,
            max_records: 3,
        };
        let mut buf = [0u8; 64];
        let n = encode(&req, &mut buf).unwrap();
        assert_eq!(
            buf[..n],
            [
                b'H', b'v', b'T', b'k', 7, 0, 17, 0, 32, 0, 0, 0, 0, 0, 0, 0, // header
                2, 1, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 3, 0, 0, 0,
            ]
        );
        assert_eq!(decode::<EventsRequest>(&buf[..n]).unwrap(), req);
        for k in 0..n {
            assert!(decode::<EventsRequest>(&buf[..k]).is_err());
        }
    }
}
