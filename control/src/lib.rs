//! podfence's control plane: from Kubernetes objects to datapath tables.
//!
//! [`model`] reduces objects to what decides policy, [`sources`] reads them
//! (manifests now; API watchers later), [`compile`] turns a cluster state into
//! a [`podfence_datapath::Tables`] generation, and [`probe`] names connection
//! attempts the way the CLI and the conformance data do and evaluates them
//! against compiled tables.

pub mod agent;
pub mod compile;
pub mod model;
pub mod probe;
pub mod replay;
pub mod sources;
