//! Rule peers: selector peers and ipBlocks interned, each policy's rules
//! resolved to them, and the identities each resolved rule admits;
//! address ranges mapped to the ipBlocks that contain them.

use std::collections::BTreeSet;
use std::sync::Arc;

use podfence_datapath::Prefix;
use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::prefix::{AddrBits, Cidr};

use super::memo::{ByName, Interner, Memo, NameKey, PolicyMemo};
use super::pass::Pass;
use crate::model::{IpBlock, LabelSelector, Namespace, NetworkPolicy, Peer, Pod, PortSpec, Rule};

/// Interned selector peer: the namespace scope and the pod selector.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum SelectorPeer {
    /// Pods of one namespace (a peer without `namespaceSelector`).
    InNamespace(String, LabelSelector),
    /// Pods of every namespace the first selector matches.
    InNamespaces(LabelSelector, LabelSelector),
}

impl SelectorPeer {
    pub(super) fn from_peer(
        policy_namespace: &str,
        namespaces: Option<&LabelSelector>,
        pods: &LabelSelector,
    ) -> Self {
        match namespaces {
            None => Self::InNamespace(policy_namespace.to_owned(), pods.clone()),
            Some(ns) => Self::InNamespaces(ns.clone(), pods.clone()),
        }
    }

    /// Whether it selects `pod`, whose namespace object is `namespace`.
    pub(super) fn matches(&self, pod: &Pod, namespace: Option<&Namespace>) -> bool {
        match self {
            Self::InNamespace(ns, pods) => pod.namespace == *ns && pods.matches(&pod.labels),
            Self::InNamespaces(ns_sel, pods) => {
                namespace.is_some_and(|ns| ns_sel.matches(&ns.labels)) && pods.matches(&pod.labels)
            }
        }
    }
}

/// What a rule's peer resolves to before identities exist.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PeerRef {
    Selector(u32),
    Block(u32),
}

/// Address ranges to ipBlock signatures, by longest prefix.
pub(super) struct BlockMaps {
    /// The live block ids they were made from.
    pub(super) live: Vec<u32>,
    pub(super) sigs: Interner<Vec<u32>>,
    pub(super) v4: IntervalMap<u32, u32>,
    pub(super) v6: IntervalMap<u128, u32>,
}

impl Pass<'_> {
    /// Resolves every policy's rule peers to selector and block ids,
    /// reusing the last compile's result for a policy that is the same
    /// object; returns them in policy order, whether the policies are
    /// the last compile's names, and whether they are its objects too.
    pub(super) fn resolve_policies(&self, memo: &mut Memo) -> (Vec<PolicyMemo>, bool, bool) {
        let mut last = std::mem::take(&mut memo.policies);
        let mut previous = ByName::new(&mut last);
        let mut resolved = Vec::with_capacity(self.cluster.policies.len());
        let mut all_kept = true;
        for policy in self.cluster.policies.values() {
            let same_policy = |m: &PolicyMemo| Arc::ptr_eq(&m.policy, policy);
            let entry = match previous.take_fast(same_policy, policy.name_key()) {
                Some(m) if Arc::ptr_eq(&m.policy, policy) => m,
                _ => {
                    all_kept = false;
                    resolve_policy(policy, &mut memo.selectors, &mut memo.blocks)
                }
            };
            resolved.push(entry);
        }
        let same_names = previous.same_names();
        (resolved, same_names, same_names && all_kept)
    }
}

/// Resolves a policy's rule peers, interning their selectors and blocks.
pub(super) fn resolve_policy(
    policy: &Arc<NetworkPolicy>,
    selectors: &mut Interner<SelectorPeer>,
    blocks: &mut Interner<IpBlock>,
) -> PolicyMemo {
    let mut rules: [Vec<Option<Vec<PeerRef>>>; 2] = [Vec::new(), Vec::new()];
    for (d, direction) in [&policy.ingress, &policy.egress].into_iter().enumerate() {
        for rule in direction {
            rules[d].push((!rule.peers.is_empty()).then(|| {
                rule.peers
                    .iter()
                    .map(|peer| match peer {
                        Peer::Pods { namespaces, pods } => PeerRef::Selector(selectors.intern(
                            SelectorPeer::from_peer(&policy.namespace, namespaces.as_ref(), pods),
                        )),
                        Peer::IpBlock(b) => PeerRef::Block(blocks.intern(b.clone())),
                    })
                    .collect()
            }));
        }
    }
    let named = |rules: &[Rule]| {
        rules
            .iter()
            .any(|r| r.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_))))
    };
    PolicyMemo {
        policy: Arc::clone(policy),
        rules,
        named: [named(&policy.ingress), named(&policy.egress)],
    }
}

