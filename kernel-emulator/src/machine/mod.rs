//! The processor as a driver sees it: a fake KPCR through gs and the per-thread IRQL
//! ([`cpu`]), and the privileged instructions drivers inline, emulated from their traps
//! ([`trap`]: cr8, cli/sti, KUSER_SHARED_DATA loads).

pub mod cpu;
pub mod trap;
