//! Fuzz target: any bytes through `parse_frame` and every header view.
//! The logic lives in `exercise.rs`, which `datapath/tests/fuzz_seeds.rs`
//! also runs over the seeds on stable, without cargo-fuzz.

#![no_main]

mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exercise::run(data);
});
