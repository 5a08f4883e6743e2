//! Security reference monitor (`Se*`): SIDs, ACLs, security descriptors and caller tokens
//! ([`security`]).

pub mod security;
