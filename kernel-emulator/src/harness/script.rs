//! A small declarative scenario format: one step per line, `#` starts a comment. Processes,
//! key handles and device handles are named by the script; each step may end with
//! `expect STATUS` (a name such as `STATUS_CANNOT_DELETE` or a hex value). The driver is
//! loaded before the first step and unloaded (with the leak check) after the last.
//!
//! ```text
//! load-hive  \REGISTRY\USER\S-1-5-21-1 C:\Users\u\NTUSER.DAT
//! start      app  \Device\HarddiskVolume2\app.exe
//! open       app  k1  \REGISTRY\USER\S-1-5-21-1
//! create     app  k4  \REGISTRY\USER\S-1-5-21-1\Run inheritable
//! set-inherit app k1
//! start      kid  \Device\HarddiskVolume2\kid.exe inherit app
//! create     app  k2  \REGISTRY\USER\S-1-5-21-1\Software
//! dup        app  k2  kid  k3
//! rename     app  k2  Software2
//! close      app  k1
//! exit       app
//! unload-hive \REGISTRY\USER\S-1-5-21-1 expect STATUS_CANNOT_DELETE
//! device     dev  \\.\HiveTrack admin
//! ioctl      dev  0x8a546000 in 0 out 64 expect STATUS_SUCCESS
//! ```

use std::collections::HashMap;

use crate::nt::cm::hive;
use crate::nt::io::{self, FileHandle};
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, NtStatus, STATUS_SUCCESS};

const KEY_READ: u32 = 0x2_0019;

/// Parses a status: a known name or a hex number.
#[must_use]
pub fn parse_status(s: &str) -> Option<NtStatus> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok().map(|v| v as NtStatus);
    }
    KNOWN.iter().copied().find(|&v| status::name(v) == s)
}

const KNOWN: &[NtStatus] = &[
    status::STATUS_SUCCESS,
    status::STATUS_UNSUCCESSFUL,
    status::STATUS_INVALID_HANDLE,
    status::STATUS_INVALID_PARAMETER,
    status::STATUS_INVALID_DEVICE_REQUEST,
    status::STATUS_ACCESS_DENIED,
    status::STATUS_BUFFER_TOO_SMALL,
    status::STATUS_OBJECT_NAME_NOT_FOUND,
    status::STATUS_OBJECT_NAME_COLLISION,
    status::STATUS_OBJECT_NAME_INVALID,
    status::STATUS_INSUFFICIENT_RESOURCES,
    status::STATUS_CANNOT_DELETE,
    status::STATUS_CALLBACK_BYPASS,
];

/// The state of one script run.
#[derive(Default)]
struct Names {
    processes: HashMap<String, u32>,
    keys: HashMap<String, (u32, u64)>,
    devices: HashMap<String, FileHandle>,
}

fn caller(s: &str) -> Option<Caller> {
    match s {
        "system" => Some(Caller::System),
        "admin" => Some(Caller::Admin),
        "filtered-admin" => Some(Caller::FilteredAdmin),
        "user" => Some(Caller::User),
        _ => None,
    }
}

fn number(s: &str) -> Option<u64> {
    s.strip_prefix("0x")
        .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
}

