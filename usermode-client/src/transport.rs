//! How the CLI reaches the driver: one trait, one implementation per backend.
//!
//! The Windows backend opens `\\.\HiveTrack` and sends `DeviceIoControl` requests. Other
//! backends (the driverless fallback, the kernel emulator) implement the same trait.

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
