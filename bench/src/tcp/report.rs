//! The figures of `podfence-bench tcp`: medians over rounds, CPU per GB,
//! the goals of issue 16 with their ratios, and the table, the JSON and the
//! markdown report with its SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::{Outcome, PathKind, TcpReport, Workload};
use crate::plot::{self, Series};

/// What the CPU figures count.
pub const COUNTED: &str = "CPU seconds are the whole machine's busy time (/proc/stat: user, \
    system, softirq, of every core) over each client's run: the clients and servers (iperf3, \
    sockperf, the connection-rate threads), the kernel's forwarding and softirqs, nftables, and \
    podfence's workers and threads; the agent's share is the CPU time of its threads \
    (/proc/self/task, they run in the benchmark's process). CPU per GB divides by the bytes \
    that arrived. Server start-up is not counted; anything else running on the machine is.";

/// The median of `v` (`None` when empty).
#[must_use]
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

/// CPU seconds per GB (10^9 bytes) moved; `None` when nothing moved.
#[must_use]
pub fn cpu_per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / 1e9))
}

/// One workload on one path at one MTU, over the rounds (medians).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// The MTU.
    pub mtu: u32,
    /// The path.
    pub path: Option<PathKind>,
    /// The workload.
    pub workload: Option<Workload>,
    /// Rounds measured.
    pub rounds: usize,
    /// Streams: received Gbit/s.
    pub gbps: Option<f64>,
    /// UDP: share of the datagrams lost.
    pub udp_loss: Option<f64>,
    /// TCP streams: retransmissions.
    pub retransmits: Option<f64>,
    /// Request/response: p50 and p99 round trip, microseconds.
    pub p50_us: Option<f64>,
    /// ... p99.
    pub p99_us: Option<f64>,
    /// Request/response and connection rate: transactions per second.
    pub per_second: Option<f64>,
    /// Connection rate: failed attempts, all rounds.
    pub failures: u64,
    /// Streams: machine CPU seconds per GB.
    pub cpu_per_gb: Option<f64>,
    /// Streams: the agent's CPU seconds per GB.
    pub agent_cpu_per_gb: Option<f64>,
    /// Transactions: machine CPU microseconds per transaction.
    pub cpu_us_per_transaction: Option<f64>,
    /// CPU seconds the hypervisor took away, most in one round.
    pub stolen: f64,
}

/// Medians over the rounds of every (MTU, path, workload).
#[must_use]
pub fn summaries(report: &TcpReport) -> Vec<Summary> {
    let mut out = Vec::new();
    for case in &report.results {
        for &w in &report.options.workloads {
            let runs: Vec<_> = case
                .rounds
                .iter()
                .flat_map(|r| r.runs.iter().filter(|m| m.workload == w))
                .collect();
            let med = |f: &dyn Fn(&super::Measurement) -> Option<f64>| {
                median(runs.iter().filter_map(|m| f(m)).collect())
            };
            out.push(Summary {
                mtu: case.mtu,
                path: Some(case.path),
                workload: Some(w),
                rounds: runs.len(),
                gbps: med(&|m| match &m.outcome {
                    Outcome::Stream(s) => Some(s.gbps()),
                    _ => None,
                }),
                udp_loss: med(&|m| match &m.outcome {
                    Outcome::Stream(s) => s.udp_packets.map(|(p, l)| l as f64 / p.max(1) as f64),
                    _ => None,
                }),
                retransmits: med(&|m| match &m.outcome {
                    Outcome::Stream(s) => s.retransmits.map(|r| r as f64),
                    _ => None,
                }),
                p50_us: med(&|m| match &m.outcome {
                    Outcome::Rr(r) => Some(r.p50_us),
                    _ => None,
                }),
                p99_us: med(&|m| match &m.outcome {
                    Outcome::Rr(r) => Some(r.p99_us),
                    _ => None,
                }),
                per_second: med(&|m| match &m.outcome {
                    Outcome::Rr(r) => Some(r.per_second()),
                    Outcome::Crr(c) => Some(c.per_second()),
                    Outcome::Stream(_) => None,
                }),
                failures: runs
                    .iter()
                    .map(|m| match &m.outcome {
                        Outcome::Crr(c) => c.failures,
                        _ => 0,
                    })
                    .sum(),
                cpu_per_gb: med(&|m| cpu_per_gb(m.cpu.machine, m.bytes())),
                agent_cpu_per_gb: med(&|m| cpu_per_gb(m.cpu.agent, m.bytes())),
                cpu_us_per_transaction: med(&|m| {
                    let t = m.transactions();
                    (t > 0).then(|| m.cpu.machine * 1e6 / t as f64)
                }),
                stolen: runs.iter().map(|m| m.cpu.stolen).fold(0.0, f64::max),
            });
        }
    }
    out
}

