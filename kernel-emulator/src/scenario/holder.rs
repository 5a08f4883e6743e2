//! hivetrack.sys scenarios of issue 12 about *who* a report names: a thread attached to
//! another process (`attached-thread`), a pid handed out again (`pid-reuse`), a kernel handle
//! opened from a user thread (`kernel-handle`). Each checks the driver's holders answer
//! (pid, start key, image) against the model's processes.

use super::tracking::{
    APP1, APP2, CLASSES, Client, Holder, KEY_READ, SYSTEM_PID, USER, ensure_parents, load_profile,
    spawn, start, unload_all,
};
use super::{Ctx, Scenario};
use crate::driver::LoadedDriver;
use crate::hive;
use crate::kernel;
use crate::process;
use crate::timer;

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "attached-thread",
            "a thread of A attached to B (KeStackAttachProcess) opens a key: the handle is in B's table, so B is named, pid, start key and image all B's; A's exit leaves it B's",
            attached_thread,
        ),
        Scenario::hivetrack(
            "pid-reuse",
            "a process exits with a key still held (inherited), a new one gets its pid: two holders, each with its own start key and image; again with PsGetProcessStartKey hidden (the creation time tells them apart)",
            pid_reuse,
        ),
        Scenario::hivetrack(
            "kernel-handle",
            "a kernel handle (OBJ_KERNEL_HANDLE, KernelMode) opened from a user process's thread is in the System process's table: the key is System's (pid 4, its start key), not the caller's; the kernel's list still names the opener",
            kernel_handle,
        ),
    ]
}

/// The driver started (machine hives mounted), a client of it, the profile loaded.
fn begin(ctx: &mut Ctx) -> Option<(LoadedDriver, Client)> {
    let d = start(ctx);
    let c = Client::open(ctx)?;
    load_profile(ctx);
    Some((d, c))
}

