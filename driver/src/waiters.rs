//! Pending wait-free and event-stream requests: IRPs held until their hive is free (or an
//! event after the caller's last one exists: issue 17), their timeout passes, the caller
//! cancels them, their file object is cleaned up, or the driver unloads.
//!
//! The same timer looks again at hives whose unload failed, when their watch is due
//! ([`tracker::held_after`]): its DPC runs the tracker's check (spin locks and non-paged
//! blocks only, allowed at `DISPATCH_LEVEL`) before it completes the requests that timed
//! out, and wakes the event readers when the check numbered an event.
//!
//! Storage is a fixed table in static (non-paged) memory, so waiting allocates nothing and
//! cannot fail under low resources; a full table answers `STATUS_INSUFFICIENT_RESOURCES`.
//! One spin lock guards the table; one `KTIMER` with its `KDPC` is armed for the earliest
//! deadline.
//!
//! Cancel safety is the documented handshake on `Irp->CancelRoutine` (docs: "Synchronizing
//! IRP Cancellation", "Cancel-Safe IRP Queues"): a request is queued with a cancel routine
//! set, under the table lock; whoever wants to complete it (hive free, timeout, cleanup,
//! unload) first swaps the routine with NULL and completes the IRP only if it got the
//! routine back. NULL means `IoCancelIrp` took it: the cancel routine will run, take the
//! table lock, remove the entry and complete the IRP itself, so the entry is left for it.
//!
//! A wait is never missed: a request counts itself as pending before it tests its hive, and
//! every event that can free a hive (a key object's cleanup, a process exit, an unload)
//! tests the pending count after the tracker changed, with a full fence on both sides.

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    mem::MaybeUninit,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence},
};

use protocol::completeness::Completeness;
use protocol::wait::{WaitFreeAnswer, WaitOutcome};
use tracker::{HiveFree, WatchedHive, lock::RawLock};
use wdk_sys::{
    _KTIMER, DEVICE_OBJECT, IRP, KDPC, LARGE_INTEGER, NTSTATUS, SL_PENDING_RETURNED,
    STATUS_CANCELLED, STATUS_INSUFFICIENT_RESOURCES,
    ntddk::{
        IoReleaseCancelSpinLock, KeCancelTimer, KeFlushQueuedDpcs, KeInitializeDpc,
        KeInitializeTimer, KeSetTimer,
    },
};

use crate::{clock, dispatch, ffi::current_stack_location, ioctl, lock::SpinLock, tracking};

/// Waits that can be pending at once.
pub const MAX_WAITS: usize = 32;

/// `SL_PENDING_RETURNED` as the `UCHAR` of `IO_STACK_LOCATION.Control` (the constant is 1).
#[allow(clippy::cast_possible_truncation, reason = "the constant is 1")]
const PENDING_RETURNED: u8 = SL_PENDING_RETURNED as u8;

/// One pending request.
#[derive(Clone, Copy)]
struct Wait {
    /// The IRP, null when the slot is free.
    irp: *mut IRP,
    /// The file object it was sent on (for `IRP_MJ_CLEANUP`).
    file: *mut c_void,
    /// Its `METHOD_BUFFERED` system buffer and the output length, for the answer.
    buffer: *mut u8,
    out_len: usize,
    /// The hive it waits for.
    hive: WatchedHive,
    /// An event-stream request instead: events after this sequence number, at most so many.
    events: Option<EventsWait>,
    /// Interrupt time when it was queued, and when it times out (`u64::MAX`: never).
    started: u64,
    deadline: u64,
}

impl Wait {
    const FREE: Self = Self {
        irp: null_mut(),
        file: null_mut(),
        buffer: null_mut(),
        out_len: 0,
        hive: WatchedHive::NONE,
        events: None,
        started: 0,
        deadline: 0,
    };
}

/// A request taken out of the table, to be completed once the lock is released.
#[derive(Clone, Copy)]
struct Done {
    wait: Wait,
    /// `None`: cancelled (no answer).
    outcome: Option<WaitOutcome>,
}

