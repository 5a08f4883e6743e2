//! Scenarios for hivetrack.sys (the foundation driver): load, the version IOCTL and its error
//! paths, access control on the control device, clean unload, the DriverEntry fault sweep,
//! random faults, hidden optional routines, refusal of a missing import, and a concurrent
//! IOCTL stress.

use protocol::ioctl::{
    DEVICE_NAME, DEVICE_TYPE, DOS_DEVICE_NAME, FILE_ANY_ACCESS, IOCTL_HIVETRACK_GET_VERSION,
    METHOD_BUFFERED, WIN32_DEVICE_PATH, ctl_code,
};
use protocol::version::VersionInfo;
use protocol::wire::decode;

use super::{Ctx, Expect, Scenario, Target};
use crate::loader::driver::LoadedDriver;
use crate::nt::io::{self, FileHandle};
use crate::nt::kernel;
use crate::nt::layout::{
    DeviceObject, FILE_DEVICE_SECURE_OPEN, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
};
use crate::nt::se::security::{
    AceKind, Caller, FILE_ALL_ACCESS, FILE_WRITE_DATA, GENERIC_READ, GENERIC_WRITE, Sid,
    map_generic_file,
};
use crate::nt::status::{
    self, STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::EXIT_REFUSED;
use crate::verifier::faults::FaultPolicy;

/// Size of the encoded version answer (16-byte header + 40-byte body).
const VERSION_LEN: usize = 56;

/// hivetrack.sys scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "open-during-entry",
            "opens of the device while DriverEntry runs, just before it sets the device's security (its default security would let a standard user in): refused with STATUS_NO_SUCH_DEVICE by NT name (the link comes later) for a standard user, an administrator and SYSTEM alike, because the device is still DO_DEVICE_INITIALIZING (WRK parse.c IopCheckDeviceAndDriver; Learn, \"What does DO_DEVICE_INITIALIZING really do?\"); after DriverEntry the standard user is denied by the descriptor",
            open_during_entry,
        ),
        Scenario::hivetrack(
            "load",
            "DriverEntry creates the secured device and its link; unload leaves nothing",
            load,
        ),
        Scenario::hivetrack(
            "version",
            "IOCTL_HIVETRACK_GET_VERSION answers a decodable version with no uninitialised byte",
            version,
        ),
        Scenario::hivetrack(
            "version-errors",
            "short, truncated, oversized and garbage requests fail cleanly",
            version_errors,
        ),
        Scenario::hivetrack(
            "access",
            "only SYSTEM and elevated administrators can open the device",
            access,
        ),
        Scenario::hivetrack(
            "secure-open",
            "opens into the device's namespace (\\\\.\\HiveTrack\\x): a standard user is denied by the I/O manager because the device has FILE_DEVICE_SECURE_OPEN (WRK parse.c IopParseDevice; Learn, \"Controlling Device Namespace Access\"), and an administrator, who passes the DACL, is refused by the driver's IRP_MJ_CREATE (defence in depth); the device itself still opens",
            secure_open,
        ),
        Scenario::hivetrack(
            "unload",
            "handles opened and closed, then unload leaves nothing behind",
            unload,
        ),
        Scenario::hivetrack(
            "entry-sweep",
            "DriverEntry with the k-th fallible call failed, for every k: error and nothing left",
            entry_sweep,
        ),
        Scenario::hivetrack(
            "random-faults",
            "25% random failures across load, IOCTLs and unload: never a crash or a leak",
            random_faults,
        ),
        Scenario::hivetrack(
            "hidden-routines",
            "optional routines resolved at run time hidden (older Windows): still loads and works",
            hidden_routines,
        ),
        Scenario {
            name: "refuse-missing-import",
            target: Target::Hivetrack,
            about: "a statically imported routine missing: the image is refused and the import named",
            expect: Expect {
                exit: EXIT_REFUSED,
                output: Some("unresolved import(s): ntoskrnl.exe!IoCreateDevice"),
            },
            run: refuse_missing_import,
        },
        Scenario::hivetrack(
            "stress",
            "4 threads x 2000 concurrent version IOCTLs on their own handles",
            stress,
        ),
        Scenario::hivetrack(
            "script",
            "a step script (built-in sample, or run --script FILE) against the control device",
            |ctx| super::run_script(ctx, include_str!("hivetrack-sample.script")),
        ),
    ]
}

