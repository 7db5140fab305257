//! `podfence-cni`: a CNI plugin chained after the plugin that wires a pod
//! (ptp, kindnet, Calico-style routed plugins), so that the pod is enforced
//! by podfence from its first packet.
//!
//! ADD reads the pod's addresses and MAC from `prevResult` and its name
//! from `CNI_ARGS`, asks the agent over its control socket to adopt it, and
//! returns `prevResult` unchanged only once the agent says the pod is
//! enforced (tables compiled with its addresses and published, its veth's
//! port live in every worker, its addresses routed through the datapath).
//! When the agent cannot be reached or refuses, `failMode` decides: closed
//! fails ADD (the runtime retries), open returns `prevResult` and the
//! agent's reconcile adopts the pod once the API reports its address.
//!
//! DEL releases the pod; it succeeds when the agent is gone or never
//! adopted it. CHECK fails (closed) when the pod is not enforced. VERSION,
//! and STATUS and GC of spec 1.1, are answered too. A malformed
//! configuration or `prevResult` is a CNI error and nothing is asked of
//! the agent.

pub mod agent;
pub mod spec;

use std::collections::BTreeMap;
use std::net::IpAddr;

use agent::{Adopt, AgentError, Gc, PodRef};
use spec::{Error, FailMode, NetConf, PrevResult, VersionResult, code};

/// The `CNI_*` variables of one call.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
    pub args: String,
}

impl Invocation {
    /// The variables of this process's environment.
    #[must_use]
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn require(&self, name: &str, value: &str) -> Result<(), Error> {
        if value.is_empty() {
            return Err(Error::new(
                code::INVALID_ENVIRONMENT,
                "missing environment variable",
                format!("{name} must be set for {}", self.command),
            ));
        }
        Ok(())
    }

    fn pod(&self) -> Result<PodRef, Error> {
        let (Some(namespace), Some(name)) =
            (self.arg("K8S_POD_NAMESPACE"), self.arg("K8S_POD_NAME"))
        else {
            return Err(Error::new(
                code::INVALID_ENVIRONMENT,
                "not a Kubernetes pod",
                "CNI_ARGS must name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)",
            ));
        };
        Ok(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container_id: self.container_id.clone(),
        })
    }
}

/// What the process prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Standard output: a result, a VERSION answer, an error, or nothing.
    pub stdout: String,
    /// Standard error: notes for the runtime's log.
    pub stderr: String,
    /// Exit status 0.
    pub success: bool,
}

impl Output {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            success: true,
        }
    }

    fn error(mut error: Error, version: Option<&str>) -> Self {
        if let Some(v) = version {
            v.clone_into(&mut error.cni_version);
        }
        Self {
            stdout: serde_json::to_string(&error).expect("errors serialize"),
            stderr: String::new(),
            success: false,
        }
    }

    fn note(mut self, note: String) -> Self {
        self.stderr = note;
        self
    }
}

/// Runs one call: `invocation` from the environment, `stdin` the network
/// configuration.
#[must_use]
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Output {
    if invocation.command == "VERSION" {
        return version(stdin);
    }
    let conf = match parse_conf(stdin) {
        Ok(conf) => conf,
        Err((e, version)) => return Output::error(e, version.as_deref()),
    };
    let version = conf.cni_version.clone();
    let since = match invocation.command.as_str() {
        "CHECK" => (0, 4, 0),
        "STATUS" | "GC" => (1, 1, 0),
        _ => (0, 0, 0),
    };
    if spec::version_tuple(&version) < since {
        let e = Error::new(
            code::INCOMPATIBLE_VERSION,
            &format!("config version does not allow {}", invocation.command),
            format!(
                "{} needs cniVersion {}.{}.{} or later",
                invocation.command, since.0, since.1, since.2
            ),
        );
        return Output::error(e, Some(&version));
    }
    let result = match invocation.command.as_str() {
        "ADD" => add(invocation, &conf),
        "DEL" => del(invocation, &conf),
        "CHECK" => check(invocation, &conf),
        "STATUS" => status(&conf),
        "GC" => gc(&conf),
        other => Err(Error::new(
            code::INVALID_ENVIRONMENT,
            "unknown command",
            format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
        )),
    };
    result.unwrap_or_else(|e| Output::error(e, Some(&version)))
}

