//! Work the replay does per row, bounded by what the row's answer holds, not by the size of
//! the ledger or the file (review 21b, L5): a rename, an unload or a process exit visits the
//! ledger keys at or under its path (or of its process), and a PML event is read no further
//! than a registry detail can need, whatever size it declares. Counted, never timed: the
//! ledger's walks count the keys they visit (`Replay::ledger_visits`), and the PML is read
//! through a reader that counts the bytes taken from it.
//!
//! On the old code (every rename, unload and exit walked the whole ledger; every event's
//! declared detail was read whole) all three checks fail: the walks visit about 4×10⁸ keys
//! where the answers hold 2×10⁴–4×10⁴, and the PML's events copy 2 GiB out of a 32 MiB file.

mod support;

use std::cell::Cell;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::rc::Rc;

use capture::Event;
use capture::pml::{PmlReader, REGISTRY_DETAIL_MAX};
use capture::replay::{Options, Replay, replay};
use support::{CANNOT_DELETE, Proc, Row};

/// Keys left open, and rename / unload / exit rows: the review's figure.
const N: u32 = 20_000;

fn row(r: &mut u64, pid: u32, op: &str, path: &str, status: u32) -> Event {
    support::event(r, pid, op, path, status)
}

/// [`N`] keys opened by pid 100, `HKLM\SOFTWARE\App\K0` onwards.
fn open_many(r: &mut Replay, n: &mut u64) {
    for i in 0..N {
        r.event(&row(
            n,
            100,
            "RegOpenKey",
            &format!(r"HKLM\SOFTWARE\App\K{i}"),
            0,
        ));
    }
}

/// 20 000 keys open, then 20 000 `RegRenameKey` rows each renaming one of them: each rename
/// moves one key, so the walks visit about one key per row.
#[test]
fn renames_visit_the_keys_they_move() {
    let mut r = Replay::new(Options::default());
    let mut n = 0;
    open_many(&mut r, &mut n);
    let before = r.ledger_visits();
    for i in 0..N {
        let mut ev = row(
            &mut n,
            100,
            "RegRenameKey",
            &format!(r"HKLM\SOFTWARE\App\K{i}"),
            0,
        );
        ev.hive_file = format!("Renamed{i}");
        r.event(&ev);
    }
    let visits = r.ledger_visits() - before;
    // The renames worked: every key closes under its new name.
    for i in 0..N {
        r.event(&row(
            &mut n,
            100,
            "RegCloseKey",
            &format!(r"HKLM\SOFTWARE\App\Renamed{i}"),
            0,
        ));
    }
    assert_eq!(
        r.open_keys(),
        0,
        "every renamed key was closed by its new name"
    );
    let moved = u64::from(N);
    println!("renames: {visits} ledger keys visited for {moved} keys moved");
    assert!(visits <= 2 * moved, "{visits} keys visited to move {moved}");
}

/// 20 000 keys open elsewhere; 20 000 failed unloads of a hive with one key open, 2 000
/// successful unloads of hives with one stale key each, and 20 000 exits of a process
/// holding one key: each answer names one key.
#[test]
fn unloads_and_exits_visit_the_keys_they_name() {
    let mut r = Replay::new(Options::default());
    let mut n = 0;
    open_many(&mut r, &mut n);
    // A capture with closes (one without any is refused).
    r.event(&row(&mut n, 100, "RegOpenKey", r"HKLM\SOFTWARE\Closed", 0));
    r.event(&row(&mut n, 100, "RegCloseKey", r"HKLM\SOFTWARE\Closed", 0));
    let hive = r"HKU\S-1-5-21-1-2-3-1001";
    let mut load = row(&mut n, 200, "RegLoadKey", hive, 0);
    load.hive_file = r"C:\Users\u\NTUSER.DAT".to_owned();
    r.event(&load);
    r.event(&row(
        &mut n,
        300,
        "RegOpenKey",
        &format!(r"{hive}\Software"),
        0,
    ));
    let before = r.ledger_visits();
    for _ in 0..N {
        r.event(&row(&mut n, 200, "RegUnloadKey", hive, CANNOT_DELETE));
    }
    let stale = 2_000;
    for j in 0..stale {
        let h = format!(r"HKU\S-1-5-21-9-{j}");
        let mut load = row(&mut n, 200, "RegLoadKey", &h, 0);
        load.hive_file = format!(r"C:\h{j}.dat");
        r.event(&load);
        r.event(&row(
            &mut n,
            300,
            "RegOpenKey",
            &format!(r"{h}\Software"),
            0,
        ));
        r.event(&row(&mut n, 200, "RegUnloadKey", &h, 0));
    }
    for _ in 0..N {
        r.event(&row(&mut n, 300, "Process Exit", "", 0));
    }
    let visits = r.ledger_visits() - before;
    let a = r.finish("work", "csv");
    let named: u64 = a
        .unload_attempts
        .iter()
        .flat_map(|u| &u.holders)
        .map(|h| h.open_keys)
        .sum::<u64>()
        + a.exits.iter().map(|e| e.holder.open_keys).sum::<u64>();
    assert_eq!(
        a.unload_attempts.len(),
        usize::try_from(N).unwrap() + stale,
        "every unload row answered"
    );
    assert_eq!(
        named,
        u64::from(2 * N) + stale as u64,
        "one key named per answer"
    );
    println!("unloads and exits: {visits} ledger keys visited for {named} keys named");
    assert!(visits <= 3 * named, "{visits} keys visited to name {named}");
}

