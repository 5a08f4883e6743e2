//! Procmon CSV exports, read row by row.
//!
//! RFC 4180 (quoted fields may span lines), UTF-8 with a byte-order mark, a header row
//! naming the columns. Columns are found by name, so any selection and order Procmon writes
//! is read; `Operation`, `Path`, `Result` and `PID` are required.
//!
//! `Sequence`, when present and numeric, is Procmon's event number: the replay checks it for
//! gaps (rows left out by a filtered save or export); `n/a` (what Procmon writes for a log
//! loaded from a file) or no column leaves the row unnumbered.
//!
//! Times: `Time of Day` (`7:27:31.7947753 AM`, 100 ns resolution) on the date of
//! `Date & Time` (`7/31/2020 7:27:31 AM`), both in the capturing machine's local time and
//! en-US format (Procmon writes the machine's locale; other formats give time 0 = unknown).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use csv::StringRecord;

use crate::event::{Event, Op};
use crate::{CaptureError, Reader};

/// Reads a Procmon CSV export row by row.
pub struct CsvReader<R: Read> {
    inner: csv::Reader<R>,
    record: StringRecord,
    cols: Columns,
    row: u64,
    images: HashMap<u32, Arc<str>>,
    /// Users by pid, for the same reason.
    users: HashMap<u32, Arc<str>>,
}

#[derive(Default)]
struct Columns {
    operation: usize,
    path: usize,
    result: usize,
    pid: usize,
    name: Option<usize>,
    image: Option<usize>,
    user: Option<usize>,
    parent: Option<usize>,
    detail: Option<usize>,
    time_of_day: Option<usize>,
    date_time: Option<usize>,
    sequence: Option<usize>,
}

impl<R: Read> CsvReader<R> {
    /// A reader of the export in `input`; reads the header row.
    ///
    /// # Errors
    /// [`CaptureError::Format`] when the header lacks a required column.
    pub fn new(input: R) -> Result<Self, CaptureError> {
        let mut inner = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(input);
        let headers = inner.headers()?.clone();
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim_start_matches('\u{feff}').trim() == name)
        };
        let need = |name: &str| {
            find(name).ok_or_else(|| {
                CaptureError::Format(format!("the CSV header has no \"{name}\" column"))
            })
        };
        let cols = Columns {
            operation: need("Operation")?,
            path: need("Path")?,
            result: need("Result")?,
            pid: need("PID")?,
            name: find("Process Name"),
            image: find("Image Path"),
            user: find("User"),
            parent: find("Parent PID"),
            detail: find("Detail"),
            time_of_day: find("Time of Day"),
            date_time: find("Date & Time"),
            sequence: find("Sequence"),
        };
        Ok(Self {
            inner,
            record: StringRecord::new(),
            cols,
            row: 0,
            images: HashMap::new(),
            users: HashMap::new(),
        })
    }
}

/// The process's text `s` for `pid`, shared with its earlier rows while it stays the same
/// (rows of one process repeat it: one allocation per process, not per row).
fn shared(cache: &mut HashMap<u32, Arc<str>>, pid: u32, s: &str) -> Arc<str> {
    if let Some(c) = cache.get(&pid).filter(|c| &***c == s) {
        return Arc::clone(c);
    }
    let a: Arc<str> = Arc::from(s);
    cache.insert(pid, Arc::clone(&a));
    a
}

impl<R: Read> Reader for CsvReader<R> {
    fn next_event(&mut self, ev: &mut Event) -> Result<bool, CaptureError> {
        if !self.inner.read_record(&mut self.record)? {
            return Ok(false);
        }
        self.row += 1;
        let r = &self.record;
        let get = |i: usize| r.get(i).unwrap_or("");
        let opt = |i: Option<usize>| i.map_or("", get);
        ev.row = self.row;
        ev.sequence = opt(self.cols.sequence).trim().parse().ok();
        ev.operation.clear();
        ev.operation.push_str(get(self.cols.operation));
        ev.op = Op::from_name(&ev.operation);
        ev.path.clear();
        ev.path.push_str(get(self.cols.path));
        ev.result.clear();
        ev.result.push_str(get(self.cols.result));
        ev.status = None;
        ev.pid = get(self.cols.pid).trim().parse().unwrap_or(0);
        ev.parent_pid = opt(self.cols.parent).trim().parse().unwrap_or(0);
        let image = match opt(self.cols.image) {
            "" => opt(self.cols.name),
            s => s,
        };
        ev.image = shared(&mut self.images, ev.pid, image);
        ev.user = shared(&mut self.users, ev.pid, opt(self.cols.user));
        ev.hive_file.clear();
        let detail = opt(self.cols.detail);
        let second = match ev.op {
            Op::LoadKey => detail.strip_prefix("Hive Path: "),
            Op::RenameKey => detail.strip_prefix("New Name: "),
            _ => None,
        };
        if let Some(f) = second {
            ev.hive_file.push_str(f);
        }
        let tod = parse_time_of_day(opt(self.cols.time_of_day));
        let day = parse_date(opt(self.cols.date_time));
        ev.time = match (day, tod) {
            (Some(d), Some(t)) => d + t,
            (None, Some(t)) => t,
            (Some(d), None) => d,
            (None, None) => 0,
        };
        ev.frames.clear();
        Ok(true)
    }

