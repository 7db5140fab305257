//! Offline replay: capture files through the worker pipeline.
//!
//! The captures go through exactly what the live datapath runs — the same
//! parser, the shared conntrack, the compiled tables, the worker's
//! decisions — with capture timestamps as the clock, so replies of allowed
//! connections pass, mid-stream flows are picked up loosely and timeouts
//! behave as they would have at capture time.
//!
//! With several workers each reads every file and handles the packets
//! whose host pair hashes to it (a symmetric hash of addresses and
//! protocol): both directions of a connection, and every fragment of a
//! datagram, meet on one worker, so verdicts do not depend on the number of
//! workers. Frames that do not parse are handled by worker 0.
//!
//! [`diff`] replays the same captures against two policy states (the
//! current one and a candidate, see [`load_candidate`]) and lists the
//! connections whose verdict changes, grouped into flows (initiator,
//! responder, protocol, destination port).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use podfence_datapath::conntrack::{ConnKey, Conntrack, Timeouts};
use podfence_datapath::flow::PacketMeta;
use podfence_datapath::ports::capture::{CapturePort, CaptureWriter};
use podfence_datapath::ports::{Port, PortError, RxDesc};
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::{Counters, WorkerStats};
use podfence_datapath::tables::{Decision, Direction, Tables, Verdict};
use podfence_datapath::wire::ip_proto;
use podfence_datapath::worker::{MalformedAction, Outcome, Output, Worker, WorkerConfig};
use rustc_hash::FxHashMap;

use crate::model::{Cluster, PodPhase, Protocol};
use crate::probe::{Endpoint, Explanation, Probe};
use crate::sources::manifests::{self, LoadErrors, Manifests};

/// Replay settings.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Worker threads.
    pub workers: usize,
    /// Keep a verdict per packet (for `--packets` and the writers).
    pub keep_packet_verdicts: bool,
    /// Keep a record per flow (for `--flows`; costs a hash map insert per
    /// packet).
    pub record_flows: bool,
    /// Verdict for frames that do not parse.
    pub malformed: MalformedAction,
    /// Conntrack entries.
    pub conntrack_entries: usize,
    /// Bytes read by worker 0 are added to it as they are read, for a
    /// progress display (a diff's two replays add to the same counter).
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            keep_packet_verdicts: false,
            record_flows: true,
            malformed: MalformedAction::Drop,
            conntrack_entries: 1 << 20,
            progress: None,
        }
    }
}

/// A packet's verdict in the `--packets` listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketVerdict {
    /// Passed.
    Allow = 1,
    /// Dropped by policy.
    Deny = 2,
    /// Did not parse (and got the configured verdict).
    Malformed = 3,
}

impl PacketVerdict {
    /// The word used in outputs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Malformed => "malformed",
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::Malformed),
            _ => None,
        }
    }
}

/// One flow (5-tuple) of the replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Index (from 1, across files) of its first packet.
    pub first_packet: u64,
    /// The 5-tuple as its first packet carried it.
    pub key: ConnKey,
    /// Packets in both directions.
    pub packets: u64,
    /// Bytes (on the wire) in both directions.
    pub bytes: u64,
    /// Whether its first packet passed.
    pub allowed: bool,
    /// What decided its first packet, if a policy did.
    pub verdict: Option<Verdict>,
    /// Whether its first packet was picked up mid-stream as a reply: the
    /// connection's initiator is that packet's destination.
    pub reversed: bool,
}

/// A capture that could not be read (completely).
#[derive(Debug)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: PortError,
}

/// The result of a replay.
#[derive(Debug)]
pub struct ReplayReport {
    /// Captures given.
    pub files: usize,
    /// Counters summed over workers.
    pub counters: Counters,
    /// Flows in order of their first packet.
    pub flows: Vec<Flow>,
    /// Per packet (if kept), in capture order.
    pub packet_verdicts: Vec<PacketVerdict>,
    /// Captures that failed, with everything before the failure replayed.
    pub errors: Vec<FileError>,
    /// Wall time of the pipeline.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Frames replayed.
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.counters.rx_packets
    }

    /// Millions of packets per second.
    #[must_use]
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    pub fn mpps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.counters.rx_packets as f64 / secs / 1e6
        } else {
            0.0
        }
    }
}

