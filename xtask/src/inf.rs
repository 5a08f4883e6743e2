//! Checks on the driver's INF (`driver/hivetrack.inx`, shipped as `hivetrack.inf`).
//!
//! It is a primitive driver: the kernel service installed from the driver store with
//! `pnputil /add-driver hivetrack.inf /install`.
//!
//! [`check_inf`] parses the INF ([`parse`]) and verifies its structure: `[Version]`
//! (Signature, Class/ClassGuid, Provider, `DriverVer`, `CatalogFile`, `PnpLockDown=1`), that every
//! section named by `CopyFiles`/`DelFiles`/`AddReg`/`DelReg`/`AddService` exists, the install
//! section and the service definition, the `Parameters\Altitude` value the driver reads, that
//! the files it copies are exactly the package files (and exist in the package folder when
//! one is given), and that every `%string%` is defined.
//!
//! The primitive-driver and isolation rules are the ones `infverif /w` (run by `cargo make`)
//! enforces, from Microsoft Learn: "Creating a primitive driver" (no `[Manufacturer]`, only
//! architecture-decorated `[DefaultInstall.NTamd64]`, no `[DefaultUninstall]` unless it says
//! `LegacyUninstall=1`), "Driver package isolation" and "Using Dirids" (files run from the
//! driver store, DIRID 13, never copied to `System32\drivers`, DIRID 12), and the `[Version]`
//! section's `PnpLockDown=1`. Like [`crate::image`], it returns a
//! report whose `Display` is a one-screen summary and whose `failures()` lists the problems.

pub mod parse;

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};

pub use parse::{Entry, Inf, Section, UndefinedString};

/// The service the INF installs (service names are case-insensitive).
pub const SERVICE_NAME: &str = "hivetrack";
/// The driver file.
pub const DRIVER_FILE: &str = "hivetrack.sys";
/// The files of the driver package that the INF installs.
pub const PACKAGE_FILES: &[&str] = &[DRIVER_FILE];
/// Where the service binary must live: the package's driver store folder (DIRID 13).
pub const SERVICE_BINARY: &str = r"%13%\hivetrack.sys";
/// The DIRID of the package's folder in the driver store (where an isolated package runs from).
pub const DRIVER_STORE_DIRID: &str = "13";
/// The DIRID of `%SystemRoot%\System32\drivers`, which driver package isolation forbids.
pub const LEGACY_DRIVERS_DIRID: &str = "12";
/// The install section: a primitive driver's `[DefaultInstall]` is architecture-decorated.
pub const INSTALL_SECTION: &str = "DefaultInstall.NTamd64";
/// The install section's services section.
pub const SERVICES_SECTION: &str = "DefaultInstall.NTamd64.Services";
/// The only `[Version]` signature for NT-based Windows.
pub const SIGNATURE: &str = "$WINDOWS NT$";

/// Directives whose fields all name sections (unless prefixed with `@`, a single file).
const SECTION_LIST_DIRECTIVES: &[&str] = &["CopyFiles", "DelFiles", "RenFiles", "AddReg", "DelReg"];

/// Summary of the service definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceSummary {
    name: String,
    section: String,
    display_name: String,
    service_type: String,
    start_type: String,
    error_control: String,
    binary: String,
    altitude: Option<String>,
}

/// Result of [`check_inf`]: the INF's main facts and the list of failed checks.
#[derive(Debug, Clone)]
pub struct InfReport {
    file: String,
    line_count: usize,
    section_count: usize,
    version: Vec<(&'static str, String)>,
    service: Option<ServiceSummary>,
    files: Vec<(String, Option<bool>)>,
    destination: Option<String>,
    strings_defined: usize,
    failures: Vec<String>,
}

impl InfReport {
    /// Failed checks, each saying what is wrong and where; empty = pass.
    #[must_use]
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }
}

/// Checks the INF at `inf`; with `package_dir`, also that the files it installs are there.
///
/// Returns `Ok(report)` whether or not the checks pass (see [`InfReport::failures`]).
///
/// # Errors
/// When the file cannot be read or is neither UTF-8 nor UTF-16LE with a byte-order mark.
pub fn check_inf(inf: &Path, package_dir: Option<&Path>) -> anyhow::Result<InfReport> {
    let bytes = std::fs::read(inf).with_context(|| format!("cannot read {}", inf.display()))?;
    let text = decode(&bytes).with_context(|| format!("cannot decode {}", inf.display()))?;
    let present = |name: &str| package_dir.map(|dir| dir.join(name).is_file());
    Ok(check_inf_text(&inf.display().to_string(), &text, &present))
}

