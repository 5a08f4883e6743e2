//! Linker map (`/MAP`, as written by link.exe and lld-link) parsing, for symbolized
//! bugcheck reports: `function+0xOFF` instead of a bare RVA.

/// The public symbols of one image, by RVA.
#[derive(Debug, Clone, Default)]
pub struct MapFile {
    /// (RVA, demangled name), sorted by RVA.
    symbols: Vec<(u64, String)>,
}

impl MapFile {
    /// Parses the text of a map file. Lines that are not symbol lines are ignored.
    ///
    /// The header carries `Preferred load address is 0000000180000000`; symbol lines are
    /// `0001:00000130  name  0000000180001130  lib:object` (section:offset, name, Rva+Base).
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut base = None;
        let mut symbols = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("Preferred load address is ") {
                base = u64::from_str_radix(rest.trim(), 16).ok();
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(secoff), Some(name), Some(va)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Some((sec, _)) = secoff.split_once(':') else {
                continue;
            };
            if sec.len() != 4 || !sec.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let (Some(base), Ok(va)) = (base, u64::from_str_radix(va, 16)) else {
                continue;
            };
            if va < base {
                continue;
            }
            symbols.push((va - base, demangle(name)));
        }
        symbols.sort();
        symbols.dedup_by_key(|(rva, _)| *rva);
        Self { symbols }
    }

    /// The symbol at or below `rva`, with the offset into it.
    #[must_use]
    pub fn lookup(&self, rva: u64) -> Option<(&str, u64)> {
        let i = self.symbols.partition_point(|(r, _)| *r <= rva);
        let (start, name) = self.symbols.get(i.checked_sub(1)?)?;
        Some((name.as_str(), rva - start))
    }

    /// Number of symbols read.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether no symbol was read.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

/// Rust symbol names without the hash (`kemu_test_driver::big_stack`).
fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = " kemu_test_driver

 Preferred load address is 0000000180000000

 Start         Length     Name                   Class
 0001:00000000 00000926H .text                   CODE

  Address         Publics by Value              Rva+Base               Lib:Object

 0001:00000000       DriverEntry                0000000180001000     kemu.o
 0001:00000130       _ZN16kemu_test_driver23dispatch_device_control17h2461d9e8e13c75e7E 0000000180001130     kemu.o
 0001:00000aa0       DbgPrint                   0000000180001aa0     ntoskrnl:ntoskrnl.exe
";

    #[test]
    fn symbols_resolve_with_offsets_and_demangled_names() {
        let m = MapFile::parse(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup(0x1000), Some(("DriverEntry", 0)));
        assert_eq!(
            m.lookup(0x1140),
            Some(("kemu_test_driver::dispatch_device_control", 0x10))
        );
        assert_eq!(m.lookup(0xfff), None);
        assert_eq!(m.lookup(0x1aa4), Some(("DbgPrint", 4)));
    }

    #[test]
    fn garbage_yields_no_symbols() {
        assert!(MapFile::parse("not a map\n1:2 x y\n").is_empty());
    }
}
