//! The driver's own registry reads: `ZwOpenKey`, `ZwQueryValueKey`, `ZwEnumerateValueKey`
//! (and `ZwClose` of their handles, in [`crate::nt::ob::object`]).
//!
//! Values are modelled only where a driver reads them at start-up: the service key and its
//! `Parameters` subkey (the INF writes `Parameters\Altitude`; [`install_service`] does what the
//! INF does, and scenarios can change or remove the value), and
//! `HKLM\SYSTEM\CurrentControlSet\Control\hivelist`, whose values the kernel keeps itself, in
//! load order, as each load and unload of [`crate::nt::cm::hive`] adds and deletes one (value
//! name = mount point, data = file, `REG_SZ`; WRK `cmhvlist.c`, see `values_of`). Every routine is `PASSIVE_LEVEL` only, so
//! a driver calling one from a registry callback at `APC_LEVEL` is caught.
//!
//! The handles are real key handles: `ZwOpenKey` is `NtOpenKey` from kernel mode, which opens
//! a key object through the object manager and the key type's parse routine, so every
//! registry callback — the calling driver's own included — gets the open's pre- and
//! post-notification on the calling thread, and the handle's `ZwClose` ends the key object
//! (RegNtPreKeyHandleClose, context cleanups, RegNtPostKeyHandleClose). Docs: Learn
//! REG_CREATE_KEY_INFORMATION_V1 Remarks (the structure is passed "every time that a thread
//! tries to create a key", also "when a kernel-mode driver calls ZwCreateKey"); regfltr
//! `sys/pre.c` PreNotificationBlockSample (its own `ZwCreateKey` is failed by its own
//! callback); see [`hive::zw_open_key`]. A key of the value store is made a key of its mounted
//! hive when first opened ([`hive::ensure_key`]); the hive list key exists wherever the SYSTEM
//! hive is mounted. Until 2026-12-05 these handles were bare numbers with no key object and no
//! notification (fidelity audit 16b, F4). A key no mounted hive holds (a scenario that mounts
//! no SYSTEM hive, which no booted Windows lacks) is still opened the old way, without a key
//! object: a limit of the model, not Windows behaviour.
//! Not modelled: the RegNtPreQueryValueKey / RegNtPreEnumerateValueKey pairs Windows sends
//! for `ZwQueryValueKey` / `ZwEnumerateValueKey` (ReactOS `ntoskrnl/config/ntapi.c`
//! NtQueryValueKey / NtEnumerateValueKey); the model has no value notifications.
//!
//! Docs: ZwOpenKey <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-zwopenkey>,
//! ZwQueryValueKey <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-zwqueryvaluekey>
//! (`STATUS_BUFFER_TOO_SMALL` when even the fixed part does not fit, `STATUS_BUFFER_OVERFLOW`
//! with partial data otherwise, `ResultLength` = size needed),
//! ZwEnumerateValueKey <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-zwenumeratevaluekey>
//! (`STATUS_NO_MORE_ENTRIES` past the last value),
//! KEY_VALUE_FULL_INFORMATION / KEY_VALUE_PARTIAL_INFORMATION (wdm.h layouts).

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;

use crate::machine::cpu::PASSIVE_LEVEL;
use crate::nt::cm::hive;
use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::layout::{UnicodeString, read_unicode};
use crate::nt::status::{
    NtStatus, STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER, STATUS_NO_MORE_ENTRIES,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::{self, require_irql};

/// The altitude hivetrack.inf writes to `Parameters\Altitude`.
pub const INF_ALTITUDE: &str = "385217";
/// `REG_SZ`.
pub const REG_SZ: u32 = 1;
/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;
/// The hive list key, canonical.
pub const HIVELIST: &str = r"\REGISTRY\MACHINE\SYSTEM\CURRENTCONTROLSET\CONTROL\HIVELIST";
/// `KeyValueFullInformation`.
const KEY_VALUE_FULL_INFORMATION: u32 = 1;
/// `KeyValuePartialInformation`.
const KEY_VALUE_PARTIAL_INFORMATION: u32 = 2;
/// Kernel handles have the top bit set; these are told apart from object handles by range.
const KEY_HANDLE_BASE: u64 = 0xFFFF_FFFF_C000_0000;

/// One value: name, type, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Name as written.
    pub name: String,
    /// `REG_*` type.
    pub kind: u32,
    /// Raw data.
    pub data: Vec<u8>,
}

