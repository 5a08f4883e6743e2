//! Paged answers: the layout every list query shares, a writer that fills a caller buffer
//! record by record and stops cleanly when it is full, and the validating decoder.
//!
//! Body layout of every page (after the 16-byte header):
//!
//! | offset | size | field                                                           |
//! |--------|------|-----------------------------------------------------------------|
//! | 0      | 40   | next cursor (pass it back to get the next page)                 |
//! | 40     | 4    | number of records in this page                                  |
//! | 44     | 2    | flags: [`PageInfo::DONE`], [`PageInfo::INCOMPLETE`]             |
//! | 46     | 2    | reserved, zero                                                  |
//! | 48     | 8    | events the tracker could not record so far (see `stats`)       |
//! | 56     | …    | the kind's prefix ([`PageKind::Prefix`]), then the records     |
//!
//! Every record is self-delimiting (fixed fields, then length-prefixed strings), so a
//! decoder validates each record before the page is handed out, and iterating a decoded
//! page cannot fail.

use core::marker::PhantomData;

use crate::cursor::Cursor;
use crate::wire::{
    DecodeError, EncodeError, HEADER_LEN, MAGIC, Message, MessageKind, Reader, Writer,
};

/// Size of the common page fields.
pub const PAGE_INFO_LEN: usize = 56;

/// A fixed-then-variable piece of a message (a page prefix or a record).
pub trait Codec<'a>: Sized {
    /// Exact encoded size in bytes.
    fn encoded_len(&self) -> usize;
    /// Writes exactly [`Codec::encoded_len`] bytes.
    ///
    /// # Errors
    /// Whatever the writer reports.
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
    /// Reads and validates one value.
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input.
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// A prefix with no fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoPrefix;

impl Codec<'_> for NoPrefix {
    fn encoded_len(&self) -> usize {
        0
    }
    fn encode(&self, _: &mut Writer<'_>) -> Result<(), EncodeError> {
        Ok(())
    }
    fn decode(_: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self)
    }
}

/// A prefix of one count: what the whole answer could not hold so far (the stacks and
/// modules pages: stacks not stored, image loads not recorded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedPrefix {
    /// How many were not kept.
    pub dropped: u64,
}

impl Codec<'_> for DroppedPrefix {
    fn encoded_len(&self) -> usize {
        8
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.dropped)
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { dropped: r.u64()? })
    }
}

/// One kind of paged answer.
pub trait PageKind {
    /// The message kind in the header.
    const KIND: MessageKind;
    /// Fields that come once per page, before the records.
    type Prefix<'a>: Codec<'a>;
    /// One record.
    type Record<'a>: Codec<'a>;
    /// Checks the order of records (`prev` is the record before `rec`); the default accepts
    /// any order.
    ///
    /// # Errors
    /// [`DecodeError::InvalidField`] when `rec` may not follow `prev`.
    fn check_sequence(
        prev: Option<&Self::Record<'_>>,
        rec: &Self::Record<'_>,
    ) -> Result<(), DecodeError> {
        let _ = (prev, rec);
        Ok(())
    }
}

/// The fields every page carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageInfo {
    /// Where the next page starts (meaningless when [`PageInfo::DONE`] is set).
    pub next: Cursor,
    /// [`PageInfo::DONE`] and [`PageInfo::INCOMPLETE`].
    pub flags: u16,
    /// Events the tracker could not record so far (the sum of the loss counters of `stats`);
    /// non-zero means every report may be missing something.
    pub not_recorded: u64,
}

impl PageInfo {
    /// This is the last page.
    pub const DONE: u16 = 1;
    /// The tracker has missed events (`not_recorded` > 0), so the answer may be incomplete.
    pub const INCOMPLETE: u16 = 2;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u16 = Self::DONE | Self::INCOMPLETE;

    /// True on the last page.
    #[must_use]
    pub const fn done(&self) -> bool {
        self.flags & Self::DONE != 0
    }
}

/// A decoded page: the prefix, and the validated records borrowed from the buffer.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a, K: PageKind> {
    /// Common fields.
    pub info: PageInfo,
    /// The kind's prefix.
    pub prefix: K::Prefix<'a>,
    count: u32,
    records: &'a [u8],
    _kind: PhantomData<K>,
}

impl<'a, K: PageKind> Page<'a, K> {
    /// Number of records.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the page holds no record.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, in order. They were validated when the page was decoded.
    pub fn records(&self) -> impl Iterator<Item = K::Record<'a>> + 'a {
        let mut r = Reader::new(self.records);
        (0..self.count).map_while(move |_| K::Record::decode(&mut r).ok())
    }
}

