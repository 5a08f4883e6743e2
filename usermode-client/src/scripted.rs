//! Test support: a scripted [`Transport`] and the scenarios of issue 5 as pages.
//!
//! The transport answers from protocol-encoded pages; the scenarios of issue 5 as a driver would report them (the profile that will not
//! unload, a handle leak of 65,602 keys, an incomplete report). Used by the unit and
//! integration tests; nothing in the shipped commands reaches it.

use protocol::history::{UnloadHolder, UnloadHolders, UnloadRecord};
use protocol::hives::HiveRecord;
use protocol::holders::{HiveKind, HiveState, HolderKey, HolderProcess, HoldersPrefix};
use protocol::page::NoPrefix;
use protocol::processes::ProcessRecord;
use protocol::snapshot::{SnapshotPrefix, SnapshotRecord};
use protocol::stats::Stats;
use protocol::text::Text;
use protocol::version::{BuildId, VersionInfo};

use crate::model::UNIX_EPOCH_FILETIME;
use crate::page_server::{Listing, Server};
use crate::transport::{Transport, TransportError};

/// The user whose profile will not unload.
pub const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
/// 2026-11-22T04:00:00Z, the moment every scenario is reported at.
pub const NOW: u64 = UNIX_EPOCH_FILETIME + 1_795_320_000 * 10_000_000;
/// One second in FILETIME units.
pub const SECOND: u64 = 10_000_000;
/// When the scripted driver started tracking: 2026-11-22T01:00:00Z, three hours before
/// [`NOW`].
pub const TRACKING_SINCE: u64 = NOW - 3 * 3600 * SECOND;
/// `KEY_READ`.
pub const KEY_READ: u32 = 0x0002_0019;
/// The policy agent that keeps `Software\Policies` open.
pub const AGENT: &str = r"C:\Program Files\Contoso\Policy Agent\agent.exe";
/// Its pid.
pub const AGENT_PID: u64 = 2040;
/// The shell.
pub const SHELL: &str = r"C:\Windows\explorer.exe";
/// The leaking process.
pub const LEAKY: &str = r"C:\Tools\leaky.exe";
/// Its pid.
pub const LEAKY_PID: u64 = 4711;
/// The key it leaks.
pub const LEAKED_KEY: &str = r"\REGISTRY\MACHINE\SOFTWARE\Contoso\Leaky\Settings";
/// How many times it opened it.
pub const LEAK_COUNT: usize = 65_602;

/// A failure the scripted transport injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every request fails with this Win32 error.
    Refuse(u32),
    /// Answers claim protocol version `n`.
    Version(u16),
    /// Answers are cut to this many bytes.
    Truncate(usize),
    /// Answers have this byte flipped.
    Flip(usize),
    /// Holders queries (only) fail with this Win32 error.
    RefuseHolders(u32),
}

/// A transport answering from [`Server`]s.
#[derive(Debug, Default)]
pub struct Scripted {
    /// The states the driver goes through: each holders query that starts a new pass
    /// (cursor at the start) moves to the next state, the last one staying.
    pub states: Vec<Server>,
    step: usize,
    holders_passes: usize,
    /// A fault to inject into every answer.
    pub fault: Option<Fault>,
    /// Every control code sent, in order.
    pub sent: Vec<u32>,
    /// Backend name shown in reports.
    pub name: &'static str,
    /// What the backend says it cannot report.
    pub missing: &'static [&'static str],
    /// Images of live processes the driver does not know, for [`Transport::process_image`].
    pub images: Vec<(u64, String)>,
    /// The kernel cannot be asked (as a backend without `NtQueryOpenSubKeysEx`).
    pub no_kernel: bool,
    /// Creation times (FILETIME) of live processes, for [`Transport::process_started`].
    pub started: Vec<(u64, u64)>,
    /// The driver's event stream (`IOCTL_HIVETRACK_WAIT_EVENTS`); without it the request is
    /// refused as an older driver refuses it.
    pub events: Option<crate::scripted_events::SharedQueue>,
    /// `(holder, opener)`: the kernel lists the keys the driver files under `holder` under
    /// `opener` instead, as for a kernel handle opened on `opener`'s thread (the driver files
    /// it under System) or an attached thread's open (`CM_KEY_BODY.ProcessID`).
    pub kernel_opener: Vec<(u64, u64)>,
}

impl Scripted {
    /// A transport that always answers from `server`.
    #[must_use]
    pub fn new(server: Server) -> Self {
        Self::timeline(vec![server])
    }

    /// A transport that moves through `states` (see [`Scripted::states`]).
    #[must_use]
    pub fn timeline(states: Vec<Server>) -> Self {
        Self {
            states,
            name: "scripted",
            ..Self::default()
        }
    }

