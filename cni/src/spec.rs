//! The parts of the CNI specification this plugin reads and writes, as
//! serde types: the network configuration a runtime passes on standard
//! input (with `prevResult` for a chained plugin), the result's interfaces
//! and addresses, errors, and the VERSION answer.
//!
//! Results of 0.3.x, 0.4.0 and 1.x differ in fields this plugin does not
//! read (0.3/0.4's `ips[].version`, 1.1's `routes[].mtu`…): it reads
//! `interfaces` and `ips`, which all of them have, and passes the result on
//! as it came.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Versions whose configuration this plugin accepts and whose results it
/// returns (a chained plugin's result is its `prevResult`, which the
/// runtime gives in the configuration's version).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest of [`SUPPORTED_VERSIONS`].
pub const LATEST_VERSION: &str = "1.1.0";

/// `major.minor.patch` as numbers, for comparing versions; what does not
/// parse is `(0, 0, 0)`.
#[must_use]
pub fn version_tuple(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/podfence/control.sock";

/// Error codes: 1–99 are the specification's, 100 and up the plugin's.
pub mod code {
    /// The configuration's `cniVersion` is not supported.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A configuration field has a value the plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// An environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading standard input failed.
    pub const IO_FAILURE: u32 = 5;
    /// The configuration is not valid JSON of the expected shape.
    pub const DECODE_FAILURE: u32 = 6;
    /// The configuration (or its `prevResult`) is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// The agent could not be reached: try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused (it could not enforce the pod in time, or does
    /// not know it).
    pub const AGENT_REFUSED: u32 = 100;
    /// CHECK: the pod is not enforced.
    pub const NOT_ENFORCED: u32 = 101;
}

/// What to do when the agent cannot enforce a pod being added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// ADD fails, so the pod does not start unenforced (the runtime
    /// retries).
    #[default]
    Closed,
    /// ADD succeeds and the pod runs unenforced until the agent adopts it.
    Open,
}

/// The network configuration of this plugin's entry in a conflist, as the
/// runtime passes it (with `name` and `cniVersion` of the list).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The version of the configuration and of the result expected.
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// `podfence-cni`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's control socket.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// See [`FailMode`].
    #[serde(default)]
    pub fail_mode: FailMode,
    /// The previous plugin's result (ADD, CHECK; DEL when the runtime has
    /// it).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC (1.1): the attachments still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

/// An attachment still in use (GC).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Its container (sandbox) id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface in the container.
    #[serde(default)]
    pub ifname: String,
}

/// The fields of a result this plugin reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PrevResult {
    /// Interfaces the previous plugins created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses they assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

/// An interface of a result.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default)]
    pub mac: String,
    /// The network namespace it is in; empty for the host's.
    #[serde(default)]
    pub sandbox: String,
}

/// An address of a result.
#[derive(Clone, Debug, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length (`10.0.0.5/24`).
    pub address: String,
    /// The index in `interfaces` of the interface it is on.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Result<IpAddr, String> {
        let (addr, len) = self
            .address
            .split_once('/')
            .ok_or_else(|| format!("{:?} is not an address with a prefix length", self.address))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(len) if len <= max => Ok(ip),
            _ => Err(format!("{len:?} is not a prefix length of {ip}")),
        }
    }
}

/// A CNI error, as printed on standard output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{msg}: {details} (code {code})")]
pub struct Error {
    /// The version of the configuration, when it was read.
    pub cni_version: String,
    /// See [`code`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Why, in full.
    pub details: String,
}

impl Error {
    /// An error of `code` (its version set when printed).
    #[must_use]
    pub fn new(code: u32, msg: &str, details: impl Into<String>) -> Self {
        Self {
            cni_version: LATEST_VERSION.to_owned(),
            code,
            msg: msg.to_owned(),
            details: details.into(),
        }
    }
}

/// The answer to VERSION.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    /// The version of this answer.
    pub cni_version: String,
    /// [`SUPPORTED_VERSIONS`].
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chained_entry_reads_with_defaults() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"k8s","type":"podfence-cni",
                "runtimeConfig":{"x":1},
                "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24","interface":1}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(conf.fail_mode, FailMode::Closed);
        let prev: PrevResult = serde_json::from_value(conf.prev_result.unwrap()).unwrap();
        assert_eq!(
            prev.ips[0].ip().unwrap(),
            "10.1.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(prev.ips[0].interface, Some(1));
    }

    #[test]
    fn fail_modes_are_closed_or_open() {
        let mode = |m: &str| {
            serde_json::from_str::<NetConf>(&format!(
                r#"{{"cniVersion":"1.0.0","type":"podfence-cni","failMode":"{m}"}}"#
            ))
            .map(|c| c.fail_mode)
        };
        assert_eq!(mode("open").unwrap(), FailMode::Open);
        assert_eq!(mode("closed").unwrap(), FailMode::Closed);
        assert!(mode("sideways").is_err());
    }

    #[test]
    fn addresses_need_a_valid_prefix() {
        let ip = |a: &str| {
            IpConfig {
                address: a.into(),
                interface: None,
            }
            .ip()
        };
        assert!(ip("fd00::5/64").is_ok());
        assert!(ip("10.1.0.5").is_err());
        assert!(ip("10.1.0.5/33").is_err());
        assert!(ip("10.1.0/24").is_err());
    }

    #[test]
    fn errors_print_as_the_spec_says() {
        let e = Error::new(code::TRY_AGAIN_LATER, "no agent", "connect: refused");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"cniVersion": "1.1.0", "code": 11, "msg": "no agent", "details": "connect: refused"})
        );
    }
}
