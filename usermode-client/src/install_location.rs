//! Where `hivetrack service install` puts what a `LocalSystem` service runs, and whether a
//! folder is safe for it (audit 21c H1).
//!
//! The service `hivetracksvc` runs as `LocalSystem` and starts at boot: whoever can replace
//! its executable, drop a DLL beside it, or redirect its `--jsonl` file runs code or writes
//! files as SYSTEM. hivetrack.exe statically imports non-KnownDLLs (dbghelp.dll,
//! userenv.dll, bcryptprimitives.dll) and Learn, "Dynamic-link library search order": for a
//! desktop app the folder the application loaded from is searched before the system
//! folder. So `install` copies hivetrack.exe and hivetrack-events.dll into
//! `%ProgramFiles%\hivetrack` (a new folder there inherits Program Files' ACL: only
//! SYSTEM, Administrators and `TrustedInstaller` may write) and registers those copies, and it
//! refuses a `--jsonl` path that anyone else can write or redirect. This module is the
//! decision, pure and tested on any host; `windows_install` reads the real ACLs and copies.

use std::path::{Component, Path, PathBuf};

use crate::service_command::MESSAGE_DLL;

/// The folder under `%ProgramFiles%` that holds the installed copies.
pub const INSTALL_FOLDER: &str = "hivetrack";
/// The executable's file name.
pub const EXE_NAME: &str = "hivetrack.exe";

/// The files `service install` registers, and whether it must copy them there first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallPlan {
    /// `%ProgramFiles%\hivetrack`.
    pub dir: PathBuf,
    /// The executable the service runs (inside `dir`).
    pub exe: PathBuf,
    /// The Event Log message file registered for the source (inside `dir`).
    pub dll: PathBuf,
    /// `(from, to)` copies to make before registering; empty when the running hivetrack.exe
    /// already is the installed copy.
    pub copies: Vec<(PathBuf, PathBuf)>,
}

/// Lower-cased components: Windows paths compare without case (NTFS names are
/// case-insensitive by default), and `C:\a\` equals `C:\a`.
fn folded(p: &Path) -> Vec<String> {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().to_lowercase())
        .collect()
}

/// Whether `a` and `b` name the same folder, compared as Windows compares names.
#[must_use]
pub fn same_path(a: &Path, b: &Path) -> bool {
    folded(a) == folded(b)
}

/// What `service install` does, given where the running hivetrack.exe is and the Program
/// Files folder (`FOLDERID_ProgramFiles`).
#[must_use]
pub fn plan(current_exe: &Path, program_files: &Path) -> InstallPlan {
    let dir = program_files.join(INSTALL_FOLDER);
    let exe = dir.join(EXE_NAME);
    let dll = dir.join(MESSAGE_DLL);
    let running_from = current_exe.parent().unwrap_or_else(|| Path::new(""));
    let copies = if same_path(running_from, &dir) {
        Vec::new()
    } else {
        vec![
            (current_exe.to_path_buf(), exe.clone()),
            (running_from.join(MESSAGE_DLL), dll.clone()),
        ]
    };
    InstallPlan {
        dir,
        exe,
        dll,
        copies,
    }
}

/// Why a `--jsonl` path is refused before any ACL is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlPathError {
    /// `-` (stdout): a service has no console.
    Stdout,
    /// A UNC or other remote path: the service writes as the computer account, and the
    /// share's own ACL is not the local folder's.
    Remote,
}

impl std::fmt::Display for JsonlPathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str(
                "--jsonl - (stdout) means nothing for a service: give a file in a folder only Administrators and SYSTEM can write",
            ),
            Self::Remote => f.write_str(
                "--jsonl must be a local file (not a share): give a file in a local folder only Administrators and SYSTEM can write",
            ),
        }
    }
}

