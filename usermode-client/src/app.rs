//! One run of the CLI: the parsed command line in, the report out, the exit code back.
//!
//! Run with everything the outside world provides (backend, clock, accounts, output streams)
//! passed in, so tests drive whole commands with a scripted transport.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use protocol::diff::{SnapshotRow, diff};

use crate::accounts::Accounts;
use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::commands::{self, CliError, classify};
use crate::exit;
use crate::hive_name::{self, display, user_sid};
use crate::holder_identity::{self, Identities};
use crate::model::{DiffEntry, DiffReport, Hive, SnapshotFile, Source, schema};
use crate::render::{self, Format};
use crate::stacks::StackTable;
use crate::symbols::{NoSymbols, Symbolizer};
use crate::transport::{Need, Transport, TransportError};
use crate::wait::{Clock, wait_free};

/// Opens a backend for what a command needs.
pub type Connect<'a> = dyn FnMut(Need) -> Result<Box<dyn Transport>, TransportError> + 'a;

/// What a run needs from the outside world.
pub struct Env<'a> {
    /// Reports.
    pub out: &'a mut dyn Write,
    /// Notes that are not the report (the source line of CSV output).
    pub err: &'a mut dyn Write,
    /// Opens the backend.
    pub connect: &'a mut Connect<'a>,
    /// Resolves SIDs and the current user.
    pub accounts: &'a dyn Accounts,
    /// Who a running holder is (session, user, services).
    pub identities: &'a dyn Identities,
    /// The client's clock, as a FILETIME (ages are computed against it).
    pub now: u64,
    /// Time for `wait`.
    pub clock: &'a mut dyn Clock,
    /// Function names for stack frames (`holders --stacks`).
    pub symbols: &'a mut dyn Symbolizer,
}

const fn format_of(cli: &Cli) -> Format {
    if cli.global.json {
        Format::Json
    } else if cli.global.csv {
        Format::Csv
    } else {
        Format::Table
    }
}

/// The exit code of a report.
///
/// `held` is the verdict a caller asked for (`--fail-if-held`, `wait`), `None` for none. 4
/// with `--strict` when the report is incomplete; 1 when held (what the report saw is held,
/// however much it could not see); 4 when a verdict was asked and the answer "not held" (or
/// "free") is incomplete: a script gated on the verdict must not go on as if the hive were
/// free when keys the report could not see may hold it; else 0.
const fn verdict(strict: bool, source: &Source, held: Option<bool>) -> u8 {
    let incomplete = source.dropped_records();
    match held {
        _ if strict && incomplete => exit::INCOMPLETE,
        Some(true) => exit::HELD,
        Some(false) if incomplete => exit::INCOMPLETE,
        _ => exit::OK,
    }
}

fn emit(env: &mut Env<'_>, format: Format, text: &str, source: Option<&Source>) -> Result<()> {
    env.out.write_all(text.as_bytes())?;
    if format == Format::Csv
        && let Some(s) = source
    {
        writeln!(env.err, "hivetrack: {}", render::source_line(s))?;
    }
    Ok(())
}

/// Whether the backend is told of process exits (stats `process_exits_tracked`): only then
/// does "not exited" mean the pid is still the holder's, so that looking it up names the
/// holder. A backend without stats (the driverless fallback) is not.
pub(crate) fn exits_tracked(t: &mut dyn Transport) -> bool {
    Client::new(t).stats().is_ok_and(|s| {
        s.counters
            .iter()
            .any(|c| c.name == "process_exits_tracked" && c.value == 1)
    })
}

fn resolve_account(h: &mut Hive, accounts: &dyn Accounts, no_resolve: bool) {
    if !no_resolve {
        h.account = user_sid(&h.path).and_then(|sid| accounts.account_of(sid));
    }
}

fn connect(env: &mut Env<'_>, need: Need) -> Result<Box<dyn Transport>> {
    (env.connect)(need).map_err(classify)
}

/// Connects for a stack feature: the driverless fallback cannot give one, and says so.
fn connect_for_stacks(env: &mut Env<'_>, what: &'static str) -> Result<Box<dyn Transport>> {
    match (env.connect)(Need::Driver) {
        Err(TransportError::Unsupported { backend, .. }) if backend == crate::fallback::BACKEND => {
            Err(CliError::NeedsDriver { what }.into())
        }
        other => other.map_err(classify),
    }
}

