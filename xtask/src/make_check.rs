//! `cargo xtask make-check`: the Windows `cargo make` flow, run by the real cargo-make on
//! Linux with stand-ins for what needs Windows.
//!
//! It installs cargo-make [`CARGO_MAKE_VERSION`] from crates.io (cached under
//! `~/.cache/hivetrack-tools/`, see `tools_root`), copies the makefiles, the driver crate and
//! the crates it depends on into `target/make-check/tree/`, and runs cargo-make there on the
//! real makefiles (the root's and `driver/Makefile.toml`, which extends wdk-build 0.6.0's
//! `rust-driver-makefile.toml`) with the stand-ins of [`stand_in`] first on `PATH`:
//! `rust-script` (each of wdk-build's `@rust` scripts, recognised by its text, does what its
//! source does), `cargo build` (puts the image `cargo xtask build` cross-built where cargo
//! would write `hivetrack.dll`), `stampinf`, `infverif` (the project's INF rules),
//! `inf2cat`, `makecert`, `certmgr` and `signtool`, and for the root's own tasks the CLI's
//! `cargo build` (a placeholder `hivetrack.exe`) and `mc.exe`, `rc.exe`, `link.exe` (the
//! message DLL). Every cargo-make task of the flow runs
//! for real; what the stand-ins replace is the work of the scripts and tools.
//!
//! Checks: `cd driver && cargo make --print-steps` plans wdk-build's flow, not the
//! `workspace` task (`driver/Cargo.toml` has its own `[workspace]`, and cargo-make would make
//! its path dependencies members); the root's `cargo make package` (its default task, which
//! runs `driver-package`, `cli` and `messages` first) gives the nested run
//! `driver/` as its workspace directory, links and loads `driver/target/
//! rust-driver-makefile.toml`, and runs the flow to the end; the package folder
//! (for the `development` and `release` profiles, [`PROFILES`])
//! `driver/target/{debug,release}/hivetrack_package/` then holds the built `hivetrack.sys`,
//! `hivetrack.pdb`, the stamped `hivetrack.inf`, the catalog its `CatalogFile` names and
//! `WDRLocalTestCert.cer`; the recorded tool calls show stampinf stamping the INF for amd64,
//! infverif `/v /w` passing it, inf2cat seeing the `.sys` and `.inf`, signtool signing the
//! `.sys` and the `.cat`; the root's tasks built the CLI with the profile's cargo profile,
//! ran mc/rc/link in `target/<profile>/messages/`, and put `hivetrack.exe` and
//! `hivetrack-events.dll` into the package. `--mutate` reintroduces each break of [`MUTATIONS`] and requires
//! each to fail with its message.
//!
//! What it does not run: Microsoft's tools (nothing is really stamped, verified by infverif,
//! catalogued or signed), the driver build for the flow's host target, and the parts of
//! `wdk-build-init` that need a WDK (`setup_path`, `setup_wdk_version`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::util::{cargo, copy, describe, repo_root, run};

pub mod stand_in;

/// The cargo-make release the check runs (wdk-build 0.6.0's makefile needs 0.37.16 or later).
pub const CARGO_MAKE_VERSION: &str = "0.37.24";

