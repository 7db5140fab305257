//! Compiled policy tables and the classifier of new connections.
//!
//! The split is DPDK `rte_acl`'s: everything expensive (selector matching,
//! `except` holes, named ports, the union of policies) happens once in
//! [`TablesBuilder`], off the hot path, and [`Tables::classify`] does a fixed
//! handful of lookups whatever the number of policies:
//!
//! 1. each address to its *peer identity*: pod addresses by exact match in a
//!    hash map, every other address by longest prefix over the `ipBlock`s
//!    ([`IntervalMap`]); a pod address also yields the pod's enforcement
//!    state in each direction;
//! 2. for each isolated side, one hash lookup of `(policy group, peer
//!    identity)` to a set of protocol/port ranges, plus a bit test per
//!    *broad* peer set of the group; each set's first match is a scan of a
//!    few rules or a search of segments built for it (`ports`).
//!
//! A *policy group* is the set of policies that select a local pod in one
//! direction; pods selected by the same policies (and, where named ports are
//! involved, exposing the same ports) share it. An *identity* is a class of
//! addresses no rule can tell apart. Both are chosen by the compiler; the
//! tables only store them. A `Tables` value is immutable once built: a new
//! policy state is a new value, swapped in whole.
//!
//! Rules whose peers are a large share of all identities (an `ipBlock` that
//! covers the pod network, a `namespaceSelector` that matches most
//! namespaces) would multiply into an entry for every identity in every
//! group that has them. Such a peer set is stored once instead, as a bit in
//! each member identity's *broad-set* bitmap, and the group keeps a short
//! list of `(broad set, port set)` pairs, one per broad set (the builder
//! merges the port sets of the group's rules that share a peer set).
//!
//! This module holds the types; `classify` the lookups of
//! [`Tables::classify`] and the accessors that explain a decision;
//! `builder` the [`TablesBuilder`].

use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::lpm::IntervalMap;

mod builder;
mod classify;
mod ports;

pub use crate::wire::IpProtocol;
pub use builder::{BuildError, TablesBuilder};

/// `[ingress, egress]` index of a direction.
#[must_use]
pub fn direction_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Direction of a policy check, seen from the pod being protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic into the pod.
    Ingress,
    /// Traffic out of the pod.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// Position in the tables' arrays.
            #[must_use]
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}
id_type!(
    /// A policy in the tables, for attribution.
    PolicyId
);
id_type!(
    /// A node, known by the addresses its pods report as their host's.
    NodeId
);
id_type!(
    /// A pod known to the tables, local or remote.
    PodId
);
id_type!(
    /// A class of addresses that every rule treats alike.
    IdentityId
);
id_type!(
    /// The set of policies that select a local pod in one direction.
    GroupId
);
id_type!(
    /// An interned set of port rules.
    PortSetId
);
id_type!(
    /// A large peer set stored as one bit per member identity.
    BroadSetId
);

/// Whether and how one direction of a pod is enforced on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enforcement {
    /// The pod is not on this node: its own node enforces this direction.
    Remote,
    /// Local, and no policy isolates it in this direction.
    Open,
    /// Local and isolated: only what the group allows passes.
    Isolated(GroupId),
    /// Local and isolated in audit mode: decided as [`Self::Isolated`], but
    /// what the group does not allow passes too, reported as
    /// [`Decision::WouldDeny`].
    Audited(GroupId),
}

/// A cluster-scoped policy tier (ClusterNetworkPolicy `spec.tier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Decided before NetworkPolicy.
    Admin,
    /// Decided after NetworkPolicy, for pods no NetworkPolicy isolates.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Admin => "admin",
            Self::Baseline => "baseline",
        })
    }
}

/// The tier groups of a local pod: per tier and direction, the group of
/// that tier's policies that select it, if any. Kept as four `u32`s
/// (`u32::MAX`: none) so that a [`PodAddress`] stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierGroups {
    /// `[admin ingress, admin egress, baseline ingress, baseline egress]`.
    groups: [u32; 4],
    /// Whether a tier's denial only is reported ([`Decision::TierWouldDeny`]).
    pub audited: bool,
}

impl Default for TierGroups {
    fn default() -> Self {
        Self::NONE
    }
}

impl TierGroups {
    /// No tier policy selects the pod.
    pub const NONE: Self = Self {
        groups: [u32::MAX; 4],
        audited: false,
    };

    fn slot(tier: Tier, direction: Direction) -> usize {
        let t = match tier {
            Tier::Admin => 0,
            Tier::Baseline => 2,
        };
        t + direction_index(direction)
    }

