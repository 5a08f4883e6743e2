//! Round trips and golden bytes for every query message.
#![allow(
    clippy::cast_possible_truncation,
    clippy::missing_const_for_fn,
    clippy::format_collect,
    reason = "test code: small sizes, readability over pedantry"
)]

mod common;

use common::*;
use protocol::history::UnloadHistory;
use protocol::hives::Hives;
use protocol::holders::{HolderKey, HolderRecord, Holders};
use protocol::modules::{Modules, ModulesPrefix};
use protocol::page::{Page, PageInfo, PageKind, PageWriter, empty_page_len};
use protocol::processes::Processes;
use protocol::snapshot::{Snapshot, SnapshotPrefix};
use protocol::stacks::{Stacks, StacksPrefix};
use protocol::stats::Stats;
use protocol::wire::{DecodeError, decode, encode};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn round_trip<K: PageKind>(
    bytes: Vec<u8>,
    prefix: &K::Prefix<'static>,
    records: &[K::Record<'static>],
) where
    K::Prefix<'static>: PartialEq + std::fmt::Debug,
    K::Record<'static>: PartialEq + std::fmt::Debug,
{
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let page = decode::<Page<'_, K>>(bytes).unwrap();
    assert_eq!(page.info.next, INFO.next);
    assert_eq!(page.info.not_recorded, 5);
    assert_eq!(page.info.flags, PageInfo::INCOMPLETE);
    assert_eq!(&page.prefix, prefix);
    let got: Vec<_> = page.records().collect();
    assert_eq!(got.len(), records.len());
    for (a, b) in got.iter().zip(records) {
        assert_eq!(a, b);
    }
    // Re-encoding the decoded page gives the same bytes.
    let mut again = vec![0u8; bytes.len()];
    assert_eq!(encode(&page, &mut again).unwrap(), bytes.len());
    assert_eq!(again, bytes);
    // Every truncation is rejected.
    for n in 0..bytes.len() {
        assert!(
            decode::<Page<'_, K>>(&bytes[..n]).is_err(),
            "accepted {n} bytes"
        );
    }
}

/// Golden fixtures: the exact bytes of each sample. A layout change must update these on
/// purpose (run with `HIVETRACK_PRINT_GOLDEN=1` to print the new values).
const GOLDEN: &[(&str, &str)] = &[
    (
        "holders",
        "4876546b070003000201000000000000110000000000000022000000000000003300000000000000440000000000000055000000000000000200000002000000050000000000000007000000010100000300000000000000020000000100000004005c0052005c005500030043003a00e9000a0000000000000001000000000000000b0000000000000002000000000000000c000000000000000100000002000000040000000000000002010000000000000200000000000000e803000000000000030061002e006500020000000100000001000000010000000800000000000000e8030000000000001900020001000000020000000900000003005c004b0000d8",
    ),
    (
        "hives",
        "4876546b0700040074000000000000001100000000000000220000000000000033000000000000004400000000000000550000000000000001000000020000000500000000000000030000000302000001000000000000000100000001000000630000000000000004005c0052005c0055000000",
    ),
    (
        "processes",
        "4876546b0700050070000000000000001100000000000000220000000000000033000000000000004400000000000000550000000000000001000000020000000500000000000000d2040000000000004d0000000000000042000100000000000300000001000000030061002e006500",
    ),
    (
        "snapshot",
        "4876546b070007008000000000000000110000000000000022000000000000003300000000000000440000000000000055000000000000000100000002000000050000000000000009000000000000000100000000000000020000000000000003000000000000000400000000000000050000000000000003005c004b0000d8",
    ),
    (
        "unload_history",
        "4876546b07000800bc000000000000001100000000000000220000000000000033000000000000004400000000000000550000000000000001000000020000000500000000000000f401000000000000220000c0070000000d0000000000000009000000020001000100000000000000ab8967452301000004005c0052005c0055000a000000000000000b000000000000000c00000000000000030061002e0065001400000000000000150000000000000001000000000000000000",
    ),
    (
        "events",
        "4876546b07001200500100000000000011000000000000002200000000000000330000000000000044000000000000005500000000000000020000000200000005000000000000000300000000000000040000000000000010270000000000003c00000000000000f401000000000000220000c0070000000d0000000000000009000000020001000100000000000000ab8967452301000004005c0052005c0055000a000000000000000b000000000000000c00000000000000030061002e0065001400000000000000150000000000000001000000000000000000f447c32300000000220000c0070000000d0000000000000009000000020018000200000000000000ab8967452301000004005c0052005c0055000a000000000000000b000000000000000c00000000000000030061002e0065001400000000000000150000000000000001000000000000000000",
    ),
    (
        "stacks",
        "4876546b07000f007000000000000000110000000000000022000000000000003300000000000000440000000000000055000000000000000100000002000000050000000000000004000000000000000900000002000100030000000000000078563412f87f000000100000f67f0000",
    ),
    (
        "modules",
        "4876546b070010009800000000000000110000000000000022000000000000003300000000000000440000000000000055000000000000000200000002000000050000000000000002000000000000000100000001000000400000000000000002010000000000004d00000000000000020000000000000000003012f87f00000000100000000000e703000000000000030061002e006500",
    ),
    (
        "capture_request",
        "4876546b07000d002200000000000000020002000000000004005c0052005c005500",
    ),
    (
        "capture_state",
        "4876546b07000e00280000000000000003000000100000004d00000000000000030061002e006500",
    ),
    (
        "stats",
        "4876546b0700060000020000000000003d000000000000000100000000000000040000000000000007000000000000000a000000000000000d0000000000000010000000000000001300000000000000160000000000000019000000000000001c000000000000001f000000000000002200000000000000250000000000000028000000000000002b000000000000002e000000000000003100000000000000340000000000000037000000000000003a000000000000003d0000000000000040000000000000004300000000000000460000000000000049000000000000004c000000000000004f000000000000005200000000000000550000000000000058000000000000005b000000000000005e000000000000006100000000000000640000000000000067000000000000006a000000000000006d0000000000000070000000000000007300000000000000760000000000000079000000000000007c000000000000007f000000000000008200000000000000850000000000000088000000000000008b000000000000008e000000000000009100000000000000940000000000000097000000000000009a000000000000009d00000000000000a000000000000000a300000000000000a600000000000000a900000000000000ac00000000000000af00000000000000b200000000000000b500000000000000",
    ),
    (
        "request",
        "4876546b070002004a0000000000000001000000000000000100000000000000020000000000000003000000000000000400000000000000050000000000000004005c0052005c005500",
    ),
    (
        "wait_request",
        "4876546b070009002200000000000000307500000000000004005c0052005c005500",
    ),
    (
        "wait_answer",
        "4876546b07000a0048000000000000000100000003000000d20400000000000001000000000000000200000000000000030000000000000004000000000000000500000000000000",
    ),
    (
        "identify_request",
        "4876546b07000b002800000000000000020000000000000024000000000000000400010000000000",
    ),
    (
        "version",
        "4876546b07000100380000000000000001000200030008006731613262336334000000000000000000000000000000000000000000000000",
    ),
    (
        "events_request",
        "4876546b07001100200000000000000029000000000000003075000007000000",
    ),
    (
        "identify_answer",
        "4876546b07000c00380000000000000002000000000000000100000000000000010000000500000002000000000000000000000000000000",
    ),
];

#[test]
fn golden_bytes() {
    let print = std::env::var_os("HIVETRACK_PRINT_GOLDEN").is_some();
    for (name, bytes) in all_samples() {
        if print {
            println!("    (\"{name}\", \"{}\"),", hex(&bytes));
            continue;
        }
        let want = GOLDEN.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(hex(&bytes), want, "{name} changed");
    }
}

#[test]
fn holders_page_layout_by_hand() {
    let b = page::<Holders>(&holders_prefix(), &holder_records(), &INFO);
    assert_eq!(&b[0..4], b"HvTk");
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 3, "kind HoldersPage");
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        0x11,
        "cursor word 0"
    );
    assert_eq!(
        u32::from_le_bytes(b[56..60].try_into().unwrap()),
        2,
        "record count"
    );
    assert_eq!(u16::from_le_bytes([b[60], b[61]]), PageInfo::INCOMPLETE);
    assert_eq!(u64::from_le_bytes(b[64..72].try_into().unwrap()), 5);
    assert_eq!(
        u32::from_le_bytes(b[72..76].try_into().unwrap()),
        7,
        "hive id"
    );
    assert_eq!((b[76], b[77]), (1, 1), "loaded, regular");
    // mount at 72 + 24
    assert_eq!(u16::from_le_bytes([b[96], b[97]]), 4);
}

