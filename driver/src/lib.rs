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

mod callbacks;
mod clock;
mod device;
mod dispatch;
mod ffi;
mod identify;
mod images;
mod ioctl;
mod lock;
mod lookaside;
mod pool;
mod process;
mod registry_read;
mod reseed;
mod resident;
mod routines;
mod security;
mod stacks;
mod tracking;
mod unicode;
mod waiters;

use wdk::println;
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::{
    DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, STATUS_SUCCESS,
    ntddk::ObfReferenceObject,
};

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
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    println!(
        "hivetrack: DriverEntry (build {})",
        ioctl::BUILD_ID.as_str()
    );
    // SAFETY: the I/O manager passes a valid, exclusively owned `DRIVER_OBJECT` to DriverEntry.
    let driver: &mut DRIVER_OBJECT = unsafe { &mut *driver };
    routines::resolve_all();
    lock::choose_routines();
    for name in routines::missing() {
        println!("hivetrack: this system has no {name}; using the fallback");
    }
    if let Err(status) = device::create(driver) {
        println!("hivetrack: could not create the control device: {status:#x}");
        return status;
    }
    waiters::init();
    dispatch::install(driver);
    driver.DriverUnload = Some(driver_unload);
    // Live tracking is best effort: whatever fails here, the driver still loads, answers
    // IOCTLs and says why tracking is off.
    if let Err(status) = start_tracking(driver, registry_path) {
        println!("hivetrack: live tracking off: {status:#x}");
        tracking::set_status(status);
    }
    STATUS_SUCCESS
}

/// Creates the tracker, seeds it with the mounted hives and registers the callbacks.
fn start_tracking(
    driver: &mut DRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> Result<(), NTSTATUS> {
    let parameters = if registry_path.is_null() {
        tracking::Parameters::default()
    } else {
        // SAFETY: the I/O manager passes a valid registry path for the service key.
        let service = unsafe { &*registry_path };
        tracking::Parameters {
            budget: registry_read::memory_budget(service),
            key_alarm: registry_read::key_alarm_threshold(service),
            held_after: registry_read::held_after_seconds(service),
        }
    };
    tracking::start(parameters)?;
    // Process notifications improve reports (images, exits) but tracking works without them.
    // Registered before the registry callback, so that every process holding a tracked key
    // has its exit seen (stats `process_exits_tracked` says whether they are).
    if let Err(status) = process::register() {
        println!("hivetrack: no process notifications: {status:#x}");
    }
    let altitude = if registry_path.is_null() {
        registry_read::altitude(&unicode::unicode_string(unicode::wide!("")))
    } else {
        // SAFETY: the I/O manager passes a valid registry path for the service key.
        registry_read::altitude(unsafe { &*registry_path })
    };
    // The driver's own open of the hive list goes before the callback, which would see it
    // (`registry_read::open_hive_list`); its values are read after.
    let hive_list = registry_read::open_hive_list();
    if let Some(tracker) = tracking::get() {
        // Until the seed below has read the whole list, no load vouches for its hive.
        tracker.seed_begin();
    }
    if let Err(status) = callbacks::register(driver, altitude) {
        // Tracking is off (another filter holds the altitude, or no CmRegisterCallbackEx),
        // but the hives mounted now are still listed, so a holders answer about one says
        // "tracking off" (tracking-since 0, never complete) and the CLI sets the kernel's own
        // list beside it. Unseeded, every hive was unknown: "not loaded now, or the name is
        // wrong" (fidelity audit 21a, A7; kernel emulator `altitude-collision`).
        // With no callback, no unload or later load is ever notified: the list is read again
        // before each query (rate-limited) so `hives` and `holders` do not describe
        // DriverEntry's hive set for the driver's life (review 21a, L4); the handle is kept
        // for that, and closed at DriverUnload.
        if let Some(tracker) = tracking::get() {
            let _ = registry_read::seed_hives(tracker, hive_list.as_ref());
            if let Some(list) = hive_list {
                reseed::keep_untracked(list);
            }
        }
        return Err(status);
    }
    // Image loads let captured frames be named by module (issue 16); without them frames
    // stay raw addresses (stats `image_loads_tracked` says which). Only with live tracking:
    // they would fill memory for nothing without it.
    // And only when process exits are seen: a module list goes with its process record.
    if !process::registered() {
        println!("hivetrack: no image-load notifications: process exits are not seen");
    } else if let Err(status) = images::register() {
        println!("hivetrack: no image-load notifications: {status:#x}");
    }
    if let Some(tracker) = tracking::get() {
        // Every key object opened from now on carries our context. Objects opened before
        // (docs: CmSetCallbackObjectContext — a context exists only for objects the callback
        // attached it to) are not in our records: reports say since when we track.
        tracker.tracking_started(clock::now());
        // The mounted hives are read after registration, so a load between the two is seen
        // by the callback instead of falling in the gap (a load seen twice is harmless).
        // A read that was not whole is done again later, through the same handle, before a
        // query is answered, and the list is read again to find deferred unloads that
        // completed (`reseed`): the handle is kept until `DriverUnload`.
        registry_read::seed_hives(tracker, hive_list.as_ref());
        if let Some(list) = hive_list {
            reseed::keep(list);
        }
    }
    Ok(())
}

/// Undoes everything `DriverEntry` did. Called at `PASSIVE_LEVEL` once no handle to the
/// device remains open (so no request is in flight).
unsafe extern "C" fn driver_unload(driver: PDRIVER_OBJECT) {
    // SAFETY: the I/O manager passes the same valid `DRIVER_OBJECT` it gave DriverEntry.
    let driver: &DRIVER_OBJECT = unsafe { &*driver };
    // Unregistering waits for callbacks in flight and cleans up every object context, so
    // after these two calls nothing but this thread can reach the tracker.
    let unregistered = callbacks::unregister();
    // The hive list's key kept for a later read (no IOCTL, hence no read, is in flight).
    reseed::close();
    process::unregister();
    images::unregister();
    waiters::shutdown();
    match unregistered {
        Ok(()) => tracking::stop(),
        Err(status) => {
            // The registry callback may still be called: keep the tracker it reads (never
            // freed) and this image. The I/O manager unmaps a driver's image when its driver
            // object is deleted at the last reference (ReactOS IopDeleteDriver ->
            // MmUnloadSystemImage; the same in the WRK: `io/iomgr/loadunld.c` drops the
            // object's reference after DriverUnload, lines 485 and 511-512, and `objsup.c`
            // IopDeleteDriver, its delete procedure, unloads the image at line 793), so a
            // reference we never drop keeps the code mapped.
            // Only a reboot removes the driver then; that is said, not hidden.
            // SAFETY: our own live DRIVER_OBJECT; the reference is deliberately kept.
            unsafe { ObfReferenceObject(core::ptr::from_ref(driver).cast_mut().cast()) };
            println!(
                "hivetrack: CmUnRegisterCallback failed ({status:#x}): the callback stays registered, so the tracker and the driver image are kept until reboot"
            );
        }
    }
    device::delete(driver);
    println!("hivetrack: unloaded");
}
