//! The replay: capture rows fed to the tracking engine, and the ledger that pairs closes
//! with opens and answers at unload attempts and process exits.
//!
//! Pairing is an inference: Procmon rows carry the key's path, not its handle (CSV has
//! only the Path column; PML registry events have the path in the detail structure), so a
//! `RegCloseKey` closes the most recent still-open successful open of the same path
//! (case-insensitive) in the same process. Two handles on one key in one process are
//! interchangeable for "who holds this hive" (same key, same process), so the inference can
//! misplace only which open's time and stack a remaining handle reports.
//!
//! Processes: a pid names one process from its `Process Start` row until the next one;
//! rows logged after `Process Exit` (the handle rundown Procmon records as the process's
//! closes) stay with the exiting process. Keys still open at `Process Exit` are its leaks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use tracker::{BLOCK_ALIGN, BlockClass, Config, Pool, ProcessKey, SpinLock, Token, Tracker};

use crate::csv::{CsvReader, DAY};
use crate::event::{Event, Frame, Op};
use crate::ledger::{Ledger, LedgerKey, Scope};
use crate::paths::{
    HkcuFrom, HkcuSids, UNKNOWN_USER, fold, hive_of, is_under, kernel_path, kernel_path_as,
    same_path, service_account_sid,
};
use crate::plumbing::{NO_MODULE, is_plumbing};
use crate::pml::PmlReader;
use crate::report::{
    Analysis, CaptureInfo, HiveHolders, Holder, Key, ProcessExit, SCHEMA, TrackerCheck,
    UnloadAttempt,
};
use crate::{CaptureError, Reader};

/// The system allocator as the tracker's pool.
pub struct Heap;

fn layout(class: BlockClass) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(class.size(), BLOCK_ALIGN)
        .unwrap_or_else(|_| unreachable!("block classes have valid layouts"))
}

// SAFETY: every block is allocated with its class's layout and freed with the same one.
unsafe impl Pool for Heap {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        // SAFETY: block classes have a non-zero size.
        NonNull::new(unsafe { std::alloc::alloc(layout(class)) })
    }
    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        // SAFETY: the caller passes a block `alloc` returned for this class.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout(class)) };
    }
}

/// Where to stop the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// After this row.
    Row(u64),
    /// After the last row at or before this time of day (100 ns ticks since midnight).
    TimeOfDay(u64),
}

impl At {
    /// `ROW` (a number) or a time of day (`h:mm:ss[.fffffff] [AM|PM]`).
    ///
    /// # Errors
    /// A message when `s` is neither.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(row) = s.trim().parse::<u64>() {
            return Ok(Self::Row(row));
        }
        crate::csv::parse_time_of_day(s)
            .map(Self::TimeOfDay)
            .ok_or_else(|| {
                format!("--at {s}: expected a row number or a time of day like 7:27:31.5 AM")
            })
    }
}

/// What to analyse and report.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The SIDs `HKCU` stands for (`--hkcu-sid SID` and `--hkcu-sid USER=SID`).
    pub hkcu: HkcuSids,
    /// Only this hive (a kernel path or Procmon abbreviation).
    pub hive: Option<String>,
    /// Only this pid.
    pub pid: Option<u32>,
    /// Stop here.
    pub at: Option<At>,
    /// The capture began at boot (Procmon's boot logging), so it saw every open: said by the
    /// user (`--from-boot`), who knows how it was taken; a capture cannot tell. Without it,
    /// keys opened before the capture's first row and never closed in it are in no row, so
    /// no answer is complete.
    pub from_boot: bool,
    /// The capture holds every event (said by the user, `--all-events`: a boot log saved
    /// whole, as Procmon's boot-log conversion writes it): stands in for the event numbers a
    /// PML or an unnumbered CSV export cannot show. Gaps the numbers do show still count.
    pub all_events: bool,
}

/// Why no capture that did not begin at boot is complete. Found in review (2026-12-05): an
/// analysis said `complete` when it saw no close of a key it never saw opened, though a key
/// opened before the capture and never closed in it (the profile case: a service holding a
/// key since logon) is in no row at all.
const BEFORE_CAPTURE: &str = "keys opened before the capture's first row and not closed in it \
    are in no row: any process running then may hold them. Capture from boot (Procmon: \
    Options > Enable Boot Logging) and pass --from-boot to vouch for every open";

struct Open {
    path: Arc<str>,
    row: u64,
    time: u64,
    create: bool,
    /// Placed by `--hkcu-sid USER=SID` (an `HKCU` row of that user): a guess, since Procmon
    /// shows the hive of the account that ran it as `HKCU`, whoever's process it is.
    guessed: bool,
    token: Option<Token>,
    object: u64,
    frames: Vec<Frame>,
}

struct Proc {
    key: ProcessKey,
    parent_pid: u32,
    image: Arc<str>,
    exited: bool,
}

/// A replay in progress.
pub struct Replay {
    opts: Options,
    tracker: Tracker<Heap, SpinLock>,
    procs: HashMap<u32, Proc>,
    open: Ledger<Open>,
    mounts: Vec<String>,
    next_object: u64,
    rows: u64,
    stopped: bool,
    out: Analysis,
    scratch: Vec<u16>,
    /// The `HKCU` mount per user, as worked out at the user's first `HKCU` row.
    hkcu_mounts: HashMap<Arc<str>, (String, HkcuFrom)>,
    /// Users whose `HKCU` was taken as the bare `--hkcu-sid`.
    hkcu_default_users: usize,
    /// Whether any row (replayed or not) had a time: `--at TIME` needs times.
    any_time: bool,
    /// After the `--at` point: keys opened since, per (pid, folded path), not yet closed.
    later: HashMap<(u32, String), u64>,
    /// After the `--at` point: keys of the ledger (open at the point) closed since.
    consumed: HashMap<(u32, String), usize>,
    /// Pids with a `Process Start` after the point (another process: the ledger's keys of
    /// that pid are not its own).
    restarted: std::collections::HashSet<u32>,
    /// The first close after the point of a key not open then: (pid, kernel path).
    first_close_after_at: Option<(u32, String)>,
    /// Procmon's event numbers: every row so far carried one, each above the one before.
    numbered: bool,
    /// The last row's event number.
    last_sequence: Option<u64>,
    /// Events the numbers skip (left out of the file), and the first run skipped.
    skipped_events: u64,
    first_skip: Option<(u64, u64)>,
    /// The last replayed row of each pid: an unload's own open of the hive root is the
    /// unloading process's row right before its `RegUnloadKey` ([`Replay::unload`]).
    last_row_of_pid: HashMap<u32, u64>,
    /// Ledger keys dropped at successful unloads of their hive ([`Replay::drop_stale`]), and
    /// the first such unload (mount, row).
    stale_at_unload: u64,
    first_stale: Option<(String, u64)>,
}

/// `path` is in Procmon's `HKCU` abbreviation.
fn is_hkcu(path: &str) -> bool {
    ["HKCU", "HKEY_CURRENT_USER"].iter().any(|p| {
        path.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
            && path.as_bytes().get(p.len()).is_none_or(|&b| b == b'\\')
    })
}

