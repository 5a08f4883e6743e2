//! A live emulated machine for other programs: the CLI's `--emulator SCENARIO` backend and
//! `cargo xtask demo`. It loads the real `hivetrack.sys`, stages the machine state of a named
//! scenario (the same workloads the tracking proofs check, without their assertions), and
//! answers `DeviceIoControl` requests on the control device as an Administrator's process,
//! with the Win32 error a user-mode caller would see.

use std::path::Path;

use crate::harness::scenario::tracking::{
    APP1, APP2, CLASSES, KEY_READ, SYSTEM_PID, USER, boot_hives, ensure_parents, load_profile,
    logoff_workload, spawn,
};
use crate::harness::scenario::{Ctx, RunOptions, attribution, tracking, truth};
use crate::loader::driver::{self, LoadedDriver};
use crate::machine::{cpu, trap};
use crate::nt::cm::hive;
use crate::nt::io::{self, FileHandle};
use crate::nt::ke::timer;
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::{self, NtStatus, STATUS_SUCCESS};

/// The scenarios a session can stage, with what each leaves behind.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "logoff",
        "a user profile (\\REGISTRY\\USER\\S-1-5-21-1004336348-1177238915-682003330-1001 and its _Classes hive) that will not unload: profleak.exe holds Software\\Policies; one failed unload attempt is in the history; profleak.exe exits 3 s after the session starts a `wait`",
    ),
    (
        "logoff-later",
        "the logoff scenario a minute later on the emulated clock: the driver's timer has looked at the profile again (its default Parameters\\HeldAfterSeconds, 60 s, passed) and put a held-after record in its event stream",
    ),
    (
        "handle-leak",
        "profleak.exe holds 65,602 handles to one key of the user profile",
    ),
    ("idle", "the machine hives only, nothing held"),
    (
        "duplicated",
        "editor.exe opened the profile's Software\\Shared, duplicated the handle into profleak.exe (DuplicateHandle), closed its own and exited: the driver names editor.exe, the opener; profleak.exe holds the key now",
    ),
    (
        "stacks",
        "stack capture on for the user profile; explorer.exe maps ContosoShellExt.dll, which opens Software\\Contoso\\ShellExt\\{Settings,Cache,Overlay} and keeps them; explorer opens Explorer's key itself; the extension also opens a key in SOFTWARE (out of the capture scope)",
    ),
    (
        "classes-link",
        "the user profile loaded; explorer.exe opened HKCU\\Software\\Classes\\.txt through the link to the _Classes hive, closed it and exited; the _Classes unload then failed (STATUS_CANNOT_DELETE) with no key open: the user hive's cached link holds it (WRK cmparse.c CmpGetSymbolicLink; audit 23a, F1)",
    ),
    (
        "late-start",
        "hivetrack started after the leak: the user profile was loaded and profleak.exe opened Software\\Policies before DriverEntry (the driver has no record of it; the kernel's list has); editor.exe opens Control Panel\\Desktop after",
    ),
    (
        "lower-filter-busy-bucket",
        "the user profile loaded after tracking started; an antivirus registry filter below hivetrack (altitude 320000) opened Software\\Contoso\\Cache inside its pre-open callback when editor.exe opened Software, and keeps it: hivetrack never saw that open (Learn \"Supporting Layered Registry Filtering Drivers\"); the profile's unload failed (STATUS_CANNOT_DELETE); the next read of the kernel's list finds the key's hash bucket busy and leaves it out (WRK cmsubs.c CmpSearchForOpenSubKeys; audit 24b, G1)",
    ),
];

/// A running machine with hivetrack.sys loaded and its device open.
pub struct Session {
    driver: LoadedDriver,
    control: FileHandle,
    holder: Option<u32>,
    /// The client's process (the one the control device was opened in).
    client: u32,
}

