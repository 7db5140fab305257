//! Every case of ../shared/conformance through the compiled tables.
//!
//! One test runs all cases and reports every mismatch, so a regression shows
//! its whole extent at once.

use std::path::PathBuf;

use podfence_control::compile::{BROAD_THRESHOLD, CompileOptions, compile};
use podfence_control::probe::{Probe, classify};
use podfence_control::sources::manifests;
use podfence_testkit::paths::conformance_dir;

/// Every rule as per-identity entries, every rule as a broad peer set, and
/// the default mix.
const THRESHOLDS: [usize; 3] = [usize::MAX, 0, BROAD_THRESHOLD];

/// The cases of `root/dir`, each with the cluster manifest it runs on:
/// `cluster.yaml`, or the one its `cluster` file names.
fn cases(dir: &str) -> Vec<(PathBuf, PathBuf)> {
    let root = conformance_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| {
            panic!("../shared/conformance/{dir} must exist beside the repository: {e}")
        })
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no conformance cases found in {dir}");
    cases
        .into_iter()
        .map(|case| {
            let cluster = std::fs::read_to_string(case.join("cluster"))
                .map_or_else(|_| "cluster.yaml".to_owned(), |s| s.trim().to_owned());
            (root.join(cluster), case)
        })
        .collect()
}

/// Runs every case of `dirs` through the compiled tables at every broad
/// threshold; returns the mismatches and the number of probes.
fn run(dirs: &[&str]) -> (Vec<String>, usize, usize) {
    let mut mismatches = Vec::new();
    let mut probes = 0;
    let mut count = 0;
    for (cluster, case) in dirs.iter().flat_map(|d| cases(d)) {
        count += 1;
        let mut inputs = vec![cluster];
        let policies = case.join("policies.yaml");
        if policies.exists() {
            inputs.push(policies);
        }
        let m = manifests::load(&inputs).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        assert_eq!(m.skipped_note(), None, "{}", case.display());
        let expected = std::fs::read_to_string(case.join("expected.tsv")).unwrap();
        for broad_threshold in THRESHOLDS {
            let options = CompileOptions {
                broad_threshold,
                ..CompileOptions::default()
            };
            let compiled = compile(&m.cluster, &options);
            assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
            for line in expected.lines().filter(|l| !l.trim().is_empty()) {
                let want = line.rsplit('\t').next().unwrap();
                let probe = Probe::from_line(line).unwrap();
                let verdict = classify(&m.cluster, &compiled.tables, &probe).unwrap();
                let got = if verdict.is_allowed() {
                    "allow"
                } else {
                    "deny"
                };
                probes += 1;
                if got != want {
                    let case = case.file_name().unwrap().to_string_lossy();
                    mismatches.push(format!(
                        "{case} (broad threshold {broad_threshold}): {probe}: \
                         expected {want}, got {got} ({verdict:?})"
                    ));
                }
            }
        }
    }
    (mismatches, probes, count)
}

#[test]
fn every_conformance_case_matches() {
    let (mismatches, probes, cases) = run(&["cases"]);
    assert!(
        mismatches.is_empty(),
        "{} of {probes} probes in {cases} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!("{probes} probes in {cases} cases all match");
}

#[test]
fn every_cluster_network_policy_case_matches() {
    let (mismatches, probes, cases) = run(&["cases-cnp", "cases-admin"]);
    assert!(
        mismatches.is_empty(),
        "{} of {probes} probes in {cases} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!("{probes} probes in {cases} cases all match");
}
