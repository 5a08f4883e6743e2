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
///
/// A `holders` report asks about every duplicate of its hive's
/// handles, and the driver answers each request with one pass over all its records: at 64
/// a request, a hive held through 65,536 handles cost 1,024 such passes; at 2,048, 32. The
/// driver's scratch for one request is `n × (32 + 16)` bytes (96 KiB at most, three times
/// the request's own system buffer, which the I/O manager allocates from non-paged pool for
/// every `METHOD_BUFFERED` request anyway), freed before the request completes.
pub const MAX_IDENTIFY: usize = 2048;

/// An element of a request or an answer: its size on the wire, how it is read back (from
/// bytes validated when the message was decoded), and how it is written.
trait Element: Copy {
    /// Bytes per element on the wire.
    const WIDTH: usize;
    /// Reads one element from exactly [`Self::WIDTH`] validated bytes.
    fn read(bytes: &[u8]) -> Self;
    /// The element as the wire carries it.
    fn as_written(self) -> Self {
        self
    }
}

/// The elements of a request or an answer: the caller's values, or the bytes of a decoded
/// message (`WIDTH × n` of them, validated when decoded).
#[derive(Clone, Copy)]
enum Borrowed<'a, T> {
    Values(&'a [T]),
    Wire(&'a [u8]),
}

impl<'a, T: Element> Borrowed<'a, T> {
    /// The caller's `values`, 1 to [`MAX_IDENTIFY`] of them; `None` otherwise.
    const fn values(values: &'a [T]) -> Option<Self> {
        if values.is_empty() || values.len() > MAX_IDENTIFY {
            return None;
        }
        Some(Self::Values(values))
    }

    const fn len(&self) -> usize {
        match self {
            Self::Values(v) => v.len(),
            Self::Wire(b) => b.len() / T::WIDTH,
        }
    }

    /// Element `i` as written on the wire, if there is one.
    fn get(&self, i: usize) -> Option<T> {
        if i >= self.len() {
            return None; // and `i * WIDTH` below cannot overflow
        }
        match self {
            Self::Values(v) => v.get(i).map(|e| e.as_written()),
            Self::Wire(b) => b.get(i * T::WIDTH..(i + 1) * T::WIDTH).map(T::read),
        }
    }

    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl Element for u64 {
    const WIDTH: usize = 8;
    fn read(bytes: &[u8]) -> Self {
        let mut v = [0u8; 8];
        v.copy_from_slice(bytes);
        Self::from_le_bytes(v)
    }
}

/// The input of `IOCTL_HIVETRACK_IDENTIFY_HANDLES`, borrowed: a decoded request reads its
/// handles from the message's bytes, so the driver holds no copy of up to [`MAX_IDENTIFY`]
/// of them on its stack.
#[derive(Clone, Copy)]
pub struct IdentifyRequest<'a> {
    handles: Borrowed<'a, u64>,
}

impl<'a> IdentifyRequest<'a> {
    /// A request for `handles` (1 to [`MAX_IDENTIFY`] of them); `None` otherwise.
    #[must_use]
    pub const fn new(handles: &'a [u64]) -> Option<Self> {
        match Borrowed::values(handles) {
            Some(handles) => Some(Self { handles }),
            None => None,
        }
    }

    /// How many handles (1 to [`MAX_IDENTIFY`]).
    #[must_use]
    pub const fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: a request holds at least one handle.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handle `i`, if there is one.
    #[must_use]
    pub fn handle(&self, i: usize) -> Option<u64> {
        self.handles.get(i)
    }

    /// The handles, in order.
    pub fn handles(&self) -> impl Iterator<Item = u64> + '_ {
        self.handles.iter()
    }
}

/// How many entries a `Debug` line shows (a full answer is 2,048 of them).
const DEBUG_SHOWN: usize = 8;

impl core::fmt::Debug for IdentifyRequest<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyRequest")
            .field("len", &self.len())
            .field(
                "handles",
                &DebugFirst(|| self.handles().take(DEBUG_SHOWN), self.len()),
            )
            .finish()
    }
}

impl core::fmt::Debug for IdentifyAnswer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyAnswer")
            .field("len", &self.len())
            .field(
                "entries",
                &DebugFirst(|| self.entries().take(DEBUG_SHOWN), self.len()),
            )
            .finish()
    }
}

/// The first [`DEBUG_SHOWN`] items of a sequence of `len`, as a list (then `..`).
struct DebugFirst<F>(F, usize);

