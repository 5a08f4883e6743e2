//! Procmon's key-path abbreviations, undone: the kernel names (`\REGISTRY\...`) the tracker
//! resolves hives from.
//!
//! Procmon shows `\REGISTRY\MACHINE` as `HKLM`, `\REGISTRY\USER` as `HKU`, the machine
//! classes `\REGISTRY\MACHINE\SOFTWARE\Classes` as `HKCR`, the current user's hive
//! `\REGISTRY\USER\<SID>` as `HKCU` and that user's classes hive `\REGISTRY\USER\<SID>_Classes`
//! as `HKCU\Software\Classes`. The capture does not say which SID `HKCU` stands for: the
//! caller passes it (`--hkcu-sid`), and without it `HKCU` paths go to a hive named
//! [`UNKNOWN_USER`], which the report names as such.

/// The mount `HKCU` stands for when the caller did not give the SID.
pub const UNKNOWN_USER: &str = r"\REGISTRY\USER\<HKCU: SID not given>";

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
    let mut k = abbreviation_undone(path, hkcu_sid)?;
    while k.len() > 1 && k.ends_with('\\') {
        k.pop();
    }
    Some(k)
}

fn abbreviation_undone(path: &str, hkcu_sid: Option<&str>) -> Option<String> {
    let (root, rest) = path.find('\\').map_or((path, ""), |i| path.split_at(i));
    let user = || {
        hkcu_sid.map_or_else(
            || UNKNOWN_USER.to_owned(),
            |sid| format!(r"\REGISTRY\USER\{sid}"),
        )
    };
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
        "" if rest.len() >= 9 && rest[..9].eq_ignore_ascii_case(r"\REGISTRY") => {
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

/// `mount` is `path` or a prefix of it at a component boundary (case-insensitive).
#[must_use]
pub fn is_under(mount: &str, path: &str) -> bool {
    path.len() >= mount.len()
        && path.is_char_boundary(mount.len())
        && path[..mount.len()].eq_ignore_ascii_case(mount)
        && (path.len() == mount.len() || path.as_bytes()[mount.len()] == b'\\')
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
