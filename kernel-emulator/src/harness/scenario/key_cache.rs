//! hivetrack.sys scenarios of its key cache (issue 14): opens of a key already held are filed
//! by the key's ObjectID without asking the kernel for the name. What the model promises about
//! ids is shown by `td-key-id` and `td-rename-key` ([`super::key_id`]); these check that the
//! driver's answers stay right where a cache keyed by id could go wrong:
//! - `rename-key`: a rename keeps every id of the renamed key and the keys below it and
//!   changes their names; opens after it must be filed under the new names;
//! - `hidden-rename`: a rename hivetrack is not told of (a lower filter's, from inside its
//!   callback) keeps the ids; an open more than a second later must be filed under the new
//!   name;
//! - `key-id-reuse`: once a key's last object is gone its id may name another key; an open of
//!   that key must be filed under its own name;
//! - `delete-held-key`: a key deleted while another process holds it (NtDeleteKey) keeps its
//!   id on that object, a key re-created with its name gets a new one; the deleted key's
//!   object still holds the hive, though the kernel's list no longer shows it.

use super::tracking::{
    APP1, APP2, CLASSES, Client, Holder, KEY_READ, SHELL, SYSTEM_PID, USER, ensure_parents,
    load_profile, spawn, start, unload_all,
};
use super::{Ctx, Scenario};
use crate::loader::driver::LoadedDriver;
use crate::nt::cm::hive;
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::status::{self, STATUS_CANNOT_DELETE, STATUS_SUCCESS};

/// The scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::hivetrack(
            "rename-key",
            "A holds Vendor\\Old and Old\\Sub; Old is renamed New (NtRenameKey: the ids stay, the names change); B then opens New and New\\Sub: filed under the new names, not the names cached for those ids; A's keys keep the names they were opened with, while the kernel's list (which the CLI reconciles with) names them New",
            rename_key,
        ),
        Scenario::hivetrack(
            "hidden-rename",
            "A holds Vendor\\Old\\Sub; a filter below hivetrack renames Old to New from inside its callback (its rename's notifications reach only the callbacks below it: hivetrack is not told; the ids stay); more than a second later B opens New\\Sub: filed as New\\Sub (the cached name is fetched again, being over a second old), and the refreshed entry serves B's next open without a fetch",
            hidden_rename,
        ),
        Scenario::hivetrack(
            "key-id-reuse",
            "A opens and closes Reuse\\First, the last object of that key; B opens Reuse\\Second, which the kernel gives First's freed id: B's key is filed as Second",
            key_id_reuse,
        ),
        Scenario::hivetrack(
            "delete-held-key",
            "A holds Vendor\\Gone; B deletes it (NtDeleteKey); C creates Vendor\\Gone again: C's open is a new key with a new id (its name is fetched); hivetrack's holders list A's key and C's, the kernel's list only C's; the profile refuses to unload while A's object of the deleted key lives, even with C's closed, and unloads once A closes it",
            delete_held_key,
        ),
    ]
}

/// The key id the model gives the object behind `pid`'s `handle`.
fn id_of(pid: u32, handle: u64) -> Option<usize> {
    let table = process::handle_table_of(pid, handle);
    kernel::with(|k| {
        let object = *k.hives.handles.get(&(table, handle))?;
        k.hives.identify(object).map(|(id, _, _)| id)
    })
}

/// `CmCallbackGetKeyObjectIDEx` calls that asked for the name, so far.
fn name_fetches() -> u64 {
    crate::verifier::calls::snapshot()[crate::verifier::calls::Call::KeyName as usize]
}

/// The keys `pid` holds in `holders`, as reported.
fn keys_of(holders: &[Holder], pid: u32) -> Vec<String> {
    let mut keys: Vec<String> = holders
        .iter()
        .filter(|h| h.pid == u64::from(pid))
        .flat_map(|h| h.keys.iter().map(|k| k.0.clone()))
        .collect();
    keys.sort();
    keys
}

