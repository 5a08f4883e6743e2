//! Test support: an accounting pool that can fail allocations on purpose, a parking lock,
//! helpers to drain paged queries, and UTF-16 helpers.
#![allow(
    dead_code,
    missing_docs,
    clippy::missing_panics_doc,
    clippy::significant_drop_in_scrutinee,
    clippy::semicolon_if_nothing_returned,
    clippy::doc_markdown,
    clippy::missing_const_for_fn,
    reason = "test support; each test binary uses a subset"
)]

use std::alloc::{Layout, alloc, dealloc};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::lock_api::RawRwLock as _;
use protocol::cursor::Cursor;
use protocol::page::{Page, PageKind};
use tracker::{BLOCK_ALIGN, BlockClass, Pool, RawLock, Tracker};

/// How allocations fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Never,
    /// Only the k-th allocation (1-based) fails.
    Kth(u64),
    /// The k-th and every later allocation fail.
    FromK(u64),
    /// Each allocation fails with probability `per_million` / 1e6, decided by a seeded hash
    /// of its ordinal.
    Random {
        per_million: u64,
        seed: u64,
    },
}

/// An accounting pool over the system allocator: counts outstanding blocks and bytes per
/// class, catches double frees and class mismatches, fails on demand.
pub struct CountingPool {
    // Failure mode packed in atomics so that hot allocation paths take no lock: kind, a, b.
    mode: [AtomicU64; 3],
    calls: AtomicU64,
    failed: AtomicU64,
    outstanding: [AtomicU64; 7],
    track: bool,
    live: Mutex<HashMap<usize, BlockClass>>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl CountingPool {
    /// `track` keeps every live block in a map to catch double frees (slower).
    pub fn new(failure: Failure, track: bool) -> Self {
        Self {
            mode: Self::pack(failure),
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            outstanding: Default::default(),
            track,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn pack(f: Failure) -> [AtomicU64; 3] {
        let (k, a, b) = match f {
            Failure::Never => (0, 0, 0),
            Failure::Kth(k) => (1, k, 0),
            Failure::FromK(k) => (2, k, 0),
            Failure::Random { per_million, seed } => (3, per_million, seed),
        };
        [AtomicU64::new(k), AtomicU64::new(a), AtomicU64::new(b)]
    }

    fn failure(&self) -> Failure {
        let a = self.mode[1].load(Relaxed);
        let b = self.mode[2].load(Relaxed);
        match self.mode[0].load(Relaxed) {
            1 => Failure::Kth(a),
            2 => Failure::FromK(a),
            3 => Failure::Random {
                per_million: a,
                seed: b,
            },
            _ => Failure::Never,
        }
    }

    /// Changes the failure mode (while nothing allocates).
    pub fn set_failure(&self, f: Failure) {
        for (dst, src) in self.mode.iter().zip(Self::pack(f)) {
            dst.store(src.into_inner(), Relaxed);
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Relaxed)
    }

    pub fn outstanding_blocks(&self) -> u64 {
        self.outstanding.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn outstanding_bytes(&self) -> u64 {
        BlockClass::ALL
            .iter()
            .map(|c| self.outstanding[c.index()].load(Relaxed) * c.size() as u64)
            .sum()
    }

    pub fn outstanding_of(&self, c: BlockClass) -> u64 {
        self.outstanding[c.index()].load(Relaxed)
    }
}

// SAFETY: blocks come from the system allocator with the class size and 16-byte alignment
// and are handed out once; `free` gives them back with the same layout.
unsafe impl Pool for CountingPool {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        let n = self.calls.fetch_add(1, Relaxed) + 1;
        let fail = match self.failure() {
            Failure::Never => false,
            Failure::Kth(k) => n == k,
            Failure::FromK(k) => n >= k,
            Failure::Random { per_million, seed } => splitmix(seed ^ n) % 1_000_000 < per_million,
        };
        if fail {
            self.failed.fetch_add(1, Relaxed);
            return None;
        }
        let layout = Layout::from_size_align(class.size(), BLOCK_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let p = NonNull::new(unsafe { alloc(layout) })?;
        // Garbage, as a lookaside list would give.
        // SAFETY: the block is class.size() bytes.
        unsafe { p.as_ptr().write_bytes(0xCD, class.size()) };
        self.outstanding[class.index()].fetch_add(1, Relaxed);
        if self.track {
            assert!(
                self.live
                    .lock()
                    .unwrap()
                    .insert(p.as_ptr() as usize, class)
                    .is_none()
            );
        }
        Some(p)
    }

    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        if self.track {
            let was = self.live.lock().unwrap().remove(&(block.as_ptr() as usize));
            assert_eq!(was, Some(class), "double free or class mismatch");
        }
        let prev = self.outstanding[class.index()].fetch_sub(1, Relaxed);
        assert!(prev > 0, "free without alloc");
        // SAFETY: poison, then give back with the layout it was allocated with.
        unsafe { block.as_ptr().write_bytes(0xDD, class.size()) };
        // SAFETY: allocated in `alloc` with this layout.
        unsafe {
            dealloc(
                block.as_ptr(),
                Layout::from_size_align(class.size(), BLOCK_ALIGN).unwrap(),
            )
        };
    }
}

/// A fast pool for benchmarks: the system allocator with outstanding counters only.
#[derive(Default)]
pub struct SysPool {
    outstanding: [AtomicU64; 7],
}

impl SysPool {
    pub fn outstanding_bytes(&self) -> u64 {
        BlockClass::ALL
            .iter()
            .map(|c| self.outstanding[c.index()].load(Relaxed) * c.size() as u64)
            .sum()
    }
    pub fn outstanding_of(&self, c: BlockClass) -> u64 {
        self.outstanding[c.index()].load(Relaxed)
    }
}

// SAFETY: as for CountingPool.
unsafe impl Pool for SysPool {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        self.outstanding[class.index()].fetch_add(1, Relaxed);
        // SAFETY: non-zero size.
        NonNull::new(unsafe { alloc(Layout::from_size_align(class.size(), BLOCK_ALIGN).unwrap()) })
    }
    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        self.outstanding[class.index()].fetch_sub(1, Relaxed);
        // SAFETY: allocated in `alloc` with this layout.
        unsafe {
            dealloc(
                block.as_ptr(),
                Layout::from_size_align(class.size(), BLOCK_ALIGN).unwrap(),
            )
        };
    }
}

/// A lock over parking_lot's reader-writer lock (spins briefly, then parks).
pub struct ParkingLock(parking_lot::RawRwLock);

// SAFETY: parking_lot's RawRwLock is a correct reader-writer lock with acquire/release
// semantics.
unsafe impl RawLock for ParkingLock {
    fn new() -> Self {
        Self(parking_lot::RawRwLock::INIT)
    }
    fn lock_exclusive(&self) {
        self.0.lock_exclusive();
    }
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: the caller holds it exclusively.
        unsafe { self.0.unlock_exclusive() }
    }
    type SharedToken = ();
    fn lock_shared(&self) {
        self.0.lock_shared();
    }
    unsafe fn unlock_shared(&self, (): ()) {
        // SAFETY: the caller holds it shared.
        unsafe { self.0.unlock_shared() }
    }
}

