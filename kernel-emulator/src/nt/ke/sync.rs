//! Synchronisation and time: spin locks (raise to DISPATCH_LEVEL), executive reader/writer
//! spin locks (`EX_SPIN_LOCK`: shared or exclusive, raise to DISPATCH_LEVEL, writers
//! preferred), push locks and ERESOURCE
//! (which need normal kernel APCs disabled: a critical region or APC_LEVEL), fast mutexes
//! (raise to APC_LEVEL), KeEnterCriticalRegion / KeLeaveCriticalRegion, with the owner of
//! every lock tracked so that a release by a non-owner, a recursive spin-lock acquire
//! (bugcheck 0xF SPIN_LOCK_ALREADY_OWNED: Learn, "Bug Check 0xF"), an IRQL rule broken, or a lock still held at unload
//! is reported. Real mutual exclusion between emulator threads: waiters yield until free.
//! Plus KeQuerySystemTimePrecise, KeQueryPerformanceCounter, KeQueryInterruptTime and
//! KeGetCurrentIrql.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::sync::Mutex;

use crate::machine::cpu::{self, APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::nt::exports::Export;
use crate::verifier::bugcheck::{self, require_irql, verifier_violation};

/// Lock kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// KSPIN_LOCK.
    SpinLock,
    /// EX_PUSH_LOCK.
    PushLock,
    /// FAST_MUTEX.
    FastMutex,
    /// ERESOURCE.
    Resource,
    /// EX_SPIN_LOCK (a reader/writer spin lock, a 32-bit LONG).
    ExSpinLock,
}

/// One lock's state.
#[derive(Debug, Clone)]
struct LockState {
    kind: Kind,
    owner: Option<usize>,
    recursion: u32,
    shared: HashMap<usize, u32>,
    /// EX_SPIN_LOCK only: exclusive acquirers spinning for it (new shared acquirers wait
    /// behind them).
    waiting_writers: u32,
    acquired_during: String,
}

impl LockState {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            owner: None,
            recursion: 0,
            shared: HashMap::new(),
            waiting_writers: 0,
            acquired_during: String::new(),
        }
    }
    fn held(&self) -> bool {
        self.owner.is_some() || !self.shared.is_empty()
    }
    /// Whether the lock table must keep this entry (held, waited for, or an ERESOURCE).
    fn kept(&self) -> bool {
        self.held() || self.waiting_writers > 0 || self.kind == Kind::Resource
    }
}

/// Locks by address; initialised ERESOURCEs stay here until ExDeleteResourceLite.
static LOCKS: Mutex<BTreeMap<usize, LockState>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The IRQL each spin lock this thread holds through a raising acquisition
    /// (`KeAcquireSpinLockRaiseToDpc`, `ExAcquireSpinLockShared`/`Exclusive`) returned: its
    /// release must restore exactly that ([R]; `KeReleaseSpinLock`: "NewIrql: Specifies the
    /// IRQL value saved from the preceding call to KeAcquireSpinLock"), and a `FromDpcLevel`
    /// release, which restores nothing, is for locks taken `AtDpcLevel` ([D]; Learn,
    /// `KeReleaseSpinLockFromDpcLevel`: "It is an error to call KeReleaseSpinLockFromDpcLevel
    /// if the specified spin lock was acquired by calling KeAcquireSpinLock because the
    /// caller's original IRQL is not restored").
    static RAISED: std::cell::RefCell<HashMap<usize, u8>> = std::cell::RefCell::new(HashMap::new());
    static CRITICAL_REGION: Cell<i32> = const { Cell::new(0) };
    /// A per-OS-thread marker whose address names a host thread that never entered the
    /// emulated machine (unit tests), so that two such threads are never one lock owner.
    static HOST_THREAD: u8 = const { 0 };
}

/// A raising acquisition of the spin lock at `addr` returned `old`.
fn raised(addr: usize, old: u8) {
    RAISED.with(|r| r.borrow_mut().insert(addr, old));
}

/// A raising release of the spin lock at `addr` restores `irql`: it must be what its raising
/// acquisition returned ([R]; see [`RAISED`]).
fn lowering(routine: &str, addr: usize, irql: u8) {
    if let Some(returned) = RAISED.with(|r| r.borrow_mut().remove(&addr))
        && returned != irql
    {
        verifier_violation(&format!(
            "{routine}({addr:#x}, {irql}): the acquisition returned IRQL {returned}, and the release must restore that value"
        ));
    }
}

/// A `FromDpcLevel` release of the spin lock at `addr` restores no IRQL: the lock must not
/// have been taken by a raising acquisition ([D]; see [`RAISED`]).
fn not_raised(routine: &str, addr: usize) {
    if let Some(returned) = RAISED.with(|r| r.borrow_mut().remove(&addr)) {
        verifier_violation(&format!(
            "{routine}({addr:#x}): acquired by a routine that raised the IRQL from {returned}, which this release would never restore"
        ));
    }
}

fn locks() -> std::sync::MutexGuard<'static, BTreeMap<usize, LockState>> {
    LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Locks held and resources not deleted, as leak lines.
#[must_use]
pub fn leaks() -> Vec<String> {
    let mut v: Vec<String> = locks()
        .iter()
        .filter(|(_, s)| s.held() || s.kind == Kind::Resource)
        .map(|(a, s)| {
            if *a == crate::nt::io::cancel::cancel_lock_address() {
                format!(
                    "the cancel spin lock still held (acquired during {})",
                    s.acquired_during
                )
            } else if s.held() {
                format!(
                    "{:?} {a:#x} still held (acquired during {})",
                    s.kind, s.acquired_during
                )
            } else {
                format!("ERESOURCE {a:#x} not deleted (ExDeleteResourceLite missing)")
            }
        })
        .collect();
    v.sort();
    v
}

/// Forgets every lock (between independent loads).
pub fn reset() {
    locks().clear();
    order().clear();
}

// ---- Deadlock Detection: the lock-order graph ----
//
// Learn, devtest "Deadlock Detection" (MicrosoftDocs/windows-driver-docs
// devtest/deadlock-detection.md @0099d1b): "Driver Verifier's Deadlock Detection routines find
// lock hierarchy violations that are not necessarily simultaneous ... Driver Verifier builds a
// graph of resource acquisition order and checks for loops. If you were to create a node for
// each resource, and draw an arrow any time one lock is acquired before another, then path
// loops would represent lock hierarchy violations. Driver Verifier will issue a bug check when
// one of these violations is discovered. This will happen before any actual deadlocks occur";
// it "looks for potential deadlocks involving spin locks, mutexes, and fast mutexes. It does
// not monitor the use of ERESOURCEs"; the bug check is 0xC4 with parameter 1 0x1001 (devtest
// "Debugging Bug Check 0xC4": "Debugging deadlocks - DRIVER_VERIFIER_DETECTED_VIOLATION (C4):
// 0x1001"). The model: a node per lock address (KSPIN_LOCK, EX_SPIN_LOCK — a spin lock; no
// page says whether Verifier sees the EX routines, so this is the stricter reading — and
// FAST_MUTEX; not push locks or ERESOURCEs, which the page does not list); an edge held ->
// acquired at every waiting acquisition; an edge that closes a loop stops the machine. A
// node's edges are forgotten when the pool block holding the lock is freed (WRK
// ex/pool.c 4416/4475/4567, `VerifierDeadlockFreePool` at each pool free; sysload.c 3712 calls it
// at image unload), so a reused address starts afresh.