/// The `--jsonl` path the service is registered with: absolute (the service's working
/// folder is System32, not the administrator's), local, not stdout.
///
/// # Errors
/// [`JsonlPathError`].
pub fn service_jsonl_path(given: &Path, cwd: &Path) -> Result<PathBuf, JsonlPathError> {
    if given.as_os_str() == "-" {
        return Err(JsonlPathError::Stdout);
    }
    let text = given.to_string_lossy();
    if text.starts_with(r"\\") || text.starts_with("//") {
        return Err(JsonlPathError::Remote);
    }
    Ok(if given.is_absolute() {
        given.to_path_buf()
    } else {
        cwd.join(given)
    })
}

/// `LocalSystem` (`S-1-5-18`).
pub const SID_SYSTEM: &str = "S-1-5-18";
/// `BUILTIN\Administrators` (`S-1-5-32-544`).
pub const SID_ADMINISTRATORS: &str = "S-1-5-32-544";
/// `NT SERVICE\TrustedInstaller`.
pub const SID_TRUSTED_INSTALLER: &str =
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464";
/// `CREATOR OWNER` (`S-1-3-0`): in an inheritable ACE it stands for whoever creates the
/// child: here the installing administrator or the service (SYSTEM).
pub const SID_CREATOR_OWNER: &str = "S-1-3-0";
/// `OWNER RIGHTS` (`S-1-3-4`): the object's owner.
pub const SID_OWNER_RIGHTS: &str = "S-1-3-4";

/// `OBJECT_INHERIT_ACE`: files created in the folder inherit the ACE.
pub const OBJECT_INHERIT_ACE: u8 = 0x1;
/// `INHERIT_ONLY_ACE`: the ACE does not apply to the object that holds it.
pub const INHERIT_ONLY_ACE: u8 = 0x8;

/// `FILE_WRITE_DATA` / `FILE_ADD_FILE`.
const FILE_WRITE_DATA: u32 = 0x2;
/// `FILE_APPEND_DATA` / `FILE_ADD_SUBDIRECTORY`.
const FILE_APPEND_DATA: u32 = 0x4;
/// `FILE_DELETE_CHILD`.
const FILE_DELETE_CHILD: u32 = 0x40;
/// `DELETE`.
const DELETE: u32 = 0x1_0000;
/// `WRITE_DAC`.
const WRITE_DAC: u32 = 0x4_0000;
/// `WRITE_OWNER`.
const WRITE_OWNER: u32 = 0x8_0000;
/// `GENERIC_ALL`.
const GENERIC_ALL: u32 = 0x1000_0000;
/// `GENERIC_WRITE` (for files: `FILE_WRITE_DATA | FILE_APPEND_DATA | …`).
const GENERIC_WRITE: u32 = 0x4000_0000;

/// One entry of a DACL, as `windows_install` reads it (`GetAce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ace {
    /// `ACE_HEADER.AceType`: 0 allowed, 1 denied, 9 allowed-callback, 10 denied-callback.
    pub ace_type: u8,
    /// `ACE_HEADER.AceFlags`.
    pub flags: u8,
    /// The access mask.
    pub mask: u32,
    /// The trustee as a SID string.
    pub sid: String,
}

/// What a checked path is to the file the service writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The file itself (when it exists): nobody else may write, delete or re-ACL it.
    File,
    /// Its folder: nobody else may add, delete or rename entries, nor re-ACL it; and what
    /// files created in it inherit (`OBJECT_INHERIT_ACE`) counts too.
    Folder,
    /// A folder above: nobody else may delete or rename its entries (`FILE_DELETE_CHILD`),
    /// delete or rename it, or re-ACL it; creating new entries there is harmless.
    Ancestor,
}

/// The rights that let a holder of `role` replace or redirect what the service writes.
const fn dangerous(role: Role) -> u32 {
    match role {
        Role::File | Role::Folder => {
            FILE_WRITE_DATA
                | FILE_APPEND_DATA
                | FILE_DELETE_CHILD
                | DELETE
                | WRITE_DAC
                | WRITE_OWNER
                | GENERIC_ALL
                | GENERIC_WRITE
        }
        Role::Ancestor => FILE_DELETE_CHILD | DELETE | WRITE_DAC | WRITE_OWNER | GENERIC_ALL,
    }
}

