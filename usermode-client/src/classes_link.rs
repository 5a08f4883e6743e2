//! A `<X>_Classes` hive that the loaded user hive's `Software\Classes` link may hold unseen.
//!
//! `\REGISTRY\USER\<SID>\Software\Classes` is a registry symbolic link to
//! `\REGISTRY\USER\<SID>_Classes`. Per the Windows Research Kernel (Windows Server 2003), once
//! an open follows the link, the link's key control block references the target's
//! (`base/ntos/config/cmparse.c` `CmpGetSymbolicLink`: "Need to dereference the realkcb when
//! the symbolic kcb is removed"); only the link block's cleanup drops it (`cmsubs.c`
//! `CmpCleanUpKcbValueCache`). A link block with no handle waits in the delayed-close table
//! until a search for open keys of its own hive purges that hive's unreferenced blocks
//! (`cmsubs.c` `CmpSearchForOpenSubKeys` → `CmpCleanUpKCBCacheTable`): the user hive's
//! unload, an unload attempt of it (a failed one too, `cmapi.c` `CmUnloadKey`), or
//! `NtQueryOpenSubKeysEx` of it (`ntapi.c`). Until then `NtUnloadKey` of the `_Classes` hive
//! can fail with `STATUS_CANNOT_DELETE` while no key of it is open, and neither the driver nor
//! the kernel's own list (`NtQueryOpenSubKeysEx`) sees anything (audit 23a, F1; review 23c,
//! M1). Not verified on Windows 10/11. `loaded`'s own query may end the hold, and any open
//! through the link re-creates it: the caveat stays on while the user hive is loaded, a choice
//! on the safe side. The driver cannot see the kernel's link cache, so a
//! report about such a hive with no key open is never "free" while the user hive is loaded
//! (or whether it is cannot be asked): it says so, and how to get out of it.

use crate::hive_name;
use crate::model::{HoldersReport, HoldersVerdict, Source, UnloadAttempt, WaitReport};
use crate::transport::{ERROR_FILE_NOT_FOUND, Transport, TransportError};

/// `STATUS_CANNOT_DELETE` as an unload record's status text.
const STATUS_CANNOT_DELETE: &str = "0xC0000121";

/// The NT path of the user hive whose `Software\Classes` link targets the hive mounted at
/// `mount` (`\REGISTRY\USER\<X>` for `\REGISTRY\USER\<X>_Classes`, any case); `None` for
/// any other hive.
#[must_use]
pub fn user_hive_of(mount: &str) -> Option<String> {
    const ROOT: &str = r"\REGISTRY\USER\";
    const SUFFIX: &str = "_Classes";
    let head = mount.get(..ROOT.len())?;
    let name = mount.get(ROOT.len()..)?;
    if !head.eq_ignore_ascii_case(ROOT) || name.contains('\\') || name.len() <= SUFFIX.len() {
        return None;
    }
    let (user, suffix) = name.split_at(name.len() - SUFFIX.len());
    suffix
        .eq_ignore_ascii_case(SUFFIX)
        .then(|| format!("{}{user}", &mount[..ROOT.len()]))
}

/// The caveat for a `_Classes` hive while its user hive (short name `user`) is loaded.
#[must_use]
pub fn caveat(user: &str) -> String {
    format!(
        "Windows may still refuse to unload it while {user} is loaded: the user hive's \
         Software\\Classes link can hold it (WRK cmparse.c; not verified on Windows 10/11). \
         Unload {user} first"
    )
}

/// Whether the hive at NT path `user` is loaded, as the kernel says: `Some(false)` when
/// `NtQueryOpenSubKeysEx` finds no hive there, `Some(true)` when it lists its keys, `None`
/// when it cannot be asked.
fn loaded(transport: &mut dyn Transport, user: &str) -> Option<bool> {
    match transport.kernel_open_keys(user)? {
        Ok(_) => Some(true),
        Err(TransportError::Request {
            code: ERROR_FILE_NOT_FOUND,
        }) => Some(false),
        Err(_) => None,
    }
}

