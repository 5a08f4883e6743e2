//! A loaded driver: the mapped image plus the DRIVER_OBJECT the I/O manager builds for it,
//! and the three things the I/O manager does with it — call DriverEntry (then clear
//! DO_DEVICE_INITIALIZING and discard INIT sections), dispatch IRPs ([`crate::nt::io`]), and
//! call DriverUnload (then make the image inaccessible so a stray call faults).

use std::path::Path;

use crate::loader::mapfile::MapFile;
use crate::loader::pe::{self, Image, LoadError};
use crate::nt::exports;
use crate::nt::io;
use crate::nt::kernel::{self, call_driver};
use crate::nt::layout::{
    DispatchFn, DriverExtension, DriverInitFn, DriverObject, IO_TYPE_DRIVER,
    IRP_MJ_MAXIMUM_FUNCTION, OwnedUnicode,
};
use crate::nt::status::NtStatus;
use crate::verifier::bugcheck::{self, EXIT_REFUSED};

/// A driver image loaded into this process.
pub struct LoadedDriver {
    /// The mapped image (leaked: driver code may still be referenced).
    pub image: &'static Image,
    /// The DRIVER_OBJECT (leaked for the same reason).
    pub object: *mut DriverObject,
    registry_path: OwnedUnicode,
    unloaded: bool,
}

/// Loads `sys` (and its linker map, when given) and builds its DRIVER_OBJECT.
///
/// # Errors
/// Unreadable file, malformed image, or unresolved imports.
pub fn load(sys: &Path, map: Option<&Path>) -> Result<LoadedDriver, LoadError> {
    let data =
        std::fs::read(sys).map_err(|e| LoadError::Malformed(format!("{}: {e}", sys.display())))?;
    let file_name = sys
        .file_name()
        .map_or_else(|| "driver.sys".into(), |n| n.to_string_lossy().to_string());
    let mut image = pe::load(&file_name, &data, &exports::resolve)?;
    if let Some(m) = map {
        match std::fs::read_to_string(m) {
            Ok(text) => image.map = Some(MapFile::parse(&text)),
            // Symbols only improve reports: run without them rather than refuse the image.
            Err(e) => eprintln!(
                "kernel-emulator: warning: map {} unreadable ({e}); reports will use .pdata only",
                m.display()
            ),
        }
    }
    let image: &'static Image = Box::leak(Box::new(image));
    // For profilers (callgrind sees the image as anonymous code): where it was mapped.
    if std::env::var_os("KEMU_PRINT_IMAGE_BASE").is_some() {
        eprintln!(
            "kernel-emulator: {file_name} mapped at {:#x} (preferred {:#x})",
            image.base, image.preferred_base
        );
    }
    crate::nt::kernel::with(|k| k.processes.driver_dll_characteristics = image.dll_characteristics);
    bugcheck::set_image(image);
    let service = file_name.trim_end_matches(".sys").to_string();
    let driver_name: &'static OwnedUnicode =
        Box::leak(Box::new(OwnedUnicode::new(&format!("\\Driver\\{service}"))));
    let service_key: &'static OwnedUnicode = Box::leak(Box::new(OwnedUnicode::new(&service)));
    let hardware: &'static OwnedUnicode = Box::leak(Box::new(OwnedUnicode::new(
        "\\REGISTRY\\MACHINE\\HARDWARE\\DESCRIPTION\\SYSTEM",
    )));
    // SAFETY: DRIVER_OBJECT and DRIVER_EXTENSION are plain C structures; all-zero is their
    // initial state before the I/O manager fills them in.
    let object: &'static mut DriverObject = Box::leak(Box::new(unsafe { std::mem::zeroed() }));
    // SAFETY: as above.
    let extension: &'static mut DriverExtension =
        Box::leak(Box::new(unsafe { std::mem::zeroed() }));
    // SAFETY: the entry point lies inside the mapped executable image and has the
    // DRIVER_INITIALIZE signature per the PE contract of a driver.
    let entry = unsafe { std::mem::transmute::<usize, DriverInitFn>(image.entry()) };
    extension.driver_object = object;
    // SAFETY: `service_key` lives for the rest of the process.
    extension.service_key_name = unsafe { *service_key.as_ptr() };
    object.type_ = IO_TYPE_DRIVER;
    object.size = size_of::<DriverObject>() as i16;
    object.driver_start = image.base as *mut _;
    object.driver_size = image.size as u32;
    object.driver_extension = extension;
    // SAFETY: `driver_name` lives for the rest of the process.
    object.driver_name = unsafe { *driver_name.as_ptr() };
    object.hardware_database = hardware.as_ptr();
    object.driver_init = Some(entry);
    object.major_function =
        [Some(io::invalid_device_request as DispatchFn); IRP_MJ_MAXIMUM_FUNCTION + 1];
    let service_path =
        format!("\\REGISTRY\\MACHINE\\SYSTEM\\CurrentControlSet\\Services\\{service}");
    // The service is installed as its INF installs it (hivetrack.inf writes Parameters\Altitude).
    crate::nt::cm::zwreg::install_service(&service_path, crate::nt::cm::zwreg::INF_ALTITUDE);
    let registry_path = OwnedUnicode::new(&service_path);
    Ok(LoadedDriver {
        image,
        object,
        registry_path,
        unloaded: false,
    })
}

