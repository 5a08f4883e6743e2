//! Function names for stack frames: a seam over the platform's symbol engine.
//!
//! On Windows [`system`] gives `DbgHelp` (`crate::windows_symbols`: the module loaded at the
//! base it had in the opening process, symbols from `_NT_SYMBOL_PATH`); elsewhere, and in
//! tests, no symbols or a stand-in. A frame without a symbol prints as `module+0xOFFSET`.

/// What a symbol engine could say of an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbol {
    /// `function+0xOFF`: the function the address falls in, from the module's symbols.
    Function(String),
    /// `export+0xOFF`: only the module's export table was had (no PDB), and this is the
    /// nearest export at or below the address. The code need not belong to it (an internal
    /// function after it shows as an offset from it), so it is never shown as the frame's
    /// function. `DbgHelp` marks such a symbol `SYMFLAG_EXPORT` ("The symbol is from the
    /// export table", `SYMBOL_INFO` on Learn).
    NearestExport(String),
}

/// Names the function an address falls in.
pub trait Symbolizer {
    /// What is known of `address` in the image at `module_path` (as the kernel named it),
    /// mapped at `base` with `size` bytes; `None` when nothing is.
    fn symbolize(
        &mut self,
        module_path: &str,
        base: u64,
        size: u64,
        address: u64,
    ) -> Option<Symbol>;
}

/// No symbols at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSymbols;

impl Symbolizer for NoSymbols {
    fn symbolize(&mut self, _: &str, _: u64, _: u64, _: u64) -> Option<Symbol> {
        None
    }
}

/// This platform's symbol engine: `DbgHelp` on Windows (started on first use), none
/// elsewhere.
#[must_use]
pub fn system() -> Box<dyn Symbolizer> {
    #[cfg(windows)]
    {
        Box::new(crate::windows_symbols::DbgHelp::default())
    }
    #[cfg(not(windows))]
    {
        Box::new(NoSymbols)
    }
}
