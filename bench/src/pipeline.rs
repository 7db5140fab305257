//! The worker pipeline on in-memory traces: parse only, established
//! connections, new connections, the curve over policy counts, two workers,
//! per-batch latency, allocations per packet, and replay from a capture.
//!
//! Traces are 64-byte frames (60 bytes plus the 4-byte FCS a wire would
//! add) built with `podfence_datapath::craft` from the synthetic cluster's
//! traffic mix, three allowed connection attempts for every denied one.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use podfence_control::compile::{CompileOptions, compile};
use podfence_control::replay::{ReplayOptions, replay};
use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::flow::parse_frame;
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::RxDesc;
use podfence_datapath::ports::capture::CaptureWriter;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};
use podfence_datapath::{IpProtocol, Tables};

use crate::alloc::CountingAllocator;
use crate::synthetic::{self, Attempt, Shape};

/// Frame length before the FCS: 64-byte packets on the wire.
const FRAME_LEN: usize = 60;

/// Counts what passes; the cheapest output a worker can have.
#[derive(Debug, Default)]
pub struct CountingOutput {
    /// Frames that passed.
    pub passed: u64,
    /// Frames seen.
    pub seen: u64,
}

impl Output for CountingOutput {
    fn packet(
        &mut self,
        _desc: &RxDesc,
        _frame: &[u8],
        _meta: Option<&podfence_datapath::flow::PacketMeta>,
        _outcome: &Outcome,
        passes: bool,
    ) {
        self.seen += 1;
        self.passed += u64::from(passes);
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

/// Results of [`run`].
#[derive(Clone, Debug, Default)]
pub struct PipelineReport {
    /// Parse only, Mpps.
    pub parse_mpps: f64,
    /// Established connections (conntrack hits), Mpps.
    pub established_mpps: f64,
    /// New connections (miss, classify, insert), Mpps.
    pub new_conn_mpps: f64,
    /// New connections with two workers, Mpps in total.
    pub two_workers_mpps: f64,
    /// New-connection Mpps by policy count.
    pub curve: Vec<(usize, f64)>,
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
}

/// Runs a worker over `port` until it is finished; returns the elapsed
/// time, frames and a histogram of batch durations.
fn drive(
    worker: &mut Worker<'_>,
    port: &mut MemoryPort,
    hist: Option<&mut Histogram<u64>>,
) -> (Duration, u64) {
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
    (start.elapsed(), black_box(out.seen))
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
    let publisher = Publisher::new(tables, podfence_datapath::ServiceTable::empty());
    let conntrack = Conntrack::new(attempts.len() * 2, Timeouts::default());
    let stats: Vec<WorkerStats> = (0..workers).map(|_| WorkerStats::default()).collect();
    let chunk = frames.len().div_ceil(workers);
    let total: Vec<(Duration, u64)> = std::thread::scope(|s| {
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

/// Runs every scenario at `shape` (the curve varies the policy count).
#[must_use]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario after another, in report order"
)]
pub fn run(shape: Shape, packets: usize, alloc: &CountingAllocator) -> PipelineReport {
    let cluster = synthetic::cluster(shape);
    let tables = compile(&cluster, &CompileOptions::default()).tables;
    let attempts = mixed_attempts(&tables, shape, packets);
    let mut report = PipelineReport {
        allowed_share: attempts
            .iter()
            .filter(|(a, _)| {
                tables
                    .classify_v4(a.src, a.dst, a.protocol, a.port)
                    .is_allowed()
            })
            .count() as f64
            / attempts.len() as f64,
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

    // (b) Established: open 64k allowed connections, then time their ACKs.
    let publisher = Publisher::new(tables.clone(), podfence_datapath::ServiceTable::empty());
    let stats = WorkerStats::default();
    let conntrack = Conntrack::new(1 << 18, Timeouts::default());
    let flows: Vec<&(Attempt, u16)> = attempts
        .iter()
        .filter(|(a, _)| {
            tables
                .classify_v4(a.src, a.dst, a.protocol, a.port)
                .is_allowed()
        })
        .take(65_536)
        .collect();
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
        .flat_map(|(a, sp)| {
            [
                frame(a, *sp, false, tcp_flags::ACK),
                frame(a, *sp, true, tcp_flags::ACK),
            ]
        })
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
    let allocs = alloc.allocations();
    let (d, n) = drive(&mut w, &mut port, None);
    let mut measured_allocs = alloc.allocations() - allocs;
    let mut measured_packets = n;
    report.established_mpps = mpps(n, d);

    // (c) New connections, with per-batch latency.
    let conntrack = Conntrack::new(attempts.len() * 2, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let mut port = MemoryPort::new("new", LinkType::Ethernet, syns.iter().map(Vec::as_slice), 1);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let allocs = alloc.allocations();
    let (d, n) = drive(&mut w, &mut port, Some(&mut hist));
    measured_allocs += alloc.allocations() - allocs;
    measured_packets += n;
    report.new_conn_mpps = mpps(n, d);
    report.batch_latency_ns = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
    );
    report.allocs_per_packet = measured_allocs as f64 / measured_packets as f64;

    // (d) Two workers.
    report.two_workers_mpps = new_connections(tables.clone(), &attempts, 2);

    // (e) The curve over policy counts, same pods and traffic mix.
    for policies in [1, 10, 100, 1_000, 10_000] {
        let shape = Shape { policies, ..shape };
        let tables = compile(&synthetic::cluster(shape), &CompileOptions::default()).tables;
        let attempts = mixed_attempts(&tables, shape, packets);
        report
            .curve
            .push((policies, new_connections(tables, &attempts, 1)));
    }

    // (f) Replay of the new-connection trace, from a capture in the page cache.
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
