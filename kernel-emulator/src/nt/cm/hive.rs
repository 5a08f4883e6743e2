//! Registry model: hives mounted at paths under `\REGISTRY`, the keys in them (with the case
//! they were created with), registry symbolic links, key objects (one per successful open or
//! create, as CM_KEY_BODY is; destroyed at their last reference, on the closing thread or on a
//! system worker thread), per-process handle tables (duplicated and inherited handles share
//! the object and produce no notification), the notifications each operation delivers through
//! [`crate::nt::cm::registry`], and hive unload, which
//! fails with STATUS_CANNOT_DELETE while any key object of the hive exists or is referenced —
//! including references a driver took with ObReferenceObject: this is how a test proves that
//! the driver never pins a hive.
//!
//! Docs: "Filtering Registry Calls", "Invalid Key Object Pointers in Registry Notifications",
//! RegUnLoadKey/NtUnloadKey (fails while keys of the hive are open).
//!
//! Hive lifecycle as the APIs make it:
//! - [`load_key`] with a root handle is what `RegLoadKey(HKEY_USERS, "S-1-5-21-…", file)`
//!   sends: ReactOS advapi32 `RegLoadKeyW` maps the predefined key to a handle and calls
//!   `NtLoadKey` with `ObjectAttributes.RootDirectory` = that handle and `ObjectName` = the
//!   relative sub-key; REG_LOAD_KEY_INFORMATION
//!   (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_load_key_information>)
//!   then carries `Object` = the root directory's key object and `KeyName` = the relative
//!   name (an absolute `NtLoadKey` has no root object: `Object` NULL). That `Object` is the
//!   RootDirectory's key object is how filters in the field read it; the Learn page's wording
//!   ("the root key of the hive that is about to be loaded") cannot be literal, as that key
//!   does not exist before the load.
//! - [`load_app_key`] is `RegLoadAppKey`
//!   (<https://learn.microsoft.com/en-us/windows/win32/api/winreg/nf-winreg-regloadappkeyw>):
//!   the hive is mounted under `\REGISTRY\A\{GUID}` (a root that cannot be enumerated), the
//!   caller gets a handle to its root key through `RootHandle` (non-NULL only for app hives,
//!   per the structure's page), loading the same file again returns a new handle to the hive
//!   already loaded, and the hive "is automatically unloaded when all handles to the keys
//!   inside the hive are closed". The model delivers RegNtPreLoadKey, then the open of the
//!   root by its absolute name `\REGISTRY\A\{GUID}` on the caller's thread (RegNtPreOpenKeyEx /
//!   RegNtPostOpenKeyEx: Learn "Filtering Registry Operations on Application Hives" says only
//!   the registry manager can open an app hive by such a path and that the path appears in
//!   the create/open notifications' CompleteName; an open rather than a create, and its place
//!   inside the load, are an *inference*; until 2026-12-05 the model announced no open, audit
//!   F1), then RegNtPostLoadKey (with `RootHandle` and `Flags` = REG_APP_HIVE). The automatic
//!   unload delivers no RegNtPreUnLoadKey: no thread asks for it (the unload notification is
//!   documented as sent when "a thread attempts to unload a key"), an *inference*.
//! - [`unload_key_ex`] is `NtUnloadKeyEx(TargetKey, Event)`. ReactOS returns
//!   STATUS_NOT_IMPLEMENTED and Learn has no page; REG_UNLOAD_KEY_INFORMATION carries
//!   `UserEvent` and REG_LOAD_KEY_INFORMATION documents that event as "signaled when the hive
//!   is unloaded". The late unload on a worker is the Windows Research Kernel's
//!   (`base/ntos/config/cmdelete.c`: `CmpDeleteKeyObject` of a key in a frozen hive calls
//!   `CmpDoQueueLateUnloadWorker`, which queues `CmpLateUnloadHiveWorker` on the
//!   DelayedWorkQueue). The return values are the WRK's too (`ntapi.c` NtUnloadKeyEx, its
//!   header: "STATUS_SUCCESS - hive successfully unloaded - no late-unloading needed",
//!   "STATUS_PENDING - hive has been frozen and the event (if any) will be signaled when the
//!   hive unloads"): with keys still open the call returns STATUS_PENDING, and once the
//!   hive's last key object is gone a system worker thread (System process) unloads it and
//!   signals the event; a free hive unloads at once (STATUS_SUCCESS, event signalled). The
//!   WRK predates the unload notifications, so STATUS_PENDING in the post-notification and
//!   no further notification at the late unload remain an *inference*.
//!   A closed subkey holds the hive until the delayed KCB dereference runs, up to 5 s later
//!   in emulated time (WRK `cmdelay.c`; see [`delay_deref`]).
//! - [`unload_key2`] with [`REG_FORCE_UNLOAD`] is the User Profile Service's forced unload
//!   after its event 1530: a held hive unloads all the same, the keys left open stay open on
//!   blocks marked deleted (WRK `cmapi.c` CmUnloadKey, `cmsubs.c` CmpSearchForOpenSubKeys
//!   SearchAndDeref; see `unload`).
//! - The unloads ([`unload_hive`], [`unload_key2`], [`unload_key_ex`]) first open the hive's root themselves
//!   with a private kernel handle (WRK `base/ntos/config/ntapi.c` NtUnloadKey2/NtUnloadKeyEx:
//!   "we open a private kernel mode handle just to take a reference on the object"), so a
//!   filter sees a create of the root on the caller's thread before the unload, and the
//!   object's close after it (see `unload`).
//! - Kernel handles ([`open_kernel_key`]): the notifications run on the calling thread, in its
//!   process, with `Attributes` holding OBJ_KERNEL_HANDLE and `CheckAccessMode` KernelMode;
//!   the handle goes into the System process's table with the kernel-handle bit set (ReactOS
//!   `ObpCreateHandle`: `ObpKernelHandleTable`, `ObMarkHandleAsKernelHandle`), survives the
//!   opening process, and closing it from any thread attaches that thread to the System
//!   process for the close (ReactOS `ObpCloseHandle`: `KeStackAttachProcess(PsInitialSystemProcess)`).
//!   A handle opened without OBJ_KERNEL_HANDLE by a thread attached to another process goes
//!   into that process's table (`PsGetCurrentProcess()->ObjectTable`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::c_void;

use crate::nt::cm::registry::{
    self, PreFields, RegCreateKeyInformationV1, RegDeleteKeyInformation,
    RegKeyHandleCloseInformation, RegLoadKeyInformation, RegRenameKeyInformation,
    RegUnloadKeyInformation, class,
};
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::layout::OwnedUnicode;
use crate::nt::ob::object::{KERNEL_HANDLE_BIT, OBJ_INHERIT, OBJ_KERNEL_HANDLE};
use crate::nt::status::{
    NtStatus, STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_KEY_DELETED, STATUS_OBJECT_NAME_COLLISION,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING, STATUS_PREDEFINED_HANDLE, STATUS_REPARSE,
    STATUS_SUCCESS, STATUS_TOO_LATE,
};

/// What unloading a hive with open keys returns.
pub use crate::nt::status::STATUS_CANNOT_DELETE;
/// REG_CREATED_NEW_KEY.
pub const REG_CREATED_NEW_KEY: u32 = 1;
/// REG_OPENED_EXISTING_KEY.
pub const REG_OPENED_EXISTING_KEY: u32 = 2;

/// Marker in a key path whose open succeeds in the post-notification and then fails to get
/// a handle (STATUS_INSUFFICIENT_RESOURCES): the object is destroyed.
pub const HANDLE_FAIL_MARKER: &str = "KEMU-NOHANDLE";
/// The System process id: system worker threads run there.
pub const SYSTEM_PID: u32 = 4;
/// How many symbolic links one open follows before giving up (a model bound).
const MAX_REPARSE: usize = 32;

/// One key object.
#[derive(Debug, Clone)]
pub struct KeyObject {
    /// Full key name as stored: the hive's mount point as loaded and each key's name in the
    /// case it was created with, whatever the opener typed (`\REGISTRY\MACHINE\SOFTWARE\X`).
    pub name: String,
    /// Canonical (upper-case) mount point of its hive.
    pub hive: String,
    /// Open handles.
    pub handles: u32,
    /// Being destroyed (between pre-close and its end).
    pub destroyed: bool,
    /// Per-callback contexts by cookie.
    pub contexts: BTreeMap<i64, usize>,
    /// Key id (same for every object of one key).
    pub key_id: usize,
    /// The process that opened it (`CM_KEY_BODY.ProcessID`, set to `PsGetCurrentProcessId`
    /// when the key body is created: ReactOS `CmpCreateKeyBody`/`CmpDoCreateChild`, Windows
    /// Research Kernel `CmpDoOpen`). What `NtQueryOpenSubKeysEx` reports as its pid.
    pub opener: u32,
    /// Its open's post-notification went out with STATUS_SUCCESS while a driver's callback
    /// (and no emulated filter) was registered: a tracking driver was told of it. The audit
    /// of holders answers relies on it (`Ctx::ioctl_checked`).
    pub announced: bool,
    /// Its key was deleted (NtDeleteKey) while it lived: the object stays, with its id, name
    /// and hive, and still pins the hive, but belongs to no key a lookup can find
    /// ([`delete_key`]).
    pub deleted: bool,
}

/// One mounted hive.
#[derive(Debug, Clone)]
pub struct Hive {
    /// Mount point as given.
    pub mount: String,
    /// Backing file.
    pub file: String,
    /// An application hive (RegLoadAppKey): unloads by itself when its last key goes.
    pub app: bool,
    /// A deferred unload (NtUnloadKeyEx with an event) waiting for the last key to go.
    pub pending_unload: Option<UnloadEvent>,
    /// The event of a deferred unload that a reload of the same file cancelled ("unfreeze the
    /// hive", WRK `cmapi.c` CmpIsHiveAlreadyLoaded): no longer waited on, it stays the hive's
    /// `UnloadEvent` and is set when the hive does unload (WRK `cmapi.c` CmUnloadKey:
    /// `if( CmHive->UnloadEvent != NULL ) KeSetEvent`).
    pub kept_event: Option<UnloadEvent>,
}

/// The master hive's pseudo mount point: it is never listed, loaded or unloaded.
pub const MASTER_HIVE: &str = r"\REGISTRY";
/// The keys of the master hive that can be opened (canonical): `HKEY_LOCAL_MACHINE` and
/// `HKEY_USERS` are handles to the last two, which `RegLoadKey` passes as the root directory.
/// `\REGISTRY\A` is not among them: the app-hive root "cannot be enumerated" (RegLoadAppKey).
pub const MASTER_KEYS: [&str; 3] = [r"\REGISTRY", r"\REGISTRY\MACHINE", r"\REGISTRY\USER"];

/// The mount root of application hives.
pub const APP_HIVE_ROOT: &str = r"\REGISTRY\A";
/// REG_APP_HIVE (winnt.h), the NtLoadKeyEx flag of an application hive.
pub const REG_APP_HIVE: u32 = 0x10;

/// How a deferred unload ended, as the event's waiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnloadCompletion {
    /// The process the completing thread belongs to (4: a system worker thread).
    pub pid: u32,
    /// The emulated processor number of the completing thread.
    pub thread: u32,
}

/// The event of [`unload_key_ex`] (the `Event` of NtUnloadKeyEx): signalled when the hive is
/// unloaded. Its address is what `UserEvent` carries to the callbacks.
#[derive(Debug, Clone)]
pub struct UnloadEvent {
    state: std::sync::Arc<(
        std::sync::Mutex<Option<UnloadCompletion>>,
        std::sync::Condvar,
    )>,
    /// The fake event object's address (`REG_UNLOAD_KEY_INFORMATION.UserEvent`).
    pub object: usize,
}

impl UnloadEvent {
    fn new() -> Self {
        Self {
            state: std::sync::Arc::default(),
            object: alloc_object_page(),
        }
    }

    fn signal(&self, completion: UnloadCompletion) {
        let (m, c) = &*self.state;
        *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(completion);
        c.notify_all();
    }

    /// Whether the hive is unloaded (and by which thread), without waiting.
    #[must_use]
    pub fn signalled(&self) -> Option<UnloadCompletion> {
        *self
            .state
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to `timeout` for the unload (KeWaitForSingleObject on the event).
    #[must_use]
    pub fn wait(&self, timeout: std::time::Duration) -> Option<UnloadCompletion> {
        let (m, c) = &*self.state;
        let g = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (g, _) = c
            .wait_timeout_while(g, timeout, |done| done.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g
    }
}

/// The first key id the model hands out, and the distance between two (a KCB's size, say).
///
/// An id is taken to be the key control block's address (an inference: see
/// [`HiveState::key_id`]), which lies in system space (a KCB is pool memory, ReactOS
/// `cmalloc.c` CmpAllocateKeyControlBlock), so the model's ids are canonical kernel
/// addresses too, as the kernel-address scans look for. Until 2026-12-06 they started at
/// 0x4B00_0000, where the ioctl fuzz at CI volume took an answer's small count beside zero
/// header bytes for a leaked id (a false alarm, 1 in 1,000,000 inputs).
const KEY_ID_BASE: usize = 0xFFFF_A84B_0000_0000;
const KEY_ID_STRIDE: usize = 0x40;

/// Registry state.
#[derive(Debug, Default)]
pub struct HiveState {
    /// Mounted hives by canonical mount point.
    pub hives: BTreeMap<String, Hive>,
    /// Existing keys (canonical names).
    pub keys: BTreeSet<String>,
    /// The id of each key that has one (canonical name -> id): a key whose key control
    /// block exists. See [`HiveState::key_id`] and [`HiveState::remove_object`].
    key_ids: HashMap<String, usize>,
    /// Ids freed when their key's last object (and every object below it) went, most recent
    /// last: the next key that needs an id takes the last one.
    free_key_ids: Vec<usize>,
    /// Ids handed out so far (fresh ones are numbered from it).
    minted_key_ids: usize,
    /// Live key objects at or below each canonical key (what keeps a key's id alive); a
    /// deleted key still referenced counts as one below its parent ([`DeletedKey`]).
    live_below: HashMap<String, usize>,
    /// Deleted keys still referenced, by id: their ids stay allocated, apart from `key_ids`,
    /// until their last reference goes ([`HiveState::delete`]).
    deleted_keys: HashMap<usize, DeletedKey>,
    /// The Windows 7 routine `CmCallbackGetKeyObjectID`'s name of each key it named (key id
    /// -> the kernel-owned UNICODE_STRING): built at the first call and handed out again,
    /// the old name after a rename, until the key's id goes (`registry.rs`).
    pub(crate) old_names: HashMap<usize, usize>,
    /// Live key objects by address.
    pub objects: HashMap<usize, KeyObject>,
    /// Handles: (pid, handle) -> key object.
    pub handles: BTreeMap<(u32, u64), usize>,
    /// The handles whose table entry holds OBJ_INHERIT (`ObAttributes`): set from the open's
    /// OBJECT_ATTRIBUTES (Windows Research Kernel `ob/obhandle.c` ObpCreateHandle:
    /// `ObjectTableEntry.ObAttributes |= (Attributes & OBJ_HANDLE_ATTRIBUTES)`) or by
    /// [`set_handle_inherit`]; only these go to a child ([`inherit_handles`]).
    inheritable: BTreeSet<(u32, u64)>,
    /// Handle values are handed out from one counter for every table, so a value is never in
    /// two tables unless a child inherited it (the Windows tables number each their own).
    next_handle: u64,
    /// Stored spelling of created keys, by canonical name.
    spelled: HashMap<String, String>,
    /// Registry symbolic links: canonical link key -> target path.
    links: BTreeMap<String, String>,
    /// Followed links whose cached key control block references its target's block
    /// (canonical link key -> canonical target key): see [`HiveState::cache_link_follow`].
    link_kcbs: BTreeMap<String, String>,
    /// Keys that answer an open with STATUS_PREDEFINED_HANDLE.
    predefined: BTreeSet<String>,
    /// Key objects are deleted on a system worker thread (see [`set_deferred_deletion`]).
    defer_deletion: bool,
    /// Key objects whose deletion is queued for the worker thread.
    deferred: Vec<usize>,
    /// The delayed KCB dereference's timer ([`delay_deref`]): when it expires, in emulated
    /// time ([`crate::machine::cpu::emulated_offset`], 100 ns), `None` while not set.
    delay_deref_due: Option<u64>,
    /// Hives with a deferred unload pending that have a key control block on the delayed
    /// dereference list: each still holds its hive's root, and the late unload is checked for
    /// when the list is processed ([`delay_deref`]).
    delay_deref_hives: Vec<String>,
    /// The `\REGISTRY` key object (0 until the first absolute open needs it): the root an
    /// absolute name is parsed from, never closed ([`registry_root`]).
    registry_root: usize,
    /// What a load's REG_LOAD_KEY_INFORMATION `Object` points at ([`set_load_object`]).
    load_object: LoadObject,
    /// The values of the hive list key in their value-list order: (value name = the mount
    /// point as linked, data = the file). Kept by the kernel's own writes at each load and
    /// unload ([`add_to_hive_list`], [`remove_from_hive_list`]); read by
    /// [`crate::nt::cm::zwreg`] through [`hive_list`].
    hive_list: Vec<(String, String)>,
    /// Keys whose hash bucket the next reads of the kernel's list find busy (canonical key
    /// name -> reads left): see [`busy_bucket`].
    busy_buckets: BTreeMap<String, u32>,
}

/// Readings of REG_LOAD_KEY_INFORMATION's `Object` for a load relative to a root directory
/// (`RegLoadKey(HKEY_USERS, "S-1-5-21-…", file)`). No source settles which one Windows
/// follows (no Windows Research Kernel or ReactOS code sends this notification; fidelity
/// audit 16b, F5), so the model plays each, per scenario, and the driver must record a true
/// mount under all of them. An absolute load carries `Object` NULL under every reading.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LoadObject {
    /// `Object` is the root directory's key object (the `HKEY_USERS` key) and `KeyName` is
    /// relative to it: how filters in the field read it (the default; `td-relative-load`).
    #[default]
    RootDirectory,
    /// The Learn page's literal wording: "A pointer to the registry key object for the root
    /// key of the hive that is about to be loaded"
    /// (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_load_key_information>).
    /// That key does not exist before the load, so the pre carries `Object` NULL, and the
    /// post's `PreInformation` carries a key object of the new hive's root. The kernel gets
    /// it as the unload gets its own object of a hive's root (Windows Research Kernel
    /// `ntapi.c` NtUnloadKey2: a private kernel handle "just to take a reference on the
    /// object"): an open of the root on the caller's thread, notified like any create, the
    /// handle closed at once and the reference dropped after the post. All of it is an
    /// *inference*, the closest thing to the wording that can exist; the post's own `Object`
    /// (REG_POST_OPERATION_INFORMATION) stays NULL, a choice. `KeyName` stays as given.
    HiveRoot,
    /// `Object` NULL in the pre and in the post, `KeyName` relative: a reading that leaves a
    /// driver no way to place the hive (an *inference*, for the driver's sake).
    Null,
}

/// Which reading of REG_LOAD_KEY_INFORMATION `Object` the loads of this run follow
/// ([`LoadObject`]).
pub fn set_load_object(reading: LoadObject) {
    kernel::with(|k| k.hives.load_object = reading);
}

/// What a deleted key's key control block hangs from: its parent (WRK `cmsubs.c`
/// CmpCreateKeyControlBlock references `ParentKcb`, which CmDeleteKey leaves in place).
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeletedParent {
    /// A key that still exists, by canonical name: the deleted key counts as one in its
    /// `live_below`.
    Key(String),
    /// A deleted key, by id.
    Deleted(usize),
}

/// A deleted key whose key control block is still referenced (WRK `cmapi2.c` CmDeleteKey:
/// `Delete = TRUE`, `CmpRemoveKeyControlBlock`, "do NOT free its storage ... when the
/// RefCount becomes zero"): by its key objects and by the KCBs of deleted keys below it.
#[derive(Debug, Clone)]
struct DeletedKey {
    /// Its key objects plus the deleted keys that hang from it.
    refs: usize,
    parent: DeletedParent,
}

fn canon(path: &str) -> String {
    path.trim_end_matches('\\').to_ascii_uppercase()
}

/// `k` with its prefix `old` (a whole key or a key above it) replaced by `new`; None if `k`
/// is neither `old` nor below it.
fn rebase(k: &str, old: &str, new: &str) -> Option<String> {
    let rest = k.strip_prefix(old)?;
    (rest.is_empty() || rest.starts_with('\\')).then(|| format!("{new}{rest}"))
}

/// Moves every entry of `map` at or below canonical `old` to `new`.
fn rebase_map<V>(map: &mut HashMap<String, V>, old: &str, new: &str) {
    let moved: Vec<String> = map
        .keys()
        .filter(|k| rebase(k, old, new).is_some())
        .cloned()
        .collect();
    for k in moved {
        if let (Some(v), Some(n)) = (map.remove(&k), rebase(&k, old, new)) {
            map.insert(n, v);
        }
    }
}

impl HiveState {
    /// The context `cookie` attached to `object` (0 if none or not a key object).
    #[must_use]
    pub fn context_of(&self, object: usize, cookie: i64) -> usize {
        self.objects
            .get(&object)
            .and_then(|o| o.contexts.get(&cookie).copied())
            .unwrap_or(0)
    }

    /// Removes and returns every context of `cookie` (CmUnRegisterCallback).
    pub fn take_contexts_of(&mut self, cookie: i64) -> Vec<(usize, usize)> {
        self.objects
            .iter_mut()
            .filter_map(|(a, o)| o.contexts.remove(&cookie).map(|c| (*a, c)))
            .collect()
    }

    /// Sets a context; returns the old one, or None if `object` is not a live key object.
    pub fn set_context(&mut self, object: usize, cookie: i64, context: usize) -> Option<usize> {
        let o = self.objects.get_mut(&object)?;
        Some(if context == 0 {
            o.contexts.remove(&cookie).unwrap_or(0)
        } else {
            o.contexts.insert(cookie, context).unwrap_or(0)
        })
    }

