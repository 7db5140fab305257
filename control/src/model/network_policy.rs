//! networking.k8s.io/v1 NetworkPolicy after defaulting and validation.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podfence_datapath::Prefix;

use super::{LabelSelector, ModelError, ObjectKey, Protocol, object_ref};

/// An `ipBlock`: the addresses in `cidr` and in none of `except`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    /// The block.
    pub cidr: Prefix,
    /// Holes, each strictly inside `cidr`.
    pub except: Vec<Prefix>,
}

impl IpBlock {
    /// Whether `addr` is in the block and in none of its holes.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidr.contains(addr) && !self.except.iter().any(|e| e.contains(addr))
    }
}

/// One element of a rule's `from` or `to` list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods chosen by labels: `podSelector` and/or `namespaceSelector`.
    Pods {
        /// `None`: the policy's own namespace (no `namespaceSelector`); else
        /// the namespaces the selector matches (`{}`: all).
        namespaces: Option<LabelSelector>,
        /// The pods in those namespaces (empty: all of them; this is also
        /// what an absent `podSelector` beside a `namespaceSelector` means).
        pods: LabelSelector,
    },
    /// Addresses.
    IpBlock(IpBlock),
}

/// The port part of a `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` alone, or with `endPort`: an inclusive range.
    Range(u16, u16),
    /// A named port, resolved per pod.
    Named(String),
}

/// One `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyPort {
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
    /// `port` and `endPort`.
    pub port: PortSpec,
}

impl fmt::Display for PolicyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "{}/*", self.protocol),
            PortSpec::Range(a, b) if a == b => write!(f, "{}/{a}", self.protocol),
            PortSpec::Range(a, b) => write!(f, "{}/{a}-{b}", self.protocol),
            PortSpec::Named(n) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pods { namespaces, pods } => {
                if pods.is_empty() {
                    f.write_str("all pods")?;
                } else {
                    write!(f, "pods [{pods}]")?;
                }
                match namespaces {
                    None => f.write_str(" of the policy's namespace"),
                    Some(ns) if ns.is_empty() => f.write_str(" of all namespaces"),
                    Some(ns) => write!(f, " in namespaces [{ns}]"),
                }
            }
            Self::IpBlock(b) if b.except.is_empty() => write!(f, "ipBlock {}", b.cidr),
            Self::IpBlock(b) => {
                let holes: Vec<String> = b.except.iter().map(ToString::to_string).collect();
                write!(f, "ipBlock {} except {}", b.cidr, holes.join(", "))
            }
        }
    }
}

impl Rule {
    /// The rule in words, with `peers_name` (`from` or `to`).
    #[must_use]
    pub fn describe(&self, peers_name: &str) -> String {
        let peers = if self.peers.is_empty() {
            "any peer".to_owned()
        } else {
            self.peers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let ports = if self.ports.is_empty() {
            "any port of any protocol".to_owned()
        } else {
            self.ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{peers_name}: {peers}; ports: {ports}")
    }
}

/// One ingress or egress rule. Empty `peers` means every peer and empty
/// `ports` every port of every protocol: the API treats an empty list
/// exactly as an absent one here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<PolicyPort>,
}

/// A networking.k8s.io/v1 NetworkPolicy after defaulting and validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.podSelector`: the pods of the namespace it applies to.
    pub pod_selector: LabelSelector,
    /// Whether it isolates selected pods for ingress (after defaulting).
    pub isolates_ingress: bool,
    /// Whether it isolates selected pods for egress (after defaulting).
    pub isolates_egress: bool,
    /// `spec.ingress` (absent and empty alike: no rule).
    pub ingress: Vec<Rule>,
    /// `spec.egress` (absent and empty alike: no rule).
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Reduces a k8s-openapi NetworkPolicy, applying the API's defaulting of
    /// `policyTypes` (Ingress always; Egress iff there are egress rules) and
    /// its validation rules.
    pub fn from_resource(np: &net::NetworkPolicy) -> Result<Self, ModelError> {
        let object = object_ref("NetworkPolicy", &np.metadata);
        let err = |(field, message): (String, String)| ModelError {
            object: object.clone(),
            field,
            message,
        };
        if object.key.name.is_empty() {
            return Err(err((
                "metadata.name".into(),
                "a policy needs a name".into(),
            )));
        }
        let spec = np.spec.clone().unwrap_or_default();
        let pod_selector = LabelSelector::from_resource(
            &spec.pod_selector.clone().unwrap_or_default(),
            "spec.podSelector",
        )
        .map_err(err)?;
        let ingress = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_deref(), r.ports.as_deref()));
        let ingress = convert_rules(ingress, "spec.ingress", "from").map_err(err)?;
        let egress = spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_deref(), r.ports.as_deref()));
        let egress = convert_rules(egress, "spec.egress", "to").map_err(err)?;
        let types = spec.policy_types.unwrap_or_default();
        let (isolates_ingress, isolates_egress) = if types.is_empty() {
            (true, !egress.is_empty())
        } else {
            if types.len() > 2 {
                return Err(err((
                    "spec.policyTypes".into(),
                    "may not list more than two types (Ingress, Egress)".into(),
                )));
            }
            let (mut i, mut e) = (false, false);
            for (n, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(err((
                            format!("spec.policyTypes[{n}]"),
                            format!("'{other}' is not Ingress or Egress"),
                        )));
                    }
                }
            }
            (i, e)
        };
        Ok(Self {
            namespace: object.key.namespace.clone(),
            name: object.key.name.clone(),
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
        })
    }
}

