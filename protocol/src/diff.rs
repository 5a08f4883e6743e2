//! `diff(a, b)` of two snapshots, per process and key name, for leak hunting.
//!
//! User mode only (the `std` feature). A process whose count of open objects on one key keeps growing
//! between snapshots is the leak to report.

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::snapshot::SnapshotRecord;
use crate::text::fold_unit;

/// An owned snapshot row (decoded pages are borrowed; a snapshot spans many pages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Opaque object id.
    pub id: u64,
    /// Open time.
    pub open_time: u64,
    /// Hive id.
    pub hive_id: u32,
    /// Key name units.
    pub name: Vec<u16>,
}

impl From<&SnapshotRecord<'_>> for SnapshotRow {
    fn from(r: &SnapshotRecord<'_>) -> Self {
        Self {
            pid: r.pid,
            start_key: r.start_key,
            id: r.id,
            open_time: r.open_time,
            hive_id: r.hive_id,
            name: r.name.units().collect(),
        }
    }
}

/// How the open objects of one process on one key name changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Key name (the spelling seen first).
    pub name: Vec<u16>,
    /// Open objects in `a`.
    pub before: u64,
    /// Open objects in `b`.
    pub after: u64,
}

impl DiffEntry {
    /// `after - before`, signed.
    #[must_use]
    pub fn delta(&self) -> i128 {
        i128::from(self.after) - i128::from(self.before)
    }
}

/// Compares two snapshots: one entry per (process, key name compared case-insensitively)
/// whose count differs, sorted by growth (largest first), then pid, start key, name.
#[must_use]
pub fn diff(a: &[SnapshotRow], b: &[SnapshotRow]) -> Vec<DiffEntry> {
    let mut map: BTreeMap<(u64, u64, Vec<u16>), DiffEntry> = BTreeMap::new();
    for (rows, after) in [(a, false), (b, true)] {
        for r in rows {
            let folded: Vec<u16> = r.name.iter().map(|&u| fold_unit(u)).collect();
            let e = map
                .entry((r.pid, r.start_key, folded))
                .or_insert_with(|| DiffEntry {
                    pid: r.pid,
                    start_key: r.start_key,
                    name: r.name.clone(),
                    before: 0,
                    after: 0,
                });
            if after {
                e.after += 1;
            } else {
                e.before += 1;
            }
        }
    }
    let mut out: Vec<DiffEntry> = map.into_values().filter(|e| e.before != e.after).collect();
    out.sort_by(|x, y| {
        y.delta()
            .cmp(&x.delta())
            .then(x.pid.cmp(&y.pid))
            .then(x.start_key.cmp(&y.start_key))
            .then(x.name.cmp(&y.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u64, name: &str) -> SnapshotRow {
        SnapshotRow {
            pid,
            start_key: 1,
            id: 0,
            open_time: 0,
            hive_id: 1,
            name: name.encode_utf16().collect(),
        }
    }

    #[test]
    fn reports_growth_per_process_and_key() {
        let a = vec![row(4, r"\R\M\S\Key"), row(8, r"\R\M\S\Other")];
        let mut b = vec![row(8, r"\R\M\S\Other")];
        for _ in 0..3 {
            b.push(row(4, r"\r\m\s\KEY")); // same key, other case
        }
        b.push(row(9, r"\R\M\S\New"));
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].pid, d[0].before, d[0].after, d[0].delta()),
            (4, 1, 3, 2)
        );
        assert_eq!(d[0].name, r"\R\M\S\Key".encode_utf16().collect::<Vec<_>>());
        assert_eq!((d[1].pid, d[1].before, d[1].after), (9, 0, 1));
        assert!(diff(&b, &b).is_empty());
        let back = diff(&b, &a);
        assert_eq!(back.last().unwrap().delta(), -2);
    }
}
