//! The node a pod runs on reaches the pod whatever policy says, live: the
//! agent counts every address of its host as the node's. The exception is
//! NetworkPolicy's and covers ingress only: the pod's own connections to its
//! node, and any other address, stay subject to policy. Needs root; skips
//! otherwise.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::{TestbedOptions, in_netns};
use podfence_control::agent::AgentOptions;
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
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

/// The testbed node's address (on its link to the outside namespace).
const NODE: &str = "169.254.100.1";

/// Whether a TCP connection attempt from namespace `netns` (each of which
/// has one address to send from) got an answer: accepted or refused; a
/// timeout means it was dropped.
fn answered(netns: &str, dst: SocketAddr) -> bool {
    in_netns(netns, || {
        match TcpStream::connect_timeout(&dst, Duration::from_millis(800)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e),
        }
    })
    .expect("connection attempt")
}

#[test]
fn under_deny_all_the_node_reaches_its_pod_and_nothing_else_does() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = manifests::load_str(std::path::Path::new("inline"), CLUSTER)
        .expect("loads")
        .cluster;
    let node = LiveNode::start(
        &cluster,
        &TestbedOptions::default(),
        AgentOptions::default(),
    )
    .expect("testbed and agent start");
    let bed = node.testbed();
    let pod = &bed.pods()["x/a"];
    let pod_addr = SocketAddr::new(pod.ips[0], 80);
    let node_addr = SocketAddr::new(NODE.parse().unwrap(), 9);
    assert!(
        answered(bed.node_netns(), pod_addr),
        "the node could not reach its pod"
    );
    assert!(
        !answered(&pod.netns, node_addr),
        "the pod reached its node although deny-all isolates it for egress"
    );
    assert!(
        !answered(bed.outside_netns(), pod_addr),
        "an outside address reached a pod isolated by deny-all"
    );
    node.stop().expect("agent stops cleanly");
}