    /// The same, with `fault` injected.
    #[must_use]
    pub const fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

impl Scripted {
    /// The state's [`Server::kernel_extra`] keys in `hive`.
    fn extra_in(server: &Server, hive: &str) -> Vec<(u64, String)> {
        let folded = hive.to_uppercase();
        server
            .kernel_extra
            .iter()
            .filter(|(_, k)| {
                let k = k.to_uppercase();
                k == folded || k.starts_with(&format!(r"{folded}\"))
            })
            .cloned()
            .collect()
    }
}

impl Transport for Scripted {
    fn backend(&self) -> &'static str {
        self.name
    }

    fn missing(&self) -> &'static [&'static str] {
        self.missing
    }

    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        self.sent.push(code);
        match self.fault {
            Some(Fault::Refuse(code)) => return Err(TransportError::Request { code }),
            Some(Fault::RefuseHolders(refused))
                if code == protocol::ioctl::IOCTL_HIVETRACK_QUERY_HOLDERS =>
            {
                return Err(TransportError::Request { code: refused });
            }
            _ => {}
        }
        if code == protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS {
            return match &self.events {
                Some(events) => events.borrow_mut().answer(input, output),
                // A driver tracking since TRACKING_SINCE with no event yet.
                None => {
                    crate::scripted_events::EventQueue::new(TRACKING_SINCE, 1).answer(input, output)
                }
            };
        }
        let starts_pass = code == protocol::ioctl::IOCTL_HIVETRACK_QUERY_HOLDERS
            && protocol::wire::decode::<protocol::request::QueryRequest<'_>>(input)
                .is_ok_and(|r| r.cursor == protocol::cursor::Cursor::START);
        if starts_pass {
            if self.holders_passes > 0 {
                self.step = (self.step + 1).min(self.states.len().saturating_sub(1));
            }
            self.holders_passes += 1;
        }
        let n = if code == protocol::ioctl::IOCTL_HIVETRACK_CAPTURE {
            self.states[self.step].answer_capture(input, output, NOW)?
        } else {
            self.states[self.step].answer(code, input, output)?
        };
        match self.fault {
            Some(Fault::Version(v)) => output[4..6].copy_from_slice(&v.to_le_bytes()),
            Some(Fault::Truncate(len)) => return Ok(len.min(n)),
            Some(Fault::Flip(at)) if at < n => output[at] ^= 0xFF,
            _ => {}
        }
        Ok(n)
    }

    /// The kernel's list: every key of the driver's holders answer for the hive, plus the
    /// state's [`Server::kernel_extra`] in it.
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        use protocol::holders::{HolderRecord, Holders};
        use protocol::page::Page;
        use protocol::request::{QueryKind, QueryRequest};
        if self.no_kernel {
            return None;
        }
        let server = &self.states[self.step];
        let units: Vec<u16> = hive.encode_utf16().collect();
        let mut out: Vec<(u64, String)> = Vec::new();
        let mut cursor = protocol::cursor::Cursor::START;
        let mut input = vec![0u8; 256 + 2 * units.len()];
        let mut buf = vec![0u8; 1 << 22];
        loop {
            let req = QueryRequest {
                query: QueryKind::Holders,
                flags: 0,
                max_records: 0,
                cursor,
                hive: Text::Units(&units),
            };
            let n = protocol::wire::encode(&req, &mut input).ok()?;
            let len = match server.answer(
                protocol::ioctl::IOCTL_HIVETRACK_QUERY_HOLDERS,
                &input[..n],
                &mut buf,
            ) {
                Ok(len) => len,
                // A hive the driver does not know may still be loaded with keys open: the
                // kernel lists them whatever the driver knows.
                Err(e) => {
                    let extra = Self::extra_in(server, hive);
                    return Some(if extra.is_empty() { Err(e) } else { Ok(extra) });
                }
            };
            let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..len]).ok()?;
            let mut pid = 0;
            for rec in page.records() {
                match rec {
                    HolderRecord::Process(p) => {
                        pid = self
                            .kernel_opener
                            .iter()
                            .find(|(holder, _)| *holder == p.pid)
                            .map_or(p.pid, |&(_, opener)| opener);
                    }
                    // The kernel always has a name, even where the driver could not
                    // store one.
                    HolderRecord::Key(k) if k.name.is_empty() => {
                        out.push((pid, format!(r"{hive}\Software\Contoso\Unnamed")));
                    }
                    HolderRecord::Key(k) => out.push((pid, k.name.to_string())),
                }
            }
            if page.info.done() || page.info.next == cursor {
                break;
            }
            cursor = page.info.next;
        }
        out.extend(Self::extra_in(server, hive));
        Some(Ok(out))
    }

    fn process_image(&mut self, pid: u64) -> Option<String> {
        self.images
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, i)| i.clone())
    }

    fn process_started(&mut self, pid: u64) -> Option<u64> {
        self.started
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|&(_, t)| t)
    }
}

