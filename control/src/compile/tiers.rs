//! The cluster-scoped tiers: ClusterNetworkPolicies (and the older
//! AdminNetworkPolicies and BaselineAdminNetworkPolicies) in precedence
//! order, their rule peers resolved to the same selector peers and ipBlocks
//! as NetworkPolicy's (so that identities tell their peers apart too), and
//! the local endpoints each one's subject selects.
//!
//! `networks` peers are ipBlocks without holes; `nodes` peers are the
//! addresses of the nodes their selector matches, as one host-prefix block
//! each; `domainNames` peers match nothing.

use std::sync::Arc;

use podfence_datapath::Prefix;
use podfence_datapath::tables::{ObjectName, RuleAction, TierPolicyInfo};

use super::memo::{EndpointMemo, Interner};
use super::pass::Pass;
use super::peers::{PeerRef, SelectorPeer};
use crate::model::{
    Action, ClusterNetworkPolicy, IpBlock, LabelSelector, PolicyApi, PortSpec, Subject, TierPeer,
};

/// One tier policy of this compile, its rule peers resolved.
pub(super) struct TierPolicy<'a> {
    pub(super) policy: &'a Arc<ClusterNetworkPolicy>,
    /// `[direction][rule]` → the rule's peers (`None`: every peer, for a rule
    /// that fails closed).
    pub(super) rules: [Vec<Option<Vec<PeerRef>>>; 2],
    /// Whether ingress / egress rules use named ports.
    pub(super) named: [bool; 2],
}

impl TierPolicy<'_> {
    /// Its name in the tables: its kind in place of a namespace.
    pub(super) fn table_name(&self) -> ObjectName {
        ObjectName {
            namespace: self.policy.api.kind().into(),
            name: self.policy.name.as_str().into(),
        }
    }
}

/// What the tables keep of each tier policy for attribution.
pub(super) fn tier_info(tiers: &[TierPolicy<'_>]) -> Arc<[TierPolicyInfo]> {
    tiers
        .iter()
        .map(|t| {
            let names = |ingress: bool| {
                t.policy
                    .rules(ingress)
                    .iter()
                    .map(|r| r.name.as_str().into())
                    .collect()
            };
            TierPolicyInfo {
                priority: (t.policy.api != PolicyApi::BaselineAdmin).then_some(t.policy.priority),
                rule_names: [names(true), names(false)],
            }
        })
        .collect()
}

/// The tables' action of a rule.
pub(super) fn rule_action(action: Action) -> RuleAction {
    match action {
        Action::Accept => RuleAction::Allow,
        Action::Deny => RuleAction::Deny,
        Action::Pass => RuleAction::Pass,
    }
}

impl<'a> Pass<'a> {
    /// The cluster's tier policies in precedence order (Admin by priority,
    /// then name; then Baseline alike), their peers interned; and the
    /// notices about them: equal priorities, parts not enforced.
    pub(super) fn resolve_tiers(
        &self,
        selectors: &mut Interner<SelectorPeer>,
        blocks: &mut Interner<IpBlock>,
    ) -> (Vec<TierPolicy<'a>>, Vec<String>) {
        let cluster = self.cluster;
        let mut ordered: Vec<&Arc<ClusterNetworkPolicy>> =
            cluster.cluster_policies.values().collect();
        ordered.sort_by_cached_key(|p| p.precedence());
        let mut notices = Vec::new();
        for pair in ordered.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.tier == b.tier && a.priority == b.priority {
                notices.push(format!(
                    "{} and {} share priority {} in the {} tier: {} goes first (by name)",
                    a.key(),
                    b.key(),
                    a.priority,
                    a.tier,
                    a.key(),
                ));
            }
        }
        for p in &ordered {
            if !p.unsupported.is_empty() {
                notices.push(format!(
                    "{}: partly unsupported: {} not enforced (the rule's peers there match nothing)",
                    p.key(),
                    p.unsupported.join(", ")
                ));
            }
        }
        let resolved = ordered
            .into_iter()
            .map(|policy| {
                let mut rules: [Vec<Option<Vec<PeerRef>>>; 2] = [Vec::new(), Vec::new()];
                for (d, list) in [&policy.ingress, &policy.egress].into_iter().enumerate() {
                    for rule in list {
                        // A peer of an unknown kind fails closed: a Deny or
                        // Pass rule matches everything (every peer, every
                        // port); an Accept rule nothing by it.
                        let fails_closed = rule.action != Action::Accept
                            && rule.peers.contains(&TierPeer::Unknown);
                        if fails_closed {
                            rules[d].push(None);
                            continue;
                        }
                        let mut peers = Vec::new();
                        for peer in &rule.peers {
                            self.resolve_peer(peer, selectors, blocks, &mut peers);
                        }
                        rules[d].push(Some(peers));
                    }
                }
                let named = |d: bool| {
                    policy
                        .rules(d)
                        .iter()
                        .any(|r| r.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_))))
                };
                TierPolicy {
                    policy,
                    rules,
                    named: [named(true), named(false)],
                }
            })
            .collect();
        (resolved, notices)
    }

    fn resolve_peer(
        &self,
        peer: &TierPeer,
        selectors: &mut Interner<SelectorPeer>,
        blocks: &mut Interner<IpBlock>,
        out: &mut Vec<PeerRef>,
    ) {
        let block = |cidr: Prefix, blocks: &mut Interner<IpBlock>| {
            PeerRef::Block(blocks.intern(IpBlock {
                cidr,
                except: Vec::new(),
            }))
        };
        match peer {
            TierPeer::Namespaces(ns) => out.push(PeerRef::Selector(selectors.intern(
                SelectorPeer::InNamespaces(ns.clone(), LabelSelector::default()),
            ))),
            TierPeer::Pods { namespaces, pods } => out.push(PeerRef::Selector(
                selectors.intern(SelectorPeer::InNamespaces(namespaces.clone(), pods.clone())),
            )),
            TierPeer::Networks(cidrs) => {
                out.extend(cidrs.iter().map(|&c| block(c, blocks)));
            }
            TierPeer::Nodes(selector) => {
                for node in self.cluster.nodes.values() {
                    if selector.matches(&node.labels) {
                        out.extend(
                            node.addresses
                                .iter()
                                .map(|&a| block(Prefix::host(a), blocks)),
                        );
                    }
                }
            }
            TierPeer::DomainNames(_) | TierPeer::Unknown => {}
        }
    }

    /// Per endpoint, the tier policies (indices into `tiers`, ascending)
    /// whose subject selects it; only local endpoints.
    pub(super) fn tier_subjects(
        &self,
        tiers: &[TierPolicy<'_>],
        endpoints: &[EndpointMemo],
    ) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.endpoints.len()];
        let mut selected = Vec::new();
        let every_pod = LabelSelector::default();
        for (t, tier) in tiers.iter().enumerate() {
            let (ns_selector, pods) = match &tier.policy.subject {
                Subject::Namespaces(ns) => (ns, None),
                Subject::Pods { namespaces, pods } => (namespaces, Some(pods)),
            };
            selected.clear();
            for ns in self.cluster.namespaces.values() {
                if ns_selector.matches(&ns.labels) {
                    self.select_in(&ns.name, pods.unwrap_or(&every_pod), &mut selected);
                }
            }
            for &e in &selected {
                if endpoints[e as usize].local {
                    out[e as usize].push(t as u32);
                }
            }
        }
        out
    }
}
