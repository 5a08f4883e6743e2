//! Time: the system time in 100-ns units since 1601 (the `KeQuerySystemTime` scale), for open
//! times, and the interrupt time (100-ns units since boot, never set back), for timeouts.

use wdk_sys::LARGE_INTEGER;

use crate::routines;

/// `KUSER_SHARED_DATA.SystemTime` (wdm.h: `KI_USER_SHARED_DATA` + 0x14), a `KSYSTEM_TIME`.
const KUSER_SYSTEM_TIME: usize = 0xFFFF_F780_0000_0014;
/// `KUSER_SHARED_DATA.InterruptTime` (wdm.h: `KI_USER_SHARED_DATA` + 0x08), a `KSYSTEM_TIME`.
const KUSER_INTERRUPT_TIME: usize = 0xFFFF_F780_0000_0008;

/// The current system time. `KeQuerySystemTimePrecise` (Windows 8+) when present; otherwise
/// what the `KeQuerySystemTime` macro of wdm.h does on x64: read the shared-data `KSYSTEM_TIME`
/// until both high parts agree.
pub fn now() -> u64 {
    if let Some(query) = routines::ke_query_system_time_precise() {
        let mut t = LARGE_INTEGER { QuadPart: 0 };
        // SAFETY: a documented call with a valid out pointer, callable at any IRQL <= HIGH.
        unsafe { query(&raw mut t) };
        // SAFETY: the routine wrote QuadPart.
        return u64::try_from(unsafe { t.QuadPart }).unwrap_or(0);
    }
    kuser_time(KUSER_SYSTEM_TIME)
}

/// The interrupt time, as the inline `KeQueryInterruptTime` of wdm.h reads it on x64: from
/// the shared-data `KSYSTEM_TIME`. Monotonic, so timeouts do not move when the clock is set.
pub fn interrupt_time() -> u64 {
    kuser_time(KUSER_INTERRUPT_TIME)
}

/// Reads a `KSYSTEM_TIME` of `KUSER_SHARED_DATA` until both high parts agree (the writer
/// updates `High2Time`, then `LowPart`, then `High1Time`).
fn kuser_time(address: usize) -> u64 {
    loop {
        let high1 = kuser_u32(address + 4);
        let low = kuser_u32(address);
        let high2 = kuser_u32(address + 8);
        if high1 == high2 {
            return (u64::from(high1) << 32) | u64::from(low);
        }
    }
}

/// One 32-bit load from `KUSER_SHARED_DATA`, as a plain `mov`: a compiler may otherwise fold
/// the load into another instruction's memory operand, and emulators of this page (Wine's and
/// ours) decode simple moves.
fn kuser_u32(address: usize) -> u32 {
    let value: u32;
    // The asm only loads 4 bytes and touches nothing else.
    // SAFETY: KUSER_SHARED_DATA is mapped read-only at this fixed address on x64 Windows.
    unsafe {
        core::arch::asm!(
            "mov {value:e}, dword ptr [{address}]",
            address = in(reg) address,
            value = out(reg) value,
            options(nostack, readonly, preserves_flags),
        );
    }
    value
}
