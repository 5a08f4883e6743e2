//! `hivetrack service install | uninstall | run`: the command line of the event service
//! (issue 17) and what each subcommand does on this system.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

#[cfg(windows)]
use anyhow::Context;
use anyhow::Result;
use clap::Subcommand;

use crate::app::Env;
use crate::cli::Global;
use crate::commands::CliError;
use crate::event_service::{self, ServiceEnv, ServiceOptions};
use crate::event_sink::{EventSink, JsonLines, Sinks};
use crate::transport::{Need, Transport, TransportError};

/// The Windows service's name (the driver's own service is `hivetrack`).
pub const SERVICE_NAME: &str = "hivetracksvc";
/// The Event Log source: Application log, beside event 1530.
pub const EVENT_SOURCE: &str = "hivetrack";
/// The message table DLL, next to `hivetrack.exe`.
pub const MESSAGE_DLL: &str = "hivetrack-events.dll";

/// `hivetrack service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Copy hivetrack.exe and hivetrack-events.dll (next to it) into
    /// `%ProgramFiles%\hivetrack`, register the event source `hivetrack` (Application log)
    /// and the auto-start service `hivetracksvc` running that copy as `hivetrack service
    /// run`, and start it (Windows, as Administrator).
    Install {
        /// Also write every event as a JSON line to FILE: refused unless only SYSTEM and
        /// Administrators can change FILE, its folder and the folders above (the service
        /// writes it as SYSTEM).
        #[arg(long, value_name = "FILE")]
        jsonl: Option<PathBuf>,
        /// Seconds after a failed unload at which the service asks for its hive's holders
        /// again (event 1002), only when the driver does not look again itself (its
        /// `HeldAfterSeconds` 0) or did not know the hive; otherwise the driver's delay
        /// applies.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        still_held_after: u64,
    },
    /// Stop and delete the service, remove the event source's registration and the copies
    /// in `%ProgramFiles%\hivetrack` (Windows, as Administrator). Events already logged stay
    /// in the Application log.
    Uninstall,
    /// Drain the driver's event stream into the Event Log (Windows) and/or JSON lines: every
    /// failed hive unload with its holders (1001), the hive still held later (1002), key-count
    /// alarms (1003), and the service's own state (1010-1014).
    Run {
        /// Write what the driver has now and exit (no waiting, no reconnecting).
        #[arg(long)]
        once: bool,
        /// Write every event as a JSON line to FILE (`-`: stdout). Without it on systems
        /// other than Windows, stdout.
        #[arg(long, value_name = "FILE")]
        jsonl: Option<String>,
        /// Seconds after a failed unload at which the service asks for its hive's holders
        /// again (event 1002), only when the driver does not look again itself (its
        /// `HeldAfterSeconds` 0) or did not know the hive; otherwise the driver's delay
        /// applies.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        still_held_after: u64,
        /// Run under the service control manager (the command line `install` registers).
        #[arg(long, hide = true)]
        scm: bool,
    },
}

/// A transport shared by every "connection" of the loop: the emulator is one machine per
/// process, so reconnecting reuses it.
struct Shared(Rc<RefCell<Box<dyn Transport>>>);

impl Transport for Shared {
    fn backend(&self) -> &'static str {
        self.0.borrow().backend()
    }
    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        self.0.borrow_mut().ioctl(code, input, output)
    }
    fn missing(&self) -> &'static [&'static str] {
        self.0.borrow().missing()
    }
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        self.0.borrow_mut().kernel_open_keys(hive)
    }
    fn process_image(&mut self, pid: u64) -> Option<String> {
        self.0.borrow_mut().process_image(pid)
    }
}

/// Opens the `--jsonl` destination (`-`: stdout).
///
/// # Errors
/// A file that cannot be opened for appending.
pub fn jsonl_sink(target: &str) -> Result<Box<dyn EventSink>> {
    if target == "-" {
        return Ok(Box::new(JsonLines::new(std::io::stdout())));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target)
        .map_err(|e| CliError::BadArgument(format!("cannot open --jsonl {target}: {e}")))?;
    Ok(Box::new(JsonLines::new(file)))
}

/// Runs `hivetrack service …`.
///
/// # Errors
/// Bad arguments, a system that cannot do it, the service manager's or registry's refusal.
pub fn run(cmd: &ServiceCommand, g: &Global, env: &mut Env<'_>) -> Result<u8> {
    match cmd {
        ServiceCommand::Install {
            jsonl,
            still_held_after,
        } => install(jsonl.as_deref(), *still_held_after, env.out),
        ServiceCommand::Uninstall => uninstall(env.out),
        ServiceCommand::Run {
            once,
            jsonl,
            still_held_after,
            scm,
        } => {
            let opts = ServiceOptions {
                once: *once,
                still_held_after: Duration::from_secs(*still_held_after),
                ..ServiceOptions::default()
            };
            if *scm {
                return run_under_scm(opts, jsonl.clone());
            }
            run_console(opts, jsonl.as_deref(), g, env)
        }
    }
}

