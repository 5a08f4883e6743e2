//! Security model: SIDs, ACLs and security descriptors parsed from the bytes a driver passes
//! (self-relative or absolute), caller tokens (SYSTEM, an elevated administrator, a UAC-filtered
//! administrator whose Administrators group is deny-only, a standard user), the generic
//! mapping of file/device objects, and the DACL access check the I/O manager performs when a
//! caller opens a device (SeAccessCheck semantics).
//!
//! Docs: "How DACLs Control Access to an Object"
//! <https://learn.microsoft.com/en-us/windows/win32/secauthz/how-dacls-control-access-to-an-object>,
//! SECURITY_DESCRIPTOR_RELATIVE / ACL / ACE_HEADER / SID layouts in winnt.h.

use std::fmt;

use crate::nt::status::{
    NtStatus, STATUS_INVALID_ACL, STATUS_INVALID_SECURITY_DESCR, STATUS_INVALID_SID,
};

/// DELETE.
pub const DELETE: u32 = 0x0001_0000;
/// READ_CONTROL.
pub const READ_CONTROL: u32 = 0x0002_0000;
/// WRITE_DAC.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// WRITE_OWNER.
pub const WRITE_OWNER: u32 = 0x0008_0000;
/// SYNCHRONIZE.
pub const SYNCHRONIZE: u32 = 0x0010_0000;
/// ACCESS_SYSTEM_SECURITY.
pub const ACCESS_SYSTEM_SECURITY: u32 = 0x0100_0000;
/// MAXIMUM_ALLOWED.
pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
/// GENERIC_ALL.
pub const GENERIC_ALL: u32 = 0x1000_0000;
/// GENERIC_EXECUTE.
pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
/// GENERIC_WRITE.
pub const GENERIC_WRITE: u32 = 0x4000_0000;
/// GENERIC_READ.
pub const GENERIC_READ: u32 = 0x8000_0000;
/// FILE_READ_DATA.
pub const FILE_READ_DATA: u32 = 0x0001;
/// FILE_WRITE_DATA.
pub const FILE_WRITE_DATA: u32 = 0x0002;
/// FILE_GENERIC_READ.
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// FILE_GENERIC_WRITE.
pub const FILE_GENERIC_WRITE: u32 = 0x0012_0116;
/// FILE_GENERIC_EXECUTE.
pub const FILE_GENERIC_EXECUTE: u32 = 0x0012_00A0;
/// FILE_ALL_ACCESS.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;

/// Maps generic rights with the file/device object type's GENERIC_MAPPING.
#[must_use]
pub const fn map_generic_file(mut mask: u32) -> u32 {
    if mask & GENERIC_READ != 0 {
        mask |= FILE_GENERIC_READ;
    }
    if mask & GENERIC_WRITE != 0 {
        mask |= FILE_GENERIC_WRITE;
    }
    if mask & GENERIC_EXECUTE != 0 {
        mask |= FILE_GENERIC_EXECUTE;
    }
    if mask & GENERIC_ALL != 0 {
        mask |= FILE_ALL_ACCESS;
    }
    mask & !(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL)
}

/// A security identifier.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sid {
    /// IdentifierAuthority (48-bit, big-endian in the binary form).
    pub authority: u64,
    /// SubAuthority values.
    pub sub: Vec<u32>,
}

impl Sid {
    /// `S-1-<authority>-<sub>...`.
    #[must_use]
    pub fn new(authority: u64, sub: &[u32]) -> Self {
        Self {
            authority,
            sub: sub.to_vec(),
        }
    }

    /// LocalSystem, S-1-5-18.
    #[must_use]
    pub fn local_system() -> Self {
        Self::new(5, &[18])
    }

    /// BUILTIN\Administrators, S-1-5-32-544.
    #[must_use]
    pub fn administrators() -> Self {
        Self::new(5, &[32, 544])
    }

    /// BUILTIN\Users, S-1-5-32-545.
    #[must_use]
    pub fn users() -> Self {
        Self::new(5, &[32, 545])
    }

    /// Everyone, S-1-1-0.
    #[must_use]
    pub fn everyone() -> Self {
        Self::new(1, &[0])
    }

    /// Authenticated Users, S-1-5-11.
    #[must_use]
    pub fn authenticated_users() -> Self {
        Self::new(5, &[11])
    }

    /// INTERACTIVE, S-1-5-4.
    #[must_use]
    pub fn interactive() -> Self {
        Self::new(5, &[4])
    }

