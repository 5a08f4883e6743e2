//! The images mapped into a process, for resolving stack frames to modules.
//!
//! Issue 16: what its load-image notifications said
//! (base, size, path, time), kept with the process record in load order, so that a frame of
//! a stack captured at an open resolves to `module+offset` while any key of the process is
//! reported, even after it exited. Windows sends no unmap notification: two modules may
//! cover the same addresses, and the one loaded last before an open is the one it ran.
//!
//! A module is one 64-byte block on its process's list, written under the process's lock,
//! charged to the process's share, and freed with the process record — or at the process's
//! exit, when it still holds keys and its list does not fit in the pool of exited processes'
//! leftovers (`Tracker::process_exited`: counted in `modules_dropped`, and its `lost_since`
//! set). A process keeps at most [`MAX_MODULES`]; loads past that are counted
//! (`modules_dropped`).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64};

use crate::names::NameEntry;
use crate::pool::BlockClass;

/// Size class of a module record.
pub const MODULE_CLASS: BlockClass = BlockClass::B64;
/// Most modules kept per process.
pub const MAX_MODULES: u32 = 4096;
/// What one module record costs its process's share (its block).
pub const MODULE_COST: u64 = crate::budget::pool_cost(MODULE_CLASS.size());

/// One mapped image.
pub struct Module {
    /// Next (later) module of the process.
    pub next: AtomicPtr<Self>,
    /// Base address.
    pub base: AtomicU64,
    /// Size in bytes.
    pub size: AtomicU64,
    /// When it was mapped.
    pub time: AtomicU64,
    /// Interned path (counted), or null.
    pub name: AtomicPtr<NameEntry>,
    /// [`protocol::modules::Module`] flags.
    pub flags: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Module>() <= 64);

/// Reads a module the caller keeps alive (its process's lock, or the process record it
/// belongs to while that cannot be freed).
#[must_use]
pub const fn module_of<'a>(m: NonNull<Module>) -> &'a Module {
    // SAFETY: modules are freed only with their process record, under its shard lock and
    // its own lock; every caller holds one of them.
    unsafe { m.as_ref() }
}