    /// (key id, name, being destroyed) of a key object.
    #[must_use]
    pub fn identify(&self, object: usize) -> Option<(usize, String, bool)> {
        self.objects
            .get(&object)
            .map(|o| (o.key_id, o.name.clone(), o.destroyed))
    }

    /// The stored name of canonical `key`, which the caller spelled `given`: a mount point as
    /// loaded, a key as created; parts the model never saw created keep the caller's case.
    fn stored_name(&self, key: &str, given: &str) -> String {
        if let Some(n) = self.spelled.get(key) {
            return n.clone();
        }
        if let Some(h) = self.hives.get(key) {
            return h.mount.clone();
        }
        match (key.rsplit_once('\\'), given.rsplit_once('\\')) {
            (Some((kp, _)), Some((gp, last))) if !kp.is_empty() => {
                format!("{}\\{last}", self.stored_name(kp, gp))
            }
            _ => given.to_string(),
        }
    }

    /// The name an open of `given` (canonical `key`) reparses to when a symbolic link is on
    /// its path: the link's target plus the rest of the name (ReactOS
    /// `ntoskrnl/config/cmparse.c`, CmpGetSymbolicLink).
    fn reparse_target(&self, key: &str, given: &str) -> Option<String> {
        let (link, target) = self
            .links
            .iter()
            .filter(|(l, _)| key == l.as_str() || key.starts_with(&format!("{l}\\")))
            .max_by_key(|(l, _)| l.len())?;
        let rest = given.get(link.len()..).unwrap_or("");
        Some(format!("{target}{rest}"))
    }

    /// A follow of the link on canonical `key`'s path (if any): the link's key control block
    /// now references its target's, until the link's block is cleaned up. WRK
    /// `base/ntos/config/cmparse.c` CmpGetSymbolicLink: "Now the RealKcb is also pointed to
    /// by its symbolic link Kcb, Increase the reference count. Need to dereference the
    /// realkcb when the symbolic kcb is removed" (`CmpReferenceKeyControlBlock(RealKcb)`,
    /// `ExtFlags |= CM_KCB_SYM_LINK_FOUND`); the reference goes only in `cmsubs.c`
    /// CmpCleanUpKcbValueCache (`CmpDelayDerefKeyControlBlock(...RealKcb)`), when the
    /// link's own block leaves the cache. A link block with no handle (the model has no
    /// handle on a link block: REG_OPTION_OPEN_LINK is not modelled) sits in the delayed
    /// close table, and every `CmpSearchForOpenSubKeys` with SearchIfExist or SearchAndCount
    /// on a hive's root purges that hive's blocks with no reference (`cmsubs.c` ≈584,
    /// CmpCleanUpKCBCacheTable: `kcb->RefCount == 0` and the same `KeyHive`, "only
    /// interested in kcbs below this hive's root"). That search runs at
    /// NtQueryOpenSubKeys(Ex) of the root (`ntapi.c` ≈4883, ≈5061, SearchAndCount) and at
    /// every unload attempt past the frozen/root checks whose root is referenced more than
    /// once, a failed one included (`cmapi.c` ≈3018 CmUnloadKey, SearchIfExist; NtUnloadKeyEx
    /// tries CmUnloadKey first, ≈3196). So the model drops the reference when the link's
    /// hive unloads ([`remove_hive`]), is queried, or an unload of it is attempted
    /// ([`HiveState::purge_link_blocks`]). Not modelled (model choices): the delayed close
    /// table's eviction of old entries (WRK `cmdelay.c`, `CmpDelayedCloseSize` = 2048), a
    /// forced unload's purge of every hive's unreferenced blocks (SearchAndDeref passes
    /// NULL), a hash bucket whose try-lock fails (skipped), REG_OPTION_OPEN_LINK. The WRK takes the reference only when the target's block is
    /// already cached (`KcbFound`), which it is once any open reached the target; the model
    /// takes it at every follow to an existing key (an *inference*). WRK is Windows Server
    /// 2003: not verified on Windows 10/11.
    fn cache_link_follow(&mut self, key: &str) {
        let Some((link, target)) = self
            .links
            .iter()
            .filter(|(l, _)| key == l.as_str() || key.starts_with(&format!("{l}\\")))
            .max_by_key(|(l, _)| l.len())
            .map(|(l, t)| (l.clone(), canon(t)))
        else {
            return;
        };
        if self.keys.contains(&target) || self.hives.contains_key(&target) {
            self.link_kcbs.insert(link, target);
        }
    }

    /// The search for open keys of hive `m` purges `m`'s unreferenced cached blocks, its link
    /// blocks among them, so their references on other hives' blocks go (WRK `cmsubs.c` ≈584
    /// CmpSearchForOpenSubKeys → CmpCleanUpKCBCacheTable → CmpCleanUpKcbCacheWithLock →
    /// CmpCleanUpKcbValueCache ≈1310-1319; see [`HiveState::cache_link_follow`]). Returns the
    /// other hives whose blocks were referenced: a deferred unload of one may now complete
    /// ([`hive_object_gone`]).
    fn purge_link_blocks(&mut self, m: &str) -> Vec<String> {
        let gone: Vec<(String, Option<String>)> = self
            .link_kcbs
            .iter()
            .filter(|(l, _)| self.hive_of(l).as_deref() == Some(m))
            .map(|(l, t)| (l.clone(), self.hive_of(t)))
            .collect();
        let mut released = Vec::new();
        for (l, t) in gone {
            self.link_kcbs.remove(&l);
            if let Some(t) = t.filter(|t| t != m && !released.contains(t)) {
                released.push(t);
            }
        }
        released
    }

    /// The cached link blocks in other hives that reference a block of hive `m` (link key,
    /// target key): each keeps `m`'s root referenced, with no key body in `m`
    /// ([`HiveState::cache_link_follow`]). A link in `m` itself does not count: the unload's
    /// purge evicts it first (WRK `cmsubs.c` CmpCleanUpKCBCacheTable).
    fn link_holds(&self, m: &str) -> Vec<(String, String)> {
        self.link_kcbs
            .iter()
            .filter(|(l, t)| {
                self.hive_of(t).as_deref() == Some(m) && self.hive_of(l).as_deref() != Some(m)
            })
            .map(|(l, t)| (l.clone(), t.clone()))
            .collect()
    }

    /// `path` with every registry link on it followed, canonical (as an open would reach it).
    fn resolved(&self, path: &str) -> String {
        let mut full = path.trim_end_matches('\\').to_string();
        for _ in 0..MAX_REPARSE {
            match self.reparse_target(&canon(&full), &full) {
                Some(target) => full = target.trim_end_matches('\\').to_string(),
                None => break,
            }
        }
        canon(&full)
    }

    /// The mounted hive the hive list key lives in (the SYSTEM hive), if one is mounted.
    fn hive_list_hive(&self) -> Option<String> {
        self.hive_of(&self.resolved(HIVE_LIST))
            .filter(|h| h.as_str() != MASTER_HIVE)
    }

    /// Whether the kernel's `ZwCreateKey` of the hive list can reach it: its parent
    /// (`CurrentControlSet\Control`, through the link) is a key of a mounted hive.
    fn hive_list_reachable(&self) -> bool {
        let parent = HIVE_LIST.rsplit_once('\\').map_or("", |(p, _)| p);
        let key = self.resolved(parent);
        self.keys.contains(&key) && self.hive_of(&key).is_some_and(|h| h != MASTER_HIVE)
    }

    /// The loaded hive holding `key` (longest mount-point prefix).
    fn hive_of(&self, key: &str) -> Option<String> {
        self.hives
            .keys()
            .filter(|m| key == m.as_str() || key.starts_with(&format!("{m}\\")))
            .max_by_key(|m| m.len())
            .cloned()
            .or_else(|| MASTER_KEYS.contains(&key).then(|| MASTER_HIVE.to_string()))
    }

    /// The id `CmCallbackGetKeyObjectIDEx` reports for canonical `key`: the one it has while
    /// any key object of it or of a key below it lives, else a new one — the most recently
    /// freed id first (LIFO), so a *different* key soon gets an id a driver may still
    /// remember. Learn, CmCallbackGetKeyObjectIDEx
    /// (<https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmcallbackgetkeyobjectidex>),
    /// Remarks: the objects of one key have identical ids, the id survives a rename, and it
    /// is "unique across all keys in the registry"; nothing promises more. That the id dies
    /// with the key's last object and is reused is an *inference*: the id is the key control
    /// block's address (the brief's premise; no public source shows the routine), a KCB is
    /// referenced by each key body (ReactOS `ntoskrnl/config/cmparse.c` CmpDoCreateChild /
    /// `cmkcbncb.c` EnlistKeyBodyWithKCB; released in `cmsysini.c` CmpDeleteKeyObject:
    /// DelistKeyBodyFromKCB + CmpDelayDerefKeyControlBlock) and by each child KCB
    /// (`cmkcbncb.c` CmpCreateKeyControlBlock references `Parent`), and once unreferenced
    /// it is freed (`cmkcbncb.c` CmpDereferenceKeyControlBlockWithLock ->
    /// CmpCleanUpKcbCacheWithLock -> CmpFreeKeyControlBlock, then the parent is
    /// dereferenced) into an allocator that hands freed KCBs out again (`cmalloc.c`
    /// CmpFreeKeyControlBlock / CmpAllocateKeyControlBlock). ReactOS reuses them FIFO and
    /// first parks an unreferenced KCB in a delayed-close cache (CmpAddToDelayedClose, where
    /// a reopen of the same key finds it again); the Windows Research Kernel delays the last
    /// dereference too (`cmdelete.c` CmpDeleteKeyObject -> `cmdelay.c`
    /// CmpDelayDerefKeyControlBlock, whose worker runs on a timer "5 secs later"; a KCB not
    /// deleted then goes to the delayed-close table, `cmsubs.c`). The model frees at once and
    /// reuses LIFO — the earliest and most confusing reuse the mechanism allows, on purpose
    /// (adversarial). hivetrack frees its cache entry at the object's context cleanup, before
    /// either.
    /// The range every key id handed out so far lies in: on Windows an id is the key
    /// control block's address ([`Self::key_id`]), so one in an answer is a kernel address.
    #[must_use]
    pub const fn key_id_range(&self) -> (usize, usize) {
        (
            KEY_ID_BASE,
            KEY_ID_BASE + self.minted_key_ids * KEY_ID_STRIDE,
        )
    }

    fn key_id(&mut self, key: &str) -> usize {
        if let Some(&id) = self.key_ids.get(key) {
            return id;
        }
        let id = self.free_key_ids.pop().unwrap_or_else(|| {
            self.minted_key_ids += 1;
            KEY_ID_BASE + (self.minted_key_ids - 1) * KEY_ID_STRIDE
        });
        self.key_ids.insert(key.to_string(), id);
        id
    }

    /// Adds `delta` to the live-object count of canonical `key` and of each key above it.
    fn count_live(&mut self, key: &str, delta: isize) {
        let mut k = key;
        loop {
            let n = self.live_below.entry(k.to_string()).or_insert(0);
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.live_below.remove(k);
            }
            match k.rsplit_once('\\') {
                Some((parent, _)) if !parent.is_empty() => k = parent,
                _ => break,
            }
        }
    }

    /// Records a new live key object (every insertion into `objects` goes through here).
    fn add_object(&mut self, address: usize, object: KeyObject) {
        self.count_live(&canon(&object.name), 1);
        self.objects.insert(address, object);
    }

    /// Forgets a key object; if it was the last object at or below its key, that key's id is
    /// freed, and so is each id above it left with nothing below (deepest first, as
    /// CmpCleanUpKcbCacheWithLock frees a KCB and then dereferences its parent): see
    /// [`Self::key_id`].
    fn remove_object(&mut self, address: usize) -> Option<KeyObject> {
        let object = self.objects.remove(&address)?;
        if object.deleted {
            self.release_deleted(object.key_id);
            return Some(object);
        }
        let key = canon(&object.name);
        self.count_live(&key, -1);
        self.free_unheld(&key);
        Some(object)
    }

    /// Frees the id of canonical `key` if nothing is left at or below it, then of each key
    /// above it left so, deepest first.
    fn free_unheld(&mut self, key: &str) {
        let mut k = key;
        loop {
            if self.live_below.contains_key(k) {
                break;
            }
            if let Some(id) = self.key_ids.remove(k) {
                self.free_key_ids.push(id);
                if let Some(name) = self.old_names.remove(&id) {
                    crate::nt::cm::registry::free_kernel_name(name);
                }
            }
            match k.rsplit_once('\\') {
                Some((parent, _)) if !parent.is_empty() => k = parent,
                _ => break,
            }
        }
    }

    /// One reference fewer on the deleted key `id`; at the last its id is freed (it was
    /// kept out of `key_ids`, so a key re-created with the same name keeps its own id) and
    /// its parent loses the reference it held (WRK `cmsubs.c`
    /// CmpDereferenceKeyControlBlockWithLock -> CmpCleanUpKcbCacheWithLock: a deleted KCB is
    /// freed at once, never cached, then its parent is dereferenced).
    fn release_deleted(&mut self, id: usize) {
        let mut id = id;
        loop {
            let Some(d) = self.deleted_keys.get_mut(&id) else {
                return;
            };
            d.refs -= 1;
            if d.refs > 0 {
                return;
            }
            let parent = d.parent.clone();
            self.deleted_keys.remove(&id);
            self.free_key_ids.push(id);
            if let Some(name) = self.old_names.remove(&id) {
                crate::nt::cm::registry::free_kernel_name(name);
            }
            match parent {
                DeletedParent::Deleted(p) => id = p,
                DeletedParent::Key(p) => {
                    self.count_live(&p, -1);
                    self.free_unheld(&p);
                    return;
                }
            }
        }
    }

    /// The unload's own root `object`, which outlives its hive when its deletion is deferred:
    /// its KCB is marked deleted and taken out of the hash, as a deleted key's (WRK `cmapi.c`
    /// CmUnloadKey: `Kcb->Delete = TRUE; ... CmpRemoveKeyControlBlock(Kcb)`), so a hive loaded
    /// again at the mount gets a new root KCB and a new id while this object keeps the old
    /// one until it goes (fidelity audit F3; before 2026-12-05 the new root inherited it).
    fn retire_unloaded_root(&mut self, object: usize) {
        let Some(o) = self.objects.get_mut(&object) else {
            return;
        };
        if o.deleted {
            return;
        }
        let key = canon(&o.name);
        let Some(id) = self.key_ids.remove(&key) else {
            return;
        };
        o.deleted = true;
        let parent = key
            .rsplit_once('\\')
            .map_or(String::new(), |(p, _)| p.to_string());
        self.count_live(&key, -1);
        self.count_live(&parent, 1);
        self.deleted_keys.insert(
            id,
            DeletedKey {
                refs: 1,
                parent: DeletedParent::Key(parent),
            },
        );
    }

    /// NtDeleteKey's effect on the model (see [`delete_key`]), after WRK `cmapi2.c`
    /// CmDeleteKey.
    fn delete(&mut self, object: usize) -> NtStatus {
        let Some(o) = self.objects.get(&object) else {
            return STATUS_INVALID_HANDLE;
        };
        // "If already marked for deletion, storage is gone, so do nothing and return
        // success" (the `Delete == TRUE` test comes after the `\REGISTRY` one, which a
        // deleted key never is).
        if o.deleted {
            return STATUS_SUCCESS;
        }
        let key = canon(&o.name);
        // `\REGISTRY` (`ParentKcb == NULL`) and every hive's root (KEY_NO_DELETE: WRK
        // `cmparse.c` CmpDoCreateLinkNode, `cmsysini.c` CmpCreateRootNode) ->
        // STATUS_CANNOT_DELETE; `\REGISTRY\MACHINE` and `\REGISTRY\USER` hold the hives' links
        // (subkeys), so the same; and so does any key with a subkey.
        let below = format!("{key}\\");
        if MASTER_KEYS.contains(&key.as_str())
            || self.hives.contains_key(&key)
            || self.hive_of(&key).is_none()
            || self.keys.iter().any(|k| k.starts_with(&below))
            || self.hives.keys().any(|m| m.starts_with(&below))
        {
            return STATUS_CANNOT_DELETE;
        }
        let Some(id) = self.key_ids.remove(&key) else {
            return STATUS_INVALID_HANDLE;
        };
        self.keys.remove(&key);
        self.spelled.remove(&key);
        self.links.remove(&key);
        self.link_kcbs.remove(&key);
        self.predefined.remove(&key);
        self.mark_deleted(&key, id);
        STATUS_SUCCESS
    }

    /// The key control block of canonical `key` (id `id`, already out of `key_ids`) marked
    /// deleted: its objects (their bodies stay on the KCB) and the deleted keys that hung
    /// from it by name now hang from the deleted KCB, which hangs from its parent by name.
    fn mark_deleted(&mut self, key: &str, id: usize) {
        let mut refs = 0;
        for o in self.objects.values_mut() {
            if !o.deleted && canon(&o.name) == key {
                o.deleted = true;
                refs += 1;
            }
        }
        for d in self.deleted_keys.values_mut() {
            if d.parent == DeletedParent::Key(key.to_string()) {
                d.parent = DeletedParent::Deleted(id);
                refs += 1;
            }
        }
        // Each of those counted once at the key and above; now the deleted key counts once
        // above it (its KCB's reference on its parent).
        let parent = key
            .rsplit_once('\\')
            .map_or(String::new(), |(p, _)| p.to_string());
        self.count_live(key, -isize::try_from(refs).unwrap_or(isize::MAX));
        self.count_live(&parent, 1);
        self.deleted_keys.insert(
            id,
            DeletedKey {
                refs,
                parent: DeletedParent::Key(parent),
            },
        );
    }

    /// A forced unload's effect on the key objects of hive `m` (NtUnloadKey2 with
    /// REG_FORCE_UNLOAD, see `unload`): every key control block of the hive that a key
    /// object keeps alive is marked deleted and taken out of the hash, deepest first (WRK
    /// `cmsubs.c` CmpSearchForOpenSubKeys, SearchAndDeref: "Mark the key as deleted, remove it
    /// from cache, but don't add it to the Delay Close table (we want the key to be visible
    /// only to the one(s) that have open handles on it)"; `cmapi.c` CmUnloadKey then marks
    /// the root's `Kcb->Delete = TRUE` after CmpDestroyHive). The objects stay, with their
    /// handles, ids and names, as a deleted key's do ([`Self::delete`]); they belong to no
    /// loaded hive (`o.hive` becomes `m (unloaded)`), so a hive loaded again at the mount
    /// gets new blocks and ids and is neither held nor listed by them. A block with no id yet
    /// (a parent that no object opened itself) gets one first: on Windows every block has an
    /// address.
    fn force_unload_keys(&mut self, m: &str) {
        let below = format!("{m}\\");
        let mut keys: Vec<String> = self
            .live_below
            .keys()
            .filter(|k| k.as_str() == m || k.starts_with(&below))
            .cloned()
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.matches('\\').count()));
        for key in keys {
            let id = self.key_id(&key);
            self.key_ids.remove(&key);
            self.mark_deleted(&key, id);
        }
        let gone = format!("{m} (unloaded)");
        for o in self.objects.values_mut() {
            if o.hive == m {
                o.hive.clone_from(&gone);
            }
        }
    }

    /// NtRenameKey's effect on the model (see [`rename_key`]): the key of `object` and every
    /// key below it take the new last component; ids, objects and their counts follow.
    fn rename(&mut self, object: usize, new_name: &str) -> NtStatus {
        let Some((name, deleted)) = self
            .objects
            .get(&object)
            .map(|o| (o.name.clone(), o.deleted))
        else {
            return STATUS_INVALID_HANDLE;
        };
        // WRK `cmapi.c` CmRenameKey, first: "no edits, on keys marked for deletion".
        if deleted {
            return STATUS_KEY_DELETED;
        }
        let key = canon(&name);
        // Windows Research Kernel `base/ntos/config/cmapi.c`, CmRenameKey: "cannot rename the
        // root of a hive; or anything in the master hive" -> STATUS_ACCESS_DENIED.
        if self.hives.contains_key(&key) || self.hive_of(&key).is_none_or(|h| h == MASTER_HIVE) {
            return STATUS_ACCESS_DENIED;
        }
        let Some((parent, _)) = key.rsplit_once('\\') else {
            return STATUS_ACCESS_DENIED;
        };
        let new_key = format!("{parent}\\{}", new_name.to_ascii_uppercase());
        // CmRenameKey (WRK): CmpFindSubKeyByName finds a subkey of the parent with the new
        // name (compared case-insensitively, so the key itself too) -> STATUS_CANNOT_DELETE.
        if self.keys.contains(&new_key) {
            return STATUS_CANNOT_DELETE;
        }
        let old_stored = self.stored_name(&key, &name);
        // Same byte length as `key` (ASCII case only), so `parent.len()` is its separator.
        let new_stored = format!("{}\\{new_name}", &old_stored[..parent.len()]);
        let moved: Vec<String> = self
            .keys
            .iter()
            .filter(|k| rebase(k, &key, &new_key).is_some())
            .cloned()
            .collect();
        for k in moved {
            self.keys.remove(&k);
            if let Some(n) = rebase(&k, &key, &new_key) {
                self.keys.insert(n);
            }
        }
        let spelled: Vec<(String, String)> = self
            .spelled
            .iter()
            .filter(|(k, _)| rebase(k, &key, &new_key).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in spelled {
            self.spelled.remove(&k);
            if let (Some(n), Some(rest)) = (rebase(&k, &key, &new_key), v.get(key.len()..)) {
                self.spelled.insert(n, format!("{new_stored}{rest}"));
            }
        }
        self.spelled.insert(new_key.clone(), new_stored.clone());
        rebase_map(&mut self.key_ids, &key, &new_key);
        rebase_map(&mut self.live_below, &key, &new_key);
        for d in self.deleted_keys.values_mut() {
            if let DeletedParent::Key(p) = &d.parent
                && let Some(n) = rebase(p, &key, &new_key)
            {
                d.parent = DeletedParent::Key(n);
            }
        }
        let links: Vec<String> = self
            .links
            .keys()
            .filter(|k| rebase(k, &key, &new_key).is_some())
            .cloned()
            .collect();
        for k in links {
            if let (Some(t), Some(n)) = (self.links.remove(&k), rebase(&k, &key, &new_key)) {
                self.links.insert(n.clone(), t);
                // The renamed link's block keeps its cached reference (its ExtFlags move with it).
                if let Some(t) = self.link_kcbs.remove(&k) {
                    self.link_kcbs.insert(n, t);
                }
            }
        }
        let predefined: Vec<String> = self
            .predefined
            .iter()
            .filter(|k| rebase(k, &key, &new_key).is_some())
            .cloned()
            .collect();
        for k in predefined {
            self.predefined.remove(&k);
            if let Some(n) = rebase(&k, &key, &new_key) {
                self.predefined.insert(n);
            }
        }
        // Every live key object of the renamed keys reports the new name: the name is built
        // from the KCB chain (CmpConstructName), whose name block CmRenameKey replaces in the
        // renamed key's KCB (WRK `cmapi.c`: `KeyControlBlock->NameBlock =
        // CmpGetNameControlBlock(&NewKeyName)`; the KCBs below keep their parent pointer).
        // A deleted key's objects keep their names (not modelled: the WRK builds those from
        // the deleted KCB's parent chain too).
        for o in self.objects.values_mut() {
            if !o.deleted
                && rebase(&canon(&o.name), &key, &new_key).is_some()
                && let Some(rest) = o.name.get(key.len()..)
            {
                o.name = format!("{new_stored}{rest}");
            }
        }
        STATUS_SUCCESS
    }

    /// Handles a process holds.
    #[must_use]
    pub fn handles_of(&self, pid: u32) -> Vec<u64> {
        self.handles
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, h)| *h)
            .collect()
    }
}