/// The table, its timer and their state.
struct Table {
    lock: SpinLock,
    slots: UnsafeCell<[Wait; MAX_WAITS]>,
    /// Deadline the timer works toward (`u64::MAX`: not set): it fires then, or a [`SLICE`]
    /// earlier when that is sooner and the DPC sets it again. Guarded by `lock`.
    armed_for: UnsafeCell<u64>,
    timer: UnsafeCell<MaybeUninit<_KTIMER>>,
    dpc: UnsafeCell<MaybeUninit<KDPC>>,
}

// SAFETY: `slots` and `armed_for` are only touched under `lock`; the timer and DPC are
// initialised once in `init` (before any request can arrive) and then only passed to the
// kernel's timer routines, which synchronise themselves.
unsafe impl Sync for Table {}

static TABLE: Table = Table {
    lock: SpinLock::unlocked(),
    slots: UnsafeCell::new([Wait::FREE; MAX_WAITS]),
    armed_for: UnsafeCell::new(u64::MAX),
    timer: UnsafeCell::new(MaybeUninit::uninit()),
    dpc: UnsafeCell::new(MaybeUninit::uninit()),
};

/// Pending wait-free requests, read without the lock by every hive-freeing event.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Pending event-stream requests, read without the lock by every event: counted apart, so
/// that a collector always waiting costs a close or a cleanup nothing.
static PENDING_EVENTS: AtomicUsize = AtomicUsize::new(0);

/// The pending count for a request of this kind.
const fn pending_of(events: Option<EventsWait>) -> &'static AtomicUsize {
    if events.is_some() {
        &PENDING_EVENTS
    } else {
        &PENDING
    }
}
/// Set by [`init`]: the timer and DPC exist.
static READY: AtomicBool = AtomicBool::new(false);
/// Set by [`shutdown`]: no request is queued and the timer is not re-armed any more.
static CLOSING: AtomicBool = AtomicBool::new(false);

/// The table with its lock held.
struct Locked(());

impl Locked {
    fn take() -> Self {
        TABLE.lock.lock_exclusive();
        Self(())
    }

    #[allow(
        clippy::unused_self,
        clippy::needless_pass_by_ref_mut,
        reason = "the exclusive borrow of the guard is what makes the returned borrow unique"
    )]
    fn slots(&mut self) -> &mut [Wait; MAX_WAITS] {
        // `&mut self` makes this the only reference while the guard lives.
        // SAFETY: the table lock is held for the life of `self`.
        unsafe { &mut *TABLE.slots.get() }
    }

    #[allow(
        clippy::unused_self,
        clippy::needless_pass_by_ref_mut,
        reason = "the exclusive borrow of the guard is what makes the returned borrow unique"
    )]
    fn armed_for(&mut self) -> &mut u64 {
        // SAFETY: as for `slots`.
        unsafe { &mut *TABLE.armed_for.get() }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: taken in `take` by this value.
        unsafe { TABLE.lock.unlock_exclusive() };
    }
}

/// Initialises the timer and its DPC. Call once from `DriverEntry`, before the device can
/// be opened.
pub fn init() {
    // Docs: `KeInitializeTimer`; the timer lives in static non-paged memory and never moves.
    // SAFETY: `init` runs once, before any request can use the timer.
    unsafe { KeInitializeTimer(TABLE.timer.get().cast()) };
    // Docs: `KeInitializeDpc`; `shutdown` cancels the timer and flushes DPCs before unload.
    // SAFETY: runs once before any request; the DPC is static and its routine lives as long.
    unsafe { KeInitializeDpc(TABLE.dpc.get().cast(), Some(timer_dpc), null_mut()) };
    READY.store(true, Ordering::Release);
}

