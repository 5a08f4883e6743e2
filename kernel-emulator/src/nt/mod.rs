//! The model of ntoskrnl, laid out by NT executive component as ReactOS's `ntoskrnl/` and
//! Microsoft's routine prefixes are: [`cm`] (configuration manager: hives, keys, registry
//! callbacks), [`io`] (I/O manager: devices, IRPs, cancel), [`ob`] (object manager), [`se`]
//! (security), [`ps`] (processes, threads, notify routines), [`ke`] (spin locks, IRQL, timers,
//! DPCs), [`ex`] (pool, lookaside lists), [`mm`] (pageable memory), [`rtl`] (run-time
//! library, DbgPrint). All share [`kernel`]'s state; [`exports`] is the export table the
//! loader binds imports against; [`status`] and [`layout`] are the NTSTATUS values and the
//! x64 structure layouts.

pub mod cm;
pub mod ex;
pub mod exports;
pub mod io;
pub mod ke;
pub mod kernel;
pub mod layout;
pub mod mm;
pub mod ob;
pub mod ps;
pub mod rtl;
pub mod se;
pub mod status;