/// The lock-order graph: lock -> locks acquired while holding it, each with the operation
/// that first took them in that order.
static ORDER: Mutex<BTreeMap<usize, BTreeMap<usize, String>>> = Mutex::new(BTreeMap::new());

fn order() -> std::sync::MutexGuard<'static, BTreeMap<usize, BTreeMap<usize, String>>> {
    ORDER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether Deadlock Detection watches this kind (the page: "spin locks, mutexes, and fast
/// mutexes").
const fn ordered(kind: Kind) -> bool {
    matches!(kind, Kind::SpinLock | Kind::ExSpinLock | Kind::FastMutex)
}

/// A path `from` ->* `to` in `graph`, if any (the locks along it, `from` first).
fn path(
    graph: &BTreeMap<usize, BTreeMap<usize, String>>,
    from: usize,
    to: usize,
) -> Option<Vec<usize>> {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(from, vec![from])];
    while let Some((n, p)) = stack.pop() {
        if n == to {
            return Some(p);
        }
        if !seen.insert(n) {
            continue;
        }
        for &m in graph.get(&n).into_iter().flat_map(BTreeMap::keys) {
            let mut q = p.clone();
            q.push(m);
            stack.push((m, q));
        }
    }
    None
}

/// This thread is about to wait for the `kind` lock at `addr` (it does not hold it): records
/// an edge from every watched lock it holds, and stops the machine with bug check 0xC4 /
/// 0x1001 if one closes a loop.
fn order_check(addr: usize, kind: Kind, routine: &str) {
    if !ordered(kind) {
        return;
    }
    let thread = me();
    let l = locks();
    if l.get(&addr)
        .is_some_and(|s| s.owner == Some(thread) || s.shared.contains_key(&thread))
    {
        // A recursive acquisition: reported by its own check, not an ordering.
        return;
    }
    let held: Vec<(usize, Kind)> = l
        .iter()
        .filter(|(a, s)| {
            **a != addr
                && ordered(s.kind)
                && (s.owner == Some(thread) || s.shared.contains_key(&thread))
        })
        .map(|(a, s)| (*a, s.kind))
        .collect();
    drop(l);
    if held.is_empty() {
        return;
    }
    let mut g = order();
    for (h, hk) in held {
        if g.get(&h).is_some_and(|e| e.contains_key(&addr)) {
            // A known edge: any loop through it was reported when it was added.
            continue;
        }
        if let Some(p) = path(&g, addr, h) {
            let first = g
                .get(&p[0])
                .and_then(|e| e.get(&p[1]))
                .cloned()
                .unwrap_or_default();
            drop(g);
            let chain: Vec<String> = p.iter().map(|a| format!("{a:#x}")).collect();
            bugcheck::emit_stderr(&format!(
                "*** kernel-emulator verifier: Deadlock Detection: lock hierarchy violation: {routine} takes {kind:?} {addr:#x} while holding {hk:?} {h:#x}, but the order {} was taken before (first during {first}); Learn, devtest \"Deadlock Detection\": loops in the acquisition graph are reported even if never simultaneous\n",
                chain.join(" -> ")
            ));
            bugcheck::bugcheck(0xC4, 0x1001, addr, h, 0);
        }
        g.entry(h)
            .or_default()
            .entry(addr)
            .or_insert_with(bugcheck::operation);
    }
}

/// Forgets the order of every lock in `[base, base + len)` (its pool block was freed:
/// `VerifierDeadlockFreePool`, WRK ex/pool.c 4416/4475/4567), so a later lock at a reused address
/// is a new node.
pub(crate) fn forget_order(base: usize, len: usize) {
    let inside = |a: usize| a >= base && a < base + len.max(1);
    let mut g = order();
    g.retain(|a, _| !inside(*a));
    for e in g.values_mut() {
        e.retain(|a, _| !inside(*a));
    }
}

/// The lock owner this thread is: its emulated KTHREAD, or, for a host thread that never
/// entered the machine, a value unique to that host thread.
fn me() -> usize {
    match cpu::current_thread() {
        0 => HOST_THREAD.with(|m| std::ptr::from_ref(m) as usize),
        t => t,
    }
}

/// Acquires `addr` for this thread; waits (yielding) while another thread holds it.
fn acquire(addr: usize, kind: Kind, exclusive: bool, recursive_ok: bool, wait: bool) -> bool {
    let thread = me();
    if wait {
        order_check(addr, kind, "an acquisition");
    }
    loop {
        {
            let mut l = locks();
            let s = l.entry(addr).or_insert_with(|| LockState::new(kind));
            if s.kind != kind {
                let k = s.kind;
                drop(l);
                verifier_violation(&format!("{addr:#x} used as a {kind:?} but it is a {k:?}"));
            }
            if s.owner == Some(thread) {
                if !recursive_ok {
                    drop(l);
                    bugcheck::emit_stderr(&format!(
                        "*** kernel-emulator: {kind:?} {addr:#x} acquired recursively: a deadlock on Windows\n"
                    ));
                    // Learn, "Bug Check 0xF: SPIN_LOCK_ALREADY_OWNED": "typically ... a recursive
                    // request for a spin lock" (0x81 is SPIN_LOCK_INIT_FAILURE).
                    bugcheck::bugcheck(0xF, addr, 0, 0, 0);
                }
                s.recursion += 1;
                return true;
            }
            let free = if exclusive {
                !s.held()
            } else {
                s.owner.is_none()
            };
            if free {
                if exclusive {
                    s.owner = Some(thread);
                    s.recursion = 1;
                } else {
                    *s.shared.entry(thread).or_insert(0) += 1;
                }
                s.acquired_during = bugcheck::operation();
                return true;
            }
        }
        if !wait {
            return false;
        }
        std::thread::yield_now();
    }
}

