//! The holders page: who holds keys open in one hive, per process, with the keys.
//!
//! Prefix (after the common page fields, see [`crate::page`]):
//!
//! | offset | size | field                                          |
//! |--------|------|------------------------------------------------|
//! | 0      | 4    | hive id (opaque, stable while the hive is known)|
//! | 4      | 1    | hive state ([`HiveState`])                     |
//! | 5      | 1    | hive kind ([`HiveKind`])                       |
//! | 6      | 2    | reserved, zero                                 |
//! | 8      | 8    | open keys in the hive (all processes)          |
//! | 16     | 4    | processes holding keys in the hive             |
//! | 20     | 4    | flags ([`HoldersPrefix::FILE_TRUNCATED`])      |
//! | 24     | 2+2n | mount point                                    |
//! | …      | 2+2n | hive file (empty when unknown)                 |
//! | …      | 40   | completeness ([`Completeness`])                |
//!
//! Records are tagged ([`HolderRecord`]): a process summary, then that process's keys; a
//! process whose keys continue from the previous page is repeated with
//! [`HolderProcess::CONTINUED`]. The first record of a page is always a process.
//!
//! Process record: tag 1, 3 zero bytes, flags u32, pid u64, start key u64, open keys in the
//! hive u64, oldest open time u64, image (2+2n).
//! Key record: tag 2, 3 zero bytes, flags u32, id u64, thread u64, open time u64, access
//! u32, handle opens u32, handle closes u32, stack id u32 (0: none, see the flags), name
//! (2+2n).

use crate::completeness::Completeness;
use crate::page::{Codec, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, Fixed, MessageKind, Reader, Writer};

/// What the tracker knows of a hive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HiveState {
    /// Loaded: from the hive list or a load notification.
    Loaded = 1,
    /// Only seen in key paths (the mount point was inferred); never reported loaded.
    Implicit = 2,
    /// Unloaded, kept while tracked keys still refer to it.
    Unloaded = 3,
    /// A deferred unload (`NtUnloadKeyEx` with an event) was accepted as `STATUS_PENDING` and
    /// has not been seen to complete: Windows unloads the hive, with no notification, once
    /// its last key object has gone and the delayed dereference of its keys has run (up to
    /// about 5 s later); until then it is loaded, its file in use, also with no key open. The
    /// driver keeps the state until its read of the hive list no longer finds the hive (or a
    /// load makes it loaded again). The unload history has the attempt and its time.
    UnloadPending = 4,
}

impl HiveState {
    /// Maps a wire value back.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Loaded),
            2 => Some(Self::Implicit),
            3 => Some(Self::Unloaded),
            4 => Some(Self::UnloadPending),
            _ => None,
        }
    }
}

/// The kind of hive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HiveKind {
    /// A hive mounted in the registry namespace.
    Regular = 1,
    /// An application hive (`\REGISTRY\A\{guid}`, `RegLoadAppKey`).
    App = 2,
}

impl HiveKind {
    /// Maps a wire value back.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Regular),
            2 => Some(Self::App),
            _ => None,
        }
    }
}

/// Reads the state and kind bytes and the two reserved bytes after them.
pub(crate) fn decode_state_kind(r: &mut Reader<'_>) -> Result<(HiveState, HiveKind), DecodeError> {
    let state = HiveState::from_u8(r.u8()?).ok_or(DecodeError::InvalidField {
        field: "hive state",
    })?;
    let kind =
        HiveKind::from_u8(r.u8()?).ok_or(DecodeError::InvalidField { field: "hive kind" })?;
    r.zeros(2)?;
    Ok((state, kind))
}

/// Reads a flags word and rejects unknown bits.
pub(crate) fn decode_flags(
    r: &mut Reader<'_>,
    known: u32,
    field: &'static str,
) -> Result<u32, DecodeError> {
    let f = r.u32()?;
    if f & !known == 0 {
        Ok(f)
    } else {
        Err(DecodeError::InvalidField { field })
    }
}