/// Decodes INF bytes: UTF-16LE with a BOM (what stampinf/Visual Studio write), or UTF-8
/// (with or without BOM).
///
/// # Errors
/// When the bytes are not valid in the detected encoding.
pub fn decode(bytes: &[u8]) -> anyhow::Result<String> {
    if let Some(utf16) = bytes.strip_prefix(&[0xff, 0xfe]) {
        if utf16.len() % 2 != 0 {
            bail!("odd number of bytes in a UTF-16LE file");
        }
        let units: Vec<u16> = utf16
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        return String::from_utf16(&units).context("invalid UTF-16LE");
    }
    let utf8 = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
    String::from_utf8(utf8.to_vec()).context("neither UTF-16LE with a BOM nor valid UTF-8")
}

/// [`check_inf`] on text already in memory; `present(file)` says whether a package file
/// exists (`None` when no package folder is given).
#[must_use]
pub fn check_inf_text(name: &str, text: &str, present: &dyn Fn(&str) -> Option<bool>) -> InfReport {
    let inf = parse::parse(text);
    let mut report = InfReport {
        file: name.to_owned(),
        line_count: inf.line_count,
        section_count: inf.sections.len(),
        version: Vec::new(),
        service: None,
        files: Vec::new(),
        destination: None,
        strings_defined: inf.section("Strings").map_or(0, |s| s.entries.len()),
        failures: inf.syntax_errors.clone(),
    };
    check_strings(&inf, &mut report);
    check_version(&inf, &mut report);
    check_references(&inf, &mut report);
    check_install(&inf, &mut report);
    check_primitive(&inf, &mut report);
    check_registry_isolation(&inf, &mut report);
    check_files(&inf, &mut report, present);
    report
}

/// Driver package isolation of registry writes, as `infverif /w` checks them (Learn,
/// "`InfVerif` errors and warnings"): every `AddReg`/`DelReg` line writes under `HKR` (1320,
/// 1321: "Registry root ... is not isolated to HKR"), and one reached from a service-install
/// section writes under its `Parameters` subkey (1323: "Registry values using a
/// service-relative HKR root must be written under the Parameters subkey"). The check
/// used to look at the Altitude line alone, so a future `HKLM,...` line passed here and
/// failed only in `cargo make` (found in review).
fn check_registry_isolation(inf: &Inf, report: &mut InfReport) {
    let service_sections: Vec<String> = inf
        .sections
        .iter()
        .flat_map(|section| section.entries_with_key("AddService"))
        .map(|entry| expanded(inf, entry.value(2)))
        .collect();
    let mut failures = Vec::new();
    for owner in &inf.sections {
        let in_service = service_sections
            .iter()
            .any(|name| name.eq_ignore_ascii_case(&owner.name));
        for directive in ["AddReg", "DelReg"] {
            let lists = owner
                .entries_with_key(directive)
                .flat_map(|entry| entry.values.iter())
                .filter_map(|name| inf.section(&expanded(inf, name)));
            for list in lists {
                for entry in list.entries.iter().filter(|e| e.key.is_none()) {
                    let root = expanded(inf, entry.value(0));
                    let subkey = expanded(inf, entry.value(1));
                    if !root.eq_ignore_ascii_case("HKR") {
                        failures.push(format!(
                            "line {}: [{}] writes under {root}, not HKR: driver package \
                             isolation allows HKR only (infverif 1320/1321)",
                            entry.line, list.name
                        ));
                    } else if in_service && !under_parameters(&subkey) {
                        failures.push(format!(
                            "line {}: [{}] writes the service key's {subkey:?}, not its \
                             Parameters subkey (infverif 1323)",
                            entry.line, list.name
                        ));
                    }
                }
            }
        }
    }
    for failure in failures {
        report.fail(failure);
    }
}

/// Whether a service-relative subkey is `Parameters` or below it.
fn under_parameters(subkey: &str) -> bool {
    let first = subkey.split('\\').next().unwrap_or_default();
    first.eq_ignore_ascii_case("Parameters")
}

