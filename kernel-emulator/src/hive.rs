//! Registry model: hives mounted at paths under `\REGISTRY`, the keys in them, key objects
//! (one per successful open or create, as CM_KEY_BODY is), per-process handle tables
//! (duplicated and inherited handles share the object and produce no notification), the
//! notifications each operation delivers through [`crate::registry`], and hive unload, which
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
//!   inside the hive are closed". The model delivers RegNtPreLoadKey/RegNtPostLoadKey (with
//!   `RootHandle` and `Flags` = REG_APP_HIVE) and no open notification for the root key, and
//!   the automatic unload delivers no RegNtPreUnLoadKey: no thread asks for it (the unload
//!   notification is documented as sent when "a thread attempts to unload a key"). Both
//!   absences are *inferences*.
//! - [`unload_key_ex`] is `NtUnloadKeyEx(TargetKey, Event)`. No public source specifies it
//!   (ReactOS returns STATUS_NOT_IMPLEMENTED); REG_UNLOAD_KEY_INFORMATION carries `UserEvent`
//!   and REG_LOAD_KEY_INFORMATION documents that event as "signaled when the hive is
//!   unloaded". Modelled (*inference*): with keys still open the call returns STATUS_PENDING
//!   (its post-notification too), and once the hive's last key object is gone a system
//!   worker thread (System process) unloads it and signals the event, with no further
//!   notification; a free hive unloads at once (STATUS_SUCCESS, event signalled).
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

use crate::io;
use crate::kernel;
use crate::layout::OwnedUnicode;
use crate::object::{KERNEL_HANDLE_BIT, OBJ_KERNEL_HANDLE};
use crate::registry::{
    self, PreFields, RegCreateKeyInformationV1, RegKeyHandleCloseInformation,
    RegLoadKeyInformation, RegUnloadKeyInformation, class,
};
use crate::status::{
    NtStatus, STATUS_INVALID_HANDLE, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_PENDING, STATUS_SUCCESS,
};

/// What unloading a hive with open keys returns.
pub use crate::status::STATUS_CANNOT_DELETE;
/// REG_CREATED_NEW_KEY.
pub const REG_CREATED_NEW_KEY: u32 = 1;
/// REG_OPENED_EXISTING_KEY.
pub const REG_OPENED_EXISTING_KEY: u32 = 2;

