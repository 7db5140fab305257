//! Service traffic through the running agent, on a node built like a kind
//! node: pods wired like `ptp`, kube-proxy's nftables rules in the node. The
//! agent translates a pod's connection to a ClusterIP itself, so policy is
//! decided against the backend pod: the common default-deny egress plus
//! "allow DNS to the kube-dns pods" reaches DNS through its ClusterIP, an
//! egress policy that allows one Service's backends keeps the other's
//! closed, an ingress denial on a backend holds through its Service, and the
//! answers come back from the ClusterIP (a connected UDP socket takes
//! nothing else). A Service without a ready endpoint refuses at once, as
//! under kube-proxy. Needs root and `ip netns`; skips otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::{ProbeOutcome, TestbedOptions};
use podfence_control::agent::AgentOptions;
use podfence_control::probe::Probe;
use podfence_testkit::{Need, skip_unless};

/// Client x/a; DNS backend kube-system/dns; web backend y/web; db backend
/// y/db, closed for ingress. x's egress: only DNS and web's pods.
const CLUSTER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00:244::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: dns, containerPort: 5353, protocol: UDP}, {name: dns-tcp, containerPort: 5353}]
status: {phase: Running, podIPs: [{ip: 10.244.1.10}, {ip: 'fd00:244::10'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: y, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}]
status: {phase: Running, podIPs: [{ip: 10.244.1.20}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: y, labels: {app: db}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: pg, containerPort: 5432}]
status: {phase: Running, podIPs: [{ip: 10.244.1.30}]}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  selector: {k8s-app: kube-dns}
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
  - {name: dns-tcp, port: 53, targetPort: dns-tcp}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-4, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.10], nodeName: n1}]
ports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-6, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv6
endpoints: [{addresses: ['fd00:244::10'], nodeName: n1}]
ports: [{name: dns, port: 5353, protocol: UDP}, {name: dns-tcp, port: 5353}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: y}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-4, namespace: y, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.20], nodeName: n1}]
ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: y}
spec:
  selector: {app: db}
  clusterIP: 10.96.0.30
  ports: [{name: pg, port: 5432, targetPort: pg}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-4, namespace: y, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.30], nodeName: n1}]
ports: [{name: pg, port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns-and-web, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 5353}, {protocol: TCP, port: 5353}]
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}, {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-closed, namespace: y}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}
";

