//! Workloads pushed through the registry model: the replay of a Process Monitor CSV export
//! through the model (and so through the loaded driver's callbacks), and a seeded generator
//! of N processes × M keys with random interleavings on several emulator threads.
//!
//! The replay follows what Procmon writes, read from real captures (the MIT-licensed exports
//! in the procmon-parser repository's tests/resources, one kept under
//! `kernel-emulator/tests/procmon/`) and from procmon-parser's `consts.py` (result names,
//! access names):
//! - paths: `HKLM` alone is the master root `\REGISTRY\MACHINE`; `HKCR\…` is
//!   `\REGISTRY\MACHINE\SOFTWARE\Classes\…`; `HKCU\Software\Classes\…` is a key of the user's
//!   `<SID>_Classes` hive; `HKCU\…` the user's hive; `HKU\…` `\REGISTRY\USER\…`; Procmon
//!   shows `\REGISTRY\MACHINE\SYSTEM\ControlSet001` as `HKLM\System\CurrentControlSet` (the
//!   close rows, which carry the key object's stored name, show it so), so every row but a
//!   REPARSE maps it back to `ControlSet001`; a REPARSE row keeps the caller's
//!   `CurrentControlSet` (the name the pre-notification saw before the link was followed);
//! - only a SUCCESS open or create makes a key object and a handle; any other result reaches
//!   the callbacks as a pre-notification and a post-notification carrying that status
//!   ([`hive::open_key_failing`]);
//! - the RegCloseKey rows Procmon logs right after a Process Exit are the exiting process's
//!   handle-table rundown (ReactOS `PspExitThread`: the exit notification, then
//!   `ObKillProcess`), not a new process with the same PID;
//! - PIDs, image paths (the Image Path column, else the process name), parents (the Parent
//!   PID column, else the Process Start row's detail) are the capture's; the emulated clock
//!   follows the capture's Time of Day (it only moves forward);
//! - every row not replayed is counted with its operation and reason ([`Accounting`]).

use std::collections::{BTreeMap, HashMap};

use crate::nt::cm::hive;
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::status::{NtStatus, STATUS_SUCCESS};

/// The SID HKCU maps to in replays (a capture does not say it).
pub const REPLAY_USER_SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
const KEY_READ: u32 = 0x2_0019;
/// STATUS_REPARSE and STATUS_REPARSE_GLOBAL (Procmon shows the latter as `0x368`).
const REPARSE: [NtStatus; 2] = [0x104, 0x368];

/// One row of a capture, as Procmon wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Record number (1 = the first row after the header).
    pub line: usize,
    /// Time of Day (empty when the column is absent).
    pub time: String,
    /// Process Name.
    pub process: String,
    /// PID (None when not a number).
    pub pid: Option<u32>,
    /// Operation.
    pub operation: String,
    /// Path as Procmon wrote it.
    pub path: String,
    /// Result.
    pub result: String,
    /// Detail.
    pub detail: String,
    /// Image Path, when the column exists.
    pub image: Option<String>,
    /// Parent PID, when the column exists.
    pub parent: Option<u32>,
}

impl Row {
    /// `NAME (PID n)`.
    #[must_use]
    pub fn who(&self) -> String {
        format!(
            "{} (PID {})",
            self.process,
            self.pid.map_or_else(|| "?".to_string(), |p| p.to_string())
        )
    }

    /// `row N at TIME`.
    #[must_use]
    pub fn at(&self) -> String {
        if self.time.is_empty() {
            format!("row {}", self.line)
        } else {
            format!("row {} at {}", self.line, self.time)
        }
    }
}

