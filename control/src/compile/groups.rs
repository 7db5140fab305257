//! A group's allow entries: each rule's ports, granted per identity the
//! rule admits, gathered per identity before they go into the tables.

use podfence_datapath::TablesBuilder;
use podfence_datapath::tables::{GroupId, IdentityId, PolicyId, PortRule};

use crate::model::{NamedPort, PortSpec, Rule};

/// A rule's ports, ready to be granted to the identities it admits.
pub(super) struct RulePorts<'a> {
    pub(super) policy: PolicyId,
    pub(super) rule: u16,
    pub(super) spec: &'a Rule,
}

impl RulePorts<'_> {
    /// Appends the rule's port ranges; `named` is the pod whose named ports
    /// resolve (`None`: named ports match nothing); `plain` whether to
    /// include the ports that are not named.
    pub(super) fn push(&self, named: Option<&[NamedPort]>, plain: bool, out: &mut Vec<PortRule>) {
        if self.spec.ports.is_empty() {
            if plain {
                out.push(PortRule::any(self.policy, self.rule));
            }
            return;
        }
        for p in &self.spec.ports {
            let protocol = p.protocol.ip_protocol().0;
            let range = |first, last| PortRule {
                policy: self.policy,
                rule: self.rule,
                protocol,
                first,
                last,
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
