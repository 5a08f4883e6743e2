//! Which code opened a key: stack capture, its scope, and the modules of processes.
//!
//! Issue 16: the capture scope (`!htrace -enable`'s habit: off
//! until asked, then for every open, one hive, one image, or one process id), the stacks stored for the
//! opens in it ([`crate::stacks`]), the images each process mapped ([`crate::modules`]),
//! and the `stacks` and `modules` queries that report them.
//!
//! The driver asks [`Tracker::capture_wanted`] after an open was tracked, walks the opening
//! thread's user-mode stack itself with no lock held (the walk may take page faults), and
//! hands the frames to [`Tracker::stack_captured`]. With capture off the first costs one
//! atomic load.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use protocol::capture::{
    CaptureOp, CaptureRequest, CaptureScope, CaptureState, MAX_FRAMES, MAX_SCOPE_UNITS, pid_of_text,
};
use protocol::cursor::Cursor;
use protocol::modules::{ModuleProcess, ModuleRecord, Modules, ModulesPrefix};
use protocol::stacks::{StackRecord, Stacks, StacksPrefix};
use protocol::text::{Text, eq_folded};
use protocol::wire::{self, EncodeError};

use crate::counters::{bump, get, locked_add32, locked_add64};
use crate::lock::{Exclusive, RawLock};
use crate::modules::{MAX_MODULES, MODULE_CLASS, MODULE_COST, Module, module_of};
use crate::names::{NameRef, name_of};
use crate::objects::STATE_MASK;
use crate::objects::{LIVE, Token};
use crate::pool::{Pool, alloc_init, free_block};
use crate::processes::{Holding, ProcessKey, holding_of, process_of};
use crate::queries::QueryError;
use crate::tracker::Tracker;

/// Record flag: capture was on for the open but the thread gave no user-mode frame.
pub const F_STACK_EMPTY: u32 = 1 << 12;
/// Record flag: the stack was captured but could not be stored.
pub const F_STACK_DROPPED: u32 = 1 << 13;
/// Record flag: capture was on, but the open was outside its scope.
pub const F_STACK_OUT_OF_SCOPE: u32 = 1 << 14;

const STARTED: u64 = 1 << 63;

/// The capture scope. The scope word is read without the lock (the hot path's one load);
/// the text and the time are written under the lock.
pub struct Capture<L> {
    scope: AtomicU32,
    lock: L,
    text: UnsafeCell<[u16; MAX_SCOPE_UNITS]>,
    len: AtomicU32,
    since: AtomicU64,
    /// The process id a [`CaptureScope::Process`] scope names (0 for any other scope),
    /// parsed once when the scope is set.
    pid: AtomicU64,
}

// SAFETY: `text` is read and written only under `lock`; the rest are atomics.
unsafe impl<L: RawLock> Sync for Capture<L> {}
// SAFETY: as above.
unsafe impl<L: RawLock> Send for Capture<L> {}

impl<L: RawLock> Default for Capture<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: RawLock> Capture<L> {
    /// Off.
    #[must_use]
    pub fn new() -> Self {
        Self {
            scope: AtomicU32::new(CaptureScope::Off as u32),
            lock: L::new(),
            text: UnsafeCell::new([0; MAX_SCOPE_UNITS]),
            len: AtomicU32::new(0),
            since: AtomicU64::new(0),
            pid: AtomicU64::new(0),
        }
    }

    /// The scope word as stored (`CaptureScope as u32`), undecoded: the hot path compares
    /// it with the scopes' values (issue 14: decoding it first cost seven instructions of
    /// every open while capture is off).
    fn scope_word(&self) -> u32 {
        self.scope.load(Acquire)
    }

    fn scope(&self) -> CaptureScope {
        #[allow(clippy::cast_possible_truncation, reason = "stored from a u16")]
        let v = self.scope.load(Acquire) as u16;
        CaptureScope::from_u16(v).unwrap_or(CaptureScope::Off)
    }

    /// Runs `f` on the scope and its text under the lock.
    fn with<R>(&self, f: impl FnOnce(CaptureScope, &[u16]) -> R) -> R {
        let _g = Exclusive::new(&self.lock);
        // SAFETY: the lock is held; `len` never exceeds the buffer.
        let text = unsafe { &*self.text.get() };
        let n = (self.len.load(Relaxed) as usize).min(MAX_SCOPE_UNITS);
        f(self.scope(), &text[..n])
    }

