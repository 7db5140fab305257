//! A container runtime's side of CNI, for tests: runs a network
//! configuration list (a conflist) the way libcni does for containerd and
//! CRI-O, so that real plugins (Debian's `ptp` and `host-local`, then
//! `podfence-cni`) wire a pod as on a node.
//!
//! Per the specification's section on chaining:
//! - ADD runs the plugins in order; each gets its own object of the list
//!   with the list's `name` and `cniVersion`, and from the second on the
//!   previous plugin's result as `prevResult`. The last result is the
//!   list's, and is kept (as a runtime caches it) for DEL and CHECK;
//! - DEL runs them in reverse order, each with the kept result as
//!   `prevResult` (when there is one), and forgets it;
//! - CHECK runs them in order, each with the kept result;
//! - every call sets `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//!   `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`, passes the configuration on
//!   standard input, and reads a result or an error from standard output.
//!
//! Plugins run in the host network namespace given, as the runtime runs
//! them in the node's: a thread that has entered that namespace spawns
//! them. (Not `ip netns exec`: it also unshares a mount namespace and
//! mounts a sysfs before it execs, which no runtime does and which added
//! 1.3 ms to every plugin call quiet, several under load.)

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::testbed::in_netns;

/// A pod's attachment to a network.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox.
    pub container_id: String,
    /// `CNI_NETNS`: the path of its network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, as pairs.
    pub args: Vec<(String, String)>,
}

impl Attachment {
    /// A Kubernetes pod's attachment as the kubelet asks for it: `eth0`,
    /// with the pod's namespace, name and sandbox in `CNI_ARGS`.
    #[must_use]
    pub fn pod(namespace: &str, name: &str, container_id: &str, netns: &Path) -> Self {
        Self {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.to_owned()),
                ("K8S_POD_NAME".into(), name.to_owned()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.to_owned()),
            ],
        }
    }

    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// What a plugin printed and how it exited.
#[derive(Clone, Debug)]
pub struct PluginOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status 0.
    pub success: bool,
}

