//! The hivetrack kernel emulator: loads a real Windows x64 WDM driver (`.sys`) into this Linux
//! process, runs its machine code natively against a model of the ntoskrnl routines it
//! imports, and checks what it does like Driver Verifier would.
//!
//! Layers, bottom up, one directory each:
//! - [`loader`] maps and binds the image and symbolizes addresses with the linker map, and
//!   drives a loaded driver (DriverEntry, dispatch, unload, leak check);
//! - [`machine`] gives every emulator thread a fake KPCR through gs and the per-thread IRQL,
//!   and emulates the few privileged instructions drivers inline (cr8, cli/sti,
//!   KUSER_SHARED_DATA loads), turning every other fault into a bugcheck report;
//! - [`nt`], the kernel model, laid out by NT component as ReactOS's `ntoskrnl/` is
//!   (`cm`, `io`, `ob`, `se`, `ps`, `ke`, `ex`, `mm`, `rtl`), all sharing `nt::kernel`'s
//!   state, with the export table the loader binds against;
//! - [`verifier`]: the bugchecks Driver Verifier would raise, fault injection, call counts;
//! - [`harness`] holds the named scenarios, the suite that runs them in child processes, the
//!   fault sweep, scripts, replays, benchmarks and the CLI's live session.
//!
//! The model is of Windows as documented, not Windows itself: see README.md.

// The emulator reinterprets Windows structures and register values all day long: these casts
// are its job, and each is bounded by the documented field width.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_ptr_alignment,
    clippy::cast_lossless
)]
// Exported routines are named as Windows names them (IoCreateDevice, ...).
#![allow(non_snake_case)]
// The docs are dense with Windows identifiers (IoCreateDevice, IRP_MJ_CREATE, KUSER_SHARED_DATA)
// quoted from Microsoft's documentation; back-ticking every one of them hurts readability.
#![allow(clippy::doc_markdown, clippy::too_long_first_doc_paragraph)]
// Exported routines are plain `extern "win64"` functions whose address is taken; `const`
// adds nothing there, and the lint fires on most of them.
#![allow(clippy::missing_const_for_fn)]

pub mod harness;
pub mod loader;
pub mod machine;
pub mod nt;
pub mod verifier;
