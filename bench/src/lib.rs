//! podfence's benchmarks: synthetic clusters and traffic, an allocation
//! counter, and the scenarios behind `podfence-bench`.

#![allow(
    clippy::cast_precision_loss,
    reason = "report figures (counts, nanoseconds, bytes) stay far below 2^52"
)]

pub mod alloc;
pub mod apiserver;
pub mod cni_runtime;
pub mod cpu;
pub mod kube_proxy;
pub mod lifecycle;
pub mod live;
pub mod nft;
pub mod pipeline;
pub mod plot;
pub mod pod_services;
pub mod pod_start;
pub mod propagation;
pub mod replay_speed;
pub mod spread;
pub mod synthetic;
pub mod tcp;
pub mod testbed;
pub mod traffic;
pub mod veth;