    /// RESTRICTED, S-1-5-12.
    #[must_use]
    pub fn restricted() -> Self {
        Self::new(5, &[12])
    }

    /// Parses a binary SID at the start of `b`; returns it and its length.
    ///
    /// # Errors
    /// STATUS_INVALID_SID for a bad revision, too many sub-authorities or truncation.
    pub fn parse(b: &[u8]) -> Result<(Self, usize), NtStatus> {
        let (&rev, &count) = (
            b.first().ok_or(STATUS_INVALID_SID)?,
            b.get(1).ok_or(STATUS_INVALID_SID)?,
        );
        let count = usize::from(count);
        if rev != 1 || count > 15 {
            return Err(STATUS_INVALID_SID);
        }
        let len = 8 + 4 * count;
        let b = b.get(..len).ok_or(STATUS_INVALID_SID)?;
        let authority = b[2..8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
        let sub = (0..count)
            .map(|i| u32::from_le_bytes([b[8 + 4 * i], b[9 + 4 * i], b[10 + 4 * i], b[11 + 4 * i]]))
            .collect();
        Ok((Self { authority, sub }, len))
    }

    /// The binary form.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![1, self.sub.len() as u8];
        v.extend_from_slice(&self.authority.to_be_bytes()[2..]);
        for s in &self.sub {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-{}", self.authority)?;
        for s in &self.sub {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

/// ACE kinds the access check honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AceKind {
    /// ACCESS_ALLOWED_ACE_TYPE (0).
    Allow,
    /// ACCESS_DENIED_ACE_TYPE (1).
    Deny,
    /// Any other type (audit, object ACEs, ...): skipped by this model.
    Other(u8),
}

/// One ACE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ace {
    /// Type.
    pub kind: AceKind,
    /// AceFlags.
    pub flags: u8,
    /// Access mask.
    pub mask: u32,
    /// Trustee.
    pub sid: Sid,
}

/// INHERIT_ONLY_ACE: the ACE does not apply to this object.
const INHERIT_ONLY_ACE: u8 = 0x08;

/// Parses an ACL at the start of `b`.
///
/// # Errors
/// STATUS_INVALID_ACL for a bad revision, size or ACE; STATUS_INVALID_SID for a bad SID.
pub fn parse_acl(b: &[u8]) -> Result<Vec<Ace>, NtStatus> {
    let h = b.get(..8).ok_or(STATUS_INVALID_ACL)?;
    let (rev, size, count) = (
        h[0],
        usize::from(u16::from_le_bytes([h[2], h[3]])),
        u16::from_le_bytes([h[4], h[5]]),
    );
    if !(2..=4).contains(&rev) || size < 8 || size % 4 != 0 {
        return Err(STATUS_INVALID_ACL);
    }
    let acl = b.get(..size).ok_or(STATUS_INVALID_ACL)?;
    let mut off = 8;
    let mut aces = Vec::new();
    for _ in 0..count {
        let ah = acl.get(off..off + 8).ok_or(STATUS_INVALID_ACL)?;
        let ace_size = usize::from(u16::from_le_bytes([ah[2], ah[3]]));
        if ace_size < 8 || ace_size % 4 != 0 || off + ace_size > size {
            return Err(STATUS_INVALID_ACL);
        }
        let kind = match ah[0] {
            0 => AceKind::Allow,
            1 => AceKind::Deny,
            t => AceKind::Other(t),
        };
        let mask = u32::from_le_bytes([ah[4], ah[5], ah[6], ah[7]]);
        if matches!(kind, AceKind::Allow | AceKind::Deny) {
            let (sid, sid_len) = Sid::parse(&acl[off + 8..off + ace_size])?;
            if 8 + sid_len > ace_size {
                return Err(STATUS_INVALID_ACL);
            }
            aces.push(Ace {
                kind,
                flags: ah[1],
                mask,
                sid,
            });
        }
        off += ace_size;
    }
    Ok(aces)
}

/// A parsed security descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityDescriptor {
    /// Owner, if present.
    pub owner: Option<Sid>,
    /// Group, if present.
    pub group: Option<Sid>,
    /// `None`: no DACL (everyone gets everything). `Some(empty)`: nobody gets anything.
    pub dacl: Option<Vec<Ace>>,
    /// SE_DACL_PROTECTED.
    pub dacl_protected: bool,
}

/// SE_DACL_PRESENT.
const SE_DACL_PRESENT: u16 = 0x0004;
/// SE_DACL_PROTECTED.
const SE_DACL_PROTECTED: u16 = 0x1000;
/// SE_SELF_RELATIVE.
const SE_SELF_RELATIVE: u16 = 0x8000;

/// Reads `len` bytes at `addr` of the driver's memory.
///
/// # Safety
/// `addr` must be readable for `len` bytes.
unsafe fn bytes_at<'a>(addr: usize, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

/// Length of the SID at `addr` (reads its 2-byte header first).
///
/// # Safety
/// `addr` must point at a readable SID.
unsafe fn sid_at(addr: usize) -> Result<Sid, NtStatus> {
    // SAFETY: the SID header is readable per the caller.
    let head = unsafe { bytes_at(addr, 2) };
    let len = 8 + 4 * usize::from(head[1]).min(15);
    // SAFETY: a SID with that many sub-authorities is readable per the caller.
    Sid::parse(unsafe { bytes_at(addr, len) }).map(|(s, _)| s)
}

/// ACL at `addr` (reads its header for AclSize first).
///
/// # Safety
/// `addr` must point at a readable ACL.
unsafe fn acl_at(addr: usize) -> Result<Vec<Ace>, NtStatus> {
    // SAFETY: the ACL header is readable per the caller.
    let head = unsafe { bytes_at(addr, 8) };
    let size = usize::from(u16::from_le_bytes([head[2], head[3]]));
    // SAFETY: the whole ACL (AclSize bytes) is readable per the caller.
    parse_acl(unsafe { bytes_at(addr, size.max(8)) })
}

impl SecurityDescriptor {
    /// Parses a descriptor in the driver's memory: self-relative (offsets) or absolute
    /// (pointers), as SeCaptureSecurityDescriptor accepts both.
    ///
    /// # Errors
    /// STATUS_INVALID_SECURITY_DESCR, STATUS_INVALID_ACL or STATUS_INVALID_SID.
    ///
    /// # Safety
    /// `addr` must point at a readable descriptor whose components are readable.
    pub unsafe fn capture(addr: usize) -> Result<Self, NtStatus> {
        if addr == 0 {
            return Err(STATUS_INVALID_SECURITY_DESCR);
        }
        // SAFETY: the 4-byte header is readable per the caller.
        let h = unsafe { bytes_at(addr, 4) };
        let control = u16::from_le_bytes([h[2], h[3]]);
        if h[0] != 1 {
            return Err(STATUS_INVALID_SECURITY_DESCR);
        }
        let self_relative = control & SE_SELF_RELATIVE != 0;
        let field = |i: usize| -> usize {
            if self_relative {
                // SAFETY: SECURITY_DESCRIPTOR_RELATIVE is 20 bytes: 4 header + 4 offsets.
                let b = unsafe { bytes_at(addr + 4 + 4 * i, 4) };
                match u32::from_le_bytes([b[0], b[1], b[2], b[3]]) {
                    0 => 0,
                    off => addr + off as usize,
                }
            } else {
                // SAFETY: SECURITY_DESCRIPTOR (absolute) is 40 bytes: 8 header + 4 pointers.
                let b = unsafe { bytes_at(addr + 8 + 8 * i, 8) };
                usize::from_le_bytes(b.try_into().unwrap_or([0; 8]))
            }
        };
        let (owner, group, dacl) = (field(0), field(1), field(3));
        let owner = if owner == 0 {
            None
        } else {
            // SAFETY: the descriptor's owner SID is readable per the caller.
            Some(unsafe { sid_at(owner) }?)
        };
        let group = if group == 0 {
            None
        } else {
            // SAFETY: as above, for the group SID.
            Some(unsafe { sid_at(group) }?)
        };
        let dacl = if control & SE_DACL_PRESENT == 0 || dacl == 0 {
            None
        } else {
            // SAFETY: as above, for the DACL.
            Some(unsafe { acl_at(dacl) }?)
        };
        Ok(Self {
            owner,
            group,
            dacl,
            dacl_protected: control & SE_DACL_PROTECTED != 0,
        })
    }

