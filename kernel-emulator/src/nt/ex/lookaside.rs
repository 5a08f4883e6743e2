//! Lookaside lists and interlocked singly linked lists: an x64 SLIST_HEADER of two quadwords
//! (Depth:16 | Sequence:48, NextEntry in the second quadword; the WDK's `wdm.h` declares the
//! x64 header as two ULONGLONGs and only `ExQueryDepthSList` reads it for a driver, so the
//! bit layout is a *model choice* — fidelity audit 22e, L3) updated with `lock cmpxchg16b`,
//! ExInitializeLookasideListEx / ExDeleteLookasideListEx (LOOKASIDE_LIST_EX, 0x60 bytes) and
//! the older ExInitializeNPagedLookasideList / ExDeleteNPagedLookasideList, the exported forms
//! of ExAllocateFromLookasideListEx / ExFreeToLookasideListEx (inline in older WDKs: drivers
//! inline them on top of the SLIST routines), every list tracked for the unload check, and
//! [`force_depth_zero`], which does what the balance-set manager may do at any time: set every
//! list's depth to 0 and free the cached entries, so every allocation goes to pool (where it
//! can be failed and tracked).

use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::Mutex;

use crate::machine::cpu::DISPATCH_LEVEL;
use crate::nt::ex::pool;
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::layout::ListEntry;
use crate::nt::status::{
    NtStatus, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER_4,
    STATUS_INVALID_PARAMETER_5, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::{require_irql, verifier_violation};

/// EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL (wdm.h).
const RAISE_ON_FAIL: u32 = 1;
/// EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE (wdm.h).
const FAIL_NO_RAISE: u32 = 2;
/// POOL_RAISE_IF_ALLOCATION_FAILURE (wdm.h, 16).
const POOL_RAISE_IF_ALLOCATION_FAILURE: i32 = 0x10;
/// POOL_QUOTA_FAIL_INSTEAD_OF_RAISE (wdm.h, 8).
const POOL_QUOTA_FAIL_INSTEAD_OF_RAISE: i32 = 0x8;

/// The members of the POOL_TYPE enumeration (Learn, `ne-wdm-_pool_type`: NonPagedPool 0 ...
/// NonPagedPoolCacheAlignedMustS 6, the session types 32 ... 38, NonPagedPoolNx 512,
/// NonPagedPoolNxCacheAligned 516, NonPagedPoolSessionNx 544; MaxPoolType 7 is a count, not
/// a type). Which of them Windows accepts for a lookaside list is not documented: every
/// member is taken as "a valid POOL_TYPE enumeration value" (*inference*).
const fn is_pool_type(t: i32) -> bool {
    matches!(t, 0..=6 | 32..=38 | 512 | 516 | 544)
}

/// Depth is "Reserved" and must be zero (Learn: ExInitializeLookasideListEx "Always set this
/// parameter to zero", ExInitializeNPagedLookasideList "Must be zero"). Windows ignores it
/// (ReactOS `ntoskrnl/ex/lookas.c` sets `L.Depth = 4` whatever was passed); the model reports
/// the broken rule as a verifier violation (stricter than Windows: no Verifier rule for it is
/// documented).
fn require_depth_zero(routine: &str, depth: u16) {
    if depth != 0 {
        verifier_violation(&format!(
            "{routine}: Depth {depth} — the parameter is reserved and must be zero"
        ));
    }
}

/// PALLOCATE_FUNCTION_EX.
pub type AllocateFnEx =
    unsafe extern "win64" fn(i32, usize, u32, *mut LookasideListEx) -> *mut c_void;
/// PFREE_FUNCTION_EX.
pub type FreeFnEx = unsafe extern "win64" fn(*mut c_void, *mut LookasideListEx);
/// PALLOCATE_FUNCTION (NPAGED_LOOKASIDE_LIST).
pub type AllocateFn = unsafe extern "win64" fn(i32, usize, u32) -> *mut c_void;
/// PFREE_FUNCTION (NPAGED_LOOKASIDE_LIST).
pub type FreeFn = unsafe extern "win64" fn(*mut c_void);

/// LOOKASIDE_LIST_EX / GENERAL_LOOKASIDE_POOL (0x60).
#[repr(C, align(16))]
#[derive(Debug)]
pub struct LookasideListEx {
    /// 0x00: SLIST_HEADER
    pub list_head: [u64; 2],
    /// 0x10
    pub depth: u16,
    /// 0x12
    pub maximum_depth: u16,
    /// 0x14
    pub total_allocates: u32,
    /// 0x18
    pub allocate_misses: u32,
    /// 0x1C
    pub total_frees: u32,
    /// 0x20
    pub free_misses: u32,
    /// 0x24
    pub pool_type: i32,
    /// 0x28
    pub tag: u32,
    /// 0x2C
    pub size: u32,
    /// 0x30: AllocateEx (or Allocate for the NPAGED flavour)
    pub allocate: usize,
    /// 0x38: FreeEx (or Free)
    pub free: usize,
    /// 0x40
    pub list_entry: ListEntry,
    /// 0x50
    pub last_total_allocates: u32,
    /// 0x54
    pub last_allocate_misses: u32,
    /// 0x58
    pub future: [u32; 2],
}

const _: () = {
    assert!(core::mem::size_of::<LookasideListEx>() == 0x60);
    assert!(core::mem::offset_of!(LookasideListEx, depth) == 0x10);
    assert!(core::mem::offset_of!(LookasideListEx, tag) == 0x28);
    assert!(core::mem::offset_of!(LookasideListEx, allocate) == 0x30);
    assert!(core::mem::offset_of!(LookasideListEx, list_entry) == 0x40);
};

/// Which flavour a tracked list is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// LOOKASIDE_LIST_EX.
    Ex,
    /// NPAGED_LOOKASIDE_LIST.
    NPaged,
}

