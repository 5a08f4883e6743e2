//! The stand-ins `cargo xtask make-check` puts first on `PATH` for the tools of wdk-build
//! 0.6.0's flow: `rust-script` (wdk-build's `@rust` tasks), `cargo build` (the flow's `build`
//! task), `stampinf`, `infverif`, `inf2cat`, `makecert`, `certmgr` and `signtool`; for the
//! root's tasks, `cargo build` of the CLI (task `cli`) and `mc.exe`, `rc.exe`, `link.exe`
//! (task `messages`).
//!
//! Each is a link to this xtask executable, which acts as the tool its name says
//! ([`invoked_as`]); `cargo` runs the real cargo for every other command. Each records its arguments in the
//! log `$MAKE_CHECK_LOG` (one JSON object per line) and does what the real tool or script does
//! to the files of the flow, with the checks it can make — never what the WDK tools do to the
//! files' content: nothing is stamped by Microsoft's stampinf, catalogued, signed or verified.
//!
//! - `rust-script`: recognises which of wdk-build's scripts it was given by a line only that
//!   script has ([`Script::of`]) and does what the script does per wdk-build 0.6.0's
//!   `src/cargo_make.rs` (forwarding env vars the way `rust-env-update` reads them back,
//!   copying the `.inx` and the package files). The real scripts compile wdk-build, which does
//!   not build on Linux (`setup-wdk-config-env-vars` is a `compile_error!` off Windows).
//! - `cargo build` (only when cargo-make's current task is `build`): the driver cannot build
//!   for the Linux host; the stand-in puts the image `cargo xtask build` cross-built
//!   (`$MAKE_CHECK_IMAGE`) where cargo would put `hivetrack.dll`, and a placeholder PDB (the
//!   Linux cross build links with lld-link and writes none).
//! - `cargo build` in the `cli` task: the profile must be a cargo profile name (not a
//!   cargo-make variable left unexpanded); writes a placeholder `hivetrack.exe`.
//! - `mc.exe` / `rc.exe` / `link.exe`: mc writes the `.h`, the `.rc` naming `MSG00001.bin`
//!   and that file; rc requires every file the `.rc` names to be found from its working
//!   folder; link requires `/dll /noentry /machine:x64` and the `.res`; each writes a
//!   placeholder (nothing is compiled).
//! - `stampinf`: requires the INF and a known architecture, sets `DriverVer` (`-d *`: today)
//!   and `CatalogFile` (`-c`), replaces `$ARCH$`, in place.
//! - `infverif`: runs the project's INF rules (`xtask::inf::check_inf`) on the stamped INF.
//! - `inf2cat`: requires a known OS and, in the package folder, each INF with every file its
//!   `[SourceDisksFiles]` names; writes a placeholder catalog named as the INF's
//!   `CatalogFile` says.
//! - `makecert` / `certmgr` / `signtool`: a certificate store in a folder
//!   (`$MAKE_CHECK_STORE`); `makecert` writes a placeholder `.cer` and adds it, `certmgr -put`
//!   exports it (exit 1 when absent, as wdk-build's condition script expects), `signtool sign`
//!   requires the file and the certificate in the store it names.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::util::{cargo, copy};

/// The tools stood in for, each written as a script into the stand-in directory.
pub const TOOLS: &[&str] = &[
    "rust-script",
    "cargo",
    "stampinf",
    "infverif",
    "inf2cat",
    "makecert",
    "certmgr",
    "signtool",
];

/// The SDK tools the root's `messages` task runs, stood in for as `<name>.exe` (the task runs
/// them by that name, as a Windows `PATH` finds them).
pub const EXE_TOOLS: &[&str] = &["mc", "rc", "link"];

/// Links each [`TOOLS`] name (and each [`EXE_TOOLS`] name with `.exe`) in `bin` to this xtask executable, which runs the stand-in when
/// called by one of those names ([`invoked_as`]). Not `sh` scripts: `sh` drops environment
/// variables whose names are not shell identifiers, and wdk-build forwards
/// `WDK_BUILD_METADATA-DRIVER_MODEL-DRIVER_TYPE` to its later scripts through the environment.
///
/// # Errors
/// When a link cannot be made.
pub fn write_stand_ins(bin: &Path) -> Result<()> {
    fs::create_dir_all(bin)?;
    let exe = std::env::current_exe()?;
    let names = TOOLS
        .iter()
        .map(|t| (*t).to_owned())
        .chain(EXE_TOOLS.iter().map(|t| format!("{t}.exe")));
    for tool in names {
        let link = bin.join(&tool);
        let _ = fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
        #[cfg(not(unix))]
        copy(&exe, &link)?;
    }
    Ok(())
}

/// The stand-in this process was started as (its `argv[0]` names one of [`TOOLS`]), if any.
#[must_use]
pub fn invoked_as() -> Option<&'static str> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_stem()?.to_str()?.to_owned();
    TOOLS.iter().chain(EXE_TOOLS).copied().find(|t| *t == name)
}

