//! Named scenarios: each loads a driver into a fresh emulated kernel, drives it, and checks
//! the outcome. [`run_in_process`] executes one on an emulator thread (`kernel-emulator run`);
//! [`crate::harness::suite`] runs each in its own child process and compares the exit code and output
//! with what the scenario expects (some scenarios exist to prove that a bug *is* caught).

pub mod attribution;
pub mod budget;
pub mod events;
pub mod handles;
pub mod hivetrack;
pub mod holder;
pub mod ioctl_fuzz;
pub mod key_cache;
pub mod key_id;
pub mod lifecycle;
pub mod notify;
pub mod pool_checks;
pub mod procmon;
pub mod registry;
pub mod scale;
pub mod self_unload;
pub mod soak;
pub mod stacks;
pub mod test_driver;
pub mod tracking;
pub mod tracking_off;
pub mod truth;
pub mod wait_free;

use std::fmt::Display;
use std::path::PathBuf;

use crate::loader::driver::{self, LoadedDriver};
use crate::nt::io::{self, FileHandle, IoctlResult};
use crate::nt::kernel;
use crate::nt::se::security::Caller;
use crate::nt::status::{self, STATUS_SUCCESS};
use crate::verifier::bugcheck::{EXIT_CHECK_FAILED, EXIT_PASS};
use crate::verifier::faults::FaultPolicy;

/// Which image a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// hivetrack.sys (`--sys`).
    Hivetrack,
    /// The emulator's test driver (`--test-driver`).
    TestDriver,
}

/// What the suite expects of a scenario's child process.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Exit code.
    pub exit: i32,
    /// A line fragment that must appear in its output (stdout + stderr).
    pub output: Option<&'static str>,
}

impl Expect {
    /// All checks pass.
    pub const PASS: Self = Self {
        exit: EXIT_PASS,
        output: None,
    };
}

/// One scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// Which driver.
    pub target: Target,
    /// What it proves.
    pub about: &'static str,
    /// Expected outcome.
    pub expect: Expect,
    /// The body.
    pub run: fn(&mut Ctx),
}

impl Scenario {
    /// A scenario on hivetrack.sys whose checks must all pass.
    #[must_use]
    pub const fn hivetrack(name: &'static str, about: &'static str, run: fn(&mut Ctx)) -> Self {
        Self::passing(name, Target::Hivetrack, about, run)
    }

    /// A scenario on the test driver whose checks must all pass.
    #[must_use]
    pub const fn test_driver(name: &'static str, about: &'static str, run: fn(&mut Ctx)) -> Self {
        Self::passing(name, Target::TestDriver, about, run)
    }

    /// A scenario on `target` whose checks must all pass.
    #[must_use]
    pub const fn passing(
        name: &'static str,
        target: Target,
        about: &'static str,
        run: fn(&mut Ctx),
    ) -> Self {
        Self {
            name,
            target,
            about,
            expect: Expect::PASS,
            run,
        }
    }
}

/// Every scenario, hivetrack's first.
#[must_use]
pub fn all() -> Vec<Scenario> {
    let mut v = hivetrack::scenarios();
    v.extend(tracking::scenarios());
    v.extend(tracking_off::scenarios());
    v.extend(procmon::scenarios());
    v.extend(wait_free::scenarios());
    v.extend(truth::scenarios());
    v.extend(self_unload::scenarios());
    v.extend(budget::scenarios());
    v.extend(soak::scenarios());
    v.extend(ioctl_fuzz::scenarios());
    v.extend(holder::scenarios());
    v.extend(key_cache::scenarios());
    v.extend(attribution::scenarios());
    v.extend(events::scenarios());
    v.extend(scale::scenarios());
    v.extend(test_driver::scenarios());
    v.extend(registry::scenarios());
    v.extend(lifecycle::scenarios());
    v.extend(notify::scenarios());
    v.extend(handles::scenarios());
    v.extend(key_id::scenarios());
    v.extend(pool_checks::scenarios());
    v.extend(stacks::scenarios());
    v
}

