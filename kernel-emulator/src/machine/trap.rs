//! Trap-and-emulate: a SIGSEGV/SIGILL/SIGTRAP/SIGFPE/SIGBUS handler that decodes the faulting
//! instruction with iced-x86. Inside the driver image it emulates what kernel code may do but
//! a Linux process may not — `mov cr8` (IRQL), `cli`/`sti`, loads from KUSER_SHARED_DATA at
//! 0xFFFFF78000000000 — and lets `int3` continue as with a debugger attached. Every other
//! fault becomes the bugcheck Windows would raise (0x50 for a bad address, 0xC1/0x50 for
//! special-pool hits, 0x139 for `int 0x29`), with RIP symbolized.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter, GasFormatter, Instruction, Mnemonic, OpKind, Register,
};

use crate::machine::cpu;
use crate::verifier::bugcheck::{self, bugcheck, emit_stderr};

/// Emulated `mov cr8` accesses.
pub static TRAPS_CR8: AtomicU64 = AtomicU64::new(0);
/// Emulated KUSER_SHARED_DATA loads.
pub static TRAPS_KUSER: AtomicU64 = AtomicU64::new(0);
/// Emulated `cli`/`sti`.
pub static TRAPS_CLI: AtomicU64 = AtomicU64::new(0);
/// `int3` breakpoints continued.
pub static TRAPS_INT3: AtomicU64 = AtomicU64::new(0);

const GREGS: [(Register, i32); 16] = [
    (Register::RAX, libc::REG_RAX),
    (Register::RCX, libc::REG_RCX),
    (Register::RDX, libc::REG_RDX),
    (Register::RBX, libc::REG_RBX),
    (Register::RSP, libc::REG_RSP),
    (Register::RBP, libc::REG_RBP),
    (Register::RSI, libc::REG_RSI),
    (Register::RDI, libc::REG_RDI),
    (Register::R8, libc::REG_R8),
    (Register::R9, libc::REG_R9),
    (Register::R10, libc::REG_R10),
    (Register::R11, libc::REG_R11),
    (Register::R12, libc::REG_R12),
    (Register::R13, libc::REG_R13),
    (Register::R14, libc::REG_R14),
    (Register::R15, libc::REG_R15),
];

const fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::BH | Register::CH | Register::DH)
}

fn greg_index(r: Register) -> Option<usize> {
    let full = r.full_register();
    GREGS
        .iter()
        .find(|(g, _)| *g == full)
        .map(|(_, i)| *i as usize)
}

/// Reads a register from the signal context, truncated to its width.
fn get_reg(g: &[i64], r: Register) -> Option<u64> {
    match r {
        Register::None | Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
        Register::GS => Some(cpu::kpcr() as u64),
        _ if is_high_byte(r) => None,
        _ => {
            let v = g[greg_index(r)?] as u64;
            match r.size() {
                8 => Some(v),
                4 => Some(v & 0xFFFF_FFFF),
                2 => Some(v & 0xFFFF),
                1 => Some(v & 0xFF),
                _ => None,
            }
        }
    }
}

/// Writes a register with x86-64 semantics: 32-bit writes zero-extend, 8/16-bit writes merge.
fn set_reg(g: &mut [i64], r: Register, v: u64) -> bool {
    if is_high_byte(r) {
        return false;
    }
    let Some(i) = greg_index(r) else { return false };
    let old = g[i] as u64;
    g[i] = match r.size() {
        8 => v,
        4 => v & 0xFFFF_FFFF,
        2 => (old & !0xFFFF) | (v & 0xFFFF),
        1 => (old & !0xFF) | (v & 0xFF),
        _ => return false,
    } as i64;
    true
}

