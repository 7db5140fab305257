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
//! Compiling is incremental: a [`Compiler`] kept from one generation to the
//! next remembers, per object, what it derived from it (the selector peers
//! each pod matches, each policy's peers resolved, the ipBlock signature
//! maps, the pod and policy name lists) and recomputes that only for the
//! objects that changed, which it tells by the `Arc` each object is stored
//! in (see [`Cluster`]). What it reuses gives the same tables as compiling
//! from scratch, identity and group numbers included.
//!
//! Named ports resolve per pod by name and protocol: for ingress on the
//! protected pod, for egress on the destination pod. For egress they resolve
//! only when the destination is a pod reached through a selector peer or a
//! rule without peers; a destination matched by an `ipBlock`, or an address
//! that is no pod, has no named ports.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::prefix::{AddrBits, Cidr};
use podfence_datapath::tables::{
    BroadSetId, Direction, Enforcement, GroupId, IdentityId, NodeId, ObjectName, PodAddress, PodId,
    PolicyId, PortRule,
};
use podfence_datapath::{Prefix, Tables, TablesBuilder};
use rustc_hash::FxHashMap;

use crate::index::Cluster;
use crate::model::{
    IpBlock, LabelSelector, NamedPort, Namespace, NetworkPolicy, Peer, Pod, PortSpec, Rule,
};

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
    /// Addresses of this node beyond the `status.hostIPs` its pods report
    /// (the live agent passes every address of its host): traffic between
    /// them and the local pods is always allowed.
    pub node_addresses: Vec<IpAddr>,
    /// Audit every pod: policy is evaluated and what it would deny is
    /// reported, not dropped. Without it, only the pods of namespaces
    /// labelled [`AUDIT_LABEL`] are audited.
    pub audit: bool,
}

/// The namespace label that puts its pods in audit mode.
pub const AUDIT_LABEL: (&str, &str) = ("podfence.io/enforcement", "audit");

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            generation: 1,
            locality: Locality::AllPods,
            broad_threshold: BROAD_THRESHOLD,
            node_addresses: Vec::new(),
            audit: false,
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
enum SelectorPeer {
    /// Pods of one namespace (a peer without `namespaceSelector`).
    InNamespace(String, LabelSelector),
    /// Pods of every namespace the first selector matches.
    InNamespaces(LabelSelector, LabelSelector),
}

