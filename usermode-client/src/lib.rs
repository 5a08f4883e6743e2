//! The `hivetrack` command-line client: argument parsing, commands and their output.
//!
//! Everything but the operating-system backend lives here so that it is tested on any host
//! with a scripted [`transport::Transport`].

pub mod access;
pub mod accounts;
pub mod analyze;
pub mod app;
pub mod backend;
pub mod capture;
pub mod classes_link;
pub mod cli;
pub mod client;
pub mod commands;
pub mod coverage;
pub mod dll_search;
pub mod driver_command;
#[cfg(all(feature = "emulator", target_os = "linux", target_arch = "x86_64"))]
pub mod emulator;
pub mod event_service;
pub mod event_sink;
pub mod event_stream;
pub mod fallback;
pub mod fleet_event;
pub mod hive_name;
pub mod holder_identity;
pub mod holder_now;
pub mod install_location;
pub mod kernel_list;
pub mod legacy_driver;
pub mod model;
pub mod modules;
pub mod page_server;
pub mod render;
pub mod render_stacks;
pub mod scripted;
pub mod scripted_events;
pub mod service_command;
pub mod stacks;
pub mod symbols;
pub mod transport;
pub mod wait;
#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
pub mod windows_accounts;
#[cfg(windows)]
pub mod windows_event_log;
#[cfg(windows)]
pub mod windows_fallback;
#[cfg(windows)]
pub mod windows_handles;
#[cfg(windows)]
pub mod windows_identity;
#[cfg(windows)]
pub mod windows_install;
pub mod windows_interrupt_time;
#[cfg(windows)]
pub mod windows_legacy_driver;
#[cfg(windows)]
pub mod windows_registry;
#[cfg(windows)]
pub mod windows_service_host;
#[cfg(windows)]
pub mod windows_symbols;

/// Process exit codes, part of the CLI's scripting contract.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Holders were found and `--fail-if-held` was given.
    pub const HELD: u8 = 1;
    /// The driver is not installed, not running, or not reachable.
    pub const DRIVER_UNAVAILABLE: u8 = 2;
    /// The command line is invalid.
    pub const BAD_ARGUMENTS: u8 = 3;
    /// The report is incomplete and `--strict` was given, or a verdict was asked
    /// (`--fail-if-held`, `wait`) and nothing held was seen but the report could not see
    /// everything.
    pub const INCOMPLETE: u8 = 4;
    /// `driver uninstall --legacy`: the driver did not stop, so its service is only marked for
    /// deletion and the driver stays loaded (and tracking) until its last handle closes or the
    /// next restart.
    pub const STILL_LOADED: u8 = 5;
}
