//! The `podfence run` process in a testbed node: enforcement, what happens
//! when it is killed (fail closed by default, open when configured), that a
//! restart takes over from a crashed run, and that a clean stop, or a start
//! that fails, leaves the node as it found it. Needs root; skips otherwise.

mod common;

use common::{AgentProcess, node_state};

use std::path::Path;
use std::time::Duration;

use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions};
use podfence_control::model::Protocol;
use podfence_control::probe::Probe;
use podfence_testkit::{Need, skip_unless};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}, {ip: "fd00:10:244:1::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {pod: b}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: "fd00:10:244:1::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: c, labels: {pod: c}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}, {ip: "fd00:10:244:1::3"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: isolate-c}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
"#;

fn manifests_arg(path: &Path) -> [String; 2] {
    ["--manifests".into(), path.display().to_string()]
}

fn outcome(bed: &Testbed, line: &str) -> ProbeOutcome {
    bed.probe_outcome(
        &Probe::from_line(line).expect("probe"),
        Duration::from_millis(700),
    )
    .expect("probe runs")
}

/// Probes until the probe is answered (or not), for at most 10 s.
fn await_outcome(bed: &Testbed, line: &str, answer: bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while answered(&outcome(bed, line)) != answer {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
    }
}

fn answered(o: &ProbeOutcome) -> bool {
    matches!(o, ProbeOutcome::Answered(_))
}

#[test]
fn kill_fail_modes_restart_and_clean_stop() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let outside: std::net::IpAddr = "2001:db8::10".parse().expect("address");
    let options = TestbedOptions {
        external: vec![outside],
        external_ports: vec![(Protocol::Tcp, 80)],
        ..TestbedOptions::default()
    };
    let (bed, dir, manifests) = common::testbed_with_manifests(CLUSTER, &options, "agent");
    let (node, dir) = (bed.node_netns().to_owned(), &dir.0);
    let (a_b, a_c) = ("x/a\tx/b\tTCP\t80", "x/a\tx/c\tTCP\t80");
    let before = node_state(&node);
    assert!(answered(&outcome(&bed, a_b)) && answered(&outcome(&bed, a_c)));

    // Enforcing: a reaches b, c is isolated; over IPv6 through the host
    // port too.
    let agent = AgentProcess::start(&node, &manifests_arg(&manifests), dir, &[]);
    assert!(answered(&outcome(&bed, a_b)), "allowed through the agent");
    assert_eq!(outcome(&bed, a_c), ProbeOutcome::NoAnswer, "denied");
    let (a_out, out_b, out_c) = (
        "x/a\text:2001:db8::10\tTCP\t80",
        "ext:2001:db8::10\tx/b\tTCP\t80",
        "ext:2001:db8::10\tx/c\tTCP\t80",
    );
    assert!(answered(&outcome(&bed, a_out)), "pod to outside, IPv6");
    assert!(answered(&outcome(&bed, out_b)), "outside to pod, IPv6");
    assert_eq!(outcome(&bed, out_c), ProbeOutcome::NoAnswer, "IPv6 denied");

    // The manifests are watched: the policy removed from the file, then
    // put back.
    let without_policy = CLUSTER
        .split("---\napiVersion: networking.k8s.io/v1")
        .next()
        .unwrap();
    std::fs::write(&manifests, without_policy).expect("rewrite manifests");
    await_outcome(&bed, a_c, true, "policy removed from the file");
    std::fs::write(&manifests, CLUSTER).expect("rewrite manifests");
    await_outcome(&bed, a_c, false, "policy back in the file");

    // Killed: nothing passes (fail closed).
    agent.kill();
    assert_eq!(outcome(&bed, a_b), ProbeOutcome::NoAnswer, "fail closed");

    // A restart replaces what the dead one left, and traffic resumes.
    let agent = AgentProcess::start(&node, &manifests_arg(&manifests), dir, &[]);
    assert!(answered(&outcome(&bed, a_b)), "resumes after restart");
    assert_eq!(outcome(&bed, a_c), ProbeOutcome::NoAnswer);
    agent.terminate();
    assert_eq!(
        node_state(&node),
        before,
        "a clean stop leaves nothing behind"
    );
    assert!(answered(&outcome(&bed, a_c)), "the kernel routes again");

    // Fail open: killed, traffic bypasses policy; restarted, enforced again.
    let open = ["--fail-mode", "open"];
    let agent = AgentProcess::start(&node, &manifests_arg(&manifests), dir, &open);
    assert_eq!(outcome(&bed, a_c), ProbeOutcome::NoAnswer);
    agent.kill();
    assert!(answered(&outcome(&bed, a_b)), "fail open passes allowed");
    assert!(answered(&outcome(&bed, a_c)), "fail open passes denied");
    let agent = AgentProcess::start(&node, &manifests_arg(&manifests), dir, &open);
    assert_eq!(outcome(&bed, a_c), ProbeOutcome::NoAnswer, "enforced again");
    agent.terminate();
    assert_eq!(node_state(&node), before, "nothing left behind");
}

