//! Unit tests of the INF checks: the project's real INF passes, and each broken variant of it
//! fails with the expected message (and only that one).

use super::*;

const REAL_INF: &str = include_str!("../../../driver/hivetrack.inx");

fn not_checked(_: &str) -> Option<bool> {
    None
}

fn check(text: &str) -> InfReport {
    check_inf_text("test.inf", text, &not_checked)
}

/// The real INF with `from` replaced by `to` (which must occur exactly once).
fn broken(from: &str, to: &str) -> InfReport {
    assert_eq!(
        REAL_INF.matches(from).count(),
        1,
        "{from:?} must occur once"
    );
    check(&REAL_INF.replace(from, to))
}

/// Asserts exactly one failure, containing every needle.
fn assert_single_failure(report: &InfReport, needles: &[&str]) {
    assert_eq!(
        report.failures().len(),
        1,
        "expected one failure:\n{report}"
    );
    for needle in needles {
        assert!(
            report.failures()[0].contains(needle),
            "failure {:?} lacks {needle:?}",
            report.failures()[0]
        );
    }
}

#[test]
fn a_registry_write_outside_hkr_fails() {
    assert_single_failure(
        &broken(
            "HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%",
            "HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%\nHKLM, Software\\Hivetrack, X, 0x00010001, 1",
        ),
        &["writes under HKLM, not HKR", "1320"],
    );
}

#[test]
fn a_service_value_outside_parameters_fails() {
    assert_single_failure(
        &broken(
            "HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%",
            "HKR, Parameters, Altitude, 0x00000002, %DefaultAltitude%\nHKR, , Tag, 0x00010001, 1",
        ),
        &["not its Parameters subkey", "1323"],
    );
}

