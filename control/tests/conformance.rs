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

#[test]
fn every_conformance_case_matches() {
    let root = conformance_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join("cases"))
        .expect("../shared/conformance/cases must exist beside the repository")
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no conformance cases found");
    let mut mismatches = Vec::new();
    let mut probes = 0;
    for case in &cases {
        let mut inputs = vec![root.join("cluster.yaml")];
        let policies = case.join("policies.yaml");
        if policies.exists() {
            inputs.push(policies);
        }
        let m = manifests::load(&inputs).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
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
    assert!(
        mismatches.is_empty(),
        "{} of {probes} probes in {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    eprintln!("{probes} probes in {} cases all match", cases.len());
}
