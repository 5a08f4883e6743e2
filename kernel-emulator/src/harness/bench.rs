//! `kernel-emulator bench`: prints what the emulator's machinery costs on this machine — an
//! IOCTL round trip, a trapped `mov cr8`, a trapped KUSER_SHARED_DATA load, and a registry
//! open+close through the test driver's callback. Figures only; nothing here asserts a speed.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::loader::driver;
use crate::nt::cm::hive;
use crate::nt::io;
use crate::nt::kernel;
use crate::nt::se::security::{Caller, GENERIC_READ, GENERIC_WRITE};
use crate::nt::status::STATUS_SUCCESS;

const fn ioctl(function: u32) -> u32 {
    (0x22 << 16) | (function << 2)
}

fn per_call(start: Instant, n: u32) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Runs the benchmark against the test driver; returns the exit code.
///
/// # Panics
/// If the emulator thread cannot be spawned.
#[must_use]
pub fn run(test_driver: &Path, iterations: u32) -> i32 {
    crate::machine::trap::install();
    crate::machine::cpu::init_kuser_shared_data(2);
    kernel::with(|k| {
        k.pool.special = false;
        k.quiet_debug_print = true;
    });
    kernel::WATERMARK.store(false, Ordering::Relaxed);
    // Timing the driver, not Force IRQL Checking's trims (`crate::nt::mm::paged`).
    crate::nt::mm::paged::set_checking(false);
    let path = test_driver.to_path_buf();
    let worker = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            crate::machine::cpu::enter_thread(0);
            let d = driver::load_or_refuse(&path, None);
            if d.entry() != STATUS_SUCCESS {
                eprintln!("bench: DriverEntry failed");
                return 1;
            }
            let Ok(h) = io::open(r"\\.\KemuTest", Caller::Admin, 2000, GENERIC_READ | GENERIC_WRITE) else {
                eprintln!("bench: cannot open the test device");
                return 1;
            };
            let call = |code: u32| io::device_io_control(h, code, &[0; 8], 32, 0xA5).status;
            let t = Instant::now();
            for _ in 0..iterations {
                let _ = call(ioctl(0x800));
            }
            let base = per_call(t, iterations);
            let t = Instant::now();
            for _ in 0..iterations {
                let _ = call(ioctl(0x805)); // 5 trapped cr8 accesses
            }
            let cr8 = (per_call(t, iterations) - base) / 5.0;
            let t = Instant::now();
            for _ in 0..iterations {
                let _ = call(ioctl(0x806)); // 3 trapped KUSER_SHARED_DATA loads
            }
            let kuser = (per_call(t, iterations) - base) / 3.0;
            let _ = hive::load_hive(4, r"\REGISTRY\MACHINE\SOFTWARE", "bench");
            let key = r"\REGISTRY\MACHINE\SOFTWARE\Bench";
            let t = Instant::now();
            for _ in 0..iterations {
                if let Ok(k) = hive::open_key(2000, key, 0x2_0019, true) {
                    let _ = hive::close_key(2000, k);
                }
            }
            let reg = per_call(t, iterations);
            println!("bench: {iterations} iterations each");
            println!("bench: IOCTL round trip (METHOD_BUFFERED, guarded system buffer): {base:.2} us");
            println!("bench: trapped mov cr8: {cr8:.2} us each");
            println!("bench: trapped KUSER_SHARED_DATA load: {kuser:.2} us each");
            println!("bench: registry open+close (4 notifications through the driver, context alloc/free): {reg:.2} us");
            io::close(h);
            0
        })
        .expect("spawn the emulator thread");
    worker.join().unwrap_or(1)
}

/// Who keeps the other handle of a held key open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The process that opens and closes the key in the loop.
    SameProcess,
    /// Another process; the measured one holds nothing else in the hive.
    OtherProcess,
}

impl Holder {
    /// The command line's `--held` and `--by-other`.
    #[must_use]
    pub const fn of(held: bool, by_other: bool) -> Option<Self> {
        match (held, by_other) {
            (false, _) => None,
            (true, false) => Some(Self::SameProcess),
            (true, true) => Some(Self::OtherProcess),
        }
    }
}

