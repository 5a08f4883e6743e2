//! DbgPrint, DbgPrintEx and vDbgPrintEx: the kernel debugger output routines. The variadic
//! ones are naked thunks that spill RCX/RDX/R8/R9 into the caller's home area so that all
//! arguments form one contiguous Win64 va_list, which [`crate::nt::rtl::printf`] formats with Windows
//! rules. Output goes to stdout as `[DbgPrint] ...` and into the kernel's debug log.

use std::arch::naked_asm;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::nt::exports::Export;
use crate::nt::kernel;
use crate::nt::rtl::printf::{self, VaList};
use crate::nt::status::{NtStatus, STATUS_SUCCESS};

/// Calls whose entry RSP was not 16n+8 (a Win64 ABI violation by the caller).
pub static MISALIGNED_ENTRIES: AtomicU64 = AtomicU64::new(0);

/// DbgPrint — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprint>:
/// `ULONG DbgPrint(PCSTR Format, ...)`.
#[unsafe(naked)]
unsafe extern "win64" fn DbgPrint() {
    naked_asm!(
        "mov [rsp + 8], rcx",
        "mov [rsp + 16], rdx",
        "mov [rsp + 24], r8",
        "mov [rsp + 32], r9",
        "lea r8, [rsp]",       // entry RSP, for the alignment check
        "sub rsp, 40",         // 32 bytes of home area + 8 to realign to 16
        "lea rdx, [rsp + 56]", // va_list: the home slot of the second argument
        "call {imp}",
        "add rsp, 40",
        "ret",
        imp = sym debug_print,
    )
}

/// The body of DbgPrint once the arguments are one va_list.
unsafe extern "win64" fn debug_print(
    format: *const u8,
    va: *const u64,
    entry_rsp: usize,
) -> NtStatus {
    if entry_rsp % 16 != 8 {
        MISALIGNED_ENTRIES.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: DbgPrint's contract: a NUL-terminated format whose conversions match the
    // arguments that follow it.
    let text = unsafe { printf::format(format, &mut VaList(va)) };
    emit(&text);
    STATUS_SUCCESS
}

/// DbgPrintEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprintex>:
/// `ULONG DbgPrintEx(ULONG ComponentId, ULONG Level, PCSTR Format, ...)`.
#[unsafe(naked)]
unsafe extern "win64" fn DbgPrintEx() {
    naked_asm!(
        "mov [rsp + 8], rcx",
        "mov [rsp + 16], rdx",
        "mov [rsp + 24], r8",
        "mov [rsp + 32], r9",
        "sub rsp, 40",
        "lea r9, [rsp + 72]", // va_list: the home slot of the fourth argument
        "call {imp}",
        "add rsp, 40",
        "ret",
        imp = sym vDbgPrintEx,
    )
}

/// vDbgPrintEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-vdbgprintex>:
/// the va_list form of DbgPrintEx.
unsafe extern "win64" fn vDbgPrintEx(
    _component: u32,
    _level: u32,
    format: *const u8,
    va: *const u64,
) -> NtStatus {
    // SAFETY: as for DbgPrint.
    let text = unsafe { printf::format(format, &mut VaList(va)) };
    emit(&text);
    STATUS_SUCCESS
}

/// Records one line of debugger output.
pub fn emit(text: &str) {
    let quiet = kernel::with(|k| {
        k.debug_log.push(text.to_string());
        k.quiet_debug_print
    });
    if !quiet {
        println!("  [DbgPrint] {}", text.trim_end_matches('\n'));
    }
}

/// The debug output routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function("DbgPrint", DbgPrint as *const () as usize),
        Export::function("DbgPrintEx", DbgPrintEx as *const () as usize),
        Export::function("vDbgPrintEx", vDbgPrintEx as *const () as usize),
    ]
}
