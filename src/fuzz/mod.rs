//! Property-based fuzzing of everything that parses what users send: workspace paths and job
//! keys, durations, templates, archives of odd trees, and (in `http::fuzz`, which needs the
//! file API's private parsers) the file API's request handling.
//!
//! Each target is an ordinary `#[test]` that checks invariants, not only the absence of
//! panics: accepted paths never leave the workspace, durations round-trip, rendering keeps
//! its fuel and output limits, archives list exactly the files of the tree. Inputs come from
//! `proptest` strategies that mix structured hostile input with arbitrary bytes; a failure is
//! shrunk to a minimal input before it is reported.
//!
//! Budget: `cargo test` runs one round of each target ([`run`]). `KILN_FUZZ_SECONDS=N` keeps
//! starting new rounds, each from its own seed, until a target has run N seconds;
//! `hack/fuzz.sh` does that for every target and collects the figures each one prints.
//! `KILN_FUZZ_SEED` replays a run: the seed of every round derives from it. A failure found
//! this way becomes an explicit regression test next to the code it breaks.

mod archive;
mod duration;
mod path;
mod template;

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestError, TestRunner};

/// Runs `property` on inputs from `strategy`: `cases` of them in one round, or rounds of
/// `cases` until `KILN_FUZZ_SECONDS` have passed. Prints one line of figures to stderr
/// (`fuzz <name>: …`, collected by `hack/fuzz.sh`) and panics with the minimal failing input
/// and the seed that finds it again.
pub(crate) fn run<S>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) where
    S: Strategy,
    S::Value: Debug,
{
    let budget = env_u64("KILN_FUZZ_SECONDS").map(Duration::from_secs);
    let seed = env_u64("KILN_FUZZ_SEED").unwrap_or_else(random_seed);
    let start = Instant::now();
    let (mut rounds, mut total) = (0u64, 0u64);
    loop {
        let config = Config {
            cases,
            // Regressions are kept as explicit tests, not as proptest's seed files.
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(round_seed(seed, rounds)),
            ..Config::default()
        };
        match TestRunner::new(config).run(&strategy, &property) {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => panic!(
                "fuzz {name}: property failed in round {rounds} (after {total} passing cases): \
                 {reason}\nminimal input: {input:#?}\nreplay with KILN_FUZZ_SEED={seed}"
            ),
            Err(TestError::Abort(reason)) => {
                panic!("fuzz {name}: aborted in round {rounds}: {reason} (KILN_FUZZ_SEED={seed})")
            }
        }
        rounds += 1;
        total += u64::from(cases);
        if budget.is_none_or(|budget| start.elapsed() >= budget) {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {total} cases in {secs:.1} s ({:.0}/s), 0 failures, seed {seed}",
        total as f64 / secs.max(1e-9)
    );
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a whole number"),
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    u64::from_le_bytes(bytes)
}

/// SplitMix64 of the seed and the round: independent-looking seeds, same sequence on replay.
fn round_seed(seed: u64, round: u64) -> u64 {
    let mut z = seed.wrapping_add(round.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Strings made to hit the corners of path rules: separators, dot segments, reserved
/// prefixes, control and format characters, long segments, mixed with arbitrary text.
pub(crate) fn hostile_path() -> impl Strategy<Value = String> + Clone {
    use proptest::prelude::*;
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9._ -]{1,12}",
        1 => prop::sample::select(vec![
            "..", ".", "/", "//", "\\", ":", "\0", ".kiln-tmp.", "\u{202E}", "\u{200B}",
            "\u{FEFF}", "\u{85}", "\n", "\t", "\u{7f}", "é", "e\u{301}", "日本", "🎉", "%2e",
            "%2F", "~", "*", "?",
        ])
        .prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "[a-z]{200,300}",
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
        3 => prop::collection::vec("[a-zA-Z0-9._ -]{1,20}", 1..8).prop_map(|s| s.join("/")),
        1 => prop::collection::vec("[a-z]{1,255}", 1..10).prop_map(|s| s.join("/")),
        1 => any::<String>(),
    ]
}

/// Paths that are valid (mostly short, some unicode, some deep), for building trees.
pub(crate) fn valid_path() -> impl Strategy<Value = String> + Clone {
    use proptest::prelude::*;
    let segment = prop_oneof![
        6 => "[a-z0-9_-][a-zA-Z0-9._-]{0,10}",
        1 => "[.][a-z]{1,6}",
        1 => "[éü日本語🎉 a-z]{1,8}",
        1 => "[a-z]{200,255}",
    ];
    prop::collection::vec(segment, 1..6)
        .prop_map(|s| s.join("/"))
        .prop_filter("a valid path", |p| {
            crate::workspace::JobPath::parse(p).is_ok()
        })
}
