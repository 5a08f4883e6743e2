//! Wide scans of UTF-16 units: the length of two strings' exactly equal start, and the
//! position of a path's n-th backslash, sixteen units a step.
//!
//! On x86-64 a step is SSE2 (part of the x86-64 baseline): two 16-byte loads per string,
//! one lane compare each, and one mask. Kernel-mode code may use the SSE registers on x64
//! without saving them (Learn, "Using Floating Point in a WDM Driver": "The compiler also
//! takes care of properly saving and restoring the SSE state"; only AVX and other extended
//! state need `KeSaveExtendedProcessorState`). Elsewhere a step is four 64-bit words. Both
//! stop at the last whole step: callers finish the rest with their own scalar loops, which
//! also handle case folding (a fresh key's open spent about 360 of its instructions in
//! these two scans, eight units a step: issue 14).

/// Units per step.
pub const STEP: usize = 16;

/// How many leading units of `a` and `b` are certainly equal, in whole steps: a multiple of
/// [`STEP`], at most the shorter length; the first unequal unit (if any) is at or after it.
#[must_use]
pub fn equal_steps(a: &[u16], b: &[u16]) -> usize {
    equal_steps_by(a, b, wide::step_equal)
}

fn equal_steps_by(a: &[u16], b: &[u16], step_equal: impl Fn(&[u16], &[u16]) -> bool) -> usize {
    let (xs, ys) = (a.chunks_exact(STEP), b.chunks_exact(STEP));
    let mut done = 0;
    for (x, y) in xs.zip(ys) {
        if !step_equal(x, y) {
            break;
        }
        done += STEP;
    }
    done
}

/// True when the last [`STEP`] units of `a` and `b` are equal unit for unit.
///
/// False when either is shorter than a step. With [`equal_steps`] this covers a whole string
/// without a scalar tail: the last step may overlap the steps before it.
#[must_use]
pub fn last_step_equal(a: &[u16], b: &[u16]) -> bool {
    match (a.len().checked_sub(STEP), b.len().checked_sub(STEP)) {
        (Some(i), Some(j)) => wide::step_equal(&a[i..], &b[j..]),
        _ => false,
    }
}

/// Where the `n`-th backslash (counting from 1) of `path` is, scanning whole steps only.
///
/// `Ok(index)` when it is within them, else `Err((scanned, seen))`: the units scanned (a
/// multiple of [`STEP`]) and the backslashes among them, for the caller's scalar loop.
///
/// # Errors
/// `Err` when the whole steps hold fewer than `n` backslashes.
pub fn nth_backslash(path: &[u16], n: u32) -> Result<usize, (usize, u32)> {
    nth_backslash_by(path, n, wide::backslashes)
}

fn nth_backslash_by(
    path: &[u16],
    n: u32,
    backslashes: impl Fn(&[u16]) -> u32,
) -> Result<usize, (usize, u32)> {
    let mut seen = 0;
    let mut base = 0;
    for c in path.chunks_exact(STEP) {
        // Bit by bit (a path has few backslashes; `count_ones` is no single instruction in
        // the x86-64 baseline).
        let mut hits = backslashes(c);
        while hits != 0 {
            seen += 1;
            if seen == n {
                return Ok(base + hits.trailing_zeros() as usize);
            }
            hits &= hits - 1;
        }
        base += STEP;
    }
    Err((base, seen))
}

const BACKSLASH: u16 = b'\\' as u16;