/// Runs the stand-in `tool` with this process's arguments and exits; `cargo` runs the
/// real cargo (`$MAKE_CHECK_REAL_CARGO`) for anything but the `build` task's `cargo build`.
pub fn main(tool: &str) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = std::env::var("CARGO_MAKE_CURRENT_TASK_NAME").unwrap_or_default();
    if tool == "cargo"
        && !(args.first().is_some_and(|a| a == "build") && (task == "build" || task == "cli"))
    {
        let real = std::env::var_os("MAKE_CHECK_REAL_CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(real).args(&args).status();
        return match status {
            Ok(s) => std::process::ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
            Err(e) => {
                eprintln!("make-check stand-in cargo: cannot run the real cargo: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(tool, &args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Answer>().is_some() => {
            eprintln!("{}", e.root_cause());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the stand-in for `tool` with `args`.
///
/// # Errors
/// What the real tool would fail on (and what the stand-in cannot do), prefixed
/// `make-check stand-in <tool>`; for `certmgr` and the condition scripts, also the "no"
/// answer (exit status 1).
fn run(tool: &str, args: &[String]) -> Result<()> {
    let result = match tool {
        "rust-script" => rust_script(args),
        "cargo" if std::env::var("CARGO_MAKE_CURRENT_TASK_NAME").is_ok_and(|t| t == "cli") => {
            cli_build(args)
        }
        "cargo" => cargo_build(args),
        "mc" => mc(args),
        "rc" => rc(args),
        "link" => link(args),
        "stampinf" => stampinf(args),
        "infverif" => infverif(args),
        "inf2cat" => inf2cat(args),
        "makecert" => makecert(args),
        "certmgr" => certmgr(args),
        "signtool" => signtool(args),
        _ => Err(anyhow::anyhow!("no stand-in for {tool}")),
    };
    result.with_context(|| format!("make-check stand-in {tool}"))
}

/// A "no" that is an answer, not a failure: a condition script skipping its task, `certmgr`
/// not finding the certificate. Printed as is, exit status 1.
#[derive(Debug)]
struct Answer(String);

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Answer {}

/// Returns the answer "no" ([`Answer`]).
fn no<T>(why: impl Into<String>) -> Result<T> {
    Err(Answer(why.into()).into())
}

/// Appends one record to the log `$MAKE_CHECK_LOG` (when set).
fn record(tool: &str, args: &[String], extra: &serde_json::Value) -> Result<()> {
    let Some(log) = std::env::var_os("MAKE_CHECK_LOG") else {
        return Ok(());
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let line = json!({ "tool": tool, "args": args, "cwd": cwd, "extra": extra });
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", Path::new(&log).display()))?;
    writeln!(file, "{line}")?;
    Ok(())
}

/// An environment variable cargo-make (or an earlier task) must have set.
fn var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} should be set by cargo-make"))
}

// ------------------------------------------------------------------------------ rust-script

/// The wdk-build 0.6.0 scripts the stand-in knows, each by a line only it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// `driver/Makefile.toml`'s `load_script`.
    LoadMakefile,
    /// `wdk-build-init` (`rust-env-update` plugin).
    Init,
    /// `setup-wdk-config-env-vars` (`rust-env-update` plugin).
    SetupWdkConfig,
    /// `package-driver-flow`'s `condition_script`.
    PackageFlowCondition,
    /// `generate-driver-binary-file`'s `condition_script`.
    BinaryCondition,
    /// `generate-driver-binary-file`: `<name>.dll` to `<name>.sys`.
    GenerateBinary,
    /// `copy-inx-to-output`.
    CopyInx,
    /// `copy-driver-binary-to-package`.
    CopyBinary,
    /// `copy-pdb-to-package`.
    CopyPdb,
    /// `copy-inf-to-package`.
    CopyInf,
    /// `generate-certificate`'s `condition_script` (runs certmgr).
    CertificateCondition,
    /// `copy-certificate-to-package`.
    CopyCertificate,
}

impl Script {
    /// Which script `text` is, by the line that tells it apart (the more specific first).
    fn of(text: &str) -> Option<(Self, &'static str)> {
        let to_package = text.contains("copy_to_driver_package_folder");
        let table: [(bool, Self, &'static str); 12] = [
            (
                text.contains("load_rust_driver_makefile()"),
                Self::LoadMakefile,
                "load_script",
            ),
            (
                text.contains("validate_command_line_args()"),
                Self::Init,
                "wdk-build-init",
            ),
            (
                text.contains("to_map_with_prefix"),
                Self::SetupWdkConfig,
                "setup-wdk-config-env-vars",
            ),
            (
                text.contains("package_driver_flow_condition_script()"),
                Self::PackageFlowCondition,
                "package-driver-flow (condition)",
            ),
            (
                text.contains("Skipping generate-driver-binary-file task"),
                Self::BinaryCondition,
                "generate-driver-binary-file (condition)",
            ),
            (
                text.contains("generate_certificate_condition_script()"),
                Self::CertificateCondition,
                "generate-certificate (condition)",
            ),
            (
                text.contains("\"{}.dll\""),
                Self::GenerateBinary,
                "generate-driver-binary-file",
            ),
            (
                text.contains("\"{}.inx\""),
                Self::CopyInx,
                "copy-inx-to-output",
            ),
            (
                to_package && text.contains("WDK_BUILD_DRIVER_EXTENSION"),
                Self::CopyBinary,
                "copy-driver-binary-to-package",
            ),
            (
                to_package && text.contains("\"{}.pdb\""),
                Self::CopyPdb,
                "copy-pdb-to-package",
            ),
            (
                to_package && text.contains("\"{}.inf\""),
                Self::CopyInf,
                "copy-inf-to-package",
            ),
            (
                to_package && text.contains("join(\"WDRLocalTestCert.cer\")"),
                Self::CopyCertificate,
                "copy-certificate-to-package",
            ),
        ];
        table
            .into_iter()
            .find(|(hit, _, _)| *hit)
            .map(|(_, script, name)| (script, name))
    }
}

/// The stand-in `rust-script`: `--version`, or the wdk-build script given (the first `.rs`
/// argument that is a file; the arguments after it are the script's).
fn rust_script(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--version") {
        println!("rust-script 0.35.0 (make-check stand-in)");
        return Ok(());
    }
    let at = args
        .iter()
        .position(|a| {
            Path::new(a)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("rs"))
                && Path::new(a).is_file()
        })
        .context("no script file among the arguments")?;
    let path = &args[at];
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let Some((script, name)) = Script::of(&text) else {
        record("rust-script", args, &json!({ "task": null }))?;
        bail!(
            "{path} is none of the wdk-build 0.6.0 scripts the stand-in knows (a newer \
             wdk-build?): the flow stops here"
        );
    };
    record("rust-script", args, &json!({ "task": name }))?;
    let script_args = &args[at + 1..];
    match script {
        Script::LoadMakefile => load_makefile(),
        Script::Init => init(script_args),
        Script::SetupWdkConfig => setup_wdk_config(),
        Script::PackageFlowCondition => package_flow_condition(),
        Script::BinaryCondition => match driver_type()?.as_str() {
            "WDM" | "KMDF" => Ok(()),
            _ => no("Non-Kernel Mode Driver detected. Skipping generate-driver-binary-file task."),
        },
        Script::GenerateBinary => {
            let (out, name) = (output_dir()?, var("CARGO_MAKE_CRATE_FS_NAME")?);
            copy(
                &out.join(format!("{name}.dll")),
                &out.join(format!("{name}.sys")),
            )
        }
        Script::CopyInx => {
            let (out, name) = (output_dir()?, var("CARGO_MAKE_CRATE_FS_NAME")?);
            fs::create_dir_all(&out)?;
            let source =
                Path::new(&var("CARGO_MAKE_WORKING_DIRECTORY")?).join(format!("{name}.inx"));
            fs::copy(&source, out.join(format!("{name}.inf")))
                .with_context(|| format!("copy of '{}' should succeed", source.display()))?;
            Ok(())
        }
        Script::CopyBinary => {
            let ext = var("WDK_BUILD_DRIVER_EXTENSION")?;
            let name = var("CARGO_MAKE_CRATE_FS_NAME")?;
            copy_to_package(&output_dir()?.join(format!("{name}.{ext}")))
        }
        Script::CopyPdb => {
            let name = var("CARGO_MAKE_CRATE_FS_NAME")?;
            copy_to_package(&output_dir()?.join(format!("{name}.pdb")))
        }
        Script::CopyInf => {
            let name = var("CARGO_MAKE_CRATE_FS_NAME")?;
            copy_to_package(&output_dir()?.join(format!("{name}.inf")))
        }
        Script::CertificateCondition => certificate_condition(),
        Script::CopyCertificate => copy_to_package(&output_dir()?.join("WDRLocalTestCert.cer")),
    }
}

/// What `load_rust_driver_makefile` does: links
/// `$CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY/target/rust-driver-makefile.toml` to the makefile
/// of the wdk-build package `cargo metadata` finds; prints the directory for make-check.
fn load_makefile() -> Result<()> {
    let workspace = var("CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY")?;
    println!("make-check: load_script CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY={workspace}");
    let makefile = wdk_build_dir()?.join("rust-driver-makefile.toml");
    let link = Path::new(&workspace).join("target/rust-driver-makefile.toml");
    fs::create_dir_all(link.parent().unwrap_or_else(|| Path::new(".")))?;
    let _ = fs::remove_file(&link);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&makefile, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    #[cfg(not(unix))]
    copy(&makefile, &link)?;
    Ok(())
}

/// The wdk-build package directory, as `cargo metadata` run in the current directory finds
/// it (what `load_rust_driver_makefile` does).
fn wdk_build_dir() -> Result<PathBuf> {
    let meta = metadata(None)?;
    let found: Vec<&str> = packages(&meta)
        .filter(|p| p["name"] == "wdk-build")
        .filter_map(|p| p["manifest_path"].as_str())
        .collect();
    match found.as_slice() {
        [one] => Ok(Path::new(one)
            .parent()
            .context("manifest_path has a parent")?
            .to_path_buf()),
        [] => bail!("no wdk-build package in cargo metadata (NoWdkBuildCrateDetected)"),
        _ => bail!("several wdk-build packages in cargo metadata: {found:?}"),
    }
}

/// `cargo metadata` (of `manifest`, else of the current directory).
fn metadata(manifest: Option<&Path>) -> Result<serde_json::Value> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--locked"]);
    if let Some(m) = manifest {
        cmd.arg("--manifest-path").arg(m);
    }
    let out = cmd.output().context("cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The packages of a `cargo metadata` answer.
fn packages(meta: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    meta["packages"].as_array().into_iter().flatten()
}

/// Prints env vars the way `forward_printed_env_vars` does, for the `rust-env-update` plugin
/// (it sets each `KEY=VALUE` line between the markers in cargo-make's environment).
fn forward(vars: &[(String, String)]) {
    println!("FORWARDING ARGS TO CARGO-MAKE:");
    for (key, value) in vars {
        println!("{key}={value}");
    }
    println!("END OF FORWARDING ARGS TO CARGO-MAKE");
}

/// `wdk-build-init`: `validate_command_line_args` (the subset of its cargo arguments this
/// stand-in parses: `--release`, `--profile`, `--target`) and `configure_wdf_build_output_dir`.
/// `setup_path` and `setup_wdk_version` need a WDK and are not stood in: the tools are found
/// on `PATH`, and `WDK_BUILD_DETECTED_VERSION` is not set (nothing in the driver flow reads it).
/// `CARGO_MAKE_CRATE_TARGET_TRIPLE` is forwarded as an x64 Windows host's cargo-make sets it
/// (`x86_64-pc-windows-msvc`) unless `--target` is given: on Linux cargo-make sets the Linux
/// triple, which would make `stampinf -a` and `inf2cat /os:` `UNKNOWN`.
fn init(args: &[String]) -> Result<()> {
    let mut release = false;
    let mut profile = None;
    let mut target = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--release" | "-r" => release = true,
            "--profile" => profile = Some(it.next().context("--profile needs a value")?.clone()),
            "--target" => target = Some(it.next().context("--target needs a value")?.clone()),
            other => bail!(
                "wdk-build-init: the stand-in parses only --release, --profile and --target, \
                 not {other:?}"
            ),
        }
    }
    ensure!(
        !(release && profile.is_some()),
        "the `--release` flag should not be specified with the `--profile` flag"
    );
    let mut flags: Option<String> = std::env::var("CARGO_MAKE_CARGO_BUILD_TEST_FLAGS").ok();
    let mut append = |flag: String| {
        flags = Some(match flags.take() {
            Some(f) => format!("{f} {flag}").trim().to_owned(),
            None => flag,
        });
    };
    let cargo_profile = if var("CARGO_MAKE_PROFILE")? == "release" {
        if let Some(p) = profile.as_ref().filter(|p| *p != "release") {
            bail!("Specifying `--profile release` for cargo-make conflicts with `--profile {p}`");
        }
        append("--profile release".into());
        "release".to_owned()
    } else if release {
        append("--release".into());
        "release".to_owned()
    } else if let Some(p) = profile {
        append(format!("--profile {p}"));
        p
    } else {
        var("CARGO_MAKE_CARGO_PROFILE")?
    };
    if let Some(t) = &target {
        append(format!("--target {t}"));
    }
    let mut out = var("CARGO_MAKE_CRATE_CUSTOM_TRIPLE_TARGET_DIRECTORY")?;
    if let Some(t) = &target {
        out = format!("{out}/{t}");
    }
    out = if cargo_profile == "dev" {
        format!("{out}/debug")
    } else {
        format!("{out}/{cargo_profile}")
    };
    let mut vars = Vec::new();
    if let Some(f) = flags {
        vars.push(("CARGO_MAKE_CARGO_BUILD_TEST_FLAGS".to_owned(), f));
    }
    vars.push(("CARGO_MAKE_CARGO_PROFILE".to_owned(), cargo_profile));
    vars.push((
        "CARGO_MAKE_CRATE_TARGET_TRIPLE".to_owned(),
        target.unwrap_or_else(|| "x86_64-pc-windows-msvc".to_owned()),
    ));
    if let Ok(toolchain) = std::env::var("CARGO_MAKE_RUST_DEFAULT_TOOLCHAIN") {
        vars.push(("CARGO_MAKE_RUST_DEFAULT_TOOLCHAIN".to_owned(), toolchain));
    }
    vars.push(("WDK_BUILD_OUTPUT_DIRECTORY".to_owned(), out));
    forward(&vars);
    Ok(())
}

/// The `[package.metadata.wdk]` tables of the crate in `CARGO_MAKE_WORKING_DIRECTORY`'s
/// workspace (what `get_cargo_metadata` reads), with the current package.
fn wdk_metadata() -> Result<(serde_json::Value, Option<serde_json::Value>)> {
    let manifest = Path::new(&var("CARGO_MAKE_WORKING_DIRECTORY")?).join("Cargo.toml");
    let meta = metadata(Some(&manifest))?;
    let current = var("CARGO_MAKE_CRATE_NAME")?;
    let members: Vec<&serde_json::Value> = meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut configs: Vec<serde_json::Value> = packages(&meta)
        .filter(|p| members.contains(&&p["id"]))
        .map(|p| p["metadata"]["wdk"].clone())
        .filter(|w| !w.is_null())
        .collect();
    configs.dedup();
    let package = packages(&meta)
        .find(|p| p["name"] == current.as_str())
        .cloned();
    match configs.as_slice() {
        [one] => Ok((one.clone(), package)),
        [] => Ok((serde_json::Value::Null, package)),
        _ => bail!("several different package.metadata.wdk tables in the workspace: {configs:?}"),
    }
}

/// The driver type `[package.metadata.wdk.driver-model]` declares (as
/// `setup-wdk-config-env-vars` forwarded it).
fn driver_type() -> Result<String> {
    var("WDK_BUILD_METADATA-DRIVER_MODEL-DRIVER_TYPE")
}

/// `setup-wdk-config-env-vars`: the WDK metadata as `WDK_BUILD_METADATA-…` env vars. Only the
/// WDM model is stood in (it has no fields but its type); KMDF and UMDF carry versions.
fn setup_wdk_config() -> Result<()> {
    let (wdk, _) = wdk_metadata()?;
    ensure!(
        !wdk.is_null(),
        "no package.metadata.wdk in the workspace (NoWdkConfigurationsDetected)"
    );
    let model = &wdk["driver-model"];
    let kind = model["driver-type"]
        .as_str()
        .context("package.metadata.wdk.driver-model has no driver-type")?;
    ensure!(
        kind == "WDM" && model.as_object().is_some_and(|m| m.len() == 1),
        "the stand-in forwards only a WDM driver model without fields, not {model}"
    );
    forward(&[(
        "WDK_BUILD_METADATA-DRIVER_MODEL-DRIVER_TYPE".to_owned(),
        kind.to_owned(),
    )]);
    Ok(())
}

/// `package_driver_flow_condition_script`: the flow packages only a crate with a
/// `package.metadata.wdk` table and a `cdylib` target ("no" is an error: exit 1, skip).
fn package_flow_condition() -> Result<()> {
    let (wdk, package) = wdk_metadata()?;
    let package =
        package.context("The current package should be present in the cargo metadata output")?;
    if package["metadata"]["wdk"].is_null() {
        return no(
            "Skipping package-driver-flow cargo-make task because the current crate does not \
             have a package.metadata.wdk section",
        );
    }
    let cdylib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        });
    if !cdylib {
        return no(
            "Skipping package-driver-flow cargo-make task because the current crate does not \
             contain a cdylib target",
        );
    }
    if wdk.is_null() {
        return no(
            "Skipping package-driver-flow cargo-make task because the current crate is not a driver",
        );
    }
    Ok(())
}

