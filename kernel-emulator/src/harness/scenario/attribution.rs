//! hivetrack.sys scenarios of open-time stacks and modules (issue 16): which code opened a
//! key still held. The model walks the user stacks scenarios give threads
//! (`thread::with_user_stack`, `td-user-stack`) and reports image loads
//! (`image::load_image`, `td-load-image-notify`); these check what the driver makes of them:
//! - `stacks`: capture on for the profile hive; a shell extension in explorer.exe opens keys
//!   that stay open: their stacks are reported exactly, shared when equal, and the modules
//!   of explorer (with the DLL) are listed; opens in another hive carry nothing;
//! - `stacks-after-exit`: the opener's keys outlive it (a duplicated handle): the stack and
//!   its modules are still reported after it exited, and go with its last key;
//! - `stacks-hostile`: a stack that faults part-way, a thread with no user stack, a kernel
//!   handle, a stack with a kernel address in it: no bugcheck, no kernel address reported,
//!   each key marked as having no stack;
//! - `stacks-low-resources`: the `stacks` workload failing its k-th fallible call for every
//!   k: no bugcheck, no leak, every stack or module not kept counted.

use std::collections::BTreeMap;

use protocol::capture::{CaptureOp, CaptureRequest, CaptureScope, CaptureState};
use protocol::cursor::Cursor;
use protocol::holders::{HolderKey, HolderRecord, Holders};
use protocol::ioctl::IOCTL_HIVETRACK_CAPTURE;
use protocol::modules::{ModuleRecord, Modules};
use protocol::request::QueryKind;
use protocol::stacks::Stacks;
use protocol::text::Text;
use protocol::wire::{self, encode};

use super::tracking::{
    APP2, CLASSES, Client, KEY_READ, OUT_LEN, SHELL, SOFTWARE, USER, ensure_parents, load_profile,
    spawn, start, unload_all,
};
use super::{Ctx, Scenario};
use crate::nt::cm::hive;
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::ps::image::{self, NTDLL_BASE};
use crate::nt::ps::process;
use crate::nt::ps::thread::{UserStack, with_user_stack};
use crate::nt::status::{self, STATUS_SUCCESS};
use crate::verifier::faults::FaultPolicy;

/// The shell extension's path, base and size.
pub(crate) const SHELLEXT: &str =
    r"\Device\HarddiskVolume2\Program Files\Contoso\ContosoShellExt.dll";
pub(crate) const SHELLEXT_BASE: u64 = 0x7FFA_1230_0000;
const SHELLEXT_SIZE: u64 = 0x8_0000;
/// kernelbase.dll (the registry API's own frames).
const KERNELBASE: &str = r"\Device\HarddiskVolume2\Windows\System32\KernelBase.dll";
const KERNELBASE_BASE: u64 = 0x7FFB_49F0_0000;
/// The sync client's hook DLL (`stacks-after-exit`).
const SYNCHOOK: &str = r"\Device\HarddiskVolume2\Program Files\Sync\SyncHook.dll";
const SYNCHOOK_BASE: u64 = 0x7FFA_5550_0000;

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "stacks",
            "capture on for the profile hive: a shell extension in explorer.exe opens keys that stay open; each key's stack is reported frame for frame, equal stacks once, explorer's modules (with the DLL) listed; keys in SOFTWARE opened from the same code carry no stack",
            stacks,
        ),
        Scenario::hivetrack(
            "stacks-after-exit",
            "a sync client's hook DLL opens a key and the handle is duplicated away; the client exits: its key is still reported with its stack, and its modules still resolve it; both go with the key",
            stacks_after_exit,
        ),
        Scenario::hivetrack(
            "stacks-hostile",
            "capture on: a stack that faults part-way, a thread with no user stack, a kernel handle, frames with a kernel address: no bugcheck, no kernel address in any answer, each key marked as having no stack (or cut before the kernel address)",
            stacks_hostile,
        ),
        Scenario::hivetrack(
            "stacks-image-scope",
            "explorer.exe runs before the driver starts (no creation notification: the driver does not know its image); capture on for the image explorer.exe: its next open is captured (the driver names the process at its first tracked open, SeLocateProcessImageName) and holders shows its image; another process's open is flagged out of scope",
            stacks_image_scope,
        ),
        Scenario::hivetrack(
            "stacks-pid-scope",
            "two svchost.exe processes, each opening a key: capture on for one process id captures its open and flags the other's, of the same image, out of scope (audit 23b, M5); a request naming no decimal process id is refused",
            stacks_pid_scope,
        ),
        Scenario::hivetrack(
            "stacks-wow64",
            "capture on: a 32-bit (Wow64) process and a 64-bit one each open a key; holders flags the 32-bit one (HolderProcess::WOW64, from IoIs32bitProcess at its captured open), whose stack holds only the Wow64 layer, and not the 64-bit one (audit 20a, M2)",
            stacks_wow64,
        ),
        Scenario::hivetrack(
            "stacks-image-scope-apc",
            "explorer.exe runs before the driver starts and its first tracked open comes with registry callbacks at APC_LEVEL: the driver does not call SeLocateProcessImageName there (PASSIVE_LEVEL only) and leaves explorer unnamed; its next new open, at PASSIVE_LEVEL, names it (audit 20a, M4)",
            stacks_image_scope_apc,
        ),
        Scenario::hivetrack(
            "stacks-low-resources",
            "the stacks workload failing its k-th fallible call for every k: no bugcheck, no leak, every stack or module not kept counted, nothing reported wrong",
            stacks_low_resources,
        ),
    ]
}

