//! kemu-test-driver: the kernel emulator's own test subject.
//!
//! Each IOCTL does one thing that is hard for an emulator that runs a `.sys` natively in a
//! Linux process, or one bug its verifier must catch. The control codes are mirrored in
//! `kernel-emulator/src/harness/scenario/test_driver.rs`; keep both lists in step.
//!
//! The IOCTLs write their results as little-endian `u64` slots into the METHOD_BUFFERED system
//! buffer (at least 4 slots = 32 bytes of output are required). Slot 0 of the *input* is the
//! argument where one is needed.
#![no_std]

extern crate alloc;
#[cfg(not(test))]
extern crate wdk_panic;

mod handles;
mod lifecycle;
mod pending;
mod pool_checks;
mod registry;
mod stacks;

use alloc::{boxed::Box, vec::Vec};
use core::{arch::asm, ptr::null_mut};

#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::{
    DRIVER_OBJECT, FILE_DEVICE_UNKNOWN, IO_NO_INCREMENT, IRP, METHOD_BUFFERED, NTSTATUS,
    PCUNICODE_STRING, PDEVICE_OBJECT, PDRIVER_OBJECT, PIRP, STATUS_BUFFER_TOO_SMALL,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS, UNICODE_STRING,
    ntddk::{
        DbgPrint, IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink,
        IofCompleteRequest, MmGetSystemRoutineAddress,
    },
};

#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// `CTL_CODE(FILE_DEVICE_UNKNOWN, function, METHOD_BUFFERED, FILE_ANY_ACCESS)`.
const fn ioctl(function: u32) -> u32 {
    (FILE_DEVICE_UNKNOWN << 16) | (function << 2) | METHOD_BUFFERED
}