/// `generate_certificate_condition_script`: `certmgr -put` the test certificate; found (exit
/// 0) skips `makecert`, anything else runs it.
fn certificate_condition() -> Result<()> {
    let cer = output_dir()?.join("WDRLocalTestCert.cer");
    let status = Command::new("certmgr")
        .args([
            "-put",
            "-s",
            "WDRTestCertStore",
            "-c",
            "-n",
            "WdrLocalTestCert",
        ])
        .arg(&cer)
        .status()
        .context("Failed to run certmgr")?;
    if status.code() == Some(0) {
        return no("WDRLocalTestCert found in WDRTestCertStore. Skipping certificate generation.");
    }
    eprintln!("WDRLocalTestCert not found in WDRTestCertStore. Generating new certificate.");
    Ok(())
}

/// `WDK_BUILD_OUTPUT_DIRECTORY`, which `wdk-build-init` forwarded.
fn output_dir() -> Result<PathBuf> {
    Ok(PathBuf::from(var("WDK_BUILD_OUTPUT_DIRECTORY")?))
}

/// `copy_to_driver_package_folder`: into `<output>/<crate>_package/` (created if missing).
fn copy_to_package(file: &Path) -> Result<()> {
    let package = output_dir()?.join(format!("{}_package", var("CARGO_MAKE_CRATE_FS_NAME")?));
    if !package.exists() {
        fs::create_dir(&package).with_context(|| format!("cannot create {}", package.display()))?;
    }
    let name = file.file_name().context("a file name")?;
    fs::copy(file, package.join(name))
        .with_context(|| format!("cannot copy {} to {}", file.display(), package.display()))?;
    Ok(())
}

