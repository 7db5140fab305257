//! Cluster state to datapath tables.
//!
//! The compiler does all of NetworkPolicy's set algebra once, so that the
//! datapath's classifier is a few lookups (see `podfence_datapath::tables`):
//!
//! - **peer selectors** (`podSelector`/`namespaceSelector` pairs) and
//!   **ipBlocks** are interned; each pod gets the set of selector peers it
//!   matches, each address range the set of ipBlocks that contain it (holes
//!   from `except` included), resolved by longest prefix;
//! - an **identity** is a distinct combination of those sets (plus, when
//!   egress rules use named ports, the pod's named ports): addresses that no
//!   rule can tell apart share one;
//! - a **group** is the list of policies that isolate a local pod in one
//!   direction (plus its named ports when those policies use named ports);
//!   pods with the same group share its allow entries;
//! - for each group and each identity some rule of the group admits, one
//!   entry holds the union of the admitted protocol/port ranges, each range
//!   tagged with its policy and rule for attribution.
//!
//! Named ports resolve per pod by name and protocol: for ingress on the
//! protected pod, for egress on the destination pod. For egress they resolve
//! only when the destination is a pod reached through a selector peer or a
//! rule without peers; a destination matched by an `ipBlock`, or an address
//! that is no pod, has no named ports.

use std::collections::BTreeSet;
use std::net::IpAddr;

use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::prefix::{AddrBits, Cidr};
use podfence_datapath::tables::{
    BroadSetId, Direction, Enforcement, GroupId, IdentityId, PodAddress, PodId, PolicyId, PortRule,
};
use podfence_datapath::{Prefix, Tables, TablesBuilder};
use rustc_hash::FxHashMap;

use crate::model::{Cluster, IpBlock, LabelSelector, NamedPort, Peer, Pod, PortSpec, Rule};

/// Which pods this node enforces policy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locality {
    /// Every pod (offline evaluation of a whole cluster).
    AllPods,
    /// Pods whose `spec.nodeName` is this node; other pods are peers only.
    Node(String),
}

impl Locality {
    /// Whether `pod` is one of the pods enforced here.
    #[must_use]
    pub fn includes(&self, pod: &Pod) -> bool {
        match self {
            Self::AllPods => true,
            Self::Node(n) => pod.node.as_deref() == Some(n.as_str()),
        }
    }
}

/// Compiler settings.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Generation number stamped on the tables.
    pub generation: u64,
    /// Which pods are enforced here.
    pub locality: Locality,
    /// A rule whose peers are more identities than this is stored once as a
    /// broad peer set (a bit per identity) instead of one entry per identity
    /// in every group that has it. Verdicts do not depend on it; table size
    /// and classify cost do.
    pub broad_threshold: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            generation: 1,
            locality: Locality::AllPods,
            broad_threshold: BROAD_THRESHOLD,
        }
    }
}

/// Compiled tables and what the compiler noticed on the way.
#[derive(Debug)]
pub struct Compiled {
    /// The tables.
    pub tables: Tables,
    /// Problems that did not stop compilation (e.g. two pods on one address).
    pub warnings: Vec<String>,
}

/// Interned selector peer: the namespace scope and the pod selector.
#[derive(Clone, PartialEq, Eq, Hash)]
enum SelectorPeer<'a> {
    /// Pods of one namespace (a peer without `namespaceSelector`).
    InNamespace(&'a str, &'a LabelSelector),
    /// Pods of every namespace the first selector matches.
    InNamespaces(&'a LabelSelector, &'a LabelSelector),
}

/// What a rule's peer resolves to before identities exist.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PeerRef {
    Selector(u32),
    Block(u32),
}

/// Identity key: selector-peer signature (`NOT_A_POD` for other addresses),
/// ipBlock signature, and the named-port profile of a pod (0 when unused).
type IdentityKey = (u32, u32, u32);
const NOT_A_POD: u32 = u32::MAX;

/// Default of [`CompileOptions::broad_threshold`].
pub const BROAD_THRESHOLD: usize = 32;

struct Interner<K> {
    ids: FxHashMap<K, u32>,
    items: Vec<K>,
}