/// `hivetrack service run` in a console (or a test): the Event Log on Windows, JSON lines to
/// `--jsonl` (`-`: the command's output; off Windows the default).
fn run_console(
    opts: ServiceOptions,
    jsonl: Option<&str>,
    g: &Global,
    env: &mut Env<'_>,
) -> Result<u8> {
    let Env {
        out,
        err,
        connect: connect_env,
        accounts,
        identities,
        now,
        clock,
        symbols: _,
    } = env;
    let mut sinks = Sinks::default();
    #[cfg(windows)]
    sinks
        .0
        .push(Box::new(crate::windows_event_log::EventLogSink::open()?));
    match jsonl {
        Some("-") => sinks.0.push(Box::new(JsonLines::new(&mut **out))),
        Some(target) => sinks.0.push(jsonl_sink(target)?),
        None if cfg!(not(windows)) => sinks.0.push(Box::new(JsonLines::new(&mut **out))),
        None => {}
    }
    let shared: Option<Rc<RefCell<Box<dyn Transport>>>> = if g.emulator().is_some() {
        Some(Rc::new(RefCell::new(
            connect_env(Need::Driver).map_err(crate::commands::classify)?,
        )))
    } else {
        None
    };
    let mut connect = || -> Result<Box<dyn Transport>, TransportError> {
        shared.as_ref().map_or_else(
            || connect_env(Need::Driver),
            |s| Ok(Box::new(Shared(Rc::clone(s))) as Box<dyn Transport>),
        )
    };
    let keep_going = || true;
    let (accounts, identities): (
        &dyn crate::accounts::Accounts,
        &dyn crate::holder_identity::Identities,
    ) = if g.no_resolve {
        (
            &crate::accounts::NoAccounts,
            &crate::holder_identity::NoIdentities,
        )
    } else {
        (*accounts, *identities)
    };
    let mut senv = ServiceEnv {
        connect: &mut connect,
        sink: &mut sinks,
        accounts,
        identities,
        clock: &mut **clock,
        started_at: *now,
        // The system clock read as the service manager's run reads it, so a clock set back
        // or forward after a console run starts is seen there too (review 22d, M1); not for
        // the emulator or a test's scripted driver, whose times are the test's own.
        wall: if cfg!(windows) && g.emulator().is_none() {
            Some(&event_service::filetime_now)
        } else {
            None
        },
        // The interrupt-time count the driver stamps records with (review 22d, L3); the
        // emulator's is its model's, not this machine's.
        interrupt: if cfg!(windows) && g.emulator().is_none() {
            Some(&event_service::interrupt_time_now)
        } else {
            None
        },
        keep_going: &keep_going,
    };
    let (code, counts) = event_service::run(opts, &mut senv)?;
    drop(sinks);
    let to_stdout = jsonl == Some("-") || (jsonl.is_none() && cfg!(not(windows)));
    if !to_stdout {
        let mut places = Vec::new();
        if cfg!(windows) {
            places.push(format!("the Application log (source {EVENT_SOURCE})"));
        }
        places.extend(jsonl.map(str::to_owned));
        writeln!(
            err,
            "hivetrack: {} event(s) written to {}",
            counts.events,
            places.join(" and ")
        )?;
    }
    if let Some(e) = counts.last_sink_error {
        writeln!(
            err,
            "hivetrack: {} of {} event(s) could not be written: {e}",
            counts.sink_errors, counts.events
        )?;
    }
    Ok(code)
}

/// Where an ACL check's refusal goes: an error on Windows; under Wine, whose files all
/// belong to the Unix user, a warning on `out` (one per check).
#[cfg(windows)]
struct Refusals<'a> {
    wine: bool,
    out: &'a mut dyn Write,
}

#[cfg(windows)]
impl Refusals<'_> {
    fn refuse(&mut self, message: String) -> Result<()> {
        if self.wine {
            writeln!(self.out, "hivetrack: under Wine, not enforced: {message}")?;
            Ok(())
        } else {
            Err(CliError::BadArgument(message).into())
        }
    }
}