/// Loads and runs DriverEntry, checking success.
fn start(ctx: &mut Ctx) -> LoadedDriver {
    let d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    d
}

fn open_admin(ctx: &mut Ctx) -> Option<FileHandle> {
    match ctx.open(
        WIN32_DEVICE_PATH,
        Caller::Admin,
        GENERIC_READ | GENERIC_WRITE,
    ) {
        Ok(h) => Some(h),
        Err(s) => {
            ctx.check(
                false,
                format!(
                    "administrator opens {WIN32_DEVICE_PATH}: {}",
                    status::describe(s)
                ),
            );
            None
        }
    }
}

fn load(ctx: &mut Ctx) {
    ctx.say("load hivetrack.sys and run DriverEntry");
    let mut d = start(ctx);
    let imports: Vec<&str> = d.image.imports.iter().map(|i| i.name.as_str()).collect();
    println!("  {} imports bound: {}", imports.len(), imports.join(" "));
    ctx.check(
        d.handles(IRP_MJ_CREATE) && d.handles(IRP_MJ_CLOSE) && d.handles(IRP_MJ_DEVICE_CONTROL),
        "CREATE, CLOSE and DEVICE_CONTROL dispatch routines set",
    );
    ctx.check(d.has_unload(), "DriverUnload set");
    let device = kernel::with(|k| k.io.device_by_name(DEVICE_NAME));
    ctx.check(device.is_some(), format!("device {DEVICE_NAME} exists"));
    if let Some(dev) = device {
        // SAFETY: a live device object the model tracks.
        let p = unsafe { &*(dev as *const DeviceObject) };
        let (ty, ch, flags) = (p.device_type, p.characteristics, p.flags);
        ctx.check(
            ty == DEVICE_TYPE,
            format!("device type {ty:#x} (expect {DEVICE_TYPE:#x})"),
        );
        ctx.check(
            ch & FILE_DEVICE_SECURE_OPEN != 0,
            "FILE_DEVICE_SECURE_OPEN set",
        );
        ctx.check(
            flags & crate::nt::layout::DO_DEVICE_INITIALIZING == 0,
            "DO_DEVICE_INITIALIZING cleared after DriverEntry",
        );
        let sd = kernel::with(|k| k.io.device_security(dev))
            .unwrap_or_else(crate::nt::se::security::SecurityDescriptor::default_device);
        let dacl = sd.dacl.clone().unwrap_or_default();
        let granted = |sid: &Sid| {
            dacl.iter()
                .filter(|a| a.kind == AceKind::Allow && a.sid == *sid)
                .fold(0, |m, a| m | map_generic_file(a.mask))
        };
        let only_two = dacl
            .iter()
            .all(|a| a.sid == Sid::local_system() || a.sid == Sid::administrators());
        ctx.check(
            sd.dacl_protected
                && only_two
                && granted(&Sid::local_system()) == FILE_ALL_ACCESS
                && granted(&Sid::administrators()) == FILE_ALL_ACCESS,
            format!("DACL is D:P(A;;FA;;;SY)(A;;FA;;;BA): {dacl:?}"),
        );
    }
    let link = kernel::with(|k| {
        k.io.links
            .values()
            .map(|(l, t)| format!("{l} -> {t}"))
            .collect::<Vec<_>>()
    });
    ctx.check(
        link == [format!("{DOS_DEVICE_NAME} -> {DEVICE_NAME}")],
        format!("symbolic link {link:?}"),
    );
    let handles = kernel::with(|k| k.objects.handles.len());
    ctx.check(
        handles == 0,
        format!("no kernel handle left open by DriverEntry ({handles})"),
    );
    ctx.unload_and_check_clean(&mut d);
}

