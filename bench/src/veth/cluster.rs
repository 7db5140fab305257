//! The cluster of the veth benchmark: a synthetic cluster (see
//! [`crate::synthetic`]) whose first two pods of namespace `ns-0` run on the
//! benchmark's node, one as the generator, one as the sink, plus two
//! policies that allow the measured traffic and deny the rest.
//!
//! The two policies are named `zz-bench-*`, so that they come last in
//! policy order: in podfence's tables the sink's allow entry for the
//! generator lists the rules of every earlier policy first, and in the
//! nftables chains the generator's rule is placed last (see
//! [`crate::nft::ruleset`]'s `deep`): the measured traffic is allowed by a
//! rule deep in the table.
//!
//! - `zz-bench-ingress` selects the sink and allows TCP and UDP on the
//!   allowed port from the generator; the denied port is allowed by no
//!   rule, so those packets are dropped by the sink's ingress policy.
//! - `zz-bench-egress` selects the generator and allows TCP and UDP to the
//!   sink on both ports, so that the decision falls on the sink's side.
//!
//! Every synthetic policy of `ns-0` applies to the two pods as well (the
//! default-deny, named-port, ipBlock, nodeport rules: 10 of them at 1,000
//! policies over 100 namespaces, 100 at 10,000).
//!
//! The sink is also the only backend of a ClusterIP Service,
//! `zz-bench-sink` at [`SERVICE_IP`], for the paths through a Service: its
//! ports [`SERVICE_ALLOWED_PORT`] and [`SERVICE_DENIED_PORT`] (TCP and UDP)
//! go to the allowed and the denied port, so that translation changes the
//! address and the port, and the sink receives what it receives on the
//! other paths. The Service and its EndpointSlice are in `full` and `open`
//! (every podfence path publishes them), not in `local`: the testbed
//! itself installs no kube-proxy rules; the paths that want them install
//! them for their run.

use std::net::Ipv4Addr;

use podfence_control::index::Cluster;
use podfence_control::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, LabelSelector, NetworkPolicy, Peer,
    PolicyPort, PortSpec, Protocol, Rule, Service, ServicePort, ServiceType, SessionAffinity,
    TargetPort, TrafficPolicy,
};

use crate::synthetic::{self, Shape};

/// The node the benchmark's pods run on.
pub const BENCH_NODE: &str = "bench-node";
/// The ClusterIP of the sink's Service (outside the synthetic Services'
/// range, in the same service CIDR).
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 250, 1);
/// The service CIDR kube-proxy is told about (kubeadm's default).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The pod CIDR (kube-proxy's `--cluster-cidr`): every synthetic pod.
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";
/// The Service port translated to the allowed port.
pub const SERVICE_ALLOWED_PORT: u16 = 80;
/// The Service port translated to the denied port.
pub const SERVICE_DENIED_PORT: u16 = 81;
/// The name of the sink's Service.
pub const SERVICE_NAME: &str = "zz-bench-sink";
/// Label that tells the synthetic pods apart one by one.
const HASH_LABEL: &str = "pod-template-hash";

/// The clusters of one benchmark size.
#[derive(Clone, Debug)]
pub struct BenchCluster {
    /// Synthetic policies (without the two benchmark policies).
    pub policies: usize,
    /// Everything: the agent's cluster on the podfence path.
    pub full: Cluster,
    /// The same pods and namespaces without any policy: the policy-off path.
    pub open: Cluster,
    /// The generator and the sink only, for the testbed.
    pub local: Cluster,
    /// `namespace/name` of the generator pod.
    pub generator: String,
    /// ... and its address.
    pub generator_ip: Ipv4Addr,
    /// `namespace/name` of the sink pod.
    pub sink: String,
    /// ... and its address.
    pub sink_ip: Ipv4Addr,
    /// The ClusterIP of the sink's Service.
    pub service_ip: Ipv4Addr,
}

fn port(protocol: Protocol, first: u16, last: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: PortSpec::Range(first, last),
    }
}

fn by_hash(hash: &str) -> LabelSelector {
    LabelSelector {
        match_labels: vec![(HASH_LABEL.to_owned(), hash.to_owned())],
        match_expressions: Vec::new(),
    }
}

