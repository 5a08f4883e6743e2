//! Hive membership at an unload folds case as pairing does, beyond ASCII (review 21b, M1):
//! until then a key opened under the mount spelled in another non-ASCII case was no holder
//! of a failed unload whose list said complete (fails on the code before the fix).

use std::fmt::Write as _;

use capture::csv::CsvReader;
use capture::paths::HkcuSids;
use capture::replay::{Options, Replay, replay};

fn csv(rows: &[(u32, &str, &str, &str, &str)]) -> String {
    let mut t = String::from(
        "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\",\"Sequence\",\"User\",\"Image Path\"\r\n",
    );
    for (seq, &(pid, name, op, path, res)) in rows.iter().enumerate() {
        let _ = write!(
            t,
            "\"1:00:{seq:02}.0000000 AM\",\"{name}\",\"{pid}\",\"{op}\",\"{path}\",\"{res}\",\"\",\"{seq}\",\"NT AUTHORITY\\SYSTEM\",\"C:\\Windows\\{name}\"\r\n"
        );
    }
    t
}

/// The analysis of `text` as a whole capture from boot.
fn analyse(text: &str) -> capture::report::Analysis {
    let mut r = Replay::new(Options {
        hkcu: HkcuSids::default(),
        from_boot: true,
        all_events: true,
        ..Options::default()
    });
    replay(&mut CsvReader::new(text.as_bytes()).unwrap(), &mut r).unwrap();
    r.finish("x.csv", "csv")
}

#[test]
fn a_key_under_the_mount_spelled_in_another_case_beyond_ascii_is_a_holder() {
    let text = csv(&[
        (4, "System", "RegLoadKey", r"HKLM\ÄPP", "SUCCESS"),
        (100, "a.exe", "RegOpenKey", r"HKLM\äpp\Settings", "SUCCESS"),
        (200, "b.exe", "RegOpenKey", r"HKLM\ÄPP\Other", "SUCCESS"),
        (200, "b.exe", "RegOpenKey", r"HKLM\Software\A", "SUCCESS"),
        (200, "b.exe", "RegCloseKey", r"HKLM\Software\A", "SUCCESS"),
        (900, "reg.exe", "RegUnloadKey", r"HKLM\ÄPP", "CANNOT DELETE"),
    ]);
    let a = analyse(&text);
    let u = &a.unload_attempts[0];
    let pids: Vec<u32> = u.holders.iter().map(|h| h.pid).collect();
    assert!(
        pids.contains(&100) || !u.complete,
        "complete: {}, holders {pids:?}, missing {:?}",
        u.complete,
        u.missing
    );
}

/// Review 22f, L2: the report's hives were grouped by ASCII case only, so one implicit hive
/// spelled `ÄPP` and `äpp` was listed twice, each entry with both holders (its keys counted
/// twice in `open`).
#[test]
fn one_hive_spelled_in_two_non_ascii_cases_is_listed_once() {
    let text = csv(&[
        (100, "a.exe", "RegOpenKey", r"HKLM\ÄPP\Settings", "SUCCESS"),
        (200, "b.exe", "RegOpenKey", r"HKLM\äpp\Other", "SUCCESS"),
        (200, "b.exe", "RegOpenKey", r"HKLM\Software\A", "SUCCESS"),
        (200, "b.exe", "RegCloseKey", r"HKLM\Software\A", "SUCCESS"),
    ]);
    let a = analyse(&text);
    let names: Vec<&str> = a.open.iter().map(|h| h.hive.as_str()).collect();
    assert_eq!(names.len(), 1, "hives listed: {names:?}");
    assert_eq!(a.open[0].open_keys, 2, "{names:?}");
    assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
}
