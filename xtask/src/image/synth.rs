//! Test helper: small synthetic PE images (a `.text` section and an import table), built with
//! `object::write::pe::Writer`, with every property the image check looks at adjustable.

use object::pe;
use object::write::pe::{NtHeaders, Writer};

use super::checksum::{checksum_field_offset, pe_checksum};

/// What to store in the optional header's `CheckSum` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The correct value.
    Valid,
    /// Zero (what lld-link writes without `/RELEASE`).
    Zero,
    /// The correct value plus one.
    Wrong,
}

/// A synthetic image description; [`SynthImage::driver`] is one that passes every check.
#[derive(Debug, Clone)]
pub struct SynthImage {
    pub machine: u16,
    pub subsystem: u16,
    pub dll_characteristics: u16,
    /// `(dll, routines)`; a routine written `#N` is imported by ordinal N.
    pub imports: Vec<(&'static str, Vec<&'static str>)>,
    pub checksum: Checksum,
    /// Mark `.text` writable as well as executable.
    pub writable_code: bool,
    /// Build a PE32 (32-bit optional header) image instead of PE32+.
    pub pe32: bool,
    /// The optional header's `SectionAlignment` (0x1000 for a driver).
    pub section_alignment: u32,
    pub timestamp: u32,
}

impl SynthImage {
    /// A well-formed x64 driver image importing a few ntoskrnl and HAL routines.
    pub fn driver() -> Self {
        Self {
            machine: pe::IMAGE_FILE_MACHINE_AMD64,
            subsystem: pe::IMAGE_SUBSYSTEM_NATIVE,
            dll_characteristics: pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE
                | pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT
                | pe::IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY
                | pe::IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA,
            imports: vec![
                (
                    "ntoskrnl.exe",
                    vec![
                        "IoCreateDevice",
                        "IofCompleteRequest",
                        "MmGetSystemRoutineAddress",
                    ],
                ),
                ("HAL.dll", vec!["KeQueryPerformanceCounter"]),
            ],
            checksum: Checksum::Valid,
            writable_code: false,
            pe32: false,
            section_alignment: 0x1000,
            timestamp: 0x6b02_6699,
        }
    }

    fn thunk_size(&self) -> u32 {
        if self.pe32 { 4 } else { 8 }
    }

    /// Lays the import directory out at `base` (the RVA of the section holding it).
    fn import_section(&self, base: u32) -> Vec<u8> {
        let thunk = self.thunk_size();
        let descriptors_len = (u32::try_from(self.imports.len()).unwrap() + 1) * 20;
        // First pass: offsets of every thunk table, hint/name entry and DLL name. Thunk tables
        // are aligned to their entry size as linkers do (object reads them as aligned words).
        let mut offset = descriptors_len.next_multiple_of(8);
        let mut tables = Vec::new();
        for (_, routines) in &self.imports {
            let table_len = (u32::try_from(routines.len()).unwrap() + 1) * thunk;
            tables.push((offset, offset + table_len)); // (ILT, IAT)
            offset += 2 * table_len;
        }
        let mut hint_names = Vec::new();
        for (_, routines) in &self.imports {
            let mut per_dll = Vec::new();
            for routine in routines {
                per_dll.push(offset);
                if !routine.starts_with('#') {
                    offset += u32::try_from(2 + routine.len() + 1)
                        .unwrap()
                        .next_multiple_of(2);
                }
            }
            hint_names.push(per_dll);
        }
        let mut dll_names = Vec::new();
        for (dll, _) in &self.imports {
            dll_names.push(offset);
            offset += u32::try_from(dll.len() + 1).unwrap();
        }
        // Second pass: write.
        let mut out = vec![0u8; usize::try_from(offset).unwrap()];
        let put32 = |out: &mut Vec<u8>, at: u32, value: u32| {
            let at = usize::try_from(at).unwrap();
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        };
        for (index, (dll, routines)) in self.imports.iter().enumerate() {
            let descriptor = u32::try_from(index).unwrap() * 20;
            let (ilt, iat) = tables[index];
            put32(&mut out, descriptor, base + ilt); // OriginalFirstThunk
            put32(&mut out, descriptor + 12, base + dll_names[index]); // Name
            put32(&mut out, descriptor + 16, base + iat); // FirstThunk
            for (slot, routine) in routines.iter().enumerate() {
                let value: u64 = routine.strip_prefix('#').map_or_else(
                    || u64::from(base + hint_names[index][slot]),
                    |ordinal| {
                        let flag = if self.pe32 { 1 << 31 } else { 1 << 63 };
                        flag | ordinal.parse::<u64>().unwrap()
                    },
                );
                for table in [ilt, iat] {
                    let at = usize::try_from(table + u32::try_from(slot).unwrap() * thunk).unwrap();
                    let bytes = value.to_le_bytes();
                    out[at..at + usize::try_from(thunk).unwrap()]
                        .copy_from_slice(&bytes[..usize::try_from(thunk).unwrap()]);
                }
                if !routine.starts_with('#') {
                    let at = usize::try_from(hint_names[index][slot] + 2).unwrap();
                    out[at..at + routine.len()].copy_from_slice(routine.as_bytes());
                }
            }
            let at = usize::try_from(dll_names[index]).unwrap();
            out[at..at + dll.len()].copy_from_slice(dll.as_bytes());
        }
        out
    }

