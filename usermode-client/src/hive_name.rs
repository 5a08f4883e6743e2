//! Hive names as people type them (`HKU\<SID>`, `HKCU`, `HKLM\SOFTWARE`, `\REGISTRY\…`) and
//! as reports show them: the NT path the driver speaks, and the short `HKU\…`/`HKLM\…` form.

use thiserror::Error;

use crate::accounts::{Accounts, SidLookup};

/// NT prefix of `HKEY_LOCAL_MACHINE`.
pub const MACHINE: &str = r"\REGISTRY\MACHINE";
/// NT prefix of `HKEY_USERS`.
pub const USER: &str = r"\REGISTRY\USER";

/// Why a hive name could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HiveNameError {
    /// Nothing was given.
    #[error("the hive name is empty: name a hive such as HKU\\<SID> or HKLM\\SOFTWARE")]
    Empty,
    /// `HKCU` was given where the current user's SID is not known.
    #[error(
        "`{given}` names the current user's hive, which only exists on Windows: name the hive by SID instead (HKU\\<SID> or HKU\\<SID>_Classes)"
    )]
    NoCurrentUser {
        /// What the user typed.
        given: String,
    },
    /// `HKCR` is a merged view, not a hive.
    #[error(
        "`{given}` is a merged view of HKLM\\SOFTWARE\\Classes and HKCU\\Software\\Classes, not a hive: name one of those"
    )]
    MergedView {
        /// What the user typed.
        given: String,
    },
    /// A root key alone (`HKLM`, `HKU`) was given.
    #[error("`{given}` is a root key, not a hive: name a hive under it, such as {example}")]
    RootOnly {
        /// What the user typed.
        given: String,
        /// A hive under that root.
        example: &'static str,
    },
    /// An account name was given on a system that cannot resolve accounts.
    #[error(
        "`{given}` looks like an account name, but accounts cannot be resolved on this system (only the Windows build looks them up): name the hive by SID instead (S-1-5-21-..., HKU\\<SID>)"
    )]
    AccountsUnsupported {
        /// What the user typed.
        given: String,
    },
    /// An account name that the system does not know.
    #[error(
        "`{given}` is neither a registry hive name nor an account this system knows: use DOMAIN\\user, user, a SID (S-1-5-21-...), HKU\\<SID>, HKCU or HKLM\\<HIVE>"
    )]
    UnknownAccount {
        /// What the user typed.
        given: String,
    },
    /// The name starts with no known root.
    #[error(
        "`{given}` is not a registry hive name: use HKU\\<SID>, HKU\\<SID>_Classes, HKCU, HKCU\\Software\\Classes, HKLM\\<HIVE> (SOFTWARE, SYSTEM, SAM, SECURITY, ...) or a \\REGISTRY\\... path"
    )]
    UnknownRoot {
        /// What the user typed.
        given: String,
    },
}

/// Splits `s` after `prefix` when it starts with it, compared case-insensitively, and the
/// prefix ends there or at a backslash. Returns the rest without its leading backslash.
fn strip_root<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &s[prefix.len()..];
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('\\')
    }
}

/// Resolves a hive name as typed into the NT path sent to the driver.
///
/// `current_user_sid` is the SID string of the user running the CLI (Windows only); it is
/// needed for `HKCU` and `HKCU\Software\Classes` (which is the `<SID>_Classes` hive).
/// Paths below a hive (`HKU\<SID>\Software`) are passed on: the driver resolves any key path
/// to the hive containing it.
///
/// # Errors
/// [`HiveNameError`] for names that are empty, not registry names, root keys alone, `HKCR`,
/// or `HKCU` without a current user.
pub fn resolve(given: &str, current_user_sid: Option<&str>) -> Result<String, HiveNameError> {
    let s = given.trim().replace('/', "\\");
    let s = s.trim_end_matches('\\');
    if s.is_empty() {
        return Err(HiveNameError::Empty);
    }
    let nt = |root: &str, rest: &str| {
        if rest.is_empty() {
            root.to_owned()
        } else {
            format!("{root}\\{rest}")
        }
    };
    for root in [r"\REGISTRY", "REGISTRY"] {
        if let Some(rest) = strip_root(s, root) {
            return Ok(nt(r"\REGISTRY", rest));
        }
    }
    for root in ["HKLM", "HKEY_LOCAL_MACHINE"] {
        if let Some(rest) = strip_root(s, root) {
            if rest.is_empty() {
                return Err(HiveNameError::RootOnly {
                    given: given.to_owned(),
                    example: r"HKLM\SOFTWARE",
                });
            }
            return Ok(nt(MACHINE, rest));
        }
    }
    for root in ["HKU", "HKEY_USERS"] {
        if let Some(rest) = strip_root(s, root) {
            if rest.is_empty() {
                return Err(HiveNameError::RootOnly {
                    given: given.to_owned(),
                    example: r"HKU\<SID>",
                });
            }
            return Ok(nt(USER, rest));
        }
    }
    for root in ["HKCU", "HKEY_CURRENT_USER"] {
        if let Some(rest) = strip_root(s, root) {
            let sid = current_user_sid.ok_or_else(|| HiveNameError::NoCurrentUser {
                given: given.to_owned(),
            })?;
            let classes = strip_root(rest, r"Software\Classes");
            return Ok(classes.map_or_else(
                || nt(&format!(r"{USER}\{sid}"), rest),
                |below| nt(&format!(r"{USER}\{sid}_Classes"), below),
            ));
        }
    }
    for root in ["HKCC", "HKEY_CURRENT_CONFIG"] {
        if let Some(rest) = strip_root(s, root) {
            return Ok(nt(
                &format!(r"{MACHINE}\SYSTEM\CurrentControlSet\Hardware Profiles\Current"),
                rest,
            ));
        }
    }
    for root in ["HKCR", "HKEY_CLASSES_ROOT"] {
        if strip_root(s, root).is_some() {
            return Err(HiveNameError::MergedView {
                given: given.to_owned(),
            });
        }
    }
    if is_sid(s) {
        return Ok(format!(r"{USER}\{}", s.to_ascii_uppercase()));
    }
    Err(HiveNameError::UnknownRoot {
        given: given.to_owned(),
    })
}

