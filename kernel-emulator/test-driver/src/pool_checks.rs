//! Pool and lookaside requests the kernel must judge (IOCTL_POOL_CHECK, `argument` picks
//! one of [`Case`]): the documented refusals of `ExInitializeLookasideListEx`, a correct
//! list's round trip, and the requests Driver Verifier stops (a nonzero Depth, FAIL_NO_RAISE
//! with the default allocator, executable pool through either lookaside flavour,
//! `ExAllocatePoolWithTag` or `ExAllocatePool2`).

use core::{ffi::c_void, mem::MaybeUninit};

use wdk_sys::{
    _POOL_TYPE::{NonPagedPool, NonPagedPoolNx},
    EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE, EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL,
    LOOKASIDE_LIST_EX, NPAGED_LOOKASIDE_LIST, NTSTATUS, POOL_TYPE, STATUS_SUCCESS,
    ntddk::{
        ExAllocatePool2, ExDeleteLookasideListEx, ExDeleteNPagedLookasideList, ExFreePool,
        ExInitializeLookasideListEx, ExInitializeNPagedLookasideList,
    },
};

unsafe extern "system" {
    /// `ExAllocatePoolWithTag` (Learn): not bound by wdk-sys, declared with its prototype.
    fn ExAllocatePoolWithTag(pool_type: i32, number_of_bytes: usize, tag: u32) -> *mut c_void;
}

/// The tag of everything allocated here.
const TAG: u32 = u32::from_le_bytes(*b"kmPC");
/// POOL_FLAG_NON_PAGED_EXECUTE (wdm.h; not bound by wdk-sys).
const POOL_FLAG_NON_PAGED_EXECUTE: u64 = 0x80;
/// Not a POOL_TYPE member.
const NOT_A_POOL_TYPE: POOL_TYPE = 0x77;

/// The lists, 16-byte aligned non-paged storage that does not move (the documented needs).
#[repr(C, align(16))]
struct Lists {
    ex: MaybeUninit<LOOKASIDE_LIST_EX>,
    npaged: MaybeUninit<NPAGED_LOOKASIDE_LIST>,
}

/// Initialises an Ex list in `lists`: returns its status.
fn init_ex(lists: &mut Lists, pool_type: POOL_TYPE, flags: u32, depth: u16) -> NTSTATUS {
    // SAFETY: `ex` is writable, aligned storage that lives until the caller deletes the list;
    // NULL routines mean the defaults (Learn, ExInitializeLookasideListEx).
    unsafe {
        ExInitializeLookasideListEx(
            lists.ex.as_mut_ptr(),
            None,
            None,
            pool_type,
            flags,
            64,
            TAG,
            depth,
        )
    }
}

/// What IOCTL_POOL_CHECK does for `case`: `[status or 0, 1 when a block was had, 0, 0]`.
/// The stops do not return.
pub fn request(case: u64) -> [u64; 4] {
    let mut lists = Lists {
        ex: MaybeUninit::uninit(),
        npaged: MaybeUninit::uninit(),
    };
    let status = |s: NTSTATUS| u64::from(s.cast_unsigned());
    match case {
        // Both flags at once: STATUS_INVALID_PARAMETER_5 ("mutually exclusive").
        0 => [
            status(init_ex(
                &mut lists,
                NonPagedPoolNx,
                EX_LOOKASIDE_LIST_EX_FLAGS_RAISE_ON_FAIL | EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE,
                0,
            )),
            0,
            0,
            0,
        ],
        // Not a pool type: STATUS_INVALID_PARAMETER_4.
        1 => [status(init_ex(&mut lists, NOT_A_POOL_TYPE, 0, 0)), 0, 0, 0],
        // A correct list (NonPagedPoolNx, no flags, Depth 0): initialised and deleted.
        2 => {
            let s = init_ex(&mut lists, NonPagedPoolNx, 0, 0);
            if s == STATUS_SUCCESS {
                // SAFETY: the list was initialised just above and is not used after this.
                unsafe { ExDeleteLookasideListEx(lists.ex.as_mut_ptr()) };
            }
            [status(s), 0, 0, 0]
        }
        // Depth is reserved, "Always set this parameter to zero": a verifier stop.
        3 => [status(init_ex(&mut lists, NonPagedPoolNx, 0, 8)), 0, 0, 0],
        // FAIL_NO_RAISE with the default allocator: undefined, a verifier stop.
        4 => [
            status(init_ex(
                &mut lists,
                NonPagedPoolNx,
                EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE,
                0,
            )),
            0,
            0,
            0,
        ],
        // Executable default-allocator Ex list: code integrity 0x2000.
        5 => [status(init_ex(&mut lists, NonPagedPool, 0, 0)), 0, 0, 0],
        // Executable NPaged list (no POOL_NX_ALLOCATION in Flags): code integrity 0x2000.
        6 => {
            // SAFETY: `npaged` is writable aligned storage; NULL routines mean the defaults.
            unsafe {
                ExInitializeNPagedLookasideList(
                    lists.npaged.as_mut_ptr(),
                    None,
                    None,
                    0,
                    64,
                    TAG,
                    0,
                );
            }
            // SAFETY: initialised just above (if the kernel let it be).
            unsafe { ExDeleteNPagedLookasideList(lists.npaged.as_mut_ptr()) };
            [0; 4]
        }
        // ExAllocatePoolWithTag(NonPagedPool): code integrity 0x2000.
        7 => {
            // SAFETY: a plain allocation request; the block is freed below.
            let p = unsafe { ExAllocatePoolWithTag(NonPagedPool, 64, TAG) };
            free(p)
        }
        // ExAllocatePool2(POOL_FLAG_NON_PAGED_EXECUTE): code integrity 0x2000.
        8 => {
            // SAFETY: a plain allocation request; the block is freed below.
            let p = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED_EXECUTE, 64, TAG) };
            free(p)
        }
        _ => [u64::MAX, 0, 0, 0],
    }
}

/// Frees `p` if it is a block: `[0, 1 when it was, 0, 0]`.
fn free(p: *mut c_void) -> [u64; 4] {
    if p.is_null() {
        return [0; 4];
    }
    // SAFETY: `p` came from the pool just now and is freed once.
    unsafe { ExFreePool(p) };
    [0, 1, 0, 0]
}