/// Emulates `ins` if it is one of the handled kernel-only instructions; true if RIP advanced.
fn emulate(ins: &Instruction, g: &mut [i64]) -> bool {
    match ins.code() {
        Code::Mov_r64_cr if ins.op1_register() == Register::CR8 => {
            TRAPS_CR8.fetch_add(1, Ordering::Relaxed);
            if !set_reg(g, ins.op0_register(), u64::from(cpu::irql())) {
                return false;
            }
        }
        Code::Mov_cr_r64 if ins.op0_register() == Register::CR8 => {
            TRAPS_CR8.fetch_add(1, Ordering::Relaxed);
            let Some(v) = get_reg(g, ins.op1_register()) else {
                return false;
            };
            cpu::set_irql((v & 0xF) as u8);
        }
        Code::Cli | Code::Sti => {
            TRAPS_CLI.fetch_add(1, Ordering::Relaxed);
            cpu::set_interrupts_off(ins.code() == Code::Cli);
        }
        _ => {
            let m = ins.mnemonic();
            if !matches!(
                m,
                Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
            ) || ins.op_count() != 2
                || ins.op0_kind() != OpKind::Register
                || ins.op1_kind() != OpKind::Memory
            {
                return false;
            }
            let Some(addr) = ins.virtual_address(1, 0, |r, _, _| get_reg(g, r)) else {
                return false;
            };
            if !(cpu::KUSER_SHARED_DATA..cpu::KUSER_SHARED_DATA + 0x1000).contains(&addr) {
                return false;
            }
            let size = ins.memory_size().size();
            let Some(mut v) =
                cpu::read_kuser_shared_data((addr - cpu::KUSER_SHARED_DATA) as usize, size)
            else {
                return false;
            };
            TRAPS_KUSER.fetch_add(1, Ordering::Relaxed);
            if matches!(m, Mnemonic::Movsx | Mnemonic::Movsxd) {
                let shift = 64 - 8 * size as u32;
                v = (((v << shift) as i64) >> shift) as u64;
            }
            if !set_reg(g, ins.op0_register(), v) {
                return false;
            }
        }
    }
    g[libc::REG_RIP as usize] = ins.next_ip() as i64;
    true
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers.
    let g = unsafe { &mut (*uc).uc_mcontext.gregs };
    let rip = g[libc::REG_RIP as usize] as usize;
    let image = bugcheck::image();
    let in_image = image.is_some_and(|i| i.contains(rip));

    if sig == libc::SIGTRAP && in_image {
        TRAPS_INT3.fetch_add(1, Ordering::Relaxed);
        emit_stderr(&format!(
            "kernel-emulator: breakpoint (int3) at {} during {}: continuing\n",
            bugcheck::symbolize(rip - 1),
            bugcheck::operation()
        ));
        return;
    }
    // SAFETY: `info` is valid for SA_SIGINFO handlers.
    let info = unsafe { &*info };
    // SAFETY: si_addr is defined for the fault signals handled here.
    let addr = unsafe { info.si_addr() } as usize;
    // A pageable buffer the kernel gave the driver, trimmed by Force IRQL Checking
    // ([`crate::nt::mm::paged`]): paged in below DISPATCH_LEVEL, bug check 0xD1 at or above it.
    if matches!(sig, libc::SIGSEGV | libc::SIGBUS) && addr != 0 {
        match crate::nt::mm::paged::fault(addr, cpu::irql()) {
            Some(crate::nt::mm::paged::Fault::PagedIn) => return,
            Some(crate::nt::mm::paged::Fault::TooHighIrql) => {
                let write = g[libc::REG_ERR as usize] & 2 != 0;
                let place = if in_image {
                    bugcheck::symbolize(rip)
                } else {
                    emulator_place(rip)
                };
                emit_stderr(&format!(
                    "\n*** kernel-emulator: pageable memory {addr:#x} touched at IRQL {} by {place}: \
                     Driver Verifier's Force IRQL Checking had trimmed it (a kernel name from paged \
                     pool, read while a spin lock is held?)\n",
                    cpu::irql()
                ));
                bugcheck(
                    0xD1,
                    addr,
                    usize::from(cpu::irql()),
                    usize::from(write),
                    rip,
                );
            }
            None => {}
        }
    }
    // A fault fetching the instruction itself (code unmapped, as after an unload) leaves
    // nothing to decode: reading those bytes would fault again inside this handler.
    let fetch_fault = addr == rip;
    let mut ins = Instruction::default();
    if let Some(img) = image.filter(|_| in_image && !fetch_fault) {
        let avail = (img.base + img.size - rip).min(15);
        // SAFETY: [rip, rip + avail) lies inside the mapped, executable driver image.
        let bytes = unsafe { std::slice::from_raw_parts(rip as *const u8, avail) };
        ins = Decoder::with_ip(64, bytes, rip as u64, DecoderOptions::NONE).decode();
        if !ins.is_invalid() && emulate(&ins, g) {
            return;
        }
        if ins.code() == Code::Int_imm8 && ins.immediate8() == 0x29 {
            bugcheck(0x139, g[libc::REG_RCX as usize] as usize, 0, 0, 0);
        }
    }
    let write = g[libc::REG_ERR as usize] & 2 != 0;
    let mut text = String::new();
    if in_image && !ins.is_invalid() {
        GasFormatter::new().format(&ins, &mut text);
    }
    let (code, what) = match sig {
        libc::SIGSEGV | libc::SIGBUS if addr != 0 => (0x50, "PAGE_FAULT_IN_NONPAGED_AREA"),
        libc::SIGSEGV | libc::SIGBUS => (0x1E, "KMODE_EXCEPTION_NOT_HANDLED (#GP)"),
        libc::SIGILL => (0x1E, "KMODE_EXCEPTION_NOT_HANDLED (illegal instruction)"),
        _ => (0x1E, "KMODE_EXCEPTION_NOT_HANDLED"),
    };
    let rsp = g[libc::REG_RSP as usize] as usize;
    let place = if in_image {
        bugcheck::symbolize(rip)
    } else {
        emulator_place(rip)
    };
    let mut s = format!(
        "\n*** kernel-emulator: signal {sig} in {} at RIP {}\n    instruction: {}\n    \
         fault address {addr:#x} ({}), RSP {rsp:#x}, IRQL {}\n",
        if in_image {
            "driver code"
        } else {
            "emulator code (a bad argument from the driver?)"
        },
        place,
        if text.is_empty() { "?" } else { &text },
        if write { "write" } else { "read" },
        cpu::irql()
    );
    if fetch_fault && sig == libc::SIGSEGV {
        s += "    the instruction itself could not be fetched: code not mapped (called after its driver unloaded?)\n";
    }
    if let Some(note) = crate::nt::ex::pool::describe_fault_address(addr) {
        let _ = writeln!(s, "    {note}");
    }
    if addr != 0 && addr < rsp && rsp - addr < 0x10000 {
        s += "    fault just below RSP: probable kernel stack overflow (bugcheck 0x7F)\n";
    }
    let _ = writeln!(s, "    Windows would raise {code:#x} {what}");
    emit_stderr(&s);
    bugcheck(code, addr, usize::from(write), rip, 0);
}

