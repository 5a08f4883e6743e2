//! Registry reads at `PASSIVE_LEVEL` outside the registry callback (where `Zw*` calls are
//! allowed, unlike in the callback): in `DriverEntry`, the configured altitude and memory
//! budget, and the hive list; later, the hive list again when the start-up read of it was not
//! whole ([`crate::reseed`]).

use core::ptr::{NonNull, null_mut};

use wdk_sys::{
    _KEY_VALUE_INFORMATION_CLASS::{KeyValueFullInformation, KeyValuePartialInformation},
    HANDLE, KEY_READ, NTSTATUS, OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE, OBJECT_ATTRIBUTES,
    STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_NO_MORE_ENTRIES,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
    ntddk::{ZwClose, ZwEnumerateValueKey, ZwOpenKey, ZwQueryValueKey},
};

use crate::{
    pool,
    tracking::DriverTracker,
    unicode::{unicode_string, wide},
};

/// The altitude used when the service key has none (the INF writes this value too).
pub const DEFAULT_ALTITUDE: &[u16] = wide!("385217");
/// `REG_SZ`.
const REG_SZ: u32 = 1;
/// `REG_DWORD`.
const REG_DWORD: u32 = 4;
/// Scratch buffer size for value queries.
const BUF_LEN: usize = 4096;
/// Hive list values that may fail one after another before its read is given up.
const MAX_FAILURES_IN_A_ROW: u32 = 8;
/// The longest hive list value read (a mount and a file path, UTF-16, with the header).
const MAX_VALUE_LEN: usize = 64 * 1024;
/// Reads of the hive list while unloads keep moving its values; past them, a hive may have
/// been skipped, which is counted.
const MAX_PASSES: usize = 4;

/// An altitude: up to 31 UTF-16 digits (and dots), as a counted string over owned storage.
pub struct Altitude {
    units: [u16; 32],
    len: usize,
}

impl Altitude {
    /// No altitude (the initial state of the static the registration keeps it in).
    pub const EMPTY: Self = Self {
        units: [0; 32],
        len: 0,
    };

    /// The altitude as the `UNICODE_STRING` `CmRegisterCallbackEx` takes. The string borrows
    /// `self`, which must stay put while it is used.
    pub fn as_unicode(&mut self) -> UNICODE_STRING {
        let bytes = u16::try_from(self.len * 2).unwrap_or(0);
        UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: self.units.as_mut_ptr(),
        }
    }

    fn parse(units: &[u16]) -> Option<Self> {
        let units = units.split(|&u| u == 0).next().unwrap_or(&[]);
        let valid = !units.is_empty()
            && units.len() < 32
            && units
                .iter()
                .all(|&u| u == u16::from(b'.') || (u16::from(b'0')..=u16::from(b'9')).contains(&u));
        if !valid {
            return None;
        }
        let mut a = Self {
            units: [0; 32],
            len: units.len(),
        };
        a.units[..units.len()].copy_from_slice(units);
        Some(a)
    }
}

/// A kernel handle to an open key, closed on drop.
struct Key(HANDLE);

impl Key {
    fn open(root: HANDLE, name: &UNICODE_STRING) -> Option<Self> {
        let mut name = UNICODE_STRING {
            Length: name.Length,
            MaximumLength: name.MaximumLength,
            Buffer: name.Buffer,
        };
        let mut attributes = OBJECT_ATTRIBUTES {
            Length: u32::try_from(size_of::<OBJECT_ATTRIBUTES>()).unwrap_or(0),
            RootDirectory: root,
            ObjectName: &raw mut name,
            Attributes: OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE,
            SecurityDescriptor: null_mut(),
            SecurityQualityOfService: null_mut(),
        };
        let mut handle: HANDLE = null_mut();
        // SAFETY: documented call at PASSIVE_LEVEL with valid attributes and out pointer.
        let status = unsafe { ZwOpenKey(&raw mut handle, KEY_READ, &raw mut attributes) };
        (status == STATUS_SUCCESS).then_some(Self(handle))
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: a kernel handle from ZwOpenKey, closed once.
        let _ = unsafe { ZwClose(self.0) };
    }
}