/// The start of a scenario: the driver loaded, its control device open, the profile loaded,
/// and two processes, A and B.
fn begin(ctx: &mut Ctx) -> Option<(LoadedDriver, Client, u32, u32)> {
    let d = start(ctx);
    let c = Client::open(ctx)?;
    load_profile(ctx);
    let a = spawn(ctx, APP1);
    let b = spawn(ctx, APP2);
    Some((d, c, a, b))
}

/// The end of a scenario whose keys are all closed: nobody holds the profile, the
/// `processes` exit, the hives unload and the driver leaves nothing behind.
fn finish(ctx: &mut Ctx, d: &mut LoadedDriver, c: Client, processes: &[u32]) {
    let left = c.holders(ctx, USER);
    ctx.check(left.is_empty(), format!("every key closed: {left:?}"));
    for &p in processes {
        process::exit_process(p);
    }
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(d);
}

/// Whether each key `pid` holds in `holders` is reported deleted (`HolderKey::KEY_DELETED`).
fn deleted_of(holders: &[Holder], pid: u32) -> Vec<bool> {
    holders
        .iter()
        .filter(|h| h.pid == u64::from(pid))
        .flat_map(|h| h.key_flags.iter())
        .map(|f| f & protocol::holders::HolderKey::KEY_DELETED != 0)
        .collect()
}

