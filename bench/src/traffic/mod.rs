//! An AF_XDP traffic generator and sink, for packet rates on veths and NICs
//! (no kernel pktgen here: it is not built into this kernel).
//!
//! - [`frames`]: the frames (UDP and TCP segments over IPv4, with a
//!   sequence number and a transmit timestamp in the payload), spread over
//!   flows, a share of them to a port that policy denies;
//! - [`generator`]: transmit-only AF_XDP sockets, in batches, at the
//!   highest rate the interface takes or paced;
//! - [`sink`]: an AF_XDP receiver counting per flow, finding loss and
//!   reordering, recording one-way latency;
//! - [`self_check`]: the generator on its own, to show it outruns what is
//!   measured with it.

pub mod frames;
pub mod generator;
pub mod sink;

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::testbed::{self, TestbedError};
use frames::TrafficSpec;
use generator::{GenReport, Generator, GeneratorConfig, Pace};
use sink::{Sink, SinkConfig, SinkReport};

/// Why traffic could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// An AF_XDP socket or the redirector failed.
    #[error("{port}: {message}")]
    Xsk {
        /// Interface and queue.
        port: String,
        /// What failed.
        message: String,
    },
    /// Setting up namespaces, links or threads failed.
    #[error("{0}")]
    Setup(String),
    /// A testbed command failed.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of the payload stamps.
#[must_use]
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

/// Runs one generator per queue on `ifname` (threads in the caller's
/// namespace, or `netns`), each sending the flows `f` with
/// `f % queues == q` on queue `q`, and merges their reports. Generator `q`
/// is pinned to core `cores[q % cores.len()]` when `cores` is not empty.
pub fn generate(
    netns: Option<&str>,
    config: &GeneratorConfig,
    queues: u32,
    spec: &TrafficSpec,
    pace: Pace,
    duration: Duration,
    cores: &[usize],
) -> Result<GenReport, TrafficError> {
    let templates = spec.templates();
    let queues = queues.max(1);
    let stop = AtomicBool::new(false);
    let results: Vec<Result<GenReport, TrafficError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..queues)
            .map(|q| {
                let (templates, stop) = (&templates, &stop);
                let mut config = config.clone();
                config.queue = q;
                let core = (!cores.is_empty()).then(|| cores[q as usize % cores.len()]);
                let pace = match pace {
                    Pace::Max => Pace::Max,
                    Pace::Rate(r) => Pace::Rate(r / f64::from(queues)),
                };
                s.spawn(move || -> Result<GenReport, TrafficError> {
                    if let Some(ns) = netns {
                        testbed::enter_netns(ns).map_err(|e| {
                            TrafficError::Setup(format!("entering network namespace {ns}: {e}"))
                        })?;
                    }
                    if let Some(core) = core {
                        let _ = podfence_datapath::worker::pin_to_core(core);
                    }
                    let mut generator = Generator::open(&config)?;
                    let flows: Vec<u32> = (0..templates.len() as u32)
                        .filter(|f| f % queues == q)
                        .collect();
                    Ok(generator.run(templates, &flows, pace, duration, stop))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(TrafficError::Setup("a generator panicked".into())))
            })
            .collect()
    });
    let mut reports = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut total = reports.remove(0);
    for r in &reports {
        total.merge(r);
    }
    Ok(total)
}

/// Network namespaces this process made, deleted on drop (and by the
/// testbed's signal handler on SIGINT/SIGTERM).
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespace `name` and takes charge of it.
    pub fn add(&mut self, name: &str) -> Result<(), TrafficError> {
        testbed::install_signal_handler();
        testbed::register(name);
        if let Err(e) = testbed::run(&["ip", "netns", "add", name]) {
            testbed::unregister(name);
            return Err(e.into());
        }
        self.names.push(name.to_owned());
        testbed::ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespaces, in creation order.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            testbed::delete_netns(&name);
            testbed::unregister(&name);
        }
    }
}

/// What the generator does on its own.
#[derive(Clone, Debug)]
pub struct SelfCheck {
    /// Into a veth whose other end drops every frame in XDP: the rate the
    /// generator alone reaches (the transmit side's ceiling).
    pub into_drop: GenReport,
    /// Straight into the AF_XDP sink over a veth pair: sent.
    pub direct_sent: GenReport,
    /// ... and received.
    pub direct_received: SinkReport,
    /// Whether the sockets were bound in zero-copy mode.
    pub zero_copy: bool,
}

/// Where the self-check sends and receives.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A veth pair of its own, its ends in two namespaces made for the run.
    Veth,
    /// Two existing interfaces of the caller's namespace: a NIC's two
    /// ports joined by a cable, or two NICs. Frames leave `tx` and arrive
    /// at `rx`; `zero_copy` asks for (`Some(true)`), refuses
    /// (`Some(false)`) or lets the driver pick (`None`) zero-copy sockets.
    Nic {
        /// Transmitting interface.
        tx: String,
        /// Receiving interface.
        rx: String,
        /// Zero-copy binding.
        zero_copy: Option<bool>,
    },
}

/// The two ends of a [`Wire`], set up.
struct Ends {
    tx_netns: Option<String>,
    tx: String,
    rx_netns: Option<String>,
    rx: String,
    zero_copy: Option<bool>,
    /// The veth's namespaces, deleted on drop.
    _namespaces: Namespaces,
}

