//! One small test per rule of the ClusterNetworkPolicy tiers: each probe
//! checked against both the compiled tables and the reference evaluator,
//! and the attribution that explain gives.

mod reference;

use std::net::IpAddr;
use std::path::Path;

use podfence_control::compile::{CompileOptions, Compiled, Locality, compile};
use podfence_control::index::Cluster;
use podfence_control::probe::{Endpoint, Explanation, Probe, classify, resolve};
use podfence_control::sources::manifests;
use podfence_datapath::tables::Tier;
use podfence_datapath::{Decision, Verdict};
use reference::Side;

/// Namespaces `x` (env=prod) and `y` (env=dev); pods x/a, x/b, y/a, y/b
/// (labels app=a|b) on node n1 (10.0.9.1, zone=a); node n2 (10.0.9.2,
/// zone=b) runs none. x/b serves a named port `web` on 8080/TCP.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: "x", labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: "y", labels: {env: dev}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
status: {addresses: [{type: InternalIP, address: 10.0.9.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {zone: b}}
status: {addresses: [{type: InternalIP, address: 10.0.9.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "x", labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "x", labels: {app: b}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.1.2, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: "y", labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.1, hostIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: "y", labels: {app: b}}
spec: {nodeName: n2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.2, hostIP: 10.0.9.2}
"#;

struct World {
    cluster: Cluster,
    compiled: Compiled,
}

/// [`CLUSTER`] plus `objects` (whole manifests, `---` separated).
fn world_with(objects: &str, options: &CompileOptions) -> World {
    let yaml = format!("{CLUSTER}---\n{objects}");
    let m = manifests::load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}"));
    let compiled = compile(&m.cluster, options);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    World {
        cluster: m.cluster,
        compiled,
    }
}

fn world(objects: &str) -> World {
    world_with(objects, &CompileOptions::default())
}

/// A ClusterNetworkPolicy manifest.
fn cnp(name: &str, tier: &str, priority: u32, rest: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{rest}\n---\n"
    )
}

const DENY_ALL_INGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: \"x\"}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n";
const ALLOW_ALL_INGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow, namespace: \"x\"}\nspec: {podSelector: {}, ingress: [{}]}\n---\n";

impl World {
    fn side(&self, endpoint: &Endpoint, ip: IpAddr) -> Side<'_> {
        match endpoint {
            Endpoint::Pod { namespace, name } => {
                Side::Pod(self.cluster.pod(namespace, name).unwrap(), ip)
            }
            _ => Side::Outside(ip),
        }
    }

    /// The tables' verdict, asserted equal to the reference's.
    #[track_caller]
    fn verdict(&self, src: &str, dst: &str, protocol: &str, port: u16) -> Verdict {
        let probe = Probe::from_fields(src, dst, protocol, &port.to_string()).unwrap();
        let verdict = classify(&self.cluster, &self.compiled.tables, &probe).unwrap();
        let (s, d) = resolve(&self.cluster, &probe).unwrap();
        let want = reference::allowed(
            &self.cluster,
            &self.side(&probe.src, s),
            &self.side(&probe.dst, d),
            probe.protocol,
            probe.port,
        );
        assert_eq!(verdict.is_allowed(), want, "{probe}: tables {verdict:?}");
        verdict
    }

    #[track_caller]
    fn allows(&self, src: &str, dst: &str, port: u16) {
        let v = self.verdict(src, dst, "TCP", port);
        assert!(v.is_allowed(), "{src} -> {dst} {port}: {v:?}");
    }

    #[track_caller]
    fn denies(&self, src: &str, dst: &str, port: u16) {
        let v = self.verdict(src, dst, "TCP", port);
        assert!(!v.is_allowed(), "{src} -> {dst} {port}: {v:?}");
    }

    fn explain(&self, src: &str, dst: &str, port: u16) -> String {
        let probe = Probe::from_fields(src, dst, "TCP", &port.to_string()).unwrap();
        let verdict = classify(&self.cluster, &self.compiled.tables, &probe).unwrap();
        Explanation {
            probe: &probe,
            addresses: resolve(&self.cluster, &probe).unwrap(),
            verdict,
            tables: &self.compiled.tables,
            cluster: &self.cluster,
        }
        .to_string()
    }
}

const SUBJECT_X: &str = "  subject: {namespaces: {matchLabels: {env: prod}}}";

#[test]
fn admin_deny_beats_a_networkpolicy_allow_and_accept_skips_networkpolicy() {
    let w = world(&format!(
        "{ALLOW_ALL_INGRESS_X}{}",
        cnp(
            "guard",
            "Admin",
            10,
            &format!(
                "{SUBJECT_X}\n  ingress:\n  - {{name: no-dev, action: Deny, from: [{{namespaces: {{matchLabels: {{env: dev}}}}}}]}}"
            )
        )
    ));
    let v = w.verdict("y/a", "x/a", "TCP", 80);
    assert!(
        matches!(v.ingress, Decision::TierDenied(r) if r.tier == Tier::Admin),
        "{v:?}"
    );
    w.allows("x/b", "x/a", 80);
    let text = w.explain("y/a", "x/a", 80);
    assert!(
        text.contains(
            "deny — admin tier: ClusterNetworkPolicy/guard (priority 10) ingress rule 0 \"no-dev\""
        ),
        "{text}"
    );

    let w = world(&format!(
        "{DENY_ALL_INGRESS_X}{}",
        cnp(
            "open",
            "Admin",
            10,
            &format!(
                "{SUBJECT_X}\n  ingress:\n  - {{name: dev, action: Accept, from: [{{namespaces: {{matchLabels: {{env: dev}}}}}}]}}"
            )
        )
    ));
    w.allows("y/a", "x/a", 80);
    w.denies("x/b", "x/a", 80);
}

#[test]
fn lower_priority_first_then_rule_order_and_ties_by_name_are_reported() {
    let rules = |action: &str| {
        format!(
            "{SUBJECT_X}\n  ingress:\n  - {{name: r, action: {action}, from: [{{namespaces: {{}}}}]}}"
        )
    };
    let w = world(&format!(
        "{}{}",
        cnp("late", "Admin", 50, &rules("Deny")),
        cnp("early", "Admin", 5, &rules("Accept"))
    ));
    w.allows("y/a", "x/a", 80);
    // Equal priorities: by name, "a-deny" before "b-accept".
    let w = world(&format!(
        "{DENY_ALL_INGRESS_X}{}{}",
        cnp("b-accept", "Admin", 7, &rules("Accept")),
        cnp("a-deny", "Admin", 7, &rules("Deny"))
    ));
    w.denies("y/a", "x/a", 80);
    assert_eq!(w.compiled.notices.len(), 1, "{:?}", w.compiled.notices);
    assert!(
        w.compiled.notices[0].contains(
            "ClusterNetworkPolicy a-deny and ClusterNetworkPolicy b-accept share priority 7"
        ),
        "{:?}",
        w.compiled.notices
    );
    // Within a policy, the first matching rule decides.
    let w = world(&cnp(
        "order",
        "Admin",
        1,
        &format!(
            "{SUBJECT_X}\n  ingress:\n  - {{name: web-ok, action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: web}}]}}\n  - {{name: rest, action: Deny, from: [{{namespaces: {{}}}}]}}"
        ),
    ));
    w.allows("y/a", "x/b", 8080);
    w.denies("y/a", "x/b", 8081);
    w.denies("y/a", "x/a", 8080);
}

#[test]
fn pass_hands_on_to_networkpolicy_and_the_explanation_shows_the_chain() {
    let w = world(&format!(
        "{DENY_ALL_INGRESS_X}{}{}",
        cnp(
            "pass-dev",
            "Admin",
            1,
            &format!(
                "{SUBJECT_X}\n  ingress:\n  - {{name: dev, action: Pass, from: [{{namespaces: {{matchLabels: {{env: dev}}}}}}]}}"
            )
        ),
        cnp(
            "accept-all",
            "Admin",
            2,
            &format!(
                "{SUBJECT_X}\n  ingress:\n  - {{name: all, action: Accept, from: [{{namespaces: {{}}}}]}}"
            )
        )
    ));
    // y is passed on to NetworkPolicy, which denies; x is accepted.
    let v = w.verdict("y/a", "x/a", "TCP", 80);
    assert!(matches!(v.ingress, Decision::Denied { .. }), "{v:?}");
    assert!(v.passed.ingress.is_some());
    w.allows("x/b", "x/a", 80);
    let text = w.explain("y/a", "x/a", 80);
    assert!(
        text.contains("ingress: passed on — admin tier: ClusterNetworkPolicy/pass-dev (priority 1) ingress rule 0 \"dev\"")
            && text.contains("ingress: deny — destination x/a is isolated for ingress by x/deny"),
        "{text}"
    );
}

#[test]
fn baseline_applies_only_where_no_networkpolicy_isolates() {
    let baseline = cnp(
        "default",
        "Baseline",
        10,
        "  subject: {namespaces: {}}\n  ingress:\n  - {name: deny, action: Deny, from: [{namespaces: {}}]}",
    );
    let w = world(&format!("{ALLOW_ALL_INGRESS_X}{baseline}"));
    w.allows("y/a", "x/a", 80);
    let v = w.verdict("x/a", "y/a", "TCP", 80);
    assert!(
        matches!(v.ingress, Decision::TierDenied(r) if r.tier == Tier::Baseline),
        "{v:?}"
    );
    // Outside addresses are no namespace peer: allowed.
    w.allows("ext:192.0.2.1", "y/a", 80);
    // A Baseline Pass ends the tier: allowed.
    let w = world(&cnp(
        "default",
        "Baseline",
        10,
        "  subject: {namespaces: {}}\n  ingress:\n  - {name: pass, action: Pass, from: [{namespaces: {}}]}\n  - {name: deny, action: Deny, from: [{namespaces: {}}]}",
    ));
    w.allows("x/a", "y/a", 80);
}

#[test]
fn egress_and_ingress_are_decided_each_on_its_own() {
    // x's egress accepts everything, y's ingress is denied by NetworkPolicy.
    let w = world(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: \"y\"}}\nspec: {{podSelector: {{}}}}\n---\n{}",
        cnp(
            "out",
            "Admin",
            1,
            &format!(
                "{SUBJECT_X}\n  egress:\n  - {{name: all, action: Accept, to: [{{namespaces: {{}}}}]}}"
            )
        )
    ));
    let v = w.verdict("x/a", "y/a", "TCP", 80);
    assert!(matches!(v.egress, Decision::TierAccepted(_)), "{v:?}");
    assert!(matches!(v.ingress, Decision::Denied { .. }), "{v:?}");
    // Ingress-only admin rules leave egress alone.
    let w = world(&cnp(
        "in",
        "Admin",
        1,
        &format!(
            "{SUBJECT_X}\n  ingress:\n  - {{name: all, action: Deny, from: [{{namespaces: {{}}}}]}}"
        ),
    ));
    w.allows("x/a", "y/a", 80);
    w.denies("y/a", "x/a", 80);
}