impl<K: Clone + Eq + std::hash::Hash> Interner<K> {
    fn new() -> Self {
        Self {
            ids: FxHashMap::default(),
            items: Vec::new(),
        }
    }
    fn intern(&mut self, key: K) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.items.len() as u32;
        self.ids.insert(key.clone(), id);
        self.items.push(key);
        id
    }
}

/// Compiles a cluster state into tables.
#[must_use]
pub fn compile(cluster: &Cluster, options: &CompileOptions) -> Compiled {
    Compiler::new(cluster, options).run()
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    options: &'a CompileOptions,
    /// Pods that own their addresses, in name order.
    endpoints: Vec<&'a Pod>,
    /// Endpoint indices by namespace.
    by_namespace: FxHashMap<&'a str, Vec<u32>>,
    warnings: Vec<String>,
}

/// Peers of every rule, resolved to selector and block indices.
struct PolicyPeers {
    /// `[policy][direction][rule]` → `None` for "every peer".
    rules: Vec<[Vec<Option<Vec<PeerRef>>>; 2]>,
}

impl<'a> Compiler<'a> {
    fn new(cluster: &'a Cluster, options: &'a CompileOptions) -> Self {
        let endpoints: Vec<&Pod> = cluster
            .pods
            .values()
            .filter(|p| p.is_policy_endpoint())
            .collect();
        let mut by_namespace: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
        for (i, p) in endpoints.iter().enumerate() {
            by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(i as u32);
        }
        Self {
            cluster,
            options,
            endpoints,
            by_namespace,
            warnings: Vec::new(),
        }
    }

    fn is_local(&self, pod: &Pod) -> bool {
        self.options.locality.includes(pod)
    }