    /// Sets the scope; `since` moves only when the scope or its text changes (setting what
    /// is already set changes nothing, so the request is idempotent).
    fn set(&self, scope: CaptureScope, text: &Text<'_>, now: u64) {
        let _g = Exclusive::new(&self.lock);
        // SAFETY: the lock is held: no other reference to the buffer exists.
        let buf = unsafe { &mut *self.text.get() };
        let old = (self.len.load(Relaxed) as usize).min(MAX_SCOPE_UNITS);
        if self.scope() == scope && old == text.len() && buf[..old].iter().copied().eq(text.units())
        {
            return;
        }
        let mut n: u32 = 0;
        for (dst, u) in buf.iter_mut().zip(text.units()) {
            *dst = u;
            n += 1;
        }
        self.len.store(n, Relaxed);
        self.since.store(now, Relaxed);
        let pid = if scope == CaptureScope::Process {
            pid_of_text(text.units()).unwrap_or(0)
        } else {
            0
        };
        self.pid.store(pid, Relaxed);
        self.scope.store(scope as u32, Release);
    }
}

/// The last path component of `path` (after its last backslash).
fn file_name(path: &[u16]) -> &[u16] {
    path.rsplit(|&u| u == u16::from(b'\\'))
        .next()
        .unwrap_or(path)
}

impl<P: Pool, L: RawLock> Tracker<P, L> {
    /// The holding of the live record `token` names, for the thread that just opened it
    /// (the object is referenced by its open, and its token is not out yet).
    fn holding_of_open(&self, token: Token) -> Option<NonNull<Holding<L>>> {
        let (_, rec) = self.token_rec(token)?;
        let (generation, state) = rec.read();
        if generation != token.generation() || state & STATE_MASK != LIVE {
            return None;
        }
        NonNull::new(rec.holding.load(Relaxed).cast::<Holding<L>>())
    }

    /// Whether the open that returned `token` is in the capture scope. Called by the thread
    /// that opened it, before the token is stored as the object's context.
    pub fn capture_wanted(&self, token: Token) -> bool {
        const ALL: u32 = CaptureScope::All as u32;
        const HIVE: u32 = CaptureScope::Hive as u32;
        const IMAGE: u32 = CaptureScope::Image as u32;
        const PROCESS: u32 = CaptureScope::Process as u32;
        match self.capture.scope_word() {
            // Every open: no text to read, so no lock.
            ALL => self.holding_of_open(token).is_some(),
            HIVE | IMAGE | PROCESS => self.scoped_capture_wanted(token),
            // Off, or a word that names no scope (read as off, as `Capture::scope` does).
            _ => false,
        }
    }

    /// [`Self::capture_wanted`] for a scope that names a hive, an image or a process: out of
    /// line, so that the capture-off test inlined into every open stays as small as it was
    /// before the process scope (issue 14: inlined, the scoped branch cost a fresh open 25
    /// instructions with capture off).
    #[inline(never)]
    fn scoped_capture_wanted(&self, token: Token) -> bool {
        let Some(hold_ptr) = self.holding_of_open(token) else {
            return false;
        };
        let hold = holding_of(hold_ptr);
        // A process scope needs no text, so no lock: every open on the machine is tested
        // against it while it is set (review 24a, 4).
        let wanted = if self.capture.scope_word() == CaptureScope::Process as u32 {
            self.capture.pid.load(Relaxed) == process_of(hold.process).key.pid
        } else {
            self.scope_text_wanted(hold)
        };
        if !wanted {
            // Said on the record, so that a report does not call it "capture was off".
            if let Some((_, rec)) = self.token_rec(token) {
                rec.set_flags(F_STACK_OUT_OF_SCOPE);
            }
        }
        wanted
    }

    /// Whether the open whose holding is `hold` is in a hive or image scope (read under the
    /// scope's lock, with its text).
    fn scope_text_wanted(&self, hold: &Holding<L>) -> bool {
        self.capture.with(|scope, text| match scope {
            CaptureScope::Off => false,
            CaptureScope::All => true,
            CaptureScope::Hive => match self.hives.resolve(&self.pool, &self.names, text, false) {
                Ok(Some(h)) => {
                    let same = h == hold.hive;
                    self.hives.unpin(&self.pool, &self.names, h, self.vouch());
                    same
                }
                _ => false,
            },
            CaptureScope::Image => {
                let proc = process_of(hold.process);
                let _pg = Exclusive::new(&proc.lock);
                proc.image()
                    .is_some_and(|n| eq_folded(file_name(name_of(n).units()), text))
            }
            // The scope's id was read from its text when it was set; the process's id is set
            // once, when its record is made (no lock needed for either).
            CaptureScope::Process => {
                self.capture.pid.load(Relaxed) == process_of(hold.process).key.pid
            }
        })
    }