#[allow(
    clippy::many_single_char_names,
    clippy::similar_names,
    reason = "d, c: driver and client; a, b and their handles ha, hb"
)]
fn rename_key(ctx: &mut Ctx) {
    let Some((mut d, c, a, b)) = begin(ctx) else {
        return;
    };
    let vendor = format!(r"{USER}\Software\Vendor");
    let (old, old_sub) = (format!(r"{vendor}\Old"), format!(r"{vendor}\Old\Sub"));
    let (new, new_sub) = (format!(r"{vendor}\New"), format!(r"{vendor}\New\Sub"));
    ensure_parents(a, &old_sub);
    let ha = hive::open_key(a, &old, KEY_READ, true);
    let ha_sub = hive::open_key(a, &old_sub, KEY_READ, true);
    let (Ok(ha), Ok(ha_sub)) = (ha, ha_sub) else {
        ctx.check(
            false,
            format!("A opens Old and Old\\Sub: {ha:?} {ha_sub:?}"),
        );
        return;
    };
    let before = keys_of(&c.holders(ctx, USER), a);
    ctx.check(
        before == [old.as_str(), old_sub.as_str()],
        format!("A holds Old and Old\\Sub: {before:?}"),
    );
    let ids = (id_of(a, ha), id_of(a, ha_sub));
    let s = hive::rename_key(a, ha, "New");
    ctx.check(s == STATUS_SUCCESS, format!("Old renamed New: {s:#x}"));
    let fetched = name_fetches();
    let hb = hive::open_key(b, &new, KEY_READ, false);
    let hb_sub = hive::open_key(b, &new_sub, KEY_READ, false);
    let fetched = name_fetches() - fetched;
    ctx.check(
        fetched == 2,
        format!("B's two opens after the rename asked the kernel for the names: {fetched}"),
    );
    let (Ok(hb), Ok(hb_sub)) = (hb, hb_sub) else {
        ctx.check(
            false,
            format!("B opens New and New\\Sub: {hb:?} {hb_sub:?}"),
        );
        return;
    };
    ctx.check(
        (id_of(b, hb), id_of(b, hb_sub)) == ids && ids.0.is_some(),
        format!("the model kept both ids across the rename: {ids:?}"),
    );
    let holders = c.holders(ctx, USER);
    let got = keys_of(&holders, b);
    ctx.check(
        got == [new.as_str(), new_sub.as_str()],
        format!("B's keys are filed under their names now, New and New\\Sub: {got:?}"),
    );
    let got = keys_of(&holders, a);
    ctx.check(
        got == [old.as_str(), old_sub.as_str()],
        format!("A's keys keep the names they were opened with: {got:?}"),
    );
    // The kernel's own list (NtQueryOpenSubKeysEx) names A's keys as they are now: the CLI
    // sets the driver's records against it by name, so the two old names show as records
    // the kernel does not list and the report does not say "complete"
    // (usermode-client/src/coverage.rs).
    let kernel: Vec<String> = hive::open_subkeys(USER)
        .unwrap_or_default()
        .into_iter()
        .filter(|(pid, _)| *pid == a)
        .map(|(_, name)| name)
        .collect();
    ctx.check(
        kernel.iter().any(|n| n.eq_ignore_ascii_case(&new))
            && kernel.iter().any(|n| n.eq_ignore_ascii_case(&new_sub))
            && !kernel.iter().any(|n| n.eq_ignore_ascii_case(&old)),
        format!("the kernel's list names A's keys New and New\\Sub now: {kernel:?}"),
    );
    // Opened again now: found by id (the rename has ended), under the new name.
    let fetched = name_fetches();
    let again = hive::open_key(b, &new_sub, KEY_READ, false);
    let fetched = name_fetches() - fetched;
    let got = keys_of(&c.holders(ctx, USER), b);
    ctx.check(
        again.is_ok() && got == [new.as_str(), new_sub.as_str(), new_sub.as_str()],
        format!("a later open of New\\Sub, under its new name: {got:?}"),
    );
    ctx.check(
        fetched == 0,
        format!("that open was found by its id, no name fetched: {fetched} fetch(es)"),
    );
    for (pid, h) in [(a, ha), (a, ha_sub), (b, hb), (b, hb_sub)]
        .into_iter()
        .chain(again.ok().map(|h| (b, h)))
    {
        let _ = hive::close_key(pid, h);
    }
    finish(ctx, &mut d, c, &[a, b]);
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, c: driver and client; a, b: the processes"
)]
fn hidden_rename(ctx: &mut Ctx) {
    use crate::nt::cm::registry;
    /// `KEY_WRITE` (winnt.h): what a rename needs.
    const KEY_WRITE: u32 = 0x2_0006;
    let Some((mut d, c, a, b)) = begin(ctx) else {
        return;
    };
    let vendor = format!(r"{USER}\Software\Vendor");
    let (old, old_sub) = (format!(r"{vendor}\Old"), format!(r"{vendor}\Old\Sub"));
    let new_sub = format!(r"{vendor}\New\Sub");
    ensure_parents(a, &old_sub);
    let Ok(ha) = hive::open_key(a, &old_sub, KEY_READ, true) else {
        ctx.check(false, "A opens Old\\Sub");
        return;
    };
    // The filter's own handle to Old (a kernel handle, opened on a system thread outside
    // any callback: hivetrack sees it as System's).
    let Ok(filter) = hive::open_kernel_key(SYSTEM_PID, &old, KEY_WRITE, false) else {
        ctx.check(false, "the filter opens Old");
        return;
    };
    let lower = registry::register_emulated(registry::filter_rename_hidden, 0, "300000");
    ctx.check(
        lower.is_ok(),
        format!("a filter registered below hivetrack (altitude 300000): {lower:?}"),
    );
    registry::set_hidden_rename(SYSTEM_PID, filter, "New");
    let trigger = hive::open_key(
        b,
        &format!(r"{vendor}\{}", registry::RENAME_MARKER),
        KEY_READ,
        true,
    );
    let renamed = hive::query_key_name(a, ha);
    ctx.check(
        renamed.as_deref() == Ok(new_sub.as_str()),
        format!("the filter renamed Old to New, unseen by hivetrack: A's key is {renamed:?} now"),
    );
    // More than the driver's MAX_NAME_AGE (one second) later.
    crate::nt::ke::timer::advance(1_500);
    let fetched = name_fetches();
    let hb = hive::open_key(b, &new_sub, KEY_READ, false);
    let fetched = name_fetches() - fetched;
    ctx.check(
        fetched == 1,
        format!("B's open asked the kernel for the name again: {fetched} fetch(es)"),
    );
    let got = keys_of(&c.holders(ctx, USER), b);
    ctx.check(
        got.iter().any(|k| k == &new_sub) && !got.iter().any(|k| k == &old_sub),
        format!("B's key is filed as New\\Sub, not as the name cached for its id: {got:?}"),
    );
    let fetched = name_fetches();
    let again = hive::open_key(b, &new_sub, KEY_READ, false);
    let fetched = name_fetches() - fetched;
    ctx.check(
        fetched == 0 && again.is_ok(),
        format!("B's next open found the refreshed entry by its id: {fetched} fetch(es)"),
    );
    for (pid, h) in [
        (a, Ok(ha)),
        (SYSTEM_PID, Ok(filter)),
        (b, trigger),
        (b, hb),
        (b, again),
    ] {
        if let Ok(h) = h {
            let _ = hive::close_key(pid, h);
        }
    }
    finish(ctx, &mut d, c, &[a, b]);
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, c: driver and client; a, b: the processes"
)]
fn key_id_reuse(ctx: &mut Ctx) {
    let Some((mut d, c, a, b)) = begin(ctx) else {
        return;
    };
    let first = format!(r"{USER}\Software\Reuse\First");
    let second = format!(r"{USER}\Software\Reuse\Second");
    ensure_parents(a, &first);
    let Ok(ha) = hive::open_key(a, &first, KEY_READ, true) else {
        ctx.check(false, "A opens First");
        return;
    };
    let first_id = id_of(a, ha);
    let got = keys_of(&c.holders(ctx, USER), a);
    ctx.check(got == [first.as_str()], format!("A holds First: {got:?}"));
    let s = hive::close_key(a, ha);
    ctx.check(
        s == STATUS_SUCCESS,
        format!("A closes First, its last object: {s:#x}"),
    );
    let Ok(hb) = hive::open_key(b, &second, KEY_READ, true) else {
        ctx.check(false, "B creates Second");
        return;
    };
    ctx.check(
        first_id.is_some() && id_of(b, hb) == first_id,
        format!("the model gave Second First's freed id {first_id:?}"),
    );
    let holders = c.holders(ctx, USER);
    let got = keys_of(&holders, b);
    ctx.check(
        got == [second.as_str()],
        format!("B's key is filed as Second: {got:?}"),
    );
    ctx.check(
        keys_of(&holders, a).is_empty(),
        "A holds nothing".to_string(),
    );
    let _ = hive::close_key(b, hb);
    process::exit_process(a);
    process::exit_process(b);
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}

