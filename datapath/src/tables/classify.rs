//! Classifying a new connection: each address to its peer identity, then
//! for each isolated side one lookup of `(policy group, identity)` and a bit
//! test per broad peer set of the group, each a first match in a port set.
//! Also the read-only accessors that explain a decision.

use std::net::IpAddr;
use std::sync::Arc;

use super::{
    BroadSetId, Decision, Direction, Enforcement, GroupId, GroupTables, IdentityId, IpProtocol,
    NO_NODE, NodeId, ObjectName, Passed, PodAddress, PodEntry, PodId, PolicyId, PortRule,
    PortSetId, ResolvedPeer, RuleAction, TableStats, Tables, TablesBuilder, Tier, TierPolicyInfo,
    TierRule, Verdict, allow_key,
};
use crate::lpm::IntervalMap;

impl Tables {
    /// Tables that enforce nothing: every address is one outside identity.
    #[must_use]
    pub fn empty(generation: u64) -> Self {
        let mut b = TablesBuilder::new(generation);
        let world = b.add_identity();
        b.set_other_addresses_v4(IntervalMap::from_prefixes([], world));
        b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
        b.build()
    }

    /// The generation number given by the builder.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Resolves an IPv4 address (host order).
    #[inline]
    #[must_use]
    pub fn peer_v4(&self, addr: u32) -> ResolvedPeer {
        match self.pods_v4.get(&addr) {
            Some(p) => ResolvedPeer {
                identity: p.identity,
                pod: Some(self.unpack(p)),
                node: None,
            },
            None => ResolvedPeer {
                identity: self.others_v4.get(addr),
                pod: None,
                node: self.nodes_v4.get(&addr).copied(),
            },
        }
    }

    /// Resolves an IPv6 address (host order).
    #[inline]
    #[must_use]
    pub fn peer_v6(&self, addr: u128) -> ResolvedPeer {
        match self.pods_v6.get(&addr) {
            Some(p) => ResolvedPeer {
                identity: p.identity,
                pod: Some(self.unpack(p)),
                node: None,
            },
            None => ResolvedPeer {
                identity: self.others_v6.get(addr),
                pod: None,
                node: self.nodes_v6.get(&addr).copied(),
            },
        }
    }

    #[inline]
    fn unpack(&self, p: &PodEntry) -> PodAddress {
        PodAddress {
            identity: p.identity,
            pod: p.pod,
            egress: Enforcement::unpack(p.egress),
            ingress: Enforcement::unpack(p.ingress),
            node: (p.node != NO_NODE).then_some(NodeId(p.node)),
            tiers: self.tier_groups[p.tiers as usize],
        }
    }

    /// Resolves an address of either family.
    #[must_use]
    pub fn peer(&self, addr: IpAddr) -> ResolvedPeer {
        match addr {
            IpAddr::V4(a) => self.peer_v4(u32::from(a)),
            IpAddr::V6(a) => self.peer_v6(u128::from(a)),
        }
    }

    /// Classifies the first packet of an IPv4 connection.
    #[inline]
    #[must_use]
    pub fn classify_v4(&self, src: u32, dst: u32, protocol: IpProtocol, dst_port: u16) -> Verdict {
        self.decide(self.peer_v4(src), self.peer_v4(dst), protocol, dst_port)
    }

    /// Classifies the first packet of an IPv6 connection.
    #[inline]
    #[must_use]
    pub fn classify_v6(
        &self,
        src: u128,
        dst: u128,
        protocol: IpProtocol,
        dst_port: u16,
    ) -> Verdict {
        self.decide(self.peer_v6(src), self.peer_v6(dst), protocol, dst_port)
    }

    /// Classifies the first packet of a connection from `src` to
    /// `dst:dst_port`. Addresses of different families share no policy state
    /// and are classified each on its own.
    #[must_use]
    pub fn classify(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: IpProtocol,
        dst_port: u16,
    ) -> Verdict {
        self.decide(self.peer(src), self.peer(dst), protocol, dst_port)
    }

