//! Test support: a scripted driver event stream (`IOCTL_HIVETRACK_WAIT_EVENTS`).
//!
//! [`EventQueue`] keeps records as the driver's bounded history does (sequence numbers from
//! 1, the oldest dropped past its capacity and counted as missed by a caller that asked
//! after them, a restart as a new tracking start with sequence numbers from 1 again) and
//! answers the request exactly as the protocol says: records after `after`, oldest first,
//! as many as fit, or after the timeout an empty page. Time passing while a request waits is
//! scripted as [`Step`]s, applied one by one while a request with a timeout finds nothing;
//! the waited time is added to a shared test clock ([`SharedClock`]). A record's flags are
//! kept as given: a hive still held after a failed unload ([`UnloadRecord::HELD_AFTER`]),
//! holders the driver could not all see ([`UnloadRecord::HOLDERS_UNSEEN`]); the prefix's
//! held-after delay is [`EventQueue::held_after_seconds`]. Used by the
//! [`crate::scripted::Scripted`] transport and `tests/events.rs`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use protocol::cursor::Cursor;
use protocol::events::{Events, EventsPrefix, EventsRequest};
use protocol::history::{UnloadHolder, UnloadHolders, UnloadRecord};
use protocol::page::{PageInfo, PageWriter};
use protocol::text::Text;
use protocol::wire;

use crate::event_stream::StreamRecord;
use crate::page_server::encode_codec;
use crate::transport::{ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_PARAMETER, TransportError};
use crate::wait::Clock;

/// What happens while a request waits and nothing is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A record is added (its sequence number is assigned then).
    Record(StreamRecord),
    /// The driver restarted: tracking since this FILETIME, its history empty, sequence
    /// numbers from 1.
    Restart(u64),
    /// The driver stops: this many connections fail before it is back.
    Stop(u32),
    /// A wait runs its course with nothing (the driver's look found the hive free, or
    /// nothing happened): the clock moves by the wait's timeout.
    Idle,
}

/// A clock the tests advance: the scripted driver adds each wait's timeout, the service's
/// sleeps add themselves.
#[derive(Clone, Debug, Default)]
pub struct SharedClock(pub Rc<Cell<Duration>>);

impl Clock for SharedClock {
    fn elapsed(&self) -> Duration {
        self.0.get()
    }
    fn sleep(&mut self, d: Duration) {
        self.0.set(self.0.get() + d);
    }
}

/// The driver's event history, scripted.
#[derive(Debug)]
pub struct EventQueue {
    /// Kept records: sequence number and encoded [`UnloadRecord`].
    kept: VecDeque<(u64, Vec<u8>)>,
    /// Most records kept; older ones are dropped.
    pub capacity: usize,
    next_sequence: u64,
    /// When the driver's tracking started.
    pub tracking_since: u64,
    /// The key-count alarm threshold reported.
    pub key_alarm_threshold: u64,
    /// The held-after delay reported (seconds; 0: the driver does not look again after a
    /// failed unload, as an older driver). Records with [`UnloadRecord::HELD_AFTER`] are
    /// scripted like any other ([`Step::Record`], [`EventQueue::push`]).
    pub held_after_seconds: u64,
    /// What happens while requests wait.
    pub steps: VecDeque<Step>,
    /// Connections to refuse before the driver is back ([`Step::Stop`]).
    pub refuse_connects: u32,
    /// The clock waits advance.
    pub clock: SharedClock,
    /// Every request: `(after, timeout_ms)`.
    pub requests: Vec<(u64, u32)>,
    /// Answer a wait with nothing at once instead of after its timeout (a misbehaving
    /// driver).
    pub answers_early: bool,
}

/// A queue shared by the scripted transports of several connections.
pub type SharedQueue = Rc<RefCell<EventQueue>>;

impl EventQueue {
    /// An empty history of a driver tracking since `tracking_since`, keeping `capacity`
    /// records.
    #[must_use]
    pub fn new(tracking_since: u64, capacity: usize) -> Self {
        Self {
            kept: VecDeque::new(),
            capacity,
            next_sequence: 1,
            tracking_since,
            key_alarm_threshold: 0,
            held_after_seconds: 0,
            steps: VecDeque::new(),
            refuse_connects: 0,
            clock: SharedClock::default(),
            requests: Vec::new(),
            answers_early: false,
        }
    }

    /// The same, shared.
    #[must_use]
    pub fn shared(self) -> SharedQueue {
        Rc::new(RefCell::new(self))
    }

