//! The driverless fallback's system call: `NtQueryOpenSubKeysEx` from ntdll.
//!
//! It is resolved at run
//! time (Wine and old systems may lack it), which lists the `(pid, key name)` of every open
//! key below a hive root. The kernel checks a privilege before answering (the Windows
//! Research Kernel's `NtQueryOpenSubKeysEx` requires `SeRestorePrivilege`); Administrators
//! hold it but it is disabled by default, so it is enabled here first (best effort).

use std::{io, mem::size_of, ptr};

use windows_sys::Win32::{
    Foundation::{CloseHandle, HANDLE, LUID, UNICODE_STRING},
    Security::{
        AdjustTokenPrivileges, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SE_BACKUP_NAME,
        SE_PRIVILEGE_ENABLED, SE_RESTORE_NAME, TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES,
    },
    System::{
        LibraryLoader::{GetModuleHandleW, GetProcAddress},
        Threading::{GetCurrentProcess, OpenProcessToken},
    },
};

use crate::fallback::{BACKEND, OpenSubKeys};
use crate::transport::{ERROR_FILE_NOT_FOUND, TransportError};

/// `OBJECT_ATTRIBUTES` (`wdm.h`), declared here to keep the Wdk features of windows-sys out.
#[repr(C)]
struct ObjectAttributes {
    length: u32,
    root_directory: HANDLE,
    object_name: *const UNICODE_STRING,
    attributes: u32,
    security_descriptor: *const core::ffi::c_void,
    security_quality_of_service: *const core::ffi::c_void,
}

/// `OBJ_CASE_INSENSITIVE`.
const OBJ_CASE_INSENSITIVE: u32 = 0x40;
const STATUS_BUFFER_OVERFLOW: u32 = 0x8000_0005;
const STATUS_INFO_LENGTH_MISMATCH: u32 = 0xC000_0004;
const STATUS_BUFFER_TOO_SMALL: u32 = 0xC000_0023;
const STATUS_OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
const STATUS_PRIVILEGE_NOT_HELD: u32 = 0xC000_0061;
const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
/// Largest answer buffer tried.
const MAX_BUFFER: usize = 64 * 1024 * 1024;
/// Size of `KEY_PID_ARRAY` on x64: `HANDLE` (8), `UNICODE_STRING` (16).
const ENTRY: usize = 24;

type NtQueryOpenSubKeysExFn = unsafe extern "system" fn(
    target_key: *const ObjectAttributes,
    buffer_length: u32,
    buffer: *mut core::ffi::c_void,
    required_size: *mut u32,
) -> i32;

/// `NtQueryOpenSubKeysEx`, resolved.
pub struct NtQuerySource {
    query: NtQueryOpenSubKeysExFn,
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Enables `name` in this process's token; false when it could not be.
pub(crate) fn enable_privilege(name: *const u16) -> bool {
    let mut luid = LUID::default();
    // SAFETY: `name` is one of windows-sys's NUL-terminated privilege names; `luid` is an
    // out pointer.
    if unsafe { LookupPrivilegeValueW(ptr::null(), name, &raw mut luid) } == 0 {
        return false;
    }
    // SAFETY: no arguments; returns the current process's pseudo-handle.
    let process = unsafe { GetCurrentProcess() };
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a valid pseudo-handle; `token` is an out pointer.
    if unsafe { OpenProcessToken(process, TOKEN_ADJUST_PRIVILEGES, &raw mut token) } == 0 {
        return false;
    }
    let tp = TOKEN_PRIVILEGES {
        PrivilegeCount: 1,
        Privileges: [LUID_AND_ATTRIBUTES {
            Luid: luid,
            Attributes: SE_PRIVILEGE_ENABLED,
        }],
    };
    // SAFETY: `token` is open with TOKEN_ADJUST_PRIVILEGES; `tp` is a valid one-entry
    // TOKEN_PRIVILEGES; no previous state is asked for.
    let ok = unsafe {
        AdjustTokenPrivileges(token, 0, &raw const tp, 0, ptr::null_mut(), ptr::null_mut())
    };
    // SAFETY: `token` came from OpenProcessToken and is closed once.
    unsafe { CloseHandle(token) };
    ok != 0
}

impl NtQuerySource {
    /// Resolves `NtQueryOpenSubKeysEx` in ntdll and enables the backup and restore
    /// privileges (best effort: a user without them gets a clear error at query time).
    ///
    /// # Errors
    /// [`TransportError::Unsupported`] when ntdll lacks the routine.
    pub fn new() -> Result<Self, TransportError> {
        let unsupported = TransportError::Unsupported {
            backend: BACKEND,
            why: "this system's ntdll has no NtQueryOpenSubKeysEx",
        };
        let ntdll = wide("ntdll.dll");
        // SAFETY: `ntdll` is NUL-terminated; ntdll is mapped in every process.
        let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
        if module.is_null() {
            return Err(unsupported);
        }
        // SAFETY: `module` is ntdll's handle; the name is a NUL-terminated C string.
        let proc_ = unsafe { GetProcAddress(module, c"NtQueryOpenSubKeysEx".as_ptr().cast()) };
        let Some(proc_) = proc_ else {
            return Err(unsupported);
        };
        // SAFETY: the exported NtQueryOpenSubKeysEx has exactly this signature (phnt,
        // ntregapi.h); both are `extern "system"` function pointers of the same size.
        let query = unsafe {
            std::mem::transmute::<unsafe extern "system" fn() -> isize, NtQueryOpenSubKeysExFn>(
                proc_,
            )
        };
        let _ = enable_privilege(SE_RESTORE_NAME);
        let _ = enable_privilege(SE_BACKUP_NAME);
        Ok(Self { query })
    }
}

/// Reads a little-endian `u16`/`u64` at `at` of `b`.
fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses a `KEY_OPEN_SUBKEYS_INFORMATION` at `base` in memory, `bytes` long: names are
/// read only when their buffer lies inside the answer.
fn parse(bytes: &[u8], base: usize) -> Vec<(u64, String)> {
    let count = bytes
        .get(0..4)
        .and_then(|c| c.try_into().ok())
        .map_or(0, u32::from_le_bytes) as usize;
    let mut out = Vec::new();
    for i in 0..count {
        let at = 8 + i * ENTRY;
        let (Some(pid), Some(len), Some(ptr_)) = (
            le_u64(bytes, at),
            le_u16(bytes, at + 8),
            le_u64(bytes, at + 16),
        ) else {
            break;
        };
        let name = usize::try_from(ptr_)
            .ok()
            .and_then(|p| p.checked_sub(base))
            .and_then(|off| bytes.get(off..off + usize::from(len)))
            .map(|b| {
                let units: Vec<u16> = b
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16_lossy(&units)
            })
            .unwrap_or_default();
        out.push((pid, name));
    }
    out
}

impl OpenSubKeys for NtQuerySource {
    fn image_of(&mut self, pid: u64) -> Option<String> {
        crate::windows::image_of(pid, crate::windows::ImageForm::Win32)
    }