    /// The group of `tier` for `direction`, if any.
    #[inline]
    #[must_use]
    pub fn get(&self, tier: Tier, direction: Direction) -> Option<GroupId> {
        let g = self.groups[Self::slot(tier, direction)];
        (g != u32::MAX).then_some(GroupId(g))
    }

    /// Sets the group of `tier` for `direction`.
    pub fn set(&mut self, tier: Tier, direction: Direction, group: GroupId) {
        self.groups[Self::slot(tier, direction)] = group.0;
    }
}

/// What a matching rule does. NetworkPolicy rules only allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleAction {
    /// Allowed (a tier's Accept: lower tiers are skipped).
    Allow,
    /// Denied.
    Deny,
    /// The rest of the tier is skipped.
    Pass,
}

/// A rule of a tier policy, for attribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierRule {
    /// The tier.
    pub tier: Tier,
    /// The policy (tier policies are numbered in precedence order).
    pub policy: PolicyId,
    /// The rule's index in the policy's ingress or egress list.
    pub rule: u16,
}

/// What attribution shows of a tier policy beyond its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TierPolicyInfo {
    /// Its priority (`None`: a BaselineAdminNetworkPolicy, which has none).
    pub priority: Option<u32>,
    /// Its rules' names, `[ingress, egress]`, in rule order.
    pub rule_names: [Box<[Box<str>]>; 2],
}

/// What the tables know about one pod address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodAddress {
    /// The pod's identity as a peer.
    pub identity: IdentityId,
    /// The pod, for self-traffic and attribution.
    pub pod: PodId,
    /// Its enforcement for traffic it sends.
    pub egress: Enforcement,
    /// Its enforcement for traffic it receives.
    pub ingress: Enforcement,
    /// The node it runs on, if its addresses are known: traffic between a
    /// pod and its node is always allowed.
    pub node: Option<NodeId>,
    /// Its cluster-scoped tier groups (local pods only).
    pub tiers: TierGroups,
}

/// A [`PodAddress`] as the address maps hold it: 24 bytes where the struct
/// takes 52, so that a node's pod entries take fewer cache lines. Unpacked
/// by [`Tables::peer_v4`] and [`Tables::peer_v6`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PodEntry {
    identity: IdentityId,
    pod: PodId,
    egress: u32,
    ingress: u32,
    /// [`NO_NODE`]: none.
    node: u32,
    /// Index into [`Tables::tier_groups`] (0: [`TierGroups::NONE`]).
    tiers: u32,
}

const NO_NODE: u32 = u32::MAX;
/// An [`Enforcement`] in a `u32`: its kind in the top two bits, its group
/// below (2^30 groups would take more than 12 GiB of tables).
const ENFORCEMENT_KIND: u32 = 30;
const GROUP_MASK: u32 = (1 << ENFORCEMENT_KIND) - 1;

impl Enforcement {
    fn pack(self) -> u32 {
        let (kind, group) = match self {
            Self::Remote => (0, 0),
            Self::Open => (1, 0),
            Self::Isolated(g) => (2, g.0),
            Self::Audited(g) => (3, g.0),
        };
        (kind << ENFORCEMENT_KIND) | (group & GROUP_MASK)
    }

    #[inline]
    fn unpack(packed: u32) -> Self {
        let group = GroupId(packed & GROUP_MASK);
        match packed >> ENFORCEMENT_KIND {
            0 => Self::Remote,
            1 => Self::Open,
            2 => Self::Isolated(group),
            _ => Self::Audited(group),
        }
    }
}

/// IpProtocol number in a [`PortRule`] that matches every protocol and port.
pub const ANY_PROTOCOL: u8 = 0;

/// One allowed protocol and port range, with the rule that allowed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// The policy the rule belongs to (ordering key: first policy wins).
    pub policy: PolicyId,
    /// Index of the rule in the policy's ingress or egress list.
    pub rule: u16,
    /// IP protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u8,
    /// First allowed destination port.
    pub first: u16,
    /// Last allowed destination port (inclusive).
    pub last: u16,
    /// What the rule does when it matches.
    pub action: RuleAction,
}

impl PortRule {
    /// Every protocol, every port (a rule without `ports`).
    #[must_use]
    pub fn any(policy: PolicyId, rule: u16) -> Self {
        Self {
            policy,
            rule,
            protocol: ANY_PROTOCOL,
            first: 0,
            last: u16::MAX,
            action: RuleAction::Allow,
        }
    }

