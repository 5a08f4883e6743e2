//! `cargo xtask make-check`: the Windows `cargo make` layout, run by the real cargo-make on
//! Linux.
//!
//! It installs cargo-make [`CARGO_MAKE_VERSION`] from crates.io (cached under
//! `~/.cache/hivetrack-tools/`, see `tools_root`), copies the makefiles, the driver crate and the crates it depends on into
//! `target/make-check/tree/`, and runs cargo-make there with a stand-in `rust-script` first on
//! `PATH`:
//!
//! - for `driver/Makefile.toml`'s `load_script`, the stand-in does what wdk-build 0.6.0's
//!   `load_rust_driver_makefile` does (links `$CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY/target/
//!   rust-driver-makefile.toml` to the makefile of the wdk-build package `cargo metadata`
//!   finds) and records the directories cargo-make gave it;
//! - for the first wdk-build task that the flow then runs, it records the task and stops the
//!   flow there: wdk-build's tasks are rust-script programs that compile wdk-build for the
//!   host, which does not compile on Linux unpatched, and the driver build itself needs the
//!   WDK.
//!
//! What that proves with the real cargo-make: the driver flow is not run as a cargo-make
//! workspace (`cd driver && cargo make --print-steps` must plan wdk-build's steps, not the
//! `workspace` task: `driver/Cargo.toml` has its own `[workspace]`, and cargo-make would make
//! its path dependencies members), and the root's nested `cargo make` in `driver/` gets
//! `driver/` as its workspace directory, links and loads
//! `driver/target/rust-driver-makefile.toml` (the real wdk-build makefile) and reaches its
//! first task. The INF the flow would stamp is checked with `xtask::inf` (the rules
//! `infverif /w` applies). `--mutate` reintroduces each break (the driver workspace, the
//! nested working directory, an undecorated `[DefaultInstall]`, DIRID 12) and requires each
//! to fail with its message.
//!
//! What it does not run: wdk-build's tasks past the first (build, stampinf, infverif,
//! inf2cat, signing) and so no stand-in for the WDK tools; those run only on Windows.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::util::{cargo, copy, describe, repo_root, run};

/// The cargo-make release the check runs (wdk-build 0.6.0's makefile needs 0.37.16 or later).
pub const CARGO_MAKE_VERSION: &str = "0.37.24";

/// What the stand-in prints when it stops the flow at wdk-build's first task.
const STOP_MARKER: &str = "make-check: wdk-build task reached";

/// The files of the repository the flow reads, copied into the sandbox.
const TREE: &[&str] = &[
    "Makefile.toml",
    "driver/Makefile.toml",
    "driver/Cargo.toml",
    "driver/Cargo.lock",
    "driver/hivetrack.inx",
    "driver/build.rs",
    "driver/src",
    "protocol/Cargo.toml",
    "protocol/src",
    "tracker/Cargo.toml",
    "tracker/src",
];

/// A break `--mutate` reintroduces: the file, the text replaced, and what the check must say.
struct Mutation {
    name: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
    says: &'static str,
}

const MUTATIONS: &[Mutation] = &[
    Mutation {
        name: "driver [workspace] made a cargo-make workspace",
        file: "driver/Makefile.toml",
        from: "default_to_workspace = false",
        to: "",
        says: "ran the driver flow as a cargo-make workspace",
    },
    Mutation {
        name: "nested cargo make with the wrong working directory",
        file: "Makefile.toml",
        from: "env = { CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY = \"${CARGO_MAKE_WORKING_DIRECTORY}/driver\" }",
        to: "",
        says: "the nested cargo make in driver/ ran with CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY",
    },
    Mutation {
        name: "undecorated DefaultInstall",
        file: "driver/hivetrack.inx",
        from: "[DefaultInstall.NTamd64]",
        to: "[DefaultInstall]",
        says: "is not architecture-decorated",
    },
    Mutation {
        name: "DIRID 12",
        file: "driver/hivetrack.inx",
        from: "DefaultDestDir = 13",
        to: "DefaultDestDir = 12",
        says: "driver package isolation",
    },
];

/// Runs the check on the repository's files; with `mutate`, also each [`MUTATIONS`] entry,
/// which must fail with its message.
///
/// # Errors
/// The first failed check, with what went wrong.
pub fn make_check(target: &Path, mutate: bool) -> Result<()> {
    let tools = install_cargo_make(target)?;
    let work = target.join("make-check");
    let started = std::time::Instant::now();
    check_tree(&tools, &work, None).context("cargo make layout check failed")?;
    eprintln!(
        "make-check: ok: the real cargo-make {CARGO_MAKE_VERSION} runs the driver flow out of \
         workspace mode, the nested run loads driver/target/rust-driver-makefile.toml and \
         reaches wdk-build's first task, and the INF passes the infverif /w rules ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if mutate {
        for m in MUTATIONS {
            match check_tree(&tools, &work, Some(m)) {
                Ok(()) => bail!("--mutate: reintroducing \"{}\" was not caught", m.name),
                Err(e) => {
                    let message = format!("{e:#}");
                    ensure!(
                        message.contains(m.says),
                        "--mutate: \"{}\" failed, but not with \"{}\": {message}",
                        m.name,
                        m.says
                    );
                    eprintln!("make-check: --mutate: caught \"{}\": {message}", m.name);
                }
            }
        }
    }
    Ok(())
}

