//! Running drivers on the model: named scenarios ([`scenario`]) run in child processes by
//! [`suite`], the systematic fault sweep ([`sweep`]), the scenario script format ([`script`]),
//! workloads replayed through the registry ([`replay`]), the benchmarks ([`bench`]) and a live
//! machine for the CLI and the demo ([`session`]).

pub mod bench;
pub mod replay;
pub mod scenario;
pub mod script;
pub mod session;
pub mod suite;
pub mod sweep;