// ------------------------------------------------------------------------------ cargo build

/// `cargo build` for the flow's `build` task: puts `$MAKE_CHECK_IMAGE` (the cross-built
/// `hivetrack.sys`) where cargo would write `<crate>.dll` for these arguments, and a
/// placeholder `<crate>.pdb`.
fn cargo_build(args: &[String]) -> Result<()> {
    let mut profile = "debug".to_owned();
    let mut target = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--release" | "-r" => "release".clone_into(&mut profile),
            "--profile" => {
                let p = it.next().context("--profile needs a value")?;
                profile = if p == "dev" {
                    "debug".to_owned()
                } else {
                    p.clone()
                };
            }
            "--target" => target = Some(it.next().context("--target needs a value")?.clone()),
            "--locked" | "--frozen" | "--offline" | "--verbose" | "-v" | "--quiet" => {}
            other => bail!("the stand-in does not know {other:?}"),
        }
    }
    let cwd = std::env::current_dir()?;
    ensure!(
        cwd.join("Cargo.toml").is_file(),
        "cargo build ran in {}, which has no Cargo.toml",
        cwd.display()
    );
    let mut out = cwd.join("target");
    if let Some(t) = &target {
        out.push(t);
    }
    out.push(&profile);
    let name = var("CARGO_MAKE_CRATE_FS_NAME")?;
    let image = PathBuf::from(var("MAKE_CHECK_IMAGE")?);
    fs::create_dir_all(&out)?;
    copy(&image, &out.join(format!("{name}.dll")))?;
    fs::write(
        out.join(format!("{name}.pdb")),
        "make-check placeholder: the Linux cross build (lld-link) writes no PDB\n",
    )?;
    record(
        "cargo",
        args,
        &json!({ "dll": out.join(format!("{name}.dll")), "from": image }),
    )?;
    eprintln!(
        "make-check: cargo build stand-in: {} -> {}",
        image.display(),
        out.join(format!("{name}.dll")).display()
    );
    Ok(())
}

