//! Interned UTF-16 names: one reference-counted copy per distinct name.
//!
//! Names are compared case-insensitively with [`protocol::text::fold_unit`] and stored in the
//! smallest size class that holds them. A name longer than the largest class is stored cut
//! and flagged.
//!
//! The table is sharded by hash; each shard has its own lock and a bucket array allocated on
//! first use. Every entry keeps the spelling it was first interned with.

use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering::Relaxed};

use protocol::text::{eq_folded, fold_unit};

use crate::counters::{locked_add32, locked_sub32};
use crate::lock::{Exclusive, RawLock};
use crate::pool::{BlockClass, Pool, alloc_init, free_block};

/// Shards of the name table.
const SHARDS: usize = 64;
/// Buckets per shard (one 4 KiB block of pointers).
const BUCKETS: usize = BlockClass::B4096.size() / size_of::<usize>();
/// Units stored at most; longer names are cut to this length and flagged.
pub const MAX_NAME_UNITS: usize = (BlockClass::B4096.size() - size_of::<NameEntry>()) / 2;

/// Flag: the name was cut to [`MAX_NAME_UNITS`].
pub const NAME_TRUNCATED: u8 = 1;

/// The header of an interned name; the units follow it in the same block.
#[repr(C)]
pub struct NameEntry {
    next: AtomicPtr<Self>,
    hash: u32,
    refs: AtomicU32,
    len: u16,
    flags: u8,
    class: u8,
}

impl NameEntry {
    /// The stored units.
    pub fn units(&self) -> &[u16] {
        // The units start right after the header, in the same block (see `intern`).
        let units = ptr::from_ref(self).wrapping_add(1).cast::<u16>();
        // SAFETY: the entry was written at the start of a block of at least
        // `size_of::<NameEntry>() + 2 * len` bytes, the units were initialised there, the
        // header's size is a multiple of 2 (so `units` is aligned), and the block lives as
        // long as a reference to the entry does.
        unsafe { core::slice::from_raw_parts(units, usize::from(self.len)) }
    }

    /// True when the name was cut.
    pub const fn truncated(&self) -> bool {
        self.flags & NAME_TRUNCATED != 0
    }
}

/// A counted reference to an interned name (released with [`NameTable::release`]).
pub type NameRef = NonNull<NameEntry>;

/// Reads the entry behind a reference the caller holds a count on.
#[must_use]
pub const fn name_of<'a>(r: NameRef) -> &'a NameEntry {
    // SAFETY: a `NameRef` is only handed out with a reference count taken, and the entry is
    // freed only when the count drops to zero, which the holder of this reference has not
    // done yet.
    unsafe { r.as_ref() }
}

struct Shard<L> {
    lock: L,
    buckets: AtomicPtr<AtomicPtr<NameEntry>>,
    count: AtomicU32,
}

/// Why a name could not be interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMemory;

/// The intern table.
pub struct NameTable<L> {
    shards: [Shard<L>; SHARDS],
}

/// Folds a unit: branch-free for ASCII, [`fold_unit`] otherwise.
#[allow(clippy::inline_always, reason = "called from fold4, which must inline")]
#[inline(always)]
fn fold_fast(u: u16) -> u16 {
    if u < 0x80 {
        u - (u16::from(u.wrapping_sub(u16::from(b'a')) < 26) << 5)
    } else {
        fold_unit(u)
    }
}

/// Folds four units packed in a `u64` (lane i = unit i): all-ASCII words in a few
/// arithmetic operations, others unit by unit.
#[allow(
    clippy::inline_always,
    reason = "measured: a call per four units cost 20% of an open"
)]
#[inline(always)]
fn fold4(c: &[u16]) -> u64 {
    const LANES: u64 = 0x0001_0001_0001_0001;
    let w = u64::from(c[0])
        | (u64::from(c[1]) << 16)
        | (u64::from(c[2]) << 32)
        | (u64::from(c[3]) << 48);
    if w & (0xFF80 * LANES) == 0 {
        // Every lane < 0x80: adding 0x1F sets bit 7 from 'a' up, adding 0x05 from '{' up;
        // no lane carries into the next.
        let ge_a = (w + 0x1F * LANES) & (0x80 * LANES);
        let ge_brace = (w + 0x05 * LANES) & (0x80 * LANES);
        w - ((ge_a & !ge_brace) >> 2)
    } else {
        u64::from(fold_fast(c[0]))
            | (u64::from(fold_fast(c[1])) << 16)
            | (u64::from(fold_fast(c[2])) << 32)
            | (u64::from(fold_fast(c[3])) << 48)
    }
}

