//! `wait` (polling, and the wait-free seam), the driverless fallback, and the client's
//! paging edge cases.

mod common;

use std::time::Duration;

use common::{Contoso, assert_snapshot, run_counting, run_on, run_scripted, run_with};
use hivetrack_cli::exit;
use hivetrack_cli::fallback::{BLIND_SPOT, FallbackTransport, MISSING, OpenSubKeys};
use hivetrack_cli::model::WaitVerdict;
use hivetrack_cli::page_server::{Listing, Server};
use hivetrack_cli::scripted::{
    SID, Scripted, logoff, logoff_busy, logoff_released, logoff_unloaded, logoff_user_hive_unloaded,
};
use hivetrack_cli::transport::{ERROR_FILE_NOT_FOUND, Transport, TransportError, WaitFreeOutcome};
use protocol::completeness::Completeness;
use protocol::holders::{HiveKind, HiveState, HolderKey, HolderProcess, HoldersPrefix};
use protocol::text::Text;

fn user_hive() -> String {
    format!(r"HKU\{SID}")
}

#[test]
fn wait_polls_until_the_agent_exits() {
    let s = Scripted::timeline(vec![logoff_busy(), logoff(), logoff_released()]);
    let o = run_scripted(s, &["wait", &user_hive(), "--timeout", "30"]);
    assert_eq!(o.code, exit::OK, "{}", o.err);
    assert_eq!(o.sleeps, 2, "three looks, two sleeps of 500 ms");
    assert_snapshot("wait_free_table", &o.out);
    let s = Scripted::timeline(vec![logoff_busy(), logoff(), logoff_released()]);
    let o = run_scripted(s, &["wait", &user_hive(), "--json", "--interval-ms", "250"]);
    assert_eq!(o.code, exit::OK);
    assert_snapshot("wait_free_json", &o.out);
    let s = Scripted::timeline(vec![logoff_busy(), logoff_released()]);
    let o = run_scripted(s, &["wait", &user_hive(), "--csv"]);
    assert_eq!(o.code, exit::OK);
    assert_snapshot("wait_free_csv", &o.out);
    assert_eq!(
        o.err,
        "hivetrack: source: scripted, complete; tracking since 2026-11-22T01:00:00Z; the kernel lists 0 open key(s), all tracked\n"
    );
}

/// Audit 23a, F1: the user hive's `Software\Classes` link may hold its `_Classes` hive with
/// no key open (WRK `cmparse.c` `CmpGetSymbolicLink`; not verified on Windows 10/11), so a
/// wait on the classes hive is not "free" while the user hive is loaded: it looks again
/// until the user hive is unloaded, then ends free; at its timeout it ends exit 4 with the
/// caveat. Before, it said "free" at the first look, exit 0.
#[test]
fn wait_on_the_classes_hive_is_free_only_after_the_user_hive_unloads() {
    let classes = format!(r"HKU\{SID}_Classes");
    let o = run_on(logoff_released(), &["wait", &classes, "--timeout", "2"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert_eq!(o.sleeps, 4, "looked until the timeout");
    assert!(
        o.out.contains(&format!(
            "but HKU\\{SID} is still loaded, so it is not proven free. Windows may still \
             refuse to unload it while HKU\\{SID} is loaded"
        )),
        "{}",
        o.out
    );
    let o = run_on(
        logoff_released(),
        &["wait", &classes, "--timeout", "0", "--json"],
    );
    let r: hivetrack_cli::model::WaitReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        (
            r.free,
            r.verdict,
            r.source.classes_link_user_hive.as_deref()
        ),
        (
            false,
            WaitVerdict::NoneSeenIncomplete,
            Some(user_hive().as_str())
        ),
        "{}",
        o.out
    );
    let s = Scripted::timeline(vec![logoff_released(), logoff_user_hive_unloaded()]);
    let o = run_scripted(s, &["wait", &classes, "--timeout", "30"]);
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    assert!(o.out.contains("free after 0.5s (poll)"), "{}", o.out);
}

#[test]
fn wait_refuses_a_negative_timeout() {
    let o = run_on(logoff(), &["wait", "HKCU", "--timeout=-1"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS, "{}", o.err);
    assert!(o.err.contains("not a number of seconds"), "{}", o.err);
}

#[test]
fn wait_times_out_with_exit_1() {
    let o = run_on(logoff(), &["wait", "HKCU", "--timeout", "2"]);
    assert_eq!(o.code, exit::HELD, "{}", o.err);
    assert_eq!(o.sleeps, 4);
    assert_snapshot("wait_timeout_table", &o.out);
    let o = run_on(logoff(), &["wait", "HKCU", "--timeout", "0"]);
    assert_eq!(
        (o.code, o.sleeps),
        (exit::HELD, 0),
        "a zero timeout looks once"
    );
}

#[test]
fn a_hive_unloaded_while_waiting_is_free_but_an_unknown_one_is_an_error() {
    let s = Scripted::timeline(vec![logoff(), logoff_unloaded()]);
    let o = run_scripted(s, &["wait", "HKCU"]);
    assert_eq!(o.code, exit::OK, "{}", o.err);
    assert!(o.out.contains("free after 0.5s (poll)"), "{}", o.out);
    let o = run_on(logoff_unloaded(), &["wait", "HKCU"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS);
    assert!(o.err.contains("is known to the driver"), "{}", o.err);
    assert!(
        o.err.contains("not loaded now (unloaded already?)"),
        "{}",
        o.err
    );
}

/// Queries sent to [`NativeWait`].
static NATIVE_WAIT_QUERIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A backend that can wait natively (the driver, with its wait-free IOCTL).
struct NativeWait {
    asked: Option<(String, Duration)>,
}

impl Transport for NativeWait {
    fn backend(&self) -> &'static str {
        "native"
    }
    fn ioctl(&mut self, _: u32, _: &[u8], _: &mut [u8]) -> Result<usize, TransportError> {
        // Only the look before the wait (whether the hive was loaded after tracking started:
        // review 20b, R6) and the one that says who still holds a hive after a timeout.
        let calls = NATIVE_WAIT_QUERIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(calls < 2, "a backend that waits natively is not polled");
        Err(TransportError::Request { code: 2 })
    }
    fn wait_free(
        &mut self,
        hive: &str,
        timeout: Duration,
    ) -> Option<Result<(WaitFreeOutcome, Completeness), TransportError>> {
        self.asked = Some((hive.to_owned(), timeout));
        Some(Ok((WaitFreeOutcome::TimedOut, Completeness::default())))
    }
}

#[test]
fn wait_uses_a_native_wait_free_when_the_backend_has_one() {
    let o = run_with(
        &["wait", "HKCU", "--timeout", "7", "--json"],
        |_| Ok(Box::new(NativeWait { asked: None })),
        &Contoso,
    );
    assert_eq!(o.code, exit::HELD, "{}", o.err);
    let r: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r["method"], "wait-free");
    assert_eq!(r["free"], false);
    // The look after the timeout named nobody (this backend cannot list): not "held" with 0
    // keys by 0 processes (audit 20b, L5).
    assert_eq!(r["verdict"], "timed_out");
    assert_eq!(
        NATIVE_WAIT_QUERIES.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one holders query before the wait, one after the timeout to say who holds the hive"
    );
}

/// What the scripted `NtQueryOpenSubKeysEx` answers.
type Answer = Result<Vec<(u64, String)>, fn() -> TransportError>;

/// `NtQueryOpenSubKeysEx` as a script.
struct FakeNtQuery(Answer);

impl OpenSubKeys for FakeNtQuery {
    fn open_subkeys(&mut self, hive: &str) -> Result<Vec<(u64, String)>, TransportError> {
        assert_eq!(hive, format!(r"\REGISTRY\USER\{SID}"));
        self.0.clone().map_err(|f| f())
    }
    /// pid 4012 resolves (the shell); 2040 does not (a protected process).
    fn image_of(&mut self, pid: u64) -> Option<String> {
        (pid == 4012).then(|| r"C:\Windows\explorer.exe".to_owned())
    }
}

fn fallback(open: Answer) -> Box<dyn Transport> {
    Box::new(FallbackTransport::new(FakeNtQuery(open)))
}

fn profile_keys(n: usize) -> Vec<(u64, String)> {
    let mut v = vec![
        (4012, format!(r"\REGISTRY\USER\{SID}\Environment")),
        (2040, format!(r"\REGISTRY\USER\{SID}\Software\Policies")),
    ];
    v.extend((0..n).map(|i| (4012, format!(r"\REGISTRY\USER\{SID}\Software\Key{i:05}"))));
    v
}

#[test]
fn the_fallback_reports_pid_and_key_and_says_what_is_missing() {
    let o = run_with(
        &["holders", "HKCU"],
        |_| Ok(fallback(Ok(profile_keys(1)))),
        &Contoso,
    );
    assert_eq!(o.code, exit::OK, "{}", o.err);
    assert_snapshot("holders_fallback_table", &o.out);
    let o = run_with(
        &["holders", "HKCU", "--json", "--strict"],
        |_| Ok(fallback(Ok(profile_keys(0)))),
        &Contoso,
    );
    // The kernel's list omits keys deleted while open and keys of busy hash buckets, which
    // hold the hive: the fallback never vouches, so `--strict` fails (until 2026-12-06 it
    // exited 0 here, "missing fields are not dropped records"; audit 20b, H1).
    assert_eq!(o.code, exit::INCOMPLETE, "{}", o.err);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r.source.backend, "ntquery");
    assert!(!r.source.complete);
    assert_eq!(r.source.missing.len(), MISSING.len() + 1);
    assert!(
        r.source.missing.iter().any(|m| m == BLIND_SPOT),
        "{:?}",
        r.source.missing
    );
    assert_eq!(
        r.holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
        [2040, 4012]
    );
    // Images are resolved in user mode where the process can be opened; `-` where not.
    let images: Vec<Option<&str>> = r.holders.iter().map(|h| h.image.as_deref()).collect();
    assert_eq!(images, [None, Some(r"C:\Windows\explorer.exe")]);
    // The summary has no open times to age (found in review, 2026-12-05: "oldest open for
    // 0s").
    let o = run_with(
        &["holders", "HKCU", "--summary"],
        |_| Ok(fallback(Ok(profile_keys(1)))),
        &Contoso,
    );
    assert!(!o.out.contains("oldest open for"), "{}", o.out);
    assert!(o.out.contains("(open times unknown)"), "{}", o.out);
}