/// One key object.
#[derive(Debug, Clone)]
pub struct KeyObject {
    /// Full key name as opened (`\REGISTRY\MACHINE\SOFTWARE\X`).
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

/// Registry state.
#[derive(Debug, Default)]
pub struct HiveState {
    /// Mounted hives by canonical mount point.
    pub hives: BTreeMap<String, Hive>,
    /// Existing keys (canonical names).
    pub keys: BTreeSet<String>,
    key_ids: HashMap<String, usize>,
    /// Live key objects by address.
    pub objects: HashMap<usize, KeyObject>,
    /// Handles: (pid, handle) -> key object.
    pub handles: BTreeMap<(u32, u64), usize>,
    next_handle: u64,
}

fn canon(path: &str) -> String {
    path.trim_end_matches('\\').to_ascii_uppercase()
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

    /// The loaded hive holding `key` (longest mount-point prefix).
    fn hive_of(&self, key: &str) -> Option<String> {
        self.hives
            .keys()
            .filter(|m| key == m.as_str() || key.starts_with(&format!("{m}\\")))
            .max_by_key(|m| m.len())
            .cloned()
            .or_else(|| MASTER_KEYS.contains(&key).then(|| MASTER_HIVE.to_string()))
    }

    fn key_id(&mut self, key: &str) -> usize {
        let n = self.key_ids.len();
        *self
            .key_ids
            .entry(key.to_string())
            .or_insert(0x4B00_0000 + n * 0x40)
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
    const REGION: usize = 16 << 20;
    static NEXT: std::sync::Mutex<(usize, usize)> = std::sync::Mutex::new((0, 0));
    let mut g = NEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if g.0 == g.1 {
        // SAFETY: a fresh anonymous mapping.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(m != libc::MAP_FAILED, "key object mmap failed");
        *g = (m as usize, m as usize + REGION);
    }
    let page = g.0;
    g.0 += 4096;
    page
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
    load(pid, None, mount, file, false).0
}

/// Mounts a hive the way `RegLoadKey(hKey, lpSubKey, lpFile)` does: `NtLoadKey` with
/// `RootDirectory` = `root` (a key handle of `pid`, e.g. the `HKEY_USERS` handle opened on
/// `\REGISTRY\USER`) and the relative `key_name` (`S-1-5-21-…`). RegNtPreLoadKey carries
/// `Object` = the root's key object and `KeyName` = `key_name` as given; the hive is mounted
/// at the root's name + `\` + `key_name`. A handle `pid` does not hold is
/// STATUS_INVALID_HANDLE with no notification (the handle is resolved before the callbacks).
#[must_use = "the status says whether the hive is mounted"]
pub fn load_key(pid: u32, root: u64, key_name: &str, file: &str) -> NtStatus {
    load(pid, Some(root), key_name, file, false).0
}

/// Loads an application hive (`RegLoadAppKey(file, &hkey, …)`): mounted at
/// `\REGISTRY\A\{GUID}` (the same mount if `file` is already loaded as an app hive),
/// RegNtPreLoadKey/RegNtPostLoadKey with `RootHandle` set and `Flags` = [`REG_APP_HIVE`], and
/// a handle to the hive's root key in `pid`'s table, returned with the mount point. No open
/// notification announces that root key object (inference, see the module doc). The hive
/// unloads by itself, without RegNtPreUnLoadKey, when its last key object is gone.
///
/// # Errors
/// The status of a vetoing pre-callback.
pub fn load_app_key(pid: u32, file: &str) -> Result<(u64, String), NtStatus> {
    match load(pid, None, "", file, true) {
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
    let table = crate::process::handle_table_of(pid, root);
    kernel::with(|k| {
        let object = *k.hives.handles.get(&(table, root))?;
        k.hives
            .objects
            .get(&object)
            .map(|o| (object, o.name.clone()))
    })
}

/// The next application-hive mount point: `\REGISTRY\A\{GUID}` with a GUID that only grows.
fn next_app_mount() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(r"{APP_HIVE_ROOT}\{{6B656D75-0000-4000-8000-{n:012X}}}")
}

/// NtLoadKey / NtLoadKeyEx: the notifications and the mount; for an app hive also the root
/// handle and the mount point.
fn load(
    pid: u32,
    root: Option<u64>,
    key_name: &str,
    file: &str,
    app: bool,
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
    let key_name = OwnedUnicode::new(if root.is_some() { key_name } else { &mount });
    let source = OwnedUnicode::new(file);
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
            return (pre.status, None);
        }
        let table = crate::process::address_space_pid();
        let status = kernel::with(|k| {
            let m = canon(&mount);
            let already_app = app && k.hives.hives.get(&m).is_some_and(|h| h.app);
            if !already_app {
                if k.hives.hives.contains_key(&m) || k.hives.keys.contains(&m) {
                    return STATUS_OBJECT_NAME_COLLISION;
                }
                k.hives.hives.insert(
                    m.clone(),
                    Hive {
                        mount: mount.clone(),
                        file: file.to_string(),
                        app,
                        pending_unload: None,
                    },
                );
                k.hives.keys.insert(m.clone());
            }
            if app {
                // The root key object and its handle, created inside the load.
                let object = alloc_object_page();
                let key_id = k.hives.key_id(&m);
                k.hives.objects.insert(
                    object,
                    KeyObject {
                        name: mount.clone(),
                        hive: m,
                        handles: 1,
                        destroyed: false,
                        contexts: BTreeMap::new(),
                        key_id,
                    },
                );
                k.hives.next_handle += 4;
                root_handle = 0x1000 + k.hives.next_handle;
                k.hives.handles.insert((table, root_handle), object);
            }
            STATUS_SUCCESS
        });
        registry::notify_post(class::POST_LOAD_KEY, 0, status, at, &pre);
        (status, app.then(|| (root_handle, mount.clone())))
    })
}

