//! Interned UTF-16 names: one reference-counted copy per distinct name, and private copies
//! for names that already have an owner who shares them.
//!
//! Names are compared case-insensitively with [`protocol::text::fold_unit`] and stored in a
//! block of exactly their size ([`Pool::alloc_bytes`]: the driver takes it from pool, which
//! rounds to 16 bytes, so a 75-unit name costs 192 bytes of pool, not a 256-byte block).
//! A name longer than [`MAX_NAME_UNITS`] is stored cut and flagged.
//!
//! The table is sharded by hash; each shard has its own lock and a bucket array allocated on
//! first use. Every entry keeps the spelling it was first interned with. References are
//! counted atomically: only interning and dropping what may be the last reference take the
//! shard lock.
//!
//! A *private* name ([`NameTable::store_private`]) is a reference-counted copy in no bucket:
//! neither hashed, compared nor locked. The key cache's names are private (issue 14): every
//! object of one key already shares its entry's name through the cache (an id lookup, not a
//! name lookup), so interning them bought nothing but a hash and compare of the whole name
//! and two shard-lock round trips per fresh key. Two keys can have the same name only for a
//! moment (one deleted and made again, a hive unloaded and loaded again); then the name is
//! stored twice, which the opens' charges and the budget account for like any other name.

use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicPtr, AtomicU32,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
    fence,
};

use protocol::text::fold_unit;

use crate::budget::pool_cost;
use crate::counters::{locked_add32, locked_sub32, release_unless_last};
use crate::lock::{Exclusive, RawLock};
use crate::pool::{BlockClass, Pool};

/// Shards of the name table.
const SHARDS: usize = 64;
/// Buckets per shard (one 4 KiB block of pointers).
const BUCKETS: usize = BlockClass::B4096.size() / size_of::<usize>();
/// Units stored at most; longer names are cut to this length and flagged.
pub const MAX_NAME_UNITS: usize = (BlockClass::B4096.size() - size_of::<NameEntry>()) / 2;

/// Flag: the name was cut to [`MAX_NAME_UNITS`].
pub const NAME_TRUNCATED: u8 = 1;
/// Flag: a private copy, in no bucket ([`NameTable::store_private`]).
const NAME_PRIVATE: u8 = 2;

/// The header of an interned name; the units follow it in the same block.
#[repr(C)]
pub struct NameEntry {
    next: AtomicPtr<Self>,
    hash: u32,
    refs: AtomicU32,
    len: u16,
    flags: u8,
    _pad: u8,
}

/// Bytes of the block holding an entry of `len` units.
const fn entry_bytes(len: usize) -> usize {
    size_of::<NameEntry>() + 2 * len
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

    /// What the entry costs in pool (header, units, pool rounding and header).
    pub const fn cost(&self) -> u64 {
        pool_cost(entry_bytes(self.len as usize))
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
    /// Interned entries (written under `lock`).
    count: AtomicU32,
    /// Private entries whose address picks this shard (atomic: no lock).
    private: AtomicU32,
}

/// Why a name could not be interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMemory;

/// The intern table.
pub struct NameTable<L> {
    shards: [Shard<L>; SHARDS],
    /// Keys the hash ([`hash_seeded`]): the driver gives a per-boot value, so that no one can
    /// choose names (image paths of files they create, say) that all fall in one bucket and
    /// make every intern and last release there walk a long chain under the shard lock.
    seed: u64,
}

/// One in each 16-bit lane of a word of four units.
const LANES: u64 = 0x0001_0001_0001_0001;
/// Lane bits above ASCII: a word is all ASCII when none is set.
const NON_ASCII: u64 = 0xFF80 * LANES;

/// Four units as one word (lane i = unit i on a little-endian machine; the lane order only
/// has to be the same for every word, which it is).
#[allow(
    clippy::inline_always,
    reason = "one load; a call would cost more than the load"
)]
#[inline(always)]
const fn word(c: &[u16; 4]) -> u64 {
    // SAFETY: `c` is four initialised, contiguous units (8 bytes); the read is unaligned.
    unsafe { c.as_ptr().cast::<u64>().read_unaligned() }
}

/// The word of a four-unit chunk (0 for any other length, which callers never pass: they
/// hand over `chunks_exact` pieces, whose length the compiler knows).
#[allow(
    clippy::inline_always,
    reason = "inner loops of the hash and the comparison"
)]
#[inline(always)]
pub(crate) fn word4(c: &[u16]) -> u64 {
    <&[u16; 4]>::try_from(c).map_or(0, word)
}

