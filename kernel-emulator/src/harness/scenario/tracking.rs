//! hivetrack.sys tracking scenarios (the driver issue's proofs): live per-hive tracking from
//! registry callbacks, checked through the driver's own query IOCTLs decoded with the protocol
//! crate — the logoff that will not unload, a 65,602-handle leak with snapshot diffs, process
//! exit, duplicated handles, no hive ever pinned, systematic and random allocation failures,
//! concurrency, hostile requests, and older Windows (routines hidden).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use protocol::{
    cursor::{CURSOR_LEN, Cursor},
    diff::{SnapshotRow, diff},
    history::UnloadHistory,
    hives::Hives,
    holders::{HolderProcess, HolderRecord, Holders},
    ioctl::{WIN32_DEVICE_PATH, query_ioctl},
    page::{Page, PageKind},
    processes::Processes,
    request::{QueryKind, QueryRequest},
    snapshot::Snapshot,
    stats::Stats,
    text::Text,
    wire::{self, HEADER_LEN, encode},
};

use super::{Ctx, Scenario};
use crate::loader::driver::LoadedDriver;
use crate::nt::cm::hive::{self, STATUS_CANNOT_DELETE};
use crate::nt::io::{self, FileHandle};
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, STATUS_PENDING, STATUS_SUCCESS};
use crate::verifier::faults::FaultPolicy;

pub(crate) const SYSTEM_PID: u32 = 4;
pub(crate) const KEY_READ: u32 = 0x2_0019;
pub(crate) const USER: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";
pub(crate) const CLASSES: &str =
    r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001_Classes";
pub(crate) const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
pub(crate) const SYSTEM: &str = r"\REGISTRY\MACHINE\SYSTEM";
pub(crate) const SHELL: &str = r"\Device\HarddiskVolume2\Windows\explorer.exe";
pub(crate) const APP1: &str = r"\Device\HarddiskVolume2\Program Files\Editor\editor.exe";
pub(crate) const APP2: &str = r"\Device\HarddiskVolume2\Program Files\Sync\profleak.exe";
pub(crate) const OUT_LEN: u32 = 64 * 1024;

/// Every query the driver answers (the hostile-request and fuzz scenarios send each).
pub(crate) const QUERY_KINDS: [QueryKind; 8] = [
    QueryKind::Holders,
    QueryKind::Hives,
    QueryKind::Processes,
    QueryKind::Stats,
    QueryKind::Snapshot,
    QueryKind::UnloadHistory,
    QueryKind::Stacks,
    QueryKind::Modules,
];
/// The tracking scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "logoff",
            "a profile that will not unload: holders and the unload history name the one process and key; after it exits the hive unloads",
            logoff,
        ),
        Scenario::hivetrack(
            "unload-holders-exact",
            "an unload's own open of the hive root (NtUnloadKey2's private kernel handle, System's) is not a holder: a failed unload, a deferred one and a carried-out one record exactly the keys others hold, System's real kernel key included",
            unload_holders_exact,
        ),
        Scenario::hivetrack(
            "handle-leak",
            "one process opens the same key 65,602 times: processes ranks it first with the exact count; snapshot diff shows the growth",
            handle_leak,
        ),
        Scenario::hivetrack(
            "process-exit",
            "a process with keys in three hives exits: all its entries go",
            process_exit,
        ),
        Scenario::hivetrack(
            "duplicated-handle",
            "A opens, duplicates into B, closes: still tracked as opened by A until B closes",
            duplicated_handle,
        ),
        Scenario::hivetrack(
            "low-resources",
            "the logoff workload (and a wait on its hive) failing the k-th fallible call for every k, then 6% at random: no bugcheck, no leak, losses counted, the wait completes",
            low_resources,
        ),
        Scenario::hivetrack(
            "concurrency",
            "8 threads opening, closing and exiting across hives while queries run: exact final counts",
            concurrency,
        ),
        Scenario::hivetrack(
            "hostile-queries",
            "every query IOCTL with truncated, oversized, misaligned and garbage requests: clean errors, no poison bytes",
            hostile_queries,
        ),
        Scenario::hivetrack(
            "older-windows",
            "Windows 10 1809 (the floor: ExAllocatePool2 missing) tracks a held key and its process's exit; ExAllocatePool2, CmCallbackGetKeyObjectIDEx, PsSetCreateProcessNotifyRoutineEx and KeQuerySystemTimePrecise hidden together (every fallback at once): tracks with fallbacks; CmRegisterCallbackEx hidden: loads, tracking off",
            older_windows,
        ),
        Scenario::hivetrack(
            "no-ex-spin-locks",
            "ExReleaseSpinLockShared hidden (Wine exports none of the four): the driver drops all four and tracks with KSPIN_LOCKs; with them, a query's shared holds and an open's exclusive ones are EX_SPIN_LOCKs",
            no_ex_spin_locks,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// A small client of the driver's query IOCTLs.

/// A process summary from a holders answer, with its keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holder {
    pub(crate) pid: u64,
    pub(crate) start_key: u64,
    pub(crate) exited: bool,
    /// `HolderProcess::WOW64`: the driver learnt it is a 32-bit process.
    pub(crate) wow64: bool,
    pub(crate) image: String,
    pub(crate) open_keys: u64,
    pub(crate) oldest_open: u64,
    pub(crate) keys: Vec<(String, u64)>,
    /// The keys' ids (the answers' opaque object ids), in the order of `keys`.
    pub(crate) key_ids: Vec<u64>,
    /// The keys' flags (`HolderKey::flags`), in the order of `keys`.
    pub(crate) key_flags: Vec<u32>,
    /// The keys' access masks (`HolderKey::access`), in the order of `keys`.
    pub(crate) key_access: Vec<u32>,
}

/// One unload attempt.
#[derive(Debug, Clone)]
struct Attempt {
    mount: String,
    outcome: u32,
    /// The hive's open keys the record counts.
    open_keys: u64,
    /// How many processes held keys (the record may list fewer).
    holders_total: u32,
    /// The record's place in the event stream.
    sequence: u64,
    holders: Vec<(u64, String, u64)>,
}

/// The admin client of the scenarios: the driver's query IOCTLs, decoded.
pub(crate) struct Client {
    pub(crate) h: FileHandle,
}

