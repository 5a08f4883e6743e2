//! Fuzz target for every decoder: random bytes and mutated valid messages must decode to a
//! value or a typed error, never panic; whatever decodes re-encodes to the same bytes
//! (decoding is canonical, so no two byte strings mean the same message).
//!
//! Every generator counts, per message kind, how many inputs got past the header to the
//! kind's body decoder, and fails when one decoder was never reached: a fuzz whose inputs
//! all stop at the header (as `random_bodies_behind_a_valid_header` did from protocol 2 to
//! 5, writing version 1 into its header) tests nothing, and says so now.
//!
//! A short run (a few thousand cases per decoder) is part of `cargo test`. The longer run
//! on demand: `HIVETRACK_FUZZ_CASES=1000000 cargo test -p hivetrack-protocol --release
//! --test fuzz_decode`. libFuzzer (`cargo fuzz`) is not used: it needs a nightly compiler
//! (`-Zsanitizer`), which this project's machines do not have, and `RUSTC_BOOTSTRAP=1` on a
//! stable compiler is not a supported configuration for CI. Proptest's generation and
//! shrinking give the same "no panic, typed error" property with a reproducible seed.
#![allow(
    clippy::cast_possible_truncation,
    clippy::missing_const_for_fn,
    clippy::format_collect,
    reason = "test code: small sizes, readability over pedantry"
)]

mod common;

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use protocol::capture::{CaptureRequest, CaptureState};
use protocol::events::{Events, EventsRequest};
use protocol::history::UnloadHistory;
use protocol::hives::Hives;
use protocol::holders::Holders;
use protocol::identify::{IdentifyAnswer, IdentifyRequest};
use protocol::modules::Modules;
use protocol::page::Page;
use protocol::processes::Processes;
use protocol::request::QueryRequest;
use protocol::snapshot::Snapshot;
use protocol::stacks::Stacks;
use protocol::stats::Stats;
use protocol::version::VersionInfo;
use protocol::wait::{WaitFreeAnswer, WaitFreeRequest};
use protocol::wire::{HEADER_LEN, MAGIC, Message, MessageKind, decode, decode_header, encode};

/// The highest message kind; every kind from 1 to this one has a decoder in [`check_all`].
const LAST_KIND: u16 = MessageKind::EventsPage as u16;
const KINDS: usize = LAST_KIND as usize + 1;

/// Per message kind: inputs that reached its body decoder, and inputs it accepted.
#[derive(Debug, Default)]
struct Tally {
    reached: [u64; KINDS],
    decoded: [u64; KINDS],
}

impl Tally {
    /// The kinds (by name) whose body decoder no input reached.
    fn never_reached(&self) -> Vec<MessageKind> {
        (1..=LAST_KIND)
            .filter(|&k| self.reached[usize::from(k)] == 0)
            .map(|k| MessageKind::from_u16(k).unwrap())
            .collect()
    }

    /// The kinds whose decoder accepted no input.
    fn never_decoded(&self) -> Vec<MessageKind> {
        (1..=LAST_KIND)
            .filter(|&k| self.decoded[usize::from(k)] == 0)
            .map(|k| MessageKind::from_u16(k).unwrap())
            .collect()
    }
}

fn check<'a, M: Message<'a>>(bytes: &'a [u8], tally: &mut Tally) {
    let kind = M::KIND as usize;
    // The body decoder runs exactly when the header is valid and names this kind.
    let reached = decode_header(bytes).is_ok_and(|h| h.kind == M::KIND);
    if reached {
        tally.reached[kind] += 1;
    }
    if let Ok(msg) = decode::<M>(bytes) {
        assert!(reached, "{:?} decoded without a valid header", M::KIND);
        tally.decoded[kind] += 1;
        // Canonical: the whole input is the message, and its encoding.
        let mut out = vec![0u8; bytes.len()];
        assert_eq!(encode(&msg, &mut out).unwrap(), bytes.len());
        assert_eq!(&out[..], bytes, "decode is not canonical");
    }
}

