//! The snapshot page: every tracked key object with its process, for leak hunting
//! (`diff` of two snapshots, in user mode, is in [`crate::diff`] under the `std` feature).
//!
//! Prefix: the time the first page was taken (u64). Record: pid u64, start key u64, id
//! u64, open time u64, hive id u32, flags u32 ([`crate::holders::HolderKey`]'s name flags),
//! name (2+2n). Records come per process (in the driver's process-table order, stable for a
//! given process; clients sort), per hive, oldest first.

use crate::holders::{HolderKey, decode_flags};
use crate::page::{Codec, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// When the snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPrefix {
    /// Time of the request (100 ns units).
    pub taken_at: u64,
}

impl Codec<'_> for SnapshotPrefix {
    fn encoded_len(&self) -> usize {
        8
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.taken_at)
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { taken_at: r.u64()? })
    }
}

/// One tracked key object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRecord<'a> {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Opaque object id.
    pub id: u64,
    /// Open time.
    pub open_time: u64,
    /// Hive id.
    pub hive_id: u32,
    /// Name flags, as [`HolderKey::flags`].
    pub flags: u32,
    /// Key name.
    pub name: Text<'a>,
}

impl<'a> Codec<'a> for SnapshotRecord<'a> {
    fn encoded_len(&self) -> usize {
        40 + self.name.encoded_len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.pid)?;
        w.u64(self.start_key)?;
        w.u64(self.id)?;
        w.u64(self.open_time)?;
        w.u32(self.hive_id)?;
        w.u32(self.flags)?;
        self.name.encode("name", w)
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let pid = r.u64()?;
        let start_key = r.u64()?;
        let id = r.u64()?;
        let open_time = r.u64()?;
        let hive_id = r.u32()?;
        let flags = decode_flags(r, HolderKey::NAME_FLAGS, "name flags")?;
        Ok(Self {
            pid,
            start_key,
            id,
            open_time,
            hive_id,
            flags,
            name: Text::decode(r)?,
        })
    }
}

/// The snapshot page ([`MessageKind::SnapshotPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot;

impl PageKind for Snapshot {
    const KIND: MessageKind = MessageKind::SnapshotPage;
    type Prefix<'a> = SnapshotPrefix;
    type Record<'a> = SnapshotRecord<'a>;
}
