//! Kernel timers and DPCs (KTIMER, KDPC) and the emulated clock that drives them.
//!
//! The emulated machine has no clock interrupt: time moves when a scenario says so.
//! [`advance`] moves every emulated clock forward and then plays the clock interrupt
//! ([`run_due`]): each set timer whose due time has passed expires (earliest first), becomes
//! signalled, and its DPC runs on the calling thread at DISPATCH_LEVEL; then every DPC queued
//! with KeInsertQueueDpc runs (KeFlushQueuedDpcs runs only those queued before it). A timer
//! therefore never fires before its due time, and fires exactly once per KeSetTimer.
//!
//! The KTIMER and KDPC live in driver memory, as on Windows; the model writes the documented
//! fields (Header.Type/SignalState, DueTime, Dpc, Period; Type, DeferredRoutine,
//! DeferredContext, SystemArgument1/2, DpcData) and validates their Type bytes the way the
//! kernel relies on them, so a KeSetTimer on a never-initialised timer is reported. Which
//! timers are set and which DPCs are queued is kept in [`TimerState`] (the kernel's timer
//! table and per-processor DPC queues).
//!
//! At unload ([`check_unload`]) a timer still set, or a DPC still queued, whose routine or
//! object lies inside the unloaded image is bugcheck 0xCE
//! DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS
//! (<https://learn.microsoft.com/en-us/windows-hardware/drivers/debugger/bug-check-0xce--driver-unloaded-without-cancelling-pending-operations>):
//! on Windows it comes when the timer fires into the unmapped image (P1 the address
//! referenced: here the DPC routine), or, where the unload path checks the image range for
//! timers (KeCheckForTimer), as 0xC7 TIMER_OR_DPC_INVALID; the model reports 0xCE at the
//! unload that made it inevitable, naming the timer and its routine.
//!
//! Not modelled: periodic timers (KeSetTimerEx with a Period is refused loudly), waiting on a
//! timer object (KeWaitForSingleObject is not exported), DPC importance and target processor
//! (every DPC runs on the thread that plays the clock interrupt or flushes), high-resolution
//! and no-wake timers (KeSetCoalescableTimer, ExAllocateTimer).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::machine::cpu::{self, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::layout::poke;
use crate::verifier::bugcheck::{self, require_irql, verifier_violation};

/// DISPATCHER_HEADER.Type of a notification timer (KOBJECTS TimerNotificationObject).
pub const TIMER_NOTIFICATION_OBJECT: u8 = 8;
/// DISPATCHER_HEADER.Type of a synchronization timer (TimerSynchronizationObject).
pub const TIMER_SYNCHRONIZATION_OBJECT: u8 = 9;
/// KDPC.Type of an ordinary DPC (DpcObject).
pub const DPC_OBJECT: u8 = 0x13;
/// KDPC.Type of a threaded DPC (ThreadedDpcObject).
pub const THREADED_DPC_OBJECT: u8 = 0x18;
/// sizeof(KTIMER) and sizeof(KDPC) on x64.
pub const KTIMER_SIZE: usize = 0x40;
/// sizeof(KDPC) on x64.
pub const KDPC_SIZE: usize = 0x40;

/// KTIMER offsets (x64): DISPATCHER_HEADER { Type 0x00, Size 0x02 (sizeof / 4),
/// SignalState 0x04, WaitListHead 0x08 }, DueTime 0x18,
/// TimerListEntry 0x20, Dpc 0x30, Processor 0x38, Period 0x3C.
const KTIMER_SIGNAL_STATE: usize = 0x04;
const KTIMER_WAIT_LIST: usize = 0x08;
const KTIMER_DUE_TIME: usize = 0x18;
const KTIMER_LIST_ENTRY: usize = 0x20;
const KTIMER_DPC: usize = 0x30;
const KTIMER_PERIOD: usize = 0x3C;
/// KDPC offsets (x64): Type 0x00, Importance 0x01, Number 0x02, DpcListEntry 0x08,
/// ProcessorHistory 0x10, DeferredRoutine 0x18, DeferredContext 0x20, SystemArgument1 0x28,
/// SystemArgument2 0x30, DpcData 0x38.
const KDPC_ROUTINE: usize = 0x18;
const KDPC_CONTEXT: usize = 0x20;
const KDPC_ARGUMENT1: usize = 0x28;
const KDPC_ARGUMENT2: usize = 0x30;
const KDPC_DPC_DATA: usize = 0x38;

/// A DPC routine: KDEFERRED_ROUTINE(Dpc, DeferredContext, SystemArgument1, SystemArgument2).
pub type DeferredRoutine = unsafe extern "win64" fn(*mut c_void, *mut c_void, usize, usize);

/// More DPCs than this in one [`run_due`] is a DPC storm (a DPC re-arming an already-due
/// timer forever): a verifier violation rather than a hang.
const DPC_STORM: usize = 100_000;

/// One set timer.
#[derive(Debug, Clone, Copy)]
struct Armed {
    /// Absolute interrupt time (100 ns) at which it expires.
    due: u64,
    /// Its KDPC, 0 for none.
    dpc: usize,
    /// Order of KeSetTimer calls: equal due times expire in the order they were set.
    seq: u64,
    /// Set with a relative due time (negative DueTime): [`sleep`] does not count down.
    relative: bool,
}

