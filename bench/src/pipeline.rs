//! The worker pipeline on in-memory traces: parse only, established
//! connections, new connections, the same two through Services, the curve
//! over policy counts, the curve over ClusterNetworkPolicy counts, two
//! workers, per-batch latency, allocations per packet, and replay from a
//! capture.
//!
//! Traces are 64-byte frames (60 bytes plus the 4-byte FCS a wire would
//! add) built with `podfence_datapath::craft` from the synthetic cluster's
//! traffic mix, three allowed connection attempts for every denied one.
//!
//! The cluster has a ClusterIP Service per app and namespace
//! ([`synthetic::add_services`]), published with the policy tables in every
//! run, as an agent publishes them. The Service rows send the pod-to-pod
//! part of the same mix to the Services of the destination pods instead
//! ([`service_attempts`]): every such packet is translated, and its
//! verdict is the one of the backend the worker picks. Translated packets
//! are also rewritten (on a copy of the frame, as the switch does on its
//! staged copy: [`CountingOutput`]), so that the Service rows carry the
//! whole cost of translation.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use podfence_control::compile::{CompileOptions, Locality, compile, compile_services};
use podfence_control::replay::{ReplayOptions, replay};
use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::flow::parse_frame;
use podfence_datapath::link::LinkType;
use podfence_datapath::nat::Rewrite;
use podfence_datapath::ports::RxDesc;
use podfence_datapath::ports::capture::CaptureWriter;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};
use podfence_datapath::{IpProtocol, ServiceTable, Tables};

use crate::alloc::CountingAllocator;
use crate::synthetic::{self, Attempt, Shape};

/// Frame length before the FCS: 64-byte packets on the wire.
const FRAME_LEN: usize = 60;

/// Bytes of [`CountingOutput`]'s copy of a translated frame.
const SCRATCH: usize = 128;

/// Counts what passes, and copies each frame that passes, as the switch
/// copies every frame it forwards into a transmit slot; the cheapest output
/// a worker can have. A translated packet is also rewritten on its copy, as
/// the switch rewrites its staged copy ([`podfence_datapath::nat::apply`]).
#[derive(Debug)]
pub struct CountingOutput {
    /// Frames that passed.
    pub passed: u64,
    /// Frames seen.
    pub seen: u64,
    /// Translated frames rewritten.
    pub rewritten: u64,
    /// The copy of the last translated frame (its first `scratch_len`
    /// bytes), rewritten.
    pub scratch: [u8; SCRATCH],
    /// Bytes of `scratch` in use.
    pub scratch_len: usize,
}

impl Default for CountingOutput {
    fn default() -> Self {
        Self {
            passed: 0,
            seen: 0,
            rewritten: 0,
            scratch: [0; SCRATCH],
            scratch_len: 0,
        }
    }
}

impl Output for CountingOutput {
    fn packet(
        &mut self,
        _desc: &RxDesc,
        frame: &[u8],
        _meta: Option<&podfence_datapath::flow::PacketMeta>,
        _outcome: &Outcome,
        passes: bool,
    ) {
        self.seen += 1;
        self.passed += u64::from(passes);
        if let (true, Some(copy)) = (passes, self.scratch.get_mut(..frame.len())) {
            copy.copy_from_slice(frame);
            self.scratch_len = frame.len();
        }
    }

    fn translated(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&podfence_datapath::flow::PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: &Rewrite,
    ) {
        self.packet(desc, frame, meta, outcome, passes);
        if let (true, Some(meta), Some(copy)) = (passes, meta, self.scratch.get_mut(..frame.len()))
        {
            let ok = podfence_datapath::nat::apply(copy, meta, rewrite).is_ok();
            self.rewritten += u64::from(ok);
        }
    }
}

fn frame(a: &Attempt, src_port: u16, reply: bool, flags: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN);
    frame_into(
        &mut out,
        a,
        src_port,
        reply,
        flags,
        if reply { 2 } else { 1 },
    );
    out
}

