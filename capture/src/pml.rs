//! Process Monitor's native log format (PML, version 9), read event by event.
//!
//! The format is documented by reverse engineering in procmon-parser
//! (github.com/eronnen/procmon-parser, `docs/PML Format.md`, MIT); this is our own reader of
//! that description.
//!
//! Layout: a 0x3A8-byte header with file offsets of the string table, the process table
//! (each process with its modules), the array of event offsets (5 bytes each: a u32 offset
//! and a flag byte) and the events. An event is a 0x34-byte common part (process index,
//! thread, class, operation, duration, time, result, stack depth, detail size, extra-detail
//! offset), the stack frames (pointer-sized), then the detail structure whose first field is
//! the path's length word (bit 15: ASCII; bits 0–14: characters).
//!
//! The tables are read up front (they grow with processes and modules); the events are read
//! one at a time through the offsets array, so memory does not grow with the capture.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use crate::event::{Event, Frame, Op};
use crate::{CaptureError, Reader};

/// Size of the header, also stored in it at 0x398.
pub const HEADER_SIZE: usize = 0x3A8;
/// Size of an event's common part.
pub const EVENT_HEADER: usize = 0x34;
/// The file format version this reader knows.
pub const VERSION: u32 = 9;
/// Event class: process.
pub const CLASS_PROCESS: u32 = 1;
/// Event class: registry.
pub const CLASS_REGISTRY: u32 = 2;
/// The most of a registry event's detail structure the reader uses.
///
/// procmon-parser (`procmon_parser/stream_logs_detail_format.py`, `get_registry_event_details` and
/// `read_detail_string_info`) reads a path's length word (15 bits of characters, UTF-16
/// unless bit 15 says ASCII), for `RegLoadKey`/`RegRenameKey` a second one for the new path,
/// for `RegOpenKey`/`RegCreateKey` 2 unknown bytes and the desired access, then the path (and
/// the new path): at most two length words and two strings of 0x7FFF UTF-16 characters, or
/// 8 bytes and one such string. Only that much is read, whatever size the event declares:
/// a declared size is checked against the file but not read whole, since a crafted file
/// whose every event declares a detail as long as the file made the reader copy
/// O(events × file length) bytes (review 21b, L5).
pub const REGISTRY_DETAIL_MAX: usize = 4 + 2 * (2 * 0x7FFF);

/// Registry operation names by operation number.
pub const REGISTRY_OPS: [&str; 18] = [
    "RegOpenKey",
    "RegCreateKey",
    "RegCloseKey",
    "RegQueryKey",
    "RegSetValue",
    "RegQueryValue",
    "RegEnumValue",
    "RegEnumKey",
    "RegSetInfoKey",
    "RegDeleteKey",
    "RegDeleteValue",
    "RegFlushKey",
    "RegLoadKey",
    "RegUnloadKey",
    "RegRenameKey",
    "RegQueryMultipleValueKey",
    "RegSetKeySecurity",
    "RegQueryKeySecurity",
];
/// Process operation names by operation number.
pub const PROCESS_OPS: [&str; 10] = [
    "Process Defined",
    "Process Create",
    "Process Exit",
    "Thread Create",
    "Thread Exit",
    "Load Image",
    "Thread Profile",
    "Process Start",
    "Process Statistics",
    "System Statistics",
];
const CLASS_NAMES: [&str; 6] = [
    "Unknown",
    "Process",
    "Registry",
    "File System",
    "Profiling",
    "Network",
];

/// A module loaded in a captured process.
#[derive(Clone, Debug)]
pub struct Module {
    /// Base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u32,
    /// Image path.
    pub path: Arc<str>,
}

/// A process of the process table.
#[derive(Clone, Debug)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub parent_pid: u32,
    /// Start time (FILETIME, UTC).
    pub start_time: u64,
    /// Image path.
    pub image: Arc<str>,
    /// User (`DOMAIN\name`).
    pub user: Arc<str>,
    /// Modules, sorted by base address.
    pub modules: Vec<Module>,
}

