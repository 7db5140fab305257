//! Synthetic clusters for benchmarks, shaped like real multi-team clusters.
//!
//! Every namespace belongs to a team and an environment and runs ten apps in
//! three tiers; every namespace carries the same ten kinds of policy that
//! production clusters are full of: default deny in both directions, DNS
//! egress to a shared namespace, app-to-app rules with named ports,
//! cross-namespace rules by team label, ipBlocks with per-namespace `except`
//! holes, an internet egress rule, matchExpressions, and a NodePort-style
//! `endPort` range. Generation is deterministic for a given size.
//!
//! On request ([`Shape::cluster_policies`]) the cluster also gets the
//! ClusterNetworkPolicies cluster administrators write as guardrails, ten
//! kinds round robin over the Admin and Baseline tiers ([`cluster_policy`]).

use std::net::{IpAddr, Ipv4Addr};

use podfence_control::index::Cluster;
use podfence_control::model::{
    Action, AddressType, ClusterNetworkPolicy, Endpoint, EndpointPort, EndpointSlice, IpBlock,
    LabelSelector, Labels, NAMESPACE_NAME_LABEL, NamedPort, Namespace, NetworkPolicy, Operator,
    Peer, Pod, PodPhase, PolicyApi, PolicyPort, PortSpec, Protocol, Requirement, Rule, Service,
    ServicePort, ServiceType, SessionAffinity, Subject, TargetPort, Tier, TierPeer, TierRule,
    TrafficPolicy,
};
use podfence_datapath::{Decision, Verdict};

/// Size of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Namespaces.
    pub namespaces: usize,
    /// Pods, spread evenly over the namespaces.
    pub pods: usize,
    /// Policies, spread evenly over the namespaces (ten kinds, round robin).
    pub policies: usize,
    /// ClusterNetworkPolicies (ten kinds, round robin; see
    /// [`cluster_policy`]). 0 in every benchmark that does not ask for
    /// them, so that their figures stay comparable with earlier ones.
    pub cluster_policies: usize,
}

const APPS: usize = 10;
const TEAMS: usize = 10;
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TIERS: [&str; 3] = ["web", "api", "db"];

/// First pod address: pods are numbered from 10.128.0.0 upwards.
pub const POD_BASE: u32 = 0x0a80_0000;

/// The address of pod number `i` (in generation order).
#[must_use]
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(POD_BASE + i as u32)
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn expr(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: Vec::new(),
        match_expressions: vec![Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
    }
}

fn port(protocol: Protocol, first: u16, last: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: PortSpec::Range(first, last),
    }
}

fn block(cidr: &str, except: &[String]) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: cidr.parse().expect("valid cidr"),
        except: except
            .iter()
            .map(|e| e.parse().expect("valid cidr"))
            .collect(),
    })
}

fn namespace_name(n: usize) -> String {
    format!("ns-{n}")
}

/// Builds the cluster.
#[must_use]
pub fn cluster(shape: Shape) -> Cluster {
    let mut c = Cluster::default();
    let ns_count = shape.namespaces.max(1);
    for n in 0..ns_count {
        let name = namespace_name(n);
        c.apply(Namespace {
            labels: labels(&[
                (NAMESPACE_NAME_LABEL, name.clone()),
                ("team", format!("team-{}", n % TEAMS)),
                ("env", ENVS[n % ENVS.len()].to_owned()),
            ]),
            name,
        });
    }
    for i in 0..shape.pods {
        let n = i % ns_count;
        let k = i / ns_count;
        let app = k % APPS;
        let tier = TIERS[app % TIERS.len()];
        let mut named_ports = vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            },
            NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            },
        ];
        if app == 0 {
            named_ports.push(NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
            });
        }
        c.apply(Pod {
            namespace: namespace_name(n),
            name: format!("app-{app}-{k}"),
            labels: labels(&[
                ("app", format!("app-{app}")),
                ("tier", tier.to_owned()),
                ("version", format!("v{}", k % 2 + 1)),
                (
                    "pod-template-hash",
                    format!("{:08x}", (i as u64).wrapping_mul(0x9e37_79b9)),
                ),
            ]),
            node: Some(format!("node-{}", i % 50)),
            host_network: false,
            phase: PodPhase::Running,
            ips: vec![IpAddr::V4(pod_ip(i))],
            host_ips: Vec::new(),
            named_ports,
        });
    }
    for p in 0..shape.policies {
        let n = p % ns_count;
        let kind = (p / ns_count) % 10;
        c.apply(policy(n, kind, p / ns_count));
    }
    for i in 0..shape.cluster_policies {
        c.apply(cluster_policy(i, ns_count));
    }
    c
}