/// Opens (or creates) a key for `pid`: RegNtPreOpenKeyEx/RegNtPreCreateKeyEx with the _V1
/// structure, the operation, then the post-notification whose Object is valid only on
/// STATUS_SUCCESS. Returns the handle.
///
/// # Errors
/// The failing status (from a pre-callback, or STATUS_OBJECT_NAME_NOT_FOUND).
pub fn open_key(pid: u32, path: &str, desired: u32, create: bool) -> Result<u64, NtStatus> {
    open(pid, path, desired, create, false, None)
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
    open(pid, path, desired, create, true, None)
}

/// An open or create that a capture recorded failing (or reparsing) with `status`: the
/// pre-notification, then the post-notification carrying `status`; no key, key object or
/// handle is created. Used by the Process Monitor replay ([`crate::replay`]), where every
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
    open(pid, path, desired, create, false, Some(status)).map_or_else(|s| s, |_| STATUS_SUCCESS)
}

#[allow(clippy::too_many_lines)] // one open: notifications, lookup, object and handle
fn open(
    pid: u32,
    path: &str,
    desired: u32,
    create: bool,
    kernel_handle: bool,
    fail: Option<NtStatus>,
) -> Result<u64, NtStatus> {
    let name = OwnedUnicode::new(path);
    let mut disposition = 0u32;
    let mut result_object: *mut c_void = std::ptr::null_mut();
    let mut info = RegCreateKeyInformationV1 {
        complete_name: name.as_ptr(),
        root_object: std::ptr::null_mut(),
        object_type: std::ptr::null_mut(),
        options: 0,
        pad0: 0,
        class: std::ptr::null_mut(),
        security_descriptor: std::ptr::null_mut(),
        security_quality_of_service: std::ptr::null_mut(),
        desired_access: desired,
        granted_access: 0,
        disposition: &raw mut disposition,
        result_object: &raw mut result_object,
        call_context: std::ptr::null_mut(),
        root_object_context: std::ptr::null_mut(),
        transaction: std::ptr::null_mut(),
        version: 1,
        remaining_name: name.as_ptr(),
        wow64_flags: 0,
        // OBJ_CASE_INSENSITIVE (| OBJ_KERNEL_HANDLE); UserMode, or KernelMode for a Zw call.
        attributes: 0x40 | if kernel_handle { OBJ_KERNEL_HANDLE } else { 0 },
        check_access_mode: i8::from(!kernel_handle),
        pad1: [0; 7],
    };
    let at = (&raw mut info) as usize;
    let (pre_class, post_class) = if create {
        (class::PRE_CREATE_KEY_EX, class::POST_CREATE_KEY_EX)
    } else {
        (class::PRE_OPEN_KEY_EX, class::POST_OPEN_KEY_EX)
    };
    io::with_pid(pid, || {
        let fields = PreFields {
            call_context: 0x50,
            object_context: Some(0x58),
            object: 0,
        };
        let pre = registry::notify_pre(pre_class, at, fields);
        if !pre.proceeds() {
            return Err(pre.status);
        }
        let key = canon(path);
        let outcome = kernel::with(|k| {
            if let Some(s) = fail {
                return Err(s);
            }
            let h = &mut k.hives;
            let hive = h.hive_of(&key).ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            let exists = h.keys.contains(&key) || MASTER_KEYS.contains(&key.as_str());
            if !exists {
                let parent = key.rsplit_once('\\').map_or("", |(p, _)| p);
                if !create || !h.keys.contains(parent) {
                    return Err(STATUS_OBJECT_NAME_NOT_FOUND);
                }
                h.keys.insert(key.clone());
            }
            let key_id = h.key_id(&key);
            Ok((hive, exists, key_id))
        });
        let status = match outcome {
            Err(s) => {
                registry::notify_post(post_class, 0, s, at, &pre);
                return Err(s);
            }
            Ok((hive, exists, key_id)) => {
                let object = alloc_object_page();
                disposition = if exists {
                    REG_OPENED_EXISTING_KEY
                } else {
                    REG_CREATED_NEW_KEY
                };
                result_object = object as *mut c_void;
                let table = if kernel_handle {
                    4
                } else {
                    crate::process::address_space_pid()
                };
                let handle = kernel::with(|k| {
                    let h = &mut k.hives;
                    h.objects.insert(
                        object,
                        KeyObject {
                            name: path.to_string(),
                            hive,
                            handles: 1,
                            destroyed: false,
                            contexts: BTreeMap::new(),
                            key_id,
                        },
                    );
                    h.next_handle += 4;
                    let mut handle = 0x1000 + h.next_handle;
                    if kernel_handle {
                        handle |= KERNEL_HANDLE_BIT;
                    }
                    h.handles.insert((table, handle), object);
                    handle
                });
                (object, handle)
            }
        };
        registry::notify_post(post_class, status.0, STATUS_SUCCESS, at, &pre);
        Ok(status.1)
    })
}

