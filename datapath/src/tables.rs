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
//!    identity)` to a small set of protocol/port ranges, plus a bit test per
//!    *broad* rule of the group.
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
//! list of `(broad set, port set)` pairs.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::lpm::IntervalMap;

pub use crate::wire::IpProtocol;

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
    /// A pod and the node it runs on, which policy never blocks.
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
}

impl Decision {
    /// Whether this side lets the connection through.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }

    /// Whether policy denies it, enforced or audited.
    #[must_use]
    pub fn is_policy_denial(&self) -> bool {
        matches!(self, Self::Denied { .. } | Self::WouldDeny { .. })
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
}

impl Verdict {
    /// Whether the connection may be opened.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.egress.is_allowed() && self.ingress.is_allowed()
    }
}

/// Namespace and name of a policy or pod, for attribution.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: Box<str>,
    /// Name.
    pub name: Box<str>,
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
    pods_v4: FxHashMap<u32, PodAddress>,
    pods_v6: FxHashMap<u128, PodAddress>,
    nodes_v4: FxHashMap<u32, NodeId>,
    nodes_v6: FxHashMap<u128, NodeId>,
    others_v4: IntervalMap<u32, IdentityId>,
    others_v6: IntervalMap<u128, IdentityId>,
    allow: FxHashMap<u64, PortSetId>,
    port_sets: Vec<(u32, u32)>,
    port_rules: Vec<PortRule>,
    groups: Vec<(Direction, u32, u32)>,
    group_policies: Vec<PolicyId>,
    policies: Arc<[ObjectName]>,
    pods: Arc<[ObjectName]>,
    identities: u32,
    /// Per group, a range of `broad_rules`.
    group_broad: Vec<(u32, u32)>,
    broad_rules: Vec<(BroadSetId, PortSetId)>,
    /// `broad_words` words per identity: bit `b` is set iff the identity is a
    /// member of broad set `b`.
    identity_broad: Vec<u64>,
    broad_words: u32,
    broad_sets: u32,
}

