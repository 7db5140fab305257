//! policy.networking.k8s.io ClusterNetworkPolicy (v1beta1, v1alpha2) and
//! the older AdminNetworkPolicy and BaselineAdminNetworkPolicy (v1alpha1),
//! reduced to one form: a policy of the Admin or Baseline tier with a
//! priority, a subject and ordered rules with an action each.
//!
//! The CRDs' validation is applied (exactly-one fields, list limits, port
//! ranges, canonical CIDRs in v1beta1), so an object a cluster would refuse
//! is an error naming it and the field. `domainNames` peers are kept but
//! match nothing; the policy lists them in [`ClusterNetworkPolicy::unsupported`].

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use podfence_datapath::Prefix;
use serde::Deserialize;
use serde_json::Value;

use super::network_policy::{port_number, validate_port_name};
use super::{LabelSelector, ModelError, ObjectKey, ObjectRef, PolicyPort, PortSpec, Protocol};

/// The largest priority the APIs accept.
pub const MAX_PRIORITY: u32 = 1000;
/// Most rules per direction, peers per rule and `protocols` entries per
/// rule (CRD `maxItems`): ClusterNetworkPolicy.
const MAX_ITEMS: usize = 25;
/// The same for AdminNetworkPolicy and BaselineAdminNetworkPolicy.
const MAX_ITEMS_V1ALPHA1: usize = 100;
/// Most CIDRs per `networks` peer (CRD `maxItems`).
const MAX_NETWORKS: usize = 25;
/// Longest rule name (CRD `maxLength`).
const MAX_RULE_NAME: usize = 100;

/// The API kind and version an object came as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyApi {
    /// ClusterNetworkPolicy policy.networking.k8s.io/v1beta1.
    ClusterV1beta1,
    /// ClusterNetworkPolicy policy.networking.k8s.io/v1alpha2.
    ClusterV1alpha2,
    /// AdminNetworkPolicy policy.networking.k8s.io/v1alpha1.
    Admin,
    /// BaselineAdminNetworkPolicy policy.networking.k8s.io/v1alpha1.
    BaselineAdmin,
}

impl PolicyApi {
    /// The kind, as the API spells it.
    #[must_use]
    pub fn kind(self) -> &'static str {
        match self {
            Self::ClusterV1beta1 | Self::ClusterV1alpha2 => "ClusterNetworkPolicy",
            Self::Admin => "AdminNetworkPolicy",
            Self::BaselineAdmin => "BaselineAdminNetworkPolicy",
        }
    }

    /// The `apiVersion`.
    #[must_use]
    pub fn api_version(self) -> &'static str {
        match self {
            Self::ClusterV1beta1 => "policy.networking.k8s.io/v1beta1",
            Self::ClusterV1alpha2 => "policy.networking.k8s.io/v1alpha2",
            Self::Admin | Self::BaselineAdmin => "policy.networking.k8s.io/v1alpha1",
        }
    }

    /// The API of `apiVersion kind`, if podfence reads it.
    #[must_use]
    pub fn parse(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("policy.networking.k8s.io/v1beta1", "ClusterNetworkPolicy") => {
                Some(Self::ClusterV1beta1)
            }
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                Some(Self::ClusterV1alpha2)
            }
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy") => Some(Self::Admin),
            ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy") => {
                Some(Self::BaselineAdmin)
            }
            _ => None,
        }
    }

    /// Whether objects of one kind and name are the same object (both
    /// ClusterNetworkPolicy versions are one kind).
    fn family(self) -> u8 {
        match self {
            Self::ClusterV1beta1 | Self::ClusterV1alpha2 => 0,
            Self::Admin => 1,
            Self::BaselineAdmin => 2,
        }
    }
}

/// The tier a policy belongs to: the tables' own.
pub use podfence_datapath::tables::Tier;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allowed; lower tiers are skipped (ANP's `Allow`).
    Accept,
    /// Denied.
    Deny,
    /// The rest of the tier is skipped: NetworkPolicy decides (from the
    /// Admin tier), or nothing does (from the Baseline tier: allowed).
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        })
    }
}

/// The pods a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Every pod of the namespaces the selector matches.
    Namespaces(LabelSelector),
    /// The pods `pods` matches in the namespaces `namespaces` matches.
    Pods {
        /// Namespace selector.
        namespaces: LabelSelector,
        /// Pod selector.
        pods: LabelSelector,
    },
}

