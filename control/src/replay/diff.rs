//! The same captures under the current and a candidate policy state, and
//! the connections whose verdict changes, grouped into flows.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podfence_datapath::conntrack::ConnKey;
use podfence_datapath::tables::{Tables, Verdict};
use podfence_datapath::wire::ip_proto;
use rustc_hash::FxHashMap;

use super::{FileError, Flow, ReplayOptions, replay};

/// How a connection's verdict changes under the candidate policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// Allowed now, denied under the candidate: it would break.
    Break,
    /// Denied now, allowed under the candidate: it would open.
    Open,
}

impl Change {
    /// The word used in outputs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Break => "break",
            Self::Open => "open",
        }
    }
}

/// The connections from one address to one destination port (one protocol)
/// whose verdict changes the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedFlow {
    /// Which way.
    pub change: Change,
    /// The side that opened the connections.
    pub src: IpAddr,
    /// The side that accepted them.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// The destination port policy looks at (0 for protocols without ports).
    pub port: u16,
    /// Connections (5-tuples) of this flow in the captures.
    pub connections: u64,
    /// Their packets, both directions.
    pub packets: u64,
    /// Their bytes on the wire, both directions.
    pub bytes: u64,
    /// Index (from 1, across files) of the first packet of the first of them.
    pub first_packet: u64,
    /// The current verdict in the connections' direction; `None` when the
    /// first packet was not classified but let through as an ICMP error
    /// about a connection that was allowed.
    pub current: Option<Verdict>,
    /// The verdict under the candidate (as `current`).
    pub candidate: Option<Verdict>,
}

/// Totals of one kind of change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeTotals {
    /// Flows (source, destination, protocol, port).
    pub flows: u64,
    /// Connections.
    pub connections: u64,
    /// Packets.
    pub packets: u64,
}

/// The result of a diff.
#[derive(Debug)]
pub struct DiffReport {
    /// Captures given.
    pub files: usize,
    /// Frames replayed (each pass replays all of them).
    pub packets: u64,
    /// Connections seen (5-tuples, both directions counted once).
    pub connections: u64,
    /// What changes: flows that would break, then flows that would open,
    /// each by connections, then packets, descending, then by first packet.
    pub changes: Vec<ChangedFlow>,
    /// Captures that failed, with everything before the failure compared.
    pub errors: Vec<FileError>,
    /// Wall time of both passes (they run side by side).
    pub elapsed: Duration,
}

impl DiffReport {
    /// Totals of the flows that change in the direction `change`.
    #[must_use]
    pub fn totals(&self, change: Change) -> ChangeTotals {
        let mut t = ChangeTotals::default();
        for f in self.changes.iter().filter(|f| f.change == change) {
            t.flows += 1;
            t.connections += f.connections;
            t.packets += f.packets;
        }
        t
    }
}

/// The destination port policy looks at (as the worker classifies).
fn policy_port(key: &ConnKey) -> u16 {
    match key.protocol {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => key.dst_port,
        _ => 0,
    }
}

fn key_addr(a: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(a.into())
    } else {
        IpAddr::V4((a as u32).into())
    }
}

/// Replays `captures` once against `current` and once against `candidate`
/// (side by side, each exactly as [`replay`] does) and lists the
/// connections whose verdict differs.
///
/// A connection is one 5-tuple (both directions); its verdict is that of its
/// first packet, as in the flows listing: classified when it opens the
/// connection, picked up loosely when it is mid-stream. Connections are
/// grouped by initiator, responder, protocol and destination port; a
/// connection picked up as a reply counts in the direction it was opened.
#[must_use]
pub fn diff(
    current: &Tables,
    candidate: &Tables,
    captures: &[PathBuf],
    options: &ReplayOptions,
) -> DiffReport {
    let options = ReplayOptions {
        record_flows: true,
        keep_packet_verdicts: false,
        ..options.clone()
    };
    let start = Instant::now();
    let (before, after) = std::thread::scope(|s| {
        let before = s.spawn(|| replay(current.clone(), captures, &options));
        let after = replay(candidate.clone(), captures, &options);
        (before.join().expect("replay panicked"), after)
    });
    let elapsed = start.elapsed();

    let after_flows: FxHashMap<ConnKey, &Flow> = after
        .flows
        .iter()
        .map(|f| (f.key.canonical().0, f))
        .collect();
    // (change, initiator with ports zeroed but the policy port, related)
    let mut groups: FxHashMap<(Change, ConnKey, bool), ChangedFlow> = FxHashMap::default();
    for now in &before.flows {
        let Some(then) = after_flows.get(&now.key.canonical().0) else {
            continue;
        };
        if now.allowed == then.allowed {
            continue;
        }
        let (change, allowed) = if now.allowed {
            (Change::Break, now)
        } else {
            (Change::Open, *then)
        };
        let initiator = if allowed.reversed {
            now.key.reversed()
        } else {
            now.key
        };
        let related = now.verdict.is_none() || then.verdict.is_none();
        let group = ConnKey {
            src_port: 0,
            dst_port: policy_port(&initiator),
            ..initiator
        };
        let flow = groups
            .entry((change, group, related))
            .or_insert_with(|| ChangedFlow {
                change,
                src: key_addr(initiator.src, initiator.ipv6),
                dst: key_addr(initiator.dst, initiator.ipv6),
                protocol: initiator.protocol,
                port: group.dst_port,
                connections: 0,
                packets: 0,
                bytes: 0,
                first_packet: now.first_packet,
                current: now
                    .verdict
                    .map(|_| podfence_datapath::worker::classify_key(current, &initiator)),
                candidate: then
                    .verdict
                    .map(|_| podfence_datapath::worker::classify_key(candidate, &initiator)),
            });
        flow.connections += 1;
        flow.packets += now.packets;
        flow.bytes += now.bytes;
        flow.first_packet = flow.first_packet.min(now.first_packet);
    }
    let mut changes: Vec<ChangedFlow> = groups.into_values().collect();
    changes.sort_by(|a, b| {
        (a.change, b.connections, b.packets, a.first_packet).cmp(&(
            b.change,
            a.connections,
            a.packets,
            b.first_packet,
        ))
    });
    let mut errors = before.errors;
    for e in after.errors {
        if !errors.iter().any(|b| b.path == e.path) {
            errors.push(e);
        }
    }
    DiffReport {
        files: captures.len(),
        packets: before.counters.rx_packets,
        connections: before.flows.len() as u64,
        changes,
        errors,
        elapsed,
    }
}
