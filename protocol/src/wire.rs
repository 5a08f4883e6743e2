//! Wire format: the header every message starts with, bounded little-endian writers and
//! readers, and the encode/decode entry points.
//!
//! Layout of the header (16 bytes, little-endian):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 4    | magic `b"HvTk"`                         |
//! | 4      | 2    | protocol version ([`crate::PROTOCOL_VERSION`]) |
//! | 6      | 2    | message kind ([`MessageKind`])          |
//! | 8      | 4    | total size in bytes, header included    |
//! | 12     | 4    | reserved, zero                          |

use core::fmt;

/// Magic number at offset 0 of every message.
pub const MAGIC: [u8; 4] = *b"HvTk";
/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 16;

/// What a message is. The numeric values are part of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// [`crate::version::VersionInfo`], the answer to `IOCTL_HIVETRACK_GET_VERSION`.
    VersionInfo = 1,
    /// [`crate::request::QueryRequest`], the input of every query IOCTL.
    QueryRequest = 2,
    /// A [`crate::holders::Holders`] page.
    HoldersPage = 3,
    /// A [`crate::hives::Hives`] page.
    HivesPage = 4,
    /// A [`crate::processes::Processes`] page.
    ProcessesPage = 5,
    /// [`crate::stats::Stats`].
    Stats = 6,
    /// A [`crate::snapshot::Snapshot`] page.
    SnapshotPage = 7,
    /// A [`crate::history::UnloadHistory`] page.
    UnloadHistoryPage = 8,
    /// [`crate::wait::WaitFreeRequest`], the input of `IOCTL_HIVETRACK_WAIT_FREE`.
    WaitFreeRequest = 9,
    /// [`crate::wait::WaitFreeAnswer`], its answer.
    WaitFreeAnswer = 10,
    /// [`crate::identify::IdentifyRequest`], the input of `IOCTL_HIVETRACK_IDENTIFY_HANDLES`.
    IdentifyRequest = 11,
    /// [`crate::identify::IdentifyAnswer`], its answer.
    IdentifyAnswer = 12,
    /// [`crate::capture::CaptureRequest`], the input of `IOCTL_HIVETRACK_CAPTURE`.
    CaptureRequest = 13,
    /// [`crate::capture::CaptureState`], its answer.
    CaptureState = 14,
    /// A [`crate::stacks::Stacks`] page.
    StacksPage = 15,
    /// A [`crate::modules::Modules`] page.
    ModulesPage = 16,
    /// [`crate::events::EventsRequest`], the input of `IOCTL_HIVETRACK_WAIT_EVENTS`.
    EventsRequest = 17,
    /// An [`crate::events::Events`] page, its answer.
    EventsPage = 18,
}

impl MessageKind {
    /// Maps a wire value back to a kind.
    #[must_use]
    pub const fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::VersionInfo),
            2 => Some(Self::QueryRequest),
            3 => Some(Self::HoldersPage),
            4 => Some(Self::HivesPage),
            5 => Some(Self::ProcessesPage),
            6 => Some(Self::Stats),
            7 => Some(Self::SnapshotPage),
            8 => Some(Self::UnloadHistoryPage),
            9 => Some(Self::WaitFreeRequest),
            10 => Some(Self::WaitFreeAnswer),
            11 => Some(Self::IdentifyRequest),
            12 => Some(Self::IdentifyAnswer),
            13 => Some(Self::CaptureRequest),
            14 => Some(Self::CaptureState),
            15 => Some(Self::StacksPage),
            16 => Some(Self::ModulesPage),
            17 => Some(Self::EventsRequest),
            18 => Some(Self::EventsPage),
            _ => None,
        }
    }
}

/// The decoded header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the sender.
    pub version: u16,
    /// Kind of the message that follows.
    pub kind: MessageKind,
    /// Total size, header included.
    pub size: u32,
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer holds `available` bytes; the message needs `needed`.
    BufferTooSmall {
        /// Bytes the whole message needs.
        needed: usize,
        /// Bytes the caller provided.
        available: usize,
    },
    /// A field does not fit its wire width (a string over 65,535 UTF-16 units, say).
    FieldTooLarge {
        /// The field's name.
        field: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed, available } => {
                write!(f, "buffer too small: need {needed} bytes, have {available}")
            }
            Self::FieldTooLarge { field } => write!(f, "field `{field}` is too large to encode"),
        }
    }
}

