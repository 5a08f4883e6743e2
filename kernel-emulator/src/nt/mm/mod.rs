//! Memory manager (`Mm*`): pageable memory handed to drivers and Force IRQL Checking
//! ([`paged`]).

pub mod paged;
