//! The memory the tracker runs on: a pool of fixed-size blocks, in a few size classes.
//!
//! The driver implements [`Pool`] with one non-paged lookaside list per [`BlockClass`]
//! (`ExInitializeLookasideListEx(…, NonPagedPoolNx, class.size(), tag, …)`); tests implement
//! it with an accounting allocator that can fail any allocation. Every allocation may fail;
//! the tracker counts the failure and goes on.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;

/// The size classes of blocks. Every block is aligned to [`BLOCK_ALIGN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockClass {
    /// 64 bytes: (process, hive) records, short names.
    B64,
    /// 128 bytes: hive records, names.
    B128,
    /// 256 bytes: process records, names.
    B256,
    /// 512 bytes: unload-history entries, names.
    B512,
    /// 1 KiB: names.
    B1024,
    /// 2 KiB: names.
    B2048,
    /// 4 KiB: object slabs, directories, name hash buckets, the longest names.
    B4096,
}

/// Alignment of every block (what lookaside lists give on x64).
pub const BLOCK_ALIGN: usize = 16;

impl BlockClass {
    /// Every class, smallest first.
    pub const ALL: [Self; 7] = [
        Self::B64,
        Self::B128,
        Self::B256,
        Self::B512,
        Self::B1024,
        Self::B2048,
        Self::B4096,
    ];

    /// Block size in bytes.
    #[must_use]
    pub const fn size(self) -> usize {
        match self {
            Self::B64 => 64,
            Self::B128 => 128,
            Self::B256 => 256,
            Self::B512 => 512,
            Self::B1024 => 1024,
            Self::B2048 => 2048,
            Self::B4096 => 4096,
        }
    }

    /// Index of the class in [`BlockClass::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The smallest class holding `bytes`, if any.
    #[must_use]
    pub const fn for_size(bytes: usize) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].size() >= bytes {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// A source of fixed-size blocks.
///
/// # Safety
/// An implementation must return from [`Pool::alloc`] either `None` or a block of
/// `class.size()` bytes, aligned to [`BLOCK_ALIGN`], valid for reads and writes and not used
/// by anything else until it is passed back to [`Pool::free`] with the same class. It must
/// be callable from any thread concurrently.
pub unsafe trait Pool: Sync {
    /// Hands out one block of `class`, or `None` (which the tracker counts and survives).
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>>;

    /// Takes a block back.
    ///
    /// # Safety
    /// `block` came from [`Pool::alloc`] of this pool with the same `class` and is not used
    /// afterwards.
    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>);

    /// Hands out a block of exactly `bytes` bytes (16-byte aligned), for storage whose size
    /// varies (names): the driver takes it from pool directly, so nothing is lost to
    /// rounding up to a class. The default rounds up to the smallest class that holds it.
    fn alloc_bytes(&self, bytes: usize) -> Option<NonNull<u8>> {
        self.alloc(BlockClass::for_size(bytes)?)
    }

    /// Takes back a block from [`Pool::alloc_bytes`].
    ///
    /// # Safety
    /// `block` came from [`Pool::alloc_bytes`] of this pool with the same `bytes` and is not
    /// used afterwards.
    unsafe fn free_bytes(&self, bytes: usize, block: NonNull<u8>) {
        if let Some(class) = BlockClass::for_size(bytes) {
            // SAFETY: the default `alloc_bytes` took it from this class.
            unsafe { self.free(class, block) };
        }
    }
}

// SAFETY: forwards to `P`, which upholds the contract.
unsafe impl<P: Pool> Pool for &P {
    fn alloc(&self, class: BlockClass) -> Option<NonNull<u8>> {
        (**self).alloc(class)
    }
    unsafe fn free(&self, class: BlockClass, block: NonNull<u8>) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { (**self).free(class, block) }
    }
    fn alloc_bytes(&self, bytes: usize) -> Option<NonNull<u8>> {
        (**self).alloc_bytes(bytes)
    }
    unsafe fn free_bytes(&self, bytes: usize, block: NonNull<u8>) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { (**self).free_bytes(bytes, block) }
    }
}

/// Allocates a block of `class` and moves `value` into it.
pub(crate) fn alloc_init<P: Pool, T>(pool: &P, class: BlockClass, value: T) -> Option<NonNull<T>> {
    if size_of::<T>() > class.size() || align_of::<T>() > BLOCK_ALIGN {
        return None; // a layout bug, caught by the tests of every type's class
    }
    let p = pool.alloc(class)?.cast::<T>();
    // SAFETY: the pool contract gives a block of `class.size() >= size_of::<T>()` bytes,
    // aligned to 16 >= align_of::<T>(), owned by us alone.
    unsafe { p.write(value) };
    Some(p)
}

/// Gives a typed block back. The types stored in blocks hold only atomics and raw pointers,
/// so nothing needs dropping.
///
/// # Safety
/// `p` came from [`alloc_init`] with `class` on `pool` and is not used afterwards.
pub(crate) unsafe fn free_block<P: Pool, T>(pool: &P, class: BlockClass, p: NonNull<T>) {
    // SAFETY: the caller guarantees the block's origin and that it is dead.
    unsafe { pool.free(class, p.cast()) }
}
