//! hivetrack.sys scenarios of issue 12 ("Truthful reports"): what each answer can vouch for.
//! Keys opened before the driver started (`late-start`), losses counted against their own
//! hive and ageing out with it (`loss-ages-out`), the wait-free answer's completeness
//! (`wait-completeness`), an open whose name the kernel will not give (`nameless-open`).
//! Each checks the driver's own answers, decoded with the protocol crate, beside the model's
//! `NtQueryOpenSubKeysEx` (what the CLI sets them against).

use protocol::{
    completeness::Completeness,
    cursor::Cursor,
    hives::Hives,
    holders::Holders,
    ioctl::{WIN32_DEVICE_PATH, query_ioctl},
    page::Page,
    request::{QueryKind, QueryRequest},
    stats::Stats,
    text::Text,
    wait::{WaitFreeAnswer, WaitOutcome},
    wire,
};

use super::tracking::{
    APP1, APP2, CLASSES, Client, KEY_READ, SOFTWARE, SYSTEM, USER, boot_hives, ensure_parents,
    load_driver, load_profile, spawn, unload_all,
};
use super::{Ctx, Scenario};
use crate::loader::driver::LoadedDriver;
use crate::nt::cm::hive;
use crate::nt::io::{self, FileHandle, IoctlCall};
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, STATUS_SUCCESS};
use crate::verifier::faults::FaultPolicy;

/// The scenarios.
#[must_use]
#[allow(clippy::too_many_lines, reason = "the list of this module's scenarios")]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "own-hivelist-open",
            "DriverEntry's own ZwOpenKey of the hive list (through the CurrentControlSet link) is made before its callback registers, so no failure in recording it can leave a loss for the driver's life (review 18b): no open seen, nothing lost, with and without CmCallbackGetKeyObjectIDEx failing at load; the list is still read",
            own_hivelist_open,
        ),
        Scenario::hivetrack(
            "late-start",
            "a key opened before DriverEntry: the driver has no record (no context), its answers say since when it tracks, the kernel's list still has the key with its opener",
            late_start,
        ),
        Scenario::hivetrack(
            "lower-filter-busy-bucket",
            "a filter below hivetrack (an antivirus at 320000) opens the profile's Software\\Contoso\\Cache inside its pre-open callback and keeps it: hivetrack never sees that open, its answers have no key and nothing lost for a hive loaded after tracking started, its wait says free; the unload fails (STATUS_CANNOT_DELETE); the kernel's list, whose read finds the key's hash bucket busy, leaves it out and succeeds (WRK cmsubs.c CmpSearchForOpenSubKeys), the next read lists it (audit 24b, G1: what the CLI must not call complete)",
            lower_filter_busy_bucket,
        ),
        Scenario::hivetrack(
            "loss-ages-out",
            "a cut name in one hive leaves other hives' reports complete; an open lost in the profile is counted there, with its time, and goes with the hive when it unloads",
            loss_ages_out,
        ),
        Scenario::hivetrack(
            "wait-completeness",
            "the wait-free answer carries since when the driver tracks and the losses of its hive (and only of its hive)",
            wait_completeness,
        ),
        Scenario::hivetrack(
            "wait-after-cleanup",
            "a wait-free request dispatched after IRP_MJ_CLEANUP of its file object (the handle gone, the object still referenced) is cancelled at once, not left pending with nothing to cancel it",
            wait_after_cleanup,
        ),
        Scenario::hivetrack(
            "unregister-fails",
            "CmUnRegisterCallback fails at unload: the driver keeps its tracker and, with a reference on its driver object, its image; registry traffic afterwards runs its callback safely",
            unregister_fails,
        ),
        Scenario::hivetrack(
            "relative-load",
            "RegLoadKey(HKU, \"S-1-5-21-…\", file): KeyName relative to the load's root object; the driver records the mount \\REGISTRY\\USER\\S-1-5-21-…, not the bare SID",
            relative_load,
        ),
        Scenario::hivetrack(
            "relative-load-hive-root",
            "relative-load with the load's Object read as Learn words it, the new hive's root key (hive::LoadObject::HiveRoot): the driver still records \\REGISTRY\\USER\\S-1-5-21-…, not the SID twice, and matches its unload",
            relative_load_hive_root,
        ),
        Scenario::hivetrack(
            "relative-load-null-object",
            "relative-load with no Object in the load's notifications (hive::LoadObject::Null): the driver records no mount it cannot place (the name counted as unavailable), and the profile's keys go to the implicit hive their paths name, with no load time",
            relative_load_null_object,
        ),
        Scenario::hivetrack(
            "long-image-low-memory",
            "a process whose image path is too long for the stack copy starts while pool is short: it is recorded without its image and the loss is counted (images_dropped_no_memory)",
            long_image_low_memory,
        ),
        Scenario::hivetrack(
            "load-during-start",
            "a hive load whose pre-notification went by before the driver registered and whose post reaches it (posts to every registered callback, as the WRK's CmpCallCallBacks does): a key opened in between, then deleted, holds the hive unseen, so the driver does not vouch for the hive's load time (0, as for a hive of the hive list)",
            load_during_start,
        ),
        Scenario::hivetrack(
            "relative-load-during-start",
            "RegLoadKey(HKU, \"USER\") — a hive named like its root directory — with the driver registering between the mount and the post (a post alone, Object = the root directory HKU): the post cannot tell HKU from the hive's root, so the driver records no hive at \\REGISTRY\\USER (one level too high, review 18a), counts the load as unrecorded, and knows the hive from the hive list",
            relative_load_during_start,
        ),
        Scenario::hivetrack(
            "open-during-registration",
            "another process opens a key while the driver's CmRegisterCallbackEx is still running, after the callback is installed and its cookie written (WRK cmhook.c writes the cookie first): the driver's callback already knows its cookie, so the open is tracked and nothing is counted lost (a loss no event would age out)",
            open_during_registration,
        ),
        Scenario::hivetrack(
            "altitude-collision",
            "another filter registered first at hivetrack's altitude (385217): CmRegisterCallbackEx fails with STATUS_FLT_INSTANCE_ALTITUDE_COLLISION (Learn, Return value); the driver still loads and answers, its stats say why tracking is off, the mounted hives are still listed and a holders answer says it does not track (tracking-since 0, never complete) and lists no holder although a process holds a key (the CLI sets the kernel's list beside it), a wait-free request is refused (STATUS_DEVICE_NOT_READY), a hive loaded later is listed and one unloaded later is not (the list read again before a query: review 21a, L4), unload is clean",
            altitude_collision,
        ),
        Scenario::hivetrack(
            "altitude-configured",
            "Parameters\\Altitude (REG_SZ) set to 385300 while another filter holds the INF's 385217: the driver registers at the configured altitude, tracks, and a key a process opens is listed with a complete answer",
            altitude_configured,
        ),
        Scenario::hivetrack(
            "reload-cancels-deferred-unload",
            "logoff fails, the user logs on again: the profile service loads the same NTUSER.DAT at the same mount, which succeeds without mounting anything and cancels the pending deferred unload (WRK cmapi.c CmpIsHiveAlreadyLoaded): the driver keeps the hive's record, its held keys and its unknown load time (a key opened before tracking still holds it), and does not take it as unloaded when its tracked keys go",
            reload_cancels_deferred_unload,
        ),
        Scenario::hivetrack(
            "second-unload-too-late",
            "a second unload of a hive whose deferred unload is pending fails with STATUS_TOO_LATE, either kind (WRK ntapi.c NtUnloadKey2, cmapi.c CmUnloadKeyEx): the first caller's event is the one set when the hive unloads after its last key's close (and the delayed KCB dereference); the driver keeps the hive pending through the refused attempts and drops it at its next read of the hive list, which no longer has it",
            second_unload_too_late,
        ),
        Scenario::hivetrack(
            "hive-list-unread",
            "one value of the hive list cannot be read at start (ZwEnumerateValueKey: no resources, once): the driver still reads the values after it, and its next read of the list takes the one it missed (its reads go on until two agree), so every hive is known and nothing is counted",
            hive_list_unread,
        ),
        Scenario::hivetrack(
            "hive-list-unreadable",
            "every read of the hive list refused from its second value on (ZwEnumerateValueKey: no resources, for a while): the driver's reads agree on the one hive they took, the hives never read are counted once as a name not got, and a load meanwhile gets no load time; once memory is back the read the driver makes before a query (through the key it kept open) takes the whole list: the count is withdrawn, the hive loaded meanwhile keeps no load time, a hive loaded afterwards has its time",
            hive_list_unreadable,
        ),
        Scenario::hivetrack(
            "unload-own-open-holder",
            "a user-mode service unloads a hive: the unload's private kernel-handle open of the root runs on its thread in its previous mode (UserMode), so the driver names the service as that key's holder while the unload runs, as the kernel's own list does (its CM_KEY_BODY's process), not System",
            unload_own_open_holder,
        ),
        Scenario::hivetrack(
            "unload-two-threads",
            "two threads of one service unload the profile's two hives interleaved (the second unload inside the first, between its pre and post): each thread's pre finds its post, so both attempts are recorded, both hives leave the list, and nothing is counted as missed — a driver that keyed its pre-to-post storage by process would lose the first",
            unload_two_threads,
        ),
        Scenario::hivetrack(
            "unload-during-start",
            "a hive unload whose pre-notification went by before the driver registered, and whose post reaches it after the driver read the hive list (which still listed the hive): the driver names the unload's object in the post and no longer lists the hive as loaded",
            unload_during_start,
        ),
        Scenario::hivetrack(
            "unload-during-seed",
            "a hive unloads on another thread right after the driver's start-up read of its hive-list value and before the driver records it; the unload deletes the value and the next one moves down an index (WRK cmhvlist.c, cmvalue.c): the driver does not list the gone hive as loaded, reads the list again and lists the hive the shift hid",
            unload_during_seed,
        ),
        Scenario::hivetrack(
            "deferred-unload-during-seed",
            "a deferred unload pending from before the driver completes during its read of the hive list (the last holding key closes): no notification, but its deleted value moves the next one down an index; the driver reads the list until two reads agree and lists the hive the shift hid",
            deferred_unload_during_seed,
        ),
        Scenario::hivetrack(
            "hive-list-keeps-moving",
            "an unload during each of the driver's four reads of the hive list, of a hive the read has just taken, so the next value moves under the read: the driver lists no unloaded hive, lists the hive every read saw, and counts what the last read may have skipped as a name it could not get",
            hive_list_keeps_moving,
        ),
        Scenario::hivetrack(
            "unload-during-late-seed",
            "the start-up read of the hive list is not whole (an unload during each of its four reads); the read the driver makes before the first query (through the key it kept open) meets a profile unload right after taking its value: the gone hive is not listed, the one the shift hid is, the read ends whole, the name not got is withdrawn and a hive loaded afterwards has its load time",
            unload_during_late_seed,
        ),
        Scenario::hivetrack(
            "nameless-open",
            "CmCallbackGetKeyObjectIDEx fails for an open: not filed under an empty-mount hive, counted against the hive its path names",
            nameless_open,
        ),
    ]
}

/// What a holders answer says about its hive.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct View {
    pub(super) open_keys: u64,
    pub(super) holders: u32,
    pub(super) completeness: Completeness,
}