/// One worker's recording of what it decided.
struct Recorder {
    /// Index of the next frame (0-based across files).
    next_index: u64,
    keep_verdicts: bool,
    record_flows: bool,
    verdicts: Vec<u8>,
    flows: FxHashMap<ConnKey, Flow>,
}

impl Recorder {
    fn record_flow(&mut self, key: ConnKey, bytes: u64, outcome: &Outcome, passes: bool) {
        let (canonical, _) = key.canonical();
        let index = self.next_index;
        let flow = self.flows.entry(canonical).or_insert_with(|| Flow {
            first_packet: index + 1,
            key,
            packets: 0,
            bytes: 0,
            allowed: passes,
            verdict: match outcome {
                Outcome::Opened(v) | Outcome::Denied(v) | Outcome::Revoked(v) => Some(*v),
                Outcome::PickedUp { verdict, .. } => Some(*verdict),
                _ => None,
            },
            reversed: matches!(outcome, Outcome::PickedUp { reversed: true, .. }),
        });
        flow.packets += 1;
        flow.bytes += bytes;
    }
}

/// Runs a worker over packets it is not given: the recorder filters.
struct ShardOutput<'r> {
    recorder: &'r mut Recorder,
}

impl Output for ShardOutput<'_> {
    fn packet(
        &mut self,
        desc: &RxDesc,
        _frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
    ) {
        let r = &mut *self.recorder;
        if !matches!(outcome, Outcome::Elsewhere) {
            let code = match outcome {
                Outcome::Malformed(_) => PacketVerdict::Malformed,
                _ if passes => PacketVerdict::Allow,
                _ => PacketVerdict::Deny,
            };
            if r.keep_verdicts {
                let i = r.next_index as usize;
                if r.verdicts.len() <= i {
                    r.verdicts.resize(i + 1, 0);
                }
                r.verdicts[i] = code as u8;
            }
            let key = match (outcome, meta) {
                (Outcome::Fragment { flow, .. }, _) => Some(*flow),
                (Outcome::Malformed(_) | Outcome::NotIp, _) | (_, None) => None,
                (_, Some(m)) => Some(m.key),
            };
            if let Some(key) = key.filter(|_| r.record_flows) {
                r.record_flow(key, u64::from(desc.wire_len), outcome, passes);
            }
        }
        r.next_index += 1;
    }
}

