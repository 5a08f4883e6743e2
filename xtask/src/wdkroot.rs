//! Synthesizes a WDK content root (the layout wdk-build and wdk-sys expect from the Windows
//! Driver Kit) under `target/cross/wdk` from Debian's mingw-w64 DDK headers and import
//! archives. Used only by the Linux cross build; a Windows developer uses the real WDK.
//!
//! Layout produced (`<v>` = [`WDK_VERSION`]):
//! - `Include/<v>/km/*.h`: mingw's `ddk/` headers (symlinks), and a `wdm.h` that includes
//!   mingw's and adds the few WDK 10 declarations mingw lacks, with their real prototypes;
//! - `Include/<v>/km/crt/`: empty (mingw's CRT headers are in `shared`);
//! - `Include/<v>/shared`: mingw's SDK headers (symlink);
//! - `Lib/<v>/km/x64/{ntoskrnl,hal,wmilib}.lib`: MSVC-style short-import libraries
//!   regenerated with llvm-dlltool from `.def` files derived from mingw's archives, plus the
//!   exports the real ntoskrnl has and mingw lacks (`__chkstk` among them: rustc calls it for
//!   any frame over 4 KiB);
//! - `Lib/<v>/km/x64/BufferOverflowFastFailK.lib`: empty (rustc never emits /GS checks).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    toolchain::llvm_tool,
    util::{capture, run, write_if_changed},
};

/// The WDK version directory name the synthesized root pretends to be.
pub const WDK_VERSION: &str = "10.0.22621.0";
/// Where Debian's mingw-w64-x86-64-dev puts the headers.
const MINGW_INCLUDE: &str = "/usr/share/mingw-w64/include";
/// Where it puts the import archives.
const MINGW_LIB: &str = "/usr/x86_64-w64-mingw32/lib";
/// Bump when the generated content changes, to force regeneration.
const GENERATOR_REVISION: u32 = 1;

/// Declarations appended to mingw's wdm.h. Each is the WDK's own prototype (docs pages:
/// `ExAllocatePool2`, `CmCallbackGetKeyObjectIDEx`, `CmCallbackReleaseKeyObjectIDEx`); wdk-sys and
/// wdk-alloc need `POOL_FLAGS` and `ExAllocatePool2` to compile.
const WDM_COMPAT: &str = r"
#ifndef HIVETRACK_WDM_COMPAT_H
#define HIVETRACK_WDM_COMPAT_H
typedef ULONG64 POOL_FLAGS;
NTKERNELAPI PVOID NTAPI ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
NTKERNELAPI NTSTATUS NTAPI CmCallbackGetKeyObjectIDEx(PLARGE_INTEGER Cookie, PVOID Object,
    PULONG_PTR ObjectID, PCUNICODE_STRING *ObjectName, ULONG Flags);
NTKERNELAPI VOID NTAPI CmCallbackReleaseKeyObjectIDEx(PCUNICODE_STRING ObjectName);
#endif
";

/// Exports the real x64 ntoskrnl.exe has that mingw-w64's libntoskrnl.a lacks.
const NTOSKRNL_EXTRA_EXPORTS: &[&str] = &[
    "__chkstk",
    "ExAllocatePool2",
    "ExAllocatePool3",
    "ExFreePool2",
    "CmCallbackGetKeyObjectIDEx",
    "CmCallbackReleaseKeyObjectIDEx",
];

/// Builds a `.def` file body from `llvm-nm --defined-only` output of a mingw import archive:
/// every `__imp_X` becomes an export `X`, marked DATA when the archive has no code thunk for
/// it (an exported variable).
#[must_use]
pub fn def_from_nm(dll: &str, nm_output: &str, extra: &[&str]) -> String {
    let mut imports = BTreeSet::new();
    let mut code = BTreeSet::new();
    for line in nm_output.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_addr), Some(kind), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match kind {
            "I" => {
                if let Some(n) = name.strip_prefix("__imp_") {
                    imports.insert(n.to_owned());
                }
            }
            "T" => {
                code.insert(name.to_owned());
            }
            _ => {}
        }
    }
    for e in extra {
        imports.insert((*e).to_owned());
        code.insert((*e).to_owned());
    }
    let mut def = format!("LIBRARY {dll}\nEXPORTS\n");
    for name in &imports {
        let data = if code.contains(name) { "" } else { " DATA" };
        let _ = writeln!(def, "{name}{data}");
    }
    def
}