/// The identities a rule's peers admit, ascending, each with whether a
/// selector peer (or the absence of peers) admitted it, which is what lets
/// egress named ports resolve on it. `by_selector` and `by_block` list the
/// identities each selector and block admits, ascending; `marks` is one
/// zero per identity, left zero.
pub(super) fn resolve_rule_peers(
    peers: Option<&[PeerRef]>,
    identity_count: usize,
    by_selector: &[Vec<u32>],
    by_block: &[Vec<u32>],
    marks: &mut [u8],
) -> Vec<(u32, bool)> {
    const BLOCK: u8 = 1;
    const SELECTOR: u8 = 2;
    let Some(peers) = peers else {
        return (0..identity_count as u32).map(|id| (id, true)).collect();
    };
    // One peer (most rules): its list as it is.
    if let [peer] = peers {
        return match *peer {
            PeerRef::Selector(s) => by_selector[s as usize]
                .iter()
                .map(|&id| (id, true))
                .collect(),
            PeerRef::Block(b) => by_block[b as usize].iter().map(|&id| (id, false)).collect(),
        };
    }
    let mut touched: Vec<u32> = Vec::new();
    for peer in peers {
        match *peer {
            PeerRef::Selector(s) => {
                for &id in &by_selector[s as usize] {
                    let mark = &mut marks[id as usize];
                    if *mark == 0 {
                        touched.push(id);
                    }
                    *mark = SELECTOR;
                }
            }
            PeerRef::Block(b) => {
                for &id in &by_block[b as usize] {
                    let mark = &mut marks[id as usize];
                    if *mark == 0 {
                        touched.push(id);
                        *mark = BLOCK;
                    }
                }
            }
        }
    }
    touched.sort_unstable();
    touched
        .into_iter()
        .map(|id| {
            let via_selector = marks[id as usize] == SELECTOR;
            marks[id as usize] = 0;
            (id, via_selector)
        })
        .collect()
}

impl BlockMaps {
    /// The maps of the blocks `live` (ids into `blocks`, ascending).
    pub(super) fn new(blocks: &[IpBlock], live: Vec<u32>) -> Self {
        let live_blocks: Vec<(u32, &IpBlock)> =
            live.iter().map(|&b| (b, &blocks[b as usize])).collect();
        let mut sigs: Interner<Vec<u32>> = Interner::new();
        sigs.intern(Vec::new());
        let (v4_cidrs, v6_cidrs) = split_families(live_blocks.iter().map(|(_, b)| *b));
        let v4 = block_signature_map(&live_blocks, &v4_cidrs, &mut sigs, |c| Prefix::V4(*c));
        let v6 = block_signature_map(&live_blocks, &v6_cidrs, &mut sigs, |c| Prefix::V6(*c));
        Self { live, sigs, v4, v6 }
    }
}

pub(super) fn split_families<'a>(
    blocks: impl Iterator<Item = &'a IpBlock>,
) -> (Vec<Cidr<u32>>, Vec<Cidr<u128>>) {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for b in blocks {
        for p in std::iter::once(&b.cidr).chain(&b.except) {
            match p {
                Prefix::V4(c) => v4.insert(*c),
                Prefix::V6(c) => v6.insert(*c),
            };
        }
    }
    (v4.into_iter().collect(), v6.into_iter().collect())
}

/// For addresses whose longest matching prefix (among all cidrs and excepts)
/// is `p`, the blocks containing them are those whose cidr covers `p` and
/// none of whose excepts does; prefixes nest or are disjoint, so this is
/// exact.
pub(super) fn block_signature_map<A: AddrBits>(
    blocks: &[(u32, &IpBlock)],
    prefixes: &[Cidr<A>],
    sigs: &mut Interner<Vec<u32>>,
    wrap: impl Fn(&Cidr<A>) -> Prefix,
) -> IntervalMap<A, u32> {
    let entries = prefixes.iter().map(|c| {
        let p = wrap(c);
        let sig: Vec<u32> = blocks
            .iter()
            .filter(|(_, b)| b.cidr.covers(&p) && !b.except.iter().any(|e| e.covers(&p)))
            .map(|&(id, _)| id)
            .collect();
        (*c, sigs.intern(sig))
    });
    let entries: Vec<_> = entries.collect();
    IntervalMap::from_prefixes(entries, 0)
}
