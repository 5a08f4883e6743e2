//! The links of a holding's key list: a record of the tracker's chunks or none, by
//! construction.
//!
//! A holding lists its records by address (issue 14), and [`crate::Tracker`] follows those
//! addresses without a check on the hot path. That is sound only if a link never holds
//! anything but a record's address or null, so the link is a type whose value can only be
//! made from a `&ObjRecord` ([`RecLink::to`]) or be [`RecLink::NONE`] (review 19c, A2):
//! records are made only inside a chunk ([`crate::objects`] writes them in place; the type
//! has no public constructor and is not `Clone`), and chunks are freed only when the tracker
//! is dropped, so a link read from a record or holding of a tracker names live,
//! initialised memory for as long as that tracker is borrowed.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use crate::objects::ObjRecord;

/// A link's value: a record's address or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecLink(*mut ObjRecord);

impl RecLink {
    /// No record.
    pub const NONE: Self = Self(ptr::null_mut());

    /// A link to `rec`.
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    pub const fn to(rec: &ObjRecord) -> Self {
        Self(ptr::from_ref(rec).cast_mut())
    }

    /// Whether it names no record.
    pub const fn is_none(self) -> bool {
        self.0.is_null()
    }

    /// The record's address, for following it ([`crate::Tracker`]'s `at`).
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    pub const fn target(self) -> Option<NonNull<ObjRecord>> {
        NonNull::new(self.0)
    }
}

/// A link field (a record's `next` or `prev`, a holding's `head` or `tail`): holds only
/// [`RecLink`]s.
pub struct Link(AtomicPtr<ObjRecord>);

impl Link {
    /// An empty link.
    pub const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// Its value. Links are written and read under the owning process's lock, so relaxed.
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    pub fn load(&self) -> RecLink {
        RecLink(self.0.load(Relaxed))
    }

    /// Sets it.
    #[inline(always)]
    #[allow(
        clippy::inline_always,
        reason = "hot path: a call's register saves cost more than its body (issue 14)"
    )]
    pub fn store(&self, link: RecLink) {
        self.0.store(link.0, Relaxed);
    }
}
