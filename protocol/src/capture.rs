//! Open-time stack capture: what the driver records of the user-mode code that opened a key
//! (issue 16), and the request that turns it on and off (`IOCTL_HIVETRACK_CAPTURE`).
//!
//! Capture is off until asked for, like `!htrace -enable`: for every open, for the opens of
//! one hive (any key path inside it), for the opens made by processes of one image (its
//! file name, `explorer.exe`, compared case-insensitively with the last component of the
//! process's image path), or for the opens made by one process id (its decimal digits: one
//! service among the many `svchost.exe`, audit 23b M5). The answer is the state after the
//! request.
//!
//! [`CaptureRequest`] body: operation u16 ([`CaptureOp`]), scope u16 ([`CaptureScope`]),
//! reserved u32 (zero), text (2+2n: the hive, image or process id; empty for [`CaptureScope::Off`],
//! [`CaptureScope::All`] and for [`CaptureOp::Get`], which also takes scope 0).
//!
//! [`CaptureState`] body: scope u16, reserved u16, most frames kept per stack u32, since
//! u64 (when this scope was set, 100 ns units; 0 while capture has never been on), text
//! (2+2n).

use crate::text::Text;
use crate::wire::{DecodeError, EncodeError, Message, MessageKind, Reader, Writer};

/// Most frames the driver keeps per stack.
pub const MAX_FRAMES: usize = 16;
/// Longest scope text, in UTF-16 units (a hive path or an image name).
pub const MAX_SCOPE_UNITS: usize = 512;

/// What a capture request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CaptureOp {
    /// Report the current state; change nothing.
    Get = 1,
    /// Replace the scope.
    Set = 2,
}

/// Which opens have their stacks captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CaptureScope {
    /// None (the default).
    Off = 0,
    /// Every tracked open.
    All = 1,
    /// Opens of keys in one hive (the text: its mount point or any key path inside it).
    Hive = 2,
    /// Opens by processes whose image file name is the text (`explorer.exe`).
    Image = 3,
    /// Opens by the process whose id is the text, in decimal digits (`1234`): any process
    /// with that id, so a later process that reuses it is captured too (protocol 7).
    Process = 4,
}

impl CaptureScope {
    /// Maps a wire value back.
    #[must_use]
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0 => Some(Self::Off),
            1 => Some(Self::All),
            2 => Some(Self::Hive),
            3 => Some(Self::Image),
            4 => Some(Self::Process),
            _ => None,
        }
    }

    /// True when the scope names a hive, an image or a process.
    #[must_use]
    pub const fn takes_text(self) -> bool {
        matches!(self, Self::Hive | Self::Image | Self::Process)
    }
}

/// Most decimal digits of a [`CaptureScope::Process`] text (`u32::MAX` has ten).
pub const MAX_PID_DIGITS: usize = 10;

/// The process id a [`CaptureScope::Process`] text names.
///
/// One to [`MAX_PID_DIGITS`] ASCII digits, no sign, space or leading zero (one text per id,
/// so setting the same scope again changes nothing: review 24a, 7), at most `u32::MAX` (a
/// process id is a `HANDLE`-sized value that Windows keeps below 2^32); `None` for anything
/// else, including zero (the idle process, which opens no key).
#[must_use]
pub fn pid_of_text(units: impl IntoIterator<Item = u16>) -> Option<u64> {
    let mut pid: u64 = 0;
    let mut n = 0usize;
    for u in units {
        let d = u.checked_sub(u16::from(b'0')).filter(|&d| d <= 9)?;
        if n == 0 && d == 0 {
            return None;
        }
        n += 1;
        if n > MAX_PID_DIGITS {
            return None;
        }
        pid = pid * 10 + u64::from(d);
    }
    (n > 0 && pid != 0 && u32::try_from(pid).is_ok()).then_some(pid)
}

/// The input of `IOCTL_HIVETRACK_CAPTURE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRequest<'a> {
    /// Get or set.
    pub op: CaptureOp,
    /// The new scope ([`CaptureScope::Off`] for a get).
    pub scope: CaptureScope,
    /// The hive or image the scope names; empty otherwise.
    pub text: Text<'a>,
}

impl<'a> Message<'a> for CaptureRequest<'a> {
    const KIND: MessageKind = MessageKind::CaptureRequest;

    fn body_len(&self) -> usize {
        8 + self.text.encoded_len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.op as u16)?;
        w.u16(self.scope as u16)?;
        w.zeros(4)?;
        self.text.encode("scope text", w)
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let op = match r.u16()? {
            1 => CaptureOp::Get,
            2 => CaptureOp::Set,
            _ => return Err(DecodeError::InvalidField { field: "operation" }),
        };
        let scope =
            CaptureScope::from_u16(r.u16()?).ok_or(DecodeError::InvalidField { field: "scope" })?;
        r.zeros(4)?;
        let text = Text::decode(r)?;
        if op == CaptureOp::Get && scope != CaptureScope::Off {
            return Err(DecodeError::InvalidField { field: "scope" });
        }
        if scope.takes_text() == text.is_empty()
            || text.len() > MAX_SCOPE_UNITS
            || (scope == CaptureScope::Process && pid_of_text(text.units()).is_none())
        {
            return Err(DecodeError::InvalidField {
                field: "scope text",
            });
        }
        Ok(Self { op, scope, text })
    }
}

/// The answer of `IOCTL_HIVETRACK_CAPTURE`: the state after the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureState<'a> {
    /// The scope now.
    pub scope: CaptureScope,
    /// Most frames kept per stack ([`MAX_FRAMES`]).
    pub max_frames: u32,
    /// When this scope was set (100 ns units; 0 when capture was never on).
    pub since: u64,
    /// The hive or image the scope names; empty otherwise.
    pub text: Text<'a>,
}

