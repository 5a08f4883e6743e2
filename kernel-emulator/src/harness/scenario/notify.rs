//! Test-driver scenarios for how Windows delivers registry notifications around a veto, a
//! key object's destruction and the names it reports (issue 11, items 1-4): each shows the
//! model doing one cited behaviour, through the test driver's counters and the names it
//! fetched with CmCallbackGetKeyObjectIDEx.

use super::registry::{Session, finish, start};
use super::{Ctx, Scenario};
use crate::nt::cm::hive::{self, HANDLE_FAIL_MARKER};
use crate::nt::cm::registry::{self, DENY_MARKER, FAIL_POST_MARKER};
use crate::nt::io;
use crate::nt::ps::process;
use crate::nt::status::{
    self, STATUS_ACCESS_DENIED, STATUS_CANNOT_DELETE, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING, STATUS_PREDEFINED_HANDLE, STATUS_SUCCESS,
};

const IOCTL_STATS: u32 = (0x22 << 16) | (0x810 << 2);
const IOCTL_PIN: u32 = (0x22 << 16) | (0x811 << 2);
const IOCTL_UNPIN: u32 = (0x22 << 16) | (0x812 << 2);
const IOCTL_NAME: u32 = (0x22 << 16) | (0x81D << 2);
const IOCTL_CONTEXT_LATE: u32 = (0x22 << 16) | (0x81F << 2);
const SOFTWARE: &str = r"\REGISTRY\MACHINE\SOFTWARE";
const SYSTEM: &str = r"\REGISTRY\MACHINE\SYSTEM";
const SID: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
const KEY_READ: u32 = 0x2_0019;

// Counter slots of the test driver (test-driver/src/registry.rs).
const POST_SUCCESS: usize = 0;
const CONTEXTS_SET: usize = 1;
const CONTEXTS_FREED: usize = 2;
const CALL_CONTEXT_MISMATCH: usize = 3;
const PRE_CLOSE: usize = 4;
const POST_CLOSE: usize = 5;
const POST_FAILED: usize = 7;
const PRE_OPEN: usize = 10;
const POST_REPARSE: usize = 15;
const POST_PREDEFINED: usize = 16;
const PRE_OPEN_RELATIVE: usize = 17;
const ROOT_CONTEXT_SEEN: usize = 18;
const LAST_POST_STATUS: usize = 19;
const LAST_CLOSE_PID: usize = 20;
const LAST_CLEANUP_PID: usize = 21;
const ABSOLUTE_ROOT_REGISTRY: usize = 24;
const ABSOLUTE_ROOT_OTHER: usize = 25;
const POST_CLOSE_NAMED: usize = 26;

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-post-after-veto",
            "a filter below the driver fails the pre-open: the driver still gets its post, with that status and its CallContext",
            td_post_after_veto,
        ),
        Scenario::test_driver(
            "td-close-at-destroy",
            "close notifications come once per key object, at its last reference: not at the last handle close while a driver references it",
            td_close_at_destroy,
        ),
        Scenario::test_driver(
            "td-close-on-worker",
            "a deferred deletion: close and cleanup notifications on a system worker thread in the System process (pid 4)",
            td_close_on_worker,
        ),
        Scenario::test_driver(
            "td-names-as-stored",
            "relative opens (RootObject + relative CompleteName) and names as stored, whatever the caller's case",
            td_names_as_stored,
        ),
        Scenario::test_driver(
            "td-reparse-links",
            "CurrentControlSet and Software\\Classes links: a STATUS_REPARSE pre/post pair, then the target's; STATUS_PREDEFINED_HANDLE posts",
            td_reparse_links,
        ),
        Scenario::test_driver(
            "td-link-holds-target",
            "a followed Software\\Classes link's cached block holds <SID>_Classes: with nothing open in it its unload fails (CANNOT_DELETE) and NtQueryOpenSubKeysEx lists nothing, until the user hive unloads, is queried or an unload of it fails; a forced unload goes on, a deferred one completes then (WRK cmparse.c CmpGetSymbolicLink, cmsubs.c CmpCleanUpKCBCacheTable)",
            td_link_holds_target,
        ),
        super::test_driver::caught(
            "td-context-after-close",
            "CmSetCallbackObjectContext in a post-close (after the pre-notification of handle closure: the context would never be cleaned up) is a verifier violation",
            crate::verifier::bugcheck::EXIT_BUGCHECK,
            "after the pre-notification of its handle closure",
            td_context_after_close,
        ),
        Scenario::test_driver(
            "td-open-subkeys-skip",
            "a filter below the driver opens a key inside its pre-open callback and keeps it: the driver never sees that open; NtQueryOpenSubKeysEx whose try-lock of the key's hash bucket fails leaves it out and still succeeds, the next read lists it, the unload fails on it (WRK cmsubs.c CmpSearchForOpenSubKeys: \"else skip this entry\"; Learn \"Supporting Layered Registry Filtering Drivers\")",
            td_open_subkeys_skip,
        ),
        Scenario::test_driver(
            "td-open-then-fail",
            "an open that succeeds in the post and then fails (a higher filter, or no handle): the object is destroyed with close and cleanup",
            td_open_then_fail,
        ),
    ]
}

