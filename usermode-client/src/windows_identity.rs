//! Windows answers for [`crate::holder_identity`].
//!
//! A process's session (`ProcessIdToSessionId`), the user of its primary token (`OpenProcess` with
//! `PROCESS_QUERY_LIMITED_INFORMATION`, `OpenProcessToken`, `TokenUser`, then
//! `LookupAccountSidW`), and the services running in it (the service manager's
//! `EnumServicesStatusExW`, `SC_ENUM_PROCESS_INFO`, active Win32 services, read once per run).
//! Each part that fails (access denied to a protected process, no service manager right) is
//! left out; nothing here is run by the project's tests, which cannot run Windows.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::ptr;

use windows_sys::Win32::{
    Foundation::{CloseHandle, ERROR_MORE_DATA, GetLastError, HANDLE},
    System::{
        RemoteDesktop::ProcessIdToSessionId,
        Services::{
            CloseServiceHandle, ENUM_SERVICE_STATUS_PROCESSW, EnumServicesStatusExW,
            OpenSCManagerW, SC_ENUM_PROCESS_INFO, SC_HANDLE, SC_MANAGER_ENUMERATE_SERVICE,
            SERVICE_ACTIVE, SERVICE_WIN32,
        },
        Threading::{OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION},
    },
};

use crate::accounts::Accounts;
use crate::holder_identity::{Identities, Identity};
use crate::windows_accounts::{WindowsAccounts, process_user_sid};

/// The lookups, with the service list read on first use.
#[derive(Debug, Default)]
pub struct WindowsIdentities {
    /// Active services by pid; `None` when the list could not be read in full.
    services: OnceCell<Option<BTreeMap<u32, Vec<String>>>>,
}

/// Closes a process handle when dropped.
struct Process(HANDLE);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenProcess and is closed exactly once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// Closes a service manager handle when dropped.
struct Manager(SC_HANDLE);

impl Drop for Manager {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW and is closed exactly once, here.
        unsafe { CloseServiceHandle(self.0) };
    }
}

/// Reads a NUL-terminated UTF-16 string inside a buffer the caller keeps alive.
fn read_wide(p: *const u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut len = 0usize;
    loop {
        // SAFETY: `p` points to a NUL-terminated string in the service buffer; every unit up
        // to and including the terminator is readable.
        let unit = unsafe { p.wrapping_add(len).read() };
        if unit == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: `len` units starting at `p` were just read one by one.
    let units = unsafe { std::slice::from_raw_parts(p, len) };
    Some(String::from_utf16_lossy(units))
}

/// Active Win32 services by process id; `None` when the list cannot be read in full.
fn services_by_pid() -> Option<BTreeMap<u32, Vec<String>>> {
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    // SAFETY: local machine, default database; no pointers but the nulls.
    let raw = unsafe { OpenSCManagerW(ptr::null(), ptr::null(), SC_MANAGER_ENUMERATE_SERVICE) };
    if raw.is_null() {
        return None;
    }
    let manager = Manager(raw);
    let mut buf: Vec<u64> = vec![0; 8192];
    let mut resume = 0u32;
    loop {
        let (mut needed, mut returned) = (0u32, 0u32);
        let len = u32::try_from(buf.len() * 8).ok()?;
        // SAFETY: `buf` holds `len` writable, 8-aligned bytes; the out pointers are valid;
        // no group name.
        let ok = unsafe {
            EnumServicesStatusExW(
                manager.0,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_ACTIVE,
                buf.as_mut_ptr().cast(),
                len,
                &raw mut needed,
                &raw mut returned,
                &raw mut resume,
                ptr::null(),
            )
        };
        let entries = buf.as_ptr().cast::<ENUM_SERVICE_STATUS_PROCESSW>();
        for i in 0..returned as usize {
            // SAFETY: the call wrote `returned` entries at the start of the buffer (also when
            // it reports ERROR_MORE_DATA); their strings point into the same buffer.
            let e = unsafe { entries.wrapping_add(i).read() };
            if let Some(name) = read_wide(e.lpServiceName) {
                by_pid
                    .entry(e.ServiceStatusProcess.dwProcessId)
                    .or_default()
                    .push(name);
            }
        }
        if ok != 0 {
            break;
        }
        // SAFETY: no arguments; reads this thread's last error, set by the call above.
        if unsafe { GetLastError() } != ERROR_MORE_DATA {
            return None; // another error: the list is not whole
        }
        buf.resize((needed as usize).div_ceil(8).max(buf.len()), 0);
    }
    for names in by_pid.values_mut() {
        names.sort();
    }
    Some(by_pid)
}

impl Identities for WindowsIdentities {
    fn identity_of(&self, pid: u64) -> Option<Identity> {
        let pid = u32::try_from(pid).ok()?;
        // The handle pins the pid: while it is open the process object lives and its id is
        // not handed out again, so every answer below is about the same process. A process
        // that cannot be opened is not looked up at all.
        // SAFETY: no pointers; a limited query right is enough for the token.
        let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if raw.is_null() {
            return None;
        }
        let process = Process(raw);
        let mut session = 0u32;
        // SAFETY: `session` is a valid out pointer.
        let session =
            (unsafe { ProcessIdToSessionId(pid, &raw mut session) } != 0).then_some(session);
        let user =
            process_user_sid(process.0).map(|sid| WindowsAccounts.account_of(&sid).unwrap_or(sid));
        let services = self
            .services
            .get_or_init(services_by_pid)
            .as_ref()
            .map(|by_pid| by_pid.get(&pid).cloned().unwrap_or_default());
        drop(process);
        Some(Identity {
            session,
            user,
            services,
        })
    }
}