/// Sets the capture scope; returns the state the driver reports.
pub(crate) fn set_capture(
    ctx: &mut Ctx,
    c: &Client,
    scope: CaptureScope,
    text: &str,
) -> Option<(CaptureScope, String)> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let req = CaptureRequest {
        op: CaptureOp::Set,
        scope,
        text: Text::Units(&units),
    };
    let mut input = vec![0u8; 64 + 2 * units.len()];
    let n = encode(&req, &mut input).ok()?;
    let r = io::device_io_control(c.h, IOCTL_HIVETRACK_CAPTURE, &input[..n], 4096, 0xA5);
    if r.status != STATUS_SUCCESS {
        ctx.check(false, format!("capture: {}", status::describe(r.status)));
        return None;
    }
    let st = wire::decode::<CaptureState<'_>>(&r.output[..r.information]).ok()?;
    Some((st.scope, st.text.to_string()))
}

/// (name, stack id, flags) of every key in `hive`, per pid.
fn keys(ctx: &mut Ctx, c: &Client, hive: &str) -> BTreeMap<u64, Vec<(String, u32, u32)>> {
    let mut out: BTreeMap<u64, Vec<(String, u32, u32)>> = BTreeMap::new();
    let mut pid = 0;
    c.pages::<Holders>(ctx, QueryKind::Holders, hive, |page| {
        for rec in page.records() {
            match rec {
                HolderRecord::Process(p) => pid = p.pid,
                HolderRecord::Key(k) => {
                    out.entry(pid)
                        .or_default()
                        .push((k.name.to_string(), k.stack, k.flags));
                }
            }
        }
    });
    out
}

/// Stack id → frames.
fn stacks_of(ctx: &mut Ctx, c: &Client) -> BTreeMap<u32, Vec<u64>> {
    let mut out = BTreeMap::new();
    c.pages::<Stacks>(ctx, QueryKind::Stacks, "", |page| {
        for s in page.records() {
            out.insert(s.id, s.frames().to_vec());
        }
    });
    out
}

/// pid → (exited, [(base, size, name)]).
type ModuleList = BTreeMap<u64, (bool, Vec<(u64, u64, String)>)>;

fn modules_of(ctx: &mut Ctx, c: &Client) -> ModuleList {
    let mut out: ModuleList = BTreeMap::new();
    let mut pid = 0;
    c.pages::<Modules>(ctx, QueryKind::Modules, "", |page| {
        for rec in page.records() {
            match rec {
                ModuleRecord::Process(p) => {
                    pid = p.pid;
                    out.entry(pid).or_default().0 =
                        p.flags & protocol::modules::ModuleProcess::EXITED != 0;
                }
                ModuleRecord::Module(m) => {
                    out.entry(pid)
                        .or_default()
                        .1
                        .push((m.base, m.size, m.name.to_string()));
                }
            }
        }
    });
    out
}

/// The shell extension's stack: ntdll's syscall return, kernelbase's `RegOpenKeyExW`, two
/// frames in the extension, explorer's caller.
pub(crate) fn shellext_stack(explorer: u32, site: u64) -> Vec<u64> {
    vec![
        NTDLL_BASE + 0x9_D4C4,
        KERNELBASE_BASE + 0x2_1F30,
        SHELLEXT_BASE + site,
        SHELLEXT_BASE + 0x3_3A10,
        image::main_image_base(explorer) + 0x1_2C40,
    ]
}