std::thread_local! {
    static ACQUIRED: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    static LOG: core::cell::RefCell<Option<Vec<(usize, bool)>>> =
        const { core::cell::RefCell::new(None) };
}

/// A [`ParkingLock`] that counts the acquisitions (exclusive and shared) made by the
/// current thread: what the driver pays as spin-lock round trips (issue 14).
pub struct CountingLock(ParkingLock);

impl CountingLock {
    /// Acquisitions made by this thread so far.
    pub fn acquired() -> u64 {
        ACQUIRED.with(core::cell::Cell::get)
    }
    /// Runs `f` and returns, with its result, every lock this thread took meanwhile: its
    /// address and whether the hold was exclusive, in order.
    pub fn logged<R>(f: impl FnOnce() -> R) -> (R, Vec<(usize, bool)>) {
        LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
        let r = f();
        (r, LOG.with(|l| l.borrow_mut().take().unwrap_or_default()))
    }
    fn count(&self, exclusive: bool) {
        ACQUIRED.with(|c| c.set(c.get() + 1));
        let at = core::ptr::from_ref(self) as usize;
        LOG.with(|l| {
            if let Some(v) = l.borrow_mut().as_mut() {
                v.push((at, exclusive));
            }
        });
    }
}

// SAFETY: a ParkingLock, counted.
unsafe impl RawLock for CountingLock {
    fn new() -> Self {
        Self(ParkingLock::new())
    }
    fn lock_exclusive(&self) {
        self.count(true);
        self.0.lock_exclusive();
    }
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: the caller holds it exclusively.
        unsafe { self.0.unlock_exclusive() }
    }
    type SharedToken = ();
    fn lock_shared(&self) {
        self.count(false);
        self.0.lock_shared();
    }
    unsafe fn unlock_shared(&self, (): ()) {
        // SAFETY: the caller holds it shared.
        unsafe { self.0.unlock_shared(()) }
    }
}

