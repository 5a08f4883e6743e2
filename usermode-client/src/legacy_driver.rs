//! `hivetrack driver install --legacy`: what the Service Control Manager route for Windows
//! Server 2016/2019 decides, as pure functions (the Windows half is
//! `windows_legacy_driver`).
//!
//! hivetrack's INF is a primitive driver package, which installs only from Windows 10 1903
//! (build 18362; Learn, "Creating a primitive driver"): Server 2019 (17763) and 2016 (14393)
//! have no INF route (audit 21c, H4). This route installs the non-PnP kernel service the way
//! Microsoft's sample does (Windows-driver-samples `general/ioctl/wdm/exe/install.c`,
//! `InstallDriver`: `CreateService(…, SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START,
//! SERVICE_ERROR_NORMAL, <path of the .sys>, …)`), with the INF's service settings
//! (`driver/hivetrack.inx`, `[HiveTrack.Service]` and `[HiveTrack.Parameters]`).

/// The driver's service (the INF's `ServiceName`).
pub const SERVICE: &str = "hivetrack";
/// The INF's `ServiceDisplayName`.
pub const DISPLAY_NAME: &str = "hivetrack registry handle tracker";
/// The INF's `ServiceDescription`.
pub const DESCRIPTION: &str = "Tracks registry key handles per process for leak diagnosis.";
/// The INF's `DefaultAltitude`, written as `Parameters\Altitude` (`REG_SZ`): the driver reads
/// it when it registers its registry callback (`driver/src/registry_read.rs`).
pub const ALTITUDE: &str = "385217";
/// `SERVICE_KERNEL_DRIVER` (the INF's `ServiceType = 1`).
pub const SERVICE_TYPE: u32 = 1;
/// `SERVICE_DEMAND_START` (the INF's `StartType = 3`): every install creates the service so,
/// `--boot` included.
pub const DEMAND_START: u32 = 3;
/// `SERVICE_SYSTEM_START`: what `sc.exe config hivetrack start= system` sets to track from
/// boot (the INF route's documented way; here `--boot`).
///
/// Set only after the driver started once: a driver that bugchecks on its first load would otherwise do so at every boot, since the
/// kernel loads every Start=1 service before anyone can log on). A non-PnP `SYSTEM_START`
/// driver without a `Group` value is loaded: WRK `base/ntos/config/cmsysini.c`
/// `CmGetSystemDriverList` (l.1747) builds the list with `cmboot.c` `CmpFindDrivers(…,
/// SystemLoad, …)` (l.505), which keeps a service with no `Group` (l.967-976, an empty group)
/// and `CmpSortDriverList` orders the grouped ones first.
pub const SYSTEM_START: u32 = 1;
/// `SERVICE_ERROR_NORMAL` (the INF's `ErrorControl = 1`).
pub const ERROR_NORMAL: u32 = 1;
/// The file's name in `%SystemRoot%\System32\drivers` (DIRID 12).
pub const FILE_NAME: &str = "hivetrack.sys";
/// The service's `ImagePath`: the form setupapi writes for `%12%\<file>`.
///
/// The kernel takes a
/// name starting with `\` as is (`\SystemRoot` is an object-manager link to the Windows
/// folder) and prefixes `\SystemRoot\` to any other: WRK `base/ntos/io/iomgr/internal.c`
/// `IopBuildFullDriverPath`. Unquoted (windows-service 0.8.1 does not quote a kernel driver's
/// path; quotes would be part of the name there).
pub const IMAGE_PATH: &str = r"\SystemRoot\System32\drivers\hivetrack.sys";
/// The first build that installs a primitive driver package (Windows 10 1903).
pub const FIRST_PRIMITIVE_BUILD: u32 = 18362;
/// Windows Server 2019 / Windows 10 1809: the build `check-image` keeps the imports to.
pub const IMPORTS_CHECKED_BUILD: u32 = 17763;
/// Windows Server 2016 / Windows 10 1607: the oldest build this route accepts unforced.
pub const OLDEST_BUILD: u32 = 14393;

