//! `podfence-bench matrix`: policy verdicts checked with real packets.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use podfence_bench::live::{LiveNode, LiveProbe, externals};
use podfence_bench::pod_services::{PodServices, probed_ports};
use podfence_control::agent::AgentOptions;
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{self, Endpoint, Probe};

#[derive(Args, Debug)]
pub(crate) struct MatrixArgs {
    /// Namespaces and pods (a cluster manifest).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// NetworkPolicies (and any further objects), files or directories.
    #[arg(long, value_name = "PATH", num_args = 0..)]
    manifests: Vec<PathBuf>,
    /// Probes, `src dst proto port` per line (`-`: standard input); the
    /// output is then that of `podfence probe`. Without it, every pod (and
    /// --external address) is probed from every other, and the output is
    /// the matrix the policies prescribe beside the one observed.
    #[arg(long, value_name = "FILE")]
    probes: Option<PathBuf>,
    /// Port of the matrix (repeatable; default 80).
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Protocol of the matrix (repeatable; default TCP).
    #[arg(long = "proto", value_name = "P", value_parser = probe::parse_protocol_arg)]
    protocols: Vec<Protocol>,
    /// An outside address to put in the matrix (repeatable).
    #[arg(long = "external", value_name = "IP")]
    externals: Vec<IpAddr>,
    /// How long a probe waits for an answer before it counts as denied.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    timeout_ms: u64,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// This node's name (pods elsewhere are peers only).
    #[arg(long)]
    node_name: Option<String>,
    /// Reach every pod target through a ClusterIP Service of its own, as
    /// upstream's e2e suite does: each pod gets (in memory) a Service
    /// `s-<pod>` in its namespace, with a port per probed protocol and port
    /// and an EndpointSlice holding that pod alone, ClusterIPs from
    /// 10.96.100.0/24 and fd00:96:100::/112; probes to a pod go to its
    /// ClusterIP, and the agent translates them (kube-proxy's rules are in
    /// the node too). The verdicts expected, and the output, are those of
    /// the pods themselves. Probes from `ext:` sources, and to `ext:`
    /// destinations, keep their addresses. SCTP goes through the Services
    /// too: the INIT is watched for at the backend pod.
    #[arg(long)]
    via_services: bool,
}

fn read_probes(path: &Path) -> Result<Vec<Probe>, String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    };
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| Some((i, Probe::from_file_line(line)?)))
        .map(|(i, parsed)| parsed.map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// Pods with addresses, then the outside addresses.
fn endpoints(cluster: &Cluster, externals: &[IpAddr]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = cluster
        .pods
        .values()
        .map(|p| Endpoint::Pod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        })
        .filter(|e| probe::endpoint_addresses(cluster, e).is_ok())
        .collect();
    out.extend(externals.iter().map(|&ip| Endpoint::External(ip)));
    out
}

/// Every endpoint to every endpoint, per protocol and port, in grid order.
fn all_pairs(grid: &[Endpoint], protocols: &[Protocol], ports: &[u16]) -> Vec<Probe> {
    let mut all = Vec::new();
    for &protocol in protocols {
        for &port in ports {
            for src in grid {
                all.extend(grid.iter().map(|dst| Probe {
                    src: src.clone(),
                    dst: dst.clone(),
                    protocol,
                    port,
                }));
            }
        }
    }
    all
}

