//! Kubernetes objects reduced to the parts that decide policy.
//!
//! Each kind has a `from_resource` that takes the k8s-openapi object, applies
//! the API server's defaulting and validation rules that matter for policy
//! (so a manifest that a cluster would reject is rejected here too, naming the
//! object and the field), and returns a small, comparable value. Everything
//! downstream — the compiler, the reference evaluator, the CLI — works on
//! these values only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podfence_datapath::Prefix;

/// The label the API server puts on every namespace, set to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Kind, namespace and name of an object, for messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `Namespace`, `Pod`, `NetworkPolicy`, ...
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name (`<unnamed>` when it has none).
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// An object the API server would reject, or one podfence cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct ModelError {
    /// The offending object.
    pub object: ObjectRef,
    /// Path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A namespace: its name and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, always including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

impl Namespace {
    /// A namespace known only by name (no object for it was seen): it carries
    /// just the label the API server would give it.
    #[must_use]
    pub fn implicit(name: &str) -> Self {
        let mut labels = Labels::new();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        Self {
            name: name.to_owned(),
            labels,
        }
    }

    /// Reduces a k8s-openapi Namespace.
    pub fn from_resource(ns: &core::Namespace) -> Result<Self, ModelError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(ModelError {
                object: ObjectRef {
                    kind: "Namespace".into(),
                    namespace: String::new(),
                    name,
                },
                field: "metadata.name".into(),
                message: "a namespace needs a name".into(),
            });
        }
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        // The API server sets this label on every namespace and overwrites any
        // other value a client gives it.
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Ok(Self { name, labels })
    }
}

/// A transport protocol NetworkPolicy can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols NetworkPolicy supports.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// Parses a protocol name as the API spells it; `any_case` also accepts
    /// `tcp`, `Udp`, ... (for command-line input; the API is case-sensitive).
    #[must_use]
    pub fn parse(s: &str, any_case: bool) -> Option<Self> {
        let p = |name: &str| {
            if any_case {
                s.eq_ignore_ascii_case(name)
            } else {
                s == name
            }
        };
        if p("TCP") {
            Some(Self::Tcp)
        } else if p("UDP") {
            Some(Self::Udp)
        } else if p("SCTP") {
            Some(Self::Sctp)
        } else {
            None
        }
    }

    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The IP protocol number.
    #[must_use]
    pub fn ip_protocol(self) -> podfence_datapath::IpProtocol {
        match self {
            Self::Tcp => podfence_datapath::IpProtocol::TCP,
            Self::Udp => podfence_datapath::IpProtocol::UDP,
            Self::Sctp => podfence_datapath::IpProtocol::SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port's name (`containers[].ports[].name`).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A pod's lifecycle phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodPhase {
    /// Not yet running (or phase not reported).
    Pending,
    /// Running.
    Running,
    /// All containers terminated successfully; the pod is finished.
    Succeeded,
    /// All containers terminated, some failed; the pod is finished.
    Failed,
    /// The node stopped reporting.
    Unknown,
}

impl PodPhase {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Unknown") => Self::Unknown,
            _ => Self::Pending,
        }
    }
}