/// Replays `captures` (in order) against `tables`.
#[must_use]
pub fn replay(tables: Tables, captures: &[PathBuf], options: &ReplayOptions) -> ReplayReport {
    let workers = options.workers.max(1);
    let publisher = Publisher::new(tables);
    let conntrack = Conntrack::new(options.conntrack_entries, Timeouts::default());
    let stats: Vec<WorkerStats> = (0..workers).map(|_| WorkerStats::default()).collect();
    let start = Instant::now();
    let results: Vec<(Recorder, Vec<FileError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (publisher, conntrack, stats) = (&publisher, &conntrack, &stats[w]);
                s.spawn(move || {
                    run_shard(
                        w as u64,
                        workers as u64,
                        publisher,
                        conntrack,
                        stats,
                        captures,
                        options,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replay worker panicked"))
            .collect()
    });
    let elapsed = start.elapsed();

    let mut counters = Counters::default();
    for s in &stats {
        counters += s.snapshot();
    }
    let mut flows = Vec::new();
    let mut verdicts: Vec<u8> = Vec::new();
    let mut errors = Vec::new();
    for (i, (recorder, errs)) in results.into_iter().enumerate() {
        if i == 0 {
            errors = errs;
        }
        flows.extend(recorder.flows.into_values());
        if verdicts.len() < recorder.verdicts.len() {
            verdicts.resize(recorder.verdicts.len(), 0);
        }
        for (v, r) in verdicts.iter_mut().zip(&recorder.verdicts) {
            *v = (*v).max(*r);
        }
    }
    flows.sort_by_key(|f| f.first_packet);
    let packet_verdicts = verdicts
        .into_iter()
        .filter_map(PacketVerdict::from_code)
        .collect();
    ReplayReport {
        files: captures.len(),
        counters,
        flows,
        packet_verdicts,
        errors,
        elapsed,
    }
}

fn run_shard(
    shard: u64,
    workers: u64,
    publisher: &Publisher,
    conntrack: &Conntrack,
    stats: &WorkerStats,
    captures: &[PathBuf],
    options: &ReplayOptions,
) -> (Recorder, Vec<FileError>) {
    let config = WorkerConfig {
        capture_time: true,
        malformed: options.malformed,
        shard: Some((shard as u32, workers as u32)),
        ..WorkerConfig::default()
    };
    // One worker per core, as the live datapath runs them.
    if workers > 1 {
        let _ = podfence_datapath::worker::pin_to_core(shard as usize);
    }
    let mut worker = Worker::new(conntrack, publisher.reader(), stats, config);
    let mut recorder = Recorder {
        next_index: 0,
        keep_verdicts: options.keep_packet_verdicts,
        record_flows: options.record_flows,
        verdicts: Vec::new(),
        flows: FxHashMap::default(),
    };
    let mut errors = Vec::new();
    let (mut bytes_before, mut reported) = (0, 0);
    for path in captures {
        let mut port = match CapturePort::open(path) {
            Ok(p) => p,
            Err(error) => {
                errors.push(FileError {
                    path: path.clone(),
                    error,
                });
                continue;
            }
        };
        let mut out = ShardOutput {
            recorder: &mut recorder,
        };
        loop {
            match worker.run_batch(&mut port, &mut out) {
                Ok(0) if port.finished() => break,
                Ok(_) => {}
                Err(error) => {
                    errors.push(FileError {
                        path: path.clone(),
                        error,
                    });
                    break;
                }
            }
            if shard == 0
                && let Some(p) = &options.progress
            {
                let read = bytes_before + port.offset();
                p.fetch_add(read.saturating_sub(reported), Ordering::Relaxed);
                reported = reported.max(read);
            }
        }
        bytes_before += port.offset();
    }
    (recorder, errors)
}

/// Writes the packets of `captures` whose verdict passes or not into pcap
/// files (a second, sequential pass over the captures). Frames of another
/// link type than the first frame written are left out and counted.
pub fn write_by_verdict(
    captures: &[PathBuf],
    verdicts: &[PacketVerdict],
    allowed: Option<&Path>,
    denied: Option<&Path>,
) -> Result<u64, PortError> {
    let mut writers: [(Option<&Path>, Option<CaptureWriter>); 2] =
        [(allowed, None), (denied, None)];
    let mut skipped = 0;
    let mut index = 0usize;
    let mut descs = [RxDesc::default(); podfence_datapath::ports::MAX_BATCH];
    for path in captures {
        let Ok(mut port) = CapturePort::open(path) else {
            continue;
        };
        loop {
            let n = match port.recv(&mut descs) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for d in &descs[..n] {
                let which = match verdicts.get(index) {
                    Some(PacketVerdict::Allow) => 0,
                    Some(_) => 1,
                    None => 2,
                };
                index += 1;
                let Some((Some(target), writer)) = writers.get_mut(which) else {
                    continue;
                };
                if writer.is_none() {
                    *writer = Some(CaptureWriter::create(target, d.link)?);
                }
                let w = writer.as_mut().expect("created above");
                if w.link() == d.link {
                    w.write(port.frame(d), d.wire_len, d.timestamp_ns)?;
                } else {
                    skipped += 1;
                }
            }
            port.release(&descs[..n]);
        }
    }
    for (target, writer) in writers {
        match (target, writer) {
            (_, Some(w)) => {
                w.finish()?;
            }
            // No packet of that verdict: still leave a valid, empty capture.
            (Some(t), None) => {
                CaptureWriter::create(t, podfence_datapath::link::LinkType::Ethernet)?.finish()?;
            }
            (None, None) => {}
        }
    }
    Ok(skipped)
}

/// What decided a flow's first packet, for the flows listing: the policy
/// that allowed each isolated direction, or the policies that isolate the
/// direction that denied; `-` where no policy was involved.
#[must_use]
pub fn attribution(tables: &Tables, verdict: Option<&Verdict>) -> String {
    let Some(v) = verdict else {
        return "-".to_owned();
    };
    let mut parts = Vec::new();
    for (direction, d) in [
        (Direction::Egress, v.egress),
        (Direction::Ingress, v.ingress),
    ] {
        match d {
            Decision::Allowed { policy, rule } => {
                parts.push(format!("{direction}={}#{rule}", tables.policy(policy)));
            }
            Decision::Denied { group } | Decision::WouldDeny { group } => {
                let names: Vec<String> = tables
                    .group_policy_names(group)
                    .map(ToString::to_string)
                    .collect();
                let audit = if d.is_allowed() { "(audit)" } else { "" };
                parts.push(format!("{direction}={}{audit}", names.join(",")));
            }
            Decision::NotEnforced
            | Decision::NotIsolated
            | Decision::SelfTraffic
            | Decision::OwnNode => {}
        }
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(";")
    }
}

// ---------------------------------------------------------------------------
// Diff: the same captures under the current and a candidate policy state.

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

/// Policies named by `--delete-policy`: `NAMESPACE/NAME`, where either part
/// may be `*` for any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPattern {
    /// The namespace, `None` for any.
    pub namespace: Option<String>,
    /// The name, `None` for any.
    pub name: Option<String>,
}

impl PolicyPattern {
    /// Whether it names the policy `namespace/name`.
    #[must_use]
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.name.as_deref().is_none_or(|n| n == name)
    }

    /// Whether it names one policy, without wildcards.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        self.namespace.is_some() && self.name.is_some()
    }
}