/// Finds a scenario by name.
#[must_use]
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The driver image.
    pub sys: PathBuf,
    /// Its linker map.
    pub map: Option<PathBuf>,
    /// Special pool (on by default).
    pub special_pool: bool,
    /// Routines to hide.
    pub hide: Vec<String>,
    /// A Process Monitor CSV export for `ht-procmon-replay` (default: every fixture in
    /// `tests/procmon/`) and `td-procmon-replay` (default: a built-in sample).
    pub procmon_csv: Option<PathBuf>,
    /// A step script for `script` / `td-script` (default: a built-in sample).
    pub script: Option<PathBuf>,
    /// A fault policy in force from the scenario's start (the sweep's `--fault`).
    pub fault: Option<FaultPolicy>,
    /// A faulted run (`--faulted`): the scenario's own checks expect a fault-free machine, so
    /// their failures are reported but do not fail the run; what must hold whatever fails
    /// (nothing leaked, no uninitialised output, no answer that says complete while a key
    /// it was told of is missing, no bugcheck) still does. See [`Ctx::hard`].
    pub faulted: bool,
}

/// The scenario's view of the emulator: loading, user-mode I/O, checks.
pub struct Ctx {
    /// Options.
    pub opts: RunOptions,
    failures: Vec<String>,
    /// Checks that failed in a faulted run (not failures there).
    soft: Vec<String>,
    checks: usize,
    next_pid: u32,
    quiet: bool,
}

impl Ctx {
    /// A context for `opts`.
    #[must_use]
    pub const fn new(opts: RunOptions) -> Self {
        Self {
            opts,
            failures: Vec::new(),
            soft: Vec::new(),
            checks: 0,
            next_pid: 1000,
            quiet: false,
        }
    }

    /// A context that records checks without printing them (for [`crate::harness::session`], whose
    /// caller owns stdout).
    #[must_use]
    pub const fn quiet(opts: RunOptions) -> Self {
        let mut ctx = Self::new(opts);
        ctx.quiet = true;
        ctx
    }

    /// Checks that failed so far.
    #[must_use]
    pub fn failed(&self) -> &[String] {
        &self.failures
    }

    /// Records a check; prints `[PASS]`/`[FAIL]` unless quiet. In a faulted run a failed
    /// check is `[SOFT]`: reported, not a failure (the scenario's expectations assume no
    /// fault).
    pub fn check(&mut self, ok: bool, what: impl Display) {
        if self.opts.faulted && !ok {
            self.checks += 1;
            if !self.quiet {
                println!("  [SOFT] {what}");
            }
            self.soft.push(what.to_string());
            return;
        }
        self.hard(ok, what);
    }

    /// Records a check that must hold in every run, faulted or not.
    pub fn hard(&mut self, ok: bool, what: impl Display) {
        self.checks += 1;
        if !self.quiet {
            println!("  [{}] {what}", if ok { "PASS" } else { "FAIL" });
        }
        if !ok {
            self.failures.push(what.to_string());
        }
    }

    /// Prints a progress line.
    pub fn say(&self, what: impl Display) {
        println!("== {what}");
    }

    /// Loads the driver image (refuses with exit 2 on unresolved imports).
    #[must_use]
    pub fn load(&self) -> LoadedDriver {
        driver::load_or_refuse(&self.opts.sys, self.opts.map.as_deref())
    }

    /// A fresh process id for a caller.
    pub const fn new_pid(&mut self) -> u32 {
        self.next_pid += 4;
        self.next_pid
    }

    /// Opens a device as `caller` in a new process.
    ///
    /// # Errors
    /// The status of the failed open.
    pub fn open(&mut self, path: &str, caller: Caller, desired: u32) -> Result<FileHandle, i32> {
        let pid = self.new_pid();
        io::open(path, caller, pid, desired)
    }

