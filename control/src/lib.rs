//! podfence's control plane: from Kubernetes objects to datapath tables.
//!
//! [`model`] reduces objects to what decides policy; [`sources`] reads them
//! (manifests and the Kubernetes API) into the [`index`], which holds the
//! cluster state and tells whether an event changed it; [`compile`] turns a
//! cluster state into a [`podfence_datapath::Tables`] generation and
//! [`publish`] swaps it in for the workers; [`probe`] names connection
//! attempts the way the CLI and the conformance data do and evaluates them
//! against compiled tables; [`replay`] runs captures through the worker
//! pipeline; [`agent`] enforces them live and [`capture`] writes what it
//! denies to pcapng; [`metrics`] are the control plane's figures.

#![forbid(unsafe_code)]

pub mod agent;
pub mod capture;
pub mod compile;
pub mod index;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod publish;
pub mod replay;
pub mod sources;
