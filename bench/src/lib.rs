//! podfence's benchmarks: synthetic clusters and traffic, an allocation
//! counter, and the scenarios behind `podfence-bench`.

pub mod alloc;
pub mod synthetic;
