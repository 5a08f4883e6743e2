//! `IOCTL_HIVETRACK_GET_VERSION`: the driver's version and build id.
//!
//! Body layout (40 bytes):
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 2    | driver major version                                   |
//! | 2      | 2    | driver minor version                                   |
//! | 4      | 2    | driver patch version                                   |
//! | 6      | 2    | capabilities ([`VersionInfo::CAP_WAIT_FREE`], ...)       |
//! | 8      | 32   | build id: printable ASCII, zero-padded to 32 bytes      |
//!
//! The protocol version is the header's. Capability bits tell a client which requests this
//! driver answers beyond the queries every version has; a client ignores bits it does not
//! know.

use core::fmt;

use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// Length of the build id field.
pub const BUILD_ID_LEN: usize = 32;

/// A build id: up to 32 printable ASCII bytes (a git revision, say), zero-padded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BuildId([u8; BUILD_ID_LEN]);

impl BuildId {
    /// Builds the id from a string, keeping the printable-ASCII prefix of at most 32 bytes.
    /// `const`, so the driver can compute it at compile time.
    #[must_use]
    pub const fn new(s: &str) -> Self {
        let b = s.as_bytes();
        let mut out = [0u8; BUILD_ID_LEN];
        let mut i = 0;
        while i < b.len() && i < BUILD_ID_LEN && b[i].is_ascii_graphic() {
            out[i] = b[i];
            i += 1;
        }
        Self(out)
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(BUILD_ID_LEN);
        // Only printable ASCII is ever stored (checked by `new` and by decoding).
        core::str::from_utf8(&self.0[..n]).unwrap_or("")
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to `IOCTL_HIVETRACK_GET_VERSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// Driver version, major.
    pub major: u16,
    /// Driver version, minor.
    pub minor: u16,
    /// Driver version, patch.
    pub patch: u16,
    /// What the driver can do beyond the base queries (`CAP_*` bits).
    pub capabilities: u16,
    /// Build id of the driver image.
    pub build_id: BuildId,
}

impl VersionInfo {
    /// The driver answers `IOCTL_HIVETRACK_WAIT_FREE` ([`crate::wait`]).
    pub const CAP_WAIT_FREE: u16 = 1;
    /// The driver answers `IOCTL_HIVETRACK_IDENTIFY_HANDLES` ([`crate::identify`]).
    pub const CAP_IDENTIFY_HANDLES: u16 = 1 << 1;
    /// The driver captures open-time stacks and records modules
    /// (`IOCTL_HIVETRACK_CAPTURE`, [`crate::stacks`], [`crate::modules`]).
    pub const CAP_STACKS: u16 = 1 << 2;
    /// The driver answers `IOCTL_HIVETRACK_WAIT_EVENTS` ([`crate::events`]).
    pub const CAP_EVENTS: u16 = 1 << 3;

    /// True when every bit of `cap` is set.
    #[must_use]
    pub const fn has(&self, cap: u16) -> bool {
        self.capabilities & cap == cap
    }
}

impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{} ({})",
            self.major, self.minor, self.patch, self.build_id
        )
    }
}

impl Message<'_> for VersionInfo {
    const KIND: MessageKind = MessageKind::VersionInfo;

    fn body_len(&self) -> usize {
        8 + BUILD_ID_LEN
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.major)?;
        w.u16(self.minor)?;
        w.u16(self.patch)?;
        w.u16(self.capabilities)?;
        w.bytes(&self.build_id.0)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let major = r.u16()?;
        let minor = r.u16()?;
        let patch = r.u16()?;
        let capabilities = r.u16()?;
        let raw: [u8; BUILD_ID_LEN] = r.array()?;
        let len = raw.iter().position(|&b| b == 0).unwrap_or(BUILD_ID_LEN);
        let printable = raw[..len].iter().all(u8::is_ascii_graphic);
        let padded = raw[len..].iter().all(|&b| b == 0);
        if !printable || !padded {
            return Err(DecodeError::InvalidField { field: "build_id" });
        }
        Ok(Self {
            major,
            minor,
            patch,
            capabilities,
            build_id: BuildId(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DecodeError, HEADER_LEN, decode, encode};

    fn sample() -> VersionInfo {
        VersionInfo {
            major: 0,
            minor: 1,
            patch: 2,
            capabilities: VersionInfo::CAP_WAIT_FREE,
            build_id: BuildId::new("g1a2b3c4"),
        }
    }

    /// The exact bytes of `sample()`: changing the layout must change this fixture on purpose.
    const GOLDEN: [u8; 56] = [
        b'H', b'v', b'T', b'k', 7, 0, 1, 0, 56, 0, 0, 0, 0, 0, 0, 0, // header
        0, 0, 1, 0, 2, 0, 1, 0, // 0.1.2, wait-free
        b'g', b'1', b'a', b'2', b'b', b'3', b'c', b'4', 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn encodes_to_the_golden_bytes() {
        let mut buf = [0xA5u8; 64];
        let n = encode(&sample(), &mut buf).unwrap();
        assert_eq!(n, 56);
        assert_eq!(buf[..n], GOLDEN);
        assert!(
            buf[n..].iter().all(|&b| b == 0xA5),
            "wrote past the message"
        );
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; 56];
        encode(&sample(), &mut buf).unwrap();
        assert_eq!(decode::<VersionInfo>(&buf).unwrap(), sample());
        assert_eq!(sample().to_string(), "0.1.2 (g1a2b3c4)");
    }

    #[test]
    fn short_buffer_reports_the_size_needed() {
        let mut buf = [0u8; 55];
        assert_eq!(
            encode(&sample(), &mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: 56,
                available: 55
            })
        );
    }

    #[test]
    fn every_truncation_is_rejected() {
        for n in 0..GOLDEN.len() {
            assert!(
                decode::<VersionInfo>(&GOLDEN[..n]).is_err(),
                "accepted {n} bytes"
            );
        }
    }

    #[test]
    fn malformed_fields_are_rejected() {
        let mut bad = GOLDEN;
        bad[0] = b'X';
        assert_eq!(decode::<VersionInfo>(&bad), Err(DecodeError::BadMagic));
        let mut bad = GOLDEN;
        bad[4] = 9;
        assert_eq!(
            decode::<VersionInfo>(&bad),
            Err(DecodeError::UnsupportedVersion { found: 9 })
        );
        let mut bad = GOLDEN;
        bad[6] = 0x7F;
        assert_eq!(
            decode::<VersionInfo>(&bad),
            Err(DecodeError::UnknownKind { found: 0x7F })
        );
        let mut bad = GOLDEN;
        bad[13] = 1;
        assert_eq!(
            decode::<VersionInfo>(&bad),
            Err(DecodeError::NonZeroPadding { offset: 13 })
        );
        let mut newer = GOLDEN;
        newer[HEADER_LEN + 7] = 0x80; // a capability this version does not know: ignored
        let v = decode::<VersionInfo>(&newer).unwrap();
        assert!(v.has(VersionInfo::CAP_WAIT_FREE) && v.capabilities == 0x8001);
        let mut bad = GOLDEN;
        bad[HEADER_LEN + 8 + 20] = b'x'; // text after the terminating zero
        assert_eq!(
            decode::<VersionInfo>(&bad),
            Err(DecodeError::InvalidField { field: "build_id" })
        );
        let mut bad = GOLDEN;
        bad[8] = 57; // size larger than the buffer
        assert!(matches!(
            decode::<VersionInfo>(&bad),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut bad = GOLDEN;
        bad[8] = 55; // size smaller than the body
        assert!(decode::<VersionInfo>(&bad).is_err());
    }

    /// Decoding is canonical: bytes past the declared size are refused, not ignored (audit
    /// 21b F9: every IOCTL accepted up to its maximum length of trailing garbage).
    #[test]
    fn trailing_bytes_after_size_are_refused() {
        let mut buf = [0xEEu8; 80];
        buf[..56].copy_from_slice(&GOLDEN);
        assert_eq!(decode::<VersionInfo>(&buf[..56]).unwrap(), sample());
        for extra in [1, 24] {
            assert_eq!(
                decode::<VersionInfo>(&buf[..56 + extra]),
                Err(DecodeError::SizeMismatch {
                    declared: 56,
                    actual: 56 + extra
                })
            );
        }
    }

    #[test]
    fn build_id_keeps_only_printable_ascii() {
        assert_eq!(BuildId::new("abc def").as_str(), "abc");
        assert_eq!(BuildId::new(&"x".repeat(40)).as_str().len(), BUILD_ID_LEN);
    }
}