/// Keys with values, and the key handles the driver holds.
#[derive(Debug, Default)]
pub struct ZwRegState {
    /// Values by canonical key path (a key listed here exists, even with no values).
    pub keys: BTreeMap<String, Vec<Value>>,
    /// Open key handles: handle -> (canonical path, operation that opened it, whether a key
    /// object of [`hive`] backs it — then [`hive`] holds the handle too).
    pub handles: HashMap<u64, (String, String, bool)>,
    next: u64,
    /// Every key path the driver opened or tried to, in order (for scenario checks).
    pub opened: Vec<String>,
    /// How many of its opens made a key object whose post-open went out with STATUS_SUCCESS to
    /// a driver's callback ([`hive::KeyObject::announced`]): opens a tracking driver was told of.
    pub announced_opens: u64,
    /// `ZwEnumerateValueKey` calls on a valid handle, failed ones included (for scenario
    /// checks: whether a request read the hive list).
    pub enumerations: u64,
}

impl ZwRegState {
    /// Key handles still open, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .handles
            .iter()
            .map(|(h, (path, op, _))| {
                format!("registry key handle {h:#x} ({path}) opened during {op}")
            })
            .collect();
        v.sort();
        v
    }
}

fn canon(path: &str) -> String {
    path.trim_end_matches('\\').to_ascii_uppercase()
}

/// Creates key `path` (and makes it exist) with no values.
pub fn create_key(path: &str) {
    kernel::with(|k| {
        k.zwreg.keys.entry(canon(path)).or_default();
    });
}

/// Sets value `name` of key `path` (creating the key).
pub fn set_value(path: &str, name: &str, kind: u32, data: Vec<u8>) {
    kernel::with(|k| {
        let values = k.zwreg.keys.entry(canon(path)).or_default();
        values.retain(|v| !v.name.eq_ignore_ascii_case(name));
        values.push(Value {
            name: name.to_owned(),
            kind,
            data,
        });
    });
}

/// Removes value `name` of key `path`.
pub fn delete_value(path: &str, name: &str) {
    kernel::with(|k| {
        if let Some(values) = k.zwreg.keys.get_mut(&canon(path)) {
            values.retain(|v| !v.name.eq_ignore_ascii_case(name));
        }
    });
}

