//! One small test per NetworkPolicy rule of the API reference, each with
//! allowed and denied probes, each probe checked against both the compiled
//! tables and the reference evaluator.
//!
//! Every test loads the same small cluster ([`CLUSTER`]) plus its own
//! policies, written as manifests.

mod reference;

use std::net::IpAddr;
use std::path::Path;

use podfence_control::compile::{CompileOptions, Locality, compile};
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{Endpoint, Probe, ProbeError, classify, resolve};
use podfence_control::sources::manifests;
use podfence_datapath::{Decision, Tables, Verdict};
use reference::Side;

/// Namespaces `x` (env=prod, team=blue), `y` (env=dev) and `z` (no labels)
/// have objects; `w` has pods but no Namespace object.
///
/// | pod      | labels             | addresses              | named ports                         |
/// |----------|--------------------|------------------------|-------------------------------------|
/// | x/a      | app=web, tier=fe   | 10.0.1.1, fd00::1:1    | http 8080/TCP, dns 53/UDP, metrics 9090/TCP |
/// | x/b      | app=db             | 10.0.1.2, fd00::1:2    | http 8081/TCP, metrics 9090/UDP     |
/// | x/c      | (none)             | 10.0.1.3               |                                     |
/// | x/d      | app=web, tier=be   | 10.0.1.4               | http 8080/TCP                       |
/// | x/host   | app=web, hostNetwork | node n2, 10.0.9.2    | http 8080/TCP                       |
/// | x/done   | app=web, Succeeded | 10.0.1.9               | http 8080/TCP                       |
/// | x/new    | app=web, Pending   | (none)                 |                                     |
/// | y/a      | app=web, tier=fe   | 10.0.2.1, fd00::2:1    | http 8080/TCP                       |
/// | y/b      | app=db             | 10.0.2.2               |                                     |
/// | y/six    | app=db             | fd00::2:6              |                                     |
/// | z/a      | app=web            | 10.0.3.1               |                                     |
/// | w/a      | app=web            | 10.0.4.1               |                                     |
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: "x", labels: {env: prod, team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {env: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "z"}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "x", labels: {app: web, tier: fe}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: metrics, containerPort: 9090, protocol: TCP}
status: {phase: Running, podIPs: [{ip: 10.0.1.1}, {ip: "fd00::1:1"}], hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "x", labels: {app: db}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8081}
  - name: sidecar
    ports:
    - {name: metrics, containerPort: 9090, protocol: UDP}
status: {phase: Running, podIPs: [{ip: 10.0.1.2}, {ip: "fd00::1:2"}], hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: "x"}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.3, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: "x", labels: {app: web, tier: be}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.1.4, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: "x", labels: {app: web}}
spec:
  nodeName: n2
  hostNetwork: true
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.0.9.2, hostIP: 10.0.9.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: "x", labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Succeeded, podIP: 10.0.1.9, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: new, namespace: "x", labels: {app: web}}
spec: {containers: [{name: c}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "y", labels: {app: web, tier: fe}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.0.2.1}, {ip: "fd00::2:1"}], hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "y", labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.2, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: six, namespace: "y", labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: "fd00::2:6"}], hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "z", labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.3.1, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "w", labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.4.1, hostIP: 10.0.9.1}
"#;

/// The cluster plus some policies, compiled.
struct World {
    cluster: Cluster,
    tables: Tables,
}

/// Loads [`CLUSTER`] and `policies` (NetworkPolicy documents, `---`
/// separated; the apiVersion/kind header is added to each).
fn world(policies: &str) -> World {
    let mut yaml = CLUSTER.to_owned();
    for doc in policies.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        yaml.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n");
        yaml.push_str(doc.trim_start_matches('\n'));
        yaml.push('\n');
    }
    let m = manifests::load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile(&m.cluster, &CompileOptions::default());
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    World {
        cluster: m.cluster,
        tables: compiled.tables,
    }
}

