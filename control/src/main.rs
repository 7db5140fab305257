//! The `podfence` command.
//!
//! Offline commands evaluate manifests without touching packets: `probe`
//! answers a list of connection attempts (a tab-separated contract other
//! tools read), `matrix` prints the upstream-style truth table and `explain`
//! says why one attempt is allowed or denied; `replay` runs captures through
//! the worker pipeline, or compares their verdicts under the current and a
//! candidate policy state. Exit status: 0 on success, 1 when the input
//! cannot be used (unreadable or invalid manifests, unknown pods, bad probe
//! lines, unreadable captures), 2 for command-line usage errors, 3 when
//! `replay --fail-on-break`/`--fail-on-open` finds such a change.

use std::io::{BufRead, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use podfence_control::agent::control_socket;
use podfence_control::compile::{CompileOptions, Compiled, compile};
use podfence_control::model::{Cluster, Protocol};
use podfence_control::probe::{self, Endpoint, Explanation, Probe};
use podfence_control::replay::{self, ReplayOptions};
use podfence_control::sources::manifests;
use podfence_datapath::wire::ip_proto;
use podfence_datapath::worker::MalformedAction;

#[derive(Parser, Debug)]
#[command(
    name = "podfence",
    version,
    about = "Kubernetes NetworkPolicy enforcement on an AF_XDP fast path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer connection attempts read as tab-separated `src dst proto port` lines.
    ///
    /// Writes each line's four columns plus `allow` or `deny`, in input order.
    /// `src`/`dst` are `namespace/pod` or `ext:IP`; blank lines and lines
    /// starting with `#` are skipped; columns after the fourth are ignored.
    Probe {
        #[command(flatten)]
        manifests: ManifestArgs,
        /// File of probes, `-` for standard input.
        #[arg(long, value_name = "FILE")]
        probes: PathBuf,
    },
    /// Print the reachability truth table: sources in rows, destinations in
    /// columns, `.` allowed and `X` denied, one table per protocol and port.
    Matrix {
        #[command(flatten)]
        manifests: ManifestArgs,
        /// Destination port (repeatable; default 80).
        #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
        /// Protocol: TCP, UDP or SCTP (repeatable; default TCP).
        #[arg(long = "proto", value_name = "P", value_parser = parse_protocol)]
        protocols: Vec<Protocol>,
        /// Also show an outside address as a source and a destination (repeatable).
        #[arg(long = "external", value_name = "IP")]
        externals: Vec<IpAddr>,
    },
    /// Explain the verdict on one connection attempt: which policies isolate
    /// the source for egress and the destination for ingress, and which rule
    /// allowed it or that none did.
    ///
    /// The four operands may follow the manifest paths directly, as in
    /// `podfence explain --manifests dir/ x/a y/b TCP 80`.
    Explain {
        /// Manifest files or directories, as for the other commands.
        #[arg(
            long,
            value_name = "PATH",
            num_args = 1..,
            required_unless_present = "agent",
            conflicts_with = "agent"
        )]
        manifests: Vec<PathBuf>,
        /// Ask the agent running on this node instead: the verdict of the
        /// tables in force (their generation is printed).
        #[arg(long)]
        agent: bool,
        /// The agent's control socket (`podfence run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = control_socket::DEFAULT_PATH)]
        socket: PathBuf,
        /// SRC DST PROTO PORT: `namespace/pod` or `ext:IP`, twice; TCP, UDP or
        /// SCTP (any case); the destination port.
        #[arg(value_name = "SRC DST PROTO PORT", num_args = 0..=4)]
        operands: Vec<String>,
    },
    /// Replay capture files (pcap, pcapng) through the worker pipeline.
    ///
    /// Stateful: replies of allowed connections pass, a packet that matches
    /// no connection is classified as a new one, flows that start
    /// mid-capture are picked up loosely. Prints a summary; a capture that
    /// cannot be read is reported and the others are still replayed (exit
    /// status 1).
    ///
    /// With --candidate or --delete-policy, a diff: the captures are
    /// replayed against the current manifests and against the candidate
    /// state, and every flow (source, destination, protocol, destination
    /// port) whose connections change verdict is listed, those that would
    /// break (allowed now, denied under the candidate) and those that would
    /// open, by number of connections, with the reason on each side. The
    /// candidate is an overlay: the current manifests, minus the policies
    /// --delete-policy names, plus the --candidate objects, which replace
    /// the current ones of the same kind, namespace and name and add the
    /// others. `--delete-policy '*/*' --candidate DIR` compares against
    /// exactly the policies in DIR.
    #[command(group(
        clap::ArgGroup::new("diff")
            .multiple(true)
            .args(["candidate", "delete_policy"])
    ))]
    Replay {
        #[command(flatten)]
        manifests: ManifestArgs,
        /// Capture files, replayed in this order as one trace. They may
        /// follow the manifest paths directly: trailing paths that are
        /// captures (by their first bytes, or a .pcap/.pcapng/.cap name) are
        /// taken as captures.
        #[arg(value_name = "CAPTURE")]
        captures: Vec<PathBuf>,
        /// Worker threads.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: u32,
        /// Write one line per flow: proto src_ip src_port dst_ip dst_port
        /// packets bytes verdict policy (tab-separated; src sent the first
        /// packet; verdict and policy are those of that packet).
        #[arg(long, value_name = "FILE", conflicts_with = "diff")]
        flows: Option<PathBuf>,
        /// Write one line per packet in capture order: index (from 1, across
        /// files) and allow, deny or malformed.
        #[arg(long, value_name = "FILE", conflicts_with = "diff")]
        packets: Option<PathBuf>,
        /// Write the packets that passed to this pcap file.
        #[arg(long, value_name = "FILE", conflicts_with = "diff")]
        write_allowed: Option<PathBuf>,
        /// Write the packets that were dropped (by policy, or malformed) to
        /// this pcap file.
        #[arg(long, value_name = "FILE", conflicts_with = "diff")]
        write_denied: Option<PathBuf>,
        /// Let frames that do not parse through instead of dropping them.
        #[arg(long)]
        pass_malformed: bool,
        /// Print the summary (or the diff) as JSON.
        #[arg(long)]
        json: bool,
        /// Diff: candidate manifest files or directories, overlaid on
        /// --manifests (same kind, namespace and name replaces, others are
        /// added).
        #[arg(long, value_name = "PATH", num_args = 1..)]
        candidate: Vec<PathBuf>,
        /// Diff: leave this NetworkPolicy of the current manifests out of the
        /// candidate (NAMESPACE/NAME; either part may be *; repeatable).
        #[arg(long = "delete-policy", value_name = "NAMESPACE/NAME")]
        delete_policy: Vec<replay::PolicyPattern>,
        /// Diff: exit with status 3 when any connection would break.
        #[arg(long, requires = "diff")]
        fail_on_break: bool,
        /// Diff: exit with status 3 when any connection would open.
        #[arg(long, requires = "diff")]
        fail_on_open: bool,
    },
    /// Enforce NetworkPolicy on this node's pods (root), from manifests or
    /// the Kubernetes API.
    ///
    /// Attaches the XDP redirector to each local pod's host-side veth (found
    /// through the kernel's /32 and /128 routes) and to the host-port pair
    /// pf-host/pf-dp, and routes the pods' addresses through it, until SIGINT
    /// or SIGTERM puts everything back. SIGHUP rereads manifests. With
    /// --kubeconfig or --in-cluster, nothing is enforced before every watch
    /// has listed once; changes are published as they come.
    Run(run_cmd::RunArgs),
    /// Show what the agent running on this node does: its pod interfaces,
    /// workers, table generation, counters, connection-table use and the
    /// policies that deny most.
    Status {
        /// The agent's control socket (`podfence run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = control_socket::DEFAULT_PATH)]
        socket: PathBuf,
        /// Print the agent's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ManifestArgs {
    /// Manifest files or directories: Namespaces, Pods and NetworkPolicies as
    /// YAML or JSON, e.g. `kubectl get ns,pods,netpol -A -o yaml`.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    manifests: Vec<PathBuf>,
}