    /// Endpoints of `namespace` matching `selector`.
    fn select_in(&self, namespace: &str, selector: &LabelSelector, out: &mut Vec<u32>) {
        if let Some(pods) = self.by_namespace.get(namespace) {
            out.extend(
                pods.iter()
                    .copied()
                    .filter(|&i| selector.matches(&self.endpoints[i as usize].labels)),
            );
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one pass, in the order the module doc describes"
    )]
    fn run(mut self) -> Compiled {
        let cluster = self.cluster;
        let policies: Vec<_> = cluster.policies.values().collect();

        // Selector peers and ipBlocks, interned; every rule's peers resolved.
        let mut selectors: Interner<SelectorPeer<'_>> = Interner::new();
        let mut blocks: Interner<&IpBlock> = Interner::new();
        let mut peers = PolicyPeers {
            rules: Vec::with_capacity(policies.len()),
        };
        for p in &policies {
            let mut per_dir: [Vec<Option<Vec<PeerRef>>>; 2] = [Vec::new(), Vec::new()];
            for (d, rules) in [&p.ingress, &p.egress].into_iter().enumerate() {
                for rule in rules {
                    per_dir[d].push((!rule.peers.is_empty()).then(|| {
                        rule.peers
                            .iter()
                            .map(|peer| match peer {
                                Peer::Pods {
                                    namespaces: None,
                                    pods,
                                } => PeerRef::Selector(
                                    selectors.intern(SelectorPeer::InNamespace(&p.namespace, pods)),
                                ),
                                Peer::Pods {
                                    namespaces: Some(ns),
                                    pods,
                                } => PeerRef::Selector(
                                    selectors.intern(SelectorPeer::InNamespaces(ns, pods)),
                                ),
                                Peer::IpBlock(b) => PeerRef::Block(blocks.intern(b)),
                            })
                            .collect()
                    }));
                }
            }
            peers.rules.push(per_dir);
        }

        // Each endpoint's selector signature: the selector peers it matches.
        let mut endpoint_selectors: Vec<Vec<u32>> = vec![Vec::new(); self.endpoints.len()];
        let mut matched = Vec::new();
        for (sid, sel) in selectors.items.iter().enumerate() {
            matched.clear();
            match sel {
                SelectorPeer::InNamespace(ns, pods) => self.select_in(ns, pods, &mut matched),
                SelectorPeer::InNamespaces(ns_sel, pods) => {
                    for ns in cluster.namespaces.values() {
                        if ns_sel.matches(&ns.labels) {
                            self.select_in(&ns.name, pods, &mut matched);
                        }
                    }
                }
            }
            for &e in &matched {
                endpoint_selectors[e as usize].push(sid as u32);
            }
        }
        let mut selector_sigs: Interner<Vec<u32>> = Interner::new();
        let endpoint_sig: Vec<u32> = endpoint_selectors
            .into_iter()
            .map(|s| selector_sigs.intern(s))
            .collect();

        // Address ranges to ipBlock signatures, by longest prefix.
        let mut block_sigs: Interner<Vec<u32>> = Interner::new();
        block_sigs.intern(Vec::new());
        let (v4_cidrs, v6_cidrs) = split_families(blocks.items.iter().copied());
        let blocks_v4 = block_signature_map(&blocks.items, &v4_cidrs, &mut block_sigs, |c| {
            Prefix::V4(*c)
        });
        let blocks_v6 = block_signature_map(&blocks.items, &v6_cidrs, &mut block_sigs, |c| {
            Prefix::V6(*c)
        });

        // Named-port use decides whether ports are part of identities/groups.
        let named_in = |rules: &[Rule]| {
            rules
                .iter()
                .any(|r| r.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_))))
        };
        let policy_named: Vec<[bool; 2]> = policies
            .iter()
            .map(|p| [named_in(&p.ingress), named_in(&p.egress)])
            .collect();
        let egress_named = policy_named.iter().any(|n| n[1]);
        let mut profiles: Interner<Vec<NamedPort>> = Interner::new();
        profiles.intern(Vec::new());
        let endpoint_profile: Vec<u32> = self
            .endpoints
            .iter()
            .map(|p| {
                let mut ports = p.named_ports.clone();
                ports.sort();
                ports.dedup();
                profiles.intern(ports)
            })
            .collect();

        // Identities: of every endpoint address, then of every address range.
        let mut identities: Interner<IdentityKey> = Interner::new();
        let mut addresses: Vec<(IpAddr, u32, u32)> = Vec::new(); // (addr, endpoint, identity)
        for (e, pod) in self.endpoints.iter().enumerate() {
            for &ip in &pod.ips {
                let block_sig = match ip {
                    IpAddr::V4(a) => blocks_v4.get(u32::from(a)),
                    IpAddr::V6(a) => blocks_v6.get(u128::from(a)),
                };
                let profile = if egress_named { endpoint_profile[e] } else { 0 };
                let id = identities.intern((endpoint_sig[e], block_sig, profile));
                addresses.push((ip, e as u32, id));
            }
        }
        let others_v4 = blocks_v4.map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));
        let others_v6 = blocks_v6.map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));

        // Inverted indexes: which identities each selector peer / block admits.
        let mut by_selector: Vec<Vec<u32>> = vec![Vec::new(); selectors.items.len()];
        let mut by_block: Vec<Vec<u32>> = vec![Vec::new(); blocks.items.len()];
        for (id, &(sel_sig, block_sig, _)) in identities.items.iter().enumerate() {
            if sel_sig != NOT_A_POD {
                for &s in &selector_sigs.items[sel_sig as usize] {
                    by_selector[s as usize].push(id as u32);
                }
            }
            for &b in &block_sigs.items[block_sig as usize] {
                by_block[b as usize].push(id as u32);
            }
        }

        // Tables: names first, so ids are indices.
        let mut builder = TablesBuilder::new(self.options.generation);
        let policy_ids: Vec<PolicyId> = policies
            .iter()
            .map(|p| builder.add_policy(&p.namespace, &p.name))
            .collect();
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

        // Groups of local endpoints, and their allow entries.
        let mut groups: FxHashMap<(Direction, Vec<u32>, u32), GroupId> = FxHashMap::default();
        let mut rule_identities: FxHashMap<Option<Vec<PeerRef>>, Vec<(u32, bool)>> =
            FxHashMap::default();
        let mut broad_sets: FxHashMap<(Option<Vec<PeerRef>>, Option<u32>), BroadSetId> =
            FxHashMap::default();
        let mut scratch = GroupScratch::new(identities.items.len());
        let mut enforcement: Vec<[Enforcement; 2]> = Vec::with_capacity(self.endpoints.len());
        for (e, pod) in self.endpoints.iter().enumerate() {
            if !self.is_local(pod) {
                enforcement.push([Enforcement::Remote; 2]);
                continue;
            }
            let mut selecting: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
            for &i in policies_by_namespace
                .get(pod.namespace.as_str())
                .into_iter()
                .flatten()
            {
                let p = policies[i as usize];
                if p.pod_selector.matches(&pod.labels) {
                    if p.isolates_ingress {
                        selecting[0].push(i);
                    }
                    if p.isolates_egress {
                        selecting[1].push(i);
                    }
                }
            }
            let mut pair = [Enforcement::Open; 2];
            for (d, direction) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                if selecting[d].is_empty() {
                    continue;
                }
                let uses_named =
                    d == 0 && selecting[d].iter().any(|&p| policy_named[p as usize][0]);
                let profile = if uses_named { endpoint_profile[e] } else { 0 };
                let key = (direction, std::mem::take(&mut selecting[d]), profile);
                let group = if let Some(g) = groups.get(&key) {
                    *g
                } else {
                    let ids: Vec<PolicyId> =
                        key.1.iter().map(|&p| policy_ids[p as usize]).collect();
                    let g = builder.add_group(direction, &ids);
                    let ingress_ports = &profiles.items[profile as usize];
                    for &p in &key.1 {
                        let policy = policies[p as usize];
                        let rules = if d == 0 {
                            &policy.ingress
                        } else {
                            &policy.egress
                        };
                        for (r, rule) in rules.iter().enumerate() {
                            let rule_peers = &peers.rules[p as usize][d][r];
                            let admitted = rule_identities
                                .entry(rule_peers.clone())
                                .or_insert_with(|| {
                                    resolve_rule_peers(
                                        rule_peers.as_deref(),
                                        identities.items.len(),
                                        &by_selector,
                                        &by_block,
                                    )
                                });
                            let ctx = RulePorts {
                                policy: policy_ids[p as usize],
                                rule: r as u16,
                                spec: rule,
                            };
                            if admitted.len() > self.options.broad_threshold {
                                // Ports that do not depend on the peer: one
                                // port set for the whole peer set.
                                let mut plain = Vec::new();
                                let named = (d == 0).then_some(ingress_ports.as_slice());
                                ctx.push(named, true, &mut plain);
                                if !plain.is_empty() {
                                    let set = builder.add_port_set(plain);
                                    let broad = *broad_sets
                                        .entry((rule_peers.clone(), None))
                                        .or_insert_with(|| {
                                            let members =
                                                admitted.iter().map(|&(id, _)| IdentityId(id));
                                            builder.add_broad_set(members.collect())
                                        });
                                    builder.allow_broad(g, broad, set);
                                }
                                // Egress named ports: one peer set per named-port profile.
                                if d == 1 && policy_named[p as usize][1] {
                                    let mut by_profile: BTreeSet<u32> = BTreeSet::new();
                                    for &(id, via_selector) in admitted.iter() {
                                        let (sel_sig, _, profile) = identities.items[id as usize];
                                        if via_selector && sel_sig != NOT_A_POD {
                                            by_profile.insert(profile);
                                        }
                                    }
                                    for profile in by_profile {
                                        let mut named = Vec::new();
                                        let ports = &profiles.items[profile as usize];
                                        ctx.push(Some(ports), false, &mut named);
                                        if named.is_empty() {
                                            continue;
                                        }
                                        let set = builder.add_port_set(named);
                                        let broad = *broad_sets
                                            .entry((rule_peers.clone(), Some(profile)))
                                            .or_insert_with(|| {
                                                let members =
                                                    admitted.iter().filter(|&&(id, via)| {
                                                        let (sel_sig, _, q) =
                                                            identities.items[id as usize];
                                                        via && sel_sig != NOT_A_POD && q == profile
                                                    });
                                                builder.add_broad_set(
                                                    members
                                                        .map(|&(id, _)| IdentityId(id))
                                                        .collect(),
                                                )
                                            });
                                        builder.allow_broad(g, broad, set);
                                    }
                                }
                                continue;
                            }
                            for &(id, via_selector) in admitted.iter() {
                                let named = if d == 0 {
                                    Some(ingress_ports.as_slice())
                                } else {
                                    let (sel_sig, _, profile) = identities.items[id as usize];
                                    (via_selector && sel_sig != NOT_A_POD)
                                        .then(|| profiles.items[profile as usize].as_slice())
                                };
                                ctx.push(named, true, scratch.rules_for(id));
                            }
                        }
                    }
                    scratch.flush(&mut builder, g);
                    groups.insert(key, g);
                    g
                };
                pair[d] = Enforcement::Isolated(group);
            }
            enforcement.push(pair);
        }

        // Pods and their addresses.
        let pod_ids: Vec<PodId> = self
            .endpoints
            .iter()
            .map(|p| builder.add_pod(&p.namespace, &p.name))
            .collect();
        for (ip, e, id) in addresses {
            let [ingress, egress] = enforcement[e as usize];
            let entry = PodAddress {
                identity: IdentityId(id),
                pod: pod_ids[e as usize],
                egress,
                ingress,
            };
            if let Err(err) = builder.add_pod_address(ip, entry) {
                self.warnings.push(err.to_string());
            }
        }
        Compiled {
            tables: builder.build(),
            warnings: self.warnings,
        }
    }
}

