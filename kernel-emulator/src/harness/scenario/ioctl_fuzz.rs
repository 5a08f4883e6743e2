//! hivetrack.sys IOCTL fuzz: structure-aware inputs (valid requests of every query kind and
//! of the wait-free request, then mutated: bytes flipped, 32-bit fields set to boundary
//! values, truncated, extended, sent to another code, with odd output sizes) through the
//! real driver. Each query is sent twice with different poison bytes in the system buffer
//! (any difference is uninitialised output); every answer is scanned for a kernel address
//! (any 8 bytes, at any offset, that point into a live pool block, the driver image, a key
//! object's page, a key id, a process or thread object: [`kernel_ranges`]); a failure
//! returns no bytes; a success decodes.
//!
//! The size is `HIVETRACK_FUZZ_INPUTS` (default 20,000 in the suite); `cargo xtask
//! fuzz-ioctl --inputs N` sets it.

use std::time::Instant;

use protocol::{
    cursor::Cursor,
    ioctl::{IOCTL_HIVETRACK_GET_VERSION, IOCTL_HIVETRACK_WAIT_FREE, query_ioctl},
    request::QueryKind,
    wire,
};

use super::tracking::{
    APP1, CLASSES, Client, KEY_READ, QUERY_KINDS, SOFTWARE, USER, ensure_parents, load_profile,
    spawn, start, unload_all,
};
use super::wait_free::request as wait_request;
use super::{Ctx, Scenario, Target};
use crate::nt::cm::hive;
use crate::nt::io::{self, IoctlCall, IoctlResult};
use crate::nt::kernel;
use crate::nt::ps::process;
use crate::nt::status::{self, STATUS_SUCCESS};

/// Inputs when `HIVETRACK_FUZZ_INPUTS` is not set.
const DEFAULT_INPUTS: u64 = 20_000;
const OUT_LENS: [u32; 8] = [0, 1, 15, 16, 64, 300, 4096, 16 * 1024];

/// The fuzz scenario.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "ioctl-fuzz",
        Target::Hivetrack,
        "HIVETRACK_FUZZ_INPUTS structure-aware IOCTL inputs (default 20,000; queries, the wait-free and event-stream requests, the capture IOCTL, mutated): no poison byte, no kernel address, clean errors, decodable answers",
        ioctl_fuzz,
    )]
}

