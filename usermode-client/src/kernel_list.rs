//! The kernel's list of a hive's open keys as every answer that vouches for a hive reads it:
//! twice, each key counted as often as the fuller read lists it.
//!
//! One read of `NtQueryOpenSubKeysEx` can leave a key out and still succeed: Windows Research
//! Kernel `ntapi.c` `NtQueryOpenSubKeysEx` takes the registry lock shared, and `cmsubs.c`
//! `CmpSearchForOpenSubKeys` (`SearchAndCount`) skips a hash bucket whose try-lock fails, held for
//! a moment by any open, close or delete of a key hashed there ("else skip this entry;
//! continue"). For a key the driver saw, such a gap shows as a driver record the list lacks
//! (the report is then not complete, never the reverse). Not for a key it never saw: one a
//! registry filter below hivetrack opened inside its own callback reaches no callback above it
//! (Learn, "Supporting Layered Registry Filtering Drivers"; regfltr `multialt.c`), so the
//! kernel's list is its only witness, and a read that skipped it made `holders --strict`
//! "complete" and `wait` "free" while the unload failed (audit 24b, G1; the kernel emulator's
//! `lower-filter-busy-bucket`). So [`read`] asks twice and keeps, per opener and key name
//! (case-insensitive), the larger count: a key one read left out and the other listed counts.
//! Bounded, twice the cost of one read. What it cannot see: a bucket busy during both reads.

use std::collections::HashMap;

use crate::transport::{Transport, TransportError};

/// The kernel's list of the key objects open in the hive mounted at `hive`, read twice and
/// merged ([`union`]).
///
/// A failure of either read is the answer (the second one's is the newer state: "not found"
/// then means unloaded since). `None` when the backend cannot ask.
///
/// # Errors
/// (Inside the `Some`.) As [`Transport::kernel_open_keys`].
pub fn read(
    transport: &mut dyn Transport,
    hive: &str,
) -> Option<Result<Vec<(u64, String)>, TransportError>> {
    let first = match transport.kernel_open_keys(hive)? {
        Ok(list) => list,
        Err(e) => return Some(Err(e)),
    };
    Some(match transport.kernel_open_keys(hive) {
        Some(Ok(second)) => Ok(union(first, second)),
        Some(Err(e)) => Err(e),
        None => Ok(first),
    })
}

/// `first` with the entries of `second` it lacks, in `first`'s order, then `second`'s.
///
/// Per `(pid, key name)`, case-insensitive per UTF-16 unit as the kernel compares names
/// ([`crate::coverage`]'s fold: Rust's full upper case would take `STRASSE` in one read for
/// `Straße` in the other and drop a key; review 24b, LOW-3), as many entries as the fuller
/// of the two lists has (a multiset union).
#[must_use]
pub fn union(first: Vec<(u64, String)>, second: Vec<(u64, String)>) -> Vec<(u64, String)> {
    let mut unmatched: HashMap<(u64, String), usize> = HashMap::new();
    for (pid, name) in &first {
        *unmatched
            .entry((*pid, crate::coverage::fold(name)))
            .or_insert(0) += 1;
    }
    let mut merged = first;
    for (pid, name) in second {
        match unmatched.get_mut(&(pid, crate::coverage::fold(&name))) {
            Some(n) if *n > 0 => *n -= 1,
            _ => merged.push((pid, name)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|&(p, n)| (p, n.to_owned())).collect()
    }

    #[test]
    fn a_key_either_read_lists_is_kept_at_the_larger_count() {
        let first = keys(&[(7, r"\REGISTRY\USER\S\A"), (7, r"\REGISTRY\USER\S\A")]);
        let second = keys(&[
            (7, r"\registry\user\s\a"),
            (9, r"\REGISTRY\USER\S\Cache"),
            (7, r"\REGISTRY\USER\S\A"),
            (7, r"\REGISTRY\USER\S\A"),
        ]);
        let merged = union(first, second);
        assert_eq!(
            merged,
            keys(&[
                (7, r"\REGISTRY\USER\S\A"),
                (7, r"\REGISTRY\USER\S\A"),
                (9, r"\REGISTRY\USER\S\Cache"),
                (7, r"\REGISTRY\USER\S\A"),
            ])
        );
        // Two keys the kernel keeps apart (per-unit upper case: review 24b, LOW-3; old
        // code: this check fails, the second read's key dropped).
        assert_eq!(
            union(keys(&[(7, "Stra\u{df}e")]), keys(&[(7, "STRASSE")])),
            keys(&[(7, "Stra\u{df}e"), (7, "STRASSE")])
        );
        // The same key under another pid is another entry.
        assert_eq!(
            union(keys(&[(7, "K")]), keys(&[(8, "K")])),
            keys(&[(7, "K"), (8, "K")])
        );
    }

    /// One scripted answer of the kernel's list.
    type Answer = Option<Result<Vec<(u64, String)>, TransportError>>;

    /// A backend whose reads answer in turn from a script.
    struct Reads(Vec<Answer>);

    impl Transport for Reads {
        fn backend(&self) -> &'static str {
            "scripted"
        }
        fn ioctl(&mut self, _: u32, _: &[u8], _: &mut [u8]) -> Result<usize, TransportError> {
            Err(TransportError::DriverUnavailable)
        }
        fn kernel_open_keys(&mut self, _: &str) -> Answer {
            (!self.0.is_empty()).then(|| self.0.remove(0)).flatten()
        }
    }

    #[test]
    fn a_key_one_read_skipped_is_read_and_a_failure_of_either_read_is_the_answer() {
        let held = keys(&[(7, r"\REGISTRY\USER\S\Cache")]);
        let mut t = Reads(vec![Some(Ok(Vec::new())), Some(Ok(held.clone()))]);
        assert_eq!(read(&mut t, "H").map(Result::ok), Some(Some(held.clone())));
        let gone = TransportError::Request { code: 2 };
        let mut t = Reads(vec![Some(Ok(held)), Some(Err(gone))]);
        assert!(matches!(
            read(&mut t, "H"),
            Some(Err(TransportError::Request { code: 2 }))
        ));
        let mut t = Reads(vec![Some(Err(TransportError::Request { code: 5 }))]);
        assert!(matches!(
            read(&mut t, "H"),
            Some(Err(TransportError::Request { code: 5 }))
        ));
        assert!(t.0.is_empty());
        let mut t = Reads(Vec::new());
        assert!(read(&mut t, "H").is_none());
    }
}