/// The kernel's timer table and DPC queue.
#[derive(Debug, Default)]
pub struct TimerState {
    /// Set timers by KTIMER address.
    armed: BTreeMap<usize, Armed>,
    /// KeInsertQueueDpc'd DPCs, oldest first: (KDPC, SystemArgument1, SystemArgument2).
    queue: VecDeque<(usize, usize, usize)>,
    /// KeSetTimer calls so far.
    seq: u64,
    /// Image ranges of unloaded drivers: a DPC there would run into unmapped memory.
    unloaded: Vec<(usize, usize)>,
}

impl TimerState {
    /// Timers still set and DPCs still queued, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .armed
            .iter()
            .map(|(t, a)| format!("KTIMER {t:#x} still set (KDPC {:#x})", a.dpc))
            .collect();
        v.extend(
            self.queue
                .iter()
                .map(|(d, _, _)| format!("KDPC {d:#x} still queued")),
        );
        v
    }
}

/// DPC routines running right now, on any thread (KeFlushQueuedDpcs waits for them).
static RUNNING_DPCS: AtomicUsize = AtomicUsize::new(0);

/// Reads a `T` from driver memory.
///
/// # Safety
/// `addr` must be readable for `size_of::<T>()` bytes.
unsafe fn peek<T: Copy>(addr: usize) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { (addr as *const T).read_unaligned() }
}

/// The timer's Header.Type must say it was initialised (KeInitializeTimer[Ex]).
fn require_timer(timer: usize, routine: &str) {
    if timer == 0 {
        verifier_violation(&format!("{routine}(NULL timer)"));
    }
    // SAFETY: the driver passes a KTIMER (0x40 bytes of its memory).
    let ty: u8 = unsafe { peek(timer) };
    if ty != TIMER_NOTIFICATION_OBJECT && ty != TIMER_SYNCHRONIZATION_OBJECT {
        verifier_violation(&format!(
            "{routine}({timer:#x}): not an initialised KTIMER (Header.Type {ty}; \
             KeInitializeTimer[Ex] sets {TIMER_NOTIFICATION_OBJECT} or {TIMER_SYNCHRONIZATION_OBJECT})"
        ));
    }
}

/// The DPC's Type must say it was initialised (KeInitializeDpc / KeInitializeThreadedDpc).
fn require_dpc(dpc: usize, routine: &str) {
    if dpc == 0 {
        verifier_violation(&format!("{routine}(NULL DPC)"));
    }
    // SAFETY: the driver passes a KDPC (0x40 bytes of its memory).
    let ty: u8 = unsafe { peek(dpc) };
    if ty != DPC_OBJECT && ty != THREADED_DPC_OBJECT {
        verifier_violation(&format!(
            "{routine}({dpc:#x}): not an initialised KDPC (Type {ty:#x}; KeInitializeDpc sets {DPC_OBJECT:#x})"
        ));
    }
}

/// KeInitializeTimerEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keinitializetimerex>:
/// a notification (0) or synchronization (1) timer, not signalled, not set. IRQL <=
/// DISPATCH_LEVEL. Re-initialising a timer that is set would corrupt the kernel's timer list:
/// a verifier violation.
unsafe extern "win64" fn KeInitializeTimerEx(timer: *mut c_void, timer_type: u32) {
    require_irql("KeInitializeTimerEx", DISPATCH_LEVEL);
    initialize_timer(timer as usize, timer_type, "KeInitializeTimerEx");
}

/// KeInitializeTimer — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keinitializetimer>:
/// a notification timer (KeInitializeTimerEx(Timer, NotificationTimer)). IRQL <= DISPATCH_LEVEL.
unsafe extern "win64" fn KeInitializeTimer(timer: *mut c_void) {
    require_irql("KeInitializeTimer", DISPATCH_LEVEL);
    initialize_timer(timer as usize, 0, "KeInitializeTimer");
}

fn initialize_timer(timer: usize, timer_type: u32, routine: &str) {
    if timer == 0 {
        verifier_violation(&format!("{routine}(NULL)"));
    }
    if timer_type > 1 {
        verifier_violation(&format!(
            "{routine}({timer:#x}, {timer_type}): TIMER_TYPE is NotificationTimer (0) or SynchronizationTimer (1)"
        ));
    }
    if kernel::with(|k| k.timers.armed.contains_key(&timer)) {
        verifier_violation(&format!(
            "{routine}({timer:#x}) on a timer that is set: the kernel's timer list would be corrupted \
             (KeCancelTimer first)"
        ));
    }
    // SAFETY: the driver provides KTIMER storage (0x40 bytes).
    unsafe { std::ptr::write_bytes(timer as *mut u8, 0, KTIMER_SIZE) };
    // SAFETY: as above: Header.Type, Header.Size (in ULONGs), WaitListHead self-linked.
    unsafe { poke(timer, TIMER_NOTIFICATION_OBJECT + timer_type as u8) };
    // SAFETY: as above.
    unsafe { poke(timer + 2, (KTIMER_SIZE / 4) as u8) };
    // SAFETY: as above.
    unsafe { poke(timer + KTIMER_WAIT_LIST, timer + KTIMER_WAIT_LIST) };
    // SAFETY: as above.
    unsafe { poke(timer + KTIMER_WAIT_LIST + 8, timer + KTIMER_WAIT_LIST) };
}

