//! Hive lifecycle and process identity, shown on the test driver: `RegLoadKey`'s root object
//! and relative name, application hives, the deferred unload of `NtUnloadKeyEx`, process
//! start keys and reused PIDs, threads attached to another process, and kernel handles opened
//! from a user thread. The test driver logs each notification with what the kernel tells it
//! (`PsGetCurrentProcessId`, `IoGetCurrentProcess`, the start key, the names), so every check
//! below is on what a driver can observe (test-driver/src/lifecycle.rs).

use std::time::Duration;

use super::registry::{KEY_READ, SOFTWARE, SYSTEM_PID, Session, finish, start};
use super::test_driver::ioctl;
use super::{Ctx, Scenario};
use crate::nt::cm::hive::{self, APP_HIVE_ROOT, DEFERRED_UNLOAD_THREAD, REG_APP_HIVE};
use crate::nt::io;
use crate::nt::ke::timer;
use crate::nt::kernel;
use crate::nt::ob::object::KERNEL_HANDLE_BIT;
use crate::nt::ps::process::{self, SYSTEM_START_KEY};
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{
    self, STATUS_ACCESS_DENIED, STATUS_OBJECT_NAME_COLLISION, STATUS_PENDING, STATUS_SUCCESS,
};

const IOCTL_LOG_START: u32 = ioctl(0x830);
const IOCTL_LOG_READ: u32 = ioctl(0x831);
const IOCTL_ATTACH: u32 = ioctl(0x832);
const IOCTL_START_KEY: u32 = ioctl(0x833);
const IOCTL_SYSTEM_PROCESS: u32 = ioctl(0x857);
const IOCTL_ZW_OPEN: u32 = ioctl(0x854);
const IOCTL_HIVE_LIST_VALUE: u32 = ioctl(0x855);
const HKU: &str = r"\REGISTRY\USER";
const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
/// OBJ_KERNEL_HANDLE.
const OBJ_KERNEL_HANDLE: u64 = 0x200;
/// OBJ_FORCE_ACCESS_CHECK.
const OBJ_FORCE_ACCESS_CHECK: u64 = 0x400;

// Notification classes the log records (REG_NOTIFY_CLASS), and its process pseudo-classes.
const PRE_KEY_HANDLE_CLOSE: u64 = 14;
const PRE_CREATE_KEY_EX: u64 = 26;
const POST_CREATE_KEY_EX: u64 = 27;
const POST_KEY_HANDLE_CLOSE: u64 = 25;
const CONTEXT_CLEANUP: u64 = 40;
const PRE_OPEN_KEY_EX: u64 = 28;
const POST_OPEN_KEY_EX: u64 = 29;
const PRE_LOAD_KEY: u64 = 32;
const POST_LOAD_KEY: u64 = 33;
const PRE_UNLOAD_KEY: u64 = 34;
const POST_UNLOAD_KEY: u64 = 35;
const PROCESS_CREATE: u64 = 0x1000;
const PROCESS_EXIT: u64 = 0x1001;

/// One entry of the test driver's log.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Entry {
    pub(super) class: u64,
    /// PsGetCurrentProcessId (the notified pid for process entries).
    pub(super) owner: u64,
    /// PsGetProcessId(IoGetCurrentProcess()) (the notified pid for process entries).
    pub(super) current: u64,
    /// PsGetProcessStartKey of the current (or notified) process.
    pub(super) start_key: u64,
    pub(super) object: u64,
    /// Hash of KeyName / CompleteName.
    pub(super) name: u64,
    /// Hash of the Object's name (CmCallbackGetKeyObjectIDEx).
    pub(super) object_name: u64,
    /// Class-specific (see test-driver/src/lifecycle.rs).
    pub(super) extra: u64,
    /// PsGetCurrentThreadId in the callback (0 for process entries).
    pub(super) thread: u64,
    /// PsGetCurrentThread in the callback: the current thread's ETHREAD (0 for process
    /// entries).
    pub(super) ethread: u64,
    /// PsGetThreadId of that ETHREAD (0 for process entries).
    pub(super) ethread_id: u64,
}

/// Slots of a test-driver log entry (test-driver/src/lifecycle.rs `ENTRY_SLOTS`).
const ENTRY_SLOTS: u32 = 11;
/// Bytes of a test-driver log entry.
pub(super) const ENTRY_BYTES: u32 = ENTRY_SLOTS * 8;

/// The FNV-1a hash the test driver computes over a name's UTF-16 code units.
pub(super) fn hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.encode_utf16().flat_map(u16::to_le_bytes) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub(super) fn log_start(s: &Session) {
    let _ = io::device_io_control(s.control, IOCTL_LOG_START, &[0; 8], 32, 0xA5);
}

/// The number of entries the test driver logged (11 slots of 8 bytes an entry): slot 7 of a read past the end. An entry's
/// class cannot mark the end, RegNtPreDeleteKey being class 0.
pub(super) fn log_len(device: io::FileHandle) -> u64 {
    let r = io::device_io_control(
        device,
        IOCTL_LOG_READ,
        &u64::MAX.to_le_bytes(),
        ENTRY_BYTES,
        0xA5,
    );
    r.output
        .get(56..64)
        .map_or(0, |c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

pub(super) fn log(s: &Session) -> Vec<Entry> {
    let mut v = Vec::new();
    for i in 0..log_len(s.control).min(64) {
        let r = io::device_io_control(
            s.control,
            IOCTL_LOG_READ,
            &i.to_le_bytes(),
            ENTRY_BYTES,
            0xA5,
        );
        let w: Vec<u64> = r
            .output
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if w.len() < ENTRY_SLOTS as usize {
            break;
        }
        v.push(Entry {
            class: w[0],
            owner: w[1],
            current: w[2],
            start_key: w[3],
            object: w[4],
            name: w[5],
            object_name: w[6],
            extra: w[7],
            thread: w[8],
            ethread: w[9],
            ethread_id: w[10],
        });
    }
    for e in &v {
        println!("  log: {e:x?}");
    }
    v
}

fn four(s: &Session, code: u32, argument: u64) -> [u64; 4] {
    four_on(s.control, code, argument)
}

fn four_on(device: io::FileHandle, code: u32, argument: u64) -> [u64; 4] {
    let r = io::device_io_control(device, code, &argument.to_le_bytes(), 32, 0xA5);
    let mut out = [0u64; 4];
    for (o, c) in out.iter_mut().zip(r.output.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    out
}

fn first(log: &[Entry], class: u64) -> Option<Entry> {
    log.iter().copied().find(|e| e.class == class)
}

fn new_process(ctx: &mut Ctx, image: &str) -> u32 {
    let r = process::create_process(SYSTEM_PID, image, false);
    ctx.check(r.is_ok(), format!("create {image}: {r:?}"));
    r.unwrap_or(0)
}

/// The hive lifecycle and process scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-relative-load",
            "RegLoadKey(HKU, SID): RegNtPreLoadKey carries the HKU key object and the relative name; an absolute NtLoadKey carries no object",
            td_relative_load,
        ),
        Scenario::test_driver(
            "td-load-object-readings",
            "REG_LOAD_KEY_INFORMATION.Object played each way (hive::LoadObject): the root directory's key object; Learn's literal 'root key of the hive about to be loaded' (NULL in the pre, in the post an object of the new root the kernel opened for it, released after it); NULL throughout",
            td_load_object_readings,
        ),
        Scenario::test_driver(
            "td-app-hive",
            "RegLoadAppKey: \\REGISTRY\\A\\{GUID}, a root handle through RootHandle whose open is notified by its absolute name inside the load, the same hive for the same file, unloaded by itself at its last key with no unload notification",
            td_app_hive,
        ),
        Scenario::test_driver(
            "td-deferred-unload",
            "NtUnloadKeyEx with an event: STATUS_PENDING while a key is open; after the last close of a subkey the hive stays loaded and listed until the delayed KCB dereference runs (5 s, WRK cmdelay.c; sooner if another close set its timer, at once on an NtQueryOpenSubKeysEx or a root key's close, later if a key opens meanwhile), then a system worker thread unloads it and sets the event",
            td_deferred_unload,
        ),
        Scenario::test_driver(
            "td-zw-open",
            "a driver's own ZwOpenKey of the hive list (through the CurrentControlSet link) and ZwClose: its own callback gets the reparse pair, the open on the calling thread with OBJ_KERNEL_HANDLE and KernelMode, and the close; nothing is left",
            td_zw_open,
        ),
        Scenario::test_driver(
            "td-hive-list",
            "the kernel keeps the hive list itself (WRK cmhvlist.c): each load appends its value after the link, with its own ZwCreateKey of the list on the loader's thread (no OBJ_KERNEL_HANDLE, KernelMode) between the load's pre and post; each unload squeezes its value out with its own ZwOpenKey between the unload's pre and post; an app hive is not listed",
            td_hive_list,
        ),
        Scenario::test_driver(
            "td-unload-sequence",
            "RegUnLoadKey opens the hive's root itself (a kernel handle, a create on the caller's thread), unloads with that object, and closes it after the unload's post, failed or not (WRK NtUnloadKey2)",
            td_unload_sequence,
        ),
        Scenario::test_driver(
            "td-thread-ids",
            "two threads of one process unload two hives interleaved (the second's unload inside the first's, between its pre and post): each thread has its own PsGetCurrentThreadId and its own ETHREAD (PsGetCurrentThread, whose PsGetThreadId is that id), each pre and its post run on the same thread (Learn EX_CALLBACK_FUNCTION: the callback runs in the context of the thread performing the operation), and each post's PreInformation names the object its pre carried",
            td_thread_ids,
        ),
        Scenario::test_driver(
            "td-force-unload",
            "NtUnloadKey2 with REG_FORCE_UNLOAD (the profile service after its event 1530, WRK cmapi.c CmUnloadKey/CmpSearchForOpenSubKeys SearchAndDeref): a held hive unloads with an ordinary unload's notifications and STATUS_SUCCESS in the post; the keys another process holds are not closed by it (no close notification), keep their handles, ids and names, answer STATUS_KEY_DELETED, and neither hold nor are listed in the hive loaded again at the mount; their later close delivers pre-close, the context cleanup and post-close with the old name",
            td_force_unload,
        ),
        Scenario::test_driver(
            "td-unload-not-root",
            "RegUnLoadKey of a key that is no loaded hive's root still runs its private create (WRK NtUnloadKey2): an existing subkey is opened, refused by CmUnloadKey with STATUS_INVALID_PARAMETER and closed; a missing last component inside the hive is created first; a hive already unloaded fails in the parse (no creates in the master hive: INVALID_PARAMETER), two missing components with NAME_NOT_FOUND, each after a notified pre/post-create; NtQueryOpenSubKeysEx of a subkey is INVALID_PARAMETER",
            td_unload_not_root,
        ),
        Scenario::test_driver(
            "td-unload-deferred-delete",
            "with object deletion deferred to a worker, the unload's own object outlives a carried-out unload: a hive loaded again at the mount is neither held nor listed by it",
            td_unload_deferred_delete,
        ),
        Scenario::test_driver(
            "td-start-key",
            "PsGetProcessStartKey: per-process, increasing, System's first; a reused PID gets a new start key",
            td_start_key,
        ),
        Scenario::test_driver(
            "td-attached-thread",
            "KeStackAttachProcess: PsGetCurrentProcessId stays the thread's process, IoGetCurrentProcess is the attached one, and handles go into its table",
            td_attached_thread,
        ),
        Scenario::test_driver(
            "td-system-process",
            "PsInitialSystemProcess read through MmGetSystemRoutineAddress, as hivetrack names a kernel handle's holder: the System process (PsLookupProcessByProcessId(4)'s object, pid 4, the first start key), current while attached to it, and the process a System thread's registry callback runs in",
            td_system_process,
        ),
        Scenario::test_driver(
            "td-kernel-handle",
            "OBJ_KERNEL_HANDLE from a user thread: notified in that process, the handle is in the System process's table, outlives the process, and its close runs attached to System",
            td_kernel_handle,
        ),
    ]
}