/// A key object's memory: a page of its own, made inaccessible when the object is freed, so
/// a driver touching a dead key object faults.
/// Key-object pages come from 16 MiB regions, one page per object: a mapping per object
/// would hit Linux's `vm.max_map_count` (65,530) long before the 65,602 open keys of the leak
/// scenario. A freed page is made inaccessible, never reused.
fn alloc_object_page() -> usize {
    let mut g = OBJECT_PAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if g.0.0 == g.0.1 {
        // SAFETY: a fresh anonymous mapping.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                OBJECT_REGION,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(m != libc::MAP_FAILED, "key object mmap failed");
        let region = (m as usize, m as usize + OBJECT_REGION);
        g.0 = region;
        g.1.push(region);
    }
    let page = g.0.0;
    g.0.0 += 4096;
    page
}

/// The size of one region key-object pages are cut from.
const OBJECT_REGION: usize = 16 << 20;
/// Key-object pages: (next free page, end of its region), and every region mapped so far.
type ObjectPages = ((usize, usize), Vec<(usize, usize)>);
static OBJECT_PAGES: std::sync::Mutex<ObjectPages> = std::sync::Mutex::new(((0, 0), Vec::new()));

/// Every address range a key object was or is in: the regions key-object pages are cut
/// from. A driver that stored a key object's address (the `Object` of every registry
/// callback) and copied it into an answer would leak a kernel address: the IOCTL fuzz scans
/// answers for these (audit 21b F2).
#[must_use]
pub fn key_object_regions() -> Vec<(usize, usize)> {
    OBJECT_PAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .1
        .clone()
}

fn free_object_page(addr: usize) {
    // SAFETY: the key object's own page; the mapping stays reserved so the address is not
    // reused and stale pointers fault.
    unsafe { libc::mprotect(addr as *mut c_void, 4096, libc::PROT_NONE) };
}

/// Mounts a hive at an absolute path (`NtLoadKey` with no root directory, as kernel-mode
/// callers and services do): RegNtPreLoadKey with `Object` NULL and `KeyName` = `mount`,
/// then RegNtPostLoadKey.
#[must_use = "the status says whether the hive is mounted"]
pub fn load_hive(pid: u32, mount: &str, file: &str) -> NtStatus {
    load(pid, None, mount, file, false, || {}).0
}

/// [`load_hive`] with `between` run once the hive is mounted and before RegNtPostLoadKey: a
/// scenario's window between the load's pre and post, in which other threads can open its
/// keys and callbacks can register. The Windows Research Kernel's `cmapi.c` CmLoadKey links
/// the hive (`CmpLinkHiveToMaster`) before it returns; the WRK predates the load
/// notifications (its `cm.h` classes end at RegNtPostOpenKeyEx), so that the post comes after
/// the link, as every other class's post comes after its operation, is an *inference*.
#[must_use = "the status says whether the hive is mounted"]
pub fn load_hive_interrupted(
    pid: u32,
    mount: &str,
    file: &str,
    between: impl FnOnce(),
) -> NtStatus {
    load(pid, None, mount, file, false, between).0
}

/// Mounts a hive the way `RegLoadKey(hKey, lpSubKey, lpFile)` does: `NtLoadKey` with
/// `RootDirectory` = `root` (a key handle of `pid`, e.g. the `HKEY_USERS` handle opened on
/// `\REGISTRY\USER`) and the relative `key_name` (`S-1-5-21-…`). RegNtPreLoadKey carries
/// `Object` = the root's key object and `KeyName` = `key_name` as given; the hive is mounted
/// at the root's name + `\` + `key_name`. A handle `pid` does not hold is
/// STATUS_INVALID_HANDLE with no notification (the handle is resolved before the callbacks).
#[must_use = "the status says whether the hive is mounted"]
pub fn load_key(pid: u32, root: u64, key_name: &str, file: &str) -> NtStatus {
    load(pid, Some(root), key_name, file, false, || {}).0
}

/// [`load_key`] with `between` run after the hive is mounted and before the post-notification
/// (as [`load_hive_interrupted`]).
#[must_use = "the status says whether the hive is mounted"]
pub fn load_key_interrupted(
    pid: u32,
    root: u64,
    key_name: &str,
    file: &str,
    between: impl FnOnce(),
) -> NtStatus {
    load(pid, Some(root), key_name, file, false, between).0
}

/// Loads an application hive (`RegLoadAppKey(file, &hkey, …)`): mounted at
/// `\REGISTRY\A\{GUID}` (the same mount if `file` is already loaded as an app hive),
/// RegNtPreLoadKey/RegNtPostLoadKey with `RootHandle` set and `Flags` = [`REG_APP_HIVE`], and
/// a handle to the hive's root key in `pid`'s table, returned with the mount point; the
/// handle's open is notified between the load's pre and post, by its absolute name (see the
/// module doc). The hive unloads by itself, without RegNtPreUnLoadKey, when its last key
/// object is gone.
///
/// # Errors
/// The status of a vetoing pre-callback.
pub fn load_app_key(pid: u32, file: &str) -> Result<(u64, String), NtStatus> {
    match load(pid, None, "", file, true, || {}) {
        (STATUS_SUCCESS, Some((handle, mount))) => Ok((handle, mount)),
        (status, _) => Err(if status == STATUS_SUCCESS {
            STATUS_INVALID_HANDLE
        } else {
            status
        }),
    }
}

/// The name of the key object behind `pid`'s handle `root`.
fn root_name(pid: u32, root: u64) -> Option<(usize, String)> {
    let table = crate::nt::ps::process::handle_table_of(pid, root);
    kernel::with(|k| {
        let object = *k.hives.handles.get(&(table, root))?;
        k.hives
            .objects
            .get(&object)
            .map(|o| (object, o.name.clone()))
    })
}

/// The registry manager opens an app hive's root by its absolute name, on the caller's
/// thread, for the handle the caller gets (Learn "Filtering Registry Operations on
/// Application Hives": only the registry manager can open an application hive by a path
/// beginning with \REGISTRY\A\, and such a path "appears in the CompleteName member" of the
/// create/open notifications). An open, not a create, and its place between the load's pre
/// and post are an *inference*. Without a root handle, a hive nothing holds goes at once, as
/// an app hive does.
fn open_app_root(pid: u32, mount: &str) -> Result<u64, NtStatus> {
    let manager = OpenMode {
        kernel_handle: false,
        force_access_check: false,
        fail: None,
        registry_manager: true,
        kernel_caller: false,
        service_for_caller: false,
        attributes: None,
        options: 0,
    };
    open_mode(pid, None, mount, KEY_ALL_ACCESS, false, manager).inspect_err(|_| {
        hive_object_gone(&canon(mount));
    })
}

/// The reading of this run ([`set_load_object`]) and the pre-load's `Object` under it: only
/// the root directory reading has a key object before the load.
fn pre_load_object(root_directory: usize) -> (LoadObject, usize) {
    let reading = kernel::with(|k| k.hives.load_object);
    let object = match reading {
        LoadObject::RootDirectory => root_directory,
        LoadObject::HiveRoot | LoadObject::Null => 0,
    };
    (reading, object)
}

/// [`LoadObject::HiveRoot`]'s object: the new hive's root opened with a kernel handle on
/// `pid`'s thread (notified), referenced, the handle closed (as `unload` gets its own
/// object); the caller drops the reference after the post. `None` if the open fails (a filter
/// may veto it): the post then carries no object.
fn hive_root_object(pid: u32, mount: &str) -> Option<usize> {
    let handle = open_for_caller(pid, mount, false).ok()?;
    let object = kernel::with(|k| {
        let object = k.hives.handles.get(&(SYSTEM_PID, handle)).copied()?;
        *k.objects.references.entry(object).or_insert(0) += 1;
        Some(object)
    });
    let _ = close_key(pid, handle);
    object
}

/// The hive list key as the kernel names it (Windows Research Kernel
/// `base/ntos/config/cmhvlist.c` HIVE_LIST; ReactOS `ntoskrnl/config/cmhvlist.c` spells it
/// `\REGISTRY\MACHINE\SYSTEM\CurrentControlSet\Control\hivelist`).
pub const HIVE_LIST: &str = r"\registry\machine\system\currentcontrolset\control\hivelist";
/// KEY_READ | KEY_WRITE (winnt.h): the access the kernel opens the hive list with.
const KEY_READ_WRITE: u32 = 0x2_001F;
/// REG_OPTION_VOLATILE (winnt.h).
const REG_OPTION_VOLATILE: u32 = 1;
/// OBJ_CASE_INSENSITIVE (wdm.h).
const OBJ_CASE_INSENSITIVE: u32 = 0x40;

/// The values of the hive list key, in their order: (value name, file). See [`add_to_hive_list`].
#[must_use]
pub fn hive_list() -> Vec<(String, String)> {
    kernel::with(|k| k.hives.hive_list.clone())
}

/// The kernel's own open (`create`: `ZwCreateKey`) of the hive list, as `cmhvlist.c` makes it
/// (Windows Research Kernel): OBJECT_ATTRIBUTES with OBJ_CASE_INSENSITIVE alone, KEY_READ |
/// KEY_WRITE, REG_OPTION_VOLATILE for the create. A `Zw` call from kernel mode: previous mode
/// KernelMode, the notification's `CheckAccessMode` KernelMode, and — no OBJ_KERNEL_HANDLE —
/// the handle in the table of the calling thread's process (WRK `ob/obhandle.c`). ReactOS's
/// `cmhvlist.c` adds OBJ_KERNEL_HANDLE (a System-table handle); the model follows the WRK.
/// Through the machinery every open goes through, so every registered callback gets its
/// pre/post pair (a STATUS_REPARSE pair first at the CurrentControlSet link), on this thread.
fn open_hive_list(pid: u32, create: bool) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        kernel_handle: false,
        force_access_check: false,
        fail: None,
        registry_manager: false,
        kernel_caller: true,
        service_for_caller: false,
        attributes: Some(OBJ_CASE_INSENSITIVE),
        options: if create { REG_OPTION_VOLATILE } else { 0 },
    };
    open_mode(pid, None, HIVE_LIST, KEY_READ_WRITE, create, mode)
}

/// `CmpAddToHiveFileList` (WRK `cmhvlist.c`), which `CmLoadKey` calls once the hive is
/// linked (`cmapi.c`; ReactOS `cmapi.c` CmLoadKey the same): `ZwCreateKey` of the hive list,
/// `ZwSetValueKey(mount -> file, REG_SZ)`, `NtClose`, on `pid`'s thread; a failed create adds
/// nothing (the status is ignored by CmLoadKey). The value is new, so it goes at the end of
/// the value list: `CmSetValueKey` (WRK `cmapi.c`) asks `CmpFindNameInList` (`cmvalue.c`),
/// which returns the index "where Name should be in the list" — `Count` when absent —, and
/// `CmpSetValueKeyNew` inserts there with `CmpAddValueToList` ("adding at the end makes this
/// a nop"); an existing name keeps its place (`CmpSetValueKeyExisting`). So
/// `ZwEnumerateValueKey` indices follow load order. Not modelled: value notifications
/// (RegNtPreSetValueKey and its post; the model has none, see `zwreg`).
///
/// The model's boot: a hive mounted while the hive list's parent key is not reachable (no
/// SYSTEM hive yet, or no `CurrentControlSet\Control` in it) is listed without the open —
/// Windows adds its boot hives in `cmsysini.c` CmInitSystem1 / CmpInitializeHiveList after
/// the SYSTEM hive and its CurrentControlSet link exist (CmpCreateControlSet), in
/// CmpMachineHiveList's order; the model keeps the order in which a scenario mounts them.
fn add_to_hive_list(pid: u32, mount: &str, file: &str) {
    let set = |k: &mut kernel::Kernel| {
        let list = &mut k.hives.hive_list;
        match list
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(mount))
        {
            Some(entry) => entry.1 = file.to_string(),
            None => list.push((mount.to_string(), file.to_string())),
        }
    };
    change_hive_list(pid, true, set);
}

/// Applies `change` to the hive list inside the kernel's own open of its key on `pid`'s
/// thread ([`open_hive_list`], `create` for CmpAddToHiveFileList's `ZwCreateKey`), then
/// closes it; a failed open changes nothing. Unreachable (the model's boot, see
/// [`add_to_hive_list`]): changed without the open.
fn change_hive_list(pid: u32, create: bool, change: impl Fn(&mut kernel::Kernel)) {
    if !kernel::with(|k| k.hives.hive_list_reachable()) {
        kernel::with(change);
        return;
    }
    let Ok(handle) = open_hive_list(pid, create) else {
        return;
    };
    kernel::with(change);
    let _ = close_key(pid, handle);
}

/// `CmpRemoveFromHiveFileList` (WRK `cmhvlist.c`), which `CmUnloadKey` calls after
/// `CmpDestroyHive` (WRK `cmapi.c`; ReactOS `cmapi.c` CmUnloadKey after unlinking):
/// `ZwOpenKey` of the hive list (as [`open_hive_list`]), `ZwDeleteValueKey(mount)`,
/// `NtClose`, on `pid`'s thread; a failed open leaves the value. `CmDeleteValueKey` (WRK
/// `cmapi.c`) takes the value out with `CmpRemoveValueFromList` (`cmvalue.c`), which moves
/// every later value down one place: the indices after it shift down. Unreachable (the
/// model's boot, see [`add_to_hive_list`]): taken out without the open.
fn remove_from_hive_list(pid: u32, mount: &str) {
    let delete = |k: &mut kernel::Kernel| {
        k.hives
            .hive_list
            .retain(|(name, _)| !name.eq_ignore_ascii_case(mount));
    };
    change_hive_list(pid, false, delete);
}

/// The next application-hive mount point: `\REGISTRY\A\{GUID}` with a GUID that only grows.
fn next_app_mount() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(r"{APP_HIVE_ROOT}\{{6B656D75-0000-4000-8000-{n:012X}}}")
}

/// The mount of a load: the status, and whether it was the same file loaded again where it
/// is loaded (nothing mounted).
fn mount_hive(h_state: &mut HiveState, mount: &str, file: &str, app: bool) -> (NtStatus, bool) {
    let m = canon(mount);
    let already_app = app && h_state.hives.get(&m).is_some_and(|h| h.app);
    if !already_app {
        if let Some(h) = h_state.hives.get_mut(&m).filter(|h| !h.app) {
            // The same file at the same mount loads again: STATUS_SUCCESS, nothing
            // mounted, and a pending deferred unload is cancelled (WRK `cmapi.c`
            // CmLoadKey: "check if the same file is loaded in the same spot" →
            // CmpIsHiveAlreadyLoaded, "same file; same spot" ... "unfreeze the hive;
            // hive will become just a regular hive from now on"; ReactOS
            // `ntoskrnl/config/cmapi.c` CmLoadKey: "That's okay then"; fidelity
            // audit 19a, F1). CmLoadKey returns before CmpAddToHiveFileList: the
            // list is unchanged. Another file there collides.
            if !h.file.eq_ignore_ascii_case(file) {
                return (STATUS_OBJECT_NAME_COLLISION, false);
            }
            if let Some(e) = h.pending_unload.take() {
                h.kept_event = Some(e);
            }
            return (STATUS_SUCCESS, true);
        }
        if h_state.hives.contains_key(&m) || h_state.keys.contains(&m) {
            return (STATUS_OBJECT_NAME_COLLISION, false);
        }
        h_state.hives.insert(
            m.clone(),
            Hive {
                mount: mount.to_string(),
                file: file.to_string(),
                app,
                pending_unload: None,
                kept_event: None,
            },
        );
        h_state.keys.insert(m);
    }
    (STATUS_SUCCESS, false)
}

/// NtLoadKey / NtLoadKeyEx: the notifications and the mount; for an app hive also the root
/// handle and the mount point. `between` runs after a successful mount, before the post.
fn load(
    pid: u32,
    root: Option<u64>,
    key_name: &str,
    file: &str,
    app: bool,
    between: impl FnOnce(),
) -> (NtStatus, Option<(u64, String)>) {
    let (object, mount) = match root {
        Some(h) => match root_name(pid, h) {
            Some((object, name)) => (object, format!(r"{name}\{key_name}")),
            None => return (STATUS_INVALID_HANDLE, None),
        },
        None if app => {
            let existing = kernel::with(|k| {
                k.hives
                    .hives
                    .values()
                    .find(|h| h.app && h.file.eq_ignore_ascii_case(file))
                    .map(|h| h.mount.clone())
            });
            (0, existing.unwrap_or_else(next_app_mount))
        }
        None => (0, key_name.to_string()),
    };
    let (reading, object) = pre_load_object(object);
    let key_name = OwnedUnicode::pageable(if root.is_some() { key_name } else { &mount });
    let source = OwnedUnicode::pageable(file);
    let mut root_handle = 0u64;
    let mut info = RegLoadKeyInformation {
        object: object as *mut c_void,
        key_name: key_name.as_ptr(),
        source_file: source.as_ptr(),
        flags: if app { REG_APP_HIVE } else { 0 },
        pad0: 0,
        trust_class_object: std::ptr::null_mut(),
        user_event: std::ptr::null_mut(),
        desired_access: 0,
        pad1: 0,
        root_handle: if app {
            &raw mut root_handle
        } else {
            std::ptr::null_mut()
        },
        call_context: std::ptr::null_mut(),
        object_context: std::ptr::null_mut(),
        reserved: std::ptr::null_mut(),
    };
    let at = (&raw mut info) as usize;
    io::with_pid(pid, || {
        let fields = PreFields {
            call_context: 0x40,
            object_context: Some(0x48),
            object,
        };
        let pre = registry::notify_pre(class::PRE_LOAD_KEY, at, fields);
        if !pre.proceeds() {
            return (pre.unwind(class::POST_LOAD_KEY, at, object), None);
        }
        let (mut status, reloaded) = kernel::with(|k| mount_hive(&mut k.hives, &mount, file, app));
        if !app && status == STATUS_SUCCESS && !reloaded {
            // WRK `cmapi.c` CmLoadKey: once CmpLinkHiveToMaster succeeds, "add new hive to
            // hivelist" (CmpAddToHiveFileList), on the loading thread, before it returns.
            add_to_hive_list(pid, &mount, file);
        }
        if app && status == STATUS_SUCCESS {
            match open_app_root(pid, &mount) {
                Ok(h) => root_handle = h,
                Err(s) => status = s,
            }
        }
        // A post-callback may change the result (ReturnStatus + STATUS_CALLBACK_BYPASS): the
        // caller gets that status (REG_POST_OPERATION_INFORMATION.ReturnStatus). The hive
        // stays mounted — undoing is the filter's business (Learn "Handling Notifications":
        // a driver that changes success to failure "might have to deallocate objects") —,
        // but an app hive's root handle the caller never receives is closed again
        // (*inference*, as the object manager drops an open's object when it fails).
        if status == STATUS_SUCCESS {
            between();
        }
        // Learn's literal reading: the post's pre information points at a key object of the
        // new hive's root, which the operation holds through the post.
        let hive_root =
            (reading == LoadObject::HiveRoot && root.is_some() && status == STATUS_SUCCESS)
                .then(|| hive_root_object(pid, &mount))
                .flatten();
        if let Some(o) = hive_root {
            info.object = o as *mut c_void;
        }
        let returned = registry::notify_post(class::POST_LOAD_KEY, 0, status, at, &pre);
        if let Some(o) = hive_root {
            crate::nt::ob::object::dereference(o);
        }
        if returned != STATUS_SUCCESS && status == STATUS_SUCCESS && app {
            let _ = close_key(pid, root_handle);
        }
        (returned, app.then(|| (root_handle, mount.clone())))
    })
}

/// Opens (or creates) a key for `pid` by its full name: see [`open_key_at`].
///
/// # Errors
/// As [`open_key_at`].
pub fn open_key(pid: u32, path: &str, desired: u32, create: bool) -> Result<u64, NtStatus> {
    open(pid, None, path, desired, create, false, None)
}