/// Builds into `out` (cleared first) a 64-byte frame of the connection that
/// attempt `a` opens from `src_port`: sent by the initiator, or by the
/// responder when `reply`. TCP carries `flags` (see
/// [`podfence_datapath::conntrack::tcp_flags`]), SCTP one chunk of type
/// `chunk` (1 INIT, 2 INIT ACK, ...); UDP uses neither.
pub fn frame_into(
    out: &mut Vec<u8>,
    a: &Attempt,
    src_port: u16,
    reply: bool,
    flags: u8,
    chunk: u8,
) {
    let (src, dst, sp, dp) = if reply {
        (a.dst, a.src, a.port, src_port)
    } else {
        (a.src, a.dst, src_port, a.port)
    };
    let transport = match a.protocol {
        IpProtocol::UDP => Transport::Udp {
            src_port: sp,
            dst_port: dp,
        },
        IpProtocol::SCTP => Transport::Sctp {
            src_port: sp,
            dst_port: dp,
            chunk,
        },
        _ => Transport::Tcp {
            src_port: sp,
            dst_port: dp,
            flags,
        },
    };
    let header = match a.protocol {
        IpProtocol::UDP => 42,
        IpProtocol::SCTP => 66,
        _ => 54,
    };
    FrameSpec {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        transport,
        payload_len: FRAME_LEN.saturating_sub(header),
        payload_fill: 0,
    }
    .build_into(out);
}

/// Connection attempts with three allowed for every denied one, each with
/// its own source port (so each opens a new connection).
#[must_use]
pub fn mixed_attempts(tables: &Tables, shape: Shape, count: usize) -> Vec<(Attempt, u16)> {
    let pool = synthetic::attempts(shape, count * 4, 7);
    let (allowed, denied): (Vec<Attempt>, Vec<Attempt>) = pool.into_iter().partition(|a| {
        tables
            .classify_v4(a.src, a.dst, a.protocol, a.port)
            .is_allowed()
    });
    let mut out = Vec::with_capacity(count);
    let (mut ai, mut di) = (0, 0);
    for i in 0..count {
        let a = if i % 4 == 3 && !denied.is_empty() {
            di += 1;
            denied[(di - 1) % denied.len()]
        } else {
            ai += 1;
            allowed[(ai - 1) % allowed.len().max(1)]
        };
        out.push((a, 1024 + (i % 60_000) as u16 + (i / 60_000) as u16));
    }
    out
}

/// Whether item `i` is among those a `share` picks: spread evenly, exactly
/// `round(n * share)` of the first `n`.
fn picks(i: usize, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    let at = |k: usize| (k as f64 * share + 0.5).floor();
    at(i + 1) > at(i)
}

/// The backend (address, port) the worker translates attempt `a` from
/// `src_port` to, if it is addressed to a Service frontend and is not a
/// pod reaching itself (which the worker leaves untranslated).
#[must_use]
pub fn backend_of(services: &ServiceTable, a: &Attempt, src_port: u16) -> Option<(u32, u16)> {
    let f = frame(a, src_port, false, tcp_flags::SYN);
    let podfence_datapath::flow::Parsed::Ip(meta) = parse_frame(LinkType::Ethernet, &f).ok()?
    else {
        return None;
    };
    let key = meta.key;
    let backend = services.destination(&key)?.select(&key)?;
    let IpAddr::V4(addr) = backend.addr else {
        return None;
    };
    let addr = u32::from(addr);
    (addr != a.src).then_some((addr, backend.port))
}

/// Whether `tables` allow attempt `a` through its Service from `src_port`
/// (classified against its backend); `None` when it would not be
/// translated.
fn allowed_through(
    tables: &Tables,
    services: &ServiceTable,
    a: &Attempt,
    src_port: u16,
) -> Option<bool> {
    let (addr, port) = backend_of(services, a, src_port)?;
    Some(
        tables
            .classify_v4(a.src, addr, a.protocol, port)
            .is_allowed(),
    )
}

