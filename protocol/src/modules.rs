//! The modules page: the images mapped into processes whose keys carry stacks.
//!
//! The images (executable and DLLs) mapped into each process whose
//! tracked keys carry a captured stack (issue 16), as the driver's image-load notifications
//! told it, so that a frame resolves to `module+offset` even after the process exited.
//!
//! Windows sends no notification when a DLL is unmapped, so a process may list two modules
//! over the same addresses: the one loaded last before a key's open time is the one that
//! was there (`load time` says which).
//!
//! Prefix: image loads not recorded so far u64 (no memory, or the process's share used).
//! Records are tagged: a process, then its modules in load order; a process whose modules
//! continue from the previous page is repeated with [`ModuleProcess::CONTINUED`].
//! Process record: tag 1, 3 zero bytes, flags u32, pid u64, start key u64, lost since u64
//! (when the first of its image loads that could not be kept happened — its module list is
//! full or its share used — 0 when none: from then on a frame may lie in an image not
//! listed, over the range of an older one).
//! Module record: tag 2, 3 zero bytes, flags u32, base u64, size u64, load time u64,
//! image path (2+2n, as the kernel named it: `\Device\HarddiskVolume3\…\x.dll`).

use crate::holders::decode_flags;
use crate::page::{Codec, DroppedPrefix, PageKind};
use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, MessageKind, Reader, Writer};

/// The modules page's prefix: image loads not recorded so far.
pub type ModulesPrefix = DroppedPrefix;

/// A process whose modules follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleProcess {
    /// [`ModuleProcess::EXITED`], [`ModuleProcess::CONTINUED`].
    pub flags: u32,
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// When its first image load not kept happened (0: none).
    pub lost_since: u64,
}

impl ModuleProcess {
    /// The process has exited.
    pub const EXITED: u32 = 1;
    /// Its modules started on an earlier page.
    pub const CONTINUED: u32 = 2;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 3;
}

/// One mapped image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// [`Module::NAME_TRUNCATED`], [`Module::NAME_MISSING`].
    pub flags: u32,
    /// Base address (user mode).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// When it was mapped (100 ns units).
    pub load_time: u64,
    /// Full image path, empty when missing.
    pub name: Text<'a>,
}

impl Module<'_> {
    /// The path was longer than the tracker stores and is cut.
    pub const NAME_TRUNCATED: u32 = 1;
    /// The path is not known (the kernel gave none, or it could not be stored).
    pub const NAME_MISSING: u32 = 2;
    /// Every flag this version defines.
    pub const KNOWN_FLAGS: u32 = 3;

    /// True when `address` is inside the image.
    #[must_use]
    pub const fn contains(&self, address: u64) -> bool {
        address >= self.base && address - self.base < self.size
    }
}

/// A record of a modules page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleRecord<'a> {
    /// A process; the modules that follow are its.
    Process(ModuleProcess),
    /// A module of the last process.
    Module(Module<'a>),
}

impl<'a> Codec<'a> for ModuleRecord<'a> {
    fn encoded_len(&self) -> usize {
        match self {
            Self::Process(_) => 32,
            Self::Module(m) => 32 + m.name.encoded_len(),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Self::Process(p) => {
                w.u8(1)?;
                w.zeros(3)?;
                w.u32(p.flags)?;
                w.u64(p.pid)?;
                w.u64(p.start_key)?;
                w.u64(p.lost_since)
            }
            Self::Module(m) => {
                w.u8(2)?;
                w.zeros(3)?;
                w.u32(m.flags)?;
                w.u64(m.base)?;
                w.u64(m.size)?;
                w.u64(m.load_time)?;
                m.name.encode("module name", w)
            }
        }
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match r.u8()? {
            1 => {
                r.zeros(3)?;
                let flags = decode_flags(r, ModuleProcess::KNOWN_FLAGS, "process flags")?;
                Ok(Self::Process(ModuleProcess {
                    flags,
                    pid: r.u64()?,
                    start_key: r.u64()?,
                    lost_since: r.u64()?,
                }))
            }
            2 => {
                r.zeros(3)?;
                let flags = decode_flags(r, Module::KNOWN_FLAGS, "module flags")?;
                Ok(Self::Module(Module {
                    flags,
                    base: r.u64()?,
                    size: r.u64()?,
                    load_time: r.u64()?,
                    name: Text::decode(r)?,
                }))
            }
            _ => Err(DecodeError::InvalidField {
                field: "record tag",
            }),
        }
    }
}

/// The modules page ([`MessageKind::ModulesPage`]).
#[derive(Clone, Copy, Debug)]
pub struct Modules;

impl PageKind for Modules {
    const KIND: MessageKind = MessageKind::ModulesPage;
    type Prefix<'a> = ModulesPrefix;
    type Record<'a> = ModuleRecord<'a>;

    fn check_sequence(
        prev: Option<&ModuleRecord<'_>>,
        rec: &ModuleRecord<'_>,
    ) -> Result<(), DecodeError> {
        if prev.is_none() && matches!(rec, ModuleRecord::Module(_)) {
            return Err(DecodeError::InvalidField {
                field: "first record",
            });
        }
        Ok(())
    }
}