/// The INF route's install and removal, for the refusals.
pub const INF_INSTALL: &str = "`pnputil /add-driver hivetrack.inf /install` in the package folder, then `sc.exe start hivetrack`";

/// The service `hivetrack` as it is before `install`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// No such service.
    None,
    /// Installed by this route (its `ImagePath` names exactly `%SystemRoot%\System32\drivers\hivetrack.sys`).
    Legacy,
    /// Installed some other way (e.g. the INF: the driver store), running `image_path`.
    Other {
        /// The service's `ImagePath`.
        image_path: String,
    },
}

/// Which route installed a service whose `ImagePath` is `image_path`, with `system32` the
/// Windows `System32` folder (`C:\Windows\System32`).
///
/// Ours only if it names exactly the file this route writes, in one of the forms the kernel
/// resolves to it (`IopBuildFullDriverPath`, see [`IMAGE_PATH`]): `\SystemRoot\System32\…`,
/// the relative `System32\…`, the Win32 path or its `\??\` NT form. Not a suffix match: an
/// `X:\other\system32\drivers\hivetrack.sys` is another file (audit 23a, M2).
#[must_use]
pub fn classify(image_path: &str, system32: &str) -> Existing {
    let lower = image_path.trim_matches('"').to_ascii_lowercase();
    let system32 = system32.trim_end_matches('\\').to_ascii_lowercase();
    let win32 = format!(r"{system32}\drivers\{FILE_NAME}");
    let ours = [
        IMAGE_PATH.to_ascii_lowercase(),
        format!(r"system32\drivers\{FILE_NAME}"),
        format!(r"\??\{win32}"),
        win32,
    ];
    if ours.contains(&lower) {
        Existing::Legacy
    } else {
        Existing::Other {
            image_path: image_path.to_owned(),
        }
    }
}

/// The service settings and `Parameters` values `install` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `SERVICE_KERNEL_DRIVER`.
    pub service_type: u32,
    /// The start type the service is created with: always [`DEMAND_START`] (audit 23a, H1).
    pub start_type: u32,
    /// `SERVICE_ERROR_NORMAL`.
    pub error_control: u32,
    /// [`IMAGE_PATH`].
    pub image_path: &'static str,
    /// `(name, REG_SZ data)` under `<service key>\Parameters`.
    pub parameters: Vec<(&'static str, &'static str)>,
}

/// What `install` creates: the INF's `[HiveTrack.Service]` and `[HiveTrack.Parameters]`.
/// `--boot` does not change it: see [`boot_start_after`].
#[must_use]
pub fn service_spec() -> ServiceSpec {
    ServiceSpec {
        service_type: SERVICE_TYPE,
        start_type: DEMAND_START,
        error_control: ERROR_NORMAL,
        image_path: IMAGE_PATH,
        parameters: vec![("Altitude", ALTITUDE)],
    }
}

/// The start type to switch the service to once the first start is known: [`SYSTEM_START`]
/// with `--boot` after a successful start, otherwise none (it stays [`DEMAND_START`]).
#[must_use]
pub const fn boot_start_after(boot: bool, started: bool) -> Option<u32> {
    if boot && started {
        Some(SYSTEM_START)
    } else {
        None
    }
}

/// The error context when the first start failed: the service stays, demand start.
#[must_use]
pub fn start_failed_message(boot: bool) -> String {
    format!(
        "service {SERVICE} is installed but did not start{} (a test-signed driver needs \
         `bcdedit /set testsigning on` and a restart; Server 2016+ loads only WHCP-signed \
         drivers otherwise): fix that and `sc.exe start {SERVICE}`{}, or `hivetrack driver \
         uninstall --legacy`",
        if boot {
            "; the boot start (--boot) was NOT set: it stays demand start"
        } else {
            ""
        },
        if boot {
            format!(" then `sc.exe config {SERVICE} start= system`")
        } else {
            String::new()
        }
    )
}

/// What `install` does with `System32\drivers\hivetrack.sys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePlan {
    /// No file was there: this run creates it, and removes it on a rollback.
    Create,
    /// A file with the same bytes was there: used as is, kept on a rollback.
    Reuse,
}

