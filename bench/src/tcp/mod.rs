//! `podfence-bench tcp`: TCP and UDP between two pods of a testbed node,
//! the way users measure a CNI (iperf3, sockperf, a connection-rate
//! client), over the kernel and podfence, in alternating rounds.
//!
//! Paths (a subset of [`PathKind`], set up by [`crate::veth::enforcer`]):
//!
//! - `kernel`: the node routing between the pod veths, no filter;
//! - `forward-all`: podfence with no policy;
//! - `podfence`: podfence enforcing the benchmark cluster's policies
//!   (1,000 by default), the measured traffic allowed by a rule deep in the
//!   table (see [`crate::veth::cluster`]);
//! - `nftables`: the kernel with the same policies as nftables rules with
//!   conntrack.
//!
//! Workloads ([`Workload`]): TCP stream with 1 and 4 connections and a UDP
//! stream (iperf3), request/response (sockperf ping-pong over TCP), and the
//! connection rate (connect, request, response, close; our own clients).
//! Clients run in the generator pod, servers in the sink pod, on the port
//! the policies allow; a connection to the denied port is tried on every
//! path and round (it must fail where policies are enforced).
//!
//! Every MTU gets a testbed of its own (pod veths and the agent's MTU).
//! Every round sets up each path once, in the order given and reversed in
//! the next round, and runs every workload on it. Per workload the CPU time
//! of the whole machine (/proc/stat: clients, servers, softirqs, the agent)
//! and of the agent's threads (they are threads of this process) is taken
//! over the client's run; on the podfence paths the agent's CPU is also
//! taken over a few idle seconds.

pub mod report;
pub mod workloads;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use podfence_control::agent::AgentOptions;
use podfence_control::compile::{CompileOptions, Locality, compile};

use crate::cpu::{self, cpu_times, threads_ticks, ticks_per_second};
use crate::synthetic::Shape;
use crate::testbed::{self, Testbed, TestbedError, TestbedOptions};
use crate::veth::cluster::{BENCH_NODE, BenchCluster, bench_cluster};
use crate::veth::enforcer;
pub use crate::veth::{PathKind, VethError};
pub use workloads::{CrrResult, RrResult, StreamResult, Workload};

/// The paths `tcp` measures, in table order.
pub const PATHS: [PathKind; 4] = [
    PathKind::Kernel,
    PathKind::ForwardAll,
    PathKind::Podfence,
    PathKind::Nftables,
];

/// The port the policies allow (TCP and UDP) from the generator to the sink.
pub const ALLOWED_PORT: u16 = 5201;
/// A port the sink's policies allow to nobody.
pub const DENIED_PORT: u16 = 5202;

/// Names of the agent's threads (`comm`, at most 15 characters): workers,
/// the supervisor's thread, the control socket and the denial reporter.
pub const AGENT_THREADS: [&str; 3] = ["pf-worker", "pf-live-agent", "podfence-"];

/// How to run the benchmark.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// Namespaces of the synthetic cluster.
    pub namespaces: usize,
    /// Pods of the synthetic cluster.
    pub pods: usize,
    /// Synthetic policies (besides the two that allow the measured traffic).
    pub policies: usize,
    /// Paths, in round order (of [`PATHS`]).
    pub paths: Vec<PathKind>,
    /// Workloads, in the order run on each path.
    pub workloads: Vec<Workload>,
    /// MTUs, one testbed each.
    pub mtus: Vec<u32>,
    /// Length of each workload's run (iperf3 and sockperf: whole seconds,
    /// at least 1).
    pub duration: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Clients of the connection rate.
    pub crr_clients: usize,
    /// The idle agent's measuring window (zero: none).
    pub idle: Duration,
    /// Frames per pod veth socket (the agent's `--pod-frames`).
    pub pod_frames: u32,
    /// Progress lines on standard error.
    pub progress: bool,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The testbed.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// Setting up or removing a path.
    #[error(transparent)]
    Path(#[from] VethError),
    /// A tool (iperf3, sockperf) or a client.
    #[error("{0}")]
    Tool(String),
    /// Options or environment.
    #[error("{0}")]
    Other(String),
}