/// Duplicates (or inherits) a handle into another process: same key object, no notification.
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

/// Closes a key handle. When the object's last handle goes: RegNtPreKeyHandleClose, then (if
/// nothing references the object any more) RegNtCallbackObjectContextCleanup for each context
/// and the object's deletion, then RegNtPostKeyHandleClose. Closes cannot be blocked.
#[must_use = "STATUS_INVALID_HANDLE for an unknown handle"]
pub fn close_key(pid: u32, handle: u64) -> NtStatus {
    // A kernel handle is in the System process's table, whichever thread closes it; the
    // close then runs attached to the System process (ReactOS ObpCloseHandle).
    let table = crate::process::handle_table_of(pid, handle);
    if handle & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT && table == 4 {
        return crate::process::attached(4, || close_in(pid, 4, handle));
    }
    close_in(pid, table, handle)
}

/// Closes `handle` of `table` on a thread of `pid`.
fn close_in(pid: u32, table: u32, handle: u64) -> NtStatus {
    let object = kernel::with(|k| {
        let h = &mut k.hives;
        let object = h.handles.remove(&(table, handle))?;
        let o = h.objects.get_mut(&object)?;
        o.handles -= 1;
        Some((object, o.handles))
    });
    let Some((object, remaining)) = object else {
        return STATUS_INVALID_HANDLE;
    };
    if remaining > 0 {
        return STATUS_SUCCESS;
    }
    io::with_pid(pid, || {
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
        let pre = registry::notify_pre(class::PRE_KEY_HANDLE_CLOSE, at, fields);
        let referenced =
            kernel::with(|k| k.objects.references.get(&object).copied().unwrap_or(0) > 0);
        if !referenced {
            destroy(object);
        }
        // Closes cannot be blocked: post goes to every callback that saw the pre.
        let all = registry::PreOutcome {
            status: STATUS_SUCCESS,
            call_contexts: pre.call_contexts,
        };
        registry::notify_post(
            class::POST_KEY_HANDLE_CLOSE,
            object,
            STATUS_SUCCESS,
            at,
            &all,
        );
        if !referenced {
            release_object(object);
        }
    });
    STATUS_SUCCESS
}

/// Removes a destroyed key object and frees its page; if it was the last key object of an
/// app hive, or of a hive with a deferred unload, that hive unloads now.
fn release_object(object: usize) {
    let hive = kernel::with(|k| k.hives.objects.remove(&object).map(|o| o.hive));
    free_object_page(object);
    if let Some(hive) = hive {
        hive_object_gone(&hive);
    }
}

