//! podfence's control plane: from Kubernetes objects to datapath tables.
//!
//! [`model`] reduces objects to what decides policy, [`sources`] reads them
//! (manifests and the Kubernetes API), [`compile`] turns a cluster state into
//! a [`podfence_datapath::Tables`] generation, [`probe`] names connection
//! attempts the way the CLI and the conformance data do and evaluates them
//! against compiled tables, [`replay`] runs captures through the worker
//! pipeline offline, [`agent`] enforces them live and [`capture`]
//! writes what it denies to pcapng.

#![forbid(unsafe_code)]

pub mod agent;
pub mod capture;
pub mod compile;
pub mod model;
pub mod probe;
pub mod replay;
pub mod sources;
