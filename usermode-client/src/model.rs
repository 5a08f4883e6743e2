//! The reports the CLI prints, as owned data: the stable `--json` schema (documented in
//! `usermode-client/README.md`) and the input of the table and CSV renderers.
//!
//! Every report carries `schema` (`hivetrack.<report>/1`: the number changes only on an
//! incompatible change; fields may be added) and `source` (which backend answered and how
//! complete the answer is). Times are [`Time`]s: the raw Windows FILETIME and its UTC text.

use serde::{Deserialize, Serialize};

/// Which backend answered and how complete the answer is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `driver` (hivetrack.sys over `DeviceIoControl`), `ntquery` (the driverless
    /// `NtQueryOpenSubKeysEx` fallback), `scripted` (tests).
    pub backend: String,
    /// False when the tracker missed events (`not_recorded` > 0) or the backend cannot see
    /// everything (`missing` is not empty).
    pub complete: bool,
    /// Events the tracker could not record (the sum of the loss counters of `stats`).
    pub not_recorded: u64,
    /// What this backend cannot report (empty for the driver).
    pub missing: Vec<String>,
    /// For reports about one hive (`holders`, `wait`): since when the driver tracks, what
    /// it lost in that hive, and how its records compare with the kernel's own list of open
    /// keys. With it, `complete` means "the driver's records and the kernel's list agree key
    /// for key and tracking runs"; losses elsewhere do not matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// For listings (`processes`, `hives`, `snapshot`): when the driver's live tracking began.
    /// Such a listing holds what was opened since; a key opened before it is in no listing
    /// (only `holders`, which asks the kernel, shows those). Null when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_since: Option<Time>,
    /// For a report about a `<X>_Classes` hive that saw no key open in it: the user hive
    /// (`HKU\<X>`, known to be loaded) whose `Software\Classes` link
    /// may hold it unseen by the driver and by the kernel's list (Windows Research Kernel
    /// `cmparse.c` `CmpGetSymbolicLink`; not verified on Windows 10/11; audit 23a, F1). The
    /// answer is then not complete: unload that hive first ([`crate::classes_link`]). Absent
    /// otherwise (when whether it is loaded could not be asked, the source is incomplete
    /// with that reason instead), and from CLIs before 2026-12-06.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes_link_user_hive: Option<String>,
    /// Set by [`Source::cannot_see`]: this answer missed something it needed (tracking off,
    /// the holders of a hive the driver forgot, a failed request), so a verdict or
    /// `--strict` must not pass on it. Unlike `missing`'s fixed list of what a backend never
    /// reports (the driverless fallback has no times or stacks, which no verdict rests on).
    /// Not part of the JSON: `complete` says it there.
    #[serde(skip)]
    pub unseen: bool,
    /// How many of `missing`'s first entries are the backend's fixed list of what it never
    /// reports ([`Source::new`]); the rest are what this answer could not see
    /// ([`Source::cannot_see`]). The table prints the two apart. Not part of the JSON.
    #[serde(skip)]
    pub limits: usize,
}

/// How far a report about one hive can be trusted, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// When live tracking began; null when it is off. Keys opened before it are not in the
    /// driver's records.
    pub tracking_since: Option<Time>,
    /// Opens in this hive the driver could not record (since the hive was loaded).
    pub lost_in_hive: u64,
    /// When the first of them happened.
    pub lost_in_hive_since: Option<Time>,
    /// Opens lost whose hive the driver could not tell (they concern every hive).
    pub lost_unattributed: u64,
    /// When the first of them happened.
    pub lost_unattributed_since: Option<Time>,
    /// Key objects the kernel lists open in the hive (`NtQueryOpenSubKeysEx`); null when it
    /// could not be asked.
    pub kernel_open_keys: Option<u64>,
    /// Why the kernel could not be asked, when it could not.
    pub kernel_error: Option<String>,
    /// Keys the kernel lists that the driver has no record of (opened before tracking
    /// started, or lost).
    pub untracked_keys: u64,
    /// Driver records the kernel's list does not have.
    pub unmatched_records: u64,
    /// The driver's records and the kernel's list agree key for key.
    pub reconciled: bool,
    /// A key the driver did not see may hold the hive unseen by both lists: the hive was
    /// loaded before tracking started (or when is not known, or it is an application hive),
    /// or opens were lost, and such a key may have been deleted since. The kernel's list
    /// omits a deleted key's objects, which still keep the hive from unloading (Windows Research Kernel
    /// `cmsubs.c` `CmpSearchForOpenSubKeys` walks the KCB hash, which `CmDeleteKey` takes the
    /// key out of; `cmapi.c` `CmUnloadKey` still fails on the KCB's reference).
    #[serde(default)]
    pub deleted_keys_unseen: bool,
}

impl Coverage {
    /// True when the report can say "complete": tracking runs, the kernel was asked, its
    /// list and the driver's records agree key for key, and no key deleted while open can
    /// have escaped both (the hive was loaded after tracking started).
    #[must_use]
    pub const fn complete(&self) -> bool {
        self.tracking_since.is_some()
            && self.kernel_open_keys.is_some()
            && self.reconciled
            && !self.deleted_keys_unseen
    }
}

impl Source {
    /// A source from its parts; `complete` is derived.
    #[must_use]
    pub fn new(backend: &str, not_recorded: u64, missing: &[&str]) -> Self {
        Self {
            backend: backend.to_owned(),
            complete: not_recorded == 0 && missing.is_empty(),
            not_recorded,
            missing: missing.iter().map(|&m| m.to_owned()).collect(),
            coverage: None,
            tracking_since: None,
            classes_link_user_hive: None,
            unseen: false,
            limits: missing.len(),
        }
    }

    /// Attaches the coverage of a report about one hive; `complete` then follows it (losses
    /// in other hives no longer count).
    pub fn set_coverage(&mut self, coverage: Coverage) {
        self.complete = coverage.complete() && self.missing.is_empty();
        self.coverage = Some(coverage);
    }

    /// Records something this answer could not see (listed in `missing`): it is then not
    /// complete.
    pub fn cannot_see(&mut self, what: String) {
        self.missing.push(what);
        self.complete = false;
        self.unseen = true;
    }