/// Runs the live matrix; returns whether every probe matched its policy
/// verdict.
pub(crate) fn run(args: &MatrixArgs) -> Result<bool, Box<dyn std::error::Error>> {
    crate::log_to_stderr();
    let mut paths = vec![args.cluster.clone()];
    paths.extend(args.manifests.iter().cloned());
    let cluster = podfence_control::sources::manifests::load(&paths)?.cluster;
    let ports = if args.ports.is_empty() {
        vec![80]
    } else {
        args.ports.clone()
    };
    let protocols = if args.protocols.is_empty() {
        vec![Protocol::Tcp]
    } else {
        args.protocols.clone()
    };
    let grid = endpoints(&cluster, &args.externals);
    let probes = if let Some(path) = &args.probes {
        read_probes(path)?
    } else {
        all_pairs(&grid, &protocols, &ports)
    };
    let agent = AgentOptions {
        node_name: args.node_name.clone(),
        ..AgentOptions::default()
    };
    let testbed = externals(&probes);
    let services = if args.via_services {
        Some(PodServices::new(
            &cluster,
            &probed_ports(&probes),
            &testbed.external,
        )?)
    } else {
        None
    };
    let enforced = services
        .as_ref()
        .map_or_else(|| cluster.clone(), |s| s.with(&cluster));
    let started = Instant::now();
    let node = LiveNode::start(&enforced, &testbed, agent)?;
    let up = started.elapsed();
    let timeout = Duration::from_millis(args.timeout_ms);
    let via = |p: &Probe| services.as_ref().and_then(|s| s.via(p));
    let results = node.probe_via(&enforced, &probes, &via, timeout, args.parallel)?;
    let probing = started.elapsed().saturating_sub(up);
    let status = node.agent().status()?;
    node.stop()?;

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.probes.is_some() {
        for r in &results {
            writeln!(out, "{}\t{}", r.probe, verdict(r.observed))?;
        }
    } else {
        write_grids(&mut out, &grid, &results)?;
    }
    out.flush()?;
    let differ: Vec<&LiveProbe> = results
        .iter()
        .filter(|r| r.observed != r.expected)
        .collect();
    for r in &differ {
        eprintln!(
            "differs: {}: observed {} ({:?}), the policies say {}",
            r.probe,
            verdict(r.observed),
            r.outcome,
            verdict(r.expected)
        );
    }
    let through = services.as_ref().map_or_else(String::new, |s| {
        format!(
            ", {} through Services of their pods ({} connections translated)",
            probes.iter().filter(|p| s.via(p).is_some()).count(),
            status.counters.service_translated
        )
    });
    eprintln!(
        "podfence-bench matrix: {} probes{through}, {} differ from the policy verdict (testbed and agent up in {:.1} s, probes {:.1} s; datapath: {} packets, {} connections allowed, {} attempts denied)",
        results.len(),
        differ.len(),
        up.as_secs_f64(),
        probing.as_secs_f64(),
        status.counters.rx_packets,
        status.counters.new_allowed,
        status.counters.new_denied,
    );
    Ok(differ.is_empty())
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

/// One grid per protocol and port: the prescribed matrix, then the
/// observed one, side by side, endpoints numbered.
fn write_grids(
    out: &mut impl Write,
    grid: &[Endpoint],
    results: &[LiveProbe],
) -> std::io::Result<()> {
    let names: Vec<String> = grid.iter().map(ToString::to_string).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let numbers = (1..=grid.len()).fold(String::new(), |mut s, i| {
        let _ = write!(s, "{i:>3}");
        s
    });
    for (k, block) in results.chunks(grid.len() * grid.len()).enumerate() {
        let Some(first) = block.first() else { continue };
        if k > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "{}/{}: prescribed by the policies | observed live   (. allowed, X denied, ! differs)",
            first.probe.protocol, first.probe.port
        )?;
        writeln!(out, "{:width$}    {numbers}   |{numbers}", "")?;
        for (i, row) in block.chunks(grid.len()).enumerate() {
            let cell = |allowed: bool| if allowed { "  ." } else { "  X" };
            let prescribed: String = row.iter().map(|r| cell(r.expected)).collect();
            let observed: String = row
                .iter()
                .map(|r| {
                    if r.observed == r.expected {
                        cell(r.observed)
                    } else {
                        "  !"
                    }
                })
                .collect();
            writeln!(
                out,
                "{:>2} {:width$} {prescribed}   |{observed}",
                i + 1,
                names[i]
            )?;
        }
    }
    Ok(())
}