#[allow(
    clippy::too_many_lines,
    reason = "one arm per kind of policy, read side by side"
)]
fn policy(n: usize, kind: usize, serial: usize) -> NetworkPolicy {
    let namespace = namespace_name(n);
    let app = |a: usize| format!("app-{}", a % APPS);
    let team = format!("team-{}", n % TEAMS);
    let mut p = NetworkPolicy {
        namespace,
        name: format!("policy-{serial}"),
        pod_selector: LabelSelector::default(),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: Vec::new(),
        egress: Vec::new(),
    };
    match kind {
        0 => {
            p.name = format!("default-deny-{serial}");
            p.isolates_egress = true;
        }
        1 => {
            p.name = format!("allow-dns-{serial}");
            p.isolates_ingress = false;
            p.isolates_egress = true;
            p.egress = vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: Some(sel(&[(NAMESPACE_NAME_LABEL, "ns-0")])),
                    pods: sel(&[("app", "app-0")]),
                }],
                ports: vec![port(Protocol::Udp, 53, 53), port(Protocol::Tcp, 53, 53)],
            }];
        }
        2..=6 => {
            let target = app(kind + serial);
            p.name = format!("{target}-ingress-{serial}");
            p.pod_selector = sel(&[("app", &target)]);
            p.ingress = vec![
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: None,
                        pods: sel(&[("app", &app(kind + serial + 9))]),
                    }],
                    ports: vec![PolicyPort {
                        protocol: Protocol::Tcp,
                        port: PortSpec::Named("http".into()),
                    }],
                },
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(sel(&[("team", &team)])),
                        pods: sel(&[("tier", "web")]),
                    }],
                    ports: vec![port(Protocol::Tcp, 8080, 8080)],
                },
            ];
        }
        7 => {
            p.name = format!("lb-ingress-{serial}");
            p.pod_selector = expr("tier", Operator::In, &["web", "api"]);
            p.ingress = vec![Rule {
                peers: vec![block(
                    "10.0.0.0/8",
                    &[format!("10.{}.0.0/16", 128 + n % 64)],
                )],
                ports: vec![
                    port(Protocol::Tcp, 443, 443),
                    port(Protocol::Tcp, 8443, 8443),
                ],
            }];
        }
        8 => {
            p.name = format!("egress-{serial}");
            p.isolates_egress = true;
            p.isolates_ingress = false;
            p.egress = vec![
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: None,
                        pods: LabelSelector::default(),
                    }],
                    ports: vec![],
                },
                Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(sel(&[("team", &team)])),
                        pods: LabelSelector::default(),
                    }],
                    ports: vec![port(Protocol::Tcp, 8080, 8080)],
                },
                Rule {
                    peers: vec![block(
                        "0.0.0.0/0",
                        &[
                            "10.0.0.0/8".into(),
                            "172.16.0.0/12".into(),
                            "192.168.0.0/16".into(),
                        ],
                    )],
                    ports: vec![port(Protocol::Tcp, 443, 443)],
                },
            ];
        }
        _ => {
            p.name = format!("nodeport-{serial}");
            p.pod_selector = expr("tier", Operator::NotIn, &["db"]);
            p.ingress = vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: Some(expr("env", Operator::In, &["prod", "staging"])),
                    pods: LabelSelector::default(),
                }],
                ports: vec![port(Protocol::Tcp, 30000, 32767)],
            }];
        }
    }
    p
}