pub fn w(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

pub fn fold(s: &[u16]) -> String {
    String::from_utf16_lossy(
        &s.iter()
            .map(|&u| protocol::text::fold_unit(u))
            .collect::<Vec<_>>(),
    )
}

pub fn fold_text(t: &protocol::text::Text<'_>) -> String {
    fold(&t.units().collect::<Vec<_>>())
}

/// Runs a paged query to the end with pages of `buf_len` bytes (and at most `max_records`
/// records each), calling `each` on every decoded page.
pub fn drain<K: PageKind>(
    buf_len: usize,
    mut page: impl FnMut(&Cursor, &mut [u8]) -> Result<usize, tracker::QueryError>,
    mut each: impl FnMut(&Page<'_, K>),
) -> usize {
    let mut cursor = Cursor::START;
    let mut buf = vec![0u8; buf_len];
    let mut pages = 0;
    loop {
        let n = match page(&cursor, &mut buf) {
            Ok(n) => n,
            Err(tracker::QueryError::BufferTooSmall { needed }) => {
                // What a client does: retry this page with the size the tracker asked for.
                assert!(
                    needed > buf.len(),
                    "asked for {needed} with {} given",
                    buf.len()
                );
                let mut big = vec![0u8; needed];
                let n = page(&cursor, &mut big).expect("query failed with the size asked for");
                buf = big;
                n
            }
            Err(e) => panic!("query failed: {e:?}"),
        };
        let p = protocol::wire::decode::<Page<'_, K>>(&buf[..n]).expect("page does not decode");
        each(&p);
        pages += 1;
        assert!(pages < 10_000_000, "paging does not end");
        if p.info.done() {
            return pages;
        }
        cursor = p.info.next;
    }
}

pub type TestTracker<'a> = Tracker<&'a CountingPool, ParkingLock>;

/// Two processes the behaviour tests open keys in.
pub const P1: tracker::ProcessKey = tracker::ProcessKey {
    pid: 100,
    start_key: 1,
};
/// The second one.
pub const P2: tracker::ProcessKey = tracker::ProcessKey {
    pid: 200,
    start_key: 2,
};

/// [`Tracker::identify`] for `objects`, answers in their order (one request, whatever its
/// length: the driver caps a request at `protocol::identify::MAX_IDENTIFY`).
#[allow(dead_code, reason = "not every test binary identifies")]
pub fn identify<P: Pool, L: RawLock>(
    t: &Tracker<P, L>,
    objects: &[u64],
) -> Vec<Option<tracker::Token>> {
    let mut wanted: Vec<tracker::Wanted> = objects
        .iter()
        .enumerate()
        .map(|(i, &object)| tracker::Wanted {
            object,
            index: u32::try_from(i).unwrap(),
            found: None,
        })
        .collect();
    t.identify(&mut wanted);
    let mut out = vec![None; objects.len()];
    for w in &wanted {
        out[w.index as usize] = w.found;
    }
    out
}

/// A xorshift64 generator: the concurrency tests' deterministic choices per thread.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub const fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

std::thread_local! {
    static HELD: core::cell::RefCell<Vec<usize>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Every (held, acquired) pair of lock addresses seen by [`OrderLock`]s, over all threads:
/// Driver Verifier's Deadlock Detection graph (Learn, devtest "Deadlock Detection": "builds a
/// graph of resource acquisition order and checks for loops").
static EDGES: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// A [`ParkingLock`] that records the lock-order graph ([`OrderLock::cycle`]).
pub struct OrderLock(ParkingLock);

impl OrderLock {
    fn before(&self) {
        let at = core::ptr::from_ref(self) as usize;
        HELD.with(|h| {
            let h = h.borrow();
            let mut e = EDGES.lock().unwrap();
            for &x in h.iter().filter(|&&x| x != at) {
                e.push((x, at));
            }
        });
    }
    fn after(&self) {
        HELD.with(|h| h.borrow_mut().push(core::ptr::from_ref(self) as usize));
    }
    fn released(&self) {
        let at = core::ptr::from_ref(self) as usize;
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&x| x == at) {
                h.remove(i);
            }
        });
    }
    /// Forgets the graph.
    pub fn reset() {
        EDGES.lock().unwrap().clear();
    }
    /// A loop in the graph (its locks), if any.
    pub fn cycle() -> Option<Vec<usize>> {
        let e = EDGES.lock().unwrap().clone();
        let nodes: std::collections::BTreeSet<usize> =
            e.iter().flat_map(|&e| <[usize; 2]>::from(e)).collect();
        for &start in &nodes {
            let mut stack = vec![vec![start]];
            let mut seen = std::collections::BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = *path.last().unwrap();
                for &(_, b) in e.iter().filter(|&&(a, _)| a == last) {
                    if b == start {
                        return Some(path);
                    }
                    if seen.insert(b) {
                        let mut p = path.clone();
                        p.push(b);
                        stack.push(p);
                    }
                }
            }
        }
        None
    }
}

// SAFETY: a ParkingLock, with its order recorded.
unsafe impl RawLock for OrderLock {
    fn new() -> Self {
        Self(ParkingLock::new())
    }
    fn lock_exclusive(&self) {
        self.before();
        self.0.lock_exclusive();
        self.after();
    }
    unsafe fn unlock_exclusive(&self) {
        self.released();
        // SAFETY: the caller holds it exclusively.
        unsafe { self.0.unlock_exclusive() }
    }
    type SharedToken = ();
    fn lock_shared(&self) {
        self.before();
        self.0.lock_shared();
        self.after();
    }
    unsafe fn unlock_shared(&self, (): ()) {
        self.released();
        // SAFETY: the caller holds it shared.
        unsafe { self.0.unlock_shared(()) }
    }
}