/// After a key object of `hive` is gone: an app hive with no key object left unloads by
/// itself, silently (RegLoadAppKey: "automatically unloaded when all handles to the keys
/// inside the hive are closed"); a hive with a deferred unload is unloaded by a system worker
/// thread, which signals the unload event (inference, see the module doc).
fn hive_object_gone(hive: &str) {
    let action = kernel::with(|k| {
        let h = &mut k.hives;
        let held = h.objects.values().any(|o| o.hive == hive);
        let entry = h.hives.get(hive)?;
        if held || !(entry.app || entry.pending_unload.is_some()) {
            return None;
        }
        Some(entry.pending_unload.clone())
    });
    match action {
        None => {}
        Some(None) => kernel::with(|k| remove_hive(&mut k.hives, hive)),
        Some(Some(event)) => {
            let hive = hive.to_string();
            // The worker is detached: a scenario waits on the event, as a caller of
            // NtUnloadKeyEx waits on its event.
            std::thread::spawn(move || {
                crate::cpu::enter_thread(DEFERRED_UNLOAD_THREAD);
                io::with_pid(4, || kernel::with(|k| remove_hive(&mut k.hives, &hive)));
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

/// Removes a mounted hive and its keys.
fn remove_hive(h: &mut HiveState, m: &str) {
    h.hives.remove(m);
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
/// with no handle left is deleted now (its contexts cleaned up).
pub fn on_last_reference(object: usize) {
    let closed = kernel::with(|k| k.hives.objects.get(&object).is_some_and(|o| o.handles == 0));
    if closed {
        destroy(object);
        release_object(object);
    }
}

/// Unloads a hive (RegUnLoadKey): RegNtPreUnLoadKey with the hive's root key object, then
/// STATUS_CANNOT_DELETE if any other key object of the hive exists or any is referenced,
/// else the hive and its keys are gone; RegNtPostUnLoadKey.
#[must_use = "STATUS_CANNOT_DELETE while the hive is held"]
pub fn unload_hive(pid: u32, mount: &str) -> NtStatus {
    unload(pid, mount, None)
}

/// Unloads a hive with `NtUnloadKeyEx(TargetKey, Event)`: RegNtPreUnLoadKey with `UserEvent`
/// = the event; a hive nothing holds unloads at once (STATUS_SUCCESS, event signalled on the
/// calling thread); a held one answers STATUS_PENDING (also in RegNtPostUnLoadKey) and is
/// unloaded later, when its last key object is gone, by a system worker thread (System
/// process, processor [`DEFERRED_UNLOAD_THREAD`]) with no further notification; the event
/// then says so. Modelled from the documented `UserEvent` fields; the mechanics are an
/// inference (no public source describes NtUnloadKeyEx).
#[must_use = "STATUS_PENDING: wait on the event"]
pub fn unload_key_ex(pid: u32, mount: &str) -> (NtStatus, UnloadEvent) {
    let event = UnloadEvent::new();
    let status = unload(pid, mount, Some(&event));
    if status == STATUS_SUCCESS {
        event.signal(UnloadCompletion {
            pid,
            thread: crate::cpu::processor_number(),
        });
    }
    (status, event)
}

fn unload(pid: u32, mount: &str, event: Option<&UnloadEvent>) -> NtStatus {
    let m = canon(mount);
    if !kernel::with(|k| k.hives.hives.contains_key(&m)) {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    }
    let root = alloc_object_page();
    kernel::with(|k| {
        let key_id = k.hives.key_id(&m);
        k.hives.objects.insert(
            root,
            KeyObject {
                name: mount.to_string(),
                hive: m.clone(),
                handles: 0,
                destroyed: false,
                contexts: BTreeMap::new(),
                key_id,
            },
        );
    });
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
            return pre.status;
        }
        let status = kernel::with(|k| {
            let pinned = k.hives.objects.iter().any(|(a, o)| {
                o.hive == m && (*a != root || k.objects.references.get(a).copied().unwrap_or(0) > 0)
            });
            if pinned {
                if let (Some(e), Some(h)) = (event, k.hives.hives.get_mut(&m)) {
                    h.pending_unload = Some(e.clone());
                    return STATUS_PENDING;
                }
                return STATUS_CANNOT_DELETE;
            }
            remove_hive(&mut k.hives, &m);
            STATUS_SUCCESS
        });
        registry::notify_post(class::POST_UNLOAD_KEY, root, status, at, &pre);
        status
    });
    destroy(root);
    release_object(root);
    status
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
                (obj.hive == m).then(|| format!("process {pid} handle {h:#x}: {}", obj.name))
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
        let low = registry::register_emulated(recorder, 1, "100.5").unwrap();
        let high = registry::register_emulated(recorder, 2, "900000").unwrap();
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
}
