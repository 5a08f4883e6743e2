//! The loop of `hivetrack service run`: drain the driver's event stream, turn each record
//! into a [`FleetEvent`], write it, and (with a driver that does not) re-check failed
//! unloads.
//!
//! - Each request asks for the events after the last page's cursor, which accounts for
//!   numbers the driver took and never stored (nothing is persisted: a service that starts
//!   again re-reports what the driver still keeps; `TrackingSince` and `Sequence`, carried
//!   by every event from the stream, tell collectors the duplicates).
//! - A request waits at most `wait` (default 10 s) in the driver. After a wait that brought
//!   nothing the device handle is closed and opened again: a driver stop requested meanwhile
//!   (`sc stop hivetrack`) can only complete when no handle is open.
//! - The driver unreachable (stopped, not installed, no event stream): event 1013 once, a
//!   new try every `retry` (default 15 s), event 1010 when connected again. A new tracking
//!   start on any answer: event 1012, and reading starts over at sequence 0.
//! - `missed` in an answer: event 1011, once per loss; a failed unload the driver watches,
//!   read before a lost number, gets the service's own re-check too (the lost number may be
//!   its held-after record, or its watch, never made). A watch due more than
//!   [`DRIVER_LOOK_SLACK`] before a page was asked that delivered everything, without its
//!   record, was answered "free" by the driver's silence: forgotten. Re-checks of the
//!   service's own run only after such a page (a record still to come cancels them).
//! - One clock (review 22b, M1): due times, waits and "still held N s" are on the service's
//!   monotonic clock; a record's time (the driver's system clock) is set against the system
//!   clock read with the page, trusted to say "long ago" only while that clock kept step
//!   with the monotonic one since the service started. A record stamped with the driver's
//!   interrupt time (protocol 7) is dated by the interrupt-time count instead, which setting
//!   the clock does not move, also before the service started (review 22d, L3).
//! - An output refusing events (the Event Log service down, a full disk): event 1014, to
//!   each output once per refused event.
//! - Holders are read only for the load of the mount the record names (its hive id when the
//!   hive now has the same one; otherwise a hive not loaded after the attempt: ids restart
//!   at 1 with every driver start): a later load is the failed one gone.
//! - A failed unload: event 1001. Who looks again later depends on the driver, page by page:
//!   - **The driver** when its events prefix says `held_after_seconds` > 0 (its service key's
//!     `Parameters\HeldAfterSeconds`, default 60) and it knew the hive (it never watches a
//!     record flagged [`UnloadRecord::UNKNOWN_HIVE`]): it looks at the hive that long after the
//!     attempt and, if still held (or it cannot see whether it is), writes a
//!     [`UnloadRecord::HELD_AFTER`] record, which becomes event 1002 built like 1001 (the
//!     record's holders, their services and keys, plus the kernel's untracked holders), with
//!     the record's own sequence. `held_for_secs` is measured from the failed attempt when
//!     this service saw it (the first of a run of retries, as the driver counts), otherwise
//!     it is the driver's delay, said as "at least". The service does **not** re-check
//!     then: no second 1002. A held-after record is never a failed unload (its `outcome` is
//!     the watched attempt's status).
//!     A driver restart (a new tracking start) drops the driver's watches: the failed
//!     unloads it had not answered with a held-after record yet become re-checks of this
//!     service's own (as below), due at the attempt's time plus the delay the driver had
//!     reported (their 1002's `Sequence` is then a number of the driver's previous start).
//!   - **This service** when the prefix says 0 (`HeldAfterSeconds` 0; a driver older than
//!     the look again speaks protocol 1 and is refused like any other version),
//!     and for a record flagged `UNKNOWN_HIVE` whatever the prefix says:
//!     `still_held_after` (`--still-held-after`, default 60 s) after the unload the hive's
//!     holders are asked for again: event 1002 when any process still holds a key in it (the
//!     driver's records and the kernel's list, as `hivetrack holders` reports them). A later
//!     successful unload of the hive, or the hive gone, cancels the re-check. With `--once`
//!     only re-checks already due (the unload older than the delay) run.
//! - A deferred unload (`STATUS_PENDING`: `NtUnloadKeyEx` with an event on a held hive;
//!   Windows unloads the hive later, when its last key closes) is no failure: no 1001, no
//!   re-check of the service's own, and it cancels no pending re-check (the hive is not
//!   unloaded yet). The driver watches it as a failed one (a hive it knew, delay > 0): its
//!   held-after record becomes a 1002 that says "after its deferred unload", measured from
//!   the attempt as for a failed one (`failed_unload_sequence` is then the deferred
//!   attempt's). A run of retries begun by a deferred attempt is re-checked after a driver
//!   restart only when a failed retry followed it.
//! - A record with [`UnloadRecord::HOLDERS_UNSEEN`] (1001 or 1002): the event says that
//!   processes hivetrack could not see may also hold keys (`HoldersUnseen`).
//! - Services of a holder (a service host's) are looked up by pid only for holders the
//!   driver reports as running now (as `hivetrack holders` does).
//! - For 1001 and 1002 the hive's holders are read once with their keys (and, with
//!   `CAP_STACKS` and some key carrying a stack, the stacks and modules pages): each holder
//!   gets its oldest key names and the modules that opened its keys. Nothing when the read
//!   fails or the hive is gone.
//! - Stopping: `keep_going` turns false and the service host cancels the pending request
//!   (`CancelIoEx`); the request ends with `ERROR_OPERATION_ABORTED` and the loop returns.

use std::time::Duration;

use anyhow::Result;

use crate::accounts::Accounts;
use crate::client::Client;
use crate::commands::CliError;
use crate::event_sink::EventSink;
use crate::event_stream::{
    ERROR_OPERATION_ABORTED, StreamPage, StreamRecord, has_event_stream, wait_events,
};
use crate::exit;
use crate::fleet_event::{
    EventHolder, FleetEvent, HeldAfter, KEY_NAMES, UnloadFailure, deferred, failed,
};
use crate::hive_name::user_sid;
use crate::holder_identity::Identities;
use crate::model::{HeldKey, Holder, HoldersReport, Time, UNIX_EPOCH_FILETIME};
use crate::modules::caller;
use crate::symbols::NoSymbols;
use crate::transport::{
    ERROR_FILE_NOT_FOUND, ERROR_INVALID_FUNCTION, Transport, TransportError, wait_timeout_ms,
};
use crate::wait::Clock;
use protocol::events::EventsPrefix;
use protocol::history::UnloadRecord;
use protocol::version::VersionInfo;

/// How the service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Drain what is there now (requests with timeout 0) and return.
    pub once: bool,
    /// How long after a failed unload its hive's holders are asked for again, by the
    /// service itself only when the driver does not look again (its prefix's
    /// `held_after_seconds` is 0, or the record is flagged `UNKNOWN_HIVE`).
    pub still_held_after: Duration,
    /// Longest wait of one request in the driver.
    pub wait: Duration,
    /// Pause between tries while the driver cannot be reached.
    pub retry: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            once: false,
            still_held_after: Duration::from_secs(60),
            wait: Duration::from_secs(10),
            retry: Duration::from_secs(15),
        }
    }
}

/// Opens a connection to the driver.
pub type ConnectEvents<'a> = dyn FnMut() -> Result<Box<dyn Transport>, TransportError> + 'a;

