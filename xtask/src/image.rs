//! Checks on the cross-built driver image (`hivetrack.sys`, a PE32+ file) and its linker map.
//!
//! [`check_image`] reads the image with the `object` crate and verifies what Windows and the
//! project require of a kernel driver: AMD64, subsystem NATIVE, `DYNAMIC_BASE` + `NX_COMPAT` +
//! `FORCE_INTEGRITY`, a valid non-zero PE checksum, no writable+executable section (HVCI),
//! imports only from `ntoskrnl.exe`/`HAL.dll` and none of the routines that must be resolved
//! at run time ([`RUNTIME_RESOLVED`]); with the lld-link `/MAP` file, also that no infallible
//! allocation and no global allocator survived linking. It returns a report that prints a
//! one-screen summary and lists what failed.

mod checksum;
mod map;
mod runtime_routines;
#[cfg(test)]
mod synth;

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile};

pub use checksum::{checksum_field_offset, pe_checksum};
pub use runtime_routines::{RUNTIME_RESOLVED, RuntimeRoutine, runtime_resolved};

/// The only DLLs hivetrack.sys may import from (compared case-insensitively).
///
/// A project rule, not a Windows one: drivers import from other kernel modules too (FLTMGR.SYS, cng.sys,
/// ksecdd.sys, ...); hivetrack needs none, and each would be one more load dependency.
pub const ALLOWED_IMPORT_DLLS: &[&str] = &["ntoskrnl.exe", "HAL.dll"];

/// One section of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Section name (`.text`, `.rdata`, ...).
    pub name: String,
    /// Size in memory.
    pub virtual_size: u32,
    /// Size in the file.
    pub raw_size: u32,
    /// `IMAGE_SCN_*` flags.
    pub characteristics: u32,
}

/// The routines imported from one DLL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DllImports {
    /// DLL name as written in the import descriptor.
    pub dll: String,
    /// Whether this comes from the delay-load import directory.
    pub delay_load: bool,
    /// Routine names; ordinal imports are written `#N`.
    pub routines: Vec<String>,
}

/// What the allocation check (map scan) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationCheck {
    /// No map was given: the check did not run.
    Skipped,
    /// The map was read.
    Checked {
        /// The map file, as given.
        map: String,
        /// Symbol lines read from it.
        symbols: usize,
        /// Symbols that reveal allocation machinery.
        findings: usize,
    },
}

/// Result of [`check_image`]: the image's facts and the list of failed checks.
#[derive(Debug, Clone)]
pub struct ImageReport {
    file: String,
    size: usize,
    machine: u16,
    pe32_plus: bool,
    timestamp: u32,
    subsystem: u16,
    dll_characteristics: u16,
    section_alignment: u32,
    checksum_stored: u32,
    checksum_computed: Option<u32>,
    sections: Vec<SectionInfo>,
    imports: Vec<DllImports>,
    allocation: AllocationCheck,
    failures: Vec<String>,
}

impl ImageReport {
    /// Failed checks, each a sentence saying what is wrong and what to do; empty = pass.
    #[must_use]
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The image's sections.
    #[must_use]
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The image's imports, grouped by DLL.
    #[must_use]
    pub fn imports(&self) -> &[DllImports] {
        &self.imports
    }

    /// What the allocation (map) check did.
    #[must_use]
    pub const fn allocation(&self) -> &AllocationCheck {
        &self.allocation
    }

    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }
}

/// Checks the driver image at `sys`, and its lld-link `/MAP` file `map` when given.
///
/// Returns `Ok(report)` whether or not the checks pass (see [`ImageReport::failures`]).
///
/// # Errors
/// When a file cannot be read, or `sys` is not a PE image whose headers and import table can
/// be parsed.
pub fn check_image(sys: &Path, map: Option<&Path>) -> anyhow::Result<ImageReport> {
    let data = std::fs::read(sys).with_context(|| format!("cannot read {}", sys.display()))?;
    let map_text = map
        .map(|path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read map file {}", path.display()))
                .map(|bytes| {
                    (
                        path.display().to_string(),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    )
                })
        })
        .transpose()?;
    check_image_bytes(
        &sys.display().to_string(),
        &data,
        map_text
            .as_ref()
            .map(|(name, text)| (name.as_str(), text.as_str())),
    )
}

