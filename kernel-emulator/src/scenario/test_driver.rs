//! Scenarios for the emulator's own test driver (`kernel-emulator/test-driver`): each IOCTL
//! does one hard thing (big frames, gs, cr8, KUSER_SHARED_DATA, variadic DbgPrint, cli/sti,
//! MmGetSystemRoutineAddress with a routine hidden) that must work, or one bug (leak, overrun,
//! use-after-free, wild pointer, panic, double completion, uninitialised output) that must be
//! caught with the right report. The control codes mirror `test-driver/src/lib.rs`.

use super::{Ctx, Expect, Scenario, Target};
use crate::bugcheck::{EXIT_BUGCHECK, EXIT_CHECK_FAILED, EXIT_REFUSED};
use crate::driver::LoadedDriver;
use crate::io::{self, FileHandle, IoctlResult};
use crate::kernel;
use crate::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::status::{self, STATUS_SUCCESS};
use crate::{cpu, rtl, trap};

/// `CTL_CODE(FILE_DEVICE_UNKNOWN, function, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
const fn ioctl(function: u32) -> u32 {
    (0x22 << 16) | (function << 2)
}
const IOCTL_PING: u32 = ioctl(0x800);
const IOCTL_ALLOC: u32 = ioctl(0x801);
const IOCTL_LEAK: u32 = ioctl(0x802);
const IOCTL_BIGSTACK: u32 = ioctl(0x803);
const IOCTL_GS: u32 = ioctl(0x804);
const IOCTL_CR8: u32 = ioctl(0x805);
const IOCTL_KUSER: u32 = ioctl(0x806);
const IOCTL_PANIC: u32 = ioctl(0x807);
const IOCTL_WILD: u32 = ioctl(0x808);
const IOCTL_DBGPRINT: u32 = ioctl(0x809);
const IOCTL_CLI: u32 = ioctl(0x80A);
const IOCTL_OVERRUN: u32 = ioctl(0x80B);
const IOCTL_UAF: u32 = ioctl(0x80C);
const IOCTL_DOUBLE_COMPLETE: u32 = ioctl(0x80D);
const IOCTL_UNINIT: u32 = ioctl(0x80E);
const IOCTL_ROUTINE: u32 = ioctl(0x80F);
const PING_MAGIC: u64 = 0x6B65_6D75_7465_7374;
const WIN32_PATH: &str = r"\\.\KemuTest";

fn pass(name: &'static str, about: &'static str, run: fn(&mut Ctx)) -> Scenario {
    Scenario {
        name,
        target: Target::TestDriver,
        about,
        expect: Expect::PASS,
        run,
    }
}

fn caught(
    name: &'static str,
    about: &'static str,
    exit: i32,
    output: &'static str,
    run: fn(&mut Ctx),
) -> Scenario {
    Scenario {
        name,
        target: Target::TestDriver,
        about,
        expect: Expect {
            exit,
            output: Some(output),
        },
        run,
    }
}

/// Test-driver scenarios.
#[must_use]
#[allow(clippy::too_many_lines)] // the scenario table
pub fn scenarios() -> Vec<Scenario> {
    vec![
        pass(
            "td-load",
            "test driver loads, answers, a standard user may open its unsecured device, unload is clean",
            td_load,
        ),
        pass(
            "td-alloc",
            "Vec growth through the global allocator: ExAllocatePool2/ExFreePool balanced",
            td_alloc,
        ),
        pass(
            "td-bigstack",
            "a 16 KiB frame goes through __chkstk and is measured below 24 KiB",
            td_bigstack,
        ),
        pass(
            "td-gs",
            "gs:[0x188], gs:[0x1A4], gs:[0x20] read the emulated KPCR natively",
            td_gs,
        ),
        pass(
            "td-cr8",
            "mov cr8 traps and is emulated as the thread's IRQL",
            td_cr8,
        ),
        pass(
            "td-kuser",
            "KUSER_SHARED_DATA loads trap and read the emulated clock",
            td_kuser,
        ),
        pass(
            "td-dbgprint",
            "a 12-argument DbgPrint is formatted exactly with Windows rules",
            td_dbgprint,
        ),
        pass("td-cli", "cli/sti trap and are emulated", td_cli),
        pass(
            "td-entry-sweep",
            "DriverEntry with each fallible call failed in turn (device, link, callback): error and nothing left",
            td_entry_sweep,
        ),
        pass(
            "td-hidden-routine",
            "MmGetSystemRoutineAddress finds a routine, and NULL once it is hidden",
            td_hidden_routine,
        ),
        caught(
            "td-leak",
            "a leaked Box is reported at unload with its tag and size",
            EXIT_CHECK_FAILED,
            "100 bytes, tag 'rust'",
            td_leak,
        ),
        caught(
            "td-overrun",
            "a 1-byte overrun into special-pool slack is bugcheck 0xC1 at free",
            EXIT_BUGCHECK,
            "SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION",
            td_overrun,
        ),
        caught(
            "td-overrun-far",
            "an overrun into the guard page is bugcheck 0x50 named as an overrun",
            EXIT_BUGCHECK,
            "past the end of block",
            td_overrun_far,
        ),
        caught(
            "td-uaf",
            "a read of a freed block is bugcheck 0x50 named as use after free",
            EXIT_BUGCHECK,
            "use after free",
            td_uaf,
        ),
        caught(
            "td-wild",
            "a wild pointer write is bugcheck 0x50 with RIP symbolized from the map",
            EXIT_BUGCHECK,
            "dispatch_device_control",
            td_wild,
        ),
        caught(
            "td-panic",
            "a Rust panic is KeBugCheckEx('RPNC') with file:line decoded",
            EXIT_BUGCHECK,
            "Rust panic at src/lib.rs:",
            td_panic,
        ),
        caught(
            "td-double-complete",
            "an IRP completed twice is bugcheck 0x44",
            EXIT_BUGCHECK,
            "MULTIPLE_IRP_COMPLETE_REQUESTS",
            td_double_complete,
        ),
        caught(
            "td-uninit",
            "32 bytes returned but 8 written: the poisoned system buffer exposes it",
            EXIT_CHECK_FAILED,
            "uninitialised output: 24 of 32",
            td_uninit,
        ),
        Scenario {
            name: "td-refuse",
            target: Target::TestDriver,
            about: "a hidden static import is named and the image refused",
            expect: Expect {
                exit: EXIT_REFUSED,
                output: Some("ntoskrnl.exe!IofCompleteRequest"),
            },
            run: td_refuse,
        },
    ]
}