/// [`open_key`] by kernel code running on a thread of `pid` with OBJ_KERNEL_HANDLE (e.g. a
/// driver's `ZwOpenKey`/`ZwCreateKey` in a dispatch routine): the notifications run on that
/// thread (PsGetCurrentProcessId = `pid`) with `Attributes` holding OBJ_KERNEL_HANDLE and
/// `CheckAccessMode` KernelMode, and the handle goes into the System process's table, with
/// the kernel-handle bit set; it outlives `pid`. Close it with [`close_key`] from any thread.
///
/// # Errors
/// As [`open_key`].
pub fn open_kernel_key(pid: u32, path: &str, desired: u32, create: bool) -> Result<u64, NtStatus> {
    open(pid, None, path, desired, create, true, None)
}

/// An open or create that a capture recorded failing (or reparsing) with `status`: the
/// pre-notification, then the post-notification carrying `status`; no key, key object or
/// handle is created. Used by the Process Monitor replay ([`crate::harness::replay`]), where every
/// result other than SUCCESS reaches the callbacks this way ("Filtering Registry Calls": the
/// post-notification's Status is the operation's status; Object is undefined unless it is
/// STATUS_SUCCESS). Returns the status the caller sees (a pre-callback's, or `status`).
#[must_use]
pub fn open_key_failing(
    pid: u32,
    path: &str,
    desired: u32,
    create: bool,
    status: NtStatus,
) -> NtStatus {
    open(pid, None, path, desired, create, false, Some(status))
        .map_or_else(|s| s, |_| STATUS_SUCCESS)
}

/// Opens (or creates) a key for `pid`, by a full name or, with `root` (a key handle of
/// `pid`), by a name relative to that key: RegNtPreOpenKeyEx/RegNtPreCreateKeyEx with the _V1
/// structure — RootObject is the root's key object and CompleteName the name as given,
/// relative when RootObject is set (docs: REG_CREATE_KEY_INFORMATION_V1, "CompleteName ...
/// if RootObject is non-NULL, CompleteName is relative to it") —, the operation, then the
/// post-notification whose Object is valid only on STATUS_SUCCESS ("Invalid Key Object
/// Pointers in Registry Notifications"). A symbolic link on the path ends that pair with
/// STATUS_REPARSE and the open starts over, with its own pre/post pair, under the link's
/// target (ReactOS `ntoskrnl/config/cmparse.c`, CmpParseKey / CmpGetSymbolicLink). Returns the
/// handle.
///
/// # Errors
/// The failing status: from a pre-callback (after the unwind, [`registry::PreOutcome::unwind`]),
/// STATUS_OBJECT_NAME_NOT_FOUND, STATUS_INVALID_HANDLE for a bad `root`, STATUS_PREDEFINED_HANDLE
/// for a key that maps to a predefined handle (no key object, no handle in the table), or the
/// status a post-callback or the handle creation turned a success into (the key object is then
/// destroyed, with its close and cleanup notifications).
pub fn open_key_at(
    pid: u32,
    root: Option<u64>,
    name: &str,
    desired: u32,
    create: bool,
) -> Result<u64, NtStatus> {
    open(pid, root, name, desired, create, false, None)
}

/// What an open asks for beyond its name: a kernel handle, or a captured failure to replay.
/// The default is a user-mode open with the model's own attributes.
#[derive(Clone, Copy, Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent flags of one open, as OBJECT_ATTRIBUTES and the caller's mode are"
)]
struct OpenMode {
    /// OBJ_KERNEL_HANDLE: the handle goes into the System process's table. The model's
    /// kernel-handle opens are `Zw*` calls from kernel mode (previous mode KernelMode); its
    /// other opens, calls from user mode (UserMode).
    kernel_handle: bool,
    /// OBJ_FORCE_ACCESS_CHECK with a kernel handle: the access check is made as for user
    /// mode, so the notification's `CheckAccessMode` is UserMode (Learn
    /// REG_CREATE_KEY_INFORMATION_V1, CheckAccessMode; WRK `ob/obhandle.c`: "If the caller
    /// asked us to always do an access check then use user mode for previous mode"), while
    /// the handle still goes into the System table (WRK `obhandle.c`: the table depends on
    /// OBJ_KERNEL_HANDLE alone, which capture strips from user-mode callers, `obcreate.c`).
    force_access_check: bool,
    /// The status a replayed capture recorded: delivered in the post, nothing created.
    fail: Option<NtStatus>,
    /// The registry manager's own open of an application hive's root inside its load: the
    /// only open of a `\REGISTRY\A\…` key by its absolute name that is not refused.
    registry_manager: bool,
    /// A driver's `ZwOpenKey` without OBJ_KERNEL_HANDLE: previous mode KernelMode (a `Zw`
    /// call from kernel mode), the handle in the current process's table ([`zw_open_key`]).
    kernel_caller: bool,
    /// A system service's own open for its caller (the unload's private open of the hive's
    /// root): `ObOpenObjectByName` with AccessMode KernelMode and OBJ_KERNEL_HANDLE, on the
    /// caller's thread, whose previous mode stays the caller's — UserMode for a user process
    /// (Windows Research Kernel `ntapi.c` NtUnloadKey2: `PreviousMode = KeGetPreviousMode()`,
    /// then "we open a private kernel mode handle just to take a reference on the object",
    /// `CapturedAttributes.Attributes |= OBJ_KERNEL_HANDLE`, `ObOpenObjectByName(...,
    /// KernelMode, ...)`; fidelity audit 18a, F7). Threads of the System process run in
    /// kernel mode.
    service_for_caller: bool,
    /// The caller's own OBJECT_ATTRIBUTES `Attributes`, which the notification carries as
    /// given (a driver's `ZwOpenKey`: nothing captures or strips a kernel-mode caller's
    /// flags, WRK `ob/obcreate.c`); `None`: the model's opens, OBJ_CASE_INSENSITIVE plus
    /// the flags above (review 18b).
    attributes: Option<u32>,
    /// A create's `CreateOptions` (REG_OPTION_*), which the pre-create carries in `Options`
    /// (Learn REG_CREATE_KEY_INFORMATION_V1); 0 for an open.
    options: u32,
}

impl OpenMode {
    /// The OBJECT_ATTRIBUTES `Attributes` of the open: the caller's, or OBJ_CASE_INSENSITIVE
    /// (| OBJ_KERNEL_HANDLE (| OBJ_FORCE_ACCESS_CHECK)).
    fn open_attributes(&self) -> u32 {
        self.attributes
            .unwrap_or(match (self.kernel_handle, self.force_access_check) {
                (false, _) => 0x40,
                (true, false) => 0x40 | OBJ_KERNEL_HANDLE,
                (true, true) => 0x40 | OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK,
            })
    }
}

/// The `\REGISTRY` key object, made at the first call: the object an absolute name is parsed
/// from, which the pre-open/create's `RootObject` names ("For an absolute path, the
/// RootObject member specifies the \REGISTRY key, which is the root directory of the
/// registry tree": Learn REG_CREATE_KEY_INFORMATION_V1, CompleteName). Windows makes it at
/// boot and keeps a reference for ever (ReactOS `ntoskrnl/config/cmsysini.c`
/// CmpCreateRegistryRoot: `CmpRegistryRootHandle`, then "Reference the key again so that we
/// never lose it"); the model makes it on first use, with that permanent reference
/// (`ObjectState::permanent`), opened by System and in no hive anyone loads or lists.
/// Until 2026-12-05 an absolute open's RootObject was NULL.
fn registry_root() -> usize {
    kernel::with(|k| {
        if k.hives.registry_root != 0 {
            return k.hives.registry_root;
        }
        let h = &mut k.hives;
        let key = canon(MASTER_HIVE);
        let key_id = h.key_id(&key);
        let object = alloc_object_page();
        h.add_object(
            object,
            KeyObject {
                name: MASTER_HIVE.to_string(),
                hive: key,
                handles: 0,
                destroyed: false,
                contexts: BTreeMap::new(),
                key_id,
                opener: SYSTEM_PID,
                announced: false,
                deleted: false,
            },
        );
        h.registry_root = object;
        *k.objects.references.entry(object).or_insert(0) += 1;
        *k.objects.permanent.entry(object).or_insert(0) += 1;
        object
    })
}

/// Whether a name parsed from `root` is absolute: parsed from the `\REGISTRY` key (or from
/// no object at all, as a filter's own open may be).
fn is_absolute(root: usize) -> bool {
    root == 0 || root == registry_root()
}

/// How many key objects exist besides the `\REGISTRY` key's ([`registry_root`]), which lives
/// for ever.
#[must_use]
pub fn key_objects() -> usize {
    kernel::with(|k| {
        let root = k.hives.registry_root;
        k.hives.objects.keys().filter(|&&o| o != root).count()
    })
}

/// [`open_key_at`] with an [`OpenMode`].
fn open(
    pid: u32,
    root: Option<u64>,
    name: &str,
    desired: u32,
    create: bool,
    kernel_handle: bool,
    fail: Option<NtStatus>,
) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        kernel_handle,
        force_access_check: false,
        fail,
        registry_manager: false,
        kernel_caller: false,
        service_for_caller: false,
        attributes: None,
        options: 0,
    };
    open_mode(pid, root, name, desired, create, mode)
}

/// A system service's private open of `mount` (KEY_WRITE, a kernel handle) for its caller
/// `pid`, on the caller's thread and in its previous mode (`OpenMode::service_for_caller`).
fn open_for_caller(pid: u32, mount: &str, create: bool) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        kernel_handle: true,
        force_access_check: false,
        fail: None,
        registry_manager: false,
        kernel_caller: false,
        service_for_caller: true,
        attributes: None,
        options: 0,
    };
    open_mode(pid, None, mount, KEY_WRITE, create, mode)
}

/// A kernel-mode open from `pid`'s thread with `OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK`
/// (the Windows Research Kernel's `ex/sysinfo.c` opens the caller's HKCU keys so): a kernel
/// handle, in the System table, whose notifications carry CheckAccessMode UserMode while
/// `ExGetPreviousMode` answers KernelMode ([`OpenMode::force_access_check`]).
///
/// # Errors
/// As for [`open_key`].
pub fn open_kernel_key_forced(
    pid: u32,
    path: &str,
    desired: u32,
    create: bool,
) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        kernel_handle: true,
        force_access_check: true,
        fail: None,
        registry_manager: false,
        kernel_caller: false,
        service_for_caller: false,
        attributes: None,
        options: 0,
    };
    open_mode(pid, None, path, desired, create, mode)
}

/// A driver's `ZwOpenKey` on the calling thread (its process, its IRQL): `ZwOpenKey` is
/// `NtOpenKey` called from kernel mode, which parses the name with `ObOpenObjectByName` and
/// the key type's parse routine — the same path as any open, registry callbacks included
/// (Learn REG_CREATE_KEY_INFORMATION_V1, Remarks: the structure is passed "every time that a
/// thread tries to create a key", also "when a kernel-mode driver calls ZwCreateKey"; the
/// Windows-driver-samples regfltr `sys/pre.c` PreNotificationBlockSample expects its own
/// `ZwCreateKey` with OBJ_KERNEL_HANDLE to be failed by its own pre-callback; ReactOS
/// `ntoskrnl/config/ntapi.c` NtOpenKey -> ObOpenObjectByName; `cmparse.c` CmpParseKey). So
/// the driver's own callback sees its own open (RegNtPreOpenKeyEx/RegNtPostOpenKeyEx, a
/// symbolic link's STATUS_REPARSE pair on the way), previous mode KernelMode, and the handle's
/// close and the object's cleanup when it closes it ([`close_key`]). `root`: a key handle of
/// the calling process (or a kernel handle) the name is relative to. `attributes`: the
/// caller's, which the notification carries as given; with OBJ_KERNEL_HANDLE the handle goes
/// into the System table, without it into the current process's; OBJ_FORCE_ACCESS_CHECK makes
/// the notification's `CheckAccessMode` UserMode.
///
/// # Errors
/// As [`open_key_at`].
pub fn zw_open_key(
    root: Option<u64>,
    name: &str,
    desired: u32,
    attributes: u32,
) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        kernel_handle: attributes & OBJ_KERNEL_HANDLE != 0,
        force_access_check: attributes & OBJ_FORCE_ACCESS_CHECK != 0,
        fail: None,
        registry_manager: false,
        kernel_caller: true,
        service_for_caller: false,
        attributes: Some(attributes),
        options: 0,
    };
    open_mode(io::current_pid(), root, name, desired, false, mode)
}

/// Makes key `path` and the keys between it and its hive's root exist, following a registry
/// symbolic link on its path to the key it names (as an open would), with the spelling of
/// `path` for the keys it creates. Nothing is notified: this is the state of the hive as the
/// system has it (used for the keys whose values [`crate::nt::cm::zwreg`] stores). Returns
/// false, changing nothing, when no mounted hive holds the key.
#[must_use = "false: no mounted hive holds the key"]
pub fn ensure_key(path: &str) -> bool {
    kernel::with(|k| {
        let h = &mut k.hives;
        let mut full = path.trim_end_matches('\\').to_string();
        for _ in 0..MAX_REPARSE {
            match h.reparse_target(&canon(&full), &full) {
                Some(target) => full = target.trim_end_matches('\\').to_string(),
                None => break,
            }
        }
        let key = canon(&full);
        let Some(hive) = h.hive_of(&key) else {
            return false;
        };
        if hive == MASTER_HIVE {
            return MASTER_KEYS.contains(&key.as_str());
        }
        let mut chain = Vec::new();
        let mut at = key.as_str();
        while at.len() > hive.len() {
            chain.push(at.to_string());
            match at.rsplit_once('\\') {
                Some((parent, _)) => at = parent,
                None => break,
            }
        }
        for c in chain.into_iter().rev() {
            if h.keys.insert(c.clone()) {
                let stored = h.stored_name(&c, full.get(..c.len()).unwrap_or(&c));
                h.spelled.insert(c, stored);
            }
        }
        true
    })
}

/// [`open`] with the whole [`OpenMode`].
fn open_mode(
    pid: u32,
    root: Option<u64>,
    name: &str,
    desired: u32,
    create: bool,
    mode: OpenMode,
) -> Result<u64, NtStatus> {
    let previous = if mode.service_for_caller {
        if pid == SYSTEM_PID {
            crate::nt::ps::thread::KERNEL_MODE
        } else {
            crate::nt::ps::thread::USER_MODE
        }
    } else if mode.kernel_handle || mode.kernel_caller {
        crate::nt::ps::thread::KERNEL_MODE
    } else {
        crate::nt::ps::thread::USER_MODE
    };
    io::with_pid(pid, || {
        crate::nt::ps::thread::with_previous_mode(previous, || {
            let mut root_object = match root {
                None => registry_root(),
                Some(h) => {
                    let table = crate::nt::ps::process::handle_table_of(pid, h);
                    kernel::with(|k| k.hives.handles.get(&(table, h)).copied())
                        .ok_or(STATUS_INVALID_HANDLE)?
                }
            };
            let mut name = name.to_string();
            for _ in 0..MAX_REPARSE {
                match parse_key(root_object, &name, desired, create, mode) {
                    Parsed::Reparse(target) => {
                        // The object manager parses the new name from the root of the namespace.
                        name = target;
                        root_object = registry_root();
                    }
                    Parsed::Done(r) => return r,
                }
            }
            Err(STATUS_OBJECT_NAME_NOT_FOUND)
        })
    })
}

/// What one parse of a key name ended with.
enum Parsed {
    /// A symbolic link: parse again with this full name.
    Reparse(String),
    /// The open's result.
    Done(Result<u64, NtStatus>),
}

/// One parse: one pre/post pair (CmpParseKey), on the calling thread.
#[allow(clippy::too_many_lines)] // one linear parse: pre, name, link, key, object, post, handle
fn parse_key(root_object: usize, name: &str, desired: u32, create: bool, mode: OpenMode) -> Parsed {
    let complete = OwnedUnicode::pageable(name);
    let mut disposition = 0u32;
    let mut result_object: *mut c_void = std::ptr::null_mut();
    let mut info = RegCreateKeyInformationV1 {
        complete_name: complete.as_ptr(),
        root_object: root_object as *mut c_void,
        object_type: std::ptr::null_mut(),
        options: mode.options,
        pad0: 0,
        class: std::ptr::null_mut(),
        security_descriptor: std::ptr::null_mut(),
        security_quality_of_service: std::ptr::null_mut(),
        // NtCreateKey/NtOpenKey take the WOW64 view bits out of the access mask before the
        // parse (WRK `ntapi.c`: `DesiredAccess &= (~KEY_WOW64_RES)`); Wow64Flags carries them
        // (Learn REG_CREATE_KEY_INFORMATION_V1: "the Wow64 flags from the access mask").
        desired_access: desired & !KEY_WOW64_RES,
        // Filled once the access check has run, before the post ([`granted_access`]).
        granted_access: 0,
        disposition: &raw mut disposition,
        result_object: &raw mut result_object,
        call_context: std::ptr::null_mut(),
        root_object_context: std::ptr::null_mut(),
        transaction: std::ptr::null_mut(),
        version: 1,
        remaining_name: complete.as_ptr(),
        wow64_flags: desired & KEY_WOW64_RES,
        // OBJ_CASE_INSENSITIVE (| OBJ_KERNEL_HANDLE (| OBJ_FORCE_ACCESS_CHECK)); UserMode, or
        // KernelMode for a Zw call that does not force the access check.
        attributes: mode.open_attributes(),
        check_access_mode: i8::from(
            !(mode.kernel_handle || mode.kernel_caller) || mode.force_access_check,
        ),
        pad1: [0; 7],
    };
    let at = (&raw mut info) as usize;
    let (pre_class, post_class) = if create {
        (class::PRE_CREATE_KEY_EX, class::POST_CREATE_KEY_EX)
    } else {
        (class::PRE_OPEN_KEY_EX, class::POST_OPEN_KEY_EX)
    };
    let fields = PreFields {
        call_context: 0x50,
        object_context: Some(0x58),
        object: root_object,
    };
    let pre = registry::notify_pre(pre_class, at, fields);
    if pre.bypassed() {
        // SAFETY: ResultObject points at this frame's local, which the filter may have set.
        let supplied = unsafe { info.result_object.read() } as usize;
        return Parsed::Done(bypassed_open(supplied, &pre, post_class, at, mode));
    }
    if !pre.proceeds() {
        return Parsed::Done(Err(pre.unwind(post_class, at, 0)));
    }
    if let Some(captured) = mode.fail {
        // A replayed capture's failure: the post carries it and nothing is created.
        let s = registry::notify_post(post_class, 0, captured, at, &pre);
        return Parsed::Done(Err(s));
    }
    // WRK `cmparse.c`: after the pre-callbacks, CmpBuildHashStackAndLookupCache refuses a
    // root key object whose key is deleted ("Check to make sure the passed in root key is
    // not marked for deletion") -> STATUS_KEY_DELETED.
    if kernel::with(|k| k.hives.objects.get(&root_object).is_some_and(|o| o.deleted)) {
        let s = registry::notify_post(post_class, 0, STATUS_KEY_DELETED, at, &pre);
        return Parsed::Done(Err(s));
    }
    let full = if is_absolute(root_object) {
        name.to_string()
    } else {
        let base = kernel::with(|k| k.hives.objects.get(&root_object).map(|o| o.name.clone()))
            .unwrap_or_default();
        let rel = name.trim_start_matches('\\');
        if rel.is_empty() {
            base
        } else {
            format!("{base}\\{rel}")
        }
    };
    let key = canon(&full);
    // "An attempt to open a key under \REGISTRY\A fails with error status
    // STATUS_ACCESS_DENIED"; only the registry manager opens an application hive by such a
    // path, for the root handle of its load; keys in it are reached relative to that handle
    // (Learn, "Filtering Registry Operations on Application Hives"; RegLoadAppKeyW: "The
    // registry will prevent an application from accessing keys in this hive using an
    // absolute path"). Until 2026-12-05 the model let such opens through.
    let app_root = canon(APP_HIVE_ROOT);
    if is_absolute(root_object)
        && !mode.registry_manager
        && (key == app_root || key.starts_with(&format!("{app_root}\\")))
    {
        let s = registry::notify_post(post_class, 0, STATUS_ACCESS_DENIED, at, &pre);
        return Parsed::Done(Err(s));
    }
    let (target, predefined) = kernel::with(|k| {
        (
            k.hives.reparse_target(&key, &full),
            k.hives.predefined.contains(&key),
        )
    });
    if let Some(target) = target {
        kernel::with(|k| k.hives.cache_link_follow(&key));
        let s = registry::notify_post(post_class, 0, STATUS_REPARSE, at, &pre);
        return if s == STATUS_REPARSE {
            Parsed::Reparse(target)
        } else {
            Parsed::Done(Err(s))
        };
    }
    if predefined {
        // ntstatus.h: STATUS_PREDEFINED_HANDLE, "The specified registry key is referenced by a
        // predefined handle" — a success-class status whose post carries an undefined Object
        // ("Invalid Key Object Pointers in Registry Notifications"). Which keys do this is
        // the scenario's choice ([`set_predefined`]); the model creates no key object.
        let s = registry::notify_post(post_class, 0, STATUS_PREDEFINED_HANDLE, at, &pre);
        return Parsed::Done(Err(s));
    }
    // CM_KEY_BODY.ProcessID: the thread's process (PsGetCurrentProcessId).
    let opener = io::current_pid();
    // The key's id and its new object are one step: a concurrent release of the last object
    // below this key must not free the id between the two (see `HiveState::remove_object`).
    let outcome = kernel::with(|k| {
        let h = &mut k.hives;
        let Some(hive) = h.hive_of(&key) else {
            // A missing last component right under a key of the master hive: a create there
            // would make a cell in the master hive, which the parse refuses once the system
            // is up (WRK `cmparse.c` CmpParseKey: `if ((Hive == &(CmpMasterHive->Hive)) &&
            // (CmpNoMasterCreates == TRUE)) status = STATUS_INVALID_PARAMETER`; `cmsysini.c`
            // sets CmpNoMasterCreates TRUE at init). An open, or a create missing more than
            // one component, does not find the key. Until 2026-12-06 the model answered
            // NAME_NOT_FOUND to both (fidelity audit 19a, F6).
            let parent = key.rsplit_once('\\').map_or("", |(p, _)| p);
            return Err(if create && MASTER_KEYS.contains(&parent) {
                STATUS_INVALID_PARAMETER
            } else {
                STATUS_OBJECT_NAME_NOT_FOUND
            });
        };
        let exists = h.keys.contains(&key) || MASTER_KEYS.contains(&key.as_str());
        if !exists {
            let parent = key.rsplit_once('\\').map_or("", |(p, _)| p);
            if !create || !h.keys.contains(parent) {
                return Err(STATUS_OBJECT_NAME_NOT_FOUND);
            }
            let stored = h.stored_name(&key, &full);
            h.spelled.insert(key.clone(), stored);
            h.keys.insert(key.clone());
        }
        let key_id = h.key_id(&key);
        let stored = h.stored_name(&key, &full);
        let object = alloc_object_page();
        // The parse hands the object manager one reference (CmpDoOpen/CmpCreateKeyBody
        // create the body with it), which becomes the handle below unless the open fails
        // first.
        h.add_object(
            object,
            KeyObject {
                name: stored,
                hive,
                handles: 0,
                destroyed: false,
                contexts: BTreeMap::new(),
                key_id,
                opener,
                announced: false,
                deleted: false,
            },
        );
        *k.objects.references.entry(object).or_insert(0) += 1;
        *k.objects.in_operation.entry(object).or_insert(0) += 1;
        Ok((exists, object))
    });
    let (exists, object) = match outcome {
        Err(s) => return Parsed::Done(Err(registry::notify_post(post_class, 0, s, at, &pre))),
        Ok(o) => o,
    };
    let d = if exists {
        REG_OPENED_EXISTING_KEY
    } else {
        REG_CREATED_NEW_KEY
    };
    info.granted_access = granted_access(desired & !KEY_WOW64_RES);
    // SAFETY: both point at this frame's locals, which outlive the post-notification.
    unsafe { info.disposition.write(d) };
    // SAFETY: as above.
    unsafe { info.result_object.write(object as *mut c_void) };
    let told = kernel::with(|k| {
        let cbs = &k.registry.callbacks;
        !cbs.is_empty() && cbs.iter().all(|c| !c.emulated)
    });
    let s = registry::notify_post(post_class, object, STATUS_SUCCESS, at, &pre);
    if s == STATUS_SUCCESS && told {
        kernel::with(|k| {
            if let Some(o) = k.hives.objects.get_mut(&object) {
                o.announced = true;
            }
        });
    }
    if s != STATUS_SUCCESS {
        // The reference is the failing filter's now (below), no longer the open's.
        operation_done(object);
        // A filter changed the result in its post (regfltr post.c,
        // CallbackPostNotificationOverrideSuccess): releasing the object is that filter's job
        // — the sample calls ObDereferenceObject(PostInfo->Object) "because it will not be
        // returned to the user" and NULLs ResultObject; Learn "Handling Notifications": it
        // "might have to deallocate objects that the configuration manager allocated". Its
        // dereference deleted the object (close notifications, cleanup); a filter that does
        // not release it leaks it, as on Windows.
        return Parsed::Done(Err(s));
    }
    if full.contains(HANDLE_FAIL_MARKER) {
        // ObOpenObjectByName could not create the handle: the object manager drops the
        // parse's reference and the key object is deleted (CmpDeleteKeyObject: close
        // notifications, cleanup) on this thread.
        operation_done(object);
        crate::nt::ob::object::dereference(object);
        return Parsed::Done(Err(STATUS_INSUFFICIENT_RESOURCES));
    }
    reference_to_handle(object, true);
    Parsed::Done(Ok(insert_handle(
        object,
        mode.kernel_handle,
        info.attributes,
    )))
}

