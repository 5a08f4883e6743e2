//! `DbgHelp` names for stack frames (Windows): `SymInitializeW` with `_NT_SYMBOL_PATH`,
//! `SymLoadModuleExW` per module at the base it had in the opening process,
//! `SymFromAddrW` per frame.
//!
//! Compiled for Windows and linted, never run here (see the README's "not verified" list).
//! `DbgHelp` is not thread-safe; the CLI calls it from one thread. One `DbgHelp` session holds
//! one address space, while frames come from many processes: a base loaded with another
//! image is unloaded first.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Storage::FileSystem::QueryDosDeviceW;
use windows_sys::Win32::System::Diagnostics::Debug::{
    SYMBOL_INFOW, SYMFLAG_EXPORT, SYMOPT_DEFERRED_LOADS, SYMOPT_UNDNAME, SymCleanup, SymFromAddrW,
    SymInitializeW, SymLoadModuleExW, SymSetOptions, SymUnloadModule64,
};

use crate::symbols::{Symbol, Symbolizer};

/// The `DbgHelp` session's "process": any unique value that is not a process handle
/// (`fInvadeProcess` is false, so `DbgHelp` reads no process memory).
const fn session() -> HANDLE {
    std::ptr::without_provenance_mut(0x4854_5359)
}

/// Longest symbol name asked for, in UTF-16 units.
const MAX_NAME: usize = 1024;

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Whether the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    NotStarted,
    Ready,
    Failed,
}

/// `DbgHelp`, started on first use.
#[derive(Debug, Default)]
pub struct DbgHelp {
    state: State,
    /// Per base, the image loaded there and whether `DbgHelp` accepted it.
    loaded: HashMap<u64, (String, bool)>,
    /// `\Device\HarddiskVolumeN` → `C:`, learned once.
    drives: Option<Vec<(String, String)>>,
}

impl DbgHelp {
    fn start(&mut self) -> bool {
        if self.state == State::NotStarted {
            let path = std::env::var_os("_NT_SYMBOL_PATH").map(|p| wide(&p));
            // SAFETY: a plain call taking flags.
            unsafe { SymSetOptions(SYMOPT_UNDNAME | SYMOPT_DEFERRED_LOADS) };
            // SAFETY: the search path is a NUL-terminated wide string, or null.
            let ok = unsafe {
                SymInitializeW(
                    session(),
                    path.as_ref().map_or(std::ptr::null(), Vec::as_ptr),
                    0,
                )
            } != 0;
            self.state = if ok { State::Ready } else { State::Failed };
        }
        self.state == State::Ready
    }

    /// The drive letters and the devices they name.
    fn drives(&mut self) -> &[(String, String)] {
        self.drives.get_or_insert_with(|| {
            let mut out = Vec::new();
            for letter in b'A'..=b'Z' {
                let drive = format!("{}:", char::from(letter));
                let name = wide(OsStr::new(&drive));
                let mut target = [0u16; 512];
                // SAFETY: `name` is NUL-terminated; `target` holds the length passed.
                let n = unsafe { QueryDosDeviceW(name.as_ptr(), target.as_mut_ptr(), 512) };
                if n > 0 {
                    let end = target.iter().position(|&u| u == 0).unwrap_or(0);
                    out.push((String::from_utf16_lossy(&target[..end]), drive));
                }
            }
            out
        })
    }

    /// A Win32 path for a kernel image path (`\Device\HarddiskVolume3\…`, `\SystemRoot\…`,
    /// `\??\C:\…`).
    fn win32_path(&mut self, nt: &str) -> String {
        if let Some(rest) = nt.strip_prefix(r"\??\") {
            return rest.to_owned();
        }
        if let Some(rest) = nt.strip_prefix(r"\SystemRoot\") {
            let root = std::env::var("SystemRoot").unwrap_or_else(|_| r"C:\Windows".to_owned());
            return format!(r"{root}\{rest}");
        }
        let lower = nt.to_ascii_lowercase();
        for (device, drive) in self.drives() {
            let d = device.to_ascii_lowercase();
            if lower.starts_with(&d) && lower[d.len()..].starts_with('\\') {
                return format!("{drive}{}", &nt[device.len()..]);
            }
        }
        nt.to_owned()
    }

    /// Loads the image at `base` (unloading another image loaded there); false when
    /// `DbgHelp` refused it.
    fn load(&mut self, module_path: &str, base: u64, size: u64) -> bool {
        if let Some((path, ok)) = self.loaded.get(&base) {
            if path == module_path {
                return *ok;
            }
            // SAFETY: a base this session loaded.
            unsafe { SymUnloadModule64(session(), base) };
        }
        let image = wide(OsStr::new(&self.win32_path(module_path)));
        // SAFETY: `image` is NUL-terminated; no file handle, no module name, no data.
        let loaded = unsafe {
            SymLoadModuleExW(
                session(),
                std::ptr::null_mut(),
                image.as_ptr(),
                std::ptr::null(),
                base,
                u32::try_from(size).unwrap_or(u32::MAX),
                std::ptr::null(),
                0,
            )
        } != 0;
        self.loaded.insert(base, (module_path.to_owned(), loaded));
        loaded
    }
}

impl Drop for DbgHelp {
    fn drop(&mut self) {
        if self.state == State::Ready {
            // SAFETY: the session this value started.
            unsafe { SymCleanup(session()) };
        }
    }
}

impl Symbolizer for DbgHelp {
    fn symbolize(
        &mut self,
        module_path: &str,
        base: u64,
        size: u64,
        address: u64,
    ) -> Option<Symbol> {
        if !self.start() || !self.load(module_path, base, size) {
            return None;
        }
        // SYMBOL_INFOW followed by room for the name, 8-byte aligned.
        let words = (std::mem::size_of::<SYMBOL_INFOW>() + 2 * MAX_NAME).div_ceil(8);
        let mut buf = vec![0u64; words];
        let info = buf.as_mut_ptr().cast::<SYMBOL_INFOW>();
        let mut displacement = 0u64;
        let header = SYMBOL_INFOW {
            SizeOfStruct: u32::try_from(std::mem::size_of::<SYMBOL_INFOW>()).ok()?,
            MaxNameLen: u32::try_from(MAX_NAME).ok()?,
            ..SYMBOL_INFOW::default()
        };
        // SAFETY: `buf` is 8-byte aligned and larger than the header.
        unsafe { info.write(header) };
        // SAFETY: `info` heads a buffer with room for MaxNameLen units of name.
        if unsafe { SymFromAddrW(session(), address, &raw mut displacement, info) } == 0 {
            return None;
        }
        // SAFETY: `info` points to the header DbgHelp filled in.
        let len = (unsafe { (*info).NameLen } as usize).min(MAX_NAME);
        // The name follows at `Name`, inside `buf`: read it from the buffer's bytes.
        let bytes: Vec<u8> = buf
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .skip(std::mem::offset_of!(SYMBOL_INFOW, Name))
            .take(2 * len)
            .collect();
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .collect();
        let name = String::from_utf16_lossy(&units);
        if name.is_empty() {
            return None;
        }
        let text = format!("{name}+{displacement:#x}");
        // Without a PDB DbgHelp falls back to the export table and answers with the nearest
        // export below the address, flagged SYMFLAG_EXPORT ("The symbol is from the export
        // table": SYMBOL_INFO, Learn): not necessarily the function the code belongs to.
        // SAFETY: `info` points to the header DbgHelp filled in.
        let flags = unsafe { (*info).Flags };
        Some(if flags & SYMFLAG_EXPORT == 0 {
            Symbol::Function(text)
        } else {
            Symbol::NearestExport(text)
        })
    }
}
