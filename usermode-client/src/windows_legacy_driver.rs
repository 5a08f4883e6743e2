//! `hivetrack driver install|uninstall --legacy` on Windows.
//!
//! The file in `System32\drivers`, the kernel service through the service control manager,
//! its `Parameters\Altitude`, and their removal ([`crate::legacy_driver`] decides).
//!
//! The service control manager calls follow Microsoft's sample for a non-PnP kernel driver,
//! Windows-driver-samples `general/ioctl/wdm/exe/install.c`: `InstallDriver`
//! (`CreateService` with `SERVICE_KERNEL_DRIVER`, `SERVICE_DEMAND_START`,
//! `SERVICE_ERROR_NORMAL`, no group, tag or dependencies, `LocalSystem`), `StartDriver`
//! (`StartService`), `StopDriver` (`ControlService(SERVICE_CONTROL_STOP)`) and `RemoveDriver`
//! (`DeleteService`). Run under Wine by `cargo xtask wine-e2e`; never on a real Windows
//! Server by the project's tests.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use windows_service::service::{
    Service, ServiceAccess, ServiceErrorControl, ServiceInfo, ServiceStartType, ServiceState,
    ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_sys::Win32::Foundation::ERROR_SERVICE_DOES_NOT_EXIST;
use windows_sys::Win32::System::Registry::REG_SZ;

use crate::commands::CliError;
use crate::install_location::{jsonl_checks, pending_removals, untrusted_writers};
use crate::legacy_driver::{
    self, DESCRIPTION, DISPLAY_NAME, Existing, FILE_NAME, FilePlan, SERVICE, SYSTEM_START,
};
use crate::windows_install::{
    Removal, own_by_administrators, owner_and_dacl, pending_file_renames, remove_or_schedule,
    under_wine,
};
use crate::windows_registry::Key;

/// `RTL_OSVERSIONINFOW` (Learn, "`RtlGetVersion` function (wdm.h)").
#[repr(C)]
struct OsVersionInfo {
    size: u32,
    major: u32,
    minor: u32,
    build: u32,
    platform: u32,
    csd: [u16; 128],
}

/// The Windows build number, from ntdll's `RtlGetVersion` (not `GetVersionExW`, which
/// reports 6.2 to a program without a compatibility manifest; Learn, "`GetVersionExW`").
///
/// # Errors
/// ntdll has no `RtlGetVersion`, or it failed.
pub fn os_build() -> Result<u32> {
    let proc = crate::windows_install::ntdll_export(c"RtlGetVersion")
        .ok_or_else(|| anyhow!("ntdll.dll has no RtlGetVersion"))?;
    let rtl_get_version: unsafe extern "system" fn(*mut OsVersionInfo) -> i32 =
        // SAFETY: RtlGetVersion's signature (wdm.h): NTSTATUS RtlGetVersion(PRTL_OSVERSIONINFOW).
        unsafe { std::mem::transmute(proc) };
    let mut info = OsVersionInfo {
        size: u32::try_from(std::mem::size_of::<OsVersionInfo>())?,
        major: 0,
        minor: 0,
        build: 0,
        platform: 0,
        csd: [0; 128],
    };
    // SAFETY: `info` is a writable RTL_OSVERSIONINFOW with its size set.
    let status = unsafe { rtl_get_version(&raw mut info) };
    if status < 0 {
        return Err(anyhow!("RtlGetVersion failed ({status:#x})"));
    }
    Ok(info.build)
}

/// `%SystemRoot%\System32\drivers\hivetrack.sys`.
fn installed_file() -> Result<PathBuf> {
    Ok(crate::windows_install::system32()?
        .join("drivers")
        .join(FILE_NAME))
}

/// The service `hivetrack` as it is now.
fn existing(manager: &ServiceManager) -> Result<Existing> {
    match manager.open_service(SERVICE, ServiceAccess::QUERY_CONFIG) {
        Ok(service) => {
            let config = service.query_config().with_context(|| {
                format!("cannot read service {SERVICE}'s configuration (run as Administrator)")
            })?;
            Ok(legacy_driver::classify(
                &config.executable_path.display().to_string(),
                &crate::windows_install::system32()?.display().to_string(),
            ))
        }
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST.cast_signed()) =>
        {
            Ok(Existing::None)
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot open service {SERVICE} (run as Administrator)"))
        }
    }
}