/// What the `stacks` workload leaves.
pub(crate) struct Staged {
    /// explorer.exe.
    pub(crate) explorer: u32,
    /// Its key handles.
    pub(crate) handles: Vec<u64>,
    /// (key, expected frames) of each key it holds in the profile, in opening order.
    pub(crate) expected: Vec<(String, Vec<u64>)>,
    /// `stacks_captured` before and after the open in SOFTWARE (out of scope).
    pub(crate) captured_around: (u64, u64),
}

/// Capture on for the profile hive; explorer.exe maps the shell extension, which opens three
/// keys (two from the same site) and explorer one key of its own; the same extension code
/// opens a key in SOFTWARE (out of scope).
pub(crate) fn stacks_workload(ctx: &mut Ctx, c: &Client) -> Option<Staged> {
    set_capture(ctx, c, CaptureScope::Hive, USER)?;
    let explorer = spawn(ctx, SHELL);
    image::load_image(explorer, KERNELBASE, KERNELBASE_BASE, 0x2B_0000);
    image::load_image(explorer, SHELLEXT, SHELLEXT_BASE, SHELLEXT_SIZE);
    let contoso = format!(r"{USER}\Software\Contoso\ShellExt");
    ensure_parents(explorer, &format!(r"{contoso}\x"));
    ensure_parents(explorer, &format!(r"{SOFTWARE}\Contoso\x"));
    let opens = [
        (
            format!(r"{contoso}\Settings"),
            shellext_stack(explorer, 0x1F2C),
        ),
        (
            format!(r"{contoso}\Cache"),
            shellext_stack(explorer, 0x1F2C),
        ),
        (
            format!(r"{contoso}\Overlay"),
            shellext_stack(explorer, 0x2B80),
        ),
        (
            format!(r"{USER}\Software\Microsoft\Windows\CurrentVersion\Explorer"),
            crate::nt::ps::thread::default_frames(explorer),
        ),
    ];
    let mut handles = Vec::new();
    let mut expected = Vec::new();
    for (key, frames) in opens {
        ensure_parents(explorer, &format!(r"{key}\x"));
        let h = with_user_stack(explorer, UserStack::Frames(frames.clone()), || {
            hive::open_key(explorer, &key, KEY_READ, true)
        });
        if let Ok(h) = h {
            handles.push(h);
            expected.push((key, frames));
        }
    }
    let out_of_scope = format!(r"{SOFTWARE}\Contoso\Shared");
    let before = c.stats(ctx).stacks_captured;
    let h = with_user_stack(
        explorer,
        UserStack::Frames(shellext_stack(explorer, 0x1F2C)),
        || hive::open_key(explorer, &out_of_scope, KEY_READ, true),
    );
    if let Ok(h) = h {
        handles.push(h);
    }
    let after = c.stats(ctx).stacks_captured;
    Some(Staged {
        explorer,
        handles,
        expected,
        captured_around: (before, after),
    })
}

