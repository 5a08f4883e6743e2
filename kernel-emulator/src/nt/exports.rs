//! The emulated ntoskrnl.exe export table: every routine (and data export) the model
//! implements, by name. The loader binds imports against it; MmGetSystemRoutineAddress looks
//! names up in it. Routines can be hidden — to emulate an older Windows (or Wine) that lacks
//! them — with `--hide-routine NAME` or `KEMU_HIDE_ROUTINES=A,B`: a hidden routine is an
//! unresolved import (the image is refused) and MmGetSystemRoutineAddress returns NULL for it.

use std::ffi::c_void;
use std::sync::OnceLock;

use crate::machine::cpu::PASSIVE_LEVEL;
use crate::nt::kernel;
use crate::nt::layout::{UnicodeString, read_unicode};
use crate::verifier::bugcheck::require_irql;

/// One export: a routine's (or a data item's) address under its name.
#[derive(Clone, Copy, Debug)]
pub struct Export {
    /// Export name.
    pub name: &'static str,
    /// Address bound into the driver's IAT.
    pub address: usize,
}

impl Export {
    /// A routine export.
    #[must_use]
    pub const fn function(name: &'static str, address: usize) -> Self {
        Self { name, address }
    }
}

/// Environment variable with comma-separated routine names to hide.
pub const HIDE_ENV: &str = "KEMU_HIDE_ROUTINES";

/// The whole table (built once).
pub fn table() -> &'static [Export] {
    static TABLE: OnceLock<Vec<Export>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut v = Vec::new();
        v.extend(crate::nt::ex::pool::exports());
        v.extend(crate::nt::io::exports());
        v.extend(crate::nt::ob::object::exports());
        v.extend(crate::nt::rtl::exports());
        v.extend(crate::nt::se::security::exports());
        v.extend(crate::nt::rtl::dbgprint::exports());
        v.extend(crate::nt::cm::registry::exports());
        v.extend(crate::nt::ps::process::exports());
        v.extend(crate::nt::ps::image::exports());
        v.extend(crate::nt::ps::thread::exports());
        v.extend(crate::nt::ex::lookaside::exports());
        v.extend(crate::nt::ke::sync::exports());
        v.extend(crate::nt::ke::timer::exports());
        v.extend(crate::nt::io::cancel::exports());
        v.extend(crate::verifier::bugcheck::exports());
        v.extend(crate::nt::cm::zwreg::exports());
        v.push(Export::function(
            "MmGetSystemRoutineAddress",
            MmGetSystemRoutineAddress as *const () as usize,
        ));
        v.sort_by_key(|e| e.name);
        v
    })
}

/// Whether `name` is hidden in this run.
#[must_use]
pub fn is_hidden(name: &str) -> bool {
    kernel::with(|k| k.hidden_routines.contains(name))
}

/// Hides routines named in [`HIDE_ENV`] (in addition to any hidden already).
pub fn hide_from_env() {
    if let Ok(list) = std::env::var(HIDE_ENV) {
        hide(list.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
}

/// Hides `names` from the loader and from MmGetSystemRoutineAddress.
pub fn hide<'a>(names: impl IntoIterator<Item = &'a str>) {
    kernel::with(|k| {
        k.hidden_routines
            .extend(names.into_iter().map(str::to_string));
    });
}

/// Looks up a visible export.
#[must_use]
pub fn lookup(name: &str) -> Option<usize> {
    if is_hidden(name) {
        return None;
    }
    let t = table();
    t.binary_search_by_key(&name, |e| e.name)
        .ok()
        .map(|i| t[i].address)
}

/// The loader's import resolver: ntoskrnl.exe and hal.dll exports, minus hidden ones.
#[must_use]
pub fn resolve(dll: &str, name: &str) -> Option<usize> {
    if !matches!(dll, "ntoskrnl.exe" | "hal.dll") {
        return None;
    }
    lookup(name)
}

/// MmGetSystemRoutineAddress — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-mmgetsystemroutineaddress>:
/// the address of the named ntoskrnl/HAL export, or NULL; PASSIVE_LEVEL. Every query is
/// recorded so scenarios can hide exactly the optional routines a driver asks for.
///
/// WRK `base/ntos/mm/sysload.c` MmGetSystemRoutineAddress (lines 8276-8398): the name is
/// converted to ANSI (8327), only the loaded-module entries named ntoskrnl.exe and hal.dll
/// are searched (8360-8374, `EntriesChecked == 2` ends the walk at 8385), by exact export
/// name (`MiFindExportedRoutineByName`, 8378), and NULL comes back when neither exports it
/// (8398). Data exports resolve the same way (`PsInitialSystemProcess`). Not modelled:
/// Driver Verifier's thunks for a routine resolved so.
unsafe extern "win64" fn MmGetSystemRoutineAddress(name: *const UnicodeString) -> *mut c_void {
    require_irql("MmGetSystemRoutineAddress", PASSIVE_LEVEL);
    // SAFETY: the driver passes a UNICODE_STRING (validated by read_unicode).
    let Some(name) = (unsafe { read_unicode(name) }) else {
        crate::verifier::bugcheck::verifier_violation(
            "MmGetSystemRoutineAddress: invalid UNICODE_STRING",
        );
    };
    kernel::with(|k| k.routine_queries.push(name.clone()));
    lookup(&name).map_or(std::ptr::null_mut(), |a| a as *mut c_void)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nt::layout::OwnedUnicode;

    #[test]
    fn table_is_sorted_and_unique() {
        let t = table();
        assert!(
            t.windows(2).all(|w| w[0].name < w[1].name),
            "duplicate or unsorted export"
        );
        assert!(resolve("ntoskrnl.exe", "IoCreateDevice").is_some());
        assert!(resolve("ntoskrnl.exe", "NoSuchRoutine").is_none());
        assert!(resolve("foo.sys", "IoCreateDevice").is_none());
    }

    #[test]
    fn hidden_routines_disappear_from_both_lookups() {
        // Runs in the test process's shared kernel: use a name no other test relies on.
        let name = OwnedUnicode::new("ExFreePoolWithTag");
        // SAFETY: a valid UNICODE_STRING; PASSIVE_LEVEL on a test thread.
        assert!(!unsafe { MmGetSystemRoutineAddress(name.as_ptr()) }.is_null());
        hide(["ExFreePoolWithTag"]);
        // SAFETY: as above.
        assert!(unsafe { MmGetSystemRoutineAddress(name.as_ptr()) }.is_null());
        assert!(resolve("ntoskrnl.exe", "ExFreePoolWithTag").is_none());
        kernel::with(|k| k.hidden_routines.clear());
        assert!(kernel::with(|k| k
            .routine_queries
            .iter()
            .any(|q| q == "ExFreePoolWithTag")));
    }
}