#[test]
fn service_traffic_is_translated_and_policy_sees_the_backends() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = podfence_control::sources::manifests::load_str(Path::new("svc.yaml"), CLUSTER)
        .expect("manifests load")
        .cluster;
    let node = LiveNode::start(
        &cluster,
        &TestbedOptions::default(),
        AgentOptions::default(),
    )
    .expect("testbed and agent start");
    let bed = node.testbed();
    assert!(
        bed.kube_proxy_rules().is_some(),
        "kube-proxy's rules are in"
    );
    let probe = |line: &str| {
        bed.probe_outcome(&Probe::from_line(line).unwrap(), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    for (line, answer) in [
        // DNS through its ClusterIP, UDP and TCP, both families: egress
        // allows the kube-dns pods, not the ClusterIP.
        ("x/a\text:10.96.0.10\tUDP\t53", "kube-system/dns"),
        ("x/a\text:10.96.0.10\tTCP\t53", "kube-system/dns"),
        ("x/a\text:fd00:96::10\tUDP\t53", "kube-system/dns"),
        // Another Service whose backends egress allows.
        ("x/a\text:10.96.0.20\tTCP\t80", "y/web"),
    ] {
        assert_eq!(
            probe(line),
            ProbeOutcome::Answered(answer.into()),
            "{line}: the backend answers, from the ClusterIP"
        );
    }
    // db's egress is allowed, its ingress closed: denied through the
    // Service as directly.
    assert_eq!(
        probe("x/a\text:10.96.0.30\tTCP\t5432"),
        ProbeOutcome::NoAnswer
    );
    assert_eq!(probe("x/a\ty/db\tTCP\t5432"), ProbeOutcome::NoAnswer);
    let counters = node.agent().status().expect("status").counters;
    assert_eq!(
        counters.service_translated, 4,
        "the four allowed connections were translated: {counters:?}"
    );
    // db's ingress denied it through the Service and directly (a SYN the
    // kernel retransmits before the probe gives up counts again).
    assert!(counters.new_denied_ingress >= 2, "{counters:?}");
    node.stop().expect("agent stops cleanly");
}

/// `--services off` leaves pods' Service traffic to kube-proxy: the egress
/// check then sees the ClusterIP, which the allow-DNS policy does not name,
/// so DNS through its Service is denied while DNS to the pod is not (what
/// every user of default-deny egress met before the agent translated).
#[test]
fn with_services_off_the_egress_check_sees_the_cluster_ip() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster = podfence_control::sources::manifests::load_str(Path::new("svc.yaml"), CLUSTER)
        .expect("manifests load")
        .cluster;
    let mut options = AgentOptions::default();
    options.services.enabled = false;
    let node = LiveNode::start(&cluster, &TestbedOptions::default(), options)
        .expect("testbed and agent start");
    let bed = node.testbed();
    let probe = |line: &str| {
        bed.probe_outcome(&Probe::from_line(line).unwrap(), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    assert_eq!(
        probe("x/a\text:10.96.0.10\tUDP\t53"),
        ProbeOutcome::NoAnswer
    );
    assert_eq!(
        probe("x/a\tkube-system/dns\tUDP\t5353"),
        ProbeOutcome::Answered("kube-system/dns".into())
    );
    // A pod free to reach web's ClusterIP: kube-proxy translates it in the
    // kernel, which hands the connection back through the host port; web's
    // reply, addressed to the dns pod, goes back to the host port too (the
    // reply rule), where the kernel restores the ClusterIP as its source.
    assert_eq!(
        probe("kube-system/dns\text:10.96.0.20\tTCP\t80"),
        ProbeOutcome::Answered("y/web".into())
    );
    let counters = node.agent().status().expect("status").counters;
    assert_eq!(counters.service_translated, 0, "{counters:?}");
    node.stop().expect("agent stops cleanly");
}

/// A Service whose only endpoint is not ready (nor serving): no usable
/// endpoint anywhere.
const NOT_READY: &str = "\
apiVersion: v1
kind: Service
metadata: {name: down, namespace: y}
spec:
  selector: {app: down}
  clusterIPs: [10.96.0.40, 'fd00:96::40']
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: down-4, namespace: y, labels: {kubernetes.io/service-name: down}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.20], nodeName: n1, conditions: {ready: false, serving: false}}]
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
";

/// A pod's attempt on a Service without a usable endpoint is refused by the
/// agent with a port unreachable, as kube-proxy's `reject` does: `connect`
/// fails with ECONNREFUSED and a connected UDP socket gets it, at once
/// rather than after a timeout, in both families.
#[test]
fn a_service_without_ready_endpoints_refuses_at_once() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let manifests = format!("{CLUSTER}---\n{NOT_READY}");
    let cluster = podfence_control::sources::manifests::load_str(Path::new("svc.yaml"), &manifests)
        .expect("manifests load")
        .cluster;
    let node = LiveNode::start(
        &cluster,
        &TestbedOptions::default(),
        AgentOptions::default(),
    )
    .expect("testbed and agent start");
    let bed = node.testbed();
    let timeout = Duration::from_secs(5);
    for line in [
        "x/a\text:10.96.0.40\tTCP\t80",
        "x/a\text:10.96.0.40\tUDP\t53",
        "x/a\text:fd00:96::40\tTCP\t80",
        "x/a\text:fd00:96::40\tUDP\t53",
    ] {
        let start = Instant::now();
        let outcome = bed
            .probe_outcome(&Probe::from_line(line).unwrap(), timeout)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        let took = start.elapsed();
        assert_eq!(outcome, ProbeOutcome::Refused, "{line}");
        assert!(
            took < Duration::from_secs(1),
            "{line}: refused after {took:?}, not at once"
        );
    }
    let counters = node.agent().status().expect("status").counters;
    assert!(
        counters.service_no_endpoint >= 4 && counters.service_rejects >= 4,
        "every attempt refused and answered: {counters:?}"
    );
    assert_eq!(counters.service_translated, 0, "{counters:?}");
    node.stop().expect("agent stops cleanly");
}
