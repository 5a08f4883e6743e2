//! `hivetrack analyze` end to end: the scripted logoff capture (capture/tests/fixtures) through
//! the command line, its JSON schema, its views and its exit codes.

mod common;

use capture::Analysis;
use common::{Contoso, run_with};
use hivetrack_cli::scripted::SID;
use hivetrack_cli::transport::TransportError;

fn fixture(name: &str) -> String {
    format!(
        "{}/../capture/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn run(argv: &[&str]) -> common::Outcome {
    run_with(
        argv,
        |_| -> Result<Box<dyn hivetrack_cli::transport::Transport>, TransportError> {
            panic!("analyze must not reach the driver")
        },
        &Contoso,
    )
}

#[test]
fn the_json_report_names_profleak_at_the_failed_unload() {
    for file in ["logoff.pml", "logoff.csv"] {
        let o = run(&["analyze", &fixture(file), "--hkcu-sid", SID, "--json"]);
        assert_eq!(o.code, 0, "{}", o.err);
        let a: Analysis = serde_json::from_str(&o.out).unwrap();
        assert_eq!(a.schema, "hivetrack.analysis/1");
        assert_eq!(a.capture.format, &file[7..]);
        let h = &a.unload_attempts[0].holders;
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].image, r"C:\Program Files\Sync\profleak.exe");
        assert!(a.open.is_empty());
    }
}

#[test]
fn fail_if_held_exits_1_only_when_something_is_held_at_the_point() {
    let held = run(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--at",
        "57",
        "--fail-if-held",
    ]);
    assert_eq!(held.code, 1, "{}{}", held.out, held.err);
    assert!(held.out.contains("profleak.exe"), "{}", held.out);
    assert!(held.out.contains("syncagent.dll"), "{}", held.out);
    let free = run(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--fail-if-held",
    ]);
    assert_eq!(free.code, 0, "{}{}", free.out, free.err);
    // --at as a time of day: 12:01:40 AM is the failed unload (100 s after midnight).
    let at_time = run(&[
        "analyze",
        &fixture("logoff.csv"),
        "--hkcu-sid",
        SID,
        "--at",
        "12:01:40 AM",
        "--fail-if-held",
    ]);
    assert_eq!(at_time.code, 1, "{}{}", at_time.out, at_time.err);
}

#[test]
fn views_render_as_tables_and_csv() {
    let f = fixture("logoff.pml");
    let o = run(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--at",
        "57",
        "--view",
        "modules",
    ]);
    assert_eq!(o.code, 0);
    assert!(
        o.out.contains(r"C:\Program Files\Sync\syncagent.dll"),
        "{}",
        o.out
    );
    let o = run(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--at",
        "57",
        "--view",
        "processes",
        "--csv",
    ]);
    assert_eq!(
        o.out.lines().next(),
        Some("pid,instance,open_keys,state,image")
    );
    assert!(
        o.out
            .contains(r"6230,1,1,,C:\Program Files\Sync\profleak.exe"),
        "{}",
        o.out
    );
    let o = run(&["analyze", &f, "--hkcu-sid", SID, "--csv"]);
    assert_eq!(
        o.out.lines().next(),
        Some("section,row,time,hive,pid,image,key,opened_row,module")
    );
    assert!(
        o.out
            .lines()
            .any(|l| l.starts_with("unload,") && l.contains("profleak.exe")),
        "{}",
        o.out
    );
    assert!(
        o.out.lines().any(|l| l.starts_with("exit-leak,")),
        "{}",
        o.out
    );
}

#[test]
fn bad_inputs_are_usage_errors() {
    let o = run(&["analyze", &fixture("missing.pml")]);
    assert_eq!(o.code, 3, "{}", o.err);
    let o = run(&["analyze", &fixture("logoff.pml"), "--at", "yesterday"]);
    assert_eq!(o.code, 3, "{}", o.err);
    let o = run(&["analyze", &fixture("README.md")]);
    assert_eq!(o.code, 3, "{}", o.err);
    assert!(
        o.err.contains("not a readable Process Monitor capture"),
        "{}",
        o.err
    );
}