/// Writes `<service key>\Parameters\<name>` as `REG_SZ` (the INF's `HKR, Parameters, …,
/// 0x00000002`: `FLG_ADDREG_TYPE_SZ` with no-clobber; the key is new here).
fn set_parameter(name: &str, value: &str) -> Result<()> {
    Key::create_hklm(&format!(
        r"SYSTEM\CurrentControlSet\Services\{SERVICE}\Parameters"
    ))?
    .set_string(name, REG_SZ, value)
}

/// Who besides SYSTEM, Administrators and `TrustedInstaller` can change the installed file,
/// its folder or a folder above (the kernel loads it at every start): the first finding.
fn unsafe_writers(file: &Path) -> Result<Option<String>> {
    for (checked, role) in jsonl_checks(file, true) {
        let (owner, dacl) = owner_and_dacl(&checked)?;
        let writers = untrusted_writers(owner.as_deref(), dacl.as_deref(), role);
        if !writers.is_empty() {
            return Ok(Some(format!(
                "{} can be changed by {}",
                checked.display(),
                writers.join(", ")
            )));
        }
    }
    Ok(None)
}

/// Why `path` could not be created or written, with the advice that fits (audit 23a, L7).
fn write_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    let advice = match e.raw_os_error() {
        // ERROR_ACCESS_DENIED
        Some(5) => " (run as Administrator)",
        // ERROR_SHARING_VIOLATION: e.g. a loaded driver image.
        Some(32) => " (in use: a driver loaded from it? restart, then install)",
        _ => "",
    };
    anyhow!("cannot write {}: {e}{advice}", path.display())
}

/// What a failed install removes again: the file if this run created it ([`FilePlan`]), the
/// service if it created it. Every `?` after the copy drops it armed, which undoes both
/// (audit 23a, M4); [`Undo::keep`] disarms it once the service is complete.
struct Undo {
    /// The file this run created.
    file: Option<PathBuf>,
    /// The service this run created.
    service: Option<Service>,
}

impl Undo {
    /// Keeps what was installed: returns the service.
    fn keep(mut self) -> Option<Service> {
        self.file = None;
        self.service.take()
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            match service.delete() {
                Ok(()) => eprintln!("hivetrack: deleted service {SERVICE} again"),
                Err(e) => eprintln!(
                    "hivetrack: cannot delete service {SERVICE} again ({:#}): `sc.exe delete {SERVICE}`",
                    anyhow::Error::new(e)
                ),
            }
        }
        if let Some(file) = self.file.take() {
            match std::fs::remove_file(&file) {
                Ok(()) => eprintln!("hivetrack: removed {} again", file.display()),
                Err(e) => eprintln!(
                    "hivetrack: cannot remove {} again ({e}): delete it yourself",
                    file.display()
                ),
            }
        }
    }
}