#[test]
fn networks_and_nodes_peers_match_the_pods_own_node_too() {
    let w = world(&cnp(
        "nodes",
        "Admin",
        1,
        &format!(
            "{SUBJECT_X}\n  egress:\n  - {{name: zone-a, action: Deny, to: [{{nodes: {{matchLabels: {{zone: a}}}}}}]}}\n  - {{name: pods-net, action: Deny, to: [{{networks: [10.0.2.0/24]}}]}}"
        ),
    ));
    // n1 (zone a) is x/a's own node: its egress there is denied ...
    w.denies("x/a", "ext:10.0.9.1", 80);
    // ... while its own node may still connect to it.
    let v = w.verdict("ext:10.0.9.1", "x/a", "TCP", 80);
    assert_eq!(v.ingress, Decision::OwnNode);
    // n2 is zone b.
    w.allows("x/a", "ext:10.0.9.2", 80);
    // networks match pod addresses.
    w.denies("x/a", "y/a", 80);
    w.allows("x/a", "x/b", 80);
}

#[test]
fn domain_names_match_nothing_and_are_reported() {
    let w = world(&cnp(
        "fqdn",
        "Admin",
        1,
        &format!(
            "{SUBJECT_X}\n  egress:\n  - {{name: names, action: Deny, to: [{{domainNames: [example.com]}}]}}"
        ),
    ));
    w.allows("x/a", "ext:192.0.2.1", 443);
    assert!(
        w.compiled
            .notices
            .iter()
            .any(|n| n.contains("partly unsupported: spec.egress[0].to[0].domainNames")),
        "{:?}",
        w.compiled.notices
    );
}

