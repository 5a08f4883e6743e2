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
use crate::hive;
use crate::io;
use crate::kernel;
use crate::process;
use crate::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::status;

const IOCTL_KEY_ID: u32 = ioctl(0x837);

/// The key-id scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::test_driver(
        "td-key-id",
        "CmCallbackGetKeyObjectIDEx's ObjectID: one id for two objects of a key; once a key's last object is gone its id is reused by the next new key (a cached id must not outlive the key's objects)",
        td_key_id,
    )]
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

pub(super) fn key_id(device: io::FileHandle, handle: u64) -> KeyId {
    let r = io::device_io_control(device, IOCTL_KEY_ID, &handle.to_le_bytes(), 32, 0xA5);
    let w: Vec<u64> = r
        .output
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
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

pub(super) fn close(pid: u32, handles: &[u64]) {
    for &h in handles {
        let _ = hive::close_key(pid, h);
    }
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
