//! Systematic low-resources simulation: for several scenario scripts and for every k, the
//! k-th allocation fails (and, separately, every allocation from the k-th on). Each run must
//! not panic, must keep every invariant ([`tracker::Tracker::check_consistency`]), must
//! account for every open it could not record in a named counter, must answer every query,
//! and must leave zero outstanding blocks after teardown.
#![allow(
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    reason = "test code: small sizes, scripts read best whole"
)]

mod support;

use std::collections::BTreeMap;

use protocol::history::UnloadHistory;
use protocol::hives::Hives;
use protocol::holders::{HolderKey, Holders};
use protocol::processes::Processes;
use protocol::snapshot::Snapshot;
use support::*;
use tracker::{Config, ProcessKey, Token, Tracker};

#[derive(Clone, Debug)]
enum Step {
    Load(&'static str, &'static str),
    Unload(&'static str),
    Attempt(&'static str),
    Start(u64, u64, &'static str),
    Exit(u64, u64),
    Open(u64, u64, u64, String),
    Close(u64),
    StaleClose(u64),
    Destroy(u64),
    Abandon(u64),
    Query,
}

fn desktop() -> Vec<Step> {
    use Step::*;
    let mut s = vec![
        Load(
            r"\REGISTRY\MACHINE\SOFTWARE",
            r"\SystemRoot\System32\Config\SOFTWARE",
        ),
        Load(
            r"\REGISTRY\MACHINE\SYSTEM",
            r"\SystemRoot\System32\Config\SYSTEM",
        ),
        Load(r"\REGISTRY\USER\S-1-5-21-1-1001", r"C:\Users\u\NTUSER.DAT"),
        Load(
            r"\REGISTRY\USER\S-1-5-21-1-1001_Classes",
            r"C:\Users\u\UsrClass.dat",
        ),
        Start(4, 1, "System"),
        Start(900, 7, r"\Device\HarddiskVolume3\Windows\explorer.exe"),
        Start(
            1200,
            8,
            r"\Device\HarddiskVolume3\Windows\System32\svchost.exe",
        ),
    ];
    let paths = [
        r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\Windows\CurrentVersion",
        r"\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Services\Tcpip",
        r"\REGISTRY\USER\S-1-5-21-1-1001\Software\Policies",
        r"\REGISTRY\USER\S-1-5-21-1-1001_Classes\CLSID\{0000}",
        r"\registry\machine\software\MICROSOFT\windows\currentversion",
    ];
    for i in 0..30u64 {
        let (pid, start) = [(4, 1), (900, 7), (1200, 8)][(i % 3) as usize];
        s.push(Open(i, pid, start, paths[(i % 5) as usize].to_string()));
        if i % 4 == 0 {
            s.push(Close(i));
            s.push(Close(i));
        }
        if i % 7 == 3 {
            s.push(Query);
        }
    }
    s.push(Attempt(r"\REGISTRY\USER\S-1-5-21-1-1001"));
    for i in (0..30).step_by(2) {
        s.push(Destroy(i));
    }
    s.push(Query);
    s.push(Exit(900, 7));
    s.push(Attempt(r"\REGISTRY\USER\S-1-5-21-1-1001_Classes"));
    s.push(Unload(r"\REGISTRY\USER\S-1-5-21-1-1001_Classes"));
    for i in (1..30).step_by(4) {
        s.push(Destroy(i));
    }
    s.push(Query);
    s
}

fn app_hive_churn() -> Vec<Step> {
    use Step::*;
    let mut s = vec![];
    for round in 0..8u64 {
        let mount: &'static str =
            Box::leak(format!(r"\REGISTRY\A\{{{round:08x}-app}}").into_boxed_str());
        s.push(Start(100, round, "app.exe"));
        s.push(Load(mount, r"C:\ProgramData\app\settings.dat"));
        for k in 0..4 {
            s.push(Open(round * 10 + k, 100, round, format!(r"{mount}\Key{k}")));
        }
        s.push(Query);
        s.push(Attempt(mount));
        for k in 0..4 {
            s.push(Destroy(round * 10 + k));
        }
        s.push(Unload(mount));
        s.push(Exit(100, round));
    }
    s
}

fn long_names_many_processes() -> Vec<Step> {
    use Step::*;
    let mut s = vec![Load(r"\REGISTRY\MACHINE\SOFTWARE", "")];
    for p in 0..12u64 {
        s.push(Start(
            p * 4 + 8,
            1,
            Box::leak(format!(r"\Device\HarddiskVolume3\p{p}.exe").into_boxed_str()),
        ));
        for k in 0..3u64 {
            let tail = "n".repeat(if k == 0 { 3000 } else { 40 * k as usize });
            s.push(Open(
                p * 10 + k,
                p * 4 + 8,
                1,
                format!(r"\REGISTRY\MACHINE\SOFTWARE\V{p}\{tail}"),
            ));
        }
    }
    s.push(Attempt(r"\REGISTRY\MACHINE\SOFTWARE"));
    for p in 0..12u64 {
        s.push(Exit(p * 4 + 8, 1)); // exited holders keep their keys
    }
    s.push(Query);
    for p in 0..6u64 {
        for k in 0..3u64 {
            s.push(Destroy(p * 10 + k));
        }
    }
    s.push(Query);
    s
}

fn stale_contexts() -> Vec<Step> {
    use Step::*;
    let mut s = vec![];
    for i in 0..10u64 {
        s.push(Open(
            i,
            50,
            1,
            format!(r"\REGISTRY\MACHINE\SYSTEM\Select\{}", i % 3),
        ));
    }
    for i in 0..10u64 {
        match i % 3 {
            0 => s.push(Destroy(i)),
            1 => s.push(Abandon(i)),
            _ => {}
        }
        s.push(StaleClose(i));
    }
    for i in 0..10u64 {
        s.push(Open(
            i + 100,
            50,
            1,
            r"\REGISTRY\MACHINE\SYSTEM\Select\0".to_string(),
        ));
    }
    s.push(Exit(50, 1));
    s.push(Query);
    s
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    opens: u64,
    open_failures: u64,
    live: u64,
}

/// Runs `script`; returns what the driver saw. Panics on any broken invariant.
fn run(script: &[Step], pool: &CountingPool) -> Outcome {
    let t: TestTracker<'_> = Tracker::new(
        pool,
        Config {
            history_len: 4,
            ..Config::default()
        },
    )
    .unwrap();
    let mut tokens: BTreeMap<u64, Token> = BTreeMap::new();
    let mut stale: BTreeMap<u64, Token> = BTreeMap::new();
    let mut out = Outcome::default();
    let addr = |i: u64| (i + 1) * 0x80;
    for (n, step) in script.iter().enumerate() {
        match step {
            Step::Load(m, f) => t.hive_loaded(&w(m), &w(f), n as u64),
            Step::Unload(m) => t.hive_unloaded(&w(m)),
            Step::Attempt(m) => {
                // Watched, and looked at again at once (as if the delay had passed): the
                // held-after event's allocations fail in turn too.
                if let Some(id) = t.unload_attempted(&w(m), 0xC000_0022, n as u64) {
                    let _ = t.watch_held_after(id, 0xC000_0022, n as u64);
                }
                let _ = t.held_after_check(u64::MAX, n as u64);
            }
            Step::Start(pid, start, image) => t.process_started(
                ProcessKey {
                    pid: *pid,
                    start_key: *start,
                },
                &w(image),
            ),
            Step::Exit(pid, start) => t.process_exited(ProcessKey {
                pid: *pid,
                start_key: *start,
            }),
            Step::Open(i, pid, start, name) => {
                out.opens += 1;
                // The driver only has a context to pass back when the open was tracked.
                match t.opened(
                    addr(*i),
                    ProcessKey {
                        pid: *pid,
                        start_key: *start,
                    },
                    1,
                    &w(name),
                    0x2_0019,
                    n as u64,
                ) {
                    Ok(tok) => {
                        tokens.insert(*i, tok);
                    }
                    Err(_) => out.open_failures += 1,
                }
            }
            Step::Close(i) => {
                if let Some(tok) = tokens.get(i) {
                    t.handle_closed(*tok, addr(*i));
                }
            }
            Step::StaleClose(i) => {
                let tok = stale
                    .get(i)
                    .or_else(|| tokens.get(i))
                    .copied()
                    .unwrap_or(Token(7));
                t.handle_closed(tok, addr(*i));
            }
            Step::Destroy(i) | Step::Abandon(i) => {
                if let Some(tok) = tokens.remove(i) {
                    if matches!(step, Step::Destroy(_)) {
                        t.object_destroyed(tok, addr(*i));
                    } else {
                        t.abandon(tok, addr(*i));
                    }
                    stale.insert(*i, tok);
                }
            }
            Step::Query => query_everything(&t),
        }
    }
    let census = t
        .check_consistency()
        .unwrap_or_else(|e| panic!("invariant broken: {e}"));
    let s = t.stats();
    out.live = s.objects_tracked;
    // Every open the driver saw fail is a named loss; none is lost silently.
    let drops = s.opens_dropped_cap
        + s.opens_dropped_no_memory_object
        + s.opens_dropped_no_memory_process
        + s.opens_dropped_no_memory_hive
        + s.opens_dropped_no_memory_holding;
    assert_eq!(
        drops, out.open_failures,
        "open failures and their counters disagree: {s:?}"
    );
    assert_eq!(s.opens_seen, out.opens);
    assert_eq!(
        census.objects,
        tokens.len() as u64,
        "tracked objects are exactly the driver's live contexts"
    );
    // Keys without a name are explained by the name counter.
    let mut missing = 0;
    drain::<Snapshot>(
        512,
        |c, b| t.snapshot(c, 0, 0, b),
        |p| {
            missing += p
                .records()
                .filter(|r| r.flags & HolderKey::NAME_MISSING != 0)
                .count() as u64;
        },
    );
    assert!(
        missing <= s.names_dropped_no_memory,
        "{missing} nameless keys, {} counted",
        s.names_dropped_no_memory
    );
    assert!(s.not_recorded() >= drops);
    query_everything(&t);
    out
}

fn query_everything(t: &TestTracker<'_>) {
    let mut mounts = vec![];
    drain::<Hives>(
        300,
        |c, b| t.hives(c, 0, b),
        |p| {
            for r in p.records() {
                if r.state != protocol::holders::HiveState::Unloaded {
                    mounts.push(r.mount.to_string());
                }
            }
        },
    );
    for m in mounts {
        drain::<Holders>(600, |c, b| t.holders(&w(&m), c, 0, 0, b), |_| {});
    }
    drain::<Processes>(300, |c, b| t.processes(c, 0, b), |_| {});
    drain::<Snapshot>(300, |c, b| t.snapshot(c, 0, 0, b), |_| {});
    drain::<UnloadHistory>(300, |c, b| t.unload_history(c, 0, b), |_| {});
}

fn sweep(name: &str, script: &[Step]) {
    let pool = CountingPool::new(Failure::Never, true);
    let clean = run(script, &pool);
    assert_eq!(pool.outstanding_blocks(), 0);
    assert_eq!(clean.open_failures, 0);
    let total = pool.calls();
    assert!(total > 10, "{name}: the scenario allocates");
    let mut failed_runs = 0u64;
    for k in 1..=total + 1 {
        for mode in [Failure::Kth(k), Failure::FromK(k)] {
            let pool = CountingPool::new(mode, true);
            let out = run(script, &pool);
            assert_eq!(
                pool.outstanding_blocks(),
                0,
                "{name}: {mode:?} leaked blocks"
            );
            assert_eq!(pool.outstanding_bytes(), 0);
            assert!(out.live <= clean.live + out.open_failures);
            if pool.failed() > 0 {
                failed_runs += 1;
            }
        }
    }
    assert!(failed_runs >= total, "{name}: every k made something fail");
    println!("{name}: {total} allocations, {failed_runs} runs with failures");
}

#[test]
fn desktop_session_survives_every_failure() {
    sweep("desktop", &desktop());
}

#[test]
fn app_hive_churn_survives_every_failure() {
    sweep("app hive churn", &app_hive_churn());
}

#[test]
fn long_names_and_many_processes_survive_every_failure() {
    sweep("long names", &long_names_many_processes());
}

#[test]
fn stale_contexts_survive_every_failure() {
    sweep("stale contexts", &stale_contexts());
}