/// Kinds of ClusterNetworkPolicy [`cluster_policy`] writes, round robin.
pub const CLUSTER_POLICY_KINDS: usize = 10;

/// The networks the first kind of ClusterNetworkPolicy denies egress to:
/// two of the outside ranges of the traffic mix ([`attempts`]).
pub const DENIED_NETWORKS: [&str; 2] = ["192.0.2.0/24", "203.0.113.0/24"];

fn named(name: &str) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port: PortSpec::Named(name.to_owned()),
    }
}

fn networks(cidrs: &[String]) -> TierPeer {
    TierPeer::Networks(
        cidrs
            .iter()
            .map(|c| c.parse().expect("valid cidr"))
            .collect(),
    )
}

fn tier_rule(name: &str, action: Action, peers: Vec<TierPeer>, ports: Vec<PolicyPort>) -> TierRule {
    TierRule {
        name: name.to_owned(),
        action,
        peers,
        ports,
    }
}

/// ClusterNetworkPolicy number `i` of a cluster of `ns_count` namespaces:
/// kind `i % 10`, serial `i / 10` (which varies the namespace or team it
/// is about). The kinds are the guardrails admins write:
///
/// 0. Admin: egress to two known-bad networks denied, cluster-wide.
/// 1. Admin: the shared namespace `ns-0` (the synthetic kube-system, which
///    runs DNS) closed to other namespaces' egress, except DNS.
/// 2. Admin: a team's namespaces open to the monitoring pods (`app-9`) on
///    the named port `metrics`.
/// 3. Admin: prod namespaces deny ingress from dev ones and Pass staging
///    traffic on 8000-8999 on to NetworkPolicy.
/// 4. Admin: a team's web and api pods Pass their team's traffic (port
///    range) and their egress to its databases on to NetworkPolicy.
/// 5. Admin: a namespace accepts its own pods on 8080 and the named port
///    `http`.
/// 6. Baseline: default deny per namespace (ingress from every namespace;
///    egress to every network).
/// 7. Baseline: a namespace accepts its own pods.
/// 8. Admin: prod web pods deny the NodePort range to every db pod.
/// 9. Baseline: a team's databases reach the team's pods and nothing
///    outside the cluster.
///
/// Priorities spread with the serial; kinds 0 and 1, 2 and 3, 6 and 7 share
/// theirs (ties, resolved by name).
#[must_use]
#[allow(
    clippy::too_many_lines,
    reason = "one arm per kind of policy, read side by side"
)]
pub fn cluster_policy(i: usize, ns_count: usize) -> ClusterNetworkPolicy {
    const BASE: [usize; CLUSTER_POLICY_KINDS] = [5, 5, 20, 20, 40, 60, 0, 0, 80, 100];
    let (kind, serial) = (i % CLUSTER_POLICY_KINDS, i / CLUSTER_POLICY_KINDS);
    let n = serial % ns_count.max(1);
    let ns = namespace_name(n);
    let team = format!("team-{}", serial % TEAMS);
    let every = LabelSelector::default;
    let in_ns = || sel(&[(NAMESPACE_NAME_LABEL, ns.as_str())]);
    let mut p = ClusterNetworkPolicy {
        api: PolicyApi::ClusterV1beta1,
        name: String::new(),
        tier: Tier::Admin,
        priority: ((BASE[kind] + serial * 7) % 1001) as u32,
        subject: Subject::Namespaces(every()),
        ingress: Vec::new(),
        egress: Vec::new(),
        unsupported: Vec::new(),
    };
    match kind {
        0 => {
            p.name = format!("deny-bad-networks-{serial}");
            let mut cidrs: Vec<String> = DENIED_NETWORKS.iter().map(|c| (*c).to_owned()).collect();
            cidrs.push(format!("100.64.{}.0/24", serial % 256));
            p.egress = vec![tier_rule(
                "bad-networks",
                Action::Deny,
                vec![networks(&cidrs)],
                vec![],
            )];
        }
        1 => {
            p.name = format!("infra-guard-{serial}");
            p.subject = Subject::Namespaces(LabelSelector {
                match_labels: if serial == 0 {
                    Vec::new()
                } else {
                    vec![("team".to_owned(), team.clone())]
                },
                match_expressions: expr(NAMESPACE_NAME_LABEL, Operator::NotIn, &["ns-0"])
                    .match_expressions,
            });
            let infra = || sel(&[(NAMESPACE_NAME_LABEL, "ns-0")]);
            p.egress = vec![
                tier_rule(
                    "dns",
                    Action::Accept,
                    vec![TierPeer::Pods {
                        namespaces: infra(),
                        pods: sel(&[("app", "app-0")]),
                    }],
                    vec![port(Protocol::Udp, 53, 53), port(Protocol::Tcp, 53, 53)],
                ),
                tier_rule(
                    "no-infra",
                    Action::Deny,
                    vec![TierPeer::Namespaces(infra())],
                    vec![],
                ),
            ];
        }
        2 => {
            p.name = format!("allow-monitoring-{serial}");
            p.subject = Subject::Namespaces(sel(&[("team", &team)]));
            p.ingress = vec![tier_rule(
                "scrape",
                Action::Accept,
                vec![TierPeer::Pods {
                    namespaces: every(),
                    pods: sel(&[("app", "app-9")]),
                }],
                vec![named("metrics")],
            )];
        }
        3 => {
            p.name = format!("env-isolation-{serial}");
            p.subject = Subject::Namespaces(sel(&[("env", "prod")]));
            p.ingress = vec![
                tier_rule(
                    "no-dev",
                    Action::Deny,
                    vec![TierPeer::Namespaces(sel(&[("env", "dev")]))],
                    vec![],
                ),
                tier_rule(
                    "staging-to-owners",
                    Action::Pass,
                    vec![TierPeer::Namespaces(sel(&[("env", "staging")]))],
                    vec![port(Protocol::Tcp, 8000, 8999)],
                ),
            ];
        }
        4 => {
            p.name = format!("team-{}-delegate-{serial}", serial % TEAMS);
            p.subject = Subject::Pods {
                namespaces: sel(&[("team", &team)]),
                pods: expr("tier", Operator::In, &["web", "api"]),
            };
            p.ingress = vec![tier_rule(
                "team",
                Action::Pass,
                vec![TierPeer::Namespaces(sel(&[("team", &team)]))],
                vec![port(Protocol::Tcp, 8000, 8999)],
            )];
            p.egress = vec![tier_rule(
                "team-db",
                Action::Pass,
                vec![TierPeer::Pods {
                    namespaces: sel(&[("team", &team)]),
                    pods: sel(&[("tier", "db")]),
                }],
                vec![port(Protocol::Tcp, 5432, 5432)],
            )];
        }
        5 => {
            p.name = format!("{ns}-same-namespace");
            p.subject = Subject::Namespaces(in_ns());
            p.ingress = vec![tier_rule(
                "same-namespace",
                Action::Accept,
                vec![TierPeer::Namespaces(in_ns())],
                vec![port(Protocol::Tcp, 8080, 8080), named("http")],
            )];
        }
        6 => {
            p.name = format!("{ns}-baseline-deny-{serial}");
            p.tier = Tier::Baseline;
            p.subject = Subject::Namespaces(in_ns());
            p.ingress = vec![tier_rule(
                "default-deny",
                Action::Deny,
                vec![TierPeer::Namespaces(every())],
                vec![],
            )];
            p.egress = vec![tier_rule(
                "default-deny",
                Action::Deny,
                vec![networks(&["0.0.0.0/0".to_owned()])],
                vec![],
            )];
        }
        7 => {
            p.name = format!("{ns}-baseline-same-namespace-{serial}");
            p.tier = Tier::Baseline;
            p.subject = Subject::Namespaces(in_ns());
            p.ingress = vec![tier_rule(
                "same-namespace",
                Action::Accept,
                vec![TierPeer::Namespaces(in_ns())],
                vec![],
            )];
        }
        8 => {
            p.name = format!("nodeports-{serial}");
            p.subject = Subject::Pods {
                namespaces: sel(&[("env", "prod")]),
                pods: sel(&[("tier", "web")]),
            };
            p.ingress = vec![tier_rule(
                "no-db",
                Action::Deny,
                vec![TierPeer::Pods {
                    namespaces: every(),
                    pods: sel(&[("tier", "db")]),
                }],
                vec![port(Protocol::Tcp, 30000, 32767)],
            )];
        }
        _ => {
            p.name = format!("team-{}-db-egress-{serial}", serial % TEAMS);
            p.tier = Tier::Baseline;
            p.subject = Subject::Pods {
                namespaces: sel(&[("team", &team)]),
                pods: sel(&[("tier", "db")]),
            };
            p.egress = vec![
                tier_rule(
                    "team",
                    Action::Accept,
                    vec![TierPeer::Namespaces(sel(&[("team", &team)]))],
                    vec![],
                ),
                tier_rule(
                    "no-internet",
                    Action::Deny,
                    vec![networks(&["0.0.0.0/0".to_owned()])],
                    vec![],
                ),
            ];
        }
    }
    p
}

