//! The unload-history page: recent hive unload attempts, each with the processes that held
//! keys in the hive at that moment (the answer to "why did my unload fail").
//!
//! No prefix. Record (newest first):
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0      | 8    | time of the attempt                                           |
//! | 8      | 4    | outcome (the NTSTATUS the unload returned)                     |
//! | 12     | 4    | hive id (0 when the mount point was not a known hive)          |
//! | 16     | 8    | open keys in the hive at the time                              |
//! | 24     | 4    | processes holding keys at the time                             |
//! | 28     | 2    | holders stored in this record (at most [`MAX_UNLOAD_HOLDERS`]) |
//! | 30     | 2    | flags: [`UnloadRecord::KNOWN_FLAGS`]                             |
//! | 32     | 8    | sequence number of the attempt (1 = first since start)        |
//! | 40     | 8    | interrupt time when made, 0 when not stamped (protocol 7)      |
//! | 48     | 2+2n | mount point as given                                          |
//! | …      |      | stored holders: pid u64, start key u64, open keys u64, image (2+2n) |

use crate::page::{Codec, NoPrefix, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// Most holders an unload record stores (the ones with the most open keys).
pub const MAX_UNLOAD_HOLDERS: usize = 8;

/// A process that held keys in the hive when the unload was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnloadHolder<'a> {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Keys it held in the hive.
    pub open_keys: u64,
    /// Image path.
    pub image: Text<'a>,
}

impl<'a> Codec<'a> for UnloadHolder<'a> {
    fn encoded_len(&self) -> usize {
        24 + self.image.encoded_len()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.pid)?;
        w.u64(self.start_key)?;
        w.u64(self.open_keys)?;
        self.image.encode("image", w)
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Self {
            pid: r.u64()?,
            start_key: r.u64()?,
            open_keys: r.u64()?,
            image: Text::decode(r)?,
        })
    }
}

/// The stored holders of an unload record: a slice when encoding, wire bytes when decoded.
#[derive(Clone, Copy, Debug)]
pub enum UnloadHolders<'a> {
    /// Built by the sender.
    Slice(&'a [UnloadHolder<'a>]),
    /// Validated bytes of `count` holders from a received message.
    Wire {
        /// Number of holders.
        count: u16,
        /// Their bytes.
        bytes: &'a [u8],
    },
}

impl<'a> UnloadHolders<'a> {
    /// Number of holders.
    #[must_use]
    pub const fn len(&self) -> usize {
        match self {
            Self::Slice(s) => s.len(),
            Self::Wire { count, .. } => *count as usize,
        }
    }

    /// True when there is none.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The holders in order.
    pub fn iter(&self) -> impl Iterator<Item = UnloadHolder<'a>> + 'a {
        let (slice, wire) = match *self {
            Self::Slice(s) => (Some(s.iter().copied()), None),
            Self::Wire { count, bytes } => {
                let mut r = Reader::new(bytes);
                (
                    None,
                    Some((0..count).map_while(move |_| UnloadHolder::decode(&mut r).ok())),
                )
            }
        };
        slice
            .into_iter()
            .flatten()
            .chain(wire.into_iter().flatten())
    }
}

impl PartialEq for UnloadHolders<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for UnloadHolders<'_> {}

/// One unload attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnloadRecord<'a> {
    /// When.
    pub time: u64,
    /// The NTSTATUS the unload returned.
    pub outcome: u32,
    /// Hive id, 0 when the mount point was not a known hive.
    pub hive_id: u32,
    /// Open keys in the hive then.
    pub open_keys: u64,
    /// Processes holding keys then.
    pub holders_total: u32,
    /// [`UnloadRecord::HOLDERS_TRUNCATED`], [`UnloadRecord::UNKNOWN_HIVE`],
    /// [`UnloadRecord::KEY_ALARM`], [`UnloadRecord::HELD_AFTER`],
    /// [`UnloadRecord::HOLDERS_UNSEEN`].
    pub flags: u16,
    /// Sequence number of the attempt.
    pub sequence: u64,
    /// The driver's interrupt time when the record was made (100 ns units since boot, what
    /// `KeQueryInterruptTime` and user mode's `QueryInterruptTime` return), for a failed or
    /// deferred unload and a [`UnloadRecord::HELD_AFTER`] record; 0 when not stamped (a
    /// key-count alarm). Setting the system clock does not move it (Learn,
    /// `KeQueryInterruptTime`), so a reader on the same machine dates the record by it
    /// whatever the system clock did (review 22d, L3). Protocol 7.
    pub interrupt_time: u64,
    /// Mount point as given.
    pub mount: Text<'a>,
    /// The biggest holders (at most [`MAX_UNLOAD_HOLDERS`]).
    pub holders: UnloadHolders<'a>,
}

