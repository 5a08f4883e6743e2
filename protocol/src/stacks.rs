//! The stacks page: the distinct user-mode stacks captured at opens of tracked keys.
//!
//! Issue 16. A key record of a holders page names its stack by id
//! ([`crate::holders::HolderKey::stack`]); stacks are shared by every key opened from the
//! same code path.
//!
//! Prefix: stacks not stored so far u64 (no memory, or the table full: those keys are
//! reported with [`crate::holders::HolderKey::STACK_DROPPED`]). Record: id u32, frame count
//! u16 (1..=[`MAX_FRAMES`]), flags u16 ([`StackRecord::TRUNCATED`]), tracked keys opened
//! from it u32, reserved u32, then the frames: user-mode return addresses, innermost first,
//! u64 each. Addresses are the opening process's user-mode addresses: resolve them against
//! that process's modules ([`crate::modules`]), never a kernel address.

use crate::capture::MAX_FRAMES;
use crate::page::{Codec, DroppedPrefix, PageKind};
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// The stacks page's prefix: stacks captured but not stored so far.
pub type StacksPrefix = DroppedPrefix;

/// One stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRecord {
    /// Its id (never 0).
    pub id: u32,
    /// [`StackRecord::TRUNCATED`].
    pub flags: u16,
    /// Tracked keys opened from it now.
    pub uses: u32,
    /// Frames in use.
    pub len: u16,
    /// Return addresses, innermost first; `frames[len..]` are zero.
    pub frames: [u64; MAX_FRAMES],
}

impl StackRecord {
    /// The stack was deeper than [`MAX_FRAMES`]: outer frames were not kept.
    pub const TRUNCATED: u16 = 1;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u16 = 1;

    /// The frames in use.
    #[must_use]
    pub fn frames(&self) -> &[u64] {
        &self.frames[..usize::from(self.len).min(MAX_FRAMES)]
    }
}

impl Codec<'_> for StackRecord {
    fn encoded_len(&self) -> usize {
        16 + 8 * self.frames().len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(self.id)?;
        w.u16(self.len)?;
        w.u16(self.flags)?;
        w.u32(self.uses)?;
        w.zeros(4)?;
        for &f in self.frames() {
            w.u64(f)?;
        }
        Ok(())
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        if id == 0 {
            return Err(DecodeError::InvalidField { field: "stack id" });
        }
        let len = r.u16()?;
        if len == 0 || usize::from(len) > MAX_FRAMES {
            return Err(DecodeError::InvalidField {
                field: "frame count",
            });
        }
        let flags = r.u16()?;
        if flags & !Self::KNOWN_FLAGS != 0 {
            return Err(DecodeError::InvalidField {
                field: "stack flags",
            });
        }
        let uses = r.u32()?;
        r.zeros(4)?;
        let mut frames = [0u64; MAX_FRAMES];
        for f in frames.iter_mut().take(usize::from(len)) {
            *f = r.u64()?;
        }
        Ok(Self {
            id,
            flags,
            uses,
            len,
            frames,
        })
    }
}

/// The stacks page ([`MessageKind::StacksPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Stacks;

impl PageKind for Stacks {
    const KIND: MessageKind = MessageKind::StacksPage;
    type Prefix<'a> = StacksPrefix;
    type Record<'a> = StackRecord;
}