impl<'a> Message<'a> for CaptureState<'a> {
    const KIND: MessageKind = MessageKind::CaptureState;

    fn body_len(&self) -> usize {
        16 + self.text.encoded_len()
    }

    fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u16(self.scope as u16)?;
        w.zeros(2)?;
        w.u32(self.max_frames)?;
        w.u64(self.since)?;
        self.text.encode("scope text", w)
    }

    fn decode_body(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let scope =
            CaptureScope::from_u16(r.u16()?).ok_or(DecodeError::InvalidField { field: "scope" })?;
        r.zeros(2)?;
        let max_frames = r.u32()?;
        let since = r.u64()?;
        let text = Text::decode(r)?;
        if scope.takes_text() == text.is_empty() {
            return Err(DecodeError::InvalidField {
                field: "scope text",
            });
        }
        Ok(Self {
            scope,
            max_frames,
            since,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    const EXE: [u16; 3] = [b'a' as u16, b'.' as u16, b'e' as u16];

    #[test]
    fn request_golden_and_round_trip() {
        let req = CaptureRequest {
            op: CaptureOp::Set,
            scope: CaptureScope::Image,
            text: Text::Units(&EXE),
        };
        let mut buf = [0u8; 64];
        let n = encode(&req, &mut buf).unwrap();
        assert_eq!(
            buf[..n],
            [
                b'H', b'v', b'T', b'k', 7, 0, 13, 0, 32, 0, 0, 0, 0, 0, 0, 0, // header
                2, 0, 3, 0, 0, 0, 0, 0, // set, image
                3, 0, b'a', 0, b'.', 0, b'e', 0, // text
            ]
        );
        assert_eq!(decode::<CaptureRequest<'_>>(&buf[..n]).unwrap(), req);
        for n in 0..n {
            assert!(decode::<CaptureRequest<'_>>(&buf[..n]).is_err());
        }
    }

    #[test]
    fn request_rejects_inconsistent_fields() {
        let mut buf = [0u8; 64];
        let bad = [
            (CaptureOp::Set, CaptureScope::Hive, Text::EMPTY),
            (CaptureOp::Set, CaptureScope::All, Text::Units(&EXE)),
            (CaptureOp::Set, CaptureScope::Off, Text::Units(&EXE)),
            (CaptureOp::Get, CaptureScope::All, Text::EMPTY),
        ];
        for (op, scope, text) in bad {
            let n = encode(&CaptureRequest { op, scope, text }, &mut buf).unwrap();
            assert!(
                matches!(
                    decode::<CaptureRequest<'_>>(&buf[..n]),
                    Err(DecodeError::InvalidField { .. })
                ),
                "{op:?} {scope:?}"
            );
        }
        let long = [u16::from(b'x'); MAX_SCOPE_UNITS + 1];
        let mut big = [0u8; 2048];
        let req = CaptureRequest {
            op: CaptureOp::Set,
            scope: CaptureScope::Hive,
            text: Text::Units(&long),
        };
        let n = encode(&req, &mut big).unwrap();
        assert!(decode::<CaptureRequest<'_>>(&big[..n]).is_err());
        let n = encode(
            &CaptureRequest {
                op: CaptureOp::Set,
                scope: CaptureScope::Hive,
                text: Text::Units(&EXE),
            },
            &mut buf,
        )
        .unwrap();
        buf[16] = 3; // unknown operation
        assert!(decode::<CaptureRequest<'_>>(&buf[..n]).is_err());
    }

    /// Audit 23b M5: a process scope names one process id in decimal digits, and nothing
    /// else: a text the driver could not read as a pid would capture no open while the
    /// state said capture was on for it.
    #[test]
    fn a_process_scope_takes_only_a_decimal_pid() {
        let units = |s: &str| s.encode_utf16().collect::<std::vec::Vec<u16>>();
        for (text, pid) in [
            ("1234", Some(1234)),
            ("4", Some(4)),
            ("0004", None),
            ("40", Some(40)),
            ("4294967295", Some(u64::from(u32::MAX))),
            ("4294967296", None),
            ("04294967295", None),
            ("0", None),
            ("", None),
            ("12a", None),
            ("-4", None),
            ("+4", None),
            (" 4", None),
            ("\u{0664}", None),
        ] {
            assert_eq!(pid_of_text(units(text)), pid, "{text:?}");
            let t = units(text);
            let mut buf = [0u8; 64];
            let n = encode(
                &CaptureRequest {
                    op: CaptureOp::Set,
                    scope: CaptureScope::Process,
                    text: Text::Units(&t),
                },
                &mut buf,
            )
            .unwrap();
            assert_eq!(
                decode::<CaptureRequest<'_>>(&buf[..n]).is_ok(),
                pid.is_some(),
                "{text:?}"
            );
        }
        assert_eq!(CaptureScope::from_u16(4), Some(CaptureScope::Process));
        assert_eq!(CaptureScope::from_u16(5), None);
    }

    #[test]
    fn state_round_trip() {
        let st = CaptureState {
            scope: CaptureScope::All,
            max_frames: 16,
            since: 0x0102_0304,
            text: Text::EMPTY,
        };
        let mut buf = [0u8; 64];
        let n = encode(&st, &mut buf).unwrap();
        assert_eq!(n, 16 + 16 + 2);
        assert_eq!(decode::<CaptureState<'_>>(&buf[..n]).unwrap(), st);
        buf[18] = 1; // reserved
        assert!(decode::<CaptureState<'_>>(&buf[..n]).is_err());
    }
}