impl UnloadRecord<'_> {
    /// More processes held keys than the record stores (or some could not be listed).
    pub const HOLDERS_TRUNCATED: u16 = 1;
    /// The mount point was not a known hive. Readers take it as [`Self::HOLDERS_UNSEEN`] too:
    /// the driver saw no open in a hive it did not know.
    pub const UNKNOWN_HIVE: u16 = 2;
    /// Not an unload: a key-count alarm ([`crate::events`]). A process reached the alarm
    /// threshold of open keys; the record names no hive (id 0, empty mount, outcome 0),
    /// `open_keys` is the process's count, and its one holder is the process.
    pub const KEY_ALARM: u16 = 4;
    /// Not an unload: the hive was still held (or the driver could not see whether it was)
    /// the configured delay after a failed unload attempt of it
    /// ([`crate::events::EventsPrefix::held_after_seconds`]). `time` is when the driver
    /// looked, `outcome` the failed attempt's status, and the holders are those at that
    /// moment.
    pub const HELD_AFTER: u16 = 8;
    /// The driver cannot vouch that it saw every open in the hive (keys opened before its
    /// tracking began, or opens it lost): processes beyond the holders listed may hold keys
    /// in it. Only the kernel's own handle list can tell those.
    pub const HOLDERS_UNSEEN: u16 = 16;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u16 = 31;
}

impl<'a> Codec<'a> for UnloadRecord<'a> {
    fn encoded_len(&self) -> usize {
        48 + self.mount.encoded_len() + self.holders.iter().map(|h| h.encoded_len()).sum::<usize>()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let n = self.holders.len();
        if n > MAX_UNLOAD_HOLDERS {
            return Err(EncodeError::FieldTooLarge { field: "holders" });
        }
        w.u64(self.time)?;
        w.u32(self.outcome)?;
        w.u32(self.hive_id)?;
        w.u64(self.open_keys)?;
        w.u32(self.holders_total)?;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "n <= MAX_UNLOAD_HOLDERS, checked above"
        )]
        w.u16(n as u16)?;
        w.u16(self.flags)?;
        w.u64(self.sequence)?;
        w.u64(self.interrupt_time)?;
        self.mount.encode("mount", w)?;
        for h in self.holders.iter() {
            h.encode(w)?;
        }
        Ok(())
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let time = r.u64()?;
        let outcome = r.u32()?;
        let hive_id = r.u32()?;
        let open_keys = r.u64()?;
        let holders_total = r.u32()?;
        let count = r.u16()?;
        if usize::from(count) > MAX_UNLOAD_HOLDERS {
            return Err(DecodeError::InvalidField {
                field: "holder count",
            });
        }
        let flags = r.u16()?;
        if flags & !UnloadRecord::KNOWN_FLAGS != 0 {
            return Err(DecodeError::InvalidField {
                field: "unload flags",
            });
        }
        let sequence = r.u64()?;
        let interrupt_time = r.u64()?;
        let mount = Text::decode(r)?;
        let start = r.clone();
        for _ in 0..count {
            UnloadHolder::decode(r)?;
        }
        let used = r.position() - start.position();
        let bytes = start.clone().bytes(used)?;
        Ok(Self {
            time,
            outcome,
            hive_id,
            open_keys,
            holders_total,
            flags,
            sequence,
            interrupt_time,
            mount,
            holders: UnloadHolders::Wire { count, bytes },
        })
    }
}

/// The unload-history page ([`MessageKind::UnloadHistoryPage`]).
#[derive(Clone, Copy, Debug)]
pub struct UnloadHistory;

impl PageKind for UnloadHistory {
    const KIND: MessageKind = MessageKind::UnloadHistoryPage;
    type Prefix<'a> = NoPrefix;
    type Record<'a> = UnloadRecord<'a>;
}
