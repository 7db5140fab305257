//! One compile: the steps of the module documentation in order, from the
//! cluster state and the last compile's memo to a tables generation.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use podfence_datapath::TablesBuilder;
use podfence_datapath::tables::{
    Enforcement, GroupId, IdentityId, NodeId, ObjectName, PodAddress, PodId, TierGroups,
};
use rustc_hash::FxHashMap;

use super::groups::{FillContext, FillInputs, FillMemo, GroupKey, RuleIdentities};
use super::identities::{IdentityKey, NOT_A_POD};
use super::memo::{EndpointMemo, Interner, Memo, NO_SIG};
use super::peers::{BlockMaps, PeerRef};
use super::replica::{ReplicaMemo, TierShape, enforced, group_keys, is_audited, tier_group_keys};
use super::tiers::{TierPolicy, tier_info};
use super::{CompileOptions, Compiled};
use crate::index::Cluster;
use crate::model::{NetworkPolicy, Pod};

/// One compile.
pub(super) struct Pass<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) options: &'a CompileOptions,
    pub(super) generation: u64,
    /// Pods that own their addresses, in name order.
    pub(super) endpoints: Vec<&'a Arc<Pod>>,
    /// Endpoint indices by namespace (those of a namespace are adjacent).
    pub(super) by_namespace: FxHashMap<&'a str, Range<u32>>,
    pub(super) warnings: Vec<String>,
}

impl<'a> Pass<'a> {
    /// A compile of `cluster`; its endpoints are found by
    /// [`Self::endpoint_facts`].
    pub(super) fn new(cluster: &'a Cluster, options: &'a CompileOptions, generation: u64) -> Self {
        Self {
            cluster,
            options,
            generation,
            endpoints: Vec::with_capacity(cluster.pods.len()),
            by_namespace: FxHashMap::default(),
            warnings: Vec::new(),
        }
    }

    pub(super) fn is_local(&self, pod: &Pod) -> bool {
        self.options.locality.includes(pod)
    }