/// Folds an all-ASCII word exactly as [`fold_unit`] folds each lane: adding 0x1F sets bit 7
/// from 'a' up, adding 0x05 from '{' up; no lane carries into the next.
#[allow(clippy::inline_always, reason = "a few arithmetic operations")]
#[inline(always)]
const fn fold_ascii4(w: u64) -> u64 {
    let ge_a = (w + 0x1F * LANES) & (0x80 * LANES);
    let ge_brace = (w + 0x05 * LANES) & (0x80 * LANES);
    w - ((ge_a & !ge_brace) >> 2)
}

/// Lane `i` of a word.
#[allow(clippy::cast_possible_truncation, reason = "a lane is 16 bits")]
const fn lane(w: u64, i: u32) -> u16 {
    (w >> (16 * i)) as u16
}

/// The hash key of one unit: a function of its [`fold_unit`] fold, so units equal under
/// folding have equal keys. ASCII folds then lose bit 5, which for ASCII is the same as
/// clearing bit 5 of the unit itself: the cheap path of [`key4`].
fn key_unit(u: u16) -> u16 {
    let f = fold_unit(u);
    if f < 0x80 { f & !0x20 } else { f }
}

/// [`key_unit`] of each lane of a word with a non-ASCII lane.
#[cold]
#[inline(never)]
fn key4_slow(w: u64) -> u64 {
    (0..4).fold(0, |k, i| k | (u64::from(key_unit(lane(w, i))) << (16 * i)))
}

/// [`key_unit`] of each lane: one mask for an all-ASCII word.
#[allow(clippy::inline_always, reason = "two operations on the hot path")]
#[inline(always)]
pub(crate) fn key4(w: u64) -> u64 {
    if w & NON_ASCII == 0 {
        w & !(0x20 * LANES)
    } else {
        key4_slow(w)
    }
}

/// True when every lane of `x` equals the same lane of `y` under [`fold_unit`].
#[inline]
fn eq4_folded(x: u64, y: u64) -> bool {
    if (x | y) & NON_ASCII == 0 {
        fold_ascii4(x) == fold_ascii4(y)
    } else {
        (0..4).all(|i| {
            let (a, b) = (lane(x, i), lane(y, i));
            a == b || fold_unit(a) == fold_unit(b)
        })
    }
}

/// True when `a` and `b` are equal under [`fold_unit`]: the same answer as
/// [`protocol::text::eq_folded`], four units at a time (equal words need no folding).
#[must_use]
pub fn eq_fold(a: &[u16], b: &[u16]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // The exactly equal start first, sixteen units a step ([`crate::units`]): names and
    // mounts mostly agree in case too, so the fold is rarely needed.
    let same = crate::units::equal_steps(a, b);
    // What the whole steps left (fewer than a step) is inside the last step, which may
    // overlap them: equal there, equal throughout.
    if a.len() - same <= crate::units::STEP && crate::units::last_step_equal(a, b) {
        return true;
    }
    let (a, b) = (&a[same..], &b[same..]);
    // The rest eight units a step, both words compared at once.
    let (sa, sb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (sa.remainder(), sb.remainder());
    let same4 = |x: &[u16], y: &[u16]| {
        let (x, y) = (word4(x), word4(y));
        x == y || eq4_folded(x, y)
    };
    sa.zip(sb).all(|(x, y)| {
        let ((x0, x1), (y0, y1)) = (x.split_at(4), y.split_at(4));
        (word4(x0) ^ word4(y0)) | (word4(x1) ^ word4(y1)) == 0 || (same4(x0, y0) && same4(x1, y1))
    }) && {
        let (wa, wb) = (ra.chunks_exact(4), rb.chunks_exact(4));
        let (ta, tb) = (wa.remainder(), wb.remainder());
        wa.zip(wb).all(|(x, y)| same4(x, y))
            && ta
                .iter()
                .zip(tb)
                .all(|(&x, &y)| x == y || fold_unit(x) == fold_unit(y))
    }
}

/// Hash of the units' fold keys (case variants hash alike). Two independent multiply chains
/// over four units each: a serial per-unit hash was half the cost of an open.
#[must_use]
pub fn hash_folded(units: &[u16]) -> u32 {
    hash_seeded(units, 0)
}

/// [`hash_folded`] keyed by `seed`: which names collide depends on it.
#[must_use]
pub fn hash_seeded(units: &[u16], seed: u64) -> u32 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut a: u64 = 0x243F_6A88_85A3_08D3 ^ units.len() as u64 ^ seed;
    let mut b: u64 = 0x1319_8A2E_0370_7344 ^ seed.rotate_left(32);
    let mut chunks = units.chunks_exact(8);
    for c in &mut chunks {
        a = (a ^ key4(word4(&c[..4]))).wrapping_mul(K1).rotate_left(29);
        b = (b ^ key4(word4(&c[4..]))).wrapping_mul(K2).rotate_left(31);
    }
    // The last 0..=7 units, zero-padded, lane by lane (a copy into a buffer was a call).
    let mut tail = [0u64; 2];
    for (k, &u) in chunks.remainder().iter().enumerate() {
        tail[(k / 4) & 1] |= u64::from(u) << (16 * (k % 4));
    }
    a = (a ^ key4(tail[0])).wrapping_mul(K1);
    b = (b ^ key4(tail[1])).wrapping_mul(K2);
    let h = (a ^ b.rotate_left(32)).wrapping_mul(K1);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the high half is the best-mixed"
    )]
    let out = (h >> 32) as u32;
    out
}

