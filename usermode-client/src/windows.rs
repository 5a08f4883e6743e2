//! The Windows backend: `CreateFileW(\\.\HiveTrack)` and `DeviceIoControl`.

use std::{io, os::windows::ffi::OsStrExt};

use protocol::ioctl::WIN32_DEVICE_PATH;
use windows_sys::Win32::{
    Foundation::{
        CloseHandle, ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, GENERIC_READ,
        HANDLE, INVALID_HANDLE_VALUE,
    },
    Storage::FileSystem::{CreateFileW, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING},
    System::IO::DeviceIoControl,
};

use crate::transport::{Transport, TransportError, WaitFreeOutcome, driver_wait_free};

/// An open handle to the driver's control device.
pub struct DeviceTransport {
    handle: HANDLE,
    /// `NtQueryOpenSubKeysEx`, resolved on first use (`None` before; `Some(Err)` when ntdll
    /// lacks it).
    kernel: Option<Result<crate::windows_fallback::NtQuerySource, String>>,
    /// The system handle table source, made on first use.
    handles: Option<Result<crate::windows_handles::HandleSource, String>>,
}

impl DeviceTransport {
    /// Opens `\\.\HiveTrack` for reading (every query IOCTL requires read access).
    ///
    /// # Errors
    /// [`TransportError::DriverUnavailable`] when the device does not exist,
    /// [`TransportError::AccessDenied`] when this user may not open it.
    pub fn open() -> Result<Self, TransportError> {
        let path: Vec<u16> = std::ffi::OsStr::new(WIN32_DEVICE_PATH)
            .encode_wide()
            .chain(std::iter::once(0))
            .collect();
        // SAFETY: `path` is a NUL-terminated UTF-16 string that outlives the call; the other
        // arguments are plain values or null pointers the API documents as optional.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                std::ptr::null(),
                OPEN_EXISTING,
                0,
                std::ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error().map(i32::cast_unsigned) {
                Some(ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND) => {
                    TransportError::DriverUnavailable
                }
                Some(ERROR_ACCESS_DENIED) => TransportError::AccessDenied,
                _ => TransportError::Os(err),
            });
        }
        Ok(Self {
            handle,
            kernel: None,
            handles: None,
        })
    }

    /// The device handle, for `CancelIoEx` from another thread (the event service's stop).
    #[must_use]
    pub const fn raw_handle(&self) -> HANDLE {
        self.handle
    }
}

/// How an image path is written: the native `\Device\…` form (as the driver reports
/// images) or the Win32 `C:\…` form.
#[derive(Clone, Copy)]
pub(crate) enum ImageForm {
    /// `PROCESS_NAME_NATIVE`.
    Native,
    /// `PROCESS_NAME_WIN32`.
    Win32,
}

/// `QueryFullProcessImageNameW` of live process `pid`, opening it for
/// `PROCESS_QUERY_LIMITED_INFORMATION` (which Administrators get for all but protected
/// processes); `None` when it cannot be opened (gone, protected).
pub(crate) fn image_of(pid: u64, form: ImageForm) -> Option<String> {
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_NAME_NATIVE, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
        QueryFullProcessImageNameW,
    };
    let pid = u32::try_from(pid).ok()?;
    // SAFETY: plain values; a null handle is checked below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return None;
    }
    let flags = match form {
        ImageForm::Native => PROCESS_NAME_NATIVE,
        ImageForm::Win32 => PROCESS_NAME_WIN32,
    };
    let mut buf = vec![0u16; 32 * 1024];
    let mut len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    // SAFETY: `process` is open; `buf` holds `len` writable units; `len` is in/out.
    let ok = unsafe { QueryFullProcessImageNameW(process, flags, buf.as_mut_ptr(), &raw mut len) };
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(process) };
    (ok != 0).then(|| String::from_utf16_lossy(&buf[..len as usize]))
}

