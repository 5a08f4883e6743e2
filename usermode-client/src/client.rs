//! The query client: paged queries through a [`Transport`], turned into reports.
//!
//! It sends `QueryRequest`s, follows cursors page by
//! page (growing the output buffer when the driver says one record does not fit), checks
//! the protocol version of every answer, and turns the pages into the owned reports of
//! [`crate::model`].

use anyhow::{Context, Result, bail};
use protocol::capture::{CaptureOp, CaptureRequest, CaptureScope, CaptureState};
use protocol::completeness::Completeness;
use protocol::cursor::Cursor;
use protocol::history::UnloadHistory;
use protocol::hives::{HiveRecord, Hives};
use protocol::holders::{
    HiveKind, HiveState, HolderKey, HolderProcess, HolderRecord, Holders, HoldersPrefix,
};
use protocol::ioctl::{IOCTL_HIVETRACK_CAPTURE, IOCTL_HIVETRACK_GET_VERSION, query_ioctl};
use protocol::modules::{Module, ModuleRecord, Modules};
use protocol::page::{Page, PageKind};
use protocol::processes::{ProcessRecord, Processes};
use protocol::request::{QueryKind, QueryRequest};
use protocol::snapshot::{Snapshot, SnapshotRecord};
use protocol::stacks::{StackRecord, Stacks};
use protocol::stats::Stats;
use protocol::text::Text;
use protocol::version::VersionInfo;
use protocol::wire::{self, DecodeError, HEADER_LEN, Message};

use crate::commands::{CliError, classify};
use crate::hive_name::display;
use crate::model::{
    Counter, HeldKey, Hive, HivesReport, Holder, HoldersReport, HoldersVerdict, Identity,
    KernelOnlyProcess, ProcessEntry, ProcessesReport, ShortCount, SnapshotFile, SnapshotKey,
    Source, StatsReport, Time, UnloadAttempt, UnloadHistoryReport, UnloadHolder, age_secs,
    ntstatus_name, schema,
};
use crate::stacks::{LoadedModule, Stack, StackTable};
use crate::transport::{
    ERROR_FILE_NOT_FOUND, ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA, Transport, TransportError,
};

/// First output buffer of a query.
pub const INITIAL_BUFFER: usize = 64 * 1024;
/// Largest output buffer the client grows to before giving up.
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;
/// Most pages one query may take (a driver that never says "done" is an error, not a hang).
pub const MAX_PAGES: usize = 1_000_000;

/// A client over one transport.
pub struct Client<'t> {
    transport: &'t mut dyn Transport,
    buf: Vec<u8>,
    /// Largest output buffer to grow to.
    pub max_buffer: usize,
    /// Whether `holders` asks who holds each key now (the system handle table); off for
    /// reports that do not show it (`modules`).
    pub held_now: bool,
}

/// A pass over the pages of one query.
struct Pass<'q> {
    kind: QueryKind,
    hive: &'q [u16],
    flags: u16,
    max_records: u32,
}

fn text(t: Text<'_>) -> String {
    t.to_string()
}

fn opt_text(t: Text<'_>) -> Option<String> {
    (!t.is_empty()).then(|| t.to_string())
}

/// The state of a hive whose deferred unload (`NtUnloadKeyEx` with an event) is pending.
pub const UNLOAD_PENDING: &str = "unload-pending";

/// The state of a hive Windows no longer has loaded.
pub const UNLOADED: &str = "unloaded";

const fn state_name(s: HiveState) -> &'static str {
    match s {
        HiveState::Loaded => "loaded",
        HiveState::Implicit => "implicit",
        HiveState::Unloaded => UNLOADED,
        HiveState::UnloadPending => UNLOAD_PENDING,
    }
}

const fn kind_name(k: HiveKind) -> &'static str {
    match k {
        HiveKind::Regular => "regular",
        HiveKind::App => "app",
    }
}

fn hive_of(rec: &HiveRecord<'_>) -> Hive {
    let path = text(rec.mount);
    Hive {
        id: rec.id,
        name: display(&path),
        path,
        file: opt_text(rec.file),
        file_truncated: rec.flags & HiveRecord::FILE_TRUNCATED != 0,
        state: state_name(rec.state).to_owned(),
        kind: kind_name(rec.kind).to_owned(),
        open_keys: rec.open_keys,
        holders: rec.holders,
        loaded_at: Time::from_filetime(rec.loaded_time),
        account: None,
        counts_complete: None,
    }
}

/// Ranks processes as reports show them: most open keys first, ties by pid, then start key.
fn rank(processes: &mut [ProcessEntry]) {
    processes.sort_by_key(|p| (std::cmp::Reverse(p.open_keys), p.pid, p.start_key));
}

fn process_of(r: &ProcessRecord<'_>) -> ProcessEntry {
    ProcessEntry {
        pid: r.pid,
        start_key: r.start_key,
        image: if r.flags & ProcessRecord::IMAGE_MISSING == 0 {
            opt_text(r.image)
        } else {
            None
        },
        image_truncated: r.flags & ProcessRecord::IMAGE_TRUNCATED != 0,
        exited: r.flags & ProcessRecord::EXITED != 0,
        open_keys: r.open_keys,
        hives: r.hives,
        identity: Identity::default(),
    }
}

/// What a report cannot say when the refused processes could not be named (`why`): which
/// processes' key counts are lower bounds (review 23d, L5: it said nothing, as when none was).
fn unnamed_short_counts(not_recorded: u64, why: &str) -> String {
    format!(
        "which process the {not_recorded} open(s) not recorded belong to, so whose key count is a lower bound ({why})"
    )
}

fn holder_of(p: &HolderProcess<'_>, now: u64) -> Holder {
    Holder {
        pid: p.pid,
        start_key: p.start_key,
        image: if p.flags & HolderProcess::IMAGE_MISSING == 0 {
            opt_text(p.image)
        } else {
            None
        },
        image_truncated: p.flags & HolderProcess::IMAGE_TRUNCATED != 0,
        exited: p.flags & HolderProcess::EXITED != 0,
        wow64: p.flags & HolderProcess::WOW64 != 0,
        open_keys: p.open_keys,
        oldest_open: Time::from_filetime(p.oldest_open),
        oldest_age_secs: age_secs(p.oldest_open, now),
        keys: Vec::new(),
        key_counts: Vec::new(),
        identity: Identity::default(),
    }
}

/// Leaves out the image of an untracked holder when the process now at its pid cannot be
/// shown to be the one the kernel names ([`process_after`]). Found in review (2026-12-05):
/// such keys were attributed to whatever process had the pid now (the opener may be long
/// gone: a kernel-mode handle from a filter driver, or a process that passed its handle on).
fn not_the_opener(report: &mut HoldersReport, c: &Completeness, t: &mut dyn Transport) {
    for u in &mut report.untracked {
        if process_after(t, u.pid, c.tracking_since) {
            u.image = None;
        }
    }
}

