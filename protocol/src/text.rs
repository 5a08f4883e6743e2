//! UTF-16 text as the registry has it: native code units on the encoding side, borrowed
//! little-endian bytes on the decoding side, and the case folding every comparison uses.
//!
//! Case folding (shared by the tracker and the client so both sides agree): ASCII `a-z` map
//! to `A-Z`; any other unit outside the surrogate range is upper-cased with Unicode's simple
//! upper-case mapping when that mapping is a single BMP character, and kept as it is
//! otherwise. This approximates the registry's own `RtlUpcaseUnicodeChar` comparison; the
//! two differ only for a handful of characters whose upper case is not one BMP unit.

use core::fmt;

use crate::wire::{DecodeError, EncodeError, Reader, Writer};

/// Folds one UTF-16 code unit for case-insensitive comparison (see the module docs).
#[must_use]
#[inline]
pub fn fold_unit(u: u16) -> u16 {
    if u < 0x80 {
        return if (u16::from(b'a')..=u16::from(b'z')).contains(&u) {
            u - 32
        } else {
            u
        };
    }
    let Some(c) = char::from_u32(u32::from(u)) else {
        return u; // a surrogate: kept as it is
    };
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(single), None) => u16::try_from(u32::from(single)).unwrap_or(u),
        _ => u,
    }
}

/// True when `a` and `b` are equal under [`fold_unit`].
#[must_use]
#[inline]
pub fn eq_folded(a: &[u16], b: &[u16]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(&x, &y)| x == y || fold_unit(x) == fold_unit(y))
}

/// A string field of a message: native units when a sender builds it, wire bytes when a
/// receiver decoded it. Two texts are equal when their code units are.
#[derive(Clone, Copy)]
pub enum Text<'a> {
    /// Code units in native order (what the tracker and tests hand to the encoder).
    Units(&'a [u16]),
    /// Little-endian bytes (an even number) borrowed from a received message.
    Wire(&'a [u8]),
}

impl<'a> Text<'a> {
    /// The empty text.
    pub const EMPTY: Text<'static> = Text::Units(&[]);

    /// Number of UTF-16 code units.
    #[must_use]
    pub const fn len(&self) -> usize {
        match self {
            Self::Units(u) => u.len(),
            Self::Wire(w) => w.len() / 2,
        }
    }

    /// True when there are no code units.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size on the wire: the `u16` length prefix and the units.
    #[must_use]
    pub const fn encoded_len(&self) -> usize {
        2 + 2 * self.len()
    }

    /// The code units in order.
    pub fn units(&self) -> impl Iterator<Item = u16> + 'a {
        let (a, b) = match *self {
            Self::Units(u) => (Some(u.iter().copied()), None),
            Self::Wire(w) => (
                None,
                Some(w.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))),
            ),
        };
        a.into_iter().flatten().chain(b.into_iter().flatten())
    }

    /// Reads a length-prefixed UTF-16 string, borrowed from the message.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = usize::from(r.u16()?);
        Ok(Self::Wire(r.bytes(n * 2)?))
    }

    /// Writes the text as a length-prefixed UTF-16 string.
    ///
    /// # Errors
    /// [`EncodeError::FieldTooLarge`] over 65,535 units; [`EncodeError::BufferTooSmall`].
    pub fn encode(&self, field: &'static str, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let n = u16::try_from(self.len()).map_err(|_| EncodeError::FieldTooLarge { field })?;
        w.u16(n)?;
        match self {
            Self::Wire(bytes) => w.bytes(bytes),
            Self::Units(units) => w.units(units),
        }
    }
}

impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.units().eq(other.units())
    }
}

impl Eq for Text<'_> {}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in char::decode_utf16(self.units()) {
            f.write_char(c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn folding_is_ascii_and_simple_upper_case() {
        assert!(eq_folded(
            &w(r"\REGISTRY\Machine\software"),
            &w(r"\registry\MACHINE\SOFTWARE")
        ));
        assert!(
            eq_folded(&w("straße"), &w("STRAßE")),
            "ß has no single-unit upper case"
        );
        assert!(eq_folded(&w("éà"), &w("ÉÀ")));
        assert!(!eq_folded(&w("a"), &w("b")));
        assert!(!eq_folded(&w("ab"), &w("a")));
        assert_eq!(fold_unit(0xD800), 0xD800);
    }

    #[test]
    fn wire_and_units_compare_equal() {
        let units = w("Key");
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        let mut buf = vec![0u8; 2 + bytes.len()];
        buf[0] = 3;
        buf[2..].copy_from_slice(&bytes);
        let mut r = crate::wire::Reader::new(&buf);
        let wire = Text::decode(&mut r).unwrap();
        assert_eq!(wire, Text::Units(&units));
        assert_eq!(wire.to_string(), "Key");
        assert_ne!(wire, Text::Units(&w("Kex")));
    }
}