    /// The decision for two resolved peers.
    #[inline]
    #[must_use]
    pub fn decide(
        &self,
        src: ResolvedPeer,
        dst: ResolvedPeer,
        protocol: IpProtocol,
        dst_port: u16,
    ) -> Verdict {
        if let (Some(s), Some(d)) = (src.pod, dst.pod)
            && s.pod == d.pod
        {
            return Verdict {
                egress: Decision::SelfTraffic,
                ingress: Decision::SelfTraffic,
                passed: Passed::NONE,
            };
        }
        if src.node.is_some() && src.node == dst.pod.and_then(|p| p.node) {
            return Verdict {
                egress: Decision::NotEnforced,
                ingress: Decision::OwnNode,
                passed: Passed::NONE,
            };
        }
        let (egress, egress_pass) =
            self.side(src.pod, Direction::Egress, dst.identity, protocol, dst_port);
        let (ingress, ingress_pass) = self.side(
            dst.pod,
            Direction::Ingress,
            src.identity,
            protocol,
            dst_port,
        );
        Verdict {
            egress,
            ingress,
            passed: Passed {
                egress: egress_pass,
                ingress: ingress_pass,
            },
        }
    }

    /// One side: the Admin tier, then NetworkPolicy, then the Baseline tier.
    /// At most three group lookups.
    #[inline]
    fn side(
        &self,
        pod: Option<PodAddress>,
        direction: Direction,
        peer: IdentityId,
        protocol: IpProtocol,
        port: u16,
    ) -> (Decision, Option<TierRule>) {
        let Some(pod) = pod else {
            return (Decision::NotEnforced, None);
        };
        let enforcement = match direction {
            Direction::Ingress => pod.ingress,
            Direction::Egress => pod.egress,
        };
        let tiers = pod.tiers;
        let tier_decision = |tier: Tier, group: Option<GroupId>| {
            let hit = self.first_match(group?, peer, protocol, port)?;
            let rule = TierRule {
                tier,
                policy: hit.policy,
                rule: hit.rule,
            };
            Some(match hit.action {
                RuleAction::Allow => Ok(Decision::TierAccepted(rule)),
                RuleAction::Deny if tiers.audited => Ok(Decision::TierWouldDeny(rule)),
                RuleAction::Deny => Ok(Decision::TierDenied(rule)),
                RuleAction::Pass => Err(rule),
            })
        };
        let mut passed = None;
        match tier_decision(Tier::Admin, tiers.get(Tier::Admin, direction)) {
            Some(Ok(decision)) => return (decision, None),
            Some(Err(pass)) => passed = Some(pass),
            None => {}
        }
        let decision = match enforcement {
            Enforcement::Remote => Decision::NotEnforced,
            Enforcement::Open => {
                match tier_decision(Tier::Baseline, tiers.get(Tier::Baseline, direction)) {
                    Some(Ok(decision)) => decision,
                    Some(Err(_)) | None => Decision::NotIsolated,
                }
            }
            Enforcement::Isolated(g) => self.check(g, peer, protocol, port),
            Enforcement::Audited(g) => match self.check(g, peer, protocol, port) {
                Decision::Denied { group } => Decision::WouldDeny { group },
                allowed => allowed,
            },
        };
        (decision, passed)
    }

    /// The first rule of `group` (lowest policy, then rule) that matches:
    /// of its entry for `peer` and of each broad set of the group that
    /// `peer` is in (one per set), the lowest.
    #[inline]
    fn first_match(
        &self,
        group: GroupId,
        peer: IdentityId,
        protocol: IpProtocol,
        port: u16,
    ) -> Option<PortRule> {
        let g = &*self.groups;
        let first_match = |set: PortSetId| {
            g.port_matchers[set.index()].first(&g.port_rules, &g.port_segments, protocol, port)
        };
        let mut best = g
            .allow
            .get(&allow_key(group, peer))
            .and_then(|s| first_match(*s));
        for &(broad, set) in self.broad_rules(group) {
            if self.is_member(peer, broad)
                && let Some(m) = first_match(set)
                && best.is_none_or(|b| (m.policy, m.rule) < (b.policy, b.rule))
            {
                best = Some(m);
            }
        }
        best
    }