/// KeSetTimer — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kesettimer>:
/// KeSetTimerEx with no period.
unsafe extern "win64" fn KeSetTimer(timer: *mut c_void, due_time: i64, dpc: *mut c_void) -> u8 {
    require_irql("KeSetTimer", DISPATCH_LEVEL);
    set_timer(timer as usize, due_time, 0, dpc as usize, "KeSetTimer")
}

/// KeSetTimerEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kesettimerex>:
/// sets the timer to expire at DueTime — negative: relative, in 100 ns units, to the current
/// interrupt time; positive: an absolute system time — cancelling any previous setting and
/// resetting it to not-signalled; at expiry the DPC (if any) is queued. Returns TRUE if the
/// timer was already set. IRQL <= DISPATCH_LEVEL. The timer and the DPC must have been
/// initialised. A non-zero Period (a periodic timer) is not modelled and refused loudly.
unsafe extern "win64" fn KeSetTimerEx(
    timer: *mut c_void,
    due_time: i64,
    period: i32,
    dpc: *mut c_void,
) -> u8 {
    require_irql("KeSetTimerEx", DISPATCH_LEVEL);
    set_timer(
        timer as usize,
        due_time,
        period,
        dpc as usize,
        "KeSetTimerEx",
    )
}

fn set_timer(timer: usize, due_time: i64, period: i32, dpc: usize, routine: &str) -> u8 {
    require_timer(timer, routine);
    if dpc != 0 {
        require_dpc(dpc, routine);
    }
    if period != 0 {
        verifier_violation(&format!(
            "{routine}({timer:#x}) with Period {period} ms: periodic timers are not modelled by the emulator"
        ));
    }
    let now = cpu::interrupt_time();
    let due = if due_time < 0 {
        now.saturating_add(due_time.unsigned_abs())
    } else {
        // An absolute system time: the same distance from now in interrupt time (a due time
        // in the past expires at once).
        let system = cpu::system_time();
        now + (due_time as u64).saturating_sub(system)
    };
    // SAFETY: the driver's initialised KTIMER (checked above): SignalState, DueTime, Dpc,
    // Period.
    unsafe { poke(timer + KTIMER_SIGNAL_STATE, 0i32) };
    // SAFETY: as above.
    unsafe { poke(timer + KTIMER_DUE_TIME, due) };
    // SAFETY: as above.
    unsafe { poke(timer + KTIMER_DPC, dpc) };
    // SAFETY: as above.
    unsafe { poke(timer + KTIMER_PERIOD, 0u32) };
    kernel::with(|k| {
        k.timers.seq += 1;
        let seq = k.timers.seq;
        u8::from(
            k.timers
                .armed
                .insert(
                    timer,
                    Armed {
                        due,
                        dpc,
                        seq,
                        relative: due_time < 0,
                    },
                )
                .is_some(),
        )
    })
}

/// KeCancelTimer — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kecanceltimer>:
/// dequeues a set timer before it expires; TRUE if it was set. A DPC the timer already queued
/// is not removed (the documented race: KeFlushQueuedDpcs waits for it). IRQL <=
/// DISPATCH_LEVEL.
unsafe extern "win64" fn KeCancelTimer(timer: *mut c_void) -> u8 {
    require_irql("KeCancelTimer", DISPATCH_LEVEL);
    require_timer(timer as usize, "KeCancelTimer");
    let was = kernel::with(|k| k.timers.armed.remove(&(timer as usize)).is_some());
    if was {
        // SAFETY: the driver's initialised KTIMER: TimerListEntry no longer linked.
        unsafe { poke(timer as usize + KTIMER_LIST_ENTRY, [0usize; 2]) };
    }
    u8::from(was)
}

/// KeReadStateTimer — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kereadstatetimer>:
/// TRUE once the timer has expired (signalled) since it was last set. Any IRQL.
unsafe extern "win64" fn KeReadStateTimer(timer: *mut c_void) -> u8 {
    require_timer(timer as usize, "KeReadStateTimer");
    // SAFETY: the driver's initialised KTIMER.
    let state: i32 = unsafe { peek(timer as usize + KTIMER_SIGNAL_STATE) };
    u8::from(state != 0)
}

/// KeInitializeDpc — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keinitializedpc>:
/// an ordinary DPC (medium importance, any processor) for DeferredRoutine(Dpc,
/// DeferredContext, SystemArgument1, SystemArgument2). Any IRQL. Re-initialising a DPC that
/// is queued is a verifier violation (the queue would be corrupted).
unsafe extern "win64" fn KeInitializeDpc(
    dpc: *mut c_void,
    routine: *mut c_void,
    context: *mut c_void,
) {
    let d = dpc as usize;
    if d == 0 || routine.is_null() {
        verifier_violation(&format!(
            "KeInitializeDpc({dpc:p}, {routine:p}): NULL DPC or routine"
        ));
    }
    if kernel::with(|k| k.timers.queue.iter().any(|q| q.0 == d)) {
        verifier_violation(&format!("KeInitializeDpc({dpc:p}) on a queued DPC"));
    }
    // SAFETY: the driver provides KDPC storage (0x40 bytes).
    unsafe { std::ptr::write_bytes(dpc.cast::<u8>(), 0, KDPC_SIZE) };
    // SAFETY: as above: Type, Importance = MediumImportance.
    unsafe { poke(d, [DPC_OBJECT, 1u8]) };
    // SAFETY: as above.
    unsafe { poke(d + KDPC_ROUTINE, routine as usize) };
    // SAFETY: as above.
    unsafe { poke(d + KDPC_CONTEXT, context as usize) };
}