/// [`check_image`] on bytes already in memory: `name` labels the image, `map` is
/// `(map name, map text)`.
///
/// # Errors
/// When `data` is not a PE image whose headers and import table can be parsed.
pub fn check_image_bytes(
    name: &str,
    data: &[u8],
    map: Option<(&str, &str)>,
) -> anyhow::Result<ImageReport> {
    let mut report = ImageReport {
        file: name.to_owned(),
        size: data.len(),
        machine: 0,
        pe32_plus: false,
        timestamp: 0,
        subsystem: 0,
        dll_characteristics: 0,
        section_alignment: 0,
        checksum_stored: 0,
        checksum_computed: None,
        sections: Vec::new(),
        imports: Vec::new(),
        allocation: AllocationCheck::Skipped,
        failures: Vec::new(),
    };
    let magic = object::read::pe::optional_header_magic(data)
        .map_err(|error| anyhow::anyhow!("{name} is not a PE image: {error}"))?;
    match magic {
        pe::IMAGE_NT_OPTIONAL_HDR64_MAGIC => {
            report.pe32_plus = true;
            read_headers::<pe::ImageNtHeaders64>(data, &mut report)
        }
        pe::IMAGE_NT_OPTIONAL_HDR32_MAGIC => {
            read_headers::<pe::ImageNtHeaders32>(data, &mut report)
        }
        other => bail!("{name} has an unknown optional-header magic {other:#x}"),
    }
    .with_context(|| format!("cannot parse {name}"))?;
    report.checksum_computed =
        checksum_field_offset(data).and_then(|offset| pe_checksum(data, offset));

    check_headers(&mut report);
    check_sections(&mut report);
    check_imports(&mut report);
    if let Some((map_name, text)) = map {
        check_map(&mut report, map_name, text);
    }
    Ok(report)
}

/// Fills the report from the headers, section table and import directories.
fn read_headers<Pe: ImageNtHeaders>(data: &[u8], report: &mut ImageReport) -> anyhow::Result<()> {
    let file = PeFile::<Pe, &[u8]>::parse(data).map_err(|error| anyhow::anyhow!("{error}"))?;
    let headers = file.nt_headers();
    report.machine = headers.file_header().machine.get(LE);
    report.timestamp = headers.file_header().time_date_stamp.get(LE);
    let optional = headers.optional_header();
    report.subsystem = optional.subsystem();
    report.dll_characteristics = optional.dll_characteristics();
    report.section_alignment = optional.section_alignment();
    report.checksum_stored = optional.check_sum();
    for section in file.section_table().iter() {
        let raw = section.raw_name();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        report.sections.push(SectionInfo {
            name: String::from_utf8_lossy(&raw[..end]).into_owned(),
            virtual_size: section.virtual_size.get(LE),
            raw_size: section.size_of_raw_data.get(LE),
            characteristics: section.characteristics.get(LE),
        });
    }
    read_imports::<Pe>(&file, report)?;
    read_delay_imports::<Pe>(&file, data, report)
}

fn routine_name(import: Import<'_>) -> String {
    match import {
        Import::Ordinal(ordinal) => format!("#{ordinal}"),
        Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
    }
}