/// Whether the live process at `pid` was created after tracking began (`tracking_since`, a
/// FILETIME; 0: unknown): then it cannot be proven the opener of a key only the kernel lists
/// under that pid. With nothing lost such a key was opened before tracking began, so that
/// process reused the pid; with opens lost it may be the opener of a lost open, or not —
/// either way its image is not the key's opener's for certain, so it is left out (the
/// report says "image unknown"). Until 2026-12-05 a lost open let any image through
/// unmarked (found in review).
pub(crate) fn process_after(t: &mut dyn Transport, pid: u64, tracking_since: u64) -> bool {
    tracking_since != 0 && t.process_started(pid).is_some_and(|s| s > tracking_since)
}

/// Sets the hive's `open_keys` and `holders` in a holders report to every key open in it
/// and every process holding one: the driver's and the kernel's alone (`untracked`). The
/// driver's side is the larger of its page's counters and the holders it listed: the
/// counters are read before the walk that lists the holders, so an open in between is
/// listed while the counters still say 0. Found in review (2026-12-05): a hive held only by
/// keys opened before tracking said `open_keys` 0 ("0 open key(s) held by 0 process(es)"),
/// and `wait` took the counters for "free" while a holder was listed.
fn count_held(report: &mut HoldersReport) {
    let listed_keys: u64 = report.holders.iter().map(|h| h.open_keys).sum();
    let listed = u32::try_from(report.holders.len()).unwrap_or(u32::MAX);
    let untracked: u64 = report.untracked.iter().map(|u| u.open_keys).sum();
    let more = report
        .untracked
        .iter()
        .filter(|u| !report.holders.iter().any(|h| h.pid == u.pid))
        .map(|u| u.pid)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let hive = &mut report.hive;
    hive.open_keys = hive.open_keys.max(listed_keys).saturating_add(untracked);
    hive.holders = hive
        .holders
        .max(listed)
        .saturating_add(u32::try_from(more).unwrap_or(u32::MAX));
}

fn key_of(k: &HolderKey<'_>, now: u64) -> HeldKey {
    let path = if k.flags & HolderKey::NAME_MISSING == 0 {
        opt_text(k.name)
    } else {
        None
    };
    HeldKey {
        id: k.id,
        name: path.as_deref().map(display),
        path,
        name_truncated: k.flags & HolderKey::NAME_TRUNCATED != 0,
        deleted: k.flags & HolderKey::KEY_DELETED != 0,
        opened_at: Time::from_filetime(k.open_time),
        age_secs: age_secs(k.open_time, now),
        thread: (k.thread != 0).then_some(k.thread),
        access: k.access,
        access_names: crate::access::names(k.access),
        handle_opens: k.handle_opens,
        handle_closes: k.handle_closes,
        held_now_by: None,
        stack: None,
        stack_ref: crate::model::StackRef {
            id: k.stack,
            flags: k.flags
                & (HolderKey::STACK_EMPTY
                    | HolderKey::STACK_DROPPED
                    | HolderKey::STACK_OUT_OF_SCOPE),
        },
    }
}

/// A hive of the driver's listing, as `holders` needs it.
struct ListedHive {
    id: u32,
    mount: String,
    /// When the driver saw it loaded (FILETIME; 0: not known).
    loaded_time: u64,
    app: bool,
    /// An unloaded hive the driver still lists holds nothing.
    state: HiveState,
}

/// Whether the driver saw hive `id` loaded at or after `since` (a FILETIME; 0: tracking is
/// off), by its listing `hives`: then every key object of it was opened while tracking ran.
/// An application hive is never vouched for (as in [`Client::hives`]), nor one the listing
/// does not have.
fn loaded_since(hives: &[ListedHive], id: u32, since: u64) -> bool {
    since != 0
        && hives
            .iter()
            .find(|h| h.id == id)
            .is_some_and(|h| !h.app && h.loaded_time != 0 && h.loaded_time >= since)
}

/// Sets each key's holders now from `found`; the coverage to report.
fn attach_held_now(
    holders: &mut [Holder],
    found: Result<crate::holder_now::HeldNow, String>,
    image_of: &mut dyn FnMut(u64) -> Option<String>,
) -> crate::model::HeldNowCoverage {
    match found {
        Ok(now) => {
            for k in holders.iter_mut().flat_map(|h| h.keys.iter_mut()) {
                k.held_now_by = Some(now.by_id.get(&k.id).cloned().unwrap_or_default());
            }
            let mut others: Vec<u64> = holders
                .iter()
                .flat_map(|h| {
                    h.keys
                        .iter()
                        .flat_map(|k| k.held_now_by.iter().flatten().copied())
                        .filter(move |&p| p != h.pid)
                })
                .collect();
            others.sort_unstable();
            others.dedup();
            crate::model::HeldNowCoverage {
                handles_examined: now.examined,
                handles_not_examined: now.not_examined,
                handles_other_hives: now.other_hives,
                error: None,
                processes: others
                    .into_iter()
                    .map(|pid| crate::model::HeldNowProcess {
                        pid,
                        image: image_of(pid),
                    })
                    .collect(),
            }
        }
        Err(why) => crate::model::HeldNowCoverage {
            handles_examined: 0,
            handles_not_examined: 0,
            handles_other_hives: 0,
            error: Some(why),
            processes: Vec::new(),
        },
    }
}

impl<'t> Client<'t> {
    /// A client over `transport`.
    pub fn new(transport: &'t mut dyn Transport) -> Self {
        Self {
            transport,
            buf: vec![0u8; INITIAL_BUFFER],
            max_buffer: MAX_BUFFER,
            held_now: true,
        }
    }