impl World {
    /// The reference's view of one end of a resolved probe: a named pod, or
    /// whatever pod (live or not) owns an `ext:` address, or nothing.
    fn side(&self, endpoint: &Endpoint, ip: IpAddr) -> Side<'_> {
        match endpoint {
            Endpoint::Pod { namespace, name } => {
                Side::Pod(self.cluster.pod(namespace, name).unwrap(), ip)
            }
            Endpoint::External(_) => {
                let mut owners: Vec<_> = self
                    .cluster
                    .pods
                    .values()
                    .filter(|p| p.ips.contains(&ip))
                    .collect();
                owners.sort_by_key(|p| !reference::is_endpoint(p));
                owners
                    .first()
                    .map_or(Side::Outside(ip), |p| Side::Pod(p, ip))
            }
            Endpoint::Service { .. } => unreachable!("`classify` resolves no Service"),
        }
    }

    /// Classifies a probe with the tables and the reference, asserts that
    /// they agree, and returns the tables' verdict.
    #[track_caller]
    fn verdict(&self, src: &str, dst: &str, protocol: &str, port: u16) -> Verdict {
        let probe = Probe::from_fields(src, dst, protocol, &port.to_string()).unwrap();
        let verdict = classify(&self.cluster, &self.tables, &probe)
            .unwrap_or_else(|e| panic!("{probe}: {e}"));
        let (src_ip, dst_ip) = resolve(&self.cluster, &probe).unwrap();
        let (s, d) = (self.side(&probe.src, src_ip), self.side(&probe.dst, dst_ip));
        let want = reference::allowed(&self.cluster, &s, &d, probe.protocol, probe.port);
        assert_eq!(
            verdict.is_allowed(),
            want,
            "tables and reference disagree on {probe} ({src_ip} -> {dst_ip}): tables {verdict:?}"
        );
        verdict
    }

    #[track_caller]
    fn allows(&self, src: &str, dst: &str, protocol: &str, port: u16) {
        let v = self.verdict(src, dst, protocol, port);
        assert!(
            v.is_allowed(),
            "expected allow: {src} -> {dst} {protocol}/{port}, got {v:?}"
        );
    }

    #[track_caller]
    fn denies(&self, src: &str, dst: &str, protocol: &str, port: u16) {
        let v = self.verdict(src, dst, protocol, port);
        assert!(
            !v.is_allowed(),
            "expected deny: {src} -> {dst} {protocol}/{port}, got {v:?}"
        );
    }

    /// Like [`Self::verdict`] for explicit addresses (both families of a
    /// dual-stack pod), each mapped to the live pod that owns it.
    #[track_caller]
    fn allowed_between(&self, src: &str, dst: &str, protocol: &str, port: u16) -> bool {
        let (src_ip, dst_ip): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let protocol = podfence_control::model::Protocol::parse(protocol, false).unwrap();
        let verdict = self
            .tables
            .classify(src_ip, dst_ip, protocol.ip_protocol(), port);
        let (s, d) = (
            self.side(&Endpoint::External(src_ip), src_ip),
            self.side(&Endpoint::External(dst_ip), dst_ip),
        );
        let want = reference::allowed(&self.cluster, &s, &d, protocol, port);
        assert_eq!(
            verdict.is_allowed(),
            want,
            "{src} -> {dst} {protocol}/{port}: tables {verdict:?}"
        );
        want
    }
}

const DENY_ALL_INGRESS_X: &str = "
metadata: {name: deny-ingress, namespace: \"x\"}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

const DENY_ALL_EGRESS_X: &str = "
metadata: {name: deny-egress, namespace: \"x\"}
spec: {podSelector: {}, policyTypes: [Egress]}
";

// ---------------------------------------------------------------------------
// Isolation and policyTypes

#[test]
fn no_policy_allows_everything() {
    let w = world("");
    w.allows("x/a", "y/b", "TCP", 80);
    w.allows("ext:192.0.2.10", "x/a", "UDP", 53);
    w.allows("x/a", "ext:192.0.2.10", "SCTP", 9);
    let v = w.verdict("x/a", "x/b", "TCP", 80);
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::NotIsolated, Decision::NotIsolated)
    );
}

#[test]
fn policy_types_default_to_ingress_without_egress_rules() {
    let w = world(
        "
metadata: {name: web, namespace: \"x\"}
spec: {podSelector: {matchLabels: {app: web}}}
",
    );
    // Ingress is isolated: nothing is allowed in.
    w.denies("x/c", "x/a", "TCP", 80);
    w.denies("ext:192.0.2.10", "x/a", "TCP", 80);
    // Egress is not: the selected pod reaches anything.
    w.allows("x/a", "x/c", "TCP", 80);
    w.allows("x/a", "ext:192.0.2.10", "UDP", 53);
    // Unselected pods are open.
    w.allows("x/a", "x/b", "TCP", 80);
}

#[test]
fn policy_types_default_to_egress_iff_there_are_egress_rules() {
    let with_rules = world(
        "
metadata: {name: web, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
",
    );
    with_rules.allows("x/a", "x/b", "TCP", 5432);
    with_rules.denies("x/a", "x/c", "TCP", 80);
    // Ingress is isolated too, with no rule.
    with_rules.denies("x/c", "x/a", "TCP", 80);

    let empty_list = world(
        "
metadata: {name: web, namespace: \"x\"}
spec: {podSelector: {matchLabels: {app: web}}, egress: []}
",
    );
    empty_list.allows("x/a", "x/c", "TCP", 80);
    empty_list.denies("x/c", "x/a", "TCP", 80);
}

#[test]
fn explicit_policy_types_ignore_the_other_section() {
    let egress_only = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: nothing}}}]}]