const IOCTL_PING: u32 = ioctl(0x800);
const IOCTL_ALLOC: u32 = ioctl(0x801);
const IOCTL_LEAK: u32 = ioctl(0x802);
const IOCTL_BIGSTACK: u32 = ioctl(0x803);
const IOCTL_GS: u32 = ioctl(0x804);
const IOCTL_CR8: u32 = ioctl(0x805);
const IOCTL_KUSER: u32 = ioctl(0x806);
const IOCTL_PANIC: u32 = ioctl(0x807);
const IOCTL_WILD: u32 = ioctl(0x808);
const IOCTL_DBGPRINT: u32 = ioctl(0x809);
const IOCTL_CLI: u32 = ioctl(0x80A);
const IOCTL_OVERRUN: u32 = ioctl(0x80B);
const IOCTL_UAF: u32 = ioctl(0x80C);
const IOCTL_DOUBLE_COMPLETE: u32 = ioctl(0x80D);
const IOCTL_UNINIT: u32 = ioctl(0x80E);
const IOCTL_ROUTINE: u32 = ioctl(0x80F); // MmGetSystemRoutineAddress("CmUnRegisterCallback")
const IOCTL_STATS: u32 = ioctl(0x810); // registry/process counters, block `argument`
const IOCTL_PIN: u32 = ioctl(0x811); // reference the next key object opened (a hive pin)
const IOCTL_UNPIN: u32 = ioctl(0x812); // release that reference
const IOCTL_WAIT: u32 = ioctl(0x813); // pend until a timer (`argument` ms), release, cancel, cleanup
const IOCTL_WAIT_UNMARKED: u32 = ioctl(0x814); // bug: STATUS_PENDING without IoMarkIrpPending
const IOCTL_STRAY_TIMER: u32 = ioctl(0x815); // bug: a timer DriverUnload forgets to cancel
const IOCTL_COMPLETE_CANCELABLE: u32 = ioctl(0x816); // bug: completed with its cancel routine set
const IOCTL_WAIT_ORPHAN: u32 = ioctl(0x817); // bug: a wait IRP_MJ_CLEANUP leaves pending
const IOCTL_RELEASE: u32 = ioctl(0x818); // complete every pending wait now
const IOCTL_DPC: u32 = ioctl(0x819); // 0: KeInsertQueueDpc/KeRemoveQueueDpc; 1: counters
const IOCTL_WAIT_HOLD_CANCEL_LOCK: u32 = ioctl(0x81A); // bug: cancel routine keeps the lock
const IOCTL_FREE_SET_TIMER: u32 = ioctl(0x81B); // bug: frees a timer that is still set
const IOCTL_RELEASE_ON_CLOSE: u32 = ioctl(0x81C); // key handle closes complete the waits
// Hive lifecycle and process identity (lifecycle.rs).
const IOCTL_LOG_START: u32 = ioctl(0x830); // clear the notification log and start recording
const IOCTL_LOG_READ: u32 = ioctl(0x831); // log entry `argument` (64 bytes of output)
const IOCTL_ATTACH: u32 = ioctl(0x832); // KeStackAttachProcess to pid `argument`
const IOCTL_START_KEY: u32 = ioctl(0x833); // PsGetProcessStartKey of pid `argument`
const IOCTL_SYSTEM_PROCESS: u32 = ioctl(0x857); // PsInitialSystemProcess as read by a driver
const IOCTL_LEAK_PENDING: u32 = ioctl(0x858); // bug: a pending wait's IRP address in the answer
const IOCTL_REF_USER: u32 = ioctl(0x834); // ObReferenceObjectByHandle(`argument`, UserMode), kept
const IOCTL_REF_KERNEL: u32 = ioctl(0x835); // the same in KernelMode
const IOCTL_DEREF: u32 = ioctl(0x836); // release the kept reference
const IOCTL_KEY_ID: u32 = ioctl(0x837); // CmCallbackGetKeyObjectIDEx on the caller's handle `argument`
const IOCTL_KEY_NAME_OLD: u32 = ioctl(0x838); // CmCallbackGetKeyObjectID on the caller's handle `argument`
const IOCTL_KEY_ID_BAD_COOKIE: u32 = ioctl(0x839); // CmCallbackGetKeyObjectIDEx, unregistered cookie
// User-mode stacks and load-image notifications (stacks.rs).
const IOCTL_WALK: u32 = ioctl(0x840); // RtlWalkFrameChain(input slots: Count, Flags, options)
const IOCTL_CAPTURE_ARM: u32 = ioctl(0x841); // walk in the registry callback (Count, Flags)
const IOCTL_CAPTURE_READ: u32 = ioctl(0x842); // last capture `argument` (0 open, 1 close)
const IOCTL_IMAGE_REGISTER: u32 = ioctl(0x843); // input slots: Flags, classic, times
const IOCTL_IMAGE_REMOVE: u32 = ioctl(0x844); // `argument` 1: remove a never-registered one
const IOCTL_IMAGE_READ: u32 = ioctl(0x845); // image log entry `argument` (64 bytes)
const IOCTL_IMAGE_LEAK: u32 = ioctl(0x846); // bug: DriverUnload leaves the routine registered
const IOCTL_NAME: u32 = ioctl(0x81D); // last key name / CompleteName seen, block `argument`
const IOCTL_NAME_TOUCH: u32 = ioctl(0x81E); // post-open reads the name around a raise (`argument`)
const IOCTL_CONTEXT_LATE: u32 = ioctl(0x81F); // bug: the next post-close sets an object context
const IOCTL_EX_SPIN_LOCK: u32 = ioctl(0x850); // EX_SPIN_LOCK operation `argument` (exlock.rs)
const IOCTL_PROCESS_REMOVE_INSIDE: u32 = ioctl(0x851); // bug: next process notify removes itself
const IOCTL_IMAGE_REMOVE_INSIDE: u32 = ioctl(0x852); // bug: next image notify removes itself
const IOCTL_POOL_CHECK: u32 = ioctl(0x853); // pool/lookaside request `argument` (pool_checks.rs)
const IOCTL_ZW_OPEN: u32 = ioctl(0x854); // own ZwOpenKey of the hive list, then ZwClose
const IOCTL_HIVE_LIST_VALUE: u32 = ioctl(0x855); // the hive list's value `argument` (name hash)
const IOCTL_ALTITUDE_ON_STACK: u32 = ioctl(0x856); // bug: a 2nd callback, altitude on the stack

/// The value IOCTL_PING answers with.
const PING_MAGIC: u64 = 0x6B65_6D75_7465_7374; // "kemutest"

/// A NUL-terminated UTF-16 copy of an ASCII literal, built at compile time.
macro_rules! wide {
    ($s:literal) => {{
        const S: &str = $s;
        const N: usize = S.len() + 1;
        const W: [u16; N] = {
            let b = S.as_bytes();
            let mut out = [0u16; N];
            let mut i = 0;
            while i < b.len() {
                out[i] = b[i] as u16;
                i += 1;
            }
            out
        };
        &W
    }};
}

// After `wide!`, which it uses (a macro_rules macro is visible only below its definition).
mod exlock;