    /// Adds `rec` now with the next sequence number (its own is ignored); returns that
    /// number.
    pub fn push(&mut self, rec: &StreamRecord) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let mount: Vec<u16> = rec.mount.encode_utf16().collect();
        let images: Vec<Vec<u16>> = rec
            .holders
            .iter()
            .map(|h| h.image.as_deref().unwrap_or("").encode_utf16().collect())
            .collect();
        let holders: Vec<UnloadHolder<'_>> = rec
            .holders
            .iter()
            .zip(&images)
            .map(|(h, image)| UnloadHolder {
                pid: h.pid,
                start_key: h.start_key,
                open_keys: h.open_keys,
                image: Text::Units(image),
            })
            .collect();
        let bytes = encode_codec(&UnloadRecord {
            time: rec.time,
            outcome: rec.outcome,
            hive_id: rec.hive_id,
            open_keys: rec.open_keys,
            holders_total: rec.holders_total,
            flags: rec.flags,
            sequence,
            interrupt_time: rec.interrupt_time,
            mount: Text::Units(&mount),
            holders: UnloadHolders::Slice(&holders),
        });
        self.kept.push_back((sequence, bytes));
        while self.kept.len() > self.capacity {
            self.kept.pop_front();
        }
        sequence
    }

    /// A number taken for an event that was never stored (the driver's `skip_sequence`:
    /// a full held-after watch table, or no memory for a record). Audit 22b repro.
    pub const fn skip(&mut self) {
        self.next_sequence += 1;
    }

    /// The driver restarted.
    pub fn restart(&mut self, tracking_since: u64) {
        self.kept.clear();
        self.next_sequence = 1;
        self.tracking_since = tracking_since;
    }

    /// Whether a connection may be made now (counts a refused one down).
    pub const fn take_connect(&mut self) -> bool {
        if self.refuse_connects > 0 {
            self.refuse_connects -= 1;
            false
        } else {
            true
        }
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Record(r) => {
                self.push(&r);
            }
            Step::Restart(since) => self.restart(since),
            Step::Stop(n) => self.refuse_connects += n,
            Step::Idle => {}
        }
    }

    /// The newest number taken (0 before the first).
    const fn newest_numbered(&self) -> u64 {
        self.next_sequence - 1
    }

    /// Answers `IOCTL_HIVETRACK_WAIT_EVENTS` with `input` into `out`, as the driver would.
    ///
    /// # Errors
    /// `ERROR_INVALID_PARAMETER` for a malformed request, `ERROR_INSUFFICIENT_BUFFER` when
    /// not even one record fits.
    pub fn answer(&mut self, input: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        let req = wire::decode::<EventsRequest>(input).map_err(|_| TransportError::Request {
            code: ERROR_INVALID_PARAMETER,
        })?;
        self.requests.push((req.after, req.timeout_ms));
        let stopped = |q: &Self| q.refuse_connects > 0;
        // As the driver (`tracker/src/events.rs` `events_after`): a wait ends at once when
        // any number was taken after `after`, stored or not (a number never stored is an
        // event missed), or when `after` is from another start (beyond the newest).
        while req.timeout_ms != 0 && !stopped(self) && self.newest_numbered() == req.after {
            let Some(step) = self.steps.pop_front() else {
                break;
            };
            if step == Step::Idle {
                break;
            }
            self.apply(step);
        }
        let small = || TransportError::Request {
            code: ERROR_INSUFFICIENT_BUFFER,
        };
        let newest = self.newest_numbered();
        // A cursor from a previous start (beyond the newest) reads from the start.
        let after = if req.after > newest { 0 } else { req.after };
        let pending: Vec<&(u64, Vec<u8>)> = self.kept.iter().filter(|(s, _)| *s > after).collect();
        let limit = match req.max_records {
            0 => usize::MAX,
            n => n as usize,
        };
        // Records are sized first, as the driver does (the prefix, written first, depends on
        // how many fit): a scratch page with the same prefix size.
        let prefix_for = |missed| EventsPrefix {
            missed,
            tracking_since: self.tracking_since,
            key_alarm_threshold: self.key_alarm_threshold,
            held_after_seconds: self.held_after_seconds,
        };
        let mut scratch = vec![0u8; out.len()];
        let mut fit = 0usize;
        {
            let mut w =
                PageWriter::<Events>::new(&mut scratch, &prefix_for(0), 0).map_err(|_| small())?;
            for (_, bytes) in pending.iter().take(limit) {
                let rec = <UnloadRecord<'_> as protocol::page::Codec<'_>>::decode(
                    &mut wire::Reader::new(bytes),
                )
                .map_err(|_| small())?;
                if !w.push(&rec) {
                    break;
                }
                fit += 1;
            }
        }
        if fit == 0 && !pending.is_empty() {
            return Err(small());
        }
        // As the driver: the last number the page accounts for is its last record's, or
        // every number taken so far when it delivers all that is left; `missed` is the
        // numbers up to it the page does not deliver (evicted, or never stored).
        let next = if fit < pending.len() {
            pending[fit - 1].0
        } else {
            newest.max(after)
        };
        let prefix = prefix_for(next.saturating_sub(after).saturating_sub(fit as u64));
        let mut w = PageWriter::<Events>::new(out, &prefix, 0).map_err(|_| small())?;
        if self.newest_numbered() == req.after && req.timeout_ms != 0 && !self.answers_early {
            // The wait ran its course.
            let waited = if req.timeout_ms == EventsRequest::NO_TIMEOUT {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(u64::from(req.timeout_ms))
            };
            self.clock.sleep(waited);
        }
        for (_, bytes) in pending.iter().take(fit) {
            let rec = <UnloadRecord<'_> as protocol::page::Codec<'_>>::decode(
                &mut wire::Reader::new(bytes),
            )
            .map_err(|_| small())?;
            let pushed = w.push(&rec);
            debug_assert!(pushed, "sized above");
        }
        let mut cursor = Cursor::START;
        cursor.0[0] = next;
        Ok(w.finish(&PageInfo {
            next: cursor,
            flags: if next >= newest { PageInfo::DONE } else { 0 },
            not_recorded: 0,
        }))
    }
}
