//! The IOCTL protocol spoken between `hivetrack.sys` and the `hivetrack` CLI.
//!
//! This crate is `no_std` and never allocates: the driver links it unchanged. Every message
//! is a fixed little-endian layout behind a [`wire::Header`] that carries a magic number, the
//! protocol version, the message kind and the total size; padding is explicit and always
//! zero; strings are length-prefixed UTF-16. [`wire::encode`] writes into a caller buffer and
//! [`wire::decode`] returns a typed [`wire::DecodeError`] for every malformed input.
//!
//! Queries: a [`request::QueryRequest`] goes in; the answer is a page
//! ([`page::Page`] of [`holders::Holders`], [`hives::Hives`], [`processes::Processes`],
//! [`snapshot::Snapshot`], [`history::UnloadHistory`], [`stacks::Stacks`],
//! [`modules::Modules`]) or [`stats::Stats`]. [`capture::CaptureRequest`] turns open-time
//! stack capture on and off. Pages carry a
//! [`cursor::Cursor`] for the next request. A [`wait::WaitFreeRequest`] stays pending in the
//! driver until its hive has no holders ([`wait::WaitFreeAnswer`]). With the `std` feature, [`diff`] compares two
//! snapshots (user mode only).
#![cfg_attr(not(any(test, feature = "std")), no_std)]

pub mod capture;
pub mod completeness;
pub mod cursor;
#[cfg(feature = "std")]
pub mod diff;
pub mod events;
pub mod history;
pub mod hives;
pub mod holders;
pub mod identify;
pub mod ioctl;
pub mod modules;
pub mod page;
pub mod processes;
pub mod request;
pub mod snapshot;
pub mod stacks;
pub mod stats;
pub mod text;
pub mod version;
pub mod wait;
pub mod wire;

/// The protocol version this crate speaks. Bumped on any incompatible layout change; the
/// CLI refuses to talk to a driver that answers with another version.
///
/// 2: the events page's prefix carries `held_after_seconds` (issue 17's held-after records).
/// 3: a holders key may carry `HolderKey::KEY_DELETED` (32), which a version 2 client's
/// decoder refuses as an unknown flag (review, 2026-12-05).
/// 4: an identify request may carry up to 2,048 handles (64 before), which a version 3
/// driver refuses as an invalid count (issue 14: one pass over the records per request).
/// 5: a holders process may carry `HolderProcess::WOW64` (16), which a version 4 client's
/// decoder refuses as an unknown flag (audit 20a, M2).
/// 6: the hives record and the holders prefix carry flags (`FILE_TRUNCATED`) where a version
/// 5 decoder requires zeros, and stats names the process with the most opens refused for
/// memory and what exited processes keep charged (four more fields: a version 5 decoder
/// refuses the field count; audit 21b F4).
/// 7: a capture request may name one process (`CaptureScope::Process`, 4), which a version 6
/// driver refuses as an invalid scope (audit 23b, M5); and an unload record carries the
/// driver's interrupt time (`UnloadRecord::interrupt_time`, 8 more bytes a version 6 decoder
/// reads as the mount), so the service dates a failure by a clock that setting the system
/// time does not move (review 22d, L3).
pub const PROTOCOL_VERSION: u16 = 7;