/// Audit 20b, H1: on an empty kernel list the fallback's `wait` exited 0 while its own text
/// said "it may still be held", `--json` said `"free": true`, and `holders --fail-if-held
/// --strict` exited 0. The list omits keys deleted while open, so without the driver an empty
/// list is never "free": exit 4, in words that say what the list cannot show.
#[test]
fn the_fallback_never_says_a_loaded_hive_is_free() {
    let empty = |_| Ok(fallback(Ok(Vec::new())));
    let o = run_with(&["wait", "HKCU", "--timeout", "0"], empty, &Contoso);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert!(
        o.out.contains(&format!(
            r"HKU\{SID}: not unloaded after 0.0s (poll), and no open key in Windows' list; keys deleted while open are not in that list, so it may still be held"
        )),
        "{}",
        o.out
    );
    let o = run_with(&["wait", "HKCU", "--json"], empty, &Contoso);
    assert_eq!(o.code, exit::INCOMPLETE, "{}", o.err);
    let r: hivetrack_cli::model::WaitReport = serde_json::from_str(&o.out).unwrap();
    assert!(!r.free, "{r:?}");
    assert_eq!(r.verdict, WaitVerdict::NoneSeenIncomplete);
    assert!(!r.source.complete);
    for argv in [
        &["holders", "HKCU", "--fail-if-held"][..],
        &["holders", "HKCU", "--fail-if-held", "--strict"],
        &["holders", "HKCU", "--strict"],
    ] {
        let o = run_with(argv, empty, &Contoso);
        assert_eq!(o.code, exit::INCOMPLETE, "{argv:?}: {}{}", o.out, o.err);
    }
    // Not "0 open key(s) held by 0 process(es)" (audit 20b, L2).
    let o = run_with(&["holders", "HKCU"], empty, &Contoso);
    assert_eq!(o.code, exit::OK, "no verdict asked: {}", o.err);
    assert!(!o.out.contains("0 open key(s) held by 0"), "{}", o.out);
    assert!(
        o.out
            .contains("No open key in Windows' list; keys deleted while open are not in that list"),
        "{}",
        o.out
    );
    // Held is held, however little the fallback sees.
    let o = run_with(
        &["holders", "HKCU", "--fail-if-held", "--strict"],
        |_| Ok(fallback(Ok(profile_keys(0)))),
        &Contoso,
    );
    assert_eq!(o.code, exit::INCOMPLETE, "--strict wins over held");
    let o = run_with(
        &["holders", "HKCU", "--fail-if-held"],
        |_| Ok(fallback(Ok(profile_keys(0)))),
        &Contoso,
    );
    assert_eq!(o.code, exit::HELD);
}

/// `NtQueryOpenSubKeysEx` for a profile that unloads after `listed` looks: a key open until
/// then, `ERROR_FILE_NOT_FOUND` after.
struct Unloading {
    looks: u32,
    listed: u32,
}

impl OpenSubKeys for Unloading {
    fn open_subkeys(&mut self, hive: &str) -> Result<Vec<(u64, String)>, TransportError> {
        assert_eq!(hive, format!(r"\REGISTRY\USER\{SID}"));
        self.looks += 1;
        if self.looks <= self.listed {
            Ok(vec![(4012, format!(r"{hive}\Environment"))])
        } else {
            Err(TransportError::Request {
                code: ERROR_FILE_NOT_FOUND,
            })
        }
    }
}

/// Audit 20b, H1 (the other half): a hive that unloaded during a fallback `wait` was reported
/// "may still be held", exit 4, because the fallback could not answer the kernel-list request
/// `wait` makes when a hive goes. Unloaded is free, and complete: nothing of it is left.
#[test]
fn a_hive_unloaded_during_a_fallback_wait_is_free() {
    let unloading = |_| -> Result<Box<dyn Transport>, TransportError> {
        Ok(Box::new(FallbackTransport::new(Unloading {
            looks: 0,
            listed: 1,
        })))
    };
    let o = run_with(&["wait", "HKCU", "--timeout", "5"], unloading, &Contoso);
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    assert!(
        o.out
            .contains(&format!(r"HKU\{SID}: free after 0.5s (poll)")),
        "{}",
        o.out
    );
    let o = run_with(&["wait", "HKCU", "--json"], unloading, &Contoso);
    let r: hivetrack_cli::model::WaitReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!((r.free, r.verdict), (true, WaitVerdict::Free), "{r:?}");
    assert!(r.source.complete, "{:?}", r.source);
    assert_eq!(o.code, exit::OK);
}

/// `NtQueryOpenSubKeysEx` for a profile with no key open that unloads after `empty` looks
/// (the last key closed, the profile service not done yet): an empty list, then
/// `ERROR_FILE_NOT_FOUND`.
struct EmptyThenUnloaded {
    looks: u32,
    empty: u32,
}

impl OpenSubKeys for EmptyThenUnloaded {
    fn open_subkeys(&mut self, _hive: &str) -> Result<Vec<(u64, String)>, TransportError> {
        self.looks += 1;
        if self.looks <= self.empty {
            Ok(Vec::new())
        } else {
            Err(TransportError::Request {
                code: ERROR_FILE_NOT_FOUND,
            })
        }
    }
}