/// IOCTL_ZW_OPEN: the driver's own `ZwOpenKey` of
/// `\Registry\Machine\System\CurrentControlSet\Control\hivelist` (KEY_READ,
/// OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE when `argument` is 0, OBJ_CASE_INSENSITIVE alone
/// when 1, OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK when 2), as hivetrack makes it, on the requesting thread at
/// PASSIVE_LEVEL, then `ZwEnumerateValueKey` of value 0 and `ZwClose`. Answers [open status,
/// handle, enumerate status, close status] (statuses as their 32 bits).
fn zw_open_hivelist(argument: u64) -> [u64; 4] {
    use wdk_sys::{OBJ_CASE_INSENSITIVE, OBJ_FORCE_ACCESS_CHECK, OBJ_KERNEL_HANDLE};
    let attributes = match argument {
        0 => OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE,
        1 => OBJ_CASE_INSENSITIVE,
        _ => OBJ_KERNEL_HANDLE | OBJ_FORCE_ACCESS_CHECK,
    };
    read_hivelist(attributes, 0, &mut [0u64; 64])
}

/// The driver's own `ZwOpenKey` of the hive list (KEY_READ, `attributes`), then
/// `ZwEnumerateValueKey` of value `index` (KeyValueFullInformation) into `buf` and `ZwClose`.
/// Answers [open status, handle, enumerate status, close status] (statuses as their 32 bits;
/// after a failed open, zeros).
fn read_hivelist(attributes: u32, index: u32, buf: &mut [u64; 64]) -> [u64; 4] {
    use wdk_sys::{
        _KEY_VALUE_INFORMATION_CLASS::KeyValueFullInformation,
        HANDLE, KEY_READ, OBJECT_ATTRIBUTES,
        ntddk::{ZwClose, ZwEnumerateValueKey, ZwOpenKey},
    };
    #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
    let bits = |s: NTSTATUS| u64::from(s as u32);
    let mut name = unicode(wide!(
        "\\Registry\\Machine\\System\\CurrentControlSet\\Control\\hivelist"
    ));
    let mut attributes = OBJECT_ATTRIBUTES {
        Length: u32::try_from(size_of::<OBJECT_ATTRIBUTES>()).unwrap_or(0),
        RootDirectory: null_mut(),
        ObjectName: &raw mut name,
        Attributes: attributes,
        SecurityDescriptor: null_mut(),
        SecurityQualityOfService: null_mut(),
    };
    let mut handle: HANDLE = null_mut();
    // SAFETY: PASSIVE_LEVEL (a dispatch routine), valid attributes and out pointer.
    let opened = unsafe { ZwOpenKey(&raw mut handle, KEY_READ, &raw mut attributes) };
    if opened != STATUS_SUCCESS {
        return [bits(opened), 0, 0, 0];
    }
    let mut returned = 0u32;
    // SAFETY: a key handle from ZwOpenKey; the buffer is 512 writable bytes.
    let enumerated = unsafe {
        ZwEnumerateValueKey(
            handle,
            index,
            KeyValueFullInformation,
            buf.as_mut_ptr().cast(),
            512,
            &raw mut returned,
        )
    };
    // SAFETY: the handle ZwOpenKey returned, closed once.
    let closed = unsafe { ZwClose(handle) };
    [bits(opened), handle as u64, bits(enumerated), bits(closed)]
}

/// IOCTL_HIVE_LIST_VALUE: the hive list's value `argument` as a driver reading the list by
/// index sees it ([`read_hivelist`] with OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE). Answers
/// [enumerate status, FNV-1a hash of the value's name, its NameLength in bytes, open status]
/// (statuses as their 32 bits).
fn hive_list_value(argument: u64) -> [u64; 4] {
    use wdk_sys::{OBJ_CASE_INSENSITIVE, OBJ_KERNEL_HANDLE};
    /// KEY_VALUE_FULL_INFORMATION (wdm.h): NameLength at byte 16, Name at byte 20.
    const NAME_LENGTH_AT: usize = 16;
    const NAME_AT: usize = 20;
    let mut buf = [0u64; 64];
    let index = u32::try_from(argument).unwrap_or(u32::MAX);
    let [opened, _, enumerated, _] =
        read_hivelist(OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, index, &mut buf);
    if opened != 0 || enumerated != 0 {
        return [enumerated, 0, 0, opened];
    }
    let bytes = buf.as_ptr().cast::<u8>();
    // SAFETY: ZwEnumerateValueKey filled the fixed part (20 bytes) of the 512-byte buffer.
    let length = unsafe {
        bytes
            .wrapping_add(NAME_LENGTH_AT)
            .cast::<u32>()
            .read_unaligned()
    };
    let length = u16::try_from(length.min(512 - NAME_AT as u32)).unwrap_or(0);
    let value_name = UNICODE_STRING {
        Length: length,
        MaximumLength: length,
        Buffer: bytes.wrapping_add(NAME_AT).cast::<u16>().cast_mut(),
    };
    [
        enumerated,
        lifecycle::hash(&raw const value_name),
        u64::from(length),
        opened,
    ]
}