impl Subject {
    /// Whether it selects a pod labelled `pod` in a namespace labelled
    /// `namespace`.
    #[must_use]
    pub fn selects(&self, namespace: &super::Labels, pod: &super::Labels) -> bool {
        match self {
            Self::Namespaces(namespaces) => namespaces.matches(namespace),
            Self::Pods { namespaces, pods } => namespaces.matches(namespace) && pods.matches(pod),
        }
    }
}

/// One element of a rule's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TierPeer {
    /// Every pod of the namespaces the selector matches.
    Namespaces(LabelSelector),
    /// Pods chosen by namespace and pod labels.
    Pods {
        /// Namespace selector.
        namespaces: LabelSelector,
        /// Pod selector.
        pods: LabelSelector,
    },
    /// Addresses (egress only): pods' and nodes' too.
    Networks(Vec<Prefix>),
    /// The addresses of the nodes the selector matches (egress only).
    Nodes(LabelSelector),
    /// Domain names (egress only): not enforced; matches nothing.
    DomainNames(Vec<String>),
    /// A peer with none of the known fields (a field of a newer API):
    /// fails closed, as the API asks: an Accept rule matches nothing by it,
    /// a Deny or Pass rule matches everything (every peer and port).
    Unknown,
}

impl fmt::Display for TierPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Namespaces(ns) if ns.is_empty() => f.write_str("pods of all namespaces"),
            Self::Namespaces(ns) => write!(f, "pods in namespaces [{ns}]"),
            Self::Pods { namespaces, pods } => {
                write!(f, "pods [{pods}] in namespaces [{namespaces}]")
            }
            Self::Networks(n) => {
                let n: Vec<String> = n.iter().map(ToString::to_string).collect();
                write!(f, "networks {}", n.join(", "))
            }
            Self::Nodes(sel) => write!(f, "nodes [{sel}]"),
            Self::DomainNames(d) => write!(f, "domain names {} (not enforced)", d.join(", ")),
            Self::Unknown => f.write_str("a peer of an unknown kind (fails closed)"),
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TierRule {
    /// `name` (may be empty in v1alpha1 and v1alpha2).
    pub name: String,
    /// `action`.
    pub action: Action,
    /// `from` or `to`: never empty.
    pub peers: Vec<TierPeer>,
    /// `protocols` (or `ports`): empty for every port of every protocol. A
    /// named port is listed once per protocol: it matches the container
    /// port of that name whatever its protocol.
    pub ports: Vec<PolicyPort>,
}

impl TierRule {
    /// The rule in words, with `peers_name` (`from` or `to`).
    #[must_use]
    pub fn describe(&self, peers_name: &str) -> String {
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        let ports = if self.ports.is_empty() {
            "any port of any protocol".to_owned()
        } else {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            ports.join(", ")
        };
        format!(
            "{}: {peers_name}: {}; ports: {ports}",
            self.action,
            peers.join(" or ")
        )
    }
}

/// How policies of one tier are ordered: priority, then name (the
/// deterministic answer to equal priorities), then kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Precedence {
    /// The tier.
    pub tier: Tier,
    /// The priority; a BaselineAdminNetworkPolicy, which has none, comes
    /// after every Baseline ClusterNetworkPolicy.
    pub priority: u32,
    /// The name.
    pub name: String,
    /// The kind.
    pub api: PolicyApi,
}

/// A ClusterNetworkPolicy, AdminNetworkPolicy or
/// BaselineAdminNetworkPolicy after validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterNetworkPolicy {
    /// The kind and version it came as.
    pub api: PolicyApi,
    /// Name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// `spec.priority` (0-1000, lower first); see [`Precedence::priority`].
    pub priority: u32,
    /// `spec.subject`.
    pub subject: Subject,
    /// `spec.ingress`, in order.
    pub ingress: Vec<TierRule>,
    /// `spec.egress`, in order.
    pub egress: Vec<TierRule>,
    /// What of it podfence does not enforce as written (field paths):
    /// `domainNames`, peers of unknown kinds.
    pub unsupported: Vec<String>,
}

/// The key of a cluster-scoped policy: its kind family and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterPolicyKey {
    /// 0 ClusterNetworkPolicy, 1 AdminNetworkPolicy, 2 BaselineAdminNetworkPolicy.
    family: u8,
    /// The name.
    pub name: String,
}

impl ClusterPolicyKey {
    /// The key of the object `name` of `api`.
    #[must_use]
    pub fn new(api: PolicyApi, name: &str) -> Self {
        Self {
            family: api.family(),
            name: name.to_owned(),
        }
    }