fn read_imports<'data, Pe: ImageNtHeaders>(
    file: &PeFile<'data, Pe, &'data [u8]>,
    report: &mut ImageReport,
) -> anyhow::Result<()> {
    let Some(table) = file
        .import_table()
        .map_err(|error| anyhow::anyhow!("import directory: {error}"))?
    else {
        return Ok(());
    };
    let mut descriptors = table
        .descriptors()
        .map_err(|error| anyhow::anyhow!("import descriptors: {error}"))?;
    while let Some(descriptor) = descriptors
        .next()
        .map_err(|error| anyhow::anyhow!("import descriptor: {error}"))?
    {
        let dll = table
            .name(descriptor.name.get(LE))
            .map_err(|error| anyhow::anyhow!("import DLL name: {error}"))?;
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => descriptor.first_thunk.get(LE),
            address => address,
        };
        let mut thunks = table
            .thunks(lookup)
            .map_err(|error| anyhow::anyhow!("import thunks: {error}"))?;
        let mut routines = Vec::new();
        while let Some(thunk) = thunks
            .next::<Pe>()
            .map_err(|error| anyhow::anyhow!("import thunk: {error}"))?
        {
            let import = table
                .import::<Pe>(thunk)
                .map_err(|error| anyhow::anyhow!("import name: {error}"))?;
            routines.push(routine_name(import));
        }
        report.imports.push(DllImports {
            dll: String::from_utf8_lossy(dll).into_owned(),
            delay_load: false,
            routines,
        });
    }
    Ok(())
}

fn read_delay_imports<'data, Pe: ImageNtHeaders>(
    file: &PeFile<'data, Pe, &'data [u8]>,
    data: &'data [u8],
    report: &mut ImageReport,
) -> anyhow::Result<()> {
    let sections = file.section_table();
    let Some(table) = file
        .data_directories()
        .delay_load_import_table(data, &sections)
        .map_err(|error| anyhow::anyhow!("delay-load import directory: {error}"))?
    else {
        return Ok(());
    };
    let mut descriptors = table
        .descriptors()
        .map_err(|error| anyhow::anyhow!("delay-load descriptors: {error}"))?;
    while let Some(descriptor) = descriptors
        .next()
        .map_err(|error| anyhow::anyhow!("delay-load descriptor: {error}"))?
    {
        let dll = table
            .name(descriptor.dll_name_rva.get(LE))
            .map_err(|error| anyhow::anyhow!("delay-load DLL name: {error}"))?;
        let mut thunks = table
            .thunks(descriptor.import_name_table_rva.get(LE))
            .map_err(|error| anyhow::anyhow!("delay-load thunks: {error}"))?;
        let mut routines = Vec::new();
        while let Some(thunk) = thunks
            .next::<Pe>()
            .map_err(|error| anyhow::anyhow!("delay-load thunk: {error}"))?
        {
            let import = table
                .import::<Pe>(thunk)
                .map_err(|error| anyhow::anyhow!("delay-load name: {error}"))?;
            routines.push(routine_name(import));
        }
        report.imports.push(DllImports {
            dll: String::from_utf8_lossy(dll).into_owned(),
            delay_load: true,
            routines,
        });
    }
    Ok(())
}

const fn machine_name(machine: u16) -> &'static str {
    match machine {
        pe::IMAGE_FILE_MACHINE_AMD64 => "AMD64",
        pe::IMAGE_FILE_MACHINE_I386 => "I386",
        pe::IMAGE_FILE_MACHINE_ARM64 => "ARM64",
        pe::IMAGE_FILE_MACHINE_ARMNT => "ARMNT",
        _ => "unknown",
    }
}

const fn subsystem_name(subsystem: u16) -> &'static str {
    match subsystem {
        pe::IMAGE_SUBSYSTEM_NATIVE => "NATIVE",
        pe::IMAGE_SUBSYSTEM_WINDOWS_GUI => "WINDOWS_GUI",
        pe::IMAGE_SUBSYSTEM_WINDOWS_CUI => "WINDOWS_CUI",
        pe::IMAGE_SUBSYSTEM_EFI_APPLICATION => "EFI_APPLICATION",
        pe::IMAGE_SUBSYSTEM_EFI_BOOT_SERVICE_DRIVER => "EFI_BOOT_SERVICE_DRIVER",
        pe::IMAGE_SUBSYSTEM_EFI_RUNTIME_DRIVER => "EFI_RUNTIME_DRIVER",
        _ => "unknown",
    }
}

