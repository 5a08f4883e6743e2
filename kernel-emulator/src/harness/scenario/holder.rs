//! hivetrack.sys scenarios of issue 12 about *who* a report names: a thread attached to
//! another process (`attached-thread`), a pid handed out again (`pid-reuse`), a kernel handle
//! opened from a user thread (`kernel-handle`). Each checks the driver's holders answer
//! (pid, start key, image) against the model's processes.

use super::tracking::{
    APP1, APP2, CLASSES, Client, Holder, KEY_READ, SYSTEM_PID, USER, ensure_parents, load_profile,
    spawn, start, unload_all,
};
use super::{Ctx, Scenario};
use crate::loader::driver::LoadedDriver;
use crate::nt::cm::hive;
use crate::nt::ke::timer;
use crate::nt::kernel;
use crate::nt::ps::process;

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
            "exit-then-late-open",
            "a thread of A attached to B opens a key after B's exit notification and before B's handle table is swept (another processor, in the window WRK psdelete.c leaves): the sweep closes it and B's record goes with it, not kept as a running process until unload (audit 22a, F3)",
            exit_then_late_open,
        ),
        Scenario::hivetrack(
            "pid-reuse",
            "a process exits with a key still held (inherited), a new one gets its pid: two holders, each with its own start key and image; again with PsGetProcessStartKey hidden (the creation time tells them apart)",
            pid_reuse,
        ),
        Scenario::hivetrack(
            "duplicated-holder",
            "a key opened by A, duplicated into B (DuplicateHandle) and inherited by C, then closed by A, who exits: the driver still names A, the opener; the client finds the key handles in the system handle table, duplicates them into itself and asks IOCTL_HIVETRACK_IDENTIFY_HANDLES: held now by B and C, never a kernel address, a key from before tracking 'not tracked', a bad handle 'invalid'; one request of MAX_IDENTIFY (2,048) handles answered whole, one more refused",
            duplicated_holder,
        ),
        Scenario::hivetrack(
            "identify-null-handle",
            "an identify request with handle values a UserMode ObReferenceObjectByHandle refuses before any lookup (0; a negative low dword other than the pseudo-handles: WRK obref.c) is answered 'invalid' for them without a kernel call (0 is Driver Verifier's 0xC4/0xF5 NULL-handle row; audit 24a, F3); the caller's real key handle beside them is still looked up",
            identify_null_handle,
        ),
        Scenario::hivetrack(
            "kernel-handle",
            "a kernel handle (OBJ_KERNEL_HANDLE, KernelMode) opened from a user process's thread is in the System process's table: the key is System's (pid 4, its start key), not the caller's; the kernel's list still names the opener",
            kernel_handle,
        ),
        Scenario::hivetrack(
            "granted-access",
            "A opens keys with GENERIC_READ, MAXIMUM_ALLOWED and KEY_READ|KEY_WOW64_64KEY: the driver reports the access the open was granted (GrantedAccess: KEY_READ, KEY_ALL_ACCESS, KEY_READ), not the generic or WOW64 bits asked for",
            granted_access,
        ),
        Scenario::hivetrack(
            "kernel-handle-forced",
            "as kernel-handle, with OBJ_FORCE_ACCESS_CHECK too (the WRK's ex/sysinfo.c opens HKCU keys so): the notification's CheckAccessMode is UserMode, yet the handle is in the System table and the caller's previous mode KernelMode: the key is System's, not the caller's",
            kernel_handle_forced,
        ),
        Scenario::hivetrack(
            "bypassed-open",
            "a lower filter completes A's open itself (STATUS_CALLBACK_BYPASS) with a key object it opened earlier on its own thread with a kernel handle, which hivetrack saw opened: the object's context is replaced, the earlier record goes with it; A closes, the filter lets go, and nobody holds the hive (no phantom System holder)",
            bypassed_open,
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

/// The access masks hivetrack reports are what each open was granted: the post's
/// `GrantedAccess` (Learn REG_CREATE_KEY_INFORMATION_V1), generic rights mapped with the key
/// type's mapping and the WOW64 bits out (the model's `hive::granted_access`; fidelity audit
/// 16b, F1 and F2), where before the driver fell back to the desired mask the model left
/// alone.
fn granted_access(ctx: &mut Ctx) {
    const GENERIC_READ: u32 = 0x8000_0000;
    const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
    const KEY_WOW64_64KEY: u32 = 0x0100;
    let Some((d, c)) = begin(ctx) else { return };
    let a = spawn(ctx, APP1);
    let base = format!(r"{USER}\Software\Access");
    ensure_parents(a, &format!(r"{base}\x"));
    let mut handles = Vec::new();
    for (name, desired) in [
        ("Generic", GENERIC_READ),
        ("Maximum", MAXIMUM_ALLOWED),
        ("Wow64", KEY_READ | KEY_WOW64_64KEY),
    ] {
        match hive::open_key(a, &format!(r"{base}\{name}"), desired, true) {
            Ok(h) => handles.push(h),
            Err(s) => ctx.check(false, format!("A opens {name}: {s:#x}")),
        }
    }
    let holders = c.holders(ctx, USER);
    let mut got: Vec<(String, u32)> = holders
        .iter()
        .filter(|h| h.pid == u64::from(a))
        .flat_map(|h| {
            h.keys
                .iter()
                .map(|k| k.0.clone())
                .zip(h.key_access.iter().copied())
        })
        .filter(|(k, _)| k.starts_with(&base) && k.len() > base.len())
        .map(|(k, access)| (k[base.len() + 1..].to_string(), access))
        .collect();
    got.sort();
    ctx.check(
        got == [
            ("Generic".to_string(), 0x2_0019),
            ("Maximum".to_string(), 0xF_003F),
            ("Wow64".to_string(), 0x2_0019),
        ],
        format!("each key's access is the one granted: {got:x?}"),
    );
    for h in handles {
        let _ = hive::close_key(a, h);
    }
    process::exit_process(a);
    end(ctx, d, c);
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

/// Audit 22a, F3: an open put down to a process can link after that process's exit was
/// seen (its exit notification comes before its handle table is run down:
/// [`process::exit_process_with`]). Its record must go with that key, not stay, unmarked,
/// until unload.
fn exit_then_late_open(ctx: &mut Ctx) {
    let Some((d, c)) = begin(ctx) else { return };
    let a = spawn(ctx, APP1);
    let b = spawn(ctx, APP2);
    let key = format!(r"{USER}\Software\LateOpen");
    ensure_parents(a, &key);
    let mut opened = None;
    process::exit_process_with(b, || {
        opened = Some(process::attached(b, || {
            hive::open_key(a, &key, KEY_READ, true)
        }));
    });
    ctx.check(
        matches!(opened, Some(Ok(_))),
        format!("A's thread attached to B opens the key in B's exit window: {opened:?}"),
    );
    let procs = c.processes_but_loader(ctx);
    ctx.check(
        !procs.iter().any(|p| p.0 == u64::from(b)),
        format!("B's late key went with its handle table, and B's record with it: {procs:?}"),
    );
    ctx.check(
        procs.iter().any(|p| p.0 == u64::from(a)),
        format!("A, running, is still listed: {procs:?}"),
    );
    process::exit_process(a);
    end(ctx, d, c);
}

/// A pid is a `PspCidTable` handle, freed with the process object and handed out again
/// (ReactOS ntoskrnl/ps; the model: `create_process_with_pid`). The start key
/// (`PsGetProcessStartKey`, Windows 10 1703+) or, where it is missing, the creation time
/// (`PsGetProcessCreateTimeQuadPart`) tells the two processes apart.
fn pid_reuse(ctx: &mut Ctx) {
    pid_reuse_once(ctx, "PsGetProcessStartKey present");
    kernel::reset();
    crate::nt::exports::hide(["PsGetProcessStartKey"]);
    pid_reuse_once(ctx, "PsGetProcessStartKey hidden");
}

fn pid_reuse_once(ctx: &mut Ctx, phase: &str) {
    ctx.say(phase);
    let Some((d, c)) = begin(ctx) else { return };
    let old = spawn(ctx, APP2);
    let old_key = format!(r"{USER}\Software\Old");
    ensure_parents(old, &old_key);
    // Created inheritable (RegCreateKeyEx with bInheritHandle): a child inherits the handle,
    // so the key outlives the old process. A plain handle would not be inherited (WRK
    // `ob/obinit.c` ObDupHandleProcedure; fidelity audit 19a, F5).
    let kept = hive::open_key_inheritable(old, &old_key, KEY_READ, true);
    ctx.check(kept.is_ok(), format!("the old process opens {old_key}"));
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

/// What a client learns from the identify request: for each tracked key id, the processes
/// holding a handle to it now; plus the outcomes it got for handles that were not tracked or
/// not valid. The flow is the CLI's on Windows: `NtQuerySystemInformation`
/// (`SystemExtendedHandleInformation`, the model's `handle_table`), the key type's index
/// learned from a key handle of its own, `DuplicateHandle` of every other process's key
/// handle into itself, the request in batches of at most 64, and its duplicates closed.
struct HeldNow {
    by_id: std::collections::BTreeMap<u64, Vec<u64>>,
    not_tracked: Vec<u64>,
    /// Every answer's id that equals some object's address (must stay empty).
    addresses: Vec<u64>,
}

fn held_now(ctx: &mut Ctx, client_pid: u32, device: crate::nt::io::FileHandle) -> Option<HeldNow> {
    use crate::nt::ob::handle_table::system_handles;
    use protocol::identify::{IdentifyAnswer, IdentifyOutcome, IdentifyRequest, MAX_IDENTIFY};
    use protocol::ioctl::IOCTL_HIVETRACK_IDENTIFY_HANDLES;
    let own = hive::open_key(client_pid, r"\REGISTRY\MACHINE\SOFTWARE", KEY_READ, false).ok()?;
    let table = system_handles();
    let key_type = table
        .iter()
        .find(|e| e.pid == client_pid && e.handle == own)
        .map(|e| e.type_index);
    let _ = hive::close_key(client_pid, own);
    let key_type = key_type?;
    let objects: Vec<u64> = table.iter().map(|e| e.object as u64).collect();
    let theirs: Vec<(u32, u64)> = table
        .iter()
        .filter(|e| e.type_index == key_type && e.pid != client_pid)
        .map(|e| (e.pid, e.handle))
        .collect();
    let mut out = HeldNow {
        by_id: std::collections::BTreeMap::new(),
        not_tracked: Vec::new(),
        addresses: Vec::new(),
    };
    for batch in theirs.chunks(MAX_IDENTIFY) {
        let dups: Vec<(u64, u64)> = batch
            .iter()
            .filter_map(|&(pid, h)| {
                hive::duplicate_handle(pid, h, client_pid)
                    .ok()
                    .map(|d| (u64::from(pid), d))
            })
            .collect();
        let handles: Vec<u64> = dups.iter().map(|d| d.1).collect();
        let request = IdentifyRequest::new(&handles)?;
        let mut input = vec![0u8; protocol::wire::HEADER_LEN + 8 + 8 * handles.len()];
        let n = protocol::wire::encode(&request, &mut input).ok()?;
        let r = ctx.ioctl_checked(
            device,
            IOCTL_HIVETRACK_IDENTIFY_HANDLES,
            &input[..n],
            u32::try_from(IdentifyAnswer::encoded_len(handles.len())).unwrap_or(0),
        );
        for &(_, d) in &dups {
            let _ = hive::close_key(client_pid, d);
        }
        if r.status != crate::nt::status::STATUS_SUCCESS {
            ctx.check(
                false,
                format!(
                    "IOCTL_HIVETRACK_IDENTIFY_HANDLES: {}",
                    crate::nt::status::describe(r.status)
                ),
            );
            return None;
        }
        let answer = protocol::wire::decode::<IdentifyAnswer>(&r.output[..r.information]).ok()?;
        for (e, &(pid, _)) in answer.entries().zip(&dups) {
            if objects.contains(&e.id) {
                out.addresses.push(e.id);
            }
            match e.outcome {
                IdentifyOutcome::Tracked => out.by_id.entry(e.id).or_default().push(pid),
                IdentifyOutcome::NotTracked => out.not_tracked.push(pid),
                IdentifyOutcome::InvalidHandle => {}
            }
        }
    }
    Some(out)
}

/// `DuplicateHandle` and inheritance give a process a key handle with no registry
/// notification (the model: `td-handle-table`; Learn, `DuplicateHandle`: "the duplicate
/// handle refers to the same object as the original handle"), so the driver's record names
/// the opener. Who holds the key now is in the system handle table, and only the driver can
/// tell which of its records a handle's object is, without handing out the address.
#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // a, b: processes; c, d: client, driver
fn duplicated_holder(ctx: &mut Ctx) {
    use protocol::identify::{IdentifyAnswer, IdentifyOutcome, IdentifyRequest};
    use protocol::ioctl::IOCTL_HIVETRACK_IDENTIFY_HANDLES;
    // A key opened before the driver starts: the identify answer must say "not tracked".
    super::tracking::boot_hives(ctx);
    let early = spawn(ctx, APP2);
    let early_key = format!(r"{}\Early", super::tracking::SOFTWARE);
    let early_h = hive::open_key(early, &early_key, KEY_READ, true).ok();
    ctx.check(early_h.is_some(), "a key opened before the driver starts");
    let d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let a = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\Shared");
    ensure_parents(a, &key);
    let ka = hive::open_key(a, &key, KEY_READ, true);
    ctx.check(ka.is_ok(), format!("A opens {key}"));
    let ka = ka.unwrap_or(0);
    let b = spawn(ctx, APP2);
    let dup = hive::duplicate_handle(a, ka, b);
    ctx.check(dup.is_ok(), "DuplicateHandle(A's handle into B)");
    // A makes its handle inheritable (SetHandleInformation HANDLE_FLAG_INHERIT), so C
    // inherits it at its creation; a plain handle would not be (WRK `ob/obinit.c`
    // ObDupHandleProcedure; fidelity audit 19a, F5).
    let s = hive::set_handle_inherit(a, ka, true);
    ctx.check(
        s == 0,
        format!("SetHandleInformation(HANDLE_FLAG_INHERIT): {s:#x}"),
    );
    let child = process::create_process(a, APP2, true).unwrap_or_default();
    let _ = hive::close_key(a, ka);
    process::exit_process(a);
    let holders = c.holders(ctx, USER);
    let id = holders
        .iter()
        .flat_map(|h| h.keys.iter().zip(&h.key_ids))
        .find(|(k, _)| k.0.eq_ignore_ascii_case(&key))
        .map(|(_, &id)| id);
    ctx.check(
        holders.len() == 1 && holders[0].pid == u64::from(a) && id.is_some(),
        format!(
            "the driver names the opener A (exited), not the holders now: {}",
            describe(&holders)
        ),
    );
    let Some((cli, dev)) = client_device(ctx) else {
        return;
    };
    let now = held_now(ctx, cli, dev);
    ctx.check(now.is_some(), "the client's identify flow ran");
    if let Some(now) = now {
        let by = id
            .and_then(|i| now.by_id.get(&i))
            .cloned()
            .unwrap_or_default();
        let mut want = vec![u64::from(b), u64::from(child)];
        want.sort_unstable();
        let mut got = by.clone();
        got.sort_unstable();
        ctx.check(
            got == want,
            format!("held now by B ({b}) and C ({child}), not A ({a}): {by:?}"),
        );
        ctx.check(
            now.not_tracked.contains(&u64::from(early)),
            format!(
                "the key opened before tracking is answered 'not tracked' for its holder {early}: {:?}",
                now.not_tracked
            ),
        );
        ctx.check(
            now.addresses.is_empty(),
            format!("no answer carries an object address: {:?}", now.addresses),
        );
    }
    // Hostile input: a handle value that is not the caller's, a kernel-handle value.
    if let Some(req) = IdentifyRequest::new(&[0x7FFF_FFF0, 0xFFFF_FFFF_8000_0004]) {
        let mut input = [0u8; 64];
        let n = protocol::wire::encode(&req, &mut input).unwrap_or(0);
        let r = ctx.ioctl_checked(
            dev,
            IOCTL_HIVETRACK_IDENTIFY_HANDLES,
            &input[..n],
            u32::try_from(IdentifyAnswer::encoded_len(2)).unwrap_or(0),
        );
        let answer = protocol::wire::decode::<IdentifyAnswer>(&r.output[..r.information]).ok();
        ctx.check(
            answer.is_some_and(|a| {
                a.entries()
                    .all(|e| e.outcome == IdentifyOutcome::InvalidHandle && e.id == 0)
            }),
            format!("handles not in the caller's table are answered invalid: {answer:?}"),
        );
        let short = ctx.ioctl_checked(dev, IOCTL_HIVETRACK_IDENTIFY_HANDLES, &input[..n], 24);
        ctx.check(
            short.status == crate::nt::status::STATUS_BUFFER_TOO_SMALL && short.information == 0,
            format!(
                "an output too small for the answer: {}",
                crate::nt::status::describe(short.status)
            ),
        );
    }
    full_identify_request(ctx, cli, dev);
    crate::nt::io::close(dev);
    let dup = dup.unwrap_or(0);
    let _ = hive::close_key(b, dup);
    process::exit_process(b);
    process::exit_process(child);
    process::exit_process(cli);
    if let Some(h) = early_h {
        let _ = hive::close_key(early, h);
    }
    process::exit_process(early);
    end(ctx, d, c);
}

/// The client: its own process, its own handle to the device.
fn client_device(ctx: &mut Ctx) -> Option<(u32, crate::nt::io::FileHandle)> {
    let cli = spawn(ctx, r"\Device\HarddiskVolume2\Tools\hivetrack.exe");
    let dev = crate::nt::io::open(
        protocol::ioctl::WIN32_DEVICE_PATH,
        crate::nt::se::security::Caller::Admin,
        cli,
        crate::nt::se::security::GENERIC_READ | crate::nt::se::security::GENERIC_WRITE,
    );
    if dev.is_err() {
        ctx.check(false, "the client opens the device");
    }
    dev.ok().map(|d| (cli, d))
}

/// Handle values refused up front are answered without `ObReferenceObjectByHandle`: the
/// model counts the driver's calls of it.
fn identify_null_handle(ctx: &mut Ctx) {
    use protocol::identify::{IdentifyAnswer, IdentifyOutcome};
    super::tracking::boot_hives(ctx);
    let d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let Some((cli, dev)) = client_device(ctx) else {
        return;
    };
    let key = format!(r"{}\Mine", super::tracking::SOFTWARE);
    ensure_parents(cli, &key);
    let k = hive::open_key(cli, &key, KEY_READ, true).unwrap_or(0);
    ctx.check(k != 0, format!("the client opens {key}"));
    // The real handle alone first: the calls one lookup of it costs (ioctl_checked sends the
    // request twice, with two poison bytes).
    let before = crate::nt::ob::object::references_by_handle();
    let _ = ask_identify(ctx, dev, &[k]);
    let alone = crate::nt::ob::object::references_by_handle() - before;
    let before = crate::nt::ob::object::references_by_handle();
    let r = ask_identify(ctx, dev, &[0, 0xFFFF_FFFF_8000_0004, 0x8000_0008, k]);
    let calls = crate::nt::ob::object::references_by_handle() - before;
    let answer = r
        .as_ref()
        .and_then(|r| protocol::wire::decode::<IdentifyAnswer>(&r.output[..r.information]).ok());
    let outcomes: Vec<IdentifyOutcome> = answer
        .map(|a| a.entries().map(|e| e.outcome).collect())
        .unwrap_or_default();
    ctx.check(
        outcomes.len() == 4
            && outcomes[..3].iter().all(|&o| o == IdentifyOutcome::InvalidHandle)
            && outcomes[3] != IdentifyOutcome::InvalidHandle,
        format!("0 and the two kernel-handle values answered invalid, the real handle looked up: {outcomes:?}"),
    );
    ctx.check(
        alone > 0 && calls == alone,
        format!("ObReferenceObjectByHandle called for the real handle only, not for 0 or the refused values: {calls} calls, {alone} for the real handle alone"),
    );
    let _ = hive::close_key(cli, k);
    crate::nt::io::close(dev);
    process::exit_process(cli);
    c.close();
    let mut d = d;
    ctx.unload_and_check_clean(&mut d);
}

/// One identify request of `MAX_IDENTIFY` handles (protocol 4: 2,048; 64 before, when a
/// hive held through 65,536 handles cost the driver 1,024 passes over all its records) is
/// answered whole: the client's own opens of one key, each its own object and record, so
/// every answer is Tracked under a distinct id. One handle more is refused.
fn full_identify_request(ctx: &mut Ctx, cli: u32, dev: crate::nt::io::FileHandle) {
    use protocol::identify::{IdentifyAnswer, IdentifyOutcome, MAX_IDENTIFY};
    let key = format!(r"{}\Early", super::tracking::SOFTWARE);
    let handles: Vec<u64> = (0..=MAX_IDENTIFY)
        .filter_map(|_| hive::open_key(cli, &key, KEY_READ, false).ok())
        .collect();
    ctx.check(
        handles.len() == MAX_IDENTIFY + 1,
        format!("the client opens {key} {} times", MAX_IDENTIFY + 1),
    );
    let full = &handles[..MAX_IDENTIFY.min(handles.len())];
    let r = ask_identify(ctx, dev, full);
    let ids: Option<Vec<u64>> = r.as_ref().and_then(|r| {
        let a = protocol::wire::decode::<IdentifyAnswer>(&r.output[..r.information]).ok()?;
        (a.len() == full.len() && a.entries().all(|e| e.outcome == IdentifyOutcome::Tracked))
            .then(|| a.entries().map(|e| e.id).collect())
    });
    let distinct = ids.as_ref().map(|ids| {
        let mut d = ids.clone();
        d.sort_unstable();
        d.dedup();
        d.len()
    });
    ctx.check(
        distinct == Some(MAX_IDENTIFY),
        format!(
            "one request of {MAX_IDENTIFY} handles: every one Tracked, each its own key id: {} ({:?} distinct)",
            r.as_ref()
                .map_or_else(|| "no request".to_owned(), |r| crate::nt::status::describe(r.status)),
            distinct
        ),
    );
    if let Some(ids) = &ids {
        reversed_identify_request(ctx, dev, full, ids);
    }
    if handles.len() > MAX_IDENTIFY {
        let over = ask_identify(ctx, dev, &handles);
        ctx.check(
            over.as_ref().is_some_and(|r| {
                r.status == crate::nt::status::STATUS_INVALID_PARAMETER && r.information == 0
            }),
            format!(
                "a request of {} handles is refused: {:?}",
                handles.len(),
                over.map(|r| crate::nt::status::describe(r.status))
            ),
        );
    }
    for h in handles {
        let _ = hive::close_key(cli, h);
    }
}

/// The same handles as the full request (their key ids `ids`) in reverse order, the first
/// replaced by a value not in the caller's table and the second by the third's: each answer
/// must be the one for its own handle (the driver sorts the objects to look them up; an
/// answer put back in that order, not the request's, passes the full request's check:
/// review 17a).
fn reversed_identify_request(
    ctx: &mut Ctx,
    dev: crate::nt::io::FileHandle,
    full: &[u64],
    ids: &[u64],
) {
    use protocol::identify::{IdentifyAnswer, IdentifyOutcome};
    let id_of: std::collections::HashMap<u64, u64> =
        full.iter().copied().zip(ids.iter().copied()).collect();
    let mut mixed: Vec<u64> = full.iter().rev().copied().collect();
    mixed[0] = 0x7FFF_FFF0;
    mixed[1] = mixed[2];
    let r = ask_identify(ctx, dev, &mixed);
    let answer = r
        .as_ref()
        .and_then(|r| protocol::wire::decode::<IdentifyAnswer>(&r.output[..r.information]).ok());
    let wrong: Vec<usize> = answer.map_or_else(
        || (0..mixed.len()).collect(),
        |a| {
            (0..mixed.len())
                .filter(|&i| {
                    let expected = if i == 0 {
                        (IdentifyOutcome::InvalidHandle, 0)
                    } else {
                        (
                            IdentifyOutcome::Tracked,
                            id_of.get(&mixed[i]).copied().unwrap_or(0),
                        )
                    };
                    a.entry(i).map(|e| (e.outcome, e.id)) != Some(expected)
                })
                .collect()
        },
    );
    ctx.check(
        wrong.is_empty(),
        format!(
            "the same handles reversed, one invalid and one twice: each answer is its own handle's ({} wrong, first at {:?})",
            wrong.len(),
            wrong.first()
        ),
    );
}

/// Sends an identify request for `handles` (more than `MAX_IDENTIFY` built by hand, as the
/// protocol crate refuses them); `None` when it cannot be encoded.
fn ask_identify(
    ctx: &mut Ctx,
    dev: crate::nt::io::FileHandle,
    handles: &[u64],
) -> Option<crate::nt::io::IoctlResult> {
    use protocol::identify::{IdentifyAnswer, IdentifyRequest, MAX_IDENTIFY};
    use protocol::ioctl::IOCTL_HIVETRACK_IDENTIFY_HANDLES;
    let request = IdentifyRequest::new(handles).or_else(|| IdentifyRequest::new(&handles[..1]))?;
    let mut input = vec![0u8; protocol::wire::HEADER_LEN + 8 + 8 * handles.len()];
    let n = protocol::wire::encode(&request, &mut input).ok()?;
    // A request of MAX_IDENTIFY + 1 is built by hand: the protocol crate refuses it.
    if handles.len() > MAX_IDENTIFY {
        let count = u32::try_from(handles.len()).ok()?;
        input[protocol::wire::HEADER_LEN..protocol::wire::HEADER_LEN + 4]
            .copy_from_slice(&count.to_le_bytes());
        for (i, h) in handles.iter().enumerate() {
            let at = protocol::wire::HEADER_LEN + 8 + 8 * i;
            input[at..at + 8].copy_from_slice(&h.to_le_bytes());
        }
        let total = u32::try_from(input.len()).ok()?;
        input[8..12].copy_from_slice(&total.to_le_bytes());
    }
    let len = if handles.len() > MAX_IDENTIFY {
        input.len()
    } else {
        n
    };
    Some(ctx.ioctl_checked(
        dev,
        IOCTL_HIVETRACK_IDENTIFY_HANDLES,
        &input[..len],
        u32::try_from(IdentifyAnswer::encoded_len(handles.len())).unwrap_or(0),
    ))
}

/// Docs, `InitializeObjectAttributes`: OBJ_KERNEL_HANDLE "specifies that the handle can only
/// be accessed in kernel mode"; such handles go into the System process's handle table
/// (ReactOS `ObpCreateHandle`: `ObpKernelHandleTable`, the System process's), whichever
/// thread opens them, and a user process's exit does not close them.
fn kernel_handle(ctx: &mut Ctx) {
    kernel_handle_by(ctx, "KernelHandle", hive::open_kernel_key);
}

/// As [`kernel_handle`], with `OBJ_FORCE_ACCESS_CHECK` too: the notification's
/// CheckAccessMode is UserMode, the handle still System's (fidelity audit 16b, F3: the driver
/// took CheckAccessMode for the caller's mode and named A).
fn kernel_handle_forced(ctx: &mut Ctx) {
    kernel_handle_by(ctx, "KernelHandleForced", hive::open_kernel_key_forced);
}

/// A kernel handle opened by `open` on A's thread: System's, before and after A exits.
fn kernel_handle_by(
    ctx: &mut Ctx,
    name: &str,
    open: fn(u32, &str, u32, bool) -> Result<u64, crate::nt::status::NtStatus>,
) {
    let Some((d, c)) = begin(ctx) else { return };
    let a = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\{name}");
    ensure_parents(a, &key);
    let opened = open(a, &key, KEY_READ, true);
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

/// Docs, "Handling Notifications": a pre-callback that returns STATUS_CALLBACK_BYPASS
/// completes the open itself; regfltr `pre.c` CallbackPreNotificationBypass opens the key it
/// wants with its own `ZwCreateKey` (a full pre/post pair the callbacks above see: hivetrack
/// tracks that object and attaches its context), references the object, closes its handle
/// and returns the object in ResultObject. The callbacks above then get the post with that
/// same object ([`crate::nt::cm::registry::PreOutcome::unwind`]): hivetrack's second
/// `CmSetCallbackObjectContext` on it returns the first context in `OldContext` (docs:
/// "receives the previously set context"). One object, one cleanup, one context: a record
/// for the first context would never be freed and would hold the hive for ever.
fn bypassed_open(ctx: &mut Ctx) {
    let Some((d, c)) = begin(ctx) else { return };
    let lower = crate::nt::cm::registry::register_emulated(
        crate::nt::cm::registry::filter_bypass_cached,
        0,
        "300000",
    );
    ctx.check(
        lower.is_ok(),
        format!("another filter registered below hivetrack (altitude 300000): {lower:?}"),
    );
    let a = spawn(ctx, APP1);
    let parent = format!(r"{USER}\Software\Bypass");
    ensure_parents(a, &format!(r"{parent}\x"));
    let asked = format!(r"{parent}\{}", crate::nt::cm::registry::BYPASS_MARKER);
    let made = format!(r"{parent}\{}", crate::nt::cm::registry::BYPASS_REDIRECT);
    // The filter's own open, on its own system thread (outside any callback: every filter
    // sees it, hivetrack tracks it as System's), kept referenced for its bypass.
    let cached = hive::filter_create_referenced(0, &made);
    ctx.check(
        cached.is_some(),
        format!("the filter opens {made} for itself and keeps the object"),
    );
    let _ = crate::nt::cm::registry::set_bypass_object(cached.unwrap_or(0));
    let opened = hive::open_key(a, &asked, KEY_READ, true);
    ctx.check(
        opened.is_ok(),
        format!("A's open, completed by the filter: {opened:?}"),
    );
    let holders = c.holders(ctx, USER);
    ctx.check(
        holders.len() == 1 && holders[0].pid == u64::from(a) && holds(&holders[0], &made),
        format!(
            "one holder, A, of the key the filter made: {}",
            describe(&holders)
        ),
    );
    if let Ok(k) = opened {
        let s = hive::close_key(a, k);
        ctx.check(s == 0, format!("A closes its handle: {s:#x}"));
    }
    // The filter lets go of its object: its last reference, the object ends.
    let kept = crate::nt::cm::registry::set_bypass_object(0);
    if kept != 0 {
        crate::nt::ob::object::dereference(kept);
    }
    let holders = c.holders(ctx, USER);
    ctx.check(
        holders.is_empty(),
        format!(
            "the object is gone: nobody holds the hive ({})",
            describe(&holders)
        ),
    );
    process::exit_process(a);
    end(ctx, d, c);
}
