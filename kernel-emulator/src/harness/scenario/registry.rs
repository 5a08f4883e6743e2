//! Registry-model scenarios with the test driver's registry callback and process-notify
//! routine: notifications with their structures, CallContext from pre to post, object
//! contexts and their cleanup (on close, at process exit, at CmUnRegisterCallback), other
//! filters failing or bypassing a pre-notification, duplicated and inherited handles, hive
//! unload refused while a key object is open or referenced by the driver.

use super::{Ctx, Scenario};
use crate::loader::driver::LoadedDriver;
use crate::nt::cm::hive::{self, STATUS_CANNOT_DELETE};
use crate::nt::cm::registry::{self, BYPASS_MARKER, DENY_MARKER};
use crate::nt::io::{self, FileHandle};
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, STATUS_ACCESS_DENIED, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};
use crate::verifier::bugcheck::EXIT_BUGCHECK;

const IOCTL_STATS: u32 = (0x22 << 16) | (0x810 << 2);
const IOCTL_PIN: u32 = (0x22 << 16) | (0x811 << 2);
const IOCTL_UNPIN: u32 = (0x22 << 16) | (0x812 << 2);
const IOCTL_WAIT: u32 = (0x22 << 16) | (0x813 << 2);
const IOCTL_RELEASE_ON_CLOSE: u32 = (0x22 << 16) | (0x81C << 2);
const IOCTL_NAME_TOUCH: u32 = (0x22 << 16) | (0x81E << 2);
const IOCTL_PROCESS_REMOVE_INSIDE: u32 = (0x22 << 16) | (0x851 << 2);
/// test-driver/src/registry.rs: read the name after lowering the IRQL again, or while raised.
const TOUCH_AFTER: u64 = 1;
const TOUCH_RAISED: u64 = 2;
const RELEASE_MAGIC: u64 = 0x7265_6c65_6173_6564;
pub(super) const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
const USER_HIVE: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";
pub(super) const KEY_READ: u32 = 0x2_0019;
pub(super) const SYSTEM_PID: u32 = 4;

/// The counters the test driver keeps (test-driver/src/registry.rs).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    post_success: u64,
    contexts_set: u64,
    contexts_freed: u64,
    call_context_mismatch: u64,
    pre_close: u64,
    post_close: u64,
    names_ok: u64,
    post_failed: u64,
    creates: u64,
    exits: u64,
    pre_open: u64,
    not_v1: u64,
    process_notify_status: u64,
    pre_unload: u64,
    post_load: u64,
    /// Post-open/create notifications with STATUS_REPARSE (a success-class status).
    post_reparse: u64,
    pre_close_no_context: u64,
    name_touched: u64,
    /// Process notifications in which KeAreApcsDisabled was TRUE.
    process_apcs_disabled: u64,
}