",
    );
    // The ingress rules are ignored: ingress stays open.
    egress_only.allows("x/c", "x/a", "TCP", 80);
    // Egress is isolated with no rule.
    egress_only.denies("x/a", "x/c", "TCP", 80);

    let ingress_only = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: nothing}}}]}]
",
    );
    ingress_only.allows("x/a", "x/c", "TCP", 80);
    ingress_only.allows("x/b", "x/a", "TCP", 80);
    ingress_only.denies("x/c", "x/a", "TCP", 80);
}

#[test]
fn empty_ingress_list_denies_and_one_empty_rule_allows_all() {
    let none = world(
        "
metadata: {name: p, namespace: \"x\"}
spec: {podSelector: {matchLabels: {app: db}}, ingress: []}
",
    );
    none.denies("x/a", "x/b", "TCP", 80);
    none.denies("ext:192.0.2.10", "x/b", "UDP", 53);

    let all = world(
        "
metadata: {name: p, namespace: \"x\"}
spec: {podSelector: {matchLabels: {app: db}}, ingress: [{}]}
",
    );
    all.allows("x/a", "x/b", "TCP", 80);
    all.allows("y/a", "x/b", "SCTP", 7);
    all.allows("ext:192.0.2.10", "x/b", "UDP", 53);
    all.allows("x/host", "x/b", "TCP", 80);
}

#[test]
fn absent_and_empty_from_both_mean_every_source() {
    for from in ["", "from: [], "] {
        let w = world(&format!(
            "
metadata: {{name: p, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{{from}ports: [{{port: 80}}]}}]
"
        ));
        w.allows("x/a", "x/b", "TCP", 80);
        w.allows("z/a", "x/b", "TCP", 80);
        w.allows("ext:192.0.2.10", "x/b", "TCP", 80);
        w.denies("x/a", "x/b", "TCP", 81);
        w.denies("ext:192.0.2.10", "x/b", "UDP", 80);
    }
}

// ---------------------------------------------------------------------------
// Peers and selectors

#[test]
fn empty_pod_selector_peer_is_every_pod_of_the_policy_namespace() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {}}]}]
",
    );
    w.allows("x/a", "x/b", "TCP", 80);
    w.allows("x/c", "x/b", "TCP", 80);
    w.denies("y/a", "x/b", "TCP", 80);
    w.denies("ext:192.0.2.10", "x/b", "TCP", 80);
}

#[test]
fn empty_namespace_selector_peer_is_every_pod_of_every_namespace() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}}]}]
",
    );
    w.allows("x/a", "x/b", "TCP", 80);
    w.allows("y/b", "x/b", "TCP", 80);
    w.allows("z/a", "x/b", "TCP", 80);
    w.allows("w/a", "x/b", "TCP", 80);
    w.denies("ext:192.0.2.10", "x/b", "TCP", 80);
    w.denies("x/host", "x/b", "TCP", 80);
}

#[test]
fn pod_selector_alone_is_scoped_to_the_policy_namespace() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
",
    );
    w.allows("x/b", "x/a", "TCP", 80);
    w.denies("y/b", "x/a", "TCP", 80);
    w.denies("x/c", "x/a", "TCP", 80);
}

#[test]
fn namespace_selector_alone_admits_every_pod_of_matching_namespaces() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}]}]
",
    );
    w.allows("y/a", "x/a", "TCP", 80);
    w.allows("y/b", "x/a", "TCP", 80);
    // The policy's own namespace is not special.
    w.denies("x/b", "x/a", "TCP", 80);
    w.denies("z/a", "x/a", "TCP", 80);
}

#[test]
fn both_selectors_in_one_peer_are_anded() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
      podSelector: {matchLabels: {app: db}}
",
    );
    w.allows("y/b", "x/a", "TCP", 80);
    w.denies("y/a", "x/a", "TCP", 80);
    w.denies("x/b", "x/a", "TCP", 80);
}

