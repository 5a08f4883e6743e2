//! The commands: each talks to the driver through a [`Transport`] and writes its report.

use std::io::Write;

use anyhow::{Context, Result};
use protocol::{
    PROTOCOL_VERSION,
    ioctl::IOCTL_HIVETRACK_GET_VERSION,
    version::VersionInfo,
    wire::{self, DecodeError, HEADER_LEN, Message},
};
use thiserror::Error;

use crate::{
    exit,
    transport::{Transport, TransportError},
};

/// How to install the driver, shown whenever it cannot be reached.
pub const INSTALL_HINT: &str = "install it from the package folder with \
`pnputil /add-driver hivetrack.inf /install` \
and start it with `sc start hivetrack` (as Administrator; on Windows Server 2016/2019, \
whose builds install no driver package: `hivetrack driver install --legacy hivetrack.sys`)";

/// A failure that maps to a documented exit code.
#[derive(Debug, Error)]
pub enum CliError {
    /// The driver cannot be reached.
    #[error("{reason}: {INSTALL_HINT}")]
    DriverUnavailable {
        /// What the transport said (shown, not chained: the message already says it).
        reason: TransportError,
    },
    /// The device exists but this user may not open it.
    #[error(
        "access to \\\\.\\HiveTrack was denied: run hivetrack from an elevated prompt (only Administrators and SYSTEM may query the driver)"
    )]
    AccessDenied,
    /// The driver speaks another protocol version.
    #[error(
        "the driver speaks protocol version {driver}, this client speaks {PROTOCOL_VERSION}: install a client and driver from the same package"
    )]
    VersionMismatch {
        /// The driver's protocol version.
        driver: u16,
    },
    /// The backend cannot answer (the fallback asked for more than holders, or `--emulator`
    /// in a build without the emulator).
    #[error("{0}")]
    BackendUnavailable(TransportError),
    /// The backend knows no hive containing the path.
    #[error("{}", unknown_hive_text(hive, backend))]
    UnknownHive {
        /// The NT path asked for.
        hive: String,
        /// The backend that answered (the fallback asks Windows itself).
        backend: &'static str,
    },
    /// A hive name could not be understood.
    #[error(transparent)]
    BadHiveName(#[from] crate::hive_name::HiveNameError),
    /// Another argument is unusable (a file that does not parse, say).
    #[error("{0}")]
    BadArgument(String),
    /// The driver answers, but is older than the feature asked for.
    #[error(
        "the installed hivetrack.sys is too old for {what}: it does not have open-time stack capture (issue 16); install the driver and client from the same package ({INSTALL_HINT})"
    )]
    DriverTooOld {
        /// What was asked for (`stack capture`, `holders --stacks`).
        what: &'static str,
    },
    /// The driverless fallback answered, and the feature needs the driver.
    #[error(
        "{what} needs the hivetrack driver: the driverless fallback (NtQueryOpenSubKeysEx) sees only the pid and key of open keys, not the code that opened them; {INSTALL_HINT}"
    )]
    NeedsDriver {
        /// What was asked for.
        what: &'static str,
    },
}

/// The unknown-hive message, by who answered. The driver's "not known" is also what a hive
/// just unloaded, or one whose record the driver could not keep, gets; until 2026-12-06 it
/// said only "not known to the driver", and the fallback said "driver" too (audit 20b, L5).
fn unknown_hive_text(hive: &str, backend: &str) -> String {
    if backend == crate::fallback::BACKEND {
        format!(
            "Windows has no hive loaded at {hive} (NtQueryOpenSubKeysEx: not found): it is not \
             loaded now, or the name is wrong"
        )
    } else {
        format!(
            "no hive containing {hive} is known to the driver: it is not loaded now (unloaded \
             already?), the name is wrong (check it with `hivetrack hives`), or the driver could \
             not keep its record (`hivetrack stats`); `--backend ntquery` asks Windows directly"
        )
    }
}

impl CliError {
    /// The `kind` of this error in `--json` output (stable; usermode-client/README.md).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::DriverUnavailable { .. } => "driver_unavailable",
            Self::AccessDenied => "access_denied",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::BackendUnavailable(_) => "backend_unavailable",
            Self::UnknownHive { .. } => "unknown_hive",
            Self::BadHiveName(_) => "bad_hive_name",
            Self::BadArgument(_) => "bad_argument",
            Self::DriverTooOld { .. } => "driver_too_old",
            Self::NeedsDriver { .. } => "needs_driver",
        }
    }

    /// The process exit code for this error.
    #[must_use]
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::DriverUnavailable { .. }
            | Self::AccessDenied
            | Self::VersionMismatch { .. }
            | Self::BackendUnavailable(_)
            | Self::DriverTooOld { .. }
            | Self::NeedsDriver { .. } => exit::DRIVER_UNAVAILABLE,
            Self::UnknownHive { .. } | Self::BadHiveName(_) | Self::BadArgument(_) => {
                exit::BAD_ARGUMENTS
            }
        }
    }
}

