//! Attach configuration and its encoding for the kernel.
//!
//! Kept apart from the loader so the translation from the Rust enums to XDP
//! flags and actions (the one place where a wrong constant would silently
//! invert fail-closed into fail-open) is small and unit-tested.

use std::fmt;

use libbpf_rs::libbpf_sys;

/// Largest XSKMAP the loader creates (`RedirectConfig::max_queues`). Far above
/// any NIC's queue count; it bounds the kernel memory a typo can ask for.
pub const MAX_QUEUES_LIMIT: u32 = 4096;

/// Largest XSKMAP the loader creates (`max_interfaces * max_queues`): 1 Mi
/// entries, 8 MiB of kernel memory.
pub const MAX_XSKMAP_ENTRIES: u32 = 1 << 20;

/// Which XDP attach mode to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, else generic mode.
    /// The fallback is logged at `warn` level.
    #[default]
    Auto,
    /// Native (driver) mode only; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode only: works on every interface, slower.
    Generic,
}

/// The mode a program is actually attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP: `XDP_FLAGS_DRV_MODE`, `xdp` in `ip link`.
    Native,
    /// Generic (skb) XDP: `XDP_FLAGS_SKB_MODE`, `xdpgeneric` in `ip link`.
    Generic,
}

impl AttachMode {
    /// The netlink attach flag selecting this mode.
    pub(crate) fn flag(self) -> u32 {
        match self {
            Self::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            Self::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }

    /// The other mode: the kernel refuses native and generic programs on one
    /// interface at the same time.
    pub(crate) fn other(self) -> Self {
        match self {
            Self::Native => Self::Generic,
            Self::Generic => Self::Native,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// What the program does with an IPv4/IPv6 frame when no AF_XDP socket is
/// bound to its receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoSocketAction {
    /// Drop it (fail closed): with the agent down, pods get no IP traffic.
    #[default]
    Drop,
    /// Pass it to the kernel (fail open): the node forwards without policy.
    Pass,
}

impl NoSocketAction {
    /// The XDP action written to the program's `.rodata` and used as the
    /// fallback in `bpf_redirect_map`'s flags.
    pub(crate) fn xdp_action(self) -> u32 {
        match self {
            Self::Drop => libbpf_sys::XDP_DROP,
            Self::Pass => libbpf_sys::XDP_PASS,
        }
    }
}

/// How [`Redirector::attach`](crate::Redirector::attach) loads and attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Requested attach mode.
    pub mode: XdpMode,
    /// Action when no socket is bound to a frame's queue.
    pub no_socket_action: NoSocketAction,
    /// Entries in the XSKMAP: queues `0..max_queues` can get a socket. Frames
    /// from higher queues always take `no_socket_action`. 1..=`MAX_QUEUES_LIMIT`.
    pub max_queues: u32,
    /// Replace an XDP program that is not podfence's (by program name) if one
    /// is attached. Off by default: attach then fails and names the program.
    pub replace_foreign: bool,
    /// Interfaces one loaded program serves ([`RedirectProgram`](crate::RedirectProgram)):
    /// 1 for [`Redirector::attach`](crate::Redirector::attach); an agent
    /// sharing one program between its pods' interfaces sets more.
    /// `max_interfaces * max_queues` is at most `MAX_XSKMAP_ENTRIES`.
    pub max_interfaces: u32,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            mode: XdpMode::Auto,
            no_socket_action: NoSocketAction::Drop,
            max_queues: 64,
            replace_foreign: false,
            max_interfaces: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fails_closed() {
        let cfg = RedirectConfig::default();
        assert_eq!(cfg.no_socket_action, NoSocketAction::Drop);
        assert_eq!(
            cfg.no_socket_action.xdp_action(),
            1,
            "XDP_DROP is 1 in linux/bpf.h"
        );
        assert_eq!(cfg.mode, XdpMode::Auto);
        assert!(!cfg.replace_foreign);
    }

    #[test]
    fn actions_match_uapi() {
        // bpf_redirect_map only accepts XDP_ABORTED..XDP_TX in its low bits.
        assert_eq!(NoSocketAction::Drop.xdp_action(), 1);
        assert_eq!(NoSocketAction::Pass.xdp_action(), 2);
    }

    #[test]
    fn mode_flags_and_order() {
        assert_eq!(AttachMode::Native.flag(), 1 << 2);
        assert_eq!(AttachMode::Generic.flag(), 1 << 1);
        assert_eq!(AttachMode::Native.other(), AttachMode::Generic);
        assert_eq!(AttachMode::Generic.other(), AttachMode::Native);
        assert_eq!(AttachMode::Generic.to_string(), "generic");
    }
}
