//! The sink: an AF_XDP receiver that counts the generator's packets per
//! flow, finds gaps and reordering by their sequence numbers, and records
//! one-way latency (receive time minus the stamped transmit time, both
//! `CLOCK_MONOTONIC` on this host) in an HDR histogram.
//!
//! It attaches podfence's own XDP redirector to each interface it listens
//! on (every IPv4/IPv6 frame to the socket of its queue, ARP and neighbour
//! discovery to the kernel) and opens one [`XskPort`] per queue; one thread,
//! inside the interfaces' network namespace, polls them all. The thread
//! detaches the redirectors when it ends, in that namespace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use podfence_bpf::{RedirectConfig, Redirector, XdpMode};
use podfence_datapath::ports::wait::ReadableWait;
use podfence_datapath::ports::xsk::{XskConfig, XskPort, XskStats};
use podfence_datapath::ports::{MAX_BATCH, Port, RxDesc};

use super::frames::{FCS_LEN, TrafficSpec};
use super::{TrafficError, monotonic_ns};
use crate::testbed::enter_netns;

/// Highest latency recorded (longer ones are clamped): 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// How a sink is set up.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Interfaces to receive on.
    pub ifaces: Vec<String>,
    /// Queues per interface (a socket each).
    pub queues: u32,
    /// XDP attach mode of the redirector.
    pub xdp_mode: XdpMode,
    /// Copy or zero-copy (`None`: the kernel chooses).
    pub zero_copy: Option<bool>,
    /// Core to pin the sink's thread to.
    pub core: Option<usize>,
    /// The traffic it receives (to recognise and parse frames).
    pub spec: TrafficSpec,
}

/// What the sink saw since its last reset.
#[derive(Clone, Debug)]
pub struct SinkReport {
    /// Generator frames received.
    pub received: u64,
    /// Per flow.
    pub per_flow: Vec<u64>,
    /// Bytes received, on the wire (FCS included).
    pub wire_bytes: u64,
    /// Frames that arrived with a lower sequence number than one already
    /// seen in their flow (late or duplicated).
    pub reordered: u64,
    /// Sequence numbers skipped when a frame arrived (missing when it
    /// arrived; late ones later are counted in `reordered`).
    pub gaps: u64,
    /// Frames that were not the generator's.
    pub foreign: u64,
    /// One-way latency, nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Receive time of the first and the last generator frame.
    pub first_last_ns: Option<(u64, u64)>,
    /// The kernel's ring counters, summed over the sockets, since the reset.
    pub xsk: XskStats,
    /// Whether every socket is bound in zero-copy mode.
    pub zero_copy: bool,
}

impl SinkReport {
    fn new(flows: usize) -> Self {
        Self {
            received: 0,
            per_flow: vec![0; flows],
            wire_bytes: 0,
            reordered: 0,
            gaps: 0,
            foreign: 0,
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid histogram bounds"),
            first_last_ns: None,
            xsk: XskStats::default(),
            zero_copy: false,
        }
    }

    /// Latency at quantile `q`, microseconds.
    #[must_use]
    pub fn latency_us(&self, q: f64) -> f64 {
        if self.latency_ns.is_empty() {
            return 0.0;
        }
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }
}

enum Command {
    Reset,
    Report(mpsc::Sender<SinkReport>),
}

/// A running sink (its thread).
#[derive(Debug)]
pub struct Sink {
    commands: Option<mpsc::Sender<Command>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), TrafficError>>>,
    zero_copy: bool,
}

struct State {
    spec: TrafficSpec,
    report: SinkReport,
    next_seq: Vec<u32>,
    seen: Vec<bool>,
    xsk_base: XskStats,
}

impl State {
    fn reset(&mut self, ports: &[XskPort]) {
        let zero_copy = self.report.zero_copy;
        self.report = SinkReport::new(self.next_seq.len());
        self.report.zero_copy = zero_copy;
        self.next_seq.fill(0);
        self.seen.fill(false);
        self.xsk_base = ring_stats(ports);
    }

