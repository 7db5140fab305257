//! The `parse_frame` fuzz target's logic on stable, as a plain test: every
//! committed seed, then a few million deterministic mutations of them and
//! random inputs. A panic anywhere fails the test.
//!
//! The seed files are generated from `common::seeds()`; after changing
//! them, regenerate with `PODFENCE_WRITE_SEEDS=1 cargo test -p
//! podfence-datapath --test fuzz_seeds`.

mod common;
#[path = "../fuzz/fuzz_targets/exercise.rs"]
mod exercise;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podfence_datapath::flow::Parsed;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/parse_frame")
}

fn seed_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(seed_dir())
        .expect("seed directory")
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("seed file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn seed_files_match_the_builders() {
    let dir = seed_dir();
    let built = common::seeds();
    if std::env::var_os("PODFENCE_WRITE_SEEDS").is_some() {
        for (name, bytes) in &built {
            std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
        }
    }
    let files = seed_files();
    for (name, bytes) in &built {
        let file = format!("{name}.bin");
        let on_disk = files.iter().find(|(n, _)| *n == file);
        assert_eq!(
            on_disk.map(|(_, b)| b),
            Some(bytes),
            "{file} is missing or stale: run with PODFENCE_WRITE_SEEDS=1"
        );
    }
    assert!(files.len() >= built.len());
}

#[test]
fn every_seed_parses_as_its_name_says() {
    let files = seed_files();
    assert!(
        files.len() >= 30,
        "expected the committed seeds, found {}",
        files.len()
    );
    for (name, bytes) in &files {
        let result = exercise::run(bytes).expect("seeds are not empty");
        if name.starts_with("bad_") {
            assert!(result.is_err(), "{name}: {result:?}");
        } else {
            let parsed = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let is_ip = matches!(parsed, Parsed::Ip(_));
            assert_eq!(is_ip, !name.contains("arp"), "{name}");
        }
    }
}

#[test]
fn every_prefix_of_every_seed() {
    for (name, bytes) in seed_files() {
        for len in 0..bytes.len() {
            exercise::run(&bytes[..len]);
        }
        // Every link type over every seed frame, too.
        for sel in 0..4u8 {
            let mut input = bytes.clone();
            input[0] = sel;
            assert!(exercise::run(&input).is_some(), "{name}");
        }
    }
}

/// SplitMix64: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Values that sit on length and type boundaries.
const INTERESTING: [u8; 14] = [
    0, 1, 4, 5, 6, 8, 0x0f, 0x40, 0x45, 0x4f, 0x60, 0x7f, 0x80, 0xff,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        if input.is_empty() {
            input.push(rng.byte());
            continue;
        }
        let at = rng.below(input.len());
        match rng.below(6) {
            0 => input[at] ^= 1 << rng.below(8),
            1 => input[at] = rng.byte(),
            2 => input[at] = INTERESTING[rng.below(INTERESTING.len())],
            3 => input.truncate(at.max(1)),
            4 => input.insert(at, rng.byte()),
            _ => {
                let end = (at + 2).min(input.len());
                input.drain(at..end);
            }
        }
    }
}

#[test]
fn mutated_and_random_inputs_do_not_panic() {
    const MAX_INPUTS: u64 = 3_000_000;
    let budget = Duration::from_secs(2);
    let seeds: Vec<Vec<u8>> = seed_files().into_iter().map(|(_, b)| b).collect();
    let mut rng = Rng(0x5eed_f00d);
    let mut input = Vec::with_capacity(256);
    let mut outcomes = [0u64; 3];
    let start = Instant::now();
    let mut done = 0;
    while done < MAX_INPUTS {
        if done % 4096 == 0 && start.elapsed() > budget {
            break;
        }
        input.clear();
        if rng.below(8) == 0 {
            let len = rng.below(128);
            input.extend((0..len).map(|_| rng.byte()));
        } else {
            input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &mut input);
        }
        // Every header view on one input in eight, parse_frame on all.
        let result = if done % 8 == 0 {
            exercise::run(&input)
        } else {
            exercise::parse_checked(&input)
        };
        let slot = match result {
            Some(Ok(Parsed::Ip(_))) => 0,
            Some(Ok(Parsed::NotIp { .. })) => 1,
            Some(Err(_)) | None => 2,
        };
        outcomes[slot] += 1;
        done += 1;
    }
    assert!(done >= 10_000, "only {done} inputs in {budget:?}");
    // The mutations must reach both the accepting and the rejecting paths.
    assert!(outcomes[0] > done / 20, "{outcomes:?}");
    assert!(outcomes[2] > done / 20, "{outcomes:?}");
    eprintln!(
        "{done} inputs in {:?}: {outcomes:?} (ip, not ip, error)",
        start.elapsed()
    );
}