type FieldError = (String, String);

fn convert_rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a [net::NetworkPolicyPeer]>,
            Option<&'a [net::NetworkPolicyPort]>,
        ),
    >,
    field: &str,
    peers_name: &str,
) -> Result<Vec<Rule>, FieldError> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in rules.enumerate() {
        let at = format!("{field}[{i}]");
        out.push(Rule {
            peers: convert_peers(peers, &format!("{at}.{peers_name}"))?,
            ports: convert_ports(ports, &format!("{at}.ports"))?,
        });
    }
    Ok(out)
}

fn convert_peers(
    peers: Option<&[net::NetworkPolicyPeer]>,
    field: &str,
) -> Result<Vec<Peer>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in peers.unwrap_or_default().iter().enumerate() {
        let at = format!("{field}[{i}]");
        let selectors =
            usize::from(p.pod_selector.is_some()) + usize::from(p.namespace_selector.is_some());
        match (&p.ip_block, selectors) {
            (None, 0) => {
                return Err((
                    at,
                    "must specify a peer (podSelector, namespaceSelector or ipBlock)".into(),
                ));
            }
            (Some(_), 1..) => {
                return Err((
                    at,
                    "may not specify more than 1 peer when ipBlock is specified".into(),
                ));
            }
            (Some(b), 0) => out.push(Peer::IpBlock(convert_ip_block(
                b,
                &format!("{at}.ipBlock"),
            )?)),
            (None, _) => {
                let namespaces = p
                    .namespace_selector
                    .as_ref()
                    .map(|s| LabelSelector::from_resource(s, &format!("{at}.namespaceSelector")))
                    .transpose()?;
                let pods = p
                    .pod_selector
                    .as_ref()
                    .map(|s| LabelSelector::from_resource(s, &format!("{at}.podSelector")))
                    .transpose()?
                    .unwrap_or_default();
                out.push(Peer::Pods { namespaces, pods });
            }
        }
    }
    Ok(out)
}

fn convert_ip_block(b: &net::IPBlock, field: &str) -> Result<IpBlock, FieldError> {
    let cidr: Prefix = b
        .cidr
        .parse()
        .map_err(|e: podfence_datapath::PrefixError| (format!("{field}.cidr"), e.to_string()))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let at = format!("{field}.except[{i}]");
        let hole: Prefix = e
            .parse()
            .map_err(|e: podfence_datapath::PrefixError| (at.clone(), e.to_string()))?;
        if !cidr.covers(&hole) || hole.prefix_len() == cidr.prefix_len() {
            return Err((at, format!("{hole} must be a strict subset of cidr {cidr}")));
        }
        except.push(hole);
    }
    Ok(IpBlock { cidr, except })
}

fn convert_ports(
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
) -> Result<Vec<PolicyPort>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s, false).ok_or_else(|| {
                (
                    at("protocol"),
                    format!("'{s}' is not one of TCP, UDP, SCTP"),
                )
            })?,
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortSpec::Any,
            (None, Some(_)) => {
                return Err((at("endPort"), "may not be specified without port".into()));
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err((
                        at("endPort"),
                        "may not be specified when port is a named port".into(),
                    ));
                }
                if let Ok(n) = name.parse::<i64>() {
                    // The API's IntOrString keeps "80" a string: a port name
                    // must contain a letter, so this is invalid there too.
                    return Err((
                        at("port"),
                        format!("'{n}' is a number written as a string; write it unquoted"),
                    ));
                }
                validate_port_name(name).map_err(|m| (at("port"), m))?;
                PortSpec::Named(name.clone())
            }
            (Some(IntOrString::Int(n)), end) => {
                let first = port_number(*n)
                    .ok_or_else(|| (at("port"), format!("{n} is not a port number (1-65535)")))?;
                let last = match end {
                    None => first,
                    Some(e) => {
                        let last = port_number(e).ok_or_else(|| {
                            (at("endPort"), format!("{e} is not a port number (1-65535)"))
                        })?;
                        if last < first {
                            return Err((
                                at("endPort"),
                                format!("{last} must be greater than or equal to port {first}"),
                            ));
                        }
                        last
                    }
                };
                PortSpec::Range(first, last)
            }
        };
        out.push(PolicyPort { protocol, port });
    }
    Ok(out)
}

