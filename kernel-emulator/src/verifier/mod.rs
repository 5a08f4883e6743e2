//! What Driver Verifier would do: stop the machine on a broken rule ([`bugcheck`]), inject
//! allocation failures ([`faults`]), and count the kernel calls a driver makes for the
//! benchmarks ([`calls`]).

pub mod bugcheck;
pub mod calls;
pub mod faults;