/// An address resolved to what the tables know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
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
    pub fn peer_v4(&self, addr: u32) -> Peer {
        match self.pods_v4.get(&addr) {
            Some(p) => Peer {
                identity: p.identity,
                pod: Some(*p),
                node: None,
            },
            None => Peer {
                identity: self.others_v4.get(addr),
                pod: None,
                node: self.nodes_v4.get(&addr).copied(),
            },
        }
    }

    /// Resolves an IPv6 address (host order).
    #[inline]
    #[must_use]
    pub fn peer_v6(&self, addr: u128) -> Peer {
        match self.pods_v6.get(&addr) {
            Some(p) => Peer {
                identity: p.identity,
                pod: Some(*p),
                node: None,
            },
            None => Peer {
                identity: self.others_v6.get(addr),
                pod: None,
                node: self.nodes_v6.get(&addr).copied(),
            },
        }
    }

    /// Resolves an address of either family.
    #[must_use]
    pub fn peer(&self, addr: IpAddr) -> Peer {
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
    pub fn decide(&self, src: Peer, dst: Peer, protocol: IpProtocol, dst_port: u16) -> Verdict {
        if let (Some(s), Some(d)) = (src.pod, dst.pod)
            && s.pod == d.pod
        {
            return Verdict {
                egress: Decision::SelfTraffic,
                ingress: Decision::SelfTraffic,
            };
        }
        if src.node.is_some() && src.node == dst.pod.and_then(|p| p.node) {
            return Verdict {
                egress: Decision::NotEnforced,
                ingress: Decision::OwnNode,
            };
        }
        if dst.node.is_some() && dst.node == src.pod.and_then(|p| p.node) {
            return Verdict {
                egress: Decision::OwnNode,
                ingress: Decision::NotEnforced,
            };
        }
        let side = |enforcement: Option<Enforcement>, peer: IdentityId| match enforcement {
            None | Some(Enforcement::Remote) => Decision::NotEnforced,
            Some(Enforcement::Open) => Decision::NotIsolated,
            Some(Enforcement::Isolated(g)) => self.check(g, peer, protocol, dst_port),
            Some(Enforcement::Audited(g)) => match self.check(g, peer, protocol, dst_port) {
                Decision::Denied { group } => Decision::WouldDeny { group },
                allowed => allowed,
            },
        };
        Verdict {
            egress: side(src.pod.map(|p| p.egress), dst.identity),
            ingress: side(dst.pod.map(|p| p.ingress), src.identity),
        }
    }

    #[inline]
    fn check(&self, group: GroupId, peer: IdentityId, protocol: IpProtocol, port: u16) -> Decision {
        // The first matching rule of a set is its lowest (policy, rule); of
        // all sets that match, the lowest one is reported.
        let first_match = |set: PortSetId| {
            self.port_set(set)
                .iter()
                .find(|r| r.matches(protocol, port))
                .map(|r| (r.policy, r.rule))
        };
        let mut best = self
            .allow
            .get(&allow_key(group, peer))
            .and_then(|s| first_match(*s));
        for &(broad, set) in self.broad_rules(group) {
            if self.is_member(peer, broad)
                && let Some(m) = first_match(set)
                && best.is_none_or(|b| m < b)
            {
                best = Some(m);
            }
        }
        match best {
            Some((policy, rule)) => Decision::Allowed { policy, rule },
            None => Decision::Denied { group },
        }
    }

    #[inline]
    fn is_member(&self, identity: IdentityId, set: BroadSetId) -> bool {
        let word = identity.index() * self.broad_words as usize + set.index() / 64;
        (self.identity_broad[word] >> (set.0 % 64)) & 1 == 1
    }

    /// The broad rules of a group: `(peer set, port set)` pairs.
    #[must_use]
    pub fn broad_rules(&self, group: GroupId) -> &[(BroadSetId, PortSetId)] {
        let (start, len) = self.group_broad[group.index()];
        &self.broad_rules[start as usize..(start + len) as usize]
    }

    /// The rules of a port set, in attribution order.
    #[must_use]
    pub fn port_set(&self, set: PortSetId) -> &[PortRule] {
        let (start, len) = self.port_sets[set.index()];
        &self.port_rules[start as usize..(start + len) as usize]
    }

    /// The port set that `group` grants to `peer`, if any.
    #[must_use]
    pub fn allowed_ports(&self, group: GroupId, peer: IdentityId) -> Option<&[PortRule]> {
        self.allow
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
        let (dir, start, len) = self.groups[group.index()];
        (
            dir,
            &self.group_policies[start as usize..(start + len) as usize],
        )
    }

    /// A policy's namespace and name.
    #[must_use]
    pub fn policy(&self, policy: PolicyId) -> &ObjectName {
        &self.policies[policy.index()]
    }

    /// A pod's namespace and name.
    #[must_use]
    pub fn pod(&self, pod: PodId) -> &ObjectName {
        &self.pods[pod.index()]
    }

    /// Sizes, for reports.
    #[must_use]
    pub fn stats(&self) -> TableStats {
        TableStats {
            policies: self.policies.len(),
            pods: self.pods.len(),
            pod_addresses: self.pods_v4.len() + self.pods_v6.len(),
            identities: self.identities as usize,
            groups: self.groups.len(),
            allow_entries: self.allow.len(),
            broad_sets: self.broad_sets as usize,
            broad_rules: self.broad_rules.len(),
            port_sets: self.port_sets.len(),
            port_rules: self.port_rules.len(),
            prefix_intervals: self.others_v4.intervals() + self.others_v6.intervals(),
        }
    }
}

/// Why the builder refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two pods claim one address.
    #[error("address {addr} belongs to both pod {first} and pod {second}")]
    DuplicateAddress {
        /// The address.
        addr: IpAddr,
        /// The pod that had it first (and keeps it).
        first: ObjectName,
        /// The pod that also claims it.
        second: ObjectName,
    },
}

/// Assembles a [`Tables`] value; the compiler in the control plane drives it.
#[derive(Debug)]
pub struct TablesBuilder {
    tables: Tables,
    port_set_ids: FxHashMap<Vec<PortRule>, PortSetId>,
    added_policies: Vec<ObjectName>,
    added_pods: Vec<ObjectName>,
    broad_members: Vec<Vec<IdentityId>>,
    group_broad: Vec<Vec<(BroadSetId, PortSetId)>>,
}