/// The header fields the reader uses.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// 64-bit capture (8-byte pointers).
    pub is_64bit: bool,
    /// Number of events.
    pub events: u32,
    /// Offset of the array of event offsets.
    pub offsets_at: u64,
    /// Offset of the process table.
    pub processes_at: u64,
    /// Offset of the string table.
    pub strings_at: u64,
    /// Highest user-mode address of the capturing machine.
    pub max_user_address: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn bad(m: &str) -> CaptureError {
    CaptureError::Format(format!("PML: {m}"))
}

impl Header {
    /// Parses and checks a header.
    ///
    /// # Errors
    /// [`CaptureError::Format`] for another signature or version, or a file that Procmon did
    /// not close (zero table offsets).
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Self, CaptureError> {
        if &b[..4] != b"PML_" {
            return Err(bad("the PML_ signature is missing"));
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(bad(&format!(
                "version {version} (this reader knows {VERSION})"
            )));
        }
        let h = Self {
            is_64bit: u32_at(b, 8) != 0,
            events: u32_at(b, 0x234),
            offsets_at: u64_at(b, 0x248),
            processes_at: u64_at(b, 0x250),
            strings_at: u64_at(b, 0x258),
            max_user_address: u64_at(b, 0x268),
        };
        if h.offsets_at == 0 || h.processes_at == 0 || h.strings_at == 0 {
            return Err(bad(
                "the capture was not closed cleanly (table offsets are zero)",
            ));
        }
        if u64_at(b, 0x398) != HEADER_SIZE as u64 {
            return Err(bad("the header size field is not 0x3A8"));
        }
        Ok(h)
    }
}

/// The array of event offsets (5 bytes per event) ends where the next table begins:
/// Procmon writes the tables one after another, so a header whose event count does not fill
/// it exactly is damaged. A larger count would read table bytes as event offsets, a smaller
/// one would leave events out without a word (audit 21d, L2). Checked on the real captures
/// the tests read (procmon-parser's Tests32 and Registry64; the audit also on Tests64 and
/// Process64: `events * 5 == processes_at - offsets_at` in all four) and on our writer's,
/// whose string table follows the array. The next table is the nearest of the process,
/// string, icon (0x260) and hosts (0x3A0) tables after the array, else the end of the file.
fn check_event_count(h: &Header, b: &[u8; HEADER_SIZE], file_len: u64) -> Result<(), CaptureError> {
    let next = [
        h.processes_at,
        h.strings_at,
        u64_at(b, 0x260),
        u64_at(b, 0x3A0),
    ]
    .into_iter()
    .filter(|&at| at > h.offsets_at)
    .min()
    .unwrap_or(file_len)
    .min(file_len);
    let end = h.offsets_at + 5 * u64::from(h.events);
    if end == next {
        Ok(())
    } else {
        Err(bad(&format!(
            "the header's event count ({}) does not fill the array of event offsets at \
             {:#x}, which ends at {next:#x}: the header is damaged",
            h.events, h.offsets_at
        )))
    }
}

fn read_exact_at<R: Read + Seek>(r: &mut R, at: u64, buf: &mut [u8]) -> Result<(), CaptureError> {
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(buf)
        .map_err(|e| bad(&format!("truncated at offset {at:#x}: {e}")))
}

fn read_u32<R: Read>(r: &mut R) -> Result<u32, CaptureError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|e| bad(&format!("truncated table: {e}")))?;
    Ok(u32::from_le_bytes(b))
}

fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let s = String::from_utf16_lossy(&units);
    s.trim_end_matches('\0').to_owned()
}

/// Checks that `len` bytes at `at` lie within a file of `file_len` bytes, before anything of
/// that size is allocated: the sizes come from the file, and a hostile or damaged one says
/// up to 4 GiB (audit 21d, H4: `0xFFFFFFFF` in an event's detail size made the reader
/// zero-fill 4 GiB, and abort under a memory limit, before the read failed).
fn within(file_len: u64, at: u64, len: u64, what: &str) -> Result<(), CaptureError> {
    if at.checked_add(len).is_some_and(|end| end <= file_len) {
        Ok(())
    } else {
        Err(bad(&format!(
            "{what} of {len} bytes at offset {at:#x} runs past the end of the file ({file_len} bytes)"
        )))
    }
}

