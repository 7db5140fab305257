//! A group's allow entries: each rule's ports, granted per identity the
//! rule admits, gathered per identity before they go into the tables.
//!
//! The group tables depend only on the identities, the groups and the
//! policies ([`FillInputs`]); a compile whose inputs are the last one's
//! (a new pod like existing ones) takes the last tables' instead of
//! filling them again.

use std::sync::Arc;

use podfence_datapath::TablesBuilder;
use podfence_datapath::tables::{
    BroadSetId, Direction, GroupId, GroupTables, IdentityId, PolicyId, PortRule, RuleAction,
    direction_index,
};
use rustc_hash::FxHashMap;

use super::identities::{IdentityKey, NOT_A_POD};
use super::memo::{Interner, PolicyMemo};
use super::pass::Pass;
use super::peers::{BlockMaps, PeerRef, resolve_rule_peers};
use super::tiers::{TierPolicy, rule_action};
use crate::model::{ClusterNetworkPolicy, NamedPort, NetworkPolicy, PolicyPort, PortSpec};

/// A group: its direction, its policies (indices into the compile's
/// NetworkPolicies, or its tier policies), the named-port profile its
/// ingress rules resolve on (0: none).
pub(super) type GroupKey = (Direction, Vec<u32>, u32);

/// Everything the group tables are made of beyond the policies' own
/// objects: equal inputs (and the same policy objects) give equal tables,
/// numbering included.
pub(super) struct FillInputs {
    /// `Memo::sigs_epoch`: identity keys name selector signatures of it.
    pub(super) sigs_epoch: u64,
    /// The identity keys in id order.
    pub(super) identities: Vec<IdentityKey>,
    /// NetworkPolicy groups, then tier groups, in id order.
    pub(super) groups: Vec<GroupKey>,
    pub(super) tier_groups: Vec<GroupKey>,
    /// The tier policies in precedence order with their rules' peers
    /// (node peers resolve from the nodes, not the policy alone).
    pub(super) tiers: Vec<(Arc<ClusterNetworkPolicy>, TierRules)>,
}

/// `[direction][rule]` → a tier rule's peers (`TierPolicy::rules`).
pub(super) type TierRules = [Vec<Option<Vec<PeerRef>>>; 2];

impl FillInputs {
    /// Whether the identities are `other`'s, and mean the same selector
    /// signatures (the ipBlock signatures the caller checks).
    pub(super) fn same_identities(&self, other: &Self) -> bool {
        self.sigs_epoch == other.sigs_epoch && self.identities == other.identities
    }

    /// With [`Self::same_identities`], whether the groups and the tier
    /// policies (the same objects, their peers alike) are `other`'s too.
    pub(super) fn same_groups(&self, other: &Self) -> bool {
        self.groups == other.groups
            && self.tier_groups == other.tier_groups
            && self.tiers.len() == other.tiers.len()
            && self
                .tiers
                .iter()
                .zip(&other.tiers)
                .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0) && a.1 == b.1)
    }
}

/// The last compile's group tables, their inputs and the identities its
/// rules' peers admitted.
pub(super) struct FillMemo {
    pub(super) inputs: FillInputs,
    pub(super) tables: Arc<GroupTables>,
    pub(super) rules: RuleIdentities,
}

/// The identities each rule's peers admit ([`resolve_rule_peers`]), by the
/// peers; valid for one list of identities.
#[derive(Default)]
pub(super) struct RuleIdentities {
    /// Rules with peers, by their peers.
    by_peers: FxHashMap<Vec<PeerRef>, Vec<(u32, bool)>>,
    /// Rules without peers: every identity.
    every: Option<Vec<(u32, bool)>>,
}

impl RuleIdentities {
    /// The identities `peers` admit: this compile's entry, else the last
    /// compile's (moved over, so that entries no rule uses any more go),
    /// else `resolve`d.
    fn get(
        &mut self,
        peers: Option<&[PeerRef]>,
        last: &mut Self,
        resolve: impl FnOnce() -> Vec<(u32, bool)>,
    ) -> &[(u32, bool)] {
        let Some(peers) = peers else {
            return self
                .every
                .get_or_insert_with(|| last.every.take().unwrap_or_else(resolve));
        };
        if !self.by_peers.contains_key(peers) {
            let (key, admitted) = last
                .by_peers
                .remove_entry(peers)
                .unwrap_or_else(|| (peers.to_vec(), resolve()));
            self.by_peers.insert(key, admitted);
        }
        &self.by_peers[peers]
    }
}

