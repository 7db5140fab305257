//! v1 Services: the virtual addresses and ports a proxy translates, after
//! the API server's defaulting and validation.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::network_policy::{port_number, validate_port_name};
use super::{ModelError, ObjectKey, Protocol, object_ref};

/// The label that hands a Service (and its EndpointSlices) to another
/// proxy: kube-proxy, and podfence, leave such Services alone.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` (a day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// A cluster-internal virtual address (the default).
    ClusterIp,
    /// Also a port on every node.
    NodePort,
    /// Also an external load balancer.
    LoadBalancer,
    /// A DNS alias: no address, nothing to proxy.
    ExternalName,
}

impl ServiceType {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalName => "ExternalName",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ports[].targetPort`: where on the backend the port goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetPort {
    /// A number (`port` when absent).
    Number(u16),
    /// A named container port, resolved per backend pod (the
    /// EndpointSlice controller resolves it into the slices' ports).
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// One `spec.ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `name`; empty when unnamed (allowed only for a Service's only port).
    /// EndpointSlice ports of the same name carry its backends' port.
    pub name: String,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
    /// `port`: the port of the Service's addresses.
    pub port: u16,
    /// `targetPort` (`port` when absent).
    pub target_port: TargetPort,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// `spec.sessionAffinity` with its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// Every connection chooses a backend (the default).
    None,
    /// A client keeps its backend while it keeps connecting within the
    /// timeout.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds` (10800 when
        /// absent; 1-86400).
        timeout_seconds: u32,
    },
}

/// `spec.internalTrafficPolicy`: which endpoints traffic to the cluster
/// addresses may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Every endpoint (the default).
    Cluster,
    /// Only the endpoints on the client's node; none there: dropped.
    Local,
}

/// A v1 Service after defaulting and validation: what a proxy needs of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.type` (ClusterIP when absent).
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), primary first; empty when
    /// headless, for ExternalName and when none was allocated yet (a
    /// manifest written by hand).
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`: no virtual address, nothing to translate.
    pub headless: bool,
    /// `spec.ports`, in order.
    pub ports: Vec<ServicePort>,
    /// Whether `spec.selector` is set (non-empty): the EndpointSlice
    /// controller manages its endpoints; otherwise someone else does.
    pub has_selector: bool,
    /// `spec.sessionAffinity` and its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.internalTrafficPolicy` (Cluster when absent).
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// The value of the [`SERVICE_PROXY_NAME_LABEL`] label: another proxy's
    /// Service when set.
    pub proxy_name: Option<String>,
}

impl Service {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Whether this node's proxy translates the Service's addresses: not
    /// headless, not ExternalName, not another proxy's, with an address.
    #[must_use]
    pub fn is_proxied(&self) -> bool {
        !self.headless
            && self.service_type != ServiceType::ExternalName
            && self.proxy_name.is_none()
            && !self.cluster_ips.is_empty()
    }

    /// Reduces a k8s-openapi Service, applying the API's defaulting (type
    /// ClusterIP, protocol TCP, targetPort = port, sessionAffinity None with
    /// a 10800 s timeout for ClientIP, internalTrafficPolicy Cluster,
    /// clusterIPs from clusterIP) and the validation rules that decide what
    /// is translated.
    pub fn from_resource(svc: &core::Service) -> Result<Self, ModelError> {
        let object = object_ref("Service", &svc.metadata);
        let err = |(field, message): FieldError| ModelError {
            object: object.clone(),
            field,
            message,
        };
        if object.key.name.is_empty() {
            return Err(err((
                "metadata.name".into(),
                "a service needs a name".into(),
            )));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let service_type = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(err((
                    "spec.type".into(),
                    format!("'{other}' is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
                )));
            }
        };
        let (cluster_ips, headless) = cluster_ips(&spec, service_type).map_err(err)?;
        let ports = ports(&spec, service_type, headless).map_err(err)?;
        let session_affinity = session_affinity(&spec).map_err(err)?;
        let internal_traffic_policy = match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => TrafficPolicy::Cluster,
            Some("Local") => TrafficPolicy::Local,
            Some(other) => {
                return Err(err((
                    "spec.internalTrafficPolicy".into(),
                    format!("'{other}' is not Cluster or Local"),
                )));
            }
        };
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| parse_ip(ip, || format!("spec.externalIPs[{i}]")))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        Ok(Self {
            namespace: object.key.namespace.clone(),
            name: object.key.name.clone(),
            service_type,
            cluster_ips,
            headless,
            ports,
            has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
            session_affinity,
            internal_traffic_policy,
            external_ips,
            proxy_name: svc
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
                .cloned(),
        })
    }
}

