//! Kubernetes objects reduced to the parts that decide policy and Service
//! translation.
//!
//! Each kind has a `from_resource` that takes the k8s-openapi object, applies
//! the API server's defaulting and validation rules that matter for policy
//! (so a manifest that a cluster would reject is rejected here too, naming the
//! object and the field), and returns a small, comparable value. Everything
//! downstream (the index, the compiler, the reference evaluator, the CLI)
//! works on these values only. One file per kind; `selector` holds the
//! label selectors they share.

mod cluster_network_policy;
mod endpoint_slice;
mod namespace;
mod network_policy;
mod node;
mod pod;
mod protocol;
mod selector;
mod service;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

pub use cluster_network_policy::{
    Action, ClusterNetworkPolicy, ClusterPolicyKey, MAX_PRIORITY, PolicyApi, Precedence, Subject,
    Tier, TierPeer, TierRule,
};
pub use endpoint_slice::{AddressType, Endpoint, EndpointPort, EndpointSlice, SERVICE_NAME_LABEL};
pub use namespace::{NAMESPACE_NAME_LABEL, Namespace};
pub use network_policy::{IpBlock, NetworkPolicy, Peer, PolicyPort, PortSpec, Rule};
pub use node::Node;
pub use pod::{NamedPort, Pod, PodPhase};
pub use protocol::Protocol;
pub use selector::{LabelSelector, Operator, Requirement};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, MAX_AFFINITY_TIMEOUT_SECONDS, SERVICE_PROXY_NAME_LABEL,
    Service, ServicePort, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};

/// Namespace and name of an object: the one way objects are keyed and
/// named. Cluster-scoped objects (namespaces) have an empty namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a namespaced object.
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a cluster-scoped object.
    #[must_use]
    pub fn cluster_scoped(name: impl Into<String>) -> Self {
        Self::new(String::new(), name)
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Kind and key of an object, for messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `Namespace`, `Pod`, `NetworkPolicy`, ...
    pub kind: String,
    /// Its namespace and name (`<unnamed>` when it has none).
    pub key: ObjectKey,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// An object the API server would reject, or one podfence cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct ModelError {
    /// The offending object.
    pub object: ObjectRef,
    /// Path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The reference of an object of a namespaced `kind`: a missing namespace is
/// `default`, as `kubectl apply` would make it.
fn object_ref(kind: &str, meta: &meta::ObjectMeta) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        key: ObjectKey::new(
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or("default".into()),
            meta.name.clone().unwrap_or_default(),
        ),
    }
}
