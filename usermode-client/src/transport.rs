//! How the CLI reaches the driver: the [`Transport`] trait every backend implements, its
//! errors, and the requests built on it alone (the driver's wait-free request).
//!
//! The Windows backend opens `\\.\HiveTrack` and sends `DeviceIoControl` requests. The
//! driverless fallback (`NtQueryOpenSubKeysEx`, [`crate::fallback`]) answers the holders
//! query through the same trait by encoding protocol pages itself. Which backend a command
//! gets is chosen apart from the trait, in [`crate::backend`].

use std::time::Duration;

use protocol::{
    completeness::Completeness,
    ioctl::{IOCTL_HIVETRACK_GET_VERSION, IOCTL_HIVETRACK_WAIT_FREE},
    text::Text,
    version::VersionInfo,
    wait::{WaitFreeAnswer, WaitFreeRequest},
    wire::{self, HEADER_LEN, Message},
};
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
    #[error("{}", request_text(*code))]
    Request {
        /// The Win32 error code `DeviceIoControl` reported.
        code: u32,
    },
    /// Any other failure of the operating system call. Transparent: with `{0}` the message
    /// was also the error's source, so the CLI's error chain printed it twice (audit 20b, L5:
    /// an unknown `--emulator` scenario's list came out three times).
    #[error(transparent)]
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

/// The words of [`TransportError::Request`]: a resource refusal says what to do (until
/// 2026-12-06 every code was a bare "Win32 error N"; audit 20b, L5).
fn request_text(code: u32) -> String {
    match code {
        // ERROR_NOT_ENOUGH_MEMORY, ERROR_NO_SYSTEM_RESOURCES (STATUS_INSUFFICIENT_RESOURCES).
        8 | ERROR_NO_SYSTEM_RESOURCES => format!(
            "the driver could not allocate memory for the request, or its table of pending \
             waits is full (Win32 error {code}): retry, or see `hivetrack stats`"
        ),
        _ => format!("the driver rejected the request (Win32 error {code})"),
    }
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
    /// request the backend completes itself: the driver's wait-free IOCTL
    /// ([`driver_wait_free`]). `None` means "cannot wait natively" (the default, the
    /// driverless fallback, a driver without [`VersionInfo::CAP_WAIT_FREE`]): `hivetrack
    /// wait` then polls the holders query instead ([`crate::wait`]).
    ///
    /// # Errors
    /// [`TransportError`] when the request fails.
    fn wait_free(
        &mut self,
        hive: &str,
        timeout: Duration,
    ) -> Option<Result<(WaitFreeOutcome, Completeness), TransportError>> {
        let _ = (hive, timeout);
        None
    }

    /// The kernel's own list of the key objects open in the hive mounted at `hive` (an NT
    /// path), one `(pid, key path)` per object: what `NtQueryOpenSubKeysEx` returns (the pid
    /// is the process that opened the object, `CM_KEY_BODY.ProcessID`). It includes keys
    /// opened before the driver started tracking, which the driver cannot know. `None` when
    /// this backend cannot ask (the default).
    ///
    /// # Errors
    /// (Inside the `Some`.) The system refused (privilege, not a hive root).
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        let _ = hive;
        None
    }

    /// The image path of the live process `pid`, looked up in user mode (for keys the
    /// driver has no record of). `None` when unknown (the default).
    fn process_image(&mut self, pid: u64) -> Option<String> {
        let _ = pid;
        None
    }

    /// When the live process `pid` was created (FILETIME), looked up in user mode: tells
    /// whether it can be the opener of a key the kernel lists under that pid. `None` when
    /// unknown (the default).
    fn process_started(&mut self, pid: u64) -> Option<u64> {
        let _ = pid;
        None
    }

    /// Every key handle other processes hold now, as `(pid, handle value in that process)`:
    /// the system handle table (`NtQuerySystemInformation`, `SystemExtendedHandleInformation`)
    /// filtered on the key object type. `None` when this backend cannot read it (the
    /// default). For [`crate::holder_now`].
    ///
    /// # Errors
    /// (Inside the `Some`.) The system refused.
    fn foreign_key_handles(&mut self) -> Option<Result<Vec<(u64, u64)>, TransportError>> {
        None
    }

    /// Duplicates `handle` of process `pid` into this process (`DuplicateHandle`, same
    /// access); `None` when it cannot (a protected process, a handle closed meanwhile).
    fn duplicate_handle(&mut self, pid: u64, handle: u64) -> Option<u64> {
        let _ = (pid, handle);
        None
    }

    /// Closes a handle [`Transport::duplicate_handle`] returned.
    fn close_duplicate(&mut self, handle: u64) {
        let _ = handle;
    }

    /// The full name (`\REGISTRY\…`) of the key behind `handle`, a handle of this process
    /// ([`Transport::duplicate_handle`]'s): `NtQueryKey` with `KeyNameInformation`. `None`
    /// when it cannot be had (a deleted key, a backend without it: the default).
    fn key_name(&mut self, handle: u64) -> Option<String> {
        let _ = handle;
        None
    }
}