/// Review 20b, R8: the driverless `wait` ended at once (exit 4) on an empty list, so a logoff
/// script run after the last key closed but before the unload could never wait for the one
/// "free" the fallback can give: the hive's unload. It now keeps looking until Windows no
/// longer has the hive (free, exit 0) or the timeout (`none_seen_incomplete`, exit 4).
#[test]
fn the_fallback_wait_waits_for_the_unload_on_an_empty_list() {
    let after = |empty| {
        move |_| -> Result<Box<dyn Transport>, TransportError> {
            Ok(Box::new(FallbackTransport::new(EmptyThenUnloaded {
                looks: 0,
                empty,
            })))
        }
    };
    let o = run_with(&["wait", "HKCU", "--timeout", "10"], after(3), &Contoso);
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    assert!(
        o.out
            .contains(&format!(r"HKU\{SID}: free after 1.5s (poll)")),
        "{}",
        o.out
    );
    assert_eq!(o.sleeps, 3, "{o:?}");
    // Never unloaded: the wait runs to its timeout, and says it was not unloaded.
    let o = run_with(
        &["wait", "HKCU", "--timeout", "2", "--json"],
        after(u32::MAX),
        &Contoso,
    );
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    let r: hivetrack_cli::model::WaitReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r.verdict, WaitVerdict::NoneSeenIncomplete, "{r:?}");
    assert!(r.waited_secs >= 2.0, "{r:?}");
    let o = run_with(
        &["wait", "HKCU", "--timeout", "2"],
        after(u32::MAX),
        &Contoso,
    );
    assert!(
        o.out.contains("not unloaded after 2.0s (poll)"),
        "{}",
        o.out
    );
}

#[test]
fn the_fallback_pages_and_summarises_like_the_driver() {
    let o = run_with(
        &["holders", "HKCU", "--json"],
        |_| Ok(fallback(Ok(profile_keys(3_000)))),
        &Contoso,
    );
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let shell = r.holders.iter().find(|h| h.pid == 4012).unwrap();
    assert_eq!(shell.keys.len(), 3_001);
    assert_eq!(shell.open_keys, 3_001);
    let o = run_with(
        &["holders", "HKCU", "--json", "--summary"],
        |_| Ok(fallback(Ok(profile_keys(3_000)))),
        &Contoso,
    );
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert!(r.holders.iter().all(|h| h.keys.is_empty()));
    assert_eq!(r.hive.open_keys, 3_002);
}

#[test]
fn the_fallback_refuses_other_queries_and_passes_errors_on() {
    for argv in [
        &["stats"][..],
        &["hives"],
        &["processes"],
        &["unload-history"],
    ] {
        let o = run_with(argv, |_| Ok(fallback(Ok(Vec::new()))), &Contoso);
        assert_eq!(o.code, exit::DRIVER_UNAVAILABLE, "{argv:?}");
        assert!(o.err.contains("ntquery backend cannot answer"), "{}", o.err);
    }
    let o = run_with(
        &["holders", "HKCU"],
        |_| {
            Ok(fallback(Err(|| TransportError::Request {
                code: ERROR_FILE_NOT_FOUND,
            })))
        },
        &Contoso,
    );
    assert_eq!(o.code, exit::BAD_ARGUMENTS, "{}", o.err);
    // Said as Windows' answer, not the driver's (audit 20b, L5).
    assert!(
        o.err.contains("Windows has no hive loaded at") && !o.err.contains("driver"),
        "{}",
        o.err
    );
    let o = run_with(
        &["holders", "HKCU"],
        |_| {
            Ok(fallback(Err(|| TransportError::Unsupported {
                backend: "ntquery",
                why: "NtQueryOpenSubKeysEx needs SeRestorePrivilege",
            })))
        },
        &Contoso,
    );
    assert_eq!(o.code, exit::DRIVER_UNAVAILABLE);
    assert!(o.err.contains("SeRestorePrivilege"), "{}", o.err);
}

#[test]
fn a_record_larger_than_the_first_buffer_is_fetched_with_a_larger_one() {
    let long: Vec<u16> = format!(r"\REGISTRY\USER\{SID}\{}", "Deep\\".repeat(8_000))
        .encode_utf16()
        .collect();
    assert!(long.len() * 2 > hivetrack_cli::client::INITIAL_BUFFER);
    let mount: Vec<u16> = format!(r"\REGISTRY\USER\{SID}").encode_utf16().collect();
    let image: Vec<u16> = "C:\\deep.exe".encode_utf16().collect();
    let key = HolderKey {
        flags: HolderKey::NAME_TRUNCATED,
        id: 1,
        thread: 2,
        open_time: hivetrack_cli::scripted::NOW,
        access: 1,
        handle_opens: 1,
        handle_closes: 0,
        stack: 0,
        name: Text::Units(&long),
    };
    let proc_ = HolderProcess {
        flags: 0,
        pid: 77,
        start_key: 1,
        open_keys: 1,
        oldest_open: hivetrack_cli::scripted::NOW,
        image: Text::Units(&image),
    };
    let prefix = HoldersPrefix {
        hive_id: 7,
        state: HiveState::Loaded,
        kind: HiveKind::Regular,
        open_keys: 1,
        holders: 1,
        flags: 0,
        mount: Text::Units(&mount),
        file: Text::EMPTY,
        completeness: Completeness::default(),
    };
    let mut server = Server::default();
    server.holders.push((
        mount.clone(),
        Listing::holders(&prefix, &[(proc_, vec![key])]),
    ));
    let (csv, _) = run_counting(server.clone(), &["--csv", "holders", "HKCU"]);
    assert!(
        csv.out
            .lines()
            .nth(1)
            .is_some_and(|row| row.ends_with(",true,true,false,false")),
        "a cut name says so in CSV too: {}",
        csv.out
    );
    // And a cut image path (found in review, 2026-12-05: CSV gave it as if whole).
    let cut_image = HolderProcess {
        flags: HolderProcess::IMAGE_TRUNCATED,
        ..proc_
    };
    let mut cut = Server::default();
    cut.holders.push((
        mount.clone(),
        Listing::holders(&prefix, &[(cut_image, vec![key])]),
    ));
    let (csv, _) = run_counting(cut, &["--csv", "holders", "HKCU"]);
    assert!(
        csv.out
            .lines()
            .nth(1)
            .is_some_and(|row| row.ends_with(",true,true,true,false")),
        "a cut image says so in CSV: {}",
        csv.out
    );
    let (o, requests) = run_counting(server, &["holders", "HKCU", "--json"]);
    assert_eq!(o.code, exit::OK, "{}", o.err);
    // A page with the process alone, a refusal (ERROR_INSUFFICIENT_BUFFER) for the key,
    // then the key (after the process repeated as CONTINUED) in a larger buffer; the
    // hive listing and the version request of the holder-now step (this server cannot
    // identify handles). (Its tracking is off, so no hive listing is asked whether the hive
    // was loaded since.)
    assert_eq!(requests, 5);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        r.holders[0].keys[0].path.as_ref().unwrap().len(),
        long.len()
    );
    assert!(r.holders[0].keys[0].name_truncated);
}

#[test]
fn a_driver_that_never_finishes_is_an_error() {
    /// Answers every holders request with the same non-final page.
    struct Stuck(Server);
    impl Transport for Stuck {
        fn backend(&self) -> &'static str {
            "stuck"
        }
        fn ioctl(
            &mut self,
            code: u32,
            input: &[u8],
            out: &mut [u8],
        ) -> Result<usize, TransportError> {
            let mut start =
                protocol::wire::decode::<protocol::request::QueryRequest<'_>>(input).unwrap();
            start.cursor = protocol::cursor::Cursor::START;
            start.max_records = 1;
            let mut buf = [0u8; 512];
            let n = protocol::wire::encode(&start, &mut buf).unwrap();
            self.0.answer(code, &buf[..n], out)
        }
    }
    let o = run_with(&["hives"], |_| Ok(Box::new(Stuck(logoff()))), &Contoso);
    assert_eq!(o.code, 1);
    assert!(o.err.contains("made no progress"), "{}", o.err);
}