fn units(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

/// The driver's version answer in every scenario.
#[must_use]
pub const fn version() -> VersionInfo {
    VersionInfo {
        major: 0,
        minor: 1,
        patch: 0,
        capabilities: 0,
        build_id: BuildId::new("g3f9c2ab"),
    }
}

/// A hive of a scenario.
struct H {
    id: u32,
    mount: String,
    file: &'static str,
    open_keys: u64,
    holders: u32,
}

fn user(suffix: &str) -> String {
    format!(r"\REGISTRY\USER\{SID}{suffix}")
}

/// A key a process holds: name, seconds open, thread.
type K = (String, u64, u64);

/// A process and its keys in one hive.
struct P {
    pid: u64,
    image: &'static str,
    flags: u32,
    /// Per key, its stack id and stack flags (`STACK_EMPTY`, `STACK_DROPPED`); none: 0.
    stacks: Vec<(u32, u32)>,
    keys: Vec<K>,
}

fn holders_listing(h: &H, procs: &[P]) -> Listing {
    holders_listing_lost(h, procs, 0)
}

/// The holders listing of `h` from a driver that lost `global_lost` opens in an unknown hive
/// (10 minutes before [`NOW`]).
fn holders_listing_lost(h: &H, procs: &[P], global_lost: u64) -> Listing {
    let mount = units(&h.mount);
    let file = units(h.file);
    let names: Vec<Vec<Vec<u16>>> = procs
        .iter()
        .map(|p| p.keys.iter().map(|k| units(&k.0)).collect())
        .collect();
    let images: Vec<Vec<u16>> = procs.iter().map(|p| units(p.image)).collect();
    let records: Vec<(HolderProcess<'_>, Vec<HolderKey<'_>>)> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let keys: Vec<HolderKey<'_>> = p
                .keys
                .iter()
                .zip(&names[i])
                .enumerate()
                .map(|(j, (k, n))| HolderKey {
                    flags: if n.is_empty() {
                        HolderKey::NAME_MISSING
                    } else {
                        0
                    } | p.stacks.get(j).map_or(0, |s| s.1),
                    id: 0x1_0000_0000 + p.pid * 0x1_0000 + j as u64,
                    thread: k.2,
                    open_time: NOW - k.1 * SECOND,
                    access: KEY_READ,
                    handle_opens: 1,
                    handle_closes: 0,
                    stack: p.stacks.get(j).map_or(0, |s| s.0),
                    name: Text::Units(n),
                })
                .collect();
            let oldest = keys.iter().map(|k| k.open_time).min().unwrap_or(0);
            (
                HolderProcess {
                    flags: p.flags,
                    pid: p.pid,
                    start_key: 0x100 + p.pid,
                    open_keys: keys.len() as u64,
                    oldest_open: oldest,
                    image: Text::Units(&images[i]),
                },
                keys,
            )
        })
        .collect();
    Listing::holders(
        &HoldersPrefix {
            hive_id: h.id,
            state: HiveState::Loaded,
            kind: HiveKind::Regular,
            open_keys: h.open_keys,
            holders: h.holders,
            flags: 0,
            mount: Text::Units(&mount),
            file: Text::Units(&file),
            completeness: protocol::completeness::Completeness {
                tracking_since: TRACKING_SINCE,
                global_lost,
                global_lost_since: if global_lost > 0 {
                    NOW - 600 * SECOND
                } else {
                    0
                },
                ..protocol::completeness::Completeness::default()
            },
        },
        &records,
    )
}

fn hives_listing(hives: &[H]) -> Listing {
    hives_listing_at(hives, NOW - 3 * 3600 * SECOND)
}

/// The hives page with every hive loaded at `loaded_time` (FILETIME).
fn hives_listing_at(hives: &[H], loaded_time: u64) -> Listing {
    let mut l = Listing::new(&NoPrefix);
    for h in hives {
        let mount = units(&h.mount);
        let file = units(h.file);
        l.push(&HiveRecord {
            id: h.id,
            state: HiveState::Loaded,
            kind: HiveKind::Regular,
            open_keys: h.open_keys,
            holders: h.holders,
            flags: 0,
            loaded_time,
            mount: Text::Units(&mount),
            file: Text::Units(&file),
        });
    }
    l
}

fn processes_listing(procs: &[(u64, &str, u64, u32, u32)]) -> Listing {
    let mut l = Listing::new(&NoPrefix);
    for &(pid, image, open_keys, hives, flags) in procs {
        let image = units(image);
        l.push(&ProcessRecord {
            pid,
            start_key: 0x100 + pid,
            open_keys,
            hives,
            flags,
            image: Text::Units(&image),
        });
    }
    l
}

/// The hives of [`logoff`]: the machine's and the user's two.
fn logoff_hives() -> Vec<H> {
    let mut hives = machine_hives();
    hives.push(H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 1,
        holders: 1,
    });
    hives.push(H {
        id: 8,
        mount: user("_Classes"),
        file: r"\Device\HarddiskVolume2\Users\alice\AppData\Local\Microsoft\Windows\UsrClass.dat",
        open_keys: 0,
        holders: 0,
    });
    hives
}

fn machine_hives() -> Vec<H> {
    vec![
        H {
            id: 1,
            mount: r"\REGISTRY\MACHINE\SYSTEM".into(),
            file: r"\Device\HarddiskVolume2\Windows\System32\config\SYSTEM",
            open_keys: 412,
            holders: 37,
        },
        H {
            id: 2,
            mount: r"\REGISTRY\MACHINE\SOFTWARE".into(),
            file: r"\Device\HarddiskVolume2\Windows\System32\config\SOFTWARE",
            open_keys: 958,
            holders: 41,
        },
        H {
            id: 3,
            mount: r"\REGISTRY\USER\.DEFAULT".into(),
            file: r"\Device\HarddiskVolume2\Windows\System32\config\DEFAULT",
            open_keys: 6,
            holders: 3,
        },
    ]
}

fn stats_with(objects: u64, losses: &[(&str, u64)]) -> Stats {
    let mut v = [0u64; Stats::FIELD_COUNT];
    for (name, value) in Stats::NAMES.iter().zip(v.iter_mut()) {
        *value = match *name {
            "objects_tracked" => objects,
            "objects_cap" => 1_048_576,
            "processes_tracked" => 58,
            "hives_tracked" => 5,
            "names_interned" => 2_311,
            "holdings_tracked" => 96,
            "history_entries" => 2,
            "opens_seen" => 1_204_577,
            "handle_closes_seen" => 1_203_108,
            "destroys_seen" => 1_203_201,
            "hive_loads_seen" => 7,
            // The driver is told of process exits (the process notify routine registered).
            "hive_unloads_seen" | "process_exits_tracked" => 1,
            "unload_attempts_seen" => 3,
            "process_exits_seen" => 311,
            "closes_exceeding_opens" => 4,
            other => losses
                .iter()
                .find(|(n, _)| *n == other)
                .map_or(0, |(_, v)| *v),
        };
    }
    Stats::from_values(v)
}