/// What of `units` is stored: all of it, or its first [`MAX_NAME_UNITS`] flagged as cut.
fn stored_part(units: &[u16]) -> (&[u16], u8) {
    if units.len() > MAX_NAME_UNITS {
        (&units[..MAX_NAME_UNITS], NAME_TRUNCATED)
    } else {
        (units, 0)
    }
}

/// A new entry holding `stored` (at most [`MAX_NAME_UNITS`] units) with one reference,
/// linked before `next`.
fn new_entry<P: Pool>(
    pool: &P,
    stored: &[u16],
    hash: u32,
    flags: u8,
    next: *mut NameEntry,
) -> Result<NameRef, NoMemory> {
    let e = pool
        .alloc_bytes(entry_bytes(stored.len()))
        .ok_or(NoMemory)?
        .cast::<NameEntry>();
    #[allow(
        clippy::cast_possible_truncation,
        reason = "stored.len() <= MAX_NAME_UNITS < 65536"
    )]
    let header = NameEntry {
        next: AtomicPtr::new(next),
        hash,
        refs: AtomicU32::new(1),
        len: stored.len() as u16,
        flags,
        _pad: 0,
    };
    // SAFETY: the pool gave a block of `entry_bytes(len)` >= size_of::<NameEntry>() bytes,
    // 16-aligned, ours alone.
    unsafe { e.write(header) };
    let dst = e.as_ptr().wrapping_add(1).cast::<u16>();
    // SAFETY: the block has room for the header and `stored.len()` units after it, nobody
    // else sees it before the caller publishes it, and it does not overlap `stored`.
    unsafe { ptr::copy_nonoverlapping(stored.as_ptr(), dst, stored.len()) };
    Ok(e)
}

impl<L: RawLock> Default for NameTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> NameTable<L> {
    /// An empty table (allocates nothing), its hash unkeyed.
    #[must_use]
    pub fn new() -> Self {
        Self::with_seed(0)
    }