/// Whether `s` is a SID string (`S-1-5-21-…`, `S-1-5-18`), optionally with the `_Classes`
/// suffix of a user's classes hive.
fn is_sid(s: &str) -> bool {
    let s = s.strip_suffix("_Classes").unwrap_or(s);
    let Some(rest) = s.strip_prefix("S-").or_else(|| s.strip_prefix("s-")) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `s` can be an account name: `user`, `DOMAIN\user` or `user@domain` (no registry
/// root matched it). Characters Windows forbids in account names rule it out.
fn is_account_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('\\').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.contains([
                    '/', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '"',
                ])
        })
}

/// [`resolve`], plus account names.
///
/// `DOMAIN\user` and `user` name that user's hive (`\REGISTRY\USER\<SID>`), looked up through `accounts` (Windows only; elsewhere the error
/// says accounts cannot be resolved there).
///
/// # Errors
/// As [`resolve`]; for a name that can only be an account, [`HiveNameError::UnknownAccount`]
/// or [`HiveNameError::AccountsUnsupported`].
pub fn resolve_with_accounts(
    given: &str,
    accounts: &dyn Accounts,
) -> Result<String, HiveNameError> {
    let sid = accounts.current_user_sid();
    match resolve(given, sid.as_deref()) {
        Err(HiveNameError::UnknownRoot { given }) if is_account_name(given.trim()) => {
            match accounts.sid_of(given.trim()) {
                SidLookup::Sid(sid) => Ok(format!(r"{USER}\{sid}")),
                SidLookup::Unknown => Err(HiveNameError::UnknownAccount { given }),
                SidLookup::Unsupported => Err(HiveNameError::AccountsUnsupported { given }),
            }
        }
        other => other,
    }
}

/// The short display form of an NT registry path: `HKU\…` for `\REGISTRY\USER\…`,
/// `HKLM\…` for `\REGISTRY\MACHINE\…`; other paths (application hives under
/// `\REGISTRY\A`) are shown as they are.
#[must_use]
pub fn display(nt_path: &str) -> String {
    if let Some(rest) = strip_root(nt_path, USER) {
        return if rest.is_empty() {
            "HKU".to_owned()
        } else {
            format!(r"HKU\{rest}")
        };
    }
    if let Some(rest) = strip_root(nt_path, MACHINE) {
        return if rest.is_empty() {
            "HKLM".to_owned()
        } else {
            format!(r"HKLM\{rest}")
        };
    }
    nt_path.to_owned()
}