/// KeInsertQueueDpc — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keinsertqueuedpc>:
/// queues the DPC with the two system arguments; FALSE (and nothing changes) if it is already
/// queued. The DPC runs at the next [`run_due`] or KeFlushQueuedDpcs. Any IRQL.
unsafe extern "win64" fn KeInsertQueueDpc(dpc: *mut c_void, arg1: usize, arg2: usize) -> u8 {
    let d = dpc as usize;
    require_dpc(d, "KeInsertQueueDpc");
    let inserted = kernel::with(|k| {
        if k.timers.queue.iter().any(|q| q.0 == d) {
            return false;
        }
        k.timers.queue.push_back((d, arg1, arg2));
        true
    });
    if inserted {
        // SAFETY: the driver's initialised KDPC: arguments and DpcData (non-NULL = queued).
        unsafe { poke(d + KDPC_ARGUMENT1, arg1) };
        // SAFETY: as above.
        unsafe { poke(d + KDPC_ARGUMENT2, arg2) };
        // SAFETY: as above.
        unsafe { poke(d + KDPC_DPC_DATA, std::ptr::addr_of!(RUNNING_DPCS) as usize) };
    }
    u8::from(inserted)
}

/// KeRemoveQueueDpc — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keremovequeuedpc>:
/// removes a queued DPC before it runs; TRUE if it was queued (a running DPC is not stopped).
/// Any IRQL.
unsafe extern "win64" fn KeRemoveQueueDpc(dpc: *mut c_void) -> u8 {
    let d = dpc as usize;
    require_dpc(d, "KeRemoveQueueDpc");
    let removed = kernel::with(|k| {
        let before = k.timers.queue.len();
        k.timers.queue.retain(|q| q.0 != d);
        k.timers.queue.len() != before
    });
    if removed {
        // SAFETY: the driver's initialised KDPC.
        unsafe { poke(d + KDPC_DPC_DATA, 0usize) };
    }
    u8::from(removed)
}

/// KeFlushQueuedDpcs — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keflushqueueddpcs>:
/// returns once every DPC queued *before the call* has run: "Only DPCs queued prior to the
/// call to KeFlushQueuedDpcs are guaranteed to have been executed to completion upon return.
/// No guarantee is made for DPCs that are queued during the call." The model takes a
/// snapshot at the start — the timers already due (the clock interrupt would have queued
/// their DPCs by now) and the DPCs in the queue — runs those on this thread, then waits for
/// DPCs running on other emulator threads. A DPC queued meanwhile (by one of them, or
/// again) stays queued: the next clock tick runs it, and if the driver's image goes first
/// it is the 0xCE of [`check_unload`]. PASSIVE_LEVEL only.
unsafe extern "win64" fn KeFlushQueuedDpcs() {
    require_irql("KeFlushQueuedDpcs", PASSIVE_LEVEL);
    let mut due = Vec::new();
    while let Some((_, a)) = expire_next() {
        due.push(a.dpc);
    }
    let mut prior: Vec<usize> = kernel::with(|k| k.timers.queue.iter().map(|q| q.0).collect());
    for dpc in due.into_iter().filter(|&d| d != 0) {
        let now = cpu::interrupt_time();
        run_dpc(dpc, now as u32 as usize, (now >> 32) as usize);
    }
    // The queue is FIFO and new DPCs go to its back: run from the front while the front is
    // one of the DPCs queued before the call (one removed meanwhile simply never comes).
    while let Some((dpc, a1, a2)) = kernel::with(|k| {
        let &(front, _, _) = k.timers.queue.front()?;
        let i = prior.iter().position(|&d| d == front)?;
        prior.swap_remove(i);
        RUNNING_DPCS.fetch_add(1, Ordering::AcqRel);
        k.timers.queue.pop_front()
    }) {
        run_dpc(dpc, a1, a2);
    }
    while RUNNING_DPCS.load(Ordering::Acquire) > 0 {
        std::thread::yield_now();
    }
}

