//! A public capture: procmon-parser's `CompressedLogFileUTC64Registry` pair (a registry
//! capture of a Windows 10 x64 machine saved both as PML and as its CSV export; MIT, see
//! tests/fixtures/procmon-parser/). Our two readers must agree row by row on all 28,240 rows,
//! and the analysis must be the one checked by hand (README next to the fixtures).
//!
//! procmon-parser's `CompressedLogfileTests32bitUTC` (Windows 7 32-bit, PML and its CSV
//! export) and `CompressedLogfileTests64bitUTC` (Windows 10 64-bit, CSV export): real
//! captures with the operations the replay rests on (`RegOpenKey`, `RegCloseKey`, `Process
//! Start`, `Process Exit`, a handle rundown after an exit), which `Registry64` lacks, and the only 32-bit PML the tests read. MIT, see tests/fixtures/procmon-parser/
//! and the README there for provenance and for how every expected number was counted
//! (Python's csv module over the exports, independently of our readers). Audit 21d, M1.

use std::io::{Cursor, Read};
use std::path::Path;

use capture::paths::HkcuSids;
use capture::replay::{Options, Replay, replay};
use capture::{Analysis, Event, Op, Reader, csv::CsvReader, pml::PmlReader};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/procmon-parser")
        .join(name);
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn pml_and_its_csv_export_agree_row_by_row() {
    let pml = fixture("Registry64.pml.zlib");
    let csv = fixture("Registry64.csv.zlib");
    let mut p = PmlReader::new(Cursor::new(&pml[..]), Cursor::new(&pml[..])).unwrap();
    let mut c = CsvReader::new(&csv[..]).unwrap();
    let (mut a, mut b) = (Event::default(), Event::default());
    let mut rows = 0;
    let mut loads = 0;
    let mut paths_compared = 0;
    while p.next_event(&mut a).unwrap() {
        assert!(
            c.next_event(&mut b).unwrap(),
            "the CSV ends early at row {}",
            a.row
        );
        rows += 1;
        assert_eq!(
            (a.row, a.pid, &a.operation),
            (b.row, b.pid, &b.operation),
            "row {}",
            a.row
        );
        assert_eq!(
            a.time, b.time,
            "row {} (the capture machine ran on UTC)",
            a.row
        );
        assert_eq!(a.image, b.image, "row {}", a.row);
        if a.op != Op::Other {
            assert_eq!(a.path, b.path, "row {}", a.row);
            assert_eq!(
                a.success(),
                b.success(),
                "row {}: {} vs {}",
                a.row,
                a.result,
                b.result
            );
            paths_compared += 1;
        }
        if a.op == Op::LoadKey {
            assert_eq!(a.hive_file, b.hive_file, "row {}", a.row);
            assert!(!a.hive_file.is_empty());
            loads += 1;
        }
    }
    assert!(!c.next_event(&mut b).unwrap(), "the CSV has more rows");
    assert_eq!((rows, loads, paths_compared), (28_240, 22, 22 + 392 + 12));
}

#[test]
fn the_analysis_refuses_to_name_holders_and_counts_what_it_skipped() {
    let pml = fixture("Registry64.pml.zlib");
    let mut p = PmlReader::new(Cursor::new(&pml[..]), Cursor::new(&pml[..])).unwrap();
    let mut r = Replay::new(Options::default());
    replay(&mut p, &mut r).unwrap();
    let a = r.finish("Registry64.pml", "pml");
    assert_eq!((a.capture.rows, a.capture.total_rows), (28_240, 28_240));
    // The capture was filtered: 392 RegCreateKey rows, no RegOpenKey or RegCloseKey at all.
    assert_eq!(a.unknowns.close_rows, 0);
    assert!(!a.holders_known);
    assert!(a.open.is_empty() && a.exits.is_empty() && a.unload_attempts.is_empty());
    assert_eq!(a.unknowns.failed_opens, 28);
    let skipped: Vec<(&str, u64)> = a
        .unknowns
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        skipped,
        [
            ("RegDeleteKey", 12),
            ("RegDeleteValue", 13),
            ("RegEnumKey", 2888),
            ("RegEnumValue", 1546),
            ("RegQueryKey", 7641),
            ("RegQueryKeySecurity", 77),
            ("RegQueryMultipleValueKey", 5),
            ("RegQueryValue", 14_863),
            ("RegSetInfoKey", 693),
            ("RegSetValue", 88),
        ]
    );
    // The tracker saw the 22 hives loaded (17 application hives `\REGISTRY\A\{…}`, 5
    // container hives `\Registry\WC\Silo…`) and holds the 364 created keys.
    assert_eq!(a.tracker.objects_tracked, 364);
    // Its holders answer for every hive (the driver's hive resolution) names the same
    // processes holding the same 364 key objects as the report.
    assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
    assert!(a.tracker.hives_tracked >= 22);
}

