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
//!   [`DRIVER_LOOK_SLACK`] before a page that delivered everything, without its record, was
//!   answered "free" by the driver's silence: forgotten.
//! - An output refusing events (the Event Log service down, a full disk): event 1014.
//! - Holders are read only for the load of the mount the record names (its hive id; without
//!   one, a hive not loaded after the attempt): a later load is the failed one gone.
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
    /// False once the service is asked to stop.
    pub keep_going: &'a dyn Fn() -> bool,
}

impl ServiceEnv<'_> {
    fn now(&self) -> u64 {
        self.started_at
            + u64::try_from(self.clock.elapsed().as_nanos() / 100).unwrap_or(u64::MAX / 4)
    }

    /// Writes `event`. An output's refusal is said as event 1014 (audit 22b, M4: under the
    /// service manager the count was dropped): at the first refusal and then at most once an
    /// hour while they go on, to the outputs that accept it, and once the outputs accept an
    /// event again, to all of them (the Application log back after an outage learns what it
    /// lacks).
    fn emit(&mut self, event: &FleetEvent, stats: &mut Counts) {
        stats.events += 1;
        let now = self.now();
        match self.sink.emit(event) {
            Err(e) => {
                stats.sink_errors += 1;
                stats.unsaid_sink_errors += 1;
                stats.last_sink_error = Some(format!("{e:#}"));
                if stats
                    .sink_errors_said_at
                    .is_none_or(|t| now.saturating_sub(t) >= NOT_WRITTEN_EVERY)
                {
                    self.say_not_written(stats, now);
                }
            }
            Ok(()) if stats.unsaid_sink_errors > 0 => self.say_not_written(stats, now),
            Ok(()) => {}
        }
    }

    fn say_not_written(&mut self, stats: &mut Counts, now: u64) {
        let error = stats.last_sink_error.clone().unwrap_or_default();
        let e = FleetEvent::not_written(stats.unsaid_sink_errors, &error, now);
        stats.events += 1;
        stats.sink_errors_said_at = Some(now);
        match self.sink.emit(&e) {
            // Said everywhere.
            Ok(()) => stats.unsaid_sink_errors = 0,
            // Not to the refusing output: said again once it accepts an event.
            Err(_) => stats.sink_errors += 1,
        }
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
    /// Events written (or attempted).
    pub events: u64,
    /// Events a sink refused.
    pub sink_errors: u64,
    /// The last refusal, in words.
    pub last_sink_error: Option<String>,
    /// Connections that reached the driver's stream.
    pub connections: u64,
    /// Refused events not yet said by a 1014 that every output accepted.
    pub unsaid_sink_errors: u64,
    /// When (FILETIME) the last 1014 was written.
    pub sink_errors_said_at: Option<u64>,
}

/// While outputs keep refusing events, a 1014 at most this often (FILETIME units: an hour).
const NOT_WRITTEN_EVERY: u64 = 3600 * 10_000_000;

/// A failed unload waiting for its re-check.
struct Recheck {
    failure: UnloadFailure,
    user: Option<String>,
    /// FILETIME at which to ask.
    due: u64,
    /// The driver's id of the hive that failed to unload (0: it did not know it): a hive now
    /// at the mount with another id is a later load, not the one that failed (audit 22b, M7).
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
    /// The service's own re-check of the run's first failed attempt, due when the driver's
    /// watch is (the run's first attempt's time plus the delay the driver reported): run
    /// only if the driver restarts (its watches gone with it) before its held-after record
    /// came, or the stream lost a number taken after the attempt (its held-after record, or
    /// the watch the driver could not make: then due [`DRIVER_LOOK_SLACK`] later). `None`
    /// while the run has only deferred attempts (no failure to re-check), or once the
    /// re-check was handed to [`Loop::rechecks`].
    recheck: Option<Recheck>,
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
const DRIVER_LOOK_SLACK: u64 = 30 * SECOND;

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
    buf: Vec<u8>,
    counts: Counts,
}