fn history_listing(agent_keys: u64, truncated: bool) -> Listing {
    history_listing_held(agent_keys, truncated, false, 0xC000_0121)
}

/// The unload history; `held_after`: newest, the driver's look at the user hive 60 s after
/// its failed unload (#2), still held by the agent, with holders it could not all see.
fn history_listing_held(
    agent_keys: u64,
    truncated: bool,
    held_after: bool,
    outcome: u32,
) -> Listing {
    let agent = units(AGENT);
    let mount = units(&user(""));
    let other = units(r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1002");
    let holders = [UnloadHolder {
        pid: AGENT_PID,
        start_key: 0x100 + AGENT_PID,
        open_keys: agent_keys,
        image: Text::Units(&agent),
    }];
    let mut l = Listing::new(&NoPrefix);
    if held_after {
        l.push(&UnloadRecord {
            time: NOW,
            outcome,
            hive_id: 7,
            open_keys: agent_keys,
            holders_total: 1,
            flags: UnloadRecord::HELD_AFTER | UnloadRecord::HOLDERS_UNSEEN,
            sequence: 3,
            interrupt_time: 0,
            mount: Text::Units(&mount),
            holders: UnloadHolders::Slice(&holders),
        });
    }
    l.push(&UnloadRecord {
        time: NOW - 60 * SECOND,
        outcome,
        hive_id: 7,
        open_keys: agent_keys + u64::from(truncated) * 3,
        holders_total: 1 + u32::from(truncated) * 3,
        flags: if truncated {
            UnloadRecord::HOLDERS_TRUNCATED
        } else {
            0
        },
        sequence: 2,
        interrupt_time: 0,
        mount: Text::Units(&mount),
        holders: UnloadHolders::Slice(&holders),
    });
    l.push(&UnloadRecord {
        time: NOW - 2 * 3600 * SECOND,
        outcome: 0,
        hive_id: 5,
        open_keys: 0,
        holders_total: 0,
        flags: 0,
        sequence: 1,
        interrupt_time: 0,
        mount: Text::Units(&other),
        holders: UnloadHolders::Slice(&[]),
    });
    l
}

fn snapshot_listing(taken_at: u64, rows: &[(u64, u32, &str, usize)]) -> Listing {
    let mut l = Listing::new(&SnapshotPrefix { taken_at });
    let mut id = 0x2_0000_0000u64;
    for &(pid, hive_id, name, count) in rows {
        let name = units(name);
        for i in 0..count {
            id += 1;
            l.push(&SnapshotRecord {
                pid,
                start_key: 0x100 + pid,
                id,
                open_time: taken_at - (count - i) as u64 * SECOND,
                hive_id,
                flags: 0,
                name: Text::Units(&name),
            });
        }
    }
    l
}

/// The logoff scenario at the moment the profile unload fails.
///
/// The shell and the other
/// application closed their keys; the policy agent (pid 2040) keeps
/// `Software\Policies` open in the user's hive; the `_Classes` hive is free.
#[must_use]
pub fn logoff() -> Server {
    let hives = logoff_hives();
    let agent = P {
        pid: AGENT_PID,
        image: AGENT,
        flags: 0,
        stacks: Vec::new(),
        keys: vec![(user(r"\Software\Policies"), 25 * 60 + 3, 2044)],
    };
    Server {
        version: Some(version()),
        stats: Some(stats_with(1_469, &[])),
        holders: vec![
            (units(&hives[3].mount), holders_listing(&hives[3], &[agent])),
            (units(&hives[4].mount), holders_listing(&hives[4], &[])),
        ],
        processes: Some(processes_listing(&[
            (4012, SHELL, 212, 3, 0),
            (640, r"C:\Windows\System32\svchost.exe", 96, 2, 0),
            (AGENT_PID, AGENT, 5, 2, 0),
        ])),
        snapshot: Some(snapshot_listing(
            NOW,
            &[
                (
                    AGENT_PID,
                    7,
                    r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001\Software\Policies",
                    1,
                ),
                (
                    AGENT_PID,
                    2,
                    r"\REGISTRY\MACHINE\SOFTWARE\Contoso\Policy Agent",
                    4,
                ),
            ],
        )),
        history: Some(history_listing(1, false)),
        hives: Some(hives_listing(&hives)),
        stacks: None,
        modules: None,
        capture: None,
        not_recorded: 0,
        kernel_extra: Vec::new(),
    }
}

/// The logoff scenario with the driver's look again (issue 17) in its unload history.
///
/// The user hive is still held 60 s after its failed unload (#2), as record #3
/// ([`UnloadRecord::HELD_AFTER`], with [`UnloadRecord::HOLDERS_UNSEEN`]).
#[must_use]
pub fn logoff_held_after() -> Server {
    let mut s = logoff();
    s.history = Some(history_listing_held(1, false, true, 0xC000_0121));
    s
}

/// [`logoff_held_after`] with a deferred unload (`STATUS_PENDING`: `NtUnloadKeyEx` with an
/// event) instead of the failed one: the driver watched it as well.
#[must_use]
pub fn logoff_deferred_held_after() -> Server {
    let mut s = logoff();
    s.history = Some(history_listing_held(1, false, true, 0x103));
    s
}

/// The logoff scenario a minute earlier: the shell and two applications hold keys in both
/// profile hives.
#[must_use]
pub fn logoff_busy() -> Server {
    let mut s = logoff();
    let h = H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 6,
        holders: 3,
    };
    let procs = [
        P {
            pid: AGENT_PID,
            image: AGENT,
            flags: 0,
            stacks: Vec::new(),
            keys: vec![
                (user(r"\Software\Policies"), 25 * 60 + 3, 2044),
                (user(r"\Software\Contoso\Policy Agent"), 90, 2044),
            ],
        },
        P {
            pid: 3176,
            image: r"C:\Windows\System32\notepad.exe",
            flags: 0,
            stacks: Vec::new(),
            keys: vec![(user(r"\Software\Microsoft\Notepad"), 12 * 60, 3180)],
        },
        P {
            pid: 4012,
            image: SHELL,
            flags: 0,
            stacks: Vec::new(),
            keys: vec![
                (
                    user(r"\Software\Microsoft\Windows\CurrentVersion\Explorer"),
                    3 * 3600,
                    4016,
                ),
                (user(r"\Control Panel\Desktop"), 3 * 3600, 4016),
                (user(r"\Environment"), 3 * 3600 - 5, 4020),
            ],
        },
    ];
    s.holders[0] = (units(&h.mount), holders_listing(&h, &procs));
    s
}