/// `cargo build --package hivetrack-cli --profile <p>` for the root's `cli` task: the profile
/// must be a cargo profile name (`dev`, `release`), not a variable cargo-make left
/// unexpanded; writes a placeholder `target/<dev: debug | p>/hivetrack.exe` in the root.
fn cli_build(args: &[String]) -> Result<()> {
    record("cargo-cli", args, &json!({}))?;
    ensure!(
        arg_after(args, "--package") == Some("hivetrack-cli"),
        "the cli task builds something else: {args:?}"
    );
    let profile = arg_after(args, "--profile").context("the cli task gives no --profile")?;
    ensure!(
        !profile.is_empty()
            && profile
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "--profile {profile:?} is not a cargo profile name (a cargo-make variable left \
         unexpanded?)"
    );
    let dir = std::env::current_dir()?
        .join("target")
        .join(if profile == "dev" { "debug" } else { profile });
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("hivetrack.exe"),
        "make-check placeholder: the CLI is cross-built by `cargo xtask build`\n",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------ SDK tools

/// `mc.exe -h <dir> -r <dir> <file.mc>`: writes `<stem>.h` into `-h`, and `<stem>.rc` naming
/// `MSG00001.bin` plus that file into `-r` (what mc.exe writes for a one-language table).
fn mc(args: &[String]) -> Result<()> {
    record("mc", args, &json!({}))?;
    let h = Path::new(arg_after(args, "-h").context("no -h <dir>")?);
    let r = Path::new(arg_after(args, "-r").context("no -r <dir>")?);
    let source = Path::new(args.last().context("no .mc file")?);
    ensure!(source.is_file(), "{} does not exist", source.display());
    ensure!(
        h.is_dir() && r.is_dir(),
        "-h {} / -r {} must exist",
        h.display(),
        r.display()
    );
    let stem = source
        .file_stem()
        .context("a file name")?
        .to_string_lossy()
        .into_owned();
    fs::write(h.join(format!("{stem}.h")), "// make-check placeholder\n")?;
    fs::write(
        r.join(format!("{stem}.rc")),
        "LANGUAGE 0x9,0x1\r\n1 11 \"MSG00001.bin\"\r\n",
    )?;
    fs::write(r.join("MSG00001.bin"), "make-check placeholder\n")?;
    Ok(())
}

/// `rc.exe [/nologo] /fo <res> <file.rc>`: every file the script names must be found from
/// the current folder (where the task runs it).
fn rc(args: &[String]) -> Result<()> {
    record("rc", args, &json!({}))?;
    let res = Path::new(arg_after(args, "/fo").context("no /fo <res>")?);
    let script = Path::new(args.last().context("no .rc file")?);
    let text =
        fs::read_to_string(script).with_context(|| format!("cannot read {}", script.display()))?;
    for named in text.split('"').skip(1).step_by(2) {
        ensure!(
            Path::new(named).is_file(),
            "{} names {named}, which is not in {}",
            script.display(),
            std::env::current_dir()?.display()
        );
    }
    fs::write(res, "make-check placeholder\n")?;
    Ok(())
}

/// `link.exe /dll /noentry /machine:x64 /out:<dll> <res>`: a resource-only x64 DLL.
fn link(args: &[String]) -> Result<()> {
    record("link", args, &json!({}))?;
    for flag in ["/dll", "/noentry", "/machine:x64"] {
        ensure!(
            args.iter().any(|a| a.eq_ignore_ascii_case(flag)),
            "no {flag}: {args:?}"
        );
    }
    let out = args
        .iter()
        .find_map(|a| a.strip_prefix("/out:"))
        .context("no /out:<dll>")?;
    let res = args.last().context("no .res")?;
    ensure!(Path::new(res).is_file(), "{res} does not exist");
    fs::write(out, "make-check placeholder: a resource-only DLL\n")?;
    Ok(())
}

// ------------------------------------------------------------------------------ WDK tools

/// The value after `flag` in `args`.
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a.eq_ignore_ascii_case(flag))
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `stampinf -f <inf> -d <date|*> -a <arch> -c <cat> -v <version|*> [-k|-u <ver>]`, in place.
fn stampinf(args: &[String]) -> Result<()> {
    record("stampinf", args, &json!({}))?;
    let inf = Path::new(arg_after(args, "-f").context("no -f <inf>")?);
    ensure!(inf.is_file(), "{} does not exist", inf.display());
    let arch = arg_after(args, "-a").context("no -a <arch>")?;
    ensure!(
        matches!(arch, "amd64" | "arm64" | "x86"),
        "unknown architecture -a {arch} (wdk-build maps only the x86_64 and aarch64 \
         Windows targets)"
    );
    let text = xtask::inf::decode(&fs::read(inf)?)?;
    let mut version: Vec<(&str, String)> = Vec::new();
    if let Some(cat) = arg_after(args, "-c") {
        version.push(("CatalogFile", cat.to_owned()));
    }
    let date = arg_after(args, "-d");
    let ver = arg_after(args, "-v");
    if date.is_some() || ver.is_some() {
        let old = ini_value(&text, "Version", "DriverVer").unwrap_or_default();
        let (old_date, old_ver) = old.split_once(',').unwrap_or((old.as_str(), "0.0.0.0"));
        let date = match date {
            Some("*") => today(),
            Some(d) => d.to_owned(),
            None => old_date.trim().to_owned(),
        };
        // `-v *`: stampinf derives a version from the time; the stand-in keeps the INF's.
        let ver = match ver {
            Some("*") | None => old_ver.trim().to_owned(),
            Some(v) => v.to_owned(),
        };
        version.push(("DriverVer", format!("{date},{ver}")));
    }
    let stamped = set_version_keys(&text.replace("$ARCH$", arch), &version);
    fs::write(inf, stamped)?;
    Ok(())
}

