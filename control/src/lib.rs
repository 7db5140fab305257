//! podfence's control plane: from Kubernetes objects to datapath tables.
//!
//! [`model`] reduces objects to what decides policy, [`sources`] reads them
//! (manifests now; API watchers later), [`compile`] turns a cluster state into
//! a [`podfence_datapath::Tables`] generation, and [`reference`] evaluates the
//! API's rules directly, as the yardstick the compiled tables are tested
//! against. [`probe`] is the connection-attempt vocabulary the CLI shares.

pub mod model;
pub mod sources;
