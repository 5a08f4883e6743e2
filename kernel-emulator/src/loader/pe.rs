//! PE32+ image loader: maps the sections of a `.sys` at their RVAs in anonymous memory,
//! applies DIR64 base relocations, binds imports by name through a resolver (collecting every
//! unresolved one before refusing), initialises the /GS cookie as the kernel loader does, and
//! sets page protections per section. Symbolizes addresses inside the image.

use std::ptr;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{Import, PeFile64};

use crate::loader::mapfile::MapFile;

/// Page size of the host (and of x64 Windows).
pub const PAGE: usize = 4096;

/// One section of the mapped image.
#[derive(Debug, Clone)]
pub struct Section {
    /// Name (`.text`, ...).
    pub name: String,
    /// RVA of its first byte.
    pub rva: u32,
    /// Virtual size.
    pub vsize: u32,
    /// IMAGE_SCN_* flags.
    pub characteristics: u32,
}

/// One bound import.
#[derive(Debug, Clone)]
pub struct BoundImport {
    /// DLL name as written in the image (`ntoskrnl.exe`).
    pub dll: String,
    /// Routine name.
    pub name: String,
    /// Address bound into the IAT.
    pub address: usize,
}

/// Why an image was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or parsed.
    #[error("{0}")]
    Malformed(String),
    /// Imports the model does not provide (or hides): the driver must not run.
    #[error("{} unresolved import(s): {}", .0.len(), .0.join(", "))]
    Unresolved(Vec<String>),
}

/// A mapped, relocated, bound image.
#[derive(Debug)]
pub struct Image {
    /// File name (for reports).
    pub file_name: String,
    /// Base address of the mapping.
    pub base: usize,
    /// SizeOfImage.
    pub size: usize,
    /// ImageBase from the optional header.
    pub preferred_base: u64,
    /// AddressOfEntryPoint.
    pub entry_rva: u32,
    /// DllCharacteristics (FORCE_INTEGRITY = /INTEGRITYCHECK, ...).
    pub dll_characteristics: u16,
    /// Sections.
    pub sections: Vec<Section>,
    /// Bound imports.
    pub imports: Vec<BoundImport>,
    /// .pdata function ranges (begin RVA, end RVA), sorted.
    pub functions: Vec<(u32, u32)>,
    /// Number of DIR64 relocations applied.
    pub relocations: usize,
    /// Linker map symbols, if a map was given.
    pub map: Option<MapFile>,
}

fn prot_for(characteristics: u32) -> i32 {
    let x = characteristics & pe::IMAGE_SCN_MEM_EXECUTE != 0;
    let w = characteristics & pe::IMAGE_SCN_MEM_WRITE != 0;
    let r = characteristics & pe::IMAGE_SCN_MEM_READ != 0 || x || w;
    (if r { libc::PROT_READ } else { 0 })
        | (if w { libc::PROT_WRITE } else { 0 })
        | (if x { libc::PROT_EXEC } else { 0 })
}

fn err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Malformed(e.to_string())
}

/// The anonymous mapping that holds the image while it is being built; unmapped on error.
struct Mapping {
    base: *mut u8,
    size: usize,
}

impl Mapping {
    fn new(size: usize) -> Result<Self, LoadError> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(err(format!(
                "mmap of {size:#x} bytes failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            base: base.cast(),
            size,
        })
    }

