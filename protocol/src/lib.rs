//! The IOCTL protocol spoken between `hivetrack.sys` and the `hivetrack` CLI.
//!
//! This crate is `no_std` and never allocates: the driver links it unchanged. Every message
//! is a fixed little-endian layout behind a [`wire::Header`] that carries a magic number, the
//! protocol version, the message kind and the total size; padding is explicit and always
//! zero; strings are length-prefixed UTF-16. [`wire::encode`] writes into a caller buffer and
//! [`wire::decode`] returns a typed [`wire::DecodeError`] for every malformed input.
#![cfg_attr(not(test), no_std)]

pub mod ioctl;
pub mod version;
pub mod wire;

/// The protocol version this crate speaks. Bumped on any incompatible layout change; the
/// CLI refuses to talk to a driver that answers with another version.
pub const PROTOCOL_VERSION: u16 = 1;
