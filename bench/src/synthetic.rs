//! Synthetic clusters for benchmarks, shaped like real multi-team clusters.
//!
//! Every namespace belongs to a team and an environment and runs ten apps in
//! three tiers; every namespace carries the same ten kinds of policy that
//! production clusters are full of: default deny in both directions, DNS
//! egress to a shared namespace, app-to-app rules with named ports,
//! cross-namespace rules by team label, ipBlocks with per-namespace `except`
//! holes, an internet egress rule, matchExpressions, and a NodePort-style
//! `endPort` range. Generation is deterministic for a given size.

use std::net::{IpAddr, Ipv4Addr};

use podfence_control::index::Cluster;
use podfence_control::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, IpBlock, LabelSelector, Labels,
    NAMESPACE_NAME_LABEL, NamedPort, Namespace, NetworkPolicy, Operator, Peer, Pod, PodPhase,
    PolicyPort, PortSpec, Protocol, Requirement, Rule, Service, ServicePort, ServiceType,
    SessionAffinity, TargetPort, TrafficPolicy,
};

/// Size of a synthetic cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Namespaces.
    pub namespaces: usize,
    /// Pods, spread evenly over the namespaces.
    pub pods: usize,
    /// Policies, spread evenly over the namespaces (ten kinds, round robin).
    pub policies: usize,
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
    fn a_service_per_app_and_namespace_fronts_its_pods() {
        let shape = Shape {
            namespaces: 10,
            pods: 250,
            policies: 10,
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