/// The string table.
///
/// Each string is read once per distinct offset, and the strings read may total no more
/// bytes than the file has: every size is checked against the file's length, but entries
/// may all point at one large string, or at overlapping ones (each size prefix inside the
/// string before), and decoding each entry on its own made a 150 KB file take 394 MB and a
/// 4 MB one abort asking for about 1.5 TB (review 21b, H2). Procmon's strings do not
/// overlap, so a real table totals less than the file.
fn read_strings<R: Read + Seek>(
    r: &mut R,
    at: u64,
    file_len: u64,
) -> Result<Vec<Arc<str>>, CaptureError> {
    r.seek(SeekFrom::Start(at))?;
    let n = read_u32(r)?;
    within(file_len, at, 4 + 4 * u64::from(n), "the string table")?;
    let mut offsets = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        offsets.push(read_u32(r)?);
    }
    let mut out = Vec::with_capacity(offsets.len());
    let mut seen: HashMap<u32, Arc<str>> = HashMap::new();
    let mut total = 0u64;
    let mut buf = Vec::new();
    for off in offsets {
        if let Some(s) = seen.get(&off) {
            out.push(Arc::clone(s));
            continue;
        }
        let string_at = at + u64::from(off);
        r.seek(SeekFrom::Start(string_at))?;
        let size = read_u32(r)?;
        within(file_len, string_at + 4, u64::from(size), "a string")?;
        total += 4 + u64::from(size);
        if total > file_len {
            return Err(bad(&format!(
                "the string table's strings total more bytes than the file has ({file_len}): \
                 they overlap, and the table is damaged"
            )));
        }
        buf.resize(size as usize, 0);
        r.read_exact(&mut buf)
            .map_err(|e| bad(&format!("truncated string: {e}")))?;
        let s: Arc<str> = Arc::from(utf16(&buf));
        seen.insert(off, Arc::clone(&s));
        out.push(s);
    }
    Ok(out)
}

/// The process table, by process index.
///
/// The records and module lists read may total no more bytes than the file has: offsets
/// may point at overlapping records, each with a module count filling the rest of the
/// file, and each was read in full (quadratic memory; review 21b, H2). Procmon's records
/// do not overlap.
fn read_processes<R: Read + Seek>(
    r: &mut R,
    at: u64,
    strings: &[Arc<str>],
    ptr: usize,
    file_len: u64,
) -> Result<HashMap<u32, Process>, CaptureError> {
    let string = |i: u32| -> Arc<str> {
        strings
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    };
    r.seek(SeekFrom::Start(at))?;
    let n = read_u32(r)?;
    within(file_len, at, 4 + 8 * u64::from(n), "the process table")?;
    r.seek(SeekFrom::Current(i64::from(n) * 4))?;
    let mut offsets = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        offsets.push(read_u32(r)?);
    }
    let fixed = 0x60 + ptr + 4;
    let module_size = 2 * ptr + 4 * 6 + 0x18;
    let mut out = HashMap::with_capacity(offsets.len());
    let mut b = vec![0u8; fixed];
    let mut module = vec![0u8; module_size];
    let mut total = 0u64;
    for off in offsets {
        read_exact_at(r, at + u64::from(off), &mut b)?;
        let index = u32_at(&b, 0);
        let count = u32_at(&b, 0x60 + ptr);
        total += fixed as u64 + u64::from(count) * module_size as u64;
        if total > file_len {
            return Err(bad(&format!(
                "the process table's records and module lists total more bytes than the \
                 file has ({file_len}): they overlap, and the table is damaged"
            )));
        }
        let mut modules = Vec::with_capacity(count.min(4096) as usize);
        for _ in 0..count {
            r.read_exact(&mut module)
                .map_err(|e| bad(&format!("truncated module list: {e}")))?;
            let m = &module;
            let base = if ptr == 8 {
                u64_at(m, 8)
            } else {
                u64::from(u32_at(m, 4))
            };
            modules.push(Module {
                base,
                size: u32_at(m, 2 * ptr),
                path: string(u32_at(m, 2 * ptr + 4)),
            });
        }
        modules.sort_by_key(|m| m.base);
        out.insert(
            index,
            Process {
                pid: u32_at(&b, 4),
                parent_pid: u32_at(&b, 8),
                start_time: u64_at(&b, 0x20),
                user: string(u32_at(&b, 0x3C)),
                image: string(u32_at(&b, 0x44)),
                modules,
            },
        );
    }
    Ok(out)
}