impl TablesBuilder {
    /// An empty builder for generation `generation`.
    #[must_use]
    pub fn new(generation: u64) -> Self {
        let none = IdentityId(0);
        Self {
            tables: Tables {
                generation,
                pods_v4: FxHashMap::default(),
                pods_v6: FxHashMap::default(),
                nodes_v4: FxHashMap::default(),
                nodes_v6: FxHashMap::default(),
                others_v4: IntervalMap::from_prefixes([], none),
                others_v6: IntervalMap::from_prefixes([], none),
                allow: FxHashMap::default(),
                port_sets: Vec::new(),
                port_rules: Vec::new(),
                groups: Vec::new(),
                group_policies: Vec::new(),
                policies: Arc::from([]),
                pods: Arc::from([]),
                identities: 0,
                group_broad: Vec::new(),
                broad_rules: Vec::new(),
                identity_broad: Vec::new(),
                broad_words: 0,
                broad_sets: 0,
            },
            port_set_ids: FxHashMap::default(),
            added_policies: Vec::new(),
            added_pods: Vec::new(),
            broad_members: Vec::new(),
            group_broad: Vec::new(),
        }
    }

    /// The policies, for attribution: `PolicyId(i)` is `names[i]`. The
    /// list may be shared with other generations. Instead of
    /// [`add_policy`](Self::add_policy), not with it.
    pub fn set_policy_names(&mut self, names: Arc<[ObjectName]>) {
        self.tables.policies = names;
    }

    /// The pods, for attribution: `PodId(i)` is `names[i]`. The list may be
    /// shared with other generations. Instead of [`add_pod`](Self::add_pod),
    /// not with it.
    pub fn set_pod_names(&mut self, names: Arc<[ObjectName]>) {
        self.tables.pods = names;
    }

