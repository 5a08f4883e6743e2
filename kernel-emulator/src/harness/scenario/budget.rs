//! hivetrack.sys memory-budget scenarios: one process flooding keys with distinct names near
//! the longest the tracker stores, against a budget set in the service key's
//! `Parameters\MemoryBudgetMiB`.

use std::fmt::Write as _;

use super::tracking::{
    APP2, CLASSES, Client, KEY_READ, USER, ensure_parents, load_profile, spawn,
    start_with_parameter, unload_all,
};
use super::{Ctx, Scenario, Target};
use crate::nt::cm::hive;
use crate::nt::ex::pool::tag_text;
use crate::nt::kernel;
use crate::nt::ps::process;

/// The budget the scenario configures, MiB.
const BUDGET_MIB: u32 = 8;
/// Opens the flooder makes: its share (a quarter of the budget, 2 MiB) holds about 500 of
/// its 4 KiB names.
const FLOOD: u32 = 3_000;
/// Keys the other process opens before and after the flood.
const OTHER_KEYS: u32 = 200;
const EDITOR: &str = r"\Device\HarddiskVolume2\Program Files\Editor\editor.exe";

/// The budget scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "name-flood",
        Target::Hivetrack,
        "one process opens 3,000 keys with distinct ~2,000-unit names under an 8 MiB MemoryBudgetMiB: the driver's pool stays within the budget, the other process stays fully tracked, the flooder's drops are counted and it is named in stats",
        name_flood,
    )]
}

/// Bytes of pool the driver holds now (its tag), and the most it held.
fn driver_pool_bytes() -> u64 {
    kernel::with(|k| {
        k.pool
            .blocks
            .values()
            .filter(|b| tag_text(b.tag) == "HvTk")
            .map(|b| b.size as u64)
            .sum()
    })
}

/// A key path of about 2,000 units: seven shared 240-unit components (created once) and a
/// distinct last one.
fn flood_path(i: u32) -> String {
    let mut p = format!(r"{USER}\Software\Flood");
    for c in 0..7u8 {
        p.push('\\');
        p.extend(std::iter::repeat_n(char::from(b'a' + c), 240));
    }
    p.push('\\');
    let _ = write!(p, "{i:08}");
    p.extend(std::iter::repeat_n('z', 232));
    p
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn name_flood(ctx: &mut Ctx) {
    let Some(mut d) = start_with_parameter(ctx, "MemoryBudgetMiB", BUDGET_MIB) else {
        return;
    };
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    let budget = u64::from(BUDGET_MIB) << 20;
    let stats = c.stats(ctx);
    ctx.check(
        stats.budget_bytes == budget,
        format!(
            "the driver read Parameters\\MemoryBudgetMiB: budget {} bytes",
            stats.budget_bytes
        ),
    );
    let other = spawn(ctx, EDITOR);
    let flooder = spawn(ctx, APP2);
    let other_key = |i: u32| format!(r"{USER}\Software\Editor\Recent\File{}", i % 20);
    ensure_parents(other, &other_key(0));
    let mut held = 0u32;
    for i in 0..OTHER_KEYS {
        held += u32::from(hive::open_key(other, &other_key(i), KEY_READ, true).is_ok());
    }
    ensure_parents(flooder, &flood_path(0));
    let mut opened_by_flooder = 0u32;
    let mut peak = driver_pool_bytes();
    for i in 0..FLOOD {
        opened_by_flooder +=
            u32::from(hive::open_key(flooder, &flood_path(i), KEY_READ, true).is_ok());
        if i % 64 == 0 {
            peak = peak.max(driver_pool_bytes());
        }
    }
    for i in 0..OTHER_KEYS {
        held += u32::from(hive::open_key(other, &other_key(i), KEY_READ, true).is_ok());
    }
    peak = peak.max(driver_pool_bytes());
    ctx.check(
        opened_by_flooder == FLOOD && held == 2 * OTHER_KEYS,
        format!("the registry opened every key ({opened_by_flooder} flooded, {held} other)"),
    );
    let stats = c.stats(ctx);
    println!(
        "  pool held by the driver at most {peak} bytes; budget {budget}, used {} (peak {}), share {}",
        stats.budget_used_bytes, stats.budget_peak_bytes, stats.process_share_bytes
    );
    println!(
        "  {} opens dropped for the share; top dropper pid {} with {}",
        stats.opens_dropped_process_share, stats.top_dropper_pid, stats.top_dropper_drops
    );
    // The budget covers tracking memory; the driver's other blocks (device, request
    // buffers, cached lookaside blocks) are a few hundred KiB at most.
    ctx.check(
        peak <= budget,
        format!("the driver's pool stayed within the {BUDGET_MIB} MiB budget (peak {peak} bytes)"),
    );
    ctx.check(
        stats.budget_peak_bytes <= budget,
        "the budget's own peak stayed within it",
    );
    let procs = c.processes(ctx);
    let keys_of = |pid: u32| {
        procs
            .iter()
            .find(|p| p.0 == u64::from(pid))
            .map_or(0, |p| p.1)
    };
    ctx.check(
        keys_of(other) == u64::from(2 * OTHER_KEYS),
        format!(
            "the other process stays fully tracked: {} of {} keys",
            keys_of(other),
            2 * OTHER_KEYS
        ),
    );
    let tracked = keys_of(flooder);
    ctx.check(
        tracked > 0 && tracked < u64::from(FLOOD),
        format!("the flooder is tracked up to its share: {tracked} of {FLOOD} keys"),
    );
    ctx.check(
        stats.opens_dropped_process_share > 0
            && stats.opens_dropped_process_share + tracked >= u64::from(FLOOD),
        format!(
            "every flooded open is tracked or counted ({tracked} + {} dropped)",
            stats.opens_dropped_process_share
        ),
    );
    ctx.check(
        stats.top_dropper_pid == u64::from(flooder)
            && stats.top_dropper_drops == stats.opens_dropped_process_share,
        format!(
            "stats names the flooder (pid {flooder}) as the top dropper: pid {}",
            stats.top_dropper_pid
        ),
    );
    process::exit_process(flooder);
    process::exit_process(other);
    let after = c.stats(ctx);
    ctx.check(
        after.objects_tracked == 0,
        format!(
            "after both exit nothing is tracked ({})",
            after.objects_tracked
        ),
    );
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}
