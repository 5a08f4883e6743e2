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
    // Nothing is held at the end, but the capture closes a key it never saw opened: not
    // "free" (exit 4), see `free_is_said_only_when_the_capture_saw_every_open`.
    let free = run(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--fail-if-held",
    ]);
    assert_eq!(free.code, 4, "{}{}", free.out, free.err);
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
        Some("section,row,time,hive,pid,image,key,opened_row,module,holders_unseen")
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

/// The logoff capture without its one close of a key opened before the capture (row 3): a
/// capture that saw every open it pairs, so "free" can be complete. Rows shift by one: the
/// failed unload is row 56.
fn logoff_from_the_start(dir: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(fixture("logoff.csv")).unwrap();
    // The rows after it numbered as a capture begun after that row numbers them: Procmon's
    // Sequence numbers without a gap (a gap is a row left out: audit 20b, H2).
    let mut next = 0u64;
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !l.contains(r#""RegCloseKey","HKLM\SYSTEM\CurrentControlSet""#))
        .map(|l| {
            for class in ["\"Registry\",\"", "\"Process\",\""] {
                if let Some(i) = l.find(class) {
                    let at = i + class.len();
                    let end = at + l[at..].find('"').unwrap();
                    next += 1;
                    return format!("{}{}{}", &l[..at], next - 1, &l[end..]);
                }
            }
            l.to_owned()
        })
        .collect();
    assert_eq!(
        kept.lines().count() + 1,
        text.lines().count(),
        "one row less"
    );
    let path = dir.path().join("logoff-from-the-start.csv");
    std::fs::write(&path, kept).unwrap();
    path.display().to_string()
}

fn json(argv: &[&str]) -> (u8, serde_json::Value) {
    let mut v = argv.to_vec();
    v.push("--json");
    let o = run(&v);
    (o.code, serde_json::from_str(&o.out).unwrap())
}

fn missing(v: &serde_json::Value) -> String {
    v["missing"].to_string()
}

/// Found in review (2026-12-05): `--fail-if-held` exited 0 ("free") on a capture whose
/// `RegCloseKey` rows close keys it never saw opened: keys opened before the capture
/// started, which may still hold the hive. Failed before the fix: exit 0, no `complete`.
#[test]
fn free_is_said_only_when_the_capture_saw_every_open() {
    let (code, a) = json(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--fail-if-held",
    ]);
    assert_eq!(code, 4);
    assert_eq!(a["complete"], false, "{a}");
    assert!(missing(&a).contains("never saw opened"), "{a}");
    assert!(missing(&a).contains(r"\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet"));
    assert!(
        missing(&a).contains("Boot Logging"),
        "an actionable hint: {a}"
    );
    // The failed unload is not vouched for; the unloads Windows carried out are (nobody held
    // the hive then, seen or not).
    let attempts = a["unload_attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["complete"], false, "{}", attempts[0]);
    assert!(attempts[1..].iter().all(|u| u["complete"] == true), "{a}");
    let strict = run(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--strict",
    ]);
    assert_eq!(strict.code, 4);
    // Held is held, however incomplete.
    let held = run(&[
        "analyze",
        &fixture("logoff.pml"),
        "--hkcu-sid",
        SID,
        "--at",
        "57",
        "--fail-if-held",
    ]);
    assert_eq!(held.code, 1);

    // The same logoff captured from before the first open, but not said to be from boot:
    // a key opened before its first row and never closed in it would be in no row, so it is
    // not complete, and says how to make it so (found in review, 2026-12-05: it said
    // complete, exit 0).
    let dir = tempfile::tempdir().unwrap();
    let f = logoff_from_the_start(&dir);
    let (code, a) = json(&["analyze", &f, "--hkcu-sid", SID, "--fail-if-held"]);
    assert_eq!(code, 4, "{a}");
    assert!(missing(&a).contains("--from-boot"), "{a}");
    // From boot, but nothing says it holds every event (a filtered export may be numbered
    // without gaps: review 20b, R4): not complete, and says how to make it so.
    let (code, a) = json(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--from-boot",
        "--fail-if-held",
    ]);
    assert_eq!(code, 4, "{a}");
    assert!(missing(&a).contains("--all-events"), "{a}");
    // From boot and saved whole: free, and complete.
    let (code, a) = json(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--from-boot",
        "--all-events",
        "--fail-if-held",
    ]);
    assert_eq!(code, 0, "{a}");
    assert_eq!(
        (a["complete"].clone(), missing(&a)),
        (true.into(), "[]".into())
    );
    assert!(
        a["unload_attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["complete"] == true)
    );
    let o = run(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--from-boot",
        "--all-events",
        "--strict",
    ]);
    assert_eq!(o.code, 0, "{}", o.out);
    assert!(
        o.out
            .contains("complete, given the capture holds every event as --all-events states"),
        "{}",
        o.out
    );
}