impl Client {
    pub(crate) fn open(ctx: &mut Ctx) -> Option<Self> {
        match ctx.open(
            WIN32_DEVICE_PATH,
            Caller::Admin,
            GENERIC_READ | GENERIC_WRITE,
        ) {
            Ok(h) => Some(Self { h }),
            Err(s) => {
                ctx.check(false, format!("open the device: {}", status::describe(s)));
                None
            }
        }
    }

    pub(crate) fn request(kind: QueryKind, hive: &[u16], cursor: Cursor) -> Vec<u8> {
        let req = QueryRequest {
            query: kind,
            flags: 0,
            max_records: 0,
            cursor,
            hive: Text::Units(hive),
        };
        let mut buf = vec![0u8; 256 + 2 * hive.len()];
        let n = encode(&req, &mut buf).expect("request fits");
        buf.truncate(n);
        buf
    }

    /// Sends a query twice with different poison patterns in the system buffer: the answers
    /// must match, except the snapshot's time stamp (the page prefix).
    fn send(&self, ctx: &mut Ctx, kind: QueryKind, input: &[u8]) -> io::IoctlResult {
        if kind != QueryKind::Snapshot {
            return ctx.ioctl_checked(self.h, query_ioctl(kind), input, OUT_LEN);
        }
        let a = io::device_io_control(self.h, query_ioctl(kind), input, OUT_LEN, 0xA5);
        let b = io::device_io_control(self.h, query_ioctl(kind), input, OUT_LEN, 0x5A);
        // The prefix follows the header, the cursor and the page's count, flags and losses.
        let taken_at = HEADER_LEN + CURSOR_LEN + 16..HEADER_LEN + CURSOR_LEN + 24;
        let differing: Vec<usize> = (0..a.output.len().max(b.output.len()))
            .filter(|i| a.output.get(*i) != b.output.get(*i) && !taken_at.contains(i))
            .collect();
        if !differing.is_empty() || a.status != b.status {
            ctx.check(
                false,
                format!(
                    "snapshot: the two answers differ beyond the time stamp (uninitialised output) at {:?}",
                    &differing[..differing.len().min(8)]
                ),
            );
        }
        a
    }

    /// Every page of `kind`, each checked for uninitialised bytes, handed to `each`.
    pub(crate) fn pages<K: PageKind>(
        &self,
        ctx: &mut Ctx,
        kind: QueryKind,
        hive: &str,
        mut each: impl FnMut(&Page<'_, K>),
    ) -> bool {
        let units: Vec<u16> = hive.encode_utf16().collect();
        let mut cursor = Cursor::START;
        for _ in 0..100_000 {
            let input = Self::request(kind, &units, cursor);
            let r = self.send(ctx, kind, &input);
            if r.status != STATUS_SUCCESS {
                ctx.check(
                    false,
                    format!("{kind:?} query: {}", status::describe(r.status)),
                );
                return false;
            }
            let Ok(page) = wire::decode::<Page<'_, K>>(&r.output[..r.information]) else {
                ctx.check(false, format!("{kind:?} answer does not decode"));
                return false;
            };
            each(&page);
            if page.info.done() {
                return true;
            }
            cursor = page.info.next;
        }
        ctx.check(false, format!("{kind:?} paging did not end"));
        false
    }

    pub(crate) fn holders(&self, ctx: &mut Ctx, hive: &str) -> Vec<Holder> {
        let mut out: Vec<Holder> = Vec::new();
        self.pages::<Holders>(ctx, QueryKind::Holders, hive, |page| {
            for rec in page.records() {
                match rec {
                    HolderRecord::Process(p) => {
                        if out
                            .last()
                            .is_none_or(|h| (h.pid, h.start_key) != (p.pid, p.start_key))
                        {
                            out.push(Holder {
                                pid: p.pid,
                                start_key: p.start_key,
                                exited: p.flags & HolderProcess::EXITED != 0,
                                wow64: p.flags & HolderProcess::WOW64 != 0,
                                image: p.image.to_string(),
                                open_keys: p.open_keys,
                                oldest_open: p.oldest_open,
                                keys: Vec::new(),
                                key_ids: Vec::new(),
                                key_flags: Vec::new(),
                                key_access: Vec::new(),
                            });
                        }
                    }
                    HolderRecord::Key(k) => {
                        if let Some(h) = out.last_mut() {
                            h.keys.push((k.name.to_string(), k.open_time));
                            h.key_ids.push(k.id);
                            h.key_flags.push(k.flags);
                            h.key_access.push(k.access);
                        }
                    }
                }
            }
        });
        out
    }

    pub(crate) fn hives(&self, ctx: &mut Ctx) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.pages::<Hives>(ctx, QueryKind::Hives, "", |page| {
            out.extend(
                page.records()
                    .map(|h| (h.mount.to_string(), h.file.to_string())),
            );
        });
        out
    }

    /// Every process the driver lists (pid, open keys, image), ranked as the CLI ranks them:
    /// most open keys first, ties by pid (the driver lists them in its table's order).
    /// [`Self::processes`] without the System process's record while it holds no key. The
    /// scenarios load their hives from System; each load and unload opens and closes the hive
    /// list on the loading thread (Windows Research Kernel `cmhvlist.c`, called by `cmapi.c`
    /// CmLoadKey / CmUnloadKey), so once a hive is loaded after the driver started the tracker
    /// knows System — with no key open — until it exits, which it never does.
    pub(crate) fn processes_but_loader(&self, ctx: &mut Ctx) -> Vec<(u64, u64, String)> {
        let mut procs = self.processes(ctx);
        procs.retain(|p| !(p.0 == u64::from(SYSTEM_PID) && p.1 == 0));
        procs
    }

    pub(crate) fn processes(&self, ctx: &mut Ctx) -> Vec<(u64, u64, String)> {
        let mut out = Vec::new();
        self.pages::<Processes>(ctx, QueryKind::Processes, "", |page| {
            out.extend(
                page.records()
                    .map(|p| (p.pid, p.open_keys, p.image.to_string())),
            );
        });
        out.sort_by_key(|p| (std::cmp::Reverse(p.1), p.0));
        out
    }

    fn history(&self, ctx: &mut Ctx) -> Vec<Attempt> {
        let mut out = Vec::new();
        self.pages::<UnloadHistory>(ctx, QueryKind::UnloadHistory, "", |page| {
            out.extend(page.records().map(|a| {
                Attempt {
                    mount: a.mount.to_string(),
                    outcome: a.outcome,
                    open_keys: a.open_keys,
                    holders_total: a.holders_total,
                    sequence: a.sequence,
                    holders: a
                        .holders
                        .iter()
                        .map(|h| (h.pid, h.image.to_string(), h.open_keys))
                        .collect(),
                }
            }));
        });
        out
    }

    pub(crate) fn snapshot(&self, ctx: &mut Ctx) -> Vec<SnapshotRow> {
        let mut out = Vec::new();
        self.pages::<Snapshot>(ctx, QueryKind::Snapshot, "", |page| {
            out.extend(page.records().map(|r| SnapshotRow::from(&r)));
        });
        out
    }

    pub(crate) fn stats(&self, ctx: &mut Ctx) -> Stats {
        let input = Self::request(QueryKind::Stats, &[], Cursor::START);
        let r = ctx.ioctl_checked(self.h, query_ioctl(QueryKind::Stats), &input, OUT_LEN);
        if r.status != STATUS_SUCCESS {
            ctx.check(
                false,
                format!("stats query: {}", status::describe(r.status)),
            );
            return Stats::default();
        }
        wire::decode::<Stats>(&r.output[..r.information]).unwrap_or_default()
    }

    pub(crate) fn close(self) {
        io::close(self.h);
    }
}

