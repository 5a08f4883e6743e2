//! hivetrack's build-orchestration library: checks on the artefacts the cross build produces.
//!
//! - [`image`] inspects the driver image (`hivetrack.sys`, PE32+) and its linker map.
//! - [`inf`] parses and verifies the driver's INF (`driver/hivetrack.inx`, shipped as `hivetrack.inf`).
//!
//! Both follow the same pattern: `Ok(report)` even when checks fail (the report's `Display`
//! prints a one-screen summary and `failures()` lists what must be fixed); `Err` only when the
//! input cannot be read or parsed at all.

pub mod image;
pub mod inf;