fn version(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(h) = open_admin(ctx) else { return };
    for out_len in [VERSION_LEN as u32, 64, 4096] {
        let r = ctx.ioctl_checked(h, IOCTL_HIVETRACK_GET_VERSION, &[], out_len);
        let decoded = decode::<VersionInfo>(&r.output);
        ctx.check(
            r.status == STATUS_SUCCESS && r.information == VERSION_LEN && decoded.is_ok(),
            format!(
                "GET_VERSION with {out_len}-byte output: {} Information={} -> {decoded:?}",
                status::describe(r.status),
                r.information
            ),
        );
    }
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

#[allow(clippy::too_many_lines)] // one linear script of checks
fn version_errors(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let Some(h) = open_admin(ctx) else { return };
    ctx.say("every output length below the answer's size");
    let mut bad = Vec::new();
    for out_len in 0..VERSION_LEN as u32 {
        let r = ctx.ioctl_checked(h, IOCTL_HIVETRACK_GET_VERSION, &[], out_len);
        if r.status != STATUS_BUFFER_TOO_SMALL || r.information != 0 || !r.output.is_empty() {
            bad.push(format!(
                "{out_len}: {} info {}",
                status::describe(r.status),
                r.information
            ));
        }
    }
    ctx.check(
        bad.is_empty(),
        format!("output 0..55 bytes -> STATUS_BUFFER_TOO_SMALL, nothing returned {bad:?}"),
    );
    ctx.say("input where none is expected");
    for in_len in [1usize, 8, 56, 4096, 65_536] {
        let input: Vec<u8> = (0..in_len).map(|i| (i * 7 + 3) as u8).collect();
        let r = ctx.ioctl_checked(h, IOCTL_HIVETRACK_GET_VERSION, &input, VERSION_LEN as u32);
        ctx.check(
            r.status == STATUS_INVALID_PARAMETER && r.output.is_empty(),
            format!("{in_len}-byte input -> {}", status::describe(r.status)),
        );
    }
    ctx.say("oversized output buffer");
    let r = ctx.ioctl_checked(h, IOCTL_HIVETRACK_GET_VERSION, &[], 1 << 20);
    ctx.check(
        r.status == STATUS_SUCCESS && r.information == VERSION_LEN,
        format!(
            "1 MiB output -> {} Information={}",
            status::describe(r.status),
            r.information
        ),
    );
    ctx.say("unknown and malformed control codes");
    let unknown = [
        ctl_code(DEVICE_TYPE, 0x8FF, METHOD_BUFFERED, 1), // past the last query
        ctl_code(DEVICE_TYPE, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS),
        ctl_code(0x22, 0x800, METHOD_BUFFERED, 1),
        ctl_code(DEVICE_TYPE, 0x800, 3, 1), // METHOD_NEITHER
        ctl_code(DEVICE_TYPE, 0xFFF, METHOD_BUFFERED, FILE_ANY_ACCESS),
        0,
    ];
    for code in unknown {
        let r = ctx.ioctl_checked(h, code, &[1, 2, 3, 4], 64);
        ctx.check(
            r.status == STATUS_INVALID_DEVICE_REQUEST && r.information == 0,
            format!("code {code:#010x} -> {}", status::describe(r.status)),
        );
    }
    ctx.say("garbage: 300 random (code, input, output) requests");
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut odd = Vec::new();
    for _ in 0..300 {
        let r0 = next();
        let method = if (r0 >> 20) % 2 == 0 {
            METHOD_BUFFERED
        } else {
            3
        };
        let code = if r0 % 3 == 0 {
            IOCTL_HIVETRACK_GET_VERSION
        } else {
            ctl_code(
                DEVICE_TYPE,
                0x800 + ((r0 >> 8) % 64) as u32,
                method,
                FILE_ANY_ACCESS,
            )
        };
        let in_len = (next() % 200) as usize;
        let input: Vec<u8> = (0..in_len).map(|_| next() as u8).collect();
        let out_len = (next() % 300) as u32;
        let r = ctx.ioctl_checked(h, code, &input, out_len);
        let allowed = [
            STATUS_SUCCESS,
            STATUS_BUFFER_TOO_SMALL,
            STATUS_INVALID_PARAMETER,
            STATUS_INVALID_DEVICE_REQUEST,
        ];
        if !allowed.contains(&r.status) || (r.status != STATUS_SUCCESS && r.information != 0) {
            odd.push(format!(
                "{code:#x}/{in_len}/{out_len}: {}",
                status::describe(r.status)
            ));
        }
    }
    ctx.check(
        odd.is_empty(),
        format!("garbage requests fail with a documented status and return nothing {odd:?}"),
    );
    io::close(h);
    ctx.say("a handle without read access");
    let pid = ctx.new_pid();
    match io::open(WIN32_DEVICE_PATH, Caller::Admin, pid, FILE_WRITE_DATA) {
        Ok(w) => {
            let r = io::device_io_control(w, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
            ctx.check(
                r.status == STATUS_ACCESS_DENIED,
                format!(
                    "GET_VERSION (FILE_READ_ACCESS) on a write-only handle -> {}",
                    status::describe(r.status)
                ),
            );
            io::close(w);
        }
        Err(s) => ctx.check(false, format!("write-only open: {}", status::describe(s))),
    }
    ctx.unload_and_check_clean(&mut d);
}

/// Audit 21a, A2: the device has its default security (a standard user may open it) from
/// IoCreateDevice until DriverEntry's ZwSetSecurityObject; only DO_DEVICE_INITIALIZING keeps
/// every open out in that window. The opens run inside ZwSetSecurityObject, before the
/// descriptor changes, as another thread's would.
fn open_during_entry(ctx: &mut Ctx) {
    let results = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = results.clone();
    crate::nt::ob::object::before_set_security(move || {
        // By NT name: the driver creates its link only after the descriptor is set.
        for (path, caller) in [
            (r"\Device\HiveTrack", Caller::User),
            (r"\Device\HiveTrack", Caller::Admin),
            (r"\Device\HiveTrack", Caller::System),
        ] {
            let r = io::open(path, caller, 4100, GENERIC_READ);
            if let Ok(h) = r {
                io::close(h);
            }
            seen.borrow_mut()
                .push((path, caller.token().label, r.map(|_| ())));
        }
    });
    let mut d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    let pending = crate::nt::ob::object::cancel_before_set_security();
    let results = results.take();
    ctx.check(
        !pending && results.len() == 3,
        format!("the opens ran inside DriverEntry's ZwSetSecurityObject: {results:?}"),
    );
    for (path, label, r) in results {
        ctx.check(
            r == Err(STATUS_NO_SUCH_DEVICE),
            format!(
                "{label} opening {path} during DriverEntry is refused: {}",
                r.map_or_else(status::describe, |()| "opened".to_string())
            ),
        );
    }
    let r = ctx.open(r"\Device\HiveTrack", Caller::User, GENERIC_READ);
    ctx.check(
        r == Err(STATUS_ACCESS_DENIED),
        format!("after DriverEntry the descriptor refuses the standard user: {r:?}"),
    );
    if let Ok(h) = r {
        io::close(h);
    }
    ctx.unload_and_check_clean(&mut d);
}

fn access(ctx: &mut Ctx) {
    let mut d = start(ctx);
    for (caller, allowed) in [
        (Caller::System, true),
        (Caller::Admin, true),
        (Caller::FilteredAdmin, false),
        (Caller::User, false),
    ] {
        for desired in [GENERIC_READ | GENERIC_WRITE, GENERIC_READ] {
            let r = ctx.open(WIN32_DEVICE_PATH, caller, desired);
            let label = caller.token().label;
            match r {
                Ok(h) => {
                    ctx.check(
                        allowed,
                        format!("{label} opens the device (access {desired:#x})"),
                    );
                    if allowed {
                        let v =
                            io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
                        ctx.check(
                            v.status == STATUS_SUCCESS,
                            format!("{label}: GET_VERSION -> {}", status::describe(v.status)),
                        );
                    }
                    io::close(h);
                }
                Err(s) => ctx.check(
                    !allowed && s == STATUS_ACCESS_DENIED,
                    format!(
                        "{label} denied (access {desired:#x}): {}",
                        status::describe(s)
                    ),
                ),
            }
        }
    }
    let r = ctx.open(r"\Device\HiveTrack", Caller::User, GENERIC_READ);
    ctx.check(
        r == Err(STATUS_ACCESS_DENIED),
        format!("standard user opening the NT name directly: {r:?}"),
    );
    // No access asked: SeAccessCheck refuses DesiredAccess 0 (WRK accessck.c), so nobody
    // reaches IRP_MJ_CREATE with it (audit 21a, A4).
    for caller in [Caller::User, Caller::FilteredAdmin, Caller::Admin] {
        let r = ctx.open(WIN32_DEVICE_PATH, caller, 0);
        if let Ok(h) = r {
            io::close(h);
        }
        ctx.check(
            r == Err(STATUS_ACCESS_DENIED),
            format!(
                "{} opening with DesiredAccess 0 is refused: {r:?}",
                caller.token().label
            ),
        );
    }
    ctx.unload_and_check_clean(&mut d);
}

/// Audit 21a, A3: opens that name a file inside the control device's namespace.
///
/// Without FILE_DEVICE_SECURE_OPEN the I/O manager would not check the device's DACL for
/// them (WRK `io/iomgr/parse.c` lines 657-748; modelled in `io::open`), so a standard user
/// would reach IRP_MJ_CREATE with the rights it asked for. The flag makes it check (lines
/// 934-1004); the driver also fails any create whose `FileObject->FileName` is not empty
/// (Learn, "Controlling Device Namespace Access"), so even a caller the DACL admits gets no
/// handle through the namespace.
fn secure_open(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let inside = format!("{WIN32_DEVICE_PATH}\\x");
    for path in [inside.as_str(), r"\Device\HiveTrack\x", r"\\.\HiveTrack\"] {
        for caller in [Caller::User, Caller::FilteredAdmin] {
            let r = ctx.open(path, caller, GENERIC_READ);
            if let Ok(h) = r {
                let v = io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
                println!(
                    "  {path} opened: GET_VERSION -> {}",
                    status::describe(v.status)
                );
                io::close(h);
            }
            ctx.check(
                r == Err(STATUS_ACCESS_DENIED),
                format!(
                    "{} opening {path} is denied by the I/O manager: {r:?}",
                    caller.token().label
                ),
            );
        }
        for caller in [Caller::Admin, Caller::System] {
            let r = ctx.open(path, caller, GENERIC_READ | GENERIC_WRITE);
            if let Ok(h) = r {
                io::close(h);
            }
            ctx.check(
                r == Err(STATUS_OBJECT_NAME_NOT_FOUND),
                format!(
                    "{} opening {path} is refused by the driver (STATUS_OBJECT_NAME_NOT_FOUND): {r:?}",
                    caller.token().label
                ),
            );
        }
    }
    match ctx.open(WIN32_DEVICE_PATH, Caller::Admin, GENERIC_READ) {
        Ok(h) => {
            let v = io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
            ctx.check(
                v.status == STATUS_SUCCESS,
                format!(
                    "the device itself still opens and answers: {}",
                    status::describe(v.status)
                ),
            );
            io::close(h);
        }
        Err(s) => ctx.check(
            false,
            format!("the device itself still opens: {}", status::describe(s)),
        ),
    }
    ctx.unload_and_check_clean(&mut d);
}

fn unload(ctx: &mut Ctx) {
    let mut d = start(ctx);
    let handles: Vec<FileHandle> = (0..5).filter_map(|_| open_admin(ctx)).collect();
    for h in &handles {
        let _ = io::device_io_control(*h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
    }
    for h in handles {
        io::close(h);
    }
    ctx.unload_and_check_clean(&mut d);
    let r = ctx.open(WIN32_DEVICE_PATH, Caller::System, GENERIC_READ);
    ctx.check(
        r.is_err(),
        format!("the device is gone after unload: {r:?}"),
    );
}

/// hivetrack degrades instead of failing: when a step of live tracking cannot be set up
/// (lookaside lists, hive list, callback registration) DriverEntry still succeeds, with tracking
/// off. So each k must either fail cleanly (the control device could not be made) or load and
/// then unload leaving nothing.
fn entry_sweep(ctx: &mut Ctx) {
    super::driver_entry_sweep(ctx, false, &[]);
}

fn random_faults(ctx: &mut Ctx) {
    for seed in 1..=16u64 {
        kernel::reset();
        // Under Driver Verifier lookasides keep nothing (`lookaside::disable_caching`).
        crate::nt::ex::lookaside::disable_caching();
        kernel::with(|k| {
            k.faults.policy = FaultPolicy::Random {
                per_mille: 250,
                seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }
        });
        let mut d = ctx.load();
        let s = d.entry();
        if status::nt_success(s) {
            let pid = ctx.new_pid();
            if let Ok(h) = io::open(WIN32_DEVICE_PATH, Caller::Admin, pid, GENERIC_READ) {
                let r = io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
                ctx.check(
                    r.status == STATUS_SUCCESS,
                    format!("seed {seed}: GET_VERSION -> {}", status::describe(r.status)),
                );
                io::close(h);
            }
            let injected = kernel::with(|k| k.faults.injected.len());
            println!("  seed {seed}: loaded ({injected} injected failures)");
            ctx.unload_and_check_clean(&mut d);
        } else {
            let injected = kernel::with(|k| k.faults.injected.join(", "));
            println!(
                "  seed {seed}: DriverEntry {} after {injected}",
                status::describe(s)
            );
            ctx.check_clean(&format!("after failed DriverEntry (seed {seed})"));
        }
    }
}

fn hidden_routines(ctx: &mut Ctx) {
    ctx.say("phase 1: record the routines the driver resolves at run time");
    let mut d = start(ctx);
    ctx.unload_and_check_clean(&mut d);
    let queried = kernel::with(|k| k.routine_queries.clone());
    println!("  MmGetSystemRoutineAddress queries: {queried:?}");
    ctx.say("phase 2: hide every one of them and run again");
    kernel::reset();
    crate::nt::exports::hide(queried.iter().map(String::as_str));
    let mut d = start(ctx);
    if let Some(h) = open_admin(ctx) {
        let r = io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5);
        ctx.check(
            r.status == STATUS_SUCCESS,
            format!(
                "GET_VERSION with routines hidden -> {}",
                status::describe(r.status)
            ),
        );
        io::close(h);
    }
    ctx.unload_and_check_clean(&mut d);
    // Each alone: a system may lack one routine of a pair (the one that undoes another:
    // a notify routine registered with no way to remove it would be called in the unloaded
    // image; found in review: PsRemoveLoadImageNotifyRoutine).
    ctx.say("phase 3: hide each one alone");
    for routine in &queried {
        kernel::reset();
        // A reset keeps what is hidden: only this one is.
        kernel::with(|k| k.hidden_routines.clear());
        crate::nt::exports::hide([routine.as_str()]);
        let mut d = start(ctx);
        ctx.unload_and_check_clean(&mut d);
    }
}

fn refuse_missing_import(ctx: &mut Ctx) {
    crate::nt::exports::hide(["IoCreateDevice"]);
    let _ = ctx.load();
    ctx.check(false, "the image loaded although IoCreateDevice is hidden");
}

#[allow(clippy::needless_collect)] // every worker must be spawned before any is joined
fn stress(ctx: &mut Ctx) {
    let mut d = start(ctx);
    kernel::with(|k| k.quiet_debug_print = true);
    let pids: Vec<u32> = (0..4).map(|_| ctx.new_pid()).collect();
    let failures: usize = std::thread::scope(|s| {
        let workers: Vec<_> = pids
            .into_iter()
            .enumerate()
            .map(|(t, pid)| {
                std::thread::Builder::new()
                    .stack_size(16 << 20)
                    .spawn_scoped(s, move || {
                        crate::machine::cpu::enter_thread(1 + t as u32);
                        let Ok(h) = io::open(WIN32_DEVICE_PATH, Caller::Admin, pid, GENERIC_READ)
                        else {
                            return 2000;
                        };
                        let bad = (0..2000)
                            .filter(|_| {
                                io::device_io_control(h, IOCTL_HIVETRACK_GET_VERSION, &[], 64, 0xA5)
                                    .status
                                    != STATUS_SUCCESS
                            })
                            .count();
                        io::close(h);
                        bad
                    })
                    .expect("spawn")
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(2000)).sum()
    });
    ctx.check(
        failures == 0,
        format!("8000 concurrent GET_VERSION requests, {failures} failed"),
    );
    ctx.unload_and_check_clean(&mut d);
}
