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
/// `SERVICE_DEMAND_START` (the INF's `StartType = 3`).
pub const DEMAND_START: u32 = 3;
/// `SERVICE_SYSTEM_START`: what `sc.exe config hivetrack start= system` sets to track from
/// boot (the INF route's documented way; here `--boot`).
pub const SYSTEM_START: u32 = 1;
/// `SERVICE_ERROR_NORMAL` (the INF's `ErrorControl = 1`).
pub const ERROR_NORMAL: u32 = 1;
/// The file's name in `%SystemRoot%\System32\drivers` (DIRID 12).
pub const FILE_NAME: &str = "hivetrack.sys";
/// The service's `ImagePath`: the form setupapi writes for `%12%\<file>`, resolved by the
/// kernel against `%SystemRoot%`.
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
    /// Installed by this route (its `ImagePath` is in `System32\drivers`).
    Legacy,
    /// Installed some other way (the INF: the driver store), running `image_path`.
    Other {
        /// The service's `ImagePath`.
        image_path: String,
    },
}

/// Which route installed a service whose `ImagePath` is `image_path`.
#[must_use]
pub fn classify(image_path: &str) -> Existing {
    let lower = image_path.trim_matches('"').to_ascii_lowercase();
    let legacy = lower == r"system32\drivers\hivetrack.sys"
        || lower.ends_with(r"\system32\drivers\hivetrack.sys");
    if legacy {
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
    /// [`DEMAND_START`], or [`SYSTEM_START`] with `--boot`.
    pub start_type: u32,
    /// `SERVICE_ERROR_NORMAL`.
    pub error_control: u32,
    /// [`IMAGE_PATH`].
    pub image_path: &'static str,
    /// `(name, REG_SZ data)` under `<service key>\Parameters`.
    pub parameters: Vec<(&'static str, &'static str)>,
}

/// What `install` creates: the INF's `[HiveTrack.Service]` and `[HiveTrack.Parameters]`.
#[must_use]
pub fn service_spec(boot: bool) -> ServiceSpec {
    ServiceSpec {
        service_type: SERVICE_TYPE,
        start_type: if boot { SYSTEM_START } else { DEMAND_START },
        error_control: ERROR_NORMAL,
        image_path: IMAGE_PATH,
        parameters: vec![("Altitude", ALTITUDE)],
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
                "service {SERVICE} already exists, running {image_path}: it was installed from \
                 the INF (driver store); remove it with `sc.exe stop hivetrack`, `pnputil \
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

    #[test]
    fn the_service_repeats_the_infs_settings() {
        let spec = service_spec(false);
        assert_eq!(spec.service_type.to_string(), inf_value("ServiceType"));
        assert_eq!(spec.start_type.to_string(), inf_value("StartType"));
        assert_eq!(spec.error_control.to_string(), inf_value("ErrorControl"));
        assert_eq!(SERVICE, inf_value("ServiceName"));
        assert_eq!(DISPLAY_NAME, inf_value("ServiceDisplayName"));
        assert_eq!(DESCRIPTION, inf_value("ServiceDescription"));
        // `HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%`: REG_SZ.
        assert!(INX.contains("HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%"));
        assert_eq!(
            spec.parameters,
            vec![("Altitude", inf_value("DefaultAltitude").as_str())]
        );
        assert_eq!(classify(spec.image_path), Existing::Legacy);
    }

    #[test]
    fn boot_is_system_start_as_the_readme_documents() {
        assert_eq!(service_spec(true).start_type, SYSTEM_START);
        assert!(INX.contains("sc.exe config hivetrack start= system"));
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
        );
        let refused = install_decision(17763, true, &inf).unwrap_err();
        assert!(refused.contains("pnputil /delete-driver"), "{refused}");
        let wine_inf = classify(r"C:\windows\system32\unknown\hivetrack.sys");
        assert!(matches!(wine_inf, Existing::Other { .. }));
        let ours = classify(r"\SystemRoot\system32\DRIVERS\hivetrack.sys");
        assert_eq!(ours, Existing::Legacy);
        assert_eq!(
            classify(r"System32\drivers\hivetrack.sys"),
            Existing::Legacy
        );
        assert!(classify(r"System32\drivers\nothivetrack.sys") != Existing::Legacy);
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
        let mut bad_pe = image(0x8664, 0x20b, 1, &body);
        bad_pe[0x41] = b'X';
        assert!(check_image(&bad_pe).unwrap_err().contains("PE signature"));
    }
}