fn fingerprint() -> String {
    let mut s = format!("revision {GENERATOR_REVISION}\n");
    for lib in ["libntoskrnl.a", "libhal.a", "libwmilib.a"] {
        let meta = fs::metadata(Path::new(MINGW_LIB).join(lib));
        let _ = writeln!(s, "{lib} {:?}", meta.map(|m| m.len()).ok());
    }
    let headers = fs::read_dir(Path::new(MINGW_INCLUDE).join("ddk")).map(Iterator::count);
    let _ = writeln!(s, "ddk headers {:?}", headers.ok());
    s
}

fn import_lib(root: &Path, stem: &str, dll: &str, out: &str, extra: &[&str]) -> Result<()> {
    let dir = root.join("Lib").join(WDK_VERSION).join("km/x64");
    let archive = Path::new(MINGW_LIB).join(format!("lib{stem}.a"));
    let nm = capture(
        Command::new(llvm_tool("llvm-nm")?)
            .arg("--defined-only")
            .arg(&archive),
    )
    .with_context(|| format!("reading the exports of {}", archive.display()))?;
    let def_path = dir.join(out.replace(".lib", ".def"));
    write_if_changed(&def_path, def_from_nm(dll, &nm, extra).as_bytes())?;
    run(Command::new(llvm_tool("llvm-dlltool")?)
        .args(["-m", "i386:x86-64", "-D", dll, "-d"])
        .arg(&def_path)
        .arg("-l")
        .arg(dir.join(out)))
}

/// Makes sure `target/cross/wdk` holds a complete synthesized WDK root; regenerates it only
/// when its inputs changed. Returns its path (the value of `WDKContentRoot`).
///
/// # Errors
/// When the mingw-w64 headers or LLVM tools are missing, or a file cannot be written.
pub fn ensure(target_dir: &Path) -> Result<PathBuf> {
    let root = target_dir.join("cross/wdk");
    let stamp = root.join(".hivetrack-stamp");
    let want = fingerprint();
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(root);
    }
    let ddk = Path::new(MINGW_INCLUDE).join("ddk");
    if !ddk.join("wdm.h").is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` (package mingw-w64-x86-64-dev)",
            ddk.display()
        );
    }
    eprintln!(
        "xtask: synthesizing the WDK content root in {}",
        root.display()
    );
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let km = root.join("Include").join(WDK_VERSION).join("km");
    fs::create_dir_all(km.join("crt"))?;
    fs::create_dir_all(root.join("Lib").join(WDK_VERSION).join("km/x64"))?;
    for entry in fs::read_dir(&ddk)? {
        let path = entry?.path();
        let name = path.file_name().context("header without a name")?;
        if path.extension().is_some_and(|e| e == "h") && name != "wdm.h" {
            symlink(&path, km.join(name))?;
        }
    }
    let wdm = format!("#include \"{}\"\n{WDM_COMPAT}", ddk.join("wdm.h").display());
    fs::write(km.join("wdm.h"), wdm)?;
    symlink(
        MINGW_INCLUDE,
        root.join("Include").join(WDK_VERSION).join("shared"),
    )?;
    import_lib(
        &root,
        "ntoskrnl",
        "ntoskrnl.exe",
        "ntoskrnl.lib",
        NTOSKRNL_EXTRA_EXPORTS,
    )?;
    import_lib(&root, "hal", "HAL.dll", "hal.lib", &[])?;
    import_lib(&root, "wmilib", "WMILIB.SYS", "wmilib.lib", &[])?;
    run(Command::new(llvm_tool("llvm-ar")?).arg("rc").arg(
        root.join("Lib")
            .join(WDK_VERSION)
            .join("km/x64/BufferOverflowFastFailK.lib"),
    ))?;
    fs::write(&stamp, want)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::def_from_nm;

    #[test]
    fn def_marks_variables_as_data_and_adds_extras() {
        let nm = "\nntoskrnl.o:\n0000000000000000 I __imp_IoCreateDevice\n\
                  0000000000000000 T IoCreateDevice\n\
                  0000000000000000 I __imp_IoDeviceObjectType\n\
                  0000000000000000 t .text\n";
        let def = def_from_nm("ntoskrnl.exe", nm, &["__chkstk"]);
        assert_eq!(
            def,
            "LIBRARY ntoskrnl.exe\nEXPORTS\nIoCreateDevice\nIoDeviceObjectType DATA\n__chkstk\n"
        );
    }
}