    /// A METHOD_BUFFERED request sent twice with two different poison bytes in the system
    /// buffer: the two answers must be identical, or the driver returned bytes it never
    /// wrote (uninitialised output). Only for requests without side effects.
    ///
    /// In a faulted run an allocation the request needs can fail for one send and not the
    /// other (the fault's K-th call falls between them). A send answered
    /// `STATUS_INSUFFICIENT_RESOURCES` with nothing returned *while a fault was injected
    /// into it* proves nothing about poison: it is sent again with the same poison byte, and
    /// the two answers that were not refused are compared. Only when every resend is refused
    /// too (memory that never comes back) is the other answer left unchecked; the sweep's
    /// single-fault runs (`nth:K`) compare it. A refusal with no fault injected is compared
    /// as any answer is (review 17a: the first version accepted any refusal).
    pub fn ioctl_checked(
        &mut self,
        h: FileHandle,
        code: u32,
        input: &[u8],
        out_len: u32,
    ) -> IoctlResult {
        let send = |poison: u8| {
            let before = kernel::with(|k| k.faults.injected.len());
            let r = io::device_io_control(h, code, input, out_len, poison);
            let faulted = kernel::with(|k| k.faults.injected.len()) > before;
            let refused = faulted
                && r.status == crate::nt::status::STATUS_INSUFFICIENT_RESOURCES
                && r.information == 0;
            (r, refused)
        };
        let (a, a_refused) = send(0xA5);
        let (b, b_refused) = send(0x5A);
        let (first, second) = match (a_refused, b_refused) {
            (false, false) => (a, b),
            (true, true) => return a,
            // The refused send again, with its poison byte.
            (true, false) => match send(0xA5) {
                (_, true) => return a,
                (c, false) => (c, b),
            },
            (false, true) => match send(0x5A) {
                (_, true) => {
                    self.audit_holders(code, &a);
                    return a;
                }
                (c, false) => (a, c),
            },
        };
        // The answer returned is the one audited (review 17c: after a refused first send it
        // was the resend, which nothing audited).
        self.audit_holders(code, &first);
        let differs: Vec<usize> = (0..first.output.len().max(second.output.len()))
            .filter(|&i| first.output.get(i) != second.output.get(i))
            .collect();
        if first.status != second.status
            || first.information != second.information
            || !differs.is_empty()
        {
            let range = differs
                .first()
                .zip(differs.last())
                .map(|(f, l)| format!("{f}..={l}"));
            self.hard(
                false,
                format!(
                    "IOCTL {code:#x}: uninitialised output: {} of {} returned bytes (offsets {}) follow the poison pattern",
                    differs.len(),
                    first.output.len(),
                    range.unwrap_or_default()
                ),
            );
        }
        first
    }

