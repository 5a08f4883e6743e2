//! Queries: each writes one page into a caller buffer, never allocates, and resumes from
//! the cursor of the previous page.
//!
//! Pages are weakly consistent: each record is read under the lock of the entity it
//! describes, and the cursor is a position in a stable order (hive id; the process table's
//! walk order, resumed from a process key in constant time; hive id then (open time,
//! sequence) within a process), so a resumed query neither repeats nor skips an entity that
//! existed throughout, whatever changed in between. A report costs time linear in what it
//! returns plus one pass over the process table, however many pages it takes.

use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

use protocol::cursor::Cursor;
use protocol::history::{UnloadHistory, UnloadHolder, UnloadRecord};
use protocol::hives::{HiveRecord, Hives};
use protocol::holders::{HolderKey, HolderProcess, HolderRecord, Holders, HoldersPrefix};
use protocol::ioctl;
use protocol::page::{NoPrefix, PageInfo, PageKind, PageWriter, empty_page_len};
use protocol::processes::{ProcessRecord, Processes};
use protocol::request::{QueryKind, QueryRequest};
use protocol::snapshot::{Snapshot, SnapshotPrefix, SnapshotRecord};
use protocol::stats::Stats;
use protocol::text::Text;
use protocol::wire::{self, DecodeError, EncodeError};

use crate::counters::get;
use crate::hives::{HiveTable, hive_of};
use crate::links::RecLink;
use crate::lock::RawLock;
use crate::names::{NameRef, name_of};
use crate::objects::{F_NAME_MISSING, F_NAME_TRUNCATED, ObjRecord, object_id, split_id, split_ref};
use crate::pool::Pool;
use crate::processes::{Holding, Process, ProcessKey, holding_of};
use crate::tracker::Tracker;

const STARTED: u64 = 1 << 63;
const AFTER_ALL_HIVES: u32 = 0x7FFF_FFFF;
/// Longest hive path a holders request is resolved with (units beyond are ignored; every
/// mount point is far shorter).
pub const MAX_QUERY_PATH: usize = 512;
/// The most records a holders, snapshot or modules page holds.
///
/// Whatever the request's `max_records` and output buffer: such a page writes one process's
/// records under that
/// process's lock (and its process-table shard's, shared), which holds up the process's
/// opens and its shard's writers, so the caller must not set how long that is (a process
/// at its share holds about 285,000 records; audit 21b F5). The cursor resumes where the
/// page stopped, in O(1) by its hint.
pub const MAX_PAGE_RECORDS: u32 = 4096;

/// `max_records` of a request, capped at [`MAX_PAGE_RECORDS`] (0, "as many as fit", too).
pub const fn capped(max_records: u32) -> u32 {
    if max_records == 0 || max_records > MAX_PAGE_RECORDS {
        MAX_PAGE_RECORDS
    } else {
        max_records
    }
}

/// The hive path of a request as native units, in `buf`: its first [`MAX_QUERY_PATH`] units.
pub fn query_path<'b>(text: &Text<'_>, buf: &'b mut [u16; MAX_QUERY_PATH]) -> &'b [u16] {
    let mut n = 0;
    for (dst, u) in buf.iter_mut().zip(text.units()) {
        *dst = u;
        n += 1;
    }
    &buf[..n]
}

/// Why a query could not be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// The output buffer cannot hold even one record; `needed` bytes would.
    BufferTooSmall {
        /// A size that would hold the next record.
        needed: usize,
    },
    /// No hive matches the path of a holders query.
    UnknownHive,
    /// The cursor belongs to another hive (it was unloaded and reloaded); start over.
    StaleCursor,
    /// The request did not decode.
    BadRequest(DecodeError),
    /// The request's query does not match the IOCTL, or the IOCTL is not a query.
    WrongQuery,
}

fn text(n: Option<NameRef>) -> Text<'static> {
    n.map_or(Text::EMPTY, |n| Text::Units(name_of(n).units()))
}

/// [`HolderProcess::WOW64`] for a 32-bit process (holders records only).
fn wow64_flag(p: &Process<impl RawLock>) -> u32 {
    if p.wow64.load(Relaxed) {
        HolderProcess::WOW64
    } else {
        0
    }
}

