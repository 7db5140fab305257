//! `podfence-bench veth`: packet rate and latency from a generator pod to a
//! sink pod on a testbed node (network namespaces and veths), through
//! podfence and its alternatives, in alternating rounds.
//!
//! Paths ([`PathKind`]):
//!
//! - `direct`: the generator straight into the sink over a veth pair of
//!   their own: the ceiling of the generator and the sink themselves;
//! - `podfence`: the agent enforcing the benchmark cluster's policies
//!   (AF_XDP on both pod veths, one worker per queue);
//! - `forward-all`: the agent with no policy at all (everything allowed):
//!   the AF_XDP path's own cost;
//! - `kernel`: podfence stopped, the node forwarding between the pod
//!   veths by its routes, no filter;
//! - `nftables`: the kernel forwarding with the same policies as nftables
//!   rules with conntrack (see [`crate::nft`]), each flow classified once;
//! - `nftables-est`: the same rules, accepting only conntrack's
//!   `established` (one-way flows walk the rules on every packet);
//! - `podfence-svc`: as `podfence`, but the generator sends to the sink's
//!   ClusterIP Service ([`cluster::SERVICE_IP`]), and podfence translates
//!   every packet to the sink (kube-proxy's rules are in the node
//!   namespace, as on a real node, and see none of this traffic);
//! - `kube-proxy`: podfence stopped, the kernel translating with
//!   kube-proxy's nftables rules for that Service ([`crate::kube_proxy`])
//!   and enforcing the `nftables` path's rules.
//!
//! The sink receives the same frames on every path: after translation, they
//! are addressed to the sink's address and the allowed or denied port.
//!
//! Every round measures every case once, in the order given and reversed
//! in the next round (A B C, C B A, ...), so that drift of the machine
//! (frequency, other tenants) hits every path alike. Per case and round:
//! a warm-up, then the throughput run (generator flat out: the rate the
//! path handles, i.e. packets delivered plus packets dropped by policy),
//! then optionally the no-loss check (paced at a fraction of that rate:
//! nothing may be lost there) and the latency run (paced at one fixed rate
//! for every path, so latencies compare).

pub mod cluster;
pub mod enforcer;
pub mod markdown;
pub mod report;

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use podfence_control::agent::AgentOptions;
use podfence_control::compile::{CompileOptions, Locality, compile};
use podfence_datapath::Tables;

use crate::cpu::{cpu_times, cpus, load_average};
use crate::live::LiveError;
use crate::nft;
use crate::synthetic::Shape;
use crate::testbed::{self, Testbed, TestbedError, TestbedOptions};
use crate::traffic::frames::TrafficSpec;
use crate::traffic::generator::{GenReport, GeneratorConfig, Pace};
use crate::traffic::sink::{Sink, SinkConfig, SinkReport};
use crate::traffic::{self, TrafficError};
use cluster::{BENCH_NODE, BenchCluster, bench_cluster};
use enforcer::{Active, host_pair};

/// Name of the veth pair between the generator and the sink pod.
pub const DIRECT_LINK: &str = "direct0";

/// A way from the generator to the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// Generator straight into the sink.
    Direct,
    /// podfence enforcing the policies.
    Podfence,
    /// podfence with no policies.
    ForwardAll,
    /// Kernel routing, no filter.
    Kernel,
    /// Kernel routing, the policies as nftables rules, verdict cached per flow.
    Nftables,
    /// Kernel routing, the policies as nftables rules, `established` only.
    NftablesEst,
    /// podfence enforcing the policies, the traffic sent to a ClusterIP.
    PodfenceSvc,
    /// Kernel routing, kube-proxy's rules translating the ClusterIP, the
    /// policies as nftables rules (as `Nftables`).
    KubeProxy,
}

impl PathKind {
    /// Every path, in table order.
    pub const ALL: [Self; 8] = [
        Self::Direct,
        Self::Podfence,
        Self::ForwardAll,
        Self::Kernel,
        Self::Nftables,
        Self::NftablesEst,
        Self::PodfenceSvc,
        Self::KubeProxy,
    ];

