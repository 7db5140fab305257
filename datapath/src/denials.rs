//! Denied packets, handed from the workers to whoever explains them.
//!
//! A worker's output (the live [`crate::switch::Switch`]) copies each packet
//! that policy drops (or would drop, in audit mode), its first [`SNAP_LEN`]
//! bytes and the decision, into a
//! bounded lock-free [`DenialQueue`]; the control plane drains it off the
//! packet path to count denials by policy, write deny logs and capture the
//! packets. A push never allocates or blocks: when the queue is full the
//! record is dropped and counted, so a flood of denied packets costs the
//! workers a copy each and cannot grow memory.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::flow::FlowKey;
use crate::link::LinkType;
use crate::tables::Verdict;

/// Bytes of each denied packet kept for capture.
pub const SNAP_LEN: usize = 256;

/// Why the packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenialKind {
    /// The first packet of a connection attempt that policy denies.
    Connection,
    /// A packet of an established connection that a newer policy
    /// generation no longer allows.
    Revoked,
    /// The first packet of a connection attempt that policy would deny,
    /// passed because the pod is in audit mode.
    Audited,
}

/// One denied packet.
#[derive(Clone, Copy, Debug)]
pub struct Denial {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The table generation that decided.
    pub generation: u64,
    /// Why it was dropped.
    pub kind: DenialKind,
    /// The packet's flow, in its own direction.
    pub flow: FlowKey,
    /// The decision of both sides.
    pub verdict: Verdict,
    /// Link type of `bytes`.
    pub link: LinkType,
    /// Length of the packet on the wire.
    pub wire_len: u32,
    /// How many of `bytes` hold the packet's first bytes.
    pub captured: u16,
    /// The packet's first bytes.
    pub bytes: [u8; SNAP_LEN],
}

impl Denial {
    /// A record of `frame` (its first [`SNAP_LEN`] bytes), to be completed
    /// with the decision.
    #[must_use]
    pub fn of_frame(link: LinkType, frame: &[u8], wire_len: u32) -> Self {
        let captured = frame.len().min(SNAP_LEN);
        let mut bytes = [0; SNAP_LEN];
        bytes[..captured].copy_from_slice(&frame[..captured]);
        Self {
            unix_ns: 0,
            generation: 0,
            kind: DenialKind::Connection,
            flow: FlowKey::default(),
            verdict: Verdict {
                egress: crate::tables::Decision::NotEnforced,
                ingress: crate::tables::Decision::NotEnforced,
                passed: crate::tables::Passed::NONE,
            },
            link,
            wire_len,
            captured: captured as u16,
            bytes,
        }
    }

    /// The captured bytes.
    #[must_use]
    pub fn packet(&self) -> &[u8] {
        &self.bytes[..usize::from(self.captured)]
    }
}

/// A bounded queue of denials, shared by the workers (producers) and one
/// consumer.
#[derive(Debug)]
pub struct DenialQueue {
    queue: ArrayQueue<Denial>,
    lost: AtomicU64,
}

impl DenialQueue {
    /// A queue of `capacity` records (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            lost: AtomicU64::new(0),
        }
    }

    /// Whether the queue is full: a producer can count its denial as lost
    /// ([`Self::count_lost`]) without building the record.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Counts `n` denials lost to a full queue.
    pub fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Queues a denial; counts it as lost when the queue is full.
    pub fn push(&self, denial: Denial) {
        if self.queue.push(denial).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The oldest queued denial.
    #[must_use]
    pub fn pop(&self) -> Option<Denial> {
        self.queue.pop()
    }

    /// Denials dropped because the queue was full.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Decision, GroupId};

    fn denial(frame: &[u8]) -> Denial {
        let verdict = Verdict {
            egress: Decision::NotEnforced,
            ingress: Decision::Denied { group: GroupId(3) },
            passed: crate::tables::Passed::NONE,
        };
        Denial {
            verdict,
            ..Denial::of_frame(LinkType::Ethernet, frame, 1500)
        }
    }

    #[test]
    fn keeps_the_first_bytes_and_counts_what_does_not_fit() {
        let q = DenialQueue::new(2);
        let long = vec![7u8; 1500];
        q.push(denial(&long));
        q.push(denial(&[1, 2, 3]));
        q.push(denial(&[4]));
        assert_eq!(q.lost(), 1);
        let first = q.pop().unwrap();
        assert_eq!(first.packet().len(), SNAP_LEN);
        assert_eq!(first.wire_len, 1500);
        assert_eq!(q.pop().unwrap().packet(), &[1, 2, 3]);
        assert!(q.pop().is_none());
    }
}
