//! The systematic sweep (issue 13): every hivetrack scenario that makes fallible kernel calls
//! runs again with its K-th fallible call failed (`nth:K`), and with every call from its K-th
//! on failed (`from:K`: memory that never comes back), each run in its own process
//! (`run --faulted --fault ...`), each ending in the scenario's leak check.
//!
//! A faulted run cannot keep a scenario's exact expectations (an open the driver could not
//! record is not in its answers), so those are reported, not required; what must hold whatever
//! fails is required (see `Ctx::hard`): nothing left behind, no uninitialised byte in an
//! answer, no holders answer that calls itself complete while a key object the driver was
//! told of is missing from it (`Ctx::ioctl_checked`'s audit), no bugcheck, no hang. A
//! scenario's calls are counted first with a fault-free faulted run (`nth:0`); when they are
//! more than `max_runs`, K is spread evenly over them, first and last included (the figures
//! say how many were run of how many).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::harness::scenario::{self, Target};
use crate::harness::suite::{ChildRun, run_child_with};

/// Hivetrack scenarios the sweep leaves out, and why.
pub const EXCLUDED: &[(&str, &str)] = &[
    ("entry-sweep", "it is a sweep of DriverEntry itself"),
    (
        "low-resources",
        "it is a sweep of the logoff workload itself",
    ),
    ("random-faults", "it injects its own random failures"),
    (
        "own-hivelist-open",
        "it resets the kernel between its passes and runs its own faulted one (review 18d: a sweep's fault did not survive the reset)",
    ),
    (
        "soak",
        "1,000,000 operations with its own 6% failures (cargo xtask soak)",
    ),
    (
        "ioctl-fuzz",
        "1,000,000 fuzzed requests (cargo xtask fuzz-ioctl)",
    ),
    (
        "concurrency",
        "8 threads: the K-th call is not the same call from run to run",
    ),
    (
        "handle-leak",
        "65,602 opens: each run costs seconds; its paths are the logoff's",
    ),
    (
        "name-flood",
        "a budget scenario that fills the pool on purpose",
    ),
    (
        "stacks-low-resources",
        "itself fails every fallible call of the stacks workload in turn (the sweep runs `stacks`)",
    ),
    (
        "many-processes",
        "10,000 processes: about 40,000 fallible calls, several seconds a run; its paths are those of the processes and holders scenarios",
    ),
    (
        "wait-free-races",
        "8 threads and timers: about 29,000 calls, 1.5 s a run (`cargo xtask sweep wait-free-races` on demand: 250 runs, 0 failed, 392 s)",
    ),
];

/// Sweep inputs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// hivetrack.sys.
    pub sys: PathBuf,
    /// Its map.
    pub map: Option<PathBuf>,
    /// Most runs per scenario and policy.
    pub max_runs: u64,
    /// Child processes at once.
    pub jobs: usize,
    /// Scenario names (empty: all not excluded).
    pub only: Vec<String>,
}

/// `max` values of K spread over 1..=n (all of them when n <= max).
#[must_use]
pub fn spread(n: u64, max: u64) -> Vec<u64> {
    if n <= max || max < 2 {
        return (1..=n.min(max.max(n))).collect();
    }
    let mut v: Vec<u64> = (0..max).map(|i| 1 + i * (n - 1) / (max - 1)).collect();
    v.dedup();
    v
}

fn faulted(exe: &Path, o: &SweepOptions, name: &str, fault: &str) -> ChildRun {
    run_child_with(
        exe,
        &o.sys,
        o.map.as_deref(),
        name,
        &[
            "--faulted".to_owned(),
            "--fault".to_owned(),
            fault.to_owned(),
        ],
    )
}

/// The fallible calls a faulted run reports.
fn calls_of(run: &ChildRun) -> Option<u64> {
    let line = run
        .output
        .lines()
        .find(|l| l.starts_with("kernel-emulator: faulted run: "))?;
    line.trim_start_matches("kernel-emulator: faulted run: ")
        .split(' ')
        .next()?
        .parse()
        .ok()
}