/// The pid of the service host in [`logoff_service_host`].
pub const SVCHOST_PID: u64 = 1188;
/// The pid of the exited holder in [`logoff_service_host`].
pub const EXITED_PID: u64 = 5120;

/// The event-1530 case people post: a service host and an exited process hold the profile.
///
/// `svchost.exe` says nothing until its services are named; the exited process's key handle
/// was inherited by another, and its pid may belong to someone else by now.
#[must_use]
pub fn logoff_service_host() -> Server {
    let mut s = logoff();
    let h = H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 3,
        holders: 2,
    };
    let procs = [
        P {
            pid: SVCHOST_PID,
            image: r"C:\Windows\System32\svchost.exe",
            flags: 0,
            stacks: Vec::new(),
            keys: vec![
                (
                    user(r"\Software\Microsoft\Windows\CurrentVersion\Group Policy"),
                    40 * 60,
                    1192,
                ),
                (user(r"\Software\Policies"), 40 * 60, 1192),
            ],
        },
        P {
            pid: EXITED_PID,
            image: r"C:\Windows\System32\rundll32.exe",
            flags: HolderProcess::EXITED,
            stacks: Vec::new(),
            keys: vec![(user(r"\Software\Classes"), 5 * 60, 5124)],
        },
    ];
    s.holders[0] = (units(&h.mount), holders_listing(&h, &procs));
    s
}

/// The profile after the agent exited: nothing holds either profile hive.
#[must_use]
pub fn logoff_released() -> Server {
    released(0)
}

/// The released profile from a driver that lost `global_lost` opens in an unknown hive.
fn released(global_lost: u64) -> Server {
    let mut s = logoff();
    let h = H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 0,
        holders: 0,
    };
    s.holders[0] = (units(&h.mount), holders_listing_lost(&h, &[], global_lost));
    s
}

/// [`logoff_released`] with every hive loaded an hour before tracking started.
///
/// A key the driver never saw may hold the profile, and if it was deleted while open the
/// kernel's list does not name it either (`Coverage::deleted_keys_unseen`).
#[must_use]
pub fn logoff_released_loaded_before_tracking() -> Server {
    let mut s = released(0);
    s.hives = Some(hives_listing_at(
        &logoff_hives(),
        TRACKING_SINCE - 3600 * SECOND,
    ));
    s
}

/// [`logoff_released`] after the driver lost 3 opens it could not attribute to a hive.
#[must_use]
pub fn logoff_released_lossy() -> Server {
    released(3)
}

/// The profile after a successful unload: the driver no longer knows the hive.
#[must_use]
pub fn logoff_unloaded() -> Server {
    let mut s = logoff();
    s.holders.clear();
    s
}

/// [`logoff_released`] after the user hive (`HKU\<SID>`) unloaded.
///
/// The driver no longer knows it and the kernel has no hive there; its `_Classes` hive is still loaded, with no
/// key open (the order Windows needs when the user hive's `Software\Classes` link holds
/// the classes hive: [`crate::classes_link`]).
#[must_use]
pub fn logoff_user_hive_unloaded() -> Server {
    let mut s = logoff_released();
    s.holders.remove(0);
    s
}

/// [`logoff_released`] after an unload of the `_Classes` hive failed, naming no holder.
///
/// `STATUS_CANNOT_DELETE`, the user hive still loaded: what the user hive's
/// cached `Software\Classes` link does to it ([`crate::classes_link`]).
#[must_use]
pub fn classes_unload_refused() -> Server {
    let mut s = logoff_released();
    let mount = units(&user("_Classes"));
    let mut l = Listing::new(&NoPrefix);
    l.push(&UnloadRecord {
        time: NOW,
        outcome: 0xC000_0121,
        hive_id: 8,
        open_keys: 0,
        holders_total: 0,
        flags: 0,
        sequence: 1,
        interrupt_time: 0,
        mount: Text::Units(&mount),
        holders: UnloadHolders::Slice(&[]),
    });
    s.history = Some(l);
    s
}