fn image_flags(p: &Process<impl RawLock>) -> u32 {
    match p.image() {
        None => HolderProcess::IMAGE_MISSING,
        Some(i) if name_of(i).truncated() => HolderProcess::IMAGE_TRUNCATED,
        Some(_) => 0,
    }
}

fn name_flags(rec: &ObjRecord) -> u32 {
    let s = rec.state_and_flags();
    let mut f = 0;
    if s & F_NAME_TRUNCATED != 0 {
        f |= HolderKey::NAME_TRUNCATED;
    }
    if s & F_NAME_MISSING != 0 {
        f |= HolderKey::NAME_MISSING;
    }
    f
}

/// [`HolderKey::KEY_DELETED`] when the record's key was deleted since it was opened
/// ([`crate::keys::KeyCache::mark_deleted`]). Read under the process lock of a linked
/// record, whose key entry is released only after it is unlinked.
fn deleted_flag(rec: &ObjRecord) -> u32 {
    NonNull::new(rec.key.load(Relaxed))
        .filter(|&k| crate::keys::is_deleted(k))
        .map_or(0, |_| HolderKey::KEY_DELETED)
}

/// The stack flags of a record ([`crate::capture`]).
fn stack_flags(rec: &ObjRecord) -> u32 {
    let s = rec.state_and_flags();
    let mut f = 0;
    if s & crate::capture::F_STACK_EMPTY != 0 {
        f |= HolderKey::STACK_EMPTY;
    }
    if s & crate::capture::F_STACK_DROPPED != 0 {
        f |= HolderKey::STACK_DROPPED;
    }
    if s & crate::capture::F_STACK_OUT_OF_SCOPE != 0 {
        f |= HolderKey::STACK_OUT_OF_SCOPE;
    }
    f
}