/// The Win32 error `DeviceIoControl` reports for a driver's NTSTATUS (RtlNtStatusToDosError,
/// for the statuses hivetrack returns).
#[must_use]
pub const fn win32_error(status: NtStatus) -> u32 {
    match status as u32 {
        0xC000_0010 => 1,    // STATUS_INVALID_DEVICE_REQUEST -> ERROR_INVALID_FUNCTION
        0xC000_0034 => 2,    // STATUS_OBJECT_NAME_NOT_FOUND -> ERROR_FILE_NOT_FOUND
        0xC000_0022 => 5,    // STATUS_ACCESS_DENIED -> ERROR_ACCESS_DENIED
        0xC000_00A3 => 21,   // STATUS_DEVICE_NOT_READY -> ERROR_NOT_READY
        0xC000_000D => 87,   // STATUS_INVALID_PARAMETER -> ERROR_INVALID_PARAMETER
        0xC000_0023 => 122,  // STATUS_BUFFER_TOO_SMALL -> ERROR_INSUFFICIENT_BUFFER
        0xC000_009A => 1450, // STATUS_INSUFFICIENT_RESOURCES -> ERROR_NO_SYSTEM_RESOURCES
        0xC000_0120 => 995,  // STATUS_CANCELLED -> ERROR_OPERATION_ABORTED
        _ => 31,             // ERROR_GEN_FAILURE
    }
}

impl Session {
    /// Boots the emulated machine on the calling thread, loads `sys`, and stages `scenario`.
    ///
    /// # Errors
    /// An unknown scenario (the message lists them), an image that does not load, or a
    /// DriverEntry that fails.
    pub fn start(sys: &Path, map: Option<&Path>, scenario: &str) -> Result<Self, String> {
        if !SCENARIOS.iter().any(|(name, _)| *name == scenario) {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
            return Err(format!(
                "unknown emulator scenario `{scenario}` (have: {})",
                names.join(", ")
            ));
        }
        trap::install();
        cpu::init_kuser_shared_data(2);
        cpu::enter_thread(0);
        kernel::with(|k| k.quiet_debug_print = true);
        let mut ctx = Ctx::quiet(RunOptions {
            sys: sys.to_path_buf(),
            map: map.map(Path::to_path_buf),
            special_pool: true,
            hide: Vec::new(),
            procmon_csv: None,
            script: None,
            fault: None,
            faulted: false,
        });
        boot_hives(&mut ctx);
        let mut holder = (scenario == "late-start").then(|| {
            // Before the driver: the profile loads and a process opens a key and keeps it.
            load_profile(&mut ctx);
            let early = spawn(&mut ctx, APP2);
            let key = format!(r"{USER}\Software\Policies");
            ensure_parents(early, &key);
            let _ = hive::open_key(early, &key, KEY_READ, true);
            early
        });
        let driver =
            driver::load(sys, map).map_err(|e| format!("{} does not load: {e}", sys.display()))?;
        let s = driver.entry();
        if s != STATUS_SUCCESS {
            return Err(format!("DriverEntry failed: {}", status::describe(s)));
        }
        let pid = ctx.new_pid();
        let control = io::open(
            protocol::ioctl::WIN32_DEVICE_PATH,
            Caller::Admin,
            pid,
            GENERIC_READ | GENERIC_WRITE,
        )
        .map_err(|s| format!("the control device does not open: {}", status::describe(s)))?;
        match scenario {
            "logoff" | "logoff-later" => {
                load_profile(&mut ctx);
                let (_, _, app2) = logoff_workload(&mut ctx);
                let _ = hive::unload_hive(SYSTEM_PID, USER);
                holder = Some(app2);
                if scenario == "logoff-later" {
                    // The emulated clock moves 61 s: the driver's timer DPC runs (issue 17).
                    timer::advance(61_000);
                }
            }
            "handle-leak" => {
                load_profile(&mut ctx);
                let leaker = spawn(&mut ctx, APP2);
                let key = format!(r"{USER}\Software\Sync\State");
                ensure_parents(leaker, &key);
                for _ in 0..65_602 {
                    let _ = hive::open_key(leaker, &key, KEY_READ, true);
                }
                holder = Some(leaker);
            }
            "duplicated" => holder = Some(stage_duplicated(&mut ctx)),
            "stacks" => {
                // Capture on for the profile; a shell extension in explorer.exe holds keys.
                load_profile(&mut ctx);
                let client = tracking::Client { h: control };
                let staged = attribution::stacks_workload(&mut ctx, &client);
                holder = staged.map(|s| s.explorer);
            }
            "classes-link" => stage_classes_link(&mut ctx),
            // Nobody's exit frees it: the filter's kernel handle outlives editor.exe.
            "lower-filter-busy-bucket" => {
                let _ = truth::stage_lower_filter_key(&mut ctx);
            }
            "late-start" => {
                let later = spawn(&mut ctx, APP1);
                let key = format!(r"{USER}\Control Panel\Desktop");
                ensure_parents(later, &key);
                let _ = hive::open_key(later, &key, KEY_READ, true);
            }
            _ => {}
        }
        if let Some(first) = ctx.failed().first() {
            return Err(format!("staging the `{scenario}` scenario failed: {first}"));
        }
        Ok(Self {
            driver,
            control,
            holder,
            client: pid,
        })
    }