/// A UNICODE_STRING over a static NUL-terminated UTF-16 literal.
fn unicode(w: &'static [u16]) -> UNICODE_STRING {
    #[allow(clippy::cast_possible_truncation)] // literals here are a few dozen characters
    let len = ((w.len() - 1) * 2) as u16;
    UNICODE_STRING {
        Length: len,
        MaximumLength: len + 2,
        Buffer: w.as_ptr().cast_mut(),
    }
}

const DEVICE_NAME: &[u16] = wide!("\\Device\\KemuTest");
const LINK_NAME: &[u16] = wide!("\\DosDevices\\KemuTest");

/// Sets the IRP's status block and completes it.
///
/// # Safety
/// `irp` must be a live IRP owned by this driver (not yet completed).
pub(crate) unsafe fn complete(irp: PIRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: the caller guarantees `irp` is live and ours.
    let io_status = unsafe { &mut (*irp).IoStatus };
    io_status.__bindgen_anon_1.Status = status;
    io_status.Information = information as u64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    // SAFETY: completing a live IRP we own, exactly once on this path.
    unsafe {
        IofCompleteRequest(irp, IO_NO_INCREMENT as i8);
    }
    status
}

/// A 16 KiB frame: rustc emits `__chkstk` for any frame over one page.
#[inline(never)]
fn big_stack(seed: u8) -> u64 {
    let mut buf = [0u8; 16 * 1024];
    for (i, b) in buf.iter_mut().enumerate() {
        #[allow(clippy::cast_possible_truncation)] // wrapping byte pattern on purpose
        let low = i as u8;
        *b = seed.wrapping_add(low);
    }
    core::hint::black_box(&mut buf);
    buf.iter().map(|&b| u64::from(b)).sum()
}