/// Whether a tier (an Admin or Baseline rule) decided `v`: a tier's Deny
/// on a side that denies it, or, allowed, a tier's Accept on either side.
#[must_use]
pub fn decided_by_tier(v: &Verdict) -> bool {
    let sides = [v.egress, v.ingress];
    if v.is_allowed() {
        sides
            .iter()
            .any(|d| matches!(d, Decision::TierAccepted(_) | Decision::TierWouldDeny(_)))
    } else {
        sides.iter().any(|d| matches!(d, Decision::TierDenied(_)))
    }
}

/// First ClusterIP of the synthetic Services (kubeadm's default service
/// CIDR, 10.96.0.0/12; its first address is left to `kubernetes`).
pub const SERVICE_BASE: u32 = 0x0a60_0000;

/// The ports every synthetic Service exposes: the (protocol, port) pairs of
/// the traffic mix ([`attempts`]), each to the same target port, so that
/// traffic through a Service is the mix's traffic, translated.
pub const SERVICE_PORTS: [(Protocol, u16); 7] = [
    (Protocol::Tcp, 8080),
    (Protocol::Udp, 53),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 31000),
    (Protocol::Tcp, 9090),
    (Protocol::Tcp, 80),
    (Protocol::Sctp, 8080),
];

/// The number of the Service of `app` in namespace `n`.
fn service_index(n: usize, app: usize) -> usize {
    n * APPS + app
}