    /// Registers a policy for attribution.
    pub fn add_policy(&mut self, namespace: &str, name: &str) -> PolicyId {
        self.added_policies.push(ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        });
        PolicyId(self.added_policies.len() as u32 - 1)
    }

    /// Registers a pod for attribution.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> PodId {
        self.added_pods.push(ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        });
        PodId(self.added_pods.len() as u32 - 1)
    }

    fn pod_name(&self, pod: PodId) -> ObjectName {
        if self.added_pods.is_empty() {
            self.tables.pods[pod.index()].clone()
        } else {
            self.added_pods[pod.index()].clone()
        }
    }

    /// A new identity.
    pub fn add_identity(&mut self) -> IdentityId {
        let id = IdentityId(self.tables.identities);
        self.tables.identities += 1;
        id
    }

    /// A new policy group of `policies` (kept in the given order).
    pub fn add_group(&mut self, direction: Direction, policies: &[PolicyId]) -> GroupId {
        let id = GroupId(self.tables.groups.len() as u32);
        let start = self.tables.group_policies.len() as u32;
        self.tables.group_policies.extend_from_slice(policies);
        self.tables
            .groups
            .push((direction, start, policies.len() as u32));
        self.group_broad.push(Vec::new());
        id
    }

    /// A broad peer set of `members` (identities already added).
    pub fn add_broad_set(&mut self, members: Vec<IdentityId>) -> BroadSetId {
        let id = BroadSetId(self.broad_members.len() as u32);
        self.broad_members.push(members);
        id
    }

    /// Lets `group` accept (ingress) or reach (egress) every member of
    /// `peers` on `set`.
    pub fn allow_broad(&mut self, group: GroupId, peers: BroadSetId, set: PortSetId) {
        self.group_broad[group.index()].push((peers, set));
    }

    /// Maps a pod address. The first pod to claim an address keeps it.
    pub fn add_pod_address(&mut self, addr: IpAddr, entry: PodAddress) -> Result<(), BuildError> {
        let existing = match addr {
            IpAddr::V4(a) => *self.tables.pods_v4.entry(u32::from(a)).or_insert(entry),
            IpAddr::V6(a) => *self.tables.pods_v6.entry(u128::from(a)).or_insert(entry),
        };
        if existing == entry {
            return Ok(());
        }
        Err(BuildError::DuplicateAddress {
            addr,
            first: self.pod_name(existing.pod),
            second: self.pod_name(entry.pod),
        })
    }

    /// Maps an address of a node (not a pod address) to the node.
    pub fn add_node_address(&mut self, addr: IpAddr, node: NodeId) {
        match addr {
            IpAddr::V4(a) => self.tables.nodes_v4.entry(u32::from(a)).or_insert(node),
            IpAddr::V6(a) => self.tables.nodes_v6.entry(u128::from(a)).or_insert(node),
        };
    }

    /// The identities of all IPv4 addresses that are not pod addresses.
    pub fn set_other_addresses_v4(&mut self, map: IntervalMap<u32, IdentityId>) {
        self.tables.others_v4 = map;
    }

    /// The identities of all IPv6 addresses that are not pod addresses.
    pub fn set_other_addresses_v6(&mut self, map: IntervalMap<u128, IdentityId>) {
        self.tables.others_v6 = map;
    }

    /// Interns a port set. Rules are ordered by policy, rule and range so that
    /// attribution names the first policy in table order; exact duplicates go.
    pub fn add_port_set(&mut self, mut rules: Vec<PortRule>) -> PortSetId {
        rules.sort_unstable();
        rules.dedup();
        if let Some(id) = self.port_set_ids.get(&rules) {
            return *id;
        }
        let id = PortSetId(self.tables.port_sets.len() as u32);
        let start = self.tables.port_rules.len() as u32;
        self.tables.port_rules.extend_from_slice(&rules);
        self.tables.port_sets.push((start, rules.len() as u32));
        self.port_set_ids.insert(rules, id);
        id
    }

    /// Lets `group` accept (ingress) or reach (egress) `peer` on `set`.
    pub fn allow(&mut self, group: GroupId, peer: IdentityId, set: PortSetId) {
        self.tables.allow.insert(allow_key(group, peer), set);
    }

    /// Expected number of `add_pod_address` calls, to size the maps once.
    pub fn reserve_pod_addresses(&mut self, v4: usize, v6: usize) {
        self.tables.pods_v4.reserve(v4);
        self.tables.pods_v6.reserve(v6);
    }

    /// Expected number of `allow` calls, to size the map once.
    pub fn reserve_allow(&mut self, additional: usize) {
        self.tables.allow.reserve(additional);
    }

    /// The finished, immutable tables.
    #[must_use]
    pub fn build(mut self) -> Tables {
        if !self.added_policies.is_empty() {
            self.tables.policies = std::mem::take(&mut self.added_policies).into();
        }
        if !self.added_pods.is_empty() {
            self.tables.pods = std::mem::take(&mut self.added_pods).into();
        }
        let t = &mut self.tables;
        let words = self.broad_members.len().div_ceil(64).max(1);
        t.broad_words = words as u32;
        t.broad_sets = self.broad_members.len() as u32;
        t.identity_broad = vec![0; t.identities as usize * words];
        for (b, members) in self.broad_members.iter().enumerate() {
            for m in members {
                t.identity_broad[m.index() * words + b / 64] |= 1 << (b % 64);
            }
        }
        for rules in &self.group_broad {
            let start = t.broad_rules.len() as u32;
            t.broad_rules.extend_from_slice(rules);
            t.group_broad.push((start, rules.len() as u32));
        }
        self.tables.allow.shrink_to_fit();
        self.tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::Cidr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Two local pods; `b` accepts TCP 80-81 from `a` only, `a` may reach
    /// anything in 192.0.2.0/24 except 192.0.2.128/25 on UDP 53.
    fn sample() -> Tables {
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
        let gi = b.add_group(Direction::Ingress, &[web]);
        let ge = b.add_group(Direction::Egress, &[dns]);
        let a = PodAddress {
            identity: id_a,
            pod: pa,
            egress: Enforcement::Isolated(ge),
            ingress: Enforcement::Open,
            node: None,
        };
        let bb = PodAddress {
            identity: id_b,
            pod: pb,
            egress: Enforcement::Open,
            ingress: Enforcement::Isolated(gi),
            node: None,
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
        let tcp = b.add_port_set(vec![PortRule {
            policy: web,
            rule: 0,
            protocol: 6,
            first: 80,
            last: 81,
        }]);
        let udp = b.add_port_set(vec![PortRule {
            policy: dns,
            rule: 2,
            protocol: 17,
            first: 53,
            last: 53,
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
            protocol: 6,
            first,
            last,
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

    #[test]
    fn any_protocol_rule_matches_portless_protocols() {
        let r = PortRule::any(PolicyId(0), 0);
        assert!(r.matches(IpProtocol::ICMP, 0));
        assert!(r.matches(IpProtocol::SCTP, 9));
        let tcp = PortRule {
            protocol: 6,
            first: 1,
            last: 2,
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
            protocol: 6,
            first: 1,
            last: 1,
        };
        let r0 = PortRule {
            policy: PolicyId(0),
            rule: 3,
            protocol: 6,
            first: 1,
            last: 9,
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
                ingress: Decision::NotEnforced
            }
        );
        assert_eq!(t.generation(), 3);
    }
}