/// The hive a holders page is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldersPrefix<'a> {
    /// Opaque hive id.
    pub hive_id: u32,
    /// State.
    pub state: HiveState,
    /// Kind.
    pub kind: HiveKind,
    /// Open keys in the hive, all processes.
    pub open_keys: u64,
    /// Processes holding keys in the hive.
    pub holders: u32,
    /// [`HoldersPrefix::FILE_TRUNCATED`].
    pub flags: u32,
    /// Mount point.
    pub mount: Text<'a>,
    /// Hive file, empty when unknown.
    pub file: Text<'a>,
    /// Since when tracking runs and what the hive lost (appended in this version).
    pub completeness: Completeness,
}

impl HoldersPrefix<'_> {
    /// The hive file's name is cut (as [`crate::hives::HiveRecord::FILE_TRUNCATED`]).
    pub const FILE_TRUNCATED: u32 = 1;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 1;
}

impl<'a> Codec<'a> for HoldersPrefix<'a> {
    fn encoded_len(&self) -> usize {
        24 + self.mount.encoded_len() + self.file.encoded_len() + Completeness::LEN
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(self.hive_id)?;
        w.u8(self.state as u8)?;
        w.u8(self.kind as u8)?;
        w.zeros(2)?;
        w.u64(self.open_keys)?;
        w.u32(self.holders)?;
        w.u32(self.flags)?;
        self.mount.encode("mount", w)?;
        self.file.encode("file", w)?;
        self.completeness.encode(w)
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let hive_id = r.u32()?;
        let (state, kind) = decode_state_kind(r)?;
        let open_keys = r.u64()?;
        let holders = r.u32()?;
        let flags = decode_flags(r, Self::KNOWN_FLAGS, "hive flags")?;
        Ok(Self {
            hive_id,
            state,
            kind,
            open_keys,
            holders,
            flags,
            mount: Text::decode(r)?,
            file: Text::decode(r)?,
            completeness: Completeness::decode(r)?,
        })
    }
}

/// A process holding keys in the hive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderProcess<'a> {
    /// [`HolderProcess::EXITED`], [`HolderProcess::CONTINUED`], image flags.
    pub flags: u32,
    /// Process id.
    pub pid: u64,
    /// Process start key: with the pid, identifies the process even when pids are reused.
    pub start_key: u64,
    /// Keys this process holds open in the hive.
    pub open_keys: u64,
    /// Open time of its oldest key in the hive (100 ns units, as `KeQuerySystemTime`).
    pub oldest_open: u64,
    /// Image path (empty when unknown).
    pub image: Text<'a>,
}

impl HolderProcess<'_> {
    /// The process has exited (its keys outlive it: handles inherited or duplicated).
    pub const EXITED: u32 = 1;
    /// This process's keys started on an earlier page.
    pub const CONTINUED: u32 = 2;
    /// The image path was longer than the tracker stores and is cut.
    pub const IMAGE_TRUNCATED: u32 = 4;
    /// The image path is not known (never reported, or it could not be stored).
    pub const IMAGE_MISSING: u32 = 8;
    /// A 32-bit (x86) program under Wow64 (`IoIs32bitProcess`, learnt at a captured open):
    /// its open-time stacks hold only the 64-bit Wow64 layer, never its own 32-bit callers.
    pub const WOW64: u32 = 16;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 31;
}

/// One tracked key object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderKey<'a> {
    /// [`HolderKey::NAME_TRUNCATED`], [`HolderKey::NAME_MISSING`].
    pub flags: u32,
    /// Opaque object id (never a kernel address).
    pub id: u64,
    /// Thread that opened it.
    pub thread: u64,
    /// When it was opened (100 ns units).
    pub open_time: u64,
    /// Granted access mask.
    pub access: u32,
    /// Handles counted as opened on the object (the open itself is one).
    pub handle_opens: u32,
    /// Handle closes seen for the object.
    pub handle_closes: u32,
    /// The user-mode stack of its open ([`crate::stacks`]); 0 when none was captured.
    pub stack: u32,
    /// Full key name (empty when missing).
    pub name: Text<'a>,
}

