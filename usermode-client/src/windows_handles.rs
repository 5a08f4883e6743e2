//! The system handle table on Windows, for [`crate::holder_now`]: every key handle of the
//! other processes, and duplicates of them in this process.
//!
//! `NtQuerySystemInformation` (ntdll, resolved at run time) with
//! `SystemExtendedHandleInformation` (class 64) returns `SYSTEM_HANDLE_INFORMATION_EX`: a
//! count, a reserved word, then one 40-byte `SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX` per handle of
//! every process (`Object` 0, `UniqueProcessId` 8, `HandleValue` 16, `GrantedAccess` 24,
//! `CreatorBackTraceIndex` 28, `ObjectTypeIndex` 30, `HandleAttributes` 32; layout as in
//! `ReactOS` `sdk/include/ndk/extypes.h` — Microsoft documents neither the class nor the
//! structure). The `Object` field is never used: the driver identifies handles itself. The
//! key type's index is not fixed across Windows versions, so it is learned from a key handle
//! of this process (`RegOpenKeyExW`). Duplicates are made with `DuplicateHandle` from a
//! process opened for `PROCESS_DUP_HANDLE` (Administrators with `SeDebugPrivilege`, enabled
//! here best effort, get it for all but protected processes).
//!
//! Not run in this project's CI (no Windows); compiled for Windows by the cross clippy. The
//! same flow runs against the kernel emulator's model (`duplicated-holder`, and the CLI's
//! `--emulator duplicated`).

use std::{collections::BTreeMap, ptr};

use windows_sys::Win32::{
    Foundation::{CloseHandle, DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE},
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        Registry::{HKEY, HKEY_LOCAL_MACHINE, KEY_READ, RegCloseKey, RegOpenKeyExW},
        Threading::{GetCurrentProcess, GetCurrentProcessId, OpenProcess, PROCESS_DUP_HANDLE},
    },
};

use crate::transport::TransportError;

/// `SystemExtendedHandleInformation`.
const SYSTEM_EXTENDED_HANDLE_INFORMATION: u32 = 64;
const STATUS_INFO_LENGTH_MISMATCH: i32 = 0xC000_0004_u32.cast_signed();
/// Size of one `SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX` on x64.
const ENTRY: usize = 40;
/// Largest table buffer tried.
const MAX_BUFFER: usize = 512 * 1024 * 1024;

type NtQuerySystemInformationFn = unsafe extern "system" fn(
    class: u32,
    buffer: *mut core::ffi::c_void,
    length: u32,
    returned: *mut u32,
) -> i32;

type NtQueryKeyFn = unsafe extern "system" fn(
    key: HANDLE,
    class: u32,
    buffer: *mut core::ffi::c_void,
    length: u32,
    returned: *mut u32,
) -> i32;

/// `KEY_INFORMATION_CLASS::KeyNameInformation` (Learn, `KEY_INFORMATION_CLASS`).
const KEY_NAME_INFORMATION: u32 = 3;
const STATUS_BUFFER_OVERFLOW: i32 = 0x8000_0005_u32.cast_signed();
const STATUS_BUFFER_TOO_SMALL: i32 = 0xC000_0023_u32.cast_signed();

/// The resolved routines and the processes opened for duplication.
pub struct HandleSource {
    query: NtQuerySystemInformationFn,
    query_key: Option<NtQueryKeyFn>,
    processes: BTreeMap<u64, HANDLE>,
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

impl HandleSource {
    /// Resolves `NtQuerySystemInformation`.
    ///
    /// # Errors
    /// ntdll does not export it.
    pub fn new() -> Result<Self, String> {
        let ntdll = wide("ntdll.dll");
        // SAFETY: a NUL-terminated name; ntdll is loaded in every process.
        let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
        if module.is_null() {
            return Err("ntdll.dll is not loaded".to_owned());
        }
        // SAFETY: `module` is ntdll's handle; the name is NUL-terminated ASCII.
        let proc_ = unsafe { GetProcAddress(module, c"NtQuerySystemInformation".as_ptr().cast()) }
            .ok_or_else(|| "ntdll.dll has no NtQuerySystemInformation".to_owned())?;
        // SAFETY: NtQuerySystemInformation has this prototype (winternl.h).
        let query = unsafe {
            std::mem::transmute::<unsafe extern "system" fn() -> isize, NtQuerySystemInformationFn>(
                proc_,
            )
        };
        // SAFETY: `module` is ntdll's handle; the name is NUL-terminated ASCII.
        let query_key = unsafe { GetProcAddress(module, c"NtQueryKey".as_ptr().cast()) }.map(|p| {
            // SAFETY: NtQueryKey has this prototype (Learn, `NtQueryKey` / `ZwQueryKey`).
            unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, NtQueryKeyFn>(p) }
        });
        let _ =
            crate::windows_fallback::enable_privilege(windows_sys::Win32::Security::SE_DEBUG_NAME);
        Ok(Self {
            query,
            query_key,
            processes: BTreeMap::new(),
        })
    }