impl FilePlan {
    /// Whether a failed install removes the file (only what this run created).
    #[must_use]
    pub const fn remove_on_rollback(self) -> bool {
        matches!(self, Self::Create)
    }
}

/// What to do with an `installed` file already at `path` before writing `new` there (the
/// copy is opened with `create_new`, so an existing file is never truncated; audit 23a, M1).
///
/// # Errors
/// The refusal: the file differs, saying whose it looks like and what to do.
pub fn existing_file_plan(installed: &[u8], new: &[u8], path: &str) -> Result<FilePlan, String> {
    if installed == new {
        return Ok(FilePlan::Reuse);
    }
    Err(match check_image(installed) {
        Ok(()) => format!(
            "{path} already exists and is another hivetrack.sys build (left by an earlier \
             install whose service is gone?): check that no service uses it (`sc.exe qc \
             {SERVICE}`), delete it, restart if it is in use, then install"
        ),
        Err(why) => format!(
            "{path} already exists and is not hivetrack's ({why}): another product's driver of \
             that name? Refusing to overwrite it; remove that product or the file first"
        ),
    })
}

/// Whether `uninstall` removes the installed file, read as `contents`: only a file
/// [`check_image`] says is hivetrack's (audit 23a, M2).
///
/// # Errors
/// Why the file is kept, for the output.
pub fn uninstall_file_decision(contents: Result<&[u8], String>, path: &str) -> Result<(), String> {
    match contents {
        Ok(bytes) => check_image(bytes).map_err(|why| {
            format!("{path} is not hivetrack's ({why}): kept, remove it yourself if it is unused")
        }),
        Err(e) => Err(format!(
            "cannot read {path} ({e}): kept, not knowing whether it is hivetrack's"
        )),
    }
}

/// The lines `uninstall` prints about the stop, and its exit code.
///
/// [`crate::exit::STILL_LOADED`] when the driver did not stop (the service is then only
/// marked for deletion; audit 23a, M3). `stop_error` is the stop request's own error, `stopped` whether the service reached
/// `SERVICE_STOPPED` (or was not running).
#[must_use]
pub fn stop_report(stop_error: Option<&str>, stopped: bool) -> (Vec<String>, u8) {
    let mut lines = Vec::new();
    if let Some(e) = stop_error {
        lines.push(format!("the stop request for {SERVICE} failed: {e}"));
    }
    if stopped {
        lines.push(format!("Stopped {SERVICE}"));
        (lines, crate::exit::OK)
    } else {
        lines.push(format!(
            "{SERVICE} has not stopped: its unload waits for the last handle to \\\\.\\HiveTrack \
             to close (`hivetrack service uninstall` stops the event service, which holds one)"
        ));
        (lines, crate::exit::STILL_LOADED)
    }
}

/// The line after `DeleteService`.
///
/// Learn, "`DeleteService` function (winsvc.h)": the entry
/// "is not removed until all open handles to the service have been closed …, and the service
/// is not running"; one that cannot be stopped goes at the next restart (and MS-SCMR 3.1.4.3:
/// the server sets its `Start` to `SERVICE_DISABLED` meanwhile, so no boot loads it).
#[must_use]
pub fn deleted_line(stopped: bool) -> String {
    if stopped {
        format!(
            "Deleted service {SERVICE} (with its Parameters key; the service manager removes it \
             once no handle to the service is open)"
        )
    } else {
        format!(
            "Service {SERVICE} marked for deletion: the driver is still loaded and tracking; its \
             key (Parameters included) goes when the last handle to \\\\.\\HiveTrack closes and \
             the driver unloads, or at the next restart (it is disabled meanwhile, so no boot \
             loads it); exit {}",
            crate::exit::STILL_LOADED
        )
    }
}

/// Checks `driver install`'s arguments: `--legacy` is the only route this command has.
///
/// # Errors
/// The message for a missing `--legacy`.
pub fn check_install_args(legacy: bool) -> Result<(), String> {
    if legacy {
        Ok(())
    } else {
        Err(format!(
            "`hivetrack driver install` needs --legacy: on Windows 10 1903+ (build 18362+), \
             Windows 11 and Windows Server 2022+ install the driver package with {INF_INSTALL}; \
             on Windows Server 2016/2019 `hivetrack driver install --legacy hivetrack.sys` \
             installs it as a kernel service in System32\\drivers"
        ))
    }
}