/// Lookaside bookkeeping.
#[derive(Debug, Default)]
pub struct LookasideState {
    /// Initialised lists.
    pub lists: HashSet<(usize, Flavour)>,
    /// New lists get depth 0 (and [`force_depth_zero`] was applied).
    pub depth_zero: bool,
}

impl LookasideState {
    /// Lists not deleted, as leak lines (bugcheck 0xCE / 0xC4 on Windows).
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lists
            .iter()
            .map(|(l, f)| format!("lookaside list {l:#x} ({f:?}) not deleted"))
            .collect();
        v.sort();
        v
    }
}

/// Serialises pops: the kernel instead tolerates the fault a pop of a just-freed entry can take.
static POP: Mutex<()> = Mutex::new(());

/// `lock cmpxchg16b` on a 16-byte aligned header. LLVM reserves rbx, so the low half of the
/// new value travels in r8 and is swapped into rbx around the instruction.
///
/// # Safety
/// `h` must be a live, 16-byte aligned SLIST_HEADER.
unsafe fn cas16(h: *mut u64, old: (u64, u64), new: (u64, u64)) -> bool {
    let ok: u8;
    // SAFETY: rbx is restored before the asm block ends; `h` is valid and aligned per the
    // caller; flags survive the `mov` that restores rbx.
    unsafe {
        std::arch::asm!(
            "xchg r8, rbx",
            "lock cmpxchg16b xmmword ptr [r9]",
            "mov rbx, r8",
            "sete {ok}",
            in("r9") h,
            inout("r8") new.0 => _,
            ok = out(reg_byte) ok,
            inout("rax") old.0 => _,
            inout("rdx") old.1 => _,
            in("rcx") new.1,
        );
    }
    ok != 0
}

/// Reads both halves of a header.
///
/// # Safety
/// `h` must be a live SLIST_HEADER.
unsafe fn read16(h: *mut u64) -> (u64, u64) {
    // SAFETY: per the caller.
    let lo = unsafe { std::ptr::read_volatile(h) };
    // SAFETY: per the caller.
    let hi = unsafe { std::ptr::read_volatile(h.wrapping_add(1)) };
    (lo, hi)
}

fn check_aligned(p: usize, what: &str) {
    if !p.is_multiple_of(16) {
        verifier_violation(&format!("{what} {p:#x} is not 16-byte aligned"));
    }
}