type FieldError = (String, String);

fn parse_ip(s: &str, field: impl FnOnce() -> String) -> Result<IpAddr, FieldError> {
    s.parse()
        .map_err(|_| (field(), format!("'{s}' is not an IP address")))
}

/// `clusterIPs` defaulted from `clusterIP` and checked against it, and
/// whether the Service is headless.
fn cluster_ips(
    spec: &core::ServiceSpec,
    service_type: ServiceType,
) -> Result<(Vec<IpAddr>, bool), FieldError> {
    let single = spec.cluster_ip.as_deref().filter(|s| !s.is_empty());
    let listed: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let (field, given): (&str, Vec<&str>) = if listed.is_empty() {
        ("spec.clusterIP", single.into_iter().collect())
    } else {
        if let Some(single) = single
            && single != listed[0]
        {
            return Err((
                "spec.clusterIPs[0]".into(),
                format!("'{}' must be the same as clusterIP '{single}'", listed[0]),
            ));
        }
        ("spec.clusterIPs", listed)
    };
    let at = |i: usize| {
        if field == "spec.clusterIP" {
            field.to_owned()
        } else {
            format!("{field}[{i}]")
        }
    };
    if service_type == ServiceType::ExternalName {
        if !given.is_empty() {
            return Err((at(0), "may not be set for ExternalName services".into()));
        }
        return Ok((Vec::new(), false));
    }
    if given.len() > 2 {
        return Err((
            field.into(),
            "may hold at most two addresses (one per IP family)".into(),
        ));
    }
    if given.first() == Some(&"None") {
        if given.len() > 1 {
            return Err((
                at(1),
                "must be empty when the first address is 'None'".into(),
            ));
        }
        if service_type != ServiceType::ClusterIp {
            return Err((
                at(0),
                format!("may not be 'None' for {service_type} services"),
            ));
        }
        return Ok((Vec::new(), true));
    }
    let ips = given
        .iter()
        .enumerate()
        .map(|(i, ip)| parse_ip(ip, || at(i)))
        .collect::<Result<Vec<IpAddr>, _>>()?;
    if let [a, b] = ips[..]
        && a.is_ipv4() == b.is_ipv4()
    {
        return Err((
            at(1),
            format!("'{b}' is of the same IP family as '{a}' (dual-stack needs one of each)"),
        ));
    }
    Ok((ips, false))
}

