//! Golden output of every command in every form (table, JSON, CSV), against the scripted
//! driver in the scenarios of issue 5.

mod common;

use common::{assert_snapshot, run_counting, run_on};
use hivetrack_cli::scripted::{
    self, AGENT_PID, LEAK_COUNT, LEAKY_PID, SID, handle_leak, incomplete, logoff, logoff_busy,
};

const fn forms() -> [(&'static str, &'static [&'static str]); 3] {
    [("table", &[]), ("json", &["--json"]), ("csv", &["--csv"])]
}

fn args<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = base.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn holders_of_the_profile_that_will_not_unload() {
    let hive = format!(r"HKU\{SID}");
    for (form, extra) in forms() {
        let o = run_on(logoff(), &args(&["holders", &hive], extra));
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("holders_logoff_{form}"), &o.out);
        if form == "csv" {
            assert_eq!(
                o.err,
                "hivetrack: source: scripted, complete; tracking since 2026-11-22T01:00:00Z; the kernel lists 1 open key(s), all tracked\n"
            );
        }
    }
    // The one line an administrator needs, in event 1530's words.
    let o = run_on(logoff(), &["holders", &hive]);
    assert!(o.out.contains(&format!(
        r"Process 2040 (C:\Program Files\Contoso\Policy Agent\agent.exe) has opened key HKU\{SID}\Software\Policies with KEY_READ (open for 25m03s)"
    )), "{}", o.out);
    assert!(o.out.contains(r"(CONTOSO\alice)"));
}

/// Audit 23a, F1: a failed `_Classes` unload that named no holder gets its likely cause,
/// the user hive's cached `Software\Classes` link; a failed unload of another hive does not.
#[test]
fn a_refused_classes_unload_with_no_holder_names_the_user_hives_link() {
    let o = run_on(scripted::classes_unload_refused(), &["unload-history"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.out.contains(&format!(
            "FAILED, STATUS_CANNOT_DELETE (0xC0000121); 0 open key(s) held by 0 process(es)\n    \
             likely cause: HKU\\{SID}'s Software\\Classes link"
        )),
        "{}",
        o.out
    );
    let o = run_on(logoff(), &["unload-history"]);
    assert!(!o.out.contains("likely cause"), "{}", o.out);
}

/// Review 23c, L1: when whether the user hive is loaded cannot be asked (no kernel list),
/// `wait` on its `_Classes` hive ends at once, exit 4, and does not say the user hive "is
/// still loaded"; before, it looked until the timeout and then said so.
#[test]
fn wait_on_the_classes_hive_with_no_kernel_does_not_say_the_user_hive_is_loaded() {
    let mut s = hivetrack_cli::scripted::Scripted::new(scripted::logoff_released());
    s.no_kernel = true;
    let o = common::run_scripted(
        s,
        &["wait", &format!(r"HKU\{SID}_Classes"), "--timeout", "2"],
    );
    assert_eq!(
        o.code,
        hivetrack_cli::exit::INCOMPLETE,
        "{}{}",
        o.out,
        o.err
    );
    assert_eq!(o.sleeps, 0, "no waiting for an answer that cannot come");
    assert!(!o.out.contains("still loaded"), "{}", o.out);
    assert!(
        o.out
            .contains(&format!(r"could not tell whether HKU\{SID} is loaded")),
        "{}",
        o.out
    );
}

/// Review 23c, M2: the link is named only for `STATUS_CANNOT_DELETE` (not a filter's
/// `STATUS_ACCESS_DENIED`), and not for a refusal after the history shows the user hive
/// unloaded (its unload purged the link's reference).
#[test]
fn the_link_is_named_only_for_cannot_delete_while_the_user_hive_was_loaded() {
    let o = run_on(
        scripted::classes_unload_refused_for_other_reasons(),
        &["unload-history"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_eq!(o.out.matches("likely cause").count(), 1, "{}", o.out);
    let hinted = o
        .out
        .lines()
        .zip(o.out.lines().skip(1))
        .find(|(_, next)| next.contains("likely cause"))
        .map(|(line, _)| line);
    assert!(
        hinted.is_some_and(|l| l.starts_with("#2 ") && l.contains("STATUS_CANNOT_DELETE")),
        "{}",
        o.out
    );
}

#[test]
fn holders_while_the_shell_and_apps_are_busy() {
    let o = run_on(logoff_busy(), &["holders", "HKCU"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_snapshot("holders_busy_table", &o.out);
    let o = run_on(
        logoff_busy(),
        &["holders", "HKCU", "--summary", "--no-resolve"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(!o.out.contains("CONTOSO"), "--no-resolve: {}", o.out);
    assert_snapshot("holders_busy_summary_table", &o.out);
}

/// Audit 23a, F1: with the user hive loaded, its `Software\Classes` link may hold the
/// `_Classes` hive where neither the driver nor the kernel's list can see it (WRK
/// `cmparse.c` `CmpGetSymbolicLink`): no key open is not "free" (exit 4, the caveat, JSON
/// `source.classes_link_user_hive`). Once the user hive is unloaded it is.
#[test]
fn holders_of_the_classes_hive_is_empty_but_free_only_once_the_user_hive_is_unloaded() {
    let o = run_on(
        logoff(),
        &["holders", r"HKCU\Software\Classes", "--fail-if-held"],
    );
    assert_eq!(o.code, hivetrack_cli::exit::INCOMPLETE, "{}", o.err);
    assert_snapshot("holders_classes_table", &o.out);
    let user = format!(r"HKU\{SID}");
    assert!(
        o.out.contains(&format!(
            "Windows may still refuse to unload it while {user} is loaded: the user hive's \
             Software\\Classes link can hold it (WRK cmparse.c; not verified on Windows \
             10/11). Unload {user} first"
        )),
        "{}",
        o.out
    );
    let o = run_on(logoff(), &["holders", r"HKCU\Software\Classes", "--json"]);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        r.source.classes_link_user_hive.as_deref(),
        Some(user.as_str())
    );
    assert!(!r.source.complete, "{}", o.out);
    let o = run_on(
        scripted::logoff_user_hive_unloaded(),
        &[
            "holders",
            &format!(r"HKU\{SID}_Classes"),
            "--fail-if-held",
            "--json",
        ],
    );
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert!(
        r.source.complete && r.source.classes_link_user_hive.is_none(),
        "{}",
        o.out
    );
    let o = run_on(logoff(), &["holders", "HKCU", "--fail-if-held"]);
    assert_eq!(o.code, 1, "a held hive with --fail-if-held exits 1");
}

#[test]
fn holders_of_a_handle_leak_spans_many_pages() {
    let (o, requests) = run_counting(handle_leak(), &["holders", r"hklm\software", "--json"]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(requests > 50, "65,602 keys in {requests} pages");
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let leaky = r.holders.iter().find(|h| h.pid == LEAKY_PID).unwrap();
    assert_eq!(leaky.open_keys, LEAK_COUNT as u64);
    assert_eq!(
        leaky.keys.len(),
        LEAK_COUNT,
        "every key of every page, once"
    );
    let mut ids: Vec<u64> = leaky.keys.iter().map(|k| k.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), LEAK_COUNT, "no key repeated across pages");
    assert_eq!(
        r.holders.len(),
        2,
        "the continued process is not reported twice"
    );
    // The table folds the 65,602 identical keys into one sentence.
    let o = run_on(handle_leak(), &["holders", r"HKLM\SOFTWARE"]);
    assert_snapshot("holders_leak_table", &o.out);
}

/// `holders --grouped` (audit 23b, M3): the leak's JSON without the 65,602 key objects, with
/// the same counts, completeness and verdict, and the objects grouped in `key_counts`.
#[test]
fn holders_grouped_leaves_out_the_key_objects_and_keeps_every_count() {
    let hive = r"hklm\software";
    let full = run_on(handle_leak(), &["holders", hive, "--json"]);
    let grouped = run_on(handle_leak(), &["holders", hive, "--json", "--grouped"]);
    assert_eq!((full.code, grouped.code), (0, 0), "{}", grouped.err);
    let f: hivetrack_cli::model::HoldersReport = serde_json::from_str(&full.out).unwrap();
    let g: hivetrack_cli::model::HoldersReport = serde_json::from_str(&grouped.out).unwrap();
    assert!(g.grouped && !f.grouped);
    // Everything but the per-object lists is the same answer.
    assert_eq!(
        (
            &g.source,
            &g.hive,
            &g.verdict,
            &g.untracked,
            &g.short_counts
        ),
        (
            &f.source,
            &f.hive,
            &f.verdict,
            &f.untracked,
            &f.short_counts
        )
    );
    assert_eq!(g.holders.len(), f.holders.len());
    for (gh, fh) in g.holders.iter().zip(&f.holders) {
        assert!(gh.keys.is_empty(), "{gh:?}");
        assert_eq!(gh.open_keys, fh.open_keys);
        assert_eq!(
            gh.key_counts, fh.key_counts,
            "the same groups without --grouped"
        );
        let listed: u64 = gh.key_counts.iter().map(|k| k.count).sum();
        assert_eq!(
            listed,
            fh.keys.len() as u64,
            "the groups add up to the objects"
        );
    }
    let leaky = g.holders.iter().find(|h| h.pid == LEAKY_PID).unwrap();
    assert_eq!(leaky.key_counts.len(), 1, "{:?}", leaky.key_counts);
    assert_eq!(leaky.key_counts[0].count, LEAK_COUNT as u64);
    assert_eq!(
        leaky.key_counts[0].path.as_deref(),
        Some(scripted::LEAKED_KEY)
    );
    // Sizes as a ratio, never a timed or absolute figure.
    assert!(
        grouped.out.len() * 1000 < full.out.len(),
        "{} bytes grouped against {} with every object",
        grouped.out.len(),
        full.out.len()
    );
    // CSV has one row per key object: refused, not ignored.
    let o = run_on(handle_leak(), &["holders", hive, "--grouped", "--csv"]);
    assert_eq!(o.code, hivetrack_cli::exit::BAD_ARGUMENTS, "{}", o.err);
    assert!(o.out.is_empty() && o.err.contains("--grouped"), "{}", o.err);
    // The table is grouped already: the same text.
    let t = run_on(handle_leak(), &["holders", hive]);
    let tg = run_on(handle_leak(), &["holders", hive, "--grouped"]);
    assert_eq!(t.out, tg.out);
}

#[test]
fn hives_in_every_form() {
    for (form, extra) in forms() {
        let o = run_on(logoff(), &args(&["hives"], extra));
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("hives_{form}"), &o.out);
    }
}

#[test]
fn processes_rank_the_leak_first() {
    for (form, extra) in forms() {
        let o = run_on(handle_leak(), &args(&["processes", "--top", "3"], extra));
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("processes_leak_{form}"), &o.out);
    }
    let o = run_on(handle_leak(), &["processes", "--top", "1", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r.processes.len(), 1);
    assert_eq!(r.omitted, 3, "--top says how many it left out");
    assert_eq!(
        (r.processes[0].pid, r.processes[0].open_keys),
        (LEAKY_PID, 65_602)
    );
    let o = run_on(handle_leak(), &["processes", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r.processes.len(), 4, "without --top, every process");
}

#[test]
fn stats_in_every_form() {
    for (form, extra) in forms() {
        let o = run_on(incomplete(), &args(&["stats"], extra));
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("stats_incomplete_{form}"), &o.out);
    }
}

#[test]
fn unload_history_in_every_form() {
    for (form, extra) in forms() {
        let o = run_on(logoff(), &args(&["unload-history"], extra));
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("unload_history_{form}"), &o.out);
    }
    let o = run_on(logoff(), &["unload-history"]);
    assert!(o.out.contains(&format!(
        r"HKU\{SID}: FAILED, STATUS_CANNOT_DELETE (0xC0000121); 1 open key(s) held by 1 process(es)"
    )), "{}", o.out);
    assert!(o.out.contains(&format!("Process {AGENT_PID} (")));
    let o = run_on(incomplete(), &["unload-history"]);
    assert_snapshot("unload_history_incomplete_table", &o.out);
}

#[test]
fn incomplete_holders_say_so() {
    let o = run_on(incomplete(), &["holders", "HKCU"]);
    assert_eq!(
        o.code, 0,
        "without --strict an incomplete report still exits 0"
    );
    assert_snapshot("holders_incomplete_table", &o.out);
    assert!(o.out.contains("INCOMPLETE"));
}

/// Review 16: a snapshot carries the hives listing, so it says what that listing cannot
/// see (a hive loaded before tracking began), as `hives --strict` does.
#[test]
fn a_snapshot_says_what_its_hives_listing_cannot_see() {
    use protocol::hives::HiveRecord;
    use protocol::holders::{HiveKind, HiveState};
    use protocol::text::Text;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let (mut sa, _) = scripted::leak_snapshots();
    let mount: Vec<u16> = r"\REGISTRY\MACHINE\SYSTEM".encode_utf16().collect();
    let mut l = hivetrack_cli::page_server::Listing::new(&protocol::page::NoPrefix);
    l.push(&HiveRecord {
        id: 1,
        state: HiveState::Loaded,
        kind: HiveKind::Regular,
        open_keys: 0,
        holders: 0,
        flags: 0,
        loaded_time: 0,
        mount: Text::Units(&mount),
        file: Text::EMPTY,
    });
    sa.hives = Some(l);
    let o = run_on(sa, &["snapshot", "--strict", "-o", a.to_str().unwrap()]);
    assert_eq!(
        o.code,
        hivetrack_cli::exit::INCOMPLETE,
        "{}{}",
        o.out,
        o.err
    );
}

#[test]
fn snapshot_and_diff_show_the_leak_growing() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let (sa, sb) = scripted::leak_snapshots();
    let o = run_on(sa, &["snapshot", "-o", a.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    assert_snapshot(
        "snapshot_written_table",
        &o.out.replace(a.to_str().unwrap(), "A.json"),
    );
    let o = run_on(sb, &["snapshot", "--json", "-o", b.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.err);
    let shown = serde_json::to_string(b.to_str().unwrap()).unwrap();
    assert_snapshot(
        "snapshot_written_json",
        &o.out.replace(&shown[1..shown.len() - 1], "B.json"),
    );
    let file: hivetrack_cli::model::SnapshotFile =
        serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    assert_eq!(file.schema, "hivetrack.snapshot/1");
    assert_eq!(file.keys.len(), 1_603);
    assert_eq!(file.hives.len(), 5);
    for (form, extra) in forms() {
        let o = run_on(
            logoff(),
            &args(&["diff", a.to_str().unwrap(), b.to_str().unwrap()], extra),
        );
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("diff_leak_{form}"), &o.out);
    }
    let o = run_on(
        logoff(),
        &["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--json"],
    );
    let d: hivetrack_cli::model::DiffReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!((d.entries[0].pid, d.entries[0].delta), (LEAKY_PID, 602));
    assert_eq!(
        d.entries.last().unwrap().delta,
        -1,
        "the agent's closed key"
    );
    assert!(
        o.err.is_empty() || !o.err.contains("INCOMPLETE"),
        "{}",
        o.err
    );
    // B taken before A: said plainly, not only a growth table read backwards (audit 23b, L5).
    let o = run_on(
        logoff(),
        &["diff", b.to_str().unwrap(), a.to_str().unwrap()],
    );
    assert!(
        o.out.contains(
            "B (2026-11-22T03:00:00Z) was taken before A (2026-11-22T04:00:00Z): DELTA (B minus A) runs backwards in time; for growth over time, run `hivetrack diff B A` (the older snapshot first)"
        ),
        "{}",
        o.out
    );
    let o = run_on(
        logoff(),
        &["diff", a.to_str().unwrap(), b.to_str().unwrap()],
    );
    assert!(!o.out.contains("was taken before A"), "{}", o.out);
    // A snapshot that missed events: every form says the diff is incomplete, CSV on stderr
    // as every CSV report's source line (found in review, 2026-12-05: CSV never said so).
    let lossy = dir.path().join("lossy.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    doc["source"]["complete"] = serde_json::Value::Bool(false);
    doc["source"]["not_recorded"] = serde_json::Value::from(3);
    std::fs::write(&lossy, doc.to_string()).unwrap();
    let o = run_on(
        logoff(),
        &[
            "--csv",
            "diff",
            a.to_str().unwrap(),
            lossy.to_str().unwrap(),
        ],
    );
    assert!(o.err.contains("INCOMPLETE"), "{}", o.err);
    assert!(
        !o.out.contains("INCOMPLETE"),
        "the rows stay rows: {}",
        o.out
    );
}

#[test]
fn the_unload_history_says_a_deferred_unload_is_deferred_not_failed() {
    let o = run_on(scripted::logoff_deferred_held_after(), &["unload-history"]);
    let lines: Vec<&str> = o.out.lines().collect();
    assert!(
        lines[0].contains("STILL HELD 60 s after the unload attempt #2 (STATUS_PENDING"),
        "{}",
        o.out
    );
    assert!(
        o.out.lines().any(|l| l.starts_with("#2 ")
            && l.contains("DEFERRED (Windows unloads it after its last key closes, up to about 5 s later), STATUS_PENDING")),
        "{}",
        o.out
    );
    assert!(!o.out.contains("FAILED, STATUS_PENDING"), "{}", o.out);
    // One word per record for a script: the look again is not a second failure, and the
    // deferred unload is not a failure (audit 20b, J).
    let o = run_on(
        scripted::logoff_deferred_held_after(),
        &["unload-history", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let outcomes: Vec<&str> = v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes[..2], ["held_after", "deferred"], "{}", o.out);
    assert!(!outcomes.contains(&"failed"), "{}", o.out);
}

#[test]
fn the_unload_history_labels_the_drivers_look_again() {
    for (form, extra) in forms() {
        let o = run_on(
            scripted::logoff_held_after(),
            &args(&["unload-history"], extra),
        );
        assert_eq!(o.code, 0, "{form}: {}", o.err);
        assert_snapshot(&format!("unload_history_held_after_{form}"), &o.out);
    }
    let o = run_on(scripted::logoff_held_after(), &["unload-history"]);
    let first = o.out.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            r"#3 2026-11-22T04:00:00Z HKU\{SID}: STILL HELD 60 s after the unload attempt #2 (STATUS_CANNOT_DELETE (0xC0000121)); 1 open key(s) held by 1 process(es)"
        ),
        "{}",
        o.out
    );
    assert!(
        o.out
            .contains("processes hivetrack could not see may also hold keys"),
        "{}",
        o.out
    );
    let o = run_on(scripted::logoff_held_after(), &["unload-history", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let held = &v["attempts"][0];
    assert_eq!(held["held_after"], true);
    assert_eq!(held["held_for_secs"], 60);
    assert_eq!(held["failed_unload_sequence"], 2);
    assert_eq!(held["holders_unseen"], true);
    assert_eq!(v["attempts"][1]["held_after"], false);
    assert_eq!(held["outcome"], "held_after");
    assert_eq!(v["attempts"][1]["outcome"], "failed");
}

/// Audit 21b F4: the driver stores an application hive's file name cut (512 units) and says
/// so (`FILE_TRUNCATED`, protocol 6): the table ends the name with `…`, the JSON says
/// `file_truncated`; a whole name is shown as it is, without the field.
#[test]
fn a_hive_file_stored_cut_is_said_cut() {
    use protocol::hives::HiveRecord;
    use protocol::holders::{HiveKind, HiveState};
    use protocol::text::Text;
    let (mut sa, _) = scripted::leak_snapshots();
    let app: Vec<u16> = r"\REGISTRY\A\{00000001-0000-0000-0000-000000000000}"
        .encode_utf16()
        .collect();
    let sys: Vec<u16> = r"\REGISTRY\MACHINE\SYSTEM".encode_utf16().collect();
    let cut: Vec<u16> = r"\??\C:\Users\u\ddddd".encode_utf16().collect();
    let whole: Vec<u16> = r"\??\C:\Windows\System32\config\SYSTEM"
        .encode_utf16()
        .collect();
    let mut l = hivetrack_cli::page_server::Listing::new(&protocol::page::NoPrefix);
    for (id, kind, mount, file, flags) in [
        (1, HiveKind::App, &app, &cut, HiveRecord::FILE_TRUNCATED),
        (2, HiveKind::Regular, &sys, &whole, 0),
    ] {
        l.push(&HiveRecord {
            id,
            state: HiveState::Loaded,
            kind,
            open_keys: 0,
            holders: 0,
            flags,
            loaded_time: 0,
            mount: Text::Units(mount),
            file: Text::Units(file),
        });
    }
    sa.hives = Some(l);
    let o = run_on(sa.clone(), &["hives"]);
    assert!(
        o.out.contains(r"\??\C:\Users\u\ddddd…"),
        "{}{}",
        o.out,
        o.err
    );
    assert!(o.out.contains(r"config\SYSTEM") && !o.out.contains(r"config\SYSTEM…"));
    let o = run_on(sa, &["hives", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let hives = v["hives"].as_array().unwrap();
    let by_id = |id: u64| hives.iter().find(|h| h["id"] == id).unwrap();
    assert_eq!(by_id(1)["file_truncated"], true);
    assert!(by_id(2).get("file_truncated").is_none());
}
