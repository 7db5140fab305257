//! `podfence-bench`: benchmark scenarios with reproducible inputs.
//!
//! `compile` builds policy tables for synthetic clusters and measures compile
//! time, memory and the cost of classifying a new connection.

#![allow(
    clippy::cast_precision_loss,
    reason = "report figures (counts, nanoseconds, bytes) stay far below 2^52"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use podfence_bench::alloc::CountingAllocator;
use podfence_bench::pod_start;
use podfence_bench::synthetic::{self, Shape};
use podfence_control::compile::{CompileOptions, Compiler, compile};
use podfence_control::model::{ClusterNetworkPolicy, Namespace, NetworkPolicy, Pod};
use serde_json::json;

mod lifecycle_cmd;
mod matrix_cmd;
mod replay_cmd;
mod tcp_cmd;
mod traffic_cmd;
mod veth_cmd;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

#[derive(Parser, Debug)]
#[command(name = "podfence-bench", version, about = "podfence benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile synthetic clusters and classify new connections against them.
    ///
    /// Without --pods, runs 10,000 pods / 1,000 policies in 100 namespaces
    /// and 100,000 pods / 10,000 policies in 1,000 namespaces. With
    /// --cluster-policies, every size also has that many
    /// ClusterNetworkPolicies, and their edits are timed among the changes.
    Compile {
        /// Pods (with --namespaces and --policies: one custom size).
        #[arg(long, requires_all = ["namespaces", "policies"])]
        pods: Option<usize>,
        /// Namespaces.
        #[arg(long)]
        namespaces: Option<usize>,
        /// Policies.
        #[arg(long)]
        policies: Option<usize>,
        /// ClusterNetworkPolicies (Admin and Baseline tiers) at every size.
        #[arg(long, default_value_t = 0)]
        cluster_policies: usize,
        /// Compile runs per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Connection attempts classified per size.
        #[arg(long, default_value_t = 2_000_000)]
        attempts: usize,
        /// Print one JSON object per size instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The live reachability matrix (root): builds a testbed node in network
    /// namespaces for the cluster, runs the agent there with the manifests'
    /// policies, performs every probe as a real connection attempt and
    /// prints the observed verdicts in the format of `podfence probe`.
    ///
    /// A probe is allowed when its first packet got through (an answer, a
    /// TCP reset or ICMP port unreachable, an SCTP INIT seen at the
    /// destination). Differences from the policy verdict are listed on
    /// standard error, and make the exit status 1.
    Matrix(matrix_cmd::MatrixArgs),
    /// The AF_XDP traffic generator on its own (root): its rate into a veth
    /// whose peer drops every frame in XDP, and straight into the AF_XDP
    /// sink over a veth pair (loss, reordering, latency). Shows that the
    /// generator outruns what `veth` measures with it.
    Traffic(traffic_cmd::SelfCheckArgs),
    /// Packet rate and latency from a generator pod to a sink pod on a
    /// testbed node (root), in alternating rounds, through: podfence
    /// enforcing a synthetic policy set, podfence with no policies, the
    /// kernel's routing, and the kernel with the same policies as nftables
    /// rules with conntrack (and the generator straight into the sink).
    Veth(Box<veth_cmd::VethArgs>),
    /// TCP and UDP between two pods of a testbed node (root), as users
    /// measure a CNI: iperf3 streams (1 and 4 connections, UDP), sockperf
    /// request/response, and the connection rate, over the kernel, podfence
    /// with no policy, podfence with the policies and nftables with the
    /// same policies, in alternating rounds, at MTU 1500 and 9000; CPU
    /// seconds per GB and the goals of issue 16.
    Tcp(Box<tcp_cmd::TcpArgs>),
    /// Propagation latency through the test API server and the real kube
    /// client: the initial sync of a synthetic cluster, then single-object
    /// changes (pod label flips, policy edits, pod churn), each timed from
    /// the API write to its table generation being live.
    Propagation {
        #[command(flatten)]
        shape: ShapeArgs,
        /// Changes to time.
        #[arg(long, default_value_t = 400)]
        changes: usize,
        /// The source's debounce window.
        #[arg(long, default_value_t = 5)]
        debounce_ms: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// `podfence replay` against tcpdump and tshark on one large generated
    /// capture: the synthetic cluster's manifests and its traffic (whole
    /// connections, replies included) are written to a temporary directory,
    /// then `podfence replay`, `tcpdump -w /dev/null` (read only),
    /// `tcpdump -n` (decode and print) and `tshark -n` (on the first
    /// --tshark-packets) are timed in turns, --rounds times.
    ///
    /// Needs the podfence binary (`cargo build --release -p
    /// podfence-control`); a tool that is not installed gets a row that says
    /// so.
    Replay(replay_cmd::ReplayArgs),
    /// Issue 14's measures (root): pod start latency added by podfence-cni
    /// (ADD p50/p99 of pods started through Debian's ptp and host-local,
    /// so many at a time, with and without podfence-cni chained), and the
    /// gap an agent upgrade (`--on-stop keep`, then the next agent) leaves
    /// in an open connection while a denied pod knocks every 10 ms. Runs
    /// the real `podfence run` on manifests of a synthetic cluster.
    Lifecycle(lifecycle_cmd::LifecycleArgs),
    /// The worker pipeline on in-memory traces of 64-byte packets: parse
    /// only, established and new connections (to pod addresses, and through
    /// the cluster's ClusterIP Services), the curve over 1 to 10,000
    /// policies, the curve over ClusterNetworkPolicy counts (with the share
    /// of attempts a tier decides), two workers, batch latency, allocations
    /// per packet, and replay of a capture.
    Classify {
        #[command(flatten)]
        shape: ShapeArgs,
        /// Packets per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Share of the Service rows' connections sent to a Service's
        /// ClusterIP (the rest to pod addresses); 1: every packet of those
        /// rows is translated.
        #[arg(long, default_value_t = 1.0)]
        service_share: f64,
        /// ClusterNetworkPolicy counts of the tier curve (comma-separated),
        /// at --pods and --policies.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100, 1_000])]
        tier_curve: Vec<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The synthetic cluster's size (`synthetic::cluster`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct ShapeArgs {
    /// Pods of the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Policies.
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
}

impl ShapeArgs {
    pub(crate) fn shape(self) -> Shape {
        Shape {
            namespaces: self.namespaces,
            pods: self.pods,
            policies: self.policies,
            cluster_policies: 0,
        }
    }
}

/// Prints a subcommand's error and exits with status 1.
fn exit_on_error(command: &str, result: Result<(), String>) {
    if let Err(e) = result {
        eprintln!("podfence-bench {command}: error: {e}");
        std::process::exit(1);
    }
}

fn main() {
    match Cli::parse().command {
        Command::Propagation {
            shape,
            changes,
            debounce_ms,
            json,
        } => {
            log_to_stderr();
            match podfence_bench::propagation::run(
                shape.shape(),
                changes,
                Duration::from_millis(debounce_ms),
            ) {
                Ok(r) => print_propagation(&r, changes, json),
                Err(e) => {
                    eprintln!("podfence-bench propagation: error: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Veth(args) => exit_on_error("veth", veth_cmd::run(&args)),
        Command::Tcp(args) => exit_on_error("tcp", tcp_cmd::run(&args)),
        Command::Lifecycle(args) => exit_on_error("lifecycle", lifecycle_cmd::run(&args)),
        Command::Replay(args) => exit_on_error("replay", replay_cmd::run(&args)),
        Command::Traffic(args) => exit_on_error("traffic", traffic_cmd::run(&args)),
        Command::Matrix(args) => match matrix_cmd::run(&args) {
            Ok(true) => {}
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("podfence-bench matrix: error: {e}");
                std::process::exit(1);
            }
        },
        Command::Classify {
            shape,
            packets,
            service_share,
            tier_curve,
            json,
        } => bench_pipeline(
            shape.shape(),
            packets,
            service_share.clamp(0.0, 1.0),
            tier_curve,
            json,
        ),
        Command::Compile {
            pods,
            namespaces,
            policies,
            cluster_policies,
            runs,
            attempts,
            json,
        } => {
            let shapes = match (pods, namespaces, policies) {
                (Some(pods), Some(namespaces), Some(policies)) => vec![Shape {
                    namespaces,
                    pods,
                    policies,
                    cluster_policies,
                }],
                _ => vec![
                    Shape {
                        namespaces: 100,
                        pods: 10_000,
                        policies: 1_000,
                        cluster_policies,
                    },
                    Shape {
                        namespaces: 1_000,
                        pods: 100_000,
                        policies: 10_000,
                        cluster_policies,
                    },
                ],
            };
            for shape in shapes {
                bench_compile(shape, runs.max(1), attempts.max(1), json);
            }
        }
    }
}

/// Logs to standard error, warnings and up unless `RUST_LOG` says more.
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn print_propagation(r: &podfence_bench::propagation::Report, changes: usize, json: bool) {
    let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1e3;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if json {
        println!(
            "{}",
            json!({
                "pods": r.pods,
                "policies": r.policies,
                "changes": changes,
                "initial_sync_ms": r.initial_sync.as_secs_f64() * 1e3,
                "p50_ms": ms(0.5),
                "p90_ms": ms(0.9),
                "p99_ms": ms(0.99),
                "max_ms": r.latency_us.max() as f64 / 1e3,
                "rss_mib": mib(r.rss_delta_bytes),
                "process_rss_mib": mib(r.rss_bytes),
            })
        );
        return;
    }
    println!(
        "{} pods, {} policies, {changes} changes",
        r.pods, r.policies
    );
    println!(
        "initial sync        {:>9.1} ms",
        r.initial_sync.as_secs_f64() * 1e3
    );
    println!("change to live p50  {:>9.2} ms", ms(0.5));
    println!("               p90  {:>9.2} ms", ms(0.9));
    println!("               p99  {:>9.2} ms", ms(0.99));
    println!(
        "               max  {:>9.2} ms",
        r.latency_us.max() as f64 / 1e3
    );
    println!(
        "source memory       {:>9.1} MiB (RSS added by the sync; the process, with the test server: {:.1} MiB)",
        mib(r.rss_delta_bytes),
        mib(r.rss_bytes)
    );
}

/// Nanoseconds per classification over `tries` (after a warm-up pass), and
/// how many were allowed.
fn time_classify(tables: &podfence_datapath::Tables, tries: &[synthetic::Attempt]) -> (f64, usize) {
    if tries.is_empty() {
        return (0.0, 0);
    }
    let run = || {
        let mut allowed = 0usize;
        for a in tries {
            let v = tables.classify_v4(black_box(a.src), black_box(a.dst), a.protocol, a.port);
            allowed += usize::from(v.is_allowed());
        }
        black_box(allowed)
    };
    run();
    let start = Instant::now();
    let allowed = run();
    (
        start.elapsed().as_nanos() as f64 / tries.len() as f64,
        allowed,
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Medians, in ms, of compiling after a single-object change from scratch
/// and with a [`Compiler`] that compiled the state before; the two run in
/// alternating order on the same states. Changes cycle through a pod label
/// flip, a policy edit, a pod deleted and recreated, a namespace relabelled
/// and, when the cluster has ClusterNetworkPolicies, one of them edited (a
/// fifth change in addition to `changes`, timed on its own).
fn time_changes(
    mut cluster: podfence_control::index::Cluster,
    options: &CompileOptions,
    changes: usize,
) -> ChangeTimes {
    let mut compiler = Compiler::new(options.clone());
    let _ = compiler.compile(&cluster, 0);
    let pods: Vec<Pod> = cluster.pods.values().map(|p| Pod::clone(p)).collect();
    let policies: Vec<NetworkPolicy> = cluster
        .policies
        .values()
        .map(|p| NetworkPolicy::clone(p))
        .collect();
    let namespaces: Vec<Namespace> = cluster
        .namespaces
        .values()
        .map(|n| Namespace::clone(n))
        .collect();
    let cluster_policies: Vec<ClusterNetworkPolicy> = cluster
        .cluster_policies
        .values()
        .map(|p| ClusterNetworkPolicy::clone(p))
        .collect();
    let (kinds, total) = if cluster_policies.is_empty() {
        (4, changes)
    } else {
        (5, changes + changes.div_ceil(4))
    };
    let (mut scratch, mut incremental) = (Vec::new(), Vec::new());
    let (mut tier_scratch, mut tier_incremental) = (Vec::new(), Vec::new());
    for i in 0..total {
        let k = i.wrapping_mul(7919);
        let kind = i % kinds;
        match kind {
            0 => {
                let mut pod = pods[k % pods.len()].clone();
                pod.labels.insert("app".into(), format!("app-{}", i % 10));
                cluster.apply(pod);
            }
            1 => {
                let mut edited = policies[(k + 1) % policies.len()].clone();
                let at = &policies[k % policies.len()];
                edited.namespace.clone_from(&at.namespace);
                edited.name.clone_from(&at.name);
                cluster.apply(edited);
            }
            2 => {
                let pod = &pods[k % pods.len()];
                cluster.delete::<Pod>(&pod.key());
                let _ = compiler.compile(&cluster, i as u64);
                cluster.apply(pod.clone());
            }
            3 => {
                let mut ns = namespaces[k % namespaces.len()].clone();
                ns.labels
                    .insert("env".into(), ["prod", "dev"][i % 2].into());
                cluster.apply(ns);
            }
            _ => {
                // Another policy's tier, priority, subject and rules under
                // this one's name.
                let count = cluster_policies.len();
                let mut edited = cluster_policies[(k + 1) % count].clone();
                let at = &cluster_policies[k % count];
                edited.name.clone_from(&at.name);
                edited.api = at.api;
                cluster.apply(edited);
            }
        }
        let (scratch, incremental) = if kind == 4 {
            (&mut tier_scratch, &mut tier_incremental)
        } else {
            (&mut scratch, &mut incremental)
        };
        let time_scratch = || {
            let start = Instant::now();
            black_box(compile(&cluster, options));
            start.elapsed()
        };
        if i % 2 == 0 {
            scratch.push(time_scratch());
        }
        let start = Instant::now();
        black_box(compiler.compile(&cluster, i as u64));
        incremental.push(start.elapsed());
        if i % 2 == 1 {
            scratch.push(time_scratch());
        }
    }
    let ms = |v| median(v).as_secs_f64() * 1e3;
    let tier_ms = |v: Vec<Duration>| (!v.is_empty()).then(|| ms(v));
    ChangeTimes {
        scratch: ms(scratch),
        incremental: ms(incremental),
        tier_scratch: tier_ms(tier_scratch),
        tier_incremental: tier_ms(tier_incremental),
    }
}

/// Medians of [`time_changes`], in ms.
#[derive(Clone, Copy, Debug)]
struct ChangeTimes {
    /// After a change of another kind, compiled from scratch.
    scratch: f64,
    /// The same, incrementally.
    incremental: f64,
    /// After a ClusterNetworkPolicy edit, from scratch (none without them).
    tier_scratch: Option<f64>,
    /// The same, incrementally.
    tier_incremental: Option<f64>,
}

/// [`time_changes`] with every pod enforced, then for a node's agent (the
/// pods of one node of fifty).
fn change_times(
    cluster: podfence_control::index::Cluster,
    options: &CompileOptions,
    changes: usize,
) -> [ChangeTimes; 2] {
    let node_options = CompileOptions {
        locality: podfence_control::compile::Locality::Node("node-0".into()),
        ..options.clone()
    };
    let node = time_changes(cluster.clone(), &node_options, changes);
    let all = time_changes(cluster, options, changes);
    [all, node]
}

/// Nanoseconds per attempt for the two address lookups alone, to show what
/// the policy check adds to them.
fn time_address_lookups(tables: &podfence_datapath::Tables, tries: &[synthetic::Attempt]) -> f64 {
    let start = Instant::now();
    let mut identities = 0u64;
    for a in tries {
        let (s, d) = (
            tables.peer_v4(black_box(a.src)),
            tables.peer_v4(black_box(a.dst)),
        );
        identities += u64::from(s.identity.0 ^ d.identity.0);
    }
    black_box(identities);
    start.elapsed().as_nanos() as f64 / tries.len() as f64
}

/// `runs` compiles from scratch: the median time, the last one's peak and
/// retained bytes, and its tables.
fn time_compiles(
    cluster: &podfence_control::index::Cluster,
    options: &CompileOptions,
    runs: usize,
) -> (Duration, usize, usize, podfence_datapath::Tables) {
    let mut times = Vec::with_capacity(runs);
    let mut peak = 0;
    let mut retained = 0;
    let mut tables = None;
    for _ in 0..runs {
        drop(tables.take());
        let before = ALLOC.live_bytes();
        ALLOC.reset_peak();
        let start = Instant::now();
        let compiled = compile(cluster, options);
        times.push(start.elapsed());
        peak = ALLOC.peak_bytes() - before;
        retained = ALLOC.live_bytes() - before;
        tables = Some(compiled.tables);
    }
    let tables = tables.expect("at least one run");
    (median(times), peak, retained, tables)
}

fn bench_compile(shape: Shape, runs: usize, attempts: usize, json: bool) {
    let cluster = synthetic::cluster(shape);
    let options = CompileOptions::default();
    let (compile_time, peak, retained, tables) = time_compiles(&cluster, &options, runs);
    let pod_starts = pod_start::pod_start_times(cluster.clone(), 100);
    let [all_pods, node] = change_times(cluster, &options, runs.max(1) * 20);
    let (scratch_ms, incremental_ms) = (all_pods.scratch, all_pods.incremental);
    let (node_scratch_ms, node_incremental_ms) = (node.scratch, node.incremental);

    let tries = synthetic::attempts(shape, attempts, 42);
    let mut tier_decided = 0usize;
    let (allowed_tries, denied_tries): (Vec<_>, Vec<_>) = tries.iter().partition(|a| {
        let v = tables.classify_v4(a.src, a.dst, a.protocol, a.port);
        tier_decided += usize::from(synthetic::decided_by_tier(&v));
        v.is_allowed()
    });
    let allocs_before = ALLOC.allocations();
    let (ns_per, allowed) = time_classify(&tables, &tries);
    let classify_allocs = ALLOC.allocations() - allocs_before;
    let (allowed_ns, _) = time_classify(&tables, &allowed_tries);
    let (denied_ns, _) = time_classify(&tables, &denied_tries);
    let lookup_ns = time_address_lookups(&tables, &tries);
    let stats = tables.stats();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    if json {
        println!(
            "{}",
            json!({
                "namespaces": shape.namespaces,
                "pods": shape.pods,
                "policies": shape.policies,
                "cluster_policies": shape.cluster_policies,
                "compile_ms": compile_time.as_secs_f64() * 1e3,
                "compile_peak_mib": mib(peak),
                "change_scratch_ms": scratch_ms,
                "node_change_scratch_ms": node_scratch_ms,
                "node_change_incremental_ms": node_incremental_ms,
                "change_incremental_ms": incremental_ms,
                "cluster_policy_change_scratch_ms": all_pods.tier_scratch,
                "cluster_policy_change_incremental_ms": all_pods.tier_incremental,
                "node_cluster_policy_change_scratch_ms": node.tier_scratch,
                "node_cluster_policy_change_incremental_ms": node.tier_incremental,
                "pod_start": pod_starts.to_json(),
                "tables_mib": mib(retained),
                "classify_ns": ns_per,
                "classify_allowed_ns": allowed_ns,
                "classify_denied_ns": denied_ns,
                "address_lookup_ns": lookup_ns,
                "classify_allocations": classify_allocs,
                "allowed_fraction": allowed as f64 / tries.len() as f64,
                "tier_decided_fraction": tier_decided as f64 / tries.len() as f64,
                "identities": stats.identities,
                "groups": stats.groups,
                "allow_entries": stats.allow_entries,
                "port_sets": stats.port_sets,
                "prefix_intervals": stats.prefix_intervals,
            })
        );
    } else {
        println!(
            "{} pods, {} namespaces, {} policies: compile {:.1} ms (median of {runs}), peak {:.1} MiB, \
             after one change: from scratch {scratch_ms:.2} ms, incremental {incremental_ms:.2} ms (medians; \
             one node's pods: {node_scratch_ms:.2} ms, {node_incremental_ms:.2} ms); \
             tables {:.1} MiB; classify {:.1} ns per new connection (allowed {allowed_ns:.1} ns, denied {denied_ns:.1} ns, \
             address lookups {lookup_ns:.1} ns) over {} attempts ({:.0}% allowed, \
             {classify_allocs} allocations); {} identities, {} groups, {} allow entries, {} port sets, \
             {} prefix intervals",
            shape.pods,
            shape.namespaces,
            shape.policies,
            compile_time.as_secs_f64() * 1e3,
            mib(peak),
            mib(retained),
            ns_per,
            tries.len(),
            100.0 * allowed as f64 / tries.len() as f64,
            stats.identities,
            stats.groups,
            stats.allow_entries,
            stats.port_sets,
            stats.prefix_intervals,
        );
        println!("  {pod_starts}");
        print_tier_changes(
            shape,
            [all_pods, node],
            tier_decided as f64 / tries.len() as f64,
        );
    }
}

/// The text line of `compile` about ClusterNetworkPolicies, when the
/// cluster has them: their edits' change times (every pod local, then one
/// node's) and the share of attempts a tier decided.
fn print_tier_changes(shape: Shape, [all_pods, node]: [ChangeTimes; 2], tier_decided: f64) {
    if let (Some(scratch), Some(incremental), Some(node_scratch), Some(node_incremental)) = (
        all_pods.tier_scratch,
        all_pods.tier_incremental,
        node.tier_scratch,
        node.tier_incremental,
    ) {
        println!(
            "  with {} cluster policies: after one cluster policy edit: from scratch {scratch:.2} ms, \
             incremental {incremental:.2} ms (medians; one node's pods: {node_scratch:.2} ms, \
             {node_incremental:.2} ms); {:.1}% of the attempts decided by a tier",
            shape.cluster_policies,
            100.0 * tier_decided,
        );
    }
}

/// The curve over ClusterNetworkPolicy counts: its flatness (the rate at
/// 1,000 over the rate at 1; 0 when the curve lacks either) and its JSON.
fn tier_curve_summary(curve: &[podfence_bench::pipeline::TierPoint]) -> (f64, serde_json::Value) {
    let at = |n: usize| {
        curve
            .iter()
            .find(|p| p.cluster_policies == n)
            .map_or(0.0, |p| p.new_conn_mpps)
    };
    let json = curve
        .iter()
        .map(|p| {
            json!({
                "cluster_policies": p.cluster_policies,
                "new_conn_mpps": p.new_conn_mpps,
                "tier_decided_share": p.tier_decided_share,
            })
        })
        .collect();
    (at(1_000) / at(1).max(f64::MIN_POSITIVE), json)
}

/// The text rows of the curve over ClusterNetworkPolicy counts.
fn print_tier_curve(curve: &[podfence_bench::pipeline::TierPoint], flatness: f64) {
    for p in curve {
        println!(
            "  at {:>6} cluster policies {:8.2} Mpps ({:.1}% decided by a tier)",
            p.cluster_policies,
            p.new_conn_mpps,
            100.0 * p.tier_decided_share
        );
    }
    println!("tier flatness (1k / 1){flatness:8.2} (goal >= 0.80)");
}

fn bench_pipeline(
    shape: Shape,
    packets: usize,
    service_share: f64,
    tier_curve: Vec<usize>,
    json: bool,
) {
    // Measure on the last core; the first takes most interrupts.
    if !podfence_datapath::worker::pin_to_core(usize::MAX) {
        eprintln!("podfence-bench: note: could not pin to a core; figures may vary more");
    }
    let options = podfence_bench::pipeline::PipelineOptions {
        packets: packets.max(10_000),
        service_share,
        tier_curve,
        ..podfence_bench::pipeline::PipelineOptions::default()
    };
    let r = podfence_bench::pipeline::run(shape, &options, &ALLOC);
    let at = |n: usize| r.curve.iter().find(|c| c.0 == n).map_or(0.0, |c| c.1);
    let flatness = at(1_000) / at(1).max(f64::MIN_POSITIVE);
    let (tier_flatness, tier_curve) = tier_curve_summary(&r.tier_curve);
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let est_ratio = ratio(r.established_service_mpps, r.established_mpps);
    let new_ratio = ratio(r.new_conn_service_mpps, r.new_conn_mpps);
    if json {
        let curve: Vec<_> = r
            .curve
            .iter()
            .map(|(p, m)| json!({"policies": p, "new_conn_mpps": m}))
            .collect();
        let (p50, p99, p999) = r.batch_latency_ns;
        println!(
            "{}",
            json!({
                "pods": shape.pods,
                "namespaces": shape.namespaces,
                "policies": shape.policies,
                "parse_mpps": r.parse_mpps,
                "established_mpps": r.established_mpps,
                "established_cpu_ns": r.established_cpu_ns,
                "new_conn_mpps": r.new_conn_mpps,
                "two_workers_new_conn_mpps": r.two_workers_mpps,
                "flatness_1k": flatness,
                "curve": curve,
                "tier_flatness_1k": tier_flatness,
                "tier_curve": tier_curve,
                "batch_latency_ns": {"p50": p50, "p99": p99, "p999": p999},
                "allocs_per_packet": r.allocs_per_packet,
                "replay_mpps": r.replay_mpps,
                "replay_packets": r.replay_packets,
                "allowed_share": r.allowed_share,
                "services": r.services,
                "service_share": r.service_share,
                "established_service_mpps": r.established_service_mpps,
                "established_service_cpu_ns": r.established_service_cpu_ns,
                "new_conn_service_mpps": r.new_conn_service_mpps,
                "established_service_ratio": est_ratio,
                "new_conn_service_ratio": new_ratio,
                "allowed_share_service": r.allowed_share_service,
                "service_rewritten": r.service_rewritten,
                "service_allocations": r.service_allocs,
            })
        );
        return;
    }
    println!(
        "{} pods, {} namespaces, {} policies, 64-byte packets, {:.0}% of new connections allowed",
        shape.pods,
        shape.namespaces,
        shape.policies,
        100.0 * r.allowed_share
    );
    println!("parse only            {:8.2} Mpps", r.parse_mpps);
    println!(
        "established           {:8.2} Mpps ({:.1} ns CPU/packet)",
        r.established_mpps, r.established_cpu_ns
    );
    println!("new connections       {:8.2} Mpps", r.new_conn_mpps);
    println!("  with two workers    {:8.2} Mpps", r.two_workers_mpps);
    for (p, m) in &r.curve {
        println!("  at {p:>6} policies   {m:8.2} Mpps");
    }
    println!("flatness (1k / 1)     {flatness:8.2}");
    print_tier_curve(&r.tier_curve, tier_flatness);
    println!(
        "through a Service ({} Services, {:.0}% of the connections, {:.0}% of them allowed):",
        r.services,
        100.0 * r.service_share,
        100.0 * r.allowed_share_service
    );
    println!(
        "  established         {:8.2} Mpps ({est_ratio:.2} x pod addresses; goal >= 0.90; {:.1} ns CPU/packet)",
        r.established_service_mpps, r.established_service_cpu_ns
    );
    println!(
        "  new connections     {:8.2} Mpps ({new_ratio:.2} x pod addresses)",
        r.new_conn_service_mpps
    );
    let (p50, p99, p999) = r.batch_latency_ns;
    println!("batch latency (64)    p50 {p50} ns, p99 {p99} ns, p999 {p999} ns");
    println!(
        "allocations/packet    {:8.4} ({} while translating)",
        r.allocs_per_packet, r.service_allocs
    );
    println!(
        "replay (1 worker)     {:8.2} Mpps over {} packets",
        r.replay_mpps, r.replay_packets
    );
}
