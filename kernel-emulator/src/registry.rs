//! Configuration manager callbacks: CmRegisterCallbackEx / CmUnRegisterCallback with altitudes
//! and cookies. A callback still registered at unload is reported (bugcheck 0xCE on
//! Windows: the kernel would call into unloaded code).
//!
//! Not yet modelled (see README.md): hives, keys, key objects and handles, the pre/post
//! notification structures, object contexts and their cleanup.

use std::ffi::c_void;

use crate::bugcheck::require_irql;
use crate::cpu::PASSIVE_LEVEL;
use crate::exports::Export;
use crate::kernel;
use crate::layout::{ExCallbackFn, UnicodeString, read_unicode};
use crate::status::{
    NtStatus, STATUS_FLT_INSTANCE_ALTITUDE_COLLISION, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_PARAMETER, STATUS_INVALID_PARAMETER_3, STATUS_INVALID_PARAMETER_6,
    STATUS_SUCCESS,
};

/// One registered callback.
#[derive(Debug, Clone)]
pub struct Callback {
    /// Cookie handed back to the driver.
    pub cookie: i64,
    /// Function.
    pub function: usize,
    /// Context.
    pub context: usize,
    /// Altitude string.
    pub altitude: String,
}

/// Registry state.
#[derive(Debug, Default)]
pub struct RegistryState {
    /// Registered callbacks in registration order.
    pub callbacks: Vec<Callback>,
    next_cookie: i64,
}

impl RegistryState {
    /// Callbacks left registered, as leak lines.
    #[must_use]
    pub fn leaks(&self) -> Vec<String> {
        self.callbacks
            .iter()
            .map(|c| {
                format!(
                    "registry callback cookie {:#x} (altitude {}) still registered: Windows would call into unloaded code (bugcheck 0xCE)",
                    c.cookie, c.altitude
                )
            })
            .collect()
    }
}

/// CmRegisterCallbackEx — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmregistercallbackex>:
/// Driver must be the DRIVER_OBJECT (NULL: STATUS_INVALID_PARAMETER_3), Reserved must be NULL,
/// one callback per altitude (STATUS_FLT_INSTANCE_ALTITUDE_COLLISION). PASSIVE_LEVEL.
unsafe extern "win64" fn CmRegisterCallbackEx(
    function: Option<ExCallbackFn>,
    altitude: *const UnicodeString,
    driver: *mut c_void,
    context: *mut c_void,
    cookie: *mut i64,
    reserved: *mut c_void,
) -> NtStatus {
    require_irql("CmRegisterCallbackEx", PASSIVE_LEVEL);
    // SAFETY: the driver passes a UNICODE_STRING (validated by read_unicode).
    let (Some(f), Some(alt)) = (function, unsafe { read_unicode(altitude) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if driver.is_null() {
        return STATUS_INVALID_PARAMETER_3;
    }
    if !reserved.is_null() {
        return STATUS_INVALID_PARAMETER_6;
    }
    if cookie.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if kernel::should_fail("CmRegisterCallbackEx", false) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let result = kernel::with(|k| {
        let r = &mut k.registry;
        if r.callbacks.iter().any(|c| c.altitude == alt) {
            return Err(STATUS_FLT_INSTANCE_ALTITUDE_COLLISION);
        }
        r.next_cookie += 1;
        let c = 0x01DA_0000_0000_0000 + r.next_cookie * 0x10;
        r.callbacks.push(Callback {
            cookie: c,
            function: f as usize,
            context: context as usize,
            altitude: alt,
        });
        Ok(c)
    });
    match result {
        Ok(c) => {
            // SAFETY: checked non-null; the driver passes a writable LARGE_INTEGER.
            unsafe { cookie.write_unaligned(c) };
            STATUS_SUCCESS
        }
        Err(s) => s,
    }
}

/// CmUnRegisterCallback — <https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-cmunregistercallback>:
/// an unknown cookie is STATUS_INVALID_PARAMETER. PASSIVE_LEVEL.
unsafe extern "win64" fn CmUnRegisterCallback(cookie: i64) -> NtStatus {
    require_irql("CmUnRegisterCallback", PASSIVE_LEVEL);
    kernel::with(|k| {
        let cbs = &mut k.registry.callbacks;
        cbs.iter()
            .position(|c| c.cookie == cookie)
            .map_or(STATUS_INVALID_PARAMETER, |i| {
                cbs.remove(i);
                STATUS_SUCCESS
            })
    })
}

/// The configuration manager routines.
pub(crate) fn exports() -> Vec<Export> {
    vec![
        Export::function(
            "CmRegisterCallbackEx",
            CmRegisterCallbackEx as *const () as usize,
        ),
        Export::function(
            "CmUnRegisterCallback",
            CmUnRegisterCallback as *const () as usize,
        ),
    ]
}