/// Found in review (2026-12-05): without `--hkcu-sid` a capture's `HKCU` keys cannot be
/// placed in `HKU\<SID>`, so the failed unload of `HKU\<SID>` showed no holders and
/// `--fail-if-held` exited 0. Failed before the fix: exit 0, no `complete`, no hint.
#[test]
fn hkcu_keys_without_a_sid_make_a_user_hive_incomplete_not_free() {
    let dir = tempfile::tempdir().unwrap();
    let f = logoff_from_the_start(&dir);
    let hive = format!(r"HKU\{SID}");
    // At the failed unload profleak.exe holds HKCU\Software\Policies: in HKU\<SID> if <SID>
    // is alice's, which the capture cannot say.
    for argv in [
        vec!["analyze", &f, "--fail-if-held"],
        vec!["analyze", &f, "--hive", &hive, "--fail-if-held"],
        vec![
            "analyze",
            &f,
            "--hive",
            &hive,
            "--at",
            "56",
            "--fail-if-held",
        ],
    ] {
        let (code, a) = json(&argv);
        assert_eq!(code, 4, "{argv:?}: {a}");
        assert_eq!(a["complete"], false);
        assert!(
            missing(&a).contains(&format!("--hkcu-sid {SID} if")),
            "{argv:?}: the hint names the hive's SID: {a}"
        );
    }
    let (_, a) = json(&["analyze", &f]);
    let failed = &a["unload_attempts"][0];
    assert_eq!(failed["result"], "CANNOT DELETE");
    assert_eq!(failed["complete"], false);
    assert_eq!(failed["holders"].as_array().unwrap().len(), 0);
    assert_eq!(
        failed["maybe_holders"][0]["image"],
        r"C:\Program Files\Sync\profleak.exe"
    );
    // The later unloads, when no HKCU key was open: complete.
    assert_eq!(a["unload_attempts"][1]["complete"], true);
    assert_eq!(a["unload_attempts"][2]["complete"], true);
    let text = run(&["analyze", &f]).out;
    assert!(
        text.contains("INCOMPLETE: 1 HKCU key(s) of CONTOSO\\alice"),
        "{text}"
    );
    assert!(
        text.contains("may hold it: C:\\Program Files\\Sync\\profleak.exe"),
        "{text}"
    );
    // With the SID: profleak.exe holds the hive at the failed unload (1), and it is free,
    // completely, at the end (0).
    let o = run(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--hive",
        &hive,
        "--at",
        "56",
        "--fail-if-held",
    ]);
    assert_eq!(o.code, 1, "{}", o.out);
    let o = run(&[
        "analyze",
        &f,
        "--hkcu-sid",
        SID,
        "--hive",
        &hive,
        "--from-boot",
        "--all-events",
        "--fail-if-held",
    ]);
    assert_eq!(o.code, 0, "{}", o.out);
}

/// Found in review (2026-12-05): the CSV, `processes` and `modules` views did not say that
/// the analysis was incomplete or refused. Failed before the fix: nothing on stderr, no
/// INCOMPLETE line in the tables.
#[test]
fn every_view_carries_the_incompleteness() {
    let f = fixture("logoff.pml");
    for view in ["report", "holders", "processes", "modules"] {
        let o = run(&["analyze", &f, "--hkcu-sid", SID, "--view", view]);
        assert!(
            o.out.contains("INCOMPLETE:") && o.out.contains("never saw opened"),
            "{view}: {}",
            o.out
        );
        let o = run(&["analyze", &f, "--hkcu-sid", SID, "--view", view, "--csv"]);
        assert!(
            o.err.starts_with("hivetrack: analysis: ") && o.err.contains(", INCOMPLETE: "),
            "{view}: {}",
            o.err
        );
        assert!(
            !o.out.contains("INCOMPLETE"),
            "CSV rows stay data: {}",
            o.out
        );
        let o = run(&[
            "analyze",
            &f,
            "--hkcu-sid",
            SID,
            "--view",
            view,
            "--csv",
            "--fail-if-held",
        ]);
        assert_eq!(o.code, 4, "{view}");
    }
    // The report's CSV says it per row too, as unload-history's `holders_unseen`.
    let o = run(&["analyze", &f, "--csv"]);
    let unload = o.out.lines().find(|l| l.starts_with("unload,")).unwrap();
    assert!(
        unload.contains("(no holders seen; CANNOT DELETE)"),
        "{unload}"
    );
    assert!(unload.ends_with(",true"), "{unload}");
    // Complete: said as such.
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "analyze",
        &logoff_from_the_start(&dir),
        "--hkcu-sid",
        SID,
        "--from-boot",
        "--all-events",
        "--csv",
    ]);
    assert!(o.err.ends_with(", complete\n"), "{}", o.err);
    assert!(
        o.out.lines().skip(1).all(|l| l.ends_with(",false")),
        "{}",
        o.out
    );
}