/// Whether `install` goes ahead on `build` with `existing`: notes to print, or why not.
///
/// # Errors
/// The refusal, saying what to do instead.
pub fn install_decision(
    build: u32,
    force: bool,
    existing: &Existing,
) -> Result<Vec<String>, String> {
    match existing {
        Existing::None => {}
        Existing::Legacy => {
            return Err(format!(
                "service {SERVICE} is already installed by this command: \
                 `hivetrack driver uninstall --legacy` first"
            ));
        }
        Existing::Other { image_path } => {
            return Err(format!(
                "service {SERVICE} already exists, running {image_path}: it was not installed \
                 by this command (e.g. from the INF, the driver store); remove it with `sc.exe stop hivetrack`, `pnputil \
                 /enum-drivers` (the oemN.inf whose original name is hivetrack.inf) and \
                 `pnputil /delete-driver oemN.inf /uninstall` before installing this way, or \
                 keep that install"
            ));
        }
    }
    let mut notes = Vec::new();
    if build >= FIRST_PRIMITIVE_BUILD {
        if !force {
            return Err(format!(
                "this Windows (build {build}) installs the driver package: use {INF_INSTALL} \
                 (the driver store route, removed with `pnputil /delete-driver`); --legacy is for \
                 Windows Server 2016/2019 (builds 14393, 17763); --force installs this way anyway"
            ));
        }
        notes.push(format!(
            "build {build} installs the driver package; installing outside the driver store because of --force"
        ));
    } else if build < OLDEST_BUILD {
        if !force {
            return Err(format!(
                "this Windows (build {build}) is older than Windows Server 2016 (build \
                 {OLDEST_BUILD}): hivetrack was never built for it; --force installs anyway"
            ));
        }
        notes.push(format!(
            "build {build} is older than Windows Server 2016: installing because of --force"
        ));
    }
    if build < IMPORTS_CHECKED_BUILD {
        notes.push(format!(
            "the image's imports are checked against Windows 10 1809 (build {IMPORTS_CHECKED_BUILD}) \
             only: on build {build} the start fails (error 127, a routine not found) if one is missing"
        ));
    }
    Ok(notes)
}

