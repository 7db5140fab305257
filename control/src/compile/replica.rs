//! A pod added to the last tables, or removed from them, without compiling
//! the cluster.
//!
//! A pod that starts is mostly a replica: its labels, namespace and ports
//! are those of a pod compiled already, so its identity and its groups
//! exist, and the next compile would only map its addresses. Compiling is
//! O(pods) however small the change (milliseconds at 10k pods, while the
//! runtime waits for the CNI ADD), so [`Compiler::add_replica`] works out
//! the new pod's identity and groups from what the last compile
//! remembered, the way that compile would, and maps its addresses into a
//! copy of the tables ([`Tables::with_pod`]). Any pod that would need
//! something new (an identity, a group, a node) is refused, and the caller
//! compiles. The verdicts are those of a compile; the numbering of pods
//! may differ until the next compile. A local pod that goes
//! ([`Compiler::remove_pod`]) leaves its identity and groups as they are
//! (unused, they change no verdict); only its addresses go.
//!
//! The per-endpoint steps the compile and this share (group and tier
//! group keys, audit) are here.

use std::net::IpAddr;
use std::sync::Arc;

use podfence_datapath::Tables;
use podfence_datapath::tables::{
    BuildError, Direction, Enforcement, GroupId, IdentityId, NodeId, ObjectName, PodAddress, PodId,
    Tier, TierGroups,
};

use super::groups::GroupKey;
use super::tiers::TierPolicy;
use super::{AUDIT_LABEL, CompileOptions, Compiler};
use crate::model::{Namespace, NetworkPolicy, Pod};

