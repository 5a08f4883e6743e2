//! hivetrack's own events (issue 17), as the Event Log and `--jsonl` get them.
//!
//! `hivetrack service` writes them to the Windows Event Log (source `hivetrack`,
//! Application log, beside the User Profile Service's event 1530) and, with `--jsonl`, as
//! JSON lines. Pure: an event is built from the driver's stream records and what the service learned
//! (accounts, holder identities, a re-check), then turned into its message text, its
//! Event Log insertion strings (the `EventData` of the event, in the fixed order of
//! [`EVENT_DATA_FIELDS`], then [`HOLDER_FIELDS`] for each of [`EVENT_HOLDERS`] holders, then
//! [`HOLDER_DETAIL_FIELDS`] for each holder again, then [`LATER_FIELDS`]) and its
//! JSON object (the same fields, `snake_case` as every hivetrack JSON document). The message
//! table (`usermode-client/messages/hivetrack-events.mc`) renders `%1`, the message, followed by the
//! fields; its message ids are [`EventId`]'s.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::hive_name::user_sid;
use crate::model::{Time, ntstatus_name, schema};

/// The Event IDs (the message ids of the message table; the Event Log shows them as is:
/// the table sets no severity or facility bits, the level is the event type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum EventId {
    /// 1001, Warning: a hive unload failed; who held it.
    UnloadFailed = 1001,
    /// 1002, Warning: the hive is still held some time after its failed unload (the driver's
    /// own look again, `HeldAfterSeconds` after the attempt; with a driver that does not look
    /// again, the service asks it again after `--still-held-after` seconds), or after its
    /// deferred unload (`STATUS_PENDING`; the driver's look again only).
    StillHeld = 1002,
    /// 1003, Warning: a process reached the driver's key-count alarm threshold.
    KeyAlarm = 1003,
    /// 1010, Information: the service is connected to the driver (at start, or again after
    /// the driver was unavailable), with since when the driver tracks.
    Connected = 1010,
    /// 1011, Warning: event numbers the driver did not deliver (evicted from its history
    /// before the service read them, or never stored: no memory, a full watch table).
    Missed = 1011,
    /// 1012, Warning: the driver restarted (a new tracking start; sequence numbers begin
    /// again at 1).
    DriverRestarted = 1012,
    /// 1013, Warning: the driver cannot be reached, or has no event stream.
    DriverUnavailable = 1013,
    /// 1014, Warning: events one of the service's outputs (the Application log, `--jsonl`)
    /// refused; written to the outputs that accept it, and again to the refusing one once it
    /// accepts an event (audit 22b, M4: the refusals were counted and never said under the
    /// service manager).
    NotWritten = 1014,
}

impl EventId {
    /// Every id, in number order.
    pub const ALL: [Self; 8] = [
        Self::UnloadFailed,
        Self::StillHeld,
        Self::KeyAlarm,
        Self::Connected,
        Self::Missed,
        Self::DriverRestarted,
        Self::DriverUnavailable,
        Self::NotWritten,
    ];

    /// The number the Event Log shows.
    #[must_use]
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// Its level.
    #[must_use]
    pub const fn level(self) -> Level {
        match self {
            Self::Connected => Level::Information,
            _ => Level::Warning,
        }
    }
}

impl From<EventId> for u32 {
    fn from(id: EventId) -> Self {
        id.number()
    }
}

impl TryFrom<u32> for EventId {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|id| id.number() == n)
            .ok_or_else(|| format!("{n} is not a hivetrack event id"))
    }
}

/// An event's level (the Event Log's event type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// `EVENTLOG_INFORMATION_TYPE`.
    Information,
    /// `EVENTLOG_WARNING_TYPE`.
    Warning,
}

/// A process named in an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHolder {
    /// Process id.
    pub pid: u64,
    /// Image path as the driver reports it; null when unknown.
    pub image: Option<String>,
    /// The services running in it (a service host's), looked up by pid on Windows while it
    /// runs; null when not looked up or unknown.
    pub services: Option<Vec<String>>,
    /// Keys it held open in the hive (for a key-count alarm: all its open keys).
    pub keys: u64,
    /// Names of its oldest held keys in the hive, oldest first, at most [`KEY_NAMES`]
    /// (more exist when `keys` is larger). Read from the driver when the service handles a
    /// 1001/1002 event and the hive is still known; empty otherwise (never guessed).
    #[serde(default)]
    pub key_names: Vec<String>,
    /// The modules that opened its held keys in the hive, by file name, attributed as
    /// `hivetrack modules` does (first frame outside the OS registry plumbing; see
    /// [`crate::modules::attribute`]), most keys first; empty when no stack was captured.
    #[serde(default)]
    pub modules: Vec<String>,
}

impl EventHolder {
    /// A holder without key names or modules.
    #[must_use]
    pub const fn new(
        pid: u64,
        image: Option<String>,
        services: Option<Vec<String>>,
        keys: u64,
    ) -> Self {
        Self {
            pid,
            image,
            services,
            keys,
            key_names: Vec::new(),
            modules: Vec::new(),
        }
    }
}

/// Most key names per holder in an event ([`EventHolder::key_names`]).
pub const KEY_NAMES: usize = 5;