/// `infverif <flags> <inf>`: the project's INF rules on the stamped INF.
fn infverif(args: &[String]) -> Result<()> {
    record("infverif", args, &json!({}))?;
    let inf = Path::new(args.last().context("no INF")?);
    ensure!(inf.is_file(), "{} does not exist", inf.display());
    let report = xtask::inf::check_inf(inf, None)?;
    if !report.failures().is_empty() {
        bail!(
            "{} fails the INF rules: {}",
            inf.display(),
            report.failures().join("; ")
        );
    }
    Ok(())
}

/// `inf2cat /driver:<dir> /os:<os> ...`: a placeholder catalog per INF of the package folder.
fn inf2cat(args: &[String]) -> Result<()> {
    let value = |prefix: &str| {
        args.iter().find_map(|a| {
            a.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &a[prefix.len()..])
        })
    };
    let dir = Path::new(value("/driver:").context("no /driver:")?);
    let os = value("/os:").context("no /os:")?;
    let mut listing: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read the package folder {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    listing.sort();
    record("inf2cat", args, &json!({ "package": listing }))?;
    ensure!(
        os != "UNKNOWN" && !os.is_empty(),
        "unknown /os:{os} (wdk-build maps only the x86_64 and aarch64 Windows targets)"
    );
    let infs: Vec<&String> = listing
        .iter()
        .filter(|f| {
            Path::new(f)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("inf"))
        })
        .collect();
    ensure!(!infs.is_empty(), "no INF in {}", dir.display());
    for inf in infs {
        let text = xtask::inf::decode(&fs::read(dir.join(inf))?)?;
        let catalog = ini_value(&text, "Version", "CatalogFile")
            .with_context(|| format!("{inf} has no CatalogFile"))?;
        let mut covered = vec![inf.clone()];
        for file in ini_keys(&text, "SourceDisksFiles") {
            ensure!(
                listing.iter().any(|f| f.eq_ignore_ascii_case(&file)),
                "{inf} names {file} in [SourceDisksFiles], which is not in the package \
                 folder {}",
                dir.display()
            );
            covered.push(file);
        }
        fs::write(
            dir.join(&catalog),
            format!(
                "make-check placeholder catalog (not a signed catalog) for /os:{os}: {}\n",
                covered.join(", ")
            ),
        )?;
    }
    Ok(())
}

