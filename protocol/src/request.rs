//! `QueryRequest`: the input buffer of every query IOCTL (0x801 and up).
//!
//! Body layout (50 bytes + 2 per hive path unit):
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 2    | query ([`QueryKind`]); must match the IOCTL it is sent with  |
//! | 2      | 2    | flags ([`QueryRequest::FLAG_SUMMARY_ONLY`], holders only; other bits zero) |
//! | 4      | 4    | max records per page, 0 = as many as fit the output buffer (stats: 0) |
//! | 8      | 40   | cursor ([`Cursor::START`] for the first page; stats: always) |
//! | 48     | 2+2n | hive path, length-prefixed UTF-16 (holders only, else empty) |

use crate::cursor::{CURSOR_LEN, Cursor};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// Which query a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum QueryKind {
    /// Who holds keys in a hive: [`crate::holders`].
    Holders = 1,
    /// The hives: [`crate::hives`].
    Hives = 2,
    /// Every known process with its open keys: [`crate::processes`].
    Processes = 3,
    /// Counters: [`crate::stats`].
    Stats = 4,
    /// Every tracked key per process, for leak hunting: [`crate::snapshot`].
    Snapshot = 5,
    /// Recent hive unload attempts and who held the hive: [`crate::history`].
    UnloadHistory = 6,
    /// The user-mode stacks captured at opens: [`crate::stacks`].
    Stacks = 7,
    /// The modules of processes whose keys carry stacks: [`crate::modules`].
    Modules = 8,
}

impl QueryKind {
    /// Maps a wire value back to a kind.
    #[must_use]
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Holders),
            2 => Some(Self::Hives),
            3 => Some(Self::Processes),
            4 => Some(Self::Stats),
            5 => Some(Self::Snapshot),
            6 => Some(Self::UnloadHistory),
            7 => Some(Self::Stacks),
            8 => Some(Self::Modules),
            _ => None,
        }
    }
}

/// A query with its paging position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryRequest<'a> {
    /// The query.
    pub query: QueryKind,
    /// Flags; only [`QueryRequest::FLAG_SUMMARY_ONLY`] is defined.
    pub flags: u16,
    /// At most this many records in the answer; 0 means as many as fit. The driver also
    /// ends a holders, snapshot or modules page after 4,096 records (it writes one process's
    /// records under that process's lock, so a caller's buffer must not set how long it is
    /// held: audit 21b F5); the cursor resumes there. A holders page
    /// that continues a process repeats its summary before the next key, so holders take a
    /// limit of 1 as 2 (a page of one summary alone could never make progress).
    pub max_records: u32,
    /// Where to resume.
    pub cursor: Cursor,
    /// The hive (a mount point, or any key path inside the hive) for [`QueryKind::Holders`].
    pub hive: Text<'a>,
}

impl QueryRequest<'_> {
    /// Holders: report the per-process summaries only, no key records.
    pub const FLAG_SUMMARY_ONLY: u16 = 1;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u16 = Self::FLAG_SUMMARY_ONLY;
}