/// The module of `p` covering `address`, with the offset into it.
#[must_use]
pub fn module_at(p: &Process, address: u64) -> Option<(&Module, u64)> {
    let i = p.modules.partition_point(|m| m.base <= address);
    let m = p.modules.get(i.checked_sub(1)?)?;
    let off = address - m.base;
    (off < u64::from(m.size)).then_some((m, off))
}

/// Reads a PML file event by event.
pub struct PmlReader<R: Read + Seek> {
    events: BufReader<R>,
    offsets: BufReader<R>,
    pos: u64,
    header: Header,
    processes: HashMap<u32, Process>,
    system: Option<u32>,
    row: u64,
    buf: Vec<u8>,
    /// The file's length: every size read from the file is bounded by it.
    file_len: u64,
    /// Where the previous event's stack ends: the next event starts there or later, so no
    /// two events share file bytes and the frames the replay keeps total no more than the
    /// file holds (review 22f, M3: one deep-stack event named by many offsets).
    stacks_end: u64,
}

impl PmlReader<File> {
    /// Opens the PML file at `path`.
    ///
    /// # Errors
    /// [`CaptureError`] when it cannot be read or is not a PML file.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        Self::new(File::open(path)?, File::open(path)?)
    }
}

impl<R: Read + Seek> PmlReader<R> {
    /// A reader over the same file opened twice (events, and the array of offsets).
    ///
    /// # Errors
    /// [`CaptureError`] when the header or tables cannot be read.
    pub fn new(mut file: R, offsets: R) -> Result<Self, CaptureError> {
        let file_len = file.seek(SeekFrom::End(0))?;
        let mut hb = [0u8; HEADER_SIZE];
        read_exact_at(&mut file, 0, &mut hb)?;
        let header = Header::parse(&hb)?;
        check_event_count(&header, &hb, file_len)?;
        let ptr = if header.is_64bit { 8 } else { 4 };
        let strings = read_strings(&mut file, header.strings_at, file_len)?;
        let processes = read_processes(&mut file, header.processes_at, &strings, ptr, file_len)?;
        let system = processes
            .iter()
            .filter(|(_, p)| p.pid == 4)
            .map(|(i, _)| *i)
            .min();
        let mut offsets = BufReader::with_capacity(1 << 16, offsets);
        offsets.seek(SeekFrom::Start(header.offsets_at))?;
        let mut events = BufReader::with_capacity(1 << 18, file);
        events.seek(SeekFrom::Start(0))?;
        Ok(Self {
            events,
            offsets,
            pos: 0,
            header,
            processes,
            system,
            row: 0,
            buf: Vec::with_capacity(4096),
            file_len,
            stacks_end: 0,
        })
    }

    /// The header.
    #[must_use]
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// The process table, by process index.
    #[must_use]
    pub const fn processes(&self) -> &HashMap<u32, Process> {
        &self.processes
    }

