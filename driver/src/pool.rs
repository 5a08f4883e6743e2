//! The driver's one way to get memory: tagged, fallible, non-paged, non-executable pool.
//!
//! `ExAllocatePool2(POOL_FLAG_NON_PAGED)` where the system has it (Windows 10 2004+; it zeroes
//! and never hands out executable memory), else `ExAllocatePoolWithTag(NonPagedPoolNx)` and an
//! explicit zeroing. Every block carries [`POOL_TAG`] and is freed with
//! `ExFreePoolWithTag(…, POOL_TAG)`, so Driver Verifier's pool tracking attributes every byte to
//! hivetrack and a leak at unload names it. A failure returns `None`: callers count it and go
//! on (Driver Verifier's low-resources simulation fails about 6% of these).

use core::ptr::NonNull;

use wdk_sys::{_POOL_TYPE::NonPagedPoolNx, ntddk::ExFreePoolWithTag};

use crate::{ffi::ExAllocatePoolWithTag, routines};

/// hivetrack's pool tag, `HvTk` as `!pool` and poolmon show it.
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"HvTk");

/// `POOL_FLAG_NON_PAGED` (docs: `POOL_FLAGS`): non-paged, non-executable.
const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;

/// Allocates `size` zeroed bytes of non-paged pool, or `None`. Callable at IRQL <=
/// `DISPATCH_LEVEL`.
#[must_use]
pub fn alloc_zeroed(size: usize) -> Option<NonNull<u8>> {
    if size == 0 {
        return None;
    }
    if let Some(allocate) = routines::ex_allocate_pool2() {
        // ExAllocatePool2 zeroes the block it returns.
        // SAFETY: a documented call with a valid flag set, size and tag.
        let p = unsafe { allocate(POOL_FLAG_NON_PAGED, size, POOL_TAG) };
        return NonNull::new(p.cast());
    }
    // SAFETY: a documented call; NonPagedPoolNx exists on every supported Windows.
    let raw = unsafe { ExAllocatePoolWithTag(NonPagedPoolNx, size, POOL_TAG) };
    let p = NonNull::new(raw.cast::<u8>())?;
    // SAFETY: the block is `size` bytes, freshly allocated and ours alone.
    unsafe { p.as_ptr().write_bytes(0, size) };
    Some(p)
}

/// Frees a block from [`alloc_zeroed`].
///
/// # Safety
/// `block` came from [`alloc_zeroed`] and is not used afterwards.
pub unsafe fn free(block: NonNull<u8>) {
    // SAFETY: per the contract the block is ours, allocated with POOL_TAG.
    unsafe { ExFreePoolWithTag(block.as_ptr().cast(), POOL_TAG) };
}