/// Runs one DPC on this thread at DISPATCH_LEVEL; checks it returns at DISPATCH_LEVEL holding
/// no spin lock. The caller counted it in [`RUNNING_DPCS`] when it took it off the timer
/// table or the queue (under the kernel lock, so KeFlushQueuedDpcs never misses it).
fn run_dpc(dpc: usize, arg1: usize, arg2: usize) {
    require_dpc(dpc, "DPC dispatch");
    // SAFETY: the driver's initialised KDPC (checked above).
    let routine: usize = unsafe { peek(dpc + KDPC_ROUTINE) };
    // SAFETY: as above.
    let context: usize = unsafe { peek(dpc + KDPC_CONTEXT) };
    if let Some((lo, hi)) = kernel::with(|k| {
        k.timers
            .unloaded
            .iter()
            .copied()
            .find(|&(lo, hi)| (lo..hi).contains(&routine) || (lo..hi).contains(&dpc))
    }) {
        bugcheck::emit_stderr(&format!(
            "*** kernel-emulator: DPC {dpc:#x} (routine {routine:#x}) runs inside the unloaded image \
             {lo:#x}..{hi:#x}\n"
        ));
        bugcheck::bugcheck(0xCE, routine, 0, 0, 0);
    }
    // SAFETY: the DPC is being dequeued: DpcData back to NULL so it may be queued again.
    unsafe { poke(dpc + KDPC_DPC_DATA, 0usize) };
    // SAFETY: as above.
    unsafe { poke(dpc + KDPC_ARGUMENT1, arg1) };
    // SAFETY: as above.
    unsafe { poke(dpc + KDPC_ARGUMENT2, arg2) };
    let before = cpu::irql();
    if before > DISPATCH_LEVEL {
        verifier_violation(&format!("a DPC would run at IRQL {before}"));
    }
    cpu::set_irql(DISPATCH_LEVEL);
    // SAFETY: KeInitializeDpc stored a KDEFERRED_ROUTINE of the driver here.
    let f = unsafe { std::mem::transmute::<usize, DeferredRoutine>(routine) };
    let operation = format!("DPC {}", bugcheck::symbolize(routine));
    // SAFETY: calling the driver's DPC routine as the kernel does, at DISPATCH_LEVEL.
    kernel::call_driver(&operation, || unsafe {
        f(dpc as *mut c_void, context as *mut c_void, arg1, arg2);
    });
    RUNNING_DPCS.fetch_sub(1, Ordering::AcqRel);
    let held = crate::nt::ke::sync::spin_locks_held_by_current_thread();
    if !held.is_empty() {
        verifier_violation(&format!("{operation} returned holding {}", held.join(", ")));
    }
    cpu::set_irql(before);
}

/// The next due timer, removed from the table and marked signalled.
fn expire_next() -> Option<(usize, Armed)> {
    let now = cpu::interrupt_time();
    kernel::with(|k| {
        let (&timer, &a) = k
            .timers
            .armed
            .iter()
            .filter(|(_, a)| a.due <= now)
            .min_by_key(|(_, a)| (a.due, a.seq))?;
        k.timers.armed.remove(&timer);
        // SAFETY: an initialised KTIMER of the driver (validated when set): signalled, off the
        // timer list.
        unsafe { poke(timer + KTIMER_SIGNAL_STATE, 1i32) };
        // SAFETY: as above.
        unsafe { poke(timer + KTIMER_LIST_ENTRY, [0usize; 2]) };
        // The DPC is queued unless it already is (then it runs once, from the queue).
        let queued = a.dpc != 0 && k.timers.queue.iter().any(|q| q.0 == a.dpc);
        let dpc = if queued { 0 } else { a.dpc };
        if dpc != 0 {
            RUNNING_DPCS.fetch_add(1, Ordering::AcqRel);
        }
        Some((timer, Armed { dpc, ..a }))
    })
}

/// Runs, on this thread at DISPATCH_LEVEL, the DPC of every set timer whose due time has
/// passed (earliest first; a DPC may re-arm timers: loop until none is due), then every DPC
/// queued with KeInsertQueueDpc. Returns how many DPCs ran.
///
/// A DPC storm (more than 100 000 DPCs in one call) is a verifier violation.
#[allow(clippy::must_use_candidate)] // advance() and KeFlushQueuedDpcs only want the effect
pub fn run_due() -> usize {
    let mut ran = 0;
    loop {
        if let Some((_, a)) = expire_next() {
            if a.dpc != 0 {
                let now = cpu::interrupt_time();
                run_dpc(a.dpc, now as u32 as usize, (now >> 32) as usize);
                ran += 1;
            }
        } else if let Some((dpc, a1, a2)) = kernel::with(|k| {
            let next = k.timers.queue.pop_front();
            if next.is_some() {
                RUNNING_DPCS.fetch_add(1, Ordering::AcqRel);
            }
            next
        }) {
            run_dpc(dpc, a1, a2);
            ran += 1;
        } else {
            return ran;
        }
        if ran > DPC_STORM {
            verifier_violation(&format!(
                "more than {DPC_STORM} DPCs in one clock tick: a DPC keeps re-arming a due timer"
            ));
        }
    }
}

/// Moves the emulated clocks forward by `ms` (KeQueryInterruptTime[Precise],
/// KeQuerySystemTime[Precise], KeQueryPerformanceCounter, KUSER_SHARED_DATA all see it)
/// and then runs [`run_due`].
pub fn advance(ms: u64) {
    cpu::advance_clock(ms.saturating_mul(10_000));
    run_due();
    // The registry's own timer (the delayed KCB dereference, WRK `cmdelay.c`) is kernel
    // state, not a driver's KTIMER: it runs after the drivers' DPCs.
    crate::nt::cm::hive::run_delay_deref_due();
}

