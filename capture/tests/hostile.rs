//! Input the analysis must survive: any text in a row or an argument (no panic), and size
//! fields a damaged or hostile PML sets to anything (an error, not a 4 GiB allocation).
//! Found in audit 21d (H3, H4).
//!
//! This test binary's allocator refuses any single allocation above [`LIMIT`]: a reader
//! that sizes a buffer by a field of the file before checking it against the file's length
//! aborts the binary here (as it did under `ulimit -v` in the audit) instead of passing on a
//! machine with memory to spare.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;

use capture::csv::CsvReader;
use capture::paths::{HkcuSids, kernel_path};
use capture::pml::PmlReader;
use capture::replay::{Options, Replay, replay};
use capture::{CaptureError, Reader};

/// The largest allocation this binary grants (the fixtures need far less).
const LIMIT: usize = 256 << 20;

struct Capped;

// SAFETY: forwards to the system allocator; refusing (null) is allowed by `GlobalAlloc`.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's block and layout, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

const HEAD: &str = "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\"\r\n";

fn analyze_csv(text: &str) -> capture::Analysis {
    let mut c = CsvReader::new(text.as_bytes()).unwrap();
    let mut r = Replay::new(Options::default());
    replay(&mut c, &mut r).unwrap();
    r.finish("x.csv", "csv")
}

/// `reg load HKU\テスト …` / `reg unload HKU\テスト` (a user's hive loaded under the user's
/// name, to edit it offline): the unload's check for unplaced `HKCU` keys sliced the mount
/// name at byte 4, inside `ス`, and the analysis panicked.
#[test]
fn an_unload_of_a_hive_named_in_japanese_is_analysed() {
    let text = format!(
        "{HEAD}\"1:00:00.0000000 AM\",\"reg.exe\",\"7\",\"RegLoadKey\",\"HKU\\テスト\",\"SUCCESS\",\"Hive Path: C:\\Users\\テスト\\NTUSER.DAT\"\r\n\
\"1:00:01.0000000 AM\",\"reg.exe\",\"7\",\"RegOpenKey\",\"HKU\\テスト\\Software\",\"SUCCESS\",\"\"\r\n\
\"1:00:02.0000000 AM\",\"reg.exe\",\"7\",\"RegCloseKey\",\"HKU\\テスト\\Software\",\"SUCCESS\",\"\"\r\n\
\"1:00:03.0000000 AM\",\"reg.exe\",\"7\",\"RegUnloadKey\",\"HKU\\テスト\",\"SUCCESS\",\"\"\r\n"
    );
    let a = analyze_csv(&text);
    assert_eq!(a.unload_attempts.len(), 1);
    let u = &a.unload_attempts[0];
    assert_eq!(u.hive, r"\REGISTRY\USER\テスト");
    assert!(u.succeeded && u.holders.is_empty(), "{u:?}");
}

/// A `--hkcu-sid` argument is any text: one with a character across byte 4 is refused with a
/// message, not a panic.
#[test]
fn a_hkcu_sid_argument_with_any_text_is_refused_not_a_panic() {
    for arg in ["ab€x", "S-1€", "S-1-", r"CONTOSO\テスト=テスト", "S-1-5-€"] {
        assert!(HkcuSids::default().add(arg).is_err(), "{arg}");
    }
}

/// A registry row whose path starts with `\` and has a character across byte 9 is not a
/// registry path: skipped, not a panic.
#[test]
fn a_path_with_a_character_across_byte_9_is_skipped() {
    assert_eq!(kernel_path("\\aĀĀĀĀ", None), None);
    let text = format!(
        "{HEAD}\"1:00:00.0000000 AM\",\"a.exe\",\"7\",\"RegOpenKey\",\"\\aĀĀĀĀ\",\"SUCCESS\",\"\"\r\n"
    );
    let a = analyze_csv(&text);
    assert_eq!(a.unknowns.skipped.get("RegOpenKey"), Some(&1));
}

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/logoff.pml"
    ))
    .unwrap()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> usize {
    usize::try_from(u64::from_le_bytes(b[at..at + 8].try_into().unwrap())).unwrap()
}

/// Every row of `pml`, or the reader's error.
fn read_all(pml: &[u8]) -> Result<u64, CaptureError> {
    let mut p = PmlReader::new(Cursor::new(pml), Cursor::new(pml))?;
    let mut ev = capture::Event::default();
    let mut rows = 0;
    while p.next_event(&mut ev)? {
        rows += 1;
    }
    Ok(rows)
}

