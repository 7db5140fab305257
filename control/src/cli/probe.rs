//! `podfence probe`: answers a list of connection attempts, a
//! tab-separated contract other tools read.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use podfence_control::compile::Compiled;
use podfence_control::index::Cluster;
use podfence_control::probe::{self, Answer, Probe, ServiceTables};

use super::{CliError, ManifestArgs};

/// Answer connection attempts read as tab-separated `src dst proto port` lines.
///
/// Writes each line's four columns plus `allow` or `deny`, in input order.
/// `src`/`dst` are `namespace/pod` or `ext:IP`; `dst` may also be a Service,
/// `svc:namespace/name` (the port is the Service port). Blank lines and
/// lines starting with `#` are skipped; columns after the fourth are ignored.
///
/// Policy applies after Service translation: a destination that is a
/// Service (by name, or a ClusterIP and Service port given as `ext:IP`) is
/// answered `allow` only when it has a usable endpoint and every usable
/// backend is allowed; otherwise `deny`, with the reason on standard error
/// (`podfence explain` gives the verdict of each backend).
#[derive(Args, Debug)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// File of probes, `-` for standard input.
    #[arg(long, value_name = "FILE")]
    probes: PathBuf,
}

pub(crate) fn run(args: &ProbeArgs) -> Result<(), CliError> {
    let (cluster, compiled) = super::load(&args.manifests.manifests)?;
    let services = super::load_services(&cluster);
    answer(&cluster, &compiled, &services, &args.probes)?;
    Ok(())
}

/// Classifies every probe of `path`; answers nothing if a line is bad.
fn answer(
    cluster: &Cluster,
    compiled: &Compiled,
    services: &ServiceTables,
    path: &Path,
) -> anyhow::Result<()> {
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
        match parsed
            .and_then(|p| probe::answer(cluster, &compiled.tables, services, &p).map(|a| (p, a)))
        {
            Ok((p, a)) => results.push((i + 1, p, a)),
            Err(e) => errors.push(format!("{name}:{}: {e}", i + 1)),
        }
    }
    if !errors.is_empty() {
        bail!("{} bad probe line(s):\n{}", errors.len(), errors.join("\n"));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (line, p, a) in results {
        if let Answer::Service(s) = &a
            && !s.is_allowed()
        {
            eprintln!(
                "podfence: note: {name}:{line}: Service {} (frontend {}): {}; answered deny",
                s.service,
                s.frontend,
                s.summary()
            );
        }
        writeln!(
            out,
            "{p}\t{}",
            if a.is_allowed() { "allow" } else { "deny" }
        )?;
    }
    out.flush()?;
    Ok(())
}