#[test]
fn real_inf_passes_and_is_summarised() {
    let report = check(REAL_INF);
    assert!(report.failures().is_empty(), "{report}");
    let text = report.to_string();
    println!("{text}");
    for expected in [
        "version     Signature    $WINDOWS NT$",
        "version     ClassGuid    {4D36E97D-E325-11CE-BFC1-08002BE10318}",
        "version     Provider     hivetrack project",
        "version     CatalogFile  hivetrack.cat",
        "service     hivetrack [HiveTrack.Service] \"hivetrack registry handle tracker\"",
        "type 1, start 3, error control 1, binary %13%\\hivetrack.sys",
        "Parameters\\Altitude 385217",
        "version     PnpLockDown  1",
        "file        hivetrack.sys -> DIRID 13 (package folder not checked)",
        "result      PASS",
    ] {
        assert!(
            text.contains(expected),
            "summary lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn package_folder_presence_is_checked() {
    let present = check_inf_text("t.inf", REAL_INF, &|file| Some(file == DRIVER_FILE));
    assert!(present.failures().is_empty(), "{present}");
    assert!(present.to_string().contains("present in package folder"));
    let missing = check_inf_text("t.inf", REAL_INF, &|_| Some(false));
    assert_single_failure(&missing, &["hivetrack.sys is not in the package folder"]);
}

#[test]
fn utf16_inf_is_decoded() {
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend(REAL_INF.encode_utf16().flat_map(u16::to_le_bytes));
    let text = decode(&bytes).unwrap();
    assert!(check(&text).failures().is_empty());
    let mut utf8_bom = vec![0xef, 0xbb, 0xbf];
    utf8_bom.extend_from_slice(REAL_INF.as_bytes());
    assert_eq!(decode(&utf8_bom).unwrap(), REAL_INF);
    assert!(decode(&[0xff, 0xfe, 0x41]).is_err());
    assert!(decode(&[0xc3, 0x28]).is_err());
}

#[test]
fn files_on_disk() {
    let dir = std::env::temp_dir().join(format!("hivetrack-inf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver/hivetrack.inx");
    let report = check_inf(&inf, Some(&dir)).unwrap();
    assert_single_failure(&report, &["not in the package folder"]);
    std::fs::write(dir.join(DRIVER_FILE), b"MZ").unwrap();
    let report = check_inf(&inf, Some(&dir)).unwrap();
    assert!(report.failures().is_empty(), "{report}");
    assert!(check_inf(&dir.join("missing.inf"), None).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_signature_fails() {
    let report = broken("\"$WINDOWS NT$\"", "\"$CHICAGO$\"");
    assert_single_failure(&report, &["Signature is \"$CHICAGO$\""]);
}

#[test]
fn missing_version_keys_fail() {
    for (line, needle) in [
        ("Class       = System\n", "no Class"),
        (
            "ClassGuid   = {4D36E97D-E325-11CE-BFC1-08002BE10318}\n",
            "no ClassGuid",
        ),
        ("Provider    = %ProviderName%\n", "no Provider"),
        ("DriverVer   = 11/22/2026,0.1.0.0\n", "no DriverVer"),
        ("CatalogFile = hivetrack.cat\n", "no CatalogFile"),
    ] {
        assert_single_failure(&broken(line, ""), &[needle]);
    }
    let report = broken("[Version]", "[Versions]");
    assert!(
        report
            .failures()
            .contains(&"[Version] is missing: every INF starts with it".to_owned())
    );
}

#[test]
fn malformed_class_guid_and_catalog_fail() {
    assert_single_failure(
        &broken(
            "{4D36E97D-E325-11CE-BFC1-08002BE10318}",
            "{4D36E97D-E325-11CE-BFC1}",
        ),
        &["is not a {xxxxxxxx"],
    );
    assert_single_failure(
        &broken(
            "CatalogFile = hivetrack.cat",
            r"CatalogFile = sub\hivetrack.cat",
        ),
        &["plain .cat file name"],
    );
}

#[test]
fn invalid_driver_ver_fails() {
    for (value, needle) in [
        ("02/30/2026,0.1.0.0", "day 30 does not exist in month 2"),
        (
            "02/29/2026,0.1.0.0",
            "day 29 does not exist in month 2 of 2026",
        ),
        ("13/01/2026,0.1.0.0", "month 13"),
        ("2026-11-22,0.1.0.0", "is not mm/dd/yyyy"),
        ("11/22/26,0.1.0.0", "year 26 is not four digits"),
        ("11/22/2026,0.1.0", "not four numbers"),
        ("11/22/2026,0.1.0.70000", "not four numbers"),
        ("11/22/2026", "no ,w.x.y.z version"),
    ] {
        let report = broken("11/22/2026,0.1.0.0", value);
        assert_single_failure(&report, &["DriverVer", needle]);
    }
    assert!(
        broken("11/22/2026,0.1.0.0", "02/29/2024,1.2.3.65535")
            .failures()
            .is_empty()
    );
}

#[test]
fn references_to_missing_sections_fail() {
    assert_single_failure(
        &broken(
            "AddReg         = HiveTrack.Parameters",
            "AddReg = HiveTrack.Parameters, HiveTrack.Extra",
        ),
        &["AddReg in [HiveTrack.Service] names section [HiveTrack.Extra], which does not exist"],
    );
    // Naming only a missing section also loses the altitude: both are reported.
    let report = broken(
        "AddReg         = HiveTrack.Parameters",
        "AddReg = HiveTrack.Params",
    );
    let failures = report.failures().join("\n");
    assert_eq!(report.failures().len(), 2, "{report}");
    assert!(failures.contains("names section [HiveTrack.Params], which does not exist"));
    assert!(failures.contains("writes no Parameters\\Altitude"));
    // The service section name is checked where AddService names it.
    let report = broken(
        "%ServiceName%,0x00000010,HiveTrack.Service",
        "%ServiceName%,0x00000010,HiveTrack.Svc",
    );
    assert_single_failure(
        &report,
        &["names section [HiveTrack.Svc], which does not exist"],
    );
    let report = broken(
        "%ServiceName%,0x00000010,HiveTrack.Service",
        "%ServiceName%",
    );
    assert_single_failure(&report, &["AddService needs a service-install section"]);
}

#[test]
fn copy_section_missing_fails_everywhere_it_matters() {
    let report = check(&REAL_INF.replace("[HiveTrack.DriverFiles]", "[Other.Files]"));
    let failures = report.failures().join("\n");
    for needle in [
        "CopyFiles in [DefaultInstall.NTamd64] names section [HiveTrack.DriverFiles]",
        "package file hivetrack.sys is not copied",
    ] {
        assert!(failures.contains(needle), "lacks {needle:?}:\n{report}");
    }
}

#[test]
fn install_sections_missing_fail() {
    let report = broken(
        "[DefaultInstall.NTamd64]\nCopyFiles = HiveTrack.DriverFiles\n",
        "",
    );
    let failures = report.failures().join("\n");
    assert!(
        failures.contains("[DefaultInstall.NTamd64] is missing"),
        "{report}"
    );
    assert!(
        failures.contains("hivetrack.sys is not copied by [DefaultInstall.NTamd64]"),
        "{report}"
    );

    let report = broken(
        "[DefaultInstall.NTamd64.Services]",
        "[DefaultInstall.NTamd64.Servces]",
    );
    assert_single_failure(&report, &["[DefaultInstall.NTamd64.Services] is missing"]);

    let report = broken("AddService = %ServiceName%,", "AddService = regtrack,");
    assert_single_failure(&report, &["no AddService=hivetrack", "found: regtrack"]);
}

/// "Creating a primitive driver" (Microsoft Learn): install sections are architecture-decorated
/// with no undecorated version, no `[Manufacturer]`, no `[DefaultUninstall]` unless it is a
/// `LegacyUninstall=1` section.
#[test]
fn primitive_driver_rules_are_checked() {
    // The legacy layout this INF had before: undecorated sections fail (infverif /w rejects them).
    let report = check(
        &REAL_INF
            .replace("[DefaultInstall.NTamd64]", "[DefaultInstall]")
            .replace(
                "[DefaultInstall.NTamd64.Services]",
                "[DefaultInstall.Services]",
            ),
    );
    let failures = report.failures().join("\n");
    for needle in [
        "[DefaultInstall] is not architecture-decorated",
        "[DefaultInstall.Services] is not architecture-decorated",
        "[DefaultInstall.NTamd64] is missing",
    ] {
        assert!(failures.contains(needle), "lacks {needle:?}:\n{report}");
    }
    // An undecorated section beside the decorated one still fails.
    let report = check(&format!(
        "{REAL_INF}\n[DefaultInstall]\nCopyFiles = HiveTrack.DriverFiles\n"
    ));
    assert_single_failure(&report, &["[DefaultInstall] is not architecture-decorated"]);
    let report = check(&format!(
        "{REAL_INF}\n[DefaultUninstall.NTamd64]\nDelFiles = HiveTrack.DriverFiles\n"
    ));
    assert_single_failure(
        &report,
        &["[DefaultUninstall.NTamd64] is present", "LegacyUninstall=1"],
    );
    let report = check(&format!(
        "{REAL_INF}\n[DefaultUninstall.NTamd64]\nLegacyUninstall = 1\n"
    ));
    assert!(report.failures().is_empty(), "{report}");
    let report = check(&format!(
        "{REAL_INF}\n[Manufacturer]\n%ProviderName% = Models, NTamd64\n"
    ));
    assert_single_failure(&report, &["[Manufacturer] is present"]);
    let report = broken("PnpLockDown = 1\n", "");
    assert_single_failure(&report, &["PnpLockDown is missing", "PnpLockDown=1"]);
    let report = broken("PnpLockDown = 1\n", "PnpLockDown = 0\n");
    assert_single_failure(&report, &["PnpLockDown is 0"]);
}

#[test]
fn service_values_are_checked() {
    for (from, to, needle) in [
        (
            "ServiceType    = 1",
            "ServiceType = 2",
            "ServiceType is \"2\", expected 1",
        ),
        (
            "StartType      = 3",
            "StartType = 2",
            "StartType is \"2\", expected 3 (SERVICE_DEMAND_START) or 1",
        ),
        (
            "StartType      = 3",
            "StartType = 0",
            "StartType is \"0\", expected 3",
        ),
        (
            "ErrorControl   = 1",
            "ErrorControl = 3",
            "ErrorControl is \"3\", expected 1",
        ),
        (
            r"ServiceBinary  = %13%\hivetrack.sys",
            r"ServiceBinary = %11%\hivetrack.sys",
            "ServiceBinary is \"%11%\\\\hivetrack.sys\"",
        ),
        (
            "DisplayName    = %ServiceDisplayName%\n",
            "",
            "has no DisplayName",
        ),
    ] {
        assert_single_failure(&broken(from, to), &[needle]);
    }
    // The update promise (audit 21c L5): SPSVCINST_NOCLOBBER_STARTTYPE on AddService.
    assert_single_failure(
        &broken(
            "AddService = %ServiceName%,0x00000010,",
            "AddService = %ServiceName%,0x00000000,",
        ),
        &["lack 0x00000010 (SPSVCINST_NOCLOBBER_STARTTYPE)"],
    );
    assert_single_failure(
        &broken(
            "AddService = %ServiceName%,0x00000010,",
            "AddService = %ServiceName%,0x00000002,",
        ),
        &["lack 0x00000010"],
    );
    assert!(
        broken(
            "AddService = %ServiceName%,0x00000010,",
            "AddService = %ServiceName%,0x00000810,",
        )
        .failures()
        .is_empty()
    );
    // System start (tracking from boot) is the administrator's other choice.
    assert!(
        broken("StartType      = 3", "StartType = 1")
            .failures()
            .is_empty()
    );
    // Hexadecimal numbers are numbers.
    assert!(
        broken("StartType      = 3", "StartType = 0x3")
            .failures()
            .is_empty()
    );
}

#[test]
fn altitude_is_checked() {
    let report = broken("AddReg         = HiveTrack.Parameters\n", "");
    assert_single_failure(&report, &["writes no Parameters\\Altitude"]);
    let report = broken("Altitude, 0x00000002,", "Altitude, 0x00010001,");
    assert_single_failure(&report, &["flags 0x00010001 are not REG_SZ"]);
    // The update promise (audit 21c L5): without FLG_ADDREG_NOCLOBBER an update resets an
    // edited altitude; an empty flags field is 0 as well.
    let report = broken("Altitude, 0x00000002,", "Altitude, 0x00000000,");
    assert_single_failure(&report, &["lack 0x00000002 (FLG_ADDREG_NOCLOBBER)"]);
    let report = broken("Altitude, 0x00000002,", "Altitude, ,");
    assert_single_failure(&report, &["lack 0x00000002"]);
    let report = broken(
        "DefaultAltitude    = \"385217\"",
        "DefaultAltitude = \"high\"",
    );
    assert_single_failure(&report, &["\"high\" is not an altitude"]);
    assert!(
        broken(
            "DefaultAltitude    = \"385217\"",
            "DefaultAltitude = \"385217.5\""
        )
        .failures()
        .is_empty()
    );
}

#[test]
fn files_must_match_the_package() {
    let report = broken(
        "[HiveTrack.DriverFiles]\nhivetrack.sys\n",
        "[HiveTrack.DriverFiles]\nhivetrack.sys\nevil.dll\n",
    );
    assert_single_failure(
        &report,
        &["evil.dll is copied by the install section but is not a package file"],
    );

    let report = broken("hivetrack.sys = 1", "hivetrack.sys = 2");
    assert_single_failure(
        &report,
        &["on disk \"2\", which [SourceDisksNames] does not define"],
    );

    let report = broken("hivetrack.sys = 1", "other.sys = 1");
    let failures = report.failures().join("\n");
    assert!(
        failures.contains("other.sys is listed in [SourceDisksFiles] but is not a package file")
    );
    assert!(failures.contains("package file hivetrack.sys is not listed in [SourceDisksFiles]"));

    let report = broken("[SourceDisksNames]", "[SourceDiskNames]");
    let failures = report.failures().join("\n");
    assert!(
        failures.contains("[SourceDisksNames] is missing"),
        "{report}"
    );
}

/// Driver package isolation: the package runs from the driver store (DIRID 13); copying the
/// driver to `System32\drivers` (DIRID 12, this INF's layout before) fails.
#[test]
fn destination_must_be_the_driver_store() {
    let report = broken("DefaultDestDir = 13", "DefaultDestDir = 12");
    assert_single_failure(
        &report,
        &[
            "DIRID 12 (System32\\drivers)",
            "driver package isolation",
            "DIRID 13",
        ],
    );
    let report = broken("DefaultDestDir = 13", "DefaultDestDir = 11");
    assert_single_failure(&report, &["DIRID 11, but ServiceBinary expects 13"]);
    let report = broken("DefaultDestDir = 13", "Other.Files = 13");
    assert_single_failure(&report, &["no entry for [HiveTrack.DriverFiles]"]);
    // A per-section entry wins over DefaultDestDir.
    let report = broken(
        "DefaultDestDir = 13",
        "DefaultDestDir = 11\nHiveTrack.DriverFiles = 13",
    );
    assert!(report.failures().is_empty(), "{report}");
}

#[test]
fn undefined_strings_fail_with_their_line() {
    let report = broken("Provider    = %ProviderName%", "Provider    = %Vendor%");
    assert_single_failure(
        &report,
        &["%Vendor% is used but [Strings] does not define it"],
    );
    let line = REAL_INF
        .lines()
        .position(|l| l.starts_with("Provider"))
        .unwrap()
        + 1;
    assert!(report.failures()[0].starts_with(&format!("line {line}:")));
    let report = broken("Provider    = %ProviderName%", "Provider    = 100% sure");
    assert_single_failure(&report, &["unbalanced %"]);
}

#[test]
fn syntax_errors_are_failures() {
    let report = broken(
        "ProviderName       = \"hivetrack project\"",
        "ProviderName = \"hivetrack",
    );
    // The entry with the broken string is dropped, so %ProviderName% is undefined too.
    let failures = report.failures().join("\n");
    assert!(failures.contains("unterminated quoted string"), "{report}");
    assert!(failures.contains("%ProviderName% is used"), "{report}");
}