#[test]
fn selectors_in_two_peers_are_ored() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
    - podSelector: {matchLabels: {app: db}}
",
    );
    w.allows("y/b", "x/a", "TCP", 80);
    w.allows("y/a", "x/a", "TCP", 80);
    w.allows("x/b", "x/a", "TCP", 80);
    w.denies("x/c", "x/a", "TCP", 80);
    w.denies("z/a", "x/a", "TCP", 80);
}

#[test]
fn match_labels_and_match_expressions_are_anded() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [fe]}]
",
    );
    // x/a (web, fe) is selected; x/d (web, be) and x/b (db) are not.
    w.denies("x/c", "x/a", "TCP", 80);
    w.allows("x/c", "x/d", "TCP", 80);
    w.allows("x/c", "x/b", "TCP", 80);
}

/// A policy letting into x/b (app=db) only the peers `peer` matches.
fn ingress_to_db_from(peer: &str) -> World {
    world(&format!(
        "
metadata: {{name: p, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{from: [{peer}]}}]
"
    ))
}

#[test]
fn operator_in_on_pod_labels() {
    let w = ingress_to_db_from(
        "{podSelector: {matchExpressions: [{key: app, operator: In, values: [web, cache]}]}}",
    );
    w.allows("x/a", "x/b", "TCP", 80);
    w.allows("x/d", "x/b", "TCP", 80);
    w.denies("x/c", "x/b", "TCP", 80);
}

#[test]
fn operator_not_in_on_pod_labels_matches_pods_without_the_key() {
    let w = ingress_to_db_from(
        "{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [fe]}]}}",
    );
    w.allows("x/c", "x/b", "TCP", 80);
    w.allows("x/d", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "TCP", 80);
}

#[test]
fn operator_exists_on_pod_labels() {
    let w =
        ingress_to_db_from("{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}");
    w.allows("x/a", "x/b", "TCP", 80);
    w.allows("x/d", "x/b", "TCP", 80);
    w.denies("x/c", "x/b", "TCP", 80);
}

#[test]
fn operator_does_not_exist_on_pod_labels_matches_pods_without_the_key() {
    let w = ingress_to_db_from(
        "{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}",
    );
    w.allows("x/c", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "TCP", 80);
    w.denies("x/d", "x/b", "TCP", 80);
}

#[test]
fn operators_on_namespace_labels() {
    let not_in = ingress_to_db_from(
        "{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}}",
    );
    not_in.allows("y/b", "x/b", "TCP", 80);
    // z has no env label, w no Namespace object at all.
    not_in.allows("z/a", "x/b", "TCP", 80);
    not_in.allows("w/a", "x/b", "TCP", 80);
    not_in.denies("x/a", "x/b", "TCP", 80);

    let absent = ingress_to_db_from(
        "{namespaceSelector: {matchExpressions: [{key: env, operator: DoesNotExist}]}}",
    );
    absent.allows("z/a", "x/b", "TCP", 80);
    absent.allows("w/a", "x/b", "TCP", 80);
    absent.denies("y/b", "x/b", "TCP", 80);
    absent.denies("x/a", "x/b", "TCP", 80);

    let exists = ingress_to_db_from(
        "{namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}}",
    );
    exists.allows("x/a", "x/b", "TCP", 80);
    exists.allows("y/b", "x/b", "TCP", 80);
    exists.denies("z/a", "x/b", "TCP", 80);

    let is_in = ingress_to_db_from(
        "{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [blue]}]}}",
    );
    is_in.allows("x/a", "x/b", "TCP", 80);
    is_in.denies("y/b", "x/b", "TCP", 80);
    is_in.denies("w/a", "x/b", "TCP", 80);
}

#[test]
fn namespace_name_label_is_set_on_every_namespace() {
    // w has no Namespace object: it still carries its name label.
    let w =
        ingress_to_db_from("{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: w}}}");
    w.allows("w/a", "x/b", "TCP", 80);
    w.denies("z/a", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "TCP", 80);

    // z's object has no labels at all.
    let z = ingress_to_db_from(
        "{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [z, \"y\"]}]}}",
    );
    z.allows("z/a", "x/b", "TCP", 80);
    z.allows("y/a", "x/b", "TCP", 80);
    z.denies("w/a", "x/b", "TCP", 80);
}

// ---------------------------------------------------------------------------
// ipBlock

