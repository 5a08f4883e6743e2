//! Executive reader/writer spin locks (`EX_SPIN_LOCK`), the way hivetrack.sys uses them, and
//! the misuses the emulator's model must catch (docs: `ExAcquireSpinLockShared`,
//! `ExReleaseSpinLockShared`, `ExAcquireSpinLockExclusive`, `ExReleaseSpinLockExclusive`,
//! "Reader/Writer Spin Locks").
//!
//! The routines are resolved with `MmGetSystemRoutineAddress` (mingw's headers do not declare
//! them; hivetrack resolves them the same way). One request, `IOCTL_EX_SPIN_LOCK`, takes an
//! operation in input slot 0:
//!
//! - [`OP_IRQL`]: shared then exclusive on [`LOCK`]: the entry IRQL each acquire returns, the
//!   IRQL while held, the IRQL after each release; slot 3 is [`LOCK`]'s address.
//! - [`OP_HOLD_SHARED`]: holds [`LOCK`] shared until [`OP_GO`] (or about 2 s), and answers
//!   whether the go came while it held the lock.
//! - [`OP_JOIN_SHARED`]: takes [`LOCK`] shared and answers how many shared holders the test
//!   driver counted at that moment (1 = it shared the lock with a holder); then sets go.
//! - [`OP_EXCLUSIVE_TICK`] / [`OP_SHARED_TICK`]: takes [`LOCK`] exclusive / shared and answers
//!   its turn in the order of acquisitions.
//! - [`OP_GO`]: sets go without touching the lock.
//! - Bugs: [`OP_BUG_HIGH_IRQL`] (acquire above `DISPATCH_LEVEL`), [`OP_BUG_NOT_HELD`] (release
//!   a lock not held), [`OP_BUG_EXCLUSIVE_RELEASED_SHARED`], [`OP_BUG_SHARED_RELEASED_EXCLUSIVE`],
//!   [`OP_BUG_UPGRADE`] (exclusive while holding it shared), [`OP_BUG_RECURSIVE_SHARED`],
//!   [`OP_BUG_NOT_ZERO`] (a lock word that is not 0), [`OP_BUG_WRONG_OLD_IRQL`] (a release
//!   given another IRQL than its acquire returned), [`OP_BUG_HANDED_OVER`] (the outer of two
//!   nested locks released first, handing its IRQL to the inner: what hivetrack.sys did
//!   until 2026-12-04).
//! - Lock order (Driver Verifier's Deadlock Detection, devtest "Deadlock Detection"):
//!   [`OP_ORDER_A_THEN_B`] takes [`ORDER_A`] then [`ORDER_B`] (both exclusive) and releases
//!   them; [`OP_ORDER_B_THEN_A`] the reverse. Each returns before the other starts, so the
//!   two orders are never simultaneous: only a lock-order graph sees the loop.

use core::{
    arch::asm,
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
};

use wdk_sys::{
    LARGE_INTEGER, UNICODE_STRING,
    ntddk::{KeQueryPerformanceCounter, MmGetSystemRoutineAddress},
};

use crate::unicode;

/// Shared and exclusive, with the IRQL each step sees.
pub const OP_IRQL: u64 = 0;
/// Hold shared until go.
pub const OP_HOLD_SHARED: u64 = 1;
/// Share with a holder, then go.
pub const OP_JOIN_SHARED: u64 = 2;
/// Exclusive, answering its turn.
pub const OP_EXCLUSIVE_TICK: u64 = 3;
/// Shared, answering its turn.
pub const OP_SHARED_TICK: u64 = 4;
/// Go, without the lock.
pub const OP_GO: u64 = 5;
/// Bug: acquire at IRQL 3.
pub const OP_BUG_HIGH_IRQL: u64 = 10;
/// Bug: release a lock not held.
pub const OP_BUG_NOT_HELD: u64 = 11;
/// Bug: an exclusive hold released with `ExReleaseSpinLockShared`.
pub const OP_BUG_EXCLUSIVE_RELEASED_SHARED: u64 = 12;
/// Bug: exclusive acquire while holding it shared (an upgrade: a deadlock).
pub const OP_BUG_UPGRADE: u64 = 13;
/// Bug: shared acquire while holding it shared (recursion: a deadlock).
pub const OP_BUG_RECURSIVE_SHARED: u64 = 14;
/// Bug: a lock word that is not zero.
pub const OP_BUG_NOT_ZERO: u64 = 15;
/// Bug: a shared hold released with `ExReleaseSpinLockExclusive`.
pub const OP_BUG_SHARED_RELEASED_EXCLUSIVE: u64 = 16;
/// Bug: an exclusive hold released with `OldIrql` = `DISPATCH_LEVEL`, not the `PASSIVE_LEVEL`
/// its acquire returned.
pub const OP_BUG_WRONG_OLD_IRQL: u64 = 17;
/// Bug: [`LOCK`] shared, then [`BUG_LOCK`] exclusive inside it; the outer released first at
/// `DISPATCH_LEVEL` (what the inner acquire returned), the inner to the outer's entry IRQL.
pub const OP_BUG_HANDED_OVER: u64 = 18;

