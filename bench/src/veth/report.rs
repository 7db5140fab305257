//! Summaries of a veth run: the table, the JSON object, the markdown
//! report.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{Case, CaseResult, PathKind, Run, VethReport};
use crate::spread::Spread;

/// A case over all its rounds.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The case.
    pub case: Case,
    /// Rounds.
    pub rounds: usize,
    /// Median throughput (handled packets), Mpps.
    pub mpps: f64,
    /// Lowest and highest round.
    pub mpps_range: (f64, f64),
    /// Median offered rate of the throughput runs, Mpps.
    pub offered_mpps: f64,
    /// Median throughput in Gbit/s on the wire.
    pub gbps: f64,
    /// Median loss of the throughput runs (the generator outran the path).
    pub loss_at_max: f64,
    /// Median rate of the no-loss checks, Mpps.
    pub check_mpps: Option<f64>,
    /// Highest loss of the no-loss checks.
    pub check_loss: Option<f64>,
    /// Latency of the latency runs, all rounds together, microseconds:
    /// p50, p99, p999.
    pub latency_us: Option<(f64, f64, f64)>,
    /// The latency runs' rate, Mpps, and their highest loss.
    pub latency_rate: Option<(f64, f64)>,
    /// Median CPUs busy during the throughput runs.
    pub cpus_busy: f64,
    /// Highest CPUs used by other processes during any run of the case.
    pub cpus_foreign: f64,
    /// Highest steal during any run of the case, in CPUs.
    pub cpus_stolen: f64,
    /// Packets dropped by policy over packets sent, in the paced runs (the
    /// denied share as observed; the throughput run's when there are none).
    pub denied_observed: f64,
    /// Packets of denied flows that reached the sink, all runs.
    pub received_denied: u64,
    /// Out-of-order arrivals, all runs.
    pub reordered: u64,
    /// The merged latency histogram, nanoseconds.
    pub latency_ns: Option<Histogram<u64>>,
    /// In the no-loss checks: packets lost, and of them dropped by the veth
    /// into the path and by the sink's veth on receive (all rounds).
    pub check_lost: (u64, u64, u64),
    /// The same in the throughput runs.
    pub max_lost: (u64, u64, u64),
}

/// The median of `values` (0 when there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    Spread::of(&values).unwrap_or_default().median
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// Summarises one case.
#[must_use]
pub fn summarize(r: &CaseResult) -> Summary {
    let tp: Vec<&Run> = r.rounds.iter().map(|x| &x.throughput).collect();
    let mpps: Vec<f64> = tp.iter().map(|x| x.mpps()).collect();
    let mpps_spread = Spread::of(&mpps).unwrap_or_default();
    let checks: Vec<&Run> = r.rounds.iter().filter_map(|x| x.no_loss.as_ref()).collect();
    let lats: Vec<&Run> = r.rounds.iter().filter_map(|x| x.latency.as_ref()).collect();
    let mut merged: Option<Histogram<u64>> = None;
    for l in &lats {
        match &mut merged {
            None => merged = Some(l.latency_ns.clone()),
            Some(m) => {
                let _ = m.add(&l.latency_ns);
            }
        }
    }
    let paced: Vec<&Run> = checks.iter().chain(&lats).copied().collect();
    let observed_from = if paced.is_empty() { &tp } else { &paced };
    let sent: u64 = observed_from.iter().map(|x| x.sent).sum();
    let dropped: u64 = observed_from.iter().map(|x| x.policy_dropped).sum();
    let all = tp.iter().chain(&checks).chain(&lats);
    Summary {
        case: r.case,
        rounds: r.rounds.len(),
        mpps: mpps_spread.median,
        mpps_range: (mpps_spread.min, mpps_spread.max),
        offered_mpps: median(tp.iter().map(|x| x.offered_mpps())),
        gbps: median(tp.iter().map(|x| x.gbps())),
        loss_at_max: median(tp.iter().map(|x| x.loss())),
        check_mpps: (!checks.is_empty()).then(|| median(checks.iter().map(|x| x.offered_mpps()))),
        check_loss: (!checks.is_empty())
            .then(|| checks.iter().map(|x| x.loss()).fold(0.0, f64::max)),
        latency_us: merged
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| (us(h, 0.5), us(h, 0.99), us(h, 0.999))),
        latency_rate: (!lats.is_empty()).then(|| {
            (
                median(lats.iter().map(|x| x.offered_mpps())),
                lats.iter().map(|x| x.loss()).fold(0.0, f64::max),
            )
        }),
        cpus_busy: median(tp.iter().map(|x| x.cpus_busy)),
        cpus_foreign: all.clone().map(|x| x.cpus_foreign).fold(0.0, f64::max),
        cpus_stolen: all.clone().map(|x| x.cpus_stolen).fold(0.0, f64::max),
        denied_observed: dropped as f64 / sent.max(1) as f64,
        received_denied: all.clone().map(|x| x.received_denied).sum(),
        reordered: all.map(|x| x.reordered).sum(),
        latency_ns: merged,
        check_lost: lost_where(&checks),
        max_lost: lost_where(&tp),
    }
}