#[test]
fn admin_network_policy_kinds_act_as_tiers() {
    let w = world(&format!(
        "{ALLOW_ALL_INGRESS_X}apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: anp}}\nspec:\n  priority: 3\n{SUBJECT_X}\n  ingress:\n  - {{name: r, action: Deny, from: [{{namespaces: {{matchLabels: {{env: dev}}}}}}]}}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: default}}\nspec:\n  subject: {{namespaces: {{}}}}\n  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}\n"
    ));
    w.denies("y/a", "x/a", 80);
    w.allows("x/b", "x/a", 80);
    w.denies("x/a", "y/a", 80);
}

#[test]
fn audit_mode_reports_tier_denials_and_remote_pods_are_not_enforced() {
    let objects = cnp(
        "guard",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - {name: r, action: Deny, from: [{namespaces: {}}]}",
    );
    let audit = world_with(
        &objects,
        &CompileOptions {
            audit: true,
            ..CompileOptions::default()
        },
    );
    let probe = Probe::from_fields("y/a", "x/a", "TCP", "80").unwrap();
    let v = classify(&audit.cluster, &audit.compiled.tables, &probe).unwrap();
    assert!(matches!(v.ingress, Decision::TierWouldDeny(_)), "{v:?}");
    assert!(v.is_allowed() && v.ingress.is_policy_denial());

    let local = world_with(
        &objects,
        &CompileOptions {
            locality: Locality::Node("n1".into()),
            ..CompileOptions::default()
        },
    );
    // y/b runs on n2: its ingress is n2's to enforce.
    let probe = Probe::from_fields("x/a", "y/b", "TCP", "80").unwrap();
    let v = classify(&local.cluster, &local.compiled.tables, &probe).unwrap();
    assert_eq!(v.ingress, Decision::NotEnforced);
}