    /// True when `--strict` must fail and a "free" verdict cannot be trusted: the answer
    /// missed something ([`Source::cannot_see`]), or the report about a hive is not
    /// complete, or (for the other reports) the tracker dropped records. Found in review
    /// (2026-12-05): this once ignored `cannot_see`, so `processes --strict` with tracking
    /// off and `wait` on a forgotten application hive the kernel could not be asked about
    /// exited 0.
    #[must_use]
    pub const fn dropped_records(&self) -> bool {
        self.unseen
            || match &self.coverage {
                Some(c) => !c.complete(),
                None => self.not_recorded > 0,
            }
    }
}

/// A moment, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// 100 ns intervals since 1601-01-01 UTC (Windows FILETIME, `KeQuerySystemTime`).
    pub filetime: u64,
    /// The same moment as `YYYY-MM-DDTHH:MM:SSZ`.
    pub utc: String,
}

/// FILETIME of 1970-01-01 UTC.
pub const UNIX_EPOCH_FILETIME: u64 = 116_444_736_000_000_000;

impl Time {
    /// A time from a FILETIME; `None` for 0 (unknown).
    #[must_use]
    pub fn from_filetime(filetime: u64) -> Option<Self> {
        (filetime != 0).then(|| Self {
            filetime,
            utc: utc_text(filetime),
        })
    }
}

impl Time {
    /// A time from a FILETIME that should be known; 0 gives `filetime` 0 and an empty
    /// `utc` (the driver did not say).
    #[must_use]
    pub fn or_empty(filetime: u64) -> Self {
        Self::from_filetime(filetime).unwrap_or(Self {
            filetime: 0,
            utc: String::new(),
        })
    }
}

/// Formats a FILETIME as `YYYY-MM-DDTHH:MM:SSZ` (times before 1970 are clamped to 1970).
#[must_use]
pub fn utc_text(filetime: u64) -> String {
    let secs = filetime.saturating_sub(UNIX_EPOCH_FILETIME) / 10_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds from `then` to `now` (both FILETIMEs); 0 when `then` is unknown or later.
#[must_use]
pub const fn age_secs(then: u64, now: u64) -> u64 {
    if then == 0 {
        0
    } else {
        now.saturating_sub(then) / 10_000_000
    }
}

/// A short age: `42s`, `25m03s`, `2h05m`, `3d04h`.
#[must_use]
pub fn age_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// A hive as a report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hive {
    /// Opaque id, stable while the driver knows the hive.
    pub id: u32,
    /// Short name (`HKU\S-1-5-…`, `HKLM\SOFTWARE`).
    pub name: String,
    /// NT mount point (`\REGISTRY\USER\S-1-5-…`).
    pub path: String,
    /// Hive file, when known.
    pub file: Option<String>,
    /// The driver stores the file name cut (512 units of an application hive's name, 2,036
    /// of any other): `file` is its beginning. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_truncated: bool,
    /// `loaded`, `implicit` (only seen in key paths) or `unloaded` (kept while keys refer to it).
    pub state: String,
    /// `regular` or `app` (an application hive).
    pub kind: String,
    /// Open keys in the hive, all processes.
    pub open_keys: u64,
    /// Processes holding keys in the hive.
    pub holders: u32,
    /// When the load was seen (hives report only).
    pub loaded_at: Option<Time>,
    /// Hives report only: whether `open_keys` and `holders` can be every key open in the
    /// hive — false when the hive was loaded before tracking began (or when is unknown) or
    /// is an application hive, so keys opened before tracking may be missing from them
    /// (`hivetrack holders` on the hive also asks the kernel's list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_complete: Option<bool>,
    /// The account of the user SID in the name (`CONTOSO\alice`), when resolved.
    pub account: Option<String>,
}

/// One key object a process holds open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldKey {
    /// Opaque object id (never a kernel address); 0 from the fallback backend.
    pub id: u64,
    /// Short name (`HKU\…\Software\Policies`); null when the tracker could not store it.
    pub name: Option<String>,
    /// NT path; null when missing.
    pub path: Option<String>,
    /// The stored name is cut.
    pub name_truncated: bool,
    /// The key was deleted since it was opened: the object lives on and holds the hive, but
    /// the kernel's list of open keys no longer has it.
    #[serde(default)]
    pub deleted: bool,
    /// When it was opened; null when unknown.
    pub opened_at: Option<Time>,
    /// Seconds it has been open at `generated_at`.
    pub age_secs: u64,
    /// Opening thread id; null when unknown.
    pub thread: Option<u64>,
    /// Granted access mask.
    pub access: u32,
    /// `access` in words (`KEY_READ`, `KEY_SET_VALUE`, ...; see `access::names`); empty when
    /// the mask is 0 (not known, from the fallback backend).
    #[serde(default)]
    pub access_names: Vec<String>,
    /// Handles counted as opened on the object (the open itself is one).
    pub handle_opens: u32,
    /// Handle closes seen for the object.
    pub handle_closes: u32,
    /// The processes holding a handle to this key object now (from the system handle table
    /// and the driver's identify request), in pid order; absent when that could not be
    /// asked (see [`HoldersReport::held_now`]). Differs from the holder's pid when the handle
    /// was duplicated or inherited away from its opener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_now_by: Option<Vec<u64>>,
    /// The user-mode stack of its open, resolved (`holders --stacks` only; absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<KeyStack>,
    /// The driver's stack id and stack flags of the key record (not printed: `stack` is).
    #[serde(skip)]
    pub stack_ref: StackRef,
}

/// A key record's stack as the driver named it: id (0: none) and `HolderKey` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackRef {
    /// Stack id of the stacks page; 0 when none was stored.
    pub id: u32,
    /// `STACK_EMPTY`, `STACK_DROPPED`, `STACK_OUT_OF_SCOPE` (other bits cleared).
    pub flags: u32,
}

/// The stack a key was opened from (issue 16).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStack {
    /// The driver's stack id; 0 when none was stored.
    pub id: u32,
    /// What is known of it: `truncated` (outer frames not kept), `empty` (capture was on
    /// but the thread gave no user-mode frame: a kernel-mode opener, or an unreadable
    /// stack), `dropped` (captured but not stored), `out_of_scope` (capture was on for
    /// another hive or image), `not_captured` (capture was off for this open), `unknown_stack` (the id is not on the stacks page), `wow64` (a 32-bit process: the
    /// frames are its 64-bit Wow64 layer's, never its own 32-bit callers), `may_be_partial` (whole,
    /// but its outermost frame is not in the process's ntdll.dll, where a thread's stack
    /// ends: the walk may have stopped at code it could not unwind, as JIT code; also when
    /// ntdll.dll is not known by name, so the end cannot be checked); empty when the frames
    /// are complete.
    pub flags: Vec<String>,
    /// The frames, innermost first.
    pub frames: Vec<Frame>,
}

