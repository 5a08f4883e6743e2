//! Who a holding process is: its session, the account it runs as, and, for a service host,
//! the services running in it.
//!
//! In the event-1530 reports people post, the holder is most often `svchost.exe`, which
//! says nothing until the services it hosts are named (issue 16). The driver reports pid,
//! start key and image; the CLI asks Windows about the process while it runs
//! (`windows_identity`: `ProcessIdToSessionId`, the token's user, the service manager's
//! `EnumServicesStatusExW` with `SC_ENUM_PROCESS_INFO`). Elsewhere nothing resolves
//! ([`NoIdentities`]) and the fields stay empty.
//!
//! Only holders the driver reports as running are asked about, and only when the driver is
//! told of process exits (stats `process_exits_tracked`; never the driverless fallback's
//! openers, which may have exited unseen): an exited holder's pid may
//! already belong to another process. A process that exits between the driver's answer and
//! the lookup, with its pid handed out again in that instant, would be misnamed; the lookup
//! happens at once after the answer, and the fields say "as looked up by pid", never more.

pub use crate::model::Identity;
use crate::model::{HoldersReport, ProcessesReport};

/// Looks up running processes.
pub trait Identities {
    /// Who process `pid` is; `None` when nothing can be learned (it is gone, access is
    /// denied, or the system is not Windows).
    fn identity_of(&self, pid: u64) -> Option<Identity>;

    /// Whether this system can look processes up at all (so that asking the driver whether
    /// it sees process exits is worth a request).
    fn supported(&self) -> bool {
        true
    }
}

/// No lookups: what every system but Windows has.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoIdentities;

impl Identities for NoIdentities {
    fn identity_of(&self, _pid: u64) -> Option<Identity> {
        None
    }

    fn supported(&self) -> bool {
        false
    }
}

/// The lookups of this system.
#[must_use]
pub fn system() -> Box<dyn Identities> {
    #[cfg(windows)]
    {
        Box::new(crate::windows_identity::WindowsIdentities::default())
    }
    #[cfg(not(windows))]
    {
        Box::new(NoIdentities)
    }
}

/// Fills in the session, user and services of every running holder of `report`.
///
/// Not for the driverless fallback's holders: the kernel's list names each key's opener,
/// which may have exited with its pid handed out again, and that backend cannot tell.
pub fn annotate(report: &mut HoldersReport, identities: &dyn Identities) {
    if report.source.backend == crate::fallback::BACKEND {
        return;
    }
    for h in report.holders.iter_mut().filter(|h| !h.exited) {
        if let Some(id) = identities.identity_of(h.pid) {
            h.identity = id;
        }
    }
}

/// Fills in the session, user and services of every running process of `report`.
pub fn annotate_processes(report: &mut ProcessesReport, identities: &dyn Identities) {
    for p in report.processes.iter_mut().filter(|p| !p.exited) {
        if let Some(id) = identities.identity_of(p.pid) {
            p.identity = id;
        }
    }
}