/// A pool buffer for value queries, freed on drop.
struct Scratch(NonNull<u8>, usize);

impl Scratch {
    fn new(len: usize) -> Option<Self> {
        pool::alloc_zeroed(len).map(|p| Self(p, len))
    }

    const fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the block is `self.1` bytes, ours alone.
        unsafe { core::slice::from_raw_parts_mut(self.0.as_ptr(), self.1) }
    }

    /// The block as UTF-16 units (`self.1 / 2` of them).
    const fn units(&mut self) -> &mut [u16] {
        // Pool blocks are aligned for any integer (docs: ExAllocatePool2, "aligned on an
        // 8-byte boundary" at least).
        // SAFETY: the block is `self.1` bytes, ours alone, and aligned for u16.
        unsafe { core::slice::from_raw_parts_mut(self.0.as_ptr().cast(), self.1 / 2) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated by `pool::alloc_zeroed`, freed once.
        unsafe { pool::free(self.0) };
    }
}

fn le_u32(b: &[u8], at: usize) -> usize {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn utf16_at(b: &[u8], at: usize, bytes: usize) -> impl Iterator<Item = u16> + '_ {
    b.get(at..at.saturating_add(bytes))
        .unwrap_or(&[])
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// The altitude in `<service key>\Parameters\Altitude` (`REG_SZ`), or [`DEFAULT_ALTITUDE`].
pub fn altitude(service_key: &UNICODE_STRING) -> Altitude {
    read_altitude(service_key)
        .unwrap_or_else(|| Altitude::parse(DEFAULT_ALTITUDE).unwrap_or(Altitude::EMPTY))
}

/// Queries value `name` of `<service key>\Parameters` into `scratch`; returns its type and
/// the data bytes (within the buffer).
fn query_parameter<'a>(
    service_key: &UNICODE_STRING,
    name: &'static [u16],
    scratch: &'a mut Scratch,
) -> Option<(u32, &'a [u8])> {
    let service = Key::open(null_mut(), service_key)?;
    let params = Key::open(service.0, &unicode_string(wide!("Parameters")))?;
    let buf = scratch.bytes();
    let mut value = unicode_string(name);
    let mut returned = 0u32;
    // SAFETY: documented call at PASSIVE_LEVEL; the buffer is BUF_LEN writable bytes.
    let status = unsafe {
        ZwQueryValueKey(
            params.0,
            &raw mut value,
            KeyValuePartialInformation,
            buf.as_mut_ptr().cast(),
            u32::try_from(BUF_LEN).unwrap_or(0),
            &raw mut returned,
        )
    };
    if status != STATUS_SUCCESS {
        // An absent value is the common case; any other failure (no resources: WRK `cmapi.c`
        // CmQueryValueKey) leaves the configured value unread, which the debugger is told.
        if status != STATUS_OBJECT_NAME_NOT_FOUND {
            wdk::println!(
                "hivetrack: a Parameters value was not read ({status:#x}): its default applies"
            );
        }
        return None;
    }
    // KEY_VALUE_PARTIAL_INFORMATION: TitleIndex, Type, DataLength, Data[].
    let kind = u32::try_from(le_u32(buf, 4)).unwrap_or(0);
    let len = le_u32(buf, 8).min(BUF_LEN - 12);
    Some((kind, &buf[12..12 + len]))
}

fn read_altitude(service_key: &UNICODE_STRING) -> Option<Altitude> {
    let mut scratch = Scratch::new(BUF_LEN)?;
    let (kind, data) = query_parameter(service_key, wide!("Altitude"), &mut scratch)?;
    if kind != REG_SZ {
        return None;
    }
    let mut units = [0u16; 32];
    let mut n = 0;
    for u in utf16_at(data, 0, data.len()) {
        if n == units.len() {
            return None;
        }
        units[n] = u;
        n += 1;
    }
    Altitude::parse(&units[..n])
}

