//! kube-proxy's nftables rules in the testbed's node, with no podfence agent:
//! connections to a ClusterIP reach the backend pod through the kernel's
//! DNAT (TCP, and UDP on a connected socket, so the reply must come back
//! from the ClusterIP), from another pod, from the backend itself
//! (hairpin) and from the node; a Service without endpoints is refused, as
//! kube-proxy's `no-endpoint-services` map and `reject-chain` make it; IPv6
//! too; and a backend on a second node, across the uplink. Needs root and
//! `ip netns`; skips otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedError, TestbedOptions};
use podfence_control::model::Protocol;
use podfence_control::probe::Probe;
use podfence_testkit::{Need, skip_unless};

const CLUSTER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
status: {phase: Running, podIPs: [{ip: 10.244.1.3}, {ip: 'fd00:244::3'}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: alt, port: 81, targetPort: 9090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.3], nodeName: n1}]
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
- {name: alt, port: 9090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ['fd00:244::3'], nodeName: n1}]
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
- {name: alt, port: 9090}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec:
  selector: {app: nothing}
  clusterIP: 10.96.0.20
  ports:
  - {name: t, port: 80}
  - {name: u, port: 53, protocol: UDP}
";

fn nft_list(netns: &str, family: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "nft",
            "list",
            "table",
            family,
            "kube-proxy",
        ])
        .output()
        .expect("nft runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cluster_ips_through_kube_proxys_rules() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = podfence_control::sources::manifests::load_str(Path::new("svc.yaml"), CLUSTER)
        .expect("manifests load")
        .cluster;
    let bed = Testbed::build(&cluster, &TestbedOptions::default()).expect("testbed builds");
    let rules = bed.kube_proxy_rules().expect("Services: rules installed");
    assert!(rules.service_ports >= 4, "{rules:?}");

    // The kernel holds kube-proxy's shape.
    let v4 = nft_list(bed.node_netns(), "ip");
    for part in [
        "map service-ips",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "10.96.0.10 . tcp . 80 : goto service-",
        "-x/web/tcp/http",
        "numgen random mod 1 vmap",
        "dnat to 10.244.1.3:8080",
        "meta mark set meta mark | 0x00004000",
        "10.96.0.20 . tcp . 80 comment \"x/empty:t\" : goto reject-chain",
    ] {
        assert!(v4.contains(part), "{part} not in:\n{v4}");
    }
    assert!(nft_list(bed.node_netns(), "ip6").contains("dnat to [fd00:244::3]:8080"));

    let timeout = Duration::from_secs(2);
    let probe = |line: &str| {
        bed.probe_outcome(&Probe::from_line(line).unwrap(), timeout)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let answered = ProbeOutcome::Answered("x/b".into());

    // Pod to ClusterIP: DNAT to the backend, its answer back from the
    // ClusterIP (a connected UDP socket takes nothing else).
    for line in [
        "x/a\text:10.96.0.10\tTCP\t80",
        "x/a\text:10.96.0.10\tUDP\t53",
        // A numeric targetPort that is no named container port: the
        // testbed serves the slice's port.
        "x/a\text:10.96.0.10\tTCP\t81",
        // Hairpin: the backend through its own Service (masqueraded).
        "x/b\text:10.96.0.10\tTCP\t80",
        "x/b\text:10.96.0.10\tUDP\t53",
        // IPv6.
        "x/a\text:fd00:96::10\tTCP\t80",
        "x/a\text:fd00:96::10\tUDP\t53",
    ] {
        assert_eq!(probe(line), answered, "{line}");
    }

    // The node's own traffic (nat-output, masqueraded).
    for (protocol, ip, port) in [
        (Protocol::Tcp, "10.96.0.10", 80),
        (Protocol::Udp, "10.96.0.10", 53),
        (Protocol::Tcp, "fd00:96::10", 80),
        (Protocol::Udp, "fd00:96::10", 53),
    ] {
        assert_eq!(
            bed.probe_from_node(protocol, ip.parse().unwrap(), port, timeout)
                .unwrap(),
            answered,
            "node to {ip} {protocol} {port}"
        );
    }

    // No endpoints: kube-proxy rejects (ICMP port unreachable), from a pod
    // and from the node; a port the ClusterIP does not serve too
    // (cluster-ips-check).
    for line in [
        "x/a\text:10.96.0.20\tTCP\t80",
        "x/a\text:10.96.0.20\tUDP\t53",
        "x/a\text:10.96.0.10\tTCP\t8443",
    ] {
        assert_eq!(probe(line), ProbeOutcome::Refused, "{line}");
    }
    let empty = "10.96.0.20".parse().unwrap();
    assert_eq!(
        bed.probe_from_node(Protocol::Tcp, empty, 80, timeout)
            .unwrap(),
        ProbeOutcome::Refused,
        "node to the empty Service over TCP"
    );
    // The node's own datagram is rejected on the output hook: the kernel
    // fails the send itself (EPERM) besides sending the ICMP error.
    match bed.probe_from_node(Protocol::Udp, empty, 53, timeout) {
        Err(TestbedError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => panic!("node to the empty Service over UDP: {other:?}"),
    }
}

#[test]
fn no_rules_when_off_or_without_services() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = podfence_control::sources::manifests::load_str(Path::new("svc.yaml"), CLUSTER)
        .expect("manifests load")
        .cluster;
    let bed = Testbed::build(
        &cluster,
        &TestbedOptions {
            kube_proxy: podfence_bench::testbed::KubeProxyMode::Off,
            ..TestbedOptions::default()
        },
    )
    .expect("testbed builds");
    assert!(bed.kube_proxy_rules().is_none() && bed.service_ips().is_empty());
    let listed = Command::new("ip")
        .args(["netns", "exec", bed.node_netns(), "nft", "list", "tables"])
        .output()
        .expect("nft runs");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("kube-proxy"));
}

