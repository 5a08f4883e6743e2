//! The unload's own open of the hive root: Windows' `NtUnloadKey2`/`NtUnloadKeyEx` open the
//! root themselves ("a private kernel mode handle just to take a reference on the object",
//! WRK `base/ntos/config/ntapi.c`), so Procmon logs `RegCreateKey HKU\<SID>` by the unloader
//! right before its `RegUnloadKey`, and the `RegCloseKey` after it (the kernel emulator's
//! model, `td-unload-sequence`). That key is the unload's, not a holder's, as the live
//! tracker has it (audit 21d, H2). Hand-written CSV rows with Sequence numbers.

use std::fmt::Write as _;

use capture::Analysis;
use capture::csv::CsvReader;
use capture::paths::HkcuSids;
use capture::replay::{Options, Replay, replay};

const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
const SYSTEM: &str = r"NT AUTHORITY\SYSTEM";

fn csv(rows: &[(u32, &str, &str, &str, &str)]) -> String {
    let mut t = String::from(
        "\u{feff}\"Time of Day\",\"Process Name\",\"PID\",\"Operation\",\"Path\",\"Result\",\"Detail\",\"Sequence\",\"User\",\"Image Path\"\r\n",
    );
    for (seq, &(pid, name, op, path, res)) in rows.iter().enumerate() {
        let _ = write!(
            t,
            "\"1:00:{seq:02}.0000000 AM\",\"{name}\",\"{pid}\",\"{op}\",\"{path}\",\"{res}\",\"\",\"{seq}\",\"{SYSTEM}\",\"C:\\Windows\\{name}\"\r\n"
        );
    }
    t
}

fn analyze(text: &str) -> Analysis {
    analyze_for(text, None)
}

/// The analysis with `--hkcu-sid SID --from-boot --all-events` and `--pid` if given.
fn analyze_for(text: &str, pid: Option<u32>) -> Analysis {
    let mut hkcu = HkcuSids::default();
    hkcu.add(SID).unwrap();
    let mut r = Replay::new(Options {
        hkcu,
        from_boot: true,
        all_events: true,
        pid,
        ..Options::default()
    });
    replay(&mut CsvReader::new(text.as_bytes()).unwrap(), &mut r).unwrap();
    r.finish("unload.csv", "csv")
}

/// A failed unload and a successful one, each with the unload's own create and close.
#[test]
fn the_unloads_own_create_is_not_a_holder() {
    let u = format!(r"HKU\{SID}");
    let text = csv(&[
        (4, "System", "RegLoadKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegCreateKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegUnloadKey", &u, "CANNOT DELETE"),
        (900, "svchost.exe", "RegCloseKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegCreateKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegUnloadKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegCloseKey", &u, "SUCCESS"),
    ]);
    let a = analyze(&text);
    assert_eq!(a.unload_attempts.len(), 2);
    let (failed, done) = (&a.unload_attempts[0], &a.unload_attempts[1]);
    // Windows said CANNOT DELETE and the capture saw no key open: its holder is invisible,
    // and the answer must say so instead of naming the unloader.
    assert!(failed.holders.is_empty(), "{:?}", failed.holders);
    assert!(!failed.complete);
    assert!(
        failed
            .missing
            .iter()
            .any(|m| m.contains("with no key the capture saw open")),
        "{:?}",
        failed.missing
    );
    assert!(done.succeeded && done.holders.is_empty(), "{done:?}");
    assert!(done.complete, "{:?}", done.missing);
    // Both closes paired: nothing left open, no close without an open.
    assert!(a.open.is_empty(), "{:?}", a.open);
    assert_eq!(a.unknowns.closes_without_open, 0);
    assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
}