/// A rule's ports, ready to be granted to the identities it admits.
struct RulePorts<'a> {
    policy: PolicyId,
    rule: u16,
    spec: &'a Rule,
}

impl RulePorts<'_> {
    /// Appends the rule's port ranges; `named` is the pod whose named ports
    /// resolve (`None`: named ports match nothing); `plain` whether to
    /// include the ports that are not named.
    fn push(&self, named: Option<&[NamedPort]>, plain: bool, out: &mut Vec<PortRule>) {
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

/// The identities a rule's peers admit, each with whether a selector peer
/// (or the absence of peers) admitted it, which is what lets egress named
/// ports resolve on it.
fn resolve_rule_peers(
    peers: Option<&[PeerRef]>,
    identity_count: usize,
    by_selector: &[Vec<u32>],
    by_block: &[Vec<u32>],
) -> Vec<(u32, bool)> {
    let Some(peers) = peers else {
        return (0..identity_count as u32).map(|id| (id, true)).collect();
    };
    let mut out: FxHashMap<u32, bool> = FxHashMap::default();
    for peer in peers {
        match *peer {
            PeerRef::Selector(s) => {
                for &id in &by_selector[s as usize] {
                    out.insert(id, true);
                }
            }
            PeerRef::Block(b) => {
                for &id in &by_block[b as usize] {
                    out.entry(id).or_insert(false);
                }
            }
        }
    }
    let mut v: Vec<(u32, bool)> = out.into_iter().collect();
    v.sort_unstable();
    v
}

/// Per-identity port rules of the group being compiled, reused across groups.
struct GroupScratch {
    rules: Vec<Vec<PortRule>>,
    touched: Vec<u32>,
}

impl GroupScratch {
    fn new(identities: usize) -> Self {
        Self {
            rules: vec![Vec::new(); identities],
            touched: Vec::new(),
        }
    }

    fn rules_for(&mut self, identity: u32) -> &mut Vec<PortRule> {
        let slot = &mut self.rules[identity as usize];
        if slot.is_empty() {
            self.touched.push(identity);
        }
        slot
    }

    fn flush(&mut self, builder: &mut TablesBuilder, group: GroupId) {
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

fn split_families<'a>(
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
fn block_signature_map<A: AddrBits>(
    blocks: &[&IpBlock],
    prefixes: &[Cidr<A>],
    sigs: &mut Interner<Vec<u32>>,
    wrap: impl Fn(&Cidr<A>) -> Prefix,
) -> IntervalMap<A, u32> {
    let entries = prefixes.iter().map(|c| {
        let p = wrap(c);
        let sig: Vec<u32> = blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.cidr.covers(&p) && !b.except.iter().any(|e| e.covers(&p)))
            .map(|(i, _)| i as u32)
            .collect();
        (*c, sigs.intern(sig))
    });
    let entries: Vec<_> = entries.collect();
    IntervalMap::from_prefixes(entries, 0)
}