    /// Never silently wrong: a holders answer that says nothing concerning its hive was lost
    /// (tracking runs, no loss in the hive, none unattributed) must not leave out a key object
    /// of that hive the driver was told of (its open's post-notification reached the driver's
    /// callback: [`crate::nt::cm::hive::KeyObject::announced`]) and that is still alive — every such
    /// object either carries the driver's context or was counted as a loss. Checked on every
    /// holders answer a scenario's client gets (a hard check: it holds in faulted runs too).
    fn audit_holders(&mut self, code: u32, r: &IoctlResult) {
        use protocol::holders::Holders;
        use protocol::page::Page;
        use protocol::request::QueryKind;
        if code != protocol::ioctl::query_ioctl(QueryKind::Holders)
            || r.status != crate::nt::status::STATUS_SUCCESS
        {
            return;
        }
        let Some(out) = r.output.get(..r.information) else {
            return;
        };
        let Ok(page) = protocol::wire::decode::<Page<'_, Holders>>(out) else {
            return;
        };
        let c = page.prefix.completeness;
        if c.tracking_since == 0 || !c.nothing_lost() {
            return;
        }
        let mount = page.prefix.mount.to_string().to_ascii_uppercase();
        let missing: Vec<String> = kernel::with(|k| {
            k.hives
                .objects
                .iter()
                .filter(|(addr, o)| {
                    o.hive == mount
                        && o.announced
                        && !o.destroyed
                        && o.contexts.is_empty()
                        && (o.handles > 0
                            || k.objects.references.get(addr).copied().unwrap_or(0) > 0)
                })
                .map(|(_, o)| o.name.clone())
                .collect()
        });
        if !missing.is_empty() {
            self.hard(
                false,
                format!(
                    "silently wrong: the holders answer for {mount} says nothing was lost, yet {} key object(s) the driver was told of are neither tracked nor counted: {:?}",
                    missing.len(),
                    &missing[..missing.len().min(3)]
                ),
            );
        }
    }

    /// Unloads and checks that nothing is left (pool, devices, links, handles, callbacks,
    /// IRPs), printing each leftover like a 0xC4/0x62 report.
    pub fn unload_and_check_clean(&mut self, d: &mut LoadedDriver) {
        if self.opts.faulted {
            // A scenario that met an unexpected failure may leave its client's device handle
            // open on an early path; its process exit closes it (cancelling what it has
            // pending), as Windows does, before the driver is unloaded and judged.
            let mut pids: Vec<u32> = kernel::with(|k| k.io.files.values().map(|f| f.pid).collect());
            pids.sort_unstable();
            pids.dedup();
            if !pids.is_empty() {
                self.check(
                    false,
                    format!(
                        "device handles left open by processes {pids:?}: closed as at their exit"
                    ),
                );
                for pid in pids {
                    io::terminate_process_io(pid);
                }
            }
        }
        self.check(d.unload(), "DriverUnload set and called");
        self.check_clean("after DriverUnload");
    }

    /// Checks that nothing the driver created remains.
    pub fn check_clean(&mut self, when: &str) {
        let leaks = kernel::leaks();
        for l in &leaks {
            println!("    LEAK: {l}");
        }
        self.hard(
            leaks.is_empty(),
            format!("nothing left {when} ({} leftovers)", leaks.len()),
        );
    }

    /// Failures so far.
    #[must_use]
    pub fn failures(&self) -> &[String] {
        &self.failures
    }
}

/// Runs DriverEntry afresh with the 1st, 2nd, ... fallible kernel call failed until a run
/// makes fewer fallible calls than k. Every run must leave nothing behind; with
/// `must_fail`, every injected failure must also make DriverEntry fail, except a failure of
/// one of the `optional` routines (registrations the driver does without).
pub fn driver_entry_sweep(ctx: &mut Ctx, must_fail: bool, optional: &[&str]) {
    let mut k = 1u64;
    loop {
        kernel::reset();
        // Under Driver Verifier lookasides keep nothing (`lookaside::disable_caching`).
        crate::nt::ex::lookaside::disable_caching();
        kernel::with(|kk| kk.faults.policy = FaultPolicy::Nth(k));
        let mut d = ctx.load();
        let s = d.entry();
        let (calls, injected) = kernel::with(|kk| (kk.faults.calls, kk.faults.injected.clone()));
        kernel::with(|kk| kk.faults.policy = FaultPolicy::Off);
        if injected.is_empty() {
            ctx.check(
                s == STATUS_SUCCESS,
                format!(
                    "k={k}: DriverEntry made {calls} fallible calls, none failed: {}",
                    status::describe(s)
                ),
            );
            ctx.unload_and_check_clean(&mut d);
            ctx.check(
                k > 1,
                format!("DriverEntry made at least one fallible call ({})", k - 1),
            );
            break;
        }
        let optional_failed = injected.iter().all(|i| {
            optional
                .iter()
                .any(|o| i.contains(&format!(" {o} during ")))
        });
        ctx.check(
            !must_fail || optional_failed || !status::nt_success(s),
            format!(
                "k={k}: {} -> DriverEntry returned {}",
                injected.join(", "),
                status::describe(s)
            ),
        );
        if status::nt_success(s) {
            ctx.unload_and_check_clean(&mut d);
        } else {
            ctx.check_clean(&format!("after failed DriverEntry (k={k})"));
        }
        k += 1;
        if k > 64 {
            ctx.check(false, "sweep did not terminate within 64 fallible calls");
            break;
        }
    }
}