#[allow(
    clippy::many_single_char_names,
    clippy::similar_names,
    clippy::too_many_lines,
    reason = "d, c: driver and client; a, b, e: the processes A, B, C and their handles; one linear script"
)]
fn delete_held_key(ctx: &mut Ctx) {
    let Some((mut d, c, a, b)) = begin(ctx) else {
        return;
    };
    let e = spawn(ctx, SHELL);
    let gone = format!(r"{USER}\Software\Vendor\Gone");
    ensure_parents(a, &gone);
    let Ok(ha) = hive::open_key(a, &gone, KEY_READ, true) else {
        ctx.check(false, "A opens Gone");
        return;
    };
    let a_id = id_of(a, ha);
    let before = c.holders(ctx, USER);
    let got = keys_of(&before, a);
    ctx.check(
        got == [gone.as_str()] && deleted_of(&before, a) == [false],
        format!("A holds Gone, not deleted: {got:?}"),
    );
    // B deletes the key through a handle of its own, then closes it.
    // (For DELETE too: NtDeleteKey references its handle for DELETE, WRK `ntapi.c`.)
    let deleted = hive::open_key(b, &gone, KEY_READ | 0x1_0000, false).map(|hb| {
        let s = hive::delete_key(b, hb);
        let _ = hive::close_key(b, hb);
        s
    });
    ctx.check(
        deleted == Ok(STATUS_SUCCESS),
        format!("B opens Gone and deletes it: {deleted:x?}"),
    );
    // C creates it again: a new key, so a new id, whose name hivetrack has not cached.
    let fetched = name_fetches();
    let he = hive::open_key(e, &gone, KEY_READ, true);
    let fetched = name_fetches() - fetched;
    let Ok(he) = he else {
        ctx.check(false, format!("C creates Gone again: {he:?}"));
        return;
    };
    let e_id = id_of(e, he);
    ctx.check(
        a_id.is_some() && e_id.is_some() && e_id != a_id && id_of(a, ha) == a_id,
        format!("the re-created Gone has a new id ({e_id:x?}); A's object keeps the deleted key's ({a_id:x?})"),
    );
    ctx.check(
        fetched == 1,
        format!(
            "C's open missed the key cache: the new id's name was fetched ({fetched} fetch(es))"
        ),
    );
    let holders = c.holders(ctx, USER);
    let (held_a, held_e) = (keys_of(&holders, a), keys_of(&holders, e));
    println!("  hivetrack's holders: A {held_a:?}, C {held_e:?}");
    // hivetrack saw the delete (RegNtPostDeleteKey): A's object is marked deleted, so the
    // CLI does not expect it in the kernel's list; C's key is another key, not marked.
    let (deleted_a, deleted_e) = (deleted_of(&holders, a), deleted_of(&holders, e));
    ctx.check(
        deleted_a == [true] && deleted_e == [false],
        format!("A's key is reported deleted, C's not: A {deleted_a:?}, C {deleted_e:?}"),
    );
    ctx.check(
        held_a == [gone.as_str()],
        format!("hivetrack still lists A's key, which still holds the hive, as Gone: {held_a:?}"),
    );
    ctx.check(
        held_e == [gone.as_str()],
        format!("…and C's, filed as Gone: {held_e:?}"),
    );
    ctx.check(
        keys_of(&holders, b).is_empty(),
        "B holds nothing (its handle is closed)".to_string(),
    );
    // The kernel's list walks the KCB hash, which the deleted key left.
    let kernel = hive::open_subkeys(USER).unwrap_or_default();
    let listed = |pid: u32| -> Vec<String> {
        kernel
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, n)| n.clone())
            .collect()
    };
    let (kernel_a, kernel_e) = (listed(a), listed(e));
    ctx.check(
        kernel_a.is_empty() && kernel_e.len() == 1 && kernel_e[0].eq_ignore_ascii_case(&gone),
        format!(
            "the kernel's list has C's Gone and nothing of A's: A {kernel_a:?}, C {kernel_e:?}"
        ),
    );
    let _ = hive::close_key(e, he);
    let s = hive::unload_hive(SYSTEM_PID, USER);
    ctx.check(
        s == STATUS_CANNOT_DELETE,
        format!(
            "with C's key closed, A's object of the deleted key still holds the profile: {}",
            status::describe(s)
        ),
    );
    let kernel_a: Vec<_> = hive::open_subkeys(USER)
        .unwrap_or_default()
        .into_iter()
        .filter(|(p, _)| *p == a)
        .collect();
    let held_a = keys_of(&c.holders(ctx, USER), a);
    ctx.check(
        kernel_a.is_empty() && held_a == [gone.as_str()],
        format!(
            "then only hivetrack names what holds it: A {held_a:?}; the kernel lists {kernel_a:?}"
        ),
    );
    let _ = hive::close_key(a, ha);
    finish(ctx, &mut d, c, &[a, b, e]);
}