/// Where the pinned tools are installed: `HIVETRACK_TOOLS_DIR`, else a per-user cache
/// (`$XDG_CACHE_HOME` or `~/.cache`, `hivetrack-tools/`), else `target/tools`. Outside the
/// checkout, so a fresh clone on a machine that ran the check before (CI) does not compile
/// cargo-make again; keyed by version, so a new pin installs beside the old one.
fn tools_root(target: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("HIVETRACK_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    cache.map_or_else(|| target.join("tools"), |c| c.join("hivetrack-tools"))
}

/// Installs cargo-make into the tools directory ([`tools_root`]) once; returns its `bin`
/// directory.
fn install_cargo_make(target: &Path) -> Result<PathBuf> {
    let root = tools_root(target).join(format!("cargo-make-{CARGO_MAKE_VERSION}"));
    let bin = root.join("bin");
    let installed = Command::new(bin.join("cargo-make"))
        .args(["make", "--version"])
        .output()
        .ok()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_MAKE_VERSION));
    if installed.is_none() {
        run(cargo()
            .args([
                "install",
                "--locked",
                "--version",
                CARGO_MAKE_VERSION,
                "--root",
            ])
            .arg(&root)
            .arg("cargo-make"))?;
    }
    Ok(bin)
}

/// Copies the tree into `work/tree`, applies `mutation`, and runs the checks.
fn check_tree(tools: &Path, work: &Path, mutation: Option<&Mutation>) -> Result<()> {
    let tree = work.join("tree");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot clear {}", tree.display()))?;
    }
    let root = repo_root();
    for item in TREE {
        copy_all(&root.join(item), &tree.join(item))?;
    }
    if let Some(m) = mutation {
        let path = tree.join(m.file);
        let text = fs::read_to_string(&path)?;
        ensure!(
            text.contains(m.from),
            "--mutate: {} no longer contains {:?}",
            m.file,
            m.from
        );
        fs::write(&path, text.replacen(m.from, m.to, 1))?;
    }
    let bin = work.join("bin");
    write_stand_in(&bin)?;
    check_inf_of(&tree)?;
    check_driver_alone(tools, &bin, work, &tree)?;
    check_nested(tools, &bin, work, &tree)
}

/// The INF the flow stamps, against the rules `infverif /w` applies (the flow's infverif
/// runs only on Windows).
fn check_inf_of(tree: &Path) -> Result<()> {
    let report = xtask::inf::check_inf(&tree.join("driver/hivetrack.inx"), None)?;
    if !report.failures().is_empty() {
        bail!(
            "driver/hivetrack.inx would fail infverif /w: {}",
            report.failures().join("; ")
        );
    }
    Ok(())
}

/// `cd driver && cargo make --print-steps`: cargo-make's execution plan for the driver must be
/// wdk-build's flow (`wdk-build-init`, `build`, ...), not the `workspace` task that runs the
/// flow in each workspace member.
fn check_driver_alone(tools: &Path, bin: &Path, work: &Path, tree: &Path) -> Result<()> {
    let log = work.join("driver-alone.log");
    let out = cargo_make(tools, bin, &tree.join("driver"), &log, &["--print-steps"])?;
    let steps: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: \""))
        .filter_map(|l| l.strip_suffix("\","))
        .collect();
    if steps.contains(&"workspace") {
        bail!(
            "cargo-make ran the driver flow as a cargo-make workspace (plan: {steps:?}; \
             driver/Cargo.toml's own [workspace] makes ../protocol and ../tracker members, \
             where no wdk-build is found): set default_to_workspace = false in \
             driver/Makefile.toml (log: {})",
            log.display()
        );
    }
    ensure!(
        steps.contains(&"wdk-build-init") && steps.contains(&"build"),
        "cargo-make's plan for driver/ is not wdk-build's flow: {steps:?} (log: {})",
        log.display()
    );
    ensure!(
        out.contains("make-check: load_script CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY="),
        "driver/Makefile.toml's load_script never ran (log: {})",
        log.display()
    );
    Ok(())
}

