//! User-mode stacks and image loads, shown on the test driver (issue 16): what a driver that
//! attributes registry opens to user-mode code can observe through `RtlWalkFrameChain` (in an
//! IOCTL and inside its registry callback) and its load-image notify routine
//! (test-driver/src/stacks.rs). The rules and their sources are in `src/thread.rs` and
//! `src/image.rs`.

use super::registry::{KEY_READ, SOFTWARE, SYSTEM_PID, Session, finish, start};
use super::test_driver::ioctl;
use super::{Ctx, Expect, Scenario, Target};
use crate::machine::cpu::APC_LEVEL;
use crate::nt::cm::hive;
use crate::nt::io::{self, FileHandle};
use crate::nt::kernel;
use crate::nt::ps::image::{self, MAIN_IMAGE_SIZE, NTDLL_BASE, NTDLL_NAME, NTDLL_SIZE};
use crate::nt::ps::process;
use crate::nt::ps::thread::{UserStack, with_user_stack};
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER_2};
use crate::verifier::bugcheck::{EXIT_BUGCHECK, EXIT_CHECK_FAILED};

const IOCTL_WALK: u32 = ioctl(0x840);
const IOCTL_CAPTURE_ARM: u32 = ioctl(0x841);
const IOCTL_CAPTURE_READ: u32 = ioctl(0x842);
const IOCTL_IMAGE_REGISTER: u32 = ioctl(0x843);
const IOCTL_IMAGE_REMOVE: u32 = ioctl(0x844);
const IOCTL_IMAGE_READ: u32 = ioctl(0x845);
const IOCTL_IMAGE_LEAK: u32 = ioctl(0x846);
const IOCTL_IMAGE_REMOVE_INSIDE: u32 = ioctl(0x852);
/// What the test driver pre-fills its frame buffer with.
const UNWRITTEN: u64 = 0x5555_5555_5555_5555;
const USER: u32 = 1; // RTL_WALK_USER_MODE_STACK
const STATUS_PROCEDURE_NOT_FOUND: u32 = 0xC000_007A;
const APP: &str = r"\Device\HarddiskVolume2\Program Files\Vendor\app.exe";
/// A user stack: a syscall stub in ntdll, advapi32, then the application.
const FRAMES: [u64; 5] = [
    0x7FFB_4C75_D4C4,
    0x7FFB_4AE1_2B30,
    0x7FFB_4AE0_9F11,
    0x7FF6_1234_1A2B,
    0x7FF6_1234_1140,
];

/// The test driver's answer to a walk or a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    returned: u64,
    /// PsGetCurrentProcessId where the walk ran.
    pid: u64,
    irql: u64,
    frames: [u64; 16],
    /// IoIs32bitProcess(NULL) where the walk ran.
    wow64: u64,
}

impl Walk {
    fn parse(out: &[u8]) -> Self {
        let w: Vec<u64> = out
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let mut frames = [0u64; 16];
        for (f, v) in frames.iter_mut().zip(w.iter().skip(3)) {
            *f = *v;
        }
        Self {
            returned: w.first().copied().unwrap_or(u64::MAX),
            pid: w.get(1).copied().unwrap_or(0),
            irql: w.get(2).copied().unwrap_or(0),
            frames,
            wow64: w.get(19).copied().unwrap_or(u64::MAX),
        }
    }

    /// The frames written and a check that every slot after them is untouched.
    fn written(&self, n: usize) -> (&[u64], bool) {
        (
            &self.frames[..n],
            self.frames[n..].iter().all(|f| *f == UNWRITTEN),
        )
    }
}