    /// The key of the object `name` of kind `kind`, if it is one of these
    /// kinds.
    #[must_use]
    pub fn of_kind(kind: &str, name: &str) -> Option<Self> {
        let api = match kind {
            "ClusterNetworkPolicy" => PolicyApi::ClusterV1beta1,
            "AdminNetworkPolicy" => PolicyApi::Admin,
            "BaselineAdminNetworkPolicy" => PolicyApi::BaselineAdmin,
            _ => return None,
        };
        Some(Self::new(api, name))
    }

    /// The kind, for messages.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        [
            "ClusterNetworkPolicy",
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
        ][usize::from(self.family)]
    }
}

impl fmt::Display for ClusterPolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name)
    }
}

impl ClusterNetworkPolicy {
    /// Its key.
    #[must_use]
    pub fn key(&self) -> ClusterPolicyKey {
        ClusterPolicyKey::new(self.api, &self.name)
    }

    /// Its place in its tier.
    #[must_use]
    pub fn precedence(&self) -> Precedence {
        Precedence {
            tier: self.tier,
            priority: self.priority,
            name: self.name.clone(),
            api: self.api,
        }
    }

    /// `admin policy x (priority 10)`, for explanations and logs.
    #[must_use]
    pub fn label(&self) -> String {
        match self.api {
            PolicyApi::BaselineAdmin => format!("{} policy {} (BANP)", self.tier, self.name),
            _ => format!(
                "{} policy {} (priority {})",
                self.tier, self.name, self.priority
            ),
        }
    }

    /// The rules of one direction (`true`: ingress).
    #[must_use]
    pub fn rules(&self, ingress: bool) -> &[TierRule] {
        if ingress { &self.ingress } else { &self.egress }
    }

    /// Reduces an object of `api` given as JSON (a manifest document or a
    /// dynamic object from the API server).
    pub fn from_value(api: PolicyApi, doc: &Value) -> Result<Self, ModelError> {
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let object = ObjectRef {
            kind: api.kind().into(),
            key: ObjectKey::cluster_scoped(if name.is_empty() {
                "<unnamed>".to_owned()
            } else {
                name.clone()
            }),
        };
        let err = |(field, message): FieldError| ModelError {
            object: object.clone(),
            field,
            message,
        };
        if name.is_empty() {
            return Err(err((
                "metadata.name".into(),
                "a policy needs a name".into(),
            )));
        }
        let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
        let mut unsupported = Vec::new();
        let parsed = match api {
            PolicyApi::ClusterV1beta1 | PolicyApi::ClusterV1alpha2 => {
                let spec: RawSpec = decode(spec, "spec").map_err(err)?;
                convert_cluster(api, &spec, &mut unsupported)
            }
            PolicyApi::Admin | PolicyApi::BaselineAdmin => {
                let spec: RawAdminSpec = decode(spec, "spec").map_err(err)?;
                if api == PolicyApi::BaselineAdmin && name != "default" {
                    return Err(err((
                        "metadata.name".into(),
                        "a BaselineAdminNetworkPolicy must be named 'default'".into(),
                    )));
                }
                convert_admin(api, &spec, &mut unsupported)
            }
        };
        let (tier, priority, subject, ingress, egress) = parsed.map_err(err)?;
        Ok(Self {
            api,
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
            unsupported,
        })
    }
}

type FieldError = (String, String);
type Parsed = (Tier, u32, Subject, Vec<TierRule>, Vec<TierRule>);

fn decode<T: serde::de::DeserializeOwned>(v: Value, field: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            field.to_owned()
        } else {
            format!("{field}.{path}")
        };
        (at, e.into_inner().to_string())
    })
}

