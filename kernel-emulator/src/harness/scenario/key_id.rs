//! What the ObjectID of `CmCallbackGetKeyObjectIDEx` promises a driver that caches key names
//! by it, shown on the test driver (its IOCTL_KEY_ID asks for the id alone, ObjectName NULL,
//! as such a cache does, then for the id with the name).
//!
//! Learn, CmCallbackGetKeyObjectIDEx (Remarks): two key objects of one key have the same id,
//! the id does not change when the key is renamed, and the ObjectName of the Ex routine is
//! always the key's current name; the id is "unique across all keys in the registry". Nothing
//! promises an id outlives the key's objects: the model reuses it (`hive.rs`, `key_id` and
//! `release_object`; the reuse is an *inference*, see there), so `td-key-id` shows a cached id
//! naming another key once the first key's last object is gone.

use super::lifecycle::{hash, log, log_start};
use super::registry::{KEY_READ, SOFTWARE, SYSTEM_PID, finish, start};
use super::test_driver::ioctl;
use super::{Ctx, Scenario};
use crate::nt::cm::hive;
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{
    self, STATUS_ACCESS_DENIED, STATUS_CANNOT_DELETE, STATUS_OBJECT_NAME_NOT_FOUND,
};

const IOCTL_KEY_ID: u32 = ioctl(0x837);
const IOCTL_KEY_NAME_OLD: u32 = ioctl(0x838);
const IOCTL_KEY_ID_BAD_COOKIE: u32 = ioctl(0x839);

/// The key-id scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-key-id",
            "CmCallbackGetKeyObjectIDEx's ObjectID: one id for two objects of a key; once a key's last object is gone its id is reused by the next new key (a cached id must not outlive the key's objects)",
            td_key_id,
        ),
        Scenario::test_driver(
            "td-key-id-cookie",
            "CmCallbackGetKeyObjectIDEx with a cookie no registered callback has (a driver's callback running before it stored its cookie) fails with STATUS_INVALID_PARAMETER: no id, no name",
            td_key_id_cookie,
        ),
        Scenario::test_driver(
            "td-old-name-stale",
            "the Windows 7 routine CmCallbackGetKeyObjectID: after a rename it still names the key by its old name (a stale copy) until the key's handles are closed; the Ex routine names it anew",
            td_old_name_stale,
        ),
        Scenario::test_driver(
            "td-rename-key",
            "NtRenameKey: RegNtPreRenameKey/RegNtPostRenameKey for the key object; objects of the key and of its subkeys opened before keep their ids and report the new names; a taken name and a hive root are refused",
            td_rename_key,
        ),
        Scenario::test_driver(
            "td-delete-key",
            "NtDeleteKey: RegNtPreDeleteKey/RegNtPostDeleteKey with the key object; a key with a subkey, a hive's root refused (STATUS_CANNOT_DELETE in the post); an object of the deleted key keeps its id, the same name re-created gets a new id; the kernel's open-keys list drops the deleted key's object, NtQueryKey/NtRenameKey on it say STATUS_KEY_DELETED, yet it still holds its hive: the unload fails until it is closed, and then its id is freed",
            td_delete_key,
        ),
    ]
}

/// What the test driver learned about the key behind `handle` (a handle of the device's
/// process): the id asked for alone, the name's hash, the id returned with the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyId {
    pub(super) status: u64,
    pub(super) id: u64,
    pub(super) name: u64,
    pub(super) named_id: u64,
}

