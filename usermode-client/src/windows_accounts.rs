//! Windows accounts: the current user's SID from the process token (for `HKCU`),
//! `DOMAIN\name` for a SID string with `LookupAccountSidW`, and the SID of an account name
//! with `LookupAccountNameW`.

use std::ptr;

use windows_sys::Win32::{
    Foundation::{CloseHandle, HANDLE, LocalFree},
    Security::{
        Authorization::{ConvertSidToStringSidW, ConvertStringSidToSidW},
        GetTokenInformation, LookupAccountNameW, LookupAccountSidW, PSID, SID_NAME_USE,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    },
    System::Threading::{GetCurrentProcess, OpenProcessToken},
};

use crate::accounts::{Accounts, SidLookup};

/// The accounts of the local system.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowsAccounts;

/// A NUL-terminated UTF-16 copy of `s`.
fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Reads a NUL-terminated UTF-16 string that `LocalAlloc` returned, and frees it.
pub(crate) fn take_local_wide(p: *mut u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut len = 0usize;
    loop {
        let q = p.wrapping_add(len);
        // SAFETY: `p` points to a NUL-terminated string the API allocated; every unit up to
        // and including the terminator is readable, and `q` is one of them.
        let unit = unsafe { q.read() };
        if unit == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: `len` units starting at `p` were just read one by one.
    let units = unsafe { std::slice::from_raw_parts(p, len) };
    let s = String::from_utf16_lossy(units);
    // SAFETY: `p` came from LocalAlloc inside ConvertSidToStringSidW and is freed once.
    unsafe { LocalFree(p.cast()) };
    Some(s)
}

/// Closes a token handle when dropped.
struct Token(HANDLE);

impl Drop for Token {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenProcessToken and is closed exactly once, here.
        unsafe { CloseHandle(self.0) };
    }
}

/// The SID string of the user of `process`'s primary token (the process handle needs
/// `PROCESS_QUERY_LIMITED_INFORMATION`).
pub(crate) fn process_user_sid(process: HANDLE) -> Option<String> {
    let mut raw: HANDLE = ptr::null_mut();
    // SAFETY: `process` is a valid process handle; `raw` is a valid out pointer.
    let ok = unsafe { OpenProcessToken(process, TOKEN_QUERY, &raw mut raw) };
    if ok == 0 {
        return None;
    }
    let token = Token(raw);
    let mut needed = 0u32;
    // SAFETY: a size query: null buffer of length 0, `needed` is a valid out pointer.
    unsafe { GetTokenInformation(token.0, TokenUser, ptr::null_mut(), 0, &raw mut needed) };
    if needed == 0 {
        return None;
    }
    // u64 elements keep the buffer aligned for TOKEN_USER.
    let mut buf = vec![0u64; (needed as usize).div_ceil(8)];
    let len = u32::try_from(buf.len() * 8).ok()?;
    // SAFETY: `buf` holds `len` writable bytes; `needed` is a valid out pointer.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &raw mut needed,
        )
    };
    if ok == 0 {
        return None;
    }
    // SAFETY: the call succeeded, so the buffer starts with an initialised TOKEN_USER
    // (8-aligned); its SID points into the same buffer, which outlives its use below.
    let user: TOKEN_USER = unsafe { buf.as_ptr().cast::<TOKEN_USER>().read() };
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: the SID is valid (see above); `text` is a valid out pointer.
    let ok = unsafe { ConvertSidToStringSidW(user.User.Sid, &raw mut text) };
    if ok == 0 {
        return None;
    }
    take_local_wide(text)
}

impl Accounts for WindowsAccounts {
    fn current_user_sid(&self) -> Option<String> {
        // SAFETY: no arguments; returns the current process's pseudo-handle.
        let process = unsafe { GetCurrentProcess() };
        process_user_sid(process)
    }

    fn account_of(&self, sid: &str) -> Option<String> {
        let wsid = wide(sid);
        let mut psid: PSID = ptr::null_mut();
        // SAFETY: `wsid` is NUL-terminated and outlives the call; `psid` is an out pointer.
        let ok = unsafe { ConvertStringSidToSidW(wsid.as_ptr(), &raw mut psid) };
        if ok == 0 {
            return None;
        }
        let mut name = vec![0u16; 256];
        let mut domain = vec![0u16; 256];
        let mut name_len = 256u32;
        let mut domain_len = 256u32;
        let mut use_: SID_NAME_USE = 0;
        // SAFETY: `psid` is a valid SID from ConvertStringSidToSidW; the buffers hold the
        // lengths passed; the out pointers are valid.
        let ok = unsafe {
            LookupAccountSidW(
                ptr::null(),
                psid,
                name.as_mut_ptr(),
                &raw mut name_len,
                domain.as_mut_ptr(),
                &raw mut domain_len,
                &raw mut use_,
            )
        };
        // SAFETY: `psid` came from LocalAlloc inside ConvertStringSidToSidW; freed once.
        unsafe { LocalFree(psid) };
        if ok == 0 {
            return None;
        }
        let name = String::from_utf16_lossy(&name[..name_len as usize]);
        let domain = String::from_utf16_lossy(&domain[..domain_len as usize]);
        Some(if domain.is_empty() {
            name
        } else {
            format!("{domain}\\{name}")
        })
    }

    fn sid_of(&self, account: &str) -> SidLookup {
        lookup_account_name(account).map_or(SidLookup::Unknown, SidLookup::Sid)
    }
}

/// `LookupAccountNameW` then `ConvertSidToStringSidW`: the SID string of `account`
/// (`DOMAIN\user`, `user`, `user@domain`), or `None` when the system knows no such account.
fn lookup_account_name(account: &str) -> Option<String> {
    let wname = wide(account);
    // A SID is at most 68 bytes (SECURITY_MAX_SID_SIZE); u64 elements keep it aligned.
    let mut sid = [0u64; 16];
    let mut sid_len = 128u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = 256u32;
    let mut use_: SID_NAME_USE = 0;
    // SAFETY: `wname` is NUL-terminated and outlives the call; `sid` holds `sid_len` bytes and
    // `domain` `domain_len` units; the out pointers are valid.
    let ok = unsafe {
        LookupAccountNameW(
            ptr::null(),
            wname.as_ptr(),
            sid.as_mut_ptr().cast(),
            &raw mut sid_len,
            domain.as_mut_ptr(),
            &raw mut domain_len,
            &raw mut use_,
        )
    };
    if ok == 0 {
        return None;
    }
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: the call succeeded, so `sid` holds a valid SID; `text` is a valid out pointer.
    let ok = unsafe { ConvertSidToStringSidW(sid.as_mut_ptr().cast(), &raw mut text) };
    if ok == 0 {
        return None;
    }
    take_local_wide(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs only on Windows (or Wine): the token's user resolves both ways.
    #[test]
    fn the_current_user_has_a_sid_and_an_account() {
        let sid = WindowsAccounts.current_user_sid().expect("a token user");
        assert!(sid.starts_with("S-1-"), "{sid}");
        let account = WindowsAccounts.account_of(&sid).expect("the user resolves");
        assert!(!account.is_empty());
        assert_eq!(
            WindowsAccounts
                .account_of("S-1-5-18")
                .as_deref()
                .map(|a| a.ends_with("SYSTEM")),
            Some(true)
        );
        assert_eq!(WindowsAccounts.account_of("not a sid"), None);
    }
}