/// The `--jsonl` path the service is registered with, refused unless only SYSTEM,
/// Administrators and `TrustedInstaller` can change it, its folder and the folders above.
#[cfg(windows)]
fn checked_jsonl(given: &std::path::Path, refusals: &mut Refusals<'_>) -> Result<PathBuf> {
    use crate::install_location::{
        jsonl_checks, service_jsonl_path, unsafe_jsonl_message, untrusted_writers,
    };
    let cwd = std::env::current_dir().context("cannot tell the current folder")?;
    let path = service_jsonl_path(given, &cwd).map_err(|e| CliError::BadArgument(e.to_string()))?;
    for (checked, role) in jsonl_checks(&path, path.exists()) {
        let (owner, dacl) = crate::windows_install::owner_and_dacl(&checked).map_err(|e| {
            CliError::BadArgument(format!(
                "--jsonl {}: {e:#} (create its folder first, writable only by Administrators and SYSTEM)",
                path.display()
            ))
        })?;
        let writers = untrusted_writers(owner.as_deref(), dacl.as_deref(), role);
        if !writers.is_empty() {
            refusals.refuse(unsafe_jsonl_message(&path, &checked, role, &writers))?;
            break;
        }
    }
    Ok(path)
}

/// Creates `%ProgramFiles%\hivetrack`, owned by Administrators, and checks that only SYSTEM,
/// Administrators and `TrustedInstaller` can change it or a folder above (what a new folder
/// under Program Files inherits: checked rather than assumed).
#[cfg(windows)]
fn checked_install_dir(
    plan: &crate::install_location::InstallPlan,
    refusals: &mut Refusals<'_>,
) -> Result<()> {
    use crate::install_location::{jsonl_checks, untrusted_writers};
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("cannot create {}", plan.dir.display()))?;
    crate::windows_install::own_by_administrators(&plan.dir)?;
    for (checked, role) in jsonl_checks(&plan.exe, false) {
        let (owner, dacl) = crate::windows_install::owner_and_dacl(&checked)?;
        let writers = untrusted_writers(owner.as_deref(), dacl.as_deref(), role);
        if !writers.is_empty() {
            refusals.refuse(format!(
                "refusing to install into {}: {} can be changed by {} (its permissions are not Program Files' defaults)",
                plan.dir.display(),
                checked.display(),
                writers.join(", ")
            ))?;
            break;
        }
    }
    Ok(())
}

/// Refuses to copy sources that anyone but SYSTEM, Administrators or `TrustedInstaller` can
/// change, or whose folder or a folder above they can (review 21b, M2:
/// `install_location::source_checks`).
#[cfg(windows)]
fn checked_sources(
    plan: &crate::install_location::InstallPlan,
    refusals: &mut Refusals<'_>,
) -> Result<()> {
    use crate::install_location::{source_checks, unsafe_source_message, untrusted_writers};
    for (checked, role) in source_checks(&plan.copies) {
        let (owner, dacl) = crate::windows_install::owner_and_dacl(&checked)?;
        let writers = untrusted_writers(owner.as_deref(), dacl.as_deref(), role);
        if let Some(message) = unsafe_source_message(&checked, role, &writers) {
            refusals.refuse(message)?;
            break;
        }
    }
    Ok(())
}

#[cfg(windows)]
fn install(
    jsonl: Option<&std::path::Path>,
    still_held_after: u64,
    out: &mut dyn Write,
) -> Result<u8> {
    use crate::install_location;

    let exe = std::env::current_exe().context("cannot tell where hivetrack.exe is")?;
    let plan = install_location::plan(&exe, &crate::windows_install::program_files()?);
    let source_dll = exe.with_file_name(MESSAGE_DLL);
    if !source_dll.is_file() {
        return Err(CliError::BadArgument(format!(
            "{} is missing: copy it from the package folder next to {} (it holds the event messages)",
            source_dll.display(),
            exe.display()
        ))
        .into());
    }
    let mut refusals = Refusals {
        wine: crate::windows_install::under_wine(),
        out: &mut *out,
    };
    // The JSON lines file is written by SYSTEM: refuse a path anyone else can redirect.
    let jsonl = jsonl
        .map(|given| checked_jsonl(given, &mut refusals))
        .transpose()?;
    if crate::windows_service_host::installed() {
        return Err(CliError::BadArgument(format!(
            "service {SERVICE_NAME} is already installed: `hivetrack service uninstall` first"
        ))
        .into());
    }
    // Files `service uninstall` could not remove in use go at the next restart: copies made
    // now at the same paths would go with them (review 21b, L2).
    let pending = install_location::pending_removals(
        &crate::windows_install::pending_file_renames()?,
        &plan.dir.display().to_string(),
    );
    if !pending.is_empty() {
        return Err(CliError::BadArgument(format!(
            "{} is still to be removed at the next restart (an earlier `hivetrack service \
             uninstall` scheduled it): restart Windows first, then install; installing now \
             would put the service's files where that restart deletes them",
            pending.join(", ")
        ))
        .into());
    }
    checked_sources(&plan, &mut refusals)?;
    checked_install_dir(&plan, &mut refusals)?;
    for (from, to) in &plan.copies {
        crate::windows_install::copy_owned(from, to)?;
    }
    if !plan.copies.is_empty() {
        writeln!(
            out,
            "Copied {} and {MESSAGE_DLL} to {} (only Administrators and SYSTEM can change them there)",
            install_location::EXE_NAME,
            plan.dir.display()
        )?;
    }
    crate::windows_event_log::register_source(&plan.dll)?;
    writeln!(
        out,
        "Registered event source {EVENT_SOURCE} (Application log), messages in {}",
        plan.dll.display()
    )?;
    let restricted =
        crate::windows_service_host::install(&plan.exe, jsonl.as_deref(), still_held_after)?;
    let privileges = if restricted {
        crate::windows_service_host::REQUIRED_PRIVILEGES.join(", ")
    } else {
        "not restricted: Wine has no SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO".to_owned()
    };
    writeln!(
        out,
        "Installed and started service {SERVICE_NAME} (automatic start, LocalSystem, privileges {privileges}): {} service run --scm",
        plan.exe.display()
    )?;
    Ok(crate::exit::OK)
}

