//! How the kernel's answer (`NtQueryOpenSubKeysEx`) is read, as Windows gives it.
//!
//! `wait` on a path below a hive asks the kernel and the unload history about the hive's
//! mount, never the path typed (review 21b, H1: a missing key below a loaded hive read as
//! "unloaded" made `wait` say free, exit 0). `holders` on a record still unload-pending
//! whose hive the kernel no longer has says it is unloaded (review 21b, L3: it said "the
//! hive is loaded", exit 4 with `--fail-if-held`). On the code before the fixes 2 of the 3
//! checks fail (the by-mount one is the control); `hives` lists such a record unloaded too
//! (fails on the old code).
mod common;

use std::rc::Rc;

use common::{Contoso, Engine, Heap, run_with};
use hivetrack_cli::scripted::{NOW, SECOND, SID};
use hivetrack_cli::transport::{
    ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_PARAMETER, Transport,
    TransportError,
};
use tracker::{Config, QueryError};

fn w(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

const AGENT: tracker::ProcessKey = tracker::ProcessKey {
    pid: 2040,
    start_key: 7,
};

/// The engine behind the IOCTLs; the kernel as Windows answers `NtQueryOpenSubKeysEx`:
/// only the hive's own mount is a hive root; a path below it that does not exist is
/// `STATUS_OBJECT_NAME_NOT_FOUND` (`ERROR_FILE_NOT_FOUND`), one that exists is
/// `STATUS_INVALID_PARAMETER`. The hive stays loaded (deferred unload pending) at every look.
struct Faithful {
    t: Rc<Engine>,
    mount: String,
    existing: Vec<String>,
}

impl Transport for Faithful {
    fn backend(&self) -> &'static str {
        "tracker"
    }
    fn ioctl(&mut self, code: u32, input: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        if code == protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS {
            let req =
                protocol::wire::decode::<protocol::events::EventsRequest>(input).map_err(|_| {
                    TransportError::Request {
                        code: ERROR_INVALID_PARAMETER,
                    }
                })?;
            return self.t.events(req.after, req.max_records, out).map_err(|_| {
                TransportError::Request {
                    code: ERROR_INSUFFICIENT_BUFFER,
                }
            });
        }
        self.t
            .answer(code, input, out, NOW)
            .map_err(|e| TransportError::Request {
                code: match e {
                    QueryError::BufferTooSmall { .. } => ERROR_INSUFFICIENT_BUFFER,
                    QueryError::UnknownHive => ERROR_FILE_NOT_FOUND,
                    _ => ERROR_INVALID_PARAMETER,
                },
            })
    }
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        Some(if hive.eq_ignore_ascii_case(&self.mount) {
            Ok(Vec::new())
        } else if self.existing.iter().any(|e| e.eq_ignore_ascii_case(hive)) {
            Err(TransportError::Os(std::io::Error::other(
                "NTSTATUS 0xc000000d: not a hive root",
            )))
        } else {
            Err(TransportError::Request {
                code: ERROR_FILE_NOT_FOUND,
            })
        })
    }
}

/// Profile loaded before tracking, unload deferred (`STATUS_PENDING`) while a tracked key was
/// open, the key closed since: the kernel still has the hive loaded.
fn unvouched_profile() -> Rc<Engine> {
    let t = Rc::new(Engine::new(Heap, Config::default()).expect("default config"));
    let profile = format!(r"\REGISTRY\USER\{SID}");
    t.hive_loaded(
        &w(&profile),
        &w(r"\??\C:\Users\kemu\NTUSER.DAT"),
        NOW - 70 * SECOND,
    );
    t.tracking_started(NOW - 60 * SECOND);
    let key = format!(r"{profile}\Software");
    let tok = t
        .opened(0x3000, AGENT, 1, &w(&key), 1, NOW - 40 * SECOND)
        .expect("tracked");
    let _ = t.unload_attempted(&w(&profile), 0x103, NOW - 10 * SECOND);
    t.hive_unload_pending(&w(&profile));
    t.handle_closed(tok, 0x3000);
    t.object_destroyed(tok, 0x3000);
    t
}

fn run(argv: &[&str]) -> common::Outcome {
    let t = unvouched_profile();
    let mount = format!(r"\REGISTRY\USER\{SID}");
    run_with(
        argv,
        move |_| {
            Ok(Box::new(Faithful {
                t: t.clone(),
                mount: mount.clone(),
                existing: vec![format!(r"\REGISTRY\USER\{SID}\Software")],
            }) as Box<dyn Transport>)
        },
        &Contoso,
    )
}

/// Control: named by its mount, the still-loaded hive is `unload_pending`, exit 1.
#[test]
fn by_mount_the_pending_unload_is_not_free() {
    let o = run(&["wait", &format!(r"HKU\{SID}"), "--timeout", "3", "--json"]);
    assert_eq!(o.code, hivetrack_cli::exit::HELD, "{}{}", o.out, o.err);
}

/// The CLI accepts a path below the hive ("the driver resolves any key path to the hive
/// containing it"), but `wait` asks the kernel about that path, not the hive's mount: a
/// key that does not exist is "not found", read as "the hive is unloaded", and the wait says
/// free (exit 0) while the hive is still loaded with its deferred unload pending.
#[test]
fn by_a_missing_subkey_the_pending_unload_is_not_free() {
    let o = run(&[
        "wait",
        &format!(r"HKU\{SID}\Software\NoSuchKey"),
        "--timeout",
        "3",
        "--json",
    ]);
    assert_ne!(o.code, hivetrack_cli::exit::OK, "{}{}", o.out, o.err);
}
/// Review 21b, L3: the driver's record is unload-pending, Windows no longer has the hive (deferred unload
/// completed, the driver's hive-list read has not run yet): `holders --fail-if-held` said the
/// hive is loaded and exited 4, though it is unloaded.
#[test]
fn holders_of_a_stale_pending_record_is_not_loaded() {
    let t = unvouched_profile();
    let o = run_with(
        &["holders", &format!(r"HKU\{SID}"), "--fail-if-held"],
        move |_| {
            Ok(Box::new(Faithful {
                t: t.clone(),
                mount: "gone".to_owned(),
                existing: Vec::new(),
            }) as Box<dyn Transport>)
        },
        &Contoso,
    );
    assert!(
        o.code == hivetrack_cli::exit::OK
            && !o.out.contains("the hive is loaded")
            && o.out.contains("Windows has unloaded the hive"),
        "code {}: {}",
        o.code,
        o.out
    );
}

/// Review 21b, L3, and review 21a, M1 (the CLI's half): `hives` lists a record still
/// unload-pending whose hive the kernel no longer has as unloaded, holding nothing; it listed
/// it unload-pending (loaded, its file in use).
#[test]
fn hives_lists_a_stale_pending_record_as_unloaded() {
    let t = unvouched_profile();
    let o = run_with(
        &["hives", "--json"],
        move |_| {
            Ok(Box::new(Faithful {
                t: t.clone(),
                mount: "gone".to_owned(),
                existing: Vec::new(),
            }) as Box<dyn Transport>)
        },
        &Contoso,
    );
    let r: hivetrack_cli::model::HivesReport = serde_json::from_str(&o.out).expect(&o.err);
    let h = r
        .hives
        .iter()
        .find(|h| h.path == format!(r"\REGISTRY\USER\{SID}"))
        .expect("the profile is listed");
    assert_eq!(h.state, "unloaded", "{h:?}");
    assert_eq!((h.open_keys, h.holders), (0, 0), "{h:?}");
}
