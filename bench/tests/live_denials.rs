//! What the agent denies, explained live: the deny log names the pods and
//! the isolating policy, the per-policy metric counts, and the pcapng
//! capture reads back in tshark with the decision as packet comment.
//! Needs root; skips otherwise.

mod common;

use common::AgentProcess;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podfence_bench::testbed::{ProbeOutcome, TestbedOptions};
use podfence_control::probe::Probe;
use podfence_testkit::{Need, skip_unless};
use serde_json::Value;

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: c, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: isolate-c}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
";

#[test]
fn denials_are_logged_counted_and_captured() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "denials");
    let (node, dir) = (bed.node_netns().to_owned(), &dir.0);
    let (log, capture) = (dir.join("deny.log"), dir.join("denied.pcapng"));
    let source = ["--manifests".to_owned(), manifests.display().to_string()];
    let agent = AgentProcess::start(
        &node,
        &source,
        dir,
        &[
            "--deny-log",
            log.to_str().unwrap(),
            "--capture-denied",
            capture.to_str().unwrap(),
        ],
    );
    let probe = Probe::from_line("x/a\tx/c\tTCP\t80").expect("probe");
    let attempts = 3;
    for _ in 0..attempts {
        let outcome = bed
            .probe_outcome(&probe, Duration::from_millis(400))
            .expect("probe runs");
        assert_eq!(outcome, ProbeOutcome::NoAnswer, "denied");
    }
    // The reporter drains every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let (_, metrics) = common::http_get(&node, "127.0.0.1:9465", "/metrics");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "podfence_denials_total{direction=\"ingress\",kind=\"NetworkPolicy\",namespace=\"x\",policy=\"isolate-c\",tier=\"\",rule=\"\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("denials by policy in\n{metrics}"));
    assert!(counted >= attempts, "{counted} denials counted");
    assert!(
        metrics.contains("podfence_conntrack_capacity 262144\n"),
        "{metrics}"
    );
    assert!(metrics.contains("podfence_conntrack_entries "), "{metrics}");
    check_control_socket(&dir.join("control.sock"));
    agent.terminate();

    check_log(&log, counted);
    check_capture(&capture, counted);
}

/// `podfence status` and `podfence explain --agent` answer from the agent.
fn check_control_socket(socket: &Path) {
    let ask = |args: &[&str]| {
        let out = Command::new(common::podfence())
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("podfence runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = ask(&["status"]);
    for needle in [
        "table generation 1\n",
        "workers 1\n",
        "pod addresses enforced 10.244.1.1 10.244.1.3\n",
        "ingress x/isolate-c\n",
    ] {
        assert!(status.contains(needle), "{needle:?} in\n{status}");
    }
    let explained = ask(&["explain", "--agent", "x/a", "x/c", "TCP", "80"]);
    assert!(
        explained.starts_with("deny: ")
            && explained.contains("isolated for ingress by x/isolate-c")
            && explained.contains("(table generation 1)"),
        "{explained}"
    );
    let allowed = ask(&["explain", "--agent", "x/c", "x/a", "TCP", "80"]);
    assert!(allowed.starts_with("allow: "), "{allowed}");
}

/// The log: one line per attempt, or fewer with the rest counted.
fn check_log(log: &Path, counted: u64) {
    let text = std::fs::read_to_string(log).expect("deny log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no deny log line");
    let held_back: u64 = lines
        .iter()
        .filter_map(|l| l["held_back_before"].as_u64())
        .sum();
    assert!(lines.len() as u64 + held_back <= counted);
    let first = &lines[0];
    assert_eq!(first["event"], "connection denied", "{first}");
    assert_eq!(first["node"], "node-1");
    assert_eq!(first["denied_by"], "ingress");
    assert_eq!(first["src"]["pod"], "x/a");
    assert_eq!(first["dst"]["pod"], "x/c");
    assert_eq!(first["dst"]["ip"], "10.244.1.3");
    assert_eq!(first["protocol"], "TCP");
    assert_eq!(first["dst_port"], 80);
    assert_eq!(first["ingress"]["verdict"], "deny");
    assert_eq!(first["ingress"]["isolated_by"][0], "x/isolate-c");
    assert_eq!(first["egress"]["reason"], "no policy isolates it");
}

/// The capture, as tshark reads it: every denied packet, with the decision.
fn check_capture(capture: &Path, counted: u64) {
    let out = Command::new("tshark")
        .args(["-r", capture.to_str().unwrap(), "-T", "fields"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("tshark is installed (scripts/install-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packets = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = packets.lines().collect();
    assert_eq!(
        rows.len() as u64,
        counted,
        "every denied packet captured:\n{packets}"
    );
    for row in rows {
        assert!(
            row.starts_with("10.244.1.1\t10.244.1.3\t80\t")
                && row.contains("ingress isolated by x/isolate-c, no rule matches"),
            "{row}"
        );
    }
}

#[test]
fn a_namespace_in_audit_mode_is_reported_not_enforced() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let text = CLUSTER.replace(
        "labels: {kubernetes.io/metadata.name: x}",
        "labels: {kubernetes.io/metadata.name: x, podfence.io/enforcement: audit}",
    );
    let (bed, dir, manifests) =
        common::testbed_with_manifests(&text, &TestbedOptions::default(), "audit");
    let (node, dir) = (bed.node_netns().to_owned(), &dir.0);
    let log = dir.join("deny.log");
    let source = ["--manifests".to_owned(), manifests.display().to_string()];
    let agent = AgentProcess::start(&node, &source, dir, &["--deny-log", log.to_str().unwrap()]);
    let probe = Probe::from_line("x/a\tx/c\tTCP\t80").expect("probe");
    let outcome = bed
        .probe_outcome(&probe, Duration::from_millis(700))
        .expect("probe runs");
    // Answered or refused: it reached the pod.
    assert_ne!(
        outcome,
        ProbeOutcome::NoAnswer,
        "audit mode passes what policy would deny"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, metrics) = common::http_get(&node, "127.0.0.1:9465", "/metrics");
    assert!(
        metrics.contains(
            "podfence_audit_denials_total{direction=\"ingress\",kind=\"NetworkPolicy\",namespace=\"x\",policy=\"isolate-c\",tier=\"\",rule=\"\"} 1\n"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("podfence_denials_total{"), "{metrics}");
    agent.terminate();
    let text = std::fs::read_to_string(&log).expect("deny log");
    let line: Value = serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(
        line["event"],
        "connection would be denied (audit mode: passed)"
    );
    assert_eq!(line["denied_by"], "ingress");
    assert_eq!(line["ingress"]["verdict"], "deny (audit: passed)");
    assert_eq!(line["ingress"]["isolated_by"][0], "x/isolate-c");
}
