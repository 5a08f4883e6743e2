//! Where `hivetrack service` writes its events: JSON lines (`--jsonl FILE`, `-` for stdout)
//! here, the Windows Event Log in `windows_event_log`.

use std::io::Write;

use anyhow::{Context, Result};

use crate::fleet_event::FleetEvent;

/// A destination of events.
pub trait EventSink {
    /// Writes one event.
    ///
    /// # Errors
    /// The destination refused it (a full disk, a closed pipe, the Event Log service down).
    fn emit(&mut self, event: &FleetEvent) -> Result<()>;

    /// How many outputs this sink writes to, each accepting or refusing an event on its own
    /// (the service tells each output of the events refused once: event 1014).
    fn outputs(&self) -> usize {
        1
    }

    /// Writes one event to output `output` (below [`EventSink::outputs`]) only.
    ///
    /// # Errors
    /// That output refused it.
    fn emit_to(&mut self, output: usize, event: &FleetEvent) -> Result<()> {
        let _ = output;
        self.emit(event)
    }
}

/// One JSON object per line, flushed after each (a collector tailing the file sees every
/// event at once).
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// Events to `out`.
    pub const fn new(out: W) -> Self {
        Self { out }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> EventSink for JsonLines<W> {
    fn emit(&mut self, event: &FleetEvent) -> Result<()> {
        let line = event.json_line()?;
        writeln!(self.out, "{line}").context("cannot write the JSON lines output")?;
        self.out
            .flush()
            .context("cannot write the JSON lines output")
    }
}

/// Every event to each sink in turn; a sink's failure does not keep the others from
/// their event (the first failure is returned).
#[derive(Default)]
pub struct Sinks<'a>(pub Vec<Box<dyn EventSink + 'a>>);

impl EventSink for Sinks<'_> {
    fn emit(&mut self, event: &FleetEvent) -> Result<()> {
        let mut first = None;
        for s in &mut self.0 {
            if let Err(e) = s.emit(event) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn outputs(&self) -> usize {
        self.0.len()
    }

    fn emit_to(&mut self, output: usize, event: &FleetEvent) -> Result<()> {
        self.0.get_mut(output).map_or(Ok(()), |s| s.emit(event))
    }
}

/// Keeps every event (tests).
#[derive(Debug, Default)]
pub struct Collected(pub Vec<FleetEvent>);

impl EventSink for Collected {
    fn emit(&mut self, event: &FleetEvent) -> Result<()> {
        self.0.push(event.clone());
        Ok(())
    }
}
