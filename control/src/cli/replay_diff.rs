//! `podfence replay --candidate`/`--delete-policy`: the captures under the
//! current and the candidate policy state, and the flows whose verdict
//! changes, in words or as JSON.

use std::io::{BufWriter, Write};

use anyhow::{Context, anyhow};
use podfence_control::compile::{CompileOptions, compile};
use podfence_control::index::Cluster;
use podfence_control::replay::{self, ReplayOptions};
use podfence_control::sources::manifests;
use podfence_datapath::wire::ip_proto;

use super::CliError;
use super::replay::{Progress, ReplayArgs};

/// `replay --candidate`/`--delete-policy`: the captures under the current
/// and the candidate state, and the flows whose verdict changes.
pub(super) fn run(args: &ReplayArgs) -> Result<(), CliError> {
    let (report, failing) = diff(args)?;
    for e in &report.errors {
        eprintln!("podfence: error: {}", e.error);
    }
    if !report.errors.is_empty() {
        for f in &failing {
            eprintln!("podfence: {f}");
        }
        return Err(anyhow!(
            "{} of {} capture file(s) could not be read completely",
            report.errors.len(),
            report.files
        )
        .into());
    }
    if failing.is_empty() {
        Ok(())
    } else {
        Err(CliError::ChangesFound(failing.join("; ")))
    }
}

/// Replays both states and prints the diff; returns the report and the
/// changes `--fail-on-break`/`--fail-on-open` ask about that happened.
fn diff(args: &ReplayArgs) -> anyhow::Result<(replay::DiffReport, Vec<String>)> {
    let paths = &args.manifests.manifests;
    let current = manifests::load(paths).context("the manifests cannot be used")?;
    let candidate = replay::load_candidate(paths, &current, &args.candidate, &args.delete_policy)?;
    if let Some(note) = current.skipped_note() {
        eprintln!("podfence: note: {note}");
    }
    if let Some(note) = candidate.skipped_note_beyond(&current) {
        eprintln!("podfence: note: candidate: {note}");
    }
    let compiled = compile(&current.cluster, &CompileOptions::default());
    for w in &compiled.warnings {
        eprintln!("podfence: warning: {w}");
    }
    let compiled_candidate = compile(&candidate.cluster, &CompileOptions::default());
    for w in compiled_candidate
        .warnings
        .iter()
        .filter(|w| !compiled.warnings.contains(w))
    {
        eprintln!("podfence: warning: candidate: {w}");
    }
    let state = replay::StateChanges::between(&current.cluster, &candidate.cluster);

    let progress = Progress::new(&args.captures, 2);
    let options = ReplayOptions {
        workers: args.workers as usize,
        malformed: args.malformed(),
        progress: Some(progress.counter.clone()),
        // Both states replay the current Services: the candidate changes policy.
        services: podfence_control::compile::compile_services(
            &current.cluster,
            &podfence_control::compile::Locality::AllPods,
        )
        .table,
        ..ReplayOptions::default()
    };
    let report = replay::diff(
        &compiled.tables,
        &compiled_candidate.tables,
        &args.captures,
        &options,
    );
    progress.finish();

    let sides = DiffSides {
        names: replay::PodNames::new(&[&current.cluster, &candidate.cluster]),
        current: (&current.cluster, &compiled.tables),
        candidate: (&candidate.cluster, &compiled_candidate.tables),
    };
    if args.json {
        print_diff_json(&report, &state, &sides)?;
    } else {
        print_diff(&report, &state, &sides)?;
    }

    let failing = failing_changes(&report, args);
    Ok((report, failing))
}

/// The changes `--fail-on-break`/`--fail-on-open` ask about that happened.
fn failing_changes(report: &replay::DiffReport, args: &ReplayArgs) -> Vec<String> {
    let mut failing = Vec::new();
    for (asked, change) in [
        (args.fail_on_break, replay::Change::Break),
        (args.fail_on_open, replay::Change::Open),
    ] {
        let t = report.totals(change);
        if asked && t.connections > 0 {
            failing.push(format!(
                "{} connection(s) in {} flow(s) would {}",
                t.connections,
                t.flows,
                change.as_str()
            ));
        }
    }
    failing
}

/// What the diff's outputs name and explain flows with.
struct DiffSides<'a> {
    names: replay::PodNames,
    current: (&'a Cluster, &'a podfence_datapath::Tables),
    candidate: (&'a Cluster, &'a podfence_datapath::Tables),
}

