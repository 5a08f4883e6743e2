//! Workloads pushed through the registry model: a replay of Process Monitor CSV exports
//! (columns Process Name, PID, Operation, Path, Result; operations RegOpenKey, RegCreateKey,
//! RegCloseKey, Process Start, Process Exit; HKLM/HKCU/HKCR/HKU paths mapped to
//! `\REGISTRY\...`), and a seeded generator of N processes × M keys with random
//! interleavings on several emulator threads.

use std::collections::HashMap;

use crate::hive;
use crate::kernel;
use crate::process;
use crate::status::{STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};

/// The SID HKCU maps to in replays.
pub const REPLAY_USER_SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
const KEY_READ: u32 = 0x2_0019;

/// One ProcMon event the replay understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Process Name.
    pub process: String,
    /// PID in the capture.
    pub pid: u32,
    /// Operation.
    pub operation: String,
    /// Path (already mapped to `\REGISTRY\...` for registry operations).
    pub path: String,
    /// Result.
    pub result: String,
}

/// Splits one CSV line (RFC 4180 quoting).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Maps a ProcMon registry path (`HKLM\Software\X`) to its NT name.
#[must_use]
pub fn map_path(path: &str) -> String {
    let (root, rest) = path.split_once('\\').unwrap_or((path, ""));
    let nt = match root.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => r"\REGISTRY\MACHINE".to_string(),
        "HKCU" | "HKEY_CURRENT_USER" => format!(r"\REGISTRY\USER\{REPLAY_USER_SID}"),
        "HKCR" | "HKEY_CLASSES_ROOT" => r"\REGISTRY\MACHINE\SOFTWARE\Classes".to_string(),
        "HKU" | "HKEY_USERS" => r"\REGISTRY\USER".to_string(),
        _ => return path.to_string(),
    };
    if rest.is_empty() {
        nt
    } else {
        format!("{nt}\\{rest}")
    }
}

/// Parses a ProcMon CSV export; unknown operations are skipped.
///
/// # Errors
/// A missing required column.
pub fn parse_procmon(text: &str) -> Result<Vec<Event>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = split_csv(
        lines
            .next()
            .ok_or("empty CSV")?
            .trim_start_matches('\u{feff}'),
    );
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("column {name:?} missing"))
    };
    let (c_proc, c_pid, c_op, c_path, c_result) = (
        col("Process Name")?,
        col("PID")?,
        col("Operation")?,
        col("Path")?,
        col("Result")?,
    );
    let mut events = Vec::new();
    for line in lines {
        let f = split_csv(line);
        let get = |i: usize| f.get(i).map_or("", |s| s.trim());
        let operation = get(c_op).to_string();
        if !matches!(
            operation.as_str(),
            "RegOpenKey" | "RegCreateKey" | "RegCloseKey" | "Process Start" | "Process Exit"
        ) {
            continue;
        }
        let Ok(pid) = get(c_pid).parse() else {
            continue;
        };
        let path = if operation.starts_with("Reg") {
            map_path(get(c_path))
        } else {
            get(c_path).to_string()
        };
        events.push(Event {
            process: get(c_proc).to_string(),
            pid,
            operation,
            path,
            result: get(c_result).to_string(),
        });
    }
    Ok(events)
}

/// Mounts the hive holding `key` (first two levels under `\REGISTRY`) and creates the key
/// with its parents, without notifications: the state the capture says existed.
fn ensure_key(key: &str) {
    let parts: Vec<&str> = key.trim_start_matches('\\').split('\\').collect();
    if parts.len() < 3 {
        return;
    }
    let mount = format!("\\{}\\{}\\{}", parts[0], parts[1], parts[2]);
    if !kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase())) {
        let _ = hive::load_hive(4, &mount, r"\SystemRoot\System32\Config\replay");
    }
    kernel::with(|k| {
        let mut cur = String::new();
        for p in &parts {
            cur.push('\\');
            cur.push_str(&p.to_ascii_uppercase());
            if cur.len() > mount.len() {
                k.hives.keys.insert(cur.clone());
            }
        }
    });
}

/// What a replay did.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    /// Events replayed.
    pub events: usize,
    /// Events whose outcome in the model differs from the capture.
    pub mismatches: Vec<String>,
    /// Processes the replay started.
    pub processes: usize,
}

