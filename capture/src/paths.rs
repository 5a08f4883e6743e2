//! Procmon's key-path abbreviations, undone: the kernel names (`\REGISTRY\...`) the tracker
//! resolves hives from.
//!
//! Procmon shows `\REGISTRY\MACHINE` as `HKLM`, `\REGISTRY\USER` as `HKU`, the machine
//! classes `\REGISTRY\MACHINE\SOFTWARE\Classes` as `HKCR`, the current user's hive
//! `\REGISTRY\USER\<SID>` as `HKCU` and that user's classes hive `\REGISTRY\USER\<SID>_Classes`
//! as `HKCU\Software\Classes`.
//!
//! Whose hive `HKCU` is: *not* the row's process's user's. Real captures (procmon-parser's
//! public test resources, MIT; audit 21d, H1) show processes running as `NT AUTHORITY\SYSTEM`
//! (SearchIndexer.exe in `CompressedLogfileTests64bitUTC`, rows 49727-49732; svchost.exe in
//! our fixture `Registry64`, rows 16637-16642) reading `HKCU\Volatile Environment` with
//! `USERNAME = test`, `USERPROFILE = C:\Users\test`: the interactive user's hive, not
//! SYSTEM's; the same processes name their own hive unabbreviated (`HKU\S-1-5-18`, which on
//! Windows 10 reparses to `HKU\.DEFAULT`: rows 18040-18043; a LOCAL SERVICE svchost's
//! `RegQueryKey HKU\S-1-5-19`, Registry64 row 1). Every observation fits "Procmon shows the
//! hive of the account that ran it as `HKCU`", whichever process's row it is; a thread
//! impersonating a user could also be that user's. So a service's `HKCU` row is never placed
//! in its own well-known hive: `--hkcu-sid SID` names the account that ran Procmon, for
//! every process's rows ([`HkcuSids`]); `--hkcu-sid USER=SID` places one user's rows (a
//! guess the caller makes); without either, rows go to a hive named as not known, one per
//! user ([`UNKNOWN_USER`] when not even the user is known), which an unload of any user hive
//! lists as possible holders.

use std::borrow::Cow;

/// The mount `HKCU` stands for when neither the SID nor the user is known.
pub const UNKNOWN_USER: &str = r"\REGISTRY\USER\<HKCU: SID not given>";

/// The well-known SID of a service account, by the name Procmon shows for it.
///
/// For saying what a service's `HKCU` row is *not* (its own hive, which Procmon shows
/// unabbreviated); never to place one (see the module's comment).
///
/// Microsoft Learn, `WELL_KNOWN_SID_TYPE` and "Well-known SIDs": the local system account is
/// S-1-5-18 (`SECURITY_LOCAL_SYSTEM_RID`), the local service account S-1-5-19, the network
/// service account S-1-5-20; the pages on the local and network service accounts: each
/// "has its own subkey under the `HKEY_USERS` registry key", with which its
/// `HKEY_CURRENT_USER` is associated. English account names only (the security subsystem
/// localizes them; a localized capture falls back to `--hkcu-sid USER=SID`).
#[must_use]
pub fn service_account_sid(user: &str) -> Option<&'static str> {
    match user.to_ascii_uppercase().as_str() {
        r"NT AUTHORITY\SYSTEM" => Some("S-1-5-18"),
        r"NT AUTHORITY\LOCAL SERVICE" | r"NT AUTHORITY\LOCALSERVICE" => Some("S-1-5-19"),
        r"NT AUTHORITY\NETWORK SERVICE" | r"NT AUTHORITY\NETWORKSERVICE" => Some("S-1-5-20"),
        _ => None,
    }
}

/// The SIDs the caller says `HKCU` stands for (`--hkcu-sid`, repeatable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HkcuSids {
    /// `--hkcu-sid SID`: the account that ran Procmon, whose hive Procmon shows as `HKCU`:
    /// for every user not named below, service accounts included (and for rows whose user the
    /// capture does not give).
    pub default: Option<String>,
    /// `--hkcu-sid USER=SID`: per user, as Procmon shows it (`DOMAIN\name`, any case).
    pub by_user: Vec<(String, String)>,
}

/// Where the SID a row's `HKCU` was taken as came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HkcuFrom {
    /// `--hkcu-sid USER=SID` for this user.
    Named,
    /// The bare `--hkcu-sid SID`.
    Default,
    /// Not known: a placeholder hive of its own.
    Unknown,
}

