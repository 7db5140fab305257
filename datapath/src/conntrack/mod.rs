//! Connection tracking: which connections are open, in what state, and
//! which policy generation allowed them.
//!
//! The worker looks every packet up here before it classifies anything: a
//! packet of a known connection (either direction) passes without a policy
//! lookup, and only a miss is classified. `state` holds the per-protocol
//! state machine ([`State`]) and its [`Timeouts`]; `table` the one
//! [`Conntrack`] all workers share, bounded and lock-free. Address
//! translation will keep its side data (the original destination of a
//! translated connection) next to them.

mod state;
mod table;

pub use state::{Signal, State, Timeouts, initial_state, opens_connection, tcp_flags};
pub use table::{Conntrack, Hit, Inserted, Located};

/// A connection's 5-tuple: the parser's flow key (ICMP echo: the
/// identifier in both ports).
pub use crate::flow::FlowKey as ConnKey;