/// Runs one step; returns the status it produced.
#[allow(clippy::too_many_lines)] // one arm per step kind
#[allow(clippy::many_single_char_names)] // n, p, q, h, r: short-lived step locals
fn step(n: &mut Names, words: &[&str]) -> Result<NtStatus, String> {
    let pid = |n: &Names, name: &str| {
        n.processes
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown process {name}"))
    };
    let r = |x: Result<u64, NtStatus>| x.map_or_else(|s| s, |_| STATUS_SUCCESS);
    Ok(match words {
        ["load-hive", mount, file] => hive::load_hive(4, mount, file),
        ["unload-hive", mount] => hive::unload_hive(4, mount),
        ["start", name, image] | ["start", name, image, "inherit", _] => {
            let (parent, inherit) = match words {
                [.., "inherit", p] => (pid(n, p)?, true),
                _ => (4, false),
            };
            match process::create_process(parent, image, inherit) {
                Ok(p) => {
                    n.processes.insert((*name).to_string(), p);
                    STATUS_SUCCESS
                }
                Err(s) => s,
            }
        }
        ["exit", name] => {
            process::exit_process(pid(n, name)?);
            n.processes.remove(*name);
            STATUS_SUCCESS
        }
        // `inheritable`: the open's OBJECT_ATTRIBUTES carry OBJ_INHERIT (RegCreateKeyEx with
        // bInheritHandle TRUE); without it the handle stays the opener's (a child started
        // with `inherit` does not get it).
        [op @ ("open" | "create"), p, key, path]
        | [op @ ("open" | "create"), p, key, path, "inheritable"] => {
            let p = pid(n, p)?;
            let res = if words.len() == 5 {
                hive::open_key_inheritable(p, path, KEY_READ, *op == "create")
            } else {
                hive::open_key(p, path, KEY_READ, *op == "create")
            };
            if let Ok(h) = res {
                n.keys.insert((*key).to_string(), (p, h));
            }
            r(res)
        }
        // SetHandleInformation(HANDLE_FLAG_INHERIT) on the key handle `key`.
        ["set-inherit", _, key] => {
            let (p, h) = *n
                .keys
                .get(*key)
                .ok_or_else(|| format!("unknown key handle {key}"))?;
            hive::set_handle_inherit(p, h, true)
        }
        ["close", _, key] => {
            let (p, h) = n
                .keys
                .remove(*key)
                .ok_or_else(|| format!("unknown key handle {key}"))?;
            hive::close_key(p, h)
        }
        ["dup", _, key, to, new] => {
            let (p, h) = *n
                .keys
                .get(*key)
                .ok_or_else(|| format!("unknown key handle {key}"))?;
            let q = pid(n, to)?;
            let res = hive::duplicate_handle(p, h, q);
            if let Ok(d) = res {
                n.keys.insert((*new).to_string(), (q, d));
            }
            r(res)
        }
        // NtRenameKey on the key handle `key` (held by `p`): `new` is the new last component.
        ["rename", p, key, new] => {
            let p = pid(n, p)?;
            let (_, h) = *n
                .keys
                .get(*key)
                .ok_or_else(|| format!("unknown key handle {key}"))?;
            hive::rename_key(p, h, new)
        }
        ["device", name, path, who] => {
            let c = caller(who).ok_or_else(|| format!("unknown caller {who}"))?;
            match io::open(path, c, 3000, GENERIC_READ | GENERIC_WRITE) {
                Ok(h) => {
                    n.devices.insert((*name).to_string(), h);
                    STATUS_SUCCESS
                }
                Err(s) => s,
            }
        }
        ["ioctl", dev, code, "in", len, "out", out] => {
            let h = *n
                .devices
                .get(*dev)
                .ok_or_else(|| format!("unknown device handle {dev}"))?;
            let code = number(code).ok_or("bad control code")? as u32;
            let input = vec![0u8; number(len).ok_or("bad input length")? as usize];
            let out = number(out).ok_or("bad output length")? as u32;
            io::device_io_control(h, code, &input, out, 0xA5).status
        }
        ["close-device", dev] => {
            io::close(
                n.devices
                    .remove(*dev)
                    .ok_or_else(|| format!("unknown device handle {dev}"))?,
            );
            STATUS_SUCCESS
        }
        _ => return Err(format!("cannot parse step {words:?}")),
    })
}

/// Runs `text`; returns one failure line per step whose status differs from its `expect`
/// (or that could not be parsed). Handles and processes still open at the end are closed.
#[must_use]
pub fn run(text: &str) -> (usize, Vec<String>) {
    let mut names = Names::default();
    let mut failures = Vec::new();
    let mut steps = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (words, expect) = words
            .iter()
            .position(|w| *w == "expect")
            .map_or((&words[..], None), |p| {
                (&words[..p], words.get(p + 1).copied())
            });
        steps += 1;
        match step(&mut names, words) {
            Ok(s) => {
                let want = expect.map_or(Some(STATUS_SUCCESS), parse_status);
                if want != Some(s) {
                    failures.push(format!(
                        "line {}: {line}: got {}",
                        i + 1,
                        status::describe(s)
                    ));
                }
            }
            Err(e) => failures.push(format!("line {}: {e}", i + 1)),
        }
    }
    for (_, h) in names.devices.drain() {
        io::close(h);
    }
    for (_, p) in names.processes.drain() {
        process::exit_process(p);
    }
    (steps, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_by_name_or_value() {
        assert_eq!(
            parse_status("STATUS_CANNOT_DELETE"),
            Some(status::STATUS_CANNOT_DELETE)
        );
        assert_eq!(
            parse_status("0xC0000022"),
            Some(status::STATUS_ACCESS_DENIED)
        );
        assert_eq!(parse_status("STATUS_NONSENSE"), None);
    }

    #[test]
    fn a_script_without_a_driver_runs_against_the_model() {
        let script = r"
            load-hive \REGISTRY\MACHINE\SCRIPTTEST hive.dat
            start a \Device\HarddiskVolume2\a.exe
            create a k1 \REGISTRY\MACHINE\SCRIPTTEST\Key
            create a k3 \REGISTRY\MACHINE\SCRIPTTEST\Other
            rename a k3 Key expect STATUS_CANNOT_DELETE
            rename a k3 Renamed
            close a k3
            open a k2 \REGISTRY\MACHINE\SCRIPTTEST\Missing expect STATUS_OBJECT_NAME_NOT_FOUND
            unload-hive \REGISTRY\MACHINE\SCRIPTTEST expect STATUS_CANNOT_DELETE
            exit a
            unload-hive \REGISTRY\MACHINE\SCRIPTTEST
            bogus step
        ";
        let (steps, failures) = run(script);
        assert_eq!(steps, 12);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("cannot parse"));
    }
}
