//! `podfence matrix`: the upstream-style reachability truth table of
//! manifests, one table per protocol and port.

use std::io::{BufWriter, Write};
use std::net::IpAddr;

use clap::Args;
use podfence_control::compile::Compiled;
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{self, Endpoint, Probe};

use super::{CliError, ManifestArgs};

/// Print the reachability truth table: sources in rows, destinations in
/// columns, `.` allowed and `X` denied, one table per protocol and port.
#[derive(Args, Debug)]
pub(crate) struct MatrixArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// Destination port (repeatable; default 80).
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Protocol: TCP, UDP or SCTP (repeatable; default TCP).
    #[arg(long = "proto", value_name = "P", value_parser = probe::parse_protocol_arg)]
    protocols: Vec<Protocol>,
    /// Also show an outside address as a source and a destination (repeatable).
    #[arg(long = "external", value_name = "IP")]
    externals: Vec<IpAddr>,
}

pub(crate) fn run(args: &MatrixArgs) -> Result<(), CliError> {
    let (cluster, compiled) = super::load(&args.manifests.manifests)?;
    print_matrix(
        &cluster,
        &compiled,
        &args.ports,
        &args.protocols,
        &args.externals,
    )?;
    Ok(())
}

fn print_matrix(
    cluster: &Cluster,
    compiled: &Compiled,
    ports: &[u16],
    protocols: &[Protocol],
    externals: &[IpAddr],
) -> anyhow::Result<()> {
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
