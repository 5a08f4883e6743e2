//! The control device `\Device\HiveTrack` and its link `\DosDevices\HiveTrack`.

use core::ptr::null_mut;

use protocol::ioctl::DEVICE_TYPE;
use wdk_sys::{
    DEVICE_OBJECT, DRIVER_OBJECT, FILE_DEVICE_SECURE_OPEN, NTSTATUS, PDEVICE_OBJECT,
    STATUS_SUCCESS,
    ntddk::{IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink},
};

use crate::{
    security,
    unicode::{unicode_string, wide},
};

const DEVICE_NAME: &[u16] = wide!(r"\Device\HiveTrack");
const LINK_NAME: &[u16] = wide!(r"\DosDevices\HiveTrack");

/// Creates the device (secured before anyone can open it) and its symbolic link. On error
/// everything created so far is deleted again.
///
/// # Errors
/// The status of the failing kernel call.
pub fn create(driver: &mut DRIVER_OBJECT) -> Result<(), NTSTATUS> {
    let mut name = unicode_string(DEVICE_NAME);
    let mut device: PDEVICE_OBJECT = null_mut();
    // `FILE_DEVICE_SECURE_OPEN` makes the DACL apply to opens of names below the device too.
    // SAFETY: our DRIVER_OBJECT in DriverEntry, a static name, a valid out pointer.
    let status = unsafe {
        IoCreateDevice(
            driver,
            0,
            &raw mut name,
            DEVICE_TYPE,
            FILE_DEVICE_SECURE_OPEN,
            0,
            &raw mut device,
        )
    };
    if status != STATUS_SUCCESS {
        return Err(status);
    }
    // SAFETY: IoCreateDevice succeeded, so `device` is a valid device object we own.
    let device_ref: &mut DEVICE_OBJECT = unsafe { &mut *device };
    if let Err(status) = security::restrict_to_admins(device_ref) {
        // SAFETY: the device was created above and nothing else references it yet.
        unsafe { IoDeleteDevice(device) };
        return Err(status);
    }
    let mut link = unicode_string(LINK_NAME);
    // SAFETY: both names are valid UNICODE_STRINGs over static strings.
    let status = unsafe { IoCreateSymbolicLink(&raw mut link, &raw mut name) };
    if status != STATUS_SUCCESS {
        // SAFETY: as above; the link does not exist, so nothing refers to the device.
        unsafe { IoDeleteDevice(device) };
        return Err(status);
    }
    Ok(())
}

/// Deletes the link and every device object of the driver (there is one).
pub fn delete(driver: &DRIVER_OBJECT) {
    let mut link = unicode_string(LINK_NAME);
    // SAFETY: the link was created by `create`; deleting it is allowed at `PASSIVE_LEVEL`.
    let _ = unsafe { IoDeleteSymbolicLink(&raw mut link) };
    let device = driver.DeviceObject;
    if !device.is_null() {
        // The I/O manager calls `DriverUnload` only when no handle to the device remains.
        // SAFETY: the device was created by `create` and is no longer in use.
        unsafe { IoDeleteDevice(device) };
    }
}