    /// Its name on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Podfence => "podfence",
            Self::ForwardAll => "forward-all",
            Self::Kernel => "kernel",
            Self::Nftables => "nftables",
            Self::NftablesEst => "nftables-est",
            Self::PodfenceSvc => "podfence-svc",
            Self::KubeProxy => "kube-proxy",
        }
    }

    /// The JSON key prefix (`forward_all`).
    #[must_use]
    pub fn key(self) -> String {
        self.name().replace('-', "_")
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the path enforces the policies (so the policy count matters).
    #[must_use]
    pub fn enforces(self) -> bool {
        matches!(
            self,
            Self::Podfence
                | Self::Nftables
                | Self::NftablesEst
                | Self::PodfenceSvc
                | Self::KubeProxy
        )
    }

    /// Whether the generator sends to the sink's ClusterIP.
    #[must_use]
    pub fn through_service(self) -> bool {
        matches!(self, Self::PodfenceSvc | Self::KubeProxy)
    }

    /// Whether the path needs `nft`.
    #[must_use]
    pub fn needs_nft(self) -> bool {
        matches!(
            self,
            Self::Nftables | Self::NftablesEst | Self::PodfenceSvc | Self::KubeProxy
        )
    }

    /// One line on what it is.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "generator straight into the sink over a veth pair (no forwarding)",
            Self::Podfence => "podfence enforcing the policies (AF_XDP)",
            Self::ForwardAll => "podfence with no policies (the AF_XDP forwarding alone)",
            Self::Kernel => "kernel routing between the pod veths, no filter",
            Self::Nftables => {
                "kernel routing, the policies as nftables rules with conntrack (verdict per flow)"
            }
            Self::NftablesEst => {
                "kernel routing, the policies as nftables rules, conntrack established only \
                 (one-way flows walk the rules per packet)"
            }
            Self::PodfenceSvc => {
                "podfence enforcing the policies, the traffic sent to a ClusterIP and translated \
                 by podfence (kube-proxy's rules present)"
            }
            Self::KubeProxy => {
                "kernel routing, kube-proxy's nftables rules translating the ClusterIP, the \
                 policies as nftables rules (as nftables)"
            }
        }
    }
}

/// One thing to measure: a path, at a policy count (for the paths that
/// enforce policies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Case {
    /// The path.
    pub path: PathKind,
    /// Synthetic policies (plus the two benchmark policies).
    pub policies: usize,
}

/// How to run the benchmark.
#[derive(Clone, Debug)]
pub struct VethOptions {
    /// Namespaces of the synthetic cluster.
    pub namespaces: usize,
    /// Pods of the synthetic cluster.
    pub pods: usize,
    /// The headline policy count (the flat JSON keys and the main table).
    pub policies: usize,
    /// The traffic (addresses and MACs are filled in from the testbed).
    pub spec: TrafficSpec,
    /// What to measure, in round order.
    pub cases: Vec<Case>,
    /// Rounds.
    pub rounds: usize,
    /// Throughput run.
    pub throughput: Duration,
    /// No-loss and latency runs.
    pub check: Duration,
    /// Warm-up before each case.
    pub warmup: Duration,
    /// Rate of the latency run, packets per second (`None`: no latency run).
    pub latency_rate: Option<f64>,
    /// The no-loss check's rate as a fraction of the measured rate (`None`:
    /// no check).
    pub no_loss_fraction: Option<f64>,
    /// Queues per veth, generator threads and podfence workers.
    pub queues: u32,
    /// Cores for the generator threads.
    pub gen_cores: Vec<usize>,
    /// Core for the sink.
    pub sink_core: Option<usize>,
    /// Steer the kernel's receive processing of the generator's host veth
    /// to this core (RPS), so that kernel forwarding runs on a core of its
    /// own as podfence's worker does (`None`: where the generator sends).
    pub rps_core: Option<usize>,
    /// Progress lines on standard error.
    pub progress: bool,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// The testbed.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// The generator or the sink.
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] LiveError),
    /// nftables or something else.
    #[error("{0}")]
    Other(String),
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Run {
    /// Packets per second asked for (`None`: flat out).
    pub pace: Option<f64>,
    /// Packets sent.
    pub sent: u64,
    /// Sending time, seconds.
    pub seconds: f64,
    /// Average wire size of the packets sent, bytes (FCS included).
    pub avg_wire: f64,
    /// Packets the sink received.
    pub received: u64,
    /// ... of them on denied flows.
    pub received_denied: u64,
    /// Packets the path dropped by policy (its own counters).
    pub policy_dropped: u64,
    /// Packets that arrived out of order.
    pub reordered: u64,
    /// One-way latency, nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// CPUs busy on average during the run (of all the machine's).
    pub cpus_busy: f64,
    /// CPUs other processes kept busy in user space during the run (a
    /// disturbed measurement when above a few hundredths).
    pub cpus_foreign: f64,
    /// CPUs the hypervisor took away (steal time).
    pub cpus_stolen: f64,
    /// The sink's socket dropped packets because its fill ring was empty.
    pub sink_fill_empty: u64,
    /// Generator rounds that found the tx ring full or no free frame.
    pub gen_stalls: u64,
    /// Frames the veth into the datapath dropped on receive (its NAPI
    /// ring full, or XDP dropped them): lost before podfence, the
    /// kernel or nftables saw them (`ethtool -S`, `rx_queue_*_drops` and
    /// `rx_queue_*_xdp_drops`).
    pub veth_dropped_in: u64,
    /// Frames the sink's veth dropped on receive, likewise.
    pub veth_dropped_out: u64,
}