fn analyze(reader: &mut dyn Reader, opts: Options) -> Analysis {
    let mut r = Replay::new(opts);
    replay(reader, &mut r).unwrap();
    r.finish("public", reader.format())
}

/// Our PML reader on a 32-bit capture (4-byte pointers in the process table, the modules
/// and the stacks) agrees with Procmon's own CSV export of it on every row: pid, time, image,
/// user, and for the rows the replay acts on the operation, path and success. The PML reader
/// names file-system and network rows by their class (audit 21d, L1): 5,123 + 495 rows.
#[test]
fn a_32bit_pml_and_its_csv_export_agree_row_by_row() {
    let pml = fixture("Tests32.pml.zlib");
    let csv = fixture("Tests32.csv.zlib");
    let mut p = PmlReader::new(Cursor::new(&pml[..]), Cursor::new(&pml[..])).unwrap();
    assert!(!p.header().is_64bit);
    let mut c = CsvReader::new(&csv[..]).unwrap();
    let (mut a, mut b) = (Event::default(), Event::default());
    let (mut rows, mut by_class, mut acted_on) = (0, 0, 0);
    while p.next_event(&mut a).unwrap() {
        assert!(c.next_event(&mut b).unwrap(), "the CSV ends at {}", a.row);
        rows += 1;
        let row = a.row;
        assert_eq!((a.row, a.pid, a.time), (b.row, b.pid, b.time), "row {row}");
        assert_eq!((&a.image, &a.user), (&b.image, &b.user), "row {row}");
        assert_eq!(a.op, b.op, "row {row}");
        if matches!(a.operation.as_str(), "File System" | "Network") {
            by_class += 1;
        } else {
            assert_eq!(a.operation, b.operation, "row {row}");
        }
        if a.op != Op::Other {
            acted_on += 1;
            assert_eq!(a.path, b.path, "row {row}");
            assert_eq!(
                a.success(),
                b.success(),
                "row {row}: {} vs {}",
                a.result,
                b.result
            );
        }
    }
    assert!(!c.next_event(&mut b).unwrap(), "the CSV has more rows");
    // 10,643 RegOpenKey + 64 RegCreateKey + 4,206 RegCloseKey + 2 Process Start + 6
    // Process Exit + 1 RegDeleteKey.
    assert_eq!((rows, by_class), (32_930, 5_123 + 495));
    assert_eq!(acted_on, 10_643 + 64 + 4_206 + 2 + 6 + 1);
}

