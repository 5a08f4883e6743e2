//! Device names and IOCTL control codes.
//!
//! `CTL_CODE` is a C macro that wdk-sys does not bind, so it is computed here, in one place,
//! for the driver and the client alike (docs: "Defining I/O Control Codes").

/// NT name of the control device the driver creates.
pub const DEVICE_NAME: &str = r"\Device\HiveTrack";
/// Symbolic link the driver creates in the global `\DosDevices` directory.
pub const DOS_DEVICE_NAME: &str = r"\DosDevices\HiveTrack";
/// Win32 path user mode opens with `CreateFileW`.
pub const WIN32_DEVICE_PATH: &str = r"\\.\HiveTrack";

/// The device type of the control device. Values 0x8000–0xFFFF are reserved for vendors.
pub const DEVICE_TYPE: u32 = 0x0000_8A54;

/// `METHOD_BUFFERED`: the I/O manager copies input and output through one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_ANY_ACCESS`.
pub const FILE_ANY_ACCESS: u32 = 0;
/// `FILE_READ_ACCESS`: the handle must have been opened for reading.
pub const FILE_READ_ACCESS: u32 = 1;

/// The `CTL_CODE` macro of `devioctl.h`.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// The parts of a control code, as `CTL_CODE` packed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtlCodeParts {
    /// Device type (bits 16..32).
    pub device_type: u32,
    /// Required access (bits 14..16).
    pub access: u32,
    /// Function number (bits 2..14).
    pub function: u32,
    /// Transfer method (bits 0..2).
    pub method: u32,
}

/// Splits a control code into its `CTL_CODE` parts.
#[must_use]
pub const fn split_ctl_code(code: u32) -> CtlCodeParts {
    CtlCodeParts {
        device_type: code >> 16,
        access: (code >> 14) & 0x3,
        function: (code >> 2) & 0xFFF,
        method: code & 0x3,
    }
}

/// Builds a hivetrack control code for `function` (0x800 and up are vendor functions).
const fn hivetrack_ioctl(function: u32) -> u32 {
    ctl_code(DEVICE_TYPE, function, METHOD_BUFFERED, FILE_READ_ACCESS)
}

/// Returns the protocol version, the driver version and its build id
/// ([`crate::version::VersionInfo`]). Input buffer: empty.
pub const IOCTL_HIVETRACK_GET_VERSION: u32 = hivetrack_ioctl(0x800);

/// Holders of a hive. Input: [`crate::request::QueryRequest`] (query `Holders`); output: a
/// [`crate::holders::Holders`] page.
pub const IOCTL_HIVETRACK_QUERY_HOLDERS: u32 = hivetrack_ioctl(0x801);
/// Hives. Input: `QueryRequest` (`Hives`); output: a [`crate::hives::Hives`] page.
pub const IOCTL_HIVETRACK_QUERY_HIVES: u32 = hivetrack_ioctl(0x802);
/// Every known process with its open keys (unranked). Input: `QueryRequest`
/// (`Processes`); output: a [`crate::processes::Processes`] page.
pub const IOCTL_HIVETRACK_QUERY_PROCESSES: u32 = hivetrack_ioctl(0x803);
/// Counters. Input: `QueryRequest` (`Stats`); output: [`crate::stats::Stats`].
pub const IOCTL_HIVETRACK_QUERY_STATS: u32 = hivetrack_ioctl(0x804);
/// Every tracked key per process. Input: `QueryRequest` (`Snapshot`); output: a
/// [`crate::snapshot::Snapshot`] page.
pub const IOCTL_HIVETRACK_QUERY_SNAPSHOT: u32 = hivetrack_ioctl(0x805);
/// Recent unload attempts. Input: `QueryRequest` (`UnloadHistory`); output: a
/// [`crate::history::UnloadHistory`] page.
pub const IOCTL_HIVETRACK_QUERY_UNLOAD_HISTORY: u32 = hivetrack_ioctl(0x806);

