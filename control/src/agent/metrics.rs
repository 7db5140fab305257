//! Metrics and health over HTTP: `/metrics` (Prometheus text format),
//! `/healthz` (every worker running) and `/readyz` (tables published and
//! every worker running).
//!
//! Worker counters are read at scrape time from the workers' own
//! cache-line-padded counters (a [`Collector`]), so the hot path pays
//! nothing for them. Control-plane figures (generation, compile time,
//! propagation latency, watch errors, rejected objects) are prometheus
//! metrics updated where they happen.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use podfence_datapath::conntrack::Conntrack;
use podfence_datapath::stats::{Counters, WorkerStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::metrics::ControlMetrics;

/// A worker counter's name, help and reader.
type CounterSpec = (&'static str, &'static str, fn(&Counters) -> u64);

/// A worker's AF_XDP ring statistics (`XDP_STATISTICS`), summed over its
/// sockets; the worker refreshes them about once a second.
#[derive(Debug, Default)]
pub struct RingCounters {
    /// Frames dropped for reasons other than invalid descriptors.
    pub rx_dropped: AtomicU64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: AtomicU64,
    /// Times the fill ring was empty when a frame arrived.
    pub fill_ring_empty: AtomicU64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: AtomicU64,
    /// Invalid descriptors on the tx ring.
    pub tx_invalid_descs: AtomicU64,
    /// Times the tx ring was empty when the kernel looked.
    pub tx_ring_empty: AtomicU64,
    /// Frames dropped for their length: AF_XDP chains longer than the
    /// sockets carry (received or to send), frames longer than a staging
    /// slot of the switch.
    pub oversize: AtomicU64,
}

/// The workers' counters, read at scrape time.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    workers: Mutex<Vec<(Arc<WorkerStats>, Arc<RingCounters>)>>,
    /// The connection table the workers share, once they run; the agent
    /// owns it (a scrape does not keep it mapped, or its file locked).
    conntrack: Mutex<Weak<Conntrack>>,
    /// Who finishes transport checksums: 0 not known yet, 1 software,
    /// 2 the kernel (AF_XDP TX metadata).
    checksum_offload: AtomicU8,
}

/// A ring counter's name, help and reader.
type RingSpec = (&'static str, &'static str, fn(&RingCounters) -> &AtomicU64);

impl WorkerCounters {
    /// The connection table whose occupancy to report.
    pub fn set_conntrack(&self, conntrack: &Arc<Conntrack>) {
        *self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(conntrack);
    }

