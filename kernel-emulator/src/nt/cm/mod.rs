//! Configuration manager (`Cm*`, `Zw*Key`): hives and keys ([`hive`]), the registry
//! callbacks and their notifications ([`registry`]), the `Zw` registry routines a driver calls
//! ([`zwreg`]) and filter altitudes ([`altitude`]).

pub mod altitude;
pub mod hive;
pub mod registry;
pub mod zwreg;