/// `hivetrack modules`: the holders of `hive` (or of every hive) with their stacks, ranked.
fn modules_report(env: &mut Env<'_>, hive: Option<&str>) -> Result<crate::model::ModulesReport> {
    let what = "hivetrack modules";
    let targets = match hive {
        Some(h) => vec![nt_hive(env, h)?],
        None => Vec::new(),
    };
    let mut t = connect_for_stacks(env, what)?;
    let mut client = Client::new(t.as_mut());
    crate::capture::require_stacks(&mut client, what)?;
    let (targets, all) = if hive.is_some() {
        (targets, false)
    } else {
        let hives = client.hives()?;
        // An unloaded hive the driver still lists (its records outlive it) holds nothing:
        // asking would only find it gone (review, 2026-12-05).
        (
            hives
                .hives
                .into_iter()
                .filter(|h| h.state != "unloaded")
                .map(|h| h.path)
                .collect(),
            true,
        )
    };
    client.held_now = false;
    let mut reports = Vec::new();
    let mut forgotten = 0usize;
    for nt in &targets {
        match client.holders(nt, false, env.now) {
            Ok(r) => reports.push(r),
            // A hive the driver no longer knows since the list was read: unloaded, or an
            // application or implicit hive forgotten with its last tracked key, which keys
            // the driver never saw may still hold (review, 2026-12-05: skipped unsaid).
            Err(e)
                if all
                    && matches!(
                        e.downcast_ref::<CliError>(),
                        Some(CliError::UnknownHive { .. })
                    ) =>
            {
                forgotten += 1;
            }
            Err(e) => return Err(e),
        }
    }
    // Read after the holders answers, once: a stack stays stored while a key opened from it
    // is tracked, so every key still held finds its stack.
    let table = client.stack_table()?;
    for r in &mut reports {
        table.annotate(r, &mut NoSymbols);
    }
    let source = if let ([one], false) = (&reports[..], all) {
        one.source.clone()
    } else {
        let nr = reports
            .iter()
            .map(|r| r.source.not_recorded)
            .max()
            .unwrap_or(0);
        let mut source = client.source(nr);
        // Each hive's own report says whether its holders are vouched for (its records set
        // against the kernel's list); the ranking over all of them is complete only when
        // every one is. Found in review (2026-12-05): `modules --all` said complete, and
        // `--strict` exited 0, with hives held by keys the driver never saw.
        // A `_Classes` hive incomplete only for its user hive's link (no process holds it
        // through that, so no module does) leaves the ranking whole (review 23c, M3).
        let unvouched = reports
            .iter()
            .filter(|r| {
                let link_only = r.source.classes_link_user_hive.is_some()
                    && r.source.missing.len() == 1
                    && r.source.not_recorded == 0;
                !(r.source.complete || link_only)
            })
            .count();
        if unvouched > 0 {
            source.cannot_see(format!(
                "every holder of {unvouched} hive(s) (keys opened before tracking started, \
                 lost, or the kernel's list not had: `hivetrack holders HIVE` says which)"
            ));
        }
        if forgotten > 0 {
            source.cannot_see(format!(
                "{forgotten} hive(s) the driver no longer knew when asked (unloaded, or \
                 forgotten with their last tracked key while keys it never saw may hold them)"
            ));
        }
        source
    };
    Ok(crate::modules::rank(&reports, source, table.coverage))
}

fn nt_hive(env: &Env<'_>, given: &str) -> Result<String> {
    Ok(hive_name::resolve_with_accounts(given, env.accounts).map_err(CliError::from)?)
}