#[test]
fn every_page_round_trips() {
    round_trip::<Holders>(
        page::<Holders>(&holders_prefix(), &holder_records(), &INFO),
        &holders_prefix(),
        &holder_records(),
    );
    round_trip::<Hives>(
        page::<Hives>(&protocol::page::NoPrefix, &hive_records(), &INFO),
        &protocol::page::NoPrefix,
        &hive_records(),
    );
    round_trip::<Processes>(
        page::<Processes>(&protocol::page::NoPrefix, &process_records(), &INFO),
        &protocol::page::NoPrefix,
        &process_records(),
    );
    let sp = SnapshotPrefix { taken_at: 9 };
    round_trip::<Snapshot>(
        page::<Snapshot>(&sp, &snapshot_records(), &INFO),
        &sp,
        &snapshot_records(),
    );
    round_trip::<Stacks>(
        page::<Stacks>(&StacksPrefix { dropped: 4 }, &stack_records(), &INFO),
        &StacksPrefix { dropped: 4 },
        &stack_records(),
    );
    round_trip::<Modules>(
        page::<Modules>(&ModulesPrefix { dropped: 2 }, &module_records(), &INFO),
        &ModulesPrefix { dropped: 2 },
        &module_records(),
    );
    round_trip::<UnloadHistory>(
        page::<UnloadHistory>(&protocol::page::NoPrefix, &unload_records(), &INFO),
        &protocol::page::NoPrefix,
        &unload_records(),
    );
}