/// Boots the machine hives (as the hive list has them at start-up) and loads the driver,
/// which seeds its hive table from that list.
pub(crate) fn start(ctx: &mut Ctx) -> LoadedDriver {
    boot_hives(ctx);
    load_driver(ctx)
}

/// Boots the machine hives, maps the driver, writes the REG_DWORD `name` = `value` under its
/// service key's `Parameters` (as an administrator would before starting it), and runs
/// DriverEntry, which must succeed. `None` (checked as a failure) when the service key has
/// no `Parameters`.
pub(crate) fn start_with_parameter(ctx: &mut Ctx, name: &str, value: u32) -> Option<LoadedDriver> {
    boot_hives(ctx);
    let d = ctx.load();
    let Some(params) = service_parameters() else {
        ctx.check(false, "the service key's Parameters exists");
        return None;
    };
    crate::nt::cm::zwreg::set_value(
        &params,
        name,
        crate::nt::cm::zwreg::REG_DWORD,
        value.to_le_bytes().to_vec(),
    );
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    Some(d)
}

/// The driver's service key's `Parameters` in the model's registry (installed by `ctx.load`
/// as the INF writes it), if there is one.
pub(crate) fn service_parameters() -> Option<String> {
    kernel::with(|k| {
        k.zwreg
            .keys
            .keys()
            .find(|p| p.contains(r"\SERVICES\") && p.ends_with(r"\PARAMETERS"))
            .cloned()
    })
}

/// Loads the driver and runs DriverEntry (which must succeed).
pub(crate) fn load_driver(ctx: &mut Ctx) -> LoadedDriver {
    let d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    d
}

/// Mounts the machine hives a booted system has before any driver starts.
pub(crate) fn boot_hives(ctx: &mut Ctx) {
    for (mount, file) in [
        (
            SOFTWARE,
            r"\Device\HarddiskVolume2\Windows\System32\config\SOFTWARE",
        ),
        (
            SYSTEM,
            r"\Device\HarddiskVolume2\Windows\System32\config\SYSTEM",
        ),
    ] {
        let s = hive::load_hive(SYSTEM_PID, mount, file);
        ctx.check(
            s == STATUS_SUCCESS,
            format!("boot: {mount} mounted: {}", status::describe(s)),
        );
    }
    let made = current_control_set();
    ctx.check(made, "boot: ControlSet001 exists");
}

/// `CurrentControlSet` as a registry link to the control set in use (ReactOS
/// `ntoskrnl/config/cmsysini.c` CmpCreateControlSet), so the driver's reads of its service key
/// and of the hive list go through it, each open with its STATUS_REPARSE pair. False when no
/// SYSTEM hive holds `ControlSet001\Control`.
pub(crate) fn current_control_set() -> bool {
    let made = hive::ensure_key(&format!(r"{SYSTEM}\ControlSet001\Control"));
    hive::create_link(
        &format!(r"{SYSTEM}\CurrentControlSet"),
        &format!(r"{SYSTEM}\ControlSet001"),
    );
    made
}

pub(crate) fn load_profile(ctx: &mut Ctx) {
    for (mount, file) in [
        (USER, r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT"),
        (
            CLASSES,
            r"\Device\HarddiskVolume2\Users\kemu\AppData\Local\Microsoft\Windows\UsrClass.dat",
        ),
    ] {
        let s = hive::load_hive(SYSTEM_PID, mount, file);
        ctx.check(
            s == STATUS_SUCCESS,
            format!("load {mount}: {}", status::describe(s)),
        );
    }
}

pub(crate) fn spawn(ctx: &mut Ctx, image: &str) -> u32 {
    match process::create_process(SYSTEM_PID, image, false) {
        Ok(pid) => pid,
        Err(s) => {
            ctx.check(false, format!("create {image}: {}", status::describe(s)));
            0
        }
    }
}

/// Creates the missing parents of `path` below its hive (created and closed as `pid`, as an
/// application creating a key path does), then opens `path` and keeps the handle.
fn open(pid: u32, path: &str) -> Option<u64> {
    ensure_parents(pid, path);
    hive::open_key(pid, path, KEY_READ, true).ok()
}

pub(crate) fn ensure_parents(pid: u32, path: &str) {
    let mount = [CLASSES, USER, SOFTWARE]
        .into_iter()
        .find(|m| {
            path.len() > m.len()
                && path[..m.len()].eq_ignore_ascii_case(m)
                && path.as_bytes()[m.len()] == b'\\'
        })
        .unwrap_or("");
    let rest = &path[mount.len()..];
    let mut prefix = mount.to_string();
    let parts: Vec<&str> = rest.split('\\').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        prefix.push('\\');
        prefix.push_str(part);
        if let Ok(h) = hive::open_key(pid, &prefix, KEY_READ, true) {
            let _ = hive::close_key(pid, h);
        }
    }
}

fn open_close(pid: u32, path: &str) {
    if let Some(h) = open(pid, path) {
        let _ = hive::close_key(pid, h);
    }
}

/// Proves no pinning: once the processes are gone, every hive the scenario loaded unloads.
pub(crate) fn unload_all(ctx: &mut Ctx, mounts: &[&str]) {
    for mount in mounts {
        let s = hive::unload_hive(SYSTEM_PID, mount);
        ctx.check(
            s == STATUS_SUCCESS,
            format!(
                "{mount} unloads once nothing holds it (the driver pins nothing): {}",
                status::describe(s)
            ),
        );
    }
}

/// The logoff workload: returns the pid of the process that keeps `Software\Policies` open.
pub(crate) fn logoff_workload(ctx: &mut Ctx) -> (u32, u32, u32) {
    let shell = spawn(ctx, SHELL);
    let app1 = spawn(ctx, APP1);
    let app2 = spawn(ctx, APP2);
    for pid in [shell, app1, app2] {
        for key in [
            r"Software\Microsoft\Windows\CurrentVersion\Explorer",
            r"Control Panel\Desktop",
            r"Software\Policies",
        ] {
            open_close(pid, &format!(r"{USER}\{key}"));
        }
        open_close(
            pid,
            &format!(r"{CLASSES}\CLSID\{{00021401-0000-0000-C000-000000000046}}"),
        );
        open_close(
            pid,
            &format!(r"{SOFTWARE}\Microsoft\Windows NT\CurrentVersion"),
        );
    }
    let _ = open(app2, &format!(r"{USER}\Software\Policies"));
    (shell, app1, app2)
}

#[allow(
    clippy::too_many_lines,
    reason = "the issue's logoff proof, step by step, reads best in one piece"
)]
fn logoff(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let on = c.stats(ctx).tracking_status;
    ctx.check(
        on == 0,
        format!("live tracking is on (tracking_status {on:#x})"),
    );
    let seeded = c.hives(ctx);
    ctx.check(
        seeded
            .iter()
            .any(|(m, f)| m.eq_ignore_ascii_case(SOFTWARE) && f.ends_with(r"config\SOFTWARE")),
        format!("the hive table was seeded from the hive list at start-up: {seeded:?}"),
    );
    load_profile(ctx);
    let before = kernel_time();
    let (shell, app1, app2) = logoff_workload(ctx);
    let s = hive::unload_hive(SYSTEM_PID, USER);
    ctx.check(
        s == STATUS_CANNOT_DELETE,
        format!("the profile unload fails: {}", status::describe(s)),
    );

    let holders = c.holders(ctx, USER);
    println!("  holders of {USER}: {holders:?}");
    ctx.check(
        holders.len() == 1,
        format!("exactly one holder ({})", holders.len()),
    );
    if let Some(h) = holders.first() {
        ctx.check(
            h.pid == u64::from(app2),
            format!("the holder is pid {app2} ({})", h.pid),
        );
        ctx.check(
            h.image == APP2,
            format!("its image is {APP2} ({})", h.image),
        );
        ctx.check(
            h.open_keys == 1 && h.keys.len() == 1,
            format!("one open key ({})", h.open_keys),
        );
        let policies = format!(r"{USER}\Software\Policies");
        ctx.check(
            h.keys
                .first()
                .is_some_and(|k| k.0.eq_ignore_ascii_case(&policies)),
            format!("the key is {policies} ({:?})", h.keys.first()),
        );
        ctx.check(
            h.oldest_open >= before && h.oldest_open <= kernel_time(),
            format!(
                "the open time is when it was opened ({} in [{before}, now])",
                h.oldest_open
            ),
        );
    }
    let empty = c.holders(ctx, CLASSES).is_empty();
    ctx.check(empty, "nothing holds the Classes hive");
    let history = c.history(ctx);
    println!("  unload history: {history:?}");
    let last = history
        .iter()
        .rev()
        .find(|a| a.mount.eq_ignore_ascii_case(USER));
    ctx.check(
        last.is_some_and(|a| {
            a.outcome == STATUS_CANNOT_DELETE.cast_unsigned()
                && a.holders.len() == 1
                && a.holders[0].0 == u64::from(app2)
                && a.holders[0].1 == APP2
                && a.holders[0].2 == 1
        }),
        format!("the unload history holds the same snapshot: {last:?}"),
    );
    let procs = c.processes(ctx);
    ctx.check(
        procs
            .iter()
            .all(|p| (p.0 != u64::from(shell) && p.0 != u64::from(app1)) || p.1 == 0),
        "the shell and the first application hold nothing",
    );
    // What a logoff tool waits on: one wait-free request, pending while profleak.exe holds
    // the key, completed by its exit.
    super::wait_free::pending_until(ctx, c.h, USER, "the logoff wait", || {
        process::exit_process(app2);
    });
    let holders = c.holders(ctx, USER);
    ctx.check(
        holders.is_empty(),
        format!("after the application exits nothing holds the hive ({holders:?})"),
    );
    unload_all(ctx, &[USER, CLASSES]);
    let history = c.history(ctx);
    ctx.check(
        history
            .iter()
            .any(|a| a.mount.eq_ignore_ascii_case(USER) && a.outcome == 0 && a.holders.is_empty()),
        "the successful unload is in the history, with no holders",
    );
    for pid in [shell, app1] {
        process::exit_process(pid);
    }
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// The last unload attempt of `mount` in the history.
fn last_attempt(ctx: &mut Ctx, c: &Client, mount: &str) -> Option<Attempt> {
    let history = c.history(ctx);
    println!("  unload history: {history:?}");
    history
        .into_iter()
        .filter(|a| a.mount.eq_ignore_ascii_case(mount))
        .max_by_key(|a| a.sequence)
}

/// Windows' unloads open the hive's root themselves with a kernel handle, which the driver
/// tracks as System's (td-unload-sequence); that open is the unload's, not a holder. Here the
/// profile service (svchost) unloads a hive that an application holds by two keys and a
/// driver by one kernel key (also System's): each record must say exactly that.
fn unload_holders_exact(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let svchost = spawn(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let app = spawn(ctx, APP2);
    let keys: Vec<u64> = [r"Software\Policies", r"Control Panel\Desktop"]
        .iter()
        .filter_map(|k| open(app, &format!(r"{USER}\{k}")))
        .collect();
    // A driver's ZwOpenKey in the application's context: a kernel handle, System holds it.
    let kernel_key = hive::open_kernel_key(app, &format!(r"{USER}\Software"), KEY_READ, false);
    ctx.check(
        keys.len() == 2 && kernel_key.is_ok(),
        format!("two keys and a kernel key open: {keys:?} {kernel_key:?}"),
    );
    let want = |a: &Attempt, outcome: u32, held: &[(u64, u64)]| {
        a.outcome == outcome
            && a.open_keys == held.iter().map(|h| h.1).sum::<u64>()
            && usize::try_from(a.holders_total).is_ok_and(|t| t == held.len())
            && a.holders.len() == held.len()
            && held
                .iter()
                .all(|(pid, n)| a.holders.iter().any(|h| h.0 == *pid && h.2 == *n))
    };
    let app_pid = u64::from(app);
    let system = u64::from(SYSTEM_PID);
    let s = hive::unload_hive(svchost, USER);
    ctx.check(
        s == STATUS_CANNOT_DELETE,
        format!("the unload fails: {}", status::describe(s)),
    );
    let last = last_attempt(ctx, &c, USER);
    ctx.check(
        last.as_ref().is_some_and(|a| {
            want(a, STATUS_CANNOT_DELETE.cast_unsigned(), &[(app_pid, 2), (system, 1)])
        }),
        format!("the failed unload records the application's 2 keys and System's 1, not the unload's own: {last:?}"),
    );
    if let Ok(k) = kernel_key {
        let _ = hive::close_key(app, k);
    }
    let (s, event) = hive::unload_key_ex(svchost, USER);
    ctx.check(
        s == STATUS_PENDING,
        format!("NtUnloadKeyEx is pending: {}", status::describe(s)),
    );
    let last = last_attempt(ctx, &c, USER);
    ctx.check(
        last.as_ref()
            .is_some_and(|a| want(a, STATUS_PENDING.cast_unsigned(), &[(app_pid, 2)])),
        format!("the deferred unload records the application's 2 keys only: {last:?}"),
    );
    for k in keys {
        let _ = hive::close_key(app, k);
    }
    // The closed subkeys' control blocks hold the root until the delayed dereference
    // (5 s, WRK `cmdelay.c`).
    crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
    ctx.check(
        event.wait(std::time::Duration::from_secs(5)).is_some(),
        "the deferred unload completes after the last close's delayed dereference",
    );
    let s = hive::load_hive(
        SYSTEM_PID,
        USER,
        r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT",
    );
    ctx.check(s == STATUS_SUCCESS, "the profile is loaded again");
    let s = hive::unload_hive(svchost, USER);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("a free hive unloads: {}", status::describe(s)),
    );
    let last = last_attempt(ctx, &c, USER);
    ctx.check(
        last.as_ref().is_some_and(|a| want(a, 0, &[])),
        format!("the carried-out unload records no holder and no key: {last:?}"),
    );
    for pid in [app, svchost] {
        process::exit_process(pid);
    }
    unload_all(ctx, &[CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// System time in the emulator's clock (100 ns since 1601), for bounds on open times.
fn kernel_time() -> u64 {
    crate::machine::cpu::system_time()
}

fn handle_leak(ctx: &mut Ctx) {
    const LEAKED: u64 = 65_602;
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let leaker = spawn(ctx, APP2);
    let other = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\Sync\State");
    for _ in 0..3 {
        let _ = open(other, &format!(r"{SOFTWARE}\Classes"));
    }
    ensure_parents(leaker, &key);
    let mut opened = 0u64;
    for _ in 0..1_000 {
        opened += u64::from(hive::open_key(leaker, &key, KEY_READ, true).is_ok());
    }
    let first = c.snapshot(ctx);
    for _ in 1_000..LEAKED {
        opened += u64::from(hive::open_key(leaker, &key, KEY_READ, true).is_ok());
    }
    ctx.check(
        opened == LEAKED,
        format!("the leaker holds {opened} handles"),
    );
    let second = c.snapshot(ctx);
    let procs = c.processes(ctx);
    println!("  processes: {:?}", &procs[..procs.len().min(3)]);
    ctx.check(
        procs
            .first()
            .is_some_and(|p| p.0 == u64::from(leaker) && p.1 == LEAKED),
        format!(
            "processes ranks the leaker first with exactly {LEAKED} open keys: {:?}",
            procs.first()
        ),
    );
    ctx.check(
        procs
            .get(1)
            .is_some_and(|p| p.0 == u64::from(other) && p.1 == 3),
        "then the other process with 3",
    );
    let changes = diff(&first, &second);
    let top = changes.first();
    ctx.check(
        top.is_some_and(|e| {
            e.pid == u64::from(leaker)
                && e.before == 1_000
                && e.after == LEAKED
                && String::from_utf16_lossy(&e.name).eq_ignore_ascii_case(&key)
        }),
        format!("the snapshot diff shows the growth 1000 -> {LEAKED} on {key}: {top:?}"),
    );
    ctx.check(
        changes.len() == 1,
        format!("and nothing else changed ({} entries)", changes.len()),
    );
    let stats = c.stats(ctx);
    ctx.check(
        stats.not_recorded() == 0,
        format!("nothing was lost ({} not recorded)", stats.not_recorded()),
    );
    process::exit_process(leaker);
    process::exit_process(other);
    let empty = c.processes_but_loader(ctx).is_empty();
    ctx.check(empty, "after both exit, no process holds keys");
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

fn process_exit(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let p = spawn(ctx, APP1);
    let q = spawn(ctx, SHELL);
    for hive_path in [USER, CLASSES, SOFTWARE] {
        for i in 0..5 {
            let _ = open(p, &format!(r"{hive_path}\Exit\Key{i}"));
        }
    }
    let _ = open(q, &format!(r"{USER}\Kept"));
    let procs = c.processes(ctx);
    ctx.check(
        procs.iter().any(|x| x.0 == u64::from(p) && x.1 == 15),
        format!("the process holds 15 keys in three hives: {procs:?}"),
    );
    process::exit_process(p);
    let procs = c.processes_but_loader(ctx);
    ctx.check(
        procs.len() == 1 && procs[0].0 == u64::from(q) && procs[0].1 == 1,
        format!("after it exits only the other process remains, with its one key: {procs:?}"),
    );
    for hive_path in [USER, CLASSES, SOFTWARE] {
        let holders = c.holders(ctx, hive_path);
        let expect = usize::from(hive_path == USER);
        ctx.check(
            holders.len() == expect,
            format!(
                "{hive_path}: {} holder(s), expected {expect}",
                holders.len()
            ),
        );
    }
    process::exit_process(q);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

fn duplicated_handle(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let a = spawn(ctx, APP1);
    let b = spawn(ctx, APP2);
    let key = format!(r"{USER}\Software\Shared");
    let Some(ha) = open(a, &key) else {
        ctx.check(false, "A opens the key");
        return;
    };
    let hb = hive::duplicate_handle(a, ha, b);
    ctx.check(hb.is_ok(), "the handle is duplicated into B");
    let _ = hive::close_key(a, ha);
    let holders = c.holders(ctx, USER);
    ctx.check(
        holders.len() == 1 && holders[0].pid == u64::from(a) && holders[0].keys.len() == 1,
        format!(
            "after A closes, the object is still tracked and reported as opened by A: {holders:?}"
        ),
    );
    if let Ok(hb) = hb {
        let _ = hive::close_key(b, hb);
    }
    let holders = c.holders(ctx, USER);
    ctx.check(
        holders.is_empty(),
        format!("B's close removes it: {holders:?}"),
    );
    process::exit_process(a);
    process::exit_process(b);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// Runs the logoff workload and its queries after DriverEntry, with `policy` for the fallible
/// calls of the workload; returns (injected failures, what the driver counted for them:
/// events not recorded, plus keys not cached (a failure that costs only speed), sane).
fn faulty_logoff(ctx: &mut Ctx, policy: FaultPolicy) -> (usize, u64, bool) {
    kernel::reset();
    let mut d = ctx.load();
    if d.entry() != STATUS_SUCCESS {
        ctx.check(false, "DriverEntry without faults");
        return (0, 0, true);
    }
    let Some(c) = Client::open(ctx) else {
        return (0, 0, true);
    };
    load_profile(ctx);
    kernel::with(|k| {
        k.faults.calls = 0;
        k.faults.injected.clear();
        k.faults.policy = policy;
    });
    let (shell, app1, app2) = logoff_workload(ctx);
    let _ = hive::unload_hive(SYSTEM_PID, USER);
    let injected = kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.injected.clone()
    });
    if !injected.is_empty() {
        println!("  injected: {}", injected.join(", "));
    }
    let injected = injected.len();
    let stats = c.stats(ctx);
    let holders = c.holders(ctx, USER);
    // A record may be missing, never wrong: at most the one real holder is reported.
    let mut sane = holders.len() <= 1 && holders.iter().all(|h| h.pid == u64::from(app2));
    // A wait on the hive completes by the time its holders are gone, whatever was lost (a
    // lost open can only make it complete sooner).
    let mut wait = super::wait_free::send(c.h, USER, protocol::wait::WaitFreeRequest::NO_TIMEOUT);
    for pid in [shell, app1, app2] {
        process::exit_process(pid);
    }
    let completed = match &mut wait {
        io::IoctlCall::Done(r) => Some(r.status),
        io::IoctlCall::Pending(p) => p.poll().map(|r| r.status),
    };
    if completed != Some(STATUS_SUCCESS) {
        println!("  the wait on the profile did not complete with success: {completed:?}");
        sane = false;
    }
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
    // Image loads and stacks not kept cost attribution, not holders: counted apart.
    let kept_less = stats.keys_not_cached + stats.modules_dropped + stats.stacks_dropped;
    (injected, stats.not_recorded() + kept_less, sane)
}

fn low_resources(ctx: &mut Ctx) {
    ctx.say("systematic: fail the k-th fallible call of the workload, for every k");
    let mut k = 1u64;
    loop {
        let (injected, lost, sane) = faulty_logoff(ctx, FaultPolicy::Nth(k));
        if injected == 0 {
            println!("  the workload makes {} fallible calls", k - 1);
            ctx.check(k > 1, "the workload made fallible calls");
            break;
        }
        ctx.check(
            sane,
            format!("k={k}: the report is a subset of the truth; the wait completed"),
        );
        ctx.check(
            lost > 0,
            format!("k={k}: the failure is counted in stats ({lost} not recorded or not kept)"),
        );
        k += 1;
        if k > 2_000 {
            ctx.check(false, "the sweep did not end");
            break;
        }
    }
    ctx.say("random: 6% of fallible calls fail (Driver Verifier's default rate), 8 seeds");
    for seed in 1..=8u64 {
        let (injected, lost, sane) = faulty_logoff(
            ctx,
            FaultPolicy::Random {
                per_mille: 60,
                seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            },
        );
        ctx.check(
            sane,
            format!("seed {seed}: the report is a subset of the truth; the wait completed"),
        );
        ctx.check(
            injected == 0 || lost > 0,
            format!(
                "seed {seed}: {injected} failures injected, {lost} counted as not recorded or not kept"
            ),
        );
    }
}

#[allow(
    clippy::needless_collect,
    clippy::many_single_char_names,
    reason = "every worker must be spawned before any is joined; d, c, t, h as elsewhere"
)]
fn concurrency(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let hives = [USER, CLASSES, SOFTWARE];
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                crate::machine::cpu::enter_thread(40 + u32::try_from(t).unwrap_or(0));
                let mut seed = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1).wrapping_mul(0x9E37_79B9);
                let mut rnd = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut kept = 0u64;
                for round in 0..20 {
                    let Ok(pid) = process::create_process(SYSTEM_PID, APP1, false) else {
                        continue;
                    };
                    let mut open_handles = Vec::new();
                    for i in 0..50 {
                        let hive_path = hives[(rnd() % 3) as usize];
                        let path = format!(r"{hive_path}\T{t}\R{round}\K{}", i % 7);
                        if let Some(h) = open(pid, &path) {
                            open_handles.push(h);
                        }
                        if rnd() % 3 == 0
                            && let Some(h) = open_handles.pop()
                        {
                            let _ = hive::close_key(pid, h);
                        }
                    }
                    if round % 4 == 3 {
                        kept += open_handles.len() as u64; // this process stays, holding these
                    } else {
                        process::exit_process(pid);
                    }
                }
                kept
            })
        })
        .collect();
    let querier = {
        let stop = Arc::clone(&stop);
        let h = c.h;
        std::thread::spawn(move || {
            crate::machine::cpu::enter_thread(60);
            let mut n = 0u32;
            while !stop.load(Ordering::Acquire) {
                let input = Client::request(QueryKind::Processes, &[], Cursor::START);
                let r = io::device_io_control(
                    h,
                    query_ioctl(QueryKind::Processes),
                    &input,
                    OUT_LEN,
                    0xA5,
                );
                assert_eq!(r.status, STATUS_SUCCESS, "a query during the storm failed");
                n += 1;
            }
            n
        })
    };
    let kept: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    ctx.check(
        kept > 0,
        format!("the storm left {kept} keys open in processes that stay"),
    );
    stop.store(true, Ordering::Release);
    let answered = querier.join().unwrap_or(0);
    println!("  {answered} queries ran during the storm");
    let procs = c.processes(ctx);
    let total: u64 = procs.iter().map(|p| p.1).sum();
    ctx.check(
        total == kept,
        format!("final open keys exact: driver {total}, truth {kept}"),
    );
    let truth: usize = hives.iter().map(|m| hive::holders(m).len()).sum();
    println!("  the registry model counts {truth} open handles");
    let stats = c.stats(ctx);
    ctx.check(
        stats.not_recorded() == 0,
        format!("nothing lost ({})", stats.not_recorded()),
    );
    for p in procs.iter().filter(|p| p.0 != u64::from(SYSTEM_PID)) {
        process::exit_process(u32::try_from(p.0).unwrap_or(0));
    }
    let empty = c.processes_but_loader(ctx).is_empty();
    ctx.check(empty, "after every process exits, nothing is held");
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, c, p: driver, client, process, as in every scenario"
)]
fn hostile_queries(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let p = spawn(ctx, APP1);
    let _ = open(p, &format!(r"{USER}\Software\Hostile"));
    let user: Vec<u16> = USER.encode_utf16().collect();
    for kind in QUERY_KINDS {
        let code = query_ioctl(kind);
        let good = Client::request(kind, &user, Cursor::START);
        let mut cases: Vec<(String, Vec<u8>, u32)> = vec![
            ("empty input".into(), Vec::new(), OUT_LEN),
            ("no output buffer".into(), good.clone(), 0),
            ("a 16-byte output buffer".into(), good.clone(), 16),
            ("oversized input".into(), vec![0u8; 70_000], OUT_LEN),
            (
                "a request for another query".into(),
                Client::request(
                    if kind == QueryKind::Stats {
                        QueryKind::Hives
                    } else {
                        QueryKind::Stats
                    },
                    &[],
                    Cursor::START,
                ),
                OUT_LEN,
            ),
        ];
        for n in [1, 8, 15, 16, 17, 40, good.len() - 1] {
            cases.push((
                format!("input truncated to {n} bytes"),
                good[..n.min(good.len())].to_vec(),
                OUT_LEN,
            ));
        }
        let mut misaligned = vec![0u8];
        misaligned.extend(&good);
        cases.push(("input shifted by one byte".into(), misaligned, OUT_LEN));
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ u64::from(code);
        for i in 0..40 {
            let mut g = good.clone();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % g.len();
            g[at] ^= (seed >> 32) as u8 | 1;
            cases.push((format!("garbage #{i} (byte {at} flipped)"), g, OUT_LEN));
        }
        let mut clean = 0;
        for (what, input, out) in &cases {
            let r = ctx.ioctl_checked(c.h, code, input, *out);
            let ok = if r.status == STATUS_SUCCESS {
                // A flipped byte may still be a valid request: then the answer must decode.
                r.information <= *out as usize
                    && wire::decode_header(&r.output[..r.information]).is_ok()
            } else {
                r.information == 0
            };
            if ok {
                clean += 1;
            } else {
                ctx.check(
                    false,
                    format!(
                        "{kind:?}, {what}: {} with {} bytes",
                        status::describe(r.status),
                        r.information
                    ),
                );
            }
        }
        ctx.check(
            clean == cases.len(),
            format!(
                "{kind:?}: {clean} of {} hostile requests answered cleanly",
                cases.len()
            ),
        );
    }
    longest_path_is_accepted(ctx, &c);
    let user_caller = io::open(WIN32_DEVICE_PATH, Caller::User, ctx.new_pid(), GENERIC_READ);
    ctx.check(
        user_caller.is_err(),
        "a caller without Administrators cannot open the device",
    );
    process::exit_process(p);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// The longest path a request may carry (512 units) is accepted, not refused for size.
fn longest_path_is_accepted(ctx: &mut Ctx, c: &Client) {
    let longest: Vec<u16> = format!(r"{USER}\{}", "k".repeat(512 - USER.len() - 1))
        .encode_utf16()
        .collect();
    let input = Client::request(QueryKind::Holders, &longest, Cursor::START);
    let r = ctx.ioctl_checked(c.h, query_ioctl(QueryKind::Holders), &input, OUT_LEN);
    ctx.check(
        r.status == STATUS_SUCCESS,
        format!(
            "a holders request with a {}-unit path: {}",
            longest.len(),
            status::describe(r.status)
        ),
    );
}

/// Spin-lock acquisitions per open+close of a held profile key by `p`: (all, EX shared, EX
/// exclusive), and whether a `holders` query in between took any EX_SPIN_LOCK shared.
fn lock_counts(ctx: &mut Ctx, c: &Client, p: u32) -> ([u64; 3], u64) {
    use crate::verifier::calls::{Call, snapshot};
    let key = format!(r"{USER}\Software\Policies");
    let pick = |v: [u64; 8]| {
        [
            v[Call::SpinLock as usize],
            v[Call::ExSpinLockShared as usize],
            v[Call::ExSpinLockExclusive as usize],
        ]
    };
    let before = pick(snapshot());
    if let Some(h) = open(p, &key) {
        let _ = hive::close_key(p, h);
    }
    let after = pick(snapshot());
    let q0 = pick(snapshot())[1];
    let _ = c.holders(ctx, USER);
    let q1 = pick(snapshot())[1];
    (
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
        ],
        q1 - q0,
    )
}