/// Runs `cli`; returns the exit code of a report, or the error to print (its exit code from
/// [`commands::exit_code_for`]).
///
/// # Errors
/// Every failure of the command, typed as [`CliError`] where it has its own exit code.
#[allow(
    clippy::too_many_lines,
    reason = "one dispatch over the commands reads best as one match"
)]
pub fn run(cli: &Cli, env: &mut Env<'_>) -> Result<u8> {
    let format = format_of(cli);
    let g = &cli.global;
    match &cli.command {
        Command::Analyze {
            capture,
            view,
            hkcu_sid,
            hive,
            pid,
            at,
            fail_if_held,
            from_boot,
            all_events,
        } => {
            let opts = crate::analyze::options(
                hkcu_sid,
                hive,
                *pid,
                at.as_deref(),
                *from_boot,
                *all_events,
            )?;
            let a = capture::analyze_file(capture, opts)
                .map_err(|e| CliError::BadArgument(format!("{}: {e}", capture.display())))?;
            env.out
                .write_all(crate::analyze::render(&a, *view, format)?.as_bytes())?;
            if format == Format::Csv {
                // As the live reports' `source:` line: CSV rows cannot say it.
                writeln!(env.err, "hivetrack: {}", crate::analyze::status_line(&a))?;
            }
            Ok(crate::analyze::verdict(&a, g.strict, *fail_if_held))
        }
        Command::Service(cmd) => crate::service_command::run(cmd, g, env),
        Command::Driver(cmd) => crate::driver_command::run(cmd, env.out),
        Command::Version => {
            let connect = &mut *env.connect;
            commands::version(env.out, || connect(Need::Driver))?;
            Ok(exit::OK)
        }
        Command::RawIoctl {
            code,
            input,
            output_len,
        } => {
            let connect = &mut *env.connect;
            commands::raw_ioctl(
                env.out,
                || connect(Need::Driver),
                *code,
                &input.0,
                *output_len,
            )?;
            Ok(exit::OK)
        }
        Command::Capture { action } => {
            let mut t = connect_for_stacks(env, "stack capture")?;
            let r = crate::capture::run(&mut Client::new(t.as_mut()), action, env.accounts)?;
            emit(env, format, &render::capture(&r, format)?, Some(&r.source))?;
            Ok(exit::OK)
        }
        Command::Modules { hive, all: _ } => {
            let r = modules_report(env, hive.as_deref())?;
            emit(env, format, &render::modules(&r, format)?, Some(&r.source))?;
            Ok(verdict(g.strict, &r.source, None))
        }
        Command::Holders {
            hive,
            fail_if_held,
            summary,
            stacks,
            grouped,
            pid,
        } => {
            if *grouped && format == Format::Csv {
                // CSV has one row shape, a key object each: refused, not ignored.
                return Err(CliError::BadArgument(
                    "holders --grouped has no CSV form (one row per key object): use --json"
                        .to_owned(),
                )
                .into());
            }
            let nt = nt_hive(env, hive)?;
            let mut t = connect(env, Need::Holders)?;
            if *stacks {
                crate::capture::require_stacks(&mut Client::new(t.as_mut()), "holders --stacks")?;
            }
            let mut r = Client::new(t.as_mut()).holders(&nt, *summary, env.now)?;
            if r.source.backend != crate::fallback::BACKEND {
                Client::new(t.as_mut()).attach_short_counts(&mut r);
            }
            if *stacks {
                // Read after the holders answer, once: a stack stays stored while a key
                // opened from it is tracked, so every key still held finds its stack.
                let table: StackTable = Client::new(t.as_mut()).stack_table()?;
                table.annotate(&mut r, env.symbols);
            }
            resolve_account(&mut r.hive, env.accounts, g.no_resolve);
            if !g.no_resolve
                && env.identities.supported()
                && r.holders.iter().any(|h| !h.exited)
                && exits_tracked(t.as_mut())
            {
                holder_identity::annotate(&mut r, env.identities);
            }
            r.verdict = crate::model::HoldersVerdict::of(&r);
            if let Some(pid) = *pid {
                // After the verdict: it stays the whole hive's (audit 23b, M6).
                keep_pid(&mut r, pid);
            }
            crate::model::group_keys(&mut r, *grouped && format == Format::Json);
            emit(env, format, &render::holders(&r, format)?, Some(&r.source))?;
            if let (Format::Csv, Some(pid)) = (format, pid) {
                // CSV's rows carry no mark of the filter (the table and JSON's `pid_filter`
                // do): said beside the source line, as CSV's completeness is (review 23d, L7).
                writeln!(
                    env.err,
                    "hivetrack: rows filtered (--pid {pid}): only the keys process {pid} opened or holds now; the hive's counts and verdict are the whole hive's"
                )?;
            }
            // Held as the report says it (its counts, which may be the page's counters read
            // before the walk: `client::count_held`), not only as its lists do: the table
            // said "1 open key(s) held" while the exit said not held (review, 2026-12-05).
            let held = r.verdict == crate::model::HoldersVerdict::Held;
            Ok(verdict(g.strict, &r.source, fail_if_held.then_some(held)))
        }
        Command::Hives => {
            let mut t = connect(env, Need::Driver)?;
            let mut r = Client::new(t.as_mut()).hives()?;
            for h in &mut r.hives {
                resolve_account(h, env.accounts, g.no_resolve);
            }
            emit(env, format, &render::hives(&r, format)?, Some(&r.source))?;
            Ok(verdict(g.strict, &r.source, None))
        }
        Command::Processes { top, kernel } => {
            if *kernel && format == Format::Csv {
                // Its second list has no CSV form: refused, not left out silently.
                return Err(CliError::BadArgument(
                    "processes --kernel has no CSV form: use the table or --json".to_owned(),
                )
                .into());
            }
            let mut t = connect(env, Need::Driver)?;
            let mut r = Client::new(t.as_mut()).processes(*top)?;
            if *kernel {
                Client::new(t.as_mut()).kernel_only(&mut r, env.now);
            }
            if !g.no_resolve
                && env.identities.supported()
                && r.processes.iter().any(|p| !p.exited)
                && exits_tracked(t.as_mut())
            {
                holder_identity::annotate_processes(&mut r, env.identities);
            }
            emit(
                env,
                format,
                &render::processes(&r, format)?,
                Some(&r.source),
            )?;
            Ok(verdict(g.strict, &r.source, None))
        }
        Command::Stats => {
            let mut t = connect(env, Need::Driver)?;
            let r = Client::new(t.as_mut()).stats()?;
            emit(env, format, &render::stats(&r, format)?, Some(&r.source))?;
            Ok(verdict(g.strict, &r.source, None))
        }
        Command::UnloadHistory => {
            let mut t = connect(env, Need::Driver)?;
            let r = Client::new(t.as_mut()).unload_history()?;
            emit(
                env,
                format,
                &render::unload_history(&r, format)?,
                Some(&r.source),
            )?;
            Ok(verdict(g.strict, &r.source, None))
        }
        Command::Snapshot { output } => {
            let mut t = connect(env, Need::Driver)?;
            let mut snap = Client::new(t.as_mut()).snapshot()?;
            for h in &mut snap.hives {
                resolve_account(h, env.accounts, g.no_resolve);
            }
            let mut text = serde_json::to_string_pretty(&snap)?;
            text.push('\n');
            std::fs::write(output, text)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let processes = {
                let mut pids: Vec<(u64, u64)> =
                    snap.keys.iter().map(|k| (k.pid, k.start_key)).collect();
                pids.sort_unstable();
                pids.dedup();
                pids.len()
            };
            let summary = match format {
                Format::Json => {
                    let mut s = serde_json::to_string_pretty(&serde_json::json!({
                        "schema": schema("snapshot-written"),
                        "source": snap.source,
                        "file": output.display().to_string(),
                        "taken_at": snap.taken_at,
                        "keys": snap.keys.len(),
                        "processes": processes,
                    }))?;
                    s.push('\n');
                    s
                }
                Format::Csv => format!(
                    "file,taken_at,keys,processes\n{},{},{},{}\n",
                    output.display(),
                    snap.taken_at.utc,
                    snap.keys.len(),
                    processes
                ),
                Format::Table => format!(
                    "Wrote {} open key object(s) of {processes} process(es), taken {}, to {}\n{}\n",
                    snap.keys.len(),
                    snap.taken_at.utc,
                    output.display(),
                    render::source_line(&snap.source)
                ),
            };
            emit(env, format, &summary, Some(&snap.source))?;
            Ok(verdict(g.strict, &snap.source, None))
        }
        Command::Diff { a, b } => {
            let before = read_snapshot(a)?;
            let after = read_snapshot(b)?;
            let r = diff_report(&before, &after);
            emit(env, format, &render::diff(&r, format)?, None)?;
            if format == Format::Csv && !r.complete {
                // As every CSV report's source line: on stderr, the rows stay rows. Found in
                // review (2026-12-05): CSV never said a diff was incomplete.
                writeln!(env.err, "hivetrack: {}", render::diff_caveat(&r))?;
            }
            Ok(if g.strict && !r.complete {
                exit::INCOMPLETE
            } else {
                exit::OK
            })
        }
        Command::Wait {
            hive,
            timeout,
            interval_ms,
        } => {
            let nt = nt_hive(env, hive)?;
            let timeout = Duration::try_from_secs_f64(*timeout).map_err(|_| {
                CliError::BadArgument(format!("--timeout {timeout}: not a number of seconds"))
            })?;
            let mut t = connect(env, Need::Holders)?;
            let mut client = Client::new(t.as_mut());
            let r = wait_free(
                &mut client,
                &nt,
                &display(&nt),
                timeout,
                Duration::from_millis((*interval_ms).max(1)),
                env.clock,
            )?;
            emit(env, format, &render::wait(&r, format)?, Some(&r.source))?;
            // Held, timed out, or free of holders with the deferred unload unfinished (still
            // loaded, its file in use): exit 1, so a script gated on `wait` does not go on.
            Ok(verdict(g.strict, &r.source, Some(r.verdict.held())))
        }
    }
}