/// [`ORDER_A`] then [`ORDER_B`], both exclusive, released inner first.
pub const OP_ORDER_A_THEN_B: u64 = 19;
/// [`ORDER_B`] then [`ORDER_A`]: the reverse order, a lock hierarchy violation.
pub const OP_ORDER_B_THEN_A: u64 = 20;

/// An `EX_SPIN_LOCK`: a zero-initialised LONG in non-paged memory (the image's data).
struct ExLock(UnsafeCell<i32>);
// SAFETY: the word is only touched by the kernel's EX_SPIN_LOCK routines (and, for the
// not-zero bug, written while no one holds it).
unsafe impl Sync for ExLock {}

/// The lock every operation but the bugs uses.
static LOCK: ExLock = ExLock(UnsafeCell::new(0));
/// A lock for the bugs (they stop the machine, so it is never reused).
static BUG_LOCK: ExLock = ExLock(UnsafeCell::new(0));
/// The first of the two lock-order locks.
static ORDER_A: ExLock = ExLock(UnsafeCell::new(0));
/// The second of the two lock-order locks.
static ORDER_B: ExLock = ExLock(UnsafeCell::new(0));
/// Shared holders inside [`LOCK`] now, as the holders count themselves.
static HOLDERS: AtomicU64 = AtomicU64::new(0);
/// Acquisitions of [`LOCK`] by the tick operations so far.
static TURN: AtomicU64 = AtomicU64::new(0);
/// Set by [`OP_GO`] / [`OP_JOIN_SHARED`]; cleared by [`OP_HOLD_SHARED`].
static GO: AtomicBool = AtomicBool::new(false);

type Acquire = unsafe extern "system" fn(lock: *mut i32) -> u8;
type Release = unsafe extern "system" fn(lock: *mut i32, old_irql: u8);

/// The address `MmGetSystemRoutineAddress` gives for `name` (NUL-terminated UTF-16), 0 if
/// none.
fn resolve(name: &'static [u16]) -> usize {
    let mut s: UNICODE_STRING = unicode(name);
    // SAFETY: `s` is a valid UNICODE_STRING; dispatch runs at PASSIVE_LEVEL.
    unsafe { MmGetSystemRoutineAddress(&raw mut s) as usize }
}

/// The four routines, or `None` when the system lacks one.
fn routines() -> Option<(Acquire, Release, Acquire, Release)> {
    let a = [
        resolve(wide!("ExAcquireSpinLockShared")),
        resolve(wide!("ExReleaseSpinLockShared")),
        resolve(wide!("ExAcquireSpinLockExclusive")),
        resolve(wide!("ExReleaseSpinLockExclusive")),
    ];
    if a.contains(&0) {
        return None;
    }
    // SAFETY: each address is the export of exactly that name, whose documented prototype is
    // the type it is transmuted to (wdm.h).
    let acquire_shared = unsafe { core::mem::transmute::<usize, Acquire>(a[0]) };
    // SAFETY: as above.
    let release_shared = unsafe { core::mem::transmute::<usize, Release>(a[1]) };
    // SAFETY: as above.
    let acquire_exclusive = unsafe { core::mem::transmute::<usize, Acquire>(a[2]) };
    // SAFETY: as above.
    let release_exclusive = unsafe { core::mem::transmute::<usize, Release>(a[3]) };
    Some((
        acquire_shared,
        release_shared,
        acquire_exclusive,
        release_exclusive,
    ))
}