mod run_cmd;

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s, true).ok_or_else(|| format!("'{s}' is not TCP, UDP or SCTP"))
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse().map_err(|e: probe::ProbeError| e.to_string())
}

/// The manifests and probe of `explain`: operands that `--manifests`
/// swallowed are taken back from the end of its list.
fn explain_operands(
    manifests: &mut Vec<PathBuf>,
    operands: Vec<String>,
) -> Result<Probe, clap::Error> {
    use clap::CommandFactory;
    let mut operands = operands;
    let missing = 4 - operands.len();
    if missing > 0 && manifests.len() > missing {
        let tail = manifests.split_off(manifests.len() - missing);
        let mut taken: Vec<String> = tail
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        taken.append(&mut operands);
        operands = taken;
    }
    let usage = |msg: String| {
        Cli::command()
            .bin_name("podfence")
            .find_subcommand_mut("explain")
            .expect("explain exists")
            .clone()
            .bin_name("podfence explain")
            .error(clap::error::ErrorKind::ValueValidation, msg)
    };
    let [src, dst, proto, port] = operands.as_slice() else {
        return Err(usage(
            "expected SRC DST PROTO PORT after the manifest paths".into(),
        ));
    };
    let src = parse_endpoint(src).map_err(&usage)?;
    let dst = parse_endpoint(dst).map_err(&usage)?;
    let protocol = parse_protocol(proto).map_err(&usage)?;
    let port = port
        .parse()
        .ok()
        .filter(|&p: &u16| p != 0)
        .ok_or_else(|| usage(format!("'{port}' is not a port (1-65535)")))?;
    Ok(Probe {
        src,
        dst,
        protocol,
        port,
    })
}

