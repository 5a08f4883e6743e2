//! An in-memory answerer of the query IOCTLs, paging exactly as the driver does.
//!
//! Records are encoded once with the protocol crate and
//! served page by page with the protocol's [`PageWriter`], honouring the cursor, the record
//! limit and the caller's buffer size exactly as the driver does (a buffer too small for one
//! record is refused with `ERROR_INSUFFICIENT_BUFFER`; a holders page that resumes inside a
//! process starts with that process repeated with `CONTINUED`).
//!
//! The driverless fallback answers holders through it, and the scripted test transport
//! ([`crate::scripted`]) answers every query through it.

use protocol::capture::{CaptureOp, CaptureRequest, CaptureScope, CaptureState, MAX_FRAMES};
use protocol::cursor::Cursor;
use protocol::history::UnloadHistory;
use protocol::hives::Hives;
use protocol::holders::{HolderKey, HolderProcess, HolderRecord, Holders, HoldersPrefix};
use protocol::ioctl;
use protocol::modules::{Module, ModuleProcess, ModuleRecord, Modules, ModulesPrefix};
use protocol::page::{Codec, NoPrefix, PageInfo, PageKind, PageWriter};
use protocol::processes::Processes;
use protocol::request::{QueryKind, QueryRequest};
use protocol::snapshot::{Snapshot, SnapshotPrefix};
use protocol::stacks::Stacks;
use protocol::stats::Stats;
use protocol::text::{Text, eq_folded};
use protocol::version::VersionInfo;
use protocol::wire::{self, Reader, Writer};

use crate::transport::{
    ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_PARAMETER, TransportError,
};

/// Win32 `ERROR_INVALID_FUNCTION`: what `STATUS_INVALID_DEVICE_REQUEST` becomes.
pub const ERROR_INVALID_FUNCTION: u32 = 1;

/// Marks cursors this server hands out (word 1), so a foreign cursor is refused.
const CURSOR_TAG: u64 = 0x4854_5053_5256_0001;

/// Encodes one record or prefix into its own bytes.
///
/// # Panics
/// Never for the protocol's types: the buffer is sized with `encoded_len`, and a field too
/// large for its wire width (a string over 65,535 units) is cut to the empty string first
/// by the callers that build records from outside data.
#[must_use]
pub fn encode_codec<'a, C: Codec<'a>>(c: &C) -> Vec<u8> {
    let mut buf = vec![0u8; c.encoded_len()];
    let mut w = Writer::new(&mut buf);
    c.encode(&mut w)
        .expect("a buffer of encoded_len bytes holds the value");
    buf
}

/// The records of one paged answer, encoded.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    prefix: Vec<u8>,
    records: Vec<Vec<u8>>,
    /// For record `i`, a record to send first when a page starts at `i` (holders: the
    /// owning process, flagged `CONTINUED`).
    lead: Vec<Option<Vec<u8>>>,
    /// Holders: the same answer without key records, for `FLAG_SUMMARY_ONLY`.
    summary: Option<Box<Self>>,
}

impl Listing {
    /// A listing with its page prefix.
    #[must_use]
    pub fn new<'a, P: Codec<'a>>(prefix: &P) -> Self {
        Self {
            prefix: encode_codec(prefix),
            records: Vec::new(),
            lead: Vec::new(),
            summary: None,
        }
    }

    /// The listing for a request with `flags`: the summary-only one when asked and built.
    #[must_use]
    pub fn for_flags(&self, flags: u16) -> &Self {
        match &self.summary {
            Some(s) if flags & QueryRequest::FLAG_SUMMARY_ONLY != 0 => s,
            _ => self,
        }
    }

    /// Appends a record.
    pub fn push<'a, R: Codec<'a>>(&mut self, rec: &R) {
        self.records.push(encode_codec(rec));
        self.lead.push(None);
    }

    /// Appends `other`'s records (its prefix is dropped).
    pub fn append(&mut self, other: &Self) {
        self.records.extend(other.records.iter().cloned());
        self.lead.extend(other.lead.iter().cloned());
    }