/// Packets lost, dropped by the veth into the path, by the sink's veth.
fn lost_where(runs: &[&Run]) -> (u64, u64, u64) {
    runs.iter().fold((0, 0, 0), |acc, r| {
        (
            acc.0 + r.lost(),
            acc.1 + r.veth_dropped_in,
            acc.2 + r.veth_dropped_out,
        )
    })
}

/// Every case summarised, in the report's order.
#[must_use]
pub fn summaries(report: &VethReport) -> Vec<Summary> {
    report.results.iter().map(summarize).collect()
}

/// The summary of `path` at the headline policy count (or its only count).
#[must_use]
pub fn headline(summaries: &[Summary], path: PathKind, policies: usize) -> Option<&Summary> {
    summaries
        .iter()
        .find(|s| s.case.path == path && (!path.enforces() || s.case.policies == policies))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The goals of the issue: (what, met, figure).
#[must_use]
pub fn goals(summaries: &[Summary], policies: usize) -> Vec<(String, Option<bool>, String)> {
    let get = |p| headline(summaries, p, policies);
    let mut out = Vec::new();
    let pf = get(PathKind::Podfence);
    for (one, other, goal, what) in [
        (
            PathKind::Podfence,
            PathKind::ForwardAll,
            0.9,
            "podfence >= 0.9 x forward-all",
        ),
        (
            PathKind::Podfence,
            PathKind::Nftables,
            1.0,
            "podfence >= 1.0 x nftables",
        ),
        (
            PathKind::PodfenceSvc,
            PathKind::KubeProxy,
            1.0,
            "podfence-svc >= 1.0 x kube-proxy",
        ),
    ] {
        if one == PathKind::PodfenceSvc && get(one).is_none() && get(other).is_none() {
            continue;
        }
        match (get(one), get(other)) {
            (Some(p), Some(o)) if o.mpps > 0.0 => {
                let ratio = p.mpps / o.mpps;
                out.push((
                    what.to_owned(),
                    Some(ratio >= goal),
                    format!("{ratio:.2} ({:.3} / {:.3} Mpps)", p.mpps, o.mpps),
                ));
            }
            _ => out.push((what.to_owned(), None, "not measured".into())),
        }
    }
    if let Some(p) = pf {
        match (p.check_loss, p.check_mpps) {
            (Some(loss), Some(rate)) => out.push((
                "podfence: no loss below the measured rate".to_owned(),
                Some(loss == 0.0),
                format!("{:.4}% lost at {rate:.3} Mpps", 100.0 * loss),
            )),
            _ => out.push((
                "podfence: no loss below the measured rate".to_owned(),
                None,
                "not checked".into(),
            )),
        }
    }
    out
}

/// The table's notes: goals, denied shares, rulesets, disturbances.
fn notes(t: &mut String, report: &VethReport, s: &[Summary]) {
    let spec = &report.spec;
    for (what, met, figure) in goals(s, report.options.policies) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        let _ = writeln!(t, "goal: {what}: {verdict} ({figure})");
    }
    for x in s {
        if x.case.path.enforces() {
            let _ = writeln!(
                t,
                "{} at {} policies: {:.2}% of the packets dropped by policy (configured {:.2}%), {} packets of denied flows delivered",
                x.case.path.name(),
                x.case.policies,
                100.0 * x.denied_observed,
                100.0 * spec.actual_deny_share(),
                x.received_denied
            );
        }
    }
    for x in s {
        let (lost, into, out) = x.check_lost;
        if lost > 0 {
            let _ = writeln!(
                t,
                "{} at {} policies, no-loss checks: {lost} packets lost; receive drops counted meanwhile by the veth into the path (its ring full, before any XDP program or the kernel saw the frames): {into}, by the sink's veth: {out}",
                x.case.path.name(),
                x.case.policies,
            );
        }
    }
    for r in &report.results {
        if let Some(rs) = &r.ruleset {
            let chains: Vec<String> = rs
                .chains
                .iter()
                .map(|(n, k)| format!("{n}: {k} rules"))
                .collect();
            let deep: Vec<String> = rs
                .deep
                .iter()
                .map(|(c, p, n)| format!("{c} rule {p} of {n}"))
                .collect();
            let _ = writeln!(
                t,
                "{} ruleset at {} policies: {}; {} sets, {} elements; the generator's rules: {}",
                r.case.path.name(),
                r.case.policies,
                chains.join(", "),
                rs.sets,
                rs.elements,
                deep.join(", ")
            );
        }
    }
    let foreign = s.iter().map(|x| x.cpus_foreign).fold(0.0, f64::max);
    let stolen = s.iter().map(|x| x.cpus_stolen).fold(0.0, f64::max);
    let _ = writeln!(
        t,
        "load average {:.2} before, {:.2} after; other processes used up to {foreign:.2} CPUs and the hypervisor stole up to {stolen:.2} CPUs during a run{}",
        report.load.0,
        report.load.1,
        if foreign > 0.05 {
            " (DISTURBED: rerun on a quiet machine)"
        } else {
            ""
        }
    );
}