impl std::str::FromStr for PolicyPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let part = |p: &str| (p != "*").then(|| p.to_owned());
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: part(ns),
                    name: part(name),
                })
            }
            _ => Err(format!(
                "'{s}' is not NAMESPACE/NAME (either part may be *, e.g. 'shop/*')"
            )),
        }
    }
}

impl fmt::Display for PolicyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.namespace.as_deref().unwrap_or("*"),
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// Why the candidate state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The candidate manifests do not load.
    #[error("the candidate manifests cannot be used")]
    Load(#[source] LoadErrors),
    /// `--delete-policy` names a policy the current manifests do not have.
    #[error("--delete-policy {0}: the current manifests have no NetworkPolicy {0}")]
    NoSuchPolicy(String),
}

/// The candidate policy state: the current manifests with the policies
/// `delete` names removed, then the candidate manifests on top.
///
/// The candidate's objects (namespaces, pods, policies) replace the current
/// objects of the same kind, namespace and name and add new ones; nothing
/// else of the current state changes, so a file with one new policy asks
/// what that policy would do. `--delete-policy` patterns apply to the
/// current policies only: a policy the candidate defines stays, whatever
/// the patterns say. `current_paths` are the paths `current` was loaded
/// from (they are read again: the overlay is a load of all paths in order,
/// exactly as `--manifests CURRENT... CANDIDATE...` would be).
pub fn load_candidate(
    current_paths: &[PathBuf],
    current: &Manifests,
    candidate_paths: &[PathBuf],
    delete: &[PolicyPattern],
) -> Result<Manifests, CandidateError> {
    for p in delete.iter().filter(|p| p.is_exact()) {
        let (ns, name) = (p.namespace.as_deref(), p.name.as_deref());
        if !current
            .cluster
            .policies
            .keys()
            .any(|(n, m)| Some(n.as_str()) == ns && Some(m.as_str()) == name)
        {
            return Err(CandidateError::NoSuchPolicy(p.to_string()));
        }
    }
    let mut out = if candidate_paths.is_empty() {
        current.clone()
    } else {
        let all: Vec<PathBuf> = current_paths
            .iter()
            .chain(candidate_paths)
            .cloned()
            .collect();
        manifests::load(&all).map_err(CandidateError::Load)?
    };
    if !delete.is_empty() {
        // Which policies the candidate itself defines (they are kept).
        let defined = if candidate_paths.is_empty() {
            Cluster::default()
        } else {
            manifests::load(candidate_paths)
                .map_err(CandidateError::Load)?
                .cluster
        };
        out.cluster.policies.retain(|(ns, name), _| {
            defined.policies.contains_key(&(ns.clone(), name.clone()))
                || !delete.iter().any(|p| p.matches(ns, name))
        });
    }
    Ok(out)
}

