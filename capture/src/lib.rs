//! Process Monitor captures replayed through the hivetrack tracking engine: the answers
//! `hivetrack` gives live (who holds which key of which hive, since when, from which code),
//! from a capture taken where no test-signed driver may load.
//!
//! [`pml`] reads Procmon's native log files, [`csv`] its CSV exports; both yield
//! [`event::Event`]s one at a time (streaming: memory grows with the processes and the keys
//! held open, not with the capture). [`paths`] undoes Procmon's key-path abbreviations;
//! [`replay`] feeds the events to a [`tracker::Tracker`] and keeps the ledger that pairs
//! closes with opens; [`report`] is the result, serialisable as `hivetrack.analysis/1`.

pub mod csv;
pub mod event;
pub mod ledger;
pub mod paths;
pub mod plumbing;
pub mod pml;
pub mod replay;
pub mod report;

pub use event::{Event, Frame, Op};
pub use replay::{Options, Replay, analyze_file};
pub use report::Analysis;

/// Why a capture could not be read.
#[derive(Debug)]
pub enum CaptureError {
    /// Reading the file failed.
    Io(std::io::Error),
    /// The file is not a capture this reader understands, or is damaged.
    Format(String),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the capture: {e}"),
            Self::Format(m) => write!(f, "not a readable Process Monitor capture: {m}"),
        }
    }
}

impl std::error::Error for CaptureError {}

impl From<std::io::Error> for CaptureError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<::csv::Error> for CaptureError {
    fn from(e: ::csv::Error) -> Self {
        Self::Format(format!("CSV: {e}"))
    }
}

/// A source of capture events, in capture order.
pub trait Reader {
    /// Fills `ev` with the next event; `Ok(false)` at the end of the capture.
    ///
    /// # Errors
    /// [`CaptureError`] when the capture cannot be read further.
    fn next_event(&mut self, ev: &mut Event) -> Result<bool, CaptureError>;
    /// `"pml"` or `"csv"`.
    fn format(&self) -> &'static str;
}