struct Session {
    driver: LoadedDriver,
    handle: FileHandle,
}

fn start(ctx: &mut Ctx) -> Option<Session> {
    let driver = ctx.load();
    let s = driver.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    match ctx.open(WIN32_PATH, Caller::User, GENERIC_READ | GENERIC_WRITE) {
        Ok(handle) => Some(Session { driver, handle }),
        Err(s) => {
            ctx.check(false, format!("open {WIN32_PATH}: {}", status::describe(s)));
            None
        }
    }
}

fn call(s: &Session, code: u32, argument: u64) -> IoctlResult {
    io::device_io_control(s.handle, code, &argument.to_le_bytes(), 32, 0xA5)
}

fn slots(r: &IoctlResult) -> [u64; 4] {
    let mut v = [0u64; 4];
    for (i, chunk) in r.output.chunks_exact(8).take(4).enumerate() {
        v[i] = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    v
}

fn finish(ctx: &mut Ctx, mut s: Session) {
    io::close(s.handle);
    ctx.unload_and_check_clean(&mut s.driver);
}

fn td_load(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let r = call(&s, IOCTL_PING, 0);
    ctx.check(
        r.status == STATUS_SUCCESS && slots(&r)[0] == PING_MAGIC,
        format!("PING -> {:#x}", slots(&r)[0]),
    );
    finish(ctx, s);
}

fn td_alloc(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let before = kernel::with(|k| k.pool.allocations);
    let r = call(&s, IOCTL_ALLOC, 1000);
    let after = kernel::with(|k| (k.pool.allocations, k.pool.blocks.len()));
    ctx.check(
        slots(&r)[0] == (0..1000u64).sum::<u64>(),
        format!("sum of a 1000-element Vec = {}", slots(&r)[0]),
    );
    ctx.check(
        after.0 > before && after.1 == 0,
        format!("{} pool allocation(s), none outstanding", after.0 - before),
    );
    finish(ctx, s);
}

fn td_bigstack(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let calls = rtl::CHKSTK_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let r = call(&s, IOCTL_BIGSTACK, 7);
    let expect: u64 = (0..16 * 1024)
        .map(|i: usize| u64::from(7u8.wrapping_add(i as u8)))
        .sum();
    ctx.check(
        slots(&r)[0] == expect,
        format!("16 KiB frame computed {} (expect {expect})", slots(&r)[0]),
    );
    let now = rtl::CHKSTK_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    ctx.check(
        now > calls,
        format!("__chkstk called {} time(s)", now - calls),
    );
    let (depth, op) = kernel::with(|k| k.max_stack.clone());
    ctx.check(
        (16 * 1024..24 * 1024).contains(&depth),
        format!("stack high-water mark {depth} bytes in {op}"),
    );
    finish(ctx, s);
}

fn td_gs(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let v = slots(&call(&s, IOCTL_GS, 0));
    ctx.check(
        v[0] as usize == cpu::current_thread(),
        format!("gs:[0x188] = {:#x} (this thread's KTHREAD)", v[0]),
    );
    ctx.check(v[1] == 0, format!("gs:[0x1A4] = {} (processor 0)", v[1]));
    ctx.check(
        v[2] as usize == cpu::kpcr() + 0x180,
        format!("gs:[0x20] = {:#x} (KPRCB)", v[2]),
    );
    finish(ctx, s);
}

fn td_cr8(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let t0 = trap::TRAPS_CR8.load(std::sync::atomic::Ordering::Relaxed);
    let v = slots(&call(&s, IOCTL_CR8, 0));
    let n = trap::TRAPS_CR8.load(std::sync::atomic::Ordering::Relaxed) - t0;
    ctx.check(
        v[..3] == [0, 2, 0],
        format!("IRQL before/raised/after = {:?}", &v[..3]),
    );
    ctx.check(n == 5, format!("{n} cr8 accesses trapped and emulated"));
    finish(ctx, s);
}

fn td_kuser(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let t0 = trap::TRAPS_KUSER.load(std::sync::atomic::Ordering::Relaxed);
    let v = slots(&call(&s, IOCTL_KUSER, 0));
    let n = trap::TRAPS_KUSER.load(std::sync::atomic::Ordering::Relaxed) - t0;
    ctx.check(
        v[1].abs_diff(cpu::system_time()) < 50_000_000,
        format!("SystemTime {:#x} within 5 s of the host clock", v[1]),
    );
    ctx.check(
        v[0] > 0 && v[2] == 0x0FA0_0000,
        format!("TickCount {} TickCountMultiplier {:#x}", v[0], v[2]),
    );
    ctx.check(
        n == 3,
        format!("{n} KUSER_SHARED_DATA loads trapped and emulated"),
    );
    finish(ctx, s);
}

fn td_dbgprint(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let v = slots(&call(&s, IOCTL_DBGPRINT, 0));
    let got = kernel::with(|k| k.debug_log.last().cloned().unwrap_or_default());
    let expect = "kemu: d=-42 u=4000000000 x=0000beef s=narrow ws=KEMU! wZ=KEMU! c=Z p=0000000000001234 I64x=1122334455667788 lld=-9000000000 11th=-7 12th=ten   |\n";
    ctx.check(got == expect, format!("DbgPrint output {got:?}"));
    ctx.check(v[0] == 0, "DbgPrint returned STATUS_SUCCESS");
    let misaligned = crate::dbgprint::MISALIGNED_ENTRIES.load(std::sync::atomic::Ordering::Relaxed);
    ctx.check(misaligned == 0, "entry RSP was 16n+8 (Win64 ABI)");
    finish(ctx, s);
}

fn td_cli(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let t0 = trap::TRAPS_CLI.load(std::sync::atomic::Ordering::Relaxed);
    let r = call(&s, IOCTL_CLI, 0);
    let n = trap::TRAPS_CLI.load(std::sync::atomic::Ordering::Relaxed) - t0;
    ctx.check(
        r.status == STATUS_SUCCESS && n == 2,
        format!("cli + sti trapped ({n}), interrupts enabled on return"),
    );
    finish(ctx, s);
}

fn td_hidden_routine(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    ctx.check(
        slots(&call(&s, IOCTL_ROUTINE, 0))[0] == 1,
        "MmGetSystemRoutineAddress(PsSetCreateProcessNotifyRoutine) found",
    );
    crate::exports::hide(["PsSetCreateProcessNotifyRoutine"]);
    ctx.check(
        slots(&call(&s, IOCTL_ROUTINE, 0))[0] == 0,
        "NULL once PsSetCreateProcessNotifyRoutine is hidden",
    );
    finish(ctx, s);
}

fn td_leak(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_LEAK, 0);
    finish(ctx, s);
}