    /// The descriptor IoCreateDevice gives a device of a type other than disks, file systems
    /// and networks (hivetrack's 0x8A54, the test driver's FILE_DEVICE_UNKNOWN): WRK
    /// `base/ntos/io/iomgr/iosubs.c` IoCreateDevice → IopCreateDefaultDeviceSecurityDescriptor
    /// (line 4421; the `default:` case at 13454-13458 is IO_SD_SYS_ALL_ADM_ALL_WORLD_RWE_RES_RE,
    /// whose DACL is `SePublicOpenUnrestrictedDacl`, 13508-13509), built in
    /// `base/ntos/se/seglobal.c` (lines 1074-1220) as World GENERIC_READ|WRITE|EXECUTE, System
    /// GENERIC_ALL, Administrators GENERIC_ALL, Restricted GENERIC_READ|EXECUTE, in that order,
    /// not protected. Everyone may read and write — which is why a driver must restrict its
    /// control device. Learn, "Securing Device Objects": the default descriptor depends on the
    /// device type. Until 2026-12-06 the model used IoCreateDeviceSecure's
    /// SDDL_DEVOBJ_SYS_ALL_ADM_RWX_WORLD_RW_RES_R instead (fidelity audit 21a, A5). The owner
    /// and group (from the creating token on Windows) are the model's choice: Administrators
    /// and System.
    #[must_use]
    pub fn default_device() -> Self {
        let allow = |mask, sid| Ace {
            kind: AceKind::Allow,
            flags: 0,
            mask,
            sid,
        };
        Self {
            owner: Some(Sid::administrators()),
            group: Some(Sid::local_system()),
            dacl: Some(vec![
                allow(
                    GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE,
                    Sid::everyone(),
                ),
                allow(GENERIC_ALL, Sid::local_system()),
                allow(GENERIC_ALL, Sid::administrators()),
                allow(GENERIC_READ | GENERIC_EXECUTE, Sid::restricted()),
            ]),
            dacl_protected: false,
        }
    }
}

/// How a token holds a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupUse {
    /// SE_GROUP_ENABLED: counts for allow and deny ACEs.
    Enabled,
    /// SE_GROUP_USE_FOR_DENY_ONLY: counts for deny ACEs only (UAC-filtered Administrators).
    DenyOnly,
}

