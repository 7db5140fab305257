//! Probes to Services: policy applies after Service translation.
//!
//! A probe's destination is a Service when it is written `svc:ns/name` (the
//! probe's protocol and port name the Service port) or when it is an
//! `ext:IP` whose address, protocol and port are a Service frontend (a
//! ClusterIP or an external IP). Either way it is resolved through the
//! service table the datapath uses, to the frontend's usable backends
//! (kube-proxy's endpoint selection: ready ones, else serving and
//! terminating ones, this node's only under `internalTrafficPolicy:
//! Local`), and each backend is classified as the datapath classifies the
//! translated connection: the source's egress against the backend's address
//! and target port, the backend's ingress against the source. A Service's
//! answer is per backend; it is allowed when it has a usable backend and
//! every usable backend is allowed (whichever backend a connection is given,
//! it gets through).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use podfence_datapath::services::{Backend, Frontend, FrontendKey, NoBackend, ServiceTable};
use podfence_datapath::{Tables, Verdict};

use super::{Endpoint, Explanation, Probe, ProbeError, endpoint_addresses, resolve};
use crate::compile::{Locality, compile_services};
use crate::index::Cluster;
use crate::model::{
    ObjectKey, PodPhase, SERVICE_PROXY_NAME_LABEL, Service, ServiceType, TrafficPolicy,
};

/// The service tables probes are resolved with.
///
/// Offline, the cluster's Services are compiled for every pod
/// ([`Locality::AllPods`]); when a Service has `internalTrafficPolicy:
/// Local`, also once per node, so that a pod's probe uses the endpoints of
/// its own node as the datapath on that node would. The agent has its own
/// node's table ([`ServiceTables::node`]).
#[derive(Debug)]
pub struct ServiceTables {
    all: Arc<ServiceTable>,
    nodes: BTreeMap<String, Arc<ServiceTable>>,
    /// Frontends left out of the table, each with the reason.
    pub warnings: Vec<String>,
}

impl ServiceTables {
    /// Compiles `cluster`'s Services for offline probes.
    #[must_use]
    pub fn compile(cluster: &Cluster) -> Self {
        let compiled = compile_services(cluster, &Locality::AllPods);
        let mut nodes = BTreeMap::new();
        let local = cluster
            .services
            .values()
            .any(|s| s.is_proxied() && s.internal_traffic_policy == TrafficPolicy::Local);
        if local {
            for node in cluster.pods.values().filter_map(|p| p.node.as_deref()) {
                if !nodes.contains_key(node) {
                    let table = compile_services(cluster, &Locality::Node(node.into())).table;
                    nodes.insert(node.to_owned(), table);
                }
            }
        }
        Self {
            all: compiled.table,
            nodes,
            warnings: compiled.warnings,
        }
    }