/// When the live process `pid` was created (FILETIME): `GetProcessTimes`' creation time,
/// "the creation time of the process" (Learn), through a `PROCESS_QUERY_LIMITED_INFORMATION`
/// handle. `None` when it cannot be opened (gone, or protected beyond that right).
pub(crate) fn started_at(pid: u64) -> Option<u64> {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{
        GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    let pid = u32::try_from(pid).ok()?;
    // SAFETY: plain values; a null handle is checked below.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return None;
    }
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: `process` is open; the four FILETIMEs are writable.
    let ok = unsafe {
        GetProcessTimes(
            process,
            &raw mut created,
            &raw mut exited,
            &raw mut kernel,
            &raw mut user,
        )
    };
    // SAFETY: opened above, closed once.
    unsafe { CloseHandle(process) };
    (ok != 0).then(|| u64::from(created.dwHighDateTime) << 32 | u64::from(created.dwLowDateTime))
}

impl Transport for DeviceTransport {
    fn backend(&self) -> &'static str {
        "driver"
    }

    fn ioctl(
        &mut self,
        code: u32,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, TransportError> {
        let in_len =
            u32::try_from(input.len()).map_err(|_| TransportError::Request { code: 87 })?;
        let out_len =
            u32::try_from(output.len()).map_err(|_| TransportError::Request { code: 87 })?;
        let mut returned = 0u32;
        // SAFETY: the handle is open for the life of `self`; the buffers are valid for the
        // lengths passed; no OVERLAPPED, so the call is synchronous and the buffers are not
        // used after it returns.
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                code,
                input.as_ptr().cast(),
                in_len,
                output.as_mut_ptr().cast(),
                out_len,
                &raw mut returned,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            return Err(TransportError::Request {
                code: err.raw_os_error().unwrap_or(0).cast_unsigned(),
            });
        }
        Ok(returned as usize)
    }

    /// The driver's wait-free IOCTL: the handle is synchronous, so `DeviceIoControl` returns
    /// when the driver completes the request. Ending the process (Ctrl+C) cancels it.
    fn wait_free(
        &mut self,
        hive: &str,
        timeout: std::time::Duration,
    ) -> Option<Result<(WaitFreeOutcome, protocol::completeness::Completeness), TransportError>>
    {
        driver_wait_free(self, hive, timeout)
    }

    /// `NtQueryOpenSubKeysEx` (as the driverless fallback calls it): the keys open in the hive,
    /// those opened before the driver started included.
    fn kernel_open_keys(
        &mut self,
        hive: &str,
    ) -> Option<Result<Vec<(u64, String)>, TransportError>> {
        use crate::fallback::OpenSubKeys;
        let source = self.kernel.get_or_insert_with(|| {
            crate::windows_fallback::NtQuerySource::new().map_err(|e| e.to_string())
        });
        Some(match source {
            Ok(s) => s.open_subkeys(hive),
            Err(why) => Err(TransportError::Os(io::Error::other(why.clone()))),
        })
    }

    fn process_image(&mut self, pid: u64) -> Option<String> {
        image_of(pid, ImageForm::Native)
    }

    fn process_started(&mut self, pid: u64) -> Option<u64> {
        started_at(pid)
    }

    /// The system handle table's key handles of other processes.
    fn foreign_key_handles(&mut self) -> Option<Result<Vec<(u64, u64)>, TransportError>> {
        let source = self
            .handles
            .get_or_insert_with(crate::windows_handles::HandleSource::new);
        Some(match source {
            Ok(s) => s.foreign_key_handles(),
            Err(why) => Err(TransportError::Os(io::Error::other(why.clone()))),
        })
    }

    fn duplicate_handle(&mut self, pid: u64, handle: u64) -> Option<u64> {
        self.handles.as_mut()?.as_mut().ok()?.duplicate(pid, handle)
    }

    fn close_duplicate(&mut self, handle: u64) {
        crate::windows_handles::HandleSource::close(handle);
    }

    fn key_name(&mut self, handle: u64) -> Option<String> {
        self.handles.as_ref()?.as_ref().ok()?.key_name(handle)
    }
}

impl Drop for DeviceTransport {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateFileW and is closed exactly once, here.
        unsafe {
            CloseHandle(self.handle);
        }
    }
}
