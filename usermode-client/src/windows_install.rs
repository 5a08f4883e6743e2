//! The Windows half of placing the service's files ([`crate::install_location`] decides).
//!
//! The Program Files folder, a path's owner and DACL, owning a path by Administrators,
//! copying, and removing files now or at the next restart.

use std::path::{Path, PathBuf};
use std::ptr;

use anyhow::{Context, Result, anyhow};
use windows_sys::Win32::{
    Foundation::{ERROR_SUCCESS, LocalFree},
    Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_SIZE_INFORMATION, AclSizeInformation,
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSidToSidW, GetNamedSecurityInfoW, SE_FILE_OBJECT,
            SetNamedSecurityInfoW,
        },
        DACL_SECURITY_INFORMATION, GetAce, GetAclInformation, OWNER_SECURITY_INFORMATION, PSID,
    },
    Storage::FileSystem::{MOVEFILE_DELAY_UNTIL_REBOOT, MoveFileExW},
    System::Com::CoTaskMemFree,
    System::LibraryLoader::{GetModuleHandleW, GetProcAddress},
    UI::Shell::{FOLDERID_ProgramFiles, FOLDERID_System, SHGetKnownFolderPath},
};

use crate::install_location::{Ace, SID_ADMINISTRATORS};

/// A NUL-terminated UTF-16 copy of `p`.
fn wide(p: &Path) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    p.as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect()
}

/// The length of a NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` points to a readable NUL-terminated UTF-16 string.
const unsafe fn wide_len(p: *const u16) -> usize {
    let mut len = 0usize;
    loop {
        let q = p.wrapping_add(len);
        // SAFETY: the caller guarantees every unit up to the terminator is readable, and
        // `q` is one of them.
        if unsafe { q.read() } == 0 {
            return len;
        }
        len += 1;
    }
}

/// `%ProgramFiles%` as `SHGetKnownFolderPath(FOLDERID_ProgramFiles)` gives it.
///
/// Learn, "`SHGetKnownFolderPath`": the caller frees the string with `CoTaskMemFree`). Not the
/// `ProgramFiles` environment variable: a user can set that in their own environment.
///
/// # Errors
/// The shell could not give the folder.
pub fn program_files() -> Result<PathBuf> {
    known_folder(&FOLDERID_ProgramFiles, "Program Files")
}

/// `%SystemRoot%\System32` as `SHGetKnownFolderPath(FOLDERID_System)` gives it (the
/// folder of DIRID 11; `drivers` below it is DIRID 12).
///
/// # Errors
/// The shell could not give the folder.
pub fn system32() -> Result<PathBuf> {
    known_folder(&FOLDERID_System, "System32")
}

/// A known folder's path (`SHGetKnownFolderPath`, freed with `CoTaskMemFree`).
fn known_folder(id: &windows_sys::core::GUID, what: &str) -> Result<PathBuf> {
    let mut path: *mut u16 = ptr::null_mut();
    // SAFETY: `id` is a static GUID; flags 0 and a null token ask for the default folder;
    // `path` is an out pointer.
    let hr = unsafe { SHGetKnownFolderPath(id, 0, ptr::null_mut(), &raw mut path) };
    if hr < 0 || path.is_null() {
        if !path.is_null() {
            // SAFETY: Learn: the string is freed with CoTaskMemFree even when the call fails.
            unsafe { CoTaskMemFree(path.cast()) };
        }
        return Err(anyhow!("cannot find the {what} folder (HRESULT {hr:#x})"));
    }
    // SAFETY: on success `path` is a NUL-terminated string the shell allocated.
    let len = unsafe { wide_len(path) };
    // SAFETY: `len` units from `path` were just read.
    let units = unsafe { std::slice::from_raw_parts(path, len) };
    let out = PathBuf::from(String::from_utf16_lossy(units));
    // SAFETY: allocated by SHGetKnownFolderPath, freed once.
    unsafe { CoTaskMemFree(path.cast()) };
    Ok(out)
}

/// Whether this process runs under Wine.
///
/// Its ntdll exports `wine_get_version`, which no Windows ntdll does. Every file of a Wine prefix belongs to the Unix user, so no folder
/// passes the ACL checks there; `service install` then warns instead of refusing (Unix
/// permissions are Wine's boundary). Only Wine's own ntdll can make this true.
#[must_use]
pub fn under_wine() -> bool {
    ntdll_export(c"wine_get_version").is_some()
}

/// The address of ntdll's export `name`, if it has one.
#[must_use]
pub fn ntdll_export(name: &std::ffi::CStr) -> Option<unsafe extern "system" fn() -> isize> {
    let module: Vec<u16> = "ntdll.dll"
        .encode_utf16()
        .chain(std::iter::once(0))
        .collect();
    // SAFETY: `module` is NUL-terminated; ntdll is mapped in every process.
    let ntdll = unsafe { GetModuleHandleW(module.as_ptr()) };
    if ntdll.is_null() {
        return None;
    }
    // SAFETY: `ntdll` is a loaded module; `name` is a NUL-terminated ANSI string.
    unsafe { GetProcAddress(ntdll, name.as_ptr().cast()) }
}