/// `hivetrack driver install --legacy SYS`.
///
/// # Errors
/// A wrong file, a refusal of [`legacy_driver::install_decision`] or
/// [`legacy_driver::existing_file_plan`], the file system's, the registry's or the service
/// manager's refusal (not elevated), or a driver that did not start (it stays installed,
/// demand start, and the message says how to start or remove it).
#[allow(
    clippy::too_many_lines,
    reason = "one linear install, each step undone by one guard on the failure of the next"
)]
pub fn install(sys: &Path, force: bool, boot: bool, out: &mut dyn Write) -> Result<u8> {
    // Read once: the bytes checked are the bytes installed.
    let bytes = std::fs::read(sys)
        .map_err(|e| CliError::BadArgument(format!("cannot read {}: {e}", sys.display())))?;
    legacy_driver::check_image(&bytes)
        .map_err(|e| CliError::BadArgument(format!("{}: {e}", sys.display())))?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("cannot open the service control manager (run as Administrator)")?;
    let build = os_build()?;
    let notes = legacy_driver::install_decision(build, force, &existing(&manager)?)
        .map_err(CliError::BadArgument)?;
    for note in notes {
        writeln!(out, "hivetrack: {note}")?;
    }
    let file = installed_file()?;
    // A removal an earlier `driver uninstall --legacy` scheduled would delete the new copy.
    let pending = pending_removals(&pending_file_renames()?, &file.display().to_string());
    if !pending.is_empty() {
        return Err(CliError::BadArgument(format!(
            "{} is still to be removed at the next restart (an earlier `hivetrack driver \
             uninstall --legacy` scheduled it): restart Windows first, then install",
            file.display()
        ))
        .into());
    }
    let mut undo = Undo {
        file: None,
        service: None,
    };
    // `create_new`: an existing file is never truncated (it would keep its own DACL) nor
    // deleted on a rollback (audit 23a, M1).
    let plan = match OpenOptions::new().write(true).create_new(true).open(&file) {
        Ok(mut f) => {
            undo.file = Some(file.clone());
            f.write_all(&bytes).map_err(|e| write_error(&file, &e))?;
            FilePlan::Create
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let there = std::fs::read(&file)
                .with_context(|| format!("cannot read the existing {}", file.display()))?;
            legacy_driver::existing_file_plan(&there, &bytes, &file.display().to_string())
                .map_err(CliError::BadArgument)?
        }
        Err(e) => return Err(write_error(&file, &e)),
    };
    if plan.remove_on_rollback() {
        own_by_administrators(&file)?;
    }
    let only_admins = match unsafe_writers(&file)? {
        None => " (only Administrators and SYSTEM can change it there)",
        Some(finding) if under_wine() => {
            writeln!(out, "hivetrack: under Wine, not enforced: {finding}")?;
            ""
        }
        Some(finding) => {
            return Err(CliError::BadArgument(format!(
                "refusing to install {}: {finding} (its permissions are not System32\\drivers' defaults)",
                file.display()
            ))
            .into());
        }
    };
    match plan {
        FilePlan::Create => writeln!(
            out,
            "Copied {} to {}{only_admins}",
            sys.display(),
            file.display()
        )?,
        FilePlan::Reuse => writeln!(
            out,
            "{} is already there with the same bytes: used as is{only_admins}",
            file.display()
        )?,
    }
    let spec = legacy_driver::service_spec();
    let mut info = ServiceInfo {
        name: SERVICE.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::KERNEL_DRIVER,
        // Demand start even with --boot (audit 23a, H1): see `legacy_driver::SYSTEM_START`.
        start_type: ServiceStartType::OnDemand,
        error_control: ServiceErrorControl::Normal,
        executable_path: PathBuf::from(spec.image_path),
        launch_arguments: Vec::new(),
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    undo.service = Some(
        manager
            .create_service(
                &info,
                ServiceAccess::CHANGE_CONFIG
                    | ServiceAccess::START
                    | ServiceAccess::QUERY_STATUS
                    | ServiceAccess::DELETE,
            )
            .with_context(|| format!("cannot create service {SERVICE}"))?,
    );
    let service = undo.service.as_ref().ok_or_else(|| anyhow!("no service"))?;
    service
        .set_description(DESCRIPTION)
        .context("cannot set the service description")?;
    for (name, value) in &spec.parameters {
        set_parameter(name, value)?;
    }
    writeln!(
        out,
        "Created service {SERVICE} (kernel driver, demand start, error control normal, ImagePath {}, Parameters\\Altitude {})",
        spec.image_path,
        legacy_driver::ALTITUDE
    )?;
    // Complete: a failed start keeps it (demand start), to be fixed and started by hand.
    let service = undo.keep().ok_or_else(|| anyhow!("no service"))?;
    let started = service.start::<&OsStr>(&[]);
    let boot_start = legacy_driver::boot_start_after(boot, started.is_ok());
    if let Err(e) = started {
        return Err(anyhow::Error::new(e).context(legacy_driver::start_failed_message(boot)));
    }
    writeln!(
        out,
        "Started {SERVICE}: `hivetrack stats` shows what it tracks"
    )?;
    if boot_start == Some(SYSTEM_START) {
        info.start_type = ServiceStartType::SystemStart;
        service.change_config(&info).with_context(|| {
            format!(
                "{SERVICE} is installed and running, but its boot start (--boot) could not be \
                 set: `sc.exe config {SERVICE} start= system`"
            )
        })?;
        writeln!(
            out,
            "Set {SERVICE} to system start (--boot): it loads at every boot from the next one"
        )?;
    }
    Ok(crate::exit::OK)
}

/// `hivetrack driver uninstall --legacy`.
///
/// # Errors
/// A service installed from the INF (refused), or the service manager's or file system's
/// refusal. A driver that did not stop is exit [`crate::exit::STILL_LOADED`], not an error.
pub fn uninstall(out: &mut dyn Write) -> Result<u8> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service control manager (run as Administrator)")?;
    let file = installed_file()?;
    let mut code = crate::exit::OK;
    match existing(&manager)? {
        Existing::Other { image_path } => {
            return Err(CliError::BadArgument(format!(
                "service {SERVICE} runs {image_path}: it was not installed by `driver install \
                 --legacy` (e.g. from the INF, the driver store); remove it with `sc.exe stop \
                 hivetrack` and `pnputil /delete-driver oemN.inf /uninstall` (`pnputil \
                 /enum-drivers` names the oemN.inf whose original name is hivetrack.inf)"
            ))
            .into());
        }
        Existing::None => writeln!(out, "No service {SERVICE}: nothing to stop or delete")?,
        Existing::Legacy => {
            let service = manager
                .open_service(
                    SERVICE,
                    ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
                )
                .with_context(|| format!("cannot open service {SERVICE} (run as Administrator)"))?;
            let running = service
                .query_status()
                .is_ok_and(|s| s.current_state != ServiceState::Stopped);
            let (stop_error, stopped) = if running {
                // `ControlService(SERVICE_CONTROL_STOP)` (the sample's StopDriver). With a
                // handle to the device open, the unload is only marked (WRK
                // IopCheckUnloadDriver: DOE_UNLOAD_PENDING) and happens at the last close.
                let stop_error = service
                    .stop()
                    .err()
                    .map(|e| format!("{:#}", anyhow::Error::new(e)));
                let deadline = Instant::now() + Duration::from_secs(10);
                while service
                    .query_status()
                    .is_ok_and(|s| s.current_state != ServiceState::Stopped)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let stopped = service
                    .query_status()
                    .is_ok_and(|s| s.current_state == ServiceState::Stopped);
                (stop_error, stopped)
            } else {
                (None, true)
            };
            let (lines, stop_code) = legacy_driver::stop_report(stop_error.as_deref(), stopped);
            for line in lines {
                writeln!(out, "{line}")?;
            }
            code = stop_code;
            service
                .delete()
                .with_context(|| format!("cannot delete service {SERVICE}"))?;
            writeln!(out, "{}", legacy_driver::deleted_line(stopped))?;
        }
    }
    let path = file.display().to_string();
    let contents = match std::fs::read(&file) {
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        read => Some(read.map_err(|e| e.to_string())),
    };
    let Some(contents) = contents else {
        writeln!(out, "No {path}: nothing to remove")?;
        return Ok(code);
    };
    if let Err(kept) =
        legacy_driver::uninstall_file_decision(contents.as_deref().map_err(Clone::clone), &path)
    {
        writeln!(out, "hivetrack: {kept}")?;
        return Ok(code);
    }
    match remove_or_schedule(&file, false)? {
        Removal::Removed => writeln!(out, "Removed {path}")?,
        Removal::AtRestart => writeln!(
            out,
            "{path} is in use (the driver has not unloaded): it is removed at the next restart"
        )?,
        Removal::Absent => writeln!(out, "No {path}: nothing to remove")?,
        Removal::KeptNotEmpty => {}
    }
    Ok(code)
}