/// The text table.
#[must_use]
pub fn table(report: &VethReport) -> String {
    let s = summaries(report);
    let o = &report.options;
    let mut t = String::new();
    let spec = &report.spec;
    let _ = writeln!(
        t,
        "{} -> {}: {}-byte packets, {} flows ({:.0}% TCP, {:.1}% to a denied port), {} queue(s), {} round(s) of {:.1} s, {} mode",
        spec.src,
        spec.dst,
        spec.wire_size,
        spec.flows,
        100.0 * spec.tcp_share,
        100.0 * spec.actual_deny_share(),
        o.queues,
        o.rounds,
        o.throughput.as_secs_f64(),
        if report.zero_copy {
            "zero-copy"
        } else {
            "copy"
        },
    );
    let pf = headline(&s, PathKind::Podfence, o.policies).map(|x| x.mpps);
    let _ = writeln!(
        t,
        "{:<13} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6}",
        "path",
        "policies",
        "Mpps",
        "Gbit/s",
        "loss@max",
        "check",
        "loss@chk",
        "p50 us",
        "p99 us",
        "p999 us",
        "CPUs",
        "/pf"
    );
    for x in &s {
        let (p50, p99, p999) = x
            .latency_us
            .map_or((None, None, None), |(a, b, c)| (Some(a), Some(b), Some(c)));
        let _ = writeln!(
            t,
            "{:<13} {:>8} {:>7.3} {:>7.3} {:>7.2}% {:>8} {:>8}% {:>8} {:>8} {:>9} {:>6.2} {:>6}",
            x.case.path.name(),
            if x.case.path.enforces() {
                x.case.policies.to_string()
            } else {
                "-".into()
            },
            x.mpps,
            x.gbps,
            100.0 * x.loss_at_max,
            opt(x.check_mpps, 3),
            opt(x.check_loss.map(|l| 100.0 * l), 3),
            opt(p50, 1),
            opt(p99, 1),
            opt(p999, 1),
            x.cpus_busy,
            pf.map_or("-".into(), |p| format!("{:.2}", x.mpps / p)),
        );
    }
    let _ = writeln!(
        t,
        "Mpps: delivered + dropped by policy per second, generator flat out (median of rounds); \
         check: paced at {:.0}% of that, loss there must be 0; latency: one-way at {} kpps; \
         /pf: rate relative to podfence at {} policies",
        100.0 * o.no_loss_fraction.unwrap_or(0.0),
        o.latency_rate
            .map_or("-".into(), |r| format!("{:.0}", r / 1e3)),
        o.policies
    );
    notes(&mut t, report, &s);
    t
}