/// Releases `addr`; a release by a thread that does not hold it is a verifier violation.
fn release(addr: usize, kind: Kind, routine: &str) {
    let thread = me();
    let mut l = locks();
    let ok = match l.get_mut(&addr) {
        Some(s) if s.owner == Some(thread) => {
            s.recursion -= 1;
            if s.recursion == 0 {
                s.owner = None;
            }
            true
        }
        Some(s) if s.shared.contains_key(&thread) => {
            let n = s.shared.get_mut(&thread).map_or(0, |n| {
                *n -= 1;
                *n
            });
            if n == 0 {
                s.shared.remove(&thread);
            }
            true
        }
        _ => false,
    };
    if ok && kind != Kind::Resource {
        l.retain(|_, s| s.kept());
    }
    drop(l);
    if !ok {
        verifier_violation(&format!(
            "{routine}({addr:#x}): this thread does not hold the {kind:?}"
        ));
    }
}

/// Acquires the KSPIN_LOCK at `addr` for this thread, waiting while another thread holds it;
/// a recursive acquire is bugcheck 0xF (SPIN_LOCK_ALREADY_OWNED). The caller raises the IRQL.
pub(crate) fn acquire_spin_lock(addr: usize) {
    acquire(addr, Kind::SpinLock, true, false, true);
}

/// Releases the KSPIN_LOCK at `addr`; a release by a thread that does not hold it is a
/// verifier violation naming `routine`. The caller lowers the IRQL.
pub(crate) fn release_spin_lock(addr: usize, routine: &str) {
    release(addr, Kind::SpinLock, routine);
}

/// Spin locks this thread holds, one description each (a DPC or a cancel routine must return
/// holding none; nor may a dispatch routine return to user mode holding one).
#[must_use]
pub fn spin_locks_held_by_current_thread() -> Vec<String> {
    let thread = me();
    locks()
        .iter()
        .filter(|(_, s)| {
            (s.kind == Kind::SpinLock && s.owner == Some(thread))
                || (s.kind == Kind::ExSpinLock
                    && (s.owner == Some(thread) || s.shared.contains_key(&thread)))
        })
        .map(|(a, s)| {
            let name = if *a == crate::nt::io::cancel::cancel_lock_address() {
                "the cancel spin lock".to_string()
            } else if s.kind == Kind::ExSpinLock {
                let mode = if s.owner == Some(thread) {
                    "exclusive"
                } else {
                    "shared"
                };
                format!("EX_SPIN_LOCK {a:#x} ({mode})")
            } else {
                format!("spin lock {a:#x}")
            };
            format!("{name} (acquired during {})", s.acquired_during)
        })
        .collect()
}

fn require_apcs_disabled(routine: &str) {
    if cpu::irql() < APC_LEVEL && CRITICAL_REGION.with(Cell::get) <= 0 {
        verifier_violation(&format!(
            "{routine} called with normal kernel APCs enabled (call KeEnterCriticalRegion first, or run at APC_LEVEL)"
        ));
    }
}

/// Runs `f` (a call into a driver's notify routine) inside a critical region, as the kernel
/// calls process-notify and load-image notify routines: Learn,
/// [PsSetCreateProcessNotifyRoutineEx](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-pssetcreateprocessnotifyroutineex)
/// ("calls the driver's process-notify routine at PASSIVE_LEVEL inside a critical region with
/// normal kernel APCs disabled") and
/// [PLOAD_IMAGE_NOTIFY_ROUTINE](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nc-ntddk-pload_image_notify_routine)
/// ("inside a critical region with normal kernel APCs always disabled"). The routine may take
/// a push lock or an ERESOURCE without KeEnterCriticalRegion of its own.
pub(crate) fn in_critical_region<R>(f: impl FnOnce() -> R) -> R {
    CRITICAL_REGION.with(|c| c.set(c.get() + 1));
    let r = f();
    CRITICAL_REGION.with(|c| c.set(c.get() - 1));
    r
}

/// KeAreApcsDisabled — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keareapcsdisabled>:
/// TRUE "if the thread is within a critical region or a guarded region" (the model has no
/// guarded regions), whatever the IRQL (ReactOS `ntoskrnl/ke/apc.c`: the thread's
/// `CombinedApcDisable`, "Callers of this routine must be running at IRQL <=
/// DISPATCH_LEVEL").
unsafe extern "win64" fn KeAreApcsDisabled() -> u8 {
    require_irql("KeAreApcsDisabled", DISPATCH_LEVEL);
    u8::from(CRITICAL_REGION.with(Cell::get) > 0)
}

/// KeEnterCriticalRegion — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-keentercriticalregion>.
unsafe extern "win64" fn KeEnterCriticalRegion() {
    require_irql("KeEnterCriticalRegion", APC_LEVEL);
    CRITICAL_REGION.with(|c| c.set(c.get() + 1));
}

/// KeLeaveCriticalRegion — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntddk/nf-ntddk-keleavecriticalregion>:
/// leaving a region never entered is a verifier violation.
unsafe extern "win64" fn KeLeaveCriticalRegion() {
    require_irql("KeLeaveCriticalRegion", APC_LEVEL);
    let n = CRITICAL_REGION.with(|c| {
        c.set(c.get() - 1);
        c.get()
    });
    if n < 0 {
        verifier_violation("KeLeaveCriticalRegion without KeEnterCriticalRegion");
    }
}

/// KeAcquireSpinLockRaiseToDpc — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keacquirespinlockraisetodpc>:
/// raises to DISPATCH_LEVEL and returns the previous IRQL. IRQL <= DISPATCH.
unsafe extern "win64" fn KeAcquireSpinLockRaiseToDpc(lock: *mut usize) -> u8 {
    crate::verifier::calls::count(crate::verifier::calls::Call::SpinLock);
    require_irql("KeAcquireSpinLockRaiseToDpc", DISPATCH_LEVEL);
    let old = cpu::irql();
    acquire(lock as usize, Kind::SpinLock, true, false, true);
    cpu::set_irql(DISPATCH_LEVEL);
    raised(lock as usize, old);
    old
}

/// KeReleaseSpinLock — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kereleasespinlock>:
/// releases and lowers to NewIrql. Must be at DISPATCH_LEVEL.
unsafe extern "win64" fn KeReleaseSpinLock(lock: *mut usize, new_irql: u8) {
    if cpu::irql() != DISPATCH_LEVEL {
        verifier_violation(&format!(
            "KeReleaseSpinLock at IRQL {} (must be DISPATCH_LEVEL)",
            cpu::irql()
        ));
    }
    lowering("KeReleaseSpinLock", lock as usize, new_irql);
    release(lock as usize, Kind::SpinLock, "KeReleaseSpinLock");
    cpu::set_irql(new_irql);
}

/// KeGetCurrentProcessorNumberEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kegetcurrentprocessornumberex>:
/// the system-wide index of the current processor; fills `PROCESSOR_NUMBER` (group 0) when
/// given. Each emulator thread is its own processor (its KPRCB's Number, set by
/// `cpu::enter_thread`). Any IRQL.
unsafe extern "win64" fn KeGetCurrentProcessorNumberEx(number: *mut u32) -> u32 {
    let n: u32;
    // SAFETY: every emulator thread that runs driver code has a KPCR behind gs.
    unsafe {
        std::arch::asm!("mov {:e}, gs:[0x1A4]", out(reg) n, options(nostack, readonly, preserves_flags));
    }
    if !number.is_null() {
        // PROCESSOR_NUMBER { USHORT Group; UCHAR Number; UCHAR Reserved; }: group 0.
        let packed = (n & 0xFF) << 16;
        // SAFETY: the caller passes a writable PROCESSOR_NUMBER.
        unsafe { number.write_unaligned(packed) };
    }
    n
}

/// KeAcquireSpinLockAtDpcLevel — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-keacquirespinlockatdpclevel>:
/// the caller is already at DISPATCH_LEVEL.
unsafe extern "win64" fn KeAcquireSpinLockAtDpcLevel(lock: *mut usize) {
    crate::verifier::calls::count(crate::verifier::calls::Call::SpinLock);
    if cpu::irql() != DISPATCH_LEVEL {
        verifier_violation(&format!(
            "KeAcquireSpinLockAtDpcLevel at IRQL {}",
            cpu::irql()
        ));
    }
    acquire(lock as usize, Kind::SpinLock, true, false, true);
}

/// KeReleaseSpinLockFromDpcLevel — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kereleasespinlockfromdpclevel>.
unsafe extern "win64" fn KeReleaseSpinLockFromDpcLevel(lock: *mut usize) {
    if cpu::irql() != DISPATCH_LEVEL {
        verifier_violation(&format!(
            "KeReleaseSpinLockFromDpcLevel at IRQL {}",
            cpu::irql()
        ));
    }
    not_raised("KeReleaseSpinLockFromDpcLevel", lock as usize);
    release(
        lock as usize,
        Kind::SpinLock,
        "KeReleaseSpinLockFromDpcLevel",
    );
}

// ---- Executive reader/writer spin locks (EX_SPIN_LOCK) ----
//
// Sources (each rule below cites one):
// [A] ExAcquireSpinLockShared / ExAcquireSpinLockExclusive —
//     <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquirespinlockshared>,
//     <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquirespinlockexclusive>:
//     "the caller must be running at IRQL <= DISPATCH_LEVEL. This routine raises the IRQL to
//     DISPATCH_LEVEL and returns the original (on-entry) IRQL value"; "A spin lock is a 32-bit
//     variable of type EX_SPIN_LOCK. The driver must ... initialize the spin lock to zero";
//     "The caller must not already own this spin lock"; "Recursive acquisition of a spin lock
//     causes deadlock and is not allowed."
// [R] ExReleaseSpinLockShared / ExReleaseSpinLockExclusive —
//     <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exreleasespinlockshared>,
//     <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exreleasespinlockexclusive>:
//     "The caller must own this spin lock for shared [exclusive] access"; "On entry ... IRQL =
//     DISPATCH_LEVEL. Before exiting, [it] restores the IRQL to the value specified by the
//     OldIrql parameter"; OldIrql is the value the matching acquire returned.
// [D] The ...AtDpcLevel / ...FromDpcLevel variants (same pages' siblings): "the caller must be
//     running at IRQL >= DISPATCH_LEVEL. This routine does not change the IRQL."
// [W] Reader/Writer Spin Locks —
//     <https://learn.microsoft.com/en-us/windows-hardware/drivers/kernel/reader-writer-spin-locks>:
//     readers share; a writer waits for every reader to release; "While the writer waits, no
//     new reader threads can acquire the lock"; the one way from shared to exclusive is
//     ExTryConvertSharedSpinLockExclusive (a try, not modelled: no driver here uses it).
//     Available from Windows Vista SP1 (the pages' Requirements).
// Windows' own lock word layout is undocumented: the model keeps each lock's state in its
// table and only reads the word, to check it is 0 (rule [A]).

/// A misuse Windows would not survive: it spins forever on its own lock ([A]: "causes
/// deadlock"). Reported as Driver Verifier's deadlock detection reports lock misuse (0xC4;
/// whether Verifier tracks EX_SPIN_LOCKs is not documented: the model stops here rather than
/// hang).
fn ex_deadlock(message: &str) -> ! {
    bugcheck::emit_stderr(&format!(
        "*** kernel-emulator: {message}: a deadlock on Windows\n"
    ));
    verifier_violation(&format!("deadlock: {message}"))
}

/// Acquires the EX_SPIN_LOCK at `addr` shared or exclusive for this thread, waiting (yielding)
/// while it is unavailable: exclusive waits for every holder; shared waits for a writer that
/// holds it or waits for it ([W]).
fn ex_acquire(addr: usize, exclusive: bool, routine: &str) {
    let thread = me();
    order_check(addr, Kind::ExSpinLock, routine);
    let mut waiting = false;
    loop {
        {
            let mut l = locks();
            let fresh = !l.contains_key(&addr);
            let s = l
                .entry(addr)
                .or_insert_with(|| LockState::new(Kind::ExSpinLock));
            if s.kind != Kind::ExSpinLock {
                let k = s.kind;
                drop(l);
                verifier_violation(&format!(
                    "{routine}({addr:#x}): used as an EX_SPIN_LOCK but it is a {k:?}"
                ));
            }
            if fresh {
                // [A]: "initialize the spin lock to zero"; the model never writes the word.
                // SAFETY: the driver passes its EX_SPIN_LOCK (a LONG); read only.
                let word = unsafe { (addr as *const i32).read_volatile() };
                if word != 0 {
                    l.remove(&addr);
                    drop(l);
                    verifier_violation(&format!(
                        "{routine}({addr:#x}): the EX_SPIN_LOCK reads {word:#x}, not 0 (an EX_SPIN_LOCK must be initialised to zero)"
                    ));
                }
            }
            let mine = if s.owner == Some(thread) {
                Some("exclusive")
            } else if s.shared.contains_key(&thread) {
                Some("shared")
            } else {
                None
            };
            if let Some(mode) = mine {
                let what = if exclusive { "exclusive" } else { "shared" };
                if waiting {
                    s.waiting_writers -= 1;
                }
                drop(l);
                // [A] "must not already own"; [W]: no blocking upgrade from shared.
                ex_deadlock(&format!(
                    "{routine}: EX_SPIN_LOCK {addr:#x} acquired {what} by a thread that already holds it {mode}"
                ));
            }
            let free = if exclusive {
                !s.held()
            } else {
                s.owner.is_none() && s.waiting_writers == 0
            };
            if free {
                if exclusive {
                    s.owner = Some(thread);
                    s.recursion = 1;
                    if waiting {
                        s.waiting_writers -= 1;
                    }
                } else {
                    s.shared.insert(thread, 1);
                }
                s.acquired_during = bugcheck::operation();
                return;
            }
            if exclusive && !waiting {
                s.waiting_writers += 1;
                waiting = true;
            }
        }
        std::thread::yield_now();
    }
}

