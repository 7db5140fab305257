//! The kinds the index holds: what it needs of each, implemented once per
//! kind.
//!
//! A new kind is a [`Kind`] variant, a map in [`Cluster`], an [`Indexed`]
//! implementation here (for a namespaced kind, a `namespaced!` line) and a
//! line in [`Cluster::relist_into`]; the index,
//! its relists, readiness and metrics need nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::Cluster;
use crate::model::{
    ClusterNetworkPolicy, ClusterPolicyKey, EndpointSlice, Namespace, NetworkPolicy, Node,
    ObjectKey, Pod, Service,
};

/// The kinds of object the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Namespaces.
    Namespace,
    /// Pods.
    Pod,
    /// NetworkPolicies.
    NetworkPolicy,
    /// Services.
    Service,
    /// EndpointSlices.
    EndpointSlice,
    /// ClusterNetworkPolicies, AdminNetworkPolicies and
    /// BaselineAdminNetworkPolicies (one kind: one set of tiers).
    ClusterNetworkPolicy,
    /// Nodes.
    Node,
}

impl Kind {
    /// Every kind, in index order.
    pub const ALL: [Self; 7] = [
        Self::Namespace,
        Self::Pod,
        Self::NetworkPolicy,
        Self::Service,
        Self::EndpointSlice,
        Self::ClusterNetworkPolicy,
        Self::Node,
    ];
    /// How many kinds there are.
    pub const COUNT: usize = Self::ALL.len();

    /// The kind's name, as the API spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Self::Node => "Node",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the index needs of a kind of object: its key and where a
/// [`Cluster`] keeps it. Equality is over what the model keeps, so an
/// update that changes nothing else compares equal and is ignored.
pub trait Indexed: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// The kind.
    const KIND: Kind;
    /// The key the cluster keeps objects of this kind by.
    type Key: Clone + Ord + fmt::Debug + Send + Sync + 'static;

    /// This object's key.
    fn key(&self) -> Self::Key;
    /// The key of the object `namespace/name` (the namespace is ignored
    /// for cluster-scoped kinds).
    fn key_of(namespace: &str, name: &str) -> Self::Key;
    /// The key as namespace and name, for messages and metrics.
    fn object_key(key: &Self::Key) -> ObjectKey;
    /// The cluster's objects of this kind.
    fn objects(cluster: &Cluster) -> &BTreeMap<Self::Key, Arc<Self>>;
    /// The cluster's objects of this kind, to change.
    fn objects_mut(cluster: &mut Cluster) -> &mut BTreeMap<Self::Key, Arc<Self>>;
}

impl Indexed for Namespace {
    const KIND: Kind = Kind::Namespace;
    type Key = String;

    fn key(&self) -> String {
        self.name.clone()
    }
    fn key_of(_: &str, name: &str) -> String {
        name.to_owned()
    }
    fn object_key(key: &String) -> ObjectKey {
        ObjectKey::cluster_scoped(key.clone())
    }
    fn objects(cluster: &Cluster) -> &BTreeMap<String, Arc<Self>> {
        &cluster.namespaces
    }
    fn objects_mut(cluster: &mut Cluster) -> &mut BTreeMap<String, Arc<Self>> {
        &mut cluster.namespaces
    }
}

impl Indexed for Node {
    const KIND: Kind = Kind::Node;
    type Key = String;

    fn key(&self) -> String {
        self.name.clone()
    }
    fn key_of(_: &str, name: &str) -> String {
        name.to_owned()
    }
    fn object_key(key: &String) -> ObjectKey {
        ObjectKey::cluster_scoped(key.clone())
    }
    fn objects(cluster: &Cluster) -> &BTreeMap<String, Arc<Self>> {
        &cluster.nodes
    }
    fn objects_mut(cluster: &mut Cluster) -> &mut BTreeMap<String, Arc<Self>> {
        &mut cluster.nodes
    }
}

/// Keyed by kind family and name; `key_of` gives the key of a
/// ClusterNetworkPolicy (the kind a source watches by that name).
impl Indexed for ClusterNetworkPolicy {
    const KIND: Kind = Kind::ClusterNetworkPolicy;
    type Key = ClusterPolicyKey;

    fn key(&self) -> ClusterPolicyKey {
        ClusterNetworkPolicy::key(self)
    }
    fn key_of(_: &str, name: &str) -> ClusterPolicyKey {
        ClusterPolicyKey::new(crate::model::PolicyApi::ClusterV1beta1, name)
    }
    fn object_key(key: &ClusterPolicyKey) -> ObjectKey {
        ObjectKey::cluster_scoped(key.to_string())
    }
    fn objects(cluster: &Cluster) -> &BTreeMap<ClusterPolicyKey, Arc<Self>> {
        &cluster.cluster_policies
    }
    fn objects_mut(cluster: &mut Cluster) -> &mut BTreeMap<ClusterPolicyKey, Arc<Self>> {
        &mut cluster.cluster_policies
    }
}

/// A kind kept by namespace and name in the map `$field` of [`Cluster`].
macro_rules! namespaced {
    ($kind:ident, $field:ident) => {
        impl Indexed for $kind {
            const KIND: Kind = Kind::$kind;
            type Key = ObjectKey;

            fn key(&self) -> ObjectKey {
                $kind::key(self)
            }
            fn key_of(namespace: &str, name: &str) -> ObjectKey {
                ObjectKey::new(namespace, name)
            }
            fn object_key(key: &ObjectKey) -> ObjectKey {
                key.clone()
            }
            fn objects(cluster: &Cluster) -> &BTreeMap<ObjectKey, Arc<Self>> {
                &cluster.$field
            }
            fn objects_mut(cluster: &mut Cluster) -> &mut BTreeMap<ObjectKey, Arc<Self>> {
                &mut cluster.$field
            }
        }
    };
}

namespaced!(Pod, pods);
namespaced!(NetworkPolicy, policies);
namespaced!(Service, services);
namespaced!(EndpointSlice, endpoint_slices);

impl Cluster {
    /// Feeds every kind of this state to `index` as one complete list each.
    pub(super) fn relist_into(self, index: &mut super::ClusterIndex) -> super::Outcome {
        let Self {
            namespaces,
            pods,
            policies,
            services,
            endpoint_slices,
            cluster_policies,
            nodes,
        } = self;
        index.relist(namespaces)
            | index.relist(pods)
            | index.relist(policies)
            | index.relist(services)
            | index.relist(endpoint_slices)
            | index.relist(cluster_policies)
            | index.relist(nodes)
    }
}