/// The ClusterIP of the synthetic Service that fronts pod number `i` (see
/// [`add_services`]), if `shape` has that pod.
#[must_use]
pub fn service_ip_of_pod(shape: Shape, i: usize) -> Option<Ipv4Addr> {
    if i >= shape.pods {
        return None;
    }
    let ns_count = shape.namespaces.max(1);
    let (n, app) = (i % ns_count, (i / ns_count) % APPS);
    Some(service_ip(service_index(n, app)))
}

/// The ClusterIP of Service number `s`.
#[must_use]
pub fn service_ip(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(SERVICE_BASE + 1 + s as u32)
}

/// Adds a ClusterIP Service per app and namespace, as a Deployment would
/// have (one per ten pods at the default sizes: 1,000 Services over 10,000
/// pods): selector `app`, the ports of [`SERVICE_PORTS`], and one IPv4
/// EndpointSlice listing every pod of the app in the namespace, ready, on
/// its node. Returns the number of Services added.
pub fn add_services(c: &mut Cluster, shape: Shape) -> usize {
    let ns_count = shape.namespaces.max(1);
    let mut backends: std::collections::BTreeMap<(usize, usize), Vec<usize>> =
        std::collections::BTreeMap::new();
    for i in 0..shape.pods {
        backends
            .entry((i % ns_count, (i / ns_count) % APPS))
            .or_default()
            .push(i);
    }
    let port_name = |(protocol, port): (Protocol, u16)| {
        format!("{}-{port}", protocol.to_string().to_lowercase())
    };
    for (&(n, app), pods) in &backends {
        let name = format!("app-{app}");
        let namespace = namespace_name(n);
        c.apply(Service {
            namespace: namespace.clone(),
            name: name.clone(),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![IpAddr::V4(service_ip(service_index(n, app)))],
            headless: false,
            ports: SERVICE_PORTS
                .iter()
                .map(|&(protocol, port)| ServicePort {
                    name: port_name((protocol, port)),
                    protocol,
                    port,
                    target_port: TargetPort::Number(port),
                    node_port: None,
                })
                .collect(),
            has_selector: true,
            session_affinity: SessionAffinity::None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_ips: Vec::new(),
            proxy_name: None,
        });
        c.apply(EndpointSlice {
            namespace,
            name: format!("{name}-synthetic"),
            service: Some(name),
            address_type: AddressType::Ipv4,
            endpoints: pods
                .iter()
                .map(|&i| Endpoint {
                    address: IpAddr::V4(pod_ip(i)),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: Some(format!("node-{}", i % 50)),
                    zone: None,
                    zone_hints: Vec::new(),
                    node_hints: Vec::new(),
                })
                .collect(),
            ports: SERVICE_PORTS
                .iter()
                .map(|&(protocol, port)| EndpointPort {
                    name: port_name((protocol, port)),
                    protocol,
                    port: Some(port),
                })
                .collect(),
        });
    }
    backends.len()
}