impl<F, I> core::fmt::Debug for DebugFirst<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: core::fmt::Debug,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut list = f.debug_list();
        list.entries((self.0)());
        if self.1 > DEBUG_SHOWN {
            list.entry(&format_args!(".."));
        }
        list.finish()
    }
}

impl PartialEq for IdentifyRequest<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.handles().eq(other.handles())
    }
}

impl Eq for IdentifyRequest<'_> {}

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

impl<'a> Message<'a> for IdentifyRequest<'a> {
    const KIND: MessageKind = MessageKind::IdentifyRequest;

    fn body_len(&self) -> usize {
        8 + 8 * self.len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_count(w, self.len())?;
        for h in self.handles() {
            w.u64(h)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = count(r)?;
        Ok(Self {
            handles: Borrowed::Wire(r.bytes(8 * n)?),
        })
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

impl Identified {
    /// As written on the wire: an entry that is not Tracked carries id 0 whatever it holds.
    const fn normalised(self) -> Self {
        Self {
            outcome: self.outcome,
            id: match self.outcome {
                IdentifyOutcome::Tracked => self.id,
                _ => 0,
            },
        }
    }
}

impl Element for Identified {
    const WIDTH: usize = 16;
    fn read(bytes: &[u8]) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Self {
            outcome: IdentifyOutcome::from_u16(u16::from_le_bytes([bytes[0], bytes[1]]))
                .unwrap_or_default(),
            id: u64::from_le_bytes(id),
        }
    }
    fn as_written(self) -> Self {
        self.normalised()
    }
}

/// The answer to `IOCTL_HIVETRACK_IDENTIFY_HANDLES`, borrowed like [`IdentifyRequest`].
#[derive(Clone, Copy)]
pub struct IdentifyAnswer<'a> {
    entries: Borrowed<'a, Identified>,
}

impl<'a> IdentifyAnswer<'a> {
    /// An answer for `entries` (1 to [`MAX_IDENTIFY`]); `None` otherwise. An entry that is not
    /// Tracked is written with id 0 whatever it holds.
    #[must_use]
    pub const fn new(entries: &'a [Identified]) -> Option<Self> {
        match Borrowed::values(entries) {
            Some(entries) => Some(Self { entries }),
            None => None,
        }
    }