/// Registry scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-registry",
            "pre/post notifications, CallContext, contexts cleaned on close, exit and unregistration; other filters failing or bypassing",
            td_registry,
        ),
        Scenario::test_driver(
            "td-hive-unload",
            "hive unload fails while a process holds a key or the driver references one, succeeds otherwise",
            td_hive_unload,
        ),
        Scenario::test_driver(
            "td-process-notify",
            "process create/exit notifications; a child inherits only OBJ_INHERIT handles, at their values; exit closes every handle, inherited ones included, a plain one at its parent's exit",
            td_process_notify,
        ),
        super::test_driver::caught(
            "td-process-notify-remove-inside",
            "PsSetCreateProcessNotifyRoutineEx(Remove) from inside the routine it removes is a verifier violation (Learn: \"A driver must not make this call from its implementation of the PCREATE_PROCESS_NOTIFY_ROUTINE_EX callback routine\"), not a hang",
            EXIT_BUGCHECK,
            "from inside that routine: a deadlock on Windows",
            td_process_notify_remove_inside,
        ),
        Scenario::test_driver(
            "td-procmon-replay",
            "a Process Monitor CSV export (built-in sample or run --procmon-csv) replayed through the driver",
            td_procmon_replay,
        ),
        Scenario::test_driver(
            "td-registry-faults",
            "callbacks at APC_LEVEL with 25% of pool allocations failing: contexts skipped, never leaked",
            td_registry_faults,
        ),
        Scenario::test_driver(
            "td-script",
            "a step script (built-in sample, or run --script FILE): hive held by an inherited handle",
            |ctx| super::run_script(ctx, include_str!("td-sample.script")),
        ),
        Scenario::test_driver(
            "td-unload-under-load",
            "the driver unloads while 3 threads drive registry and process traffic: unregistration waits for calls in flight, nothing calls in afterwards",
            td_unload_under_load,
        ),
        Scenario::test_driver(
            "td-wait-registry",
            "a pending IRP completed from a registry callback on another thread (a key handle closed there), callbacks at PASSIVE and APC_LEVEL",
            td_wait_registry,
        ),
        Scenario::test_driver(
            "td-preexisting-handles",
            "keys opened (and a hive loaded) before DriverEntry: their objects never carry the driver's context, their close comes with none and no cleanup; NtQueryOpenSubKeysEx still lists them with the opener's pid",
            td_preexisting_handles,
        ),
        Scenario::test_driver(
            "td-close-unblockable",
            "a filter above the test driver fails RegNtPreKeyHandleClose: nothing changes, the test driver still gets the pre- and post-close",
            td_close_unblockable,
        ),
        Scenario::test_driver(
            "td-paged-key-name",
            "the key name from CmCallbackGetKeyObjectIDEx is paged pool: trimmed when the driver raises to DISPATCH_LEVEL (Force IRQL Checking), paged back in when read below it",
            td_paged_key_name,
        ),
        Scenario {
            name: "td-paged-key-name-at-dispatch",
            target: super::Target::TestDriver,
            about: "the key name from CmCallbackGetKeyObjectIDEx read at DISPATCH_LEVEL: bug check 0xD1 under Force IRQL Checking",
            expect: super::Expect {
                exit: crate::verifier::bugcheck::EXIT_BUGCHECK,
                output: Some("DRIVER_IRQL_NOT_LESS_OR_EQUAL"),
            },
            run: td_paged_key_name_at_dispatch,
        },
        Scenario::test_driver(
            "td-paged-image-name",
            "a process-creation notification's ImageFileName is pageable (model choice, the stricter reading: its pool is not documented): trimmed when the driver raises to DISPATCH_LEVEL, paged back in when read below it",
            td_paged_image_name,
        ),
        Scenario {
            name: "td-paged-image-name-at-dispatch",
            target: super::Target::TestDriver,
            about: "a process-creation notification's ImageFileName read at DISPATCH_LEVEL: bug check 0xD1 under Force IRQL Checking",
            expect: super::Expect {
                exit: crate::verifier::bugcheck::EXIT_BUGCHECK,
                output: Some("DRIVER_IRQL_NOT_LESS_OR_EQUAL"),
            },
            run: td_paged_image_name_at_dispatch,
        },
        Scenario::test_driver(
            "td-generated",
            "4 threads x 5 processes x 20 keys, random opens/creates/duplicates/closes/exits, seeded",
            td_generated,
        ),
    ]
}

/// A loaded test driver and an open handle to its device.
pub(super) struct Session {
    pub(super) driver: LoadedDriver,
    pub(super) control: FileHandle,
}

fn boot_hives() {
    for (mount, file) in [
        (SOFTWARE, r"\SystemRoot\System32\Config\SOFTWARE"),
        (
            r"\REGISTRY\MACHINE\SYSTEM",
            r"\SystemRoot\System32\Config\SYSTEM",
        ),
    ] {
        let _ = hive::load_hive(SYSTEM_PID, mount, file);
    }
}

/// Mounts the machine hives, loads the test driver and opens its device.
pub(super) fn start(ctx: &mut Ctx) -> Option<Session> {
    boot_hives();
    start_loaded(ctx)
}