    /// One node's table, as the agent on that node has it.
    #[must_use]
    pub fn node(table: Arc<ServiceTable>) -> Self {
        Self {
            all: table,
            nodes: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// The table a connection from `src` is translated with: that of the
    /// source pod's node when there is one, else the cluster-wide one.
    #[must_use]
    pub fn for_source(&self, cluster: &Cluster, src: &Endpoint) -> &ServiceTable {
        if let Endpoint::Pod { namespace, name } = src
            && let Some(node) = cluster.pod(namespace, name).and_then(|p| p.node.as_deref())
            && let Some(table) = self.nodes.get(node)
        {
            return table;
        }
        &self.all
    }
}

/// A probe's destination resolved to a Service frontend.
#[derive(Clone, Copy, Debug)]
pub struct ServiceTarget<'t> {
    /// The frontend the connection is addressed to.
    pub frontend: &'t Frontend,
    /// The Service's name.
    pub service: &'t podfence_datapath::tables::ObjectName,
    /// The source address the connection comes from (of the frontend's
    /// family).
    pub src: IpAddr,
}

/// The Service frontend a probe is addressed to: `None` when its
/// destination is a pod, or an address and port no Service has.
///
/// # Errors
///
/// For a `svc:` destination that cannot be translated: an unknown Service,
/// a port it does not have, a headless Service, another proxy's Service;
/// for a Service as the source; and for an unknown source pod.
pub fn target<'t>(
    cluster: &Cluster,
    services: &'t ServiceTables,
    probe: &Probe,
) -> Result<Option<ServiceTarget<'t>>, ProbeError> {
    if let Endpoint::Service { .. } = probe.src {
        return Err(ProbeError::ServiceSource(probe.src.to_string()));
    }
    let table = services.for_source(cluster, &probe.src);
    let protocol = probe.protocol.ip_protocol();
    match &probe.dst {
        Endpoint::Pod { .. } => Ok(None),
        Endpoint::External(ip) => {
            let Some(frontend) = table.frontend(*ip, protocol, probe.port) else {
                return Ok(None);
            };
            let sources = endpoint_addresses(cluster, &probe.src)?;
            // No source of the frontend's family: `resolve` says so.
            let Some(&src) = sources.iter().find(|s| s.is_ipv4() == ip.is_ipv4()) else {
                return Ok(None);
            };
            Ok(Some(ServiceTarget {
                frontend,
                service: &table.service(frontend.service()).name,
                src,
            }))
        }
        Endpoint::Service { .. } => {
            let service = translated_service(cluster, &probe.dst)?;
            if !service
                .ports
                .iter()
                .any(|p| p.protocol == probe.protocol && p.port == probe.port)
            {
                return Err(ProbeError::NoSuchPort {
                    service: service.key().to_string(),
                    protocol: probe.protocol,
                    port: probe.port,
                    ports: ports(service),
                });
            }
            let sources = endpoint_addresses(cluster, &probe.src)?;
            let (src, addr) = sources
                .iter()
                .find_map(|s| {
                    service
                        .cluster_ips
                        .iter()
                        .find(|a| a.is_ipv4() == s.is_ipv4())
                        .map(|a| (*s, *a))
                })
                .ok_or_else(|| ProbeError::NoCommonFamily {
                    src: probe.src.to_string(),
                    dst: probe.dst.to_string(),
                })?;
            let frontend = table.frontend(addr, protocol, probe.port).ok_or_else(|| {
                ProbeError::NotTranslated {
                    service: service.key().to_string(),
                    why: format!(
                        "its frontend {addr} port {} {} is not in the service table \
                         (another Service claims the address, or see the compiler's warnings)",
                        probe.port, probe.protocol
                    ),
                }
            })?;
            Ok(Some(ServiceTarget {
                frontend,
                service: &table.service(frontend.service()).name,
                src,
            }))
        }
    }
}

/// The Service `endpoint` names, if the proxy translates it.
///
/// # Errors
///
/// When `endpoint` is not a Service, is unknown, or is not translated
/// (headless, ExternalName, another proxy's, without an address).
pub fn translated_service<'c>(
    cluster: &'c Cluster,
    endpoint: &Endpoint,
) -> Result<&'c Service, ProbeError> {
    let Endpoint::Service { namespace, name } = endpoint else {
        return Err(ProbeError::BadEndpoint(endpoint.to_string()));
    };
    let service = cluster
        .services
        .get(&ObjectKey::new(namespace.as_str(), name.as_str()))
        .ok_or_else(|| ProbeError::UnknownService(endpoint.to_string()))?;
    match not_translated(service) {
        Some(why) => Err(ProbeError::NotTranslated {
            service: service.key().to_string(),
            why,
        }),
        None => Ok(service),
    }
}

/// Why the proxy leaves `service` alone, naming the field; `None` when it
/// translates it.
fn not_translated(service: &Service) -> Option<String> {
    if service.headless {
        return Some(
            "it is headless (spec.clusterIP: None): nothing translates its name, \
             clients reach its pods directly (probe the pods instead)"
                .into(),
        );
    }
    if service.service_type == ServiceType::ExternalName {
        return Some("spec.type is ExternalName: a DNS alias, no address to translate".into());
    }
    if let Some(proxy) = &service.proxy_name {
        return Some(format!(
            "it is labelled {SERVICE_PROXY_NAME_LABEL}={proxy} (metadata.labels): \
             another proxy handles it, and podfence leaves it alone as kube-proxy does"
        ));
    }
    if service.cluster_ips.is_empty() {
        return Some("spec.clusterIP is not set: it has no address to translate".into());
    }
    None
}

