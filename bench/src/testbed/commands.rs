//! The commands the testbed runs: `ip` (in a namespace) and sysctl writes.

use std::io;
use std::process::Command;

use super::netns::in_netns;
use super::{TestbedError, io_err};

pub(crate) fn run(args: &[&str]) -> Result<String, TestbedError> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| TestbedError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Adds veth pair `name`/`peer` in namespace `netns`, both ends with
/// `queues` transmit and receive queues, the peer moved to `peer_netns`
/// when given.
pub(crate) fn add_veth_pair(
    netns: &str,
    name: &str,
    peer: &str,
    peer_netns: Option<&str>,
    queues: u32,
) -> Result<(), TestbedError> {
    let q = queues.max(1).to_string();
    let mut args = vec![
        "link",
        "add",
        name,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ];
    if let Some(ns) = peer_netns {
        args.extend(["netns", ns]);
    }
    ip(netns, &args).map(|_| ())
}

pub(crate) fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<(), TestbedError> {
    in_netns(ns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        }
        Ok(())
    })
    .map_err(io_err(format!("sysctl in {ns}")))
}