/// [`logoff_released`] with four unload records (review 23c, M2).
///
/// #1 the `_Classes` hive vetoed (`STATUS_ACCESS_DENIED`, no holder), #2 it refused (`STATUS_CANNOT_DELETE`, no
/// holder, the user hive loaded), #3 the user hive unloaded, #4 the `_Classes` hive refused
/// again (no holder): only #2 can be the user hive's link.
#[must_use]
pub fn classes_unload_refused_for_other_reasons() -> Server {
    let mut s = logoff_released();
    let classes = units(&user("_Classes"));
    let user_mount = units(&user(""));
    let mut l = Listing::new(&NoPrefix);
    for (sequence, outcome, hive_id, mount) in [
        (4u64, 0xC000_0121u32, 8u32, &classes),
        (3, 0, 7, &user_mount),
        (2, 0xC000_0121, 8, &classes),
        (1, 0xC000_0022, 8, &classes),
    ] {
        l.push(&UnloadRecord {
            time: NOW - (5 - sequence) * 60 * SECOND,
            outcome,
            hive_id,
            open_keys: 0,
            holders_total: 0,
            flags: 0,
            sequence,
            interrupt_time: 0,
            mount: Text::Units(mount),
            holders: UnloadHolders::Slice(&[]),
        });
    }
    s.history = Some(l);
    s
}

/// The handle leak: `leaky.exe` opened one key 65,602 times without closing it; `holders`
/// of `HKLM\SOFTWARE` spans many pages, `processes` ranks it first.
#[must_use]
pub fn handle_leak() -> Server {
    let mut s = logoff();
    let h = &machine_hives()[1];
    let leak = P {
        pid: LEAKY_PID,
        image: LEAKY,
        flags: 0,
        stacks: Vec::new(),
        keys: (0..LEAK_COUNT)
            .map(|i| {
                (
                    LEAKED_KEY.to_owned(),
                    7200 - (i as u64 * 7200 / LEAK_COUNT as u64),
                    4712,
                )
            })
            .collect(),
    };
    let svc = P {
        pid: 640,
        image: r"C:\Windows\System32\svchost.exe",
        flags: 0,
        stacks: Vec::new(),
        keys: vec![
            (
                r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion".to_owned(),
                9000,
                652,
            ),
            (
                r"\REGISTRY\MACHINE\SOFTWARE\Policies\Microsoft\Windows".to_owned(),
                8000,
                652,
            ),
        ],
    };
    let hive = H {
        open_keys: 2 + LEAK_COUNT as u64,
        holders: 2,
        id: h.id,
        mount: h.mount.clone(),
        file: h.file,
    };
    s.holders
        .push((units(&hive.mount), holders_listing(&hive, &[svc, leak])));
    s.processes = Some(processes_listing(&[
        (LEAKY_PID, LEAKY, LEAK_COUNT as u64, 1, 0),
        (4012, SHELL, 212, 3, 0),
        (640, r"C:\Windows\System32\svchost.exe", 96, 2, 0),
        (AGENT_PID, AGENT, 5, 2, 0),
    ]));
    s
}

/// Two snapshots of the leak, an hour apart (1,000 then 1,602 objects on the leaked key).
#[must_use]
pub fn leak_snapshots() -> (Server, Server) {
    let mut a = handle_leak();
    let mut b = handle_leak();
    let base: &[(u64, u32, &str, usize)] = &[
        (
            640,
            2,
            r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
            1,
        ),
        (
            AGENT_PID,
            7,
            r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001\Software\Policies",
            1,
        ),
    ];
    let mut rows_a = base.to_vec();
    rows_a.push((LEAKY_PID, 2, LEAKED_KEY, 1_000));
    let mut rows_b = base.to_vec();
    rows_b.truncate(1);
    rows_b.push((LEAKY_PID, 2, LEAKED_KEY, 1_602));
    a.snapshot = Some(snapshot_listing(NOW - 3600 * SECOND, &rows_a));
    b.snapshot = Some(snapshot_listing(NOW, &rows_b));
    (a, b)
}

/// An incomplete report: the tracker dropped 17 records (12 opens for want of memory, 5
/// names), one key of the agent has no name, and the unload record could not list every
/// holder.
#[must_use]
pub fn incomplete() -> Server {
    let mut s = logoff();
    let h = H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 2,
        holders: 1,
    };
    let agent = P {
        pid: AGENT_PID,
        image: AGENT,
        flags: 0,
        stacks: Vec::new(),
        keys: vec![
            (user(r"\Software\Policies"), 25 * 60 + 3, 2044),
            (String::new(), 60, 2044),
        ],
    };
    // The 12 opens dropped for want of an object slot came before their hive was known.
    s.holders[0] = (units(&h.mount), holders_listing_lost(&h, &[agent], 12));
    let classes = H {
        id: 8,
        mount: user("_Classes"),
        file: r"\Device\HarddiskVolume2\Users\alice\AppData\Local\Microsoft\Windows\UsrClass.dat",
        open_keys: 0,
        holders: 0,
    };
    s.holders[1] = (
        units(&classes.mount),
        holders_listing_lost(&classes, &[], 12),
    );
    s.stats = Some(stats_with(
        1_469,
        &[
            ("opens_dropped_no_memory_object", 12),
            ("names_dropped_no_memory", 5),
        ],
    ));
    s.history = Some(history_listing(2, true));
    s.not_recorded = 17;
    // One of the lost opens is still open: the kernel lists it, the driver has no record.
    s.kernel_extra = vec![
        (
            AGENT_PID,
            user(r"\Software\Microsoft\Windows\CurrentVersion"),
        ),
        (640, user("_Classes\\CLSID")),
    ];
    s
}