/// An access token: the caller's identity.
#[derive(Clone, Debug)]
pub struct Token {
    /// Short name for reports ("standard user").
    pub label: &'static str,
    /// The user SID.
    pub user: Sid,
    /// Group SIDs.
    pub groups: Vec<(Sid, GroupUse)>,
}

/// The callers scenarios can impersonate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// NT AUTHORITY\SYSTEM (a service).
    System,
    /// An elevated administrator.
    Admin,
    /// An administrator's UAC-filtered (non-elevated) token.
    FilteredAdmin,
    /// A standard user.
    User,
}

impl Caller {
    /// The token of this caller.
    #[must_use]
    pub fn token(self) -> Token {
        let person = Sid::new(5, &[21, 1_004_336_348, 1_177_238_915, 682_003_330, 1001]);
        let common = |admin: Option<GroupUse>| {
            let mut g = vec![
                (Sid::everyone(), GroupUse::Enabled),
                (Sid::users(), GroupUse::Enabled),
                (Sid::interactive(), GroupUse::Enabled),
                (Sid::authenticated_users(), GroupUse::Enabled),
            ];
            if let Some(u) = admin {
                g.push((Sid::administrators(), u));
            }
            g
        };
        match self {
            Self::System => Token {
                label: "SYSTEM",
                user: Sid::local_system(),
                groups: vec![
                    (Sid::administrators(), GroupUse::Enabled),
                    (Sid::everyone(), GroupUse::Enabled),
                    (Sid::authenticated_users(), GroupUse::Enabled),
                ],
            },
            Self::Admin => Token {
                label: "elevated administrator",
                user: person,
                groups: common(Some(GroupUse::Enabled)),
            },
            Self::FilteredAdmin => Token {
                label: "non-elevated administrator (UAC-filtered token)",
                user: person,
                groups: common(Some(GroupUse::DenyOnly)),
            },
            Self::User => Token {
                label: "standard user",
                user: person,
                groups: common(None),
            },
        }
    }
}

impl Token {
    fn matches(&self, sid: &Sid, for_deny: bool) -> bool {
        *sid == self.user
            || self
                .groups
                .iter()
                .any(|(g, u)| g == sid && (for_deny || *u == GroupUse::Enabled))
    }
}