/// What the stand-in `cargo build` puts in place when `cargo xtask build` has not run.
const IMAGE_PLACEHOLDER: &str =
    "make-check placeholder image: run `cargo xtask build` first to package the real driver\n";

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
    "usermode-client/messages",
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
        name: "driver crate not a cdylib",
        file: "driver/Cargo.toml",
        from: "crate-type = [\"cdylib\"]",
        to: "crate-type = [\"rlib\"]",
        says: "no driver package at",
    },
    Mutation {
        name: "cli profile from CARGO_MAKE_CARGO_PROFILE",
        file: "Makefile.toml",
        from: "\"--profile\", \"${HIVETRACK_CARGO_PROFILE}\"]",
        to: "\"--profile\", \"${CARGO_MAKE_CARGO_PROFILE}\"]",
        says: "is not a cargo profile name",
    },
    Mutation {
        name: "package without hivetrack-events.dll",
        file: "Makefile.toml",
        from: "cp target/${HIVETRACK_PROFILE_DIR}/messages/hivetrack-events.dll",
        to: "echo no",
        says: "the package has no hivetrack-events.dll",
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
    let image = if target.join("package/hivetrack.sys").is_file() {
        "the image `cargo xtask build` cross-built"
    } else {
        "a PLACEHOLDER image (run `cargo xtask build` first for the real one)"
    };
    eprintln!(
        "make-check: ok: the real cargo-make {CARGO_MAKE_VERSION} runs the driver flow out of \
         workspace mode; the nested run loads driver/target/rust-driver-makefile.toml and runs \
         wdk-build's flow to the package with stand-ins for rust-script, cargo build ({image}), \
         stampinf, infverif (the INF rules), inf2cat, makecert, certmgr and signtool, for the \
         development and release profiles, and the root's cli, messages (stand-ins for mc.exe, \
         rc.exe, link.exe) and package tasks: driver/target/{{debug,release}}/hivetrack_package/ \
         holds hivetrack.sys, .pdb, .inf, .cat, WDRLocalTestCert.cer, hivetrack.exe and \
         hivetrack-events.dll ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    check_production(&tools, &work)?;
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
    for dir in [tree.clone(), work.join("cert-store")] {
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
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
    stand_in::write_stand_ins(&bin)?;
    check_driver_alone(tools, &bin, work, &tree)?;
    for profile in PROFILES {
        check_nested(tools, &bin, work, &tree, profile)?;
    }
    Ok(())
}

/// The cargo the stand-in `cargo` forwards to: `$CARGO` (set by `cargo xtask`), else the
/// first `cargo` on `PATH`.
fn real_cargo() -> Result<PathBuf> {
    if let Some(c) = std::env::var_os("CARGO") {
        return Ok(PathBuf::from(c));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("cargo"))
        .find(|c| c.is_file())
        .context("no cargo on PATH")
}

/// `cd driver && cargo make --print-steps`: cargo-make's execution plan for the driver must be
/// wdk-build's flow (`wdk-build-init`, `build`, ...), not the `workspace` task that runs the
/// flow in each workspace member.
fn check_driver_alone(tools: &Path, bin: &Path, work: &Path, tree: &Path) -> Result<()> {
    let log = work.join("driver-alone.log");
    let (_, out) = cargo_make(tools, bin, &tree.join("driver"), &log, &["--print-steps"])?;
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

/// A cargo-make profile the README documents, and what wdk-build 0.6.0 makes of it.
struct Profile {
    /// `cargo make --profile <this>`.
    cargo_make: &'static str,
    /// The arguments the flow's `build` task gives cargo (`wdk-build-init` adds
    /// `--profile release` only for the cargo-make profile `release`).
    build_args: &'static [&'static str],
    /// The output folder under `driver/target/` (`configure_wdf_build_output_dir`: `debug`
    /// for cargo's `dev` profile, else the profile's name).
    folder: &'static str,
    /// Whether the test certificate store is empty when this run starts (the first run
    /// makes the certificate; later ones find it and export it with certmgr).
    fresh_store: bool,
}

/// The profiles make-check runs the root's `driver-package` with, in order: cargo-make's
/// default (`development`, cargo profile `dev`) and `release`. Not `production`: cargo-make
/// maps it to the cargo profile `production`, so wdk-build looks for the driver in
/// `target/production/` while `cargo build` (given no profile) writes `target/debug/`.
const PROFILES: &[Profile] = &[
    Profile {
        cargo_make: "development",
        build_args: &["build"],
        folder: "debug",
        fresh_store: true,
    },
    Profile {
        cargo_make: "release",
        build_args: &["build", "--profile", "release"],
        folder: "release",
        fresh_store: false,
    },
];

/// `cargo make --profile <profile> driver-package` at the root: the nested run must link and
/// load the wdk-build makefile under driver/target and run wdk-build's flow to the signed
/// package.
fn check_nested(
    tools: &Path,
    bin: &Path,
    work: &Path,
    tree: &Path,
    profile: &Profile,
) -> Result<()> {
    let log = work.join(format!("nested-{}.log", profile.cargo_make));
    let tools_log = work.join("tools.log");
    let _ = fs::remove_file(&tools_log);
    let (ok, out) = cargo_make(
        tools,
        bin,
        tree,
        &log,
        &["--profile", profile.cargo_make, "package"],
    )?;
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
    ensure!(
        out.contains("make-check: load_script CARGO_MAKE_WORKSPACE_WORKING_DIRECTORY="),
        "driver/Makefile.toml's load_script never ran (log: {})",
        log.display()
    );
    ensure!(
        driver.join("target/rust-driver-makefile.toml").is_file(),
        "driver/target/rust-driver-makefile.toml was not linked (log: {})",
        log.display()
    );
    if !ok {
        let mut why: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once("make-check stand-in ").map(|(_, w)| w.trim()))
            .collect();
        why.dedup();
        bail!(
            "the driver flow failed{}{} (log: {})",
            if why.is_empty() { "" } else { ": " },
            why.join(" | "),
            log.display()
        );
    }
    let calls = read_calls(&tools_log)?;
    check_package(&driver, &calls, profile)
        .and_then(|()| check_root_package(tree, &calls, profile))
        .with_context(|| {
            format!(
                "the driver flow (--profile {}) ran but its package is wrong (log: {}, tool calls: \
             {})",
                profile.cargo_make,
                log.display(),
                tools_log.display()
            )
        })
}

/// One stand-in call from `tools.log`.
struct Call {
    tool: String,
    args: Vec<String>,
    cwd: PathBuf,
    extra: serde_json::Value,
}

/// The calls the stand-ins recorded, in order.
fn read_calls(log: &Path) -> Result<Vec<Call>> {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            Ok(Call {
                tool: v["tool"].as_str().unwrap_or_default().to_owned(),
                args: v["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
                cwd: PathBuf::from(v["cwd"].as_str().unwrap_or_default()),
                extra: v["extra"].clone(),
            })
        })
        .collect()
}

