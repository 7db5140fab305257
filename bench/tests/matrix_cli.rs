//! `podfence-bench matrix` as a user runs it: observed verdicts in the
//! format of `podfence probe`, and the grid of the README's main job.
//! Needs root; skips otherwise.

use podfence_testkit::paths::conformance_dir;
use podfence_testkit::{Need, skip_unless};
use std::path::Path;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podfence-bench"))
}

#[test]
fn probe_format_reproduces_a_conformance_case() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    reproduce("003-deny-all-ingress-defaulted-policytypes", false);
}

/// Through a Service per pod: the same lines, the same verdicts (pods
/// reaching themselves through their Services included, which their
/// default-deny egress does not stop).
#[test]
fn probe_format_through_services_reproduces_a_conformance_case() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    reproduce("005-deny-all-egress", true);
}

fn reproduce(case: &str, via_services: bool) {
    let root = conformance_dir();
    let case = root.join("cases").join(case);
    let expected = std::fs::read_to_string(case.join("expected.tsv")).expect("expected.tsv");
    let dir = std::env::temp_dir().join(format!("pf-matrix-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let probes = dir.join("probes.tsv");
    let only_probes: String = expected
        .lines()
        .map(|l| l.rsplit_once('\t').expect("verdict column").0.to_owned() + "\n")
        .collect();
    std::fs::write(&probes, only_probes).expect("write probes");
    let out = bench()
        .arg("matrix")
        .arg("--cluster")
        .arg(root.join("cluster.yaml"))
        .arg("--manifests")
        .arg(case.join("policies.yaml"))
        .arg("--probes")
        .arg(&probes)
        .args(via_services.then_some("--via-services"))
        .output()
        .expect("podfence-bench runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{stderr}");
    assert!(stderr.contains(" 0 differ"), "{stderr}");
    assert_eq!(
        stderr.contains("through Services of their pods"),
        via_services,
        "{stderr}"
    );
}

#[test]
fn grid_of_the_demo_matches_its_policies() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let out = bench()
        .arg("matrix")
        .arg("--cluster")
        .arg(demo.join("cluster.yaml"))
        .arg("--manifests")
        .arg(demo.join("policies.yaml"))
        .args([
            "--port",
            "8000",
            "--port",
            "5432",
            "--external",
            "203.0.113.7",
        ])
        .output()
        .expect("podfence-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}: {stderr}\n{stdout}",
        out.status
    );
    assert!(stdout.contains("TCP/8000: prescribed") && stdout.contains("TCP/5432: prescribed"));
    // Six endpoints, two grids: rows carry six cells on each side.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("shop/web ")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in rows {
        let (prescribed, observed) = row.split_once('|').expect("two sides");
        assert_eq!(prescribed.split_whitespace().count(), 2 + 6, "{row}");
        assert_eq!(observed.split_whitespace().count(), 6, "{row}");
        assert!(!observed.contains('!'), "{row}");
    }
}
