//! Kernel routines the driver must resolve at run time (`MmGetSystemRoutineAddress`) instead of
//! importing them, each with the reason.
//!
//! A static import of a routine the running kernel lacks makes Windows refuse to load the
//! driver (`STATUS_PROCEDURE_NOT_FOUND`); Wine 8 loads it but kills `winedevice.exe` on the
//! first call. Resolving such routines at run time lets the driver load everywhere and degrade
//! ("live tracking unavailable") where a routine is missing. The minimum Windows version the
//! project supports is Windows 10 1809; the Wine facts come from experiments with Debian 12's
//! Wine 8.0 (see the project's notes on Wine).

/// A routine that must not appear in the driver's import table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeRoutine {
    /// Exported name in `ntoskrnl.exe`.
    pub name: &'static str,
    /// Why it must be resolved at run time (shown in the failure message).
    pub reason: &'static str,
}

/// The one list of routines the driver must resolve with `MmGetSystemRoutineAddress`.
///
/// Sources: Microsoft's DDI reference "Requirements" sections for the Windows versions;
/// the Wine 8.0 experiments for the Wine entries. Not listed because they are fine:
/// `PsSetCreateProcessNotifyRoutineEx2` (Windows 10 1703+, older than 1809),
/// `ExAllocatePoolWithTag`/`ExFreePoolWithTag` and `ExInitialize/DeleteNPagedLookasideList`
/// (present on every supported Windows and real in Wine 8).
pub const RUNTIME_RESOLVED: &[RuntimeRoutine] = &[
    RuntimeRoutine {
        name: "ExAllocatePool2",
        reason: "Windows 10 2004+ only (absent on 1809) and not exported by Wine 8",
    },
    RuntimeRoutine {
        name: "ExAllocatePool3",
        reason: "Windows 10 2004+ only (absent on 1809)",
    },
    RuntimeRoutine {
        name: "ExFreePool2",
        reason: "documented from Windows Server 2022 kernels on (absent on Windows 10 1809)",
    },
    RuntimeRoutine {
        name: "CmRegisterCallbackEx",
        reason: "not exported by Wine 8's ntoskrnl: the image loads there but the first call \
                 kills winedevice.exe, instead of the driver reporting live tracking \
                 unavailable",
    },
    RuntimeRoutine {
        name: "CmCallbackGetKeyObjectIDEx",
        reason: "Windows 8+ and not exported by Wine 8's ntoskrnl",
    },
    RuntimeRoutine {
        name: "CmCallbackReleaseKeyObjectIDEx",
        reason: "Windows 8+; the release half of CmCallbackGetKeyObjectIDEx, which Wine 8 \
                 lacks, so it must be resolved the same way",
    },
    RuntimeRoutine {
        name: "CmSetCallbackObjectContext",
        reason: "not exported by Wine 8's ntoskrnl",
    },
    RuntimeRoutine {
        name: "ExInitializeLookasideListEx",
        reason: "not exported by Wine 8's ntoskrnl (ExInitializeNPagedLookasideList is real \
                 there)",
    },
    RuntimeRoutine {
        name: "ExDeleteLookasideListEx",
        reason: "not exported by Wine 8's ntoskrnl (ExDeleteNPagedLookasideList is real there)",
    },
    RuntimeRoutine {
        name: "KeQuerySystemTimePrecise",
        reason: "Windows 8+ and not exported by Wine 8's ntoskrnl",
    },
    RuntimeRoutine {
        name: "ExAcquireSpinLockShared",
        reason: "not exported by Wine 8's ntoskrnl (Windows Vista SP1+): the driver's locks \
                 fall back to KSPIN_LOCKs without the four EX_SPIN_LOCK routines",
    },
    RuntimeRoutine {
        name: "ExReleaseSpinLockShared",
        reason: "not exported by Wine 8's ntoskrnl (Windows Vista SP1+): the driver's locks \
                 fall back to KSPIN_LOCKs without the four EX_SPIN_LOCK routines",
    },
    RuntimeRoutine {
        name: "ExAcquireSpinLockExclusive",
        reason: "not exported by Wine 8's ntoskrnl (Windows Vista SP1+): the driver's locks \
                 fall back to KSPIN_LOCKs without the four EX_SPIN_LOCK routines",
    },
    RuntimeRoutine {
        name: "ExReleaseSpinLockExclusive",
        reason: "not exported by Wine 8's ntoskrnl (Windows Vista SP1+): the driver's locks \
                 fall back to KSPIN_LOCKs without the four EX_SPIN_LOCK routines",
    },
    RuntimeRoutine {
        name: "ExAcquirePushLockExclusiveEx",
        reason: "not exported by Wine 8's ntoskrnl",
    },
];

/// Looks `name` up in [`RUNTIME_RESOLVED`] (exact, case-sensitive: export names are).
#[must_use]
pub fn runtime_resolved(name: &str) -> Option<&'static RuntimeRoutine> {
    RUNTIME_RESOLVED.iter().find(|routine| routine.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_reasons_present() {
        for (index, routine) in RUNTIME_RESOLVED.iter().enumerate() {
            assert!(!routine.reason.trim().is_empty(), "{}", routine.name);
            assert!(
                RUNTIME_RESOLVED[index + 1..]
                    .iter()
                    .all(|other| other.name != routine.name),
                "{} listed twice",
                routine.name
            );
        }
    }

    #[test]
    fn lookup_is_exact() {
        assert!(runtime_resolved("ExAllocatePool2").is_some());
        assert!(runtime_resolved("ExAllocatePoolWithTag").is_none());
        assert!(runtime_resolved("PsSetCreateProcessNotifyRoutineEx2").is_none());
        assert!(runtime_resolved("exallocatepool2").is_none());
    }
}