#[cfg(not(windows))]
fn install(_: Option<&std::path::Path>, _: u64, _: &mut dyn Write) -> Result<u8> {
    Err(not_windows("install"))
}

#[cfg(windows)]
fn uninstall(out: &mut dyn Write) -> Result<u8> {
    use crate::windows_install::{Removal, remove_or_schedule, schedule_at_restart};

    let service = crate::windows_service_host::uninstall();
    let source = crate::windows_event_log::unregister_source();
    match &service {
        Ok(()) => writeln!(out, "Stopped and deleted service {SERVICE_NAME}")?,
        Err(e) => writeln!(out, "Service {SERVICE_NAME}: {e:#}")?,
    }
    match &source {
        Ok(()) => writeln!(
            out,
            "Removed event source {EVENT_SOURCE} (its events stay in the log)"
        )?,
        Err(e) => writeln!(out, "Event source {EVENT_SOURCE}: {e:#}")?,
    }
    // The copies `install` made (files first, then the folder if empty).
    let exe = std::env::current_exe().context("cannot tell where hivetrack.exe is")?;
    let plan = crate::install_location::plan(&exe, &crate::windows_install::program_files()?);
    let mut files = Ok(());
    let mut pending = false;
    for (path, folder) in [(&plan.exe, false), (&plan.dll, false), (&plan.dir, true)] {
        // A folder whose files go at the restart goes then too (after them).
        let removal = if folder && pending && path.exists() {
            schedule_at_restart(path)
        } else {
            remove_or_schedule(path, folder)
        };
        pending |= matches!(removal, Ok(Removal::AtRestart));
        match removal {
            Ok(Removal::Removed) => writeln!(out, "Removed {}", path.display())?,
            Ok(Removal::AtRestart) => writeln!(
                out,
                "{} is in use: it is removed at the next restart (install again only after it)",
                path.display()
            )?,
            Ok(Removal::KeptNotEmpty) => {
                writeln!(out, "{} still holds other files: kept", path.display())?;
            }
            Ok(Removal::Absent) => {}
            Err(e) => {
                writeln!(out, "{e:#}")?;
                files = Err(e);
            }
        }
    }
    service.and(source).and(files)?;
    Ok(crate::exit::OK)
}

#[cfg(not(windows))]
fn uninstall(_: &mut dyn Write) -> Result<u8> {
    Err(not_windows("uninstall"))
}

#[cfg(windows)]
fn run_under_scm(opts: ServiceOptions, jsonl: Option<String>) -> Result<u8> {
    crate::windows_service_host::dispatch(opts, jsonl)?;
    Ok(crate::exit::OK)
}

#[cfg(not(windows))]
fn run_under_scm(_: ServiceOptions, _: Option<String>) -> Result<u8> {
    Err(not_windows("run --scm"))
}

#[cfg(not(windows))]
fn not_windows(what: &str) -> anyhow::Error {
    CliError::BackendUnavailable(TransportError::NotInThisBuild(match what {
        "install" => "`hivetrack service install` registers a Windows service and Event Log source: run it on Windows (as Administrator)",
        "uninstall" => "`hivetrack service uninstall` removes a Windows service and Event Log source: run it on Windows (as Administrator)",
        _ => "`--scm` is for the Windows service control manager; run `hivetrack service run` here",
    }))
    .into()
}
