//! Reading an lld-link / link.exe `/MAP` file: its timestamp and the symbols that survived
//! linking, and the allocation findings drawn from them.
//!
//! The map lists every public and static symbol kept in the image (after `/OPT:REF` dropped
//! the unreferenced ones), with mangled names, as lines of the form
//! `0001:000001b0  <symbol>  00000001800011b0  <object>`. A symbol that is in the map is
//! reachable from the image's roots; one that the linker dropped is not.

/// Symbol-name fragments that reveal allocation machinery kept in the image, each with what
/// its presence means. Matched as substrings because Rust mangles these names (legacy `_ZN…`
/// or v0 `_RNv…___rustc26___rust_alloc_error_handler`).
const ALLOCATION_MARKERS: &[(&str, &str)] = &[
    (
        "handle_alloc_error",
        "an infallible allocation (Box::new, vec!, format!, Vec growth without try_reserve, \
         ...) is reachable; it bug-checks when the pool is exhausted, e.g. under Driver \
         Verifier's low-resources simulation",
    ),
    (
        "alloc_error_handler",
        "the allocation-error handler (__rust_alloc_error_handler / __rdl_alloc_error_handler) \
         is reachable: some allocation failure ends in a bug check",
    ),
    (
        "__rust_alloc",
        "the global allocator shim (__rust_alloc*) is reachable",
    ),
    (
        "__rust_realloc",
        "the global allocator shim (__rust_realloc) is reachable",
    ),
    (
        "__rg_alloc",
        "the #[global_allocator] entry points (__rg_alloc*) are reachable",
    ),
    (
        "__rg_realloc",
        "the #[global_allocator] entry points (__rg_realloc) are reachable",
    ),
    (
        "__rdl_alloc",
        "the default allocator entry points (__rdl_alloc*) are reachable",
    ),
    (
        "__rdl_oom",
        "the default allocation-error handler (__rdl_oom) is reachable",
    ),
    (
        "WdkAllocator",
        "wdk-alloc's WdkAllocator methods are reachable (the global allocator was not dropped)",
    ),
];

/// What the map says, as far as the image check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFacts {
    /// The `Timestamp is XXXXXXXX` header value, if present.
    pub timestamp: Option<u32>,
    /// Number of symbol lines read.
    pub symbol_count: usize,
    /// Whether `DriverEntry` is among the symbols.
    pub has_driver_entry: bool,
    /// `(symbol, meaning)` for every symbol that matches an allocation marker.
    pub allocation_findings: Vec<(String, &'static str)>,
}

/// Reads the facts the image check needs from the text of a `/MAP` file.
#[must_use]
pub fn read_map(text: &str) -> MapFacts {
    let mut facts = MapFacts {
        timestamp: None,
        symbol_count: 0,
        has_driver_entry: false,
        allocation_findings: Vec::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Timestamp is ") {
            facts.timestamp = rest
                .split_whitespace()
                .next()
                .and_then(|hex| u32::from_str_radix(hex, 16).ok());
            continue;
        }
        let Some(symbol) = symbol_of(line) else {
            continue;
        };
        facts.symbol_count += 1;
        if symbol == "DriverEntry" {
            facts.has_driver_entry = true;
        }
        if let Some((_, meaning)) = ALLOCATION_MARKERS
            .iter()
            .find(|(marker, _)| symbol.contains(marker))
        {
            facts.allocation_findings.push((symbol.to_owned(), meaning));
        }
    }
    facts
}

/// The symbol of a `ssss:oooooooo  symbol  rva+base  object` line; `None` for other lines
/// (headers, the section table `0001:00000000 00000ba6H .text CODE`, exports).
fn symbol_of(line: &str) -> Option<&str> {
    let mut tokens = line.split_whitespace();
    let address = tokens.next()?;
    let symbol = tokens.next()?;
    let rva_base = tokens.next()?;
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (section, offset) = address.split_once(':')?;
    let shaped = section.len() == 4
        && is_hex(section)
        && offset.len() == 8
        && is_hex(offset)
        && (rva_base.len() == 8 || rva_base.len() == 16)
        && is_hex(rva_base);
    shaped.then_some(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like rust-lld's output for a driver whose global allocator was dropped.
    const CLEAN: &str = " wdkx_driver

 Timestamp is 6b026699 (Sun Nov 22 03:50:49 2026)

 Preferred load address is 0000000180000000

 Start         Length     Name                   Class
 0001:00000000 00000ba6H .text                   CODE

  Address         Publics by Value              Rva+Base               Lib:Object

 0001:00000000       DriverEntry                0000000180001000     drv.cgu.0.rcgu.o
 0001:00000c30       IoCreateDevice             0000000180001c30     ntoskrnl:ntoskrnl.exe

 entry point at         0001:00000000

 Static symbols

 0001:000001b0       _ZN3drv13driver_unload17hae7d1ae593956641E 00000001800011b0     drv.o

 Exports

  ordinal    name

        1    DriverEntry
";

    #[test]
    fn clean_map_has_symbols_entry_and_timestamp_and_no_findings() {
        let facts = read_map(CLEAN);
        assert_eq!(facts.timestamp, Some(0x6b02_6699));
        assert_eq!(facts.symbol_count, 3);
        assert!(facts.has_driver_entry);
        assert!(facts.allocation_findings.is_empty());
    }

    #[test]
    fn v0_mangled_allocation_symbols_are_found() {
        // The symbols rust-lld kept when a Box::new was added to a driver.
        let text = format!(
            "{CLEAN}
 0001:00000c00       _RNvCsfLfy6EI15iL_7___rustc26___rust_alloc_error_handler 0000000180001c00     d.o
 0001:00000c27       _RNvNtCs1f2BdUxKfgg_5alloc5alloc18handle_alloc_error 0000000180001c27     d.o
"
        );
        let facts = read_map(&text);
        let symbols: Vec<&str> = facts
            .allocation_findings
            .iter()
            .map(|(symbol, _)| symbol.as_str())
            .collect();
        assert_eq!(
            symbols,
            [
                "_RNvCsfLfy6EI15iL_7___rustc26___rust_alloc_error_handler",
                "_RNvNtCs1f2BdUxKfgg_5alloc5alloc18handle_alloc_error"
            ]
        );
        assert!(facts.allocation_findings[1].1.contains("infallible"));
    }

    #[test]
    fn legacy_mangled_wdk_allocator_is_found() {
        let text = format!(
            "{CLEAN} 0001:00000d00       \
             _ZN74_$LT$wdk_alloc..WdkAllocator$u20$as$u20$core..alloc..global..GlobalAlloc$GT$5alloc17h0123456789abcdefE \
             0000000180001d00     d.o\n"
        );
        let facts = read_map(&text);
        assert_eq!(facts.allocation_findings.len(), 1);
        assert!(facts.allocation_findings[0].1.contains("WdkAllocator"));
    }

    #[test]
    fn section_table_and_export_lines_are_not_symbols() {
        assert_eq!(
            symbol_of(" 0001:00000000 00000ba6H .text                   CODE"),
            None
        );
        assert_eq!(symbol_of("        1    DriverEntry"), None);
        assert_eq!(
            symbol_of(" 0002:00000143       _fltused                   0000000180002143     x.o"),
            Some("_fltused")
        );
    }

    #[test]
    fn text_that_is_not_a_map_has_no_symbols() {
        let facts = read_map("hello\nworld\n");
        assert_eq!(facts.symbol_count, 0);
        assert_eq!(facts.timestamp, None);
    }
}