/// n1: x/a; n2: x/r, the backend of Service x/r.
const TWO_NODES: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244:1::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: x, labels: {app: r}}
spec:
  nodeName: n2
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]
status: {phase: Running, podIPs: [{ip: 10.244.2.5}, {ip: 'fd00:244:2::5'}]}
---
apiVersion: v1
kind: Service
metadata: {name: r, namespace: x}
spec:
  selector: {app: r}
  clusterIP: 10.96.0.30
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: r-4, namespace: x, labels: {kubernetes.io/service-name: r}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.5], nodeName: n2}]
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
";

/// Two nodes, kube-proxy alone: n1's pod reaches n2's pod directly and
/// through its ClusterIP (DNAT in n1, across the uplink), n2's pod reaches
/// itself through it (kube-proxy's rules in n2), and n1 itself reaches it.
#[test]
fn a_second_node_behind_the_uplink() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = podfence_control::sources::manifests::load_str(Path::new("two.yaml"), TWO_NODES)
        .expect("manifests load")
        .cluster;
    let bed = Testbed::build(
        &cluster,
        &TestbedOptions {
            remote_node: Some("n2".into()),
            ..TestbedOptions::default()
        },
    )
    .expect("testbed builds");
    let remote = bed.remote_netns().expect("a second node").to_owned();
    assert_eq!(bed.pods()["x/r"].node_netns, remote);
    assert_eq!(bed.pods()["x/a"].node_netns, bed.node_netns());
    assert_eq!(bed.node_name(), Some("n1"));
    // Both nodes have kube-proxy's rules, each with the Service's endpoint.
    for netns in [bed.node_netns(), remote.as_str()] {
        assert!(
            nft_list(netns, "ip").contains("dnat to 10.244.2.5:8080"),
            "{netns}"
        );
    }
    let timeout = Duration::from_secs(2);
    let probe = |line: &str| {
        bed.probe_outcome(&Probe::from_line(line).unwrap(), timeout)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let r = ProbeOutcome::Answered("x/r".into());
    for line in [
        "x/a\tx/r\tTCP\t8080",
        "x/r\tx/a\tTCP\t8080",
        "x/a\text:10.96.0.30\tTCP\t80",
        "x/a\text:10.96.0.30\tUDP\t53",
        "x/r\text:10.96.0.30\tTCP\t80",
    ] {
        let want = if line.starts_with("x/r\tx/a") {
            ProbeOutcome::Answered("x/a".into())
        } else {
            r.clone()
        };
        assert_eq!(probe(line), want, "{line}");
    }
    assert_eq!(
        bed.probe_from_node(Protocol::Tcp, "10.96.0.30".parse().unwrap(), 80, timeout)
            .unwrap(),
        r,
        "node n1 to the ClusterIP"
    );
}
