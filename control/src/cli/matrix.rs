//! `podfence matrix`: the upstream-style reachability truth table of
//! manifests, one table per protocol and port.

use std::io::{BufWriter, Write};
use std::net::IpAddr;

use clap::Args;
use podfence_control::compile::Compiled;
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{self, Endpoint, Probe, ServiceTables};

use super::{CliError, ManifestArgs};

/// Print the reachability truth table: sources in rows, destinations in
/// columns, `.` allowed and `X` denied, one table per protocol and port.
///
/// With `--services` (or `--service`), Services are destination columns
/// too, `svc:namespace/name`: the table's port is the Service port, and a
/// cell is `.` when the Service has a usable backend and every one is
/// allowed, `X` otherwise, `-` when the Service has no such port.
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
    /// Also show every Service podfence translates as a destination column,
    /// answered per backend after Service translation.
    #[arg(long)]
    services: bool,
    /// Also show this Service as a destination column (repeatable):
    /// `svc:NAMESPACE/NAME` or `NAMESPACE/NAME`.
    #[arg(long = "service", value_name = "NS/NAME", value_parser = parse_service)]
    service: Vec<Endpoint>,
}

fn parse_service(s: &str) -> Result<Endpoint, String> {
    let text = if s.starts_with("svc:") {
        s.to_owned()
    } else {
        format!("svc:{s}")
    };
    text.parse()
        .map_err(|_| format!("'{s}' is not a Service (expected NAMESPACE/NAME)"))
}

pub(crate) fn run(args: &MatrixArgs) -> Result<(), CliError> {
    let (cluster, compiled) = super::load(&args.manifests.manifests)?;
    let mut columns = Vec::new();
    if args.services {
        columns.extend(
            cluster
                .services
                .values()
                .filter(|s| s.is_proxied())
                .map(|s| Endpoint::Service {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                }),
        );
    }
    for s in &args.service {
        if !columns.contains(s) {
            columns.push(s.clone());
        }
    }
    let services = if columns.is_empty() {
        None
    } else {
        Some((super::load_services(&cluster), columns))
    };
    print_matrix(
        &cluster,
        &compiled,
        &args.ports,
        &args.protocols,
        &args.externals,
        services.as_ref(),
    )?;
    Ok(())
}

fn print_matrix(
    cluster: &Cluster,
    compiled: &Compiled,
    ports: &[u16],
    protocols: &[Protocol],
    externals: &[IpAddr],
    services: Option<&(ServiceTables, Vec<Endpoint>)>,
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
    let mut columns = endpoints.clone();
    if let Some((_, services)) = services {
        // An unknown or untranslated Service is an input error, as in
        // `probe`; a port it lacks is a `-` cell.
        for s in services {
            probe::service::translated_service(cluster, s)?;
        }
        columns.extend(services.iter().cloned());
    }
    let names: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let column_names: Vec<String> = columns.iter().map(ToString::to_string).collect();
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, &protocol) in protocols.iter().enumerate() {
        for (m, &port) in ports.iter().enumerate() {
            if n + m > 0 {
                writeln!(out)?;
            }
            writeln!(
                out,
                "{protocol}/{port}: rows are sources, columns destinations; . allowed, X denied{}",
                if services.is_some() {
                    "; svc: columns per backend after Service translation, - not a port of the Service"
                } else {
                    ""
                }
            )?;
            writeln!(out, "-\t{}", column_names.join("\t"))?;
            for (src, name) in endpoints.iter().zip(&names) {
                let mut row = name.clone();
                for dst in &columns {
                    let probe = Probe {
                        src: src.clone(),
                        dst: dst.clone(),
                        protocol,
                        port,
                    };
                    let verdict = match (dst, services) {
                        (Endpoint::Service { .. }, Some((tables, _))) => {
                            probe::answer(cluster, &compiled.tables, tables, &probe)
                                .map(|a| a.is_allowed())
                        }
                        _ => probe::classify(cluster, &compiled.tables, &probe)
                            .map(|v| v.is_allowed()),
                    };
                    let cell = match verdict {
                        Ok(true) => ".",
                        Ok(false) => "X",
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