/// `text` with `%strings%` substituted, or `text` itself when a token is undefined (that is
/// reported once by [`check_strings`]).
fn expanded(inf: &Inf, text: &str) -> String {
    inf.expand(text).unwrap_or_else(|_| text.to_owned())
}

fn is_strings_section(section: &Section) -> bool {
    let name = section.name.to_ascii_lowercase();
    name == "strings" || name.starts_with("strings.")
}

fn check_strings(inf: &Inf, report: &mut InfReport) {
    for section in inf.sections.iter().filter(|s| !is_strings_section(s)) {
        for entry in &section.entries {
            for text in entry.key.iter().chain(&entry.values) {
                match inf.expand(text) {
                    Ok(_) => {}
                    Err(UndefinedString(token)) if token.is_empty() || token.contains(' ') => {
                        report.fail(format!(
                            "line {}: unbalanced % in {text:?} (write %% for a literal %)",
                            entry.line
                        ));
                    }
                    Err(UndefinedString(token)) => report.fail(format!(
                        "line {}: %{token}% is used but [Strings] does not define it",
                        entry.line
                    )),
                }
            }
        }
    }
}

fn check_version(inf: &Inf, report: &mut InfReport) {
    let Some(version) = inf.section("Version") else {
        report.fail("[Version] is missing: every INF starts with it".to_owned());
        return;
    };
    let mut value_of = |key: &'static str| {
        // All fields: DriverVer is `date,version`.
        let value = version
            .entries_with_key(key)
            .next()
            .map(|entry| expanded(inf, &entry.values.join(",")));
        if let Some(value) = &value {
            report.version.push((key, value.clone()));
        }
        value.filter(|value| !value.is_empty())
    };
    let signature = value_of("Signature");
    let class = value_of("Class");
    let class_guid = value_of("ClassGuid");
    let provider = value_of("Provider");
    let driver_ver = value_of("DriverVer");
    let catalog = value_of("CatalogFile");
    let lockdown = value_of("PnpLockDown");
    if lockdown.as_deref().and_then(inf_number) != Some(1) {
        report.fail(format!(
            "[Version] PnpLockDown is {}: write PnpLockDown=1 (driver package isolation: the \
             installed files may only be changed by the driver store)",
            lockdown.as_deref().unwrap_or("missing")
        ));
    }
    match signature {
        Some(value) if value.eq_ignore_ascii_case(SIGNATURE) => {}
        Some(value) => report.fail(format!(
            "[Version] Signature is {value:?}: write Signature=\"{SIGNATURE}\""
        )),
        None => report.fail(format!(
            "[Version] has no Signature: write Signature=\"{SIGNATURE}\""
        )),
    }
    if class.is_none() {
        report.fail(
            "[Version] has no Class (a primitive driver needs one; this one is Class=System)"
                .to_owned(),
        );
    }
    match class_guid {
        Some(guid) if is_guid(&guid) => {}
        Some(guid) => report.fail(format!(
            "[Version] ClassGuid {guid} is not a {{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}} GUID"
        )),
        None => report.fail(
            "[Version] has no ClassGuid (System is {4D36E97D-E325-11CE-BFC1-08002BE10318})"
                .to_owned(),
        ),
    }
    if provider.is_none() {
        report.fail("[Version] has no Provider".to_owned());
    }
    match driver_ver {
        Some(value) => {
            if let Err(problem) = check_driver_ver(&value) {
                report.fail(format!(
                    "[Version] DriverVer {value:?} is invalid: {problem} (format mm/dd/yyyy,w.x.y.z)"
                ));
            }
        }
        None => report.fail("[Version] has no DriverVer (mm/dd/yyyy,w.x.y.z)".to_owned()),
    }
    match catalog {
        Some(file)
            if file.to_ascii_lowercase().ends_with(".cat") && !file.contains(['\\', '/', ':']) => {}
        Some(file) => report.fail(format!(
            "[Version] CatalogFile {file:?} must be a plain .cat file name (inf2cat writes it)"
        )),
        None => report.fail(
            "[Version] has no CatalogFile: a signed package needs one (CatalogFile=hivetrack.cat)"
                .to_owned(),
        ),
    }
}

fn is_guid(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return false;
    };
    let groups: Vec<&str> = inner.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Validates `mm/dd/yyyy,w.x.y.z`.