fn utf16_into(s: &str, out: &mut Vec<u16>) {
    out.clear();
    out.extend(s.encode_utf16());
}

impl Replay {
    /// A replay with `opts`.
    ///
    /// # Panics
    /// Never: the default tracker configuration is valid.
    #[must_use]
    pub fn new(opts: Options) -> Self {
        // The driver's default cap (1 Mi objects); opens beyond it are counted as not
        // recorded in `tracker.not_recorded`, the ledger keeps them all.
        let tracker = Tracker::new(Heap, Config::default()).expect("a valid tracker configuration");
        let out = Analysis {
            schema: SCHEMA.to_owned(),
            holders_known: true,
            capture: CaptureInfo {
                hkcu_sid: opts.hkcu.default.clone(),
                all_events_stated: opts.all_events,
                ..CaptureInfo::default()
            },
            ..Analysis::default()
        };
        Self {
            opts,
            tracker,
            procs: HashMap::new(),
            open: Ledger::default(),
            mounts: Vec::new(),
            next_object: 0x1000,
            rows: 0,
            stopped: false,
            out,
            scratch: Vec::new(),
            hkcu_mounts: HashMap::new(),
            hkcu_default_users: 0,
            any_time: false,
            later: HashMap::new(),
            consumed: HashMap::new(),
            restarted: std::collections::HashSet::new(),
            first_close_after_at: None,
            numbered: true,
            last_sequence: None,
            skipped_events: 0,
            first_skip: None,
            last_row_of_pid: HashMap::new(),
            stale_at_unload: 0,
            first_stale: None,
        }
    }

    /// Checks the row's event number against the last: a gap is events left out of the file
    /// (a filtered save or export, or events lost). A row without one, or out of order (rows
    /// sorted by another column), leaves the capture unable to show it is whole. Found in
    /// audit 20b (H2): a capture filtered to other processes' rows said "complete".
    fn sequence(&mut self, ev: &Event) {
        if !self.numbered {
            return;
        }
        let Some(s) = ev.sequence else {
            self.numbered = false;
            return;
        };
        match self.last_sequence {
            Some(last) if s <= last => self.numbered = false,
            Some(last) if s > last + 1 => {
                self.skipped_events += s - last - 1;
                self.first_skip.get_or_insert((last + 1, s - 1));
            }
            _ => {}
        }
        self.last_sequence = Some(s);
    }

    fn process(&mut self, ev: &Event) -> ProcessKey {
        let p = self.procs.entry(ev.pid).or_insert_with(|| Proc {
            key: ProcessKey {
                pid: u64::from(ev.pid),
                start_key: 1,
            },
            parent_pid: ev.parent_pid,
            image: Arc::clone(&ev.image),
            exited: false,
        });
        if p.parent_pid == 0 {
            p.parent_pid = ev.parent_pid;
        }
        let key = p.key;
        if !ev.image.is_empty() && p.image.is_empty() {
            p.image = Arc::clone(&ev.image);
        }
        key
    }

