//! hivetrack.sys: a WDM registry filter driver that answers "who holds this hive open".
//!
//! This crate is the kernel edge only: `DriverEntry` and `DriverUnload` (here), the control
//! device and its security ([`device`], [`security`]), IRP dispatch ([`dispatch`]) and the
//! IOCTL handlers ([`ioctl`]). The request and answer formats are the `protocol` crate's.
//!
//! Kernel rules kept here: no infallible allocation anywhere (the global allocator is
//! registered as windows-drivers-rs expects, but nothing reaches it and the linker drops it;
//! `cargo xtask check-image` enforces that), no kernel address in any output, every IOCTL
//! length and field validated.
#![no_std]

#[cfg(not(test))]
extern crate wdk_panic;

mod device;
mod dispatch;
mod ffi;
mod ioctl;
mod security;
mod unicode;

use wdk::println;
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::{DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, STATUS_SUCCESS};

// windows-drivers-rs expects a global allocator. hivetrack never uses it (all driver memory
// goes through fallible, tagged pool calls), so the linker drops it, and with it the static
// import of ExAllocatePool2 that would keep the driver from loading on Windows 10 1809.
#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// The driver's entry point, called by the I/O manager at `PASSIVE_LEVEL` in the System
/// process when the service starts.
///
/// # Safety
/// Called by the I/O manager only, with a valid `DRIVER_OBJECT`.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    println!(
        "hivetrack: DriverEntry (build {})",
        ioctl::BUILD_ID.as_str()
    );
    // SAFETY: the I/O manager passes a valid, exclusively owned `DRIVER_OBJECT` to DriverEntry.
    let driver: &mut DRIVER_OBJECT = unsafe { &mut *driver };
    if let Err(status) = device::create(driver) {
        println!("hivetrack: could not create the control device: {status:#x}");
        return status;
    }
    dispatch::install(driver);
    driver.DriverUnload = Some(driver_unload);
    STATUS_SUCCESS
}

/// Undoes everything `DriverEntry` did. Called at `PASSIVE_LEVEL` once no handle to the
/// device remains open.
unsafe extern "C" fn driver_unload(driver: PDRIVER_OBJECT) {
    // SAFETY: the I/O manager passes the same valid DRIVER_OBJECT it gave DriverEntry.
    let driver: &DRIVER_OBJECT = unsafe { &*driver };
    device::delete(driver);
    println!("hivetrack: unloaded");
}
