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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::c_void;

use crate::io;
use crate::kernel;
use crate::layout::OwnedUnicode;
use crate::registry::{
    self, PreFields, RegCreateKeyInformationV1, RegKeyHandleCloseInformation,
    RegLoadKeyInformation, RegUnloadKeyInformation, class,
};
use crate::status::{
    NtStatus, STATUS_INVALID_HANDLE, STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND,
    STATUS_SUCCESS,
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
    /// The process that opened it (`CM_KEY_BODY.ProcessID`, set to `PsGetCurrentProcessId`
    /// when the key body is created: ReactOS `CmpCreateKeyBody`/`CmpDoCreateChild`, Windows
    /// Research Kernel `CmpDoOpen`). What `NtQueryOpenSubKeysEx` reports as its pid.
    pub opener: u32,
}

/// One mounted hive.
#[derive(Debug, Clone)]
pub struct Hive {
    /// Mount point as given.
    pub mount: String,
    /// Backing file.
    pub file: String,
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

/// Mounts a hive (RegLoadKey): RegNtPreLoadKey / RegNtPostLoadKey.
#[must_use = "the status says whether the hive is mounted"]
pub fn load_hive(pid: u32, mount: &str, file: &str) -> NtStatus {
    let key_name = OwnedUnicode::new(mount);
    let source = OwnedUnicode::new(file);
    let mut info = RegLoadKeyInformation {
        object: std::ptr::null_mut(),
        key_name: key_name.as_ptr(),
        source_file: source.as_ptr(),
        flags: 0,
        pad0: 0,
        trust_class_object: std::ptr::null_mut(),
        user_event: std::ptr::null_mut(),
        desired_access: 0,
        pad1: 0,
        root_handle: std::ptr::null_mut(),
        call_context: std::ptr::null_mut(),
        object_context: std::ptr::null_mut(),
        reserved: std::ptr::null_mut(),
    };
    let at = (&raw mut info) as usize;
    io::with_pid(pid, || {
        let fields = PreFields {
            call_context: 0x40,
            object_context: Some(0x48),
            object: 0,
        };
        let pre = registry::notify_pre(class::PRE_LOAD_KEY, at, fields);
        if !pre.proceeds() {
            return pre.status;
        }
        let status = kernel::with(|k| {
            let m = canon(mount);
            if k.hives.hives.contains_key(&m) || k.hives.keys.contains(&m) {
                return STATUS_OBJECT_NAME_COLLISION;
            }
            k.hives.hives.insert(
                m.clone(),
                Hive {
                    mount: mount.to_string(),
                    file: file.to_string(),
                },
            );
            k.hives.keys.insert(m);
            STATUS_SUCCESS
        });
        registry::notify_post(class::POST_LOAD_KEY, 0, status, at, &pre);
        status
    })
}

/// Opens (or creates) a key for `pid`: RegNtPreOpenKeyEx/RegNtPreCreateKeyEx with the _V1
/// structure, the operation, then the post-notification whose Object is valid only on
/// STATUS_SUCCESS. Returns the handle.
///
/// # Errors
/// The failing status (from a pre-callback, or STATUS_OBJECT_NAME_NOT_FOUND).
pub fn open_key(pid: u32, path: &str, desired: u32, create: bool) -> Result<u64, NtStatus> {
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
        attributes: 0x40, // OBJ_CASE_INSENSITIVE
        check_access_mode: 1,
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
            let h = &mut k.hives;
            let hive = h.hive_of(&key).ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            let exists = h.keys.contains(&key);
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
                            opener: pid,
                        },
                    );
                    h.next_handle += 4;
                    let handle = 0x1000 + h.next_handle;
                    h.handles.insert((pid, handle), object);
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
    let object = kernel::with(|k| {
        let h = &mut k.hives;
        let object = h.handles.remove(&(pid, handle))?;
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
            kernel::with(|k| k.hives.objects.remove(&object));
            free_object_page(object);
        }
    });
    STATUS_SUCCESS
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
        kernel::with(|k| k.hives.objects.remove(&object));
        free_object_page(object);
    }
}

/// Unloads a hive (RegUnLoadKey): RegNtPreUnLoadKey with the hive's root key object, then
/// STATUS_CANNOT_DELETE if any other key object of the hive exists or any is referenced,
/// else the hive and its keys are gone; RegNtPostUnLoadKey.
#[must_use = "STATUS_CANNOT_DELETE while the hive is held"]
pub fn unload_hive(pid: u32, mount: &str) -> NtStatus {
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
                opener: pid,
            },
        );
    });
    let status = io::with_pid(pid, || {
        let mut info = RegUnloadKeyInformation {
            object: root as *mut c_void,
            user_event: std::ptr::null_mut(),
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
                return STATUS_CANNOT_DELETE;
            }
            k.hives.hives.remove(&m);
            let prefix = format!("{m}\\");
            k.hives
                .keys
                .retain(|key| *key != m && !key.starts_with(&prefix));
            STATUS_SUCCESS
        });
        registry::notify_post(class::POST_UNLOAD_KEY, root, status, at, &pre);
        status
    });
    destroy(root);
    kernel::with(|k| k.hives.objects.remove(&root));
    free_object_page(root);
    status
}

/// `NtQueryOpenSubKeysEx` on the hive mounted at `mount`: one `(pid, key name)` per key
/// object of the hive that a handle or a reference keeps alive, the pid being the process
/// that opened the object. Source: Windows Research Kernel `CmpDumpKeyBodyList` /
/// `CmpDumpOneKeyBody` (base/ntos/config/cmsubs.c): every `CM_KEY_BODY` enlisted on a KCB
/// of the hive, reported with `KeyBody->ProcessID` and the KCB's name, the caller's own
/// query handle excluded; key bodies are delisted only when the object is deleted
/// (`CmpDeleteKeyObject`), so objects being destroyed are not listed. Objects opened
/// before any registry callback was registered are listed like any other: this is how a
/// user-mode tool sees keys a late-started filter never saw. The model keeps the name as
/// the object was opened (the KCB's stored name is the same path here).
///
/// # Errors
/// `STATUS_OBJECT_NAME_NOT_FOUND` when no hive is mounted at `mount`.
pub fn open_subkeys(mount: &str) -> Result<Vec<(u32, String)>, NtStatus> {
    let m = canon(mount);
    kernel::with(|k| {
        if !k.hives.hives.contains_key(&m) {
            return Err(STATUS_OBJECT_NAME_NOT_FOUND);
        }
        let mut v: Vec<(usize, u32, String)> = k
            .hives
            .objects
            .iter()
            .filter(|(a, o)| {
                o.hive == m
                    && !o.destroyed
                    && (o.handles > 0 || k.objects.references.get(a).copied().unwrap_or(0) > 0)
            })
            .map(|(a, o)| (*a, o.opener, o.name.clone()))
            .collect();
        v.sort_unstable();
        Ok(v.into_iter().map(|(_, pid, name)| (pid, name)).collect())
    })
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