    /// How many entries (as many as the request had handles).
    #[must_use]
    pub const fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: an answer holds at least one entry.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` (the answer for the request's handle `i`), as written on the wire.
    #[must_use]
    pub fn entry(&self, i: usize) -> Option<Identified> {
        self.entries.get(i)
    }

    /// The entries, in request order.
    pub fn entries(&self) -> impl Iterator<Item = Identified> + '_ {
        self.entries.iter()
    }

    /// The size of the encoded answer for `n` handles (header included).
    #[must_use]
    pub const fn encoded_len(n: usize) -> usize {
        crate::wire::HEADER_LEN + 8 + 16 * n
    }
}

impl<'a> Message<'a> for IdentifyAnswer<'a> {
    const KIND: MessageKind = MessageKind::IdentifyAnswer;

    fn body_len(&self) -> usize {
        8 + 16 * self.len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_count(w, self.len())?;
        for e in self.entries() {
            w.u16(e.outcome as u16)?;
            w.zeros(6)?;
            w.u64(e.id)?;
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = count(r)?;
        let bytes = r.bytes(16 * n)?;
        for e in bytes.chunks_exact(16) {
            let mut entry = Reader::new(e);
            let outcome = IdentifyOutcome::from_u16(entry.u16()?)
                .ok_or(DecodeError::InvalidField { field: "outcome" })?;
            entry.zeros(6)?;
            let id = entry.u64()?;
            if outcome != IdentifyOutcome::Tracked && id != 0 {
                return Err(DecodeError::InvalidField { field: "id" });
            }
        }
        Ok(Self {
            entries: Borrowed::Wire(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    /// The exact bytes of a two-handle request.
    const REQUEST: [u8; 40] = [
        b'H', b'v', b'T', b'k', 7, 0, 11, 0, 40, 0, 0, 0, 0, 0, 0, 0, // header
        2, 0, 0, 0, 0, 0, 0, 0, // n = 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0, // 0x1234
        0x80, 0, 0, 0, 0, 0, 0, 0x80, // a kernel-handle-looking value
    ];

    /// The exact bytes of its answer: one tracked key, one invalid handle.
    const ANSWER: [u8; 56] = [
        b'H', b'v', b'T', b'k', 7, 0, 12, 0, 56, 0, 0, 0, 0, 0, 0, 0, // header
        2, 0, 0, 0, 0, 0, 0, 0, // n = 2
        1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, // tracked, id 0x3_0000_0007
        3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // invalid handle
    ];

    const ENTRIES: [Identified; 2] = [
        Identified {
            outcome: IdentifyOutcome::Tracked,
            id: 0x3_0000_0007,
        },
        Identified {
            outcome: IdentifyOutcome::InvalidHandle,
            id: 99,
        },
    ];

    fn answer() -> IdentifyAnswer<'static> {
        IdentifyAnswer::new(&ENTRIES).unwrap()
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
        assert_eq!(back.len(), 2);
        assert_eq!(back.entry(0).unwrap().id, 0x3_0000_0007);
        assert_eq!(back.entry(2), None);
        assert_eq!(
            back.entry(1).unwrap(),
            Identified {
                outcome: IdentifyOutcome::InvalidHandle,
                id: 0
            }
        );
    }

    #[test]
    fn counts_outside_one_to_the_maximum_are_refused() {
        assert!(IdentifyRequest::new(&[]).is_none());
        assert!(IdentifyRequest::new(&vec![4; MAX_IDENTIFY + 1]).is_none());
        assert!(IdentifyRequest::new(&vec![4; MAX_IDENTIFY]).is_some());
        assert!(IdentifyAnswer::new(&[]).is_none());
        assert!(IdentifyAnswer::new(&vec![Identified::default(); MAX_IDENTIFY + 1]).is_none());
        let too_many = u32::try_from(MAX_IDENTIFY + 1).unwrap().to_le_bytes();
        for n in [[0u8; 4], too_many, [0xFF; 4]] {
            let mut bad = REQUEST;
            bad[16..20].copy_from_slice(&n);
            assert!(decode::<IdentifyRequest>(&bad).is_err(), "count {n:?}");
        }
    }

    #[test]
    fn a_full_request_and_its_answer_round_trip() {
        let handles: Vec<u64> = (1..=MAX_IDENTIFY as u64).map(|h| h * 4).collect();
        let req = IdentifyRequest::new(&handles).unwrap();
        let mut buf = vec![0u8; crate::wire::HEADER_LEN + 8 + 8 * MAX_IDENTIFY];
        let n = encode(&req, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        let back = decode::<IdentifyRequest>(&buf).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.handles().collect::<Vec<_>>(), handles);
        let entries: Vec<Identified> = handles
            .iter()
            .map(|&h| Identified {
                outcome: if h % 8 == 0 {
                    IdentifyOutcome::Tracked
                } else {
                    IdentifyOutcome::NotTracked
                },
                id: h,
            })
            .collect();
        let answer = IdentifyAnswer::new(&entries).unwrap();
        let mut buf = vec![0u8; IdentifyAnswer::encoded_len(MAX_IDENTIFY)];
        let n = encode(&answer, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        let back = decode::<IdentifyAnswer>(&buf).unwrap();
        let expected: Vec<Identified> = entries.iter().map(|e| e.normalised()).collect();
        assert_eq!(back.entries().collect::<Vec<_>>(), expected);
        assert!(expected.iter().any(|e| e.id == 0) && expected.iter().any(|e| e.id != 0));
    }

    #[test]
    fn an_index_past_the_end_is_none_however_large() {
        let req = decode::<IdentifyRequest>(&REQUEST).unwrap();
        let answer = decode::<IdentifyAnswer>(&ANSWER).unwrap();
        for i in [2, 1 << 60, 1 << 61, usize::MAX] {
            assert_eq!(req.handle(i), None, "{i}");
            assert_eq!(answer.entry(i), None, "{i}");
        }
        assert_eq!(req.handle(1), Some(0x8000_0000_0000_0080));
        let shown = format!("{answer:?}");
        assert!(shown.contains("Tracked") && shown.len() < 400, "{shown}");
    }

    #[test]
    fn malformed_inputs_are_refused() {
        // A count smaller than the handles (or entries) present.
        let mut bad = REQUEST;
        bad[16] = 1;
        assert!(decode::<IdentifyRequest>(&bad).is_err());
        let mut bad = ANSWER;
        bad[16] = 1;
        assert!(decode::<IdentifyAnswer>(&bad).is_err());
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
