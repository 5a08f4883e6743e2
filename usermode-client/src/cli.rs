//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::backend::BackendChoice;

/// Exit codes, as `--help` shows them.
const EXIT_CODES: &str = "Exit codes: 0 ok; 1 holders found (with --fail-if-held) or the wait \
timed out; 2 driver unavailable (not installed, not running, access denied, other protocol \
version, backend not in this build); 3 bad arguments (including a hive the driver does not \
know); 4 the report is incomplete: with --strict, or with --fail-if-held or wait when nothing \
held was seen but keys the report could not see may hold the hive.";

/// hivetrack: who holds this registry hive open, which keys, since when, and from where.
#[derive(Debug, Parser)]
#[command(name = "hivetrack", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Default, Args)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches, as clap parses them"
)]
pub struct Global {
    /// Print JSON (schema: usermode-client/README.md, `hivetrack.<report>/1`).
    #[arg(long, global = true, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header row (the backend and completeness go to stderr).
    #[arg(long, global = true)]
    pub csv: bool,
    /// Do not resolve user SIDs to account names, nor holders' sessions, users and services
    /// (Windows).
    #[arg(long, global = true)]
    pub no_resolve: bool,
    /// Exit with 4 when the report is incomplete: records dropped, keys open before tracking
    /// started or only in the kernel's list, the kernel's list or tracking not available,
    /// anything else the report says it could not see (the `INCOMPLETE:` line; exit codes
    /// below).
    #[arg(long, global = true)]
    pub strict: bool,
    /// Which backend answers: the driver, or for `holders` and `wait` the driverless
    /// `NtQueryOpenSubKeysEx` fallback (pid and key only) when the driver is not installed.
    #[arg(long, global = true, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Run against the real hivetrack.sys inside the kernel emulator with this scenario
    /// (Linux demo; not available in this build: the command says so and exits 2).
    /// The Windows build has no such option: an administrator's `--help` does not show it.
    #[cfg(not(windows))]
    #[arg(long, global = true, value_name = "SCENARIO")]
    pub emulator: Option<String>,
}

