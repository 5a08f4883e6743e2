//! Filter altitudes: the order of registry callbacks (`CmRegisterCallbackEx`'s `Altitude`).
//!
//! An altitude is "one or more digits in the range from 0 to 9, and it can include a single
//! decimal point" (Learn, `FilterAttachAtAltitude`, `lpAltitude`), "an infinite-precision
//! string interpreted as a decimal number" (Learn, "Load order groups and altitudes for
//! minifilter drivers"); the same altitudes order registry filters (Learn, "Registering a
//! RegistryCallback Routine": "the altitude of the driver ... relative to other registry
//! filtering drivers"). So two altitudes compare as exact decimals, however many digits
//! they have: until 2026-12-05 the model compared them as `f64`, under which
//! `385200.12345678901234567` and `385200.12345678901234568` were the same altitude (no
//! order between the two filters, and no collision either).

use std::cmp::Ordering;

/// An altitude as an exact decimal: its integer digits without leading zeros and its
/// fraction digits without trailing zeros, so that equal numbers are equal values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Altitude {
    int: String,
    frac: String,
}

impl Altitude {
    /// Parses an altitude string. A string that is not one ("1.2.3", "", letters) is `None`;
    /// Learn documents no status for it at `CmRegisterCallbackEx`, so the caller decides.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
            return None;
        }
        Some(Self {
            int: int.trim_start_matches('0').to_string(),
            frac: frac.trim_end_matches('0').to_string(),
        })
    }

    /// The lowest altitude (0): where a string that is not an altitude sorts.
    #[must_use]
    pub const fn zero() -> Self {
        Self {
            int: String::new(),
            frac: String::new(),
        }
    }
}

impl Ord for Altitude {
    fn cmp(&self, other: &Self) -> Ordering {
        // Without leading zeros, a longer integer part is a larger number; of equal length,
        // digit order is numeric order. Fractions without trailing zeros compare digit by
        // digit, a prefix being the smaller ("5" < "51").
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl PartialOrd for Altitude {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::Altitude;

    fn alt(s: &str) -> Altitude {
        Altitude::parse(s).unwrap()
    }

    #[test]
    fn altitudes_compare_as_exact_decimals() {
        assert!(alt("385200.12345678901234568") > alt("385200.12345678901234567"));
        assert_ne!(
            alt("385200.12345678901234568"),
            alt("385200.12345678901234567")
        );
        assert!(alt("1000") > alt("999.999"));
        assert!(alt("20.51") > alt("20.5"));
        assert!(alt("20.5") > alt("20.49999999999999999999"));
        assert_eq!(alt("0385200.50"), alt("385200.5"));
        assert_eq!(alt("385200"), alt("385200."));
        assert_eq!(alt("0"), Altitude::zero());
        assert_eq!(alt(".0"), Altitude::zero());
    }

    #[test]
    fn what_is_not_an_altitude_is_refused() {
        for s in ["", ".", "1.2.3", "12a", "-5", " 1", "1e5"] {
            assert_eq!(Altitude::parse(s), None, "{s:?}");
        }
    }
}
