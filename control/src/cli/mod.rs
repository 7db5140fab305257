//! The subcommands of `podfence`, one module each: its clap arguments and
//! its `run()`.
//!
//! Every `run()` answers with a [`CliError`] (`run`'s agent errors are
//! converted into one by `main`), so that the exit status is decided in one
//! place rather than by each command.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use podfence_control::compile::{CompileOptions, Compiled, compile};
use podfence_control::index::Cluster;
use podfence_control::probe::ServiceTables;
use podfence_control::sources::manifests;

pub(crate) mod explain;
pub(crate) mod matrix;
pub(crate) mod probe;
pub(crate) mod replay;
mod replay_diff;
pub(crate) mod run;
pub(crate) mod status;

/// Why a command failed, by exit status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The input cannot be used: unreadable or invalid manifests, unknown
    /// pods, bad probe lines, unreadable captures (exit status 1).
    #[error(transparent)]
    Input(#[from] anyhow::Error),
    /// The command line is wrong (exit status 2); clap's message.
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// `replay --fail-on-break`/`--fail-on-open` found such changes (exit
    /// status 3).
    #[error("{0}")]
    ChangesFound(String),
}

impl CliError {
    /// Prints the error as the command reports it and gives its exit status.
    pub(crate) fn report(&self) -> u8 {
        match self {
            Self::Input(e) => {
                eprintln!("podfence: error: {e:#}");
                1
            }
            Self::Usage(e) => {
                let _ = e.print();
                2
            }
            Self::ChangesFound(changes) => {
                eprintln!("podfence: {changes}");
                3
            }
        }
    }
}

/// A usage error of `podfence <subcommand>`, with that subcommand's usage line.
pub(crate) fn usage_error(
    subcommand: &str,
    kind: clap::error::ErrorKind,
    message: impl std::fmt::Display,
) -> CliError {
    let mut cli = crate::Cli::command().bin_name("podfence");
    let sub = cli
        .find_subcommand_mut(subcommand)
        .expect("the subcommand exists")
        .clone();
    CliError::Usage(
        sub.bin_name(format!("podfence {subcommand}"))
            .error(kind, message),
    )
}

#[derive(Args, Debug)]
pub(crate) struct ManifestArgs {
    /// Manifest files or directories: Namespaces, Pods and NetworkPolicies as
    /// YAML or JSON, e.g. `kubectl get ns,pods,netpol -A -o yaml`.
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub(crate) manifests: Vec<PathBuf>,
}

/// The manifests at `paths`, compiled; the note on skipped kinds and the
/// compiler's warnings and notices go to standard error.
pub(crate) fn load(paths: &[PathBuf]) -> anyhow::Result<(Cluster, Compiled)> {
    let m = manifests::load(paths).context("the manifests cannot be used")?;
    if let Some(note) = m.skipped_note() {
        eprintln!("podfence: note: {note}");
    }
    let compiled = compile(&m.cluster, &CompileOptions::default());
    for w in &compiled.warnings {
        eprintln!("podfence: warning: {w}");
    }
    for n in &compiled.notices {
        eprintln!("podfence: note: {n}");
    }
    Ok((m.cluster, compiled))
}

/// The manifests' Services compiled for offline probes (every pod's view,
/// see [`ServiceTables`]); the frontends left out go to standard error.
pub(crate) fn load_services(cluster: &Cluster) -> ServiceTables {
    let services = ServiceTables::compile(cluster);
    for w in &services.warnings {
        eprintln!("podfence: warning: {w}");
    }
    services
}

/// Why `status` or `explain --agent` got no answer.
pub(crate) fn agent_unreachable(socket: &Path) -> String {
    format!(
        "no agent answers on {} (is `podfence run` running on this node, with this --control-socket?)",
        socket.display()
    )
}