    fn open_subkeys(&mut self, hive: &str) -> Result<Vec<(u64, String)>, TransportError> {
        let units: Vec<u16> = hive.encode_utf16().collect();
        let bytes_len = u16::try_from(units.len() * 2).map_err(|_| TransportError::Request {
            code: ERROR_FILE_NOT_FOUND,
        })?;
        let name = UNICODE_STRING {
            Length: bytes_len,
            MaximumLength: bytes_len,
            Buffer: units.as_ptr().cast_mut(),
        };
        let oa = ObjectAttributes {
            length: u32::try_from(size_of::<ObjectAttributes>()).unwrap_or(48),
            root_directory: ptr::null_mut(),
            object_name: &raw const name,
            attributes: OBJ_CASE_INSENSITIVE,
            security_descriptor: ptr::null(),
            security_quality_of_service: ptr::null(),
        };
        let mut buf: Vec<u64> = vec![0; 64 * 1024 / 8];
        loop {
            let len = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
            let mut required = 0u32;
            // SAFETY: `oa` and the name it points to live across the call; `buf` holds `len`
            // writable, 8-aligned bytes; `required` is an out pointer.
            let status = unsafe {
                (self.query)(
                    &raw const oa,
                    len,
                    buf.as_mut_ptr().cast(),
                    &raw mut required,
                )
            }
            .cast_unsigned();
            match status {
                0 => break,
                STATUS_BUFFER_OVERFLOW | STATUS_BUFFER_TOO_SMALL | STATUS_INFO_LENGTH_MISMATCH
                    if buf.len() * 8 < MAX_BUFFER =>
                {
                    let want = (required as usize).max(buf.len() * 16).min(MAX_BUFFER);
                    buf = vec![0; want.div_ceil(8)];
                }
                STATUS_OBJECT_NAME_NOT_FOUND => {
                    return Err(TransportError::Request {
                        code: ERROR_FILE_NOT_FOUND,
                    });
                }
                STATUS_PRIVILEGE_NOT_HELD | STATUS_ACCESS_DENIED => {
                    return Err(TransportError::Unsupported {
                        backend: BACKEND,
                        why: "NtQueryOpenSubKeysEx needs SeRestorePrivilege: run hivetrack from an elevated prompt (Administrators hold it)",
                    });
                }
                other => {
                    return Err(TransportError::Os(io::Error::other(format!(
                        "NtQueryOpenSubKeysEx({hive}) failed with NTSTATUS {other:#010x} (the path must be a hive's mount point)"
                    ))));
                }
            }
        }
        let base = buf.as_ptr() as usize;
        // SAFETY: `buf` is a live Vec of `buf.len()` u64s; viewing its bytes as u8 is valid
        // for any bit pattern and the slice does not outlive `buf`.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
        Ok(parse(bytes, base))
    }
}