/// ExpInterlockedPushEntrySList (InterlockedPushEntrySList on x64) —
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-interlockedpushentryslist>:
/// pushes and returns the previous first entry.
unsafe extern "win64" fn ExpInterlockedPushEntrySList(h: *mut u64, entry: *mut u64) -> *mut u64 {
    crate::verifier::calls::count(crate::verifier::calls::Call::LookasidePush);
    check_aligned(h as usize, "SLIST_HEADER");
    check_aligned(entry as usize, "SLIST_ENTRY");
    loop {
        // SAFETY: the driver passes a live header (alignment checked).
        let old = unsafe { read16(h) };
        let next = old.1 & !0xF;
        // SAFETY: the driver passes a live, writable entry.
        unsafe { entry.write(next) };
        let depth = ((old.0 & 0xFFFF) + 1) & 0xFFFF;
        let sequence = (old.0 >> 16).wrapping_add(1) << 16;
        // SAFETY: as above.
        if unsafe { cas16(h, old, (depth | sequence, entry as u64)) } {
            return next as *mut u64;
        }
    }
}

/// ExpInterlockedPopEntrySList (InterlockedPopEntrySList on x64) —
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-interlockedpopentryslist>:
/// pops the first entry or returns NULL.
unsafe extern "win64" fn ExpInterlockedPopEntrySList(h: *mut u64) -> *mut u64 {
    crate::verifier::calls::count(crate::verifier::calls::Call::LookasidePop);
    check_aligned(h as usize, "SLIST_HEADER");
    let _serial = POP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        // SAFETY: the driver passes a live header (alignment checked).
        let old = unsafe { read16(h) };
        let first = old.1 & !0xF;
        if first == 0 {
            return std::ptr::null_mut();
        }
        // SAFETY: `first` is an entry on the list (pops are serialised, so it is live).
        let next = unsafe { (first as *const u64).read() };
        let depth = (old.0 & 0xFFFF).wrapping_sub(1) & 0xFFFF;
        // SAFETY: as above.
        if unsafe { cas16(h, old, (depth | (old.0 & !0xFFFF), next)) } {
            return first as *mut u64;
        }
    }
}

/// ExpInterlockedFlushSList (InterlockedFlushSList on x64) —
/// <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-interlockedflushslist>:
/// empties the list, returning the former first entry.
unsafe extern "win64" fn ExpInterlockedFlushSList(h: *mut u64) -> *mut u64 {
    check_aligned(h as usize, "SLIST_HEADER");
    let _serial = POP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        // SAFETY: the driver passes a live header (alignment checked).
        let old = unsafe { read16(h) };
        // SAFETY: as above.
        if unsafe { cas16(h, old, (old.0 & !0xFFFF, 0)) } {
            return (old.1 & !0xF) as *mut u64;
        }
    }
}

/// ExQueryDepthSList — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exquerydepthslist>.
unsafe extern "win64" fn ExQueryDepthSList(h: *mut u64) -> u16 {
    check_aligned(h as usize, "SLIST_HEADER");
    // SAFETY: the driver passes a live header.
    (unsafe { std::ptr::read_volatile(h) } & 0xFFFF) as u16
}

unsafe extern "win64" fn default_allocate_ex(
    _pool: i32,
    size: usize,
    tag: u32,
    _l: *mut LookasideListEx,
) -> *mut c_void {
    pool::allocate(size, tag, false, "lookaside AllocateEx").cast()
}

unsafe extern "win64" fn default_free_ex(p: *mut c_void, _l: *mut LookasideListEx) {
    // SAFETY: entries come from default_allocate_ex.
    unsafe { pool::free(p.cast(), None, "lookaside FreeEx") };
}

unsafe extern "win64" fn default_allocate(_pool: i32, size: usize, tag: u32) -> *mut c_void {
    pool::allocate(size, tag, false, "lookaside Allocate").cast()
}

unsafe extern "win64" fn default_free(p: *mut c_void) {
    // SAFETY: entries come from default_allocate.
    unsafe { pool::free(p.cast(), None, "lookaside Free") };
}

