//! `HKLM` keys the install commands create and write (`RegCreateKeyExW`, `RegSetValueExW`).

use std::ptr;

use anyhow::{Result, bail};
use windows_sys::Win32::{
    Foundation::ERROR_SUCCESS,
    System::Registry::{
        HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE, REG_DWORD, REG_OPTION_NON_VOLATILE,
        REG_VALUE_TYPE, RegCloseKey, RegCreateKeyExW, RegSetValueExW,
    },
};

/// A NUL-terminated UTF-16 copy of `s`.
#[must_use]
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A Win32 status as an error saying `what` (and to run as Administrator).
///
/// # Errors
/// `status` is not `ERROR_SUCCESS`.
pub fn check(status: u32, what: &str) -> Result<()> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        bail!(
            "{what}: {} (run as Administrator)",
            std::io::Error::from_raw_os_error(status.cast_signed())
        )
    }
}

/// A key under `HKLM` open for setting values, closed when dropped.
pub struct Key(HKEY);

impl Key {
    /// Creates (or opens) `HKLM\<path>` for `KEY_SET_VALUE`.
    ///
    /// # Errors
    /// The registry refused (not elevated).
    pub fn create_hklm(path: &str) -> Result<Self> {
        let path_w = wide(path);
        let mut raw: HKEY = ptr::null_mut();
        // SAFETY: `path_w` is NUL-terminated; `raw` is a valid out pointer; no class, default
        // security (inherited from the parent key), no disposition wanted.
        let status = unsafe {
            RegCreateKeyExW(
                HKEY_LOCAL_MACHINE,
                path_w.as_ptr(),
                0,
                ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_SET_VALUE,
                ptr::null(),
                &raw mut raw,
                ptr::null_mut(),
            )
        };
        check(status, &format!(r"cannot create HKLM\{path}"))?;
        Ok(Self(raw))
    }

    /// Sets string value `name` (`REG_SZ` or `REG_EXPAND_SZ`, NUL-terminated).
    ///
    /// # Errors
    /// The registry refused.
    pub fn set_string(&self, name: &str, kind: REG_VALUE_TYPE, value: &str) -> Result<()> {
        let data = wide(value);
        let bytes: Vec<u8> = data.iter().flat_map(|u| u.to_le_bytes()).collect();
        self.set(name, kind, &bytes)
    }

    /// Sets `REG_DWORD` value `name`.
    ///
    /// # Errors
    /// The registry refused.
    pub fn set_dword(&self, name: &str, value: u32) -> Result<()> {
        self.set(name, REG_DWORD, &value.to_le_bytes())
    }

    fn set(&self, name: &str, kind: REG_VALUE_TYPE, data: &[u8]) -> Result<()> {
        let name_w = wide(name);
        let len = u32::try_from(data.len())?;
        // SAFETY: the key is open; `name_w` is NUL-terminated; `data` holds `len` bytes.
        let status =
            unsafe { RegSetValueExW(self.0, name_w.as_ptr(), 0, kind, data.as_ptr(), len) };
        check(status, &format!("cannot set {name}"))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the key came from RegCreateKeyExW and is closed once, here.
        unsafe { RegCloseKey(self.0) };
    }
}