#[test]
fn ip_block_except_v4() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25, 192.0.2.7/32]}}]}]
",
    );
    w.allows("x/a", "ext:192.0.2.10", "TCP", 443);
    w.allows("x/a", "ext:192.0.2.127", "TCP", 443);
    w.denies("x/a", "ext:192.0.2.128", "TCP", 443);
    w.denies("x/a", "ext:192.0.2.7", "TCP", 443);
    w.denies("x/a", "ext:198.51.100.1", "TCP", 443);
}

#[test]
fn ip_block_except_v6() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:ff::/48\"]}}]}]
",
    );
    // x/a is dual-stack: it uses its v6 address towards v6 destinations.
    w.allows("x/a", "ext:2001:db8::10", "TCP", 443);
    w.allows("x/a", "ext:2001:db8:fe:ffff::1", "TCP", 443);
    w.denies("x/a", "ext:2001:db8:ff::1", "TCP", 443);
    w.denies("x/a", "ext:2001:db9::1", "TCP", 443);
    w.denies("x/a", "ext:192.0.2.10", "TCP", 443);
}

#[test]
fn ip_blocks_never_match_across_families() {
    let v6_blocks = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress: [{from: [{ipBlock: {cidr: \"::/0\"}}, {ipBlock: {cidr: \"::ffff:192.0.2.0/120\"}}]}]
",
    );
    v6_blocks.allows("ext:2001:db8::10", "x/a", "TCP", 80);
    v6_blocks.allows("y/six", "x/a", "TCP", 80);
    // Not even the v4-mapped form of the address matches it.
    v6_blocks.denies("ext:192.0.2.10", "x/a", "TCP", 80);
    v6_blocks.denies("x/c", "x/a", "TCP", 80);

    let v4_block = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
",
    );
    v4_block.allows("ext:192.0.2.10", "x/a", "TCP", 80);
    v4_block.denies("ext:2001:db8::10", "x/a", "TCP", 80);
    v4_block.denies("y/six", "x/a", "TCP", 80);
}

#[test]
fn ip_blocks_match_pod_addresses() {
    let w = world(
        "
metadata: {name: in, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}}]}]
---
metadata: {name: out, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.1.0/30}}]}]
",
    );
    w.allows("y/a", "x/a", "TCP", 80);
    w.denies("y/b", "x/a", "TCP", 80);
    w.denies("x/c", "x/a", "TCP", 80);
    // 10.0.1.0/30 holds x/a, x/b and x/c (10.0.1.1-3) but not x/d (10.0.1.4).
    w.allows("x/b", "x/c", "TCP", 80);
    w.denies("x/b", "x/d", "TCP", 80);
}

// ---------------------------------------------------------------------------
// Ports and protocols

/// A policy letting anything into x/b on `ports` only.
fn ingress_to_db_on(ports: &str) -> World {
    world(&format!(
        "
metadata: {{name: p, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{ports: {ports}}}]
"
    ))
}

#[test]
fn port_without_protocol_is_tcp() {
    let w = ingress_to_db_on("[{port: 80}]");
    w.allows("x/a", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "UDP", 80);
    w.denies("x/a", "x/b", "SCTP", 80);
    w.denies("x/a", "x/b", "TCP", 81);
}

#[test]
fn protocol_without_port_is_every_port() {
    let w = ingress_to_db_on("[{protocol: UDP}]");
    w.allows("x/a", "x/b", "UDP", 1);
    w.allows("x/a", "x/b", "UDP", 65535);
    w.denies("x/a", "x/b", "TCP", 53);

    let empty_entry = ingress_to_db_on("[{}]");
    empty_entry.allows("x/a", "x/b", "TCP", 1);
    empty_entry.denies("x/a", "x/b", "UDP", 1);
}

#[test]
fn end_port_ranges_include_both_edges() {
    let w = ingress_to_db_on("[{port: 8000, endPort: 8010, protocol: UDP}]");
    w.denies("x/a", "x/b", "UDP", 7999);
    w.allows("x/a", "x/b", "UDP", 8000);
    w.allows("x/a", "x/b", "UDP", 8005);
    w.allows("x/a", "x/b", "UDP", 8010);
    w.denies("x/a", "x/b", "UDP", 8011);
    w.denies("x/a", "x/b", "TCP", 8005);
}

#[test]
fn sctp_is_a_protocol_of_its_own() {
    let w = ingress_to_db_on("[{port: 80, protocol: SCTP}]");
    w.allows("x/a", "x/b", "SCTP", 80);
    w.denies("x/a", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "UDP", 80);
    w.denies("x/a", "x/b", "SCTP", 81);
}