fn init_common(
    l: *mut LookasideListEx,
    flavour: Flavour,
    pool_type: i32,
    size: usize,
    tag: u32,
    allocate: usize,
    free: usize,
) {
    check_aligned(l as usize, "lookaside list");
    if size < 8 {
        verifier_violation(&format!(
            "lookaside list {l:p}: block size {size} is below sizeof(SLIST_ENTRY) (bugcheck 0xCD)"
        ));
    }
    let (fresh, zero) = kernel::with(|k| {
        (
            k.lookasides.lists.insert((l as usize, flavour)),
            k.lookasides.depth_zero,
        )
    });
    if !fresh {
        verifier_violation(&format!(
            "lookaside list {l:p} initialised twice (bugcheck 0xCA)"
        ));
    }
    let value = LookasideListEx {
        list_head: [0, 0],
        depth: if zero { 0 } else { 4 },
        maximum_depth: 256,
        total_allocates: 0,
        allocate_misses: 0,
        total_frees: 0,
        free_misses: 0,
        pool_type,
        tag,
        size: size as u32,
        allocate,
        free,
        list_entry: ListEntry {
            flink: std::ptr::null_mut(),
            blink: std::ptr::null_mut(),
        },
        last_total_allocates: 0,
        last_allocate_misses: 0,
        future: [0, 0],
    };
    // SAFETY: the driver passes writable, non-moving storage for the list.
    unsafe { l.write(value) };
    // SAFETY: as above; ListEntry points at itself (the kernel links it into its own list).
    let le = unsafe { &raw mut (*l).list_entry };
    // SAFETY: as above.
    unsafe { (*le).flink = le };
    // SAFETY: as above.
    unsafe { (*le).blink = le };
}

/// ExInitializeLookasideListEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exinitializelookasidelistex>:
/// Flags beyond EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL | FAIL_NO_RAISE, or both of them ("These
/// two flag bits are mutually exclusive"), are STATUS_INVALID_PARAMETER_5; a PoolType that is
/// not a POOL_TYPE is STATUS_INVALID_PARAMETER_4; Depth must be 0 ([`require_depth_zero`]);
/// FAIL_NO_RAISE with the default allocator (Allocate NULL) is a verifier violation ("the
/// behavior of the default allocation routine is undefined"). The allocate routine gets
/// PoolType | POOL_RAISE_IF_ALLOCATION_FAILURE with RAISE_ON_FAIL and | POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
/// with FAIL_NO_RAISE (the page's Flags section). NULL routines mean the default pool
/// routines, for which an executable PoolType is Verifier's code integrity stop
/// ([`pool::code_integrity_executable`]). IRQL <= DISPATCH.
#[allow(clippy::too_many_arguments)] // the documented signature
unsafe extern "win64" fn ExInitializeLookasideListEx(
    l: *mut LookasideListEx,
    allocate: Option<AllocateFnEx>,
    free: Option<FreeFnEx>,
    pool_type: i32,
    flags: u32,
    size: usize,
    tag: u32,
    depth: u16,
) -> NtStatus {
    require_irql("ExInitializeLookasideListEx", DISPATCH_LEVEL);
    require_depth_zero("ExInitializeLookasideListEx", depth);
    if flags & !(RAISE_ON_FAIL | FAIL_NO_RAISE) != 0 || flags == RAISE_ON_FAIL | FAIL_NO_RAISE {
        return STATUS_INVALID_PARAMETER_5;
    }
    if !is_pool_type(pool_type) {
        return STATUS_INVALID_PARAMETER_4;
    }
    if allocate.is_none() && flags == FAIL_NO_RAISE {
        verifier_violation(
            "ExInitializeLookasideListEx: EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE with the default \
             allocation routine (Allocate NULL): its behaviour is undefined",
        );
    }
    if allocate.is_none() {
        pool::code_integrity_executable("ExInitializeLookasideListEx", pool_type, tag);
    }
    if kernel::should_fail("ExInitializeLookasideListEx", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let a = allocate.unwrap_or(default_allocate_ex) as usize;
    let f = free.unwrap_or(default_free_ex) as usize;
    let passed = pool_type
        | if flags == RAISE_ON_FAIL {
            POOL_RAISE_IF_ALLOCATION_FAILURE
        } else {
            0
        }
        | if flags == FAIL_NO_RAISE {
            POOL_QUOTA_FAIL_INSTEAD_OF_RAISE
        } else {
            0
        };
    init_common(l, Flavour::Ex, passed, size, tag, a, f);
    STATUS_SUCCESS
}

/// Pops every cached entry and hands it to the free routine (which may be driver code: no
/// lock is held).
fn drain(l: *mut LookasideListEx, flavour: Flavour) -> usize {
    let mut n = 0;
    loop {
        // SAFETY: a tracked, live list.
        let e = unsafe { ExpInterlockedPopEntrySList(l.cast()) };
        if e.is_null() {
            return n;
        }
        // SAFETY: a tracked, live list.
        let free = unsafe { (*l).free };
        match flavour {
            Flavour::Ex => {
                // SAFETY: set at initialisation to a FREE_FUNCTION_EX.
                let f = unsafe { std::mem::transmute::<usize, FreeFnEx>(free) };
                // SAFETY: returning a cached entry to its list's free routine.
                unsafe { f(e.cast(), l) };
            }
            Flavour::NPaged => {
                // SAFETY: set at initialisation to a FREE_FUNCTION.
                let f = unsafe { std::mem::transmute::<usize, FreeFn>(free) };
                // SAFETY: as above.
                unsafe { f(e.cast()) };
            }
        }
        n += 1;
    }
}

fn delete_common(l: *mut LookasideListEx, flavour: Flavour, routine: &str) {
    if !kernel::with(|k| k.lookasides.lists.remove(&(l as usize, flavour))) {
        verifier_violation(&format!(
            "{routine}({l:p}): not an initialised lookaside list (bugcheck 0xCB)"
        ));
    }
    drain(l, flavour);
}

/// ExDeleteLookasideListEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exdeletelookasidelistex>:
/// frees every cached entry through FreeEx. IRQL <= DISPATCH.
unsafe extern "win64" fn ExDeleteLookasideListEx(l: *mut LookasideListEx) {
    require_irql("ExDeleteLookasideListEx", DISPATCH_LEVEL);
    delete_common(l, Flavour::Ex, "ExDeleteLookasideListEx");
}

/// ExAllocateFromLookasideListEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatefromlookasidelistex>:
/// a cached entry, else AllocateEx (a miss).
unsafe extern "win64" fn ExAllocateFromLookasideListEx(l: *mut LookasideListEx) -> *mut c_void {
    // SAFETY: the driver passes an initialised list.
    let list = unsafe { &mut *l };
    list.total_allocates = list.total_allocates.wrapping_add(1);
    // SAFETY: the list head of a live list.
    let e = unsafe { ExpInterlockedPopEntrySList(l.cast()) };
    if !e.is_null() {
        return e.cast();
    }
    list.allocate_misses = list.allocate_misses.wrapping_add(1);
    // SAFETY: set at initialisation to an ALLOCATE_FUNCTION_EX.
    let f = unsafe { std::mem::transmute::<usize, AllocateFnEx>(list.allocate) };
    let (pool_type, size, tag) = (list.pool_type, list.size as usize, list.tag);
    // SAFETY: the list's own allocate routine.
    unsafe { f(pool_type, size, tag, l) }
}

/// ExFreeToLookasideListEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exfreetolookasidelistex>:
/// caches the entry while the list holds fewer than Depth, else FreeEx.
unsafe extern "win64" fn ExFreeToLookasideListEx(l: *mut LookasideListEx, entry: *mut c_void) {
    // SAFETY: the driver passes an initialised list.
    let list = unsafe { &mut *l };
    list.total_frees = list.total_frees.wrapping_add(1);
    // SAFETY: the list head of a live list.
    if unsafe { ExQueryDepthSList(l.cast()) } >= list.depth {
        list.free_misses = list.free_misses.wrapping_add(1);
        // SAFETY: set at initialisation to a FREE_FUNCTION_EX.
        let f = unsafe { std::mem::transmute::<usize, FreeFnEx>(list.free) };
        // SAFETY: the list's own free routine with one of its entries.
        unsafe { f(entry, l) };
    } else {
        // SAFETY: an entry of this list (16-byte aligned pool block).
        unsafe { ExpInterlockedPushEntrySList(l.cast(), entry.cast()) };
    }
}

/// ExInitializeNPagedLookasideList — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exinitializenpagedlookasidelist>:
/// the older API (no status; NULL routines mean the default pool routines). The entries' pool
/// type is NonPagedPool | Flags (ReactOS `ntoskrnl/ex/lookas.c`: `L.Type = NonPagedPool |
/// Flags`; Learn: Flags may hold POOL_RAISE_IF_ALLOCATION_FAILURE (16) and POOL_NX_ALLOCATION
/// (512)), passed to the allocate routine. Without POOL_NX_ALLOCATION the default allocator's
/// entries are executable NonPagedPool: Verifier's code integrity stop
/// ([`pool::code_integrity_executable`]). Depth must be 0 ([`require_depth_zero`]).
/// IRQL <= DISPATCH.
unsafe extern "win64" fn ExInitializeNPagedLookasideList(
    l: *mut LookasideListEx,
    allocate: Option<AllocateFn>,
    free: Option<FreeFn>,
    flags: u32,
    size: usize,
    tag: u32,
    depth: u16,
) {
    require_irql("ExInitializeNPagedLookasideList", DISPATCH_LEVEL);
    require_depth_zero("ExInitializeNPagedLookasideList", depth);
    #[allow(clippy::cast_possible_wrap)] // POOL_TYPE bits
    let pool_type = flags as i32;
    if allocate.is_none() {
        pool::code_integrity_executable("ExInitializeNPagedLookasideList", pool_type, tag);
    }
    let a = allocate.unwrap_or(default_allocate) as usize;
    let f = free.unwrap_or(default_free) as usize;
    init_common(l, Flavour::NPaged, pool_type, size, tag, a, f);
}

/// ExDeleteNPagedLookasideList — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exdeletenpagedlookasidelist>.
unsafe extern "win64" fn ExDeleteNPagedLookasideList(l: *mut LookasideListEx) {
    require_irql("ExDeleteNPagedLookasideList", DISPATCH_LEVEL);
    delete_common(l, Flavour::NPaged, "ExDeleteNPagedLookasideList");
}

/// Sets every list's depth to 0 and frees its cached entries (and makes new lists start at
/// depth 0): every allocation then goes through the pool. Returns the entries freed.
#[must_use = "the number of cached entries freed"]
pub fn force_depth_zero() -> usize {
    let lists: Vec<(usize, Flavour)> = kernel::with(|k| {
        k.lookasides.depth_zero = true;
        k.lookasides.lists.iter().copied().collect()
    });
    lists
        .into_iter()
        .map(|(l, f)| {
            let list = l as *mut LookasideListEx;
            // SAFETY: a tracked, live list: its depth field is in bounds.
            let field = unsafe { &raw mut (*list).depth };
            // SAFETY: a naturally aligned u16 of a live list, which the driver's inline
            // allocation reads as such (review 18d: an atomic store).
            let depth = unsafe { std::sync::atomic::AtomicU16::from_ptr(field) };
            depth.store(0, std::sync::atomic::Ordering::Relaxed);
            drain(list, f)
        })
        .sum()
}

/// Lists made from now on keep no entries (depth 0), as under Driver Verifier (see
/// [`force_depth_zero`] for lists already made).
pub fn disable_caching() {
    kernel::with(|k| k.lookasides.depth_zero = true);
}

/// The lookaside and SLIST routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "ExpInterlockedPushEntrySList",
            ExpInterlockedPushEntrySList as *const () as usize,
        ),
        Export::function(
            "ExpInterlockedPopEntrySList",
            ExpInterlockedPopEntrySList as *const () as usize,
        ),
        Export::function(
            "ExpInterlockedFlushSList",
            ExpInterlockedFlushSList as *const () as usize,
        ),
        Export::function(
            "InterlockedPushEntrySList",
            ExpInterlockedPushEntrySList as *const () as usize,
        ),
        Export::function(
            "InterlockedPopEntrySList",
            ExpInterlockedPopEntrySList as *const () as usize,
        ),
        Export::function("ExQueryDepthSList", ExQueryDepthSList as *const () as usize),
        Export::function(
            "ExInitializeLookasideListEx",
            ExInitializeLookasideListEx as *const () as usize,
        ),
        Export::function(
            "ExDeleteLookasideListEx",
            ExDeleteLookasideListEx as *const () as usize,
        ),
        Export::function(
            "ExAllocateFromLookasideListEx",
            ExAllocateFromLookasideListEx as *const () as usize,
        ),
        Export::function(
            "ExFreeToLookasideListEx",
            ExFreeToLookasideListEx as *const () as usize,
        ),
        Export::function(
            "ExInitializeNPagedLookasideList",
            ExInitializeNPagedLookasideList as *const () as usize,
        ),
        Export::function(
            "ExDeleteNPagedLookasideList",
            ExDeleteNPagedLookasideList as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(16))]
    struct Aligned([u64; 2]);

    #[test]
    fn slist_push_pop_depth_and_flush() {
        let mut h = Aligned([0, 0]);
        let mut a = Aligned([0, 0]);
        let mut b = Aligned([0, 0]);
        let (hp, ap, bp) = (h.0.as_mut_ptr(), a.0.as_mut_ptr(), b.0.as_mut_ptr());
        // An aligned local header and aligned entries that outlive the list operations.
        // SAFETY: as said above.
        let push = |e| unsafe { ExpInterlockedPushEntrySList(hp, e) };
        // SAFETY: as above.
        let pop = || unsafe { ExpInterlockedPopEntrySList(hp) };
        // SAFETY: as above.
        let depth = || unsafe { ExQueryDepthSList(hp) };
        assert!(push(ap).is_null());
        assert_eq!(push(bp), ap);
        assert_eq!(depth(), 2);
        assert_eq!(pop(), bp);
        assert_eq!(depth(), 1);
        // SAFETY: as above.
        assert_eq!(unsafe { ExpInterlockedFlushSList(hp) }, ap);
        assert_eq!(depth(), 0);
        assert!(pop().is_null());
    }

    #[test]
    fn concurrent_pushes_and_pops_lose_nothing() {
        let h = Box::leak(Box::new(Aligned([0, 0])));
        let hp = h.0.as_mut_ptr() as usize;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let entries: Vec<&mut Aligned> = (0..2000)
                        .map(|_| Box::leak(Box::new(Aligned([0, 0]))))
                        .collect();
                    for e in entries {
                        // SAFETY: a live aligned header and a leaked aligned entry.
                        unsafe { ExpInterlockedPushEntrySList(hp as *mut u64, e.0.as_mut_ptr()) };
                        // SAFETY: as above.
                        let p = unsafe { ExpInterlockedPopEntrySList(hp as *mut u64) };
                        assert!(!p.is_null());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: the live header.
        assert_eq!(unsafe { ExQueryDepthSList(hp as *mut u64) }, 0);
    }

    #[test]
    fn lookaside_caches_up_to_depth_and_frees_everything_on_delete() {
        let l = new_list();
        let tag = u32::from_le_bytes(*b"LkTs");
        // SAFETY: a leaked, aligned list; default routines; PASSIVE_LEVEL.
        let s = unsafe { ExInitializeLookasideListEx(l, None, None, 0x200, 0, 48, tag, 0) };
        assert_eq!(s, STATUS_SUCCESS);
        let mine = |k: &kernel::Kernel| k.pool.blocks.values().filter(|b| b.tag == tag).count();
        // SAFETY: an initialised list.
        let blocks: Vec<*mut c_void> = (0..6)
            .map(|_| unsafe { ExAllocateFromLookasideListEx(l) })
            .collect();
        assert!(blocks.iter().all(|b| !b.is_null()));
        assert_eq!(kernel::with(|k| mine(k)), 6);
        for b in blocks {
            // SAFETY: entries of this list.
            unsafe { ExFreeToLookasideListEx(l, b) };
        }
        // Depth 4 (or 0 if another test forced it): the rest went back to pool.
        // SAFETY: the live list head.
        let cached = unsafe { ExQueryDepthSList(l.cast()) };
        assert!(cached <= 4);
        assert_eq!(kernel::with(|k| mine(k)), usize::from(cached));
        // SAFETY: an initialised list.
        unsafe { ExDeleteLookasideListEx(l) };
        assert_eq!(kernel::with(|k| mine(k)), 0);
        assert!(!kernel::with(|k| k
            .lookasides
            .lists
            .contains(&(l as usize, Flavour::Ex))));
    }

    /// Fresh, leaked, aligned storage for a list.
    fn new_list() -> *mut LookasideListEx {
        Box::leak(Box::new(LookasideListEx {
            list_head: [0, 0],
            depth: 0,
            maximum_depth: 0,
            total_allocates: 0,
            allocate_misses: 0,
            total_frees: 0,
            free_misses: 0,
            pool_type: 0,
            tag: 0,
            size: 0,
            allocate: 0,
            free: 0,
            list_entry: ListEntry {
                flink: std::ptr::null_mut(),
                blink: std::ptr::null_mut(),
            },
            last_total_allocates: 0,
            last_allocate_misses: 0,
            future: [0, 0],
        }))
    }

    /// The PoolType the last allocate routine call received.
    static SEEN_POOL_TYPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

    unsafe extern "win64" fn recording_allocate_ex(
        pool_type: i32,
        size: usize,
        tag: u32,
        _l: *mut LookasideListEx,
    ) -> *mut c_void {
        SEEN_POOL_TYPE.store(pool_type, std::sync::atomic::Ordering::SeqCst);
        pool::allocate(size, tag, false, "test AllocateEx").cast()
    }

    unsafe extern "win64" fn recording_allocate(
        pool_type: i32,
        size: usize,
        tag: u32,
    ) -> *mut c_void {
        SEEN_POOL_TYPE.store(pool_type, std::sync::atomic::Ordering::SeqCst);
        pool::allocate(size, tag, false, "test Allocate").cast()
    }

    /// Allocates one entry of `l` through its allocate routine (as the driver's inline
    /// ExAllocateFromNPagedLookasideList does for the NPaged flavour) and frees it again.
    fn seen_pool_type(l: *mut LookasideListEx, flavour: Flavour) -> i32 {
        SEEN_POOL_TYPE.store(-1, std::sync::atomic::Ordering::SeqCst);
        let e = match flavour {
            // SAFETY: an initialised list.
            Flavour::Ex => unsafe { ExAllocateFromLookasideListEx(l) },
            Flavour::NPaged => {
                // SAFETY: an initialised list, read whole (its PALLOCATE_FUNCTION and fields).
                let list = unsafe { &*l };
                // SAFETY: set at initialisation to a PALLOCATE_FUNCTION.
                let allocate = unsafe { std::mem::transmute::<usize, AllocateFn>(list.allocate) };
                // SAFETY: the list's own allocate routine with the list's type, size and tag.
                unsafe { allocate(list.pool_type, list.size as usize, list.tag) }
            }
        };
        assert!(!e.is_null());
        // SAFETY: a block from pool::allocate.
        unsafe { pool::free(e.cast(), None, "test") };
        SEEN_POOL_TYPE.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn initialisation_checks_flags_and_pool_type_and_passes_the_flags_on() {
        let tag = u32::from_le_bytes(*b"LkPt");
        let a = Some(recording_allocate_ex as AllocateFnEx);
        let l = new_list();
        let init = |l, flags, pool_type| {
            // SAFETY: leaked, aligned storage; PASSIVE_LEVEL.
            unsafe { ExInitializeLookasideListEx(l, a, None, pool_type, flags, 48, tag, 0) }
        };
        assert_eq!(
            init(l, 3, 0x200),
            STATUS_INVALID_PARAMETER_5,
            "the flags are mutually exclusive"
        );
        assert_eq!(
            init(l, 4, 0x200),
            STATUS_INVALID_PARAMETER_5,
            "an unknown flag"
        );
        assert_eq!(
            init(l, 0, 7),
            STATUS_INVALID_PARAMETER_4,
            "MaxPoolType is not a type"
        );
        assert_eq!(
            init(l, 0, 0x1234),
            STATUS_INVALID_PARAMETER_4,
            "not a POOL_TYPE"
        );
        for (flags, passed) in [(0, 0x200), (RAISE_ON_FAIL, 0x210), (FAIL_NO_RAISE, 0x208)] {
            let l = new_list();
            assert_eq!(init(l, flags, 0x200), STATUS_SUCCESS);
            assert_eq!(
                seen_pool_type(l, Flavour::Ex),
                passed,
                "Flags {flags}: the PoolType the allocate routine gets"
            );
            // SAFETY: an initialised list.
            unsafe { ExDeleteLookasideListEx(l) };
        }
        // The NPaged flavour: NonPagedPool | Flags.
        for flags in [0x200u32, 0x210, 0] {
            let l = new_list();
            // SAFETY: leaked, aligned storage; a custom allocator; PASSIVE_LEVEL.
            unsafe {
                ExInitializeNPagedLookasideList(
                    l,
                    Some(recording_allocate),
                    None,
                    flags,
                    48,
                    tag,
                    0,
                );
            }
            assert_eq!(
                seen_pool_type(l, Flavour::NPaged),
                flags as i32,
                "NPaged, Flags {flags:#x}"
            );
            // SAFETY: an initialised list.
            unsafe { ExDeleteNPagedLookasideList(l) };
        }
    }
}