    /// Builds the image bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut writer = Writer::new(!self.pe32, self.section_alignment, 0x200, &mut data);
        writer.reserve_dos_header_and_stub();
        writer.reserve_nt_headers(pe::IMAGE_NUMBEROF_DIRECTORY_ENTRIES);
        let has_imports = !self.imports.is_empty();
        writer.reserve_section_headers(if has_imports { 2 } else { 1 });
        let text_flags = pe::IMAGE_SCN_CNT_CODE
            | pe::IMAGE_SCN_MEM_EXECUTE
            | pe::IMAGE_SCN_MEM_READ
            | if self.writable_code {
                pe::IMAGE_SCN_MEM_WRITE
            } else {
                0
            };
        let text = writer.reserve_section(*b".text\0\0\0", text_flags, 16, 16);
        let idata = has_imports.then(|| {
            let len = u32::try_from(self.import_section(0).len()).unwrap();
            writer.reserve_idata_section(len)
        });
        writer.write_dos_header_and_stub().unwrap();
        writer.write_nt_headers(NtHeaders {
            machine: self.machine,
            time_date_stamp: self.timestamp,
            characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE
                | if self.pe32 {
                    pe::IMAGE_FILE_32BIT_MACHINE
                } else {
                    pe::IMAGE_FILE_LARGE_ADDRESS_AWARE
                },
            major_linker_version: 14,
            minor_linker_version: 0,
            address_of_entry_point: text.virtual_address,
            image_base: if self.pe32 { 0x1_0000 } else { 0x1_4000_0000 },
            major_operating_system_version: 10,
            minor_operating_system_version: 0,
            major_image_version: 0,
            minor_image_version: 0,
            major_subsystem_version: 10,
            minor_subsystem_version: 0,
            subsystem: self.subsystem,
            dll_characteristics: self.dll_characteristics,
            size_of_stack_reserve: 0x4_0000,
            size_of_stack_commit: 0x1000,
            size_of_heap_reserve: 0x10_0000,
            size_of_heap_commit: 0x1000,
        });
        writer.write_section_headers();
        writer.write_section(text.file_offset, &[0xc3; 16]);
        if let Some(range) = idata {
            writer.write_section(
                range.file_offset,
                &self.import_section(range.virtual_address),
            );
        }
        let field = checksum_field_offset(&data).unwrap();
        let valid = pe_checksum(&data, field).unwrap();
        let stored = match self.checksum {
            Checksum::Valid => valid,
            Checksum::Zero => 0,
            Checksum::Wrong => valid.wrapping_add(1),
        };
        data[field..field + 4].copy_from_slice(&stored.to_le_bytes());
        data
    }
}