impl Ends {
    fn set_up(wire: &Wire, queues: u32) -> Result<Self, TrafficError> {
        match wire {
            Wire::Nic { tx, rx, zero_copy } => Ok(Self {
                tx_netns: None,
                tx: tx.clone(),
                rx_netns: None,
                rx: rx.clone(),
                zero_copy: *zero_copy,
                _namespaces: Namespaces::default(),
            }),
            Wire::Veth => {
                let prefix = testbed::run_prefix();
                let (tx_ns, rx_ns) = (format!("{prefix}-gen"), format!("{prefix}-sink"));
                let mut namespaces = Namespaces::default();
                namespaces.add(&tx_ns)?;
                namespaces.add(&rx_ns)?;
                testbed::add_veth_pair(&tx_ns, "gen0", "sink0", Some(&rx_ns), queues)?;
                testbed::ip(&tx_ns, &["link", "set", "gen0", "up"])?;
                testbed::ip(&rx_ns, &["link", "set", "sink0", "up"])?;
                Ok(Self {
                    tx_netns: Some(tx_ns),
                    tx: "gen0".into(),
                    rx_netns: Some(rx_ns),
                    rx: "sink0".into(),
                    zero_copy: None,
                    _namespaces: namespaces,
                })
            }
        }
    }

    /// Runs `f` in the receiving side's namespace.
    fn on_rx<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
        match &self.rx_netns {
            Some(ns) => testbed::in_netns(ns, f),
            None => f(),
        }
    }
}

/// Runs the generator alone: into an interface that drops everything at
/// XDP, then into the sink, over `wire` (for a veth pair, namespaces of
/// its own, removed afterwards).
pub fn self_check(
    spec: &TrafficSpec,
    wire: &Wire,
    queues: u32,
    duration: Duration,
    gen_cores: &[usize],
    sink_core: Option<usize>,
) -> Result<SelfCheck, TrafficError> {
    let ends = Ends::set_up(wire, queues)?;
    let mut spec = spec.clone();
    spec.src_mac = mac_of(ends.tx_netns.as_deref(), &ends.tx)?;
    spec.dst_mac = mac_of(ends.rx_netns.as_deref(), &ends.rx)?;
    let gen_config = GeneratorConfig {
        zero_copy: ends.zero_copy,
        ..GeneratorConfig::new(&ends.tx)
    };
    let send = |duration| {
        generate(
            ends.tx_netns.as_deref(),
            &gen_config,
            queues,
            &spec,
            Pace::Max,
            duration,
            gen_cores,
        )
    };
    // 1. The receiver's redirector without sockets: XDP drops every frame.
    let into_drop = {
        let redirect = podfence_bpf::RedirectConfig {
            mode: podfence_bpf::XdpMode::Native,
            max_queues: queues.max(1),
            ..podfence_bpf::RedirectConfig::default()
        };
        let dropper = ends
            .on_rx(|| {
                podfence_bpf::Redirector::attach(&ends.rx, &redirect).map_err(std::io::Error::other)
            })
            .map_err(|e| TrafficError::Setup(format!("attaching a dropping XDP program: {e}")))?;
        let r = send(duration);
        ends.on_rx(|| dropper.detach().map_err(std::io::Error::other))
            .map_err(|e| TrafficError::Setup(format!("detaching: {e}")))?;
        r?
    };
    // 2. Into the sink.
    let sink = Sink::start(
        ends.rx_netns.as_deref(),
        SinkConfig {
            ifaces: vec![ends.rx.clone()],
            queues: queues.max(1),
            xdp_mode: podfence_bpf::XdpMode::Native,
            zero_copy: ends.zero_copy,
            core: sink_core,
            spec: spec.clone(),
        },
    )?;
    let zero_copy = sink.zero_copy();
    // Warm up (page faults, caches), then measure.
    send(Duration::from_millis(200))?;
    sink.settle(Duration::from_millis(20), Duration::from_secs(1))?;
    sink.reset();
    let direct_sent = send(duration)?;
    let direct_received = sink.settle(Duration::from_millis(20), Duration::from_secs(2))?;
    sink.stop()?;
    Ok(SelfCheck {
        into_drop,
        direct_sent,
        direct_received,
        zero_copy,
    })
}

/// The MAC address of `link` in namespace `netns` (or the caller's).
fn mac_of(netns: Option<&str>, link: &str) -> Result<[u8; 6], TrafficError> {
    match netns {
        Some(ns) => link_mac(ns, link),
        None => mac_from_json(
            &testbed::run(&["ip", "-j", "link", "show", "dev", link])?,
            link,
        ),
    }
}

/// The MAC address of `link` in namespace `netns`.
pub fn link_mac(netns: &str, link: &str) -> Result<[u8; 6], TrafficError> {
    mac_from_json(
        &testbed::ip(netns, &["-j", "link", "show", "dev", link])?,
        link,
    )
}

fn mac_from_json(out: &str, link: &str) -> Result<[u8; 6], TrafficError> {
    let v: serde_json::Value = serde_json::from_str(out)
        .map_err(|e| TrafficError::Setup(format!("`ip -j link show {link}`: {e}")))?;
    let text = v[0]["address"]
        .as_str()
        .ok_or_else(|| TrafficError::Setup(format!("{link} has no MAC address")))?;
    parse_mac(text).ok_or_else(|| TrafficError::Setup(format!("bad MAC address {text}")))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The first IPv4 address of a pod, for the generator.
#[must_use]
pub fn first_v4(ips: &[std::net::IpAddr]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|ip| match ip {
        std::net::IpAddr::V4(a) => Some(*a),
        std::net::IpAddr::V6(_) => None,
    })
}
