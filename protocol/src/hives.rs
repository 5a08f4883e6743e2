//! The hives page: every hive the tracker knows, with its open keys and holders.
//!
//! No prefix. Record (40 bytes + strings):
//!
//! | offset | size | field                              |
//! |--------|------|------------------------------------|
//! | 0      | 4    | hive id                            |
//! | 4      | 1    | state ([`HiveState`])              |
//! | 5      | 1    | kind ([`HiveKind`])                |
//! | 6      | 2    | reserved, zero                     |
//! | 8      | 8    | open keys                          |
//! | 16     | 4    | processes holding keys             |
//! | 20     | 4    | flags ([`HiveRecord::FILE_TRUNCATED`]) |
//! | 24     | 8    | time loaded (0 when not known)     |
//! | 32     | 2+2n | mount point                        |
//! | …      | 2+2n | hive file (empty when unknown)     |
//!
//! Records come in the driver's table order (shard by shard, newest first in each), each
//! hive once in a paged listing; clients sort them (by id, the order reports use).

use crate::holders::{HiveKind, HiveState, decode_flags, decode_state_kind};
use crate::page::{Codec, NoPrefix, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// One hive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiveRecord<'a> {
    /// Opaque hive id.
    pub id: u32,
    /// State.
    pub state: HiveState,
    /// Kind.
    pub kind: HiveKind,
    /// Open keys.
    pub open_keys: u64,
    /// Processes holding keys.
    pub holders: u32,
    /// [`HiveRecord::FILE_TRUNCATED`].
    pub flags: u32,
    /// When the load was reported (100 ns units), 0 when not known.
    pub loaded_time: u64,
    /// Mount point.
    pub mount: Text<'a>,
    /// Hive file, empty when unknown.
    pub file: Text<'a>,
}

impl HiveRecord<'_> {
    /// The hive file's name is cut: the tracker stores at most 512 units of an application
    /// hive's file name (any user can load app hives, each with a name of up to 4 KiB) and
    /// 2,036 of any other.
    pub const FILE_TRUNCATED: u32 = 1;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 1;
}

impl<'a> Codec<'a> for HiveRecord<'a> {
    fn encoded_len(&self) -> usize {
        32 + self.mount.encoded_len() + self.file.encoded_len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(self.id)?;
        w.u8(self.state as u8)?;
        w.u8(self.kind as u8)?;
        w.zeros(2)?;
        w.u64(self.open_keys)?;
        w.u32(self.holders)?;
        w.u32(self.flags)?;
        w.u64(self.loaded_time)?;
        self.mount.encode("mount", w)?;
        self.file.encode("file", w)
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let (state, kind) = decode_state_kind(r)?;
        let open_keys = r.u64()?;
        let holders = r.u32()?;
        let flags = decode_flags(r, Self::KNOWN_FLAGS, "hive flags")?;
        Ok(Self {
            id,
            state,
            kind,
            open_keys,
            holders,
            flags,
            loaded_time: r.u64()?,
            mount: Text::decode(r)?,
            file: Text::decode(r)?,
        })
    }
}

/// The hives page ([`MessageKind::HivesPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Hives;

impl PageKind for Hives {
    const KIND: MessageKind = MessageKind::HivesPage;
    type Prefix<'a> = NoPrefix;
    type Record<'a> = HiveRecord<'a>;
}