// The wire forms. Unknown fields are ignored, as the API server prunes them.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    tier: Option<String>,
    priority: Option<i64>,
    subject: Option<RawSubject>,
    ingress: Option<Vec<RawRule>>,
    egress: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdminSpec {
    priority: Option<i64>,
    subject: Option<RawSubject>,
    ingress: Option<Vec<RawAdminRule>>,
    egress: Option<Vec<RawAdminRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSubject {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<RawPods>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPods {
    namespace_selector: Option<meta::LabelSelector>,
    pod_selector: Option<meta::LabelSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPeer {
    namespaces: Option<meta::LabelSelector>,
    pods: Option<RawPods>,
    networks: Option<Vec<String>>,
    nodes: Option<meta::LabelSelector>,
    domain_names: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<RawPeer>>,
    to: Option<Vec<RawPeer>>,
    protocols: Option<Vec<RawProtocol>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProtocol {
    tcp: Option<RawProtocolPort>,
    udp: Option<RawProtocolPort>,
    sctp: Option<RawProtocolPort>,
    destination_named_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProtocolPort {
    destination_port: Option<RawPort>,
}

#[derive(Deserialize)]
struct RawPort {
    number: Option<i64>,
    range: Option<RawRange>,
}

#[derive(Deserialize)]
struct RawRange {
    start: i64,
    end: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdminRule {
    name: Option<String>,
    action: Option<String>,
    from: Option<Vec<RawPeer>>,
    to: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawAdminPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdminPort {
    port_number: Option<RawAdminNumber>,
    named_port: Option<String>,
    port_range: Option<RawAdminRange>,
}

#[derive(Deserialize)]
struct RawAdminNumber {
    protocol: Option<String>,
    port: i64,
}

#[derive(Deserialize)]
struct RawAdminRange {
    protocol: Option<String>,
    start: i64,
    end: i64,
}

fn convert_cluster(
    api: PolicyApi,
    spec: &RawSpec,
    unsupported: &mut Vec<String>,
) -> Result<Parsed, FieldError> {
    let tier = match spec.tier.as_deref() {
        Some("Admin") => Tier::Admin,
        Some("Baseline") => Tier::Baseline,
        Some(other) => {
            return Err((
                "spec.tier".into(),
                format!("'{other}' is not Admin or Baseline"),
            ));
        }
        None => return Err(("spec.tier".into(), "is required".into())),
    };
    let priority = priority(spec.priority)?;
    let subject = subject(spec.subject.as_ref(), false)?;
    let canonical = api == PolicyApi::ClusterV1beta1;
    let mut dirs: [Vec<TierRule>; 2] = [Vec::new(), Vec::new()];
    for (d, (field, rules)) in [
        ("spec.ingress", &spec.ingress),
        ("spec.egress", &spec.egress),
    ]
    .into_iter()
    .enumerate()
    {
        let rules = rules.as_deref().unwrap_or_default();
        limit(rules.len(), MAX_ITEMS, field)?;
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let ingress = d == 0;
            let peers = if ingress { &r.from } else { &r.to };
            let (other, other_name) = if ingress {
                (&r.to, "to")
            } else {
                (&r.from, "from")
            };
            if other.is_some() {
                return Err((format!("{at}.{other_name}"), "is not allowed here".into()));
            }
            let name = rule_name(r.name.as_deref(), &at)?;
            let action = action(r.action.as_deref(), &at, &["Accept", "Deny", "Pass"])?;
            let peers_name = if ingress { "from" } else { "to" };
            let peers = convert_peers(
                peers.as_deref(),
                &format!("{at}.{peers_name}"),
                ingress,
                canonical,
                false,
                unsupported,
            )?;
            let ports = protocols(r.protocols.as_deref(), &format!("{at}.protocols"))?;
            let addresses = |p: &TierPeer| {
                matches!(
                    p,
                    TierPeer::Networks(_) | TierPeer::Nodes(_) | TierPeer::DomainNames(_)
                )
            };
            let named = |p: &PolicyPort| matches!(p.port, PortSpec::Named(_));
            if peers.iter().any(addresses) && ports.iter().any(named) {
                return Err((
                    at,
                    "networks/nodes/domainNames peer cannot be set with namedPorts since there \
                     are no namedPorts for networks/nodes/domainNames"
                        .into(),
                ));
            }
            dirs[d].push(TierRule {
                name,
                action,
                peers,
                ports,
            });
        }
    }
    let [ingress, egress] = dirs;
    Ok((tier, priority, subject, ingress, egress))
}

fn convert_admin(
    api: PolicyApi,
    spec: &RawAdminSpec,
    unsupported: &mut Vec<String>,
) -> Result<Parsed, FieldError> {
    let (tier, priority, actions): (_, _, &[&str]) = if api == PolicyApi::Admin {
        (
            Tier::Admin,
            priority(spec.priority)?,
            &["Allow", "Deny", "Pass"],
        )
    } else {
        (Tier::Baseline, MAX_PRIORITY + 1, &["Allow", "Deny"])
    };
    let subject = subject(spec.subject.as_ref(), true)?;
    let mut dirs: [Vec<TierRule>; 2] = [Vec::new(), Vec::new()];
    for (d, (field, rules)) in [
        ("spec.ingress", &spec.ingress),
        ("spec.egress", &spec.egress),
    ]
    .into_iter()
    .enumerate()
    {
        let rules = rules.as_deref().unwrap_or_default();
        limit(rules.len(), MAX_ITEMS_V1ALPHA1, field)?;
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let ingress = d == 0;
            let (peers, peers_name) = if ingress {
                (&r.from, "from")
            } else {
                (&r.to, "to")
            };
            let name = rule_name(r.name.as_deref(), &at)?;
            let action = action(r.action.as_deref(), &at, actions)?;
            let peers = convert_peers(
                peers.as_deref(),
                &format!("{at}.{peers_name}"),
                ingress,
                false,
                true,
                unsupported,
            )?;
            let ports = admin_ports(r.ports.as_deref(), &format!("{at}.ports"))?;
            dirs[d].push(TierRule {
                name,
                action,
                peers,
                ports,
            });
        }
    }
    let [ingress, egress] = dirs;
    Ok((tier, priority, subject, ingress, egress))
}

fn limit(len: usize, max: usize, field: &str) -> Result<(), FieldError> {
    if len > max {
        Err((
            field.to_owned(),
            format!("has {len} items; at most {max} are allowed"),
        ))
    } else {
        Ok(())
    }
}

fn priority(p: Option<i64>) -> Result<u32, FieldError> {
    match p {
        None => Err(("spec.priority".into(), "is required".into())),
        Some(p) => u32::try_from(p)
            .ok()
            .filter(|&p| p <= MAX_PRIORITY)
            .ok_or_else(|| {
                (
                    "spec.priority".into(),
                    format!("{p} is not in 0-{MAX_PRIORITY}"),
                )
            }),
    }
}

fn selector(s: &meta::LabelSelector, field: &str) -> Result<LabelSelector, FieldError> {
    LabelSelector::from_resource(s, field)
}

/// A `pods` subject or peer. `namespaceSelector` is required in v1alpha1;
/// in the ClusterNetworkPolicy versions an absent one selects every
/// namespace.
fn pods_peer(
    p: &RawPods,
    field: &str,
    admin: bool,
) -> Result<(LabelSelector, LabelSelector), FieldError> {
    let every = meta::LabelSelector::default();
    let ns = match (&p.namespace_selector, admin) {
        (Some(ns), _) => ns,
        (None, false) => &every,
        (None, true) => {
            return Err((
                format!("{field}.namespaceSelector"),
                "is required".to_owned(),
            ));
        }
    };
    let pods = p
        .pod_selector
        .as_ref()
        .ok_or_else(|| (format!("{field}.podSelector"), "is required".to_owned()))?;
    Ok((
        selector(ns, &format!("{field}.namespaceSelector"))?,
        selector(pods, &format!("{field}.podSelector"))?,
    ))
}

fn subject(s: Option<&RawSubject>, admin: bool) -> Result<Subject, FieldError> {
    let field = "spec.subject";
    let s = s.ok_or_else(|| (field.to_owned(), "is required".to_owned()))?;
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(selector(
            ns,
            "spec.subject.namespaces",
        )?)),
        (None, Some(p)) => {
            let (namespaces, pods) = pods_peer(p, "spec.subject.pods", admin)?;
            Ok(Subject::Pods { namespaces, pods })
        }
        _ => Err((
            field.to_owned(),
            "exactly one of namespaces and pods must be set".into(),
        )),
    }
}

fn rule_name(name: Option<&str>, at: &str) -> Result<String, FieldError> {
    let name = name.unwrap_or_default();
    if name.len() > MAX_RULE_NAME {
        return Err((
            format!("{at}.name"),
            format!("is longer than {MAX_RULE_NAME} characters"),
        ));
    }
    Ok(name.to_owned())
}

fn action(a: Option<&str>, at: &str, allowed: &[&str]) -> Result<Action, FieldError> {
    let field = format!("{at}.action");
    let a = a.ok_or_else(|| (field.clone(), "is required".to_owned()))?;
    if !allowed.contains(&a) {
        return Err((field, format!("'{a}' is not one of {}", allowed.join(", "))));
    }
    Ok(match a {
        "Accept" | "Allow" => Action::Accept,
        "Deny" => Action::Deny,
        _ => Action::Pass,
    })
}

fn convert_peers(
    peers: Option<&[RawPeer]>,
    field: &str,
    ingress: bool,
    canonical: bool,
    admin: bool,
    unsupported: &mut Vec<String>,
) -> Result<Vec<TierPeer>, FieldError> {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return Err((field.to_owned(), "must list at least one peer".into()));
    }
    limit(
        peers.len(),
        if admin { MAX_ITEMS_V1ALPHA1 } else { MAX_ITEMS },
        field,
    )?;
    let mut out = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let set = usize::from(p.namespaces.is_some())
            + usize::from(p.pods.is_some())
            + usize::from(p.networks.is_some())
            + usize::from(p.nodes.is_some())
            + usize::from(p.domain_names.is_some());
        if set == 0 {
            // A field this version does not know (a newer CRD): fail closed.
            unsupported.push(format!("{at} (a peer of an unknown kind)"));
            out.push(TierPeer::Unknown);
            continue;
        }
        if set > 1 {
            return Err((
                at,
                "exactly one of namespaces, pods, networks, nodes and domainNames must be set"
                    .into(),
            ));
        }
        let egress_only = |what: &str| {
            if ingress {
                Err((
                    format!("{at}.{what}"),
                    "is allowed in egress rules only".to_owned(),
                ))
            } else {
                Ok(())
            }
        };
        let peer = if let Some(ns) = &p.namespaces {
            TierPeer::Namespaces(selector(ns, &format!("{at}.namespaces"))?)
        } else if let Some(pods) = &p.pods {
            let (namespaces, pods) = pods_peer(pods, &format!("{at}.pods"), admin)?;
            TierPeer::Pods { namespaces, pods }
        } else if let Some(nets) = &p.networks {
            egress_only("networks")?;
            let at = format!("{at}.networks");
            if nets.is_empty() {
                return Err((at, "must list at least one CIDR".into()));
            }
            limit(nets.len(), MAX_NETWORKS, &at)?;
            let mut prefixes = Vec::new();
            for (j, n) in nets.iter().enumerate() {
                let at = format!("{at}[{j}]");
                let prefix: Prefix = n
                    .parse()
                    .map_err(|e: podfence_datapath::PrefixError| (at.clone(), e.to_string()))?;
                if canonical
                    && n.split_once('/').map(|(a, _)| a.parse().ok())
                        != Some(Some(prefix.network()))
                {
                    return Err((
                        at,
                        format!("'{n}' is not a canonical CIDR (write {prefix})"),
                    ));
                }
                prefixes.push(prefix);
            }
            TierPeer::Networks(prefixes)
        } else if let Some(nodes) = &p.nodes {
            egress_only("nodes")?;
            TierPeer::Nodes(selector(nodes, &format!("{at}.nodes"))?)
        } else {
            egress_only("domainNames")?;
            let names = p.domain_names.clone().unwrap_or_default();
            if names.is_empty() {
                return Err((
                    format!("{at}.domainNames"),
                    "must list at least one name".into(),
                ));
            }
            unsupported.push(format!("{at}.domainNames"));
            TierPeer::DomainNames(names)
        };
        out.push(peer);
    }
    Ok(out)
}

fn port(n: i64, field: &str) -> Result<u16, FieldError> {
    i32::try_from(n).ok().and_then(port_number).ok_or_else(|| {
        (
            field.to_owned(),
            format!("{n} is not a port number (1-65535)"),
        )
    })
}

fn range(start: i64, end: i64, field: &str) -> Result<(u16, u16), FieldError> {
    let first = port(start, &format!("{field}.start"))?;
    let last = port(end, &format!("{field}.end"))?;
    if first >= last {
        return Err((
            format!("{field}.end"),
            format!("{last} must be greater than start {first}"),
        ));
    }
    Ok((first, last))
}

fn named(name: &str, field: &str, out: &mut Vec<PolicyPort>) -> Result<(), FieldError> {
    validate_port_name(name).map_err(|m| (field.to_owned(), m))?;
    for protocol in Protocol::ALL {
        out.push(PolicyPort {
            protocol,
            port: PortSpec::Named(name.to_owned()),
        });
    }
    Ok(())
}

fn protocols(list: Option<&[RawProtocol]>, field: &str) -> Result<Vec<PolicyPort>, FieldError> {
    if list.is_some_and(<[_]>::is_empty) {
        return Err((
            field.to_owned(),
            "must list at least one protocol when set".into(),
        ));
    }
    let list = list.unwrap_or_default();
    limit(list.len(), MAX_ITEMS, field)?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let (protocol, spec, key) = match (&p.tcp, &p.udp, &p.sctp, &p.destination_named_port) {
            (Some(s), None, None, None) => (Protocol::Tcp, s, "tcp"),
            (None, Some(s), None, None) => (Protocol::Udp, s, "udp"),
            (None, None, Some(s), None) => (Protocol::Sctp, s, "sctp"),
            (None, None, None, Some(name)) => {
                named(name, &format!("{at}.destinationNamedPort"), &mut out)?;
                continue;
            }
            _ => {
                return Err((
                    at,
                    "exactly one of tcp, udp, sctp and destinationNamedPort must be set".into(),
                ));
            }
        };
        let at = format!("{at}.{key}.destinationPort");
        let port = match &spec.destination_port {
            None => return Err((at, "is required".into())),
            Some(RawPort {
                number: Some(n),
                range: None,
            }) => {
                let n = port(*n, &format!("{at}.number"))?;
                PortSpec::Range(n, n)
            }
            Some(RawPort {
                number: None,
                range: Some(r),
            }) => {
                let (a, b) = range(r.start, r.end, &format!("{at}.range"))?;
                PortSpec::Range(a, b)
            }
            Some(_) => {
                return Err((at, "exactly one of number and range must be set".into()));
            }
        };
        out.push(PolicyPort { protocol, port });
    }
    Ok(out)
}