/// The wdk-build scripts the default flow runs (as the stand-in names them).
const FLOW_SCRIPTS: &[&str] = &[
    "load_script",
    "wdk-build-init",
    "setup-wdk-config-env-vars",
    "package-driver-flow (condition)",
    "generate-driver-binary-file (condition)",
    "generate-driver-binary-file",
    "copy-driver-binary-to-package",
    "copy-pdb-to-package",
    "copy-inx-to-output",
    "copy-inf-to-package",
    "generate-certificate (condition)",
    "copy-certificate-to-package",
];

/// The package the flow produced, where wdk-build 0.6.0 puts it
/// (`configure_wdf_build_output_dir`: `<CARGO_MAKE_CRATE_CUSTOM_TRIPLE_TARGET_DIRECTORY>/debug`
/// for the dev profile, else the profile's name; then `copy_to_driver_package_folder`:
/// `hivetrack_package/`), and the tool calls that made it.
fn check_package(driver: &Path, calls: &[Call], profile: &Profile) -> Result<()> {
    let out = driver.join("target").join(profile.folder);
    let package = out.join("hivetrack_package");
    // (The root's `package` task copies the CLI files into that folder whatever the driver
    // flow did: the driver's own files say whether it packaged.)
    ensure!(
        ["hivetrack.sys", "hivetrack.inf"]
            .iter()
            .any(|f| package.join(f).is_file()),
        "no driver package at {}: the flow skipped packaging",
        package.display()
    );
    let ran: Vec<&str> = calls
        .iter()
        .filter(|c| c.tool == "rust-script")
        .filter_map(|c| c.extra["task"].as_str())
        .collect();
    let missing: Vec<&&str> = FLOW_SCRIPTS.iter().filter(|s| !ran.contains(s)).collect();
    ensure!(
        missing.is_empty(),
        "wdk-build scripts that did not run: {missing:?} (ran: {ran:?})"
    );
    let of = |tool: &'static str| calls.iter().filter(move |c| c.tool == tool);
    // build: `cargo build` in driver/ with the profile's arguments. It runs twice:
    // `package-driver-flow` depends on `build`, and its `run_task` (`package-driver`) starts a
    // sub-flow whose `generate-driver-binary-file` depends on `build` again.
    // Under a CI runner cargo-make adds `--verbose` (its stable.toml maps `CARGO_MAKE_CI=true`,
    // set when ci_info detects CI, to `CARGO_MAKE_CARGO_VERBOSE_FLAGS`, which rust.toml's
    // `build` task passes right after `build`); it changes only cargo's output.
    let expected = |args: &[String]| {
        let quiet: Vec<&str> = args
            .iter()
            .enumerate()
            .filter(|(i, a)| !(*i == 1 && *a == "--verbose"))
            .map(|(_, a)| a.as_str())
            .collect();
        quiet == profile.build_args
    };
    let builds: Vec<&Call> = of("cargo").collect();
    ensure!(
        !builds.is_empty() && builds.iter().all(|b| b.cwd == driver && expected(&b.args)),
        "the build task should run `cargo build` in driver/: {:?}",
        builds.iter().map(|c| (&c.cwd, &c.args)).collect::<Vec<_>>()
    );
    // The package's files.
    let image = PathBuf::from(builds[0].extra["from"].as_str().unwrap_or_default());
    let sys = package.join("hivetrack.sys");
    ensure!(sys.is_file(), "the package has no hivetrack.sys");
    ensure!(
        fs::read(&sys)? == fs::read(&image)?,
        "the package's hivetrack.sys is not the image built ({})",
        image.display()
    );
    for file in ["hivetrack.pdb", "hivetrack.inf", "WDRLocalTestCert.cer"] {
        ensure!(package.join(file).is_file(), "the package has no {file}");
    }
    let inf = xtask::inf::decode(&fs::read(package.join("hivetrack.inf"))?)?;
    let catalog = inf
        .lines()
        .filter_map(|l| l.split(';').next()?.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("CatalogFile"))
        .map(|(_, v)| v.trim().to_owned())
        .context("the package's hivetrack.inf has no CatalogFile")?;
    ensure!(
        package.join(&catalog).is_file(),
        "the package has no {catalog} (the INF's CatalogFile)"
    );
    // stampinf stamped the INF in the output folder, for amd64, with the catalog name.
    let inf_out = out.join("hivetrack.inf").display().to_string();
    let expect = |tool: &'static str, what: &str, ok: &dyn Fn(&Call) -> bool| {
        let seen: Vec<&Vec<String>> = of(tool).map(|c| &c.args).collect();
        ensure!(of(tool).any(ok), "{tool} never {what}: calls {seen:?}");
        Ok(())
    };
    let has = |c: &Call, a: &str| c.args.iter().any(|x| x == a);
    expect(
        "stampinf",
        "stamped the INF for amd64 with hivetrack.cat",
        &|c| has(c, &inf_out) && has(c, "amd64") && has(c, "hivetrack.cat"),
    )?;
    expect("infverif", "checked the stamped INF with /v /w", &|c| {
        has(c, &inf_out) && has(c, "/v") && has(c, "/w")
    })?;
    let driver_arg = format!("/driver:{}", package.display());
    expect(
        "inf2cat",
        "saw the package with hivetrack.sys and hivetrack.inf",
        &|c| {
            let listing = c.extra["package"].as_array().cloned().unwrap_or_default();
            has(c, &driver_arg)
                && has(c, "/os:10_x64")
                && ["hivetrack.sys", "hivetrack.inf"]
                    .iter()
                    .all(|f| listing.iter().any(|l| l == f))
        },
    )?;
    let cer = out.join("WDRLocalTestCert.cer").display().to_string();
    expect("certmgr", "looked for the test certificate", &|c| {
        has(c, "-put") && has(c, &cer)
    })?;
    if profile.fresh_store {
        expect("makecert", "made the test certificate", &|c| has(c, &cer))?;
    }
    for signed in [&sys, &package.join(&catalog)] {
        let path = signed.display().to_string();
        expect("signtool", &format!("signed {path}"), &|c| {
            c.args.first().is_some_and(|a| a == "sign") && has(c, &path)
        })?;
    }
    Ok(())
}