/// Replays `events`: processes are started on their first event (or Process Start) and ended
/// on Process Exit (and at the end), keys that succeeded in the capture exist in the model,
/// keys that were NAME NOT FOUND are opened as missing, closes close the most recent handle
/// the process opened on that path.
pub fn replay(events: &[Event]) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut pids: HashMap<u32, u32> = HashMap::new();
    let mut open: HashMap<(u32, String), Vec<u64>> = HashMap::new();
    let start = |e: &Event, pids: &mut HashMap<u32, u32>, report: &mut ReplayReport| -> u32 {
        *pids.entry(e.pid).or_insert_with(|| {
            report.processes += 1;
            process::create_process(4, &e.process, false).unwrap_or(0)
        })
    };
    for e in events {
        report.events += 1;
        match e.operation.as_str() {
            "Process Start" => {
                let _ = start(e, &mut pids, &mut report);
            }
            "Process Exit" => {
                if let Some(pid) = pids.remove(&e.pid) {
                    process::exit_process(pid);
                }
            }
            "RegOpenKey" | "RegCreateKey" => {
                let pid = start(e, &mut pids, &mut report);
                let success = e.result == "SUCCESS";
                if success {
                    ensure_key(&e.path);
                }
                let r = hive::open_key(pid, &e.path, KEY_READ, e.operation == "RegCreateKey");
                match (&r, success) {
                    (Ok(h), true) => open
                        .entry((pid, e.path.to_ascii_uppercase()))
                        .or_default()
                        .push(*h),
                    (Err(s), false)
                        if *s == STATUS_OBJECT_NAME_NOT_FOUND || e.result != "NAME NOT FOUND" => {}
                    _ => report.mismatches.push(format!(
                        "{} {} {}: capture {}, model {r:?}",
                        e.pid, e.operation, e.path, e.result
                    )),
                }
            }
            "RegCloseKey" => {
                let pid = start(e, &mut pids, &mut report);
                let h = open
                    .get_mut(&(pid, e.path.to_ascii_uppercase()))
                    .and_then(Vec::pop);
                match h {
                    Some(h) => {
                        let s = hive::close_key(pid, h);
                        if s != STATUS_SUCCESS {
                            report
                                .mismatches
                                .push(format!("{} close {}: {s:#x}", e.pid, e.path));
                        }
                    }
                    None => report.mismatches.push(format!(
                        "{} close {}: no open handle in the replay",
                        e.pid, e.path
                    )),
                }
            }
            _ => {}
        }
    }
    for (_, pid) in pids {
        process::exit_process(pid);
    }
    report
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
    ensure_key(root);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let root = root.to_string();
                std::thread::Builder::new()
                    .stack_size(16 << 20)
                    .spawn_scoped(s, move || {
                        crate::cpu::enter_thread(100 + t);
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
    fn csv_fields_and_quotes() {
        assert_eq!(split_csv(r#""a,b","c""d",e"#), ["a,b", "c\"d", "e"]);
        assert_eq!(split_csv(""), [""]);
    }

    #[test]
    fn paths_map_to_nt_names() {
        assert_eq!(
            map_path(r"HKLM\Software\X"),
            r"\REGISTRY\MACHINE\Software\X"
        );
        assert_eq!(
            map_path(r"HKCU\Software"),
            format!(r"\REGISTRY\USER\{REPLAY_USER_SID}\Software")
        );
        assert_eq!(
            map_path(r"HKCR\.txt"),
            r"\REGISTRY\MACHINE\SOFTWARE\Classes\.txt"
        );
        assert_eq!(map_path("HKLM"), r"\REGISTRY\MACHINE");
    }

    #[test]
    fn procmon_export_parses_and_skips_other_operations() {
        let csv = "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\"\n\
                   \"10:00\",\"a.exe\",\"12\",\"RegOpenKey\",\"HKLM\\Software\\X\",\"SUCCESS\",\"Desired Access: Read\"\n\
                   \"10:00\",\"a.exe\",\"12\",\"RegQueryValue\",\"HKLM\\Software\\X\\v\",\"SUCCESS\",\"\"\n\
                   \"10:00\",\"a.exe\",\"12\",\"Process Exit\",\"\",\"SUCCESS\",\"\"\n";
        let events = parse_procmon(csv).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].path, r"\REGISTRY\MACHINE\Software\X");
        assert_eq!(events[1].operation, "Process Exit");
        assert!(parse_procmon("\"PID\"\n1\n").is_err());
    }
}