/// Reads a snapshot file written by `hivetrack snapshot`.
///
/// # Errors
/// [`CliError::BadArgument`] when it cannot be read or is not a snapshot.
pub fn read_snapshot(path: &Path) -> Result<SnapshotFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::BadArgument(format!("cannot read {}: {e}", path.display())))?;
    let snap: SnapshotFile = serde_json::from_str(&text).map_err(|e| {
        CliError::BadArgument(format!(
            "{} is not a hivetrack snapshot file: {e}",
            path.display()
        ))
    })?;
    if snap.schema != schema("snapshot") {
        return Err(CliError::BadArgument(format!(
            "{} has schema `{}`; this client reads `{}`",
            path.display(),
            snap.schema,
            schema("snapshot")
        ))
        .into());
    }
    Ok(snap)
}

fn rows(s: &SnapshotFile) -> Vec<SnapshotRow> {
    s.keys
        .iter()
        .map(|k| SnapshotRow {
            pid: k.pid,
            start_key: k.start_key,
            id: k.id,
            open_time: k.open_time,
            hive_id: k.hive_id,
            name: k.path.encode_utf16().collect(),
        })
        .collect()
}

/// `holders --pid`: keeps the keys process `pid` opened or holds now.
///
/// A key it holds through a handle duplicated or inherited into it (`held_now_by`) keeps its
/// opener's entry whole (review 23d, H1: a process holding only a duplicated handle read
/// "holds none" and complete). The counts and verdict are left as they are, the whole hive's.
pub fn keep_pid(r: &mut crate::model::HoldersReport, pid: u64) {
    r.holders.retain(|h| {
        h.pid == pid
            || h.keys
                .iter()
                .any(|k| k.held_now_by.as_ref().is_some_and(|by| by.contains(&pid)))
    });
    r.untracked.retain(|u| u.pid == pid);
    r.short_counts.retain(|s| s.pid == pid);
    r.pid_filter = Some(pid);
}