impl SelectorPeer {
    fn from_peer(
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
    fn matches(&self, pod: &Pod, namespace: Option<&Namespace>) -> bool {
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

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self {
            ids: FxHashMap::default(),
            items: Vec::new(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Interner<Vec<T>> {
    /// [`intern`](Self::intern) that copies the key only when it is new.
    fn intern_ref(&mut self, key: &[T]) -> u32 {
        match self.ids.get(key) {
            Some(id) => *id,
            None => self.intern(key.to_vec()),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Interner<K> {
    fn new() -> Self {
        Self::default()
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

/// Compiles a cluster state into tables, from scratch.
#[must_use]
pub fn compile(cluster: &Cluster, options: &CompileOptions) -> Compiled {
    Compiler::new(options.clone()).compile(cluster, options.generation)
}

/// Compiles successive states of one cluster, each from what changed since
/// the last (see the module documentation).
pub struct Compiler {
    options: CompileOptions,
    memo: Memo,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("options", &self.options)
            .field("endpoints", &self.memo.endpoints.len())
            .field("policies", &self.memo.policies.len())
            .finish_non_exhaustive()
    }
}

impl Compiler {
    /// A compiler with nothing remembered; `options.generation` is unused.
    #[must_use]
    pub fn new(options: CompileOptions) -> Self {
        Self {
            options,
            memo: Memo::default(),
        }
    }

    /// Which pods are enforced here.
    #[must_use]
    pub fn locality(&self) -> &Locality {
        &self.options.locality
    }

    /// The part of the last compiled state that policy decides on: its
    /// pods with addresses of their own, their namespaces, and the policies
    /// (for explaining verdicts of the tables it gave).
    #[must_use]
    pub fn compiled_state(&self) -> Cluster {
        let mut cluster = Cluster::default();
        for m in &self.memo.endpoints {
            cluster.pods.insert(m.pod.key(), Arc::clone(&m.pod));
            if let Some(ns) = &m.namespace {
                cluster
                    .namespaces
                    .entry(ns.name.clone())
                    .or_insert_with(|| Arc::clone(ns));
            }
        }
        for m in &self.memo.policies {
            cluster
                .policies
                .insert(m.policy.key(), Arc::clone(&m.policy));
        }
        cluster
    }

    /// Compiles `cluster` into tables numbered `generation`.
    pub fn compile(&mut self, cluster: &Cluster, generation: u64) -> Compiled {
        if self.memo.is_mostly_garbage() {
            self.memo = Memo::default();
        }
        Pass::new(cluster, &self.options, generation).run(&mut self.memo)
    }
}

/// What the last compile derived, per object, for the next to reuse.
#[derive(Default)]
struct Memo {
    /// Every selector peer seen since the memo was made; ids are stable.
    selectors: Interner<SelectorPeer>,
    /// Selectors that existed at the last compile: remembered matches cover
    /// these ids and no others.
    selectors_checked: u32,
    /// Selectors the last compile's policies used.
    selectors_live: usize,
    /// Every named-port profile seen since the memo was made (0: none).
    profiles: Interner<Vec<NamedPort>>,
    profiles_live: usize,
    /// Every ipBlock seen since the memo was made; ids are stable.
    blocks: Interner<IpBlock>,
    blocks_live: usize,
    /// The last compile's policies in name order, their peers resolved.
    policies: Vec<PolicyMemo>,
    /// The last compile's endpoints in name order, with what they matched.
    endpoints: Vec<EndpointMemo>,
    /// Signature maps of the last compile's live ipBlocks.
    block_maps: Option<BlockMaps>,
    /// Name lists of the last compile, shared while no pod or policy came or went.
    pod_names: Option<Arc<[ObjectName]>>,
    policy_names: Option<Arc<[ObjectName]>>,
}

impl Memo {
    /// Whether selectors or blocks no policy uses any more outnumber the
    /// live ones (they are never removed one by one: ids must stay stable).
    fn is_mostly_garbage(&self) -> bool {
        let dead = |all: usize, live: usize| all > 2 * live + 256;
        dead(self.selectors.items.len(), self.selectors_live)
            || dead(self.blocks.items.len(), self.blocks_live)
            || dead(self.profiles.items.len(), self.profiles_live)
    }
}

struct PolicyMemo {
    policy: Arc<NetworkPolicy>,
    /// `[direction][rule]` → the rule's peers; `None` for "every peer".
    rules: [Vec<Option<Vec<PeerRef>>>; 2],
    /// Whether ingress / egress rules use named ports.
    named: [bool; 2],
}

struct EndpointMemo {
    pod: Arc<Pod>,
    namespace: Option<Arc<Namespace>>,
    facts: EndpointFacts,
}

/// What an endpoint's own objects decide.
struct EndpointFacts {
    /// Selector ids below `Memo::selectors_checked` that match it, ascending.
    matched: Vec<u32>,
    /// Its named ports, sorted, as a profile id.
    profile: u32,
}

/// Address ranges to ipBlock signatures, by longest prefix.
struct BlockMaps {
    /// The live block ids they were made from.
    live: Vec<u32>,
    sigs: Interner<Vec<u32>>,
    v4: IntervalMap<u32, u32>,
    v6: IntervalMap<u128, u32>,
}

/// An object known by `(namespace, name)`.
trait NameKey {
    fn name_key(&self) -> (&str, &str);
}

impl NameKey for Pod {
    fn name_key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl NameKey for NetworkPolicy {
    fn name_key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }
}

impl NameKey for EndpointMemo {
    fn name_key(&self) -> (&str, &str) {
        self.pod.name_key()
    }
}

impl NameKey for PolicyMemo {
    fn name_key(&self) -> (&str, &str) {
        self.policy.name_key()
    }
}

/// The last compile's entries, in name order, handed out by name to a walk
/// over this compile's objects in name order.
struct ByName<T> {
    previous: std::iter::Peekable<std::vec::IntoIter<T>>,
    /// Whether every name asked for was there and none was passed over.
    same: bool,
}

impl<T: NameKey> ByName<T> {
    fn new(previous: Vec<T>) -> Self {
        Self {
            previous: previous.into_iter().peekable(),
            same: true,
        }
    }

    /// The next entry if `same` holds for it (it is then the entry of the
    /// name asked for), else the entry named `key`.
    fn take_fast(&mut self, same: impl Fn(&T) -> bool, key: (&str, &str)) -> Option<T> {
        match self.previous.next_if(same) {
            Some(entry) => Some(entry),
            None => self.take(key),
        }
    }

    fn take(&mut self, key: (&str, &str)) -> Option<T> {
        while self.previous.next_if(|m| m.name_key() < key).is_some() {
            self.same = false;
        }
        let entry = self.previous.next_if(|m| m.name_key() == key);
        self.same &= entry.is_some();
        entry
    }

    /// Whether the names walked were exactly the last compile's.
    fn same_names(mut self) -> bool {
        self.same && self.previous.peek().is_none()
    }
}

/// Fresh endpoints up to this many are checked one by one against the
/// known selectors; more, and each selector scans its namespaces instead.
const FEW_FRESH: usize = 64;

/// One compile.
struct Pass<'a> {
    cluster: &'a Cluster,
    options: &'a CompileOptions,
    generation: u64,
    /// Pods that own their addresses, in name order.
    endpoints: Vec<&'a Arc<Pod>>,
    /// Endpoint indices by namespace.
    by_namespace: FxHashMap<&'a str, Vec<u32>>,
    warnings: Vec<String>,
}

impl<'a> Pass<'a> {
    fn new(cluster: &'a Cluster, options: &'a CompileOptions, generation: u64) -> Self {
        let endpoints: Vec<&Arc<Pod>> = cluster
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
            generation,
            endpoints,
            by_namespace,
            warnings: Vec::new(),
        }
    }

    fn is_local(&self, pod: &Pod) -> bool {
        self.options.locality.includes(pod)
    }

    /// Resolves every policy's rule peers to selector and block ids,
    /// reusing the last compile's result for a policy that is the same
    /// object; returns them in policy order, and whether the policies are
    /// the last compile's names.
    fn resolve_policies(&self, memo: &mut Memo) -> (Vec<PolicyMemo>, bool) {
        let mut previous = ByName::new(std::mem::take(&mut memo.policies));
        let mut resolved = Vec::with_capacity(self.cluster.policies.len());
        for policy in self.cluster.policies.values() {
            let same_policy = |m: &PolicyMemo| Arc::ptr_eq(&m.policy, policy);
            let entry = match previous.take_fast(same_policy, policy.name_key()) {
                Some(m) if Arc::ptr_eq(&m.policy, policy) => m,
                _ => resolve_policy(policy, &mut memo.selectors, &mut memo.blocks),
            };
            resolved.push(entry);
        }
        (resolved, previous.same_names())
    }

    /// For each endpoint, the selector ids (live or not) that match it and
    /// its named-port profile: remembered for endpoints whose pod and
    /// namespace objects are unchanged, worked out for the rest; selectors
    /// new since the last compile are checked on every endpoint.
    fn endpoint_facts(&self, memo: &mut Memo) -> (Vec<EndpointMemo>, bool) {
        if memo.profiles.items.is_empty() {
            memo.profiles.intern(Vec::new());
        }
        let known = memo.selectors_checked as usize;
        let mut previous = ByName::new(std::mem::take(&mut memo.endpoints));
        let mut facts = Vec::with_capacity(self.endpoints.len());
        let mut fresh = Vec::new();
        let mut namespace: Option<&Arc<Namespace>> = None;
        for (e, pod) in self.endpoints.iter().enumerate() {
            // Endpoints come by namespace: look each namespace up once.
            if e == 0 || self.endpoints[e - 1].namespace != pod.namespace {
                namespace = self.cluster.namespaces.get(&pod.namespace);
            }
            let same_pod = |m: &EndpointMemo| Arc::ptr_eq(&m.pod, pod);
            let same = previous.take_fast(same_pod, pod.name_key()).filter(|m| {
                Arc::ptr_eq(&m.pod, pod)
                    && match (&m.namespace, namespace) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if let Some(m) = same {
                facts.push(m);
            } else {
                let mut ports = pod.named_ports.clone();
                ports.sort();
                ports.dedup();
                facts.push(EndpointMemo {
                    pod: Arc::clone(pod),
                    namespace: namespace.cloned(),
                    facts: EndpointFacts {
                        matched: Vec::new(),
                        profile: memo.profiles.intern(ports),
                    },
                });
                fresh.push(e as u32);
            }
        }
        let selectors = &memo.selectors.items;
        let mut is_fresh = vec![false; self.endpoints.len()];
        for &e in &fresh {
            is_fresh[e as usize] = true;
        }
        let mut candidates = Vec::new();
        for (sid, selector) in selectors.iter().enumerate() {
            let new = sid >= known;
            if !new && fresh.len() <= FEW_FRESH {
                for &e in &fresh {
                    let pod = self.endpoints[e as usize];
                    let namespace = self.cluster.namespaces.get(&pod.namespace);
                    if selector.matches(pod, namespace.map(AsRef::as_ref)) {
                        facts[e as usize].facts.matched.push(sid as u32);
                    }
                }
                continue;
            }
            candidates.clear();
            match selector {
                SelectorPeer::InNamespace(ns, pods) => self.select_in(ns, pods, &mut candidates),
                SelectorPeer::InNamespaces(ns_sel, pods) => {
                    for ns in self.cluster.namespaces.values() {
                        if ns_sel.matches(&ns.labels) {
                            self.select_in(&ns.name, pods, &mut candidates);
                        }
                    }
                }
            }
            for &e in &candidates {
                if new || is_fresh[e as usize] {
                    facts[e as usize].facts.matched.push(sid as u32);
                }
            }
        }
        memo.selectors_checked = selectors.len() as u32;
        (facts, previous.same_names())
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

    /// Shares the last compile's name lists when no pod or policy came or
    /// went; makes new ones otherwise.
    fn names(
        &self,
        memo: &mut Memo,
        same_endpoints: bool,
        same_policies: bool,
    ) -> (Arc<[ObjectName]>, Arc<[ObjectName]>) {
        let name = |namespace: &str, name: &str| ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        };
        let pods = match memo.pod_names.take() {
            Some(names) if same_endpoints => names,
            _ => self
                .endpoints
                .iter()
                .map(|p| name(&p.namespace, &p.name))
                .collect(),
        };
        let policies = match memo.policy_names.take() {
            Some(names) if same_policies => names,
            _ => self
                .cluster
                .policies
                .values()
                .map(|p| name(&p.namespace, &p.name))
                .collect(),
        };
        memo.pod_names = Some(pods.clone());
        memo.policy_names = Some(policies.clone());
        (pods, policies)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one pass, in the order the module doc describes"
    )]
    fn run(mut self, memo: &mut Memo) -> Compiled {
        let cluster = self.cluster;
        let policies: Vec<&Arc<NetworkPolicy>> = cluster.policies.values().collect();

        // Selector peers and ipBlocks, interned; every rule's peers resolved.
        let (resolved, same_policies) = self.resolve_policies(memo);
        let mut selector_live = vec![false; memo.selectors.items.len()];
        let mut block_live = vec![false; memo.blocks.items.len()];
        for peer in resolved
            .iter()
            .flat_map(|m| m.rules.iter().flatten().flatten().flatten())
        {
            match *peer {
                PeerRef::Selector(s) => selector_live[s as usize] = true,
                PeerRef::Block(b) => block_live[b as usize] = true,
            }
        }
        memo.selectors_live = selector_live.iter().filter(|&&l| l).count();

        // Each endpoint's selector signature: the live selector peers it matches.
        let (endpoints, same_endpoints) = self.endpoint_facts(memo);
        let (pod_names, policy_list) = self.names(memo, same_endpoints, same_policies);
        let mut selector_sigs: Interner<Vec<u32>> = Interner::new();
        let mut live_matches = Vec::new();
        let endpoint_sig: Vec<u32> = endpoints
            .iter()
            .map(|m| {
                live_matches.clear();
                let live = m
                    .facts
                    .matched
                    .iter()
                    .copied()
                    .filter(|&s| selector_live[s as usize]);
                live_matches.extend(live);
                selector_sigs.intern_ref(&live_matches)
            })
            .collect();

        // Address ranges to ipBlock signatures, by longest prefix.
        let live_blocks: Vec<u32> = (0..block_live.len() as u32)
            .filter(|&b| block_live[b as usize])
            .collect();
        memo.blocks_live = live_blocks.len();
        let block_maps = match memo.block_maps.take() {
            Some(maps) if maps.live == live_blocks => maps,
            _ => BlockMaps::new(&memo.blocks.items, live_blocks),
        };

        // Named-port use decides whether ports are part of identities/groups.
        let policy_named: Vec<[bool; 2]> = resolved.iter().map(|m| m.named).collect();
        let egress_named = policy_named.iter().any(|n| n[1]);
        let profiles = &memo.profiles;
        let endpoint_profile: Vec<u32> = endpoints.iter().map(|m| m.facts.profile).collect();
        let mut profile_live = vec![false; profiles.items.len()];
        for &p in &endpoint_profile {
            profile_live[p as usize] = true;
        }
        let live_profile_count = profile_live.iter().filter(|&&l| l).count();

        // Identities: of every endpoint address, then of every address range.
        let mut identities: Interner<IdentityKey> = Interner::new();
        let mut addresses: Vec<(IpAddr, u32, u32)> = Vec::new(); // (addr, endpoint, identity)
        for (e, pod) in self.endpoints.iter().enumerate() {
            for &ip in &pod.ips {
                let block_sig = match ip {
                    IpAddr::V4(a) => block_maps.v4.get(u32::from(a)),
                    IpAddr::V6(a) => block_maps.v6.get(u128::from(a)),
                };
                let profile = if egress_named { endpoint_profile[e] } else { 0 };
                let id = identities.intern((endpoint_sig[e], block_sig, profile));
                addresses.push((ip, e as u32, id));
            }
        }
        let others_v4 = block_maps
            .v4
            .map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));
        let others_v6 = block_maps
            .v6
            .map(|sig| IdentityId(identities.intern((NOT_A_POD, sig, 0))));

        // Inverted indexes: which identities each selector peer / block admits.
        let mut by_selector: Vec<Vec<u32>> = vec![Vec::new(); memo.selectors.items.len()];
        let mut by_block: Vec<Vec<u32>> = vec![Vec::new(); memo.blocks.items.len()];
        for (id, &(sel_sig, block_sig, _)) in identities.items.iter().enumerate() {
            if sel_sig != NOT_A_POD {
                for &s in &selector_sigs.items[sel_sig as usize] {
                    by_selector[s as usize].push(id as u32);
                }
            }
            for &b in &block_maps.sigs.items[block_sig as usize] {
                by_block[b as usize].push(id as u32);
            }
        }

        // Tables: names first, so ids are indices.
        let mut builder = TablesBuilder::new(self.generation);
        builder.set_pod_names(pod_names);
        builder.set_policy_names(policy_list);
        let policy_ids: Vec<PolicyId> = (0..policies.len() as u32).map(PolicyId).collect();
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
            let audited = self.options.audit
                || cluster.namespaces.get(&pod.namespace).is_some_and(|ns| {
                    ns.labels.get(AUDIT_LABEL.0).map(String::as_str) == Some(AUDIT_LABEL.1)
                });
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
                            let rule_peers = &resolved[p as usize].rules[d][r];
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
                                    // In the order of the ports, not of ids,
                                    // which depend on what came before.
                                    let mut by_profile: Vec<u32> = Vec::new();
                                    for &(id, via_selector) in admitted.iter() {
                                        let (sel_sig, _, profile) = identities.items[id as usize];
                                        if via_selector && sel_sig != NOT_A_POD {
                                            by_profile.push(profile);
                                        }
                                    }
                                    by_profile.sort_unstable_by(|a, b| {
                                        profiles.items[*a as usize]
                                            .cmp(&profiles.items[*b as usize])
                                    });
                                    by_profile.dedup();
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
                pair[d] = if audited {
                    Enforcement::Audited(group)
                } else {
                    Enforcement::Isolated(group)
                };
            }
            enforcement.push(pair);
        }

        // Nodes, known by the host addresses their pods report; this node
        // also by the addresses it was given.
        let mut nodes: Interner<Vec<IpAddr>> = Interner::new();
        let local_node = (!self.options.node_addresses.is_empty()).then(|| {
            let mut ips = self.options.node_addresses.clone();
            ips.sort_unstable();
            ips.dedup();
            NodeId(nodes.intern(ips))
        });
        let endpoint_node: Vec<Option<NodeId>> = self
            .endpoints
            .iter()
            .map(|p| {
                if let Some(local) = local_node
                    && self.is_local(p)
                {
                    for &ip in &p.host_ips {
                        builder.add_node_address(ip, local);
                    }
                    Some(local)
                } else if p.host_ips.is_empty() {
                    None
                } else if p.host_ips.is_sorted() {
                    Some(NodeId(nodes.intern_ref(&p.host_ips)))
                } else {
                    let mut ips = p.host_ips.clone();
                    ips.sort_unstable();
                    Some(NodeId(nodes.intern(ips)))
                }
            })
            .collect();
        for (n, node_ips) in nodes.items.iter().enumerate() {
            for &ip in node_ips {
                builder.add_node_address(ip, NodeId(n as u32));
            }
        }

        // Pod addresses.
        let v4 = addresses.iter().filter(|a| a.0.is_ipv4()).count();
        builder.reserve_pod_addresses(v4, addresses.len() - v4);
        for (ip, e, id) in addresses {
            let [ingress, egress] = enforcement[e as usize];
            let entry = PodAddress {
                identity: IdentityId(id),
                pod: PodId(e),
                egress,
                ingress,
                node: endpoint_node[e as usize],
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
        Compiled {
            tables: builder.build(),
            warnings: self.warnings,
        }
    }
}

/// Resolves a policy's rule peers, interning their selectors and blocks.
fn resolve_policy(
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

impl BlockMaps {
    /// The maps of the blocks `live` (ids into `blocks`, ascending).
    fn new(blocks: &[IpBlock], live: Vec<u32>) -> Self {
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