pub(super) fn query(kind: QueryKind, hive: &str) -> Vec<u8> {
    let units: Vec<u16> = hive.encode_utf16().collect();
    let req = QueryRequest {
        query: kind,
        flags: if kind == QueryKind::Holders {
            QueryRequest::FLAG_SUMMARY_ONLY
        } else {
            0
        },
        max_records: 0,
        cursor: Cursor::START,
        hive: Text::Units(&units),
    };
    let mut buf = vec![0u8; 256 + 2 * units.len()];
    let n = wire::encode(&req, &mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The first holders page of `hive` (summaries): enough for counts and completeness.
pub(super) fn view(ctx: &mut Ctx, h: FileHandle, hive: &str) -> View {
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Holders),
        &query(QueryKind::Holders, hive),
        64 * 1024,
    );
    let page = (r.status == STATUS_SUCCESS)
        .then(|| wire::decode::<Page<'_, Holders>>(&r.output[..r.information]).ok())
        .flatten();
    let Some(page) = page else {
        ctx.check(
            false,
            format!(
                "holders of {hive}: {} and an answer that decodes",
                status::describe(r.status)
            ),
        );
        return View::default();
    };
    View {
        open_keys: page.prefix.open_keys,
        holders: page.prefix.holders,
        completeness: page.prefix.completeness,
    }
}

fn mounts(ctx: &mut Ctx, h: FileHandle) -> Vec<String> {
    hive_rows(ctx, h).into_iter().map(|(m, _, _)| m).collect()
}

pub(super) fn stats(ctx: &mut Ctx, h: FileHandle) -> Stats {
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Stats),
        &query(QueryKind::Stats, ""),
        64 * 1024,
    );
    wire::decode::<Stats>(&r.output[..r.information]).unwrap_or_default()
}

/// A wait-free request with a zero timeout: answered at once.
fn wait_now(ctx: &mut Ctx, h: FileHandle, hive: &str) -> Option<WaitFreeAnswer> {
    match super::wait_free::send(h, hive, 0) {
        IoctlCall::Done(r) if r.status == STATUS_SUCCESS => {
            let a = wire::decode::<WaitFreeAnswer>(&r.output[..r.information]).ok();
            ctx.check(a.is_some(), format!("wait on {hive}: the answer decodes"));
            a
        }
        IoctlCall::Done(r) => {
            ctx.check(
                false,
                format!("wait on {hive}: {}", status::describe(r.status)),
            );
            None
        }
        IoctlCall::Pending(mut p) => {
            ctx.check(false, format!("wait on {hive} with timeout 0 pends"));
            let _ = p.cancel();
            let _ = p.poll();
            None
        }
    }
}

pub(super) fn load(ctx: &mut Ctx) -> (LoadedDriver, Option<FileHandle>) {
    let d = ctx.load();
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    let h = match ctx.open(
        WIN32_DEVICE_PATH,
        Caller::Admin,
        GENERIC_READ | GENERIC_WRITE,
    ) {
        Ok(h) => Some(h),
        Err(s) => {
            ctx.check(false, format!("open the device: {}", status::describe(s)));
            None
        }
    };
    (d, h)
}

fn finish(ctx: &mut Ctx, mut d: LoadedDriver, h: FileHandle, pids: &[u32]) {
    for &pid in pids {
        process::exit_process(pid);
    }
    unload_all(ctx, &[USER, CLASSES]);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

pub(super) fn open_kept(ctx: &mut Ctx, pid: u32, key: &str) -> Option<u64> {
    ensure_parents(pid, key);
    let r = hive::open_key(pid, key, KEY_READ, true);
    ctx.check(r.is_ok(), format!("process {pid} opens {key}: {r:?}"));
    r.ok()
}

/// Runs `f` with every fallible call of `routine` failing (every allocation when `None`).
fn failing<R>(routine: Option<&'static str>, f: impl FnOnce() -> R) -> R {
    kernel::with(|k| {
        k.faults.only = routine;
        k.faults.pool_only = routine.is_none();
        k.faults.policy = FaultPolicy::Random {
            per_mille: 1000,
            seed: 0x5EED,
        };
    });
    let r = f();
    kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.only = None;
        k.faults.pool_only = false;
    });
    r
}

/// DriverEntry opens the hive list with its own `ZwOpenKey` (OBJ_KERNEL_HANDLE, on its System
/// thread) and reads it after registering its callback (`driver/src/registry_read.rs`). On
/// Windows a driver's own open is notified to every registered callback, its own included
/// (Learn REG_CREATE_KEY_INFORMATION_V1 Remarks; regfltr `sys/pre.c`
/// PreNotificationBlockSample; `td-zw-open`; before 2026-12-05 the model delivered nothing
/// for it, fidelity audit 16b, F4). The driver opens the list before it registers, so that
/// open is never its record: a failure while recording it (no name, no memory) would have
/// counted a loss no event ages out, every answer incomplete for the driver's life (review
/// 18b, reproduced with `CmCallbackGetKeyObjectIDEx` failing at load). Its close after
/// registration carries no context of it: nothing.
fn own_hivelist_open(ctx: &mut Ctx) {
    for faulted in [false, true] {
        kernel::reset();
        // The boot makes CurrentControlSet the link to ControlSet001 the open goes through.
        boot_hives(ctx);
        let objects = hive::key_objects();
        if faulted {
            kernel::with(|k| {
                k.faults.only = Some("CmCallbackGetKeyObjectIDEx");
                k.faults.policy = FaultPolicy::FromNth(1);
            });
        }
        let mut d = load_driver(ctx);
        kernel::with(|k| {
            k.faults.policy = FaultPolicy::Off;
            k.faults.only = None;
        });
        let announced = kernel::with(|k| k.zwreg.announced_opens);
        ctx.check(
            announced == 0,
            format!(
                "faulted {faulted}: DriverEntry's open of the hive list reached no driver's callback ({announced})"
            ),
        );
        let Some(c) = Client::open(ctx) else { return };
        let st = c.stats(ctx);
        ctx.check(
            st.opens_seen == 0 && st.objects_tracked == 0 && st.processes_tracked == 0,
            format!(
                "faulted {faulted}: no open seen, no object, no process ({} opens, {} objects, {} processes)",
                st.opens_seen, st.objects_tracked, st.processes_tracked
            ),
        );
        ctx.check(
            st.not_recorded() == 0,
            format!("faulted {faulted}: nothing lost ({})", st.not_recorded()),
        );
        let known = c.hives(ctx);
        ctx.check(
            [SYSTEM, SOFTWARE]
                .iter()
                .all(|m| known.iter().any(|(k, _)| k.eq_ignore_ascii_case(m))),
            format!("faulted {faulted}: the hive list was read: {known:?}"),
        );
        // The hive list's key stays open for the driver's later reads (a seed that was not
        // whole, deferred unloads that completed: `driver/src/reseed.rs`) until DriverUnload
        // closes it (the leak check below); until 2026-12-06 a whole seed closed it at once.
        let list_keys = kernel::with(|k| {
            k.hives
                .objects
                .values()
                .filter(|o| o.name.to_ascii_lowercase().ends_with(r"\control\hivelist"))
                .count()
        });
        ctx.check(
            hive::key_objects() == objects + 1 && list_keys == 1,
            format!(
                "faulted {faulted}: the driver's start left one key object, the hive list's it keeps ({} objects, {list_keys} of the list)",
                hive::key_objects().saturating_sub(objects)
            ),
        );
        c.close();
        ctx.unload_and_check_clean(&mut d);
    }
}

/// Object contexts exist only for objects the callback attached one to (docs:
/// `CmSetCallbackObjectContext`; the model: `td-preexisting-handles`): a driver started after
/// the leak has no record of the leaked key. Its answers must say since when it tracks.
fn late_start(ctx: &mut Ctx) {
    boot_hives(ctx);
    load_profile(ctx);
    let early = spawn(ctx, APP2);
    let policies = format!(r"{USER}\Software\Policies");
    let kept = open_kept(ctx, early, &policies);
    let opened_at = crate::machine::cpu::system_time();
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    let v = view(ctx, h, USER);
    ctx.check(
        v.completeness.tracking_since >= opened_at,
        format!(
            "the holders answer says since when the driver tracks ({}), after the early open ({opened_at})",
            v.completeness.tracking_since
        ),
    );
    ctx.check(
        v.open_keys == 0 && v.holders == 0,
        format!("the driver has no record of the key opened before it started: {v:?}"),
    );
    let listed = hive::open_subkeys(USER).unwrap_or_default();
    ctx.check(
        listed
            .iter()
            .any(|(p, n)| *p == early && n.eq_ignore_ascii_case(&policies)),
        format!("the kernel's list has it, with its opener {early}: {listed:?}"),
    );
    let w = wait_now(ctx, h, USER);
    ctx.check(
        w.is_some_and(|w| {
            w.outcome == WaitOutcome::Free
                && w.completeness.tracking_since == v.completeness.tracking_since
        }),
        format!("the driver's wait answer is free of what it tracks and says since when: {w:?}"),
    );
    let known = mounts(ctx, h).iter().any(|m| m.eq_ignore_ascii_case(USER));
    ctx.check(
        known,
        "the profile loaded before the driver is known (hive list read after registration)",
    );
    let later = spawn(ctx, APP1);
    let desktop = format!(r"{USER}\Control Panel\Desktop");
    let _ = open_kept(ctx, later, &desktop);
    let v = view(ctx, h, USER);
    ctx.check(
        v.open_keys == 1 && v.holders == 1,
        format!("an open after the start is tracked: {v:?}"),
    );
    if let Some(k) = kept {
        let _ = hive::close_key(early, k);
    }
    finish(ctx, d, h, &[early, later]);
}

/// The key [`stage_lower_filter_key`] has a lower filter hold.
pub(crate) const LOWER_FILTER_KEY: &str =
    r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001\Software\Contoso\Cache";

/// Stages audit 24b's G1 with hivetrack loaded: a registry filter below it (an antivirus at
/// 320000, `registry::filter_keep_open`) opens [`LOWER_FILTER_KEY`] inside its pre-open of
/// the profile's `Software` by `editor.exe` and keeps the kernel handle, which no callback
/// above it hears of (Learn "Supporting Layered Registry Filtering Drivers"; regfltr
/// `multialt.c`); editor.exe closes its own key. The profile is loaded after the driver
/// started. The profile service's unload then fails (STATUS_CANNOT_DELETE), and the next read
/// of the kernel's list finds the key's hash bucket busy (`hive::busy_bucket`, WRK `cmsubs.c`
/// CmpSearchForOpenSubKeys). Returns editor.exe's pid (the opener the kernel lists).
pub(crate) fn stage_lower_filter_key(ctx: &mut Ctx) -> u32 {
    use crate::nt::cm::registry;
    let lower = registry::register_emulated(registry::filter_keep_open, 0, "320000");
    ctx.check(
        lower.is_ok(),
        format!("an antivirus filter registers below hivetrack, at 320000: {lower:?}"),
    );
    load_profile(ctx);
    let editor = spawn(ctx, APP1);
    if let Some(k) = open_kept(ctx, editor, LOWER_FILTER_KEY) {
        let _ = hive::close_key(editor, k);
    }
    registry::set_keep_open(LOWER_FILTER_KEY);
    if let Some(k) = open_kept(ctx, editor, &format!(r"{USER}\Software")) {
        let _ = hive::close_key(editor, k);
    }
    let refused = hive::unload_hive(hive::SYSTEM_PID, USER);
    ctx.check(
        refused == status::STATUS_CANNOT_DELETE,
        format!(
            "the profile's unload fails on the filter's key: {}",
            status::describe(refused)
        ),
    );
    hive::busy_bucket(LOWER_FILTER_KEY, 1);
    editor
}

