//! Windows x64 kernel structures the model builds or reads, defined by hand with explicit
//! field widths. Offsets and sizes are asserted at compile time against the documented x64
//! layouts (wdm.h of the real WDK; mingw's DEVICE_OBJECT differs only in trailing alignment).

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use crate::nt::status::NtStatus;

/// IRP_MJ_CREATE.
pub const IRP_MJ_CREATE: usize = 0x00;
/// IRP_MJ_CLOSE.
pub const IRP_MJ_CLOSE: usize = 0x02;
/// IRP_MJ_DEVICE_CONTROL.
pub const IRP_MJ_DEVICE_CONTROL: usize = 0x0E;
/// IRP_MJ_CLEANUP.
pub const IRP_MJ_CLEANUP: usize = 0x12;
/// IRP_MJ_MAXIMUM_FUNCTION.
pub const IRP_MJ_MAXIMUM_FUNCTION: usize = 0x1B;

/// IO_TYPE_DEVICE.
pub const IO_TYPE_DEVICE: i16 = 3;
/// IO_TYPE_DRIVER.
pub const IO_TYPE_DRIVER: i16 = 4;
/// IO_TYPE_FILE.
pub const IO_TYPE_FILE: i16 = 5;
/// IO_TYPE_IRP.
pub const IO_TYPE_IRP: i16 = 6;
/// DO_EXCLUSIVE.
pub const DO_EXCLUSIVE: u32 = 0x08;
/// DO_DEVICE_INITIALIZING.
pub const DO_DEVICE_INITIALIZING: u32 = 0x80;
/// FILE_DEVICE_SECURE_OPEN (a device characteristic).
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;

/// DRIVER_INITIALIZE.
pub type DriverInitFn =
    unsafe extern "win64" fn(*mut DriverObject, *const UnicodeString) -> NtStatus;
/// DRIVER_UNLOAD.
pub type DriverUnloadFn = unsafe extern "win64" fn(*mut DriverObject);
/// DRIVER_DISPATCH.
pub type DispatchFn = unsafe extern "win64" fn(*mut DeviceObject, *mut Irp) -> NtStatus;
/// EX_CALLBACK_FUNCTION (registry callbacks).
pub type ExCallbackFn = unsafe extern "win64" fn(*mut c_void, *mut c_void, *mut c_void) -> NtStatus;

/// UNICODE_STRING.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnicodeString {
    /// Length in bytes, without a terminator.
    pub length: u16,
    /// Capacity in bytes.
    pub maximum_length: u16,
    /// Padding (x64).
    pub pad: u32,
    /// The UTF-16 code units.
    pub buffer: *mut u16,
}

/// LIST_ENTRY.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListEntry {
    /// Forward link.
    pub flink: *mut Self,
    /// Backward link.
    pub blink: *mut Self,
}

/// DRIVER_EXTENSION (0x50 with the private tail).
#[repr(C)]
pub struct DriverExtension {
    /// 0x00
    pub driver_object: *mut DriverObject,
    /// 0x08
    pub add_device: *mut c_void,
    /// 0x10
    pub count: u32,
    /// padding
    pub pad: u32,
    /// 0x18
    pub service_key_name: UnicodeString,
    /// 0x28: ClientDriverExtension, FsFilterCallbacks, KseCallbacks, DvCallbacks, VerifierContext.
    pub private: [u64; 5],
}

/// DRIVER_OBJECT (0x150).
#[repr(C)]
pub struct DriverObject {
    /// 0x00
    pub type_: i16,
    /// 0x02
    pub size: i16,
    /// padding
    pub pad0: u32,
    /// 0x08
    pub device_object: *mut DeviceObject,
    /// 0x10
    pub flags: u32,
    /// padding
    pub pad1: u32,
    /// 0x18
    pub driver_start: *mut c_void,
    /// 0x20
    pub driver_size: u32,
    /// padding
    pub pad2: u32,
    /// 0x28
    pub driver_section: *mut c_void,
    /// 0x30
    pub driver_extension: *mut DriverExtension,
    /// 0x38
    pub driver_name: UnicodeString,
    /// 0x48
    pub hardware_database: *mut UnicodeString,
    /// 0x50
    pub fast_io_dispatch: *mut c_void,
    /// 0x58
    pub driver_init: Option<DriverInitFn>,
    /// 0x60
    pub driver_start_io: *mut c_void,
    /// 0x68
    pub driver_unload: Option<DriverUnloadFn>,
    /// 0x70
    pub major_function: [Option<DispatchFn>; IRP_MJ_MAXIMUM_FUNCTION + 1],
}