/// A reader counting the bytes taken from it.
struct Counted<'a> {
    inner: Cursor<&'a [u8]>,
    taken: Rc<Cell<u64>>,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n as u64);
        Ok(n)
    }
}

impl Seek for Counted<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A PML whose every event declares a detail running to the end of a 32 MiB file: each is
/// read no further than [`REGISTRY_DETAIL_MAX`], and the analysis is the one of the same
/// capture with honest sizes.
#[test]
fn a_declared_detail_is_read_no_further_than_a_path_needs() {
    let procs = [Proc {
        pid: 100,
        parent: 4,
        image: r"C:\app.exe".to_owned(),
        modules: Vec::new(),
    }];
    let mut rows = Vec::new();
    for i in 0..32 {
        rows.push(Row::new(
            0,
            "RegOpenKey",
            &format!(r"HKLM\SOFTWARE\App\K{i}"),
            1,
        ));
        if i % 2 == 0 {
            rows.push(Row::new(
                0,
                "RegCloseKey",
                &format!(r"HKLM\SOFTWARE\App\K{i}"),
                2,
            ));
        }
    }
    let honest = support::pml(&procs, &rows);
    let mut padded = honest.clone();
    padded.resize(honest.len() + (32 << 20), 0);
    let len = padded.len();
    let events = u32_at(&padded, 0x234) as usize;
    let offsets =
        usize::try_from(u64::from_le_bytes(padded[0x248..0x250].try_into().unwrap())).unwrap();
    for e in 0..events {
        let at = u32_at(&padded, offsets + 5 * e) as usize;
        let depth = usize::from(u16::from_le_bytes([padded[at + 0x28], padded[at + 0x29]]));
        let declared = u32::try_from(len - (at + 0x34 + 8 * depth)).unwrap();
        padded[at + 0x2C..at + 0x30].copy_from_slice(&declared.to_le_bytes());
    }
    let analyse = |bytes: Vec<u8>| {
        let taken = Rc::new(Cell::new(0));
        let open = || Counted {
            inner: Cursor::new(&bytes[..]),
            taken: Rc::clone(&taken),
        };
        let mut p = PmlReader::new(open(), open()).unwrap();
        let mut r = Replay::new(Options::default());
        replay(&mut p, &mut r).unwrap();
        (r.finish("x.pml", "pml"), taken.get())
    };
    let (want, _) = analyse(honest);
    let (got, taken) = analyse(padded);
    assert_eq!(
        serde_json_like(&got),
        serde_json_like(&want),
        "the same answer"
    );
    // Per event: its common part and at most the cap, each through at most a refill or two
    // of the reader's 256 KiB buffer.
    let bound = events as u64 * (REGISTRY_DETAIL_MAX as u64 + 3 * (1 << 18)) + (1 << 20);
    println!(
        "PML: {taken} bytes read for {events} events declaring {len}-byte details (bound {bound})"
    );
    assert!(taken <= bound, "{taken} bytes read, bound {bound}");
}

/// The analysis without the capture's own name and size.
fn serde_json_like(a: &capture::Analysis) -> String {
    let mut a = a.clone();
    a.capture.path.clear();
    format!("{a:?}")
}