/// The open no longer holds its parse reference as its own operation's (see
/// `ObjectState::in_operation`).
fn operation_done(object: usize) {
    kernel::with(|k| count_down(&mut k.objects.in_operation, object));
}

/// One fewer of `object`'s counted references in `counts`; none left removes its entry.
fn count_down(counts: &mut HashMap<usize, i64>, object: usize) {
    if let Some(n) = counts.get_mut(&object) {
        *n -= 1;
        if *n <= 0 {
            counts.remove(&object);
        }
    }
}

/// The reference an open returned becomes a handle (ObOpenObjectByName); `parsed`: it was
/// the parse's own, held for the open so far.
fn reference_to_handle(object: usize, parsed: bool) {
    kernel::with(|k| {
        if parsed {
            count_down(&mut k.objects.in_operation, object);
        }
        if let Some(o) = k.hives.objects.get_mut(&object) {
            o.handles += 1;
        }
        count_down(&mut k.objects.references, object);
    });
}

/// The handle ObOpenObjectByName creates for the object a parse returned (after
/// [`reference_to_handle`]): a kernel handle goes into the System
/// process's table; any other into the table of the process whose address space the thread
/// is in (attached or its own).
fn insert_handle(object: usize, kernel_handle: bool, attributes: u32) -> u64 {
    let table = if kernel_handle {
        SYSTEM_PID
    } else {
        crate::nt::ps::process::address_space_pid()
    };
    kernel::with(|k| {
        let h = &mut k.hives;
        h.next_handle += 4;
        let mut handle = 0x1000 + h.next_handle;
        if kernel_handle {
            handle |= KERNEL_HANDLE_BIT;
        }
        h.handles.insert((table, handle), object);
        if attributes & OBJ_INHERIT != 0 {
            h.inheritable.insert((table, handle));
        }
        handle
    })
}

/// An open or create a pre-callback completed itself (STATUS_CALLBACK_BYPASS): the caller
/// gets STATUS_SUCCESS ("Handling Notifications") and a handle to the key object the filter
/// stored, referenced, in ResultObject (regfltr `pre.c` CallbackPreNotificationBypass:
/// ObReferenceObjectByHandle, then `*PreCreateInfo->ResultObject = Object`); that reference
/// becomes the handle. The callbacks above the filter get their post with STATUS_SUCCESS and
/// that object ([`registry::PreOutcome::unwind`]); a post-callback turning it into a failure
/// releases the reference itself (regfltr post.c). A bypass without a referenced key object in ResultObject is a
/// filter bug the model stops on (the page: the driver "must be careful to return valid
/// output values").
fn bypassed_open(
    supplied: usize,
    pre: &registry::PreOutcome,
    post_class: usize,
    at: usize,
    mode: OpenMode,
) -> Result<u64, NtStatus> {
    let live = kernel::with(|k| {
        k.objects.references.get(&supplied).copied().unwrap_or(0) > 0
            && k.hives.objects.contains_key(&supplied)
    });
    if !live {
        crate::verifier::bugcheck::verifier_violation(&format!(
            "a pre-callback returned STATUS_CALLBACK_BYPASS for an open/create with ResultObject \
             {supplied:#x}, not a referenced key object"
        ));
    }
    let s = pre.unwind(post_class, at, supplied);
    if s != STATUS_SUCCESS {
        // As in parse_key: the filter that failed it in its post releases the object.
        return Err(s);
    }
    reference_to_handle(supplied, false);
    Ok(insert_handle(
        supplied,
        mode.kernel_handle,
        mode.open_attributes(),
    ))
}

/// What a filter's own `ZwCreateKey` + `ObReferenceObjectByHandle` + `ZwClose` leave it (the
/// regfltr `pre.c` bypass): the key `name` (relative to key object `root` if non-zero) is
/// created on this thread with a kernel handle — notifications and all —, the object gains a
/// reference and the handle is closed. Returns the referenced key object.
#[must_use]
pub fn filter_create_referenced(root: usize, name: &str) -> Option<usize> {
    let full = if is_absolute(root) {
        name.to_string()
    } else {
        let base = kernel::with(|k| k.hives.objects.get(&root).map(|o| o.name.clone()))?;
        format!("{base}\\{}", name.trim_start_matches('\\'))
    };
    let handle = open(io::current_pid(), None, &full, 0xF_003F, true, true, None).ok()?;
    let object = kernel::with(|k| {
        let object = *k.hives.handles.get(&(SYSTEM_PID, handle))?;
        *k.objects.references.entry(object).or_insert(0) += 1;
        Some(object)
    });
    let _ = close_key(io::current_pid(), handle);
    object
}

/// Makes `link` a registry symbolic link to `target` (a key created with
/// REG_OPTION_CREATE_LINK and a REG_LINK "SymbolicLinkValue", as ReactOS
/// `ntoskrnl/config/cmsysini.c` CmpCreateControlSet / CmpLinkKeyToHive make
/// `\REGISTRY\MACHINE\SYSTEM\CurrentControlSet`; userenv makes
/// `\REGISTRY\USER\<SID>\Software\Classes` a link to the `<SID>_Classes` hive).
pub fn create_link(link: &str, target: &str) {
    kernel::with(|k| {
        let h = &mut k.hives;
        let key = canon(link);
        h.spelled.insert(key.clone(), link.to_string());
        h.keys.insert(key.clone());
        h.links.insert(key, target.to_string());
    });
}

/// Makes opens of `path` answer STATUS_PREDEFINED_HANDLE (a key flagged KEY_PREDEF_HANDLE).
pub fn set_predefined(path: &str) {
    kernel::with(|k| {
        let key = canon(path);
        k.hives.keys.insert(key.clone());
        k.hives.predefined.insert(key);
    });
}

/// Renames the key behind `pid`'s handle (`NtRenameKey(KeyHandle, NewName)`, what
/// `RegRenameKey` ends in): `new_name` is the new last path component; the key keeps its
/// parent. RegNtPreRenameKey with REG_RENAME_KEY_INFORMATION (Object = the handle's key
/// object, NewName, per-callback CallContext and ObjectContext), the rename, then
/// RegNtPostRenameKey with REG_POST_OPERATION_INFORMATION, as every other operation here
/// (Learn [REG_NOTIFY_CLASS](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ne-wdm-_reg_notify_class),
/// [REG_RENAME_KEY_INFORMATION](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_rename_key_information),
/// REG_POST_OPERATION_INFORMATION). On success the key and every key below it have new
/// names, with their ids unchanged, and every live key object of them reports the new full
/// name from CmCallbackGetKeyObjectIDEx (Learn, CmCallbackGetKeyObjectIDEx Remarks: the id
/// "does not change" when the key's name changes, and the Ex routine's ObjectName "always
/// contains the most up-to-date key name"). Failures, from the Windows Research Kernel's
/// `base/ntos/config/cmapi.c` CmRenameKey: a hive's root key or a key of the master hive,
/// STATUS_ACCESS_DENIED; a sibling with the new name (case-insensitively, the key itself
/// included), STATUS_CANNOT_DELETE; a deleted key ([`delete_key`]), STATUS_KEY_DELETED, checked
/// first. Before anything else, the WRK's `ntapi.c` NtRenameKey
/// checks the NewName: empty, longer than REG_MAX_KEY_NAME_LENGTH (512 bytes,
/// `ntregapi.h`), of an odd length or with a `\` is STATUS_INVALID_PARAMETER with no
/// notification (before 2026-12-05 the model notified and answered
/// STATUS_OBJECT_NAME_INVALID, an inference; fidelity audit F4). A handle `pid` does not
/// hold: STATUS_INVALID_HANDLE with no notification (the handle is resolved before the
/// callbacks, as for `load_key`). Not
/// modelled: access checks, transactions, symbolic-link targets that point into the renamed
/// keys (the links below it move with it), hives mounted below the renamed key.
#[must_use = "the status says whether the key was renamed"]
pub fn rename_key(pid: u32, handle: u64, new_name: &str) -> NtStatus {
    /// `REG_MAX_KEY_NAME_LENGTH` (WRK `public/sdk/inc/ntregapi.h`), in bytes.
    const REG_MAX_KEY_NAME_LENGTH: usize = 512;
    let bytes = new_name.encode_utf16().count() * 2;
    if bytes == 0 || bytes > REG_MAX_KEY_NAME_LENGTH || new_name.contains('\\') {
        return crate::nt::status::STATUS_INVALID_PARAMETER;
    }
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    let Some(object) = kernel::with(|k| k.hives.handles.get(&(table, handle)).copied()) else {
        return STATUS_INVALID_HANDLE;
    };
    let name = OwnedUnicode::pageable(new_name);
    let mut info = RegRenameKeyInformation {
        object: object as *mut c_void,
        new_name: name.as_ptr(),
        call_context: std::ptr::null_mut(),
        object_context: std::ptr::null_mut(),
        reserved: std::ptr::null_mut(),
    };
    let at = (&raw mut info) as usize;
    let classes = (class::PRE_RENAME_KEY, class::POST_RENAME_KEY);
    notified_key_operation(pid, object, at, (0x10, 0x18), classes, |h| {
        h.rename(object, new_name)
    })
}

/// Runs `op` on the key state as `pid`'s operation on key `object` between its pre- and
/// post-notification (`classes`): `at` is the pre structure, whose CallContext and
/// ObjectContext sit at the `contexts` offsets. A pre that does not let it proceed unwinds
/// ([`registry::PreOutcome::unwind`]); a post-callback may change the result the caller
/// gets (as for load and unload).
fn notified_key_operation(
    pid: u32,
    object: usize,
    at: usize,
    contexts: (usize, usize),
    classes: (usize, usize),
    op: impl FnOnce(&mut HiveState) -> NtStatus,
) -> NtStatus {
    let (pre_class, post_class) = classes;
    io::with_pid(pid, || {
        let fields = PreFields {
            call_context: contexts.0,
            object_context: Some(contexts.1),
            object,
        };
        let pre = registry::notify_pre(pre_class, at, fields);
        if !pre.proceeds() {
            return pre.unwind(post_class, at, object);
        }
        let status = kernel::with(|k| op(&mut k.hives));
        registry::notify_post(post_class, object, status, at, &pre)
    })
}

/// Deletes the key behind `pid`'s handle (`NtDeleteKey(KeyHandle)`, what `RegDeleteKey`
/// ends in), after the Windows Research Kernel's `base/ntos/config/ntapi.c` NtDeleteKey: the
/// handle is referenced first (an unknown one: STATUS_INVALID_HANDLE, no notification);
/// RegNtPreDeleteKey with REG_DELETE_KEY_INFORMATION (Object = the handle's key object,
/// per-callback CallContext and ObjectContext; Learn
/// [REG_DELETE_KEY_INFORMATION](https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/ns-wdm-_reg_delete_key_information)),
/// which a callback can fail (then only the callbacks that saw the pre get a post, with that
/// status: `CmpCallCallBacks(..., TRUE, RegNtPostDeleteKey, KeyBody)`); then `CmDeleteKey`
/// and RegNtPostDeleteKey with its status, whatever it is (the Object NULL with an error
/// status and the status a post-callback's to change, as for every post:
/// `registry::notify_post`)
/// (`CmPostCallbackNotification(RegNtPostDeleteKey, KeyBody, status)`). `CmDeleteKey`
/// (`cmapi2.c`): `\REGISTRY` (no parent KCB), a hive's root (KEY_NO_DELETE) or a key with
/// subkeys is STATUS_CANNOT_DELETE; a key already deleted, STATUS_SUCCESS and nothing done;
/// otherwise the key is gone from the namespace and its KCB is marked `Delete` and taken out
/// of the KCB hash (`CmpRemoveKeyControlBlock`) but lives while key objects reference it.
///
/// In the model: the key leaves the key set, so a later create of the same name is a new key
/// with a new id (WRK `cmsubs.c` CmpCreateKeyControlBlock finds no match in the hash for a
/// deleted KCB and allocates a new one); the key's live objects are flagged `deleted` and
/// keep their id, name and hive — they still pin it for an unload (the deleted KCB
/// references its parent, up to the root, whose `RefCount == 1` CmUnloadKey requires, WRK
/// `cmapi.c`) — but are no longer listed by [`open_subkeys`] (`cmsubs.c`
/// CmpSearchForOpenSubKeys walks the KCB hash); [`query_key_name`], [`rename_key`] and
/// opens relative to them answer STATUS_KEY_DELETED. The id stays allocated until the last
/// such object goes, then is freed like any id. What CmCallbackGetKeyObjectIDEx returns for
/// such an object is not documented: the model keeps answering its id and its last name, an
/// *inference*. Not modelled: access checks (DELETE), the WMI control keys and read-only
/// KCBs NtDeleteKey also checks, transactions.
#[must_use = "the status says whether the key was deleted"]
pub fn delete_key(pid: u32, handle: u64) -> NtStatus {
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    let Some(object) = kernel::with(|k| k.hives.handles.get(&(table, handle)).copied()) else {
        return STATUS_INVALID_HANDLE;
    };
    let mut info = RegDeleteKeyInformation {
        object: object as *mut c_void,
        call_context: std::ptr::null_mut(),
        object_context: std::ptr::null_mut(),
        reserved: std::ptr::null_mut(),
    };
    let at = (&raw mut info) as usize;
    let classes = (class::PRE_DELETE_KEY, class::POST_DELETE_KEY);
    notified_key_operation(pid, object, at, (0x08, 0x10), classes, |h| h.delete(object))
}

/// Duplicates a handle into another process (`DuplicateHandle` with bInheritHandle FALSE):
/// same key object, a new handle value, no OBJ_INHERIT (WRK `ob/obhandle.c` ObDuplicateObject
/// takes the new entry's attributes from its HandleAttributes), no notification.
///
/// # Errors
/// STATUS_INVALID_HANDLE.
pub fn duplicate_handle(src_pid: u32, handle: u64, dst_pid: u32) -> Result<u64, NtStatus> {
    kernel::with(|k| {
        let h = &mut k.hives;
        let object = *h
            .handles
            .get(&(src_pid, handle))
            .ok_or(STATUS_INVALID_HANDLE)?;
        h.next_handle += 4;
        let new = 0x1000 + h.next_handle;
        h.handles.insert((dst_pid, new), object);
        if let Some(o) = h.objects.get_mut(&object) {
            o.handles += 1;
        }
        Ok(new)
    })
}

/// `RegCreateKeyEx`/`RegOpenKeyEx` of `path` for `pid` whose handle can be inherited: the
/// open's OBJECT_ATTRIBUTES carry OBJ_INHERIT (Learn `RegCreateKeyExW`, lpSecurityAttributes:
/// "determines whether the returned handle can be inherited by child processes. If
/// lpSecurityAttributes is NULL, the handle cannot be inherited"; `SECURITY_ATTRIBUTES`
/// bInheritHandle; `InitializeObjectAttributes` OBJ_INHERIT), which the notification's
/// `Attributes` shows (OBJ_CASE_INSENSITIVE | OBJ_INHERIT) and the handle's table entry keeps
/// (WRK `ob/obhandle.c` ObpCreateHandle). Otherwise as [`open_key`].
///
/// # Errors
/// As [`open_key`].
pub fn open_key_inheritable(
    pid: u32,
    path: &str,
    desired: u32,
    create: bool,
) -> Result<u64, NtStatus> {
    let mode = OpenMode {
        attributes: Some(0x40 | OBJ_INHERIT),
        ..OpenMode::default()
    };
    open_mode(pid, None, path, desired, create, mode)
}

/// `SetHandleInformation(handle, HANDLE_FLAG_INHERIT, …)` by `pid`: `NtSetInformationObject`
/// with ObjectHandleFlagInformation sets or clears OBJ_INHERIT in the handle's table entry
/// (WRK `ob/obquery.c` ObpSetHandleAttributes: `ObjectTableEntry->ObAttributes |=
/// OBJ_INHERIT` / `&= ~OBJ_INHERIT`; the key type does not refuse it, its
/// `InvalidAttributes` being OBJ_EXCLUSIVE | OBJ_PERMANENT, `config/cmsysini.c`). No registry
/// notification.
#[must_use = "STATUS_INVALID_HANDLE for an unknown handle"]
pub fn set_handle_inherit(pid: u32, handle: u64, inherit: bool) -> NtStatus {
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    kernel::with(|k| {
        let h = &mut k.hives;
        if !h.handles.contains_key(&(table, handle)) {
            return STATUS_INVALID_HANDLE;
        }
        if inherit {
            h.inheritable.insert((table, handle));
        } else {
            h.inheritable.remove(&(table, handle));
        }
        STATUS_SUCCESS
    })
}

/// Whether `pid`'s `handle` holds OBJ_INHERIT.
#[must_use]
pub fn is_inheritable(pid: u32, handle: u64) -> bool {
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    kernel::with(|k| k.hives.inheritable.contains(&(table, handle)))
}

/// A new process's handle table made from its parent's (WRK `ob/obinit.c` ObInitProcess:
/// "all object handles with the OBJ_INHERIT attribute are copied from the parent object
/// table to the new process' object table"; ExDupHandleTable copies each entry at its own
/// handle value, `ex/handle.c`, and ObDupHandleProcedure drops those without OBJ_INHERIT:
/// `if (!(ObjectTableEntry->ObAttributes & OBJ_INHERIT)) ... return( FALSE )`). Each copy
/// keeps the value and OBJ_INHERIT, and adds a handle to the object; the key type has no open
/// procedure (`cmsysini.c`: `OpenProcedure = NULL`), so no notification. Returns how many
/// handles `child` got. Until 2026-12-06 the model copied every handle, with new values
/// (fidelity audit 19a, F5).
#[must_use = "how many handles the child got"]
pub fn inherit_handles(parent: u32, child: u32) -> usize {
    kernel::with(|k| {
        let h = &mut k.hives;
        let copies: Vec<(u64, usize)> = h
            .handles
            .range((parent, 0)..=(parent, u64::MAX))
            .filter(|(key, _)| h.inheritable.contains(key))
            .map(|(&(_, handle), &object)| (handle, object))
            .collect();
        for &(handle, object) in &copies {
            h.handles.insert((child, handle), object);
            h.inheritable.insert((child, handle));
            if let Some(o) = h.objects.get_mut(&object) {
                o.handles += 1;
            }
        }
        copies.len()
    })
}