/// What the loop needs from the outside world.
pub struct ServiceEnv<'a> {
    /// Opens the driver (each call a new handle).
    pub connect: &'a mut ConnectEvents<'a>,
    /// Where events go.
    pub sink: &'a mut dyn EventSink,
    /// Account names of SIDs.
    pub accounts: &'a dyn Accounts,
    /// Services of running holders.
    pub identities: &'a dyn Identities,
    /// Time since the loop started; sleeps.
    pub clock: &'a mut dyn Clock,
    /// The wall clock (FILETIME) when `clock` read zero.
    pub started_at: u64,
    /// The system clock now (FILETIME): the clock the driver stamps its records with
    /// (`event_service::filetime_now` under the service manager). `None`: `started_at` plus
    /// `clock` (a scripted run, whose clock is never set).
    pub wall: Option<&'a dyn Fn() -> u64>,
    /// The interrupt-time count now (100 ns units since boot: `QueryInterruptTime`,
    /// [`interrupt_time_now`]), the count the driver stamps its unload and held-after records
    /// with (`KeQueryInterruptTime`'s; Learn, "Interrupt Time": both read the system's
    /// interrupt-time count). `None`, or `None` from it (no such routine, a scripted run
    /// without one): records are dated by the system clock ([`Self::wall`]) alone.
    pub interrupt: Option<&'a dyn Fn() -> Option<u64>>,
    /// False once the service is asked to stop.
    pub keep_going: &'a dyn Fn() -> bool,
}

