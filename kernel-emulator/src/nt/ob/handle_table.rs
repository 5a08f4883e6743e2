//! The system handle table as user mode reads it: `NtQuerySystemInformation` with
//! `SystemExtendedHandleInformation` (class 64) returns one `SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX`
//! per handle of every process — `Object`, `UniqueProcessId`, `HandleValue`, `GrantedAccess`,
//! `CreatorBackTraceIndex`, `ObjectTypeIndex`, `HandleAttributes` (layout: ReactOS
//! `sdk/include/ndk/extypes.h`, class 64; Microsoft Learn documents neither the class nor the
//! entry, and ReactOS does not implement the class, so what it lists — every handle of every
//! process, kernel handles under the System process — is an *inference* from its name and
//! the structure). The model lists the registry model's key handles, the only handles a
//! process can hold in it, with one object type index for keys; a client learns that index
//! the way a real one must, from a key handle of its own.
//!
//! What a client then does with an entry — `DuplicateHandle` into its own process, with no
//! registry notification — is `hive::duplicate_handle`.

use crate::nt::kernel;

/// The object type index the model gives key objects (Windows assigns type indexes at boot;
/// the value means nothing beyond this model).
pub const KEY_TYPE_INDEX: u16 = 0x2C;

/// One `SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX`, the fields the model fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemHandle {
    /// `UniqueProcessId`: the process whose table holds the handle (4 for kernel handles).
    pub pid: u32,
    /// `HandleValue`.
    pub handle: u64,
    /// `Object`: the object's kernel address.
    pub object: usize,
    /// `ObjectTypeIndex`.
    pub type_index: u16,
}

/// Every handle of every process, in (process, handle) order.
#[must_use]
pub fn system_handles() -> Vec<SystemHandle> {
    kernel::with(|k| {
        k.hives
            .handles
            .iter()
            .map(|(&(pid, handle), &object)| SystemHandle {
                pid,
                handle,
                object,
                type_index: KEY_TYPE_INDEX,
            })
            .collect()
    })
}
