//! Where cluster state comes from; both sources feed a
//! [`ClusterIndex`](crate::index::ClusterIndex).
//!
//! [`manifests`] reads YAML or JSON files and directories — a `kubectl get
//! ns,pods,netpol -A -o yaml` dump or hand-written objects — for the offline
//! commands and for standalone nodes; [`kube`] watches the Kubernetes API,
//! with `cluster_policies` for the CRDs of the cluster-scoped tiers.

mod cluster_policies;
pub mod kube;
pub mod manifests;
