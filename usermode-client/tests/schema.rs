//! The `--json` schema: every report round-trips through the model types unchanged, the
//! field list is pinned by a golden file, and the README documents every field.

mod common;

use std::collections::BTreeSet;

use common::{assert_snapshot, run_on, run_with};
use hivetrack_cli::model::{
    CaptureReport, DiffReport, HivesReport, HoldersReport, ModulesReport, ProcessesReport,
    SnapshotFile, StatsReport, UnloadHistoryReport, WaitReport,
};
use hivetrack_cli::scripted::{self, SID, handle_leak, incomplete, logoff};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses `text` as `T` and prints it again: the same text means no field is lost, renamed
/// or added by the model types.
fn round_trip<T: Serialize + DeserializeOwned>(text: &str) -> Value {
    let parsed: T = serde_json::from_str(text).unwrap();
    let mut again = serde_json::to_string_pretty(&parsed).unwrap();
    again.push('\n');
    assert_eq!(again, text);
    serde_json::from_str(text).unwrap()
}

/// Objects whose keys are data, not field names (`analyze`'s users and skipped operations):
/// their values are pinned under `{}`.
const MAPS: [&str; 2] = ["analysis.capture.hkcu_users", "analysis.unknowns.skipped"];

/// `path: type` lines for every field of `v` (array items under `[]`, map values under `{}`).
fn shape(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if MAPS.contains(&prefix) => {
            for v in m.values() {
                shape(&format!("{prefix}{{}}"), v, out);
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}.{k}");
                shape(&p, v, out);
            }
        }
        Value::Array(a) => {
            for item in a {
                shape(&format!("{prefix}[]"), item, out);
            }
        }
        Value::Null => {
            out.insert(format!("{prefix}: null"));
        }
        Value::Bool(_) => {
            out.insert(format!("{prefix}: bool"));
        }
        Value::Number(n) => {
            out.insert(format!(
                "{prefix}: {}",
                if n.is_f64() { "number" } else { "integer" }
            ));
        }
        Value::String(_) => {
            out.insert(format!("{prefix}: string"));
        }
    }
}

#[test]
fn every_report_round_trips_and_its_shape_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = scripted::leak_snapshots();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    assert_eq!(run_on(sa, &["snapshot", "-o", a.to_str().unwrap()]).code, 0);
    assert_eq!(run_on(sb, &["snapshot", "-o", b.to_str().unwrap()]).code, 0);
    let hive = format!(r"HKU\{SID}");
    let json = |server, argv: &[&str]| {
        let mut v = argv.to_vec();
        v.push("--json");
        let o = run_on(server, &v);
        assert_eq!(o.code, 0, "{argv:?}: {}", o.err);
        o.out
    };
    let mut lines = BTreeSet::new();
    stack_shapes(&hive, &mut lines);
    let mut add = |name: &str, v: &Value| shape(name, v, &mut lines);
    for server in [logoff(), incomplete()] {
        add(
            "holders",
            &round_trip::<HoldersReport>(&json(server, &["holders", &hive])),
        );
    }
    // `--grouped`: `grouped`, and `key_counts` without the objects (audit 23b, M3).
    add(
        "holders",
        &round_trip::<HoldersReport>(&json(logoff(), &["holders", &hive, "--grouped"])),
    );
    add(
        "hives",
        &round_trip::<HivesReport>(&json(logoff(), &["hives"])),
    );
    add(
        "processes",
        &round_trip::<ProcessesReport>(&json(handle_leak(), &["processes"])),
    );
    add(
        "stats",
        &round_trip::<StatsReport>(&json(incomplete(), &["stats"])),
    );
    for server in [logoff(), incomplete()] {
        add(
            "unload-history",
            &round_trip::<UnloadHistoryReport>(&json(server, &["unload-history"])),
        );
    }
    // The classes hive while its user hive is loaded: not proven free (exit 4), with
    // `source.classes_link_user_hive` (audit 23a, F1).
    let classes = format!("{hive}_Classes");
    let o = run_on(logoff(), &["wait", &classes, "--timeout", "0", "--json"]);
    assert_eq!(o.code, hivetrack_cli::exit::INCOMPLETE, "{}", o.err);
    add(
        "wait",
        &serde_json::to_value(serde_json::from_str::<WaitReport>(&o.out).unwrap()).unwrap(),
    );
    add(
        "diff",
        &round_trip::<DiffReport>(&json(
            logoff(),
            &["diff", a.to_str().unwrap(), b.to_str().unwrap()],
        )),
    );
    add(
        "snapshot",
        &round_trip::<SnapshotFile>(&std::fs::read_to_string(&b).unwrap()),
    );
    // The fallback's nulls (image, times, thread) are part of the schema too.
    let o = run_with(
        &["holders", "HKCU", "--json"],
        |_| {
            Ok(Box::new(hivetrack_cli::fallback::FallbackTransport::new(
                Fixed(vec![(9, format!(r"\REGISTRY\USER\{SID}\Software"))]),
            )))
        },
        &common::Contoso,
    );
    add("holders", &round_trip::<HoldersReport>(&o.out));
    analysis_shapes(&mut lines);
    let text: String = lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect();
    assert_snapshot("json_schema", &text);

    // The README documents every field name of every report.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for line in &lines {
        let path = line.split(':').next().unwrap();
        let field = path
            .rsplit('.')
            .next()
            .unwrap()
            .trim_end_matches("[]")
            .trim_end_matches("{}");
        assert!(
            readme.contains(&format!("`{field}`")),
            "README.md does not document `{field}` ({path})"
        );
    }
}