fn stats(s: &Session) -> [u64; 28] {
    let mut v = [0u64; 28];
    for block in 0..7u64 {
        let r = io::device_io_control(s.control, IOCTL_STATS, &block.to_le_bytes(), 32, 0xA5);
        for (i, c) in r.output.chunks_exact(8).enumerate() {
            if let Some(slot) = v.get_mut(block as usize * 4 + i) {
                *slot = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            }
        }
    }
    v
}

/// The test driver's last object name (`complete == false`) or last CompleteName.
fn name(s: &Session, complete: bool) -> String {
    let mut units = Vec::new();
    'blocks: for block in 0..16u64 {
        let arg = block | if complete { 0x100 } else { 0 };
        let r = io::device_io_control(s.control, IOCTL_NAME, &arg.to_le_bytes(), 32, 0xA5);
        for c in r.output.chunks_exact(8) {
            let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            for j in 0..4 {
                let u = ((v >> (16 * j)) & 0xFFFF) as u16;
                if u == 0 {
                    break 'blocks;
                }
                units.push(u);
            }
        }
    }
    String::from_utf16_lossy(&units)
}

fn new_process(ctx: &mut Ctx, image: &str) -> Option<u32> {
    let p = process::create_process(hive::SYSTEM_PID, image, false);
    ctx.check(p.is_ok(), format!("create {image}: {p:?}"));
    p.ok()
}

/// Item 1. regfltr `multialt.c` MultipleAltitudeBlockDuringPreSample; WRK `cmhook.c`
/// CmpCallCallBacks.
fn td_post_after_veto(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let below = registry::register_emulated(registry::filter_deny, 0, "300000");
    ctx.check(
        below.is_ok(),
        "a filter that denies registered below the driver (300000)",
    );
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\veto.exe") else {
        return;
    };
    let before = stats(&s);
    let r = hive::open_key(p, &format!(r"{SOFTWARE}\{DENY_MARKER}"), KEY_READ, false);
    let after = stats(&s);
    println!("  open: {r:?}; driver before {before:?}\n                after  {after:?}");
    ctx.check(
        r == Err(STATUS_ACCESS_DENIED),
        format!("the caller gets the veto: {r:?}"),
    );
    ctx.check(
        after[PRE_OPEN] == before[PRE_OPEN] + 1 && after[POST_FAILED] == before[POST_FAILED] + 1,
        "the driver, above the veto, saw the pre and then a post",
    );
    #[allow(clippy::cast_sign_loss)]
    let denied = u64::from(STATUS_ACCESS_DENIED as u32);
    ctx.check(
        after[LAST_POST_STATUS] == denied && after[CALL_CONTEXT_MISMATCH] == 0,
        format!(
            "that post carries the veto's status ({:#x}) and the driver's CallContext",
            after[LAST_POST_STATUS]
        ),
    );
    ctx.check(
        after[POST_SUCCESS] == before[POST_SUCCESS] && after[CONTEXTS_SET] == before[CONTEXTS_SET],
        "no object, no context",
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// Item 2, closing-thread case. "Invalid Key Object Pointers in Registry Notifications";
/// ReactOS `cmsysini.c` CmpDeleteKeyObject.
/// Learn, CmSetCallbackObjectContext (Remarks): a context may be set "during a
/// post-notification for a create operation, an open operation, or any subsequent
/// notification up to the pre-notification of handle closure". The test driver sets one in
/// the post-close of the next key it sees closed.
fn td_context_after_close(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\late.exe") else {
        return;
    };
    let armed = io::device_io_control(s.control, IOCTL_CONTEXT_LATE, &[0; 8], 32, 0xA5);
    ctx.check(armed.status == STATUS_SUCCESS, "late context armed");
    if let Ok(h) = hive::open_key(p, SOFTWARE, KEY_READ, false) {
        let _ = hive::close_key(p, h);
    }
    ctx.check(
        false,
        "a context set in the post-close (never to be cleaned up) went unnoticed",
    );
}

