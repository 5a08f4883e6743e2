//! `IOCTL_HIVETRACK_WAIT_FREE`: a request the driver keeps pending until a hive is free.
//!
//! The request names a hive and a timeout; the driver completes it when no process holds a
//! key in the hive any more, when the hive is unloaded, or when the timeout passes — whichever
//! comes first. The caller cancels it like any I/O (`CancelIoEx`, or by exiting); it then
//! completes with `STATUS_CANCELLED` and no answer.
//!
//! Request body (8 bytes + 2 per hive path unit):
//!
//! | offset | size | field                                                            |
//! |--------|------|------------------------------------------------------------------|
//! | 0      | 4    | timeout in ms; 0 = answer at once; [`WaitFreeRequest::NO_TIMEOUT`] |
//! | 4      | 4    | reserved, zero                                                   |
//! | 8      | 2+2n | hive: its mount point or any key path inside it, UTF-16, not empty |
//!
//! Answer body (56 bytes):
//!
//! | offset | size | field                                                            |
//! |--------|------|------------------------------------------------------------------|
//! | 0      | 2    | outcome ([`WaitOutcome`])                                        |
//! | 2      | 2    | reserved, zero                                                   |
//! | 4      | 4    | hive id (the `hives` and `holders` answers' id)                  |
//! | 8      | 8    | time the driver held the request, in 100 ns units                |
//! | 16     | 40   | completeness of the answer ([`Completeness`]), appended          |
//!
//! "Free" means free of every key object the driver tracks: a key opened before tracking
//! began, or an open the tracker lost, is not in its records. The completeness fields say
//! whether that can be the case; a client that can ask the kernel (`NtQueryOpenSubKeysEx`)
//! must do so before it calls a hive free.

use crate::completeness::Completeness;
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// The input of `IOCTL_HIVETRACK_WAIT_FREE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitFreeRequest<'a> {
    /// Milliseconds to wait at most; 0 answers at once, [`Self::NO_TIMEOUT`] waits until the
    /// hive is free or the request is cancelled.
    pub timeout_ms: u32,
    /// The hive: its mount point, or any key path inside it.
    pub hive: Text<'a>,
}

impl WaitFreeRequest<'_> {
    /// No timeout (the Win32 `INFINITE`).
    pub const NO_TIMEOUT: u32 = u32::MAX;
}

impl<'a> Message<'a> for WaitFreeRequest<'a> {
    const KIND: MessageKind = MessageKind::WaitFreeRequest;

    fn body_len(&self) -> usize {
        8 + self.hive.encoded_len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(self.timeout_ms)?;
        w.zeros(4)?;
        self.hive.encode("hive", w)
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let timeout_ms = r.u32()?;
        r.zeros(4)?;
        let hive = Text::decode(r)?;
        if hive.is_empty() {
            return Err(DecodeError::InvalidField { field: "hive" });
        }
        Ok(Self { timeout_ms, hive })
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum WaitOutcome {
    /// No process holds a key in the hive.
    Free = 1,
    /// The timeout passed while the hive was still held.
    TimedOut = 2,
    /// The hive was unloaded (so it is free too).
    Unloaded = 3,
}

impl WaitOutcome {
    /// Maps a wire value back to an outcome.
    #[must_use]
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Free),
            2 => Some(Self::TimedOut),
            3 => Some(Self::Unloaded),
            _ => None,
        }
    }

    /// True when the hive is free (held by nobody, or gone).
    #[must_use]
    pub const fn is_free(self) -> bool {
        matches!(self, Self::Free | Self::Unloaded)
    }
}

/// The answer to `IOCTL_HIVETRACK_WAIT_FREE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitFreeAnswer {
    /// How the wait ended.
    pub outcome: WaitOutcome,
    /// The hive's id.
    pub hive_id: u32,
    /// How long the driver held the request, in 100 ns units.
    pub waited: u64,
    /// Since when tracking runs and what the hive lost, at completion.
    pub completeness: Completeness,
}