/// The memory budget in bytes from `<service key>\Parameters\MemoryBudgetMiB` (`REG_DWORD`),
/// or `None` when the value is absent or not a `REG_DWORD` (the tracker's default applies;
/// the tracker clamps what is configured to its floor and ceiling).
pub fn memory_budget(service_key: &UNICODE_STRING) -> Option<u64> {
    let mut scratch = Scratch::new(BUF_LEN)?;
    let (kind, data) = query_parameter(service_key, wide!("MemoryBudgetMiB"), &mut scratch)?;
    if kind != REG_DWORD || data.len() != 4 {
        return None;
    }
    let mib = u64::try_from(le_u32(data, 0)).unwrap_or(0);
    Some(mib << 20)
}

/// The key-count alarm threshold (issue 17) from the service key's
/// `Parameters\KeyAlarmThreshold` (`REG_DWORD`; 0 turns alarms off), if set.
pub fn key_alarm_threshold(service_key: &UNICODE_STRING) -> Option<u64> {
    let mut scratch = Scratch::new(BUF_LEN)?;
    let (kind, data) = query_parameter(service_key, wide!("KeyAlarmThreshold"), &mut scratch)?;
    if kind != REG_DWORD || data.len() != 4 {
        return None;
    }
    u64::try_from(le_u32(data, 0)).ok()
}

/// Seconds after a failed hive unload at which the driver looks at the hive again and
/// reports it in the event stream if still held (issue 17), from the service key's
/// `Parameters\HeldAfterSeconds` (`REG_DWORD`; 0 turns it off), if set.
pub fn held_after_seconds(service_key: &UNICODE_STRING) -> Option<u64> {
    let mut scratch = Scratch::new(BUF_LEN)?;
    let (kind, data) = query_parameter(service_key, wide!("HeldAfterSeconds"), &mut scratch)?;
    if kind != REG_DWORD || data.len() != 4 {
        return None;
    }
    u64::try_from(le_u32(data, 0)).ok()
}

/// The hive list's key, opened before the registry callback is registered
/// ([`open_hive_list`]) and read after it ([`seed_hives`]); kept open for the driver's life
/// ([`crate::reseed`]), closed on drop.
pub struct HiveList(Key);

impl HiveList {
    /// The kernel handle, now owned by the caller (who closes it with [`Self::from_raw`]).
    pub const fn into_raw(self) -> HANDLE {
        let handle = self.0.0;
        core::mem::forget(self);
        handle
    }

    /// Takes back a handle [`Self::into_raw`] gave.
    ///
    /// # Safety
    /// `handle` came from [`Self::into_raw`] and is taken back once.
    pub const unsafe fn from_raw(handle: HANDLE) -> Self {
        Self(Key(handle))
    }
}

/// Opens `HKLM\SYSTEM\CurrentControlSet\Control\hivelist`. Called before the registry
/// callback is registered: a driver's own `ZwOpenKey` reaches every registered callback,
/// its own included (Learn `REG_CREATE_KEY_INFORMATION_V1`: "when a kernel-mode driver calls
/// `ZwCreateKey`"), and an open it saw but could not record (no memory, no name) would count a
/// loss that no later event ages out, leaving every answer incomplete for the driver's life
/// (review 18b). Opened before, the key is no tracked object of System either; reading its
/// values after registration still sees every hive loaded up to then.
pub fn open_hive_list() -> Option<HiveList> {
    Key::open(
        null_mut(),
        &unicode_string(wide!(
            r"\Registry\Machine\System\CurrentControlSet\Control\hivelist"
        )),
    )
    .map(HiveList)
}

