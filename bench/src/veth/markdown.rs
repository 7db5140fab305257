//! The markdown report and its charts (`podfence-bench veth --report DIR`).

use std::fmt::Write as _;
use std::path::Path;

use super::report::{Summary, goals, headline, percentile_curve, summaries};
use super::{PathKind, VethOptions, VethReport};
use crate::plot::{self, Series};

/// The machine, for the report: CPU model, CPUs, kernel, memory.
#[must_use]
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |m| m.trim_start_matches([' ', '\t', ':']))
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!(
        "{model}, {cpus} vCPU, {:.0} GiB, Linux {kernel}",
        mem_kib as f64 / (1024.0 * 1024.0)
    )
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn lat(x: &Summary) -> (String, String, String) {
    x.latency_us
        .map_or(("-".into(), "-".into(), "-".into()), |(a, b, c)| {
            (format!("{a:.1}"), format!("{b:.1}"), format!("{c:.1}"))
        })
}

fn main_table(out: &mut String, report: &VethReport) {
    let all = summaries(report);
    let options = &report.options;
    let pf = headline(&all, PathKind::Podfence, options.policies).map(|x| x.mpps);
    let _ = writeln!(
        out,
        "| path | Mpps (min–max) | Gbit/s | lost at max | no-loss check | p50 / p99 / p999 µs | CPUs busy | vs podfence |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for path in PathKind::ALL {
        let Some(x) = headline(&all, path, options.policies) else {
            continue;
        };
        let (p50, p99, p999) = lat(x);
        let _ = writeln!(
            out,
            "| {} | **{}** ({}–{}) | {:.3} | {:.1} % | {} | {p50} / {p99} / {p999} | {:.2} | {} |",
            path.name(),
            f3(x.mpps),
            f3(x.mpps_range.0),
            f3(x.mpps_range.1),
            x.gbps,
            100.0 * x.loss_at_max,
            match (x.check_mpps, x.check_loss) {
                (Some(r), Some(l)) => format!("{:.3} % lost at {r:.3} Mpps", 100.0 * l),
                _ => "-".into(),
            },
            x.cpus_busy,
            pf.map_or("-".into(), |p| format!("{:.2}", x.mpps / p)),
        );
    }
}

/// The charts drawn for a report, by file name.
struct Charts {
    rate: Option<&'static str>,
    latency: Option<&'static str>,
    /// The paths without policy, as horizontal lines: label, Mpps.
    references: Vec<(String, f64)>,
}

/// Draws the rate-against-policies chart (when several policy counts were
/// measured) and the latency chart (when latency was measured).
fn charts(dir: &Path, s: &[Summary], o: &VethOptions) -> Result<Charts, String> {
    // Rate against policy count.
    let mut lines = Vec::new();
    for path in [
        PathKind::Podfence,
        PathKind::Nftables,
        PathKind::NftablesEst,
        PathKind::PodfenceSvc,
        PathKind::KubeProxy,
    ] {
        let mut points: Vec<(f64, f64)> = s
            .iter()
            .filter(|x| x.case.path == path)
            .map(|x| (x.case.policies.max(1) as f64, x.mpps))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if points.len() > 1 {
            lines.push(Series {
                label: path.name().to_owned(),
                points,
            });
        }
    }
    let references: Vec<(String, f64)> = [PathKind::ForwardAll, PathKind::Kernel, PathKind::Direct]
        .into_iter()
        .filter_map(|p| {
            headline(s, p, o.policies).map(|x| (format!("{} (no policy)", p.name()), x.mpps))
        })
        .collect();
    let rate_svg = "veth-rate-vs-policies.svg";
    let rate = (!lines.is_empty()).then_some(rate_svg);
    if rate.is_some() {
        plot::rate_vs_policies(
            &dir.join(rate_svg),
            "Packet rate against policy count (64-byte packets, veth, copy mode)",
            &lines,
            &references,
        )?;
    }
    // Latency by percentile at the headline count.
    let lat_lines: Vec<Series> = PathKind::ALL
        .into_iter()
        .filter_map(|p| headline(s, p, o.policies))
        .filter_map(|x| {
            x.latency_ns
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| Series {
                    label: x.case.path.name().to_owned(),
                    points: percentile_curve(h),
                })
        })
        .collect();
    let lat_svg = "veth-latency.svg";
    let latency = (!lat_lines.is_empty()).then_some(lat_svg);
    if latency.is_some() {
        plot::latency_by_percentile(
            &dir.join(lat_svg),
            &format!(
                "One-way latency at {} kpps",
                o.latency_rate.map_or(0.0, |r| r / 1e3)
            ),
            &lat_lines,
        )?;
    }
    Ok(Charts {
        rate,
        latency,
        references,
    })
}