impl DiffSides<'_> {
    /// Both sides' explanations of a flow.
    fn explain(&self, f: &replay::ChangedFlow) -> [Vec<String>; 2] {
        let side = |(cluster, tables), verdict: Option<&podfence_datapath::Verdict>| {
            f.explain(&self.names, cluster, tables, verdict)
        };
        [
            side(self.current, f.current.as_ref()),
            side(self.candidate, f.candidate.as_ref()),
        ]
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn totals_text(t: replay::ChangeTotals) -> String {
    format!(
        "{} ({}, {})",
        plural(t.flows, "flow", "flows"),
        plural(t.connections, "connection", "connections"),
        plural(t.packets, "packet", "packets")
    )
}

fn print_diff(
    report: &replay::DiffReport,
    state: &replay::StateChanges,
    sides: &DiffSides<'_>,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    writeln!(out, "candidate: {state}")?;
    for (change, heading) in [
        (
            replay::Change::Break,
            "would break (allowed now, denied under the candidate)",
        ),
        (
            replay::Change::Open,
            "would open (denied now, allowed under the candidate)",
        ),
    ] {
        let flows: Vec<&replay::ChangedFlow> = report
            .changes
            .iter()
            .filter(|f| f.change == change)
            .collect();
        if flows.is_empty() {
            writeln!(out, "{heading}: none")?;
            continue;
        }
        writeln!(out, "{heading}:")?;
        for f in flows {
            writeln!(
                out,
                "  {}, {}: {} (first packet {})",
                plural(f.connections, "connection", "connections"),
                plural(f.packets, "packet", "packets"),
                f.describe(&sides.names),
                f.first_packet
            )?;
            // Only what differs: a direction that allows on both sides did
            // not make the change.
            let [now, then] = sides.explain(f);
            let same_shape = now.len() == then.len();
            for (i, line) in now.iter().enumerate() {
                if !same_shape || then[i] != *line {
                    writeln!(out, "    current:   {line}")?;
                }
            }
            for (i, line) in then.iter().enumerate() {
                if !same_shape || now[i] != *line {
                    writeln!(out, "    candidate: {line}")?;
                }
            }
        }
    }
    let breaks = report.totals(replay::Change::Break);
    let opens = report.totals(replay::Change::Open);
    let changed = breaks.connections + opens.connections;
    writeln!(
        out,
        "summary: {} would break, {} would open; {} of {} unchanged; {} in {} ({} with errors)",
        totals_text(breaks),
        totals_text(opens),
        report.connections - changed,
        plural(report.connections, "connection", "connections"),
        plural(report.packets, "packet", "packets"),
        plural(report.files as u64, "capture file", "capture files"),
        report.errors.len()
    )?;
    out.flush()?;
    Ok(())
}

fn print_diff_json(
    report: &replay::DiffReport,
    state: &replay::StateChanges,
    sides: &DiffSides<'_>,
) -> anyhow::Result<()> {
    use serde_json::json;
    let totals = |t: replay::ChangeTotals| json!({"flows": t.flows, "connections": t.connections, "packets": t.packets});
    let changes: Vec<serde_json::Value> = report
        .changes
        .iter()
        .map(|f| {
            let [now, then] = sides.explain(f);
            let side = |verdict: Option<&podfence_datapath::Verdict>,
                        tables: &podfence_datapath::Tables,
                        explanation: Vec<String>| {
                let allowed = verdict.is_none_or(podfence_datapath::Verdict::is_allowed);
                json!({
                    "verdict": if allowed { "allow" } else { "deny" },
                    "policy": replay::attribution(tables, verdict),
                    "explanation": explanation,
                })
            };
            json!({
                "change": f.change.as_str(),
                "protocol": podfence_datapath::IpProtocol(f.protocol).to_string(),
                "src": f.src.to_string(),
                "src_pod": sides.names.pod(f.src),
                "dst": f.dst.to_string(),
                "dst_pod": sides.names.pod(f.dst),
                "port": matches!(f.protocol, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP).then_some(f.port),
                "connections": f.connections,
                "packets": f.packets,
                "bytes": f.bytes,
                "first_packet": f.first_packet,
                "current": side(f.current.as_ref(), sides.current.1, now),
                "candidate": side(f.candidate.as_ref(), sides.candidate.1, then),
            })
        })
        .collect();
    let breaks = report.totals(replay::Change::Break);
    let opens = report.totals(replay::Change::Open);
    let errors: Vec<String> = report.errors.iter().map(|e| e.error.to_string()).collect();
    let summary = json!({
        "files": report.files,
        "packets": report.packets,
        "connections": report.connections,
        "connections_unchanged": report.connections - breaks.connections - opens.connections,
        "candidate": {
            "policies_added": state.policies_added,
            "policies_changed": state.policies_changed,
            "policies_deleted": state.policies_deleted,
            "pods_changed": state.pods,
            "namespaces_changed": state.namespaces,
        },
        "would_break": totals(breaks),
        "would_open": totals(opens),
        "changes": changes,
        "seconds": report.elapsed.as_secs_f64(),
        "errors": errors,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    Ok(())
}