/// Marks `source` not complete when the hive at `mount` is a `_Classes` hive whose user hive
/// is loaded, or whether it is could not be told.
///
/// For a report that saw no key open in the hive mounted at `mount`: if it is a `_Classes`
/// hive and its user hive is loaded (or that cannot be told), the answer cannot prove the
/// hive free. Marks the source incomplete with [`caveat`] (so `free`, `--strict` and
/// `--fail-if-held` do not pass on it), and sets `source.classes_link_user_hive` only when
/// the user hive is known to be loaded (`wait` then looks again until it unloads).
pub fn check(transport: &mut dyn Transport, mount: &str, source: &mut Source) {
    let Some(user) = user_hive_of(mount) else {
        return;
    };
    let shown = hive_name::display(&user);
    match loaded(transport, &user) {
        Some(false) => {}
        Some(true) => {
            source.cannot_see(format!("the kernel's link cache: {}", caveat(&shown)));
            source.classes_link_user_hive = Some(shown);
        }
        // Not "still loaded", which is not known, and no waiting for an answer that cannot
        // come (review 23c, L1).
        None => source.cannot_see(format!(
            "the kernel's link cache: could not tell whether {shown} is loaded (it could not \
             be asked); if it is, {}",
            caveat(&shown)
        )),
    }
}

/// `wait`'s text when it ended with no key seen open in a `_Classes` hive whose user hive
/// was still loaded at the last look (`source.classes_link_user_hive`; exit 4).
#[must_use]
pub fn wait_text(r: &WaitReport) -> String {
    let user = r
        .source
        .classes_link_user_hive
        .as_deref()
        .unwrap_or("the user hive");
    format!(
        "{}: no open key seen after {:.1}s ({}), but {user} is still loaded, so it is not \
         proven free. {}, then wait again\n",
        r.hive,
        r.waited_secs,
        r.method,
        caveat(user)
    )
}

/// A holders report's verdict after [`check`], which runs only when the report saw no key
/// open in its hive.
pub fn verdict(transport: &mut dyn Transport, report: &mut HoldersReport) -> HoldersVerdict {
    if report.hive.open_keys == 0 && report.hive.holders == 0 {
        check(transport, &report.hive.path, &mut report.source);
    }
    HoldersVerdict::of(report)
}

/// The likely cause of failed unload attempt `a` of a `_Classes` hive that named no holder.
///
/// The user hive's cached `Software\Classes` link. Only for `STATUS_CANNOT_DELETE` (the
/// link's reference fails WRK `cmapi.c` `CmUnloadKey`'s `RefCount == 1`; a filter's veto or
/// `STATUS_TOO_LATE` is not the link), and not when the latest record of the user hive
/// before `a` in `history` is its successful unload (its purge dropped the link's reference:
/// `cmsubs.c` `CmpCleanUpKCBCacheTable`). Review 23c, M2.
#[must_use]
pub fn failed_unload_hint(a: &UnloadAttempt, history: &[UnloadAttempt]) -> Option<String> {
    if a.succeeded || a.held_after || a.holders_total != 0 || a.status != STATUS_CANNOT_DELETE {
        return None;
    }
    let user_path = user_hive_of(&a.path)?;
    let user_unloaded_before = history
        .iter()
        .filter(|b| {
            !b.held_after && b.sequence < a.sequence && b.path.eq_ignore_ascii_case(&user_path)
        })
        .max_by_key(|b| b.sequence)
        .is_some_and(|b| b.succeeded);
    if user_unloaded_before {
        return None;
    }
    let user = hive_name::display(&user_path);
    Some(format!(
        "likely cause: {user}'s Software\\Classes link, cached by the kernel since an open \
         followed it, holds the hive while {user} is loaded; no list shows it (WRK cmparse.c; \
         not verified on Windows 10/11). Unload {user} first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_classes_hive_right_under_user_has_a_user_hive() {
        assert_eq!(
            user_hive_of(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001_Classes").as_deref(),
            Some(r"\REGISTRY\USER\S-1-5-21-1-2-3-1001")
        );
        assert_eq!(
            user_hive_of(r"\registry\user\.DEFAULT_classes").as_deref(),
            Some(r"\registry\user\.DEFAULT")
        );
        for other in [
            r"\REGISTRY\USER\S-1-5-21-1-2-3-1001",
            r"\REGISTRY\USER\_Classes",
            r"\REGISTRY\USER\S-1-5-21-1001_Classes\CLSID",
            r"\REGISTRY\MACHINE\SOFTWARE_Classes",
            r"\REGISTRY\A\{x}_Classes",
        ] {
            assert_eq!(user_hive_of(other), None, "{other}");
        }
    }
}