/// Seeds the tracker with the mounted hives from the hive list (value name = mount point,
/// data = file), opened by [`open_hive_list`]: at start, and again later while no seed was
/// whole ([`crate::reseed`]). Returns whether this seed read the whole list.
pub fn seed_hives(tracker: &DriverTracker, list: Option<&HiveList>) -> bool {
    // A hive list not read, or a value of it not read, is a hive the driver does not know
    // was loaded before it: reported as a name it could not get (every answer says so) until
    // a seed reads the whole list ([`DriverTracker::seed_done`]), never passed over in
    // silence. Its keys are still tracked, under the implicit hive their paths name, which
    // no report calls complete.
    let (Some(HiveList(key)), Some(mut scratch)) = (list, Scratch::new(BUF_LEN)) else {
        tracker.seed_done(false);
        return false;
    };
    // An unload deletes its value and moves the later ones down an index (WRK `cmhvlist.c`
    // CmpRemoveFromHiveFileList, `cmvalue.c` CmpRemoveValueFromList), so a read by index
    // during one may skip a hive still loaded — and not every such unload is notified when
    // it deletes the value (its post comes later; a deferred unload completes without one).
    // So the list is read until two reads in a row see the same values in the same order
    // with no unload noticed meanwhile; a hive read but unloaded before its record is
    // refused by the tracker ([`tracker::seed_window`]). A list still moving after
    // [`MAX_PASSES`] reads is not whole.
    // (signature of the previous read, loads and unloads seen before it began)
    let mut previous: Option<(Signature, u32)> = None;
    let mut pass = Pass::default();
    let mut cut = false;
    let mut stable = false;
    for _ in 0..MAX_PASSES {
        let changes = tracker.changes_during_seed();
        pass = read_pass(tracker, key, &mut scratch, Read::Seed);
        // A file path recorded cut stays cut: a later read finds the hive recorded.
        cut |= pass.cut;
        // Alike, and no load or unload seen from the start of the previous read to now.
        stable = previous.is_some_and(|(signature, before)| {
            signature == pass.signature && tracker.changes_during_seed() == before
        });
        if stable {
            break;
        }
        previous = Some((pass.signature, changes));
    }
    let whole = !pass.missed && stable;
    tracker.seed_done(whole);
    if cut {
        // A file path recorded cut: a detail lost for good (no later read records it again).
        tracker.name_unavailable();
    }
    whole
}

/// Reads the hive list to find deferred unloads that completed ([`crate::reseed`]): Windows
/// sends no notification when a late unload is done, but deletes the hive's value from the
/// list after unlinking it (WRK `cmdelete.c` `CmpLateUnloadHiveWorker` → `cmapi.c` `CmUnloadKey`
/// → `cmhvlist.c` `CmpRemoveFromHiveFileList`; the kernel emulator's `td-deferred-unload`).
/// The tracker marks its unload-pending hives, each value read clears its hive's mark, and a
/// read that saw the whole list, twice alike with no load or unload seen from the start of the
/// first to the end of the second (as [`seed_hives`]: an unload moves later values down an
/// index, so one read may skip a hive still listed), retires the hives still marked. Returns
/// how many were retired.
pub fn check_unloads(tracker: &DriverTracker, list: &HiveList) -> u32 {
    let Some(mut scratch) = Scratch::new(BUF_LEN) else {
        return 0; // no memory now: the next query's read tries again
    };
    let begun = tracker.unload_check_begin();
    let mut previous: Option<(Signature, u64)> = None;
    let mut whole = false;
    for _ in 0..MAX_PASSES {
        let changes = tracker.hive_changes();
        let pass = read_pass(tracker, &list.0, &mut scratch, Read::Check);
        if previous.is_some_and(|(signature, before)| {
            signature == pass.signature && tracker.hive_changes() == before
        }) {
            whole = !pass.missed;
            break;
        }
        previous = Some((pass.signature, changes));
    }
    tracker.unload_check_done(begun, whole)
}