fn slots(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// IOCTL_WALK from `device`'s process: (Count, Flags, options: 1 NULL Callers, 2 at DISPATCH).
fn walk(device: FileHandle, count: u64, flags: u32, options: u64) -> Walk {
    let r = io::device_io_control(
        device,
        IOCTL_WALK,
        &slots(&[count, u64::from(flags), options]),
        20 * 8,
        0xA5,
    );
    Walk::parse(&r.output)
}

fn arm(s: &Session, count: u64, flags: u32) {
    let _ = io::device_io_control(
        s.control,
        IOCTL_CAPTURE_ARM,
        &slots(&[count, u64::from(flags)]),
        32,
        0xA5,
    );
}

/// The registry callback's last capture: 0 post-open/create, 1 pre-close.
fn captured(s: &Session, which: u64) -> Walk {
    let r = io::device_io_control(
        s.control,
        IOCTL_CAPTURE_READ,
        &slots(&[which]),
        20 * 8,
        0xA5,
    );
    Walk::parse(&r.output)
}

fn four(device: FileHandle, code: u32, input: &[u64]) -> [u64; 4] {
    let r = io::device_io_control(device, code, &slots(input), 32, 0xA5);
    let mut out = [0u64; 4];
    for (o, c) in out.iter_mut().zip(r.output.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    out
}

/// One entry of the test driver's image log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ImageEntry {
    /// The ProcessId parameter.
    pid: u64,
    /// PsGetCurrentProcessId in the routine.
    context: u64,
    /// FNV-1a of FullImageName (0 for NULL).
    name: u64,
    /// IMAGE_INFO.Properties.
    properties: u32,
    name_null: bool,
    irql: u64,
    /// KeAreApcsDisabled in the routine (the kernel calls it inside a critical region).
    apcs_disabled: bool,
    base: u64,
    size: u64,
    /// ImageSelector | ImageSectionNumber << 32.
    selector_section: u64,
    /// IMAGE_INFO_EX.Size | (FileObject non-NULL) << 32, when ExtendedInfoPresent.
    extended: u64,
}

fn image_log(s: &Session) -> Vec<ImageEntry> {
    let mut v = Vec::new();
    for i in 0..32u64 {
        let r = io::device_io_control(s.control, IOCTL_IMAGE_READ, &slots(&[i]), 64, 0xA5);
        let w: Vec<u64> = r
            .output
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if w.len() < 8 || (w[0] == 0 && w[4] == 0) {
            break;
        }
        v.push(ImageEntry {
            pid: w[0],
            context: w[1],
            name: w[2],
            properties: (w[3] & 0xFFFF_FFFF) as u32,
            name_null: (w[3] >> 32) & 1 == 1,
            irql: (w[3] >> 40) & 0xFF,
            apcs_disabled: (w[3] >> 48) & 1 == 1,
            base: w[4],
            size: w[5],
            selector_section: w[6],
            extended: w[7],
        });
    }
    for e in &v {
        println!("  image: {e:x?}");
    }
    v
}

fn new_process(ctx: &mut Ctx, image: &str) -> u32 {
    let r = process::create_process(SYSTEM_PID, image, false);
    ctx.check(r.is_ok(), format!("create {image}: {r:?}"));
    r.unwrap_or(0)
}

fn device_of(ctx: &mut Ctx, pid: u32, caller: Caller) -> Option<FileHandle> {
    let d = io::open(r"\\.\KemuTest", caller, pid, GENERIC_READ | GENERIC_WRITE);
    ctx.check(
        d.is_ok(),
        format!("process {pid} opens the test driver: {d:?}"),
    );
    d.ok()
}

/// The user-stack and image-load scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-user-stack",
            "RtlWalkFrameChain(RTL_WALK_USER_MODE_STACK): the calling thread's user frames, capped by Count, skip bits, NULL/0, a hostile stack (0, frames written before the fault left in the buffer), System threads and kernel handles (0), the default stack inside the process's images, and the same walk inside the registry callback",
            td_user_stack,
        ),
        Scenario::test_driver(
            "td-walk-irql",
            "RtlWalkFrameChain user walk: 0 at DISPATCH_LEVEL and on a thread attached to another process; works at APC_LEVEL (callbacks delivered there)",
            td_walk_irql,
        ),
        Scenario::test_driver(
            "td-wow64",
            "IoIs32bitProcess(NULL) in the registry callback: FALSE for a 64-bit process's open, TRUE once it is a 32-bit (Wow64) process, FALSE for a kernel-mode open (ZwOpenKey, previous mode KernelMode) on its thread, and the attached process's answer on an attached thread (WRK iosubs.c)",
            td_wow64,
        ),
        Scenario::test_driver(
            "td-load-image-notify",
            "PsSetLoadImageNotifyRoutineEx: the exe and ntdll at process creation in the new process's context, DLLs with IMAGE_INFO_EX, a driver image with ProcessId 0, NULL names, no unload notification, the 64-routine limit, bad flags, removing an unknown routine",
            td_load_image_notify,
        ),
        Scenario::test_driver(
            "td-load-image-fallback",
            "PsSetLoadImageNotifyRoutineEx hidden (before Windows 10 1709): the driver falls back to PsSetLoadImageNotifyRoutine and gets the same loads, but no conflicting-architecture images",
            td_load_image_fallback,
        ),
        Scenario {
            name: "td-load-image-leak",
            target: Target::TestDriver,
            about: "a load-image notify routine left registered at unload is reported (Windows would call into the unloaded image, bugcheck 0xCE)",
            expect: Expect {
                exit: EXIT_CHECK_FAILED,
                output: Some("load-image notify routine"),
            },
            run: td_load_image_leak,
        },
        super::test_driver::caught(
            "td-load-image-remove-inside",
            "PsRemoveLoadImageNotifyRoutine called from inside the routine it removes is a verifier violation (Learn: \"the callback routine itself must not call PsRemoveLoadImageNotifyRoutine\"; the removal would wait for its own call), not a hang",
            EXIT_BUGCHECK,
            "from inside that routine: a deadlock on Windows",
            td_load_image_remove_inside,
        ),
    ]
}

