//! Per-worker counters.
//!
//! Each worker owns one [`WorkerStats`], aligned to its own cache lines so
//! that workers never write to a line another core holds. A worker counts
//! into a plain [`Counters`] during a batch and adds it to its shared
//! counters once per batch; readers (metrics, summaries) load them at any
//! time without stopping anyone.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A batch's worth of counts, owned by one worker.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// One worker's counters, readable from other threads.
        #[repr(align(128))]
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $($name: AtomicU64,)*
        }

        impl WorkerStats {
            /// Adds a batch's counts (called by the owning worker only).
            #[inline]
            pub fn add(&self, c: &Counters) {
                $(if c.$name != 0 {
                    // Single writer: a load and a store, no read-modify-write.
                    let v = self.$name.load(Ordering::Relaxed);
                    self.$name.store(v + c.$name, Ordering::Relaxed);
                })*
            }

            /// The counts so far.
            #[must_use]
            pub fn snapshot(&self) -> Counters {
                Counters { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl std::ops::AddAssign for Counters {
            fn add_assign(&mut self, o: Self) {
                $(self.$name += o.$name;)*
            }
        }
    };
}

counters! {
    /// Frames received.
    rx_packets,
    /// Bytes received.
    rx_bytes,
    /// Frames let through.
    allowed,
    /// Bytes of the frames let through.
    allowed_bytes,
    /// Frames dropped (by policy, or malformed with the drop action).
    denied,
    /// Bytes of the frames dropped.
    denied_bytes,
    /// Frames that did not parse (given the configured verdict).
    malformed,
    /// Frames that are not IP (ARP and such: not policy's business).
    not_ip,
    /// New connections allowed (conntrack entries created).
    new_allowed,
    /// Connection attempts denied.
    new_denied,
    /// Connection attempts the source's egress policy denied.
    new_denied_egress,
    /// Connection attempts the destination's ingress policy denied (an
    /// attempt both sides deny counts in both).
    new_denied_ingress,
    /// Packets of known connections.
    conntrack_hits,
    /// Connections picked up mid-stream.
    picked_up,
    /// Entries that evicted another.
    conntrack_evictions,
    /// Inserts that found no slot.
    conntrack_insert_failures,
    /// Established connections re-checked against a new generation.
    revalidated,
    /// Established connections cut because a new generation denies them.
    revoked,
    /// New connections to a Service translated to a backend (allowed).
    service_translated,
    /// Attempts on a Service frontend with no usable endpoint anywhere
    /// (refused, as kube-proxy rejects them).
    service_no_endpoint,
    /// Port unreachables sent back for attempts counted in
    /// `service_no_endpoint` (see [`crate::reject`]).
    service_rejects,
    /// Attempts counted in `service_no_endpoint` left unanswered because
    /// the worker's answer budget was spent ([`crate::reject::Budget`]).
    service_rejects_limited,
    /// Attempts on an `internalTrafficPolicy: Local` frontend with no
    /// endpoint on this node (dropped, as kube-proxy drops them).
    service_no_local_endpoint,
    /// Forward packets that found the alias of a translated connection
    /// whose entry had ended (the alias is removed, the packet is new).
    service_stale_aliases,
    /// Translated connections ended because a new generation no longer
    /// lists their backend as serving their frontend (or has no such
    /// frontend): endpoint churn. A TCP or SCTP packet meeting it is
    /// dropped; a UDP client's datagram is translated anew.
    service_backend_gone,
    /// Non-first fragments given their first fragment's verdict.
    fragments_followed,
    /// Non-first fragments whose first fragment was not seen.
    fragments_orphaned,
    /// Batches processed.
    batches,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_accumulate_and_stats_are_cache_line_aligned() {
        let s = WorkerStats::default();
        let mut c = Counters {
            rx_packets: 3,
            denied: 1,
            ..Counters::default()
        };
        s.add(&c);
        s.add(&c);
        let snap = s.snapshot();
        assert_eq!((snap.rx_packets, snap.denied, snap.allowed), (6, 2, 0));
        c += snap;
        assert_eq!(c.rx_packets, 9);
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
    }
}
