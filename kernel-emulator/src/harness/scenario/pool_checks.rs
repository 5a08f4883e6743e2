//! Pool and lookaside requests judged as documented, shown on the test driver (its
//! IOCTL_POOL_CHECK makes one request, `argument` picking which): `ExInitializeLookasideListEx`'s
//! refusals, a correct list, and the requests Driver Verifier stops — a nonzero Depth,
//! FAIL_NO_RAISE with the default allocator, and executable pool asked for through either
//! lookaside flavour, `ExAllocatePoolWithTag` or `ExAllocatePool2` (code integrity, bug check
//! 0xC4 P1 0x2000). The sources are cited where the model does each (`lookaside.rs`,
//! `pool.rs`); hivetrack asks for NonPagedPoolNx, Flags 0 and Depth 0 everywhere.

use super::registry::{finish, start};
use super::test_driver::{caught, ioctl};
use super::{Ctx, Scenario};
use crate::nt::io;
use crate::nt::status::{
    self, STATUS_INVALID_PARAMETER_4, STATUS_INVALID_PARAMETER_5, STATUS_SUCCESS,
};
use crate::verifier::bugcheck::EXIT_BUGCHECK;

const IOCTL_POOL_CHECK: u32 = ioctl(0x853);

/// The cases of the test driver's `pool_checks::request`.
const BOTH_FLAGS: u64 = 0;
const NOT_A_POOL_TYPE: u64 = 1;
const CORRECT_LIST: u64 = 2;
const DEPTH: u64 = 3;
const FAIL_NO_RAISE_DEFAULT: u64 = 4;
const EXECUTABLE_EX_LIST: u64 = 5;
const EXECUTABLE_NPAGED_LIST: u64 = 6;
const EXECUTABLE_POOL_WITH_TAG: u64 = 7;
const EXECUTABLE_POOL2: u64 = 8;

/// The pool-check scenarios.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::test_driver(
            "td-lookaside-init",
            "ExInitializeLookasideListEx refuses both EX_LOOKASIDE_LIST_EX_FLAGS at once (STATUS_INVALID_PARAMETER_5) and a PoolType that is not one (STATUS_INVALID_PARAMETER_4), and takes a NonPagedPoolNx list with Flags 0 and Depth 0",
            td_lookaside_init,
        ),
        caught(
            "td-lookaside-depth",
            "a nonzero Depth (reserved: \"Always set this parameter to zero\") is a verifier violation",
            EXIT_BUGCHECK,
            "Depth 8 — the parameter is reserved and must be zero",
            |ctx| stop(ctx, DEPTH),
        ),
        caught(
            "td-lookaside-fail-no-raise",
            "EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE with the default allocator (undefined) is a verifier violation",
            EXIT_BUGCHECK,
            "EX_LOOKASIDE_LIST_EX_FLAGS_FAIL_NO_RAISE with the default allocation routine",
            |ctx| stop(ctx, FAIL_NO_RAISE_DEFAULT),
        ),
        caught(
            "td-lookaside-executable",
            "an Ex lookaside list of NonPagedPool with the default allocator is Verifier's code integrity stop 0x2000",
            EXIT_BUGCHECK,
            "code integrity: ExInitializeLookasideListEx specified an executable pool type 0x0",
            |ctx| stop(ctx, EXECUTABLE_EX_LIST),
        ),
        caught(
            "td-npaged-lookaside-executable",
            "an NPaged lookaside list without POOL_NX_ALLOCATION and with the default allocator is Verifier's code integrity stop 0x2000",
            EXIT_BUGCHECK,
            "code integrity: ExInitializeNPagedLookasideList specified an executable pool type 0x0",
            |ctx| stop(ctx, EXECUTABLE_NPAGED_LIST),
        ),
        caught(
            "td-pool-with-tag-executable",
            "ExAllocatePoolWithTag(NonPagedPool) is Verifier's code integrity stop 0x2000",
            EXIT_BUGCHECK,
            "code integrity: ExAllocatePoolWithTag specified an executable pool type 0x0",
            |ctx| stop(ctx, EXECUTABLE_POOL_WITH_TAG),
        ),
        caught(
            "td-pool2-executable",
            "ExAllocatePool2(POOL_FLAG_NON_PAGED_EXECUTE) is Verifier's code integrity stop 0x2000",
            EXIT_BUGCHECK,
            "code integrity: ExAllocatePool2 specified an executable pool type 0x0",
            |ctx| stop(ctx, EXECUTABLE_POOL2),
        ),
    ]
}

/// The status the test driver's request `case` returned.
fn status_of(ctx: &mut Ctx, s: &super::registry::Session, case: u64) -> i32 {
    let r = io::device_io_control(s.control, IOCTL_POOL_CHECK, &case.to_le_bytes(), 32, 0xA5);
    ctx.check(
        r.status == STATUS_SUCCESS,
        format!("IOCTL_POOL_CHECK {case}: {}", status::describe(r.status)),
    );
    let first = r.output.get(..8).and_then(|b| b.try_into().ok());
    #[allow(clippy::cast_possible_truncation)] // an NTSTATUS in the low half
    first.map_or(-1, |b| u64::from_le_bytes(b) as u32 as i32)
}

fn td_lookaside_init(ctx: &mut Ctx) {
    let Some(s) = start(ctx) else { return };
    for (case, want, what) in [
        (BOTH_FLAGS, STATUS_INVALID_PARAMETER_5, "both flags"),
        (NOT_A_POOL_TYPE, STATUS_INVALID_PARAMETER_4, "PoolType 0x77"),
        (
            CORRECT_LIST,
            STATUS_SUCCESS,
            "NonPagedPoolNx, Flags 0, Depth 0",
        ),
    ] {
        let got = status_of(ctx, &s, case);
        ctx.check(
            got == want,
            format!(
                "{what}: {} (expected {})",
                status::describe(got),
                status::describe(want)
            ),
        );
    }
    finish(ctx, s);
}

/// Makes request `case`, which the kernel must stop.
fn stop(ctx: &mut Ctx, case: u64) {
    let Some(s) = start(ctx) else { return };
    let got = status_of(ctx, &s, case);
    ctx.check(
        false,
        format!(
            "pool request {case} went unnoticed ({})",
            status::describe(got)
        ),
    );
}