/// Parses a Procmon CSV export (RFC 4180, UTF-8 with or without a BOM, any column order,
/// extra columns ignored, quoted fields may span lines).
///
/// # Errors
/// A required column (Process Name, PID, Operation, Path, Result) missing, or malformed CSV.
pub fn parse_procmon(text: &str) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let header = reader
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .clone();
    let find = |name: &str| header.iter().position(|h| h.trim() == name);
    let col = |name: &str| find(name).ok_or_else(|| format!("column {name:?} missing"));
    let (c_proc, c_pid, c_op, c_path, c_result) = (
        col("Process Name")?,
        col("PID")?,
        col("Operation")?,
        col("Path")?,
        col("Result")?,
    );
    let (c_time, c_detail, c_image, c_parent) = (
        find("Time of Day"),
        find("Detail"),
        find("Image Path"),
        find("Parent PID"),
    );
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("CSV row {}: {e}", i + 1))?;
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").trim();
        rows.push(Row {
            line: i + 1,
            time: get(c_time).to_string(),
            process: get(Some(c_proc)).to_string(),
            pid: get(Some(c_pid)).parse().ok(),
            operation: get(Some(c_op)).to_string(),
            path: get(Some(c_path)).to_string(),
            result: get(Some(c_result)).to_string(),
            detail: get(c_detail).to_string(),
            image: c_image.map(|c| get(Some(c)).to_string()),
            parent: c_parent.and_then(|c| get(Some(c)).parse().ok()),
        });
    }
    Ok(rows)
}

/// Replaces a leading `prefix` (ASCII case-insensitive, whole path components) of `path`.
fn replace_prefix(path: &str, prefix: &str, with: &str) -> Option<String> {
    let head = path.get(..prefix.len())?;
    let rest = &path[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix) && (rest.is_empty() || rest.starts_with('\\')))
        .then(|| format!("{with}{rest}"))
}

/// Maps a Procmon registry path to the NT name of the key: see the module doc. `reparse`:
/// the row's result is a REPARSE (keep `CurrentControlSet`). None: not a registry path.
#[must_use]
pub fn map_path(path: &str, reparse: bool) -> Option<String> {
    let path = path.trim_end_matches('\\');
    let user = format!(r"\REGISTRY\USER\{REPLAY_USER_SID}");
    let classes = format!(r"{user}_Classes");
    let roots: [(&str, &str); 9] = [
        (r"HKCU\Software\Classes", &classes),
        (r"HKEY_CURRENT_USER\Software\Classes", &classes),
        ("HKCU", &user),
        ("HKEY_CURRENT_USER", &user),
        ("HKLM", r"\REGISTRY\MACHINE"),
        ("HKEY_LOCAL_MACHINE", r"\REGISTRY\MACHINE"),
        ("HKCR", r"\REGISTRY\MACHINE\SOFTWARE\Classes"),
        ("HKEY_CLASSES_ROOT", r"\REGISTRY\MACHINE\SOFTWARE\Classes"),
        ("HKU", r"\REGISTRY\USER"),
    ];
    let nt = roots
        .iter()
        .find_map(|(p, w)| replace_prefix(path, p, w))
        .or_else(|| replace_prefix(path, "HKEY_USERS", r"\REGISTRY\USER"))
        .or_else(|| replace_prefix(path, r"\REGISTRY", r"\REGISTRY"))?;
    if reparse {
        return Some(nt);
    }
    Some(
        replace_prefix(
            &nt,
            r"\REGISTRY\MACHINE\SYSTEM\CurrentControlSet",
            r"\REGISTRY\MACHINE\SYSTEM\ControlSet001",
        )
        .unwrap_or(nt),
    )
}

/// The NTSTATUS of a Result column (procmon-parser `consts.py`, `_ErrorCodeMessages`, for
/// the statuses a registry open can end with; unknown ones Procmon writes as `0x…`).
#[must_use]
pub fn result_status(result: &str) -> Option<NtStatus> {
    const NAMES: [(&str, u32); 24] = [
        ("SUCCESS", 0),
        ("REPARSE", 0x104),
        ("PREDEFINED HANDLE", 0x4000_0016),
        ("BUFFER OVERFLOW", 0x8000_0005),
        ("NO MORE ENTRIES", 0x8000_001A),
        ("UNSUCCESSFUL", 0xC000_0001),
        ("INVALID HANDLE", 0xC000_0008),
        ("INVALID PARAMETER", 0xC000_000D),
        ("ACCESS DENIED", 0xC000_0022),
        ("BUFFER TOO SMALL", 0xC000_0023),
        ("OBJECT TYPE MISMATCH", 0xC000_0024),
        ("NAME INVALID", 0xC000_0033),
        ("NAME NOT FOUND", 0xC000_0034),
        ("NAME COLLISION", 0xC000_0035),
        ("OBJECT PATH INVALID", 0xC000_0039),
        ("PATH NOT FOUND", 0xC000_003A),
        ("PATH SYNTAX BAD", 0xC000_003B),
        ("PRIVILEGE NOT HELD", 0xC000_0061),
        ("INSUFFICIENT RESOURCES", 0xC000_009A),
        ("BAD IMPERSONATION", 0xC000_00A5),
        ("CANNOT DELETE", 0xC000_0121),
        ("REGISTRY CORRUPT", 0xC000_014C),
        ("KEY DELETED", 0xC000_017C),
        ("CHILD MUST BE VOLATILE", 0xC000_0181),
    ];
    let r = result.trim();
    if let Some(hex) = r.strip_prefix("0x").or_else(|| r.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok().map(u32::cast_signed);
    }
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(r))
        .map(|(_, v)| v.cast_signed())
}