fn inputs_wanted() -> u64 {
    std::env::var("HIVETRACK_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_INPUTS)
}

struct Rng(u64);

impl Rng {
    const fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    #[allow(clippy::cast_possible_truncation, reason = "an index below n")]
    const fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Kernel address ranges now, sorted and merged: every address the driver could store and
/// copy out — live pool blocks, the driver image, the key objects' pages (the `Object` of
/// every registry callback, which the tracker keeps per record), the key ids handed out (on
/// Windows, key control block addresses), the fake EPROCESS/ETHREAD pages, the emulated
/// processors' KPCR/KTHREAD pages ([`fixed_ranges`]), and the I/O objects and kernel stacks
/// ([`io_ranges`]). Key objects, processes and I/O objects are not pool blocks in the model
/// (own mappings and heap pages), so a scan of the pool alone could not see them (audit 21b
/// F2, review 21a L6).
pub(super) fn kernel_ranges(image: (u64, u64)) -> Vec<(u64, u64)> {
    let mut v = fixed_ranges(image);
    v.extend(io_ranges());
    merged(v)
}

/// [`kernel_ranges`] without the I/O objects and stacks, unsorted.
fn fixed_ranges(image: (u64, u64)) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = kernel::with(|k| {
        let mut v: Vec<(usize, usize)> = k
            .pool
            .blocks
            .iter()
            .map(|(&a, b)| (a, a + b.size.max(1)))
            .collect();
        let ids = k.hives.key_id_range();
        if ids.1 > ids.0 {
            v.push(ids);
        }
        v.extend(k.processes.object_pages());
        v
    })
    .into_iter()
    .chain(hive::key_object_regions())
    .chain(crate::machine::cpu::processor_pages())
    .map(|(a, b)| (a as u64, b as u64))
    .collect();
    v.push(image);
    v
}

/// The I/O manager's objects a driver holds or was just handed (DEVICE_OBJECT, DRIVER_OBJECT,
/// FILE_OBJECTs and their names, the last IRPs and METHOD_BUFFERED system buffers:
/// [`io::object_ranges`]), the kernel stacks of the threads that ran driver code
/// ([`kernel::kernel_stacks`]) and the name buffers handed by pointer
/// ([`crate::nt::layout::names_handed`]; review 22a, L1), unsorted. Cheap: taken afresh for
/// every answer, since each request has a new IRP (review 21a, L6).
pub(super) fn io_ranges() -> Vec<(u64, u64)> {
    io::object_ranges()
        .into_iter()
        .chain(kernel::kernel_stacks())
        .chain(crate::nt::layout::names_handed())
        .map(|(a, b)| (a as u64, b as u64))
        .collect()
}

/// Sorts `v` and merges overlapping or nested ranges, so that [`kernel_address_in`]'s
/// lookup of the last range starting at or below a value is right (a nested range, say an
/// IRP inside a stale range, would otherwise hide the outer one's tail).
pub(super) fn merged(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The first offset of `bytes` where 8 bytes read as a little-endian value fall in a range.
/// `ranges` must be sorted and non-overlapping ([`merged`]).
pub(super) fn kernel_address_in(bytes: &[u8], ranges: &[(u64, u64)]) -> Option<(usize, u64)> {
    let lo = ranges.first().map_or(u64::MAX, |r| r.0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    bytes.windows(8).enumerate().find_map(|(i, w)| {
        let v = u64::from_le_bytes(w.try_into().ok()?);
        if v < lo || v >= hi {
            return None;
        }
        let at = ranges.partition_point(|r| r.0 <= v);
        (at > 0 && v < ranges[at - 1].1).then_some((i, v))
    })
}

/// A capture request: a get or a set of any scope, with `hive` (or a pid) as the text.
fn capture_input(rng: &mut Rng, hive: &[u16]) -> (u32, Vec<u8>, &'static str) {
    // The capture IOCTL: a get or a set of any scope, with any of the texts.
    let scope = protocol::capture::CaptureScope::from_u16(u16::try_from(rng.below(5)).unwrap_or(0))
        .unwrap_or(protocol::capture::CaptureScope::Off);
    let get = rng.below(3) == 0;
    // A process scope names a pid in decimal digits (any value, so some name no process);
    // one in eight is a text the driver must refuse (a leading zero, a sign, a letter).
    let pid: Vec<u16> = match rng.below(8) {
        0 => ["0", "04", "-4", "4x", "99999999999"][rng.below(5)]
            .encode_utf16()
            .collect(),
        _ => (rng.below(5000) + 1).to_string().encode_utf16().collect(),
    };
    let text = if scope == protocol::capture::CaptureScope::Process {
        &pid[..]
    } else {
        hive
    };
    let req = protocol::capture::CaptureRequest {
        op: if get {
            protocol::capture::CaptureOp::Get
        } else {
            protocol::capture::CaptureOp::Set
        },
        scope: if get {
            protocol::capture::CaptureScope::Off
        } else {
            scope
        },
        text: if !get && scope.takes_text() {
            protocol::text::Text::Units(text)
        } else {
            protocol::text::Text::EMPTY
        },
    };
    let mut b = vec![0u8; 2048];
    let len = protocol::wire::encode(&req, &mut b).unwrap_or(0);
    b.truncate(len);
    (protocol::ioctl::IOCTL_HIVETRACK_CAPTURE, b, "capture")
}

/// An event-stream request from any place: answered at once (timeout 0) or waiting (1 ms,
/// 30 s or no timeout: the fuzz cancels a request that pends), for any page size.
fn events_input(rng: &mut Rng) -> (u32, Vec<u8>, &'static str) {
    let req = protocol::events::EventsRequest {
        after: [0, 1, rng.next() % 64, u64::MAX][rng.below(4)],
        timeout_ms: [0, 0, 1, 30_000, protocol::events::EventsRequest::NO_TIMEOUT][rng.below(5)],
        max_records: [0, 1, 2, 3, u32::MAX][rng.below(5)],
    };
    let mut b = vec![0u8; 64];
    let len = protocol::wire::encode(&req, &mut b).unwrap_or(0);
    b.truncate(len);
    (protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS, b, "events")
}

/// A valid request, then 0..=3 mutations.
fn input(rng: &mut Rng, hives: &[Vec<u16>]) -> (u32, Vec<u8>, u32, &'static str) {
    let wait = rng.below(8) == 0;
    let hive = &hives[rng.below(hives.len())];
    let identify = !wait && rng.below(8) == 0;
    let other = if wait || identify { 3 } else { rng.below(10) };
    let (mut code, mut bytes, what) = if other == 0 {
        capture_input(rng, hive)
    } else if other == 1 {
        events_input(rng)
    } else if identify {
        // 1..=MAX_IDENTIFY handle values: small ones (a process's handles), random, kernel-looking.
        // Mostly small requests (as before protocol 4), some at the limit, some anywhere.
        let max = protocol::identify::MAX_IDENTIFY;
        let n = match rng.below(4) {
            0 | 1 => 1 + rng.below(64),
            2 => max - rng.below(2),
            _ => 1 + rng.below(max),
        };
        let handles: Vec<u64> = (0..n)
            .map(|_| match rng.below(3) {
                0 => 4 * (rng.next() % 0x1000),
                1 => rng.next(),
                _ => 0xFFFF_FFFF_8000_0000 | (4 * (rng.next() % 0x1000)),
            })
            .collect();
        let req = protocol::identify::IdentifyRequest::new(&handles);
        let mut b = vec![0u8; protocol::wire::HEADER_LEN + 8 + 8 * n];
        let len = req.map_or(0, |r| protocol::wire::encode(&r, &mut b).unwrap_or(0));
        b.truncate(len);
        (
            protocol::ioctl::IOCTL_HIVETRACK_IDENTIFY_HANDLES,
            b,
            "identify",
        )
    } else if wait {
        let text = String::from_utf16_lossy(hive);
        // Timeout 0: answered at once, whatever the hive's state.
        (
            IOCTL_HIVETRACK_WAIT_FREE,
            wait_request(&text, 0),
            "wait-free",
        )
    } else {
        let kind = QUERY_KINDS[rng.below(QUERY_KINDS.len())];
        let c = if rng.below(8) == 0 {
            Cursor([
                rng.next(),
                rng.next() % 64,
                rng.next() % 4096,
                rng.next(),
                rng.next(),
            ])
        } else {
            Cursor::START
        };
        // Only holders takes a hive; the others mostly get none, as clients send them.
        let text: &[u16] = if kind == QueryKind::Holders || rng.below(8) == 0 {
            hive
        } else {
            &[]
        };
        (query_ioctl(kind), Client::request(kind, text, c), "query")
    };
    // A third go as built; the rest get one to three mutations.
    let mutations = if rng.below(3) == 0 {
        0
    } else {
        1 + rng.below(3)
    };
    for _ in 0..mutations {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] ^= u8::try_from(rng.below(255) + 1).unwrap_or(1);
            }
            1 if bytes.len() >= 4 => {
                let at = rng.below(bytes.len() / 4) * 4;
                let v: u32 =
                    [0, 1, 0xFFFF, 0x8000_0000, u32::MAX, bytes.len() as u32][rng.below(6)];
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            2 => bytes.truncate(rng.below(bytes.len() + 1)),
            3 => {
                let n = rng.below(64);
                bytes.extend((0..n).map(|_| u8::try_from(rng.below(256)).unwrap_or(0)));
            }
            4 => {
                code = [
                    IOCTL_HIVETRACK_GET_VERSION,
                    query_ioctl(QUERY_KINDS[rng.below(QUERY_KINDS.len())]),
                    code,
                ][rng.below(3)];
            }
            _ => {}
        }
    }
    #[allow(clippy::cast_possible_truncation, reason = "small sizes")]
    let out = match (wait || identify, rng.below(4)) {
        (true, 0 | 1) if identify => 1040, // room for a 64-handle answer
        (true, 0 | 1) => 32,               // a wait-free answer
        (false, 0 | 1) => 16 * 1024,
        _ => OUT_LENS[rng.below(OUT_LENS.len())],
    };
    (code, bytes, out, what)
}

/// Where a successful snapshot page carries its `taken_at` time (header 16 + page info 40):
/// the one field two identical requests may answer differently.
const SNAPSHOT_TIME: std::ops::Range<usize> = 72..80;

/// Sends a query twice with poison bytes 0xA5 and 0x5A in the system buffer; returns the
/// first answer and the offsets where the two differ (bytes the driver never wrote).
fn poisoned_pair(
    h: io::FileHandle,
    code: u32,
    input: &[u8],
    out: u32,
) -> (IoctlResult, Vec<usize>) {
    let a = io::device_io_control(h, code, input, out, 0xA5);
    let mut b = io::device_io_control(h, code, input, out, 0x5A);
    let snapshot = query_ioctl(QueryKind::Snapshot);
    if code == snapshot
        && a.status == STATUS_SUCCESS
        && b.output.len() >= SNAPSHOT_TIME.end
        && a.output.len() >= SNAPSHOT_TIME.end
    {
        b.output[SNAPSHOT_TIME].copy_from_slice(&a.output[SNAPSHOT_TIME]);
    }
    let mut differs: Vec<usize> = (0..a.output.len().max(b.output.len()))
        .filter(|&i| a.output.get(i) != b.output.get(i))
        .collect();
    if a.status != b.status || a.information != b.information {
        differs.push(usize::MAX);
    }
    (a, differs)
}

fn clean(r: &IoctlResult, out: u32) -> bool {
    if r.status == STATUS_SUCCESS {
        r.information <= out as usize
            && (r.information == 0 || wire::decode_header(&r.output[..r.information]).is_ok())
    } else {
        r.information == 0
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn ioctl_fuzz(ctx: &mut Ctx) {
    let inputs = inputs_wanted();
    let mut d = start(ctx);
    let Some(c) = Client::open(ctx) else { return };
    load_profile(ctx);
    // Stacks and modules to report too: capture on for every open.
    super::attribution::set_capture(ctx, &c, protocol::capture::CaptureScope::All, "");
    // Something to report: two processes holding keys in three hives.
    let mut held = Vec::new();
    for (n, image) in [APP1, super::tracking::APP2].into_iter().enumerate() {
        let pid = spawn(ctx, image);
        for h in [USER, CLASSES, SOFTWARE] {
            let path = format!(r"{h}\Fuzz\P{n}\K");
            ensure_parents(pid, &path);
            if let Ok(k) = hive::open_key(pid, &path, KEY_READ, true) {
                held.push((pid, k));
            }
        }
    }
    let hives: Vec<Vec<u16>> = [
        String::new(),
        USER.to_owned(),
        format!(r"{USER}\Fuzz\P0\K"),
        SOFTWARE.to_owned(),
        r"\REGISTRY\MACHINE\NOWHERE".to_owned(),
        format!(r"{USER}\{}", "k".repeat(512 - USER.len() - 1)),
    ]
    .iter()
    .map(|s| s.encode_utf16().collect())
    .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let image = (d.image.base as u64, (d.image.base + d.image.size) as u64);
    let mut ranges = kernel_ranges(image);
    // The scan can fail: an answer carrying a pool address (at an odd offset) is caught.
    let some_block = ranges.first().map_or(0, |r| r.0 + 8);
    let mut planted = vec![0u8; 41];
    planted[13..21].copy_from_slice(&some_block.to_le_bytes());
    ctx.check(
        kernel_address_in(&planted, &ranges) == Some((13, some_block)),
        "the kernel-address scan finds a pool address planted at offset 13",
    );
    // And the addresses the driver is handed that are not pool: a live key object (a
    // callback's `Object`), a key id (a KCB's address on Windows), the opener's EPROCESS and
    // this processor's KTHREAD.
    let held_object = held
        .first()
        .and_then(|&(pid, k)| kernel::with(|kk| kk.hives.handles.get(&(pid, k)).copied()));
    let held_id = held_object.and_then(|o| kernel::with(|kk| kk.hives.identify(o)).map(|i| i.0));
    let others = [
        ("a live key object", held_object.map(|o| o as u64 + 0x18)),
        ("a key id", held_id.map(|i| i as u64)),
        (
            "a process object",
            held.first()
                .and_then(|&(pid, _)| {
                    kernel::with(|kk| kk.processes.processes.get(&pid).map(|p| p.eprocess))
                })
                .map(|e| e as u64 + 8),
        ),
        (
            "this processor's thread object",
            Some(crate::machine::cpu::current_thread() as u64),
        ),
        // The I/O manager's objects and the kernel stack (review 21a, L6).
        (
            "the driver's DEVICE_OBJECT",
            kernel::with(|k| k.io.device_by_name(protocol::ioctl::DEVICE_NAME))
                .map(|a| a as u64 + 0x30),
        ),
        ("the driver's DRIVER_OBJECT", Some(d.object as u64 + 0x10)),
        (
            "the handle's FILE_OBJECT",
            Some(io::file_object_address(c.h) as u64 + 0x58),
        ),
        (
            "the last IRP or system buffer",
            io::newest_handed().map(|a| a as u64 + 0x10),
        ),
        (
            "an address on the kernel stack",
            Some(crate::machine::cpu::rsp() as u64 - 0x200),
        ),
        // Names handed by pointer: a callback's CompleteName, notify names, key-id names
        // (review 22a, L1).
        (
            "the last name handed to the driver by pointer",
            crate::nt::layout::names_handed()
                .last()
                .map(|r| r.0 as u64 + 2),
        ),
    ];
    for (what, addr) in others {
        let found = addr.and_then(|a| {
            let mut b = vec![0u8; 41];
            b[5..13].copy_from_slice(&a.to_le_bytes());
            kernel_address_in(&b, &ranges)
        });
        ctx.check(
            found.is_some_and(|(at, _)| at == 5),
            format!("the kernel-address scan finds {what} planted at offset 5 ({addr:x?})"),
        );
    }
    let (mut sent, mut ok, mut refused, mut waits) = (0u64, 0u64, 0u64, 0u64);
    let mut bad = 0u64;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..inputs {
        if i % 4096 == 0 {
            ranges = kernel_ranges(image);
        }
        let (code, bytes, out, what) = input(&mut rng, &hives);
        let mut poisoned = Vec::new();
        let r = if code == IOCTL_HIVETRACK_WAIT_FREE
            || code == protocol::ioctl::IOCTL_HIVETRACK_WAIT_EVENTS
        {
            waits += 1;
            sent += 1;
            match io::device_io_control_async(c.h, code, &bytes, out, 0xA5) {
                IoctlCall::Done(r) => r,
                IoctlCall::Pending(mut p) => {
                    // A mutated timeout may make it wait: cancel it; it must end cleanly.
                    p.cancel();
                    let Some(r) = p.poll() else {
                        ctx.check(
                            false,
                            format!("input {i}: a cancelled wait did not complete"),
                        );
                        bad += 1;
                        continue;
                    };
                    r
                }
            }
        } else {
            sent += 2;
            let (r, differs) = poisoned_pair(c.h, code, &bytes, out);
            poisoned = differs;
            r
        };
        if r.status == STATUS_SUCCESS {
            ok += 1;
        } else {
            refused += 1;
        }
        *statuses.entry(r.status).or_insert(0u64) += 1;
        let leak = kernel_address_in(&r.output, &ranges)
            .or_else(|| kernel_address_in(&r.output, &merged(io_ranges())));
        if !clean(&r, out) || leak.is_some() || !poisoned.is_empty() {
            bad += 1;
            if bad <= 10 {
                ctx.check(
                    false,
                    format!(
                        "input {i} ({what}, code {code:#x}, {} bytes, out {out}): {} with {} bytes{}{}",
                        bytes.len(),
                        status::describe(r.status),
                        r.information,
                        leak.map(|(at, v)| format!("; kernel address {v:#x} at offset {at}"))
                            .unwrap_or_default(),
                        if poisoned.is_empty() {
                            String::new()
                        } else {
                            format!("; {} bytes follow the poison (uninitialised)", poisoned.len())
                        }
                    ),
                );
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "  ioctl fuzz: {inputs} inputs ({waits} wait-free) in {:.1} s, {sent} IOCTLs sent: {ok} answered, {refused} refused, {bad} unclean",
        elapsed.as_secs_f64()
    );
    let mut by_status: Vec<(u64, i32)> = statuses.into_iter().map(|(s, n)| (n, s)).collect();
    by_status.sort_unstable_by(|a, b| b.cmp(a));
    for (n, s) in by_status {
        println!("    {n:>8} {}", status::describe(s));
    }
    ctx.check(
        bad == 0,
        format!("every input was answered cleanly ({bad} not)"),
    );
    ctx.check(
        ok > 0 && refused > 0,
        "the inputs reached both the answers and the refusals",
    );
    for (pid, k) in held {
        let _ = hive::close_key(pid, k);
        process::exit_process(pid);
    }
    unload_all(ctx, &[USER, CLASSES]);
    c.close();
    ctx.unload_and_check_clean(&mut d);
}