/// `NtQueryKey(handle, KeyNameInformation)` of `pid`'s `handle`: the key's full name as
/// stored, built from its KCB chain, so a renamed key's new name (ReactOS
/// `ntoskrnl/config/cmapi.c` `CmQueryKey` → `CmpQueryNameInformation`, each KCB's name block
/// up to the root; Learn `KEY_NAME_INFORMATION`). The model's object keeps that name
/// ([`HiveState::rename`] rebases it).
///
/// # Errors
/// STATUS_INVALID_HANDLE for a handle `pid` does not have; STATUS_KEY_DELETED for an object
/// of a deleted key ([`delete_key`]): WRK `base/ntos/config/cmapi.c` CmQueryKey,
/// KeyNameInformation of a KCB with `Delete` set: "return key deleted status, but still fill
/// the full name of the key" (the model returns no name with it; until 2026-12-05 the model
/// deleted no keys).
pub fn query_key_name(pid: u32, handle: u64) -> Result<String, NtStatus> {
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    kernel::with(|k| {
        let h = &k.hives;
        let object = h
            .handles
            .get(&(table, handle))
            .ok_or(STATUS_INVALID_HANDLE)?;
        let o = h.objects.get(object).ok_or(STATUS_INVALID_HANDLE)?;
        if o.deleted {
            return Err(STATUS_KEY_DELETED);
        }
        Ok(o.name.clone())
    })
}

/// Closes a key handle. When the object's last handle goes and nothing else references it,
/// the object is deleted now, on this thread ([`release`]); while a driver still references
/// it, nothing is delivered until that reference goes ([`on_last_reference`]). Closes cannot
/// be blocked.
#[must_use = "STATUS_INVALID_HANDLE for an unknown handle"]
pub fn close_key(pid: u32, handle: u64) -> NtStatus {
    // A kernel handle is in the System process's table, whichever thread closes it; the
    // close then runs attached to the System process (ReactOS ObpCloseHandle).
    let table = crate::nt::ps::process::handle_table_of(pid, handle);
    if handle & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT && table == 4 {
        return crate::nt::ps::process::attached(4, || close_in(pid, 4, handle));
    }
    close_in(pid, table, handle)
}

/// Closes `handle` of `table` on a thread of `pid`.
fn close_in(pid: u32, table: u32, handle: u64) -> NtStatus {
    let object = kernel::with(|k| {
        let h = &mut k.hives;
        let object = h.handles.remove(&(table, handle))?;
        h.inheritable.remove(&(table, handle));
        let o = h.objects.get_mut(&object)?;
        o.handles -= 1;
        Some(object)
    });
    let Some(object) = object else {
        return STATUS_INVALID_HANDLE;
    };
    io::with_pid(pid, || release(object));
    STATUS_SUCCESS
}

/// Deletes `object` if neither a handle nor a reference is left: at once, on the calling
/// thread, or — in deferred mode ([`set_deferred_deletion`]) — later, on a system worker
/// thread. The key object lives until its last reference ("Invalid Key Object Pointers in
/// Registry Notifications": in pre/post-close the object "is being destroyed and whose
/// reference count is zero"; ReactOS `ntoskrnl/config/cmsysini.c`, CmpDeleteKeyObject is the
/// key type's delete procedure, run at the last dereference).
fn release(object: usize) {
    let queued = kernel::with(|k| {
        let dead = k.hives.objects.get(&object).is_some_and(|o| o.handles == 0)
            && k.objects.references.get(&object).copied().unwrap_or(0) == 0;
        if !dead {
            return None;
        }
        Some(
            k.hives.defer_deletion && {
                k.hives.deferred.push(object);
                true
            },
        )
    });
    if queued == Some(false) {
        delete_object(object);
    }
}

/// CmpDeleteKeyObject (ReactOS `ntoskrnl/config/cmsysini.c`): RegNtPreKeyHandleClose, the
/// object's RegNtCallbackObjectContextCleanup notifications, RegNtPostKeyHandleClose to every
/// callback that saw the pre (a close cannot be failed), then the object is freed — in the
/// process and thread this runs on.
fn delete_object(object: usize) {
    let mut info = RegKeyHandleCloseInformation {
        object: object as *mut c_void,
        call_context: std::ptr::null_mut(),
        object_context: std::ptr::null_mut(),
        reserved: std::ptr::null_mut(),
    };
    let at = (&raw mut info) as usize;
    let fields = PreFields {
        call_context: 0x08,
        object_context: Some(0x10),
        object,
    };
    let pre = registry::delivering_close(object, || {
        registry::notify_pre_unblockable(class::PRE_KEY_HANDLE_CLOSE, at, fields)
    });
    destroy(object);
    let all = registry::PreOutcome {
        status: STATUS_SUCCESS,
        call_contexts: pre.call_contexts,
    };
    registry::delivering_close(object, || {
        registry::notify_post(
            class::POST_KEY_HANDLE_CLOSE,
            object,
            STATUS_SUCCESS,
            at,
            &all,
        )
    });
    release_object(object);
}

/// Removes a destroyed key object and frees its page; if it was the last key object of an
/// app hive, that hive unloads now; of a hive with a deferred unload, the unload is queued
/// now or after the delayed dereference ([`delay_deref`]).
fn release_object(object: usize) {
    let hive = kernel::with(|k| {
        let o = k.hives.remove_object(object)?;
        delay_deref(&mut k.hives, &o);
        Some(o.hive)
    });
    free_object_page(object);
    if let Some(hive) = hive {
        hive_object_gone(&hive);
    }
}

/// How long the delayed KCB dereference waits, in seconds: WRK `base/ntos/config/cmdelay.c`
/// `CmpDelayDerefKCBIntervalInSeconds = 5` (ReactOS `ntoskrnl/config/cmdelay.c`: the same).
pub const DELAY_DEREF_SECONDS: u64 = 5;

/// A key object `o` was just removed: its key control block loses the object's reference.
///
/// Windows Research Kernel, `base/ntos/config/`:
/// - `cmdelete.c` CmpDeleteKeyObject delists the key body and calls
///   `CmpDelayDerefKeyControlBlock` (`cmdelay.c`): a count that stays above 0 drops at once;
///   one that would reach 0 is put on the delay-deref list, and if the list's worker is not
///   already active a timer is set "for 5 secs later" (`CmpDelayDerefKCBIntervalInSeconds`).
///   The timer is armed only by the first item queued while the worker is idle, so an item
///   waits *up to* the interval, less when an earlier item (any hive's) armed it.
/// - A key control block's count is its key bodies plus its child blocks (each holds its
///   parent, `cmsubs.c` CmpCleanUpKcbCacheWithLock dereferences the parent when a block is
///   freed). Modelled as: the block drops to 0 when no live object is at or below its key.
/// - A frozen hive's root has the unload's artificial reference (`cmapi.c` CmUnloadKeyEx:
///   `CmpReferenceKeyControlBlock(kcb)`), so its root's count never reaches 0 there: closing
///   the root's last object drops it at once, and CmpDoQueueLateUnloadWorker (`cmdelete.c`),
///   called at every close in a frozen hive, queues the late unload when the root's count is
///   back to that one reference. A closed *subkey's* block still holds the root until the
///   delay-deref worker (`cmdelay.c` CmpDelayDerefKCBWorker) dereferences it — its blocks were
///   tagged `CM_KCB_NO_DELAY_CLOSE` at the freeze (`CmpSearchForOpenSubKeys(...,
///   SearchAndTagNoDelayClose)`), so they are freed then, not cached — and the worker calls
///   CmpDoQueueLateUnloadWorker for a frozen hive's item: the hive unloads then, not at the
///   close.
///
/// Not modelled: a deleted key's block (the WRK skips the unload check for it: `!Kcb->Delete`)
/// is treated as any subkey's.
fn delay_deref(h: &mut HiveState, o: &KeyObject) {
    let key = canon(&o.name);
    let root = key == o.hive;
    let frozen = h
        .hives
        .get(&o.hive)
        .is_some_and(|e| e.pending_unload.is_some());
    let to_zero = o.deleted || !h.live_below.contains_key(&key);
    if !to_zero || (root && frozen) {
        return;
    }
    if frozen && !h.delay_deref_hives.contains(&o.hive) {
        h.delay_deref_hives.push(o.hive.clone());
    }
    if h.delay_deref_due.is_none() {
        h.delay_deref_due =
            Some(crate::machine::cpu::emulated_offset() + DELAY_DEREF_SECONDS * 10_000_000);
    }
}

/// The delayed dereference's timer, at the clock interrupt ([`crate::nt::ke::timer::advance`]):
/// once its interval has passed in emulated time, the worker runs (WRK `cmdelay.c`
/// CmpDelayDerefKCBDpcRoutine queues CmpDelayDerefKCBWorker): it empties the list, and each
/// frozen hive whose last key is then gone gets its late unload.
pub fn run_delay_deref_due() {
    let now = crate::machine::cpu::emulated_offset();
    let due = kernel::with(|k| {
        let due = k.hives.delay_deref_due.is_some_and(|d| d <= now);
        if due {
            k.hives.delay_deref_due = None;
        }
        due
    });
    if due {
        run_down_delay_deref();
    }
}

/// Services every queued delayed dereference now (WRK `cmdelay.c`
/// CmpRunDownDelayDerefKCBEngine, called by `cmsubs.c` CmpCleanUpKCBCacheTable "make sure all
/// delayed dereferences are serviced first" at the start of every CmpSearchForOpenSubKeys —
/// so an NtQueryOpenSubKeysEx of any hive runs the list down): each frozen hive whose last
/// key is then gone gets its late unload. The timer stays set (its worker finds the list
/// empty).
pub fn run_down_delay_deref() {
    let hives = kernel::with(|k| std::mem::take(&mut k.hives.delay_deref_hives));
    for hive in hives {
        hive_object_gone(&hive);
    }
}

/// Whether a deferred unload of `hive` waits for the delayed dereference: a key control block
/// of it is on the list, holding its root ([`delay_deref`]).
#[must_use]
pub fn delay_deref_pending(hive: &str) -> bool {
    kernel::with(|k| {
        k.hives
            .delay_deref_hives
            .iter()
            .any(|h| h.eq_ignore_ascii_case(hive))
    })
}

/// After a key object of `hive` is gone: an app hive with no key object left unloads by
/// itself, silently (RegLoadAppKey: "automatically unloaded when all handles to the keys
/// inside the hive are closed"); a hive with a deferred unload is unloaded by a system worker
/// thread, which signals the unload event (inference, see the module doc).
fn hive_object_gone(hive: &str) {
    let action = kernel::with(|k| {
        let h = &mut k.hives;
        let held = h.objects.values().any(|o| o.hive == hive)
            || h.delay_deref_hives.iter().any(|d| d == hive)
            || !h.link_holds(hive).is_empty();
        let entry = h.hives.get(hive)?;
        if held || !(entry.app || entry.pending_unload.is_some()) {
            return None;
        }
        Some(entry.pending_unload.clone())
    });
    match action {
        None => {}
        Some(None) => kernel::with(|k| remove_hive(&mut k.hives, hive)),
        Some(Some(_)) => {
            let hive = hive.to_string();
            // The worker is detached: a scenario waits on the event, as a caller of
            // NtUnloadKeyEx waits on its event.
            std::thread::spawn(move || {
                crate::machine::cpu::enter_thread(DEFERRED_UNLOAD_THREAD);
                // WRK `cmdelete.c` CmpLateUnloadHiveWorker looks again when it runs: it gives
                // up ("bad luck, we can't unload") if the hive is no longer frozen (a reload
                // cancelled the unload) or a key was opened in it meanwhile; the event it then
                // sets is the hive's at that time (`CmHive->UnloadEvent`, which a later
                // deferred unload overwrites: `cmapi.c` CmUnloadKeyEx). Review 20a, M2.
                let event = kernel::with(|k| {
                    let h = &mut k.hives;
                    let held = h.objects.values().any(|o| o.hive == hive)
                        || h.delay_deref_hives.contains(&hive)
                        || !h.link_holds(&hive).is_empty();
                    let event = h.hives.get(&hive).and_then(|e| e.pending_unload.clone());
                    if held || event.is_none() {
                        return None;
                    }
                    remove_hive(h, &hive);
                    event
                });
                let Some(event) = event else { return };
                io::with_pid(SYSTEM_PID, || {
                    // WRK `cmdelete.c` CmpLateUnloadHiveWorker calls CmUnloadKey, which takes
                    // the hive out of the hive list before it signals the unload event.
                    remove_from_hive_list(SYSTEM_PID, &hive);
                });
                event.signal(UnloadCompletion {
                    pid: 4,
                    thread: DEFERRED_UNLOAD_THREAD,
                });
            });
        }
    }
}

/// The emulated processor number of the system worker thread that completes deferred unloads.
pub const DEFERRED_UNLOAD_THREAD: u32 = 120;

/// Removes a mounted hive and its keys. The hive list key is volatile
/// (REG_OPTION_VOLATILE, WRK `cmhvlist.c` CmpAddToHiveFileList): if it lived in this hive,
/// its values go with it.
fn remove_hive(h: &mut HiveState, m: &str) {
    // The hive's own cached link blocks are purged (their references on other hives' blocks
    // go: WRK `cmsubs.c` CmpCleanUpKCBCacheTable -> CmpCleanUpKcbValueCache), and links
    // elsewhere stop pointing at this hive's blocks (a forced unload marks them deleted).
    let gone: Vec<String> = h
        .link_kcbs
        .iter()
        .filter(|(l, t)| h.hive_of(l).as_deref() == Some(m) || h.hive_of(t).as_deref() == Some(m))
        .map(|(l, _)| l.clone())
        .collect();
    for l in gone {
        h.link_kcbs.remove(&l);
    }
    if h.hive_list_hive().as_deref() == Some(m) {
        h.hive_list.clear();
    }
    if let Some(e) = h.hives.remove(m).and_then(|gone| gone.kept_event) {
        e.signal(UnloadCompletion {
            pid: 0,
            thread: crate::machine::cpu::processor_number(),
        });
    }
    let prefix = format!("{m}\\");
    h.keys.retain(|key| key != m && !key.starts_with(&prefix));
}

/// Marks `object` destroyed and delivers the context cleanups.
fn destroy(object: usize) {
    // Taking the contexts and reserving their callbacks is one step, so a concurrent
    // CmUnRegisterCallback either sees the context or waits for this cleanup.
    let contexts = kernel::with(|k| {
        let taken = k.hives.objects.get_mut(&object).map(|o| {
            o.destroyed = true;
            std::mem::take(&mut o.contexts)
        });
        for cookie in taken.iter().flat_map(|c| c.keys()) {
            *k.registry.in_flight.entry(*cookie).or_insert(0) += 1;
        }
        taken
    });
    for (cookie, context) in contexts.unwrap_or_default() {
        registry::notify_context_cleanup(object, cookie, context);
        kernel::with(|k| {
            if let Some(n) = k.registry.in_flight.get_mut(&cookie) {
                *n -= 1;
            }
        });
    }
}

/// Called by ObfDereferenceObject when an object's extra references reach zero: a key object
/// with no handle left is deleted now, on the dereferencing thread, in its process.
pub fn on_last_reference(object: usize) {
    release(object);
}

/// Deferred mode on or off. On: the deletion of a key object whose last handle or reference
/// goes is queued and runs later, on a system worker thread of the System process
/// ([`run_deferred_deletions`]), so its close and cleanup notifications see
/// PsGetCurrentProcessId() == 4, not the closing process — as when Windows defers an object's
/// deletion (docs: ObDereferenceObjectDeferDelete, "the object manager passes the object
/// deletion request to a worker thread"; ReactOS `ntoskrnl/ob/obref.c`, ObpDeferObjectDeletion
/// links the object on ObpReaperList and queues ObpReaperWorkItem with ExQueueWorkItem;
/// system worker threads belong to the System process). Until it runs the object exists (a
/// hive unload still fails). Turning it off runs what is queued.
pub fn set_deferred_deletion(on: bool) {
    kernel::with(|k| k.hives.defer_deletion = on);
    if !on {
        let _ = run_deferred_deletions();
    }
}

/// Runs the queued deletions on a new system worker thread (System process, pid 4) and waits
/// for it. Returns how many key objects it deleted.
///
/// # Panics
/// If the worker thread cannot be spawned.
#[must_use = "how many deletions ran"]
pub fn run_deferred_deletions() -> usize {
    let queued = kernel::with(|k| std::mem::take(&mut k.hives.deferred));
    let n = queued.len();
    if n == 0 {
        return 0;
    }
    let worker = std::thread::Builder::new()
        .name("kemu-system-worker".into())
        .stack_size(16 << 20)
        .spawn(move || {
            crate::machine::cpu::enter_thread(0);
            io::with_pid(SYSTEM_PID, || {
                for object in queued {
                    delete_object(object);
                }
            });
        })
        .expect("spawn the system worker thread");
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
    n
}

/// Unloads a hive (RegUnLoadKey): the private open of the hive's root (RegNtPreCreateKeyEx /
/// RegNtPostCreateKeyEx, a kernel handle, on the caller's thread), RegNtPreUnLoadKey with that
/// key object, then STATUS_CANNOT_DELETE if any other key object of the hive exists or any is
/// referenced, else the hive and its keys are gone; RegNtPostUnLoadKey; then the private
/// object's deletion (RegNtPreKeyHandleClose, cleanups, RegNtPostKeyHandleClose). See
/// `unload`.
#[must_use = "STATUS_CANNOT_DELETE while the hive is held"]
pub fn unload_hive(pid: u32, mount: &str) -> NtStatus {
    unload(pid, mount, None, 0, || {})
}

/// `REG_FORCE_UNLOAD` (winnt.h): the `Flags` of NtUnloadKey2 / RegUnLoadKey that unloads a
/// hive "even if there are open subkeys inside of it" (WRK `ntapi.c` NtUnloadKey2).
pub const REG_FORCE_UNLOAD: u32 = 1;

/// `NtUnloadKey2(TargetKey, Flags)`: with `Flags` == [`REG_FORCE_UNLOAD`] a held hive is
/// unloaded all the same — what the User Profile Service does after its event 1530 unless
/// the policy "Do not forcefully unload the user registry at user logoff" is set (Learn
/// archive, "More on User Profile Service functionality",
/// <https://learn.microsoft.com/en-us/archive/blogs/dsnotes/more-on-user-profile-service-functionality>).
/// Any other value is 0: "Anything different than REG_FORCE_UNLOAD is ignored" (WRK
/// `ntapi.c`). The notifications are an ordinary unload's (see `unload`); what a forced one
/// does to the open keys is `HiveState::force_unload_keys`.
#[must_use = "STATUS_SUCCESS unless refused before the keys are looked at"]
pub fn unload_key2(pid: u32, mount: &str, flags: u32) -> NtStatus {
    unload(pid, mount, None, flags, || {})
}

/// [`unload_hive`] with `between` run after RegNtPreUnLoadKey and before the hive is
/// unlinked: a scenario's window inside the unload, in which callbacks can register (with
/// [`crate::nt::cm::registry::set_late_posts`], they then get the post without the pre) and
/// read the hive list, which still lists the hive. The Windows Research Kernel's `ntapi.c`
/// NtUnloadKey2 calls `cmapi.c` CmUnloadKey, which frees the hive, between its lock
/// acquisitions; the WRK predates the unload notifications, so their places around it are an
/// *inference*, as every other class's pre comes before its operation and its post after.
#[must_use = "STATUS_CANNOT_DELETE while the hive is held"]
pub fn unload_hive_interrupted(pid: u32, mount: &str, between: impl FnOnce()) -> NtStatus {
    unload(pid, mount, None, 0, between)
}

/// Unloads a hive with `NtUnloadKeyEx(TargetKey, Event)`: RegNtPreUnLoadKey with `UserEvent`
/// = the event; a hive nothing holds unloads at once (STATUS_SUCCESS, event signalled on the
/// calling thread); a held one answers STATUS_PENDING (also in RegNtPostUnLoadKey) and is
/// unloaded later, when its last key object is gone, by a system worker thread (System
/// process, processor [`DEFERRED_UNLOAD_THREAD`]) with no further notification; the event
/// then says so. Modelled from the documented `UserEvent` fields and the WRK's `ntapi.c`
/// NtUnloadKeyEx (STATUS_PENDING: "hive has been frozen and the event (if any) will be
/// signaled when the hive unloads"); its place in the post-notification is an inference.
#[must_use = "STATUS_PENDING: wait on the event"]
pub fn unload_key_ex(pid: u32, mount: &str) -> (NtStatus, UnloadEvent) {
    let event = UnloadEvent::new();
    let status = unload(pid, mount, Some(&event), 0, || {});
    if status == STATUS_SUCCESS {
        event.signal(UnloadCompletion {
            pid,
            thread: crate::machine::cpu::processor_number(),
        });
    }
    (status, event)
}

/// KEY_ALL_ACCESS (winnt.h): the access the model's RegLoadAppKey callers ask for.
const KEY_ALL_ACCESS: u32 = 0xF_003F;

/// `KEY_WOW64_RES` (WRK `public/sdk/inc/ntregapi.h`): KEY_WOW64_64KEY | KEY_WOW64_32KEY.
const KEY_WOW64_RES: u32 = 0x0300;

/// `OBJ_FORCE_ACCESS_CHECK` (wdm.h).
const OBJ_FORCE_ACCESS_CHECK: u32 = 0x0400;