/// One return address of a stack, resolved against the opening process's modules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The raw user-mode address.
    pub address: u64,
    /// The module it falls in (the image path as the kernel named it; the one loaded last
    /// at or before the key's open time); null when in no known module.
    pub module: Option<String>,
    /// Offset from the module's base; null when in no known module.
    pub offset: Option<u64>,
    /// `function+0xOFF` from the module's symbols (Windows, `DbgHelp`); null when none.
    pub symbol: Option<String>,
    /// `export+0xOFF` when only the module's export table could be had (no symbols): the
    /// nearest export below the address, which the code need not belong to, so `symbol`
    /// stays null. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nearest_export: Option<String>,
    /// As printed: `shellext.dll+0x1a2b`, `shellext.dll!Init+0x2b`,
    /// `KernelBase.dll+0x2a3c1 (no symbols; nearest export RegOpenKeyExW+0x41)` or
    /// `0x000001f000001234 (no module)`.
    pub text: String,
}

/// How complete the stacks of a report are (`holders --stacks`, `modules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCoverage {
    /// Stacks captured but not stored so far (their keys say `dropped`).
    pub stacks_dropped: u64,
    /// Image loads not recorded so far: frames in those images show no module.
    pub modules_dropped: u64,
    /// Whether the driver is told of image loads (stats `image_loads_tracked`); null when
    /// the stats could not be read.
    pub image_loads_tracked: Option<bool>,
}

/// What Windows says of a running process, looked up by pid (`crate::holder_identity`):
/// empty when unknown, exited, not on Windows, or with `--no-resolve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Its Terminal Services session (0: services); null when unknown.
    #[serde(default)]
    pub session: Option<u32>,
    /// The account its primary token runs as (`DOMAIN\name`, or the SID string when the
    /// name does not resolve); null when unknown.
    #[serde(default)]
    pub user: Option<String>,
    /// The services running in it (service names, sorted): a service host's; empty when
    /// none; null when unknown (not looked up, or the service manager could not be read
    /// in full).
    #[serde(default)]
    pub services: Option<Vec<String>>,
}

/// A process holding keys in the hive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u64,
    /// Process start key (with the pid, identifies the process across pid reuse).
    pub start_key: u64,
    /// Image path; null when unknown.
    pub image: Option<String>,
    /// The image path is cut.
    pub image_truncated: bool,
    /// The process has exited; its keys outlive it (inherited or duplicated handles).
    pub exited: bool,
    /// A 32-bit (Wow64) program, as the driver learnt at one of its captured opens: its
    /// stacks show the 64-bit Wow64 layer, never its own 32-bit callers.
    #[serde(default)]
    pub wow64: bool,
    /// Keys it holds open in the hive.
    pub open_keys: u64,
    /// Open time of its oldest key in the hive.
    pub oldest_open: Option<Time>,
    /// Seconds its oldest key has been open at `generated_at`.
    pub oldest_age_secs: u64,
    /// Its keys, oldest first (empty with `--summary`, and with `--grouped`: see
    /// [`HoldersReport::grouped`]).
    pub keys: Vec<HeldKey>,
    /// The same keys grouped by name as the table prints them (a deleted key apart), in the
    /// order of their oldest open: one entry per group with its `count` of key objects,
    /// adding up to the keys listed. Empty with `--summary`. Absent (empty) from CLIs before
    /// 2026-12-06 (audit 23b, M3).
    #[serde(default)]
    pub key_counts: Vec<HeldKeyCount>,
    /// Who it is (`session`, `user`, `services`), looked up by pid while it runs.
    #[serde(flatten)]
    pub identity: Identity,
}

/// `hivetrack holders`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldersReport {
    /// `hivetrack.holders/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// When the report was made (the client's clock).
    pub generated_at: Time,
    /// The hive.
    pub hive: Hive,
    /// Processes holding keys, in pid order.
    pub holders: Vec<Holder>,
    /// Keys the kernel lists open in the hive that the driver has no record of, per process:
    /// opened before tracking started (or lost). Empty when the kernel could not be asked.
    #[serde(default)]
    pub untracked: Vec<UntrackedHolder>,
    /// Whether the holder now of each key could be asked (absent when not tried: summary
    /// answers, the fallback backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_now: Option<HeldNowCoverage>,
    /// How complete the keys' stacks are (`--stacks` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StackCoverage>,
    /// The answer in one word, as `--fail-if-held` exits on it: `held` (keys open: exit 1),
    /// `none_seen_incomplete` (none seen, but the report could not see everything that can
    /// hold the hive: exit 4) or `free` (none, and the report is complete: exit 0). Found in
    /// audit 20b: a script had to recompute it, and one testing only `holders` missed the
    /// keys only the kernel lists (`untracked`). Absent from CLIs before 2026-12-06.
    #[serde(default)]
    pub verdict: HoldersVerdict,
    /// Processes holding keys in this hive whose opens the tracker refused to record (their
    /// keys here may be more than listed; the kernel's list, `untracked`, has the rest).
    /// Empty when none, or when the driver's counters could not be read: then
    /// `source.missing` says so (review 23d, L5). Absent (empty) from CLIs before 2026-12-06.
    #[serde(default)]
    pub short_counts: Vec<ShortCount>,
    /// `holders --grouped`: each holder's `keys` and each untracked entry's `keys` are left
    /// out (empty); `key_counts` has them grouped by name, with every count, completeness and
    /// caveat field as without it. Absent (false) without `--grouped` (audit 23b, M3: the
    /// per-object list of a 65,602-key leak was 45.7 MB of JSON).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grouped: bool,
    /// `holders --pid N`: only process N's entries are in `holders`, `untracked` and
    /// `short_counts` (as the opener the driver or the kernel records); `hive`'s counts and
    /// `verdict` stay the whole hive's. Absent without `--pid` (audit 23b, M6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_filter: Option<u64>,
}