    /// The key of this table's hash ([`hash_seeded`]).
    #[must_use]
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// An empty table whose hash is keyed by `seed` (allocates nothing).
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            shards: core::array::from_fn(|_| Shard {
                lock: L::new(),
                buckets: AtomicPtr::new(ptr::null_mut()),
                count: AtomicU32::new(0),
                private: AtomicU32::new(0),
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
        self.intern_new(pool, units).map(|(r, _)| r)
    }

    /// Interns `units`, taking one reference; also says whether this call created the entry
    /// (so the caller can be charged for it).
    ///
    /// # Errors
    /// [`NoMemory`] when a block for the bucket array or the entry could not be had.
    pub fn intern_new<P: Pool>(
        &self,
        pool: &P,
        units: &[u16],
    ) -> Result<(NameRef, bool), NoMemory> {
        self.intern_capped(pool, units, MAX_NAME_UNITS)
    }

    /// Interns at most the first `cap` units of `units` (`cap` at most [`MAX_NAME_UNITS`]),
    /// flagged as cut when it is longer, taking one reference; also says whether this call
    /// created the entry. A cut name and a name that is really those units are two entries.
    ///
    /// # Errors
    /// [`NoMemory`] when a block for the bucket array or the entry could not be had.
    pub fn intern_capped<P: Pool>(
        &self,
        pool: &P,
        units: &[u16],
        cap: usize,
    ) -> Result<(NameRef, bool), NoMemory> {
        let (stored, flags) = stored_part(units);
        let (stored, flags) = if stored.len() > cap {
            (&stored[..cap], NAME_TRUNCATED)
        } else {
            (stored, flags)
        };
        let h = hash_seeded(stored, self.seed);
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
                && eq_fold(entry.units(), stored)
            {
                entry.refs.fetch_add(1, Relaxed);
                return Ok((e, false));
            }
            cur = entry.next.load(Relaxed);
        }
        let e = new_entry(pool, stored, h, flags, head.load(Relaxed))?;
        head.store(e.as_ptr(), Relaxed);
        locked_add32(&shard.count, 1);
        Ok((e, true))
    }

    /// A private copy of `units` (cut to [`MAX_NAME_UNITS`] and flagged), with one
    /// reference: in no bucket, so nothing hashes, compares or locks (see the module's
    /// comment). Always a new entry, charged to whoever stores it.
    ///
    /// # Errors
    /// [`NoMemory`] when the block could not be had.
    pub fn store_private<P: Pool>(&self, pool: &P, units: &[u16]) -> Result<NameRef, NoMemory> {
        let (stored, flags) = stored_part(units);
        let e = new_entry(pool, stored, 0, flags | NAME_PRIVATE, ptr::null_mut())?;
        self.private_shard(e).private.fetch_add(1, Relaxed);
        Ok(e)
    }

    /// The shard counting private entry `e` (by its address: no shared counter line).
    fn private_shard(&self, e: NameRef) -> &Shard<L> {
        &self.shards[(e.as_ptr() as usize >> 4) % SHARDS]
    }

    /// Takes one more reference on `r`, which the caller already holds one on (so the count
    /// cannot reach zero meanwhile: no lock needed).
    pub fn add_ref(&self, r: NameRef) {
        name_of(r).refs.fetch_add(1, Relaxed);
    }