fn check_driver_ver(value: &str) -> Result<(), String> {
    let (date, version) = value
        .split_once(',')
        .ok_or_else(|| "no ,w.x.y.z version after the date".to_owned())?;
    let parts: Vec<&str> = date.trim().split('/').collect();
    let [month, day, year] = parts.as_slice() else {
        return Err(format!("date {date:?} is not mm/dd/yyyy"));
    };
    let number = |text: &str, max_len: usize| {
        (!text.is_empty() && text.len() <= max_len && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u32>().ok())
            .flatten()
    };
    let (Some(month), Some(day), Some(year)) = (number(month, 2), number(day, 2), number(year, 4))
    else {
        return Err(format!("date {date:?} is not mm/dd/yyyy"));
    };
    if year.to_string().len() != 4 {
        return Err(format!("year {year} is not four digits"));
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(format!("month {month} is not 1-12")),
    };
    if day == 0 || day > days {
        return Err(format!(
            "day {day} does not exist in month {month} of {year}"
        ));
    }
    let fields: Vec<&str> = version.trim().split('.').collect();
    if fields.len() != 4
        || fields
            .iter()
            .any(|field| number(field, 5).is_none_or(|n| n > 65535))
    {
        return Err(format!(
            "version {:?} is not four numbers 0-65535",
            version.trim()
        ));
    }
    Ok(())
}

/// Sections named by `entry` when it is a directive that names sections.
fn referenced_sections(entry: &Entry) -> Vec<&str> {
    if SECTION_LIST_DIRECTIVES
        .iter()
        .any(|directive| entry.key_is(directive))
    {
        entry
            .values
            .iter()
            .map(|value| value.trim())
            .filter(|value| !value.is_empty() && !value.starts_with('@'))
            .collect()
    } else if entry.key_is("AddService") {
        [entry.value(2), entry.value(3)]
            .into_iter()
            .filter(|value| !value.is_empty())
            .collect()
    } else {
        Vec::new()
    }
}

fn check_references(inf: &Inf, report: &mut InfReport) {
    for section in &inf.sections {
        for entry in &section.entries {
            for target in referenced_sections(entry) {
                let target = expanded(inf, target);
                if inf.section(&target).is_none() {
                    report.fail(format!(
                        "line {}: {} in [{}] names section [{target}], which does not exist",
                        entry.line,
                        entry.key.as_deref().unwrap_or(""),
                        section.name
                    ));
                }
            }
        }
        if entry_is_add_service_without_section(section) {
            report.fail(format!(
                "[{}] AddService needs a service-install section as its third field \
                 (AddService={SERVICE_NAME},,<section>)",
                section.name
            ));
        }
    }
}

fn entry_is_add_service_without_section(section: &Section) -> bool {
    section
        .entries_with_key("AddService")
        .any(|entry| entry.value(2).is_empty())
}

/// Parses an INF number: decimal or `0x` hexadecimal.
fn inf_number(text: &str) -> Option<u32> {
    let text = text.trim();
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .map_or_else(
            || text.parse().ok(),
            |hex| u32::from_str_radix(hex, 16).ok(),
        )
}

/// Sections that make the INF something other than a primitive driver ("Creating a primitive
/// driver", Microsoft Learn): a `[Manufacturer]` section, an undecorated `[DefaultInstall]`
/// (`infverif /w` rejects it: a universal INF's install sections are architecture-decorated),
/// and a `[DefaultUninstall*]` section that does not say `LegacyUninstall=1`.
fn check_primitive(inf: &Inf, report: &mut InfReport) {
    for section in &inf.sections {
        let name = section.name.to_ascii_lowercase();
        if name == "manufacturer" {
            report.fail(
                "[Manufacturer] is present: a primitive driver installs through \
                 [DefaultInstall.NTamd64] and has no [Manufacturer] section"
                    .to_owned(),
            );
        } else if name == "defaultinstall" || name == "defaultinstall.services" {
            report.fail(format!(
                "[{}] is not architecture-decorated: a primitive driver's INF may only have \
                 [{INSTALL_SECTION}] (and [{SERVICES_SECTION}]); infverif /w rejects the \
                 undecorated section",
                section.name
            ));
        } else if name.starts_with("defaultuninstall")
            && section
                .first_value("LegacyUninstall")
                .is_none_or(|v| inf_number(v) != Some(1))
        {
            report.fail(format!(
                "[{}] is present: a primitive driver is removed by the driver store \
                 (pnputil /delete-driver oemN.inf /uninstall), so [DefaultUninstall] is \
                 prohibited unless it says LegacyUninstall=1",
                section.name
            ));
        }
    }
}

