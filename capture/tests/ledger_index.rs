//! Review 22f: the ledger's path index (`crate::ledger`) gives what the old whole-ledger
//! walks gave: exhaustively against `is_under`, in step with the per-process map under
//! random operations, and a rename spelled with a fold that changes byte length.

use capture::Event;
use capture::ledger::{Ledger, Scope};
use capture::paths::{fold, is_under};
use capture::replay::{Options, Replay};

mod support;

fn row(r: &mut u64, pid: u32, op: &str, path: &str) -> Event {
    support::event(r, pid, op, path, 0)
}

/// A subkey opened as `...\App\I\Sub`, its parent renamed spelled `...\App\ı` (U+0131, folds
/// to `I`, two UTF-8 bytes against one), closed by its new name `...\App\J\Sub`. The old
/// code keyed the moved open by the folded key (`...\APP\J\SUB`) and the close paired; the
/// merge keys it by fold(o.path), and o.path is cut at `old.len()` bytes (replay.rs:681),
/// so it is `...\App\JSub` and the close pairs with nothing.
#[test]
fn rename_with_a_byte_length_changing_fold_then_close() {
    let mut r = Replay::new(Options::default());
    let mut n = 0;
    r.event(&row(&mut n, 100, "RegOpenKey", r"HKLM\SOFTWARE\App\I\Sub"));
    let mut ren = row(&mut n, 100, "RegRenameKey", "HKLM\\SOFTWARE\\App\\\u{131}");
    ren.hive_file = "J".to_owned();
    r.event(&ren);
    r.event(&row(&mut n, 100, "RegCloseKey", r"HKLM\SOFTWARE\App\J\Sub"));
    let a = r.finish("t", "csv");
    let left: Vec<String> = a
        .open
        .iter()
        .flat_map(|h| {
            h.holders
                .iter()
                .flat_map(|h| h.keys.iter().map(|k| k.path.clone()))
        })
        .collect();
    assert!(left.is_empty(), "closed key still open as {left:?}");
}

/// Exhaustive over short paths from an alphabet of folding edge cases: the index's range is
/// the old `is_under` filter.
#[test]
fn under_scope_equals_is_under_exhaustively() {
    let alpha = [
        '\\', ']', '[', 'i', 'I', '\u{131}', '\u{130}', 's', 'S', '\u{17F}', '\u{DF}', '\u{1E9E}',
        '\u{250}', '\u{2C6F}', '\u{3C3}', '\u{3C2}', '\u{3A3}', 'k', '\u{212A}', '1', '0',
    ];
    let mut paths = vec![String::new()];
    let mut all = Vec::new();
    for _ in 0..3 {
        let mut next = Vec::new();
        for p in &paths {
            for c in alpha {
                let mut q = p.clone();
                q.push(c);
                next.push(q);
            }
        }
        all.extend(next.iter().cloned());
        paths = next;
    }
    let mut l: Ledger<String> = Ledger::default();
    for (i, p) in all.iter().enumerate() {
        l.push((u32::try_from(i % 7).unwrap(), 1, fold(p)), p.clone());
    }
    let mounts: Vec<&String> = all.iter().filter(|p| p.chars().count() <= 2).collect();
    for m in mounts
        .iter()
        .copied()
        .chain(std::iter::once(&String::new()))
    {
        let f = fold(m);
        let mut got: Vec<&str> = l
            .walk(Scope::Under(&f))
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .collect();
        let mut want: Vec<&str> = l
            .walk(Scope::All)
            .flat_map(|(_, v)| v.iter().map(String::as_str))
            .filter(|p| is_under(m, p))
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{m:?}");
    }
}

/// Random push / pop / remove / retain: every key the map holds is found by its own path's
/// scope, and no removed key is.
#[test]
fn index_and_map_stay_in_step() {
    let names = ["A", "a", "A\\B", "A\\b", "AB", "A]", "\u{131}", "I\\x", "B"];
    let mut l: Ledger<u64> = Ledger::default();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..20_000u64 {
        let k = (
            u32::try_from(rnd(3)).unwrap(),
            rnd(2),
            fold(names[usize::try_from(rnd(names.len() as u64)).unwrap()]),
        );
        match rnd(5) {
            0 | 1 => l.push(k, step),
            2 => {
                l.pop(&k);
            }
            3 => {
                l.remove(&k);
            }
            _ => {
                let f = k.2.clone();
                l.retain(Scope::Under(&f), |_, o| o % 3 != 0);
            }
        }
        let all: Vec<_> = l.keys(Scope::All);
        for key in &all {
            assert!(
                l.keys(Scope::Under(&key.2)).contains(key),
                "{key:?} unindexed"
            );
            assert!(l.keys(Scope::Process(key.0, key.1)).contains(key));
        }
        for nm in names {
            for key in l.keys(Scope::Under(&fold(nm))) {
                assert!(all.contains(&key), "{key:?} indexed, not held");
            }
        }
    }
}

/// Review 22f, L1 (crafted: `NtRenameKey` takes a last component only): a rename whose new
/// name is a whole path under the old one moved `A`'s open into `A\B`, a key still to be
/// visited, which then moved again to `A\B\B`; its close by the new name paired with
/// nothing and the key stayed held.
#[test]
fn a_rename_into_its_own_subtree_moves_each_open_once() {
    let mut r = Replay::new(Options::default());
    let mut n = 0;
    r.event(&row(&mut n, 100, "RegOpenKey", r"HKLM\SOFTWARE\A"));
    r.event(&row(&mut n, 100, "RegOpenKey", r"HKLM\SOFTWARE\A\B"));
    let mut ren = row(&mut n, 100, "RegRenameKey", r"HKLM\SOFTWARE\A");
    ren.hive_file = r"HKLM\SOFTWARE\A\B".to_owned();
    r.event(&ren);
    r.event(&row(&mut n, 100, "RegCloseKey", r"HKLM\SOFTWARE\A\B"));
    r.event(&row(&mut n, 100, "RegCloseKey", r"HKLM\SOFTWARE\A\B\B"));
    assert_eq!(r.open_keys(), 0);
    let a = r.finish("t", "csv");
    assert_eq!(a.unknowns.closes_without_open, 0);
}