/// The device-control dispatch routine.
unsafe extern "C" fn dispatch_device_control(_device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    let (params, buffer) = {
        // SAFETY: the I/O manager passes a live IRP that this driver owns during dispatch.
        let irp_ref = unsafe { &*irp };
        // SAFETY: while a driver owns an IRP in dispatch, Tail.Overlay is the live member.
        let overlay = unsafe { &irp_ref.Tail.Overlay };
        // SAFETY: the stack-location pointer is the live member of this union during dispatch.
        let stack = unsafe {
            overlay
                .__bindgen_anon_2
                .__bindgen_anon_1
                .CurrentStackLocation
        };
        // SAFETY: `stack` is the current stack location of a device-control IRP.
        let stack_ref = unsafe { &*stack };
        // SAFETY: for IRP_MJ_DEVICE_CONTROL, Parameters.DeviceIoControl is the live member.
        let params = unsafe { stack_ref.Parameters.DeviceIoControl };
        // SAFETY: METHOD_BUFFERED: AssociatedIrp.SystemBuffer is the live member.
        let buffer = unsafe { irp_ref.AssociatedIrp.SystemBuffer }.cast::<u64>();
        (params, buffer)
    };
    let slots = params.OutputBufferLength as usize / 8;
    if buffer.is_null() || slots < 4 {
        // SAFETY: `irp` is live and not yet completed.
        return unsafe { complete(irp, STATUS_BUFFER_TOO_SMALL, 0) };
    }
    let argument = if params.InputBufferLength >= 8 {
        // SAFETY: the system buffer holds at least 8 input bytes.
        unsafe { buffer.read_unaligned() }
    } else {
        0
    };
    // The requests with several input slots or a long answer (stacks.rs).
    let input = |i: usize| -> u64 {
        if params.InputBufferLength as usize >= (i + 1) * 8 {
            // SAFETY: the system buffer holds at least (i + 1) * 8 input bytes.
            unsafe { buffer.wrapping_add(i).read_unaligned() }
        } else {
            0
        }
    };
    let long: Option<([u64; stacks::WALK_SLOTS], usize)> = match params.IoControlCode {
        IOCTL_WALK => Some((
            stacks::walk_request(input(0), input(1), input(2)),
            stacks::WALK_SLOTS,
        )),
        IOCTL_CAPTURE_READ => Some((stacks::capture(argument), stacks::WALK_SLOTS)),
        IOCTL_IMAGE_READ => {
            let mut v = [0u64; stacks::WALK_SLOTS];
            v[..stacks::IMAGE_SLOTS].copy_from_slice(&stacks::image_entry(argument));
            Some((v, stacks::IMAGE_SLOTS))
        }
        _ => None,
    };
    if let Some((values, n)) = long {
        if slots < n {
            // SAFETY: `irp` is live and not yet completed.
            return unsafe { complete(irp, STATUS_BUFFER_TOO_SMALL, 0) };
        }
        for (i, v) in values.iter().take(n).enumerate() {
            // SAFETY: the system buffer holds at least `n` u64 slots of output.
            unsafe { buffer.wrapping_add(i).write_unaligned(*v) };
        }
        // SAFETY: `irp` is live and not yet completed.
        return unsafe { complete(irp, STATUS_SUCCESS, n * 8) };
    }
    let mut out = [0u64; 4];
    let information = match params.IoControlCode {
        IOCTL_CAPTURE_ARM => {
            stacks::arm(input(0), input(1));
            0
        }
        IOCTL_IMAGE_REGISTER => {
            out = stacks::register(input(0), input(1) != 0, input(2));
            32
        }
        IOCTL_IMAGE_REMOVE => {
            out = stacks::remove(argument != 0);
            32
        }
        IOCTL_IMAGE_LEAK => {
            stacks::leak();
            0
        }
        IOCTL_IMAGE_REMOVE_INSIDE => {
            stacks::remove_inside();
            0
        }
        IOCTL_PROCESS_REMOVE_INSIDE => {
            registry::remove_inside();
            0
        }
        IOCTL_ALTITUDE_ON_STACK => {
            out[0] = u64::from(registry::register_stack_altitude() as u32);
            8
        }
        IOCTL_PING => {
            out[0] = PING_MAGIC;
            8
        }
        IOCTL_ALLOC => {
            // Through the global allocator (ExAllocatePool2 / ExFreePool).
            let n = usize::try_from(argument.min(4096)).unwrap_or(0);
            let mut v: Vec<u64> = Vec::new();
            if v.try_reserve_exact(n).is_err() {
                out[1] = 1;
            } else {
                v.extend(0..n as u64);
                out[0] = v.iter().sum();
            }
            16
        }
        IOCTL_LEAK => {
            let leaked = Box::leak(Box::new([0x5Au8; 100]));
            out[0] = leaked.as_ptr() as u64;
            8
        }
        IOCTL_BIGSTACK => {
            #[allow(clippy::cast_possible_truncation)] // a seed byte
            let seed = argument as u8;
            out[0] = big_stack(seed);
            8
        }
        IOCTL_GS => {
            let (thread, number, prcb): (u64, u32, u64);
            // SAFETY: KeGetCurrentThread's inline form: gs:[0x188] is KPCR.Prcb.CurrentThread.
            unsafe { asm!("mov {}, gs:[0x188]", out(reg) thread) };
            // SAFETY: KeGetCurrentProcessorNumber's inline form: gs:[0x1A4] is Prcb.Number.
            unsafe { asm!("mov {:e}, gs:[0x1A4]", out(reg) number) };
            // SAFETY: gs:[0x20] is KPCR.CurrentPrcb.
            unsafe { asm!("mov {}, gs:[0x20]", out(reg) prcb) };
            out = [thread, u64::from(number), prcb, 0];
            24
        }
        IOCTL_CR8 => {
            let (before, raised, after): (u64, u64, u64);
            // SAFETY: KeGetCurrentIrql's inline form.
            unsafe { asm!("mov {}, cr8", out(reg) before) };
            // SAFETY: KeRaiseIrql(DISPATCH_LEVEL)'s inline form; lowered again below.
            unsafe { asm!("mov cr8, {}", in(reg) 2u64) };
            // SAFETY: reading the IRQL.
            unsafe { asm!("mov {}, cr8", out(reg) raised) };
            // SAFETY: KeLowerIrql back to the entry IRQL.
            unsafe { asm!("mov cr8, {}", in(reg) before) };
            // SAFETY: reading the IRQL.
            unsafe { asm!("mov {}, cr8", out(reg) after) };
            out = [before, raised, after, 0];
            24
        }
        IOCTL_KUSER => {
            const KUSER_SHARED_DATA: usize = 0xFFFF_F780_0000_0000;
            // SAFETY: KeQueryTickCount's inline form reads KUSER_SHARED_DATA.TickCount.
            let tick =
                unsafe { core::ptr::read_volatile((KUSER_SHARED_DATA + 0x320) as *const u64) };
            // SAFETY: KeQuerySystemTime's inline form reads KUSER_SHARED_DATA.SystemTime.
            let time =
                unsafe { core::ptr::read_volatile((KUSER_SHARED_DATA + 0x14) as *const u64) };
            // SAFETY: TickCountMultiplier.
            let mult = unsafe { core::ptr::read_volatile((KUSER_SHARED_DATA + 0x4) as *const u32) };
            out = [tick, time, u64::from(mult), 0];
            24
        }
        IOCTL_PANIC => {
            let table = core::hint::black_box([1u8, 2, 3]);
            let index = usize::try_from(argument).unwrap_or(usize::MAX);
            out[0] = u64::from(table[index]); // index >= 3 panics: bounds check
            8
        }
        IOCTL_WILD => {
            let p = core::hint::black_box(0xdead_0000usize) as *mut u64;
            // SAFETY: deliberately not: a wild write the emulator must report as bugcheck 0x50.
            unsafe { p.write_volatile(1) };
            0
        }
        IOCTL_DBGPRINT => {
            let mut name = [0u16; 6];
            for (slot, c) in name.iter_mut().zip("KEMU!".bytes()) {
                *slot = u16::from(c);
            }
            let us = UNICODE_STRING {
                Length: 10,
                MaximumLength: 12,
                Buffer: name.as_mut_ptr(),
            };
            // SAFETY: every conversion matches its argument (Windows LLP64 rules), strings are
            // NUL-terminated or counted.
            let status = unsafe {
                DbgPrint(
                    c"kemu: d=%d u=%u x=%08x s=%s ws=%ws wZ=%wZ c=%c p=%p I64x=%I64x lld=%lld 11th=%ld 12th=%-6s|\n"
                        .as_ptr(),
                    -42i32,
                    4_000_000_000u32,
                    0xBEEFu32,
                    c"narrow".as_ptr(),
                    name.as_ptr(),
                    &raw const us,
                    i32::from(b'Z'),
                    0x1234usize as *const u8,
                    0x1122_3344_5566_7788u64,
                    -9_000_000_000i64,
                    -7i32,
                    c"ten".as_ptr(),
                )
            };
            #[allow(clippy::cast_sign_loss)] // NTSTATUS bits
            let bits = status as u32;
            out[0] = u64::from(bits);
            8
        }
        IOCTL_CLI => {
            // SAFETY: _disable/_enable pair; interrupts are back on before returning.
            unsafe { asm!("cli", "sti") };
            0
        }
        IOCTL_OVERRUN => {
            let block = Box::into_raw(Box::new([0u8; 100])).cast::<u8>();
            let offset = usize::try_from(argument).unwrap_or(0);
            // SAFETY: deliberately not when offset >= 100: the overrun special pool must catch.
            unsafe { block.wrapping_add(offset).write_volatile(0x55) };
            // SAFETY: `block` came from Box::into_raw just above.
            drop(unsafe { Box::from_raw(block.cast::<[u8; 100]>()) });
            0
        }
        IOCTL_UAF => {
            let b = Box::new([7u8; 64]);
            let p = core::hint::black_box(b.as_ptr());
            drop(b);
            // SAFETY: deliberately not: a use-after-free special pool must catch.
            out[0] = u64::from(unsafe { p.read_volatile() });
            8
        }
        IOCTL_DOUBLE_COMPLETE => {
            // SAFETY: deliberately wrong: completes the IRP, then falls through to complete it
            // again below (bugcheck 0x44 on Windows).
            unsafe { complete(irp, STATUS_SUCCESS, 0) };
            0
        }
        IOCTL_UNINIT => {
            // Claims 32 bytes of output but writes only the first 8: the poisoned system
            // buffer makes the 24 stale bytes visible.
            // SAFETY: the system buffer holds at least 32 output bytes (checked above).
            unsafe { buffer.write_unaligned(1) };
            // SAFETY: `irp` is live and not yet completed.
            return unsafe { complete(irp, STATUS_SUCCESS, 32) };
        }
        IOCTL_ROUTINE => {
            let mut name = unicode(wide!("PsSetCreateProcessNotifyRoutine"));
            // SAFETY: `name` is a valid UNICODE_STRING; PASSIVE_LEVEL.
            let p = unsafe { MmGetSystemRoutineAddress(&raw mut name) };
            out[0] = u64::from(!p.is_null());
            8
        }
        IOCTL_EX_SPIN_LOCK => {
            out = exlock::request(argument);
            32
        }
        IOCTL_POOL_CHECK => {
            out = pool_checks::request(argument);
            32
        }
        IOCTL_STATS => {
            out = registry::stats(usize::try_from(argument).unwrap_or(usize::MAX));
            32
        }
        IOCTL_NAME => {
            out = registry::name_block(usize::try_from(argument).unwrap_or(usize::MAX));
            32
        }
        IOCTL_PIN => {
            registry::pin_next();
            0
        }
        IOCTL_UNPIN => {
            out[0] = u64::from(registry::unpin());
            8
        }
        IOCTL_WAIT | IOCTL_WAIT_UNMARKED | IOCTL_WAIT_ORPHAN | IOCTL_WAIT_HOLD_CANCEL_LOCK => {
            let variant = match params.IoControlCode {
                IOCTL_WAIT_UNMARKED => pending::Variant::Unmarked,
                IOCTL_WAIT_ORPHAN => pending::Variant::Orphan,
                IOCTL_WAIT_HOLD_CANCEL_LOCK => pending::Variant::HoldsCancelLock,
                _ => pending::Variant::Correct,
            };
            // SAFETY: `irp` is live, not completed, with >= 32 output bytes (checked above).
            return unsafe { pending::wait(irp, argument, variant) };
        }
        IOCTL_RELEASE_ON_CLOSE => {
            registry::release_on_close();
            0
        }
        IOCTL_NAME_TOUCH => {
            registry::set_name_touch(argument);
            0
        }
        IOCTL_CONTEXT_LATE => {
            registry::context_late();
            0
        }
        IOCTL_LOG_START => {
            lifecycle::log_start();
            0
        }
        IOCTL_LOG_READ => {
            if slots < lifecycle::ENTRY_SLOTS {
                // SAFETY: `irp` is live and not yet completed.
                return unsafe { complete(irp, STATUS_BUFFER_TOO_SMALL, 0) };
            }
            let entry = lifecycle::log_read(usize::try_from(argument).unwrap_or(usize::MAX));
            for (i, v) in entry.iter().enumerate() {
                // SAFETY: the system buffer holds at least ENTRY_SLOTS u64 slots of output.
                unsafe { buffer.wrapping_add(i).write_unaligned(*v) };
            }
            // SAFETY: `irp` is live and not yet completed.
            return unsafe { complete(irp, STATUS_SUCCESS, lifecycle::ENTRY_SLOTS * 8) };
        }
        IOCTL_ATTACH => {
            out = lifecycle::attach(argument);
            32
        }
        IOCTL_ZW_OPEN => {
            out = zw_open_hivelist(argument);
            32
        }
        IOCTL_HIVE_LIST_VALUE => {
            out = hive_list_value(argument);
            32
        }
        IOCTL_START_KEY => {
            out = lifecycle::start_key_of(argument);
            32
        }
        IOCTL_SYSTEM_PROCESS => {
            out = lifecycle::system_process();
            32
        }
        IOCTL_REF_USER => {
            out = handles::reference(argument, 1);
            32
        }
        IOCTL_REF_KERNEL => {
            out = handles::reference(argument, 0);
            32
        }
        IOCTL_KEY_ID => {
            out = handles::key_id(argument);
            32
        }
        IOCTL_KEY_NAME_OLD => {
            out = handles::key_name_old(argument);
            32
        }
        IOCTL_KEY_ID_BAD_COOKIE => {
            out = handles::key_id_bad_cookie(argument);
            32
        }
        IOCTL_DEREF => {
            out[0] = handles::release();
            8
        }
        IOCTL_FREE_SET_TIMER => {
            pending::free_set_timer();
            0
        }
        IOCTL_COMPLETE_CANCELABLE => {
            // SAFETY: `irp` is live and not yet completed (the bug is inside).
            return unsafe { pending::complete_cancelable(irp) };
        }
        IOCTL_STRAY_TIMER => {
            out[0] = pending::set_stray_timer(argument);
            8
        }
        IOCTL_RELEASE => {
            out[0] = pending::release_all();
            8
        }
        IOCTL_LEAK_PENDING => {
            out[0] = pending::leak_pending_irp();
            8
        }
        IOCTL_DPC => {
            out = if argument == 0 {
                pending::queue_dpc()
            } else {
                pending::counters()
            };
            32
        }
        _ => {
            // SAFETY: `irp` is live and not yet completed.
            return unsafe { complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0) };
        }
    };
    for (i, v) in out.iter().enumerate() {
        // SAFETY: the system buffer holds at least 4 u64 slots of output (checked above).
        unsafe { buffer.wrapping_add(i).write_unaligned(*v) };
    }
    // SAFETY: `irp` is live (the double-complete case is the deliberate exception).
    unsafe { complete(irp, STATUS_SUCCESS, information) }
}

