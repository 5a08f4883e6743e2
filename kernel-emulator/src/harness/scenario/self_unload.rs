//! hivetrack.sys scenarios of hives that unload with no unload notification (issue 12, "Hive
//! lifecycle as Windows has it"): application hives, which unload by themselves when their
//! last key object goes (`app-hive`), and deferred unloads, accepted as STATUS_PENDING and
//! completed later (`deferred-unload`). The model of both is `td-app-hive` and
//! `td-deferred-unload` (sources in the README's "Hive lifecycle and processes").

use protocol::{
    hives::Hives,
    holders::{HiveState, Holders},
    ioctl::query_ioctl,
    page::Page,
    request::QueryKind,
    wire,
};

use super::tracking::{APP1, APP2, CLASSES, KEY_READ, SYSTEM_PID, USER, boot_hives, spawn};
use super::truth::{load, open_kept, query, stats, view};
use super::{Ctx, Scenario};
use crate::nt::cm::hive;
use crate::nt::io::{self, FileHandle};
use crate::nt::ps::process;
use crate::nt::status::{self, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING, STATUS_SUCCESS};

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "app-hive",
            "application hives (\\REGISTRY\\A\\{GUID}) unload by themselves with no notification: the driver's record goes with the hive's last tracked key (the root handle's, announced in the load), so 120 app-hive loads with a subkey and 120 with the root only leave the hive table as it was",
            app_hive,
        ),
        Scenario::hivetrack(
            "deferred-unload",
            "NtUnloadKeyEx on a held hive is accepted as STATUS_PENDING and completes with no notification, up to 5 s after the last key's close: the driver reports the hive unload-pending (hives and holders) also after its last key, while Windows still has it loaded until the delayed dereference runs, and drops it when its read of the hive list before a query finds the value gone, whether or not it saw every key of the hive, and also when no query ran while the unload was pending",
            deferred_unload,
        ),
    ]
}

/// Every hive the driver reports: (mount, state).
fn hive_states(ctx: &mut Ctx, h: FileHandle) -> Vec<(String, HiveState)> {
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Hives),
        &query(QueryKind::Hives, ""),
        256 * 1024,
    );
    let page = wire::decode::<Page<'_, Hives>>(&r.output[..r.information]);
    ctx.check(
        page.as_ref().is_ok_and(|p| p.info.done()),
        format!(
            "the hives answer decodes in one page: {:?}",
            page.as_ref().map(|p| p.records().count())
        ),
    );
    page.map(|p| {
        p.records()
            .map(|h| (h.mount.to_string(), h.state))
            .collect()
    })
    .unwrap_or_default()
}

fn state_of(ctx: &mut Ctx, h: FileHandle, mount: &str) -> Option<HiveState> {
    hive_states(ctx, h)
        .into_iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(mount))
        .map(|(_, s)| s)
}