fn admin_protocol(p: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s, false).ok_or_else(|| {
            (
                field.to_owned(),
                format!("'{s}' is not one of TCP, UDP, SCTP"),
            )
        }),
    }
}

fn admin_ports(list: Option<&[RawAdminPort]>, field: &str) -> Result<Vec<PolicyPort>, FieldError> {
    let list = list.unwrap_or_default();
    limit(list.len(), MAX_ITEMS_V1ALPHA1, field)?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match (&p.port_number, &p.named_port, &p.port_range) {
            (Some(n), None, None) => {
                let protocol =
                    admin_protocol(n.protocol.as_deref(), &format!("{at}.portNumber.protocol"))?;
                let n = port(n.port, &format!("{at}.portNumber.port"))?;
                out.push(PolicyPort {
                    protocol,
                    port: PortSpec::Range(n, n),
                });
            }
            (None, Some(name), None) => named(name, &format!("{at}.namedPort"), &mut out)?,
            (None, None, Some(r)) => {
                let protocol =
                    admin_protocol(r.protocol.as_deref(), &format!("{at}.portRange.protocol"))?;
                let (a, b) = range(r.start, r.end, &format!("{at}.portRange"))?;
                out.push(PolicyPort {
                    protocol,
                    port: PortSpec::Range(a, b),
                });
            }
            _ => {
                return Err((
                    at,
                    "exactly one of portNumber, namedPort and portRange must be set".into(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(api: PolicyApi, yaml: &str) -> Result<ClusterNetworkPolicy, ModelError> {
        let doc: Value = serde_saphyr::from_str(yaml).unwrap();
        ClusterNetworkPolicy::from_value(api, &doc)
    }

    const CNP: &str =
        "metadata: {name: p}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n";

    #[test]
    fn reads_rules_peers_and_protocols() {
        let p = parse(
            PolicyApi::ClusterV1beta1,
            &format!(
                "{CNP}  egress:\n  - name: r\n    action: Pass\n    to:\n    - networks: [10.0.0.0/8]\n    - nodes: {{matchLabels: {{a: b}}}}\n    - pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{c: d}}}}}}\n    - domainNames: [example.com]\n    protocols:\n    - tcp: {{destinationPort: {{number: 80}}}}\n    - udp: {{destinationPort: {{range: {{start: 53, end: 54}}}}}}\n    - sctp: {{destinationPort: {{number: 9}}}}\n"
            ),
        )
        .unwrap();
        assert_eq!((p.tier, p.priority), (Tier::Admin, 10));
        let r = &p.egress[0];
        assert_eq!((r.name.as_str(), r.action), ("r", Action::Pass));
        assert_eq!(r.peers.len(), 4);
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["TCP/80", "UDP/53-54", "SCTP/9"]);
        // A named port, whatever its protocol.
        let q = parse(
            PolicyApi::ClusterV1alpha2,
            &format!(
                "{CNP}  ingress:\n  - {{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: web}}]}}\n"
            ),
        )
        .unwrap();
        let ports: Vec<String> = q.ingress[0].ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["TCP/web", "UDP/web", "SCTP/web"]);
        assert!(q.ingress[0].name.is_empty(), "names are optional");
        assert_eq!(p.unsupported, ["spec.egress[0].to[3].domainNames"]);
    }

    #[test]
    fn admin_kinds_map_onto_tiers() {
        let p = parse(
            PolicyApi::Admin,
            "metadata: {name: a}\nspec:\n  priority: 5\n  subject: {pods: {namespaceSelector: {}, podSelector: {}}}\n  ingress:\n  - {name: r, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 1, end: 2}}]}\n",
        )
        .unwrap();
        assert_eq!((p.tier, p.priority), (Tier::Admin, 5));
        assert_eq!(p.ingress[0].action, Action::Accept);
        let ports: Vec<String> = p.ingress[0].ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["UDP/53", "TCP/1-2"]);
        let b = parse(
            PolicyApi::BaselineAdmin,
            "metadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n",
        )
        .unwrap();
        assert_eq!(b.tier, Tier::Baseline);
        assert!(b.priority > MAX_PRIORITY);
    }

    #[test]
    #[allow(clippy::too_many_lines, reason = "one invalid object per case")]
    fn invalid_objects_name_object_and_field() {
        let head = "metadata: {name: p}\nspec:\n  subject: {namespaces: {}}\n";
        let cases: &[(PolicyApi, &str, &str)] = &[
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Middle\n  priority: 1\n",
                "spec.tier",
            ),
            (PolicyApi::ClusterV1beta1, "  priority: 1\n", "spec.tier"),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1001\n",
                "spec.priority",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  ingress: [{name: r, action: Allow, from: [{namespaces: {}}]}]\n",
                "spec.ingress[0].action",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: web}]}]\n",
                "spec.egress[0]",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n",
                "spec.egress[0].protocols[0].tcp.destinationPort",
            ),
            (
                PolicyApi::ClusterV1alpha2,
                "  tier: Admin\n  priority: 1\n  egress: [{action: Deny, to: [{namespaces: {}}], protocols: []}]\n",
                "spec.egress[0].protocols",
            ),
            (
                PolicyApi::ClusterV1beta1,
                &format!(
                    "  tier: Admin\n  priority: 1\n  ingress: [{}]\n",
                    vec!["{action: Deny, from: [{namespaces: {}}]}"; 26].join(", ")
                ),
                "spec.ingress",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  ingress: [{name: r, action: Deny, from: [{networks: [10.0.0.0/8]}]}]\n",
                "spec.ingress[0].from[0].networks",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n",
                "spec.egress[0].to[0].networks[0]",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{namespaces: {}, nodes: {}}]}]\n",
                "spec.egress[0].to[0]",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: []}]\n",
                "spec.egress[0].to",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}]\n",
                "spec.egress[0].protocols[0].tcp.destinationPort.range.end",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {}, udp: {}}]}]\n",
                "spec.egress[0].protocols[0]",
            ),
            (
                PolicyApi::ClusterV1beta1,
                "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{pods: {namespaceSelector: {}}}]}]\n",
                "spec.egress[0].to[0].pods.podSelector",
            ),
            (
                PolicyApi::Admin,
                "  priority: 1\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]\n",
                "spec.ingress[0].action",
            ),
            (
                PolicyApi::Admin,
                "  priority: 1\n  ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{namedPort: Web_1}]}]\n",
                "spec.ingress[0].ports[0].namedPort",
            ),
            (PolicyApi::Admin, "  priority: nope\n", "spec.priority"),
            (
                PolicyApi::Admin,
                "  priority: 1\n  egress: [{action: Deny, to: [{pods: {podSelector: {}}}]}]\n",
                "spec.egress[0].to[0].pods.namespaceSelector",
            ),
        ];
        for (api, spec, field) in cases {
            let e = parse(*api, &format!("{head}{spec}")).unwrap_err();
            assert_eq!(e.field, *field, "{spec}: {e}");
            assert_eq!(e.object.to_string(), format!("{} p", api.kind()));
        }
        let e = parse(
            PolicyApi::BaselineAdmin,
            "metadata: {name: default}\nspec:\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{namespaces: {}}]}]\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].action", "{e}");
        // v1alpha2 accepts a CIDR with host bits; v1beta1 does not.
        let spec = "  tier: Admin\n  priority: 1\n  egress: [{name: r, action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n";
        let p = parse(PolicyApi::ClusterV1alpha2, &format!("{head}{spec}")).unwrap();
        assert_eq!(p.egress[0].peers[0].to_string(), "networks 10.0.0.0/8");
        let e = parse(
            PolicyApi::BaselineAdmin,
            "metadata: {name: other}\nspec: {subject: {namespaces: {}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "metadata.name");
    }

    #[test]
    fn a_peer_of_an_unknown_kind_fails_closed() {
        let p = parse(
            PolicyApi::ClusterV1beta1,
            &format!("{CNP}  egress:\n  - {{action: Deny, to: [{{futurePeer: {{a: b}}}}]}}\n"),
        )
        .unwrap();
        assert_eq!(p.egress[0].peers, [TierPeer::Unknown]);
        assert_eq!(
            p.unsupported,
            ["spec.egress[0].to[0] (a peer of an unknown kind)"]
        );
    }

    #[test]
    fn precedence_orders_by_priority_then_name() {
        let mut a = parse(PolicyApi::ClusterV1beta1, CNP).unwrap();
        let mut b = a.clone();
        b.name = "a".into();
        assert!(b.precedence() < a.precedence());
        a.priority = 1;
        assert!(a.precedence() < b.precedence());
        b.tier = Tier::Baseline;
        b.priority = 0;
        assert!(a.precedence() < b.precedence());
    }
}