/// Builds the clusters: `shape` (at least `namespaces + 1` pods) plus the
/// benchmark's pods and policies. `allowed` and `denied` are the
/// destination ports of the traffic.
#[must_use]
pub fn bench_cluster(shape: Shape, allowed: u16, denied: u16) -> BenchCluster {
    let shape = Shape {
        pods: shape.pods.max(shape.namespaces.max(1) + 1),
        ..shape
    };
    let mut full = synthetic::cluster(shape);
    // Pod 0 and pod `namespaces` are the first two of namespace ns-0.
    let pick = |cluster: &Cluster, i: usize| {
        let ip = std::net::IpAddr::V4(synthetic::pod_ip(i));
        cluster
            .pods
            .values()
            .find(|p| p.ips.contains(&ip))
            .map(|p| podfence_control::model::Pod::clone(p))
            .expect("the synthetic cluster has the pod")
    };
    let mut sink = pick(&full, 0);
    let mut generator = pick(&full, shape.namespaces.max(1));
    sink.node = Some(BENCH_NODE.into());
    generator.node = Some(BENCH_NODE.into());
    let hash = |p: &podfence_control::model::Pod| {
        p.labels
            .iter()
            .find(|(k, _)| k.as_str() == HASH_LABEL)
            .map(|(_, v)| v.clone())
            .expect("synthetic pods carry a hash label")
    };
    let (sink_hash, gen_hash) = (hash(&sink), hash(&generator));
    let namespace = sink.namespace.clone();
    let ingress = NetworkPolicy {
        namespace: namespace.clone(),
        name: "zz-bench-ingress".into(),
        pod_selector: by_hash(&sink_hash),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: by_hash(&gen_hash),
            }],
            ports: vec![
                port(Protocol::Tcp, allowed, allowed),
                port(Protocol::Udp, allowed, allowed),
            ],
        }],
        egress: Vec::new(),
    };
    let (lo, hi) = (allowed.min(denied), allowed.max(denied));
    let egress = NetworkPolicy {
        namespace,
        name: "zz-bench-egress".into(),
        pod_selector: by_hash(&gen_hash),
        isolates_ingress: false,
        isolates_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: None,
                pods: by_hash(&sink_hash),
            }],
            ports: vec![port(Protocol::Tcp, lo, hi), port(Protocol::Udp, lo, hi)],
        }],
    };
    let v4 = |p: &podfence_control::model::Pod| {
        crate::traffic::first_v4(&p.ips).expect("synthetic pods have IPv4 addresses")
    };
    let (sink_ip, generator_ip) = (v4(&sink), v4(&generator));
    let (sink_key, gen_key) = (sink.key().to_string(), generator.key().to_string());
    let (service, slice) = sink_service(&sink.namespace, sink_ip, allowed, denied);
    full.apply(sink.clone());
    full.apply(generator.clone());
    full.apply(ingress);
    full.apply(egress);
    full.apply(service);
    full.apply(slice);
    let mut open = full.clone();
    open.policies.clear();
    let mut local = Cluster::default();
    if let Some(ns) = full.namespaces.get(&sink.namespace) {
        local.apply(podfence_control::model::Namespace::clone(ns));
    }
    local.apply(sink);
    local.apply(generator);
    BenchCluster {
        policies: shape.policies,
        full,
        open,
        local,
        generator: gen_key,
        generator_ip,
        sink: sink_key,
        sink_ip,
        service_ip: SERVICE_IP,
    }
}