#[allow(clippy::many_single_char_names)] // d, h: driver, device; p, q: processes
fn app_hive(ctx: &mut Ctx) {
    boot_hives(ctx);
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    let before = stats(ctx, h).hives_tracked;
    let p = spawn(ctx, APP1);
    let q = spawn(ctx, APP2);
    let mut kept_after = 0;
    let mut forgotten = 0;
    let loads = 120;
    for n in 0..loads {
        let file = format!(r"\??\C:\ProgramData\Editor\state{n}.dat");
        let Ok((root, mount)) = hive::load_app_key(p, &file) else {
            ctx.check(false, format!("RegLoadAppKey({file}) failed"));
            break;
        };
        // RegOpenKeyEx(root, "Settings"); the root handle's open was announced in the load
        // (td-app-hive).
        let key = hive::open_key_at(p, Some(root), "Settings", KEY_READ, true);
        ctx.check(key.is_ok(), format!("open {mount}\\Settings: {key:?}"));
        let key = key.ok();
        if n == 0 {
            let v = view(ctx, h, &mount);
            ctx.check(
                v.open_keys == 2 && v.holders == 1,
                format!(
                    "while a key of it is open the app hive is reported with it and the root: {v:?}"
                ),
            );
            let st = state_of(ctx, h, &mount);
            ctx.check(
                st == Some(HiveState::Loaded),
                format!("the app hive is listed, loaded: {st:?}"),
            );
        }
        if let Some(k) = key {
            let _ = hive::close_key(p, k);
        }
        if n == 0 {
            // The caller's root handle still keeps the hive loaded: it is reported.
            let v = view(ctx, h, &mount);
            ctx.check(
                v.open_keys == 1 && v.holders == 1,
                format!(
                    "with only the root handle left, the app hive is reported held by it: {v:?}"
                ),
            );
        }
        let _ = hive::close_key(p, root);
        let gone =
            !crate::nt::kernel::with(|k| k.hives.hives.contains_key(&mount.to_ascii_uppercase()));
        if n == 0 {
            ctx.check(gone, "the app hive unloaded by itself (model)");
        }
        if state_of(ctx, h, &mount).is_some() {
            kept_after += 1;
        } else {
            forgotten += 1;
        }
    }
    ctx.check(
        kept_after == 0 && forgotten == loads,
        format!("every app hive forgotten with its last tracked key: {forgotten} of {loads} ({kept_after} kept)"),
    );
    let after = stats(ctx, h).hives_tracked;
    ctx.check(
        after == before,
        format!("the hive table is as before {loads} app-hive loads: {before} → {after} hives"),
    );
    // App hives whose only key is the root handle the load opened: each goes with it. (App
    // hives kept by losses with no tracked key are capped at `IDLE_APP_HIVES` per shard:
    // tracker/tests/lifecycle.rs; before 2026-12-05 the model announced no root open and this
    // loop exercised that cap.)
    for n in 0..loads {
        let file = format!(r"\??\C:\ProgramData\Sync\cache{n}.dat");
        if let Ok((root, _)) = hive::load_app_key(q, &file) {
            let _ = hive::close_key(q, root);
        }
    }
    let idle = stats(ctx, h).hives_tracked - after;
    ctx.check(
        idle == 0,
        format!("{loads} app hives opened only through their root leave no record: {idle}"),
    );
    ctx.say(format!(
        "hives tracked: {before} at start, {after} after {loads} app hives with a subkey, +{idle} after {loads} with the root only"
    ));
    process::exit_process(p);
    process::exit_process(q);
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}

fn pending(ctx: &mut Ctx, mount: &str) -> Option<hive::UnloadEvent> {
    let (r, event) = hive::unload_key_ex(SYSTEM_PID, mount);
    ctx.check(
        r == STATUS_PENDING,
        format!("NtUnloadKeyEx({mount}) while held: {}", status::describe(r)),
    );
    (r == STATUS_PENDING).then_some(event)
}