fn header(md: &mut String, main: &VethReport, s: &[Summary], command: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let spec = &main.spec;
    let o = &main.options;
    let _ = writeln!(
        md,
        "# veth benchmark: podfence against the kernel and nftables\n"
    );
    let _ = writeln!(
        md,
        "Generated by `{command}` (see [../benchmarks.md](../benchmarks.md) for how to read it and what limits it).\n"
    );
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(
        md,
        "- load average before / after the main run: {:.2} / {:.2}; other processes used at most {:.2} CPUs and the hypervisor stole at most {:.2} CPUs during any run",
        main.load.0,
        main.load.1,
        s.iter().map(|x| x.cpus_foreign).fold(0.0, f64::max),
        s.iter().map(|x| x.cpus_stolen).fold(0.0, f64::max),
    );
    let _ = writeln!(
        md,
        "- traffic: {}-byte packets on the wire (TCP segments {} bytes), {} flows, {:.0} % TCP, {:.1} % of the flows to a port policy denies; generator pod {} → sink pod {}",
        spec.wire_size,
        spec.frame_len(true) + 4,
        spec.flows,
        100.0 * spec.tcp_share,
        100.0 * spec.actual_deny_share(),
        spec.src,
        spec.dst
    );
    let _ = writeln!(
        md,
        "- veth pairs, native XDP, AF_XDP in {} mode, {} queue(s) and worker(s); generator on core(s) {}, sink on core {}, podfence's worker w on core w; the kernel's receive processing of the generator's veth (RPS) on core {}",
        if main.zero_copy { "zero-copy" } else { "copy" },
        o.queues,
        o.gen_cores
            .iter()
            .map(|&c| if c == usize::MAX { cpus - 1 } else { c % cpus }.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        o.sink_core.map_or("any".into(), |c| (c % cpus).to_string()),
        o.rps_core
            .map_or("of the generator".into(), |c| (c % cpus).to_string()),
    );
    let _ = writeln!(
        md,
        "- {} rounds, paths in alternating order; per path and round: {:.1} s warm-up, {:.1} s flat out, {:.1} s at {:.0} % of that rate (no-loss check), {:.1} s at {} kpps (latency)",
        o.rounds,
        o.warmup.as_secs_f64(),
        o.throughput.as_secs_f64(),
        o.check.as_secs_f64(),
        100.0 * o.no_loss_fraction.unwrap_or(0.0),
        o.check.as_secs_f64(),
        o.latency_rate.map_or(0.0, |r| r / 1e3)
    );
    let _ = writeln!(
        md,
        "- policies: the synthetic cluster ({} pods, {} namespaces) with {} policies, plus two that allow the measured traffic (`zz-bench-*`, last in policy order; in the nftables chains the generator's rule is placed last)\n",
        o.pods, o.namespaces, o.policies
    );
}

fn all_paths(md: &mut String, main: &VethReport, s: &[Summary], charts: &Charts) {
    let o = &main.options;
    let spec = &main.spec;
    let _ = writeln!(
        md,
        "## All paths at {} policies, {} queue\n",
        o.policies, o.queues
    );
    main_table(md, main);
    let _ = writeln!(md);
    for (what, met, figure) in goals(s, o.policies) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "n/a",
        };
        let _ = writeln!(md, "- goal {what}: {verdict} — {figure}");
    }
    for x in s {
        if x.case.path.enforces() && x.case.policies == o.policies {
            let _ = writeln!(
                md,
                "- {}: {:.2} % of the packets dropped by policy (configured {:.2} %), {} packets of denied flows delivered",
                x.case.path.name(),
                100.0 * x.denied_observed,
                100.0 * spec.actual_deny_share(),
                x.received_denied
            );
        }
        let (lost, into, out) = x.check_lost;
        if lost > 0 && (!x.case.path.enforces() || x.case.policies == o.policies) {
            let _ = writeln!(
                md,
                "- {}, no-loss checks: {lost} packets lost; receive drops counted meanwhile by the veth into the path (its ring full, before any XDP program or the kernel saw the frames): {into}, by the sink's veth: {out}",
                x.case.path.name(),
            );
        }
    }
    for r in &main.results {
        if let (Some(rs), true) = (&r.ruleset, r.case.policies == o.policies) {
            let chains: Vec<String> = rs
                .chains
                .iter()
                .map(|(n, k)| format!("`{n}` {k}"))
                .collect();
            let _ = writeln!(
                md,
                "- {} ruleset: rules per chain {}; {} sets, {} elements",
                r.case.path.name(),
                chains.join(", "),
                rs.sets,
                rs.elements
            );
        }
    }
    if let Some(svg) = charts.latency {
        let _ = writeln!(md, "\n![latency by percentile]({svg})\n");
    }
}

