//! Offline replay: capture files through the worker pipeline.
//!
//! The captures go through exactly what the live datapath runs — the same
//! parser, the shared conntrack, the compiled tables, the worker's
//! decisions, the Service translation — with capture timestamps as the
//! clock, so replies of allowed connections pass, mid-stream flows are
//! picked up loosely and timeouts behave as they would have at capture
//! time. Give the manifests' service table ([`ReplayOptions::services`]) and
//! connections to a ClusterIP are translated as the live datapath
//! translates them, their verdicts decided against the backend; a flow is
//! recorded under the tuple its first packet carried (the Service address),
//! and translated replies count in it.
//!
//! With several workers each reads every file and handles the packets
//! whose host pair hashes to it (a symmetric hash of addresses and
//! protocol; for a packet to a Service, of the client and the backend it
//! gets): both directions of a connection, and every fragment of a
//! datagram, meet on one worker, so verdicts do not depend on the number of
//! workers. Frames that do not parse are handled by worker 0.
//!
//! [`diff()`] replays the same captures against two policy states (the
//! current one and a candidate, see [`load_candidate`]) and lists the
//! connections whose verdict changes, grouped into flows (initiator,
//! responder, protocol, destination port).

mod candidate;
mod diff;
mod explain;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use podfence_datapath::conntrack::{ConnKey, Conntrack, Timeouts};
use podfence_datapath::flow::PacketMeta;
use podfence_datapath::nat::{Rewrite, Side};
use podfence_datapath::ports::capture::{CapturePort, CaptureWriter};
use podfence_datapath::ports::{Port, PortError, RxDesc};
use podfence_datapath::publish::Publisher;
use podfence_datapath::services::ServiceTable;
use podfence_datapath::stats::{Counters, WorkerStats};
use podfence_datapath::tables::{Decision, Direction, Tables, Verdict};
use podfence_datapath::worker::{MalformedAction, Outcome, Output, Worker, WorkerConfig};
use rustc_hash::FxHashMap;

pub use candidate::{CandidateError, PolicyPattern, StateChanges, load_candidate};
pub use diff::{Change, ChangeTotals, ChangedFlow, DiffReport, diff};
pub use explain::PodNames;

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
    /// The Services to translate (none by default), published with the
    /// tables: `compile::compile_services` of the same manifests.
    pub services: Arc<ServiceTable>,
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
            services: Arc::new(ServiceTable::empty()),
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
    fn translated(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: &Rewrite,
    ) {
        // A translated reply belongs to the flow of the Service address
        // (the key its client used), as the client sees it. (An ICMP error
        // keeps its own key: it has no ports to take.)
        match (rewrite.side, meta) {
            (Side::Source, Some(m)) if m.related.is_none() => {
                let m = PacketMeta {
                    key: rewrite.key(&m.key),
                    ..*m
                };
                self.packet(desc, frame, Some(&m), outcome, passes);
            }
            _ => self.packet(desc, frame, meta, outcome, passes),
        }
    }

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
    let publisher = Publisher::new(tables, Arc::clone(&options.services));
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
            Decision::TierAccepted(r) | Decision::TierDenied(r) | Decision::TierWouldDeny(r) => {
                let audit = if matches!(d, Decision::TierWouldDeny(_)) {
                    "(audit)"
                } else {
                    ""
                };
                parts.push(format!(
                    "{direction}={}:{}#{}{audit}",
                    r.tier,
                    tables.policy(r.policy),
                    r.rule
                ));
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