/// A pod: identity, placement, addresses and named ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `spec.nodeName`, if scheduled.
    pub node: Option<String>,
    /// `spec.hostNetwork`: the pod shares its node's addresses.
    pub host_network: bool,
    /// `status.phase`.
    pub phase: PodPhase,
    /// `status.podIPs` (or `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    /// `status.hostIPs` (or `status.hostIP`).
    pub host_ips: Vec<IpAddr>,
    /// Named ports of the pod's containers.
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// Whether policy applies to this pod's own addresses: it has addresses of
    /// its own (not the node's) and has not finished. Finished pods' addresses
    /// may already belong to a new pod, so upstream enforcers ignore them.
    #[must_use]
    pub fn is_policy_endpoint(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reduces a k8s-openapi Pod. A missing namespace is `default`, as
    /// `kubectl apply` would make it.
    pub fn from_resource(pod: &core::Pod) -> Result<Self, ModelError> {
        let object = object_ref("Pod", &pod.metadata);
        let err = |field: String, message: String| ModelError {
            object: object.clone(),
            field,
            message,
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut named_ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.as_deref().unwrap_or_default().iter().enumerate() {
                let field = |f: &str| format!("spec.containers[{ci}].ports[{pi}].{f}");
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => Protocol::parse(s, false).ok_or_else(|| {
                        err(field("protocol"), format!("unsupported protocol '{s}'"))
                    })?,
                };
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| {
                        err(
                            field("containerPort"),
                            format!("{} is not a port number (1-65535)", p.container_port),
                        )
                    })?;
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    named_ports.push(NamedPort {
                        name: name.to_owned(),
                        protocol,
                        port,
                    });
                }
            }
        }
        let pod_ips = status
            .and_then(|s| s.pod_ips.as_deref())
            .unwrap_or_default();
        let pod_ips = pod_ips.iter().map(|p| p.ip.as_str());
        let ips = parse_ips(
            pod_ips,
            status.and_then(|s| s.pod_ip.as_deref()),
            "status.podIP",
        )
        .map_err(|(f, m)| err(f, m))?;
        let host_ips = status
            .and_then(|s| s.host_ips.as_deref())
            .unwrap_or_default();
        let host_ips = host_ips.iter().map(|p| p.ip.as_str());
        let host_ips = parse_ips(
            host_ips,
            status.and_then(|s| s.host_ip.as_deref()),
            "status.hostIP",
        )
        .map_err(|(f, m)| err(f, m))?;
        if object.name.is_empty() {
            return Err(err("metadata.name".into(), "a pod needs a name".into()));
        }
        Ok(Self {
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: PodPhase::parse(status.and_then(|s| s.phase.as_deref())),
            ips,
            host_ips,
            named_ports,
        })
    }
}

/// A cluster state: namespaces, pods and policies, each by name.
///
/// Objects are shared (`Arc`): a clone of the state is cheap, and an object
/// that was not replaced is the same allocation in every state that holds
/// it, which is how [`crate::compile::Compiler`] tells what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Pods by `(namespace, name)`.
    pub pods: BTreeMap<(String, String), Arc<Pod>>,
    /// Policies by `(namespace, name)`.
    pub policies: BTreeMap<(String, String), Arc<NetworkPolicy>>,
}

impl Cluster {
    /// Adds or replaces a namespace.
    pub fn apply_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), Arc::new(ns));
    }

    /// Adds or replaces a pod.
    pub fn apply_pod(&mut self, pod: Pod) {
        self.pods
            .insert((pod.namespace.clone(), pod.name.clone()), Arc::new(pod));
    }

    /// Adds or replaces a policy.
    pub fn apply_policy(&mut self, policy: NetworkPolicy) {
        self.policies.insert(
            (policy.namespace.clone(), policy.name.clone()),
            Arc::new(policy),
        );
    }

    /// Gives every namespace that a pod or policy names but no object
    /// describes an implicit entry ([`Namespace::implicit`]).
    pub fn add_implicit_namespaces(&mut self) {
        let named: Vec<String> = self
            .pods
            .keys()
            .chain(self.policies.keys())
            .map(|(ns, _)| ns.clone())
            .filter(|ns| !self.namespaces.contains_key(ns))
            .collect();
        for ns in named {
            self.namespaces
                .entry(ns.clone())
                .or_insert_with(|| Arc::new(Namespace::implicit(&ns)));
        }
    }

    /// The pod `namespace/name`.
    #[must_use]
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(AsRef::as_ref)
    }

    /// The labels of a namespace; an unknown namespace has only its name label.
    #[must_use]
    pub fn namespace_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => std::borrow::Cow::Borrowed(&ns.labels),
            None => std::borrow::Cow::Owned(Namespace::implicit(name).labels),
        }
    }
}

fn parse_ip(s: &str, field: impl FnOnce() -> String) -> Result<IpAddr, (String, String)> {
    s.parse()
        .map_err(|_| (field(), format!("'{s}' is not an IP address")))
}

/// The addresses of a `status.<x>IPs` list, or of `status.<x>IP` when the
/// list is empty (older API servers fill only the single field).
fn parse_ips<'a>(
    list: impl ExactSizeIterator<Item = &'a str>,
    single: Option<&str>,
    field: &str,
) -> Result<Vec<IpAddr>, (String, String)> {
    if list.len() > 0 {
        return list
            .enumerate()
            .map(|(i, ip)| parse_ip(ip, || format!("{field}s[{i}].ip")))
            .collect();
    }
    single
        .filter(|s| !s.is_empty())
        .map(|s| parse_ip(s, || field.to_owned()))
        .into_iter()
        .collect()
}