/// `hivetrack capture`: the driver's stack-capture scope after the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// `hivetrack.capture/1`.
    pub schema: String,
    /// Who answered.
    pub source: Source,
    /// `off`, `all`, `hive` or `image`.
    pub scope: String,
    /// The hive (NT path) or image file name of the scope; null otherwise.
    pub target: Option<String>,
    /// The hive's short name (`HKU\S-1-5-…`) for a hive scope; null otherwise.
    pub hive: Option<String>,
    /// When this scope was set; null when capture was never on.
    pub since: Option<Time>,
    /// Most frames the driver keeps per stack.
    pub max_frames: u32,
}

/// A module that opened keys still held, ranked (`hivetrack modules`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankedModule {
    /// The image path as the kernel named it; null for frames in no known module.
    pub module: Option<String>,
    /// Its file name (`shellext.dll`), or `(no module)`.
    pub name: String,
    /// Every frame of its keys' stacks was OS registry plumbing: the module is the
    /// innermost frame's (see the README), not a caller.
    pub plumbing_only: bool,
    /// Held keys attributed to it.
    pub keys: u64,
    /// Processes holding them.
    pub processes: u64,
    /// Those processes: `image (pid)`, `, exited` when gone.
    pub holders: Vec<String>,
    /// A few of the keys (short names).
    pub example_keys: Vec<String>,
}

/// Held keys that could not be attributed to a module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithoutStack {
    /// Capture was off for their open.
    pub not_captured: u64,
    /// Capture was on, but the thread gave no user-mode frame (a kernel-mode opener).
    pub empty: u64,
    /// Captured but not stored.
    pub dropped: u64,
    /// Keys only the kernel lists (opened before tracking started, or lost): no record, so
    /// no stack.
    #[serde(default)]
    pub untracked: u64,
    /// Opened by a 32-bit (Wow64) process: the stack holds only its 64-bit Wow64 layer, so
    /// it names no caller.
    #[serde(default)]
    pub wow64: u64,
    /// Cut at the driver's frame limit while still inside the OS registry plumbing: the
    /// caller was not captured, so the key is not filed under the OS (audit 20b, L7).
    #[serde(default)]
    pub cut_in_plumbing: u64,
}

/// `hivetrack modules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulesReport {
    /// `hivetrack.modules/1`.
    pub schema: String,
    /// Who answered, how complete (the holders answers').
    pub source: Source,
    /// The hives covered (short names).
    pub hives: Vec<String>,
    /// Held keys examined.
    pub held_keys: u64,
    /// The modules, most keys first.
    pub modules: Vec<RankedModule>,
    /// Held keys with no stack to attribute.
    pub without_stack: WithoutStack,
    /// How complete the stacks are.
    pub stacks: StackCoverage,
}

/// How the holders now were found: key handles of other processes examined in the system
/// handle table, those that could not be (protected processes), or why it could not be done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldNowCoverage {
    /// Key handles duplicated and identified by the driver.
    pub handles_examined: u64,
    /// Key handles that could not be duplicated (a key held only through them shows no
    /// holder now).
    pub handles_not_examined: u64,
    /// Key handles duplicated whose key is in another hive (by its name): not asked about.
    #[serde(default)]
    pub handles_other_hives: u64,
    /// Why nothing could be asked; null when it was.
    pub error: Option<String>,
    /// The processes named in `held_now_by` that are not the key's holder in the report,
    /// with their images (looked up in user mode now; null when unknown).
    #[serde(default)]
    pub processes: Vec<HeldNowProcess>,
}

/// A process holding a key now that the report names under another process (its opener).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldNowProcess {
    /// Process id.
    pub pid: u64,
    /// Image path; null when unknown.
    pub image: Option<String>,
}

/// A process the kernel lists with keys open in the hive that the driver never saw opened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrackedHolder {
    /// Process id (the process that opened the keys, as the kernel records it).
    pub pid: u64,
    /// Image path (whole) of the process running with that pid now: the driver's record of
    /// it, or looked up in user mode; null when unknown (the process is gone) or when that
    /// process cannot be shown to be the opener (created after tracking started).
    pub image: Option<String>,
    /// How many such keys.
    pub open_keys: u64,
    /// Their NT paths, as the kernel lists them: one entry per key object, so a key opened
    /// 65,602 times is 65,602 entries (see `key_counts`).
    pub keys: Vec<String>,
    /// The same keys grouped by name, in name order: each distinct NT path once with how
    /// many key objects the kernel lists for it (`name`, `count`; the counts add up to
    /// `open_keys`). Found in audit 23b (H1): a leak from before tracking printed one line
    /// per key object. Absent (empty) from CLIs before 2026-12-06.
    #[serde(default)]
    pub key_counts: Vec<KeyCount>,
    /// These keys are probably hivetrack.sys's own (set only when System holds exactly one
    /// such key the driver has no record of; the driver does not say which is its own:
    /// review 22a, L6): the hive list's key
    /// (`\REGISTRY\MACHINE\SYSTEM\ControlSet00N\Control\hivelist`) the driver opens in
    /// `DriverEntry`, before its callback (so it has no record of it), and keeps for its life
    /// to read the list again. It does hold the SYSTEM hive open, so it is counted; it is
    /// labelled so that nobody goes looking for the process behind it (review 21a, L3).
    /// Absent (false) from CLIs before 2026-12-06.
    #[serde(default)]
    pub hivetrack_own: bool,
    /// How many of this process's key objects in the kernel's list went, in list order, to
    /// its records this report does not name (a key whose name the tracker could not store,
    /// or every key with `--summary`): which objects those are cannot be told, so up to that
    /// many of the `keys` here may be theirs rather than open before tracking started, the
    /// objects they took being the ones open before (review 24b, LOW-4: which key read as
    /// untracked was the list's order). 0 when none; absent (0) from CLIs before 2026-12-06.
    #[serde(default)]
    pub unnamed_records: u64,
}

/// A process holding keys only the kernel lists (`processes --kernel`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelOnlyProcess {
    /// Process id (the opener, as the kernel records it).
    pub pid: u64,
    /// Image path of the process running with that pid now; null when unknown or when it
    /// cannot be shown to be the opener.
    pub image: Option<String>,
    /// Key objects the kernel lists for it that the driver has no record of.
    pub open_keys: u64,
    /// Hives they are in.
    pub hives: u64,
}

