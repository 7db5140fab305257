//! Assembling a [`Tables`] value, off the hot path: the control plane's
//! compiler adds policies, pods, identities, groups and port sets, and
//! [`TablesBuilder::build`] freezes them into one immutable generation.

use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::ports::PortMatcher;
use super::{
    BroadSetId, Direction, Enforcement, GroupId, GroupTables, IdentityId, NO_NODE, NodeId,
    ObjectName, PodAddress, PodEntry, PodId, PolicyId, PortRule, PortSetId, Tables, Tier,
    TierGroups, TierPolicyInfo, allow_key,
};
use crate::lpm::IntervalMap;

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
    /// An id that the tables being extended do not have.
    #[error("{what} {id} is not in the tables (they have {count})")]
    UnknownId {
        /// What kind of id.
        what: &'static str,
        /// The id.
        id: u32,
        /// How many the tables have.
        count: usize,
    },
}

/// Assembles a [`Tables`] value; the compiler in the control plane drives it.
#[derive(Debug)]
pub struct TablesBuilder {
    tables: Tables,
    /// The group tables being filled, unless an earlier generation's are
    /// reused (`reused`).
    fill: GroupTables,
    reused: Option<Arc<GroupTables>>,
    port_set_ids: FxHashMap<Vec<PortRule>, PortSetId>,
    added_policies: Vec<ObjectName>,
    added_pods: Vec<ObjectName>,
    broad_members: Vec<Vec<IdentityId>>,
    group_broad: Vec<Vec<(BroadSetId, PortSetId)>>,
    tier_group_ids: FxHashMap<TierGroups, u32>,
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
                tier_groups: vec![TierGroups::NONE],
                nodes_v4: FxHashMap::default(),
                nodes_v6: FxHashMap::default(),
                others_v4: IntervalMap::from_prefixes([], none),
                others_v6: IntervalMap::from_prefixes([], none),
                groups: Arc::default(),
                policies: Arc::from([]),
                tier_base: 0,
                tier_info: Arc::from([]),
                pods: Arc::from([]),
                later_pods: Arc::from([]),
                identities: 0,
            },
            fill: GroupTables::default(),
            reused: None,
            port_set_ids: FxHashMap::default(),
            added_policies: Vec::new(),
            added_pods: Vec::new(),
            broad_members: Vec::new(),
            group_broad: Vec::new(),
            tier_group_ids: FxHashMap::from_iter([(TierGroups::NONE, 0)]),
        }
    }

    /// The policies, for attribution: `PolicyId(i)` is `names[i]`. The
    /// list may be shared with other generations. Instead of
    /// [`add_policy`](Self::add_policy), not with it.
    pub fn set_policy_names(&mut self, names: Arc<[ObjectName]>) {
        self.tables.policies = names;
    }

    /// What attribution shows of the tier policies, which are
    /// `PolicyId(base + i)` for `info[i]`.
    pub fn set_tier_info(&mut self, base: u32, info: Arc<[TierPolicyInfo]>) {
        self.tables.tier_base = base;
        self.tables.tier_info = info;
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
        let id = GroupId(self.fill.groups.len() as u32);
        let start = self.fill.group_policies.len() as u32;
        self.fill.group_policies.extend_from_slice(policies);
        self.fill
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
        let tier_groups = &mut self.tables.tier_groups;
        // Most pods are in no tier group; theirs is the first.
        let tiers = if entry.tiers == TierGroups::NONE {
            0
        } else {
            *self.tier_group_ids.entry(entry.tiers).or_insert_with(|| {
                tier_groups.push(entry.tiers);
                tier_groups.len() as u32 - 1
            })
        };
        let packed = PodEntry::pack(&entry, entry.pod, tiers);
        let existing = self.tables.claim_pod_address(addr, packed);
        if existing == packed {
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
        let id = PortSetId(self.fill.port_sets.len() as u32);
        let start = self.fill.port_rules.len() as u32;
        self.fill.port_rules.extend_from_slice(&rules);
        self.fill.port_sets.push((start, rules.len() as u32));
        self.port_set_ids.insert(rules, id);
        id
    }

    /// Lets `group` accept (ingress) or reach (egress) `peer` on `set`.
    pub fn allow(&mut self, group: GroupId, peer: IdentityId, set: PortSetId) {
        self.fill.allow.insert(allow_key(group, peer), set);
    }

    /// Expected number of `add_pod_address` calls, to size the maps once.
    pub fn reserve_pod_addresses(&mut self, v4: usize, v6: usize) {
        self.tables.pods_v4.reserve(v4);
        self.tables.pods_v6.reserve(v6);
    }

    /// Expected number of `allow` calls, to size the map once.
    pub fn reserve_allow(&mut self, additional: usize) {
        self.fill.allow.reserve(additional);
    }

    /// Takes the groups, allow entries, broad sets and port sets of an
    /// earlier generation whole ([`Tables::group_tables`]), instead of
    /// [`add_group`](Self::add_group), [`add_port_set`](Self::add_port_set),
    /// [`allow`](Self::allow), [`add_broad_set`](Self::add_broad_set) and
    /// [`allow_broad`](Self::allow_broad), not with them. They must be
    /// what those calls would give: the caller checked that the groups,
    /// the identities (as many as added here) and the policies are the
    /// earlier generation's.
    pub fn reuse_group_tables(&mut self, group_tables: Arc<GroupTables>) {
        self.reused = Some(group_tables);
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
        self.tables.groups = match self.reused.take() {
            Some(reused) => {
                debug_assert!(
                    self.fill.groups.is_empty() && self.fill.port_sets.is_empty(),
                    "group tables reused and filled"
                );
                debug_assert_eq!(
                    reused.identity_broad.len(),
                    self.tables.identities as usize * reused.broad_words as usize,
                    "group tables of another identity count"
                );
                reused
            }
            None => Arc::new(self.finish_fill()),
        };
        self.tables
    }

    /// The filled group tables: broad sets as identity bitmaps, each
    /// group's broad rules merged per peer set, the port matchers.
    fn finish_fill(&mut self) -> GroupTables {
        let identities = self.tables.identities as usize;
        let t = &mut self.fill;
        let words = self.broad_members.len().div_ceil(64).max(1);
        t.broad_words = words as u32;
        t.broad_sets = self.broad_members.len() as u32;
        t.identity_broad = vec![0; identities * words];
        for (b, members) in self.broad_members.iter().enumerate() {
            for m in members {
                t.identity_broad[m.index() * words + b / 64] |= 1 << (b % 64);
            }
        }
        // A group's rules for one peer set become one port set, so that a
        // lookup tests each broad set of the group once, however many of
        // the group's policies name it. Groups often share a peer set's
        // rules (the same policies): each distinct list is merged once.
        let mut unions: FxHashMap<Vec<PortSetId>, PortSetId> = FxHashMap::default();
        let mut sets: Vec<PortSetId> = Vec::new();
        let mut merged: Vec<(BroadSetId, PortSetId)> = Vec::new();
        for mut rules in std::mem::take(&mut self.group_broad) {
            rules.sort_unstable();
            rules.dedup();
            merged.clear();
            for same in rules.chunk_by(|a, b| a.0 == b.0) {
                let set = if let [(_, set)] = same {
                    *set
                } else {
                    sets.clear();
                    sets.extend(same.iter().map(|&(_, set)| set));
                    if let Some(&union) = unions.get(&sets) {
                        union
                    } else {
                        let rules = sets
                            .iter()
                            .flat_map(|&set| self.fill.port_set(set).iter().copied())
                            .collect();
                        let union = self.add_port_set(rules);
                        unions.insert(sets.clone(), union);
                        union
                    }
                };
                merged.push((same[0].0, set));
            }
            let t = &mut self.fill;
            let start = t.broad_rules.len() as u32;
            t.broad_rules.extend_from_slice(&merged);
            t.group_broad.push((start, merged.len() as u32));
        }
        let t = &mut self.fill;
        t.port_matchers = t
            .port_sets
            .iter()
            .map(|&(start, len)| {
                let rules = &t.port_rules[start as usize..(start + len) as usize];
                PortMatcher::build(rules, start, &mut t.port_segments)
            })
            .collect();
        t.port_segments.shrink_to_fit();
        t.allow.shrink_to_fit();
        std::mem::take(&mut self.fill)
    }
}

