//! `podfence-bench lifecycle`: issue 14's measures (see
//! `podfence_bench::lifecycle`).

use std::path::PathBuf;

use clap::Args;
use podfence_bench::lifecycle::{self, LifecycleOptions, LifecycleReport, Percentiles, Rollout};

use crate::ShapeArgs;

#[derive(Args, Debug)]
pub(crate) struct LifecycleArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Pods started through the CNI chain, with and without podfence-cni
    /// (0: skip).
    #[arg(long = "start-pods", default_value_t = 100)]
    start_pods: usize,
    /// ADDs in flight at a time.
    #[arg(long, default_value_t = 10)]
    at_once: usize,
    /// The started pods are replicas of this many pods (namespace and
    /// labels of as many synthetic pods; pod i like the (i mod N)th), as in
    /// a rollout; default: every pod its own.
    #[arg(long)]
    start_shapes: Option<usize>,
    /// Agent upgrades to measure (0: skip), each done every way of
    /// `--rollouts`, alternating.
    #[arg(long, default_value_t = 5)]
    upgrades: usize,
    /// How the next agent takes over: `surge` (it starts while the old one
    /// enforces and asks it to hand over, as the DaemonSet's maxSurge: 1),
    /// `replace` (SIGTERM, then the next one, as maxSurge: 0).
    #[arg(long, value_delimiter = ',', default_value = "surge,replace", value_parser = parse_rollout)]
    rollouts: Vec<Rollout>,
    /// More running pods on the node during the upgrades (each agent
    /// attaches to their veths and hands them over), up to 500.
    #[arg(long, default_value_t = 0)]
    node_pods: usize,
    /// The podfence binary (podfence-cni beside it); default: beside this
    /// one.
    #[arg(long, value_name = "FILE")]
    podfence: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &LifecycleArgs) -> Result<(), String> {
    let podfence = match &args.podfence {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("podfence"),
    };
    if !podfence.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p podfence-control -p podfence-cni",
            podfence.display()
        ));
    }
    let report = lifecycle::run(&LifecycleOptions {
        shape: args.shape.shape(),
        pods: args.start_pods,
        at_once: args.at_once,
        shapes: args.start_shapes.unwrap_or(args.start_pods),
        upgrades: args.upgrades,
        rollouts: args.rollouts.clone(),
        node_pods: args.node_pods,
        podfence,
    })?;
    if args.json {
        println!("{}", report.json());
    } else {
        print_report(&report);
    }
    Ok(())
}

fn parse_rollout(name: &str) -> Result<Rollout, String> {
    [Rollout::Surge, Rollout::Replace]
        .into_iter()
        .find(|r| r.name() == name)
        .ok_or_else(|| format!("{name:?}: `surge` or `replace`"))
}

fn row(what: &str, p: &Percentiles) {
    println!(
        "{what:<34} {:>9.1} {:>9.1} {:>9.1}",
        p.p50_ms, p.p99_ms, p.max_ms
    );
}

fn print_report(report: &LifecycleReport) {
    let (pods, namespaces, policies) = report.cluster;
    println!("cluster: {pods} pods, {namespaces} namespaces, {policies} policies");
    if let Some(s) = &report.pod_start {
        println!(
            "\npod start: {} pods (replicas of {}), {} at a time (ms)\n{:<34} {:>9} {:>9} {:>9}",
            s.pods, s.shapes, s.at_once, "", "p50", "p99", "max"
        );
        row("podfence-cni ADD", &s.podfence_cni_add);
        row("chain: ptp + podfence-cni", &s.chain_with);
        row("chain: ptp alone", &s.chain_without);
    }
    if !report.upgrades.is_empty() {
        println!(
            "\nupgrades (ms)\n{:<8} {:>8} {:>9} {:>7} {:>9} {:>14} {:>8} {:>8}",
            "rollout",
            "silence",
            "exchanges",
            "retrans",
            "survived",
            "denied passed",
            "stop",
            "start"
        );
        for u in &report.upgrades {
            println!(
                "{:<8} {:>8.1} {:>9} {:>7} {:>9} {:>8} of {:>3} {:>8.1} {:>8.1}",
                u.rollout.name(),
                u.longest_silence_ms,
                u.exchanges,
                u.retransmitted,
                u.survived,
                u.denied_passed,
                u.denied_sent,
                u.stop_ms,
                u.start_ms
            );
        }
    }
}