/// Whether `path` names a capture file: pcap or pcapng magic, or, for a
/// file that cannot be read, a capture file name.
fn is_capture(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) => matches!(
            u32::from_le_bytes(magic),
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 | 0x0a0d_0d0a
        ),
        Err(_) => path
            .extension()
            .is_some_and(|e| e == "pcap" || e == "pcapng" || e == "cap"),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Replay {
        manifests,
        candidate,
        captures,
        ..
    } = &mut cli.command
    {
        use clap::CommandFactory;
        // Captures may trail either list of manifest paths (each keeps one).
        for paths in [candidate, &mut manifests.manifests] {
            while paths.len() > 1 && paths.last().is_some_and(|p| is_capture(p)) {
                let p = paths.pop().expect("checked");
                captures.insert(0, p);
            }
        }
        if captures.is_empty() {
            let mut cmd = Cli::command().bin_name("podfence");
            let sub = cmd
                .find_subcommand_mut("replay")
                .expect("replay exists")
                .clone();
            sub.bin_name("podfence replay")
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "no capture files given",
                )
                .exit();
        }
    }
    if let Command::Explain {
        manifests,
        operands,
        ..
    } = &mut cli.command
    {
        match explain_operands(manifests, std::mem::take(operands)) {
            Ok(p) => *operands = vec![p.to_string()],
            Err(e) => e.exit(),
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Changes>() => {
            eprintln!("podfence: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("podfence: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `replay --fail-on-break`/`--fail-on-open` found such changes: exit
/// status 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Changes(String);

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_cmd::run(&args),
        Command::Probe { manifests, probes } => {
            let (cluster, compiled) = load(&manifests)?;
            run_probe(&cluster, &compiled, &probes)
        }
        Command::Matrix {
            manifests,
            ports,
            protocols,
            externals,
        } => {
            let (cluster, compiled) = load(&manifests)?;
            run_matrix(&cluster, &compiled, &ports, &protocols, &externals)
        }
        Command::Replay {
            manifests,
            captures,
            workers,
            flows,
            packets,
            write_allowed,
            write_denied,
            pass_malformed,
            json,
            candidate,
            delete_policy,
            fail_on_break,
            fail_on_open,
        } => {
            if !candidate.is_empty() || !delete_policy.is_empty() {
                return run_diff(&DiffArgs {
                    manifests: manifests.manifests,
                    candidate,
                    delete_policy,
                    captures,
                    workers: workers as usize,
                    malformed: if pass_malformed {
                        MalformedAction::Pass
                    } else {
                        MalformedAction::Drop
                    },
                    json,
                    fail_on_break,
                    fail_on_open,
                });
            }
            let (_, compiled) = load(&manifests)?;
            let options = ReplayArgs {
                captures,
                workers: workers as usize,
                flows,
                packets,
                write_allowed,
                write_denied,
                malformed: if pass_malformed {
                    MalformedAction::Pass
                } else {
                    MalformedAction::Drop
                },
                json,
            };
            run_replay(&compiled.tables, &options)
        }
        Command::Explain {
            operands,
            agent: true,
            socket,
            ..
        } => explain_live(&socket, &operands[0]),
        Command::Status { socket, json } => status(&socket, json),
        Command::Explain {
            manifests,
            operands,
            ..
        } => {
            let probe = Probe::from_line(&operands[0])?;
            let (cluster, compiled) = load(&ManifestArgs { manifests })?;
            let addresses = probe::resolve(&cluster, &probe)?;
            let verdict = compiled.tables.classify(
                addresses.0,
                addresses.1,
                probe.protocol.ip_protocol(),
                probe.port,
            );
            println!(
                "{}",
                Explanation {
                    probe: &probe,
                    addresses,
                    verdict,
                    tables: &compiled.tables,
                    cluster: &cluster,
                }
            );
            Ok(())
        }
    }
}

/// `explain --agent`: the running agent's answer.
fn explain_live(socket: &std::path::Path, probe: &str) -> Result<()> {
    let reply = control_socket::request(socket, &format!("explain {probe}"))
        .with_context(|| agent_unreachable(socket))?;
    if let Some(e) = reply.trim_end().strip_prefix("error: ") {
        anyhow::bail!("the agent says: {e}");
    }
    println!("{}", reply.trim_end());
    Ok(())
}

/// `status`: the running agent's answer, as JSON or in words.
fn status(socket: &std::path::Path, json: bool) -> Result<()> {
    let reply =
        control_socket::request(socket, "status").with_context(|| agent_unreachable(socket))?;
    if json {
        println!("{}", reply.trim_end());
        Ok(())
    } else {
        print_status(&reply)
    }
}

fn agent_unreachable(socket: &std::path::Path) -> String {
    format!(
        "no agent answers on {} (is `podfence run` running on this node, with this --control-socket?)",
        socket.display()
    )
}

/// `podfence status` in words.
fn print_status(reply: &str) -> Result<()> {
    let s: serde_json::Value =
        serde_json::from_str(reply).context("the agent's answer is not JSON")?;
    println!("table generation {}", s["generation"]);
    if s["starting"] == true {
        println!("starting: no pods served yet");
        return Ok(());
    }
    let list = |v: &serde_json::Value| -> String {
        let items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(" ")
        }
    };
    println!("workers {}", s["workers"]);
    println!("pod interfaces {}", list(&s["pod_interfaces"]));
    println!("pod addresses enforced {}", list(&s["adopted"]));
    println!(
        "local pod addresses not enforced (no route of their own) {}",
        list(&s["unrouted"])
    );
    let c = &s["counters"];
    println!(
        "packets {} received, {} allowed, {} denied, {} malformed; connections {} allowed, {} denied, {} revoked",
        c["rx_packets"],
        c["allowed_packets"],
        c["denied_packets"],
        c["malformed_packets"],
        c["connections_allowed"],
        c["connections_denied"],
        c["connections_revoked"]
    );
    if s["conntrack"].is_object() {
        println!(
            "conntrack {} of {} entries live",
            s["conntrack"]["live"], s["conntrack"]["capacity"]
        );
    }
    println!("top denying policies:");
    let top = s["top_denying_policies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if top.is_empty() {
        println!("  (none yet)");
    }
    for t in top {
        println!(
            "  {:>8}  {} {}",
            t["denied"],
            t["direction"].as_str().unwrap_or_default(),
            t["policy"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

fn load(args: &ManifestArgs) -> Result<(Cluster, Compiled)> {
    let m = manifests::load(&args.manifests).context("the manifests cannot be used")?;
    if !m.skipped.is_empty() {
        let kinds: Vec<String> = m.skipped.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        eprintln!(
            "podfence: note: skipped objects of other kinds: {}",
            kinds.join(", ")
        );
    }
    let compiled = compile(&m.cluster, &CompileOptions::default());
    for w in &compiled.warnings {
        eprintln!("podfence: warning: {w}");
    }
    Ok((m.cluster, compiled))
}

fn run_probe(cluster: &Cluster, compiled: &Compiled, path: &PathBuf) -> Result<()> {
    let name = if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot read probes from {name}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read probes from {name}"))?;
        let Some(parsed) = Probe::from_file_line(&line) else {
            continue;
        };
        match parsed.and_then(|p| probe::classify(cluster, &compiled.tables, &p).map(|v| (p, v))) {
            Ok(r) => results.push(r),
            Err(e) => errors.push(format!("{name}:{}: {e}", i + 1)),
        }
    }
    if !errors.is_empty() {
        bail!("{} bad probe line(s):\n{}", errors.len(), errors.join("\n"));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (p, v) in results {
        writeln!(
            out,
            "{p}\t{}",
            if v.is_allowed() { "allow" } else { "deny" }
        )?;
    }
    out.flush()?;
    Ok(())
}

fn run_matrix(
    cluster: &Cluster,
    compiled: &Compiled,
    ports: &[u16],
    protocols: &[Protocol],
    externals: &[IpAddr],
) -> Result<()> {
    let ports = if ports.is_empty() { &[80][..] } else { ports };
    let protocols = if protocols.is_empty() {
        &[Protocol::Tcp][..]
    } else {
        protocols
    };
    let mut endpoints = Vec::new();
    for pod in cluster.pods.values() {
        let e = Endpoint::Pod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        match probe::endpoint_addresses(cluster, &e) {
            Ok(_) => endpoints.push(e),
            Err(why) => eprintln!("podfence: note: left out: {why}"),
        }
    }
    endpoints.extend(externals.iter().map(|ip| Endpoint::External(*ip)));
    let names: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, &protocol) in protocols.iter().enumerate() {
        for (m, &port) in ports.iter().enumerate() {
            if n + m > 0 {
                writeln!(out)?;
            }
            writeln!(
                out,
                "{protocol}/{port}: rows are sources, columns destinations; . allowed, X denied"
            )?;
            writeln!(out, "-\t{}", names.join("\t"))?;
            for (src, name) in endpoints.iter().zip(&names) {
                let mut row = name.clone();
                for dst in &endpoints {
                    let probe = Probe {
                        src: src.clone(),
                        dst: dst.clone(),
                        protocol,
                        port,
                    };
                    let cell = match probe::classify(cluster, &compiled.tables, &probe) {
                        Ok(v) if v.is_allowed() => ".",
                        Ok(_) => "X",
                        Err(_) => "-",
                    };
                    row.push('\t');
                    row.push_str(cell);
                }
                writeln!(out, "{row}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

struct ReplayArgs {
    captures: Vec<PathBuf>,
    workers: usize,
    flows: Option<PathBuf>,
    packets: Option<PathBuf>,
    write_allowed: Option<PathBuf>,
    write_denied: Option<PathBuf>,
    malformed: MalformedAction,
    json: bool,
}

fn create(path: &std::path::Path) -> Result<BufWriter<std::fs::File>> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(BufWriter::new(f))
}

/// A progress bar on standard error (when it is a terminal), fed by the
/// byte counter replays add to.
struct Progress {
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar for `passes` replays of `captures`.
    fn new(captures: &[PathBuf], passes: u64) -> Self {
        use std::io::IsTerminal;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let total_bytes: u64 = captures
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let counter = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes * passes);
            let style = "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}";
            bar.set_style(indicatif::ProgressStyle::with_template(style).expect("valid template"));
            let (shown, progress, done) = (bar.clone(), counter.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    shown.set_position(progress.load(Ordering::Relaxed));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
            bar
        });
        Self { counter, done, bar }
    }

    fn finish(self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn run_replay(tables: &podfence_datapath::Tables, args: &ReplayArgs) -> Result<()> {
    let progress = Progress::new(&args.captures, 1);
    let want_verdicts =
        args.packets.is_some() || args.write_allowed.is_some() || args.write_denied.is_some();
    let options = ReplayOptions {
        workers: args.workers,
        keep_packet_verdicts: want_verdicts,
        record_flows: args.flows.is_some(),
        malformed: args.malformed,
        progress: Some(progress.counter.clone()),
        ..ReplayOptions::default()
    };
    let report = replay::replay(tables.clone(), &args.captures, &options);
    progress.finish();

    if let Some(path) = &args.flows {
        let mut out = create(path)?;
        for f in &report.flows {
            let addr = |a: u128| -> IpAddr {
                if f.key.ipv6 {
                    IpAddr::V6(a.into())
                } else {
                    IpAddr::V4((a as u32).into())
                }
            };
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                podfence_datapath::IpProtocol(f.key.protocol),
                addr(f.key.src),
                f.key.src_port,
                addr(f.key.dst),
                f.key.dst_port,
                f.packets,
                f.bytes,
                if f.allowed { "allow" } else { "deny" },
                replay::attribution(tables, f.verdict.as_ref()),
            )?;
        }
        out.flush()?;
    }
    if let Some(path) = &args.packets {
        let mut out = create(path)?;
        for (i, v) in report.packet_verdicts.iter().enumerate() {
            writeln!(out, "{}\t{}", i + 1, v.as_str())?;
        }
        out.flush()?;
    }
    if args.write_allowed.is_some() || args.write_denied.is_some() {
        let skipped = replay::write_by_verdict(
            &args.captures,
            &report.packet_verdicts,
            args.write_allowed.as_deref(),
            args.write_denied.as_deref(),
        )?;
        if skipped > 0 {
            eprintln!("podfence: note: {skipped} frames of a second link type were not written");
        }
    }
    print_summary(&report, args)?;
    for e in &report.errors {
        eprintln!("podfence: error: {}", e.error);
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} of {} capture file(s) could not be read completely",
            report.errors.len(),
            report.files
        )
    }
}

fn print_summary(report: &replay::ReplayReport, args: &ReplayArgs) -> Result<()> {
    let c = &report.counters;
    let mut out = std::io::stdout().lock();
    if args.json {
        let errors: Vec<String> = report.errors.iter().map(|e| e.error.to_string()).collect();
        let summary = serde_json::json!({
            "files": report.files,
            "packets": report.packets(),
            "flows": args.flows.is_some().then_some(report.flows.len()),
            "allowed": c.allowed,
            "denied": c.denied,
            "malformed": c.malformed,
            "not_ip": c.not_ip,
            "connections_allowed": c.new_allowed,
            "connections_denied": c.new_denied,
            "picked_up": c.picked_up,
            "fragments_orphaned": c.fragments_orphaned,
            "seconds": report.elapsed.as_secs_f64(),
            "mpps": report.mpps(),
            "errors": errors,
        });
        writeln!(out, "{summary}")?;
        return Ok(());
    }
    let malformed = if args.malformed == MalformedAction::Pass {
        "passed"
    } else {
        "dropped"
    };
    let rows: [(&str, String); 10] = [
        (
            "files",
            format!("{} ({} with errors)", report.files, report.errors.len()),
        ),
        ("packets", report.packets().to_string()),
        (
            "flows",
            if args.flows.is_some() {
                report.flows.len().to_string()
            } else {
                "not recorded (--flows FILE lists them)".to_owned()
            },
        ),
        ("allowed", c.allowed.to_string()),
        ("denied", c.denied.to_string()),
        ("malformed", format!("{} ({malformed})", c.malformed)),
        ("not IP", format!("{} (passed to the kernel)", c.not_ip)),
        (
            "connections",
            format!(
                "{} allowed ({} picked up mid-stream), {} denied",
                c.new_allowed, c.picked_up, c.new_denied
            ),
        ),
        ("time", format!("{:.3} s", report.elapsed.as_secs_f64())),
        (
            "rate",
            format!("{:.2} Mpps on {} worker(s)", report.mpps(), args.workers),
        ),
    ];
    for (k, v) in rows {
        writeln!(out, "{k:<12} {v}")?;
    }
    Ok(())
}

struct DiffArgs {
    manifests: Vec<PathBuf>,
    candidate: Vec<PathBuf>,
    delete_policy: Vec<replay::PolicyPattern>,
    captures: Vec<PathBuf>,
    workers: usize,
    malformed: MalformedAction,
    json: bool,
    fail_on_break: bool,
    fail_on_open: bool,
}

/// `replay --candidate`/`--delete-policy`: the captures under the current
/// and the candidate state, and the flows whose verdict changes.
fn run_diff(args: &DiffArgs) -> Result<()> {
    let current = manifests::load(&args.manifests).context("the manifests cannot be used")?;
    let candidate = replay::load_candidate(
        &args.manifests,
        &current,
        &args.candidate,
        &args.delete_policy,
    )?;
    let skipped: Vec<String> = current
        .skipped
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "podfence: note: skipped objects of other kinds: {}",
            skipped.join(", ")
        );
    }
    let skipped: Vec<String> = candidate
        .skipped
        .iter()
        .filter_map(|(k, n)| {
            let extra = n - current.skipped.get(k).copied().unwrap_or(0);
            (extra > 0).then(|| format!("{k} ×{extra}"))
        })
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "podfence: note: candidate: skipped objects of other kinds: {}",
            skipped.join(", ")
        );
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
        workers: args.workers,
        malformed: args.malformed,
        progress: Some(progress.counter.clone()),
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
    for e in &report.errors {
        eprintln!("podfence: error: {}", e.error);
    }
    if !report.errors.is_empty() {
        for f in &failing {
            eprintln!("podfence: {f}");
        }
        bail!(
            "{} of {} capture file(s) could not be read completely",
            report.errors.len(),
            report.files
        )
    }
    if failing.is_empty() {
        Ok(())
    } else {
        Err(Changes(failing.join("; ")).into())
    }
}

/// The changes `--fail-on-break`/`--fail-on-open` ask about that happened.
fn failing_changes(report: &replay::DiffReport, args: &DiffArgs) -> Vec<String> {
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
) -> Result<()> {
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
) -> Result<()> {
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
                "port": matches!(f.protocol, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
                    .then_some(f.port),
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
