//! Connection attempts by name, as the CLI and the conformance data write
//! them: `ns/pod` or `ext:IP` endpoints (and `svc:ns/name` destinations), a
//! protocol and a port.
//!
//! A probe is resolved to addresses the way the datapath would see the
//! packet (a pod's address, a host-network pod's node address, an outside
//! address) and classified by the compiled tables, so that the offline
//! commands exercise exactly what the fast path runs. A probe to a Service
//! (by name, or to an address and port that is a Service frontend) is
//! answered per backend, after Service translation, as the datapath
//! classifies it: see [`service`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use podfence_datapath::tables::{Decision, Direction, Enforcement, GroupId, PolicyId, TierRule};
use podfence_datapath::{Tables, Verdict};

use crate::index::Cluster;
use crate::model::{ClusterPolicyKey, ObjectKey, PodPhase, Protocol};

pub mod service;

pub use service::{
    Answer, BackendAnswer, ServiceAnswer, ServiceExplanation, ServiceTables, ServiceTarget, answer,
};

/// One side of a connection attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A pod, `namespace/name`.
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An address outside the cluster's pods, `ext:IP`.
    External(IpAddr),
    /// A Service, `svc:namespace/name`: a destination only, answered per
    /// backend (the probe's protocol and port name the Service port).
    Service {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::External(ip) => write!(f, "ext:{ip}"),
            Self::Service { namespace, name } => write!(f, "svc:{namespace}/{name}"),
        }
    }
}

/// Why a probe cannot be read or resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// An endpoint is neither `ns/pod`, `ext:IP` nor `svc:ns/name`.
    #[error("'{0}' is not an endpoint (expected NAMESPACE/POD, ext:IP or svc:NAMESPACE/NAME)")]
    BadEndpoint(String),
    /// `ext:` is not followed by an address.
    #[error("'{0}' is not an address (expected ext:IP, e.g. ext:192.0.2.10)")]
    BadAddress(String),
    /// Not TCP, UDP or SCTP.
    #[error("'{0}' is not a protocol (expected TCP, UDP or SCTP)")]
    BadProtocol(String),
    /// Not a port number.
    #[error("'{0}' is not a port (expected 1-65535)")]
    BadPort(String),
    /// Too few columns.
    #[error("expected 4 tab-separated columns (src dst proto port), got {0}")]
    Columns(usize),
    /// The pod is not in the manifests.
    #[error("unknown pod {0}")]
    UnknownPod(String),
    /// The pod has no address traffic could use.
    #[error("pod {pod} has no address: {why}")]
    NoAddress {
        /// The pod.
        pod: String,
        /// Why.
        why: String,
    },
    /// A Service where only a pod or an address can be: the source.
    #[error(
        "{0} cannot be a source: a Service only receives connections (probe from one of its pods instead)"
    )]
    ServiceSource(String),
    /// A Service where only addresses are understood (a caller without the
    /// service table: use [`answer`]).
    #[error("{0} is a Service: it is answered per backend, with the service table")]
    ServiceWithoutTable(String),
    /// The Service is not in the manifests.
    #[error("unknown Service {0}")]
    UnknownService(String),
    /// The Service exists but its addresses are not translated.
    #[error("Service {service} is not translated: {why}")]
    NotTranslated {
        /// `namespace/name`.
        service: String,
        /// Why, naming the field.
        why: String,
    },
    /// The probe's protocol and port are not a port of the Service.
    #[error("Service {service} has no port {protocol} {port} in spec.ports (it has {ports})")]
    NoSuchPort {
        /// `namespace/name`.
        service: String,
        /// The probe's protocol.
        protocol: Protocol,
        /// The probe's port.
        port: u16,
        /// The ports it has, for the reader.
        ports: String,
    },
    /// The endpoints share no address family.
    #[error("{src} and {dst} have no address family in common")]
    NoCommonFamily {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
}

impl FromStr for Endpoint {
    type Err = ProbeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(service) = s.strip_prefix("svc:") {
            return match service.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok(Self::Service {
                        namespace: ns.into(),
                        name: name.into(),
                    })
                }
                _ => Err(ProbeError::BadEndpoint(s.into())),
            };
        }
        if let Some(addr) = s.strip_prefix("ext:") {
            return addr
                .parse()
                .map(Self::External)
                .map_err(|_| ProbeError::BadAddress(s.into()));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::Pod {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            _ => Err(ProbeError::BadEndpoint(s.into())),
        }
    }
}

