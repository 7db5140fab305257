//! Services and their EndpointSlices to the datapath's service table.
//!
//! What kube-proxy would program for this node: one frontend per address
//! (ClusterIPs, then external IPs) and port of every Service it proxies
//! (not headless, not ExternalName, not labelled for another proxy), with
//! the endpoints its slices list for that port. A slice belongs to the
//! Service named by its `kubernetes.io/service-name` label in the same
//! namespace; a slice port belongs to the Service port of the same name and
//! protocol, and its number is the target port. Endpoints of the other
//! address family, and slice ports without a number, are skipped, as
//! kube-proxy skips them. Choosing among the endpoints (ready first,
//! `internalTrafficPolicy`, the Maglev tables) is the datapath builder's.
//!
//! [`ServiceCompiler`] keeps the last table and rebuilds it only when a
//! Service or an EndpointSlice changed (by `Arc`, as the policy compiler
//! tells changes), so that a generation caused by a pod or a policy reuses
//! the Maglev tables as they are.

use std::collections::BTreeMap;
use std::sync::Arc;

use podfence_datapath::services::{
    self, Backend, Conditions, Endpoint, FrontendKey, ServiceOptions, ServiceTable,
    ServiceTableBuilder,
};

use super::Locality;
use crate::index::{Cluster, same_objects};
use crate::model::{
    AddressType, EndpointSlice, ObjectKey, Service, ServicePort, SessionAffinity, TrafficPolicy,
};

/// A service table and what could not go into it.
#[derive(Debug)]
pub struct CompiledServices {
    /// The table.
    pub table: Arc<ServiceTable>,
    /// Frontends left out, each with the reason (a ClusterIP claimed by two
    /// Services, too many endpoints).
    pub warnings: Vec<String>,
}

/// Which Services the datapath translates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicesConfig {
    /// Translate at all (`--services off`: the CNI already replaces
    /// kube-proxy for pods, or kube-proxy is to handle everything).
    pub enabled: bool,
    /// Services left to kube-proxy (`--skip-service NS/NAME`, for example a
    /// NodeLocal DNSCache that takes over kube-dns's ClusterIP on the node).
    pub skip: Vec<ObjectKey>,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            skip: Vec::new(),
        }
    }
}

/// Compiles `cluster`'s Services for the node `locality` names (its
/// endpoints are the local ones for `internalTrafficPolicy: Local`).
#[must_use]
pub fn compile_services(cluster: &Cluster, locality: &Locality) -> CompiledServices {
    compile_services_with(cluster, locality, &ServicesConfig::default())
}