/// Which identities each selector peer and each ipBlock admits; made when
/// a rule's identities are not known from the last compile.
struct PeerIndex {
    by_selector: Vec<Vec<u32>>,
    by_block: Vec<Vec<u32>>,
    /// A zero per identity ([`resolve_rule_peers`]).
    marks: Vec<u8>,
}

impl PeerIndex {
    fn new(identities: &[IdentityKey], cx: &FillContext<'_, '_>) -> Self {
        let mut by_selector: Vec<Vec<u32>> = vec![Vec::new(); cx.selector_count];
        let mut by_block: Vec<Vec<u32>> = vec![Vec::new(); cx.block_count];
        for (id, &(sel_sig, block_sig, _)) in identities.iter().enumerate() {
            if sel_sig != NOT_A_POD {
                for &s in &cx.selector_sigs.items[sel_sig as usize] {
                    by_selector[s as usize].push(id as u32);
                }
            }
            for &b in &cx.block_maps.sigs.items[block_sig as usize] {
                by_block[b as usize].push(id as u32);
            }
        }
        Self {
            by_selector,
            by_block,
            marks: vec![0; identities.len()],
        }
    }
}

/// What filling the group tables reads of one compile.
pub(super) struct FillContext<'c, 'a> {
    pub(super) policies: &'c [&'a Arc<NetworkPolicy>],
    pub(super) resolved: &'c [PolicyMemo],
    pub(super) tiers: &'c [TierPolicy<'a>],
    pub(super) profiles: &'c Interner<Vec<NamedPort>>,
    pub(super) selector_sigs: &'c Interner<Vec<u32>>,
    pub(super) block_maps: &'c BlockMaps,
    /// How many selector peers and ipBlocks the memo knows.
    pub(super) selector_count: usize,
    pub(super) block_count: usize,
}

impl Pass<'_> {
    /// Adds the groups of `inputs` to `builder` in id order, each with its
    /// allow entries and broad rules. `last_rules`: the identities the
    /// rules' peers admitted in the last compile, if its identities were
    /// these; returns this compile's.
    pub(super) fn fill_groups(
        &self,
        builder: &mut TablesBuilder,
        inputs: &FillInputs,
        cx: &FillContext<'_, '_>,
        last_rules: RuleIdentities,
    ) -> RuleIdentities {
        let mut fill = GroupFill {
            builder,
            scratch: GroupScratch::new(inputs.identities.len()),
            rules: RuleIdentities::default(),
            last_rules,
            peer_index: None,
            cx,
            broad_sets: FxHashMap::default(),
            identities: &inputs.identities,
            broad_threshold: self.options.broad_threshold,
        };
        for (direction, members, profile) in &inputs.groups {
            let d = direction_index(*direction);
            let ids: Vec<PolicyId> = members.iter().map(|&p| PolicyId(p)).collect();
            let g = fill.builder.add_group(*direction, &ids);
            let ingress_ports = &cx.profiles.items[*profile as usize];
            for &p in members {
                let policy = cx.policies[p as usize];
                let resolved = &cx.resolved[p as usize];
                let rules = if d == 0 {
                    &policy.ingress
                } else {
                    &policy.egress
                };
                for (r, rule) in rules.iter().enumerate() {
                    let ctx = RulePorts {
                        policy: PolicyId(p),
                        rule: r as u16,
                        ports: &rule.ports,
                        action: RuleAction::Allow,
                    };
                    fill.add_rule(
                        g,
                        d,
                        ingress_ports,
                        resolved.named[1],
                        resolved.rules[d][r].as_deref(),
                        &ctx,
                    );
                }
            }
            fill.flush(g);
        }
        let tier_base = cx.policies.len() as u32;
        for (direction, members, profile) in &inputs.tier_groups {
            let d = direction_index(*direction);
            let ids: Vec<PolicyId> = members.iter().map(|&t| PolicyId(tier_base + t)).collect();
            let g = fill.builder.add_group(*direction, &ids);
            let ingress_ports = &cx.profiles.items[*profile as usize];
            for &t in members {
                let tp = &cx.tiers[t as usize];
                for (r, rule) in tp.policy.rules(d == 0).iter().enumerate() {
                    // A rule that fails closed (no peers resolved) matches
                    // every port too.
                    let fails_closed = tp.rules[d][r].is_none();
                    let ctx = RulePorts {
                        policy: PolicyId(tier_base + t),
                        rule: r as u16,
                        ports: if fails_closed { &[] } else { &rule.ports },
                        action: rule_action(rule.action),
                    };
                    fill.add_rule(
                        g,
                        d,
                        ingress_ports,
                        tp.named[1],
                        tp.rules[d][r].as_deref(),
                        &ctx,
                    );
                }
            }
            fill.flush(g);
        }
        fill.rules
    }
}

