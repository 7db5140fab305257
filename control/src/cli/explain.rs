//! `podfence explain`: why one connection attempt is allowed or denied, on
//! manifests or by the agent running on this node.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use clap::error::ErrorKind;
use podfence_control::agent::control_socket;
use podfence_control::probe::{self, Answer, Endpoint, Explanation, Probe, ServiceExplanation};

use super::{CliError, agent_unreachable, usage_error};

/// Explain the verdict on one connection attempt: which policies isolate
/// the source for egress and the destination for ingress, and which rule
/// allowed it or that none did.
///
/// A destination that is a Service (`svc:namespace/name` with a Service
/// port, or its ClusterIP as `ext:IP`) is explained per backend: policy
/// applies after Service translation, to each backend pod.
///
/// The four operands may follow the manifest paths directly, as in
/// `podfence explain --manifests dir/ x/a y/b TCP 80`.
#[derive(Args, Debug)]
pub(crate) struct ExplainArgs {
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
    /// SRC DST PROTO PORT: `namespace/pod` or `ext:IP`, twice (DST may also
    /// be `svc:namespace/name`); TCP, UDP or SCTP (any case); the
    /// destination port (a Service's port for a Service).
    #[arg(value_name = "SRC DST PROTO PORT", num_args = 0..=4)]
    operands: Vec<String>,
}

pub(crate) fn run(mut args: ExplainArgs) -> Result<(), CliError> {
    let probe = take_operands(&mut args.manifests, std::mem::take(&mut args.operands))?;
    if args.agent {
        return Ok(ask_agent(&args.socket, &probe)?);
    }
    let (cluster, compiled) = super::load(&args.manifests)?;
    let services = super::load_services(&cluster);
    let tables = &compiled.tables;
    match probe::answer(&cluster, tables, &services, &probe).map_err(anyhow::Error::from)? {
        Answer::Direct { addresses, verdict } => println!(
            "{}",
            Explanation {
                probe: &probe,
                addresses,
                verdict,
                tables,
                cluster: &cluster,
            }
        ),
        Answer::Service(answer) => println!(
            "{}",
            ServiceExplanation {
                probe: &probe,
                answer: &answer,
                tables,
                cluster: &cluster,
            }
        ),
    }
    Ok(())
}

/// The probe of the operands; operands that `--manifests` swallowed are
/// taken back from the end of its list.
fn take_operands(manifests: &mut Vec<PathBuf>, operands: Vec<String>) -> Result<Probe, CliError> {
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
    let usage = |msg: String| usage_error("explain", ErrorKind::ValueValidation, msg);
    let [src, dst, proto, port] = operands.as_slice() else {
        return Err(usage(
            "expected SRC DST PROTO PORT after the manifest paths".into(),
        ));
    };
    let endpoint = |s: &str| s.parse::<Endpoint>().map_err(|e| usage(e.to_string()));
    let src = endpoint(src)?;
    let dst = endpoint(dst)?;
    let protocol = probe::parse_protocol_arg(proto).map_err(usage)?;
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

/// `explain --agent`: the running agent's answer.
fn ask_agent(socket: &Path, probe: &Probe) -> anyhow::Result<()> {
    let reply = control_socket::request(socket, &format!("explain {probe}"))
        .with_context(|| agent_unreachable(socket))?;
    if let Some(e) = reply.trim_end().strip_prefix("error: ") {
        anyhow::bail!("the agent says: {e}");
    }
    println!("{}", reply.trim_end());
    Ok(())
}
