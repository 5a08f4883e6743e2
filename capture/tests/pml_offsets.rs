//! A PML's events follow one another (review 22f, M3): an offsets array naming an event
//! again is refused, so repeated deep stacks cannot be kept once per row.

use capture::replay::{Options, Replay};

mod support;

/// Review 22f, M3: the event-offset array named one event many times (5 bytes each), and
/// every open left in the ledger kept its own copy of the frames: 40 offsets at one
/// 65,535-frame `RegOpenKey` held 2.6 M frames from a ~0.5 MiB file. Events must now follow
/// one another, so such a file is refused, and the frames kept total no more than the file.
#[test]
fn one_deep_stack_named_by_many_offsets_is_refused() {
    use support::{Proc, Row};
    let procs = [Proc {
        pid: 100,
        parent: 4,
        image: r"C:\app.exe".to_owned(),
        modules: Vec::new(),
    }];
    let k = 40;
    let mut deep = Row::new(0, "RegOpenKey", r"HKLM\SOFTWARE\Deep", 1);
    deep.stack = (0..65_535u64).map(|i| 0x1000 + i).collect();
    let mut rows = vec![deep];
    for i in 0..k {
        rows.push(Row::new(
            0,
            "RegOpenKey",
            &format!(r"HKLM\SOFTWARE\F{i}"),
            2,
        ));
    }
    rows.push(Row::new(0, "RegCloseKey", r"HKLM\SOFTWARE\F0", 3));
    let mut f = support::pml(&procs, &rows);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let offsets = usize::try_from(u64::from_le_bytes(f[0x248..0x250].try_into().unwrap())).unwrap();
    let first = u32_at(&f, offsets);
    for e in 1..=k {
        f[offsets + 5 * e..offsets + 5 * e + 4].copy_from_slice(&first.to_le_bytes());
    }
    let mut p = capture::pml::PmlReader::new(
        std::io::Cursor::new(f.clone()),
        std::io::Cursor::new(f.clone()),
    )
    .unwrap();
    let mut r = Replay::new(Options::default());
    let err = capture::replay::replay(&mut p, &mut r).expect_err("offsets naming one event again");
    assert!(
        err.to_string().contains("starts inside the previous event"),
        "{err}"
    );
}
