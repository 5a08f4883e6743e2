//! Compile-time UTF-16 strings and `UNICODE_STRING`s over them.

use wdk_sys::UNICODE_STRING;

/// Converts an ASCII string literal to a NUL-terminated UTF-16 array at compile time.
macro_rules! wide {
    ($s:expr) => {{
        const S: &str = $s;
        const N: usize = S.len() + 1;
        const W: [u16; N] = $crate::unicode::ascii_to_utf16::<N>(S);
        &W
    }};
}
pub(crate) use wide;

/// Widens ASCII `s` into `N` UTF-16 units (the last one NUL). Panics at compile time on
/// non-ASCII input or a wrong `N`.
pub const fn ascii_to_utf16<const N: usize>(s: &str) -> [u16; N] {
    let b = s.as_bytes();
    assert!(
        b.len() + 1 == N,
        "N must be the length plus the terminating NUL"
    );
    let mut out = [0u16; N];
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii(), "only ASCII literals are supported");
        out[i] = b[i] as u16;
        i += 1;
    }
    out
}

/// A `UNICODE_STRING` over a NUL-terminated static UTF-16 array (the NUL is not counted in
/// `Length`, as the kernel expects).
pub fn unicode_string(w: &'static [u16]) -> UNICODE_STRING {
    let chars = w.len().saturating_sub(1);
    // Device and link names are short literals: they always fit a USHORT byte count.
    let len = u16::try_from(chars * 2).unwrap_or(u16::MAX - 1);
    UNICODE_STRING {
        Length: len,
        MaximumLength: len.saturating_add(2),
        Buffer: w.as_ptr().cast_mut(),
    }
}
