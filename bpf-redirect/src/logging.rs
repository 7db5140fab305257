//! Routes libbpf's own messages (verifier logs, kernel netlink error
//! strings) into `tracing`, instead of libbpf's default of raw stderr.
//!
//! libbpf has one process-wide print callback, so installing it is left to
//! the binary (the agent, a test) rather than done behind its back on attach.

use libbpf_rs::PrintLevel;
use tracing::{debug, info, warn};

/// Sends libbpf's messages to `tracing` under the target `libbpf`, at the
/// matching level. Process-wide; replaces any callback set before.
pub fn forward_libbpf_logs() {
    libbpf_rs::set_print(Some((PrintLevel::Debug, forward)));
}

// libbpf-rs's callback type takes the message by value.
#[allow(clippy::needless_pass_by_value)]
fn forward(level: PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        PrintLevel::Warn => warn!(target: "libbpf", "{msg}"),
        PrintLevel::Info => info!(target: "libbpf", "{msg}"),
        PrintLevel::Debug => debug!(target: "libbpf", "{msg}"),
    }
}
