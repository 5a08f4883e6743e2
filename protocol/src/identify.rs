//! `IOCTL_HIVETRACK_IDENTIFY_HANDLES`: which tracked key each of the caller's handles is.
//!
//! The holder of a key now is not always its opener: `DuplicateHandle` and inheritance give
//! another process a handle with no registry notification. A client finds key handles in the
//! system handle table, duplicates each into its own process and asks the driver which
//! tracked key object each duplicate refers to. The driver resolves the caller's handles
//! itself (`ObReferenceObjectByHandle` in the caller's context, `UserMode`) and answers with
//! the key ids of its `holders` answers — never an object address.
//!
//! Request body (8 + 8n bytes, 1 ≤ n ≤ [`MAX_IDENTIFY`]):
//!
//! | offset | size | field                                     |
//! |--------|------|-------------------------------------------|
//! | 0      | 4    | n, the number of handles                  |
//! | 4      | 4    | reserved, zero                            |
//! | 8      | 8n   | handles (values in the caller's process)  |
//!
//! Answer body (8 + 16n bytes, the same n, in request order):
//!
//! | offset | size | field                                     |
//! |--------|------|-------------------------------------------|
//! | 0      | 4    | n                                         |
//! | 4      | 4    | reserved, zero                            |
//! | 8+16i  | 2    | outcome ([`IdentifyOutcome`])             |
//! | 10+16i | 6    | reserved, zero                            |
//! | 16+16i | 8    | key id (0 unless the outcome is Tracked)  |

use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// Most handles in one request.
pub const MAX_IDENTIFY: usize = 64;

/// The input of `IOCTL_HIVETRACK_IDENTIFY_HANDLES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyRequest {
    n: usize,
    handles: [u64; MAX_IDENTIFY],
}

impl IdentifyRequest {
    /// A request for `handles` (1 to [`MAX_IDENTIFY`] of them); `None` otherwise.
    #[must_use]
    pub fn new(handles: &[u64]) -> Option<Self> {
        if handles.is_empty() || handles.len() > MAX_IDENTIFY {
            return None;
        }
        let mut all = [0; MAX_IDENTIFY];
        all[..handles.len()].copy_from_slice(handles);
        Some(Self {
            n: handles.len(),
            handles: all,
        })
    }

    /// The handles, in order.
    #[must_use]
    pub fn handles(&self) -> &[u64] {
        &self.handles[..self.n]
    }
}

fn count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let n = r.u32()? as usize;
    r.zeros(4)?;
    if n == 0 || n > MAX_IDENTIFY {
        return Err(DecodeError::InvalidField { field: "count" });
    }
    Ok(n)
}

#[allow(clippy::cast_possible_truncation, reason = "n <= MAX_IDENTIFY")]
fn encode_count(w: &mut Writer<'_>, n: usize) -> Result<(), EncodeError> {
    w.u32(n as u32)?;
    w.zeros(4)
}

impl Message<'_> for IdentifyRequest {
    const KIND: MessageKind = MessageKind::IdentifyRequest;

    fn body_len(&self) -> usize {
        8 + 8 * self.n
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_count(w, self.n)?;
        for &h in self.handles() {
            w.u64(h)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = count(r)?;
        let mut handles = [0; MAX_IDENTIFY];
        for h in &mut handles[..n] {
            *h = r.u64()?;
        }
        Ok(Self { n, handles })
    }
}

/// What the driver found behind one handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum IdentifyOutcome {
    /// A key object the driver tracks: the id is its key id in `holders` answers.
    Tracked = 1,
    /// A valid handle, but to no object the driver tracks (a key opened before tracking
    /// started, an open it lost, or not a key at all).
    #[default]
    NotTracked = 2,
    /// Not a handle in the caller's process (`ObReferenceObjectByHandle` failed).
    InvalidHandle = 3,
}

impl IdentifyOutcome {
    /// Maps a wire value back.
    #[must_use]
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Tracked),
            2 => Some(Self::NotTracked),
            3 => Some(Self::InvalidHandle),
            _ => None,
        }
    }
}

/// One handle's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Identified {
    /// What the handle is.
    pub outcome: IdentifyOutcome,
    /// The key id (0 unless [`IdentifyOutcome::Tracked`]).
    pub id: u64,
}

/// The answer to `IOCTL_HIVETRACK_IDENTIFY_HANDLES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyAnswer {
    n: usize,
    entries: [Identified; MAX_IDENTIFY],
}

impl IdentifyAnswer {
    /// An answer for `entries` (1 to [`MAX_IDENTIFY`]); `None` otherwise. An entry that is not
    /// Tracked is written with id 0 whatever it holds.
    #[must_use]
    pub fn new(entries: &[Identified]) -> Option<Self> {
        if entries.is_empty() || entries.len() > MAX_IDENTIFY {
            return None;
        }
        let mut all = [Identified::default(); MAX_IDENTIFY];
        for (d, s) in all.iter_mut().zip(entries) {
            *d = Identified {
                outcome: s.outcome,
                id: if s.outcome == IdentifyOutcome::Tracked {
                    s.id
                } else {
                    0
                },
            };
        }
        Some(Self {
            n: entries.len(),
            entries: all,
        })
    }