/// A reply's output as little-endian 64-bit words.
fn words(output: &[u8]) -> Vec<u64> {
    output
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

pub(super) fn key_id(device: io::FileHandle, handle: u64) -> KeyId {
    let r = io::device_io_control(device, IOCTL_KEY_ID, &handle.to_le_bytes(), 32, 0xA5);
    let w = words(&r.output);
    let at = |i: usize| w.get(i).copied().unwrap_or(0);
    KeyId {
        status: at(0),
        id: at(1),
        name: at(2),
        named_id: at(3),
    }
}

/// A process of its own and the test device opened by it: its requests run in that process,
/// so the driver looks the key handles up in its table.
pub(super) fn process_with_device(ctx: &mut Ctx, image: &str) -> Option<(u32, io::FileHandle)> {
    let p = process::create_process(SYSTEM_PID, image, false);
    ctx.check(p.is_ok(), format!("create {image}: {p:?}"));
    let p = p.ok()?;
    match io::open(
        r"\\.\KemuTest",
        Caller::Admin,
        p,
        GENERIC_READ | GENERIC_WRITE,
    ) {
        Ok(d) => Some((p, d)),
        Err(e) => {
            ctx.check(
                false,
                format!("the process opens the test device: {}", status::describe(e)),
            );
            None
        }
    }
}

pub(super) fn open(ctx: &mut Ctx, pid: u32, path: &str, create: bool) -> u64 {
    let r = hive::open_key(pid, path, KEY_READ, create);
    ctx.check(r.is_ok(), format!("open {path}: {r:?}"));
    r.unwrap_or(0)
}

/// [`open`] with DELETE access too: `NtDeleteKey` references its handle for DELETE (WRK
/// `ntapi.c`; the model does not check access, the scenarios ask for it as Windows needs).
fn open_deletable(ctx: &mut Ctx, pid: u32, path: &str, create: bool) -> u64 {
    /// `DELETE` (winnt.h).
    const DELETE: u32 = 0x1_0000;
    let r = hive::open_key(pid, path, KEY_READ | DELETE, create);
    ctx.check(r.is_ok(), format!("open {path} for DELETE: {r:?}"));
    r.unwrap_or(0)
}

pub(super) fn close(pid: u32, handles: &[u64]) {
    for &h in handles {
        let _ = hive::close_key(pid, h);
    }
}

/// Learn, CmCallbackGetKeyObjectIDEx, Return value: "STATUS_INVALID_PARAMETER — The Cookie,
/// Object, or Flags parameter is invalid". The model checked only that the cookie pointer
/// was not NULL until 2026-12-05.
fn td_key_id_cookie(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, dev)) = process_with_device(ctx, r"\Device\HarddiskVolume2\Tools\cookie.exe")
    else {
        finish(ctx, s);
        return;
    };
    let h = open(ctx, p, SOFTWARE, false);
    let good = key_id(dev, h);
    ctx.check(
        good.status == 0 && good.id != 0 && good.name != 0,
        format!("with the registered cookie: an id and a name ({good:?})"),
    );
    let reply = io::device_io_control(dev, IOCTL_KEY_ID_BAD_COOKIE, &h.to_le_bytes(), 32, 0xA5);
    let w = words(&reply.output);
    let at = |i: usize| w.get(i).copied().unwrap_or(u64::MAX);
    ctx.check(
        at(0) == u64::from(status::STATUS_INVALID_PARAMETER.cast_unsigned()),
        format!(
            "with a cookie no callback has: STATUS_INVALID_PARAMETER ({:#x})",
            at(0)
        ),
    );
    ctx.check(
        at(1) == 0 && at(2) == 0,
        format!(
            "and neither an id nor a name is handed out (id written {}, name {})",
            at(1),
            at(2)
        ),
    );
    close(p, &[h]);
    io::close(dev);
    process::exit_process(p);
    finish(ctx, s);
}