fn ports(
    spec: &core::ServiceSpec,
    service_type: ServiceType,
    headless: bool,
) -> Result<Vec<ServicePort>, FieldError> {
    let given = spec.ports.as_deref().unwrap_or_default();
    if given.is_empty() && !headless && service_type != ServiceType::ExternalName {
        return Err(("spec.ports".into(), "a service needs a port".into()));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut out = Vec::with_capacity(given.len());
    for (i, p) in given.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if given.len() > 1 {
                return Err((
                    at("name"),
                    "required when a service has more than one port".into(),
                ));
            }
        } else {
            validate_dns_label(&name).map_err(|m| (at("name"), m))?;
            if !names.insert(name.clone()) {
                return Err((at("name"), format!("'{name}' is used by another port")));
            }
        }
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s, false).ok_or_else(|| {
                (
                    at("protocol"),
                    format!("'{s}' is not one of TCP, UDP, SCTP"),
                )
            })?,
        };
        let port = port_number(p.port).ok_or_else(|| {
            (
                at("port"),
                format!("{} is not a port number (1-65535)", p.port),
            )
        })?;
        if !numbers.insert((port, protocol)) {
            return Err((
                at("port"),
                format!("{protocol}/{port} is used by another port"),
            ));
        }
        let target_port = match &p.target_port {
            // An explicit 0 is defaulted like an absent one.
            None | Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n).ok_or_else(|| {
                (
                    at("targetPort"),
                    format!("{n} is not a port number (1-65535)"),
                )
            })?),
            Some(IntOrString::String(s)) => {
                validate_port_name(s).map_err(|m| (at("targetPort"), m))?;
                TargetPort::Name(s.clone())
            }
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => {
                if !matches!(
                    service_type,
                    ServiceType::NodePort | ServiceType::LoadBalancer
                ) {
                    return Err((
                        at("nodePort"),
                        format!("may not be used when type is {service_type}"),
                    ));
                }
                Some(port_number(n).ok_or_else(|| {
                    (
                        at("nodePort"),
                        format!("{n} is not a port number (1-65535)"),
                    )
                })?)
            }
        };
        out.push(ServicePort {
            name,
            protocol,
            port,
            target_port,
            node_port,
        });
    }
    Ok(out)
}

fn session_affinity(spec: &core::ServiceSpec) -> Result<SessionAffinity, FieldError> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(SessionAffinity::None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(t))
                    .ok_or_else(|| {
                        (
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                            format!("{t} is not within 1-{MAX_AFFINITY_TIMEOUT_SECONDS}"),
                        )
                    })?,
            };
            Ok(SessionAffinity::ClientIp { timeout_seconds })
        }
        Some(other) => Err((
            "spec.sessionAffinity".into(),
            format!("'{other}' is not None or ClientIP"),
        )),
    }
}

