//! Pool: ExAllocatePool2 / ExAllocatePoolWithTag / ExFreePool / ExFreePoolWithTag with every
//! block tracked by tag, routine and operation (for the leak report at unload, like
//! bugcheck 0xC4/0x62), fault injection, and a special-pool mode: each block ends against a
//! PROT_NONE guard page, the slack before it is checked on free (bugcheck 0xC1) and freed
//! pages stay PROT_NONE, so overruns and use-after-free fault (bugcheck 0x50).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::c_void;
use std::sync::Mutex;

use crate::machine::cpu::{APC_LEVEL, DISPATCH_LEVEL};
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::verifier::bugcheck::{bugcheck, emit_stderr, require_irql, verifier_violation};

const PAGE: usize = 4096;
/// Fill of special-pool slack (between the block end and the guard page).
const SLACK_FILL: u8 = 0xA7;
/// Fill of uninitialised (POOL_FLAG_UNINITIALIZED / ExAllocatePoolWithTag) blocks.
pub const UNINITIALIZED_FILL: u8 = 0xBD;
/// Fill of freed ordinary blocks.
const FREED_FILL: u8 = 0xFE;

/// One outstanding block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Requested size.
    pub size: usize,
    /// Pool tag.
    pub tag: u32,
    /// Allocating routine.
    pub routine: &'static str,
    /// Driver operation in progress at allocation.
    pub operation: String,
    /// Special-pool mapping (base, length) if allocated in special pool.
    special: Option<(usize, usize)>,
}

/// Pool bookkeeping.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Outstanding blocks by address.
    pub blocks: HashMap<usize, Block>,
    /// Successful allocations.
    pub allocations: u64,
    /// Frees.
    pub frees: u64,
    /// Special pool on.
    pub special: bool,
}