/// A SID as its string (`windows_accounts::take_local_wide` frees what
/// `ConvertSidToStringSidW` allocated).
fn sid_string(sid: PSID) -> Option<String> {
    if sid.is_null() {
        return None;
    }
    let mut text: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` points into a live security descriptor; `text` is an out pointer.
    if unsafe { ConvertSidToStringSidW(sid, &raw mut text) } == 0 {
        return None;
    }
    crate::windows_accounts::take_local_wide(text)
}

/// The owner (as a SID string) and DACL (`None`: a NULL DACL) of a file or folder
/// (Learn, "`GetNamedSecurityInfoW`"; the descriptor is freed with `LocalFree`).
///
/// # Errors
/// The path does not exist or its security cannot be read.
pub fn owner_and_dacl(path: &Path) -> Result<(Option<String>, Option<Vec<Ace>>)> {
    let name = wide(path);
    let mut owner: PSID = ptr::null_mut();
    let mut dacl: *mut ACL = ptr::null_mut();
    let mut sd: *mut core::ffi::c_void = ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; the out pointers are valid; the group and SACL are
    // not asked for.
    let rc = unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &raw mut owner,
            ptr::null_mut(),
            &raw mut dacl,
            ptr::null_mut(),
            &raw mut sd,
        )
    };
    if rc != ERROR_SUCCESS {
        return Err(anyhow!(
            "cannot read the permissions of {} (error {rc})",
            path.display()
        ));
    }
    let owner_sid = sid_string(owner);
    let aces = if dacl.is_null() {
        None
    } else {
        Some(read_aces(dacl))
    };
    // SAFETY: `sd` was allocated by GetNamedSecurityInfoW; `owner` and `dacl` point into it
    // and are not used after this.
    unsafe { LocalFree(sd) };
    Ok((owner_sid, aces))
}

/// Every ACE of a DACL (`GetAclInformation`, `GetAce`). Allowed/denied ACEs (types 0, 1)
/// and their callback forms (9, 10) share `ACCESS_ALLOWED_ACE`'s layout; the SID of any
/// other type is not read ("?").
fn read_aces(dacl: *mut ACL) -> Vec<Ace> {
    let mut info = ACL_SIZE_INFORMATION::default();
    // SAFETY: `dacl` is a valid ACL inside a live descriptor; `info` is sized for the class.
    let ok = unsafe {
        GetAclInformation(
            dacl,
            (&raw mut info).cast(),
            u32::try_from(std::mem::size_of::<ACL_SIZE_INFORMATION>()).unwrap_or(12),
            AclSizeInformation,
        )
    };
    let mut out = Vec::new();
    if ok == 0 {
        // Unreadable: report one unknown writer rather than none.
        out.push(Ace {
            ace_type: 0xff,
            flags: 0,
            mask: u32::MAX,
            sid: "?".to_owned(),
        });
        return out;
    }
    for i in 0..info.AceCount {
        let mut ace: *mut core::ffi::c_void = ptr::null_mut();
        // SAFETY: `i` < AceCount; `ace` is an out pointer into the ACL.
        if unsafe { GetAce(dacl, i, &raw mut ace) } == 0 || ace.is_null() {
            continue;
        }
        // SAFETY: every ACE starts with an ACE_HEADER.
        let header = unsafe { ace.cast::<ACE_HEADER>().read_unaligned() };
        let (mask, sid) = if matches!(header.AceType, 0 | 1 | 9 | 10) {
            let allowed = ace.cast::<ACCESS_ALLOWED_ACE>();
            // SAFETY: these types have ACCESS_ALLOWED_ACE's layout; the SID starts at
            // SidStart and lies inside the ACE.
            let mask = unsafe { (*allowed).Mask };
            // SAFETY: as above: the address of SidStart is the SID.
            let sid_ptr = unsafe { (&raw mut (*allowed).SidStart).cast() };
            (mask, sid_string(sid_ptr).unwrap_or_else(|| "?".to_owned()))
        } else {
            (u32::MAX, "?".to_owned())
        };
        out.push(Ace {
            ace_type: header.AceType,
            flags: header.AceFlags,
            mask,
            sid,
        });
    }
    out
}

/// Makes `BUILTIN\Administrators` the owner of `path`.
///
/// Learn, "`SetNamedSecurityInfoW`". What an elevated administrator creates may otherwise
/// be owned by their own account, which then keeps `WRITE_DAC` (Learn, "Owner of a New
/// Object") from any process of theirs, elevated or not.
///
/// # Errors
/// The owner could not be set.
pub fn own_by_administrators(path: &Path) -> Result<()> {
    let sid_text: Vec<u16> = SID_ADMINISTRATORS
        .encode_utf16()
        .chain(std::iter::once(0))
        .collect();
    let mut sid: PSID = ptr::null_mut();
    // SAFETY: `sid_text` is NUL-terminated; `sid` is an out pointer freed below.
    if unsafe { ConvertStringSidToSidW(sid_text.as_ptr(), &raw mut sid) } == 0 {
        return Err(anyhow!("cannot build the Administrators SID"));
    }
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated and `sid` valid; only the owner is set.
    let rc = unsafe {
        SetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION,
            sid,
            ptr::null_mut(),
            ptr::null(),
            ptr::null(),
        )
    };
    // SAFETY: LocalAlloc'd by ConvertStringSidToSidW, freed once.
    unsafe { LocalFree(sid) };
    if rc == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!(
            "cannot make Administrators the owner of {} (error {rc})",
            path.display()
        ))
    }
}

/// Copies `from` to `to` (replacing it) and makes Administrators its owner.
///
/// # Errors
/// The copy or the owner change failed.
pub fn copy_owned(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    own_by_administrators(to)
}

/// What became of a file or folder `uninstall` removes.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Removed now.
    Removed,
    /// Not there.
    Absent,
    /// In use (e.g. this very hivetrack.exe, or an Event Viewer holding the message DLL):
    /// removed at the next restart (`MoveFileExW` with a null new name and
    /// `MOVEFILE_DELAY_UNTIL_REBOOT`; Learn, "MoveFileExW": a folder is then removed only
    /// if empty).
    AtRestart,
    /// A folder that still holds other files (e.g. a `--jsonl` file put there): kept.
    KeptNotEmpty,
}

/// Removes a file (or an empty folder), or schedules that for the next restart.
///
/// # Errors
/// Neither worked.
pub fn remove_or_schedule(path: &Path, folder: bool) -> Result<Removal> {
    if !path.exists() {
        return Ok(Removal::Absent);
    }
    if folder && std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()) {
        return Ok(Removal::KeptNotEmpty);
    }
    let now = if folder {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    if now.is_ok() {
        return Ok(Removal::Removed);
    }
    schedule_at_restart(path).map_err(|e| {
        anyhow!(
            "cannot remove {} now ({}) nor at the next restart ({e})",
            path.display(),
            now.err().map_or_else(String::new, |e| e.to_string())
        )
    })
}

/// The `PendingFileRenameOperations` value of the session manager (empty when absent): the
/// renames and deletions `MoveFileExW` scheduled for the next restart.
///
/// # Errors
/// The value exists but could not be read.
pub fn pending_file_renames() -> Result<Vec<u16>> {
    use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA};
    use windows_sys::Win32::System::Registry::{
        HKEY_LOCAL_MACHINE, RRF_RT_REG_MULTI_SZ, RegGetValueW,
    };
    let key: Vec<u16> = "SYSTEM\\CurrentControlSet\\Control\\Session Manager\0"
        .encode_utf16()
        .collect();
    let name: Vec<u16> = "PendingFileRenameOperations\0".encode_utf16().collect();
    let mut buf: Vec<u16> = vec![0; 4096];
    loop {
        let mut bytes = u32::try_from(buf.len() * 2).unwrap_or(u32::MAX);
        // SAFETY: `key` and `name` are NUL-terminated; `buf` has `bytes` writable bytes and
        // `bytes` is updated to the size written (or needed).
        let rc = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                key.as_ptr(),
                name.as_ptr(),
                RRF_RT_REG_MULTI_SZ,
                ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                &raw mut bytes,
            )
        };
        match rc {
            ERROR_SUCCESS => {
                buf.truncate(bytes as usize / 2);
                return Ok(buf);
            }
            ERROR_FILE_NOT_FOUND => return Ok(Vec::new()),
            ERROR_MORE_DATA if (bytes as usize) / 2 + 1 > buf.len() => {
                buf.resize(bytes as usize / 2 + 1, 0);
            }
            e => {
                return Err(anyhow!(
                    "cannot read the restart's pending file operations (Win32 error {e})"
                ));
            }
        }
    }
}

/// Registers `path` for deletion at the next restart.
///
/// `MoveFileExW` with a null new name and `MOVEFILE_DELAY_UNTIL_REBOOT` (Learn: a folder is
/// removed at restart only if empty). The folder is registered after its files; that the
/// session manager runs `PendingFileRenameOperations` in that order (KB 202071 names the
/// value) is what installers rely on, not a sentence of Learn's: if it did not, the empty
/// folder would stay.
///
/// # Errors
/// `MoveFileExW` failed.
pub fn schedule_at_restart(path: &Path) -> Result<Removal> {
    let name = wide(path);
    // SAFETY: `name` is NUL-terminated; a null new name with DELAY_UNTIL_REBOOT registers
    // the path for deletion at restart.
    if unsafe { MoveFileExW(name.as_ptr(), ptr::null(), MOVEFILE_DELAY_UNTIL_REBOOT) } != 0 {
        Ok(Removal::AtRestart)
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}
