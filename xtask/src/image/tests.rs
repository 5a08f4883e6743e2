//! Unit tests of the image checks on synthetic PE images: one passing image, one image per
//! failure, and the map (allocation) checks.

use super::synth::{Checksum, SynthImage};
use super::*;

const CLEAN_MAP: &str = " hivetrack

 Timestamp is 6b026699 (Sun Nov 22 03:50:49 2026)

  Address         Publics by Value              Rva+Base               Lib:Object

 0001:00000000       DriverEntry                0000000180001000     hivetrack.cgu.0.rcgu.o
 0001:00000c30       IoCreateDevice             0000000180001c30     ntoskrnl:ntoskrnl.exe

 Static symbols

 0001:000001b0       _ZN9hivetrack6unload17hae7d1ae593956641E 00000001800011b0     hivetrack.o
";

fn report_of(image: &SynthImage, map: Option<&str>) -> ImageReport {
    check_image_bytes(
        "synthetic.sys",
        &image.build(),
        map.map(|text| ("synthetic.map", text)),
    )
    .expect("synthetic image parses")
}

/// Asserts the image fails exactly one check, whose message contains every `needle`.
fn assert_single_failure(image: &SynthImage, needles: &[&str]) {
    let report = report_of(image, None);
    assert_eq!(
        report.failures().len(),
        1,
        "expected one failure, got:\n{report}"
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
fn well_formed_driver_passes_and_is_summarised() {
    let report = report_of(&SynthImage::driver(), Some(CLEAN_MAP));
    assert!(report.failures().is_empty(), "{report}");
    assert_eq!(
        report.imports(),
        [
            DllImports {
                dll: "ntoskrnl.exe".to_owned(),
                delay_load: false,
                routines: vec![
                    "IoCreateDevice".to_owned(),
                    "IofCompleteRequest".to_owned(),
                    "MmGetSystemRoutineAddress".to_owned()
                ],
            },
            DllImports {
                dll: "HAL.dll".to_owned(),
                delay_load: false,
                routines: vec!["KeQueryPerformanceCounter".to_owned()],
            },
        ]
    );
    let names: Vec<&str> = report.sections().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [".text", ".idata"]);
    assert_eq!(
        report.allocation(),
        &AllocationCheck::Checked {
            map: "synthetic.map".to_owned(),
            symbols: 3,
            findings: 0
        }
    );
    let text = report.to_string();
    for expected in [
        "AMD64 (0x8664), PE32+",
        "NATIVE (1)",
        "DYNAMIC_BASE | FORCE_INTEGRITY | NX_COMPAT",
        "(valid)",
        ".text",
        "r-x code",
        "ntoskrnl.exe (3):",
        "IoCreateDevice, IofCompleteRequest, MmGetSystemRoutineAddress",
        "HAL.dll (1):",
        "synthetic.map: 3 symbols, 0 allocation symbol(s)",
        "result      PASS",
    ] {
        assert!(
            text.contains(expected),
            "summary lacks {expected:?}:\n{text}"
        );
    }
    assert!(text.lines().count() <= 25, "not one screen:\n{text}");
}

#[test]
fn without_a_map_the_allocation_check_is_reported_as_skipped() {
    let report = report_of(&SynthImage::driver(), None);
    assert!(report.failures().is_empty(), "{report}");
    assert_eq!(report.allocation(), &AllocationCheck::Skipped);
    assert!(
        report
            .to_string()
            .contains("allocation  SKIPPED: no map given")
    );
}

#[test]
fn import_dll_names_are_case_insensitive() {
    let mut image = SynthImage::driver();
    image.imports = vec![
        ("NTOSKRNL.EXE", vec!["IoCreateDevice"]),
        ("hal.DLL", vec!["KeQueryPerformanceCounter"]),
    ];
    assert!(report_of(&image, None).failures().is_empty());
}

#[test]
fn image_without_imports_passes() {
    let mut image = SynthImage::driver();
    image.imports.clear();
    let report = report_of(&image, None);
    assert!(report.failures().is_empty(), "{report}");
    assert!(report.to_string().contains("imports     none"));
}

#[test]
fn i386_machine_fails() {
    let mut image = SynthImage::driver();
    image.machine = pe::IMAGE_FILE_MACHINE_I386;
    assert_single_failure(
        &image,
        &["I386", "expected AMD64", "x86_64-pc-windows-msvc"],
    );
}

#[test]
fn pe32_image_fails() {
    let mut image = SynthImage::driver();
    image.pe32 = true;
    let report = report_of(&image, None);
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("PE32+"));
    // The import table of a PE32 image (4-byte thunks) is still read.
    assert_eq!(report.imports()[0].routines.len(), 3);
}