/// Where a key sits in its holding's order.
type KeyPos = (u64, u32);

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let mut s = Stats::default();
        for shard in &self.objects {
            s.objects_tracked += u64::from(shard.live.load(Relaxed));
            s.opens_seen += shard.opens_seen.load(Relaxed);
            s.handle_closes_seen += shard.closes_seen.load(Relaxed);
            s.destroys_seen += shard.destroys_seen.load(Relaxed);
        }
        s.objects_cap = u64::from(self.config.max_objects);
        s.processes_tracked = self.processes.count();
        s.hives_tracked = self.hives.count();
        s.names_interned = self.names.count();
        s.holdings_tracked = get(&c.holdings);
        s.history_entries = u64::from(self.history.len());
        s.hive_loads_seen = get(&c.hive_loads_seen);
        s.hive_unloads_seen = get(&c.hive_unloads_seen);
        s.unload_attempts_seen = get(&c.unload_attempts_seen);
        s.process_exits_seen = get(&c.process_exits_seen);
        s.closes_exceeding_opens = get(&c.closes_exceeding_opens);
        s.keys_not_cached = get(&c.keys_not_cached);
        s.keys_cached = self.keys.len();
        s.opens_dropped_cap = get(&c.opens_dropped_cap);
        s.opens_dropped_no_memory_object = get(&c.opens_dropped_no_memory_object);
        s.opens_dropped_no_memory_process = get(&c.opens_dropped_no_memory_process);
        s.opens_dropped_no_memory_hive = get(&c.opens_dropped_no_memory_hive);
        s.opens_dropped_no_memory_holding = get(&c.opens_dropped_no_memory_holding);
        s.names_dropped_no_memory = get(&c.names_dropped_no_memory);
        // The hive list not read whole counts as one name not got until a seed reads it all.
        s.names_unavailable = get(&c.names_unavailable).saturating_add(get(&c.seed_unread));
        s.opens_dropped_no_name = get(&c.opens_dropped_no_name);
        s.names_truncated = get(&c.names_truncated);
        s.images_dropped_no_memory = get(&c.images_dropped_no_memory);
        s.closes_unknown_object = get(&c.closes_unknown_object);
        s.destroys_unknown_object = get(&c.destroys_unknown_object);
        s.objects_abandoned = get(&c.objects_abandoned);
        s.hive_loads_dropped_no_memory = get(&c.hive_loads_dropped_no_memory);
        s.unloads_unknown_hive = get(&c.unloads_unknown_hive);
        s.process_exits_unknown = get(&c.process_exits_unknown);
        s.history_dropped_no_memory = get(&c.history_dropped_no_memory);
        s.history_holders_truncated = get(&c.history_holders_truncated);
        s.opens_dropped_process_share = get(&c.opens_dropped_process_share);
        s.stacks_stored = self.stacks.len();
        s.modules_tracked = get(&c.modules);
        s.stacks_captured = get(&c.stacks_captured);
        s.stacks_empty = get(&c.stacks_empty);
        s.stacks_dropped = get(&c.stacks_dropped);
        s.image_loads_seen = get(&c.image_loads_seen);
        s.modules_dropped = get(&c.modules_dropped);
        s.key_alarms = get(&c.key_alarms);
        s.held_after_events = get(&c.held_after_events);
        s.held_after_unwatched = get(&c.held_after_unwatched);
        s.budget_bytes = self.pool.limit();
        s.budget_used_bytes = self.pool.used();
        s.budget_peak_bytes = self.pool.peak();
        s.process_share_bytes = self.config.process_share_bytes;
        s.allocations_refused_budget = self.pool.refused();
        let (top, drops) = self.top_dropper.get();
        s.top_dropper_pid = top.pid;
        s.top_dropper_start_key = top.start_key;
        s.top_dropper_drops = drops;
        let (top, drops) = self.top_refused.get();
        s.top_refused_pid = top.pid;
        s.top_refused_start_key = top.start_key;
        s.top_refused_drops = drops;
        s.exited_leftover_bytes = self.leftovers.load(Relaxed);
        s
    }

    pub(crate) fn finish<K: PageKind>(
        &self,
        w: PageWriter<'_, K>,
        next: Cursor,
        done: bool,
        first_needed: usize,
    ) -> Result<usize, QueryError> {
        self.finish_with(w, next, done, first_needed, true)
    }

    /// `progress` is false when the page repeats only what the cursor already covered (a
    /// continued summary whose next key does not fit).
    pub(crate) fn finish_with<K: PageKind>(
        &self,
        w: PageWriter<'_, K>,
        next: Cursor,
        done: bool,
        first_needed: usize,
        progress: bool,
    ) -> Result<usize, QueryError> {
        if (w.count() == 0 || !progress) && !done {
            return Err(QueryError::BufferTooSmall {
                needed: first_needed,
            });
        }
        let info = PageInfo {
            next: if done { Cursor::START } else { next },
            flags: if done { PageInfo::DONE } else { 0 },
            not_recorded: self.stats().not_recorded(),
        };
        Ok(w.finish(&info))
    }

    pub(crate) fn start_page<'b, K: PageKind>(
        out: &'b mut [u8],
        prefix: &K::Prefix<'_>,
        max_records: u32,
    ) -> Result<PageWriter<'b, K>, QueryError> {
        let needed = empty_page_len::<K>(prefix);
        PageWriter::new(out, prefix, max_records).map_err(|_| QueryError::BufferTooSmall {
            needed: needed + 256,
        })
    }

    /// Answers a query IOCTL: decodes `input` as a [`QueryRequest`] for the query `ioctl`
    /// carries and writes the answer into `out`. Returns the bytes written. `now` is the
    /// current time (for the snapshot's time stamp).
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn answer(
        &self,
        ioctl_code: u32,
        input: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, QueryError> {
        let req = wire::decode::<QueryRequest<'_>>(input).map_err(QueryError::BadRequest)?;
        if ioctl::query_ioctl(req.query) != ioctl_code {
            return Err(QueryError::WrongQuery);
        }
        self.query(&req, out, now)
    }

    /// Answers a decoded request.
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn query(
        &self,
        req: &QueryRequest<'_>,
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, QueryError> {
        match req.query {
            QueryKind::Holders => {
                let mut path = [0u16; MAX_QUERY_PATH];
                let path = query_path(&req.hive, &mut path);
                self.holders(path, &req.cursor, req.flags, req.max_records, out)
            }
            QueryKind::Hives => self.hives(&req.cursor, req.max_records, out),
            QueryKind::Processes => self.processes(&req.cursor, req.max_records, out),
            QueryKind::Stats => wire::encode(&self.stats(), out).map_err(|e| match e {
                EncodeError::BufferTooSmall { needed, .. } => QueryError::BufferTooSmall { needed },
                EncodeError::FieldTooLarge { .. } => QueryError::WrongQuery,
            }),
            QueryKind::Snapshot => self.snapshot(&req.cursor, req.max_records, now, out),
            QueryKind::UnloadHistory => self.unload_history(&req.cursor, req.max_records, out),
            QueryKind::Stacks => self.stacks(&req.cursor, req.max_records, out),
            QueryKind::Modules => self.modules(&req.cursor, req.max_records, out),
        }
    }

    /// The first key of `hold` after `after` in (time, sequence) order.
    fn first_after(&self, hold: &Holding<L>, after: KeyPos) -> RecLink {
        let mut r = hold.head.load();
        while let Some(rec) = self.at(r) {
            if (rec.time.load(Relaxed), rec.seq.load(Relaxed)) > after {
                break;
            }
            r = rec.next.load();
        }
        r
    }

    /// Where to resume in `hold` after `after`: the key after the hinted one when the hint
    /// (the token of the last key sent) still names that key linked in this holding at that
    /// position, O(1); otherwise a walk from the head. The hint comes from user mode, so it is
    /// validated like any context value before it is used.
    fn resume_at(&self, hold: NonNull<Holding<L>>, after: KeyPos, hint: u64) -> RecLink {
        let (generation, slot) = split_id(hint);
        let (s, i) = split_ref(slot);
        if hint != 0
            && s <= self.shard_mask
            && let Some(rec) = self.objects[s as usize].get(i)
            && rec.holding.load(Relaxed) == hold.as_ptr().cast()
            && rec.generation() == generation
            && (rec.time.load(Relaxed), rec.seq.load(Relaxed)) == after
        {
            return rec.next.load();
        }
        self.first_after(holding_of(hold), after)
    }

    /// The next process after `lower` in the process table's walk order with keys in
    /// `hive_id` (any hive for `None`).
    fn next_process(&self, lower: Option<ProcessKey>, hive_id: Option<u32>) -> Option<ProcessKey> {
        self.processes.next_in_walk(lower, |p| {
            hive_id.map_or_else(
                || !p.holdings.load(Relaxed).is_null(),
                |id| p.holding(id).is_some(),
            )
        })
    }

    /// Holders of the hive containing `path`: per process (in the process table's walk
    /// order, [`crate::processes::walk_order`]) a summary,
    /// then its keys oldest first; at most [`MAX_PAGE_RECORDS`] a page. `flags` may hold
    /// [`QueryRequest::FLAG_SUMMARY_ONLY`].
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn holders(
        &self,
        path: &[u16],
        cursor: &Cursor,
        flags: u16,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let hive = self
            .hives
            .resolve(&self.pool, &self.names, path, false)
            .ok()
            .flatten()
            .ok_or(QueryError::UnknownHive)?;
        let result = self.holders_of(hive, cursor, flags, max_records, out);
        self.hives
            .unpin(&self.pool, &self.names, hive, self.vouch());
        result
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one paging state machine reads best in one piece"
    )]
    fn holders_of(
        &self,
        hive: NonNull<crate::hives::Hive>,
        cursor: &Cursor,
        flags: u16,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let h = hive_of(hive);
        let started = cursor.0[0] & STARTED != 0;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "cursor fields were packed from u32s"
        )]
        let (cur_hive, cur_seq) = (
            ((cursor.0[0] >> 32) & 0x7FFF_FFFF) as u32,
            cursor.0[0] as u32,
        );
        if started && cur_hive != h.id {
            return Err(QueryError::StaleCursor);
        }
        // A page that continues a process repeats its summary, so it needs room for two
        // records to make progress: a limit of one is taken as two (protocol/src/request.rs).
        let max_records = capped(if max_records == 1 { 2 } else { max_records });
        let (mut w, empty_len) = self.hives.with_locked(hive, |h| {
            let prefix = HoldersPrefix {
                hive_id: h.id,
                state: h.state(),
                kind: h.kind,
                open_keys: h.open_keys.load(Relaxed),
                holders: h.holders.load(Relaxed),
                flags: if h.file_truncated() {
                    HoldersPrefix::FILE_TRUNCATED
                } else {
                    0
                },
                mount: Text::Units(h.mount()),
                file: Text::Units(h.file()),
                completeness: self.completeness(h),
            };
            Self::start_page::<Holders>(out, &prefix, max_records)
                .map(|w| (w, empty_page_len::<Holders>(&prefix)))
        })?;
        let summary_only = flags & QueryRequest::FLAG_SUMMARY_ONLY != 0;
        let pack = |k: ProcessKey, (t, s): KeyPos, hint: u64| {
            Cursor([
                STARTED | (u64::from(h.id) << 32) | u64::from(s),
                k.pid,
                k.start_key,
                t,
                hint,
            ])
        };
        let mut resume = started.then(|| {
            (
                ProcessKey {
                    pid: cursor.0[1],
                    start_key: cursor.0[2],
                },
                (cursor.0[3], cur_seq),
                cursor.0[4],
            )
        });
        let mut lower = None;
        let mut last = *cursor;
        let mut needed = 0;
        let done = loop {
            let (key, after, continued, hint) = match resume.take() {
                Some((k, pos, hint)) => (k, pos, true, hint),
                None => match self.next_process(lower, Some(h.id)) {
                    Some(k) => (k, (0, 0), false, 0),
                    None => break true,
                },
            };
            lower = Some(key);
            let full = self.processes.with(key, |p| {
                let Some(hold_ptr) = p.holding(h.id) else {
                    return false;
                };
                let hold = holding_of(hold_ptr);
                let mut r = if summary_only {
                    RecLink::NONE
                } else {
                    self.resume_at(hold_ptr, after, hint)
                };
                if continued && (r.is_none() || summary_only) {
                    return false; // nothing left of this process
                }
                let head = hold.head.load();
                let summary = HolderRecord::Process(HolderProcess {
                    flags: (if p.exited.load(Relaxed) {
                        HolderProcess::EXITED
                    } else {
                        0
                    }) | (if continued {
                        HolderProcess::CONTINUED
                    } else {
                        0
                    }) | image_flags(p)
                        | wow64_flag(p),
                    pid: p.key.pid,
                    start_key: p.key.start_key,
                    open_keys: u64::from(hold.count.load(Relaxed)),
                    oldest_open: self.at(head).map_or(0, |h| h.time.load(Relaxed)),
                    image: text(p.image()),
                });
                if !w.push(&summary) {
                    needed = protocol::page::Codec::encoded_len(&summary);
                    return true;
                }
                last = pack(key, after, hint);
                while let Some(rec) = self.at(r) {
                    let pos = (rec.time.load(Relaxed), rec.seq.load(Relaxed));
                    let id = object_id(rec.generation(), rec.slot);
                    let k = HolderRecord::Key(HolderKey {
                        flags: name_flags(rec) | stack_flags(rec) | deleted_flag(rec),
                        id,
                        thread: u64::from(rec.thread.load(Relaxed)),
                        open_time: pos.0,
                        access: rec.access.load(Relaxed),
                        handle_opens: rec.opens.load(Relaxed),
                        handle_closes: rec.closes.load(Relaxed),
                        stack: rec.stack.load(Relaxed),
                        name: text(NonNull::new(rec.name.load(Relaxed))),
                    });
                    if !w.push(&k) {
                        needed = protocol::page::Codec::encoded_len(&k)
                            + protocol::page::Codec::encoded_len(&summary);
                        return true;
                    }
                    last = pack(key, pos, id);
                    r = rec.next.load();
                }
                last = pack(key, (u64::MAX, u32::MAX), 0);
                false
            });
            if full == Some(true) {
                break false;
            }
            if full.is_none() {
                last = pack(key, (u64::MAX, u32::MAX), 0);
            }
        };
        let progress = last != *cursor;
        let needed = needed + empty_len;
        self.finish_with(w, last, done, needed, progress)
    }

    /// Every hive, in the table's order: shard by shard, newest first in each
    /// ([`HiveTable::walk_from`]), resumed from the cursor's (shard, id): a hive that exists
    /// throughout a paged listing comes exactly once, and a page visits each hive at most
    /// once (clients sort by id) — though a resumed page steps over the shard's newer hives
    /// from its lists' heads first, so it costs the shard's hives newer than the cursor, not
    /// only its answer (audit 21b F14, [`HiveTable::walk_from`]). Until 2026-12-04 the listing went in id order by looking
    /// the whole table up for each hive written: quadratic in the number of hives (found in
    /// review).
    ///
    /// # Errors
    /// [`QueryError::BufferTooSmall`].
    pub fn hives(
        &self,
        cursor: &Cursor,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        const ALL: u64 = 1 << 32;
        let mut w = Self::start_page::<Hives>(out, &NoPrefix, max_records)?;
        // Cursor word 0: STARTED, the shard; word 1: the ids of that shard still to list
        // are those below it.
        #[allow(clippy::cast_possible_truncation, reason = "a shard index, masked")]
        let (first, mut below) = if cursor.0[0] & STARTED == 0 {
            (0, ALL)
        } else {
            ((cursor.0[0] & 0xFFFF) as usize, cursor.0[1].min(ALL))
        };
        let mut needed = 0;
        let mut shard = first;
        let done = loop {
            if shard >= HiveTable::<L>::shard_count() {
                break true;
            }
            let stopped = self.hives.walk_from(shard, below, |h| {
                let rec = HiveRecord {
                    id: h.id,
                    state: h.state(),
                    kind: h.kind,
                    open_keys: h.open_keys.load(Relaxed),
                    holders: h.holders.load(Relaxed),
                    flags: if h.file_truncated() {
                        HiveRecord::FILE_TRUNCATED
                    } else {
                        0
                    },
                    loaded_time: h.loaded_time(),
                    mount: Text::Units(h.mount()),
                    file: Text::Units(h.file()),
                };
                needed = protocol::page::Codec::encoded_len(&rec);
                w.push(&rec)
            });
            if let Some(id) = stopped {
                // That hive did not fit: the next page starts with it.
                below = u64::from(id) + 1;
                break false;
            }
            shard += 1;
            below = ALL;
        };
        self.finish(
            w,
            Cursor([STARTED | shard as u64, below, 0, 0, 0]),
            done,
            needed,
        )
    }

    /// Every process the tracker knows, in the process table's walk order
    /// ([`crate::processes::walk_order`]), resumed from the cursor's process key: a process
    /// that exists throughout a paged listing comes exactly once, however its key count
    /// changes between pages. Clients rank the listing (the CLI: most open keys first). A
    /// cursor in the order of the counts themselves would skip a process that climbs past
    /// it between two pages (a leak) and repeat one that falls behind it, and cost one pass
    /// over the table per batch ranked.
    ///
    /// # Errors
    /// [`QueryError::BufferTooSmall`].
    pub fn processes(
        &self,
        cursor: &Cursor,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let mut w = Self::start_page::<Processes>(out, &NoPrefix, max_records)?;
        let mut after = (cursor.0[0] & STARTED != 0).then_some(ProcessKey {
            pid: cursor.0[1],
            start_key: cursor.0[2],
        });
        let mut needed = 0;
        let done = loop {
            let Some(key) = self.processes.next_in_walk(after, |_| true) else {
                break true;
            };
            let pushed = self.processes.with(key, |p| {
                let rec = ProcessRecord {
                    pid: p.key.pid,
                    start_key: p.key.start_key,
                    open_keys: p.open_keys.load(Relaxed),
                    hives: p.nholdings.load(Relaxed),
                    flags: (if p.exited.load(Relaxed) {
                        ProcessRecord::EXITED
                    } else {
                        0
                    }) | image_flags(p),
                    image: text(p.image()),
                };
                needed = protocol::page::Codec::encoded_len(&rec);
                w.push(&rec)
            });
            if pushed == Some(false) {
                break false;
            }
            // Gone between the two looks (reaped): the walk goes on after it.
            after = Some(key);
        };
        let a = after.unwrap_or(ProcessKey {
            pid: 0,
            start_key: 0,
        });
        let needed = needed + empty_page_len::<Processes>(&NoPrefix);
        self.finish(w, Cursor([STARTED, a.pid, a.start_key, 0, 0]), done, needed)
    }

    /// Every tracked key, per process (in the process table's walk order), per hive, oldest
    /// first; at most [`MAX_PAGE_RECORDS`] a page.
    ///
    /// # Errors
    /// [`QueryError::BufferTooSmall`].
    pub fn snapshot(
        &self,
        cursor: &Cursor,
        max_records: u32,
        now: u64,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let mut w = Self::start_page::<Snapshot>(
            out,
            &SnapshotPrefix { taken_at: now },
            capped(max_records),
        )?;
        let started = cursor.0[0] & STARTED != 0;
        #[allow(clippy::cast_possible_truncation, reason = "packed from u32s")]
        let (cur_hive, cur_seq) = (
            ((cursor.0[0] >> 32) & 0x7FFF_FFFF) as u32,
            cursor.0[0] as u32,
        );
        let pack = |k: ProcessKey, hive: u32, (t, s): KeyPos, hint: u64| {
            Cursor([
                STARTED | (u64::from(hive) << 32) | u64::from(s),
                k.pid,
                k.start_key,
                t,
                hint,
            ])
        };
        let mut resume = started.then(|| {
            (
                ProcessKey {
                    pid: cursor.0[1],
                    start_key: cursor.0[2],
                },
                cur_hive,
                (cursor.0[3], cur_seq),
                cursor.0[4],
            )
        });
        let mut lower = None;
        let mut last = *cursor;
        let mut needed = 0;
        let done = loop {
            let (key, from_hive, after, hint) = match resume.take() {
                Some(x) => x,
                None => match self.next_process(lower, None) {
                    Some(k) => (k, 0, (0, 0), 0),
                    None => break true,
                },
            };
            lower = Some(key);
            let full = self.processes.with(key, |p| {
                let mut hp = p.holding_from(from_hive);
                while let Some(hptr) = hp {
                    let hold = holding_of(hptr);
                    let mut r = if hold.hive_id() == from_hive {
                        self.resume_at(hptr, after, hint)
                    } else {
                        hold.head.load()
                    };
                    while let Some(rec) = self.at(r) {
                        let pos = (rec.time.load(Relaxed), rec.seq.load(Relaxed));
                        let s = SnapshotRecord {
                            pid: p.key.pid,
                            start_key: p.key.start_key,
                            id: object_id(rec.generation(), rec.slot),
                            open_time: pos.0,
                            hive_id: hold.hive_id(),
                            flags: name_flags(rec),
                            name: text(NonNull::new(rec.name.load(Relaxed))),
                        };
                        if !w.push(&s) {
                            needed = protocol::page::Codec::encoded_len(&s);
                            return true;
                        }
                        last = pack(key, hold.hive_id(), pos, s.id);
                        r = rec.next.load();
                    }
                    hp = NonNull::new(hold.next.load(Relaxed));
                }
                false
            });
            if full == Some(true) {
                break false;
            }
            last = pack(key, AFTER_ALL_HIVES, (u64::MAX, u32::MAX), 0);
        };
        let needed = needed + empty_page_len::<Snapshot>(&SnapshotPrefix { taken_at: now });
        self.finish(w, last, done, needed)
    }

    /// Recent unload attempts, newest first.
    ///
    /// # Errors
    /// [`QueryError::BufferTooSmall`].
    pub fn unload_history(
        &self,
        cursor: &Cursor,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let mut w = Self::start_page::<UnloadHistory>(out, &NoPrefix, max_records)?;
        let before = if cursor.0[0] & STARTED != 0 {
            cursor.0[1]
        } else {
            u64::MAX
        };
        let mut last = before;
        let mut done = true;
        let mut needed = 0;
        self.history.for_each(|e| {
            // Key-count alarms share the event stream's ring but are not unload attempts.
            if e.sequence >= before || e.flags & UnloadRecord::KEY_ALARM != 0 {
                return true;
            }
            let mut holders = [UnloadHolder {
                pid: 0,
                start_key: 0,
                open_keys: 0,
                image: Text::EMPTY,
            }; protocol::history::MAX_UNLOAD_HOLDERS];
            let n = usize::from(e.n);
            for (dst, src) in holders.iter_mut().zip(&e.holders[..n]) {
                *dst = UnloadHolder {
                    pid: src.pid,
                    start_key: src.start_key,
                    open_keys: src.open_keys,
                    image: text(src.image),
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
                mount: text(e.mount),
                holders: protocol::history::UnloadHolders::Slice(&holders[..n]),
            };
            if !w.push(&rec) {
                needed = protocol::page::Codec::encoded_len(&rec);
                done = false;
                return false;
            }
            last = e.sequence;
            true
        });
        let needed = needed + empty_page_len::<UnloadHistory>(&NoPrefix);
        self.finish(w, Cursor([STARTED, last, 0, 0, 0]), done, needed)
    }
}