    fn read_at(&mut self, at: u64, len: usize) -> Result<(), CaptureError> {
        if at
            .checked_add(len as u64)
            .is_none_or(|end| end > self.file_len)
        {
            within(self.file_len, at, len as u64, &format!("row {}", self.row))?;
        }
        let delta = i64::try_from(at.wrapping_sub(self.pos)).unwrap_or(i64::MAX);
        if at >= self.pos && delta < (1 << 20) {
            self.events.seek_relative(delta)?;
        } else {
            self.events.seek(SeekFrom::Start(at))?;
        }
        self.buf.resize(len, 0);
        self.events
            .read_exact(&mut self.buf)
            .map_err(|e| bad(&format!("event truncated at {at:#x}: {e}")))?;
        self.pos = at + len as u64;
        Ok(())
    }
}

impl<R: Read + Seek> PmlReader<R> {
    /// The stack frames (attributed to modules) and the registry detail of the event, both
    /// in `self.buf`.
    fn registry_detail(
        &self,
        pindex: u32,
        depth: usize,
        ev: &mut Event,
    ) -> Result<(), CaptureError> {
        let ptr = if self.header.is_64bit { 8 } else { 4 };
        let process = self.processes.get(&pindex);
        let b = &self.buf;
        for i in 0..depth {
            let address = if ptr == 8 {
                u64_at(b, i * 8)
            } else {
                u64::from(u32_at(b, i * 4))
            };
            let kernel = address > self.header.max_user_address;
            let owner = if kernel {
                self.system.and_then(|s| self.processes.get(&s))
            } else {
                process
            };
            let (module, offset) = owner
                .and_then(|p| module_at(p, address))
                .map_or((None, address), |(m, o)| (Some(Arc::clone(&m.path)), o));
            ev.frames.push(Frame {
                address,
                module,
                offset,
                kernel,
            });
        }
        let d = &b[depth * ptr..];
        if d.len() < 2 {
            return Err(bad(&format!("row {}: registry detail too short", self.row)));
        }
        let info = u16_at(d, 0);
        let parsed = match ev.op {
            Op::OpenKey | Op::CreateKey => detail_string(d, 8, info, &mut ev.path),
            // RegRenameKey's detail is laid out as RegLoadKey's: the new name where the hive
            // file is (procmon-parser `get_registry_event_details`).
            Op::LoadKey | Op::RenameKey if d.len() >= 4 => {
                let file_info = u16_at(d, 2);
                detail_string(d, 4, info, &mut ev.path).and_then(|end| {
                    let mut f = String::new();
                    let r = detail_string(d, end, file_info, &mut f);
                    ev.hive_file = f;
                    r
                })
            }
            _ => detail_string(d, 2, info, &mut ev.path),
        };
        if parsed.is_none() {
            return Err(bad(&format!(
                "row {}: the key path overruns its detail",
                self.row
            )));
        }
        Ok(())
    }
}

/// Reads a detail string described by its length word `info` from `b` at `at`.
fn detail_string(b: &[u8], at: usize, info: u16, out: &mut String) -> Option<usize> {
    let ascii = info & 0x8000 != 0;
    let n = usize::from(info & 0x7FFF);
    out.clear();
    if ascii {
        let s = b.get(at..at + n)?;
        out.extend(s.iter().map(|&c| char::from(c)));
        Some(at + n)
    } else {
        let s = b.get(at..at + 2 * n)?;
        out.extend(
            char::decode_utf16(s.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])))
                .map(|c| c.unwrap_or('\u{FFFD}')),
        );
        Some(at + 2 * n)
    }
}

/// Procmon's name for an NTSTATUS it shows as text (the ones the replay meets most).
#[must_use]
pub fn status_text(status: u32) -> String {
    match status {
        0 => "SUCCESS".into(),
        0x8000_0005 => "BUFFER OVERFLOW".into(),
        0x8000_001A => "NO MORE ENTRIES".into(),
        0xC000_0022 => "ACCESS DENIED".into(),
        0xC000_0023 => "BUFFER TOO SMALL".into(),
        0xC000_0034 => "NAME NOT FOUND".into(),
        0xC000_0121 => "CANNOT DELETE".into(),
        0x0000_0104 => "REPARSE".into(),
        s => format!("0x{s:08X}"),
    }
}

