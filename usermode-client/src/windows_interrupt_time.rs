//! The interrupt-time count (`QueryInterruptTime`), the driver's record stamps' clock.
//!
//! The driver stamps its unload and held-after records with `KeQueryInterruptTime`: Learn,
//! "Interrupt Time" — `QueryInterruptTime` retrieves the interrupt-time count, which begins
//! at zero when the system starts and which setting the system time does not move (review
//! 22d, L3).
//!
//! Found at run time (`GetProcAddress`): the routine exists from Windows 10 / Server 2016,
//! and Wine 8's Kernel32 lacks it, where a static import would keep `hivetrack.exe` from
//! loading at all. Asked of Kernel32, the DLL Learn names, then of `KernelBase`, which Learn's
//! page source also lists as exporting it (`MicrosoftDocs/sdk-api`,
//! `nf-realtimeapiset-queryinterrupttime.md`, `api_location`: `kernel32.dll`, `KernelBase.dll`,
//! …; `lhmouse/mcfgthread` `test/win10.c` finds it in `KernelBase` on Windows 10): review 24a,
//! F5, a Kernel32 without the export silently turned the stamps off. Without it in either
//! the service dates records by the system clock alone, as before protocol 7.

#[cfg(windows)]
use std::sync::OnceLock;

#[cfg(windows)]
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

/// The DLLs asked for `QueryInterruptTime`, in order.
pub const EXPORTERS: [&str; 2] = ["kernel32.dll", "kernelbase.dll"];

/// What `find` gives for the first of [`EXPORTERS`] that has it.
pub fn first_export<T>(find: impl FnMut(&'static str) -> Option<T>) -> Option<T> {
    EXPORTERS.into_iter().find_map(find)
}

/// `void QueryInterruptTime(PULONGLONG lpInterruptTime)` (realtimeapiset.h).
#[cfg(windows)]
type QueryInterruptTimeFn = unsafe extern "system" fn(*mut u64);

#[cfg(windows)]
fn routine() -> Option<QueryInterruptTimeFn> {
    static ROUTINE: OnceLock<Option<QueryInterruptTimeFn>> = OnceLock::new();
    *ROUTINE.get_or_init(|| first_export(export_of))
}

/// `QueryInterruptTime` as the loaded DLL `dll` exports it, `None` when it is not loaded or
/// does not export it.
#[cfg(windows)]
fn export_of(dll: &str) -> Option<QueryInterruptTimeFn> {
    let name: Vec<u16> = dll.encode_utf16().chain([0]).collect();
    // SAFETY: `name` is NUL-terminated; a DLL not loaded in this process gives null.
    let module = unsafe { GetModuleHandleW(name.as_ptr()) };
    if module.is_null() {
        return None;
    }
    // SAFETY: `module` is a loaded DLL's handle; the name is a NUL-terminated C string.
    let proc_ = unsafe { GetProcAddress(module, c"QueryInterruptTime".as_ptr().cast()) }?;
    // SAFETY: the exported QueryInterruptTime has exactly this signature (Learn,
    // realtimeapiset.h); both are `extern "system"` function pointers of the same size.
    Some(unsafe {
        std::mem::transmute::<unsafe extern "system" fn() -> isize, QueryInterruptTimeFn>(proc_)
    })
}

/// The interrupt-time count now (100 ns units since boot), `None` without the routine.
#[cfg(windows)]
#[must_use]
pub fn now() -> Option<u64> {
    let query = routine()?;
    let mut t = 0u64;
    // SAFETY: a documented call with a valid out pointer.
    unsafe { query(&raw mut t) };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 24a, F5: a routine that only `KernelBase` exports is found (the old lookup asked
    /// Kernel32 alone: `None`); Kernel32's, the one Learn names, is taken first.
    #[test]
    fn the_routine_is_asked_of_kernel32_then_kernelbase() {
        assert_eq!(
            first_export(|d| (d == "kernelbase.dll").then_some(d)),
            Some("kernelbase.dll")
        );
        assert_eq!(first_export(Some), Some("kernel32.dll"));
        assert_eq!(first_export(|_| None::<()>), None);
    }
}