fn scaling(md: &mut String, main: &VethReport, s: &[Summary], charts: &Charts, svg: &str) {
    let _ = writeln!(md, "\n## Against policy count\n");
    let mut counts: Vec<usize> = s
        .iter()
        .filter(|x| x.case.path.enforces())
        .map(|x| x.case.policies)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let _ = write!(md, "| path |");
    for c in &counts {
        let _ = write!(md, " {c} |");
    }
    let _ = writeln!(md);
    let _ = write!(md, "|---|");
    for _ in &counts {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md);
    for path in [
        PathKind::Podfence,
        PathKind::Nftables,
        PathKind::NftablesEst,
        PathKind::PodfenceSvc,
        PathKind::KubeProxy,
    ] {
        if !s.iter().any(|x| x.case.path == path) {
            continue;
        }
        let _ = write!(md, "| {} (Mpps) |", path.name());
        for c in &counts {
            let v = s
                .iter()
                .find(|x| x.case.path == path && x.case.policies == *c)
                .map_or("-".into(), |x| f3(x.mpps));
            let _ = write!(md, " {v} |");
        }
        let _ = writeln!(md);
    }
    for (label, v) in &charts.references {
        let _ = writeln!(md, "\n{label}: {v:.3} Mpps");
    }
    for r in &main.results {
        if let Some(rs) = &r.ruleset
            && r.case.path == PathKind::Nftables
        {
            let rules: usize = rs.chains.iter().map(|c| c.1).sum();
            let _ = writeln!(
                md,
                "\n- nftables ruleset at {} policies: {} rules in {} chains, {} sets, {} elements",
                r.case.policies,
                rules,
                rs.chains.len(),
                rs.sets,
                rs.elements
            );
        }
    }
    let _ = writeln!(md, "\n![rate against policy count]({svg})\n");
}

fn queue_counts(md: &mut String, reports: &[VethReport]) {
    let _ = writeln!(md, "\n## Queues and workers\n");
    let _ = writeln!(
        md,
        "| queues = workers | path | Mpps | lost at max | no-loss check | p99 µs | CPUs busy |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in reports {
        let rs = summaries(r);
        for path in PathKind::ALL {
            if let Some(x) = headline(&rs, path, r.options.policies) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1} % | {} | {} | {:.2} |",
                    r.options.queues,
                    path.name(),
                    f3(x.mpps),
                    100.0 * x.loss_at_max,
                    match (x.check_mpps, x.check_loss) {
                        (Some(rate), Some(l)) =>
                            format!("{:.3} % lost at {rate:.3} Mpps", 100.0 * l),
                        _ => "-".into(),
                    },
                    x.latency_us.map_or("-".into(), |l| format!("{:.1}", l.1)),
                    x.cpus_busy
                );
            }
        }
    }
}

/// Writes `dir/veth.md`, `dir/veth-rate-vs-policies.svg`,
/// `dir/veth-latency.svg` and `dir/veth.json`. `reports[0]` is the main run
/// (with the policy scaling); further ones are other queue counts. `command`
/// is the command line that produced them.
pub fn write(dir: &Path, reports: &[VethReport], command: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let main = reports.first().ok_or("no report")?;
    let s = summaries(main);
    let charts = charts(dir, &s, &main.options)?;
    let mut md = String::new();
    header(&mut md, main, &s, command);
    all_paths(&mut md, main, &s, &charts);
    if let Some(svg) = charts.rate {
        scaling(&mut md, main, &s, &charts, svg);
    }
    if reports.len() > 1 {
        queue_counts(&mut md, reports);
    }
    std::fs::write(dir.join("veth.md"), md).map_err(|e| format!("veth.md: {e}"))?;
    let mut json = super::report::json(main);
    if let Some(obj) = json.as_object_mut() {
        obj.insert("machine".into(), serde_json::json!(machine()));
        obj.insert("command".into(), serde_json::json!(command));
        let others: Vec<serde_json::Value> = reports[1..].iter().map(super::report::json).collect();
        obj.insert("other_queue_counts".into(), serde_json::json!(others));
    }
    std::fs::write(
        dir.join("veth.json"),
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| format!("veth.json: {e}"))
}
