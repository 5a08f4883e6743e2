//! `cargo xtask wine-e2e`: the shipped INF, `hivetrack.sys` and `hivetrack.exe` under Wine.
//!
//! Wine is an implementation of the PE loader, the service control manager, setupapi's INF
//! processing and the I/O manager that no one here wrote. In a private prefix under
//! `target/wine/`, this installs the package by running the INF's architecture-decorated
//! `[DefaultInstall.NTamd64]` section with `InstallHinfSection` (the section `pnputil /add-driver
//! hivetrack.inf /install` runs on Windows; Windows 10 1903+ hands a primitive driver passed to
//! `InstallHinfSection` to `DiInstallDriver`, "Creating a primitive driver", Microsoft Learn),
//! starts the service, drives the real CLI over `DeviceIoControl` (good and malformed
//! requests), stops the service and proves `DriverUnload` ran (its `DbgPrint` line, and the
//! device gone), then deletes the service and checks its key is gone. Before the stop it runs
//! `hivetrack service run --once`, `service install` (the copies in the prefix's
//! `Program Files\hivetrack` that the Event Log source's key and the service `hivetracksvc`
//! name, the service started by Wine's service manager and writing its first event to a
//! `--jsonl` file; the ACL checks run and, Wine's files all belonging to the Unix user, say
//! "under Wine, not enforced" where Windows would refuse) and `service uninstall` (both keys
//! and the copies gone; the driver's stop that follows proves the service closed its device
//! handle). Then the Windows Server 2016/2019 route (audit 21c H4): `hivetrack driver install
//! --legacy` (and `uninstall --legacy`) refused while the INF's service exists and, with the
//! prefix's build set to 18362, without `--force`; with the build set to 17763 (Server 2019)
//! and `--boot` the file in `system32\drivers`, the service key as the INF's with its
//! description and `Parameters\Altitude`, the driver answering the CLI, `Start` 1 set after
//! the start; `driver uninstall --legacy` leaves neither key nor file (about 1.5 s).
//!
//! What it cannot show: registry filtering (Wine 8's ntoskrnl has no `CmRegisterCallbackEx`, so
//! no registry callback ever fires there), and the driver store. Wine 8 has no `pnputil` and
//! no driver store: its setupapi resolves DIRID 13 to its fallback folder for unknown DIRIDs,
//! `system32\unknown`, and `ImagePath` points there, so the service loads the copied file; the
//! removal is `sc delete` (what `pnputil /delete-driver /uninstall` does to the service), and
//! the copied file stays in that folder (on Windows the driver store removes the package).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    setup::{Package, ensure_packages},
    util::{describe, repo_root},
};

/// Debian packages the Wine run needs.
const WINE_PACKAGES: &[Package] = &[
    Package {
        name: "wine",
        why: "Wine's programs (wine, wineserver, net, reg, rundll32)",
    },
    Package {
        name: "wine64",
        why: "the 64-bit Wine loader",
    },
    Package {
        name: "gcc-mingw-w64-x86-64",
        why: "builds the bcryptprimitives test shim",
    },
];

/// Seconds any single Wine command may take before it is treated as hung.
const COMMAND_TIMEOUT_S: &str = "60";

/// A Linux path as Wine's `Z:` drive sees it.
fn wine_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// A private Wine prefix and the commands run in it.
struct Prefix {
    dir: PathBuf,
    log_dir: PathBuf,
}