/// Diffs two snapshots with the protocol crate's `diff` (per process and key name,
/// compared case-insensitively; largest growth first).
#[must_use]
pub fn diff_report(a: &SnapshotFile, b: &SnapshotFile) -> DiffReport {
    let image = |pid: u64, start_key: u64| {
        b.processes
            .iter()
            .chain(&a.processes)
            .find(|p| p.pid == pid && p.start_key == start_key)
            .and_then(|p| p.image.clone())
    };
    let entries = diff(&rows(a), &rows(b))
        .into_iter()
        .map(|e| DiffEntry {
            pid: e.pid,
            start_key: e.start_key,
            image: image(e.pid, e.start_key),
            name: display(&String::from_utf16_lossy(&e.name)),
            before: e.before,
            after: e.after,
            delta: i64::try_from(e.delta()).unwrap_or(i64::MAX),
        })
        .collect();
    DiffReport {
        schema: schema("diff"),
        before: a.taken_at.clone(),
        after: b.taken_at.clone(),
        complete: diff_complete(a, b),
        changes_real: changes_real(a, b),
        entries,
    }
}

/// Whether a diff of `a` and `b` shows only changes that happened: neither snapshot missed
/// events or could not see opens, and one run of the driver's tracking took both (a restart
/// between them loses every record: each key would show as closed; a snapshot that does not
/// say when tracking began, as those before 2026-12-04, cannot tell). Found in review.
fn diff_complete(a: &SnapshotFile, b: &SnapshotFile) -> bool {
    one_run(a, b)
        && a.source.not_recorded == 0
        && b.source.not_recorded == 0
        && a.source.missing.is_empty()
        && b.source.missing.is_empty()
}

/// Whether one run of the driver's tracking took both snapshots: both say when it began, and
/// it is the same start (a snapshot says so only while tracking is on).
fn one_run(a: &SnapshotFile, b: &SnapshotFile) -> bool {
    a.source.tracking_since.is_some()
        && a.source.tracking_since.as_ref().map(|t| t.filetime)
            == b.source.tracking_since.as_ref().map(|t| t.filetime)
}

/// Whether every change a diff of `a` and `b` shows happened ([`DiffReport::changes_real`]):
/// one run of tracking and no loss counted by either snapshot, so no open or close up to B
/// went unrecorded. What the snapshots cannot see otherwise (their `missing`: keys opened
/// before tracking began) is in neither of them. Not "the sums are equal": one loss counter
/// (`names_unavailable`'s hive-list count) is withdrawn when a later read of the hive list is
/// whole, so a withdrawal and a new loss between the snapshots would cancel out (review 23d,
/// M4).
fn changes_real(a: &SnapshotFile, b: &SnapshotFile) -> bool {
    one_run(a, b) && a.source.not_recorded == 0 && b.source.not_recorded == 0
}

/// The client's clock as a FILETIME.
#[must_use]
pub fn filetime_now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::model::UNIX_EPOCH_FILETIME
        + u64::try_from(since.as_nanos() / 100).unwrap_or(u64::MAX / 2)
}
