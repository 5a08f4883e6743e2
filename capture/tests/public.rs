//! A public capture: procmon-parser's `CompressedLogFileUTC64Registry` pair (a registry
//! capture of a Windows 10 x64 machine saved both as PML and as its CSV export; MIT, see
//! tests/fixtures/procmon-parser/). Our two readers must agree row by row on all 28,240 rows,
//! and the analysis must be the one checked by hand (README next to the fixtures).

use std::io::{Cursor, Read};
use std::path::Path;

use capture::replay::{Options, Replay, replay};
use capture::{Event, Op, Reader, csv::CsvReader, pml::PmlReader};

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