impl Prefix {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(COMMAND_TIMEOUT_S)
            .arg(program)
            .env("WINEPREFIX", &self.dir)
            // DbgPrint reaches Wine's log only on this channel; everything else stays quiet.
            .env("WINEDEBUG", "-all,warn+debugstr")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        cmd
    }

    fn wine(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("wine");
        cmd.args(args);
        cmd
    }

    /// Runs `cmd` with its output going to `log_dir/<name>.out` and `.err`. Files, not pipes:
    /// Wine's server and services outlive the command and inherit its handles, so a pipe would
    /// never reach end-of-file. The driver's `DbgPrint` lines land in the log of whichever
    /// command started the services.
    fn run(&self, name: &str, cmd: &mut Command) -> Result<Output> {
        let out_path = self.log_dir.join(format!("{name}.out"));
        let err_path = self.log_dir.join(format!("{name}.err"));
        let status = cmd
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?)
            .status()
            .with_context(|| format!("could not start `{}`", describe(cmd)))?;
        Ok(Output {
            status,
            stdout: fs::read(&out_path)?,
            stderr: fs::read(&err_path)?,
        })
    }

    fn run_ok(&self, name: &str, cmd: &mut Command) -> Result<String> {
        let out = self.run(name, cmd)?;
        ensure!(
            out.status.success(),
            "`{}` failed ({}); see {}",
            describe(cmd),
            out.status,
            self.log_dir.join(format!("{name}.err")).display()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills this prefix's wineserver and waits until it has exited.
    fn stop_server(&self) {
        let _ = self.command("wineserver").arg("-k").status();
        let _ = self.command("wineserver").arg("-w").status();
    }

    fn system32(&self) -> PathBuf {
        self.dir.join("drive_c/windows/system32")
    }
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Builds the test shim with mingw when it is missing or older than its source.
fn build_shim(out_dir: &Path) -> Result<PathBuf> {
    let src = repo_root().join("xtask/wine/bcryptprimitives.c");
    let dll = out_dir.join("bcryptprimitives.dll");
    let fresh = fs::metadata(&dll)
        .and_then(|d| Ok(d.modified()? >= fs::metadata(&src)?.modified()?))
        .unwrap_or(false);
    if !fresh {
        crate::util::run(
            Command::new("x86_64-w64-mingw32-gcc")
                .args(["-shared", "-O1", "-o"])
                .arg(&dll)
                .arg(&src)
                .arg("-lbcrypt"),
        )?;
    }
    Ok(dll)
}

/// One check of the run, printed as it passes.
fn check(name: &str, started: Instant, result: Result<()>) -> Result<()> {
    match result {
        Ok(()) => {
            eprintln!(
                "wine-e2e: ok   {name} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("wine-e2e: FAIL {name}: {e:#}");
            Err(e.context(format!("wine-e2e check `{name}`")))
        }
    }
}

/// Waits up to `limit` for any log in `dir` to contain `needle`.
/// The bytes of `WaitFreeRequest { timeout_ms: 0, hive: \REGISTRY\MACHINE\SOFTWARE }`
/// (protocol/src/wait.rs layout: header with protocol version 7, timeout, reserved,
/// length-prefixed UTF-16).
const WAIT_FREE_SOFTWARE_HEX: &str = "4876546b070009004e00000000000000000000000000000\
    01a005c00520045004700490053005400520059005c004d0041004300480049004e0045005c0053004f00460054005700410052004500";

fn wait_for_log(dir: &Path, needle: &str, limit: Duration) -> bool {
    let t = Instant::now();
    loop {
        let found = fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
            fs::read(e.path()).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
        });
        if found {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask wine-e2e` over the package in `package`.
///
/// # Errors
/// The first check that fails, with the log file that explains it.
pub fn wine_e2e(package: &Path, work: &Path) -> Result<()> {
    let started = Instant::now();
    for f in [
        "hivetrack.sys",
        "hivetrack.inf",
        "hivetrack.exe",
        "hivetrack-events.dll",
    ] {
        if !package.join(f).is_file() {
            bail!(
                "{} is missing: run `cargo xtask build` first",
                package.join(f).display()
            );
        }
    }
    ensure_packages(WINE_PACKAGES)?;
    fs::create_dir_all(work)?;
    let shim = build_shim(work)?;
    let prefix = Prefix {
        dir: work.join("prefix"),
        log_dir: work.join("logs"),
    };
    if prefix.dir.exists() {
        prefix.stop_server();
        fs::remove_dir_all(&prefix.dir)?;
    }
    if prefix.log_dir.exists() {
        fs::remove_dir_all(&prefix.log_dir)?;
    }
    fs::create_dir_all(&prefix.log_dir)?;
    let result = run_checks(&prefix, package, &shim, started);
    // Whatever happened, leave no Wine process behind (and wait for it to go: a server still
    // exiting would be found by the next prefix made at this path).
    prefix.stop_server();
    result?;
    eprintln!(
        "wine-e2e: all checks passed in {:.1} s (logs in {})",
        started.elapsed().as_secs_f64(),
        prefix.log_dir.display()
    );
    Ok(())
}

#[allow(
    clippy::too_many_lines,
    reason = "one linear script of checks reads best in one place"
)]
fn run_checks(prefix: &Prefix, package: &Path, shim: &Path, started: Instant) -> Result<()> {
    let inf = wine_path(&package.join("hivetrack.inf"));
    let exe = wine_path(&package.join("hivetrack.exe"));
    let sys = wine_path(&package.join("hivetrack.sys"));
    let service_key = r"HKLM\System\CurrentControlSet\Services\hivetrack";
    // Wine 8's setupapi has no driver store: DIRID 13 becomes system32\unknown (see the top).
    let driver_file = prefix.system32().join("unknown/hivetrack.sys");

    check(
        "boot a fresh prefix",
        started,
        (|| {
            if let Err(e) = prefix.run_ok("wineboot", &mut prefix.wine(&["wineboot", "-i"])) {
                // Seen once: a fresh prefix at the path of one whose server was still exiting
                // failed to boot ("could not load kernel32.dll"). Stop the server, start over
                // once, and say so.
                eprintln!("wine-e2e: wineboot failed ({e:#}); retrying once on a new prefix");
                prefix.stop_server();
                fs::remove_dir_all(&prefix.dir)?;
                prefix.run_ok("wineboot-retry", &mut prefix.wine(&["wineboot", "-i"]))?;
            }
            // Right after boot two services.exe can race and service calls fail: settle by
            // letting the server shut down, then keep one alive for the rest of the run (the
            // driver is torn down when an idle server exits).
            prefix.run("wineserver-k", prefix.command("wineserver").arg("-k"))?;
            prefix.run("wineserver-w", prefix.command("wineserver").arg("-w"))?;
            prefix.run_ok("wineserver-p", prefix.command("wineserver").arg("-p"))?;
            crate::util::copy(shim, &prefix.system32().join("bcryptprimitives.dll"))
        })(),
    )?;

    check(
        "install with DefaultInstall.NTamd64",
        started,
        (|| {
            prefix.run_ok(
                "install",
                &mut prefix.wine(&[
                    "rundll32",
                    "setupapi.dll,InstallHinfSection",
                    "DefaultInstall.NTamd64",
                    "128",
                    &inf,
                ]),
            )?;
            ensure!(
                driver_file.is_file(),
                "{} was not copied",
                driver_file.display()
            );
            let sys = fs::read(package.join("hivetrack.sys"))?;
            ensure!(
                fs::read(&driver_file)? == sys,
                "the installed hivetrack.sys differs from the package"
            );
            let (svc, params) = service_key_values(prefix, "reg", service_key)?;
            for want in [
                "Type",
                "0x1",
                "Start",
                "0x3",
                "ErrorControl",
                r"C:\windows\system32\unknown\hivetrack.sys",
            ] {
                ensure!(svc.contains(want), "service key lacks `{want}`:\n{svc}");
            }
            ensure!(
                params.contains("REG_SZ"),
                "Parameters\\Altitude is not a REG_SZ:\n{params}"
            );
            Ok(())
        })(),
    )?;

    check(
        "start the service (DriverEntry)",
        started,
        (|| {
            prefix.run_ok(
                "net-start",
                &mut prefix.wine(&["net", "start", "hivetrack"]),
            )?;
            ensure!(
                wait_for_log(
                    &prefix.log_dir,
                    "hivetrack: DriverEntry",
                    Duration::from_secs(5)
                ),
                "no DriverEntry line from the driver in {}",
                prefix.log_dir.display()
            );
            Ok(())
        })(),
    )?;

    check(
        "hivetrack.exe version over DeviceIoControl",
        started,
        (|| {
            let out = prefix.run("cli-version", &mut prefix.wine(&[&exe, "version"]))?;
            let text = stdout_of(&out);
            ensure!(
                out.status.success(),
                "hivetrack version failed ({}): {}",
                out.status,
                stderr_of(&out)
            );
            ensure!(
                text.contains("hivetrack client "),
                "no client line:\n{text}"
            );
            // protocol/src/lib.rs's PROTOCOL_VERSION: the driver under Wine speaks the CLI's.
            ensure!(
                text.contains("hivetrack driver 0.1.0 (protocol 7, build "),
                "no driver line:\n{text}"
            );
            Ok(())
        })(),
    )?;

    check(
        "stats say live tracking is off, and why",
        started,
        (|| {
            let out = prefix.run("cli-stats", &mut prefix.wine(&[&exe, "stats", "--json"]))?;
            ensure!(
                out.status.success(),
                "hivetrack stats failed ({}): {}",
                out.status,
                stderr_of(&out)
            );
            let doc: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("stats --json")?;
            let status = doc["counters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "tracking_status")
                .and_then(|c| c["value"].as_u64());
            // Wine 8's ntoskrnl has no CmRegisterCallbackEx: STATUS_PROCEDURE_NOT_FOUND.
            ensure!(
                status == Some(0xC000_007A),
                "tracking_status is {status:?}, expected 0xC000007A"
            );
            Ok(())
        })(),
    )?;

    check(
        "hives and holders answer cleanly",
        started,
        (|| {
            let out = prefix.run("cli-hives", &mut prefix.wine(&[&exe, "hives"]))?;
            ensure!(
                out.status.success(),
                "hivetrack hives failed ({}): {}",
                out.status,
                stderr_of(&out)
            );
            ensure!(
                stdout_of(&out).contains("source: driver"),
                "hives did not name its backend"
            );
            let out = prefix.run(
                "cli-holders",
                &mut prefix.wine(&[&exe, "holders", r"HKLM\SOFTWARE"]),
            )?;
            let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
            // With tracking off the driver still lists the hives its start-up read of the
            // hive list found (none if Wine has no such list): an answer that says tracking
            // is off, or a clean, actionable refusal for a hive it does not know.
            ensure!(
                out.status.success() || text.contains("is known to the driver"),
                "holders ({}): {text}",
                out.status
            );
            Ok(())
        })(),
    )?;

    check(
        "malformed requests get clean errors",
        started,
        (|| {
            // (control code, input hex, output length, expected Win32 error)
            let cases: [(&str, &str, &str, &str); 6] = [
                // An unknown function of our device type: STATUS_INVALID_DEVICE_REQUEST.
                ("0x8A546FFC", "", "64", "Win32 error 1)"),
                // METHOD_NEITHER with our device type: refused before any buffer is touched.
                ("0x8A546003", "", "64", "Win32 error 1)"),
                // GET_VERSION with a 1-byte output buffer: STATUS_BUFFER_TOO_SMALL.
                ("0x8A546000", "", "1", "Win32 error 122)"),
                // GET_VERSION takes no input: STATUS_INVALID_PARAMETER.
                ("0x8A546000", "00", "64", "Win32 error 87)"),
                // WAIT_FREE with a byte of garbage: STATUS_INVALID_PARAMETER.
                ("0x8A54601C", "00", "72", "Win32 error 87)"),
                // A well-formed WAIT_FREE for \REGISTRY\MACHINE\SOFTWARE (timeout 0), while
                // live tracking is off: STATUS_DEVICE_NOT_READY at once, never a pending IRP
                // that could not know when the hive is free.
                (
                    "0x8A54601C",
                    WAIT_FREE_SOFTWARE_HEX,
                    // The answer's size (16-byte header, 56-byte body with completeness).
                    "72",
                    "Win32 error 21)",
                ),
            ];
            for (i, (code, input, len, want)) in cases.iter().enumerate() {
                let mut args = vec![
                    exe.as_str(),
                    "raw-ioctl",
                    "--code",
                    code,
                    "--output-len",
                    len,
                ];
                if !input.is_empty() {
                    args.extend(["--input", input]);
                }
                let out = prefix.run(&format!("cli-malformed-{i}"), &mut prefix.wine(&args))?;
                let err = stderr_of(&out);
                ensure!(
                    out.status.code() == Some(1),
                    "{code}: exit {} (want 1): {err}",
                    out.status
                );
                ensure!(err.contains(want), "{code}: expected `{want}` in: {err}");
            }
            // The device still answers after the bad requests.
            let out = prefix.run("cli-version-after", &mut prefix.wine(&[&exe, "version"]))?;
            ensure!(
                out.status.success(),
                "the driver stopped answering: {}",
                stderr_of(&out)
            );
            Ok(())
        })(),
    )?;

    service_checks(prefix, &exe, started)?;

    check(
        "stop the service (DriverUnload ran)",
        started,
        (|| {
            prefix.run_ok("net-stop", &mut prefix.wine(&["net", "stop", "hivetrack"]))?;
            ensure!(
                wait_for_log(
                    &prefix.log_dir,
                    "hivetrack: unloaded",
                    Duration::from_secs(5)
                ),
                "DriverUnload's line never appeared in {}",
                prefix.log_dir.display()
            );
            let out = prefix.run("cli-after-stop", &mut prefix.wine(&[&exe, "version"]))?;
            ensure!(
                out.status.code() == Some(2),
                "with the driver stopped, `version` exited {}",
                out.status
            );
            ensure!(
                stderr_of(&out).contains("not installed or not running"),
                "{}",
                stderr_of(&out)
            );
            Ok(())
        })(),
    )?;

    check(
        "driver install|uninstall --legacy refuse while the INF's service exists",
        started,
        (|| {
            let out = prefix.run(
                "legacy-over-inf",
                &mut prefix.wine(&[&exe, "driver", "install", "--legacy", "--force", &sys]),
            )?;
            let err = stderr_of(&out);
            ensure!(
                out.status.code() == Some(3) && err.contains("not installed by this command"),
                "exit {}: {err}",
                out.status
            );
            // Uninstall refuses it too (the INF's service survives: `sc delete` below needs it).
            let out = prefix.run(
                "legacy-uninstall-over-inf",
                &mut prefix.wine(&[&exe, "driver", "uninstall", "--legacy"]),
            )?;
            let err = stderr_of(&out);
            ensure!(
                out.status.code() == Some(3)
                    && err.contains("not installed by `driver install --legacy`"),
                "exit {}: {err}",
                out.status
            );
            Ok(())
        })(),
    )?;

    check(
        "remove the service (sc delete) leaves no service key",
        started,
        (|| {
            prefix.run_ok(
                "uninstall",
                &mut prefix.wine(&["sc", "delete", "hivetrack"]),
            )?;
            no_key(prefix, "reg-after-uninstall", service_key)?;
            Ok(())
        })(),
    )?;
    legacy_checks(prefix, package, &exe, started)
}

/// Fails if `reg query` finds `key` (log `<log>`).
fn no_key(prefix: &Prefix, log: &str, key: &str) -> Result<()> {
    let out = prefix.run(log, &mut prefix.wine(&["reg", "query", key]))?;
    ensure!(
        !out.status.success(),
        "the service key is still there:\n{}",
        stdout_of(&out)
    );
    Ok(())
}

/// `reg query` of the service key and of its `Parameters\Altitude` (logs `<log>-service`,
/// `<log>-altitude`).
fn service_key_values(prefix: &Prefix, log: &str, service_key: &str) -> Result<(String, String)> {
    let svc = prefix.run_ok(
        &format!("{log}-service"),
        &mut prefix.wine(&["reg", "query", service_key]),
    )?;
    let params = prefix.run_ok(
        &format!("{log}-altitude"),
        &mut prefix.wine(&[
            "reg",
            "query",
            &format!(r"{service_key}\Parameters"),
            "/v",
            "Altitude",
        ]),
    )?;
    Ok((svc, params))
}

/// `hivetrack driver install --legacy` (the Windows Server 2016/2019 route, audit 21c H4)
/// after the INF's service is gone. Wine 8 reports the build its registry gives (ntdll reads
/// `CurrentMajorVersionNumber`, `CurrentMinorVersionNumber` and `CurrentBuild(Number)` under
/// `HKLM\Software\Microsoft\Windows NT\CurrentVersion`; a fresh prefix says 6.1.7601): as
/// Windows 10 1903 (18362, the first driver-package build) the route is refused without
/// `--force`; as Windows Server 2019 (17763) with `--boot` it installs: the file in
/// `system32\drivers`, the service key with the INF's settings, description and
/// `Parameters\Altitude`, the driver started (the CLI gets its version over
/// `DeviceIoControl`), and only then `Start` 1 (system start). `driver uninstall --legacy` stops it and
/// leaves neither the service key nor the file; a second uninstall has nothing to do.
#[allow(
    clippy::too_many_lines,
    reason = "one linear script of checks reads best in one place"
)]
fn legacy_checks(prefix: &Prefix, package: &Path, exe: &str, started: Instant) -> Result<()> {
    let sys = wine_path(&package.join("hivetrack.sys"));
    let service_key = r"HKLM\System\CurrentControlSet\Services\hivetrack";
    let installed = prefix.system32().join("drivers/hivetrack.sys");
    let as_build = |build: &str| -> Result<()> {
        let key = r"HKLM\Software\Microsoft\Windows NT\CurrentVersion";
        for (value, kind, data) in [
            ("CurrentMajorVersionNumber", "REG_DWORD", "10"),
            ("CurrentMinorVersionNumber", "REG_DWORD", "0"),
            ("CurrentBuild", "REG_SZ", build),
            ("CurrentBuildNumber", "REG_SZ", build),
        ] {
            prefix.run_ok(
                &format!("legacy-build-{value}"),
                &mut prefix.wine(&["reg", "add", key, "/v", value, "/t", kind, "/d", data, "/f"]),
            )?;
        }
        Ok(())
    };
    check(
        "driver install --legacy refuses Windows 10 1903 (18362) without --force",
        started,
        (|| {
            as_build("18362")?;
            let out = prefix.run(
                "legacy-unforced",
                &mut prefix.wine(&[exe, "driver", "install", "--legacy", &sys]),
            )?;
            let err = stderr_of(&out);
            ensure!(
                out.status.code() == Some(3)
                    && err.contains("(build 18362) installs the driver package")
                    && err.contains("pnputil /add-driver hivetrack.inf /install"),
                "exit {}: {err}",
                out.status
            );
            ensure!(!installed.exists(), "{} was written", installed.display());
            Ok(())
        })(),
    )?;
    check(
        "driver install --legacy --boot on Server 2019 (17763): file, service key, driver running, then system start",
        started,
        (|| {
            as_build("17763")?;
            let text = prefix.run_ok(
                "legacy-install",
                &mut prefix.wine(&[exe, "driver", "install", "--legacy", "--boot", &sys]),
            )?;
            // Created demand start, switched to system start only after the start (audit 23a, H1).
            for want in [
                "kernel driver, demand start",
                "Started hivetrack",
                "Set hivetrack to system start",
            ] {
                ensure!(text.contains(want), "no `{want}`:\n{text}");
            }
            ensure!(
                text.find("Started hivetrack") < text.find("Set hivetrack to system start"),
                "system start set before the start:\n{text}"
            );
            ensure!(
                fs::read(&installed)? == fs::read(package.join("hivetrack.sys"))?,
                "{} differs from the package",
                installed.display()
            );
            let (svc, params) = service_key_values(prefix, "legacy-reg", service_key)?;
            for want in [
                "Type    REG_DWORD    0x1",
                "Start    REG_DWORD    0x1",
                "ErrorControl    REG_DWORD    0x1",
                r"\SystemRoot\System32\drivers\hivetrack.sys",
                "Description    REG_SZ    Tracks registry key handles per process for leak diagnosis.",
                "DisplayName    REG_SZ    hivetrack registry handle tracker",
            ] {
                ensure!(svc.contains(want), "service key lacks `{want}`:\n{svc}");
            }
            ensure!(
                params.contains("REG_SZ") && params.contains("385217"),
                "Parameters\\Altitude:\n{params}"
            );
            let version =
                prefix.run_ok("legacy-cli-version", &mut prefix.wine(&[exe, "version"]))?;
            ensure!(
                version.contains("hivetrack driver 0.1.0 (protocol 7, build "),
                "the driver does not answer:\n{version}"
            );
            Ok(())
        })(),
    )?;
    check(
        "driver uninstall --legacy leaves no service key and no file",
        started,
        (|| {
            let text = prefix.run_ok(
                "legacy-uninstall",
                &mut prefix.wine(&[exe, "driver", "uninstall", "--legacy"]),
            )?;
            for want in ["Stopped hivetrack", "Deleted service hivetrack", "Removed "] {
                ensure!(text.contains(want), "no `{want}`:\n{text}");
            }
            no_key(prefix, "legacy-reg-after", service_key)?;
            ensure!(
                !installed.exists(),
                "{} is still there",
                installed.display()
            );
            // The INF's driver and this one: two DriverUnload lines.
            let unloads = |needle: &str| {
                fs::read_dir(&prefix.log_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| fs::read(e.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).matches(needle).count())
                    .sum::<usize>()
            };
            let t = Instant::now();
            while unloads("hivetrack: unloaded") < 2 && t.elapsed() < Duration::from_secs(5) {
                thread::sleep(Duration::from_millis(100));
            }
            ensure!(
                unloads("hivetrack: DriverEntry") == 2 && unloads("hivetrack: unloaded") == 2,
                "expected 2 DriverEntry and 2 unloaded lines in {}",
                prefix.log_dir.display()
            );
            let again = prefix.run_ok(
                "legacy-uninstall-again",
                &mut prefix.wine(&[exe, "driver", "uninstall", "--legacy"]),
            )?;
            ensure!(
                again.contains("No service hivetrack") && again.contains("nothing to remove"),
                "{again}"
            );
            Ok(())
        })(),
    )
}

/// `hivetrack service` (issue 17) under Wine, while the driver runs: `run --once` drains the
/// stream (Wine's ntoskrnl has no registry callbacks, so there is nothing to drain: a 1010 or,
/// from a driver without the event stream or with tracking off, a 1013 line), `install`
/// writes the Event Log source's key and creates `hivetracksvc` (Wine's service manager
/// starts it), `uninstall` stops it and removes both.
#[allow(
    clippy::too_many_lines,
    reason = "one linear script of checks reads best in one place"
)]
fn service_checks(prefix: &Prefix, exe: &str, started: Instant) -> Result<()> {
    let source_key = r"HKLM\System\CurrentControlSet\Services\EventLog\Application\hivetrack";
    let service_key = r"HKLM\System\CurrentControlSet\Services\hivetracksvc";
    let jsonl = prefix.log_dir.join("hivetracksvc.jsonl");
    let installed = prefix.dir.join("drive_c/Program Files/hivetrack");
    check(
        "hivetrack service run --once reads the event stream",
        started,
        (|| {
            let out = prefix.run(
                "svc-run-once",
                &mut prefix.wine(&[exe, "service", "run", "--once", "--jsonl", "-"]),
            )?;
            let code = out.status.code();
            ensure!(
                matches!(code, Some(0 | 2)),
                "service run --once exited {}: {}",
                out.status,
                stderr_of(&out)
            );
            let first = stdout_of(&out);
            let line = first.lines().next().unwrap_or_default();
            let event: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not a JSON line: {first}"))?;
            let id = event["event_id"].as_u64();
            ensure!(
                matches!(id, Some(1010 | 1013)),
                "first event {id:?}:\n{first}"
            );
            eprintln!(
                "wine-e2e: service run --once: event {} ({})",
                id.unwrap_or(0),
                event["message"].as_str().unwrap_or_default()
            );
            Ok(())
        })(),
    )?;
    check(
        "hivetrack service install: event source key and service",
        started,
        (|| {
            let _ = fs::remove_file(&jsonl);
            let said = prefix.run_ok(
                "svc-install",
                &mut prefix.wine(&[
                    exe,
                    "service",
                    "install",
                    "--still-held-after",
                    "30",
                    "--jsonl",
                    &wine_path(&jsonl),
                ]),
            )?;
            // The ACL checks ran (audit 21c H1): every file of a Wine prefix belongs to the
            // Unix user, so both the --jsonl folder and Program Files\hivetrack fail them, and
            // under Wine (only there) `install` says so instead of refusing.
            for want in [
                "under Wine, not enforced: refusing --jsonl",
                "under Wine, not enforced: refusing to install into",
                r"Program Files\hivetrack",
            ] {
                ensure!(
                    said.contains(want),
                    "service install did not say `{want}`:\n{said}"
                );
            }
            let source = prefix.run_ok(
                "reg-source",
                &mut prefix.wine(&["reg", "query", source_key]),
            )?;
            for want in [
                "EventMessageFile",
                "REG_EXPAND_SZ",
                r"Program Files\hivetrack\hivetrack-events.dll",
                "TypesSupported",
                "0x7",
            ] {
                ensure!(
                    source.contains(want),
                    "event source key lacks `{want}`:\n{source}"
                );
            }
            let svc = prefix.run_ok("reg-svc", &mut prefix.wine(&["reg", "query", service_key]))?;
            for want in [
                "ImagePath",
                r"Program Files\hivetrack\hivetrack.exe",
                "service run --scm --still-held-after 30",
                "Start",
                "0x2",
            ] {
                ensure!(svc.contains(want), "service key lacks `{want}`:\n{svc}");
            }
            // The copies it registered, in the prefix's Program Files.
            for file in ["hivetrack.exe", "hivetrack-events.dll"] {
                let copy = installed.join(file);
                ensure!(copy.is_file(), "{} was not copied", copy.display());
            }
            // Wine's service manager started the copy: its loop wrote its first event.
            let deadline = Instant::now() + Duration::from_secs(10);
            let written = loop {
                let text = fs::read_to_string(&jsonl).unwrap_or_default();
                if text.contains("\"event_id\":1013") || text.contains("\"event_id\":1010") {
                    break text;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the service wrote no event to {} in 10 s",
                    jsonl.display()
                );
                thread::sleep(Duration::from_millis(100));
            };
            let running = prefix.run_ok(
                "sc-query-svc",
                &mut prefix.wine(&["sc", "query", "hivetracksvc"]),
            )?;
            ensure!(
                running.contains("RUNNING"),
                "hivetracksvc is not running:\n{running}"
            );
            eprintln!(
                "wine-e2e: hivetracksvc running from {}, wrote: {}",
                installed.display(),
                written.lines().next().unwrap_or_default()
            );
            Ok(())
        })(),
    )?;
    check(
        "hivetrack service uninstall removes both",
        started,
        (|| {
            prefix.run_ok(
                "svc-uninstall",
                &mut prefix.wine(&[exe, "service", "uninstall"]),
            )?;
            // Learn, `DeleteService`: the service's entry goes once it is not running and
            // every handle to it is closed, which the service manager sees a moment after
            // `uninstall` returns: allow it 10 s.
            for key in [source_key, service_key] {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let out = prefix.run(
                        "reg-after-svc-uninstall",
                        &mut prefix.wine(&["reg", "query", key]),
                    )?;
                    if !out.status.success() {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "{key} is still there 10 s after uninstall:\n{}",
                        stdout_of(&out)
                    );
                    thread::sleep(Duration::from_millis(250));
                }
            }
            // ... and the copies in Program Files (the service had stopped: nothing in use).
            ensure!(
                !installed.exists(),
                "{} is still there after uninstall",
                installed.display()
            );
            Ok(())
        })(),
    )
}