/// The access mask of a `Desired Access: …` detail (procmon-parser `consts.py`,
/// `REGISTRY_ACCESS_MASK_STRINGS`); KEY_READ when the detail has none.
#[must_use]
pub fn desired_access(detail: &str) -> u32 {
    const NAMES: [(&str, u32); 20] = [
        ("All Access", 0xF_003F),
        ("Read/Write", 0x2_001F),
        ("Read", 0x2_0019),
        ("Write", 0x2_0006),
        ("Query Value", 0x1),
        ("Set Value", 0x2),
        ("Create Sub Key", 0x4),
        ("Enumerate Sub Keys", 0x8),
        ("Notify", 0x10),
        ("Create Link", 0x20),
        ("WOW64_Res", 0x300),
        ("WOW64_32Key", 0x200),
        ("WOW64_64Key", 0x100),
        ("Delete", 0x1_0000),
        ("Read Control", 0x2_0000),
        ("Write DAC", 0x4_0000),
        ("Write Owner", 0x8_0000),
        ("Synchronize", 0x10_0000),
        ("Access System Security", 0x100_0000),
        ("Maximum Allowed", 0x200_0000),
    ];
    let Some(rest) = detail.split_once("Desired Access: ").map(|(_, r)| r) else {
        return KEY_READ;
    };
    let mut mask = 0;
    for part in rest.split(", ") {
        if part.contains(": ") {
            break; // the next field (Granted Access:, Disposition:)
        }
        mask |= NAMES
            .iter()
            .find(|(n, _)| *n == part.trim())
            .map_or(0, |(_, v)| *v);
    }
    if mask == 0 { KEY_READ } else { mask }
}

