//! podfence's fast path.
//!
//! This crate owns everything a worker thread touches per packet and nothing
//! that knows about Kubernetes: the compiled policy [`tables`] and their
//! classifier, the address [`prefix`] types and the longest-prefix [`lpm`]
//! map that peer identities are looked up in. The control plane compiles
//! cluster state into a [`tables::Tables`] value through
//! [`tables::TablesBuilder`], and its Services into a
//! [`services::ServiceTable`] through [`services::ServiceTableBuilder`]; the
//! datapath only reads them, both published together ([`publish`]).

pub mod conntrack;
pub mod craft;
pub mod denials;
pub mod flow;
pub mod fragments;
pub mod link;
pub mod lpm;
pub mod nat;
pub mod offload;
pub mod ports;
pub mod prefix;
pub mod publish;
pub mod reject;
pub mod services;
pub mod stats;
pub mod switch;
pub mod tables;
pub mod wire;
pub mod worker;

pub use prefix::{Prefix, PrefixError};
pub use services::{ServiceTable, ServiceTableBuilder};
pub use tables::{Decision, Direction, Tables, TablesBuilder, Verdict};
pub use wire::IpProtocol;
