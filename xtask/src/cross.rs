//! The Linux cross build of driver crates for `x86_64-pc-windows-msvc`.
//!
//! Everything Linux-specific lives in files generated under `target/cross/` and in the
//! environment of the cargo process: the synthesized WDK root, a patched copy of wdk-build
//! (in a vendored copy of the crates.io sources, which leaves `Cargo.lock` untouched), and a cargo
//! config passed with `--config` that selects rust-lld. The driver's own sources and
//! manifests stay exactly what a Windows developer builds with the real WDK.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    toolchain::{Libclang, libclang},
    util::{capture, cargo, describe, repo_root, run, write_if_changed},
    wdkroot,
};

/// The driver target triple.
pub const DRIVER_TARGET: &str = "x86_64-pc-windows-msvc";
/// The wdk-build version the patch is written for (pinned in every driver manifest).
const WDK_BUILD_VERSION: &str = "0.6.0";
/// The patch that lets wdk-build compile on a non-Windows host.
const WDK_BUILD_PATCH: &str = include_str!("../patches/wdk-build-0.6.0-nonwindows-host.patch");

/// Everything a cross cargo invocation needs.
#[derive(Debug)]
pub struct CrossEnv {
    wdk_root: PathBuf,
    libclang: Libclang,
    config: PathBuf,
    build_id: String,
}

/// The build id baked into the driver: the git revision, `-dirty` when the tree has changes.
fn build_id() -> String {
    let root = repo_root();
    let rev =
        capture(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["rev-parse", "--short=12", "HEAD"]),
        );
    let Ok(rev) = rev else {
        return "unknown".to_owned();
    };
    let dirty = capture(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.trim().is_empty());
    format!("g{}{}", rev.trim(), if dirty { "-dirty" } else { "" })
}

/// Vendors the crates.io dependencies of every driver crate into `target/cross/vendor` and
/// patches the vendored wdk-build. Cargo then reads crates.io sources from there (a source
/// replacement in the cross config): `Cargo.lock` stays exactly what Windows builds use, and
/// `--locked` holds. Redone only when a lock file or the patch changes.
fn vendor(target_dir: &Path, manifest_dirs: &[PathBuf]) -> Result<PathBuf> {
    let dest = target_dir.join("cross/vendor");
    let stamp_path = target_dir.join("cross/vendor.stamp");
    let mut stamp = String::from(WDK_BUILD_PATCH);
    for dir in manifest_dirs {
        let lock = dir.join("Cargo.lock");
        if !lock.is_file() {
            // A new driver crate: resolve it once; the lock file is then committed with it.
            run(cargo()
                .arg("generate-lockfile")
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml")))?;
        }
        stamp.push_str(
            &fs::read_to_string(&lock).with_context(|| format!("reading {}", lock.display()))?,
        );
    }
    if dest.is_dir() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(dest);
    }
    let (first, rest) = manifest_dirs
        .split_first()
        .context("no driver crate to build")?;
    // Start clean: cargo vendor keeps an existing (patched) copy, which would not re-patch.
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    let mut cmd = cargo();
    cmd.args([
        "vendor",
        "--quiet",
        "--locked",
        "--versioned-dirs",
        "--manifest-path",
    ])
    .arg(first.join("Cargo.toml"));
    for dir in rest {
        cmd.arg("--sync").arg(dir.join("Cargo.toml"));
    }
    cmd.arg(&dest).stdout(Stdio::null());
    run(&mut cmd)?;
    let wdk_build = dest.join(format!("wdk-build-{WDK_BUILD_VERSION}"));
    eprintln!("xtask: patching {}", wdk_build.display());
    let mut child = Command::new("patch")
        .args(["-s", "-p1", "--binary", "--forward", "-d"])
        .arg(&wdk_build)
        .stdin(Stdio::piped())
        .spawn()
        .context("could not start `patch`: run `cargo xtask setup`")?;
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("patch stdin")?
            .write_all(WDK_BUILD_PATCH.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!(
            "the wdk-build patch did not apply to {}",
            wdk_build.display()
        );
    }
    // Cargo checks vendored files against .cargo-checksum.json: keep the package checksum
    // (it must match Cargo.lock) and drop the per-file sums of the files the patch changed.
    let sums_path = wdk_build.join(".cargo-checksum.json");
    let mut sums: serde_json::Value = serde_json::from_str(&fs::read_to_string(&sums_path)?)?;
    sums["files"] = serde_json::json!({});
    fs::write(&sums_path, serde_json::to_string(&sums)?)?;
    fs::write(&stamp_path, stamp)?;
    Ok(dest)
}

