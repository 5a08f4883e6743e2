//! Finds the host tools the cross build uses: libclang (and its resource directory) for
//! bindgen, and the LLVM binutils that build import libraries. Nothing is hard-coded to one
//! LLVM version: installed versions are discovered, known-good ones preferred.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::util::which;

/// LLVM major versions whose libclang parses the mingw-w64 DDK headers, best first.
/// libclang 19 fails on the AMX intrinsic types of the headers; 14 and 15 are proven.
const PREFERRED_LLVM: &[u32] = &[15, 14, 16, 17, 18];

/// libclang for bindgen.
#[derive(Debug, Clone)]
pub struct Libclang {
    /// Directory holding `libclang.so*` (`LIBCLANG_PATH`).
    pub lib_dir: PathBuf,
    /// clang's resource directory (holds `include/stddef.h` and the intrinsics headers).
    pub resource_dir: PathBuf,
}

fn llvm_dirs(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let major = name.strip_prefix("llvm-")?.parse().ok()?;
            Some((major, e.path()))
        })
        .collect();
    out.sort_by_key(|(major, _)| {
        PREFERRED_LLVM
            .iter()
            .position(|p| p == major)
            .unwrap_or(PREFERRED_LLVM.len())
    });
    out
}

fn has_libclang(lib_dir: &Path) -> bool {
    fs::read_dir(lib_dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("libclang") && n.contains(".so") && !n.starts_with("libclang-cpp")
        })
}

fn resource_dir(lib_dir: &Path) -> Option<PathBuf> {
    let clang = lib_dir.join("clang");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&clang)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("include/stddef.h").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Finds libclang and its resource directory. `LIBCLANG_PATH` and
/// `HIVETRACK_CLANG_RESOURCE_DIR` override the discovery.
///
/// # Errors
/// When no usable libclang is installed; the message names the packages to install.
pub fn libclang() -> Result<Libclang> {
    if let Some(lib_dir) = std::env::var_os("LIBCLANG_PATH").map(PathBuf::from) {
        let resource_dir = std::env::var_os("HIVETRACK_CLANG_RESOURCE_DIR")
            .map(PathBuf::from)
            .or_else(|| resource_dir(&lib_dir));
        if let Some(resource_dir) = resource_dir {
            return Ok(Libclang {
                lib_dir,
                resource_dir,
            });
        }
        bail!(
            "LIBCLANG_PATH={} has no clang resource directory (lib/clang/<version>/include); set HIVETRACK_CLANG_RESOURCE_DIR",
            lib_dir.display()
        );
    }
    for (_, dir) in llvm_dirs(Path::new("/usr/lib")) {
        let lib_dir = dir.join("lib");
        if has_libclang(&lib_dir)
            && let Some(resource_dir) = resource_dir(&lib_dir)
        {
            return Ok(Libclang {
                lib_dir,
                resource_dir,
            });
        }
    }
    bail!(
        "no libclang with its resource directory found under /usr/lib/llvm-*: run `cargo xtask setup` \
         (or `apt-get install libclang1-15 libclang-common-15-dev`), or set LIBCLANG_PATH"
    )
}

/// Finds an LLVM tool (`llvm-nm`, `llvm-dlltool`, `llvm-ar`, ...): on `PATH` first, then in
/// the versioned LLVM installations.
///
/// # Errors
/// When it is nowhere; the message names the package.
pub fn llvm_tool(name: &str) -> Result<PathBuf> {
    if let Some(p) = which(name) {
        return Ok(p);
    }
    for (_, dir) in llvm_dirs(Path::new("/usr/lib")) {
        let p = dir.join("bin").join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("`{name}` not found: run `cargo xtask setup` (or `apt-get install llvm`)")
}