    /// The user-mode `frames` of the open that returned `token` (innermost first; empty when
    /// the thread had none), captured by the driver with no lock held; `truncated` when the
    /// stack was deeper than the buffer. Stored (shared with every open from the same
    /// stack) and named in the object's record; a stack that cannot be stored is counted
    /// and flagged on the record.
    pub fn stack_captured(&self, token: Token, object: u64, frames: &[u64], truncated: bool) {
        if frames.is_empty() {
            bump(&self.counters.stacks_empty);
            self.with_live(token, object, |_, rec| {
                rec.set_flags(F_STACK_EMPTY);
            });
            return;
        }
        let flags = if truncated || frames.len() > MAX_FRAMES {
            crate::stacks::TRUNCATED
        } else {
            0
        };
        let Some(id) = self.stacks.intern(&self.pool, frames, flags) else {
            bump(&self.counters.stacks_dropped);
            self.with_live(token, object, |_, rec| {
                rec.set_flags(F_STACK_DROPPED);
            });
            return;
        };
        let stored = self.with_live(token, object, |_, rec| {
            if rec.stack.load(Relaxed) != 0 {
                return false;
            }
            let Some(hold) = NonNull::new(rec.holding.load(Relaxed).cast::<Holding<L>>()) else {
                return false;
            };
            let proc = process_of(holding_of(hold).process);
            let _pg = Exclusive::new(&proc.lock);
            locked_add32(&proc.stacked, 1);
            rec.stack.store(id, Relaxed);
            true
        });
        if stored == Some(true) {
            bump(&self.counters.stacks_captured);
        } else {
            self.release_stack(id);
        }
    }

    /// Gives back the stack a removed record carried; its process's count was lowered under
    /// the process lock by the caller.
    pub(crate) fn release_stack(&self, id: u32) {
        if id != 0 {
            self.stacks
                .release(&self.pool, id, || self.capture.scope() != CaptureScope::Off);
        }
    }

