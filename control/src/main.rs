//! The `podfence` command.
//!
//! Offline commands evaluate manifests without touching packets: `probe`
//! answers a list of connection attempts (a tab-separated contract other
//! tools read), `matrix` prints the upstream-style truth table and `explain`
//! says why one attempt is allowed or denied. Exit status: 0 on success, 1
//! when the input cannot be used (unreadable or invalid manifests, unknown
//! pods, bad probe lines), 2 for command-line usage errors.

use std::io::{BufRead, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use podfence_control::compile::{CompileOptions, Compiled, compile};
use podfence_control::model::{Cluster, Protocol};
use podfence_control::probe::{self, Endpoint, Explanation, Probe};
use podfence_control::sources::manifests;

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
        #[command(flatten)]
        manifests: ManifestArgs,
        /// SRC DST PROTO PORT: `namespace/pod` or `ext:IP`, twice; TCP, UDP or
        /// SCTP (any case); the destination port.
        #[arg(value_name = "SRC DST PROTO PORT", num_args = 0..=4)]
        operands: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct ManifestArgs {
    /// Manifest files or directories: Namespaces, Pods and NetworkPolicies as
    /// YAML or JSON, e.g. `kubectl get ns,pods,netpol -A -o yaml`.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    manifests: Vec<PathBuf>,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s, true).ok_or_else(|| format!("'{s}' is not TCP, UDP or SCTP"))
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse().map_err(|e: probe::ProbeError| e.to_string())
}

/// The manifests and probe of `explain`: operands that `--manifests`
/// swallowed are taken back from the end of its list.
fn explain_operands(
    manifests: &mut ManifestArgs,
    operands: Vec<String>,
) -> Result<Probe, clap::Error> {
    use clap::CommandFactory;
    let mut operands = operands;
    let missing = 4 - operands.len();
    if missing > 0 && manifests.manifests.len() > missing {
        let tail = manifests
            .manifests
            .split_off(manifests.manifests.len() - missing);
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

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Explain {
        manifests,
        operands,
    } = &mut cli.command
    {
        match explain_operands(manifests, std::mem::take(operands)) {
            Ok(p) => *operands = vec![p.to_string()],
            Err(e) => e.exit(),
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podfence: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
        Command::Explain {
            manifests,
            operands,
        } => {
            let probe = Probe::from_line(&operands[0])?;
            let (cluster, compiled) = load(&manifests)?;
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
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match Probe::from_line(&line)
            .and_then(|p| probe::classify(cluster, &compiled.tables, &p).map(|v| (p, v)))
        {
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