/// Brings the hive set up to date while live tracking is off (the registry callback never
/// registered: another filter holds the altitude), before a query is answered
/// ([`crate::reseed`]; review 21a, L4). With no callback no load or unload is ever
/// notified, so the set read at `DriverEntry` would be kept for the driver's life: a hive
/// unloaded later still `loaded`, one loaded later unknown. Each refresh reads the list as
/// [`check_unloads`] does (twice alike, with no change counted between: here nothing counts
/// changes, so two alike reads are the proof), records the hives it finds that the tracker
/// does not know (load time unknown), and, when the read was whole, retires every regular
/// hive it did not find. Answers stay "tracking off, never complete" (tracking-since 0).
/// Returns how many hives were retired.
pub fn refresh_untracked(tracker: &DriverTracker, list: &HiveList) -> u32 {
    let Some(mut scratch) = Scratch::new(BUF_LEN) else {
        return 0; // no memory now: the next query's read tries again
    };
    let begun = tracker.refresh_begin();
    let mut previous: Option<(Signature, u64)> = None;
    let mut whole = false;
    let mut cut = false;
    for _ in 0..MAX_PASSES {
        let changes = tracker.hive_changes();
        let pass = read_pass(tracker, &list.0, &mut scratch, Read::Refresh);
        cut |= pass.cut;
        if previous.is_some_and(|(signature, before)| {
            signature == pass.signature && tracker.hive_changes() == before
        }) {
            whole = !pass.missed;
            break;
        }
        // A refresh's records count no load (review 22a, L4): with no callback nothing moves
        // the changes, and two alike reads are the proof.
        previous = Some((pass.signature, changes));
    }
    if cut {
        tracker.name_unavailable();
    }
    tracker.refresh_done(begun, whole)
}

/// What a read of the hive list is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Record every hive it finds ([`seed_hives`]).
    Seed,
    /// Tell the tracker which hives are still listed ([`check_unloads`]).
    Check,
    /// Both: tell the tracker which hives are listed and record the new ones
    /// ([`refresh_untracked`]).
    Refresh,
}

/// The values one read of the hive list saw: how many, and a hash of their names in order.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Signature {
    count: u32,
    hash: u64,
}