fn td_close_at_destroy(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\closer.exe") else {
        return;
    };
    ctx.say("no reference: the last handle close destroys the object, in the closing process");
    let h = hive::open_key(p, SOFTWARE, KEY_READ, false);
    let st0 = stats(&s);
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    let st1 = stats(&s);
    ctx.check(
        st1[PRE_CLOSE] == st0[PRE_CLOSE] + 1
            && st1[POST_CLOSE] == st0[POST_CLOSE] + 1
            && st1[CONTEXTS_FREED] == st0[CONTEXTS_FREED] + 1,
        "pre-close, cleanup, post-close at the close",
    );
    // Learn, "Invalid Key Object Pointers in Registry Notifications": a close notification's
    // callback may pass the object to a configuration manager routine (the model called a
    // post-close's CmCallbackGetKeyObjectIDEx a violation until 2026-12-05).
    ctx.check(
        st1[POST_CLOSE_NAMED] == st0[POST_CLOSE_NAMED] + 1,
        "the post-close may name its key object (CmCallbackGetKeyObjectIDEx)",
    );
    ctx.check(
        st1[LAST_CLOSE_PID] == u64::from(p) && st1[LAST_CLEANUP_PID] == u64::from(p),
        format!(
            "delivered in the closing process {p} (pre-close in {}, cleanup in {})",
            st1[LAST_CLOSE_PID], st1[LAST_CLEANUP_PID]
        ),
    );
    ctx.say("a driver references the object: the last handle close is not its destruction");
    let pin = io::device_io_control(s.control, IOCTL_PIN, &[0; 8], 32, 0xA5);
    ctx.check(pin.status == STATUS_SUCCESS, "pin armed");
    let h = hive::open_key(p, SOFTWARE, KEY_READ, false);
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    let st2 = stats(&s);
    ctx.check(
        st2[PRE_CLOSE] == st1[PRE_CLOSE]
            && st2[POST_CLOSE] == st1[POST_CLOSE]
            && st2[CONTEXTS_FREED] == st1[CONTEXTS_FREED],
        format!(
            "handle closed, object still referenced: no close notification, context kept ({} pre-close)",
            st2[PRE_CLOSE] - st1[PRE_CLOSE]
        ),
    );
    let unpin = io::device_io_control(s.control, IOCTL_UNPIN, &[0; 8], 32, 0xA5);
    let st3 = stats(&s);
    ctx.check(
        unpin.output.first() == Some(&1)
            && st3[PRE_CLOSE] == st2[PRE_CLOSE] + 1
            && st3[POST_CLOSE] == st2[POST_CLOSE] + 1
            && st3[CONTEXTS_FREED] == st2[CONTEXTS_FREED] + 1,
        "the driver's ObDereferenceObject ends the object: pre-close, cleanup, post-close, once",
    );
    println!(
        "  destroyed on the dereferencing thread, process {}",
        st3[LAST_CLOSE_PID]
    );
    process::exit_process(p);
    let st4 = stats(&s);
    ctx.check(
        st4[PRE_CLOSE] == st4[POST_CLOSE] && st4[CONTEXTS_SET] == st4[CONTEXTS_FREED],
        "closes paired, every context freed",
    );
    // The order: the cleanup comes after the pre-close and before the post-close
    // (REG_CALLBACK_CONTEXT_CLEANUP_INFORMATION Remarks: the registry "has just finished
    // processing a RegNtPreKeyHandleClose notification"; REG_NOTIFY_CLASS, the same; regfltr
    // `context.c`: "after the RegNtPreKeyHandleClose notification and before the
    // RegNtPostKeyHandleClose notification").
    let Some(q) = new_process(ctx, r"\Device\HarddiskVolume2\orderly.exe") else {
        return;
    };
    super::lifecycle::log_start(&s);
    let h = hive::open_key(q, SOFTWARE, KEY_READ, false);
    ctx.check(h.is_ok(), format!("a process opens SOFTWARE: {h:?}"));
    if let Ok(h) = h {
        let _ = hive::close_key(q, h);
    }
    process::exit_process(q);
    let order: Vec<u64> = super::lifecycle::log(&s)
        .iter()
        .map(|e| e.class)
        .filter(|c| matches!(c, 14 | 40 | 25))
        .collect();
    ctx.check(
        order == [14, 40, 25],
        format!("pre-close (14), cleanup (40), post-close (25), in that order: {order:?}"),
    );
    finish(ctx, s);
}