#[test]
fn console_subsystem_fails() {
    let mut image = SynthImage::driver();
    image.subsystem = pe::IMAGE_SUBSYSTEM_WINDOWS_CUI;
    assert_single_failure(
        &image,
        &[
            "WINDOWS_CUI (3)",
            "expected NATIVE (1)",
            "/SUBSYSTEM:NATIVE",
        ],
    );
}

#[test]
fn each_missing_required_dll_characteristic_fails() {
    for (flag, name, switch) in [
        (
            pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE,
            "DYNAMIC_BASE",
            "/DYNAMICBASE",
        ),
        (
            pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
            "NX_COMPAT",
            "/NXCOMPAT",
        ),
        (
            pe::IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY,
            "FORCE_INTEGRITY",
            "/INTEGRITYCHECK",
        ),
    ] {
        let mut image = SynthImage::driver();
        image.dll_characteristics &= !flag;
        assert_single_failure(&image, &[&format!("lacks {name}"), switch]);
    }
}

#[test]
fn zero_checksum_fails() {
    let mut image = SynthImage::driver();
    image.checksum = Checksum::Zero;
    assert_single_failure(&image, &["checksum is 0", "/RELEASE"]);
}

#[test]
fn wrong_checksum_fails() {
    let mut image = SynthImage::driver();
    image.checksum = Checksum::Wrong;
    assert_single_failure(&image, &["does not match the computed"]);
}

#[test]
fn a_byte_changed_after_linking_breaks_the_checksum() {
    let mut data = SynthImage::driver().build();
    let last = data.len() - 1;
    data[last] ^= 0x5a;
    let report = check_image_bytes("patched.sys", &data, None).unwrap();
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("does not match"));
}

#[test]
fn import_from_another_dll_fails() {
    let mut image = SynthImage::driver();
    image.imports.push(("msvcrt.dll", vec!["malloc", "free"]));
    assert_single_failure(
        &image,
        &[
            "msvcrt.dll (malloc, free)",
            "only from ntoskrnl.exe or HAL.dll",
        ],
    );
}

#[test]
fn each_runtime_resolved_routine_import_fails() {
    for routine in RUNTIME_RESOLVED {
        let mut image = SynthImage::driver();
        image.imports[0].1.push(routine.name);
        assert_single_failure(
            &image,
            &[routine.name, routine.reason, "MmGetSystemRoutineAddress"],
        );
    }
}

#[test]
fn routines_fine_on_1809_may_be_imported() {
    let mut image = SynthImage::driver();
    image.imports[0].1.extend([
        "PsSetCreateProcessNotifyRoutineEx2",
        "ExAllocatePoolWithTag",
        "ExFreePoolWithTag",
        "ExInitializeNPagedLookasideList",
        "CmRegisterCallback",
    ]);
    let report = report_of(&image, None);
    assert!(report.failures().is_empty(), "{report}");
}

#[test]
fn ordinal_import_fails() {
    let mut image = SynthImage::driver();
    image.imports[0].1.push("#42");
    assert_single_failure(&image, &["#42 (by ordinal)", "ntoskrnl.exe"]);
}

#[test]
fn writable_code_section_fails() {
    let mut image = SynthImage::driver();
    image.writable_code = true;
    assert_single_failure(
        &image,
        &["section .text is both writable and executable", "HVCI"],
    );
}

#[test]
fn section_alignment_below_a_page_fails() {
    let mut image = SynthImage::driver();
    image.section_alignment = 0x200;
    assert_single_failure(&image, &["SectionAlignment is 0x200", "HVCI"]);
}

#[test]
fn several_problems_are_all_reported() {
    let mut image = SynthImage::driver();
    image.machine = pe::IMAGE_FILE_MACHINE_ARM64;
    image.checksum = Checksum::Zero;
    image.imports[0].1.push("ExAllocatePool2");
    let report = report_of(&image, None);
    assert_eq!(report.failures().len(), 3, "{report}");
    let text = report.to_string();
    assert!(text.contains("result      FAIL (3 problem(s)):"), "{text}");
}

