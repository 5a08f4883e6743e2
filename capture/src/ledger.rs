//! The replay's ledger of open keys, by process and by folded key path.
//!
//! Keys are `(pid, process instance, folded path)` ([`crate::paths::fold`]); each holds the
//! still-open opens of that key in that process, oldest first. Besides the map (ordered by
//! process, so one process's keys are a range), an index ordered by folded path makes the
//! keys at and under a path a range too: an unload, a rename or a hive's holders visit the
//! keys they answer about, not the whole ledger. Until review 21b (L5) each of those walked
//! every key, so a capture with many open keys and many unload or rename rows took
//! O(rows × ledger) (hours for a crafted one).
//!
//! The index is exact, not a guess: a key's folded path is the fold of every path it holds
//! (kept so by [`crate::replay`]), folding is idempotent (`fold_char(fold_char(c)) ==
//! fold_char(c)` for every `char`, checked by the tests), and `\` folds to itself only, so
//! `is_under(mount, path)` holds exactly when the key's folded path is `fold(mount)` or
//! starts with `fold(mount)` followed by `\` — the range below.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// A ledger key: pid, process instance (start key), folded path.
pub type LedgerKey = (u32, u64, String);

/// Which keys a walk visits.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every key (the end of the replay, once).
    All,
    /// Keys at or under a folded path.
    Under(&'a str),
    /// Keys of one process instance.
    Process(u32, u64),
}

/// The open keys, indexed by process and by folded path.
pub struct Ledger<T> {
    map: BTreeMap<LedgerKey, Vec<T>>,
    by_path: BTreeSet<(String, u32, u64)>,
    /// Keys visited by walks: the work counter the tests bound (review 21b, L5).
    visited: Cell<u64>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            by_path: BTreeSet::new(),
            visited: Cell::new(0),
        }
    }
}

impl<T> Ledger<T> {
    /// The opens of `k`.
    #[must_use]
    pub fn get(&self, k: &LedgerKey) -> Option<&Vec<T>> {
        self.map.get(k)
    }

    /// Adds an open of `k` (last).
    pub fn push(&mut self, k: LedgerKey, open: T) {
        if let Some(v) = self.map.get_mut(&k) {
            v.push(open);
            return;
        }
        self.by_path.insert((k.2.clone(), k.0, k.1));
        self.map.insert(k, vec![open]);
    }

    /// The most recent open of `k`, taken out.
    pub fn pop(&mut self, k: &LedgerKey) -> Option<T> {
        let v = self.map.get_mut(k)?;
        let o = v.pop();
        if v.is_empty() {
            self.remove(k);
        }
        o
    }

    /// The most recent open of `k` when `last` accepts it, taken out.
    pub fn pop_if(&mut self, k: &LedgerKey, last: impl Fn(&T) -> bool) -> Option<T> {
        if self.map.get(k)?.last().is_some_and(last) {
            self.pop(k)
        } else {
            None
        }
    }

    /// Every open of `k`, taken out.
    pub fn remove(&mut self, k: &LedgerKey) -> Option<Vec<T>> {
        let v = self.map.remove(k)?;
        self.by_path.remove(&(k.2.clone(), k.0, k.1));
        Some(v)
    }

    /// Sorts the opens of `k`.
    pub fn sort_by_key<K: Ord>(&mut self, k: &LedgerKey, f: impl FnMut(&T) -> K) {
        if let Some(v) = self.map.get_mut(k) {
            v.sort_by_key(f);
        }
    }

    /// The keys `scope` covers, in no particular order the answers depend on.
    pub fn keys(&self, scope: Scope<'_>) -> Vec<LedgerKey> {
        self.walk(scope).map(|(k, _)| k.clone()).collect()
    }

    /// The keys `scope` covers with their opens, each counted as visited.
    pub fn walk<'s>(
        &'s self,
        scope: Scope<'s>,
    ) -> Box<dyn Iterator<Item = (&'s LedgerKey, &'s Vec<T>)> + 's> {
        let count = move |e| {
            self.visited.set(self.visited.get() + 1);
            e
        };
        match scope {
            Scope::All => Box::new(self.map.iter().map(count)),
            Scope::Process(pid, start) => Box::new(
                self.map
                    .range((pid, start, String::new())..)
                    .take_while(move |(k, _)| k.0 == pid && k.1 == start)
                    .map(count),
            ),
            Scope::Under(folded) => {
                let at = (folded.to_owned(), 0, 0);
                let exact = self
                    .by_path
                    .range(at..)
                    .take_while(move |(p, _, _)| p == folded);
                // `\` is followed by `]` in code point order: every path starting with
                // `folded\` sorts in `[folded\, folded])`.
                let below = self.by_path.range((
                    Bound::Included((format!("{folded}\\"), 0, 0)),
                    Bound::Excluded((format!("{folded}]"), 0, 0)),
                ));
                Box::new(exact.chain(below).filter_map(move |(p, pid, start)| {
                    self.map
                        .get_key_value(&(*pid, *start, p.clone()))
                        .map(count)
                }))
            }
        }
    }

    /// Every open, for end-of-replay walks and counts.
    pub fn values(&self) -> impl Iterator<Item = &Vec<T>> {
        self.map.values()
    }

    /// Keys visited by walks so far.
    #[must_use]
    pub const fn visited(&self) -> &Cell<u64> {
        &self.visited
    }

    /// Applies `keep` to every open of the keys `scope` covers, dropping the rest (and keys
    /// left empty).
    pub fn retain(&mut self, scope: Scope<'_>, mut keep: impl FnMut(&LedgerKey, &T) -> bool) {
        for k in self.keys(scope) {
            let Some(v) = self.map.get_mut(&k) else {
                continue;
            };
            v.retain(|o| keep(&k, o));
            if v.is_empty() {
                self.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::{fold, fold_char, is_under};

    /// The index's range is exact only if folding twice is folding once.
    #[test]
    fn folding_is_idempotent() {
        for c in (0..=0x10_FFFFu32).filter_map(char::from_u32) {
            let f = fold_char(c);
            assert_eq!(fold_char(f), f, "{c:?}");
            assert!(f != '\\' || c == '\\', "{c:?}");
        }
    }

    #[test]
    fn a_path_scope_is_what_is_under_says() {
        let paths = [
            r"\REGISTRY\USER\S-1",
            r"\REGISTRY\USER\S-1\Software",
            r"\REGISTRY\USER\S-1-5",
            r"\REGISTRY\USER\S-1_Classes\x",
            r"\REGISTRY\USER\S-1 A",
            r"\REGISTRY\USER\s-1\äpp",
            r"\REGISTRY\USER\S-1]",
            r"\REGISTRY\USER\S-1\\double",
            r"\REGISTRY\MACHINE\ÄPP\Settings",
        ];
        let mut l: Ledger<String> = Ledger::default();
        for (i, p) in paths.iter().enumerate() {
            l.push((u32::try_from(i % 3).unwrap(), 1, fold(p)), (*p).to_owned());
        }
        for mount in [
            r"\REGISTRY\USER\S-1",
            r"\registry\user\s-1\SOFTWARE",
            r"\REGISTRY\MACHINE\äpp",
            r"\REGISTRY\USER",
            r"\REGISTRY\USER\S-",
        ] {
            let f = fold(mount);
            let mut got: Vec<&str> = l
                .walk(Scope::Under(&f))
                .flat_map(|(_, v)| v.iter().map(String::as_str))
                .collect();
            let mut want: Vec<&str> = paths
                .iter()
                .copied()
                .filter(|p| is_under(mount, p))
                .collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{mount}");
        }
    }
}
