//! Executive support (`Ex*`): pool ([`pool`]) and lookaside lists with their interlocked
//! SLists ([`lookaside`]).

pub mod lookaside;
pub mod pool;