/// Why a pod was not added to or removed from the last tables (the caller
/// compiles).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NeedsCompile {
    /// Nothing was compiled yet.
    #[error("nothing compiled yet")]
    NothingCompiled,
    /// Not a pod policy applies to here.
    #[error("not a local pod with addresses of its own")]
    NotALocalEndpoint,
    /// The last compile has the pod (perhaps at other addresses).
    #[error("the last compile has the pod already")]
    Compiled,
    /// No compiled address is like one of its addresses.
    #[error("no compiled address has the identity of {0}")]
    NewIdentity(IpAddr),
    /// No compiled pod is isolated by the same policies.
    #[error("no compiled pod has its {0} group")]
    NewGroup(&'static str),
    /// Its host addresses are not this node's.
    #[error("its host addresses are not this node's")]
    NewNode,
    /// Another pod claims one of its addresses too.
    #[error("another pod has {0} too")]
    SharedAddress(IpAddr),
    /// The tables do not have one of its addresses as its own.
    #[error("the tables do not have it at {0}")]
    NotInTables(IpAddr),
    /// The tables refused it (an address another pod has).
    #[error(transparent)]
    Tables(#[from] BuildError),
}

/// What [`Compiler::add_replica`] needs of the last compile beyond its memo.
pub(super) struct ReplicaMemo {
    /// Whether egress rules use named ports (identities then include them).
    pub(super) egress_named: bool,
    /// The tier policies, in precedence order.
    pub(super) tiers: Vec<TierShape>,
    /// This node's id, when it was given addresses.
    pub(super) local_node: Option<NodeId>,
}

/// What a tier policy's groups depend on beyond which pods it selects.
#[derive(Clone, Copy, Debug)]
pub(super) struct TierShape {
    tier: Tier,
    /// Whether it has ingress / egress rules.
    has_rules: [bool; 2],
    /// Whether its ingress rules use named ports.
    named_ingress: bool,
}

impl TierShape {
    pub(super) fn of(policy: &TierPolicy<'_>) -> Self {
        Self {
            tier: policy.policy.tier,
            has_rules: [!policy.rules[0].is_empty(), !policy.rules[1].is_empty()],
            named_ingress: policy.named[0],
        }
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// Per direction, the key of the group of the policies that isolate `pod`
/// (`None`: none does). `candidates` are the policies of its namespace, by
/// index ascending, with whether their ingress / egress rules use named
/// ports; `profile` is its named-port profile.
pub(super) fn group_keys<'p>(
    pod: &Pod,
    profile: u32,
    candidates: impl Iterator<Item = (u32, &'p NetworkPolicy, [bool; 2])>,
) -> [Option<GroupKey>; 2] {
    let mut selecting: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    let mut named_ingress = false;
    for (i, policy, named) in candidates {
        if policy.pod_selector.matches(&pod.labels) {
            if policy.isolates_ingress {
                selecting[0].push(i);
                named_ingress |= named[0];
            }
            if policy.isolates_egress {
                selecting[1].push(i);
            }
        }
    }
    let [ingress, egress] = selecting;
    let ingress_profile = if named_ingress { profile } else { 0 };
    [
        (!ingress.is_empty()).then_some((Direction::Ingress, ingress, ingress_profile)),
        (!egress.is_empty()).then_some((Direction::Egress, egress, 0)),
    ]
}

/// Per direction and tier that has some, the key of the tier group of the
/// tier policies (indices into `tiers`, ascending) selecting a pod with
/// named-port profile `profile`; in numbering order.
pub(super) fn tier_group_keys(
    selected: &[u32],
    tiers: &[TierShape],
    profile: u32,
) -> Vec<(Tier, Direction, GroupKey)> {
    let mut keys = Vec::new();
    for (d, direction) in DIRECTIONS.into_iter().enumerate() {
        for tier in [Tier::Admin, Tier::Baseline] {
            let members: Vec<u32> = selected
                .iter()
                .copied()
                .filter(|&t| {
                    let t = &tiers[t as usize];
                    t.tier == tier && t.has_rules[d]
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            let uses_named = d == 0 && members.iter().any(|&t| tiers[t as usize].named_ingress);
            let profile = if uses_named { profile } else { 0 };
            keys.push((tier, direction, (direction, members, profile)));
        }
    }
    keys
}

/// Whether the pods of `namespace` are audited rather than enforced.
pub(super) fn is_audited(options: &CompileOptions, namespace: Option<&Arc<Namespace>>) -> bool {
    options.audit
        || namespace.is_some_and(|ns| {
            ns.labels.get(AUDIT_LABEL.0).map(String::as_str) == Some(AUDIT_LABEL.1)
        })
}

/// How a pod isolated by `group` is enforced.
pub(super) fn enforced(group: GroupId, audited: bool) -> Enforcement {
    if audited {
        Enforcement::Audited(group)
    } else {
        Enforcement::Isolated(group)
    }
}

impl Compiler {
    /// `last` (the tables of the last compile, or made from them by this)
    /// with `pod`, in its namespace object `namespace`, numbered
    /// `generation`: see the module doc. The pod must be of the state the
    /// last compile had, plus pods added by this since.
    pub fn add_replica(
        &self,
        last: &Tables,
        pod: &Pod,
        namespace: Option<&Arc<Namespace>>,
        generation: u64,
    ) -> Result<Tables, NeedsCompile> {
        let memo = &self.memo;
        let (Some(fill), Some(shape), Some(block_maps)) =
            (&memo.fill, &memo.replica, &memo.block_maps)
        else {
            return Err(NeedsCompile::NothingCompiled);
        };
        if !pod.is_policy_endpoint() || !self.options.locality.includes(pod) {
            return Err(NeedsCompile::NotALocalEndpoint);
        }
        if self.compiled_pod(&pod.key()).is_some() {
            return Err(NeedsCompile::Compiled);
        }
        let mut ports = pod.named_ports.clone();
        ports.sort();
        ports.dedup();
        // Named ports no compiled pod has make its identity or groups new
        // only where rules use named ports: a profile no key has.
        let profile = memo.profiles.ids.get(&ports).copied().unwrap_or(u32::MAX);

        // Its identity: the live selectors it matches, each address's
        // ipBlock signature, its ports if egress rules name ports.
        let live: Vec<u32> = (0..memo.selectors.items.len())
            .filter(|&s| memo.sigs_live.get(s).copied().unwrap_or(false))
            .filter(|&s| memo.selectors.items[s].matches(pod, namespace.map(|n| &**n)))
            .map(|s| s as u32)
            .collect();
        let sig = memo.selector_sigs.ids.get(&live).copied();
        let identity_profile = if shape.egress_named { profile } else { 0 };
        let identity = |ip: IpAddr| {
            let block = match ip {
                IpAddr::V4(a) => block_maps.v4.get(u32::from(a)),
                IpAddr::V6(a) => block_maps.v6.get(u128::from(a)),
            };
            let key = (sig?, block, identity_profile);
            let id = fill.inputs.identities.iter().position(|&k| k == key)?;
            Some(IdentityId(id as u32))
        };

        // Its groups, by the policies of its namespace.
        let policies = &memo.policies;
        let first = policies.partition_point(|m| m.policy.namespace < pod.namespace);
        let candidates = policies[first..]
            .iter()
            .take_while(|m| m.policy.namespace == pod.namespace)
            .enumerate()
            .map(|(i, m)| ((first + i) as u32, &*m.policy, m.named));
        let audited = is_audited(&self.options, namespace);
        let mut pair = [Enforcement::Open; 2];
        for (d, key) in group_keys(pod, profile, candidates).into_iter().enumerate() {
            if let Some(key) = key {
                let group = fill.inputs.groups.iter().position(|g| *g == key);
                let group = group.ok_or(NeedsCompile::NewGroup(["ingress", "egress"][d]))?;
                pair[d] = enforced(GroupId(group as u32), audited);
            }
        }
        let [ingress, egress] = pair;
        let selected: Vec<u32> = memo
            .tier_policies
            .iter()
            .enumerate()
            .filter(|(_, t)| namespace.is_some_and(|ns| t.subject.selects(&ns.labels, &pod.labels)))
            .map(|(t, _)| t as u32)
            .collect();
        let mut tiers = TierGroups::NONE;
        if !selected.is_empty() {
            tiers.audited = audited;
            let first_tier_group = fill.inputs.groups.len();
            for (tier, direction, key) in tier_group_keys(&selected, &shape.tiers, profile) {
                let group = fill.inputs.tier_groups.iter().position(|g| *g == key);
                let group = group.ok_or(NeedsCompile::NewGroup("tier"))?;
                tiers.set(tier, direction, GroupId((first_tier_group + group) as u32));
            }
        }

        // Its node: this one, known by the host addresses it reports.
        let node = match shape.local_node {
            Some(local) => {
                let known = |&ip: &IpAddr| {
                    let peer = last.peer(ip);
                    peer.pod.is_none() && peer.node == Some(local)
                };
                if !pod.host_ips.iter().all(known) {
                    return Err(NeedsCompile::NewNode);
                }
                Some(local)
            }
            None if pod.host_ips.is_empty() => None,
            None => return Err(NeedsCompile::NewNode),
        };

        let addresses = pod
            .ips
            .iter()
            .map(|&ip| {
                let entry = PodAddress {
                    identity: identity(ip).ok_or(NeedsCompile::NewIdentity(ip))?,
                    pod: PodId(0),
                    egress,
                    ingress,
                    node,
                    tiers,
                };
                Ok((ip, entry))
            })
            .collect::<Result<Vec<_>, NeedsCompile>>()?;
        let name = ObjectName {
            namespace: pod.namespace.as_str().into(),
            name: pod.name.as_str().into(),
        };
        Ok(last.with_pod(generation, name, &addresses)?)
    }

    /// `last` (the tables of the last compile, or made from them by this
    /// and [`Self::add_replica`]) without the local pod `pod`, numbered
    /// `generation`: its addresses resolve as any other address again. The
    /// pod must be one of the last compile's endpoints or added since, and
    /// gone from the state (or without addresses) now.
    pub fn remove_pod(
        &self,
        last: &Tables,
        pod: &Pod,
        generation: u64,
    ) -> Result<Tables, NeedsCompile> {
        let Some(shape) = &self.memo.replica else {
            return Err(NeedsCompile::NothingCompiled);
        };
        if !self.options.locality.includes(pod) {
            return Err(NeedsCompile::NotALocalEndpoint);
        }
        // A compile without it would forget a node address only it reported.
        let this_node = |ip: &IpAddr| self.options.node_addresses.contains(ip);
        if !pod.host_ips.is_empty()
            && (shape.local_node.is_none() || !pod.host_ips.iter().all(this_node))
        {
            return Err(NeedsCompile::NewNode);
        }
        let key = pod.key();
        for &ip in &pod.ips {
            let owner = last.peer(ip).pod.map(|p| last.pod(p.pod));
            if owner.is_none_or(|o| *o.namespace != *key.namespace || *o.name != *key.name) {
                return Err(NeedsCompile::NotInTables(ip));
            }
            // A compile without it would give the address to the other.
            let other = |m: &super::memo::EndpointMemo| m.ips().contains(&ip) && m.pod.key() != key;
            if self.memo.endpoints.iter().any(other) {
                return Err(NeedsCompile::SharedAddress(ip));
            }
        }
        Ok(last.without_pod_addresses(generation, &pod.ips))
    }
}
