//! `podfence-bench veth`: podfence against forwarding without policy, the
//! kernel's routing and nftables, on a testbed node's veths.

use std::time::Duration;

use clap::Args;
use podfence_bench::veth::{self, Case, PathKind, VethOptions, report};

use crate::traffic_cmd::TrafficArgs;

#[derive(Args, Debug)]
pub(crate) struct VethArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Synthetic policies (besides the two that allow the measured traffic).
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    /// Namespaces of the synthetic cluster.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Pods of the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Paths to measure, comma-separated: direct, podfence, forward-all,
    /// kernel, nftables, nftables-est, podfence-svc (to the sink's
    /// ClusterIP, podfence translating), kube-proxy (to the ClusterIP,
    /// kube-proxy's nftables rules translating, nftables enforcing).
    #[arg(long, value_delimiter = ',', value_parser = parse_path,
          default_value = "direct,podfence,forward-all,kernel,nftables")]
    paths: Vec<PathKind>,
    /// Also measure the policy paths at these policy counts (comma-separated),
    /// e.g. 1,10,100,1000,10000.
    #[arg(long, value_delimiter = ',')]
    scale: Vec<usize>,
    /// Rounds (each measures every path once; order reversed every other round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Seconds of the no-loss and latency runs.
    #[arg(long, default_value_t = 1.0)]
    check_seconds: f64,
    /// Seconds of warm-up before each path.
    #[arg(long, default_value_t = 0.5)]
    warmup_seconds: f64,
    /// Packets per second of the latency run (0: none).
    #[arg(long, default_value_t = 100_000.0)]
    latency_rate: f64,
    /// Rate of the no-loss check as a fraction of the measured rate (0: none).
    #[arg(long, default_value_t = 0.9)]
    check_fraction: f64,
    /// Queues per veth (= generator threads = podfence workers);
    /// comma-separated to measure several counts one after the other (the
    /// policy scaling runs at the first only).
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..=8))]
    queues: Vec<u32>,
    /// Core of the generator thread(s) (comma-separated; default: the last core).
    #[arg(long, value_delimiter = ',')]
    gen_cores: Vec<usize>,
    /// Core of the sink.
    #[arg(long, default_value_t = 1)]
    sink_core: usize,
    /// Core that does the kernel's receive processing of the generator's
    /// host veth (RPS): kernel forwarding and nftables get a core of their
    /// own, as podfence's worker has core 0. `none`: where the generator
    /// sends (its core).
    #[arg(long, default_value = "0")]
    rps_core: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the markdown report, its SVG charts and the JSON into
    /// this directory (veth.md, veth-rate-vs-policies.svg, veth-latency.svg,
    /// veth.json).
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// No progress lines on standard error.
    #[arg(long)]
    quiet: bool,
}

fn parse_path(s: &str) -> Result<PathKind, String> {
    PathKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = PathKind::ALL.iter().map(|p| p.name()).collect();
        format!("'{s}' is not a path ({})", names.join(", "))
    })
}

impl VethArgs {
    pub(crate) fn options(&self, queues: u32, scale: bool) -> VethOptions {
        let mut cases = Vec::new();
        for &path in &self.paths {
            if path.enforces() && scale && !self.scale.is_empty() {
                for &n in &self.scale {
                    cases.push(Case { path, policies: n });
                }
            } else {
                cases.push(Case {
                    path,
                    policies: self.policies,
                });
            }
        }
        let spec = self.traffic.spec(
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::UNSPECIFIED,
        );
        VethOptions {
            namespaces: self.namespaces,
            pods: self.pods,
            policies: self.policies,
            spec,
            cases,
            rounds: self.rounds.max(1),
            throughput: Duration::from_secs_f64(self.seconds.max(0.05)),
            check: Duration::from_secs_f64(self.check_seconds.max(0.05)),
            warmup: Duration::from_secs_f64(self.warmup_seconds.max(0.0)),
            latency_rate: (self.latency_rate > 0.0).then_some(self.latency_rate),
            no_loss_fraction: (self.check_fraction > 0.0).then_some(self.check_fraction),
            queues,
            gen_cores: if self.gen_cores.is_empty() {
                vec![usize::MAX]
            } else {
                self.gen_cores.clone()
            },
            sink_core: Some(self.sink_core),
            rps_core: self.rps_core.parse().ok(),
            progress: !self.quiet,
        }
    }
}

pub(crate) fn run(args: &VethArgs) -> Result<(), String> {
    let mut reports = Vec::new();
    for (i, &q) in args.queues.iter().enumerate() {
        let options = args.options(q, i == 0);
        let r = veth::run(&options).map_err(|e| e.to_string())?;
        if !args.json {
            print!("{}", report::table(&r));
            println!();
        }
        reports.push(r);
    }
    if args.json {
        let mut v = report::json(&reports[0]);
        if let Some(obj) = v.as_object_mut() {
            let others: Vec<_> = reports[1..].iter().map(report::json).collect();
            obj.insert("other_queue_counts".into(), serde_json::json!(others));
        }
        println!("{v}");
    }
    if let Some(dir) = &args.report {
        let command: Vec<String> = std::env::args().collect();
        let command = format!("podfence-bench {}", command[1..].join(" "));
        veth::markdown::write(dir, &reports, &command)?;
        eprintln!("veth: report written to {}", dir.join("veth.md").display());
    }
    Ok(())
}
