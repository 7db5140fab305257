//! A new policy generation while a flow is open: by default the agent cuts
//! it on its next packet; with `revalidate` off it keeps it. New flows
//! follow the new policy either way. Needs root; skips otherwise.

use std::time::Duration;

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::{ProbeOutcome, TestbedOptions};
use podfence_control::agent::AgentOptions;
use podfence_control::index::Cluster;
use podfence_control::probe::Endpoint;
use podfence_control::sources::manifests;
use podfence_testkit::{Need, skip_unless};

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec:
  containers:
  - name: c
    ports: [{name: u, containerPort: 80, protocol: UDP}]
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {pod: b}}
spec:
  containers:
  - name: c
    ports: [{name: u, containerPort: 80, protocol: UDP}]
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
";

const DENY_INGRESS_TO_B: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: isolate-b}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
";

fn cluster(policies: bool) -> Cluster {
    let text = if policies {
        format!("{CLUSTER}---{DENY_INGRESS_TO_B}")
    } else {
        CLUSTER.to_owned()
    };
    manifests::load_str(std::path::Path::new("inline"), &text)
        .expect("loads")
        .cluster
}

/// Opens a flow a → b, publishes a policy denying it, and says whether
/// the open flow and a new one still get answers.
fn open_flow_after_deny(revalidate: bool) -> (bool, bool) {
    let mut options = AgentOptions::default();
    options.worker.revalidate = revalidate;
    let node = LiveNode::start(&cluster(false), &TestbedOptions::default(), options)
        .expect("testbed and agent start");
    let (a, b) = (
        Endpoint::Pod {
            namespace: "x".into(),
            name: "a".into(),
        },
        Endpoint::Pod {
            namespace: "x".into(),
            name: "b".into(),
        },
    );
    let bed = node.testbed();
    let timeout = Duration::from_millis(800);
    let exchange = |src_port| {
        bed.udp_exchange(&a, &b, (src_port, 80), timeout)
            .expect("udp")
    };
    assert_eq!(
        exchange(40_000),
        ProbeOutcome::Answered("x/b".into()),
        "allowed before the policy"
    );
    let generation = node.agent().publish(&cluster(true)).expect("publish");
    assert_eq!(generation, 2);
    let open = matches!(exchange(40_000), ProbeOutcome::Answered(_));
    let new = matches!(exchange(40_001), ProbeOutcome::Answered(_));
    let status = node.agent().status().expect("status");
    node.stop().expect("clean stop");
    if revalidate {
        assert!(status.counters.revoked > 0, "{:?}", status.counters);
    }
    (open, new)
}

#[test]
fn new_generation_cuts_open_flows_on_their_next_packet() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    assert_eq!(open_flow_after_deny(true), (false, false));
}

#[test]
fn new_generation_keeps_open_flows_when_configured() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    assert_eq!(open_flow_after_deny(false), (true, false));
}