#[test]
fn map_with_infallible_allocation_fails() {
    let map = format!(
        "{CLEAN_MAP} 0001:00000c27       _RNvNtCs1f2BdUxKfgg_5alloc5alloc18handle_alloc_error \
         0000000180001c27     hivetrack.o\n"
    );
    let report = report_of(&SynthImage::driver(), Some(&map));
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("handle_alloc_error"));
    assert!(report.failures()[0].contains("Driver Verifier"));
}

#[test]
fn map_with_global_allocator_fails_once_per_symbol() {
    let map = format!(
        "{CLEAN_MAP} 0001:00000c00       _RNvCsfLfy6EI15iL_7___rustc12___rust_alloc 0000000180001c00     a.o
 0001:00000c10       _RNvCsfLfy6EI15iL_7___rustc10___rg_alloc 0000000180001c10     a.o
 0001:00000c20       _RNvCsfLfy6EI15iL_7___rustc26___rust_alloc_error_handler 0000000180001c20     a.o
"
    );
    let report = report_of(&SynthImage::driver(), Some(&map));
    let failures = report.failures();
    assert_eq!(failures.len(), 3, "{report}");
    assert!(failures[0].contains("___rust_alloc:") && failures[0].contains("shim (__rust_alloc*)"));
    assert!(failures[1].contains("___rg_alloc:") && failures[1].contains("#[global_allocator]"));
    assert!(failures[2].contains("allocation-error handler"));
}

#[test]
fn text_that_is_not_a_map_fails_instead_of_passing_silently() {
    let report = report_of(&SynthImage::driver(), Some("not a map\n"));
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("not an lld-link /MAP file"));
}

#[test]
fn map_of_another_module_fails() {
    let map = CLEAN_MAP.replace("DriverEntry", "DllMain");
    let report = report_of(&SynthImage::driver(), Some(&map));
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("does not list DriverEntry"));
}

#[test]
fn map_from_another_link_fails() {
    let mut image = SynthImage::driver();
    image.timestamp = 0x6b02_7000;
    let report = report_of(&image, Some(CLEAN_MAP));
    assert_eq!(report.failures().len(), 1, "{report}");
    assert!(report.failures()[0].contains("from another link"));
}

#[test]
fn non_pe_input_is_an_error() {
    assert!(check_image_bytes("x.sys", b"MZ but nothing else", None).is_err());
    assert!(check_image_bytes("x.sys", &[0; 0x400], None).is_err());
    let mut truncated = SynthImage::driver().build();
    truncated.truncate(0x180);
    assert!(check_image_bytes("x.sys", &truncated, None).is_err());
}

#[test]
fn files_are_read_from_disk_and_missing_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("hivetrack-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sys = dir.join("driver.sys");
    let map = dir.join("driver.map");
    std::fs::write(&sys, SynthImage::driver().build()).unwrap();
    std::fs::write(&map, CLEAN_MAP).unwrap();

    let report = check_image(&sys, Some(&map)).unwrap();
    assert!(report.failures().is_empty(), "{report}");
    assert!(report.to_string().contains("driver.sys"));

    let missing = dir.join("missing.sys");
    let error = check_image(&missing, None).unwrap_err();
    assert!(format!("{error:#}").contains("missing.sys"));
    assert!(check_image(&sys, Some(&dir.join("missing.map"))).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On demand, on a real image: `cargo test -p xtask --lib real_image -- --ignored --nocapture`
/// checks `target/package/hivetrack.sys` and `hivetrack.map` (or the files named by
/// `HIVETRACK_SYS` / `HIVETRACK_MAP`), prints the summary and fails on any failed check.
#[test]
#[ignore = "needs a cross-built image (cargo xtask build)"]
fn real_image() {
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/package");
    let sys =
        std::env::var_os("HIVETRACK_SYS").map_or_else(|| package.join("hivetrack.sys"), Into::into);
    let map =
        std::env::var_os("HIVETRACK_MAP").map_or_else(|| package.join("hivetrack.map"), Into::into);
    let report = check_image(&sys, Some(&map)).unwrap();
    println!("{report}");
    assert!(report.failures().is_empty());
}