/// The tracker's locks with and without the EX_SPIN_LOCK routines (`driver/src/lock.rs`):
/// Wine 8's ntoskrnl exports none of them; Windows from Vista SP1 has all four.
fn no_ex_spin_locks(ctx: &mut Ctx) {
    for hidden in [false, true] {
        kernel::reset();
        if hidden {
            ctx.say("ExReleaseSpinLockShared hidden: all four dropped, KSPIN_LOCKs");
            crate::nt::exports::hide(["ExReleaseSpinLockShared"]);
        } else {
            ctx.say("all four EX_SPIN_LOCK routines present");
        }
        let mut d = start(ctx);
        if let Some(c) = Client::open(ctx) {
            load_profile(ctx);
            let p = spawn(ctx, APP2);
            let held = open(p, &format!(r"{USER}\Software\Policies"));
            let (cycle, query) = lock_counts(ctx, &c, p);
            if hidden {
                ctx.check(
                    cycle[0] > 0 && cycle[1] == 0 && cycle[2] == 0 && query == 0,
                    format!(
                        "only KSPIN_LOCKs: an open+close took {} spin locks, {} EX shared, {} EX exclusive; the query {query} EX shared",
                        cycle[0], cycle[1], cycle[2]
                    ),
                );
            } else {
                ctx.check(
                    cycle[0] > 0 && cycle[1] + cycle[2] == cycle[0] && query > 0,
                    format!(
                        "only EX_SPIN_LOCKs: an open+close took {} spin locks, {} EX shared, {} EX exclusive; the query {query} EX shared",
                        cycle[0], cycle[1], cycle[2]
                    ),
                );
            }
            let holders = c.holders(ctx, USER);
            ctx.check(
                holders.len() == 1,
                format!("the held key is tracked: {} holder(s)", holders.len()),
            );
            if let Some(h) = held {
                let _ = hive::close_key(p, h);
            }
            process::exit_process(p);
            unload_all(ctx, &[USER, CLASSES]);
            c.close();
        }
        ctx.unload_and_check_clean(&mut d);
    }
}