    /// Shares the last compile's name lists when no pod or policy came or
    /// went; makes new ones otherwise (of the endpoints' names, shared).
    /// Policies are the NetworkPolicies in name order, then the tier
    /// policies in precedence order.
    pub(super) fn names(
        &self,
        memo: &mut Memo,
        endpoints: &[EndpointMemo],
        same_endpoints: bool,
        same_policies: bool,
        tier_names: Vec<ObjectName>,
    ) -> (Arc<[ObjectName]>, Arc<[ObjectName]>) {
        let name = |namespace: &str, name: &str| ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        };
        let pods = match memo.pod_names.take() {
            Some(names) if same_endpoints => names,
            _ => endpoints.iter().map(|m| m.name.clone()).collect(),
        };
        let same_tiers = memo.tier_names == tier_names;
        let policies = match memo.policy_names.take() {
            Some(names) if same_policies && same_tiers => names,
            _ => self
                .cluster
                .policies
                .values()
                .map(|p| name(&p.namespace, &p.name))
                .chain(tier_names.iter().cloned())
                .collect(),
        };
        memo.tier_names = tier_names;
        memo.pod_names = Some(pods.clone());
        memo.policy_names = Some(policies.clone());
        (pods, policies)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one pass, in the order the module doc describes"
    )]
    pub(super) fn run(mut self, memo: &mut Memo) -> Compiled {
        let cluster = self.cluster;
        let policies: Vec<&Arc<NetworkPolicy>> = cluster.policies.values().collect();

        // Selector peers and ipBlocks, interned; every rule's peers resolved.
        let (resolved, same_policies, same_policies_resolved) = self.resolve_policies(memo);
        let (tiers, notices) = self.resolve_tiers(&mut memo.selectors, &mut memo.blocks);
        let mut selector_live = vec![false; memo.selectors.items.len()];
        let mut block_live = vec![false; memo.blocks.items.len()];
        let tier_peers = tiers
            .iter()
            .flat_map(|t| t.rules.iter().flatten().flatten().flatten());
        for peer in resolved
            .iter()
            .flat_map(|m| m.rules.iter().flatten().flatten().flatten())
            .chain(tier_peers)
        {
            match *peer {
                PeerRef::Selector(s) => selector_live[s as usize] = true,
                PeerRef::Block(b) => block_live[b as usize] = true,
            }
        }
        memo.selectors_live = selector_live.iter().filter(|&&l| l).count();

        // Each endpoint's selector signature: the live selector peers it matches.
        let (mut endpoints, same_endpoints) = self.endpoint_facts(memo);
        let tier_names: Vec<ObjectName> = tiers.iter().map(TierPolicy::table_name).collect();
        let (pod_names, policy_list) =
            self.names(memo, &endpoints, same_endpoints, same_policies, tier_names);
        // Signatures stay while the live selectors do (an endpoint's
        // matches change only with its objects, which makes its memo anew,
        // or with new selectors, which are live).
        if memo.sigs_live != selector_live
            || memo.selector_sigs.items.len() > 2 * endpoints.len() + 1024
        {
            memo.selector_sigs = Interner::new();
            memo.sigs_epoch += 1;
            memo.sigs_live.clone_from(&selector_live);
            for m in &mut endpoints {
                m.sig = NO_SIG;
            }
        }
        let selector_sigs = &mut memo.selector_sigs;
        let mut live_matches = Vec::new();
        for m in &mut endpoints {
            if m.sig == NO_SIG {
                live_matches.clear();
                let live = m
                    .facts
                    .matched
                    .iter()
                    .copied()
                    .filter(|&s| selector_live[s as usize]);
                live_matches.extend(live);
                m.sig = selector_sigs.intern_ref(&live_matches);
            }
        }
        let selector_sigs = &memo.selector_sigs;

        // Address ranges to ipBlock signatures, by longest prefix.
        let live_blocks: Vec<u32> = (0..block_live.len() as u32)
            .filter(|&b| block_live[b as usize])
            .collect();
        memo.blocks_live = live_blocks.len();
        let (block_maps, block_maps_kept) = match memo.block_maps.take() {
            Some(maps) if maps.live == live_blocks => (maps, true),
            _ => (BlockMaps::new(&memo.blocks.items, live_blocks), false),
        };

        // Named-port use decides whether ports are part of identities/groups.
        let policy_named: Vec<[bool; 2]> = resolved.iter().map(|m| m.named).collect();
        let egress_named = policy_named.iter().any(|n| n[1]) || tiers.iter().any(|t| t.named[1]);
        let profiles = &memo.profiles;
        let mut profile_live = vec![false; profiles.items.len()];
        for m in &endpoints {
            profile_live[m.facts.profile as usize] = true;
        }
        let live_profile_count = profile_live.iter().filter(|&&l| l).count();

        // Identities: of every endpoint address, then of every address range.
        let mut identities: Interner<IdentityKey> = Interner::new();
        let mut scratch = std::mem::take(&mut memo.scratch);
        scratch.clear();
        let addresses = &mut scratch.addresses;
        // Neighbouring endpoints (alike pods of a namespace) mostly share one.
        let mut last: Option<(IdentityKey, u32)> = None;
        for (e, m) in endpoints.iter().enumerate() {
            for &ip in m.ips() {
                let block_sig = match ip {
                    IpAddr::V4(a) => block_maps.v4.get(u32::from(a)),
                    IpAddr::V6(a) => block_maps.v6.get(u128::from(a)),
                };
                let profile = if egress_named { m.facts.profile } else { 0 };
                let key = (m.sig, block_sig, profile);
                let id = match last {
                    Some((k, id)) if k == key => id,
                    _ => identities.intern(key),
                };
                last = Some((key, id));
                addresses.push((ip, e as u32, id));
            }
        }
        let others_v4 = block_maps
            .v4
            .map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));
        let others_v6 = block_maps
            .v6
            .map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));

        // Tables: names first, so ids are indices.
        let mut builder = TablesBuilder::new(self.generation);
        builder.set_pod_names(pod_names);
        builder.set_policy_names(policy_list);
        builder.set_tier_info(policies.len() as u32, tier_info(&tiers));
        for _ in &identities.items {
            builder.add_identity();
        }
        builder.set_other_addresses_v4(others_v4);
        builder.set_other_addresses_v6(others_v6);

        let mut policies_by_namespace: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
        for (i, p) in policies.iter().enumerate() {
            policies_by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(i as u32);
        }

        // Groups of local endpoints, numbered by first occurrence; their
        // allow entries are filled below.
        let mut groups: Interner<GroupKey> = Interner::new();
        let enforcement = &mut scratch.enforcement;
        let audited_endpoints = &mut scratch.audited;
        for (e, pod) in self.endpoints.iter().enumerate() {
            if !endpoints[e].local {
                enforcement.push([Enforcement::Remote; 2]);
                audited_endpoints.push(false);
                continue;
            }
            let candidates = policies_by_namespace
                .get(pod.namespace.as_str())
                .into_iter()
                .flatten()
                .map(|&i| (i, &**policies[i as usize], policy_named[i as usize]));
            let keys = group_keys(pod, endpoints[e].facts.profile, candidates);
            let audited = is_audited(self.options, cluster.namespaces.get(&pod.namespace));
            audited_endpoints.push(audited);
            enforcement.push(keys.map(|key| {
                key.map_or(Enforcement::Open, |key| {
                    enforced(GroupId(groups.intern(key)), audited)
                })
            }));
        }

        // Tier groups: per local endpoint, tier and direction, the tier
        // policies selecting it that have rules there, in precedence order;
        // numbered after the NetworkPolicy groups.
        let subjects = self.tier_subjects(&tiers, &endpoints);
        let mut tier_groups: Interner<GroupKey> = Interner::new();
        let first_tier_group = groups.items.len() as u32;
        let tier_shapes: Vec<TierShape> = tiers.iter().map(TierShape::of).collect();
        let endpoint_tiers = &mut scratch.tiers;
        endpoint_tiers.resize(self.endpoints.len(), TierGroups::NONE);
        for (e, selected) in subjects.iter().enumerate() {
            if selected.is_empty() {
                continue;
            }
            let mut groups_of = TierGroups::NONE;
            groups_of.audited = audited_endpoints[e];
            for (tier, direction, key) in
                tier_group_keys(selected, &tier_shapes, endpoints[e].facts.profile)
            {
                let group = GroupId(first_tier_group + tier_groups.intern(key));
                groups_of.set(tier, direction, group);
            }
            endpoint_tiers[e] = groups_of;
        }

        // The groups' allow entries: the last compile's when everything
        // they are made of is the same (which also numbers them alike),
        // else filled anew.
        let fill_inputs = FillInputs {
            sigs_epoch: memo.sigs_epoch,
            identities: std::mem::take(&mut identities.items),
            groups: groups.items,
            tier_groups: tier_groups.items,
            tiers: tiers
                .iter()
                .map(|t| (Arc::clone(t.policy), t.rules.clone()))
                .collect(),
        };
        let (kept_tables, last_rules) = match memo.fill.take() {
            Some(last) if block_maps_kept && last.inputs.same_identities(&fill_inputs) => {
                let same = same_policies_resolved && last.inputs.same_groups(&fill_inputs);
                (same.then_some(last.tables), last.rules)
            }
            _ => (None, RuleIdentities::default()),
        };
        let rules = if let Some(tables) = kept_tables {
            builder.reuse_group_tables(tables);
            last_rules
        } else {
            self.fill_groups(
                &mut builder,
                &fill_inputs,
                &FillContext {
                    policies: &policies,
                    resolved: &resolved,
                    tiers: &tiers,
                    profiles,
                    selector_sigs,
                    block_maps: &block_maps,
                    selector_count: memo.selectors.items.len(),
                    block_count: memo.blocks.items.len(),
                },
                last_rules,
            )
        };

        // Nodes, known by the host addresses their pods report; this node
        // also by the addresses it was given.
        let mut nodes: Interner<Vec<IpAddr>> = Interner::new();
        let local_node = (!self.options.node_addresses.is_empty()).then(|| {
            let mut ips = self.options.node_addresses.clone();
            ips.sort_unstable();
            ips.dedup();
            NodeId(nodes.intern(ips))
        });
        let endpoint_node = &mut scratch.nodes;
        endpoint_node.extend(endpoints.iter().map(|m| {
            let host_ips = m.host_ips();
            if let Some(local) = local_node
                && m.local
            {
                for &ip in host_ips {
                    builder.add_node_address(ip, local);
                }
                Some(local)
            } else if host_ips.is_empty() {
                None
            } else if host_ips.is_sorted() {
                Some(NodeId(nodes.intern_ref(host_ips)))
            } else {
                let mut ips = host_ips.to_vec();
                ips.sort_unstable();
                Some(NodeId(nodes.intern(ips)))
            }
        }));
        for (n, node_ips) in nodes.items.iter().enumerate() {
            for &ip in node_ips {
                builder.add_node_address(ip, NodeId(n as u32));
            }
        }

        // Pod addresses.
        let v4 = addresses.iter().filter(|a| a.0.is_ipv4()).count();
        builder.reserve_pod_addresses(v4, addresses.len() - v4);
        for &(ip, e, id) in addresses.iter() {
            let [ingress, egress] = enforcement[e as usize];
            let entry = PodAddress {
                identity: IdentityId(id),
                pod: PodId(e),
                egress,
                ingress,
                node: endpoint_node[e as usize],
                tiers: endpoint_tiers[e as usize],
            };
            if let Err(err) = builder.add_pod_address(ip, entry) {
                self.warnings.push(err.to_string());
            }
        }

        // What the next compile may reuse.
        memo.block_maps = Some(block_maps);
        memo.profiles_live = live_profile_count;
        memo.policies = resolved;
        memo.endpoints = endpoints;
        memo.scratch = scratch;
        memo.tier_policies = tiers.iter().map(|t| Arc::clone(t.policy)).collect();
        memo.replica = Some(ReplicaMemo {
            egress_named,
            tiers: tier_shapes,
            local_node,
        });
        let tables = builder.build();
        memo.fill = Some(FillMemo {
            inputs: fill_inputs,
            tables: Arc::clone(tables.group_tables()),
            rules,
        });
        Compiled {
            tables,
            warnings: self.warnings,
            notices,
        }
    }
}