/// The readings of the load's `Object` the model can play ([`hive::LoadObject`]), as a
/// driver sees them: the pre's `Object`, the post's `PreInformation->Object` and its name.
#[allow(clippy::many_single_char_names)] // s, p, r, l, u: session, process, results, log
fn td_load_object_readings(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\reg.exe");
    let hku = hive::open_key(p, HKU, KEY_READ, false);
    ctx.check(hku.is_ok(), format!("HKEY_USERS opened: {hku:?}"));
    let hku = hku.unwrap_or(0);
    let hku_object = kernel::with(|k| k.hives.handles.get(&(p, hku)).copied()).unwrap_or(0);
    let mount = format!(r"{HKU}\{SID}");
    for reading in [
        hive::LoadObject::RootDirectory,
        hive::LoadObject::HiveRoot,
        hive::LoadObject::Null,
    ] {
        hive::set_load_object(reading);
        log_start(&s);
        let r = hive::load_key(p, hku, SID, r"\??\C:\Users\kemu\NTUSER.DAT");
        ctx.check(
            r == STATUS_SUCCESS,
            format!("{reading:?}: RegLoadKey(HKU, SID): {}", status::describe(r)),
        );
        let l = log(&s);
        let pre = first(&l, PRE_LOAD_KEY).unwrap_or_default();
        let post = first(&l, POST_LOAD_KEY).unwrap_or_default();
        ctx.check(
            pre.name == hash(SID),
            format!("{reading:?}: KeyName is the relative SID as given"),
        );
        match reading {
            hive::LoadObject::RootDirectory => {
                ctx.check(
                    pre.object == hku_object as u64 && post.object == pre.object,
                    format!("root directory: the HKU object in the pre and the post ({pre:x?}, {post:x?})"),
                );
                ctx.check(
                    post.object_name == hash(HKU),
                    "root directory: the post names it \\REGISTRY\\USER",
                );
            }
            hive::LoadObject::HiveRoot => {
                ctx.check(
                    pre.object == 0 && pre.object_name == 0,
                    format!(
                        "hive root: no object in the pre, the key does not exist yet ({pre:x?})"
                    ),
                );
                ctx.check(
                    post.object != 0 && post.object != hku_object as u64,
                    format!("hive root: the post carries another object ({post:x?})"),
                );
                ctx.check(
                    post.object_name == hash(&mount),
                    "hive root: the post names it the new hive's root, the full mount",
                );
                let gone = kernel::with(|k| !k.hives.objects.contains_key(&(post.object as usize)));
                ctx.check(
                    gone,
                    "hive root: the load released that object after its post",
                );
                // The kernel's open of the root for it, notified like the unload's own.
                let opens = l
                    .iter()
                    .filter(|e| e.class == PRE_OPEN_KEY_EX && e.name == hash(&mount))
                    .count();
                ctx.check(
                    opens == 1,
                    format!("hive root: the kernel's open of the new root is notified ({opens})"),
                );
            }
            hive::LoadObject::Null => {
                ctx.check(
                    pre.object == 0 && post.object == 0 && post.object_name == 0,
                    format!("null: no object in the pre or the post ({pre:x?}, {post:x?})"),
                );
            }
        }
        // Nothing of the load holds the hive: it unloads at once.
        let u = hive::unload_hive(SYSTEM_PID, &mount);
        ctx.check(
            u == STATUS_SUCCESS,
            format!(
                "{reading:?}: the loaded hive unloads: {}",
                status::describe(u)
            ),
        );
    }
    let _ = hive::close_key(p, hku);
    process::exit_process(p);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q, a, b, c: processes; s, l, r: session, log, result
fn td_relative_load(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\reg.exe");
    log_start(&s);
    // advapi32 RegLoadKey: HKEY_USERS mapped to a handle on \REGISTRY\USER, NtLoadKey with
    // that RootDirectory and the relative sub-key (ReactOS advapi32 RegLoadKeyW).
    let hku = hive::open_key(p, HKU, KEY_READ, false);
    ctx.check(hku.is_ok(), format!("HKEY_USERS opened: {hku:?}"));
    let hku = hku.unwrap_or(0);
    let r = hive::load_key(p, hku, SID, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(
        r == STATUS_SUCCESS,
        format!("RegLoadKey(HKU, SID): {}", status::describe(r)),
    );
    let mount = format!(r"{HKU}\{SID}");
    ctx.check(
        kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase())),
        format!("mounted at {mount}"),
    );
    let hku_object = kernel::with(|k| k.hives.handles.get(&(p, hku)).copied()).unwrap_or(0);
    let absolute = format!(r"{HKU}\S-1-5-21-9-9-9-1002");
    let r2 = hive::load_hive(SYSTEM_PID, &absolute, r"\??\C:\Users\other\NTUSER.DAT");
    ctx.check(r2 == STATUS_SUCCESS, "an absolute NtLoadKey mounts too");
    let l = log(&s);
    let loads: Vec<Entry> = l
        .iter()
        .copied()
        .filter(|e| e.class == PRE_LOAD_KEY)
        .collect();
    let relative = loads.first().copied().unwrap_or_default();
    ctx.check(
        relative.object == hku_object as u64 && relative.object != 0,
        format!(
            "pre-load Object is the HKU key object {hku_object:#x} ({:#x})",
            relative.object
        ),
    );
    ctx.check(
        relative.object_name == hash(HKU),
        "the driver names that object \\REGISTRY\\USER (CmCallbackGetKeyObjectIDEx)",
    );
    ctx.check(
        relative.name == hash(SID),
        "pre-load KeyName is the relative SID, not the full path",
    );
    ctx.check(
        relative.owner == u64::from(p) && relative.extra == 0,
        "in the loading process, no RootHandle, no event, no flags",
    );
    let abs = loads.get(1).copied().unwrap_or_default();
    ctx.check(
        abs.object == 0 && abs.name == hash(&absolute),
        "an absolute load: Object NULL, KeyName the full path",
    );
    let posts = l.iter().filter(|e| e.class == POST_LOAD_KEY).count();
    ctx.check(posts == 2, format!("two post-load notifications ({posts})"));
    // The loaded hive behaves like any other: held by an open key, free once closed.
    let k = hive::open_key(p, &format!(r"{mount}\Software"), KEY_READ, true);
    ctx.check(
        hive::unload_hive(SYSTEM_PID, &mount) == hive::STATUS_CANNOT_DELETE,
        "held while a key is open",
    );
    if let Ok(k) = k {
        let _ = hive::close_key(p, k);
    }
    let _ = hive::close_key(p, hku);
    let r = hive::unload_hive(SYSTEM_PID, &mount);
    ctx.check(r == STATUS_SUCCESS, "unloaded once closed");
    let _ = hive::unload_hive(SYSTEM_PID, &absolute);
    process::exit_process(p);
    finish(ctx, s);
}