/// Why a message could not be decoded. Every malformed input maps to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the layout requires.
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// The sender speaks another protocol version.
    UnsupportedVersion {
        /// The version found in the header.
        found: u16,
    },
    /// The message kind is unknown.
    UnknownKind {
        /// The raw kind value.
        found: u16,
    },
    /// The message is of another kind than the caller expected.
    WrongKind {
        /// The kind the caller asked for.
        expected: MessageKind,
        /// The kind in the header.
        found: MessageKind,
    },
    /// The header's size disagrees with the buffer or with the body's layout.
    SizeMismatch {
        /// Size in the header.
        declared: u32,
        /// Bytes actually present or consumed.
        actual: usize,
    },
    /// A padding or reserved field is not zero.
    NonZeroPadding {
        /// Byte offset of the field in the message.
        offset: usize,
    },
    /// A field holds a value outside its documented range.
    InvalidField {
        /// The field's name.
        field: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "message truncated: need {needed} bytes, have {available}"
                )
            }
            Self::BadMagic => f.write_str("not a hivetrack message (bad magic)"),
            Self::UnsupportedVersion { found } => write!(
                f,
                "protocol version {found} is not supported (this build speaks {})",
                crate::PROTOCOL_VERSION
            ),
            Self::UnknownKind { found } => write!(f, "unknown message kind {found}"),
            Self::WrongKind { expected, found } => {
                write!(f, "expected a {expected:?} message, got {found:?}")
            }
            Self::SizeMismatch { declared, actual } => {
                write!(
                    f,
                    "header declares {declared} bytes but the message has {actual}"
                )
            }
            Self::NonZeroPadding { offset } => write!(f, "non-zero padding at offset {offset}"),
            Self::InvalidField { field } => write!(f, "field `{field}` holds an invalid value"),
        }
    }
}

/// A bounded little-endian writer over a caller-provided buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing at offset 0 of `buf`.
    pub const fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    #[must_use]
    pub const fn position(&self) -> usize {
        self.pos
    }

    /// Writes raw bytes.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when they do not fit.
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        self.reserve(data.len())?.copy_from_slice(data);
        Ok(())
    }

    /// The next `n` bytes of the buffer, counted as written: the caller fills all of them.
    fn reserve(&mut self, n: usize) -> Result<&mut [u8], EncodeError> {
        let available = self.buf.len();
        let end = self.pos.checked_add(n).ok_or(EncodeError::BufferTooSmall {
            needed: usize::MAX,
            available,
        })?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall {
                needed: end,
                available,
            })?;
        self.pos = end;
        Ok(dst)
    }

    /// Writes a run of fields built with [`Fixed`], with one bounds check.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when it does not fit; [`EncodeError::FieldTooLarge`]
    /// when the run's fields did not fill exactly its `N` bytes (a layout mistake).
    pub fn fixed<const N: usize>(&mut self, run: &Fixed<N>) -> Result<(), EncodeError> {
        if run.at != N {
            return Err(EncodeError::FieldTooLarge { field: "fixed run" });
        }
        self.bytes(&run.bytes)
    }

    /// Writes UTF-16 code units little-endian, straight into the buffer (a query page
    /// writes megabytes of names).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when they do not fit.
    pub fn units(&mut self, units: &[u16]) -> Result<(), EncodeError> {
        let dst = self.reserve(units.len().saturating_mul(2))?;
        for (d, u) in dst.chunks_exact_mut(2).zip(units) {
            d.copy_from_slice(&u.to_le_bytes());
        }
        Ok(())
    }

    /// Writes `n` zero bytes (explicit padding).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when they do not fit.
    pub fn zeros(&mut self, n: usize) -> Result<(), EncodeError> {
        const Z: [u8; 16] = [0; 16];
        let mut left = n;
        while left > 0 {
            let take = left.min(Z.len());
            self.bytes(&Z[..take])?;
            left -= take;
        }
        Ok(())
    }

    /// Writes a `u8`.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when it does not fit.
    pub fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    /// Writes a little-endian `u16`.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when it does not fit.
    pub fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when it does not fit.
    pub fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when it does not fit.
    pub fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Writes a length-prefixed UTF-16 string: a `u16` count of code units, then the units.
    ///
    /// # Errors
    /// [`EncodeError::FieldTooLarge`] over 65,535 units; [`EncodeError::BufferTooSmall`].
    pub fn utf16(&mut self, field: &'static str, units: &[u16]) -> Result<(), EncodeError> {
        let n = u16::try_from(units.len()).map_err(|_| EncodeError::FieldTooLarge { field })?;
        self.u16(n)?;
        self.units(units)
    }
}

