//! Hostile input: every capture of tcpdump's test suite (../shared/corpus)
//! replays without a panic, a hang or unbounded memory. Unreadable files
//! (unsupported link types, corrupt records) are per-file errors; the frames
//! before a corruption are still replayed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use podfence_control::compile::{CompileOptions, compile};
use podfence_control::replay::{ReplayOptions, replay};
use podfence_control::sources::manifests;
use podfence_testkit::paths::{conformance_dir, tcpdump_corpus_dir};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn every_tcpdump_capture_replays_without_panic_hang_or_unbounded_memory() {
    let corpus = tcpdump_corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("../shared/corpus/tcpdump-tests must exist beside the repository")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 800, "corpus has {} files", files.len());
    let m = manifests::load(&[conformance_dir().join("cluster.yaml")]).unwrap();
    let tables = compile(&m.cluster, &CompileOptions::default()).tables;
    // A small conntrack: the corpus must not need more than a bounded table.
    let options = ReplayOptions {
        conntrack_entries: 1 << 12,
        keep_packet_verdicts: true,
        ..ReplayOptions::default()
    };

    let (mut packets, mut failed, mut replayed_fully) = (0u64, 0usize, 0usize);
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for (i, f) in files.iter().enumerate() {
        let options = ReplayOptions {
            workers: 1 + i % 2,
            ..options.clone()
        };
        let start = Instant::now();
        let report = replay(tables.clone(), std::slice::from_ref(f), &options);
        let took = start.elapsed();
        if took > slowest.0 {
            slowest = (took, f.clone());
        }
        assert!(
            took < Duration::from_secs(10),
            "{} took {took:?}",
            f.display()
        );
        assert_eq!(
            report.packet_verdicts.len() as u64,
            report.packets(),
            "{}",
            f.display()
        );
        let c = &report.counters;
        assert_eq!(
            c.allowed + c.denied,
            report.packets(),
            "{}: every frame gets a verdict",
            f.display()
        );
        packets += report.packets();
        if report.errors.is_empty() {
            replayed_fully += 1;
        } else {
            failed += 1;
            for e in &report.errors {
                assert!(
                    e.error.to_string().contains(&*f.to_string_lossy()),
                    "error names the file: {}",
                    e.error
                );
            }
        }
    }
    let peak = peak_rss_kib().unwrap_or(0);
    eprintln!(
        "{} files: {replayed_fully} replayed fully, {failed} with a per-file error; {packets} frames; \
         slowest {:?} ({}); peak RSS {} MiB",
        files.len(),
        slowest.0,
        slowest.1.display(),
        peak / 1024
    );
    assert!(
        replayed_fully > 400,
        "only {replayed_fully} files replayed fully"
    );
    assert!(packets > 5_000, "only {packets} frames replayed");
    assert!(
        peak < 1024 * 1024,
        "peak RSS {peak} KiB: memory is not bounded"
    );
}