/// CPU time over one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSpan {
    /// Wall-clock seconds.
    pub wall: f64,
    /// CPU seconds the whole machine was busy (all cores).
    pub machine: f64,
    /// ... of them by the agent's threads.
    pub agent: f64,
    /// CPU seconds the hypervisor took away.
    pub stolen: f64,
}

/// Runs `f` and takes the CPU time it took.
pub(crate) fn timed<T>(f: impl FnOnce() -> Result<T, TcpError>) -> Result<(T, CpuSpan), TcpError> {
    let tps = ticks_per_second();
    let (c0, a0, t0) = (cpu_times(), threads_ticks(&AGENT_THREADS), Instant::now());
    let out = f()?;
    let (c1, a1, wall) = (
        cpu_times(),
        threads_ticks(&AGENT_THREADS),
        t0.elapsed().as_secs_f64(),
    );
    let span = CpuSpan {
        wall,
        machine: c1.busy.saturating_sub(c0.busy) as f64 / tps,
        agent: a1.saturating_sub(a0) as f64 / tps,
        stolen: c1.steal.saturating_sub(c0.steal) as f64 / tps,
    };
    Ok((out, span))
}

/// What one workload measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A stream (iperf3).
    Stream(StreamResult),
    /// Request/response (sockperf).
    Rr(RrResult),
    /// Connection rate.
    Crr(CrrResult),
}

/// One workload on one path in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// The workload.
    pub workload: Workload,
    /// What it measured.
    pub outcome: Outcome,
    /// CPU time over the client's run.
    pub cpu: CpuSpan,
}

impl Measurement {
    /// Bytes that arrived (streams), or 0.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        match &self.outcome {
            Outcome::Stream(s) => s.bytes_received,
            _ => 0,
        }
    }

    /// Transactions completed (request/response, connection rate), or 0.
    #[must_use]
    pub fn transactions(&self) -> u64 {
        match &self.outcome {
            Outcome::Rr(r) => r.transactions,
            Outcome::Crr(c) => c.transactions,
            Outcome::Stream(_) => 0,
        }
    }
}

/// One path in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseRound {
    /// Round number (from 0).
    pub round: usize,
    /// Whether a connection to the denied port completed.
    pub denied_reached: bool,
    /// The agent's CPU over the idle window, in cores (podfence paths).
    pub idle_agent_cores: Option<f64>,
    /// The workloads, in the order run.
    pub runs: Vec<Measurement>,
}

/// One path at one MTU over all rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseResult {
    /// The MTU.
    pub mtu: u32,
    /// The path.
    pub path: PathKind,
    /// Its rounds.
    pub rounds: Vec<CaseRound>,
}

/// The benchmark's results.
#[derive(Clone, Debug)]
pub struct TcpReport {
    /// The options it ran with.
    pub options: TcpOptions,
    /// Per MTU, then per path in the order of the options.
    pub results: Vec<CaseResult>,
    /// Load average (1 minute) before and after.
    pub load: (f64, f64),
    /// CPUs of the machine.
    pub cpus: usize,
}

/// One MTU's testbed and what its rounds share.
struct Bench<'a> {
    options: &'a TcpOptions,
    mtu: u32,
    cluster: &'a BenchCluster,
    tables: &'a podfence_datapath::Tables,
    bed: Testbed,
    gen_netns: String,
    sink_netns: String,
    installs: u32,
}