/// Where `rip` lies in the emulator's own executable, as `file+offset` (for `addr2line -f -C
/// -e file offset`): a fault there is usually a bad argument the driver passed.
fn emulator_place(rip: usize) -> String {
    // SAFETY: a zeroed Dl_info is a valid out-parameter.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables for `rip` and fills `info`.
    let found = unsafe { libc::dladdr(rip as *const libc::c_void, &raw mut info) };
    if found == 0 || info.dli_fbase.is_null() || info.dli_fname.is_null() {
        return format!("{rip:#x} (outside the driver image)");
    }
    // SAFETY: dladdr set dli_fname to the loader's NUL-terminated file name.
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    format!(
        "{rip:#x} ({file}+{:#x}, outside the driver image)",
        rip - info.dli_fbase as usize
    )
}

/// Installs the handler for SIGSEGV, SIGILL, SIGTRAP, SIGFPE and SIGBUS (on the alternate
/// signal stack each emulator thread sets up).
pub fn install() {
    // SAFETY: a zeroed sigaction is a valid starting point; every field used is set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_signal as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: initialises the mask of a local sigaction.
    unsafe { libc::sigemptyset(&raw mut sa.sa_mask) };
    for s in [
        libc::SIGSEGV,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGFPE,
        libc::SIGBUS,
    ] {
        // SAFETY: installs a handler that never returns into a fault it cannot fix.
        unsafe { libc::sigaction(s, &raw const sa, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(64, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    #[test]
    fn cr8_reads_and_writes_follow_the_thread_irql() {
        let mut g = [0i64; 23];
        cpu::set_irql(0);
        // mov cr8, rax (44 0f 22 c0 is mov cr8, rax)
        g[libc::REG_RAX as usize] = 2;
        assert!(emulate(&decode(&[0x44, 0x0f, 0x22, 0xc0]), &mut g));
        assert_eq!(cpu::irql(), 2);
        assert_eq!(g[libc::REG_RIP as usize], 0x1004);
        // mov rcx, cr8 (44 0f 20 c1)
        assert!(emulate(&decode(&[0x44, 0x0f, 0x20, 0xc1]), &mut g));
        assert_eq!(g[libc::REG_RCX as usize], 2);
        cpu::set_irql(0);
    }

    #[test]
    fn kuser_loads_are_emulated_and_other_loads_are_not() {
        cpu::init_kuser_shared_data(1);
        let mut g = [0i64; 23];
        g[libc::REG_RAX as usize] = cpu::KUSER_SHARED_DATA as i64 + 4;
        // mov ecx, [rax]
        assert!(emulate(&decode(&[0x8b, 0x08]), &mut g));
        assert_eq!(g[libc::REG_RCX as usize], 0x0FA0_0000);
        g[libc::REG_RAX as usize] = 0x1234;
        assert!(!emulate(&decode(&[0x8b, 0x08]), &mut g));
    }

    #[test]
    fn partial_register_writes_merge() {
        let mut g = [0i64; 23];
        g[libc::REG_RAX as usize] = -1;
        assert!(set_reg(&mut g, Register::AL, 0x12));
        assert_eq!(g[libc::REG_RAX as usize] as u64, 0xFFFF_FFFF_FFFF_FF12);
        assert!(set_reg(&mut g, Register::EAX, 0x34));
        assert_eq!(g[libc::REG_RAX as usize], 0x34);
        assert!(!set_reg(&mut g, Register::AH, 1));
    }
}