/// A protocol given on a command line: TCP, UDP or SCTP in any case; the
/// error is the message a command-line parser shows.
pub fn parse_protocol_arg(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s, true).ok_or_else(|| format!("'{s}' is not TCP, UDP or SCTP"))
}

/// A connection attempt: the first packet from `src` to `dst:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    /// The side that opens the connection.
    pub src: Endpoint,
    /// The side that accepts it.
    pub dst: Endpoint,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The destination port.
    pub port: u16,
}

impl Probe {
    /// Parses the four fields (protocol in any case).
    pub fn from_fields(
        src: &str,
        dst: &str,
        protocol: &str,
        port: &str,
    ) -> Result<Self, ProbeError> {
        Ok(Self {
            src: src.parse()?,
            dst: dst.parse()?,
            protocol: Protocol::parse(protocol, true)
                .ok_or_else(|| ProbeError::BadProtocol(protocol.into()))?,
            port: port
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| ProbeError::BadPort(port.into()))?,
        })
    }

    /// Parses a tab-separated line `src dst proto port [more columns...]`.
    pub fn from_line(line: &str) -> Result<Self, ProbeError> {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cols.len() < 4 {
            return Err(ProbeError::Columns(cols.len()));
        }
        Self::from_fields(cols[0], cols[1], cols[2], cols[3])
    }

    /// A line of a probe file: `None` for blank lines and `#` comments,
    /// else the probe it holds.
    #[must_use]
    pub fn from_file_line(line: &str) -> Option<Result<Self, ProbeError>> {
        (!line.trim().is_empty() && !line.starts_with('#')).then(|| Self::from_line(line))
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}",
            self.src, self.dst, self.protocol, self.port
        )
    }
}

/// The addresses an endpoint may use, in preference order.
///
/// A pod uses its own addresses; a host-network pod its node's; a pod that
/// has finished or has no address yet cannot send or receive anything. A
/// Service has no address of its own here: its backends are resolved by
/// [`answer`].
pub fn endpoint_addresses(
    cluster: &Cluster,
    endpoint: &Endpoint,
) -> Result<Vec<IpAddr>, ProbeError> {
    let (namespace, name) = match endpoint {
        Endpoint::External(ip) => return Ok(vec![*ip]),
        Endpoint::Service { .. } => {
            return Err(ProbeError::ServiceWithoutTable(endpoint.to_string()));
        }
        Endpoint::Pod { namespace, name } => (namespace, name),
    };
    let pod = cluster
        .pod(namespace, name)
        .ok_or_else(|| ProbeError::UnknownPod(endpoint.to_string()))?;
    let no_address = |why: &str| ProbeError::NoAddress {
        pod: endpoint.to_string(),
        why: why.into(),
    };
    if matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
        return Err(no_address(
            "it has finished, and its address may already be another pod's",
        ));
    }
    if pod.host_network {
        if pod.host_ips.is_empty() {
            return Err(no_address(
                "it uses the host network and its node address (status.hostIP) is not set",
            ));
        }
        return Ok(pod.host_ips.clone());
    }
    if pod.ips.is_empty() {
        return Err(no_address(
            "status.podIPs is empty (not scheduled or not started yet)",
        ));
    }
    Ok(pod.ips.clone())
}

/// The addresses a probe's packet would carry: the source's first address
/// for which the destination has one of the same family. A Service source is
/// an error; so is a Service destination (see [`answer`]).
pub fn resolve(cluster: &Cluster, probe: &Probe) -> Result<(IpAddr, IpAddr), ProbeError> {
    if let Endpoint::Service { .. } = probe.src {
        return Err(ProbeError::ServiceSource(probe.src.to_string()));
    }
    let src = endpoint_addresses(cluster, &probe.src)?;
    let dst = endpoint_addresses(cluster, &probe.dst)?;
    src.iter()
        .find_map(|s| {
            dst.iter()
                .find(|d| d.is_ipv4() == s.is_ipv4())
                .map(|d| (*s, *d))
        })
        .ok_or_else(|| ProbeError::NoCommonFamily {
            src: probe.src.to_string(),
            dst: probe.dst.to_string(),
        })
}

/// Classifies a probe with compiled tables, addresses as given: an `ext:`
/// address that is a Service frontend is classified as that address, as if
/// nothing translated it (see [`answer`] for what the datapath does).
pub fn classify(cluster: &Cluster, tables: &Tables, probe: &Probe) -> Result<Verdict, ProbeError> {
    let (src, dst) = resolve(cluster, probe)?;
    Ok(tables.classify(src, dst, probe.protocol.ip_protocol(), probe.port))
}

