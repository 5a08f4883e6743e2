//! Test-driver scenario of the handle model hivetrack's identify request depends on:
//! `ObReferenceObjectByHandle` resolving a handle in the caller's table (`UserMode`) or, for a
//! kernel handle, the System process's (`KernelMode` only); `DuplicateHandle` giving another
//! process a handle to the same key object with no registry notification; the system handle
//! table listing every handle with its process and object; and a reference keeping a key
//! object — and its close notification — alive past its last handle.

use super::registry::{KEY_READ, SOFTWARE, finish, start};
use super::test_driver::ioctl;
use super::{Ctx, Scenario};
use crate::nt::cm::hive;
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::ob::handle_table::{self, KEY_TYPE_INDEX};
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, STATUS_INVALID_HANDLE, STATUS_SUCCESS};

const IOCTL_LOG_START: u32 = ioctl(0x830);
const IOCTL_LOG_READ: u32 = ioctl(0x831);
const IOCTL_REF_USER: u32 = ioctl(0x834);
const IOCTL_REF_KERNEL: u32 = ioctl(0x835);
const IOCTL_DEREF: u32 = ioctl(0x836);
/// RegNtPreKeyHandleClose and the registry open/create classes (REG_NOTIFY_CLASS).
const PRE_KEY_HANDLE_CLOSE: u64 = 14;
const OPEN_CLASSES: [u64; 4] = [26, 27, 28, 29];

/// The scenario.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-handle-table",
            "ObReferenceObjectByHandle looks a handle up in the caller's table (a kernel handle only in KernelMode); DuplicateHandle gives another process the same key object with no notification; the system handle table lists both; a reference keeps the key object (and its close notification) past its last handle",
            td_handle_table,
        ),
        super::test_driver::caught(
            "td-user-handle-kernel-mode",
            "ObReferenceObjectByHandle with AccessMode KernelMode on a user process's key handle, in that process: Driver Verifier's Miscellaneous Checks stop it, bug check 0xC4 / 0xF6 (Learn, devtest \"Miscellaneous Checks\": \"You cannot pass a user-mode handle with kernel-mode access\"); the same handle with UserMode resolves",
            crate::verifier::bugcheck::EXIT_BUGCHECK,
            "a user-mode handle with kernel-mode access",
            td_user_handle_kernel_mode,
        ),
    ]
}

/// A user process's key handle referenced first `UserMode` (fine), then `KernelMode` (0xF6).
fn td_user_handle_kernel_mode(ctx: &mut Ctx) {
    let Some(_s) = start(ctx) else { return };
    let p =
        process::create_process(4, r"\Device\HarddiskVolume2\Tools\app.exe", false).unwrap_or(0);
    let Some(dev) = open_device(ctx, p) else {
        return;
    };
    let kp = hive::open_key(p, &format!(r"{SOFTWARE}\Mine"), KEY_READ, true).unwrap_or(0);
    let r = four(dev, IOCTL_REF_USER, kp);
    ctx.check(
        r[0] == 0 && r[1] == object_of(p, kp),
        format!("UserMode, p's own key handle: its key object ({r:x?})"),
    );
    let _ = four(dev, IOCTL_DEREF, 0);
    let r = four(dev, IOCTL_REF_KERNEL, kp);
    ctx.check(
        false,
        format!("KernelMode on p's user-mode handle went unnoticed ({r:x?})"),
    );
}