impl Run {
    /// Packets delivered or dropped by policy.
    #[must_use]
    pub fn handled(&self) -> u64 {
        self.received + self.policy_dropped
    }

    /// Packets neither delivered nor dropped by policy.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.handled())
    }

    /// Lost share of the packets sent.
    #[must_use]
    pub fn loss(&self) -> f64 {
        self.lost() as f64 / self.sent.max(1) as f64
    }

    /// Handled packets per second, in millions.
    #[must_use]
    pub fn mpps(&self) -> f64 {
        self.handled() as f64 / self.seconds.max(1e-9) / 1e6
    }

    /// Sent packets per second, in millions.
    #[must_use]
    pub fn offered_mpps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9) / 1e6
    }

    /// Handled bits per second on the wire (FCS included), in billions.
    #[must_use]
    pub fn gbps(&self) -> f64 {
        self.mpps() * self.avg_wire * 8.0 / 1e3
    }

    fn new(
        pace: Option<f64>,
        sent: &GenReport,
        rx: &SinkReport,
        dropped: u64,
        denied_flows: &[u32],
    ) -> Self {
        Self {
            pace,
            sent: sent.sent,
            seconds: sent.elapsed.as_secs_f64(),
            avg_wire: sent.wire_bytes as f64 / sent.sent.max(1) as f64,
            received: rx.received,
            received_denied: denied_flows
                .iter()
                .map(|&f| rx.per_flow.get(f as usize).copied().unwrap_or(0))
                .sum(),
            policy_dropped: dropped,
            reordered: rx.reordered,
            latency_ns: rx.latency_ns.clone(),
            cpus_busy: 0.0,
            cpus_foreign: 0.0,
            cpus_stolen: 0.0,
            sink_fill_empty: rx.xsk.rx_fill_ring_empty_descs,
            gen_stalls: sent.stalls,
            veth_dropped_in: 0,
            veth_dropped_out: 0,
        }
    }
}

/// One case in one round.
#[derive(Clone, Debug)]
pub struct CaseRound {
    /// Round number (from 0).
    pub round: usize,
    /// Flat out.
    pub throughput: Run,
    /// At a fraction of the throughput.
    pub no_loss: Option<Run>,
    /// At the fixed latency rate.
    pub latency: Option<Run>,
}

/// What a case measured over all rounds.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// Its rounds.
    pub rounds: Vec<CaseRound>,
    /// For nftables: the ruleset's shape.
    pub ruleset: Option<RulesetShape>,
}

/// The size of a generated nftables ruleset.
#[derive(Clone, Debug, Default)]
pub struct RulesetShape {
    /// Rules per chain.
    pub chains: Vec<(String, usize)>,
    /// Named sets.
    pub sets: usize,
    /// Set elements.
    pub elements: usize,
    /// Where the generator's rule sits: chain, position, rules in it.
    pub deep: Vec<(String, usize, usize)>,
}

/// The benchmark's results.
#[derive(Clone, Debug)]
pub struct VethReport {
    /// The options it ran with.
    pub options: VethOptions,
    /// The traffic, as sent (pod addresses).
    pub spec: TrafficSpec,
    /// Per case, in the order of the options.
    pub results: Vec<CaseResult>,
    /// Whether the sink's sockets were bound in zero-copy mode.
    pub zero_copy: bool,
    /// The generator's `sendto` budget was raised (kernel 6.17+).
    pub budget_raised: bool,
    /// Load average (1 minute) before and after.
    pub load: (f64, f64),
}

