//! Run-time library routines ntoskrnl exports: the C memory routines rustc's code calls
//! (memcpy, memmove, memset, memcmp), `__chkstk` (the stack probe for frames over 4 KiB),
//! and the Rtl string and version routines.

/// DbgPrint and its variants.
pub mod dbgprint;
/// Windows printf semantics over a Win64 va_list.
pub mod printf;

use std::arch::naked_asm;
use std::sync::atomic::AtomicU64;
#[cfg(test)]
use std::sync::atomic::Ordering;

use crate::nt::exports::Export;
use crate::nt::layout::UnicodeString;
use crate::nt::status::{NtStatus, STATUS_INVALID_PARAMETER, STATUS_SUCCESS};

/// Calls of `__chkstk` so far.
pub static CHKSTK_CALLS: AtomicU64 = AtomicU64::new(0);

/// x64 `__chkstk` — <https://learn.microsoft.com/en-us/windows/win32/devnotes/-win32-chkstk>:
/// RAX = frame size; touches every page between the caller's RSP and RSP-RAX in order so the
/// guard page logic sees them one by one. Preserves every register but R10, R11 and flags,
/// and leaves RSP alone (the caller subtracts RAX itself): no ordinary calling convention
/// can express that, hence naked assembly.
#[unsafe(naked)]
unsafe extern "win64" fn __chkstk() {
    naked_asm!(
        "lock inc qword ptr [rip + {calls}]",
        "push r10",
        "push r11",
        "lea r10, [rsp + 24]", // the caller's RSP before `call __chkstk`
        "mov r11, r10",
        "sub r11, rax",        // the lowest address the caller's frame will use
        "2:",
        "sub r10, 4096",
        "cmp r10, r11",
        "jb 3f",
        "test byte ptr [r10], 0",
        "jmp 2b",
        "3:",
        "test byte ptr [r11], 0",
        "pop r11",
        "pop r10",
        "ret",
        calls = sym CHKSTK_CALLS,
    )
}

/// memcpy — <https://learn.microsoft.com/en-us/cpp/c-runtime-library/reference/memcpy-wmemcpy>.
unsafe extern "win64" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the driver guarantees both ranges are valid (overlap tolerated as memmove).
    unsafe { core::ptr::copy(src, dst, n) };
    dst
}

/// memmove — <https://learn.microsoft.com/en-us/cpp/c-runtime-library/reference/memmove-wmemmove>.
unsafe extern "win64" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the driver guarantees both ranges are valid; overlap is allowed.
    unsafe { core::ptr::copy(src, dst, n) };
    dst
}

/// memset — <https://learn.microsoft.com/en-us/cpp/c-runtime-library/reference/memset-wmemset>.
unsafe extern "win64" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the driver guarantees the range is valid.
    unsafe { core::ptr::write_bytes(dst, c as u8, n) };
    dst
}

/// memcmp — <https://learn.microsoft.com/en-us/cpp/c-runtime-library/reference/memcmp-wmemcmp>.
unsafe extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: the driver guarantees `a` holds `n` readable bytes.
    let a = unsafe { std::slice::from_raw_parts(a, n) };
    // SAFETY: the driver guarantees `b` holds `n` readable bytes.
    let b = unsafe { std::slice::from_raw_parts(b, n) };
    a.iter()
        .zip(b)
        .find(|(x, y)| x != y)
        .map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

/// RtlCompareMemory — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlcomparememory>:
/// the number of leading bytes that match.
unsafe extern "win64" fn RtlCompareMemory(a: *const u8, b: *const u8, n: usize) -> usize {
    (0..n)
        // SAFETY: the driver guarantees both ranges hold `n` readable bytes.
        .take_while(|&i| unsafe { a.wrapping_add(i).read() } == unsafe { b.wrapping_add(i).read() })
        .count()
}

/// RtlInitUnicodeString — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlinitunicodestring>:
/// counts up to the terminator; a NULL source gives an empty string with a NULL buffer.
unsafe extern "win64" fn RtlInitUnicodeString(dst: *mut UnicodeString, src: *const u16) {
    let mut n = 0usize;
    if !src.is_null() {
        // SAFETY: the driver passes a NUL-terminated UTF-16 string.
        while unsafe { src.wrapping_add(n).read() } != 0 {
            n += 1;
        }
    }
    let length = (n * 2).min(0xFFFC) as u16;
    let value = UnicodeString {
        length,
        maximum_length: if src.is_null() { 0 } else { length + 2 },
        pad: 0,
        buffer: src.cast_mut(),
    };
    // SAFETY: the driver passes a writable UNICODE_STRING.
    unsafe { dst.write_unaligned(value) };
}

/// RtlCopyUnicodeString — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlcopyunicodestring>:
/// copies as much as fits; NULL source sets Length 0.
unsafe extern "win64" fn RtlCopyUnicodeString(dst: *mut UnicodeString, src: *const UnicodeString) {
    // SAFETY: the driver passes a valid destination UNICODE_STRING.
    let mut d = unsafe { dst.read_unaligned() };
    if src.is_null() {
        d.length = 0;
    } else {
        // SAFETY: the driver passes a valid source UNICODE_STRING.
        let s = unsafe { src.read_unaligned() };
        let n = s.length.min(d.maximum_length) & !1;
        // SAFETY: source holds `length` bytes, destination `maximum_length` bytes.
        unsafe { core::ptr::copy(s.buffer.cast::<u8>(), d.buffer.cast::<u8>(), usize::from(n)) };
        d.length = n;
    }
    // SAFETY: as above.
    unsafe { dst.write_unaligned(d) };
}