impl Bench<'_> {
    fn agent_options(&self) -> AgentOptions {
        AgentOptions {
            node_name: Some(BENCH_NODE.into()),
            workers: 1,
            mtu: self.mtu,
            pod_frames: self.options.pod_frames,
            ..AgentOptions::default()
        }
    }

    fn sink(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.cluster.sink_ip), port)
    }

    fn workload(&self, w: Workload) -> Result<Measurement, TcpError> {
        let (gen_ns, sink_ns) = (self.gen_netns.as_str(), self.sink_netns.as_str());
        let d = self.options.duration;
        let sink = self.sink(ALLOWED_PORT);
        let (outcome, cpu) = match w {
            Workload::Stream1 | Workload::Stream4 | Workload::Udp => {
                let (r, cpu) = workloads::iperf3(gen_ns, sink_ns, sink, w, d)?;
                (Outcome::Stream(r), cpu)
            }
            Workload::Rr => {
                let (r, cpu) = workloads::sockperf(gen_ns, sink_ns, sink, d)?;
                (Outcome::Rr(r), cpu)
            }
            Workload::Crr => {
                let clients = self.options.crr_clients;
                let (r, cpu) = workloads::crr(gen_ns, sink_ns, sink, clients, d)?;
                (Outcome::Crr(r), cpu)
            }
        };
        Ok(Measurement {
            workload: w,
            outcome,
            cpu,
        })
    }

    fn case_round(&mut self, path: PathKind, round: usize) -> Result<CaseRound, TcpError> {
        self.installs += 1;
        let node = self.bed.node_netns().to_owned();
        let (active, _) = enforcer::start(
            path,
            &node,
            self.cluster,
            self.tables,
            self.agent_options(),
            self.installs,
            || Ok(()),
        )?;
        let result = (|| -> Result<CaseRound, TcpError> {
            let idle_agent_cores = match active.agent() {
                Some(_) if !self.options.idle.is_zero() => {
                    // Let the start settle (first publish, links up).
                    std::thread::sleep(Duration::from_millis(500));
                    let ((), span) = timed(|| {
                        std::thread::sleep(self.options.idle);
                        Ok(())
                    })?;
                    Some(span.agent / span.wall.max(1e-9))
                }
                _ => None,
            };
            let denied_reached = workloads::reaches(
                &self.gen_netns,
                &self.sink_netns,
                self.sink(DENIED_PORT),
                Duration::from_millis(500),
            )?;
            let mut runs = Vec::new();
            for &w in &self.options.workloads {
                // A tool that fails once (a server slow to go, say) gets a
                // second try, said on standard error, rather than ending
                // a run of several minutes.
                let m = match self.workload(w) {
                    Err(TcpError::Tool(e)) => {
                        eprintln!("tcp: {} {}: {e}; once more", path.name(), w.name());
                        self.workload(w)?
                    }
                    other => other?,
                };
                if self.options.progress {
                    progress(self.mtu, path, round, self.options.rounds, &m);
                }
                runs.push(m);
            }
            Ok(CaseRound {
                round,
                denied_reached,
                idle_agent_cores,
                runs,
            })
        })();
        let stopped = active.stop();
        let result = result?;
        stopped?;
        Ok(result)
    }
}

/// One line on standard error per workload.
fn progress(mtu: u32, path: PathKind, round: usize, rounds: usize, m: &Measurement) {
    let what = match &m.outcome {
        Outcome::Stream(s) => format!(
            "{:.2} Gbit/s{}",
            s.gbps(),
            s.udp_packets.map_or(String::new(), |(p, lost)| format!(
                " (lost {:.1}%)",
                100.0 * lost as f64 / p.max(1) as f64
            ))
        ),
        Outcome::Rr(r) => format!(
            "p50 {:.1} us, p99 {:.1} us, {:.0}/s",
            r.p50_us,
            r.p99_us,
            r.per_second()
        ),
        Outcome::Crr(c) => format!(
            "{:.0} connections/s ({} failed)",
            c.per_second(),
            c.failures
        ),
    };
    eprintln!(
        "tcp: mtu {mtu} round {}/{} {:<11} {:<7} {what}; CPU {:.2} s (agent {:.2} s)",
        round + 1,
        rounds.max(1),
        path.name(),
        m.workload.name(),
        m.cpu.machine,
        m.cpu.agent,
    );
}