/// Audit 24b, G1: what hivetrack's answers and one read of the kernel's list say of a hive
/// held only by a key a lower filter opened inside its callback ([`stage_lower_filter_key`]).
/// The driver's side is right by design (it cannot see the open); the CLI must not take the
/// two lists' agreement on "nothing" for proof (usermode-client `kernel_list`).
fn lower_filter_busy_bucket(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    let editor = stage_lower_filter_key(ctx);
    let kept = crate::nt::cm::registry::take_kept_open();
    ctx.check(
        kept.len() == 1,
        format!("the filter keeps its handle: {kept:?}"),
    );
    let v = view(ctx, h, USER);
    let seen = v.completeness;
    ctx.check(
        v.open_keys == 0
            && v.holders == 0
            && seen.tracking_since != 0
            && seen.hive_lost == 0
            && seen.global_lost == 0,
        format!("hivetrack has no record of the filter's key and lost nothing: {v:?}"),
    );
    let loaded = hive_rows(ctx, h)
        .into_iter()
        .find(|(m, _, _)| m.eq_ignore_ascii_case(USER))
        .map(|(_, _, t)| t);
    ctx.check(
        loaded.is_some_and(|t| t >= seen.tracking_since),
        format!(
            "the profile was loaded after tracking started ({loaded:?} >= {})",
            seen.tracking_since
        ),
    );
    let w = wait_now(ctx, h, USER);
    ctx.check(
        w.is_some_and(|w| w.outcome == WaitOutcome::Free),
        format!("hivetrack's own wait answer is free of what it tracks: {w:?}"),
    );
    let first = hive::open_subkeys(USER);
    ctx.check(
        first.as_ref().is_ok_and(Vec::is_empty),
        format!(
            "one read of the kernel's list, the key's bucket busy: success, nothing: {first:?}"
        ),
    );
    let second = hive::open_subkeys(USER);
    ctx.check(
        second.as_ref().is_ok_and(|l| {
            l.iter()
                .any(|(p, n)| *p == editor && n.eq_ignore_ascii_case(LOWER_FILTER_KEY))
        }),
        format!("the next read lists the key, opener {editor}: {second:?}"),
    );
    for k in kept {
        let _ = hive::close_key(hive::SYSTEM_PID, k);
    }
    finish(ctx, d, h, &[editor]);
}