impl HkcuSids {
    /// Adds one `--hkcu-sid` value: `SID` or `USER=SID`.
    ///
    /// # Errors
    /// A message when the SID does not look like one (`S-1-…`) or a bare SID is given twice.
    pub fn add(&mut self, arg: &str) -> Result<(), String> {
        let (user, sid) = match arg.rsplit_once('=') {
            Some((u, s)) => (Some(u.trim()), s.trim()),
            None => (None, arg.trim()),
        };
        // `get`, not slicing: the argument is any text (`ab€x` once panicked; audit 21d, H3).
        let valid = sid.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("S-1-"))
            && sid.get(4..).is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .split('-')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
        if !valid {
            return Err(format!(
                "--hkcu-sid {arg}: expected a SID such as S-1-5-21-1004336348-1177238915-682003330-1001, or USER=SID"
            ));
        }
        match user {
            Some(u) if !u.is_empty() => self.by_user.push((u.to_owned(), sid.to_owned())),
            Some(_) => return Err(format!("--hkcu-sid {arg}: the user before '=' is empty")),
            None if self.default.is_some() => {
                return Err(format!(
                    "--hkcu-sid {arg}: a SID without a user is given twice; name the users (USER=SID)"
                ));
            }
            None => self.default = Some(sid.to_owned()),
        }
        Ok(())
    }

    /// The mount `HKCU` stands for in a row of a process of `user` (empty: not known), and
    /// where its SID came from.
    #[must_use]
    pub fn mount_for(&self, user: &str) -> (Cow<'static, str>, HkcuFrom) {
        let mount = |sid: &str| Cow::Owned(format!(r"\REGISTRY\USER\{sid}"));
        if let Some((_, sid)) = self
            .by_user
            .iter()
            .find(|(u, _)| !user.is_empty() && u.eq_ignore_ascii_case(user))
        {
            return (mount(sid), HkcuFrom::Named);
        }
        if let Some(sid) = &self.default {
            return (mount(sid), HkcuFrom::Default);
        }
        if user.is_empty() {
            (Cow::Borrowed(UNKNOWN_USER), HkcuFrom::Unknown)
        } else {
            (
                // No backslash inside: the placeholder must stay one key name, so that
                // each user keeps a hive of its own (`DOMAIN/user`).
                Cow::Owned(format!(
                    r"\REGISTRY\USER\<HKCU of {}: SID not given>",
                    user.replace('\\', "/")
                )),
                HkcuFrom::Unknown,
            )
        }
    }
}

/// `path` as the kernel names it, or `None` when it is not a registry path.
///
/// `HKLM` alone is the master root `\REGISTRY\MACHINE` (not a hive of its own; the tracker
/// files it under an implicit hive).
///
/// A trailing backslash is dropped: Procmon logs `RegOpenKey HKLM\SOFTWARE\Microsoft\CTF\`
/// and its `RegCloseKey` as `HKLM\SOFTWARE\Microsoft\CTF` (seen in procmon-parser's public
/// Windows 10 capture), and the key is the same.
#[must_use]
pub fn kernel_path(path: &str, hkcu_sid: Option<&str>) -> Option<String> {
    let mount = hkcu_sid.map_or(Cow::Borrowed(UNKNOWN_USER), |sid| {
        Cow::Owned(format!(r"\REGISTRY\USER\{sid}"))
    });
    kernel_path_as(path, &mount)
}

/// [`kernel_path`] with `HKCU` standing for the mount `hkcu` (see [`HkcuSids::mount_for`]).
#[must_use]
pub fn kernel_path_as(path: &str, hkcu: &str) -> Option<String> {
    let mut k = abbreviation_undone(path, hkcu)?;
    while k.len() > 1 && k.ends_with('\\') {
        k.pop();
    }
    Some(k)
}

fn abbreviation_undone(path: &str, hkcu: &str) -> Option<String> {
    let (root, rest) = path.find('\\').map_or((path, ""), |i| path.split_at(i));
    let user = || hkcu.to_owned();
    let mut out = match root.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => String::from(r"\REGISTRY\MACHINE"),
        "HKU" | "HKEY_USERS" => String::from(r"\REGISTRY\USER"),
        "HKCR" | "HKEY_CLASSES_ROOT" => String::from(r"\REGISTRY\MACHINE\SOFTWARE\Classes"),
        "HKCC" | "HKEY_CURRENT_CONFIG" => {
            String::from(r"\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Hardware Profiles\Current")
        }
        "HKCU" | "HKEY_CURRENT_USER" => {
            // `HKCU\Software\Classes[\...]` is the user's classes hive.
            const CLASSES: &str = r"\Software\Classes";
            let is_classes = rest.len() >= CLASSES.len()
                && rest.is_char_boundary(CLASSES.len())
                && rest[..CLASSES.len()].eq_ignore_ascii_case(CLASSES)
                && (rest.len() == CLASSES.len() || rest.as_bytes()[CLASSES.len()] == b'\\');
            if is_classes {
                let mut s = user();
                s.push_str("_Classes");
                s.push_str(&rest[CLASSES.len()..]);
                return Some(s);
            }
            user()
        }
        // `get`, not slicing: a hostile row's path may have a character across byte 9.
        "" if rest
            .get(..9)
            .is_some_and(|r| r.eq_ignore_ascii_case(r"\REGISTRY")) =>
        {
            return Some(path.to_owned());
        }
        _ => return None,
    };
    out.push_str(rest);
    Some(out)
}