/// One hivetrack event: the JSON line of `--jsonl` and, through [`FleetEvent::insertion_strings`],
/// the Event Log record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// `hivetrack.event/1`.
    pub schema: String,
    /// The Event ID (1001, ...).
    pub event_id: EventId,
    /// `Information` or `Warning`.
    pub level: Level,
    /// The message, as the Event Log shows it first.
    pub message: String,
    /// The hive's NT mount point (`\REGISTRY\USER\S-1-5-21-…-1001`); null when none.
    pub hive: Option<String>,
    /// The user SID of a `\REGISTRY\USER\<SID>` (or `<SID>_Classes`) hive.
    pub sid: Option<String>,
    /// That SID's account (`CONTOSO\alice`), resolved on Windows; null elsewhere.
    pub user: Option<String>,
    /// The unload's NTSTATUS (`0xC0000121`).
    pub status: Option<String>,
    /// Its name (`STATUS_CANNOT_DELETE`), when known.
    pub status_name: Option<String>,
    /// Processes that held keys in the hive (the driver's count, which may exceed
    /// `holders`).
    pub holder_count: Option<u64>,
    /// Keys open in the hive (a key-count alarm: the process's open keys).
    pub key_count: Option<u64>,
    /// More processes held keys than `holders` lists.
    pub holders_truncated: bool,
    /// The biggest holders (at most [`EVENT_HOLDERS`] in the Event Log).
    pub holders: Vec<EventHolder>,
    /// The driver's sequence number of the record behind the event.
    pub sequence: Option<u64>,
    /// When it happened (the driver's record time; for the service's own events, its
    /// clock).
    pub time: Option<Time>,
    /// Since when the driver tracks (connected, restarted); for an event from the driver's
    /// stream (1001, 1002, 1003), the driver start its `sequence` belongs to: sequence numbers
    /// begin at 1 at every start (every boot), so `(tracking_since, sequence)` identifies the
    /// event, and a replay after a service restart repeats both (audit 22b, M3).
    pub tracking_since: Option<Time>,
    /// Events lost: event numbers the driver did not deliver (1011), or events an output
    /// refused (1014).
    pub missed: Option<u64>,
    /// Seconds since the failed unload, or the deferred one (1002; at least this many when
    /// the service did not see the attempt itself: the driver's delay).
    pub held_for_secs: Option<u64>,
    /// The driver cannot vouch that it saw every open in the hive (keys opened before its
    /// tracking began, or opens it lost): processes not listed, unseen by hivetrack, may also
    /// hold keys in it (1001, 1002).
    #[serde(default)]
    pub holders_unseen: bool,
    /// The driver's sequence number of the unload attempt a 1002 follows, when known: the
    /// failed one, or for a 1002 after a deferred unload (`status` `0x00000103`,
    /// `STATUS_PENDING`) the deferred one, no failure despite the name (the driver's 1002 has
    /// its own `sequence`).
    #[serde(default)]
    pub failed_unload_sequence: Option<u64>,
    /// JSON only (the message says it too): hivetrack could not tell whether the hive now at
    /// the mount is the load that failed to unload (the driver did not know the hive or when
    /// it was loaded, or could not be asked). In the service's own 1002 the holders named may
    /// hold a later load of it (the user's next logon); in a 1001 or the driver's 1002 the
    /// key names, modules, services and kernel-list holders read from the hive now may be that
    /// later load's. Left out when false. Found in review 22d (L4): such a 1002 blamed a later
    /// load's processes without saying so; review 23b (L3): a 1001 and the driver's 1002 too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub load_unsure: bool,
}

/// The `EventData` fields every hivetrack event carries, in insertion-string order (`%1` is
/// `Message`). Absent values are empty strings.
pub const EVENT_DATA_FIELDS: [&str; 14] = [
    "Message",
    "Hive",
    "SID",
    "User",
    "Status",
    "StatusName",
    "HolderCount",
    "KeyCount",
    "HoldersTruncated",
    "Sequence",
    "EventTime",
    "TrackingSince",
    "Missed",
    "HeldForSecs",
];

/// The fields of each holder slot, after [`EVENT_DATA_FIELDS`]: holder `n` (1-based) has
/// `HolderNPid`, `HolderNImage`, `HolderNServices`, `HolderNKeys`.
pub const HOLDER_FIELDS: [&str; 4] = ["Pid", "Image", "Services", "Keys"];

/// The per-holder fields added after every [`HOLDER_FIELDS`] slot: the keys and the modules
/// that opened them.
///
/// `Holder1KeyNames`, `Holder1Modules`, …,
/// `Holder8KeyNames`, `Holder8Modules` follow `Holder8Keys`, so the positions of the older
/// fields stay what collectors already read. Lists are joined with `"; "`.
pub const HOLDER_DETAIL_FIELDS: [&str; 2] = ["KeyNames", "Modules"];

/// The fields added after every holder's [`HOLDER_DETAIL_FIELDS`] (positions 63 and 64).
///
/// After all the others, so that every older position stays: `HoldersUnseen` (`true` when processes hivetrack
/// could not see may also hold keys; empty when the event names no holders) and
/// `FailedUnloadSequence` (1002: the sequence of the failed unload it follows; after a
/// deferred unload, `Status` `0x00000103` `STATUS_PENDING`, the deferred one's).
pub const LATER_FIELDS: [&str; 2] = ["HoldersUnseen", "FailedUnloadSequence"];

