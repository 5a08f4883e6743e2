//! `hivetrack driver install --legacy SYS | uninstall --legacy`: the command line.
//!
//! The driver as a kernel service in `System32\drivers`, for Windows Server 2016/2019, where
//! the INF (a primitive driver package, Windows 10 1903+) does not install (audit 21c, H4).
//! The decisions are [`crate::legacy_driver`]'s; the Windows half is `windows_legacy_driver`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::commands::CliError;
use crate::legacy_driver;
#[cfg(not(windows))]
use crate::transport::TransportError;

/// `hivetrack driver …`.
#[derive(Debug, Subcommand)]
pub enum DriverCommand {
    /// Windows Server 2016/2019 (no driver package route there): copy SYS to
    /// `%SystemRoot%\System32\drivers`, create the kernel service `hivetrack` with the INF's
    /// settings (demand start, `Parameters\Altitude`) through the service control manager,
    /// and start it (Windows, as Administrator). Windows 10 1903+, 11 and Server 2022+:
    /// `pnputil /add-driver hivetrack.inf /install` instead.
    Install {
        /// The Service Control Manager route (required: the only one this command has).
        #[arg(long)]
        legacy: bool,
        /// Install this way on a build that installs the driver package (18362+), or one
        /// older than Windows Server 2016.
        #[arg(long)]
        force: bool,
        /// Start the driver at boot (`SERVICE_SYSTEM_START`, what `sc.exe config hivetrack
        /// start= system` sets) so that it sees key handles opened from boot on; set only after
        /// the driver started once now (a failed start leaves it demand start), in effect from
        /// the next boot.
        #[arg(long)]
        boot: bool,
        /// The `hivetrack.sys` of the package (checked to be hivetrack's x64 kernel image).
        #[arg(value_name = "SYS")]
        sys: PathBuf,
    },
    /// Stop and delete the service `hivetrack` that `driver install --legacy` created and
    /// remove `System32\drivers\hivetrack.sys` if it is hivetrack's (at the next restart if
    /// still in use); nothing to do is not an error, a driver that did not stop is exit 5. A
    /// service installed another way (the INF) is refused (pnputil removes it).
    Uninstall {
        /// The Service Control Manager route (required: the only one this command has).
        #[arg(long)]
        legacy: bool,
    },
}

/// Runs `hivetrack driver …`.
///
/// # Errors
/// Bad arguments, a system that cannot do it, the service manager's or registry's refusal.
pub fn run(cmd: &DriverCommand, out: &mut dyn Write) -> Result<u8> {
    match cmd {
        DriverCommand::Install {
            legacy,
            force,
            boot,
            sys,
        } => {
            legacy_driver::check_install_args(*legacy).map_err(CliError::BadArgument)?;
            install(sys, *force, *boot, out)
        }
        DriverCommand::Uninstall { legacy } => {
            if !*legacy {
                return Err(CliError::BadArgument(
                    "`hivetrack driver uninstall` needs --legacy (it removes what `driver install \
                     --legacy` installed); a driver installed from the INF is removed with \
                     `pnputil /delete-driver oemN.inf /uninstall`"
                        .to_owned(),
                )
                .into());
            }
            uninstall(out)
        }
    }
}

#[cfg(windows)]
fn install(sys: &std::path::Path, force: bool, boot: bool, out: &mut dyn Write) -> Result<u8> {
    crate::windows_legacy_driver::install(sys, force, boot, out)
}

#[cfg(windows)]
fn uninstall(out: &mut dyn Write) -> Result<u8> {
    crate::windows_legacy_driver::uninstall(out)
}

#[cfg(not(windows))]
fn install(sys: &std::path::Path, _: bool, _: bool, _: &mut dyn Write) -> Result<u8> {
    // The file is still checked, so that a wrong file is said first.
    if let Ok(bytes) = std::fs::read(sys) {
        legacy_driver::check_image(&bytes)
            .map_err(|e| CliError::BadArgument(format!("{}: {e}", sys.display())))?;
    }
    Err(not_windows())
}

#[cfg(not(windows))]
fn uninstall(_: &mut dyn Write) -> Result<u8> {
    Err(not_windows())
}

#[cfg(not(windows))]
fn not_windows() -> anyhow::Error {
    CliError::BackendUnavailable(TransportError::NotInThisBuild(
        "`hivetrack driver install|uninstall --legacy` creates or deletes a Windows kernel service: run it on Windows (as Administrator)",
    ))
    .into()
}