impl ServiceEnv<'_> {
    /// The system clock now (FILETIME): what event times say, and what a record's time (the
    /// driver's system clock) is compared with.
    fn now(&self) -> u64 {
        self.wall.map_or_else(
            || {
                self.started_at
                    + u64::try_from(self.clock.elapsed().as_nanos() / 100).unwrap_or(u64::MAX / 4)
            },
            |wall| wall(),
        )
    }

    /// The service's monotonic clock (100 ns units since the loop started): what waits,
    /// re-checks and watches are timed with. Found in review 22b (M1): due times and "now"
    /// mixed the driver's system clock with the service's start time plus its monotonic
    /// clock, so a clock set back after the service started forgot a watch before the driver
    /// had looked.
    fn mono(&self) -> i64 {
        i64::try_from(self.clock.elapsed().as_nanos() / 100).unwrap_or(i64::MAX / 4)
    }

    /// Writes `event` to each output. An output's refusal is said as event 1014 (audit 22b,
    /// M4: under the service manager the count was dropped): at the first refusal and then at
    /// most once an hour while they go on, and once every output accepts an event again.
    /// Each output is told each refused event once: a 1014 an output refused is said to it
    /// again later, never again to an output that took it. Found in review 22b (L1): one
    /// count for all outputs, kept whole while one refused the 1014, said twice in the
    /// Application log one event the `--jsonl` file refused.
    fn emit(&mut self, event: &FleetEvent, stats: &mut Counts) {
        stats.events += 1;
        let outputs = self.sink.outputs().max(1);
        stats.unsaid.resize(outputs, 0);
        let mut refused = None;
        for i in 0..outputs {
            if let Err(e) = self.sink.emit_to(i, event) {
                refused.get_or_insert(e);
            }
        }
        let now = self.mono();
        if let Some(e) = refused {
            stats.sink_errors += 1;
            // Every output is told of it, the one that took it and the one that did not.
            for n in &mut stats.unsaid {
                *n += 1;
            }
            stats.last_sink_error = Some(format!("{e:#}"));
            if stats
                .sink_errors_said_at
                .is_none_or(|t| now.saturating_sub(t) >= NOT_WRITTEN_EVERY)
            {
                self.say_not_written(stats, now);
            }
        } else if stats.unsaid.iter().any(|&n| n > 0) {
            self.say_not_written(stats, now);
        }
        stats.unsaid_sink_errors = stats.unsaid.iter().sum();
    }

    /// A 1014 to each output with refused events it has not been told of, with its count.
    fn say_not_written(&mut self, stats: &mut Counts, now: i64) {
        let error = stats.last_sink_error.clone().unwrap_or_default();
        stats.sink_errors_said_at = Some(now);
        let time = self.now();
        if stats.unsaid.iter().any(|&n| n > 0) {
            stats.events += 1;
        }
        let mut refused = false;
        for i in 0..stats.unsaid.len() {
            if stats.unsaid[i] == 0 {
                continue;
            }
            let e = FleetEvent::not_written(stats.unsaid[i], &error, time);
            match self.sink.emit_to(i, &e) {
                Ok(()) => stats.unsaid[i] = 0,
                // Said to this output once it accepts an event again.
                Err(_) => refused = true,
            }
        }
        // One event, as `events` counts it: "N of M event(s) could not be written".
        if refused {
            stats.sink_errors += 1;
        }
        stats.unsaid_sink_errors = stats.unsaid.iter().sum();
    }

    /// Sleeps `d` in slices, returning early when asked to stop.
    fn pause(&mut self, d: Duration) {
        let slice = Duration::from_millis(250);
        let mut left = d;
        while !left.is_zero() && (self.keep_going)() {
            let step = left.min(slice);
            self.clock.sleep(step);
            left -= step;
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events written (or attempted): each once, however many outputs it went to (a 1014
    /// said to two outputs is one event; one said again to an output that refused it is
    /// another attempt). Found in review 22d (L5): a 1014 counted once per output, and the
    /// console's "N event(s) written" over-counted.
    pub events: u64,
    /// Events a sink refused.
    pub sink_errors: u64,
    /// The last refusal, in words.
    pub last_sink_error: Option<String>,
    /// Connections that reached the driver's stream.
    pub connections: u64,
    /// Refused events not yet said by a 1014, summed over the outputs (each output is told
    /// each refused event once).
    pub unsaid_sink_errors: u64,
    /// Per output: refused events not yet said to it by a 1014.
    pub unsaid: Vec<u64>,
    /// When (the service's monotonic clock, 100 ns units) the last 1014 was written.
    pub sink_errors_said_at: Option<i64>,
}

/// While outputs keep refusing events, a 1014 at most this often (100 ns units: an hour).
const NOT_WRITTEN_EVERY: i64 = 3600 * 10_000_000;

/// A failed unload waiting for its re-check.
struct Recheck {
    failure: UnloadFailure,
    user: Option<String>,
    /// When to ask, on the service's monotonic clock ([`ServiceEnv::mono`]).
    due: i64,
    /// When the failure was, on the service's monotonic clock: `due` less the time from the
    /// failure to the due time, both by the driver's clock. What "still held N s" counts from.
    failed_at: i64,
    /// The driver's id of the hive that failed to unload (0: it did not know it, or the
    /// driver restarted since: ids are numbered again from 1 at every start): the same id
    /// now is the same load; another id is judged by the load time (`same_load`).
    hive_id: u32,
    /// The tracking start the failure's sequence number belongs to (the event's
    /// `TrackingSince`; after a driver restart, the previous start: audit 22b, M3).
    tracking_since: u64,
}

/// The first failed or deferred unload of a run of retries of a hive, seen in the stream
/// while the driver looks again: what its held-after record is measured from.
struct Attempt {
    hive: String,
    sequence: u64,
    /// FILETIME of the attempt.
    time: u64,
    /// The attempt's interrupt-time stamp (0: none): a held-after record's own stamp less
    /// this is how long after the attempt the driver looked, whatever the system clock did.
    stamp: u64,
    /// When the driver's watch is due at the latest, on the service's monotonic clock
    /// ([`Loop::mono_of`]).
    due: i64,
    /// When the driver's watch of the run's latest attempt is due, on the same clock: a
    /// retry within the run keeps `due`, but the driver may have watched only the retry (its
    /// table was full at the first attempt: review 23b, H1), so what says the driver has
    /// answered is judged by this one.
    latest_due: i64,
    /// The service's own re-check of the run's first failed attempt, due when the driver's
    /// watch is (the run's first attempt's time plus the delay the driver reported): run
    /// only if the driver restarts (its watches gone with it) before its held-after record
    /// came, or the stream lost a number taken after the attempt (its held-after record, or
    /// the watch the driver could not make: then due [`DRIVER_LOOK_SLACK`] later). `None`
    /// while the run has only deferred attempts (no failure to re-check), or once the
    /// re-check was handed to [`Loop::rechecks`].
    recheck: Option<Recheck>,
}

impl Attempt {
    /// How long after this attempt the record `rec` (made at `time` by the driver's system
    /// clock) came, in FILETIME units (negative: before it). By the two interrupt-time
    /// stamps when both records carry one, which setting the system clock does not move
    /// (review 24a, F3: a clock set back between a failed unload and the driver's look
    /// dropped the attempt, and its 1002 lost the link to the 1001); else by the two system
    /// times.
    fn elapsed(&self, rec: &StreamRecord, time: u64) -> i128 {
        if self.stamp != 0 && rec.interrupt_time != 0 {
            i128::from(rec.interrupt_time) - i128::from(self.stamp)
        } else {
            i128::from(time) - i128::from(self.time)
        }
    }
}

/// How a connection's drain ended.
enum Drained {
    /// Nothing more now (the wait timed out): reconnect (or, with `--once`, return).
    Idle,
    /// The service stops.
    Stopped,
}

/// FILETIME units per second.
const SECOND: u64 = 10_000_000;

/// How late after a watch's due time the driver's held-after record may come and still be
/// the driver's answer: its timer fires at the earliest due time and looks at
/// `MAX_PER_CHECK` (4) watches per run, setting itself again at once for the rest
/// (`tracker/src/held_after.rs`), so even a full table of 64 is answered within
/// milliseconds; 30 s leaves room for a busy machine. A page that delivers all the driver has
/// numbered this long after a watch was due, without its record, means the driver found the
/// hive free (it writes nothing then); the service's own fallback re-check of a watch it
/// could not be sure of is due this long after the driver's (audit 22b, M1, M2).
const DRIVER_LOOK_SLACK: i64 = 30 * 10_000_000;

/// How late after its due time the driver's look at a watch may come, at most, for a driver
/// restart to take a watch due this long before a page that delivered everything the driver
/// had numbered as answered by silence (the hive free). The driver looks in its timer's DPC
/// at the earliest due time (`tracker/src/held_after.rs`: `held_after_check` at
/// `DISPATCH_LEVEL`, `MAX_PER_CHECK` watches per run, the timer set again at once for the
/// rest): a DPC runs ahead of every thread, so the look comes within milliseconds of its due
/// time, and its record (when the hive is held) is numbered before any page answered later.
/// The service's due time is the latest the driver's can be ([`Loop::mono_of`]) within
/// [`CLOCK_STEP`] (the system clock may be off by that much while it counts as steady), so
/// the margin is that plus a second (review 23b, L1: it was 1 s); the page was answered no
/// earlier than it was asked. Found in review 22b (L2): a restart converted every
/// watch not yet forgotten, also one due up to [`DRIVER_LOOK_SLACK`] before its last done page
/// (the driver had looked and found the hive free), into a late re-check. A sleep across
/// the due time: the interrupt time and this service's clock count it, a relative kernel
/// timer does not (Learn `SetWaitableTimer`, Windows 8 and later), so the driver sets its
/// timer in slices of at most 2 s (`driver/src/waiters.rs` `SLICE`) and looks within 2 s
/// of wake (review 24a, F1; review 24c, MED 2: 10 s at first; README, "Sleep"). Not covered: a page that delivers everything
/// in those 2 s (another record woke the reader) with a driver restart before the look.
const DRIVER_LOOK_LATE: i64 = 3 * 10_000_000;

/// How far the system clock may move against the service's monotonic clock before the
/// service stops trusting it to date records it reads (100 ns units: 2 s).
const CLOCK_STEP: i128 = 2 * 10_000_000;

/// Whether the driver looks at `rec`'s hive again itself: it says a delay above 0 and knew
/// the hive (it watches only hives it knows: a record flagged
/// [`UnloadRecord::UNKNOWN_HIVE`] is never watched).
const fn driver_watches(rec: &StreamRecord, prefix: &EventsPrefix) -> bool {
    prefix.held_after_seconds > 0 && rec.flags & UnloadRecord::UNKNOWN_HIVE == 0
}

fn duration_filetime(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX / 4)
}

struct Loop<'e, 'a> {
    env: &'e mut ServiceEnv<'a>,
    opts: ServiceOptions,
    after: u64,
    tracking_since: Option<u64>,
    /// Event 1013 was written and no connection succeeded since.
    unavailable: bool,
    rechecks: Vec<Recheck>,
    /// Failed and deferred unloads the driver will look at again (its delay > 0, a hive it
    /// knew), by hive.
    attempts: Vec<Attempt>,
    /// The page being read: when it came, on the monotonic clock and the system clock.
    read_mono: i64,
    read_wall: u64,
    /// The interrupt-time count when the page came ([`ServiceEnv::interrupt`]), if it can be
    /// read here.
    read_interrupt: Option<u64>,
    /// The system clock kept step with the monotonic clock since the service started
    /// (within [`CLOCK_STEP`]): the age a record's time gives may be trusted to say the
    /// driver already looked. Once it moved (set back or forward, drifted), never again.
    wall_steady: bool,
    /// When the latest page that delivered everything the driver had numbered was asked for,
    /// on the monotonic clock (`i64::MIN` before one): what a driver restart judges the old
    /// driver's unanswered watches by ([`DRIVER_LOOK_LATE`]).
    last_done_asked: i64,
    buf: Vec<u8>,
    counts: Counts,
}

impl Loop<'_, '_> {
    /// When the driver-clock FILETIME `at` (a record's time plus `most`, a delay counted from
    /// it) comes at the latest, on the service's monotonic clock, for a record of the page
    /// being read. The record was made before it was read, so `at` is at most `most` after
    /// the read; earlier (in the past, for a record read long after it was made) only as
    /// far as the system clock says and only while it kept step with the monotonic clock
    /// (`wall_steady`): when unsure, the latest (review 22b, M1).
    fn mono_of(&self, at: u64, most: u64) -> i64 {
        let most = i128::from(most);
        let ahead = if self.wall_steady {
            (i128::from(at) - i128::from(self.read_wall)).min(most)
        } else {
            most
        };
        i64::try_from(i128::from(self.read_mono) + ahead).unwrap_or(i64::MIN / 4)
    }

    /// How long before the page being read the driver made `rec`, by the interrupt-time
    /// count both read: `None` when the record is not stamped (0), the count cannot be read
    /// here, or the stamp is later than the read (not this machine's count). Setting the
    /// system clock does not move it (Learn, `KeQueryInterruptTime`; `QueryInterruptTime`:
    /// "not subject to adjustments by users or the Windows time service").
    fn stamp_age(&self, rec: &StreamRecord) -> Option<u64> {
        let now = self.read_interrupt?;
        (rec.interrupt_time != 0 && rec.interrupt_time <= now).then(|| now - rec.interrupt_time)
    }

    /// Whether the system clock may be trusted to order the record `rec` of the page being
    /// read against another system-clock reading (a hive's load time: [`same_load`]): it kept
    /// step with the monotonic clock since the service started (`wall_steady`), and, when the
    /// record is stamped, its age by the system clock is its age by the stamp within
    /// [`CLOCK_STEP`] (a step between the record and its read, also before the service
    /// started, which `wall_steady` cannot see). Review 24a, F2.
    fn record_clock_trusted(&self, rec: &StreamRecord) -> bool {
        self.wall_steady
            && self.stamp_age(rec).is_none_or(|age| {
                let by_wall = i128::from(self.read_wall) - i128::from(rec.time);
                (by_wall - i128::from(age)).abs() <= CLOCK_STEP
            })
    }

    /// When `delay` after the record `rec` (made at `time` by the driver's system clock)
    /// comes, on the service's monotonic clock. By the record's interrupt-time stamp when it
    /// has one ([`Self::stamp_age`]): exact whatever the system clock did, also before the
    /// service started, which `wall_steady` cannot see (review 22d, L3: a clock set forward
    /// between a failed unload and the service's start made the record read that much older,
    /// its watch was forgotten and its re-check ran early). Otherwise by its system time
    /// ([`Self::mono_of`]).
    fn due_after(&self, rec: &StreamRecord, time: u64, delay: u64) -> i64 {
        self.stamp_age(rec).map_or_else(
            || self.mono_of(time.saturating_add(delay), delay),
            |age| {
                let ahead = i128::from(delay) - i128::from(age);
                i64::try_from(i128::from(self.read_mono) + ahead).unwrap_or(i64::MIN / 4)
            },
        )
    }

    fn unavailable(&mut self, reason: &str) {
        if !self.unavailable {
            self.unavailable = true;
            let retry = if self.opts.once {
                0
            } else {
                self.opts.retry.as_secs().max(1)
            };
            let e = FleetEvent::unavailable(reason, retry, self.env.now());
            self.env.emit(&e, &mut self.counts);
        }
    }

    /// Whether services may be looked up by pid: this platform can, and the driver is told of
    /// process exits, so that "not exited" means the pid is still the holder's (as the CLI
    /// checks: `app::exits_tracked`). Found in review (2026-12-05): the service named the
    /// services of whatever process had the pid now when the driver could not see exits.
    fn lookup(&self, t: &mut dyn Transport) -> bool {
        self.env.identities.supported() && crate::app::exits_tracked(t)
    }

    /// The processes the driver reports as running now, `(pid, start key)`; empty when
    /// identities cannot be looked up here (nothing would be asked). A failed unload's
    /// holders come from its hive's holders read instead ([`hive_keys`]).
    fn running_processes(&self, t: &mut dyn Transport) -> Vec<(u64, u64)> {
        if !self.lookup(t) {
            return Vec::new();
        }
        Client::new(t).processes(None).map_or_else(
            |_| Vec::new(),
            |r| {
                r.processes
                    .iter()
                    .filter(|p| !p.exited)
                    .map(|p| (p.pid, p.start_key))
                    .collect()
            },
        )
    }

    fn services(&self, running: &[(u64, u64)], pid: u64, start_key: u64) -> Option<Vec<String>> {
        if running.contains(&(pid, start_key)) {
            self.env.identities.identity_of(pid)?.services
        } else {
            None
        }
    }

    /// The record's holders as event holders: services for those running now, key names
    /// and modules from the hive's holders read once (as `hivetrack holders` has them), that
    /// read, `None` when the hive is gone or cannot be asked about, and whether that read
    /// may be of a later load than the record's ([`Load::Unsure`]: the event then says so,
    /// review 23b, L3; it was taken as the same load without a word).
    fn record_holders(
        &self,
        t: &mut dyn Transport,
        rec: &StreamRecord,
    ) -> (Vec<EventHolder>, Option<HoldersReport>, bool) {
        let now = self.env.now();
        // Only the load the record is about: a later load of the mount (the user's next
        // logon) holds nothing of it (audit 22b, M7).
        let mut load_unsure = false;
        let report = hive_keys(t, &rec.mount, now).ok().and_then(|r| {
            match same_load(t, &r, rec.hive_id, rec.time, self.record_clock_trusted(rec)) {
                Load::Later => None,
                Load::Same => Some(r),
                Load::Unsure => {
                    load_unsure = true;
                    Some(r)
                }
            }
        });
        let running = if self.lookup(t) {
            report.as_ref().map_or_else(Vec::new, |r| {
                r.holders
                    .iter()
                    .filter(|h| !h.exited)
                    .map(|h| (h.pid, h.start_key))
                    .collect()
            })
        } else {
            Vec::new()
        };
        let holders = rec
            .holders
            .iter()
            .map(|h| {
                let mut e = EventHolder::new(
                    h.pid,
                    h.image.clone(),
                    self.services(&running, h.pid, h.start_key),
                    h.open_keys,
                );
                if let Some(held) = report.as_ref().and_then(|r| {
                    r.holders
                        .iter()
                        .find(|x| x.pid == h.pid && x.start_key == h.start_key)
                }) {
                    add_keys(&mut e, held, rec.time);
                }
                e
            })
            .collect();
        (holders, report, load_unsure)
    }

    fn record(&mut self, t: &mut dyn Transport, rec: &StreamRecord, prefix: &EventsPrefix) {
        if rec.is_key_alarm() {
            let running = self.running_processes(t);
            let Some(h) = rec.holders.first() else {
                return;
            };
            let holder = EventHolder::new(
                h.pid,
                h.image.clone(),
                self.services(&running, h.pid, h.start_key),
                rec.open_keys,
            );
            let mut e =
                FleetEvent::key_alarm(holder, prefix.key_alarm_threshold, rec.sequence, rec.time);
            e.tracking_since = Time::from_filetime(prefix.tracking_since);
            self.env.emit(&e, &mut self.counts);
        } else if rec.is_held_after() {
            // Before `failed`: its outcome is the failed attempt's status, yet it is no unload.
            self.held_after(t, rec, prefix);
        } else if failed(rec.outcome) {
            let (holders, report, load_unsure) = self.record_holders(t, rec);
            // A hive the driver cannot vouch for: the kernel's list just read names holders
            // whose keys were opened before tracking (audit 20b, L3), as the 1002 adds them.
            let kernel_now = match &report {
                Some(r) if rec.holders_unseen() => r
                    .untracked
                    .iter()
                    .map(|u| {
                        let mut e = EventHolder::new(u.pid, u.image.clone(), None, u.open_keys);
                        e.key_names = u.keys.iter().take(KEY_NAMES).cloned().collect();
                        e
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let failure = UnloadFailure {
                hive: rec.mount.clone(),
                status: rec.outcome,
                holder_count: u64::from(rec.holders_total),
                key_count: rec.open_keys,
                holders_truncated: rec.flags & UnloadRecord::HOLDERS_TRUNCATED != 0,
                holders_unseen: rec.holders_unseen(),
                sequence: rec.sequence,
                time: rec.time,
            };
            let user = user_sid(&rec.mount).and_then(|sid| self.env.accounts.account_of(sid));
            let mut e = FleetEvent::unload_failed_and_kernel_list(
                &failure,
                user.clone(),
                holders,
                kernel_now,
            );
            // Which driver start the sequence number belongs to: numbers begin at 1 at every
            // start (audit 22b, M3).
            e.tracking_since = Time::from_filetime(prefix.tracking_since);
            if load_unsure {
                e.say_load_unsure();
            }
            self.env.emit(&e, &mut self.counts);
            let time = if rec.time == 0 {
                self.env.now()
            } else {
                rec.time
            };
            self.rechecks
                .retain(|r| !r.failure.hive.eq_ignore_ascii_case(&rec.mount));
            if driver_watches(rec, prefix) {
                // The driver looks again: its held-after record is the 1002.
                self.attempted(rec, prefix, time, Some((failure, user)));
            } else {
                let delay = duration_filetime(self.opts.still_held_after);
                let due = self.due_after(rec, time, delay);
                self.rechecks.push(Recheck {
                    failure,
                    user,
                    due,
                    failed_at: due.saturating_sub(i64::try_from(delay).unwrap_or(i64::MAX / 4)),
                    hive_id: rec.hive_id,
                    tracking_since: prefix.tracking_since,
                });
            }
        } else if deferred(rec.outcome) {
            // Not a failure (no 1001, no re-check of the service's own), and the hive is not
            // unloaded yet: Windows unloads it when its last key closes. The driver watches
            // it as a failed one; its held-after record is measured from this attempt.
            if driver_watches(rec, prefix) {
                let time = if rec.time == 0 {
                    self.env.now()
                } else {
                    rec.time
                };
                self.attempted(rec, prefix, time, None);
            }
        } else {
            // The hive unloaded after all: nothing to re-check.
            self.rechecks
                .retain(|r| !r.failure.hive.eq_ignore_ascii_case(&rec.mount));
            self.attempts
                .retain(|a| !a.hive.eq_ignore_ascii_case(&rec.mount));
        }
    }

    /// Remembers the unload attempt `rec` (at `time`; `failed`: the failure with its user, or
    /// `None` for a deferred unload) that the driver watches: the first attempt of a run of
    /// retries, as the driver's watch counts from it (an attempt after that watch was due
    /// starts a new run).
    fn attempted(
        &mut self,
        rec: &StreamRecord,
        prefix: &EventsPrefix,
        time: u64,
        failed: Option<(UnloadFailure, Option<String>)>,
    ) {
        let delay = prefix.held_after_seconds.saturating_mul(SECOND);
        // The failure's time on the monotonic clock, from its watch's `due` (at `watched`, by
        // the driver's clock): one clock for each stretch.
        let recheck = |due: i64, watched: u64| {
            let before = i64::try_from(watched.saturating_sub(time)).unwrap_or(i64::MAX / 4);
            failed.map(|(failure, user)| Recheck {
                failure,
                user,
                due,
                failed_at: due.saturating_sub(before),
                hive_id: rec.hive_id,
                tracking_since: prefix.tracking_since,
            })
        };
        let due = self.due_after(rec, time, delay);
        match self
            .attempts
            .iter_mut()
            .find(|a| a.hive.eq_ignore_ascii_case(&rec.mount))
        {
            Some(a) if a.elapsed(rec, time) <= i128::from(delay) => {
                // A retry within the run: the watch stays the first attempt's. A run begun
                // by a deferred unload gets its first failure as the re-check after a restart.
                a.latest_due = a.latest_due.max(due);
                if a.recheck.is_none() {
                    a.recheck = recheck(a.due, a.time.saturating_add(delay));
                }
            }
            found => {
                let attempt = Attempt {
                    hive: rec.mount.clone(),
                    sequence: rec.sequence,
                    time,
                    stamp: rec.interrupt_time,
                    due,
                    latest_due: due,
                    recheck: recheck(due, time.saturating_add(delay)),
                };
                match found {
                    Some(a) => *a = attempt,
                    None => self.attempts.push(attempt),
                }
            }
        }
    }

    /// Event 1002 from the driver's held-after record `rec` (`prefix`: its page's).
    fn held_after(&mut self, t: &mut dyn Transport, rec: &StreamRecord, prefix: &EventsPrefix) {
        let delay = prefix.held_after_seconds;
        let (mut holders, report, load_unsure) = self.record_holders(t, rec);
        let mut holder_count = u64::from(rec.holders_total);
        let mut key_count = rec.open_keys;
        // The kernel's list knows processes whose keys the driver never saw opened.
        if let Some(r) = &report {
            for u in &r.untracked {
                if merge_untracked(&mut holders, u) {
                    holder_count += 1;
                }
                key_count += u.open_keys;
            }
        }
        let attempt = self
            .attempts
            .iter()
            .position(|a| a.hive.eq_ignore_ascii_case(&rec.mount))
            .map(|i| self.attempts.swap_remove(i))
            .filter(|a| a.elapsed(rec, rec.time) >= 0);
        // The driver looked again: no re-check of the service's own for this hive.
        self.rechecks
            .retain(|r| !r.failure.hive.eq_ignore_ascii_case(&rec.mount));
        let held = HeldAfter {
            hive: rec.mount.clone(),
            status: rec.outcome,
            holder_count,
            key_count,
            holders_truncated: rec.flags & UnloadRecord::HOLDERS_TRUNCATED != 0,
            holders_unseen: rec.holders_unseen(),
            sequence: rec.sequence,
            time: rec.time,
            // The driver looks its delay after an attempt of the run on its monotonic clock
            // (`tracker/src/held_after.rs`), and a run's attempts lie within the delay of
            // its first ([`Self::attempted`]): so between one and two delays after the first.
            // Two readings of the driver's system clock outside that, or a system clock seen
            // to move, say nothing about how long; the delay is then said (review 22d, L2).
            // Both stamped (protocol 7): the interrupt-time count between them, which setting
            // the clock does not move, also before the service started (review 22d, L3).
            held_for_secs: attempt.as_ref().map_or(delay, |a| {
                if a.stamp != 0 && rec.interrupt_time >= a.stamp {
                    return (rec.interrupt_time - a.stamp) / SECOND;
                }
                let read = i128::from(rec.time - a.time);
                let one = i128::from(delay) * i128::from(SECOND);
                if self.wall_steady && read >= one - CLOCK_STEP && read <= 2 * one + CLOCK_STEP {
                    rec.time.saturating_sub(a.time) / SECOND
                } else {
                    delay
                }
            }),
            at_least: attempt.is_none(),
            failed_unload_sequence: attempt.as_ref().map(|a| a.sequence),
        };
        let user = user_sid(&rec.mount).and_then(|sid| self.env.accounts.account_of(sid));
        let mut e = FleetEvent::held_after(&held, user, holders);
        e.tracking_since = Time::from_filetime(prefix.tracking_since);
        if load_unsure {
            e.say_load_unsure();
        }
        self.env.emit(&e, &mut self.counts);
    }

    /// Asks again about every failed unload whose re-check is due.
    fn rechecks_due(&mut self, t: &mut dyn Transport) {
        let now = self.env.now();
        let mono = self.env.mono();
        let (due, later): (Vec<Recheck>, Vec<Recheck>) = std::mem::take(&mut self.rechecks)
            .into_iter()
            .partition(|r| r.due <= mono);
        self.rechecks = later;
        for r in due {
            let Some((holders, unseen, load_unsure)) = self.recheck(t, &r, now) else {
                continue; // unloaded (or another load of the mount now)
            };
            if holders.is_empty() && !unseen {
                continue; // free
            }
            let keys = holders.iter().map(|h| h.keys).sum();
            // One clock: the monotonic time since the failure (review 22b, M1).
            let since = u64::try_from(mono.saturating_sub(r.failed_at)).unwrap_or(0) / SECOND;
            let mut e = FleetEvent::still_held(
                &r.failure,
                r.user,
                holders,
                keys,
                since,
                now,
                unseen,
                load_unsure,
            );
            e.tracking_since = Time::from_filetime(r.tracking_since);
            self.env.emit(&e, &mut self.counts);
        }
    }

    /// Who holds `hive` now, as event holders, and whether processes the re-check could not
    /// see may hold it too ([`holders_unseen`]); `None` when it was unloaded. When the driver
    /// cannot be asked, an empty, unseen answer ("could not tell"). A hive the driver does not know (it never saw it loaded, or forgot
    /// it: the failed unload's record was flagged `UNKNOWN_HIVE`) is looked up in the kernel's
    /// list of open keys, as `wait` does: keys it lists hold the hive, and others may (keys
    /// deleted while open are not in it: the answer is always unseen); when it cannot be
    /// asked, whether the hive is held cannot be told (an empty, unseen answer). Found in review
    /// (2026-12-05): such a re-check was dropped without a word, even with the kernel listing
    /// keys, and an empty answer was taken for "free" before asking whether it was unseen.
    ///
    /// A hive now at the mount that is not the load that failed (another driver id, or
    /// loaded after the failure: `same_load`) is the failed one unloaded: `None`. Found in
    /// audit 22b (M7): a re-check asked by mount name only named the next logon's processes.
    /// The third value: whether the hive now at the mount may be a later load
    /// ([`Load::Unsure`]); the 1002 then says so (review 22d, L4).
    fn recheck(
        &self,
        t: &mut dyn Transport,
        r: &Recheck,
        now: u64,
    ) -> Option<(Vec<EventHolder>, bool, bool)> {
        let hive = r.failure.hive.as_str();
        let mut load_unsure = false;
        // The failure's age by the system clock is its age on the monotonic clock (dated by
        // its stamp when it had one): else the clock stepped since, and cannot order the
        // failure and a load (review 24a, F2).
        let by_wall = i128::from(now) - i128::from(r.failure.time);
        let by_mono = i128::from(self.env.mono()) - i128::from(r.failed_at);
        let trusted = self.wall_steady && (by_wall - by_mono).abs() <= CLOCK_STEP;
        let report = match hive_keys(t, hive, now) {
            Ok(report) => match same_load(t, &report, r.hive_id, r.failure.time, trusted) {
                Load::Later => return None,
                Load::Same => report,
                Load::Unsure => {
                    load_unsure = true;
                    report
                }
            },
            Err(e) if matches!(e.downcast_ref(), Some(CliError::UnknownHive { .. })) => {
                return match crate::kernel_list::read(t, hive) {
                    Some(Ok(keys)) => {
                        let mut by_pid: Vec<(u64, u64)> = Vec::new();
                        for (pid, _) in keys {
                            match by_pid.iter_mut().find(|(p, _)| *p == pid) {
                                Some((_, n)) => *n += 1,
                                None => by_pid.push((pid, 1)),
                            }
                        }
                        // The process now at a pid is named only if it may be the opener
                        // (`client::process_after`; found in review, 2026-12-05: a reused
                        // pid's process was named as the holder).
                        let since = self.tracking_since.unwrap_or(0);
                        let holders: Vec<EventHolder> = by_pid
                            .into_iter()
                            .map(|(pid, n)| {
                                let image = if crate::client::process_after(t, pid, since) {
                                    None
                                } else {
                                    t.process_image(pid)
                                };
                                EventHolder::new(pid, image, None, n)
                            })
                            .collect();
                        // Never "nobody unseen": the kernel's list omits keys deleted while
                        // open, which still hold the hive (WRK `cmsubs.c`
                        // CmpSearchForOpenSubKeys, `cmapi.c` CmUnloadKey), and the driver
                        // cannot vouch for a hive it does not know (fidelity audit,
                        // 2026-12-05). Nor can it tell whether the hive now at the mount
                        // is the load that failed (it knows neither's id nor load time): the
                        // processes it names may hold a later load, and the 1002 says so
                        // (review 23b, L2).
                        let load_unsure = !holders.is_empty();
                        Some((holders, true, load_unsure))
                    }
                    // Not found: unloaded (not for an application hive, whose private
                    // namespace cannot be opened by name: `wait::is_app_hive`).
                    Some(Err(TransportError::Request {
                        code: ERROR_FILE_NOT_FOUND,
                    })) if !crate::wait::is_app_hive(hive) => None,
                    _ => Some((Vec::new(), true, false)),
                };
            }
            // Any other failure to ask (the driver restarting, an I/O error, a hive changing
            // between pages too often): whether it is still held cannot be told, and the
            // event says so. Until 2026-12-05 the re-check was dropped without a word, and
            // the missing 1002 read as "released" (found in review).
            Err(_) => return Some((Vec::new(), true, false)),
        };
        let lookup = self.lookup(t);
        let mut holders: Vec<EventHolder> = report
            .holders
            .iter()
            .map(|h| {
                let services = if lookup && !h.exited {
                    self.env
                        .identities
                        .identity_of(h.pid)
                        .and_then(|i| i.services)
                } else {
                    None
                };
                let mut e = EventHolder::new(h.pid, h.image.clone(), services, h.open_keys);
                add_keys(&mut e, h, u64::MAX);
                e
            })
            .collect();
        for u in &report.untracked {
            merge_untracked(&mut holders, u);
        }
        Some((holders, holders_unseen(&report.source), load_unsure))
    }

    /// `page` (asked after `asked_after`) says numbers were lost. A lost number taken after
    /// a watched attempt's own may be that attempt's held-after record (evicted, or never
    /// stored for want of memory) or the watch the driver could not make (its table of 64
    /// watches full, `tracker/src/held_after.rs` `MAX_WATCHES`: it takes a number and writes
    /// nothing, so no 1002 would ever come): the service cannot tell which, so each such
    /// attempt's failure gets the service's own re-check, due [`DRIVER_LOOK_SLACK`] after
    /// the driver's watch (at once if that is past). A held-after record that does come
    /// cancels it. Found in audit 22b (M1): a failed unload the driver could not watch got
    /// no 1002 from anyone.
    fn lost_after_attempts(&mut self, page: &StreamPage, asked_after: u64) {
        let delivered: Vec<u64> = page.records.iter().map(|r| r.sequence).collect();
        // The newest number the page accounts for and does not deliver (at most one more
        // step than it has records).
        let newest_lost = (asked_after.saturating_add(1)..=page.next_after)
            .rev()
            .find(|n| !delivered.contains(n))
            // A page whose cursor says nothing: any attempt may be concerned.
            .unwrap_or(u64::MAX);
        for a in &mut self.attempts {
            if a.sequence >= newest_lost {
                continue; // every lost number came before this attempt
            }
            if let Some(mut r) = a.recheck.take() {
                r.due = a.due.saturating_add(DRIVER_LOOK_SLACK);
                if let Some(x) = self
                    .rechecks
                    .iter_mut()
                    .find(|x| x.failure.hive.eq_ignore_ascii_case(&r.failure.hive))
                {
                    *x = r;
                } else {
                    self.rechecks.push(r);
                }
            }
        }
    }

    /// After a page that delivered everything the driver had numbered: the watched attempts
    /// whose watch was due more than [`DRIVER_LOOK_SLACK`] ago and brought no held-after
    /// record were answered by the driver, silently: it found the hive free (it writes a
    /// record only for a hive still held, or one it cannot see). They are forgotten, so a
    /// later driver restart does not turn them into re-checks of the service's own. Found
    /// in audit 22b (M2): attempts answered long before (a service restart replays them in
    /// bulk) became "still held 610 s after its failed unload" after a driver update.
    ///
    /// `asked`: when the page was asked for, on the monotonic clock; each watch's due time
    /// is on that clock too ([`Loop::mono_of`]), so a watch is forgotten only on a page asked
    /// after the driver had its look (review 22b, M1: the driver's record time against the
    /// service's start plus its monotonic clock forgot a watch on the page that brought it
    /// when the system clock had been set back).
    fn answered_by_silence(&mut self, asked: i64) {
        self.attempts
            .retain(|a| a.latest_due.saturating_add(DRIVER_LOOK_SLACK) > asked);
    }

    /// At a driver restart: the old driver's watches are gone with it; the failed unloads it
    /// may not have answered yet become re-checks of the service's own.
    fn recheck_unanswered_watches(&mut self) {
        // The driver's watches of the previous start are gone with it: the
        // failed unloads it had not answered yet become re-checks of the
        // service's own, due when the driver would have looked.
        // (A run of only deferred unloads is no failure: nothing to re-check.)
        // Only watches the old driver may not have answered yet: due later than
        // [`DRIVER_LOOK_LATE`] before the last page that delivered all it had
        // numbered (review 22b, L2).
        // Judged by the run's latest watch, and the re-check due no earlier than it: the
        // driver may have watched only a retry (review 23b, H1).
        let answered_before = self.last_done_asked;
        for (latest_due, r) in std::mem::take(&mut self.attempts)
            .into_iter()
            .filter(|a| a.latest_due.saturating_add(DRIVER_LOOK_LATE) > answered_before)
            .filter_map(|a| a.recheck.map(|r| (a.latest_due, r)))
        {
            let r = Recheck {
                hive_id: 0,
                due: r.due.max(latest_due),
                ..r
            };
            if !self
                .rechecks
                .iter()
                .any(|x| x.failure.hive.eq_ignore_ascii_case(&r.failure.hive))
            {
                self.rechecks.push(r);
            }
        }
    }

    /// The request's timeout: the longest wait, or less when a re-check is due sooner.
    fn timeout_ms(&self) -> u32 {
        if self.opts.once {
            return 0;
        }
        let now = self.env.mono();
        let mut wait = self.opts.wait;
        if let Some(due) = self.rechecks.iter().map(|r| r.due).min() {
            let left = u64::try_from(due.saturating_sub(now)).unwrap_or(0);
            wait = wait.min(Duration::from_nanos(left.saturating_mul(100)));
        }
        wait_timeout_ms(wait).max(1)
    }

    /// Reads the stream on one connection until a wait brings nothing.
    fn drain(&mut self, t: &mut dyn Transport) -> Result<Drained, TransportError> {
        loop {
            if !(self.env.keep_going)() {
                return Ok(Drained::Stopped);
            }
            let timeout_ms = self.timeout_ms();
            let asked_at = self.env.clock.elapsed();
            let asked = self.env.mono();
            let page = match wait_events(t, self.after, timeout_ms, &mut self.buf) {
                Err(TransportError::Request {
                    code: ERROR_OPERATION_ABORTED,
                }) => return Ok(Drained::Stopped),
                other => other?,
            };
            self.read_mono = self.env.mono();
            self.read_wall = self.env.now();
            self.read_interrupt = self.env.interrupt.and_then(|f| f());
            let offset = i128::from(self.read_wall) - i128::from(self.read_mono);
            if (offset - i128::from(self.env.started_at)).abs() > CLOCK_STEP {
                self.wall_steady = false;
            }
            let since = page.prefix.tracking_since;
            match self.tracking_since {
                None => {
                    self.counts.connections += 1;
                    let e = FleetEvent::connected(since, false, self.env.now());
                    self.env.emit(&e, &mut self.counts);
                }
                Some(old) if old != since => {
                    let e = FleetEvent::restarted(old, since, self.after, self.env.now());
                    self.env.emit(&e, &mut self.counts);
                    if self.unavailable {
                        // Back after 1013: 1010 too, as the README's table promises ("again
                        // after 1013"); a query for a 1013 with no later 1010 would otherwise
                        // read this machine as still blind (audit 22b, L4).
                        self.counts.connections += 1;
                        let e = FleetEvent::connected(since, true, self.env.now());
                        self.env.emit(&e, &mut self.counts);
                    }
                    // Earlier sequence numbers meant the previous start: read from the start.
                    // Pending re-checks stay: they ask about the hive as it is now. Hive ids
                    // are numbered again from 1 at every start (`tracker/src/hives.rs`): the
                    // old id means nothing to the new driver, and another id for the same
                    // load read as "unloaded" (review 22b, H1). Without it, the load time
                    // tells (`same_load`).
                    self.after = 0;
                    for r in &mut self.rechecks {
                        r.hive_id = 0;
                    }
                    self.recheck_unanswered_watches();
                    self.tracking_since = Some(since);
                    self.unavailable = false;
                    continue;
                }
                Some(_) if self.unavailable => {
                    self.counts.connections += 1;
                    let e = FleetEvent::connected(since, true, self.env.now());
                    self.env.emit(&e, &mut self.counts);
                }
                Some(_) => {}
            }
            self.tracking_since = Some(since);
            self.unavailable = false;
            if page.prefix.missed > 0 {
                let e = FleetEvent::missed(page.prefix.missed, self.after, self.env.now());
                self.env.emit(&e, &mut self.counts);
            }
            let prefix = page.prefix;
            let asked_after = self.after;
            let mut progressed = false;
            for rec in &page.records {
                if rec.sequence <= self.after {
                    continue; // the driver must not repeat one; never report it twice
                }
                self.record(t, rec, &prefix);
                self.after = rec.sequence;
                progressed = true;
            }
            // The page's cursor accounts for the numbers it says missed, also those taken
            // after its last record (never stored: no memory, a full watch table). Asking
            // after the last record instead, every request was answered at once with the
            // same loss: a new 1011 every ~10 s until the next event (audit 22b, H1).
            self.after = self.after.max(page.next_after);
            if page.prefix.missed > 0 {
                self.lost_after_attempts(&page, asked_after);
            }
            if page.done {
                self.last_done_asked = asked;
                self.answered_by_silence(asked);
                // Only once the stream is drained: a record still to come on the next page
                // (the driver's held-after record) cancels a re-check. Found in review 22b
                // (M2): a loss on one page and the driver's record on the next gave two 1002.
                self.rechecks_due(t);
            }
            if !progressed {
                if !self.opts.once {
                    // A driver that answers before the timeout with nothing new (it should
                    // not) must not make the loop spin: wait out the rest here.
                    let asked = Duration::from_millis(u64::from(timeout_ms));
                    let waited = self.env.clock.elapsed().saturating_sub(asked_at);
                    if waited < asked / 2 {
                        self.env.pause(asked.saturating_sub(waited));
                    }
                }
                return Ok(Drained::Idle);
            }
        }
    }
}

/// Adds the kernel-only keys `u` to the event's holders: to the holder of the same pid if
/// there is one (the driver's records and the kernel's list name the same process), else as
/// a new holder. Returns whether it is a new holder. Found in review (2026-12-05): a pid in
/// both was listed twice and counted as two processes.
///
/// An entry whose image was left out (the process now at the pid was created after tracking
/// began: `client::process_after`) is another process than a holder the driver tracked under
/// that pid, and stays apart.
fn merge_untracked(holders: &mut Vec<EventHolder>, u: &crate::model::UntrackedHolder) -> bool {
    let same = |h: &&mut EventHolder| h.pid == u.pid && u.image.is_some();
    if let Some(h) = holders.iter_mut().find(same) {
        h.keys += u.open_keys;
        false
    } else {
        holders.push(EventHolder::new(u.pid, u.image.clone(), None, u.open_keys));
        true
    }
}

/// The holders of `mount` with their keys, and the keys' open-time stacks when the driver
/// has `CAP_STACKS` and some key carries one (the stacks and modules pages are read only
/// then); `None` when the hive is gone or cannot be asked about.
/// Whether processes the re-check could not see may also hold the hive. The kernel's list
/// of open keys (`NtQueryOpenSubKeysEx`, in the report as `untracked` holders) names every
/// opener of a key that still exists, but not the objects of a key deleted while open, which
/// still hold the hive (`Coverage::deleted_keys_unseen`: the hive was loaded before tracking
/// started, or opens were lost); without the list, only a complete report vouches for its
/// holders. Found in review (2026-12-05): the service's own 1002 always said
/// `HoldersUnseen` false; then (review 16) a profile loaded before the service, held only by
/// a key deleted while open, read as released.
fn holders_unseen(source: &crate::model::Source) -> bool {
    source.unseen
        || source.coverage.as_ref().map_or(!source.complete, |c| {
            (c.kernel_open_keys.is_none() && !source.complete) || c.deleted_keys_unseen
        })
}

/// Whether the hive now at a mount is the load a record is about ([`same_load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// The same load: the same driver id, or loaded no later than the record.
    Same,
    /// Loaded after the record: the failed load was unloaded since.
    Later,
    /// Cannot be told: the driver does not know when it was loaded (load time 0: seeded from
    /// the hive list after a driver restart, or loaded while the driver was down), no longer
    /// lists it, its hive list could not be read, the record has no time, or the system
    /// clock may have stepped between the two readings (review 24a, F2). Taken as the
    /// same load (a 1002 rather than silence), and the 1002 says it may be a later one.
    Unsure,
}

/// Whether `report` (the holders of a mount now) is about the load a record of hive id
/// `hive_id` (0: the driver did not know the hive, or it was another driver start's) at
/// FILETIME `time` is about: the same driver id says so; otherwise not loaded after `time`
/// when the driver's hive list says when it was loaded; [`Load::Unsure`] when that cannot be
/// told. Found in audit 22b (M7): a re-check asked by mount name only, and a later logon's
/// hive at the same mount was blamed for the failure. Found in review 22d (L4): an unknown
/// load time, or a hive list that could not be read (`.ok()`), counted as "the same load"
/// and the 1002 blamed what may be a later load's processes without saying so.
///
/// Another id alone never says "another load": ids are numbered from 1 at every driver
/// start, and within one the tracker makes a forgotten implicit or application hive again
/// under a new id (`tracker/src/hives.rs`). Found in review 22b (H1): a held hive's
/// re-check after a driver restart read as "unloaded", and no 1002 came.
///
/// The load time and `time` are two readings of the system clock: when the caller cannot
/// trust it between them (`clock_trusted` false: it stepped), their order says nothing and
/// the answer is [`Load::Unsure`], never "the same load" (review 24a, F2: a clock set back
/// made the next logon's load read as the failed one, its processes named with no doubt
/// said) nor "a later load" (which would leave a held hive without a 1002).
fn same_load(
    t: &mut dyn Transport,
    report: &HoldersReport,
    hive_id: u32,
    time: u64,
    clock_trusted: bool,
) -> Load {
    if hive_id != 0 && report.hive.id == hive_id {
        // Ids are never reused within a start (`tracker/src/hives.rs`: a counter).
        return Load::Same;
    }
    let Ok(hives) = Client::new(t).hive_load_times() else {
        return Load::Unsure;
    };
    match hives.into_iter().find(|x| x.0 == report.hive.id) {
        Some((_, l)) if l != 0 && time != 0 && clock_trusted => {
            if l <= time {
                Load::Same
            } else {
                Load::Later
            }
        }
        _ => Load::Unsure,
    }
}

fn hive_keys(t: &mut dyn Transport, mount: &str, now: u64) -> Result<HoldersReport> {
    let mut client = Client::new(t);
    // Who holds each key now (the system handle table) is not part of an event.
    client.held_now = false;
    let mut report = client.holders(mount, false, now)?;
    let has_stack = report
        .holders
        .iter()
        .flat_map(|h| &h.keys)
        .any(|k| k.stack_ref.id != 0);
    if has_stack
        && client
            .version()
            .is_ok_and(|v| v.has(VersionInfo::CAP_STACKS))
        && let Ok(table) = client.stack_table()
    {
        table.annotate(&mut report, &mut NoSymbols);
    }
    Ok(report)
}

/// Sets `e`'s key names (at most [`KEY_NAMES`], oldest first) and the modules that opened
/// `held`'s keys: attributed and ordered as `hivetrack modules` does for this one process,
/// a row whose stacks were all OS plumbing named `ntdll.dll (plumbing only)`. Only keys
/// opened at or before `until` (the record's time; a key whose open time is not known
/// stays): the holders are read when the service handles the record, which may be long
/// after it (a service started later reads the history), and a key opened since held
/// nothing then. Found in review (2026-12-05).
fn add_keys(e: &mut EventHolder, held: &Holder, until: u64) {
    let mut keys: Vec<&HeldKey> = held
        .keys
        .iter()
        .filter(|k| k.opened_at.as_ref().is_none_or(|t| t.filetime <= until))
        .collect();
    keys.sort_by_key(|k| k.opened_at.as_ref().map_or(u64::MAX, |t| t.filetime));
    e.key_names = keys
        .iter()
        .take(KEY_NAMES)
        .map(|k| {
            k.name
                .clone()
                .or_else(|| k.path.clone())
                .unwrap_or_else(|| "<name not recorded>".to_owned())
        })
        .collect();
    // (file name, every frame plumbing, keys), ranked as `hivetrack modules` ranks its
    // rows: most keys, callers before plumbing-only rows, then by name.
    let mut modules: Vec<(String, bool, u64)> = Vec::new();
    for k in &keys {
        let Some((frame, plumbing_only)) = k.stack.as_ref().and_then(caller) else {
            // No stack captured (or an empty one), or one that names no caller (a 32-bit
            // process's, or cut inside the plumbing): nothing to attribute.
            continue;
        };
        let name = crate::modules::frame_label(frame);
        match modules
            .iter_mut()
            .find(|(n, p, _)| *p == plumbing_only && n.eq_ignore_ascii_case(&name))
        {
            Some((_, _, n)) => *n += 1,
            None => modules.push((name, plumbing_only, 1)),
        }
    }
    modules.sort_by(|a, b| {
        (b.2, a.1)
            .cmp(&(a.2, b.1))
            .then_with(|| a.0.to_lowercase().cmp(&b.0.to_lowercase()))
    });
    e.modules = modules
        .into_iter()
        .map(|(n, plumbing_only, _)| {
            if plumbing_only {
                format!("{n} (plumbing only)")
            } else {
                n
            }
        })
        .collect();
}

/// Runs the service loop until `keep_going` turns false (or, with `once`, until the stream
/// has nothing more now). Returns the exit code: 0, or 2 with `once` when the driver's
/// stream could not be read.
///
/// # Errors
/// None today: every failure becomes an event; the signature leaves room for a sink that
/// must stop the service.
pub fn run(opts: ServiceOptions, env: &mut ServiceEnv<'_>) -> Result<(u8, Counts)> {
    let started_at = env.started_at;
    let mut l = Loop {
        env,
        opts,
        after: 0,
        tracking_since: None,
        unavailable: false,
        rechecks: Vec::new(),
        attempts: Vec::new(),
        read_mono: 0,
        read_wall: started_at,
        read_interrupt: None,
        wall_steady: true,
        last_done_asked: i64::MIN,
        buf: Vec::new(),
        counts: Counts::default(),
    };
    loop {
        if !(l.env.keep_going)() {
            return Ok((exit::OK, l.counts));
        }
        let reason = match (l.env.connect)() {
            Err(e) => e.to_string(),
            Ok(mut t) => match has_event_stream(t.as_mut()) {
                Ok(false) | Err(TransportError::Request { code: ERROR_INVALID_FUNCTION }) => {
                    "the installed hivetrack.sys has no event stream (no CAP_EVENTS in its version answer): install the driver from the same package as this client".to_owned()
                }
                Err(e) => e.to_string(),
                Ok(true) => match l.drain(t.as_mut()) {
                    Ok(Drained::Stopped) => return Ok((exit::OK, l.counts)),
                    Ok(Drained::Idle) if l.opts.once => return Ok((exit::OK, l.counts)),
                    Ok(Drained::Idle) => continue,
                    Err(TransportError::Request {
                        code: ERROR_INVALID_FUNCTION,
                    }) => "the installed hivetrack.sys does not answer IOCTL_HIVETRACK_WAIT_EVENTS: install the driver from the same package as this client".to_owned(),
                    Err(e) => e.to_string(),
                },
            },
        };
        l.unavailable(&reason);
        if l.opts.once {
            return Ok((exit::DRIVER_UNAVAILABLE, l.counts));
        }
        let retry = l.opts.retry;
        l.env.pause(retry);
    }
}

/// The interrupt-time count now (100 ns units since boot), `None` where it cannot be had.
///
/// As `QueryInterruptTime` reads it (Kernel32, else `KernelBase`: Windows 10 / Server 2016 and
/// later): the count `KeQueryInterruptTime` returns in the driver (Learn, "Interrupt Time").
/// `None` on another system, or where neither exports the routine (Wine 8).
#[cfg(windows)]
#[must_use]
pub fn interrupt_time_now() -> Option<u64> {
    crate::windows_interrupt_time::now()
}

/// The interrupt-time count now: none on this system (see the Windows build's).
#[cfg(not(windows))]
#[must_use]
pub const fn interrupt_time_now() -> Option<u64> {
    None
}

/// The wall clock now, as a FILETIME.
#[must_use]
pub fn filetime_now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_FILETIME + u64::try_from(since.as_nanos() / 100).unwrap_or(u64::MAX / 4)
}