/// Hash of the folded units (case variants hash alike). Two independent multiply chains
/// over four units each: a serial per-unit hash was half the cost of an open.
#[must_use]
pub fn hash_folded(units: &[u16]) -> u32 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut a: u64 = 0x243F_6A88_85A3_08D3 ^ units.len() as u64;
    let mut b: u64 = 0x1319_8A2E_0370_7344;
    let mut chunks = units.chunks_exact(8);
    for c in &mut chunks {
        a = (a ^ fold4(&c[..4])).wrapping_mul(K1).rotate_left(29);
        b = (b ^ fold4(&c[4..])).wrapping_mul(K2).rotate_left(31);
    }
    let rest = chunks.remainder();
    let mut tail = [0u16; 8];
    tail[..rest.len()].copy_from_slice(rest);
    a = (a ^ fold4(&tail[..4])).wrapping_mul(K1);
    b = (b ^ fold4(&tail[4..])).wrapping_mul(K2);
    let h = (a ^ b.rotate_left(32)).wrapping_mul(K1);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the high half is the best-mixed"
    )]
    let out = (h >> 32) as u32;
    out
}

fn hash(units: &[u16]) -> u32 {
    hash_folded(units)
}

impl<L: RawLock> Default for NameTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> NameTable<L> {
    /// An empty table (allocates nothing).
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: core::array::from_fn(|_| Shard {
                lock: L::new(),
                buckets: AtomicPtr::new(ptr::null_mut()),
                count: AtomicU32::new(0),
            }),
        }
    }

    fn bucket<'a>(buckets: *mut AtomicPtr<NameEntry>, h: u32) -> &'a AtomicPtr<NameEntry> {
        let i = (h as usize >> 6) % BUCKETS;
        // SAFETY: `buckets` is a live bucket block of BUCKETS pointers (allocated by `intern`,
        // freed only by `teardown`), and `i < BUCKETS`.
        unsafe { &*buckets.wrapping_add(i) }
    }

    /// Interns `units`, taking one reference.
    ///
    /// # Errors
    /// [`NoMemory`] when a block for the bucket array or the entry could not be had.
    pub fn intern<P: Pool>(&self, pool: &P, units: &[u16]) -> Result<NameRef, NoMemory> {
        let (stored, flags) = if units.len() > MAX_NAME_UNITS {
            (&units[..MAX_NAME_UNITS], NAME_TRUNCATED)
        } else {
            (units, 0)
        };
        let h = hash(stored);
        let shard = &self.shards[h as usize % SHARDS];
        let _g = Exclusive::new(&shard.lock);
        let mut buckets = shard.buckets.load(Relaxed);
        if buckets.is_null() {
            let block = pool.alloc(BlockClass::B4096).ok_or(NoMemory)?;
            let b = block.cast::<AtomicPtr<NameEntry>>().as_ptr();
            for i in 0..BUCKETS {
                // SAFETY: the block is 4096 bytes = BUCKETS pointers, 16-aligned, ours.
                unsafe { b.wrapping_add(i).write(AtomicPtr::new(ptr::null_mut())) };
            }
            shard.buckets.store(b, Relaxed);
            buckets = b;
        }
        let head = Self::bucket(buckets, h);
        let mut cur = head.load(Relaxed);
        while let Some(e) = NonNull::new(cur) {
            let entry = name_of(e);
            if entry.hash == h
                && entry.flags == flags
                && usize::from(entry.len) == stored.len()
                && (entry.units() == stored || eq_folded(entry.units(), stored))
            {
                locked_add32(&entry.refs, 1);
                return Ok(e);
            }
            cur = entry.next.load(Relaxed);
        }
        let bytes = size_of::<NameEntry>() + 2 * stored.len();
        let class = BlockClass::for_size(bytes).ok_or(NoMemory)?;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "stored.len() <= MAX_NAME_UNITS < 65536; class index < 8"
        )]
        let e = alloc_init(
            pool,
            class,
            NameEntry {
                next: AtomicPtr::new(head.load(Relaxed)),
                hash: h,
                refs: AtomicU32::new(1),
                len: stored.len() as u16,
                flags,
                class: class.index() as u8,
            },
        )
        .ok_or(NoMemory)?;
        let dst = e.as_ptr().wrapping_add(1).cast::<u16>();
        // SAFETY: the block has room for the header and `stored.len()` units after it (class
        // chosen for `bytes`), nobody else sees it before it is linked below, and it does not
        // overlap `stored`.
        unsafe { ptr::copy_nonoverlapping(stored.as_ptr(), dst, stored.len()) };
        head.store(e.as_ptr(), Relaxed);
        locked_add32(&shard.count, 1);
        Ok(e)
    }

    /// Takes one more reference on `r`, which the caller already holds one on.
    pub fn add_ref(&self, r: NameRef) {
        let shard = &self.shards[name_of(r).hash as usize % SHARDS];
        let _g = Exclusive::new(&shard.lock);
        locked_add32(&name_of(r).refs, 1);
    }

    /// Drops one reference; frees the entry when it was the last.
    pub fn release<P: Pool>(&self, pool: &P, r: NameRef) {
        let entry = name_of(r);
        let h = entry.hash;
        let shard = &self.shards[h as usize % SHARDS];
        {
            let _g = Exclusive::new(&shard.lock);
            if locked_sub32(&entry.refs, 1) != 1 {
                return;
            }
            let head = Self::bucket(shard.buckets.load(Relaxed), h);
            let mut link = head;
            loop {
                let cur = link.load(Relaxed);
                if cur == r.as_ptr() {
                    link.store(entry.next.load(Relaxed), Relaxed);
                    break;
                }
                match NonNull::new(cur) {
                    Some(c) => link = &name_of(c).next,
                    None => break, // not reachable: a live entry is always in its bucket
                }
            }
            locked_sub32(&shard.count, 1);
        }
        let class = BlockClass::ALL[usize::from(entry.class)];
        // SAFETY: the count reached zero and the entry is unlinked: nobody can reach it.
        unsafe { free_block(pool, class, r) };
    }

    /// Distinct names interned now.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.count.load(Relaxed)))
            .sum()
    }

    /// Frees every entry and bucket array; returns how many entries were still referenced
    /// (0 when every holder released its names first).
    pub fn teardown<P: Pool>(&mut self, pool: &P) -> u64 {
        let mut leaked = 0;
        for shard in &mut self.shards {
            let buckets = shard.buckets.load(Relaxed);
            let Some(block) = NonNull::new(buckets) else {
                continue;
            };
            for i in 0..BUCKETS {
                // SAFETY: `i < BUCKETS`, inside the live bucket block.
                let mut cur = unsafe { &*buckets.wrapping_add(i) }.load(Relaxed);
                while let Some(e) = NonNull::new(cur) {
                    let entry = name_of(e);
                    cur = entry.next.load(Relaxed);
                    leaked += 1;
                    let class = BlockClass::ALL[usize::from(entry.class)];
                    // SAFETY: teardown has exclusive access; the entry is dropped with its bucket.
                    unsafe { free_block(pool, class, e) };
                }
            }
            // SAFETY: the bucket block came from `pool.alloc(B4096)` in `intern`.
            unsafe { pool.free(BlockClass::B4096, block.cast()) };
            shard.buckets.store(ptr::null_mut(), Relaxed);
            shard.count.store(0, Relaxed);
        }
        leaked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_case_insensitive_and_spreads() {
        let a: Vec<u16> = r"\REGISTRY\MACHINE\SOFTWARE\Café".encode_utf16().collect();
        let b: Vec<u16> = r"\registry\machine\software\CAFÉ".encode_utf16().collect();
        assert_eq!(hash_folded(&a), hash_folded(&b));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let n: Vec<u16> = format!(r"\REGISTRY\MACHINE\SOFTWARE\K{i}")
                .encode_utf16()
                .collect();
            seen.insert(hash_folded(&n) as usize % (SHARDS * BUCKETS));
        }
        // 10,000 names into 32,768 buckets: a random function reaches about 8,600 distinct.
        assert!(seen.len() > 8_300, "{} distinct buckets", seen.len());
        for (x, y) in [("a", "b"), ("ab", "ba"), ("", "a"), ("abcd", "abcde")] {
            let x: Vec<u16> = x.encode_utf16().collect();
            let y: Vec<u16> = y.encode_utf16().collect();
            assert_ne!(hash_folded(&x), hash_folded(&y));
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "lanes are extracted on purpose"
)]
mod fold_tests {
    use super::*;

    #[test]
    fn fold4_agrees_with_fold_unit_on_every_ascii_quad_pattern() {
        for a in 0u16..0x100 {
            let c = [
                a,
                0x7A - (a % 26),
                0x40 + (a % 0x40),
                if a % 2 == 0 { 0xE9 } else { 0x5B },
            ];
            let w = fold4(&c);
            for (i, &u) in c.iter().enumerate() {
                assert_eq!((w >> (16 * i)) as u16, fold_unit(u), "unit {u:#x}");
            }
        }
        for u in 0u16..0x80 {
            let w = fold4(&[u, u, u, u]);
            assert_eq!(w as u16, fold_unit(u), "unit {u:#x}");
        }
    }
}
