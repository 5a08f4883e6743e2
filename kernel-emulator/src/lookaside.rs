//! Lookaside lists and interlocked singly linked lists: the real x64 SLIST_HEADER format
//! (Depth:16 | Sequence:48, NextEntry in the second quadword) updated with `lock cmpxchg16b`,
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

use crate::bugcheck::{require_irql, verifier_violation};
use crate::cpu::DISPATCH_LEVEL;
use crate::exports::Export;
use crate::kernel;
use crate::layout::ListEntry;
use crate::pool;
use crate::status::{
    NtStatus, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER_5, STATUS_SUCCESS,
};

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
    crate::calls::count(crate::calls::Call::LookasidePush);
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
    crate::calls::count(crate::calls::Call::LookasidePop);
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
/// Flags beyond EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL | FAIL_NO_RAISE are
/// STATUS_INVALID_PARAMETER_5; NULL routines mean the default pool routines. IRQL <= DISPATCH.
#[allow(clippy::too_many_arguments)] // the documented signature
unsafe extern "win64" fn ExInitializeLookasideListEx(
    l: *mut LookasideListEx,
    allocate: Option<AllocateFnEx>,
    free: Option<FreeFnEx>,
    pool_type: i32,
    flags: u32,
    size: usize,
    tag: u32,
    _depth: u16,
) -> NtStatus {
    require_irql("ExInitializeLookasideListEx", DISPATCH_LEVEL);
    if flags & !3 != 0 {
        return STATUS_INVALID_PARAMETER_5;
    }
    if kernel::should_fail("ExInitializeLookasideListEx", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let a = allocate.unwrap_or(default_allocate_ex) as usize;
    let f = free.unwrap_or(default_free_ex) as usize;
    init_common(l, Flavour::Ex, pool_type, size, tag, a, f);
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
/// the older API (no status; NULL routines mean the default pool routines). IRQL <= DISPATCH.
unsafe extern "win64" fn ExInitializeNPagedLookasideList(
    l: *mut LookasideListEx,
    allocate: Option<AllocateFn>,
    free: Option<FreeFn>,
    _flags: u32,
    size: usize,
    tag: u32,
    _depth: u16,
) {
    require_irql("ExInitializeNPagedLookasideList", DISPATCH_LEVEL);
    let a = allocate.unwrap_or(default_allocate) as usize;
    let f = free.unwrap_or(default_free) as usize;
    init_common(l, Flavour::NPaged, 0x200, size, tag, a, f);
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
            // SAFETY: a tracked, live list.
            unsafe { (*list).depth = 0 };
            drain(list, f)
        })
        .sum()
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
        let list = Box::leak(Box::new(LookasideListEx {
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
        }));
        let l: *mut LookasideListEx = list;
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
}