fn stacks(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let Some(st) = stacks_workload(ctx, &c) else {
        return;
    };
    let state = set_capture(ctx, &c, CaptureScope::Hive, USER);
    ctx.check(
        state
            .as_ref()
            .is_some_and(|(s, t)| *s == CaptureScope::Hive && t == USER),
        format!("the capture state names the hive: {state:?}"),
    );
    let held = keys(ctx, &c, USER);
    let mine = held
        .get(&u64::from(st.explorer))
        .cloned()
        .unwrap_or_default();
    let stacks = stacks_of(ctx, &c);
    for (key, frames) in &st.expected {
        let got = mine
            .iter()
            .find(|k| k.0.eq_ignore_ascii_case(key))
            .and_then(|k| stacks.get(&k.1));
        ctx.check(
            got == Some(frames),
            format!("{key}: its open's stack is reported frame for frame ({got:x?})"),
        );
    }
    let ids: Vec<u32> = mine.iter().map(|k| k.1).collect();
    let distinct: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    ctx.check(
        ids.len() == 4 && distinct.len() == 3 && stacks.len() == 3,
        format!(
            "two keys opened from one site share a stack: ids {ids:?}, {} stored",
            stacks.len()
        ),
    );
    let other = keys(ctx, &c, SOFTWARE);
    let outside = other
        .get(&u64::from(st.explorer))
        .cloned()
        .unwrap_or_default();
    ctx.check(
        outside.len() == 1 && outside[0].1 == 0 && outside[0].2 == HolderKey::STACK_OUT_OF_SCOPE,
        format!(
            "the key in SOFTWARE carries no stack, and says it was outside the capture scope: {outside:?}"
        ),
    );
    let modules = modules_of(ctx, &c);
    let listed = modules.get(&u64::from(st.explorer));
    let names: Vec<String> = listed
        .map(|(_, m)| m.iter().map(|x| x.2.clone()).collect())
        .unwrap_or_default();
    ctx.check(
        modules.len() == 1
            && names.len() == 4
            && names[0].eq_ignore_ascii_case(SHELL)
            && names[1].eq_ignore_ascii_case(image::NTDLL_NAME)
            && names[3].eq_ignore_ascii_case(SHELLEXT)
            && listed.is_some_and(|(_, m)| m[3].0 == SHELLEXT_BASE && m[3].1 == SHELLEXT_SIZE),
        format!("explorer's modules, in load order, with the extension at its base: {modules:?}"),
    );
    let s = c.stats(ctx);
    ctx.check(
        st.captured_around.0 == st.captured_around.1 && s.stacks_stored == 3 && s.stacks_empty == 0,
        format!(
            "stats: the out-of-scope open captured nothing ({:?}), {} stored, {} empty",
            st.captured_around, s.stacks_stored, s.stacks_empty
        ),
    );
    ctx.check(
        s.image_loads_tracked == 1 && s.modules_tracked >= 4,
        format!(
            "image loads are seen ({} tracked, {} modules)",
            s.image_loads_tracked, s.modules_tracked
        ),
    );
    for h in &st.handles {
        let _ = hive::close_key(st.explorer, *h);
    }
    let s = c.stats(ctx);
    ctx.check(
        s.stacks_stored == 0,
        format!("the stacks go with their keys ({} left)", s.stacks_stored),
    );
    let none_listed = modules_of(ctx, &c).is_empty();
    ctx.check(
        none_listed,
        "no process with a stacked key: no modules listed",
    );
    set_capture(ctx, &c, CaptureScope::Off, "");
    process::exit_process(st.explorer);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, c: driver and client; h, k: the key's handle and record"
)]
fn stacks_after_exit(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    set_capture(ctx, &c, CaptureScope::All, "");
    let sync = spawn(ctx, APP2);
    let keeper = spawn(ctx, SHELL);
    image::load_image(sync, SYNCHOOK, SYNCHOOK_BASE, 0x4_0000);
    let key = format!(r"{USER}\Software\Sync\State");
    ensure_parents(sync, &format!(r"{key}\x"));
    let frames = vec![
        NTDLL_BASE + 0x9_D4C4,
        SYNCHOOK_BASE + 0x1_0A40,
        image::main_image_base(sync) + 0x2200,
    ];
    let h = with_user_stack(sync, UserStack::Frames(frames.clone()), || {
        hive::open_key(sync, &key, KEY_READ, true)
    });
    let Ok(h) = h else {
        ctx.check(false, "the sync client opens its key");
        return;
    };
    let dup = hive::duplicate_handle(sync, h, keeper);
    ctx.check(dup.is_ok(), "the handle is duplicated into explorer");
    process::exit_process(sync);
    let held = keys(ctx, &c, USER);
    let k = held
        .get(&u64::from(sync))
        .and_then(|ks| ks.iter().find(|k| k.0.eq_ignore_ascii_case(&key)).cloned());
    let stacks = stacks_of(ctx, &c);
    ctx.check(
        k.as_ref().and_then(|k| stacks.get(&k.1)) == Some(&frames),
        format!("after the opener exited its key keeps its stack: {k:?}"),
    );
    let modules = modules_of(ctx, &c);
    let theirs = modules.get(&u64::from(sync));
    let resolves = theirs.is_some_and(|(exited, m)| {
        *exited
            && m.iter().any(|(base, size, name)| {
                name.eq_ignore_ascii_case(SYNCHOOK) && (*base..base + size).contains(&frames[1])
            })
    });
    ctx.check(
        resolves,
        format!("the exited opener's modules still resolve its frame in SyncHook.dll: {theirs:?}"),
    );
    let before = c.stats(ctx).modules_tracked;
    if let Ok(dup) = dup {
        let _ = hive::close_key(keeper, dup);
    }
    let s = c.stats(ctx);
    let none_listed = modules_of(ctx, &c).is_empty();
    ctx.check(
        s.stacks_stored == 0 && s.modules_tracked < before && none_listed,
        format!(
            "with its last key the exited opener goes, and its modules ({before} -> {}) and stack ({} left) with it",
            s.modules_tracked, s.stacks_stored
        ),
    );
    process::exit_process(keeper);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// A kernel address in `bytes`: any 8 bytes in the kernel half, or in a range the model's
/// kernel objects live in ([`super::ioctl_fuzz::kernel_ranges`]: the emulator's key objects,
/// processes and pool are at Linux user addresses, which the first test cannot see). Frames
/// are user addresses; a kernel one must never be reported.
fn has_kernel_address(bytes: &[u8], ranges: &[(u64, u64)]) -> bool {
    bytes.windows(8).any(|w| {
        let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        v >= 0xFFFF_8000_0000_0000 && v != u64::MAX
    }) || super::ioctl_fuzz::kernel_address_in(bytes, ranges).is_some()
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, c: driver and client; p, k, s: process, key, stats"
)]
fn stacks_hostile(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    set_capture(ctx, &c, CaptureScope::All, "");
    let p = spawn(ctx, APP2);
    let base = format!(r"{USER}\Software\Hostile");
    ensure_parents(p, &format!(r"{base}\x\y"));
    let user = image::main_image_base(p) + 0x1000;
    let cases: [(&str, UserStack); 3] = [
        (
            "Faults",
            UserStack::FaultsAfter {
                frames: vec![user, user + 0x10, user + 0x20, user + 0x30],
                readable: 2,
            },
        ),
        ("NoStack", UserStack::None),
        (
            "KernelFrame",
            UserStack::Frames(vec![user, 0xFFFF_F806_1234_5678, user + 0x40]),
        ),
    ];
    let mut handles = Vec::new();
    for (name, stack) in cases {
        let key = format!(r"{base}\{name}");
        ensure_parents(p, &format!(r"{key}\x"));
        if let Ok(h) = with_user_stack(p, stack, || hive::open_key(p, &key, KEY_READ, true)) {
            handles.push((p, h));
        }
    }
    // A kernel handle: System holds it, and no user stack is walked for it.
    let kernel_key = format!(r"{base}\Kernel");
    ensure_parents(p, &format!(r"{kernel_key}\x"));
    let kh = hive::open_kernel_key(p, &kernel_key, KEY_READ, true);
    let held = keys(ctx, &c, USER);
    let stacks = stacks_of(ctx, &c);
    let find = |name: &str| {
        held.values()
            .flatten()
            .find(|k| {
                k.0.to_ascii_uppercase()
                    .ends_with(&format!(r"\{}", name.to_ascii_uppercase()))
            })
            .cloned()
    };
    for name in ["Faults", "NoStack", "Kernel"] {
        let k = find(name);
        ctx.check(
            k.as_ref()
                .is_some_and(|k| k.1 == 0 && k.2 & HolderKey::STACK_EMPTY != 0),
            format!("{name}: reported with no stack, and said so: {k:?}"),
        );
    }
    let k = find("KernelFrame");
    ctx.check(
        k.as_ref().and_then(|k| stacks.get(&k.1)) == Some(&vec![user]),
        format!("KernelFrame: the stack ends before the kernel address: {k:?} {stacks:x?}"),
    );
    let units: Vec<u16> = USER.encode_utf16().collect();
    let ranges = super::ioctl_fuzz::kernel_ranges((
        d.image.base as u64,
        (d.image.base + d.image.size) as u64,
    ));
    for kind in [QueryKind::Stacks, QueryKind::Modules, QueryKind::Holders] {
        let hive: &[u16] = if kind == QueryKind::Holders {
            &units
        } else {
            &[]
        };
        let input = Client::request(kind, hive, Cursor::START);
        let r = ctx.ioctl_checked(c.h, protocol::ioctl::query_ioctl(kind), &input, OUT_LEN);
        ctx.check(
            r.status == STATUS_SUCCESS && !has_kernel_address(&r.output[..r.information], &ranges),
            format!("{kind:?}: no kernel address in the answer"),
        );
    }
    for (pid, h) in handles {
        let _ = hive::close_key(pid, h);
    }
    if let Ok(kh) = kh {
        let _ = hive::close_key(crate::harness::scenario::tracking::SYSTEM_PID, kh);
    }
    process::exit_process(p);
    let s = c.stats(ctx);
    ctx.check(
        s.stacks_stored == 0,
        format!("nothing left stored ({})", s.stacks_stored),
    );
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// One faulted run of the stacks workload: (failures injected, what was counted for them).
fn faulty_stacks(ctx: &mut Ctx, policy: FaultPolicy) -> (usize, u64) {
    kernel::reset();
    let mut d = ctx.load();
    if d.entry() != STATUS_SUCCESS {
        ctx.check(false, "DriverEntry without faults");
        return (0, 0);
    }
    let Some(c) = Client::open(ctx) else {
        return (0, 0);
    };
    load_profile(ctx);
    // Under Driver Verifier lookasides keep nothing (`lookaside::force_depth_zero`).
    let _ = crate::nt::ex::lookaside::force_depth_zero();
    kernel::with(|k| {
        k.faults.calls = 0;
        k.faults.injected.clear();
        k.faults.policy = policy;
    });
    let staged = stacks_workload(ctx, &c);
    let injected = kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.injected.clone()
    });
    let s = c.stats(ctx);
    // Whatever was lost, what is reported is true: every reported stack of a key is the
    // frames it was opened with.
    if let Some(st) = &staged {
        let held = keys(ctx, &c, USER);
        let stacks = stacks_of(ctx, &c);
        for (key, frames) in &st.expected {
            let k = held
                .values()
                .flatten()
                .find(|k| k.0.eq_ignore_ascii_case(key));
            if let Some(k) = k.filter(|k| k.1 != 0) {
                ctx.check(
                    stacks.get(&k.1) == Some(frames),
                    format!(
                        "{key}: a reported stack is its own ({:x?})",
                        stacks.get(&k.1)
                    ),
                );
            }
        }
        for h in &st.handles {
            let _ = hive::close_key(st.explorer, *h);
        }
        process::exit_process(st.explorer);
    }
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
    let counted = s.not_recorded()
        + s.keys_not_cached
        + s.stacks_dropped
        + s.modules_dropped
        + u64::from(staged.is_none());
    (injected.len(), counted)
}

