//! `hivetrack wait`: until no process holds keys in a hive, or a timeout.
//!
//! [`wait_free`] first offers the wait to the backend
//! ([`crate::transport::Transport::wait_free`]): the driver's wait-free IOCTL, an IRP the
//! driver completes when the hive has no holders (method `wait-free` in the report). A
//! backend that cannot wait (an older driver, live tracking off, the driverless fallback)
//! declines, and the holders query (summaries only) is polled every `interval` (method
//! `poll`).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::Client;
use crate::commands::{CliError, classify};
use crate::model::{WaitReport, schema};
use crate::transport::WaitFreeOutcome;

/// Time, as the wait sees it (a test drives it by hand).
pub trait Clock {
    /// Time since the wait began.
    fn elapsed(&self) -> Duration;
    /// Sleeps for `d`.
    fn sleep(&mut self, d: Duration);
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock starting now.
    #[must_use]
    pub fn start() -> Self {
        Self(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::start()
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Waits until no process holds keys in the hive at NT path `hive` (shown as `shown`), or
/// `timeout` passes. A hive that disappears after it was seen was unloaded: it is free.
///
/// # Errors
/// Transport failures, an unknown hive (never seen), a malformed answer.
pub fn wait_free(
    client: &mut Client<'_>,
    hive: &str,
    shown: &str,
    timeout: Duration,
    interval: Duration,
    clock: &mut dyn Clock,
) -> Result<WaitReport> {
    let report =
        |client: &Client<'_>, free, method: &str, nr, open_keys, holders, secs| WaitReport {
            schema: schema("wait"),
            source: client.source(nr),
            hive: shown.to_owned(),
            free,
            method: method.to_owned(),
            waited_secs: secs,
            open_keys,
            holders,
        };
    if let Some(native) = client.transport().wait_free(hive, timeout) {
        let outcome = native.map_err(classify)?;
        let secs = clock.elapsed().as_secs_f64();
        if outcome == WaitFreeOutcome::Free {
            return Ok(report(client, true, "wait-free", 0, 0, 0, secs));
        }
        // Timed out: say who still holds the hive, as the polling wait does.
        let (nr, open_keys, holders) = client.holders(hive, true, 0).map_or((0, 0, 0), |r| {
            (r.source.not_recorded, r.hive.open_keys, r.hive.holders)
        });
        return Ok(report(
            client,
            false,
            "wait-free",
            nr,
            open_keys,
            holders,
            secs,
        ));
    }
    let mut seen = false;
    let mut not_recorded = 0;
    loop {
        let (open_keys, holders) = match client.holders(hive, true, 0) {
            Ok(r) => {
                seen = true;
                not_recorded = not_recorded.max(r.source.not_recorded);
                (r.hive.open_keys, r.hive.holders)
            }
            Err(e) if seen && matches!(e.downcast_ref(), Some(CliError::UnknownHive { .. })) => {
                (0, 0)
            }
            Err(e) => return Err(e),
        };
        let secs = clock.elapsed().as_secs_f64();
        if open_keys == 0 && holders == 0 {
            return Ok(report(client, true, "poll", not_recorded, 0, 0, secs));
        }
        let elapsed = clock.elapsed();
        if elapsed >= timeout {
            return Ok(report(
                client,
                false,
                "poll",
                not_recorded,
                open_keys,
                holders,
                secs,
            ));
        }
        clock.sleep(interval.min(timeout.saturating_sub(elapsed)));
    }
}