    /// The kernel path of a row's key; `HKCU` is placed per the row's process's user
    /// ([`HkcuSids::mount_for`]).
    fn kernel(&mut self, path: &str, user: &Arc<str>) -> Option<String> {
        let starts = |p: &str| {
            path.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if !starts("HKCU") && !starts("HKEY_CURRENT_USER") {
            return kernel_path_as(path, UNKNOWN_USER);
        }
        if !self.hkcu_mounts.contains_key(user) {
            // One user spelled another way (account names are case-insensitive) is the same
            // user: same mount, counted once.
            let known = self
                .hkcu_mounts
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(user))
                .map(|(_, v)| v.clone());
            if let Some(v) = known {
                self.hkcu_mounts.insert(Arc::clone(user), v);
            }
        }
        if !self.hkcu_mounts.contains_key(user) {
            let (mount, from) = self.opts.hkcu.mount_for(user);
            if !user.is_empty() {
                let shown = if from == HkcuFrom::Unknown {
                    "not given".to_owned()
                } else {
                    mount.trim_start_matches(r"\REGISTRY\USER\").to_owned()
                };
                self.out.capture.hkcu_users.insert(user.to_string(), shown);
                if from == HkcuFrom::Default {
                    self.hkcu_default_users += 1;
                }
            }
            self.hkcu_mounts
                .insert(Arc::clone(user), (mount.into_owned(), from));
        }
        let (mount, from) = &self.hkcu_mounts[user];
        if *from == HkcuFrom::Unknown {
            self.out.unknowns.hkcu_rows_without_sid += 1;
        }
        kernel_path_as(path, mount)
    }

    /// [`Self::kernel`] without counting the row (rows after the `--at` point).
    fn kernel_quiet(&self, path: &str, user: &Arc<str>) -> Option<String> {
        let starts = |p: &str| {
            path.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if !starts("HKCU") && !starts("HKEY_CURRENT_USER") {
            return kernel_path_as(path, UNKNOWN_USER);
        }
        let known = self.hkcu_mounts.get(user).or_else(|| {
            self.hkcu_mounts
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(user))
                .map(|(_, v)| v)
        });
        match known {
            Some((m, _)) => kernel_path_as(path, m),
            None => kernel_path_as(path, &self.opts.hkcu.mount_for(user).0),
        }
    }

    /// A row after the `--at` point: not replayed, but its opens and closes are paired as
    /// the ledger pairs them, to find closes of keys open at the point that the ledger does
    /// not have (opened before the capture). Found in review (2026-12-05): such a close
    /// after the point left an `--at` analysis "complete" while it proves a key the
    /// analysis does not list was open at the point.
    fn after_the_point(&mut self, ev: &Event) {
        match ev.op {
            Op::ProcessStart => {
                self.restarted.insert(ev.pid);
                self.later.retain(|(p, _), _| *p != ev.pid);
            }
            Op::OpenKey | Op::CreateKey if ev.success() => {
                if let Some(k) = self.kernel_quiet(&ev.path, &ev.user) {
                    *self.later.entry((ev.pid, fold(&k))).or_default() += 1;
                }
            }
            Op::CloseKey => {
                let Some(path) = self.kernel_quiet(&ev.path, &ev.user) else {
                    return;
                };
                let key = (ev.pid, fold(&path));
                if let Some(n) = self.later.get_mut(&key).filter(|n| **n > 0) {
                    *n -= 1;
                    return;
                }
                if !self.restarted.contains(&ev.pid) {
                    let start_key = self.procs.get(&ev.pid).map_or(1, |p| p.key.start_key);
                    let held = self
                        .open
                        .get(&(ev.pid, start_key, key.1.clone()))
                        .map_or(0, Vec::len);
                    let used = self.consumed.entry(key).or_default();
                    if *used < held {
                        *used += 1;
                        return;
                    }
                }
                self.out.unknowns.closes_after_at_without_open += 1;
                if self.first_close_after_at.is_none() {
                    self.first_close_after_at = Some((ev.pid, path));
                }
            }
            _ => {}
        }
    }

    fn skip(&mut self, ev: &Event) {
        if let Some(n) = self.out.unknowns.skipped.get_mut(ev.operation.as_str()) {
            *n += 1;
        } else {
            self.out.unknowns.skipped.insert(ev.operation.clone(), 1);
        }
    }

    /// Replays one row.
    pub fn event(&mut self, ev: &Event) {
        if ev.op == Op::CloseKey {
            self.out.unknowns.close_rows += 1;
        }
        self.out.capture.total_rows += 1;
        self.sequence(ev);
        if self.out.capture.first_time == 0 {
            // The capture's first row, replayed or not: `--at` before it replays nothing,
            // and the report says where the capture begins.
            self.out.capture.first_time = ev.time;
        }
        self.any_time |= ev.time != 0;
        if !self.stopped {
            let stop = match self.opts.at {
                Some(At::Row(r)) => ev.row > r,
                Some(At::TimeOfDay(t)) => ev.time % DAY > t,
                None => false,
            };
            if stop {
                self.stopped = true;
                self.out.capture.at_row = Some(self.rows);
            }
        }
        if self.stopped {
            self.after_the_point(ev);
            return;
        }
        self.rows += 1;
        self.out.capture.last_time = ev.time;
        match ev.op {
            Op::OpenKey | Op::CreateKey => self.opened(ev),
            Op::CloseKey => self.closed(ev),
            Op::LoadKey => self.loaded(ev),
            Op::UnloadKey => self.unload(ev),
            Op::ProcessStart => self.started(ev),
            Op::ProcessExit => self.exited(ev),
            Op::RenameKey => self.renamed(ev),
            Op::DeleteKey | Op::Other => self.skip(ev),
        }
        self.last_row_of_pid.insert(ev.pid, ev.row);
    }

    fn opened(&mut self, ev: &Event) {
        if !ev.success() {
            self.out.unknowns.failed_opens += 1;
            return;
        }
        let Some(path) = self.kernel(&ev.path, &ev.user) else {
            self.skip(ev);
            return;
        };
        let guessed = is_hkcu(&ev.path)
            && self
                .hkcu_mounts
                .get(&ev.user)
                .is_some_and(|(_, from)| *from == HkcuFrom::Named);
        let pk = self.process(ev);
        self.next_object += 0x10;
        let object = self.next_object;
        utf16_into(&path, &mut self.scratch);
        let token = self
            .tracker
            .opened(object, pk, 0, &self.scratch, 0, ev.time)
            .ok();
        let folded = fold(&path);
        self.open.push(
            (ev.pid, pk.start_key, folded),
            Open {
                path: Arc::from(path),
                row: ev.row,
                time: ev.time,
                create: ev.op == Op::CreateKey,
                guessed,
                token,
                object,
                frames: ev.frames.clone(),
            },
        );
    }

    fn closed(&mut self, ev: &Event) {
        let Some(path) = self.kernel(&ev.path, &ev.user) else {
            self.skip(ev);
            return;
        };
        let pk = self.process(ev);
        let folded = fold(&path);
        let k = (ev.pid, pk.start_key, folded);
        let popped = self.open.pop(&k);
        if let Some(o) = popped {
            if let Some(t) = o.token {
                self.tracker.handle_closed(t, o.object);
                self.tracker.object_destroyed(t, o.object);
            }
        } else {
            let u = &mut self.out.unknowns;
            u.closes_without_open += 1;
            if u.closes_without_open_sample.len() < 20 {
                u.closes_without_open_sample.push(path);
            }
        }
    }

    fn loaded(&mut self, ev: &Event) {
        let Some(mount) = self.kernel(&ev.path, &ev.user) else {
            self.skip(ev);
            return;
        };
        if !ev.success() {
            return;
        }
        utf16_into(&mount, &mut self.scratch);
        let file: Vec<u16> = ev.hive_file.encode_utf16().collect();
        self.tracker.hive_loaded(&self.scratch, &file, ev.time);
        if !self.mounts.iter().any(|m| same_path(m, &mount)) {
            self.mounts.push(mount);
        }
    }

    fn unload(&mut self, ev: &Event) {
        let Some(mount) = self.kernel(&ev.path, &ev.user) else {
            self.skip(ev);
            return;
        };
        // The unload's own open of the hive's root: `NtUnloadKey2`/`NtUnloadKeyEx` open it
        // themselves, "a private kernel mode handle just to take a reference on the object"
        // (Windows Research Kernel `base/ntos/config/ntapi.c`), through a parse with
        // `CreateOperation` (`cmparse.c` CmpParseKey), so registry filters (Procmon among
        // them) see a create of the mount on the unloading thread right before the unload,
        // and its close after it (kernel-emulator/README.md, `td-unload-sequence`). It is
        // the unload's, not a holder's: the live tracker leaves it out the same way
        // (tracker/src/tracker.rs `unload_attempted_with`, `collect_holders`). Found in
        // audit 21d (H2): the replay named the unloader as the holder at every unload, so a
        // failed unload whose real holder the capture cannot see read as complete, and a
        // successful one had a holder. Taken as that open: the unloading process's row
        // right before the `RegUnloadKey` (rows carry no thread in a CSV) when it is a
        // successful open of exactly the mount still in the ledger; it stays in the ledger
        // for the `RegCloseKey` that follows.
        let pk = self.process(ev);
        let own_key = (ev.pid, pk.start_key, fold(&mount));
        let previous = self.last_row_of_pid.get(&ev.pid).copied();
        let own = self.open.pop_if(&own_key, |o| Some(o.row) == previous);
        utf16_into(&mount, &mut self.scratch);
        self.tracker.unload_attempted_with(
            &self.scratch,
            ev.status.unwrap_or_else(|| u32::from(!ev.success())),
            // A capture has no interrupt time: the record is not stamped.
            (ev.time, 0),
            own.as_ref().and_then(|o| o.token.map(|t| (t, o.object, 0))),
        );
        let folded_mount = fold(&mount);
        let holders = self.holders(&folded_mount, |p| is_under(&mount, p));
        // Whether the capture saw any key open in the hive, whoever's: with `--pid`, keys of
        // other processes are not this answer's holders, but they are keys the capture saw,
        // so the sentence below would be false (audit 21d, L3).
        let seen = !holders.is_empty()
            || (self.opts.pid.is_some()
                && !self
                    .holders_of(
                        Scope::Under(&folded_mount),
                        |_| true,
                        |o| is_under(&mount, &o.path),
                    )
                    .is_empty());
        let own_row = own.as_ref().map(|o| o.row);
        if let Some(o) = own {
            self.open.push(own_key.clone(), o);
        }
        let (mut missing, maybe_holders) = self.hkcu_unseen(&mount);
        if !ev.success() && !seen && maybe_holders.is_empty() {
            // Windows says the hive is in use, yet no key the capture saw is open in it: the
            // holders are keys it could not see.
            missing.push(format!(
                "the unload failed ({}) with no key the capture saw open in the hive: its \
                 holders {}",
                ev.result,
                if self.opts.from_boot {
                    "hold duplicated or inherited handles, or opened keys in rows the capture \
                     left out"
                } else {
                    "opened their keys before the capture started (or hold duplicated or \
                     inherited handles)"
                }
            ));
        }
        if ev.success() && !holders.is_empty() {
            missing.push(
                "Windows unloaded the hive, so no key of it was open, yet the replay had the \
                 keys listed here open: their closes are in no row (or were paired with \
                 another open of the same path), so the holders listed are not holders"
                    .to_owned(),
            );
        }
        if ev.success() {
            self.drop_stale(&mount, &own_key, own_row, ev.row);
            utf16_into(&mount, &mut self.scratch);
            self.tracker.hive_unloaded(&self.scratch);
            self.mounts.retain(|m| !same_path(m, &mount));
        }
        if self.wanted_hive(&mount) {
            self.out.unload_attempts.push(UnloadAttempt {
                row: ev.row,
                time: ev.time,
                hive: mount,
                pid: ev.pid,
                image: ev.image.to_string(),
                result: ev.result.clone(),
                succeeded: ev.success(),
                holders,
                // Settled in `finish`, which knows the whole capture.
                complete: false,
                missing,
                maybe_holders,
            });
        }
    }

    /// Windows unloaded `mount` at `row`: no key object of the hive was left (WRK
    /// `base/ntos/config/cmapi.c` `CmUnloadKey`: "Make sure there are no open references to
    /// key control blocks for this hive", else `STATUS_CANNOT_DELETE`; with
    /// `REG_FORCE_UNLOAD`, "mark open handles as invalid": handles that hold no hive), so
    /// ledger entries still under it are
    /// stale: their closes are in no row, or were paired with another open of the same
    /// path. They are dropped, except the unload's own open, which its `RegCloseKey` closes,
    /// and counted for a note. Found in audit 21d (L3): they showed as held at the end and,
    /// after a reload, as holders of a later unload attempt.
    fn drop_stale(&mut self, mount: &str, own_key: &LedgerKey, own_row: Option<u64>, row: u64) {
        let tracker = &self.tracker;
        let mut dropped = 0u64;
        let folded = fold(mount);
        self.open.retain(Scope::Under(&folded), |k, o| {
            let own = k == own_key && Some(o.row) == own_row;
            if own || !is_under(mount, &o.path) {
                return true;
            }
            if let Some(t) = o.token {
                tracker.handle_closed(t, o.object);
                tracker.object_destroyed(t, o.object);
            }
            dropped += 1;
            false
        });
        if dropped > 0 {
            self.stale_at_unload += dropped;
            self.first_stale
                .get_or_insert_with(|| (mount.to_owned(), row));
        }
    }

    /// A successful `RegRenameKey`: keys open at and under the old path are the same key
    /// objects under the new one, and Procmon's later rows (their closes) name the new path.
    /// The new name is the last component's (or, if it has a backslash, a whole path). Found
    /// in audit 21d (L3): skipped, such a key's close was a close without an open and the
    /// key stayed held.
    fn renamed(&mut self, ev: &Event) {
        let (Some(old), true) = (self.kernel(&ev.path, &ev.user), ev.success()) else {
            self.skip(ev);
            return;
        };
        let new = if ev.hive_file.contains('\\') {
            self.kernel(&ev.hive_file, &ev.user)
        } else {
            old.rfind('\\')
                .filter(|_| !ev.hive_file.is_empty())
                .map(|i| format!("{}\\{}", &old[..i], ev.hive_file))
        };
        let Some(new) = new else {
            self.skip(ev);
            return;
        };
        let old_folded = fold(&old);
        let moved = self.open.keys(Scope::Under(&old_folded));
        // Every moved key is taken out before any is put back: a new name under the old one
        // (a whole path as the new name, which `NtRenameKey` refuses but a crafted row can
        // carry) would otherwise land on a key still to be visited and move twice (review
        // 22f, L1).
        let taken: Vec<_> = moved
            .into_iter()
            .filter_map(|k| self.open.remove(&k).map(|opens| (k, opens)))
            .collect();
        let mut touched = Vec::new();
        for (k, opens) in taken {
            let rest = k.2.get(old_folded.len()..).unwrap_or("");
            for mut o in opens {
                let tail = if is_under(&old, &o.path) {
                    let n = old.chars().count();
                    o.path
                        .char_indices()
                        .nth(n)
                        .map_or("", |(i, _)| &o.path[i..])
                } else {
                    rest
                };
                o.path = Arc::from(format!("{new}{tail}"));
                // The key is the fold of the path it holds (what the ledger's path index
                // rests on, crate::ledger).
                let key = (k.0, k.1, fold(&o.path));
                self.open.push(key.clone(), o);
                if touched.last() != Some(&key) {
                    touched.push(key);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for key in &touched {
            self.open.sort_by_key(key, |o| o.row);
        }
    }

    fn started(&mut self, ev: &Event) {
        // A `Process Start` begins a new process for this pid (a reused pid is another one).
        let start_key = self.procs.get(&ev.pid).map_or(1, |p| p.key.start_key + 1);
        let key = ProcessKey {
            pid: u64::from(ev.pid),
            start_key,
        };
        self.procs.insert(
            ev.pid,
            Proc {
                key,
                parent_pid: ev.parent_pid,
                image: Arc::clone(&ev.image),
                exited: false,
            },
        );
        utf16_into(&ev.image, &mut self.scratch);
        self.tracker.process_started(key, &self.scratch);
    }

    fn exited(&mut self, ev: &Event) {
        let key = self.process(ev);
        if let Some(p) = self.procs.get_mut(&ev.pid) {
            p.exited = true;
        }
        let pid = ev.pid;
        let mut held = self.holders_of(
            Scope::Process(pid, key.start_key),
            |(p, s, _)| *p == pid && *s == key.start_key,
            |_| true,
        );
        if let Some(mut holder) = held.pop() {
            holder.exited = true;
            if self.opts.pid.is_none_or(|p| p == pid) {
                self.out.exits.push(ProcessExit {
                    row: ev.row,
                    time: ev.time,
                    holder,
                });
            }
        }
        self.tracker.process_exited(key);
    }

    /// Whether `--hive` (if given) names `mount`. `HKCU` rows are placed per user (the bare
    /// `--hkcu-sid`, `--hkcu-sid USER=SID`, or a placeholder hive per user), so an `HKCU`
    /// filter matches the `HKCU` hive of every user whose rows were replayed, never only one.
    fn wanted_hive(&self, mount: &str) -> bool {
        let Some(h) = self.opts.hive.as_deref() else {
            return true;
        };
        let names = |k: Option<String>| k.is_some_and(|k| same_path(&k, mount));
        if names(kernel_path(h, self.opts.hkcu.default.as_deref())) {
            return true;
        }
        let starts = |p: &str| h.get(..p.len()).is_some_and(|x| x.eq_ignore_ascii_case(p));
        (starts("HKCU") || starts("HKEY_CURRENT_USER"))
            && self
                .hkcu_mounts
                .values()
                .any(|(m, _)| names(kernel_path_as(h, m)))
    }

    /// What the ledger cannot place in the user hive `mount`: keys open now in the `HKCU`
    /// hive of a user whose SID was not given (a placeholder mount), which are in `mount`
    /// if it is that user's. One sentence per such user, saying how to place them, and the
    /// processes holding them. Found in review (2026-12-05): without `--hkcu-sid` an unload
    /// of `HKU\<SID>` showed no holders, as if complete, while the user's own processes
    /// held its keys under the placeholder.
    ///
    /// The SID is not inferred from `HKU\S-1-5-21-…` rows: a process may open any user's
    /// hive (the profile service opens every one), and Procmon shows the hive of the account
    /// that ran it as `HKCU` ([`crate::paths`]), so an `HKU\<SID>` row names another hive. A
    /// service's `HKCU` rows are never placed in its own well-known hive (audit 21d, H1: a
    /// SYSTEM svchost's `HKCU` key was filed under S-1-5-18 and an unload of the user's hive
    /// said "complete, nobody holds it"); they are among these.
    fn hkcu_unseen(&self, mount: &str) -> (Vec<String>, Vec<Holder>) {
        const USERS: &str = r"\REGISTRY\USER\";
        const CLASSES: &str = "_Classes";
        let Some(name) = mount
            .get(..USERS.len())
            .filter(|p| p.eq_ignore_ascii_case(USERS))
            .and_then(|_| mount.get(USERS.len()..))
        else {
            return (Vec::new(), Vec::new());
        };
        let hive = name.split('\\').next().unwrap_or(name);
        if hive.is_empty() || hive.starts_with('<') {
            return (Vec::new(), Vec::new());
        }
        let classes = hive.len() > CLASSES.len()
            && hive.is_char_boundary(hive.len() - CLASSES.len())
            && hive[hive.len() - CLASSES.len()..].eq_ignore_ascii_case(CLASSES);
        let sid = if classes {
            &hive[..hive.len() - CLASSES.len()]
        } else {
            hive
        };
        // `get`, not slicing: a mount name is any text (`HKU\テスト`), and byte 4 may fall
        // inside a character (audit 21d, H3: a panic at every unload of such a hive).
        let target = format!("{USERS}{sid}");
        let sid = if sid.len() > 4 && sid.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("S-1-")) {
            sid
        } else {
            "S-1-5-21-…"
        };
        // One user per placeholder (a user spelled two ways shares one), in a stable order.
        let mut unknown: BTreeMap<&str, &str> = BTreeMap::new();
        for (user, (m, from)) in &self.hkcu_mounts {
            if *from == HkcuFrom::Unknown {
                let u = unknown.entry(m.as_str()).or_insert(user);
                if user.as_ref() < *u {
                    *u = user;
                }
            }
        }
        let mut missing = Vec::new();
        let mut maybe = Vec::new();
        for (m, user) in unknown {
            let placeholder = if classes {
                format!("{m}{CLASSES}")
            } else {
                m.to_owned()
            };
            let held = self.holders(&fold(&placeholder), |p| is_under(&placeholder, p));
            if held.is_empty() {
                continue;
            }
            let n: u64 = held.iter().map(|h| h.open_keys).sum();
            let what = if classes {
                r"HKCU\Software\Classes"
            } else {
                "HKCU"
            };
            let whose = if user.is_empty() {
                "held by processes whose user the capture does not name".to_owned()
            } else if let Some(own) = service_account_sid(user) {
                format!(
                    "of {user} (a service: its HKCU rows are not its own hive {own}, which \
                     Procmon shows as HKU\\{own}, but the hive of the account that ran Procmon \
                     or of a user its thread impersonates)"
                )
            } else {
                format!("of {user}")
            };
            missing.push(format!(
                "{n} {what} key(s) {whose} may be in this hive: Procmon shows the hive of the \
                 account that ran it as HKCU, and its SID was not given; pass --hkcu-sid {sid} \
                 if {sid} is that account's (`whoami /user` as that account on the capturing \
                 machine shows it) to place them"
            ));
            maybe.extend(held);
        }
        self.guessed_elsewhere(&target, classes, &mut missing, &mut maybe);
        maybe.sort_by(|a, b| b.open_keys.cmp(&a.open_keys).then(a.pid.cmp(&b.pid)));
        (missing, maybe)
    }

    /// Keys `--hkcu-sid USER=SID` placed in another user hive than `target` (the unloaded or
    /// asked-for hive, `\REGISTRY\USER\<name>` without `_Classes`): Procmon's `HKCU` is the
    /// hive of the account that ran it, whoever's process the row is, so the per-user
    /// placement is the caller's guess, and the key may be in `target` instead. Adds one
    /// sentence per such user to `missing` and its holders to `maybe`.
    fn guessed_elsewhere(
        &self,
        target: &str,
        classes: bool,
        missing: &mut Vec<String>,
        maybe: &mut Vec<Holder>,
    ) {
        const USERS: &str = r"\REGISTRY\USER\";
        const CLASSES: &str = "_Classes";
        let mut named: BTreeMap<String, &str> = BTreeMap::new();
        for (user, (m, from)) in &self.hkcu_mounts {
            if *from == HkcuFrom::Named && !same_path(m, target) {
                let u = named.entry(fold(m)).or_insert(user);
                if user.as_ref() < *u {
                    *u = user;
                }
            }
        }
        let want_pid = self.opts.pid;
        // Keys the guess placed in `target` itself are listed as its holders, but rest on the
        // same guess: the list is not vouched for (review 21b, L6).
        let here = if classes {
            format!("{target}{CLASSES}")
        } else {
            target.to_owned()
        };
        let placed_here = self.holders_of(
            Scope::Under(&fold(&here)),
            |(p, _, _)| want_pid.is_none_or(|w| w == *p),
            |o| o.guessed && is_under(&here, &o.path),
        );
        if !placed_here.is_empty() {
            let n: u64 = placed_here.iter().map(|h| h.open_keys).sum();
            missing.push(format!(
                "{n} HKCU key(s) listed were placed in this hive by a --hkcu-sid USER=SID \
                 guess: Procmon shows the hive of the account that ran it as HKCU, whoever's \
                 process the row is, so they may be in another hive; pass the bare \
                 --hkcu-sid SID of that account to place every HKCU row"
            ));
        }
        for (m, user) in named {
            let placed = if classes {
                format!("{m}{CLASSES}")
            } else {
                m.clone()
            };
            let held = self.holders_of(
                Scope::Under(&fold(&placed)),
                |(p, _, _)| want_pid.is_none_or(|w| w == *p),
                |o| o.guessed && is_under(&placed, &o.path),
            );
            if held.is_empty() {
                continue;
            }
            let n: u64 = held.iter().map(|h| h.open_keys).sum();
            let shown = m.get(USERS.len()..).unwrap_or(&m);
            missing.push(format!(
                "{n} HKCU key(s) of {user}, placed in {shown}'s hive by --hkcu-sid \
                 {user}=…, may be in this hive instead: Procmon shows the hive of the account \
                 that ran it as HKCU, whoever's process the row is; pass the bare --hkcu-sid \
                 SID of that account to place every HKCU row"
            ));
            maybe.extend(held);
        }
    }

    /// Holders names no one: `why` says so in [`Analysis::refusal`], every holder list is
    /// emptied.
    fn refuse(&mut self, why: &str) {
        self.out.holders_known = false;
        match &mut self.out.refusal {
            Some(r) => {
                r.push(' ');
                r.push_str(why);
            }
            None => self.out.refusal = Some(why.to_owned()),
        }
        for a in &mut self.out.unload_attempts {
            a.holders.clear();
            a.maybe_holders.clear();
            a.missing.clear();
        }
        self.out.exits.clear();
        self.out.open.clear();
    }

    /// Refuses to name holders at an `--at` the capture cannot place: a time in a capture
    /// without times (every row would be replayed), or a point before its first row
    /// (nothing would be, and "nothing held" would read as free).
    fn refuse_at(&mut self) {
        match self.opts.at {
            Some(At::TimeOfDay(_)) if !self.any_time => self.refuse(
                "--at TIME cannot be placed: the capture's rows have no times (a CSV export \
                 without the Time of Day column, or not in Procmon's en-US format), so every row \
                 was replayed. Give --at a row number instead.",
            ),
            Some(at) if self.rows == 0 && self.out.capture.total_rows > 0 => {
                let first = self.out.capture.first_time;
                let why = match at {
                    At::Row(r) => format!("--at {r}: nothing was replayed"),
                    At::TimeOfDay(t) => format!(
                        "--at {} is before the capture's first row (at {}): nothing was \
                         replayed",
                        time_of_day(t),
                        time_of_day(first % DAY)
                    ),
                };
                self.refuse(&format!(
                    "{why}, so no holder is known at that point. Give an --at at or after the \
                     first row."
                ));
            }
            _ => {}
        }
    }

    /// Rows left out of the file (audit 20b, H2): whose keys they opened, nobody knows. Sets
    /// [`CaptureInfo::events_missing`], adds the analysis-wide reason to `missing` and
    /// returns the one for each unload attempt, if any.
    fn left_out(&mut self, missing: &mut Vec<String>) -> Option<String> {
        let numbered = self.numbered && self.out.capture.total_rows > 0;
        self.out.capture.events_missing = numbered.then_some(self.skipped_events);
        if numbered && self.skipped_events > 0 {
            let first = match self.first_skip.unwrap_or_default() {
                (a, b) if a == b => format!("event {a}"),
                (a, b) => format!("events {a} to {b}"),
            };
            missing.push(format!(
                "{n} event(s) are not in the capture: its Sequence numbers skip them (the first: \
                 {first}), so it was saved or exported with a filter (Procmon's File > Save keeps \
                 only the events the current filter shows unless All events is chosen), or \
                 events were lost; keys opened in the rows left out (other processes', or \
                 other paths') are not listed and may hold any hive. Save All events and keep \
                 the Sequence column in the CSV export",
                n = self.skipped_events
            ));
            Some(format!(
                "{} event(s) are not in the capture (Sequence gaps): keys opened in them and \
                 still open at this row are not listed",
                self.skipped_events
            ))
        } else if self.opts.from_boot && !self.opts.all_events {
            missing.push(format!(
                "{}, so it cannot show it holds every event: a capture saved or exported with a \
                 filter (Procmon's File > Save keeps only the events the current filter shows \
                 unless All events is chosen) leaves out other processes' rows, whose keys may \
                 hold any hive. --from-boot vouches for where the capture begins, not for \
                 what was left out of it: pass --all-events if it was saved whole",
                if self.out.capture.format == "pml" {
                    "a PML file carries no event numbers (procmon-parser, docs/PML Format.md)"
                } else if numbered {
                    // Review 20b (R4): Procmon's help describes the Sequence Number as the
                    // position among the events the current filter includes, so a filtered
                    // export may be numbered without gaps; and rows cut from its start or end
                    // leave none either.
                    "the CSV export's Sequence numbers show no gap, but a filtered export may \
                     be numbered without gaps (Procmon numbers the events its filter shows), \
                     and rows cut from its start or end leave none"
                } else {
                    "the CSV export's rows carry no Sequence numbers in order (no Sequence \
                     column; n/a, as Procmon writes for a log loaded from a file; or rows \
                     sorted by another column)"
                }
            ));
            Some(
                "the capture cannot show it holds every event (no event numbers): keys opened \
                 in rows a filter left out are not listed"
                    .to_owned(),
            )
        } else {
            None
        }
    }

    /// Settles [`Analysis::complete`] and [`Analysis::missing`], and each unload attempt's.
    fn settle_completeness(&mut self) {
        let mut missing = Vec::new();
        if let Some(r) = &self.out.refusal {
            missing.push(format!("holders are not named: {r}"));
        }
        for a in &self.out.unload_attempts {
            for m in &a.missing {
                missing.push(format!("unload of {} at row {}: {m}", a.hive, a.row));
            }
        }
        let end = self.out.capture.at_row.unwrap_or(self.rows);
        if self.out.holders_known
            && let Some(h) = self.opts.hive.as_deref()
            && let Some(target) = kernel_path(h, self.opts.hkcu.default.as_deref())
        {
            for m in self.hkcu_unseen(&target).0 {
                missing.push(format!("open at row {end} in {target}: {m}"));
            }
        }
        // Before the borrow of the unknowns below; its reason comes first.
        let left_out = self.left_out(&mut missing);
        let u = &self.out.unknowns;
        if let Some((pid, path)) = &self.first_close_after_at {
            missing.push(format!(
                "{} RegCloseKey row(s) after the --at point close keys not opened by then \
                 (e.g. {path} by pid {pid}): keys opened before the capture started, open at \
                 row {end} and not listed. Start Procmon before the workload to see their opens",
                u.closes_after_at_without_open
            ));
        }
        let closes = u.closes_without_open + u.closes_after_at_without_open;
        if !self.opts.from_boot {
            missing.push(BEFORE_CAPTURE.to_owned());
        }
        if u.closes_without_open > 0 {
            missing.push(format!(
                "{} RegCloseKey row(s) close keys the capture never saw opened (e.g. {}): \
                 keys opened before the capture started (or handles duplicated or inherited); \
                 such keys not closed in the capture are not listed and may hold any hive. \
                 Start Procmon before the workload (Options > Enable Boot Logging for a logon \
                 or logoff) to see their opens",
                u.closes_without_open,
                u.closes_without_open_sample
                    .first()
                    .map_or("", String::as_str)
            ));
        }
        for a in &mut self.out.unload_attempts {
            // Windows unloaded the hive: nothing held it at that row, seen or not.
            let unloaded = a.succeeded && a.holders.is_empty();
            if unloaded && self.out.holders_known {
                a.missing.clear();
                a.complete = true;
                continue;
            }
            if !self.out.holders_known {
                a.missing
                    .insert(0, "holders are not named (see refusal)".to_owned());
            }
            if let Some(m) = &left_out {
                a.missing.push(m.clone());
            }
            if closes > 0 {
                a.missing.push(format!(
                    "{closes} close(s) without an open show keys opened before the capture \
                     started; those still open at this row are not listed"
                ));
            } else if !self.opts.from_boot {
                a.missing.push(
                    "keys opened before the capture started and still open at this row are \
                     not listed (a capture from boot, analysed with --from-boot, has them)"
                        .to_owned(),
                );
            }
            a.complete = a.missing.is_empty();
        }
        self.out.complete = missing.is_empty();
        self.out.missing = missing;
    }

    /// Holders of keys at or under `folded` (a folded path) whose path `keep` accepts.
    fn holders(&self, folded: &str, keep: impl Fn(&str) -> bool) -> Vec<Holder> {
        let want_pid = self.opts.pid;
        self.holders_of(
            Scope::Under(folded),
            |(p, _, _)| want_pid.is_none_or(|w| w == *p),
            |o| keep(&o.path),
        )
    }

    /// Holders among ledger entries in `scope` passing `process` and `open`, most keys
    /// first.
    fn holders_of(
        &self,
        scope: Scope<'_>,
        process: impl Fn(&LedgerKey) -> bool,
        open: impl Fn(&Open) -> bool,
    ) -> Vec<Holder> {
        let mut by: BTreeMap<(u32, u64), Holder> = BTreeMap::new();
        for (k, opens) in self.open.walk(scope) {
            if !process(k) {
                continue;
            }
            for o in opens.iter().filter(|o| open(o)) {
                let h = by.entry((k.0, k.1)).or_insert_with(|| {
                    let p = self.procs.get(&k.0).filter(|p| p.key.start_key == k.1);
                    Holder {
                        pid: k.0,
                        instance: k.1,
                        parent_pid: p.map_or(0, |p| p.parent_pid),
                        image: p.map_or_else(String::new, |p| p.image.to_string()),
                        exited: p.is_some_and(|p| p.exited),
                        open_keys: 0,
                        keys: Vec::new(),
                    }
                });
                h.open_keys += 1;
                h.keys.push(key_of(o));
            }
        }
        let mut v: Vec<Holder> = by.into_values().collect();
        for h in &mut v {
            h.keys
                .sort_by(|a, b| (a.row, &a.path).cmp(&(b.row, &b.path)));
        }
        v.sort_by(|a, b| b.open_keys.cmp(&a.open_keys).then(a.pid.cmp(&b.pid)));
        v
    }

    /// Ends the replay: what is open per hive, the completeness verdict, the tracker's
    /// counts.
    #[must_use]
    pub fn finish(mut self, path: &str, format: &str) -> Analysis {
        path.clone_into(&mut self.out.capture.path);
        format.clone_into(&mut self.out.capture.format);
        self.out.capture.rows = self.rows;
        // One entry per hive: key names are case-insensitive, and a capture spells one
        // implicit hive's prefix several ways (`SOFTWARE`, `Software`, `software` in
        // procmon-parser's Windows 10 capture); the first spelling met names it.
        let mut hives: BTreeMap<String, String> = BTreeMap::new();
        for opens in self.open.values() {
            for o in opens {
                let h = hive_of(&o.path, &self.mounts);
                // Folded as key names compare (`fold`), not ASCII-only: `ÄPP` and `äpp` are
                // one hive (review 22f, L2).
                hives.entry(fold(h)).or_insert_with(|| h.to_owned());
            }
        }
        for hive in hives.into_values() {
            if !self.wanted_hive(&hive) {
                continue;
            }
            let mounts = &self.mounts;
            let holders = self.holders(&fold(&hive), |p| same_path(hive_of(p, mounts), &hive));
            if holders.is_empty() {
                continue;
            }
            self.out.open.push(HiveHolders {
                open_keys: holders.iter().map(|h| h.open_keys).sum(),
                hive,
                holders,
            });
        }
        self.out
            .open
            .sort_by(|a, b| b.open_keys.cmp(&a.open_keys).then(a.hive.cmp(&b.hive)));
        let u = &mut self.out.unknowns;
        u.notes.push(
            "handles obtained without an open row (duplicated with DuplicateHandle, inherited \
             by a child process) are not in any capture; their closes count as closes without \
             opens"
                .to_owned(),
        );
        u.notes.push(
            "closes are paired with the most recent open of the same key path in the same \
             process (Procmon rows carry paths, not handle values)"
                .to_owned(),
        );
        if let Some((mount, row)) = &self.first_stale {
            u.notes.push(format!(
                "{} key(s) the replay had open in hives Windows then unloaded (the first: {mount} \
                 at row {row}) were dropped there: a successful unload shows no key of the hive \
                 was left, so their closes are in no row (or were paired with another open of \
                 the same path); they are not listed as held",
                self.stale_at_unload
            ));
        }
        if u.hkcu_rows_without_sid > 0 {
            u.notes.push(format!(
                "{} HKCU rows were not placed in a hive: Procmon shows the hive of the account \
                 that ran it as HKCU (whichever process's row it is: a SYSTEM service's HKCU \
                 row is that account's hive, or an impersonated user's, not S-1-5-18); pass \
                 --hkcu-sid SID with that account's SID to place them",
                u.hkcu_rows_without_sid
            ));
        }
        if self.hkcu_default_users > 0 {
            let users: Vec<&str> = self
                .out
                .capture
                .hkcu_users
                .iter()
                .filter(|(_, sid)| Some(sid.as_str()) == self.opts.hkcu.default.as_deref())
                .map(|(u, _)| u.as_str())
                .collect();
            u.notes.push(format!(
                "HKCU rows of {} user(s) ({}) were taken as the hive of --hkcu-sid's {}, the \
                 account that ran Procmon (Procmon shows that account's hive as HKCU in every \
                 process's rows, services' included); a thread impersonating another user \
                 may have meant that user's hive, which no capture shows",
                users.len(),
                users.join(", "),
                self.opts.hkcu.default.as_deref().unwrap_or("")
            ));
        }
        if u.close_rows == 0 {
            self.refuse(
                "the capture has no RegCloseKey rows at all, so it was filtered (or Procmon \
                 dropped them): every open would look held. Capture again without a filter on \
                 Operation (Filter > Reset Filter, keep registry events) to name holders.",
            );
        }
        self.refuse_at();
        self.settle_completeness();
        let s = self.tracker.stats();
        let disagreements = self.holders_disagreements();
        self.out.tracker = TrackerCheck {
            objects_tracked: s.objects_tracked,
            hives_tracked: s.hives_tracked,
            processes_tracked: s.processes_tracked,
            not_recorded: s.not_recorded(),
            holders_agree: disagreements.is_empty(),
            disagreements,
        };
        self.out
    }

    /// Sets the ledger's holders of every hive with open keys against the tracker's holders
    /// answer for it: (pid, instance, key object) in both, or a line saying what differs.
    fn holders_disagreements(&self) -> Vec<String> {
        type Held = std::collections::BTreeSet<(u64, u64, u64)>;
        let mut ledger: BTreeMap<String, Held> = BTreeMap::new();
        for (k, opens) in self.open.walk(Scope::All) {
            for o in opens {
                // Grouped as `finish` groups them: by the fold key names compare with.
                let hive = fold(hive_of(&o.path, &self.mounts));
                let id = o.token.map_or(0, |t| t.0);
                ledger
                    .entry(hive)
                    .or_default()
                    .insert((u64::from(k.0), k.1, id));
            }
        }
        let mut out = Vec::new();
        let mut units = Vec::new();
        for (hive, held) in &ledger {
            utf16_into(hive, &mut units);
            let answer = self.tracker_holders(&units);
            if answer.as_ref() != Some(held) {
                let answer = answer.unwrap_or_default();
                let only_report = held.difference(&answer).count();
                let only_tracker = answer.difference(held).count();
                out.push(format!(
                    "{hive}: {only_report} key(s) only in the report, {only_tracker} only in the tracker's answer"
                ));
            }
            if out.len() == 20 {
                break;
            }
        }
        out
    }

    /// The tracker's holders answer for the hive containing `path`, paged as the CLI pages
    /// the driver's: (pid, start key, key id) of every key; `None` when it knows no such hive.
    fn tracker_holders(&self, path: &[u16]) -> Option<std::collections::BTreeSet<(u64, u64, u64)>> {
        use protocol::holders::{HolderRecord, Holders};
        use protocol::page::Page;
        let mut buf = vec![0u8; 64 * 1024];
        let mut cursor = protocol::cursor::Cursor::START;
        let mut out = std::collections::BTreeSet::new();
        loop {
            let n = self.tracker.holders(path, &cursor, 0, 0, &mut buf).ok()?;
            let page = protocol::wire::decode::<Page<'_, Holders>>(&buf[..n]).ok()?;
            let mut process = (0, 0);
            for rec in page.records() {
                match rec {
                    HolderRecord::Process(p) => process = (p.pid, p.start_key),
                    HolderRecord::Key(k) => {
                        out.insert((process.0, process.1, k.id));
                    }
                }
            }
            if page.info.done() {
                return Some(out);
            }
            cursor = page.info.next;
        }
    }

    /// Keys open in the ledger now (memory is proportional to these).
    #[must_use]
    pub fn open_keys(&self) -> usize {
        self.open.values().map(Vec::len).sum()
    }

    /// Ledger keys visited by the replay's walks so far (each unload's, rename's and
    /// process exit's, and the end's): the work the tests bound by the size of the answers
    /// (review 21b, L5).
    #[must_use]
    pub const fn ledger_visits(&self) -> u64 {
        self.open.visited().get()
    }
}

/// 100 ns ticks since midnight as `h:mm:ss.fffffff` (the form `--at` takes, 24-hour).
fn time_of_day(ticks: u64) -> String {
    let s = ticks / 10_000_000;
    format!(
        "{}:{:02}:{:02}.{:07}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ticks % 10_000_000
    )
}

fn frame_text(f: &Frame) -> String {
    f.module.as_deref().map_or_else(
        || format!("{:#x}", f.address),
        |m| {
            let name = m.rsplit('\\').next().unwrap_or(m);
            format!("{name}+{:#x}", f.offset)
        },
    )
}

/// The code that asked for the key, as the live `hivetrack modules` attributes it: the
/// innermost user-mode frame outside the OS registry plumbing, a frame in no known module
/// counting as code ([`NO_MODULE`]); when every frame is plumbing, the innermost frame's
/// module, marked plumbing only. Found in review (2026-12-05): frames in no module were
/// skipped (attributing JIT code's opens to whatever module called it), an all-plumbing
/// stack showed as "(no stack)", and the list lacked the shell's registry helpers.
fn attribution(frames: &[Frame]) -> (Option<String>, bool) {
    let mut user = frames.iter().filter(|f| !f.kernel).peekable();
    let innermost = user.peek().map(|f| f.module.clone());
    let asked = user.find(|f| f.module.as_deref().is_none_or(|m| !is_plumbing(m)));
    let name = |m: Option<&str>| Some(m.unwrap_or(NO_MODULE).to_owned());
    asked.map_or_else(
        || innermost.map_or((None, false), |m| (name(m.as_deref()), true)),
        |f| (name(f.module.as_deref()), false),
    )
}

fn key_of(o: &Open) -> Key {
    let (module, plumbing_only) = attribution(&o.frames);
    Key {
        path: o.path.to_string(),
        row: o.row,
        time: o.time,
        operation: if o.create {
            "RegCreateKey"
        } else {
            "RegOpenKey"
        }
        .to_owned(),
        module,
        plumbing_only,
        stack: o.frames.iter().map(frame_text).collect(),
    }
}

/// Replays every row of `reader`.
///
/// # Errors
/// [`CaptureError`] when a row cannot be read.
pub fn replay(reader: &mut dyn Reader, replay: &mut Replay) -> Result<(), CaptureError> {
    let mut ev = Event::default();
    while reader.next_event(&mut ev)? {
        replay.event(&ev);
    }
    Ok(())
}

/// Opens `path` (PML by its signature, else CSV) and analyses it.
///
/// # Errors
/// [`CaptureError`] when the file cannot be read as a capture.
pub fn analyze_file(path: &Path, opts: Options) -> Result<Analysis, CaptureError> {
    let mut reader = open(path)?;
    let mut r = Replay::new(opts);
    replay(reader.as_mut(), &mut r)?;
    Ok(r.finish(&path.display().to_string(), reader.format()))
}

/// A reader for the capture at `path`: PML when it starts with `PML_`, else CSV.
///
/// # Errors
/// [`CaptureError`] when it cannot be opened.
pub fn open(path: &Path) -> Result<Box<dyn Reader>, CaptureError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    if n == 4 && &magic == b"PML_" {
        Ok(Box::new(PmlReader::open(path)?))
    } else {
        let f = std::io::BufReader::with_capacity(1 << 18, std::fs::File::open(path)?);
        Ok(Box::new(CsvReader::new(f)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(module: Option<&str>, kernel: bool) -> Frame {
        Frame {
            address: 0x7ff0_0000_1000,
            module: module.map(Arc::from),
            offset: 0x10,
            kernel,
        }
    }

    #[test]
    fn keys_are_attributed_as_the_live_modules_report_does() {
        let nt = frame(Some(r"C:\Windows\System32\ntdll.dll"), false);
        let shlwapi = frame(Some(r"C:\Windows\System32\SHLWAPI.dll"), false);
        let app = frame(Some(r"C:\Program Files\Contoso\agent.exe"), false);
        let jit = frame(None, false);
        let kernel = frame(Some(r"\SystemRoot\System32\ntoskrnl.exe"), true);
        let code = |m: &str| (Some(m.to_owned()), false);
        // The first frame outside the plumbing, kernel frames aside.
        assert_eq!(
            attribution(&[kernel.clone(), nt.clone(), shlwapi.clone(), app.clone()]),
            code(r"C:\Program Files\Contoso\agent.exe")
        );
        // JIT code (no module) asked: it is not skipped for its caller.
        assert_eq!(attribution(&[nt.clone(), jit, app]), code(NO_MODULE));
        // Plumbing only: the innermost frame's module, said as such.
        assert_eq!(
            attribution(&[kernel.clone(), nt, shlwapi]),
            (Some(r"C:\Windows\System32\ntdll.dll".to_owned()), true)
        );
        // No user-mode stack at all.
        assert_eq!(attribution(&[kernel]), (None, false));
        assert_eq!(attribution(&[]), (None, false));
    }
}