/// Win32 `ERROR_INVALID_FUNCTION` (`STATUS_INVALID_DEVICE_REQUEST`): a driver that does not
/// know the control code.
pub const ERROR_INVALID_FUNCTION: u32 = 1;
/// Win32 `ERROR_NOT_READY` (`STATUS_DEVICE_NOT_READY`): live tracking is off.
pub const ERROR_NOT_READY: u32 = 21;
/// Win32 `ERROR_NO_SYSTEM_RESOURCES` (`STATUS_INSUFFICIENT_RESOURCES`): the driver's table
/// of pending waits is full, or it could not allocate an identify request's working memory.
pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;

/// The driver's wait-free request (`IOCTL_HIVETRACK_WAIT_FREE`).
///
/// For a transport whose `ioctl` returns when the driver completes the request. `None` when the driver cannot wait
/// for this hive — it lacks the capability, live tracking is off, its table of waits is full,
/// or it does not know the hive — so that the caller polls and reports as it does without.
///
/// # Errors
/// (Inside the `Some`.) The transport's failure, or a malformed answer.
pub fn driver_wait_free(
    transport: &mut dyn Transport,
    hive: &str,
    timeout: Duration,
) -> Option<Result<(WaitFreeOutcome, Completeness), TransportError>> {
    let mut buf = [0u8; 256];
    let n = transport
        .ioctl(IOCTL_HIVETRACK_GET_VERSION, &[], &mut buf)
        .ok()?;
    let version = wire::decode::<VersionInfo>(&buf[..n.min(buf.len())]).ok()?;
    if !version.has(VersionInfo::CAP_WAIT_FREE) {
        return None;
    }
    let units: Vec<u16> = hive.encode_utf16().collect();
    let request = WaitFreeRequest {
        timeout_ms: wait_timeout_ms(timeout),
        hive: Text::Units(&units),
    };
    let mut input = vec![0u8; HEADER_LEN + request.body_len()];
    let len = wire::encode(&request, &mut input).ok()?;
    let mut output = [0u8; 128];
    match transport.ioctl(IOCTL_HIVETRACK_WAIT_FREE, &input[..len], &mut output) {
        Ok(n) => Some(
            wire::decode::<WaitFreeAnswer>(&output[..n.min(output.len())])
                .map(|a| {
                    let outcome = if a.outcome.is_free() {
                        WaitFreeOutcome::Free
                    } else {
                        WaitFreeOutcome::TimedOut
                    };
                    (outcome, a.completeness)
                })
                .map_err(|e| {
                    TransportError::Os(std::io::Error::other(format!(
                        "the driver sent a malformed wait-free answer: {e}"
                    )))
                }),
        ),
        Err(TransportError::Request {
            code:
                ERROR_INVALID_FUNCTION
                | ERROR_FILE_NOT_FOUND
                | ERROR_NOT_READY
                | ERROR_NO_SYSTEM_RESOURCES,
        }) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A wait's timeout in the request's milliseconds: whole milliseconds, at least one for any
/// non-zero duration; beyond the field's range, no timeout at all (about 49 days).
#[must_use]
pub fn wait_timeout_ms(timeout: Duration) -> u32 {
    if timeout.is_zero() {
        return 0;
    }
    match u32::try_from(timeout.as_millis().max(1)) {
        Ok(ms) if ms != WaitFreeRequest::NO_TIMEOUT => ms,
        _ => WaitFreeRequest::NO_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{
        version::BuildId,
        wait::{WaitFreeAnswer, WaitOutcome},
    };

    /// A driver that answers the version with `capabilities` and the wait with `wait`,
    /// and records the wait requests it decoded.
    struct FakeDriver {
        capabilities: u16,
        wait: Result<WaitOutcome, u32>,
        seen: Vec<(u32, String)>,
    }

    impl Transport for FakeDriver {
        fn backend(&self) -> &'static str {
            "fake"
        }

        fn ioctl(
            &mut self,
            code: u32,
            input: &[u8],
            output: &mut [u8],
        ) -> Result<usize, TransportError> {
            match code {
                IOCTL_HIVETRACK_GET_VERSION => {
                    let v = VersionInfo {
                        major: 0,
                        minor: 1,
                        patch: 0,
                        capabilities: self.capabilities,
                        build_id: BuildId::new("t"),
                    };
                    Ok(wire::encode(&v, output).unwrap())
                }
                IOCTL_HIVETRACK_WAIT_FREE => {
                    let r = wire::decode::<WaitFreeRequest<'_>>(input).unwrap();
                    self.seen.push((r.timeout_ms, r.hive.to_string()));
                    let outcome = self.wait.map_err(|code| TransportError::Request { code })?;
                    let a = WaitFreeAnswer {
                        outcome,
                        hive_id: 3,
                        waited: 10,
                        completeness: Completeness::default(),
                    };
                    Ok(wire::encode(&a, output).unwrap())
                }
                _ => Err(TransportError::Request {
                    code: ERROR_INVALID_FUNCTION,
                }),
            }
        }
    }

    fn fake(capabilities: u16, wait: Result<WaitOutcome, u32>) -> FakeDriver {
        FakeDriver {
            capabilities,
            wait,
            seen: Vec::new(),
        }
    }

    const HIVE: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1001";

    #[test]
    fn sends_the_hive_and_timeout_and_maps_the_outcome() {
        for (outcome, expected) in [
            (WaitOutcome::Free, WaitFreeOutcome::Free),
            (WaitOutcome::Unloaded, WaitFreeOutcome::Free),
            (WaitOutcome::TimedOut, WaitFreeOutcome::TimedOut),
        ] {
            let mut d = fake(VersionInfo::CAP_WAIT_FREE, Ok(outcome));
            let got = driver_wait_free(&mut d, HIVE, Duration::from_millis(2500));
            assert_eq!(got.unwrap().unwrap().0, expected);
            assert_eq!(d.seen, vec![(2500, HIVE.to_owned())]);
        }
    }

    #[test]
    fn declines_when_the_driver_cannot_wait_so_the_caller_polls() {
        let mut old = fake(0, Ok(WaitOutcome::Free));
        assert!(driver_wait_free(&mut old, HIVE, Duration::from_secs(1)).is_none());
        assert!(
            old.seen.is_empty(),
            "no wait request sent to a driver without it"
        );
        for code in [
            ERROR_NOT_READY,
            ERROR_NO_SYSTEM_RESOURCES,
            ERROR_FILE_NOT_FOUND,
            ERROR_INVALID_FUNCTION,
        ] {
            let mut d = fake(VersionInfo::CAP_WAIT_FREE, Err(code));
            assert!(
                driver_wait_free(&mut d, HIVE, Duration::from_secs(1)).is_none(),
                "{code}"
            );
        }
        let mut d = fake(VersionInfo::CAP_WAIT_FREE, Err(ERROR_INVALID_PARAMETER));
        assert!(matches!(
            driver_wait_free(&mut d, HIVE, Duration::from_secs(1)),
            Some(Err(TransportError::Request { code: 87 }))
        ));
    }

    #[test]
    fn an_os_error_is_said_once_in_the_error_chain() {
        let e = anyhow::Error::from(TransportError::Os(std::io::Error::other("no such image")));
        assert_eq!(format!("{e:#}"), "no such image");
    }

    #[test]
    fn a_resource_refusal_says_to_retry() {
        for code in [8, ERROR_NO_SYSTEM_RESOURCES] {
            let text = TransportError::Request { code }.to_string();
            assert!(text.contains("could not allocate memory"), "{text}");
            assert!(text.contains(&format!("Win32 error {code}")), "{text}");
        }
        assert_eq!(
            TransportError::Request { code: 87 }.to_string(),
            "the driver rejected the request (Win32 error 87)"
        );
    }

    #[test]
    fn timeouts_convert_to_whole_milliseconds_with_infinite_beyond_range() {
        assert_eq!(wait_timeout_ms(Duration::ZERO), 0);
        assert_eq!(wait_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(wait_timeout_ms(Duration::from_secs(3)), 3000);
        assert_eq!(
            wait_timeout_ms(Duration::from_secs(60 * 60 * 24 * 60)),
            WaitFreeRequest::NO_TIMEOUT
        );
        assert_eq!(
            wait_timeout_ms(Duration::from_millis(u64::from(u32::MAX))),
            WaitFreeRequest::NO_TIMEOUT
        );
    }
}