/// The sink's ClusterIP Service and its EndpointSlice: TCP and UDP on
/// [`SERVICE_ALLOWED_PORT`] to `allowed` and on [`SERVICE_DENIED_PORT`] to
/// `denied`, the sink its only endpoint, ready, on the benchmark's node.
#[must_use]
pub fn sink_service(
    namespace: &str,
    sink_ip: Ipv4Addr,
    allowed: u16,
    denied: u16,
) -> (Service, EndpointSlice) {
    let ports = [
        ("allowed", SERVICE_ALLOWED_PORT, allowed),
        ("denied", SERVICE_DENIED_PORT, denied),
    ];
    let protocols = [Protocol::Tcp, Protocol::Udp];
    let name = |which: &str, protocol: Protocol| {
        format!("{which}-{}", protocol.to_string().to_lowercase())
    };
    let service = Service {
        namespace: namespace.to_owned(),
        name: SERVICE_NAME.into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![SERVICE_IP.into()],
        headless: false,
        ports: ports
            .iter()
            .flat_map(|&(which, port, target)| {
                protocols.map(|protocol| ServicePort {
                    name: name(which, protocol),
                    protocol,
                    port,
                    target_port: TargetPort::Number(target),
                    node_port: None,
                })
            })
            .collect(),
        has_selector: true,
        session_affinity: SessionAffinity::None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_ips: Vec::new(),
        proxy_name: None,
    };
    let slice = EndpointSlice {
        namespace: namespace.to_owned(),
        name: format!("{SERVICE_NAME}-bench"),
        service: Some(SERVICE_NAME.into()),
        address_type: AddressType::Ipv4,
        endpoints: vec![Endpoint {
            address: sink_ip.into(),
            ready: true,
            serving: true,
            terminating: false,
            node: Some(BENCH_NODE.into()),
            zone: None,
            zone_hints: Vec::new(),
            node_hints: Vec::new(),
        }],
        ports: ports
            .iter()
            .flat_map(|&(which, _, target)| {
                protocols.map(|protocol| EndpointPort {
                    name: name(which, protocol),
                    protocol,
                    port: Some(target),
                })
            })
            .collect(),
    };
    (service, slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podfence_control::compile::{CompileOptions, Locality, compile};
    use podfence_datapath::IpProtocol as P;

    #[test]
    fn measured_traffic_is_allowed_and_the_rest_denied_at_every_size() {
        for policies in [1, 10, 100, 1_000] {
            let bench = bench_cluster(
                Shape {
                    namespaces: 100,
                    pods: 1_000,
                    policies,
                    cluster_policies: 0,
                },
                5201,
                5202,
            );
            assert_eq!(bench.local.pods.len(), 2);
            let tables = compile(
                &bench.full,
                &CompileOptions {
                    locality: Locality::Node(BENCH_NODE.into()),
                    ..CompileOptions::default()
                },
            )
            .tables;
            let (generator, sink) = (u32::from(bench.generator_ip), u32::from(bench.sink_ip));
            for proto in [P::TCP, P::UDP] {
                assert!(
                    tables
                        .classify_v4(generator, sink, proto, 5201)
                        .is_allowed(),
                    "{policies}"
                );
                let verdict = tables.classify_v4(generator, sink, proto, 5202);
                assert!(!verdict.is_allowed(), "{policies}");
                assert!(verdict.egress.is_allowed(), "denied by the sink's ingress");
            }
            let open = compile(&bench.open, &CompileOptions::default()).tables;
            assert!(open.classify_v4(generator, sink, P::TCP, 5202).is_allowed());
        }
    }

    #[test]
    fn the_sink_is_the_backend_of_its_service_on_both_ports() {
        let bench = bench_cluster(
            Shape {
                namespaces: 10,
                pods: 100,
                policies: 10,
                cluster_policies: 0,
            },
            5201,
            5202,
        );
        assert!(
            bench.local.services.is_empty(),
            "the testbed installs no kube-proxy rules"
        );
        for cluster in [&bench.full, &bench.open] {
            let table = podfence_control::compile::compile_services(
                cluster,
                &Locality::Node(BENCH_NODE.into()),
            )
            .table;
            for proto in [P::TCP, P::UDP] {
                for (port, target) in [(SERVICE_ALLOWED_PORT, 5201), (SERVICE_DENIED_PORT, 5202)] {
                    let f = table
                        .frontend(bench.service_ip.into(), proto, port)
                        .expect("a frontend");
                    let want = podfence_datapath::services::Backend {
                        addr: bench.sink_ip.into(),
                        port: target,
                    };
                    assert_eq!(f.backends(), [want]);
                }
            }
        }
        let rules = crate::kube_proxy::rules(
            &bench.full,
            &crate::kube_proxy::KubeProxyConfig {
                locality: Locality::Node(BENCH_NODE.into()),
                ..crate::kube_proxy::KubeProxyConfig::default()
            },
        );
        assert_eq!((rules.service_ports, rules.endpoint_chains), (4, 4));
        assert!(rules.text.contains(&bench.service_ip.to_string()));
    }
}
