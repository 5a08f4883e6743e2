//! The OS registry plumbing: the system DLLs every registry call passes through.
//!
//! A stack is attributed to the code that asked for a key by skipping them, in the
//! capture's replay and in the live `hivetrack modules` alike.

/// The OS registry plumbing, by file name (compared case-insensitively).
///
/// The native API
/// (`ntdll.dll`), the Win32 registry API and its forwarders (`kernelbase.dll`,
/// `kernel32.dll`, `advapi32.dll`, `sechost.dll`), the shell's registry helpers
/// (`shlwapi.dll`, `shcore.dll`: `SHGetValue`, `SHRegGetValue`), and the WOW64 layer a
/// 32-bit process's calls pass through (`wow64.dll`, `wow64win.dll`, `wow64cpu.dll`).
/// COM (`combase.dll`) is not: its registry lookups are its own decisions.
pub const PLUMBING: &[&str] = &[
    "ntdll.dll",
    "kernelbase.dll",
    "kernel32.dll",
    "advapi32.dll",
    "sechost.dll",
    "shlwapi.dll",
    "shcore.dll",
    "wow64.dll",
    "wow64win.dll",
    "wow64cpu.dll",
];

/// True when the image at `path` (a full path or a file name, `\`-separated) is OS
/// registry plumbing.
#[must_use]
pub fn is_plumbing(path: &str) -> bool {
    let name = path.rsplit('\\').next().unwrap_or(path);
    PLUMBING.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// What a stack in no known module is attributed to: code all the same (JIT code, an image
/// whose load was not recorded), not a reason to skip to the caller's caller.
pub const NO_MODULE: &str = "(no module)";