/// [`mixed_attempts`] with a `service_share` of them (spread evenly) sent through
/// Services: the pod-to-pod attempts of the same mix, addressed to the
/// ClusterIP of the destination pod's Service, three allowed (by the
/// backend the worker picks) for every denied one. `service_share` 1:
/// every attempt is translated.
#[must_use]
pub fn service_attempts(
    tables: &Tables,
    services: &ServiceTable,
    shape: Shape,
    count: usize,
    service_share: f64,
) -> Vec<(Attempt, u16)> {
    let plain = mixed_attempts(tables, shape, count);
    let pods = shape.pods as u32;
    let pod = |addr: u32| {
        (addr >= synthetic::POD_BASE && addr - synthetic::POD_BASE < pods)
            .then(|| (addr - synthetic::POD_BASE) as usize)
    };
    let pool: Vec<Attempt> = synthetic::attempts(shape, count.max(1_000) * 2, 11)
        .into_iter()
        .filter_map(|a| {
            pod(a.src)?;
            let dst = synthetic::service_ip_of_pod(shape, pod(a.dst)?)?;
            Some(Attempt {
                dst: u32::from(dst),
                ..a
            })
        })
        .collect();
    if pool.is_empty() {
        return plain;
    }
    // Candidates of the other verdict wait here for their turn.
    let mut waiting: [VecDeque<(Attempt, u16)>; 2] = [VecDeque::new(), VecDeque::new()];
    let (mut next, mut serial, mut through) = (0usize, 0usize, 0usize);
    let mut out = Vec::with_capacity(count);
    for (i, p) in plain.into_iter().enumerate() {
        if !picks(i, service_share) {
            out.push(p);
            continue;
        }
        let want = usize::from(through % 4 != 3);
        through += 1;
        let mut tries = 0;
        let chosen = loop {
            if let Some(w) = waiting[want].pop_front() {
                break w;
            }
            let a = pool[next % pool.len()];
            next += 1;
            let src_port = 1024 + (serial % 60_000) as u16 + (serial / 60_000) as u16;
            serial += 1;
            tries += 1;
            let Some(allowed) = allowed_through(tables, services, &a, src_port) else {
                continue;
            };
            // A mix without one of the verdicts takes what comes.
            if usize::from(allowed) == want || tries > 10_000 {
                break (a, src_port);
            }
            if waiting[usize::from(allowed)].len() < 65_536 {
                waiting[usize::from(allowed)].push_back((a, src_port));
            }
        };
        out.push(chosen);
    }
    out
}

/// Results of [`run`].
#[derive(Clone, Debug, Default)]
pub struct PipelineReport {
    /// Parse only, Mpps.
    pub parse_mpps: f64,
    /// Established connections (conntrack hits), Mpps.
    pub established_mpps: f64,
    /// The worker thread's CPU time per established packet, ns (on a busy
    /// machine steadier than the rate: time the thread waited is not in
    /// it); 0 where the kernel does not say.
    pub established_cpu_ns: f64,
    /// New connections (miss, classify, insert), Mpps.
    pub new_conn_mpps: f64,
    /// New connections with two workers, Mpps in total.
    pub two_workers_mpps: f64,
    /// New-connection Mpps by policy count.
    pub curve: Vec<(usize, f64)>,
    /// New connections by ClusterNetworkPolicy count, at the shape's pods
    /// and policies.
    pub tier_curve: Vec<TierPoint>,
    /// Per-batch latency of the new-connection run: p50, p99, p999 (ns).
    pub batch_latency_ns: (u64, u64, u64),
    /// Heap allocations per packet over the measured worker runs.
    pub allocs_per_packet: f64,
    /// Replay of a capture (page cache) on one worker, Mpps.
    pub replay_mpps: f64,
    /// Packets replayed.
    pub replay_packets: u64,
    /// Share of allowed new connections in the trace.
    pub allowed_share: f64,
    /// Services of the synthetic cluster (published in every run).
    pub services: usize,
    /// Share of the Service rows' connections sent through a Service.
    pub service_share: f64,
    /// Established connections, the Service rows' traffic, Mpps.
    pub established_service_mpps: f64,
    /// As `established_cpu_ns`, the Service rows' traffic.
    pub established_service_cpu_ns: f64,
    /// New connections, the Service rows' traffic, Mpps.
    pub new_conn_service_mpps: f64,
    /// Share of allowed new connections in the Service rows' trace.
    pub allowed_share_service: f64,
    /// Translated packets rewritten in the Service rows' measured runs.
    pub service_rewritten: u64,
    /// Heap allocations during the Service rows' measured runs.
    pub service_allocs: u64,
}

