//! The control device's security: only SYSTEM and Administrators may open it.
//!
//! `IoCreateDeviceSecure` would do this from an SDDL string, but it lives in the static
//! library `wdmsec.lib`, which is not part of wdk-sys (nor of the Linux build's import
//! libraries). So the driver does what it does, with documented ntoskrnl exports: it opens a
//! kernel handle to its own device object with `ObOpenObjectByPointer(WRITE_DAC)` and sets the
//! DACL with `ZwSetSecurityObject` (docs: "`ZwSetSecurityObject` function (`ntifs.h`)", which
//! accepts a self-relative descriptor; Microsoft's "Setting a security descriptor on a legacy
//! device object" shows the same two calls). This runs in `DriverEntry`, before the I/O manager
//! clears `DO_DEVICE_INITIALIZING`, so no open can slip in under the default security: the I/O
//! manager refuses every open of a device with the flag set (Learn, "What does
//! `DO_DEVICE_INITIALIZING` really do?"; Windows Research Kernel `io/iomgr/parse.c`
//! `IopCheckDeviceAndDriver`, `STATUS_NO_SUCH_DEVICE`) and clears it only after `DriverEntry`
//! returns (`internal.c` `IopLoadDriver` → `IopReadyDeviceObjects`). So the flag must never be
//! cleared here by hand (kernel emulator `open-during-entry`).
//!
//! The descriptor is constant, self-relative, and equivalent to the SDDL
//! `D:P(A;;FA;;;SY)(A;;FA;;;BA)`: a protected DACL (nothing inherited) granting
//! `FILE_ALL_ACCESS` to `LocalSystem` (S-1-5-18) and to `BUILTIN\Administrators` (S-1-5-32-544),
//! which is what regfltr's `D:P(A;;GA;;;SY)(A;;GA;;;BA)` maps to for a device.

use core::ptr::null_mut;

use wdk_sys::{
    _MODE::KernelMode, DACL_SECURITY_INFORMATION, DEVICE_OBJECT, HANDLE, NTSTATUS,
    OBJ_KERNEL_HANDLE, STATUS_SUCCESS, WRITE_DAC, ntddk::ObOpenObjectByPointer, ntddk::ZwClose,
};

use crate::ffi::ZwSetSecurityObject;

/// `KernelMode` as the `KPROCESSOR_MODE` (`CCHAR`) the API takes (the constant is 0).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the constant is 0"
)]
const KERNEL_MODE: i8 = KernelMode as i8;

/// `FILE_ALL_ACCESS`: `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0x1FF`.
const FILE_ALL_ACCESS: u32 = 0x000F_0000 | 0x0010_0000 | 0x1FF;

/// Total size of the descriptor: 20-byte header, 8-byte ACL header, a 20-byte ACE for
/// S-1-5-18 and a 24-byte ACE for S-1-5-32-544.
const SD_LEN: usize = 72;

/// A self-relative `SECURITY_DESCRIPTOR`, aligned as the structure requires.
#[repr(C, align(8))]
struct SelfRelativeSd([u8; SD_LEN]);

const fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}
const fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Builds the descriptor bytes at compile time (layouts: `SECURITY_DESCRIPTOR_RELATIVE`,
/// `ACL`, `ACCESS_ALLOWED_ACE` and `SID` in `winnt.h`).
const fn build_sd() -> [u8; SD_LEN] {
    // SE_SELF_RELATIVE | SE_DACL_PROTECTED | SE_DACL_PRESENT
    let control = le16(0x8000 | 0x1000 | 0x0004);
    let acl_size = le16(8 + 20 + 24);
    let ace1_size = le16(20);
    let ace2_size = le16(24);
    let mask = le32(FILE_ALL_ACCESS);
    let sa_18 = le32(18);
    let sa_32 = le32(32);
    let sa_544 = le32(544);
    #[rustfmt::skip]
    let sd = [
        // SECURITY_DESCRIPTOR_RELATIVE: Revision 1, Sbz1, Control, Owner 0, Group 0, Sacl 0,
        // Dacl at offset 20.
        1, 0, control[0], control[1],
        0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  20, 0, 0, 0,
        // ACL: ACL_REVISION 2, Sbz1, AclSize, AceCount 2, Sbz2.
        2, 0, acl_size[0], acl_size[1], 2, 0, 0, 0,
        // ACCESS_ALLOWED_ACE (type 0, flags 0), mask, SID S-1-5-18.
        0, 0, ace1_size[0], ace1_size[1], mask[0], mask[1], mask[2], mask[3],
        1, 1, 0, 0, 0, 0, 0, 5, sa_18[0], sa_18[1], sa_18[2], sa_18[3],
        // ACCESS_ALLOWED_ACE, mask, SID S-1-5-32-544.
        0, 0, ace2_size[0], ace2_size[1], mask[0], mask[1], mask[2], mask[3],
        1, 2, 0, 0, 0, 0, 0, 5, sa_32[0], sa_32[1], sa_32[2], sa_32[3],
        sa_544[0], sa_544[1], sa_544[2], sa_544[3],
    ];
    sd
}

static DEVICE_SD: SelfRelativeSd = SelfRelativeSd(build_sd());

/// Replaces the DACL of `device` with SYSTEM and Administrators only.
///
/// # Errors
/// The status of the failing kernel call; the caller must not expose the device then.
pub fn restrict_to_admins(device: &mut DEVICE_OBJECT) -> Result<(), NTSTATUS> {
    let mut handle: HANDLE = null_mut();
    // KernelMode with OBJ_KERNEL_HANDLE yields a handle only kernel code can use; a null
    // object type is allowed (docs: ObOpenObjectByPointer).
    // SAFETY: `device` is a live device object of this driver; `handle` is a valid out pointer.
    let status = unsafe {
        ObOpenObjectByPointer(
            core::ptr::from_mut(device).cast(),
            OBJ_KERNEL_HANDLE,
            null_mut(),
            WRITE_DAC,
            null_mut(),
            KERNEL_MODE,
            &raw mut handle,
        )
    };
    if status != STATUS_SUCCESS {
        return Err(status);
    }
    // `handle` was opened above with WRITE_DAC, which DACL_SECURITY_INFORMATION requires; the
    // call only reads the descriptor (it captures a copy).
    // SAFETY: the descriptor is a valid, aligned, self-relative SD in static memory.
    let status = unsafe {
        ZwSetSecurityObject(
            handle,
            DACL_SECURITY_INFORMATION,
            core::ptr::from_ref(&DEVICE_SD).cast_mut().cast(),
        )
    };
    // SAFETY: `handle` is the kernel handle opened above, closed exactly once.
    let _ = unsafe { ZwClose(handle) };
    if status == STATUS_SUCCESS {
        Ok(())
    } else {
        Err(status)
    }
}
