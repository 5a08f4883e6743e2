//! Requests that need live tracking, sent while it is off: `CmRegisterCallbackEx` failed at
//! load (fault injection: `STATUS_INSUFFICIENT_RESOURCES`, which the routine returns when
//! it cannot allocate its context block or callback block — Windows Research Kernel
//! `base/ntos/config/cmhook.c` `CmRegisterCallback`: `if( CmCallbackContext == NULL ) {
//! return STATUS_INSUFFICIENT_RESOURCES; }`, the same after `ExAllocateCallBack`), so the
//! driver loads with its tracker but no registry callback. The wait-free, event-stream and identify requests must
//! then answer `STATUS_DEVICE_NOT_READY` at once ("tracking is off"), not a "no such hive",
//! an empty event page after a wait, or "not tracked" for every handle, which a reader would
//! take for facts (audit 21b F8: no test reached these branches). An altitude collision
//! is another way to get here; it has its own scenario.

use protocol::events::EventsRequest;
use protocol::identify::IdentifyRequest;
use protocol::ioctl::{
    IOCTL_HIVETRACK_IDENTIFY_HANDLES, IOCTL_HIVETRACK_WAIT_EVENTS, IOCTL_HIVETRACK_WAIT_FREE,
};

use super::tracking::{APP2, Client, KEY_READ, USER, boot_hives, load_driver, load_profile, spawn};
use super::{Ctx, Scenario, Target};
use crate::nt::cm::hive;
use crate::nt::io::{self, IoctlCall};
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::status::{self, STATUS_INSUFFICIENT_RESOURCES};
use crate::verifier::faults::FaultPolicy;

/// `STATUS_DEVICE_NOT_READY` (ntstatus.h 0xC00000A3).
const STATUS_DEVICE_NOT_READY: i32 = 0xC000_00A3_u32.cast_signed();

/// The scenario.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "tracking-off-requests",
        Target::Hivetrack,
        "CmRegisterCallbackEx fails at load (fault injection): stats say why; the wait-free, event-stream (with a 30 s timeout: no wait) and identify requests answer STATUS_DEVICE_NOT_READY at once",
        tracking_off_requests,
    )]
}

fn encoded<'a, M: protocol::wire::Message<'a>>(m: &M) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let n = protocol::wire::encode(m, &mut b).unwrap_or(0);
    b.truncate(n);
    b
}

/// Sends `input` with `code`: it must complete at once (a pending request is cancelled and
/// counted as wrong) with `STATUS_DEVICE_NOT_READY` and no bytes.
fn not_ready(ctx: &mut Ctx, c: &Client, code: u32, input: &[u8], what: &str) {
    let r = match io::device_io_control_async(c.h, code, input, 4096, 0xA5) {
        IoctlCall::Done(r) => r,
        IoctlCall::Pending(mut p) => {
            p.cancel();
            let _ = p.poll();
            ctx.check(false, format!("{what}: pended while tracking is off"));
            return;
        }
    };
    ctx.check(
        r.status == STATUS_DEVICE_NOT_READY && r.information == 0,
        format!(
            "{what}: STATUS_DEVICE_NOT_READY with no bytes ({}, {} bytes)",
            status::describe(r.status),
            r.information
        ),
    );
}

fn tracking_off_requests(ctx: &mut Ctx) {
    boot_hives(ctx);
    kernel::with(|k| {
        k.faults.only = Some("CmRegisterCallbackEx");
        k.faults.policy = FaultPolicy::FromNth(1);
    });
    let mut d = load_driver(ctx);
    kernel::with(|k| {
        k.faults.policy = FaultPolicy::Off;
        k.faults.only = None;
    });
    if let Some(c) = Client::open(ctx) {
        load_profile(ctx);
        let p = spawn(ctx, APP2);
        let key = hive::open_key(p, &format!(r"{USER}\Software"), KEY_READ, false);
        let stats = c.stats(ctx);
        ctx.check(
            stats.tracking_status == u64::from(STATUS_INSUFFICIENT_RESOURCES.cast_unsigned()),
            format!(
                "stats say why tracking is off: {:#x} (STATUS_INSUFFICIENT_RESOURCES)",
                stats.tracking_status
            ),
        );
        // A hive that is loaded and held: with tracking on, a wait on it would pend.
        let wait = super::wait_free::request(USER, 30_000);
        not_ready(ctx, &c, IOCTL_HIVETRACK_WAIT_FREE, &wait, "wait-free");
        let events = encoded(&EventsRequest {
            after: 0,
            timeout_ms: 30_000,
            max_records: 0,
        });
        not_ready(ctx, &c, IOCTL_HIVETRACK_WAIT_EVENTS, &events, "events");
        // A key handle (the driver would look it up in the caller's handle table; with
        // tracking off it must not get that far).
        let handle = key.as_ref().copied().unwrap_or(4);
        if let Some(request) = IdentifyRequest::new(&[handle]) {
            not_ready(
                ctx,
                &c,
                IOCTL_HIVETRACK_IDENTIFY_HANDLES,
                &encoded(&request),
                "identify",
            );
        }
        if let Ok(k) = key {
            let _ = hive::close_key(p, k);
        }
        process::exit_process(p);
        super::tracking::unload_all(ctx, &[USER, super::tracking::CLASSES]);
        c.close();
    }
    ctx.unload_and_check_clean(&mut d);
}