/// Holder slots in every event (the driver's unload record keeps at most 8 holders).
pub const EVENT_HOLDERS: usize = protocol::history::MAX_UNLOAD_HOLDERS;

/// Insertion strings per event.
pub const INSERTION_STRINGS: usize = EVENT_DATA_FIELDS.len()
    + EVENT_HOLDERS * (HOLDER_FIELDS.len() + HOLDER_DETAIL_FIELDS.len())
    + LATER_FIELDS.len();

/// Every `EventData` field name in order (`Message`, …, `Holder8Keys`, `Holder1KeyNames`,
/// …, `Holder8Modules`, `HoldersUnseen`, `FailedUnloadSequence`).
#[must_use]
pub fn event_data_names() -> Vec<String> {
    let mut names: Vec<String> = EVENT_DATA_FIELDS.iter().map(|s| (*s).to_owned()).collect();
    for n in 1..=EVENT_HOLDERS {
        names.extend(HOLDER_FIELDS.iter().map(|f| format!("Holder{n}{f}")));
    }
    for n in 1..=EVENT_HOLDERS {
        names.extend(HOLDER_DETAIL_FIELDS.iter().map(|f| format!("Holder{n}{f}")));
    }
    names.extend(LATER_FIELDS.iter().map(|s| (*s).to_owned()));
    names
}

/// The NTSTATUS as `0xC0000121`.
#[must_use]
pub fn status_text(status: u32) -> String {
    format!("0x{status:08X}")
}

/// `NT_SUCCESS`: an unload whose outcome is not a success failed (`STATUS_PENDING`, a
/// deferred unload, is a success).
#[must_use]
pub const fn failed(status: u32) -> bool {
    status >= 0x8000_0000
}

/// `STATUS_PENDING`: a deferred unload (`NtUnloadKeyEx` with an event on a held hive).
pub const STATUS_PENDING: u32 = 0x0000_0103;

/// A deferred unload: no failure, but the hive is not unloaded yet; Windows unloads it when
/// its last key closes. The driver watches it as it watches a failed one.
#[must_use]
pub const fn deferred(status: u32) -> bool {
    status == STATUS_PENDING
}

