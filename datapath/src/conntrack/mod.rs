//! Connection tracking: which connections are open, in what state, and
//! which policy generation allowed them.
//!
//! The worker looks every packet up here before it classifies anything: a
//! packet of a known connection (either direction) passes without a policy
//! lookup, and only a miss is classified. `state` holds the per-protocol
//! state machine ([`State`]) and its [`Timeouts`]; `table` the one
//! [`Conntrack`] all workers share, bounded and lock-free. A connection to
//! a Service keeps its translation there too ([`Nat`]: the original
//! destination in the entry of the translated tuple, the backend in an
//! alias of the original one; see `table`'s module doc).

mod state;
mod store;
mod table;

pub use state::{Signal, State, Timeouts, initial_state, opens_connection, tcp_flags};
pub use store::{LAYOUT_VERSION, Opened, StoreError, monotonic_ns};
pub use table::{Conntrack, Hit, Inserted, Located, Nat, NatAddr};

/// A connection's 5-tuple: the parser's flow key (ICMP echo: the
/// identifier in both ports).
pub use crate::flow::FlowKey as ConnKey;

/// What the state and table tests share.
#[cfg(test)]
mod test_support {
    use super::{ConnKey, Signal};

    pub(super) const SEC: u64 = 1_000_000_000;

    /// A 10.0.0.1 → 10.0.0.2 key.
    pub(super) fn key(sp: u16, dp: u16, proto: u8) -> ConnKey {
        ConnKey {
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            src_port: sp,
            dst_port: dp,
            protocol: proto,
            ipv6: false,
        }
    }

    /// A TCP segment's signal.
    pub(super) fn tcp(flags: u8) -> Signal {
        Signal::new(flags, None)
    }
}