#[allow(clippy::too_many_lines)] // one linear script of checks
fn td_user_stack(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, APP);
    let Some(dev) = device_of(ctx, p, Caller::Admin) else {
        return;
    };
    let frames = FRAMES.to_vec();
    with_user_stack(p, UserStack::Frames(frames.clone()), || {
        let w = walk(dev, 16, USER, 0);
        let (got, rest) = w.written(5);
        ctx.check(
            w.returned == 5 && got == FRAMES && rest && w.pid == u64::from(p),
            format!("the thread's five frames, innermost first, in process {p}: {w:x?}"),
        );
        let w = walk(dev, 3, USER, 0);
        let (got, rest) = w.written(3);
        ctx.check(
            w.returned == 3 && got == &FRAMES[..3] && rest,
            format!("Count 3: three frames, nothing written past them: {w:x?}"),
        );
        let w = walk(dev, 4, USER | 2 << 8, 0);
        let (got, rest) = w.written(2);
        ctx.check(
            w.returned == 2 && got == &FRAMES[2..4] && rest,
            format!("two frames skipped (Flags >> 8): Count - 2 written, from the third: {w:x?}"),
        );
        let w = walk(dev, 0, USER, 0);
        ctx.check(
            w.returned == 0 && w.written(0).1,
            format!("Count 0: 0, the buffer untouched: {w:x?}"),
        );
        let w = walk(dev, 5, USER, 1);
        ctx.check(w.returned == 0, format!("Callers NULL: 0 ({w:x?})"));
        let w = walk(dev, 16, USER | 2, 0);
        ctx.check(
            w.returned == 0 && w.written(0).1,
            format!("an unknown flag (2): 0 ({w:x?})"),
        );
        let w = walk(dev, 16, 0, 0);
        ctx.check(
            w.returned == 0,
            format!("the kernel-mode walk is not modelled: 0 ({w:x?})"),
        );
    });
    let hostile = UserStack::FaultsAfter {
        frames: frames.clone(),
        readable: 2,
    };
    with_user_stack(p, hostile, || {
        let w = walk(dev, 16, USER, 0);
        let (got, rest) = w.written(2);
        ctx.check(
            w.returned == 0 && got == &FRAMES[..2] && rest,
            format!(
                "a stack that faults after two frames: 0 returned, the two frames written before the fault left in the buffer: {w:x?}"
            ),
        );
        let w = walk(dev, 2, USER, 0);
        ctx.check(
            w.returned == 2 && w.written(2).0 == &FRAMES[..2],
            format!("a walk that stops before the fault: 2 ({w:x?})"),
        );
    });
    with_user_stack(p, UserStack::None, || {
        let w = walk(dev, 16, USER, 0);
        ctx.check(
            w.returned == 0 && w.written(0).1,
            format!("no user stack: 0 ({w:x?})"),
        );
    });
    // Nothing set: the default stack, inside the images the process's creation reported.
    let w = walk(dev, 16, USER, 0);
    let exe = image::main_image_base(p);
    let in_exe = |f: u64| (exe..exe + MAIN_IMAGE_SIZE).contains(&f);
    ctx.check(
        w.returned == 4
            && (NTDLL_BASE..NTDLL_BASE + NTDLL_SIZE).contains(&w.frames[0])
            && in_exe(w.frames[1])
            && in_exe(w.frames[2])
            && (NTDLL_BASE..NTDLL_BASE + NTDLL_SIZE).contains(&w.frames[3]),
        format!(
            "the default stack: ntdll, the main image at {exe:#x}, and the thread's start in ntdll: {w:x?}"
        ),
    );
    // A request from the System process: no user stack.
    if let Some(sys) = device_of(ctx, SYSTEM_PID, Caller::System) {
        let w = walk(sys, 16, USER, 0);
        ctx.check(
            w.returned == 0 && w.pid == u64::from(SYSTEM_PID),
            format!("a System thread: 0 ({w:x?})"),
        );
        io::close(sys);
    }
    io::close(dev);

    // The same walk inside the registry callback, in the opening thread's context.
    arm(&s, 16, USER);
    let h = with_user_stack(p, UserStack::Frames(frames.clone()), || {
        hive::open_key(p, SOFTWARE, KEY_READ, false)
    });
    let w = captured(&s, 0);
    ctx.check(
        h.is_ok() && w.returned == 5 && w.written(5).0 == FRAMES && w.pid == u64::from(p),
        format!("post-open: the opener's frames: {w:x?}"),
    );
    let close_frames = vec![0x7FFB_4C75_E104, 0x7FF6_1234_2000];
    with_user_stack(p, UserStack::Frames(close_frames.clone()), || {
        let _ = hive::close_key(p, h.unwrap_or(0));
    });
    let w = captured(&s, 1);
    ctx.check(
        w.returned == 2 && w.written(2).0 == close_frames.as_slice(),
        format!("pre-close: the closer's frames: {w:x?}"),
    );
    // OBJ_KERNEL_HANDLE from p's thread: the thread still has its user stack (its previous
    // mode is KernelMode, its TEB is there); the close runs attached to System: 0.
    let kh = with_user_stack(p, UserStack::Frames(frames.clone()), || {
        hive::open_kernel_key(p, SOFTWARE, KEY_READ, false)
    });
    let w = captured(&s, 0);
    ctx.check(
        kh.is_ok() && w.returned == 5 && w.pid == u64::from(p),
        format!("a kernel-handle open on p's thread: p's user frames: {w:x?}"),
    );
    with_user_stack(p, UserStack::Frames(frames.clone()), || {
        let _ = hive::close_key(p, kh.unwrap_or(0));
    });
    let w = captured(&s, 1);
    ctx.check(
        w.returned == 0 && w.written(0).1,
        format!("its close runs attached to System: 0 ({w:x?})"),
    );
    // A System thread's open and close (a driver's own ZwOpenKey in DriverEntry, a worker):
    // 0, whatever user stack a user thread of this OS thread has.
    let sh = with_user_stack(p, UserStack::Frames(frames), || {
        hive::open_kernel_key(SYSTEM_PID, SOFTWARE, KEY_READ, false)
    });
    let w = captured(&s, 0);
    ctx.check(
        sh.is_ok() && w.returned == 0 && w.pid == u64::from(SYSTEM_PID),
        format!("a System thread's open: 0 ({w:x?})"),
    );
    let _ = hive::close_key(SYSTEM_PID, sh.unwrap_or(0));
    // Deferred deletion: p's last close queues the key object's deletion, whose close
    // notifications run later on a System worker thread: no user stack there.
    hive::set_deferred_deletion(true);
    let h = hive::open_key(p, SOFTWARE, KEY_READ, false);
    arm(&s, 16, USER);
    with_user_stack(p, UserStack::Frames(FRAMES.to_vec()), || {
        let _ = hive::close_key(p, h.unwrap_or(0));
    });
    let queued = hive::run_deferred_deletions();
    hive::set_deferred_deletion(false);
    let w = captured(&s, 1);
    ctx.check(
        h.is_ok() && queued == 1 && w.returned == 0 && w.pid == u64::from(SYSTEM_PID),
        format!("a close notification on the System worker (deferred deletion): 0 ({w:x?})"),
    );
    arm(&s, 0, 0);
    process::exit_process(p);
    finish(ctx, s);
}

