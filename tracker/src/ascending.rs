//! Keys handed out in ascending order, a batch at a time.
//!
//! This lets a query walk a hash table in a stable order (the cursor's) in passes over the
//! table proportional to its answer divided by the batch, instead of one pass per record.
//!
//! One pass over the table offers every candidate; the batch keeps the `N` smallest above
//! the last key handed out, sorted, in a fixed array (no allocation: a query never
//! allocates). The next pass starts above the last key of the batch, so a resumed walk
//! neither repeats nor skips a key that existed throughout.

/// The next keys of an ascending walk; `K` is the order key.
pub struct Ascending<K, const N: usize> {
    keys: [K; N],
    len: usize,
    at: usize,
    /// The last key handed out (the lower bound of the next pass), `None` before the first.
    lower: Option<K>,
    /// The last pass found fewer than `N` keys: nothing lies above its last one.
    exhausted: bool,
}

impl<K: Ord + Copy + Default, const N: usize> Ascending<K, N> {
    /// A walk that starts above `lower` (from the smallest key for `None`).
    #[must_use]
    pub fn above(lower: Option<K>) -> Self {
        Self {
            keys: [K::default(); N],
            len: 0,
            at: 0,
            lower,
            exhausted: false,
        }
    }

    /// The next key, refilling the batch with `pass` (which must call its argument with
    /// every candidate key) when it is used up; `None` at the end.
    pub fn next(&mut self, pass: impl FnOnce(&mut dyn FnMut(K))) -> Option<K> {
        if self.at == self.len {
            if self.exhausted {
                return None;
            }
            self.refill(pass);
            if self.len == 0 {
                return None;
            }
        }
        let k = self.keys[self.at];
        self.at += 1;
        self.lower = Some(k);
        Some(k)
    }

    fn refill(&mut self, pass: impl FnOnce(&mut dyn FnMut(K))) {
        let lower = self.lower;
        let (mut keys, mut len) = ([K::default(); N], 0usize);
        pass(&mut |k: K| {
            if lower.is_some_and(|l| k <= l) {
                return;
            }
            if len == N && k >= keys[N - 1] {
                return;
            }
            let pos = keys[..len].partition_point(|x| *x < k);
            if keys[..len].get(pos) == Some(&k) {
                return; // offered twice: kept once
            }
            if len == N {
                len -= 1; // the largest makes room
            }
            keys.copy_within(pos..len, pos + 1);
            keys[pos] = k;
            len += 1;
        });
        self.keys = keys;
        self.len = len;
        self.at = 0;
        self.exhausted = len < N;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk<const N: usize>(table: &[u32], lower: Option<u32>) -> (Vec<u32>, u32) {
        let mut a = Ascending::<u32, N>::above(lower);
        let (mut out, mut passes) = (Vec::new(), 0);
        while let Some(k) = a.next(|offer| {
            passes += 1;
            for &k in table {
                offer(k);
            }
        }) {
            out.push(k);
        }
        (out, passes)
    }

    #[test]
    fn hands_out_every_key_above_the_bound_once_in_order() {
        let table: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 1000).collect();
        let (out, passes) = walk::<16>(&table, None);
        assert_eq!(out, (0..1000).collect::<Vec<_>>());
        assert_eq!(passes, 1000 / 16 + 1, "one pass per batch, not per key");
        let (out, _) = walk::<16>(&table, Some(989));
        assert_eq!(out, (990..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_offered_twice_is_handed_out_once() {
        let (out, _) = walk::<4>(&[5, 3, 5, 3, 9, 1, 9], None);
        assert_eq!(out, vec![1, 3, 5, 9]);
    }

    #[test]
    fn an_empty_table_ends_at_once() {
        let (out, passes) = walk::<8>(&[], None);
        assert!(out.is_empty());
        assert_eq!(passes, 1);
    }

    #[test]
    fn a_key_added_between_passes_above_the_bound_is_seen() {
        let mut a = Ascending::<u32, 2>::above(None);
        let mut table = vec![10, 20, 30];
        let mut seen = Vec::new();
        while let Some(k) = a.next(|offer| table.iter().for_each(|&k| offer(k))) {
            seen.push(k);
            if k == 20 {
                table.push(25); // appears while the walk is at 20
                table.retain(|&x| x != 10); // and one it passed goes
            }
        }
        assert_eq!(seen, vec![10, 20, 25, 30]);
    }
}
