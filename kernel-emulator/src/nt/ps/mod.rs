//! Process structure (`Ps*`): processes and their notify routines ([`process`]), image loads
//! and load-image notify routines ([`image`]), threads' user-mode stacks and
//! `RtlWalkFrameChain` ([`thread`]).

pub mod image;
pub mod process;
pub mod thread;