/// RtlEqualUnicodeString — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlequalunicodestring>.
unsafe extern "win64" fn RtlEqualUnicodeString(
    a: *const UnicodeString,
    b: *const UnicodeString,
    case_insensitive: u8,
) -> u8 {
    // SAFETY: the driver passes valid UNICODE_STRINGs.
    let a = unsafe { crate::nt::layout::read_unicode(a) };
    // SAFETY: as above.
    let b = unsafe { crate::nt::layout::read_unicode(b) };
    let eq = match (a, b) {
        (Some(a), Some(b)) if case_insensitive != 0 => a.to_uppercase() == b.to_uppercase(),
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    u8::from(eq)
}

/// RtlGetVersion — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlgetversion>:
/// fills RTL_OSVERSIONINFOW (0x114 bytes) or RTL_OSVERSIONINFOEXW (0x11C) per its size field.
/// The model reports Windows 11 22H2 (10.0.22621).
unsafe extern "win64" fn RtlGetVersion(info: *mut u32) -> NtStatus {
    if info.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: dwOSVersionInfoSize is the first field.
    let size = unsafe { info.read_unaligned() };
    if size != 0x114 && size != 0x11C {
        return STATUS_INVALID_PARAMETER;
    }
    for (i, v) in [10u32, 0, 22_621, 2].into_iter().enumerate() {
        // SAFETY: major, minor, build, platform follow the size field.
        unsafe { info.wrapping_add(1 + i).write_unaligned(v) };
    }
    STATUS_SUCCESS
}

/// The run-time library routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("__chkstk", __chkstk as *const () as usize),
        Export::function("memcpy", memcpy as *const () as usize),
        Export::function("memmove", memmove as *const () as usize),
        Export::function("memset", memset as *const () as usize),
        Export::function("memcmp", memcmp as *const () as usize),
        Export::function("RtlCompareMemory", RtlCompareMemory as *const () as usize),
        Export::function(
            "RtlInitUnicodeString",
            RtlInitUnicodeString as *const () as usize,
        ),
        Export::function(
            "RtlCopyUnicodeString",
            RtlCopyUnicodeString as *const () as usize,
        ),
        Export::function(
            "RtlEqualUnicodeString",
            RtlEqualUnicodeString as *const () as usize,
        ),
        Export::function("RtlGetVersion", RtlGetVersion as *const () as usize),
    ]
}

/// Calls `__chkstk` the way rustc's prologue does, for tests: `mov eax, size; call __chkstk;
/// sub rsp, rax`, then touches the frame's lowest byte and restores RSP.
#[cfg(test)]
fn probe_frame(size: u32) -> u64 {
    let out: u64;
    // SAFETY: allocates `size` bytes of this thread's stack (tests run with >= 2 MiB stacks
    // and sizes below that), probes it through __chkstk, and restores rsp and r12.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov eax, {size:e}",
            "call {chk}",
            "sub rsp, rax",
            "mov byte ptr [rsp], 1",
            "mov {out}, rax",
            "mov rsp, r12",
            size = in(reg) size,
            chk = sym __chkstk,
            out = out(reg) out,
            out("rax") _, out("r10") _, out("r11") _, out("r12") _,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chkstk_preserves_rax_and_probes_large_frames() {
        let before = CHKSTK_CALLS.load(Ordering::Relaxed);
        assert_eq!(probe_frame(0x4078), 0x4078);
        assert_eq!(probe_frame(64 * 1024), 64 * 1024);
        assert!(CHKSTK_CALLS.load(Ordering::Relaxed) >= before + 2);
    }

    #[test]
    fn memcmp_orders_like_c() {
        // SAFETY: local arrays of the given length.
        assert_eq!(unsafe { memcmp(b"abc".as_ptr(), b"abc".as_ptr(), 3) }, 0);
        // SAFETY: as above.
        assert!(unsafe { memcmp(b"abc".as_ptr(), b"abd".as_ptr(), 3) } < 0);
        // SAFETY: as above.
        let same = unsafe { RtlCompareMemory(b"abcd".as_ptr(), b"abxd".as_ptr(), 4) };
        assert_eq!(same, 2);
    }

    #[test]
    fn init_unicode_string_counts_units() {
        let s: Vec<u16> = "Hive\0".encode_utf16().collect();
        let mut us = UnicodeString {
            length: 0,
            maximum_length: 0,
            pad: 0,
            buffer: std::ptr::null_mut(),
        };
        // SAFETY: a NUL-terminated local string and a local UNICODE_STRING.
        unsafe { RtlInitUnicodeString(&raw mut us, s.as_ptr()) };
        assert_eq!((us.length, us.maximum_length), (8, 10));
        let mut version = [0u32; 0x114 / 4];
        version[0] = 0x114;
        assert_eq!(
            // SAFETY: a local buffer of the documented size.
            unsafe { RtlGetVersion(version.as_mut_ptr()) },
            STATUS_SUCCESS
        );
        assert_eq!(version[1..4], [10, 0, 22_621]);
    }
}
