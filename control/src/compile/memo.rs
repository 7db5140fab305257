//! What one compile leaves for the next: the interners whose ids stay
//! stable across compiles, and per pod and per policy what was derived from
//! it, found again by name.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use podfence_datapath::tables::{Enforcement, NodeId, ObjectName, TierGroups};
use rustc_hash::FxHashMap;

use super::groups::FillMemo;
use super::peers::{BlockMaps, PeerRef, SelectorPeer};
use super::replica::ReplicaMemo;
use crate::model::{ClusterNetworkPolicy, IpBlock, NamedPort, Namespace, NetworkPolicy, Pod};

pub(super) struct Interner<K> {
    pub(super) ids: FxHashMap<K, u32>,
    pub(super) items: Vec<K>,
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
    pub(super) fn intern_ref(&mut self, key: &[T]) -> u32 {
        match self.ids.get(key) {
            Some(id) => *id,
            None => self.intern(key.to_vec()),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Interner<K> {
    pub(super) fn new() -> Self {
        Self::default()
    }
    pub(super) fn intern(&mut self, key: K) -> u32 {
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.items.len() as u32;
        self.ids.insert(key.clone(), id);
        self.items.push(key);
        id
    }
}

/// What the last compile derived, per object, for the next to reuse.
#[derive(Default)]
pub(super) struct Memo {
    /// Every selector peer seen since the memo was made; ids are stable.
    pub(super) selectors: Interner<SelectorPeer>,
    /// Selectors that existed at the last compile: remembered matches cover
    /// these ids and no others.
    pub(super) selectors_checked: u32,
    /// Selectors the last compile's policies used.
    pub(super) selectors_live: usize,
    /// Every named-port profile seen since the memo was made (0: none).
    pub(super) profiles: Interner<Vec<NamedPort>>,
    pub(super) profiles_live: usize,
    /// Every ipBlock seen since the memo was made; ids are stable.
    pub(super) blocks: Interner<IpBlock>,
    pub(super) blocks_live: usize,
    /// The last compile's policies in name order, their peers resolved.
    pub(super) policies: Vec<PolicyMemo>,
    /// The last compile's endpoints in name order, with what they matched.
    pub(super) endpoints: Vec<EndpointMemo>,
    /// The endpoint list of the compile before, emptied: its allocation
    /// is the next compile's list.
    pub(super) spare_endpoints: Vec<EndpointMemo>,
    /// Selector signatures (the live selectors an endpoint matches) of the
    /// endpoints since `sigs_live` was the live selectors, each
    /// endpoint's kept in its [`EndpointMemo::sig`].
    pub(super) selector_sigs: Interner<Vec<u32>>,
    pub(super) sigs_live: Vec<bool>,
    /// How many times `selector_sigs` was made anew (its ids then name
    /// other selector sets).
    pub(super) sigs_epoch: u64,
    /// Per-endpoint lists of the last compile, their allocations reused.
    pub(super) scratch: Scratch,
    /// Signature maps of the last compile's live ipBlocks.
    pub(super) block_maps: Option<BlockMaps>,
    /// Name lists of the last compile, shared while no pod or policy came or went.
    pub(super) pod_names: Option<Arc<[ObjectName]>>,
    pub(super) policy_names: Option<Arc<[ObjectName]>>,
    /// The tier policies' names at the end of that list.
    pub(super) tier_names: Vec<ObjectName>,
    /// The last compile's tier policies, in precedence order.
    pub(super) tier_policies: Vec<Arc<ClusterNetworkPolicy>>,
    /// The last compile's group tables and what they were filled from.
    pub(super) fill: Option<FillMemo>,
    /// What adding a replica to its tables needs besides.
    pub(super) replica: Option<ReplicaMemo>,
}

/// Per-endpoint lists of one compile, kept for the next to refill so that
/// their allocations are reused.
#[derive(Default)]
pub(super) struct Scratch {
    /// (address, endpoint, identity) of every endpoint address.
    pub(super) addresses: Vec<(IpAddr, u32, u32)>,
    pub(super) enforcement: Vec<[Enforcement; 2]>,
    pub(super) audited: Vec<bool>,
    pub(super) tiers: Vec<TierGroups>,
    pub(super) nodes: Vec<Option<NodeId>>,
}

impl Scratch {
    pub(super) fn clear(&mut self) {
        self.addresses.clear();
        self.enforcement.clear();
        self.audited.clear();
        self.tiers.clear();
        self.nodes.clear();
    }
}

impl Memo {
    /// Whether selectors or blocks no policy uses any more outnumber the
    /// live ones (they are never removed one by one: ids must stay stable).
    pub(super) fn is_mostly_garbage(&self) -> bool {
        let dead = |all: usize, live: usize| all > 2 * live + 256;
        dead(self.selectors.items.len(), self.selectors_live)
            || dead(self.blocks.items.len(), self.blocks_live)
            || dead(self.profiles.items.len(), self.profiles_live)
    }
}

pub(super) struct PolicyMemo {
    pub(super) policy: Arc<NetworkPolicy>,
    /// `[direction][rule]` → the rule's peers; `None` for "every peer".
    pub(super) rules: [Vec<Option<Vec<PeerRef>>>; 2],
    /// Whether ingress / egress rules use named ports.
    pub(super) named: [bool; 2],
}

/// One endpoint, with what the per-endpoint loops of a compile read of
/// its pod held inline, so that they walk this list rather than the pods.
pub(super) struct EndpointMemo {
    pub(super) pod: Arc<Pod>,
    /// The pod's name in the tables, made once per pod object; pods of one
    /// namespace mostly share its namespace's `Arc`.
    pub(super) name: ObjectName,
    pub(super) namespace: Option<Arc<Namespace>>,
    /// Whether the pod is enforced here ([`super::Locality::includes`]).
    pub(super) local: bool,
    /// The pod's first addresses; `inline_ips` of them, or all of them are
    /// in `pod.ips` when it is [`SPILLED`].
    ips: [IpAddr; 2],
    inline_ips: u8,
    /// Likewise its host addresses (`pod.host_ips`).
    host_ips: [IpAddr; 2],
    inline_host_ips: u8,
    pub(super) facts: EndpointFacts,
    /// Its id in `Memo::selector_sigs` ([`NO_SIG`]: not known yet).
    pub(super) sig: u32,
}

/// [`EndpointMemo::sig`] not worked out yet.
pub(super) const NO_SIG: u32 = u32::MAX;

/// `EndpointMemo::inline_ips` of a pod with more addresses than fit.
const SPILLED: u8 = u8::MAX;

/// Up to two addresses inline, and how many (or [`SPILLED`]).
fn inline(ips: &[IpAddr]) -> ([IpAddr; 2], u8) {
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    match ips {
        [] => ([unspecified; 2], 0),
        [a] => ([*a, unspecified], 1),
        [a, b] => ([*a, *b], 2),
        _ => ([unspecified; 2], SPILLED),
    }
}

impl EndpointMemo {
    pub(super) fn new(
        pod: Arc<Pod>,
        name: ObjectName,
        namespace: Option<Arc<Namespace>>,
        local: bool,
        facts: EndpointFacts,
    ) -> Self {
        let (ips, inline_ips) = inline(&pod.ips);
        let (host_ips, inline_host_ips) = inline(&pod.host_ips);
        Self {
            pod,
            name,
            namespace,
            local,
            ips,
            inline_ips,
            host_ips,
            inline_host_ips,
            facts,
            sig: NO_SIG,
        }
    }

    /// The pod's addresses.
    pub(super) fn ips(&self) -> &[IpAddr] {
        match self.inline_ips {
            SPILLED => &self.pod.ips,
            n => &self.ips[..usize::from(n)],
        }
    }

    /// The pod's host addresses.
    pub(super) fn host_ips(&self) -> &[IpAddr] {
        match self.inline_host_ips {
            SPILLED => &self.pod.host_ips,
            n => &self.host_ips[..usize::from(n)],
        }
    }
}

/// What an endpoint's own objects decide.
pub(super) struct EndpointFacts {
    /// Selector ids below `Memo::selectors_checked` that match it, ascending.
    pub(super) matched: Vec<u32>,
    /// Its named ports, sorted, as a profile id.
    pub(super) profile: u32,
}

/// An object known by `(namespace, name)`.
pub(super) trait NameKey {
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
/// over this compile's objects in name order; the list they came from is
/// left empty, its allocation kept.
pub(super) struct ByName<'m, T> {
    previous: std::vec::Drain<'m, T>,
    /// Whether every name asked for was there and none was passed over.
    same: bool,
}

impl<'m, T: NameKey> ByName<'m, T> {
    pub(super) fn new(previous: &'m mut Vec<T>) -> Self {
        Self {
            previous: previous.drain(..),
            same: true,
        }
    }

    /// How many entries are left.
    pub(super) fn len(&self) -> usize {
        self.previous.len()
    }

    /// The entry `n` places ahead of the next, left where it is.
    pub(super) fn ahead(&self, n: usize) -> Option<&T> {
        self.previous.as_slice().get(n)
    }

    /// Moves the next `n` entries to `out`, as they are.
    pub(super) fn move_to(&mut self, n: usize, out: &mut Vec<T>) {
        out.extend(self.previous.by_ref().take(n));
    }

    /// The next entry if `f` holds for it.
    pub(super) fn next_if(&mut self, f: impl FnOnce(&T) -> bool) -> Option<T> {
        if self.previous.as_slice().first().is_some_and(f) {
            self.previous.next()
        } else {
            None
        }
    }

    /// The next entry if `same` holds for it (it is then the entry of the
    /// name asked for), else the entry named `key`.
    pub(super) fn take_fast(&mut self, same: impl Fn(&T) -> bool, key: (&str, &str)) -> Option<T> {
        match self.next_if(same) {
            Some(entry) => Some(entry),
            None => self.take(key),
        }
    }

    pub(super) fn take(&mut self, key: (&str, &str)) -> Option<T> {
        while self.next_if(|m| m.name_key() < key).is_some() {
            self.same = false;
        }
        let entry = self.next_if(|m| m.name_key() == key);
        self.same &= entry.is_some();
        entry
    }

    /// Whether the names walked were exactly the last compile's.
    pub(super) fn same_names(self) -> bool {
        self.same && self.previous.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, PodPhase};

    fn endpoint(ips: &[&str], host_ips: &[&str]) -> EndpointMemo {
        let parse = |a: &[&str]| a.iter().map(|a| a.parse().unwrap()).collect();
        let pod = Pod {
            namespace: "ns".into(),
            name: "p".into(),
            labels: Labels::default(),
            node: None,
            host_network: false,
            phase: PodPhase::Running,
            ips: parse(ips),
            host_ips: parse(host_ips),
            named_ports: Vec::new(),
        };
        let name = ObjectName {
            namespace: "ns".into(),
            name: "p".into(),
        };
        let facts = EndpointFacts {
            matched: Vec::new(),
            profile: 0,
        };
        EndpointMemo::new(Arc::new(pod), name, None, true, facts)
    }

    #[test]
    fn addresses_read_back_as_the_pod_has_them_however_many() {
        let lists: [&[&str]; 4] = [
            &[],
            &["10.0.0.1"],
            &["10.0.0.1", "fd00::1"],
            &["10.0.0.1", "fd00::1", "10.0.0.2"],
        ];
        for ips in lists {
            for host_ips in lists {
                let m = endpoint(ips, host_ips);
                assert_eq!(m.ips(), m.pod.ips.as_slice());
                assert_eq!(m.host_ips(), m.pod.host_ips.as_slice());
                assert_eq!(m.sig, NO_SIG);
            }
        }
    }
}