/// Item 2, worker-thread case. ObDereferenceObjectDeferDelete; ReactOS `ob/obref.c`
/// ObpDeferObjectDeletion.
fn td_close_on_worker(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\worker.exe") else {
        return;
    };
    hive::set_deferred_deletion(true);
    let h = hive::open_key(p, &format!(r"{SOFTWARE}\Deferred"), KEY_READ, true);
    let st0 = stats(&s);
    if let Ok(h) = h {
        let _ = hive::close_key(p, h);
    }
    let st1 = stats(&s);
    let alive = hive::key_objects();
    ctx.check(
        h.is_ok() && st1[PRE_CLOSE] == st0[PRE_CLOSE] && alive > 0,
        format!("closed in process {p}: deletion queued, nothing delivered yet ({alive} key objects alive)"),
    );
    // Until CmpDeleteKeyObject runs the key body stays listed on its KCB (WRK cmdelete.c:
    // DelistKeyBodyFromKCB is inside it), and it pins the hive: NtQueryOpenSubKeysEx names it.
    let listed = hive::open_subkeys(SOFTWARE).unwrap_or_default();
    let deferred = format!(r"{SOFTWARE}\Deferred");
    ctx.check(
        listed
            .iter()
            .any(|(pid, n)| *pid == p && n.eq_ignore_ascii_case(&deferred)),
        format!("the queued object is still listed by NtQueryOpenSubKeysEx: {listed:?}"),
    );
    let ran = hive::run_deferred_deletions();
    let st2 = stats(&s);
    ctx.check(
        ran == 1
            && st2[PRE_CLOSE] == st1[PRE_CLOSE] + 1
            && st2[POST_CLOSE] == st1[POST_CLOSE] + 1
            && st2[CONTEXTS_FREED] == st1[CONTEXTS_FREED] + 1,
        format!("the worker deleted {ran} object: pre-close, cleanup, post-close"),
    );
    ctx.check(
        st2[LAST_CLOSE_PID] == u64::from(hive::SYSTEM_PID)
            && st2[LAST_CLEANUP_PID] == u64::from(hive::SYSTEM_PID),
        format!(
            "in the System process, not the closing one: PsGetCurrentProcessId {} in pre-close, {} in cleanup",
            st2[LAST_CLOSE_PID], st2[LAST_CLEANUP_PID]
        ),
    );
    hive::set_deferred_deletion(false);
    process::exit_process(p);
    finish(ctx, s);
}