/// Calls the DriverUnload of `object` if it has one (in the System process), then checks that
/// no timer or DPC of the image is left ([`crate::nt::ke::timer::check_unload`], bugcheck 0xCE) and
/// makes the image inaccessible. Returns whether DriverUnload was set.
pub(crate) fn run_unload(object: *mut DriverObject, image: &'static Image) -> bool {
    // SAFETY: the driver object is live (leaked by `load`).
    let unload = unsafe { (*object).driver_unload };
    kernel::with(|k| {
        k.io.unload_pending.remove(&(object as usize));
        k.io.unloaded.insert(object as usize);
    });
    let Some(f) = unload else { return false };
    // SAFETY: DriverUnload with the driver's own object, no handle open.
    io::with_pid(4, || call_driver("DriverUnload", || unsafe { f(object) }));
    crate::nt::ke::timer::check_unload(image.base, image.size);
    // The image goes when the driver object is deleted, at its last reference (ReactOS
    // ntoskrnl/io/iomgr/driver.c, IopDeleteDriver -> MmUnloadSystemImage): a driver that
    // keeps a reference on its own object keeps its image mapped.
    let referenced = kernel::with(|k| {
        k.objects
            .references
            .get(&(object as usize))
            .copied()
            .unwrap_or(0)
            > 0
    });
    if !referenced {
        image.make_inaccessible();
    }
    true
}

/// Loads or ends the process with [`EXIT_REFUSED`], naming the reason (unresolved imports).
#[must_use]
pub fn load_or_refuse(sys: &Path, map: Option<&Path>) -> LoadedDriver {
    match load(sys, map) {
        Ok(d) => d,
        Err(e) => {
            bugcheck::emit_stderr(&format!(
                "kernel-emulator: refusing to run {}: {e}\n",
                sys.display()
            ));
            std::process::exit(EXIT_REFUSED);
        }
    }
}

impl LoadedDriver {
    /// Calls DriverEntry. On success the I/O manager clears DO_DEVICE_INITIALIZING on the
    /// driver's devices and discardable sections go away.
    ///
    /// # Panics
    /// Never: `load` always sets the entry point.
    #[must_use]
    pub fn entry(&self) -> NtStatus {
        // SAFETY: set by `load`.
        let entry = unsafe { (*self.object).driver_init }.expect("entry point set by load");
        let (object, path) = (self.object, self.registry_path.as_ptr());
        // SAFETY: calling DriverEntry with a fresh DRIVER_OBJECT and the service key path.
        let status = call_driver("DriverEntry", || unsafe { entry(object, path) });
        if crate::nt::status::nt_success(status) {
            // SAFETY: our live driver object, its devices created by the model.
            unsafe { io::finish_initializing(self.object) };
            self.image.discard_init_sections();
        }
        status
    }