#[allow(clippy::too_many_lines)] // one linear script of checks
fn td_key_id(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, dev)) = process_with_device(ctx, r"\Device\HarddiskVolume2\Tools\idcache.exe")
    else {
        finish(ctx, s);
        return;
    };
    let a = format!(r"{SOFTWARE}\KemuIdA");
    let b = format!(r"{SOFTWARE}\KemuIdB");
    let other = format!(r"{SOFTWARE}\KemuIdOther");
    // A key that stays open throughout: its id must never be handed to another key.
    let ho = open(ctx, p, &other, true);
    let io_ = key_id(dev, ho);
    let ha1 = open(ctx, p, &a, true);
    let ha2 = open(ctx, p, &a, false);
    let (a1, a2) = (key_id(dev, ha1), key_id(dev, ha2));
    let objects = kernel::with(|k| {
        (
            k.hives.handles.get(&(p, ha1)).copied(),
            k.hives.handles.get(&(p, ha2)).copied(),
        )
    });
    ctx.check(
        objects.0.is_some() && objects.0 != objects.1,
        "two opens of A: two key objects",
    );
    ctx.check(
        a1.status == 0 && a1.id != 0 && a1 == a2,
        format!("both objects of A report one id and name (Learn: \"identical\"): {a1:x?} {a2:x?}"),
    );
    ctx.check(
        a1.id == a1.named_id && a1.name == hash(&a),
        format!("the id alone equals the id with the name, and the name is A's: {a1:x?}"),
    );
    ctx.check(
        io_.status == 0 && io_.id != a1.id,
        format!("another key has another id: {io_:x?}"),
    );

    // The notifications show the same: pre-close of each object of A carries A's id.
    log_start(&s);
    close(p, &[ha1, ha2]);
    let closes = log(&s).into_iter().filter(|e| e.class == 14).count();
    ctx.check(
        closes == 2,
        format!("both objects of A closed ({closes} pre-close)"),
    );

    // A's last object is gone: its id is free, and the next new key takes it.
    let hb = open(ctx, p, &b, true);
    let bb = key_id(dev, hb);
    ctx.check(
        bb.status == 0 && bb.name == hash(&b),
        format!("B is named B: {bb:x?}"),
    );
    ctx.check(
        bb.id == a1.id,
        format!(
            "B gets A's old id {:#x} (got {:#x}): an id cached for A now names B, so a cache keyed by id must drop A's entry when A's last object goes (its pre-close)",
            a1.id, bb.id
        ),
    );
    let ho2 = key_id(dev, ho);
    ctx.check(
        ho2 == io_,
        format!("the key open throughout keeps its id: {io_:x?} {ho2:x?}"),
    );
    // A opened again is a new key control block: a new id, not its old one (B has that).
    let ha3 = open(ctx, p, &a, false);
    let a3 = key_id(dev, ha3);
    ctx.check(
        a3.status == 0 && a3.id != bb.id && a3.id != io_.id && a3.name == hash(&a),
        format!("A reopened gets an id of its own, not B's: {a3:x?}"),
    );
    close(p, &[ha3, hb, ho]);
    io::close(dev);
    process::exit_process(p);
    finish(ctx, s);
}

/// REG_NOTIFY_CLASS RegNtPreRenameKey / RegNtPostRenameKey.
const PRE_RENAME_KEY: u64 = 4;
const POST_RENAME_KEY: u64 = 19;

#[allow(clippy::cast_sign_loss)] // NTSTATUS bits, as the log records them
const fn bits(s: i32) -> u64 {
    s as u32 as u64
}

