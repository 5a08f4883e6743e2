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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use windows_service::service::{
    ServiceAccess, ServiceErrorControl, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_sys::Win32::Foundation::ERROR_SERVICE_DOES_NOT_EXIST;
use windows_sys::Win32::System::Registry::REG_SZ;

use crate::commands::CliError;
use crate::install_location::{jsonl_checks, pending_removals, untrusted_writers};
use crate::legacy_driver::{
    self, DESCRIPTION, DISPLAY_NAME, Existing, FILE_NAME, SERVICE, SYSTEM_START,
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
    // SAFETY: RtlGetVersion's signature (wdm.h): NTSTATUS RtlGetVersion(PRTL_OSVERSIONINFOW).
    let rtl_get_version: unsafe extern "system" fn(*mut OsVersionInfo) -> i32 =
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
            let config = service
                .query_config()
                .with_context(|| format!("cannot read service {SERVICE}'s configuration"))?;
            Ok(legacy_driver::classify(
                &config.executable_path.display().to_string(),
            ))
        }
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST.cast_signed()) =>
        {
            Ok(Existing::None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot open service {SERVICE}")),
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

/// `hivetrack driver install --legacy SYS`.
///
/// # Errors
/// A wrong file, a refusal of [`legacy_driver::install_decision`], the file system's, the
/// registry's or the service manager's refusal (not elevated), or a driver that did not
/// start (it stays installed, and the message says how to start or remove it).
#[allow(
    clippy::too_many_lines,
    reason = "one linear install, each step undone on the failure of the next"
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
    std::fs::write(&file, &bytes)
        .with_context(|| format!("cannot write {} (run as Administrator)", file.display()))?;
    own_by_administrators(&file)?;
    let only_admins = match unsafe_writers(&file)? {
        None => " (only Administrators and SYSTEM can change it there)",
        Some(finding) if under_wine() => {
            writeln!(out, "hivetrack: under Wine, not enforced: {finding}")?;
            ""
        }
        Some(finding) => {
            let _ = std::fs::remove_file(&file);
            return Err(CliError::BadArgument(format!(
                "refusing to install {}: {finding} (its permissions are not System32\\drivers' defaults)",
                file.display()
            ))
            .into());
        }
    };
    writeln!(
        out,
        "Copied {} to {}{only_admins}",
        sys.display(),
        file.display()
    )?;
    let spec = legacy_driver::service_spec(boot);
    let info = ServiceInfo {
        name: SERVICE.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::KERNEL_DRIVER,
        start_type: if spec.start_type == SYSTEM_START {
            ServiceStartType::SystemStart
        } else {
            ServiceStartType::OnDemand
        },
        error_control: ServiceErrorControl::Normal,
        executable_path: PathBuf::from(spec.image_path),
        launch_arguments: Vec::new(),
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let service = match manager.create_service(
        &info,
        ServiceAccess::CHANGE_CONFIG
            | ServiceAccess::START
            | ServiceAccess::QUERY_STATUS
            | ServiceAccess::DELETE,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e).with_context(|| format!("cannot create service {SERVICE}"));
        }
    };
    let configured = service
        .set_description(DESCRIPTION)
        .context("cannot set the service description")
        .and_then(|()| {
            spec.parameters
                .iter()
                .try_for_each(|(name, value)| set_parameter(name, value))
        });
    if let Err(e) = configured {
        let _ = service.delete();
        drop(service);
        let _ = std::fs::remove_file(&file);
        return Err(e.context("the service was deleted again"));
    }
    writeln!(
        out,
        "Created service {SERVICE} (kernel driver, {} start, error control normal, ImagePath {}, Parameters\\Altitude {})",
        if boot {
            "system (from the next boot)"
        } else {
            "demand"
        },
        spec.image_path,
        legacy_driver::ALTITUDE
    )?;
    match service.start::<&OsStr>(&[]) {
        Ok(()) => {
            writeln!(
                out,
                "Started {SERVICE}: `hivetrack stats` shows what it tracks"
            )?;
            Ok(crate::exit::OK)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "service {SERVICE} is installed but did not start (a test-signed driver needs \
             `bcdedit /set testsigning on` and a restart; Server 2016+ loads only WHCP-signed \
             drivers otherwise): fix that and `sc.exe start {SERVICE}`, or `hivetrack driver \
             uninstall --legacy`"
        ))),
    }
}

/// `hivetrack driver uninstall --legacy`.
///
/// # Errors
/// A service installed from the INF (refused), or the service manager's or file system's
/// refusal.
pub fn uninstall(out: &mut dyn Write) -> Result<u8> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service control manager (run as Administrator)")?;
    let file = installed_file()?;
    match existing(&manager)? {
        Existing::Other { image_path } => {
            return Err(CliError::BadArgument(format!(
                "service {SERVICE} runs {image_path}: it was not installed by `driver install \
                 --legacy` but from the INF (driver store); remove it with `sc.exe stop \
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
            if running {
                // `ControlService(SERVICE_CONTROL_STOP)` (the sample's StopDriver). With a
                // handle to the device open, the unload is only marked (WRK
                // IopCheckUnloadDriver: DOE_UNLOAD_PENDING) and happens at the last close.
                let _ = service.stop();
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
                if stopped {
                    writeln!(out, "Stopped {SERVICE}")?;
                } else {
                    writeln!(
                        out,
                        "{SERVICE} has not stopped: its unload waits for the last handle to \\\\.\\HiveTrack to close (`hivetrack service uninstall` stops the event service, which holds one)"
                    )?;
                }
            }
            service
                .delete()
                .with_context(|| format!("cannot delete service {SERVICE}"))?;
            writeln!(
                out,
                "Deleted service {SERVICE} (with its Parameters key; the service manager removes it once no handle to it is open)"
            )?;
        }
    }
    match remove_or_schedule(&file, false)? {
        Removal::Removed => writeln!(out, "Removed {}", file.display())?,
        Removal::AtRestart => writeln!(
            out,
            "{} is in use (the driver has not unloaded): it is removed at the next restart",
            file.display()
        )?,
        Removal::Absent => writeln!(out, "No {}: nothing to remove", file.display())?,
        Removal::KeptNotEmpty => {}
    }
    Ok(crate::exit::OK)
}