    #[inline]
    fn check(&self, group: GroupId, peer: IdentityId, protocol: IpProtocol, port: u16) -> Decision {
        match self.first_match(group, peer, protocol, port) {
            Some(r) => Decision::Allowed {
                policy: r.policy,
                rule: r.rule,
            },
            None => Decision::Denied { group },
        }
    }

    #[inline]
    fn is_member(&self, identity: IdentityId, set: BroadSetId) -> bool {
        let g = &*self.groups;
        let word = identity.index() * g.broad_words as usize + set.index() / 64;
        (g.identity_broad[word] >> (set.0 % 64)) & 1 == 1
    }

    /// The broad rules of a group: `(peer set, port set)` pairs.
    #[must_use]
    pub fn broad_rules(&self, group: GroupId) -> &[(BroadSetId, PortSetId)] {
        let g = &*self.groups;
        let (start, len) = g.group_broad[group.index()];
        &g.broad_rules[start as usize..(start + len) as usize]
    }

    /// The rules of a port set, in attribution order.
    #[must_use]
    pub fn port_set(&self, set: PortSetId) -> &[PortRule] {
        self.groups.port_set(set)
    }

    /// The port set that `group` grants to `peer`, if any.
    #[must_use]
    pub fn allowed_ports(&self, group: GroupId, peer: IdentityId) -> Option<&[PortRule]> {
        self.groups
            .allow
            .get(&allow_key(group, peer))
            .map(|s| self.port_set(*s))
    }

    /// The names of a group's policies, in table order: what isolates its
    /// pods in its direction.
    pub fn group_policy_names(&self, group: GroupId) -> impl Iterator<Item = &ObjectName> {
        self.group(group).1.iter().map(|&p| self.policy(p))
    }

    /// The direction and the policies of a group, in table order.
    #[must_use]
    pub fn group(&self, group: GroupId) -> (Direction, &[PolicyId]) {
        let g = &*self.groups;
        let (dir, start, len) = g.groups[group.index()];
        (
            dir,
            &g.group_policies[start as usize..(start + len) as usize],
        )
    }

    /// A policy's namespace and name.
    #[must_use]
    pub fn policy(&self, policy: PolicyId) -> &ObjectName {
        &self.policies[policy.index()]
    }

    /// What attribution shows of a tier policy, if `policy` is one.
    #[must_use]
    pub fn tier_info(&self, policy: PolicyId) -> Option<&TierPolicyInfo> {
        let i = policy.0.checked_sub(self.tier_base)?;
        self.tier_info.get(i as usize)
    }

    /// The name of a tier rule (empty when it has none or is unknown).
    #[must_use]
    pub fn tier_rule_name(&self, rule: TierRule, direction: Direction) -> &str {
        self.tier_info(rule.policy)
            .and_then(|i| {
                i.rule_names[super::direction_index(direction)].get(usize::from(rule.rule))
            })
            .map_or("", |n| n)
    }

    /// A pod's namespace and name.
    #[must_use]
    pub fn pod(&self, pod: PodId) -> &ObjectName {
        match pod.index().checked_sub(self.pods.len()) {
            None => &self.pods[pod.index()],
            Some(later) => &self.later_pods[later],
        }
    }

    /// The groups and what they allow, for a later generation that has
    /// the same ones ([`TablesBuilder::reuse_group_tables`]).
    #[must_use]
    pub fn group_tables(&self) -> &Arc<GroupTables> {
        &self.groups
    }

    /// Sizes, for reports.
    #[must_use]
    pub fn stats(&self) -> TableStats {
        let g = &*self.groups;
        TableStats {
            policies: self.policies.len(),
            pods: self.pods.len() + self.later_pods.len(),
            pod_addresses: self.pods_v4.len() + self.pods_v6.len(),
            identities: self.identities as usize,
            groups: g.groups.len(),
            allow_entries: g.allow.len(),
            broad_sets: g.broad_sets as usize,
            broad_rules: g.broad_rules.len(),
            port_sets: g.port_sets.len(),
            port_rules: g.port_rules.len(),
            prefix_intervals: self.others_v4.intervals() + self.others_v6.intervals(),
        }
    }
}
