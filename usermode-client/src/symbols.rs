//! Function names for stack frames: a seam over the platform's symbol engine.
//!
//! On Windows [`system`] gives `DbgHelp` (`crate::windows_symbols`: the module loaded at the
//! base it had in the opening process, symbols from `_NT_SYMBOL_PATH`); elsewhere, and in
//! tests, no symbols or a stand-in. A frame without a symbol prints as `module+0xOFFSET`.

/// Names the function an address falls in.
pub trait Symbolizer {
    /// `function+0xOFF` for `address` in the image at `module_path` (as the kernel named
    /// it), mapped at `base` with `size` bytes; `None` when no symbol is known.
    fn symbolize(
        &mut self,
        module_path: &str,
        base: u64,
        size: u64,
        address: u64,
    ) -> Option<String>;
}

/// No symbols at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSymbols;

impl Symbolizer for NoSymbols {
    fn symbolize(&mut self, _: &str, _: u64, _: u64, _: u64) -> Option<String> {
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
