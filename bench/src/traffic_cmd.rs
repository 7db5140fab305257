//! `podfence-bench traffic`: the generator on its own, and the options that
//! shape traffic (shared with `podfence-bench veth`).

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::Args;
use podfence_bench::traffic::frames::TrafficSpec;
use podfence_bench::traffic::{SelfCheck, Wire, self_check};
use serde_json::json;

/// What the generator sends.
#[derive(Args, Clone, Debug)]
pub(crate) struct TrafficArgs {
    /// Packet size on the wire, FCS included (TCP segments are at least 70).
    #[arg(long, default_value_t = 64, value_name = "BYTES",
          value_parser = clap::value_parser!(u16).range(64..=1518))]
    pub(crate) size: u16,
    /// Flows (source ports), packets round robin over them.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub(crate) flows: u32,
    /// Share of flows that are TCP segments (the rest UDP).
    #[arg(long, default_value_t = 0.5, value_parser = share)]
    pub(crate) tcp_share: f64,
    /// Share of flows (and packets) sent to a port policy denies.
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub(crate) deny_share: f64,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a share between 0 and 1")),
    }
}

impl TrafficArgs {
    /// The spec between `src` and `dst` (MACs filled in by the caller).
    pub(crate) fn spec(&self, src: Ipv4Addr, dst: Ipv4Addr) -> TrafficSpec {
        let mut spec = TrafficSpec::new(src, dst);
        spec.wire_size = usize::from(self.size);
        spec.flows = self.flows;
        spec.tcp_share = self.tcp_share;
        spec.deny_share = self.deny_share;
        spec
    }
}

#[derive(Args, Debug)]
pub(crate) struct SelfCheckArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Queues (one generator thread and one sink socket each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    queues: u32,
    /// Core of the generator thread(s) (comma-separated; default: the last).
    #[arg(long, value_delimiter = ',')]
    gen_cores: Vec<usize>,
    /// Core of the sink (default: the first).
    #[arg(long, default_value_t = 0)]
    sink_core: usize,
    /// Send on this interface of the current namespace instead of a veth
    /// pair of the benchmark's own: a NIC port (needs --peer).
    #[arg(long, value_name = "IFACE", requires = "peer")]
    nic: Option<String>,
    /// With --nic: the interface the frames arrive at (the other port of a
    /// loopback cable, or the NIC at the cable's far end).
    #[arg(long, value_name = "IFACE", requires = "nic")]
    peer: Option<String>,
    /// With --nic: AF_XDP zero-copy `on` (fail if the driver has none),
    /// `off` (copy mode), or `auto` (what the driver offers).
    #[arg(long, default_value = "auto", value_parser = ["on", "off", "auto"])]
    zero_copy: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &SelfCheckArgs) -> Result<(), String> {
    let spec = args
        .traffic
        .spec(Ipv4Addr::new(10, 70, 0, 1), Ipv4Addr::new(10, 70, 0, 2));
    // Generator on the last core, sink on the first.
    let wire = match (&args.nic, &args.peer) {
        (Some(tx), Some(rx)) => Wire::Nic {
            tx: tx.clone(),
            rx: rx.clone(),
            zero_copy: match args.zero_copy.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            },
        },
        _ => Wire::Veth,
    };
    let r = self_check(
        &spec,
        &wire,
        args.queues,
        Duration::from_secs_f64(args.seconds.max(0.1)),
        &if args.gen_cores.is_empty() {
            vec![usize::MAX]
        } else {
            args.gen_cores.clone()
        },
        Some(args.sink_core),
    )
    .map_err(|e| e.to_string())?;
    print(&r, args);
    Ok(())
}

fn print(r: &SelfCheck, args: &SelfCheckArgs) {
    let mpps = |pps: f64| pps / 1e6;
    let rx = &r.direct_received;
    let rx_secs = rx
        .first_last_ns
        .map_or(0.0, |(a, b)| (b - a) as f64 / 1e9)
        .max(1e-9);
    let rx_pps = rx.received as f64 / r.direct_sent.elapsed.as_secs_f64().max(1e-9);
    let lost = r.direct_sent.sent.saturating_sub(rx.received);
    if args.json {
        println!(
            "{}",
            json!({
                "size": args.traffic.size,
                "flows": args.traffic.flows,
                "queues": args.queues,
                "zero_copy": r.zero_copy,
                "generator_into_drop_mpps": mpps(r.into_drop.pps()),
                "generator_into_drop_gbps": r.into_drop.wire_bytes as f64 * 8.0
                    / r.into_drop.elapsed.as_secs_f64() / 1e9,
                "direct_sent_mpps": mpps(r.direct_sent.pps()),
                "direct_received_mpps": mpps(rx_pps),
                "direct_lost": lost,
                "direct_reordered": rx.reordered,
                "direct_p50_us": rx.latency_us(0.5),
                "direct_p99_us": rx.latency_us(0.99),
                "direct_p999_us": rx.latency_us(0.999),
                "sink_busy_seconds": rx_secs,
            })
        );
        return;
    }
    println!(
        "{}-byte packets, {} flows, {:.0}% TCP, {} queue(s), {} mode",
        args.traffic.size,
        args.traffic.flows,
        100.0 * args.traffic.tcp_share,
        args.queues,
        if r.zero_copy { "zero-copy" } else { "copy" }
    );
    println!(
        "generator alone (peer drops in XDP)  {:7.3} Mpps  {:6.3} Gbit/s",
        mpps(r.into_drop.pps()),
        r.into_drop.wire_bytes as f64 * 8.0 / r.into_drop.elapsed.as_secs_f64() / 1e9
    );
    println!(
        "generator -> sink, sent              {:7.3} Mpps",
        mpps(r.direct_sent.pps())
    );
    println!(
        "                   received          {:7.3} Mpps  lost {lost} ({:.2}%), reordered {}",
        mpps(rx_pps),
        100.0 * lost as f64 / r.direct_sent.sent.max(1) as f64,
        rx.reordered
    );
    println!(
        "                   latency           p50 {:.1} us  p99 {:.1} us  p999 {:.1} us (at full rate: queueing included)",
        rx.latency_us(0.5),
        rx.latency_us(0.99),
        rx.latency_us(0.999)
    );
    println!(
        "                   sink rings        rx dropped {}, rx ring full {}, fill ring empty {}",
        rx.xsk.rx_dropped, rx.xsk.rx_ring_full, rx.xsk.rx_fill_ring_empty_descs
    );
}