/// A Time of Day (`4:33:18.8662227 PM` or `16:33:18.8662227`) in 100 ns units since midnight.
#[must_use]
pub fn time_of_day(time: &str) -> Option<u64> {
    let (clock, half) = match time.trim().split_once(' ') {
        Some((c, h)) => (c, Some(h.trim().to_ascii_uppercase())),
        None => (time.trim(), None),
    };
    let mut it = clock.split(':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let sec = it.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: u64 = s.parse().ok()?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(7).collect();
    let frac: u64 = frac.parse().ok()?;
    let h = match half.as_deref() {
        Some("AM") => h % 12,
        Some("PM") => h % 12 + 12,
        None => h,
        Some(_) => return None,
    };
    Some(((h * 60 + m) * 60 + s) * 10_000_000 + frac)
}

/// The hive mount holding an NT key name: `\REGISTRY\X\Y` (the master hive `\REGISTRY` for
/// `\REGISTRY\MACHINE` and `\REGISTRY\USER` themselves).
fn mount_of(key: &str) -> String {
    let parts: Vec<&str> = key.trim_start_matches('\\').split('\\').collect();
    if parts.len() < 3 {
        return r"\REGISTRY".to_string();
    }
    format!(r"\{}\{}\{}", parts[0], parts[1], parts[2])
}

/// The file a replayed hive is loaded from (a capture does not say; the usual places).
fn hive_file(mount: &str) -> String {
    let name = mount.rsplit('\\').next().unwrap_or("");
    if mount.to_ascii_uppercase().starts_with(r"\REGISTRY\USER\") {
        return name.strip_suffix("_Classes").map_or_else(
            || format!(r"\Device\HarddiskVolume2\Users\{name}\NTUSER.DAT"),
            |sid| {
                format!(
                    r"\Device\HarddiskVolume2\Users\{sid}\AppData\Local\Microsoft\Windows\UsrClass.dat"
                )
            },
        );
    }
    format!(r"\Device\HarddiskVolume2\Windows\System32\config\{name}")
}

/// Mounts every hive the capture's registry rows name that is not mounted yet (call it
/// before the driver loads: the hives existed before the capture began).
pub fn mount_hives(rows: &[Row]) {
    let mut mounts: Vec<String> = rows
        .iter()
        .filter(|r| r.operation.starts_with("Reg"))
        .filter_map(|r| map_path(&r.path, false))
        .map(|k| mount_of(&k))
        .filter(|m| m != r"\REGISTRY")
        .collect();
    mounts.sort_by_key(|m| m.to_ascii_uppercase());
    mounts.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    for m in mounts {
        if !kernel::with(|k| k.hives.hives.contains_key(&m.to_ascii_uppercase())) {
            let _ = hive::load_hive(4, &m, &hive_file(&m));
        }
    }
}

/// Creates `key` (and its parents below its hive) without notifications: the state the
/// capture says existed. With `new`, the key itself is left for the create to make.
fn ensure_key(key: &str, new: bool) {
    let upper = key.to_ascii_uppercase();
    let mount = mount_of(&upper);
    kernel::with(|k| {
        if !k.hives.hives.contains_key(&mount) {
            return;
        }
        let mut cur = mount.clone();
        let rest = upper[mount.len()..].trim_start_matches('\\');
        let parts: Vec<&str> = rest.split('\\').filter(|p| !p.is_empty()).collect();
        let keep = if new {
            parts.len().saturating_sub(1)
        } else {
            parts.len()
        };
        for p in &parts[..keep] {
            cur.push('\\');
            cur.push_str(p);
            k.hives.keys.insert(cur.clone());
        }
        if new {
            k.hives.keys.remove(&upper);
        }
    });
}

/// A handle the model holds, with the capture row that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHandle {
    /// Process id.
    pub pid: u32,
    /// Image of the process (the model's).
    pub image: String,
    /// Parent process id (the model's).
    pub parent: u32,
    /// Key object name.
    pub name: String,
    /// Canonical mount point of its hive.
    pub hive: String,
    /// The row that opened it (0 if the replay did not).
    pub row: usize,
    /// That row's Time of Day.
    pub time: String,
    /// Emulated system time just before and just after the open.
    pub window: (u64, u64),
}

/// What the replay did with the capture's rows.
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    /// Rows in the capture.
    pub rows: usize,
    /// Replayed rows by operation and result (or `rundown` for the exit's closes).
    pub replayed: BTreeMap<(String, String), usize>,
    /// Rows not replayed by operation and reason.
    pub skipped: BTreeMap<(String, String), usize>,
    /// Rows whose outcome in the model differs from the capture.
    pub mismatches: Vec<String>,
    /// Processes started by a Process Start row.
    pub started: usize,
    /// Processes already running when the capture began (first seen in a registry row).
    pub running: usize,
    /// The capture has no RegCloseKey row at all.
    pub no_closes: bool,
    /// The capture has no RegOpenKey or RegCreateKey row at all.
    pub no_opens: bool,
}

impl Accounting {
    fn skip(&mut self, row: &Row, why: &str) {
        *self
            .skipped
            .entry((row.operation.clone(), why.to_string()))
            .or_default() += 1;
    }

    fn done(&mut self, row: &Row, how: &str) {
        *self
            .replayed
            .entry((row.operation.clone(), how.to_string()))
            .or_default() += 1;
    }

    /// Rows replayed.
    #[must_use]
    pub fn replayed_rows(&self) -> usize {
        self.replayed.values().sum()
    }

    /// The accounting as report lines.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let skipped: usize = self.skipped.values().sum();
        let mut out = vec![format!(
            "rows: {} in the capture, {} replayed, {skipped} not replayed; {} processes started in the capture, {} already running",
            self.rows,
            self.replayed_rows(),
            self.started,
            self.running
        )];
        for ((op, how), n) in &self.replayed {
            out.push(format!("  replayed      {op:<16} {n:>6}  {how}"));
        }
        for ((op, why), n) in &self.skipped {
            out.push(format!("  not replayed  {op:<16} {n:>6}  {why}"));
        }
        if self.no_closes {
            out.push(
                "the capture has no RegCloseKey row at all (filtered out when it was taken): it cannot say who holds what; the holders shown are only what its opens imply".to_string(),
            );
        }
        if self.no_opens {
            out.push(
                "the capture has no RegOpenKey or RegCreateKey row at all: it cannot say who holds what".to_string(),
            );
        }
        for m in &self.mismatches {
            out.push(format!("  MISMATCH {m}"));
        }
        out
    }
}