/// The hive `path` (a kernel path) falls in, given the mounts loaded during the capture.
///
/// The longest of `mounts` that is a prefix at a component boundary, else the implicit hive
/// of its first three components, as the tracker resolves it (tracker/src/hives.rs).
#[must_use]
pub fn hive_of<'a>(path: &'a str, mounts: &'a [String]) -> &'a str {
    let mut best: Option<&str> = None;
    for m in mounts {
        if is_under(m, path) && best.is_none_or(|b| m.len() > b.len()) {
            best = Some(m);
        }
    }
    if let Some(b) = best {
        return b;
    }
    // `\REGISTRY\<root>\<first component>`: the fourth backslash ends it.
    path.match_indices('\\')
        .nth(3)
        .map_or(path, |(i, _)| &path[..i])
}

/// One character as the kernel folds it for key names.
///
/// The kernel's upcase table is one-to-one (WRK
/// `base/ntos/config/cmname.c` `CmpCompareUnicodeString`/`CmpCompareCompressedName`,
/// `CmUpcaseUnicodeChar` per character, `cmp.h`), not only in ASCII (audit 21d, L3). A
/// character whose uppercase is several characters (`ß`) stays as it is, as in a one-to-one
/// table.
#[must_use]
pub fn fold_char(c: char) -> char {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// A key path folded character by character ([`fold_char`]): the form pairing and hive
/// membership compare.
#[must_use]
pub fn fold(path: &str) -> String {
    path.chars().map(fold_char).collect()
}

/// `a` and `b` name the same key ([`fold_char`] per character).
#[must_use]
pub fn same_path(a: &str, b: &str) -> bool {
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

/// `mount` is `path` or a prefix of it at a component boundary.
///
/// Compared as the kernel compares key names ([`fold_char`]): until review 21b (M1) only ASCII case was folded here
/// while pairing folded beyond it, so a key opened as `HKLM\äpp\Settings` was no holder of
/// the hive mounted at `\REGISTRY\MACHINE\ÄPP`, and an unload's list vouched complete
/// without it.
#[must_use]
pub fn is_under(mount: &str, path: &str) -> bool {
    let mut rest = path.chars();
    for m in mount.chars() {
        match rest.next() {
            Some(c) if fold_char(c) == fold_char(m) => {}
            _ => return false,
        }
    }
    matches!(rest.next(), None | Some('\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "S-1-5-21-1-2-3-1001";

    #[test]
    fn abbreviations_are_undone() {
        let k = |p| kernel_path(p, Some(SID));
        assert_eq!(k("HKLM").as_deref(), Some(r"\REGISTRY\MACHINE"));
        assert_eq!(
            k(r"HKLM\SOFTWARE\Contoso").as_deref(),
            Some(r"\REGISTRY\MACHINE\SOFTWARE\Contoso")
        );
        assert_eq!(
            k(r"HKU\S-1-5-19\Software").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-19\Software")
        );
        assert_eq!(
            k(r"HKCU\Environment").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001\Environment")
        );
        assert_eq!(
            k("HKCU").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001")
        );
        assert_eq!(
            k(r"HKCU\Software\Classes\CLSID").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001_Classes\CLSID")
        );
        assert_eq!(
            k(r"HKCU\SOFTWARE\CLASSES").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001_Classes")
        );
        // A sibling whose name merely starts like Classes stays in the user hive.
        assert_eq!(
            k(r"HKCU\Software\ClassesX").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001\Software\ClassesX")
        );
        assert_eq!(
            k(r"HKCR\.txt").as_deref(),
            Some(r"\REGISTRY\MACHINE\SOFTWARE\Classes\.txt")
        );
        assert_eq!(
            k(r"\REGISTRY\A\{x}\Key").as_deref(),
            Some(r"\REGISTRY\A\{x}\Key")
        );
        assert_eq!(k(r"C:\Windows\notepad.exe"), None);
        assert_eq!(
            k(r"HKLM\SOFTWARE\Microsoft\CTF\").as_deref(),
            Some(r"\REGISTRY\MACHINE\SOFTWARE\Microsoft\CTF")
        );
        assert_eq!(
            kernel_path(r"HKCU\X", None).as_deref(),
            Some(r"\REGISTRY\USER\<HKCU: SID not given>\X")
        );
    }

    #[test]
    fn hives_resolve_like_the_tracker() {
        let mounts = vec![String::from(r"\REGISTRY\USER\S-1-5-21-9")];
        assert_eq!(
            hive_of(r"\REGISTRY\USER\S-1-5-21-9\Software\X", &mounts),
            r"\REGISTRY\USER\S-1-5-21-9"
        );
        assert_eq!(
            hive_of(r"\REGISTRY\USER\S-1-5-21-9_Classes\CLSID", &mounts),
            r"\REGISTRY\USER\S-1-5-21-9_Classes"
        );
        assert_eq!(
            hive_of(r"\REGISTRY\MACHINE\SOFTWARE\Classes\.txt", &[]),
            r"\REGISTRY\MACHINE\SOFTWARE"
        );
        assert_eq!(hive_of(r"\REGISTRY\MACHINE", &[]), r"\REGISTRY\MACHINE");
    }
}