#[test]
fn named_ports_on_ingress_resolve_on_each_selected_pod() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
",
    );
    // http is 8080 on x/a and 8081 on x/b.
    w.allows("x/c", "x/a", "TCP", 8080);
    w.denies("x/c", "x/a", "TCP", 8081);
    w.allows("x/c", "x/b", "TCP", 8081);
    w.denies("x/c", "x/b", "TCP", 8080);
    // x/c has no port named http: nothing reaches it.
    w.denies("x/a", "x/c", "TCP", 8080);
}

#[test]
fn named_ports_match_by_name_and_protocol() {
    // metrics is 9090/TCP on x/a and 9090/UDP on x/b.
    let udp = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: metrics, protocol: UDP}]}]
",
    );
    udp.allows("x/c", "x/b", "UDP", 9090);
    udp.denies("x/c", "x/b", "TCP", 9090);
    udp.denies("x/c", "x/a", "UDP", 9090);
    udp.denies("x/c", "x/a", "TCP", 9090);

    let tcp = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {}
  ingress: [{ports: [{port: metrics}]}]
",
    );
    tcp.allows("x/c", "x/a", "TCP", 9090);
    tcp.denies("x/c", "x/b", "TCP", 9090);
    tcp.denies("x/c", "x/b", "UDP", 9090);
}

/// x/c may send only to `to` (YAML peer list, or none) on the named port
/// http.
fn egress_from_c_to_http(to: &str) -> World {
    world(&format!(
        "
metadata: {{name: p, namespace: \"x\"}}
spec:
  podSelector: {{matchExpressions: [{{key: app, operator: DoesNotExist}}]}}
  policyTypes: [Egress]
  egress: [{{{to}ports: [{{port: http}}]}}]
"
    ))
}

#[test]
fn named_ports_on_egress_resolve_on_the_destination_pod() {
    let w = egress_from_c_to_http("");
    w.allows("x/c", "x/a", "TCP", 8080);
    w.denies("x/c", "x/a", "TCP", 8081);
    w.allows("x/c", "x/b", "TCP", 8081);
    w.denies("x/c", "x/b", "TCP", 8080);
    w.denies("x/c", "y/b", "TCP", 8080);

    let selected = egress_from_c_to_http("to: [{namespaceSelector: {matchLabels: {env: dev}}}], ");
    selected.allows("x/c", "y/a", "TCP", 8080);
    selected.denies("x/c", "y/a", "TCP", 8081);
    selected.denies("x/c", "x/a", "TCP", 8080);
}

#[test]
fn named_ports_on_egress_never_match_outside_addresses() {
    let w = egress_from_c_to_http("");
    w.denies("x/c", "ext:192.0.2.10", "TCP", 8080);
    w.denies("x/c", "ext:192.0.2.10", "TCP", 8081);
    // The host-network pod declares http but is only its node's address.
    w.denies("x/c", "x/host", "TCP", 8080);
    w.allows("x/c", "x/a", "TCP", 8080);
}

#[test]
fn named_ports_on_egress_never_resolve_through_ip_blocks() {
    let block_only = egress_from_c_to_http("to: [{ipBlock: {cidr: 10.0.0.0/8}}], ");
    block_only.denies("x/c", "x/a", "TCP", 8080);
    block_only.denies("x/c", "x/b", "TCP", 8081);

    // With a selector peer beside the block, pods the selector matches
    // resolve named ports; pods the block alone matches still do not.
    let both = egress_from_c_to_http(
        "to: [{ipBlock: {cidr: 10.0.0.0/8}}, {podSelector: {matchLabels: {app: web}}}], ",
    );
    both.allows("x/c", "x/a", "TCP", 8080);
    both.allows("x/c", "x/d", "TCP", 8080);
    both.denies("x/c", "x/b", "TCP", 8081);
    both.denies("x/c", "x/a", "TCP", 8081);
}

// ---------------------------------------------------------------------------
// Combining policies and directions

#[test]
fn policies_selecting_a_pod_are_unioned() {
    let w = world(
        "
metadata: {name: from-x, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]
---
metadata: {name: from-y, namespace: \"x\"}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}], ports: [{port: 81}]}]
",
    );
    w.allows("x/a", "x/b", "TCP", 80);
    w.denies("x/a", "x/b", "TCP", 81);
    w.allows("y/a", "x/b", "TCP", 81);
    w.denies("y/a", "x/b", "TCP", 80);
    w.denies("x/c", "x/b", "TCP", 80);
    // A deny-all beside an allow changes nothing: the union allows.
    let with_deny = world(&format!(
        "{DENY_ALL_INGRESS_X}
---
metadata: {{name: allow, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{from: [{{podSelector: {{}}}}]}}]
"
    ));
    with_deny.allows("x/a", "x/b", "TCP", 80);
    with_deny.denies("x/b", "x/a", "TCP", 80);
}

#[test]
fn egress_and_ingress_must_both_allow() {
    let policies = |ingress_from: &str| {
        format!(
            "
metadata: {{name: out, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: web, tier: fe}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{podSelector: {{matchLabels: {{app: db}}}}}}]}}]
---
metadata: {{name: in, namespace: \"x\"}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{from: [{ingress_from}]}}]
"
        )
    };
    let w = world(&policies("{podSelector: {matchLabels: {tier: be}}}"));
    // a's egress allows b, b's ingress does not allow a.
    let v = w.verdict("x/a", "x/b", "TCP", 80);
    assert!(v.egress.is_allowed() && !v.ingress.is_allowed(), "{v:?}");
    assert!(!v.is_allowed());
    // d is allowed into b and not egress-isolated.
    w.allows("x/d", "x/b", "TCP", 80);
    // b's ingress would not matter: a's egress does not allow c.
    w.denies("x/a", "x/c", "TCP", 80);

    let both = world(&policies("{podSelector: {matchLabels: {tier: fe}}}"));
    both.allows("x/a", "x/b", "TCP", 80);
}

#[test]
fn a_pod_may_always_reach_itself() {
    let w = world(&format!("{DENY_ALL_INGRESS_X}\n---\n{DENY_ALL_EGRESS_X}"));
    let v = w.verdict("x/a", "x/a", "TCP", 80);
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::SelfTraffic, Decision::SelfTraffic)
    );
    w.allows("x/c", "x/c", "UDP", 53);
    // On its other address too.
    assert!(w.allowed_between("fd00::1:1", "fd00::1:1", "TCP", 80));
    // Other pods stay isolated.
    w.denies("x/a", "x/b", "TCP", 80);
    assert!(!w.allowed_between("fd00::1:1", "fd00::1:2", "TCP", 80));
}