impl<R: Read + Seek> Reader for PmlReader<R> {
    fn next_event(&mut self, ev: &mut Event) -> Result<bool, CaptureError> {
        if self.row >= u64::from(self.header.events) {
            return Ok(false);
        }
        let mut entry = [0u8; 5];
        self.offsets
            .read_exact(&mut entry)
            .map_err(|e| bad(&format!("event offsets truncated: {e}")))?;
        self.row += 1;
        let at = u64::from(u32_at(&entry, 0));
        self.read_at(at, EVENT_HEADER)?;
        let head = &self.buf;
        let pindex = u32_at(head, 0);
        let class = u32_at(head, 8);
        let opnum = u16_at(head, 0xC);
        let time = u64_at(head, 0x1C);
        let status = u32_at(head, 0x24);
        let depth = usize::from(u16_at(head, 0x28));
        let detail_size = u32_at(head, 0x2C) as usize;
        // Procmon writes events one after another and lists them in that order (procmon-parser,
        // `docs/PML Format.md`): an event starting inside an earlier one's header or stack is
        // a damaged or crafted file, whose repeated stacks would be kept once per row.
        if at < self.stacks_end {
            return Err(bad(&format!(
                "row {}: the event at offset {at:#x} starts inside the previous event (which \
                 ends at {:#x}); events must follow one another",
                self.row, self.stacks_end
            )));
        }
        let stack_bytes = (depth * if self.header.is_64bit { 8 } else { 4 }) as u64;
        self.stacks_end = at + EVENT_HEADER as u64 + stack_bytes;
        ev.row = self.row;
        // The format numbers no events (procmon-parser, `docs/PML Format.md`): a filtered save
        // leaves no trace the replay could check.
        ev.sequence = None;
        ev.time = time;
        ev.status = Some(status);
        ev.result.clear();
        ev.path.clear();
        ev.hive_file.clear();
        ev.frames.clear();
        ev.operation.clear();
        let name = match class {
            CLASS_REGISTRY => REGISTRY_OPS.get(usize::from(opnum)).copied(),
            CLASS_PROCESS => PROCESS_OPS.get(usize::from(opnum)).copied(),
            c => CLASS_NAMES.get(c as usize).copied(),
        };
        ev.operation.push_str(name.unwrap_or("Unknown"));
        ev.op = if class == CLASS_REGISTRY || class == CLASS_PROCESS {
            Op::from_name(&ev.operation)
        } else {
            Op::Other
        };
        let process = self.processes.get(&pindex);
        ev.pid = process.map_or(0, |p| p.pid);
        ev.parent_pid = process.map_or(0, |p| p.parent_pid);
        match process {
            Some(p) if !Arc::ptr_eq(&ev.image, &p.image) => ev.image = Arc::clone(&p.image),
            Some(_) => {}
            None => ev.image = Arc::from(""),
        }
        match process {
            Some(p) if !Arc::ptr_eq(&ev.user, &p.user) => ev.user = Arc::clone(&p.user),
            Some(_) => {}
            None => ev.user = Arc::from(""),
        }
        let wanted = matches!(
            ev.op,
            Op::OpenKey
                | Op::CreateKey
                | Op::CloseKey
                | Op::LoadKey
                | Op::UnloadKey
                | Op::DeleteKey
                | Op::RenameKey
        );
        if !wanted {
            if ev.op != Op::Other {
                ev.result.push_str(&status_text(status));
            }
            return Ok(true);
        }
        ev.result.push_str(&status_text(status));
        let ptr = if self.header.is_64bit { 8 } else { 4 };
        let (start, declared) = (at + EVENT_HEADER as u64, (depth * ptr + detail_size) as u64);
        if start
            .checked_add(declared)
            .is_none_or(|end| end > self.file_len)
        {
            within(self.file_len, start, declared, &format!("row {}", self.row))?;
        }
        self.read_at(start, depth * ptr + detail_size.min(REGISTRY_DETAIL_MAX))?;
        self.registry_detail(pindex, depth, ev)?;
        Ok(true)
    }

    fn format(&self) -> &'static str {
        "pml"
    }
}