/// A process whose opens the tracker refused to record.
///
/// From the driver's `stats` (`top_dropper_*` and `top_refused_*`): its key count in
/// `processes` and `holders` is a lower bound. Found in audit 23b (M1): only `stats` named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortCount {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Opens of it not recorded.
    pub not_recorded: u64,
    /// Why: `memory_share` (it used its share of the budget, `process_share_bytes`) or
    /// `memory_budget` (an allocation was refused: the whole budget spent, or the pool).
    pub cause: String,
}

/// One distinct key name of an [`UntrackedHolder`] and how many key objects of it the
/// kernel lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    /// The NT path, as the kernel lists it.
    pub name: String,
    /// How many key objects of this name the process has open.
    pub count: u64,
}

/// One group of a tracked holder's key objects with the same name (`Holder::key_counts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldKeyCount {
    /// Short name (`HKU\…`) of the group's oldest key; null for the keys whose name the
    /// tracker could not store (one group for them all: they may be different keys).
    pub name: Option<String>,
    /// NT path of the group's oldest key; null when missing.
    pub path: Option<String>,
    /// How many key objects the group has.
    pub count: u64,
    /// A name in the group was cut short: the group may hold different keys whose names
    /// begin alike.
    pub name_truncated: bool,
    /// The group's keys were deleted since they were opened (they still hold the hive).
    pub deleted: bool,
    /// Open time of the group's oldest key; null when none is known.
    pub oldest_open: Option<Time>,
    /// Seconds the oldest has been open at `generated_at`.
    pub oldest_age_secs: u64,
    /// Each distinct access mask of the group in words, joined by `|` (`KEY_READ`), in
    /// order of first appearance; empty when none is known.
    pub access_names: Vec<String>,
    /// The pids holding a handle to each of the group's key objects now (sorted): the same
    /// for every object of the group, since objects held now by different processes, or
    /// not asked about, are grouped apart (review 24b, MED-1: a union of the objects' pids
    /// read "held by 7" for a group with one object no process holds). Empty: no process
    /// hivetrack could examine holds them; absent when that was not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_now_by: Option<Vec<u64>>,
}

/// A key object's holders now as a group tells them apart: sorted, each pid once; `None`
/// when not asked.
fn held_now_set(k: &HeldKey) -> Option<Vec<u64>> {
    k.held_now_by.as_ref().map(|by| {
        let mut by = by.clone();
        by.sort_unstable();
        by.dedup();
        by
    })
}

/// Groups a holder's keys by name as the table does.
///
/// Short names are compared ASCII case-insensitively, a deleted key apart from one created
/// with its name since, keys held now by different sets of processes (or not asked about)
/// apart, so a group's holders now are every object's (review 24b, MED-1), the keys without
/// a stored name together; groups in the order of their first key (oldest first). One hash
/// lookup per key (audit 23b, L6: a search of the groups per key was quadratic in the
/// distinct names).
#[must_use]
pub fn group_held_keys(keys: &[HeldKey]) -> Vec<Vec<&HeldKey>> {
    type GroupId = (Option<String>, bool, Option<Vec<u64>>);
    let mut index: std::collections::HashMap<GroupId, usize> =
        std::collections::HashMap::with_capacity(keys.len().min(1 << 16));
    let mut groups: Vec<Vec<&HeldKey>> = Vec::new();
    for k in keys {
        let id = (
            k.name.as_ref().map(|n| n.to_ascii_uppercase()),
            k.deleted,
            held_now_set(k),
        );
        let i = *index.entry(id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(k);
    }
    groups
}

/// A holder's [`HeldKeyCount`]s (`group_held_keys`).
#[must_use]
pub fn held_key_counts(keys: &[HeldKey]) -> Vec<HeldKeyCount> {
    group_held_keys(keys)
        .into_iter()
        .map(|g| {
            let first = g[0];
            let oldest = g
                .iter()
                .filter(|k| k.opened_at.is_some())
                .max_by_key(|k| k.age_secs);
            let mut access_names: Vec<String> = Vec::new();
            for k in g.iter().filter(|k| k.access != 0) {
                let text = crate::access::text(k.access);
                if !access_names.contains(&text) {
                    access_names.push(text);
                }
            }
            // The same for every object of the group (`group_held_keys`).
            let held_now_by = held_now_set(first);
            HeldKeyCount {
                name: first.name.clone(),
                path: first.path.clone(),
                count: g.len() as u64,
                name_truncated: g.iter().any(|k| k.name_truncated),
                deleted: first.deleted,
                oldest_open: oldest.and_then(|k| k.opened_at.clone()),
                oldest_age_secs: oldest.map_or(0, |k| k.age_secs),
                access_names,
                held_now_by,
            }
        })
        .collect()
}

/// Fills each holder's `key_counts`, and with `leave_out_objects` leaves out the objects.
///
/// `leave_out_objects` (`holders --grouped`) empties the per-object `keys` lists, tracked
/// and untracked, and marks the report `grouped`. Counts, verdict and completeness are left
/// as they are.
pub fn group_keys(r: &mut HoldersReport, leave_out_objects: bool) {
    for h in &mut r.holders {
        h.key_counts = held_key_counts(&h.keys);
        if leave_out_objects {
            h.keys = Vec::new();
        }
    }
    if leave_out_objects {
        for u in &mut r.untracked {
            if u.key_counts.is_empty() {
                u.key_counts = key_counts(&u.keys);
            }
            u.keys = Vec::new();
        }
        r.grouped = true;
    }
}

/// Groups sorted key names into [`KeyCount`]s (equal names adjacent).
#[must_use]
pub fn key_counts(keys: &[String]) -> Vec<KeyCount> {
    let mut out: Vec<KeyCount> = Vec::new();
    for k in keys {
        match out.last_mut() {
            Some(last) if last.name == *k => last.count += 1,
            _ => out.push(KeyCount {
                name: k.clone(),
                count: 1,
            }),
        }
    }
    out
}

/// `hivetrack hives`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HivesReport {
    /// `hivetrack.hives/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// Every hive the driver knows, in id order.
    pub hives: Vec<Hive>,
}