/// The current IRQL (`KeGetCurrentIrql`'s inline form).
fn irql() -> u64 {
    let v: u64;
    // SAFETY: reading cr8 has no side effect.
    unsafe { asm!("mov {}, cr8", out(reg) v) };
    v
}

/// The performance counter and its frequency (`KeQueryPerformanceCounter`, any IRQL).
fn counter() -> (u64, u64) {
    let mut frequency = LARGE_INTEGER::default();
    // SAFETY: `frequency` is a writable LARGE_INTEGER.
    let now = unsafe { KeQueryPerformanceCounter(&raw mut frequency) };
    // SAFETY: a LARGE_INTEGER's QuadPart is always a valid i64.
    let now = unsafe { now.QuadPart };
    // SAFETY: as above.
    let frequency = unsafe { frequency.QuadPart };
    (now.cast_unsigned(), frequency.cast_unsigned())
}

/// Runs operation `op`; the answer's four slots.
pub fn request(op: u64) -> [u64; 4] {
    let Some((acquire_shared, release_shared, acquire_exclusive, release_exclusive)) = routines()
    else {
        return [u64::MAX; 4];
    };
    let lock = LOCK.0.get();
    let bug = BUG_LOCK.0.get();
    let mut out = [0u64; 4];
    match op {
        OP_IRQL => {
            // SAFETY: LOCK is a zero-initialised EX_SPIN_LOCK this thread does not hold.
            let old = unsafe { acquire_shared(lock) };
            let during = irql();
            // SAFETY: held shared; `old` is what the acquire returned.
            unsafe { release_shared(lock, old) };
            let after = irql();
            // SAFETY: as above.
            let old_x = unsafe { acquire_exclusive(lock) };
            let during_x = irql();
            // SAFETY: held exclusive; `old_x` is what the acquire returned.
            unsafe { release_exclusive(lock, old_x) };
            let after_x = irql();
            // Packed: one byte per IRQL, shared in the low half.
            out[0] = u64::from(old) | during << 8 | after << 16;
            out[1] = u64::from(old_x) | during_x << 8 | after_x << 16;
            out[3] = lock as u64;
        }
        OP_HOLD_SHARED => {
            GO.store(false, SeqCst);
            // SAFETY: as in OP_IRQL.
            let old = unsafe { acquire_shared(lock) };
            HOLDERS.fetch_add(1, SeqCst);
            // About 2 s at most: a model where readers exclude each other then fails the
            // check instead of hanging.
            let (start, frequency) = counter();
            while !GO.load(SeqCst) && counter().0.wrapping_sub(start) < 2 * frequency {
                core::hint::spin_loop();
            }
            out[0] = u64::from(GO.load(SeqCst));
            HOLDERS.fetch_sub(1, SeqCst);
            // SAFETY: held shared; `old` is what the acquire returned.
            unsafe { release_shared(lock, old) };
        }
        OP_JOIN_SHARED => {
            // SAFETY: as in OP_IRQL.
            let old = unsafe { acquire_shared(lock) };
            out[0] = HOLDERS.load(SeqCst);
            GO.store(true, SeqCst);
            // SAFETY: held shared; `old` is what the acquire returned.
            unsafe { release_shared(lock, old) };
        }
        OP_EXCLUSIVE_TICK => {
            // SAFETY: as in OP_IRQL.
            let old = unsafe { acquire_exclusive(lock) };
            out[0] = TURN.fetch_add(1, SeqCst) + 1;
            // SAFETY: held exclusive; `old` is what the acquire returned.
            unsafe { release_exclusive(lock, old) };
        }
        OP_SHARED_TICK => {
            // SAFETY: as in OP_IRQL.
            let old = unsafe { acquire_shared(lock) };
            out[0] = TURN.fetch_add(1, SeqCst) + 1;
            // SAFETY: held shared; `old` is what the acquire returned.
            unsafe { release_shared(lock, old) };
        }
        OP_GO => GO.store(true, SeqCst),
        OP_BUG_HIGH_IRQL => {
            // SAFETY: KeRaiseIrql(3)'s inline form; the acquire below must stop the machine.
            unsafe { asm!("mov cr8, {}", in(reg) 3u64) };
            // SAFETY: the bug under test: IRQL above DISPATCH_LEVEL.
            let old = unsafe { acquire_shared(bug) };
            out[0] = u64::from(old);
        }
        OP_BUG_NOT_HELD => {
            // SAFETY: KeRaiseIrql(DISPATCH_LEVEL)'s inline form, as a release expects.
            unsafe { asm!("mov cr8, {}", in(reg) 2u64) };
            // SAFETY: the bug under test: nobody holds BUG_LOCK.
            unsafe { release_shared(bug, 0) };
        }
        OP_BUG_EXCLUSIVE_RELEASED_SHARED => {
            // SAFETY: BUG_LOCK is a zero-initialised EX_SPIN_LOCK this thread does not hold.
            let old = unsafe { acquire_exclusive(bug) };
            // SAFETY: the bug under test: an exclusive hold, the shared release.
            unsafe { release_shared(bug, old) };
        }
        OP_BUG_SHARED_RELEASED_EXCLUSIVE => {
            // SAFETY: as above.
            let old = unsafe { acquire_shared(bug) };
            // SAFETY: the bug under test: a shared hold, the exclusive release.
            unsafe { release_exclusive(bug, old) };
        }
        OP_BUG_UPGRADE => {
            // SAFETY: as above.
            let old = unsafe { acquire_shared(bug) };
            // SAFETY: the bug under test: exclusive while this thread holds it shared.
            let again = unsafe { acquire_exclusive(bug) };
            out[0] = u64::from(old) | u64::from(again) << 8;
        }
        OP_BUG_RECURSIVE_SHARED => {
            // SAFETY: as above.
            let old = unsafe { acquire_shared(bug) };
            // SAFETY: the bug under test: shared again while this thread holds it shared.
            let again = unsafe { acquire_shared(bug) };
            out[0] = u64::from(old) | u64::from(again) << 8;
        }
        OP_BUG_NOT_ZERO => {
            // SAFETY: nobody holds BUG_LOCK; the bug under test: a word that is not 0.
            unsafe { bug.write_volatile(0x4000_0001) };
            // SAFETY: the bug under test.
            let old = unsafe { acquire_exclusive(bug) };
            out[0] = u64::from(old);
        }
        OP_BUG_WRONG_OLD_IRQL => {
            // SAFETY: as above.
            let old = unsafe { acquire_exclusive(bug) };
            out[0] = u64::from(old);
            // SAFETY: the bug under test: OldIrql is not what the acquire returned.
            unsafe { release_exclusive(bug, 2) };
        }
        OP_BUG_HANDED_OVER => {
            // SAFETY: as in OP_IRQL: LOCK is a zero-initialised EX_SPIN_LOCK.
            let outer = unsafe { acquire_shared(lock) };
            // SAFETY: BUG_LOCK, not held by this thread, inside LOCK.
            let inner = unsafe { acquire_exclusive(bug) };
            // SAFETY: the bug under test: the outer released first, with the inner's IRQL.
            unsafe { release_shared(lock, inner) };
            // SAFETY: held exclusive; given the outer's IRQL.
            unsafe { release_exclusive(bug, outer) };
        }
        OP_ORDER_A_THEN_B | OP_ORDER_B_THEN_A => {
            let (first, second) = if op == OP_ORDER_A_THEN_B {
                (ORDER_A.0.get(), ORDER_B.0.get())
            } else {
                (ORDER_B.0.get(), ORDER_A.0.get())
            };
            // SAFETY: ORDER_A / ORDER_B are zero-initialised EX_SPIN_LOCKs this thread does
            // not hold.
            let outer = unsafe { acquire_exclusive(first) };
            // SAFETY: as above; taken inside `first`.
            let inner = unsafe { acquire_exclusive(second) };
            // SAFETY: held exclusive; `inner` is what its acquire returned (inner first).
            unsafe { release_exclusive(second, inner) };
            // SAFETY: held exclusive; `outer` is what its acquire returned.
            unsafe { release_exclusive(first, outer) };
            out[0] = 1;
            out[1] = first as u64;
            out[2] = second as u64;
        }
        _ => out = [u64::MAX; 4],
    }
    out
}