    /// The backend's name.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.transport.backend()
    }

    /// The transport, for requests the client does not wrap (`wait_free`).
    pub fn transport(&mut self) -> &mut dyn Transport {
        self.transport
    }

    /// The source line of a report with `not_recorded` dropped events.
    #[must_use]
    pub fn source(&self, not_recorded: u64) -> Source {
        Source::new(
            self.transport.backend(),
            not_recorded,
            self.transport.missing(),
        )
    }

    /// The scope of a listing (`processes`, `hives`, `snapshot`) from the driver: when its
    /// live tracking began (the event stream's prefix, asked with no wait), or that it is off
    /// (`stats`' `tracking_status`, or no start time): then the listing records nothing, and
    /// is not complete. Found in review (2026-12-04): with tracking off, the listings said
    /// "complete". A backend that cannot say (the driverless fallback, an older driver)
    /// leaves the source as it is.
    fn scope(&mut self, source: &mut Source) -> Option<u64> {
        if self.transport.backend() == crate::fallback::BACKEND {
            return None;
        }
        let status = self.stats().ok().and_then(|s| {
            s.counters
                .iter()
                .find(|c| c.name == "tracking_status")
                .map(|c| c.value)
        });
        let prefix = crate::event_stream::stream_prefix(&mut *self.transport);
        let since = prefix.as_ref().ok().map(|prefix| prefix.tracking_since);
        match (status, since) {
            (Some(s), _) if s != 0 => {
                #[allow(clippy::cast_possible_truncation, reason = "an NTSTATUS in a u64")]
                let why = crate::model::ntstatus_name(s as u32)
                    .map_or_else(|| format!("{s:#010x}"), str::to_owned);
                source.cannot_see(format!(
                    "any open: live tracking is off ({why}; `hivetrack stats`)"
                ));
            }
            (_, Some(0)) => source.cannot_see("any open: live tracking has not started".to_owned()),
            (_, Some(t)) => {
                source.tracking_since = Time::from_filetime(t);
                return Some(t);
            }
            // Since when the listing holds every open cannot be said: keys opened before
            // tracking began may be missing from it. Until 2026-12-06 this left the source
            // complete, with no caveat, whenever the request failed (the driver refuses it
            // while its 32 waits are taken; audit 20b, L1).
            (_, None) => {
                let why = prefix.err().map_or_else(String::new, |e| format!(": {e}"));
                source.cannot_see(format!(
                    "keys opened before tracking started (when it started could not be read: \
                     the driver's event stream refused the request{why}); `hivetrack holders` \
                     on a hive also asks the kernel's list"
                ));
            }
        }
        None
    }

    /// Sends one request, growing the output buffer while the driver says it is too small;
    /// returns the answer's length in `self.buf`, its protocol version checked.
    fn call(&mut self, code: u32, input: &[u8]) -> Result<usize> {
        loop {
            match self.transport.ioctl(code, input, &mut self.buf) {
                Ok(n) => {
                    let n = n.min(self.buf.len());
                    let answer = &self.buf[..n];
                    if answer.len() >= HEADER_LEN
                        && let Err(DecodeError::UnsupportedVersion { found }) =
                            wire::decode_header(answer)
                    {
                        return Err(CliError::VersionMismatch { driver: found }.into());
                    }
                    return Ok(n);
                }
                Err(TransportError::Request {
                    code: ERROR_INSUFFICIENT_BUFFER | ERROR_MORE_DATA,
                }) if self.buf.len() < self.max_buffer => {
                    let grown = (self.buf.len() * 4).min(self.max_buffer);
                    self.buf.resize(grown, 0);
                }
                Err(e @ TransportError::Request { code: 1 }) => {
                    return Err(classify(e).context(format!(
                        "the driver does not answer control code {code:#010x}: is the installed hivetrack.sys older than this client?"
                    )));
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    fn decode<'b, M: Message<'b>>(buf: &'b [u8]) -> Result<M> {
        wire::decode::<M>(buf)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the driver sent a malformed answer")
    }

    /// Walks every page of `pass`, handing each to `f` until it returns false; returns the
    /// largest `not_recorded` seen.
    fn pages<K: PageKind>(
        &mut self,
        pass: &Pass<'_>,
        mut f: impl FnMut(&Page<'_, K>) -> Result<bool>,
    ) -> Result<u64> {
        let code = query_ioctl(pass.kind);
        let mut cursor = Cursor::START;
        let mut not_recorded = 0;
        let mut input = vec![0u8; 128 + 2 * pass.hive.len()];
        for _ in 0..MAX_PAGES {
            let req = QueryRequest {
                query: pass.kind,
                flags: pass.flags,
                max_records: pass.max_records,
                cursor,
                hive: Text::Units(pass.hive),
            };
            let n = wire::encode(&req, &mut input).map_err(|e| anyhow::anyhow!("{e}"))?;
            let len = match self.call(code, &input[..n]) {
                Err(e)
                    if pass.kind == QueryKind::Holders
                        && matches!(
                            e.downcast_ref::<TransportError>(),
                            Some(TransportError::Request {
                                code: ERROR_FILE_NOT_FOUND
                            })
                        ) =>
                {
                    return Err(CliError::UnknownHive {
                        hive: String::from_utf16_lossy(pass.hive),
                        backend: self.transport.backend(),
                    }
                    .into());
                }
                other => other?,
            };
            let page = Self::decode::<Page<'_, K>>(&self.buf[..len])?;
            not_recorded = not_recorded.max(page.info.not_recorded);
            let more = f(&page)?;
            if page.info.done() || !more {
                return Ok(not_recorded);
            }
            if page.info.next == cursor || page.is_empty() {
                bail!(
                    "the driver sent a malformed answer: a page that is not the last one made no progress"
                );
            }
            cursor = page.info.next;
        }
        bail!("the driver sent a malformed answer: more than {MAX_PAGES} pages")
    }

    /// Holders of the hive at NT path `hive`; `summary_only` leaves out the keys. `now` is
    /// the client's clock (FILETIME) for ages.
    ///
    /// # Errors
    /// Transport failures, an unknown hive, a malformed answer.
    #[allow(
        clippy::too_many_lines,
        reason = "one pass of the driver's answer, then the kernel's list set against it, in order"
    )]
    pub fn holders(&mut self, hive: &str, summary_only: bool, now: u64) -> Result<HoldersReport> {
        let units: Vec<u16> = hive.encode_utf16().collect();
        let pass = Pass {
            kind: QueryKind::Holders,
            hive: &units,
            flags: if summary_only {
                QueryRequest::FLAG_SUMMARY_ONLY
            } else {
                0
            },
            max_records: 0,
        };
        let mut info: Option<Hive> = None;
        let mut holders: Vec<Holder> = Vec::new();
        let mut completeness = Completeness::default();
        let nr = self.pages::<Holders>(&pass, |page| {
            let p = &page.prefix;
            completeness = p.completeness;
            let path = text(p.mount);
            if info.as_ref().is_some_and(|h| h.id != p.hive_id) {
                bail!("the driver sent a malformed answer: the hive changed between pages");
            }
            info = Some(Hive {
                id: p.hive_id,
                name: display(&path),
                path,
                file: opt_text(p.file),
                file_truncated: p.flags & HoldersPrefix::FILE_TRUNCATED != 0,
                state: state_name(p.state).to_owned(),
                kind: kind_name(p.kind).to_owned(),
                open_keys: p.open_keys,
                holders: p.holders,
                loaded_at: None,
                counts_complete: None,
                account: None,
            });
            for rec in page.records() {
                match rec {
                    HolderRecord::Process(proc_) => {
                        let same = holders
                            .last()
                            .is_some_and(|h| h.pid == proc_.pid && h.start_key == proc_.start_key);
                        if proc_.flags & HolderProcess::CONTINUED != 0 && same {
                            continue;
                        }
                        holders.push(holder_of(&proc_, now));
                    }
                    HolderRecord::Key(k) => {
                        let Some(h) = holders.last_mut() else {
                            bail!("the driver sent a malformed answer: a key before any process");
                        };
                        h.keys.push(key_of(&k, now));
                    }
                }
            }
            Ok(true)
        })?;
        let hive = info.context("the driver sent a malformed answer: no holders page")?;
        // Pid order (the driver sends its table's walk order, issue 14); stable: keys oldest first.
        holders.sort_by_key(|h| (h.pid, h.start_key));
        let mut report = HoldersReport {
            schema: schema("holders"),
            source: self.source(nr),
            generated_at: Time::or_empty(now),
            hive,
            holders,
            untracked: Vec::new(),
            held_now: None,
            stacks: None,
            verdict: HoldersVerdict::default(),
            short_counts: Vec::new(),
            pid_filter: None,
            grouped: false,
        };
        // The kernel's own list of the hive's keys, set against the driver's records below.
        let (backend, mount) = (self.transport.backend(), report.hive.path.clone());
        let kernel = self.kernel_unless_fallback(&mount);
        if unloaded_unseen(&mut report, kernel.as_ref(), backend) {
            return Ok(report);
        }
        // The driver's hive listing, read once when needed (held-now's mounts, the load time).
        let mut listing: Option<Vec<ListedHive>> = None;
        if self.transport.backend() != crate::fallback::BACKEND && !summary_only && self.held_now {
            self.attach_held_now(&mut report, &mut listing);
        }
        if self.transport.backend() == crate::fallback::BACKEND {
            // The kernel's list alone: it omits keys deleted while open and keys of busy hash
            // buckets, which hold the hive all the same (audit 20b, H1).
            report
                .source
                .cannot_see(crate::fallback::BLIND_SPOT.to_owned());
        } else {
            // The driver's records, set against the kernel's own list of the hive's keys.
            let kernel = kernel_answer(backend, &mount, kernel);
            let mut driver = crate::coverage::from_driver(&completeness);
            // A key the driver did not see (opened before tracking started, or lost) and
            // deleted since is in neither list (fidelity audit, 2026-12-05): only a hive
            // loaded since, with nothing lost, is vouched for (as the driver's own
            // `holders_unseen` in tracker/src/held_after.rs; review 16).
            driver.deleted_keys_unseen = !completeness.nothing_lost()
                || !loaded_since(
                    listing.get_or_insert_with(|| self.listed_hives()),
                    report.hive.id,
                    completeness.tracking_since,
                );
            let transport = &mut *self.transport;
            crate::coverage::reconcile(&mut report, driver, kernel, &mut |pid| {
                transport.process_image(pid)
            });
            not_the_opener(&mut report, &completeness, transport);
            count_held(&mut report);
        }
        report.verdict = crate::classes_link::verdict(&mut *self.transport, &mut report);
        Ok(report)
    }

    /// Who holds each of `report`'s keys now: duplicated and inherited handles name no
    /// opener ([`crate::holder_now`]); `listing`: the driver's hive listing, read once.
    fn attach_held_now(
        &mut self,
        report: &mut HoldersReport,
        listing: &mut Option<Vec<ListedHive>>,
    ) {
        let mounts: Vec<String> = listing
            .get_or_insert_with(|| self.listed_hives())
            .iter()
            .map(|h| h.mount.clone())
            .collect();
        let found = crate::holder_now::held_now(&mut *self.transport, &report.hive.path, &mounts);
        let transport = &mut *self.transport;
        report.held_now = Some(attach_held_now(&mut report.holders, found, &mut |pid| {
            transport.process_image(pid)
        }));
    }

    /// The hives the driver lists; none when it cannot be asked (then no hive is vouched
    /// for, and held-now asks about every handle).
    fn listed_hives(&mut self) -> Vec<ListedHive> {
        self.listed_hives_or_err().unwrap_or_default()
    }

    /// The hives the driver lists, or why they could not be read.
    fn listed_hives_or_err(&mut self) -> Result<Vec<ListedHive>> {
        let mut hives = Vec::new();
        self.pages::<Hives>(&Self::plain(QueryKind::Hives, 0), |page| {
            hives.extend(page.records().map(|r| ListedHive {
                id: r.id,
                mount: text(r.mount),
                loaded_time: r.loaded_time,
                app: r.kind == HiveKind::App,
                state: r.state,
            }));
            Ok(true)
        })?;
        Ok(hives)
    }

    /// The kernel's answer for the hive mounted at `mount` (read twice, so that one busy hash
    /// bucket does not hide a key: [`crate::kernel_list`]), unless the backend is the
    /// driverless fallback (whose holders answer is that list already).
    fn kernel_unless_fallback(
        &mut self,
        mount: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        (self.transport.backend() != crate::fallback::BACKEND)
            .then(|| crate::kernel_list::read(&mut *self.transport, mount))
            .flatten()
    }

    /// The kernel's list of the key objects open in the hive mounted at `mount`
    /// ([`crate::kernel_list::read`]).
    ///
    /// # Errors
    /// Why it cannot be had (the backend cannot ask, or the system refused), in words.
    pub fn kernel_open_keys(&mut self, mount: &str) -> Result<Vec<(u64, String)>, String> {
        let raw = crate::kernel_list::read(&mut *self.transport, mount);
        kernel_answer(self.transport.backend(), mount, raw)
    }

    /// The driver's version answer (its capabilities).
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn version(&mut self) -> Result<VersionInfo> {
        let len = self.call(IOCTL_HIVETRACK_GET_VERSION, &[])?;
        Self::decode::<VersionInfo>(&self.buf[..len])
    }

    /// Sends a stack-capture request (`IOCTL_HIVETRACK_CAPTURE`); the state after it:
    /// scope, most frames per stack, since when (FILETIME), the scope's text.
    ///
    /// # Errors
    /// Transport failures (a driver without capture refuses the control code), a
    /// malformed answer.
    pub fn capture(
        &mut self,
        op: CaptureOp,
        scope: CaptureScope,
        text: &str,
    ) -> Result<(CaptureScope, u32, u64, String)> {
        let units: Vec<u16> = text.encode_utf16().collect();
        let req = CaptureRequest {
            op,
            scope,
            text: Text::Units(&units),
        };
        let mut input = vec![0u8; HEADER_LEN + req.body_len()];
        let n = wire::encode(&req, &mut input).map_err(|e| anyhow::anyhow!("{e}"))?;
        let len = self.call(IOCTL_HIVETRACK_CAPTURE, &input[..n])?;
        let st = Self::decode::<CaptureState<'_>>(&self.buf[..len])?;
        Ok((st.scope, st.max_frames, st.since, st.text.to_string()))
    }

    /// Every stored stack and the modules of the processes whose keys carry one (all
    /// pages of both), with the stack counters of `stats`.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn stack_table(&mut self) -> Result<StackTable> {
        let mut t = StackTable::default();
        let mut stacks_dropped = 0;
        self.pages::<Stacks>(&Self::plain(QueryKind::Stacks, 0), |page| {
            stacks_dropped = stacks_dropped.max(page.prefix.dropped);
            for r in page.records() {
                t.stacks.insert(
                    r.id,
                    Stack {
                        truncated: r.flags & StackRecord::TRUNCATED != 0,
                        frames: r.frames().to_vec(),
                    },
                );
            }
            Ok(true)
        })?;
        let mut modules_dropped = 0;
        let mut current: Option<(u64, u64)> = None;
        let modules = &mut t.modules;
        let lost = &mut t.modules_lost_since;
        self.pages::<Modules>(&Self::plain(QueryKind::Modules, 0), |page| {
            modules_dropped = modules_dropped.max(page.prefix.dropped);
            for r in page.records() {
                match r {
                    ModuleRecord::Process(p) => {
                        let key = (p.pid, p.start_key);
                        modules.entry(key).or_default();
                        if p.lost_since != 0 {
                            lost.insert(key, p.lost_since);
                        }
                        current = Some(key);
                    }
                    ModuleRecord::Module(m) => {
                        let Some(key) = current else {
                            bail!(
                                "the driver sent a malformed answer: a module before any process"
                            );
                        };
                        modules.entry(key).or_default().push(LoadedModule {
                            path: (m.flags & Module::NAME_MISSING == 0)
                                .then(|| opt_text(m.name))
                                .flatten(),
                            base: m.base,
                            size: m.size,
                            load_time: m.load_time,
                        });
                    }
                }
            }
            Ok(true)
        })?;
        let stats = self.stats().ok();
        let counter = |name: &str| {
            stats
                .as_ref()
                .and_then(|s| s.counters.iter().find(|c| c.name == name))
                .map(|c| c.value)
        };
        t.coverage = crate::model::StackCoverage {
            stacks_dropped: stacks_dropped.max(counter("stacks_dropped").unwrap_or(0)),
            modules_dropped: modules_dropped.max(counter("modules_dropped").unwrap_or(0)),
            image_loads_tracked: counter("image_loads_tracked").map(|v| v == 1),
        };
        Ok(t)
    }

    /// Each hive the driver lists, as `(id, load time)` (FILETIME, 0 when the load was not
    /// seen): the hives pages alone, without the report's scope.
    ///
    /// # Errors
    /// As for [`Self::hives`].
    pub fn hive_load_times(&mut self) -> Result<Vec<(u32, u64)>> {
        let mut loaded = Vec::new();
        self.pages::<Hives>(&Self::plain(QueryKind::Hives, 0), |page| {
            loaded.extend(page.records().map(|r| (r.id, r.loaded_time)));
            Ok(true)
        })?;
        Ok(loaded)
    }

    /// Every hive the driver knows.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn hives(&mut self) -> Result<HivesReport> {
        let mut hives = Vec::new();
        let mut loaded = Vec::new();
        let nr = self.pages::<Hives>(&Self::plain(QueryKind::Hives, 0), |page| {
            for r in page.records() {
                loaded.push((r.id, r.loaded_time, r.kind == HiveKind::App));
                hives.push(hive_of(&r));
            }
            Ok(true)
        })?;
        // The driver lists hives in its table's order (one visit per hive a page); reports
        // list them by id.
        hives.sort_by_key(|h: &Hive| h.id);
        // A record still unload-pending whose hive the kernel no longer has: Windows
        // completed the deferred unload (with no notification) and the driver has not read
        // the hive list since; it drops the record at that read. Listed as unloaded, holding
        // nothing (review 21b, L3; review 21a, M1: listed as pending, "loaded, file in use").
        let mut gone: Vec<u32> = Vec::new();
        if self.transport.backend() != crate::fallback::BACKEND {
            for h in &mut hives {
                if h.state != UNLOAD_PENDING || crate::wait::is_app_hive(&h.path) {
                    continue;
                }
                if matches!(
                    self.transport.kernel_open_keys(&h.path),
                    Some(Err(TransportError::Request {
                        code: ERROR_FILE_NOT_FOUND,
                    }))
                ) {
                    UNLOADED.clone_into(&mut h.state);
                    h.open_keys = 0;
                    h.holders = 0;
                    gone.push(h.id);
                }
            }
        }
        let mut source = self.source(nr);
        if let Some(since) = self.scope(&mut source) {
            // Counts are the opens the driver saw: for a hive loaded before tracking began
            // (or at an unknown time), or an application hive (never vouched for, as the
            // driver's HOLDERS_UNSEEN), keys opened before may be missing, and with opens lost
            // (`nr`: the listing's not-recorded count) any hive's may. Found in review
            // (2026-12-05): such a hive held only by old keys listed 0 keys, "complete".
            // Counts alone cannot be set against the kernel's list without a race (a key
            // closing between the two reads hides one opened before tracking): `holders`
            // reconciles one hive by name.
            let mut unvouched = 0usize;
            for h in &mut hives {
                let vouched = gone.contains(&h.id)
                    || (nr == 0
                        && loaded
                            .iter()
                            .find(|(id, _, _)| *id == h.id)
                            .is_some_and(|&(_, at, app)| !app && at != 0 && at >= since));
                h.counts_complete = Some(vouched);
                unvouched += usize::from(!vouched);
            }
            if unvouched > 0 {
                source.cannot_see(format!(
                    "keys opened before tracking started, in {unvouched} hive(s) loaded before it or not vouched for (counts_complete false: their counts are the opens since; `hivetrack holders` on a hive also asks the kernel's list)"
                ));
            }
        } else if source.unseen {
            // Tracking off, or since when not known: no hive's counts are vouched for
            // (audit 20b, L1: they were null, which the table and scripts read as no caveat).
            for h in &mut hives {
                h.counts_complete = Some(false);
            }
        }
        Ok(HivesReport {
            schema: schema("hives"),
            source,
            hives,
        })
    }

    const fn plain(kind: QueryKind, max_records: u32) -> Pass<'static> {
        Pass {
            kind,
            hive: &[],
            flags: 0,
            max_records,
        }
    }

    /// Processes ranked by open keys (most first; ties by pid, then start key), at most
    /// `top` of them (all when `None`). The driver lists every process in its own table
    /// order, whose cursor does not move when counts do (a ranked cursor skipped a process
    /// that climbed past it between two pages): so the whole listing is read and ranked
    /// here, whatever `top` is.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn processes(&mut self, top: Option<usize>) -> Result<ProcessesReport> {
        let mut processes = Vec::new();
        let nr = self.pages::<Processes>(&Self::plain(QueryKind::Processes, 0), |page| {
            processes.extend(page.records().map(|r| process_of(&r)));
            Ok(true)
        })?;
        rank(&mut processes);
        let all = processes.len();
        let running = running_of(&processes);
        if let Some(n) = top {
            processes.truncate(n);
        }
        let mut source = self.source(nr);
        if let Some(since) = self.scope(&mut source) {
            // Only the opens since tracking began are listed: a process holding only keys
            // opened before is missing, in any hive the driver cannot vouch for (as `hives`
            // counts them). Until 2026-12-06 this listing said "complete" and `--strict`
            // exited 0 while `hives --strict` on the same machine exited 4 (audit 20b, M3).
            let hives = self.listed_hives_or_err();
            let unvouched = hives.as_ref().map(|hives| {
                hives
                    .iter()
                    .filter(|h| h.state != HiveState::Unloaded)
                    .filter(|h| nr > 0 || !loaded_since(hives, h.id, since))
                    .count()
            });
            match unvouched {
                Ok(0) => {}
                Ok(n) => source.cannot_see(format!(
                    "processes holding only keys opened before tracking started (in {n} hive(s) loaded before it or not vouched for, marked `*` by `hivetrack hives`; counts leave such keys out too; `hivetrack processes --kernel` asks the kernel's list of each hive and counts them per process, `hivetrack holders HIVE` names them)"
                )),
                Err(e) => source.cannot_see(format!(
                    "whether any hive was loaded before tracking started (the hive listing failed: {e:#}): processes holding only keys opened before it may be missing"
                )),
            }
        }
        let short_counts = match self.short_counts(nr) {
            Ok(short) => short
                .into_iter()
                .filter(|c| running.contains(&(c.pid, c.start_key)))
                .collect(),
            Err(why) => {
                source.cannot_see(unnamed_short_counts(nr, &why));
                Vec::new()
            }
        };
        Ok(ProcessesReport {
            schema: schema("processes"),
            source,
            omitted: (all - processes.len()) as u64,
            processes,
            kernel_only: None,
            kernel_missed: 0,
            short_counts,
        })
    }

    /// Those of `report`'s holders whose opens were refused (audit 23b, M1); none from the
    /// fallback, which has no counters.
    ///
    /// When they cannot be named, that is said, unless no key count in the report can be a
    /// lower bound (review 24b, LOW-6: a reconciled or free hive read "incomplete"): the
    /// report reconciled — a key of the hive a refused process opened would be listed by the
    /// kernel without a record — or it names no process at all.
    pub fn attach_short_counts(&mut self, report: &mut HoldersReport) {
        let nr = report.source.not_recorded;
        let exact = report
            .source
            .coverage
            .as_ref()
            .is_some_and(|c| c.reconciled)
            || (report.holders.is_empty() && report.untracked.is_empty());
        let mut short = match self.short_counts(nr) {
            Ok(short) => short,
            Err(why) => {
                if !exact {
                    report.source.cannot_see(unnamed_short_counts(nr, &why));
                }
                return;
            }
        };
        short.retain(|s| {
            report
                .holders
                .iter()
                .any(|h| h.pid == s.pid && h.start_key == s.start_key)
                || report.untracked.iter().any(|u| u.pid == s.pid)
        });
        // The driver's counters name the process for the whole run, exited or not: one no
        // longer running (its pid perhaps another process's now) is not blamed for keys the
        // report lists (review 23d, M1).
        if !short.is_empty() {
            let mut processes = Vec::new();
            let listed = self.pages::<Processes>(&Self::plain(QueryKind::Processes, 0), |page| {
                processes.extend(page.records().map(|r| process_of(&r)));
                Ok(true)
            });
            if let Err(e) = listed {
                // Which of them still runs cannot be told: none is named, and that is said
                // where a count could be a lower bound.
                if !exact {
                    report.source.cannot_see(unnamed_short_counts(
                        nr,
                        &format!("the process list could not be read: {e}"),
                    ));
                }
                short.clear();
            }
            let running = running_of(&processes);
            short.retain(|s| running.contains(&(s.pid, s.start_key)));
        }
        report.short_counts = short;
    }

    /// `processes --kernel`: asks the kernel's list of every loaded hive (one holders query
    /// each, summaries) and adds up per pid the keys the driver has no record of; a hive
    /// whose answer failed is named in `report.source` as not seen (audit 23b, H1).
    pub fn kernel_only(&mut self, report: &mut ProcessesReport, now: u64) {
        let hives = match self.hives() {
            Ok(h) => h.hives,
            Err(e) => {
                report.source.cannot_see(format!(
                    "the kernel's lists of open keys (--kernel: the hive listing failed: {e:#})"
                ));
                return;
            }
        };
        let mut by_pid: std::collections::BTreeMap<u64, KernelOnlyProcess> =
            std::collections::BTreeMap::new();
        for h in hives.iter().filter(|h| h.state != "unloaded") {
            match self.holders(&h.path, true, now) {
                Ok(r) => {
                    // A list that could not be read answers Ok with nothing in it (every
                    // `\REGISTRY\A` app hive, any failure of the query): named, not taken for
                    // a hive with no such key (review 23d, H2).
                    if let Some(why) = r
                        .source
                        .coverage
                        .as_ref()
                        .and_then(|c| c.kernel_error.as_ref())
                    {
                        report.source.cannot_see(format!(
                            "the kernel's list of open keys in {} (--kernel: {why})",
                            h.name
                        ));
                        report.kernel_missed += 1;
                    }
                    // Records the kernel's list matched to no key of their process: the
                    // driver files a kernel handle under System and an attached thread's open
                    // under the attached process, the kernel under the opener, and summaries
                    // match by count per pid, so some keys counted below as without a record
                    // may be those (review 23d, M3).
                    if let Some(n) = r
                        .source
                        .coverage
                        .as_ref()
                        .map(|c| c.unmatched_records)
                        .filter(|&n| n > 0)
                    {
                        report.source.cannot_see(format!(
                            "which process's list holds {n} key(s) the driver tracks in {} (filed under another process than the kernel names: a kernel handle, an attached thread): --kernel may count them as without a record",
                            h.name
                        ));
                    }
                    for u in r.untracked.iter().filter(|u| !u.hivetrack_own) {
                        let e = by_pid.entry(u.pid).or_insert_with(|| KernelOnlyProcess {
                            pid: u.pid,
                            image: None,
                            open_keys: 0,
                            hives: 0,
                        });
                        e.open_keys += u.open_keys;
                        e.hives += 1;
                        if e.image.is_none() {
                            e.image.clone_from(&u.image);
                        }
                    }
                }
                Err(e) => {
                    report.source.cannot_see(format!(
                        "the kernel's list of open keys in {} (--kernel: {e:#})",
                        h.name
                    ));
                    report.kernel_missed += 1;
                }
            }
        }
        let mut list: Vec<KernelOnlyProcess> = by_pid.into_values().collect();
        list.sort_by(|a, b| b.open_keys.cmp(&a.open_keys).then(a.pid.cmp(&b.pid)));
        report.kernel_only = Some(list);
    }

    /// The processes whose opens the tracker refused to record, from the driver's counters
    /// (the one refused most for its share, the one refused most for want of memory); empty
    /// when none was. Audit 23b, M1: only `stats` named them.
    /// `not_recorded`: the losses the answer's pages counted; with none, the counters are
    /// not read (nothing was refused since the driver started).
    ///
    /// # Errors
    /// Why the counters could not be read: then nobody can be named, which is not "none"
    /// (review 23d, L5).
    pub fn short_counts(&mut self, not_recorded: u64) -> Result<Vec<ShortCount>, String> {
        if not_recorded == 0 {
            return Ok(Vec::new());
        }
        // Unreadable counters are not "no process was refused" (review 23d, L5): the caller
        // says so in `source.missing`.
        let stats = self
            .stats()
            .map_err(|e| format!("the driver's counters could not be read: {e}"))?;
        let value = |name: &str| {
            stats
                .counters
                .iter()
                .find(|c| c.name == name)
                .map_or(0, |c| c.value)
        };
        let mut out = Vec::new();
        for (prefix, cause) in [
            ("top_dropper", "memory_share"),
            ("top_refused", "memory_budget"),
        ] {
            let drops = value(&format!("{prefix}_drops"));
            if drops > 0 {
                out.push(ShortCount {
                    pid: value(&format!("{prefix}_pid")),
                    start_key: value(&format!("{prefix}_start_key")),
                    not_recorded: drops,
                    cause: cause.to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// The driver's counters.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn stats(&mut self) -> Result<StatsReport> {
        let req = QueryRequest {
            query: QueryKind::Stats,
            flags: 0,
            max_records: 0,
            cursor: Cursor::START,
            hive: Text::EMPTY,
        };
        let mut input = [0u8; 128];
        let n = wire::encode(&req, &mut input).map_err(|e| anyhow::anyhow!("{e}"))?;
        let len = self.call(query_ioctl(QueryKind::Stats), &input[..n])?;
        let stats = Self::decode::<Stats>(&self.buf[..len])?;
        let counters = stats
            .fields()
            .map(|(name, value)| Counter {
                name: name.to_owned(),
                class: if Stats::LOSS_NAMES.contains(&name) {
                    "loss"
                } else if Stats::GAUGE_NAMES.contains(&name) {
                    "gauge"
                } else {
                    "event"
                }
                .to_owned(),
                value,
            })
            .collect();
        Ok(StatsReport {
            schema: schema("stats"),
            source: self.source(stats.not_recorded()),
            counters,
        })
    }

    /// Every tracked key object, with the hives and processes of the moment.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn snapshot(&mut self) -> Result<SnapshotFile> {
        let mut taken_at = 0;
        let mut keys = Vec::new();
        let nr = self.pages::<Snapshot>(&Self::plain(QueryKind::Snapshot, 0), |page| {
            if taken_at == 0 {
                taken_at = page.prefix.taken_at;
            }
            keys.extend(page.records().map(|r| snapshot_key(&r)));
            Ok(true)
        })?;
        let hives = self.hives()?;
        let processes = self.processes(None)?;
        let nr = nr
            .max(hives.source.not_recorded)
            .max(processes.source.not_recorded);
        // The listings' scope (they asked the driver just now).
        let mut source = self.source(nr);
        source
            .tracking_since
            .clone_from(&processes.source.tracking_since);
        // Both listings' notes: the hives' says which hives' counts may miss keys opened
        // before tracking (review 16: `snapshot --strict` disagreed with `hives --strict`).
        for m in processes.source.missing.iter().chain(&hives.source.missing) {
            if !source.missing.contains(m) {
                source.cannot_see(m.clone());
            }
        }
        Ok(SnapshotFile {
            schema: schema("snapshot"),
            source,
            taken_at: Time::or_empty(taken_at),
            hives: hives.hives,
            processes: processes.processes,
            keys,
        })
    }

    /// Recent unload attempts, newest first.
    ///
    /// # Errors
    /// Transport failures, a malformed answer.
    pub fn unload_history(&mut self) -> Result<UnloadHistoryReport> {
        let mut attempts = Vec::new();
        let nr =
            self.pages::<UnloadHistory>(&Self::plain(QueryKind::UnloadHistory, 0), |page| {
                for r in page.records() {
                    let path = text(r.mount);
                    attempts.push(UnloadAttempt {
                        sequence: r.sequence,
                        time: Time::from_filetime(r.time),
                        hive: display(&path),
                        path,
                        status: format!("{:#010X}", r.outcome).replacen("0X", "0x", 1),
                        status_name: ntstatus_name(r.outcome).map(str::to_owned),
                        succeeded: r.outcome == 0,
                        outcome: crate::model::UnloadOutcome::of(
                            r.outcome,
                            r.flags & protocol::history::UnloadRecord::HELD_AFTER != 0,
                        ),
                        open_keys: r.open_keys,
                        holders_total: r.holders_total,
                        holders_truncated: r.flags
                            & protocol::history::UnloadRecord::HOLDERS_TRUNCATED
                            != 0,
                        unknown_hive: r.flags & protocol::history::UnloadRecord::UNKNOWN_HIVE != 0,
                        held_after: r.flags & protocol::history::UnloadRecord::HELD_AFTER != 0,
                        held_for_secs: None,
                        failed_unload_sequence: None,
                        // A hive the driver did not know: nothing in it was seen either.
                        holders_unseen: r.flags
                            & (protocol::history::UnloadRecord::HOLDERS_UNSEEN
                                | protocol::history::UnloadRecord::UNKNOWN_HIVE)
                            != 0,
                        holders: r
                            .holders
                            .iter()
                            .map(|h| UnloadHolder {
                                pid: h.pid,
                                start_key: h.start_key,
                                image: opt_text(h.image),
                                open_keys: h.open_keys,
                            })
                            .collect(),
                    });
                }
                Ok(true)
            })?;
        link_held_after(&mut attempts);
        let mut source = self.source(nr);
        let entries_not_kept = self.history_scope(&mut source);
        Ok(UnloadHistoryReport {
            schema: schema("unload-history"),
            source,
            attempts,
            entries_not_kept,
        })
    }

    /// What the unload history can vouch for: since when tracking runs (attempts before it
    /// are not recorded) and how many older entries the driver no longer keeps. Until
    /// 2026-12-06 an empty history said "No unload attempt recorded", complete, with neither
    /// (audit 20b, M4): the "no" of a driver started this morning, or of a history pushed out
    /// by a handle leak's key-count alarms, read as vouched.
    fn history_scope(&mut self, source: &mut Source) -> Option<u64> {
        let head = crate::event_stream::stream_head(&mut *self.transport);
        match head {
            Ok(head) if head.tracking_since == 0 => {
                source.cannot_see("any unload attempt: live tracking has not started".to_owned());
                None
            }
            Ok(head) => {
                source.tracking_since = Time::from_filetime(head.tracking_since);
                if head.missed > 0 {
                    source.cannot_see(format!(
                        "{} older entr{} of the driver's history, no longer kept (it keeps the \
                         newest 32, key-count alarms and held-after looks among them): \
                         attempts may be missing",
                        head.missed,
                        if head.missed == 1 { "y" } else { "ies" }
                    ));
                }
                Some(head.missed)
            }
            Err(e) => {
                source.cannot_see(format!(
                    "since when attempts are recorded, or whether older ones were evicted from \
                     the driver's history (its event stream refused the request: {e}; live \
                     tracking may be off, `hivetrack stats`)"
                ));
                None
            }
        }
    }
}

/// Whether `report` is of a record still unload-pending whose hive the kernel (`kernel`,
/// its answer) no longer has; if so, `report` now says the hive is unloaded.
///
/// Windows completed the deferred unload with no notification, and the driver keeps the
/// record until its next read of the hive list. Nothing of the hive is left to hold it, so
/// nothing unseen can either (as `wait` says, `wait::record_gone`). Until review 21b (L3)
/// this said "the hive is loaded and its file in use", not complete, exit 4 with
/// `--fail-if-held`.
fn unloaded_unseen(
    report: &mut HoldersReport,
    kernel: Option<&Result<Vec<(u64, String)>, TransportError>>,
    backend: &str,
) -> bool {
    let gone = report.hive.state == UNLOAD_PENDING
        && !crate::wait::is_app_hive(&report.hive.path)
        && matches!(
            kernel,
            Some(Err(TransportError::Request {
                code: ERROR_FILE_NOT_FOUND
            }))
        );
    if gone {
        UNLOADED.clone_into(&mut report.hive.state);
        report.hive.open_keys = 0;
        report.hive.holders = 0;
        report.holders.clear();
        report.source = Source::new(backend, 0, &[]);
        report.verdict = HoldersVerdict::of(report);
    }
    gone
}

/// The kernel's list of the key objects open in the hive mounted at `mount`, as the
/// `backend` answered it (`None`: it cannot ask), or why it could not be had, in words.
fn kernel_answer(
    backend: &str,
    mount: &str,
    raw: Option<Result<Vec<(u64, String)>, TransportError>>,
) -> Result<Vec<(u64, String)>, String> {
    match raw {
        None => Err(format!(
            "the {backend} backend cannot ask the kernel (NtQueryOpenSubKeysEx)"
        )),
        Some(Err(e)) => Err(kernel_failure(mount, &e)),
        Some(Ok(list)) => Ok(list),
    }
}

/// Why the kernel's list of the keys open in the hive mounted at `mount` could not be had.
///
/// `NtQueryOpenSubKeysEx`'s "not found" is Windows saying no hive is loaded at that path:
/// until review 20b (R2) it read "the driver rejected the request (Win32 error 2)", though no
/// driver was asked.
#[must_use]
pub fn kernel_failure(mount: &str, e: &TransportError) -> String {
    match e {
        // `\REGISTRY\A` is a private namespace: its hives cannot be opened by name at all.
        TransportError::Request {
            code: ERROR_FILE_NOT_FOUND,
        } if crate::wait::is_app_hive(mount) => "NtQueryOpenSubKeysEx cannot open an \
             application hive (\\REGISTRY\\A) by name"
            .to_owned(),
        TransportError::Request {
            code: ERROR_FILE_NOT_FOUND,
        } => format!(
            "Windows has no hive loaded at {} (it was unloaded; NtQueryOpenSubKeysEx: not found)",
            display(mount)
        ),
        TransportError::Request { code } => {
            format!("NtQueryOpenSubKeysEx failed (Win32 error {code})")
        }
        e => format!("NtQueryOpenSubKeysEx failed: {e}"),
    }
}

/// Sets each held-after record's failed unload: the latest failed attempt of the same hive
/// before it (by sequence) that no successful unload of it follows, and the seconds between
/// the two. That attempt failed and the hive was still held when the driver looked, so the
/// hive was held at least that long after it (a retry of a run counts from the run's
/// first attempt in the driver; the history names the latest, a statement that is true).
fn link_held_after(attempts: &mut [UnloadAttempt]) {
    let links: Vec<Option<(u64, u64)>> = attempts
        .iter()
        .map(|held| {
            if !held.held_after {
                return None;
            }
            let mut before: Vec<&UnloadAttempt> = attempts
                .iter()
                .filter(|a| a.sequence < held.sequence && a.path.eq_ignore_ascii_case(&held.path))
                .collect();
            before.sort_by_key(|a| std::cmp::Reverse(a.sequence));
            let attempt = before
                .into_iter()
                .find(|a| !a.held_after)
                .filter(|a| !a.succeeded)?;
            let secs = held
                .time
                .as_ref()
                .zip(attempt.time.as_ref())
                .map(|(h, a)| h.filetime.saturating_sub(a.filetime) / 10_000_000)?;
            Some((attempt.sequence, secs))
        })
        .collect();
    for (a, link) in attempts.iter_mut().zip(links) {
        if let Some((sequence, secs)) = link {
            a.failed_unload_sequence = Some(sequence);
            a.held_for_secs = Some(secs);
        }
    }
}

fn snapshot_key(r: &SnapshotRecord<'_>) -> SnapshotKey {
    SnapshotKey {
        pid: r.pid,
        start_key: r.start_key,
        id: r.id,
        open_time: r.open_time,
        hive_id: r.hive_id,
        path: text(r.name),
        name_truncated: r.flags & HolderKey::NAME_TRUNCATED != 0,
        name_missing: r.flags & HolderKey::NAME_MISSING != 0,
    }
}

/// The (pid, start key) of every process in `processes` still running.
fn running_of(processes: &[ProcessEntry]) -> Vec<(u64, u64)> {
    processes
        .iter()
        .filter(|p| !p.exited)
        .map(|p| (p.pid, p.start_key))
        .collect()
}
