//! The event stream (issue 17): the unload history read by sequence number, oldest first,
//! with the key-count alarms among it, and the count of events a reader missed.
//!
//! Every event takes a sequence number under the history's lock when it is stored, or when
//! it could not be (no memory): a reader after `after` that finds the oldest kept event
//! later than `after + 1` missed the difference, whether it was evicted or never stored, and
//! the page says so ([`protocol::events::EventsPrefix::missed`]).

use core::sync::atomic::Ordering::Relaxed;

use protocol::cursor::Cursor;
use protocol::events::{Events, EventsPrefix};
use protocol::history::{MAX_UNLOAD_HOLDERS, UnloadHolder, UnloadHolders, UnloadRecord};
use protocol::page::{PageInfo, empty_page_len};
use protocol::text::Text;

use crate::counters::{bump, get};
use crate::history::{HistEntry, HistHolder};
use crate::lock::RawLock;
use crate::names::name_of;
use crate::pool::Pool;
use crate::processes::ProcessKey;
use crate::queries::QueryError;
use crate::tracker::Tracker;

/// Most events one page carries (they are found newest first and written oldest first).
pub const MAX_EVENTS_PER_PAGE: usize = 64;

/// Runs `f` on the protocol record of history entry `e`.
fn with_record<R>(e: &HistEntry, f: impl FnOnce(&UnloadRecord<'_>) -> R) -> R {
    let mut holders = [UnloadHolder {
        pid: 0,
        start_key: 0,
        open_keys: 0,
        image: Text::EMPTY,
    }; MAX_UNLOAD_HOLDERS];
    let n = usize::from(e.n);
    for (dst, src) in holders.iter_mut().zip(&e.holders[..n]) {
        *dst = UnloadHolder {
            pid: src.pid,
            start_key: src.start_key,
            open_keys: src.open_keys,
            image: src
                .image
                .map_or(Text::EMPTY, |n| Text::Units(name_of(n).units())),
        };
    }
    let rec = UnloadRecord {
        time: e.time,
        outcome: e.outcome,
        hive_id: e.hive_id,
        open_keys: e.open_keys,
        holders_total: e.holders_total,
        flags: e.flags,
        sequence: e.sequence,
        interrupt_time: e.interrupt_time,
        mount: e
            .mount
            .map_or(Text::EMPTY, |m| Text::Units(name_of(m).units())),
        holders: UnloadHolders::Slice(&holders[..n]),
    };
    f(&rec)
}

/// The alarm level a process holding `count` keys has reached: 0 below `threshold`, 1 from
/// it, 2 from twice it, 3 from four times, …; always 0 when `threshold` is 0 (alarms off).
#[must_use]
pub const fn alarm_level(count: u64, threshold: u64) -> u32 {
    if threshold == 0 || count < threshold {
        return 0;
    }
    (count / threshold).ilog2() + 1
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// True when an event after sequence number `after` exists (stored or missed).
    pub fn events_after(&self, after: u64) -> bool {
        // A number beyond the newest is from a previous run of the driver (numbers start
        // at 1 again): answered at once, from the start.
        self.history.last_sequence() != after
    }

    /// Writes the events after sequence number `after` (at most `max_records`, 0: as many as
    /// fit and [`MAX_EVENTS_PER_PAGE`]) into `out` as an [`Events`] page, oldest first. The
    /// page's next cursor holds the sequence number to ask after next; it is marked done when
    /// nothing after it is left. `missed` counts the numbers up to that one the page does not
    /// deliver (evicted, or never stored).
    ///
    /// # Errors
    /// [`QueryError::BufferTooSmall`] when not even the first event fits.
    pub fn events(
        &self,
        after: u64,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let limit = match max_records {
            0 => MAX_EVENTS_PER_PAGE,
            n => (n as usize).min(MAX_EVENTS_PER_PAGE),
        };
        let since = get(&self.counters.tracking_since);
        let threshold = self.config.key_alarm_threshold;
        let not_recorded = self.stats().not_recorded();
        self.history.with_newest(|newest| {
            // Numbers are taken under this lock when an event is stored: any number up to
            // this one that is not in the list now was never stored.
            let newest_numbered = self.history.last_sequence();
            // A reader's number from a previous run of the driver (beyond the newest): it
            // reads from the start, and the new `tracking_since` tells it why.
            let after = if after > newest_numbered { 0 } else { after };
            // The newest first: keep the `limit` oldest of those after `after`.
            let mut found: [Option<&HistEntry>; MAX_EVENTS_PER_PAGE] = [None; MAX_EVENTS_PER_PAGE];
            let mut seen = 0usize;
            let mut cur = newest;
            while let Some(e) = cur.filter(|e| e.sequence > after) {
                found[seen % limit] = Some(e);
                seen += 1;
                cur = core::ptr::NonNull::new(e.next.load(Relaxed)).map(|n| {
                    // SAFETY: linked entries live while the history's lock is held.
                    unsafe { n.as_ref() }
                });
            }
            let taken = seen.min(limit);
            // `order(0)` is the oldest taken (the last one written into the ring), then later.
            let order = |i: usize| found[(seen - 1 - i) % limit].filter(|_| i < taken);
            // How many fit the buffer (sizes first: the prefix, written first, depends on it).
            let prefix_for = |missed| EventsPrefix {
                missed,
                tracking_since: since,
                key_alarm_threshold: threshold,
                held_after_seconds: self.config.held_after_seconds,
            };
            let mut room = out
                .len()
                .saturating_sub(empty_page_len::<Events>(&prefix_for(0)));
            let mut fit = 0;
            while fit < taken {
                let Some(e) = order(fit) else { break };
                let len = with_record(e, |r| protocol::page::Codec::encoded_len(r));
                if len > room {
                    if fit == 0 {
                        return Err(QueryError::BufferTooSmall {
                            needed: len + empty_page_len::<Events>(&prefix_for(0)),
                        });
                    }
                    break;
                }
                room -= len;
                fit += 1;
            }
            // The last number this page accounts for: its last event's, or every number
            // numbered so far when it delivers all that is left.
            let next = if fit < seen {
                order(fit - 1).map_or(after, |e| e.sequence)
            } else {
                newest_numbered.max(after)
            };
            let missed = next.saturating_sub(after).saturating_sub(fit as u64);
            let prefix = prefix_for(missed);
            let mut w = Self::start_page::<Events>(out, &prefix, 0)?;
            for i in 0..fit {
                if let Some(e) = order(i) {
                    let pushed = with_record(e, |r| w.push(r));
                    debug_assert!(pushed, "sized above");
                }
            }
            let info = PageInfo {
                next: Cursor([next, 0, 0, 0, 0]),
                flags: if next >= newest_numbered {
                    PageInfo::DONE
                } else {
                    0
                },
                not_recorded,
            };
            Ok(w.finish(&info))
        })
    }

    /// `process` now holds `count` keys, an alarm level: records a key-count alarm (an event
    /// naming the process, with its image).
    #[cold]
    #[inline(never)]
    pub(crate) fn key_alarm(&self, process: ProcessKey, count: u64, time: u64) {
        let image = self
            .processes
            .with(process, |p| {
                let image = p.image();
                if let Some(i) = image {
                    self.names.add_ref(i);
                }
                image
            })
            .flatten();
        let mut entry = HistEntry::new(time, 0, UnloadRecord::KEY_ALARM);
        entry.open_keys = count;
        entry.holders_total = 1;
        entry.n = 1;
        entry.holders[0] = HistHolder {
            pid: process.pid,
            start_key: process.start_key,
            open_keys: count,
            image,
        };
        bump(&self.counters.key_alarms);
        let _ = self.record_event(&entry);
    }
}