    /// The full name of the key behind `handle`, a handle of this process: `NtQueryKey`
    /// with `KeyNameInformation`, whose `KEY_NAME_INFORMATION` is `NameLength` (bytes) and
    /// the name, not NUL-terminated (Learn, `KEY_NAME_INFORMATION`). Any granted access will
    /// do: "name information is available regardless of the access level you have on the key
    /// (provided that you have some ...)" (Windows Research Kernel `ntapi.c` `NtQueryKey`), so
    /// a duplicate of a handle opened for, say, `KEY_NOTIFY` alone is named too; one with no
    /// access at all is refused. `None` when ntdll has no such routine or the key cannot be
    /// named (no access, or deleted: `STATUS_KEY_DELETED`): it is then asked about.
    #[must_use]
    pub fn key_name(&self, handle: u64) -> Option<String> {
        let query_key = self.query_key?;
        let mut buf = vec![0u8; 1024];
        loop {
            let mut returned = 0u32;
            // SAFETY: `buf` holds `buf.len()` writable bytes; `returned` is an out pointer;
            // `handle` is this process's (a duplicate), a bad one only fails.
            let status = unsafe {
                query_key(
                    handle as HANDLE,
                    KEY_NAME_INFORMATION,
                    buf.as_mut_ptr().cast(),
                    u32::try_from(buf.len()).unwrap_or(u32::MAX),
                    &raw mut returned,
                )
            };
            if (status == STATUS_BUFFER_OVERFLOW || status == STATUS_BUFFER_TOO_SMALL)
                && (returned as usize) > buf.len()
                && returned <= 1 << 20
            {
                buf.resize(returned as usize, 0);
                continue;
            }
            if status < 0 {
                return None;
            }
            let len = usize::try_from(u32::from_le_bytes(buf.get(..4)?.try_into().ok()?)).ok()?;
            let units: Vec<u16> = buf
                .get(4..4 + len)?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some(String::from_utf16_lossy(&units));
        }
    }

    /// The whole table, as raw bytes.
    fn table(&self) -> Result<Vec<u8>, TransportError> {
        let mut len = 1usize << 20;
        loop {
            let mut buf = vec![0u8; len];
            let mut returned = 0u32;
            // SAFETY: `buf` holds `len` writable bytes; `returned` is an out pointer.
            let status = unsafe {
                (self.query)(
                    SYSTEM_EXTENDED_HANDLE_INFORMATION,
                    buf.as_mut_ptr().cast(),
                    u32::try_from(len).unwrap_or(u32::MAX),
                    &raw mut returned,
                )
            };
            if status == STATUS_INFO_LENGTH_MISMATCH && len < MAX_BUFFER {
                // The table grows between calls: ask for more than it said.
                len = (returned as usize).max(len) * 2;
                continue;
            }
            if status < 0 {
                return Err(TransportError::Os(std::io::Error::other(format!(
                    "NtQuerySystemInformation(SystemExtendedHandleInformation) failed: {:#010x}",
                    status.cast_unsigned()
                ))));
            }
            buf.truncate((returned as usize).min(len));
            return Ok(buf);
        }
    }

    /// Every key handle of the other processes, `(pid, handle)`.
    ///
    /// # Errors
    /// The system refused the table.
    pub fn foreign_key_handles(&mut self) -> Result<Vec<(u64, u64)>, TransportError> {
        let mut own: HKEY = ptr::null_mut();
        let software = wide("SOFTWARE");
        // SAFETY: a NUL-terminated subkey name; `own` is an out pointer.
        let opened = unsafe {
            RegOpenKeyExW(
                HKEY_LOCAL_MACHINE,
                software.as_ptr(),
                0,
                KEY_READ,
                &raw mut own,
            )
        };
        if opened != 0 {
            return Err(TransportError::Os(std::io::Error::from_raw_os_error(
                opened.cast_signed(),
            )));
        }
        let table = self.table();
        // SAFETY: opened above, closed once.
        unsafe { RegCloseKey(own) };
        let table = table?;
        // SAFETY: no arguments.
        let me = u64::from(unsafe { GetCurrentProcessId() });
        let count = usize::try_from(le_u64(&table, 0)).unwrap_or(0);
        let entries = (0..count)
            .map(|i| 16 + i * ENTRY)
            .take_while(|&at| at + ENTRY <= table.len());
        let key_type = entries
            .clone()
            .find(|&at| le_u64(&table, at + 8) == me && le_u64(&table, at + 16) == own as u64)
            .map(|at| le_u16(&table, at + 30))
            .ok_or_else(|| {
                TransportError::Os(std::io::Error::other(
                    "the key object type was not found in the system handle table",
                ))
            })?;
        Ok(entries
            .filter(|&at| le_u16(&table, at + 30) == key_type && le_u64(&table, at + 8) != me)
            .map(|at| (le_u64(&table, at + 8), le_u64(&table, at + 16)))
            .collect())
    }

    /// Duplicates `handle` of `pid` into this process; `None` when it cannot.
    pub fn duplicate(&mut self, pid: u64, handle: u64) -> Option<u64> {
        let process = if let Some(&p) = self.processes.get(&pid) {
            p
        } else {
            // SAFETY: plain values; a null handle is checked below.
            let p = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, u32::try_from(pid).ok()?) };
            self.processes.insert(pid, p);
            p
        };
        if process.is_null() {
            return None; // a protected process, or gone
        }
        let mut dup: HANDLE = ptr::null_mut();
        // SAFETY: no arguments; this process's pseudo-handle.
        let me = unsafe { GetCurrentProcess() };
        // SAFETY: `process` is open for PROCESS_DUP_HANDLE; the target is this process's
        // pseudo-handle; `dup` is an out pointer.
        let ok = unsafe {
            DuplicateHandle(
                process,
                handle as HANDLE,
                me,
                &raw mut dup,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        (ok != 0).then_some(dup as u64)
    }

    /// Closes a duplicate.
    pub fn close(handle: u64) {
        // SAFETY: a handle `duplicate` returned, closed once.
        unsafe { CloseHandle(handle as HANDLE) };
    }
}

impl Drop for HandleSource {
    fn drop(&mut self) {
        for &p in self.processes.values().filter(|p| !p.is_null()) {
            // SAFETY: opened by `duplicate`, closed once.
            unsafe { CloseHandle(p) };
        }
    }
}