impl Global {
    /// The `--emulator` scenario; always `None` in the Windows build, which has no emulator
    /// option.
    #[must_use]
    #[cfg_attr(
        windows,
        allow(
            clippy::missing_const_for_fn,
            reason = "const only in the Windows build, where it is always None"
        )
    )]
    pub fn emulator(&self) -> Option<&str> {
        #[cfg(not(windows))]
        {
            self.emulator.as_deref()
        }
        #[cfg(windows)]
        {
            None
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Who holds keys open in a hive: per process, each key in event 1530's words, with
    /// counts and open age.
    ///
    /// HIVE: HKU\<SID>, HKU\<SID>_Classes, HKCU, HKCU\Software\Classes (Windows: the
    /// current user), HKLM\SOFTWARE, HKLM\SYSTEM and the other machine hives, or a
    /// \REGISTRY\... path; case-insensitive; a key below a hive names that hive.
    Holders {
        /// The hive.
        hive: String,
        /// Exit with 1 when any process holds keys in the hive.
        #[arg(long)]
        fail_if_held: bool,
        /// Per-process summaries only, without the keys.
        #[arg(long)]
        summary: bool,
        /// After each key, the user-mode stack it was opened from, as `module+0xOFFSET`
        /// lines, innermost first (`module!function+0xOFF` where `DbgHelp` finds symbols, on
        /// Windows). Needs a driver with stack capture, turned on with `hivetrack capture on`
        /// before the keys were opened.
        #[arg(long, conflicts_with = "summary")]
        stacks: bool,
        /// JSON: leave out the list of every key object (`keys`) and keep them grouped by
        /// name with their counts (`key_counts`); every other field, the completeness and
        /// the verdict stay as they are. For a process holding thousands of keys (a leak of
        /// 65,602 key objects is 45.7 MB of JSON with the list). The table is always grouped;
        /// CSV has one row per key object and refuses it (exit 3).
        #[arg(long, conflicts_with_all = ["summary", "stacks"])]
        grouped: bool,
        /// List only this process's keys (as their opener): the hive's counts, the verdict
        /// and `--fail-if-held` stay the whole hive's.
        #[arg(long, value_name = "PID")]
        pid: Option<u64>,
    },
    /// Open-time stack capture: which code opens keys. Off until turned on; keys opened
    /// while it is on carry their stack (`holders --stacks`, `modules`).
    Capture {
        /// What to do.
        #[command(subcommand)]
        action: CaptureAction,
    },
    /// Rank the modules that opened the keys still held in a hive (or in every hive): each
    /// held key with a stack is attributed to its first frame outside the OS registry
    /// plumbing (ntdll, kernelbase, kernel32, advapi32, ...). The list to hand to a vendor.
    Modules {
        /// The hive (same forms as `holders`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        hive: Option<String>,
        /// Every hive the driver knows.
        #[arg(long)]
        all: bool,
    },
    /// Every hive the driver knows, with its open keys and holders.
    Hives,
    /// Processes ranked by open keys (most first).
    Processes {
        /// Show only the first N.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Also ask the kernel's list of open keys (`NtQueryOpenSubKeysEx`) of every loaded
        /// hive, and list per process the keys the driver has no record of (opened before
        /// tracking started): one holders query per hive. Table and JSON only (CSV has one
        /// row shape, the tracked processes).
        #[arg(long)]
        kernel: bool,
    },
    /// The driver's counters, with every completeness (loss) counter.
    Stats,
    /// Write every tracked key object, per process, to a JSON file for `diff`.
    Snapshot {
        /// The file to write (schema `hivetrack.snapshot/1`).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Compare two snapshot files: open objects per process and key, largest growth first.
    Diff {
        /// The earlier snapshot.
        a: PathBuf,
        /// The later snapshot.
        b: PathBuf,
    },
    /// Wait until no process holds keys in a hive (exit 0), or the timeout passes (exit 1;
    /// exit 4 when nothing was seen open but the answer could not prove the hive free, e.g.
    /// a `<X>_Classes` hive while `HKU\<X>` is loaded).
    ///
    /// With a driver that has it, one wait-free request: the driver completes it the moment
    /// the hive is free (no polling). Otherwise (an older driver, live tracking off, the
    /// driverless fallback) the holders query is polled every --interval-ms.
    ///
    /// "Free" is true of one moment: a key opened after it, or one whose open was still under
    /// way in the kernel as the driver answered, is not ruled out (the kernel's list, asked
    /// after the driver's answer, has the latter where it can be asked). Only the unload
    /// itself tests and acts at once.
    Wait {
        /// The hive (same forms as `holders`).
        hive: String,
        /// Give up after this many seconds.
        #[arg(long, value_name = "S", default_value_t = 60.0)]
        timeout: f64,
        /// Poll interval in milliseconds, when the driver cannot wait itself.
        #[arg(long, value_name = "MS", default_value_t = 500)]
        interval_ms: u64,
    },
    /// Recent hive unload attempts, each with the processes that held the hive then.
    UnloadHistory,
    /// Answer from a Process Monitor capture (PML or CSV export) instead of the driver: who
    /// held which keys at each hive unload attempt, which keys each exiting process still
    /// held, and what is open at the end (or at --at). JSON schema `hivetrack.analysis/1`.
    Analyze {
        /// The capture: a .PML file or a CSV export (read by content, not by extension).
        capture: PathBuf,
        /// Which report: everything, or the holders/processes/modules view at the end.
        #[arg(long, value_enum, default_value_t = AnalyzeView::Report)]
        view: AnalyzeView,
        /// The SID Procmon's `HKCU` stands for: `SID` of the account that ran Procmon (for
        /// every process's rows, services' included: Procmon shows that account's hive as
        /// `HKCU`), or `DOMAIN\user=SID` to place one user's rows (repeatable).
        #[arg(long, value_name = "[USER=]SID")]
        hkcu_sid: Vec<String>,
        /// Only this hive (HKU\<SID>, HKCU, HKLM\SOFTWARE, \REGISTRY\...).
        #[arg(long)]
        hive: Option<String>,
        /// Only this process id.
        #[arg(long)]
        pid: Option<u32>,
        /// Stop after this row number, or at this time of day (`7:27:31.5 AM`).
        #[arg(long, value_name = "ROW|TIME")]
        at: Option<String>,
        /// Exit with 1 when keys are held at the chosen point, with 4 when none are seen but
        /// the analysis is not complete (keys opened before the capture, events left out of
        /// it, HKCU keys without --hkcu-sid, no holders named), 0 only when free and complete.
        #[arg(long)]
        fail_if_held: bool,
        /// The capture began at boot (Procmon: Options > Enable Boot Logging), so it saw every
        /// open. Without it keys opened before the capture's first row and never closed in it
        /// are in no row, and no answer is complete. It vouches for the start only: that no
        /// event was left out needs `--all-events` too (no capture can show it: a PML has no
        /// event numbers, and a filtered export may be numbered without gaps); gaps in a CSV
        /// export's Sequence numbers always make it incomplete. Of a boot log Procmon split
        /// over several files (`Bootlog-1.pml`, ...), only the first began at boot.
        #[arg(long)]
        from_boot: bool,
        /// The capture holds every event (File > Save: All events; Procmon's boot-log
        /// conversion writes all): no capture can show it, so `--from-boot` needs it for a
        /// complete answer. The answer is then only as complete as this is true, and says it
        /// rests on it; gaps the Sequence numbers do show still make it incomplete.
        #[arg(long)]
        all_events: bool,
    },
    /// The event service: every failed hive unload, with its holders, in the Windows Event
    /// Log beside event 1530 (source hivetrack, Application log), or as JSON lines.
    #[command(subcommand)]
    Service(crate::service_command::ServiceCommand),
    /// The driver as a kernel service for Windows Server 2016/2019, where the driver package
    /// (Windows 10 1903+) does not install: `driver install --legacy hivetrack.sys`,
    /// `driver uninstall --legacy`.
    #[command(subcommand)]
    Driver(crate::driver_command::DriverCommand),
    /// Print the client's version and the driver's version and build.
    Version,
    /// Send one raw control code to the driver and print the answer in hex (diagnostics and
    /// tests of the driver's validation; not part of the stable interface).
    #[command(hide = true)]
    RawIoctl {
        /// The control code, decimal or 0x-prefixed hex.
        #[arg(long, value_parser = parse_u32)]
        code: u32,
        /// Input bytes, as hex digits.
        #[arg(long, default_value = "", value_parser = parse_hex)]
        input: HexBytes,
        /// Size of the output buffer.
        #[arg(long, default_value_t = 4096)]
        output_len: usize,
    },
}

/// What `hivetrack capture` does.
#[derive(Debug, Subcommand)]
pub enum CaptureAction {
    /// Show the capture scope.
    Status,
    /// Capture the stack of every tracked open (no option), of opens in one hive, of opens
    /// by processes of one image, or of opens by one process.
    On {
        /// Only opens of keys in this hive (same forms as `holders`).
        #[arg(long, conflicts_with_all = ["image", "pid"])]
        hive: Option<String>,
        /// Only opens by processes whose image file name is this (`explorer.exe`).
        #[arg(long, value_name = "NAME", conflicts_with = "pid")]
        image: Option<String>,
        /// Only opens by this process id (one service among many `svchost.exe`; a later
        /// process that reuses the id is captured too).
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
        pid: Option<u32>,
    },
    /// Stop capturing (stacks already stored stay with their keys).
    Off,
}

/// The views of `analyze`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AnalyzeView {
    /// Unload attempts, exits with leaks, what is open, and what the capture cannot show.
    #[default]
    Report,
    /// Per hive, the processes holding keys and the keys.
    Holders,
    /// Processes ranked by keys held.
    Processes,
    /// The modules that opened the keys still held (PML stacks).
    Modules,
}

/// Bytes given on the command line as hex digits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

/// Parses a decimal or `0x`-prefixed hexadecimal `u32`.
///
/// # Errors
/// A message clap shows when the text is not such a number.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .map_or_else(|| s.parse(), |hex| u32::from_str_radix(hex, 16));
    parsed.map_err(|e| format!("`{s}` is not a 32-bit number: {e}"))
}