/// What the candidate changes in the cluster state, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Policies only the candidate has (`namespace/name`).
    pub policies_added: Vec<String>,
    /// Policies both have, with different content.
    pub policies_changed: Vec<String>,
    /// Policies only the current state has.
    pub policies_deleted: Vec<String>,
    /// Pods added, changed or gone.
    pub pods: usize,
    /// Namespaces added, changed or gone.
    pub namespaces: usize,
}

impl StateChanges {
    /// Compares two states.
    #[must_use]
    pub fn between(current: &Cluster, candidate: &Cluster) -> Self {
        let mut out = Self::default();
        for (k, p) in &candidate.policies {
            match current.policies.get(k) {
                None => out.policies_added.push(format!("{}/{}", k.0, k.1)),
                Some(q) if q != p => out.policies_changed.push(format!("{}/{}", k.0, k.1)),
                Some(_) => {}
            }
        }
        for k in current.policies.keys() {
            if !candidate.policies.contains_key(k) {
                out.policies_deleted.push(format!("{}/{}", k.0, k.1));
            }
        }
        out.pods = differing(&current.pods, &candidate.pods);
        out.namespaces = differing(&current.namespaces, &candidate.namespaces);
        out
    }

    /// Whether the states are the same.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.policies_added.is_empty()
            && self.policies_changed.is_empty()
            && self.policies_deleted.is_empty()
            && self.pods == 0
            && self.namespaces == 0
    }
}

impl fmt::Display for StateChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change to the cluster state");
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("adds", &self.policies_added),
            ("changes", &self.policies_changed),
            ("deletes", &self.policies_deleted),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} NetworkPolicy {}", list.join(", ")));
            }
        }
        if self.pods > 0 {
            parts.push(format!("changes {} pod(s)", self.pods));
        }
        if self.namespaces > 0 {
            parts.push(format!("changes {} namespace(s)", self.namespaces));
        }
        f.write_str(&parts.join("; "))
    }
}

fn differing<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    changed + b.keys().filter(|k| !a.contains_key(*k)).count()
}

/// The pods behind addresses, for naming the ends of a flow.
#[derive(Debug, Default)]
pub struct PodNames(FxHashMap<IpAddr, (String, String)>);

impl PodNames {
    /// The addresses of the pods of `clusters` that use addresses of their
    /// own (not host-network pods, not finished pods); the first cluster
    /// that names an address wins.
    #[must_use]
    pub fn new(clusters: &[&Cluster]) -> Self {
        let mut map = FxHashMap::default();
        for cluster in clusters {
            for pod in cluster.pods.values() {
                if pod.host_network || matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
                    continue;
                }
                for ip in &pod.ips {
                    map.entry(*ip)
                        .or_insert_with(|| (pod.namespace.clone(), pod.name.clone()));
                }
            }
        }
        Self(map)
    }

    /// The pod at `addr`, if any, as `namespace/name`.
    #[must_use]
    pub fn pod(&self, addr: IpAddr) -> Option<String> {
        self.0.get(&addr).map(|(ns, name)| format!("{ns}/{name}"))
    }

    /// `addr` as a probe endpoint: its pod, or `ext:IP`.
    #[must_use]
    pub fn endpoint(&self, addr: IpAddr) -> Endpoint {
        match self.0.get(&addr) {
            Some((namespace, name)) => Endpoint::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            None => Endpoint::External(addr),
        }
    }

    /// `addr` for a reader: `namespace/pod (IP)` or the bare address.
    #[must_use]
    pub fn describe(&self, addr: IpAddr) -> String {
        match self.pod(addr) {
            Some(p) => format!("{p} ({addr})"),
            None => addr.to_string(),
        }
    }
}