    /// A pointer to `len` bytes at `rva`, bounds-checked against the image size.
    fn at(&self, rva: usize, len: usize) -> Result<*mut u8, LoadError> {
        if rva.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(err(format!(
                "RVA range {rva:#x}+{len:#x} outside the image"
            )));
        }
        // SAFETY: rva + len <= size, so the result stays inside the mapping.
        Ok(unsafe { self.base.add(rva) })
    }

    fn write(&self, rva: usize, bytes: &[u8]) -> Result<(), LoadError> {
        let dst = self.at(rva, bytes.len())?;
        // SAFETY: `dst` is valid for bytes.len() writable bytes (checked by `at`, mapping RW).
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    fn read_u64(&self, rva: usize) -> Result<u64, LoadError> {
        let p = self.at(rva, 8)?;
        // SAFETY: 8 readable bytes at `p` (checked by `at`).
        Ok(unsafe { p.cast::<u64>().read_unaligned() })
    }

    fn write_u64(&self, rva: usize, v: u64) -> Result<(), LoadError> {
        self.write(rva, &v.to_le_bytes())
    }

    /// Gives up ownership: the image stays mapped for the rest of the process.
    fn keep(self) -> usize {
        let base = self.base as usize;
        std::mem::forget(self);
        base
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the region this value mapped and still owns.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// Loads `data` (the bytes of `file_name`) and binds its imports with `resolve(dll, name)`.
///
/// # Errors
/// [`LoadError::Unresolved`] names every import `resolve` did not provide;
/// [`LoadError::Malformed`] for anything the loader cannot map.
#[allow(clippy::too_many_lines)] // one linear loader pass, easier to audit in one piece
pub fn load(
    file_name: &str,
    data: &[u8],
    resolve: &dyn Fn(&str, &str) -> Option<usize>,
) -> Result<Image, LoadError> {
    let file = PeFile64::parse(data).map_err(|e| err(format!("not a PE32+ image: {e}")))?;
    let nt = file.nt_headers();
    let machine = nt.file_header.machine.get(LE);
    if machine != pe::IMAGE_FILE_MACHINE_AMD64 {
        return Err(err(format!("machine {machine:#x} is not AMD64")));
    }
    let oh = &nt.optional_header;
    let preferred_base = oh.image_base.get(LE);
    let size = oh.size_of_image.get(LE) as usize;
    let header_size = oh.size_of_headers.get(LE) as usize;
    let entry_rva = oh.address_of_entry_point.get(LE);
    let dll_characteristics = oh.dll_characteristics.get(LE);
    if (oh.section_alignment.get(LE) as usize) < PAGE {
        return Err(err("SectionAlignment below the page size"));
    }
    let map = Mapping::new(size)?;
    map.write(0, &data[..header_size.min(data.len())])?;

    let table = file.section_table();
    let mut sections = Vec::new();
    for s in table.iter() {
        let name = String::from_utf8_lossy(s.raw_name())
            .trim_end_matches('\0')
            .to_string();
        let rva = s.virtual_address.get(LE);
        let raw = s.size_of_raw_data.get(LE) as usize;
        let vsize = match s.virtual_size.get(LE) {
            0 => raw as u32,
            v => v,
        };
        if !(rva as usize).is_multiple_of(PAGE) {
            return Err(err(format!(
                "section {name} at RVA {rva:#x} is not page aligned"
            )));
        }
        let n = raw.min(vsize as usize);
        if n > 0 {
            let off = s.pointer_to_raw_data.get(LE) as usize;
            let src = data
                .get(off..off + n)
                .ok_or_else(|| err(format!("section {name}: raw data outside the file")))?;
            map.write(rva as usize, src)?;
        }
        sections.push(Section {
            name,
            rva,
            vsize,
            characteristics: s.characteristics.get(LE),
        });
    }

    // Base relocations: the kernel always relocates drivers, so must we.
    let delta = (map.base as u64).wrapping_sub(preferred_base);
    let dirs = file.data_directories();
    let mut relocations = 0;
    match dirs.relocation_blocks(data, &table).map_err(err)? {
        Some(mut blocks) => {
            while let Some(block) = blocks.next().map_err(err)? {
                for r in block {
                    match r.typ {
                        pe::IMAGE_REL_BASED_ABSOLUTE => {}
                        pe::IMAGE_REL_BASED_DIR64 => {
                            let rva = r.virtual_address as usize;
                            map.write_u64(rva, map.read_u64(rva)?.wrapping_add(delta))?;
                            relocations += 1;
                        }
                        t => {
                            return Err(err(format!(
                                "unsupported base relocation type {t} at RVA {:#x}",
                                r.virtual_address
                            )));
                        }
                    }
                }
            }
        }
        None if delta != 0 => return Err(err("image has no base relocations")),
        None => {}
    }

    // Imports, bound by name; every unresolved one is collected before refusing.
    let mut imports = Vec::new();
    let mut missing = Vec::new();
    if let Some(itable) = dirs.import_table(data, &table).map_err(err)? {
        let mut descriptors = itable.descriptors().map_err(err)?;
        while let Some(d) = descriptors.next().map_err(err)? {
            let dll =
                String::from_utf8_lossy(itable.name(d.name.get(LE)).map_err(err)?).to_string();
            let iat = d.first_thunk.get(LE) as usize;
            let ilt = match d.original_first_thunk.get(LE) {
                0 => iat as u32,
                v => v,
            };
            let mut thunks = itable.thunks(ilt).map_err(err)?;
            let mut i = 0usize;
            while let Some(t) = thunks.next::<pe::ImageNtHeaders64>().map_err(err)? {
                let name = match itable.import::<pe::ImageNtHeaders64>(t).map_err(err)? {
                    Import::Name(_, n) => String::from_utf8_lossy(n).to_string(),
                    Import::Ordinal(o) => format!("#{o}"),
                };
                match resolve(&dll.to_ascii_lowercase(), &name) {
                    Some(address) => {
                        map.write_u64(iat + i * 8, address as u64)?;
                        imports.push(BoundImport {
                            dll: dll.clone(),
                            name,
                            address,
                        });
                    }
                    None => missing.push(format!("{dll}!{name}")),
                }
                i += 1;
            }
        }
    }
    if !missing.is_empty() {
        return Err(LoadError::Unresolved(missing));
    }
    if dirs
        .get(pe::IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT)
        .is_some_and(|d| d.virtual_address.get(LE) != 0)
    {
        return Err(err("delay-load imports are not supported"));
    }

    // /GS cookie (IMAGE_LOAD_CONFIG_DIRECTORY64.SecurityCookie at +0x58): the kernel loader
    // replaces the default value, or GsDriverEntry bugchecks 0xF7.
    if let Some(lc) = dirs.get(pe::IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG) {
        let (rva, len) = (
            lc.virtual_address.get(LE) as usize,
            lc.size.get(LE) as usize,
        );
        if rva != 0 && len >= 0x60 {
            let va = map.read_u64(rva + 0x58)?;
            if va != 0 {
                let cookie_rva = va.wrapping_sub(map.base as u64) as usize;
                let random = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x2B99_2DDF_A233, |d| d.as_nanos() as u64);
                map.write_u64(cookie_rva, random & 0x0000_FFFF_FFFF_FFFF)?;
            }
        }
    }

    // .pdata: function ranges for symbolization without a map.
    let mut functions = Vec::new();
    if let Some(ex) = dirs.get(pe::IMAGE_DIRECTORY_ENTRY_EXCEPTION) {
        let (rva, len) = (
            ex.virtual_address.get(LE) as usize,
            ex.size.get(LE) as usize,
        );
        if rva != 0 {
            let p = map.at(rva, len)?;
            for i in 0..len / 12 {
                let mut entry = [0u8; 8];
                // SAFETY: entry i lies inside [rva, rva + len), checked by `at`.
                unsafe { ptr::copy_nonoverlapping(p.wrapping_add(i * 12), entry.as_mut_ptr(), 8) };
                let begin = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let end = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                functions.push((begin, end));
            }
        }
    }
    functions.sort_unstable();

    // Page protections: headers R, code RX, data RW, read-only data R.
    // SAFETY: the first page of our own mapping.
    unsafe { libc::mprotect(map.base.cast(), PAGE, libc::PROT_READ) };
    for s in &sections {
        let len = (s.vsize as usize).div_ceil(PAGE) * PAGE;
        let p = map.at(s.rva as usize, len.min(size - s.rva as usize))?;
        // SAFETY: a page-aligned range inside our own mapping.
        if unsafe { libc::mprotect(p.cast(), len, prot_for(s.characteristics)) } != 0 {
            return Err(err(format!(
                "mprotect {}: {}",
                s.name,
                std::io::Error::last_os_error()
            )));
        }
    }

    Ok(Image {
        file_name: file_name.to_string(),
        base: map.keep(),
        size,
        preferred_base,
        entry_rva,
        dll_characteristics,
        sections,
        imports,
        functions,
        relocations,
        map: None,
    })
}

impl Image {
    /// Whether `addr` lies inside the image.
    #[must_use]
    pub const fn contains(&self, addr: usize) -> bool {
        addr >= self.base && addr < self.base + self.size
    }

    /// Address of the entry point (DriverEntry).
    #[must_use]
    pub const fn entry(&self) -> usize {
        self.base + self.entry_rva as usize
    }

    /// `file+0xRVA (function+0xOFF)`: the linker map's name when one was given, else the
    /// .pdata function start.
    #[must_use]
    pub fn symbolize(&self, addr: usize) -> String {
        if !self.contains(addr) {
            return format!("{addr:#x} (outside the driver image)");
        }
        let rva = (addr - self.base) as u32;
        let name = self
            .map
            .as_ref()
            .and_then(|m| m.lookup(u64::from(rva)))
            .map(|(n, off)| format!("{n}+{off:#x}"))
            .or_else(|| {
                self.functions
                    .iter()
                    .find(|(b, e)| rva >= *b && rva < *e)
                    .map(|(b, _)| format!("sub_{b:x}+{:#x}", rva - b))
            })
            .unwrap_or_else(|| "?".into());
        format!("{}+{rva:#x} ({name})", self.file_name)
    }

    /// Makes discardable sections (INIT, .reloc) inaccessible, as the kernel frees them after
    /// DriverEntry.
    pub fn discard_init_sections(&self) {
        for s in &self.sections {
            if s.characteristics & pe::IMAGE_SCN_MEM_DISCARDABLE != 0 {
                let len = (s.vsize as usize).div_ceil(PAGE) * PAGE;
                // SAFETY: a page-aligned range inside the image mapping this value owns.
                unsafe {
                    libc::mprotect((self.base + s.rva as usize) as *mut _, len, libc::PROT_NONE)
                };
            }
        }
    }

    /// After unload: any stray call or reference into the image faults (bugcheck 0xCE in
    /// Windows when a callback into unloaded code happens).
    pub fn make_inaccessible(&self) {
        // SAFETY: the whole image mapping this value owns.
        unsafe { libc::mprotect(self.base as *mut _, self.size, libc::PROT_NONE) };
    }
}