    /// Drops one reference; frees the entry when it was the last.
    ///
    /// A reference that is not the last goes without the shard lock: the count only ever
    /// drops from above one there, so it cannot reach zero behind `intern`'s back. What may
    /// be the last reference is dropped under the lock, where `intern` takes new ones, so
    /// the entry is unlinked only when no one holds or is taking a reference. Release on
    /// every decrement and Acquire on the last order each holder's reads before the free.
    ///
    /// A private entry is in no bucket, where nobody can find it to take a reference: its
    /// last reference goes without a lock (Release on each decrement, an Acquire fence on
    /// the last, as for an `Arc`).
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    #[inline(always)]
    pub fn release<P: Pool>(&self, pool: &P, r: NameRef) {
        let entry = name_of(r);
        if entry.flags & NAME_PRIVATE != 0 {
            if entry.refs.fetch_sub(1, Release) != 1 {
                return;
            }
            fence(Acquire);
            self.private_shard(r).private.fetch_sub(1, Relaxed);
            let bytes = entry_bytes(usize::from(entry.len));
            // SAFETY: the last reference is gone and no bucket links the entry: nobody can
            // reach it; it came from `alloc_bytes` of this size.
            unsafe { pool.free_bytes(bytes, r.cast()) };
            return;
        }
        if release_unless_last(&entry.refs) {
            return;
        }
        let h = entry.hash;
        let shard = &self.shards[h as usize % SHARDS];
        {
            let _g = Exclusive::new(&shard.lock);
            if entry.refs.fetch_sub(1, AcqRel) != 1 {
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
        let bytes = entry_bytes(usize::from(entry.len));
        // SAFETY: the count reached zero and the entry is unlinked: nobody can reach it; it
        // came from `alloc_bytes` of this size.
        unsafe { pool.free_bytes(bytes, r.cast()) };
    }

    /// Names stored now: distinct interned names and private copies.
    pub fn count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.count.load(Relaxed)) + u64::from(s.private.load(Relaxed)))
            .sum()
    }

    /// Frees every interned entry and bucket array; returns how many entries were still
    /// referenced (0 when every holder released its names first), private ones included
    /// (those only their holders can free: no bucket links them).
    pub fn teardown<P: Pool>(&mut self, pool: &P) -> u64 {
        let mut leaked = 0;
        for shard in &mut self.shards {
            leaked += u64::from(shard.private.load(Relaxed));
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
                    let bytes = entry_bytes(usize::from(entry.len));
                    // SAFETY: teardown has exclusive access; the entry is dropped with its
                    // bucket; it came from `alloc_bytes` of this size.
                    unsafe { pool.free_bytes(bytes, e.cast()) };
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
    fn names_that_collide_under_one_seed_spread_under_another() {
        // What a user could do offline against a fixed hash: pick names that all land in
        // one bucket of one shard (its 15 low bits, [`NameTable::bucket`]).
        let seed_a = 0x0123_4567_89AB_CDEF;
        let slot = |h: u32| h as usize % (SHARDS * BUCKETS);
        let target = slot(hash_seeded(&[0x41], seed_a));
        let mut colliding = Vec::new();
        let mut i = 0u32;
        while colliding.len() < 64 {
            let n: Vec<u16> = format!(r"\Device\HarddiskVolume2\Users\x\{i}.dll")
                .encode_utf16()
                .collect();
            if slot(hash_seeded(&n, seed_a)) == target {
                colliding.push(n);
            }
            i += 1;
        }
        let seed_b = 0xFEDC_BA98_7654_3210;
        let mut per_slot = std::collections::HashMap::new();
        for n in &colliding {
            *per_slot.entry(slot(hash_seeded(n, seed_b))).or_insert(0) += 1;
        }
        let longest = per_slot.values().copied().max().unwrap_or(0);
        assert!(
            longest <= 3,
            "64 names colliding under seed A: {longest} share a bucket under B"
        );
        assert_eq!(hash_seeded(&colliding[0], 0), hash_folded(&colliding[0]));
    }

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
    fn fold_ascii4_agrees_with_fold_unit_on_every_ascii_unit_in_every_lane() {
        for a in 0u16..0x80 {
            let c = [a, 0x7F - a, (a * 7) % 0x80, (a + 0x20) % 0x80];
            let w = fold_ascii4(word(&c));
            for (i, &u) in c.iter().enumerate() {
                assert_eq!(lane(w, i as u32), fold_unit(u), "unit {u:#x}");
            }
        }
    }

    /// Units whose folds meet across the ASCII boundary or in letters, and some that do not.
    const TRICKY: [u16; 16] = [
        b's' as u16,
        b'S' as u16,
        0x017F,
        b'i' as u16,
        b'I' as u16,
        0x0131,
        b'k' as u16,
        0x212A,
        0xE9,
        0xC9,
        b'@' as u16,
        b'`' as u16,
        b'{' as u16,
        b'[' as u16,
        0xD800,
        0xDF,
    ];

    #[test]
    fn key4_is_a_function_of_the_fold() {
        for &a in &TRICKY {
            for &b in &TRICKY {
                let (wa, wb) = (word(&[a, b, b'x'.into(), a]), word(&[b, a, b'X'.into(), b]));
                for i in 0..4 {
                    let (x, y) = (lane(wa, i), lane(wb, i));
                    if fold_unit(x) == fold_unit(y) {
                        assert_eq!(lane(key4(wa), i), lane(key4(wb), i), "{x:#x} {y:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn eq_fold_agrees_with_protocol_eq_folded() {
        let mut seed = 0x1234_5678_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 53) as usize;
            let a: Vec<u16> = (0..len).map(|_| TRICKY[(next() % 16) as usize]).collect();
            let mut b: Vec<u16> = a
                .iter()
                .map(|&u| {
                    if next() % 3 == 0 {
                        TRICKY[(next() % 16) as usize]
                    } else {
                        u
                    }
                })
                .collect();
            if next() % 8 == 0 {
                b.push(b'a'.into());
            }
            assert_eq!(
                eq_fold(&a, &b),
                protocol::text::eq_folded(&a, &b),
                "{a:x?} {b:x?}"
            );
            if eq_fold(&a, &b) {
                assert_eq!(hash_folded(&a), hash_folded(&b), "{a:x?} {b:x?}");
            }
        }
    }
}
