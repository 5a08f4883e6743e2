//! Fixture writer: scripted Procmon captures written as PML (per the format description in
//! procmon-parser's `docs/PML Format.md`, the layout our reader reads) and as a Procmon CSV
//! export of the same rows (BOM, CRLF, every field quoted, Procmon's column names).
#![allow(dead_code, reason = "each test binary uses part of the writer")]

use capture::csv::parse_date;

/// The date every scripted capture is taken on (Procmon's en-US CSV format).
pub const DATE: &str = "11/22/2026";
/// One second in FILETIME units.
pub const SECOND: u64 = 10_000_000;
/// `STATUS_CANNOT_DELETE`, the failed unload of a hive with open keys.
pub const CANNOT_DELETE: u32 = 0xC000_0121;
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
pub const NAME_NOT_FOUND: u32 = 0xC000_0034;

/// A captured process.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub parent: u32,
    pub image: String,
    /// (base, size, path)
    pub modules: Vec<(u64, u32, String)>,
}

/// A scripted row.
#[derive(Clone, Debug)]
pub struct Row {
    /// Index into the process list.
    pub process: usize,
    /// Procmon's operation name.
    pub op: &'static str,
    /// Path as Procmon shows it.
    pub path: String,
    /// NTSTATUS.
    pub status: u32,
    /// Seconds after midnight.
    pub secs: u64,
    /// Stack, innermost first.
    pub stack: Vec<u64>,
    /// `RegLoadKey`: the hive file.
    pub file: String,
}

impl Row {
    pub fn new(process: usize, op: &'static str, path: &str, secs: u64) -> Self {
        Self {
            process,
            op,
            path: path.to_owned(),
            status: 0,
            secs,
            stack: Vec::new(),
            file: String::new(),
        }
    }
    pub const fn status(mut self, s: u32) -> Self {
        self.status = s;
        self
    }
    pub fn stack(mut self, s: &[u64]) -> Self {
        self.stack = s.to_vec();
        self
    }
    pub fn file(mut self, f: &str) -> Self {
        f.clone_into(&mut self.file);
        self
    }
}

/// The FILETIME of `secs` after midnight of [`DATE`].
pub fn time(secs: u64) -> u64 {
    parse_date(DATE).expect("a date") + secs * SECOND
}

fn class_op(op: &str) -> (u32, u16) {
    let reg = capture::pml::REGISTRY_OPS.iter().position(|o| *o == op);
    let pro = capture::pml::PROCESS_OPS.iter().position(|o| *o == op);
    match (reg, pro) {
        (Some(i), _) => (2, u16::try_from(i).unwrap()),
        (_, Some(i)) => (1, u16::try_from(i).unwrap()),
        _ => (3, 0),
    }
}

fn status_text(s: u32) -> String {
    capture::pml::status_text(s)
}

struct Strings(Vec<String>);
impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(i) = self.0.iter().position(|x| x == s) {
            return u32::try_from(i).unwrap();
        }
        self.0.push(s.to_owned());
        u32::try_from(self.0.len() - 1).unwrap()
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn detail_string_info(s: &str) -> u16 {
    u16::try_from(s.encode_utf16().count()).unwrap()
}