/// The port of wdm.h's inline `IoSetCancelRoutine`: an interlocked exchange of
/// `Irp->CancelRoutine`. Returns whether a routine was set before.
///
/// # Safety
/// `irp` must be an IRP this driver owns or has queued (it cannot have been completed).
unsafe fn swap_cancel_routine(irp: *mut IRP, routine: bool) -> bool {
    let new = if routine {
        cancel_routine as *const () as usize
    } else {
        0
    };
    // SAFETY: the IRP is live (contract); only the field's address is taken.
    let raw = unsafe { &raw mut (*irp).CancelRoutine };
    // The field is a nullable function pointer, the size and alignment of a usize.
    // SAFETY: it is only ever accessed atomically, by the I/O manager (IoCancelIrp) and us.
    let field = unsafe { AtomicUsize::from_ptr(raw.cast()) };
    field.swap(new, Ordering::SeqCst) != 0
}

/// Whether `IoCancelIrp` has been called on `irp`.
///
/// # Safety
/// As for [`swap_cancel_routine`].
unsafe fn cancel_requested(irp: *mut IRP) -> bool {
    // SAFETY: the IRP is live (contract); only the field's address is taken.
    let raw = unsafe { &raw const (*irp).Cancel };
    // SAFETY: `Cancel` is a BOOLEAN the I/O manager sets; read once, as it may change.
    let cancel = unsafe { core::ptr::read_volatile(raw) };
    cancel != 0
}

/// What [`enqueue`] did with a request.
pub enum Queued {
    /// The IRP is pending: return `STATUS_PENDING` and never touch it again.
    Pending,
    /// Not queued: complete it now with this outcome (`None`: cancelled), or with the status.
    Now(Result<Option<WaitOutcome>, NTSTATUS>),
}

/// A validated wait-free or event-stream request.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// The hive (wait-free).
    pub hive: WatchedHive,
    /// Milliseconds, `u32::MAX` = no timeout.
    pub timeout_ms: u32,
    /// An event-stream request (`IOCTL_HIVETRACK_WAIT_EVENTS`) instead of a wait-free one.
    pub events: Option<EventsWait>,
}

/// What an event-stream request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsWait {
    /// The last sequence number the caller has.
    pub after: u64,
    /// At most so many events in the answer (0: as many as fit).
    pub max_records: u32,
}

/// Whether `w` can be answered now: its hive is free or gone, or an event after its last
/// one exists. The outcome is the wait-free answer's (an event-stream answer is written
/// from the tracker's stream whatever it is).
fn ready(
    tracker: &tracking::DriverTracker,
    hive: WatchedHive,
    events: Option<EventsWait>,
) -> Option<WaitOutcome> {
    if let Some(ev) = events {
        return tracker.events_after(ev.after).then_some(WaitOutcome::Free);
    }
    match tracker.hive_free(hive) {
        HiveFree::Held => None,
        HiveFree::Free => Some(WaitOutcome::Free),
        HiveFree::Unloaded => Some(WaitOutcome::Unloaded),
    }
}

