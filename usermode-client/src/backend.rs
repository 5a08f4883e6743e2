//! Choosing and opening the backend a command talks to (`--backend`, `--emulator`).
//!
//! The driver's device on Windows, the driverless `NtQueryOpenSubKeysEx` fallback for the holders
//! of one hive, or the kernel emulator in a build that has it (this build may not: [`open`]
//! says so plainly). Kept apart from the [`Transport`] trait, which the backends implement
//! and the rest of the CLI uses.

use crate::transport::{Need, Transport, TransportError};

/// Which backend to use (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The driver; for `holders` and `wait`, the driverless fallback when the driver is not
    /// installed (Windows only).
    #[default]
    Auto,
    /// The driver only.
    Driver,
    /// The driverless `NtQueryOpenSubKeysEx` fallback only (Windows; `holders` and `wait`).
    Ntquery,
}

/// Message for `--emulator` in this build.
pub const NO_EMULATOR: &str = "the kernel-emulator backend (--emulator) is not available in this build: \
build the CLI with `--features emulator` on Linux x86_64 (as `cargo xtask demo` does); use the driver on Windows";

/// Opens the backend `choice` for a command that needs `need`; `emulator` is the
/// `--emulator` scenario, if given.
///
/// # Errors
/// [`TransportError::DriverUnavailable`] when there is no driver (and, for holders, no
/// fallback); [`TransportError::NotInThisBuild`] for `--emulator`.
pub fn open(
    choice: BackendChoice,
    need: Need,
    emulator: Option<&str>,
) -> Result<Box<dyn Transport>, TransportError> {
    if let Some(scenario) = emulator {
        #[cfg(all(feature = "emulator", target_os = "linux", target_arch = "x86_64"))]
        return Ok(Box::new(crate::emulator::EmulatorTransport::start(
            scenario,
        )?));
        #[cfg(not(all(feature = "emulator", target_os = "linux", target_arch = "x86_64")))]
        {
            let _ = scenario;
            return Err(TransportError::NotInThisBuild(NO_EMULATOR));
        }
    }
    match (choice, need) {
        (BackendChoice::Driver, _) | (BackendChoice::Auto, Need::Driver) => open_default(),
        (BackendChoice::Auto, Need::Holders) => match open_default() {
            Err(TransportError::DriverUnavailable) => {
                open_fallback().map_err(|e| TransportError::NoBackend {
                    fallback: Box::new(e),
                })
            }
            other => other,
        },
        (BackendChoice::Ntquery, Need::Holders) => open_fallback(),
        (BackendChoice::Ntquery, Need::Driver) => Err(TransportError::Unsupported {
            backend: "ntquery",
            why: "it lists only pid and key of open keys of one hive (holders, wait)",
        }),
    }
}

/// Opens the driverless fallback: `NtQueryOpenSubKeysEx` on Windows.
///
/// # Errors
/// [`TransportError::Unsupported`] on other systems or when ntdll lacks the routine.
pub fn open_fallback() -> Result<Box<dyn Transport>, TransportError> {
    #[cfg(windows)]
    {
        Ok(Box::new(crate::fallback::FallbackTransport::new(
            crate::windows_fallback::NtQuerySource::new()?,
        )))
    }
    #[cfg(not(windows))]
    {
        Err(TransportError::Unsupported {
            backend: "ntquery",
            why: "NtQueryOpenSubKeysEx exists only on Windows",
        })
    }
}

/// Opens the default backend of this platform: the driver's device on Windows.
///
/// # Errors
/// [`TransportError::DriverUnavailable`] when there is no driver to talk to.
pub fn open_default() -> Result<Box<dyn Transport>, TransportError> {
    #[cfg(windows)]
    {
        Ok(Box::new(crate::windows::DeviceTransport::open()?))
    }
    #[cfg(not(windows))]
    {
        Err(TransportError::DriverUnavailable)
    }
}