#[test]
fn stats_round_trip_and_names() {
    let s = stats();
    let mut buf = vec![0u8; 1024];
    let n = encode(&s, &mut buf).unwrap();
    assert_eq!(decode::<Stats>(&buf[..n]).unwrap(), s);
    assert_eq!(s.fields().count(), Stats::FIELD_COUNT);
    let loss: u64 = s
        .fields()
        .filter(|(name, _)| Stats::LOSS_NAMES.contains(name))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(s.not_recorded(), loss);
    let mut names = Stats::NAMES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Stats::FIELD_COUNT, "names are unique");
    let mut bad = buf[..n].to_vec();
    bad[16] ^= 1;
    assert_eq!(
        decode::<Stats>(&bad),
        Err(DecodeError::InvalidField {
            field: "field count"
        })
    );
}

#[test]
fn writer_stops_cleanly_when_full_and_resumes() {
    let recs = holder_records();
    let empty = empty_page_len::<Holders>(&holders_prefix());
    // Room for the process record only.
    let mut buf = vec![0xEEu8; empty + recs[0].encoded_len_for_test() + 10];
    let mut w = PageWriter::<Holders>::new(&mut buf, &holders_prefix(), 0).unwrap();
    assert!(w.push(&recs[0]));
    assert!(!w.push(&recs[1]), "key record must not fit");
    let n = w.finish(&PageInfo::default());
    assert_eq!(n, empty + recs[0].encoded_len_for_test());
    assert!(
        buf[n..].iter().all(|&b| b == 0xEE),
        "nothing written past the page"
    );
    let p = decode::<Page<'_, Holders>>(&buf[..n]).unwrap();
    assert_eq!(p.len(), 1);
    assert!(!p.info.done());
    // Too small for even an empty page.
    let mut tiny = vec![0u8; empty - 1];
    assert!(PageWriter::<Holders>::new(&mut tiny, &holders_prefix(), 0).is_err());
    // max_records limits the page.
    let mut buf = vec![0u8; 4096];
    let mut w = PageWriter::<Holders>::new(&mut buf, &holders_prefix(), 1).unwrap();
    assert!(w.push(&recs[0]));
    assert!(w.at_limit());
    assert!(!w.push(&recs[1]));
}