#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // s: session, p: process, r/n: results
fn td_rename_key(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, dev)) = process_with_device(ctx, r"\Device\HarddiskVolume2\Windows\regedit.exe")
    else {
        finish(ctx, s);
        return;
    };
    let old = format!(r"{SOFTWARE}\KemuRen");
    let new = format!(r"{SOFTWARE}\KemuRenamed");
    let hk = open(ctx, p, &old, true);
    let hs = open(ctx, p, &format!(r"{old}\Sub"), true);
    let (k0, s0) = (key_id(dev, hk), key_id(dev, hs));
    ctx.check(
        k0.status == 0 && k0.name == hash(&old) && s0.name == hash(&format!(r"{old}\Sub")),
        format!("before: the key and its subkey by their names ({k0:x?} {s0:x?})"),
    );
    let object = kernel::with(|k| k.hives.handles.get(&(p, hk)).copied()).unwrap_or(0) as u64;

    log_start(&s);
    let r = hive::rename_key(p, hk, "KemuRenamed");
    ctx.check(
        r == 0,
        format!(
            "NtRenameKey(KemuRen -> KemuRenamed): {}",
            status::describe(r)
        ),
    );
    let l = log(&s);
    let pre: Vec<_> = l.iter().filter(|e| e.class == PRE_RENAME_KEY).collect();
    let post: Vec<_> = l.iter().filter(|e| e.class == POST_RENAME_KEY).collect();
    ctx.check(
        pre.len() == 1 && post.len() == 1,
        format!(
            "one RegNtPreRenameKey and one RegNtPostRenameKey ({} {})",
            pre.len(),
            post.len()
        ),
    );
    if let (Some(pre), Some(post)) = (pre.first(), post.first()) {
        ctx.check(
            pre.object == object && pre.owner == u64::from(p),
            "pre-rename: Object is the handle's key object, in the renaming process",
        );
        ctx.check(
            pre.name == hash("KemuRenamed"),
            "pre-rename: NewName is the new last component",
        );
        ctx.check(
            pre.object_name == hash(&old) && pre.extra == k0.id,
            "pre-rename: the Object still has its old name, and its id",
        );
        ctx.check(
            post.object == object && post.extra == 0 && post.object_name == hash(&new),
            format!("post-rename: STATUS_SUCCESS, the same Object, now named {new} ({post:x?})"),
        );
    }
    let (k1, s1) = (key_id(dev, hk), key_id(dev, hs));
    ctx.check(
        k1.status == 0 && k1.id == k0.id && k1.named_id == k0.id,
        format!("the object opened before keeps its id ({k0:x?} -> {k1:x?})"),
    );
    ctx.check(
        k1.name == hash(&new),
        "…and reports the new name (Learn: the Ex routine's name is always up to date)",
    );
    ctx.check(
        s1.status == 0 && s1.id == s0.id && s1.name == hash(&format!(r"{new}\Sub")),
        format!("the subkey's object opened before: same id, new full name ({s0:x?} -> {s1:x?})"),
    );
    let hn = open(ctx, p, &new, false);
    let n = key_id(dev, hn);
    ctx.check(
        n.status == 0 && n.id == k0.id && n.name == hash(&new),
        format!("a new open of the renamed key: the same id ({n:x?})"),
    );
    let gone = hive::open_key(p, &old, KEY_READ, false);
    ctx.check(
        gone == Err(STATUS_OBJECT_NAME_NOT_FOUND),
        format!("the old name is gone: {gone:?}"),
    );

    // Refusals (Windows Research Kernel cmapi.c, CmRenameKey): a sibling with the name, a
    // hive's root. Each still has its pre and post, the post carrying the failure.
    let ht = open(ctx, p, &format!(r"{SOFTWARE}\KemuTaken"), true);
    let hroot = open(ctx, p, SOFTWARE, false);
    log_start(&s);
    let taken = hive::rename_key(p, hk, "kemutaken");
    ctx.check(
        taken == STATUS_CANNOT_DELETE,
        format!(
            "to a name a sibling has (any case): {}",
            status::describe(taken)
        ),
    );
    let root = hive::rename_key(p, hroot, "SOFTWARE2");
    ctx.check(
        root == STATUS_ACCESS_DENIED,
        format!("a hive's root: {}", status::describe(root)),
    );
    // NtRenameKey checks the new name before it references the handle or calls anyone (WRK
    // ntapi.c NtRenameKey): an empty name, one with a `\`, or one over REG_MAX_KEY_NAME_LENGTH
    // (512 bytes) is STATUS_INVALID_PARAMETER with no notification.
    let long = "K".repeat(257);
    for bad in ["", r"Kemu\Bad", long.as_str()] {
        let r = hive::rename_key(p, hk, bad);
        ctx.check(
            r == status::STATUS_INVALID_PARAMETER,
            format!(
                "a NewName of {} units with{} a separator: {}",
                bad.len(),
                if bad.contains('\\') { "" } else { "out" },
                status::describe(r)
            ),
        );
    }
    let l = log(&s);
    let failed: Vec<u64> = l
        .iter()
        .filter(|e| e.class == POST_RENAME_KEY)
        .map(|e| e.extra)
        .collect();
    ctx.check(
        failed == [bits(STATUS_CANNOT_DELETE), bits(STATUS_ACCESS_DENIED)],
        format!("the posts carry the failures: {failed:x?}"),
    );
    let k2 = key_id(dev, hk);
    ctx.check(
        k2.id == k0.id && k2.name == hash(&new),
        "a refused rename changes nothing",
    );
    close(p, &[hk, hs, hn, ht, hroot]);
    io::close(dev);
    process::exit_process(p);
    finish(ctx, s);
}