fn td_app_hive(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, r"\Device\HarddiskVolume2\Program Files\App\app.exe");
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Program Files\App\helper.exe");
    let file = r"\??\C:\ProgramData\App\settings.dat";
    log_start(&s);
    let Ok((root, mount)) = hive::load_app_key(p, file) else {
        ctx.check(false, "RegLoadAppKey failed");
        return;
    };
    ctx.say(format!(
        "app hive mounted at {mount}, root handle {root:#x}"
    ));
    ctx.check(
        mount.starts_with(&format!(r"{APP_HIVE_ROOT}\{{")) && mount.ends_with('}'),
        format!("mounted at \\REGISTRY\\A\\{{GUID}}: {mount}"),
    );
    ctx.check(
        kernel::with(|k| k.hives.handles_of(p).contains(&root)),
        "the root handle is in the caller's table",
    );
    let l = log(&s);
    let pre = first(&l, PRE_LOAD_KEY).unwrap_or_default();
    ctx.check(
        pre.object == 0
            && pre.name == hash(&mount)
            && pre.extra & 1 == 1
            && pre.extra >> 32 == u64::from(REG_APP_HIVE),
        format!(
            "pre-load: no root object, KeyName the mount, RootHandle set, Flags REG_APP_HIVE ({pre:x?})"
        ),
    );
    ctx.check(
        first(&l, POST_LOAD_KEY).is_some_and(|e| e.extra == 0),
        "post-load STATUS_SUCCESS",
    );
    check_app_root_open(ctx, &l, p, root, &mount);
    // The same file again (another process): the hive already loaded, a new root handle.
    let again = hive::load_app_key(q, file);
    ctx.check(
        again.as_ref().is_ok_and(|(h, m)| *m == mount && *h != root),
        format!("loading the same file again returns the loaded hive: {again:?}"),
    );
    // Keys of an app hive are reached relative to its root handle; by absolute name they are
    // refused (Learn, "Filtering Registry Operations on Application Hives").
    let by_name = hive::open_key(p, &format!(r"{mount}\Settings"), KEY_READ, true);
    ctx.check(
        by_name == Err(STATUS_ACCESS_DENIED),
        format!("an absolute open under \\REGISTRY\\A is refused: {by_name:?}"),
    );
    let sub = hive::open_key_at(p, Some(root), "Settings", KEY_READ, true);
    ctx.check(
        sub.is_ok(),
        format!("a subkey opened relative to the root: {sub:?}"),
    );
    log_start(&s);
    let _ = hive::close_key(p, root);
    let still = kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase()));
    ctx.check(still, "still loaded while other keys of it are open");
    if let Ok(sub) = sub {
        let _ = hive::close_key(p, sub);
    }
    process::exit_process(q); // closes q's root handle: the last key of the hive
    let gone = !kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase()));
    ctx.check(gone, "unloaded by itself when its last key closed");
    let l = log(&s);
    let closes = l.iter().filter(|e| e.class == PRE_KEY_HANDLE_CLOSE).count();
    ctx.check(closes == 3, format!("three key objects closed ({closes})"));
    ctx.check(
        !l.iter()
            .any(|e| e.class == PRE_UNLOAD_KEY || e.class == POST_UNLOAD_KEY),
        "no unload notification for the automatic unload",
    );
    ctx.check(
        !kernel::with(|k| {
            k.hives
                .keys
                .contains(&format!(r"{mount}\Settings").to_ascii_uppercase())
        }),
        "its keys are gone",
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// The root handle's open, by the absolute `\REGISTRY\A\{GUID}` name, between the load's
/// pre and post, on the caller's thread (Learn "Filtering Registry Operations on Application
/// Hives"), as the log of one `RegLoadAppKey` shows it.
fn check_app_root_open(ctx: &mut Ctx, l: &[Entry], p: u32, root: u64, mount: &str) {
    let classes: Vec<u64> = l.iter().map(|e| e.class).collect();
    ctx.check(
        classes
            == [
                PRE_LOAD_KEY,
                PRE_OPEN_KEY_EX,
                POST_OPEN_KEY_EX,
                POST_LOAD_KEY,
            ],
        format!("pre-load, the root's open, post-load ({classes:?})"),
    );
    let open = first(l, PRE_OPEN_KEY_EX).unwrap_or_default();
    let opened = first(l, POST_OPEN_KEY_EX).unwrap_or_default();
    let root_object = kernel::with(|k| k.hives.handles.get(&(p, root)).copied()).unwrap_or(0);
    ctx.check(
        open.name == hash(mount)
            && open.owner == u64::from(p)
            && open.extra & OBJ_KERNEL_HANDLE == 0
            && opened.extra == 0
            && opened.object == root_object as u64
            && opened.object_name == hash(mount),
        format!(
            "the root is opened by its absolute name in the caller's process, and the post names the root handle's object ({open:x?} {opened:x?})"
        ),
    );
}

#[allow(clippy::many_single_char_names)] // p, q, a, b, c: processes; s, l, r: session, log, result
fn td_deferred_unload(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let user = format!(r"{HKU}\{SID}");
    let r = hive::load_hive(SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(r == STATUS_SUCCESS, "user hive loaded");
    let p = new_process(ctx, r"\Device\HarddiskVolume2\leaky.exe");
    let h = hive::open_key(p, &format!(r"{user}\Software"), KEY_READ, true);
    ctx.check(h.is_ok(), "a process holds a key of the hive");
    log_start(&s);
    let (r, event) = hive::unload_key_ex(SYSTEM_PID, &user);
    ctx.check(
        r == STATUS_PENDING,
        format!("NtUnloadKeyEx while held: {}", status::describe(r)),
    );
    ctx.check(
        event.signalled().is_none(),
        "the event is not signalled yet",
    );
    ctx.check(
        kernel::with(|k| k.hives.hives.contains_key(&user.to_ascii_uppercase())),
        "the hive is still loaded",
    );
    let l = log(&s);
    let pre = first(&l, PRE_UNLOAD_KEY).unwrap_or_default();
    ctx.check(
        pre.extra == 1 && pre.object_name == hash(&user) && pre.owner == u64::from(SYSTEM_PID),
        format!("pre-unload carries UserEvent and the hive's root object ({pre:x?})"),
    );
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    let pending = u64::from(STATUS_PENDING as u32);
    ctx.check(
        first(&l, POST_UNLOAD_KEY).is_some_and(|e| e.extra == pending),
        "post-unload carries STATUS_PENDING",
    );
    log_start(&s);
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    // WRK `cmdelay.c`: the closed subkey's control block waits on the delayed-dereference
    // list, holding the root, until the list's timer (5 s) runs its worker.
    still_unloading(ctx, &event, &user, "at the last close");
    timer::advance(4_000);
    still_unloading(ctx, &event, &user, "4 s after the last close");
    timer::advance(1_000);
    let done = event.wait(Duration::from_secs(5));
    ctx.check(
        done == Some(hive::UnloadCompletion {
            pid: SYSTEM_PID,
            thread: DEFERRED_UNLOAD_THREAD,
        }),
        format!(
            "5 s after the last close (CmpDelayDerefKCBIntervalInSeconds) a system worker thread completed the unload: {done:?} (closing thread: processor {})",
            crate::machine::cpu::processor_number()
        ),
    );
    ctx.check(
        !hive::hive_list()
            .iter()
            .any(|(m, _)| m.eq_ignore_ascii_case(&user)),
        "the hive is out of the hive list",
    );
    ctx.check(
        !kernel::with(|k| k.hives.hives.contains_key(&user.to_ascii_uppercase())),
        "the hive is unloaded",
    );
    let l = log(&s);
    ctx.check(
        first(&l, PRE_KEY_HANDLE_CLOSE).is_some_and(|e| e.owner == u64::from(p)),
        "the close was notified on the closing thread",
    );
    ctx.check(
        !l.iter()
            .any(|e| e.class == PRE_UNLOAD_KEY || e.class == POST_UNLOAD_KEY),
        "the completion sends no further unload notification",
    );
    deferred_unload_window(ctx, p, &user);
    // A hive nothing holds unloads at once, and the event is already signalled.
    let r = hive::load_hive(SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(r == STATUS_SUCCESS, "loaded again");
    let (r, event) = hive::unload_key_ex(SYSTEM_PID, &user);
    ctx.check(
        r == STATUS_SUCCESS && event.signalled().is_some_and(|c| c.pid == SYSTEM_PID),
        format!("a free hive unloads at once: {}", status::describe(r)),
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// A deferred unload whose last key closed is not complete: no event, the hive still loaded
/// and in the hive list (its file still in use). The event is waited on briefly: a late
/// unload queued (as the old model did at the close) runs on a detached worker thread, so
/// without the wait the check would race it; with the delay modelled nothing can set it.
fn still_unloading(ctx: &mut Ctx, event: &hive::UnloadEvent, mount: &str, when: &str) {
    ctx.check(
        event.wait(Duration::from_millis(300)).is_none()
            && kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase()))
            && hive::hive_list()
                .iter()
                .any(|(m, _)| m.eq_ignore_ascii_case(mount)),
        format!("{when}: the event is not set, the hive is still loaded and in the hive list"),
    );
}

/// Loads `mount`, has `p` open `key` under it, asks for a deferred unload and closes the
/// key: the unload is pending on the delayed dereference. Returns its event.
fn unload_after_close(ctx: &mut Ctx, p: u32, mount: &str, key: &str) -> Option<hive::UnloadEvent> {
    let r = hive::load_hive(SYSTEM_PID, mount, r"\??\C:\Users\kemu\NTUSER.DAT");
    let path = if key.is_empty() {
        mount.to_owned()
    } else {
        format!(r"{mount}\{key}")
    };
    let h = hive::open_key(p, &path, KEY_READ, true);
    let (u, event) = hive::unload_key_ex(SYSTEM_PID, mount);
    let ok = r == STATUS_SUCCESS && h.is_ok() && u == STATUS_PENDING;
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    ctx.check(
        ok,
        format!("{mount}: loaded, {key:?} open, NtUnloadKeyEx pending, {key:?} closed"),
    );
    ok.then_some(event)
}

/// When the delayed dereference that holds a deferred unload runs (WRK
/// `base/ntos/config/cmdelay.c`, `cmsubs.c`, `cmdelete.c`, `ntapi.c`): the timer is set only by
/// the first item queued while the list is idle ("up to" 5 s); NtQueryOpenSubKeysEx runs the
/// list down at once; closing the hive's root is no delay (its block keeps the unload's
/// reference); a key opened meanwhile holds the hive until it closes.
fn deferred_unload_window(ctx: &mut Ctx, p: u32, user: &str) {
    // Up to 5 s: an unrelated key's last close 3 s earlier set the timer.
    let other = hive::open_key(p, &format!(r"{SOFTWARE}\Classes"), KEY_READ, true);
    if let Ok(o) = other {
        let _ = hive::close_key(p, o);
    }
    timer::advance(3_000);
    if let Some(event) = unload_after_close(ctx, p, user, "Software") {
        still_unloading(ctx, &event, user, "armed earlier by another key's close");
        timer::advance(2_000);
        ctx.check(
            event.wait(Duration::from_secs(5)).is_some(),
            "2 s later the timer set by the earlier close (5 s) ran the list: unloaded",
        );
    }
    // NtQueryOpenSubKeysEx runs the list down (CmpSearchForOpenSubKeys → CmpCleanUpKCBCacheTable).
    if let Some(event) = unload_after_close(ctx, p, user, "Software") {
        still_unloading(ctx, &event, user, "before the query");
        let listed = hive::open_subkeys(user);
        ctx.check(
            listed.as_ref().is_ok_and(Vec::is_empty),
            format!("NtQueryOpenSubKeysEx in the window: success, no key listed ({listed:?})"),
        );
        ctx.check(
            event.wait(Duration::from_secs(5)).is_some(),
            "the query's run-down of the delayed dereferences queued the late unload: unloaded with no time passing",
        );
        timer::advance(5_000);
    }
    // The root's close: no delay (CmpDoQueueLateUnloadWorker sees only the unload's reference).
    if let Some(event) = unload_after_close(ctx, p, user, "") {
        ctx.check(
            event.wait(Duration::from_secs(5)).is_some(),
            "the hive's root as the last key: unloaded at its close",
        );
    }
    // A key opened in the window holds the hive (a frozen hive still opens: HIVE_IS_UNLOADING
    // is set only during an unload attempt, `cmapi.c` CmUnloadKey; `cmdelete.c`
    // CmpLateUnloadHiveWorker: "opened a handle inside this hive; bad luck, we can't unload").
    if let Some(event) = unload_after_close(ctx, p, user, "Software") {
        let late = hive::open_key(p, &format!(r"{user}\Environment"), KEY_READ, true);
        ctx.check(late.is_ok(), "a key of the hive opens during the window");
        timer::advance(5_000);
        still_unloading(
            ctx,
            &event,
            user,
            "the list ran with a key opened in the window open",
        );
        if let Ok(l) = late {
            let _ = hive::close_key(p, l);
        }
        still_unloading(ctx, &event, user, "at that key's close");
        timer::advance(5_000);
        ctx.check(
            event.wait(Duration::from_secs(5)).is_some(),
            "5 s after that key's close: unloaded",
        );
    }
}

/// The classes of an unload in the order NtUnloadKey2 delivers them (WRK
/// `base/ntos/config/ntapi.c`): the private open of the root, the unload, the private
/// object's deletion.
const UNLOAD_SEQUENCE: [u64; 5] = [
    PRE_CREATE_KEY_EX,
    POST_CREATE_KEY_EX,
    PRE_UNLOAD_KEY,
    POST_UNLOAD_KEY,
    PRE_KEY_HANDLE_CLOSE,
];

/// One unload's log, checked: the sequence, on the caller's thread, all about one object.
fn check_unload_log(ctx: &mut Ctx, l: &[Entry], caller: u32, mount: &str, status: u64, what: &str) {
    let classes: Vec<u64> = l
        .iter()
        .map(|e| e.class)
        .filter(|c| *c != CONTEXT_CLEANUP && *c != POST_KEY_HANDLE_CLOSE)
        .collect();
    ctx.check(
        classes == UNLOAD_SEQUENCE,
        format!("{what}: create, post-create, pre-unload, post-unload, close ({classes:?})"),
    );
    let create = first(l, PRE_CREATE_KEY_EX).unwrap_or_default();
    ctx.check(
        create.name == hash(mount)
            && create.extra & OBJ_KERNEL_HANDLE != 0
            && create.extra >> 32 == 0
            && create.owner == u64::from(caller),
        format!(
            "{what}: the root is created by name with OBJ_KERNEL_HANDLE, KernelMode, on the caller's thread ({create:x?})"
        ),
    );
    let opened = first(l, POST_CREATE_KEY_EX).unwrap_or_default();
    let pre = first(l, PRE_UNLOAD_KEY).unwrap_or_default();
    let post = first(l, POST_UNLOAD_KEY).unwrap_or_default();
    let close = first(l, PRE_KEY_HANDLE_CLOSE).unwrap_or_default();
    ctx.check(
        opened.extra == 0
            && opened.object != 0
            && pre.object == opened.object
            && close.object == opened.object
            && close.owner == u64::from(caller),
        format!(
            "{what}: the unload carries the object of its own open, closed on the caller's thread after the post ({opened:x?} {pre:x?} {close:x?})"
        ),
    );
    ctx.check(
        post.extra == status,
        format!(
            "{what}: post-unload status {:#x} (want {status:#x})",
            post.extra
        ),
    );
}

/// CurrentControlSet made a link to ControlSet001 (as the hivetrack scenarios' boot makes it),
/// and a services.exe process with the test driver's device open.
fn services_with_device(ctx: &mut Ctx) -> Option<(u32, io::FileHandle)> {
    let _ = super::tracking::current_control_set();
    let p = new_process(
        ctx,
        r"\Device\HarddiskVolume2\Windows\System32\services.exe",
    );
    device_of(ctx, p).map(|d| (p, d))
}

/// The test driver's device opened by process `pid` (as an administrator, read and write).
fn device_of(ctx: &mut Ctx, pid: u32) -> Option<io::FileHandle> {
    let device = io::open(
        r"\\.\KemuTest",
        Caller::Admin,
        pid,
        GENERIC_READ | GENERIC_WRITE,
    );
    ctx.check(
        device.is_ok(),
        format!("process {pid} opens the test driver"),
    );
    device.ok()
}

/// A driver's own `ZwOpenKey` + `ZwClose` are registry operations like any other: Learn
/// REG_CREATE_KEY_INFORMATION_V1 Remarks (passed "every time that a thread tries to create a
/// key", also "when a kernel-mode driver calls ZwCreateKey"); regfltr `sys/pre.c`
/// PreNotificationBlockSample (its own `ZwCreateKey` is blocked by its own callback). The test
/// driver opens the hive list as hivetrack's `seed_hives` does, on the requesting thread, and
/// logs what its own callback gets (fidelity audit 16b, F4: the old model delivered nothing).
#[allow(clippy::too_many_lines)] // one linear script of checks
fn td_zw_open(ctx: &mut Ctx) {
    const SYSTEM: &str = r"\REGISTRY\MACHINE\SYSTEM";
    const STATUS_REPARSE: u64 = 0x104;
    let Some(s) = start(ctx) else { return };
    let Some((p, device)) = services_with_device(ctx) else {
        return;
    };
    let objects = hive::key_objects();
    let given = r"\Registry\Machine\System\CurrentControlSet\Control\hivelist";
    // The key the link leads to, named as stored (the hive list key is spelled `hivelist`).
    let target = format!(r"{SYSTEM}\ControlSet001\Control\hivelist");
    for (argument, what) in [
        (0u64, "OBJ_KERNEL_HANDLE"),
        (1, "no OBJ_KERNEL_HANDLE"),
        (
            2,
            "OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK, case-sensitive",
        ),
    ] {
        log_start(&s);
        let [opened, handle, enumerated, closed] = four_on(device, IOCTL_ZW_OPEN, argument);
        ctx.check(
            opened == 0 && enumerated == 0 && closed == 0,
            format!(
                "{what}: ZwOpenKey {opened:#x}, ZwEnumerateValueKey {enumerated:#x}, ZwClose {closed:#x}"
            ),
        );
        let kernel = handle & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT;
        ctx.check(
            kernel == (argument != 1),
            format!("{what}: handle {handle:#x} (kernel bit {kernel})"),
        );
        let l = log(&s);
        let classes: Vec<u64> = l.iter().map(|e| e.class).collect();
        ctx.check(
            classes
                == [
                    PRE_OPEN_KEY_EX,
                    POST_OPEN_KEY_EX,
                    PRE_OPEN_KEY_EX,
                    POST_OPEN_KEY_EX,
                    PRE_KEY_HANDLE_CLOSE,
                    CONTEXT_CLEANUP,
                    POST_KEY_HANDLE_CLOSE,
                ],
            format!(
                "{what}: its own callback gets the open at the link, the open at the target, and the close with its context's cleanup ({classes:?})"
            ),
        );
        let at = |i: usize| l.get(i).copied().unwrap_or_default();
        let (pre, reparse, pre2, post, close, post_close) =
            (at(0), at(1), at(2), at(3), at(4), at(6));
        // The caller's Attributes as given (nothing strips a kernel-mode caller's flags: WRK
        // `ob/obcreate.c`); OBJ_FORCE_ACCESS_CHECK makes the check UserMode (review 18b).
        let attributes = match argument {
            0 => 0x40 | OBJ_KERNEL_HANDLE,
            1 => 0x40,
            _ => OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK,
        };
        let check_mode = u64::from(argument == 2);
        ctx.check(
            pre.name == hash(given)
                && pre.extra & 0xFFFF_FFFF == attributes
                && pre.extra >> 32 == check_mode
                && pre.owner == u64::from(p)
                && reparse.extra == STATUS_REPARSE
                && pre2.name == hash(&target),
            format!(
                "{what}: the name as given, Attributes {attributes:#x}, CheckAccessMode {check_mode}, on the caller's thread; STATUS_REPARSE; then the link's target ({pre:x?} {reparse:x?} {pre2:x?})"
            ),
        );
        ctx.check(
            post.extra == 0
                && post.object != 0
                && post.object_name == hash(&target)
                && post.owner == u64::from(p),
            format!("{what}: the post-open has the hive list's key object ({post:x?})"),
        );
        // A kernel handle's close runs attached to System (ReactOS ObpCloseHandle); a handle
        // of the caller's table closes in the caller's process.
        let closing_pid = if argument == 1 { p } else { SYSTEM_PID };
        ctx.check(
            close.object == post.object
                && post_close.object == post.object
                && close.owner == u64::from(p)
                && close.current == u64::from(closing_pid),
            format!(
                "{what}: ZwClose ends the object on the caller's thread, in process {closing_pid} ({close:x?})"
            ),
        );
        ctx.check(
            hive::key_objects() == objects,
            format!(
                "{what}: no key object is left ({} before, {} after)",
                objects,
                hive::key_objects()
            ),
        );
    }
    io::close(device);
    process::exit_process(p);
    finish(ctx, s);
}

/// The hive list's values as a driver reads them by index (the test driver's own
/// `ZwEnumerateValueKey`): the hash of each value's name, up to STATUS_NO_MORE_ENTRIES.
fn hive_list_names(device: io::FileHandle) -> Vec<u64> {
    let mut names = Vec::new();
    for i in 0..16u64 {
        // Up to the first failure: STATUS_NO_MORE_ENTRIES past the last value.
        let [enumerated, name, _, opened] = four_on(device, IOCTL_HIVE_LIST_VALUE, i);
        if opened != 0 || enumerated != 0 {
            break;
        }
        names.push(name);
    }
    names
}

/// The kernel's own open of the hive list inside a load or unload, as the test driver's
/// callback logs it: the open by the kernel's name (WRK `cmhvlist.c` HIVE_LIST), ended at the
/// CurrentControlSet link (STATUS_REPARSE), again at the link's target, the post with the
/// hive list's key object, then that object's close — all on `p`'s thread, in `p`'s process
/// (a handle of `p`'s table: no OBJ_KERNEL_HANDLE), with Attributes OBJ_CASE_INSENSITIVE and
/// CheckAccessMode KernelMode (a Zw call). Checked between the operation's `pre` and `post`.
#[allow(clippy::too_many_arguments)] // one reading of the log: its classes, names and process
fn check_hive_list_open(
    ctx: &mut Ctx,
    l: &[Entry],
    (pre_class, post_class): (u64, u64),
    (open_pre, open_post): (u64, u64),
    p: u32,
    what: &str,
) {
    const STATUS_REPARSE: u64 = 0x104;
    let kernel_name = r"\registry\machine\system\currentcontrolset\control\hivelist";
    let target_given = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\control\hivelist";
    let stored = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Control\hivelist";
    let classes: Vec<u64> = l.iter().map(|e| e.class).collect();
    let start = classes.iter().position(|&c| c == pre_class);
    let end = classes.iter().position(|&c| c == post_class);
    let inner: Vec<Entry> = match (start, end) {
        (Some(a), Some(b)) if a < b => l.get(a + 1..b).map(<[Entry]>::to_vec).unwrap_or_default(),
        _ => Vec::new(),
    };
    let inner_classes: Vec<u64> = inner.iter().map(|e| e.class).collect();
    ctx.check(
        inner_classes
            == [
                open_pre,
                open_post,
                open_pre,
                open_post,
                PRE_KEY_HANDLE_CLOSE,
                CONTEXT_CLEANUP,
                POST_KEY_HANDLE_CLOSE,
            ],
        format!(
            "{what}: between its pre and post, the kernel's own open of the hive list (the link's reparse pair, the open at the target) and its close ({classes:?})"
        ),
    );
    let at = |i: usize| inner.get(i).copied().unwrap_or_default();
    let (pre, reparse, pre2, post, close) = (at(0), at(1), at(2), at(3), at(4));
    ctx.check(
        pre.name == hash(kernel_name)
            && pre.extra == 0x40
            && reparse.extra == STATUS_REPARSE
            && pre2.name == hash(target_given)
            && pre2.extra == 0x40,
        format!(
            "{what}: the open names {kernel_name} with Attributes OBJ_CASE_INSENSITIVE alone and CheckAccessMode KernelMode, reparses at CurrentControlSet ({pre:x?} {reparse:x?} {pre2:x?})"
        ),
    );
    ctx.check(
        [pre, reparse, pre2, post, close]
            .iter()
            .all(|e| e.owner == u64::from(p) && e.current == u64::from(p)),
        format!("{what}: on the caller's thread, in its process, the close too (a handle of its own table)"),
    );
    ctx.check(
        post.extra == 0
            && post.object != 0
            && post.object_name == hash(stored)
            && close.object == post.object,
        format!("{what}: the post has the hive list's key object, which the close ends ({post:x?} {close:x?})"),
    );
}

/// The kernel keeps `HKLM\SYSTEM\CurrentControlSet\Control\hivelist` itself: Windows Research
/// Kernel `cmapi.c` CmLoadKey calls `cmhvlist.c` CmpAddToHiveFileList after
/// CmpLinkHiveToMaster (ZwCreateKey of the list, ZwSetValueKey, NtClose), CmUnloadKey calls
/// CmpRemoveFromHiveFileList after CmpDestroyHive (ZwOpenKey, ZwDeleteValueKey, NtClose); a
/// new value goes at the end of the value list and a deleted one is squeezed out (`cmvalue.c`
/// CmpFindNameInList, CmpAddValueToList, CmpRemoveValueFromList). So a driver reading the list
/// by index sees load order, shifted down at an unload, and its callback sees the kernel's
/// own opens inside the loads and unloads. Before 2026-12-06 the model served the list sorted
/// by mount point, app hives included, and made no open.
#[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one linear script; s, p, l, r, h: session, process, log, result, hashes
fn td_hive_list(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, device)) = services_with_device(ctx) else {
        return;
    };
    let system = r"\REGISTRY\MACHINE\SYSTEM";
    let user = format!(r"{HKU}\{SID}");
    let components = r"\REGISTRY\MACHINE\COMPONENTS";
    let classes = format!(r"{HKU}\{SID}_Classes");
    let h = |names: &[&str]| names.iter().map(|n| hash(n)).collect::<Vec<u64>>();
    // The boot hives, in the order the boot mounted them.
    let names = hive_list_names(device);
    ctx.check(
        names == h(&[SOFTWARE, system]),
        format!(
            "boot: SOFTWARE then SYSTEM, as mounted ({} values)",
            names.len()
        ),
    );
    // The user's hive, then COMPONENTS (which sorts first by name), then the user's classes.
    log_start(&s);
    let r = hive::load_hive(p, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(
        r == STATUS_SUCCESS,
        format!("load {user}: {}", status::describe(r)),
    );
    let l = log(&s);
    check_hive_list_open(
        ctx,
        &l,
        (PRE_LOAD_KEY, POST_LOAD_KEY),
        (PRE_CREATE_KEY_EX, POST_CREATE_KEY_EX),
        p,
        "a load",
    );
    let r = hive::load_hive(
        p,
        components,
        r"\Device\HarddiskVolume2\Windows\System32\config\COMPONENTS",
    );
    ctx.check(
        r == STATUS_SUCCESS,
        format!("load {components}: {}", status::describe(r)),
    );
    let r = hive::load_hive(
        p,
        &classes,
        r"\??\C:\Users\kemu\AppData\Local\Microsoft\Windows\UsrClass.dat",
    );
    ctx.check(
        r == STATUS_SUCCESS,
        format!("load {classes}: {}", status::describe(r)),
    );
    let names = hive_list_names(device);
    ctx.check(
        names == h(&[SOFTWARE, system, &user, components, &classes]),
        format!(
            "the values follow load order: SOFTWARE, SYSTEM, the user's, COMPONENTS, the classes ({} values)",
            names.len()
        ),
    );
    // An application hive is loaded and not listed, and its load opens no hive list.
    log_start(&s);
    let app = hive::load_app_key(p, r"\??\C:\ProgramData\App\settings.dat");
    ctx.check(app.is_ok(), format!("RegLoadAppKey: {app:?}"));
    let l = log(&s);
    let kernel_name = r"\registry\machine\system\currentcontrolset\control\hivelist";
    ctx.check(
        !l.iter().any(|e| e.name == hash(kernel_name)),
        "the app hive's load opens no hive list",
    );
    let names = hive_list_names(device);
    ctx.check(
        names.len() == 5,
        format!("the app hive is not listed ({} values)", names.len()),
    );
    if let Ok((root, _)) = app {
        let _ = hive::close_key(p, root);
    }
    // The user's hive unloads: its value is squeezed out and the later ones move down.
    log_start(&s);
    let r = hive::unload_hive(p, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!("unload {user}: {}", status::describe(r)),
    );
    let l = log(&s);
    check_hive_list_open(
        ctx,
        &l,
        (PRE_UNLOAD_KEY, POST_UNLOAD_KEY),
        (PRE_OPEN_KEY_EX, POST_OPEN_KEY_EX),
        p,
        "an unload",
    );
    let names = hive_list_names(device);
    ctx.check(
        names == h(&[SOFTWARE, system, components, &classes]),
        format!(
            "after the unload COMPONENTS is value 2 and the classes value 3 ({} values)",
            names.len()
        ),
    );
    for mount in [components, classes.as_str()] {
        let r = hive::unload_hive(p, mount);
        ctx.check(
            r == STATUS_SUCCESS,
            format!("unload {mount}: {}", status::describe(r)),
        );
    }
    let names = hive_list_names(device);
    ctx.check(
        names == h(&[SOFTWARE, system]),
        format!("the boot hives are left ({} values)", names.len()),
    );
    io::close(device);
    process::exit_process(p);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q: processes; s, l, r, h: session, log, result, handle
fn td_unload_sequence(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let user = format!(r"{HKU}\{SID}");
    let r = hive::load_hive(SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(r == STATUS_SUCCESS, "user hive loaded");
    let p = new_process(ctx, r"\Device\HarddiskVolume2\leaky.exe");
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let h = hive::open_key(p, &format!(r"{user}\Software"), KEY_READ, true);
    ctx.check(h.is_ok(), "a process holds a key of the hive");
    log_start(&s);
    let r = hive::unload_hive(q, &user);
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    let cannot = u64::from(hive::STATUS_CANNOT_DELETE as u32);
    ctx.check(
        r == hive::STATUS_CANNOT_DELETE,
        format!("held: {}", status::describe(r)),
    );
    let l = log(&s);
    check_unload_log(ctx, &l, q, &user, cannot, "a failed unload");
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    log_start(&s);
    let r = hive::unload_hive(q, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!("free: {}", status::describe(r)),
    );
    let l = log(&s);
    check_unload_log(ctx, &l, q, &user, 0, "a carried-out unload");
    ctx.check(
        !kernel::with(|k| k.hives.hives.contains_key(&user.to_ascii_uppercase())),
        "the hive is unloaded",
    );
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

/// Two threads of one process, each unloading a hive, interleaved: thread 1's whole unload
/// runs inside thread 0's, between its RegNtPreUnLoadKey and RegNtPostUnLoadKey
/// (`hive::unload_hive_interrupted`; `io::with_thread` plays the second thread on the same OS
/// thread). Windows gives every thread its own id (Learn `PsGetCurrentThreadId`; WRK
/// `ps/create.c` PspCreateThread, a CID table entry per thread) and runs a registry callback
/// "in the context of the thread that is performing the registry operation" (Learn
/// `EX_CALLBACK_FUNCTION` Remarks), so a pre and its post share a thread id no other thread
/// of the process has — what hivetrack's per-thread unload slots rely on
/// (`driver/src/callbacks.rs` `UnloadSlots`; the hivetrack scenario `unload-two-threads`).
/// Each post's `PreInformation` is its own pre's structure (Learn
/// `REG_POST_OPERATION_INFORMATION`: "A pointer to the structure that contains preprocessing
/// information for the registry operation that has completed"). Fails on the model before 2026-12-06, whose thread id was `pid * 4 + 4`
/// (fidelity audit 22e, H1). Each thread's `PsGetCurrentThread` is its own ETHREAD (Learn:
/// "a pointer to the current thread's ETHREAD"), the same in its pre and post, and
/// `PsGetThreadId` of it is its `PsGetCurrentThreadId` (WRK `ps/pshelper.c`, `ps/create.c`):
/// 2 of 18 checks fail on the model whose ETHREAD was one per process (until 2026-12-06).
#[allow(clippy::too_many_lines)] // one linear script of checks
fn td_thread_ids(ctx: &mut Ctx) {
    const OTHER_SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";
    let Some(s) = start(ctx) else { return };
    let first_mount = format!(r"{HKU}\{SID}");
    let second_mount = format!(r"{HKU}\{OTHER_SID}");
    for (mount, file) in [
        (&first_mount, r"\??\C:\Users\kemu\NTUSER.DAT"),
        (&second_mount, r"\??\C:\Users\other\NTUSER.DAT"),
    ] {
        let r = hive::load_hive(SYSTEM_PID, mount, file);
        ctx.check(
            r == STATUS_SUCCESS,
            format!("{mount} loaded: {}", status::describe(r)),
        );
    }
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    log_start(&s);
    let mut inner = STATUS_SUCCESS;
    let outer = hive::unload_hive_interrupted(q, &first_mount, || {
        inner = io::with_thread(1, || hive::unload_hive(q, &second_mount));
    });
    ctx.check(
        outer == STATUS_SUCCESS && inner == STATUS_SUCCESS,
        format!(
            "both unload: {} and {}",
            status::describe(outer),
            status::describe(inner)
        ),
    );
    let l = log(&s);
    let at = |class: u64| -> Vec<(usize, Entry)> {
        l.iter()
            .copied()
            .enumerate()
            .filter(|(_, e)| e.class == class)
            .collect()
    };
    let (pres, posts) = (at(PRE_UNLOAD_KEY), at(POST_UNLOAD_KEY));
    ctx.check(
        pres.len() == 2 && posts.len() == 2,
        format!(
            "two pre- and two post-unloads: {} and {}",
            pres.len(),
            posts.len()
        ),
    );
    let (
        Some(&(first_pre_at, first_pre)),
        Some(&(second_pre_at, second_pre)),
        Some(&(second_post_at, second_post)),
        Some(&(first_post_at, first_post)),
    ) = (pres.first(), pres.get(1), posts.first(), posts.get(1))
    else {
        finish(ctx, s);
        return;
    };
    ctx.check(
        first_pre.object_name == hash(&first_mount)
            && second_pre.object_name == hash(&second_mount),
        "the first pre is the first hive's unload, the second the second's",
    );
    ctx.check(
        first_pre_at < second_pre_at && second_pre_at < second_post_at && second_post_at < first_post_at,
        format!("interleaved: pre A {first_pre_at} < pre B {second_pre_at} < post B {second_post_at} < post A {first_post_at}"),
    );
    ctx.check(
        [
            first_pre.owner,
            second_pre.owner,
            first_post.owner,
            second_post.owner,
        ] == [u64::from(q); 4],
        "all four in the unloading process",
    );
    ctx.check(
        first_pre.thread != 0 && second_pre.thread != 0 && first_pre.thread != second_pre.thread,
        format!(
            "the two threads of the process have their own ids: {:#x} and {:#x}",
            first_pre.thread, second_pre.thread
        ),
    );
    ctx.check(
        first_post.thread == first_pre.thread,
        format!(
            "the first unload's post runs on its pre's thread ({:#x}, pre {:#x})",
            first_post.thread, first_pre.thread
        ),
    );
    ctx.check(
        second_post.thread == second_pre.thread,
        format!(
            "the second unload's post runs on its pre's thread ({:#x}, pre {:#x})",
            second_post.thread, second_pre.thread
        ),
    );
    // Learn PsGetCurrentThread: "Returns a pointer to the current thread's ETHREAD"; WRK
    // `ps/pshelper.c` PsGetThreadId is `Thread->Cid.UniqueThread` and `ps/create.c`
    // PsGetCurrentThreadId `PsGetCurrentThread()->Cid.UniqueThread`: each thread its own
    // ETHREAD, the same one in its pre and its post, whose id is the thread's.
    ctx.check(
        first_pre.ethread != 0
            && second_pre.ethread != 0
            && first_pre.ethread != second_pre.ethread,
        format!(
            "the two threads have their own ETHREADs (PsGetCurrentThread): {:#x} and {:#x}",
            first_pre.ethread, second_pre.ethread
        ),
    );
    ctx.check(
        first_post.ethread == first_pre.ethread && second_post.ethread == second_pre.ethread,
        format!(
            "each unload's post sees its pre's ETHREAD (A {:#x}/{:#x}, B {:#x}/{:#x})",
            first_pre.ethread, first_post.ethread, second_pre.ethread, second_post.ethread
        ),
    );
    ctx.check(
        [first_pre, second_pre, first_post, second_post]
            .iter()
            .all(|e| e.ethread_id == e.thread),
        format!(
            "PsGetThreadId(PsGetCurrentThread()) is PsGetCurrentThreadId on both threads ({:#x}/{:#x}, {:#x}/{:#x})",
            first_pre.ethread_id, first_pre.thread, second_pre.ethread_id, second_pre.thread
        ),
    );
    ctx.check(
        first_pre.object != 0 && first_post.name == first_pre.object && second_post.name == second_pre.object,
        format!(
            "each post's PreInformation carries its own pre's Object (A {:#x}/{:#x}, B {:#x}/{:#x})",
            first_post.name, first_pre.object, second_post.name, second_pre.object
        ),
    );
    process::exit_process(q);
    finish(ctx, s);
}

/// NtUnloadKey2(TargetKey, REG_FORCE_UNLOAD), what the User Profile Service does after its
/// event 1530 (Learn archive, "More on User Profile Service functionality"): WRK `ntapi.c`
/// NtUnloadKey2 and `cmapi.c` CmUnloadKey's force path (`CmpSearchForOpenSubKeys(Kcb,
/// SearchAndDeref, ...)` marks the blocks below the root deleted; the key bodies stay with
/// their handles), `cmdelete.c` CmpDeleteKeyObject (the close callbacks at every key
/// object's deletion). Fails on the model before 2026-12-06, which ignored the flag (audit
/// 22b M6): the forced unload answered STATUS_CANNOT_DELETE.
#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // s, r, l, p, q: session, status, log, processes
fn td_force_unload(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let user = format!(r"{HKU}\{SID}");
    let file = r"\??\C:\Users\kemu\NTUSER.DAT";
    let r = hive::load_hive(SYSTEM_PID, &user, file);
    ctx.check(r == STATUS_SUCCESS, "user hive loaded");
    let Some((p, dev)) =
        super::key_id::process_with_device(ctx, r"\Device\HarddiskVolume2\profleak.exe")
    else {
        finish(ctx, s);
        return;
    };
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let software = format!(r"{user}\Software");
    let state = format!(r"{software}\Sync\State");
    let held: Vec<u64> = [&software, &format!(r"{software}\Sync"), &state]
        .into_iter()
        .map(|k| hive::open_key(p, k, KEY_READ, true).unwrap_or(0))
        .collect();
    ctx.check(
        held.iter().all(|h| *h != 0),
        "the application holds three keys of the hive",
    );
    let objects: Vec<u64> = held
        .iter()
        .map(|h| kernel::with(|k| k.hives.handles.get(&(p, *h)).copied()).unwrap_or(0) as u64)
        .collect();
    let before = super::key_id::key_id(dev, held[2]);
    ctx.check(
        before.status == 0 && before.id != 0 && before.name == hash(&state),
        format!("before: State by its id and name ({before:x?})"),
    );
    let r = hive::unload_hive(q, &user);
    ctx.check(
        r == hive::STATUS_CANNOT_DELETE,
        format!("the unload without the flag fails: {}", status::describe(r)),
    );
    // The forced unload: an ordinary unload's notifications, STATUS_SUCCESS in the post, and
    // no close of the keys the application holds.
    log_start(&s);
    let r = hive::unload_key2(q, &user, hive::REG_FORCE_UNLOAD);
    ctx.check(
        r == STATUS_SUCCESS,
        format!(
            "NtUnloadKey2(REG_FORCE_UNLOAD) of the held hive: {}",
            status::describe(r)
        ),
    );
    let l = log(&s);
    check_unload_log(ctx, &l, q, &user, 0, "a forced unload");
    let closed: Vec<u64> = l
        .iter()
        .filter(|e| e.class == PRE_KEY_HANDLE_CLOSE || e.class == CONTEXT_CLEANUP)
        .map(|e| e.object)
        .collect();
    ctx.check(
        closed.iter().all(|o| !objects.contains(o)),
        format!("the application's key objects get no close notification from it ({closed:x?})"),
    );
    ctx.check(
        !kernel::with(|k| k.hives.hives.contains_key(&user.to_ascii_uppercase()))
            && !hive::hive_list()
                .iter()
                .any(|(m, _)| m.eq_ignore_ascii_case(&user)),
        "the hive is unloaded and out of the hive list",
    );
    // The application's handles stay open, on keys marked deleted.
    let after = super::key_id::key_id(dev, held[2]);
    ctx.check(
        after.status == 0 && after.id == before.id && after.name == hash(&state),
        format!("State's object keeps its id and name (inference; {before:x?} -> {after:x?})"),
    );
    let q1 = hive::query_key_name(p, held[2]);
    let rel = hive::open_key_at(p, Some(held[1]), "State", KEY_READ, false);
    ctx.check(
        q1 == Err(status::STATUS_KEY_DELETED) && rel == Err(status::STATUS_KEY_DELETED),
        format!(
            "its handles answer STATUS_KEY_DELETED (NtQueryKey {q1:?}, a relative open {rel:?})"
        ),
    );
    // The user's next logon: the same file at the same mount; the new hive's keys are new.
    let r = hive::load_hive(SYSTEM_PID, &user, file);
    ctx.check(
        r == STATUS_SUCCESS,
        format!(
            "the next logon loads the hive again: {}",
            status::describe(r)
        ),
    );
    // (The model's hive files keep no keys: the parents are created again, and closed.)
    for k in [&software, &format!(r"{software}\Sync")] {
        if let Ok(h) = hive::open_key(p, k, KEY_READ, true) {
            let _ = hive::close_key(p, h);
        }
    }
    let fresh = hive::open_key(p, &state, KEY_READ, true).unwrap_or(0);
    let new_id = super::key_id::key_id(dev, fresh);
    ctx.check(
        new_id.status == 0 && new_id.id != before.id && new_id.name == hash(&state),
        format!(
            "State in the new hive is a new key: a new id ({:#x}, the old {:#x})",
            new_id.id, before.id
        ),
    );
    let listed = hive::open_subkeys(&user).unwrap_or_default();
    ctx.check(
        listed.len() == 1 && listed[0].1.eq_ignore_ascii_case(&state),
        format!("the kernel lists the new State alone, none of the old hive's objects: {listed:?}"),
    );
    // The application closes the old handles: each object's deletion is notified as any.
    log_start(&s);
    super::key_id::close(p, &held);
    let l = log(&s);
    for (o, name) in objects
        .iter()
        .zip([&software, &format!(r"{software}\Sync"), &state])
    {
        let pre: Vec<&Entry> = l
            .iter()
            .filter(|e| e.class == PRE_KEY_HANDLE_CLOSE && e.object == *o)
            .collect();
        let cleanup = l
            .iter()
            .filter(|e| e.class == CONTEXT_CLEANUP && e.object == *o && e.extra == 1)
            .count();
        let post: Vec<&Entry> = l
            .iter()
            .filter(|e| e.class == POST_KEY_HANDLE_CLOSE && e.object == *o)
            .collect();
        ctx.check(
            pre.len() == 1
                && pre[0].owner == u64::from(p)
                && pre[0].object_name == hash(name)
                && cleanup == 1
                && post.len() == 1
                && post[0].extra == 0,
            format!(
                "the stale {name}'s close: pre-close on the closing thread naming it, its context cleanup, post-close with STATUS_SUCCESS ({pre:x?} {cleanup} {post:x?})"
            ),
        );
    }
    let listed = hive::open_subkeys(&user).unwrap_or_default();
    ctx.check(
        listed.len() == 1,
        format!("the new hive is still held by its own key alone: {listed:?}"),
    );
    super::key_id::close(p, &[fresh]);
    let r = hive::unload_hive(q, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!(
            "the new hive unloads once its key is closed: {}",
            status::describe(r)
        ),
    );
    io::close(dev);
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

/// Unloading something that is not a loaded hive's root (fidelity audit 19a, F6; the old
/// model answered STATUS_OBJECT_NAME_NOT_FOUND at once, with no notification). WRK
/// `ntapi.c` NtUnloadKey2 opens the target with a private create (`ParseContext.CreateOperation
/// = TRUE`) before anything else; `cmapi.c` CmUnloadKey refuses a key that is not its hive's
/// root (STATUS_INVALID_PARAMETER); `cmparse.c` refuses a create in the master hive
/// (CmpNoMasterCreates: STATUS_INVALID_PARAMETER) and a path missing more than its last
/// component (NAME_NOT_FOUND); `ntapi.c` NtQueryOpenSubKeysEx refuses a non-root key
/// (STATUS_INVALID_PARAMETER).
#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // s, r, l, p, q: session, status, log, processes
fn td_unload_not_root(ctx: &mut Ctx) {
    const INVALID: u64 = 0xC000_000D;
    const NOT_FOUND: u64 = 0xC000_0034;
    let Some(s) = start(ctx) else { return };
    let user = format!(r"{HKU}\{SID}");
    let r = hive::load_hive(SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(r == STATUS_SUCCESS, "user hive loaded");
    let p = new_process(ctx, r"\Device\HarddiskVolume2\app.exe");
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let software = format!(r"{user}\Software");
    if let Ok(h) = hive::open_key(p, &software, KEY_READ, true) {
        let _ = hive::close_key(p, h);
    }
    // An existing subkey: opened, refused, closed.
    log_start(&s);
    let r = hive::unload_hive(q, &software);
    ctx.check(
        r == status::STATUS_INVALID_PARAMETER,
        format!("unload of a subkey: {}", status::describe(r)),
    );
    let l = log(&s);
    check_unload_log(ctx, &l, q, &software, INVALID, "a subkey's unload");
    // NtQueryOpenSubKeysEx of the subkey, and of a key that is not there.
    let listed = hive::open_subkeys(&software);
    ctx.check(
        listed == Err(status::STATUS_INVALID_PARAMETER),
        format!("NtQueryOpenSubKeysEx of a subkey: {listed:?}"),
    );
    let listed = hive::open_subkeys(&format!(r"{user}\Absent"));
    ctx.check(
        listed == Err(status::STATUS_OBJECT_NAME_NOT_FOUND),
        format!("NtQueryOpenSubKeysEx of a missing key: {listed:?}"),
    );
    // A missing last component inside the hive: the private create makes it.
    let typo = format!(r"{user}\Sofware");
    log_start(&s);
    let r = hive::unload_hive(q, &typo);
    ctx.check(
        r == status::STATUS_INVALID_PARAMETER,
        format!("unload of a missing subkey: {}", status::describe(r)),
    );
    let l = log(&s);
    check_unload_log(ctx, &l, q, &typo, INVALID, "a missing subkey's unload");
    let made = hive::open_key(p, &typo, KEY_READ, false);
    ctx.check(
        made.is_ok(),
        format!("the unload's private create made {typo}: {made:?}"),
    );
    if let Ok(h) = made {
        let _ = hive::close_key(p, h);
    }
    ctx.check(
        kernel::with(|k| k.hives.hives.contains_key(&user.to_ascii_uppercase())),
        "the hive is still loaded",
    );
    // The hive's own unload, then a second one: the parse finds no key in the master hive and
    // may not create one there.
    let r = hive::unload_hive(q, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!("unloaded: {}", status::describe(r)),
    );
    for (path, want, what) in [
        (user, INVALID, "a second unload of the hive"),
        (
            format!(r"{HKU}\S-1-5-21-9\Software"),
            NOT_FOUND,
            "an unload two components short",
        ),
    ] {
        log_start(&s);
        let r = hive::unload_hive(q, &path);
        #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
        let got = u64::from(r as u32);
        let l = log(&s);
        let classes: Vec<u64> = l.iter().map(|e| e.class).collect();
        let create = first(&l, PRE_CREATE_KEY_EX).unwrap_or_default();
        let post = first(&l, POST_CREATE_KEY_EX).unwrap_or_default();
        ctx.check(
            got == want
                && classes == [PRE_CREATE_KEY_EX, POST_CREATE_KEY_EX]
                && create.name == hash(&path)
                && create.owner == u64::from(q)
                && post.extra == want,
            format!(
                "{what}: a notified private create that fails with {want:#x} in the parse, no unload notification ({}, {classes:?}, {post:x?})",
                status::describe(r)
            ),
        );
    }
    // A user's create right under HKEY_USERS fails the same way.
    let r = hive::open_key(p, &format!(r"{HKU}\New"), KEY_READ, true);
    ctx.check(
        r == Err(status::STATUS_INVALID_PARAMETER),
        format!("a create in the master hive: {r:?}"),
    );
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

/// The unload's private object is dereferenced after the unload; with deletion deferred to a
/// system worker it lives on past a successful unload. It is the old hive's (WRK
/// `CmUnloadKey` marks the hive's KCBs deleted): a new load at the same mount must unload
/// while it still waits for deletion, and the kernel's list must not show it.
fn td_unload_deferred_delete(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let user = format!(r"{HKU}\{SID}");
    let file = r"\??\C:\Users\kemu\NTUSER.DAT";
    ctx.check(
        hive::load_hive(SYSTEM_PID, &user, file) == STATUS_SUCCESS,
        "user hive loaded",
    );
    hive::set_deferred_deletion(true);
    let r = hive::unload_hive(SYSTEM_PID, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!("unloaded: {}", status::describe(r)),
    );
    ctx.check(
        hive::load_hive(SYSTEM_PID, &user, file) == STATUS_SUCCESS,
        "loaded again at the same mount",
    );
    let listed = hive::open_subkeys(&user);
    ctx.check(
        listed.as_ref().is_ok_and(Vec::is_empty),
        format!("the old unload's object, awaiting deletion, is not the new hive's: {listed:?}"),
    );
    let r = hive::unload_hive(SYSTEM_PID, &user);
    ctx.check(
        r == STATUS_SUCCESS,
        format!(
            "the new hive unloads, nothing of it open: {}",
            status::describe(r)
        ),
    );
    // The unloads' own objects, still awaiting deletion, keep their keys' ids; their KCBs were
    // marked deleted at the unloads (WRK cmapi.c CmUnloadKey), so the root of the hive loaded
    // again has an id of its own (fidelity audit F3: it inherited the old one).
    ctx.check(
        hive::load_hive(SYSTEM_PID, &user, file) == STATUS_SUCCESS,
        "loaded a third time",
    );
    let old_ids: Vec<usize> = kernel::with(|k| {
        let unloaded = format!("{} (unloaded)", user.to_uppercase());
        k.hives
            .objects
            .iter()
            .filter(|(_, o)| o.hive.eq_ignore_ascii_case(&unloaded))
            .filter_map(|(a, _)| k.hives.identify(*a))
            .map(|(id, _, _)| id)
            .collect()
    });
    let new_id = hive::open_key(SYSTEM_PID, &user, 0x2_0019, false)
        .ok()
        .and_then(|h| {
            let id = kernel::with(|k| {
                let o = k.hives.handles[&(SYSTEM_PID, h)];
                k.hives.identify(o).map(|(id, _, _)| id)
            });
            let _ = hive::close_key(SYSTEM_PID, h);
            id
        });
    ctx.check(
        old_ids.len() == 2 && new_id.is_some_and(|id| !old_ids.contains(&id)),
        format!(
            "the new root has an id of its own ({new_id:x?}), not one of the two unloads' objects ({old_ids:x?})"
        ),
    );
    let ran = hive::run_deferred_deletions();
    let r = hive::unload_hive(SYSTEM_PID, &user);
    ctx.check(
        r == STATUS_SUCCESS && ran == 3,
        format!(
            "the three objects deleted on the worker ({ran}), it unloads: {}",
            status::describe(r)
        ),
    );
    let _ = hive::run_deferred_deletions();
    hive::set_deferred_deletion(false);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q, a, b, c: processes; s, l, r: session, log, result
fn td_start_key(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let system = four(&s, IOCTL_START_KEY, u64::from(SYSTEM_PID));
    ctx.check(
        system == [1, SYSTEM_START_KEY, 4, 0],
        format!("the System process's start key ({system:x?})"),
    );
    log_start(&s);
    let a = new_process(ctx, r"\Device\HarddiskVolume2\a.exe");
    let b = new_process(ctx, r"\Device\HarddiskVolume2\b.exe");
    let ka = four(&s, IOCTL_START_KEY, u64::from(a));
    let kb = four(&s, IOCTL_START_KEY, u64::from(b));
    ctx.check(
        ka[1] > SYSTEM_START_KEY && kb[1] > ka[1],
        format!(
            "start keys grow: System {SYSTEM_START_KEY:#x} < a {:#x} < b {:#x}",
            ka[1], kb[1]
        ),
    );
    ctx.check(
        Some(ka[1]) == process::start_key_of(a) && ka[2] == u64::from(a),
        "the driver and the model agree on a's key",
    );
    ctx.check(
        process::create_process_with_pid(SYSTEM_PID, r"\Device\HarddiskVolume2\x.exe", false, b)
            == Err(STATUS_OBJECT_NAME_COLLISION),
        "a live process's pid is not handed out",
    );
    process::exit_process(a);
    // PID reuse: a new process gets the exited process's pid, and a new start key.
    let c =
        process::create_process_with_pid(SYSTEM_PID, r"\Device\HarddiskVolume2\c.exe", false, a);
    ctx.check(c == Ok(a), format!("a new process reuses pid {a}: {c:?}"));
    let kc = four(&s, IOCTL_START_KEY, u64::from(a));
    ctx.check(
        kc[1] > kb[1] && kc[1] != ka[1],
        format!(
            "same pid {a}, new start key {:#x} (was {:#x})",
            kc[1], ka[1]
        ),
    );
    let l = log(&s);
    let seq: Vec<(u64, u64, u64)> = l
        .iter()
        .filter(|e| e.class == PROCESS_CREATE || e.class == PROCESS_EXIT)
        .map(|e| (e.class, e.current, e.start_key))
        .collect();
    let (a64, b64) = (u64::from(a), u64::from(b));
    ctx.check(
        seq == [
            (PROCESS_CREATE, a64, ka[1]),
            (PROCESS_CREATE, b64, kb[1]),
            (PROCESS_EXIT, a64, ka[1]),
            (PROCESS_CREATE, a64, kc[1]),
        ],
        format!("the notify routine saw create a, create b, exit a, create a again with a new key: {seq:x?}"),
    );
    process::exit_process(a);
    process::exit_process(b);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q, a, b, c: processes; s, l, r: session, log, result
fn td_attached_thread(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, r"\Device\HarddiskVolume2\target.exe");
    // The driver attaches itself (KeStackAttachProcess / KeUnstackDetachProcess), in a
    // request from process q.
    let q = new_process(ctx, r"\Device\HarddiskVolume2\requester.exe");
    let Some(device) = device_of(ctx, q) else {
        return;
    };
    let r = four_on(device, IOCTL_ATTACH, u64::from(p));
    io::close(device);
    let (p64, q64) = (u64::from(p), u64::from(q));
    ctx.check(
        r == [q64, p64, p64, q64 << 32 | q64],
        format!(
            "attached: PsGetCurrentProcessId {} (the thread's, q), IoGetCurrentProcess/PsGetCurrentProcess {}/{} (the attached p); after detaching both q ({:#x})",
            r[0], r[1], r[2], r[3]
        ),
    );
    // A system thread attached to p opens a key (what kernel code between attach and detach
    // does): the notifications say System / p, and the handle lands in p's table.
    log_start(&s);
    let h = process::attached(p, || hive::open_key(SYSTEM_PID, SOFTWARE, KEY_READ, false));
    ctx.check(h.is_ok(), "opened while attached");
    let h = h.unwrap_or(0);
    let l = log(&s);
    let pre = first(&l, PRE_OPEN_KEY_EX).unwrap_or_default();
    ctx.check(
        pre.owner == u64::from(SYSTEM_PID)
            && pre.current == u64::from(p)
            && pre.start_key == process::start_key_of(p).unwrap_or(0),
        format!(
            "pre-open: PsGetCurrentProcessId {} and IoGetCurrentProcess {} disagree ({pre:x?})",
            pre.owner, pre.current
        ),
    );
    ctx.check(
        kernel::with(|k| {
            k.hives.handles_of(p).contains(&h) && !k.hives.handles_of(SYSTEM_PID).contains(&h)
        }),
        "the handle is in the attached process's table, not the System process's",
    );
    log_start(&s);
    let r = hive::close_key(p, h);
    let l = log(&s);
    ctx.check(
        r == STATUS_SUCCESS
            && first(&l, PRE_KEY_HANDLE_CLOSE)
                .is_some_and(|e| e.owner == u64::from(p) && e.current == u64::from(p)),
        "p's own thread closes it",
    );
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

/// `PsInitialSystemProcess` as hivetrack reads it (`driver/src/callbacks.rs`
/// `holder_process`: the holder of a kernel handle, which goes into the System process's
/// table, is that variable's process, named by `PsGetProcessId` and the start key). The
/// variable is a data export (wdm.h `extern PEPROCESS PsInitialSystemProcess`):
/// `MmGetSystemRoutineAddress` answers the variable's address, which holds the System
/// process's EPROCESS (WRK `base/ntos/ps/psinit.c`: `PsInitialSystemProcess` set once in
/// phase 1 by `ObReferenceObjectByHandle(PspInitialSystemProcessHandle, …)` and never
/// changed). The System process's threads run in it (WRK `ps/create.c`
/// PsCreateSystemThread: no ProcessHandle means `PsInitialSystemProcess`), so a System
/// thread's registry callback sees the same process (pid 4, the same start key) as the
/// variable: the two ways hivetrack names System agree. Fails (6 of 11 checks)
/// on a model that exports the EPROCESS itself instead of the variable's address.
#[allow(clippy::many_single_char_names)] // q: process; s, l, r, h: session, log, result, handle
fn td_system_process(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let q = new_process(ctx, r"\Device\HarddiskVolume2\requester.exe");
    let Some(device) = device_of(ctx, q) else {
        return;
    };
    let r = four_on(device, IOCTL_SYSTEM_PROCESS, 0);
    io::close(device);
    ctx.check(
        r[0] & 3 == 3,
        format!(
            "PsInitialSystemProcess resolves and holds a process ({:#x})",
            r[0]
        ),
    );
    ctx.check(
        r[0] & 4 == 4,
        "it is the object PsLookupProcessByProcessId(4) answers",
    );
    ctx.check(
        r[1] == u64::from(SYSTEM_PID) && r[2] == SYSTEM_START_KEY,
        format!(
            "PsGetProcessId {} (System: 4), start key {:#x} (System's, the first: {SYSTEM_START_KEY:#x})",
            r[1], r[2]
        ),
    );
    ctx.check(
        r[3] >> 32 == 1,
        "attached to it, IoGetCurrentProcess answers it",
    );
    ctx.check(
        r[3] & 0xFFFF_FFFF == u64::from(q),
        format!(
            "attached to it, PsGetCurrentProcessId stays the requester's ({} for {q})",
            r[3] & 0xFFFF_FFFF
        ),
    );
    // A System thread's own open: its callback runs in the process the variable names.
    log_start(&s);
    let h = hive::open_key(SYSTEM_PID, SOFTWARE, KEY_READ, false);
    let l = log(&s);
    ctx.check(h.is_ok(), "a System thread opens SOFTWARE");
    let pre = first(&l, PRE_OPEN_KEY_EX).unwrap_or_default();
    ctx.check(
        pre.owner == u64::from(SYSTEM_PID) && pre.current == r[1] && pre.start_key == r[2],
        format!(
            "the System thread's pre-open runs in the variable's process: PsGetCurrentProcessId {}, IoGetCurrentProcess pid {} and start key {:#x} (variable: {} / {:#x})",
            pre.owner, pre.current, pre.start_key, r[1], r[2]
        ),
    );
    if let Ok(h) = h {
        let _ = hive::close_key(SYSTEM_PID, h);
    }
    process::exit_process(q);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q, a, b, c: processes; s, l, r: session, log, result
fn td_kernel_handle(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, r"\Device\HarddiskVolume2\client.exe");
    let q = new_process(ctx, r"\Device\HarddiskVolume2\other.exe");
    let key = format!(r"{SOFTWARE}\Vendor");
    log_start(&s);
    let user = hive::open_key(p, &key, KEY_READ, true);
    let kh = hive::open_kernel_key(p, &key, KEY_READ, false);
    ctx.check(user.is_ok() && kh.is_ok(), "user and kernel handles opened");
    let (user, kh) = (user.unwrap_or(0), kh.unwrap_or(0));
    let l = log(&s);
    let opens: Vec<Entry> = l
        .iter()
        .copied()
        .filter(|e| e.class == PRE_CREATE_KEY_EX || e.class == PRE_OPEN_KEY_EX)
        .collect();
    let (u, k) = (
        opens.first().copied().unwrap_or_default(),
        opens.get(1).copied().unwrap_or_default(),
    );
    ctx.check(
        u.extra & OBJ_KERNEL_HANDLE == 0 && u.extra >> 32 == 1,
        format!(
            "user open: no OBJ_KERNEL_HANDLE, CheckAccessMode UserMode ({:#x})",
            u.extra
        ),
    );
    ctx.check(
        k.extra & OBJ_KERNEL_HANDLE != 0
            && k.extra >> 32 == 0
            && k.owner == u64::from(p)
            && k.current == u64::from(p),
        format!(
            "kernel open: OBJ_KERNEL_HANDLE, KernelMode, notified in the opening process {p} ({k:x?})"
        ),
    );
    ctx.check(
        first(&l, POST_OPEN_KEY_EX).is_some_and(|e| e.extra == 0),
        "post-open success",
    );
    ctx.check(
        kh & KERNEL_HANDLE_BIT == KERNEL_HANDLE_BIT
            && kernel::with(|k| {
                k.hives.handles_of(SYSTEM_PID).contains(&kh) && !k.hives.handles_of(p).contains(&kh)
            }),
        format!("the kernel handle {kh:#x} is in the System process's table"),
    );
    log_start(&s);
    process::exit_process(p);
    let l = log(&s);
    let closes = l.iter().filter(|e| e.class == PRE_KEY_HANDLE_CLOSE).count();
    ctx.check(
        closes == 1 && kernel::with(|k| k.hives.handles_of(SYSTEM_PID).contains(&kh)),
        format!("the process exit closed its user handle only ({closes} close); the kernel handle lives on"),
    );
    let _ = user;
    log_start(&s);
    let r = hive::close_key(q, kh);
    let l = log(&s);
    let close = first(&l, PRE_KEY_HANDLE_CLOSE).unwrap_or_default();
    ctx.check(
        r == STATUS_SUCCESS && close.owner == u64::from(q) && close.current == u64::from(SYSTEM_PID),
        format!(
            "closed from another process's thread: PsGetCurrentProcessId {}, IoGetCurrentProcess {} (attached to System) ({close:x?})",
            close.owner, close.current
        ),
    );
    ctx.check(
        !kernel::with(|k| k.hives.handles_of(SYSTEM_PID).contains(&kh)),
        "the kernel handle is gone",
    );
    process::exit_process(q);
    finish(ctx, s);
}
