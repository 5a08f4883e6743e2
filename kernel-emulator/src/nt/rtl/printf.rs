//! Windows (LLP64) printf semantics over a Win64 va_list (a plain pointer to 8-byte slots),
//! as DbgPrint formats: `%d`/`%u`/`%x` are 32-bit and `l` stays 32-bit, `ll`/`I64` are 64-bit,
//! `I`/`z` pointer-sized; `%s`/`%hs` narrow, `%S`/`%ls`/`%ws` wide, `%Z` ANSI_STRING*, `%wZ`
//! UNICODE_STRING*, `%p` 16 upper-case hex digits; `%n` is ignored.
//! Docs: "Format specification syntax" (<https://learn.microsoft.com/en-us/cpp/c-runtime-library/format-specification-syntax-printf-and-wprintf-functions>)
//! and DbgPrint (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprint>).

/// A Win64 va_list: a pointer to consecutive 8-byte argument slots.
pub struct VaList(pub *const u64);

impl VaList {
    /// The next 8-byte slot.
    ///
    /// # Safety
    /// The list must hold another slot.
    unsafe fn next(&mut self) -> u64 {
        // SAFETY: %Z/%wZ take a pointer to a counted string whose buffer holds Length bytes
        let v = unsafe { self.0.read_unaligned() };
        // SAFETY: the caller guarantees the va_list holds the slots the format consumes
        self.0 = unsafe { self.0.add(1) };
        v
    }
}

/// # Safety
/// `p` is null or NUL-terminated (or valid for `max` bytes).
unsafe fn cstr(p: *const u8, max: Option<usize>) -> String {
    if p.is_null() {
        return "(null)".into();
    }
    let mut n = 0;
    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
    while max.is_none_or(|m| n < m) && unsafe { *p.wrapping_add(n) } != 0 {
        n += 1;
    }
    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, n) }).into_owned()
}