#[test]
fn dual_stack_pods_are_the_same_pod_on_both_families() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: web, tier: fe}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {env: dev}}, podSelector: {matchLabels: {app: db}}}]}]
",
    );
    // Ingress from x/b on either family.
    w.allows("x/b", "x/a", "TCP", 80);
    assert!(w.allowed_between("fd00::1:2", "fd00::1:1", "TCP", 80));
    assert!(!w.allowed_between("fd00::2:1", "fd00::1:1", "TCP", 80));
    // Egress to y's db pods: the v4-only and the v6-only one.
    w.allows("x/a", "y/b", "TCP", 80);
    w.allows("x/a", "y/six", "TCP", 80);
    w.denies("x/a", "y/a", "TCP", 80);
    assert!(!w.allowed_between("fd00::1:1", "fd00::2:1", "TCP", 80));
    w.denies("x/a", "ext:2001:db8::10", "TCP", 80);
}

// ---------------------------------------------------------------------------
// Pods that policy does not apply to

#[test]
fn pods_without_own_running_address_are_not_selected() {
    let w = world(DENY_ALL_INGRESS_X);
    // Live pods of x are isolated...
    w.denies("x/c", "x/a", "TCP", 80);
    // ...but not the host-network pod, which is its node's address.
    let v = w.verdict("x/c", "x/host", "TCP", 80);
    assert_eq!(v.ingress, Decision::NotEnforced);
    assert!(v.is_allowed());
    // The finished pod's address is nobody's.
    let v = w.verdict("x/c", "ext:10.0.1.9", "TCP", 80);
    assert_eq!(v.ingress, Decision::NotEnforced);
    assert!(v.is_allowed());
    // The finished and the pending pod cannot be probed at all.
    for pod in ["x/done", "x/new"] {
        let probe = Probe::from_fields("x/c", pod, "TCP", "80").unwrap();
        assert!(
            matches!(
                resolve(&w.cluster, &probe),
                Err(ProbeError::NoAddress { .. })
            ),
            "{pod}"
        );
    }
    // Nor does the reference see them as isolated.
    for (ns, name) in [("x", "host"), ("x", "done"), ("x", "new")] {
        let pod = w.cluster.pod(ns, name).unwrap();
        assert!(
            !reference::isolated_for_ingress(&w.cluster, pod),
            "{ns}/{name}"
        );
        assert!(!pod.is_policy_endpoint(), "{ns}/{name}");
    }
    assert!(reference::isolated_for_ingress(
        &w.cluster,
        w.cluster.pod("x", "a").unwrap()
    ));
}