    #[inline]
    fn frame(&mut self, frame: &[u8], now: u64) {
        let Some(st) = self.spec.parse(frame) else {
            self.report.foreign += 1;
            return;
        };
        let f = st.flow as usize;
        let r = &mut self.report;
        r.received += 1;
        r.per_flow[f] += 1;
        r.wire_bytes += (frame.len() + FCS_LEN) as u64;
        let next = self.next_seq[f];
        if !self.seen[f] || st.seq >= next {
            if self.seen[f] {
                r.gaps += u64::from(st.seq - next);
            } else {
                r.gaps += u64::from(st.seq);
                self.seen[f] = true;
            }
            self.next_seq[f] = st.seq.wrapping_add(1);
        } else {
            r.reordered += 1;
        }
        let latency = now.saturating_sub(st.sent_ns).clamp(1, MAX_LATENCY_NS);
        r.latency_ns.saturating_record(latency);
        r.first_last_ns = Some(match r.first_last_ns {
            None => (now, now),
            Some((first, _)) => (first, now),
        });
    }
}

fn ring_stats(ports: &[XskPort]) -> XskStats {
    let mut sum = XskStats::default();
    for p in ports {
        if let Ok(s) = p.xsk_stats() {
            sum.rx_dropped += s.rx_dropped;
            sum.rx_ring_full += s.rx_ring_full;
            sum.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs;
            sum.rx_invalid_descs += s.rx_invalid_descs;
        }
    }
    sum
}

fn minus(a: XskStats, b: XskStats) -> XskStats {
    XskStats {
        rx_dropped: a.rx_dropped.saturating_sub(b.rx_dropped),
        rx_invalid_descs: a.rx_invalid_descs.saturating_sub(b.rx_invalid_descs),
        tx_invalid_descs: 0,
        rx_ring_full: a.rx_ring_full.saturating_sub(b.rx_ring_full),
        rx_fill_ring_empty_descs: a
            .rx_fill_ring_empty_descs
            .saturating_sub(b.rx_fill_ring_empty_descs),
        tx_ring_empty_descs: 0,
    }
}

fn open(config: &SinkConfig) -> Result<(Vec<Redirector>, Vec<XskPort>), TrafficError> {
    let redirect = RedirectConfig {
        mode: config.xdp_mode,
        // A sink that is not listening drops rather than lets the kernel
        // answer (TCP resets, ICMP unreachable) on the generator's path.
        no_socket_action: podfence_bpf::NoSocketAction::Drop,
        max_queues: config.queues.max(1),
        replace_foreign: false,
        max_interfaces: 1,
    };
    // Deep rings: a sink that shares its core loses it for a scheduler
    // slice (milliseconds) at a time; 8192 frames hold 9 ms at 0.9 Mpps.
    let xsk = XskConfig {
        zero_copy: config.zero_copy,
        frame_count: 16_384,
        rx_ring: 8192,
        fill_ring: 8192,
        tx_ring: 64,
        comp_ring: 8192,
        ..XskConfig::default()
    };
    let mut redirectors = Vec::new();
    let mut ports = Vec::new();
    for iface in &config.ifaces {
        let r = Redirector::attach(iface.as_str(), &redirect).map_err(|e| TrafficError::Xsk {
            port: iface.clone(),
            message: format!("attaching the redirector: {e}"),
        })?;
        for q in 0..config.queues.max(1) {
            let port = XskPort::open(iface, q, &xsk).map_err(|e| TrafficError::Xsk {
                port: format!("{iface}:{q}"),
                message: e.to_string(),
            })?;
            r.register_socket(q, &port).map_err(|e| TrafficError::Xsk {
                port: format!("{iface}:{q}"),
                message: format!("registering the socket: {e}"),
            })?;
            ports.push(port);
        }
        redirectors.push(r);
    }
    Ok((redirectors, ports))
}

fn serve(
    ports: &mut [XskPort],
    state: &mut State,
    commands: &mpsc::Receiver<Command>,
    stop: &AtomicBool,
) {
    // Sleeping in poll() would be cheapest, but a thread woken from
    // another CPU of a VM can wait milliseconds for its wake-up; so the sink
    // keeps polling its rings while traffic flows, yielding its core to
    // whatever else wants it, and sleeps only after 50 ms of silence.
    const QUIET_BEFORE_SLEEP_NS: u64 = 50_000_000;
    let mut descs = [RxDesc::default(); MAX_BATCH];
    let mut wait = ReadableWait::new(ports.iter());
    let mut last_frame = monotonic_ns();
    let mut idle = 0u32;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Reset => state.reset(ports),
                Command::Report(reply) => {
                    let mut r = state.report.clone();
                    r.xsk = minus(ring_stats(ports), state.xsk_base);
                    let _ = reply.send(r);
                }
            }
        }
        let mut got = 0;
        for port in ports.iter_mut() {
            let Ok(n) = port.recv(&mut descs) else {
                continue;
            };
            if n == 0 {
                continue;
            }
            let now = monotonic_ns();
            for d in &descs[..n] {
                state.frame(port.frame(d), now);
            }
            port.release(&descs[..n]);
            got += n;
        }
        if got > 0 {
            idle = 0;
            last_frame = monotonic_ns();
            continue;
        }
        idle += 1;
        if idle.is_multiple_of(64) && monotonic_ns() - last_frame > QUIET_BEFORE_SLEEP_NS {
            let _ = wait.wait(Duration::from_millis(2));
        } else {
            std::thread::yield_now();
        }
    }
}