/// Loads the driver, runs a step script ([`crate::harness::script`]) — `ctx.opts.script` or `sample` —
/// and unloads with the leak check.
pub fn run_script(ctx: &mut Ctx, sample: &str) {
    let text = match &ctx.opts.script {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                ctx.check(false, format!("read {}: {e}", p.display()));
                return;
            }
        },
        None => sample.to_string(),
    };
    let mut d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    let (steps, failures) = crate::harness::script::run(&text);
    for f in &failures {
        println!("    step failed: {f}");
    }
    ctx.check(
        failures.is_empty(),
        format!("{steps} script steps, {} failed", failures.len()),
    );
    ctx.unload_and_check_clean(&mut d);
}

/// Sets up the emulated machine for this process (trap handler, KUSER_SHARED_DATA, hidden
/// routines, special pool), runs `scenario` on an emulator thread with a 64 MiB stack, prints
/// a summary and returns the exit code: 0 all checks passed, 1 a check failed. Bugchecks
/// (86) and refusals (2) end the process from inside.
///
/// # Panics
/// If the emulator thread cannot be spawned.
#[must_use]
pub fn run_in_process(scenario: Scenario, opts: RunOptions) -> i32 {
    crate::machine::trap::install();
    crate::machine::cpu::init_kuser_shared_data(2);
    kernel::with(|k| k.pool.special = opts.special_pool);
    crate::nt::exports::hide_from_env();
    crate::nt::exports::hide(opts.hide.iter().map(String::as_str));
    println!(
        "kernel-emulator: scenario {}: {}",
        scenario.name, scenario.about
    );
    let worker = std::thread::Builder::new()
        .name(format!("kemu-{}", scenario.name))
        .stack_size(64 << 20)
        .spawn(move || {
            crate::machine::cpu::enter_thread(0);
            if let Some(policy) = opts.fault {
                kernel::with(|k| k.faults.policy = policy);
            }
            if opts.faulted || opts.fault.is_some() {
                // Under Driver Verifier lookaside lists keep nothing: every allocation from
                // one goes to the pool, where the low resources simulation can fail it
                // (Windows Research Kernel `ex/lookasid.c`: "Lookasides are disabled ...
                // when the verifier is on", ExAdjustLookasideDepth's target 0 when
                // ExMinimumLookasideDepth is 0). A cached block would otherwise be handed out
                // where no fault can reach it (fidelity audit 18b, F1).
                crate::nt::ex::lookaside::disable_caching();
            }
            if opts.faulted {
                // A failed CmUnRegisterCallback makes the driver keep its memory on purpose
                // (the callback may still run: scenario `unregister-fails`), so no leak
                // check could pass after it; the sweep leaves that routine to that scenario.
                kernel::with(|k| k.faults.spare = &["CmUnRegisterCallback"]);
            }
            let mut ctx = Ctx::new(opts);
            (scenario.run)(&mut ctx);
            if ctx.opts.faulted {
                let (calls, injected) =
                    kernel::with(|k| (k.faults.calls, k.faults.injected.len()));
                println!(
                    "kernel-emulator: faulted run: {calls} fallible calls, {injected} failed on purpose, {} scenario checks did not hold (not failures here)",
                    ctx.soft.len()
                );
            }
            (ctx.checks, ctx.failures)
        })
        .expect("spawn the emulator thread");
    let (checks, failures) = worker
        .join()
        .unwrap_or_else(|_| (0, vec!["scenario panicked".into()]));
    let (depth, op) = kernel::with(|k| k.max_stack.clone());
    if depth > 0 {
        println!("  deepest driver stack use: {depth} bytes in {op}");
    }
    if failures.is_empty() {
        println!("kernel-emulator: {checks} checks passed");
        EXIT_PASS
    } else {
        println!(
            "kernel-emulator: {} of {checks} checks FAILED: {}",
            failures.len(),
            failures.join("; ")
        );
        EXIT_CHECK_FAILED
    }
}