/// A point of the curve over ClusterNetworkPolicy counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TierPoint {
    /// ClusterNetworkPolicies of the cluster.
    pub cluster_policies: usize,
    /// New connections, Mpps.
    pub new_conn_mpps: f64,
    /// Share of the trace's connection attempts a tier decided
    /// ([`synthetic::decided_by_tier`]).
    pub tier_decided_share: f64,
}

/// What one measured worker run did.
#[derive(Clone, Copy, Debug, Default)]
struct Measured {
    /// Mpps.
    mpps: f64,
    /// The thread's CPU time per frame, ns (0: unknown).
    cpu_ns: f64,
    /// Heap allocations during the run.
    allocs: u64,
    /// Frames.
    packets: u64,
    /// Translated frames rewritten.
    rewritten: u64,
}

/// Runs a worker over `port` until it is finished; returns the elapsed
/// time, frames and translated frames rewritten, and fills `hist` with
/// batch durations.
fn drive(
    worker: &mut Worker<'_>,
    port: &mut MemoryPort,
    hist: Option<&mut Histogram<u64>>,
) -> (Duration, u64, u64) {
    let mut out = CountingOutput::default();
    let start = Instant::now();
    match hist {
        Some(h) => loop {
            let t = Instant::now();
            let n = worker.run_batch(port, &mut out).expect("memory port");
            if n == 0 {
                break;
            }
            let _ = h.record(t.elapsed().as_nanos() as u64);
        },
        None => while worker.run_batch(port, &mut out).expect("memory port") > 0 {},
    }
    (start.elapsed(), black_box(out.seen), out.rewritten)
}

/// The calling thread's CPU time so far, ns (the first field of
/// `/proc/thread-self/schedstat`); `None` where the kernel does not say.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The thread's CPU time per packet since `before` ([`thread_cpu_ns`]),
/// over `packets`; 0 where unknown.
fn cpu_per_packet(before: Option<u64>, packets: u64) -> f64 {
    match (before, thread_cpu_ns()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / packets.max(1) as f64,
        _ => 0.0,
    }
}

fn mpps(packets: u64, d: Duration) -> f64 {
    packets as f64 / d.as_secs_f64() / 1e6
}

