//! Sample messages shared by the page tests and the decode fuzzer.
#![allow(
    dead_code,
    missing_docs,
    reason = "test fixtures; each test binary uses a different subset"
)]

use protocol::cursor::Cursor;
use protocol::history::{UnloadHistory, UnloadHolder, UnloadHolders, UnloadRecord};
use protocol::hives::{HiveRecord, Hives};
use protocol::holders::{
    HiveKind, HiveState, HolderKey, HolderProcess, HolderRecord, Holders, HoldersPrefix,
};
use protocol::modules::{Module, ModuleProcess, ModuleRecord, Modules, ModulesPrefix};
use protocol::page::{NoPrefix, PageInfo, PageKind, PageWriter};
use protocol::processes::{ProcessRecord, Processes};
use protocol::snapshot::{Snapshot, SnapshotPrefix, SnapshotRecord};
use protocol::stacks::{StackRecord, Stacks, StacksPrefix};
use protocol::stats::Stats;
use protocol::text::Text;

pub const MOUNT: &[u16] = &[b'\\' as u16, b'R' as u16, b'\\' as u16, b'U' as u16];
pub const FILE: &[u16] = &[b'C' as u16, b':' as u16, 0x00E9];
pub const IMAGE: &[u16] = &[b'a' as u16, b'.' as u16, b'e' as u16];
pub const NAME: &[u16] = &[b'\\' as u16, b'K' as u16, 0xD800]; // unpaired surrogate kept

pub const INFO: PageInfo = PageInfo {
    next: Cursor([0x11, 0x22, 0x33, 0x44, 0x55]),
    flags: 0,
    not_recorded: 5,
};

pub fn holders_prefix() -> HoldersPrefix<'static> {
    HoldersPrefix {
        hive_id: 7,
        state: HiveState::Loaded,
        kind: HiveKind::Regular,
        open_keys: 3,
        holders: 2,
        flags: HoldersPrefix::FILE_TRUNCATED,
        mount: Text::Units(MOUNT),
        file: Text::Units(FILE),
        completeness: protocol::completeness::Completeness {
            tracking_since: 0x0A,
            hive_lost: 1,
            hive_lost_since: 0x0B,
            global_lost: 2,
            global_lost_since: 0x0C,
        },
    }
}

pub fn holder_records() -> Vec<HolderRecord<'static>> {
    vec![
        HolderRecord::Process(HolderProcess {
            flags: HolderProcess::CONTINUED,
            pid: 4,
            start_key: 0x0102,
            open_keys: 2,
            oldest_open: 1000,
            image: Text::Units(IMAGE),
        }),
        HolderRecord::Key(HolderKey {
            flags: HolderKey::NAME_TRUNCATED,
            id: 0x1_0000_0001,
            thread: 8,
            open_time: 1000,
            access: 0x0002_0019,
            handle_opens: 1,
            handle_closes: 2,
            stack: 9,
            name: Text::Units(NAME),
        }),
    ]
}

pub fn stack_records() -> Vec<StackRecord> {
    let mut frames = [0u64; protocol::capture::MAX_FRAMES];
    frames[0] = 0x7FF8_1234_5678;
    frames[1] = 0x7FF6_0000_1000;
    vec![StackRecord {
        id: 9,
        flags: StackRecord::TRUNCATED,
        uses: 3,
        len: 2,
        frames,
    }]
}

pub fn module_records() -> Vec<ModuleRecord<'static>> {
    vec![
        ModuleRecord::Process(ModuleProcess {
            flags: ModuleProcess::EXITED,
            pid: 0x40,
            start_key: 0x0102,
            lost_since: 77,
        }),
        ModuleRecord::Module(Module {
            flags: 0,
            base: 0x7FF8_1230_0000,
            size: 0x10_0000,
            load_time: 999,
            name: Text::Units(IMAGE),
        }),
    ]
}

pub fn hive_records() -> Vec<HiveRecord<'static>> {
    vec![HiveRecord {
        id: 3,
        state: HiveState::Unloaded,
        kind: HiveKind::App,
        open_keys: 1,
        holders: 1,
        flags: HiveRecord::FILE_TRUNCATED,
        loaded_time: 99,
        mount: Text::Units(MOUNT),
        file: Text::EMPTY,
    }]
}

pub fn process_records() -> Vec<ProcessRecord<'static>> {
    vec![ProcessRecord {
        pid: 1234,
        start_key: 77,
        open_keys: 65_602,
        hives: 3,
        flags: ProcessRecord::EXITED,
        image: Text::Units(IMAGE),
    }]
}

pub fn snapshot_records() -> Vec<SnapshotRecord<'static>> {
    vec![SnapshotRecord {
        pid: 1,
        start_key: 2,
        id: 3,
        open_time: 4,
        hive_id: 5,
        flags: 0,
        name: Text::Units(NAME),
    }]
}

pub static UNLOAD_HOLDERS: [UnloadHolder<'static>; 2] = [
    UnloadHolder {
        pid: 10,
        start_key: 11,
        open_keys: 12,
        image: Text::Units(IMAGE),
    },
    UnloadHolder {
        pid: 20,
        start_key: 21,
        open_keys: 1,
        image: Text::EMPTY,
    },
];

pub fn unload_records() -> Vec<UnloadRecord<'static>> {
    vec![UnloadRecord {
        time: 500,
        outcome: 0xC000_0022,
        hive_id: 7,
        open_keys: 13,
        holders_total: 9,
        flags: UnloadRecord::HOLDERS_TRUNCATED,
        sequence: 1,
        interrupt_time: 0x0123_4567_89ab,
        mount: Text::Units(MOUNT),
        holders: UnloadHolders::Slice(&UNLOAD_HOLDERS),
    }]
}

