//! A naive reference evaluator of networking.k8s.io/v1 NetworkPolicy and
//! of the ClusterNetworkPolicy tiers around it, for tests.
//!
//! It is written from the API reference, not from the compiler: every
//! question ("is this pod isolated?", "does this rule admit that peer on this
//! port?") is answered by looping over the policies and rules of the cluster,
//! with no interning, no identities and no caching. Label selectors and CIDR
//! membership are evaluated here too, so that a bug in the model's helpers
//! cannot hide behind agreement.
//!
//! The evaluator answers for one connection attempt seen as the datapath
//! sees it: a source and a destination address, each either a pod's own
//! address or some other address. Only pods that are policy endpoints (they
//! have addresses of their own and have not finished) are selected by
//! policies or matched by pod peers; any other side is just its address.
//!
//! Each side is decided on its own, per the ClusterNetworkPolicy API: the
//! Admin tier's policies by priority (then name) and their rules in order,
//! the first match deciding (Accept: allowed; Deny: denied; Pass: on to
//! NetworkPolicy); then NetworkPolicy if it isolates the pod; then the
//! Baseline tier likewise (Pass: allowed); then allowed.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of this module"
)]

use std::net::IpAddr;

use podfence_control::index::Cluster;
use podfence_control::model::{
    Action, ClusterNetworkPolicy, IpBlock, LabelSelector, NetworkPolicy, Operator, Peer, Pod,
    PolicyPort, PortSpec, Protocol, Rule, Subject, Tier, TierPeer, TierRule,
};
use podfence_datapath::Prefix;

/// One side of a connection attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side<'a> {
    /// A pod, using the address `ip`. A pod that is not a policy endpoint
    /// (host network, finished, no address of its own) counts as its
    /// address only.
    Pod(&'a Pod, IpAddr),
    /// An address that belongs to no pod.
    Outside(IpAddr),
}

impl<'a> Side<'a> {
    /// The address the packet carries for this side.
    pub(crate) fn ip(&self) -> IpAddr {
        match *self {
            Side::Pod(_, ip) | Side::Outside(ip) => ip,
        }
    }

    /// The pod, if this side is a pod that policy applies to.
    pub(crate) fn endpoint(&self) -> Option<&'a Pod> {
        match *self {
            Side::Pod(pod, _) if is_endpoint(pod) => Some(pod),
            _ => None,
        }
    }
}

/// Whether policy applies to `pod`: it has addresses of its own, does not
/// use the host network and has not finished.
pub(crate) fn is_endpoint(pod: &Pod) -> bool {
    use podfence_control::model::PodPhase;
    let finished = pod.phase == PodPhase::Succeeded || pod.phase == PodPhase::Failed;
    !pod.host_network && !pod.ips.is_empty() && !finished
}

/// Whether the connection attempt from `src` to `dst` on `protocol`/`port`
/// is allowed: the source's egress and the destination's ingress must both
/// allow it, a pod may always reach itself, and the node a pod runs on may
/// always connect to it (the pod's connections to its node are subject to
/// its egress policy).
pub(crate) fn allowed(
    cluster: &Cluster,
    src: &Side<'_>,
    dst: &Side<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    if is_self_traffic(src, dst) || is_from_own_node(src, dst) {
        return true;
    }
    egress_allowed(cluster, src, dst, protocol, port)
        && ingress_allowed(cluster, src, dst, protocol, port)
}

/// Whether `src` is an address of the node the pod `dst` runs on (its
/// `status.hostIPs`), not some pod's own address.
pub(crate) fn is_from_own_node(src: &Side<'_>, dst: &Side<'_>) -> bool {
    dst.endpoint()
        .is_some_and(|p| src.endpoint().is_none() && p.host_ips.contains(&src.ip()))
}

/// Whether one side is a pod and the other an address of the node it runs
/// on, in either direction.
pub(crate) fn is_own_node_traffic(src: &Side<'_>, dst: &Side<'_>) -> bool {
    let node_of = |pod: &Pod, other: &Side<'_>| {
        other.endpoint().is_none() && pod.host_ips.contains(&other.ip())
    };
    src.endpoint().is_some_and(|p| node_of(p, dst))
        || dst.endpoint().is_some_and(|p| node_of(p, src))
}

/// Whether `src` and `dst` are the same pod (on any of its addresses).
pub(crate) fn is_self_traffic(src: &Side<'_>, dst: &Side<'_>) -> bool {
    match (src.endpoint(), dst.endpoint()) {
        (Some(a), Some(b)) => a.namespace == b.namespace && a.name == b.name,
        _ => false,
    }
}

/// The policies in `pod`'s namespace whose podSelector selects it.
fn selecting<'c>(cluster: &'c Cluster, pod: &Pod) -> Vec<&'c NetworkPolicy> {
    let mut out = Vec::new();
    for policy in cluster.policies.values() {
        if policy.namespace == pod.namespace && selector_matches(&policy.pod_selector, &pod.labels)
        {
            out.push(policy.as_ref());
        }
    }
    out
}