    #[inline]
    fn matches(&self, protocol: IpProtocol, port: u16) -> bool {
        self.protocol == ANY_PROTOCOL
            || (self.protocol == protocol.0 && self.first <= port && port <= self.last)
    }
}

/// The decision for one direction of a connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Nothing on this side is a pod enforced here: an outside address, a
    /// host-network endpoint, or a pod on another node.
    NotEnforced,
    /// A local pod that no policy isolates in this direction.
    NotIsolated,
    /// A pod talking to itself, which no policy can block.
    SelfTraffic,
    /// The node a pod runs on connecting to the pod, which NetworkPolicy
    /// never blocks (ingress only: the pod's connections to its node are
    /// subject to its egress policy).
    OwnNode,
    /// Allowed by rule `rule` of `policy`'s list for this direction.
    Allowed {
        /// The first policy (in table order) whose rule matched.
        policy: PolicyId,
        /// The rule's index in that policy's ingress or egress list.
        rule: u16,
    },
    /// Isolated by the policies of `group` and no rule of theirs matched.
    Denied {
        /// The isolating policies.
        group: GroupId,
    },
    /// As [`Self::Denied`], but the pod is in audit mode: the attempt
    /// passes and is reported.
    WouldDeny {
        /// The isolating policies.
        group: GroupId,
    },
    /// Allowed by an Accept rule of a tier policy (an Admin Accept skips
    /// NetworkPolicy; a Baseline Accept applies where none isolates).
    TierAccepted(TierRule),
    /// Denied by a Deny rule of a tier policy.
    TierDenied(TierRule),
    /// As [`Self::TierDenied`], but the pod is in audit mode: the attempt
    /// passes and is reported.
    TierWouldDeny(TierRule),
}

impl Decision {
    /// Whether this side lets the connection through.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. } | Self::TierDenied(_))
    }

    /// Whether policy denies it, enforced or audited.
    #[must_use]
    pub fn is_policy_denial(&self) -> bool {
        matches!(
            self,
            Self::Denied { .. }
                | Self::WouldDeny { .. }
                | Self::TierDenied(_)
                | Self::TierWouldDeny(_)
        )
    }
}

/// The verdict on a connection attempt: the source's egress and the
/// destination's ingress must both allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// The source pod's egress decision.
    pub egress: Decision,
    /// The destination pod's ingress decision.
    pub ingress: Decision,
    /// The Admin-tier Pass rules that handed each side on to
    /// NetworkPolicy (or, from the Baseline tier, to the default).
    pub passed: Passed,
}

/// The Pass rules a verdict went through, per side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Passed {
    /// The source's egress.
    pub egress: Option<TierRule>,
    /// The destination's ingress.
    pub ingress: Option<TierRule>,
}

impl Passed {
    /// No Pass rule matched.
    pub const NONE: Self = Self {
        egress: None,
        ingress: None,
    };
}

impl Verdict {
    /// Whether the connection may be opened.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.egress.is_allowed() && self.ingress.is_allowed()
    }
}

/// Namespace and name of a policy or pod, for attribution. A cluster-scoped
/// (tier) policy has its kind in place of a namespace:
/// `ClusterNetworkPolicy/name`. Shared, not copied, from one generation's
/// name list to the next (the control plane remakes a list when a pod
/// comes or goes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// Namespace (a tier policy: its kind).
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Sizes of a built table, for reports and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Policies.
    pub policies: usize,
    /// Pods (local and remote) with at least one address.
    pub pods: usize,
    /// Pod addresses.
    pub pod_addresses: usize,
    /// Peer identities.
    pub identities: usize,
    /// Policy groups.
    pub groups: usize,
    /// `(group, identity)` entries.
    pub allow_entries: usize,
    /// Broad peer sets.
    pub broad_sets: usize,
    /// `(group, broad set)` rules.
    pub broad_rules: usize,
    /// Distinct port sets.
    pub port_sets: usize,
    /// Port rules over all sets.
    pub port_rules: usize,
    /// Longest-prefix intervals, IPv4 plus IPv6.
    pub prefix_intervals: usize,
}

