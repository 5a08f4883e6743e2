//! Every error path ends with its documented exit code and a message a person can act on.

mod common;

use common::{Contoso, run_on, run_scripted, run_with};
use hivetrack_cli::accounts::NoAccounts;
use hivetrack_cli::backend::{self, BackendChoice};
use hivetrack_cli::commands::INSTALL_HINT;
use hivetrack_cli::exit;
use hivetrack_cli::scripted::{Fault, Scripted, incomplete, logoff, logoff_user_hive_unloaded};
use hivetrack_cli::transport::{Need, TransportError};

const QUERY_COMMANDS: &[&[&str]] = &[
    &[
        "holders",
        r"HKU\S-1-5-21-1004336348-1177238915-682003330-1001",
    ],
    &["hives"],
    &["processes"],
    &["stats"],
    &["unload-history"],
    &["snapshot", "-o", "never-written.json"],
    &[
        "wait",
        r"HKU\S-1-5-21-1004336348-1177238915-682003330-1001",
        "--timeout",
        "1",
    ],
];

#[test]
fn driver_absent_exits_2_with_the_install_hint() {
    for argv in QUERY_COMMANDS
        .iter()
        .chain(std::iter::once(&&["version"][..]))
    {
        let o = run_with(argv, |_| Err(TransportError::DriverUnavailable), &Contoso);
        assert_eq!(o.code, exit::DRIVER_UNAVAILABLE, "{argv:?}");
        assert!(
            o.err
                .contains("the hivetrack driver is not installed or not running"),
            "{argv:?}: {}",
            o.err
        );
        assert!(o.err.contains(INSTALL_HINT), "{argv:?}");
    }
    assert!(!std::path::Path::new("never-written.json").exists());
}

#[test]
fn access_denied_exits_2_and_says_to_elevate() {
    for argv in QUERY_COMMANDS {
        let o = run_with(argv, |_| Err(TransportError::AccessDenied), &Contoso);
        assert_eq!(o.code, exit::DRIVER_UNAVAILABLE, "{argv:?}");
        assert!(o.err.contains("elevated prompt"), "{argv:?}: {}", o.err);
    }
}

#[test]
fn a_driver_of_another_protocol_version_exits_2() {
    for argv in QUERY_COMMANDS {
        let o = run_scripted(Scripted::new(logoff()).with_fault(Fault::Version(3)), argv);
        assert_eq!(o.code, exit::DRIVER_UNAVAILABLE, "{argv:?}: {}", o.err);
        assert!(
            o.err
                .contains("the driver speaks protocol version 3, this client speaks 7"),
            "{argv:?}: {}",
            o.err
        );
    }
}

#[test]
fn malformed_answers_are_errors_not_panics() {
    for argv in QUERY_COMMANDS {
        // A flipped byte the decoder must catch: reserved stats bytes, or a page's flags
        // (after the header and the cursor, and the record count).
        let page_flags = protocol::wire::HEADER_LEN + protocol::cursor::CURSOR_LEN + 4;
        let flip = if argv[0] == "stats" { 20 } else { page_flags };
        for fault in [
            Fault::Truncate(10),
            Fault::Truncate(60),
            Fault::Flip(0),  // magic
            Fault::Flip(6),  // kind
            Fault::Flip(12), // reserved header bytes
            Fault::Flip(flip),
        ] {
            let o = run_scripted(Scripted::new(logoff()).with_fault(fault), argv);
            assert_eq!(o.code, 1, "{fault:?} {argv:?}: {}", o.err);
            assert!(
                o.err.contains("the driver sent a malformed answer")
                    || o.err.contains("rejected the request"),
                "{fault:?} {argv:?}: {}",
                o.err
            );
        }
    }
}

#[test]
fn a_driver_without_the_query_says_so() {
    let o = run_scripted(
        Scripted::new(logoff()).with_fault(Fault::Refuse(1)),
        &["hives"],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.err.contains("the driver does not answer control code 0x8a546008: is the installed hivetrack.sys older than this client?: the driver rejected the request (Win32 error 1)"),
        "{}",
        o.err
    );
}

#[test]
fn a_request_the_driver_rejects_names_the_win32_error() {
    let o = run_scripted(
        Scripted::new(logoff()).with_fault(Fault::Refuse(31)),
        &["stats"],
    );
    assert_eq!(o.code, 1);
    assert!(o.err.contains("Win32 error 31)"), "{}", o.err);
}