    /// Number of records.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.records.len()
    }

    /// True when there is no record.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A holders listing: per process its summary, then its keys (and the summary-only
    /// listing [`Listing::for_flags`] serves for `FLAG_SUMMARY_ONLY`).
    #[must_use]
    pub fn holders(
        prefix: &HoldersPrefix<'_>,
        processes: &[(HolderProcess<'_>, Vec<HolderKey<'_>>)],
    ) -> Self {
        let mut l = Self::new(prefix);
        let mut summary = Self::new(prefix);
        for (p, keys) in processes {
            l.push(&HolderRecord::Process(*p));
            summary.push(&HolderRecord::Process(*p));
            let continued = encode_codec(&HolderRecord::Process(HolderProcess {
                flags: p.flags | HolderProcess::CONTINUED,
                ..*p
            }));
            for k in keys {
                l.records.push(encode_codec(&HolderRecord::Key(*k)));
                l.lead.push(Some(continued.clone()));
            }
        }
        l.summary = Some(Box::new(summary));
        l
    }

    /// A modules listing: per process its record, then its modules in load order (a page
    /// that resumes inside a process starts with it repeated, flagged `CONTINUED`).
    #[must_use]
    pub fn modules(prefix: &ModulesPrefix, processes: &[(ModuleProcess, Vec<Module<'_>>)]) -> Self {
        let mut l = Self::new(prefix);
        for (p, modules) in processes {
            l.push(&ModuleRecord::Process(*p));
            let continued = encode_codec(&ModuleRecord::Process(ModuleProcess {
                flags: p.flags | ModuleProcess::CONTINUED,
                ..*p
            }));
            for m in modules {
                l.records.push(encode_codec(&ModuleRecord::Module(*m)));
                l.lead.push(Some(continued.clone()));
            }
        }
        l
    }

    /// Writes the page of `K` that starts at `cursor` into `out`.
    ///
    /// # Errors
    /// `ERROR_INVALID_PARAMETER` for a cursor this listing did not hand out;
    /// `ERROR_INSUFFICIENT_BUFFER` when not even one record (or the empty page) fits.
    pub fn serve<K: PageKind>(
        &self,
        cursor: &Cursor,
        max_records: u32,
        not_recorded: u64,
        out: &mut [u8],
    ) -> Result<usize, TransportError> {
        let bad = TransportError::Request {
            code: ERROR_INVALID_PARAMETER,
        };
        let small = || TransportError::Request {
            code: ERROR_INSUFFICIENT_BUFFER,
        };
        let start = if *cursor == Cursor::START {
            0
        } else if cursor.0[1] == CURSOR_TAG && cursor.0[2..].iter().all(|&w| w == 0) {
            usize::try_from(cursor.0[0]).map_err(|_| bad)?
        } else {
            return Err(bad);
        };
        if start > self.records.len() {
            return Err(TransportError::Request {
                code: ERROR_INVALID_PARAMETER,
            });
        }
        let prefix = K::Prefix::decode(&mut Reader::new(&self.prefix)).map_err(|_| small())?;
        let mut w = PageWriter::<K>::new(out, &prefix, max_records).map_err(|_| small())?;
        let mut i = start;
        if let Some(Some(lead)) = self.lead.get(i) {
            let rec = decode::<K>(lead).ok_or_else(small)?;
            if !w.push(&rec) {
                return Err(small());
            }
        }
        while let Some(bytes) = self.records.get(i) {
            let rec = decode::<K>(bytes).ok_or_else(small)?;
            if !w.push(&rec) {
                break;
            }
            i += 1;
        }
        if i == start && i < self.records.len() {
            return Err(small());
        }
        let done = i == self.records.len();
        Ok(w.finish(&PageInfo {
            next: if done {
                Cursor::START
            } else {
                let mut next = Cursor::START;
                next.0[0] = i as u64;
                next.0[1] = CURSOR_TAG;
                next
            },
            flags: if done { PageInfo::DONE } else { 0 },
            not_recorded,
        }))
    }
}

/// Decodes one stored record.
fn decode<K: PageKind>(bytes: &[u8]) -> Option<K::Record<'_>> {
    K::Record::decode(&mut Reader::new(bytes)).ok()
}

/// Everything a backend knows, answered as the driver answers its IOCTLs. A query with no
/// data (`None`) is refused as the driver refuses an unknown control code.
#[derive(Clone, Debug, Default)]
pub struct Server {
    /// The answer to `GET_VERSION`.
    pub version: Option<VersionInfo>,
    /// The answer to the stats query.
    pub stats: Option<Stats>,
    /// The hives page.
    pub hives: Option<Listing>,
    /// Holders, per hive mount point (UTF-16).
    pub holders: Vec<(Vec<u16>, Listing)>,
    /// The processes page.
    pub processes: Option<Listing>,
    /// The snapshot page.
    pub snapshot: Option<Listing>,
    /// The unload-history page.
    pub history: Option<Listing>,
    /// The stacks page (issue 16).
    pub stacks: Option<Listing>,
    /// The modules page (issue 16).
    pub modules: Option<Listing>,
    /// The capture scope and its text, and when it was set; `None`: a driver without
    /// `IOCTL_HIVETRACK_CAPTURE`.
    pub capture: Option<(CaptureScope, String, u64)>,
    /// `not_recorded` of every page.
    pub not_recorded: u64,
    /// Keys the kernel lists (`NtQueryOpenSubKeysEx`) beyond the holders answers: opened
    /// before tracking started, or lost. `(pid, NT path)`.
    pub kernel_extra: Vec<(u64, String)>,
}