impl PodEntry {
    /// `entry` as the address maps hold it, for pod `pod` whose tier
    /// groups are `Tables::tier_groups[tiers]`.
    fn pack(entry: &PodAddress, pod: PodId, tiers: u32) -> Self {
        Self {
            identity: entry.identity,
            pod,
            egress: entry.egress.pack(),
            ingress: entry.ingress.pack(),
            node: entry.node.map_or(NO_NODE, |n| n.0),
            tiers,
        }
    }
}

impl Tables {
    /// Maps `addr` to `packed` unless an entry has it already; returns the
    /// entry that has it now.
    fn claim_pod_address(&mut self, addr: IpAddr, packed: PodEntry) -> PodEntry {
        match addr {
            IpAddr::V4(a) => *self.pods_v4.entry(u32::from(a)).or_insert(packed),
            IpAddr::V6(a) => *self.pods_v6.entry(u128::from(a)).or_insert(packed),
        }
    }

    /// These tables, numbered `generation`, with one more pod, `name`, at
    /// `addresses`, numbered after the last pod (the entries' `pod` is
    /// ignored). Its identities, groups and node must be these tables'
    /// already: then every verdict is what compiling the state with the pod
    /// would give, up to the numbering. Everything but the address maps
    /// and the pod names is shared.
    pub fn with_pod(
        &self,
        generation: u64,
        name: ObjectName,
        addresses: &[(IpAddr, PodAddress)],
    ) -> Result<Tables, BuildError> {
        let known = |what, id: u32, count: usize| {
            if (id as usize) < count {
                Ok(())
            } else {
                Err(BuildError::UnknownId { what, id, count })
            }
        };
        let groups = self.groups.groups.len();
        let group_of = |e: Enforcement| match e {
            Enforcement::Isolated(g) | Enforcement::Audited(g) => Some(g),
            Enforcement::Remote | Enforcement::Open => None,
        };
        for (_, entry) in addresses {
            known("identity", entry.identity.0, self.identities as usize)?;
            let tier_groups = [Tier::Admin, Tier::Baseline].into_iter().flat_map(|tier| {
                [Direction::Ingress, Direction::Egress].map(|d| entry.tiers.get(tier, d))
            });
            for group in [group_of(entry.ingress), group_of(entry.egress)]
                .into_iter()
                .chain(tier_groups)
                .flatten()
            {
                known("group", group.0, groups)?;
            }
        }
        let pod = PodId((self.pods.len() + self.later_pods.len()) as u32);
        let mut tables = Tables {
            generation,
            later_pods: self.later_pods.iter().cloned().chain([name]).collect(),
            ..self.clone()
        };
        for &(addr, entry) in addresses {
            let tier_groups = &mut tables.tier_groups;
            let tiers = tier_groups
                .iter()
                .position(|&t| t == entry.tiers)
                .unwrap_or_else(|| {
                    tier_groups.push(entry.tiers);
                    tier_groups.len() - 1
                }) as u32;
            let packed = PodEntry::pack(&entry, pod, tiers);
            let existing = tables.claim_pod_address(addr, packed);
            if existing != packed {
                return Err(BuildError::DuplicateAddress {
                    addr,
                    first: self.pod(existing.pod).clone(),
                    second: tables.pod(pod).clone(),
                });
            }
        }
        Ok(tables)
    }

    /// These tables, numbered `generation`, without the pod addresses
    /// `addresses`: they resolve as any other address again (the pod's
    /// number and name stay, unused). Every verdict is what compiling the
    /// state without the pod would give, as long as its node is known
    /// without it. Everything but the address maps is shared.
    #[must_use]
    pub fn without_pod_addresses(&self, generation: u64, addresses: &[IpAddr]) -> Tables {
        let mut tables = Tables {
            generation,
            ..self.clone()
        };
        for &addr in addresses {
            match addr {
                IpAddr::V4(a) => tables.pods_v4.remove(&u32::from(a)),
                IpAddr::V6(a) => tables.pods_v6.remove(&u128::from(a)),
            };
        }
        tables
    }
}
