//! The Windows Event Log as an [`EventSink`], and the event source's registration.
//!
//! A classic event source (`RegisterEventSourceW`, `ReportEventW`) named `hivetrack` in the
//! Application log, registered under (`HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\hivetrack`:
//! `EventMessageFile`, `TypesSupported`).
//!
//! Each event is reported with its Event ID (the message table's id: no severity or facility
//! bits), its level as the event type, no category, and
//! [`FleetEvent::insertion_strings`] as its strings: the `EventData` of the event, in the
//! documented order. Never run on Windows by the project's tests.

use std::path::Path;
use std::ptr;

use anyhow::{Result, bail};
use windows_sys::Win32::{
    Foundation::{ERROR_FILE_NOT_FOUND, HANDLE},
    System::{
        EventLog::{
            DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE,
            EVENTLOG_WARNING_TYPE, RegisterEventSourceW, ReportEventW,
        },
        Registry::{HKEY_LOCAL_MACHINE, REG_EXPAND_SZ, RegDeleteTreeW},
    },
};

use crate::event_sink::EventSink;
use crate::fleet_event::{FleetEvent, Level};
use crate::service_command::EVENT_SOURCE;
use crate::windows_registry::{Key, check, wide};

/// The source's registry key under `HKLM`.
pub const SOURCE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application\hivetrack";

/// A registered event source handle.
pub struct EventLogSink {
    handle: HANDLE,
}

impl EventLogSink {
    /// `RegisterEventSourceW(NULL, "hivetrack")`. Works before `service install` too: the
    /// events are then shown without their message text (the strings are all there).
    ///
    /// # Errors
    /// The Event Log service refused.
    pub fn open() -> Result<Self> {
        let name = wide(EVENT_SOURCE);
        // SAFETY: local computer (null); `name` is NUL-terminated and outlives the call.
        let handle = unsafe { RegisterEventSourceW(ptr::null(), name.as_ptr()) };
        if handle.is_null() {
            bail!(
                "cannot open the Event Log source {EVENT_SOURCE}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { handle })
    }
}

impl EventSink for EventLogSink {
    fn emit(&mut self, event: &FleetEvent) -> Result<()> {
        let strings: Vec<Vec<u16>> = event.insertion_strings().iter().map(|s| wide(s)).collect();
        let pointers: Vec<*const u16> = strings.iter().map(Vec::as_ptr).collect();
        let count = u16::try_from(pointers.len())?;
        let kind = match event.level {
            Level::Information => EVENTLOG_INFORMATION_TYPE,
            Level::Warning => EVENTLOG_WARNING_TYPE,
        };
        // SAFETY: the handle is open for the life of `self`; `pointers` holds `count`
        // pointers to NUL-terminated strings that outlive the call; no SID, no binary data.
        let ok = unsafe {
            ReportEventW(
                self.handle,
                kind,
                0,
                event.event_id.number(),
                ptr::null_mut(),
                count,
                0,
                pointers.as_ptr(),
                ptr::null(),
            )
        };
        if ok == 0 {
            bail!(
                "ReportEventW refused event {}: {}",
                event.event_id.number(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for EventLogSink {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once, here.
        unsafe { DeregisterEventSource(self.handle) };
    }
}

/// Registers the source: `EventMessageFile` = `dll` (`REG_EXPAND_SZ`), `TypesSupported` =
/// error, warning and information (7).
///
/// # Errors
/// The registry refused (not elevated).
pub fn register_source(dll: &Path) -> Result<()> {
    let key = Key::create_hklm(SOURCE_KEY)?;
    key.set_string(
        "EventMessageFile",
        REG_EXPAND_SZ,
        &dll.display().to_string(),
    )?;
    key.set_dword(
        "TypesSupported",
        u32::from(EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE),
    )
}

/// Removes the source's registration (a source that is not registered is not an error).
///
/// # Errors
/// The registry refused (not elevated).
pub fn unregister_source() -> Result<()> {
    let path = wide(SOURCE_KEY);
    // SAFETY: `path` is NUL-terminated; HKLM is a predefined key.
    let status = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, path.as_ptr()) };
    if status == ERROR_FILE_NOT_FOUND {
        return Ok(());
    }
    check(status, &format!(r"cannot delete HKLM\{SOURCE_KEY}"))
}