/// SeAccessCheck for file/device objects: maps generic rights, walks the DACL in order
/// (a matching deny ACE for any still-wanted bit denies; matching allow ACEs grant bits), the
/// owner implicitly holds READ_CONTROL and WRITE_DAC. Returns the granted mask or None
/// (STATUS_ACCESS_DENIED). `MAXIMUM_ALLOWED` grants whatever the DACL allows, if anything.
///
/// A DesiredAccess of 0 is refused, whatever the descriptor: WRK `base/ntos/se/accessck.c`
/// SeAccessCheck (lines 3442-3447: `DesiredAccess == 0` with no PreviouslyGrantedAccess is
/// STATUS_ACCESS_DENIED), which `io/iomgr/parse.c` IopParseDevice calls for a device open with
/// PreviouslyGrantedAccess 0 (lines 614-618). Until 2026-12-06 the model granted it (every
/// ACE satisfied an empty request), so a standard user reached a driver's IRP_MJ_CREATE
/// (fidelity audit 21a, A4).
#[must_use]
pub fn access_check(sd: &SecurityDescriptor, token: &Token, desired: u32) -> Option<u32> {
    if desired == 0 {
        return None;
    }
    let maximum = desired & MAXIMUM_ALLOWED != 0;
    let desired = map_generic_file(desired & !MAXIMUM_ALLOWED);
    let Some(dacl) = &sd.dacl else {
        return Some(if maximum {
            FILE_ALL_ACCESS | desired
        } else {
            desired
        });
    };
    let mut granted = 0u32;
    let mut denied = 0u32;
    if sd.owner.as_ref().is_some_and(|o| token.matches(o, false)) {
        granted |= READ_CONTROL | WRITE_DAC;
    }
    for ace in dacl.iter().filter(|a| a.flags & INHERIT_ONLY_ACE == 0) {
        let mask = map_generic_file(ace.mask);
        match ace.kind {
            AceKind::Deny if token.matches(&ace.sid, true) => {
                if !maximum && mask & desired & !granted != 0 {
                    return None;
                }
                denied |= mask & !granted;
            }
            AceKind::Allow if token.matches(&ace.sid, false) => granted |= mask & !denied,
            _ => {}
        }
        if !maximum && desired & !granted == 0 {
            return Some(desired);
        }
    }
    if maximum {
        let g = granted | (desired & granted);
        return (g != 0 && desired & !g == 0).then_some(g);
    }
    (desired & !granted == 0).then_some(desired)
}

/// RtlLengthSid — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-rtllengthsid>.
unsafe extern "win64" fn RtlLengthSid(sid: *const u8) -> u32 {
    // SAFETY: the driver passes a valid SID.
    let count = unsafe { sid.wrapping_add(1).read() };
    8 + 4 * u32::from(count)
}

/// RtlValidSid — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/ntifs/nf-ntifs-rtlvalidsid>.
unsafe extern "win64" fn RtlValidSid(sid: *const u8) -> u8 {
    if sid.is_null() {
        return 0;
    }
    // SAFETY: the driver passes a readable SID (header first, then its sub-authorities).
    u8::from(unsafe { sid_at(sid as usize) }.is_ok())
}

/// RtlValidSecurityDescriptor — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlvalidsecuritydescriptor>.
unsafe extern "win64" fn RtlValidSecurityDescriptor(sd: *const u8) -> u8 {
    // SAFETY: the driver passes a readable descriptor.
    u8::from(unsafe { SecurityDescriptor::capture(sd as usize) }.is_ok())
}