/// The access an open of a key is granted for `desired` (its WOW64 bits already out): the
/// generic rights mapped with the key object type's mapping (ReactOS
/// `ntoskrnl/config/cmsysini.c` CmpCreateObjectTypes, WRK `cmsysini.c`: `CmpKeyMapping =
/// {KEY_READ, KEY_WRITE, KEY_EXECUTE, KEY_ALL_ACCESS}`), the specific rights as asked.
/// `MAXIMUM_ALLOWED` gets KEY_ALL_ACCESS: the model's keys have no security descriptors,
/// and an administrator's or System's open of most keys is granted all access (an
/// *inference*; Process Monitor's captures of real Windows show "Desired Access: Maximum
/// Allowed, Granted Access: All Access", or Read where the key's DACL allows no more). What
/// the open's post-notification carries in `GrantedAccess` (Learn
/// REG_CREATE_KEY_INFORMATION_V1: "the access rights that were granted to the thread that is
/// trying to create the registry key"); until 2026-12-05 it was always 0, and hivetrack.sys's
/// use of it (its reports' access masks) ran only on a filter's bypass (fidelity audit 16b,
/// F1).
fn granted_access(desired: u32) -> u32 {
    const KEY_READ: u32 = 0x2_0019;
    const KEY_WRITE: u32 = 0x2_0006;
    const KEY_EXECUTE: u32 = 0x2_0019;
    const GENERIC: [(u32, u32); 4] = [
        (0x8000_0000, KEY_READ),
        (0x4000_0000, KEY_WRITE),
        (0x2000_0000, KEY_EXECUTE),
        (0x1000_0000, KEY_ALL_ACCESS),
    ];
    let maximum = desired & crate::nt::se::security::MAXIMUM_ALLOWED != 0;
    let mut granted = desired & 0x00FF_FFFF & !crate::nt::se::security::MAXIMUM_ALLOWED;
    for (generic, specific) in GENERIC {
        if desired & generic != 0 {
            granted |= specific;
        }
    }
    if maximum {
        granted |= KEY_ALL_ACCESS;
    }
    granted
}
/// KEY_WRITE (winnt.h): the access NtUnloadKey2/NtUnloadKeyEx open the hive's root with.
const KEY_WRITE: u32 = 0x2_0006;

/// NtUnloadKey2 / NtUnloadKeyEx as the Windows Research Kernel has them
/// (`base/ntos/config/ntapi.c`): "we open a private kernel mode handle just to take a
/// reference on the object" — `ObOpenObjectByName` of the target name with
/// `OBJ_KERNEL_HANDLE`, `KernelMode`, `KEY_WRITE` and a parse context with
/// `CreateOperation = TRUE`, so the parse (`cmparse.c` CmpParseKey) delivers
/// RegNtPreCreateKeyEx/RegNtPostCreateKeyEx on the calling thread, in its process; then
/// `ObReferenceObjectByHandle` and `ZwClose` of the handle (no notification: the object is
/// still referenced), the unload itself (`CmUnloadKey`), and `ObDereferenceObject` at the
/// end, which deletes the object (`cmdelete.c` CmpDeleteKeyObject: RegNtPreKeyHandleClose,
/// the context cleanups, RegNtPostKeyHandleClose) after the unload's post-notification. The
/// WRK predates RegNtPreUnLoadKey; that its `Object` ("the registry key object for the root
/// key of the hive that is about to be unloaded", Learn REG_UNLOAD_KEY_INFORMATION) is this
/// private object — the only key object the routine holds — is an *inference*. Until
/// 2026-12-05 the model made that object silently (no create or close notification), so a
/// tracking driver never saw the unload's own key (issue: emulator fidelity audit F2).
///
/// The private create runs whatever `mount` names (fidelity audit 19a, F6: until 2026-12-06
/// the model answered STATUS_OBJECT_NAME_NOT_FOUND at once, with no notification, for
/// anything but a loaded hive's root): a missing last component right under a master key
/// (a hive already unloaded) fails in the parse with STATUS_INVALID_PARAMETER after its
/// notified pre/post-create (`cmparse.c`, CmpNoMasterCreates; see `parse_key`); a missing
/// last component inside a loaded hive is created by it (`cmparse.c` CmpDoCreate) and then
/// refused like any key that is not a hive's root: `CmUnloadKey` answers
/// STATUS_INVALID_PARAMETER ("Make sure the cell passed in is the root cell of the hive",
/// also for the master hive's keys, `cmapi.c`), after a frozen hive's STATUS_TOO_LATE
/// (`ntapi.c` checks `IsHiveFrozen` of the key's hive first), and the private object is
/// closed as after any unload. That this refusal also gets RegNtPreUnLoadKey/
/// RegNtPostUnLoadKey (with that key's object) is the model's *inference*, as for the other
/// statuses: the WRK predates the notification, and every other class's pre comes before its
/// operation.
///
/// `flags` == [`REG_FORCE_UNLOAD`] (NtUnloadKey2; until 2026-12-06 not modelled, audit 22b
/// M6): after the same private open and RegNtPreUnLoadKey, a hive held by other key objects
/// is unloaded all the same — WRK `cmapi.c` CmUnloadKey: `if(Kcb->RefCount != 1) { if(
/// Flags == REG_FORCE_UNLOAD ) { CmpSearchForOpenSubKeys(Kcb, SearchAndDeref, ...)` marks
/// every block below the root deleted ([`HiveState::force_unload_keys`]); it fails with
/// STATUS_CANNOT_DELETE only for a read-only block, which the model has none of. The frozen
/// (STATUS_TOO_LATE) and not-a-root (STATUS_INVALID_PARAMETER) refusals come first, as for
/// any unload. RegNtPostUnLoadKey carries STATUS_SUCCESS: REG_UNLOAD_KEY_INFORMATION has no
/// flags member (Learn), so a filter cannot tell a forced unload from another. The key
/// objects left open are not closed by it: no RegNtPreKeyHandleClose then; each is deleted
/// at its last handle or reference as any object (WRK `cmdelete.c` CmpDeleteKeyObject calls
/// RegNtPreKeyHandleClose/RegNtPostKeyHandleClose "HandleClose callback" whatever its
/// block's state, and the context cleanups follow), with its old id and name
/// (CmCallbackGetKeyObjectIDEx on it: the model's *inference*, as for a deleted key's
/// object: the block it names stays allocated while key bodies reference it). Operations on
/// such a handle find its block deleted (STATUS_KEY_DELETED, as `parse_key` and
/// `query_key_name` answer a deleted key's). Not modelled: the flush of pending change
/// notifications on the key bodies (WRK `cmapi.c` CmUnloadKey:
/// `CmpFlushNotifiesOnKeyBodyList(Kcb, TRUE)` on the root, `cmsubs.c` `SearchAndDeref` on
/// each open subkey; `cmnotify.c` CmpFlushNotify completes the pending calls with
/// STATUS_NOTIFY_CLEANUP): the model has no NtNotifyChangeKey, and neither hivetrack's driver
/// nor its CLI uses one.
fn unload(
    pid: u32,
    mount: &str,
    event: Option<&UnloadEvent>,
    flags: u32,
    between: impl FnOnce(),
) -> NtStatus {
    let force = flags == REG_FORCE_UNLOAD;
    // The private kernel handle: its open is notified like any create (a filter may fail it,
    // and then the unload is not attempted: no unload notification).
    let handle = match open_for_caller(pid, mount, true) {
        Ok(h) => h,
        Err(s) => return s,
    };
    let root = kernel::with(|k| {
        let object = k.hives.handles.get(&(SYSTEM_PID, handle)).copied()?;
        *k.objects.references.entry(object).or_insert(0) += 1;
        Some(object)
    });
    // ZwClose of the private handle, attached to the System process (a kernel handle).
    let _ = close_key(pid, handle);
    let Some(root) = root else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    let mut unloaded = None;
    let mut released: Vec<String> = Vec::new();
    let status = io::with_pid(pid, || {
        let mut info = RegUnloadKeyInformation {
            object: root as *mut c_void,
            user_event: event.map_or(std::ptr::null_mut(), |e| e.object as *mut c_void),
            call_context: std::ptr::null_mut(),
            object_context: std::ptr::null_mut(),
            reserved: std::ptr::null_mut(),
        };
        let at = (&raw mut info) as usize;
        let fields = PreFields {
            call_context: 0x10,
            object_context: Some(0x18),
            object: root,
        };
        let pre = registry::notify_pre(class::PRE_UNLOAD_KEY, at, fields);
        if !pre.proceeds() {
            return pre.unwind(class::POST_UNLOAD_KEY, at, root);
        }
        between();
        let status = kernel::with(|k| {
            // The hive the object's key is in, and whether the key is that hive's root (the
            // master hive's keys are no loaded hive's).
            let (m, is_root) = k
                .hives
                .objects
                .get(&root)
                .map_or((String::new(), false), |o| {
                    (
                        o.hive.clone(),
                        k.hives.hives.contains_key(&o.hive) && canon(&o.name) == o.hive,
                    )
                });
            // A deferred unload is already pending ("frozen"): a second unload, either kind,
            // fails with STATUS_TOO_LATE and the first caller's event stays the one set at
            // the unload (WRK `ntapi.c` NtUnloadKey2: "don't let them hurt themselves by
            // calling it twice"; `cmapi.c` CmUnloadKeyEx: `if( IsHiveFrozen(CmHive) )
            // return STATUS_TOO_LATE`; fidelity audit 19a, F2). Until 2026-12-06 the model
            // answered CANNOT_DELETE, or PENDING with the first event replaced and never set.
            if k.hives
                .hives
                .get(&m)
                .is_some_and(|h| h.pending_unload.is_some())
            {
                return STATUS_TOO_LATE;
            }
            // WRK `cmapi.c` CmUnloadKey: `if((Cell != Hive->BaseBlock->RootCell) ||
            // ((PCMHIVE)Hive == CmpMasterHive)) return(STATUS_INVALID_PARAMETER)`.
            if !is_root {
                return STATUS_INVALID_PARAMETER;
            }
            // Held: any other key object of the hive, or a reference on the unload's own
            // object beyond the one the unload took.
            // Or a cached link block of another hive referencing one of its blocks (WRK
            // `cmapi.c` CmUnloadKey: `Success = Success && (Kcb->RefCount == 1)`; the
            // reference is `cmparse.c` CmpGetSymbolicLink's, see
            // [`HiveState::cache_link_follow`]): STATUS_CANNOT_DELETE with no key body in
            // the hive, so NtQueryOpenSubKeysEx lists nothing. A forced unload goes on
            // (`SearchAndDeref` fails only for a read-only block).
            // The attempt's search for open keys purges this hive's cached link blocks,
            // whether or not the unload then succeeds (WRK `cmapi.c` ≈3018 CmUnloadKey →
            // `cmsubs.c` CmpSearchForOpenSubKeys → CmpCleanUpKCBCacheTable; review 23c, M1).
            released = k.hives.purge_link_blocks(&m);
            let pinned = k.hives.objects.iter().any(|(a, o)| {
                o.hive == m && (*a != root || k.objects.references.get(a).copied().unwrap_or(0) > 1)
            }) || !k.hives.link_holds(&m).is_empty();
            if pinned && force {
                k.hives.force_unload_keys(&m);
            } else if pinned {
                if let (Some(e), Some(h)) = (event, k.hives.hives.get_mut(&m)) {
                    h.pending_unload = Some(e.clone());
                    return STATUS_PENDING;
                }
                return STATUS_CANNOT_DELETE;
            }
            remove_hive(&mut k.hives, &m);
            // The unload's own object outlives the hive until its dereference below (later,
            // in deferred mode): it belongs to the hive just unloaded, not to one loaded at
            // the same mount afterwards (WRK `CmUnloadKey` marks the hive's KCBs deleted), so
            // it must neither hold nor be listed in that one (review 16, 2026-12-05).
            if let Some(o) = k.hives.objects.get_mut(&root) {
                o.hive = format!("{m} (unloaded)");
            }
            k.hives.retire_unloaded_root(root);
            unloaded = Some(m);
            STATUS_SUCCESS
        });
        if let Some(m) = &unloaded {
            // WRK `cmapi.c` CmUnloadKey: after CmpDestroyHive, "Remove the hive from the
            // HiveFileList" (CmpRemoveFromHiveFileList), on the unloading thread, before it
            // returns.
            remove_from_hive_list(pid, m);
        }
        // The caller gets the status a post-callback may have substituted (as for load).
        registry::notify_post(class::POST_UNLOAD_KEY, root, status, at, &pre)
    });
    // ObDereferenceObject: the last reference, so the object is deleted on this thread, in
    // the caller's process (or queued, in deferred mode).
    io::with_pid(pid, || crate::nt::ob::object::dereference(root));
    for hive in released {
        hive_object_gone(&hive);
    }
    status
}

/// `NtQueryOpenSubKeysEx` on the hive mounted at `mount`: one `(pid, key name)` per key
/// object of the hive that a handle or a reference keeps alive, the pid being the process
/// that opened the object. Source: Windows Research Kernel `CmpDumpKeyBodyList` /
/// `CmpDumpOneKeyBody` (base/ntos/config/cmsubs.c): every `CM_KEY_BODY` enlisted on a KCB
/// of the hive, reported with `KeyBody->ProcessID` and the KCB's name, the caller's own
/// query handle excluded; key bodies are delisted only when the object is deleted
/// (`CmpDeleteKeyObject`), so objects being destroyed are not listed, while an object whose
/// deletion is queued for a system worker ([`set_deferred_deletion`]) still is — it still
/// pins the hive, and a listing without it would say "nothing holds it" while the unload
/// fails (WRK `base/ntos/config/cmdelete.c`: `DelistKeyBodyFromKCB` runs inside
/// `CmpDeleteKeyObject`, after RegNtPreKeyHandleClose). Objects opened
/// before any registry callback was registered are listed like any other: this is how a
/// user-mode tool sees keys a late-started filter never saw. The model keeps the name as
/// the object was opened (the KCB's stored name is the same path here).
///
/// # Errors
/// `STATUS_INVALID_PARAMETER` when `mount` is an existing key that is not a loaded hive's
/// root (WRK `ntapi.c` NtQueryOpenSubKeysEx: "Make sure the cell passed in is the root cell
/// of the hive"; until 2026-12-06 the model answered NAME_NOT_FOUND, fidelity audit 19a,
/// F6); `STATUS_OBJECT_NAME_NOT_FOUND` when no key is there (the service's own open fails).
/// The service's private open of `mount` is not modelled (no notification), nor its
/// SeRestorePrivilege check.
pub fn open_subkeys(mount: &str) -> Result<Vec<(u32, String)>, NtStatus> {
    let m = canon(mount);
    let mut released = Vec::new();
    let listed = kernel::with(|k| {
        if !k.hives.hives.contains_key(&m) {
            let exists = k.hives.hive_of(&m).is_some()
                && (k.hives.keys.contains(&m) || MASTER_KEYS.contains(&m.as_str()));
            return Err(if exists {
                STATUS_INVALID_PARAMETER
            } else {
                STATUS_OBJECT_NAME_NOT_FOUND
            });
        }
        let busy = k.hives.take_busy_buckets(&m);
        let mut v: Vec<(usize, u32, String)> = k
            .hives
            .objects
            .iter()
            .filter(|(a, o)| {
                o.hive == m
                    && !o.destroyed
                    && !o.deleted
                    && !busy.contains(&canon(&o.name))
                    && (o.handles > 0
                        || k.objects.references.get(a).copied().unwrap_or(0) > 0
                        || k.hives.deferred.contains(a))
            })
            .map(|(a, o)| (*a, o.opener, o.name.clone()))
            .collect();
        v.sort_unstable();
        // The search purges the hive's unreferenced cached blocks, its link blocks among
        // them (WRK `ntapi.c` ≈5061 → `cmsubs.c` ≈584 CmpCleanUpKCBCacheTable; review 23c,
        // M1): no key body is on them, so the listing is the same.
        released = k.hives.purge_link_blocks(&m);
        Ok(v.into_iter().map(|(_, pid, name)| (pid, name)).collect())
    });
    // The search first services the delayed dereferences (WRK `cmsubs.c`
    // CmpSearchForOpenSubKeys → CmpCleanUpKCBCacheTable → CmpRunDownDelayDerefKCBEngine): a
    // frozen hive whose last key closed gets its late unload queued now (from the run-down,
    // or at the query's release of its own body on the root, `ntapi.c` NtQueryOpenSubKeysEx:
    // ObDereferenceObject(KeyBody) → `cmdelete.c` CmpDoQueueLateUnloadWorker). The keys it
    // listed are the same: a block on the list has no key body (CmpDumpKeyBodyList).
    if listed.is_ok() {
        run_down_delay_deref();
    }
    for hive in released {
        hive_object_gone(&hive);
    }
    listed
}

/// Makes the next `reads` calls of [`open_subkeys`] on the hive of key `path` find that
/// key's hash bucket busy: they leave out every key object of the key and still succeed
/// (`reads` 0 clears it). Nothing else sees the bucket busy: an unload's search runs with
/// the registry lock held exclusive, where every bucket lock is waited for.
///
/// Windows Research Kernel `ntapi.c` NtQueryOpenSubKeysEx (≈5024-5062) takes the registry
/// lock *shared* (`CmpLockRegistry`) and only the two buckets of the hive's root and its
/// parent exclusive, then calls `cmsubs.c` CmpSearchForOpenSubKeys (≈606-632) with
/// SearchAndCount: each other bucket it may not wait for is try-locked, and when
/// `CmpTryToLockHashEntryByIndexExclusive` fails — another thread holds the bucket, as any
/// open, close or delete of a key hashed there does for a moment — "else skip this entry;
/// continue": the bucket's keys are not dumped, and the call returns STATUS_SUCCESS with
/// them missing. *Model choices*: the busy bucket holds the one key named (a real bucket
/// holds every cached key whose hash falls there, of any hive); a bucket stays busy for a
/// number of reads (a read in Windows takes microseconds, so a writer in a loop can overlap
/// several). Not modelled: a key body on the fast array skipped when its compare-exchange
/// loses (`cmsubs.c` CmpDumpKeyBodyList ≈296-316), same effect, one object.
///
/// # Panics
/// When `path` is its hive's root (the query holds the root's bucket itself, so the root's
/// key bodies are always listed: `CmpDumpKeyBodyList(KeyControlBlock, ...)` before the loop)
/// or no loaded hive holds it — a scenario's mistake.
pub fn busy_bucket(path: &str, reads: u32) {
    let key = canon(path);
    kernel::with(|k| {
        let hive = k.hives.hive_of(&key);
        assert!(
            hive.as_ref().is_some_and(|h| *h != key),
            "busy_bucket({path}): not a key below a loaded hive's root"
        );
        if reads == 0 {
            k.hives.busy_buckets.remove(&key);
        } else {
            k.hives.busy_buckets.insert(key, reads);
        }
    });
}

impl HiveState {
    /// The keys of hive `mount` (canonical) whose bucket this read finds busy
    /// ([`busy_bucket`]), each with one read fewer left.
    fn take_busy_buckets(&mut self, mount: &str) -> BTreeSet<String> {
        let busy: BTreeSet<String> = self
            .busy_buckets
            .keys()
            .filter(|key| self.hive_of(key).as_deref() == Some(mount))
            .cloned()
            .collect();
        self.busy_buckets.retain(|key, left| {
            if busy.contains(key) {
                *left -= 1;
            }
            *left > 0
        });
        busy
    }
}

