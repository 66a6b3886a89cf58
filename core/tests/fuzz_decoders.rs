//! Fuzzing of every decoder of network input: requests, replies, JSON and binary transfers, transfer
//! acks, plans, progress reports, node events, held keys, subject tokens, and the app container's answers. Each
//! case takes a seed from the corpus (`core/tests/corpus/<decoder>/`, valid messages as the protocol
//! documents them) and applies byte-level and JSON-aware mutations (flips, interesting bytes, inserted
//! tokens, deletions, duplicated and spliced ranges, truncation), or takes raw random bytes. A decoder
//! must give a value or a typed error, never panic, and what it accepts must survive a round trip
//! (encode, decode again: the same value) and its validation must not panic either.
//!
//! Cases per decoder: `AETHER_FUZZ_CASES` (default 2,000 in `make test`; `make fuzz` runs 1,000,000
//! per decoder, 14 decoders: 14 million executions). Seeded by `PROPTEST_RNG_SEED` like the other
//! property tests.

use aether_core::protocol::app::{ApplyAnswer, DecideAnswer, KindsAnswer};
use aether_core::protocol::{
    Held, NodeEvent, PlanMessage, Progress, Reply, Request, TRANSFER_MAGIC, Transfer, TransferAck,
    decode, decode_id, decode_transfer, encode, encode_id, encode_transfer,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

fn cases() -> u32 {
    std::env::var("AETHER_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

/// Tokens that make JSON parsers take unusual paths.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3",
    b"\"v\":2",
    b"\"v\":1",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":",
    b"\"\":\"\"",
    b" ",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Splice(usize, usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(s, i, n)| Mutation::Splice(s, i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(seed: &[u8], others: &[Vec<u8>], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let len = b.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *m {
            Mutation::Flip(i, bit) if len > 0 => b[i % len] ^= 1 << bit,
            Mutation::Set(i, v) if len > 0 => b[i % len] = v,
            Mutation::Insert(i, t) => {
                let tok = TOKENS[t % TOKENS.len()];
                let p = at(i);
                b.splice(p..p, tok.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let p = i % len;
                b.drain(p..(p + n).min(len));
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let p = i % len;
                let part: Vec<u8> = b[p..(p + n).min(len)].to_vec();
                b.splice(p..p, part);
            }
            Mutation::Splice(s, i, n) => {
                let other = &others[s % others.len()];
                if !other.is_empty() {
                    let from = i % other.len();
                    let part = &other[from..(from + n).min(other.len())];
                    let p = at(i);
                    b.splice(p..p, part.iter().copied());
                }
            }
            Mutation::Truncate(i) => b.truncate(at(i)),
            _ => {}
        }
    }
    b
}

/// Runs `exercise` on `cases()` inputs made from `target`'s corpus.
fn fuzz(target: &str, exercise: fn(&[u8])) {
    let seeds = corpus(target);
    for s in &seeds {
        exercise(s);
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let input = prop_oneof![
        4 => (any::<prop::sample::Index>(), prop::collection::vec(mutation(), 1..6))
            .prop_map(move |(i, m)| apply(&seeds[i.index(seeds.len())], &seeds, &m)),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ];
    let result = runner.run(&input, |bytes| {
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        exercise(&bytes);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{target}: {e}");
    }
    eprintln!(
        "{target}: {} executions so far in this process",
        EXECUTIONS.load(Ordering::Relaxed)
    );
}

/// Decodes; what is accepted must encode and decode to the same value.
macro_rules! round_trip {
    ($t:ty, $bytes:expr, $check:expr) => {
        if let Ok(msg) = decode::<$t>($bytes) {
            let again: $t = decode(&encode(&msg).expect("an accepted message encodes"))
                .expect("an encoded message decodes");
            assert_eq!(again, msg, "round trip");
            #[allow(clippy::redundant_closure_call)]
            ($check)(&msg);
        }
    };
}

#[test]
fn requests() {
    fuzz("request", |b| {
        round_trip!(Request, b, |m: &Request| {
            let _ = m.validate();
        });
    });
}

#[test]
fn replies() {
    fuzz("reply", |b| round_trip!(Reply, b, |_: &Reply| {}));
}

#[test]
fn json_transfers() {
    fuzz("transfer-json", |b| {
        round_trip!(Transfer, b, |_: &Transfer| {})
    });
}

#[test]
fn binary_transfers() {
    fuzz("transfer-binary", |b| {
        let mut framed = b.to_vec();
        if framed.first() != Some(&TRANSFER_MAGIC) {
            framed.insert(0, TRANSFER_MAGIC);
        }
        for bytes in [b, &framed[..]] {
            if let Ok(t) = decode_transfer(bytes) {
                let again =
                    decode_transfer(&encode_transfer(&t).expect("encodes")).expect("decodes");
                assert_eq!(again, t, "round trip");
            }
        }
    });
}

#[test]
fn transfer_acks() {
    fuzz("transfer-ack", |b| {
        round_trip!(TransferAck, b, |_: &TransferAck| {})
    });
}

#[test]
fn plans() {
    fuzz("plan", |b| {
        round_trip!(PlanMessage, b, |m: &PlanMessage| {
            let _ = m.validate();
        });
    });
}

#[test]
fn progress_reports() {
    fuzz("progress", |b| round_trip!(Progress, b, |_: &Progress| {}));
}

#[test]
fn node_events() {
    fuzz("node-event", |b| {
        round_trip!(NodeEvent, b, |_: &NodeEvent| {})
    });
}

#[test]
fn held_keys() {
    fuzz("held", |b| round_trip!(Held, b, |_: &Held| {}));
}

#[test]
fn subject_tokens() {
    fuzz("subject-token", |b| {
        let text = String::from_utf8_lossy(b);
        if let Ok(id) = decode_id(&text) {
            assert_eq!(decode_id(&encode_id(&id)).ok(), Some(id), "round trip");
        }
    });
}

#[test]
fn app_kinds_answers() {
    fuzz("app-kinds", |b| {
        if let Ok(a) = serde_json::from_slice::<KindsAnswer>(b) {
            let _ = a.check();
        }
    });
}

#[test]
fn app_decide_answers() {
    fuzz("app-decide", |b| {
        if let Ok(a) = serde_json::from_slice::<DecideAnswer>(b) {
            let _ = a.check();
        }
    });
}

#[test]
fn app_apply_answers() {
    fuzz("app-apply", |b| {
        if let Ok(a) = serde_json::from_slice::<ApplyAnswer>(b) {
            let _ = a.check();
        }
    });
}

#[test]
fn app_api_bodies() {
    // The app API (`POST /v1/actors/...`) takes a command as JSON: the same check as a request's.
    fuzz("app-api", |b| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) {
            let _ = aether_core::protocol::check_command(&v);
        }
    });
}
