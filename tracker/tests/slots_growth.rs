//! Object slots without a lock (issue 14), found in a second review: a taker whose shard
//! growth fails (no memory) lowers the count as a release does, so it must look for the
//! "full" bit too; otherwise a taker refused while the failing one held the count at the cap
//! leaves the shard marked full with room (opens spilling into it refused at the cap).

mod support;

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use support::*;
use tracker::{BlockClass, Config, NotTracked, Pool, ProcessKey, Token, Tracker};

const MOUNT: &str = r"\REGISTRY\USER\S-1-5-21-9";

fn name(i: u64) -> Vec<u16> {
    w(&format!(r"{MOUNT}\Software\K{i}"))
}

const fn shard_of(t: Token) -> u64 {
    (t.0 & 0xFFFF_FFFF) >> 26
}

std::thread_local! {
    /// This thread's next allocation waits for the gate, then fails.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// A pool whose armed thread's next allocation parks until released, then fails.
struct GatePool {
    inner: CountingPool,
    /// 0 idle, 1 an armed allocation is waiting, 2 released.
    gate: AtomicU32,
}

// SAFETY: delegates to CountingPool.
unsafe impl Pool for GatePool {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        if ARMED.with(Cell::get) {
            ARMED.with(|a| a.set(false));
            self.gate.store(1, SeqCst);
            while self.gate.load(SeqCst) != 2 {
                std::hint::spin_loop();
            }
            return None;
        }
        self.inner.alloc(class)
    }
    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        // SAFETY: from inner.alloc.
        unsafe { self.inner.free(class, block) }
    }
}

fn process_preferring(want: u64) -> ProcessKey {
    let pool = CountingPool::new(Failure::Never, false);
    let t: TestTracker<'_> = Tracker::new(
        &pool,
        Config {
            object_shards: 2,
            max_objects: 1000,
            ..Config::default()
        },
    )
    .unwrap();
    for pid in 1..1000u64 {
        let p = ProcessKey {
            pid: pid * 4,
            start_key: 1,
        };
        let tok = t.opened(0x10, p, 1, &name(0), 1, 1).unwrap();
        t.object_destroyed(tok, 0x10);
        if shard_of(tok) == want {
            return p;
        }
    }
    unreachable!()
}

#[test]
fn a_failed_growth_never_leaves_its_shard_marked_full_with_room() {
    let pa = process_preferring(0);
    let pb = process_preferring(1);
    let pool = GatePool {
        inner: CountingPool::new(Failure::Never, false),
        gate: AtomicU32::new(0),
    };
    // 52 slots a shard: one chunk (51 records) and one record of a second chunk.
    let per_shard = 52u32;
    let t: Tracker<&GatePool, ParkingLock> = Tracker::new(
        &pool,
        Config {
            object_shards: 2,
            max_objects: 2 * per_shard,
            ..Config::default()
        },
    )
    .unwrap();
    t.hive_loaded(&w(MOUNT), &w(r"C:\x.dat"), 0);
    let mut held = Vec::new();
    // Shard 0 full; shard 1 holds its first chunk's 51 records (room for one more).
    for i in 0..u64::from(per_shard) {
        let obj = 0x1000 + i * 16;
        let tok = t.opened(obj, pa, 1, &name(1), 1, 1).unwrap();
        assert_eq!(shard_of(tok), 0);
        held.push((tok, obj));
    }
    for i in 0..u64::from(per_shard - 1) {
        let obj = 0x10_0000 + i * 16;
        let tok = t.opened(obj, pb, 1, &name(2), 1, 1).unwrap();
        assert_eq!(shard_of(tok), 1);
        held.push((tok, obj));
    }
    std::thread::scope(|s| {
        // G: B's open counts shard 1's last slot, then its new chunk waits, then fails.
        let g = s.spawn(|| {
            ARMED.with(|a| a.set(true));
            t.opened(0x20_0000, pb, 2, &name(2), 1, 2)
        });
        while pool.gate.load(SeqCst) != 1 {
            std::hint::spin_loop();
        }
        // A spills from full shard 0 into shard 1, finds it at the cap (G's count): refused,
        // and shard 1 marked full.
        assert_eq!(
            t.opened(0x30_0000, pa, 3, &name(1), 1, 3),
            Err(NotTracked::Cap)
        );
        pool.gate.store(2, SeqCst);
        assert_eq!(g.join().unwrap(), Err(NotTracked::NoMemory));
    });
    // Memory is back; shard 1 has a slot free (51 of 52). A's open spills there.
    let tracked = t.stats().objects_tracked;
    assert_eq!(tracked, u64::from(2 * per_shard - 1));
    let r = t.opened(0x40_0000, pa, 4, &name(1), 1, 4);
    assert!(
        r.is_ok(),
        "refused at the cap ({r:?}) with {tracked} of {} tracked: shard 1 left marked full \
         by a refusal during a failed growth",
        2 * per_shard
    );
    if let Ok(tok) = r {
        t.object_destroyed(tok, 0x40_0000);
    }
    for (tok, obj) in held {
        t.object_destroyed(tok, obj);
    }
}