// Issue 16: which code opened the key.

/// The shell in [`shell_extension`].
pub const EXPLORER_PID: u64 = 4012;
/// The exited process in [`shell_extension`] whose modules are still listed.
pub const RUNDLL_PID: u64 = 5120;
/// The shell extension both load (kernel path, as the image-load notification names it).
pub const SHELLEXT: &str = r"\Device\HarddiskVolume2\Program Files\Contoso\ShellExt\shellext.dll";
/// The extension mapped at the same base before it, unmapped without a notification.
pub const OLDEXT: &str = r"\Device\HarddiskVolume2\Program Files\Fabrikam\oldext.dll";
/// Where explorer mapped `oldext.dll` (4 h before [`NOW`]... 3 h) and then `shellext.dll`.
pub const EXT_BASE: u64 = 0x7ffa_5000_0000;
/// The no-module frame of stack 2 (JIT code, say).
pub const JIT_FRAME: u64 = 0x0000_01f0_0000_1234;

const SYSTEM32: &str = r"\Device\HarddiskVolume2\Windows\System32";
const NTDLL: u64 = 0x7ffb_2000_0000;
const KERNELBASE: u64 = 0x7ffb_1d00_0000;
const KERNEL32: u64 = 0x7ffb_1e00_0000;
const ADVAPI32: u64 = 0x7ffb_1f00_0000;
const EXPLORER_BASE: u64 = 0x7ff6_1000_0000;
const RUNDLL_BASE: u64 = 0x7ff7_4000_0000;
/// Where rundll32 mapped `shellext.dll`.
pub const RUNDLL_EXT_BASE: u64 = 0x7ffa_6000_0000;

/// One module of a process: path, base, size, loaded this many seconds before [`NOW`].
type M = (String, u64, u64, u64);

fn system_modules() -> Vec<M> {
    [
        ("ntdll.dll", NTDLL, 0x1f_8000),
        ("kernel32.dll", KERNEL32, 0xc_0000),
        ("KernelBase.dll", KERNELBASE, 0x3a_0000),
        ("advapi32.dll", ADVAPI32, 0xb_0000),
    ]
    .into_iter()
    .map(|(n, base, size)| (format!(r"{SYSTEM32}\{n}"), base, size, 4 * 3600))
    .collect()
}

/// The module records of `ms`, named by `names`.
fn modules_of<'n>(ms: &[M], names: &'n [Vec<u16>]) -> Vec<protocol::modules::Module<'n>> {
    ms.iter()
        .zip(names)
        .map(|(m, n)| protocol::modules::Module {
            flags: 0,
            base: m.1,
            size: m.2,
            load_time: NOW - m.3 * SECOND,
            name: Text::Units(n),
        })
        .collect()
}

fn stack(id: u32, flags: u16, frames: &[u64]) -> protocol::stacks::StackRecord {
    let mut f = [0u64; protocol::capture::MAX_FRAMES];
    f[..frames.len()].copy_from_slice(frames);
    protocol::stacks::StackRecord {
        id,
        flags,
        uses: 1,
        len: u16::try_from(frames.len()).unwrap_or(0),
        frames: f,
    }
}

