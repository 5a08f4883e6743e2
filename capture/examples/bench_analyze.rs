//! `cargo xtask bench-analyze`: events per second replayed from a PML file and from a CSV
//! export (goals: 1,000,000/s PML, 300,000/s CSV, one core), and the memory the replay keeps
//! for captures of two lengths with the same keys left open. Figures only, never asserted.
#![allow(missing_docs, reason = "a benchmark program")]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use capture::replay::{Options, Replay, open, replay};
use support::{Proc, Row};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting live bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator with the caller's layout; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A busy capture: 8 processes; per cycle an open, three queries and a close of one of 500
/// keys, every 1000th open kept (left open), plus file-system rows; opens carry 8 frames.
fn script(rows: usize) -> (Vec<Proc>, Vec<Row>) {
    let dlls = vec![
        (
            0x7FFA_1000_0000u64,
            0x20_0000u32,
            r"C:\Windows\System32\ntdll.dll".to_owned(),
        ),
        (
            0x7FFA_0000_0000,
            0x30_0000,
            r"C:\Windows\System32\KernelBase.dll".to_owned(),
        ),
        (
            0x7FF9_5000_0000,
            0x8_0000,
            r"C:\Program Files\App\plugin.dll".to_owned(),
        ),
    ];
    let procs: Vec<Proc> = (0..8)
        .map(|i| Proc {
            pid: 1000 + i,
            parent: 900,
            image: format!(r"C:\Program Files\App\app{i}.exe"),
            modules: dlls.clone(),
        })
        .collect();
    let stack = [
        0xFFFF_F800_0012_3456,
        0xFFFF_F800_0012_0000,
        0x7FFA_1000_1234,
        0x7FFA_0000_5678,
        0x7FFA_0000_9999,
        0x7FF9_5000_2222,
        0x7FF9_5000_3333,
        0x7FF9_5000_4444,
    ];
    let mut out = Vec::with_capacity(rows);
    let mut i = 0usize;
    while out.len() < rows {
        let p = i % 8;
        let key = format!(r"HKLM\SOFTWARE\Contoso\App\Key{}", i % 500);
        let secs = (out.len() / 10_000) as u64;
        out.push(Row::new(p, "RegOpenKey", &key, secs).stack(&stack));
        for _ in 0..3 {
            out.push(Row::new(p, "RegQueryValue", &format!(r"{key}\Value"), secs));
        }
        if !i.is_multiple_of(1000) {
            out.push(Row::new(p, "RegCloseKey", &key, secs));
        }
        out.push(Row::new(p, "Thread Create", "", secs));
        i += 1;
    }
    out.truncate(rows);
    (procs, out)
}

fn run(path: &std::path::Path) -> (f64, u64, u64, usize) {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let t = Instant::now();
    let mut reader = open(path).expect("a capture");
    let mut r = Replay::new(Options::default());
    replay(reader.as_mut(), &mut r).expect("readable");
    let secs = t.elapsed().as_secs_f64();
    let grown = (PEAK.load(Relaxed) - before) as u64 >> 10;
    let keys = r.open_keys();
    let a = r.finish("bench", reader.format());
    (secs, a.capture.rows, grown, keys)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("hivetrack-bench-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    println!("bench-analyze: one core, release build; figures, not assertions");
    for (format, rows) in [
        ("pml", 600_000usize),
        ("pml", 1_200_000),
        ("csv", 200_000),
        ("csv", 400_000),
    ] {
        let (procs, script) = script(rows);
        let path = dir.join(format!("bench-{rows}.{format}"));
        if format == "pml" {
            std::fs::write(&path, support::pml(&procs, &script)).expect("written");
        } else {
            std::fs::write(&path, support::csv(&procs, &script)).expect("written");
        }
        drop(script);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let (secs, n, grown, keys) = run(&path);
        #[allow(clippy::cast_precision_loss, reason = "a rate")]
        let rate = n as f64 / secs;
        println!(
            "  {format}: {n:>9} rows ({:>4} MiB) in {secs:.3} s = {rate:>10.0} events/s; \
             {keys} keys left open; peak heap of the replay {grown} KiB",
            size >> 20
        );
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(&dir);
}