    fn format(&self) -> &'static str {
        "csv"
    }
}

/// One day in FILETIME units.
pub const DAY: u64 = 864_000_000_000;

/// `h:mm:ss[.fffffff] [AM|PM]` as 100 ns ticks since midnight.
#[must_use]
pub fn parse_time_of_day(s: &str) -> Option<u64> {
    let s = s.trim();
    let (clock, pm) = s.strip_suffix(" PM").map_or_else(
        || {
            s.strip_suffix(" AM")
                .map_or((s, None), |c| (c, Some(false)))
        },
        |c| (c, Some(true)),
    );
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut it = hms.split(':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let sec: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 || frac.len() > 7 {
        return None;
    }
    let h = match pm {
        Some(true) if h < 12 => h + 12,
        Some(false) if h == 12 => 0,
        _ => h,
    };
    let mut ticks = 0u64;
    for (i, c) in frac.bytes().enumerate() {
        let d = u64::from(c.checked_sub(b'0').filter(|d| *d < 10)?);
        ticks += d * 10u64.pow(6 - u32::try_from(i).ok()?);
    }
    Some(((h * 60 + m) * 60 + sec) * 10_000_000 + ticks)
}

/// The date of `M/D/YYYY[ time]` as the FILETIME of its midnight.
#[must_use]
pub fn parse_date(s: &str) -> Option<u64> {
    let date = s.trim().split(' ').next()?;
    let mut it = date.split('/');
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    let y: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1601 {
        return None;
    }
    // Howard Hinnant's days_from_civil (days since 1970-01-01), then from 1601-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468 + 134_774;
    u64::try_from(days).ok().map(|d| d * DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_to_filetime() {
        assert_eq!(parse_time_of_day("12:00:00.0000001 AM"), Some(1));
        assert_eq!(
            parse_time_of_day("7:27:31.7947753 PM"),
            Some(((19 * 60 + 27) * 60 + 31) * 10_000_000 + 7_947_753)
        );
        assert_eq!(
            parse_time_of_day("19:27:31.5"),
            Some(((19 * 60 + 27) * 60 + 31) * 10_000_000 + 5_000_000)
        );
        assert_eq!(parse_time_of_day("nonsense"), None);
        // 1970-01-01 is 11644473600 s after 1601-01-01.
        assert_eq!(
            parse_date("1/1/1970 1:00:00 AM"),
            Some(11_644_473_600 * 10_000_000)
        );
        assert_eq!(parse_date("1/1/1601"), Some(0));
        assert_eq!(parse_date("13/1/2020"), None);
    }

    #[test]
    fn quoted_multiline_fields_and_the_bom_are_read() {
        let text = "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\"\r\n\
            \"1:00:00.0000000 AM\",\"a.exe\",\"7\",\"RegOpenKey\",\"HKLM\\A, \"\"quoted\"\"\",\"SUCCESS\",\"line1\r\nline2\"\r\n\
            \"1:00:01.0000000 AM\",\"a.exe\",\"7\",\"RegCloseKey\",\"HKLM\\B\",\"SUCCESS\",\"\"\r\n";
        let mut r = CsvReader::new(text.as_bytes()).unwrap();
        let mut ev = Event::default();
        assert!(r.next_event(&mut ev).unwrap());
        assert_eq!((ev.row, ev.op, ev.pid), (1, Op::OpenKey, 7));
        assert_eq!(ev.path, "HKLM\\A, \"quoted\"");
        assert_eq!(ev.time, 3600 * 10_000_000);
        assert!(ev.success());
        assert!(r.next_event(&mut ev).unwrap());
        assert_eq!(
            (ev.row, ev.op, ev.path.as_str()),
            (2, Op::CloseKey, "HKLM\\B")
        );
        assert!(!r.next_event(&mut ev).unwrap());
    }

    #[test]
    fn a_header_without_the_operation_is_refused() {
        assert!(matches!(
            CsvReader::new(&b"\"PID\",\"Path\"\r\n"[..]),
            Err(CaptureError::Format(_))
        ));
    }
}