/// REG_NOTIFY_CLASS RegNtPreDeleteKey / RegNtPostDeleteKey.
const PRE_DELETE_KEY: u64 = 0;
const POST_DELETE_KEY: u64 = 15;

/// NtDeleteKey after the Windows Research Kernel (`ntapi.c` NtDeleteKey, `cmapi2.c`
/// CmDeleteKey, `cmsubs.c` KCB hash; see `hive::delete_key`), on a hive of its own so the
/// unload can be shown.
#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // s: session, p: process, r: results
fn td_delete_key(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, dev)) = process_with_device(ctx, r"\Device\HarddiskVolume2\Windows\regedit.exe")
    else {
        finish(ctx, s);
        return;
    };
    let mount = r"\REGISTRY\MACHINE\KemuDelete";
    let r = hive::load_hive(SYSTEM_PID, mount, r"\??\C:\kemu\delete.hiv");
    ctx.check(
        r == 0,
        format!("a private hive loads: {}", status::describe(r)),
    );
    let gone = format!(r"{mount}\Gone");
    let parent = format!(r"{mount}\Parent");
    // The object that outlives the delete, and a key with a subkey.
    let hold = open_deletable(ctx, p, &gone, true);
    let hp = open_deletable(ctx, p, &parent, true);
    let hc = open(ctx, p, &format!(r"{parent}\Child"), true);
    close(p, &[hc]);
    let hroot = open_deletable(ctx, p, mount, false);
    let g0 = key_id(dev, hold);
    ctx.check(
        g0.status == 0 && g0.id != 0 && g0.name == hash(&gone),
        format!("before: Gone by its id and name ({g0:x?})"),
    );

    // The delete, through a second handle of the key, closed afterwards.
    let hdel = open_deletable(ctx, p, &gone, false);
    let object = kernel::with(|k| k.hives.handles.get(&(p, hdel)).copied()).unwrap_or(0) as u64;
    log_start(&s);
    let r = hive::delete_key(p, hdel);
    ctx.check(
        r == 0,
        format!("NtDeleteKey(Gone): {}", status::describe(r)),
    );
    let l = log(&s);
    let pre: Vec<_> = l.iter().filter(|e| e.class == PRE_DELETE_KEY).collect();
    let post: Vec<_> = l.iter().filter(|e| e.class == POST_DELETE_KEY).collect();
    ctx.check(
        pre.len() == 1 && post.len() == 1,
        format!(
            "one RegNtPreDeleteKey and one RegNtPostDeleteKey ({} {})",
            pre.len(),
            post.len()
        ),
    );
    if let (Some(pre), Some(post)) = (pre.first(), post.first()) {
        ctx.check(
            pre.object == object && object != 0 && pre.owner == u64::from(p),
            format!("pre-delete: Object is the handle's key object {object:#x}, in the deleting process ({pre:x?})"),
        );
        ctx.check(
            pre.object_name == hash(&gone) && pre.extra == g0.id,
            "pre-delete: the Object is Gone, with Gone's id",
        );
        ctx.check(
            post.object == object && post.extra == 0,
            format!("post-delete: STATUS_SUCCESS and the same Object ({post:x?})"),
        );
        // Not documented: the model keeps naming a deleted key's object (inference).
        ctx.check(
            post.object_name == hash(&gone),
            "post-delete: CmCallbackGetKeyObjectIDEx still names the deleted key's object Gone (inference)",
        );
    }
    close(p, &[hdel]);
    let g1 = key_id(dev, hold);
    ctx.check(
        g1.status == 0 && g1.id == g0.id && g1.named_id == g0.id && g1.name == hash(&gone),
        format!("the object opened before keeps its id and its last name ({g0:x?} -> {g1:x?})"),
    );
    let again = hive::open_key(p, &gone, KEY_READ, false);
    ctx.check(
        again == Err(STATUS_OBJECT_NAME_NOT_FOUND),
        format!("Gone is gone from the namespace: {again:?}"),
    );
    let hnew = open(ctx, p, &gone, true);
    let n = key_id(dev, hnew);
    ctx.check(
        n.status == 0 && n.id != g0.id && n.id != 0 && n.name == hash(&gone),
        format!(
            "Gone created again is a new key: a new id ({:#x}, the deleted one {:#x})",
            n.id, g0.id
        ),
    );
    let listed = hive::open_subkeys(mount).unwrap_or_default();
    let named_gone = listed
        .iter()
        .filter(|(_, name)| name.eq_ignore_ascii_case(&gone))
        .count();
    ctx.check(
        named_gone == 1,
        format!("the kernel's open-keys list (NtQueryOpenSubKeysEx) has the new Gone once and not the deleted key's object: {listed:?}"),
    );
    let q = hive::query_key_name(p, hold);
    ctx.check(
        q == Err(status::STATUS_KEY_DELETED),
        format!("NtQueryKey(KeyNameInformation) of the deleted key's object: {q:?}"),
    );
    let qn = hive::query_key_name(p, hnew);
    ctx.check(
        qn.as_deref().is_ok_and(|n| n.eq_ignore_ascii_case(&gone)),
        format!("…and of the new key's: {qn:?}"),
    );
    let rel = hive::open_key_at(p, Some(hold), "Below", KEY_READ, true);
    ctx.check(
        rel == Err(status::STATUS_KEY_DELETED),
        format!("a create relative to the deleted key's object: {rel:?}"),
    );

    // Refusals, each with its pre and post: a key with a subkey, a hive's root; a second
    // delete of the deleted key succeeds doing nothing; a rename of it is refused; an unknown
    // handle is refused before any notification.
    log_start(&s);
    let sub = hive::delete_key(p, hp);
    ctx.check(
        sub == STATUS_CANNOT_DELETE,
        format!("a key with a subkey: {}", status::describe(sub)),
    );
    let root = hive::delete_key(p, hroot);
    ctx.check(
        root == STATUS_CANNOT_DELETE,
        format!("the hive's root: {}", status::describe(root)),
    );
    let twice = hive::delete_key(p, hold);
    ctx.check(
        twice == 0,
        format!("the deleted key deleted again: {}", status::describe(twice)),
    );
    let ren = hive::rename_key(p, hold, "Renamed");
    ctx.check(
        ren == status::STATUS_KEY_DELETED,
        format!("a rename of the deleted key: {}", status::describe(ren)),
    );
    let bad = hive::delete_key(p, 0xBAD0);
    ctx.check(
        bad == status::STATUS_INVALID_HANDLE,
        format!("an unknown handle: {}", status::describe(bad)),
    );
    let l = log(&s);
    let pres = l.iter().filter(|e| e.class == PRE_DELETE_KEY).count();
    let posts: Vec<u64> = l
        .iter()
        .filter(|e| e.class == POST_DELETE_KEY || e.class == POST_RENAME_KEY)
        .map(|e| e.extra)
        .collect();
    ctx.check(
        pres == 3,
        format!("three RegNtPreDeleteKey, none for the unknown handle ({pres})"),
    );
    ctx.check(
        posts
            == [
                bits(STATUS_CANNOT_DELETE),
                bits(STATUS_CANNOT_DELETE),
                0,
                bits(status::STATUS_KEY_DELETED),
            ],
        format!("the posts carry the statuses: {posts:x?}"),
    );
    let kept = hive::open_key(p, &format!(r"{parent}\Child"), KEY_READ, false);
    ctx.check(
        kept.is_ok(),
        "the refused delete left Parent\\Child in place",
    );
    close(p, &[hp, hnew]);
    close(p, &kept.into_iter().collect::<Vec<_>>());
    close(p, &[hroot]);

    // The deleted key's object alone holds the hive, though the kernel lists nothing.
    let listed = hive::open_subkeys(mount).unwrap_or_default();
    ctx.check(
        listed.is_empty(),
        format!("only the deleted key's object is left: the kernel's list is empty ({listed:?})"),
    );
    let r = hive::unload_hive(SYSTEM_PID, mount);
    ctx.check(
        r == STATUS_CANNOT_DELETE,
        format!(
            "the unload fails while it lives (its KCB references its parent, up to the root): {}",
            status::describe(r)
        ),
    );
    // Its id is freed with it: with the root held, it is the last id freed, which the next
    // new key takes (ids are reused last-freed first).
    let hroot = open(ctx, p, mount, false);
    close(p, &[hold]);
    let hnext = open(ctx, p, &format!(r"{SOFTWARE}\KemuDeleteNext"), true);
    let next = key_id(dev, hnext);
    ctx.check(
        next.id == g0.id,
        format!(
            "the deleted key's id is freed with its last object: the next new key gets it ({:#x}, deleted {:#x})",
            next.id, g0.id
        ),
    );
    close(p, &[hnext, hroot]);
    let r = hive::unload_hive(SYSTEM_PID, mount);
    ctx.check(
        r == 0,
        format!(
            "once it is closed the hive unloads: {}",
            status::describe(r)
        ),
    );
    io::close(dev);
    process::exit_process(p);
    finish(ctx, s);
}