/// The root's `cli`, `messages` and `package` tasks: the CLI built with the profile's cargo
/// profile, hivetrack-events.dll made by mc/rc/link in `target/<folder>/messages/`, and both
/// copied into the driver package (audit 21c H3: the package had no DLL, and `cli` ran
/// `cargo build --profile ${CARGO_MAKE_CARGO_PROFILE}` unexpanded).
fn check_root_package(tree: &Path, calls: &[Call], profile: &Profile) -> Result<()> {
    let of = |tool: &'static str| calls.iter().filter(move |c| c.tool == tool);
    let cargo_profile = if profile.folder == "debug" {
        "dev"
    } else {
        profile.folder
    };
    ensure!(
        of("cargo-cli").any(|c| c.cwd == tree
            && c.args
                .windows(2)
                .any(|w| w[0] == "--profile" && w[1] == cargo_profile)),
        "the cli task should run `cargo build --package hivetrack-cli --profile {cargo_profile}` \
         at the root: {:?}",
        of("cargo-cli").map(|c| &c.args).collect::<Vec<_>>()
    );
    let messages = tree.join("target").join(profile.folder).join("messages");
    for tool in ["mc", "rc", "link"] {
        ensure!(
            of(tool).any(|c| c.cwd == messages),
            "the messages task should run {tool}.exe in {}: {:?}",
            messages.display(),
            of(tool).map(|c| (&c.cwd, &c.args)).collect::<Vec<_>>()
        );
    }
    let package = tree
        .join("driver/target")
        .join(profile.folder)
        .join("hivetrack_package");
    for file in ["hivetrack.exe", "hivetrack-events.dll"] {
        ensure!(
            package.join(file).is_file(),
            "the package has no {file} (`hivetrack service install` needs hivetrack-events.dll \
             next to hivetrack.exe)"
        );
    }
    Ok(())
}