/// Unloads the profile (nothing may pin it), closes the client, unloads the driver clean.
fn end(ctx: &mut Ctx, mut d: LoadedDriver, c: Client) {
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| {
            format!(
                "pid {} key {:#x}{} {} [{}]",
                h.pid,
                h.start_key,
                if h.exited { " exited" } else { "" },
                h.image,
                h.keys
                    .iter()
                    .map(|k| k.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn holds(h: &Holder, key: &str) -> bool {
    h.keys.iter().any(|k| k.0.eq_ignore_ascii_case(key))
}

/// Docs, `KeStackAttachProcess`: the thread runs in B's address space; handles it creates
/// without `OBJ_KERNEL_HANDLE` go into B's handle table (ReactOS `ObpCreateHandle`:
/// `PsGetCurrentProcess()->ObjectTable`), which the model reproduces. So B holds the key (its
/// exit closes it, A's does not); `PsGetCurrentProcessId` still answers A.
#[allow(clippy::many_single_char_names)] // d, c: driver and client; a, b: the processes
fn attached_thread(ctx: &mut Ctx) {
    let Some((d, c)) = begin(ctx) else { return };
    let a = spawn(ctx, APP1);
    let b = spawn(ctx, APP2);
    let key = format!(r"{USER}\Software\Attached");
    ensure_parents(a, &key);
    let opened = process::attached(b, || hive::open_key(a, &key, KEY_READ, true));
    ctx.check(
        opened.is_ok(),
        format!("A's thread attached to B opens the key: {opened:?}"),
    );
    let b_key = process::start_key_of(b).unwrap_or_default();
    let holders = c.holders(ctx, USER);
    let named_b = |h: &[Holder]| {
        h.len() == 1
            && h[0].pid == u64::from(b)
            && h[0].start_key == b_key
            && h[0].image == APP2
            && !h[0].exited
            && holds(&h[0], &key)
    };
    ctx.check(
        named_b(&holders),
        format!(
            "one holder, B (pid {b}, start key {b_key:#x}, {APP2}), never A's pid with B's key: {}",
            describe(&holders)
        ),
    );
    process::exit_process(a);
    let holders = c.holders(ctx, USER);
    ctx.check(
        named_b(&holders),
        format!(
            "A exits: B still holds the key, named as before: {}",
            describe(&holders)
        ),
    );
    if let Ok(k) = opened {
        let s = hive::close_key(b, k);
        ctx.check(s == 0, format!("the handle is in B's table: close {s:#x}"));
    }
    let empty = c.holders(ctx, USER).is_empty();
    ctx.check(empty, "B closes it: nobody holds the hive");
    process::exit_process(b);
    end(ctx, d, c);
}

/// A pid is a `PspCidTable` handle, freed with the process object and handed out again
/// (ReactOS ntoskrnl/ps; the model: `create_process_with_pid`). The start key
/// (`PsGetProcessStartKey`, Windows 10 1703+) or, where it is missing, the creation time
/// (`PsGetProcessCreateTimeQuadPart`) tells the two processes apart.
fn pid_reuse(ctx: &mut Ctx) {
    pid_reuse_once(ctx, "PsGetProcessStartKey present");
    kernel::reset();
    crate::exports::hide(["PsGetProcessStartKey"]);
    pid_reuse_once(ctx, "PsGetProcessStartKey hidden");
}

fn pid_reuse_once(ctx: &mut Ctx, phase: &str) {
    ctx.say(phase);
    let Some((d, c)) = begin(ctx) else { return };
    let old = spawn(ctx, APP2);
    let old_key = format!(r"{USER}\Software\Old");
    ensure_parents(old, &old_key);
    let kept = hive::open_key(old, &old_key, KEY_READ, true);
    ctx.check(kept.is_ok(), format!("the old process opens {old_key}"));
    // A child inherits the handle, so the key outlives the old process.
    let child = process::create_process(old, APP1, true).unwrap_or_default();
    let before = c.holders(ctx, USER);
    let old_start = before.first().map_or(0, |h| h.start_key);
    process::exit_process(old);
    // The clock moves on before the pid is handed out again (a later creation time).
    timer::advance(16);
    let new = process::create_process_with_pid(SYSTEM_PID, APP1, false, old);
    ctx.check(
        new == Ok(old),
        format!("a new process gets pid {old} again: {new:?}"),
    );
    let new_key = format!(r"{USER}\Software\New");
    let opened = hive::open_key(old, &new_key, KEY_READ, true);
    ctx.check(opened.is_ok(), format!("the new process opens {new_key}"));
    let holders = c.holders(ctx, USER);
    let pid = u64::from(old);
    let old_h = holders.iter().find(|h| h.pid == pid && holds(h, &old_key));
    let new_h = holders.iter().find(|h| h.pid == pid && holds(h, &new_key));
    ctx.check(
        holders.len() == 2
            && old_h.is_some_and(|h| {
                h.exited && h.image == APP2 && h.start_key == old_start && h.keys.len() == 1
            })
            && new_h.is_some_and(|h| {
                !h.exited && h.image == APP1 && h.start_key != old_start && h.keys.len() == 1
            })
            && old_start != 0,
        format!(
            "{phase}: the exited process keeps its inherited key, its image and start key; the new one is another holder with its own: {}",
            describe(&holders)
        ),
    );
    if let Ok(k) = opened {
        let _ = hive::close_key(old, k);
    }
    process::exit_process(old);
    process::exit_process(child);
    let empty = c.holders(ctx, USER).is_empty();
    ctx.check(empty, "both gone: nobody holds the hive");
    end(ctx, d, c);
}

/// Docs, `InitializeObjectAttributes`: OBJ_KERNEL_HANDLE "specifies that the handle can only
/// be accessed in kernel mode"; such handles go into the System process's handle table
/// (ReactOS `ObpCreateHandle`: `ObpKernelHandleTable`, the System process's), whichever
/// thread opens them, and a user process's exit does not close them.
fn kernel_handle(ctx: &mut Ctx) {
    let Some((d, c)) = begin(ctx) else { return };
    let a = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\KernelHandle");
    ensure_parents(a, &key);
    let opened = hive::open_kernel_key(a, &key, KEY_READ, true);
    ctx.check(
        opened.is_ok(),
        format!("a kernel handle opened on A's thread: {opened:?}"),
    );
    let system_key = process::start_key_of(SYSTEM_PID).unwrap_or_default();
    let named_system = |h: &[Holder]| {
        h.len() == 1
            && h[0].pid == u64::from(SYSTEM_PID)
            && h[0].start_key == system_key
            && !h[0].exited
            && holds(&h[0], &key)
    };
    let holders = c.holders(ctx, USER);
    ctx.check(
        named_system(&holders),
        format!(
            "one holder, System (pid 4, start key {system_key:#x}), not A ({a}): {}",
            describe(&holders)
        ),
    );
    let listed = hive::open_subkeys(USER).unwrap_or_default();
    ctx.check(
        listed
            .iter()
            .any(|(p, n)| *p == a && n.eq_ignore_ascii_case(&key)),
        format!("the kernel's list names the opener A (CM_KEY_BODY.ProcessID): {listed:?}"),
    );
    process::exit_process(a);
    let holders = c.holders(ctx, USER);
    ctx.check(
        named_system(&holders),
        format!(
            "A exits: the kernel handle stays open, still System's: {}",
            describe(&holders)
        ),
    );
    if let Ok(k) = opened {
        let s = hive::close_key(SYSTEM_PID, k);
        ctx.check(s == 0, format!("closed from the System process: {s:#x}"));
    }
    let empty = c.holders(ctx, USER).is_empty();
    ctx.check(empty, "closed: nobody holds the hive");
    end(ctx, d, c);
}