    /// The process that holds the staged keys, if the scenario has one.
    #[must_use]
    pub const fn holder(&self) -> Option<u32> {
        self.holder
    }

    /// Ends the holder process `after` from now, on another emulated processor (what the
    /// demo's `wait` waits for).
    pub fn exit_holder_after(&self, after: std::time::Duration) {
        if let Some(pid) = self.holder {
            std::thread::spawn(move || {
                cpu::enter_thread(70);
                std::thread::sleep(after);
                process::exit_process(pid);
            });
        }
    }

    /// Sends control code `code` with `input`, as a synchronous `DeviceIoControl`: a
    /// request the driver keeps pending blocks this thread until the driver completes it,
    /// while the emulated clock runs (timers fire). Returns the bytes written into `output`,
    /// or the Win32 error a user-mode caller would get.
    ///
    /// # Errors
    /// The Win32 error for the driver's failure status.
    pub fn ioctl(&self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, u32> {
        let len = u32::try_from(output.len()).unwrap_or(u32::MAX);
        let r = match io::device_io_control_async(self.control, code, input, len, 0xA5) {
            io::IoctlCall::Done(r) => r,
            io::IoctlCall::Pending(mut pending) => loop {
                if let Some(r) = pending.poll() {
                    break r;
                }
                timer::run_due();
                std::thread::sleep(std::time::Duration::from_millis(2));
            },
        };
        if !status::nt_success(r.status) {
            return Err(win32_error(r.status));
        }
        let n = r.information.min(output.len()).min(r.output.len());
        output[..n].copy_from_slice(&r.output[..n]);
        Ok(n)
    }

    /// `NtQueryOpenSubKeysEx` on the hive mounted at `mount`, as a user-mode caller gets it:
    /// `(pid, key path)` per key object (the model: `hive::open_subkeys`), or the Win32
    /// error (`ERROR_FILE_NOT_FOUND` for no hive there).
    ///
    /// # Errors
    /// The Win32 error.
    pub fn open_subkeys(&self, mount: &str) -> Result<Vec<(u64, String)>, u32> {
        hive::open_subkeys(mount)
            .map(|v| v.into_iter().map(|(p, n)| (u64::from(p), n)).collect())
            .map_err(win32_error)
    }

    /// Every key handle of the other processes, as `(pid, handle)`: the model's system
    /// handle table (`crate::nt::ob::handle_table`), filtered on the key type index the client
    /// learns from a key handle of its own, as a real client must.
    #[must_use]
    pub fn foreign_key_handles(&self) -> Vec<(u64, u64)> {
        let Ok(own) = hive::open_key(self.client, r"\REGISTRY\MACHINE\SOFTWARE", KEY_READ, false)
        else {
            return Vec::new();
        };
        let table = crate::nt::ob::handle_table::system_handles();
        let _ = hive::close_key(self.client, own);
        let Some(key_type) = table
            .iter()
            .find(|e| e.pid == self.client && e.handle == own)
            .map(|e| e.type_index)
        else {
            return Vec::new();
        };
        table
            .iter()
            .filter(|e| e.type_index == key_type && e.pid != self.client)
            .map(|e| (u64::from(e.pid), e.handle))
            .collect()
    }

    /// `DuplicateHandle` of `pid`'s `handle` into the client's process (no registry
    /// notification, as in Windows).
    #[must_use]
    pub fn duplicate_handle(&self, pid: u64, handle: u64) -> Option<u64> {
        hive::duplicate_handle(u32::try_from(pid).ok()?, handle, self.client).ok()
    }

    /// Closes a handle of the client's process.
    pub fn close_handle(&self, handle: u64) {
        let _ = hive::close_key(self.client, handle);
    }

    /// The full name of the key behind the client's `handle` (`NtQueryKey` with
    /// `KeyNameInformation`: `hive::query_key_name`); `None` when the handle is not the
    /// client's.
    #[must_use]
    pub fn key_name(&self, handle: u64) -> Option<String> {
        hive::query_key_name(self.client, handle).ok()
    }

    /// The image path of live process `pid` (what `QueryFullProcessImageNameW` gives).
    #[must_use]
    pub fn process_image(&self, pid: u64) -> Option<String> {
        let pid = u32::try_from(pid).ok()?;
        kernel::with(|k| k.processes.processes.get(&pid).map(|p| p.image.clone()))
    }

    /// Closes the device and unloads the driver; returns what was left behind (empty when
    /// clean).
    #[must_use]
    pub fn finish(mut self) -> Vec<String> {
        io::close(self.control);
        // A lower filter's kept handles (`lower-filter-busy-bucket`): that filter's business.
        for h in crate::nt::cm::registry::take_kept_open() {
            let _ = hive::close_key(SYSTEM_PID, h);
        }
        let _ = self.driver.unload();
        kernel::leaks()
    }
}

/// The `classes-link` staging: explorer.exe opens `HKCU\Software\Classes\.txt` through the
/// link to the `_Classes` hive, closes it and exits; the `_Classes` unload then fails with
/// no key open, held by the user hive's cached link (`td-link-holds-target`; audit 23a, F1).
fn stage_classes_link(ctx: &mut Ctx) {
    load_profile(ctx);
    hive::create_link(&format!(r"{USER}\Software\Classes"), CLASSES);
    let shell = spawn(ctx, APP1);
    ensure_parents(shell, &format!(r"{USER}\Software\Classes"));
    ensure_parents(shell, &format!(r"{CLASSES}\.txt\x"));
    let through = format!(r"{USER}\Software\Classes\.txt");
    if let Ok(h) = hive::open_key(shell, &through, KEY_READ, false) {
        let _ = hive::close_key(shell, h);
    }
    process::exit_process(shell);
    let _ = hive::unload_hive(SYSTEM_PID, CLASSES);
}

/// The `duplicated` scenario: a profile key opened by one process, its handle duplicated
/// into another, the opener gone; the holder now also keeps a key of another hive open (the
/// CLI names it and does not ask the driver). Returns the holder now.
fn stage_duplicated(ctx: &mut Ctx) -> u32 {
    load_profile(ctx);
    let opener = spawn(ctx, APP1);
    let now = spawn(ctx, APP2);
    let key = format!(r"{USER}\Software\Shared");
    ensure_parents(opener, &key);
    if let Ok(h) = hive::open_key(opener, &key, KEY_READ, true) {
        let _ = hive::duplicate_handle(opener, h, now);
        let _ = hive::close_key(opener, h);
    }
    let _ = hive::open_key(now, r"\REGISTRY\MACHINE\SOFTWARE", KEY_READ, false);
    process::exit_process(opener);
    now
}

#[cfg(test)]
mod tests {
    use super::win32_error;

    #[test]
    fn statuses_map_to_the_win32_errors_callers_see() {
        assert_eq!(win32_error(0xC000_0010_u32.cast_signed()), 1);
        assert_eq!(win32_error(0xC000_0023_u32.cast_signed()), 122);
        assert_eq!(win32_error(0xC000_000D_u32.cast_signed()), 87);
        assert_eq!(win32_error(0x1234), 31);
    }
}