#[test]
fn host_network_source_is_its_host_address() {
    let by_label = ingress_to_db_from("{podSelector: {matchLabels: {app: web}}}");
    by_label.allows("x/a", "x/b", "TCP", 80);
    by_label.denies("x/host", "x/b", "TCP", 80);

    let by_block = ingress_to_db_from("{ipBlock: {cidr: 10.0.9.2/32}}");
    by_block.allows("x/host", "x/b", "TCP", 80);
    by_block.allows("ext:10.0.9.2", "x/b", "TCP", 80);
    by_block.denies("x/a", "x/b", "TCP", 80);
}

#[test]
fn a_pods_own_node_may_always_connect_to_it_but_not_the_other_way() {
    let w = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    // Every pod of the world runs on n1 (10.0.9.1).
    let from_node = w.verdict("ext:10.0.9.1", "x/b", "TCP", 80);
    assert_eq!(from_node.ingress, Decision::OwnNode);
    assert!(from_node.is_allowed());
    // The exception is NetworkPolicy's and covers ingress only: the pod's
    // own connections to its node are subject to its egress policy.
    let to_node = w.verdict("x/b", "ext:10.0.9.1", "UDP", 53);
    assert!(
        matches!(to_node.egress, Decision::Denied { .. }),
        "{to_node:?}"
    );
    // Another node is an address like any other, host-network pods on it too.
    w.denies("ext:10.0.9.2", "x/b", "TCP", 80);
    w.denies("x/host", "x/b", "TCP", 80);
    w.denies("x/b", "ext:10.0.9.2", "TCP", 80);
}

#[test]
fn finished_pods_are_not_peers() {
    let by_label = ingress_to_db_from("{podSelector: {matchLabels: {app: web}}}");
    by_label.allows("x/d", "x/b", "TCP", 80);
    by_label.denies("ext:10.0.1.9", "x/b", "TCP", 80);

    let by_block = ingress_to_db_from("{ipBlock: {cidr: 10.0.1.9/32}}");
    by_block.allows("ext:10.0.1.9", "x/b", "TCP", 80);
    by_block.denies("x/d", "x/b", "TCP", 80);

    let egress = world(
        "
metadata: {name: p, namespace: \"x\"}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]
",
    );
    egress.allows("x/b", "x/a", "TCP", 80);
    egress.denies("x/b", "ext:10.0.1.9", "TCP", 80);
}

#[test]
fn the_agents_own_addresses_are_its_node() {
    let w = world(DENY_ALL_INGRESS_X);
    let options = CompileOptions {
        locality: Locality::Node("n1".into()),
        node_addresses: vec!["192.0.2.99".parse().unwrap()],
        ..CompileOptions::default()
    };
    let tables = compile(&w.cluster, &options).tables;
    let tcp = Protocol::Tcp.ip_protocol();
    let to_b =
        |src: &str| tables.classify(src.parse().unwrap(), "10.0.1.2".parse().unwrap(), tcp, 80);
    // An address of the agent's host, and the hostIP the pods report.
    assert_eq!(to_b("192.0.2.99").ingress, Decision::OwnNode);
    assert_eq!(to_b("10.0.9.1").ingress, Decision::OwnNode);
    // Any other address is still subject to policy.
    assert!(matches!(
        to_b("192.0.2.98").ingress,
        Decision::Denied { .. }
    ));
}

#[test]
fn audit_mode_reports_what_it_would_deny_and_passes_it() {
    let w = world(DENY_ALL_INGRESS_X);
    let options = CompileOptions {
        audit: true,
        ..CompileOptions::default()
    };
    let tables = compile(&w.cluster, &options).tables;
    let tcp = Protocol::Tcp.ip_protocol();
    let ip = |s: &str| s.parse().unwrap();
    let v = tables.classify(ip("10.0.1.3"), ip("10.0.1.2"), tcp, 80);
    assert!(matches!(v.ingress, Decision::WouldDeny { .. }), "{v:?}");
    assert!(v.is_allowed() && v.ingress.is_policy_denial());
    // What policy allows stays allowed, not reported.
    let open = tables.classify(ip("10.0.2.1"), ip("10.0.2.2"), tcp, 80);
    assert!(!open.ingress.is_policy_denial() && open.is_allowed());
}
