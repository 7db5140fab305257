//! A cluster state: the objects of every kind the model keeps, by key.
//!
//! This is what the compiler, the probes and the offline commands read. The
//! [`ClusterIndex`](super::ClusterIndex) keeps one up to date from a source;
//! the manifest loader builds one directly.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::Indexed;
use crate::model::{
    ClusterNetworkPolicy, ClusterPolicyKey, EndpointSlice, Labels, Namespace, NetworkPolicy, Node,
    ObjectKey, Pod, Service,
};

/// Whether two maps hold the very same objects (the same `Arc`s under the
/// same keys): how an unchanged part of the state is told apart.
#[must_use]
pub fn same_objects<K: Eq, T>(a: &BTreeMap<K, Arc<T>>, b: &BTreeMap<K, Arc<T>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
}

/// A cluster state: namespaces, pods, policies, Services,
/// EndpointSlices, cluster-scoped policies and nodes, each by key.
///
/// Objects are shared (`Arc`): a clone of the state is cheap, and an object
/// that was not replaced is the same allocation in every state that holds
/// it, which is how [`crate::compile::Compiler`] tells what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Pods by namespace and name.
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    /// Policies by namespace and name.
    pub policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
    /// Services by namespace and name.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices by namespace and name (of the slice, not of its
    /// Service: a Service has one or more).
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// ClusterNetworkPolicies (and AdminNetworkPolicies,
    /// BaselineAdminNetworkPolicies) by kind and name.
    pub cluster_policies: BTreeMap<ClusterPolicyKey, Arc<ClusterNetworkPolicy>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
}

impl Cluster {
    /// Adds or replaces an object.
    pub fn apply<K: Indexed>(&mut self, object: K) {
        K::objects_mut(self).insert(object.key(), Arc::new(object));
    }

    /// Removes an object; returns whether it was there.
    pub fn delete<K: Indexed>(&mut self, key: &K::Key) -> bool {
        K::objects_mut(self).remove(key).is_some()
    }

    /// Gives every namespace that a pod or policy names but no object
    /// describes an implicit entry ([`Namespace::implicit`]).
    pub fn add_implicit_namespaces(&mut self) {
        let named: Vec<String> = self
            .pods
            .keys()
            .chain(self.policies.keys())
            .map(|key| key.namespace.clone())
            .filter(|ns| !self.namespaces.contains_key(ns))
            .collect();
        for ns in named {
            self.namespaces
                .entry(ns.clone())
                .or_insert_with(|| Arc::new(Namespace::implicit(&ns)));
        }
    }

    /// The pod `namespace/name`.
    #[must_use]
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .get(&ObjectKey::new(namespace, name))
            .map(AsRef::as_ref)
    }

    /// The labels of a namespace; an unknown namespace has only its name label.
    #[must_use]
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(Namespace::implicit(name).labels),
        }
    }
}