/// Found in review (2026-12-05): `--at` before the capture's first row replayed nothing
/// and `--fail-if-held` exited 0, "free". Failed before the fix: exit 0, `holders_known`
/// true.
#[test]
fn an_at_before_the_first_row_names_no_holders() {
    // The capture begins at 12:00:10 AM.
    for at in ["12:00:05 AM", "0"] {
        let (code, a) = json(&[
            "analyze",
            &fixture("logoff.csv"),
            "--hkcu-sid",
            SID,
            "--at",
            at,
            "--fail-if-held",
        ]);
        assert_eq!(code, 4, "--at {at}: {a}");
        assert_eq!(a["holders_known"], false);
        assert_eq!(a["complete"], false);
        assert!(
            a["refusal"]
                .as_str()
                .unwrap()
                .contains("nothing was replayed"),
            "{a}"
        );
    }
    let o = run(&["analyze", &fixture("logoff.csv"), "--at", "12:00:05 AM"]);
    assert!(
        o.out
            .contains("is before the capture's first row (at 0:00:10.0000000)"),
        "{}",
        o.out
    );
}

/// Found in review (2026-12-05): with `--at`, a close after the point of a key the capture
/// never saw opened proves the key was open at the point, but only rows up to the point
/// were paired, so the analysis said "free" (exit 0). The logoff capture with its close of
/// a key opened before the capture moved to the end: at row 4 nothing the capture saw
/// opened is held, yet explorer holds that key. Failed before the fix: exit 0.
#[test]
fn a_close_after_the_at_point_of_a_key_never_seen_opened_is_not_free() {
    let dir = tempfile::tempdir().unwrap();
    let start = logoff_from_the_start(&dir);
    let text = std::fs::read_to_string(fixture("logoff.csv")).unwrap();
    let moved_row = text.split_inclusive('\n').nth(3).unwrap();
    assert!(moved_row.contains("CurrentControlSet"), "{moved_row}");
    let moved = dir.path().join("logoff-close-at-the-end.csv");
    std::fs::write(&moved, std::fs::read_to_string(&start).unwrap() + moved_row).unwrap();
    let argv = |f: &str| {
        json(&[
            "analyze",
            f,
            "--hkcu-sid",
            SID,
            "--at",
            "4",
            "--from-boot",
            "--all-events",
            "--fail-if-held",
        ])
    };
    let (code, a) = argv(&start);
    assert_eq!(code, 0, "nothing held at row 4, and complete: {a}");
    let (code, a) = argv(&moved.display().to_string());
    assert_eq!(code, 4, "{a}");
    assert_eq!(a["complete"], false);
    assert!(missing(&a).contains("after the --at point"), "{a}");
    assert!(missing(&a).contains(r"\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet by pid 4012"));
}

/// Audit 20b, H2, its repro: the committed logoff export with profleak.exe's rows and the
/// close of a key opened before the capture removed (`grep -v`, as a filter on the process
/// or on HKU/HKCU paths leaves it), `--from-boot --at "12:01:00 AM" --fail-if-held --hive
/// HKU\<SID> --view holders` said "complete: the capture shows no sign of keys it could not
/// see" and exited 0, where the whole capture shows profleak.exe holding a key (exit 1). Its
/// Sequence numbers skip the rows left out: exit 4, not complete, and it says how many
/// events are missing. (On the old code: exit 0 and "complete".)
#[test]
fn audit20b_h2_a_capture_filtered_by_process_is_not_free() {
    let text = std::fs::read_to_string(fixture("logoff.csv")).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| {
            !l.to_ascii_lowercase().contains("profleak")
                && !l.contains(r#""RegCloseKey","HKLM\SYSTEM\CurrentControlSet""#)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f2.csv");
    std::fs::write(&f, kept).unwrap();
    let f = f.display().to_string();
    let hive = format!(r"HKU\{SID}");
    let argv = |file: &str, json: bool| {
        let mut v = vec![
            "analyze",
            file,
            "--hkcu-sid",
            SID,
            "--from-boot",
            "--at",
            "12:01:00 AM",
            "--fail-if-held",
            "--hive",
            &hive,
            "--view",
            "holders",
        ];
        if json {
            v.push("--json");
        }
        v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>()
    };
    let o = run(&argv(&f, false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(o.code, 4, "{}{}", o.out, o.err);
    assert!(
        !o.out.contains("complete: the capture shows no sign"),
        "{}",
        o.out
    );
    assert!(
        o.out.contains("event(s) are not in the capture"),
        "{}",
        o.out
    );
    let (code, a) = json(
        &argv(&f, false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 4);
    assert_eq!(a["complete"], false);
    assert!(a["capture"]["events_missing"].as_u64().unwrap() > 0, "{a}");
    // The whole capture (numbered without a gap once the row before it is gone): held.
    let whole = logoff_from_the_start(&dir);
    let o = run(&argv(&whole, false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert_eq!(o.code, 1, "{}{}", o.out, o.err);
    assert!(o.out.contains("profleak.exe"), "{}", o.out);
}