/// DEVICE_OBJECT: `DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT)` in the WDK, hence 0x150.
#[repr(C, align(16))]
pub struct DeviceObject {
    /// 0x00
    pub type_: i16,
    /// 0x02
    pub size: u16,
    /// 0x04
    pub reference_count: i32,
    /// 0x08
    pub driver_object: *mut DriverObject,
    /// 0x10
    pub next_device: *mut Self,
    /// 0x18
    pub attached_device: *mut Self,
    /// 0x20
    pub current_irp: *mut Irp,
    /// 0x28
    pub timer: *mut c_void,
    /// 0x30
    pub flags: u32,
    /// 0x34
    pub characteristics: u32,
    /// 0x38
    pub vpb: *mut c_void,
    /// 0x40
    pub device_extension: *mut c_void,
    /// 0x48
    pub device_type: u32,
    /// 0x4C
    pub stack_size: i8,
    /// padding
    pub pad0: [u8; 3],
    /// 0x50: union { LIST_ENTRY; WAIT_CONTEXT_BLOCK }
    pub queue: [u64; 9],
    /// 0x98
    pub alignment_requirement: u32,
    /// padding
    pub pad1: u32,
    /// 0xA0: KDEVICE_QUEUE
    pub device_queue: [u64; 5],
    /// 0xC8: KDPC
    pub dpc: [u64; 8],
    /// 0x108
    pub active_thread_count: u32,
    /// padding
    pub pad2: u32,
    /// 0x110
    pub security_descriptor: *mut c_void,
    /// 0x118: KEVENT
    pub device_lock: [u64; 3],
    /// 0x130
    pub sector_size: u16,
    /// 0x132
    pub spare1: u16,
    /// padding
    pub pad3: u32,
    /// 0x138
    pub device_object_extension: *mut c_void,
    /// 0x140
    pub reserved: *mut c_void,
}

/// IO_STATUS_BLOCK.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoStatusBlock {
    /// union { NTSTATUS Status; PVOID Pointer; } (low half)
    pub status: NtStatus,
    /// high half of the union
    pub pad: u32,
    /// Information
    pub information: usize,
}

/// IRP (0xD0 without stack locations).
#[repr(C)]
pub struct Irp {
    /// 0x00
    pub type_: i16,
    /// 0x02
    pub size: u16,
    /// 0x04
    pub allocation_processor_number: u16,
    /// 0x06
    pub reserved: u16,
    /// 0x08
    pub mdl_address: *mut c_void,
    /// 0x10
    pub flags: u32,
    /// padding
    pub pad0: u32,
    /// 0x18: union { MasterIrp; IrpCount; SystemBuffer }
    pub system_buffer: *mut c_void,
    /// 0x20
    pub thread_list_entry: ListEntry,
    /// 0x30
    pub io_status: IoStatusBlock,
    /// 0x40
    pub requestor_mode: i8,
    /// 0x41
    pub pending_returned: u8,
    /// 0x42
    pub stack_count: i8,
    /// 0x43
    pub current_location: i8,
    /// 0x44
    pub cancel: u8,
    /// 0x45
    pub cancel_irql: u8,
    /// 0x46
    pub apc_environment: i8,
    /// 0x47
    pub allocation_flags: u8,
    /// 0x48
    pub user_iosb: *mut IoStatusBlock,
    /// 0x50
    pub user_event: *mut c_void,
    /// 0x58
    pub overlay: [u64; 2],
    /// 0x68
    pub cancel_routine: *mut c_void,
    /// 0x70
    pub user_buffer: *mut c_void,
    /// 0x78: Tail.Overlay.DriverContext
    pub driver_context: [*mut c_void; 4],
    /// 0x98
    pub thread: *mut c_void,
    /// 0xA0
    pub auxiliary_buffer: *mut c_void,
    /// 0xA8
    pub list_entry: ListEntry,
    /// 0xB8
    pub current_stack_location: *mut IoStackLocation,
    /// 0xC0
    pub original_file_object: *mut c_void,
    /// 0xC8: rest of the Tail union (KAPC is 0x58 bytes)
    pub tail_rest: [u64; 1],
}

