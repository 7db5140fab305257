//! The crate's error type: one variant per failure an operator can act on,
//! each message saying what failed on which interface and what to check.

use std::io;

use crate::config::AttachMode;

/// Errors from loading, attaching and operating the redirector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No interface with this name exists (in the caller's network namespace).
    #[error("interface {0} not found")]
    InterfaceNotFound(String),
    /// No interface with this index exists (in the caller's network namespace).
    #[error("interface index {0} not found")]
    InterfaceIndexNotFound(u32),
    /// The name cannot be an interface name (empty, too long, NUL byte).
    #[error("invalid interface name {0:?}: must be 1 to 15 bytes without NUL")]
    InvalidInterfaceName(String),
    /// `RedirectConfig::max_queues` is out of range.
    #[error("max_queues must be between 1 and {limit}, got {got}")]
    InvalidQueueCount {
        /// The configured value.
        got: u32,
        /// The largest accepted value.
        limit: u32,
    },
    /// `RedirectConfig::max_interfaces` is 0, or with `max_queues` makes an
    /// XSKMAP larger than the loader creates.
    #[error(
        "max_interfaces ({interfaces}) times max_queues ({queues}) must be between 1 and {limit}"
    )]
    InvalidInterfaceCount {
        /// The configured interfaces.
        interfaces: u32,
        /// The configured queues.
        queues: u32,
        /// The largest accepted product.
        limit: u32,
    },
    /// Every interface slot of a shared program is taken.
    #[error(
        "the XDP program serves {max_interfaces} interfaces already; cannot attach {ifname} \
         to it (load another program)"
    )]
    NoFreeSlot {
        /// Interface name.
        ifname: String,
        /// Slots of the program.
        max_interfaces: u32,
    },
    /// Opening or loading the BPF object failed (verifier, permissions,
    /// kernel without BPF/XDP support).
    #[error(
        "loading the XDP program failed (needs root or CAP_BPF+CAP_NET_ADMIN and a kernel with \
         BPF, XDP and AF_XDP): {0}"
    )]
    Load(#[source] libbpf_rs::Error),
    /// The loaded object does not match what the loader expects.
    #[error("internal error, podfence-bpf is built inconsistently: {0}")]
    Inconsistent(String),
    /// Another (non-podfence) XDP program is attached and
    /// `RedirectConfig::replace_foreign` is off.
    #[error(
        "interface {ifname} already has XDP program {name:?} (id {id}, {mode} mode) attached, \
         which is not podfence's; detach it (`ip link set dev {ifname} xdp off`) or set \
         RedirectConfig::replace_foreign"
    )]
    ForeignProgram {
        /// Interface name.
        ifname: String,
        /// Kernel program id.
        id: u32,
        /// Program name as reported by the kernel.
        name: String,
        /// Mode it is attached in.
        mode: AttachMode,
    },
    /// Attaching in the given mode failed.
    #[error("attaching XDP to {ifname} in {mode} mode failed: {source}")]
    Attach {
        /// Interface name.
        ifname: String,
        /// Mode tried.
        mode: AttachMode,
        /// Kernel error.
        #[source]
        source: io::Error,
    },
    /// `XdpMode::Auto`: both native and generic attach failed.
    #[error(
        "attaching XDP to {ifname} failed in native mode ({native}) and in generic mode \
         ({generic})"
    )]
    AttachAuto {
        /// Interface name.
        ifname: String,
        /// Error from the native attempt.
        native: io::Error,
        /// Error from the generic attempt.
        generic: io::Error,
    },
    /// Querying the interface's XDP state failed.
    #[error("querying the XDP programs of {ifname} failed: {source}")]
    Query {
        /// Interface name.
        ifname: String,
        /// Kernel error.
        #[source]
        source: io::Error,
    },
    /// Detaching failed.
    #[error("detaching XDP from {ifname} ({mode} mode) failed: {source}")]
    Detach {
        /// Interface name.
        ifname: String,
        /// Mode detached from.
        mode: AttachMode,
        /// Kernel error.
        #[source]
        source: io::Error,
    },
    /// A queue index at or above `max_queues`.
    #[error(
        "queue {queue} is out of range for {ifname}: its XSKMAP has {max_queues} entries \
         (raise RedirectConfig::max_queues)"
    )]
    QueueOutOfRange {
        /// Interface name.
        ifname: String,
        /// Requested queue.
        queue: u32,
        /// Entries in the map.
        max_queues: u32,
    },
    /// Inserting a socket into the XSKMAP failed.
    #[error(
        "binding fd {fd} to queue {queue} of {ifname} failed (the fd must be an AF_XDP socket \
         bound to that interface and queue): {source}"
    )]
    RegisterSocket {
        /// Interface name.
        ifname: String,
        /// Queue index.
        queue: u32,
        /// The file descriptor given.
        fd: i32,
        /// Kernel error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// Another map operation failed.
    #[error("{op} on map {map} of {ifname} failed: {source}")]
    Map {
        /// Interface name.
        ifname: String,
        /// Map name.
        map: &'static str,
        /// What was attempted.
        op: &'static str,
        /// Kernel error.
        #[source]
        source: libbpf_rs::Error,
    },
}