/// Everything the rounds share.
struct Bench<'a> {
    options: &'a VethOptions,
    bed: Testbed,
    gen_netns: String,
    sink_netns: String,
    /// The generator pod's veth on the node, where the datapath's XDP
    /// program (or the kernel) receives its frames.
    gen_host_veth: String,
    clusters: BTreeMap<usize, BenchCluster>,
    tables: BTreeMap<usize, Tables>,
    routed: TrafficSpec,
    direct: TrafficSpec,
    /// The generator's frames to the sink's ClusterIP and Service ports.
    to_service: TrafficSpec,
    denied_flows: Vec<u32>,
    installs: u32,
    budget_raised: bool,
}

impl Bench<'_> {
    fn agent_options(&self) -> AgentOptions {
        AgentOptions {
            node_name: Some(BENCH_NODE.into()),
            workers: self.options.queues.max(1) as usize,
            ..AgentOptions::default()
        }
    }

    fn setup(&mut self, case: Case) -> Result<(Active, Option<RulesetShape>), VethError> {
        self.installs += 1;
        let c = &self.clusters[&case.policies];
        let node = self.bed.node_netns().to_owned();
        let queues = self.options.queues.max(1);
        enforcer::start(
            case.path,
            &node,
            c,
            &self.tables[&case.policies],
            self.agent_options(),
            self.installs,
            || host_pair(&node, queues),
        )
    }

    fn send(&mut self, case: Case, pace: Pace, duration: Duration) -> Result<GenReport, VethError> {
        let (iface, spec) = if case.path == PathKind::Direct {
            (DIRECT_LINK, &self.direct)
        } else if case.path.through_service() {
            ("eth0", &self.to_service)
        } else {
            ("eth0", &self.routed)
        };
        let r = traffic::generate(
            Some(&self.gen_netns),
            &GeneratorConfig::new(iface),
            self.options.queues,
            spec,
            pace,
            duration,
            &self.options.gen_cores,
        )?;
        self.budget_raised = r.budget_raised;
        Ok(r)
    }

    fn measure(
        &mut self,
        case: Case,
        active: &Active,
        sink: &Sink,
        pace: Pace,
        duration: Duration,
    ) -> Result<Run, VethError> {
        sink.reset();
        let before = active.policy_dropped()?;
        let veth_before = self.veth_drops(case);
        let cpu0 = cpu_times();
        let sent = self.send(case, pace, duration)?;
        let cpu1 = cpu_times();
        let rx = sink.settle(Duration::from_millis(20), Duration::from_secs(2))?;
        let dropped = active.policy_dropped()? - before;
        let veth_after = self.veth_drops(case);
        let mut run = Run::new(
            match pace {
                Pace::Max => None,
                Pace::Rate(r) => Some(r),
            },
            &sent,
            &rx,
            dropped,
            &self.denied_flows,
        );
        let total = (cpu1.total - cpu0.total).max(1) as f64;
        let share = |d: u64| d as f64 / total * cpus() as f64;
        run.cpus_busy = share(cpu1.busy - cpu0.busy);
        run.cpus_foreign =
            share((cpu1.user - cpu0.user).saturating_sub(cpu1.own_user - cpu0.own_user));
        run.cpus_stolen = share(cpu1.steal - cpu0.steal);
        run.veth_dropped_in = veth_after.0.saturating_sub(veth_before.0);
        run.veth_dropped_out = veth_after.1.saturating_sub(veth_before.1);
        Ok(run)
    }

    /// Receive drops so far of the veth into the path and of the sink's.
    fn veth_drops(&self, case: Case) -> (u64, u64) {
        if case.path == PathKind::Direct {
            return (0, veth_rx_drops(&self.sink_netns, DIRECT_LINK));
        }
        (
            veth_rx_drops(self.bed.node_netns(), &self.gen_host_veth),
            veth_rx_drops(&self.sink_netns, "eth0"),
        )
    }

    fn case_round(
        &mut self,
        case: Case,
        round: usize,
        sink: &Sink,
    ) -> Result<(CaseRound, Option<RulesetShape>), VethError> {
        let (active, shape) = self.setup(case)?;
        let result = (|| -> Result<CaseRound, VethError> {
            // Warm-up: caches, conntrack entries, page faults.
            self.send(case, Pace::Max, self.options.warmup)?;
            sink.settle(Duration::from_millis(20), Duration::from_secs(2))?;
            let throughput =
                self.measure(case, &active, sink, Pace::Max, self.options.throughput)?;
            let no_loss = match self.options.no_loss_fraction {
                Some(f) if throughput.handled() > 0 => {
                    let rate = f * throughput.offered_mpps().min(throughput.mpps()) * 1e6;
                    Some(self.measure(case, &active, sink, Pace::Rate(rate), self.options.check)?)
                }
                _ => None,
            };
            let latency = match self.options.latency_rate {
                Some(rate) => {
                    Some(self.measure(case, &active, sink, Pace::Rate(rate), self.options.check)?)
                }
                None => None,
            };
            Ok(CaseRound {
                round,
                throughput,
                no_loss,
                latency,
            })
        })();
        let stopped = active.stop();
        let result = result?;
        stopped?;
        Ok((result, shape))
    }

    /// Every case in every round, the order reversed every other round.
    fn rounds(&mut self, sink: &Sink) -> Result<Vec<CaseResult>, VethError> {
        let mut results: Vec<CaseResult> = self
            .options
            .cases
            .iter()
            .map(|&case| CaseResult {
                case,
                rounds: Vec::new(),
                ruleset: None,
            })
            .collect();
        for round in 0..self.options.rounds.max(1) {
            let mut order: Vec<usize> = (0..self.options.cases.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let case = self.options.cases[i];
                let (r, shape) = self.case_round(case, round, sink)?;
                if self.options.progress {
                    progress(self.options, case, round, &r);
                }
                results[i].rounds.push(r);
                if shape.is_some() {
                    results[i].ruleset = shape;
                }
            }
        }
        Ok(results)
    }
}