/// One immutable generation of compiled policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    generation: u64,
    pods_v4: FxHashMap<u32, PodEntry>,
    pods_v6: FxHashMap<u128, PodEntry>,
    /// The pods' distinct tier groups, [`TierGroups::NONE`] first.
    tier_groups: Vec<TierGroups>,
    nodes_v4: FxHashMap<u32, NodeId>,
    nodes_v6: FxHashMap<u128, NodeId>,
    others_v4: IntervalMap<u32, IdentityId>,
    others_v6: IntervalMap<u128, IdentityId>,
    /// The groups and what they allow; shared with the generation before
    /// when the compiler found them unchanged.
    groups: Arc<GroupTables>,
    policies: Arc<[ObjectName]>,
    /// Tier policies are `PolicyId(tier_base + i)` for `tier_info[i]`.
    tier_base: u32,
    tier_info: Arc<[TierPolicyInfo]>,
    pods: Arc<[ObjectName]>,
    /// Pods added after `pods` ([`Tables::with_pod`]): `PodId(pods.len() +
    /// i)` is `later_pods[i]`. Kept apart so that adding a pod does not
    /// copy every name.
    later_pods: Arc<[ObjectName]>,
    identities: u32,
}

/// The policy groups of one generation and what they allow: their
/// policies, the `(group, identity)` entries, the broad peer sets and
/// rules, and the port sets these name. It depends on the identities, the
/// groups and the policies only, not on which pod has which address, so a
/// generation that changes none of those (a new pod like an existing one)
/// shares it with the one before ([`TablesBuilder::reuse_group_tables`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupTables {
    allow: FxHashMap<u64, PortSetId>,
    port_sets: Vec<(u32, u32)>,
    port_rules: Vec<PortRule>,
    /// Per port set, its first match by segments (`ports`).
    port_matchers: Vec<ports::PortMatcher>,
    port_segments: Vec<ports::PortSegment>,
    groups: Vec<(Direction, u32, u32)>,
    group_policies: Vec<PolicyId>,
    /// Per group, a range of `broad_rules`: one per broad set, its port set
    /// the union of the group's rules for that peer set.
    group_broad: Vec<(u32, u32)>,
    broad_rules: Vec<(BroadSetId, PortSetId)>,
    /// `broad_words` words per identity: bit `b` is set iff the identity is a
    /// member of broad set `b`.
    identity_broad: Vec<u64>,
    broad_words: u32,
    broad_sets: u32,
}

impl GroupTables {
    /// The rules of a port set, in attribution order.
    fn port_set(&self, set: PortSetId) -> &[PortRule] {
        let (start, len) = self.port_sets[set.index()];
        &self.port_rules[start as usize..(start + len) as usize]
    }
}

/// An address resolved to what the tables know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedPeer {
    /// The address's identity.
    pub identity: IdentityId,
    /// The pod that owns the address, if any.
    pub pod: Option<PodAddress>,
    /// The node that owns the address, if it is no pod's but a node's.
    pub node: Option<NodeId>,
}

