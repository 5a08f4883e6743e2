//! `hivetrack capture`: turns the driver's open-time stack capture on and off and shows its
//! scope (issue 16), and the check every stack feature makes first: is this a driver that
//! has it.

use anyhow::Result;
use protocol::capture::{CaptureOp, CaptureScope, MAX_SCOPE_UNITS};
use protocol::version::VersionInfo;

use crate::accounts::Accounts;
use crate::cli::CaptureAction;
use crate::client::Client;
use crate::commands::CliError;
use crate::hive_name::{self, display};
use crate::model::{CaptureReport, Time, schema};
use crate::stacks::file_name;

/// Fails unless the client talks to a driver with stack capture: the driverless fallback
/// ([`CliError::NeedsDriver`]) or an older driver ([`CliError::DriverTooOld`]) cannot
/// answer `what`.
///
/// # Errors
/// As above, and transport failures.
pub fn require_stacks(client: &mut Client<'_>, what: &'static str) -> Result<()> {
    if client.backend() == crate::fallback::BACKEND {
        return Err(CliError::NeedsDriver { what }.into());
    }
    if !client.version()?.has(VersionInfo::CAP_STACKS) {
        return Err(CliError::DriverTooOld { what }.into());
    }
    Ok(())
}

/// The scope's word in reports.
#[must_use]
pub const fn scope_name(scope: CaptureScope) -> &'static str {
    match scope {
        CaptureScope::Off => "off",
        CaptureScope::All => "all",
        CaptureScope::Hive => "hive",
        CaptureScope::Image => "image",
        CaptureScope::Process => "process",
    }
}

/// The image scope's text: the file name of `given` (a full path is cut to its file name,
/// as the driver compares file names).
fn image_name(given: &str) -> Result<String> {
    let name = file_name(given.trim().trim_matches('"')).trim();
    if name.is_empty() || name.contains(['*', '?', '/']) {
        return Err(CliError::BadArgument(format!(
            "--image {given}: name one image file, as `explorer.exe`"
        ))
        .into());
    }
    Ok(name.to_owned())
}

/// Runs `action` against `client`; `accounts` resolves a `--hive` given as a user.
///
/// # Errors
/// A driver without capture, a hive name that does not parse, transport failures.
pub fn run(
    client: &mut Client<'_>,
    action: &CaptureAction,
    accounts: &dyn Accounts,
) -> Result<CaptureReport> {
    require_stacks(client, "stack capture")?;
    let (op, scope, text) = match action {
        CaptureAction::Status => (CaptureOp::Get, CaptureScope::Off, String::new()),
        CaptureAction::Off => (CaptureOp::Set, CaptureScope::Off, String::new()),
        CaptureAction::On {
            hive: Some(hive), ..
        } => (
            CaptureOp::Set,
            CaptureScope::Hive,
            hive_name::resolve_with_accounts(hive, accounts).map_err(CliError::from)?,
        ),
        CaptureAction::On {
            image: Some(image), ..
        } => (CaptureOp::Set, CaptureScope::Image, image_name(image)?),
        CaptureAction::On { pid: Some(pid), .. } => {
            (CaptureOp::Set, CaptureScope::Process, pid.to_string())
        }
        CaptureAction::On { .. } => (CaptureOp::Set, CaptureScope::All, String::new()),
    };
    if text.encode_utf16().count() > MAX_SCOPE_UNITS {
        return Err(CliError::BadArgument(format!(
            "the capture scope is longer than the driver takes ({MAX_SCOPE_UNITS} characters)"
        ))
        .into());
    }
    let (scope, max_frames, since, text) = client.capture(op, scope, &text)?;
    Ok(CaptureReport {
        schema: schema("capture"),
        source: client.source(0),
        scope: scope_name(scope).to_owned(),
        hive: (scope == CaptureScope::Hive).then(|| display(&text)),
        target: (!text.is_empty()).then_some(text),
        since: Time::from_filetime(since),
        max_frames,
    })
}