#[test]
fn semantic_checks() {
    // A key before any process is rejected.
    let key_first = vec![holder_records()[1]];
    let b = page::<Holders>(&holders_prefix(), &key_first, &INFO);
    assert_eq!(
        decode::<Page<'_, Holders>>(&b).err(),
        Some(DecodeError::InvalidField {
            field: "first record"
        })
    );
    // Unknown key flags are rejected.
    let mut recs = holder_records();
    if let HolderRecord::Key(k) = &mut recs[1] {
        k.flags = 0x80;
    }
    let b = page::<Holders>(&holders_prefix(), &recs, &INFO);
    assert!(decode::<Page<'_, Holders>>(&b).is_err());
    let _ = HolderKey::KNOWN_FLAGS;
    // INCOMPLETE must agree with not_recorded.
    let mut b = page::<Hives>(&protocol::page::NoPrefix, &hive_records(), &INFO);
    b[60] = 0;
    assert!(decode::<Page<'_, Hives>>(&b).is_err());
    // Padding must be zero.
    let mut b = page::<Hives>(&protocol::page::NoPrefix, &hive_records(), &INFO);
    b[62] = 1;
    assert_eq!(
        decode::<Page<'_, Hives>>(&b).err(),
        Some(DecodeError::NonZeroPadding { offset: 62 })
    );
}

trait LenForTest {
    fn encoded_len_for_test(&self) -> usize;
}
impl LenForTest for HolderRecord<'_> {
    fn encoded_len_for_test(&self) -> usize {
        protocol::page::Codec::encoded_len(self)
    }
}

/// Review 17, finding: the events prefix grew from 24 to 32 bytes (`held_after_seconds`)
/// while `PROTOCOL_VERSION` stayed 1 ("Bumped on any incompatible layout change; the CLI
/// refuses to talk to a driver that answers with another version"). The service's doc and
/// `--still-held-after` help say an older driver shows as "the prefix says 0"; instead an
/// events page written by the driver before this change (24-byte prefix) is neither read as
/// delay 0 nor refused as another protocol version: its first record's bytes are taken as
/// the delay and the page fails as malformed.
#[test]
fn review17_an_events_page_of_the_driver_before_held_after_is_read_as_delay_0_or_refused_as_another_version()
 {
    use protocol::events::{Events, EventsPrefix};
    let new = page::<Events>(
        &EventsPrefix {
            missed: 0,
            tracking_since: 4,
            key_alarm_threshold: 10_000,
            held_after_seconds: 0,
        },
        &unload_records(),
        &INFO,
    );
    // The same page as 7076580's driver wrote it: protocol version 1, the prefix's first
    // three fields only.
    let prefix_end = 56 + 24;
    let mut old = new[..prefix_end].to_vec();
    old.extend_from_slice(&new[prefix_end + 8..]);
    let size = u32::try_from(old.len()).unwrap();
    old[8..12].copy_from_slice(&size.to_le_bytes());
    old[4..6].copy_from_slice(&1u16.to_le_bytes());
    match decode::<Page<'_, Events>>(&old) {
        Ok(p) => {
            assert_eq!(p.prefix.held_after_seconds, 0, "{:?}", p.prefix);
            assert_eq!(p.records().count(), 1);
        }
        Err(DecodeError::UnsupportedVersion { .. }) => {}
        Err(e) => {
            panic!("an older driver's events page is neither delay 0 nor another version: {e}")
        }
    }
}