/// Why `bytes` is not a `hivetrack.sys` this command installs, if it is not.
///
/// A PE32+ native AMD64 image (the `IMAGE_NT_HEADERS64` fields `check-image` reads) holding
/// the driver's device name `\Device\HiveTrack` (UTF-16) and its `DriverEntry` line. Not a
/// signature check: Windows checks the signature when the service starts.
///
/// # Errors
/// What is wrong with the file.
pub fn check_image(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bytes.get(..2) != Some(b"MZ") {
        return Err("not a Windows image (no MZ header)".to_owned());
    }
    let nt = u32_at(0x3c)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if nt == 0 || bytes.get(nt..nt + 4) != Some(b"PE\0\0") {
        return Err("not a Windows image (no PE signature)".to_owned());
    }
    // IMAGE_FILE_HEADER.Machine, then the optional header after the 20-byte file header.
    if u16_at(nt + 4) != Some(0x8664) {
        return Err("not an x64 (AMD64) image".to_owned());
    }
    let opt = nt + 24;
    if u16_at(opt) != Some(0x20b) {
        return Err("not a PE32+ image".to_owned());
    }
    // IMAGE_OPTIONAL_HEADER64.Subsystem (offset 68): IMAGE_SUBSYSTEM_NATIVE.
    if u16_at(opt + 68) != Some(1) {
        return Err("not a kernel-mode (native subsystem) image".to_owned());
    }
    let device: Vec<u8> = r"\Device\HiveTrack"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if !has(&device) || !has(b"hivetrack: DriverEntry") {
        return Err(
            "a kernel driver, but not hivetrack's (no \\Device\\HiveTrack device name)".to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The INF source, whose settings this route must repeat.
    const INX: &str = include_str!("../../driver/hivetrack.inx");

    /// The value of `key = value` in the INF (comment stripped).
    fn inf_value(key: &str) -> String {
        INX.lines()
            .map(|l| l.split(';').next().unwrap_or(""))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map_or_else(
                || panic!("{key} not in hivetrack.inx"),
                |(_, v)| v.trim().trim_matches('"').to_owned(),
            )
    }

    /// The lines of `[section]` in the INF (comments and blank lines dropped).
    fn inf_section(section: &str) -> Vec<&'static str> {
        let header = format!("[{section}]");
        INX.lines()
            .skip_while(|l| l.trim() != header)
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('['))
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// `%name%` resolved through `[Strings]`; anything else as is.
    fn resolve(value: &str) -> String {
        value
            .strip_prefix('%')
            .and_then(|v| v.strip_suffix('%'))
            .map_or_else(|| value.to_owned(), inf_value)
    }

    const SYSTEM32: &str = r"C:\Windows\System32";

    #[test]
    fn the_service_repeats_the_infs_settings() {
        let spec = service_spec();
        assert_eq!(spec.service_type.to_string(), inf_value("ServiceType"));
        assert_eq!(spec.start_type.to_string(), inf_value("StartType"));
        assert_eq!(spec.error_control.to_string(), inf_value("ErrorControl"));
        assert_eq!(SERVICE, inf_value("ServiceName"));
        // `[HiveTrack.Service]`'s DisplayName and Description, through `[Strings]`.
        let service = inf_section("HiveTrack.Service");
        let field = |key: &str| {
            service
                .iter()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map_or_else(
                    || panic!("no {key} in [HiveTrack.Service]"),
                    |(_, v)| resolve(v.trim()),
                )
        };
        assert_eq!(DISPLAY_NAME, field("DisplayName"));
        assert_eq!(DESCRIPTION, field("Description"));
        assert_eq!(field("AddReg"), "HiveTrack.Parameters");
        // Every `HKR, Parameters, <name>, <flags>, <value>` line, and nothing else, in order.
        let mut from_inf = Vec::new();
        for line in inf_section("HiveTrack.Parameters") {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            assert_eq!(fields.len(), 5, "unexpected AddReg line `{line}`");
            assert_eq!(&fields[..2], ["HKR", "Parameters"], "`{line}`");
            // FLG_ADDREG_TYPE_SZ | FLG_ADDREG_NOCLOBBER: the REG_SZ this route writes.
            assert_eq!(fields[3], "0x00000002", "`{line}`: not REG_SZ");
            from_inf.push((fields[2].to_owned(), resolve(fields[4])));
        }
        let ours: Vec<(String, String)> = spec
            .parameters
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(ours, from_inf);
        assert_eq!(classify(spec.image_path, SYSTEM32), Existing::Legacy);
    }

    #[test]
    fn boot_creates_demand_start_and_sets_system_start_only_after_a_start() {
        // Created demand start, --boot or not (audit 23a, H1).
        assert_eq!(service_spec().start_type, DEMAND_START);
        assert_eq!(boot_start_after(true, true), Some(SYSTEM_START));
        assert_eq!(boot_start_after(true, false), None);
        assert_eq!(boot_start_after(false, true), None);
        assert_eq!(boot_start_after(false, false), None);
        // The value the README's INF route sets for the same purpose.
        assert!(INX.contains("sc.exe config hivetrack start= system"));
        let failed = start_failed_message(true);
        assert!(
            failed.contains("boot start (--boot) was NOT set"),
            "{failed}"
        );
        assert!(
            failed.contains("sc.exe config hivetrack start= system"),
            "{failed}"
        );
        assert!(!start_failed_message(false).contains("boot"));
    }

    #[test]
    fn only_the_exact_image_paths_of_this_route_are_ours() {
        for ours in [
            r"\SystemRoot\System32\drivers\hivetrack.sys",
            r"\SystemRoot\system32\DRIVERS\hivetrack.sys",
            r"System32\drivers\hivetrack.sys",
            r"C:\Windows\System32\drivers\hivetrack.sys",
            r#""C:\Windows\System32\drivers\hivetrack.sys""#,
            r"\??\C:\Windows\System32\drivers\hivetrack.sys",
        ] {
            assert_eq!(classify(ours, SYSTEM32), Existing::Legacy, "{ours}");
            assert_eq!(
                classify(ours, r"c:\windows\system32\"),
                Existing::Legacy,
                "{ours}"
            );
        }
        for other in [
            r"X:\other\system32\drivers\hivetrack.sys",
            r"\??\X:\Windows\System32\drivers\hivetrack.sys",
            r"\SystemRoot\System32\DriverStore\FileRepository\hivetrack.inf_amd64_1\hivetrack.sys",
            r"\SystemRoot\System32\drivers\nothivetrack.sys",
            r"System32\drivers\hivetrack.sys.bak",
        ] {
            assert!(
                matches!(classify(other, SYSTEM32), Existing::Other { .. }),
                "{other}"
            );
        }
    }

    #[test]
    fn an_existing_file_is_reused_if_identical_and_refused_otherwise() {
        let ours = image(0x8664, 0x20b, 1, &hivetrack_body());
        let path = r"C:\Windows\System32\drivers\hivetrack.sys";
        let reuse = existing_file_plan(&ours, &ours, path);
        assert_eq!(reuse, Ok(FilePlan::Reuse));
        assert!(!FilePlan::Reuse.remove_on_rollback());
        assert!(FilePlan::Create.remove_on_rollback());
        let mut older = ours.clone();
        older.push(0);
        let e = existing_file_plan(&older, &ours, path).unwrap_err();
        assert!(
            e.contains("another hivetrack.sys build") && e.contains(path),
            "{e}"
        );
        let foreign = image(0x8664, 0x20b, 1, b"other driver");
        let e = existing_file_plan(&foreign, &ours, path).unwrap_err();
        assert!(
            e.contains("not hivetrack's") && e.contains("Refusing"),
            "{e}"
        );
    }

    #[test]
    fn uninstall_removes_only_hivetracks_file() {
        let ours = image(0x8664, 0x20b, 1, &hivetrack_body());
        let path = r"C:\Windows\System32\drivers\hivetrack.sys";
        assert_eq!(uninstall_file_decision(Ok(&ours), path), Ok(()));
        let foreign = image(0x8664, 0x20b, 1, b"other driver");
        let kept = uninstall_file_decision(Ok(&foreign), path).unwrap_err();
        assert!(kept.contains("kept"), "{kept}");
        let unread = uninstall_file_decision(Err("denied".to_owned()), path).unwrap_err();
        assert!(
            unread.contains("kept") && unread.contains("denied"),
            "{unread}"
        );
    }

    #[test]
    fn a_driver_that_did_not_stop_is_said_and_not_exit_0() {
        let (lines, code) = stop_report(None, true);
        assert_eq!(
            (lines, code),
            (vec!["Stopped hivetrack".to_owned()], crate::exit::OK)
        );
        let (lines, code) = stop_report(Some("Access is denied. (os error 5)"), false);
        assert_eq!(code, crate::exit::STILL_LOADED);
        assert_ne!(code, crate::exit::OK);
        assert!(lines[0].contains("os error 5"), "{lines:?}");
        assert!(lines[1].contains("has not stopped"), "{lines:?}");
        // A stop error with the driver stopped anyway is still printed.
        let (lines, code) = stop_report(Some("late"), true);
        assert_eq!(code, crate::exit::OK);
        assert!(lines[0].contains("late"), "{lines:?}");
        let marked = deleted_line(false);
        assert!(
            marked.contains("marked for deletion: the driver is still loaded"),
            "{marked}"
        );
        assert!(!marked.contains("Deleted"), "{marked}");
        assert!(deleted_line(true).starts_with("Deleted service hivetrack"));
    }

    #[test]
    fn server_2016_and_2019_install_and_the_driver_store_builds_need_force() {
        assert_eq!(install_decision(17763, false, &Existing::None), Ok(vec![]));
        let on_2016 = install_decision(14393, false, &Existing::None).unwrap();
        assert_eq!(on_2016.len(), 1);
        assert!(on_2016[0].contains("1809"), "{on_2016:?}");
        let refused = install_decision(18362, false, &Existing::None).unwrap_err();
        assert!(
            refused.contains("pnputil /add-driver hivetrack.inf /install"),
            "{refused}"
        );
        assert!(refused.contains("--force"), "{refused}");
        assert!(install_decision(18361, false, &Existing::None).is_ok());
        let forced = install_decision(22631, true, &Existing::None).unwrap();
        assert!(forced[0].contains("--force"), "{forced:?}");
        assert!(install_decision(10586, false, &Existing::None).is_err());
        assert!(install_decision(10586, true, &Existing::None).is_ok());
    }

    #[test]
    fn an_existing_service_is_refused_even_with_force() {
        let inf = classify(
            r"\SystemRoot\System32\DriverStore\FileRepository\hivetrack.inf_amd64_1234\hivetrack.sys",
            SYSTEM32,
        );
        let refused = install_decision(17763, true, &inf).unwrap_err();
        assert!(refused.contains("pnputil /delete-driver"), "{refused}");
        assert!(
            refused.contains("not installed by this command"),
            "{refused}"
        );
        let wine_inf = classify(r"C:\windows\system32\unknown\hivetrack.sys", SYSTEM32);
        assert!(matches!(wine_inf, Existing::Other { .. }));
        let ours = classify(r"\SystemRoot\system32\DRIVERS\hivetrack.sys", SYSTEM32);
        assert_eq!(ours, Existing::Legacy);
        let again = install_decision(17763, true, &ours).unwrap_err();
        assert!(again.contains("driver uninstall --legacy"), "{again}");
    }

    #[test]
    fn install_without_legacy_names_both_routes() {
        assert_eq!(check_install_args(true), Ok(()));
        let e = check_install_args(false).unwrap_err();
        assert!(
            e.contains("pnputil /add-driver") && e.contains("--legacy"),
            "{e}"
        );
    }

    /// A minimal PE32+ header: MZ, `e_lfanew` 0x40, PE, machine, optional magic, subsystem.
    fn image(machine: u16, magic: u16, subsystem: u16, body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x40 + 24 + 240];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        b[0x44..0x46].copy_from_slice(&machine.to_le_bytes());
        b[0x58..0x5a].copy_from_slice(&magic.to_le_bytes());
        b[0x58 + 68..0x58 + 70].copy_from_slice(&subsystem.to_le_bytes());
        b.extend_from_slice(body);
        b
    }

    fn hivetrack_body() -> Vec<u8> {
        let mut body: Vec<u8> = r"\Device\HiveTrack"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        body.extend_from_slice(b"hivetrack: DriverEntry");
        body
    }

    #[test]
    fn only_a_native_x64_image_with_hivetracks_device_passes() {
        let body = hivetrack_body();
        assert_eq!(check_image(&image(0x8664, 0x20b, 1, &body)), Ok(()));
        assert!(check_image(b"hello").unwrap_err().contains("MZ"));
        assert!(
            check_image(&image(0x14c, 0x20b, 1, &body))
                .unwrap_err()
                .contains("x64")
        );
        assert!(
            check_image(&image(0x8664, 0x10b, 1, &body))
                .unwrap_err()
                .contains("PE32+")
        );
        // A Windows console program (subsystem 3), e.g. hivetrack.exe given by mistake.
        assert!(
            check_image(&image(0x8664, 0x20b, 3, &body))
                .unwrap_err()
                .contains("native")
        );
        assert!(
            check_image(&image(0x8664, 0x20b, 1, b"other driver"))
                .unwrap_err()
                .contains("not hivetrack's")
        );
        // The device name without the DriverEntry line, and the reverse.
        let device_only: Vec<u8> = r"\Device\HiveTrack"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(check_image(&image(0x8664, 0x20b, 1, &device_only)).is_err());
        assert!(check_image(&image(0x8664, 0x20b, 1, b"hivetrack: DriverEntry")).is_err());
        let mut bad_pe = image(0x8664, 0x20b, 1, &body);
        bad_pe[0x41] = b'X';
        assert!(check_image(&bad_pe).unwrap_err().contains("PE signature"));
    }
}