/// The certificate store folder (`$MAKE_CHECK_STORE/<store>/<subject>.cer`).
fn store_dir(store: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(var("MAKE_CHECK_STORE")?).join(store))
}

/// `makecert ... -ss <store> -n CN=<name> <file.cer>`: a placeholder certificate, also put in
/// the store.
fn makecert(args: &[String]) -> Result<()> {
    record("makecert", args, &json!({}))?;
    let store = arg_after(args, "-ss").context("no -ss <store>")?;
    let subject = arg_after(args, "-n").context("no -n <subject>")?;
    let name = subject.strip_prefix("CN=").unwrap_or(subject);
    let cer = Path::new(args.last().context("no output file")?);
    let text = format!("make-check placeholder certificate (not a certificate): {subject}\n");
    fs::write(cer, &text).with_context(|| format!("cannot write {}", cer.display()))?;
    let dir = store_dir(store)?;
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(format!("{name}.cer")), text)?;
    Ok(())
}

/// The certificate named `name` (case-insensitively) in `store`, if there.
fn find_certificate(store: &str, name: &str) -> Result<Option<PathBuf>> {
    let dir = store_dir(store)?;
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(None);
    };
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_stem()
            .is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(name))
    }))
}

/// `certmgr -put -s <store> -c -n <name> <file>`: exports the certificate (exit 0) or fails
/// (exit 1) when the store does not hold it.
fn certmgr(args: &[String]) -> Result<()> {
    record("certmgr", args, &json!({}))?;
    ensure!(
        args.first().is_some_and(|a| a == "-put"),
        "the stand-in knows only -put"
    );
    let store = arg_after(args, "-s").context("no -s <store>")?;
    let name = arg_after(args, "-n").context("no -n <name>")?;
    let file = Path::new(args.last().context("no output file")?);
    let Some(found) = find_certificate(store, name)? else {
        return no(format!("certmgr: no certificate {name} in {store}"));
    };
    copy(&found, file)
}

