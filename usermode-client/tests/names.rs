//! The hive argument in the forms administrators type — `DOMAIN\user`, `user`, a bare SID,
//! `HKCU`, `HKU\<SID>` — and `--json` errors from whole commands.

mod common;

use common::{Contoso, run_on, run_with};
use hivetrack_cli::accounts::NoAccounts;
use hivetrack_cli::exit;
use hivetrack_cli::scripted::{SID, logoff};

#[test]
fn every_name_form_reaches_the_same_hive() {
    let canonical = run_on(logoff(), &["holders", &format!(r"HKU\{SID}"), "--json"]);
    assert_eq!(canonical.code, exit::OK, "{}", canonical.err);
    for form in [
        r"CONTOSO\alice".to_owned(),
        r"contoso\ALICE".to_owned(),
        "alice".to_owned(),
        SID.to_owned(),
        SID.to_ascii_lowercase(),
        "HKCU".to_owned(),
    ] {
        let o = run_on(logoff(), &["holders", &form, "--json"]);
        assert_eq!(o.code, exit::OK, "{form}: {}", o.err);
        assert_eq!(o.out, canonical.out, "{form} names another hive");
    }
    // A SID with _Classes names the classes hive.
    let o = run_on(logoff(), &["holders", &format!("{SID}_Classes"), "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert!(
        doc["hive"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("_Classes")),
        "{doc}"
    );
}

#[test]
fn accounts_that_do_not_resolve_say_why() {
    // Windows knows no such account.
    let o = run_on(logoff(), &["holders", r"CONTOSO\mallory"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS);
    assert!(
        o.err
            .contains("neither a registry hive name nor an account this system knows"),
        "{}",
        o.err
    );
    // Off Windows, no account resolves: the form is understood, and the message says so.
    for name in [r"CONTOSO\alice", "alice"] {
        let o = run_with(
            &["holders", name],
            |_| unreachable!("no query"),
            &NoAccounts,
        );
        assert_eq!(o.code, exit::BAD_ARGUMENTS, "{name}");
        assert!(
            o.err.contains("accounts cannot be resolved on this system"),
            "{}",
            o.err
        );
        assert!(o.err.contains("S-1-5-21-"), "{}", o.err);
    }
    // A bare SID needs no account lookup: it works off Windows too.
    let o = run_with(
        &["holders", SID, "--json"],
        |_| Ok(Box::new(hivetrack_cli::scripted::Scripted::new(logoff()))),
        &NoAccounts,
    );
    assert_eq!(o.code, exit::OK, "{}", o.err);
}

#[test]
fn json_errors_have_the_documented_schema() {
    let o = run_on(logoff(), &["holders", "HKCR", "--json"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS);
    assert!(o.err.is_empty(), "JSON errors go to stdout only: {}", o.err);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(doc["schema"], "hivetrack.error/1");
    assert_eq!(doc["error"]["kind"], "bad_hive_name");
    assert_eq!(doc["error"]["exit_code"], 3);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("merged view"),
        "{doc}"
    );
    let o = run_on(logoff(), &["holders", r"HKU\S-1-5-21-9-9-9-500", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(doc["error"]["kind"], "unknown_hive");
    // The driver absent.
    let o = run_with(
        &["hives", "--json"],
        |_| Err(hivetrack_cli::transport::TransportError::DriverUnavailable),
        &Contoso,
    );
    assert_eq!(o.code, exit::DRIVER_UNAVAILABLE);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(doc["error"]["kind"], "driver_unavailable");
    assert_eq!(doc["error"]["exit_code"], 2);
    // Without --json the same error is a line on stderr and stdout stays empty.
    let o = run_on(logoff(), &["holders", "HKCR"]);
    assert!(
        o.out.is_empty() && o.err.starts_with("hivetrack: "),
        "{o:?}"
    );
}