/// Why a registry row is not an open, create, close or process row the replay models.
const NOT_MODELLED: &str =
    "not modelled: the replay drives opens, creates, closes, process start and exit";

/// The row that opened a handle: its number, its Time of Day, the emulated system time just
/// before and just after the open.
type Opened = (usize, String, (u64, u64));

/// The replay's state.
struct Replayer<'a> {
    acc: Accounting,
    opened: HashMap<(u32, u64), Opened>,
    /// Exited processes: the names of the handles their rundown closed, not yet matched by a
    /// RegCloseKey row.
    exited: HashMap<u32, Vec<String>>,
    clock: Option<(u64, u64)>,
    last_time: u64,
    checkpoint: &'a mut dyn FnMut(&str, &[OpenHandle]),
}

/// Replays `rows` through the model. `checkpoint(label, model handle table)` runs before
/// each replayed Process Exit row, at the end of the capture, and once more after the
/// processes still running have exited (their handles run down); returns the accounting.
pub fn replay(rows: &[Row], checkpoint: &mut dyn FnMut(&str, &[OpenHandle])) -> Accounting {
    let mut r = Replayer {
        acc: Accounting {
            rows: rows.len(),
            no_closes: !rows.iter().any(|r| r.operation == "RegCloseKey"),
            no_opens: !rows
                .iter()
                .any(|r| matches!(r.operation.as_str(), "RegOpenKey" | "RegCreateKey")),
            ..Accounting::default()
        },
        opened: HashMap::new(),
        exited: HashMap::new(),
        clock: None,
        last_time: 0,
        checkpoint,
    };
    for row in rows {
        r.follow_clock(row);
        r.row(row);
    }
    let table = r.table();
    (r.checkpoint)("at the end of the capture", &table);
    let live: Vec<u32> = kernel::with(|k| k.processes.processes.keys().copied().collect());
    for pid in live {
        process::exit_process(pid);
    }
    r.opened.retain(|(pid, _), _| *pid == 4);
    let table = r.table();
    (r.checkpoint)(
        "after the remaining processes exit (the System process's handles stay)",
        &table,
    );
    r.acc
}