/// Maps a transport failure to the error the user sees.
pub(crate) fn classify(err: TransportError) -> anyhow::Error {
    match err {
        TransportError::DriverUnavailable | TransportError::NoBackend { .. } => {
            CliError::DriverUnavailable { reason: err }.into()
        }
        TransportError::AccessDenied => CliError::AccessDenied.into(),
        TransportError::Unsupported { .. } | TransportError::NotInThisBuild(_) => {
            CliError::BackendUnavailable(err).into()
        }
        other => anyhow::Error::new(other),
    }
}

/// Sends `code` with `input` and decodes the answer as `M`.
///
/// # Errors
/// The transport's failure, a protocol version mismatch, or a malformed answer.
pub fn query<'a, M: Message<'a>>(
    transport: &mut dyn Transport,
    code: u32,
    input: &[u8],
    output: &'a mut [u8],
) -> Result<M> {
    let n = transport.ioctl(code, input, output).map_err(classify)?;
    let answer = &output[..n.min(output.len())];
    if answer.len() >= HEADER_LEN
        && let Err(DecodeError::UnsupportedVersion { found }) = wire::decode_header(answer)
    {
        return Err(CliError::VersionMismatch { driver: found }.into());
    }
    wire::decode::<M>(answer)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the driver sent a malformed answer")
}

/// `hivetrack version`: the client's version, then the driver's.
///
/// # Errors
/// When the driver cannot be reached or answers badly; the client line is printed first.
pub fn version(
    out: &mut dyn Write,
    connect: impl FnOnce() -> Result<Box<dyn Transport>, TransportError>,
) -> Result<()> {
    writeln!(
        out,
        "hivetrack client {} (protocol {PROTOCOL_VERSION})",
        env!("CARGO_PKG_VERSION")
    )?;
    let mut transport = connect().map_err(classify)?;
    let mut buf = [0u8; 256];
    let info: VersionInfo = query(
        transport.as_mut(),
        IOCTL_HIVETRACK_GET_VERSION,
        &[],
        &mut buf,
    )?;
    let wait = if info.has(VersionInfo::CAP_WAIT_FREE) {
        ", wait-free"
    } else {
        ""
    };
    writeln!(
        out,
        "hivetrack driver {}.{}.{} (protocol {PROTOCOL_VERSION}, build {}, via {}{wait})",
        info.major,
        info.minor,
        info.patch,
        info.build_id,
        transport.backend()
    )?;
    Ok(())
}

/// `hivetrack raw-ioctl`: sends `code` with `input` and prints what came back, in hex.
///
/// # Errors
/// When the driver cannot be reached or rejects the request (the Win32 error is named).
pub fn raw_ioctl(
    out: &mut dyn Write,
    connect: impl FnOnce() -> Result<Box<dyn Transport>, TransportError>,
    code: u32,
    input: &[u8],
    output_len: usize,
) -> Result<()> {
    let mut transport = connect().map_err(classify)?;
    let mut output = vec![0u8; output_len];
    let n = transport
        .ioctl(code, input, &mut output)
        .map_err(classify)
        .with_context(|| format!("control code {code:#010x}"))?;
    let answer = &output[..n.min(output.len())];
    write!(out, "ok: {} bytes: ", answer.len())?;
    for b in answer {
        write!(out, "{b:02x}")?;
    }
    writeln!(out)?;
    Ok(())
}

/// The exit code for an error returned by a command.
#[must_use]
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    err.downcast_ref::<CliError>()
        .map_or(1, CliError::exit_code)
}

/// Schema name of `--json` error documents.
pub const ERROR_SCHEMA: &str = "hivetrack.error/1";

/// The `hivetrack.error/1` document.
///
/// Shape: `{"schema", "error": {"kind", "message", "exit_code"}}`; `kind` is a [`CliError::kind`], `usage` for a command line that does not parse, or
/// `failed` for any other failure; `message` is what the table output prints.
#[must_use]
pub fn error_json(kind: &str, message: &str, exit_code: u8) -> String {
    let doc = serde_json::json!({
        "schema": ERROR_SCHEMA,
        "error": { "kind": kind, "message": message, "exit_code": exit_code },
    });
    format!("{doc:#}\n")
}