const DLL_CHARACTERISTIC_NAMES: &[(u16, &str)] = &[
    (
        pe::IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA,
        "HIGH_ENTROPY_VA",
    ),
    (pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, "DYNAMIC_BASE"),
    (
        pe::IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
        "FORCE_INTEGRITY",
    ),
    (pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT, "NX_COMPAT"),
    (pe::IMAGE_DLLCHARACTERISTICS_NO_ISOLATION, "NO_ISOLATION"),
    (pe::IMAGE_DLLCHARACTERISTICS_NO_SEH, "NO_SEH"),
    (pe::IMAGE_DLLCHARACTERISTICS_NO_BIND, "NO_BIND"),
    (pe::IMAGE_DLLCHARACTERISTICS_APPCONTAINER, "APPCONTAINER"),
    (pe::IMAGE_DLLCHARACTERISTICS_WDM_DRIVER, "WDM_DRIVER"),
    (pe::IMAGE_DLLCHARACTERISTICS_GUARD_CF, "GUARD_CF"),
    (
        pe::IMAGE_DLLCHARACTERISTICS_TERMINAL_SERVER_AWARE,
        "TERMINAL_SERVER_AWARE",
    ),
];

/// Required `DllCharacteristics` flags, with the linker switch and why.
const REQUIRED_DLL_CHARACTERISTICS: &[(u16, &str, &str)] = &[
    (
        pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE,
        "DYNAMIC_BASE",
        "link with /DYNAMICBASE (project rule: the kernel relocates drivers; Learn documents \
         no load requirement for the flag)",
    ),
    (
        pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        "NX_COMPAT",
        "link with /NXCOMPAT (project rule: the driver is compatible with non-executable data \
         and pool; Learn documents no load requirement for the flag)",
    ),
    (
        pe::IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
        "FORCE_INTEGRITY",
        "link with /INTEGRITYCHECK: without it PsSetCreateProcessNotifyRoutineEx(2) and \
         ObRegisterCallbacks return STATUS_ACCESS_DENIED (Learn, \
         \"PsSetCreateProcessNotifyRoutineEx\")",
    ),
];

fn check_headers(report: &mut ImageReport) {
    if !report.pe32_plus {
        report.fail(
            "the image is PE32 (32-bit optional header): an x64 driver must be PE32+; build for \
             x86_64-pc-windows-msvc"
                .to_owned(),
        );
    }
    if report.machine != pe::IMAGE_FILE_MACHINE_AMD64 {
        report.fail(format!(
            "machine is {} ({:#06x}), expected AMD64 (0x8664): build for x86_64-pc-windows-msvc",
            machine_name(report.machine),
            report.machine
        ));
    }
    if report.subsystem != pe::IMAGE_SUBSYSTEM_NATIVE {
        report.fail(format!(
            "subsystem is {} ({}), expected NATIVE (1): link with /SUBSYSTEM:NATIVE /DRIVER \
             (wdk-build's configure_wdk_binary_build passes them)",
            subsystem_name(report.subsystem),
            report.subsystem
        ));
    }
    for &(flag, name, fix) in REQUIRED_DLL_CHARACTERISTICS {
        if report.dll_characteristics & flag == 0 {
            report.fail(format!("DllCharacteristics lacks {name}: {fix}"));
        }
    }
    match report.checksum_computed {
        None => report.fail(
            "the PE checksum cannot be computed (file over 4 GiB or headers truncated)".to_owned(),
        ),
        Some(_) if report.checksum_stored == 0 => report.fail(
            "the stored PE checksum is 0: link with /RELEASE so the linker writes it (Learn, \
             \"/RELEASE (Set the Checksum)\": \"The operating system requires the Checksum for \
             device drivers\"; link.exe sets it for /SUBSYSTEM:NATIVE by itself, rust-lld only \
             with the switch)"
                .to_owned(),
        ),
        Some(computed) if computed != report.checksum_stored => report.fail(format!(
            "the stored PE checksum {:#010x} does not match the computed {computed:#010x}: the \
             file changed after linking (or is truncated); relink with /RELEASE and do not \
             patch the image afterwards",
            report.checksum_stored
        )),
        Some(_) => {}
    }
}

