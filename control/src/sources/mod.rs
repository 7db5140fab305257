//! Where cluster state comes from.
//!
//! [`manifests`] reads YAML or JSON files and directories — a `kubectl get
//! ns,pods,netpol -A -o yaml` dump or hand-written objects — for the offline
//! commands and for standalone nodes.

pub mod kube;
pub mod manifests;