/// `analyze`'s document (review 20b, R7: it was not pinned, so the README check missed its
/// fields): both fixtures, plain and with `--at`, `--from-boot` and `--all-events`.
fn analysis_shapes(lines: &mut BTreeSet<String>) {
    for file in ["logoff.csv", "logoff.pml"] {
        let capture = format!(
            "{}/../capture/tests/fixtures/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        for extra in [&[][..], &["--at", "20", "--from-boot", "--all-events"]] {
            let mut argv = vec!["analyze", capture.as_str(), "--hkcu-sid", SID, "--json"];
            argv.extend_from_slice(extra);
            let o = run_with(
                &argv,
                |_| -> Result<Box<dyn hivetrack_cli::transport::Transport>, _> {
                    panic!("analyze must not reach the driver")
                },
                &common::Contoso,
            );
            assert_eq!(o.code, 0, "{argv:?}: {}", o.err);
            shape("analysis", &round_trip::<capture::Analysis>(&o.out), lines);
        }
    }
}

/// Issue 16's reports: `holders --stacks`, `capture` (on and off) and `modules`.
fn stack_shapes(hive: &str, lines: &mut BTreeSet<String>) {
    let json = |server, argv: &[&str]| {
        let mut v = argv.to_vec();
        v.push("--json");
        let o = run_on(server, &v);
        assert_eq!(o.code, 0, "{argv:?}: {}", o.err);
        o.out
    };
    let holders = json(scripted::shell_extension(), &["holders", hive, "--stacks"]);
    shape("holders", &round_trip::<HoldersReport>(&holders), lines);
    for server in [scripted::shell_extension(), scripted::capture_off()] {
        let capture = json(server, &["capture", "status"]);
        shape("capture", &round_trip::<CaptureReport>(&capture), lines);
    }
    let modules = json(scripted::shell_extension(), &["modules", hive]);
    shape("modules", &round_trip::<ModulesReport>(&modules), lines);
}

struct Fixed(Vec<(u64, String)>);

impl hivetrack_cli::fallback::OpenSubKeys for Fixed {
    fn open_subkeys(
        &mut self,
        _: &str,
    ) -> Result<Vec<(u64, String)>, hivetrack_cli::transport::TransportError> {
        Ok(self.0.clone())
    }
}