/// The user SID a path under `\REGISTRY\USER` belongs to (`S-1-5-21-…-1001` for both
/// `\REGISTRY\USER\S-1-5-21-…-1001` and its `_Classes` hive), if it names one.
#[must_use]
pub fn user_sid(nt_path: &str) -> Option<&str> {
    let rest = strip_root(nt_path, USER)?;
    let first = rest.split('\\').next()?;
    let sid = first
        .get(..first.len().saturating_sub(8))
        .filter(|_| first.len() > 8 && first[first.len() - 8..].eq_ignore_ascii_case("_Classes"))
        .unwrap_or(first);
    (sid.len() > 4 && sid[..4].eq_ignore_ascii_case("S-1-")).then_some(sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

    #[test]
    fn every_accepted_form_resolves() {
        let user = format!(r"\REGISTRY\USER\{SID}");
        let classes = format!(r"\REGISTRY\USER\{SID}_Classes");
        let cases: Vec<(String, String)> = vec![
            (format!(r"HKU\{SID}"), user.clone()),
            (format!(r"hku\{SID}"), user.clone()),
            (format!(r"HKEY_USERS\{SID}"), user.clone()),
            (format!(r"HKU\{SID}_Classes"), classes.clone()),
            (format!(r"HKU\{SID}\"), user.clone()),
            (format!("HKU/{SID}"), user.clone()),
            ("HKCU".to_owned(), user.clone()),
            ("hkey_current_user".to_owned(), user.clone()),
            (r"HKCU\Software".to_owned(), format!(r"{user}\Software")),
            (r"HKCU\Software\Classes".to_owned(), classes.clone()),
            (
                r"hkcu\software\classes\CLSID".to_owned(),
                format!(r"{classes}\CLSID"),
            ),
            (
                r"HKLM\SOFTWARE".to_owned(),
                r"\REGISTRY\MACHINE\SOFTWARE".to_owned(),
            ),
            (
                r"hklm\software".to_owned(),
                r"\REGISTRY\MACHINE\software".to_owned(),
            ),
            (
                r"HKEY_LOCAL_MACHINE\SYSTEM".to_owned(),
                r"\REGISTRY\MACHINE\SYSTEM".to_owned(),
            ),
            (r"HKLM\SAM".to_owned(), r"\REGISTRY\MACHINE\SAM".to_owned()),
            (
                r"HKLM\SECURITY".to_owned(),
                r"\REGISTRY\MACHINE\SECURITY".to_owned(),
            ),
            (
                r"HKLM\HARDWARE".to_owned(),
                r"\REGISTRY\MACHINE\HARDWARE".to_owned(),
            ),
            (
                r"HKLM\BCD00000000".to_owned(),
                r"\REGISTRY\MACHINE\BCD00000000".to_owned(),
            ),
            (
                r"HKLM\COMPONENTS".to_owned(),
                r"\REGISTRY\MACHINE\COMPONENTS".to_owned(),
            ),
            (
                r"HKU\.DEFAULT".to_owned(),
                r"\REGISTRY\USER\.DEFAULT".to_owned(),
            ),
            (
                "HKCC".to_owned(),
                r"\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Hardware Profiles\Current".to_owned(),
            ),
            (user.clone(), user.clone()),
            (
                user.to_lowercase(),
                format!(r"\REGISTRY{}", &user.to_lowercase()[9..]),
            ),
            (format!(r"REGISTRY\USER\{SID}"), user.clone()),
            (
                r"\REGISTRY\A\{6f0f4c4b-9f73-4d1a-8e3c-7c8f8b0a1d2e}".to_owned(),
                r"\REGISTRY\A\{6f0f4c4b-9f73-4d1a-8e3c-7c8f8b0a1d2e}".to_owned(),
            ),
        ];
        for (given, want) in cases {
            assert_eq!(
                resolve(&given, Some(SID)).as_deref(),
                Ok(want.as_str()),
                "{given}"
            );
        }
    }

    #[test]
    fn refusals_are_explained() {
        let e = resolve("HKCU", None).unwrap_err();
        assert!(matches!(e, HiveNameError::NoCurrentUser { .. }));
        assert!(e.to_string().contains("only exists on Windows"), "{e}");
        assert!(matches!(
            resolve(r"HKCU\Software\Classes", None),
            Err(HiveNameError::NoCurrentUser { .. })
        ));
        assert!(matches!(
            resolve("HKCR", Some(SID)),
            Err(HiveNameError::MergedView { .. })
        ));
        assert!(matches!(
            resolve("HKLM", Some(SID)),
            Err(HiveNameError::RootOnly { .. })
        ));
        assert!(matches!(
            resolve(r"HKU\", Some(SID)),
            Err(HiveNameError::RootOnly { .. })
        ));
        assert!(matches!(
            resolve("  ", Some(SID)),
            Err(HiveNameError::Empty)
        ));
        assert!(matches!(
            resolve("C:\\x", Some(SID)),
            Err(HiveNameError::UnknownRoot { .. })
        ));
        assert!(matches!(
            resolve("HKLMX", Some(SID)),
            Err(HiveNameError::UnknownRoot { .. })
        ));
    }

    #[test]
    fn display_uses_short_roots() {
        assert_eq!(
            display(&format!(r"\REGISTRY\USER\{SID}\Software")),
            format!(r"HKU\{SID}\Software")
        );
        assert_eq!(display(r"\Registry\Machine\SOFTWARE"), r"HKLM\SOFTWARE");
        assert_eq!(display(r"\REGISTRY\MACHINE"), "HKLM");
        assert_eq!(display(r"\REGISTRY\A\{x}"), r"\REGISTRY\A\{x}");
        assert_eq!(display(r"\REGISTRY\USERS"), r"\REGISTRY\USERS");
    }

    #[test]
    fn user_sid_of_profile_hives() {
        assert_eq!(user_sid(&format!(r"\REGISTRY\USER\{SID}")), Some(SID));
        assert_eq!(
            user_sid(&format!(r"\REGISTRY\USER\{SID}_Classes\CLSID")),
            Some(SID)
        );
        assert_eq!(user_sid(r"\REGISTRY\USER\.DEFAULT"), None);
        assert_eq!(user_sid(r"\REGISTRY\MACHINE\SOFTWARE"), None);
    }
}