/// The tools `options` need (iperf3, sockperf, nft) that are not installed.
#[must_use]
pub fn missing_tools(options: &TcpOptions) -> Vec<&'static str> {
    let mut tools = Vec::new();
    if options.workloads.iter().any(|w| w.streams()) {
        tools.push("iperf3");
    }
    if options.workloads.contains(&Workload::Rr) {
        tools.push("sockperf");
    }
    if options.paths.iter().any(|p| p.needs_nft()) {
        tools.push("nft");
    }
    tools.retain(|tool| {
        !std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    tools
}

/// Checks the options and that the tools are there.
fn check(options: &TcpOptions) -> Result<(), TcpError> {
    if let Some(p) = options.paths.iter().find(|p| !PATHS.contains(p)) {
        return Err(TcpError::Other(format!(
            "path {} is not one of tcp's ({})",
            p.name(),
            PATHS.map(PathKind::name).join(", ")
        )));
    }
    if options.paths.is_empty() || options.workloads.is_empty() || options.mtus.is_empty() {
        return Err(TcpError::Other("nothing to measure".into()));
    }
    if let Some(tool) = missing_tools(options).first() {
        return Err(TcpError::Other(format!(
            "{tool} is not installed (scripts/install-deps installs it)"
        )));
    }
    Ok(())
}

/// Runs the benchmark (root). Everything it makes is removed when it
/// returns, also on error.
pub fn run(options: &TcpOptions) -> Result<TcpReport, TcpError> {
    check(options)?;
    let load_before = cpu::load_average();
    let cluster = bench_cluster(
        Shape {
            namespaces: options.namespaces,
            pods: options.pods,
            policies: options.policies,
            cluster_policies: 0,
        },
        ALLOWED_PORT,
        DENIED_PORT,
    );
    let tables = compile(
        &cluster.full,
        &CompileOptions {
            locality: Locality::Node(BENCH_NODE.into()),
            ..CompileOptions::default()
        },
    )
    .tables;
    let mut results = Vec::new();
    for &mtu in &options.mtus {
        let bed = Testbed::build(
            &cluster.local,
            &TestbedOptions {
                mtu: Some(mtu),
                own_ports: vec![ALLOWED_PORT, DENIED_PORT],
                ..TestbedOptions::default()
            },
        )?;
        let pod = |key: &str| {
            bed.pods()
                .get(key)
                .map(|p| p.netns.clone())
                .ok_or_else(|| TcpError::Other(format!("the testbed has no pod {key}")))
        };
        let (gen_netns, sink_netns) = (pod(&cluster.generator)?, pod(&cluster.sink)?);
        // The connection rate's clients close first: their ports linger
        // in TIME_WAIT, so they reuse those (as busy clients are set up to)
        // from the whole port range.
        testbed::sysctl(
            &gen_netns,
            &[
                ("net.ipv4.tcp_tw_reuse", "1"),
                ("net.ipv4.ip_local_port_range", "1024 65535"),
            ],
        )?;
        let mut bench = Bench {
            options,
            mtu,
            cluster: &cluster,
            tables: &tables,
            bed,
            gen_netns,
            sink_netns,
            installs: 0,
        };
        let mut cases: Vec<CaseResult> = options
            .paths
            .iter()
            .map(|&path| CaseResult {
                mtu,
                path,
                rounds: Vec::new(),
            })
            .collect();
        for round in 0..options.rounds.max(1) {
            let mut order: Vec<usize> = (0..options.paths.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let r = bench.case_round(options.paths[i], round)?;
                cases[i].rounds.push(r);
            }
        }
        results.extend(cases);
    }
    Ok(TcpReport {
        options: options.clone(),
        results,
        load: (load_before, cpu::load_average()),
        cpus: cpu::cpus(),
    })
}