    /// Answers `IOCTL_HIVETRACK_CAPTURE`: applies a set, and writes the state after it.
    ///
    /// # Errors
    /// [`QueryError::BadRequest`] for a malformed request, [`QueryError::BufferTooSmall`].
    pub fn answer_capture(
        &self,
        input: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, QueryError> {
        let req = wire::decode::<CaptureRequest<'_>>(input).map_err(QueryError::BadRequest)?;
        if req.op == CaptureOp::Set {
            self.capture.set(req.scope, &req.text, now);
            if req.scope == CaptureScope::Off {
                self.stacks.trim(&self.pool);
            }
        }
        self.capture.with(|scope, text| {
            let state = CaptureState {
                scope,
                #[allow(clippy::cast_possible_truncation, reason = "16")]
                max_frames: MAX_FRAMES as u32,
                since: self.capture.since.load(Relaxed),
                text: Text::Units(text),
            };
            wire::encode(&state, out).map_err(|e| match e {
                EncodeError::BufferTooSmall { needed, .. } => QueryError::BufferTooSmall { needed },
                EncodeError::FieldTooLarge { .. } => QueryError::WrongQuery,
            })
        })
    }

    /// An image was mapped into `process` (the load-image notification): `base`, `size`,
    /// its path as the kernel gave it (empty when it gave none), at `time`. Kept with the
    /// process, in load order, charged to its share — only for a process the tracker knows
    /// (started while the driver ran: the creation notification comes before the first
    /// thread maps its images; or one that opened a tracked key). A load never makes a
    /// process record: one for a process whose exit was already seen (a late notification)
    /// or never will be would live until unload. Loads not kept are counted.
    #[inline(never)] // rare: kept out of the registry callback's hot frame
    pub fn image_loaded(&self, process: ProcessKey, base: u64, size: u64, name: &[u16], time: u64) {
        // A process not known (or gone) keeps nothing: its name is not even interned.
        if self.processes.with(process, |p| !p.exited.load(Relaxed)) != Some(true) {
            bump(&self.counters.modules_dropped);
            return;
        }
        // A name the kernel gave but that could not be stored leaves the module unnamed, not
        // unlisted: Windows sends no unload notification (Learn, PsSetLoadImageNotifyRoutine),
        // so an image mapped where an unloaded one was must still cover its range, or frames
        // in it would be put down to the old image (audit 20a, H1).
        let interned = if name.is_empty() {
            None
        } else {
            self.names.intern_new(&self.pool, name).ok()
        };
        let mut flags = 0;
        match interned {
            Some((n, _)) if name_of(n).truncated() => {
                flags |= protocol::modules::Module::NAME_TRUNCATED;
            }
            Some(_) => {}
            None => flags |= protocol::modules::Module::NAME_MISSING,
        }
        let name_ref = interned.map(|(n, _)| n);
        let charge = MODULE_COST
            + interned
                .filter(|&(_, new)| new)
                .map_or(0, |(n, _)| name_of(n).cost());
        let kept = self
            .processes
            .lock_process(&self.pool, process, false)
            .ok()
            .and_then(|lp| {
                let proc = process_of(lp.process);
                if proc.exited.load(Relaxed) {
                    return None;
                }
                // From the first load not kept, a frame may lie in an image not listed: the
                // reports are told since when (the modules page's `lost_since`).
                let note_loss = || {
                    if proc.modules_lost_since.load(Relaxed) == 0 {
                        proc.modules_lost_since.store(time.max(1), Relaxed);
                    }
                };
                if proc.nmodules.load(Relaxed) >= MAX_MODULES
                    || proc.charged.load(Relaxed).saturating_add(charge)
                        > self.config.process_share_bytes
                {
                    note_loss();
                    return None;
                }
                let Some(m) = alloc_init(
                    &self.pool,
                    MODULE_CLASS,
                    Module {
                        next: core::sync::atomic::AtomicPtr::new(ptr::null_mut()),
                        base: AtomicU64::new(base),
                        size: AtomicU64::new(size),
                        time: AtomicU64::new(time),
                        name: core::sync::atomic::AtomicPtr::new(
                            name_ref.map_or(ptr::null_mut(), NonNull::as_ptr),
                        ),
                        flags: AtomicU32::new(flags),
                    },
                ) else {
                    note_loss();
                    return None;
                };
                match NonNull::new(proc.modules_tail.load(Relaxed)) {
                    Some(tail) => module_of(tail).next.store(m.as_ptr(), Relaxed),
                    None => proc.modules.store(m.as_ptr(), Relaxed),
                }
                proc.modules_tail.store(m.as_ptr(), Relaxed);
                locked_add32(&proc.nmodules, 1);
                locked_add64(&proc.charged, charge);
                locked_add64(&proc.own_charged, charge);
                locked_add64(&proc.modules_charged, charge);
                Some(())
            });
        if kept.is_some() {
            self.counters.modules.fetch_add(1, Relaxed);
            if interned.is_none() && !name.is_empty() {
                // Kept without the path it came with: not recorded in full.
                bump(&self.counters.modules_dropped);
            } else {
                bump(&self.counters.image_loads_seen);
            }
        } else {
            bump(&self.counters.modules_dropped);
            if let Some(n) = name_ref {
                self.names.release(&self.pool, n);
            }
        }
    }

    /// An image load for a process that could not be identified (gone before the driver
    /// could look it up): counted as `modules_dropped`.
    pub fn image_load_unknown(&self) {
        bump(&self.counters.modules_dropped);
    }

    /// Frees a module list taken from a process record that is gone (or being torn down), or
    /// unlinked from an exited one whose leftovers did not fit ([`Self::process_exited`]).
    pub(crate) fn free_modules(&self, mut cur: Option<NonNull<Module>>) {
        while let Some(m) = cur {
            let module = module_of(m);
            cur = NonNull::new(module.next.load(Relaxed));
            let name: Option<NameRef> = NonNull::new(module.name.load(Relaxed));
            // SAFETY: the list belonged to a process record no one can reach any more, or was
            // unlinked from its process under the process's lock (`process_exited`).
            unsafe { free_block(&self.pool, MODULE_CLASS, m) };
            self.counters.modules.fetch_sub(1, Relaxed);
            if let Some(n) = name {
                self.names.release(&self.pool, n);
            }
        }
    }

    /// The stored stacks, in table order, resumable.
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn stacks(
        &self,
        cursor: &Cursor,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let prefix = StacksPrefix {
            dropped: get(&self.counters.stacks_dropped),
        };
        let empty_len = protocol::page::empty_page_len::<Stacks>(&prefix);
        let mut w = Self::start_page::<Stacks>(out, &prefix, max_records)?;
        #[allow(clippy::cast_possible_truncation, reason = "a slot index")]
        let mut at = if cursor.0[0] & STARTED == 0 {
            0
        } else {
            cursor.0[0] as u32
        };
        let mut needed = 0;
        let done = loop {
            let Some((s, next)) = self.stacks.next_from(at) else {
                break true;
            };
            let rec = StackRecord {
                id: s.id,
                flags: u16::from(s.flags),
                uses: s.uses,
                len: u16::from(s.len),
                frames: s.frames,
            };
            if !w.push(&rec) {
                needed = protocol::page::Codec::encoded_len(&rec);
                break false;
            }
            at = next;
        };
        self.finish(
            w,
            Cursor([STARTED | u64::from(at), 0, 0, 0, 0]),
            done,
            needed + empty_len,
        )
    }

    /// The modules of every process that has tracked objects carrying a stack, per process
    /// in the process table's walk order, in load order; resumable; at most
    /// [`crate::queries::MAX_PAGE_RECORDS`] a page.
    ///
    /// # Errors
    /// [`QueryError`].
    pub fn modules(
        &self,
        cursor: &Cursor,
        max_records: u32,
        out: &mut [u8],
    ) -> Result<usize, QueryError> {
        let prefix = ModulesPrefix {
            dropped: get(&self.counters.modules_dropped),
        };
        // A page that continues a process repeats it first: it needs room for two records.
        let max_records = crate::queries::capped(if max_records == 1 { 2 } else { max_records });
        let empty_len = protocol::page::empty_page_len::<Modules>(&prefix);
        let mut w = Self::start_page::<Modules>(out, &prefix, max_records)?;
        let mut resume = (cursor.0[0] & STARTED != 0).then(|| {
            (
                ProcessKey {
                    pid: cursor.0[1],
                    start_key: cursor.0[2],
                },
                cursor.0[3],
            )
        });
        let mut lower = None;
        let mut last = *cursor;
        let mut needed = 0;
        let mut progress = true;
        let done = loop {
            let (key, skip, continued) = match resume.take() {
                Some((k, skip)) => (k, skip, true),
                None => match self
                    .processes
                    .next_in_walk(lower, |p| p.stacked.load(Relaxed) > 0)
                {
                    Some(k) => (k, 0, false),
                    None => break true,
                },
            };
            lower = Some(key);
            let full = self.processes.with(key, |p| {
                let head = ModuleRecord::Process(ModuleProcess {
                    flags: (if p.exited.load(Relaxed) {
                        ModuleProcess::EXITED
                    } else {
                        0
                    }) | if continued {
                        ModuleProcess::CONTINUED
                    } else {
                        0
                    },
                    pid: p.key.pid,
                    start_key: p.key.start_key,
                    lost_since: p.modules_lost_since.load(Relaxed),
                });
                // Resume where the last page stopped in O(1) when it stopped here (the hint:
                // modules are freed only with their process, or at its exit with the hint
                // cleared, so a hinted one is still on the list); otherwise walk to the
                // position.
                let hinted = u64::from(p.modules_hint_index.load(Relaxed));
                let (mut cur, mut index) = match NonNull::new(p.modules_hint.load(Relaxed)) {
                    Some(h) if skip != 0 && skip == hinted => (h.as_ptr(), hinted),
                    _ => (p.modules.load(Relaxed), 0u64),
                };
                while index < skip {
                    let Some(m) = NonNull::new(cur) else { break };
                    cur = module_of(m).next.load(Relaxed);
                    index += 1;
                }
                if continued && cur.is_null() {
                    return false;
                }
                if !w.push(&head) {
                    needed = protocol::page::Codec::encoded_len(&head);
                    return true;
                }
                last = Cursor([STARTED, key.pid, key.start_key, index, 0]);
                let mut sent = 0;
                while let Some(m) = NonNull::new(cur) {
                    let module = module_of(m);
                    let name = NonNull::new(module.name.load(Relaxed));
                    let rec = ModuleRecord::Module(protocol::modules::Module {
                        flags: module.flags.load(Relaxed),
                        base: module.base.load(Relaxed),
                        size: module.size.load(Relaxed),
                        load_time: module.time.load(Relaxed),
                        name: name.map_or(Text::EMPTY, |n| Text::Units(name_of(n).units())),
                    });
                    if !w.push(&rec) {
                        needed = protocol::page::Codec::encoded_len(&rec)
                            + protocol::page::Codec::encoded_len(&head);
                        if sent == 0 && continued {
                            progress = false;
                        }
                        p.modules_hint.store(m.as_ptr(), Relaxed);
                        p.modules_hint_index
                            .store(u32::try_from(index).unwrap_or(u32::MAX), Relaxed);
                        return true;
                    }
                    sent += 1;
                    index += 1;
                    last = Cursor([STARTED, key.pid, key.start_key, index, 0]);
                    cur = module.next.load(Relaxed);
                }
                // Whole: the next page starts after this process.
                last = Cursor([STARTED, key.pid, key.start_key, u64::MAX, 0]);
                false
            });
            if full == Some(true) {
                break false;
            }
        };
        self.finish_with(w, last, done, needed + empty_len, progress)
    }
}