/// Parses hex digits (whitespace allowed between bytes) into bytes.
///
/// # Errors
/// A message clap shows for an odd digit count or a non-hex character.
pub fn parse_hex(s: &str) -> Result<HexBytes, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("hex input needs an even number of digits".to_owned());
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{}` is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(HexBytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_hex_parse() {
        assert_eq!(parse_u32("0x8A546000"), Ok(0x8A54_6000));
        assert_eq!(parse_u32("17"), Ok(17));
        assert!(parse_u32("0xZZ").is_err());
        assert_eq!(parse_hex("01 ff"), Ok(HexBytes(vec![1, 0xFF])));
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn commands_and_options_parse() {
        let cli = Cli::try_parse_from([
            "hivetrack",
            "holders",
            r"HKU\S-1-5-21-1-2-3-1001",
            "--fail-if-held",
            "--json",
            "--strict",
        ])
        .unwrap();
        assert!(cli.global.json && cli.global.strict && !cli.global.csv);
        assert!(matches!(
            cli.command,
            Command::Holders { fail_if_held: true, summary: false, ref hive, .. } if hive == r"HKU\S-1-5-21-1-2-3-1001"
        ));
        let cli = Cli::try_parse_from(["hivetrack", "--csv", "processes", "--top", "5"]).unwrap();
        assert!(cli.global.csv);
        assert!(matches!(
            cli.command,
            Command::Processes { top: Some(5), .. }
        ));
        let cli = Cli::try_parse_from(["hivetrack", "snapshot", "-o", "a.json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Snapshot { ref output } if output.as_os_str() == "a.json")
        );
        let cli = Cli::try_parse_from(["hivetrack", "diff", "a.json", "b.json"]).unwrap();
        assert!(matches!(cli.command, Command::Diff { .. }));
        let cli = Cli::try_parse_from(["hivetrack", "wait", "HKCU", "--timeout", "2.5"]).unwrap();
        assert!(
            matches!(cli.command, Command::Wait { timeout, interval_ms: 500, .. } if (timeout - 2.5).abs() < 1e-9)
        );
        let with_emulator = Cli::try_parse_from([
            "hivetrack",
            "--backend",
            "ntquery",
            "--emulator",
            "logoff",
            "--no-resolve",
            "hives",
        ]);
        // The Windows build has no --emulator option at all.
        #[cfg(windows)]
        assert!(with_emulator.is_err());
        #[cfg(not(windows))]
        {
            let cli = with_emulator.unwrap();
            assert_eq!(cli.global.backend, BackendChoice::Ntquery);
            assert_eq!(cli.global.emulator(), Some("logoff"));
            assert!(cli.global.no_resolve);
        }
        for cmd in ["stats", "unload-history", "version", "hives"] {
            Cli::try_parse_from(["hivetrack", cmd]).unwrap();
        }
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        for argv in [
            &["hivetrack", "holders"][..],
            &["hivetrack", "--json", "--csv", "hives"],
            &["hivetrack", "processes", "--top", "many"],
            &["hivetrack", "snapshot"],
            &["hivetrack", "diff", "a.json"],
            &["hivetrack", "wait", "HKCU", "--timeout", "soon"],
            &["hivetrack", "--backend", "telepathy", "hives"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert!(err.use_stderr(), "{argv:?}");
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let err = Cli::try_parse_from(["hivetrack", "raw-ioctl", "--code", "nope"]).unwrap_err();
        assert!(err.use_stderr());
        let err = Cli::try_parse_from(["hivetrack", "frobnicate"]).unwrap_err();
        assert!(err.use_stderr());
    }
}