/// `signtool sign ... /s <store> /n <name> ... <file>` (and `verify`): the file must exist and,
/// to sign, the store must hold the certificate.
fn signtool(args: &[String]) -> Result<()> {
    record("signtool", args, &json!({}))?;
    let file = Path::new(args.last().context("no file")?);
    ensure!(file.is_file(), "{} does not exist", file.display());
    match args.first().map(String::as_str) {
        Some("sign") => {
            let store = arg_after(args, "/s").context("signtool sign: no /s <store>")?;
            let name = arg_after(args, "/n").context("signtool sign: no /n <name>")?;
            ensure!(
                find_certificate(store, name)?.is_some(),
                "SignTool Error: No certificates were found that met all the given criteria \
                 (/s {store} /n {name})"
            );
            Ok(())
        }
        Some("verify") => Ok(()),
        other => bail!("the stand-in knows sign and verify, not {other:?}"),
    }
}

// ------------------------------------------------------------------------------ INF text

/// The lines of `[section]` (case-insensitive), comments and blanks dropped.
fn section_lines<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim().eq_ignore_ascii_case(section);
        } else if inside && !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// The keys of `[section]`'s `key = value` lines.
fn ini_keys(text: &str, section: &str) -> Vec<String> {
    section_lines(text, section)
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect()
}

/// The value of `key` in `[section]`.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    section_lines(text, section).into_iter().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Sets each `key = value` of `[Version]`: replaces the line, else adds it after the header.
fn set_version_keys(text: &str, keys: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (key, value) in keys {
        let mut inside = false;
        let mut header = None;
        let mut hit = None;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if let Some(name) = t.strip_prefix('[').and_then(|l| l.split(']').next()) {
                inside = name.trim().eq_ignore_ascii_case("Version");
                if inside {
                    header = Some(i);
                }
            } else if inside
                && t.split('=')
                    .next()
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case(key))
            {
                hit = Some(i);
            }
        }
        let line = format!("{key} = {value}");
        match (hit, header) {
            (Some(i), _) => lines[i] = line,
            (None, Some(h)) => lines.insert(h + 1, line),
            (None, None) => lines
                .splice(0..0, ["[Version]".to_owned(), line])
                .for_each(drop),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Today's date (UTC) as stampinf writes it: `MM/DD/YYYY`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{month:02}/{day:02}/{year}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_version_keys_replaces_and_adds() {
        let text = "[Version]\nSignature = \"$WINDOWS NT$\"\nCatalogFile = old.cat ; c\n[Strings]\nA = 1\n";
        let out = set_version_keys(
            text,
            &[
                ("CatalogFile", "new.cat".to_owned()),
                ("DriverVer", "01/02/2026,1.0.0.0".to_owned()),
            ],
        );
        assert_eq!(
            ini_value(&out, "Version", "CatalogFile").as_deref(),
            Some("new.cat")
        );
        assert_eq!(
            ini_value(&out, "Version", "DriverVer").as_deref(),
            Some("01/02/2026,1.0.0.0")
        );
        assert_eq!(ini_value(&out, "Strings", "A").as_deref(), Some("1"));
    }

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10);
        assert_eq!(&t[2..3], "/");
        assert!(t[6..].parse::<u32>().is_ok_and(|y| y >= 2024));
    }

    #[test]
    fn scripts_are_told_apart() {
        let inf = "wdk_build::cargo_make::copy_to_driver_package_folder(\n  dir.join(format!(\"{}.inf\", name)))";
        assert_eq!(Script::of(inf).map(|s| s.0), Some(Script::CopyInf));
        let inx = "let source = format!(\"{}.inx\", x); let dest = format!(\"{}.inf\", x);";
        assert_eq!(Script::of(inx).map(|s| s.0), Some(Script::CopyInx));
        assert_eq!(Script::of("fn main() {}"), None);
    }
}