/// `TCP 80 (http), UDP 53 (dns)`.
fn ports(service: &Service) -> String {
    if service.ports.is_empty() {
        return "no port".into();
    }
    service
        .ports
        .iter()
        .map(|p| {
            if p.name.is_empty() {
                format!("{} {}", p.protocol, p.port)
            } else {
                format!("{} {} ({})", p.protocol, p.port, p.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One backend of a Service probe and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAnswer {
    /// The backend's address and target port.
    pub backend: Backend,
    /// The pod at that address, if one has it.
    pub pod: Option<ObjectKey>,
    /// Egress of the source and ingress of the backend, as the datapath
    /// classifies the translated connection.
    pub verdict: Verdict,
}

impl BackendAnswer {
    /// The backend as a probe endpoint: its pod or `ext:IP`.
    #[must_use]
    pub fn endpoint(&self) -> Endpoint {
        match &self.pod {
            Some(key) => Endpoint::Pod {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            },
            None => Endpoint::External(self.backend.addr),
        }
    }
}

/// A probe to a Service, answered per backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// The Service.
    pub service: ObjectKey,
    /// The frontend the connection is addressed to.
    pub frontend: FrontendKey,
    /// The source address.
    pub src: IpAddr,
    /// Why no backend is usable, when none is.
    pub no_backend: Option<NoBackend>,
    /// How many endpoints the Service's slices list for this frontend,
    /// usable or not.
    pub endpoints: usize,
    /// Whether no endpoint is ready and serving-and-terminating ones are
    /// used instead.
    pub uses_terminating: bool,
    /// The usable backends, sorted, with their verdicts.
    pub backends: Vec<BackendAnswer>,
}

impl ServiceAnswer {
    /// Whether a connection gets through whichever backend it is given: at
    /// least one usable backend, and every usable backend allowed.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        !self.backends.is_empty() && self.backends.iter().all(|b| b.verdict.is_allowed())
    }

    /// How many usable backends allow the connection.
    #[must_use]
    pub fn allowed(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.verdict.is_allowed())
            .count()
    }

    /// The answer in a few words: `no usable endpoint (...)`, `every backend
    /// allows it (2 of 2)` or `1 of 2 backends allow it`.
    #[must_use]
    pub fn summary(&self) -> String {
        let n = self.backends.len();
        match self.no_backend {
            Some(why) => format!("no usable endpoint ({})", self.no_backend_why(why)),
            None if self.is_allowed() => format!("every backend allows it ({n} of {n})"),
            None => format!("{} of {n} backends allow it", self.allowed()),
        }
    }

    fn no_backend_why(&self, why: NoBackend) -> String {
        match why {
            NoBackend::NoEndpoints if self.endpoints == 0 => {
                "its EndpointSlices list no endpoint for this port; \
                 the connection is refused, as kube-proxy refuses it"
                    .into()
            }
            NoBackend::NoEndpoints => format!(
                "its {} endpoint(s) are neither ready nor serving and terminating; \
                 the connection is refused, as kube-proxy refuses it",
                self.endpoints
            ),
            NoBackend::NoLocalEndpoints => "internalTrafficPolicy is Local and no usable \
                 endpoint runs on the source's node; the connection is dropped, as kube-proxy \
                 drops it"
                .into(),
        }
    }
}

/// A probe's answer: direct, or per backend of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The destination is a pod or an address no Service has.
    Direct {
        /// The addresses the packet carries.
        addresses: (IpAddr, IpAddr),
        /// The verdict.
        verdict: Verdict,
    },
    /// The destination is a Service frontend.
    Service(ServiceAnswer),
}

impl Answer {
    /// Whether the connection gets through (for a Service: through every
    /// usable backend, and there is one).
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        match self {
            Self::Direct { verdict, .. } => verdict.is_allowed(),
            Self::Service(s) => s.is_allowed(),
        }
    }
}

