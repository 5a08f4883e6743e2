//! Registry access masks in words: `0x00020019` is `KEY_READ`.
//!
//! The values are the `winnt.h` ones, as Microsoft Learn's "Registry Key Security and Access
//! Rights" lists them: the key-specific rights (`KEY_QUERY_VALUE` 0x1 … `KEY_CREATE_LINK`
//! 0x20, `KEY_WOW64_64KEY` 0x100, `KEY_WOW64_32KEY` 0x200), the standard rights (`DELETE`
//! 0x10000, `READ_CONTROL` 0x20000, `WRITE_DAC` 0x40000, `WRITE_OWNER` 0x80000, `SYNCHRONIZE`
//! 0x100000), `ACCESS_SYSTEM_SECURITY`, `MAXIMUM_ALLOWED` and the generic rights, and the
//! combinations `KEY_ALL_ACCESS` (0xF003F), `KEY_READ` (0x20019), `KEY_WRITE` (0x20006) and
//! `KEY_EXECUTE` (0x20019: the same value as `KEY_READ`, so it is shown as `KEY_READ`).

/// `KEY_ALL_ACCESS`.
pub const KEY_ALL_ACCESS: u32 = 0x000F_003F;
/// `KEY_READ` (and `KEY_EXECUTE`, which has the same value).
pub const KEY_READ: u32 = 0x0002_0019;
/// `KEY_WRITE`.
pub const KEY_WRITE: u32 = 0x0002_0006;

/// Combinations, widest first: a mask that holds all of one is named by it.
const COMBINATIONS: &[(u32, &str)] = &[
    (KEY_ALL_ACCESS, "KEY_ALL_ACCESS"),
    (KEY_READ, "KEY_READ"),
    (KEY_WRITE, "KEY_WRITE"),
];

/// Single rights, in bit order.
const FLAGS: &[(u32, &str)] = &[
    (0x0000_0001, "KEY_QUERY_VALUE"),
    (0x0000_0002, "KEY_SET_VALUE"),
    (0x0000_0004, "KEY_CREATE_SUB_KEY"),
    (0x0000_0008, "KEY_ENUMERATE_SUB_KEYS"),
    (0x0000_0010, "KEY_NOTIFY"),
    (0x0000_0020, "KEY_CREATE_LINK"),
    (0x0000_0100, "KEY_WOW64_64KEY"),
    (0x0000_0200, "KEY_WOW64_32KEY"),
    (0x0001_0000, "DELETE"),
    (0x0002_0000, "READ_CONTROL"),
    (0x0004_0000, "WRITE_DAC"),
    (0x0008_0000, "WRITE_OWNER"),
    (0x0010_0000, "SYNCHRONIZE"),
    (0x0100_0000, "ACCESS_SYSTEM_SECURITY"),
    (0x0200_0000, "MAXIMUM_ALLOWED"),
    (0x1000_0000, "GENERIC_ALL"),
    (0x2000_0000, "GENERIC_EXECUTE"),
    (0x4000_0000, "GENERIC_WRITE"),
    (0x8000_0000, "GENERIC_READ"),
];

/// The names of the rights in `mask`: the widest combinations it holds, then the single
/// rights left over, then any unnamed bits as one hexadecimal value. Empty for 0.
#[must_use]
pub fn names(mask: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut left = mask;
    for &(bits, name) in COMBINATIONS {
        // Compared with the whole mask: KEY_READ and KEY_WRITE share READ_CONTROL, and a
        // mask holding both is named by both.
        if mask & bits == bits && left & bits != 0 {
            out.push(name.to_owned());
            left &= !bits;
        }
    }
    for &(bit, name) in FLAGS {
        if left & bit != 0 {
            out.push(name.to_owned());
            left &= !bit;
        }
    }
    if left != 0 {
        out.push(format!("{left:#x}"));
    }
    out
}

/// `KEY_READ|KEY_WRITE`: the names joined as C writes a mask; `0` for no rights.
#[must_use]
pub fn text(mask: u32) -> String {
    if mask == 0 {
        return "0".to_owned();
    }
    names(mask).join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_named() {
        assert_eq!(text(KEY_READ), "KEY_READ");
        assert_eq!(text(0x0002_0019), "KEY_READ"); // KEY_EXECUTE has the same value
        assert_eq!(text(KEY_WRITE), "KEY_WRITE");
        assert_eq!(text(KEY_ALL_ACCESS), "KEY_ALL_ACCESS");
        assert_eq!(text(KEY_READ | KEY_WRITE), "KEY_READ|KEY_WRITE");
        // KEY_ALL_ACCESS holds KEY_READ and KEY_WRITE: it is not also named by them.
        assert_eq!(
            text(KEY_ALL_ACCESS | 0x0100_0000),
            "KEY_ALL_ACCESS|ACCESS_SYSTEM_SECURITY"
        );
    }

    #[test]
    fn single_rights_and_unknown_bits() {
        assert_eq!(text(0x1), "KEY_QUERY_VALUE");
        assert_eq!(text(0x0000_0009), "KEY_QUERY_VALUE|KEY_ENUMERATE_SUB_KEYS");
        assert_eq!(text(KEY_READ | 0x100), "KEY_READ|KEY_WOW64_64KEY");
        assert_eq!(text(0x0200_0000), "MAXIMUM_ALLOWED");
        assert_eq!(text(0x8000_0000), "GENERIC_READ");
        // READ_CONTROL alone is not KEY_READ.
        assert_eq!(text(0x0002_0000), "READ_CONTROL");
        assert_eq!(text(0x0000_0400), "0x400");
        assert_eq!(text(0x0000_0401), "KEY_QUERY_VALUE|0x400");
        assert_eq!(text(0), "0");
        assert!(names(0).is_empty());
    }
}