/// Runs `iterations` registry open+close cycles of one process on a key of the user profile,
/// with hivetrack.sys loaded (`sys`) or without any driver, after `warmup` cycles, and prints
/// the time per cycle; `holder`: another handle keeps the key open throughout. The difference of the two runs is the driver's added cost; run both
/// under callgrind to compare instructions (`cargo xtask bench-driver` does both).
///
/// # Panics
/// If the emulator thread cannot be spawned.
#[must_use]
#[allow(clippy::too_many_lines, reason = "a benchmark, in one piece")]
pub fn hivetrack(
    sys: Option<&Path>,
    iterations: u32,
    name: &str,
    holder: Option<Holder>,
    capture: bool,
) -> i32 {
    const USER: &str = r"\REGISTRY\USER\S-1-5-21-1004336348-1177238915-682003330-1001";
    let key = match name {
        "short" => format!(r"{USER}\Software\Bench"),
        "profile" => format!(r"{USER}\Software\Microsoft\Windows\CurrentVersion\Explorer\Advanced"),
        other => {
            eprintln!("bench: --name {other}: expected short or profile");
            return 2;
        }
    };
    let held = holder.is_some();
    crate::machine::trap::install();
    crate::machine::cpu::init_kuser_shared_data(2);
    kernel::with(|k| {
        k.pool.special = false;
        k.quiet_debug_print = true;
    });
    kernel::WATERMARK.store(false, Ordering::Relaxed);
    // Timing the driver, not Force IRQL Checking's trims (`crate::nt::mm::paged`).
    crate::nt::mm::paged::set_checking(false);
    let sys = sys.map(Path::to_path_buf);
    let label = format!(
        "{name} name{}{}",
        match holder {
            Some(Holder::SameProcess) => ", held open by another handle",
            Some(Holder::OtherProcess) => ", held open by another process",
            None => "",
        },
        if capture { ", stack capture on" } else { "" }
    );
    let worker = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            crate::machine::cpu::enter_thread(0);
            let _ = hive::load_hive(4, r"\REGISTRY\MACHINE\SOFTWARE", "bench");
            let _ = hive::load_hive(4, USER, "bench-user");
            let driver = sys.as_ref().map(|p| {
                let d = driver::load_or_refuse(p, None);
                assert_eq!(d.entry(), STATUS_SUCCESS, "DriverEntry");
                d
            });
            let Ok(pid) =
                crate::nt::ps::process::create_process(4, r"\Device\HarddiskVolume2\bench.exe", false)
            else {
                eprintln!("bench: cannot create the process");
                return 1;
            };
            let control = (capture && driver.is_some())
                .then(|| {
                    io::open(
                        protocol::ioctl::WIN32_DEVICE_PATH,
                        Caller::Admin,
                        pid,
                        GENERIC_READ | GENERIC_WRITE,
                    )
                    .ok()
                })
                .flatten();
            if let Some(h) = control {
                let req = protocol::capture::CaptureRequest {
                    op: protocol::capture::CaptureOp::Set,
                    scope: protocol::capture::CaptureScope::All,
                    text: protocol::text::Text::EMPTY,
                };
                let mut input = [0u8; 64];
                let n = protocol::wire::encode(&req, &mut input).unwrap_or(0);
                let r = io::device_io_control(
                    h,
                    protocol::ioctl::IOCTL_HIVETRACK_CAPTURE,
                    &input[..n],
                    256,
                    0,
                );
                if r.status != STATUS_SUCCESS {
                    eprintln!("bench: the driver refused stack capture: {:#x}", r.status);
                }
            }
            // A registry open's user stack is typically 10-20 frames deep (ntdll, kernelbase,
            // the caller's DLLs); one code path, so every capture finds its stack stored.
            let exe = crate::nt::ps::image::main_image_base(pid);
            let frames: Vec<u64> = (0..14u64).map(|i| exe + 0x1000 + i * 0x240).collect();
            // Its parents exist (created once, as an application's first run does).
            let mut parent = USER.to_owned();
            for part in key[USER.len()..].split('\\').filter(|p| !p.is_empty()) {
                parent.push('\\');
                parent.push_str(part);
                if let Ok(k) = hive::open_key(pid, &parent, 0x2_0019, true) {
                    let _ = hive::close_key(pid, k);
                }
            }
            let holder_pid = if holder == Some(Holder::OtherProcess) {
                let Ok(p) =
                    crate::nt::ps::process::create_process(4, r"\Device\HarddiskVolume2\holder.exe", false)
                else {
                    eprintln!("bench: cannot create the holding process");
                    return 1;
                };
                p
            } else {
                pid
            };
            let holder = held
                .then(|| hive::open_key(holder_pid, &key, 0x2_0019, true).ok())
                .flatten();
            // Kernel calls made during the opens alone (the rest of a cycle is the close and
            // the object's cleanup): issue 14 counts spin-lock pairs per open of a held key.
            let in_opens = std::cell::RefCell::new([0u64; 8]);
            let cycle = || {
                let stack = crate::nt::ps::thread::UserStack::Frames(frames.clone());
                let before = crate::verifier::calls::snapshot();
                let opened = crate::nt::ps::thread::with_user_stack(pid, stack, || {
                    hive::open_key(pid, &key, 0x2_0019, true)
                });
                let after = crate::verifier::calls::snapshot();
                for (sum, (b, a)) in in_opens.borrow_mut().iter_mut().zip(before.iter().zip(after)) {
                    *sum += a - b;
                }
                if let Ok(k) = opened {
                    let _ = hive::close_key(pid, k);
                }
            };
            for _ in 0..iterations.min(1_000) {
                cycle();
            }
            let before = crate::verifier::calls::snapshot();
            let opens_before = *in_opens.borrow();
            let t = Instant::now();
            for _ in 0..iterations {
                cycle();
            }
            let per = per_call(t, iterations) * 1_000.0;
            let after = crate::verifier::calls::snapshot();
            println!(
                "bench: registry open+close ({label}): {per:.0} ns per cycle ({iterations} cycles)"
            );
            if driver.is_some() {
                let calls: Vec<String> = crate::verifier::calls::NAMES
                    .iter()
                    .zip(before.iter().zip(after))
                    .map(|(n, (b, a))| {
                        #[allow(clippy::cast_precision_loss, reason = "small counts")]
                        let per = (a - b) as f64 / f64::from(iterations);
                        format!("{per:.2} {n}")
                    })
                    .collect();
                println!("    kernel calls per cycle: {}", calls.join(", "));
                let opens_after = *in_opens.borrow();
                #[allow(clippy::cast_precision_loss, reason = "small counts")]
                let per_open =
                    |i: usize| (opens_after[i] - opens_before[i]) as f64 / f64::from(iterations);
                println!(
                    "    of them in the open: {:.2} spin-lock acquisitions ({:.2} shared), {:.2} key-name fetches, {:.2} lookaside pops",
                    per_open(0),
                    per_open(6),
                    per_open(4),
                    per_open(1)
                );
            }
            if let Some(h) = control {
                let req = protocol::request::QueryRequest {
                    query: protocol::request::QueryKind::Stats,
                    flags: 0,
                    max_records: 0,
                    cursor: protocol::cursor::Cursor::START,
                    hive: protocol::text::Text::EMPTY,
                };
                let mut input = [0u8; 128];
                let n = protocol::wire::encode(&req, &mut input).unwrap_or(0);
                let r = io::device_io_control(
                    h,
                    protocol::ioctl::IOCTL_HIVETRACK_QUERY_STATS,
                    &input[..n],
                    4096,
                    0,
                );
                if let Ok(s) =
                    protocol::wire::decode::<protocol::stats::Stats>(&r.output[..r.information])
                {
                    // Every cycle opens from the same code path: one stack stored, shared by
                    // every capture while a key opened from it is held.
                    println!(
                        "    stacks: {} captured, {} stored now (one code path: every capture shares it), {} dropped",
                        s.stacks_captured, s.stacks_stored, s.stacks_dropped
                    );
                }
                io::close(h);
            }
            if let Some(k) = holder {
                let _ = hive::close_key(holder_pid, k);
            }
            if let Some(mut d) = driver {
                crate::nt::ps::process::exit_process(pid);
                if holder_pid != pid {
                    crate::nt::ps::process::exit_process(holder_pid);
                }
                let _ = d.unload();
            }
            0
        })
        .expect("spawn the emulator thread");
    worker.join().unwrap_or(1)
}