/// Key objects of a hive still alive, one line each (for reports).
#[must_use]
pub fn holders(mount: &str) -> Vec<String> {
    let m = canon(mount);
    kernel::with(|k| {
        let mut v: Vec<String> = k
            .hives
            .handles
            .iter()
            .filter_map(|((pid, h), o)| {
                let obj = k.hives.objects.get(o)?;
                (obj.hive == m).then(|| {
                    let deleted = if obj.deleted { " (deleted key)" } else { "" };
                    format!("process {pid} handle {h:#x}: {}{deleted}", obj.name)
                })
            })
            .collect();
        v.extend(
            k.hives
                .objects
                .iter()
                .filter(|(a, o)| {
                    o.hive == m && k.objects.references.get(a).copied().unwrap_or(0) > 0
                })
                .map(|(a, o)| format!("key object {a:#x} ({}) referenced by a driver", o.name)),
        );
        v.extend(
            k.hives
                .link_holds(&m)
                .into_iter()
                .map(|(l, t)| format!("the cached key control block of link {l} references {t}")),
        );
        v.extend(k.hives.deferred.iter().filter_map(|a| {
            let o = k.hives.objects.get(a)?;
            (o.hive == m).then(|| {
                format!(
                    "key object {a:#x} ({}) awaiting deletion on a system worker thread",
                    o.name
                )
            })
        }));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// (callback id, class, CallContext seen in post) in delivery order.
    static SEEN: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());

    unsafe extern "win64" fn recorder(
        ctx: *mut c_void,
        class: *mut c_void,
        info: *mut c_void,
    ) -> NtStatus {
        let (id, class) = (ctx as usize, class as usize);
        // Other tests share the emulated kernel: record this test's process only.
        if io::current_pid() != 4000 {
            return STATUS_SUCCESS;
        }
        let mut seen_cc = 0;
        if class == class::PRE_OPEN_KEY_EX || class == class::PRE_CREATE_KEY_EX {
            // SAFETY: the model passes REG_CREATE_KEY_INFORMATION_V1 for these classes.
            unsafe {
                (*info.cast::<RegCreateKeyInformationV1>()).call_context =
                    (0x100 + id) as *mut c_void;
            };
        }
        if class == class::POST_OPEN_KEY_EX || class == class::POST_CREATE_KEY_EX {
            // SAFETY: the model passes REG_POST_OPERATION_INFORMATION for these classes.
            seen_cc =
                unsafe { (*info.cast::<registry::RegPostOperationInformation>()).call_context }
                    as usize;
        }
        SEEN.lock().unwrap().push((id, class, seen_cc));
        STATUS_SUCCESS
    }

    #[test]
    fn notifications_follow_altitude_order_and_call_contexts_stay_per_callback() {
        let mount = r"\REGISTRY\MACHINE\UNITTEST";
        assert_eq!(load_hive(4, mount, "unit"), STATUS_SUCCESS);
        // Altitudes are exact decimals (`crate::nt::cm::altitude`): these two differ in their 23rd
        // digit, where an f64 sees one number, and "0…670" is the low one again.
        let low = registry::register_emulated(recorder, 1, "385200.12345678901234567").unwrap();
        let high = registry::register_emulated(recorder, 2, "385200.12345678901234568").unwrap();
        assert_eq!(
            registry::register_emulated(recorder, 3, "0385200.123456789012345670"),
            Err(crate::nt::status::STATUS_FLT_INSTANCE_ALTITUDE_COLLISION)
        );
        SEEN.lock().unwrap().clear();
        let h = open_key(4000, &format!(r"{mount}\Key"), 0x2_0019, true).unwrap();
        let seen: Vec<(usize, usize, usize)> = SEEN.lock().unwrap().drain(..).collect();
        assert_eq!(
            seen,
            [
                (2, class::PRE_CREATE_KEY_EX, 0),
                (1, class::PRE_CREATE_KEY_EX, 0),
                (1, class::POST_CREATE_KEY_EX, 0x101),
                (2, class::POST_CREATE_KEY_EX, 0x102),
            ]
        );
        let missing = open_key(4000, &format!(r"{mount}\Nope"), 0x2_0019, false);
        assert_eq!(missing, Err(STATUS_OBJECT_NAME_NOT_FOUND));
        assert_eq!(unload_hive(4, mount), STATUS_CANNOT_DELETE);
        assert_eq!(close_key(4000, h), STATUS_SUCCESS);
        let closes: Vec<usize> = SEEN.lock().unwrap().drain(..).map(|(_, c, _)| c).collect();
        assert!(
            closes.contains(&class::PRE_KEY_HANDLE_CLOSE)
                && closes.contains(&class::POST_KEY_HANDLE_CLOSE)
        );
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
        assert_eq!(close_key(4000, h), STATUS_INVALID_HANDLE);
        kernel::with(|k| {
            k.registry
                .callbacks
                .retain(|c| c.cookie != low && c.cookie != high);
        });
    }

    /// (object, whether a leak line named it) as seen from inside a post-open.
    static DURING_OPEN: Mutex<Option<(usize, bool)>> = Mutex::new(None);

    unsafe extern "win64" fn leak_checker(
        _ctx: *mut c_void,
        class: *mut c_void,
        info: *mut c_void,
    ) -> NtStatus {
        let class = class as usize;
        if io::current_pid() != 4002
            || (class != class::POST_OPEN_KEY_EX && class != class::POST_CREATE_KEY_EX)
        {
            return STATUS_SUCCESS;
        }
        // SAFETY: the model passes REG_POST_OPERATION_INFORMATION for these classes.
        let object = unsafe { (*info.cast::<registry::RegPostOperationInformation>()).object };
        let object = object as usize;
        let named = kernel::leaks()
            .iter()
            .any(|l| l.contains(&format!("{object:#x}")));
        *DURING_OPEN.lock().unwrap() = Some((object, named));
        STATUS_SUCCESS
    }

    /// The parse's reference on a new key object is the open's own until it becomes the
    /// handle (ReactOS `ob/obhandle.c`, ObOpenObjectByName): a leak check that runs while an
    /// open is in progress on another thread must not report it (`td-unload-under-load`
    /// failed on that, about once in 60 runs).
    #[test]
    fn an_open_in_progress_is_not_a_leak() {
        let mount = r"\REGISTRY\MACHINE\UNITINPROGRESS";
        assert_eq!(load_hive(4, mount, "unitinprogress"), STATUS_SUCCESS);
        let cookie = registry::register_emulated(leak_checker, 0, "100.7").unwrap();
        let h = open_key(4002, &format!(r"{mount}\Key"), 0x2_0019, true).unwrap();
        let seen = DURING_OPEN.lock().unwrap().take();
        kernel::with(|k| k.registry.callbacks.retain(|c| c.cookie != cookie));
        let (object, named) = seen.expect("the post-create was delivered");
        assert!(object != 0);
        let referenced = kernel::with(|k| k.objects.references.get(&object).copied());
        assert_eq!(referenced, None, "the reference became the handle");
        assert!(!named, "the open's own reference was reported as a leak");
        assert_eq!(close_key(4002, h), STATUS_SUCCESS);
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
    }

    /// A key object whose deletion is queued for a system worker (deferred mode) still exists:
    /// it pins the hive, so NtQueryOpenSubKeysEx must list it — CmpDeleteKeyObject, which
    /// delists the key body, has not run yet (Windows Research Kernel `cmdelete.c`).
    #[test]
    fn a_key_object_queued_for_deletion_is_listed_while_it_pins_the_hive() {
        let mount = r"\REGISTRY\MACHINE\UNITQUEUED";
        assert_eq!(load_hive(4, mount, "unitqueued"), STATUS_SUCCESS);
        let h = open_key(4001, &format!(r"{mount}\Key"), 0x2_0019, true).unwrap();
        // What close_key does in deferred mode (set_deferred_deletion is global state that
        // other tests running in parallel would see): the handle goes, the deletion is queued.
        kernel::with(|k| {
            let o = k.hives.handles.remove(&(4001, h)).unwrap();
            k.hives.objects.get_mut(&o).unwrap().handles = 0;
            k.hives.deferred.push(o);
        });
        assert_eq!(unload_hive(4, mount), STATUS_CANNOT_DELETE);
        assert_eq!(
            open_subkeys(mount),
            Ok(vec![(4001, format!(r"{mount}\Key"))]),
            "the hive cannot unload, so the listing must name what holds it"
        );
        assert!(holders(mount).iter().any(|l| l.contains("deletion")));
        assert!(run_deferred_deletions() >= 1);
        assert_eq!(open_subkeys(mount), Ok(vec![]));
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
    }

    /// Only OBJ_INHERIT handles go to a child, at their values (WRK `ob/obinit.c`
    /// ObDupHandleProcedure; fidelity audit 19a, F5).
    #[test]
    fn a_child_inherits_only_obj_inherit_handles_at_their_values() {
        let mount = r"\REGISTRY\MACHINE\UNITINHERIT";
        assert_eq!(load_hive(4, mount, "unitinherit"), STATUS_SUCCESS);
        let key = format!(r"{mount}\Key");
        let inheritable = open_key_inheritable(4010, &key, 0x2_0019, true).unwrap();
        let plain = open_key(4010, &key, 0x2_0019, false).unwrap();
        let made = open_key(4010, &key, 0x2_0019, false).unwrap();
        assert_eq!(set_handle_inherit(4010, made, true), STATUS_SUCCESS);
        assert!(is_inheritable(4010, inheritable) && !is_inheritable(4010, plain));
        assert_eq!(inherit_handles(4010, 4011), 2);
        let mut want = vec![inheritable, made];
        want.sort_unstable();
        assert_eq!(kernel::with(|k| k.hives.handles_of(4011)), want);
        assert!(is_inheritable(4011, made));
        for (p, h) in [(4010, inheritable), (4010, plain), (4010, made)] {
            assert_eq!(close_key(p, h), STATUS_SUCCESS);
        }
        assert_eq!(unload_hive(4, mount), STATUS_CANNOT_DELETE);
        for h in want {
            assert_eq!(close_key(4011, h), STATUS_SUCCESS);
        }
        // Not a hive's root (audit 19a, F6): INVALID_PARAMETER, the hive stays.
        assert_eq!(unload_hive(4, &key), STATUS_INVALID_PARAMETER);
        assert_eq!(open_subkeys(&key), Err(STATUS_INVALID_PARAMETER));
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
        // Again: no key there, and the parse may not create one in the master hive.
        assert_eq!(unload_hive(4, mount), STATUS_INVALID_PARAMETER);
    }

    /// `ensure_key` makes a key of the value store a key of its mounted hive, following a
    /// registry link on its path and keeping the spelling it was given.
    #[test]
    fn ensure_key_follows_a_link_and_keeps_the_spelling() {
        let mount = r"\REGISTRY\MACHINE\UNITENSURE";
        assert_eq!(load_hive(4, mount, "unitensure"), STATUS_SUCCESS);
        let set = open_key(4005, &format!(r"{mount}\Set001"), 0x2_0019, true).unwrap();
        let _ = close_key(4005, set);
        create_link(&format!(r"{mount}\CurrentSet"), &format!(r"{mount}\Set001"));
        assert!(ensure_key(&format!(r"{mount}\CurrentSet\Control\hivelist")));
        let h = open_key(
            4005,
            &format!(r"{mount}\SET001\CONTROL\HIVELIST"),
            0x2_0019,
            false,
        )
        .unwrap();
        // The keys it made are spelled as given, below the link's target.
        assert_eq!(
            query_key_name(4005, h),
            Ok(format!(r"{mount}\Set001\Control\hivelist"))
        );
        let _ = close_key(4005, h);
        assert!(!ensure_key(r"\REGISTRY\MACHINE\UNITNOHIVE\Key"));
        assert!(kernel::with(|k| !k
            .hives
            .keys
            .contains(r"\REGISTRY\MACHINE\UNITNOHIVE\KEY")));
    }

    /// NtRenameKey (WRK `cmapi.c` CmRenameKey; Learn CmCallbackGetKeyObjectIDEx Remarks):
    /// the key and its subkeys take the new name, their objects report it (to
    /// `CmCallbackGetKeyObjectIDEx` and to `NtQueryKey`), ids stay; a taken name and a hive
    /// root are refused.
    #[test]
    fn a_rename_moves_the_subtree_and_keeps_its_ids() {
        let mount = r"\REGISTRY\MACHINE\UNITRENAME";
        assert_eq!(load_hive(4, mount, "unitrename"), STATUS_SUCCESS);
        let key = open_key(4004, &format!(r"{mount}\Old"), 0x2_0019, true).unwrap();
        let sub = open_key(4004, &format!(r"{mount}\Old\Sub"), 0x2_0019, true).unwrap();
        let taken = open_key(4004, &format!(r"{mount}\Taken"), 0x2_0019, true).unwrap();
        let root = open_key(4004, mount, 0x2_0019, false).unwrap();
        let ident = |h: u64| {
            kernel::with(|k| {
                let o = k.hives.handles[&(4004, h)];
                k.hives.identify(o).map(|(id, name, _)| (id, name))
            })
            .unwrap()
        };
        let (key_id, sub_id) = (ident(key).0, ident(sub).0);
        assert_eq!(rename_key(4004, key, "Taken"), STATUS_CANNOT_DELETE);
        assert_eq!(rename_key(4004, key, "OLD"), STATUS_CANNOT_DELETE);
        assert_eq!(
            rename_key(4004, key, r"A\B"),
            crate::nt::status::STATUS_INVALID_PARAMETER
        );
        assert_eq!(rename_key(4004, root, "Elsewhere"), STATUS_ACCESS_DENIED);
        assert_eq!(rename_key(4004, 0xBAD0, "X"), STATUS_INVALID_HANDLE);
        assert_eq!(rename_key(4004, key, "New"), STATUS_SUCCESS);
        assert_eq!(ident(key), (key_id, format!(r"{mount}\New")));
        assert_eq!(ident(sub), (sub_id, format!(r"{mount}\New\Sub")));
        // NtQueryKey(KeyNameInformation) builds the name from the KCB chain: the new one
        // (ReactOS cmapi.c CmpQueryNameInformation).
        assert_eq!(query_key_name(4004, sub), Ok(format!(r"{mount}\New\Sub")));
        assert_eq!(query_key_name(4004, 0xBAD0), Err(STATUS_INVALID_HANDLE));
        let reopened = open_key(4004, &format!(r"{mount}\new\sub"), 0x2_0019, false).unwrap();
        assert_eq!(ident(reopened), (sub_id, format!(r"{mount}\New\Sub")));
        assert_eq!(
            open_key(4004, &format!(r"{mount}\Old"), 0x2_0019, false),
            Err(STATUS_OBJECT_NAME_NOT_FOUND)
        );
        for h in [key, sub, taken, root, reopened] {
            assert_eq!(close_key(4004, h), STATUS_SUCCESS);
        }
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
    }

    /// A forced unload (NtUnloadKey2, REG_FORCE_UNLOAD) of a hive held at two levels: the
    /// held objects keep their ids apart from the hive loaded again at the mount, hold
    /// nothing there, and every count and id goes with the last of them.
    #[test]
    fn a_forced_unload_leaves_its_keys_open_on_deleted_blocks() {
        let mount = r"\REGISTRY\MACHINE\UNITFORCE";
        let up = mount.to_ascii_uppercase();
        assert_eq!(load_hive(4, mount, "unitforce"), STATUS_SUCCESS);
        let open =
            |name: &str| open_key(4005, &format!(r"{mount}\{name}"), 0x2_0019, true).unwrap();
        let id = |h: u64| {
            kernel::with(|k| {
                let o = k.hives.handles[&(4005, h)];
                k.hives.identify(o).unwrap().0
            })
        };
        let a = open("A");
        let b = open(r"A\B");
        let deep = open(r"A\B\C");
        assert_eq!(close_key(4005, b), STATUS_SUCCESS);
        let (a_id, deep_id) = (id(a), id(deep));
        assert_eq!(unload_hive(4, mount), STATUS_CANNOT_DELETE);
        assert_eq!(
            unload_key2(4, mount, 2),
            STATUS_CANNOT_DELETE,
            "other flags are 0"
        );
        assert_eq!(unload_key2(4, mount, REG_FORCE_UNLOAD), STATUS_SUCCESS);
        assert!(kernel::with(|k| !k.hives.hives.contains_key(&up)));
        assert_eq!((id(a), id(deep)), (a_id, deep_id));
        assert_eq!(query_key_name(4005, deep), Err(STATUS_KEY_DELETED));
        assert_eq!(load_hive(4, mount, "unitforce"), STATUS_SUCCESS);
        let again = open("A");
        assert_ne!(id(again), a_id);
        assert_eq!(open_subkeys(mount).unwrap().len(), 1);
        assert_eq!(close_key(4005, again), STATUS_SUCCESS);
        assert_eq!(
            unload_hive(4, mount),
            STATUS_SUCCESS,
            "the stale keys hold nothing"
        );
        for h in [a, deep] {
            assert_eq!(close_key(4005, h), STATUS_SUCCESS);
        }
        kernel::with(|k| {
            let h = &k.hives;
            assert!(!h.deleted_keys.contains_key(&a_id) && !h.deleted_keys.contains_key(&deep_id));
            assert!(!h.live_below.contains_key(&up));
            assert!(!h.objects.values().any(|o| o.hive.starts_with(&up)));
        });
    }

    /// NtDeleteKey of nested keys (WRK `cmapi2.c` CmDeleteKey, `cmsubs.c`): a deleted key
    /// held by its objects keeps its id apart from the key re-created with its name; a deleted
    /// parent of a deleted key stays referenced by it; a rename of a live parent carries the
    /// deleted child's reference along; every count and id goes with the last object.
    #[test]
    fn deleted_keys_keep_their_ids_apart_until_their_last_object() {
        let mount = r"\REGISTRY\MACHINE\UNITDELETE";
        let up = mount.to_ascii_uppercase();
        assert_eq!(load_hive(4, mount, "unitdelete"), STATUS_SUCCESS);
        let open =
            |name: &str| open_key(4004, &format!(r"{mount}\{name}"), 0x2_0019, true).unwrap();
        let id = |h: u64| {
            kernel::with(|k| {
                let o = k.hives.handles[&(4004, h)];
                k.hives.identify(o).unwrap().0
            })
        };
        let (old, sub) = (open("Old"), open(r"Old\Sub"));
        let (old_id, sub_id) = (id(old), id(sub));
        assert_eq!(delete_key(4004, old), STATUS_CANNOT_DELETE);
        assert_eq!(delete_key(4004, sub), STATUS_SUCCESS);
        assert_eq!(delete_key(4004, old), STATUS_SUCCESS);
        assert_eq!(delete_key(4004, old), STATUS_SUCCESS);
        let (recreated_old, recreated_sub) = (open("Old"), open(r"Old\Sub"));
        let (recreated_old_id, recreated_sub_id) = (id(recreated_old), id(recreated_sub));
        for new in [recreated_old_id, recreated_sub_id] {
            assert!(new != old_id && new != sub_id);
        }
        assert_eq!((id(old), id(sub)), (old_id, sub_id));
        assert_eq!(query_key_name(4004, sub), Err(STATUS_KEY_DELETED));
        assert_eq!(open_subkeys(mount).unwrap().len(), 2);
        let held_here = |i: usize| {
            kernel::with(|k| {
                k.hives
                    .key_ids
                    .iter()
                    .any(|(name, &id)| name.starts_with(&up) && id == i)
            })
        };
        assert!(held_here(recreated_old_id) && held_here(recreated_sub_id));
        // The re-created keys go first: their ids are freed, the deleted ones are not.
        for h in [recreated_sub, recreated_old] {
            assert_eq!(close_key(4004, h), STATUS_SUCCESS);
        }
        kernel::with(|k| {
            let h = &k.hives;

            assert_eq!(h.deleted_keys[&old_id].refs, 2);
            assert_eq!(
                h.deleted_keys[&sub_id].parent,
                DeletedParent::Deleted(old_id)
            );
            assert_eq!(h.live_below.get(&up), Some(&1));
        });
        // Only this hive's names: tests share the kernel and its free ids, and another
        // test's key may be given a freed id meanwhile (seen once in 25 runs).
        assert!(!held_here(recreated_old_id) && !held_here(recreated_sub_id));
        assert_eq!(unload_hive(4, mount), STATUS_CANNOT_DELETE);
        assert_eq!(close_key(4004, old), STATUS_SUCCESS);
        assert_eq!(close_key(4004, sub), STATUS_SUCCESS);
        kernel::with(|k| {
            let h = &k.hives;
            assert!(!h.deleted_keys.contains_key(&old_id) && !h.deleted_keys.contains_key(&sub_id));
            assert!(!h.live_below.contains_key(&up));
        });
        // A deleted child of a key renamed afterwards: its reference moves with the name.
        let (p, c) = (open("P"), open(r"P\C"));
        assert_eq!(delete_key(4004, c), STATUS_SUCCESS);
        assert_eq!(rename_key(4004, p, "Q"), STATUS_SUCCESS);
        assert_eq!(close_key(4004, p), STATUS_SUCCESS);
        let q = format!(r"{up}\Q");
        kernel::with(|k| assert_eq!(k.hives.live_below.get(&q), Some(&1)));
        assert_eq!(close_key(4004, c), STATUS_SUCCESS);
        kernel::with(|k| {
            assert!(!k.hives.live_below.contains_key(&q) && !k.hives.key_ids.contains_key(&q));
        });
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
    }

    unsafe extern "win64" fn fail_post_load(
        _ctx: *mut c_void,
        class: *mut c_void,
        info: *mut c_void,
    ) -> NtStatus {
        if class as usize != class::POST_LOAD_KEY || io::current_pid() != 4002 {
            return STATUS_SUCCESS;
        }
        // SAFETY: the model passes REG_POST_OPERATION_INFORMATION for this class.
        unsafe {
            (*info.cast::<registry::RegPostOperationInformation>()).return_status =
                crate::nt::status::STATUS_ACCESS_DENIED;
        };
        registry::STATUS_CALLBACK_BYPASS
    }

    /// regfltr `post.c` / REG_POST_OPERATION_INFORMATION.ReturnStatus: a post-callback's
    /// substituted status is what the caller of the load gets.
    #[test]
    fn a_post_load_callback_changes_what_the_loader_gets() {
        let cookie = registry::register_emulated(fail_post_load, 0, "100.7").unwrap();
        let mount = r"\REGISTRY\MACHINE\UNITPOSTLOAD";
        let loaded = load_hive(4002, mount, "unitpostload");
        let app = load_app_key(4002, "unitpostload-app");
        kernel::with(|k| k.registry.callbacks.retain(|c| c.cookie != cookie));
        assert_eq!(loaded, crate::nt::status::STATUS_ACCESS_DENIED);
        assert_eq!(app, Err(crate::nt::status::STATUS_ACCESS_DENIED));
        assert!(kernel::with(|k| k.hives.handles_of(4002).is_empty()));
        assert_eq!(unload_hive(4, mount), STATUS_SUCCESS);
    }

    /// The app hive's root key object, made inside the load, goes through the same release
    /// path as any key object: a deletion queued for the system worker (deferred mode) still
    /// unloads the app hive when it was its last key (RegLoadAppKey: "automatically unloaded
    /// when all handles to the keys inside the hive are closed").
    #[test]
    fn an_app_hive_unloads_when_its_last_key_is_deleted_on_the_worker() {
        let (root, mount) = load_app_key(4003, "unit-app-deferred").unwrap();
        let m = canon(&mount);
        let sub = open_key_at(4003, Some(root), "Sub", 0x2_0019, true).unwrap();
        assert_eq!(close_key(4003, sub), STATUS_SUCCESS);
        assert!(
            kernel::with(|k| k.hives.hives.contains_key(&m)),
            "the root key holds it"
        );
        // What close_key does in deferred mode (the mode itself is global state).
        kernel::with(|k| {
            let o = k.hives.handles.remove(&(4003, root)).unwrap();
            k.hives.objects.get_mut(&o).unwrap().handles = 0;
            k.hives.deferred.push(o);
        });
        assert!(
            kernel::with(|k| k.hives.hives.contains_key(&m)),
            "queued: still there"
        );
        assert!(run_deferred_deletions() >= 1);
        assert!(
            !kernel::with(|k| k.hives.hives.contains_key(&m)),
            "unloaded by itself"
        );
    }
}