fn find(s: &[Summary], mtu: u32, path: PathKind, w: Workload) -> Option<&Summary> {
    s.iter()
        .find(|x| x.mtu == mtu && x.path == Some(path) && x.workload == Some(w))
}

/// The idle agent's CPU on `path` at `mtu`, in cores (median of rounds).
#[must_use]
pub fn idle_agent(report: &TcpReport, mtu: u32, path: PathKind) -> Option<f64> {
    median(
        report
            .results
            .iter()
            .filter(|c| c.mtu == mtu && c.path == path)
            .flat_map(|c| c.rounds.iter().filter_map(|r| r.idle_agent_cores))
            .collect(),
    )
}

/// One goal of issue 16 and where this run stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    /// What is compared.
    pub what: String,
    /// At this MTU.
    pub mtu: u32,
    /// The ratio (or value) measured; `None` when a side was not measured.
    pub value: Option<f64>,
    /// The goal.
    pub target: f64,
    /// Whether the value must be at least the target (else at most).
    pub at_least: bool,
}

impl Goal {
    /// Whether it is met (`None`: not measured).
    #[must_use]
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_least {
            v >= self.target
        } else {
            v <= self.target
        })
    }

    /// By how much it is missed, as a share of the target (0 when met).
    #[must_use]
    pub fn missed_by(&self) -> Option<f64> {
        let v = self.value?;
        let by = if self.at_least {
            (self.target - v) / self.target
        } else {
            (v - self.target) / self.target
        };
        Some(by.max(0.0))
    }

    /// `met` or `missed by N%`, or `not measured`.
    #[must_use]
    pub fn verdict(&self) -> String {
        match (self.met(), self.missed_by()) {
            (Some(true), _) => "met".into(),
            (Some(false), Some(by)) => format!("missed by {:.0}%", 100.0 * by),
            _ => "not measured".into(),
        }
    }
}