impl<'a> Message<'a> for QueryRequest<'a> {
    const KIND: MessageKind = MessageKind::QueryRequest;

    fn body_len(&self) -> usize {
        8 + CURSOR_LEN + self.hive.encoded_len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.query as u16)?;
        w.u16(self.flags)?;
        w.u32(self.max_records)?;
        self.cursor.encode(w)?;
        self.hive.encode("hive", w)
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let query =
            QueryKind::from_u16(r.u16()?).ok_or(DecodeError::InvalidField { field: "query" })?;
        let flags = r.u16()?;
        if flags & !Self::KNOWN_FLAGS != 0 {
            return Err(DecodeError::InvalidField { field: "flags" });
        }
        let max_records = r.u32()?;
        let cursor = Cursor::decode(r)?;
        let hive = Text::decode(r)?;
        if query != QueryKind::Holders && !hive.is_empty() {
            return Err(DecodeError::InvalidField { field: "hive" });
        }
        // Canonical: a field a query does not use must hold its neutral value, so that a
        // client's mistake (a summary flag on a listing, a cursor sent to stats) is refused,
        // not silently ignored (audit 21b F9).
        if query != QueryKind::Holders && flags & Self::FLAG_SUMMARY_ONLY != 0 {
            return Err(DecodeError::InvalidField { field: "flags" });
        }
        if query == QueryKind::Stats && (max_records != 0 || cursor != Cursor::START) {
            return Err(DecodeError::InvalidField {
                field: "stats paging",
            });
        }
        Ok(Self {
            query,
            flags,
            max_records,
            cursor,
            hive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    const HIVE: [u16; 3] = [b'\\' as u16, b'A' as u16, b'b' as u16];

    fn sample() -> QueryRequest<'static> {
        QueryRequest {
            query: QueryKind::Holders,
            flags: QueryRequest::FLAG_SUMMARY_ONLY,
            max_records: 7,
            cursor: Cursor([1, 2, 3, 0x0102_0304_0506_0708, 9]),
            hive: Text::Units(&HIVE),
        }
    }

    /// The exact bytes of `sample()`.
    pub const GOLDEN: [u8; 72] = [
        b'H', b'v', b'T', b'k', 7, 0, 2, 0, 72, 0, 0, 0, 0, 0, 0, 0, // header
        1, 0, 1, 0, 7, 0, 0, 0, // holders, summary only, max 7
        1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, //
        8, 7, 6, 5, 4, 3, 2, 1, 9, 0, 0, 0, 0, 0, 0, 0, // cursor
        3, 0, b'\\', 0, b'A', 0, b'b', 0, // hive
    ];

    #[test]
    fn golden_and_round_trip() {
        let mut buf = [0u8; 96];
        let n = encode(&sample(), &mut buf).unwrap();
        assert_eq!(buf[..n], GOLDEN);
        assert_eq!(decode::<QueryRequest<'_>>(&buf[..n]).unwrap(), sample());
        for kind in 1..=8 {
            let q = QueryRequest {
                query: QueryKind::from_u16(kind).unwrap(),
                flags: 0,
                max_records: 0,
                cursor: Cursor::START,
                hive: Text::EMPTY,
            };
            let n = encode(&q, &mut buf).unwrap();
            assert_eq!(decode::<QueryRequest<'_>>(&buf[..n]).unwrap(), q);
        }
    }

    /// Audit 21b F9: a request with a trailing byte, a summary flag on a listing and paging
    /// on stats each decoded (and were ignored); all are refused now.
    #[test]
    fn refuses_trailing_bytes_and_fields_its_query_does_not_use() {
        let hives = QueryRequest {
            query: QueryKind::Hives,
            flags: 0,
            max_records: 0,
            cursor: Cursor::START,
            hive: Text::EMPTY,
        };
        let mut buf = [0u8; 128];
        let n = encode(&hives, &mut buf).unwrap();
        assert_eq!(decode::<QueryRequest<'_>>(&buf[..n]).unwrap(), hives);
        buf[n] = 0xEE;
        assert!(matches!(
            decode::<QueryRequest<'_>>(&buf[..=n]),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let refused = |q: QueryRequest<'_>| {
            let mut buf = [0u8; 128];
            let n = encode(&q, &mut buf).unwrap();
            decode::<QueryRequest<'_>>(&buf[..n]).err()
        };
        for kind in 2..=8 {
            let q = QueryRequest {
                query: QueryKind::from_u16(kind).unwrap(),
                flags: QueryRequest::FLAG_SUMMARY_ONLY,
                ..hives
            };
            assert_eq!(
                refused(q),
                Some(DecodeError::InvalidField { field: "flags" }),
                "{q:?}"
            );
        }
        let stats = QueryRequest {
            query: QueryKind::Stats,
            ..hives
        };
        assert_eq!(refused(stats), None);
        let paged = [
            QueryRequest {
                max_records: 1,
                ..stats
            },
            QueryRequest {
                cursor: Cursor([0, 0, 0, 0, 1]),
                ..stats
            },
        ];
        for q in paged {
            assert_eq!(
                refused(q),
                Some(DecodeError::InvalidField {
                    field: "stats paging"
                })
            );
        }
    }

    #[test]
    fn rejects_bad_fields_and_truncation() {
        for n in 0..GOLDEN.len() {
            assert!(decode::<QueryRequest<'_>>(&GOLDEN[..n]).is_err());
        }
        let mut bad = GOLDEN;
        bad[16] = 9;
        assert_eq!(
            decode::<QueryRequest<'_>>(&bad),
            Err(DecodeError::InvalidField { field: "query" })
        );
        let mut bad = GOLDEN;
        bad[18] = 2;
        assert_eq!(
            decode::<QueryRequest<'_>>(&bad),
            Err(DecodeError::InvalidField { field: "flags" })
        );
        let mut bad = GOLDEN;
        bad[16] = 2; // hives with a hive path
        assert_eq!(
            decode::<QueryRequest<'_>>(&bad),
            Err(DecodeError::InvalidField { field: "hive" })
        );
    }
}