impl ChangedFlow {
    /// The flow for a reader: `TCP x/a (10.244.1.1) → y/b (10.244.2.2) port 80`.
    #[must_use]
    pub fn describe(&self, names: &PodNames) -> String {
        let proto = podfence_datapath::IpProtocol(self.protocol);
        let (src, dst) = (names.describe(self.src), names.describe(self.dst));
        match self.protocol {
            ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
                format!("{proto} {src} → {dst} port {}", self.port)
            }
            _ => format!("{proto} {src} → {dst}"),
        }
    }

    /// Why one side (current or candidate) decides as it does: one line per
    /// direction, worded as `podfence explain` words it.
    #[must_use]
    pub fn explain(
        &self,
        names: &PodNames,
        cluster: &Cluster,
        tables: &Tables,
        verdict: Option<&Verdict>,
    ) -> Vec<String> {
        let Some(verdict) = verdict else {
            return vec!["allow — an ICMP error about a connection that is allowed".to_owned()];
        };
        let protocol = match self.protocol {
            ip_proto::TCP => Some(Protocol::Tcp),
            ip_proto::UDP => Some(Protocol::Udp),
            ip_proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        };
        let Some(protocol) = protocol else {
            let endpoints = (names.endpoint(self.src), names.endpoint(self.dst));
            let what = podfence_datapath::IpProtocol(self.protocol);
            return [
                (Direction::Egress, verdict.egress),
                (Direction::Ingress, verdict.ingress),
            ]
            .into_iter()
            .map(|(direction, d)| {
                brief_decision(tables, direction, d, what, (&endpoints.0, &endpoints.1))
            })
            .collect();
        };
        let probe = Probe {
            src: names.endpoint(self.src),
            dst: names.endpoint(self.dst),
            protocol,
            port: self.port,
        };
        let text = Explanation {
            probe: &probe,
            addresses: (self.src, self.dst),
            verdict: *verdict,
            tables,
            cluster,
        }
        .to_string();
        // The verdict line, the egress line, the ingress line, the generation.
        text.lines()
            .skip(1)
            .take(2)
            .map(|l| l.trim().to_owned())
            .collect()
    }
}

/// One direction's decision in a line, for protocols `explain` does not
/// take (ICMP and others), worded as `explain` words it.
fn brief_decision(
    tables: &Tables,
    direction: Direction,
    d: Decision,
    protocol: podfence_datapath::IpProtocol,
    endpoints: (&Endpoint, &Endpoint),
) -> String {
    let (side, endpoint) = match direction {
        Direction::Egress => ("source", endpoints.0),
        Direction::Ingress => ("destination", endpoints.1),
    };
    match d {
        Decision::NotEnforced => {
            format!("{direction}: allow — {side} {endpoint} is not a pod that policy applies to")
        }
        Decision::NotIsolated => format!(
            "{direction}: allow — no NetworkPolicy selects {side} {endpoint} for {direction}"
        ),
        Decision::SelfTraffic => format!("{direction}: allow — a pod may always reach itself"),
        Decision::OwnNode => format!(
            "{direction}: allow — traffic between a pod and the node it runs on is always allowed"
        ),
        Decision::Allowed { policy, rule } => format!(
            "{direction}: allow — {side} {endpoint} is allowed by {} {direction} rule {rule}",
            tables.policy(policy)
        ),
        Decision::Denied { group } | Decision::WouldDeny { group } => {
            let names: Vec<String> = tables
                .group_policy_names(group)
                .map(ToString::to_string)
                .collect();
            let (verdict, audit) = if d.is_allowed() {
                (
                    "allow (audit)",
                    ", but it is in audit mode: reported, not dropped",
                )
            } else {
                ("deny", "")
            };
            format!(
                "{direction}: {verdict} — {side} {endpoint} is isolated for {direction} by {}, \
                 and no {direction} rule of {} allows {} from {} to {}{audit}",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" },
                protocol,
                endpoints.0,
                endpoints.1,
            )
        }
    }
}