impl CrossEnv {
    /// Prepares the WDK root, the patched wdk-build and the cargo config.
    ///
    /// # Errors
    /// When a prerequisite is missing (the message says how to install it).
    pub fn prepare(target_dir: &Path, manifest_dirs: &[PathBuf]) -> Result<Self> {
        let wdk_root = wdkroot::ensure(target_dir)?;
        let libclang = libclang()?;
        let vendor = vendor(target_dir, manifest_dirs)?;
        let config = target_dir.join("cross/cargo-config.toml");
        let text = format!(
            "# Generated by `cargo xtask build`: Linux-only cross-build settings.\n\
             # crates.io sources come from the vendored copy, whose wdk-build is patched to\n\
             # build on a non-Windows host; Cargo.lock stays what Windows builds use.\n\
             [source.crates-io]\n\
             replace-with = \"hivetrack-cross-vendor\"\n\n\
             [source.hivetrack-cross-vendor]\n\
             directory = {:?}\n\n\
             [target.{DRIVER_TARGET}]\n\
             # lld-link, bundled with rustc; /RELEASE writes the PE checksum (link.exe does it\n\
             # for native images by itself, lld-link does not).\n\
             linker = \"rust-lld\"\n\
             rustflags = [\"-C\", \"link-arg=/RELEASE\"]\n",
            vendor.display().to_string()
        );
        write_if_changed(&config, text.as_bytes())?;
        Ok(Self {
            wdk_root,
            libclang,
            config,
            build_id: build_id(),
        })
    }

    /// A cargo command (`build`, `clippy`, ...) for the driver crate in `manifest_dir`, with
    /// the cross environment applied.
    pub fn cargo(&self, subcommand: &str, manifest_dir: &Path) -> Command {
        let mut cmd = cargo();
        cmd.arg(subcommand)
            .args([
                "--release",
                "--locked",
                "--target",
                DRIVER_TARGET,
                "--config",
            ])
            .arg(&self.config)
            .arg("--manifest-path")
            .arg(manifest_dir.join("Cargo.toml"))
            .env("WDKContentRoot", &self.wdk_root)
            .env("LIBCLANG_PATH", &self.libclang.lib_dir)
            // wdk-build turns off bindgen's include detection; mingw's _mingw.h defines
            // __attribute__(x) away unless __GNUC__ is set.
            .env(
                "BINDGEN_EXTRA_CLANG_ARGS_x86_64_pc_windows_msvc",
                format!(
                    "-resource-dir={} -fgnuc-version=4.2.1",
                    self.libclang.resource_dir.display()
                ),
            )
            .env("HIVETRACK_BUILD_ID", &self.build_id);
        cmd
    }

    /// Builds the cdylib of the driver crate in `manifest_dir`; returns the image and its map.
    ///
    /// # Errors
    /// When the build fails or produces no image.
    pub fn build_driver(&self, manifest_dir: &Path) -> Result<(PathBuf, PathBuf)> {
        self.build_driver_with(manifest_dir, &[])
    }

    /// [`Self::build_driver`] with extra cargo arguments (features, another target
    /// directory).
    ///
    /// # Errors
    /// As [`Self::build_driver`].
    pub fn build_driver_with(
        &self,
        manifest_dir: &Path,
        extra: &[&str],
    ) -> Result<(PathBuf, PathBuf)> {
        let mut cmd = self.cargo("build", manifest_dir);
        cmd.args(extra)
            .arg("--message-format=json-render-diagnostics")
            .stderr(Stdio::inherit());
        eprintln!("xtask: $ {}", describe(&cmd));
        let out = cmd.output().context("could not start cargo")?;
        if !out.status.success() {
            bail!("building {} failed", manifest_dir.display());
        }
        let mut image = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let is_cdylib = msg["target"]["crate_types"]
                .as_array()
                .is_some_and(|t| t.iter().any(|k| k == "cdylib"));
            if msg["reason"] == "compiler-artifact" && is_cdylib {
                image = msg["filenames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str())
                    .find(|f| {
                        Path::new(f)
                            .extension()
                            .is_some_and(|e| e.eq_ignore_ascii_case("dll"))
                    })
                    .map(PathBuf::from);
            }
        }
        let image =
            image.with_context(|| format!("{} produced no .dll", manifest_dir.display()))?;
        let stem = image
            .file_stem()
            .context("image without a name")?
            .to_string_lossy()
            .into_owned();
        let map = image
            .parent()
            .context("image without a directory")?
            .join(format!("deps/{stem}.map"));
        if !map.is_file() {
            bail!("the linker wrote no map file at {}", map.display());
        }
        Ok((image, map))
    }
}
