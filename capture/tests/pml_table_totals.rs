//! The PML reader's tables may total no more than the file's length (review 21b, H2): every
//! size was checked against the file, but string-table entries may all point at one large
//! string, and process-table offsets at overlapping records whose module lists fill the file; each
//! entry was decoded on its own, so memory grew as entries x size (quadratic in the file's
//! length: 150 KB -> 394 MB, 4 MB -> an abort). A counting allocator measures the peak the
//! reader holds; both checks fail on the code before the fix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use capture::pml::PmlReader;

/// Counts the bytes live and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The tests share the counters: one at a time.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

// SAFETY: forwards to the system allocator, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(now, Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/logoff.pml"
    ))
    .expect("fixture")
}

/// The peak bytes the reader holds while opening `pml`, checked against 32x its length.
fn assert_bounded(pml: &[u8]) {
    let file_len = pml.len();
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let r = PmlReader::new(Cursor::new(pml), Cursor::new(pml));
    let peak = PEAK.load(Relaxed) - before;
    drop(r);
    assert!(
        peak < 32 * file_len,
        "a {file_len}-byte file made the reader hold {peak} bytes ({}x)",
        peak / file_len
    );
}

#[test]
fn a_string_table_of_one_string_referenced_n_times_is_not_decoded_n_times() {
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut pml = fixture();
    // A new string table at the end: n entries, all at the one string after them.
    let n: u32 = 2000;
    let units: u32 = 64 * 1024; // CJK: 3 UTF-8 bytes per 2 file bytes
    let at = pml.len() as u64;
    // Keep the offsets array's end named (the icon table's offset field, 0x260), as the old
    // string table's offset named it.
    let old = pml[0x258..0x260].to_vec();
    pml[0x260..0x268].copy_from_slice(&old);
    pml.extend_from_slice(&n.to_le_bytes());
    let first = 4 + 4 * n;
    for _ in 0..n {
        pml.extend_from_slice(&first.to_le_bytes());
    }
    pml.extend_from_slice(&(2 * units).to_le_bytes());
    for _ in 0..units {
        pml.extend_from_slice(&0x4E00u16.to_le_bytes());
    }
    pml[0x258..0x260].copy_from_slice(&at.to_le_bytes());
    assert_bounded(&pml);
}

#[test]
fn a_process_table_of_overlapping_records_is_not_read_in_full_each_time() {
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut pml = fixture();
    // Pointer size: the header's 64-bit flag at 0x8.
    let ptr: usize = if pml[8..12] == [0; 4] { 4 } else { 8 };
    // A new process table at the end: n offsets at overlapping records 4 bytes apart, as
    // the review shaped them. Word j of the records' region is 1000 + j: process i's index
    // is word i (distinct, so each process is kept) and its module count is word i + k
    // (k words into its record): every process reads more than 1000 modules.
    let n: u32 = 2000;
    let at = pml.len() as u64;
    let old = pml[0x250..0x258].to_vec();
    pml[0x260..0x268].copy_from_slice(&old);
    pml.extend_from_slice(&n.to_le_bytes());
    for i in 0..n {
        pml.extend_from_slice(&i.to_le_bytes());
    }
    let first = 4 + 8 * n;
    for i in 0..n {
        pml.extend_from_slice(&(first + 4 * i).to_le_bytes());
    }
    let k = u32::try_from((0x60 + ptr) / 4).expect("small");
    for j in 0..=n + k {
        pml.extend_from_slice(&(1000 + j).to_le_bytes());
    }
    let most = (1000 + n + k) as usize;
    pml.extend(std::iter::repeat_n(0u8, most * (2 * ptr + 4 * 6 + 0x18)));
    pml[0x250..0x258].copy_from_slice(&at.to_le_bytes());
    assert_bounded(&pml);
}