#[allow(clippy::many_single_char_names)] // p, q: processes; s, h, w: session, handle, walk
fn td_walk_irql(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let p = new_process(ctx, APP);
    let q = new_process(ctx, r"\Device\HarddiskVolume2\other.exe");
    let Some(dev) = device_of(ctx, p, Caller::Admin) else {
        return;
    };
    with_user_stack(p, UserStack::Frames(FRAMES.to_vec()), || {
        let w = walk(dev, 16, USER, 2);
        ctx.check(
            w.returned == 0 && w.irql == 2 && w.written(0).1,
            format!("at DISPATCH_LEVEL: 0, nothing written ({w:x?})"),
        );
        let w = walk(dev, 16, USER, 0);
        ctx.check(
            w.returned == 5 && w.irql == 0,
            format!("back at PASSIVE_LEVEL: 5 ({w:x?})"),
        );
    });
    io::close(dev);
    arm(&s, 16, USER);
    kernel::with(|k| k.callback_irql = APC_LEVEL);
    let h = with_user_stack(p, UserStack::Frames(FRAMES.to_vec()), || {
        hive::open_key(p, SOFTWARE, KEY_READ, false)
    });
    let w = captured(&s, 0);
    ctx.check(
        h.is_ok() && w.returned == 5 && w.irql == u64::from(APC_LEVEL),
        format!("a callback at APC_LEVEL walks the user stack: {w:x?}"),
    );
    let _ = hive::close_key(p, h.unwrap_or(0));
    kernel::with(|k| k.callback_irql = crate::machine::cpu::PASSIVE_LEVEL);
    // p's thread attached to q (KeStackAttachProcess) opens a key: 0 (KeIsAttachedProcess).
    let h = with_user_stack(p, UserStack::Frames(FRAMES.to_vec()), || {
        process::attached(q, || hive::open_key(p, SOFTWARE, KEY_READ, false))
    });
    let w = captured(&s, 0);
    ctx.check(
        h.is_ok() && w.returned == 0 && w.pid == u64::from(p),
        format!("a thread attached to another process: 0 ({w:x?})"),
    );
    let _ = hive::close_key(q, h.unwrap_or(0));
    arm(&s, 0, 0);
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

fn td_wow64(ctx: &mut Ctx) {
    let Some(session) = start(ctx) else { return };
    let p = new_process(ctx, APP);
    let q = new_process(ctx, r"\Device\HarddiskVolume2\Windows\SysWOW64\legacy.exe");
    arm(&session, 16, USER);
    let open = |ctx: &mut Ctx, what: &str, want: u64, f: &dyn Fn() -> Result<u64, i32>| {
        let h = f();
        let walk = captured(&session, 0);
        ctx.check(
            h.is_ok() && walk.wow64 == want,
            format!(
                "{what}: IoIs32bitProcess(NULL) = {} ({walk:x?})",
                walk.wow64
            ),
        );
        h.ok()
    };
    let mut handles = Vec::new();
    handles.push((
        p,
        open(ctx, "a 64-bit process's open", 0, &|| {
            hive::open_key(p, SOFTWARE, KEY_READ, false)
        }),
    ));
    ctx.check(process::set_wow64(q, true), "q is a 32-bit process");
    handles.push((
        q,
        open(ctx, "a 32-bit (Wow64) process's open", 1, &|| {
            hive::open_key(q, SOFTWARE, KEY_READ, false)
        }),
    ));
    handles.push((
        SYSTEM_PID,
        open(
            ctx,
            "a kernel-mode open on its thread (previous mode KernelMode)",
            0,
            &|| hive::open_kernel_key(q, SOFTWARE, KEY_READ, false),
        ),
    ));
    handles.push((
        q,
        open(
            ctx,
            "the 64-bit process's thread attached to the 32-bit one",
            1,
            &|| process::attached(q, || hive::open_key(p, SOFTWARE, KEY_READ, false)),
        ),
    ));
    handles.push((
        p,
        open(
            ctx,
            "the 32-bit process's thread attached to the 64-bit one",
            0,
            &|| process::attached(p, || hive::open_key(q, SOFTWARE, KEY_READ, false)),
        ),
    ));
    for (pid, h) in handles {
        if let Some(h) = h {
            let _ = hive::close_key(pid, h);
        }
    }
    arm(&session, 0, 0);
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, session);
}

