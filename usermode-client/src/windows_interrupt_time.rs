//! The interrupt-time count (`QueryInterruptTime`), the driver's record stamps' clock.
//!
//! The driver stamps its unload and held-after records with `KeQueryInterruptTime`: Learn,
//! "Interrupt Time" — `QueryInterruptTime` retrieves the interrupt-time count, which begins
//! at zero when the system starts and which setting the system time does not move (review
//! 22d, L3).
//!
//! Found at run time (`GetProcAddress` on Kernel32, the DLL Learn names): the routine exists
//! from Windows 10 / Server 2016, and Wine 8's Kernel32 lacks it, where a static import would
//! keep `hivetrack.exe` from loading at all. Without it the service dates records by the
//! system clock alone, as before protocol 7.

use std::sync::OnceLock;

use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

/// `void QueryInterruptTime(PULONGLONG lpInterruptTime)` (realtimeapiset.h).
type QueryInterruptTimeFn = unsafe extern "system" fn(*mut u64);

fn routine() -> Option<QueryInterruptTimeFn> {
    static ROUTINE: OnceLock<Option<QueryInterruptTimeFn>> = OnceLock::new();
    *ROUTINE.get_or_init(|| {
        let name: Vec<u16> = "kernel32.dll".encode_utf16().chain([0]).collect();
        // SAFETY: `name` is NUL-terminated; Kernel32 is mapped in every Win32 process.
        let module = unsafe { GetModuleHandleW(name.as_ptr()) };
        if module.is_null() {
            return None;
        }
        // SAFETY: `module` is Kernel32's handle; the name is a NUL-terminated C string.
        let proc_ = unsafe { GetProcAddress(module, c"QueryInterruptTime".as_ptr().cast()) }?;
        // SAFETY: the exported QueryInterruptTime has exactly this signature (Learn,
        // realtimeapiset.h); both are `extern "system"` function pointers of the same size.
        Some(unsafe {
            std::mem::transmute::<unsafe extern "system" fn() -> isize, QueryInterruptTimeFn>(proc_)
        })
    })
}

/// The interrupt-time count now (100 ns units since boot), `None` without the routine.
#[must_use]
pub fn now() -> Option<u64> {
    let query = routine()?;
    let mut t = 0u64;
    // SAFETY: a documented call with a valid out pointer.
    unsafe { query(&raw mut t) };
    Some(t)
}