/// The file name of an image path (`profleak.exe` for `\Device\…\profleak.exe`).
#[must_use]
pub fn image_name(image: &str) -> &str {
    image.rsplit(['\\', '/']).next().unwrap_or(image)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `profleak.exe (pid 4242, 3 keys)`, with services and the modules that opened the keys
/// when known (`…, 3 keys, opened by SyncHook.dll)`).
fn holder_phrase(h: &EventHolder) -> String {
    let name = h.image.as_deref().map_or("image unknown", image_name);
    let services = match &h.services {
        Some(s) if !s.is_empty() => format!("; services {}", s.join(", ")),
        _ => String::new(),
    };
    let modules = if h.modules.is_empty() {
        String::new()
    } else {
        format!(", opened by {}", h.modules.join(", "))
    };
    format!(
        "{name} (pid {}, {}{modules}{services})",
        h.pid,
        plural(h.keys, "key", "keys")
    )
}

/// `2 processes held 5 keys open: a.exe (pid 1, 3 keys), b.exe (pid 2, 2 keys).`
fn holders_sentence(holders: &[EventHolder], total: u64, keys: u64, past: bool) -> String {
    let verb = match (past, total) {
        (true, _) => "held",
        (false, 1) => "holds",
        (false, _) => "hold",
    };
    let mut s = format!(
        "{} {verb} {} open",
        plural(total, "process", "processes"),
        plural(keys, "key", "keys")
    );
    if holders.is_empty() {
        s.push('.');
        return s;
    }
    s.push_str(": ");
    s.push_str(
        &holders
            .iter()
            .map(holder_phrase)
            .collect::<Vec<_>>()
            .join(", "),
    );
    let listed = holders.len() as u64;
    if total > listed {
        s.push_str(", and ");
        s.push_str(&plural(total - listed, "more process", "more processes"));
        s.push_str(" not listed");
    }
    s.push('.');
    s
}

/// The last sentence of a 1002 naming holders of a failed unload. The User Profile Service
/// logs event 1530 and then, by default, unloads the profile by force; it waits for the keys
/// to close only under the policy "Do not forcefully unload the user registry at user logoff"
/// (Microsoft, "More on User Profile Service functionality",
/// <https://learn.microsoft.com/en-us/archive/blogs/dsnotes/more-on-user-profile-service-functionality>).
/// Found in audit 22b (L1): "the profile stays loaded (event 1530)" was said of both cases.
const HELD_TAIL: &str = " Until they close their keys the hive cannot unload normally: the User Profile Service (event 1530) then unloads a profile by force at logoff, and the holders may misbehave afterwards, unless the policy \"Do not forcefully unload the user registry at user logoff\" makes it wait.";

/// Most UTF-16 units of one insertion string.
///
/// `ReportEventW` limits each of `lpStrings` to 31,839 characters (Learn, "`ReportEventW`
/// function", `lpStrings`; 32K before Windows Vista). Found in audit 22b (M4, L6): a 1001
/// naming thousands of holders (the kernel's list merged in) had a `%1` of 91,432 units,
/// and the Event Log refused the event.
pub const MAX_INSERTION_UNITS: usize = 31_839;

/// Said at the end of an insertion string cut to [`MAX_INSERTION_UNITS`].
const CUT_NOTE: &str = " [cut: an Event Log insertion string holds at most 31,839 characters; the --jsonl line has it whole, `hivetrack holders` on the hive lists every holder]";

/// `s` cut to at most [`MAX_INSERTION_UNITS`] UTF-16 units, with [`CUT_NOTE`] when cut (at a
/// character boundary).
fn fit_insertion(s: String) -> String {
    if s.encode_utf16().count() <= MAX_INSERTION_UNITS {
        return s;
    }
    let budget = MAX_INSERTION_UNITS - CUT_NOTE.len();
    let mut units = 0;
    let end = s
        .char_indices()
        .find(|(_, c)| {
            units += c.len_utf16();
            units > budget
        })
        .map_or(s.len(), |(i, _)| i);
    let mut cut = s[..end].to_owned();
    cut.push_str(CUT_NOTE);
    cut
}

/// Said of a record with `HOLDERS_UNSEEN`.
/// Said by a 1002 whose hive may be a later load than the one that failed
/// ([`FleetEvent::load_unsure`]).
const LOAD_UNSURE_SENTENCE: &str = " hivetrack could not tell whether the hive now at this mount is the load that failed to unload (the driver did not know the hive or when it was loaded, or could not be asked): it may be a later load (the user's next logon), and the processes named may hold only that.";

/// [`FleetEvent::say_load_unsure`]'s sentence: a 1001 or the driver's 1002 names the record's
/// own holders, but what the service read from the hive now may be a later load's.
const READ_LOAD_UNSURE_SENTENCE: &str = " hivetrack could not tell whether the hive now at this mount is the load this record is about (the driver did not know the hive or when it was loaded, or could not be asked): the key names, modules and services read from it now, and processes named from the kernel's list, may be a later load's (the user's next logon).";

const UNSEEN_SENTENCE: &str = " Processes hivetrack could not see may also hold keys in this hive: keys opened before the driver's tracking began, or opens it lost, are not in its records (`hivetrack holders` on the hive also asks the kernel's list, which names them unless the key was deleted while open: such a key still holds the hive and is in neither list).";

/// `STATUS_CANNOT_DELETE`: Windows' answer to an unload of a hive with open keys.
///
/// WRK `cmapi.c` `CmUnloadKey`; the User Profile Service logs it as event 1530 ("the registry
/// file is still in use"). An unload fails with other statuses for other reasons (WRK
/// `ntapi.c` `NtUnloadKey2`: `STATUS_PRIVILEGE_NOT_HELD` without the restore privilege,
/// `STATUS_ACCESS_DENIED` for a protected (read-only) key, `STATUS_TOO_LATE` for a hive
/// already frozen by a deferred unload; a registry filter's pre-notification may fail it
/// with any status, Learn "Filtering Registry Calls").
pub const STATUS_CANNOT_DELETE: u32 = 0xC000_0121;

/// `STATUS_TOO_LATE`: the unload of a hive a deferred unload already froze.
pub const STATUS_TOO_LATE: u32 = 0xC000_0189;

/// The last sentence of a 1001: why the unload failed, as far as its status says. The
/// "registry file is still in use" sentence (event 1530) only for `STATUS_CANNOT_DELETE`;
/// `seen_nobody`: no holder seen at all; `partial`: the processes named may not be all.
/// Found in audit 20b (M2): every failed status was said to be "still in use", and with no
/// holder seen on a hive the driver vouched for the event ended "these processes are the
/// ones holding it".
fn failure_cause(status: u32, name: Option<&str>, seen_nobody: bool, partial: bool) -> String {
    const IN_USE: &str = " Windows detected that the registry file is still in use by other applications or services (User Profile Service event 1530)";
    if status == STATUS_CANNOT_DELETE {
        let tail = if seen_nobody && partial {
            ": something hivetrack does not see holds it. Run `hivetrack holders` on the hive to see who holds it now."
        } else if seen_nobody {
            ", yet the driver, which saw every open in this hive since it was loaded (keys deleted while open included), saw no key held: something it does not track holds the hive (a kernel-mode reference, or an open it missed, such as one a registry filter below hivetrack's altitude makes inside its own callback). Run `hivetrack holders` on the hive to see who holds it now."
        } else if partial {
            "; these are the processes hivetrack saw holding it."
        } else {
            "; these processes are the ones holding it."
        };
        return format!("{IN_USE}{tail}");
    }
    if status == STATUS_TOO_LATE {
        return " The unload failed with STATUS_TOO_LATE: an earlier deferred unload of this hive is pending (Windows froze the hive and unloads it after its last key closes, up to about 5 s later; WRK `ntapi.c` NtUnloadKey2, `cmdelay.c`), so keys in it were still open, or had closed within the last few seconds. Run `hivetrack holders` on the hive to see who holds it now.".to_owned();
    }
    let named = name.map_or_else(
        || format!("NTSTATUS {}", status_text(status)),
        str::to_owned,
    );
    let tail = if seen_nobody {
        " Run `hivetrack holders` on the hive to see whether anything holds it."
    } else {
        " The processes named held keys in it at the attempt; the status does not say they are why it failed."
    };
    format!(
        " The unload failed with {named}, not with STATUS_CANNOT_DELETE, Windows' answer when the registry file is still in use (User Profile Service event 1530): it was refused or could not be done for another reason (for example the caller's privileges, a protected key, another registry filter, or a lack of resources).{tail}"
    )
}

/// Adds `k` (a holder from the kernel's list) to `holders`: to the entry with its pid when
/// its image is known (the same process: `event_service::merge_untracked`), else as a new
/// entry. Whether it was new.
fn merge_holder(holders: &mut Vec<EventHolder>, k: EventHolder) -> bool {
    if k.image.is_some()
        && let Some(h) = holders.iter_mut().find(|h| h.pid == k.pid)
    {
        h.keys += k.keys;
        return false;
    }
    holders.push(k);
    true
}

fn hive_words(hive: &str, user: Option<&str>) -> String {
    user.map_or_else(|| hive.to_owned(), |u| format!("{hive} (user {u})"))
}

impl FleetEvent {
    /// An event with only its id, level and message set.
    #[must_use]
    pub fn new(event_id: EventId, message: String) -> Self {
        Self {
            schema: schema("event"),
            event_id,
            level: event_id.level(),
            message,
            hive: None,
            sid: None,
            user: None,
            status: None,
            status_name: None,
            holder_count: None,
            key_count: None,
            holders_truncated: false,
            holders: Vec::new(),
            sequence: None,
            time: None,
            tracking_since: None,
            missed: None,
            held_for_secs: None,
            holders_unseen: false,
            failed_unload_sequence: None,
            load_unsure: false,
        }
    }

    /// 1001: the unload of `hive` failed with `status`; `holders` (the biggest, as the
    /// driver's record keeps them) of `holder_count` processes held `key_count` keys.
    #[must_use]
    pub fn unload_failed(
        failure: &UnloadFailure,
        user: Option<String>,
        holders: Vec<EventHolder>,
    ) -> Self {
        Self::unload_failed_and_kernel_list(failure, user, holders, Vec::new())
    }

    /// 1001 as [`Self::unload_failed`], with `kernel_now`: the holders the kernel's list of
    /// open keys names that the driver's records do not (keys opened before tracking began,
    /// or opens it lost), read when the service handled the record, not at the attempt, and
    /// said so. Found in audit 20b (L3): the service read that list for the 1001 of a hive the
    /// driver could not vouch for and left it out; the holder appeared only in a 1002.
    #[must_use]
    pub fn unload_failed_and_kernel_list(
        failure: &UnloadFailure,
        user: Option<String>,
        mut holders: Vec<EventHolder>,
        kernel_now: Vec<EventHolder>,
    ) -> Self {
        let status = status_text(failure.status);
        let name = ntstatus_name(failure.status);
        let mut message = format!(
            "The registry hive {} could not be unloaded ({}). ",
            hive_words(&failure.hive, user.as_deref()),
            name.unwrap_or(&status)
        );
        let recorded_nobody = failure.holder_count == 0 && holders.is_empty();
        // Nobody seen: "0 processes held 0 keys" is a flat claim Windows just contradicted
        // (review, 2026-12-05, L5), and "these processes are the ones holding it" after it
        // read as a vouched "nobody holds it" (audit 20b, M2).
        let seen_nobody = recorded_nobody && kernel_now.is_empty();
        if seen_nobody {
            message.push_str("hivetrack saw no process holding a key in it.");
        } else if recorded_nobody {
            message.push_str("The driver's records show no process holding a key in it.");
        } else {
            message.push_str(&holders_sentence(
                &holders,
                failure.holder_count,
                failure.key_count,
                true,
            ));
        }
        let mut holder_count = failure.holder_count;
        let mut key_count = failure.key_count;
        let from_kernel = !kernel_now.is_empty();
        if from_kernel {
            message.push_str(
                " The kernel's list of open keys, read when this event was written (not at the attempt), names keys opened before tracking began (or opens the driver lost): ",
            );
            message.push_str(
                &kernel_now
                    .iter()
                    .map(holder_phrase)
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            message.push('.');
            for k in kernel_now {
                key_count += k.keys;
                if merge_holder(&mut holders, k) {
                    holder_count += 1;
                }
            }
        }
        if failure.holders_unseen {
            message.push_str(UNSEEN_SENTENCE);
        }
        message.push_str(&failure_cause(
            failure.status,
            name,
            seen_nobody,
            failure.holders_unseen || from_kernel,
        ));
        // A classes hive nobody was seen holding: its user hive's link may (review 23c, L4:
        // the hint was in `unload-history` only, while VDI administrators read this event).
        if failure.status == STATUS_CANNOT_DELETE
            && seen_nobody
            && let Some(user) = crate::classes_link::user_hive_of(&failure.hive)
        {
            let user = crate::hive_name::display(&user);
            let _ = write!(
                message,
                " For a classes hive that can also be the user hive's Software\\Classes link, which may hold it while {user} is loaded (WRK cmparse.c; not verified on Windows 10/11): unload {user} first."
            );
        }
        Self {
            hive: Some(failure.hive.clone()),
            sid: user_sid(&failure.hive).map(str::to_owned),
            user,
            status: Some(status),
            status_name: name.map(str::to_owned),
            holder_count: Some(holder_count),
            key_count: Some(key_count),
            holders_truncated: failure.holders_truncated || holder_count > holders.len() as u64,
            holders,
            // A failed unload with no holder seen: something hivetrack did not see may hold
            // it, whatever the driver vouched for (audit 20b, M2). With `HolderCount` 0 this
            // is what a forwarding query filters on.
            holders_unseen: failure.holders_unseen || seen_nobody,
            sequence: Some(failure.sequence),
            time: Time::from_filetime(failure.time),
            ..Self::new(EventId::UnloadFailed, message)
        }
    }

    /// A 1001 or the driver's own 1002 whose details the service read from the hive now at
    /// the mount (key names, modules, services, the kernel's list), when that hive may be a
    /// later load than the record's: `load_unsure` and a sentence saying so (review 23b, L3:
    /// such an event said nothing). The record's own holders are the driver's, of its load.
    pub fn say_load_unsure(&mut self) {
        if !self.load_unsure {
            self.load_unsure = true;
            self.message.push_str(READ_LOAD_UNSURE_SENTENCE);
        }
    }

    /// 1002 from the service's own re-check (a driver that does not look again): `hive` is
    /// still held `held_for_secs` seconds after the failed unload with sequence `sequence`;
    /// `holders` hold `key_count` keys now; `unseen` when processes the re-check could not
    /// see may hold keys too; `load_unsure` when the hive now at the mount may be a later
    /// load than the one that failed ([`Self::load_unsure`]).
    #[must_use]
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one event, each named where it is called"
    )]
    pub fn still_held(
        failure: &UnloadFailure,
        user: Option<String>,
        holders: Vec<EventHolder>,
        key_count: u64,
        held_for_secs: u64,
        now: u64,
        unseen: bool,
        load_unsure: bool,
    ) -> Self {
        let count = holders.len() as u64;
        let mut message = if holders.is_empty() && unseen {
            // Nobody seen, and not vouched for: whether it is held cannot be told.
            format!(
                "hivetrack could not tell whether the registry hive {} is still held {held_for_secs} s after its failed unload (hivetrack event sequence {}): no process it can see holds a key in it.",
                hive_words(&failure.hive, user.as_deref()),
                failure.sequence
            )
        } else {
            let mut m = format!(
                "The registry hive {} is still held {held_for_secs} s after its failed unload (hivetrack event sequence {}). ",
                hive_words(&failure.hive, user.as_deref()),
                failure.sequence
            );
            m.push_str(&holders_sentence(&holders, count, key_count, false));
            m
        };
        if load_unsure {
            message.push_str(LOAD_UNSURE_SENTENCE);
        }
        if unseen {
            message.push_str(UNSEEN_SENTENCE);
        }
        message.push_str(if holders.is_empty() {
            " Run `hivetrack holders` on the hive to see who holds it now."
        } else {
            HELD_TAIL
        });
        Self {
            hive: Some(failure.hive.clone()),
            sid: user_sid(&failure.hive).map(str::to_owned),
            user,
            // As the driver's 1002 has them: collectors filter 1002 on `Status` (audit 22b,
            // L2).
            status: Some(status_text(failure.status)),
            status_name: ntstatus_name(failure.status).map(str::to_owned),
            holder_count: Some(count),
            key_count: Some(key_count),
            holders,
            sequence: Some(failure.sequence),
            failed_unload_sequence: Some(failure.sequence),
            time: Time::from_filetime(now),
            held_for_secs: Some(held_for_secs),
            holders_unseen: unseen,
            load_unsure,
            ..Self::new(EventId::StillHeld, message)
        }
    }

    /// 1002 from the driver's own look again ([`protocol::history::UnloadRecord::HELD_AFTER`]):
    /// `held.hive` was still held (or the driver could not see whether it was) when it looked
    /// after a failed unload, or after a deferred one (`STATUS_PENDING`: said as such, not
    /// as a failure); `holders` are the record's, with the kernel's untracked ones the
    /// service added.
    #[must_use]
    pub fn held_after(held: &HeldAfter, user: Option<String>, holders: Vec<EventHolder>) -> Self {
        let status = status_text(held.status);
        let name = ntstatus_name(held.status);
        let attempt = held
            .failed_unload_sequence
            .map_or_else(String::new, |s| format!(", hivetrack event sequence {s}"));
        let (kind, why) = if deferred(held.status) {
            (
                "deferred unload",
                " Windows unloads it when its last key closes;",
            )
        } else {
            ("failed unload", "")
        };
        // Nobody seen: the driver looked again because it could not see whether the hive is
        // held (loaded before tracking, or opens lost); "is still held … Until they close
        // their keys" asserted what nobody saw. Worded as the service's own re-check words
        // it (`still_held`). Found in audit 20b (M5).
        let seen_nobody = holders.is_empty() && held.holder_count == 0;
        let held_words = format!(
            "registry hive {} is still held {}{} s after its {kind} ({}{attempt}):{why} the driver looked again (hivetrack event sequence {})",
            hive_words(&held.hive, user.as_deref()),
            if held.at_least { "at least " } else { "" },
            held.held_for_secs,
            name.unwrap_or(&status),
            held.sequence,
        );
        let mut message = if seen_nobody {
            format!(
                "hivetrack could not tell whether the {held_words} and no process it can see holds a key in it."
            )
        } else {
            let mut m = format!("The {held_words}. ");
            m.push_str(&holders_sentence(
                &holders,
                held.holder_count,
                held.key_count,
                false,
            ));
            m
        };
        if held.holders_unseen || seen_nobody {
            message.push_str(UNSEEN_SENTENCE);
        }
        message.push_str(if seen_nobody {
            " Run `hivetrack holders` on the hive to see who holds it now."
        } else if deferred(held.status) {
            " Until they close their keys the hive stays loaded and its unload waits."
        } else {
            HELD_TAIL
        });
        Self {
            hive: Some(held.hive.clone()),
            sid: user_sid(&held.hive).map(str::to_owned),
            user,
            status: Some(status),
            status_name: name.map(str::to_owned),
            holder_count: Some(held.holder_count),
            key_count: Some(held.key_count),
            holders_truncated: held.holders_truncated || held.holder_count > holders.len() as u64,
            holders,
            holders_unseen: held.holders_unseen || seen_nobody,
            sequence: Some(held.sequence),
            failed_unload_sequence: held.failed_unload_sequence,
            time: Time::from_filetime(held.time),
            held_for_secs: Some(held.held_for_secs),
            ..Self::new(EventId::StillHeld, message)
        }
    }

    /// 1003: process `holder` holds `holder.keys` keys open, at or above `threshold`.
    #[must_use]
    pub fn key_alarm(holder: EventHolder, threshold: u64, sequence: u64, time: u64) -> Self {
        let name = holder.image.as_deref().map_or("image unknown", image_name);
        let threshold_words = if threshold == 0 {
            String::new()
        } else {
            format!(", at or above the driver's alarm threshold of {threshold}")
        };
        let message = format!(
            "Process {name} (pid {}) reached {}{threshold_words}. A process that leaks key handles keeps every hive it holds keys in loaded; `hivetrack processes` ranks the processes by open keys.",
            holder.pid,
            plural(holder.keys, "open registry key", "open registry keys"),
        );
        Self {
            holder_count: Some(1),
            key_count: Some(holder.keys),
            holders: vec![holder],
            sequence: Some(sequence),
            time: Time::from_filetime(time),
            ..Self::new(EventId::KeyAlarm, message)
        }
    }

    /// 1010: connected to the driver; `again` after it was unavailable.
    #[must_use]
    pub fn connected(tracking_since: u64, again: bool, now: u64) -> Self {
        let since = Time::from_filetime(tracking_since);
        let since_words = since.as_ref().map_or_else(
            || "live tracking is off (run `hivetrack stats` for why)".to_owned(),
            |t| format!("the driver tracks since {}", t.utc),
        );
        let message = if again {
            format!(
                "The hivetrack service is connected to the driver again; {since_words}. Failed hive unloads are reported from here on."
            )
        } else {
            format!(
                "The hivetrack service started and is connected to the driver; {since_words}. Failed hive unloads are reported as event 1001."
            )
        };
        Self {
            tracking_since: since,
            time: Time::from_filetime(now),
            ..Self::new(EventId::Connected, message)
        }
    }

    /// 1011: `missed` events were no longer kept when the service asked.
    #[must_use]
    pub fn missed(missed: u64, after: u64, now: u64) -> Self {
        let message = format!(
            "{} after sequence {after} could not be reported: the driver did not deliver {} when the service asked (evicted from its history while the service was behind or not running, or never stored: no memory for the record, or its table of held-after watches full; `hivetrack stats` counts each). Some may be successful unloads, which are no event. Failed unloads among them are not reported; a failed unload reported before them whose 1002 may be among them is re-checked by the service itself. `hivetrack unload-history` lists what the driver still keeps.",
            plural(missed, "hivetrack event number", "hivetrack event numbers"),
            if missed == 1 { "it" } else { "them" }
        );
        Self {
            missed: Some(missed),
            time: Time::from_filetime(now),
            ..Self::new(EventId::Missed, message)
        }
    }

    /// 1012: the driver restarted: tracking since `new` instead of `old`; the service had
    /// read up to `last_sequence`.
    #[must_use]
    pub fn restarted(old: u64, new: u64, last_sequence: u64, now: u64) -> Self {
        let new_t = Time::from_filetime(new);
        let message = format!(
            "The hivetrack driver restarted: it tracks since {} (before: since {}). Sequence numbers begin again at 1; events after sequence {last_sequence} of the previous start that the service had not read are lost, and keys opened before the restart are not in the driver's records.",
            new_t.as_ref().map_or_else(
                || "never (live tracking is off)".to_owned(),
                |t| t.utc.clone()
            ),
            Time::or_empty(old).utc,
        );
        Self {
            tracking_since: new_t,
            sequence: Some(last_sequence),
            time: Time::from_filetime(now),
            ..Self::new(EventId::DriverRestarted, message)
        }
    }

    /// 1013: the driver cannot be reached (`reason`); the service retries every
    /// `retry_secs` seconds (0: it does not, `run --once`).
    #[must_use]
    pub fn unavailable(reason: &str, retry_secs: u64, now: u64) -> Self {
        let retry = if retry_secs == 0 {
            String::new()
        } else {
            format!(
                " The service tries again every {retry_secs} s and writes event 1010 when it is connected."
            )
        };
        let message = format!(
            "The hivetrack service cannot read the driver's events: {reason}.{retry} Failed hive unloads are not reported meanwhile."
        );
        Self {
            time: Time::from_filetime(now),
            ..Self::new(EventId::DriverUnavailable, message)
        }
    }

    /// 1014: `count` events were refused by one of the service's outputs, the last time with
    /// `error`.
    #[must_use]
    pub fn not_written(count: u64, error: &str, now: u64) -> Self {
        let message = format!(
            "{} could not be written to every output of the hivetrack service (the Application log, and the --jsonl file when given): {error}. The outputs that accepted {} have {}; `hivetrack service run --once --jsonl -` prints again what the driver still keeps.",
            plural(count, "hivetrack event", "hivetrack events"),
            if count == 1 { "it" } else { "them" },
            if count == 1 { "it" } else { "them" },
        );
        Self {
            missed: Some(count),
            time: Time::from_filetime(now),
            ..Self::new(EventId::NotWritten, message)
        }
    }

    /// The Event Log insertion strings: [`INSERTION_STRINGS`] strings in the order of
    /// [`event_data_names`]; absent values are empty.
    #[must_use]
    pub fn insertion_strings(&self) -> Vec<String> {
        fn opt<T: ToString>(v: Option<&T>) -> String {
            v.map(ToString::to_string).unwrap_or_default()
        }
        let mut s = vec![
            self.message.clone(),
            opt(self.hive.as_ref()),
            opt(self.sid.as_ref()),
            opt(self.user.as_ref()),
            opt(self.status.as_ref()),
            opt(self.status_name.as_ref()),
            opt(self.holder_count.as_ref()),
            opt(self.key_count.as_ref()),
            if self.holder_count.is_some() {
                // Also when more holders are listed than the slots below hold (the kernel's
                // list merged into a 1001 can add them): until review 20b (R7) those were
                // dropped with `HoldersTruncated` false.
                (self.holders_truncated || self.holders.len() > EVENT_HOLDERS).to_string()
            } else {
                String::new()
            },
            opt(self.sequence.as_ref()),
            self.time
                .as_ref()
                .map(|t| t.utc.clone())
                .unwrap_or_default(),
            self.tracking_since
                .as_ref()
                .map(|t| t.utc.clone())
                .unwrap_or_default(),
            opt(self.missed.as_ref()),
            opt(self.held_for_secs.as_ref()),
        ];
        for i in 0..EVENT_HOLDERS {
            match self.holders.get(i) {
                Some(h) => {
                    s.push(h.pid.to_string());
                    s.push(h.image.clone().unwrap_or_default());
                    s.push(
                        h.services
                            .as_ref()
                            .map(|v| v.join(", "))
                            .unwrap_or_default(),
                    );
                    s.push(h.keys.to_string());
                }
                None => s.extend(std::iter::repeat_n(String::new(), HOLDER_FIELDS.len())),
            }
        }
        for i in 0..EVENT_HOLDERS {
            match self.holders.get(i) {
                Some(h) => {
                    s.push(h.key_names.join("; "));
                    s.push(h.modules.join("; "));
                }
                None => s.extend(std::iter::repeat_n(
                    String::new(),
                    HOLDER_DETAIL_FIELDS.len(),
                )),
            }
        }
        s.push(if self.holder_count.is_some() {
            self.holders_unseen.to_string()
        } else {
            String::new()
        });
        s.push(opt(self.failed_unload_sequence.as_ref()));
        s.into_iter().map(fit_insertion).collect()
    }

    /// The event as one JSON line (no newline).
    ///
    /// # Errors
    /// Never for this type in practice (`serde_json`'s signature).
    pub fn json_line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A failed unload, as the driver's record has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnloadFailure {
    /// The NT mount point.
    pub hive: String,
    /// The NTSTATUS.
    pub status: u32,
    /// Processes holding keys then.
    pub holder_count: u64,
    /// Keys open then.
    pub key_count: u64,
    /// The record could not list every holder.
    pub holders_truncated: bool,
    /// The driver could not vouch that it saw every open in the hive
    /// ([`protocol::history::UnloadRecord::HOLDERS_UNSEEN`]).
    pub holders_unseen: bool,
    /// Its sequence number.
    pub sequence: u64,
    /// When (FILETIME).
    pub time: u64,
}

/// A hive still held when the driver looked again after its failed (or deferred) unload, as its
/// [`protocol::history::UnloadRecord::HELD_AFTER`] record has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldAfter {
    /// The NT mount point.
    pub hive: String,
    /// The watched attempt's NTSTATUS: an error, or [`STATUS_PENDING`] for a deferred unload.
    pub status: u32,
    /// Processes holding keys then (with the kernel's untracked ones the service added).
    pub holder_count: u64,
    /// Keys open then (likewise).
    pub key_count: u64,
    /// The record could not list every holder.
    pub holders_truncated: bool,
    /// The driver could not vouch that it saw every open in the hive.
    pub holders_unseen: bool,
    /// The record's own sequence number.
    pub sequence: u64,
    /// When the driver looked (FILETIME).
    pub time: u64,
    /// Seconds since the failed (or deferred) unload.
    pub held_for_secs: u64,
    /// `held_for_secs` is the driver's delay, not measured from an attempt the service saw:
    /// the hive was held at least that long.
    pub at_least: bool,
    /// The failed (or deferred) unload's sequence number, when the service saw it.
    pub failed_unload_sequence: Option<u64>,
}