impl Message<'_> for WaitFreeAnswer {
    const KIND: MessageKind = MessageKind::WaitFreeAnswer;

    fn body_len(&self) -> usize {
        16 + Completeness::LEN
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.outcome as u16)?;
        w.zeros(2)?;
        w.u32(self.hive_id)?;
        w.u64(self.waited)?;
        self.completeness.encode(w)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let outcome = WaitOutcome::from_u16(r.u16()?)
            .ok_or(DecodeError::InvalidField { field: "outcome" })?;
        r.zeros(2)?;
        let hive_id = r.u32()?;
        let waited = r.u64()?;
        let completeness = Completeness::decode(r)?;
        Ok(Self {
            outcome,
            hive_id,
            waited,
            completeness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    const HIVE: [u16; 2] = [b'\\' as u16, b'U' as u16];

    /// The exact bytes of a request for `\U` with a 1,000 ms timeout.
    const REQUEST: [u8; 30] = [
        b'H', b'v', b'T', b'k', 7, 0, 9, 0, 30, 0, 0, 0, 0, 0, 0, 0, // header
        0xE8, 3, 0, 0, 0, 0, 0, 0, // 1000 ms, reserved
        2, 0, b'\\', 0, b'U', 0, // hive
    ];

    /// The exact bytes of "free, hive 7, waited 0x0102, tracking since 0x0A, 1 open lost in
    /// the hive since 0x0B, none globally".
    const ANSWER: [u8; 72] = [
        b'H', b'v', b'T', b'k', 7, 0, 10, 0, 72, 0, 0, 0, 0, 0, 0, 0, // header
        1, 0, 0, 0, 7, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, // outcome, hive, waited
        0x0A, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, // tracking since, hive lost
        0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // hive lost since, global lost
        0, 0, 0, 0, 0, 0, 0, 0, // global lost since
    ];

    fn request() -> WaitFreeRequest<'static> {
        WaitFreeRequest {
            timeout_ms: 1000,
            hive: Text::Units(&HIVE),
        }
    }

    fn answer() -> WaitFreeAnswer {
        WaitFreeAnswer {
            outcome: WaitOutcome::Free,
            hive_id: 7,
            waited: 0x0102,
            completeness: Completeness {
                tracking_since: 0x0A,
                hive_lost: 1,
                hive_lost_since: 0x0B,
                global_lost: 0,
                global_lost_since: 0,
            },
        }
    }

    #[test]
    fn golden_bytes_and_round_trip() {
        let mut buf = [0u8; 128];
        let n = encode(&request(), &mut buf).unwrap();
        assert_eq!(buf[..n], REQUEST);
        assert_eq!(decode::<WaitFreeRequest<'_>>(&buf[..n]).unwrap(), request());
        let n = encode(&answer(), &mut buf).unwrap();
        assert_eq!(buf[..n], ANSWER);
        assert_eq!(decode::<WaitFreeAnswer>(&buf[..n]).unwrap(), answer());
    }

    #[test]
    fn rejects_truncation_and_bad_fields() {
        for n in 0..REQUEST.len() {
            assert!(decode::<WaitFreeRequest<'_>>(&REQUEST[..n]).is_err(), "{n}");
        }
        for n in 0..ANSWER.len() {
            assert!(decode::<WaitFreeAnswer>(&ANSWER[..n]).is_err(), "{n}");
        }
        let mut bad = REQUEST;
        bad[20] = 1; // reserved
        assert!(matches!(
            decode::<WaitFreeRequest<'_>>(&bad),
            Err(DecodeError::NonZeroPadding { .. })
        ));
        let empty = WaitFreeRequest {
            timeout_ms: 0,
            hive: Text::EMPTY,
        };
        let mut buf = [0u8; 32];
        let n = encode(&empty, &mut buf).unwrap();
        assert_eq!(
            decode::<WaitFreeRequest<'_>>(&buf[..n]),
            Err(DecodeError::InvalidField { field: "hive" })
        );
        let mut bad = ANSWER;
        bad[16] = 4;
        assert_eq!(
            decode::<WaitFreeAnswer>(&bad),
            Err(DecodeError::InvalidField { field: "outcome" })
        );
        let mut bad = ANSWER;
        bad[18] = 1;
        assert!(decode::<WaitFreeAnswer>(&bad).is_err());
    }

    #[test]
    fn outcomes_round_trip_and_say_whether_the_hive_is_free() {
        for o in [
            WaitOutcome::Free,
            WaitOutcome::TimedOut,
            WaitOutcome::Unloaded,
        ] {
            assert_eq!(WaitOutcome::from_u16(o as u16), Some(o));
        }
        assert_eq!(WaitOutcome::from_u16(0), None);
        assert!(WaitOutcome::Free.is_free());
        assert!(WaitOutcome::Unloaded.is_free());
        assert!(!WaitOutcome::TimedOut.is_free());
    }
}