/// One phase of `older-windows`: `hidden` routines gone, the driver started, a profile loaded
/// and a process holding `USER\Software\Policies`; `body` checks the driver's answers with the
/// process still there, then the process exits (the answers after the exit go to `after`),
/// the hives unload and the driver unloads clean.
fn phase_without(
    ctx: &mut Ctx,
    hidden: &[&str],
    body: impl FnOnce(&mut Ctx, &Client),
    after: impl FnOnce(&mut Ctx, &Client),
) {
    kernel::reset();
    crate::nt::exports::hide(hidden.iter().copied());
    let mut d = start(ctx);
    if let Some(c) = Client::open(ctx) {
        load_profile(ctx);
        let p = spawn(ctx, APP2);
        let _ = open(p, &format!(r"{USER}\Software\Policies"));
        body(ctx, &c);
        process::exit_process(p);
        after(ctx, &c);
        unload_all(ctx, &[USER, CLASSES]);
        c.close();
    }
    ctx.unload_and_check_clean(&mut d);
}

fn older_windows(ctx: &mut Ctx) {
    // The driver's floor (README: Windows 10 1809) lacks only ExAllocatePool2 of the routines
    // it resolves at run time (Learn, "Updating deprecated ExAllocatePool calls to
    // ExAllocatePool2 and ExAllocatePool3": use them when "targeting Windows 10, version 2004
    // and later"; ExAllocatePool: before 2004 use ExAllocatePoolZero). Audit 21a, B2: the
    // floor was only load/unload-tested (`hidden-routines`).
    ctx.say("Windows 10 1809, the driver's floor: ExAllocatePool2 alone hidden (pool through ExAllocatePoolWithTag, zeroed by the driver)");
    phase_without(
        ctx,
        &["ExAllocatePool2"],
        |ctx, c| {
            let holders = c.holders(ctx, USER);
            ctx.check(
                holders.len() == 1 && holders[0].keys.len() == 1,
                format!("the held key is tracked: {holders:?}"),
            );
            let stats = c.stats(ctx);
            ctx.check(
                stats.tracking_status == 0,
                format!("tracking is on: {:#x}", stats.tracking_status),
            );
        },
        |ctx, c| {
            let empty = c.holders(ctx, USER).is_empty();
            ctx.check(empty, "the exit removes its keys");
        },
    );

    // Not a real system (Windows 7 has neither PsGetProcessStartKey nor
    // PsSetLoadImageNotifyRoutineEx, and has PsSetCreateProcessNotifyRoutineEx): every
    // fallback of the names below at once.
    ctx.say("every key-name, process-notify, clock and pool fallback at once (no real Windows has this set): ExAllocatePool2, the Ex key-name pair, the Ex process notify and KeQuerySystemTimePrecise hidden");
    phase_without(
        ctx,
        &[
            "ExAllocatePool2",
            "CmCallbackGetKeyObjectIDEx",
            "CmCallbackReleaseKeyObjectIDEx",
            "PsSetCreateProcessNotifyRoutineEx",
            "KeQuerySystemTimePrecise",
        ],
        |ctx, c| {
            let holders = c.holders(ctx, USER);
            ctx.check(
                holders.len() == 1
                    && holders[0]
                        .keys
                        .first()
                        .is_some_and(|k| k.0.to_ascii_uppercase().ends_with(r"\SOFTWARE\POLICIES")),
                format!("tracked with CmCallbackGetKeyObjectID for names: {holders:?}"),
            );
        },
        |ctx, c| {
            let empty = c.holders(ctx, USER).is_empty();
            ctx.check(
                empty,
                "the exit's handle cleanup removes its keys, without process notifications",
            );
        },
    );

    ctx.say("no CmRegisterCallbackEx (Wine, or a system without registry filtering)");
    phase_without(
        ctx,
        &["CmRegisterCallbackEx"],
        |ctx, c| {
            let version = io::device_io_control(
                c.h,
                protocol::ioctl::IOCTL_HIVETRACK_GET_VERSION,
                &[],
                64,
                0xA5,
            );
            ctx.check(
                version.status == STATUS_SUCCESS,
                "the driver loads and answers",
            );
            let procs = c.processes(ctx);
            ctx.check(procs.is_empty(), format!("nothing is tracked ({procs:?})"));
            let stats = c.stats(ctx);
            ctx.check(
                stats.tracking_status == 0xC000_007A,
                format!(
                    "stats say why tracking is off: {:#x} (STATUS_PROCEDURE_NOT_FOUND)",
                    stats.tracking_status
                ),
            );
        },
        |_, _| {},
    );
}
