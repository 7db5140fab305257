//! The `podfence` command.
//!
//! Offline commands evaluate manifests without touching packets: `probe`
//! answers a list of connection attempts (a tab-separated contract other
//! tools read), `matrix` prints the upstream-style truth table and `explain`
//! says why one attempt is allowed or denied; `replay` runs captures through
//! the worker pipeline, or compares their verdicts under the current and a
//! candidate policy state. `run` is the agent; `status` asks it what it does.
//! Each subcommand lives in its own module of [`cli`].
//!
//! Exit status: 0 on success, 1 when the input cannot be used (unreadable or
//! invalid manifests, unknown pods, bad probe lines, unreadable captures), 2
//! for command-line usage errors, 3 when `replay --fail-on-break`/
//! `--fail-on-open` finds such a change.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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

// Each subcommand's help is the documentation of its arguments struct.
#[derive(Subcommand, Debug)]
enum Command {
    Probe(cli::probe::ProbeArgs),
    Matrix(cli::matrix::MatrixArgs),
    Explain(cli::explain::ExplainArgs),
    Replay(cli::replay::ReplayArgs),
    Run(Box<cli::run::RunArgs>),
    Status(cli::status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Probe(args) => cli::probe::run(&args),
        Command::Matrix(args) => cli::matrix::run(&args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Replay(args) => cli::replay::run(args),
        Command::Run(args) => cli::run::run(&args).map_err(cli::CliError::from),
        Command::Status(args) => cli::status::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.report()),
    }
}