/// Releases this thread's `exclusive` (or shared) hold of the EX_SPIN_LOCK at `addr` ([R]):
/// a lock it does not hold, or a hold of the other mode, is a verifier violation.
fn ex_release(addr: usize, exclusive: bool, routine: &str) {
    let thread = me();
    let mut l = locks();
    let problem = match l.get_mut(&addr) {
        Some(s) if s.kind != Kind::ExSpinLock => Some(format!(
            "{routine}({addr:#x}): a {:?}, not an EX_SPIN_LOCK",
            s.kind
        )),
        Some(s) if exclusive && s.owner == Some(thread) => {
            s.owner = None;
            s.recursion = 0;
            None
        }
        Some(s) if !exclusive && s.shared.contains_key(&thread) => {
            s.shared.remove(&thread);
            None
        }
        Some(s) if s.owner == Some(thread) => Some(format!(
            "{routine}({addr:#x}): this thread holds the EX_SPIN_LOCK exclusive (release it with ExReleaseSpinLockExclusive)"
        )),
        Some(s) if s.shared.contains_key(&thread) => Some(format!(
            "{routine}({addr:#x}): this thread holds the EX_SPIN_LOCK shared (release it with ExReleaseSpinLockShared)"
        )),
        _ => Some(format!(
            "{routine}({addr:#x}): this thread does not hold the EX_SPIN_LOCK"
        )),
    };
    l.retain(|_, s| s.kept());
    drop(l);
    if let Some(p) = problem {
        verifier_violation(&p);
    }
}

/// Counts one EX_SPIN_LOCK acquisition (a spin-lock acquisition of its mode).
fn count_ex(exclusive: bool) {
    crate::verifier::calls::count(crate::verifier::calls::Call::SpinLock);
    crate::verifier::calls::count(if exclusive {
        crate::verifier::calls::Call::ExSpinLockExclusive
    } else {
        crate::verifier::calls::Call::ExSpinLockShared
    });
}

/// [A]: IRQL <= DISPATCH_LEVEL; raises to DISPATCH_LEVEL and returns the entry IRQL.
fn ex_acquire_raising(lock: *mut i32, exclusive: bool, routine: &str) -> u8 {
    count_ex(exclusive);
    require_irql(routine, DISPATCH_LEVEL);
    let old = cpu::irql();
    ex_acquire(lock as usize, exclusive, routine);
    cpu::set_irql(DISPATCH_LEVEL);
    raised(lock as usize, old);
    old
}

/// [R]: at DISPATCH_LEVEL; releases and restores `old_irql`.
fn ex_release_lowering(lock: *mut i32, old_irql: u8, exclusive: bool, routine: &str) {
    if cpu::irql() != DISPATCH_LEVEL {
        verifier_violation(&format!(
            "{routine} at IRQL {} (must be DISPATCH_LEVEL)",
            cpu::irql()
        ));
    }
    lowering(routine, lock as usize, old_irql);
    ex_release(lock as usize, exclusive, routine);
    cpu::set_irql(old_irql);
}

/// [D]: IRQL >= DISPATCH_LEVEL, unchanged.
fn require_dpc_level(routine: &str) {
    if cpu::irql() < DISPATCH_LEVEL {
        verifier_violation(&format!(
            "{routine} at IRQL {} (must be DISPATCH_LEVEL or above)",
            cpu::irql()
        ));
    }
}

/// ExAcquireSpinLockShared — [A]; shared with other readers, behind a waiting writer ([W]).
unsafe extern "win64" fn ExAcquireSpinLockShared(lock: *mut i32) -> u8 {
    ex_acquire_raising(lock, false, "ExAcquireSpinLockShared")
}

/// ExReleaseSpinLockShared — [R].
unsafe extern "win64" fn ExReleaseSpinLockShared(lock: *mut i32, old_irql: u8) {
    ex_release_lowering(lock, old_irql, false, "ExReleaseSpinLockShared");
}

/// ExAcquireSpinLockExclusive — [A]; waits for every holder ([W]).
unsafe extern "win64" fn ExAcquireSpinLockExclusive(lock: *mut i32) -> u8 {
    ex_acquire_raising(lock, true, "ExAcquireSpinLockExclusive")
}

/// ExReleaseSpinLockExclusive — [R].
unsafe extern "win64" fn ExReleaseSpinLockExclusive(lock: *mut i32, old_irql: u8) {
    ex_release_lowering(lock, old_irql, true, "ExReleaseSpinLockExclusive");
}

/// ExAcquireSpinLockSharedAtDpcLevel — [D].
unsafe extern "win64" fn ExAcquireSpinLockSharedAtDpcLevel(lock: *mut i32) {
    count_ex(false);
    require_dpc_level("ExAcquireSpinLockSharedAtDpcLevel");
    ex_acquire(lock as usize, false, "ExAcquireSpinLockSharedAtDpcLevel");
}

/// ExReleaseSpinLockSharedFromDpcLevel — [D], [R].
unsafe extern "win64" fn ExReleaseSpinLockSharedFromDpcLevel(lock: *mut i32) {
    require_dpc_level("ExReleaseSpinLockSharedFromDpcLevel");
    not_raised("ExReleaseSpinLockSharedFromDpcLevel", lock as usize);
    ex_release(lock as usize, false, "ExReleaseSpinLockSharedFromDpcLevel");
}

/// ExAcquireSpinLockExclusiveAtDpcLevel — [D].
unsafe extern "win64" fn ExAcquireSpinLockExclusiveAtDpcLevel(lock: *mut i32) {
    count_ex(true);
    require_dpc_level("ExAcquireSpinLockExclusiveAtDpcLevel");
    ex_acquire(lock as usize, true, "ExAcquireSpinLockExclusiveAtDpcLevel");
}

/// ExReleaseSpinLockExclusiveFromDpcLevel — [D], [R].
unsafe extern "win64" fn ExReleaseSpinLockExclusiveFromDpcLevel(lock: *mut i32) {
    require_dpc_level("ExReleaseSpinLockExclusiveFromDpcLevel");
    not_raised("ExReleaseSpinLockExclusiveFromDpcLevel", lock as usize);
    ex_release(
        lock as usize,
        true,
        "ExReleaseSpinLockExclusiveFromDpcLevel",
    );
}