/// `cargo make --profile production driver-package` must still fail where wdk-build 0.6.0
/// makes it fail (see [`PROFILES`]): the README tells users not to use it, and this says
/// when that stops being true. Runs on the tree [`check_tree`] left.
fn check_production(tools: &Path, work: &Path) -> Result<()> {
    let tree = work.join("tree");
    let log = work.join("nested-production.log");
    let (ok, out) = cargo_make(
        tools,
        &work.join("bin"),
        &tree,
        &log,
        &["--profile", "production", "driver-package"],
    )?;
    ensure!(
        !ok,
        "`cargo make --profile production` now packages the driver: the README and PROFILES \
         say it cannot (log: {})",
        log.display()
    );
    let missing = tree.join("driver/target/production/hivetrack.dll");
    ensure!(
        out.contains(&missing.display().to_string())
            && tree.join("driver/target/debug/hivetrack.dll").is_file(),
        "`cargo make --profile production` failed, but not because the build wrote \
         target/debug while wdk-build looked for {} (log: {})",
        missing.display(),
        log.display()
    );
    eprintln!(
        "make-check: as documented, `cargo make --profile production` fails: wdk-build looks \
         for {} while `cargo build` (no profile given) writes target/debug",
        missing.display()
    );
    Ok(())
}

/// Runs the installed cargo-make in `dir` with the stand-ins first on `PATH`; returns whether
/// it succeeded and its combined output (also written to `log`).
fn cargo_make(
    tools: &Path,
    bin: &Path,
    dir: &Path,
    log: &Path,
    args: &[&str],
) -> Result<(bool, String)> {
    let path = std::env::join_paths([bin.to_path_buf(), tools.to_path_buf()].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let work = log.parent().context("the log is in the work folder")?;
    let image = driver_image(work)?;
    let mut cmd = Command::new(tools.join("cargo-make"));
    cmd.arg("make")
        .args(["--disable-check-for-updates", "--no-color"])
        .args(args)
        .current_dir(dir)
        .env("PATH", path)
        .env("CARGO_MAKE_RUST_SCRIPT_PROVIDER", "rust-script")
        // wdk-build's init plugin runs `cargo install rust-script --version 0.30.0`: keep that
        // install in the tools cache (done once; the stand-in earlier on PATH is what runs).
        .env("CARGO_INSTALL_ROOT", tools.join("../rust-script"))
        .env("MAKE_CHECK_REAL_CARGO", real_cargo()?)
        .env("MAKE_CHECK_LOG", work.join("tools.log"))
        .env("MAKE_CHECK_STORE", work.join("cert-store"))
        .env("MAKE_CHECK_IMAGE", image)
        // As from a WDK developer prompt: cargo's default target folder, the host target.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
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
    Ok((out.status.success(), text))
}

/// The image the stand-in `cargo build` puts in place: `cargo xtask build`'s
/// `target/package/hivetrack.sys` (CI runs `build` before `make-check`), else a placeholder
/// in `work` ([`IMAGE_PLACEHOLDER`]).
fn driver_image(work: &Path) -> Result<PathBuf> {
    let built = work
        .parent()
        .context("the work folder is in target/")?
        .join("package/hivetrack.sys");
    if built.is_file() {
        return Ok(built);
    }
    let placeholder = work.join("hivetrack-placeholder.sys");
    fs::write(&placeholder, IMAGE_PLACEHOLDER)?;
    Ok(placeholder)
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