/// `REG_SZ` data: UTF-16LE with a terminating NUL.
#[must_use]
pub fn sz(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// What the INF's install does for a service: the service key and
/// `Parameters\Altitude` = `altitude` (`REG_SZ`).
pub fn install_service(service_key: &str, altitude: &str) {
    create_key(service_key);
    set_value(
        &format!(r"{service_key}\Parameters"),
        "Altitude",
        REG_SZ,
        sz(altitude),
    );
}

/// Whether the driver opened (or tried to open) `path`.
#[must_use]
pub fn was_opened(path: &str) -> bool {
    let c = canon(path);
    kernel::with(|k| k.zwreg.opened.contains(&c))
}

/// The values of `path` now. The hive list's are the ones the kernel keeps itself at each
/// load and unload, in their value-list order ([`hive::hive_list`]: appended at a load,
/// squeezed out at an unload, application hives never listed — WRK `cmhvlist.c`, `cmapi.c`,
/// `cmvalue.c`); until 2026-12-06 they were generated from the mounted hives, sorted by mount
/// point, application hives included.
fn values_of(path: &str) -> Option<Vec<Value>> {
    if path == HIVELIST {
        return Some(
            hive::hive_list()
                .into_iter()
                .map(|(name, file)| Value {
                    name,
                    kind: REG_SZ,
                    data: sz(&file),
                })
                .collect(),
        );
    }
    kernel::with(|k| k.zwreg.keys.get(path).cloned())
}

/// The hive list's value names (mount points) in the order `ZwEnumerateValueKey` reads them.
#[must_use]
pub fn hive_list() -> Vec<String> {
    values_of(HIVELIST)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// Closes a key handle opened by [`ZwOpenKey`] (on the calling thread: a backed handle's key
/// object is closed through [`hive::close_key`], with its notifications); false when `handle`
/// is not one.
#[must_use]
pub fn close(handle: u64) -> bool {
    match kernel::with(|k| k.zwreg.handles.remove(&handle)) {
        None => false,
        Some((_, _, backed)) => {
            if backed {
                let _ = hive::close_key(crate::nt::io::current_pid(), handle);
            }
            true
        }
    }
}

/// The layout of OBJECT_ATTRIBUTES on x64 (wdm.h).
#[repr(C)]
struct ObjectAttributes {
    length: u32,
    root_directory: u64,
    object_name: *const UnicodeString,
    attributes: u32,
    security_descriptor: *mut c_void,
    security_quality_of_service: *mut c_void,
}

/// ZwOpenKey — opens an existing key for the driver (see the module docs). PASSIVE_LEVEL.
unsafe extern "win64" fn ZwOpenKey(
    handle: *mut u64,
    desired: u32,
    attributes: *const ObjectAttributes,
) -> NtStatus {
    require_irql("ZwOpenKey", PASSIVE_LEVEL);
    if handle.is_null() || attributes.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the driver passes a readable OBJECT_ATTRIBUTES.
    let attrs = unsafe { attributes.read_unaligned() };
    if attrs.length as usize != size_of::<ObjectAttributes>() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: ObjectName, if set, is a readable UNICODE_STRING.
    let Some(name) = (unsafe { read_unicode(attrs.object_name) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    let root = if attrs.root_directory == 0 {
        None
    } else {
        let Some(root) = kernel::with(|k| k.zwreg.handles.get(&attrs.root_directory).cloned())
        else {
            return STATUS_INVALID_HANDLE;
        };
        Some(root)
    };
    let path = match &root {
        None => canon(&name),
        Some((base, _, _)) => canon(&format!(r"{base}\{name}")),
    };
    kernel::with(|k| k.zwreg.opened.push(path.clone()));
    if kernel::should_fail("ZwOpenKey", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let stored = path == HIVELIST || kernel::with(|k| k.zwreg.keys.contains_key(&path));
    // A key of the value store is a key of its hive; a root opened the old way (no mounted
    // hive) keeps its children the old way too.
    // The key is made with the caller's spelling (`hivelist`, as Windows spells it).
    let given = match &root {
        None => name.clone(),
        Some((base, _, _)) => format!(r"{base}\{name}"),
    };
    let backed = root.as_ref().is_none_or(|r| r.2) && (!stored || hive::ensure_key(&given));
    let op = bugcheck::operation();
    let value = if backed {
        let opened = match root {
            None => hive::zw_open_key(None, &name, desired, attrs.attributes),
            Some(_) => {
                hive::zw_open_key(Some(attrs.root_directory), &name, desired, attrs.attributes)
            }
        };
        match opened {
            Ok(h) => {
                let table =
                    crate::nt::ps::process::handle_table_of(crate::nt::io::current_pid(), h);
                kernel::with(|k| {
                    let object = k.hives.handles.get(&(table, h));
                    if object
                        .and_then(|o| k.hives.objects.get(o))
                        .is_some_and(|o| o.announced)
                    {
                        k.zwreg.announced_opens += 1;
                    }
                });
                h
            }
            Err(s) => return s,
        }
    } else {
        if !stored {
            return STATUS_OBJECT_NAME_NOT_FOUND;
        }
        kernel::with(|k| {
            k.zwreg.next += 4;
            KEY_HANDLE_BASE | k.zwreg.next
        })
    };
    kernel::with(|k| k.zwreg.handles.insert(value, (path, op, backed)));
    // SAFETY: checked non-null; the driver passes a writable HANDLE.
    unsafe { handle.write_unaligned(value) };
    STATUS_SUCCESS
}

/// Builds the information structure of `class` for `v`.
fn information(class: u32, v: &Value) -> Option<(Vec<u8>, usize)> {
    let u32le = |x: usize| u32::try_from(x).unwrap_or(u32::MAX).to_le_bytes();
    match class {
        KEY_VALUE_PARTIAL_INFORMATION => {
            // TitleIndex, Type, DataLength, Data[]
            let mut b = Vec::new();
            b.extend(0u32.to_le_bytes());
            b.extend(v.kind.to_le_bytes());
            b.extend(u32le(v.data.len()));
            b.extend(&v.data);
            Some((b, 12))
        }
        KEY_VALUE_FULL_INFORMATION => {
            // TitleIndex, Type, DataOffset, DataLength, NameLength, Name[], (aligned) Data[]
            let name: Vec<u8> = v.name.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let data_offset = (20 + name.len()).next_multiple_of(8);
            let mut b = Vec::new();
            b.extend(0u32.to_le_bytes());
            b.extend(v.kind.to_le_bytes());
            b.extend(u32le(data_offset));
            b.extend(u32le(v.data.len()));
            b.extend(u32le(name.len()));
            b.extend(&name);
            b.resize(data_offset, 0);
            b.extend(&v.data);
            Some((b, 20))
        }
        _ => None,
    }
}

/// Copies `info` into the driver's buffer with the documented size rules.
///
/// # Safety
/// `out` is writable for `length` bytes; `result` is writable or null.
unsafe fn deliver(
    info: &[u8],
    fixed: usize,
    out: *mut u8,
    length: u32,
    result: *mut u32,
) -> NtStatus {
    if !result.is_null() {
        // SAFETY: per the contract.
        unsafe { result.write_unaligned(u32::try_from(info.len()).unwrap_or(u32::MAX)) };
    }
    let length = length as usize;
    if length < fixed {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let n = info.len().min(length);
    // SAFETY: per the contract `out` holds `length` >= `n` bytes.
    unsafe { std::ptr::copy_nonoverlapping(info.as_ptr(), out, n) };
    if n < info.len() {
        STATUS_BUFFER_OVERFLOW
    } else {
        STATUS_SUCCESS
    }
}

fn key_of(handle: u64) -> Option<String> {
    kernel::with(|k| k.zwreg.handles.get(&handle).map(|e| e.0.clone()))
}

/// ZwQueryValueKey — see the module docs. PASSIVE_LEVEL.
unsafe extern "win64" fn ZwQueryValueKey(
    handle: u64,
    value_name: *const UnicodeString,
    class: u32,
    out: *mut u8,
    length: u32,
    result: *mut u32,
) -> NtStatus {
    require_irql("ZwQueryValueKey", PASSIVE_LEVEL);
    let Some(path) = key_of(handle) else {
        return STATUS_INVALID_HANDLE;
    };
    // Windows Research Kernel `cmapi.c` CmQueryValueKey: "we couldn't map a view for the bin
    // containing this cell", STATUS_INSUFFICIENT_RESOURCES (fidelity audit 18b, F2).
    if kernel::should_fail("ZwQueryValueKey", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    // SAFETY: the driver passes a readable UNICODE_STRING.
    let Some(name) = (unsafe { read_unicode(value_name) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    let Some(v) = values_of(&path)
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name.eq_ignore_ascii_case(&name))
    else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    let Some((info, fixed)) = information(class, &v) else {
        return STATUS_INVALID_PARAMETER;
    };
    // SAFETY: the driver passes a buffer of `length` bytes and a writable result length.
    unsafe { deliver(&info, fixed, out, length, result) }
}

/// ZwEnumerateValueKey — see the module docs. PASSIVE_LEVEL.
unsafe extern "win64" fn ZwEnumerateValueKey(
    handle: u64,
    index: u32,
    class: u32,
    out: *mut u8,
    length: u32,
    result: *mut u32,
) -> NtStatus {
    require_irql("ZwEnumerateValueKey", PASSIVE_LEVEL);
    let Some(path) = key_of(handle) else {
        return STATUS_INVALID_HANDLE;
    };
    kernel::with(|k| k.zwreg.enumerations += 1);
    // WRK `cmapi.c` CmEnumerateValueKey: the same STATUS_INSUFFICIENT_RESOURCES when the
    // key's cell cannot be mapped (fidelity audit 18b, F2).
    if kernel::should_fail("ZwEnumerateValueKey", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let Some(v) = values_of(&path)
        .unwrap_or_default()
        .into_iter()
        .nth(index as usize)
    else {
        return STATUS_NO_MORE_ENTRIES;
    };
    let Some((info, fixed)) = information(class, &v) else {
        return STATUS_INVALID_PARAMETER;
    };
    // SAFETY: the driver passes a buffer of `length` bytes and a writable result length.
    let status = unsafe { deliver(&info, fixed, out, length, result) };
    if path == HIVELIST && status == STATUS_SUCCESS {
        run_after_hive_list_value(index);
    }
    status
}

/// A scenario's step run once, after a read of one hive-list value: what another thread may
/// do between the driver's read of a value and what it does with it ([`after_hive_list_value`]).
type AfterValue = (u32, Box<dyn FnOnce()>);

thread_local! {
    static AFTER_VALUE: std::cell::RefCell<Option<AfterValue>> = const { std::cell::RefCell::new(None) };
}

/// Runs `step` once, right after the next successful `ZwEnumerateValueKey` of hive-list value
/// `index` has been delivered (its caller holds the value but has done nothing with it yet):
/// an interleaving of another thread's work (an unload, a load) with the driver's start-up
/// read, which a single-threaded model cannot reach otherwise. The step runs on the calling
/// thread, so its notifications reach every callback as they would from another thread at
/// that moment.
pub fn after_hive_list_value(index: u32, step: impl FnOnce() + 'static) {
    AFTER_VALUE.with(|a| *a.borrow_mut() = Some((index, Box::new(step))));
}

/// Whether a step set by [`after_hive_list_value`] is still waiting (and drops it): false
/// once it ran.
#[must_use]
pub fn cancel_after_hive_list_value() -> bool {
    AFTER_VALUE.with(|a| a.borrow_mut().take()).is_some()
}

fn run_after_hive_list_value(index: u32) {
    let step = AFTER_VALUE.with(|a| {
        let mut a = a.borrow_mut();
        if a.as_ref().is_some_and(|(i, _)| *i == index) {
            a.take()
        } else {
            None
        }
    });
    if let Some((_, step)) = step {
        step();
    }
}

pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("ZwOpenKey", ZwOpenKey as *const () as usize),
        Export::function("ZwQueryValueKey", ZwQueryValueKey as *const () as usize),
        Export::function(
            "ZwEnumerateValueKey",
            ZwEnumerateValueKey as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_information_layout_matches_wdm_h() {
        let v = Value {
            name: "Ab".into(),
            kind: REG_SZ,
            data: sz("x"),
        };
        let (b, fixed) = information(KEY_VALUE_FULL_INFORMATION, &v).unwrap();
        assert_eq!(fixed, 20);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 24); // DataOffset, 8-aligned
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 4); // "x\0"
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 4); // "Ab"
        assert_eq!(&b[20..24], &[b'A', 0, b'b', 0]);
        assert_eq!(&b[24..28], &[b'x', 0, 0, 0]);
    }

    #[test]
    fn short_buffers_follow_the_documented_statuses() {
        let v = Value {
            name: "A".into(),
            kind: REG_SZ,
            data: sz("385217"),
        };
        let (info, fixed) = information(KEY_VALUE_PARTIAL_INFORMATION, &v).unwrap();
        let mut out = vec![0u8; 64];
        let mut needed = 0u32;
        // SAFETY: the buffer and result are valid for the lengths passed.
        let st = unsafe { deliver(&info, fixed, out.as_mut_ptr(), 8, &raw mut needed) };
        assert_eq!((st, needed as usize), (STATUS_BUFFER_TOO_SMALL, info.len()));
        // SAFETY: as above.
        let st = unsafe { deliver(&info, fixed, out.as_mut_ptr(), 14, &raw mut needed) };
        assert_eq!(st, STATUS_BUFFER_OVERFLOW);
        // SAFETY: as above.
        let st = unsafe { deliver(&info, fixed, out.as_mut_ptr(), 64, &raw mut needed) };
        assert_eq!(st, STATUS_SUCCESS);
        assert_eq!(&out[12..26], &sz("385217")[..]);
    }
}