/// IO_STACK_LOCATION (0x48); `parameters` is the 0x20-byte union, read per major function.
#[repr(C)]
pub struct IoStackLocation {
    /// 0x00
    pub major_function: u8,
    /// 0x01
    pub minor_function: u8,
    /// 0x02
    pub flags: u8,
    /// 0x03
    pub control: u8,
    /// padding
    pub pad: u32,
    /// 0x08: Parameters union, as four pointer-sized slots.
    pub parameters: [u64; 4],
    /// 0x28
    pub device_object: *mut DeviceObject,
    /// 0x30
    pub file_object: *mut c_void,
    /// 0x38
    pub completion_routine: *mut c_void,
    /// 0x40
    pub context: *mut c_void,
}

/// FILE_OBJECT is 0xD8 bytes; the model sets Type, Size and DeviceObject (0x08) only.
pub const FILE_OBJECT_SIZE: usize = 0xD8;
/// Offset of FILE_OBJECT.DeviceObject.
pub const FILE_OBJECT_DEVICE_OBJECT: usize = 0x08;
/// IO_SECURITY_CONTEXT is 0x18 bytes: SecurityQos, AccessState, DesiredAccess, FullCreateOptions.
pub const IO_SECURITY_CONTEXT_SIZE: usize = 0x18;
/// ACCESS_STATE is 0xA0 bytes.
pub const ACCESS_STATE_SIZE: usize = 0xA0;

const _: () = {
    assert!(size_of::<UnicodeString>() == 0x10);
    assert!(offset_of!(UnicodeString, buffer) == 0x08);
    assert!(size_of::<DriverExtension>() == 0x50);
    assert!(size_of::<DriverObject>() == 0x150);
    assert!(offset_of!(DriverObject, device_object) == 0x08);
    assert!(offset_of!(DriverObject, driver_start) == 0x18);
    assert!(offset_of!(DriverObject, driver_extension) == 0x30);
    assert!(offset_of!(DriverObject, driver_name) == 0x38);
    assert!(offset_of!(DriverObject, driver_init) == 0x58);
    assert!(offset_of!(DriverObject, driver_unload) == 0x68);
    assert!(offset_of!(DriverObject, major_function) == 0x70);
    assert!(size_of::<DeviceObject>() == 0x150);
    assert!(offset_of!(DeviceObject, flags) == 0x30);
    assert!(offset_of!(DeviceObject, characteristics) == 0x34);
    assert!(offset_of!(DeviceObject, device_extension) == 0x40);
    assert!(offset_of!(DeviceObject, device_type) == 0x48);
    assert!(offset_of!(DeviceObject, stack_size) == 0x4C);
    assert!(offset_of!(DeviceObject, alignment_requirement) == 0x98);
    assert!(offset_of!(DeviceObject, device_queue) == 0xA0);
    assert!(offset_of!(DeviceObject, dpc) == 0xC8);
    assert!(offset_of!(DeviceObject, active_thread_count) == 0x108);
    assert!(offset_of!(DeviceObject, security_descriptor) == 0x110);
    assert!(offset_of!(DeviceObject, device_lock) == 0x118);
    assert!(offset_of!(DeviceObject, sector_size) == 0x130);
    assert!(offset_of!(DeviceObject, device_object_extension) == 0x138);
    assert!(size_of::<IoStatusBlock>() == 0x10);
    assert!(size_of::<Irp>() == 0xD0);
    assert!(offset_of!(Irp, system_buffer) == 0x18);
    assert!(offset_of!(Irp, io_status) == 0x30);
    assert!(offset_of!(Irp, requestor_mode) == 0x40);
    assert!(offset_of!(Irp, current_location) == 0x43);
    assert!(offset_of!(Irp, user_iosb) == 0x48);
    assert!(offset_of!(Irp, cancel_routine) == 0x68);
    assert!(offset_of!(Irp, user_buffer) == 0x70);
    assert!(offset_of!(Irp, thread) == 0x98);
    assert!(offset_of!(Irp, current_stack_location) == 0xB8);
    assert!(offset_of!(Irp, original_file_object) == 0xC0);
    assert!(size_of::<IoStackLocation>() == 0x48);
    assert!(offset_of!(IoStackLocation, parameters) == 0x08);
    assert!(offset_of!(IoStackLocation, device_object) == 0x28);
    assert!(offset_of!(IoStackLocation, file_object) == 0x30);
    assert!(offset_of!(IoStackLocation, context) == 0x40);
};