/// IRP_MJ_CREATE / IRP_MJ_CLOSE: always succeed.
unsafe extern "C" fn dispatch_create_close(_device: PDEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: `irp` is live and not yet completed.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// IRP_MJ_CLEANUP: the file object's pending waits complete (STATUS_CANCELLED) before the
/// cleanup does, so the handle's last close never waits on this driver.
unsafe extern "C" fn dispatch_cleanup(_device: PDEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the I/O manager passes a live IRP that this driver owns during dispatch.
    let stack = unsafe { pending::stack(irp) };
    // SAFETY: the current stack location of the cleanup IRP.
    let file = unsafe { (*stack).FileObject };
    pending::cleanup(file.cast());
    // SAFETY: `irp` is live and not yet completed.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// DriverUnload: cancels the timers and flushes the DPCs, unregisters the callbacks, deletes
/// the symbolic link and the device.
unsafe extern "C" fn driver_unload(driver: *mut DRIVER_OBJECT) {
    let _ = handles::release();
    stacks::stop();
    pending::stop();
    registry::stop();
    let mut link = unicode(LINK_NAME);
    // SAFETY: the link was created in DriverEntry; PASSIVE_LEVEL.
    let _ = unsafe { IoDeleteSymbolicLink(&raw mut link) };
    // SAFETY: the driver object is live during unload.
    let device = unsafe { (*driver).DeviceObject };
    if !device.is_null() {
        // SAFETY: our only device; no IRP is in flight at unload.
        unsafe { IoDeleteDevice(device) };
    }
}

/// DriverEntry: one unsecured named device (no DACL of its own) plus a symbolic link.
///
/// # Safety
/// Called by the I/O manager only.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let mut name = unicode(DEVICE_NAME);
    let mut device: PDEVICE_OBJECT = null_mut();
    // SAFETY: valid driver object and name; PASSIVE_LEVEL.
    let status = unsafe {
        IoCreateDevice(
            driver,
            0,
            &raw mut name,
            FILE_DEVICE_UNKNOWN,
            0,
            0,
            &raw mut device,
        )
    };
    if status < 0 {
        return status;
    }
    let mut link = unicode(LINK_NAME);
    // SAFETY: both strings are valid; PASSIVE_LEVEL.
    let status = unsafe { IoCreateSymbolicLink(&raw mut link, &raw mut name) };
    if status < 0 {
        // SAFETY: the device was created above and nothing references it yet.
        unsafe { IoDeleteDevice(device) };
        return status;
    }
    let status = registry::start(driver);
    if status < 0 {
        // SAFETY: created above; nothing refers to them yet.
        let _ = unsafe { IoDeleteSymbolicLink(&raw mut link) };
        // SAFETY: as above.
        unsafe { IoDeleteDevice(device) };
        return status;
    }
    pending::start();
    lifecycle::start();
    // SAFETY: DriverEntry owns the driver object until it returns.
    let major = unsafe { &mut (*driver).MajorFunction };
    major[wdk_sys::IRP_MJ_CREATE as usize] = Some(dispatch_create_close);
    major[wdk_sys::IRP_MJ_CLOSE as usize] = Some(dispatch_create_close);
    major[wdk_sys::IRP_MJ_CLEANUP as usize] = Some(dispatch_cleanup);
    major[wdk_sys::IRP_MJ_DEVICE_CONTROL as usize] = Some(dispatch_device_control);
    // SAFETY: as above.
    unsafe { (*driver).DriverUnload = Some(driver_unload) };
    STATUS_SUCCESS
}