/// The driver started after the agent opened its key: the kernel lists the key, the driver
/// has no record of it (issue 12).
fn started_late() -> Scripted {
    // The profile was loaded before tracking started: a key only the kernel lists can then
    // be from before it (in a hive loaded since, with nothing lost, it cannot: the report
    // calls such a key "not seen by hivetrack", audit 24b, G1).
    let mut server = hivetrack_cli::scripted::logoff_released_loaded_before_tracking();
    server.kernel_extra = vec![(2040, format!(r"\REGISTRY\USER\{SID}\Software\Policies"))];
    let mut s = Scripted::new(server);
    s.images = vec![(2040, hivetrack_cli::scripted::AGENT.to_owned())];
    s
}

#[test]
fn keys_opened_before_tracking_started_are_listed_and_the_report_is_not_complete() {
    let o = run_scripted(started_late(), &["holders", &user_hive(), "--strict"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert!(
        o.out.contains(&format!(
            r"Process 2040 (C:\Program Files\Contoso\Policy Agent\agent.exe) has opened key HKU\{SID}\Software\Policies (open before tracking started)"
        )),
        "{}",
        o.out
    );
    assert!(
        o.out.contains("1 of them not in hivetrack's records"),
        "{}",
        o.out
    );
    let o = run_scripted(started_late(), &["holders", &user_hive(), "--fail-if-held"]);
    assert_eq!(
        o.code,
        exit::HELD,
        "held, if only by keys the driver never saw"
    );
    // CSV has the key too, as a row marked untracked (found in review, 2026-12-05: CSV left
    // such keys out, so this hive came out as a bare header).
    let o = run_scripted(started_late(), &["--csv", "holders", &user_hive()]);
    let rows: Vec<&str> = o.out.lines().collect();
    assert!(
        rows[0].ends_with(",tracked,name_truncated,image_truncated,deleted"),
        "{}",
        o.out
    );
    assert_eq!(rows.len(), 2, "{}", o.out);
    assert!(
        rows[1].starts_with(r"2040,,C:\Program Files\Contoso\Policy Agent\agent.exe,,1,")
            && rows[1].contains(&format!(r"\REGISTRY\USER\{SID}\Software\Policies"))
            && rows[1].ends_with(",false,,false,"),
        "{}",
        o.out
    );
    let o = run_scripted(started_late(), &["holders", &user_hive(), "--json"]);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert!(!r.source.complete);
    assert_eq!(r.untracked.len(), 1);
    assert_eq!(r.untracked[0].pid, 2040);
    // The hive's counts include the keys only the kernel lists (found in review, 2026-12-05:
    // they said 0 keys held by 0 processes, which a script reads as free).
    assert_eq!((r.hive.open_keys, r.hive.holders), (1, 1), "{:?}", r.hive);
    let c = r.source.coverage.unwrap();
    assert_eq!(
        (c.kernel_open_keys, c.untracked_keys, c.reconciled),
        (Some(1), 1, false)
    );
}

/// The logoff scenario with the agent's key released, plus key objects only the kernel lists
/// (pid, key under the user's `Software`); the agent's image known as pid 2040's.
fn kernel_only(keys: &[(u64, &str)]) -> Scripted {
    // Loaded before tracking started, as `started_late`.
    let mut server = hivetrack_cli::scripted::logoff_released_loaded_before_tracking();
    server.kernel_extra = keys
        .iter()
        .map(|(pid, k)| (*pid, format!(r"\REGISTRY\USER\{SID}\Software\{k}")))
        .collect();
    let mut s = Scripted::new(server);
    s.images = vec![(2040, hivetrack_cli::scripted::AGENT.to_owned())];
    s
}

/// A leak from before tracking: the kernel lists one key object per open, and `holders`
/// printed one identical line per object (65,602 for the audit's leak). Grouped by name with
/// a count, in text and JSON, the per-object list kept (audit 23b, H1).
#[test]
fn keys_opened_before_tracking_are_grouped_by_name_with_a_count() {
    let leaked = format!(r"\REGISTRY\USER\{SID}\Software\Sync\State");
    let other = format!(r"\REGISTRY\USER\{SID}\Software\Policies");
    let scripted = || {
        kernel_only(&[
            (2040, r"Sync\State"),
            (2040, "Policies"),
            (2040, r"Sync\State"),
            (2040, r"Sync\State"),
        ])
    };
    let o = run_scripted(scripted(), &["holders", &user_hive()]);
    let lines: Vec<&str> = o
        .out
        .lines()
        .filter(|l| l.contains(r"\Software\Sync\State"))
        .collect();
    assert_eq!(
        lines,
        [format!(
            r"Process 2040 (C:\Program Files\Contoso\Policy Agent\agent.exe) has opened key HKU\{SID}\Software\Sync\State 3 times (open before tracking started)"
        )],
        "{}",
        o.out
    );
    assert!(
        o.out.contains(&format!(
            r"has opened key HKU\{SID}\Software\Policies (open before tracking started)"
        )),
        "{}",
        o.out
    );
    let o = run_scripted(scripted(), &["holders", &user_hive(), "--json"]);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let u = &r.untracked[0];
    assert_eq!((u.open_keys, u.keys.len()), (4, 4), "{u:?}");
    let counts: Vec<(&str, u64)> = u
        .key_counts
        .iter()
        .map(|k| (k.name.as_str(), k.count))
        .collect();
    assert_eq!(counts, [(other.as_str(), 1), (leaked.as_str(), 3)], "{u:?}");
    // `--grouped` (audit 23b, M3): the kernel's per-object list is left out, its groups and
    // the completeness stay.
    let o = run_scripted(
        scripted(),
        &["holders", &user_hive(), "--json", "--grouped"],
    );
    let g: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let gu = &g.untracked[0];
    assert!(g.grouped && gu.keys.is_empty(), "{gu:?}");
    assert_eq!((gu.open_keys, &gu.key_counts), (u.open_keys, &u.key_counts));
    assert_eq!((&g.source, &g.verdict), (&r.source, &r.verdict));
    assert!(
        !g.source.complete,
        "still incomplete: keys from before tracking"
    );
}

/// `kernel_only` whose driver counted 2,598 opens of pid 2040, start key `start_key`, as
/// refused for its memory share.
fn refused_at_2040(start_key: u64) -> Scripted {
    let mut s = kernel_only(&[(2040, "Policies")]);
    let server = &mut s.states[0];
    let mut v = [0u64; protocol::stats::Stats::FIELD_COUNT];
    for (name, value) in protocol::stats::Stats::NAMES.iter().zip(v.iter_mut()) {
        *value = match *name {
            "opens_dropped_process_share" | "top_dropper_drops" => 2_598,
            "top_dropper_pid" => 2040,
            "top_dropper_start_key" => start_key,
            _ => 0,
        };
    }
    server.stats = Some(protocol::stats::Stats::from_values(v));
    server.not_recorded = 2_598;
    s
}

/// Review 23d, M1: the driver names the refused process for the whole run, exited or not; a
/// process refused earlier (another start key) is not the one at pid 2040 now, and neither
/// listing blames it.
#[test]
fn a_refused_process_no_longer_running_is_not_blamed_on_its_pid() {
    let line = "process 2040 hit its memory share";
    let o = run_scripted(refused_at_2040(77), &["processes"]);
    assert!(!o.out.contains(line), "{}", o.out);
    let o = run_scripted(refused_at_2040(77), &["holders", &user_hive()]);
    assert!(!o.out.contains(line), "{}", o.out);
}

/// The driver's counters name the process whose opens were dropped for its memory share:
/// `processes` and `holders` say so where the user looks, and `holders` no longer calls its
/// keys only the kernel lists "open before tracking started, or lost" (audit 23b, M1: only
/// `stats` named it).
#[test]
fn a_process_past_its_memory_share_is_named_under_processes_and_holders() {
    // The scripted agent's start key (`scripted`: 0x100 + pid).
    let scripted = || refused_at_2040(0x100 + 2040);
    let line = "process 2040 hit its memory share (a quarter of `MemoryBudgetMiB`; the README gives one process's capacity): 2598 open(s) not recorded; its key count is a lower bound";
    let o = run_scripted(scripted(), &["processes"]);
    assert!(o.out.contains(line), "{}", o.out);
    let o = run_scripted(scripted(), &["holders", &user_hive()]);
    assert!(o.out.contains(line), "{}", o.out);
    assert!(
        o.out.contains(&format!(
            r"has opened key HKU\{SID}\Software\Policies (not recorded: pid 2040 used its memory share, or open before tracking started)"
        )),
        "{}",
        o.out
    );
    let o = run_scripted(scripted(), &["processes", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    let s = &r.short_counts;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (
            s[0].pid,
            s[0].start_key,
            s[0].not_recorded,
            s[0].cause.as_str()
        ),
        (2040, 0x100 + 2040, 2_598, "memory_share")
    );
}

/// Review 23d, L5: with opens not recorded and the driver's counters unreadable, nobody can
/// be named as the refused process; `processes` and `holders` said nothing, as when nobody
/// was refused. They now say what they could not see.
#[test]
fn unreadable_counters_are_said_not_taken_for_no_refused_process() {
    let unreadable = || {
        let mut s = refused_at_2040(0x100 + 2040);
        s.states[0].stats = None;
        s
    };
    let said = |o: &common::Outcome| {
        o.out
            .contains("which process the 2598 open(s) not recorded belong to, so whose key count is a lower bound (the driver's counters could not be read")
    };
    for argv in [&["processes"][..], &["holders", &user_hive()]] {
        let o = run_scripted(unreadable(), argv);
        assert!(said(&o), "{argv:?}: {}", o.out);
        // With the counters read, the process is named and no such line is printed.
        let o = run_scripted(refused_at_2040(0x100 + 2040), argv);
        assert!(!said(&o), "{argv:?}: {}", o.out);
        assert!(
            o.out.contains("process 2040 hit its memory share"),
            "{}",
            o.out
        );
    }
    // `holders` also reads the process list to name only a refused process still running:
    // unreadable, nobody is named and that is said too.
    let mut s = refused_at_2040(0x100 + 2040);
    s.states[0].processes = None;
    let o = run_scripted(s, &["holders", &user_hive(), "--json"]);
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert!(r.short_counts.is_empty(), "{:?}", r.short_counts);
    assert!(
        r.source
            .missing
            .iter()
            .any(|m| m.starts_with("which process the 2598")
                && m.contains("the process list could not be read")),
        "{:?}",
        r.source.missing
    );
    let o = run_scripted(unreadable(), &["processes", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    assert!(r.short_counts.is_empty() && !r.source.complete);
    assert!(
        r.source
            .missing
            .iter()
            .any(|m| m.starts_with("which process the 2598")),
        "{:?}",
        r.source.missing
    );
}

/// Review 24b, LOW-6: with opens not recorded somewhere and the driver's counters
/// unreadable, a hive whose report reconciled (the kernel lists no key without a record) or
/// that nothing holds was made "incomplete" (`--strict` exit 4, verdict
/// `none_seen_incomplete` for a free hive), though no key count in it can be a lower bound:
/// a refused process's key here would be listed by the kernel without a record. Old code:
/// both cases fail.
#[test]
fn unreadable_counters_leave_a_reconciled_or_free_hive_as_it_was() {
    for (case, server) in [
        (
            "held, reconciled",
            logoff as fn() -> hivetrack_cli::page_server::Server,
        ),
        ("free", hivetrack_cli::scripted::logoff_released),
    ] {
        let report = |counters: bool| {
            let mut s = server();
            s.not_recorded = 3;
            if !counters {
                s.stats = None;
            }
            let o = run_on(s, &["holders", &user_hive(), "--json"]);
            let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
            r
        };
        let (read, unread) = (report(true), report(false));
        assert!(
            read.source.coverage.as_ref().is_some_and(|c| c.reconciled),
            "{case}: {:?}",
            read.source
        );
        assert_eq!(
            (unread.source.complete, unread.verdict),
            (read.source.complete, read.verdict),
            "{case}: {:?}",
            unread.source.missing
        );
    }
}

/// Review 23d, L7: `holders --pid N --csv` printed only N's rows with no mark of the filter
/// (the table and JSON's `pid_filter` have one); CSV says it beside its source line.
#[test]
fn holders_pid_csv_says_its_rows_are_filtered() {
    let scripted = || kernel_only(&[(2040, "Policies"), (3111, "Other")]);
    let o = run_scripted(
        scripted(),
        &["holders", &user_hive(), "--pid", "3111", "--csv"],
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(!o.out.contains("Policies"), "{}", o.out);
    assert!(
        o.err.contains("hivetrack: rows filtered (--pid 3111): only the keys process 3111 opened or holds now; the hive's counts and verdict are the whole hive's"),
        "{}",
        o.err
    );
    let o = run_scripted(scripted(), &["holders", &user_hive(), "--csv"]);
    assert!(!o.err.contains("rows filtered"), "{}", o.err);
}

/// `holders HIVE --pid N` lists only that process's keys, tracked and kernel-only; the
/// hive's counts and the verdict stay the whole hive's, so a pid holding nothing does not make
/// the hive free (audit 23b, M6: no pid filter on the live reports).
#[test]
fn holders_pid_lists_one_process_and_keeps_the_whole_hives_verdict() {
    let scripted = || kernel_only(&[(2040, "Policies"), (3111, "Other")]);
    let o = run_scripted(scripted(), &["holders", &user_hive(), "--pid", "3111"]);
    assert!(o.out.contains(r"\Software\Other"), "{}", o.out);
    assert!(!o.out.contains(r"\Software\Policies"), "{}", o.out);
    assert!(
        o.out
            .contains("Listed below: the keys process 3111 opened or holds now (--pid; an opener listed for a key it gave to 3111 is shown whole); the counts above are the whole hive's\n"),
        "{}",
        o.out
    );
    let o = run_scripted(
        scripted(),
        &["holders", &user_hive(), "--pid", "3111", "--json"],
    );
    let r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(r.pid_filter, Some(3111));
    let pids: Vec<u64> = r.untracked.iter().map(|u| u.pid).collect();
    assert_eq!(pids, [3111]);
    assert_eq!(r.hive.open_keys, 2, "{:?}", r.hive);
    let o = run_scripted(
        scripted(),
        &["holders", &user_hive(), "--pid", "9999", "--fail-if-held"],
    );
    assert_eq!(o.code, exit::HELD, "{}", o.out);
    assert!(
        o.out.contains("the keys process 9999 opened or holds now (--pid; an opener listed for a key it gave to 9999 is shown whole); the counts above are the whole hive's: it holds none that the report sees"),
        "{}",
        o.out
    );
}

/// `processes --kernel`: a process holding only keys opened before tracking started was in
/// no listing; it asks every loaded hive's kernel list and counts them per process (audit
/// 23b, H1).
#[test]
fn processes_kernel_lists_a_process_holding_only_keys_from_before_tracking() {
    let scripted = || kernel_only(&[(3111, "Other"), (3111, "Other")]);
    let o = run_scripted(scripted(), &["processes"]);
    assert!(!o.out.contains("3111"), "{}", o.out);
    let o = run_scripted(scripted(), &["processes", "--kernel", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {}{}", o.out, o.err));
    let k = r.kernel_only.unwrap();
    let rows: Vec<(u64, u64, u64)> = k.iter().map(|p| (p.pid, p.open_keys, p.hives)).collect();
    assert_eq!(rows, [(3111, 2, 1)], "{:?}", r.source.missing);
    // No CSV form for the second list: refused, not left out silently.
    let o = run_scripted(scripted(), &["--csv", "processes", "--kernel"]);
    assert_eq!(o.code, exit::BAD_ARGUMENTS, "{}{}", o.out, o.err);
    let o = run_scripted(scripted(), &["processes", "--kernel"]);
    assert!(
        o.out
            .contains("--kernel: keys the kernel lists that the driver has no record of"),
        "{}",
        o.out
    );
}

#[test]
fn wait_never_says_free_while_the_kernel_lists_keys() {
    let o = run_scripted(started_late(), &["wait", &user_hive(), "--timeout", "1"]);
    assert_eq!(o.code, exit::HELD, "{}{}", o.out, o.err);
    assert!(
        o.out
            .contains("still held after 1.0s: 1 open key(s) by 1 process(es)"),
        "{}",
        o.out
    );
}

#[test]
fn without_the_kernel_list_nothing_is_complete() {
    let mut s = Scripted::new(logoff());
    s.no_kernel = true;
    let o = run_scripted(s, &["holders", &user_hive(), "--strict"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert!(
        o.out
            .contains("keys opened before tracking started cannot be ruled out"),
        "{}",
        o.out
    );
}

/// A verdict a script acts on is never "not held" or "free" when the answer could not see
/// everything: `--fail-if-held` and `wait` exit 4 then, `--strict` or not (until
/// 2026-12-05 they exited 0, and a script gated on them went on as if the hive were free).
/// Held stays held however incomplete the answer (what it saw is held).
#[test]
fn a_not_held_verdict_that_could_not_see_everything_exits_4() {
    let blind = || {
        let mut s = Scripted::new(logoff_released());
        s.no_kernel = true;
        s
    };
    let o = run_scripted(blind(), &["holders", &user_hive(), "--fail-if-held"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    let o = run_scripted(blind(), &["wait", &user_hive(), "--timeout", "1"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert!(
        o.out
            .contains("no open key seen after 0.0s (poll), but the answer is incomplete"),
        "{}",
        o.out
    );
    // JSON and CSV say it too: until 2026-12-06 `free` was true here, and a script reading
    // `.free` went on (audit 20b, M1).
    let o = run_scripted(blind(), &["--json", "wait", &user_hive(), "--timeout", "1"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}", o.err);
    let r: hivetrack_cli::model::WaitReport = serde_json::from_str(&o.out).unwrap();
    assert_eq!(
        (r.free, r.verdict),
        (false, WaitVerdict::NoneSeenIncomplete)
    );
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(v["verdict"], "none_seen_incomplete");
    let o = run_scripted(blind(), &["--csv", "wait", &user_hive(), "--timeout", "1"]);
    let rows: Vec<&str> = o.out.lines().collect();
    assert!(rows[0].ends_with(",verdict"), "{}", o.out);
    assert!(
        rows[1].starts_with(&format!(r"HKU\{SID},false,"))
            && rows[1].ends_with(",none_seen_incomplete"),
        "{}",
        o.out
    );
    // The holders headline does not read as free either (audit 20b, L2).
    let o = run_scripted(blind(), &["holders", &user_hive()]);
    assert!(
        o.out
            .contains("No open key seen, but the answer is incomplete: it may still be held"),
        "{}",
        o.out
    );
    assert!(!o.out.contains("0 open key(s) held by 0"), "{}", o.out);
    // No verdict asked: the report is printed, incomplete, and that is not a failure.
    let o = run_scripted(blind(), &["holders", &user_hive()]);
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    // Complete: free is free.
    let o = run_scripted(
        Scripted::new(logoff_released()),
        &["holders", &user_hive(), "--fail-if-held"],
    );
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    let mut held = Scripted::new(logoff());
    held.no_kernel = true;
    let o = run_scripted(held, &["holders", &user_hive(), "--fail-if-held"]);
    assert_eq!(o.code, exit::HELD, "{}{}", o.out, o.err);
    // The holders JSON carries the same verdict in one word (audit 20b, J).
    let verdict = |s: Scripted| {
        let o = run_scripted(s, &["--json", "holders", &user_hive()]);
        let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
        v["verdict"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(verdict(blind()), "none_seen_incomplete");
    assert_eq!(verdict(Scripted::new(logoff_released())), "free");
    let mut held = Scripted::new(logoff());
    held.no_kernel = true;
    assert_eq!(verdict(held), "held");
}

/// A driver whose only holders answer is for the profile: its page's counters `counts`
/// (open keys, holders), and, when `holder` is given (its flags and image), that process
/// (pid 2040) holding `Software\Policies`; no kernel-only keys.
fn profile_holders(counts: (u64, u32), holder: Option<(u32, &str)>) -> Server {
    let nt = format!(r"\REGISTRY\USER\{SID}");
    let mount: Vec<u16> = nt.encode_utf16().collect();
    let name: Vec<u16> = format!(r"{nt}\Software\Policies").encode_utf16().collect();
    let now = hivetrack_cli::scripted::NOW;
    let prefix = HoldersPrefix {
        hive_id: 7,
        state: HiveState::Loaded,
        kind: HiveKind::Regular,
        open_keys: counts.0,
        holders: counts.1,
        flags: 0,
        mount: Text::Units(&mount),
        file: Text::EMPTY,
        completeness: Completeness {
            tracking_since: now - 3600 * hivetrack_cli::scripted::SECOND,
            ..Completeness::default()
        },
    };
    let image: Vec<u16> = holder.map_or("", |h| h.1).encode_utf16().collect();
    let processes: Vec<(HolderProcess<'_>, Vec<HolderKey<'_>>)> = holder
        .map(|(flags, _)| {
            let process = HolderProcess {
                flags,
                pid: 2040,
                start_key: 0x900,
                open_keys: 1,
                oldest_open: now,
                image: Text::Units(&image),
            };
            let key = HolderKey {
                flags: 0,
                id: 0x1_0000_0001,
                thread: 1,
                open_time: now,
                access: 0x2_0019,
                handle_opens: 1,
                handle_closes: 0,
                stack: 0,
                name: Text::Units(&name),
            };
            (process, vec![key])
        })
        .into_iter()
        .collect();
    let mut s = logoff();
    s.holders = vec![(mount.clone(), Listing::holders(&prefix, &processes))];
    s.kernel_extra = Vec::new();
    s
}

/// Found in review (2026-12-05): `wait` decided "free" from the holders page's counters,
/// which the driver reads before the walk that lists the holders: an open in between was
/// listed (and matched to the kernel's entry, so not untracked) while the counters said 0,
/// and the wait answered free, complete, exit 0.
#[test]
fn a_holder_listed_after_the_counters_were_read_keeps_the_hive_held() {
    let s = profile_holders((0, 0), Some((0, r"C:\agent.exe")));
    let o = run_on(s, &["--json", "wait", "HKCU", "--timeout", "1"]);
    let r: hivetrack_cli::model::WaitReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert!(!r.free, "{r:?}");
    assert_eq!((r.open_keys, r.holders), (1, 1), "{r:?}");
    assert_eq!(o.code, exit::HELD, "{}", o.err);
}

/// Found in review (2026-12-05): a holders page whose counters say a key is open (read before
/// the walk) but whose walk lists nobody (the key closed in between) printed "1 open key(s)
/// held by 1 process(es)" while `--fail-if-held` exited 0: the exit now follows the report.
#[test]
fn fail_if_held_follows_the_reports_counts() {
    let s = profile_holders((1, 1), None);
    let o = run_on(s, &["holders", "HKCU", "--fail-if-held"]);
    assert!(
        o.out.contains("1 open key(s) held by 1 process(es)"),
        "{}",
        o.out
    );
    assert_eq!(o.code, exit::HELD, "{}{}", o.out, o.err);
}

/// Found in review (2026-12-05): a key only the kernel lists was attributed to whatever
/// process had its pid now. With nothing lost such a key was opened before tracking
/// started, so a process created after that is not its opener: no image is named for it.
#[test]
fn a_pid_reused_since_tracking_started_is_not_named_as_the_opener() {
    let json = |s: Scripted| -> hivetrack_cli::model::HoldersReport {
        let o = run_scripted(s, &["--json", "holders", &user_hive()]);
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err))
    };
    let now = hivetrack_cli::scripted::NOW;
    // Running since before tracking: it may be the opener, and is named.
    let mut s = started_late();
    s.started = vec![(2040, now - 24 * 3600 * hivetrack_cli::scripted::SECOND)];
    let r = json(s);
    assert_eq!(
        r.untracked[0].image.as_deref(),
        Some(hivetrack_cli::scripted::AGENT)
    );
    // Created after tracking started: another process that got the pid.
    let mut s = started_late();
    s.started = vec![(2040, now)];
    let r = json(s);
    assert_eq!(r.untracked[0].pid, 2040);
    assert_eq!(r.untracked[0].image, None, "{:?}", r.untracked);
}

/// Found in review (2026-12-05): with opens lost, the check above was skipped, so a key only
/// the kernel lists was attributed to whatever process had the pid now, and the table
/// called it "open before tracking started" though it may be a lost open.
#[test]
fn with_opens_lost_a_later_process_at_the_pid_is_not_named_either() {
    let lossy = |started: u64| {
        let mut server = hivetrack_cli::scripted::logoff_released_lossy();
        server.kernel_extra = vec![(2040, format!(r"\REGISTRY\USER\{SID}\Software\Policies"))];
        let mut s = Scripted::new(server);
        s.images = vec![(2040, hivetrack_cli::scripted::AGENT.to_owned())];
        s.started = vec![(2040, started)];
        s
    };
    let now = hivetrack_cli::scripted::NOW;
    let o = run_scripted(lossy(now), &["--json", "holders", &user_hive()]);
    let r: hivetrack_cli::model::HoldersReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert_eq!(r.untracked[0].image, None, "{:?}", r.untracked);
    let o = run_scripted(lossy(now), &["holders", &user_hive()]);
    assert!(
        o.out.contains(&format!(
            r"Process 2040 (image unknown) has opened key HKU\{SID}\Software\Policies (open before tracking started, or lost)"
        )),
        "{}",
        o.out
    );
    // Running since before tracking: it may be the opener, and is named.
    let day = 24 * 3600 * hivetrack_cli::scripted::SECOND;
    let o = run_scripted(lossy(now - day), &["holders", &user_hive()]);
    assert!(
        o.out.contains(
            r"Process 2040 (C:\Program Files\Contoso\Policy Agent\agent.exe) has opened key"
        ),
        "{}",
        o.out
    );
}

/// Found in review (2026-12-05): `hives` listed a hive held only by keys opened before
/// tracking began as 0 open keys, "complete", so a script reading it took the hive for free.
/// A hive loaded before tracking began (or at an unknown time) or an application hive now
/// has `counts_complete` false, and the listing says what it cannot see.
#[test]
fn hives_loaded_before_tracking_do_not_claim_complete_counts() {
    let now = hivetrack_cli::scripted::NOW;
    let since = hivetrack_cli::scripted::TRACKING_SINCE;
    let mut s = with_hives(&[
        (7, &format!(r"\REGISTRY\USER\{SID}"), 0, HiveKind::Regular),
        (9, LATE_HIVE, now, HiveKind::Regular),
        (
            10,
            r"\REGISTRY\A\{6B656D75-0000-4000-8000-000000000001}",
            now,
            HiveKind::App,
        ),
    ]);
    assert!(now > since);
    let o = run_on(s.clone(), &["--json", "hives", "--strict"]);
    let r: hivetrack_cli::model::HivesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    let complete: Vec<(u32, Option<bool>)> =
        r.hives.iter().map(|h| (h.id, h.counts_complete)).collect();
    assert_eq!(
        complete,
        [(7, Some(false)), (9, Some(true)), (10, Some(false))]
    );
    assert!(!r.source.complete, "{:?}", r.source);
    assert_eq!(o.code, exit::INCOMPLETE, "{}", o.err);
    let o = run_on(s.clone(), &["hives"]);
    assert!(o.out.contains("0*"), "{}", o.out);
    assert!(
        o.out.contains("* loaded before tracking started"),
        "{}",
        o.out
    );
    // With opens lost, no hive's counts can be complete, however late it was loaded
    // (review 16: the flag said true for it).
    s.not_recorded = 17;
    let o = run_on(s, &["--json", "hives"]);
    let r: hivetrack_cli::model::HivesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert!(
        r.hives.iter().all(|h| h.counts_complete == Some(false)),
        "{:?}",
        r.hives
    );
}

/// Another user's hive, loaded after tracking began in the tests below.
const LATE_HIVE: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1002";

/// The logoff driver listing `hives` as `(id, mount, loaded_time, kind)`, all loaded.
fn with_hives(hives: &[(u32, &str, u64, HiveKind)]) -> hivetrack_cli::page_server::Server {
    use protocol::hives::HiveRecord;
    let mut s = logoff();
    let mut l = Listing::new(&protocol::page::NoPrefix);
    for &(id, mount, loaded_time, kind) in hives {
        let units: Vec<u16> = mount.encode_utf16().collect();
        l.push(&HiveRecord {
            id,
            state: HiveState::Loaded,
            kind,
            open_keys: 0,
            holders: 0,
            flags: 0,
            loaded_time,
            mount: Text::Units(&units),
            file: Text::EMPTY,
        });
    }
    s.hives = Some(l);
    s
}

/// A driver listing the profile hive loaded at `loaded_time` (0: before tracking, or not
/// known) and another user's hive loaded now (after tracking began).
fn two_hives(loaded_time: u64) -> hivetrack_cli::page_server::Server {
    let now = hivetrack_cli::scripted::NOW;
    with_hives(&[
        (
            7,
            &format!(r"\REGISTRY\USER\{SID}"),
            loaded_time,
            HiveKind::Regular,
        ),
        (9, LATE_HIVE, now, HiveKind::Regular),
    ])
}

/// Audit 20b, M3: `processes` said "complete" (and `--strict` exited 0) while a hive it
/// covers was loaded before tracking began, so a process holding only keys opened before is
/// not listed; `hives --strict` on the same driver exited 4.
#[test]
fn processes_are_not_complete_while_a_hive_was_loaded_before_tracking() {
    let now = hivetrack_cli::scripted::NOW;
    let o = run_on(two_hives(0), &["--json", "processes", "--strict"]);
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    let r: hivetrack_cli::model::ProcessesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert!(!r.source.complete, "{:?}", r.source);
    assert!(
        r.source.missing.iter().any(|m| m
            .contains("processes holding only keys opened before tracking started (in 1 hive(s)")),
        "{:?}",
        r.source.missing
    );
    let o = run_on(two_hives(0), &["processes"]);
    assert!(!o.out.contains(", complete"), "{}", o.out);
    // Said as INCOMPLETE, not as something "not available from this backend" (audit 20b, L5).
    assert!(
        o.out
            .contains(", INCOMPLETE: could not see processes holding only keys opened before"),
        "{}",
        o.out
    );
    assert!(
        !o.out.contains("not available from this backend"),
        "{}",
        o.out
    );
    // Every hive loaded since tracking began: the listing can be complete.
    let o = run_on(two_hives(now), &["--json", "processes", "--strict"]);
    assert_eq!(o.code, exit::OK, "{}{}", o.out, o.err);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    assert!(r.source.complete, "{:?}", r.source);
}

/// The scripted driver, but its event stream refuses every request as a driver whose 32
/// waits are taken does (`STATUS_INSUFFICIENT_RESOURCES`, driver/src/waiters.rs).
struct StreamRefused(Scripted);

impl Transport for StreamRefused {
    fn backend(&self) -> &'static str {
        "scripted"
    }
    fn ioctl(&mut self, code: u32, input: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        if code == protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS {
            return Err(TransportError::Request {
                code: hivetrack_cli::transport::ERROR_NO_SYSTEM_RESOURCES,
            });
        }
        self.0.ioctl(code, input, out)
    }
}

/// Audit 20b, L1: when the event stream's prefix (since when tracking runs) could not be read,
/// `hives` and `processes` dropped every caveat: no `*`, `counts_complete` null, complete.
#[test]
fn listings_whose_tracking_start_cannot_be_read_are_not_complete() {
    let refused = |s: hivetrack_cli::page_server::Server| {
        let mut once = Some(StreamRefused(Scripted::new(s)));
        move |_| {
            once.take()
                .map(|t| Box::new(t) as Box<dyn Transport>)
                .ok_or(TransportError::DriverUnavailable)
        }
    };
    let now = hivetrack_cli::scripted::NOW;
    let o = run_with(
        &["--json", "hives", "--strict"],
        refused(two_hives(now)),
        &Contoso,
    );
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    let r: hivetrack_cli::model::HivesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert!(!r.source.complete, "{:?}", r.source);
    assert!(
        r.hives.iter().all(|h| h.counts_complete == Some(false)),
        "{:?}",
        r.hives
    );
    let o = run_with(&["hives"], refused(two_hives(now)), &Contoso);
    assert!(o.out.contains("0*"), "{}", o.out);
    let o = run_with(
        &["processes", "--strict"],
        refused(two_hives(now)),
        &Contoso,
    );
    assert_eq!(o.code, exit::INCOMPLETE, "{}{}", o.out, o.err);
    assert!(
        o.out.contains("when it started could not be read"),
        "{}",
        o.out
    );
}

/// Review 16: a key only the kernel lists took its image from the driver's record of the
/// holder at that pid even when that copy was cut short, in rows that carry no mark for it
/// (CSV `image_truncated` false). The whole path is looked up instead.
#[test]
fn a_kernel_only_key_never_shows_a_cut_image() {
    let nt = format!(r"\REGISTRY\USER\{SID}");
    let mut s = profile_holders(
        (1, 1),
        Some((HolderProcess::IMAGE_TRUNCATED, r"C:\Program Files\Con")),
    );
    s.kernel_extra = vec![(2040, format!(r"{nt}\Console"))];
    let mut t = Scripted::new(s);
    t.images = vec![(2040, hivetrack_cli::scripted::AGENT.to_owned())];
    let o = run_scripted(t, &["--json", "holders", &user_hive()]);
    let r: hivetrack_cli::model::HoldersReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {} {}", o.out, o.err));
    assert_eq!(
        r.untracked[0].image.as_deref(),
        Some(hivetrack_cli::scripted::AGENT),
        "{:?}",
        r.untracked
    );
}

/// Review 23d, H1: `holders --pid N` kept only the keys N opened, so a process holding a key
/// only through a handle duplicated or inherited into it (`held_now_by`) read "holds none
/// that the report sees" while the full report said "held now by process N". The opener's
/// entry is kept for it.
#[test]
fn holders_pid_keeps_a_key_held_now_by_the_pid_through_a_duplicated_handle() {
    let o = run_on(
        hivetrack_cli::scripted::logoff(),
        &["holders", &user_hive(), "--json"],
    );
    let mut r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let opener = r.holders[0].pid;
    let given_to = 9_999;
    assert!(r.holders.iter().all(|h| h.pid != given_to));
    r.holders[0].keys[0].held_now_by = Some(vec![given_to]);
    hivetrack_cli::app::keep_pid(&mut r, given_to);
    let pids: Vec<u64> = r.holders.iter().map(|h| h.pid).collect();
    assert_eq!(
        pids,
        [opener],
        "the opener's entry names the key {given_to} holds now"
    );
    assert_eq!(r.pid_filter, Some(given_to));
    hivetrack_cli::app::keep_pid(&mut r, 12_345);
    assert!(r.holders.is_empty(), "a pid holding nothing keeps nothing");
}

/// Review 24b, MED-1: the table of a key opened three times whose objects are held now by
/// the opener (one), by no process hivetrack could examine (two) and, through a duplicated
/// handle, by another process too: the union read "held now by the opener and 9" once, so
/// the two objects nobody holds went unsaid (killing the opener does not free the hive). Old
/// code: 2 checks fail.
#[test]
fn holders_table_says_how_many_objects_no_process_holds_now() {
    let o = run_on(
        hivetrack_cli::scripted::logoff(),
        &["holders", &user_hive(), "--json"],
    );
    let mut r: hivetrack_cli::model::HoldersReport = serde_json::from_str(&o.out).unwrap();
    let opener = r.holders[0].pid;
    let first = r.holders[0].keys[0].clone();
    let mut keys = Vec::new();
    for (id, by) in [
        (1, vec![opener]),
        (2, vec![]),
        (3, vec![]),
        (4, vec![9, opener]),
    ] {
        let mut k = first.clone();
        k.id = id;
        k.held_now_by = Some(by);
        keys.push(k);
    }
    r.holders[0].keys = keys;
    r.holders.truncate(1);
    let table = hivetrack_cli::render::holders(&r, hivetrack_cli::render::Format::Table).unwrap();
    assert!(
        table.contains(&format!(
            "these 2 are held by no process hivetrack could examine now (a kernel reference): closing process {opener} does not free them"
        )),
        "{table}"
    );
    // Review 24c, MED 1: with handles left unexamined (a protected process's, perhaps the
    // opener's own), closing the opener may free them: the table must not say otherwise.
    if let Some(c) = r.held_now.as_mut() {
        c.handles_not_examined = 2;
    }
    let unsure = hivetrack_cli::render::holders(&r, hivetrack_cli::render::Format::Table).unwrap();
    assert!(
        r.held_now.is_some()
            && !unsure.contains("does not free them")
            && unsure.contains("2 handle(s) could not be examined"),
        "{unsure}"
    );
    // Three groups (1, 2 and 1 objects), not one of 4 held by the union.
    assert!(
        !table.contains(" 4 times") && table.contains(" 2 times"),
        "{table}"
    );
    assert!(
        table.contains("held now by process 9 (image unknown), "),
        "{table}"
    );
}

/// Review 23d, M3: `processes --kernel` reconciles by counts per pid. A tracked key the driver
/// files under one process (System for a kernel handle, the attached process) and the kernel
/// under its opener is counted under the opener as without a record: the report must say it
/// may be one of those, not present it as a key opened before tracking and nothing more.
#[test]
fn processes_kernel_says_when_a_tracked_key_is_listed_under_another_process() {
    let scripted = || {
        let mut s = Scripted::new(logoff());
        // The agent's tracked key, as the kernel lists it: under pid 3111.
        s.kernel_opener = vec![(2040, 3111)];
        s
    };
    let o = run_scripted(scripted(), &["processes", "--kernel", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport =
        serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {}{}", o.out, o.err));
    let rows: Vec<(u64, u64)> = r
        .kernel_only
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.pid, p.open_keys))
        .collect();
    assert_eq!(rows, [(3111, 1)], "{:?}", r.source.missing);
    let doubt: Vec<&String> = r
        .source
        .missing
        .iter()
        .filter(|m| m.contains("filed under another process than the kernel names"))
        .collect();
    assert_eq!(doubt.len(), 1, "{:?}", r.source.missing);
    assert!(
        doubt[0].contains(&format!(r"1 key(s) the driver tracks in HKU\{SID}")),
        "{doubt:?}"
    );
    assert!(!r.source.complete);
    let o = run_scripted(scripted(), &["processes", "--kernel"]);
    assert!(
        o.out
            .contains("--kernel may count them as without a record"),
        "{}",
        o.out
    );
    // Without the mismatch, no such doubt.
    let o = run_scripted(
        Scripted::new(logoff()),
        &["processes", "--kernel", "--json"],
    );
    assert!(!o.out.contains("filed under another process"), "{}", o.out);
}

/// Review 23d, H2: a hive whose kernel list cannot be read (every `\REGISTRY\A` app hive, any
/// failure of the query) answered with nothing in it, and `processes --kernel` took that for
/// a hive with no such key: "no loaded hive's kernel list has a key …", the hive unnamed.
#[test]
fn processes_kernel_names_the_hives_whose_list_could_not_be_read() {
    let unreadable = || {
        let mut s = Scripted::new(logoff());
        s.no_kernel = true;
        s
    };
    let o = run_scripted(unreadable(), &["processes", "--kernel"]);
    assert!(!o.out.contains("no loaded hive's kernel list"), "{}", o.out);
    assert!(o.out.contains("lists could not be read"), "{}", o.out);
    let o = run_scripted(unreadable(), &["processes", "--kernel", "--json"]);
    let r: hivetrack_cli::model::ProcessesReport = serde_json::from_str(&o.out).unwrap();
    assert!(
        r.source
            .missing
            .iter()
            .any(|m| m.starts_with("the kernel's list of open keys in")),
        "{:?}",
        r.source.missing
    );
}