/// The replay of the 32-bit capture, from the PML and from the CSV: the same answers.
#[test]
fn the_32bit_capture_replays_as_counted_by_hand() {
    let pml = fixture("Tests32.pml.zlib");
    let csv = fixture("Tests32.csv.zlib");
    let from_pml = analyze(
        &mut PmlReader::new(Cursor::new(&pml[..]), Cursor::new(&pml[..])).unwrap(),
        Options::default(),
    );
    let from_csv = analyze(&mut CsvReader::new(&csv[..]).unwrap(), Options::default());
    for a in [&from_pml, &from_csv] {
        // 10,643 - 4,085 RegOpenKey and 64 - 49 RegCreateKey not SUCCESS (REPARSE, NAME NOT
        // FOUND, ...).
        assert_eq!(a.unknowns.failed_opens, 6_558 + 15);
        // Keys opened before the capture: Explorer's (pid 1320) first at row 1617, HKCR
        // undone to the machine classes.
        assert_eq!(a.unknowns.closes_without_open, 77);
        assert_eq!(
            a.unknowns.closes_without_open_sample[0],
            r"\REGISTRY\MACHINE\SOFTWARE\Classes\exefile\shell\open"
        );
        // Exits with keys still open: NOTEPAD.EXE 2984 (8 keys, all closed by its rundown
        // rows after the exit) and DllHost.exe 1860 (3 keys).
        let exits: Vec<(u64, u32, u64)> = a
            .exits
            .iter()
            .map(|e| (e.row, e.holder.pid, e.holder.open_keys))
            .collect();
        assert_eq!(exits, [(21_216, 2984, 8), (32_822, 1860, 3)]);
        assert!(a.exits[0].holder.image.ends_with("NOTEPAD.EXE"));
        assert_eq!(a.open.iter().map(|h| h.open_keys).sum::<u64>(), 5);
        assert!(!a.complete);
        assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
    }
    // Only the PML has stacks: every key of NOTEPAD's exit has one.
    assert!(
        from_pml.exits[0]
            .holder
            .keys
            .iter()
            .all(|k| !k.stack.is_empty())
    );
    assert!(
        from_csv.exits[0]
            .holder
            .keys
            .iter()
            .all(|k| k.stack.is_empty())
    );
}

/// The 64-bit export: opens, closes and exits as counted by hand, and the rows that show
/// whose hive `HKCU` is (audit 21d, H1): SearchIndexer.exe, running as SYSTEM, reads
/// `HKCU\Volatile Environment` (the interactive user's: `USERNAME`, `USERPROFILE`), so with
/// `--hkcu-sid` its `HKCU` rows are placed in that SID's hive, never S-1-5-18's.
#[test]
fn the_64bit_export_replays_as_counted_by_hand() {
    let csv = fixture("Tests64.csv.zlib");
    let mut c = CsvReader::new(&csv[..]).unwrap();
    let mut ev = Event::default();
    let mut seen = Vec::new();
    while c.next_event(&mut ev).unwrap() {
        if (49_725..=49_730).contains(&ev.row) {
            seen.push((
                ev.row,
                ev.pid,
                ev.user.to_string(),
                ev.operation.clone(),
                ev.path.clone(),
            ));
        }
    }
    let system = r"NT AUTHORITY\SYSTEM".to_owned();
    let volatile = r"HKCU\Volatile Environment".to_owned();
    assert_eq!(
        seen[0],
        (
            49_725,
            3260,
            system.clone(),
            "RegOpenKey".into(),
            volatile.clone()
        )
    );
    assert_eq!(
        seen[4],
        (
            49_729,
            3260,
            system.clone(),
            "RegEnumValue".into(),
            volatile
        )
    );

    let a = analyze(&mut CsvReader::new(&csv[..]).unwrap(), Options::default());
    assert_eq!(a.capture.total_rows, 53_214);
    assert_eq!(a.unknowns.failed_opens, (14_177 - 4_827) + (79 - 72));
    // All ten by MicrosoftEdgeCP.exe 1600, which started before the capture.
    assert_eq!(a.unknowns.closes_without_open, 10);
    let exits: Vec<(u64, u32, u64)> = a
        .exits
        .iter()
        .map(|e| (e.row, e.holder.pid, e.holder.open_keys))
        .collect();
    assert_eq!(exits, [(19_327, 3232, 17), (37_734, 2632, 17)]);
    assert_eq!(a.open.iter().map(|h| h.open_keys).sum::<u64>(), 47);
    assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
    // Without the SID, SYSTEM's HKCU rows are not placed (not in S-1-5-18) ...
    assert_eq!(a.capture.hkcu_users[&system], "not given");
    // ... with it, they are that account's.
    let sid = "S-1-5-21-1-2-3-1001";
    let mut hkcu = HkcuSids::default();
    hkcu.add(sid).unwrap();
    let a = analyze(
        &mut CsvReader::new(&csv[..]).unwrap(),
        Options {
            hkcu,
            ..Options::default()
        },
    );
    assert_eq!(a.capture.hkcu_users[&system], sid);
    assert_eq!(a.unknowns.hkcu_rows_without_sid, 0);
}