/// What the Windows 7 routine answers for `handle`: (status, hash of the name).
fn key_name_old(device: io::FileHandle, handle: u64) -> (u64, u64) {
    let r = io::device_io_control(device, IOCTL_KEY_NAME_OLD, &handle.to_le_bytes(), 32, 0xA5);
    let w: Vec<u64> = r
        .output
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    (
        w.first().copied().unwrap_or(u64::MAX),
        w.get(2).copied().unwrap_or(0),
    )
}

/// Learn, CmCallbackGetKeyObjectIDEx (Remarks): after a rename, CmCallbackGetKeyObjectID
/// hands out "a stale copy [...] which contains the old key name [...] until all handles to
/// the key are closed"; the Ex routine "always contains the most up-to-date key name".
fn td_old_name_stale(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some((p, dev)) = process_with_device(ctx, r"\Device\HarddiskVolume2\Tools\win7.exe") else {
        finish(ctx, s);
        return;
    };
    let before = format!(r"{SOFTWARE}\KemuOld");
    let after = format!(r"{SOFTWARE}\KemuNew");
    let h1 = open(ctx, p, &before, true);
    let first = key_name_old(dev, h1);
    ctx.check(
        first == (0, hash(&before)),
        format!("the Windows 7 routine names the key: {first:x?}"),
    );
    let r = hive::rename_key(p, h1, "KemuNew");
    ctx.check(r == 0, format!("the key renamed: {r:#x}"));
    let now_ex = key_id(dev, h1);
    ctx.check(
        now_ex.name == hash(&after),
        format!("the Ex routine names it anew: {now_ex:x?}"),
    );
    let h2 = open(ctx, p, &after, false);
    let stale = (key_name_old(dev, h1), key_name_old(dev, h2));
    ctx.check(
        stale.0 == (0, hash(&before)) && stale.1 == (0, hash(&before)),
        format!(
            "the Windows 7 routine still gives the old name, for both objects (a stale copy): {stale:x?}"
        ),
    );
    close(p, &[h1, h2]);
    let h3 = open(ctx, p, &after, false);
    let fresh = key_name_old(dev, h3);
    ctx.check(
        fresh == (0, hash(&after)),
        format!("once every handle was closed, the new name: {fresh:x?}"),
    );
    close(p, &[h3]);
    io::close(dev);
    process::exit_process(p);
    finish(ctx, s);
}