/// Exclusive acquirers now waiting for the EX_SPIN_LOCK at `addr`, and its shared holders
/// (for scenarios that order threads around a waiting writer).
#[must_use]
pub fn ex_spin_lock_state(addr: usize) -> (u32, usize) {
    locks()
        .get(&addr)
        .map_or((0, 0), |s| (s.waiting_writers, s.shared.len()))
}

/// ExAcquirePushLockExclusiveEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquirepushlockexclusiveex>:
/// normal kernel APCs must be disabled. Push locks are not recursive.
unsafe extern "win64" fn ExAcquirePushLockExclusiveEx(lock: *mut usize, _flags: u32) {
    require_irql("ExAcquirePushLockExclusiveEx", APC_LEVEL);
    require_apcs_disabled("ExAcquirePushLockExclusiveEx");
    acquire(lock as usize, Kind::PushLock, true, false, true);
}

/// ExAcquirePushLockSharedEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquirepushlocksharedex>.
unsafe extern "win64" fn ExAcquirePushLockSharedEx(lock: *mut usize, _flags: u32) {
    require_irql("ExAcquirePushLockSharedEx", APC_LEVEL);
    require_apcs_disabled("ExAcquirePushLockSharedEx");
    acquire(lock as usize, Kind::PushLock, false, false, true);
}

/// ExReleasePushLockExclusiveEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exreleasepushlockexclusiveex>.
unsafe extern "win64" fn ExReleasePushLockExclusiveEx(lock: *mut usize, _flags: u32) {
    require_irql("ExReleasePushLockExclusiveEx", APC_LEVEL);
    release(
        lock as usize,
        Kind::PushLock,
        "ExReleasePushLockExclusiveEx",
    );
}

/// ExReleasePushLockSharedEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exreleasepushlocksharedex>.
unsafe extern "win64" fn ExReleasePushLockSharedEx(lock: *mut usize, _flags: u32) {
    require_irql("ExReleasePushLockSharedEx", APC_LEVEL);
    release(lock as usize, Kind::PushLock, "ExReleasePushLockSharedEx");
}

/// ExAcquireFastMutex — <https://learn.microsoft.com/en-us/previous-versions/windows/hardware/drivers/ff544337(v=vs.85)>:
/// raises to APC_LEVEL (saved in the mutex's OldIrql, here in the lock table); not recursive.
unsafe extern "win64" fn ExAcquireFastMutex(mutex: *mut c_void) {
    require_irql("ExAcquireFastMutex", APC_LEVEL);
    let old = cpu::irql();
    acquire(mutex as usize, Kind::FastMutex, true, false, true);
    cpu::set_irql(APC_LEVEL);
    // FAST_MUTEX.OldIrql is at offset 0x30 on x64.
    // SAFETY: the driver passes an initialised FAST_MUTEX (0x38 bytes).
    unsafe { crate::nt::layout::poke(mutex as usize + 0x30, u32::from(old)) };
}

/// ExReleaseFastMutex — <https://learn.microsoft.com/en-us/previous-versions/windows/hardware/drivers/ff545567(v=vs.85)>:
/// must be at APC_LEVEL; restores the IRQL saved at acquire.
unsafe extern "win64" fn ExReleaseFastMutex(mutex: *mut c_void) {
    if cpu::irql() != APC_LEVEL {
        verifier_violation(&format!(
            "ExReleaseFastMutex at IRQL {} (must be APC_LEVEL)",
            cpu::irql()
        ));
    }
    // SAFETY: the driver passes the FAST_MUTEX it acquired.
    let old = unsafe { ((mutex as usize + 0x30) as *const u32).read_unaligned() };
    release(mutex as usize, Kind::FastMutex, "ExReleaseFastMutex");
    cpu::set_irql(old as u8);
}

/// ExInitializeResourceLite — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exinitializeresourcelite>:
/// the ERESOURCE must be 8-byte aligned non-paged memory; it must be deleted before its
/// memory is freed (an undeleted resource is reported at unload).
unsafe extern "win64" fn ExInitializeResourceLite(resource: *mut c_void) -> i32 {
    require_irql("ExInitializeResourceLite", DISPATCH_LEVEL);
    if !(resource as usize).is_multiple_of(8) {
        verifier_violation(&format!("ERESOURCE {resource:p} is not 8-byte aligned"));
    }
    let mut l = locks();
    if l.get(&(resource as usize)).is_some_and(LockState::held) {
        drop(l);
        verifier_violation(&format!(
            "ExInitializeResourceLite({resource:p}) on a resource that is held"
        ));
    }
    l.insert(resource as usize, LockState::new(Kind::Resource));
    drop(l);
    // SAFETY: the driver passes ERESOURCE storage (0x68 bytes on x64).
    unsafe { std::ptr::write_bytes(resource.cast::<u8>(), 0, 0x68) };
    0
}

/// ExDeleteResourceLite — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exdeleteresourcelite>.
unsafe extern "win64" fn ExDeleteResourceLite(resource: *mut c_void) -> i32 {
    require_irql("ExDeleteResourceLite", DISPATCH_LEVEL);
    let removed = locks().remove(&(resource as usize));
    match removed {
        Some(s) if s.held() => {
            verifier_violation(&format!("ExDeleteResourceLite({resource:p}) while held"))
        }
        Some(_) => 0,
        None => verifier_violation(&format!(
            "ExDeleteResourceLite({resource:p}): not an initialised resource"
        )),
    }
}

fn resource_known(resource: *mut c_void, routine: &str) {
    if !locks().contains_key(&(resource as usize)) {
        verifier_violation(&format!(
            "{routine}({resource:p}): not an initialised resource"
        ));
    }
}

/// ExAcquireResourceExclusiveLite — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquireresourceexclusivelite>:
/// recursive for the owner; normal kernel APCs must be disabled; Wait FALSE may fail.
unsafe extern "win64" fn ExAcquireResourceExclusiveLite(resource: *mut c_void, wait: u8) -> u8 {
    require_irql("ExAcquireResourceExclusiveLite", APC_LEVEL);
    require_apcs_disabled("ExAcquireResourceExclusiveLite");
    resource_known(resource, "ExAcquireResourceExclusiveLite");
    u8::from(acquire(
        resource as usize,
        Kind::Resource,
        true,
        true,
        wait != 0,
    ))
}

/// ExAcquireResourceSharedLite — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exacquireresourcesharedlite>.
unsafe extern "win64" fn ExAcquireResourceSharedLite(resource: *mut c_void, wait: u8) -> u8 {
    require_irql("ExAcquireResourceSharedLite", APC_LEVEL);
    require_apcs_disabled("ExAcquireResourceSharedLite");
    resource_known(resource, "ExAcquireResourceSharedLite");
    u8::from(acquire(
        resource as usize,
        Kind::Resource,
        false,
        true,
        wait != 0,
    ))
}