fn format_error(r: Result<u64, CaptureError>) -> String {
    match r {
        Err(CaptureError::Format(m)) => m,
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// An event's detail size of `0xFFFFFFFF` (header offsets from procmon-parser's
/// `docs/PML Format.md`: event offsets array at 0x248, detail size at 0x2C in the event):
/// an error naming the row, before any buffer of that size.
#[test]
fn a_detail_size_past_the_file_is_an_error() {
    let good = fixture();
    let rows = read_all(&good).unwrap();
    assert!(rows > 0);
    let offsets_at = u64_at(&good, 0x248);
    let events = u32_at(&good, 0x234) as usize;
    let mut bad = good.clone();
    for i in 0..events {
        let at = u32_at(&good, offsets_at + 5 * i) as usize;
        bad[at + 0x2C..at + 0x30].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let m = format_error(read_all(&bad));
    assert!(m.contains("past the end of the file"), "{m}");
}

/// A string table entry's size of `0xFFFFFFFF` (string table offset at 0x258: a count, then
/// u32 offsets of size-prefixed strings): an error when the file is opened.
#[test]
fn a_string_size_past_the_file_is_an_error() {
    let good = fixture();
    let strings_at = u64_at(&good, 0x258);
    assert!(u32_at(&good, strings_at) > 0);
    let first = strings_at + u32_at(&good, strings_at + 4) as usize;
    let mut bad = good;
    bad[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let m = format_error(read_all(&bad));
    assert!(m.contains("a string of 4294967295 bytes"), "{m}");
}

/// A string or process count of `0xFFFFFFFF`: an error, not a table read to the end.
#[test]
fn a_table_count_past_the_file_is_an_error() {
    let good = fixture();
    for table in [0x258, 0x250] {
        let at = u64_at(&good, table);
        let mut bad = good.clone();
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let m = format_error(read_all(&bad));
        assert!(m.contains("past the end of the file"), "{table:#x}: {m}");
    }
}

/// The header's event count one more or one less than the array of event offsets holds:
/// an error, not table bytes read as events or events left out without a word (audit 21d,
/// L2; on the old code both read).
#[test]
fn an_event_count_that_does_not_fill_the_offsets_array_is_an_error() {
    let good = fixture();
    let events = u32_at(&good, 0x234);
    for n in [events + 1, events - 1] {
        let mut bad = good.clone();
        bad[0x234..0x238].copy_from_slice(&n.to_le_bytes());
        let m = format_error(read_all(&bad));
        assert!(m.contains("event count"), "{n}: {m}");
    }
}

/// Key names compare case-insensitively beyond ASCII (the kernel's upcase table): an open of
/// `…\Übersicht` closed as `…\übersicht` is one key, opened and closed (audit 21d, L3; on the
/// old code a close without an open and a key left held).
#[test]
fn a_close_spelled_in_another_case_beyond_ascii_pairs_with_its_open() {
    let text = format!(
        "{HEAD}\"1:00:00.0000000 AM\",\"a.exe\",\"7\",\"RegOpenKey\",\"HKLM\\Software\\Übersicht\",\"SUCCESS\",\"\"\r\n\
\"1:00:01.0000000 AM\",\"a.exe\",\"7\",\"RegCloseKey\",\"HKLM\\Software\\übersicht\",\"SUCCESS\",\"\"\r\n"
    );
    let a = analyze_csv(&text);
    assert_eq!(a.unknowns.closes_without_open, 0);
    assert!(a.open.is_empty(), "{:?}", a.open);
}

/// A key renamed while open: its close names the new path and pairs with its open, and its
/// subkeys move with it (audit 21d, L3; on the old code two closes without an open and two
/// keys left held). The detail as Procmon exports it: `New Name: <name>`.
#[test]
fn a_renamed_keys_close_pairs_with_its_open() {
    let text = format!(
        "{HEAD}\"1:00:00.0000000 AM\",\"a.exe\",\"7\",\"RegOpenKey\",\"HKLM\\Software\\Old\",\"SUCCESS\",\"\"\r\n\
\"1:00:01.0000000 AM\",\"a.exe\",\"7\",\"RegOpenKey\",\"HKLM\\Software\\Old\\Sub\",\"SUCCESS\",\"\"\r\n\
\"1:00:02.0000000 AM\",\"a.exe\",\"7\",\"RegRenameKey\",\"HKLM\\Software\\Old\",\"SUCCESS\",\"New Name: New\"\r\n\
\"1:00:03.0000000 AM\",\"a.exe\",\"7\",\"RegCloseKey\",\"HKLM\\Software\\New\\Sub\",\"SUCCESS\",\"\"\r\n\
\"1:00:04.0000000 AM\",\"a.exe\",\"7\",\"RegCloseKey\",\"HKLM\\Software\\New\",\"SUCCESS\",\"\"\r\n"
    );
    let a = analyze_csv(&text);
    assert_eq!(a.unknowns.closes_without_open, 0);
    assert!(a.open.is_empty(), "{:?}", a.open);
    assert!(!a.unknowns.skipped.contains_key("RegRenameKey"));
}