/// An events page's records: an unload attempt and a held-after look at its hive.
pub fn event_records() -> Vec<UnloadRecord<'static>> {
    let mut held = unload_records()[0];
    held.flags = UnloadRecord::HELD_AFTER | UnloadRecord::HOLDERS_UNSEEN;
    held.sequence = 2;
    held.time = 600_000_500;
    vec![unload_records()[0], held]
}

pub fn stats() -> Stats {
    let mut v = [0u64; Stats::FIELD_COUNT];
    for (i, x) in v.iter_mut().enumerate() {
        *x = i as u64 * 3 + 1;
    }
    Stats::from_values(v)
}

/// Writes a page of `records` with `prefix` and returns its bytes.
pub fn page<K: PageKind>(
    prefix: &K::Prefix<'_>,
    records: &[K::Record<'_>],
    info: &PageInfo,
) -> Vec<u8> {
    let mut buf = vec![0xA5u8; 4096];
    let mut w = PageWriter::<K>::new(&mut buf, prefix, 0).unwrap();
    for r in records {
        assert!(w.push(r));
    }
    let n = w.finish(info);
    buf.truncate(n);
    buf
}

/// Every sample message, with its name.
#[allow(clippy::too_many_lines, reason = "one sample per message kind")]
pub fn all_samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut stats_buf = vec![0u8; 1024];
    let n = protocol::wire::encode(&stats(), &mut stats_buf).unwrap();
    stats_buf.truncate(n);
    let req = protocol::request::QueryRequest {
        query: protocol::request::QueryKind::Holders,
        flags: 0,
        max_records: 0,
        cursor: Cursor([1, 2, 3, 4, 5]),
        hive: Text::Units(MOUNT),
    };
    let mut req_buf = vec![0u8; 256];
    let n = protocol::wire::encode(&req, &mut req_buf).unwrap();
    req_buf.truncate(n);
    vec![
        (
            "holders",
            page::<Holders>(&holders_prefix(), &holder_records(), &INFO),
        ),
        ("hives", page::<Hives>(&NoPrefix, &hive_records(), &INFO)),
        (
            "processes",
            page::<Processes>(&NoPrefix, &process_records(), &INFO),
        ),
        (
            "snapshot",
            page::<Snapshot>(&SnapshotPrefix { taken_at: 9 }, &snapshot_records(), &INFO),
        ),
        (
            "unload_history",
            page::<UnloadHistory>(&NoPrefix, &unload_records(), &INFO),
        ),
        (
            "events",
            page::<protocol::events::Events>(
                &protocol::events::EventsPrefix {
                    missed: 3,
                    tracking_since: 4,
                    key_alarm_threshold: 10_000,
                    held_after_seconds: 60,
                },
                &event_records(),
                &INFO,
            ),
        ),
        (
            "stacks",
            page::<Stacks>(&StacksPrefix { dropped: 4 }, &stack_records(), &INFO),
        ),
        (
            "modules",
            page::<Modules>(&ModulesPrefix { dropped: 2 }, &module_records(), &INFO),
        ),
        (
            "capture_request",
            bytes_of(&protocol::capture::CaptureRequest {
                op: protocol::capture::CaptureOp::Set,
                scope: protocol::capture::CaptureScope::Hive,
                text: Text::Units(MOUNT),
            }),
        ),
        (
            "capture_state",
            bytes_of(&protocol::capture::CaptureState {
                scope: protocol::capture::CaptureScope::Image,
                max_frames: 16,
                since: 77,
                text: Text::Units(IMAGE),
            }),
        ),
        (
            "version",
            bytes_of(&protocol::version::VersionInfo {
                major: 1,
                minor: 2,
                patch: 3,
                capabilities: protocol::version::VersionInfo::CAP_EVENTS,
                build_id: protocol::version::BuildId::new("g1a2b3c4"),
            }),
        ),
        ("stats", stats_buf),
        ("request", req_buf),
        (
            "wait_request",
            bytes_of(&protocol::wait::WaitFreeRequest {
                timeout_ms: 30_000,
                hive: Text::Units(MOUNT),
            }),
        ),
        (
            "wait_answer",
            bytes_of(&protocol::wait::WaitFreeAnswer {
                outcome: protocol::wait::WaitOutcome::Free,
                hive_id: 3,
                waited: 1234,
                completeness: protocol::completeness::Completeness {
                    tracking_since: 1,
                    hive_lost: 2,
                    hive_lost_since: 3,
                    global_lost: 4,
                    global_lost_since: 5,
                },
            }),
        ),
        (
            "events_request",
            bytes_of(&protocol::events::EventsRequest {
                after: 41,
                timeout_ms: 30_000,
                max_records: 7,
            }),
        ),
        (
            "identify_request",
            bytes_of(&protocol::identify::IdentifyRequest::new(&[0x24, 0x1_0004]).unwrap()),
        ),
        (
            "identify_answer",
            bytes_of(
                &protocol::identify::IdentifyAnswer::new(&[
                    protocol::identify::Identified {
                        outcome: protocol::identify::IdentifyOutcome::Tracked,
                        id: 0x5_0000_0001,
                    },
                    protocol::identify::Identified {
                        outcome: protocol::identify::IdentifyOutcome::NotTracked,
                        id: 0,
                    },
                ])
                .unwrap(),
            ),
        ),
    ]
}

/// The encoded bytes of a message.
fn bytes_of<'a, M: protocol::wire::Message<'a>>(m: &M) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = protocol::wire::encode(m, &mut buf).unwrap();
    buf.truncate(n);
    buf
}