/// ExReleaseResourceLite — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exreleaseresourcelite>.
unsafe extern "win64" fn ExReleaseResourceLite(resource: *mut c_void) {
    require_irql("ExReleaseResourceLite", DISPATCH_LEVEL);
    release(resource as usize, Kind::Resource, "ExReleaseResourceLite");
}

/// KeQuerySystemTimePrecise — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kequerysystemtimeprecise>.
unsafe extern "win64" fn KeQuerySystemTimePrecise(time: *mut u64) {
    // SAFETY: the driver passes a writable LARGE_INTEGER.
    unsafe { time.write_unaligned(cpu::system_time()) };
}

/// KeQueryInterruptTimePrecise — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kequeryinterrupttimeprecise>.
unsafe extern "win64" fn KeQueryInterruptTimePrecise(qpc: *mut u64) -> u64 {
    let t = cpu::interrupt_time();
    if !qpc.is_null() {
        // SAFETY: the driver passes a writable ULONG64.
        unsafe { qpc.write_unaligned(t) };
    }
    t
}

/// KeQueryPerformanceCounter — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kequeryperformancecounter>:
/// a 10 MHz counter (the host's monotonic clock in 100 ns units). The frequency is a *model
/// choice, no Windows value*: Learn gives no fixed value, the routine returns it in
/// `PerformanceFrequency` and a caller divides by it (fidelity audit 22e, L3).
unsafe extern "win64" fn KeQueryPerformanceCounter(frequency: *mut u64) -> u64 {
    if !frequency.is_null() {
        // SAFETY: the driver passes a writable LARGE_INTEGER.
        unsafe { frequency.write_unaligned(10_000_000) };
    }
    cpu::interrupt_time()
}

/// KeGetCurrentIrql — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-kegetcurrentirql>.
unsafe extern "win64" fn KeGetCurrentIrql() -> u8 {
    cpu::irql()
}

/// The EX_SPIN_LOCK routines.
fn ex_spin_lock_exports() -> Vec<Export> {
    vec![
        Export::function(
            "ExAcquireSpinLockShared",
            ExAcquireSpinLockShared as *const () as usize,
        ),
        Export::function(
            "ExReleaseSpinLockShared",
            ExReleaseSpinLockShared as *const () as usize,
        ),
        Export::function(
            "ExAcquireSpinLockExclusive",
            ExAcquireSpinLockExclusive as *const () as usize,
        ),
        Export::function(
            "ExReleaseSpinLockExclusive",
            ExReleaseSpinLockExclusive as *const () as usize,
        ),
        Export::function(
            "ExAcquireSpinLockSharedAtDpcLevel",
            ExAcquireSpinLockSharedAtDpcLevel as *const () as usize,
        ),
        Export::function(
            "ExReleaseSpinLockSharedFromDpcLevel",
            ExReleaseSpinLockSharedFromDpcLevel as *const () as usize,
        ),
        Export::function(
            "ExAcquireSpinLockExclusiveAtDpcLevel",
            ExAcquireSpinLockExclusiveAtDpcLevel as *const () as usize,
        ),
        Export::function(
            "ExReleaseSpinLockExclusiveFromDpcLevel",
            ExReleaseSpinLockExclusiveFromDpcLevel as *const () as usize,
        ),
    ]
}