/// The machine sleeps `ms` and wakes: every emulated clock moves forward by `ms` (the
/// interrupt time too: Learn, `KeQueryInterruptTime`: at wake the system adds a bias "to
/// compensate for the estimated duration of such a sleep state"; the system time and QPC
/// count it as well), but a timer set with a relative due time does not count the sleep
/// down: its due time moves by `ms` too. Learn, `SetWaitableTimer` (synchapi.h): "Windows 8
/// and later, Windows Server 2012 and later: If relative time is specified, the timer does
/// not include time spent in low-power states. For example, the timer does not continue
/// counting down while the computer is sleeping" (Windows 7 / 2008 R2 and earlier: it
/// does). Learn `KeSetTimer` says only that a negative DueTime is relative and "not affected
/// by system time changes", nothing of sleep: the model applies the `SetWaitableTimer`
/// sentence to kernel timers (a waitable timer is a kernel timer object), the worse case for
/// a driver that counts on a relative timer; to be settled on the VM kit. Learn's kernel
/// page "Timer accuracy" reads the other way (a relative time is added to the current clock
/// time to compute an absolute expiration), and an older remark on
/// `QueryUnbiasedInterruptTime` has such timers expire at wake (review 24c, LOW 6). A timer set with
/// an absolute (system) time whose time passed during the sleep expires at wake
/// ([`run_due`], as at any tick). Review 24a, F1.
pub fn sleep(ms: u64) {
    let delta = ms.saturating_mul(10_000);
    cpu::advance_clock(delta);
    kernel::with(|k| {
        for a in k.timers.armed.values_mut().filter(|a| a.relative) {
            a.due = a.due.saturating_add(delta);
        }
    });
    run_due();
}

/// Timers currently set (for assertions).
#[must_use]
pub fn armed() -> usize {
    kernel::with(|k| k.timers.armed.len())
}

/// DPCs currently queued (for assertions).
#[must_use]
pub fn queued() -> usize {
    kernel::with(|k| k.timers.queue.len())
}

/// After DriverUnload returned: a timer still set or a DPC still queued whose routine (or
/// whose object) lies inside the image `[base, base + size)` is bugcheck 0xCE
/// DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS. Afterwards any DPC routine in that
/// range is remembered as unloaded.
pub fn check_unload(base: usize, size: usize) {
    let range = base..base + size;
    let culprit = kernel::with(|k| {
        k.timers.unloaded.push((base, base + size));
        let timers = k.timers.armed.iter().map(|(&t, a)| ("timer", t, a.dpc));
        let dpcs = k.timers.queue.iter().map(|&(d, _, _)| ("queued DPC", 0, d));
        timers.chain(dpcs).find_map(|(what, object, dpc)| {
            let routine: usize = if dpc == 0 {
                0
            } else {
                // SAFETY: an initialised KDPC of the driver (validated when set or queued);
                // the image is still mapped (the check runs before it is made inaccessible).
                unsafe { peek(dpc + KDPC_ROUTINE) }
            };
            let inside = [object, dpc, routine]
                .iter()
                .any(|a| *a != 0 && range.contains(a));
            inside.then_some((what, object, dpc, routine))
        })
    });
    if let Some((what, object, dpc, routine)) = culprit {
        let name = if what == "timer" {
            format!("KTIMER {object:#x} still set with KDPC {dpc:#x}")
        } else {
            format!("KDPC {dpc:#x} still queued")
        };
        bugcheck::emit_stderr(&format!(
            "*** kernel-emulator: DriverUnload returned with {name} (routine {}): it would run in \
             the unloaded image (KeCancelTimer + KeFlushQueuedDpcs missing)\n",
            bugcheck::symbolize(routine)
        ));
        bugcheck::bugcheck(0xCE, routine, 0, 0, 0);
    }
}

/// Pool `[addr, addr + len)` is being freed: a timer still set or a DPC still queued inside
/// it is bugcheck 0xC7 TIMER_OR_DPC_INVALID
/// (<https://learn.microsoft.com/en-us/windows-hardware/drivers/debugger/bug-check-0xc7--timer-or-dpc-invalid>:
/// P1 0 timer / 1 DPC, P2 the object, P3..P4 the range checked), as Driver Verifier reports a
/// driver that frees the memory of a timer or DPC it did not cancel.
pub fn check_free(addr: usize, len: usize) {
    let range = addr..addr + len;
    let culprit = kernel::with(|k| {
        let timer = k
            .timers
            .armed
            .keys()
            .find(|t| range.contains(*t))
            .map(|&t| (0, t));
        timer.or_else(|| {
            k.timers
                .queue
                .iter()
                .find(|q| range.contains(&q.0))
                .map(|q| (1, q.0))
        })
    });
    if let Some((kind, object)) = culprit {
        bugcheck::emit_stderr(&format!(
            "*** kernel-emulator: pool block {addr:#x} ({len} bytes) freed with {} {object:#x} inside \
             still {} (KeCancelTimer / KeRemoveQueueDpc first)\n",
            if kind == 0 { "KTIMER" } else { "KDPC" },
            if kind == 0 { "set" } else { "queued" }
        ));
        bugcheck::bugcheck(0xC7, kind, object, addr, addr + len);
    }
}