impl Loop<'_, '_> {
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
    /// and modules from the hive's holders read once (as `hivetrack holders` has them), and
    /// that read, `None` when the hive is gone or cannot be asked about.
    fn record_holders(
        &self,
        t: &mut dyn Transport,
        rec: &StreamRecord,
    ) -> (Vec<EventHolder>, Option<HoldersReport>) {
        let now = self.env.now();
        // Only the load the record is about: a later load of the mount (the user's next
        // logon) holds nothing of it (audit 22b, M7).
        let report = hive_keys(t, &rec.mount, now)
            .ok()
            .filter(|r| same_load(t, r, rec.hive_id, rec.time));
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
        (holders, report)
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
            let (holders, report) = self.record_holders(t, rec);
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
                self.rechecks.push(Recheck {
                    failure,
                    user,
                    due: time + duration_filetime(self.opts.still_held_after),
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
        let recheck = |due: u64| {
            failed.map(|(failure, user)| Recheck {
                failure,
                user,
                due,
                hive_id: rec.hive_id,
                tracking_since: prefix.tracking_since,
            })
        };
        match self
            .attempts
            .iter_mut()
            .find(|a| a.hive.eq_ignore_ascii_case(&rec.mount))
        {
            Some(a) if a.time.saturating_add(delay) >= time => {
                // A retry within the run: the watch stays the first attempt's. A run begun
                // by a deferred unload gets its first failure as the re-check after a restart.
                if a.recheck.is_none() {
                    a.recheck = recheck(a.time.saturating_add(delay));
                }
            }
            found => {
                let attempt = Attempt {
                    hive: rec.mount.clone(),
                    sequence: rec.sequence,
                    time,
                    recheck: recheck(time.saturating_add(delay)),
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
        let (mut holders, report) = self.record_holders(t, rec);
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
            .filter(|a| a.time <= rec.time);
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
            held_for_secs: attempt
                .as_ref()
                .map_or(delay, |a| (rec.time - a.time) / SECOND),
            at_least: attempt.is_none(),
            failed_unload_sequence: attempt.as_ref().map(|a| a.sequence),
        };
        let user = user_sid(&rec.mount).and_then(|sid| self.env.accounts.account_of(sid));
        let mut e = FleetEvent::held_after(&held, user, holders);
        e.tracking_since = Time::from_filetime(prefix.tracking_since);
        self.env.emit(&e, &mut self.counts);
    }

    /// Asks again about every failed unload whose re-check is due.
    fn rechecks_due(&mut self, t: &mut dyn Transport) {
        let now = self.env.now();
        let (due, later): (Vec<Recheck>, Vec<Recheck>) = std::mem::take(&mut self.rechecks)
            .into_iter()
            .partition(|r| r.due <= now);
        self.rechecks = later;
        for r in due {
            let Some((holders, unseen)) = self.recheck(t, &r, now) else {
                continue; // unloaded (or another load of the mount now)
            };
            if holders.is_empty() && !unseen {
                continue; // free
            }
            let keys = holders.iter().map(|h| h.keys).sum();
            let since = now.saturating_sub(r.failure.time) / SECOND;
            let mut e =
                FleetEvent::still_held(&r.failure, r.user, holders, keys, since, now, unseen);
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
    fn recheck(
        &self,
        t: &mut dyn Transport,
        r: &Recheck,
        now: u64,
    ) -> Option<(Vec<EventHolder>, bool)> {
        let hive = r.failure.hive.as_str();
        let report = match hive_keys(t, hive, now) {
            Ok(report) if !same_load(t, &report, r.hive_id, r.failure.time) => return None,
            Ok(report) => report,
            Err(e) if matches!(e.downcast_ref(), Some(CliError::UnknownHive { .. })) => {
                return match t.kernel_open_keys(hive) {
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
                        let holders = by_pid
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
                        // 2026-12-05).
                        Some((holders, true))
                    }
                    // Not found: unloaded (not for an application hive, whose private
                    // namespace cannot be opened by name: `wait::is_app_hive`).
                    Some(Err(TransportError::Request {
                        code: ERROR_FILE_NOT_FOUND,
                    })) if !crate::wait::is_app_hive(hive) => None,
                    _ => Some((Vec::new(), true)),
                };
            }
            // Any other failure to ask (the driver restarting, an I/O error, a hive changing
            // between pages too often): whether it is still held cannot be told, and the
            // event says so. Until 2026-12-05 the re-check was dropped without a word, and
            // the missing 1002 read as "released" (found in review).
            Err(_) => return Some((Vec::new(), true)),
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
        Some((holders, holders_unseen(&report.source)))
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
                r.due = r.due.saturating_add(DRIVER_LOOK_SLACK);
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
    fn answered_by_silence(&mut self, prefix: &EventsPrefix) {
        let now = self.env.now();
        let delay = prefix.held_after_seconds.saturating_mul(SECOND);
        self.attempts.retain(|a| {
            a.time
                .saturating_add(delay)
                .saturating_add(DRIVER_LOOK_SLACK)
                > now
        });
    }

    /// The request's timeout: the longest wait, or less when a re-check is due sooner.
    fn timeout_ms(&self) -> u32 {
        if self.opts.once {
            return 0;
        }
        let now = self.env.now();
        let mut wait = self.opts.wait;
        if let Some(due) = self.rechecks.iter().map(|r| r.due).min() {
            wait = wait.min(Duration::from_nanos(
                due.saturating_sub(now).saturating_mul(100),
            ));
        }
        wait_timeout_ms(wait).max(1)
    }

    /// Reads the stream on one connection until a wait brings nothing.
    fn drain(&mut self, t: &mut dyn Transport) -> Result<Drained, TransportError> {
        loop {
            if !(self.env.keep_going)() {
                return Ok(Drained::Stopped);
            }
            self.rechecks_due(t);
            let timeout_ms = self.timeout_ms();
            let asked_at = self.env.clock.elapsed();
            let page = match wait_events(t, self.after, timeout_ms, &mut self.buf) {
                Err(TransportError::Request {
                    code: ERROR_OPERATION_ABORTED,
                }) => return Ok(Drained::Stopped),
                other => other?,
            };
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
                    // Pending re-checks stay: they ask about the hive as it is now.
                    self.after = 0;
                    // The driver's watches of the previous start are gone with it: the
                    // failed unloads it had not answered yet become re-checks of the
                    // service's own, due when the driver would have looked.
                    // (A run of only deferred unloads is no failure: nothing to re-check.)
                    for r in std::mem::take(&mut self.attempts)
                        .into_iter()
                        .filter_map(|a| a.recheck)
                    {
                        if !self
                            .rechecks
                            .iter()
                            .any(|x| x.failure.hive.eq_ignore_ascii_case(&r.failure.hive))
                        {
                            self.rechecks.push(r);
                        }
                    }
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
                self.answered_by_silence(&prefix);
            }
            if !progressed {
                if self.opts.once {
                    self.rechecks_due(t);
                } else {
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

/// Whether `report` (the holders of a mount now) is about the load a record of hive id
/// `hive_id` (0: the driver did not know the hive) at FILETIME `time` is about: the same
/// driver id when the record has one, and not loaded after `time` when the driver's hive
/// list says when it was loaded (a hive it no longer lists, or whose load time it does not
/// know, is taken as that load). Found in audit 22b (M7): a re-check asked by mount name
/// only, and a later logon's hive at the same mount was blamed for the failure.
fn same_load(t: &mut dyn Transport, report: &HoldersReport, hive_id: u32, time: u64) -> bool {
    if hive_id != 0 && report.hive.id != 0 && report.hive.id != hive_id {
        return false;
    }
    if hive_id != 0 {
        // Ids are never reused (`tracker/src/hives.rs`: taken from a counter): the id says it.
        return true;
    }
    let loaded_at = Client::new(t)
        .hive_load_times()
        .ok()
        .and_then(|h| h.into_iter().find(|x| x.0 == report.hive.id))
        .map(|x| x.1)
        .filter(|&l| l != 0);
    loaded_at.is_none_or(|l| time == 0 || l <= time)
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
    let mut l = Loop {
        env,
        opts,
        after: 0,
        tracking_since: None,
        unavailable: false,
        rechecks: Vec::new(),
        attempts: Vec::new(),
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

/// The wall clock now, as a FILETIME.
#[must_use]
pub fn filetime_now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_FILETIME + u64::try_from(since.as_nanos() / 100).unwrap_or(u64::MAX / 4)
}