/// The synchronisation and time routines.
pub(crate) fn exports() -> Vec<Export> {
    let _ = PASSIVE_LEVEL;
    let mut v = ex_spin_lock_exports();
    v.extend([
        Export::function(
            "KeEnterCriticalRegion",
            KeEnterCriticalRegion as *const () as usize,
        ),
        Export::function(
            "KeLeaveCriticalRegion",
            KeLeaveCriticalRegion as *const () as usize,
        ),
        Export::function("KeAreApcsDisabled", KeAreApcsDisabled as *const () as usize),
        Export::function(
            "KeGetCurrentProcessorNumberEx",
            KeGetCurrentProcessorNumberEx as *const () as usize,
        ),
        Export::function(
            "KeAcquireSpinLockRaiseToDpc",
            KeAcquireSpinLockRaiseToDpc as *const () as usize,
        ),
        Export::function("KeReleaseSpinLock", KeReleaseSpinLock as *const () as usize),
        Export::function(
            "KeAcquireSpinLockAtDpcLevel",
            KeAcquireSpinLockAtDpcLevel as *const () as usize,
        ),
        Export::function(
            "KeReleaseSpinLockFromDpcLevel",
            KeReleaseSpinLockFromDpcLevel as *const () as usize,
        ),
        Export::function(
            "ExAcquirePushLockExclusiveEx",
            ExAcquirePushLockExclusiveEx as *const () as usize,
        ),
        Export::function(
            "ExAcquirePushLockSharedEx",
            ExAcquirePushLockSharedEx as *const () as usize,
        ),
        Export::function(
            "ExReleasePushLockExclusiveEx",
            ExReleasePushLockExclusiveEx as *const () as usize,
        ),
        Export::function(
            "ExReleasePushLockSharedEx",
            ExReleasePushLockSharedEx as *const () as usize,
        ),
        Export::function(
            "ExAcquireFastMutex",
            ExAcquireFastMutex as *const () as usize,
        ),
        Export::function(
            "ExReleaseFastMutex",
            ExReleaseFastMutex as *const () as usize,
        ),
        Export::function(
            "ExInitializeResourceLite",
            ExInitializeResourceLite as *const () as usize,
        ),
        Export::function(
            "ExDeleteResourceLite",
            ExDeleteResourceLite as *const () as usize,
        ),
        Export::function(
            "ExAcquireResourceExclusiveLite",
            ExAcquireResourceExclusiveLite as *const () as usize,
        ),
        Export::function(
            "ExAcquireResourceSharedLite",
            ExAcquireResourceSharedLite as *const () as usize,
        ),
        Export::function(
            "ExReleaseResourceLite",
            ExReleaseResourceLite as *const () as usize,
        ),
        Export::function(
            "KeQuerySystemTimePrecise",
            KeQuerySystemTimePrecise as *const () as usize,
        ),
        Export::function(
            "KeQueryInterruptTimePrecise",
            KeQueryInterruptTimePrecise as *const () as usize,
        ),
        Export::function(
            "KeQueryPerformanceCounter",
            KeQueryPerformanceCounter as *const () as usize,
        ),
        Export::function("KeGetCurrentIrql", KeGetCurrentIrql as *const () as usize),
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_lock_excludes_writers_across_threads() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let lock = std::ptr::from_mut::<usize>(Box::leak(Box::new(0usize))) as usize;
        let threads: Vec<_> = (0..4)
            .map(|n| {
                std::thread::spawn(move || {
                    cpu::enter_thread(10 + n);
                    for _ in 0..500 {
                        // SAFETY: a live lock word; critical region entered as required.
                        unsafe { KeEnterCriticalRegion() };
                        // SAFETY: as above.
                        unsafe { ExAcquirePushLockExclusiveEx(lock as *mut usize, 0) };
                        let v = COUNTER.load(std::sync::atomic::Ordering::Relaxed);
                        std::hint::spin_loop();
                        COUNTER.store(v + 1, std::sync::atomic::Ordering::Relaxed);
                        // SAFETY: held by this thread.
                        unsafe { ExReleasePushLockExclusiveEx(lock as *mut usize, 0) };
                        // SAFETY: entered above.
                        unsafe { KeLeaveCriticalRegion() };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(COUNTER.load(std::sync::atomic::Ordering::Relaxed), 2000);
        assert!(!locks().contains_key(&lock));
    }

    /// Review 24c, LOW 4: a lock in a freed pool block leaves the lock-order graph
    /// (`VerifierDeadlockFreePool`), so a new lock at the reused address, taken in the
    /// reverse order, is a new node. Fails, with the free's `forget_order` left out, at the
    /// assertion that the edge is gone (and the reverse order would then bugcheck 0x1001).
    #[test]
    fn a_freed_blocks_locks_leave_the_lock_order_graph() {
        std::thread::spawn(|| {
            cpu::enter_thread(40);
            let a = std::ptr::from_mut::<usize>(Box::leak(Box::new(0usize)));
            let block =
                crate::nt::ex::pool::allocate(64, u32::from_le_bytes(*b"Ordr"), true, "test");
            let b = block.cast::<usize>();
            // A, then B inside the block.
            // SAFETY: live, zeroed lock words at PASSIVE_LEVEL.
            let old = unsafe { KeAcquireSpinLockRaiseToDpc(a) };
            // SAFETY: as above, at DISPATCH_LEVEL.
            unsafe { KeAcquireSpinLockAtDpcLevel(b) };
            // SAFETY: held by this thread.
            unsafe { KeReleaseSpinLockFromDpcLevel(b) };
            // SAFETY: held by this thread, acquired at `old`.
            unsafe { KeReleaseSpinLock(a, old) };
            assert!(
                order()
                    .get(&(a as usize))
                    .is_some_and(|e| e.contains_key(&(b as usize)))
            );
            // SAFETY: the block `allocate` gave, freed once.
            unsafe { crate::nt::ex::pool::free(block, None, "test") };
            assert!(
                !order()
                    .get(&(a as usize))
                    .is_some_and(|e| e.contains_key(&(b as usize))),
                "the freed block's lock still has its order"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn spin_lock_raises_and_restores_irql() {
        std::thread::spawn(|| {
            cpu::enter_thread(20);
            let mut lock = 0usize;
            // SAFETY: a live local lock word at PASSIVE_LEVEL.
            let old = unsafe { KeAcquireSpinLockRaiseToDpc(&raw mut lock) };
            assert_eq!((old, cpu::irql()), (PASSIVE_LEVEL, DISPATCH_LEVEL));
            // SAFETY: held by this thread.
            unsafe { KeReleaseSpinLock(&raw mut lock, old) };
            assert_eq!(cpu::irql(), PASSIVE_LEVEL);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn ex_spin_lock_shares_readers_and_queues_readers_behind_a_waiting_writer() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        use std::sync::mpsc;
        static ORDER: AtomicU32 = AtomicU32::new(0);
        static WRITER_AT: AtomicU32 = AtomicU32::new(0);
        static READER_AT: AtomicU32 = AtomicU32::new(0);
        let lock = std::ptr::from_mut::<i32>(Box::leak(Box::new(0i32))) as usize;
        let (held_tx, held_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        // A first reader holds it shared until told to release.
        let first = std::thread::spawn(move || {
            cpu::enter_thread(30);
            // SAFETY: a live, zeroed lock word at PASSIVE_LEVEL.
            let old = unsafe { ExAcquireSpinLockShared(lock as *mut i32) };
            held_tx.send((old, cpu::irql())).unwrap();
            go_rx.recv().unwrap();
            // SAFETY: held shared by this thread.
            unsafe { ExReleaseSpinLockShared(lock as *mut i32, old) };
            cpu::irql()
        });
        assert_eq!(held_rx.recv().unwrap(), (PASSIVE_LEVEL, DISPATCH_LEVEL));
        // A second reader shares it.
        std::thread::spawn(move || {
            cpu::enter_thread(31);
            // SAFETY: as above.
            let old = unsafe { ExAcquireSpinLockShared(lock as *mut i32) };
            assert_eq!(ex_spin_lock_state(lock), (0, 2), "two readers at once");
            // SAFETY: held shared by this thread.
            unsafe { ExReleaseSpinLockShared(lock as *mut i32, old) };
        })
        .join()
        .unwrap();
        // A writer waits for the first reader...
        let writer = std::thread::spawn(move || {
            cpu::enter_thread(32);
            // SAFETY: as above.
            let old = unsafe { ExAcquireSpinLockExclusive(lock as *mut i32) };
            WRITER_AT.store(ORDER.fetch_add(1, SeqCst) + 1, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            // SAFETY: held exclusive by this thread.
            unsafe { ExReleaseSpinLockExclusive(lock as *mut i32, old) };
        });
        while ex_spin_lock_state(lock).0 == 0 {
            std::thread::yield_now();
        }
        // ...and a new reader queues behind the waiting writer.
        let reader = std::thread::spawn(move || {
            cpu::enter_thread(33);
            // SAFETY: as above.
            let old = unsafe { ExAcquireSpinLockShared(lock as *mut i32) };
            READER_AT.store(ORDER.fetch_add(1, SeqCst) + 1, SeqCst);
            // SAFETY: held shared by this thread.
            unsafe { ExReleaseSpinLockShared(lock as *mut i32, old) };
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            (WRITER_AT.load(SeqCst), READER_AT.load(SeqCst)),
            (0, 0),
            "neither got it while the first reader holds it"
        );
        go_tx.send(()).unwrap();
        assert_eq!(
            first.join().unwrap(),
            PASSIVE_LEVEL,
            "release restores the IRQL"
        );
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!((WRITER_AT.load(SeqCst), READER_AT.load(SeqCst)), (1, 2));
        assert!(!locks().contains_key(&lock));
        assert_eq!(
            spin_locks_held_by_current_thread(),
            Vec::<String>::new(),
            "nothing held here"
        );
    }
}