fn register(s: &Session, flags: u64, classic: bool, times: u64) -> [u64; 4] {
    four(
        s.control,
        IOCTL_IMAGE_REGISTER,
        &[flags, u64::from(classic), times],
    )
}

fn remove(s: &Session, unknown: bool) -> [u64; 4] {
    four(s.control, IOCTL_IMAGE_REMOVE, &[u64::from(unknown)])
}

/// The expected entry of a user image load.
fn user_entry(pid: u32, name: &str, base: u64, size: u64, extended: bool) -> ImageEntry {
    ImageEntry {
        pid: u64::from(pid),
        context: u64::from(pid),
        name: super::lifecycle::hash(name),
        properties: 3 | if extended { 1 << 10 } else { 0 },
        name_null: false,
        irql: 0,
        apcs_disabled: true,
        base,
        size,
        selector_section: 0,
        extended: if extended { 0x38 | 1 << 32 } else { 0 },
    }
}

#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // p, q: processes; s, r, l, m: session, results, logs
fn td_load_image_notify(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let r = register(&s, 0, false, 1);
    ctx.check(
        r[..3] == [1, 0, 1],
        format!("registered through PsSetLoadImageNotifyRoutineEx: {r:x?}"),
    );
    let p = new_process(ctx, APP);
    let exe = image::main_image_base(p);
    let advapi = r"\Device\HarddiskVolume2\Windows\System32\advapi32.dll";
    let plugin = r"\Device\HarddiskVolume2\Program Files\Vendor\plugin.dll";
    let other = r"\Device\HarddiskVolume2\Program Files\Vendor\other.dll";
    image::load_image(p, advapi, 0x7FFB_4AE0_0000, 0xA_5000);
    image::load_image(p, plugin, 0x7FFB_3000_0000, 0x1_8000);
    // plugin.dll is unloaded (no notification exists for that) and other.dll is mapped at
    // the same base.
    image::load_image(p, other, 0x7FFB_3000_0000, 0x2_0000);
    let driver = r"\SystemRoot\System32\drivers\kemuother.sys";
    image::load_driver_image(driver, 0xFFFF_F806_1234_0000, 0x8000);
    image::load_image_conflicting_architecture(
        p,
        r"\Device\HarddiskVolume2\arm64.dll",
        0x7FFB_2000_0000,
        0x1000,
    );
    let l = image_log(&s);
    let want = [
        user_entry(p, APP, exe, MAIN_IMAGE_SIZE, false),
        user_entry(p, NTDLL_NAME, NTDLL_BASE, NTDLL_SIZE, false),
        user_entry(p, advapi, 0x7FFB_4AE0_0000, 0xA_5000, true),
        user_entry(p, plugin, 0x7FFB_3000_0000, 0x1_8000, true),
        user_entry(p, other, 0x7FFB_3000_0000, 0x2_0000, true),
        ImageEntry {
            pid: 0,
            context: u64::from(SYSTEM_PID),
            name: super::lifecycle::hash(driver),
            properties: 3 | 1 << 8,
            apcs_disabled: true,
            base: 0xFFFF_F806_1234_0000,
            size: 0x8000,
            ..ImageEntry::default()
        },
    ];
    for (i, w) in want.iter().enumerate() {
        let got = l.get(i).copied().unwrap_or_default();
        ctx.check(
            got == *w,
            format!("image load {i}: expected {w:x?}, the routine saw {got:x?}"),
        );
    }
    ctx.check(
        l.len() == want.len(),
        format!(
            "{} loads seen: no unload notification, the conflicting-architecture image not delivered (registered without PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE)",
            l.len()
        ),
    );
    let m = image::modules_of(p);
    ctx.check(
        m.len() == 6 && m[3].base == m[4].base && m[3].name.as_deref() == Some(plugin),
        format!("the model's record: both images at 0x7ffb30000000, in order: {m:x?}"),
    );

    // The name unavailable at process creation: FullImageName NULL.
    let r = register(&s, 0, false, 0); // clears the log; a second registration
    let q = image::with_names_unavailable(|| new_process(ctx, r"\Device\HarddiskVolume2\q.exe"));
    let l = image_log(&s);
    let nameless = l.iter().filter(|e| e.name_null && e.name == 0).count();
    let ntdll = l
        .iter()
        .filter(|e| e.name == super::lifecycle::hash(NTDLL_NAME))
        .count();
    ctx.check(
        r[0] == 1
            && l.len() == 4
            && nameless == 2
            && ntdll == 2
            && l.iter().all(|e| e.pid == u64::from(q)),
        format!(
            "name unavailable: the exe's FullImageName NULL, ntdll's constant name, each load seen once per registration ({} entries)",
            l.len()
        ),
    );
    let r = remove(&s, false);
    ctx.check(
        r[..2] == [0, 1],
        format!("one registration removed: {r:x?}"),
    );

    // The limit: 64 routines in all (one is already registered).
    let r = register(&s, 0, false, 70);
    ctx.check(
        r[0] == 63 && r[1] == STATUS_INSUFFICIENT_RESOURCES as u32 as u64,
        format!("63 more registrations succeed, then STATUS_INSUFFICIENT_RESOURCES: {r:x?}"),
    );
    for _ in 0..63 {
        let _ = remove(&s, false);
    }
    let r = remove(&s, true);
    ctx.check(
        r[0] == u64::from(STATUS_PROCEDURE_NOT_FOUND),
        format!("removing a routine never registered: STATUS_PROCEDURE_NOT_FOUND ({r:x?})"),
    );
    let r = remove(&s, false);
    let again = remove(&s, false);
    ctx.check(
        r[..2] == [0, 0] && again[0] == u64::from(STATUS_PROCEDURE_NOT_FOUND),
        format!(
            "the last registration removed, then STATUS_PROCEDURE_NOT_FOUND: {r:x?} {again:x?}"
        ),
    );
    let r = register(&s, 2, false, 1);
    ctx.check(
        r[0] == 0 && r[1] == STATUS_INVALID_PARAMETER_2 as u32 as u64,
        format!("an unknown Ex flag: STATUS_INVALID_PARAMETER_2 ({r:x?})"),
    );
    // With PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE, the other architecture's image arrives.
    let r = register(&s, 1, false, 1);
    let arm64 = r"\Device\HarddiskVolume2\arm64.dll";
    image::load_image_conflicting_architecture(p, arm64, 0x7FFB_2000_0000, 0x1000);
    let l = image_log(&s);
    ctx.check(
        r[0] == 1 && l.len() == 1 && l[0] == user_entry(p, arm64, 0x7FFB_2000_0000, 0x1000, true),
        format!(
            "registered with PS_IMAGE_NOTIFY_CONFLICTING_ARCHITECTURE: the image is seen ({l:x?})"
        ),
    );
    process::exit_process(p);
    process::exit_process(q);
    finish(ctx, s);
}