/// `cargo make driver-package` at the root: the nested run must link and load the wdk-build
/// makefile under driver/target and reach its first task.
fn check_nested(tools: &Path, bin: &Path, work: &Path, tree: &Path) -> Result<()> {
    let log = work.join("nested.log");
    let out = cargo_make(tools, bin, tree, &log, &["driver-package"])?;
    let driver = tree.join("driver");
    for line in out.lines() {
        if let Some(dir) = line
            .trim()
            .strip_prefix("make-check: load_script CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY=")
        {
            ensure!(
                Path::new(dir) == driver,
                "the nested cargo make in driver/ ran with CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY \
                 = {dir} (inherited from the root run): wdk-build links \
                 rust-driver-makefile.toml under {dir}/target while driver/Makefile.toml \
                 extends driver/target/rust-driver-makefile.toml; set it to driver/ in the \
                 root's driver-package task (log: {})",
                log.display()
            );
        }
    }
    expect_reached(&out, &log, &driver)
}

/// The flow got past loading the makefiles: the stand-in was called for a wdk-build task
/// with the driver's directory.
fn expect_reached(out: &str, log: &Path, driver: &Path) -> Result<()> {
    ensure!(
        out.contains("make-check: load_script CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY="),
        "driver/Makefile.toml's load_script never ran (log: {})",
        log.display()
    );
    ensure!(
        out.contains(STOP_MARKER),
        "the flow did not reach wdk-build's first task: cargo-make could not load \
         driver/target/rust-driver-makefile.toml (log: {})",
        log.display()
    );
    ensure!(
        driver.join("target/rust-driver-makefile.toml").is_file(),
        "driver/target/rust-driver-makefile.toml was not linked (log: {})",
        log.display()
    );
    Ok(())
}

/// Runs the installed cargo-make in `dir` with the stand-ins first on `PATH`; returns its
/// combined output (also written to `log`). The flow is expected to stop at the stand-in.
fn cargo_make(tools: &Path, bin: &Path, dir: &Path, log: &Path, args: &[&str]) -> Result<String> {
    let path = std::env::join_paths([bin.to_path_buf(), tools.to_path_buf()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let mut cmd = Command::new(tools.join("cargo-make"));
    cmd.arg("make")
        .args(["--disable-check-for-updates", "--no-color"])
        .args(args)
        .current_dir(dir)
        .env("PATH", path)
        .env("CARGO_MAKE_RUST_SCRIPT_PROVIDER", "rust-script")
        // wdk-build's init plugin runs `cargo install rust-script --version 0.30.0`: keep that
        // install under target/ (done once; the stand-in earlier on PATH is what runs).
        .env("CARGO_INSTALL_ROOT", tools.join("../rust-script"))
        .env("MAKE_CHECK_XTASK", std::env::current_exe()?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO_MAKE") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(log, &text)?;
    Ok(text)
}

/// Writes `bin/rust-script`, which calls back into this xtask ([`stand_in`]).
fn write_stand_in(bin: &Path) -> Result<()> {
    fs::create_dir_all(bin)?;
    let script = bin.join("rust-script");
    fs::write(
        &script,
        "#!/bin/sh\n# make-check's stand-in for rust-script (see xtask/src/make_check.rs)\n\
         exec \"$MAKE_CHECK_XTASK\" make-check-stand-in rust-script \"$@\"\n",
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// The stand-in `rust-script`: `--version`; the load script (link the wdk-build makefile as
/// wdk-build 0.6.0's `load_rust_driver_makefile` does); any other script stops the flow.
///
/// # Errors
/// When the script cannot be read or the link cannot be made; every other script "fails"
/// on purpose, after printing [`STOP_MARKER`].
pub fn stand_in(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--version") {
        println!("rust-script 0.35.0 (make-check stand-in)");
        return Ok(());
    }
    let script = args
        .iter()
        .rev()
        .find(|a| Path::new(a).is_file())
        .map(fs::read_to_string)
        .transpose()?
        .unwrap_or_default();
    if script.contains("load_rust_driver_makefile") {
        let workspace = std::env::var("CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY")
            .context("CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY should be set by cargo-make")?;
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
        return Ok(());
    }
    // wdk-build's plugin writes each task's script to .../cargo-make-script/<task>/...
    let task = args
        .iter()
        .rev()
        .find_map(|a| {
            let p = Path::new(a);
            p.is_file()
                .then(|| p.parent()?.file_name()?.to_str().map(str::to_owned))
                .flatten()
        })
        .unwrap_or_default();
    println!("{STOP_MARKER}: {task}; wdk-build's rust-script tasks run on Windows only");
    bail!("{STOP_MARKER}")
}

/// The wdk-build package directory, as `cargo metadata` run in the current directory finds
/// it (what `load_rust_driver_makefile` does).
fn wdk_build_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let found: Vec<&str> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
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

/// Copies a file or a directory tree.
fn copy_all(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_all(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        copy(from, to)
    }
}
