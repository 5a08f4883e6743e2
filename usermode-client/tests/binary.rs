//! The real `hivetrack` binary on this host: its wiring of parsing, backends and exit codes.

use std::process::{Command, Output};

fn hivetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hivetrack"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[cfg(not(windows))]
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_3_and_help_exits_0() {
    for argv in [
        &["frobnicate"][..],
        &["--json", "--csv", "hives"],
        &["holders"],
        &["processes", "--top", "x"],
    ] {
        assert_eq!(hivetrack(argv).status.code(), Some(3), "{argv:?}");
    }
    let help = hivetrack(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Exit codes: 0 ok"), "{text}");
    let wait = hivetrack(&["wait", "--help"]);
    assert!(
        String::from_utf8_lossy(&wait.stdout).contains("wait-free request"),
        "wait --help explains the wait-free request and its polling fallback"
    );
}

#[test]
#[cfg(not(windows))]
fn off_windows_there_is_no_driver_no_hkcu_and_no_emulator() {
    let o = hivetrack(&["hives"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not installed or not running"),
        "{}",
        stderr(&o)
    );
    let o = hivetrack(&["holders", r"HKLM\SOFTWARE"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("driverless fallback is unavailable"),
        "{}",
        stderr(&o)
    );
    let o = hivetrack(&["holders", "HKCU"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("only exists on Windows"),
        "{}",
        stderr(&o)
    );
    let o = hivetrack(&["--emulator", "logoff", "holders", r"HKLM\SOFTWARE"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not available in this build"),
        "{}",
        stderr(&o)
    );
    let o = hivetrack(&["version"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("hivetrack client "));
    // An account name is accepted as a form, and the error says why it cannot be used here.
    let o = hivetrack(&["holders", r"CONTOSO\alice"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("accounts cannot be resolved on this system"),
        "{}",
        stderr(&o)
    );
}

/// With --json every failure is a `hivetrack.error/1` document on stdout, even a command line
/// that does not parse; stderr stays empty.
#[test]
#[cfg(not(windows))]
fn json_errors_are_json_on_stdout() {
    for (argv, kind, code) in [
        (&["--json", "frobnicate"][..], "usage", 3),
        (&["--json", "holders", "HKLM"][..], "bad_hive_name", 3),
        (&["--json", "hives"][..], "driver_unavailable", 2),
    ] {
        let o = hivetrack(argv);
        assert_eq!(o.status.code(), Some(code), "{argv:?}");
        assert!(o.stderr.is_empty(), "{argv:?}: {}", stderr(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
        assert_eq!(doc["schema"], "hivetrack.error/1");
        assert_eq!(doc["error"]["kind"], kind, "{doc}");
        assert_eq!(doc["error"]["exit_code"], code);
        assert!(!doc["error"]["message"].as_str().unwrap().is_empty());
    }
}

/// `hivetrack driver` (audit 21c H4): `--legacy` is required and names both routes; a file
/// that is not hivetrack's kernel image is refused before anything is installed; off Windows
/// the command says where it runs.
#[test]
#[cfg(not(windows))]
fn driver_install_checks_its_arguments_and_off_windows_says_where_it_runs() {
    let exe = env!("CARGO_BIN_EXE_hivetrack");
    let o = hivetrack(&["driver", "install", exe]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("needs --legacy") && stderr(&o).contains("pnputil /add-driver"),
        "{}",
        stderr(&o)
    );
    // This test's own binary: an ELF file, not hivetrack.sys.
    let o = hivetrack(&["driver", "install", "--legacy", exe]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("no MZ header"), "{}", stderr(&o));
    let o = hivetrack(&["driver", "uninstall"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("needs --legacy"), "{}", stderr(&o));
    for argv in [
        &[
            "driver",
            "install",
            "--legacy",
            "/nonexistent/hivetrack.sys",
        ][..],
        &["driver", "uninstall", "--legacy"],
    ] {
        let o = hivetrack(argv);
        assert_eq!(o.status.code(), Some(2), "{argv:?}");
        assert!(stderr(&o).contains("run it on Windows"), "{}", stderr(&o));
    }
}