/// Whether `pod` is isolated for ingress.
pub(crate) fn isolated_for_ingress(cluster: &Cluster, pod: &Pod) -> bool {
    is_endpoint(pod) && selecting(cluster, pod).iter().any(|p| p.isolates_ingress)
}

/// Whether `pod` is isolated for egress.
pub(crate) fn isolated_for_egress(cluster: &Cluster, pod: &Pod) -> bool {
    is_endpoint(pod) && selecting(cluster, pod).iter().any(|p| p.isolates_egress)
}

/// The egress half: whether the source side lets the packet out.
pub(crate) fn egress_allowed(
    cluster: &Cluster,
    src: &Side<'_>,
    dst: &Side<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(pod) = src.endpoint() else {
        return true;
    };
    match tier_action(cluster, Tier::Admin, pod, dst, false, protocol, port) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    if !isolated_for_egress(cluster, pod) {
        return tier_action(cluster, Tier::Baseline, pod, dst, false, protocol, port)
            != Some(Action::Deny);
    }
    for policy in selecting(cluster, pod) {
        if !policy.isolates_egress {
            continue;
        }
        for rule in &policy.egress {
            if egress_rule_allows(cluster, policy, rule, dst, protocol, port) {
                return true;
            }
        }
    }
    false
}

/// The ingress half: whether the destination side lets the packet in.
pub(crate) fn ingress_allowed(
    cluster: &Cluster,
    src: &Side<'_>,
    dst: &Side<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(pod) = dst.endpoint() else {
        return true;
    };
    match tier_action(cluster, Tier::Admin, pod, src, true, protocol, port) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    if !isolated_for_ingress(cluster, pod) {
        return tier_action(cluster, Tier::Baseline, pod, src, true, protocol, port)
            != Some(Action::Deny);
    }
    for policy in selecting(cluster, pod) {
        if !policy.isolates_ingress {
            continue;
        }
        for rule in &policy.ingress {
            if ingress_rule_allows(cluster, policy, rule, src, pod, protocol, port) {
                return true;
            }
        }
    }
    false
}

/// The action of the first rule of `tier` that matches, for `pod`'s
/// ingress (`peer` is the source) or egress (`peer` is the destination):
/// policies whose subject selects `pod`, by priority then name, each
/// policy's rules in order.
fn tier_action(
    cluster: &Cluster,
    tier: Tier,
    pod: &Pod,
    peer: &Side<'_>,
    ingress: bool,
    protocol: Protocol,
    port: u16,
) -> Option<Action> {
    let mut policies: Vec<&ClusterNetworkPolicy> = cluster
        .cluster_policies
        .values()
        .map(AsRef::as_ref)
        .filter(|p| p.tier == tier && subject_selects(cluster, &p.subject, pod))
        .collect();
    policies.sort_by(|a, b| (a.priority, &a.name, a.api).cmp(&(b.priority, &b.name, b.api)));
    for policy in policies {
        let rules = if ingress {
            &policy.ingress
        } else {
            &policy.egress
        };
        for rule in rules {
            if tier_rule_matches(cluster, rule, pod, peer, ingress, protocol, port) {
                return Some(rule.action);
            }
        }
    }
    None
}

fn subject_selects(cluster: &Cluster, subject: &Subject, pod: &Pod) -> bool {
    let ns_labels = cluster.namespace_labels(&pod.namespace);
    match subject {
        Subject::Namespaces(ns) => selector_matches(ns, &ns_labels),
        Subject::Pods { namespaces, pods } => {
            selector_matches(namespaces, &ns_labels) && selector_matches(pods, &pod.labels)
        }
    }
}

/// Whether a tier rule matches: a peer matches, and a port (named ports
/// resolve on the protected pod for ingress, on the destination pod for
/// egress when a pod peer matched it).
fn tier_rule_matches(
    cluster: &Cluster,
    rule: &TierRule,
    protected: &Pod,
    peer: &Side<'_>,
    ingress: bool,
    protocol: Protocol,
    port: u16,
) -> bool {
    // A peer of an unknown kind fails closed: a Deny or Pass rule becomes
    // "deny (or pass) everything"; an Accept rule matches nothing by it.
    if rule.action != Action::Accept && rule.peers.contains(&TierPeer::Unknown) {
        return true;
    }
    let mut via_pods = false;
    let mut any = false;
    for p in &rule.peers {
        let (matched, is_pods) = match p {
            TierPeer::Namespaces(ns) => (
                peer.endpoint().is_some_and(|pod| {
                    selector_matches(ns, &cluster.namespace_labels(&pod.namespace))
                }),
                true,
            ),
            TierPeer::Pods { namespaces, pods } => (
                peer.endpoint().is_some_and(|pod| {
                    selector_matches(namespaces, &cluster.namespace_labels(&pod.namespace))
                        && selector_matches(pods, &pod.labels)
                }),
                true,
            ),
            TierPeer::Networks(cidrs) => {
                (cidrs.iter().any(|c| prefix_contains(c, peer.ip())), false)
            }
            TierPeer::Nodes(sel) => (
                cluster
                    .nodes
                    .values()
                    .any(|n| selector_matches(sel, &n.labels) && n.addresses.contains(&peer.ip())),
                false,
            ),
            // Not enforced; an unknown kind was handled above.
            TierPeer::DomainNames(_) | TierPeer::Unknown => (false, false),
        };
        any |= matched;
        via_pods |= matched && is_pods;
    }
    let named_from = if ingress {
        Some(protected)
    } else if via_pods {
        peer.endpoint()
    } else {
        None
    };
    any && ports_match(&rule.ports, protocol, port, named_from)
}

