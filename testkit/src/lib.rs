//! Test support shared by podfence's test suites, for tests only: never a
//! normal dependency of a crate that ships.
//!
//! Helpers live here once instead of being copied into each test crate:
//!
//! - [`skip`]: skip a test that needs root or a kernel feature, saying why;
//! - [`netns`]: a network namespace that is deleted on drop (also when the
//!   test panics), with veth pairs, `ip` and code run inside it;
//! - [`packet`]: raw frames sent and received on an interface;
//! - [`frames`]: frames assembled byte by byte, independent of the parser;
//! - [`tables`]: small policy tables for worker and switch tests;
//! - [`counting`]: a global allocator that counts the calling thread's
//!   allocations;
//! - [`paths`]: the shared data beside the repository (conformance cases,
//!   capture corpus).

pub mod counting;
pub mod frames;
pub mod netns;
pub mod packet;
pub mod paths;
pub mod services;
pub mod skip;
pub mod tables;

pub use skip::{Need, skip_reason, skip_unless};