/// [`compile_services`] with `config`'s switch and exceptions.
#[must_use]
pub fn compile_services_with(
    cluster: &Cluster,
    locality: &Locality,
    config: &ServicesConfig,
) -> CompiledServices {
    if !config.enabled {
        return CompiledServices {
            table: Arc::new(ServiceTable::empty()),
            warnings: Vec::new(),
        };
    }
    let node = match locality {
        Locality::Node(name) => Some(name.as_str()),
        Locality::AllPods => None,
    };
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in cluster.endpoint_slices.values() {
        if let (true, Some(service)) = (slice.is_proxied(), slice.service.as_deref()) {
            slices
                .entry((slice.namespace.as_str(), service))
                .or_default()
                .push(slice);
        }
    }
    let mut builder = ServiceTableBuilder::new();
    let mut warnings = Vec::new();
    let translated = |s: &&Arc<Service>| s.is_proxied() && !config.skip.contains(&s.key());
    for service in cluster.services.values().filter(translated) {
        let id = builder.add_service(&service.namespace, &service.name, options(service));
        let slices = slices
            .get(&(service.namespace.as_str(), service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        for port in &service.ports {
            for &addr in service.cluster_ips.iter().chain(&service.external_ips) {
                let frontend = FrontendKey {
                    addr,
                    protocol: port.protocol.ip_protocol(),
                    port: port.port,
                };
                let endpoints = endpoints(slices, port, addr.is_ipv4(), node);
                if let Err(e) = builder.add_frontend(id, frontend, &endpoints) {
                    warnings.push(format!(
                        "Service {}: {e}; this frontend is not translated",
                        service.key()
                    ));
                }
            }
        }
    }
    CompiledServices {
        table: Arc::new(builder.build()),
        warnings,
    }
}

fn options(service: &Service) -> ServiceOptions {
    ServiceOptions {
        internal_traffic_policy: match service.internal_traffic_policy {
            TrafficPolicy::Cluster => services::TrafficPolicy::Cluster,
            TrafficPolicy::Local => services::TrafficPolicy::Local,
        },
        affinity: match service.session_affinity {
            SessionAffinity::None => services::SessionAffinity::None,
            SessionAffinity::ClientIp { timeout_seconds } => services::SessionAffinity::ClientIp {
                timeout: std::time::Duration::from_secs(u64::from(timeout_seconds)),
            },
        },
    }
}

/// The endpoints `slices` list for the Service port `port` in one family.
fn endpoints(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    ipv4: bool,
    node: Option<&str>,
) -> Vec<Endpoint> {
    let family = if ipv4 {
        AddressType::Ipv4
    } else {
        AddressType::Ipv6
    };
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .and_then(|p| p.port)
        else {
            continue;
        };
        out.extend(slice.endpoints.iter().map(|e| Endpoint {
            backend: Backend {
                addr: e.address,
                port: target,
            },
            conditions: Conditions {
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            },
            local: node.is_some() && e.node.as_deref() == node,
        }));
    }
    out
}

/// Compiles service tables generation after generation, rebuilding only
/// when a Service or an EndpointSlice changed.
#[derive(Debug)]
pub struct ServiceCompiler {
    locality: Locality,
    config: ServicesConfig,
    /// The objects the last table was built from.
    services: BTreeMap<ObjectKey, Arc<Service>>,
    slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    last: Arc<ServiceTable>,
}

impl ServiceCompiler {
    /// A compiler for the node `locality` names; nothing built yet.
    #[must_use]
    pub fn new(locality: Locality, config: ServicesConfig) -> Self {
        Self {
            locality,
            config,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            last: Arc::new(ServiceTable::empty()),
        }
    }

    /// The table for `cluster`: the last one when no Service or
    /// EndpointSlice changed since, a new one otherwise (with its
    /// warnings).
    pub fn compile(&mut self, cluster: &Cluster) -> CompiledServices {
        if same_objects(&self.services, &cluster.services)
            && same_objects(&self.slices, &cluster.endpoint_slices)
        {
            return CompiledServices {
                table: Arc::clone(&self.last),
                warnings: Vec::new(),
            };
        }
        let compiled = compile_services_with(cluster, &self.locality, &self.config);
        self.services.clone_from(&cluster.services);
        self.slices.clone_from(&cluster.endpoint_slices);
        self.last = Arc::clone(&compiled.table);
        compiled
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use podfence_datapath::IpProtocol;
    use podfence_datapath::services::NoBackend;

    use super::*;
    use crate::sources::manifests;

    fn cluster(yaml: &str) -> Cluster {
        manifests::load_str(std::path::Path::new("test.yaml"), yaml)
            .expect("loads")
            .cluster
    }

    const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {namespace: x, name: web}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: x, name: web-v4, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 53, protocol: UDP}
endpoints:
- {addresses: [10.244.1.5], nodeName: n1}
- {addresses: [10.244.2.5], nodeName: n2, conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: x, name: web-v6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports:
- {name: http, port: 8080}
endpoints:
- {addresses: ['fd00:244:1::5'], nodeName: n1}
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_address_and_port_is_a_frontend_with_its_slices_endpoints() {
        let c = compile_services(&cluster(WEB), &Locality::Node("n1".into()));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let t = &c.table;
        let http = t.frontend(ip("10.96.0.10"), IpProtocol::TCP, 80).unwrap();
        let backends: Vec<String> = http.backends().iter().map(ToString::to_string).collect();
        assert_eq!(
            backends,
            ["10.244.1.5:8080"],
            "the not-ready one is not used"
        );
        assert_eq!(http.endpoints().len(), 2);
        assert!(http.endpoint(http.backends()[0]).unwrap().local);
        let dns = t.frontend(ip("10.96.0.10"), IpProtocol::UDP, 53).unwrap();
        assert_eq!(dns.backends()[0].port, 53);
        let v6 = t.frontend(ip("fd00:96::10"), IpProtocol::TCP, 80).unwrap();
        assert_eq!(v6.backends()[0].addr, ip("fd00:244:1::5"));
        // No IPv6 slice lists the dns port: a frontend without endpoints.
        let v6_dns = t.frontend(ip("fd00:96::10"), IpProtocol::UDP, 53).unwrap();
        assert_eq!(v6_dns.no_backend(), Some(NoBackend::NoEndpoints));
        assert!(t.frontend(ip("10.96.0.10"), IpProtocol::TCP, 53).is_none());
    }

    #[test]
    fn services_kube_proxy_leaves_alone_are_not_translated() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {namespace: x, name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: other, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: plain}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
";
        let c = compile_services(&cluster(yaml), &Locality::AllPods);
        let addrs: Vec<IpAddr> = c.table.frontends().map(|f| f.key().addr).collect();
        assert_eq!(addrs, [ip("10.96.0.12")]);
    }

    #[test]
    fn a_clusterip_claimed_twice_is_a_warning_and_the_first_keeps_it() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {namespace: x, name: a}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: b}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
";
        let c = compile_services(&cluster(yaml), &Locality::AllPods);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("Service x/b"), "{:?}", c.warnings);
        let f = c
            .table
            .frontend(ip("10.96.0.20"), IpProtocol::TCP, 80)
            .unwrap();
        assert_eq!(c.table.service(f.service()).name.name.as_ref(), "a");
    }

    #[test]
    fn the_table_is_rebuilt_only_when_services_or_slices_change() {
        let mut state = cluster(WEB);
        let mut compiler =
            ServiceCompiler::new(Locality::Node("n1".into()), ServicesConfig::default());
        let first = compiler.compile(&state).table;
        // A pod or a policy changing leaves the table as it is.
        state.apply(crate::model::Namespace::implicit("y"));
        assert!(Arc::ptr_eq(&first, &compiler.compile(&state).table));
        // An endpoint slice changing rebuilds it.
        let key = ObjectKey::new("x", "web-v4");
        let mut slice = EndpointSlice::clone(&state.endpoint_slices[&key]);
        slice.endpoints[1].ready = true;
        state.apply(slice);
        let second = compiler.compile(&state).table;
        assert!(!Arc::ptr_eq(&first, &second));
        let http = second
            .frontend(ip("10.96.0.10"), IpProtocol::TCP, 80)
            .unwrap();
        assert_eq!(http.backends().len(), 2);
    }

    #[test]
    fn skipped_services_and_services_off_translate_nothing() {
        let state = cluster(WEB);
        let skip = ServicesConfig {
            enabled: true,
            skip: vec![ObjectKey::new("x", "web")],
        };
        let c = compile_services_with(&state, &Locality::AllPods, &skip);
        assert!(c.table.is_empty());
        let off = ServicesConfig {
            enabled: false,
            skip: Vec::new(),
        };
        assert!(
            compile_services_with(&state, &Locality::AllPods, &off)
                .table
                .is_empty()
        );
        assert!(
            !compile_services(&state, &Locality::AllPods)
                .table
                .is_empty()
        );
    }
}
