//! A ClusterIP Service of its own for every pod target, as upstream's e2e
//! NetworkPolicy suite probes its pods (`podfence-bench matrix
//! --via-services`, the live conformance run through Services).
//!
//! [`PodServices::new`] makes, for each pod the testbed builds (addresses
//! of its own, not host-network, not finished), a Service `s-<pod>` in the
//! pod's namespace (another name when that one is taken) without a
//! selector, with one port per probed protocol and port (`targetPort` the
//! same number), and an EndpointSlice per address family holding that pod
//! alone, as the EndpointSlice controller would write it. ClusterIPs come
//! from [`SERVICE_RANGE_V4`] and [`SERVICE_RANGE_V6`], skipping every
//! address the cluster (or the caller) already uses. [`PodServices::add_to`]
//! adds them to a cluster in memory, and [`PodServices::via`] names the
//! ClusterIPs a probe goes to instead of its destination pod: probes from
//! `ext:` sources (outside the cluster, nothing translates their traffic)
//! and to anything but a pod keep their destination. The verdict expected of
//! a probe through its Service is that of the direct probe: policy applies
//! after translation, to the backend.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use podfence_control::index::Cluster;
use podfence_control::model::{
    AddressType, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol, Service, ServicePort,
    ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};
use podfence_control::probe::{self, Probe};

/// Where the ClusterIPs of IPv4 pods come from (10.96.100.0/24).
pub const SERVICE_RANGE_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 100, 0), 24);
/// Where the ClusterIPs of IPv6 pods come from (fd00:96:100::/112).
pub const SERVICE_RANGE_V6: (Ipv6Addr, u8) =
    (Ipv6Addr::new(0xfd00, 0x96, 0x100, 0, 0, 0, 0, 0), 112);

/// Why the Services could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PodServicesError {
    /// The range has no free address left.
    #[error("no free ClusterIP left in {0} for a Service per pod")]
    RangeFull(String),
}

/// One pod's Service: its key and ClusterIPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodService {
    /// The Service (`namespace/s-<pod>`).
    pub service: ObjectKey,
    /// Its ClusterIPs, one per address family of the pod, in the pod's order.
    pub cluster_ips: Vec<IpAddr>,
}

/// A Service per pod target, ready to be added to a cluster.
#[derive(Clone, Debug, Default)]
pub struct PodServices {
    by_pod: BTreeMap<ObjectKey, PodService>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
}