/// A CNI error a plugin printed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{plugin} {command} failed: code {code}: {msg}: {details}")]
pub struct PluginError {
    /// Its type.
    pub plugin: String,
    /// The command.
    pub command: String,
    /// The error's code.
    pub code: u64,
    /// Its message.
    pub msg: String,
    /// Its details.
    pub details: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin binary is in none of the directories.
    #[error("plugin {0} is not in CNI_PATH")]
    NotFound(String),
    /// The plugin could not be run.
    #[error("cannot run plugin {plugin}: {source}")]
    Exec {
        /// Its type.
        plugin: String,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin failed with a CNI error.
    #[error(transparent)]
    Plugin(Box<PluginError>),
    /// The plugin's output is not what the specification says.
    #[error("{plugin} {command}: unexpected output {stdout:?} (stderr {stderr:?})")]
    Output {
        /// Its type.
        plugin: String,
        /// The command.
        command: String,
        /// What it printed.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// The list's version has no such command.
    #[error("configuration version {version} does not support the {command} command")]
    Unsupported {
        /// The command.
        command: String,
        /// The list's version.
        version: String,
    },
    /// CHECK without a kept ADD result.
    #[error("no result kept for container {0}: ADD it first")]
    NoResult(String),
}

impl CniError {
    /// The plugin's error code, if a plugin failed with one.
    #[must_use]
    pub fn code(&self) -> Option<u64> {
        match self {
            Self::Plugin(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A configuration list: `name`, `cniVersion` and its plugins' objects.
#[derive(Clone, Debug)]
pub struct NetworkList {
    /// The network's name.
    pub name: String,
    /// The version of every configuration and result.
    pub cni_version: String,
    /// The plugins' objects, in order.
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// Reads a conflist.
    pub fn parse(conflist: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(conflist).map_err(|e| e.to_string())?;
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("conflist without {k}"))
        };
        Ok(Self {
            name: text("name")?,
            cni_version: text("cniVersion")?,
            plugins: v
                .get("plugins")
                .and_then(Value::as_array)
                .cloned()
                .ok_or("conflist without plugins")?,
        })
    }

    /// Plugin `i`'s configuration: its object with the list's name and
    /// version, and `prev_result` when given.
    #[must_use]
    pub fn config(&self, i: usize, prev_result: Option<&Value>) -> Value {
        let mut object: Map<String, Value> =
            self.plugins[i].as_object().cloned().unwrap_or_default();
        object.insert("name".into(), Value::String(self.name.clone()));
        object.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            object.insert("prevResult".into(), prev.clone());
        }
        Value::Object(object)
    }

    fn plugin_type(&self, i: usize) -> String {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// How an ADD went: each plugin's result, and how long each took.
#[derive(Clone, Debug, Default)]
pub struct Added {
    /// Every plugin's result, in the list's order (the last is the list's).
    pub results: Vec<Value>,
    /// Each plugin's ADD time, in the same order.
    pub times: Vec<Duration>,
}

/// The runtime: where plugins are, the host namespace they run in, and
/// the ADD results kept.
#[derive(Debug)]
pub struct Runtime {
    /// `CNI_PATH`: directories searched for plugins, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// The node's network namespace (by `ip netns` name).
    pub host_netns: String,
    results: HashMap<(String, String, String), Value>,
}

impl Runtime {
    /// A runtime running plugins from `bin_dirs` in `host_netns`.
    #[must_use]
    pub fn new(bin_dirs: Vec<PathBuf>, host_netns: &str) -> Self {
        Self {
            bin_dirs,
            host_netns: host_netns.to_owned(),
            results: HashMap::new(),
        }
    }

    fn key(list: &NetworkList, a: &Attachment) -> (String, String, String) {
        (list.name.clone(), a.container_id.clone(), a.ifname.clone())
    }

    /// ADD through the list; returns every plugin's result, the list's
    /// last. On failure nothing is kept (the runtime then calls DEL).
    pub fn add(&mut self, list: &NetworkList, a: &Attachment) -> Result<Vec<Value>, CniError> {
        let added = self.add_timed(list, a)?;
        self.keep(list, a, &added);
        Ok(added.results)
    }

    /// ADD through the list, keeping nothing, with each plugin's time.
    pub fn add_timed(&self, list: &NetworkList, a: &Attachment) -> Result<Added, CniError> {
        let mut added = Added::default();
        for i in 0..list.plugins.len() {
            let config = list.config(i, added.results.last());
            let started = Instant::now();
            let result = self.call(&list.plugin_type(i), "ADD", a, &config)?;
            added.times.push(started.elapsed());
            let Some(result) = result else {
                return Err(CniError::Output {
                    plugin: list.plugin_type(i),
                    command: "ADD".into(),
                    stdout: String::new(),
                    stderr: "ADD printed no result".into(),
                });
            };
            added.results.push(result);
        }
        Ok(added)
    }

    fn keep(&mut self, list: &NetworkList, a: &Attachment, added: &Added) {
        if let Some(last) = added.results.last() {
            self.results.insert(Self::key(list, a), last.clone());
        }
    }

    /// ADD of every pod of `pods`, `at_once` in flight at a time (a kubelet
    /// starting pods in parallel); `then` runs on the ADD's thread as soon
    /// as it returns (to probe the pod's first packets then). Returns how
    /// each went, in the order of `pods`; successes are kept for DEL.
    pub fn add_parallel(
        &mut self,
        list: &NetworkList,
        pods: &[Attachment],
        at_once: usize,
        then: impl Fn(usize, &Added) + Sync,
    ) -> Vec<Result<Added, CniError>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: std::sync::Mutex<Vec<(usize, Result<Added, CniError>)>> =
            std::sync::Mutex::new(Vec::with_capacity(pods.len()));
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..at_once.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(pod) = pods.get(i) else { break };
                        let added = this.add_timed(list, pod);
                        if let Ok(added) = &added {
                            then(i, added);
                        }
                        done.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((i, added));
                    }
                });
            }
        });
        let mut done = done
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        done.sort_by_key(|(i, _)| *i);
        for (i, added) in &done {
            if let Ok(added) = added {
                self.keep(list, &pods[*i], added);
            }
        }
        done.into_iter().map(|(_, added)| added).collect()
    }

    /// DEL through the list, in reverse order, each plugin with the kept
    /// result; the result is forgotten when every plugin succeeded.
    pub fn del(&mut self, list: &NetworkList, a: &Attachment) -> Result<(), CniError> {
        let key = Self::key(list, a);
        let kept = self.results.get(&key).cloned();
        for i in (0..list.plugins.len()).rev() {
            let config = list.config(i, kept.as_ref());
            self.call(&list.plugin_type(i), "DEL", a, &config)?;
        }
        self.results.remove(&key);
        Ok(())
    }

    /// CHECK through the list, each plugin with the kept result. Lists
    /// older than 0.4.0 have no CHECK (the runtime refuses, as libcni does).
    pub fn check(&self, list: &NetworkList, a: &Attachment) -> Result<(), CniError> {
        if ["0.1.0", "0.2.0", "0.3.0", "0.3.1"].contains(&list.cni_version.as_str()) {
            return Err(CniError::Unsupported {
                command: "CHECK".into(),
                version: list.cni_version.clone(),
            });
        }
        let kept = self
            .results
            .get(&Self::key(list, a))
            .ok_or_else(|| CniError::NoResult(a.container_id.clone()))?;
        for i in 0..list.plugins.len() {
            let config = list.config(i, Some(kept));
            self.call(&list.plugin_type(i), "CHECK", a, &config)?;
        }
        Ok(())
    }

    /// The result kept from `a`'s ADD.
    #[must_use]
    pub fn kept_result(&self, list: &NetworkList, a: &Attachment) -> Option<&Value> {
        self.results.get(&Self::key(list, a))
    }

    /// Runs one plugin: its result (`None` when it printed nothing), or its
    /// error.
    pub fn call(
        &self,
        plugin: &str,
        command: &str,
        a: &Attachment,
        config: &Value,
    ) -> Result<Option<Value>, CniError> {
        let out = self.run_plugin(plugin, command, a, config.to_string().as_bytes())?;
        let unexpected = || CniError::Output {
            plugin: plugin.to_owned(),
            command: command.to_owned(),
            stdout: out.stdout.clone(),
            stderr: out.stderr.clone(),
        };
        let printed: Option<Value> = if out.stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&out.stdout).map_err(|_| unexpected())?)
        };
        if out.success {
            return Ok(printed);
        }
        let error = printed.ok_or_else(unexpected)?;
        let field = |k: &str| {
            error
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(CniError::Plugin(Box::new(PluginError {
            plugin: plugin.to_owned(),
            command: command.to_owned(),
            code: error
                .get("code")
                .and_then(Value::as_u64)
                .ok_or_else(unexpected)?,
            msg: field("msg"),
            details: field("details"),
        })))
    }

    /// Runs one plugin with `stdin` as it is (for malformed input).
    pub fn run_plugin(
        &self,
        plugin: &str,
        command: &str,
        a: &Attachment,
        stdin: &[u8],
    ) -> Result<PluginOutput, CniError> {
        let binary = self
            .bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::NotFound(plugin.to_owned()))?;
        let cni_path = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let exec = |source| CniError::Exec {
            plugin: plugin.to_owned(),
            source,
        };
        let mut plugin_command = Command::new(&binary);
        plugin_command
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", a.cni_args())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = in_netns(&self.host_netns, || plugin_command.spawn()).map_err(exec)?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).map_err(exec)?;
        }
        let out = child.wait_with_output().map_err(exec)?;
        Ok(PluginOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        })
    }
}