fn stats(s: &Session) -> Stats {
    let mut v = [0u64; 28];
    for block in 0..7u64 {
        let r = io::device_io_control(s.control, IOCTL_STATS, &block.to_le_bytes(), 32, 0xA5);
        for (i, c) in r.output.chunks_exact(8).enumerate() {
            v[block as usize * 4 + i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        }
    }
    Stats {
        post_success: v[0],
        contexts_set: v[1],
        contexts_freed: v[2],
        call_context_mismatch: v[3],
        pre_close: v[4],
        post_close: v[5],
        names_ok: v[6],
        post_failed: v[7],
        creates: v[8],
        exits: v[9],
        pre_open: v[10],
        not_v1: v[11],
        process_notify_status: v[12],
        pre_unload: v[13],
        post_load: v[14],
        post_reparse: v[15],
        pre_close_no_context: v[22],
        name_touched: v[23],
        process_apcs_disabled: v[27],
    }
}

/// Closes the device and unloads the driver, checking nothing is left.
pub(super) fn finish(ctx: &mut Ctx, mut s: Session) {
    io::close(s.control);
    ctx.unload_and_check_clean(&mut s.driver);
}

fn open(pid: u32, path: &str) -> Result<u64, i32> {
    hive::open_key(pid, path, KEY_READ, false)
}

#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // a, b, c: the processes of the script
fn td_registry(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let higher = registry::register_emulated(registry::filter_deny, 0, "400000");
    let lower = registry::register_emulated(registry::filter_bypass, 0, "300000");
    ctx.check(
        higher.is_ok() && lower.is_ok(),
        "two other filters registered at altitudes 400000 and 300000",
    );
    let collision = registry::register_emulated(registry::filter_deny, 0, "385200.5");
    ctx.check(
        collision == Err(crate::nt::status::STATUS_FLT_INSTANCE_ALTITUDE_COLLISION),
        format!("the test driver's altitude is taken: {collision:?}"),
    );
    let Ok(a) = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false)
    else {
        ctx.check(false, "create process A");
        return;
    };
    let Ok(b) = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\other.exe", false)
    else {
        ctx.check(false, "create process B");
        return;
    };
    ctx.say("open, create, fail");
    let a1 = open(a, SOFTWARE);
    let a2 = hive::open_key(a, &format!(r"{SOFTWARE}\Kemu"), KEY_READ, true);
    let missing = open(a, &format!(r"{SOFTWARE}\Missing"));
    ctx.check(
        a1.is_ok() && a2.is_ok(),
        format!("process {a} opens SOFTWARE and creates SOFTWARE\\Kemu: {a1:?} {a2:?}"),
    );
    ctx.check(
        missing == Err(STATUS_OBJECT_NAME_NOT_FOUND),
        format!("a missing key: {missing:?}"),
    );
    let st = stats(&s);
    ctx.check(
        st.pre_open == 3 && st.post_success == 2 && st.post_failed == 1,
        format!("driver saw 3 pre, 2 successful posts, 1 failed post: {st:?}"),
    );
    ctx.check(
        st.contexts_set == 2 && st.not_v1 == 0 && st.call_context_mismatch == 0,
        "a context per successful open, _V1 structures, CallContext carried from pre to post",
    );
    ctx.say("other filters");
    let denied = open(a, &format!(r"{SOFTWARE}\{DENY_MARKER}"));
    ctx.check(
        denied == Err(STATUS_ACCESS_DENIED),
        format!("a higher filter denies in pre: {denied:?}"),
    );
    let bypassed = open(a, &format!(r"{SOFTWARE}\{BYPASS_MARKER}"));
    let redirected = bypassed
        .ok()
        .and_then(|h| kernel::with(|k| k.hives.handles.get(&(a, h)).copied()))
        .and_then(|o| kernel::with(|k| k.hives.identify(o)))
        .map(|(_, name, _)| name);
    // "Handling Notifications": on STATUS_CALLBACK_BYPASS from a pre-callback the registry
    // "simply returns STATUS_SUCCESS to the calling thread"; regfltr pre.c
    // (CallbackPreNotificationBypass) creates the key under another name itself and hands
    // its referenced object back in ResultObject, which becomes the caller's handle.
    ctx.check(
        bypassed.is_ok()
            && redirected
                .as_deref()
                .is_some_and(|n| n.ends_with(registry::BYPASS_REDIRECT)),
        format!(
            "a lower filter bypasses in pre: the caller gets STATUS_SUCCESS and a handle to the \
             key the filter made ({bypassed:?}, {redirected:?})"
        ),
    );
    let st2 = stats(&s);
    // The bypassing filter's own ZwCreateKey, made inside its callback, reaches only the
    // callbacks below it, not the driver above (Learn, "Supporting Layered Registry Filtering
    // Drivers": the configuration manager "does not restart at the top of the filter
    // stack"; regfltr `multialt.c`, MultipleAltitudeInternalInvocationSample); the bypassed
    // open leaves the driver (which returned success) its post, carrying the status the
    // caller gets (STATUS_SUCCESS) and the filter's object. Until 2026-12-04 the model
    // delivered the filter's create to the driver too (pre_open + 2).
    ctx.check(
        st2.pre_open == st.pre_open + 1
            && st2.post_success == st.post_success + 1
            && st2.post_failed == st.post_failed,
        format!(
            "denied above the driver: no pre; bypassed below it: the bypassed open's post \
             only, successful; the filter's own create stays below the driver ({st2:?})"
        ),
    );
    if let Ok(h) = bypassed {
        let _ = hive::close_key(a, h);
    }
    let st2 = stats(&s);
    ctx.say("duplicated handle, closes");
    if let (Ok(a1), Ok(_)) = (a1, a2) {
        let b1 = hive::duplicate_handle(a, a1, b);
        ctx.check(b1.is_ok(), "the SOFTWARE handle duplicated into process B");
        let _ = hive::close_key(a, a1);
        let st3 = stats(&s);
        ctx.check(
            st3.pre_close == st2.pre_close,
            "closing one of two handles of an object: no close notification",
        );
        if let Ok(b1) = b1 {
            let _ = hive::close_key(b, b1);
        }
        let st4 = stats(&s);
        ctx.check(
            st4.pre_close == st3.pre_close + 1
                && st4.post_close == st3.post_close + 1
                && st4.names_ok == st4.pre_close,
            format!("last handle closed: pre-close with a name, post-close ({st4:?})"),
        );
        ctx.check(
            st4.contexts_freed == 2,
            "its context (and the bypassed key's) cleaned up and freed",
        );
    }
    ctx.say("process exit closes its handles");
    process::exit_process(a);
    let st5 = stats(&s);
    ctx.check(
        st5.contexts_freed == 3 && st5.exits >= 1,
        format!(
            "exit of {a} closed SOFTWARE\\Kemu: contexts freed {}",
            st5.contexts_freed
        ),
    );
    ctx.say("a key left open at driver unload");
    let c = open(b, SOFTWARE);
    ctx.check(c.is_ok(), "process B opens SOFTWARE and keeps it open");
    let st6 = stats(&s);
    ctx.check(
        st6.contexts_set == st6.contexts_freed + 1,
        "one context outstanding before unload",
    );
    finish(ctx, s);
    println!(
        "  (the pool check above proves CmUnRegisterCallback delivered the cleanup that freed it)"
    );
    if let Ok(c) = c {
        let r = hive::close_key(b, c);
        ctx.check(
            r == STATUS_SUCCESS,
            "the key still closes after the driver is gone",
        );
    }
}

