//! The suite runner: each scenario runs in its own child process (this binary re-executed as
//! `kernel-emulator run ...`), so a bugcheck, a corrupted heap or a hang ends one scenario, not
//! the suite. Prints `ok <name>` or `FAIL <name>: reason` per scenario and the summary line
//! `N passed, M failed`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::scenario::{self, Scenario, Target};

/// Per-scenario time limit.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Suite inputs.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// hivetrack.sys.
    pub sys: PathBuf,
    /// Its map.
    pub map: Option<PathBuf>,
    /// The test driver, if its scenarios are to run.
    pub test_driver: Option<PathBuf>,
    /// Its map.
    pub test_driver_map: Option<PathBuf>,
    /// Scenario names (empty: all that have a driver).
    pub only: Vec<String>,
    /// Print each child's full output.
    pub verbose: bool,
    /// Turn special pool off.
    pub no_special_pool: bool,
}

/// The outcome of one child run.
pub(crate) struct ChildRun {
    /// Its exit code (`None`: killed, or it could not start).
    pub(crate) code: Option<i32>,
    /// Its stdout and stderr.
    pub(crate) output: String,
    /// It ran past [`TIMEOUT`] and was killed.
    pub(crate) timed_out: bool,
}

fn run_child(
    exe: &Path,
    sys: &Path,
    map: Option<&Path>,
    name: &str,
    no_special_pool: bool,
) -> ChildRun {
    let extra: &[String] = if no_special_pool {
        &[String::new()]
    } else {
        &[]
    };
    run_child_with(exe, sys, map, name, extra)
}

/// Runs `exe run --sys SYS [--map MAP] EXTRA... NAME` (an empty string in `extra` stands
/// for `--no-special-pool`).
pub(crate) fn run_child_with(
    exe: &Path,
    sys: &Path,
    map: Option<&Path>,
    name: &str,
    extra: &[String],
) -> ChildRun {
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--sys").arg(sys);
    if let Some(m) = map {
        cmd.arg("--map").arg(m);
    }
    for e in extra {
        if e.is_empty() {
            cmd.arg("--no-special-pool");
        } else {
            cmd.arg(e);
        }
    }
    cmd.arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ChildRun {
                code: None,
                output: format!("spawn failed: {e}"),
                timed_out: false,
            };
        }
    };
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if start.elapsed() > TIMEOUT => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let mut output = reader.join().unwrap_or_default();
    output += &err_reader.join().unwrap_or_default();
    ChildRun {
        code,
        output,
        timed_out,
    }
}

/// Judges one child run against the scenario's expectation.
fn judge(s: &Scenario, run: &ChildRun) -> Result<(), String> {
    if run.timed_out {
        return Err(format!("timed out after {}s", TIMEOUT.as_secs()));
    }
    let code = run.code.unwrap_or(-1);
    let last = run
        .output
        .lines()
        .rev()
        .find(|l| l.contains("FAIL") || l.contains("***") || l.contains("refusing"))
        .unwrap_or("")
        .trim()
        .to_string();
    if code != s.expect.exit {
        return Err(format!("exit {code}, expected {}: {last}", s.expect.exit));
    }
    if let Some(p) = s.expect.output
        && !run.output.contains(p)
    {
        return Err(format!(
            "exit {code} as expected but the output lacks {p:?}: {last}"
        ));
    }
    Ok(())
}

/// Runs the suite; returns the process exit code (0 only if everything passed).
///
/// # Panics
/// If the path of this executable cannot be found.
#[must_use]
pub fn run(opts: &SuiteOptions) -> i32 {
    let exe = std::env::current_exe().expect("path of kernel-emulator");
    let all = scenario::all();
    let mut failed = 0usize;
    let mut passed = 0usize;
    let mut skipped = 0usize;
    for name in &opts.only {
        if !all.iter().any(|s| s.name == name) {
            println!("FAIL {name}: no such scenario (see `kernel-emulator list`)");
            failed += 1;
        }
    }
    for file in [Some(&opts.sys), opts.test_driver.as_ref()]
        .into_iter()
        .flatten()
    {
        if !file.is_file() {
            println!("FAIL {}: file not found", file.display());
            failed += 1;
        }
    }
    if failed > 0 {
        println!("{passed} passed, {failed} failed");
        return 1;
    }
    for s in all
        .iter()
        .filter(|s| opts.only.is_empty() || opts.only.iter().any(|n| n == s.name))
    {
        let (sys, map) = match s.target {
            Target::Hivetrack => (opts.sys.as_path(), opts.map.as_deref()),
            Target::TestDriver => match &opts.test_driver {
                Some(t) => (t.as_path(), opts.test_driver_map.as_deref()),
                None if opts.only.is_empty() => {
                    skipped += 1;
                    continue;
                }
                None => {
                    println!("FAIL {}: needs --test-driver", s.name);
                    failed += 1;
                    continue;
                }
            },
        };
        let run = run_child(&exe, sys, map, s.name, opts.no_special_pool);
        match judge(s, &run) {
            Ok(()) => {
                println!("ok {}", s.name);
                passed += 1;
            }
            Err(reason) => {
                println!("FAIL {}: {reason}", s.name);
                failed += 1;
            }
        }
        if opts.verbose || (failed > 0 && judge(s, &run).is_err()) {
            for l in run.output.lines() {
                println!("    | {l}");
            }
        }
    }
    if skipped > 0 {
        println!("({skipped} test-driver scenarios skipped: no --test-driver given)");
    }
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}
