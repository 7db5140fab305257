//! podfence's XDP redirector: the kernel side of the AF_XDP fast path.
//!
//! An XDP program (`src/bpf/redirect.bpf.c`, compiled by `build.rs` into a
//! libbpf-rs skeleton) runs on each interface the datapath switches. It hands
//! every IPv4/IPv6 frame to the AF_XDP socket bound to the frame's receive
//! queue, passes ARP and IPv6 neighbour discovery (and unknown ethertypes) to
//! the kernel, and applies a configurable action — drop by default, so a dead
//! agent fails closed — when no socket is bound to the queue.
//!
//! [`RedirectProgram::load`] loads one program instance, with its XSKMAP and
//! counters, that serves up to `max_interfaces` interfaces, each in a slot
//! of its own; [`Redirector::attach_shared`] attaches it to one interface
//! ([`Redirector::attach`] loads a program for that interface alone). The
//! handle binds sockets to queues ([`Redirector::register_socket`]), reads
//! [`Counters`] and detaches on [`Redirector::detach`] or drop. Sharing
//! matters for starting pods: attaching a program not attached anywhere
//! yet makes the kernel rebuild its XDP dispatcher and wait out an RCU grace
//! period (about 10 ms, serialised), attaching one already attached does
//! not. The program is attached through netlink,
//! not a BPF link, so it deliberately outlives a crashed agent (keeping the
//! fail-closed fallback in force); the next attach replaces it atomically.

mod config;
mod counters;
mod error;
mod iface;
mod logging;
mod redirector;
mod xdp;

/// The libbpf-cargo skeleton generated from `redirect.bpf.c` by `build.rs`
/// (generated code: its `unsafe` blocks are libbpf-cargo's, without
/// `// SAFETY:` comments).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    unreachable_pub,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/redirect.skel.rs"));
}

pub use config::{
    AttachMode, MAX_QUEUES_LIMIT, MAX_XSKMAP_ENTRIES, NoSocketAction, RedirectConfig, XdpMode,
};
pub use counters::{Counter, Counters};
pub use error::Error;
pub use iface::Interface;
pub use logging::forward_libbpf_logs;
pub use redirector::{PROGRAM_NAME, RedirectProgram, Redirector};
pub use xdp::{AttachedProgram, attached_programs};
