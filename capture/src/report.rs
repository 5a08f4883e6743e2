//! The analysis of a capture: `hivetrack.analysis/1` (documented in usermode-client/README.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema name of [`Analysis`].
pub const SCHEMA: &str = "hivetrack.analysis/1";

/// Everything `hivetrack analyze` reports about a capture.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Analysis {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// What was read.
    pub capture: CaptureInfo,
    /// False when the capture cannot say who holds keys (no `RegCloseKey` rows at all): then
    /// every holder list is empty and [`Analysis::refusal`] says why.
    pub holders_known: bool,
    /// Why holders are not named, when they are not.
    pub refusal: Option<String>,
    /// True only when nothing in the capture says the answers may miss a key: holders are
    /// named, rows were replayed, no `RegCloseKey` closes a key the capture never saw opened
    /// (the sign of keys opened before it started), no event is left out of the file
    /// ([`CaptureInfo::events_missing`]; with `--from-boot`, the rows' event numbers must
    /// show it), and every hive reported could be told
    /// apart (`HKCU` rows of a user whose SID was not given may be in any `HKU\<SID>`
    /// hive). A verdict (`--fail-if-held`, `--strict`) never says "free" when false.
    /// Absent (false) in documents written before 2026-12-05.
    #[serde(default)]
    pub complete: bool,
    /// What the analysis could not see, one sentence each with what would show it; empty
    /// when [`Analysis::complete`].
    #[serde(default)]
    pub missing: Vec<String>,
    /// What the capture could not show.
    pub unknowns: Unknowns,
    /// Every `RegUnloadKey` row, with who held keys in that hive at that row.
    pub unload_attempts: Vec<UnloadAttempt>,
    /// Every `Process Exit` row of a process that still held keys (closed only by the exit).
    pub exits: Vec<ProcessExit>,
    /// What was still open at the end (or at `--at`), per hive.
    pub open: Vec<HiveHolders>,
    /// The tracking engine's own count, as a cross-check of the ledger.
    pub tracker: TrackerCheck,
}

/// The capture read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaptureInfo {
    /// File name as given.
    pub path: String,
    /// `pml` or `csv`.
    pub format: String,
    /// Rows replayed (up to `--at`).
    pub rows: u64,
    /// Rows in the capture (all of them are read to see whether closes were captured).
    pub total_rows: u64,
    /// Time of the first row (FILETIME; PML UTC, CSV local), 0 unknown.
    pub first_time: u64,
    /// Time of the last replayed row.
    pub last_time: u64,
    /// The `--at` point, when given: the last row replayed.
    pub at_row: Option<u64>,
    /// The SID `HKCU` was taken to stand for, if given.
    pub hkcu_sid: Option<String>,
    /// Per user with `HKCU` rows (`DOMAIN\name`): the SID its `HKCU` was taken as, or "not
    /// given" (then its keys sit in a hive named as not known). A service account's `HKCU`
    /// is never taken as its own well-known SID: Procmon shows the hive of the account that
    /// ran it as `HKCU` ([`crate::paths`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hkcu_users: BTreeMap<String, String>,
    /// Events left out of the file, by Procmon's event numbers (the CSV's `Sequence`
    /// column): 0 when every row is numbered and none is skipped; more when the capture was
    /// saved or exported with a filter (or lost events), and then it is not complete. Null
    /// when the rows carry no numbers in order (a PML; a CSV without the column, or with
    /// `n/a`; rows sorted by another column): the capture cannot show it is whole, and with
    /// `--from-boot` it is not complete. Added in audit 20b (H2).
    #[serde(default)]
    pub events_missing: Option<u64>,
    /// The user stated that the capture holds every event (`--all-events`), which stands in
    /// for event numbers the capture does not carry (`events_missing` null); the answer is
    /// then only as complete as that statement is true.
    #[serde(default)]
    pub all_events_stated: bool,
}