/// A port number (1-65535).
pub(super) fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A port name as the API accepts it (an IANA service name): 1-15
/// characters of `a-z`, `0-9` and `-`, at least one letter, no leading,
/// trailing or doubled `-`.
pub(super) fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid port name (1-15 lowercase letters, digits and single '-', \
             with at least one letter)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<NetworkPolicy, ModelError> {
        let np: net::NetworkPolicy = serde_saphyr::from_str(yaml).unwrap();
        NetworkPolicy::from_resource(&np)
    }

    const HEAD: &str = "metadata: {name: p, namespace: x}\n";

    #[test]
    fn policy_types_default_from_rules() {
        let p = policy(&format!("{HEAD}spec: {{podSelector: {{}}}}")).unwrap();
        assert!(p.isolates_ingress && !p.isolates_egress);
        let p = policy(&format!("{HEAD}spec: {{podSelector: {{}}, egress: []}}")).unwrap();
        assert!(
            p.isolates_ingress && !p.isolates_egress,
            "empty egress list adds no Egress"
        );
        let p = policy(&format!(
            "{HEAD}spec: {{podSelector: {{}}, egress: [{{}}]}}"
        ))
        .unwrap();
        assert!(p.isolates_ingress && p.isolates_egress);
        let p = policy(&format!(
            "{HEAD}spec: {{podSelector: {{}}, policyTypes: [Egress], ingress: [{{}}]}}"
        ))
        .unwrap();
        assert!(!p.isolates_ingress && p.isolates_egress);
        let p = policy(&format!(
            "{HEAD}spec: {{podSelector: {{}}, policyTypes: [], egress: [{{}}]}}"
        ))
        .unwrap();
        assert!(
            p.isolates_ingress && p.isolates_egress,
            "an empty policyTypes is defaulted"
        );
    }

    #[test]
    fn peers_keep_empty_and_absent_selectors_apart() {
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - podSelector: {{}}\n    - namespaceSelector: {{}}\n    - namespaceSelector: {{matchLabels: {{a: b}}}}\n      podSelector: {{matchLabels: {{c: d}}}}\n"
        ))
        .unwrap();
        let peers = &p.ingress[0].peers;
        assert_eq!(
            peers[0],
            Peer::Pods {
                namespaces: None,
                pods: LabelSelector::default()
            }
        );
        assert_eq!(
            peers[1],
            Peer::Pods {
                namespaces: Some(LabelSelector::default()),
                pods: LabelSelector::default()
            }
        );
        let Peer::Pods {
            namespaces: Some(ns),
            pods,
        } = &peers[2]
        else {
            panic!()
        };
        assert_eq!(ns.match_labels, vec![("a".into(), "b".into())]);
        assert_eq!(pods.match_labels, vec![("c".into(), "d".into())]);
    }

    #[test]
    fn ports_default_protocol_and_ranges() {
        let p = policy(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{}}\n    - port: 80\n    - {{protocol: UDP}}\n    - {{port: 1000, endPort: 2000, protocol: SCTP}}\n    - {{port: web}}\n"
        ))
        .unwrap();
        let ports: Vec<String> = p.ingress[0].ports.iter().map(ToString::to_string).collect();
        assert_eq!(
            ports,
            ["TCP/*", "TCP/80", "UDP/*", "SCTP/1000-2000", "TCP/web"]
        );
    }

    #[test]
    fn invalid_policies_name_object_and_field() {
        let cases = [
            (
                "ingress: [{ports: [{port: 80, endPort: 79}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{port: web, endPort: 90}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{endPort: 90}]}]",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "ingress: [{ports: [{port: 0}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "ingress: [{ports: [{port: 70000}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "ingress: [{ports: [{port: Web_1}]}]",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "ingress: [{ports: [{protocol: ICMP}]}]",
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                "ingress: [{ports: [{protocol: tcp}]}]",
                "spec.ingress[0].ports[0].protocol",
            ),
            ("egress: [{to: [{}]}]", "spec.egress[0].to[0]"),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
                "spec.egress[0].to[0]",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['::/64']}}]}]",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            ("policyTypes: [Ingress, Sideways]", "spec.policyTypes[1]"),
            (
                "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            ),
            (
                "ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}]}]",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
            (
                "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]",
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            ),
        ];
        for (spec, field) in cases {
            let e = policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n  {spec}\n")).unwrap_err();
            assert_eq!(e.field, field, "{spec}: {e}");
            assert_eq!(e.object.to_string(), "NetworkPolicy x/p");
        }
    }
}
