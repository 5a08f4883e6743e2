//! The hivetrack kernel emulator: loads a real Windows x64 WDM driver (`.sys`) into this Linux
//! process, runs its machine code natively against a model of the ntoskrnl routines it
//! imports, and checks what it does like Driver Verifier would.
//!
//! Layers, bottom up:
//! - [`pe`] maps and binds the image, [`mapfile`] symbolizes addresses with the linker map;
//! - [`cpu`] gives every emulator thread a fake KPCR through gs and the per-thread IRQL,
//!   [`trap`] emulates the few privileged instructions drivers inline (cr8, cli/sti,
//!   KUSER_SHARED_DATA loads) and turns every other fault into a bugcheck report
//!   ([`bugcheck`]);
//! - the kernel model: [`pool`], [`faults`], [`security`], [`object`], [`io`], [`rtl`],
//!   [`dbgprint`], [`registry`], [`timer`] (KTIMER/KDPC and the emulated clock),
//!   [`thread`] (user-mode stacks, RtlWalkFrameChain), [`image`] (load-image notifications),
//!   [`cancel`] (the cancel spin lock, IoCancelIrp), [`exports`] (the import table the loader binds against),
//!   all sharing [`kernel`]'s state;
//! - [`driver`] drives a loaded image (DriverEntry, dispatch, unload, leak check);
//! - [`scenario`] holds the named scenarios and [`suite`] runs them in child processes.
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

pub mod altitude;
pub mod bench;
pub mod bugcheck;
pub mod calls;
pub mod cancel;
pub mod cpu;
pub mod dbgprint;
pub mod driver;
pub mod exports;
pub mod faults;
pub mod handle_table;
pub mod hive;
pub mod image;
pub mod io;
pub mod kernel;
pub mod layout;
pub mod lookaside;
pub mod mapfile;
pub mod object;
pub mod paged;
pub mod pe;
pub mod pool;
pub mod printf;
pub mod process;
pub mod registry;
pub mod replay;
pub mod rtl;
pub mod scenario;
pub mod script;
pub mod security;
pub mod session;
pub mod status;
pub mod suite;
pub mod sweep;
pub mod sync;
pub mod thread;
pub mod timer;
pub mod trap;
pub mod zwreg;