fn version(stdin: &[u8]) -> Output {
    #[derive(serde::Deserialize)]
    struct Asked {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let asked = serde_json::from_slice::<Asked>(stdin)
        .ok()
        .and_then(|a| a.cni_version)
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()));
    let answer = VersionResult {
        cni_version: asked.unwrap_or_else(|| spec::LATEST_VERSION.to_owned()),
        supported_versions: spec::SUPPORTED_VERSIONS
            .iter()
            .map(|&v| v.to_owned())
            .collect(),
    };
    Output::ok(serde_json::to_string(&answer).expect("serializes"))
}

/// The configuration, or an error with the version to print it in.
fn parse_conf(stdin: &[u8]) -> Result<NetConf, (Error, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        let e = Error::new(
            code::DECODE_FAILURE,
            "the network configuration is not JSON",
            e.to_string(),
        );
        (e, None)
    })?;
    let version = value
        .get("cniVersion")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let conf: NetConf = serde_json::from_value(value).map_err(|e| {
        let e = Error::new(
            code::DECODE_FAILURE,
            "invalid network configuration",
            e.to_string(),
        );
        (e, version.clone())
    })?;
    if !spec::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        let e = Error::new(
            code::INCOMPATIBLE_VERSION,
            "unsupported cniVersion",
            format!(
                "{:?} is not one of {}",
                conf.cni_version,
                spec::SUPPORTED_VERSIONS.join(", ")
            ),
        );
        return Err((e, None));
    }
    Ok(conf)
}

/// The pod's addresses and MAC from `prevResult`: the addresses on the
/// container interface `ifname` (or every address when none names an
/// interface), and that interface's MAC.
fn pod_addresses(conf: &NetConf, ifname: &str) -> Result<(Vec<IpAddr>, Option<String>), Error> {
    let invalid = |details: String| Error::new(code::INVALID_CONFIG, "invalid prevResult", details);
    let Some(value) = &conf.prev_result else {
        return Err(Error::new(
            code::INVALID_CONFIG,
            "no prevResult",
            "podfence-cni must be chained after the plugin that wires the pod (ptp, kindnet, Calico…)",
        ));
    };
    let prev: PrevResult =
        serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?;
    let container = prev
        .interfaces
        .iter()
        .position(|i| !i.sandbox.is_empty() && i.name == ifname);
    let mut addresses = Vec::new();
    for ip in &prev.ips {
        if let Some(i) = ip.interface
            && i >= prev.interfaces.len()
        {
            return Err(invalid(format!(
                "ips[].interface {i} is not an index of interfaces"
            )));
        }
        if ip.interface.is_none() || ip.interface == container {
            addresses.push(ip.ip().map_err(invalid)?);
        }
    }
    if addresses.is_empty() {
        return Err(invalid(format!("no address on interface {ifname:?}")));
    }
    addresses.sort_unstable();
    addresses.dedup();
    let mac = container
        .map(|i| prev.interfaces[i].mac.clone())
        .filter(|m| !m.is_empty());
    Ok((addresses, mac))
}

/// `prevResult` as this plugin's result, in the configuration's version.
fn result(conf: &NetConf) -> String {
    let mut value = conf.prev_result.clone().unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "cniVersion".into(),
            serde_json::Value::String(conf.cni_version.clone()),
        );
    }
    value.to_string()
}