/// The unloading process's own key of the hive root, opened earlier (not the row right
/// before the unload) and still open, is a real holder and stays one.
#[test]
fn the_unloaders_earlier_key_of_the_root_is_still_a_holder() {
    let u = format!(r"HKU\{SID}");
    let text = csv(&[
        (4, "System", "RegLoadKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegOpenKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegQueryKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegCreateKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegUnloadKey", &u, "CANNOT DELETE"),
        (900, "svchost.exe", "RegCloseKey", &u, "SUCCESS"),
    ]);
    let a = analyze(&text);
    let failed = &a.unload_attempts[0];
    assert_eq!(failed.holders.len(), 1, "{:?}", failed.holders);
    assert_eq!(failed.holders[0].pid, 900);
    assert_eq!(failed.holders[0].open_keys, 1);
    assert_eq!(failed.holders[0].keys[0].row, 2);
    assert!(failed.complete, "{:?}", failed.missing);
}

/// `--pid` of a process holding nothing, at a failed unload another process's key holds:
/// the answer lists no holder (the filter), but does not say the capture saw no key open in
/// the hive (audit 21d, L3; on the old code it did).
#[test]
fn a_pid_filter_does_not_make_seen_keys_unseen() {
    let u = format!(r"HKU\{SID}");
    let key = format!(r"HKU\{SID}\Software\Policies");
    let text = csv(&[
        (4, "System", "RegLoadKey", &u, "SUCCESS"),
        (100, "profleak.exe", "RegOpenKey", &key, "SUCCESS"),
        (
            100,
            "profleak.exe",
            "RegOpenKey",
            r"HKLM\Software\A",
            "SUCCESS",
        ),
        (
            100,
            "profleak.exe",
            "RegCloseKey",
            r"HKLM\Software\A",
            "SUCCESS",
        ),
        (900, "svchost.exe", "RegUnloadKey", &u, "CANNOT DELETE"),
    ]);
    let a = analyze_for(&text, Some(900));
    assert!(a.holders_known, "{:?}", a.refusal);
    let failed = &a.unload_attempts[0];
    assert!(failed.holders.is_empty());
    assert!(
        !failed
            .missing
            .iter()
            .any(|m| m.contains("with no key the capture saw open")),
        "{:?}",
        failed.missing
    );
}

/// A key the replay still had open when Windows unloaded its hive (its close is in no row)
/// is dropped there: not held at the end, not a holder of a later unload after a reload,
/// and a note says so (audit 21d, L3; on the old code it was both).
#[test]
fn keys_left_in_a_hive_windows_unloaded_are_dropped() {
    let u = format!(r"HKU\{SID}");
    let key = format!(r"HKU\{SID}\Software\Gone");
    let text = csv(&[
        (4, "System", "RegLoadKey", &u, "SUCCESS"),
        (100, "app.exe", "RegOpenKey", &key, "SUCCESS"),
        (100, "app.exe", "RegOpenKey", r"HKLM\Software\A", "SUCCESS"),
        (100, "app.exe", "RegCloseKey", r"HKLM\Software\A", "SUCCESS"),
        (900, "svchost.exe", "RegCreateKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegUnloadKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegCloseKey", &u, "SUCCESS"),
        (4, "System", "RegLoadKey", &u, "SUCCESS"),
        (900, "svchost.exe", "RegUnloadKey", &u, "CANNOT DELETE"),
    ]);
    let a = analyze(&text);
    assert_eq!(a.unload_attempts.len(), 2);
    // The successful unload shows what the replay had (a contradiction: not complete) ...
    assert_eq!(a.unload_attempts[0].holders.len(), 1);
    assert!(!a.unload_attempts[0].complete);
    assert!(a.unload_attempts[0].missing[0].starts_with("Windows unloaded the hive"));
    // ... and the key is gone after it: the unload's own close still pairs.
    assert!(
        a.unload_attempts[1].holders.is_empty(),
        "{:?}",
        a.unload_attempts[1]
    );
    assert!(a.open.is_empty(), "{:?}", a.open);
    assert_eq!(a.unknowns.closes_without_open, 0);
    assert!(
        a.unknowns
            .notes
            .iter()
            .any(|n| n.starts_with("1 key(s) the replay had open in hives Windows then unloaded")),
        "{:?}",
        a.unknowns.notes
    );
    assert!(a.tracker.holders_agree, "{:?}", a.tracker.disagreements);
}