impl Signature {
    fn add(&mut self, name: &[u16]) {
        self.count += 1;
        self.hash = (self.hash.rotate_left(17) ^ u64::from(tracker::names::hash_folded(name)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What one read of the hive list did.
#[derive(Default)]
struct Pass {
    /// A value the read could not take (no resources, cut short, too many).
    missed: bool,
    /// A file path recorded cut (no memory for the whole of it).
    cut: bool,
    /// The values it saw.
    signature: Signature,
}

/// Reads the hive list's values by index, recording each hive with
/// [`DriverTracker::hive_seeded`] ([`Read::Seed`]) or [`DriverTracker::hive_refreshed`]
/// ([`Read::Refresh`]), or telling the tracker it is listed ([`DriverTracker::hive_listed`],
/// [`Read::Check`]).
fn read_pass(tracker: &DriverTracker, key: &Key, scratch: &mut Scratch, read: Read) -> Pass {
    let mut missed = false;
    let mut cut = false;
    let mut signature = Signature::default();
    let mut failures_in_a_row = 0;
    let mut ended = false;
    for index in 0..4096u32 {
        let mut returned = 0u32;
        let mut status = enumerate_value(key, index, scratch, &mut returned);
        if status == STATUS_BUFFER_OVERFLOW || status == STATUS_BUFFER_TOO_SMALL {
            // A value longer than the buffer (a long file path): once more with the size the
            // call reported (docs: ZwEnumerateValueKey, ResultLength), up to a bound.
            let needed = usize::try_from(returned).unwrap_or(usize::MAX);
            if let Some(bigger) = (needed > scratch.1 && needed <= MAX_VALUE_LEN)
                .then(|| Scratch::new(needed))
                .flatten()
            {
                *scratch = bigger;
                status = enumerate_value(key, index, scratch, &mut returned);
            }
        }
        if status == STATUS_NO_MORE_ENTRIES {
            ended = true;
            break;
        }
        if status != STATUS_SUCCESS {
            // No resources for this one (WRK `cmapi.c` CmEnumerateValueKey:
            // STATUS_INSUFFICIENT_RESOURCES when a cell cannot be mapped), or too long: the
            // next may still be read. A failure that repeats ends the read.
            missed = true;
            failures_in_a_row += 1;
            if failures_in_a_row == MAX_FAILURES_IN_A_ROW {
                ended = true; // counted as missed already
                break;
            }
            continue;
        }
        failures_in_a_row = 0;
        // Only the bytes the call wrote: a longer value read before left more behind.
        let valid = usize::try_from(returned).unwrap_or(0);
        let whole = scratch.bytes();
        let buf = &whole[..valid.min(whole.len())];
        // KEY_VALUE_FULL_INFORMATION: TitleIndex, Type, DataOffset, DataLength, NameLength, Name[].
        let data_offset = le_u32(buf, 8);
        let data_len = le_u32(buf, 12);
        let name_len = le_u32(buf, 16);
        let mut mount = [0u16; 512];
        let mut m = 0;
        for u in utf16_at(buf, 20, name_len).take(mount.len()) {
            mount[m] = u;
            m += 1;
        }
        if m == 0 || m * 2 != name_len {
            // Cut short, it would be another hive's name; outside the bytes written, none.
            missed = true;
            continue;
        }
        if read == Read::Check {
            tracker.hive_listed(&mount[..m]);
            signature.add(&mount[..m]);
            continue;
        }
        // The file whole (a hive's file path can be longer than a mount: the tracker stores
        // what fits and flags the rest), in a pool block when the stack's is too small.
        let units = utf16_at(buf, data_offset, data_len).take_while(|&u| u != 0);
        let mut small = [0u16; 512];
        let mut big = (data_len / 2 > small.len())
            .then(|| Scratch::new(data_len))
            .flatten();
        let room: &mut [u16] = match big.as_mut() {
            Some(block) => block.units(),
            None => &mut small,
        };
        let mut f = 0;
        for u in units.take(room.len()) {
            room[f] = u;
            f += 1;
        }
        signature.add(&mount[..m]);
        // Load time 0, "not known": the hive was mounted before tracking began, so keys of
        // it may predate tracking (a pending unload of it is never taken as done). A record
        // the callback made meanwhile is newer than the list and left as it is.
        // A refresh records only a hive the tracker does not know, or one loaded at a known
        // mount from another file (review 22a, L3): it compares the file.
        let recorded = if read == Read::Refresh {
            tracker.hive_refreshed(&mount[..m], &room[..f])
        } else {
            tracker.hive_seeded(&mount[..m], &room[..f])
        };
        // No memory for the whole path: recorded cut, and counted — only when this read
        // recorded it: a hive recorded already keeps its path, and a later read (up to one a
        // second while no seed is whole) would otherwise count the loss again (review 20a,
        // L2).
        cut |= recorded && data_len / 2 > room.len();
    }
    if !ended {
        missed = true; // more values than the read walks
    }
    Pass {
        missed,
        cut,
        signature,
    }
}

/// `ZwEnumerateValueKey` of value `index` of `key` as `KEY_VALUE_FULL_INFORMATION` into
/// `scratch`; `returned` gets the size the call reports.
fn enumerate_value(key: &Key, index: u32, scratch: &mut Scratch, returned: &mut u32) -> NTSTATUS {
    let buf = scratch.bytes();
    // The buffer is `buf.len()` writable bytes and `returned` a writable ULONG.
    // SAFETY: documented call at PASSIVE_LEVEL on the open kernel handle `key`.
    unsafe {
        ZwEnumerateValueKey(
            key.0,
            index,
            KeyValueFullInformation,
            buf.as_mut_ptr().cast(),
            u32::try_from(buf.len()).unwrap_or(0),
            returned,
        )
    }
}
