//! The `--emulator SCENARIO` backend (Linux, cargo feature `emulator`).
//!
//! The real `hivetrack.sys` runs inside the kernel emulator, with the machine state of a named
//! scenario staged (see `kernel_emulator::harness::session::SCENARIOS`), answering the same IOCTLs the
//! driver answers on Windows. This is how the CLI is demonstrated and tested end to end on
//! Linux (`cargo xtask demo`).
//!
//! The image is `HIVETRACK_SYS` or `target/package/hivetrack.sys`; with
//! `HIVETRACK_EMULATOR_EXIT_AFTER_MS` set, the scenario's holder process exits that long after
//! the session starts (what `wait` waits for).

use std::{path::PathBuf, time::Duration};

use kernel_emulator::harness::session::Session;

use crate::transport::{Transport, TransportError, WaitFreeOutcome, driver_wait_free};

/// A running emulated machine.
pub struct EmulatorTransport {
    session: Option<Session>,
}

/// The driver image the emulator loads.
#[must_use]
pub fn image_path() -> PathBuf {
    std::env::var_os("HIVETRACK_SYS").map_or_else(
        || PathBuf::from("target/package/hivetrack.sys"),
        PathBuf::from,
    )
}

impl EmulatorTransport {
    /// Starts the emulated machine with `scenario`.
    ///
    /// # Errors
    /// [`TransportError::Os`] naming what went wrong (no image, unknown scenario, the driver
    /// did not load).
    pub fn start(scenario: &str) -> Result<Self, TransportError> {
        let sys = image_path();
        if !sys.is_file() {
            return Err(TransportError::Os(std::io::Error::other(format!(
                "{} does not exist: build it with `cargo xtask build` or set HIVETRACK_SYS",
                sys.display()
            ))));
        }
        let map = sys.with_extension("map");
        let session = Session::start(&sys, map.is_file().then_some(map.as_path()), scenario)
            // The session's own error names the scenarios when the name is unknown.
            .map_err(|e| TransportError::Os(std::io::Error::other(e)))?;
        if let Some(ms) = std::env::var("HIVETRACK_EMULATOR_EXIT_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            session.exit_holder_after(Duration::from_millis(ms));
        }
        Ok(Self {
            session: Some(session),
        })
    }
}

impl Transport for EmulatorTransport {
    fn backend(&self) -> &'static str {
        "emulator"
    }

    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        let session = self
            .session
            .as_ref()
            .ok_or(TransportError::DriverUnavailable)?;
        session
            .ioctl(code, input, output)
            .map_err(|code| TransportError::Request { code })
    }

    /// The driver's wait-free IOCTL: the session blocks like a synchronous
    /// `DeviceIoControl` until the driver completes the request.
    fn wait_free(
        &mut self,
        hive: &str,
        timeout: Duration,
    ) -> Option<Result<(WaitFreeOutcome, protocol::completeness::Completeness), TransportError>>
    {
        driver_wait_free(self, hive, timeout)
    }

    /// The model's `NtQueryOpenSubKeysEx` (every key object of the hive, old ones too).
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        let session = self.session.as_ref()?;
        Some(
            session
                .open_subkeys(hive)
                .map_err(|code| TransportError::Request { code }),
        )
    }

    fn process_image(&mut self, pid: u64) -> Option<String> {
        self.session.as_ref()?.process_image(pid)
    }

    /// The model's system handle table, key handles of other processes.
    fn foreign_key_handles(&mut self) -> Option<Result<Vec<(u64, u64)>, TransportError>> {
        Some(Ok(self.session.as_ref()?.foreign_key_handles()))
    }

    fn duplicate_handle(&mut self, pid: u64, handle: u64) -> Option<u64> {
        self.session.as_ref()?.duplicate_handle(pid, handle)
    }

    fn close_duplicate(&mut self, handle: u64) {
        if let Some(s) = self.session.as_ref() {
            s.close_handle(handle);
        }
    }

    fn key_name(&mut self, handle: u64) -> Option<String> {
        self.session.as_ref()?.key_name(handle)
    }
}

impl Drop for EmulatorTransport {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let leaks = session.finish();
            if !leaks.is_empty() {
                eprintln!(
                    "hivetrack: emulator: hivetrack.sys left {} thing(s) behind at unload:",
                    leaks.len()
                );
                for l in &leaks {
                    eprintln!("  {l}");
                }
            }
        }
    }
}