/// A shell extension holds the profile open (issue 16): capture was on for the user's hive,
/// and the keys carry their open-time stacks.
///
/// `explorer.exe` (4012) holds six keys: two opened from `shellext.dll` (one stack),
/// one from `oldext.dll` — mapped at [`EXT_BASE`] three hours before [`NOW`] and replaced by
/// `shellext.dll` at the same base an hour later without an unmap notification, the key
/// opened between the two, so only the load-time rule names `oldext.dll` — with a frame in
/// no module ([`JIT_FRAME`]), one whose truncated stack is all OS plumbing, one with an
/// empty stack (a kernel-mode opener) and one whose stack was dropped. `rundll32.exe`
/// (5120) exited holding a key opened from `shellext.dll`; its modules are still listed.
/// One image load and one stack could not be recorded.
#[must_use]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario: its keys, stacks and modules side by side"
)]
pub fn shell_extension() -> Server {
    use protocol::holders::HolderKey as HK;
    use protocol::modules::{ModuleProcess, ModulesPrefix};
    let mut s = logoff();
    let h = H {
        id: 7,
        mount: user(""),
        file: r"\Device\HarddiskVolume2\Users\alice\NTUSER.DAT",
        open_keys: 7,
        holders: 2,
    };
    let procs = [
        P {
            pid: EXPLORER_PID,
            image: SHELL,
            flags: 0,
            stacks: vec![
                (3, 0),
                (0, HK::STACK_EMPTY),
                (0, HK::STACK_DROPPED),
                (2, 0),
                (1, 0),
                (1, 0),
            ],
            keys: vec![
                (
                    user(r"\Software\Microsoft\Windows\CurrentVersion\Explorer"),
                    3 * 3600 + 1800,
                    4016,
                ),
                (user(r"\Control Panel\Desktop"), 3 * 3600 + 1700, 4016),
                (user(r"\Environment"), 3 * 3600 + 1600, 4020),
                (user(r"\Software\Fabrikam\OldExt"), 2 * 3600 + 1800, 4020),
                (user(r"\Software\Contoso\ShellExt"), 3600, 4024),
                (user(r"\Software\Contoso\ShellExt\Cache"), 3590, 4024),
            ],
        },
        P {
            pid: RUNDLL_PID,
            image: r"C:\Windows\System32\rundll32.exe",
            flags: HolderProcess::EXITED,
            stacks: vec![(4, 0)],
            keys: vec![(
                user(r"\Software\Classes\CLSID\{5E2A7C3B-0F43-4E8C-9B1D-6A2F9C3E8D10}"),
                600,
                5124,
            )],
        },
    ];
    s.holders[0] = (units(&h.mount), holders_listing(&h, &procs));
    let mut stacks = Listing::new(&protocol::stacks::StacksPrefix { dropped: 1 });
    let explorer_tail = [
        EXPLORER_BASE + 0x5e10,
        KERNEL32 + 0x1_7034,
        NTDLL + 0x5_26a1,
    ];
    let mut frames = vec![NTDLL + 0x9_d1f4, KERNELBASE + 0x2_a3c1];
    frames.extend([EXT_BASE + 0x1a2b, EXT_BASE + 0x3f00]);
    frames.extend(explorer_tail);
    let mut one = stack(1, 0, &frames);
    one.uses = 2;
    stacks.push(&one);
    stacks.push(&stack(
        2,
        0,
        &[
            NTDLL + 0x9_d1f4,
            KERNELBASE + 0x2_a3c1,
            ADVAPI32 + 0x1_8a20,
            EXT_BASE + 0x2100,
            JIT_FRAME,
            EXPLORER_BASE + 0x5e10,
        ],
    ));
    let plumbing: Vec<u64> = (0..16u64)
        .map(|i| match i % 4 {
            0 => NTDLL + 0x9_d1f4 + i,
            1 => KERNELBASE + 0x2_a3c1 + i,
            2 => ADVAPI32 + 0x1_8a20 + i,
            _ => KERNEL32 + 0x1_7034 + i,
        })
        .collect();
    stacks.push(&stack(
        3,
        protocol::stacks::StackRecord::TRUNCATED,
        &plumbing,
    ));
    stacks.push(&stack(
        4,
        0,
        &[
            NTDLL + 0x9_d1f4,
            KERNELBASE + 0x2_a3c1,
            RUNDLL_EXT_BASE + 0x1a2b,
            RUNDLL_BASE + 0x3344,
            NTDLL + 0x5_26a1,
        ],
    ));
    s.stacks = Some(stacks);
    let mut explorer = vec![(
        format!(r"{}\explorer.exe", r"\Device\HarddiskVolume2\Windows"),
        EXPLORER_BASE,
        0x40_0000,
        4 * 3600,
    )];
    explorer.extend(system_modules());
    explorer.push((OLDEXT.to_owned(), EXT_BASE, 0x8_0000, 3 * 3600));
    explorer.push((SHELLEXT.to_owned(), EXT_BASE, 0x6_0000, 2 * 3600));
    let mut rundll = vec![(
        format!(r"{SYSTEM32}\rundll32.exe"),
        RUNDLL_BASE,
        0x1_6000,
        900,
    )];
    rundll.extend(system_modules().into_iter().map(|m| (m.0, m.1, m.2, 900)));
    rundll.push((SHELLEXT.to_owned(), RUNDLL_EXT_BASE, 0x6_0000, 890));
    let names: Vec<Vec<Vec<u16>>> = [&explorer, &rundll]
        .iter()
        .map(|ms| ms.iter().map(|m| units(&m.0)).collect())
        .collect();
    s.modules = Some(Listing::modules(
        &ModulesPrefix { dropped: 1 },
        &[
            (
                ModuleProcess {
                    flags: 0,
                    pid: EXPLORER_PID,
                    start_key: 0x100 + EXPLORER_PID,
                    lost_since: 0,
                },
                modules_of(&explorer, &names[0]),
            ),
            (
                ModuleProcess {
                    flags: ModuleProcess::EXITED,
                    pid: RUNDLL_PID,
                    start_key: 0x100 + RUNDLL_PID,
                    lost_since: 0,
                },
                modules_of(&rundll, &names[1]),
            ),
        ],
    ));
    s.version = Some(VersionInfo {
        capabilities: VersionInfo::CAP_STACKS,
        ..version()
    });
    s.stats = Some(stats_with(
        1_475,
        &[
            ("stacks_stored", 4),
            ("modules_tracked", 14),
            ("image_loads_tracked", 1),
            ("stacks_captured", 5),
            ("stacks_empty", 1),
            ("stacks_dropped", 1),
            ("image_loads_seen", 14),
            ("modules_dropped", 1),
        ],
    ));
    s.capture = Some((
        protocol::capture::CaptureScope::Hive,
        user(""),
        NOW - 4 * 3600 * SECOND,
    ));
    s
}

/// [`logoff`] from a driver that has stack capture but was never asked for it.
#[must_use]
pub fn capture_off() -> Server {
    let mut s = logoff();
    s.version = Some(VersionInfo {
        capabilities: VersionInfo::CAP_STACKS,
        ..version()
    });
    s.capture = Some((protocol::capture::CaptureScope::Off, String::new(), 0));
    s.stacks = Some(Listing::new(&protocol::stacks::StacksPrefix::default()));
    s.modules = Some(Listing::new(&protocol::modules::ModulesPrefix::default()));
    s
}