    /// Records who finishes the transport checksums the datapath sends:
    /// the kernel, through AF_XDP TX metadata (`true`), or the switch.
    pub fn set_checksum_offload(&self, offloaded: bool) {
        self.checksum_offload
            .store(if offloaded { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Whether the kernel finishes transport checksums (`None` before the
    /// ports are open).
    #[must_use]
    pub fn checksum_offload(&self) -> Option<bool> {
        match self.checksum_offload.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }

    /// Adds a worker's counters.
    pub fn add(&self, stats: Arc<WorkerStats>, rings: Arc<RingCounters>) {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((stats, rings));
    }

    /// Workers counted.
    #[must_use]
    pub fn worker_count(&self) -> usize {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Live entries and slots of the connection table (a scan of the
    /// table), once the workers run.
    #[must_use]
    pub fn conntrack_usage(&self) -> Option<(usize, usize)> {
        let ct = self
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()?;
        Some((ct.live_entries(ct.clock_ns()), ct.capacity()))
    }

    fn snapshots(&self) -> Vec<(Counters, Arc<RingCounters>)> {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, r)| (s.snapshot(), Arc::clone(r)))
            .collect()
    }
}

/// The worker counters exported.
const WORKER_COUNTERS: [CounterSpec; 20] = [
    (
        "podfence_service_translated",
        "New connections to a Service translated to a backend",
        |c| c.service_translated,
    ),
    (
        "podfence_service_no_endpoint",
        "Attempts on a Service with no usable endpoint (refused)",
        |c| c.service_no_endpoint,
    ),
    (
        "podfence_service_rejects",
        "Port unreachables sent for attempts on a Service with no usable endpoint",
        |c| c.service_rejects,
    ),
    (
        "podfence_service_rejects_limited",
        "Attempts on a Service with no usable endpoint left unanswered (rate limit)",
        |c| c.service_rejects_limited,
    ),
    (
        "podfence_service_no_local_endpoint",
        "Attempts on a Local Service with no endpoint on this node (dropped)",
        |c| c.service_no_local_endpoint,
    ),
    (
        "podfence_service_backend_gone",
        "Translated connections ended because their backend left the Service",
        |c| c.service_backend_gone,
    ),
    ("podfence_rx_packets", "Frames received", |c| c.rx_packets),
    ("podfence_rx_bytes", "Bytes received", |c| c.rx_bytes),
    ("podfence_allowed_packets", "Frames let through", |c| {
        c.allowed
    }),
    ("podfence_allowed_bytes", "Bytes let through", |c| {
        c.allowed_bytes
    }),
    (
        "podfence_denied_packets",
        "Frames dropped (policy, or malformed with the drop action)",
        |c| c.denied,
    ),
    ("podfence_denied_bytes", "Bytes dropped", |c| c.denied_bytes),
    (
        "podfence_connections_denied_egress",
        "Connection attempts the source's egress policy denied",
        |c| c.new_denied_egress,
    ),
    (
        "podfence_connections_denied_ingress",
        "Connection attempts the destination's ingress policy denied",
        |c| c.new_denied_ingress,
    ),
    (
        "podfence_malformed_packets",
        "Frames that did not parse",
        |c| c.malformed,
    ),
    (
        "podfence_connections_allowed",
        "New connections allowed",
        |c| c.new_allowed,
    ),
    (
        "podfence_connections_denied",
        "Connection attempts denied",
        |c| c.new_denied,
    ),
    (
        "podfence_connections_revoked",
        "Established connections cut by a new generation",
        |c| c.revoked,
    ),
    (
        "podfence_conntrack_evictions",
        "Conntrack entries that evicted another",
        |c| c.conntrack_evictions,
    ),
    (
        "podfence_conntrack_insert_failures",
        "Conntrack inserts that found no slot",
        |c| c.conntrack_insert_failures,
    ),
];

/// The ring counters exported.
const RING_COUNTERS: [RingSpec; 7] = [
    (
        "podfence_xsk_rx_dropped",
        "AF_XDP: frames dropped for reasons other than invalid descriptors",
        |r| &r.rx_dropped,
    ),
    (
        "podfence_xsk_rx_ring_full",
        "AF_XDP: frames dropped because the rx ring was full",
        |r| &r.rx_ring_full,
    ),
    (
        "podfence_xsk_fill_ring_empty",
        "AF_XDP: times the fill ring was empty when a frame arrived",
        |r| &r.fill_ring_empty,
    ),
    (
        "podfence_xsk_rx_invalid_descs",
        "AF_XDP: invalid descriptors on the fill ring",
        |r| &r.rx_invalid_descs,
    ),
    (
        "podfence_xsk_tx_invalid_descs",
        "AF_XDP: invalid descriptors on the tx ring",
        |r| &r.tx_invalid_descs,
    ),
    (
        "podfence_xsk_tx_ring_empty",
        "AF_XDP: times the tx ring was empty when the kernel looked",
        |r| &r.tx_ring_empty,
    ),
    (
        "podfence_frames_oversize",
        "Frames dropped for their length: longer than the datapath's MTU (--mtu) carries",
        |r| &r.oversize,
    ),
];

impl Collector for WorkerCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots = self.snapshots();
        for (name, help, get) in WORKER_COUNTERS {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (w, (c, _)) in snapshots.iter().enumerate() {
                let labels = [("worker", w.to_string())];
                ConstCounter::new(get(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, get) in RING_COUNTERS {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (w, (_, r)) in snapshots.iter().enumerate() {
                let labels = [("worker", w.to_string())];
                let value = get(r).load(Ordering::Relaxed);
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        // A scan of the whole table: at scrape time only.
        if let Some((live, capacity)) = self.conntrack_usage() {
            let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            let live = gauge(live);
            live.encode(encoder.encode_descriptor(
                "podfence_conntrack_entries",
                "Live connection-table entries (not yet expired)",
                None,
                live.metric_type(),
            )?)?;
            let capacity = gauge(capacity);
            capacity.encode(encoder.encode_descriptor(
                "podfence_conntrack_capacity",
                "Connection-table slots",
                None,
                capacity.metric_type(),
            )?)?;
        }
        if let Some(offloaded) = self.checksum_offload() {
            let gauge = ConstGauge::new(i64::from(offloaded));
            gauge.encode(encoder.encode_descriptor(
                "podfence_checksum_offload",
                "1: TCP/UDP checksums pods left to offload are finished by the kernel \
                 (AF_XDP TX metadata); 0: by the datapath, in software",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let workers = ConstGauge::new(i64::try_from(snapshots.len()).unwrap_or(i64::MAX));
        workers.encode(encoder.encode_descriptor(
            "podfence_workers",
            "Worker threads",
            None,
            workers.metric_type(),
        )?)?;
        Ok(())
    }
}

/// What `/healthz` and `/readyz` look at.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the first generation is published.
    pub published: AtomicBool,
    /// One flag per worker, true while it runs.
    pub workers: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Health {
    fn workers_running(&self) -> bool {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        !workers.is_empty() && workers.iter().all(|w| w.load(Ordering::Relaxed))
    }
}

/// The HTTP endpoint; stopped on drop.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `control`, `workers` and `health` on `addr`.
    pub fn start(
        addr: SocketAddr,
        control: &ControlMetrics,
        workers: Arc<WorkerCounters>,
        health: Arc<Health>,
    ) -> std::io::Result<Self> {
        let mut registry = Registry::default();
        control.register(&mut registry);
        registry.register_collector(Box::new(workers));
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("pf-metrics".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => answer(&stream, &registry, &health),
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        info!(%addr, "metrics and health endpoints");
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(stream: &TcpStream, registry: &Registry, health: &Health) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, content_type, body) = match path.as_str() {
        "/metrics" => {
            let mut text = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
                warn!(error = %e, "encoding metrics");
            }
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        "/healthz" if health.workers_running() => ("200 OK", "text/plain", "ok\n".into()),
        "/healthz" => (
            "503 Service Unavailable",
            "text/plain",
            "a worker is not running\n".into(),
        ),
        "/readyz" if health.published.load(Ordering::Relaxed) && health.workers_running() => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready: no tables published yet, or a worker is not running\n".into(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(counters: &Arc<WorkerCounters>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(counters)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn the_checksum_offload_mode_is_a_gauge_once_known() {
        let counters = Arc::new(WorkerCounters::default());
        assert_eq!(counters.checksum_offload(), None);
        assert!(!scrape(&counters).contains("podfence_checksum_offload"));
        counters.set_checksum_offload(true);
        assert_eq!(counters.checksum_offload(), Some(true));
        assert!(scrape(&counters).contains("\npodfence_checksum_offload 1\n"));
        counters.set_checksum_offload(false);
        assert!(scrape(&counters).contains("\npodfence_checksum_offload 0\n"));
    }
}
