//! One capture row as the replay needs it, whichever format it came from.

use std::sync::Arc;

/// The operations the replay acts on; everything else is [`Op::Other`] (counted, skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Op {
    /// `RegOpenKey`.
    OpenKey,
    /// `RegCreateKey`.
    CreateKey,
    /// `RegCloseKey`.
    CloseKey,
    /// `RegLoadKey` (a hive was mounted).
    LoadKey,
    /// `RegUnloadKey` (an unload attempt; the result says whether it succeeded).
    UnloadKey,
    /// `RegRenameKey` (the key and its subkeys get a new path; `Event::hive_file` has the
    /// new name).
    RenameKey,
    /// `RegDeleteKey` (handles on a deleted key stay open: counted, no state change).
    DeleteKey,
    /// `Process Start` (the first row of a process, logged in its own context).
    ProcessStart,
    /// `Process Exit` (rows of the same process after it are the handle rundown).
    ProcessExit,
    /// Any other operation.
    #[default]
    Other,
}

impl Op {
    /// The operation for Procmon's name of it.
    #[must_use]
    pub fn from_name(name: &str) -> Self {
        match name {
            "RegOpenKey" => Self::OpenKey,
            "RegCreateKey" => Self::CreateKey,
            "RegCloseKey" => Self::CloseKey,
            "RegLoadKey" => Self::LoadKey,
            "RegUnloadKey" => Self::UnloadKey,
            "RegDeleteKey" => Self::DeleteKey,
            "RegRenameKey" => Self::RenameKey,
            "Process Start" => Self::ProcessStart,
            "Process Exit" => Self::ProcessExit,
            _ => Self::Other,
        }
    }
}

/// A stack frame with the module it falls in (PML only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address.
    pub address: u64,
    /// The module's image path, when a module of the process (or of the kernel) covers it.
    pub module: Option<Arc<str>>,
    /// Offset from the module's base.
    pub offset: u64,
    /// A kernel-mode address (above the capture's highest user address).
    pub kernel: bool,
}

/// One capture row. Readers reuse one `Event`, so its buffers are kept between rows.
#[derive(Clone, Debug, Default)]
pub struct Event {
    /// 1-based row number (the order Procmon shows the rows in).
    pub row: u64,
    /// Procmon's event number (the CSV's `Sequence` column), when the row carries one: a
    /// gap between rows is events left out of the file (a filtered save or export). `None`
    /// for PML rows (the format numbers no events: procmon-parser's `docs/PML Format.md`) and
    /// for CSV rows without it (no column, or `n/a`, as Procmon writes it for a log loaded
    /// from a file: every export in procmon-parser's test resources).
    pub sequence: Option<u64>,
    /// FILETIME of the row (PML: UTC; CSV: the capturing machine's local clock), 0 unknown.
    pub time: u64,
    /// Process id.
    pub pid: u32,
    /// Parent process id, 0 unknown.
    pub parent_pid: u32,
    /// Process image path (or name when the CSV has no Image Path column).
    pub image: Arc<str>,
    /// The process's user as Procmon shows it (`DOMAIN\name`): PML always, CSV when the
    /// export has the User column; empty when not known.
    pub user: Arc<str>,
    /// What the row does.
    pub op: Op,
    /// Procmon's operation name.
    pub operation: String,
    /// The Path column (for registry rows, the key as Procmon abbreviates it).
    pub path: String,
    /// The result: `SUCCESS`, another text, or a hex NTSTATUS from PML.
    pub result: String,
    /// NTSTATUS when known (PML), or 0 for `SUCCESS`.
    pub status: Option<u32>,
    /// `RegLoadKey`: the hive file (`Hive Path:` detail); `RegRenameKey`: the new name
    /// (`New Name:` detail; procmon-parser `get_registry_load_or_rename_extra_details`).
    pub hive_file: String,
    /// Stack frames, innermost first (PML only).
    pub frames: Vec<Frame>,
}

impl Event {
    /// The row's result is `SUCCESS`.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status
            .map_or_else(|| self.result == "SUCCESS", |s| s == 0)
    }
}