/// A connection attempt of the benchmark's traffic mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// Source address (host order).
    pub src: u32,
    /// Destination address (host order).
    pub dst: u32,
    /// IP protocol.
    pub protocol: podfence_datapath::IpProtocol,
    /// Destination port.
    pub port: u16,
}

/// A deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `count` connection attempts: 60% to a pod of the same namespace, 25% to a
/// pod elsewhere, 15% to or from outside addresses; ports from the ones the
/// policies name and some they do not.
#[must_use]
pub fn attempts(shape: Shape, count: usize, seed: u64) -> Vec<Attempt> {
    let mut rng = Rng::new(seed);
    let ns_count = shape.namespaces.max(1);
    let per_ns = (shape.pods / ns_count).max(1);
    let outside = [
        0xc000_0200u32,
        0xc633_6400,
        0xcb00_7100,
        0x0a01_0203,
        0x0a80_0000 + 0x0010_0000,
    ];
    let ports: [(podfence_datapath::IpProtocol, u16); 8] = [
        (podfence_datapath::IpProtocol::TCP, 8080),
        (podfence_datapath::IpProtocol::TCP, 8080),
        (podfence_datapath::IpProtocol::UDP, 53),
        (podfence_datapath::IpProtocol::TCP, 443),
        (podfence_datapath::IpProtocol::TCP, 31000),
        (podfence_datapath::IpProtocol::TCP, 9090),
        (podfence_datapath::IpProtocol::TCP, 80),
        (podfence_datapath::IpProtocol::SCTP, 8080),
    ];
    (0..count)
        .map(|_| {
            let src_pod = rng.below(shape.pods);
            let src = POD_BASE + src_pod as u32;
            let roll = rng.below(100);
            let (src, dst) = if roll < 60 {
                let same = (src_pod % ns_count) + ns_count * rng.below(per_ns);
                (src, POD_BASE + same.min(shape.pods - 1) as u32)
            } else if roll < 85 {
                (src, POD_BASE + rng.below(shape.pods) as u32)
            } else if roll < 93 {
                (
                    src,
                    outside[rng.below(outside.len())] + rng.below(200) as u32,
                )
            } else {
                (
                    outside[rng.below(outside.len())] + rng.below(200) as u32,
                    src,
                )
            };
            let (protocol, port) = ports[rng.below(ports.len())];
            Attempt {
                src,
                dst,
                protocol,
                port,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podfence_control::compile::{CompileOptions, compile};

    #[test]
    fn shape_is_as_asked_and_mix_is_mixed() {
        let shape = Shape {
            namespaces: 10,
            pods: 200,
            policies: 100,
            cluster_policies: 0,
        };
        let c = cluster(shape);
        assert_eq!(
            (c.namespaces.len(), c.pods.len(), c.policies.len()),
            (10, 200, 100)
        );
        let t = compile(&c, &CompileOptions::default()).tables;
        let tries = attempts(shape, 2000, 1);
        let allowed = tries
            .iter()
            .filter(|a| t.classify_v4(a.src, a.dst, a.protocol, a.port).is_allowed())
            .count();
        assert!(
            allowed > 200 && allowed < 1800,
            "allowed {allowed} of 2000: the mix should be mixed"
        );
    }

    #[test]
    fn cluster_policies_are_guardrails_of_both_tiers_that_decide_some_traffic() {
        let shape = Shape {
            namespaces: 10,
            pods: 200,
            policies: 100,
            cluster_policies: 40,
        };
        let c = cluster(shape);
        assert_eq!(c.cluster_policies.len(), 40);
        assert_eq!(
            cluster(shape).cluster_policies,
            c.cluster_policies,
            "deterministic"
        );
        let all: Vec<_> = c.cluster_policies.values().collect();
        for tier in [Tier::Admin, Tier::Baseline] {
            assert!(all.iter().any(|p| p.tier == tier), "{tier}");
        }
        let rules = || all.iter().flat_map(|p| p.ingress.iter().chain(&p.egress));
        for action in [Action::Accept, Action::Deny, Action::Pass] {
            assert!(rules().any(|r| r.action == action), "{action}");
        }
        assert!(rules().any(|r| r.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_)))));
        assert!(rules().any(|r| r.peers.iter().any(|p| matches!(p, TierPeer::Networks(_)))));
        let mut admin: Vec<u32> = all
            .iter()
            .filter(|p| p.tier == Tier::Admin)
            .map(|p| p.priority)
            .collect();
        let count = admin.len();
        admin.sort_unstable();
        admin.dedup();
        assert!(admin.len() < count, "some Admin priorities tie");

        let decided = |shape: Shape| {
            let t = compile(&cluster(shape), &CompileOptions::default()).tables;
            attempts(shape, 4000, 1)
                .iter()
                .filter(|a| decided_by_tier(&t.classify_v4(a.src, a.dst, a.protocol, a.port)))
                .count()
        };
        let tier = decided(shape);
        assert!(
            (40..2000).contains(&tier),
            "{tier} of 4000 decided by a tier"
        );
        assert_eq!(
            decided(Shape {
                cluster_policies: 0,
                ..shape
            }),
            0
        );
    }

    #[test]
    fn a_service_per_app_and_namespace_fronts_its_pods() {
        let shape = Shape {
            namespaces: 10,
            pods: 250,
            policies: 10,
            cluster_policies: 0,
        };
        let mut c = cluster(shape);
        assert_eq!(add_services(&mut c, shape), 100);
        assert_eq!((c.services.len(), c.endpoint_slices.len()), (100, 100));
        let table = podfence_control::compile::compile_services(
            &c,
            &podfence_control::compile::Locality::AllPods,
        )
        .table;
        assert_eq!(table.stats().frontends, 100 * SERVICE_PORTS.len());
        for i in 0..shape.pods {
            let ip = service_ip_of_pod(shape, i).expect("every pod has a Service");
            for (protocol, port) in SERVICE_PORTS {
                let f = table
                    .frontend(IpAddr::V4(ip), protocol.ip_protocol(), port)
                    .expect("a frontend per port");
                let me = podfence_datapath::services::Backend {
                    addr: IpAddr::V4(pod_ip(i)),
                    port,
                };
                assert!(f.backends().contains(&me), "pod {i} backs {ip}:{port}");
                // 250 pods over 10 namespaces and 10 apps: 2 or 3 each.
                assert!((2..=3).contains(&f.backends().len()));
            }
        }
        assert_eq!(service_ip_of_pod(shape, shape.pods), None);
    }
}
