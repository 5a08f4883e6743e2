//! `hivetrack service` under the service control manager (the `windows-service` crate).
//!
//! Creating and deleting the service `hivetracksvc`, and running the event loop
//! ([`crate::event_service`]) as its service main, stopped with `CancelIoEx` on the pending
//! events request. Never run on Windows by the project's tests.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::System::IO::CancelIoEx;
use windows_sys::Win32::System::Services::{
    ChangeServiceConfig2W, SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO,
    SERVICE_REQUIRED_PRIVILEGES_INFOW,
};

use crate::event_service::{self, ServiceEnv, ServiceOptions};
use crate::event_sink::{EventSink, Sinks};
pub use crate::install_location::REQUIRED_PRIVILEGES;
use crate::service_command::{SERVICE_NAME, jsonl_sink};
use crate::transport::{Transport, TransportError};
use crate::windows::DeviceTransport;

/// Whether the service `hivetracksvc` exists.
#[must_use]
pub fn installed() -> bool {
    ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT).is_ok_and(|m| {
        m.open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS)
            .is_ok()
    })
}

/// Keeps only [`REQUIRED_PRIVILEGES`] in the service's token from its next start on (Learn,
/// "`ChangeServiceConfig2W`", `SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO`; the handle needs
/// `SERVICE_CHANGE_CONFIG`).
fn restrict_privileges(service: &windows_service::service::Service) -> Result<()> {
    let mut names = crate::install_location::multi_sz(REQUIRED_PRIVILEGES);
    let info = SERVICE_REQUIRED_PRIVILEGES_INFOW {
        pmszRequiredPrivileges: names.as_mut_ptr(),
    };
    // SAFETY: the handle is open with SERVICE_CHANGE_CONFIG; `info` points to a
    // double-NUL-terminated multi-string that outlives the call.
    let ok = unsafe {
        ChangeServiceConfig2W(
            service.raw_handle(),
            SERVICE_CONFIG_REQUIRED_PRIVILEGES_INFO,
            (&raw const info).cast(),
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot restrict the service's privileges");
    }
    Ok(())
}

/// Creates the service and starts it.
///
/// Automatic start, `LocalSystem` restricted to [`REQUIRED_PRIVILEGES`], no dependency on
/// the driver so that the driver can be stopped and updated while it runs. A service that cannot be restricted is deleted
/// again rather than run with every privilege.
///
/// # Errors
/// The service manager refused (not elevated, the service exists).
pub fn install(exe: &Path, jsonl: Option<&Path>, still_held_after: u64) -> Result<bool> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("cannot open the service control manager (run as Administrator)")?;
    let mut arguments: Vec<OsString> = ["service", "run", "--scm", "--still-held-after"]
        .iter()
        .map(OsString::from)
        .collect();
    arguments.push(OsString::from(still_held_after.to_string()));
    if let Some(file) = jsonl {
        arguments.push(OsString::from("--jsonl"));
        arguments.push(file.as_os_str().to_owned());
    }
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from("hivetrack event service"),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_path_buf(),
        launch_arguments: arguments,
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::DELETE,
        )
        .with_context(|| {
            format!("cannot create service {SERVICE_NAME} (already installed? `hivetrack service uninstall` first)")
        })?;
    service
        .set_description(
            "Writes every failed registry hive unload, with the processes holding the hive, to the Application log (source hivetrack) beside event 1530.",
        )
        .context("cannot set the service description")?;
    // Wine's service manager does not implement this level (ERROR_INVALID_LEVEL): only there
    // is the service left unrestricted, and `install` says so.
    let restricted = match restrict_privileges(&service) {
        Ok(()) => true,
        Err(_) if crate::windows_install::under_wine() => false,
        Err(e) => {
            let _ = service.delete();
            return Err(e);
        }
    };
    service
        .start::<&OsStr>(&[])
        .with_context(|| format!("created service {SERVICE_NAME}, but it did not start"))?;
    Ok(restricted)
}

/// Stops (if running) and deletes the service.
///
/// # Errors
/// The service manager refused (not elevated, no such service).
pub fn uninstall() -> Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("cannot open the service control manager (run as Administrator)")?;
    let service = manager
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .with_context(|| format!("cannot open service {SERVICE_NAME} (is it installed?)"))?;
    let status = service.query_status().ok();
    if status
        .as_ref()
        .is_some_and(|s| s.current_state != ServiceState::Stopped)
    {
        // The service's process, opened while it runs (its id cannot be reused while the
        // handle is open): STOPPED is reported before the process exits, and while it runs
        // its hivetrack.exe is in use, so `uninstall` could only schedule the copy's removal
        // at the next restart (review 21b, L7).
        let process = status.and_then(|s| s.process_id).map(ServiceProcess::open);
        let _ = service.stop();
        // `ControlService(STOP)` only asks; Learn, `DeleteService`: the entry is removed once
        // the service is not running and every handle to it is closed. Wait (up to 30 s) for
        // it to stop, so that the service is gone when `uninstall` returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while service
            .query_status()
            .is_ok_and(|s| s.current_state != ServiceState::Stopped)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Some(p) = process {
            p.wait_until(deadline);
        }
    }
    service
        .delete()
        .with_context(|| format!("cannot delete service {SERVICE_NAME}"))
}