fn object_ref(kind: &str, meta: &meta::ObjectMeta) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or("default".into()),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (empty for `Exists` and `DoesNotExist`).
    pub values: Vec<String>,
}

/// A label selector: every `matchLabels` pair and every requirement must
/// hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    /// Exact `key: value` pairs.
    pub match_labels: Vec<(String, String)>,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether the selector matches everything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    fn from_resource(sel: &meta::LabelSelector, field: &str) -> Result<Self, (String, String)> {
        let match_labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut match_expressions = Vec::new();
        for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
            let at = |f: &str| format!("{field}.matchExpressions[{i}].{f}");
            if r.key.is_empty() {
                return Err((at("key"), "a requirement needs a key".into()));
            }
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err((
                        at("operator"),
                        format!("'{other}' is not one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            };
            let values = r.values.clone().unwrap_or_default();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be non-empty when operator is {}", r.operator),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err((
                        at("values"),
                        format!("must be empty when operator is {}", r.operator),
                    ));
                }
                _ => {}
            }
            match_expressions.push(Requirement {
                key: r.key.clone(),
                operator,
                values,
            });
        }
        Ok(Self {
            match_labels,
            match_expressions,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{} (everything)");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

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
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
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
        if object.name.is_empty() {
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
            namespace: object.namespace.clone(),
            name: object.name.clone(),
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

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A port name as the API accepts it (an IANA service name): 1-15
/// characters of `a-z`, `0-9` and `-`, at least one letter, no leading,
/// trailing or doubled `-`.
fn validate_port_name(name: &str) -> Result<(), String> {
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

    #[test]
    fn selector_operators() {
        let labels: Labels = [("a".to_owned(), "1".to_owned())].into();
        let req = |operator, values: &[&str]| LabelSelector {
            match_labels: vec![],
            match_expressions: vec![Requirement {
                key: "a".into(),
                operator,
                values: values.iter().map(|s| (*s).to_owned()).collect(),
            }],
        };
        let none = Labels::new();
        assert!(req(Operator::In, &["1", "2"]).matches(&labels));
        assert!(!req(Operator::In, &["1"]).matches(&none));
        assert!(!req(Operator::NotIn, &["1"]).matches(&labels));
        assert!(
            req(Operator::NotIn, &["1"]).matches(&none),
            "NotIn matches a missing key"
        );
        assert!(req(Operator::Exists, &[]).matches(&labels));
        assert!(!req(Operator::Exists, &[]).matches(&none));
        assert!(req(Operator::DoesNotExist, &[]).matches(&none));
        assert!(!req(Operator::DoesNotExist, &[]).matches(&labels));
        assert!(LabelSelector::default().matches(&none));
        let both = LabelSelector {
            match_labels: vec![("a".into(), "1".into())],
            ..req(Operator::NotIn, &["1"])
        };
        assert!(
            !both.matches(&labels),
            "matchLabels and matchExpressions are ANDed"
        );
    }

    #[test]
    fn pods_take_ips_ports_and_phase() {
        let pod: core::Pod = serde_saphyr::from_str(
            "metadata: {name: a, namespace: x, labels: {app: web}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n    - {containerPort: 53, protocol: UDP}\nstatus:\n  phase: Running\n  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
        )
        .unwrap();
        let p = Pod::from_resource(&pod).unwrap();
        assert_eq!(p.ips.len(), 2);
        assert_eq!(
            p.named_ports,
            vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert!(p.is_policy_endpoint());
        let bad: core::Pod =
            serde_saphyr::from_str("metadata: {name: a}\nstatus: {podIP: 10.0.0.300}\n").unwrap();
        let e = Pod::from_resource(&bad).unwrap_err();
        assert_eq!(
            (e.object.to_string().as_str(), e.field.as_str()),
            ("Pod default/a", "status.podIP")
        );
    }

    #[test]
    fn namespace_name_label_is_forced() {
        let ns: core::Namespace =
            serde_saphyr::from_str("metadata: {name: x, labels: {kubernetes.io/metadata.name: y}}")
                .unwrap();
        let ns = Namespace::from_resource(&ns).unwrap();
        assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "x");
    }
}