/// Queues `irp` to wait for its hive, or says how to complete it now.
///
/// # Safety
/// `irp` must be the live `IRP_MJ_DEVICE_CONTROL` IRP being dispatched, not yet completed;
/// `buffer` its system buffer of at least `out_len` bytes, `file` its file object.
pub unsafe fn enqueue(
    irp: *mut IRP,
    buffer: *mut u8,
    out_len: usize,
    file: *mut c_void,
    request: Request,
) -> Queued {
    if !READY.load(Ordering::Acquire) || CLOSING.load(Ordering::Acquire) {
        return Queued::Now(Err(STATUS_INSUFFICIENT_RESOURCES));
    }
    let now = clock::interrupt_time();
    let deadline = if request.timeout_ms == u32::MAX {
        u64::MAX
    } else {
        now.saturating_add(u64::from(request.timeout_ms) * 10_000)
    };
    let mut t = Locked::take();
    let Some(index) = t.slots().iter().position(|w| w.irp.is_null()) else {
        return Queued::Now(Err(STATUS_INSUFFICIENT_RESOURCES));
    };
    // Count ourselves before testing the hive (or the stream): an event that frees it after
    // the test sees the count and comes for the table lock, which we hold until the entry is
    // in.
    let pending = pending_of(request.events);
    pending.fetch_add(1, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    // SAFETY: `file` is the IRP's file object, referenced while its IRP is dispatched.
    if unsafe { cleaned_up(file) } {
        // Dispatched after IRP_MJ_CLEANUP of its file object (another thread's request was
        // already past the handle lookup): no handle is left to cancel it with, and a
        // pending IRP would keep the file object, and so a service stop, waiting forever.
        pending.fetch_sub(1, Ordering::SeqCst);
        return Queued::Now(Ok(None));
    }
    let state = tracking::get().map_or(Some(WaitOutcome::Unloaded), |tr| {
        ready(tr, request.hive, request.events)
    });
    let answer_now = match state {
        Some(outcome) => Some(Some(outcome)),
        None if request.timeout_ms == 0 => Some(Some(WaitOutcome::TimedOut)),
        None => None,
    };
    if let Some(outcome) = answer_now {
        pending.fetch_sub(1, Ordering::SeqCst);
        return Queued::Now(Ok(outcome));
    }
    // SAFETY: the IRP is ours (contract).
    unsafe { swap_cancel_routine(irp, true) };
    // SAFETY: the IRP is ours (contract).
    let cancelled = unsafe { cancel_requested(irp) };
    // SAFETY: the IRP is ours (contract).
    if cancelled && unsafe { swap_cancel_routine(irp, false) } {
        // Cancelled before it was queued, and the routine was still ours: the I/O manager
        // will not call it, so we complete the IRP.
        pending.fetch_sub(1, Ordering::SeqCst);
        return Queued::Now(Ok(None));
    }
    // Either not cancelled, or IoCancelIrp already took the routine and will call it: it
    // then finds the entry (it needs the lock we hold) and completes the IRP.
    // SAFETY: the dispatched IRP's current stack location is ours.
    let stack = unsafe { current_stack_location(irp) };
    // The port of wdm.h's inline `IoMarkIrpPending`, before anyone else can complete it.
    // SAFETY: the stack location of a live IRP we own.
    unsafe { (*stack).Control |= PENDING_RETURNED };
    t.slots()[index] = Wait {
        irp,
        file,
        buffer,
        out_len,
        hive: request.hive,
        events: request.events,
        started: now,
        deadline,
    };
    if deadline < *t.armed_for() {
        arm(&mut t, deadline, now);
    }
    Queued::Pending
}

/// What a wait answer about hive `id` could not see: since when tracking runs and the
/// losses that concern the hive (a "free" from the driver means free of what it tracks).
pub fn completeness(id: u32) -> Completeness {
    tracking::get().map_or_else(Completeness::default, |tr| tr.completeness_of(id))
}

/// The longest the timer is set for at once (100 ns units: 10 s): a deadline further off is
/// reached in slices, each DPC comparing the interrupt time with it and setting the next.
/// The interrupt time counts a sleep (Learn, `KeQueryInterruptTime`: the bias added at wake)
/// but a relative timer does not (Learn, `SetWaitableTimer`: "Windows 8 and later, Windows
/// Server 2012 and later: If relative time is specified, the timer does not include time
/// spent in low-power states"; Learn `KeSetTimer` is silent on sleep). With one relative
/// timer for the whole delay a held-after look came the sleep's length late, and the fleet
/// service, which dates the watch by the interrupt time, had forgotten it by then (review
/// 24a, F1); in slices the look comes at most one slice after wake. An absolute due time
/// would be system time, which a clock step moves.
/// Two seconds, so that the window after wake in which the fleet service may take a page for
/// the driver's silence before the look is no wider than its margin for a late look
/// (`DRIVER_LOOK_LATE`, 3 s; review 24c, MED 2: it was 10 s); a DPC every 2 s while a watch
/// or a timed wait is pending costs nothing that shows.
const SLICE: u64 = 2 * 10_000_000;

/// Sets the timer for `deadline` (interrupt time), relative to `now`, or for [`SLICE`] when
/// that is sooner (the DPC then sets it again).
fn arm(t: &mut Locked, deadline: u64, now: u64) {
    if CLOSING.load(Ordering::Acquire) {
        return;
    }
    *t.armed_for() = deadline;
    // A relative due time (negative, 100 ns units) does not move when the clock is set;
    // at least one unit so that a deadline already passed fires at once.
    let relative = deadline.saturating_sub(now).clamp(1, SLICE);
    let due = LARGE_INTEGER {
        QuadPart: -i64::try_from(relative).unwrap_or(i64::MAX),
    };
    // KeSetTimer is callable at <= DISPATCH_LEVEL and re-arms a set timer.
    // SAFETY: timer and DPC were initialised by `init` (READY) and live in static memory.
    unsafe { KeSetTimer(TABLE.timer.get().cast(), due, TABLE.dpc.get().cast()) };
}

/// A failed unload's watch is due at `due` (interrupt time): sets the timer for it unless it
/// is set for earlier (the DPC re-arms for the next watch).
pub fn held_after_due(due: u64) {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    let mut t = Locked::take();
    if due < *t.armed_for() {
        arm(&mut t, due, clock::interrupt_time());
    }
}

/// Takes out of the table every entry `pick` chooses (with the outcome it returns), provided
/// its cancel routine is still ours; at most `out.len()`. Returns how many.
fn take_out(
    t: &mut Locked,
    out: &mut [Option<Done>; MAX_WAITS],
    mut pick: impl FnMut(&Wait) -> Option<Option<WaitOutcome>>,
) -> usize {
    let mut n = 0;
    for w in t.slots().iter_mut() {
        if w.irp.is_null() {
            continue;
        }
        let Some(outcome) = pick(w) else { continue };
        // An IRP is completed only after it leaves the table.
        // SAFETY: so a queued IRP is live.
        if !unsafe { swap_cancel_routine(w.irp, false) } {
            continue; // IoCancelIrp owns it now; the cancel routine removes it.
        }
        out[n] = Some(Done { wait: *w, outcome });
        n += 1;
        pending_of(w.events).fetch_sub(1, Ordering::SeqCst);
        *w = Wait::FREE;
    }
    n
}

/// Completes requests taken out of the table (the lock is no longer held).
fn complete_all(done: &[Option<Done>; MAX_WAITS]) {
    // Nothing to complete (every `DriverUnload` without a pending wait): no clock read. The
    // emulator traps `KUSER_SHARED_DATA` loads, which callgrind cannot replay, so reading it
    // here made `cargo xtask bench-driver` end in a bugcheck at unload.
    if done.iter().all(Option::is_none) {
        return;
    }
    let now = clock::interrupt_time();
    for d in done.iter().flatten() {
        // The entry left the table with its cancel routine taken back by us.
        // SAFETY: so the IRP is live and only we can complete it.
        unsafe { complete(d.wait, d.outcome, now) };
    }
}

/// Completes one request: with its answer written into its system buffer, or cancelled.
///
/// # Safety
/// `w.irp` must be live, owned by us, not completed, with no cancel routine set.
unsafe fn complete(w: Wait, outcome: Option<WaitOutcome>, now: u64) {
    let (status, information) = outcome.map_or((STATUS_CANCELLED, 0), |outcome| {
        // The output length was checked against the smallest answer when it was queued.
        // SAFETY: the system buffer lives with the IRP and holds `out_len` bytes.
        let out = unsafe { core::slice::from_raw_parts_mut(w.buffer, w.out_len) };
        if let Some(ev) = w.events {
            let o = ioctl::events_answer(ev, out);
            return (o.status, o.information);
        }
        let answer = WaitFreeAnswer {
            outcome,
            hive_id: w.hive.id,
            waited: now.saturating_sub(w.started),
            completeness: completeness(w.hive.id),
        };
        let o = ioctl::wait_answer(&answer, out);
        (o.status, o.information)
    });
    // SAFETY: per the contract the IRP is ours to complete, once.
    unsafe { dispatch::complete(w.irp, status, information) };
}

/// After an event that can free a hive (a key object's cleanup or abandonment, a process exit,
/// an unload; not a handle's close, which frees nothing): completes the wait-free requests
/// whose hive is now free. Costs one fence and one load when nothing waits (a pending
/// event-stream request is not counted here).
#[inline]
pub fn hive_may_be_free() {
    fence(Ordering::SeqCst);
    if PENDING.load(Ordering::Relaxed) == 0 {
        return;
    }
    complete_free_waits();
}

/// After an event of the stream (an unload attempt, a key-count alarm, a number taken for an
/// event not stored): completes the event-stream requests that can be answered now.
#[inline]
pub fn events_may_be_ready() {
    fence(Ordering::SeqCst);
    if PENDING_EVENTS.load(Ordering::Relaxed) == 0 {
        return;
    }
    complete_free_waits();
}

/// [`hive_may_be_free`] with a wait pending. Kept out of line: its 2 KiB frame and register
/// saves were paid on every close and cleanup while nothing waited (about 20 instructions
/// each, 3% of a registry open+close cycle).
#[cold]
#[inline(never)]
fn complete_free_waits() {
    let Some(tracker) = tracking::get() else {
        return;
    };
    let mut done = [None; MAX_WAITS];
    {
        let mut t = Locked::take();
        take_out(&mut t, &mut done, |w| {
            ready(tracker, w.hive, w.events).map(Some)
        });
    }
    complete_all(&done);
}

/// The timer's DPC (`DISPATCH_LEVEL`): completes the requests whose deadline passed and
/// re-arms the timer for the next one.
unsafe extern "C" fn timer_dpc(
    _dpc: *mut KDPC,
    _context: *mut c_void,
    _argument1: *mut c_void,
    _argument2: *mut c_void,
) {
    let now = clock::interrupt_time();
    // Hives whose unload failed, looked at again when due (before the table lock). Lock
    // order, as everywhere: a tracker lock may be taken inside the table lock (enqueue's
    // readiness check, `next_held_after` below), never the table lock inside a tracker lock.
    let tracker = tracking::get();
    let checked = tracker.map(|t| t.held_after_check(now, clock::now()));
    let mut done = [None; MAX_WAITS];
    {
        let mut t = Locked::take();
        *t.armed_for() = u64::MAX;
        take_out(&mut t, &mut done, |w| {
            (w.deadline <= now).then_some(Some(WaitOutcome::TimedOut))
        });
        // The next watch: read again under the table lock, so that a watch added since
        // the check (whose `held_after_due` found the timer armed for later, or not yet
        // re-armed) is not left without a timer.
        let next_watch = tracker.and_then(tracking::DriverTracker::next_held_after);
        let next = t
            .slots()
            .iter()
            .filter(|w| !w.irp.is_null())
            .map(|w| w.deadline)
            .chain(next_watch)
            .min()
            .unwrap_or(u64::MAX);
        if next != u64::MAX {
            arm(&mut t, next, now);
        }
    }
    complete_all(&done);
    if checked.is_some_and(|c| c.events > 0) {
        events_may_be_ready();
    }
}

/// The cancel routine (`IoCancelIrp` calls it holding the cancel spin lock): removes the
/// entry and completes the IRP with `STATUS_CANCELLED`.
unsafe extern "C" fn cancel_routine(_device: *mut DEVICE_OBJECT, irp: *mut IRP) {
    // SAFETY: IoCancelIrp set CancelIrql before calling us; the IRP is live until completed.
    let irql = unsafe { (*irp).CancelIrql };
    // Docs: a cancel routine releases the cancel spin lock, at the IRQL it saved.
    // SAFETY: the I/O manager acquired the cancel spin lock for us.
    unsafe { IoReleaseCancelSpinLock(irql) };
    let mut found = false;
    {
        let mut t = Locked::take();
        if let Some(w) = t.slots().iter_mut().find(|w| w.irp == irp) {
            pending_of(w.events).fetch_sub(1, Ordering::SeqCst);
            *w = Wait::FREE;
            found = true;
        }
    }
    // Every path that empties a slot first takes the cancel routine back, so a routine that
    // IoCancelIrp took always finds its entry; not finding it would be a bug in this module,
    // and completing an IRP we do not own would be worse than leaving it.
    if found {
        // SAFETY: the entry was ours and IoCancelIrp took the routine: only we complete it.
        unsafe { dispatch::complete(irp, STATUS_CANCELLED, 0) };
    }
}

/// `IRP_MJ_CLEANUP` for `file`: the last handle to it is closing, so its pending requests
/// are completed (cancelled) now; otherwise the closing process could not exit.
pub fn cleanup(file: *mut c_void) {
    // Mark the file object first, then look for its waits: a request enqueued concurrently
    // either sees the mark (it counts itself pending before it looks) or is found here
    // (the count is read after the mark; both sides are sequentially consistent).
    // SAFETY: `file` is the cleanup IRP's file object, live during the dispatch.
    unsafe { mark_cleaned_up(file) };
    if PENDING.load(Ordering::SeqCst) == 0 && PENDING_EVENTS.load(Ordering::SeqCst) == 0 {
        return;
    }
    let mut done = [None; MAX_WAITS];
    {
        let mut t = Locked::take();
        take_out(&mut t, &mut done, |w| (w.file == file).then_some(None));
    }
    complete_all(&done);
}

/// `FsContext2` of our control device's file objects after `IRP_MJ_CLEANUP`: the driver owns
/// the context fields of file objects opened on its own device, and uses no other value.
const CLEANED_UP: usize = 1;

/// The file object's `FsContext2` as an atomic pointer-sized word.
///
/// # Safety
/// `file` must be a live `FILE_OBJECT` opened on our device.
unsafe fn context2<'a>(file: *mut c_void) -> &'a AtomicUsize {
    // SAFETY: per the contract, `file` points to a live FILE_OBJECT.
    let field = unsafe { &raw mut (*file.cast::<wdk_sys::FILE_OBJECT>()).FsContext2 };
    // The field is pointer-sized and aligned, lives as long as the file object, and only
    // this module writes it (atomically).
    // SAFETY: so it may be viewed as an AtomicUsize for the file object's lifetime.
    unsafe { &*field.cast::<AtomicUsize>() }
}

/// Marks `file` as cleaned up (docs, `IRP_MJ_CLEANUP`: the last handle is closed, but the
/// file object "might not have been released" while I/O requests are outstanding, so a
/// request can still be dispatched on it).
///
/// # Safety
/// As [`context2`].
unsafe fn mark_cleaned_up(file: *mut c_void) {
    if !file.is_null() {
        // SAFETY: per the contract.
        unsafe { context2(file) }.store(CLEANED_UP, Ordering::SeqCst);
    }
}

/// Whether `IRP_MJ_CLEANUP` has come for `file`.
///
/// # Safety
/// As [`context2`].
unsafe fn cleaned_up(file: *mut c_void) -> bool {
    // SAFETY: per the contract.
    !file.is_null() && unsafe { context2(file) }.load(Ordering::SeqCst) == CLEANED_UP
}

/// At `DriverUnload`: stops the timer, waits for a running DPC, and cancels whatever is still
/// pending. (The I/O manager calls `DriverUnload` only when no file object is open on the
/// device, and `IRP_MJ_CLEANUP` has emptied the table by then; this is the belt to that.)
pub fn shutdown() {
    if !READY.load(Ordering::Acquire) {
        return;
    }
    {
        let _t = Locked::take();
        CLOSING.store(true, Ordering::Release);
    }
    // SAFETY: the timer was initialised by `init`; callable at <= DISPATCH_LEVEL.
    unsafe { KeCancelTimer(TABLE.timer.get().cast()) };
    // A DPC already running (or queued by an expiry) finishes before this returns; with
    // CLOSING set it does not re-arm the timer. Docs: `KeFlushQueuedDpcs`, PASSIVE_LEVEL.
    // SAFETY: called at PASSIVE_LEVEL from DriverUnload.
    unsafe { KeFlushQueuedDpcs() };
    loop {
        let mut done = [None; MAX_WAITS];
        {
            let mut t = Locked::take();
            take_out(&mut t, &mut done, |_| Some(None));
        }
        complete_all(&done);
        if PENDING.load(Ordering::SeqCst) == 0 && PENDING_EVENTS.load(Ordering::SeqCst) == 0 {
            break;
        }
        // A cancel routine is between IoCancelIrp and our lock: let it finish.
        core::hint::spin_loop();
    }
}