/// Whether `sid` is one of the accounts a `LocalSystem` service may trust with its files.
fn trusted(sid: &str) -> bool {
    [SID_SYSTEM, SID_ADMINISTRATORS, SID_TRUSTED_INSTALLER].contains(&sid)
}

/// Who, besides SYSTEM, Administrators and `TrustedInstaller`, can change a path in `role`.
///
/// Write, replace or re-ACL, given its owner and DACL (`None`: a NULL DACL, which Learn,
/// "Null DACLs and Empty DACLs", says "grants full access to any user that requests it").
///
/// Conservative: deny ACEs are not subtracted (an allow is enough to report), an ACE of a
/// type this does not know counts as a writer, and the owner counts as a writer unless it
/// is trusted (Learn, "Owner of a New Object": "An object's owner implicitly has
/// `WRITE_DAC` access to the object").
#[must_use]
pub fn untrusted_writers(owner: Option<&str>, dacl: Option<&[Ace]>, role: Role) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |who: String| {
        if !out.contains(&who) {
            out.push(who);
        }
    };
    let owner_trusted = owner.is_some_and(trusted);
    if !owner_trusted {
        add(format!("{} (owner)", owner.unwrap_or("no owner")));
    }
    let Some(aces) = dacl else {
        add("Everyone (NULL DACL)".to_owned());
        return out;
    };
    for ace in aces {
        let applies_here = ace.flags & INHERIT_ONLY_ACE == 0;
        let reaches_new_files = role == Role::Folder && ace.flags & OBJECT_INHERIT_ACE != 0;
        if !applies_here && !reaches_new_files {
            continue;
        }
        match ace.ace_type {
            1 | 10 => continue,
            0 | 9 => {}
            other => {
                add(format!("{} (ACE type {other})", ace.sid));
                continue;
            }
        }
        if ace.mask & dangerous(role) == 0 || trusted(&ace.sid) {
            continue;
        }
        // CREATOR OWNER is the creator of a new child (the administrator or the service);
        // on the object itself it grants nothing.
        if ace.sid == SID_CREATOR_OWNER {
            continue;
        }
        if ace.sid == SID_OWNER_RIGHTS && owner_trusted {
            continue;
        }
        add(ace.sid.clone());
    }
    out
}

/// The paths whose ACLs decide whether the service's `--jsonl` file is safe: the file (when
/// it exists, `File`), its folder (`Folder`) and every folder above (`Ancestor`).
#[must_use]
pub fn jsonl_checks(file: &Path, file_exists: bool) -> Vec<(PathBuf, Role)> {
    let mut out = Vec::new();
    if file_exists {
        out.push((file.to_path_buf(), Role::File));
    }
    let mut role = Role::Folder;
    for dir in file.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            break;
        }
        out.push((dir.to_path_buf(), role));
        role = Role::Ancestor;
    }
    out
}

/// The refusal `service install` prints for an unsafe `--jsonl` path.
#[must_use]
pub fn unsafe_jsonl_message(file: &Path, checked: &Path, role: Role, writers: &[String]) -> String {
    let what = match role {
        Role::File => "the file",
        Role::Folder => "its folder",
        Role::Ancestor => "a folder above it",
    };
    format!(
        "refusing --jsonl {}: {what} ({}) can be written, replaced or re-permissioned by {}; the \
         service writes it as SYSTEM, so they could redirect that write. Use a folder only \
         SYSTEM and Administrators can change, e.g. `mkdir C:\\ProgramData\\hivetrack-log`, \
         `icacls C:\\ProgramData\\hivetrack-log /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F \
         *S-1-5-32-544:(OI)(CI)F`, `icacls C:\\ProgramData\\hivetrack-log /setowner \
         *S-1-5-32-544`",
        file.display(),
        checked.display(),
        writers.join(", ")
    )
}