/// The JSON object: per path at the headline policy count `<path>_mpps`,
/// `_gbps`, `_loss`, `_check_loss`, `_p50_us`, `_p99_us`, `_p999_us`,
/// `_cpus`; every case under `cases`.
#[must_use]
pub fn json(report: &VethReport) -> Value {
    let s = summaries(report);
    let o = &report.options;
    let mut top = serde_json::Map::new();
    let spec = &report.spec;
    top.insert("size".into(), json!(spec.wire_size));
    top.insert("flows".into(), json!(spec.flows));
    top.insert("tcp_share".into(), json!(spec.tcp_share));
    top.insert("deny_share".into(), json!(spec.actual_deny_share()));
    top.insert("queues".into(), json!(o.queues));
    top.insert("rounds".into(), json!(o.rounds));
    top.insert("policies".into(), json!(o.policies));
    top.insert("seconds".into(), json!(o.throughput.as_secs_f64()));
    top.insert("zero_copy".into(), json!(report.zero_copy));
    top.insert("latency_rate_pps".into(), json!(o.latency_rate));
    top.insert("load_before".into(), json!(report.load.0));
    top.insert("load_after".into(), json!(report.load.1));
    top.insert(
        "cpus_foreign_max".into(),
        json!(s.iter().map(|x| x.cpus_foreign).fold(0.0, f64::max)),
    );
    top.insert(
        "cpus_stolen_max".into(),
        json!(s.iter().map(|x| x.cpus_stolen).fold(0.0, f64::max)),
    );
    for path in PathKind::ALL {
        if let Some(x) = headline(&s, path, o.policies) {
            let k = path.key();
            top.insert(format!("{k}_mpps"), json!(x.mpps));
            top.insert(format!("{k}_gbps"), json!(x.gbps));
            top.insert(format!("{k}_loss"), json!(x.loss_at_max));
            top.insert(format!("{k}_check_loss"), json!(x.check_loss));
            top.insert(format!("{k}_cpus"), json!(x.cpus_busy));
            if let Some((a, b, c)) = x.latency_us {
                top.insert(format!("{k}_p50_us"), json!(a));
                top.insert(format!("{k}_p99_us"), json!(b));
                top.insert(format!("{k}_p999_us"), json!(c));
            }
        }
    }
    let goals: Vec<Value> = goals(&s, o.policies)
        .into_iter()
        .map(|(what, met, figure)| json!({"goal": what, "met": met, "figure": figure}))
        .collect();
    top.insert("goals".into(), json!(goals));
    let cases: Vec<Value> = s
        .iter()
        .map(|x| {
            json!({
                "path": x.case.path.name(),
                "policies": x.case.path.enforces().then_some(x.case.policies),
                "rounds": x.rounds,
                "mpps": x.mpps,
                "mpps_min": x.mpps_range.0,
                "mpps_max": x.mpps_range.1,
                "offered_mpps": x.offered_mpps,
                "gbps": x.gbps,
                "loss_at_max": x.loss_at_max,
                "check_mpps": x.check_mpps,
                "check_loss": x.check_loss,
                "p50_us": x.latency_us.map(|l| l.0),
                "p99_us": x.latency_us.map(|l| l.1),
                "p999_us": x.latency_us.map(|l| l.2),
                "cpus_busy": x.cpus_busy,
                "cpus_foreign_max": x.cpus_foreign,
                "cpus_stolen_max": x.cpus_stolen,
                "denied_observed": x.denied_observed,
                "received_denied": x.received_denied,
                "reordered": x.reordered,
                "check_lost": x.check_lost.0,
                "check_lost_in_veth_into_path": x.check_lost.1,
                "check_lost_in_sink_veth": x.check_lost.2,
                "max_lost": x.max_lost.0,
                "max_lost_in_veth_into_path": x.max_lost.1,
                "max_lost_in_sink_veth": x.max_lost.2,
            })
        })
        .collect();
    top.insert("cases".into(), json!(cases));
    Value::Object(top)
}

/// The latency histogram's percentile curve: (percentile, microseconds) at
/// percentiles 0 .. 99.999, for plots.
#[must_use]
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for q in [
        0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
    ] {
        out.push((q, h.value_at_quantile(q) as f64 / 1e3));
    }
    out
}