#[allow(clippy::many_single_char_names)] // p, q: the processes of the script
fn td_hive_unload(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let load = hive::load_hive(SYSTEM_PID, USER_HIVE, r"\??\C:\Users\kemu\NTUSER.DAT");
    ctx.check(
        load == STATUS_SUCCESS,
        format!("user hive loaded: {}", status::describe(load)),
    );
    let Ok(p) = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\profleak.exe", false)
    else {
        ctx.check(false, "create process");
        return;
    };
    let policies = format!(r"{USER_HIVE}\Software\Policies");
    let _ = hive::open_key(p, &format!(r"{USER_HIVE}\Software"), KEY_READ, true)
        .map(|h| hive::close_key(p, h));
    let h = hive::open_key(p, &policies, KEY_READ, true);
    ctx.check(h.is_ok(), "a process holds Software\\Policies open");
    let r = hive::unload_hive(SYSTEM_PID, USER_HIVE);
    println!("  holders: {:?}", hive::holders(USER_HIVE));
    ctx.check(
        r == STATUS_CANNOT_DELETE,
        format!(
            "unload while a process holds a key: {}",
            status::describe(r)
        ),
    );
    process::exit_process(p);
    ctx.say("the driver pins the next key it sees opened");
    let pin = io::device_io_control(s.control, IOCTL_PIN, &[0; 8], 32, 0xA5);
    ctx.check(pin.status == STATUS_SUCCESS, "pin armed");
    let Ok(q) = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\x.exe", false) else {
        return;
    };
    if let Ok(h) = hive::open_key(q, &policies, KEY_READ, false) {
        let _ = hive::close_key(q, h);
    }
    let r = hive::unload_hive(SYSTEM_PID, USER_HIVE);
    let holders = hive::holders(USER_HIVE);
    println!("  holders: {holders:?}");
    ctx.check(
        r == STATUS_CANNOT_DELETE && holders.iter().any(|h| h.contains("referenced by a driver")),
        format!(
            "unload with every handle closed but a driver reference: {}",
            status::describe(r)
        ),
    );
    let unpin = io::device_io_control(s.control, IOCTL_UNPIN, &[0; 8], 32, 0xA5);
    ctx.check(
        unpin.output.first() == Some(&1),
        "driver released its reference",
    );
    let r = hive::unload_hive(SYSTEM_PID, USER_HIVE);
    ctx.check(
        r == STATUS_SUCCESS,
        format!(
            "unload once nothing holds the hive: {}",
            status::describe(r)
        ),
    );
    let st = stats(&s);
    ctx.check(
        st.pre_unload == 3 && st.post_load == 1,
        format!("driver saw 3 pre-unload and 1 post-load notifications ({st:?})"),
    );
    ctx.check(st.contexts_set == st.contexts_freed, "every context freed");
    process::exit_process(q);
    finish(ctx, s);
}

