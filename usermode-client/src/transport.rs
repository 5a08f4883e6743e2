//! How the CLI reaches the driver: one trait, one implementation per backend.
//!
//! The Windows backend opens `\\.\HiveTrack` and sends `DeviceIoControl` requests. The
//! driverless fallback (`NtQueryOpenSubKeysEx`, [`crate::fallback`]) answers the holders
//! query through the same trait by encoding protocol pages itself; the kernel-emulator
//! backend (`--emulator`) is a seam: [`open`] says plainly that this build has none.

use std::time::Duration;

use thiserror::Error;

/// A failure to exchange a request with the driver.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The device does not exist: the driver is not installed or not started.
    #[error("the hivetrack driver is not installed or not running")]
    DriverUnavailable,
    /// The device exists but this user may not open it.
    #[error("access to the hivetrack device was denied")]
    AccessDenied,
    /// The driver answered the request with an error.
    #[error("the driver rejected the request (Win32 error {code})")]
    Request {
        /// The Win32 error code `DeviceIoControl` reported.
        code: u32,
    },
    /// Any other failure of the operating system call.
    #[error("{0}")]
    Os(#[from] std::io::Error),
    /// The backend cannot answer this request at all (the fallback knows only holders).
    #[error("the {backend} backend cannot answer this query: {why}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What it lacks.
        why: &'static str,
    },
    /// The driver is not there, and neither is the driverless fallback.
    #[error(
        "the hivetrack driver is not installed or not running, and the driverless fallback is unavailable ({fallback})"
    )]
    NoBackend {
        /// Why the fallback could not be used.
        fallback: Box<Self>,
    },
    /// The backend exists in the design but not in this build (`--emulator`).
    #[error("{0}")]
    NotInThisBuild(&'static str),
}

/// Win32 `ERROR_FILE_NOT_FOUND`, for a hive the driver does not know.
///
/// It is what `DeviceIoControl` reports for
/// `STATUS_OBJECT_NAME_NOT_FOUND`, the status a holders query gets for a path in no hive the
/// driver knows (see the protocol gap in the README).
pub const ERROR_FILE_NOT_FOUND: u32 = 2;
/// Win32 `ERROR_INVALID_PARAMETER` (`STATUS_INVALID_PARAMETER`).
pub const ERROR_INVALID_PARAMETER: u32 = 87;
/// Win32 `ERROR_INSUFFICIENT_BUFFER` (`STATUS_BUFFER_TOO_SMALL`): the output buffer cannot
/// hold even one record; the client retries with a larger one.
pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
/// Win32 `ERROR_MORE_DATA` (`STATUS_BUFFER_OVERFLOW`): treated like
/// [`ERROR_INSUFFICIENT_BUFFER`].
pub const ERROR_MORE_DATA: u32 = 234;

/// How a wait for a hive to be free ended, when a backend can wait natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFreeOutcome {
    /// No process holds keys in the hive any more.
    Free,
    /// The timeout passed first.
    TimedOut,
}

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

/// What a command needs from its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Every query: only the driver (or the emulator) has them.
    Driver,
    /// Holders of one hive: the driverless fallback can answer too.
    Holders,
}

/// A channel to the driver.
pub trait Transport {
    /// A name for the backend, shown in reports ("driver", "emulator", ...).
    fn backend(&self) -> &'static str;

    /// Sends control code `code` with `input`, and returns how many bytes of `output` the
    /// driver filled.
    ///
    /// # Errors
    /// [`TransportError`] when the request could not be delivered or was refused.
    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError>;

    /// What this backend cannot report, in words shown with every report (`source.missing`
    /// in JSON). Empty for the driver.
    fn missing(&self) -> &'static [&'static str] {
        &[]
    }

    /// Waits until no process holds keys in `hive` (an NT path) or `timeout` passes, with a
    /// request the backend completes itself.
    ///
    /// This is the seam for the driver's future wait-free IOCTL (issue 5: an IRP that stays
    /// pending until the hive has no holders). The protocol defines no such control code
    /// yet, so every backend returns `None` ("cannot wait natively") and `hivetrack wait`
    /// polls the holders query instead ([`crate::wait`]). When the IOCTL exists, the driver
    /// backend implements this method and `wait` uses it unchanged.
    ///
    /// # Errors
    /// [`TransportError`] when the request fails.
    fn wait_free(
        &mut self,
        hive: &str,
        timeout: Duration,
    ) -> Option<Result<WaitFreeOutcome, TransportError>> {
        let _ = (hive, timeout);
        None
    }
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