/// Waits until a hive is free.
///
/// Input: [`crate::wait::WaitFreeRequest`]; output: a [`crate::wait::WaitFreeAnswer`]. The driver keeps the request pending (open the device
/// for overlapped I/O to do other work meanwhile) and completes it with `STATUS_CANCELLED`
/// and no answer when the caller cancels it. Drivers that have it say so with
/// [`crate::version::VersionInfo::CAP_WAIT_FREE`].
pub const IOCTL_HIVETRACK_WAIT_FREE: u32 = hivetrack_ioctl(0x807);
/// Which tracked key each of the caller's handles refers to ([`crate::identify`]): the holder
/// now, for handles duplicated or inherited away from their opener.
pub const IOCTL_HIVETRACK_IDENTIFY_HANDLES: u32 = hivetrack_ioctl(0x808);
/// Open-time stack capture.
///
/// Input [`crate::capture::CaptureRequest`] (get, or set the scope); output
/// [`crate::capture::CaptureState`]. Drivers that have it say so with
/// [`crate::version::VersionInfo::CAP_STACKS`].
pub const IOCTL_HIVETRACK_CAPTURE: u32 = hivetrack_ioctl(0x809);
/// Captured stacks. Input: `QueryRequest` (`Stacks`); output: a
/// [`crate::stacks::Stacks`] page.
pub const IOCTL_HIVETRACK_QUERY_STACKS: u32 = hivetrack_ioctl(0x80A);
/// Modules of the processes whose keys carry stacks. Input: `QueryRequest` (`Modules`);
/// output: a [`crate::modules::Modules`] page.
pub const IOCTL_HIVETRACK_QUERY_MODULES: u32 = hivetrack_ioctl(0x80B);
/// The event stream ([`crate::events`]).
///
/// Input [`crate::events::EventsRequest`]; output an [`crate::events::Events`] page, pending until an event comes or the timeout passes.
/// Drivers that have it say so with [`crate::version::VersionInfo::CAP_EVENTS`].
pub const IOCTL_HIVETRACK_WAIT_EVENTS: u32 = hivetrack_ioctl(0x80C);

/// The query IOCTL that carries `query`.
#[must_use]
pub const fn query_ioctl(query: crate::request::QueryKind) -> u32 {
    use crate::request::QueryKind as Q;
    match query {
        Q::Holders => IOCTL_HIVETRACK_QUERY_HOLDERS,
        Q::Hives => IOCTL_HIVETRACK_QUERY_HIVES,
        Q::Processes => IOCTL_HIVETRACK_QUERY_PROCESSES,
        Q::Stats => IOCTL_HIVETRACK_QUERY_STATS,
        Q::Snapshot => IOCTL_HIVETRACK_QUERY_SNAPSHOT,
        Q::UnloadHistory => IOCTL_HIVETRACK_QUERY_UNLOAD_HISTORY,
        Q::Stacks => IOCTL_HIVETRACK_QUERY_STACKS,
        Q::Modules => IOCTL_HIVETRACK_QUERY_MODULES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_code_matches_the_c_macro() {
        // CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS) == 0x222000,
        // the value every Windows driver sample uses.
        assert_eq!(
            ctl_code(0x22, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0022_2000
        );
        // CTL_CODE(FILE_DEVICE_DISK, 0x0, METHOD_BUFFERED, FILE_READ_ACCESS) == 0x74000
        // (IOCTL_DISK_GET_DRIVE_GEOMETRY's family).
        assert_eq!(
            ctl_code(0x7, 0x0, METHOD_BUFFERED, FILE_READ_ACCESS),
            0x0007_4000
        );
    }

    #[test]
    fn query_codes_are_stable() {
        use crate::request::QueryKind;
        let golden = [
            (QueryKind::Holders, 0x8A54_6004),
            (QueryKind::Hives, 0x8A54_6008),
            (QueryKind::Processes, 0x8A54_600C),
            (QueryKind::Stats, 0x8A54_6010),
            (QueryKind::Snapshot, 0x8A54_6014),
            (QueryKind::UnloadHistory, 0x8A54_6018),
        ];
        for ((q, code), function) in golden.into_iter().zip(0x801u32..) {
            assert_eq!(query_ioctl(q), code, "{q:?}");
            let parts = split_ctl_code(code);
            assert_eq!(parts.function, function);
            assert_eq!(parts.method, METHOD_BUFFERED);
            assert_eq!(parts.access, FILE_READ_ACCESS);
        }
    }

    #[test]
    fn wait_free_code_is_stable() {
        assert_eq!(IOCTL_HIVETRACK_WAIT_FREE, 0x8A54_601C);
        assert_eq!(IOCTL_HIVETRACK_IDENTIFY_HANDLES, 0x8A54_6020);
        assert_eq!(split_ctl_code(IOCTL_HIVETRACK_WAIT_FREE).function, 0x807);
        assert_eq!(IOCTL_HIVETRACK_CAPTURE, 0x8A54_6024);
        assert_eq!(IOCTL_HIVETRACK_WAIT_EVENTS, 0x8A54_6030);
        assert_eq!(query_ioctl(crate::request::QueryKind::Stacks), 0x8A54_6028);
        assert_eq!(query_ioctl(crate::request::QueryKind::Modules), 0x8A54_602C);
    }

    #[test]
    fn get_version_code_is_stable() {
        // Golden value: changing it breaks every deployed client.
        assert_eq!(IOCTL_HIVETRACK_GET_VERSION, 0x8A54_6000);
        let parts = split_ctl_code(IOCTL_HIVETRACK_GET_VERSION);
        assert_eq!(
            parts,
            CtlCodeParts {
                device_type: DEVICE_TYPE,
                access: FILE_READ_ACCESS,
                function: 0x800,
                method: METHOD_BUFFERED,
            }
        );
    }
}