/// The goals at every MTU of the run.
#[must_use]
pub fn goals(report: &TcpReport) -> Vec<Goal> {
    let s = summaries(report);
    let ratio =
        |mtu: u32, w: Workload, a: PathKind, b: PathKind, f: fn(&Summary) -> Option<f64>| {
            let x = f(find(&s, mtu, a, w)?)?;
            let y = f(find(&s, mtu, b, w)?)?;
            (y > 0.0).then(|| x / y)
        };
    let mut out = Vec::new();
    for &mtu in &report.options.mtus {
        let (pf, kernel, nft) = (PathKind::Podfence, PathKind::Kernel, PathKind::Nftables);
        let gbps: fn(&Summary) -> Option<f64> = |x| x.gbps;
        let p50: fn(&Summary) -> Option<f64> = |x| x.p50_us;
        let rate: fn(&Summary) -> Option<f64> = |x| x.per_second;
        let goals = [
            (
                "TCP stream, 1 connection: podfence / kernel",
                ratio(mtu, Workload::Stream1, pf, kernel, gbps),
                0.5,
                true,
            ),
            (
                "TCP stream, 4 connections: podfence / kernel",
                ratio(mtu, Workload::Stream4, pf, kernel, gbps),
                0.5,
                true,
            ),
            (
                "request/response p50: podfence / kernel",
                ratio(mtu, Workload::Rr, pf, kernel, p50),
                1.0,
                false,
            ),
            (
                "connection rate: podfence / nftables (same policies)",
                ratio(mtu, Workload::Crr, pf, nft, rate),
                1.0,
                true,
            ),
            (
                "connection rate: podfence / kernel (no policy)",
                ratio(mtu, Workload::Crr, pf, kernel, rate),
                0.8,
                true,
            ),
            (
                "idle agent, cores",
                idle_agent(report, mtu, pf),
                0.01,
                false,
            ),
        ];
        out.extend(
            goals
                .into_iter()
                .map(|(what, value, target, at_least)| Goal {
                    what: what.into(),
                    mtu,
                    value,
                    target,
                    at_least,
                }),
        );
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The table on standard output.
#[must_use]
pub fn table(report: &TcpReport) -> String {
    let s = summaries(report);
    let mut out = String::new();
    for &mtu in &report.options.mtus {
        let _ = writeln!(
            out,
            "MTU {mtu}, median of {} round(s), {} s per workload",
            report.options.rounds,
            report.options.duration.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
            "path",
            "workload",
            "Gbit/s",
            "p50 us",
            "p99 us",
            "per s",
            "CPU s/GB",
            "agent",
            "CPU us/tx",
            "lost/fail"
        );
        for x in s.iter().filter(|x| x.mtu == mtu) {
            let (Some(p), Some(w)) = (x.path, x.workload) else {
                continue;
            };
            let lost = match (x.udp_loss, w) {
                (Some(l), _) => format!("{:.1}%", 100.0 * l),
                (None, Workload::Crr) => x.failures.to_string(),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<12} {:<8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
                p.name(),
                w.name(),
                opt(x.gbps, 2),
                opt(x.p50_us, 1),
                opt(x.p99_us, 1),
                opt(x.per_second, 0),
                opt(x.cpu_per_gb, 3),
                opt(x.agent_cpu_per_gb, 3),
                opt(x.cpu_us_per_transaction, 1),
                lost
            );
        }
        for c in report.results.iter().filter(|c| c.mtu == mtu) {
            let reached = c.rounds.iter().filter(|r| r.denied_reached).count();
            let _ = writeln!(
                out,
                "{:<12} denied port reached in {reached} of {} round(s){}",
                c.path.name(),
                c.rounds.len(),
                idle_agent(report, mtu, c.path).map_or(String::new(), |v| format!(
                    "; idle agent {:.2}% of a core",
                    100.0 * v
                ))
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "goals (same VM, same run):");
    for g in goals(report) {
        let _ = writeln!(
            out,
            "  MTU {:>4}  {:<52} {:>8} ({} {}): {}",
            g.mtu,
            g.what,
            opt(g.value, 3),
            if g.at_least { ">=" } else { "<=" },
            g.target,
            g.verdict()
        );
    }
    out
}

/// The JSON object (`--json`, and beside the markdown report).
#[must_use]
pub fn json(report: &TcpReport) -> Value {
    let o = &report.options;
    let results: Vec<Value> = summaries(report)
        .iter()
        .map(|x| {
            json!({
                "mtu": x.mtu,
                "path": x.path.map(PathKind::name),
                "workload": x.workload.map(Workload::name),
                "rounds": x.rounds,
                "gbps": x.gbps,
                "udp_loss": x.udp_loss,
                "retransmits": x.retransmits,
                "p50_us": x.p50_us,
                "p99_us": x.p99_us,
                "per_second": x.per_second,
                "failures": x.failures,
                "cpu_s_per_gb": x.cpu_per_gb,
                "agent_cpu_s_per_gb": x.agent_cpu_per_gb,
                "cpu_us_per_transaction": x.cpu_us_per_transaction,
                "stolen_cpu_s": x.stolen,
            })
        })
        .collect();
    let rounds: Vec<Value> = report
        .results
        .iter()
        .flat_map(|c| {
            c.rounds.iter().map(move |r| {
                json!({
                    "mtu": c.mtu,
                    "path": c.path.name(),
                    "round": r.round,
                    "denied_reached": r.denied_reached,
                    "idle_agent_cores": r.idle_agent_cores,
                    "runs": r.runs.iter().map(|m| json!({
                        "workload": m.workload.name(),
                        "bytes": m.bytes(),
                        "transactions": m.transactions(),
                        "wall_s": m.cpu.wall,
                        "cpu_s": m.cpu.machine,
                        "agent_cpu_s": m.cpu.agent,
                        "stolen_cpu_s": m.cpu.stolen,
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let goals: Vec<Value> = goals(report)
        .iter()
        .map(|g| {
            json!({
                "what": g.what,
                "mtu": g.mtu,
                "value": g.value,
                "target": g.target,
                "at_least": g.at_least,
                "met": g.met(),
                "missed_by": g.missed_by(),
            })
        })
        .collect();
    json!({
        "benchmark": "tcp",
        "cpus": report.cpus,
        "load_before": report.load.0,
        "load_after": report.load.1,
        "policies": o.policies,
        "pods": o.pods,
        "namespaces": o.namespaces,
        "paths": o.paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "workloads": o.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "mtus": o.mtus,
        "duration_s": o.duration.as_secs_f64(),
        "rounds": o.rounds,
        "crr_clients": o.crr_clients,
        "pod_frames": o.pod_frames,
        "idle_s": o.idle.as_secs_f64(),
        "cpu_counted": COUNTED,
        "results": results,
        "per_round": rounds,
        "goals": goals,
    })
}

/// Bars of `f` per path, grouped by (workload, MTU).
fn chart(
    dir: &Path,
    file: &str,
    title: &str,
    y_desc: &str,
    report: &TcpReport,
    workloads: &[Workload],
    f: Metric,
) -> Result<bool, String> {
    let s = summaries(report);
    let mut groups = Vec::new();
    for &w in workloads
        .iter()
        .filter(|w| report.options.workloads.contains(w))
    {
        for &mtu in &report.options.mtus {
            groups.push((w, mtu));
        }
    }
    let series: Vec<Series> = report
        .options
        .paths
        .iter()
        .map(|&p| Series {
            label: p.name().into(),
            points: groups
                .iter()
                .enumerate()
                .filter_map(|(i, &(w, mtu))| Some((i as f64, f(find(&s, mtu, p, w)?)?)))
                .collect(),
        })
        .collect();
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(false);
    }
    let names: Vec<String> = groups
        .iter()
        .map(|(w, mtu)| format!("{} @{mtu}", w.name()))
        .collect();
    plot::bars(&dir.join(file), title, y_desc, &names, &series)?;
    Ok(true)
}

/// A figure of a summary.
type Metric = fn(&Summary) -> Option<f64>;

/// The charts: file, title, y axis, workloads, figure.
const CHARTS: [(&str, &str, &str, &[Workload], Metric); 5] = [
    (
        "tcp-stream.svg",
        "Streams: what arrives",
        "Gbit/s",
        &[Workload::Stream1, Workload::Stream4, Workload::Udp],
        |x| x.gbps,
    ),
    (
        "tcp-rr.svg",
        "Request/response: p50 round trip",
        "us",
        &[Workload::Rr],
        |x| x.p50_us,
    ),
    (
        "tcp-rr-p99.svg",
        "Request/response: p99 round trip",
        "us",
        &[Workload::Rr],
        |x| x.p99_us,
    ),
    (
        "tcp-crr.svg",
        "Connection rate: connect, request, response, close",
        "per second",
        &[Workload::Crr],
        |x| x.per_second,
    ),
    (
        "tcp-cpu.svg",
        "CPU seconds per GB (whole machine)",
        "CPU s / GB",
        &[Workload::Stream1, Workload::Stream4, Workload::Udp],
        |x| x.cpu_per_gb,
    ),
];

/// The report's setup part: machine, testbed, cluster, rounds, paths,
/// workloads, what CPU counts.
fn setup(md: &mut String, report: &TcpReport, command: &str) {
    let o = &report.options;
    let _ = writeln!(
        md,
        "# TCP and UDP between pods: podfence, the kernel, nftables\n"
    );
    let _ = writeln!(md, "    {command}\n");
    let _ = writeln!(
        md,
        "- {}; load average {:.2} before, {:.2} after",
        crate::veth::markdown::machine(),
        report.load.0,
        report.load.1
    );
    let _ = writeln!(
        md,
        "- a testbed node in network namespaces, one per MTU ({}): the generator and \
         the sink pod on veth pairs, the node routing between them; podfence with one worker",
        o.mtus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "- {} synthetic policies over {} pods in {} namespaces, plus two that allow the \
         generator to the sink's port {} (TCP and UDP), the last in policy order (deep in \
         the table); port {} is denied",
        o.policies,
        o.pods,
        o.namespaces,
        super::ALLOWED_PORT,
        super::DENIED_PORT
    );
    let _ = writeln!(
        md,
        "- {} round(s), the paths alternating (A B C, C B A); {} s per workload; \
         connection rate with {} clients; idle agent over {} s; {} frames per pod socket",
        o.rounds,
        o.duration.as_secs_f64(),
        o.crr_clients,
        o.idle.as_secs_f64(),
        o.pod_frames
    );
    let _ = writeln!(md, "\nPaths:\n");
    for p in &o.paths {
        let _ = writeln!(md, "- `{}`: {}", p.name(), p.describe());
    }
    let _ = writeln!(md, "\nWorkloads:\n");
    for w in &o.workloads {
        let _ = writeln!(md, "- `{}`: {}", w.name(), w.describe());
    }
    let _ = writeln!(md, "\n{COUNTED}\n");
}

/// Where the report sends the reader of a missed goal.
const MISSED_GOALS: &str = "What limits each missed goal, with the profiles and the experiments \
    behind it: docs/benchmarks.md, \"TCP and UDP between pods\". In short, every MTU-sized segment \
    is a frame that one worker forwards and the kernel copies on both sides (no GSO through AF_XDP), \
    on two cores shared with the senders and receivers; a worker that falls behind loses frames \
    (no backpressure from an AF_XDP ring), and each new connection costs wake-ups and a \
    classification.";

/// Writes `dir/tcp.md`, its charts (`tcp-stream.svg`, `tcp-rr.svg`,
/// `tcp-rr-p99.svg`, `tcp-crr.svg`, `tcp-cpu.svg`) and `dir/tcp.json`.
pub fn write(dir: &Path, report: &TcpReport, command: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut md = String::new();
    setup(&mut md, report, command);
    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(md, "| MTU | goal | measured | target | verdict |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let goals = goals(report);
    for g in &goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} {} | {} |",
            g.mtu,
            g.what,
            opt(g.value, 3),
            if g.at_least { "≥" } else { "≤" },
            g.target,
            g.verdict()
        );
    }
    if goals.iter().any(|g| g.met() == Some(false)) {
        let _ = writeln!(md, "\n{MISSED_GOALS}");
    }
    let _ = writeln!(md, "\n## Figures (medians)\n\n```");
    md.push_str(&table(report));
    let _ = writeln!(md, "```\n");
    let _ = writeln!(md, "## Charts\n");
    for (file, title, y, workloads, f) in CHARTS {
        if chart(dir, file, title, y, report, workloads, f)? {
            let _ = writeln!(md, "![{title}]({file})\n");
        }
    }
    std::fs::write(dir.join("tcp.md"), md).map_err(|e| format!("tcp.md: {e}"))?;
    std::fs::write(
        dir.join("tcp.json"),
        serde_json::to_string_pretty(&json(report)).unwrap_or_default(),
    )
    .map_err(|e| format!("tcp.json: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{
        CaseResult, CaseRound, CpuSpan, CrrResult, Measurement, RrResult, StreamResult, TcpOptions,
    };
    use super::*;

    fn stream(gbps_bytes: u64) -> Outcome {
        Outcome::Stream(StreamResult {
            bytes_sent: gbps_bytes,
            bytes_received: gbps_bytes,
            seconds: 1.0,
            retransmits: Some(0),
            udp_packets: None,
            streams: 1,
            block: 131_072,
        })
    }

    fn m(workload: Workload, outcome: Outcome, machine: f64, agent: f64) -> Measurement {
        Measurement {
            workload,
            outcome,
            cpu: CpuSpan {
                wall: 1.0,
                machine,
                agent,
                stolen: 0.0,
            },
        }
    }

    /// Kernel: 10 GB/s stream, p50 20 us, 10,000 connections/s. podfence:
    /// 4 GB/s (over rounds 3, 4, 5: median 4), p50 25 us, 9,000/s;
    /// nftables 8,000/s.
    fn report() -> TcpReport {
        let rr = |p50: f64| {
            Outcome::Rr(RrResult {
                p50_us: p50,
                p99_us: 2.0 * p50,
                transactions: 1000,
                seconds: 0.5,
            })
        };
        let crr = |n: u64| {
            Outcome::Crr(CrrResult {
                transactions: n,
                failures: 0,
                seconds: 1.0,
                clients: 4,
            })
        };
        let case = |path, rounds: Vec<(u64, f64, u64)>, idle| CaseResult {
            mtu: 1500,
            path,
            rounds: rounds
                .into_iter()
                .enumerate()
                .map(|(round, (bytes, p50, conns))| CaseRound {
                    round,
                    denied_reached: false,
                    idle_agent_cores: idle,
                    runs: vec![
                        m(Workload::Stream1, stream(bytes), 2.0, 0.5),
                        m(Workload::Rr, rr(p50), 1.0, 0.0),
                        m(Workload::Crr, crr(conns), 1.8, 0.0),
                    ],
                })
                .collect(),
        };
        TcpReport {
            options: TcpOptions {
                namespaces: 10,
                pods: 100,
                policies: 10,
                paths: vec![PathKind::Kernel, PathKind::Podfence, PathKind::Nftables],
                workloads: vec![Workload::Stream1, Workload::Rr, Workload::Crr],
                mtus: vec![1500],
                duration: Duration::from_secs(1),
                rounds: 3,
                crr_clients: 4,
                idle: Duration::from_secs(1),
                pod_frames: podfence_control::agent::DEFAULT_POD_FRAMES,
                progress: false,
            },
            results: vec![
                case(
                    PathKind::Kernel,
                    vec![(10_000_000_000, 20.0, 10_000); 3],
                    None,
                ),
                case(
                    PathKind::Podfence,
                    vec![
                        (5_000_000_000, 25.0, 9_000),
                        (3_000_000_000, 25.0, 9_000),
                        (4_000_000_000, 25.0, 9_000),
                    ],
                    Some(0.004),
                ),
                case(
                    PathKind::Nftables,
                    vec![(10_000_000_000, 20.0, 8_000); 3],
                    None,
                ),
            ],
            load: (0.0, 0.0),
            cpus: 2,
        }
    }

    #[test]
    fn medians_and_cpu_per_gb() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(cpu_per_gb(2.0, 0), None);
        assert_eq!(cpu_per_gb(2.0, 4_000_000_000), Some(0.5));
        let r = report();
        let s = summaries(&r);
        let pf = find(&s, 1500, PathKind::Podfence, Workload::Stream1).unwrap();
        assert_eq!(pf.rounds, 3);
        assert!((pf.gbps.unwrap() - 32.0).abs() < 1e-9, "median 4 GB/s");
        // 2 CPU s over 4 GB (the median round), the agent 0.5 of them.
        assert!((pf.cpu_per_gb.unwrap() - 0.5).abs() < 1e-9);
        assert!((pf.agent_cpu_per_gb.unwrap() - 0.125).abs() < 1e-9);
        let crr = find(&s, 1500, PathKind::Kernel, Workload::Crr).unwrap();
        assert_eq!(crr.per_second, Some(10_000.0));
        assert!((crr.cpu_us_per_transaction.unwrap() - 180.0).abs() < 1e-9);
        assert_eq!(crr.gbps, None);
        assert_eq!(crr.cpu_per_gb, None, "no CPU per GB without bytes");
    }

    #[test]
    fn goals_give_each_ratio_and_the_shortfall() {
        let r = report();
        let g = goals(&r);
        let by = |what: &str| g.iter().find(|x| x.what.starts_with(what)).unwrap();
        let stream = by("TCP stream, 1");
        assert!((stream.value.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(stream.met(), Some(false));
        assert!((stream.missed_by().unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(stream.verdict(), "missed by 20%");
        let rr = by("request/response");
        assert!((rr.value.unwrap() - 1.25).abs() < 1e-9);
        assert_eq!(rr.verdict(), "missed by 25%");
        let nft = by("connection rate: podfence / nftables");
        assert!((nft.value.unwrap() - 1.125).abs() < 1e-9);
        assert_eq!((nft.met(), nft.missed_by()), (Some(true), Some(0.0)));
        assert_eq!(by("connection rate: podfence / kernel").verdict(), "met");
        assert_eq!(by("idle agent").verdict(), "met");
        assert_eq!(by("TCP stream, 4").verdict(), "not measured");
        let table = table(&r);
        assert!(table.contains("missed by 20%"), "{table}");
        let v = json(&r);
        assert_eq!(v["goals"].as_array().unwrap().len(), 6);
        assert_eq!(v["results"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn the_report_is_written_with_its_charts() {
        let dir = std::env::temp_dir().join(format!("pf-tcp-report-{}", std::process::id()));
        write(&dir, &report(), "podfence-bench tcp").unwrap();
        let md = std::fs::read_to_string(dir.join("tcp.md")).unwrap();
        assert!(md.contains("missed by 20%") && md.contains("tcp-stream.svg"));
        assert!(
            md.contains("What limits each missed goal"),
            "a miss is explained"
        );
        for f in ["tcp-stream.svg", "tcp-rr.svg", "tcp-crr.svg", "tcp-cpu.svg"] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tcp.json")).unwrap()).unwrap();
        assert_eq!(v["benchmark"], "tcp");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