fn td_process_notify(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let st0 = stats(&s);
    ctx.check(
        st0.process_notify_status == 0,
        format!(
            "PsSetCreateProcessNotifyRoutineEx accepted (image has FORCE_INTEGRITY): {:#x}",
            st0.process_notify_status
        ),
    );
    let parent = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\parent.exe", false)
        .unwrap_or(0);
    // RegCreateKeyEx with bInheritHandle: OBJ_INHERIT, so the child gets it; RegOpenKeyEx:
    // not inheritable, the parent's alone (WRK `ob/obinit.c` ObDupHandleProcedure; fidelity
    // audit 19a, F5: until 2026-12-06 the model copied both).
    let h = hive::open_key_inheritable(parent, SOFTWARE, KEY_READ, false);
    let plain = open(parent, SOFTWARE);
    let child =
        process::create_process(parent, r"\Device\HarddiskVolume2\child.exe", true).unwrap_or(0);
    let inherited = kernel::with(|k| k.hives.handles_of(child));
    ctx.check(
        h.is_ok() && plain.is_ok() && inherited == [h.unwrap_or(0)],
        format!(
            "the child inherited the OBJ_INHERIT handle {h:x?} at its value, not the plain one {plain:x?}: {inherited:x?}"
        ),
    );
    let other = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\other.exe", false)
        .unwrap_or(0);
    process::exit_process(parent);
    let st1 = stats(&s);
    ctx.check(
        st1.pre_close == 1 && st1.contexts_freed - st0.contexts_freed == 1,
        format!(
            "parent exit: the plain handle's object is closed and cleaned up now, the inherited one lives on in the child ({} close(s), {} context(s) freed)",
            st1.pre_close,
            st1.contexts_freed - st0.contexts_freed
        ),
    );
    process::exit_process(child);
    process::exit_process(other);
    let st = stats(&s);
    ctx.check(
        st.creates - st0.creates == 3 && st.exits - st0.exits == 3,
        format!("3 creations and 3 exits notified ({st:?})"),
    );
    ctx.check(
        st.process_apcs_disabled - st0.process_apcs_disabled == 6,
        format!(
            "each of the 6 notifications ran inside a critical region (KeAreApcsDisabled TRUE in {})",
            st.process_apcs_disabled - st0.process_apcs_disabled
        ),
    );
    ctx.check(
        st.pre_close == 2 && st.contexts_freed == st.contexts_set,
        "the child's exit closed the inherited handle: context freed",
    );
    finish(ctx, s);
}

fn td_process_notify_remove_inside(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = io::device_io_control(s.control, IOCTL_PROCESS_REMOVE_INSIDE, &[], 32, 0);
    let p = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\selfremove.exe", false);
    ctx.check(
        false,
        format!("the routine removed itself from inside a call ({p:?}) and nothing was reported"),
    );
}

/// The sample capture replayed when no `--procmon-csv` is given.
const SAMPLE_CSV: &str = include_str!("procmon-sample.csv");

fn td_procmon_replay(ctx: &mut Ctx) {
    let text = match &ctx.opts.procmon_csv {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                ctx.check(false, format!("read {}: {e}", p.display()));
                return;
            }
        },
        None => SAMPLE_CSV.to_string(),
    };
    let rows = match crate::harness::replay::parse_procmon(&text) {
        Ok(e) => e,
        Err(e) => {
            ctx.check(false, format!("parse the capture: {e}"));
            return;
        }
    };
    // The hives existed before the capture began: mounted before the driver loads.
    crate::harness::replay::mount_hives(&rows);
    let Some(s) = start(ctx) else { return };
    kernel::with(|k| k.quiet_debug_print = true);
    let mut checkpoints = 0;
    let acc = crate::harness::replay::replay(&rows, &mut |_, _| checkpoints += 1);
    for line in acc.lines() {
        println!("  {line}");
    }
    ctx.check(
        acc.mismatches.is_empty(),
        format!(
            "the model reproduced every replayed result of the capture ({} mismatches)",
            acc.mismatches.len()
        ),
    );
    ctx.check(
        acc.replayed_rows() + acc.skipped.values().sum::<usize>() == acc.rows,
        "every row is either replayed or counted as not replayed",
    );
    ctx.check(
        checkpoints == 3,
        format!(
            "a checkpoint before the one Process Exit, at the end, after the last exits ({checkpoints})"
        ),
    );
    let st = stats(&s);
    ctx.check(
        st.post_success > 0 && st.call_context_mismatch == 0,
        format!("driver saw the opens ({st:?})"),
    );
    ctx.check(
        st.post_failed == 2 && st.post_reparse == 1,
        format!(
            "the REPARSE, NAME NOT FOUND and ACCESS DENIED rows reached the driver as posts with their status, nothing else did ({} failed, {} reparse)",
            st.post_failed, st.post_reparse
        ),
    );
    ctx.check(
        st.contexts_set == st.contexts_freed,
        "every context freed once every replayed process exited",
    );
    let leftover = kernel::with(|k| k.hives.handles.len());
    ctx.check(leftover == 0, format!("no key handle left ({leftover})"));
    finish(ctx, s);
}

fn td_generated(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    kernel::with(|k| k.quiet_debug_print = true);
    let root = format!(r"{SOFTWARE}\Generated");
    let opened = crate::harness::replay::generate(&root, 4, 5, 20, 0x5EED_1234_ABCD_0001);
    let st = stats(&s);
    println!("  {opened} successful opens; driver: {st:?}");
    ctx.check(
        st.post_success == opened && st.contexts_set == opened,
        "one successful post and one context per open, across threads",
    );
    ctx.check(
        st.contexts_freed == st.contexts_set && st.pre_close == st.post_close,
        "every context freed, closes paired",
    );
    ctx.check(
        st.call_context_mismatch == 0 && st.names_ok == st.pre_close,
        "CallContext and key names intact under concurrency",
    );
    ctx.check(
        st.creates - st.exits == 0 && st.creates == 20,
        format!(
            "20 processes created and exited ({}/{})",
            st.creates, st.exits
        ),
    );
    finish(ctx, s);
}