/// What the capture could not show.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unknowns {
    /// `RegCloseKey` rows with no earlier successful open of that key in that process: keys
    /// opened before the capture started, or handles obtained without an open row
    /// (duplicated, inherited), which the capture cannot show either.
    pub closes_without_open: u64,
    /// The first of those keys (at most 20).
    pub closes_without_open_sample: Vec<String>,
    /// With `--at`: `RegCloseKey` rows after the point that close a key not opened by then
    /// in that process (nor after it): keys opened before the capture and still open at
    /// the point, which no list shows.
    #[serde(default)]
    pub closes_after_at_without_open: u64,
    /// Opens and creates whose result was not `SUCCESS` (not opens: nothing to close).
    pub failed_opens: u64,
    /// Rows not replayed, by operation (file, network, queries, …).
    pub skipped: BTreeMap<String, u64>,
    /// `RegCloseKey` rows in the whole capture.
    pub close_rows: u64,
    /// `HKCU` rows seen while the SID it stands for was not given (`--hkcu-sid`).
    pub hkcu_rows_without_sid: u64,
    /// Statements of what no capture shows.
    pub notes: Vec<String>,
}

/// A key held open.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Key {
    /// Kernel path (`\REGISTRY\...`).
    pub path: String,
    /// Row of the open.
    pub row: u64,
    /// Time of the open.
    pub time: u64,
    /// Operation of the open (`RegOpenKey`, `RegCreateKey`).
    pub operation: String,
    /// The module that called the registry API (PML stacks): the innermost user-mode frame
    /// outside the OS registry plumbing (`capture::plumbing`), `(no module)` when that frame
    /// is in no known module; with `plumbing_only`, the innermost frame's module. Null
    /// without a stack.
    pub module: Option<String>,
    /// Every user-mode frame was plumbing: `module` is the one that entered the kernel (an
    /// OS component's own open, or a stack cut short), not the code that asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plumbing_only: bool,
    /// The stack as `module+0xoffset` (or the address), innermost first (PML only).
    pub stack: Vec<String>,
}

/// A process holding keys.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Process id (as captured).
    pub pid: u32,
    /// Which process of that pid (1 for the first one the capture saw, +1 per `Process Start`
    /// of a reused pid).
    pub instance: u64,
    /// Parent process id, 0 unknown.
    pub parent_pid: u32,
    /// Image path.
    pub image: String,
    /// The capture showed the process exit (the keys are its handle rundown).
    pub exited: bool,
    /// Keys held.
    pub open_keys: u64,
    /// The keys, oldest first.
    pub keys: Vec<Key>,
}

/// A `RegUnloadKey` row.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnloadAttempt {
    /// Row.
    pub row: u64,
    /// Time.
    pub time: u64,
    /// The hive's mount point.
    pub hive: String,
    /// Who asked (pid and image).
    pub pid: u32,
    /// Image of the process that asked.
    pub image: String,
    /// Procmon's result text.
    pub result: String,
    /// Windows carried the unload out (the row's status, else its result text, as every
    /// row's success is read). Not part of the JSON: `result` says it there.
    #[serde(skip)]
    pub succeeded: bool,
    /// Holders at that row, most keys first.
    pub holders: Vec<Holder>,
    /// True when `holders` names everyone the capture shows holding keys in this hive at
    /// this row, and the capture shows no sign of keys it could not see (see
    /// [`Analysis::complete`]). Absent (false) in documents written before 2026-12-05.
    #[serde(default)]
    pub complete: bool,
    /// Why not, one sentence each with what would show it; empty when complete.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Processes holding `HKCU` keys of a user whose SID was not given (`--hkcu-sid`) at
    /// this row: they hold this hive if it is that user's, which the capture cannot say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maybe_holders: Vec<Holder>,
}

/// A process exit with keys still held.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessExit {
    /// Row of `Process Exit`.
    pub row: u64,
    /// Time.
    pub time: u64,
    /// The process and the keys only its exit closed.
    pub holder: Holder,
}

/// Holders of one hive.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HiveHolders {
    /// Mount point.
    pub hive: String,
    /// Keys open in it.
    pub open_keys: u64,
    /// Processes holding them, most keys first.
    pub holders: Vec<Holder>,
}

/// The tracking engine's counts after the replay.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackerCheck {
    /// Key objects the tracker holds (equals the ledger's open keys unless opens were not
    /// recorded).
    pub objects_tracked: u64,
    /// Hives it knows.
    pub hives_tracked: u64,
    /// Processes it knows.
    pub processes_tracked: u64,
    /// Records it could not keep.
    pub not_recorded: u64,
    /// Each hive's holders in the report set against the tracker's own holders answer for
    /// that hive (the query the driver answers, with the driver's hive resolution): true
    /// when they name the same processes holding the same key objects everywhere.
    #[serde(default)]
    pub holders_agree: bool,
    /// Where they differ (at most 20), when they do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disagreements: Vec<String>,
}