/// An RFC 1123 label: 1-63 characters of `a-z`, `0-9` and `-`, starting
/// and ending with a letter or digit (Service and EndpointSlice port names).
pub(super) fn validate_dns_label(name: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| alnum(b) || b == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid name (1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Result<Service, ModelError> {
        let svc: core::Service = serde_saphyr::from_str(yaml).unwrap();
        Service::from_resource(&svc)
    }

    #[test]
    fn defaults_apply() {
        let s = service(
            "metadata: {name: web, namespace: x}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80}]\n",
        )
        .unwrap();
        assert_eq!(s.service_type, ServiceType::ClusterIp);
        assert_eq!(s.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert!(!s.headless && s.has_selector && s.is_proxied());
        assert_eq!(
            s.ports,
            vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(80),
                node_port: None,
            }]
        );
        assert_eq!(s.session_affinity, SessionAffinity::None);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
        assert!(s.external_ips.is_empty() && s.proxy_name.is_none());
        // No namespace: default.
        let s = service("metadata: {name: web}\nspec: {ports: [{port: 80}]}\n").unwrap();
        assert_eq!(s.namespace, "default");
        assert!(!s.is_proxied(), "no address allocated");
    }

    #[test]
    fn every_field_is_read() {
        let s = service(
            "metadata:\n  name: dns\n  namespace: kube-system\n  labels: {service.kubernetes.io/service-proxy-name: other}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 'fd00::a']\n  ports:\n  - {name: dns, port: 53, protocol: UDP, targetPort: dns, nodePort: 30053}\n  - {name: dns-tcp, port: 53, targetPort: 5353}\n  sessionAffinity: ClientIP\n  internalTrafficPolicy: Local\n  externalIPs: [192.0.2.1]\n",
        )
        .unwrap();
        assert_eq!(s.service_type, ServiceType::NodePort);
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.ports[0].protocol, Protocol::Udp);
        assert_eq!(s.ports[0].target_port, TargetPort::Name("dns".into()));
        assert_eq!(s.ports[0].node_port, Some(30053));
        assert_eq!(s.ports[1].target_port, TargetPort::Number(5353));
        assert_eq!(
            s.session_affinity,
            SessionAffinity::ClientIp {
                timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
            }
        );
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.external_ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.proxy_name.as_deref(), Some("other"));
        assert!(!s.is_proxied(), "another proxy's");
        assert!(!s.has_selector);
    }

    #[test]
    fn headless_and_external_name_are_not_proxied() {
        let s =
            service("metadata: {name: h}\nspec: {clusterIP: None, selector: {a: b}}\n").unwrap();
        assert!(s.headless && s.cluster_ips.is_empty() && !s.is_proxied());
        let s = service("metadata: {name: h}\nspec: {clusterIPs: [None]}\n").unwrap();
        assert!(s.headless);
        let s =
            service("metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}\n")
                .unwrap();
        assert_eq!(s.service_type, ServiceType::ExternalName);
        assert!(!s.is_proxied());
    }

    #[test]
    fn status_and_metadata_updates_compare_equal() {
        let a = service(
            "metadata: {name: web, resourceVersion: '1'}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
        )
        .unwrap();
        let b = service(
            "metadata: {name: web, resourceVersion: '2', annotations: {a: b}}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: 80}], sessionAffinity: None, ipFamilyPolicy: SingleStack}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}\n",
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn invalid_services_name_object_and_field() {
        let cases = [
            ("spec: {type: Cluster, ports: [{port: 80}]}", "spec.type"),
            (
                "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
                "spec.clusterIP",
            ),
            (
                "spec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{port: 80}]}",
                "spec.clusterIPs[0]",
            ),
            (
                "spec: {clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{port: 80}]}",
                "spec.clusterIPs[1]",
            ),
            (
                "spec: {type: NodePort, clusterIP: None, ports: [{port: 80}]}",
                "spec.clusterIP",
            ),
            ("spec: {clusterIP: 10.96.0.1}", "spec.ports"),
            ("spec: {ports: [{port: 0}]}", "spec.ports[0].port"),
            (
                "spec: {ports: [{port: 80, protocol: tcp}]}",
                "spec.ports[0].protocol",
            ),
            (
                "spec: {ports: [{port: 80, targetPort: 70000}]}",
                "spec.ports[0].targetPort",
            ),
            (
                "spec: {ports: [{port: 80, targetPort: Web}]}",
                "spec.ports[0].targetPort",
            ),
            (
                "spec: {ports: [{port: 80, nodePort: 30080}]}",
                "spec.ports[0].nodePort",
            ),
            (
                "spec: {ports: [{name: a, port: 80}, {port: 81}]}",
                "spec.ports[1].name",
            ),
            (
                "spec: {ports: [{name: a, port: 80}, {name: a, port: 81}]}",
                "spec.ports[1].name",
            ),
            (
                "spec: {ports: [{name: a, port: 80}, {name: b, port: 80}]}",
                "spec.ports[1].port",
            ),
            (
                "spec: {ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            ),
            (
                "spec: {ports: [{port: 80}], sessionAffinity: Sticky}",
                "spec.sessionAffinity",
            ),
            (
                "spec: {ports: [{port: 80}], internalTrafficPolicy: Node}",
                "spec.internalTrafficPolicy",
            ),
            (
                "spec: {ports: [{port: 80}], externalIPs: [example.com]}",
                "spec.externalIPs[0]",
            ),
            (
                "spec: {type: ExternalName, clusterIP: 10.96.0.1}",
                "spec.clusterIP",
            ),
        ];
        for (spec, field) in cases {
            let e =
                service(&format!("metadata: {{name: s, namespace: x}}\n{spec}\n")).expect_err(spec);
            assert_eq!(
                (e.object.to_string().as_str(), e.field.as_str()),
                ("Service x/s", field),
                "{spec}: {e}"
            );
        }
    }
}