fn stacks_low_resources(ctx: &mut Ctx) {
    ctx.say("systematic: fail the k-th fallible call of the stacks workload, for every k");
    let mut k = 1u64;
    loop {
        let (injected, counted) = faulty_stacks(ctx, FaultPolicy::Nth(k));
        if injected == 0 {
            println!("  the workload makes {} fallible calls", k - 1);
            ctx.check(k > 1, "the workload made fallible calls");
            break;
        }
        ctx.check(
            counted > 0,
            format!("k={k}: the failure is counted in stats ({counted})"),
        );
        k += 1;
        if k > 2_000 {
            ctx.check(false, "the sweep did not end");
            break;
        }
    }
}

fn stacks_image_scope(ctx: &mut Ctx) {
    super::tracking::boot_hives(ctx);
    load_profile(ctx);
    // Started before the driver: no creation notification, so the driver never learns its
    // image from one.
    let explorer = spawn(ctx, SHELL);
    let mut d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let other = spawn(ctx, APP2);
    let state = set_capture(ctx, &c, CaptureScope::Image, "EXPLORER.EXE");
    ctx.check(
        state
            .as_ref()
            .is_some_and(|(s, t)| *s == CaptureScope::Image && t == "EXPLORER.EXE"),
        format!("capture is on for the image: {state:?}"),
    );
    let key = format!(r"{USER}\Software\Contoso\Early");
    ensure_parents(explorer, &format!(r"{key}\x"));
    let frames = shellext_stack(explorer, 0x1F2C);
    let h = with_user_stack(explorer, UserStack::Frames(frames.clone()), || {
        hive::open_key(explorer, &key, KEY_READ, true)
    });
    let other_key = format!(r"{USER}\Software\Sync\Other");
    ensure_parents(other, &format!(r"{other_key}\x"));
    let ho = hive::open_key(other, &other_key, KEY_READ, true);
    let held = keys(ctx, &c, USER);
    let stacks = stacks_of(ctx, &c);
    let mine = held
        .get(&u64::from(explorer))
        .and_then(|ks| ks.iter().find(|k| k.0.eq_ignore_ascii_case(&key)).cloned());
    ctx.check(
        mine.as_ref().and_then(|k| stacks.get(&k.1)) == Some(&frames),
        format!("the open of the explorer that ran before the driver is captured: {mine:?}"),
    );
    let theirs = held.get(&u64::from(other)).and_then(|ks| {
        ks.iter()
            .find(|k| k.0.eq_ignore_ascii_case(&other_key))
            .cloned()
    });
    ctx.check(
        theirs
            .as_ref()
            .is_some_and(|k| k.1 == 0 && k.2 == HolderKey::STACK_OUT_OF_SCOPE),
        format!("another image's open is flagged out of scope: {theirs:?}"),
    );
    let images = c.holders(ctx, USER);
    let named = images
        .iter()
        .find(|h| h.pid == u64::from(explorer))
        .map(|h| h.image.clone());
    ctx.check(
        named
            .as_deref()
            .is_some_and(|i| i.eq_ignore_ascii_case(SHELL)),
        format!("holders names its image, learnt at its first tracked open: {named:?}"),
    );
    if let Ok(h) = h {
        let _ = hive::close_key(explorer, h);
    }
    if let Ok(h) = ho {
        let _ = hive::close_key(other, h);
    }
    set_capture(ctx, &c, CaptureScope::Off, "");
    process::exit_process(explorer);
    process::exit_process(other);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

/// The service's image (`stacks-pid-scope`: two processes of one image).
const SVCHOST: &str = r"\Device\HarddiskVolume2\Windows\System32\svchost.exe";

fn stacks_pid_scope(ctx: &mut Ctx) {
    super::tracking::boot_hives(ctx);
    load_profile(ctx);
    let mut d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let leaker = spawn(ctx, SVCHOST);
    let other = spawn(ctx, SVCHOST);
    let pid = leaker.to_string();
    let state = set_capture(ctx, &c, CaptureScope::Process, &pid);
    ctx.check(
        state
            .as_ref()
            .is_some_and(|(s, t)| *s == CaptureScope::Process && *t == pid),
        format!("capture is on for process {pid}: {state:?}"),
    );
    let mine_key = format!(r"{USER}\Software\Contoso\Leak");
    let other_key = format!(r"{USER}\Software\Contoso\Other");
    ensure_parents(leaker, &format!(r"{mine_key}\x"));
    ensure_parents(other, &format!(r"{other_key}\x"));
    let frames = shellext_stack(leaker, 0x2A10);
    let hm = with_user_stack(leaker, UserStack::Frames(frames.clone()), || {
        hive::open_key(leaker, &mine_key, KEY_READ, true)
    });
    let ho = with_user_stack(other, UserStack::Frames(frames.clone()), || {
        hive::open_key(other, &other_key, KEY_READ, true)
    });
    let held = keys(ctx, &c, USER);
    let stacks = stacks_of(ctx, &c);
    let find = |p: u32, name: &str| {
        held.get(&u64::from(p))
            .and_then(|ks| ks.iter().find(|k| k.0.eq_ignore_ascii_case(name)).cloned())
    };
    let mine = find(leaker, &mine_key);
    ctx.check(
        mine.as_ref().and_then(|k| stacks.get(&k.1)) == Some(&frames),
        format!("the named process's open is captured: {mine:?}"),
    );
    let theirs = find(other, &other_key);
    ctx.check(
        theirs
            .as_ref()
            .is_some_and(|k| k.1 == 0 && k.2 == HolderKey::STACK_OUT_OF_SCOPE),
        format!("the same image's other process is out of scope: {theirs:?}"),
    );
    // A scope text that names no process id is refused, and the scope stays as it was.
    let send = |op: CaptureOp, scope: CaptureScope, text: &[u16]| {
        let mut input = [0u8; 64];
        let n = encode(
            &CaptureRequest {
                op,
                scope,
                text: Text::Units(text),
            },
            &mut input,
        )
        .unwrap_or(0);
        io::device_io_control(c.h, IOCTL_HIVETRACK_CAPTURE, &input[..n], 4096, 0xA5)
    };
    let r = send(CaptureOp::Set, CaptureScope::Process, &[u16::from(b'x')]);
    ctx.check(
        r.status != STATUS_SUCCESS,
        format!(
            "a process scope named `x` is refused: {}",
            status::describe(r.status)
        ),
    );
    let r = send(CaptureOp::Get, CaptureScope::Off, &[]);
    let after = (r.status == STATUS_SUCCESS)
        .then(|| wire::decode::<CaptureState<'_>>(&r.output[..r.information]).ok())
        .flatten()
        .map(|st| (st.scope, st.text.to_string()));
    ctx.check(
        after
            .as_ref()
            .is_some_and(|(s, t)| *s == CaptureScope::Process && *t == pid),
        format!("the refused request changed nothing: {after:?}"),
    );
    end_two_openers(ctx, c, &mut d, [(leaker, hm), (other, ho)]);
}

/// The end of a two-process capture scenario: each process's key closed, capture off, both
/// processes gone, the profile unloaded, the driver unloaded and checked clean.
fn end_two_openers(
    ctx: &mut Ctx,
    c: Client,
    d: &mut crate::loader::driver::LoadedDriver,
    opens: [(u32, Result<u64, crate::nt::status::NtStatus>); 2],
) {
    for (p, h) in opens {
        if let Ok(h) = h {
            let _ = hive::close_key(p, h);
        }
    }
    set_capture(ctx, &c, CaptureScope::Off, "");
    for (p, _) in opens {
        process::exit_process(p);
    }
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(d);
}

/// The image of `pid` as `holders` of the profile hive reports it (`None`: not listed).
fn image_of(ctx: &mut Ctx, c: &Client, pid: u32) -> Option<String> {
    c.holders(ctx, USER)
        .iter()
        .find(|h| h.pid == u64::from(pid))
        .map(|h| h.image.clone())
}

fn stacks_image_scope_apc(ctx: &mut Ctx) {
    super::tracking::boot_hives(ctx);
    load_profile(ctx);
    // Started before the driver: the driver names it at its first tracked open.
    let explorer = spawn(ctx, SHELL);
    let first = format!(r"{USER}\Software\Contoso\Apc");
    let second = format!(r"{USER}\Software\Contoso\Passive");
    // Made before the driver starts, so that explorer's first tracked open is the one below.
    ensure_parents(explorer, &format!(r"{first}\x"));
    ensure_parents(explorer, &format!(r"{second}\x"));
    let mut d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    // Callbacks at APC_LEVEL, as System Informer saw in practice (`td-registry-faults`).
    kernel::with(|k| k.callback_irql = crate::machine::cpu::APC_LEVEL);
    let h1 = hive::open_key(explorer, &first, KEY_READ, true);
    kernel::with(|k| k.callback_irql = crate::machine::cpu::PASSIVE_LEVEL);
    let unnamed = image_of(ctx, &c, explorer);
    ctx.check(
        unnamed.as_deref().is_some_and(str::is_empty),
        format!("held, and left unnamed by the open at APC_LEVEL: {unnamed:?}"),
    );
    let h2 = hive::open_key(explorer, &second, KEY_READ, true);
    let named = image_of(ctx, &c, explorer);
    ctx.check(
        named
            .as_deref()
            .is_some_and(|i| i.eq_ignore_ascii_case(SHELL)),
        format!("named at its next new open, at PASSIVE_LEVEL: {named:?}"),
    );
    for h in [h1, h2].into_iter().flatten() {
        let _ = hive::close_key(explorer, h);
    }
    process::exit_process(explorer);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

fn stacks_wow64(ctx: &mut Ctx) {
    super::tracking::boot_hives(ctx);
    load_profile(ctx);
    let mut d = super::tracking::load_driver(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let legacy = spawn(
        ctx,
        r"\Device\HarddiskVolume2\Program Files (x86)\Contoso\legacy.exe",
    );
    let modern = spawn(ctx, SHELL);
    ctx.check(
        process::set_wow64(legacy, true),
        "legacy.exe is a 32-bit process",
    );
    set_capture(ctx, &c, CaptureScope::All, "");
    let key32 = format!(r"{USER}\Software\Contoso\Legacy");
    let key64 = format!(r"{USER}\Software\Contoso\Modern");
    ensure_parents(legacy, &format!(r"{key32}\x"));
    ensure_parents(modern, &format!(r"{key64}\x"));
    let h32 = hive::open_key(legacy, &key32, KEY_READ, true);
    let h64 = hive::open_key(modern, &key64, KEY_READ, true);
    let holders = c.holders(ctx, USER);
    let flag = |pid: u32| {
        holders
            .iter()
            .find(|h| h.pid == u64::from(pid))
            .map(|h| h.wow64)
    };
    ctx.check(
        flag(legacy) == Some(true),
        format!("the 32-bit process is flagged WOW64: {:?}", flag(legacy)),
    );
    ctx.check(
        flag(modern) == Some(false),
        format!("the 64-bit one is not: {:?}", flag(modern)),
    );
    end_two_openers(ctx, c, &mut d, [(legacy, h32), (modern, h64)]);
}