/// A tier rule in words: `admin tier: ClusterNetworkPolicy/x (priority
/// 10) ingress rule 0 "deny-from-y" (Deny: from: ...)`. `cluster` is the
/// state the tables were compiled from.
#[must_use]
pub fn describe_tier_rule(
    tables: &Tables,
    cluster: &Cluster,
    r: TierRule,
    direction: Direction,
) -> String {
    let name = tables.policy(r.policy);
    let policy = ClusterPolicyKey::of_kind(&name.namespace, &name.name)
        .and_then(|k| cluster.cluster_policies.get(&k));
    let rule = policy.and_then(|p| {
        p.rules(direction == Direction::Ingress)
            .get(usize::from(r.rule))
    });
    let priority = policy.map_or(String::new(), |p| match p.api {
        crate::model::PolicyApi::BaselineAdmin => String::new(),
        _ => format!(" (priority {})", p.priority),
    });
    let peers = if direction == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    match rule {
        Some(rule) => format!(
            "{} tier: {name}{priority} {direction} rule {} \"{}\" ({})",
            r.tier,
            r.rule,
            rule.name,
            rule.describe(peers)
        ),
        None => format!("{} tier: {name} {direction} rule {}", r.tier, r.rule),
    }
}

/// A verdict with its reasons, in words.
#[derive(Debug)]
pub struct Explanation<'a> {
    /// The probe.
    pub probe: &'a Probe,
    /// The addresses it resolved to.
    pub addresses: (IpAddr, IpAddr),
    /// The verdict.
    pub verdict: Verdict,
    /// The tables that gave it (for names).
    pub tables: &'a Tables,
    /// The cluster state they were compiled from (for rule texts).
    pub cluster: &'a Cluster,
}

impl Explanation<'_> {
    fn decision(
        &self,
        f: &mut fmt::Formatter<'_>,
        direction: Direction,
        d: Decision,
    ) -> fmt::Result {
        let (side, endpoint) = match direction {
            Direction::Egress => ("source", &self.probe.src),
            Direction::Ingress => ("destination", &self.probe.dst),
        };
        let policy = |p: PolicyId| self.tables.policy(p).to_string();
        let passed = match direction {
            Direction::Egress => self.verdict.passed.egress,
            Direction::Ingress => self.verdict.passed.ingress,
        };
        if let Some(r) = passed {
            writeln!(
                f,
                "  {direction}: passed on — {}",
                describe_tier_rule(self.tables, self.cluster, r, direction)
            )?;
        }
        match d {
            Decision::NotEnforced => {
                writeln!(
                    f,
                    "  {direction}: allow — {side} {endpoint} is not a pod that policy applies to"
                )
            }
            Decision::NotIsolated => writeln!(
                f,
                "  {direction}: allow — no NetworkPolicy selects {side} {endpoint} for {direction}"
            ),
            Decision::SelfTraffic => {
                writeln!(f, "  {direction}: allow — a pod may always reach itself")
            }
            Decision::OwnNode => writeln!(
                f,
                "  {direction}: allow — the node a pod runs on may always connect to it"
            ),
            Decision::Allowed { policy: p, rule } => {
                let all = self.isolating(direction);
                let name = self.tables.policy(p);
                let text = self
                    .cluster
                    .policies
                    .get(&ObjectKey::new(name.namespace.as_ref(), name.name.as_ref()))
                    .and_then(|np| match direction {
                        Direction::Ingress => np
                            .ingress
                            .get(usize::from(rule))
                            .map(|r| r.describe("from")),
                        Direction::Egress => {
                            np.egress.get(usize::from(rule)).map(|r| r.describe("to"))
                        }
                    })
                    .unwrap_or_default();
                writeln!(
                    f,
                    "  {direction}: allow — {side} {endpoint} is isolated for {direction} by {}; \
                     allowed by {} {direction} rule {rule} ({text})",
                    all.join(", "),
                    policy(p)
                )
            }
            Decision::Denied { group } => {
                let names = self.group_names(group);
                writeln!(
                    f,
                    "  {direction}: deny — {side} {endpoint} is isolated for {direction} by {}, \
                     and no {direction} rule of {} allows {}",
                    names.join(", "),
                    if names.len() == 1 { "it" } else { "them" },
                    self.what()
                )
            }
            Decision::TierAccepted(r) => writeln!(
                f,
                "  {direction}: allow — {}",
                describe_tier_rule(self.tables, self.cluster, r, direction)
            ),
            Decision::TierDenied(r) => writeln!(
                f,
                "  {direction}: deny — {}",
                describe_tier_rule(self.tables, self.cluster, r, direction)
            ),
            Decision::TierWouldDeny(r) => writeln!(
                f,
                "  {direction}: allow (audit) — {}, but {side} {endpoint} is in audit mode: \
                 reported, not dropped",
                describe_tier_rule(self.tables, self.cluster, r, direction)
            ),
            Decision::WouldDeny { group } => {
                let names = self.group_names(group);
                writeln!(
                    f,
                    "  {direction}: allow (audit) — {side} {endpoint} is isolated for {direction} by {}, \
                     and no {direction} rule of {} allows {}, but it is in audit mode: \
                     reported, not dropped",
                    names.join(", "),
                    if names.len() == 1 { "it" } else { "them" },
                    self.what()
                )
            }
        }
    }

    /// The names of the policies that isolate the relevant pod in
    /// `direction`.
    fn isolating(&self, direction: Direction) -> Vec<String> {
        let addr = match direction {
            Direction::Egress => self.addresses.0,
            Direction::Ingress => self.addresses.1,
        };
        let enforcement = self.tables.peer(addr).pod.map(|p| match direction {
            Direction::Egress => p.egress,
            Direction::Ingress => p.ingress,
        });
        match enforcement {
            Some(Enforcement::Isolated(g) | Enforcement::Audited(g)) => self.group_names(g),
            _ => Vec::new(),
        }
    }

    fn group_names(&self, group: GroupId) -> Vec<String> {
        self.tables
            .group_policy_names(group)
            .map(ToString::to_string)
            .collect()
    }

    fn what(&self) -> String {
        let peer = |e: &Endpoint, a: IpAddr| match e {
            Endpoint::External(_) => e.to_string(),
            Endpoint::Pod { .. } | Endpoint::Service { .. } => format!("{e} ({a})"),
        };
        format!(
            "{} from {} to {} port {}",
            self.probe.protocol,
            peer(&self.probe.src, self.addresses.0),
            peer(&self.probe.dst, self.addresses.1),
            self.probe.port
        )
    }
}