/// The security Rtl routines.
pub(crate) fn exports() -> Vec<crate::nt::exports::Export> {
    use crate::nt::exports::Export;
    vec![
        Export::function("RtlLengthSid", RtlLengthSid as *const () as usize),
        Export::function("RtlValidSid", RtlValidSid as *const () as usize),
        Export::function(
            "RtlValidSecurityDescriptor",
            RtlValidSecurityDescriptor as *const () as usize,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `D:P(A;;FA;;;SY)(A;;FA;;;BA)`, self-relative, as hivetrack builds it.
    fn admins_only() -> Vec<u8> {
        let mut acl = vec![2, 0, 52, 0, 2, 0, 0, 0];
        for sid in [Sid::local_system(), Sid::administrators()] {
            let s = sid.to_bytes();
            acl.extend_from_slice(&[0, 0, (8 + s.len()) as u8, 0]);
            acl.extend_from_slice(&FILE_ALL_ACCESS.to_le_bytes());
            acl.extend_from_slice(&s);
        }
        let mut sd = vec![
            1, 0, 0x04, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0,
        ];
        sd.extend_from_slice(&acl);
        sd
    }

    fn capture(b: &[u8]) -> Result<SecurityDescriptor, NtStatus> {
        // SAFETY: a local buffer holding a whole descriptor (or a deliberately bad one whose
        // declared sizes stay inside the buffer).
        unsafe { SecurityDescriptor::capture(b.as_ptr() as usize) }
    }

    #[test]
    fn sid_round_trips() {
        let s = Sid::administrators();
        let (back, len) = Sid::parse(&s.to_bytes()).unwrap();
        assert_eq!((back, len), (s, 16));
        assert_eq!(format!("{:?}", Sid::local_system()), "S-1-5-18");
        assert_eq!(
            Sid::parse(&[2, 1, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]),
            Err(STATUS_INVALID_SID)
        );
    }

    #[test]
    fn admins_only_dacl_admits_system_and_elevated_admins_only() {
        let sd = capture(&admins_only()).unwrap();
        assert!(sd.dacl_protected);
        let rw = GENERIC_READ | GENERIC_WRITE;
        assert!(access_check(&sd, &Caller::System.token(), rw).is_some());
        assert!(access_check(&sd, &Caller::Admin.token(), rw).is_some());
        assert!(access_check(&sd, &Caller::FilteredAdmin.token(), rw).is_none());
        assert!(access_check(&sd, &Caller::User.token(), rw).is_none());
        assert!(access_check(&sd, &Caller::User.token(), FILE_READ_DATA).is_none());
    }

    #[test]
    fn no_access_asked_is_refused() {
        let open = SecurityDescriptor::default_device();
        let admins = capture(&admins_only()).unwrap();
        for sd in [&open, &admins] {
            for caller in [Caller::System, Caller::Admin, Caller::User] {
                assert_eq!(access_check(sd, &caller.token(), 0), None);
            }
        }
    }

    #[test]
    fn default_device_security_admits_everyone_for_read_write() {
        let sd = SecurityDescriptor::default_device();
        let rw = GENERIC_READ | GENERIC_WRITE;
        assert!(access_check(&sd, &Caller::User.token(), rw).is_some());
        assert!(access_check(&sd, &Caller::User.token(), GENERIC_EXECUTE).is_some());
        assert!(access_check(&sd, &Caller::User.token(), WRITE_DAC).is_none());
        // Administrators hold GENERIC_ALL (WRK seglobal.c SePublicOpenUnrestrictedDacl).
        assert!(access_check(&sd, &Caller::Admin.token(), WRITE_DAC).is_some());
        assert!(access_check(&sd, &Caller::FilteredAdmin.token(), WRITE_DAC).is_none());
    }

    #[test]
    fn deny_aces_win_when_first_and_deny_only_groups_count_for_deny() {
        let deny = Ace {
            kind: AceKind::Deny,
            flags: 0,
            mask: GENERIC_ALL,
            sid: Sid::administrators(),
        };
        let allow = Ace {
            kind: AceKind::Allow,
            flags: 0,
            mask: GENERIC_ALL,
            sid: Sid::everyone(),
        };
        let sd = SecurityDescriptor {
            owner: None,
            group: None,
            dacl: Some(vec![deny, allow]),
            dacl_protected: false,
        };
        assert!(access_check(&sd, &Caller::FilteredAdmin.token(), FILE_READ_DATA).is_none());
        assert!(access_check(&sd, &Caller::User.token(), FILE_READ_DATA).is_some());
        let empty = SecurityDescriptor {
            dacl: Some(vec![]),
            ..sd.clone()
        };
        assert!(access_check(&empty, &Caller::System.token(), FILE_READ_DATA).is_none());
        let null = SecurityDescriptor { dacl: None, ..sd };
        assert!(access_check(&null, &Caller::User.token(), FILE_ALL_ACCESS).is_some());
    }

    #[test]
    fn malformed_descriptors_are_rejected() {
        let mut bad_rev = admins_only();
        bad_rev[0] = 2;
        assert_eq!(capture(&bad_rev), Err(STATUS_INVALID_SECURITY_DESCR));
        let mut wrong_revision = admins_only();
        wrong_revision[20] = 9; // ACL revision
        assert_eq!(capture(&wrong_revision), Err(STATUS_INVALID_ACL));
        let mut bad_ace = admins_only();
        bad_ace[22] = 200; // AclSize larger than... the ACE walk must stay in bounds
        bad_ace.resize(20 + 200, 0);
        bad_ace[30] = 0xFF; // first ACE size not a multiple of 4
        assert_eq!(capture(&bad_ace), Err(STATUS_INVALID_ACL));
    }

    #[test]
    fn generic_rights_map_to_file_rights() {
        assert_eq!(map_generic_file(GENERIC_READ), FILE_GENERIC_READ);
        assert_eq!(map_generic_file(GENERIC_ALL), FILE_ALL_ACCESS);
        assert_eq!(map_generic_file(WRITE_DAC), WRITE_DAC);
    }
}