/// A rule's ports, ready to be granted to the identities it admits.
pub(super) struct RulePorts<'a> {
    pub(super) policy: PolicyId,
    pub(super) rule: u16,
    /// `ports` (empty: every port of every protocol).
    pub(super) ports: &'a [PolicyPort],
    /// What the rule does (NetworkPolicy: allow).
    pub(super) action: RuleAction,
}

impl RulePorts<'_> {
    /// Appends the rule's port ranges; `named` is the pod whose named ports
    /// resolve (`None`: named ports match nothing); `plain` whether to
    /// include the ports that are not named.
    pub(super) fn push(&self, named: Option<&[NamedPort]>, plain: bool, out: &mut Vec<PortRule>) {
        if self.ports.is_empty() {
            if plain {
                out.push(PortRule {
                    action: self.action,
                    ..PortRule::any(self.policy, self.rule)
                });
            }
            return;
        }
        for p in self.ports {
            let protocol = p.protocol.ip_protocol().0;
            let range = |first, last| PortRule {
                policy: self.policy,
                rule: self.rule,
                protocol,
                first,
                last,
                action: self.action,
            };
            match &p.port {
                PortSpec::Any if plain => out.push(range(0, u16::MAX)),
                PortSpec::Range(a, b) if plain => out.push(range(*a, *b)),
                PortSpec::Any | PortSpec::Range(..) => {}
                PortSpec::Named(name) => {
                    for np in named.unwrap_or_default() {
                        if np.name == *name && np.protocol == p.protocol {
                            out.push(range(np.port, np.port));
                        }
                    }
                }
            }
        }
    }
}

/// Per-identity port rules of the group being compiled, reused across groups.
pub(super) struct GroupScratch {
    pub(super) rules: Vec<Vec<PortRule>>,
    pub(super) touched: Vec<u32>,
}

impl GroupScratch {
    pub(super) fn new(identities: usize) -> Self {
        Self {
            rules: vec![Vec::new(); identities],
            touched: Vec::new(),
        }
    }

    pub(super) fn rules_for(&mut self, identity: u32) -> &mut Vec<PortRule> {
        let slot = &mut self.rules[identity as usize];
        if slot.is_empty() {
            self.touched.push(identity);
        }
        slot
    }

    pub(super) fn flush(&mut self, builder: &mut TablesBuilder, group: GroupId) {
        builder.reserve_allow(self.touched.len());
        for id in self.touched.drain(..) {
            let rules = std::mem::take(&mut self.rules[id as usize]);
            if !rules.is_empty() {
                let set = builder.add_port_set(rules);
                builder.allow(group, IdentityId(id), set);
            }
        }
    }
}

/// What building a group's entries needs beyond the group: the builder and
/// caches shared by every group of one compile.
struct GroupFill<'a, 'c> {
    builder: &'a mut TablesBuilder,
    scratch: GroupScratch,
    /// The identities of this compile's rules, and of the last one's.
    rules: RuleIdentities,
    last_rules: RuleIdentities,
    /// Made at the first rule that is in neither.
    peer_index: Option<PeerIndex>,
    cx: &'a FillContext<'c, 'c>,
    broad_sets: FxHashMap<(Option<Vec<PeerRef>>, Option<u32>), BroadSetId>,
    identities: &'a [IdentityKey],
    broad_threshold: usize,
}

