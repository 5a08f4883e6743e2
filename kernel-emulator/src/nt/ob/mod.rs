//! Object manager (`Ob*`): references, handles and object types ([`object`]), and the
//! system handle table as user mode queries it ([`handle_table`]).

pub mod handle_table;
pub mod object;