/// The veth pair of the `direct` path, straight from the generator's
/// namespace into the sink's.
fn direct_link(gen_netns: &str, sink_netns: &str, queues: u32) -> Result<(), VethError> {
    testbed::add_veth_pair(
        gen_netns,
        DIRECT_LINK,
        DIRECT_LINK,
        Some(sink_netns),
        queues,
    )?;
    testbed::ip(gen_netns, &["link", "set", DIRECT_LINK, "up"])?;
    testbed::ip(sink_netns, &["link", "set", DIRECT_LINK, "up"])?;
    Ok(())
}

/// Frames veth `link` in `netns` dropped on receive, over its queues: its
/// NAPI ring was full (`rx_queue_N_drops`) or its XDP program dropped them
/// (`rx_queue_N_xdp_drops`). 0 when `ethtool` cannot tell.
fn veth_rx_drops(netns: &str, link: &str) -> u64 {
    let Ok(out) = testbed::run(&["ip", "netns", "exec", netns, "ethtool", "-S", link]) else {
        return 0;
    };
    out.lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rx_queue_") && (k.ends_with("_drops")))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Sets the RPS CPU mask of every receive queue of `link` in `netns` to
/// `core` (through `ip netns exec`, which mounts the namespace's /sys).
fn rps(netns: &str, link: &str, queues: u32, core: usize) -> Result<(), VethError> {
    let core = core % cpus();
    for q in 0..queues.max(1) {
        let path = format!("/sys/class/net/{link}/queues/rx-{q}/rps_cpus");
        let mask = format!("{:x}", 1u64 << core);
        testbed::run(&[
            "ip",
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            &format!("echo {mask} > {path}"),
        ])?;
    }
    Ok(())
}

/// The benchmark cluster and its compiled tables at every policy count.
fn clusters(options: &VethOptions) -> (BTreeMap<usize, BenchCluster>, BTreeMap<usize, Tables>) {
    let mut clusters = BTreeMap::new();
    let mut tables = BTreeMap::new();
    for case in &options.cases {
        if clusters.contains_key(&case.policies) {
            continue;
        }
        let c = bench_cluster(
            Shape {
                namespaces: options.namespaces,
                pods: options.pods,
                policies: case.policies,
                cluster_policies: 0,
            },
            options.spec.allowed_port,
            options.spec.denied_port,
        );
        let t = compile(
            &c.full,
            &CompileOptions {
                locality: Locality::Node(BENCH_NODE.into()),
                ..CompileOptions::default()
            },
        )
        .tables;
        tables.insert(case.policies, t);
        clusters.insert(case.policies, c);
    }
    (clusters, tables)
}

/// One line on standard error per case and round.
fn progress(options: &VethOptions, case: Case, round: usize, r: &CaseRound) {
    eprintln!(
        "veth: round {}/{} {:<12} {:>6} policies: {:.3} Mpps ({:.3} offered), loss {:.2}%{}{}{}",
        round + 1,
        options.rounds.max(1),
        case.path.name(),
        case.policies,
        r.throughput.mpps(),
        r.throughput.offered_mpps(),
        100.0 * r.throughput.loss(),
        r.no_loss.as_ref().map_or(String::new(), |n| format!(
            "; at {:.3} Mpps loss {:.3}%",
            n.offered_mpps(),
            100.0 * n.loss()
        )),
        r.latency.as_ref().map_or(String::new(), |l| format!(
            "; latency p50 {:.1} us p99 {:.1} us",
            l.latency_ns.value_at_quantile(0.5) as f64 / 1e3,
            l.latency_ns.value_at_quantile(0.99) as f64 / 1e3
        )),
        if r.throughput.cpus_foreign > 0.05 {
            format!(
                " [disturbed: other processes used {:.2} CPUs]",
                r.throughput.cpus_foreign
            )
        } else {
            String::new()
        },
    );
}

/// Runs the benchmark (root). Everything it makes is removed when it
/// returns, also on error.
pub fn run(options: &VethOptions) -> Result<VethReport, VethError> {
    let load_before = load_average();
    if options.cases.iter().any(|c| c.path.needs_nft()) && !nft::available() {
        return Err(VethError::Other(
            "nft is not installed (`apt-get install nftables`, or scripts/install-deps)".into(),
        ));
    }
    let (clusters, tables) = clusters(options);
    let first = clusters
        .values()
        .next()
        .ok_or_else(|| VethError::Other("nothing to measure".into()))?
        .clone();
    let queues = options.queues.max(1);
    let bed = Testbed::build_with_queues(&first.local, &TestbedOptions::default(), queues)?;
    let pod = |key: &str| {
        bed.pods()
            .get(key)
            .cloned()
            .ok_or_else(|| VethError::Other(format!("the testbed has no pod {key}")))
    };
    let (gen_pod, sink_pod) = (pod(&first.generator)?, pod(&first.sink)?);
    if options.cases.iter().any(|c| c.path == PathKind::Direct) {
        direct_link(&gen_pod.netns, &sink_pod.netns, queues)?;
    }
    if let Some(core) = options.rps_core {
        rps(bed.node_netns(), &gen_pod.host_veth, queues, core)?;
    }
    let mut routed = options.spec.clone();
    routed.src = first.generator_ip;
    routed.dst = first.sink_ip;
    routed.src_mac = traffic::link_mac(&gen_pod.netns, "eth0")?;
    routed.dst_mac = traffic::link_mac(bed.node_netns(), &gen_pod.host_veth)?;
    let mut direct = routed.clone();
    let mut ifaces = vec!["eth0".to_owned()];
    if options.cases.iter().any(|c| c.path == PathKind::Direct) {
        direct.src_mac = traffic::link_mac(&gen_pod.netns, DIRECT_LINK)?;
        direct.dst_mac = traffic::link_mac(&sink_pod.netns, DIRECT_LINK)?;
        ifaces.push(DIRECT_LINK.to_owned());
    }
    let mut to_service = routed.clone();
    to_service.dst = first.service_ip;
    to_service.allowed_port = cluster::SERVICE_ALLOWED_PORT;
    to_service.denied_port = cluster::SERVICE_DENIED_PORT;
    let denied_flows = routed
        .flows()
        .iter()
        .filter(|f| f.denied)
        .map(|f| f.index)
        .collect();
    let sink = Sink::start(
        Some(&sink_pod.netns),
        SinkConfig {
            ifaces,
            queues,
            xdp_mode: podfence_bpf::XdpMode::Native,
            zero_copy: None,
            core: options.sink_core,
            spec: routed.clone(),
        },
    )?;
    let zero_copy = sink.zero_copy();
    let mut bench = Bench {
        options,
        gen_netns: gen_pod.netns.clone(),
        sink_netns: sink_pod.netns.clone(),
        gen_host_veth: gen_pod.host_veth.clone(),
        bed,
        clusters,
        tables,
        routed,
        direct,
        to_service,
        denied_flows,
        installs: 0,
        budget_raised: false,
    };
    let results = bench.rounds(&sink)?;
    sink.stop()?;
    let budget_raised = bench.budget_raised;
    let spec = bench.routed.clone();
    drop(bench);
    Ok(VethReport {
        options: options.clone(),
        spec,
        results,
        zero_copy,
        budget_raised,
        load: (load_before, load_average()),
    })
}
