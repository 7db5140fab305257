//! `podfence-bench tcp`: TCP and UDP between two pods over the kernel,
//! podfence (with and without policies) and nftables, at several MTUs.

use std::time::Duration;

use clap::Args;
use podfence_bench::tcp::{self, PATHS, PathKind, TcpOptions, Workload, report};

#[derive(Args, Debug)]
pub(crate) struct TcpArgs {
    /// Paths to measure, comma-separated: kernel, forward-all (podfence,
    /// no policy), podfence (the policies), nftables (the policies as
    /// nftables rules).
    #[arg(long, value_delimiter = ',', value_parser = parse_path,
          default_value = "kernel,forward-all,podfence,nftables")]
    paths: Vec<PathKind>,
    /// Workloads, comma-separated: stream1, stream4 (iperf3 TCP, 1 and 4
    /// connections), rr (sockperf ping-pong), crr (connect, request,
    /// response, close), udp (iperf3 UDP).
    #[arg(long, value_delimiter = ',', value_parser = parse_workload,
          default_value = "stream1,stream4,rr,crr,udp")]
    workloads: Vec<Workload>,
    /// MTUs, comma-separated (a testbed each).
    #[arg(long, value_delimiter = ',', default_value = "1500,9000",
          value_parser = clap::value_parser!(u32).range(576..=9000))]
    mtu: Vec<u32>,
    /// Seconds per workload run (iperf3 and sockperf round up to whole
    /// seconds).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds (each sets up every path once; order reversed every other
    /// round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Clients of the connection rate.
    #[arg(long, default_value_t = 4)]
    crr_clients: usize,
    /// Seconds over which the idle agent's CPU is taken (0: not).
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// Frames per pod veth socket, as the agent's `--pod-frames`.
    #[arg(long, default_value_t = podfence_control::agent::DEFAULT_POD_FRAMES)]
    pod_frames: u32,
    /// Synthetic policies (besides the two that allow the measured traffic).
    #[arg(long, default_value_t = 1_000)]
    policies: usize,
    /// Namespaces of the synthetic cluster.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Pods of the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the markdown report, its SVG charts and the JSON into
    /// this directory (tcp.md, tcp-*.svg, tcp.json).
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// No progress lines on standard error.
    #[arg(long)]
    quiet: bool,
}

fn parse_path(s: &str) -> Result<PathKind, String> {
    PathKind::parse(s)
        .filter(|p| PATHS.contains(p))
        .ok_or_else(|| {
            let names: Vec<&str> = PATHS.iter().map(|p| p.name()).collect();
            format!("'{s}' is not a path of tcp ({})", names.join(", "))
        })
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
        format!("'{s}' is not a workload ({})", names.join(", "))
    })
}

impl TcpArgs {
    fn options(&self) -> TcpOptions {
        TcpOptions {
            namespaces: self.namespaces,
            pods: self.pods,
            policies: self.policies,
            paths: self.paths.clone(),
            workloads: self.workloads.clone(),
            mtus: self.mtu.clone(),
            duration: Duration::from_secs_f64(self.duration.max(0.1)),
            rounds: self.rounds.max(1),
            crr_clients: self.crr_clients.max(1),
            idle: Duration::from_secs_f64(self.idle_seconds.max(0.0)),
            pod_frames: self.pod_frames,
            progress: !self.quiet,
        }
    }
}

pub(crate) fn run(args: &TcpArgs) -> Result<(), String> {
    let r = tcp::run(&args.options()).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", report::json(&r));
    } else {
        print!("{}", report::table(&r));
    }
    if let Some(dir) = &args.report {
        let command: Vec<String> = std::env::args().collect();
        let command = format!("podfence-bench {}", command[1..].join(" "));
        report::write(dir, &r, &command)?;
        eprintln!("tcp: report written to {}", dir.join("tcp.md").display());
    }
    Ok(())
}