/// A handle to the service's process (`SYNCHRONIZE`), or none when it cannot be opened.
struct ServiceProcess(windows_sys::Win32::Foundation::HANDLE);

impl ServiceProcess {
    /// Opens process `pid` to wait for its exit.
    fn open(pid: u32) -> Self {
        use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_SYNCHRONIZE};
        // SAFETY: plain call; a null handle (failure) is kept and never waited on.
        Self(unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) })
    }

    /// Waits until the process exits or `deadline` passes.
    fn wait_until(&self, deadline: std::time::Instant) {
        use windows_sys::Win32::System::Threading::WaitForSingleObject;
        if self.0.is_null() {
            return;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: `self.0` is an open process handle with SYNCHRONIZE access.
        let _ = unsafe { WaitForSingleObject(self.0, ms) };
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: `self.0` is an open handle this value owns, closed once.
            let _ = unsafe { windows_sys::Win32::Foundation::CloseHandle(self.0) };
        }
    }
}

/// The options the service main runs with (parsed from the command line the service was
/// registered with, before the dispatcher takes the thread).
static OPTIONS: OnceLock<(ServiceOptions, Option<String>)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Hands the process to the service control manager; returns when the service stopped.
///
/// # Errors
/// Not started by the service control manager (`service run` without `--scm` is the
/// console form).
pub fn dispatch(opts: ServiceOptions, jsonl: Option<String>) -> Result<()> {
    let _ = OPTIONS.set((opts, jsonl));
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).context(
        "not started by the service control manager: use `hivetrack service run` (without --scm) in a console",
    )
}

/// The device handle of the current connection, for `CancelIoEx` from the control handler.
type Slot = Arc<Mutex<Option<usize>>>;

/// The driver's device, its handle published in a [`Slot`] while open.
struct Cancellable {
    inner: DeviceTransport,
    slot: Slot,
}

impl Transport for Cancellable {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        self.inner.ioctl(code, input, output)
    }
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        self.inner.kernel_open_keys(hive)
    }
    fn process_image(&mut self, pid: u64) -> Option<String> {
        self.inner.process_image(pid)
    }
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        // Unpublished before `inner` closes the handle: the control handler never cancels
        // on a closed (or reused) handle value.
        if let Ok(mut h) = self.slot.lock() {
            *h = None;
        }
    }
}

fn cancel(slot: &Slot) {
    if let Ok(h) = slot.lock()
        && let Some(handle) = *h
    {
        // SAFETY: the handle is open while it is in the slot (the lock keeps it so); a null
        // OVERLAPPED cancels every request of this process on it.
        unsafe { CancelIoEx(handle as _, std::ptr::null()) };
    }
}

/// The service's exit code: 0, or service-specific 1 when the loop could not run (the
/// Event Log source or the `--jsonl` file could not be opened).
const fn status(state: ServiceState, accept: ServiceControlAccept, code: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code: if code == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(code)
        },
        checkpoint: 0,
        wait_hint: Duration::from_secs(15),
        process_id: None,
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let (opts, jsonl) = OPTIONS.get().cloned().unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let slot: Slot = Arc::new(Mutex::new(None));
    let (stop_h, slot_h) = (Arc::clone(&stop), Arc::clone(&slot));
    let Ok(handle) =
        service_control_handler::register(SERVICE_NAME, move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                stop_h.store(true, Ordering::SeqCst);
                cancel(&slot_h);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        })
    else {
        return;
    };
    let _ = handle.set_service_status(status(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        0,
    ));
    let code = run_loop(opts, jsonl.as_deref(), &stop, &slot).map_or(1, |()| 0);
    let _ = handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        code,
    ));
}

fn run_loop(
    opts: ServiceOptions,
    jsonl: Option<&str>,
    stop: &AtomicBool,
    slot: &Slot,
) -> Result<()> {
    let mut sinks = Sinks::default();
    sinks
        .0
        .push(Box::new(crate::windows_event_log::EventLogSink::open()?) as Box<dyn EventSink>);
    if let Some(target) = jsonl {
        sinks.0.push(jsonl_sink(target)?);
    }
    let mut connect = || -> Result<Box<dyn Transport>, TransportError> {
        let inner = DeviceTransport::open()?;
        if let Ok(mut h) = slot.lock() {
            *h = Some(inner.raw_handle() as usize);
        }
        Ok(Box::new(Cancellable {
            inner,
            slot: Arc::clone(slot),
        }))
    };
    let accounts = crate::accounts::system();
    let identities = crate::holder_identity::system();
    let mut clock = crate::wait::SystemClock::start();
    let keep_going = || !stop.load(Ordering::SeqCst);
    let mut env = ServiceEnv {
        connect: &mut connect,
        sink: &mut sinks,
        accounts: accounts.as_ref(),
        identities: identities.as_ref(),
        clock: &mut clock,
        started_at: event_service::filetime_now(),
        wall: Some(&event_service::filetime_now),
        interrupt: Some(&event_service::interrupt_time_now),
        keep_going: &keep_going,
    };
    event_service::run(opts, &mut env).map(|_| ())
}