fn add(invocation: &Invocation, conf: &NetConf) -> Result<Output, Error> {
    invocation.require("CNI_CONTAINERID", &invocation.container_id)?;
    invocation.require("CNI_NETNS", &invocation.netns)?;
    invocation.require("CNI_IFNAME", &invocation.ifname)?;
    let (addresses, mac) = pod_addresses(conf, &invocation.ifname)?;
    let pod = invocation.pod();
    let asked = pod.clone().and_then(|pod| {
        let request = Adopt {
            pod,
            addresses,
            mac,
        };
        agent::ask(&conf.control_socket, "adopt", &request).map_err(|e| agent_error(&e))
    });
    match (asked, conf.fail_mode) {
        (Ok(_), _) => Ok(Output::ok(result(conf))),
        (Err(e), FailMode::Closed) => Err(e),
        (Err(e), FailMode::Open) => {
            let who = pod.map_or_else(
                |_| invocation.container_id.clone(),
                |p| format!("{}/{}", p.namespace, p.name),
            );
            Ok(Output::ok(result(conf)).note(format!(
                "podfence-cni: {who} starts unenforced (failMode open): {e}"
            )))
        }
    }
}

fn agent_error(e: &AgentError) -> Error {
    match e {
        AgentError::Unreachable { .. } => Error::new(
            code::TRY_AGAIN_LATER,
            "the podfence agent is not reachable",
            e.to_string(),
        ),
        AgentError::Refused(why) => Error::new(
            code::AGENT_REFUSED,
            "the podfence agent could not enforce the pod",
            why.clone(),
        ),
    }
}

fn del(invocation: &Invocation, conf: &NetConf) -> Result<Output, Error> {
    invocation.require("CNI_CONTAINERID", &invocation.container_id)?;
    let Ok(pod) = invocation.pod() else {
        // Nothing without a pod's name was ever adopted.
        return Ok(Output::ok(String::new()));
    };
    match agent::ask(&conf.control_socket, "release", &pod) {
        Ok(_) => Ok(Output::ok(String::new())),
        // A gone agent holds nothing; its next start adopts from the
        // cluster state alone.
        Err(e @ AgentError::Unreachable { .. }) => {
            Ok(Output::ok(String::new()).note(format!("podfence-cni: DEL without the agent: {e}")))
        }
        Err(e @ AgentError::Refused(_)) => Err(Error::new(
            code::TRY_AGAIN_LATER,
            "the podfence agent could not release the pod",
            e.to_string(),
        )),
    }
}

fn check(invocation: &Invocation, conf: &NetConf) -> Result<Output, Error> {
    invocation.require("CNI_CONTAINERID", &invocation.container_id)?;
    invocation.require("CNI_NETNS", &invocation.netns)?;
    invocation.require("CNI_IFNAME", &invocation.ifname)?;
    let (addresses, mac) = pod_addresses(conf, &invocation.ifname)?;
    let request = Adopt {
        pod: invocation.pod()?,
        addresses,
        mac,
    };
    match agent::ask(&conf.control_socket, "check", &request) {
        Ok(_) => Ok(Output::ok(String::new())),
        Err(e) if conf.fail_mode == FailMode::Open => Ok(Output::ok(String::new())
            .note(format!("podfence-cni: not enforced (failMode open): {e}"))),
        Err(e) => Err(Error::new(
            code::NOT_ENFORCED,
            "the pod is not enforced by podfence",
            e.to_string(),
        )),
    }
}

fn status(conf: &NetConf) -> Result<Output, Error> {
    match agent::ask(
        &conf.control_socket,
        "ping",
        &BTreeMap::<String, String>::new(),
    ) {
        Ok(_) => Ok(Output::ok(String::new())),
        Err(e) if conf.fail_mode == FailMode::Open => {
            Ok(Output::ok(String::new()).note(format!("podfence-cni: {e}")))
        }
        Err(e) => Err(Error::new(
            code::NOT_AVAILABLE,
            "the podfence agent is not ready to enforce new pods",
            e.to_string(),
        )),
    }
}