/// How many of the newest names handed to a driver [`names_handed`] keeps.
const NAMES_KEEP: usize = 256;

/// The address ranges of the last [`NAMES_KEEP`] name buffers (and their UNICODE_STRINGs)
/// handed to a driver by pointer, newest last: the registry callbacks' `CompleteName`, load
/// and rename names, the process-notify `ImageFileName`/`CommandLine`, the image-notify
/// `FullImageName` ([`OwnedUnicode`]), and the names `CmCallbackGetKeyObjectIDEx` returns.
/// Host heap or their own mappings, never pool blocks in the model, so the IOCTL fuzz's scan
/// takes them from here (review 22a, L1). Kept after they are freed, as
/// `io::object_ranges` keeps IRPs: an answer has no business carrying a host address either.
static NAMES_HANDED: std::sync::Mutex<std::collections::VecDeque<(usize, usize)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Notes a name block of `len` bytes at `addr` handed to a driver ([`NAMES_HANDED`]).
pub fn note_name_handed(addr: usize, len: usize) {
    let mut h = NAMES_HANDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if h.len() == NAMES_KEEP {
        h.pop_front();
    }
    h.push_back((addr, addr + len.max(1)));
}

/// The ranges [`NAMES_HANDED`] keeps, oldest first.
#[must_use]
pub fn names_handed() -> Vec<(usize, usize)> {
    NAMES_HANDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect()
}

/// An owned, NUL-terminated UTF-16 string with a UNICODE_STRING pointing at it, for passing
/// names into the driver. The heap buffers do not move when this value moves.
pub struct OwnedUnicode {
    buf: Units,
    us: Box<UnicodeString>,
}

/// Where an [`OwnedUnicode`]'s code units live.
enum Units {
    /// The host heap (never trimmed).
    Heap(Box<[u16]>),
    /// A pageable buffer ([`crate::nt::mm::paged`]): trimmed at every raise to
    /// `DISPATCH_LEVEL`, so a driver that reads it there gets bug check 0xD1.
    Paged { addr: usize, units: usize },
}

impl OwnedUnicode {
    /// Encodes `s`.
    ///
    /// # Panics
    /// If `s` is longer than a UNICODE_STRING can describe (32 K code units).
    #[must_use]
    pub fn new(s: &str) -> Self {
        let mut v: Vec<u16> = s.encode_utf16().collect();
        let len = u16::try_from(v.len() * 2).expect("name longer than a UNICODE_STRING");
        v.push(0);
        let buf = v.into_boxed_slice();
        Self::around(Units::Heap(buf), len)
    }

    /// Encodes `s` into pageable memory ([`crate::nt::mm::paged`]). *Model choice, the
    /// stricter reading* (audit 24a F5): the strings a notification hands a driver
    /// (`PS_CREATE_NOTIFY_INFO.ImageFileName`, a load-image `FullImageName`, a
    /// `REG_*_INFORMATION`'s names) are in memory whose pool no page documents, so the model
    /// lets Force IRQL Checking trim them: a driver that reads one at `DISPATCH_LEVEL` or
    /// above (under a spin lock) stops with 0xD1, as it would if Windows hands it paged pool.
    ///
    /// With checking off (`bench-hivetrack`) the string is on the heap: a mapping per
    /// registry operation there cost a quarter of each cycle (review 24b, LOW-1).
    ///
    /// # Panics
    /// As [`Self::new`].
    #[must_use]
    pub fn pageable(s: &str) -> Self {
        if !crate::nt::mm::paged::checking() {
            return Self::new(s);
        }
        let v: Vec<u16> = s.encode_utf16().collect();
        let len = u16::try_from(v.len() * 2).expect("name longer than a UNICODE_STRING");
        let addr = crate::nt::mm::paged::alloc((v.len() + 1) * 2);
        // SAFETY: a fresh mapping of at least `v.len() + 1` units, writable: should another
        // thread's raise trim it first, the write faults below DISPATCH_LEVEL and the mapping
        // is paged back in (`paged::fault`), as for any touch of a trimmed buffer.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), addr as *mut u16, v.len()) };
        Self::around(
            Units::Paged {
                addr,
                units: v.len() + 1,
            },
            len,
        )
    }

