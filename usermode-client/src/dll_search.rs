//! Where the CLI's run-time DLL loads may come from: `System32` only (review 21b, L8).
//!
//! hivetrack.exe runs elevated (it opens the driver's device, installs the service), often
//! from the folder it was downloaded or unpacked to. For a desktop application Windows looks
//! for a DLL in the application's own folder before the system folder (Learn, "Dynamic-link
//! library search order"), so a DLL planted beside the exe would run as the administrator.
//! [`harden`], first thing in `main`, calls
//! `SetDefaultDllDirectories(LOAD_LIBRARY_SEARCH_SYSTEM32)` (Learn, "Dynamic-Link Library
//! Security"; [SetDefaultDllDirectories](https://learn.microsoft.com/en-us/windows/win32/api/libloaderapi/nf-libloaderapi-setdefaultdlldirectories):
//! "`LOAD_LIBRARY_SEARCH_SYSTEM32`: If this value is used, %windows%\system32 is searched for the
//! DLL and its dependencies"; the application directory is then not searched), so every DLL
//! loaded after it (dbghelp's `symsrv.dll`, COM in-process modules, anything `LoadLibrary`s)
//! comes from `System32` only.
//!
//! What it cannot cover: the image's static imports that are not `KnownDLLs` (`dbghelp.dll`,
//! `userenv.dll`, `bcryptprimitives.dll`) are resolved by the loader before `main` runs. The
//! MSVC linker's `/DEPENDENTLOADFLAG:0x800` would move those to `System32` too (Learn,
//! "/DEPENDENTLOADFLAG (Set default dependent load flags)", Windows 10 1607 and later), but the
//! shipped exe is linked by the GNU cross toolchain (`cargo xtask build`, x86_64-pc-windows-gnu),
//! whose `ld` (2.40) has no such option and writes no load configuration. So the README tells
//! admins to run the installed copy (`%ProgramFiles%\hivetrack`, which only administrators can
//! write) or a copy in a folder like it, never one in Downloads or on a share.

/// `LOAD_LIBRARY_SEARCH_SYSTEM32` (`libloaderapi.h`).
pub const LOAD_LIBRARY_SEARCH_SYSTEM32: u32 = 0x0000_0800;

/// Makes `System32` the only folder later DLL loads search (see the module doc). Call first
/// thing in `main`. A failure (Windows 7 without KB2533623) is not fatal: the CLI then loads
/// as before.
#[allow(
    clippy::missing_const_for_fn,
    reason = "empty off Windows; a Win32 call on Windows"
)]
pub fn harden() {
    #[cfg(windows)]
    {
        // SAFETY: a plain Win32 call with a documented flag value.
        let _ = unsafe {
            windows_sys::Win32::System::LibraryLoader::SetDefaultDllDirectories(
                LOAD_LIBRARY_SEARCH_SYSTEM32,
            )
        };
    }
}