/// An ingress rule of `policy` (which selects `protected`) admits `peer`:
/// the peer matches the rule's `from`, and the port its `ports`, with named
/// ports resolved on the protected pod.
fn ingress_rule_allows(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    rule: &Rule,
    peer: &Side<'_>,
    protected: &Pod,
    protocol: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, policy, p, peer));
    peer_ok && ports_match(&rule.ports, protocol, port, Some(protected))
}

/// An egress rule of `policy` admits `dst`: the destination matches the
/// rule's `to`, and the port its `ports`. Named ports resolve on the
/// destination pod, and only when the destination is a pod that the rule
/// admits through a pod peer or through an empty peer list (never through
/// an ipBlock alone, never for an outside address).
fn egress_rule_allows(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    rule: &Rule,
    dst: &Side<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let via_selector = if rule.peers.is_empty() {
        dst.endpoint().is_some()
    } else {
        rule.peers
            .iter()
            .any(|p| matches!(p, Peer::Pods { .. }) && peer_matches(cluster, policy, p, dst))
    };
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(cluster, policy, p, dst));
    let named_from = if via_selector { dst.endpoint() } else { None };
    peer_ok && ports_match(&rule.ports, protocol, port, named_from)
}

/// Whether one element of a `from`/`to` list matches a side.
fn peer_matches(cluster: &Cluster, policy: &NetworkPolicy, peer: &Peer, side: &Side<'_>) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            // Selectors only ever match pods that policy applies to.
            let Some(pod) = side.endpoint() else {
                return false;
            };
            let namespace_ok = match namespaces {
                None => pod.namespace == policy.namespace,
                Some(ns) => selector_matches(ns, &cluster.namespace_labels(&pod.namespace)),
            };
            namespace_ok && selector_matches(pods, &pod.labels)
        }
        // ipBlocks match addresses, whoever owns them.
        Peer::IpBlock(block) => block_contains(block, side.ip()),
    }
}

/// Whether a rule's `ports` list admits `protocol`/`port`; `named_from` is
/// the pod whose named ports a named entry resolves on (`None`: named
/// entries match nothing).
fn ports_match(
    ports: &[PolicyPort],
    protocol: Protocol,
    port: u16,
    named_from: Option<&Pod>,
) -> bool {
    if ports.is_empty() {
        return true;
    }
    for p in ports {
        if p.protocol != protocol {
            continue;
        }
        let ok = match &p.port {
            PortSpec::Any => true,
            PortSpec::Range(first, last) => *first <= port && port <= *last,
            PortSpec::Named(name) => named_from.is_some_and(|pod| {
                pod.named_ports
                    .iter()
                    .any(|np| np.name == *name && np.protocol == protocol && np.port == port)
            }),
        };
        if ok {
            return true;
        }
    }
    false
}

/// Label selector semantics: every matchLabels pair is present with that
/// value, and every requirement holds (NotIn and DoesNotExist hold when the
/// key is absent).
pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    for (key, value) in &selector.match_labels {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    for r in &selector.match_expressions {
        let value = labels.get(&r.key);
        let holds = match r.operator {
            Operator::In => match value {
                Some(v) => r.values.contains(v),
                None => false,
            },
            Operator::NotIn => match value {
                Some(v) => !r.values.contains(v),
                None => true,
            },
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        };
        if !holds {
            return false;
        }
    }
    true
}

/// Whether `ip` is in the block's cidr and in none of its excepts.
pub(crate) fn block_contains(block: &IpBlock, ip: IpAddr) -> bool {
    prefix_contains(&block.cidr, ip) && !block.except.iter().any(|e| prefix_contains(e, ip))
}

/// CIDR membership, by comparing the leading bits; families never mix.
fn prefix_contains(prefix: &Prefix, ip: IpAddr) -> bool {
    let bits = u32::from(prefix.prefix_len());
    match (prefix.network(), ip) {
        (IpAddr::V4(net), IpAddr::V4(a)) => {
            let (net, a) = (u32::from(net), u32::from(a));
            bits == 0 || (net >> (32 - bits)) == (a >> (32 - bits))
        }
        (IpAddr::V6(net), IpAddr::V6(a)) => {
            let (net, a) = (u128::from(net), u128::from(a));
            bits == 0 || (net >> (128 - bits)) == (a >> (128 - bits))
        }
        _ => false,
    }
}
