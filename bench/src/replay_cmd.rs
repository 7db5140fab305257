//! `podfence-bench replay`: `podfence replay` next to tcpdump and tshark on
//! one large generated capture (see `podfence_bench::replay_speed`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use podfence_bench::replay_speed::{self, Report, Row, Settings, Tool, Workload};
use podfence_bench::spread::Spread;
use podfence_bench::synthetic::Shape;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// Packets in the capture.
    #[arg(long, default_value_t = 4_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    packets: u64,
    /// Packets tshark reads: the first of the capture (it is slow).
    #[arg(long, default_value_t = 500_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    tshark_packets: u64,
    /// Rounds; in each, every tool runs once, in turn.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    #[command(flatten)]
    shape: crate::ShapeArgs,
    /// The podfence binary [default: `podfence` next to this program, where
    /// `cargo build --release` puts both].
    #[arg(long, value_name = "PATH")]
    podfence: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn note(message: &str) {
    eprintln!("podfence-bench replay: {message}");
}

pub(crate) fn run(args: &ReplayArgs) -> Result<(), String> {
    let podfence = match &args.podfence {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .with_file_name("podfence"),
    };
    // Before the minutes of generating: the one thing that cannot be left out.
    if !podfence.is_file() {
        return Err(replay_speed::Error::NoPodfence(podfence).to_string());
    }
    let shape = args.shape.shape();
    let shape = Shape {
        namespaces: shape.namespaces.max(1),
        pods: shape.pods.max(1),
        ..shape
    };
    note(&format!(
        "generating {} packets of traffic of {} pods, {} namespaces, {} policies",
        thousands(args.packets),
        thousands(shape.pods as u64),
        thousands(shape.namespaces as u64),
        thousands(shape.policies as u64),
    ));
    let start = Instant::now();
    let workload = Workload::generate(shape, args.packets).map_err(|e| e.to_string())?;
    note(&format!(
        "generated {} in {:.1} s",
        workload.capture().display(),
        start.elapsed().as_secs_f64()
    ));
    let settings = Settings {
        podfence,
        rounds: args.rounds as usize,
        tshark_packets: args.tshark_packets,
    };
    let report =
        replay_speed::measure(&workload, &settings, &mut note).map_err(|e| e.to_string())?;
    drop(workload);
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `n` with thin groups of three digits: 4,000,000.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 4 / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn print_table(r: &Report) {
    let m = &r.mix;
    println!(
        "podfence replay against tcpdump and tshark: {} packets of 64 bytes ({:.0} MB pcap), {} round(s)",
        thousands(m.packets),
        r.capture_bytes as f64 / 1e6,
        r.row(Tool::Podfence).times.len()
    );
    println!(
        "machine: {}, {} vCPUs, Linux {}",
        r.machine.cpu, r.machine.vcpus, r.machine.kernel
    );
    println!(
        "cluster: {} pods, {} namespaces, {} policies; traffic: {} connection attempts \
         ({:.0}% denied), {:.1}% of packets open a connection, {:.1}% denied; \
         TCP {:.0}%, UDP {:.0}%, SCTP {:.0}%",
        thousands(r.shape.pods as u64),
        thousands(r.shape.namespaces as u64),
        thousands(r.shape.policies as u64),
        thousands(m.connections),
        percent(m.connections_denied, m.connections),
        percent(m.opening_packets, m.packets),
        percent(m.packets_denied, m.packets),
        percent(m.tcp_packets, m.packets),
        percent(m.udp_packets, m.packets),
        percent(m.sctp_packets, m.packets),
    );
    println!();
    println!(
        "{:<22} {:<40} {:>10}  {:<22} {:>8}  {:>11}",
        "tool",
        "what it does with every packet",
        "packets",
        "Mpps median (min–max)",
        "seconds",
        "vs podfence"
    );
    let base = Spread::of(&r.row(Tool::Podfence).mpps()).map_or(0.0, |s| s.median);
    let line = |label: &str, work: &str, packets: u64, mpps: &[f64], seconds: &[f64]| {
        let (Some(rate), Some(secs)) = (Spread::of(mpps), Spread::of(seconds)) else {
            println!("{label:<22} not installed");
            return;
        };
        println!(
            "{label:<22} {work:<40} {:>10}  {:<22} {:>8.3}  {:>10.2}×",
            thousands(packets),
            format!("{:.2} ({:.2}–{:.2})", rate.median, rate.min, rate.max),
            secs.median,
            rate.median / base,
        );
    };
    for row in &r.rows {
        line(
            row.tool.label(),
            row.tool.work(),
            row.packets,
            &row.mpps(),
            &row.seconds(),
        );
        if row.tool == Tool::Podfence {
            let own: Vec<f64> = r.summaries.iter().map(|s| s.seconds).collect();
            line(
                "  its own figure",
                "the pipeline alone, without start-up",
                row.packets,
                &r.podfence_own_mpps(),
                &own,
            );
        }
    }
    println!();
    println!(
        "Wall clock from spawn to exit, standard output to /dev/null; the tools take turns. \
         vs podfence: the median rate ÷ podfence replay's. podfence's own figure is the rate its \
         summary prints (loading and compiling the manifests left out)."
    );
}

fn row_json(row: &Row) -> Value {
    let mpps = row.mpps();
    let spread = Spread::of(&mpps);
    json!({
        "label": row.tool.label(),
        "installed": row.version.is_some(),
        "version": row.version,
        "packets": row.packets,
        "mpps": mpps,
        "seconds": row.seconds(),
        "median_mpps": spread.map(|s| s.median),
        "min_mpps": spread.map(|s| s.min),
        "max_mpps": spread.map(|s| s.max),
    })
}

fn to_json(r: &Report) -> Value {
    let median = |tool| Spread::of(&r.row(tool).mpps()).map(|s| s.median);
    let tools: serde_json::Map<String, Value> = r
        .rows
        .iter()
        .map(|row| (row.tool.key().to_owned(), row_json(row)))
        .collect();
    let m = &r.mix;
    let summaries: Vec<Value> = r
        .summaries
        .iter()
        .map(|s| {
            json!({"packets": s.packets, "allowed": s.allowed, "denied": s.denied,
                   "picked_up": s.picked_up, "seconds": s.seconds, "mpps": s.mpps})
        })
        .collect();
    json!({
        "packets": m.packets,
        "tshark_packets": r.row(Tool::Tshark).packets,
        "rounds": r.row(Tool::Podfence).times.len(),
        "capture_bytes": r.capture_bytes,
        "podfence_mpps": median(Tool::Podfence),
        "podfence_own_mpps": Spread::of(&r.podfence_own_mpps()).map(|s| s.median),
        "tcpdump_read_mpps": median(Tool::TcpdumpRead),
        "tcpdump_print_mpps": median(Tool::TcpdumpPrint),
        "tshark_mpps": median(Tool::Tshark),
        "tshark_read_mpps": median(Tool::TsharkRead),
        "tools": tools,
        "podfence_summaries": summaries,
        "tcpdump_count": r.tcpdump_count,
        "cluster": {"pods": r.shape.pods, "namespaces": r.shape.namespaces,
                    "policies": r.shape.policies},
        "traffic": {
            "connections": m.connections,
            "connections_denied": m.connections_denied,
            "packets_denied": m.packets_denied,
            "opening_packets": m.opening_packets,
            "tcp_packets": m.tcp_packets,
            "udp_packets": m.udp_packets,
            "sctp_packets": m.sctp_packets,
        },
        "machine": {"cpu": r.machine.cpu, "vcpus": r.machine.vcpus,
                    "kernel": r.machine.kernel},
    })
}