/// A process ranked by open keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Image path; null when unknown.
    pub image: Option<String>,
    /// The image path is cut.
    pub image_truncated: bool,
    /// The process has exited.
    pub exited: bool,
    /// Tracked key objects it opened that still exist.
    pub open_keys: u64,
    /// Hives it holds keys in.
    pub hives: u32,
    /// Who it is (`session`, `user`, `services`), looked up by pid while it runs.
    #[serde(flatten)]
    pub identity: Identity,
}

/// `hivetrack processes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessesReport {
    /// `hivetrack.processes/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// Most open keys first.
    pub processes: Vec<ProcessEntry>,
    /// Processes left out by `--top` (absent when none were).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
    /// `processes --kernel`: per process, the keys the kernel lists in any loaded hive that
    /// the driver has no record of (opened before tracking started), most first. Absent
    /// without `--kernel` (audit 23b, H1: such a process was in no listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_only: Option<Vec<KernelOnlyProcess>>,
    /// `processes --kernel`: loaded hives whose kernel list could not be read (each named
    /// in `source.missing`); not in JSON, which has them there.
    #[serde(skip)]
    pub kernel_missed: usize,
    /// Processes whose opens the tracker refused to record: their `open_keys` is a lower
    /// bound. Empty when none, or when the driver's counters (or the process list) could not
    /// be read: then `source.missing` says so (review 23d, L5). Absent (empty) from CLIs
    /// before 2026-12-06.
    #[serde(default)]
    pub short_counts: Vec<ShortCount>,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
const fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `hivetrack stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// `hivetrack.stats/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// Every counter by its protocol name, in protocol order.
    pub counters: Vec<Counter>,
}

/// One counter of `stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Protocol name (`objects_tracked`, `opens_dropped_cap`, ...).
    pub name: String,
    /// `gauge`, `event` or `loss` (losses add up to `source.not_recorded`).
    pub class: String,
    /// Value.
    pub value: u64,
}

/// One tracked key object of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotKey {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Opaque object id.
    pub id: u64,
    /// Open time (FILETIME).
    pub open_time: u64,
    /// Hive id (see `hives`).
    pub hive_id: u32,
    /// NT path (lossy UTF-8 of the registry's UTF-16); empty when missing.
    pub path: String,
    /// The stored name is cut.
    pub name_truncated: bool,
    /// The name could not be stored.
    pub name_missing: bool,
}

/// `hivetrack snapshot -o FILE`: the file `diff` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// `hivetrack.snapshot/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// When the driver took the first page.
    pub taken_at: Time,
    /// Hives at that moment (to name `hive_id`s).
    pub hives: Vec<Hive>,
    /// Processes at that moment (to name pids).
    pub processes: Vec<ProcessEntry>,
    /// Every tracked key object, per process, per hive, oldest first.
    pub keys: Vec<SnapshotKey>,
}

/// How one process's open objects on one key changed between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Image path, from either snapshot; null when unknown.
    pub image: Option<String>,
    /// Short key name.
    pub name: String,
    /// Open objects in the first snapshot.
    pub before: u64,
    /// Open objects in the second snapshot.
    pub after: u64,
    /// `after - before`.
    pub delta: i64,
}

/// `hivetrack diff A B`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    /// `hivetrack.diff/1`.
    pub schema: String,
    /// When A was taken.
    pub before: Time,
    /// When B was taken.
    pub after: Time,
    /// Both snapshots complete and taken in one run of tracking: every change is shown, and
    /// every change shown happened.
    pub complete: bool,
    /// The changes shown happened, though some may not show: one run of tracking took both
    /// snapshots and neither counted a loss, so every open and close between them is in the
    /// rows; keys opened before tracking began are in neither snapshot, and their closes
    /// cannot show. True whenever `complete` is. Audit 23b: a diff on any machine not tracking from
    /// boot read "differences may not be real" although its growth was.
    pub changes_real: bool,
    /// Largest growth first.
    pub entries: Vec<DiffEntry>,
}

/// A process that held keys when an unload was attempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadHolder {
    /// Process id.
    pub pid: u64,
    /// Process start key.
    pub start_key: u64,
    /// Image path; null when unknown.
    pub image: Option<String>,
    /// Keys it held in the hive.
    pub open_keys: u64,
}

/// One unload attempt, or the driver's look again at a hive after a failed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent flags of the driver's record, each a field of the JSON document"
)]
pub struct UnloadAttempt {
    /// Sequence number (1 = first since the driver started).
    pub sequence: u64,
    /// When.
    pub time: Option<Time>,
    /// Short name of the mount point.
    pub hive: String,
    /// NT mount point as given to the unload.
    pub path: String,
    /// The NTSTATUS the unload returned, as `0xC0000121`.
    pub status: String,
    /// Its symbolic name when known (`STATUS_CANNOT_DELETE`).
    pub status_name: Option<String>,
    /// The unload succeeded.
    pub succeeded: bool,
    /// What the record is, in one word for a script: `unloaded`, `deferred`
    /// (`STATUS_PENDING`: Windows unloads the hive later, with no notification), `failed`
    /// (any other status), or `held_after` (not an attempt: the driver's look again after a
    /// failed one, which repeats that attempt's status). Found in audit 20b: counting the
    /// records with `succeeded` false counted one failed logoff twice and every deferred
    /// unload as a failure.
    pub outcome: UnloadOutcome,
    /// Open keys in the hive then.
    pub open_keys: u64,
    /// Processes holding keys then.
    pub holders_total: u32,
    /// More processes held keys than the record lists.
    pub holders_truncated: bool,
    /// The mount point was not a hive the driver knew.
    pub unknown_hive: bool,
    /// The biggest holders (at most 8).
    pub holders: Vec<UnloadHolder>,
    /// Not an unload: the driver looked at the hive again its configured delay after a
    /// failed unload and found it still held (or could not see whether it was); `time` is
    /// when it looked, `status` the failed attempt's, the holders those then.
    #[serde(default)]
    pub held_after: bool,
    /// A held-after record: seconds since the failed unload it follows (the latest failed
    /// attempt of the hive before it in the history); null when that attempt is no longer
    /// kept, and for unload attempts.
    #[serde(default)]
    pub held_for_secs: Option<u64>,
    /// A held-after record: the sequence number of that failed unload; null as above.
    #[serde(default)]
    pub failed_unload_sequence: Option<u64>,
    /// The driver cannot vouch that it saw every open in the hive (keys opened before its
    /// tracking began, or opens it lost): processes not listed may also hold keys.
    #[serde(default)]
    pub holders_unseen: bool,
}