/// The capture as a 64-bit PML file.
#[allow(
    clippy::too_many_lines,
    reason = "the file's layout, section by section, reads best in one piece"
)]
pub fn pml(procs: &[Proc], rows: &[Row]) -> Vec<u8> {
    let mut f = vec![0u8; 0x3A8];
    let mut offsets = Vec::new();
    for r in rows {
        offsets.push(u32::try_from(f.len()).unwrap());
        let (class, op) = class_op(r.op);
        let mut detail = Vec::new();
        match (class, r.op) {
            (2, "RegOpenKey" | "RegCreateKey") => {
                detail.extend(detail_string_info(&r.path).to_le_bytes());
                detail.extend([0u8; 2]);
                detail.extend(0x2_0019u32.to_le_bytes());
                detail.extend(utf16(&r.path));
            }
            // procmon-parser `get_registry_event_details`: a rename's new name sits where a
            // load's hive file does.
            (2, "RegLoadKey" | "RegRenameKey") => {
                detail.extend(detail_string_info(&r.path).to_le_bytes());
                detail.extend(detail_string_info(&r.file).to_le_bytes());
                detail.extend(utf16(&r.path));
                detail.extend(utf16(&r.file));
            }
            (2, _) => {
                detail.extend(detail_string_info(&r.path).to_le_bytes());
                detail.extend(utf16(&r.path));
            }
            (1, "Process Start") => detail.extend([0u8; 12]),
            (1, "Process Exit") => detail.extend([0u8; 52]),
            _ => detail.extend([0u8; 16]),
        }
        let mut e = Vec::new();
        e.extend(u32::try_from(r.process).unwrap().to_le_bytes());
        e.extend(1000u32.to_le_bytes()); // thread
        e.extend(class.to_le_bytes());
        e.extend(op.to_le_bytes());
        e.extend([0u8; 6]);
        e.extend(5u64.to_le_bytes()); // duration
        e.extend(time(r.secs).to_le_bytes());
        e.extend(r.status.to_le_bytes());
        e.extend(u16::try_from(r.stack.len()).unwrap().to_le_bytes());
        e.extend([0u8; 2]);
        e.extend(u32::try_from(detail.len()).unwrap().to_le_bytes());
        e.extend(0u32.to_le_bytes()); // no extra detail
        assert_eq!(e.len(), 0x34);
        for a in &r.stack {
            e.extend(a.to_le_bytes());
        }
        e.extend(detail);
        f.extend(e);
    }
    let offsets_at = f.len();
    for o in &offsets {
        f.extend(o.to_le_bytes());
        f.push(0);
    }
    // Processes reference strings; build them first, write strings, then processes.
    let mut strings = Strings(vec![String::new()]);
    let mut procs_bytes = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let mut b = Vec::new();
        b.extend(u32::try_from(i).unwrap().to_le_bytes());
        b.extend(p.pid.to_le_bytes());
        b.extend(p.parent.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0x3E7u64.to_le_bytes()); // authentication id
        b.extend(1u32.to_le_bytes()); // session
        b.extend(0u32.to_le_bytes());
        b.extend(time(0).to_le_bytes()); // start
        b.extend(0u64.to_le_bytes()); // end
        b.extend(0u32.to_le_bytes()); // virtualized
        b.extend(1u32.to_le_bytes()); // 64-bit
        let name = p.image.rsplit('\\').next().unwrap().to_owned();
        for s in [
            "Medium",
            r"CONTOSO\alice",
            &name,
            &p.image,
            &p.image,
            "",
            "",
            "",
        ] {
            b.extend(strings.id(s).to_le_bytes());
        }
        b.extend(0u32.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // icons
        b.extend(0u64.to_le_bytes()); // unknown pvoid
        b.extend(u32::try_from(p.modules.len()).unwrap().to_le_bytes());
        assert_eq!(b.len(), 0x60 + 8 + 4);
        for (base, size, path) in &p.modules {
            b.extend(0u64.to_le_bytes());
            b.extend(base.to_le_bytes());
            b.extend(size.to_le_bytes());
            b.extend(strings.id(path).to_le_bytes());
            for _ in 0..3 {
                b.extend(strings.id("").to_le_bytes());
            }
            b.extend(0u32.to_le_bytes());
            b.extend([0u8; 0x18]);
        }
        procs_bytes.push(b);
    }
    let strings_at = f.len();
    let n = strings.0.len();
    f.extend(u32::try_from(n).unwrap().to_le_bytes());
    let mut rel = 4 + 4 * n;
    let mut body = Vec::new();
    for s in &strings.0 {
        f.extend(u32::try_from(rel).unwrap().to_le_bytes());
        let mut u = utf16(s);
        u.extend([0, 0]);
        body.extend(u32::try_from(u.len()).unwrap().to_le_bytes());
        body.extend(&u);
        rel += 4 + u.len();
    }
    f.extend(body);
    let processes_at = f.len();
    let n = procs_bytes.len();
    f.extend(u32::try_from(n).unwrap().to_le_bytes());
    for i in 0..n {
        f.extend(u32::try_from(i).unwrap().to_le_bytes());
    }
    let mut rel = 4 + 8 * n;
    for b in &procs_bytes {
        f.extend(u32::try_from(rel).unwrap().to_le_bytes());
        rel += b.len();
    }
    for b in &procs_bytes {
        f.extend(b);
    }
    let icons_at = f.len();
    f.extend(0u32.to_le_bytes());
    let hosts_at = f.len();
    f.extend(0u32.to_le_bytes());
    f.extend(0u32.to_le_bytes());
    let put = |f: &mut Vec<u8>, at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(&mut f, 0, b"PML_");
    put(&mut f, 4, &9u32.to_le_bytes());
    put(&mut f, 8, &1u32.to_le_bytes());
    put(&mut f, 0xC, &utf16("KIOSK-07"));
    put(&mut f, 0x2C, &utf16(r"C:\Windows"));
    put(
        &mut f,
        0x234,
        &u32::try_from(rows.len()).unwrap().to_le_bytes(),
    );
    put(&mut f, 0x240, &0x3A8u64.to_le_bytes());
    put(&mut f, 0x248, &(offsets_at as u64).to_le_bytes());
    put(&mut f, 0x250, &(processes_at as u64).to_le_bytes());
    put(&mut f, 0x258, &(strings_at as u64).to_le_bytes());
    put(&mut f, 0x260, &(icons_at as u64).to_le_bytes());
    put(&mut f, 0x268, &0x7FFF_FFFE_FFFFu64.to_le_bytes());
    put(&mut f, 0x398, &0x3A8u64.to_le_bytes());
    put(&mut f, 0x3A0, &(hosts_at as u64).to_le_bytes());
    f
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn clock(secs: u64, frac: bool) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    if frac {
        format!("{h12}:{m:02}:{s:02}.0000000 {ampm}")
    } else {
        format!("{h12}:{m:02}:{s:02} {ampm}")
    }
}

