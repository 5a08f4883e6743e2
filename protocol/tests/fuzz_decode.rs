//! Fuzz target for every decoder: random bytes and mutated valid messages must decode to a
//! value or a typed error, never panic; whatever decodes re-encodes to the same bytes
//! (decoding is canonical, so no two byte strings mean the same message).
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

use proptest::prelude::*;
use protocol::history::UnloadHistory;
use protocol::hives::Hives;
use protocol::holders::Holders;
use protocol::identify::{IdentifyAnswer, IdentifyRequest};
use protocol::page::Page;
use protocol::processes::Processes;
use protocol::request::QueryRequest;
use protocol::snapshot::Snapshot;
use protocol::stats::Stats;
use protocol::version::VersionInfo;
use protocol::wait::{WaitFreeAnswer, WaitFreeRequest};
use protocol::wire::{Message, decode, decode_header, encode};

fn check<'a, M: Message<'a>>(bytes: &'a [u8]) {
    if let Ok(msg) = decode::<M>(bytes) {
        let size = decode_header(bytes).unwrap().size as usize;
        let mut out = vec![0u8; size];
        assert_eq!(encode(&msg, &mut out).unwrap(), size);
        assert_eq!(&out[..], &bytes[..size], "decode is not canonical");
    }
}

fn check_all(bytes: &[u8]) {
    check::<VersionInfo>(bytes);
    check::<QueryRequest<'_>>(bytes);
    check::<Stats>(bytes);
    check::<Page<'_, Holders>>(bytes);
    check::<Page<'_, Hives>>(bytes);
    check::<Page<'_, Processes>>(bytes);
    check::<Page<'_, Snapshot>>(bytes);
    check::<Page<'_, UnloadHistory>>(bytes);
    check::<WaitFreeRequest<'_>>(bytes);
    check::<WaitFreeAnswer>(bytes);
    check::<IdentifyRequest>(bytes);
    check::<IdentifyAnswer>(bytes);
}

fn cases() -> u32 {
    std::env::var("HIVETRACK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000)
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

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check_all(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header(kind in 1u16..=12, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut b = Vec::with_capacity(16 + body.len());
        b.extend_from_slice(b"HvTk");
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&body);
        check_all(&b);
    }

    #[test]
    fn mutated_samples_never_panic(bytes in mutated()) {
        check_all(&bytes);
    }
}
