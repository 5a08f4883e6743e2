//! Holder identity (issue 16): the session, user and services of a running holder, looked
//! up by pid (on Windows, `windows_identity`; here a stand-in), in every output form; never
//! for a holder that has exited (its pid may be another process's by now), and not with
//! `--no-resolve`.

mod common;

use std::cell::RefCell;

use common::run_on_with_identities;
use hivetrack_cli::holder_identity::{Identities, Identity};
use hivetrack_cli::scripted::{
    EXITED_PID, LEAKY_PID, SID, SVCHOST_PID, Scripted, handle_leak, logoff_service_host,
};

/// Answers for the service host; records which pids were asked about.
#[derive(Default)]
struct StandIn {
    asked: RefCell<Vec<u64>>,
}

impl Identities for StandIn {
    fn identity_of(&self, pid: u64) -> Option<Identity> {
        self.asked.borrow_mut().push(pid);
        (pid == SVCHOST_PID).then(|| Identity {
            session: Some(0),
            user: Some(r"NT AUTHORITY\SYSTEM".to_owned()),
            services: Some(vec!["ProfSvc".to_owned(), "gpsvc".to_owned()]),
        })
    }
}

fn assert_nobody_asked(ids: &StandIn) {
    let asked = ids.asked.borrow();
    assert!(asked.is_empty(), "asked about {asked:?}");
}

fn run(argv: &[&str], ids: &StandIn) -> common::Outcome {
    run_on_with_identities(Scripted::new(logoff_service_host()), argv, ids)
}

#[test]
fn a_service_host_is_named_by_its_services_session_and_user() {
    let hive = format!(r"HKU\{SID}");
    let ids = StandIn::default();
    let o = run(&["holders", &hive], &ids);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.out.contains(
            r"Process 1188 (C:\Windows\System32\svchost.exe; services ProfSvc, gpsvc; session 0; NT AUTHORITY\SYSTEM) has opened key"
        ),
        "{}",
        o.out
    );
    assert!(
        o.out
            .contains(r"Process 5120 (C:\Windows\System32\rundll32.exe, exited) has opened key"),
        "the exited holder is not given anyone's identity: {}",
        o.out
    );
    assert_eq!(
        *ids.asked.borrow(),
        [SVCHOST_PID],
        "only running holders are looked up"
    );
    assert!(!ids.asked.borrow().contains(&EXITED_PID));
}

#[test]
fn json_and_csv_carry_the_identity() {
    let hive = format!(r"HKU\{SID}");
    let o = run(&["holders", &hive, "--json"], &StandIn::default());
    let v: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let holders = v["holders"].as_array().unwrap();
    let svchost = holders.iter().find(|h| h["pid"] == SVCHOST_PID).unwrap();
    assert_eq!(svchost["session"], 0);
    assert_eq!(svchost["user"], r"NT AUTHORITY\SYSTEM");
    assert_eq!(svchost["services"], serde_json::json!(["ProfSvc", "gpsvc"]));
    let exited = holders.iter().find(|h| h["pid"] == EXITED_PID).unwrap();
    assert!(exited["session"].is_null() && exited["user"].is_null());
    assert!(
        exited["services"].is_null(),
        "not looked up: unknown, not none"
    );

    let o = run(&["holders", &hive, "--csv"], &StandIn::default());
    let mut lines = o.out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("pid,start_key,image,exited,open_keys,session,user,services,key,"),
        "{header}"
    );
    let row = lines.find(|l| l.starts_with("1188,")).unwrap();
    assert!(
        row.contains(r",0,NT AUTHORITY\SYSTEM,ProfSvc;gpsvc,"),
        "{row}"
    );
}

#[test]
fn no_resolve_looks_nothing_up() {
    let hive = format!(r"HKU\{SID}");
    let ids = StandIn::default();
    let o = run(&["holders", &hive, "--no-resolve"], &ids);
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(ids.asked.borrow().is_empty());
    assert!(!o.out.contains("services"), "{}", o.out);
}

#[test]
fn processes_name_the_leaker_s_session_and_user() {
    // The 65,602-handle leaker: which session and account it runs in.
    struct Leaker;
    impl Identities for Leaker {
        fn identity_of(&self, pid: u64) -> Option<Identity> {
            (pid == LEAKY_PID).then(|| Identity {
                session: Some(2),
                user: Some(r"CONTOSO\bob".to_owned()),
                services: Some(Vec::new()),
            })
        }
    }
    let o = run_on_with_identities(
        Scripted::new(handle_leak()),
        &["processes", "--top", "2"],
        &Leaker,
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert!(
        o.out
            .contains(r"C:\Tools\leaky.exe [session 2; CONTOSO\bob]"),
        "{}",
        o.out
    );
}

/// The driverless fallback's source: one open key of pid 9.
struct Kernel;

impl hivetrack_cli::fallback::OpenSubKeys for Kernel {
    fn open_subkeys(
        &mut self,
        _: &str,
    ) -> Result<Vec<(u64, String)>, hivetrack_cli::transport::TransportError> {
        Ok(vec![(9, format!(r"\REGISTRY\USER\{SID}\Software"))])
    }
}

#[test]
fn the_fallback_s_openers_are_not_looked_up() {
    // NtQueryOpenSubKeysEx names each key's opener, which may have exited with its pid
    // handed out again; the fallback cannot tell, so nobody's identity is attached.
    let ids = StandIn::default();
    let o = common::run_with_identities(
        &[
            "holders",
            &format!(r"HKU\{SID}"),
            "--backend",
            "ntquery",
            "--json",
        ],
        |_| {
            Ok(Box::new(hivetrack_cli::fallback::FallbackTransport::new(
                Kernel,
            )))
        },
        &common::Contoso,
        &ids,
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_nobody_asked(&ids);
    assert!(o.out.contains("\"pid\": 9"), "{}", o.out);
}

#[test]
fn nobody_is_looked_up_when_the_driver_does_not_see_exits() {
    // Without its process notify routine the driver cannot mark a holder exited: a pid it
    // reports may be another process's by now, so no identity is attached.
    let mut server = logoff_service_host();
    if let Some(stats) = server.stats.as_mut() {
        stats.process_exits_tracked = 0;
    }
    let ids = StandIn::default();
    let o = run_on_with_identities(
        Scripted::new(server),
        &["holders", &format!(r"HKU\{SID}"), "--json"],
        &ids,
    );
    assert_eq!(o.code, 0, "{}", o.err);
    assert_nobody_asked(&ids);
}

/// Audit 20b, L6: `holders --summary` named an exited opener as the holder and did not say
/// that the handle table (who holds its keys now) was not read.
#[test]
fn a_summary_with_an_exited_holder_says_who_holds_now_was_not_read() {
    let hive = format!(r"HKU\{SID}");
    let o = run(&["holders", &hive, "--summary"], &StandIn::default());
    assert!(
        o.out
            .contains("this summary did not read the handle table: run without --summary"),
        "{}",
        o.out
    );
    // Without --summary the handle table is read, and the sentence is not needed.
    let o = run(&["holders", &hive], &StandIn::default());
    assert!(!o.out.contains("this summary did not read"), "{}", o.out);
}