fn verdict(run: &ChildRun) -> Result<(), String> {
    if run.timed_out {
        return Err("timed out".to_owned());
    }
    if run.code == Some(0) {
        return Ok(());
    }
    let last = run
        .output
        .lines()
        .rev()
        .find(|l| l.contains("FAIL") || l.contains("***") || l.contains("LEAK"))
        .unwrap_or("")
        .trim()
        .to_owned();
    // The bugcheck's own lines (where, which instruction, which address) say more than its
    // last line: a failure seen once in CI must be diagnosable from the log alone.
    let detail: Vec<&str> = run
        .output
        .lines()
        .skip_while(|l| !l.starts_with("***"))
        .take(12)
        .collect();
    if detail.is_empty() {
        Err(format!("exit {:?}: {last}", run.code))
    } else {
        Err(format!(
            "exit {:?}: {last}\n    {}",
            run.code,
            detail.join("\n    ")
        ))
    }
}

/// Runs the sweep; returns the process exit code (0 only if every run held).
///
/// # Panics
/// If this executable's path cannot be found.
#[must_use]
pub fn run(o: &SweepOptions) -> i32 {
    let exe = std::env::current_exe().expect("the emulator's own path");
    let started = Instant::now();
    let names: Vec<&'static str> = scenario::all()
        .into_iter()
        .filter(|s| s.target == Target::Hivetrack && s.expect.exit == 0)
        .map(|s| s.name)
        .filter(|n| {
            if o.only.is_empty() {
                !EXCLUDED.iter().any(|(x, _)| x == n)
            } else {
                o.only.iter().any(|x| x == n)
            }
        })
        .collect();
    let (mut swept, mut calls_total, mut runs_total, mut failed_total) = (0, 0, 0, 0);
    for name in names {
        let t = Instant::now();
        let count = faulted(&exe, o, name, "nth:0");
        if let Err(why) = verdict(&count) {
            println!("FAIL {name} (no fault injected): {why}");
            failed_total += 1;
            continue;
        }
        let n = calls_of(&count).unwrap_or(0);
        if n == 0 {
            println!("skip {name}: no fallible call");
            continue;
        }
        let mut jobs: Vec<String> = spread(n, o.max_runs)
            .into_iter()
            .map(|k| format!("nth:{k}"))
            .collect();
        jobs.extend(
            spread(n, (o.max_runs / 4).max(2))
                .into_iter()
                .map(|k| format!("from:{k}")),
        );
        let queue = Mutex::new(jobs.clone());
        let failures = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..o.jobs.max(1) {
                s.spawn(|| {
                    while let Some(job) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        if let Err(why) = verdict(&faulted(&exe, o, name, &job))
                            && let Ok(mut f) = failures.lock()
                        {
                            f.push(format!("{job}: {why}"));
                        }
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap_or_default();
        for f in &failures {
            println!("FAIL {name} {f}");
        }
        println!(
            "{} {name}: {n} fallible calls, {} runs, {} failed, {:.1} s",
            if failures.is_empty() { "ok" } else { "FAIL" },
            jobs.len(),
            failures.len(),
            t.elapsed().as_secs_f64()
        );
        swept += 1;
        calls_total += n;
        runs_total += jobs.len();
        failed_total += failures.len();
    }
    println!(
        "sweep: {swept} scenarios, {calls_total} fallible calls, {runs_total} faulted runs, {failed_total} failed, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    i32::from(failed_total > 0)
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn k_is_spread_over_the_calls_first_and_last_included() {
        assert_eq!(spread(5, 40), vec![1, 2, 3, 4, 5]);
        let v = spread(1000, 5);
        assert_eq!(v, vec![1, 250, 500, 750, 1000]);
        assert_eq!(spread(0, 10), Vec::<u64>::new());
    }
}