fn td_registry_faults(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    // Under Driver Verifier lookasides keep nothing (`lookaside::force_depth_zero`).
    let _ = crate::nt::ex::lookaside::force_depth_zero();
    kernel::with(|k| {
        k.quiet_debug_print = true;
        k.callback_irql = crate::machine::cpu::APC_LEVEL;
        k.faults.pool_only = true;
        k.faults.policy = crate::verifier::faults::FaultPolicy::Random {
            per_mille: 250,
            seed: 0x0BAD_5EED,
        };
    });
    let root = format!(r"{SOFTWARE}\Faults");
    let opened = crate::harness::replay::generate(&root, 2, 4, 25, 7);
    let injected = kernel::with(|k| {
        k.faults.policy = crate::verifier::faults::FaultPolicy::Off;
        k.callback_irql = crate::machine::cpu::PASSIVE_LEVEL;
        k.faults.injected.len()
    });
    let st = stats(&s);
    println!("  {opened} opens, {injected} allocations failed on purpose; driver: {st:?}");
    ctx.check(injected > 0, "faults were injected");
    ctx.check(
        st.post_success == opened
            && st.contexts_set + injected as u64 >= opened
            && st.contexts_set < opened,
        "a failed context allocation skips the context, the open still succeeds",
    );
    ctx.check(
        st.contexts_freed == st.contexts_set,
        "every context that was set is freed",
    );
    finish(ctx, s);
}

fn td_unload_under_load(ctx: &mut Ctx) {
    boot_hives();
    let mut d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    kernel::with(|k| k.quiet_debug_print = true);
    let root = format!(r"{SOFTWARE}\UnderLoad");
    let opened = std::thread::scope(|scope| {
        let load = scope.spawn(|| crate::harness::replay::generate(&root, 3, 6, 80, 0xFEED));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = kernel::with(|k| k.registry.delivered.values().sum::<u64>());
        // A notification round that took its snapshot of the callbacks now, and reaches the
        // driver's only after the unload: the deterministic form of the race the workload
        // threads run into by chance.
        let stale = crate::nt::cm::registry::by_altitude();
        ctx.unload_and_check_clean(&mut d);
        println!("  unloaded after {before} notifications had been delivered");
        let delivered = kernel::with(|k| k.registry.delivered.values().sum::<u64>());
        for cb in &stale {
            let _ = crate::nt::cm::registry::invoke(
                cb,
                crate::nt::cm::registry::class::PRE_KEY_HANDLE_CLOSE,
                0,
            );
        }
        ctx.check(
            !stale.is_empty()
                && kernel::with(|k| k.registry.delivered.values().sum::<u64>()) == delivered,
            format!(
                "a round that took its snapshot before the unload does not call the {} unregistered callback(s) (ReactOS cmhook.c: rundown protection)",
                stale.len()
            ),
        );
        load.join().unwrap_or(0)
    });
    println!("  the workload finished after the unload: {opened} opens in all");
    let leftover = kernel::leaks();
    ctx.check(
        leftover.is_empty(),
        format!("still nothing of the driver's left once the workload ended {leftover:?}"),
    );
}

/// The product's pattern: a wait completes when a registry notification says so, on the
/// thread that caused it. Once with callbacks at PASSIVE_LEVEL, once at APC_LEVEL.
fn td_wait_registry(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let _ = io::device_io_control(s.control, IOCTL_RELEASE_ON_CLOSE, &[], 32, 0xA5);
    for irql in [
        crate::machine::cpu::PASSIVE_LEVEL,
        crate::machine::cpu::APC_LEVEL,
    ] {
        kernel::with(|k| k.callback_irql = irql);
        let wait =
            io::device_io_control_async(s.control, IOCTL_WAIT, &60_000u64.to_le_bytes(), 32, 0xA5);
        let io::IoctlCall::Pending(mut p) = wait else {
            ctx.check(false, format!("the wait did not pend: {wait:?}"));
            return;
        };
        let me = crate::machine::cpu::current_thread();
        let other = std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(move || {
                crate::machine::cpu::enter_thread(1);
                let pid =
                    process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false)?;
                let key = open(pid, SOFTWARE)?;
                let closed = hive::close_key(pid, key);
                process::exit_process(pid);
                Ok::<_, i32>((crate::machine::cpu::current_thread(), closed))
            })
            .expect("spawn");
        let joined = other.join().unwrap_or(Err(0));
        ctx.check(
            joined.is_ok_and(|(t, closed)| t != me && closed == STATUS_SUCCESS),
            format!("another thread opened and closed a key: {joined:?}"),
        );
        let r = p.poll();
        let magic = r
            .as_ref()
            .and_then(|r| r.output.get(..8))
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        ctx.check(
            r.as_ref().is_some_and(|r| r.status == STATUS_SUCCESS) && magic == Some(RELEASE_MAGIC),
            format!(
                "callbacks at IRQL {irql}: the post-close notification completed the wait: {r:?}"
            ),
        );
    }
    kernel::with(|k| k.callback_irql = crate::machine::cpu::PASSIVE_LEVEL);
    ctx.check(
        crate::nt::ke::timer::armed() == 0,
        "the waits' timers were cancelled",
    );
    finish(ctx, s);
}