fn check_sections(report: &mut ImageReport) {
    // Learn, "Implement memory integrity compatible code": "Section alignment is a multiple of
    // 0x1000 (PAGE_SIZE)" (production-signing.md §2 lists it among that page's rules).
    if report.section_alignment == 0 || !report.section_alignment.is_multiple_of(0x1000) {
        report.fail(format!(
            "SectionAlignment is {:#x}, not a multiple of 0x1000: HVCI (memory integrity) needs \
             page-aligned sections; do not link with /ALIGN below 4096",
            report.section_alignment
        ));
    }
    let writable_code: Vec<String> = report
        .sections
        .iter()
        .filter(|section| {
            section.characteristics & pe::IMAGE_SCN_MEM_EXECUTE != 0
                && section.characteristics & pe::IMAGE_SCN_MEM_WRITE != 0
        })
        .map(|section| section.name.clone())
        .collect();
    for name in writable_code {
        report.fail(format!(
            "section {name} is both writable and executable: HVCI (memory integrity) refuses to \
             load such a driver; keep code and writable data in separate sections (no /MERGE \
             of data into .text, no /SECTION:...,RWE)"
        ));
    }
}

fn check_imports(report: &mut ImageReport) {
    let mut failures = Vec::new();
    for imports in &report.imports {
        let kind = if imports.delay_load {
            "delay-load imports"
        } else {
            "imports"
        };
        if !ALLOWED_IMPORT_DLLS
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&imports.dll))
        {
            failures.push(format!(
                "the image {kind} from {} ({}): hivetrack.sys imports only from \
                 ntoskrnl.exe or HAL.dll (a project rule); find what pulls it in (the map's Lib:Object column) \
                 and remove it",
                imports.dll,
                imports.routines.join(", ")
            ));
        }
        for routine in &imports.routines {
            if routine.starts_with('#') {
                failures.push(format!(
                    "the image {kind} {routine} (by ordinal) from {}: kernel exports are \
                     imported by name; link against a name-based import library",
                    imports.dll
                ));
            } else if let Some(entry) = runtime_resolved(routine) {
                failures.push(format!(
                    "the image {kind} {routine} from {}: {}; resolve it at run time with \
                     MmGetSystemRoutineAddress instead of importing it",
                    imports.dll, entry.reason
                ));
            }
        }
    }
    report.failures.extend(failures);
}

fn check_map(report: &mut ImageReport, map_name: &str, text: &str) {
    let facts = map::read_map(text);
    report.allocation = AllocationCheck::Checked {
        map: map_name.to_owned(),
        symbols: facts.symbol_count,
        findings: facts.allocation_findings.len(),
    };
    if facts.symbol_count == 0 {
        report.fail(format!(
            "{map_name} lists no symbols: it is not an lld-link /MAP file, so the allocation \
             check could not run; pass the map the driver link wrote (/MAP)"
        ));
        return;
    }
    if !facts.has_driver_entry {
        report.fail(format!(
            "{map_name} does not list DriverEntry: it is not the map of this driver; pass the \
             map written by the same link as the image"
        ));
    }
    if let Some(timestamp) = facts.timestamp
        && timestamp != report.timestamp
    {
        report.fail(format!(
            "{map_name} has timestamp {timestamp:#010x} but the image {:#010x}: the map comes \
             from another link; rebuild so both come from the same link",
            report.timestamp
        ));
    }
    for (symbol, meaning) in facts.allocation_findings {
        report.fail(format!(
            "{map_name} keeps {symbol}: {meaning}; the driver must allocate only through \
             fallible pool calls so the linker drops the global allocator"
        ));
    }
}