fn td_overrun(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_OVERRUN, 100);
    ctx.check(false, "a 1-byte overrun went unnoticed");
}

fn td_overrun_far(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_OVERRUN, 4196);
    ctx.check(false, "a far overrun went unnoticed");
}

fn td_uaf(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_UAF, 0);
    ctx.check(false, "a use after free went unnoticed");
}

fn td_wild(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_WILD, 0);
    ctx.check(false, "a wild write went unnoticed");
}

fn td_panic(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_PANIC, 5);
    ctx.check(false, "the panic did not stop the machine");
}

fn td_double_complete(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = call(&s, IOCTL_DOUBLE_COMPLETE, 0);
    ctx.check(false, "the double completion went unnoticed");
}

fn td_uninit(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let r = ctx.ioctl_checked(s.handle, IOCTL_UNINIT, &0u64.to_le_bytes(), 32);
    println!(
        "  IOCTL_UNINIT returned {} Information={}",
        status::describe(r.status),
        r.information
    );
    finish(ctx, s);
}

fn td_refuse(ctx: &mut Ctx) {
    crate::exports::hide(["IofCompleteRequest"]);
    let _ = ctx.load();
    ctx.check(
        false,
        "the image loaded although IofCompleteRequest is hidden",
    );
}

fn td_entry_sweep(ctx: &mut Ctx) {
    super::driver_entry_sweep(ctx, true);
}