#[inline]
fn allow_key(group: GroupId, identity: IdentityId) -> u64 {
    (u64::from(group.0) << 32) | u64::from(identity.0)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::prefix::Cidr;
    use crate::wire::ip_proto;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Two local pods; `b` accepts TCP 80-81 from `a` only, `a` may reach
    /// anything in 192.0.2.0/24 except 192.0.2.128/25 on UDP 53.
    fn sample() -> Tables {
        sample_reusing(None)
    }

    /// [`sample`], its groups and what they allow taken from `reused` (a
    /// sample's) when given.
    fn sample_reusing(reused: Option<&Arc<GroupTables>>) -> Tables {
        let mut b = TablesBuilder::new(7);
        let web = b.add_policy("x", "web");
        let dns = b.add_policy("x", "dns");
        let (pa, pb) = (b.add_pod("x", "a"), b.add_pod("x", "b"));
        let (world, block, id_a, id_b) = (
            b.add_identity(),
            b.add_identity(),
            b.add_identity(),
            b.add_identity(),
        );
        let (gi, ge) = if reused.is_some() {
            (GroupId(0), GroupId(1))
        } else {
            (
                b.add_group(Direction::Ingress, &[web]),
                b.add_group(Direction::Egress, &[dns]),
            )
        };
        let a = PodAddress {
            identity: id_a,
            pod: pa,
            egress: Enforcement::Isolated(ge),
            ingress: Enforcement::Open,
            node: None,
            tiers: TierGroups::NONE,
        };
        let bb = PodAddress {
            identity: id_b,
            pod: pb,
            egress: Enforcement::Open,
            ingress: Enforcement::Isolated(gi),
            node: None,
            tiers: TierGroups::NONE,
        };
        b.add_pod_address(ip("10.0.0.1"), a).unwrap();
        b.add_pod_address(ip("fd00::1"), a).unwrap();
        b.add_pod_address(ip("10.0.0.2"), bb).unwrap();
        let base = u32::from(std::net::Ipv4Addr::new(192, 0, 2, 0));
        b.set_other_addresses_v4(IntervalMap::from_prefixes(
            [
                (Cidr::new(base, 24), block),
                (Cidr::new(base + 128, 25), world),
            ],
            world,
        ));
        b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
        if let Some(reused) = reused {
            b.reuse_group_tables(Arc::clone(reused));
            return b.build();
        }
        let tcp = b.add_port_set(vec![PortRule {
            policy: web,
            rule: 0,
            protocol: ip_proto::TCP,
            first: 80,
            last: 81,
            action: RuleAction::Allow,
        }]);
        let udp = b.add_port_set(vec![PortRule {
            policy: dns,
            rule: 2,
            protocol: ip_proto::UDP,
            first: 53,
            last: 53,
            action: RuleAction::Allow,
        }]);
        b.allow(gi, id_a, tcp);
        b.allow(ge, block, udp);
        b.build()
    }

    #[test]
    fn ingress_rule_allows_listed_peer_and_ports_only() {
        let t = sample();
        let v = t.classify(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::TCP, 81);
        assert_eq!(
            v.ingress,
            Decision::Allowed {
                policy: PolicyId(0),
                rule: 0
            }
        );
        // a's own egress only reaches the block on UDP 53.
        assert_eq!(v.egress, Decision::Denied { group: GroupId(1) });
        assert!(!v.is_allowed());
        let v = t.classify(ip("10.0.0.2"), ip("10.0.0.2"), IpProtocol::TCP, 82);
        assert_eq!(v.ingress, Decision::SelfTraffic);
        let v = t.classify(ip("192.0.2.9"), ip("10.0.0.2"), IpProtocol::TCP, 80);
        assert_eq!(v.ingress, Decision::Denied { group: GroupId(0) });
        assert_eq!(v.egress, Decision::NotEnforced);
        assert!(!v.is_allowed());
    }

    #[test]
    fn reused_group_tables_are_shared_and_equal_to_fresh_ones() {
        let first = sample();
        let second = sample_reusing(Some(first.group_tables()));
        assert!(Arc::ptr_eq(first.group_tables(), second.group_tables()));
        // Every field equal: they decide alike.
        assert_eq!(first, second);
    }

    #[test]
    fn a_pod_added_like_another_is_decided_like_it() {
        let first = sample();
        let like_b = first.peer(ip("10.0.0.2")).pod.unwrap();
        let name = ObjectName {
            namespace: "x".into(),
            name: "b2".into(),
        };
        let added = first
            .with_pod(
                8,
                name.clone(),
                &[(ip("10.0.0.3"), like_b), (ip("fd00::3"), like_b)],
            )
            .unwrap();
        assert_eq!(added.generation(), 8);
        assert!(Arc::ptr_eq(first.group_tables(), added.group_tables()));
        let b2 = added.peer(ip("10.0.0.3")).pod.unwrap();
        assert_eq!(b2.pod, PodId(2), "numbered after the last");
        assert_eq!(added.pod(b2.pod), &name);
        assert_eq!(
            PodAddress {
                pod: like_b.pod,
                ..b2
            },
            like_b
        );
        assert_eq!(added.peer(ip("fd00::3")).pod, Some(b2));
        for (src, port) in [("10.0.0.1", 81), ("10.0.0.1", 82), ("192.0.2.9", 80)] {
            let to_b = added.classify(ip(src), ip("10.0.0.2"), IpProtocol::TCP, port);
            let to_b2 = added.classify(ip(src), ip("10.0.0.3"), IpProtocol::TCP, port);
            assert_eq!(to_b, to_b2, "{src} port {port}");
        }
        assert_eq!(
            added
                .classify(ip("10.0.0.3"), ip("10.0.0.3"), IpProtocol::TCP, 9)
                .ingress,
            Decision::SelfTraffic
        );
        // The tables it was made from are unchanged.
        assert_eq!(first, sample());
        assert_eq!(first.peer(ip("10.0.0.3")).pod, None);
        // Removed again: an address like any other.
        let removed = added.without_pod_addresses(9, &[ip("10.0.0.3"), ip("fd00::3")]);
        assert_eq!(removed.generation(), 9);
        assert_eq!(removed.peer(ip("10.0.0.3")), first.peer(ip("10.0.0.3")));
        assert_eq!(removed.peer(ip("fd00::3")), first.peer(ip("fd00::3")));
        assert_eq!(removed.peer(ip("10.0.0.2")), added.peer(ip("10.0.0.2")));

        let taken = first.with_pod(8, name.clone(), &[(ip("10.0.0.1"), like_b)]);
        assert!(
            matches!(taken, Err(BuildError::DuplicateAddress { ref first, .. }) if first.name.as_ref() == "a"),
            "{taken:?}"
        );
        let unknown = PodAddress {
            ingress: Enforcement::Isolated(GroupId(9)),
            ..like_b
        };
        assert_eq!(
            first.with_pod(8, name, &[(ip("10.0.0.3"), unknown)]),
            Err(BuildError::UnknownId {
                what: "group",
                id: 9,
                count: 2
            })
        );
    }

    #[test]
    fn egress_to_block_honours_except() {
        let t = sample();
        let v = t.classify(ip("10.0.0.1"), ip("192.0.2.1"), IpProtocol::UDP, 53);
        assert_eq!(
            v.egress,
            Decision::Allowed {
                policy: PolicyId(1),
                rule: 2
            }
        );
        assert_eq!(v.ingress, Decision::NotEnforced);
        let v = t.classify(ip("10.0.0.1"), ip("192.0.2.200"), IpProtocol::UDP, 53);
        assert_eq!(v.egress, Decision::Denied { group: GroupId(1) });
        let v = t.classify(ip("10.0.0.1"), ip("192.0.2.1"), IpProtocol::TCP, 53);
        assert!(!v.is_allowed());
        // The pod's v6 address is the same pod, and nothing allows v6 egress.
        let v = t.classify(ip("fd00::1"), ip("fd00::9"), IpProtocol::UDP, 53);
        assert_eq!(v.egress, Decision::Denied { group: GroupId(1) });
    }

    #[test]
    fn broad_rules_match_members_and_lowest_rule_wins() {
        let mut b = TablesBuilder::new(0);
        let (p0, p1) = (b.add_policy("x", "p0"), b.add_policy("x", "p1"));
        let ids: Vec<IdentityId> = (0..130).map(|_| b.add_identity()).collect();
        let g = b.add_group(Direction::Ingress, &[p0, p1]);
        let pod = b.add_pod("x", "a");
        let entry = PodAddress {
            identity: ids[0],
            pod,
            egress: Enforcement::Open,
            ingress: Enforcement::Isolated(g),
            node: None,
            tiers: TierGroups::NONE,
        };
        b.add_pod_address(ip("10.0.0.1"), entry).unwrap();
        // Identity n is the address 192.0.2.0 + n.
        let base = u32::from(std::net::Ipv4Addr::new(192, 0, 2, 0));
        let map = IntervalMap::from_prefixes(
            ids.iter().map(|&id| (Cidr::new(base + id.0, 32), id)),
            ids[0],
        );
        b.set_other_addresses_v4(map);
        let tcp = |policy, rule, first, last| PortRule {
            policy,
            rule,
            protocol: ip_proto::TCP,
            first,
            last,
            action: RuleAction::Allow,
        };
        // Broad: identities 64..130 (crossing a word boundary) on 80-90, by p1 rule 0.
        let high = b.add_broad_set(ids[64..].to_vec());
        let s1 = b.add_port_set(vec![tcp(p1, 0, 80, 90)]);
        b.allow_broad(g, high, s1);
        // Narrow: identity 100 on 85 by p0 rule 3, which outranks p1.
        let s0 = b.add_port_set(vec![tcp(p0, 3, 85, 85)]);
        b.allow(g, ids[100], s0);
        let t = b.build();
        let from = |n: u32| {
            t.classify_v4(
                base + n,
                u32::from(std::net::Ipv4Addr::new(10, 0, 0, 1)),
                IpProtocol::TCP,
                85,
            )
        };
        assert_eq!(
            from(100).ingress,
            Decision::Allowed {
                policy: p0,
                rule: 3
            }
        );
        assert_eq!(
            from(127).ingress,
            Decision::Allowed {
                policy: p1,
                rule: 0
            }
        );
        assert_eq!(
            from(64).ingress,
            Decision::Allowed {
                policy: p1,
                rule: 0
            }
        );
        assert_eq!(from(63).ingress, Decision::Denied { group: g });
        assert_eq!(t.stats().broad_sets, 1);
    }

    /// Pod `a` (10.0.0.1) sends to `b` (10.0.0.2); `b`'s ingress has an
    /// Admin group (`admin` rules), maybe a NetworkPolicy group allowing
    /// TCP 80, and a Baseline group denying everything.
    fn tiered(admin: &[(RuleAction, u16)], isolated: bool, audited: bool) -> Tables {
        let mut b = TablesBuilder::new(0);
        let np = b.add_policy("x", "np");
        let cnp = b.add_policy("ClusterNetworkPolicy", "admin");
        let base = b.add_policy("ClusterNetworkPolicy", "base");
        let (pa, pb) = (b.add_pod("x", "a"), b.add_pod("x", "b"));
        let (world, id_a, id_b) = (b.add_identity(), b.add_identity(), b.add_identity());
        b.set_other_addresses_v4(IntervalMap::from_prefixes([], world));
        b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
        let g_np = b.add_group(Direction::Ingress, &[np]);
        let g_admin = b.add_group(Direction::Ingress, &[cnp]);
        let g_base = b.add_group(Direction::Ingress, &[base]);
        let rule = |policy, rule, first, last, action| PortRule {
            policy,
            rule,
            protocol: ip_proto::TCP,
            first,
            last,
            action,
        };
        let np_set = b.add_port_set(vec![rule(np, 0, 80, 80, RuleAction::Allow)]);
        b.allow(g_np, id_a, np_set);
        let admin_rules = admin
            .iter()
            .enumerate()
            .map(|(i, &(action, port))| rule(cnp, i as u16, port, port, action))
            .collect();
        let admin_set = b.add_port_set(admin_rules);
        b.allow(g_admin, id_a, admin_set);
        let base_set = b.add_port_set(vec![PortRule {
            action: RuleAction::Deny,
            ..PortRule::any(base, 0)
        }]);
        b.allow(g_base, id_a, base_set);
        let open = PodAddress {
            identity: id_a,
            pod: pa,
            egress: Enforcement::Open,
            ingress: Enforcement::Open,
            node: None,
            tiers: TierGroups::NONE,
        };
        b.add_pod_address(ip("10.0.0.1"), open).unwrap();
        let ingress = match (isolated, audited) {
            (false, _) => Enforcement::Open,
            (true, false) => Enforcement::Isolated(g_np),
            (true, true) => Enforcement::Audited(g_np),
        };
        let target = PodAddress {
            identity: id_b,
            pod: pb,
            ingress,
            tiers: {
                let mut t = TierGroups::NONE;
                t.audited = audited;
                t.set(Tier::Admin, Direction::Ingress, g_admin);
                t.set(Tier::Baseline, Direction::Ingress, g_base);
                t
            },
            ..open
        };
        b.add_pod_address(ip("10.0.0.2"), target).unwrap();
        b.build()
    }

    fn to_b(t: &Tables, port: u16) -> Verdict {
        t.classify(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::TCP, port)
    }

    #[test]
    fn admin_tier_decides_first_then_networkpolicy_then_baseline() {
        let admin = |rule| TierRule {
            tier: Tier::Admin,
            policy: PolicyId(1),
            rule,
        };
        // Rule order decides within a policy: Pass on 80 before Deny on 80.
        let t = tiered(
            &[
                (RuleAction::Pass, 80),
                (RuleAction::Deny, 80),
                (RuleAction::Allow, 81),
            ],
            true,
            false,
        );
        let v = to_b(&t, 80);
        assert_eq!(
            v.ingress,
            Decision::Allowed {
                policy: PolicyId(0),
                rule: 0
            },
            "passed to NetworkPolicy, which allows 80"
        );
        assert_eq!(v.passed.ingress, Some(admin(0)));
        // Accept skips NetworkPolicy, which would deny 81.
        assert_eq!(to_b(&t, 81).ingress, Decision::TierAccepted(admin(2)));
        // No admin rule: NetworkPolicy isolates, the Baseline tier is not asked.
        assert_eq!(to_b(&t, 82).ingress, Decision::Denied { group: GroupId(0) });
        // Deny first beats the NetworkPolicy allow.
        let t = tiered(
            &[(RuleAction::Deny, 80), (RuleAction::Pass, 80)],
            true,
            false,
        );
        let v = to_b(&t, 80);
        assert_eq!(v.ingress, Decision::TierDenied(admin(0)));
        assert!(!v.is_allowed() && v.ingress.is_policy_denial());
        // Not isolated by NetworkPolicy: the Baseline tier decides, also after a Pass.
        let t = tiered(&[(RuleAction::Pass, 80)], false, false);
        let base = TierRule {
            tier: Tier::Baseline,
            policy: PolicyId(2),
            rule: 0,
        };
        let v = to_b(&t, 80);
        assert_eq!(v.ingress, Decision::TierDenied(base));
        assert_eq!(v.passed.ingress, Some(admin(0)));
        assert_eq!(to_b(&t, 9).ingress, Decision::TierDenied(base));
        // The egress side of `a` is decided on its own: nothing selects it.
        assert_eq!(v.egress, Decision::NotIsolated);
    }

    #[test]
    fn pod_address_stays_small() {
        assert_eq!(std::mem::size_of::<PodEntry>(), 24);
        for e in [
            Enforcement::Remote,
            Enforcement::Open,
            Enforcement::Isolated(GroupId(GROUP_MASK)),
            Enforcement::Audited(GroupId(0)),
        ] {
            assert_eq!(Enforcement::unpack(e.pack()), e);
        }
        let mut t = TierGroups::NONE;
        assert_eq!(t.get(Tier::Baseline, Direction::Egress), None);
        t.set(Tier::Baseline, Direction::Egress, GroupId(3));
        assert_eq!(t.get(Tier::Baseline, Direction::Egress), Some(GroupId(3)));
        assert_eq!(t.get(Tier::Admin, Direction::Egress), None);
    }

    #[test]
    fn audited_pods_report_tier_denials_and_pass() {
        let t = tiered(&[(RuleAction::Deny, 80)], true, true);
        let v = to_b(&t, 80);
        assert!(matches!(v.ingress, Decision::TierWouldDeny(_)), "{v:?}");
        assert!(v.is_allowed() && v.ingress.is_policy_denial());
    }

    #[test]
    fn any_protocol_rule_matches_portless_protocols() {
        let r = PortRule::any(PolicyId(0), 0);
        assert!(r.matches(IpProtocol::ICMP, 0));
        assert!(r.matches(IpProtocol::SCTP, 9));
        let tcp = PortRule {
            protocol: ip_proto::TCP,
            first: 1,
            last: 2,
            action: RuleAction::Allow,
            ..r
        };
        assert!(!tcp.matches(IpProtocol::ICMP, 0));
        assert!(!tcp.matches(IpProtocol::UDP, 1));
        assert!(tcp.matches(IpProtocol::TCP, 2));
    }

    #[test]
    fn port_sets_are_interned_and_ordered() {
        let mut b = TablesBuilder::new(0);
        let r1 = PortRule {
            policy: PolicyId(1),
            rule: 0,
            protocol: ip_proto::TCP,
            first: 1,
            last: 1,
            action: RuleAction::Allow,
        };
        let r0 = PortRule {
            policy: PolicyId(0),
            rule: 3,
            protocol: ip_proto::TCP,
            first: 1,
            last: 9,
            action: RuleAction::Allow,
        };
        let s1 = b.add_port_set(vec![r1, r0, r1]);
        let s2 = b.add_port_set(vec![r0, r1]);
        assert_eq!(s1, s2);
        let t = b.build();
        assert_eq!(t.port_set(s1), &[r0, r1]);
    }

    #[test]
    fn duplicate_pod_address_is_reported_and_first_kept() {
        let mut b = TablesBuilder::new(0);
        let (p1, p2) = (b.add_pod("x", "a"), b.add_pod("y", "b"));
        let e = |pod| PodAddress {
            identity: IdentityId(0),
            pod,
            egress: Enforcement::Remote,
            ingress: Enforcement::Remote,
            node: None,
            tiers: TierGroups::NONE,
        };
        b.add_pod_address(ip("10.0.0.1"), e(p1)).unwrap();
        let err = b.add_pod_address(ip("10.0.0.1"), e(p2)).unwrap_err();
        assert!(err.to_string().contains("x/a"), "{err}");
        assert!(err.to_string().contains("y/b"), "{err}");
        assert_eq!(b.build().peer(ip("10.0.0.1")).pod.unwrap().pod, p1);
    }

    #[test]
    fn empty_tables_enforce_nothing() {
        let t = Tables::empty(3);
        let v = t.classify(ip("10.0.0.1"), ip("10.0.0.2"), IpProtocol::TCP, 80);
        assert_eq!(
            v,
            Verdict {
                egress: Decision::NotEnforced,
                ingress: Decision::NotEnforced,
                passed: Passed::NONE,
            }
        );
        assert_eq!(t.generation(), 3);
    }
}