/// The protocols and ports probes to pods use, sorted: the ports every
/// pod's Service gets.
#[must_use]
pub fn probed_ports(probes: &[Probe]) -> Vec<(Protocol, u16)> {
    probes
        .iter()
        .filter(|p| matches!(p.dst, probe::Endpoint::Pod { .. }))
        .map(|p| (p.protocol, p.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Free addresses of a range, lowest first (the range's first address
/// excluded, and for IPv4 its last).
struct Allocator {
    base: u128,
    size: u128,
    v4: bool,
    next: u128,
}

impl Allocator {
    fn new(base: IpAddr, len: u8) -> Self {
        let (base, width, v4) = match base {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32, true),
            IpAddr::V6(a) => (u128::from(a), 128, false),
        };
        Self {
            base,
            size: 1 << (width - u32::from(len)),
            v4,
            next: 1,
        }
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.addr(0), self.prefix_len())
    }

    fn prefix_len(&self) -> u32 {
        let width = if self.v4 { 32 } else { 128 };
        width - self.size.trailing_zeros()
    }

    fn addr(&self, offset: u128) -> IpAddr {
        let bits = self.base + offset;
        if self.v4 {
            IpAddr::V4(Ipv4Addr::from(
                u32::try_from(bits).expect("an IPv4 range holds IPv4 addresses"),
            ))
        } else {
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }

    fn take(&mut self, used: &HashSet<IpAddr>) -> Result<IpAddr, PodServicesError> {
        let last = if self.v4 { self.size - 1 } else { self.size };
        while self.next < last {
            let addr = self.addr(self.next);
            self.next += 1;
            if !used.contains(&addr) {
                return Ok(addr);
            }
        }
        Err(PodServicesError::RangeFull(self.describe()))
    }
}

impl PodServices {
    /// A Service per pod of `cluster` the testbed builds, with a port per
    /// entry of `ports`. ClusterIPs avoid the cluster's Service and pod
    /// addresses and `avoid` (the probes' outside addresses).
    pub fn new(
        cluster: &Cluster,
        ports: &[(Protocol, u16)],
        avoid: &[IpAddr],
    ) -> Result<Self, PodServicesError> {
        let mut used: HashSet<IpAddr> = avoid.iter().copied().collect();
        for s in cluster.services.values() {
            used.extend(s.cluster_ips.iter().chain(&s.external_ips).copied());
        }
        for p in cluster.pods.values() {
            used.extend(p.ips.iter().chain(&p.host_ips).copied());
        }
        let mut v4 = Allocator::new(IpAddr::V4(SERVICE_RANGE_V4.0), SERVICE_RANGE_V4.1);
        let mut v6 = Allocator::new(IpAddr::V6(SERVICE_RANGE_V6.0), SERVICE_RANGE_V6.1);
        let service_ports: Vec<ServicePort> = ports
            .iter()
            .map(|&(protocol, port)| ServicePort {
                name: port_name(protocol, port),
                protocol,
                port,
                target_port: TargetPort::Number(port),
                node_port: None,
            })
            .collect();
        let slice_ports: Vec<EndpointPort> = ports
            .iter()
            .map(|&(protocol, port)| EndpointPort {
                name: port_name(protocol, port),
                protocol,
                port: Some(port),
            })
            .collect();
        let mut names: HashSet<ObjectKey> = cluster.services.keys().cloned().collect();
        let slice_names: HashSet<&ObjectKey> = cluster.endpoint_slices.keys().collect();
        let mut out = Self::default();
        for pod in cluster.pods.values().filter(|p| p.is_policy_endpoint()) {
            let mut name = format!("s-{}", pod.name);
            let mut n = 2;
            while names.contains(&ObjectKey::new(&pod.namespace, &name))
                || [4, 6].iter().any(|f| {
                    slice_names.contains(&ObjectKey::new(&pod.namespace, format!("{name}-{f}")))
                })
            {
                name = format!("s-{}-{n}", pod.name);
                n += 1;
            }
            names.insert(ObjectKey::new(&pod.namespace, &name));
            let mut cluster_ips = Vec::new();
            for &ip in &pod.ips {
                if cluster_ips
                    .iter()
                    .any(|c: &IpAddr| c.is_ipv4() == ip.is_ipv4())
                {
                    continue;
                }
                let allocator = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                cluster_ips.push(allocator.take(&used)?);
                let (address_type, family) = if ip.is_ipv4() {
                    (AddressType::Ipv4, 4)
                } else {
                    (AddressType::Ipv6, 6)
                };
                out.slices.push(Arc::new(EndpointSlice {
                    namespace: pod.namespace.clone(),
                    name: format!("{name}-{family}"),
                    service: Some(name.clone()),
                    address_type,
                    endpoints: vec![Endpoint {
                        address: ip,
                        ready: true,
                        serving: true,
                        terminating: false,
                        node: pod.node.clone(),
                        zone: None,
                        zone_hints: Vec::new(),
                        node_hints: Vec::new(),
                    }],
                    ports: slice_ports.clone(),
                }));
            }
            out.services.push(Arc::new(Service {
                namespace: pod.namespace.clone(),
                name: name.clone(),
                service_type: ServiceType::ClusterIp,
                cluster_ips: cluster_ips.clone(),
                headless: false,
                ports: service_ports.clone(),
                has_selector: false,
                session_affinity: SessionAffinity::None,
                internal_traffic_policy: TrafficPolicy::Cluster,
                external_ips: Vec::new(),
                proxy_name: None,
            }));
            out.by_pod.insert(
                pod.key(),
                PodService {
                    service: ObjectKey::new(&pod.namespace, name),
                    cluster_ips,
                },
            );
        }
        Ok(out)
    }

    /// Adds the Services and their EndpointSlices to `cluster` (which must
    /// have the pods they were made for).
    pub fn add_to(&self, cluster: &mut Cluster) {
        for s in &self.services {
            cluster.services.insert(s.key(), Arc::clone(s));
        }
        for s in &self.slices {
            cluster.endpoint_slices.insert(s.key(), Arc::clone(s));
        }
    }

    /// `cluster` with the Services added.
    #[must_use]
    pub fn with(&self, cluster: &Cluster) -> Cluster {
        let mut out = cluster.clone();
        self.add_to(&mut out);
        out
    }

    /// The Service of a pod, if it has one.
    #[must_use]
    pub fn of(&self, namespace: &str, name: &str) -> Option<&PodService> {
        self.by_pod.get(&ObjectKey::new(namespace, name))
    }

    /// Every pod's Service, by pod.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &PodService)> {
        self.by_pod.iter()
    }

    /// The ClusterIPs `probe` goes to instead of its destination pod: none
    /// when its source is outside the cluster (`ext:`) or its destination
    /// is no pod with a Service.
    #[must_use]
    pub fn via(&self, probe: &Probe) -> Option<&[IpAddr]> {
        if matches!(probe.src, probe::Endpoint::External(_)) {
            return None;
        }
        match &probe.dst {
            probe::Endpoint::Pod { namespace, name } => {
                self.of(namespace, name).map(|s| s.cluster_ips.as_slice())
            }
            _ => None,
        }
    }
}

/// A Service port's name: `tcp-80`.
fn port_name(protocol: Protocol, port: u16) -> String {
    format!("{}-{port}", protocol.to_string().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.244.1.1}, {ip: 'fd00:244::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 172.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.3}
---
apiVersion: v1
kind: Service
metadata: {name: s-c, namespace: y}
spec: {clusterIP: 10.96.100.1, ports: [{port: 80}]}
";

    fn cluster() -> Cluster {
        podfence_control::sources::manifests::load_str(std::path::Path::new("c.yaml"), CLUSTER)
            .expect("loads")
            .cluster
    }

    #[test]
    fn a_service_per_pod_with_free_addresses_and_names() {
        let cluster = cluster();
        let probes: Vec<Probe> = [
            "x/a\ty/c\tTCP\t80",
            "y/c\tx/a\tUDP\t81",
            "x/a\text:10.96.100.2\tTCP\t443",
        ]
        .iter()
        .map(|l| Probe::from_line(l).unwrap())
        .collect();
        let ports = probed_ports(&probes);
        assert_eq!(ports, [(Protocol::Tcp, 80), (Protocol::Udp, 81)]);
        let services =
            PodServices::new(&cluster, &ports, &["10.96.100.2".parse().unwrap()]).unwrap();
        let a = services.of("x", "a").expect("a has one");
        assert_eq!(a.service, ObjectKey::new("x", "s-a"));
        assert_eq!(
            a.cluster_ips,
            [
                "10.96.100.3".parse::<IpAddr>().unwrap(),
                "fd00:96:100::1".parse().unwrap()
            ]
        );
        let c = services.of("y", "c").expect("c has one");
        assert_eq!(c.service, ObjectKey::new("y", "s-c-2"), "s-c is taken");
        assert_eq!(c.cluster_ips, ["10.96.100.4".parse::<IpAddr>().unwrap()]);
        assert!(services.of("x", "b").is_none(), "host network");

        assert_eq!(services.via(&probes[0]), Some(c.cluster_ips.as_slice()));
        assert_eq!(services.via(&probes[2]), None, "to an outside address");
        let from_outside = Probe::from_line("ext:192.0.2.1\tx/a\tTCP\t80").unwrap();
        assert_eq!(services.via(&from_outside), None);

        let with = services.with(&cluster);
        assert_eq!(with.services.len(), 3);
        assert_eq!(with.endpoint_slices.len(), 3, "a: IPv4 and IPv6; c: IPv4");
        let compiled = podfence_control::compile::compile_services(
            &with,
            &podfence_control::compile::Locality::AllPods,
        );
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
        let frontend = compiled
            .table
            .frontend(c.cluster_ips[0], Protocol::Tcp.ip_protocol(), 80)
            .expect("c's ClusterIP is a frontend");
        assert_eq!(frontend.endpoints().len(), 1);
        assert_eq!(
            compiled.table.frontends().count(),
            2 * 3 + 1,
            "a: two families, c: one; two ports each; and the cluster's own s-c"
        );
    }
}