impl PoolState {
    /// Outstanding blocks, as leak lines (sorted).
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .blocks
            .iter()
            .map(|(p, b)| {
                format!(
                    "pool block {p:#x}: {} bytes, tag '{}', from {} during {}",
                    b.size,
                    tag_text(b.tag),
                    b.routine,
                    b.operation
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// A freed or live special-pool region, for describing faults.
#[derive(Clone, Copy)]
struct Region {
    base: usize,
    len: usize,
    block: usize,
    size: usize,
    tag: u32,
    freed: bool,
}

/// Special-pool regions by base address: live blocks and the quarantined freed ones.
static REGIONS: Mutex<BTreeMap<usize, Region>> = Mutex::new(BTreeMap::new());

/// Freed special-pool blocks stay mapped inaccessible (so a use after free faults) until this
/// many newer ones were freed; then the oldest is unmapped. Unbounded quarantine ran out of
/// mappings (`vm.max_map_count`) in a million-operation soak. Driver Verifier's special pool
/// is bounded too: freed pages are reused once it runs out.
const QUARANTINE: usize = 16_384;

/// The quarantined regions, oldest first.
static QUARANTINED: Mutex<VecDeque<usize>> = Mutex::new(VecDeque::new());

/// Explains a fault address that hits a special-pool guard page or a freed block (used by
/// the trap handler; never blocks).
#[must_use]
pub fn describe_fault_address(addr: usize) -> Option<String> {
    let regions = REGIONS.try_lock().ok()?;
    let found = regions
        .range(..=addr)
        .next_back()
        .map(|(_, r)| *r)
        .filter(|r| addr < r.base + r.len);
    drop(regions);
    let r = found?;
    let tag = tag_text(r.tag);
    Some(if r.freed {
        format!(
            "special pool: access to freed block {:#x} ({} bytes, tag '{tag}'): use after free",
            r.block, r.size
        )
    } else {
        format!(
            "special pool: access {} bytes past the end of block {:#x} ({} bytes, tag '{tag}'): overrun",
            addr - (r.block + r.size),
            r.block,
            r.size
        )
    })
}

/// A pool tag as text ('rust').
#[must_use]
pub fn tag_text(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

fn special_alloc(size: usize) -> (usize, (usize, usize)) {
    let pages = size.max(1).div_ceil(PAGE);
    let len = (pages + 1) * PAGE;
    // SAFETY: a fresh anonymous mapping.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(m != libc::MAP_FAILED, "special pool: mmap failed");
    let m = m as usize;
    // SAFETY: the last page of the mapping just made becomes the guard page.
    unsafe { libc::mprotect((m + pages * PAGE) as *mut c_void, PAGE, libc::PROT_NONE) };
    // SAFETY: the data pages of the mapping are writable.
    unsafe { std::ptr::write_bytes(m as *mut u8, SLACK_FILL, pages * PAGE) };
    // x64 pool blocks are 16-byte aligned: the block ends at most 15 bytes before the guard.
    let p = (m + pages * PAGE - size) & !15;
    (p, (m, len))
}

/// Allocates `size` bytes of pool for the driver (null on injected failure).
///
/// # Panics
/// If the host itself runs out of memory.
pub fn allocate(size: usize, tag: u32, zero: bool, routine: &'static str) -> *mut u8 {
    if kernel::should_fail(routine, true) {
        return std::ptr::null_mut();
    }
    let special = kernel::with(|k| k.pool.special);
    let (p, mapping) = if special {
        let (p, m) = special_alloc(size);
        (p as *mut u8, Some(m))
    } else {
        let layout = std::alloc::Layout::from_size_align(size.max(1), 16).expect("pool layout");
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null(), "host out of memory");
        (p, None)
    };
    // SAFETY: `p` is valid for `size` bytes.
    unsafe { std::ptr::write_bytes(p, if zero { 0 } else { UNINITIALIZED_FILL }, size) };
    if let Some((base, len)) = mapping {
        REGIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                base,
                Region {
                    base,
                    len,
                    block: p as usize,
                    size,
                    tag,
                    freed: false,
                },
            );
    }
    let operation = crate::verifier::bugcheck::operation();
    kernel::with(|k| {
        k.pool.allocations += 1;
        k.pool.blocks.insert(
            p as usize,
            Block {
                size,
                tag,
                routine,
                operation,
                special: mapping,
            },
        );
    });
    p
}

/// Frees a block; a pointer that is not an outstanding block is BAD_POOL_CALLER (0xC2).
///
/// # Panics
/// If the block's layout cannot be rebuilt (never for a tracked block).
///
/// # Safety
/// `p` is whatever the driver passed; it is dereferenced only if the model tracks it.
pub unsafe fn free(p: *mut u8, tag: Option<u32>, routine: &'static str) {
    let removed = kernel::with(|k| {
        let b = k.pool.blocks.remove(&(p as usize));
        if b.is_some() {
            k.pool.frees += 1;
        }
        b
    });
    let Some(block) = removed else {
        emit_stderr(&format!(
            "*** kernel-emulator: {routine}({p:p}): not an outstanding pool block (double free or foreign pointer)\n"
        ));
        // Learn, Bug Check 0xC2: "0x07 | Reserved | Pool header contents | Address of the
        // block of pool being freed" (the model keeps no header contents).
        bugcheck(0xC2, 0x07, 0, 0, p as usize);
    };
    if let Some(t) = tag.filter(|&t| t != block.tag) {
        emit_stderr(&format!(
            "*** kernel-emulator: {routine}({p:p}, '{}') but the block was allocated with tag '{}'\n",
            tag_text(t),
            tag_text(block.tag)
        ));
        // Learn, Bug Check 0xC2: "0x0A | Address of pool | Allocator's tag | Tag being used
        // in the attempted free" (fidelity audit 18b, F6: the two tags were swapped).
        bugcheck(0xC2, 0x0A, p as usize, block.tag as usize, t as usize);
    }
    crate::nt::ke::timer::check_free(p as usize, block.size);
    crate::nt::ke::sync::forget_order(p as usize, block.size);
    if let Some((base, len)) = block.special {
        let end = p as usize + block.size;
        let guard = base + len - PAGE;
        // SAFETY: [end, guard) is the slack inside the block's still-mapped data pages.
        let slack = unsafe { std::slice::from_raw_parts(end as *const u8, guard - end) };
        if slack.iter().any(|&b| b != SLACK_FILL) {
            emit_stderr(&format!(
                "*** kernel-emulator: special pool: write past the end of {p:p} ({} bytes, tag '{}')\n",
                block.size,
                tag_text(block.tag)
            ));
            bugcheck(0xC1, p as usize, block.size, 0, 0x24);
        }
        // SAFETY: quarantines the block's own mapping: later accesses fault.
        unsafe { libc::mprotect(base as *mut c_void, len, libc::PROT_NONE) };
        let mut regions = REGIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = regions.get_mut(&base) {
            r.freed = true;
        }
        let mut quarantined = QUARANTINED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        quarantined.push_back(base);
        if quarantined.len() > QUARANTINE
            && let Some(oldest) = quarantined.pop_front()
            && let Some(r) = regions.remove(&oldest)
        {
            // SAFETY: the oldest quarantined mapping, made by `special_alloc`, no longer
            // tracked anywhere: nothing may use it.
            unsafe { libc::munmap(r.base as *mut c_void, r.len) };
        }
    } else {
        // SAFETY: `p` is the live block of `block.size` bytes just removed from tracking.
        unsafe { std::ptr::write_bytes(p, FREED_FILL, block.size) };
        let layout =
            std::alloc::Layout::from_size_align(block.size.max(1), 16).expect("pool layout");
        // SAFETY: allocated by `allocate` with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
    }
}

/// POOL_FLAG_UNINITIALIZED.
const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// POOL_FLAG_NON_PAGED.
const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// POOL_FLAG_NON_PAGED_EXECUTE.
const POOL_FLAG_NON_PAGED_EXECUTE: u64 = 0x80;
/// POOL_FLAG_PAGED.
const POOL_FLAG_PAGED: u64 = 0x100;

/// POOL_NX_ALLOCATION (wdm.h, 512): the NX bit of a POOL_TYPE (NonPagedPoolNx = 512).
pub const POOL_NX_ALLOCATION: i32 = 0x200;

/// Whether `pool_type` asks for executable memory: nonpaged (even base types: paged types are
/// odd, as `ExAllocatePoolWithTag` below takes them) without POOL_NX_ALLOCATION. Learn,
/// POOL_TYPE: "System memory allocated with the NonPagedPool pool type is executable".
#[must_use]
pub const fn is_executable(pool_type: i32) -> bool {
    pool_type & 1 == 0 && pool_type & POOL_NX_ALLOCATION == 0
}

/// Driver Verifier's Code Integrity Checks, which the hivetrack VM kit turns on: a request
/// for an executable pool type stops with bug check 0xC4, P1 0x2000, P3 the pool type, P4
/// the tag — Learn, devtest "Code Integrity Checks" and "Bug Check 0xC4" (0x2000: "The caller
/// specified an executable pool type. (Expected: NonPagedPoolNx)"). P2 (the address in the
/// driver's code) is not known here: 0.
pub fn code_integrity_executable(routine: &str, pool_type: i32, tag: u32) {
    if !is_executable(pool_type) {
        return;
    }
    crate::verifier::bugcheck::emit_stderr(&format!(
        "*** kernel-emulator verifier: code integrity: {routine} specified an executable pool \
         type {pool_type:#x} (tag {tag:#x}; expected NonPagedPoolNx)\n"
    ));
    #[allow(clippy::cast_sign_loss)] // the POOL_TYPE bits as the bug check parameter
    crate::verifier::bugcheck::bugcheck(0xC4, 0x2000, 0, pool_type as u32 as usize, tag as usize);
}

/// ExAllocatePool2 — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatepool2>:
/// zeroed unless POOL_FLAG_UNINITIALIZED; exactly one pool type flag; paged pool at
/// IRQL <= APC_LEVEL, non-paged at <= DISPATCH_LEVEL; NULL on failure.
/// POOL_FLAG_NON_PAGED_EXECUTE asks for executable memory: Verifier's code integrity stop
/// ([`code_integrity_executable`]; Learn, "Implement memory integrity compatible code": "Uses
/// NX APIs/flags for memory allocation").
unsafe extern "win64" fn ExAllocatePool2(flags: u64, size: usize, tag: u32) -> *mut c_void {
    crate::verifier::calls::count(crate::verifier::calls::Call::PoolAlloc);
    let types = flags & (POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE | POOL_FLAG_PAGED);
    if types.count_ones() != 1 {
        verifier_violation(&format!(
            "ExAllocatePool2 flags {flags:#x}: exactly one of POOL_FLAG_NON_PAGED, \
             POOL_FLAG_NON_PAGED_EXECUTE, POOL_FLAG_PAGED is required"
        ));
    }
    require_irql(
        "ExAllocatePool2",
        if types == POOL_FLAG_PAGED {
            APC_LEVEL
        } else {
            DISPATCH_LEVEL
        },
    );
    if tag == 0 {
        verifier_violation("ExAllocatePool2 with pool tag 0");
    }
    if types == POOL_FLAG_NON_PAGED_EXECUTE {
        // Executable non-paged memory: NonPagedPoolExecute (0) as the bug check's pool type.
        code_integrity_executable("ExAllocatePool2", 0, tag);
    }
    allocate(
        size,
        tag,
        flags & POOL_FLAG_UNINITIALIZED == 0,
        "ExAllocatePool2",
    )
    .cast()
}

/// ExAllocatePoolWithTag — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatepoolwithtag>:
/// contents uninitialised; odd pool types are paged (IRQL <= APC_LEVEL). An executable pool
/// type (`NonPagedPool` is `NonPagedPoolExecute`) is Verifier's code integrity stop
/// ([`code_integrity_executable`]; Learn, "Implement memory integrity compatible code" lists
/// this routine among those whose callers must ask for `NonPagedPoolNx`).
unsafe extern "win64" fn ExAllocatePoolWithTag(
    pool_type: i32,
    size: usize,
    tag: u32,
) -> *mut c_void {
    crate::verifier::calls::count(crate::verifier::calls::Call::PoolAlloc);
    require_irql(
        "ExAllocatePoolWithTag",
        if pool_type & 1 != 0 {
            APC_LEVEL
        } else {
            DISPATCH_LEVEL
        },
    );
    code_integrity_executable("ExAllocatePoolWithTag", pool_type, tag);
    allocate(size, tag, false, "ExAllocatePoolWithTag").cast()
}

/// ExFreePool — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exfreepool>.
unsafe extern "win64" fn ExFreePool(p: *mut c_void) {
    require_irql("ExFreePool", DISPATCH_LEVEL);
    // SAFETY: ExFreePool's contract; `free` checks the pointer against the tracked blocks.
    unsafe { free(p.cast(), None, "ExFreePool") };
}

/// ExFreePoolWithTag — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-exfreepoolwithtag>:
/// the tag must match the allocation's (BAD_POOL_CALLER 0x0A otherwise).
unsafe extern "win64" fn ExFreePoolWithTag(p: *mut c_void, tag: u32) {
    require_irql("ExFreePoolWithTag", DISPATCH_LEVEL);
    // SAFETY: as for ExFreePool.
    unsafe { free(p.cast(), Some(tag), "ExFreePoolWithTag") };
}

/// The pool routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("ExAllocatePool2", ExAllocatePool2 as *const () as usize),
        Export::function(
            "ExAllocatePoolWithTag",
            ExAllocatePoolWithTag as *const () as usize,
        ),
        Export::function("ExFreePool", ExFreePool as *const () as usize),
        Export::function("ExFreePoolWithTag", ExFreePoolWithTag as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_print_as_text() {
        assert_eq!(tag_text(u32::from_le_bytes(*b"rust")), "rust");
        assert_eq!(tag_text(0x0001_4142), "BA..");
    }

    #[test]
    fn special_pool_blocks_end_before_the_guard_page() {
        for size in [1usize, 15, 16, 100, 4096, 5000] {
            let (p, (base, len)) = special_alloc(size);
            assert_eq!(p % 16, 0);
            assert!(p + size <= base + len - PAGE);
            assert!(base + len - PAGE - (p + size) < 16, "slack for {size}");
            // SAFETY: unmapping the test's own mapping.
            unsafe { libc::munmap(base as *mut c_void, len) };
        }
    }
}
