//! Kernel core (`Ke*`): spin locks, executive spin locks, push locks, IRQL and events
//! ([`sync`]); timers, DPCs and the clock ([`timer`]).

pub mod sync;
pub mod timer;