/// What `service install` checks before copying `copies`' sources (review 21b, M2).
///
/// Each source file ([`Role::File`]), its folder ([`Role::Folder`]: adding a file there plants a
/// DLL the elevated installer loads, renaming one out swaps the exe) and every folder above
/// ([`Role::Ancestor`]: renaming the folder swaps it whole). The copies are registered as the
/// `LocalSystem` service, so whoever can replace a source between the administrator starting
/// a verified `hivetrack.exe` and the copy would have SYSTEM run their file at every boot.
/// Each path once, in order.
#[must_use]
pub fn source_checks(copies: &[(PathBuf, PathBuf)]) -> Vec<(PathBuf, Role)> {
    let mut out: Vec<(PathBuf, Role)> = Vec::new();
    for (from, _) in copies {
        for (path, role) in jsonl_checks(from, true) {
            if !out.iter().any(|(p, _)| same_path(p, &path)) {
                out.push((path, role));
            }
        }
    }
    out
}

/// The refusal for a source of `service install` (`checked`, in `role`) that `writers` can
/// change, or `None` when nobody untrusted can (`untrusted_writers` on its owner and DACL).
#[must_use]
pub fn unsafe_source_message(checked: &Path, role: Role, writers: &[String]) -> Option<String> {
    if writers.is_empty() {
        return None;
    }
    let what = match role {
        Role::File => "the file",
        Role::Folder => "its folder",
        Role::Ancestor => "a folder above it",
    };
    Some(format!(
        "refusing to install from {}: {what} can be written, replaced or re-permissioned by {}, \
         who could swap the files registered as the SYSTEM service (or plant a DLL this \
         elevated installer loads). Copy the package folder to one only Administrators can \
         change (e.g. `mkdir C:\\ProgramData\\hivetrack-package`, `icacls \
         C:\\ProgramData\\hivetrack-package /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F \
         *S-1-5-32-544:(OI)(CI)F`) and run `hivetrack service install` from there",
        checked.display(),
        writers.join(", ")
    ))
}

