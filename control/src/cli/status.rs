//! `podfence status`: what the agent running on this node does, from its
//! control socket.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use podfence_control::agent::control_socket;

use super::{CliError, agent_unreachable};

/// Show what the agent running on this node does: its pod interfaces,
/// workers, table generation, counters, connection-table use and the
/// policies that deny most.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The agent's control socket (`podfence run --control-socket`).
    #[arg(long, value_name = "PATH", default_value = control_socket::DEFAULT_PATH)]
    socket: PathBuf,
    /// Print the agent's JSON answer as it is.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &StatusArgs) -> Result<(), CliError> {
    Ok(status(&args.socket, args.json)?)
}

/// The running agent's answer, as JSON or in words.
fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let reply =
        control_socket::request(socket, "status").with_context(|| agent_unreachable(socket))?;
    if json {
        println!("{}", reply.trim_end());
        Ok(())
    } else {
        print_status(&reply)
    }
}

/// `podfence status` in words.
fn print_status(reply: &str) -> anyhow::Result<()> {
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