/// Issue 11 item 7. Docs: `CmSetCallbackObjectContext` ("associates a context with a
/// registry key object" for the callback that calls it) and "Registering for Notifications"
/// / `RegNtCallbackObjectContextCleanup` (sent only for objects that carry a context of the
/// callback): a key object opened before `CmRegisterCallbackEx` has no context of that
/// callback, so its close notification carries `ObjectContext == NULL` and no cleanup
/// follows. `NtQueryOpenSubKeysEx` (WRK `CmpDumpOneKeyBody`) lists every key body of the
/// hive with its opener's pid, these included.
fn td_preexisting_handles(ctx: &mut Ctx) {
    boot_hives();
    let Ok(early) =
        process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\early.exe", false)
    else {
        ctx.check(false, "create the early process");
        return;
    };
    let loaded = hive::load_hive(
        SYSTEM_PID,
        USER_HIVE,
        r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT",
    );
    let before = hive::open_key(early, &format!(r"{USER_HIVE}\Before"), KEY_READ, true);
    let soft = open(early, SOFTWARE);
    ctx.check(
        loaded == STATUS_SUCCESS && before.is_ok() && soft.is_ok(),
        format!(
            "before the driver: a hive loaded, two keys opened: {loaded:#x} {before:?} {soft:?}"
        ),
    );
    let listed = hive::open_subkeys(USER_HIVE);
    ctx.check(
        listed
            .as_ref()
            .is_ok_and(|l| l.len() == 1 && l[0].0 == early && l[0].1.ends_with(r"\Before")),
        format!("NtQueryOpenSubKeysEx lists the early key with its opener: {listed:?}"),
    );
    let Some(s) = start_loaded(ctx) else { return };
    let contexts = kernel::with(|k| {
        k.hives
            .objects
            .values()
            .filter(|o| !o.contexts.is_empty())
            .count()
    });
    ctx.check(
        contexts == 0,
        format!("no object opened before registration carries a context ({contexts})"),
    );
    let after = open(early, &format!(r"{USER_HIVE}\Before"));
    let st = stats(&s);
    ctx.check(
        after.is_ok() && st.contexts_set == 1 && st.post_success == 1,
        format!("an open after registration gets its context: {after:?} {st:?}"),
    );
    let listed = hive::open_subkeys(USER_HIVE).unwrap_or_default();
    ctx.check(
        listed.len() == 2 && listed.iter().all(|(p, _)| *p == early),
        format!("the kernel lists both objects, old and new: {listed:?}"),
    );
    if let Ok(h) = before {
        let _ = hive::close_key(early, h);
    }
    let st = stats(&s);
    ctx.check(
        st.pre_close == 1 && st.pre_close_no_context == 1 && st.contexts_freed == 0,
        format!("the early key's close comes with no context and no cleanup: {st:?}"),
    );
    if let Ok(h) = after {
        let _ = hive::close_key(early, h);
    }
    let st = stats(&s);
    ctx.check(
        st.pre_close == 2 && st.pre_close_no_context == 1 && st.contexts_freed == 1,
        format!("the later key's close carries its context, then its cleanup: {st:?}"),
    );
    if let Ok(h) = soft {
        let _ = hive::close_key(early, h);
    }
    let unloaded = hive::unload_hive(SYSTEM_PID, USER_HIVE);
    ctx.check(
        unloaded == STATUS_SUCCESS,
        format!("the hive unloads once both are closed: {unloaded:#x}"),
    );
    process::exit_process(early);
    finish(ctx, s);
}

/// Loads the test driver on a machine whose hives are already mounted.
fn start_loaded(ctx: &mut Ctx) -> Option<Session> {
    let driver = ctx.load();
    let s = driver.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    match ctx.open(r"\\.\KemuTest", Caller::Admin, GENERIC_READ | GENERIC_WRITE) {
        Ok(control) => Some(Session { driver, control }),
        Err(s) => {
            ctx.check(
                false,
                format!("open the test driver: {}", status::describe(s)),
            );
            None
        }
    }
}