/// Short flag summary of a section: `r-x`, plus content kind and memory attributes.
fn section_flags(characteristics: u32) -> String {
    let bit = |flag: u32, letter: char| {
        if characteristics & flag == 0 {
            '-'
        } else {
            letter
        }
    };
    let mut flags = format!(
        "{}{}{}",
        bit(pe::IMAGE_SCN_MEM_READ, 'r'),
        bit(pe::IMAGE_SCN_MEM_WRITE, 'w'),
        bit(pe::IMAGE_SCN_MEM_EXECUTE, 'x')
    );
    for (flag, name) in [
        (pe::IMAGE_SCN_CNT_CODE, "code"),
        (pe::IMAGE_SCN_CNT_INITIALIZED_DATA, "data"),
        (pe::IMAGE_SCN_CNT_UNINITIALIZED_DATA, "bss"),
        (pe::IMAGE_SCN_MEM_DISCARDABLE, "discardable"),
        (pe::IMAGE_SCN_MEM_NOT_PAGED, "not-paged"),
        (pe::IMAGE_SCN_MEM_SHARED, "shared"),
    ] {
        if characteristics & flag != 0 {
            flags.push(' ');
            flags.push_str(name);
        }
    }
    flags
}

/// Writes `items` comma-separated, wrapped to lines of about 100 columns after `indent`.
fn write_wrapped(f: &mut fmt::Formatter<'_>, indent: &str, items: &[String]) -> fmt::Result {
    let mut column = 0;
    for (index, item) in items.iter().enumerate() {
        let separator = if index + 1 == items.len() { "" } else { "," };
        if column > 0 && column + item.len() + 2 > 88 {
            writeln!(f)?;
            column = 0;
        }
        if column == 0 {
            write!(f, "{indent}")?;
        } else {
            write!(f, " ")?;
            column += 1;
        }
        write!(f, "{item}{separator}")?;
        column += item.len() + separator.len();
    }
    if column > 0 {
        writeln!(f)?;
    }
    Ok(())
}

impl fmt::Display for ImageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image       {} ({} bytes)", self.file, self.size)?;
        writeln!(
            f,
            "machine     {} ({:#06x}), {}",
            machine_name(self.machine),
            self.machine,
            if self.pe32_plus { "PE32+" } else { "PE32" }
        )?;
        writeln!(
            f,
            "subsystem   {} ({})",
            subsystem_name(self.subsystem),
            self.subsystem
        )?;
        let names: Vec<&str> = DLL_CHARACTERISTIC_NAMES
            .iter()
            .filter(|(flag, _)| self.dll_characteristics & flag != 0)
            .map(|&(_, name)| name)
            .collect();
        writeln!(
            f,
            "dll chars   {:#06x} {}",
            self.dll_characteristics,
            names.join(" | ")
        )?;
        let computed = self
            .checksum_computed
            .map_or_else(|| "n/a".to_owned(), |value| format!("{value:#010x}"));
        let verdict = match self.checksum_computed {
            Some(value) if value == self.checksum_stored && value != 0 => "valid",
            _ => "INVALID",
        };
        writeln!(
            f,
            "checksum    stored {:#010x}, computed {computed} ({verdict})",
            self.checksum_stored
        )?;
        writeln!(f, "sections    name       virtual      raw  flags")?;
        for section in &self.sections {
            writeln!(
                f,
                "            {:<8} {:>9} {:>8}  {}",
                section.name,
                section.virtual_size,
                section.raw_size,
                section_flags(section.characteristics)
            )?;
        }
        if self.imports.is_empty() {
            writeln!(f, "imports     none")?;
        }
        for imports in &self.imports {
            writeln!(
                f,
                "imports     {}{} ({}):",
                imports.dll,
                if imports.delay_load {
                    " [delay-load]"
                } else {
                    ""
                },
                imports.routines.len()
            )?;
            write_wrapped(f, "              ", &imports.routines)?;
        }
        match &self.allocation {
            AllocationCheck::Skipped => writeln!(
                f,
                "allocation  SKIPPED: no map given (pass the lld-link /MAP file to check for \
                 handle_alloc_error and the global allocator)"
            )?,
            AllocationCheck::Checked {
                map,
                symbols,
                findings,
            } => writeln!(
                f,
                "allocation  {map}: {symbols} symbols, {findings} allocation symbol(s)"
            )?,
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