/// Item 3, names. REG_CREATE_KEY_INFORMATION_V1 (RootObject, CompleteName);
/// CmCallbackGetKeyObjectIDEx.
fn td_names_as_stored(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\names.exe") else {
        return;
    };
    let stored = format!(r"{SOFTWARE}\KemuCase\MixedCase");
    for key in [format!(r"{SOFTWARE}\KemuCase"), stored.clone()] {
        if let Ok(h) = hive::open_key(p, &key, KEY_READ, true) {
            let _ = hive::close_key(p, h);
        }
    }
    let shouted = r"\registry\machine\software\KEMUCASE\mixedcase";
    let before = stats(&s);
    let h = hive::open_key(p, shouted, KEY_READ, false);
    let after = stats(&s);
    let got = name(&s, false);
    println!("  opened {shouted}: the driver was told {got}");
    ctx.check(
        h.is_ok() && got == stored,
        "CmCallbackGetKeyObjectIDEx gives the name as stored, not as the caller typed it",
    );
    // Learn REG_CREATE_KEY_INFORMATION_V1: "For an absolute path, the RootObject member
    // specifies the \REGISTRY key" (the model passed NULL until 2026-12-05).
    ctx.check(
        after[ABSOLUTE_ROOT_REGISTRY] == before[ABSOLUTE_ROOT_REGISTRY] + 1
            && after[ABSOLUTE_ROOT_OTHER] == 0,
        format!(
            "an absolute open's RootObject is the \\REGISTRY key ({} of {} absolute pre-opens had another)",
            after[ABSOLUTE_ROOT_OTHER],
            after[ABSOLUTE_ROOT_OTHER] + after[ABSOLUTE_ROOT_REGISTRY]
        ),
    );
    ctx.say("a relative open");
    let root = hive::open_key(p, SOFTWARE, KEY_READ, false);
    let st0 = stats(&s);
    let rel =
        root.and_then(|r| hive::open_key_at(p, Some(r), r"kemucase\MIXEDCASE", KEY_READ, false));
    let st1 = stats(&s);
    let (complete, got) = (name(&s, true), name(&s, false));
    println!("  pre-open CompleteName {complete:?}; object name {got}");
    ctx.check(
        rel.is_ok() && st1[PRE_OPEN_RELATIVE] == st0[PRE_OPEN_RELATIVE] + 1,
        "the pre-open carries RootObject",
    );
    ctx.check(
        st1[ROOT_CONTEXT_SEEN] == st0[ROOT_CONTEXT_SEEN] + 1,
        "and RootObjectContext: the context the driver attached to the root key's object",
    );
    ctx.check(
        complete == r"kemucase\MIXEDCASE" && got == stored,
        "CompleteName is the relative name as given; the object's name is full and as stored",
    );
    let bad = hive::open_key_at(p, Some(0xBAD0), "x", KEY_READ, false);
    ctx.check(
        bad == Err(crate::nt::status::STATUS_INVALID_HANDLE),
        format!("a root handle the process does not hold: {bad:?}"),
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// Item 3, links and success-class statuses. ReactOS `cmparse.c` CmpParseKey /
/// CmpGetSymbolicLink, `cmsysini.c` CmpCreateControlSet; "Invalid Key Object Pointers".
#[allow(clippy::too_many_lines)] // one linear script of checks
#[allow(clippy::many_single_char_names)] // s, p, h, t, q: session, process, handles
fn td_reparse_links(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\links.exe") else {
        return;
    };
    for key in [
        format!(r"{SYSTEM}\ControlSet001"),
        format!(r"{SYSTEM}\ControlSet001\Services"),
    ] {
        if let Ok(h) = hive::open_key(p, &key, KEY_READ, true) {
            let _ = hive::close_key(p, h);
        }
    }
    hive::create_link(
        &format!(r"{SYSTEM}\CurrentControlSet"),
        &format!(r"{SYSTEM}\ControlSet001"),
    );
    let st0 = stats(&s);
    let h = hive::open_key(
        p,
        &format!(r"{SYSTEM}\CurrentControlSet\Services"),
        KEY_READ,
        false,
    );
    let st1 = stats(&s);
    let (complete, got) = (name(&s, true), name(&s, false));
    println!("  CurrentControlSet\\Services: second CompleteName {complete}; object {got}");
    ctx.check(
        h.is_ok()
            && st1[PRE_OPEN] == st0[PRE_OPEN] + 2
            && st1[POST_REPARSE] == st0[POST_REPARSE] + 1
            && st1[POST_SUCCESS] == st0[POST_SUCCESS] + 1,
        "two pre/post pairs: STATUS_REPARSE at the link, then STATUS_SUCCESS at the target",
    );
    ctx.check(
        complete == format!(r"{SYSTEM}\ControlSet001\Services")
            && got == format!(r"{SYSTEM}\ControlSet001\Services"),
        "the second pre names the target; the key object is ControlSet001's",
    );
    ctx.check(
        st1[CONTEXTS_SET] == st0[CONTEXTS_SET] + 1,
        "one key object, one context (the reparse post has no object)",
    );
    ctx.say("HKCU\\Software\\Classes is the <SID>_Classes hive");
    let (user, classes) = load_user_and_classes(ctx, p);
    let st2 = stats(&s);
    let t = hive::open_key(
        p,
        &format!(r"{user}\Software\Classes\.txt"),
        KEY_READ,
        false,
    );
    let st3 = stats(&s);
    let got = name(&s, false);
    println!("  Software\\Classes\\.txt: object {got}");
    ctx.check(
        t.is_ok()
            && st3[POST_REPARSE] == st2[POST_REPARSE] + 1
            && got == format!(r"{classes}\.txt"),
        "a STATUS_REPARSE pair, then the key in the _Classes hive",
    );
    ctx.say("a key referenced by a predefined handle");
    let perf = format!(r"{SOFTWARE}\Perflib-009");
    hive::set_predefined(&perf);
    let q = hive::open_key(p, &perf, KEY_READ, false);
    let st4 = stats(&s);
    #[allow(clippy::cast_sign_loss)]
    let predefined = u64::from(STATUS_PREDEFINED_HANDLE as u32);
    ctx.check(
        q == Err(STATUS_PREDEFINED_HANDLE)
            && st4[POST_PREDEFINED] == st3[POST_PREDEFINED] + 1
            && st4[LAST_POST_STATUS] == predefined
            && st4[CONTEXTS_SET] == st3[CONTEXTS_SET],
        format!("a STATUS_PREDEFINED_HANDLE post, no object: {q:?}"),
    );
    for h in [h, t].into_iter().flatten() {
        let _ = hive::close_key(p, h);
    }
    process::exit_process(p);
    finish(ctx, s);
}