impl Explanation<'_> {
    /// The egress and the ingress line, each `  direction: ...` and ending
    /// with a newline: the explanation without its verdict and generation
    /// lines.
    #[must_use]
    pub fn decisions(&self) -> impl fmt::Display + '_ {
        Decisions(self)
    }
}

struct Decisions<'e, 'a>(&'e Explanation<'a>);

impl fmt::Display for Decisions<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .decision(f, Direction::Egress, self.0.verdict.egress)?;
        self.0
            .decision(f, Direction::Ingress, self.0.verdict.ingress)
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.verdict.is_allowed() {
            "allow"
        } else {
            "deny"
        };
        writeln!(f, "{verdict}: {}", self.what())?;
        write!(f, "{}", self.decisions())?;
        write!(f, "  (table generation {})", self.tables.generation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_lines() {
        let p = Probe::from_line("x/a\text:192.0.2.1\tudp\t53\textra").unwrap();
        assert_eq!(p.to_string(), "x/a\text:192.0.2.1\tUDP\t53");
        assert_eq!(
            Probe::from_line("x/a\tx/b\tTCP").unwrap_err(),
            ProbeError::Columns(3)
        );
        assert!(matches!(
            Probe::from_line("x\tx/b\tTCP\t80"),
            Err(ProbeError::BadEndpoint(_))
        ));
        assert!(matches!(
            Probe::from_line("ext:1.2.3\tx/b\tTCP\t80"),
            Err(ProbeError::BadAddress(_))
        ));
        assert!(matches!(
            Probe::from_line("x/a\tx/b\tICMP\t80"),
            Err(ProbeError::BadProtocol(_))
        ));
        let p = Probe::from_line("x/a\tsvc:kube-system/kube-dns\tudp\t53").unwrap();
        assert_eq!(p.to_string(), "x/a\tsvc:kube-system/kube-dns\tUDP\t53");
        for bad in ["svc:", "svc:x", "svc:x/", "svc:/a", "svc:x/a/b"] {
            assert!(
                matches!(
                    Probe::from_line(&format!("x/a\t{bad}\tTCP\t80")),
                    Err(ProbeError::BadEndpoint(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Probe::from_line("x/a\tx/b\tTCP\t0"),
            Err(ProbeError::BadPort(_))
        ));
        assert!(matches!(
            Probe::from_line("x/a\tx/b\tTCP\t65536"),
            Err(ProbeError::BadPort(_))
        ));
    }
}