/// What an unload-history record is ([`UnloadAttempt::outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnloadOutcome {
    /// The unload succeeded.
    Unloaded,
    /// `STATUS_PENDING`: accepted, completed later by Windows with no notification.
    Deferred,
    /// Any other status: the hive stayed loaded.
    Failed,
    /// The driver's look again after a failed unload, not an attempt.
    HeldAfter,
}

impl UnloadOutcome {
    /// The outcome of a record with NTSTATUS `status` (`held_after`: the driver's look
    /// again).
    #[must_use]
    pub const fn of(status: u32, held_after: bool) -> Self {
        match (held_after, status) {
            (true, _) => Self::HeldAfter,
            (false, 0) => Self::Unloaded,
            (false, 0x0000_0103) => Self::Deferred,
            (false, _) => Self::Failed,
        }
    }
}

/// What a holders report says of its hive ([`HoldersReport::verdict`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldersVerdict {
    /// Keys are open in the hive (the driver's or the kernel's).
    Held,
    /// None seen, but the report could not see everything that can hold the hive (the
    /// default: a document that does not say claims nothing).
    #[default]
    NoneSeenIncomplete,
    /// None, and the report is complete.
    Free,
}

impl HoldersVerdict {
    /// The verdict of `r`, from its lists and counts (which may be the page's counters read
    /// before the walk: `client::count_held`) and its completeness.
    #[must_use]
    pub const fn of(r: &HoldersReport) -> Self {
        if !(r.holders.is_empty() && r.untracked.is_empty())
            || r.hive.open_keys > 0
            || r.hive.holders > 0
        {
            Self::Held
        } else if r.source.dropped_records() {
            Self::NoneSeenIncomplete
        } else {
            Self::Free
        }
    }
}

/// `hivetrack unload-history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadHistoryReport {
    /// `hivetrack.unload-history/1`.
    pub schema: String,
    /// Who answered, how complete. `source.tracking_since`: when the driver's tracking began;
    /// attempts before it are not recorded.
    pub source: Source,
    /// Newest first.
    pub attempts: Vec<UnloadAttempt>,
    /// Entries of the driver's history it no longer keeps, numbered before its oldest kept
    /// one (evicted by newer entries: it holds 32, key-count alarms and held-after records
    /// among them; or never stored): attempts may be missing from `attempts`, and
    /// `source.complete` is false. 0: every entry since tracking began is kept. Null when it
    /// could not be read (absent from CLIs before 2026-12-06).
    #[serde(default)]
    pub entries_not_kept: Option<u64>,
}

/// `hivetrack wait`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitReport {
    /// `hivetrack.wait/1`.
    pub schema: String,
    /// Who answered, how complete.
    pub source: Source,
    /// Short hive name.
    pub hive: String,
    /// True only when [`WaitReport::verdict`] is `free`: no key is open in the hive (or it
    /// was unloaded) and the answer could see everything that can hold it. Until 2026-12-06
    /// it was true whenever no key was seen, complete or not (audit 20b, M1): a script that
    /// read `.free` went on while `complete` was false and the exit code 4.
    pub free: bool,
    /// How the wait ended, the same verdict as the exit code.
    pub verdict: WaitVerdict,
    /// How the wait was done: `poll` (repeated `holders` queries) or `wait-free` (the
    /// driver's pending request, once it exists).
    pub method: String,
    /// Seconds waited.
    pub waited_secs: f64,
    /// Open keys at the last look.
    pub open_keys: u64,
    /// Processes holding keys at the last look.
    pub holders: u32,
    /// Free (no process holds a key), but the hive's deferred unload (`NtUnloadKeyEx`, the
    /// driver's last unload attempt on it returned `STATUS_PENDING`) had not completed at the
    /// last look: the kernel still has the hive loaded, and its file stays in use until
    /// Windows unloads it, with no notification, up to about 5 s after the last key's close
    /// (Windows Research Kernel `cmdelay.c`: the delayed dereference of the closed keys'
    /// control blocks). The wait goes on until the kernel no longer has the hive, or the
    /// timeout. Absent (false) from CLIs before 2026-12-06.
    #[serde(default)]
    pub unload_pending: bool,
}

/// How `hivetrack wait` ended (`verdict` in `hivetrack.wait/1`, one word for a script to
/// test; the exit code says the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitVerdict {
    /// No key open in the hive, or it was unloaded, and the answer is complete (exit 0).
    Free,
    /// No key seen open at the last look, but the answer could not see everything that can
    /// hold the hive (`source.missing`, `source.coverage`): it may still be held (exit 4).
    NoneSeenIncomplete,
    /// The timeout passed with keys still open at the last look (`open_keys`, `holders`;
    /// exit 1).
    Held,
    /// The driver's wait timed out, but the look after it named no holder: the keys closed
    /// in between, or who holds the hive could not be read (`source.missing`; exit 1).
    TimedOut,
    /// No holder left, but the hive's deferred unload had not completed when the timeout
    /// passed: still loaded, its file in use (`unload_pending`; exit 1).
    UnloadPending,
}

impl WaitVerdict {
    /// The verdict of a wait that ended with `open_keys` keys open in the hive by `holders`
    /// processes at its last look, as seen by `source`; `timed_out` when the driver's own
    /// wait ended on its timeout.
    #[must_use]
    pub const fn of(source: &Source, open_keys: u64, holders: u32, timed_out: bool) -> Self {
        if open_keys > 0 || holders > 0 {
            Self::Held
        } else if timed_out {
            Self::TimedOut
        } else if source.dropped_records() {
            Self::NoneSeenIncomplete
        } else {
            Self::Free
        }
    }

    /// Whether the hive was still held as far as the wait saw (exit 1).
    #[must_use]
    pub const fn held(self) -> bool {
        matches!(self, Self::Held | Self::TimedOut | Self::UnloadPending)
    }
}

/// The `hivetrack.<name>/1` schema id.
#[must_use]
pub fn schema(name: &str) -> String {
    format!("hivetrack.{name}/1")
}