impl Sink {
    /// Starts the sink on a thread of its own, in network namespace `netns`
    /// (or the caller's with `None`); returns once it listens.
    pub fn start(netns: Option<&str>, config: SinkConfig) -> Result<Self, TrafficError> {
        let (ready_tx, ready) = mpsc::channel();
        let (commands_tx, commands) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = Arc::clone(&stop);
        let netns = netns.map(str::to_owned);
        let thread = std::thread::Builder::new()
            .name("pf-sink".into())
            .spawn(move || -> Result<(), TrafficError> {
                let setup = || {
                    if let Some(ns) = &netns {
                        enter_netns(ns).map_err(|e| {
                            TrafficError::Setup(format!("entering network namespace {ns}: {e}"))
                        })?;
                    }
                    if let Some(core) = config.core
                        && !podfence_datapath::worker::pin_to_core(core)
                    {
                        eprintln!("sink: could not pin to core {core}");
                    }
                    open(&config)
                };
                let (redirectors, mut ports) = match setup() {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let zero_copy = ports
                    .iter()
                    .all(|p| p.mode() == podfence_datapath::ports::xsk::XskMode::ZeroCopy);
                let _ = ready_tx.send(Ok(zero_copy));
                let flows = config.spec.flows.max(1) as usize;
                let mut state = State {
                    spec: config.spec.clone(),
                    report: SinkReport::new(flows),
                    next_seq: vec![0; flows],
                    seen: vec![false; flows],
                    xsk_base: XskStats::default(),
                };
                state.report.zero_copy = zero_copy;
                state.reset(&ports);
                serve(&mut ports, &mut state, &commands, &stop_thread);
                drop(ports);
                for r in redirectors {
                    r.detach().map_err(|e| TrafficError::Xsk {
                        port: "sink".into(),
                        message: format!("detaching the redirector: {e}"),
                    })?;
                }
                Ok(())
            })
            .map_err(|e| TrafficError::Setup(format!("spawning the sink thread: {e}")))?;
        let mut sink = Self {
            commands: Some(commands_tx),
            stop,
            thread: Some(thread),
            zero_copy: false,
        };
        match ready.recv() {
            Ok(Ok(zero_copy)) => {
                sink.zero_copy = zero_copy;
                Ok(sink)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TrafficError::Setup("the sink thread died".into())),
        }
    }

    /// Whether every socket is bound in zero-copy mode.
    #[must_use]
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Forgets everything counted so far.
    pub fn reset(&self) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Reset);
        }
    }

    /// What was counted since the last reset.
    pub fn report(&self) -> Result<SinkReport, TrafficError> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or_else(|| TrafficError::Setup("the sink is stopped".into()))?
            .send(Command::Report(tx))
            .map_err(|_| TrafficError::Setup("the sink thread is gone".into()))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| TrafficError::Setup("the sink did not answer".into()))
    }

    /// Waits until nothing has arrived for `quiet` (at most `limit`), then
    /// reports: the frames still in flight when the generator stopped are
    /// counted.
    pub fn settle(&self, quiet: Duration, limit: Duration) -> Result<SinkReport, TrafficError> {
        let start = std::time::Instant::now();
        let mut last = self.report()?;
        loop {
            std::thread::sleep(quiet);
            let now = self.report()?;
            if now.received + now.foreign == last.received + last.foreign
                || start.elapsed() >= limit
            {
                return Ok(now);
            }
            last = now;
        }
    }

    /// Stops the thread and detaches the redirectors.
    pub fn stop(mut self) -> Result<(), TrafficError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), TrafficError> {
        self.stop.store(true, Ordering::Relaxed);
        self.commands = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(TrafficError::Setup("the sink thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("sink: {e}");
        }
    }
}