/// Every decoder, one per [`MessageKind`] (`every_kind_has_a_decoder_here` checks the list).
fn check_all(bytes: &[u8], tally: &mut Tally) {
    check::<VersionInfo>(bytes, tally);
    check::<QueryRequest<'_>>(bytes, tally);
    check::<Page<'_, Holders>>(bytes, tally);
    check::<Page<'_, Hives>>(bytes, tally);
    check::<Page<'_, Processes>>(bytes, tally);
    check::<Stats>(bytes, tally);
    check::<Page<'_, Snapshot>>(bytes, tally);
    check::<Page<'_, UnloadHistory>>(bytes, tally);
    check::<WaitFreeRequest<'_>>(bytes, tally);
    check::<WaitFreeAnswer>(bytes, tally);
    check::<IdentifyRequest>(bytes, tally);
    check::<IdentifyAnswer>(bytes, tally);
    check::<CaptureRequest<'_>>(bytes, tally);
    check::<CaptureState<'_>>(bytes, tally);
    check::<Page<'_, Stacks>>(bytes, tally);
    check::<Page<'_, Modules>>(bytes, tally);
    check::<EventsRequest>(bytes, tally);
    check::<Page<'_, Events>>(bytes, tally);
}

fn cases() -> u32 {
    std::env::var("HIVETRACK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
}

/// Runs `strategy` for [`cases`] inputs through [`check_all`] and returns the tally. A
/// panic in a decoder fails the run with the shrunk input.
fn run<S: Strategy<Value = Vec<u8>>>(strategy: &S) -> Tally {
    let tally = RefCell::new(Tally::default());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(strategy, |bytes| {
        check_all(&bytes, &mut tally.borrow_mut());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    tally.into_inner()
}

/// With fewer cases than this a kind may go unreached by chance (18 kinds).
fn enough_cases() -> bool {
    cases() >= 500
}

/// A valid sample with a few bytes overwritten, truncated or extended.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let samples: Vec<Vec<u8>> = common::all_samples().into_iter().map(|(_, b)| b).collect();
    (
        proptest::sample::select(samples),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(mut b, edits, cut, do_cut)| {
            for (i, v) in edits {
                let at = i.index(b.len());
                b[at] = v;
            }
            if do_cut {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
}

/// A header this build accepts (its own protocol version, any kind) and a random body.
fn random_body() -> impl Strategy<Value = Vec<u8>> {
    (
        1..=LAST_KIND,
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(kind, body)| {
            let mut b = Vec::with_capacity(HEADER_LEN + body.len());
            b.extend_from_slice(&MAGIC);
            b.extend_from_slice(&protocol::PROTOCOL_VERSION.to_le_bytes());
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&body);
            b
        })
}

#[test]
fn random_bytes_never_panic() {
    run(&proptest::collection::vec(any::<u8>(), 0..600));
}

#[test]
fn random_bodies_behind_a_valid_header() {
    let tally = run(&random_body());
    if enough_cases() {
        let missed = tally.never_reached();
        assert!(
            missed.is_empty(),
            "no random body reached the decoder of {missed:?}: the header was refused ({tally:?})"
        );
    }
}

#[test]
fn mutated_samples_never_panic() {
    let tally = run(&mutated());
    if enough_cases() {
        let missed = tally.never_reached();
        assert!(missed.is_empty(), "no mutated sample reached {missed:?}");
        let missed = tally.never_decoded();
        assert!(
            missed.is_empty(),
            "no (lightly) mutated sample decoded as {missed:?}"
        );
    }
}

/// The samples cover every kind, each decodes as its own kind and as no other, and
/// [`check_all`] has a decoder for every kind (a kind added without one fails here).
#[test]
fn every_kind_has_a_sample_and_a_decoder_here() {
    let mut tally = Tally::default();
    for (name, bytes) in common::all_samples() {
        let kind = decode_header(&bytes)
            .unwrap_or_else(|e| panic!("sample {name}: header refused: {e:?}"))
            .kind as usize;
        let before = tally.decoded;
        check_all(&bytes, &mut tally);
        for (k, (now, was)) in tally.decoded.iter().zip(before).enumerate().skip(1) {
            assert_eq!(now - was, u64::from(k == kind), "sample {name} as kind {k}");
        }
    }
    let missed = tally.never_decoded();
    assert!(missed.is_empty(), "no sample or no decoder for {missed:?}");
}