#[cfg(target_arch = "x86_64")]
use sse2 as wide;
#[cfg(not(target_arch = "x86_64"))]
use words as wide;

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_packs_epi16, _mm_set1_epi16,
    };

    /// True when the two 16-unit steps are equal unit for unit.
    pub(super) fn step_equal(x: &[u16], y: &[u16]) -> bool {
        // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 processor has it.
        unsafe { step_equal_sse2(x, y) }
    }

    /// One bit per unit of a 16-unit step (bit i = unit i), set where it is a backslash.
    pub(super) fn backslashes(c: &[u16]) -> u32 {
        // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 processor has it.
        unsafe { backslashes_sse2(c) }
    }

    /// Eight units from `c[at..at + 8]` (zeros past its end: callers pass whole steps).
    #[target_feature(enable = "sse2")]
    fn load(c: &[u16], at: usize) -> __m128i {
        let eight: &[u16; 8] = c
            .get(at..at + 8)
            .and_then(|e| e.try_into().ok())
            .unwrap_or(&[0; 8]);
        // SAFETY: `eight` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(eight.as_ptr().cast()) }
    }

    #[target_feature(enable = "sse2")]
    fn step_equal_sse2(x: &[u16], y: &[u16]) -> bool {
        let lo = _mm_cmpeq_epi16(load(x, 0), load(y, 0));
        let hi = _mm_cmpeq_epi16(load(x, 8), load(y, 8));
        _mm_movemask_epi8(_mm_and_si128(lo, hi)) == 0xFFFF
    }

    #[target_feature(enable = "sse2")]
    fn backslashes_sse2(c: &[u16]) -> u32 {
        let bs = _mm_set1_epi16(super::BACKSLASH.cast_signed());
        // Each lane all ones or all zeros; packing (signed saturation) keeps that, a byte a
        // unit, in unit order.
        let lanes = _mm_packs_epi16(
            _mm_cmpeq_epi16(load(c, 0), bs),
            _mm_cmpeq_epi16(load(c, 8), bs),
        );
        _mm_movemask_epi8(lanes).cast_unsigned()
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
mod words {
    /// Four units as a word (lane i = unit i on a little-endian machine).
    fn word(c: &[u16], at: usize) -> u64 {
        crate::names::word4(&c[at..at + 4])
    }

    /// True when the two 16-unit steps are equal unit for unit.
    pub(super) fn step_equal(x: &[u16], y: &[u16]) -> bool {
        (0..4).fold(0, |d, i| d | (word(x, 4 * i) ^ word(y, 4 * i))) == 0
    }

    /// One bit per unit of a 16-unit step (bit i = unit i), set where it is a backslash.
    pub(super) fn backslashes(c: &[u16]) -> u32 {
        c.iter()
            .enumerate()
            .fold(0, |m, (i, &u)| m | (u32::from(u == super::BACKSLASH) << i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Impl = (fn(&[u16], &[u16]) -> bool, fn(&[u16]) -> u32);
    /// Every implementation this machine can run: the one in use and the portable words.
    const IMPLS: [Impl; 2] = [
        (wide::step_equal, wide::backslashes),
        (words::step_equal, words::backslashes),
    ];

    fn next(seed: &mut u32) -> u32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 17;
        *seed ^= *seed << 5;
        *seed
    }

    #[test]
    fn equal_steps_stops_at_the_step_of_the_first_difference() {
        let mut seed = 0x51ED_2701;
        for _ in 0..20_000 {
            let len = (next(&mut seed) % 70) as usize;
            let a: Vec<u16> = (0..len)
                .map(|_| (next(&mut seed) % 3) as u16 + 0x41)
                .collect();
            let mut b = a.clone();
            if len > 0 && next(&mut seed).is_multiple_of(2) {
                let i = (next(&mut seed) as usize) % len;
                b[i] ^= 1 << (next(&mut seed) % 16);
            }
            b.truncate(len - (next(&mut seed) as usize % 3).min(len));
            let first = a.iter().zip(&b).position(|(x, y)| x != y);
            let common = first.unwrap_or_else(|| a.len().min(b.len()));
            for eq in IMPLS.map(|i| i.0) {
                assert_eq!(
                    equal_steps_by(&a, &b, eq),
                    common / STEP * STEP,
                    "{a:?} {b:?}"
                );
            }
            if a.len() == b.len() {
                let tail_equal = a.len() >= STEP && a[a.len() - STEP..] == b[b.len() - STEP..];
                assert_eq!(last_step_equal(&a, &b), tail_equal, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn nth_backslash_agrees_with_a_unit_by_unit_count() {
        let mut seed = 0xBAC5_1A5B;
        for _ in 0..20_000 {
            let len = (next(&mut seed) % 90) as usize;
            let path: Vec<u16> = (0..len)
                .map(|_| {
                    if next(&mut seed).is_multiple_of(5) {
                        BACKSLASH
                    } else {
                        0x5B
                    }
                })
                .collect();
            let n = next(&mut seed) % 6 + 1;
            let whole = len / STEP * STEP;
            let expected = path[..whole]
                .iter()
                .enumerate()
                .filter(|&(_, &u)| u == BACKSLASH)
                .nth(n as usize - 1)
                .map(|(i, _)| i);
            let seen_in_whole = path[..whole].iter().filter(|&&u| u == BACKSLASH).count();
            for find in IMPLS.map(|i| i.1) {
                match nth_backslash_by(&path, n, find) {
                    Ok(i) => assert_eq!(Some(i), expected),
                    Err((scanned, counted)) => {
                        assert_eq!(expected, None);
                        assert_eq!((scanned, counted as usize), (whole, seen_in_whole));
                    }
                }
            }
        }
    }
}