/// Answers a probe as the datapath would: a destination that is a Service
/// frontend is translated to each of its usable backends, and each is
/// classified; any other is classified as it is.
///
/// # Errors
///
/// What [`target`] and [`resolve`] refuse.
pub fn answer(
    cluster: &Cluster,
    tables: &Tables,
    services: &ServiceTables,
    probe: &Probe,
) -> Result<Answer, ProbeError> {
    if let Some(target) = target(cluster, services, probe)? {
        return Ok(Answer::Service(classify_service(
            cluster, tables, probe, &target,
        )));
    }
    let addresses = resolve(cluster, probe)?;
    let verdict = tables.classify(
        addresses.0,
        addresses.1,
        probe.protocol.ip_protocol(),
        probe.port,
    );
    Ok(Answer::Direct { addresses, verdict })
}

/// Classifies the connection to each usable backend of `target`: the
/// source's egress against the backend's address and target port, the
/// backend's ingress against the source.
#[must_use]
pub fn classify_service(
    cluster: &Cluster,
    tables: &Tables,
    probe: &Probe,
    target: &ServiceTarget<'_>,
) -> ServiceAnswer {
    let frontend = target.frontend;
    let protocol = probe.protocol.ip_protocol();
    let backends = frontend
        .backends()
        .iter()
        .map(|&backend| BackendAnswer {
            backend,
            pod: pod_at(cluster, backend.addr),
            verdict: tables.classify(target.src, backend.addr, protocol, backend.port),
        })
        .collect();
    ServiceAnswer {
        service: ObjectKey::new(
            target.service.namespace.as_ref(),
            target.service.name.as_ref(),
        ),
        frontend: frontend.key(),
        src: target.src,
        no_backend: frontend.no_backend(),
        endpoints: frontend.endpoints().len(),
        uses_terminating: frontend.uses_terminating(),
        backends,
    }
}

/// The pod whose own address `addr` is (not a host-network pod, not one
/// that has finished).
fn pod_at(cluster: &Cluster, addr: IpAddr) -> Option<ObjectKey> {
    cluster
        .pods
        .values()
        .find(|p| {
            !p.host_network
                && !matches!(p.phase, PodPhase::Succeeded | PodPhase::Failed)
                && p.ips.contains(&addr)
        })
        .map(|p| p.key())
}

/// A Service probe's answer in words: the Service and its frontend, that
/// policy applies after translation, and each backend with the deciding
/// policies on each side (as [`Explanation`] words them).
#[derive(Debug)]
pub struct ServiceExplanation<'a> {
    /// The probe.
    pub probe: &'a Probe,
    /// Its answer.
    pub answer: &'a ServiceAnswer,
    /// The tables that gave it (for names).
    pub tables: &'a Tables,
    /// The cluster state they were compiled from (for rule texts).
    pub cluster: &'a Cluster,
}

impl fmt::Display for ServiceExplanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.answer;
        let verdict = if a.is_allowed() { "allow" } else { "deny" };
        let src = match &self.probe.src {
            e @ Endpoint::External(_) => e.to_string(),
            e => format!("{e} ({})", a.src),
        };
        writeln!(
            f,
            "{verdict}: {} from {src} to Service {} (frontend {}): {}",
            self.probe.protocol,
            a.service,
            a.frontend,
            a.summary()
        )?;
        writeln!(
            f,
            "  policy applies after Service translation: the source's egress is checked \
             against each backend, and each backend's ingress against the source, at the \
             backend's port"
        )?;
        if a.uses_terminating {
            writeln!(
                f,
                "  no endpoint is ready: the serving and terminating ones are used"
            )?;
        }
        for b in &a.backends {
            let dst = b.endpoint();
            let name = match &dst {
                Endpoint::Pod { .. } => format!("{dst} ({})", b.backend.addr),
                _ => b.backend.addr.to_string(),
            };
            let probe = Probe {
                src: self.probe.src.clone(),
                dst,
                protocol: self.probe.protocol,
                port: b.backend.port,
            };
            let explanation = Explanation {
                probe: &probe,
                addresses: (a.src, b.backend.addr),
                verdict: b.verdict,
                tables: self.tables,
                cluster: self.cluster,
            };
            let verdict = if b.verdict.is_allowed() {
                "allow"
            } else {
                "deny"
            };
            writeln!(f, "  backend {name} port {}: {verdict}", b.backend.port)?;
            for line in explanation.decisions().to_string().lines() {
                writeln!(f, "  {line}")?;
            }
        }
        write!(f, "  (table generation {})", self.tables.generation())
    }
}