#[test]
fn incomplete_reports_exit_4_with_strict() {
    for argv in [
        &["holders", "HKCU", "--strict"][..],
        &["hives", "--strict"],
        &["processes", "--strict"],
        &["stats", "--strict"],
        &["unload-history", "--strict"],
        &[
            "--strict",
            "wait",
            r"HKU\S-1-5-21-1004336348-1177238915-682003330-1001_Classes",
        ],
    ] {
        let o = run_on(incomplete(), argv);
        assert_eq!(o.code, exit::INCOMPLETE, "{argv:?}: {}{}", o.out, o.err);
        let without: Vec<&str> = argv.iter().copied().filter(|a| *a != "--strict").collect();
        // A wait is never "free" while the kernel still lists a key in the hive.
        let held = if argv.contains(&"wait") {
            exit::HELD
        } else {
            0
        };
        assert_eq!(run_on(incomplete(), &without).code, held, "{without:?}");
        // The `_Classes` hive is complete only once its user hive is unloaded: while that is
        // loaded its `Software\Classes` link may hold the hive unseen (audit 23a, F1).
        let complete = if argv.contains(&"wait") {
            assert_eq!(
                run_on(logoff(), argv).code,
                exit::INCOMPLETE,
                "user hive loaded: {argv:?}"
            );
            logoff_user_hive_unloaded()
        } else {
            logoff()
        };
        assert_eq!(run_on(complete, argv).code, 0, "complete: {argv:?}");
    }
    // Incomplete wins over held: the report cannot be trusted either way.
    let o = run_on(
        incomplete(),
        &["holders", "HKCU", "--strict", "--fail-if-held"],
    );
    assert_eq!(o.code, exit::INCOMPLETE);
}

#[test]
fn unknown_hives_and_bad_names_exit_3() {
    let o = run_on(logoff(), &["holders", r"HKU\S-1-5-21-9-9-9-500"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS);
    assert!(
        o.err
            .contains(r"no hive containing \REGISTRY\USER\S-1-5-21-9-9-9-500 is known"),
        "{}",
        o.err
    );
    for (name, says) in [
        ("HKCR", "merged view"),
        ("HKLM", "root key"),
        ("SOFTWARE", "neither a registry hive name nor an account"),
        (r"HKXX\SOFTWARE\x", "not a registry hive name"),
    ] {
        let o = run_on(logoff(), &["holders", name]);
        assert_eq!(o.code, exit::BAD_ARGUMENTS, "{name}");
        assert!(o.err.contains(says), "{name}: {}", o.err);
    }
}

#[test]
fn hkcu_off_windows_is_a_clear_error() {
    for hive in ["HKCU", r"HKCU\Software\Classes"] {
        for cmd in ["holders", "wait"] {
            let o = run_with(
                &[cmd, hive],
                |_| unreachable!("no query is sent"),
                &NoAccounts,
            );
            assert_eq!(o.code, exit::BAD_ARGUMENTS, "{cmd} {hive}");
            assert!(o.err.contains("only exists on Windows"), "{}", o.err);
            assert!(o.err.contains(r"HKU\<SID>"), "{}", o.err);
        }
    }
}

#[test]
#[cfg(not(windows))]
fn the_emulator_backend_is_not_in_this_build() {
    let o = run_with(
        &["--emulator", "logoff", "holders", r"HKLM\SOFTWARE"],
        |need| backend::open(BackendChoice::Auto, need, Some("logoff")),
        &Contoso,
    );
    assert_eq!(o.code, exit::DRIVER_UNAVAILABLE);
    assert!(o.err.contains("not available in this build"), "{}", o.err);
}

#[test]
fn default_backends_off_windows() {
    // On this host there is neither a driver nor NtQueryOpenSubKeysEx.
    if cfg!(windows) {
        return;
    }
    for (choice, need, says) in [
        (
            BackendChoice::Auto,
            Need::Driver,
            "not installed or not running",
        ),
        (
            BackendChoice::Auto,
            Need::Holders,
            "not installed or not running, and the driverless fallback is unavailable (the ntquery backend cannot answer this query: NtQueryOpenSubKeysEx exists only on Windows)",
        ),
        (
            BackendChoice::Ntquery,
            Need::Holders,
            "exists only on Windows",
        ),
        (BackendChoice::Ntquery, Need::Driver, "pid and key"),
    ] {
        let err = backend::open(choice, need, None)
            .err()
            .expect("no backend here");
        assert!(err.to_string().contains(says), "{choice:?} {need:?}: {err}");
    }
}

#[test]
fn unreadable_snapshot_files_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"schema\": \"hivetrack.hives/1\"}").unwrap();
    let missing = dir.path().join("missing.json");
    for (a, says) in [
        (&bad, "not a hivetrack snapshot"),
        (&missing, "cannot read"),
    ] {
        let o = run_on(
            logoff(),
            &["diff", a.to_str().unwrap(), a.to_str().unwrap()],
        );
        assert_eq!(o.code, exit::BAD_ARGUMENTS);
        assert!(o.err.contains(says), "{}", o.err);
    }
}