impl GroupFill<'_, '_> {
    /// Grants one rule of group `g` (direction `d`: 0 ingress, 1 egress)
    /// to the identities its peers admit. `ingress_ports` are the protected
    /// pods' named ports (the group's profile); `egress_named` whether the
    /// rule's policy uses named ports in egress rules.
    fn add_rule(
        &mut self,
        g: GroupId,
        d: usize,
        ingress_ports: &[NamedPort],
        egress_named: bool,
        rule_peers: Option<&[PeerRef]>,
        ctx: &RulePorts<'_>,
    ) {
        let identities = self.identities;
        let profiles = self.cx.profiles;
        let (cx, peer_index) = (self.cx, &mut self.peer_index);
        let admitted = self.rules.get(rule_peers, &mut self.last_rules, || {
            let index = peer_index.get_or_insert_with(|| PeerIndex::new(identities, cx));
            resolve_rule_peers(
                rule_peers,
                identities.len(),
                &index.by_selector,
                &index.by_block,
                &mut index.marks,
            )
        });
        if admitted.len() > self.broad_threshold {
            // Ports that do not depend on the peer: one port set for the
            // whole peer set.
            let mut plain = Vec::new();
            let named = (d == 0).then_some(ingress_ports);
            ctx.push(named, true, &mut plain);
            if !plain.is_empty() {
                let set = self.builder.add_port_set(plain);
                let builder = &mut *self.builder;
                let broad = *self
                    .broad_sets
                    .entry((rule_peers.map(<[PeerRef]>::to_vec), None))
                    .or_insert_with(|| {
                        let members = admitted.iter().map(|&(id, _)| IdentityId(id));
                        builder.add_broad_set(members.collect())
                    });
                self.builder.allow_broad(g, broad, set);
            }
            // Egress named ports: one peer set per named-port profile.
            if d == 1 && egress_named {
                // In the order of the ports, not of ids, which depend on
                // what came before.
                let mut by_profile: Vec<u32> = Vec::new();
                for &(id, via_selector) in admitted {
                    let (sel_sig, _, profile) = identities[id as usize];
                    if via_selector && sel_sig != NOT_A_POD {
                        by_profile.push(profile);
                    }
                }
                by_profile.sort_unstable_by(|a, b| {
                    profiles.items[*a as usize].cmp(&profiles.items[*b as usize])
                });
                by_profile.dedup();
                for profile in by_profile {
                    let mut named = Vec::new();
                    let ports = &profiles.items[profile as usize];
                    ctx.push(Some(ports), false, &mut named);
                    if named.is_empty() {
                        continue;
                    }
                    let set = self.builder.add_port_set(named);
                    let builder = &mut *self.builder;
                    let broad = *self
                        .broad_sets
                        .entry((rule_peers.map(<[PeerRef]>::to_vec), Some(profile)))
                        .or_insert_with(|| {
                            let members = admitted.iter().filter(|&&(id, via)| {
                                let (sel_sig, _, q) = identities[id as usize];
                                via && sel_sig != NOT_A_POD && q == profile
                            });
                            builder.add_broad_set(members.map(|&(id, _)| IdentityId(id)).collect())
                        });
                    self.builder.allow_broad(g, broad, set);
                }
            }
            return;
        }
        for &(id, via_selector) in admitted {
            let named = if d == 0 {
                Some(ingress_ports)
            } else {
                let (sel_sig, _, profile) = identities[id as usize];
                (via_selector && sel_sig != NOT_A_POD)
                    .then(|| profiles.items[profile as usize].as_slice())
            };
            ctx.push(named, true, self.scratch.rules_for(id));
        }
    }

    /// Moves the gathered per-identity rules of `g` into the tables.
    fn flush(&mut self, g: GroupId) {
        self.scratch.flush(self.builder, g);
    }
}
