//! The processes page: every process the driver knows, in its process table's walk order
//! (clients rank them; the CLI by open keys, most first, ties by pid).
//!
//! No prefix. Record: pid u64, start key u64, open keys u64, hives held u32, flags u32,
//! image (2+2n). The cursor is a process key in that order, which does not move when counts
//! do: across pages, a process that exists throughout comes exactly once, each record's
//! counts read at its own time.

use crate::holders::decode_flags;
use crate::page::{Codec, NoPrefix, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// One process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessRecord<'a> {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Tracked key objects it opened that still exist.
    pub open_keys: u64,
    /// Hives it holds keys in.
    pub hives: u32,
    /// [`ProcessRecord::EXITED`], image flags.
    pub flags: u32,
    /// Image path (empty when unknown).
    pub image: Text<'a>,
}

impl ProcessRecord<'_> {
    /// The process has exited.
    pub const EXITED: u32 = 1;
    /// The image path is cut.
    pub const IMAGE_TRUNCATED: u32 = 4;
    /// The image path is not known.
    pub const IMAGE_MISSING: u32 = 8;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 13;
}

impl<'a> Codec<'a> for ProcessRecord<'a> {
    fn encoded_len(&self) -> usize {
        32 + self.image.encoded_len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.pid)?;
        w.u64(self.start_key)?;
        w.u64(self.open_keys)?;
        w.u32(self.hives)?;
        w.u32(self.flags)?;
        self.image.encode("image", w)
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let pid = r.u64()?;
        let start_key = r.u64()?;
        let open_keys = r.u64()?;
        let hives = r.u32()?;
        let flags = decode_flags(r, ProcessRecord::KNOWN_FLAGS, "process flags")?;
        Ok(Self {
            pid,
            start_key,
            open_keys,
            hives,
            flags,
            image: Text::decode(r)?,
        })
    }
}

/// The processes page ([`MessageKind::ProcessesPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Processes;

impl PageKind for Processes {
    const KIND: MessageKind = MessageKind::ProcessesPage;
    type Prefix<'a> = NoPrefix;
    type Record<'a> = ProcessRecord<'a>;
}