/// A record's fixed-size fields, built in a local array and written by [`Writer::fixed`].
///
/// One bounds check instead of one per field: every offset is known when it is built
/// inline, so the compiler drops the checks below. A run that overflows or falls short of
/// `N` is refused by [`Writer::fixed`], never a panic.
#[derive(Debug)]
pub struct Fixed<const N: usize> {
    bytes: [u8; N],
    at: usize,
}

impl<const N: usize> Default for Fixed<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Fixed<N> {
    /// An empty run (all bytes zero: padding is written by skipping it).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            at: 0,
        }
    }

    #[inline]
    fn put<const M: usize>(&mut self, b: [u8; M]) -> &mut Self {
        let end = self.at.saturating_add(M);
        match self.bytes.get_mut(self.at..end) {
            Some(d) => {
                d.copy_from_slice(&b);
                self.at = end;
            }
            None => self.at = usize::MAX,
        }
        self
    }

    /// Appends a `u8`.
    #[inline]
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.put([v])
    }

    /// Appends a little-endian `u16`.
    #[inline]
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.put(v.to_le_bytes())
    }

    /// Appends a little-endian `u32`.
    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.put(v.to_le_bytes())
    }

    /// Appends a little-endian `u64`.
    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(v.to_le_bytes())
    }

    /// Skips `n` bytes of explicit padding (left zero).
    #[inline]
    pub const fn zeros(&mut self, n: usize) -> &mut Self {
        self.at = match self.at.checked_add(n) {
            Some(end) if end <= N => end,
            _ => usize::MAX,
        };
        self
    }
}

/// A bounded little-endian reader over a received buffer.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at offset 0 of `buf`.
    #[must_use]
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    #[must_use]
    pub const fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    #[must_use]
    pub const fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads `n` raw bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer remain.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated {
            needed: usize::MAX,
            available: self.buf.len(),
        })?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            needed: end,
            available: self.buf.len(),
        })?;
        self.pos = end;
        Ok(out)
    }

    /// Reads a fixed-size array.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer bytes remain.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Reads `n` bytes that must all be zero (padding or reserved).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`]; [`DecodeError::NonZeroPadding`] with the offending offset.
    #[allow(
        clippy::option_if_let_else,
        reason = "the match reads clearer than map_or here"
    )]
    pub fn zeros(&mut self, n: usize) -> Result<(), DecodeError> {
        let start = self.pos;
        let b = self.bytes(n)?;
        b.iter().position(|&x| x != 0).map_or(Ok(()), |i| {
            Err(DecodeError::NonZeroPadding { offset: start + i })
        })
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a length-prefixed UTF-16 string, borrowed from the buffer.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn utf16(&mut self) -> Result<Utf16<'a>, DecodeError> {
        let n = usize::from(self.u16()?);
        Ok(Utf16(self.bytes(n * 2)?))
    }
}

/// A UTF-16LE string borrowed from a received message (unpaired surrogates are kept as
/// they came: registry names are not guaranteed to be valid UTF-16).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Utf16<'a>(&'a [u8]);

impl<'a> Utf16<'a> {
    /// The empty string.
    pub const EMPTY: Utf16<'static> = Utf16(&[]);

    /// Number of UTF-16 code units.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.0.len() / 2
    }

    /// True when there are no code units.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The code units, in order.
    pub fn units(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    }

    /// The characters, with U+FFFD for unpaired surrogates.
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        char::decode_utf16(self.units()).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

