//! `cargo xtask setup`: installs what the Linux cross build needs, idempotently.
//!
//! When something cannot be installed (not root, no apt, no rustup) it names the missing piece
//! and the command that would install it, and fails.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{capture, run, which};

/// A Debian package the build needs, and why.
pub struct Package {
    /// Debian package name.
    pub name: &'static str,
    /// What it is for.
    pub why: &'static str,
}

/// Packages for `cargo xtask build`.
pub const BUILD_PACKAGES: &[Package] = &[
    // xtask itself and every host build script link with the host's `cc`: a machine without
    // them cannot run this check at all (README's set-up installs them first); listed so a
    // half-prepared machine is told (audit 21c M4).
    Package {
        name: "gcc",
        why: "the host C compiler and linker (`cc`) of xtask, build scripts and cargo install",
    },
    Package {
        name: "libc6-dev",
        why: "the host C library headers and crt files the host linker needs",
    },
    Package {
        name: "mingw-w64-x86-64-dev",
        why: "DDK headers and import archives the WDK content root is synthesized from",
    },
    Package {
        name: "gcc-mingw-w64-x86-64",
        why: "the linker of the CLI (x86_64-pc-windows-gnu)",
    },
    Package {
        name: "libclang1-15",
        why: "libclang for wdk-sys's bindgen (15 is known good; 19 fails on AMX intrinsic types)",
    },
    Package {
        name: "libclang-common-15-dev",
        why: "clang's builtin headers (its resource directory) for bindgen",
    },
    Package {
        name: "llvm",
        why: "llvm-nm, llvm-dlltool and llvm-ar to build import libraries",
    },
    Package {
        name: "patch",
        why: "applies the non-Windows-host patch to wdk-build",
    },
];

/// Rust targets for `cargo xtask build`.
pub const RUST_TARGETS: &[(&str, &str)] = &[
    ("x86_64-pc-windows-msvc", "hivetrack.sys"),
    ("x86_64-pc-windows-gnu", "hivetrack.exe"),
];

fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// Installs the Debian packages in `packages` that are missing.
///
/// # Errors
/// When they are missing and cannot be installed here; the message says how to install them.
pub fn ensure_packages(packages: &[Package]) -> Result<()> {
    let missing: Vec<&Package> = packages.iter().filter(|p| !is_installed(p.name)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let list = missing
        .iter()
        .map(|p| format!("  {}: {}", p.name, p.why))
        .collect::<Vec<_>>()
        .join("\n");
    if which("apt-get").is_none() || which("dpkg-query").is_none() {
        bail!(
            "missing packages (this machine has no apt-get; install the equivalents by hand):\n{list}"
        );
    }
    if !is_root() {
        bail!(
            "missing Debian packages:\n{list}\ninstall them with:\n  sudo apt-get install -y --no-install-recommends {}",
            names.join(" ")
        );
    }
    eprintln!("xtask: installing {}", names.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&names)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Adds the rustup targets that are missing.
///
/// # Errors
/// When rustup is absent or fails; the message names the command to run.
pub fn ensure_targets() -> Result<()> {
    let Some(rustup) = which("rustup") else {
        bail!(
            "rustup is not on PATH: install the targets {} with your toolchain manager",
            RUST_TARGETS
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let installed = capture(Command::new(&rustup).args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> = RUST_TARGETS
        .iter()
        .map(|t| t.0)
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new(&rustup).args(["target", "add"]).args(&missing))
}

/// `cargo xtask setup`.
///
/// # Errors
/// When a prerequisite is missing and cannot be installed.
pub fn setup() -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_targets()?;
    eprintln!("xtask: setup complete: the cross build has everything it needs");
    Ok(())
}