impl HolderKey<'_> {
    /// The name was longer than the tracker stores and is cut.
    pub const NAME_TRUNCATED: u32 = 1;
    /// The name could not be stored (allocation failure).
    pub const NAME_MISSING: u32 = 2;
    /// Capture was on for this open but the opening thread had no user-mode frames to give
    /// (a kernel-mode opener, or a stack the walk could not read).
    pub const STACK_EMPTY: u32 = 4;
    /// A stack was captured but could not be stored (no memory, or the stack table full).
    pub const STACK_DROPPED: u32 = 8;
    /// Capture was on, but this open was outside its scope (another hive or image).
    pub const STACK_OUT_OF_SCOPE: u32 = 16;
    /// The key was deleted since it was opened (`RegNtPostDeleteKey`): the object lives on
    /// and holds the hive, but the kernel's list of open keys (`NtQueryOpenSubKeysEx`) no
    /// longer has it.
    pub const KEY_DELETED: u32 = 32;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 63;
    /// The name flags (the snapshot's records carry only these).
    pub const NAME_FLAGS: u32 = 3;
}

/// A record of a holders page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderRecord<'a> {
    /// A process summary; the keys that follow are this process's.
    Process(HolderProcess<'a>),
    /// A key of the last process.
    Key(HolderKey<'a>),
}

impl<'a> Codec<'a> for HolderRecord<'a> {
    fn encoded_len(&self) -> usize {
        match self {
            Self::Process(p) => 40 + p.image.encoded_len(),
            Self::Key(k) => 48 + k.name.encoded_len(),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            // One bounds check per record, not one per field: `holders` writes a record per
            // open key (issue 14: 100,000 keys in ≤ 10 ms).
            Self::Process(p) => {
                let mut f = Fixed::<40>::new();
                f.u8(1)
                    .zeros(3)
                    .u32(p.flags)
                    .u64(p.pid)
                    .u64(p.start_key)
                    .u64(p.open_keys)
                    .u64(p.oldest_open);
                w.fixed(&f)?;
                p.image.encode("image", w)
            }
            Self::Key(k) => {
                let mut f = Fixed::<48>::new();
                f.u8(2)
                    .zeros(3)
                    .u32(k.flags)
                    .u64(k.id)
                    .u64(k.thread)
                    .u64(k.open_time)
                    .u32(k.access)
                    .u32(k.handle_opens)
                    .u32(k.handle_closes)
                    .u32(k.stack);
                w.fixed(&f)?;
                k.name.encode("name", w)
            }
        }
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match r.u8()? {
            1 => {
                r.zeros(3)?;
                let flags = decode_flags(r, HolderProcess::KNOWN_FLAGS, "process flags")?;
                Ok(Self::Process(HolderProcess {
                    flags,
                    pid: r.u64()?,
                    start_key: r.u64()?,
                    open_keys: r.u64()?,
                    oldest_open: r.u64()?,
                    image: Text::decode(r)?,
                }))
            }
            2 => {
                r.zeros(3)?;
                let flags = decode_flags(r, HolderKey::KNOWN_FLAGS, "key flags")?;
                let id = r.u64()?;
                let thread = r.u64()?;
                let open_time = r.u64()?;
                let access = r.u32()?;
                let handle_opens = r.u32()?;
                let handle_closes = r.u32()?;
                let stack = r.u32()?;
                Ok(Self::Key(HolderKey {
                    flags,
                    id,
                    thread,
                    open_time,
                    access,
                    handle_opens,
                    handle_closes,
                    stack,
                    name: Text::decode(r)?,
                }))
            }
            _ => Err(DecodeError::InvalidField {
                field: "record tag",
            }),
        }
    }
}

/// The holders page ([`MessageKind::HoldersPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Holders;

impl PageKind for Holders {
    const KIND: MessageKind = MessageKind::HoldersPage;
    type Prefix<'a> = HoldersPrefix<'a>;
    type Record<'a> = HolderRecord<'a>;

    fn check_sequence(
        prev: Option<&HolderRecord<'_>>,
        rec: &HolderRecord<'_>,
    ) -> Result<(), DecodeError> {
        if prev.is_none() && matches!(rec, HolderRecord::Key(_)) {
            return Err(DecodeError::InvalidField {
                field: "first record",
            });
        }
        Ok(())
    }
}