/// The capture as Procmon's CSV export (all the columns Procmon can write).
pub fn csv(procs: &[Proc], rows: &[Row]) -> String {
    let head = [
        "Time of Day",
        "Process Name",
        "PID",
        "Operation",
        "Path",
        "Result",
        "Detail",
        "Date & Time",
        "Relative Time",
        "Duration",
        "Completion Time",
        "Event Class",
        "Sequence",
        "Image Path",
        "Company",
        "Description",
        "Version",
        "User",
        "Authentication ID",
        "Session",
        "Command Line",
        "TID",
        "Virtualized",
        "Integrity",
        "Category",
        "Parent PID",
        "Architecture",
    ];
    let mut out = String::from("\u{feff}");
    out.push_str(&head.iter().map(|h| q(h)).collect::<Vec<_>>().join(","));
    out.push_str("\r\n");
    for (i, r) in rows.iter().enumerate() {
        let p = &procs[r.process];
        let name = p.image.rsplit('\\').next().unwrap();
        let (class, _) = class_op(r.op);
        let detail = match r.op {
            "RegLoadKey" => format!("Hive Path: {}", r.file),
            "RegRenameKey" => format!("New Name: {}", r.file),
            "RegOpenKey" | "RegCreateKey" => "Desired Access: Read".to_owned(),
            // Procmon writes multi-line details (environment blocks) for Process Start.
            "Process Start" => {
                format!("Parent PID: {},\r\nCommand line: \"{}\"", p.parent, p.image)
            }
            _ => String::new(),
        };
        let fields = [
            clock(r.secs, true),
            name.to_owned(),
            p.pid.to_string(),
            r.op.to_owned(),
            r.path.clone(),
            status_text(r.status),
            detail,
            format!("{DATE} {}", clock(r.secs, false)),
            "00:00:01.0000000".to_owned(),
            "0.0000005".to_owned(),
            clock(r.secs, true),
            ["", "Process", "Registry", "File System"][class as usize].to_owned(),
            i.to_string(),
            p.image.clone(),
            String::new(),
            String::new(),
            String::new(),
            r"CONTOSO\alice".to_owned(),
            "00000000:000003e7".to_owned(),
            "1".to_owned(),
            p.image.clone(),
            "1000".to_owned(),
            "False".to_owned(),
            "Medium".to_owned(),
            "Read".to_owned(),
            p.parent.to_string(),
            "64-bit".to_owned(),
        ];
        out.push_str(&fields.iter().map(|f| q(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// A replay event (row `*r + 1`, then `*r` advanced): process `pid` (image `p<pid>.exe`) doing
/// `op` on `path` with `status`.
pub fn event(r: &mut u64, pid: u32, op: &str, path: &str, status: u32) -> capture::Event {
    *r += 1;
    capture::Event {
        row: *r,
        pid,
        image: std::sync::Arc::from(format!("p{pid}.exe")),
        op: capture::Op::from_name(op),
        operation: op.to_owned(),
        path: path.to_owned(),
        status: Some(status),
        ..capture::Event::default()
    }
}