impl Server {
    /// An empty listing of each paged kind: a driver that tracks nothing.
    #[must_use]
    pub fn empty_listings() -> (Listing, Listing, Listing, Listing) {
        (
            Listing::new(&NoPrefix),
            Listing::new(&NoPrefix),
            Listing::new(&SnapshotPrefix { taken_at: 0 }),
            Listing::new(&NoPrefix),
        )
    }

    /// The listing of the hive containing `path`: its mount point, or a key below it.
    fn holders_of(&self, path: &[u16]) -> Option<&Listing> {
        self.holders.iter().find_map(|(mount, l)| {
            let n = mount.len();
            let inside = path.len() >= n
                && eq_folded(&path[..n], mount)
                && (path.len() == n || path[n] == u16::from(b'\\'));
            inside.then_some(l)
        })
    }

    /// Answers `IOCTL_HIVETRACK_CAPTURE` as the driver does: a set replaces the scope
    /// (stamped `now`), and the answer is the state after it.
    ///
    /// # Errors
    /// `ERROR_INVALID_FUNCTION` without capture, `ERROR_INVALID_PARAMETER` for a malformed
    /// request, `ERROR_INSUFFICIENT_BUFFER`.
    pub fn answer_capture(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, TransportError> {
        let Some(state) = self.capture.as_mut() else {
            return Err(TransportError::Request {
                code: ERROR_INVALID_FUNCTION,
            });
        };
        let req =
            wire::decode::<CaptureRequest<'_>>(input).map_err(|_| TransportError::Request {
                code: ERROR_INVALID_PARAMETER,
            })?;
        if req.op == CaptureOp::Set {
            *state = (req.scope, req.text.to_string(), now);
        }
        let units: Vec<u16> = state.1.encode_utf16().collect();
        let answer = CaptureState {
            scope: state.0,
            max_frames: u32::try_from(MAX_FRAMES).unwrap_or(u32::MAX),
            since: state.2,
            text: Text::Units(&units),
        };
        wire::encode(&answer, out).map_err(|_| TransportError::Request {
            code: ERROR_INSUFFICIENT_BUFFER,
        })
    }

    /// Answers control code `code` with `input` into `out`, as the driver would.
    ///
    /// # Errors
    /// The Win32 error the driver's status would become.
    pub fn answer(&self, code: u32, input: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        let refuse = |code| Err(TransportError::Request { code });
        if code == ioctl::IOCTL_HIVETRACK_GET_VERSION {
            if !input.is_empty() {
                return refuse(ERROR_INVALID_PARAMETER);
            }
            let Some(v) = &self.version else {
                return refuse(ERROR_INVALID_FUNCTION);
            };
            return wire::encode(v, out).map_err(|_| TransportError::Request {
                code: ERROR_INSUFFICIENT_BUFFER,
            });
        }
        let Ok(req) = wire::decode::<QueryRequest<'_>>(input) else {
            return refuse(
                if matches!(ioctl::split_ctl_code(code).function, 0x801..=0x806 | 0x80A..=0x80B) {
                    ERROR_INVALID_PARAMETER
                } else {
                    ERROR_INVALID_FUNCTION
                },
            );
        };
        if ioctl::query_ioctl(req.query) != code {
            return refuse(ERROR_INVALID_PARAMETER);
        }
        let nr = self.not_recorded;
        let (c, m) = (&req.cursor, req.max_records);
        let missing = || TransportError::Request {
            code: ERROR_INVALID_FUNCTION,
        };
        match req.query {
            QueryKind::Stats => {
                let s = self.stats.as_ref().ok_or_else(missing)?;
                wire::encode(s, out).map_err(|_| TransportError::Request {
                    code: ERROR_INSUFFICIENT_BUFFER,
                })
            }
            QueryKind::Holders => {
                let path: Vec<u16> = req.hive.units().collect();
                let l = self.holders_of(&path).ok_or(TransportError::Request {
                    code: ERROR_FILE_NOT_FOUND,
                })?;
                l.for_flags(req.flags).serve::<Holders>(c, m, nr, out)
            }
            QueryKind::Hives => self
                .hives
                .as_ref()
                .ok_or_else(missing)?
                .serve::<Hives>(c, m, nr, out),
            QueryKind::Processes => self
                .processes
                .as_ref()
                .ok_or_else(missing)?
                .serve::<Processes>(c, m, nr, out),
            QueryKind::Snapshot => self
                .snapshot
                .as_ref()
                .ok_or_else(missing)?
                .serve::<Snapshot>(c, m, nr, out),
            QueryKind::UnloadHistory => self
                .history
                .as_ref()
                .ok_or_else(missing)?
                .serve::<UnloadHistory>(c, m, nr, out),
            QueryKind::Stacks => self
                .stacks
                .as_ref()
                .ok_or_else(missing)?
                .serve::<Stacks>(c, m, nr, out),
            QueryKind::Modules => self
                .modules
                .as_ref()
                .ok_or_else(missing)?
                .serve::<Modules>(c, m, nr, out),
        }
    }
}