fn td_load_image_fallback(ctx: &mut Ctx) {
    crate::nt::exports::hide(["PsSetLoadImageNotifyRoutineEx"]);
    let Some(s) = start(ctx) else { return };
    let r = register(&s, 1, false, 1);
    ctx.check(
        r[..3] == [1, 0, 0],
        format!("PsSetLoadImageNotifyRoutineEx missing: registered with PsSetLoadImageNotifyRoutine ({r:x?})"),
    );
    let p = new_process(ctx, APP);
    image::load_image_conflicting_architecture(
        p,
        r"\Device\HarddiskVolume2\arm64.dll",
        0x7FFB_2000_0000,
        0x1000,
    );
    let l = image_log(&s);
    ctx.check(
        l.len() == 2
            && l[0] == user_entry(p, APP, image::main_image_base(p), MAIN_IMAGE_SIZE, false)
            && l[1].base == NTDLL_BASE,
        format!("the exe and ntdll, not the conflicting-architecture image: {l:x?}"),
    );
    process::exit_process(p);
    finish(ctx, s);
}

fn td_load_image_leak(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let r = register(&s, 0, false, 1);
    ctx.check(r[0] == 1, format!("registered: {r:x?}"));
    let _ = four(s.control, IOCTL_IMAGE_LEAK, &[0]);
    finish(ctx, s);
}

fn td_load_image_remove_inside(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let r = register(&s, 0, false, 1);
    ctx.check(r[0] == 1, format!("registered: {r:x?}"));
    let _ = four(s.control, IOCTL_IMAGE_REMOVE_INSIDE, &[0]);
    let p = new_process(ctx, APP);
    ctx.check(
        false,
        format!(
            "the routine removed itself from inside a call (process {p}) and nothing was reported"
        ),
    );
}