fn check_install(inf: &Inf, report: &mut InfReport) {
    match inf.section(INSTALL_SECTION) {
        None => report.fail(format!(
            "[{INSTALL_SECTION}] is missing: pnputil /add-driver hivetrack.inf /install runs it"
        )),
        Some(section) if section.first_value("CopyFiles").is_none() => report.fail(format!(
            "[{INSTALL_SECTION}] has no CopyFiles: the driver file would not be installed"
        )),
        Some(_) => {}
    }
    let Some(services) = inf.section(SERVICES_SECTION) else {
        report.fail(format!(
            "[{SERVICES_SECTION}] is missing: it must hold AddService={SERVICE_NAME},<flags>,<section>"
        ));
        return;
    };
    let adds: Vec<&Entry> = services.entries_with_key("AddService").collect();
    let Some(add) = adds
        .iter()
        .find(|entry| expanded(inf, entry.value(0)).eq_ignore_ascii_case(SERVICE_NAME))
    else {
        report.fail(format!(
            "[{SERVICES_SECTION}] has no AddService={SERVICE_NAME},<flags>,<section> (found: {})",
            adds.iter()
                .map(|entry| entry.value(0))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return;
    };
    let section_name = expanded(inf, add.value(2));
    let Some(service) = inf.section(&section_name) else {
        return; // reported by check_references
    };
    // The README promises that an administrator's `start= system` survives a package update:
    // that is SPSVCINST_NOCLOBBER_STARTTYPE (0x10) on this AddService line (Microsoft Learn,
    // "INF AddService directive": the start type of a service that already exists is not
    // overwritten).
    let flags = expanded(inf, add.value(1));
    if inf_number(&flags).is_none_or(|f| f & 0x10 == 0) {
        report.fail(format!(
            "line {}: AddService={SERVICE_NAME} flags {flags:?} lack 0x00000010 \
             (SPSVCINST_NOCLOBBER_STARTTYPE): a package update would reset an administrator's \
             start= system",
            add.line
        ));
    }
    let value = |key: &str| {
        service
            .first_value(key)
            .map(|raw| expanded(inf, raw))
            .unwrap_or_default()
    };
    let summary = ServiceSummary {
        name: expanded(inf, add.value(0)),
        section: service.name.clone(),
        display_name: value("DisplayName"),
        service_type: value("ServiceType"),
        start_type: value("StartType"),
        error_control: value("ErrorControl"),
        binary: value("ServiceBinary"),
        altitude: altitude(inf, service, report),
    };
    for (key, found, expected, meaning) in [
        (
            "ServiceType",
            &summary.service_type,
            1,
            "SERVICE_KERNEL_DRIVER",
        ),
        (
            "ErrorControl",
            &summary.error_control,
            1,
            "SERVICE_ERROR_NORMAL",
        ),
    ] {
        if inf_number(found) != Some(expected) {
            report.fail(format!(
                "[{}] {key} is {found:?}, expected {expected} ({meaning})",
                service.name
            ));
        }
    }
    // The administrator chooses demand start (3, the INF's) or system start (1, tracking from
    // boot, set with `sc config`); boot start (0) is for drivers the loader needs, auto start
    // (2) is not for drivers (AddService directive, Microsoft Learn).
    if !matches!(inf_number(&summary.start_type), Some(1 | 3)) {
        report.fail(format!(
            "[{}] StartType is {:?}, expected 3 (SERVICE_DEMAND_START) or 1 (SERVICE_SYSTEM_START)",
            service.name, summary.start_type
        ));
    }
    if !summary.binary.eq_ignore_ascii_case(SERVICE_BINARY) {
        report.fail(format!(
            "[{}] ServiceBinary is {:?}, expected {SERVICE_BINARY} (the driver store folder CopyFiles puts the driver in)",
            service.name, summary.binary
        ));
    }
    if summary.display_name.is_empty() {
        report.fail(format!("[{}] has no DisplayName", service.name));
    }
    report.service = Some(summary);
}

/// The `HKR,Parameters,Altitude` `REG_SZ` value written by the service section's `AddReg`.
fn altitude(inf: &Inf, service: &Section, report: &mut InfReport) -> Option<String> {
    let entries: Vec<&Entry> = service
        .entries_with_key("AddReg")
        .flat_map(|entry| entry.values.iter())
        .filter_map(|name| inf.section(&expanded(inf, name)))
        .flat_map(|section| section.entries.iter())
        .filter(|entry| {
            entry.key.is_none()
                && entry.value(0).eq_ignore_ascii_case("HKR")
                && entry.value(1).eq_ignore_ascii_case("Parameters")
                && entry.value(2).eq_ignore_ascii_case("Altitude")
        })
        .collect();
    let Some(entry) = entries.first() else {
        report.fail(format!(
            "[{}] writes no Parameters\\Altitude: add AddReg=<section> with \
             HKR,Parameters,Altitude,0x00000002,\"385217\" (the driver registers its registry \
             callback at that altitude; 0x2 FLG_ADDREG_NOCLOBBER keeps an administrator's value)",
            service.name
        ));
        return None;
    };
    // FLG_ADDREG_BINVALUETYPE (0x1) and the type bits (0xFFFF0000) are zero for REG_SZ, and
    // FLG_ADDREG_NOCLOBBER (0x2) keeps an administrator's edited altitude through a package
    // update, as the README and docs/production-signing.md promise (Microsoft Learn, "INF
    // AddReg directive": an existing value is not replaced).
    let flags = entry.value(3);
    if !flags.is_empty() && inf_number(flags).is_none_or(|f| f & 0xffff_0001 != 0) {
        report.fail(format!(
            "line {}: Parameters\\Altitude flags {flags} are not REG_SZ (use 0x00000002)",
            entry.line
        ));
    } else if inf_number(flags).is_none_or(|f| f & 0x2 == 0) {
        report.fail(format!(
            "line {}: Parameters\\Altitude flags {flags:?} lack 0x00000002 \
             (FLG_ADDREG_NOCLOBBER): a package update would overwrite an administrator's \
             altitude (use 0x00000002)",
            entry.line
        ));
    }
    let value = expanded(inf, entry.value(4));
    let (whole, fraction) = value.split_once('.').unwrap_or((&value, "0"));
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        report.fail(format!(
            "line {}: Parameters\\Altitude {value:?} is not an altitude (digits, optionally \
             .digits, e.g. \"385217\")",
            entry.line
        ));
    }
    Some(value)
}

/// File name of a file-list entry (`name[,source[,temp[,flags]]]`).
fn listed_file(entry: &Entry) -> String {
    entry
        .key
        .clone()
        .unwrap_or_else(|| entry.value(0).to_owned())
}

/// Files named by `directive` (CopyFiles/DelFiles) in section `owner`, with the file-list
/// sections they come from.
fn files_of(inf: &Inf, owner: &str, directive: &str) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut lists = Vec::new();
    let Some(section) = inf.section(owner) else {
        return (files, lists);
    };
    for value in section
        .entries_with_key(directive)
        .flat_map(|e| e.values.iter())
    {
        let value = expanded(inf, value);
        if let Some(file) = value.strip_prefix('@') {
            files.push(file.to_owned());
        } else if let Some(list) = inf.section(&value) {
            lists.push(list.name.clone());
            files.extend(list.entries.iter().map(listed_file));
        }
    }
    (files, lists)
}