    /// The entries, in request order.
    #[must_use]
    pub fn entries(&self) -> &[Identified] {
        &self.entries[..self.n]
    }

    /// The size of the encoded answer for `n` handles (header included).
    #[must_use]
    pub const fn encoded_len(n: usize) -> usize {
        crate::wire::HEADER_LEN + 8 + 16 * n
    }
}

impl Message<'_> for IdentifyAnswer {
    const KIND: MessageKind = MessageKind::IdentifyAnswer;

    fn body_len(&self) -> usize {
        8 + 16 * self.n
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_count(w, self.n)?;
        for e in self.entries() {
            w.u16(e.outcome as u16)?;
            w.zeros(6)?;
            w.u64(e.id)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = count(r)?;
        let mut entries = [Identified::default(); MAX_IDENTIFY];
        for e in &mut entries[..n] {
            let outcome = IdentifyOutcome::from_u16(r.u16()?)
                .ok_or(DecodeError::InvalidField { field: "outcome" })?;
            r.zeros(6)?;
            let id = r.u64()?;
            if outcome != IdentifyOutcome::Tracked && id != 0 {
                return Err(DecodeError::InvalidField { field: "id" });
            }
            *e = Identified { outcome, id };
        }
        Ok(Self { n, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    /// The exact bytes of a two-handle request.
    const REQUEST: [u8; 40] = [
        b'H', b'v', b'T', b'k', 3, 0, 11, 0, 40, 0, 0, 0, 0, 0, 0, 0, // header
        2, 0, 0, 0, 0, 0, 0, 0, // n = 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0, // 0x1234
        0x80, 0, 0, 0, 0, 0, 0, 0x80, // a kernel-handle-looking value
    ];

    /// The exact bytes of its answer: one tracked key, one invalid handle.
    const ANSWER: [u8; 56] = [
        b'H', b'v', b'T', b'k', 3, 0, 12, 0, 56, 0, 0, 0, 0, 0, 0, 0, // header
        2, 0, 0, 0, 0, 0, 0, 0, // n = 2
        1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, // tracked, id 0x3_0000_0007
        3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // invalid handle
    ];

    fn answer() -> IdentifyAnswer {
        IdentifyAnswer::new(&[
            Identified {
                outcome: IdentifyOutcome::Tracked,
                id: 0x3_0000_0007,
            },
            Identified {
                outcome: IdentifyOutcome::InvalidHandle,
                id: 99,
            },
        ])
        .unwrap()
    }

    #[test]
    fn encode_to_the_golden_bytes() {
        let req = IdentifyRequest::new(&[0x1234, 0x8000_0000_0000_0080]).unwrap();
        let mut buf = [0xA5u8; 64];
        let n = encode(&req, &mut buf).unwrap();
        assert_eq!(buf[..n], REQUEST);
        assert_eq!(decode::<IdentifyRequest>(&REQUEST).unwrap(), req);
        let mut buf = [0xA5u8; 64];
        let n = encode(&answer(), &mut buf).unwrap();
        assert_eq!(n, IdentifyAnswer::encoded_len(2));
        assert_eq!(buf[..n], ANSWER, "an untracked entry's id is written as 0");
        assert!(
            buf[n..].iter().all(|&b| b == 0xA5),
            "wrote past the message"
        );
        let back = decode::<IdentifyAnswer>(&ANSWER).unwrap();
        assert_eq!(back.entries()[0].id, 0x3_0000_0007);
        assert_eq!(
            back.entries()[1],
            Identified {
                outcome: IdentifyOutcome::InvalidHandle,
                id: 0
            }
        );
    }

    #[test]
    fn counts_outside_one_to_sixty_four_are_refused() {
        assert!(IdentifyRequest::new(&[]).is_none());
        assert!(IdentifyRequest::new(&[4; MAX_IDENTIFY + 1]).is_none());
        assert!(IdentifyRequest::new(&[4; MAX_IDENTIFY]).is_some());
        for n in [0u8, 65, 255] {
            let mut bad = REQUEST;
            bad[16] = n;
            assert!(decode::<IdentifyRequest>(&bad).is_err(), "count {n}");
        }
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let mut bad = REQUEST;
        bad[20] = 1; // reserved
        assert!(decode::<IdentifyRequest>(&bad).is_err());
        // A count larger than the handles present.
        let mut bad = REQUEST;
        bad[16] = 3;
        assert!(decode::<IdentifyRequest>(&bad).is_err());
        for len in 0..REQUEST.len() {
            assert!(decode::<IdentifyRequest>(&REQUEST[..len]).is_err(), "{len}");
        }
        let mut bad = ANSWER;
        bad[24] = 4; // unknown outcome
        assert!(decode::<IdentifyAnswer>(&bad).is_err());
        let mut bad = ANSWER;
        bad[48] = 1; // an id on an invalid handle
        assert!(decode::<IdentifyAnswer>(&bad).is_err());
        let mut bad = ANSWER;
        bad[27] = 1; // reserved
        assert!(decode::<IdentifyAnswer>(&bad).is_err());
    }
}