/// Loads the user hive and its `_Classes` hive (checked), makes `Software` in the one and
/// `.txt` in the other as process `p`, and links `Software\Classes` to the classes hive (as
/// the profile service's load does). Returns the two mount points.
fn load_user_and_classes(ctx: &mut Ctx, p: u32) -> (String, String) {
    let user = format!(r"\REGISTRY\USER\{SID}");
    let classes = format!(r"\REGISTRY\USER\{SID}_Classes");
    let l1 = hive::load_hive(hive::SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    let l2 = hive::load_hive(
        hive::SYSTEM_PID,
        &classes,
        r"\??\C:\Users\kemu\AppData\Local\Microsoft\Windows\UsrClass.dat",
    );
    ctx.check(
        l1 == STATUS_SUCCESS && l2 == STATUS_SUCCESS,
        format!("load: {} / {}", status::describe(l1), status::describe(l2)),
    );
    for key in [format!(r"{user}\Software"), format!(r"{classes}\.txt")] {
        if let Ok(h) = hive::open_key(p, &key, KEY_READ, true) {
            let _ = hive::close_key(p, h);
        }
    }
    hive::create_link(&format!(r"{user}\Software\Classes"), &classes);
    (user, classes)
}

/// Audit 23a, F1: a followed link's cached key control block references its target's (WRK
/// `cmparse.c` CmpGetSymbolicLink) until the link's block is cleaned up (`cmsubs.c`
/// CmpCleanUpKcbValueCache), which for a link with no handle is when a search for open keys
/// of its own hive purges it (`cmsubs.c` CmpCleanUpKCBCacheTable: same hive only): the
/// hive's unload, an unload attempt that fails, or NtQueryOpenSubKeysEx of it (review 23c,
/// M1: 3 of the 28 checks fail on the model before that); the target's unload
/// needs its root's `RefCount == 1` (`cmapi.c` CmUnloadKey). WRK is Windows Server 2003: not
/// verified on Windows 10/11.
#[allow(clippy::too_many_lines)] // one linear script of checks
fn td_link_holds_target(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\classes.exe") else {
        return;
    };
    let load = |ctx: &mut Ctx| load_user_and_classes(ctx, p);
    let (user, classes) = (
        format!(r"\REGISTRY\USER\{SID}"),
        format!(r"\REGISTRY\USER\{SID}_Classes"),
    );
    // Opens HKCU\Software\Classes\.txt through the link and closes it.
    let follow = |ctx: &mut Ctx| {
        let st0 = stats(&s);
        let t = hive::open_key(
            p,
            &format!(r"{user}\Software\Classes\.txt"),
            KEY_READ,
            false,
        );
        let st1 = stats(&s);
        let got = name(&s, false);
        ctx.check(
            t.is_ok()
                && st1[POST_REPARSE] == st0[POST_REPARSE] + 1
                && got.eq_ignore_ascii_case(&format!(r"{classes}\.txt")),
            format!("Software\\Classes\\.txt through the link: {t:?}, object {got}"),
        );
        if let Ok(h) = t {
            let _ = hive::close_key(p, h);
        }
    };
    ctx.say("follow the link, close everything: the _Classes unload fails with nothing open");
    load(ctx);
    follow(ctx);
    let listed = hive::open_subkeys(&classes);
    ctx.check(
        listed.as_ref().is_ok_and(Vec::is_empty),
        format!("NtQueryOpenSubKeysEx on {classes}: nothing open ({listed:?})"),
    );
    let refused = hive::unload_hive(hive::SYSTEM_PID, &classes);
    let held = hive::holders(&classes);
    println!(
        "  unload {classes}: {}; {held:?}",
        status::describe(refused)
    );
    ctx.check(
        refused == STATUS_CANNOT_DELETE
            && held.iter().any(|h| h.contains("cached key control block")),
        format!(
            "the _Classes unload fails, held by the user hive's link: {}",
            status::describe(refused)
        ),
    );
    let listed = hive::open_subkeys(&classes);
    ctx.check(
        listed.as_ref().is_ok_and(Vec::is_empty),
        format!("after the failure NtQueryOpenSubKeysEx still lists nothing ({listed:?})"),
    );
    let r1 = hive::unload_hive(hive::SYSTEM_PID, &user);
    let r2 = hive::unload_hive(hive::SYSTEM_PID, &classes);
    ctx.check(
        r1 == STATUS_SUCCESS && r2 == STATUS_SUCCESS,
        format!(
            "the user hive first (its purge drops the link's reference), then _Classes: {} / {}",
            status::describe(r1),
            status::describe(r2)
        ),
    );
    ctx.say("a forced unload of _Classes goes on (WRK cmapi.c CmUnloadKey, REG_FORCE_UNLOAD)");
    load(ctx);
    follow(ctx);
    let forced = hive::unload_key2(hive::SYSTEM_PID, &classes, hive::REG_FORCE_UNLOAD);
    let user_gone = hive::unload_hive(hive::SYSTEM_PID, &user);
    ctx.check(
        forced == STATUS_SUCCESS && user_gone == STATUS_SUCCESS,
        format!(
            "forced: {} / user: {}",
            status::describe(forced),
            status::describe(user_gone)
        ),
    );
    ctx.say("NtUnloadKeyEx of _Classes is pending until the user hive unloads");
    load(ctx);
    follow(ctx);
    let (deferred, event) = hive::unload_key_ex(hive::SYSTEM_PID, &classes);
    let early = event.signalled().is_none();
    let user_gone = hive::unload_hive(hive::SYSTEM_PID, &user);
    let done = event.wait(std::time::Duration::from_secs(5));
    ctx.check(
        deferred == STATUS_PENDING && early && user_gone == STATUS_SUCCESS && done.is_some(),
        format!(
            "deferred: {} (not signalled before: {early}), user: {}, then signalled: {done:?}",
            status::describe(deferred),
            status::describe(user_gone)
        ),
    );
    let gone = hive::open_subkeys(&classes);
    ctx.check(
        gone == Err(STATUS_OBJECT_NAME_NOT_FOUND),
        format!("_Classes is unloaded: {gone:?}"),
    );
    // Review 23c, M1: the search for open keys of the user hive purges its unreferenced
    // cached blocks, the link's among them (WRK `ntapi.c` NtQueryOpenSubKeysEx and `cmapi.c`
    // CmUnloadKey, a failed attempt included → `cmsubs.c` CmpCleanUpKCBCacheTable).
    ctx.say("NtQueryOpenSubKeysEx on the user hive ends the hold");
    load(ctx);
    follow(ctx);
    let asked = hive::open_subkeys(&user);
    let freed = hive::unload_hive(hive::SYSTEM_PID, &classes);
    ctx.check(
        asked.is_ok() && freed == STATUS_SUCCESS,
        format!(
            "query of {user}: {asked:?}, then the _Classes unload: {}",
            status::describe(freed)
        ),
    );
    let user_gone = hive::unload_hive(hive::SYSTEM_PID, &user);
    ctx.check(
        user_gone == STATUS_SUCCESS,
        format!("user: {}", status::describe(user_gone)),
    );
    ctx.say("a failed unload of the user hive ends the hold too");
    load(ctx);
    follow(ctx);
    let kept = hive::open_key(p, &format!(r"{user}\Software"), KEY_READ, true);
    let refused = hive::unload_hive(hive::SYSTEM_PID, &user);
    let freed = hive::unload_hive(hive::SYSTEM_PID, &classes);
    ctx.check(
        kept.is_ok() && refused == STATUS_CANNOT_DELETE && freed == STATUS_SUCCESS,
        format!(
            "a key of the user hive open: its unload {}, then the _Classes unload {}",
            status::describe(refused),
            status::describe(freed)
        ),
    );
    ctx.say("a query of the user hive completes a pending NtUnloadKeyEx of _Classes");
    let reloaded = hive::load_hive(
        hive::SYSTEM_PID,
        &classes,
        r"\??\C:\Users\kemu\AppData\Local\Microsoft\Windows\UsrClass.dat",
    );
    if let Ok(h) = hive::open_key(p, &format!(r"{classes}\.txt"), KEY_READ, true) {
        let _ = hive::close_key(p, h);
    }
    ctx.check(
        reloaded == STATUS_SUCCESS,
        format!("_Classes again: {}", status::describe(reloaded)),
    );
    follow(ctx);
    let (deferred, event) = hive::unload_key_ex(hive::SYSTEM_PID, &classes);
    let asked = hive::open_subkeys(&user);
    let done = event.wait(std::time::Duration::from_secs(5));
    ctx.check(
        deferred == STATUS_PENDING && asked.is_ok() && done.is_some(),
        format!(
            "deferred: {}, query of the user hive: {asked:?}, then signalled: {done:?}",
            status::describe(deferred)
        ),
    );
    if let Ok(h) = kept {
        let _ = hive::close_key(p, h);
    }
    let user_gone = hive::unload_hive(hive::SYSTEM_PID, &user);
    ctx.check(
        user_gone == STATUS_SUCCESS,
        format!("user, its key closed: {}", status::describe(user_gone)),
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// Audit 24b, G1: a key a lower-altitude filter opened inside its own callback reaches no
/// callback above it (Learn "Supporting Layered Registry Filtering Drivers"; regfltr
/// `multialt.c`), so only the kernel's list shows it; and one read of that list can leave it
/// out while the call succeeds: WRK `ntapi.c` NtQueryOpenSubKeysEx holds the registry lock
/// shared, and `cmsubs.c` CmpSearchForOpenSubKeys (SearchAndCount) skips a hash bucket whose
/// try-lock fails ("else skip this entry; continue"). The unload, under the lock held
/// exclusive, still finds the key (`cmapi.c` CmUnloadKey).
fn td_open_subkeys_skip(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let lower = registry::register_emulated(registry::filter_keep_open, 0, "320000");
    ctx.check(
        lower.is_ok(),
        format!("a filter below the test driver, at 320000: {lower:?}"),
    );
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\scan.exe") else {
        return;
    };
    let user = format!(r"\REGISTRY\USER\{SID}");
    let (software, cached) = (
        format!(r"{user}\Software"),
        format!(r"{user}\Software\Cached"),
    );
    let loaded = hive::load_hive(hive::SYSTEM_PID, &user, r"\??\C:\Users\kemu\NTUSER.DAT");
    for key in [&software, &cached] {
        if let Ok(h) = hive::open_key(p, key, KEY_READ, true) {
            let _ = hive::close_key(p, h);
        }
    }
    ctx.check(
        loaded == STATUS_SUCCESS,
        format!("load {user}: {}", status::describe(loaded)),
    );
    ctx.say("the filter opens Software\\Cached inside its pre-open of Software, and keeps it");
    registry::set_keep_open(&cached);
    let st0 = stats(&s);
    let own = hive::open_key(p, &software, KEY_READ, false);
    let st1 = stats(&s);
    let kept = registry::take_kept_open();
    ctx.check(
        own.is_ok() && kept.len() == 1 && st1[PRE_OPEN] == st0[PRE_OPEN] + 1,
        format!(
            "the caller's open {own:?}; the filter keeps {} handle(s); the test driver above \
             got {} pre-open(s) (the caller's only, not the filter's own)",
            kept.len(),
            st1[PRE_OPEN] - st0[PRE_OPEN]
        ),
    );
    if let Ok(h) = own {
        let _ = hive::close_key(p, h);
    }
    let listed_by_p = |l: &Result<Vec<(u32, String)>, i32>| {
        l.as_ref().is_ok_and(|v| {
            v.iter()
                .any(|(pid, n)| *pid == p && n.eq_ignore_ascii_case(&cached))
        })
    };
    let whole = hive::open_subkeys(&user);
    ctx.check(
        listed_by_p(&whole),
        format!("the kernel's list has the filter's key, under the caller's pid {p}: {whole:?}"),
    );
    ctx.say(
        "its hash bucket is busy for one read: left out, STATUS_SUCCESS; the next read lists it",
    );
    hive::busy_bucket(&cached, 1);
    let skipped = hive::open_subkeys(&user);
    ctx.check(
        skipped.as_ref().is_ok_and(Vec::is_empty),
        format!("the read with the bucket busy succeeds and lists nothing: {skipped:?}"),
    );
    let again = hive::open_subkeys(&user);
    ctx.check(
        listed_by_p(&again),
        format!("the next read lists it again: {again:?}"),
    );
    hive::busy_bucket(&cached, 1);
    let refused = hive::unload_hive(hive::SYSTEM_PID, &user);
    ctx.check(
        refused == STATUS_CANNOT_DELETE,
        format!(
            "with the bucket busy, the unload (registry lock exclusive) still finds the key: {}",
            status::describe(refused)
        ),
    );
    hive::busy_bucket(&cached, 0);
    for h in kept {
        let _ = hive::close_key(hive::SYSTEM_PID, h);
    }
    let gone = hive::unload_hive(hive::SYSTEM_PID, &user);
    ctx.check(
        gone == STATUS_SUCCESS,
        format!("the filter's handle closed: {}", status::describe(gone)),
    );
    process::exit_process(p);
    finish(ctx, s);
}

/// Item 4. regfltr `post.c` (ReturnStatus + STATUS_CALLBACK_BYPASS); CmpDeleteKeyObject.
fn td_open_then_fail(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    let above = registry::register_emulated(registry::filter_fail_post, 0, "400000");
    ctx.check(
        above.is_ok(),
        "a filter that fails successful opens in post, above the driver",
    );
    let Some(p) = new_process(ctx, r"\Device\HarddiskVolume2\thenfail.exe") else {
        return;
    };
    for (marker, expect) in [
        (FAIL_POST_MARKER, STATUS_ACCESS_DENIED),
        (HANDLE_FAIL_MARKER, STATUS_INSUFFICIENT_RESOURCES),
    ] {
        let st0 = stats(&s);
        let r = hive::open_key(p, &format!(r"{SOFTWARE}\{marker}"), KEY_READ, true);
        let st1 = stats(&s);
        let handles = crate::nt::kernel::with(|k| k.hives.handles_of(p).len());
        ctx.check(
            r == Err(expect) && handles == 0,
            format!("{marker}: the caller gets {r:?}, no handle"),
        );
        ctx.check(
            st1[POST_SUCCESS] == st0[POST_SUCCESS] + 1
                && st1[CONTEXTS_SET] == st0[CONTEXTS_SET] + 1,
            "the driver saw the post-open succeed and attached its context",
        );
        ctx.check(
            st1[PRE_CLOSE] == st0[PRE_CLOSE] + 1
                && st1[POST_CLOSE] == st0[POST_CLOSE] + 1
                && st1[CONTEXTS_FREED] == st0[CONTEXTS_FREED] + 1
                && st1[LAST_CLOSE_PID] == u64::from(p),
            "then the object was destroyed: pre-close, cleanup, post-close, in the opening process",
        );
    }
    let alive = hive::key_objects();
    ctx.check(alive == 0, format!("no key object left ({alive})"));
    process::exit_process(p);
    finish(ctx, s);
}
