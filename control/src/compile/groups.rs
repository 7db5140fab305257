//! A group's allow entries: each rule's ports, granted per identity the
//! rule admits, gathered per identity before they go into the tables.

use podfence_datapath::TablesBuilder;
use podfence_datapath::tables::{BroadSetId, GroupId, IdentityId, PolicyId, PortRule, RuleAction};
use rustc_hash::FxHashMap;

use super::identities::{IdentityKey, NOT_A_POD};
use super::memo::Interner;
use super::peers::{PeerRef, resolve_rule_peers};
use crate::model::{NamedPort, PolicyPort, PortSpec};

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
pub(super) struct GroupFill<'a> {
    pub(super) builder: &'a mut TablesBuilder,
    pub(super) scratch: GroupScratch,
    pub(super) rule_identities: FxHashMap<Option<Vec<PeerRef>>, Vec<(u32, bool)>>,
    pub(super) broad_sets: FxHashMap<(Option<Vec<PeerRef>>, Option<u32>), BroadSetId>,
    pub(super) identities: &'a Interner<IdentityKey>,
    pub(super) profiles: &'a Interner<Vec<NamedPort>>,
    pub(super) by_selector: &'a [Vec<u32>],
    pub(super) by_block: &'a [Vec<u32>],
    pub(super) broad_threshold: usize,
}

impl GroupFill<'_> {
    /// Grants one rule of group `g` (direction `d`: 0 ingress, 1 egress)
    /// to the identities its peers admit. `ingress_ports` are the protected
    /// pods' named ports (the group's profile); `egress_named` whether the
    /// rule's policy uses named ports in egress rules.
    pub(super) fn add_rule(
        &mut self,
        g: GroupId,
        d: usize,
        ingress_ports: &[NamedPort],
        egress_named: bool,
        rule_peers: Option<&[PeerRef]>,
        ctx: &RulePorts<'_>,
    ) {
        let identities = self.identities;
        let profiles = self.profiles;
        let (by_selector, by_block) = (self.by_selector, self.by_block);
        let admitted = self
            .rule_identities
            .entry(rule_peers.map(<[PeerRef]>::to_vec))
            .or_insert_with(|| {
                resolve_rule_peers(rule_peers, identities.items.len(), by_selector, by_block)
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
                for &(id, via_selector) in admitted.iter() {
                    let (sel_sig, _, profile) = identities.items[id as usize];
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
                                let (sel_sig, _, q) = identities.items[id as usize];
                                via && sel_sig != NOT_A_POD && q == profile
                            });
                            builder.add_broad_set(members.map(|&(id, _)| IdentityId(id)).collect())
                        });
                    self.builder.allow_broad(g, broad, set);
                }
            }
            return;
        }
        for &(id, via_selector) in admitted.iter() {
            let named = if d == 0 {
                Some(ingress_ports)
            } else {
                let (sel_sig, _, profile) = identities.items[id as usize];
                (via_selector && sel_sig != NOT_A_POD)
                    .then(|| profiles.items[profile as usize].as_slice())
            };
            ctx.push(named, true, self.scratch.rules_for(id));
        }
    }

    /// Moves the gathered per-identity rules of `g` into the tables.
    pub(super) fn flush(&mut self, g: GroupId) {
        self.scratch.flush(self.builder, g);
    }
}
