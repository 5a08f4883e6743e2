//! Loading a driver: the PE image mapped and bound ([`pe`]), symbols from the linker map
//! ([`mapfile`]), and the loaded driver the I/O manager drives ([`driver`]: DriverEntry,
//! dispatch, unload, leak check).

pub mod driver;
pub mod mapfile;
pub mod pe;