    /// Calls DriverUnload if the driver set one; returns whether it did. Afterwards a timer
    /// still set or a DPC still queued in the image is bugcheck 0xCE
    /// ([`crate::nt::ke::timer::check_unload`]) and the image is inaccessible. Unlike [`Self::stop`],
    /// this does not wait for open handles (the scenarios close theirs first).
    ///
    /// Idempotent: once DriverUnload has run (here, or deferred after [`Self::stop`]), this
    /// returns whether it was set without calling it again.
    pub fn unload(&mut self) -> bool {
        if self.is_unloaded() {
            return self.has_unload();
        }
        self.unloaded = true;
        run_unload(self.object, self.image)
    }

    /// Service stop (NtUnloadDriver → IopUnloadDriver): if no file object is open on any of
    /// the driver's devices, calls DriverUnload now (as [`Self::unload`] does) and returns
    /// true. Otherwise marks the devices unload-pending (new opens fail with
    /// STATUS_NO_SUCH_DEVICE) and returns false; DriverUnload then runs inside the
    /// [`io::close`] (or [`io::terminate_process_io`]) that releases the last file object,
    /// and the image becomes inaccessible then.
    ///
    /// What the model assumes of Windows: for a legacy (non-PnP) driver, IopUnloadDriver
    /// marks every device object of the driver DOE_UNLOAD_PENDING and calls DriverUnload only
    /// once none of them has a non-zero ReferenceCount (each open file object holds one);
    /// otherwise the unload happens when the last reference goes (IopCheckUnloadDriver from
    /// IopDeleteFile / IopDecrementDeviceObjectRef), and IopParseDevice refuses new opens of
    /// an unload-pending device with STATUS_NO_SUCH_DEVICE (Windows Research Kernel
    /// `base/ntos/io/iomgr/loadunld.c` IopCheckUnloadDriver and NtUnloadDriver, `parse.c`
    /// IopParseDevice's DOE_UNLOAD_PENDING check; confirmed in fidelity audit 17b). A driver
    /// without DriverUnload cannot be stopped: false, nothing marked.
    pub fn stop(&mut self) -> bool {
        if self.is_unloaded() || !self.has_unload() {
            return false;
        }
        let object = self.object as usize;
        let image = self.image;
        let deferred = kernel::with(|k| {
            let busy =
                k.io.devices
                    .values()
                    .any(|d| d.driver == object && d.open_files > 0);
            if busy {
                for d in k.io.devices.values_mut().filter(|d| d.driver == object) {
                    d.unload_pending = true;
                }
                k.io.unload_pending.insert(object, image);
            }
            busy
        });
        if deferred {
            return false;
        }
        self.unload()
    }

    /// Whether DriverUnload has run (here, or deferred at the last close after [`Self::stop`]).
    #[must_use]
    pub fn is_unloaded(&self) -> bool {
        let object = self.object as usize;
        self.unloaded || kernel::with(|k| k.io.unloaded.contains(&object))
    }

    /// The dispatch routine the driver set for `major`, if not the default.
    #[must_use]
    pub fn handles(&self, major: usize) -> bool {
        // SAFETY: the driver object is live.
        let f = unsafe { (*self.object).major_function[major] };
        f.is_some_and(|f| f as usize != io::invalid_device_request as *const () as usize)
    }

    /// Whether DriverUnload is set.
    #[must_use]
    pub fn has_unload(&self) -> bool {
        // SAFETY: the driver object is live.
        unsafe { (*self.object).driver_unload }.is_some()
    }
}