fn gc(conf: &NetConf) -> Result<Output, Error> {
    // Without the list nothing can be told stale: nothing is released.
    let Some(valid) = &conf.valid_attachments else {
        return Ok(Output::ok(String::new())
            .note("podfence-cni: GC without cni.dev/valid-attachments releases nothing".into()));
    };
    let request = Gc {
        valid_container_ids: valid.iter().map(|a| a.container_id.clone()).collect(),
    };
    match agent::ask(&conf.control_socket, "gc", &request) {
        Ok(_) => Ok(Output::ok(String::new())),
        Err(e @ AgentError::Unreachable { .. }) => {
            Ok(Output::ok(String::new()).note(format!("podfence-cni: GC without the agent: {e}")))
        }
        Err(e @ AgentError::Refused(_)) => Err(Error::new(
            code::TRY_AGAIN_LATER,
            "the podfence agent could not collect released pods",
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(command: &str) -> Invocation {
        Invocation {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args:
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=new;K8S_POD_INFRA_CONTAINER_ID=c1"
                    .into(),
        }
    }

    fn conf(prev: &str) -> NetConf {
        serde_json::from_str(&format!(
            r#"{{"cniVersion":"0.4.0","name":"n","type":"podfence-cni","controlSocket":"/nonexistent/podfence.sock","prevResult":{prev}}}"#
        ))
        .unwrap()
    }

    const PTP: &str = r#"{"cniVersion":"0.4.0",
        "interfaces":[{"name":"veth1","mac":"aa:aa:aa:aa:aa:01"},
                      {"name":"eth0","mac":"02:00:00:00:00:05","sandbox":"/run/netns/x"}],
        "ips":[{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1}],
        "dns":{}}"#;

    #[test]
    fn cni_args_name_the_pod() {
        let pod = invocation("ADD").pod().unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("x", "new"));
        let mut no_name = invocation("ADD");
        no_name.args = "K8S_POD_NAMESPACE=x;K8S_POD_NAME=".into();
        assert_eq!(no_name.pod().unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn the_container_interface_gives_addresses_and_mac() {
        let (addrs, mac) = pod_addresses(&conf(PTP), "eth0").unwrap();
        assert_eq!(addrs, ["10.1.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(mac.as_deref(), Some("02:00:00:00:00:05"));
    }

    #[test]
    fn a_malformed_prev_result_is_an_error() {
        for prev in [
            r#"{"ips":[]}"#,
            r#"{"ips":[{"address":"10.1.0.5"}]}"#,
            r#"{"ips":[{"address":"10.1.0.5/24","interface":3}]}"#,
            r#"{"ips":"10.1.0.5/24"}"#,
        ] {
            let e = pod_addresses(&conf(prev), "eth0").unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{prev}");
        }
    }

    #[test]
    fn without_the_agent_closed_fails_and_open_passes_prev_result_on() {
        let stdin = |mode: &str| {
            format!(
                r#"{{"cniVersion":"0.4.0","name":"n","type":"podfence-cni","failMode":"{mode}",
                    "controlSocket":"/nonexistent/podfence.sock","prevResult":{PTP}}}"#
            )
        };
        let closed = run(&invocation("ADD"), stdin("closed").as_bytes());
        assert!(!closed.success);
        let e: serde_json::Value = serde_json::from_str(&closed.stdout).unwrap();
        assert_eq!(e["code"], 11);
        assert_eq!(e["cniVersion"], "0.4.0");
        let open = run(&invocation("ADD"), stdin("open").as_bytes());
        assert!(open.success, "{open:?}");
        let prev: serde_json::Value = serde_json::from_str(PTP).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&open.stdout).unwrap(),
            prev
        );
        assert!(open.stderr.contains("x/new starts unenforced"));
        // DEL without an agent succeeds.
        assert!(run(&invocation("DEL"), stdin("closed").as_bytes()).success);
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let out = run(&invocation("VERSION"), br#"{"cniVersion":"0.3.1"}"#);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn bad_configurations_are_cni_errors() {
        for (stdin, code) in [
            ("not json", code::DECODE_FAILURE),
            (
                r#"{"cniVersion":"0.4.0","type":"podfence-cni","failMode":"maybe"}"#,
                code::DECODE_FAILURE,
            ),
            (
                r#"{"cniVersion":"9.9.9","type":"podfence-cni"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"podfence-cni"}"#,
                code::INVALID_CONFIG,
            ),
        ] {
            let out = run(&invocation("ADD"), stdin.as_bytes());
            assert!(!out.success);
            let e: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(e["code"], code, "{stdin}");
        }
    }
}