impl Replayer<'_> {
    /// Moves the emulated clock so that it runs as far from its start as the row's Time of
    /// Day from the first row's (a row past midnight counts one day on).
    fn follow_clock(&mut self, row: &Row) {
        const DAY: u64 = 864_000_000_000;
        let Some(mut t) = time_of_day(&row.time) else {
            return;
        };
        while t + DAY / 2 < self.last_time {
            t += DAY;
        }
        self.last_time = t;
        let (t0, e0) = *self
            .clock
            .get_or_insert_with(|| (t, crate::machine::cpu::system_time()));
        let target = e0 + t.saturating_sub(t0);
        let now = crate::machine::cpu::system_time();
        if target > now {
            crate::machine::cpu::advance_clock(target - now);
        }
    }

    fn live(pid: u32) -> bool {
        pid == 4 || kernel::with(|k| k.processes.processes.contains_key(&pid))
    }

    /// Starts the row's process if the model does not have it (it was running when the
    /// capture began, or its PID was reused after an exit).
    fn ensure_process(&mut self, row: &Row, pid: u32) -> bool {
        if Self::live(pid) {
            return true;
        }
        self.exited.remove(&pid);
        let image = row.image.clone().unwrap_or_else(|| row.process.clone());
        let parent = row.parent.unwrap_or(0);
        if process::create_process_with_pid(parent, &image, false, pid).is_ok() {
            self.acc.running += 1;
            true
        } else {
            false
        }
    }

    fn row(&mut self, row: &Row) {
        let Some(pid) = row.pid else {
            self.acc.skip(row, "PID is not a number");
            return;
        };
        match row.operation.as_str() {
            "Process Start" => self.start(row, pid),
            "Process Exit" => self.exit(row, pid),
            "RegOpenKey" | "RegCreateKey" => self.open(row, pid),
            "RegCloseKey" => self.close(row, pid),
            op if op.starts_with("Reg") => self.acc.skip(row, NOT_MODELLED),
            _ => self
                .acc
                .skip(row, "not a registry operation or a process start or exit"),
        }
    }

    fn start(&mut self, row: &Row, pid: u32) {
        if pid == 0 || pid == 4 {
            self.acc.skip(row, "the Idle or System process");
            return;
        }
        if Self::live(pid) {
            self.acc.skip(
                row,
                "PID already running in the replay (its exit was not captured)",
            );
            return;
        }
        self.exited.remove(&pid);
        let image = row.image.clone().unwrap_or_else(|| row.process.clone());
        let parent = row.parent.or_else(|| {
            let (_, rest) = row.detail.split_once("Parent PID: ")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        match process::create_process_with_pid(parent.unwrap_or(0), &image, false, pid) {
            Ok(_) => {
                self.acc.started += 1;
                self.acc.done(row, "SUCCESS");
            }
            Err(s) => self.acc.mismatches.push(format!(
                "{}: Process Start of {}: the model refused with {s:#x}",
                row.at(),
                row.who()
            )),
        }
    }

    fn exit(&mut self, row: &Row, pid: u32) {
        if pid == 4 || !Self::live(pid) {
            self.acc.skip(row, "a process the replay never started");
            self.exited.insert(pid, Vec::new());
            return;
        }
        let table = self.table();
        (self.checkpoint)(
            &format!("before Process Exit of {}, {}", row.who(), row.at()),
            &table,
        );
        let names: Vec<String> = table
            .iter()
            .filter(|h| h.pid == pid)
            .map(|h| h.name.to_ascii_uppercase())
            .collect();
        process::exit_process(pid);
        self.opened.retain(|(p, _), _| *p != pid);
        self.exited.insert(pid, names);
        self.acc.done(row, "SUCCESS");
    }

    fn open(&mut self, row: &Row, pid: u32) {
        let Some(status) = result_status(&row.result) else {
            self.acc.skip(row, "Result not understood");
            return;
        };
        let Some(nt) = map_path(&row.path, REPARSE.contains(&status)) else {
            self.acc
                .skip(row, "Path is not a registry path Procmon writes");
            return;
        };
        if pid == 0 || !self.ensure_process(row, pid) {
            self.acc
                .skip(row, "the Idle process, or a PID the model refused");
            return;
        }
        let create = row.operation == "RegCreateKey";
        let access = desired_access(&row.detail);
        if status != STATUS_SUCCESS {
            let s = hive::open_key_failing(pid, &nt, access, create, status);
            if s == status {
                self.acc.done(row, &row.result);
            } else {
                self.acc.mismatches.push(format!(
                    "{}: {} {} {}: capture {}, model {s:#x}",
                    row.at(),
                    row.who(),
                    row.operation,
                    row.path,
                    row.result
                ));
            }
            return;
        }
        ensure_key(&nt, create && row.detail.contains("REG_CREATED_NEW_KEY"));
        let before = crate::machine::cpu::system_time();
        let r = hive::open_key(pid, &nt, access, create);
        let after = crate::machine::cpu::system_time();
        match r {
            Ok(h) => {
                self.opened
                    .insert((pid, h), (row.line, row.time.clone(), (before, after)));
                self.acc.done(row, "SUCCESS");
            }
            Err(s) => self.acc.mismatches.push(format!(
                "{}: {} {} {}: capture SUCCESS, model {s:#x}",
                row.at(),
                row.who(),
                row.operation,
                row.path
            )),
        }
    }

    fn close(&mut self, row: &Row, pid: u32) {
        let Some(nt) = map_path(&row.path, false) else {
            self.acc
                .skip(row, "Path is not a registry path Procmon writes");
            return;
        };
        let upper = nt.to_ascii_uppercase();
        if let Some(names) = self.exited.get_mut(&pid) {
            match names.iter().position(|n| *n == upper) {
                Some(i) => {
                    names.swap_remove(i);
                    self.acc.done(row, "the exited process's handle rundown");
                }
                None => self.acc.skip(
                    row,
                    "rundown close of a handle the capture never showed opened (opened before the capture began)",
                ),
            }
            return;
        }
        if !Self::live(pid) {
            self.acc.skip(
                row,
                "close of a handle opened before the capture began (no earlier row of the process)",
            );
            return;
        }
        // The capture cannot say which of two handles to one key a close ends: the most
        // recent open.
        let handle = self
            .table()
            .into_iter()
            .filter(|h| h.pid == pid && h.name.eq_ignore_ascii_case(&nt))
            .max_by_key(|h| h.row)
            .and_then(|h| {
                self.opened
                    .iter()
                    .find(|(_, v)| v.0 == h.row && h.row != 0)
                    .map(|((_, handle), _)| *handle)
            });
        let Some(handle) = handle else {
            self.acc.skip(
                row,
                "close of a handle the capture never showed opened (opened before the capture began, or in a row filtered out)",
            );
            return;
        };
        self.opened.remove(&(pid, handle));
        let s = hive::close_key(pid, handle);
        if s == STATUS_SUCCESS {
            self.acc.done(row, "SUCCESS");
        } else {
            self.acc.mismatches.push(format!(
                "{}: {} close {}: model {s:#x}",
                row.at(),
                row.who(),
                row.path
            ));
        }
    }

    /// The model's handle table, with the rows that opened each handle.
    fn table(&self) -> Vec<OpenHandle> {
        let mut v: Vec<OpenHandle> = kernel::with(|k| {
            k.hives
                .handles
                .iter()
                .filter_map(|(&(pid, handle), object)| {
                    let o = k.hives.objects.get(object)?;
                    let (image, parent) = k
                        .processes
                        .processes
                        .get(&pid)
                        .map_or_else(|| (String::new(), 0), |p| (p.image.clone(), p.parent));
                    let (row, time, window) = self.opened.get(&(pid, handle)).cloned().unwrap_or((
                        0,
                        String::new(),
                        (0, 0),
                    ));
                    Some(OpenHandle {
                        pid,
                        image,
                        parent,
                        name: o.name.clone(),
                        hive: o.hive.clone(),
                        row,
                        time,
                        window,
                    })
                })
                .collect()
        });
        v.sort_by_key(|h| (h.pid, h.row));
        v
    }
}

/// A seeded generator: `threads` emulator threads, each starting `processes` processes that
/// open (and create) `keys` keys under `root` in a random order, duplicate some handles into
/// a sibling, close some, and exit. Returns the number of successful opens.
///
/// # Panics
/// If an emulator thread cannot be spawned.
#[must_use]
#[allow(clippy::needless_collect)] // every worker must be spawned before any is joined
pub fn generate(root: &str, threads: u32, processes: u32, keys: u32, seed: u64) -> u64 {
    ensure_key(root, false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let root = root.to_string();
                std::thread::Builder::new()
                    .stack_size(16 << 20)
                    .spawn_scoped(s, move || {
                        crate::machine::cpu::enter_thread(100 + t);
                        let mut x = seed ^ (u64::from(t) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let mut next = move || {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x
                        };
                        let mut opened = 0u64;
                        let pids: Vec<u32> = (0..processes)
                            .filter_map(|p| {
                                process::create_process(
                                    4,
                                    &format!(r"\Device\HarddiskVolume2\gen{t}-{p}.exe"),
                                    false,
                                )
                                .ok()
                            })
                            .collect();
                        let mut handles: Vec<(u32, u64)> = Vec::new();
                        for _ in 0..processes * keys {
                            let pid = pids[(next() % pids.len() as u64) as usize];
                            match next() % 4 {
                                0 | 1 => {
                                    let key = format!(r"{root}\k{}", next() % u64::from(keys));
                                    if let Ok(h) = hive::open_key(pid, &key, KEY_READ, true) {
                                        opened += 1;
                                        handles.push((pid, h));
                                    }
                                }
                                2 if !handles.is_empty() => {
                                    let i = (next() % handles.len() as u64) as usize;
                                    let (p, h) = handles.swap_remove(i);
                                    let _ = hive::close_key(p, h);
                                }
                                _ if !handles.is_empty() => {
                                    let i = (next() % handles.len() as u64) as usize;
                                    let (p, h) = handles[i];
                                    let other = pids[(next() % pids.len() as u64) as usize];
                                    if let Ok(d) = hive::duplicate_handle(p, h, other) {
                                        handles.push((other, d));
                                    }
                                }
                                _ => {}
                            }
                        }
                        for pid in pids {
                            process::exit_process(pid);
                        }
                        opened
                    })
                    .expect("spawn a generator thread")
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_as_procmon_writes_them() {
        let user = format!(r"\REGISTRY\USER\{REPLAY_USER_SID}");
        assert_eq!(
            map_path(r"HKLM\Software\X", false).unwrap(),
            r"\REGISTRY\MACHINE\Software\X"
        );
        assert_eq!(map_path("HKLM", false).unwrap(), r"\REGISTRY\MACHINE");
        assert_eq!(
            map_path(r"HKCU\Software", false).unwrap(),
            format!(r"{user}\Software")
        );
        assert_eq!(
            map_path(r"HKCU\Software\Classes\.txt", false).unwrap(),
            format!(r"{user}_Classes\.txt")
        );
        assert_eq!(
            map_path(r"HKCU\Software\Classes", false).unwrap(),
            format!(r"{user}_Classes")
        );
        assert_eq!(
            map_path(r"HKCU\Software\ClassesX", false).unwrap(),
            format!(r"{user}\Software\ClassesX")
        );
        assert_eq!(
            map_path(r"HKCR\.txt", false).unwrap(),
            r"\REGISTRY\MACHINE\SOFTWARE\Classes\.txt"
        );
        assert_eq!(
            map_path(r"HKU\S-1-5-19", false).unwrap(),
            r"\REGISTRY\USER\S-1-5-19"
        );
        assert_eq!(
            map_path(r"HKLM\System\CurrentControlSet\Control\", false).unwrap(),
            r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Control"
        );
        assert_eq!(
            map_path(r"HKLM\System\CurrentControlSet\Control", true).unwrap(),
            r"\REGISTRY\MACHINE\System\CurrentControlSet\Control"
        );
        assert_eq!(map_path(r"C:\Windows", false), None);
        assert_eq!(map_path("", false), None);
    }

    #[test]
    fn results_access_and_times() {
        assert_eq!(result_status("SUCCESS"), Some(0));
        assert_eq!(
            result_status("NAME NOT FOUND"),
            Some(0xC000_0034_u32.cast_signed())
        );
        assert_eq!(result_status("0x368"), Some(0x368));
        assert_eq!(result_status("FROBNICATED"), None);
        assert_eq!(desired_access("Desired Access: Read"), 0x2_0019);
        assert_eq!(
            desired_access(
                "Desired Access: Query Value, Set Value, Disposition: REG_OPENED_EXISTING_KEY"
            ),
            3
        );
        assert_eq!(
            desired_access("Desired Access: Maximum Allowed, Granted Access: Read"),
            0x200_0000
        );
        assert_eq!(
            time_of_day("4:33:18.8662227 PM"),
            Some((16 * 3600 + 33 * 60 + 18) * 10_000_000 + 8_662_227)
        );
        assert_eq!(time_of_day("12:00:00.5 AM"), Some(5_000_000));
        assert_eq!(
            time_of_day("9:41:00.0000001"),
            Some((9 * 3600 + 41 * 60) * 10_000_000 + 1)
        );
        assert_eq!(time_of_day("n/a"), None);
    }

    #[test]
    fn csv_as_procmon_writes_it() {
        let csv = "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\",\"Parent PID\"\r\n\
                   \"10:00:00.0000000 AM\",\"a.exe\",\"12\",\"RegOpenKey\",\"HKLM\\Software\\X\",\"SUCCESS\",\"Desired Access: Read\",\"8\"\r\n\
                   \"10:00:00.0000001 AM\",\"a.exe\",\"12\",\"Process Start\",\"\",\"SUCCESS\",\"Parent PID: 8, Command line: \"\"a.exe\"\"\nEnvironment:\n  A=1\",\"8\"\r\n";
        let rows = parse_procmon(csv).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].path, r"HKLM\Software\X");
        assert_eq!(rows[0].parent, Some(8));
        assert_eq!(rows[0].pid, Some(12));
        assert_eq!(rows[1].line, 2);
        assert!(rows[1].detail.contains("\"a.exe\"\nEnvironment:\n  A=1"));
        assert!(parse_procmon("\"PID\"\n1\n").is_err());
    }
}