/// The holders answer for `mount` (summaries): its status, and the hive's state, open keys
/// and holders when it succeeded.
fn holders_of(ctx: &mut Ctx, h: FileHandle, mount: &str) -> (i32, Option<(HiveState, u64, u32)>) {
    let r = ctx.ioctl_checked(
        h,
        query_ioctl(QueryKind::Holders),
        &query(QueryKind::Holders, mount),
        64 * 1024,
    );
    let page = (r.status == STATUS_SUCCESS)
        .then(|| wire::decode::<Page<'_, Holders>>(&r.output[..r.information]).ok())
        .flatten();
    (
        r.status,
        page.map(|p| (p.prefix.state, p.prefix.open_keys, p.prefix.holders)),
    )
}

/// The window after the profile's last key closed: the closed subkey's control block holds
/// the root until the delayed dereference (5 s, WRK `cmdelay.c`), so Windows still has the
/// hive loaded and its file in use. The driver, which saw every key, keeps reporting it
/// unload-pending with no key open; until 2026-12-06 it forgot the hive at the last close,
/// so `hives` left it out and `holders` answered "unknown hive" for a loaded hive.
fn unload_window(ctx: &mut Ctx, h: FileHandle, event: Option<&hive::UnloadEvent>) {
    // Waited on briefly: the old model's late unload ran on a detached worker thread.
    let still = event.is_some_and(|e| e.wait(std::time::Duration::from_millis(300)).is_none())
        && hive::hive_list()
            .iter()
            .any(|(m, _)| m.eq_ignore_ascii_case(USER));
    ctx.check(
        still,
        "after the last close the profile is still loaded and in the hive list (its file in use) until the delayed dereference runs (model)",
    );
    let st = state_of(ctx, h, USER);
    ctx.check(
        st == Some(HiveState::UnloadPending),
        format!("in that window the driver still lists the profile, unload-pending: {st:?}"),
    );
    let (status, answer) = holders_of(ctx, h, USER);
    ctx.check(
        answer == Some((HiveState::UnloadPending, 0, 0)),
        format!(
            "and holders answers for it: unload-pending, no key open ({}, {answer:?})",
            status::describe(status)
        ),
    );
}

/// After a deferred unload completed (no notification): the driver's next query reads the
/// hive list (`driver/src/reseed.rs`, at most once a second: the scenario moved the clock
/// 5 s), finds the hive's value gone (the late unload deletes it, `td-deferred-unload`) and
/// drops the record: not listed, and holders says "unknown hive".
fn gone_after_the_late_unload(ctx: &mut Ctx, h: FileHandle, mount: &str, what: &str) {
    let st = state_of(ctx, h, mount);
    ctx.check(
        st.is_none(),
        format!("{what}: the late unload took its value out of the hive list, so the driver's next read drops it: {st:?}"),
    );
    let (status, answer) = holders_of(ctx, h, mount);
    ctx.check(
        status == STATUS_OBJECT_NAME_NOT_FOUND && answer.is_none(),
        format!(
            "{what}: holders answers unknown hive: {} {answer:?}",
            status::describe(status)
        ),
    );
}

/// A second profile, loaded while the driver tracks, whose deferred unload completes with no
/// query in between: the normal logoff (nobody asks within the 5 s). No read of the hive list
/// saw its value, but its load was notified, and Windows adds the value before that post
/// (WRK `cmapi.c` `CmLoadKey`: `CmpAddToHiveFileList`), so the first read after the late
/// unload drops it. Until review 21a (M1) only a read marked a hive listed: this one stayed
/// unload-pending ("loaded, file in use") for good, and every query re-read the list.
fn quiet_logoff(ctx: &mut Ctx, h: FileHandle) {
    const USER2: &str = r"\REGISTRY\USER\S-1-5-21-1-2-3-1002";
    let s = hive::load_hive(
        SYSTEM_PID,
        USER2,
        r"\Device\HarddiskVolume2\Users\kemu2\NTUSER.DAT",
    );
    ctx.check(s == STATUS_SUCCESS, "a second profile loaded");
    let p = spawn(ctx, APP2);
    let key = open_kept(ctx, p, &format!(r"{USER2}\Software\Pending"));
    let event = pending(ctx, USER2);
    if let Some(k) = key {
        let _ = hive::close_key(p, k);
    }
    crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
    let done = event.and_then(|e| e.wait(std::time::Duration::from_secs(5)));
    ctx.check(
        done.is_some(),
        "with no query in between, its unload completed 5 s after the last close (model)",
    );
    gone_after_the_late_unload(ctx, h, USER2, "the second profile (no query while pending)");
    process::exit_process(p);
}

#[allow(clippy::many_single_char_names)] // d, h: driver, device; p, q: processes; s: status
fn deferred_unload(ctx: &mut Ctx) {
    boot_hives(ctx);
    // The classes hive is mounted, and a key of it opened, before the driver starts.
    let early = spawn(ctx, APP1);
    let classes_file =
        r"\Device\HarddiskVolume2\Users\kemu\AppData\Local\Microsoft\Windows\UsrClass.dat";
    let s = hive::load_hive(SYSTEM_PID, CLASSES, classes_file);
    ctx.check(
        s == STATUS_SUCCESS,
        "classes hive mounted before the driver",
    );
    let early_key = open_kept(ctx, early, &format!(r"{CLASSES}\CLSID"));
    let (mut d, h) = load(ctx);
    let Some(h) = h else { return };
    // The profile is loaded while the driver tracks: it sees every key of it.
    let s = hive::load_hive(
        SYSTEM_PID,
        USER,
        r"\Device\HarddiskVolume2\Users\kemu\NTUSER.DAT",
    );
    ctx.check(s == STATUS_SUCCESS, "profile loaded");
    let p = spawn(ctx, APP2);
    let key = open_kept(ctx, p, &format!(r"{USER}\Software\Pending"));
    let event = pending(ctx, USER);
    let st = state_of(ctx, h, USER);
    ctx.check(
        st == Some(HiveState::UnloadPending),
        format!("the profile is reported unload-pending: {st:?}"),
    );
    let v = view(ctx, h, USER);
    ctx.check(
        v.open_keys == 1 && v.holders == 1,
        format!("its holder is still reported: {v:?}"),
    );
    if let Some(k) = key {
        let _ = hive::close_key(p, k);
    }
    unload_window(ctx, h, event.as_ref());
    crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
    let done = event.and_then(|e| e.wait(std::time::Duration::from_secs(5)));
    ctx.check(
        done.is_some(),
        "5 s after the last close (the delayed dereference) the unload completed (model)",
    );
    gone_after_the_late_unload(ctx, h, USER, "the profile");
    quiet_logoff(ctx, h);
    // The classes hive: keys opened before tracking may hold it, so the driver cannot vouch
    // for the unload completing when its own last key goes.
    let q = spawn(ctx, APP2);
    let tracked = open_kept(ctx, q, &format!(r"{CLASSES}\Tracked"));
    let event = pending(ctx, CLASSES);
    if let Some(k) = tracked {
        let _ = hive::close_key(q, k);
    }
    ctx.check(
        event.as_ref().is_some_and(|e| e.signalled().is_none()),
        "the key opened before the driver still holds the classes hive (model)",
    );
    let st = state_of(ctx, h, CLASSES);
    ctx.check(
        st == Some(HiveState::UnloadPending),
        format!(
            "after the driver's last key the classes hive stays unload-pending, never 'unloaded': {st:?}"
        ),
    );
    if let Some(k) = early_key {
        let _ = hive::close_key(early, k);
    }
    crate::nt::ke::timer::advance(hive::DELAY_DEREF_SECONDS * 1_000);
    let done = event.and_then(|e| e.wait(std::time::Duration::from_secs(5)));
    ctx.check(
        done.is_some(),
        "5 s after the early key's close (the delayed dereference) the unload completed (model)",
    );
    // Kept unload-pending for good until 2026-12-06: nothing said the unload completed.
    gone_after_the_late_unload(ctx, h, CLASSES, "the classes hive");
    // A new load at the mount: the pending unload is over, a fresh record.
    let s = hive::load_hive(SYSTEM_PID, CLASSES, classes_file);
    ctx.check(s == STATUS_SUCCESS, "classes hive loaded again");
    let st = state_of(ctx, h, CLASSES);
    ctx.check(
        st == Some(HiveState::Loaded),
        format!("reloaded: reported loaded ({st:?})"),
    );
    let s = hive::unload_hive(SYSTEM_PID, CLASSES);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("classes hive unloads: {}", status::describe(s)),
    );
    for pid in [early, p, q] {
        process::exit_process(pid);
    }
    io::close(h);
    ctx.unload_and_check_clean(&mut d);
}