/// # Safety
/// `p` is null or NUL-terminated (or valid for `max` units).
unsafe fn wstr(p: *const u16, max: Option<usize>) -> String {
    if p.is_null() {
        return "(null)".into();
    }
    let mut n = 0;
    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
    while max.is_none_or(|m| n < m) && unsafe { *p.wrapping_add(n) } != 0 {
        n += 1;
    }
    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Formats `fmt` with the arguments in `va`.
///
/// # Safety
/// `fmt` must be a NUL-terminated string and `va` must hold the arguments it describes.
#[allow(clippy::too_many_lines, clippy::cognitive_complexity)] // one printf state machine
pub unsafe fn format(fmt: *const u8, va: &mut VaList) -> String {
    // SAFETY: the caller guarantees a NUL-terminated format string
    let f = unsafe { std::ffi::CStr::from_ptr(fmt.cast()) }.to_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'%' {
            let start = i;
            while i < f.len() && f[i] != b'%' {
                i += 1;
            }
            out.push_str(&String::from_utf8_lossy(&f[start..i]));
            continue;
        }
        i += 1;
        if i >= f.len() {
            break;
        }
        if f[i] == b'%' {
            out.push('%');
            i += 1;
            continue;
        }
        let (mut left, mut plus, mut space, mut alt, mut zero) =
            (false, false, false, false, false);
        while i < f.len() {
            match f[i] {
                b'-' => left = true,
                b'+' => plus = true,
                b' ' => space = true,
                b'#' => alt = true,
                b'0' => zero = true,
                _ => break,
            }
            i += 1;
        }
        let mut width = 0usize;
        if i < f.len() && f[i] == b'*' {
            // SAFETY: the format string promises another argument slot (the DbgPrint contract)
            let w = unsafe { va.next() } as i32;
            if w < 0 {
                left = true;
            }
            width = w.unsigned_abs() as usize;
            i += 1;
        } else {
            while i < f.len() && f[i].is_ascii_digit() {
                width = width * 10 + (f[i] - b'0') as usize;
                i += 1;
            }
        }
        let mut prec: Option<usize> = None;
        if i < f.len() && f[i] == b'.' {
            i += 1;
            if i < f.len() && f[i] == b'*' {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                prec = Some((unsafe { va.next() } as i32).max(0) as usize);
                i += 1;
            } else {
                let mut p = 0;
                while i < f.len() && f[i].is_ascii_digit() {
                    p = p * 10 + (f[i] - b'0') as usize;
                    i += 1;
                }
                prec = Some(p);
            }
        }
        // length modifiers -> operand bits (Windows: int = long = 32)
        let mut bits = 32;
        let mut wide: Option<bool> = None;
        loop {
            if i >= f.len() {
                break;
            }
            match f[i] {
                b'h' => {
                    wide = Some(false);
                    bits = if i + 1 < f.len() && f[i + 1] == b'h' {
                        i += 1;
                        8
                    } else {
                        16
                    };
                }
                b'l' => {
                    if i + 1 < f.len() && f[i + 1] == b'l' {
                        i += 1;
                        bits = 64;
                    } else {
                        wide = Some(true); // %ls/%lc; for integers `l` stays 32-bit on Windows
                    }
                }
                b'w' => wide = Some(true),
                b'z' | b'j' | b't' | b'L' => bits = 64,
                b'I' => {
                    if f[i + 1..].starts_with(b"64") {
                        bits = 64;
                        i += 2;
                    } else if f[i + 1..].starts_with(b"32") {
                        bits = 32;
                        i += 2;
                    } else {
                        bits = 64;
                    }
                }
                _ => break,
            }
            i += 1;
        }
        if i >= f.len() {
            break;
        }
        let conv = f[i];
        i += 1;
        let mut num_prefix = String::new();
        let body: String = match conv {
            b'd' | b'i' => {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let raw = unsafe { va.next() };
                let v: i64 = match bits {
                    8 => raw as i8 as i64,
                    16 => raw as i16 as i64,
                    32 => raw as i32 as i64,
                    _ => raw as i64,
                };
                if v < 0 {
                    num_prefix.push('-');
                } else if plus {
                    num_prefix.push('+');
                } else if space {
                    num_prefix.push(' ');
                }
                let mut d = v.unsigned_abs().to_string();
                if let Some(p) = prec {
                    while d.len() < p {
                        d.insert(0, '0');
                    }
                }
                d
            }
            b'u' | b'x' | b'X' | b'o' => {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let raw = unsafe { va.next() };
                let v = if bits == 64 {
                    raw
                } else {
                    raw & ((1u64 << bits) - 1)
                };
                let mut d = match conv {
                    b'u' => v.to_string(),
                    b'x' => format!("{v:x}"),
                    b'X' => format!("{v:X}"),
                    _ => format!("{v:o}"),
                };
                if alt && v != 0 {
                    num_prefix = match conv {
                        b'x' => "0x".into(),
                        b'X' => "0X".into(),
                        b'o' => "0".into(),
                        _ => String::new(),
                    };
                }
                if let Some(p) = prec {
                    while d.len() < p {
                        d.insert(0, '0');
                    }
                }
                d
            }
            // SAFETY: the format string promises another argument slot (the DbgPrint contract)
            b'p' => format!("{:016X}", unsafe { va.next() }),
            b'c' | b'C' => {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let v = unsafe { va.next() };
                let w = wide.unwrap_or(conv == b'C');
                if w {
                    String::from_utf16_lossy(&[v as u16])
                } else {
                    ((v as u8) as char).to_string()
                }
            }
            b's' | b'S' => {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let p = unsafe { va.next() };
                if wide.unwrap_or(conv == b'S') {
                    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
                    unsafe { wstr(p as *const u16, prec) }
                } else {
                    // SAFETY: %s/%ws take a NUL-terminated string (or its first `precision` units)
                    unsafe { cstr(p as *const u8, prec) }
                }
            }
            b'Z' => {
                // %Z: ANSI_STRING*, %wZ: UNICODE_STRING*  (both {u16 Length; u16 Max; ptr Buffer})
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let p = unsafe { va.next() } as *const u8;
                if p.is_null() {
                    "(null)".into()
                } else {
                    // SAFETY: %Z/%wZ take a pointer to a counted string whose buffer holds Length bytes
                    let len = unsafe { p.cast::<u16>().read_unaligned() } as usize;
                    // SAFETY: %Z/%wZ take a pointer to a counted string whose buffer holds Length bytes
                    let buf = unsafe { p.wrapping_add(8).cast::<usize>().read_unaligned() };
                    if buf == 0 {
                        "(null)".into()
                    } else if wide == Some(true) {
                        // SAFETY: %Z/%wZ take a pointer to a counted string whose buffer holds Length bytes
                        String::from_utf16_lossy(unsafe {
                            std::slice::from_raw_parts(buf as *const u16, len / 2)
                        })
                    } else {
                        // SAFETY: %Z/%wZ take a pointer to a counted string whose buffer holds Length bytes
                        String::from_utf8_lossy(unsafe {
                            std::slice::from_raw_parts(buf as *const u8, len)
                        })
                        .into_owned()
                    }
                }
            }
            b'e' | b'E' | b'f' | b'g' | b'G' | b'a' => {
                // varargs doubles travel in the integer slot too on Win64
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let v = f64::from_bits(unsafe { va.next() });
                format!("{v:.*}", prec.unwrap_or(6))
            }
            b'n' => {
                // SAFETY: the format string promises another argument slot (the DbgPrint contract)
                let _ = unsafe { va.next() }; // %n is not honoured (the kernel refuses it too)
                String::new()
            }
            other => format!("%{}", other as char),
        };
        let numeric = matches!(conv, b'd' | b'i' | b'u' | b'x' | b'X' | b'o');
        let len = num_prefix.chars().count() + body.chars().count();
        let pad = width.saturating_sub(len);
        if left {
            out += &num_prefix;
            out += &body;
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric && prec.is_none() {
            out += &num_prefix;
            out.extend(std::iter::repeat_n('0', pad));
            out += &body;
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out += &num_prefix;
            out += &body;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: &std::ffi::CStr, args: &[u64]) -> String {
        // SAFETY: `f` is NUL-terminated and `args` holds one slot per conversion.
        unsafe { format(f.as_ptr().cast(), &mut VaList(args.as_ptr())) }
    }

    #[test]
    fn integers_follow_llp64_widths() {
        assert_eq!(
            fmt(c"%d %ld %u", &[u64::MAX, 0xFFFF_FFFF, 4_000_000_000]),
            "-1 -1 4000000000"
        );
        assert_eq!(
            fmt(
                c"%I64x %llx %x",
                &[0x1122_3344_5566_7788, 1 << 40, 0x1_0000_00FF]
            ),
            "1122334455667788 10000000000 ff"
        );
        assert_eq!(fmt(c"%08x|%-4d|%+d", &[0xBEEF, 7, 5]), "0000beef|7   |+5");
        assert_eq!(fmt(c"%p", &[0x1234]), "0000000000001234");
    }

    #[test]
    fn strings_narrow_wide_and_counted() {
        let wide: Vec<u16> = "wide\u{0}".encode_utf16().collect();
        let mut units: Vec<u16> = "KEMU".encode_utf16().collect();
        let us = crate::nt::layout::UnicodeString {
            length: 8,
            maximum_length: 8,
            pad: 0,
            buffer: units.as_mut_ptr(),
        };
        let args = [
            c"narrow".as_ptr() as u64,
            wide.as_ptr() as u64,
            std::ptr::from_ref(&us) as u64,
            0,
        ];
        assert_eq!(fmt(c"%s %ws %wZ %s", &args), "narrow wide KEMU (null)");
        assert_eq!(
            fmt(
                c"%.3s|%c|100%%",
                &[c"abcdef".as_ptr() as u64, u64::from(b'Z')]
            ),
            "abc|Z|100%"
        );
    }
}