/// The timer and DPC routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("KeInitializeTimer", KeInitializeTimer as *const () as usize),
        Export::function(
            "KeInitializeTimerEx",
            KeInitializeTimerEx as *const () as usize,
        ),
        Export::function("KeSetTimer", KeSetTimer as *const () as usize),
        Export::function("KeSetTimerEx", KeSetTimerEx as *const () as usize),
        Export::function("KeCancelTimer", KeCancelTimer as *const () as usize),
        Export::function("KeReadStateTimer", KeReadStateTimer as *const () as usize),
        Export::function("KeInitializeDpc", KeInitializeDpc as *const () as usize),
        Export::function("KeInsertQueueDpc", KeInsertQueueDpc as *const () as usize),
        Export::function("KeRemoveQueueDpc", KeRemoveQueueDpc as *const () as usize),
        Export::function("KeFlushQueuedDpcs", KeFlushQueuedDpcs as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    /// The emulated clock is process-wide: tests that move it run one at a time.
    static CLOCK: Mutex<()> = Mutex::new(());

    /// Each test's DPC counts into its own slot (the context) and records the IRQL it ran at
    /// and its system arguments.
    static RUNS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
    static IRQL_SEEN: AtomicU64 = AtomicU64::new(99);
    static ARGS_SEEN: Mutex<(usize, usize)> = Mutex::new((0, 0));

    unsafe extern "win64" fn count_dpc(_dpc: *mut c_void, ctx: *mut c_void, a1: usize, a2: usize) {
        RUNS[ctx as usize].fetch_add(1, Ordering::SeqCst);
        IRQL_SEEN.store(u64::from(cpu::irql()), Ordering::SeqCst);
        *ARGS_SEEN.lock().unwrap() = (a1, a2);
    }

    #[repr(C, align(16))]
    struct Objects {
        timer: [u8; KTIMER_SIZE],
        dpc: [u8; KDPC_SIZE],
    }

    #[allow(clippy::unnecessary_box_returns)] // initialised objects must not move
    fn objects(slot: usize) -> Box<Objects> {
        let mut o = Box::new(Objects {
            timer: [0; KTIMER_SIZE],
            dpc: [0; KDPC_SIZE],
        });
        // SAFETY: KTIMER/KDPC-sized storage owned by the test.
        unsafe { KeInitializeTimer(o.timer.as_mut_ptr().cast()) };
        // SAFETY: as above; `count_dpc` is a KDEFERRED_ROUTINE.
        unsafe {
            KeInitializeDpc(
                o.dpc.as_mut_ptr().cast(),
                count_dpc as *mut c_void,
                slot as *mut c_void,
            );
        }
        o
    }

    fn runs(slot: usize) -> u64 {
        RUNS[slot].load(Ordering::SeqCst)
    }

    #[test]
    fn a_relative_timer_fires_at_its_due_time_exactly_once_at_dispatch_level() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut o = objects(0);
        let (t, d) = (o.timer.as_mut_ptr().cast(), o.dpc.as_mut_ptr().cast());
        assert_eq!(o.timer[0], TIMER_NOTIFICATION_OBJECT);
        assert_eq!(o.dpc[0], DPC_OBJECT);
        // SAFETY: initialised timer and DPC; PASSIVE_LEVEL.
        assert_eq!(unsafe { KeSetTimer(t, -10_000 * 10_000, d) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { KeReadStateTimer(t) }, 0);
        advance(9_000);
        assert_eq!(runs(0), 0, "fired before its due time");
        advance(1_100);
        assert_eq!(runs(0), 1);
        assert_eq!(IRQL_SEEN.load(Ordering::SeqCst), u64::from(DISPATCH_LEVEL));
        assert_eq!(cpu::irql(), PASSIVE_LEVEL, "IRQL restored after the DPC");
        // SAFETY: as above.
        assert_eq!(unsafe { KeReadStateTimer(t) }, 1, "signalled once expired");
        advance(60_000);
        assert_eq!(runs(0), 1, "a one-shot timer fires once");
        // SAFETY: as above: an expired timer is no longer set.
        assert_eq!(unsafe { KeCancelTimer(t) }, 0);
    }

    #[test]
    fn cancel_and_re_set_report_whether_the_timer_was_set() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut o = objects(1);
        let (t, d) = (o.timer.as_mut_ptr().cast(), o.dpc.as_mut_ptr().cast());
        // SAFETY: initialised timer and DPC; PASSIVE_LEVEL.
        assert_eq!(unsafe { KeSetTimer(t, -50_000, d) }, 0);
        // SAFETY: as above: re-setting a set timer replaces its due time.
        assert_eq!(unsafe { KeSetTimer(t, -100_000, d) }, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { KeCancelTimer(t) }, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { KeCancelTimer(t) }, 0);
        advance(1_000);
        assert_eq!(runs(1), 0, "a cancelled timer never fires");
    }

    #[test]
    fn an_absolute_due_time_is_a_system_time() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut o = objects(2);
        let (t, d) = (o.timer.as_mut_ptr().cast(), o.dpc.as_mut_ptr().cast());
        let due = cpu::system_time() + 20_000 * 10_000;
        // SAFETY: initialised timer and DPC; PASSIVE_LEVEL.
        unsafe { KeSetTimer(t, due as i64, d) };
        advance(19_000);
        assert_eq!(runs(2), 0);
        advance(1_100);
        assert_eq!(runs(2), 1);
    }

    #[test]
    fn a_queued_dpc_runs_once_with_its_arguments() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut o = objects(3);
        let d = o.dpc.as_mut_ptr().cast();
        // SAFETY: an initialised DPC.
        assert_eq!(unsafe { KeInsertQueueDpc(d, 7, 9) }, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { KeInsertQueueDpc(d, 1, 1) }, 0, "already queued");
        // SAFETY: as above.
        assert_eq!(unsafe { KeRemoveQueueDpc(d) }, 1);
        // SAFETY: as above.
        assert_eq!(unsafe { KeRemoveQueueDpc(d) }, 0);
        run_due();
        assert_eq!(runs(3), 0, "a removed DPC does not run");
        // SAFETY: as above.
        assert_eq!(unsafe { KeInsertQueueDpc(d, 7, 9) }, 1);
        // SAFETY: PASSIVE_LEVEL.
        unsafe { KeFlushQueuedDpcs() };
        assert_eq!(runs(3), 1);
        assert_eq!(*ARGS_SEEN.lock().unwrap(), (7, 9));
        // SAFETY: as above: DpcData is NULL again, so it may be queued again.
        assert_eq!(unsafe { KeInsertQueueDpc(d, 0, 0) }, 1);
        run_due();
        assert_eq!(runs(3), 2);
    }

    /// The KDPC that [`queue_second`] queues (set by the test).
    static SECOND: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "win64" fn queue_second(
        _dpc: *mut c_void,
        _ctx: *mut c_void,
        _a: usize,
        _b: usize,
    ) {
        RUNS[6].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the test's initialised KDPC; any IRQL.
        unsafe { KeInsertQueueDpc(SECOND.load(Ordering::SeqCst) as *mut c_void, 0, 0) };
    }

    #[test]
    fn a_flush_runs_only_the_dpcs_queued_before_it() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut first = Box::new([0u8; KDPC_SIZE]);
        let mut second = objects(7);
        let f = first.as_mut_ptr().cast();
        let d = second.dpc.as_mut_ptr().cast::<c_void>();
        SECOND.store(d as usize, Ordering::SeqCst);
        // SAFETY: KDPC storage owned by the test; `queue_second` is a KDEFERRED_ROUTINE.
        unsafe { KeInitializeDpc(f, queue_second as *mut c_void, std::ptr::null_mut()) };
        // SAFETY: an initialised DPC.
        assert_eq!(unsafe { KeInsertQueueDpc(f, 0, 0) }, 1);
        // SAFETY: PASSIVE_LEVEL.
        unsafe { KeFlushQueuedDpcs() };
        assert_eq!(
            RUNS[6].load(Ordering::SeqCst),
            1,
            "the DPC queued before ran"
        );
        assert_eq!(runs(7), 0, "the DPC it queued during the flush did not run");
        // SAFETY: an initialised DPC: still queued, so removing it succeeds.
        assert_eq!(unsafe { KeRemoveQueueDpc(d) }, 1, "and is still queued");
    }

    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    unsafe extern "win64" fn blocking_dpc(
        _dpc: *mut c_void,
        _ctx: *mut c_void,
        _a: usize,
        _b: usize,
    ) {
        STARTED.store(true, Ordering::SeqCst);
        while !RELEASE.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        RUNS[5].fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn flushing_waits_for_a_dpc_running_on_another_thread() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut dpc = Box::new([0u8; KDPC_SIZE]);
        let d = dpc.as_mut_ptr() as usize;
        // SAFETY: KDPC storage owned by the test (it outlives both threads, joined below).
        unsafe {
            KeInitializeDpc(
                d as *mut c_void,
                blocking_dpc as *mut c_void,
                std::ptr::null_mut(),
            );
        };
        // SAFETY: an initialised DPC.
        assert_eq!(unsafe { KeInsertQueueDpc(d as *mut c_void, 0, 0) }, 1);
        let runner = std::thread::spawn(run_due);
        while !STARTED.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let flushed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flushed.clone();
        let waiter = std::thread::spawn(move || {
            // SAFETY: PASSIVE_LEVEL on a fresh thread.
            unsafe { KeFlushQueuedDpcs() };
            f.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !flushed.load(Ordering::SeqCst),
            "returned while the DPC was running"
        );
        RELEASE.store(true, Ordering::SeqCst);
        waiter.join().unwrap();
        assert!(flushed.load(Ordering::SeqCst));
        assert_eq!(RUNS[5].load(Ordering::SeqCst), 1);
        assert!(runner.join().unwrap() >= 1);
    }

    #[test]
    fn unload_finds_timers_whose_routine_is_in_the_image() {
        let _clock = CLOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut o = objects(4);
        let (t, d) = (o.timer.as_mut_ptr().cast(), o.dpc.as_mut_ptr().cast());
        // SAFETY: initialised timer and DPC; PASSIVE_LEVEL.
        unsafe { KeSetTimer(t, -1_000_000_000, d) };
        // An image range that holds neither the timer, the DPC nor the routine: no bugcheck.
        check_unload(0x1000, 0x1000);
        assert!(kernel::with(|k| k
            .timers
            .leaks()
            .iter()
            .any(|l| l.contains("still set"))));
        // SAFETY: as above.
        assert_eq!(unsafe { KeCancelTimer(t) }, 1);
    }
}