/// Prints `err` where the output format puts it, and returns its exit code.
///
/// With `json`, the [`error_json`] document on `out` (a script reading stdout always gets JSON); else
/// `hivetrack: <message>` on `err_out`.
pub fn report_error(
    err: &anyhow::Error,
    json: bool,
    out: &mut dyn std::io::Write,
    err_out: &mut dyn std::io::Write,
) -> u8 {
    let code = exit_code_for(err);
    let message = format!("{err:#}");
    if json {
        let kind = err
            .downcast_ref::<CliError>()
            .map_or("failed", CliError::kind);
        let _ = out.write_all(error_json(kind, &message, code).as_bytes());
    } else {
        let _ = writeln!(err_out, "hivetrack: {message}");
    }
    code
}

#[cfg(test)]
mod tests {
    use protocol::{version::BuildId, wire::encode};

    use super::*;

    /// A transport that answers from a script and records what it was sent.
    struct Scripted {
        answer: Result<Vec<u8>, fn() -> TransportError>,
        sent: Vec<u32>,
    }

    impl Transport for Scripted {
        fn backend(&self) -> &'static str {
            "scripted"
        }

        fn ioctl(
            &mut self,
            code: u32,
            _input: &[u8],
            output: &mut [u8],
        ) -> Result<usize, TransportError> {
            self.sent.push(code);
            let bytes = self.answer.as_ref().map_err(|f| f())?;
            output[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }
    }

    fn version_answer() -> Vec<u8> {
        let info = VersionInfo {
            major: 0,
            minor: 1,
            patch: 0,
            capabilities: 0,
            build_id: BuildId::new("abc1234"),
        };
        let mut buf = vec![0u8; 64];
        let n = encode(&info, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn run_version(answer: Result<Vec<u8>, fn() -> TransportError>) -> (String, Result<()>) {
        let mut out = Vec::new();
        let r = version(&mut out, || {
            Ok(Box::new(Scripted {
                answer,
                sent: Vec::new(),
            }))
        });
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn prints_client_and_driver_versions() {
        let (out, r) = run_version(Ok(version_answer()));
        r.unwrap();
        let expected = format!(
            "hivetrack client {} (protocol {PROTOCOL_VERSION})\nhivetrack driver 0.1.0 (protocol {PROTOCOL_VERSION}, build abc1234, via scripted)\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn missing_driver_exits_2_with_an_install_hint() {
        let mut out = Vec::new();
        let err = version(&mut out, || Err(TransportError::DriverUnavailable)).unwrap_err();
        assert_eq!(exit_code_for(&err), exit::DRIVER_UNAVAILABLE);
        assert_eq!(
            format!("{err:#}"),
            format!("the hivetrack driver is not installed or not running: {INSTALL_HINT}")
        );
        // Server 2016/2019 have no driver package route (audit 21c H4).
        assert!(INSTALL_HINT.contains("driver install --legacy"));
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("hivetrack client ")
        );
    }

    #[test]
    fn access_denied_says_to_elevate() {
        let (_, r) = run_version(Err(|| TransportError::AccessDenied));
        let err = r.unwrap_err();
        assert_eq!(exit_code_for(&err), exit::DRIVER_UNAVAILABLE);
        assert!(format!("{err:#}").contains("elevated"));
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut answer = version_answer();
        answer[4] = 8; // the driver speaks protocol 8
        let (_, r) = run_version(Ok(answer));
        let err = r.unwrap_err();
        assert_eq!(exit_code_for(&err), exit::DRIVER_UNAVAILABLE);
        assert!(format!("{err:#}").contains("protocol version 8"), "{err:#}");
    }

    #[test]
    fn raw_ioctl_prints_the_answer_or_names_the_error() {
        let mut out = Vec::new();
        let answer = version_answer();
        raw_ioctl(
            &mut out,
            || {
                Ok(Box::new(Scripted {
                    answer: Ok(answer[..4].to_vec()),
                    sent: Vec::new(),
                }))
            },
            0x8A54_6000,
            &[],
            16,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ok: 4 bytes: 4876546b\n");
        let mut out = Vec::new();
        let err = raw_ioctl(
            &mut out,
            || {
                Ok(Box::new(Scripted {
                    answer: Err(|| TransportError::Request { code: 1 }),
                    sent: Vec::new(),
                }))
            },
            0x8A54_6FFC,
            &[],
            16,
        )
        .unwrap_err();
        assert_eq!(exit_code_for(&err), 1);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("0x8a546ffc") && msg.contains("Win32 error 1"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_answer_is_an_error_not_a_panic() {
        let mut answer = version_answer();
        answer.truncate(20);
        let (_, r) = run_version(Ok(answer));
        let err = r.unwrap_err();
        assert_eq!(exit_code_for(&err), 1);
        assert!(format!("{err:#}").contains("malformed"), "{err:#}");
    }
}
