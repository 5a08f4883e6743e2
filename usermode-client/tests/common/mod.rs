//! Shared harness: runs whole commands against the scripted transport and compares output
//! with the golden files in `tests/snapshots/` (`HIVETRACK_UPDATE_SNAPSHOTS=1` rewrites them).
#![allow(
    dead_code,
    missing_docs,
    reason = "test harness; each test binary uses a different subset"
)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use hivetrack_cli::accounts::{Accounts, SidLookup};
use hivetrack_cli::app::{Env, run};
use hivetrack_cli::cli::Cli;
use hivetrack_cli::commands::report_error;
use hivetrack_cli::holder_identity::{Identities, NoIdentities};
use hivetrack_cli::page_server::Server;
use hivetrack_cli::scripted::{NOW, SID, Scripted};
use hivetrack_cli::symbols::{NoSymbols, Symbolizer};
use hivetrack_cli::transport::{Need, Transport, TransportError};
use hivetrack_cli::wait::Clock;

/// Accounts as a Windows machine of the CONTOSO domain resolves them.
pub struct Contoso;

impl Accounts for Contoso {
    fn current_user_sid(&self) -> Option<String> {
        Some(SID.to_owned())
    }
    fn account_of(&self, sid: &str) -> Option<String> {
        (sid == SID).then(|| r"CONTOSO\alice".to_owned())
    }
    fn sid_of(&self, account: &str) -> SidLookup {
        if account.eq_ignore_ascii_case(r"CONTOSO\alice") || account.eq_ignore_ascii_case("alice") {
            SidLookup::Sid(SID.to_owned())
        } else {
            SidLookup::Unknown
        }
    }
}

/// A clock moved only by the wait's sleeps.
#[derive(Default)]
pub struct ManualClock {
    pub elapsed: Duration,
    pub sleeps: usize,
}

impl Clock for ManualClock {
    fn elapsed(&self) -> Duration {
        self.elapsed
    }
    fn sleep(&mut self, d: Duration) {
        self.elapsed += d;
        self.sleeps += 1;
    }
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code (of the report, or of the error).
    pub code: u8,
    /// Standard output.
    pub out: String,
    /// Standard error: the error message main prints, and CSV source notes.
    pub err: String,
    /// Sleeps the wait took.
    pub sleeps: usize,
}

/// Counts requests across the transports a run opens.
pub struct Counting {
    inner: Box<dyn Transport>,
    count: Rc<Cell<usize>>,
}

impl Transport for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn missing(&self) -> &'static [&'static str] {
        self.inner.missing()
    }
    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        self.count.set(self.count.get() + 1);
        self.inner.ioctl(code, input, output)
    }
}

/// Runs `argv` with `connect`, the given accounts, at [`NOW`].
pub fn run_with(
    argv: &[&str],
    connect: impl FnMut(Need) -> Result<Box<dyn Transport>, TransportError>,
    accounts: &dyn Accounts,
) -> Outcome {
    run_with_identities(argv, connect, accounts, &NoIdentities)
}

/// Runs `argv` with `connect`, the given accounts and process identities, at [`NOW`].
pub fn run_with_identities(
    argv: &[&str],
    connect: impl FnMut(Need) -> Result<Box<dyn Transport>, TransportError>,
    accounts: &dyn Accounts,
    identities: &dyn Identities,
) -> Outcome {
    run_with_symbols(argv, connect, accounts, identities, &mut NoSymbols)
}

/// Runs `argv` with everything given, `symbols` naming stack frames, at [`NOW`].
pub fn run_with_symbols(
    argv: &[&str],
    mut connect: impl FnMut(Need) -> Result<Box<dyn Transport>, TransportError>,
    accounts: &dyn Accounts,
    identities: &dyn Identities,
    symbols: &mut dyn Symbolizer,
) -> Outcome {
    let mut full = vec!["hivetrack"];
    full.extend_from_slice(argv);
    let cli = Cli::try_parse_from(&full).expect("arguments parse");
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut clock = ManualClock::default();
    let code = {
        let mut env = Env {
            out: &mut out,
            err: &mut err,
            connect: &mut connect,
            accounts,
            identities,
            now: NOW,
            clock: &mut clock,
            symbols,
        };
        match run(&cli, &mut env) {
            Ok(code) => code,
            Err(e) => report_error(&e, cli.global.json, env.out, env.err),
        }
    };
    Outcome {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
        sleeps: clock.sleeps,
    }
}

/// Runs `argv` against a driver in state `server`, on a Windows machine of CONTOSO.
pub fn run_on(server: Server, argv: &[&str]) -> Outcome {
    run_scripted(Scripted::new(server), argv)
}

/// Runs `argv` against `scripted` (every connection gets the same state machine).
pub fn run_scripted(scripted: Scripted, argv: &[&str]) -> Outcome {
    run_on_with_identities(scripted, argv, &NoIdentities)
}

/// Runs `argv` against `scripted`, with `identities` for the processes it names.
pub fn run_on_with_identities(
    scripted: Scripted,
    argv: &[&str],
    identities: &dyn Identities,
) -> Outcome {
    let mut once = Some(scripted);
    run_with_identities(
        argv,
        move |_| {
            once.take()
                .map(|s| Box::new(s) as Box<dyn Transport>)
                .ok_or(TransportError::DriverUnavailable)
        },
        &Contoso,
        identities,
    )
}

/// Runs `argv` against `server`, counting requests.
pub fn run_counting(server: Server, argv: &[&str]) -> (Outcome, usize) {
    let count = Rc::new(Cell::new(0));
    let c = Rc::clone(&count);
    let mut once = Some(Scripted::new(server));
    let o = run_with(
        argv,
        move |_| {
            let inner: Box<dyn Transport> = Box::new(once.take().expect("one connection"));
            Ok(Box::new(Counting {
                inner,
                count: Rc::clone(&c),
            }))
        },
        &Contoso,
    );
    (o, count.get())
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with the golden file `name`; `HIVETRACK_UPDATE_SNAPSHOTS=1` rewrites it.
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var_os("HIVETRACK_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with HIVETRACK_UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "output differs from {}:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// The system allocator as the tracking engine's pool (the tests that run the real
/// `tracker` behind a transport).
pub struct Heap;

fn layout(class: tracker::BlockClass) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(class.size(), tracker::BLOCK_ALIGN)
        .expect("a valid block layout")
}

// SAFETY: every block is allocated with its class's layout and freed with the same one.
unsafe impl tracker::Pool for Heap {
    fn alloc(&self, class: tracker::BlockClass) -> Option<std::ptr::NonNull<u8>> {
        // SAFETY: block classes have a non-zero size.
        std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout(class)) })
    }
    unsafe fn free(&self, class: tracker::BlockClass, block: std::ptr::NonNull<u8>) {
        // SAFETY: the caller passes a block `alloc` returned for this class.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout(class)) };
    }
}

/// The real tracking engine on the system allocator.
pub type Engine = tracker::Tracker<Heap, tracker::SpinLock>;