fn four(device: io::FileHandle, code: u32, argument: u64) -> [u64; 4] {
    let r = io::device_io_control(device, code, &argument.to_le_bytes(), 32, 0xA5);
    let mut out = [0u64; 4];
    for (o, c) in out.iter_mut().zip(r.output.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    out
}

/// The notification classes the test driver logged since `IOCTL_LOG_START` (`ENTRY_BYTES` per
/// entry, the class first).
fn logged(device: io::FileHandle) -> Vec<u64> {
    (0..super::lifecycle::log_len(device).min(64))
        .map(|i| {
            let r = io::device_io_control(
                device,
                IOCTL_LOG_READ,
                &i.to_le_bytes(),
                super::lifecycle::ENTRY_BYTES,
                0xA5,
            );
            r.output
                .get(..8)
                .map_or(0, |c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        })
        .collect()
}

/// The test driver's device, opened by process `p` (its requests run in p's context).
fn open_device(ctx: &mut Ctx, p: u32) -> Option<io::FileHandle> {
    io::open(
        r"\\.\KemuTest",
        Caller::Admin,
        p,
        GENERIC_READ | GENERIC_WRITE,
    )
    .inspect_err(|&e| {
        ctx.check(
            false,
            format!("p opens the test device: {}", status::describe(e)),
        );
    })
    .ok()
}

fn object_of(pid: u32, handle: u64) -> u64 {
    kernel::with(|k| k.hives.handles.get(&(pid, handle)).map_or(0, |&o| o as u64))
}

#[allow(clippy::cast_sign_loss)] // NTSTATUS bits
const fn bits(s: i32) -> u64 {
    s as u32 as u64
}

#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // p, q: processes; s: session
fn td_handle_table(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = process::create_process(4, r"\Device\HarddiskVolume2\Tools\hivetrack.exe", false)
        .unwrap_or(0);
    let q = process::create_process(4, r"\Device\HarddiskVolume2\leaky.exe", false).unwrap_or(0);
    // The test driver's device, opened by p: its requests run in p's context.
    let Some(dev) = open_device(ctx, p) else {
        return;
    };
    let kp = hive::open_key(p, &format!(r"{SOFTWARE}\Mine"), KEY_READ, true).unwrap_or(0);
    let kq = hive::open_key(q, &format!(r"{SOFTWARE}\Theirs"), KEY_READ, true).unwrap_or(0);
    let (op, oq) = (object_of(p, kp), object_of(q, kq));
    ctx.check(op != 0 && oq != 0 && op != oq, "two key objects");

    let r = four(dev, IOCTL_REF_USER, kp);
    ctx.check(
        r[0] == 0 && r[1] == op,
        format!("UserMode, the caller's own handle: its key object ({r:x?})"),
    );
    let _ = four(dev, IOCTL_DEREF, 0);
    let r = four(dev, IOCTL_REF_USER, kq);
    ctx.check(
        r[0] == bits(STATUS_INVALID_HANDLE) && r[1] == 0,
        format!("UserMode, another process's handle value: STATUS_INVALID_HANDLE ({r:x?})"),
    );

    // DuplicateHandle(q's handle into p): no registry notification, the same object.
    let _ = io::device_io_control(dev, IOCTL_LOG_START, &[0; 8], 32, 0xA5);
    let dup = hive::duplicate_handle(q, kq, p);
    ctx.check(dup.is_ok(), format!("DuplicateHandle into p: {dup:?}"));
    let dup = dup.unwrap_or(0);
    // A control: an open after it is logged (pre and post).
    let control = hive::open_key(p, &format!(r"{SOFTWARE}\Control"), KEY_READ, true).unwrap_or(0);
    let seen = logged(dev);
    let opens = seen.iter().filter(|c| OPEN_CLASSES.contains(c)).count();
    ctx.check(
        opens == 2,
        format!("no open notification for a duplicated handle, two for the control open after it: {seen:?}"),
    );
    let _ = hive::close_key(p, control);
    let r = four(dev, IOCTL_REF_USER, dup);
    ctx.check(
        r[0] == 0 && r[1] == oq,
        format!("the duplicate in p refers to q's key object ({r:x?})"),
    );
    let _ = four(dev, IOCTL_DEREF, 0);

    // The system handle table: both of q's object's handles, under their processes.
    let table = handle_table::system_handles();
    let of_q: Vec<(u32, u64)> = table
        .iter()
        .filter(|e| e.object as u64 == oq && e.type_index == KEY_TYPE_INDEX)
        .map(|e| (e.pid, e.handle))
        .collect();
    ctx.check(
        of_q.contains(&(q, kq)) && of_q.contains(&(p, dup)) && of_q.len() == 2,
        format!("the system handle table lists q's handle and p's duplicate: {of_q:?}"),
    );

    // A kernel handle: in the System process's table, reachable only in KernelMode.
    let kh = hive::open_kernel_key(p, &format!(r"{SOFTWARE}\Kernel"), KEY_READ, true).unwrap_or(0);
    let ok = object_of(4, kh);
    let r = four(dev, IOCTL_REF_USER, kh);
    ctx.check(
        r[0] == bits(STATUS_INVALID_HANDLE),
        format!("UserMode, a kernel handle value: STATUS_INVALID_HANDLE ({r:x?})"),
    );
    let r = four(dev, IOCTL_REF_KERNEL, kh);
    ctx.check(
        ok != 0 && r[0] == 0 && r[1] == ok,
        format!("KernelMode, the kernel handle: the System table's object ({r:x?})"),
    );
    let _ = four(dev, IOCTL_DEREF, 0);

    // A reference keeps the key object past its last handle: no close notification until
    // it goes.
    let r = four(dev, IOCTL_REF_USER, kp);
    ctx.check(r[0] == 0, "referenced p's key");
    let _ = io::device_io_control(dev, IOCTL_LOG_START, &[0; 8], 32, 0xA5);
    let c = hive::close_key(p, kp);
    ctx.check(c == STATUS_SUCCESS, "p closes its last handle to it");
    let early = logged(dev).contains(&PRE_KEY_HANDLE_CLOSE);
    ctx.check(!early, "no close notification while the reference is held");
    let released = four(dev, IOCTL_DEREF, 0)[0];
    let late = logged(dev);
    ctx.check(
        released == op && late.contains(&PRE_KEY_HANDLE_CLOSE),
        format!(
            "the close notification comes with the last reference's release ({released:#x}, {late:?})"
        ),
    );

    for (pid, h) in [(p, dup), (q, kq), (p, kh)] {
        let _ = hive::close_key(pid, h);
    }
    io::close(dev);
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}