fn is_package_file(file: &str) -> bool {
    PACKAGE_FILES.iter().any(|p| p.eq_ignore_ascii_case(file))
}

fn check_files(inf: &Inf, report: &mut InfReport, present: &dyn Fn(&str) -> Option<bool>) {
    let (copied, copy_lists) = files_of(inf, INSTALL_SECTION, "CopyFiles");
    let disks = inf.section("SourceDisksNames");
    let sources = inf.section("SourceDisksFiles");
    if disks.is_none() {
        report.fail("[SourceDisksNames] is missing (1=%DiskName%,,,)".to_owned());
    }
    let source_files: Vec<&Entry> = sources
        .map(|s| s.entries.iter().collect())
        .unwrap_or_default();
    if sources.is_none() {
        report.fail(format!("[SourceDisksFiles] is missing ({DRIVER_FILE}=1)"));
    }
    for (file, place) in copied
        .iter()
        .map(|f| (f.clone(), "copied by the install section"))
        .chain(
            source_files
                .iter()
                .map(|e| (listed_file(e), "listed in [SourceDisksFiles]")),
        )
    {
        if !is_package_file(&file) {
            report.fail(format!(
                "{file} is {place} but is not a package file (package: {})",
                PACKAGE_FILES.join(", ")
            ));
        }
    }
    for entry in &source_files {
        let disk = entry.value(0);
        if disks.is_none_or(|d| d.entries_with_key(disk).next().is_none()) {
            report.fail(format!(
                "line {}: [SourceDisksFiles] {} is on disk {disk:?}, which [SourceDisksNames] \
                 does not define",
                entry.line,
                listed_file(entry)
            ));
        }
    }
    for &file in PACKAGE_FILES {
        if !copied.iter().any(|f| f.eq_ignore_ascii_case(file)) {
            report.fail(format!(
                "package file {file} is not copied by [{INSTALL_SECTION}] CopyFiles"
            ));
        }
        if !source_files
            .iter()
            .any(|e| listed_file(e).eq_ignore_ascii_case(file))
        {
            report.fail(format!(
                "package file {file} is not listed in [SourceDisksFiles]"
            ));
        }
        let status = present(file);
        if status == Some(false) {
            report.fail(format!(
                "package file {file} is not in the package folder: build it first (cargo xtask build)"
            ));
        }
        report.files.push((file.to_owned(), status));
    }
    check_destinations(inf, report, &copy_lists);
}