/// One open by a new process with the test driver reading the key name around a raise as
/// `mode` says ([`TOUCH_AFTER`], [`TOUCH_RAISED`]).
fn open_touching_name(ctx: &mut Ctx, s: &Session, mode: u64) -> Option<(u32, u64)> {
    // The process first: its creation notification's image name is touched too.
    let pid = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false);
    set_name_touch(ctx, s, mode);
    let k = pid
        .ok()
        .and_then(|pid| Some((pid, open(pid, SOFTWARE).ok()?)));
    ctx.check(k.is_some(), "a process opens SOFTWARE");
    k
}

fn set_name_touch(ctx: &mut Ctx, s: &Session, mode: u64) {
    let r = io::device_io_control(s.control, IOCTL_NAME_TOUCH, &mode.to_le_bytes(), 32, 0xA5);
    ctx.check(r.status == STATUS_SUCCESS, "IOCTL_NAME_TOUCH");
}

/// Audit 24a F5, a *model choice* (the stricter reading): a process-creation notification's
/// `ImageFileName` is pageable ([`crate::nt::layout::OwnedUnicode::pageable`]), trimmed at a
/// raise and paged back in below DISPATCH_LEVEL.
fn td_paged_image_name(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    set_name_touch(ctx, &s, TOUCH_AFTER);
    let (trims, page_ins) = crate::nt::mm::paged::counts();
    let pid = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false);
    ctx.check(pid.is_ok(), "a process starts");
    let st = stats(&s);
    let (trims2, page_ins2) = crate::nt::mm::paged::counts();
    ctx.check(
        st.name_touched == 1,
        format!("the driver read the image name again at PASSIVE_LEVEL: {st:?}"),
    );
    ctx.check(
        trims2 > trims && page_ins2 > page_ins,
        format!(
            "the raise trimmed the image name and the read paged it in: trims {trims} -> {trims2}, page-ins {page_ins} -> {page_ins2}"
        ),
    );
    set_name_touch(ctx, &s, 0);
    if let Ok(pid) = pid {
        process::exit_process(pid);
    }
    finish(ctx, s);
}

/// As [`td_paged_image_name`], the image name read while raised: bug check 0xD1.
fn td_paged_image_name_at_dispatch(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    set_name_touch(ctx, &s, TOUCH_RAISED);
    let pid = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false);
    ctx.check(
        false,
        format!("a pageable image name read at DISPATCH_LEVEL went unnoticed: {pid:?}"),
    );
}

/// ReactOS `CmpConstructName` (paged pool) and Learn "Force IRQL Checking": a raise trims the
/// name, a read below DISPATCH_LEVEL pages it back in ([`crate::nt::mm::paged`]).
fn td_paged_key_name(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let (trims, page_ins) = crate::nt::mm::paged::counts();
    let k = open_touching_name(ctx, &s, TOUCH_AFTER);
    let st = stats(&s);
    let (trims2, page_ins2) = crate::nt::mm::paged::counts();
    ctx.check(
        st.name_touched == 1,
        format!("the driver read the name again at PASSIVE_LEVEL: {st:?}"),
    );
    ctx.check(
        trims2 > trims && page_ins2 > page_ins,
        format!(
            "the raise trimmed the name and the read paged it in: trims {trims} -> {trims2}, page-ins {page_ins} -> {page_ins2}"
        ),
    );
    if let Some((pid, k)) = k {
        let _ = hive::close_key(pid, k);
    }
    finish(ctx, s);
}

fn td_paged_key_name_at_dispatch(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let k = open_touching_name(ctx, &s, TOUCH_RAISED);
    ctx.check(
        false,
        format!("a paged key name read at DISPATCH_LEVEL went unnoticed: {k:?}"),
    );
}

/// Learn REG_NOTIFY_CLASS: RegNtPreKeyHandleClose can be monitored, not blocked or modified.
fn td_close_unblockable(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let higher = registry::register_emulated(registry::filter_fail_close, 0, "400000");
    ctx.check(higher.is_ok(), "a filter registered above the test driver");
    let Ok(pid) = process::create_process(SYSTEM_PID, r"\Device\HarddiskVolume2\app.exe", false)
    else {
        ctx.check(false, "create a process");
        return;
    };
    let before = stats(&s);
    let k = open(pid, SOFTWARE);
    ctx.check(k.is_ok(), format!("the open succeeds: {k:?}"));
    if let Ok(k) = k {
        let c = hive::close_key(pid, k);
        ctx.check(
            c == 0,
            format!("the close succeeds although a filter failed it: {c:#x}"),
        );
    }
    let after = stats(&s);
    ctx.check(
        after.pre_close == before.pre_close + 1 && after.post_close == before.post_close + 1,
        format!(
            "the filter's error changed nothing: the test driver got the pre- and post-close ({before:?} -> {after:?})"
        ),
    );
    process::exit_process(pid);
    finish(ctx, s);
}