/// The paths in or at the folder `dir` that the session manager deletes or renames away at
/// the next restart.
///
/// From the `PendingFileRenameOperations` value (`REG_MULTI_SZ` of pairs:
/// the source as `\??\C:\…`, then the new name, empty for a deletion; `MoveFileExW` with
/// `MOVEFILE_DELAY_UNTIL_REBOOT`, Learn). `service uninstall` schedules the copies it
/// cannot remove in use; an install before that restart would copy new files to the same
/// paths and the restart would delete them: the auto-start service then fails at boot with
/// no event (review 21b, L2). Compared without case, as Windows compares names.
#[must_use]
pub fn pending_removals(value: &[u16], dir: &str) -> Vec<String> {
    let strings: Vec<String> = value
        .split(|&u| u == 0)
        .map(String::from_utf16_lossy)
        .collect();
    let dir = dir.trim_end_matches('\\').to_lowercase();
    let mut out = Vec::new();
    for pair in strings.chunks(2) {
        let source = pair[0].as_str();
        if source.is_empty() {
            continue;
        }
        let path = source.strip_prefix(r"\??\").unwrap_or(source);
        let lower = path.to_lowercase();
        let under = lower
            .strip_prefix(&dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('\\'));
        if under {
            out.push(path.to_owned());
        }
    }
    out
}

/// The privileges `hivetracksvc` keeps (audit 21c L3): each one a call of the service needs
/// ([`SERVICE_NEEDS`]).
///
/// Set with `SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO`; the SCM removes every other privilege
/// from its `LocalSystem` token (Learn, "`SERVICE_REQUIRED_PRIVILEGES_INFOW` structure": "the
/// SCM will remove the privileges that are not required from the process token when the
/// process starts"), so a privilege left out cannot be enabled later. Gone:
/// `SeTcbPrivilege`, `SeLoadDriverPrivilege`, `SeTakeOwnershipPrivilege`,
/// `SeBackupPrivilege`, `SeImpersonatePrivilege`, `SeAssignPrimaryTokenPrivilege`, … Until
/// review 21b (M3) `SeRestorePrivilege` was gone too, and every kernel cross-check of the
/// service failed (`STATUS_PRIVILEGE_NOT_HELD`): each event said the holders were unseen.
pub const REQUIRED_PRIVILEGES: &[&str] = &[
    "SeChangeNotifyPrivilege",
    "SeDebugPrivilege",
    "SeRestorePrivilege",
];

/// What the service calls, and the privilege each call needs.
///
/// - `NtQueryOpenSubKeysEx` (`event_service` `recheck` and `hive_keys` → `Client::holders`):
///   `SeRestorePrivilege`, checked before anything else (Windows Research Kernel
///   `base/ntos/config/ntapi.c`: `if (!SeSinglePrivilegeCheck(SeRestorePrivilege,
///   PreviousMode)) return STATUS_PRIVILEGE_NOT_HELD;`). It opens the hive's root with
///   `KEY_READ` (same function), which `LocalSystem` is granted on hive roots without a
///   privilege.
/// - The holder lookup (`windows_handles`) opens other sessions' processes for
///   `PROCESS_DUP_HANDLE`: `SeDebugPrivilege`.
/// - `SeChangeNotifyPrivilege` (bypass traverse checking): never removed anyway (Learn, same
///   page), listed to say so.
pub const SERVICE_NEEDS: &[(&str, &str)] = &[
    ("NtQueryOpenSubKeysEx", "SeRestorePrivilege"),
    (
        "OpenProcess(PROCESS_DUP_HANDLE) of other sessions",
        "SeDebugPrivilege",
    ),
    ("traverse checking", "SeChangeNotifyPrivilege"),
];

/// A `REG_MULTI_SZ`-style UTF-16 multi-string: each string NUL-terminated, then one more
/// NUL (Learn, `SERVICE_REQUIRED_PRIVILEGES_INFOW`: "`String1\0String2\0…LastString\0\0`").
#[must_use]
pub fn multi_sz(items: &[&str]) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for item in items {
        out.extend(item.encode_utf16());
        out.push(0);
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCM strips every privilege not listed (review 21b, M3: `SeRestorePrivilege` was
    /// not, and the service's `NtQueryOpenSubKeysEx` always failed).
    #[test]
    fn the_service_keeps_every_privilege_its_calls_need() {
        for (call, privilege) in SERVICE_NEEDS {
            assert!(
                REQUIRED_PRIVILEGES.contains(privilege),
                "{call} needs {privilege}, which the SCM would remove"
            );
        }
    }

    fn ace(ace_type: u8, flags: u8, mask: u32, sid: &str) -> Ace {
        Ace {
            ace_type,
            flags,
            mask,
            sid: sid.to_owned(),
        }
    }

    const USERS: &str = "S-1-5-32-545";
    const AUTH_USERS: &str = "S-1-5-11";
    const BOB: &str = "S-1-5-21-1-2-3-1001";
    /// `FILE_GENERIC_READ | FILE_GENERIC_EXECUTE` (RX).
    const RX: u32 = 0x0012_00a9;
    /// Modify (M).
    const MODIFY: u32 = 0x0013_01bf;
    /// Full control (F).
    const FULL: u32 = 0x001f_01ff;

    /// A folder created under Program Files: SYSTEM, Administrators, `TrustedInstaller` full,
    /// Users and app packages read, CREATOR OWNER full on children.
    fn program_files_child() -> Vec<Ace> {
        vec![
            ace(0, 0x10, FULL, SID_TRUSTED_INSTALLER),
            ace(0, 0x13, FULL, SID_SYSTEM),
            ace(0, 0x13, FULL, SID_ADMINISTRATORS),
            ace(0, 0x13, RX, USERS),
            ace(0, 0x1b, GENERIC_ALL, SID_CREATOR_OWNER),
            ace(0, 0x13, RX, "S-1-15-2-1"),
        ]
    }

    #[test]
    fn the_privileges_multi_string_ends_with_two_nuls() {
        let w = multi_sz(&["Ab", "C"]);
        assert_eq!(String::from_utf16_lossy(&w), "Ab\0C\0\0");
        assert_eq!(multi_sz(&[]), vec![0]);
        assert!(REQUIRED_PRIVILEGES.contains(&"SeDebugPrivilege"));
        assert!(
            !REQUIRED_PRIVILEGES
                .iter()
                .any(|p| p.contains("Tcb") || p.contains("LoadDriver"))
        );
    }

    #[test]
    fn program_files_is_safe_in_every_role() {
        for role in [Role::File, Role::Folder, Role::Ancestor] {
            assert_eq!(
                untrusted_writers(Some(SID_ADMINISTRATORS), Some(&program_files_child()), role),
                Vec::<String>::new(),
                "{role:?}"
            );
        }
    }

    #[test]
    fn a_folder_made_under_the_system_drive_root_is_refused() {
        // C:\x inherits C:\'s `Authenticated Users:(OI)(CI)(IO)(M)` as (OI)(CI)(M).
        let mut dacl = program_files_child();
        dacl.push(ace(0, 0x13, MODIFY, AUTH_USERS));
        assert_eq!(
            untrusted_writers(Some(SID_ADMINISTRATORS), Some(&dacl), Role::Folder),
            vec![AUTH_USERS.to_owned()]
        );
    }

    /// Review 21b, M2: a package unpacked under `C:\Tools` (inheriting `C:\`'s
    /// `Authenticated Users:(OI)(CI)(IO)(M)`) is refused as a source; Program Files is not.
    #[test]
    fn install_refuses_sources_others_can_change() {
        let pf = Path::new("/pf");
        let p = plan(Path::new("/tools/pkg/hivetrack.exe"), pf);
        assert_eq!(
            source_checks(&p.copies),
            vec![
                (PathBuf::from("/tools/pkg/hivetrack.exe"), Role::File),
                (PathBuf::from("/tools/pkg"), Role::Folder),
                (PathBuf::from("/tools"), Role::Ancestor),
                (PathBuf::from("/"), Role::Ancestor),
                (PathBuf::from("/tools/pkg/hivetrack-events.dll"), Role::File),
            ]
        );
        // C:\Tools\pkg inherits C:\'s `Authenticated Users:(OI)(CI)(IO)(M)` as (OI)(CI)(M).
        let mut dacl = program_files_child();
        dacl.push(ace(0, 0x13, MODIFY, AUTH_USERS));
        let writers = untrusted_writers(Some(SID_ADMINISTRATORS), Some(&dacl), Role::Folder);
        let refusal = unsafe_source_message(Path::new("/tools/pkg"), Role::Folder, &writers)
            .expect("refused");
        assert!(
            refusal.contains(AUTH_USERS) && refusal.contains("/tools/pkg"),
            "{refusal}"
        );
        let safe = program_files_child();
        let writers = untrusted_writers(Some(SID_ADMINISTRATORS), Some(&safe), Role::Folder);
        assert_eq!(
            unsafe_source_message(Path::new("/pf"), Role::Folder, &writers),
            None
        );
        // Run from the installed copy: nothing is copied, nothing to check.
        let again = plan(Path::new("/pf/hivetrack/hivetrack.exe"), pf);
        assert!(source_checks(&again.copies).is_empty());
    }

    /// Review 21b, L2: the deletions `service uninstall` scheduled are found, another
    /// folder's and a same-prefix sibling's are not.
    #[test]
    fn pending_removals_of_the_install_folder_are_found() {
        let value: Vec<u16> = [
            r"\??\C:\Program Files\hivetrack\hivetrack.exe",
            "",
            r"\??\C:\Windows\Temp\a.tmp",
            r"\??\C:\Windows\Temp\b.tmp",
            r"\??\C:\Program Files\hivetrack2\x.exe",
            "",
            r"\??\C:\PROGRAM FILES\HIVETRACK",
            "",
            "",
        ]
        .join("\0")
        .encode_utf16()
        .collect();
        assert_eq!(
            pending_removals(&value, r"C:\Program Files\hivetrack"),
            vec![
                r"C:\Program Files\hivetrack\hivetrack.exe".to_owned(),
                r"C:\PROGRAM FILES\HIVETRACK".to_owned(),
            ]
        );
        assert!(pending_removals(&[], r"C:\Program Files\hivetrack").is_empty());
    }

    #[test]
    fn the_system_drive_root_is_a_safe_ancestor_but_not_a_safe_folder() {
        // C:\ itself: Authenticated Users may create folders (AD) there, and what they
        // create is theirs to modify (inherit-only M on children).
        let root = vec![
            ace(0, 0x03, FULL, SID_SYSTEM),
            ace(0, 0x03, FULL, SID_ADMINISTRATORS),
            ace(0, 0x03, RX, USERS),
            ace(0, 0x00, FILE_APPEND_DATA, AUTH_USERS),
            ace(0, 0x0b, MODIFY, AUTH_USERS),
        ];
        assert!(untrusted_writers(Some(SID_SYSTEM), Some(&root), Role::Ancestor).is_empty());
        assert_eq!(
            untrusted_writers(Some(SID_SYSTEM), Some(&root), Role::Folder),
            vec![AUTH_USERS.to_owned()]
        );
    }

    #[test]
    fn users_who_may_only_add_files_are_refused_in_the_folder() {
        // A folder under ProgramData inherits `Users:(CI)(WD,AD,WEA,A)`.
        let mut dacl = program_files_child();
        dacl.push(ace(0, 0x12, 0x116, USERS));
        assert_eq!(
            untrusted_writers(Some(SID_ADMINISTRATORS), Some(&dacl), Role::Folder),
            vec![USERS.to_owned()]
        );
    }

    #[test]
    fn a_user_owner_a_null_dacl_and_unknown_aces_count_as_writers() {
        assert_eq!(
            untrusted_writers(Some(BOB), Some(&program_files_child()), Role::File),
            vec![format!("{BOB} (owner)")]
        );
        assert_eq!(
            untrusted_writers(Some(SID_SYSTEM), None, Role::Ancestor),
            vec!["Everyone (NULL DACL)".to_owned()]
        );
        let odd = vec![ace(5, 0, RX, BOB)];
        assert_eq!(
            untrusted_writers(Some(SID_SYSTEM), Some(&odd), Role::File),
            vec![format!("{BOB} (ACE type 5)")]
        );
    }

    #[test]
    fn deny_aces_are_not_subtracted_and_inherit_only_aces_reach_only_new_files() {
        let dacl = vec![
            ace(1, 0, FULL, BOB),
            ace(0, 0, MODIFY, BOB),
            // Files created in the folder: Users may write them.
            ace(0, INHERIT_ONLY_ACE | OBJECT_INHERIT_ACE, MODIFY, USERS),
            // Only subfolders: not the jsonl file.
            ace(0, INHERIT_ONLY_ACE | 0x2, MODIFY, AUTH_USERS),
        ];
        assert_eq!(
            untrusted_writers(Some(SID_SYSTEM), Some(&dacl), Role::Folder),
            vec![BOB.to_owned(), USERS.to_owned()]
        );
        assert_eq!(
            untrusted_writers(Some(SID_SYSTEM), Some(&dacl), Role::File),
            vec![BOB.to_owned()]
        );
    }

    #[test]
    fn an_ancestor_matters_only_for_replacing_what_it_holds() {
        let create_only = vec![ace(0, 0, FILE_WRITE_DATA | FILE_APPEND_DATA, BOB)];
        assert!(untrusted_writers(Some(SID_SYSTEM), Some(&create_only), Role::Ancestor).is_empty());
        for mask in [
            FILE_DELETE_CHILD,
            DELETE,
            WRITE_DAC,
            WRITE_OWNER,
            GENERIC_ALL,
        ] {
            let dacl = vec![ace(0, 0, mask, BOB)];
            assert_eq!(
                untrusted_writers(Some(SID_SYSTEM), Some(&dacl), Role::Ancestor),
                vec![BOB.to_owned()],
                "{mask:#x}"
            );
        }
        // OWNER RIGHTS follows the owner.
        let owner_rights = vec![ace(0, 0, FULL, SID_OWNER_RIGHTS)];
        assert!(untrusted_writers(Some(SID_SYSTEM), Some(&owner_rights), Role::File).is_empty());
        assert_eq!(
            untrusted_writers(Some(BOB), Some(&owner_rights), Role::File),
            vec![format!("{BOB} (owner)"), SID_OWNER_RIGHTS.to_owned()]
        );
    }

    #[test]
    fn install_copies_into_program_files_unless_already_running_from_there() {
        let pf = Path::new("/pf");
        let p = plan(Path::new("/home/admin/pkg/hivetrack.exe"), pf);
        assert_eq!(p.dir, Path::new("/pf/hivetrack"));
        assert_eq!(p.exe, Path::new("/pf/hivetrack/hivetrack.exe"));
        assert_eq!(p.dll, Path::new("/pf/hivetrack/hivetrack-events.dll"));
        assert_eq!(
            p.copies,
            vec![
                (
                    PathBuf::from("/home/admin/pkg/hivetrack.exe"),
                    PathBuf::from("/pf/hivetrack/hivetrack.exe")
                ),
                (
                    PathBuf::from("/home/admin/pkg/hivetrack-events.dll"),
                    PathBuf::from("/pf/hivetrack/hivetrack-events.dll")
                ),
            ]
        );
        // Re-running install from the installed copy (any case) copies nothing.
        let again = plan(Path::new("/PF/HiveTrack/hivetrack.exe"), pf);
        assert!(again.copies.is_empty());
        assert_eq!(again.exe, p.exe);
    }

    #[test]
    fn the_service_jsonl_path_is_absolute_local_and_not_stdout() {
        let cwd = Path::new("/admin/cwd");
        assert_eq!(
            service_jsonl_path(Path::new("ev.jsonl"), cwd),
            Ok(PathBuf::from("/admin/cwd/ev.jsonl"))
        );
        assert_eq!(
            service_jsonl_path(Path::new("/logs/ev.jsonl"), cwd),
            Ok(PathBuf::from("/logs/ev.jsonl"))
        );
        assert_eq!(
            service_jsonl_path(Path::new("-"), cwd),
            Err(JsonlPathError::Stdout)
        );
        assert_eq!(
            service_jsonl_path(Path::new(r"\\server\share\ev.jsonl"), cwd),
            Err(JsonlPathError::Remote)
        );
    }

    #[test]
    fn the_refusal_names_the_file_the_path_that_failed_and_who_can_write_it() {
        let m = unsafe_jsonl_message(
            Path::new("/logs/ev.jsonl"),
            Path::new("/logs"),
            Role::Folder,
            &[USERS.to_owned(), format!("{BOB} (owner)")],
        );
        assert!(
            m.starts_with("refusing --jsonl /logs/ev.jsonl: its folder (/logs)"),
            "{m}"
        );
        assert!(m.contains(&format!("by {USERS}, {BOB} (owner);")), "{m}");
        assert!(m.contains("/setowner"), "{m}");
    }

    #[test]
    fn jsonl_checks_cover_the_file_its_folder_and_every_folder_above() {
        assert_eq!(
            jsonl_checks(Path::new("/a/b/ev.jsonl"), true),
            vec![
                (PathBuf::from("/a/b/ev.jsonl"), Role::File),
                (PathBuf::from("/a/b"), Role::Folder),
                (PathBuf::from("/a"), Role::Ancestor),
                (PathBuf::from("/"), Role::Ancestor),
            ]
        );
        assert_eq!(
            jsonl_checks(Path::new("/a/ev.jsonl"), false),
            vec![
                (PathBuf::from("/a"), Role::Folder),
                (PathBuf::from("/"), Role::Ancestor),
            ]
        );
    }
}