fn check_destinations(inf: &Inf, report: &mut InfReport, copy_lists: &[String]) {
    let Some(destinations) = inf.section("DestinationDirs") else {
        report.fail(format!(
            "[DestinationDirs] is missing: add DefaultDestDir={DRIVER_STORE_DIRID} (the driver store)"
        ));
        return;
    };
    for list in copy_lists {
        let dirid = destinations
            .first_value(list)
            .or_else(|| destinations.first_value("DefaultDestDir"))
            .map(|raw| expanded(inf, raw));
        match dirid {
            Some(dirid) if inf_number(&dirid) == inf_number(DRIVER_STORE_DIRID) => {
                report.destination = Some(dirid);
            }
            Some(dirid) if inf_number(&dirid) == inf_number(LEGACY_DRIVERS_DIRID) => {
                report.fail(format!(
                    "[DestinationDirs] sends [{list}] to DIRID {dirid} (System32\\drivers): \
                     driver package isolation requires running from the driver store, \
                     DIRID {DRIVER_STORE_DIRID} (infverif /w rejects DIRID 12)"
                ));
            }
            Some(dirid) => report.fail(format!(
                "[DestinationDirs] sends [{list}] to DIRID {dirid}, but ServiceBinary expects \
                 {DRIVER_STORE_DIRID} (the driver store)"
            )),
            None => report.fail(format!(
                "[DestinationDirs] has no entry for [{list}] and no DefaultDestDir"
            )),
        }
    }
}

impl fmt::Display for InfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "inf         {} ({} lines, {} sections, {} strings)",
            self.file, self.line_count, self.section_count, self.strings_defined
        )?;
        for (key, value) in &self.version {
            writeln!(f, "version     {key:<12} {value}")?;
        }
        match &self.service {
            Some(service) => {
                writeln!(
                    f,
                    "service     {} [{}] {:?}",
                    service.name, service.section, service.display_name
                )?;
                writeln!(
                    f,
                    "            type {}, start {}, error control {}, binary {}",
                    service.service_type, service.start_type, service.error_control, service.binary
                )?;
                writeln!(
                    f,
                    "            Parameters\\Altitude {}",
                    service.altitude.as_deref().unwrap_or("(not written)")
                )?;
            }
            None => writeln!(f, "service     (none found)")?,
        }
        for (file, status) in &self.files {
            let status = match status {
                None => "package folder not checked",
                Some(true) => "present in package folder",
                Some(false) => "MISSING from package folder",
            };
            let destination = self.destination.as_deref().unwrap_or("?");
            writeln!(f, "file        {file} -> DIRID {destination} ({status})")?;
        }
        if self.failures.is_empty() {
            writeln!(f, "result      PASS")
        } else {
            writeln!(f, "result      FAIL ({} problem(s)):", self.failures.len())?;
            for failure in &self.failures {
                writeln!(f, "  - {failure}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