/// New-connection rate over `attempts` (one pass, fresh conntrack).
fn new_connections(tables: Tables, attempts: &[(Attempt, u16)], workers: usize) -> f64 {
    let frames: Vec<Vec<u8>> = attempts
        .iter()
        .map(|(a, sp)| frame(a, *sp, false, tcp_flags::SYN))
        .collect();
    let publisher = Publisher::new(tables, ServiceTable::empty());
    let conntrack = Conntrack::new(attempts.len() * 2, Timeouts::default());
    let stats: Vec<WorkerStats> = (0..workers).map(|_| WorkerStats::default()).collect();
    let chunk = frames.len().div_ceil(workers);
    let total: Vec<(Duration, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = frames
            .chunks(chunk)
            .zip(&stats)
            .map(|(part, st)| {
                let (publisher, conntrack) = (&publisher, &conntrack);
                s.spawn(move || {
                    let mut port = MemoryPort::new(
                        "trace",
                        LinkType::Ethernet,
                        part.iter().map(Vec::as_slice),
                        1,
                    );
                    let mut w =
                        Worker::new(conntrack, publisher.reader(), st, WorkerConfig::default());
                    drive(&mut w, &mut port, None)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let longest = total.iter().map(|t| t.0).max().unwrap_or_default();
    mpps(total.iter().map(|t| t.1).sum(), longest)
}

/// The two packets of an established connection's exchange: one from the
/// client, one from the server (the backend, for a connection through a
/// Service).
fn exchange(services: &ServiceTable, a: &Attempt, src_port: u16) -> [Vec<u8>; 2] {
    let server = match backend_of(services, a, src_port) {
        Some((dst, port)) => Attempt { dst, port, ..*a },
        None => *a,
    };
    [
        frame(a, src_port, false, tcp_flags::ACK),
        frame(&server, src_port, true, tcp_flags::ACK),
    ]
}

/// Established connections: opens `flows` in a conntrack of `slots`, then
/// times `packets` of their exchanges (after a warm-up pass) on one worker.
fn established(
    publisher: &Publisher,
    services: &ServiceTable,
    flows: &[(Attempt, u16)],
    slots: usize,
    packets: usize,
    alloc: &CountingAllocator,
) -> Measured {
    let stats = WorkerStats::default();
    let conntrack = Conntrack::new(slots, Timeouts::default());
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let opening: Vec<Vec<u8>> = flows
        .iter()
        .map(|(a, sp)| frame(a, *sp, false, tcp_flags::SYN))
        .collect();
    drive(
        &mut w,
        &mut MemoryPort::new(
            "syn",
            LinkType::Ethernet,
            opening.iter().map(Vec::as_slice),
            1,
        ),
        None,
    );
    let acks: Vec<Vec<u8>> = flows
        .iter()
        .flat_map(|(a, sp)| exchange(services, a, *sp))
        .collect();
    let rounds = (packets / acks.len().max(1)).max(1) as u64;
    let mut port = MemoryPort::new(
        "ack",
        LinkType::Ethernet,
        acks.iter().map(Vec::as_slice),
        rounds,
    );
    drive(&mut w, &mut port, None); // warm-up: established state, caches
    let mut port = MemoryPort::new(
        "ack",
        LinkType::Ethernet,
        acks.iter().map(Vec::as_slice),
        rounds,
    );
    // The clock reads allocate: outside the counted span.
    let cpu_before = thread_cpu_ns();
    let before = alloc.allocations();
    let (d, n, rewritten) = drive(&mut w, &mut port, None);
    let allocs = alloc.allocations() - before;
    Measured {
        mpps: mpps(n, d),
        cpu_ns: cpu_per_packet(cpu_before, n),
        allocs,
        packets: n,
        rewritten,
    }
}

/// New connections: one pass over `syns` on one worker with a fresh
/// conntrack of `slots`, recording batch latencies in `hist`.
fn opening(
    publisher: &Publisher,
    syns: &[Vec<u8>],
    slots: usize,
    hist: Option<&mut Histogram<u64>>,
    alloc: &CountingAllocator,
) -> Measured {
    let conntrack = Conntrack::new(slots, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let mut port = MemoryPort::new("new", LinkType::Ethernet, syns.iter().map(Vec::as_slice), 1);
    // The clock reads allocate: outside the counted span.
    let cpu_before = thread_cpu_ns();
    let before = alloc.allocations();
    let (d, n, rewritten) = drive(&mut w, &mut port, hist);
    let allocs = alloc.allocations() - before;
    Measured {
        mpps: mpps(n, d),
        cpu_ns: cpu_per_packet(cpu_before, n),
        allocs,
        packets: n,
        rewritten,
    }
}

/// The first `limit` attempts that `tables` allow (through their Service
/// when `services` translates them).
fn allowed_flows(
    tables: &Tables,
    services: &ServiceTable,
    attempts: &[(Attempt, u16)],
    limit: usize,
) -> Vec<(Attempt, u16)> {
    attempts
        .iter()
        .filter(|(a, sp)| {
            allowed_through(tables, services, a, *sp).unwrap_or_else(|| {
                tables
                    .classify_v4(a.src, a.dst, a.protocol, a.port)
                    .is_allowed()
            })
        })
        .take(limit)
        .copied()
        .collect()
}

/// The synthetic cluster at `shape` with its Services, compiled: policy
/// tables and service table.
#[must_use]
pub fn cluster_tables(shape: Shape) -> (Tables, Arc<ServiceTable>, usize) {
    let mut cluster = synthetic::cluster(shape);
    let services = synthetic::add_services(&mut cluster, shape);
    let tables = compile(&cluster, &CompileOptions::default()).tables;
    let table = compile_services(&cluster, &Locality::AllPods).table;
    (tables, table, services)
}

/// What [`run`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineOptions {
    /// Packets per measurement.
    pub packets: usize,
    /// Share of the Service rows' connections sent through a Service.
    pub service_share: f64,
    /// Policy counts of the new-connection curve.
    pub curve: Vec<usize>,
    /// ClusterNetworkPolicy counts of the new-connection curve over tiers.
    pub tier_curve: Vec<usize>,
    /// Replay a capture of the new connections.
    pub replay: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            packets: 1_000_000,
            service_share: 1.0,
            curve: vec![1, 10, 100, 1_000, 10_000],
            tier_curve: vec![1, 10, 100, 1_000],
            replay: true,
        }
    }
}

/// The new-connection rate over ClusterNetworkPolicy counts `counts`, with
/// the pods, policies and traffic mix of `shape`, and the share of each
/// point's trace a tier decides.
#[must_use]
pub fn tier_curve(shape: Shape, counts: &[usize], packets: usize) -> Vec<TierPoint> {
    counts
        .iter()
        .map(|&cluster_policies| {
            let shape = Shape {
                cluster_policies,
                ..shape
            };
            let tables = compile(&synthetic::cluster(shape), &CompileOptions::default()).tables;
            let attempts = mixed_attempts(&tables, shape, packets);
            let decided = attempts
                .iter()
                .filter(|(a, _)| {
                    synthetic::decided_by_tier(
                        &tables.classify_v4(a.src, a.dst, a.protocol, a.port),
                    )
                })
                .count();
            TierPoint {
                cluster_policies,
                tier_decided_share: decided as f64 / attempts.len().max(1) as f64,
                new_conn_mpps: new_connections(tables, &attempts, 1),
            }
        })
        .collect()
}

/// Runs every scenario at `shape` (the curves vary the policy count and
/// the ClusterNetworkPolicy count).
#[must_use]
pub fn run(shape: Shape, options: &PipelineOptions, alloc: &CountingAllocator) -> PipelineReport {
    let (packets, service_share) = (options.packets, options.service_share);
    let (tables, service_table, services) = cluster_tables(shape);
    let attempts = mixed_attempts(&tables, shape, packets);
    let through = service_attempts(&tables, &service_table, shape, packets, service_share);
    let share_allowed = |list: &[(Attempt, u16)]| {
        allowed_flows(&tables, &service_table, list, usize::MAX).len() as f64
            / list.len().max(1) as f64
    };
    let mut report = PipelineReport {
        allowed_share: share_allowed(&attempts),
        allowed_share_service: share_allowed(&through),
        services,
        service_share,
        ..PipelineReport::default()
    };

    // (a) Parse only.
    let syns: Vec<Vec<u8>> = attempts
        .iter()
        .map(|(a, sp)| frame(a, *sp, false, tcp_flags::SYN))
        .collect();
    let start = Instant::now();
    let mut ok = 0u64;
    for f in &syns {
        ok += u64::from(parse_frame(LinkType::Ethernet, black_box(f)).is_ok());
    }
    report.parse_mpps = mpps(black_box(ok), start.elapsed());

    // (b) Established: open 64k allowed connections, then time their
    // exchanges; to pod addresses, then through Services. Both with the
    // Services published, as an agent runs. A translated connection takes
    // two conntrack entries (the connection and its alias): twice the
    // slots, the same load (at the same slots, about 2 % of the
    // connections lose an entry to eviction).
    let publisher = Publisher::new(tables.clone(), Arc::clone(&service_table));
    let flows = allowed_flows(&tables, &service_table, &attempts, 65_536);
    let pod_est = established(&publisher, &service_table, &flows, 1 << 18, packets, alloc);
    report.established_mpps = pod_est.mpps;
    report.established_cpu_ns = pod_est.cpu_ns;
    let flows = allowed_flows(&tables, &service_table, &through, 65_536);
    let svc_est = established(&publisher, &service_table, &flows, 1 << 19, packets, alloc);
    report.established_service_mpps = svc_est.mpps;
    report.established_service_cpu_ns = svc_est.cpu_ns;

    // (c) New connections, with per-batch latency; then through Services
    // (twice the slots, as above).
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let pod = opening(
        &publisher,
        &syns,
        attempts.len() * 2,
        Some(&mut hist),
        alloc,
    );
    report.new_conn_mpps = pod.mpps;
    report.batch_latency_ns = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
    );
    let syns_through: Vec<Vec<u8>> = through
        .iter()
        .map(|(a, sp)| frame(a, *sp, false, tcp_flags::SYN))
        .collect();
    let svc = opening(&publisher, &syns_through, through.len() * 4, None, alloc);
    report.new_conn_service_mpps = svc.mpps;
    report.service_rewritten = svc_est.rewritten + svc.rewritten;
    report.service_allocs = svc_est.allocs + svc.allocs;
    let all = [pod_est, svc_est, pod, svc];
    report.allocs_per_packet = all.iter().map(|m| m.allocs).sum::<u64>() as f64
        / all.iter().map(|m| m.packets).sum::<u64>().max(1) as f64;

    // (d) Two workers.
    report.two_workers_mpps = new_connections(tables.clone(), &attempts, 2);

    // (e) The curve over policy counts, same pods and traffic mix.
    for &policies in &options.curve {
        let shape = Shape { policies, ..shape };
        let tables = compile(&synthetic::cluster(shape), &CompileOptions::default()).tables;
        let attempts = mixed_attempts(&tables, shape, packets);
        report
            .curve
            .push((policies, new_connections(tables, &attempts, 1)));
    }

    // (f) The curve over ClusterNetworkPolicy counts.
    report.tier_curve = tier_curve(shape, &options.tier_curve, packets);

    // (g) Replay of the new-connection trace, from a capture in the page cache.
    if !options.replay {
        return report;
    }
    let path: PathBuf =
        std::env::temp_dir().join(format!("podfence-bench-{}.pcap", std::process::id()));
    let mut writer = CaptureWriter::create(&path, LinkType::Ethernet).expect("temp capture");
    for (i, f) in syns.iter().enumerate() {
        writer
            .write(f, (f.len() + 4) as u32, 1_000 * i as u64)
            .expect("write");
    }
    writer.finish().expect("flush");
    // As `podfence replay CAPTURE` runs it: no per-flow or per-packet records.
    let options = ReplayOptions {
        record_flows: false,
        ..ReplayOptions::default()
    };
    let _ = replay(tables.clone(), std::slice::from_ref(&path), &options); // page cache
    let r = replay(tables, std::slice::from_ref(&path), &options);
    let _ = std::fs::remove_file(&path);
    report.replay_mpps = r.mpps();
    report.replay_packets = r.packets();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use podfence_datapath::flow::Parsed;
    use podfence_datapath::wire::checksum::internet_checksum;

    const SHAPE: Shape = Shape {
        namespaces: 10,
        pods: 200,
        policies: 100,
        cluster_policies: 0,
    };

    fn parsed(frame: &[u8]) -> podfence_datapath::flow::PacketMeta {
        match parse_frame(LinkType::Ethernet, frame).expect("parses") {
            Parsed::Ip(meta) => meta,
            Parsed::NotIp { .. } => panic!("not IP"),
        }
    }

    /// Runs `frames` through `w` one at a time; the output of each.
    fn one_by_one(w: &mut Worker<'_>, frames: &[Vec<u8>]) -> Vec<CountingOutput> {
        frames
            .iter()
            .map(|f| {
                let mut out = CountingOutput::default();
                let mut port = MemoryPort::new("one", LinkType::Ethernet, [f.as_slice()], 1);
                assert_eq!(w.run_batch(&mut port, &mut out).expect("memory port"), 1);
                out
            })
            .collect()
    }

    #[test]
    fn every_service_attempt_is_translated_to_its_backend_and_rewritten() {
        let (tables, services, count) = cluster_tables(SHAPE);
        assert_eq!(count, 100, "a Service per app and namespace");
        let through = service_attempts(&tables, &services, SHAPE, 400, 1.0);
        assert_eq!(through.len(), 400);
        let allowed = allowed_flows(&tables, &services, &through, usize::MAX);
        let share = allowed.len() as f64 / through.len() as f64;
        assert!(
            (0.7..=0.8).contains(&share),
            "three allowed for one denied: {share}"
        );

        let publisher = Publisher::new(tables.clone(), Arc::clone(&services));
        let (conntrack, stats) = (
            Conntrack::new(4096, Timeouts::default()),
            WorkerStats::default(),
        );
        let mut w = Worker::new(
            &conntrack,
            publisher.reader(),
            &stats,
            WorkerConfig::default(),
        );
        let syns: Vec<Vec<u8>> = through
            .iter()
            .map(|(a, sp)| frame(a, *sp, false, tcp_flags::SYN))
            .collect();
        let outs = one_by_one(&mut w, &syns);
        for ((a, sp), out) in through.iter().zip(&outs) {
            let (addr, port) = backend_of(&services, a, *sp).expect("to a frontend, no hairpin");
            let should = tables
                .classify_v4(a.src, addr, a.protocol, port)
                .is_allowed();
            assert_eq!(
                out.passed == 1,
                should,
                "{a:?}: classified against the backend"
            );
            assert_eq!(out.rewritten, out.passed, "{a:?}: passed means rewritten");
            if out.passed == 1 {
                let copy = &out.scratch[..out.scratch_len];
                let meta = parsed(copy);
                assert_eq!((meta.key.dst as u32, meta.key.dst_port), (addr, port));
                assert_eq!(internet_checksum(&copy[14..34]), 0, "IPv4 header checksum");
            }
        }

        // The established exchange: forward packets to the backend, the
        // backend's replies from the Service address.
        let packets: Vec<Vec<u8>> = allowed
            .iter()
            .flat_map(|(a, sp)| exchange(&services, a, *sp))
            .collect();
        let outs = one_by_one(&mut w, &packets);
        for (i, out) in outs.iter().enumerate() {
            let (a, _) = allowed[i / 2];
            assert_eq!((out.passed, out.rewritten), (1, 1), "packet {i} of {a:?}");
            let meta = parsed(&out.scratch[..out.scratch_len]);
            if i % 2 == 1 {
                assert_eq!(meta.key.src as u32, a.dst, "a reply comes from the Service");
            } else {
                assert_ne!(meta.key.dst as u32, a.dst, "forward goes to the backend");
            }
        }
        let c = stats.snapshot();
        assert_eq!(c.service_translated, allowed.len() as u64);
    }

    #[test]
    fn the_service_share_is_the_share_of_translated_attempts() {
        let (tables, services, _) = cluster_tables(SHAPE);
        for (share, expected) in [(0.0, 0), (0.25, 100), (0.5, 200), (1.0, 400)] {
            let through = service_attempts(&tables, &services, SHAPE, 400, share);
            let translated = through
                .iter()
                .filter(|(a, sp)| backend_of(&services, a, *sp).is_some())
                .count();
            assert_eq!(translated, expected, "share {share}");
        }
    }
}