/// A hive whose load's pre-notification went by before the driver registered, and whose
/// post reaches it: where a post goes to every callback registered at post time (the Windows
/// Research Kernel's `cmp.h` CmPostCallbackNotification and `cmhook.c` CmpCallCallBacks, for
/// the classes the WRK has; the model's `registry::set_late_posts`), the driver gets a
/// post-load without its pre. The hive was linked into the namespace between the two (WRK
/// `cmapi.c` CmLoadKey; the load's notifications around it are an inference, see
/// `hive::load_hive_interrupted`), so a key opened then is
/// unknown to the driver; deleted, it is in no list either, yet it holds the hive. Only a
/// load whose pre the driver saw may carry a load time (what a report's completeness rests
/// on: the CLI's `loaded_since`); this one is recorded as loaded at an unknown time.
fn load_during_start(ctx: &mut Ctx) {
    boot_hives(ctx);
    crate::nt::cm::registry::set_late_posts(true);
    let loader = spawn(ctx, APP1);
    let early = spawn(ctx, APP2);
    let mount = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1007";
    let key = format!(r"{mount}\Software\Early");
    let mut kept = None;
    let mut started = None;
    let posts = || {
        kernel::with(|k| {
            k.registry
                .delivered
                .get(&crate::nt::cm::registry::class::POST_LOAD_KEY)
                .copied()
                .unwrap_or(0)
        })
    };
    let posts_before = posts();
    let s = hive::load_hive_interrupted(loader, mount, r"\??\C:\Users\late\NTUSER.DAT", || {
        kept = open_kept(ctx, early, &key);
        started = Some(load(ctx));
    });
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{mount} loads: {}", status::describe(s)),
    );
    let Some((d, Some(h))) = started else {
        ctx.check(false, "the driver started during the load");
        return;
    };
    // The driver is the only callback: the one post-load delivered is its, without a pre.
    // (The load-time check alone would pass without it: the driver's start-up read of the
    // hive list records the hive with time 0 — found in review 17c.)
    let delivered = posts() - posts_before;
    ctx.check(
        delivered == 1,
        format!("the driver got the load's post without its pre ({delivered} delivered)"),
    );
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Hives),
        &query(QueryKind::Hives, ""),
        64 * 1024,
    );
    let load_time = wire::decode::<Page<'_, Hives>>(&r.output[..r.information])
        .ok()
        .and_then(|p| {
            p.records()
                .find(|h| h.mount.to_string().eq_ignore_ascii_case(mount))
                .map(|h| h.loaded_time)
        });
    ctx.check(
        load_time == Some(0),
        format!(
            "the hive is known, loaded at an unknown time (a load time would vouch that the driver saw every key of it): {load_time:?}"
        ),
    );
    if let Some(k) = kept {
        let s = hive::delete_key(early, k);
        ctx.check(
            s == STATUS_SUCCESS,
            format!(
                "the early key is deleted, still held: {}",
                status::describe(s)
            ),
        );
        let s = hive::unload_hive(super::tracking::SYSTEM_PID, mount);
        ctx.check(
            s != STATUS_SUCCESS,
            format!(
                "the hive cannot unload: the deleted key, in no list, holds it ({})",
                status::describe(s)
            ),
        );
        let _ = hive::close_key(early, k);
    }
    unload_all(ctx, &[mount]);
    let mut d = d;
    for pid in [loader, early] {
        process::exit_process(pid);
    }
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// The driver's start-up read of the hive list with its second value refused (WRK `cmapi.c`
/// CmEnumerateValueKey: STATUS_INSUFFICIENT_RESOURCES when a cell cannot be mapped; the
/// model's fault point, fidelity audit 18b, F2). Stopping there left every later hive unknown
/// in silence.
fn hive_list_unread(ctx: &mut Ctx) {
    boot_hives(ctx);
    load_profile(ctx);
    // A value longer than the driver's first buffer (a long file path): read again at the
    // size the call reports, not counted as missed (review 18b).
    let long_mount = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1009";
    let long_file = format!(r"\??\C:\{}\NTUSER.DAT", "Profiles\\".repeat(300));
    let s = hive::load_hive(super::tracking::SYSTEM_PID, long_mount, &long_file);
    ctx.check(
        s == STATUS_SUCCESS,
        format!(
            "a hive with a {}-character file path loads",
            long_file.len()
        ),
    );
    let listed = kernel::with(|k| k.hives.hives.len());
    kernel::with(|k| {
        k.faults.only = Some("ZwEnumerateValueKey");
        k.faults.policy = FaultPolicy::Nth(2);
    });
    let (mut d, h) = load(ctx);
    let injected = kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.only = None;
        k.faults.injected.len()
    });
    let Some(h) = h else { return };
    ctx.check(
        listed >= 3 && injected == 1,
        format!("{listed} hives listed, the second value's read refused ({injected} injected)"),
    );
    let known = mounts(ctx, h);
    ctx.check(
        known.len() == listed,
        format!(
            "every hive of the list is known, the one refused once taken by the next read ({} of {listed})",
            known.len()
        ),
    );
    ctx.check(
        known.iter().any(|m| m.eq_ignore_ascii_case(long_mount)),
        format!("the hive with the long file path among them: {known:?}"),
    );
    let file = hive_files(ctx, h)
        .into_iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(long_mount))
        .map(|(_, f)| f)
        .unwrap_or_default();
    ctx.check(
        file.len() > 512 && long_file.starts_with(&file),
        format!(
            "its file path is not cut to the stack's 512 units ({} of {} characters kept)",
            file.len(),
            long_file.len()
        ),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 0,
        format!(
            "nothing counted: the last two reads agreed ({} names unavailable)",
            st.names_unavailable
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Every read of the hive list refused from the second value on (memory short for a while):
/// the reads agree on one hive, and the ones never read are counted; the driver keeps the
/// list's key, and once memory is back the read before a query takes the whole list (review
/// 20: until then, and before, the whole boot's loads got no load time).
fn hive_list_unreadable(ctx: &mut Ctx) {
    boot_hives(ctx);
    load_profile(ctx);
    let refuse = || {
        kernel::with(|k| {
            k.faults.only = Some("ZwEnumerateValueKey");
            k.faults.policy = FaultPolicy::FromNth(2);
        });
    };
    let allow = || {
        kernel::with(|k| {
            k.faults.policy = FaultPolicy::Off;
            k.faults.only = None;
        });
    };
    refuse();
    let (mut d, h) = load(ctx);
    // Every read from now on is refused too (the count goes on: FromNth(2) fails them all):
    // the reads before the queries below are not whole either.
    let Some(h) = h else {
        allow();
        return;
    };
    let known = mounts(ctx, h);
    let st = stats(ctx, h);
    ctx.check(
        known.len() == 1 && st.names_unavailable == 1 && st.not_recorded() >= 1,
        format!(
            "one hive known, the rest counted once ({known:?}; {} names unavailable, {} not recorded)",
            st.names_unavailable,
            st.not_recorded()
        ),
    );
    // Logon again while the profile the seed missed is loaded: the same file at the same mount
    // succeeds and mounts nothing. The driver cannot tell it from a fresh load, and keys
    // opened before tracking may hold that hive: no load time (review 19c, B1).
    if !known.iter().any(|m| m.eq_ignore_ascii_case(USER)) {
        let s = hive::load_hive(
            super::tracking::SYSTEM_PID,
            USER,
            r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT",
        );
        let time = hive_rows(ctx, h)
            .into_iter()
            .find(|(m, _, _)| m.eq_ignore_ascii_case(USER))
            .map(|(_, _, t)| t);
        ctx.check(
            s == STATUS_SUCCESS && time == Some(0),
            format!(
                "the missed profile loaded again is known, at an unknown load time ({}, {time:?})",
                status::describe(s)
            ),
        );
    }
    // Memory is back. The next query after the driver's interval reads the list again,
    // through the key it kept open (a new open would reach its own callback: review 18b).
    allow();
    crate::nt::ke::timer::advance(1_100);
    let st = stats(ctx, h);
    let listed = crate::nt::cm::zwreg::hive_list();
    let known = mounts(ctx, h);
    ctx.check(
        st.names_unavailable == 0,
        format!(
            "the later read was whole: the name not got is withdrawn ({} names unavailable)",
            st.names_unavailable
        ),
    );
    ctx.check(
        listed
            .iter()
            .all(|l| known.iter().any(|m| m.eq_ignore_ascii_case(l))),
        format!("every hive of the list is known now: {known:?} of {listed:?}"),
    );
    late_seed_vouches(ctx, h, 1201, &[USER]);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// After a late seed that read the whole list: the hives of `unknown` (loaded again before it,
/// or read from the list) keep no load time (a profile loaded again may be the same hive,
/// held by keys opened before tracking), and a profile loaded now (sid `sid`) gets its time,
/// so a report of it can be complete.
fn late_seed_vouches(ctx: &mut Ctx, h: FileHandle, sid: u32, unknown: &[&str]) {
    let mount = format!(r"\REGISTRY\USER\S-1-5-21-1-2-3-{sid}");
    let s = hive::load_hive(
        super::tracking::SYSTEM_PID,
        &mount,
        &format!(r"\Device\HarddiskVolume2\Users\u{sid}\NTUSER.DAT"),
    );
    let times = hive_times(ctx, h);
    let time_of = |m: &str| {
        times
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(m))
            .map(|&(_, t)| t)
    };
    ctx.check(
        s == STATUS_SUCCESS && time_of(&mount).is_some_and(|t| t != 0),
        format!(
            "a hive loaded after the late seed has its load time ({}, {:?})",
            status::describe(s),
            time_of(&mount)
        ),
    );
    for &m in unknown {
        ctx.check(
            time_of(m) == Some(0),
            format!(
                "{m}, known before the late seed or from the list, keeps an unknown load time: {:?}",
                time_of(m)
            ),
        );
    }
    let v = view(ctx, h, &mount);
    ctx.check(
        v.completeness.nothing_lost(),
        format!(
            "nothing lost in the new hive's report: {:?}",
            v.completeness
        ),
    );
}

/// `NtUnloadKey2` from a user-mode caller opens the hive's root itself with a kernel handle
/// and AccessMode KernelMode, while the thread's previous mode stays UserMode (Windows
/// Research Kernel `ntapi.c`; the model's `OpenMode::service_for_caller`, fidelity audit 18a,
/// F7): the driver, which names a kernel handle's holder System only when
/// `ExGetPreviousMode` says KernelMode, names the caller, and so does the kernel's own list
/// (`CM_KEY_BODY.ProcessID`). The model made that open in KernelMode, so the driver said
/// System there, and the emulator showed a holder Windows would not.
fn unload_own_open_holder(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let svchost = spawn(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let mut seen = None;
    let s = hive::unload_hive_interrupted(svchost, USER, || {
        let holders: Vec<u64> = c.holders(ctx, USER).iter().map(|x| x.pid).collect();
        let listed: Vec<u32> = hive::open_subkeys(USER)
            .unwrap_or_default()
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        seen = Some((holders, listed));
    });
    ctx.check(
        s == STATUS_SUCCESS,
        format!("the profile unloads: {}", status::describe(s)),
    );
    let (holders, listed) = seen.unwrap_or_default();
    ctx.check(
        holders == [u64::from(svchost)],
        format!(
            "while the unload runs, its own open of the root is held by the service ({svchost}), not System: {holders:?}"
        ),
    );
    ctx.check(
        listed == [svchost],
        format!("the kernel's own list names the service too: {listed:?}"),
    );
    process::exit_process(svchost);
    io::close(c.h);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Two threads of one process unload two hives at once, the second's unload between the
/// first's RegNtPreUnLoadKey and RegNtPostUnLoadKey (`hive::unload_hive_interrupted`, the
/// second thread played by `io::with_thread`). The driver carries an unload's mount from its
/// pre to its post in a slot keyed by `PsGetCurrentThreadId` (`driver/src/callbacks.rs`
/// `UnloadSlots`), which holds because Windows gives every thread its own id and runs a
/// registry callback on the thread performing the operation (the emulator's `td-thread-ids`).
/// On the model before 2026-12-06 (every thread of a process had the id `pid * 4 + 4`,
/// fidelity audit 22e, H1), and with a driver keying the slots by process id, the second pre
/// replaced the first's slot: the first unload was counted as missed and never recorded.
fn unload_two_threads(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let Some(c) = Client::open(ctx) else { return };
    let svchost = spawn(ctx, r"\Device\HarddiskVolume2\Windows\System32\svchost.exe");
    let before = stats(ctx, h);
    let mut inner = STATUS_SUCCESS;
    let outer = hive::unload_hive_interrupted(svchost, USER, || {
        inner = io::with_thread(1, || hive::unload_hive(svchost, CLASSES));
    });
    ctx.check(
        outer == STATUS_SUCCESS && inner == STATUS_SUCCESS,
        format!(
            "both hives unload: {} and {}",
            status::describe(outer),
            status::describe(inner)
        ),
    );
    let after = stats(ctx, h);
    ctx.check(
        after.unload_attempts_seen - before.unload_attempts_seen == 2
            && after.hive_unloads_seen - before.hive_unloads_seen == 2,
        format!(
            "both unloads recorded as attempts that unloaded their hive ({} attempts, {} unloads)",
            after.unload_attempts_seen - before.unload_attempts_seen,
            after.hive_unloads_seen - before.hive_unloads_seen
        ),
    );
    ctx.check(
        after.history_dropped_no_memory == before.history_dropped_no_memory
            && after.names_unavailable == before.names_unavailable,
        format!(
            "no unload counted as missed ({} dropped, {} unnamed)",
            after.history_dropped_no_memory - before.history_dropped_no_memory,
            after.names_unavailable - before.names_unavailable
        ),
    );
    let all = mounts(ctx, h);
    ctx.check(
        all.iter()
            .all(|m| !m.eq_ignore_ascii_case(USER) && !m.eq_ignore_ascii_case(CLASSES)),
        format!("neither hive is listed as loaded any more: {all:?}"),
    );
    process::exit_process(svchost);
    io::close(c.h);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// The unload's twin of [`load_during_start`]: the driver registers, and reads the hive list
/// (which lists the hive: it is not unlinked yet), between an unload's pre and its post
/// (`hive::unload_hive_interrupted`), and gets the post without the pre (the model's
/// `registry::set_late_posts`). Dropping that post left the hive listed as loaded after it
/// was gone: a ghost every report of it would go on asking about (review 17c).
fn unload_during_start(ctx: &mut Ctx) {
    boot_hives(ctx);
    crate::nt::cm::registry::set_late_posts(true);
    let mount = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1008";
    let s = hive::load_hive(
        super::tracking::SYSTEM_PID,
        mount,
        r"\??\C:\Users\gone\NTUSER.DAT",
    );
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{mount} loads before the driver: {}", status::describe(s)),
    );
    let mut started = None;
    let mut listed_at_start = false;
    let s = hive::unload_hive_interrupted(super::tracking::SYSTEM_PID, mount, || {
        let (d, h) = load(ctx);
        if let Some(h) = h {
            listed_at_start = mounts(ctx, h).iter().any(|m| m.eq_ignore_ascii_case(mount));
        }
        started = Some((d, h));
    });
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{mount} unloads: {}", status::describe(s)),
    );
    let Some((mut d, Some(h))) = started else {
        ctx.check(false, "the driver started during the unload");
        return;
    };
    ctx.check(
        listed_at_start,
        "the driver's start-up read of the hive list found the hive (not yet unlinked)",
    );
    let all = mounts(ctx, h);
    ctx.check(
        all.iter().all(|m| !m.eq_ignore_ascii_case(mount)),
        format!("after the unload's post the hive is no longer listed: {all:?}"),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 0,
        format!("no name counted as unavailable ({})", st.names_unavailable),
    );
    ctx.check(
        st.unload_attempts_seen == 1 && st.hive_unloads_seen == 1,
        format!(
            "the unload is recorded as an attempt that unloaded the hive ({} attempts, {} unloads)",
            st.unload_attempts_seen, st.hive_unloads_seen
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Review 18a: a relative load whose post alone reaches the driver (it registered between the
/// mount and the post), with `Object` the root directory `\REGISTRY\USER` and `KeyName`
/// `USER`: the object's name ends with `\KeyName`, as a hive root's would, and the driver
/// took it for the hive's root, recording a hive at `\REGISTRY\USER`, the root of every
/// user hive.
fn relative_load_during_start(ctx: &mut Ctx) {
    boot_hives(ctx);
    crate::nt::cm::registry::set_late_posts(true);
    hive::set_load_object(hive::LoadObject::RootDirectory);
    let system = super::tracking::SYSTEM_PID;
    let twin = r"\REGISTRY\USER\USER";
    let Ok(hku) = hive::open_key(system, r"\REGISTRY\USER", KEY_READ, false) else {
        ctx.check(false, "open HKU");
        return;
    };
    let mut started = None;
    let s = hive::load_key_interrupted(
        system,
        hku,
        "USER",
        r"\Device\HarddiskVolume2\Users\twin\NTUSER.DAT",
        || started = Some(load(ctx)),
    );
    let _ = hive::close_key(system, hku);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("RegLoadKey(HKU, USER): {}", status::describe(s)),
    );
    let Some((mut d, Some(h))) = started else {
        ctx.check(false, "the driver started during the load");
        return;
    };
    let rows = hive_rows(ctx, h);
    ctx.check(
        rows.iter()
            .all(|(m, _, _)| !m.eq_ignore_ascii_case(r"\REGISTRY\USER")),
        format!("no hive recorded at \\REGISTRY\\USER (one level too high): {rows:?}"),
    );
    ctx.check(
        rows.iter()
            .any(|(m, _, t)| m.eq_ignore_ascii_case(twin) && *t == 0),
        format!("{twin} known from the hive list, loaded at an unknown time: {rows:?}"),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 1,
        format!(
            "the post it could not place counted as a name not got ({})",
            st.names_unavailable
        ),
    );
    let s = hive::unload_hive(system, twin);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{twin} unloads: {}", status::describe(s)),
    );
    let rows = hive_rows(ctx, h);
    let st = stats(ctx, h);
    ctx.check(
        rows.iter().all(|(m, _, _)| !m.eq_ignore_ascii_case(twin)) && st.unloads_unknown_hive == 0,
        format!(
            "its unload is matched ({} unknown): {rows:?}",
            st.unloads_unknown_hive
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// A notification reaches the callback before `CmRegisterCallbackEx` returns (another thread's
/// open, once the callback is installed). The driver copied the cookie from a local after the
/// return, so in that window its callback asked `CmCallbackGetKeyObjectIDEx` with cookie 0,
/// was refused, and counted the open as a loss of the SOFTWARE hive, which never unloads: every
/// answer about it incomplete for the driver's life.
fn open_during_registration(ctx: &mut Ctx) {
    boot_hives(ctx);
    let app = spawn(ctx, APP1);
    let key = format!(r"{SOFTWARE}\Vendor\Early");
    ensure_parents(app, &key);
    let opened = std::rc::Rc::new(std::cell::Cell::new(None));
    let got = opened.clone();
    crate::nt::cm::registry::during_registration(move || {
        got.set(Some(hive::open_key(app, &key, KEY_READ, true)));
    });
    let (mut d, h) = load(ctx);
    let pending = crate::nt::cm::registry::cancel_during_registration();
    let Some(h) = h else { return };
    let handle = opened.take();
    ctx.check(
        !pending && matches!(handle, Some(Ok(_))),
        format!("the open ran inside CmRegisterCallbackEx: {handle:?}"),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 0 && st.not_recorded() == 0,
        format!(
            "nothing counted lost ({} names unavailable, {} not recorded)",
            st.names_unavailable,
            st.not_recorded()
        ),
    );
    let software = view(ctx, h, SOFTWARE);
    ctx.check(
        software.completeness.nothing_lost() && software.open_keys >= 1,
        format!(
            "the SOFTWARE hive's answer has the open and no loss: {} keys, {:?}",
            software.open_keys, software.completeness
        ),
    );
    if let Some(Ok(k)) = handle {
        let _ = hive::close_key(app, k);
    }
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// STATUS_FLT_INSTANCE_ALTITUDE_COLLISION (Learn, CmRegisterCallbackEx, Return value: "The
/// calling driver or another driver has already registered a RegistryCallback routine for the
/// specified altitude").
const ALTITUDE_COLLISION: u64 = 0xC01C_0011;
/// STATUS_DEVICE_NOT_READY: the driver's answer to a wait-free request while it does not track.
const STATUS_DEVICE_NOT_READY: u32 = 0xC000_00A3;

/// Audit 21a, A7: another filter holds hivetrack's altitude before it loads. What
/// docs/production-signing.md promises: the driver loads, says why tracking is off, and no
/// answer claims to be complete.
fn altitude_collision(ctx: &mut Ctx) {
    boot_hives(ctx);
    let other = crate::nt::cm::registry::register_emulated(
        crate::nt::cm::registry::filter_deny,
        0,
        crate::nt::cm::zwreg::INF_ALTITUDE,
    );
    ctx.check(
        other.is_ok(),
        format!("another filter registers at the INF's altitude first: {other:?}"),
    );
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    let driver_callbacks =
        kernel::with(|k| k.registry.callbacks.iter().filter(|c| !c.emulated).count());
    ctx.check(
        driver_callbacks == 0,
        format!("the driver has no callback registered ({driver_callbacks})"),
    );
    let version = io::device_io_control(
        h,
        protocol::ioctl::IOCTL_HIVETRACK_GET_VERSION,
        &[],
        64,
        0xA5,
    );
    ctx.check(
        version.status == STATUS_SUCCESS,
        format!(
            "the driver answers GET_VERSION: {}",
            status::describe(version.status)
        ),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.tracking_status == ALTITUDE_COLLISION,
        format!(
            "stats say why tracking is off: {:#x} (STATUS_FLT_INSTANCE_ALTITUDE_COLLISION)",
            st.tracking_status
        ),
    );
    let app = spawn(ctx, APP1);
    let key = format!(r"{SOFTWARE}\Vendor\Held");
    let held = open_kept(ctx, app, &key);
    let listed = mounts(ctx, h);
    ctx.check(
        listed.iter().any(|m| m.eq_ignore_ascii_case(SOFTWARE)),
        format!("the mounted hives are still listed (read from the hive list): {listed:?}"),
    );
    let software = view(ctx, h, SOFTWARE);
    ctx.check(
        software.completeness.tracking_since == 0 && !software.completeness.nothing_lost(),
        format!(
            "the holders answer says tracking is off, never complete: {:?}",
            software.completeness
        ),
    );
    ctx.check(
        software.holders == 0 && software.open_keys == 0,
        format!(
            "and lists nothing it did not see ({} holders, {} keys)",
            software.holders, software.open_keys
        ),
    );
    let wait = match super::wait_free::send(h, SOFTWARE, 0) {
        IoctlCall::Done(r) => Some(r.status),
        IoctlCall::Pending(mut p) => {
            let _ = p.cancel();
            let _ = p.poll();
            None
        }
    };
    ctx.check(
        wait.map(|s| s as u32) == Some(STATUS_DEVICE_NOT_READY),
        format!(
            "a wait-free request is refused, not answered \"free\": {}",
            wait.map_or_else(|| "pending".to_string(), status::describe)
        ),
    );
    hive_set_follows_the_list(ctx, h);
    if let Some(k) = held {
        let _ = hive::close_key(app, k);
    }
    end_without_profile(ctx, d, h, app);
}

/// Review 21a, L4: with tracking off the hive set follows the hive list. No load or unload
/// is notified, so each query (at most one read a second) reads the list again.
fn hive_set_follows_the_list(ctx: &mut Ctx, h: FileHandle) {
    super::tracking::load_profile(ctx);
    crate::nt::ke::timer::advance(1_100);
    let listed = mounts(ctx, h);
    ctx.check(
        listed.iter().any(|m| m.eq_ignore_ascii_case(USER))
            && listed.iter().any(|m| m.eq_ignore_ascii_case(CLASSES)),
        format!("hives loaded after DriverEntry are listed (the list read again): {listed:?}"),
    );
    let s = hive::unload_hive(super::tracking::SYSTEM_PID, USER);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{USER} unloads: {}", status::describe(s)),
    );
    crate::nt::ke::timer::advance(1_100);
    let listed = mounts(ctx, h);
    ctx.check(
        !listed.iter().any(|m| m.eq_ignore_ascii_case(USER))
            && listed.iter().any(|m| m.eq_ignore_ascii_case(CLASSES))
            && listed.iter().any(|m| m.eq_ignore_ascii_case(SOFTWARE)),
        format!("a hive unloaded since is no longer listed as loaded, the others are: {listed:?}"),
    );
    let gone = io::device_io_control(
        h,
        query_ioctl(QueryKind::Holders),
        &query(QueryKind::Holders, USER),
        64 * 1024,
        0xA5,
    );
    ctx.check(
        gone.status == crate::nt::status::STATUS_OBJECT_NAME_NOT_FOUND && gone.information == 0,
        format!(
            "holders of it: an unknown hive, as after a notified unload, never \"free\": {}",
            status::describe(gone.status)
        ),
    );
    let classes = view(ctx, h, CLASSES);
    ctx.check(
        classes.completeness.tracking_since == 0 && !classes.completeness.nothing_lost(),
        format!(
            "an answer about a hive recorded by a later read still says tracking is off: {:?}",
            classes.completeness
        ),
    );
    // Review 22a, L3: another file loaded at a mount between two reads: the mount's record
    // must name the new file, not keep the first one's.
    let other = r"\Device\HarddiskVolume2\Users\other\UsrClass.dat";
    let unloaded = hive::unload_hive(super::tracking::SYSTEM_PID, CLASSES);
    let loaded = hive::load_hive(super::tracking::SYSTEM_PID, CLASSES, other);
    ctx.check(
        unloaded == STATUS_SUCCESS && loaded == STATUS_SUCCESS,
        format!(
            "{CLASSES} unloads and {other} loads there, no query between: {}, {}",
            status::describe(unloaded),
            status::describe(loaded)
        ),
    );
    crate::nt::ke::timer::advance(1_100);
    let files = hive_files(ctx, h);
    ctx.check(
        files
            .iter()
            .any(|(m, f)| m.eq_ignore_ascii_case(CLASSES) && f.eq_ignore_ascii_case(other)),
        format!("the mount's hive is the new file's: {files:?}"),
    );
    let s = hive::unload_hive(super::tracking::SYSTEM_PID, CLASSES);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{CLASSES} unloads: {}", status::describe(s)),
    );
}

/// Ends a scenario that loaded no profile: `app` exits, the device closes, the driver unloads
/// clean.
fn end_without_profile(ctx: &mut Ctx, mut d: LoadedDriver, h: FileHandle, app: u32) {
    process::exit_process(app);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Audit 21a, A7: `Parameters\Altitude` is where an administrator moves the driver when its
/// altitude is taken (docs/production-signing.md); the driver must register there.
fn altitude_configured(ctx: &mut Ctx) {
    boot_hives(ctx);
    let other = crate::nt::cm::registry::register_emulated(
        crate::nt::cm::registry::filter_deny,
        0,
        crate::nt::cm::zwreg::INF_ALTITUDE,
    );
    ctx.check(
        other.is_ok(),
        format!("another filter registers at the INF's altitude first: {other:?}"),
    );
    let d = ctx.load();
    let Some(params) = super::tracking::service_parameters() else {
        ctx.check(false, "the service key's Parameters exists");
        return;
    };
    let value: Vec<u8> = "385300\0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    crate::nt::cm::zwreg::set_value(&params, "Altitude", crate::nt::cm::zwreg::REG_SZ, value);
    let s = d.entry();
    ctx.check(
        s == STATUS_SUCCESS,
        format!("DriverEntry returned {}", status::describe(s)),
    );
    let h = match ctx.open(
        WIN32_DEVICE_PATH,
        Caller::Admin,
        GENERIC_READ | GENERIC_WRITE,
    ) {
        Ok(h) => h,
        Err(s) => {
            ctx.check(false, format!("open the device: {}", status::describe(s)));
            let mut d = d;
            ctx.unload_and_check_clean(&mut d);
            return;
        }
    };
    let altitudes: Vec<String> = kernel::with(|k| {
        k.registry
            .callbacks
            .iter()
            .filter(|c| !c.emulated)
            .map(|c| c.altitude.clone())
            .collect()
    });
    ctx.check(
        altitudes == ["385300"],
        format!("the driver's callback is at the configured altitude: {altitudes:?}"),
    );
    let st = stats(ctx, h);
    ctx.check(
        st.tracking_status == 0,
        format!("tracking is on: status {:#x}", st.tracking_status),
    );
    let app = spawn(ctx, APP1);
    let key = format!(r"{SOFTWARE}\Vendor\Held");
    let held = open_kept(ctx, app, &key);
    let software = view(ctx, h, SOFTWARE);
    ctx.check(
        software.completeness.nothing_lost() && software.open_keys >= 1,
        format!(
            "the held key is listed, the answer complete: {} keys, {:?}",
            software.open_keys, software.completeness
        ),
    );
    if let Some(k) = held {
        let _ = hive::close_key(app, k);
    }
    end_without_profile(ctx, d, h, app);
}

/// Audit 19a, F1: a load of the same file at the same mount succeeds and mounts nothing, and
/// cancels a pending deferred unload (WRK `cmapi.c` CmLoadKey → CmpIsHiveAlreadyLoaded). The
/// driver took its success as a new load: a hive read from the hive list got the post's load
/// time (vouching for opens made before tracking), and a pending record was retired as
/// unloaded with the keys that still held the hive.
fn reload_cancels_deferred_unload(ctx: &mut Ctx) {
    boot_hives(ctx);
    let users = profiles_loaded_before(ctx, &[1020]);
    let (mount, file) = (users[0].clone(), r"\??\C:\Users\u1020\NTUSER.DAT");
    let early = spawn(ctx, APP2);
    let old = open_kept(ctx, early, &format!(r"{mount}\Software\Old"));
    let (mut driver, handle) = load(ctx);
    let Some(h) = handle else { return };
    let leaker = spawn(ctx, APP1);
    let leak = open_kept(ctx, leaker, &format!(r"{mount}\Software\Leak"));
    let time_of = |ctx: &mut Ctx| {
        hive_rows(ctx, h)
            .into_iter()
            .find(|(m, _, _)| m.eq_ignore_ascii_case(&mount))
            .map(|(_, _, t)| t)
    };
    // Logon while the profile is loaded: the same file at the same mount.
    let s = hive::load_hive(super::tracking::SYSTEM_PID, &mount, file);
    ctx.check(
        s == STATUS_SUCCESS,
        format!(
            "loading the same file again succeeds: {}",
            status::describe(s)
        ),
    );
    let time = time_of(ctx);
    ctx.check(
        time == Some(0),
        format!("the hive read from the hive list keeps its unknown load time: {time:?}"),
    );
    // Logoff: held, so the unload is deferred; logon again before it completes.
    let (s, event) = hive::unload_key_ex(super::tracking::SYSTEM_PID, &mount);
    ctx.check(
        s == crate::nt::status::STATUS_PENDING,
        format!("the unload is deferred: {}", status::describe(s)),
    );
    let s = hive::load_hive(super::tracking::SYSTEM_PID, &mount, file);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("the logon's load succeeds: {}", status::describe(s)),
    );
    let answer = view(ctx, h, &mount);
    ctx.check(
        answer.open_keys >= 1 && answer.holders >= 1,
        format!(
            "the leaked key still holds the hive in the driver's answer ({} keys, {} holders)",
            answer.open_keys, answer.holders
        ),
    );
    let time = time_of(ctx);
    ctx.check(
        time == Some(0),
        format!("loaded, at an unknown time: {time:?}"),
    );
    if let Some(k) = leak {
        let _ = hive::close_key(leaker, k);
    }
    let listed = crate::nt::cm::zwreg::hive_list()
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&mount));
    ctx.check(
        listed && event.signalled().is_none(),
        "the cancelled unload does not happen when the leaked key closes",
    );
    let time = time_of(ctx);
    ctx.check(
        time == Some(0),
        format!("the driver still lists the hive as loaded: {time:?}"),
    );
    if let Some(k) = old {
        let _ = hive::close_key(early, k);
    }
    let s = hive::unload_hive(super::tracking::SYSTEM_PID, &mount);
    ctx.check(
        s == STATUS_SUCCESS && event.signalled().is_some(),
        format!(
            "a later unload unloads it and sets the first caller's event: {}",
            status::describe(s)
        ),
    );
    let time = time_of(ctx);
    ctx.check(
        time.is_none(),
        format!("and the driver no longer lists it: {time:?}"),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut driver);
}

/// Audit 19a, F2: the model answered a second unload of a frozen hive with CANNOT_DELETE, or
/// with PENDING and the first caller's event replaced, never to be set.
fn second_unload_too_late(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (mut driver, handle) = load(ctx);
    let Some(h) = handle else { return };
    let mount = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1021";
    let system = super::tracking::SYSTEM_PID;
    let s = hive::load_hive(system, mount, r"\??\C:\Users\u1021\NTUSER.DAT");
    ctx.check(
        s == STATUS_SUCCESS,
        format!("{mount} loads: {}", status::describe(s)),
    );
    let app = spawn(ctx, APP1);
    let kept = open_kept(ctx, app, &format!(r"{mount}\Software\Leak"));
    let (first, event) = hive::unload_key_ex(system, mount);
    let second = hive::unload_hive(system, mount);
    let (third, other) = hive::unload_key_ex(system, mount);
    let too_late = crate::nt::status::STATUS_TOO_LATE;
    ctx.check(
        first == crate::nt::status::STATUS_PENDING && second == too_late && third == too_late,
        format!(
            "deferred, then too late twice: {}, {}, {}",
            status::describe(first),
            status::describe(second),
            status::describe(third)
        ),
    );
    let listed = mounts(ctx, h);
    ctx.check(
        listed.iter().any(|m| m.eq_ignore_ascii_case(mount)),
        format!("the driver still lists the hive, its unload pending: {listed:?}"),
    );
    if let Some(k) = kept {
        let _ = hive::close_key(app, k);
    }
    // The closed subkey's control block holds the root until the delayed dereference (5 s,
    // WRK `cmdelay.c`).
    crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
    let done = event.wait(std::time::Duration::from_secs(10));
    ctx.check(
        done.is_some() && other.signalled().is_none(),
        format!(
            "the first caller's event is set after the last close's delayed dereference, the refused one's never ({done:?}, {:?})",
            other.signalled()
        ),
    );
    let listed = mounts(ctx, h);
    ctx.check(
        listed.iter().all(|m| !m.eq_ignore_ascii_case(mount)),
        format!("the driver no longer lists the hive: {listed:?}"),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut driver);
}

/// Checks that every hive the kernel's hive list names now is among the driver's `known`
/// mounts (`hidden`, the one a read may have skipped, named in the message).
fn check_every_loaded_hive_listed(ctx: &mut Ctx, known: &[String], hidden: &str) {
    let now = crate::nt::cm::zwreg::hive_list();
    ctx.check(
        now.iter()
            .all(|m| known.iter().any(|k| k.eq_ignore_ascii_case(m))),
        format!(
            "every hive still loaded is listed, {hidden} included: {known:?} (kernel: {now:?})"
        ),
    );
}

/// User profile hives loaded before the driver, for the start-up read to find.
fn profiles_loaded_before(ctx: &mut Ctx, sids: &[u32]) -> Vec<String> {
    sids.iter()
        .map(|n| {
            let mount = format!(r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-{n}");
            let s = hive::load_hive(
                super::tracking::SYSTEM_PID,
                &mount,
                &format!(r"\??\C:\Users\u{n}\NTUSER.DAT"),
            );
            ctx.check(
                s == STATUS_SUCCESS,
                format!("{mount} loads before the driver: {}", status::describe(s)),
            );
            mount
        })
        .collect()
}

/// Review 18d: the driver reads the hive list value by value after registering its callback.
/// An unload between its read of a value and its record of that hive was not seen as the
/// hive's (no record yet), and the hive was listed as loaded afterwards; and the unload's
/// deleted value moved the next one down an index, under a read by index that then skipped it.
fn unload_during_seed(ctx: &mut Ctx) {
    boot_hives(ctx);
    let users = profiles_loaded_before(ctx, &[1008, 1009, 1010]);
    let gone = users[0].clone();
    let list = crate::nt::cm::zwreg::hive_list();
    let Some(at) = list.iter().position(|m| m.eq_ignore_ascii_case(&gone)) else {
        ctx.check(false, format!("{gone} is in the hive list: {list:?}"));
        return;
    };
    let hidden = list.get(at + 1).cloned().unwrap_or_default();
    ctx.check(
        !hidden.is_empty(),
        format!("a hive follows {gone} in the list ({hidden}): {list:?}"),
    );
    let unloaded = std::rc::Rc::new(std::cell::Cell::new(None));
    let seen = unloaded.clone();
    let mount = gone.clone();
    crate::nt::cm::zwreg::after_hive_list_value(u32::try_from(at).unwrap_or(0), move || {
        seen.set(Some(hive::unload_hive(super::tracking::SYSTEM_PID, &mount)));
    });
    let (mut d, h) = load(ctx);
    let pending = crate::nt::cm::zwreg::cancel_after_hive_list_value();
    let Some(h) = h else { return };
    ctx.check(
        !pending && unloaded.get() == Some(STATUS_SUCCESS),
        format!(
            "{gone} unloaded right after the driver read its value ({:?})",
            unloaded.get().map(status::describe)
        ),
    );
    let known = mounts(ctx, h);
    ctx.check(
        known.iter().all(|m| !m.eq_ignore_ascii_case(&gone)),
        format!("the unloaded hive is not listed as loaded: {known:?}"),
    );
    check_every_loaded_hive_listed(ctx, &known, &hidden);
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 0,
        format!(
            "the second read was whole: nothing counted as missed ({} names unavailable)",
            st.names_unavailable
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// An unload during every read of the hive list (the driver reads it at most four times),
/// each of a hive the read has just taken, so the value after it moves down an index under
/// the read and is skipped by it: the driver lists no unloaded hive, lists the hive every read
/// saw, and counts what the last read may have skipped.
fn hive_list_keeps_moving(ctx: &mut Ctx) {
    boot_hives(ctx);
    let users = profiles_loaded_before(ctx, &[1011, 1012, 1013, 1014, 1015]);
    let list = crate::nt::cm::zwreg::hive_list();
    let Some(at) = list.iter().position(|m| m.eq_ignore_ascii_case(&users[0])) else {
        ctx.check(false, format!("{} is in the hive list: {list:?}", users[0]));
        return;
    };
    ctx.check(
        list[at..]
            .iter()
            .zip(&users)
            .all(|(l, u)| l.eq_ignore_ascii_case(u)),
        format!("the five follow one another in the list: {list:?}"),
    );
    let shared = std::rc::Rc::new(users.clone());
    unload_then_next(shared, u32::try_from(at).unwrap_or(0), 0);
    let (mut d, h) = load(ctx);
    let pending = crate::nt::cm::zwreg::cancel_after_hive_list_value();
    // The reads the queries below would start (the start-up read was not whole) are refused,
    // so the answers show what the start-up read left: the later read has its own scenarios
    // (`hive-list-unreadable`, `unload-during-late-seed`). The driver still holds the list's
    // key when it unloads, and closes it then (the leak check).
    kernel::with(|k| {
        k.faults.only = Some("ZwEnumerateValueKey");
        k.faults.policy = FaultPolicy::FromNth(1);
    });
    let Some(h) = h else {
        kernel::with(|k| k.faults.policy = FaultPolicy::Off);
        return;
    };
    ctx.check(
        !pending,
        "an unload ran during each of four reads, right after a value's read",
    );
    let known = mounts(ctx, h);
    ctx.check(
        users[..4]
            .iter()
            .all(|u| known.iter().all(|m| !m.eq_ignore_ascii_case(u))),
        format!("no unloaded hive is listed: {known:?}"),
    );
    check_every_loaded_hive_listed(ctx, &known, &users[4]);
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 1,
        format!(
            "the list moved under the last read: counted once as a name not got ({})",
            st.names_unavailable
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
    kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.only = None;
    });
}

/// The start-up read of the hive list is not whole (an unload during each of its four
/// reads, as in `hive-list-keeps-moving`; no fault injected, so a sweep's faults reach the
/// later read); the read the driver makes before the first query runs while a profile
/// unloads right after that read took the profile's value (the start-up
/// `unload-during-seed`, in the later read): it does not list the gone hive, lists the one
/// the shift hid, and ends whole, so the name not got is withdrawn and a hive loaded
/// afterwards gets its load time.
fn unload_during_late_seed(ctx: &mut Ctx) {
    boot_hives(ctx);
    let users = profiles_loaded_before(ctx, &[1019, 1020, 1021, 1022, 1023, 1024, 1025]);
    let list = crate::nt::cm::zwreg::hive_list();
    let Some(first) = list.iter().position(|m| m.eq_ignore_ascii_case(&users[0])) else {
        ctx.check(false, format!("{} is in the hive list: {list:?}", users[0]));
        return;
    };
    unload_then_next(
        std::rc::Rc::new(users.clone()),
        u32::try_from(first).unwrap_or(0),
        0,
    );
    let (mut d, h) = load(ctx);
    let moved = !crate::nt::cm::zwreg::cancel_after_hive_list_value();
    ctx.check(
        moved,
        "an unload ran during each of the four start-up reads: the start-up seed is not whole",
    );
    let Some(h) = h else { return };
    let gone = users[4].clone();
    let list = crate::nt::cm::zwreg::hive_list();
    let Some(at) = list.iter().position(|m| m.eq_ignore_ascii_case(&gone)) else {
        ctx.check(false, format!("{gone} is in the hive list: {list:?}"));
        return;
    };
    let hidden = list.get(at + 1).cloned().unwrap_or_default();
    let unloaded = std::rc::Rc::new(std::cell::Cell::new(None));
    let seen = unloaded.clone();
    let mount = gone.clone();
    // And a second request while the read runs (another client's): it neither waits nor
    // reads the list again (one read at a time), and answers with the seed not yet whole.
    let during = std::rc::Rc::new(std::cell::Cell::new(None));
    let said = during.clone();
    crate::nt::cm::zwreg::after_hive_list_value(u32::try_from(at).unwrap_or(0), move || {
        seen.set(Some(hive::unload_hive(super::tracking::SYSTEM_PID, &mount)));
        // Past the driver's interval, so that only the one-read-at-a-time rule holds it back.
        crate::nt::ke::timer::advance(1_100);
        let calls = kernel::with(|k| k.zwreg.enumerations);
        let r = io::device_io_control(
            h,
            query_ioctl(QueryKind::Stats),
            &query(QueryKind::Stats, ""),
            64 * 1024,
            0,
        );
        let st = (r.status == STATUS_SUCCESS)
            .then(|| wire::decode::<Stats>(&r.output[..r.information]).ok())
            .flatten();
        let read = kernel::with(|k| k.zwreg.enumerations) != calls;
        said.set(Some((st.map(|s| s.names_unavailable), read)));
    });
    let st = stats(ctx, h);
    ctx.check(
        during.get() == Some((Some(1), false)),
        format!(
            "a request during the late read answers at once, without reading the list, with the seed not yet whole (names unavailable, list read: {:?})",
            during.get()
        ),
    );
    let pending = crate::nt::cm::zwreg::cancel_after_hive_list_value();
    ctx.check(
        !pending && unloaded.get() == Some(STATUS_SUCCESS),
        format!(
            "{gone} unloaded right after the late read took its value ({:?})",
            unloaded.get().map(status::describe)
        ),
    );
    let known = mounts(ctx, h);
    ctx.check(
        known.iter().all(|m| !m.eq_ignore_ascii_case(&gone)),
        format!("the hive unloaded during the late read is not listed as loaded: {known:?}"),
    );
    check_every_loaded_hive_listed(ctx, &known, &hidden);
    ctx.check(
        st.names_unavailable == 0,
        format!(
            "the late read ended whole: the name not got is withdrawn ({} names unavailable)",
            st.names_unavailable
        ),
    );
    late_seed_vouches(ctx, h, 1202, &[users[6].as_str()]);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Read `k` of the hive list unloads `users[k]` right after taking its value (at index `at`):
/// `users[k + 1]` moves into that index and the read goes on past it; four reads in all.
fn unload_then_next(users: std::rc::Rc<Vec<String>>, at: u32, k: usize) {
    crate::nt::cm::zwreg::after_hive_list_value(at, move || {
        let _ = hive::unload_hive(super::tracking::SYSTEM_PID, &users[k]);
        if k + 1 < 4 {
            unload_then_next(users, at, k + 1);
        }
    });
}

/// A deferred unload (`NtUnloadKeyEx`, pending before the driver started) completes while the
/// driver reads the hive list: the last key holding the hive closes right after the read of
/// the hive's value, the kernel unloads it and deletes its value (WRK `cmdelete.c`
/// CmpLateUnloadHiveWorker → CmUnloadKey → `cmhvlist.c` CmpRemoveFromHiveFileList), and no
/// notification tells the driver. The next value moves down an index under the read: the
/// driver reads again until two reads agree, so the hive the shift hid is listed.
fn deferred_unload_during_seed(ctx: &mut Ctx) {
    boot_hives(ctx);
    let users = profiles_loaded_before(ctx, &[1016, 1017, 1018]);
    let holder = spawn(ctx, APP1);
    let key = format!(r"{}\Software", users[0]);
    let kept = open_kept(ctx, holder, &key);
    let (s, event) = hive::unload_key_ex(super::tracking::SYSTEM_PID, &users[0]);
    ctx.check(
        s == crate::nt::status::STATUS_PENDING,
        format!("the unload is deferred: {}", status::describe(s)),
    );
    let list = crate::nt::cm::zwreg::hive_list();
    let Some(at) = list.iter().position(|m| m.eq_ignore_ascii_case(&users[0])) else {
        ctx.check(false, format!("{} is in the hive list: {list:?}", users[0]));
        return;
    };
    let hidden = list.get(at + 1).cloned().unwrap_or_default();
    if let Some(k) = kept {
        crate::nt::cm::zwreg::after_hive_list_value(u32::try_from(at).unwrap_or(0), move || {
            let _ = hive::close_key(holder, k);
            // The closed key's control block holds the root until the delayed dereference
            // (5 s, WRK `cmdelay.c`): a clock tick past it, then the late unload runs on a
            // system worker, and the read goes on once it is done.
            crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
            let _ = event.wait(std::time::Duration::from_secs(10));
        });
    }
    let (mut d, h) = load(ctx);
    let pending = crate::nt::cm::zwreg::cancel_after_hive_list_value();
    let Some(h) = h else { return };
    let now = crate::nt::cm::zwreg::hive_list();
    ctx.check(
        !pending && !now.iter().any(|m| m.eq_ignore_ascii_case(&users[0])),
        format!("the hive unloaded during the read: {now:?}"),
    );
    let known = mounts(ctx, h);
    check_every_loaded_hive_listed(ctx, &known, &hidden);
    let st = stats(ctx, h);
    ctx.check(
        st.names_unavailable == 0,
        format!(
            "the last two reads agreed: nothing counted as missed ({})",
            st.names_unavailable
        ),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

/// Losses are counted against the hive they concern and age out with it.
fn loss_ages_out(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let a = spawn(ctx, APP1);
    // A path longer than the tracker's largest name block (any user can make one).
    let long: String = (0..12).fold(SOFTWARE.to_owned(), |mut p, i| {
        p.push('\\');
        p.push_str(&format!("{i:02}").repeat(100));
        p
    });
    let long_key = open_kept(ctx, a, &long);
    let st = stats(ctx, h);
    ctx.check(
        st.names_truncated >= 1,
        format!(
            "the long name was cut (names_truncated {})",
            st.names_truncated
        ),
    );
    let profile = view(ctx, h, USER);
    let software = view(ctx, h, SOFTWARE);
    ctx.check(
        profile.completeness.nothing_lost() && software.completeness.nothing_lost(),
        format!(
            "a cut name is flagged on its key: no hive's report is incomplete for it ({:?}, {:?})",
            profile.completeness, software.completeness
        ),
    );
    let b = spawn(ctx, APP2);
    let lost_key = format!(r"{USER}\Software\Lost");
    ensure_parents(b, &lost_key);
    let before = crate::machine::cpu::system_time();
    let lost = failing(None, || hive::open_key(b, &lost_key, KEY_READ, true));
    ctx.check(lost.is_ok(), format!("the open itself succeeds: {lost:?}"));
    let profile = view(ctx, h, USER);
    let classes = view(ctx, h, CLASSES);
    ctx.check(
        profile.completeness.hive_lost >= 1
            && profile.completeness.hive_lost_since >= before
            && profile.completeness.global_lost == 0,
        format!(
            "the lost open is counted against the profile, with its time: {:?}",
            profile.completeness
        ),
    );
    let software = view(ctx, h, SOFTWARE);
    ctx.check(
        classes.completeness.nothing_lost() && software.completeness.nothing_lost(),
        format!("and against no other hive: {:?}", classes.completeness),
    );
    if let Ok(k) = lost {
        let _ = hive::close_key(b, k);
    }
    if let Some(k) = long_key {
        let _ = hive::close_key(a, k);
    }
    unload_all(ctx, &[USER, CLASSES]);
    load_profile(ctx);
    let profile = view(ctx, h, USER);
    ctx.check(
        profile.completeness.nothing_lost(),
        format!(
            "unloaded and loaded again, the profile starts with nothing lost: {:?}",
            profile.completeness
        ),
    );
    finish(ctx, d, h, &[a, b]);
}

/// The wait-free answer says what it could not see.
fn wait_completeness(ctx: &mut Ctx) {
    boot_hives(ctx);
    load_profile(ctx);
    let early = spawn(ctx, APP2);
    let kept = open_kept(ctx, early, &format!(r"{USER}\Software\Policies"));
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    let w = wait_now(ctx, h, USER);
    ctx.check(
        w.is_some_and(|w| w.outcome == WaitOutcome::Free && w.completeness.tracking_since != 0),
        format!("free of what the driver tracks, with since when it tracks: {w:?}"),
    );
    let b = spawn(ctx, APP1);
    let key = format!(r"{CLASSES}\CLSID\Lost");
    ensure_parents(b, &key);
    let lost = failing(None, || hive::open_key(b, &key, KEY_READ, true));
    let w = wait_now(ctx, h, CLASSES);
    ctx.check(
        w.is_some_and(|w| w.completeness.hive_lost >= 1 && !w.completeness.nothing_lost()),
        format!("a wait on the hive that lost an open says so: {w:?}"),
    );
    let w = wait_now(ctx, h, SOFTWARE);
    ctx.check(
        w.is_some_and(|w| w.completeness.nothing_lost()),
        format!("a wait on another hive does not: {w:?}"),
    );
    if let Ok(k) = lost {
        let _ = hive::close_key(b, k);
    }
    if let Some(k) = kept {
        let _ = hive::close_key(early, k);
    }
    finish(ctx, d, h, &[early, b]);
}

/// `CmCallbackGetKeyObjectIDEx` can fail (docs); the open is then counted against the hive its
/// path names, and no hive with an empty mount point appears.
fn nameless_open(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let a = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\Nameless");
    ensure_parents(a, &key);
    let opened = failing(Some("CmCallbackGetKeyObjectIDEx"), || {
        hive::open_key(a, &key, KEY_READ, true)
    });
    ctx.check(opened.is_ok(), format!("the open succeeds: {opened:?}"));
    let st = stats(ctx, h);
    ctx.check(
        st.opens_dropped_no_name == 1,
        format!(
            "the kernel gave no name once (opens_dropped_no_name {})",
            st.opens_dropped_no_name
        ),
    );
    let all = mounts(ctx, h);
    ctx.check(
        all.iter().all(|m| !m.is_empty()),
        format!("no hive with an empty mount point: {all:?}"),
    );
    let profile = view(ctx, h, USER);
    ctx.check(
        profile.completeness.hive_lost == 1 && profile.completeness.global_lost == 0,
        format!("counted against the profile, the hive its path names: {profile:?}"),
    );
    let classes = view(ctx, h, CLASSES);
    ctx.check(
        classes.completeness.nothing_lost(),
        format!("not against another hive: {classes:?}"),
    );
    let w = wait_now(ctx, h, USER);
    ctx.check(
        w.is_some_and(|w| !w.completeness.nothing_lost()),
        format!("a wait on the profile does not call it free and complete: {w:?}"),
    );
    if let Ok(k) = opened {
        let _ = hive::close_key(a, k);
    }
    finish(ctx, d, h, &[a]);
}

/// A process-creation notification whose image path (over 256 UTF-16 units) needs a pool
/// copy, with that one allocation failing: the driver records the process without an image
/// and must count the lost name, so reports say a name is missing. Review 16 (2026-12-05):
/// it went uncounted here, as it had in `name_current`.
fn long_image_low_memory(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let before = stats(ctx, h).images_dropped_no_memory;
    let image = format!(
        r"\Device\HarddiskVolume2\Program Files\{}\agent.exe",
        "VeryLongVendorDirectoryName\\".repeat(12)
    );
    ctx.check(
        image.len() > 256,
        format!("a long image path ({} units)", image.len()),
    );
    kernel::with(|k| {
        k.faults.calls = 0;
        k.faults.injected.clear();
        k.faults.pool_only = true;
        k.faults.policy = FaultPolicy::Nth(1);
    });
    let pid = spawn(ctx, &image);
    let injected = kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.pool_only = false;
        k.faults.injected.clone()
    });
    ctx.check(
        injected.len() == 1,
        format!("one pool allocation failed, in the creation notification: {injected:?}"),
    );
    let after = stats(ctx, h).images_dropped_no_memory;
    ctx.check(
        after == before + 1,
        format!("the lost image is counted: images_dropped_no_memory {before} -> {after}"),
    );
    finish(ctx, d, h, &[pid]);
}

/// Docs, "IRP_MJ_CLEANUP": the last handle is closed "but, due to outstanding I/O requests,
/// [the file object] might not have been released": a `DeviceIoControl` already past its
/// handle lookup on another thread is dispatched after the cleanup (the model:
/// `io::cleanup_keeping_reference`). A wait queued then would pend with no handle left to
/// cancel it, and IRP_MJ_CLOSE (and so a service stop) would never come.
fn wait_after_cleanup(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let holder = spawn(ctx, APP2);
    let kept = open_kept(ctx, holder, &format!(r"{USER}\Software\Policies"));
    let waiter = match ctx.open(
        WIN32_DEVICE_PATH,
        Caller::Admin,
        GENERIC_READ | GENERIC_WRITE,
    ) {
        Ok(w) => w,
        Err(s) => {
            ctx.check(
                false,
                format!("open a second handle: {}", status::describe(s)),
            );
            return;
        }
    };
    io::cleanup_keeping_reference(waiter);
    match super::wait_free::send(waiter, USER, protocol::wait::WaitFreeRequest::NO_TIMEOUT) {
        IoctlCall::Done(r) => ctx.check(
            r.status == STATUS_CANCELLED && r.output.is_empty(),
            format!(
                "the wait sent after the cleanup completes at once, cancelled: {}",
                status::describe(r.status)
            ),
        ),
        IoctlCall::Pending(mut p) => {
            ctx.check(
                false,
                "the wait sent after the cleanup pends with no handle left to cancel it",
            );
            let _ = p.cancel();
            let _ = p.poll();
        }
    }
    io::release_reference(waiter);
    if let Some(k) = kept {
        let _ = hive::close_key(holder, k);
    }
    finish(ctx, d, h, &[holder]);
}

const STATUS_CANCELLED: crate::nt::status::NtStatus = 0xC000_0120_u32.cast_signed();

/// Docs, `CmUnRegisterCallback`, "Return value": it can fail. The callback then stays
/// registered and Windows goes on calling it: a driver that freed its tracker, or let its
/// image go (ReactOS `IopDeleteDriver` unmaps it at the driver object's last reference),
/// would crash the machine at the next registry call.
fn unregister_fails(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    load_profile(ctx);
    let holder = spawn(ctx, APP2);
    let kept = open_kept(ctx, holder, &format!(r"{USER}\Software\Policies"));
    io::close(h);
    let ran = failing(Some("CmUnRegisterCallback"), || d.unload());
    let injected = kernel::with(|k| k.faults.injected.len());
    ctx.check(
        ran && injected == 1,
        format!("DriverUnload ran and CmUnRegisterCallback failed ({injected} injected)"),
    );
    let (registered, referenced) = kernel::with(|k| {
        (
            k.registry.callbacks.iter().any(|c| !c.emulated),
            k.objects.references.values().any(|n| *n > 0),
        )
    });
    ctx.check(registered, "the callback is still registered");
    ctx.check(
        referenced,
        "the driver keeps a reference on its driver object, so its image stays mapped",
    );
    // Registry traffic after the unload: the callback runs in the kept image on the kept
    // tracker (special pool makes any freed block a bugcheck).
    let other = spawn(ctx, APP1);
    let key = format!(r"{USER}\Control Panel\Desktop");
    let opened = open_kept(ctx, other, &key);
    if let Some(k) = opened {
        let _ = hive::close_key(other, k);
    }
    if let Some(k) = kept {
        let _ = hive::close_key(holder, k);
    }
    process::exit_process(other);
    process::exit_process(holder);
    let s = hive::unload_hive(super::tracking::SYSTEM_PID, USER);
    ctx.check(
        s == STATUS_SUCCESS,
        format!(
            "the profile still unloads (nothing pinned): {}",
            status::describe(s)
        ),
    );
}

/// `RegLoadKey(HKEY_USERS, "S-1-5-21-…", file)` (ReactOS `RegLoadKeyW`: `NtLoadKey` with
/// `RootDirectory` = the HKU handle): RegNtPreLoadKey's `KeyName` is relative to its `Object`
/// (the model: `td-relative-load`). The driver must record the full mount point, or the
/// profile's keys are filed under an implicit hive and a bogus mount named by the bare SID
/// is left in the table (one per profile load).
fn relative_load(ctx: &mut Ctx) {
    relative_load_read_as(ctx, hive::LoadObject::RootDirectory);
}

/// [`relative_load`] under the other reading of the load's `Object` (audit 16b, F5): the
/// root key of the hive being loaded, whose name is already the full mount. Joining it with
/// `KeyName` again recorded `\REGISTRY\USER\S-1-5-21-…\S-1-5-21-…`: the profile's keys were
/// filed under `\REGISTRY\USER` and its unload matched nothing.
fn relative_load_hive_root(ctx: &mut Ctx) {
    relative_load_read_as(ctx, hive::LoadObject::HiveRoot);
}

/// [`relative_load`] with no `Object` at all (`hive::LoadObject::Null`): the driver cannot
/// place the hive, so it records no mount (the name counted as unavailable) rather than the
/// bare relative name, and the profile's keys are filed under the implicit hive their paths
/// name, which no report calls complete.
fn relative_load_null_object(ctx: &mut Ctx) {
    relative_load_read_as(ctx, hive::LoadObject::Null);
}

/// `RegLoadKey(HKU, sid)` and `RegLoadKey(HKU, "USER")` by System.
fn load_relative(ctx: &mut Ctx, sid: &str) {
    let system = super::tracking::SYSTEM_PID;
    let hku = hive::open_key(system, r"\REGISTRY\USER", KEY_READ, false);
    ctx.check(hku.is_ok(), format!("open HKU: {hku:?}"));
    if let Ok(hku) = hku {
        for (name, file) in [
            (sid, r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT"),
            ("USER", r"\Device\HarddiskVolume2\Users\twin\NTUSER.DAT"),
        ] {
            let s = hive::load_key(system, hku, name, file);
            ctx.check(
                s == STATUS_SUCCESS,
                format!("RegLoadKey(HKU, {name}): {}", status::describe(s)),
            );
        }
        let _ = hive::close_key(system, hku);
    }
}

/// A mount [`relative_load_read_as`]'s loads must not leave: the bare relative name, or the
/// relative name joined twice.
fn bogus_mount(mount: &str, sid: &str) -> bool {
    let (m, sid) = (mount.to_ascii_uppercase(), sid.to_ascii_uppercase());
    m == sid
        || m == "USER"
        || m.ends_with(&format!(r"\{sid}\{sid}"))
        || m.ends_with(r"\USER\USER\USER")
}

/// The driver's hives as (mount, file, load time).
fn hive_rows(ctx: &mut Ctx, h: FileHandle) -> Vec<(String, String, u64)> {
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Hives),
        &query(QueryKind::Hives, ""),
        64 * 1024,
    );
    wire::decode::<Page<'_, Hives>>(&r.output[..r.information])
        .map(|p| {
            p.records()
                .map(|h| (h.mount.to_string(), h.file.to_string(), h.loaded_time))
                .collect()
        })
        .unwrap_or_default()
}

/// The driver's hives as (mount, file).
fn hive_files(ctx: &mut Ctx, h: FileHandle) -> Vec<(String, String)> {
    hive_rows(ctx, h)
        .into_iter()
        .map(|(m, f, _)| (m, f))
        .collect()
}

/// The driver's hives as (mount, load time).
fn hive_times(ctx: &mut Ctx, h: FileHandle) -> Vec<(String, u64)> {
    hive_rows(ctx, h)
        .into_iter()
        .map(|(m, _, t)| (m, t))
        .collect()
}

#[allow(clippy::many_single_char_names)] // d, h, s, a: driver, device, status, process
fn relative_load_read_as(ctx: &mut Ctx, reading: hive::LoadObject) {
    hive::set_load_object(reading);
    boot_hives(ctx);
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    let placed = reading != hive::LoadObject::Null;
    let system = super::tracking::SYSTEM_PID;
    let sid = &USER[r"\REGISTRY\USER\".len()..];
    // A hive named like its root directory's last component (`\REGISTRY\USER` + `USER`):
    // the object's name then ends with `\KeyName` under the root directory reading too.
    let twin = r"\REGISTRY\USER\USER";
    let unavailable = stats(ctx, h).names_unavailable;
    load_relative(ctx, sid);
    let all = hive_times(ctx, h);
    let time_of = |mount: &str| {
        all.iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(mount))
            .map(|&(_, t)| t)
    };
    ctx.check(
        !all.iter().any(|(m, _)| bogus_mount(m, sid)),
        format!("no bogus mount: {all:?}"),
    );
    if placed {
        for mount in [USER, twin] {
            let t = time_of(mount);
            ctx.check(
                t.is_some_and(|t| t != 0),
                format!(
                    "the driver records {mount}, loaded while it tracked (a load time that vouches for it): {t:?}"
                ),
            );
        }
    } else {
        ctx.check(
            time_of(USER).is_none() && time_of(twin).is_none(),
            format!("no mount recorded for a load it cannot place: {all:?}"),
        );
        let now = stats(ctx, h).names_unavailable;
        ctx.check(
            now == unavailable + 2,
            format!("the two loads are counted as names it could not get ({unavailable} -> {now})"),
        );
    }
    let a = spawn(ctx, APP1);
    let key = format!(r"{USER}\Software\Relative");
    let kept = open_kept(ctx, a, &key);
    let v = view(ctx, h, USER);
    ctx.check(
        v.open_keys == 1 && v.holders == 1,
        format!("an open in the profile is filed under its hive: {v:?}"),
    );
    if !placed {
        let t = hive_times(ctx, h)
            .into_iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(USER))
            .map(|(_, t)| t);
        ctx.check(
            t == Some(0),
            format!("that hive, known only from its keys' paths, has no load time: {t:?}"),
        );
    }
    if let Some(k) = kept {
        let _ = hive::close_key(a, k);
    }
    process::exit_process(a);
    for mount in [USER, twin] {
        let s = hive::unload_hive(system, mount);
        ctx.check(
            s == STATUS_SUCCESS,
            format!("{mount} unloads: {}", status::describe(s)),
        );
    }
    let all = mounts(ctx, h);
    ctx.check(
        all.iter().all(|m| {
            let m = m.to_ascii_uppercase();
            !m.contains(&sid.to_ascii_uppercase()) && !m.ends_with(r"\USER\USER")
        }),
        format!("their unloads are matched: no mount of either is left: {all:?}"),
    );
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}