    fn around(buf: Units, len: u16) -> Self {
        let (ptr, units) = match &buf {
            Units::Heap(b) => (b.as_ptr().cast_mut(), b.len()),
            Units::Paged { addr, units } => (*addr as *mut u16, *units),
        };
        let us = Box::new(UnicodeString {
            length: len,
            maximum_length: len + 2,
            pad: 0,
            buffer: ptr,
        });
        note_name_handed(ptr as usize, units * 2);
        note_name_handed(&raw const *us as usize, size_of::<UnicodeString>());
        Self { buf, us }
    }

    /// The UNICODE_STRING to hand to the driver.
    #[must_use]
    pub fn as_ptr(&self) -> *mut UnicodeString {
        let p: *const UnicodeString = &raw const *self.us;
        p.cast_mut()
    }

    /// The code units (without the terminator).
    ///
    /// # Panics
    /// For a [`Self::pageable`] string: reading it here could touch a trimmed page.
    #[must_use]
    pub fn units(&self) -> &[u16] {
        match &self.buf {
            Units::Heap(b) => &b[..b.len() - 1],
            Units::Paged { .. } => panic!("a pageable string's units are not read by the model"),
        }
    }
}

impl Drop for OwnedUnicode {
    fn drop(&mut self) {
        if let Units::Paged { addr, .. } = self.buf {
            let freed = crate::nt::mm::paged::free(addr);
            debug_assert!(freed, "a pageable string's buffer is a pageable mapping");
        }
    }
}

/// Reads a UNICODE_STRING coming from the driver; `None` for a null pointer or a malformed
/// string (odd length, Length > MaximumLength, null buffer with a length).
///
/// # Safety
/// `us`, if not null, must point to a readable UNICODE_STRING whose buffer is readable for
/// `Length` bytes.
#[must_use]
pub unsafe fn read_unicode(us: *const UnicodeString) -> Option<String> {
    if us.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `us` is readable.
    let u = unsafe { us.read_unaligned() };
    if u.length % 2 != 0 || u.length > u.maximum_length {
        return None;
    }
    if u.buffer.is_null() {
        return (u.length == 0).then(String::new);
    }
    // SAFETY: the caller guarantees the buffer holds `length` bytes.
    let units = unsafe { core::slice::from_raw_parts(u.buffer, usize::from(u.length / 2)) };
    Some(String::from_utf16_lossy(units))
}

/// Writes `v` at `addr` (unaligned).
///
/// # Safety
/// `addr` must be valid for a write of `T`.
pub unsafe fn poke<T>(addr: usize, v: T) {
    // SAFETY: guaranteed by the caller.
    unsafe { (addr as *mut T).write_unaligned(v) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_unicode_round_trips_through_read_unicode() {
        let s = OwnedUnicode::new(r"\Device\HiveTrack");
        // SAFETY: `s` owns a valid UNICODE_STRING.
        let back = unsafe { read_unicode(s.as_ptr()) };
        assert_eq!(back.as_deref(), Some(r"\Device\HiveTrack"));
        assert_eq!(s.units().len(), 17);
    }

    #[test]
    fn malformed_unicode_strings_are_rejected() {
        let mut units = [0x41u16; 4];
        let odd = UnicodeString {
            length: 3,
            maximum_length: 8,
            pad: 0,
            buffer: units.as_mut_ptr(),
        };
        // SAFETY: points at a local UNICODE_STRING over a local buffer.
        assert!(unsafe { read_unicode(&raw const odd) }.is_none());
        let too_long = UnicodeString {
            length: 10,
            maximum_length: 8,
            pad: 0,
            buffer: units.as_mut_ptr(),
        };
        // SAFETY: as above.
        assert!(unsafe { read_unicode(&raw const too_long) }.is_none());
        // SAFETY: null is allowed.
        assert!(unsafe { read_unicode(core::ptr::null()) }.is_none());
    }
}