impl<'a, K: PageKind> Message<'a> for Page<'a, K> {
    const KIND: MessageKind = K::KIND;

    fn body_len(&self) -> usize {
        PAGE_INFO_LEN + self.prefix.encoded_len() + self.records.len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        encode_info(w, &self.info, self.count)?;
        self.prefix.encode(w)?;
        w.bytes(self.records)
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let next = Cursor::decode(r)?;
        let count = r.u32()?;
        let flags = r.u16()?;
        if flags & !PageInfo::KNOWN_FLAGS != 0 {
            return Err(DecodeError::InvalidField {
                field: "page flags",
            });
        }
        r.zeros(2)?;
        let not_recorded = r.u64()?;
        if (not_recorded == 0) == (flags & PageInfo::INCOMPLETE != 0) {
            return Err(DecodeError::InvalidField {
                field: "page flags",
            });
        }
        let prefix = K::Prefix::decode(r)?;
        let start = r.clone();
        let mut prev: Option<K::Record<'a>> = None;
        for _ in 0..count {
            let rec = K::Record::decode(r)?;
            K::check_sequence(prev.as_ref(), &rec)?;
            prev = Some(rec);
        }
        let used = r.position() - start.position();
        let mut s = start;
        let records = s.bytes(used)?;
        Ok(Self {
            info: PageInfo {
                next,
                flags,
                not_recorded,
            },
            prefix,
            count,
            records,
            _kind: PhantomData,
        })
    }
}

fn encode_info(w: &mut Writer<'_>, info: &PageInfo, count: u32) -> Result<(), EncodeError> {
    info.next.encode(w)?;
    w.u32(count)?;
    w.u16(info.flags)?;
    w.zeros(2)?;
    w.u64(info.not_recorded)
}

/// Fills a caller buffer with one page, record by record.
///
/// A record is written whole or not at all. The unused tail of the buffer is left as it
/// was: the driver reports only the written length, and `METHOD_BUFFERED` copies back only
/// that many bytes (the I/O manager zeroes its system buffer beforehand).
#[derive(Debug)]
pub struct PageWriter<'b, K: PageKind> {
    buf: &'b mut [u8],
    pos: usize,
    count: u32,
    max_records: u32,
    _kind: PhantomData<K>,
}

impl<'b, K: PageKind> PageWriter<'b, K> {
    /// Starts a page: writes the header, zeroed common fields and `prefix`.
    /// `max_records` of 0 means no limit but the buffer.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when not even an empty page fits.
    pub fn new(
        buf: &'b mut [u8],
        prefix: &K::Prefix<'_>,
        max_records: u32,
    ) -> Result<Self, EncodeError> {
        let mut w = Writer::new(buf);
        w.bytes(&MAGIC)?;
        w.u16(crate::PROTOCOL_VERSION)?;
        w.u16(K::KIND as u16)?;
        w.u32(0)?; // size, patched by finish
        w.u32(0)?;
        encode_info(&mut w, &PageInfo::default(), 0)?;
        prefix.encode(&mut w)?;
        let pos = w.position();
        Ok(Self {
            buf,
            pos,
            count: 0,
            max_records: if max_records == 0 {
                u32::MAX
            } else {
                max_records
            },
            _kind: PhantomData,
        })
    }

    /// Appends `rec` if it fits (whole) and the record limit allows; returns whether it did.
    pub fn push(&mut self, rec: &K::Record<'_>) -> bool {
        if self.count >= self.max_records {
            return false;
        }
        let len = rec.encoded_len();
        let Some(end) = self.pos.checked_add(len) else {
            return false;
        };
        let Some(dst) = self.buf.get_mut(self.pos..end) else {
            return false;
        };
        let mut w = Writer::new(dst);
        if rec.encode(&mut w).is_err() || w.position() != len {
            // A field too large for its wire width: the slice is rewritten by the next push
            // or left outside the reported length.
            return false;
        }
        self.pos = end;
        self.count += 1;
        true
    }

    /// Records written so far.
    #[must_use]
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// True when the record limit is reached.
    #[must_use]
    pub const fn at_limit(&self) -> bool {
        self.count >= self.max_records
    }

    /// Completes the page with `info`; returns the number of bytes to send.
    #[must_use]
    pub fn finish(self, info: &PageInfo) -> usize {
        let mut flags = info.flags & PageInfo::DONE;
        if info.not_recorded != 0 {
            flags |= PageInfo::INCOMPLETE;
        }
        let fixed = PageInfo { flags, ..*info };
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a page never exceeds 4 GiB: its buffer came from a METHOD_BUFFERED IOCTL"
        )]
        let size = self.pos as u32;
        self.buf[8..12].copy_from_slice(&size.to_le_bytes());
        let mut w = Writer::new(&mut self.buf[HEADER_LEN..HEADER_LEN + PAGE_INFO_LEN]);
        // Cannot fail: the slice is exactly PAGE_INFO_LEN bytes and `new` wrote it once.
        let _ = encode_info(&mut w, &fixed, self.count);
        self.pos
    }
}

/// Minimum buffer for an empty page of kind `K` with `prefix`.
#[must_use]
pub fn empty_page_len<K: PageKind>(prefix: &K::Prefix<'_>) -> usize {
    HEADER_LEN + PAGE_INFO_LEN + prefix.encoded_len()
}
