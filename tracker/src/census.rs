//! A consistency check of the whole structure, for tests and debug builds.
//!
//! Every count the tracker keeps in O(1) is recomputed from the lists it summarises. Call it
//! only while no event runs (it takes every lock in turn, but compares totals across them).

use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

use crate::lock::RawLock;
use crate::objects::LIVE;
use crate::pool::Pool;
use crate::processes::holding_of;
use crate::tracker::Tracker;

/// What the check counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Live object records in the slab.
    pub objects: u64,
    /// Keys linked into holdings.
    pub linked: u64,
    /// Holdings.
    pub holdings: u64,
    /// Processes.
    pub processes: u64,
    /// Hives.
    pub hives: u64,
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// Recomputes every summary count from the lists and checks them. Quiescent only (no
    /// event running): a record being ended is `DYING` while still linked, and one being
    /// given its stack is `RESERVED` (`crate::objects`: slots are not guarded by a lock).
    ///
    /// # Errors
    /// A description of the first inconsistency found.
    pub fn check_consistency(&self) -> Result<Census, &'static str> {
        let mut c = Census::default();
        for shard in &self.objects {
            let mut i = 0;
            let mut live = 0u64;
            while let Some(rec) = shard.get(i) {
                if rec.state() == LIVE {
                    live += 1;
                }
                i += 1;
            }
            if live != u64::from(shard.live.load(Relaxed)) {
                return Err("shard live count differs from its LIVE records");
            }
            c.objects += live;
        }
        let mut err = None;
        self.processes.for_each(|p| {
            c.processes += 1;
            let mut sum = 0;
            let mut n = 0u32;
            let mut cur = p.holdings.load(Relaxed);
            let mut last_hive = 0;
            while let Some(h) = NonNull::new(cur) {
                let hold = holding_of(h);
                n += 1;
                if hold.hive_id() <= last_hive {
                    err = Some("holdings not sorted by hive id");
                }
                last_hive = hold.hive_id();
                if hold.process.as_ptr().cast_const() != core::ptr::from_ref(p) {
                    err = Some("holding points at another process");
                }
                let mut r = hold.head.load();
                let mut prev = crate::links::RecLink::NONE;
                let mut len = 0u64;
                let mut last = (0u64, 0u32);
                while let Some(rec) = self.at(r) {
                    if rec.state() != LIVE || rec.holding.load(Relaxed) != h.as_ptr().cast() {
                        err = Some("linked record not live or in another holding");
                    }
                    if rec.prev.load() != prev {
                        err = Some("broken prev link");
                    }
                    let pos = (rec.time.load(Relaxed), rec.seq.load(Relaxed));
                    if len > 0 && pos < last {
                        err = Some("keys not in (time, sequence) order");
                    }
                    last = pos;
                    len += 1;
                    prev = r;
                    r = rec.next.load();
                }
                if hold.tail.load() != prev {
                    err = Some("broken tail");
                }
                if len != u64::from(hold.count.load(Relaxed)) || len == 0 {
                    err = Some("holding count differs from its list (or is empty)");
                }
                sum += len;
                c.holdings += 1;
                cur = hold.next.load(Relaxed);
            }
            if sum != p.open_keys.load(Relaxed) || n != p.nholdings.load(Relaxed) {
                err = Some("process counts differ from its holdings");
            }
            c.linked += sum;
        });
        if let Some(e) = err {
            return Err(e);
        }
        if c.linked != c.objects {
            return Err("live records and linked keys differ");
        }
        if c.holdings != self.counters.holdings.load(Relaxed) {
            return Err("holding gauge differs");
        }
        let mut hive_err = None;
        self.hives.for_each(|hive| {
            c.hives += 1;
            let (mut keys, mut holders) = (0u64, 0u32);
            // Hive shard lock held shared; process locks come after it in the lock order.
            self.processes.for_each(|p| {
                if let Some(h) = p.holding(hive.id) {
                    holders += 1;
                    keys += u64::from(holding_of(h).count.load(Relaxed));
                }
            });
            if keys != hive.open_keys.load(Relaxed) || holders != hive.holders.load(Relaxed) {
                hive_err = Some("hive counts differ from the holdings in it");
            }
        });
        if let Some(e) = hive_err {
            return Err(e);
        }
        if c.hives != self.hives.count() || c.processes != self.processes.count() {
            return Err("table gauges differ");
        }
        Ok(c)
    }
}