impl fmt::Display for Utf16<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.chars() {
            f.write_char(c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Utf16<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A message with a fixed kind and a body that follows the header.
pub trait Message<'a>: Sized {
    /// The kind written in the header.
    const KIND: MessageKind;

    /// Exact size of the body in bytes (the header excluded).
    fn body_len(&self) -> usize;

    /// Writes the body. Must write exactly [`Message::body_len`] bytes.
    ///
    /// # Errors
    /// Whatever the writer reports.
    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;

    /// Reads the body. Must validate every field.
    ///
    /// # Errors
    /// A [`DecodeError`] for any malformed input.
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// Encodes `msg` with its header at the start of `buf`; returns the number of bytes written.
/// On error nothing meaningful was written and the caller must not send `buf`.
///
/// # Errors
/// [`EncodeError::BufferTooSmall`] with the size needed, so a caller can ask for more.
pub fn encode<'a, M: Message<'a>>(msg: &M, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let total = HEADER_LEN + msg.body_len();
    if buf.len() < total {
        return Err(EncodeError::BufferTooSmall {
            needed: total,
            available: buf.len(),
        });
    }
    let size = u32::try_from(total).map_err(|_| EncodeError::FieldTooLarge { field: "size" })?;
    let mut w = Writer::new(buf);
    w.bytes(&MAGIC)?;
    w.u16(crate::PROTOCOL_VERSION)?;
    w.u16(M::KIND as u16)?;
    w.u32(size)?;
    w.u32(0)?;
    msg.encode_body(&mut w)?;
    debug_assert_eq!(w.position(), total, "body_len disagrees with encode_body");
    Ok(total)
}

/// Reads and validates the header at the start of `buf`.
///
/// # Errors
/// [`DecodeError`] for a short buffer, bad magic, another version, an unknown kind, a size
/// larger than the buffer, or a non-zero reserved field.
pub fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(buf);
    if r.array::<4>()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != crate::PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let raw_kind = r.u16()?;
    let kind =
        MessageKind::from_u16(raw_kind).ok_or(DecodeError::UnknownKind { found: raw_kind })?;
    let size = r.u32()?;
    r.zeros(4)?;
    let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
    if size_usize < HEADER_LEN || size_usize > buf.len() {
        return Err(DecodeError::SizeMismatch {
            declared: size,
            actual: buf.len(),
        });
    }
    Ok(Header {
        version,
        kind,
        size,
    })
}

/// Decodes a message of kind `M` from `buf`, which must be the message exactly.
///
/// The header's size must be `buf`'s length and cover the body exactly. A caller passes the
/// bytes it received (an IOCTL's input length, an answer's returned length), so that no two
/// byte strings decode to the same message: trailing bytes are refused, not ignored (audit
/// 21b F9).
///
/// # Errors
/// A [`DecodeError`] for any malformed input; [`DecodeError::SizeMismatch`] when `buf`
/// holds more than the message.
pub fn decode<'a, M: Message<'a>>(buf: &'a [u8]) -> Result<M, DecodeError> {
    let header = decode_header(buf)?;
    if header.size as usize != buf.len() {
        return Err(DecodeError::SizeMismatch {
            declared: header.size,
            actual: buf.len(),
        });
    }
    if header.kind != M::KIND {
        return Err(DecodeError::WrongKind {
            expected: M::KIND,
            found: header.kind,
        });
    }
    let end = header.size as usize;
    let mut r = Reader::new(&buf[..end]);
    r.bytes(HEADER_LEN)?;
    let msg = M::decode_body(&mut r)?;
    if r.remaining() != 0 {
        return Err(DecodeError::SizeMismatch {
            declared: header.size,
            actual: r.position(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_run_is_written_whole_or_refused() {
        let mut buf = [0xAAu8; 16];
        let mut w = Writer::new(&mut buf);
        let mut f = Fixed::<12>::new();
        f.u8(7).zeros(1).u16(0x0102).u64(0x0A0B_0C0D_0E0F_1011);
        assert!(w.fixed(&f).is_ok());
        assert_eq!(w.position(), 12);
        assert_eq!(
            buf[..12],
            [7, 0, 2, 1, 0x11, 0x10, 0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A]
        );
        assert_eq!(buf[12..], [0xAA; 4], "nothing past the run");

        // Falling short of N or running past it is a layout mistake: refused, no panic.
        let mut short = Fixed::<12>::new();
        short.u64(1);
        let mut long = Fixed::<12>::new();
        long.u64(1).u64(2).zeros(1);
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        assert!(w.fixed(&short).is_err());
        assert!(w.fixed(&long).is_err());
        assert_eq!(w.position(), 0);
        // A run that does not fit the buffer is refused like any write.
        let mut buf = [0u8; 8];
        assert!(Writer::new(&mut buf).fixed(&f).is_err());
    }

    #[test]
    fn units_are_written_little_endian_whatever_their_length() {
        // Longer than the 128-unit blocks the old encoder converted in.
        let units: Vec<u16> = (0..300u16)
            .map(|i| i.wrapping_mul(0x0101) ^ 0xD800)
            .collect();
        let mut buf = vec![0u8; 602];
        let mut w = Writer::new(&mut buf);
        w.utf16("name", &units).unwrap();
        assert_eq!(w.position(), 602);
        assert_eq!(u16::from_le_bytes([buf[0], buf[1]]), 300);
        for (i, u) in units.iter().enumerate() {
            assert_eq!(buf[2 + 2 * i..4 + 2 * i], u.to_le_bytes(), "unit {i}");
        }
        let mut small = vec![0u8; 601];
        assert!(Writer::new(&mut small).utf16("name", &units).is_err());
    }
}