/// `CLUSTER` as the kubelet keeps rewriting pod a: an annotation, its
/// resourceVersion, readiness and restart count from `n`, labels unchanged.
fn cluster_with_status(n: u32) -> String {
    let ready = if n.is_multiple_of(2) { "True" } else { "False" };
    CLUSTER
        .replace(
            "metadata: {namespace: x, name: a, labels: {pod: a}}",
            &format!(
                "metadata: {{namespace: x, name: a, labels: {{pod: a}}, resourceVersion: '{n}', \
                 annotations: {{restarted: '{n}'}}}}"
            ),
        )
        .replace(
            "status: {phase: Running, podIP: 10.244.1.1,",
            &format!(
                "status: {{conditions: [{{type: Ready, status: '{ready}'}}], \
                 containerStatuses: [{{name: c, image: i, imageID: '', ready: {}, restartCount: {n}}}], \
                 phase: Running, podIP: 10.244.1.1,",
                n.is_multiple_of(2)
            ),
        )
}

/// Rewrites of the manifests that change only what policy ignores publish
/// no generation; a label change publishes one.
#[test]
fn manifest_rewrites_of_what_policy_ignores_publish_nothing() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "noop");
    let agent = AgentProcess::start(bed.node_netns(), &manifests_arg(&manifests), &dir.0, &[]);
    let a_c = "x/a\tx/c\tTCP\t80";
    assert_eq!(outcome(&bed, a_c), ProbeOutcome::NoAnswer, "c isolated");
    assert_eq!(agent.generation(), 1);
    for n in 1..=2 {
        let rewritten = cluster_with_status(n);
        assert_ne!(rewritten, CLUSTER, "the status rewrite applies");
        std::fs::write(&manifests, rewritten).expect("rewrite manifests");
        // Long past the 100 ms the watch lets changes settle.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(agent.generation(), 1, "rewrite {n} published nothing");
    }
    std::fs::write(
        &manifests,
        CLUSTER.replace("labels: {pod: c}", "labels: {pod: c2}"),
    )
    .expect("rewrite manifests");
    await_outcome(&bed, a_c, true, "c relabelled out of the policy");
    assert_eq!(agent.generation(), 2, "one generation for the label");
    agent.terminate();
}

/// A start that fails after the agent made its host-port pair (here: the
/// reverse-path filter cannot be written because /proc/sys is read-only,
/// as in a container that did not remount it) exits with the reason and
/// leaves the node as it was.
#[test]
fn a_failed_start_leaves_nothing_behind() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let (bed, _dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "failed-start");
    let node = bed.node_netns().to_owned();
    let before = node_state(&node);
    // A mount namespace of its own with /proc/sys read-only, then the node.
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         exec ip netns exec {node} {} run --manifests {} --node-name node-1 \
         --control-socket none --no-metrics",
        common::podfence().display(),
        manifests.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent started on a read-only /proc/sys: {stderr}"
    );
    assert!(
        stderr.contains("rp_filter"),
        "the reason is named: {stderr}"
    );
    assert_eq!(node_state(&node), before, "the node is as it was: {stderr}");
}