/// The symbolic name of an NTSTATUS an unload may return, or of why live tracking is off.
#[must_use]
pub const fn ntstatus_name(status: u32) -> Option<&'static str> {
    Some(match status {
        0 => "STATUS_SUCCESS",
        0x0000_0103 => "STATUS_PENDING",
        0xC000_0121 => "STATUS_CANNOT_DELETE",
        0xC000_0189 => "STATUS_TOO_LATE",
        0xC000_0022 => "STATUS_ACCESS_DENIED",
        0xC000_0034 => "STATUS_OBJECT_NAME_NOT_FOUND",
        0xC000_000D => "STATUS_INVALID_PARAMETER",
        0xC000_0061 => "STATUS_PRIVILEGE_NOT_HELD",
        0xC000_009A => "STATUS_INSUFFICIENT_RESOURCES",
        0xC000_007A => "STATUS_PROCEDURE_NOT_FOUND",
        0xC000_0002 => "STATUS_NOT_IMPLEMENTED",
        0xC01C_0011 => "STATUS_FLT_INSTANCE_ALTITUDE_COLLISION",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes_format_as_utc() {
        assert_eq!(utc_text(UNIX_EPOCH_FILETIME), "1970-01-01T00:00:00Z");
        // 2026-11-22T04:00:00Z = 1795320000 s after the Unix epoch.
        let t = UNIX_EPOCH_FILETIME + 1_795_320_000 * 10_000_000;
        assert_eq!(utc_text(t), "2026-11-22T04:00:00Z");
        // 2000-02-29T23:59:59Z = 951868799.
        let t = UNIX_EPOCH_FILETIME + 951_868_799 * 10_000_000;
        assert_eq!(utc_text(t), "2000-02-29T23:59:59Z");
        assert_eq!(Time::from_filetime(0), None);
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age_text(42), "42s");
        assert_eq!(age_text(25 * 60 + 3), "25m03s");
        assert_eq!(age_text(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600), "3d04h");
        assert_eq!(age_secs(0, 99), 0);
        assert_eq!(age_secs(10, 5), 0);
        assert_eq!(age_secs(10_000_000, 30_000_000), 2);
    }

    fn held(name: Option<&str>, age: u64, access: u32) -> HeldKey {
        HeldKey {
            id: age,
            name: name.map(str::to_owned),
            path: name.map(|n| n.replace("HKU", r"\REGISTRY\USER")),
            name_truncated: false,
            deleted: false,
            opened_at: Time::from_filetime(1000 - age),
            age_secs: age,
            thread: None,
            access,
            access_names: Vec::new(),
            handle_opens: 1,
            handle_closes: 0,
            held_now_by: None,
            stack: None,
            stack_ref: StackRef::default(),
        }
    }

    /// Review 24b, MED-1: a group's `held_now_by` was the union of its objects' holders, so
    /// 2004's objects of one key, one of them held by no process hivetrack could examine and
    /// one also by 9 (a duplicated handle), read "held now by 2004" / "by 2004 and 9": killing
    /// 2004 would not free the hive, and how many 9 holds was lost. Objects held by different
    /// sets are grouped apart, each group's holders those of every object in it. Old code:
    /// 2 checks fail (the groups, the counts held by 9).
    #[test]
    fn a_group_never_reads_as_held_by_more_or_fewer_than_each_object_is() {
        let mut keys: Vec<HeldKey> = (0..5)
            .map(|age| {
                let mut k = held(Some(r"HKU\S\X"), 10 - age, 0x2_0019);
                k.held_now_by = Some(vec![2004]);
                k
            })
            .collect();
        keys[1].held_now_by = Some(vec![]);
        keys[3].held_now_by = Some(vec![9, 2004]);
        let g = held_key_counts(&keys);
        let groups: Vec<(u64, Option<&[u64]>)> = g
            .iter()
            .map(|c| (c.count, c.held_now_by.as_deref()))
            .collect();
        assert_eq!(
            groups,
            [
                (3, Some(&[2004][..])),
                (1, Some(&[][..])),
                (1, Some(&[9, 2004][..])),
            ]
        );
        let by_9: u64 = g
            .iter()
            .filter(|c| c.held_now_by.as_ref().is_some_and(|by| by.contains(&9)))
            .map(|c| c.count)
            .sum();
        assert_eq!(by_9, 1, "how many of the key's objects 9 holds");
    }

    /// `key_counts` of a tracked holder (audit 23b, M3) never says more than the objects do:
    /// a cut name or a missing one is kept as such, a deleted key is its own group.
    #[test]
    fn held_key_groups_keep_what_the_objects_could_not_say() {
        let mut cut = held(Some(r"HKU\S\Long"), 3, 0x2_0019);
        cut.name_truncated = true;
        let mut gone = held(Some(r"HKU\S\a"), 1, 0x2_0019);
        gone.deleted = true;
        let mut by_other = held(Some(r"HKU\S\a"), 4, 0x2_0006);
        by_other.held_now_by = Some(vec![9, 7]);
        let keys = [
            held(Some(r"HKU\S\A"), 9, 0x2_0019),
            cut,
            held(None, 5, 0),
            gone,
            by_other,
            held(Some(r"HKU\S\Long"), 2, 0x2_0019),
            held(None, 8, 0),
        ];
        let g = held_key_counts(&keys);
        let summary: Vec<(Option<&str>, u64, bool, bool, u64)> = g
            .iter()
            .map(|c| {
                (
                    c.name.as_deref(),
                    c.count,
                    c.name_truncated,
                    c.deleted,
                    c.oldest_age_secs,
                )
            })
            .collect();
        // The key held now by 9 and 7 is apart from its name's key not asked about
        // (review 24b, MED-1).
        assert_eq!(
            summary,
            [
                (Some(r"HKU\S\A"), 1, false, false, 9),
                (Some(r"HKU\S\Long"), 2, true, false, 3),
                (None, 2, false, false, 8),
                (Some(r"HKU\S\a"), 1, false, true, 1),
                (Some(r"HKU\S\a"), 1, false, false, 4),
            ]
        );
        assert_eq!(g[0].access_names, ["KEY_READ"]);
        assert_eq!(g[4].access_names, ["KEY_WRITE"]);
        assert_eq!(g[4].held_now_by, Some(vec![7, 9]));
        assert_eq!(g[0].held_now_by, None, "not asked");
        assert!(g[2].access_names.is_empty(), "0: not known");
        assert_eq!(g.iter().map(|c| c.count).sum::<u64>(), keys.len() as u64);
    }
}
