//! Issue 14's measurements (`podfence-bench lifecycle`, root): what
//! podfence-cni adds to a pod's start, and the gap an agent upgrade leaves
//! in an open connection.
//!
//! Both run the real `podfence run` process in a testbed node on
//! manifests of a synthetic cluster (`synthetic::cluster`: other nodes'
//! pods and the policies, which the agent compiles) plus this node's pods:
//!
//! - **Pod start**: `pods` new pods (labels of synthetic pods, so policies
//!   select them; no address yet) are added through Debian's `ptp` and
//!   `host-local`, `at_once` at a time, as a kubelet starts pods in
//!   parallel: once with podfence-cni chained after ptp, once without.
//!   Reported: podfence-cni's own ADD time, and the whole chain's with and
//!   without it (p50, p99).
//! - **Upgrade**: with an agent run with `--on-stop keep`, a pod keeps a TCP
//!   connection busy (an exchange every 10 ms) and a denied pod sends a
//!   datagram every 10 ms; then the next agent takes over on the same
//!   manifests, as a DaemonSet rollout does it ([`Rollout`]): with a surge
//!   (the next one starts while the old one enforces and asks it to hand
//!   over; then the old one gets SIGTERM) or by replacing (SIGTERM, then
//!   the next one at once). Reported: the longest silence of the
//!   connection, its retransmitted segments (packets the gap dropped), the
//!   denied datagrams that arrived (must be 0), and how long the stop and
//!   the start took.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cni_runtime::{Attachment, NetworkList, Runtime};
use crate::propagation::{namespace_json, pod_json, policy_json};
use crate::synthetic::{self, Shape};
use crate::testbed::{Testbed, TestbedOptions, in_netns};
use podfence_control::index::Cluster;
use podfence_control::model::Pod;

/// This node's pods: a client, a server that admits it only, a denied peer.
const NODE_PODS: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: lc, labels: {kubernetes.io/metadata.name: lc}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: lc, name: client, labels: {lc: client}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: lc, name: server, labels: {lc: server}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: lc, name: denied, labels: {lc: denied}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: lc, name: server-from-client}
spec:
  podSelector: {matchLabels: {lc: server}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {lc: client}}}]}]
";

const NODE: &str = "node-1";
const SESSION_PORT: u16 = 7000;
const KNOCK_PORT: u16 = 9999;
const CNI_BIN: &str = "/usr/lib/cni";

/// What to measure.
#[derive(Clone, Debug)]
pub struct LifecycleOptions {
    /// The synthetic cluster around this node.
    pub shape: Shape,
    /// Pods started through the CNI chain (0: skip the pod start part).
    pub pods: usize,
    /// ADDs in flight at a time.
    pub at_once: usize,
    /// How many distinct pods the started pods are replicas of (labels and
    /// namespace of that many synthetic pods, spread over the cluster;
    /// pod `i` is like pod `i % shapes`). `pods`: every pod its own.
    pub shapes: usize,
    /// Upgrades to measure (0: skip the upgrade part), each done every way
    /// of `rollouts`, alternating.
    pub upgrades: usize,
    /// How the next agent takes over.
    pub rollouts: Vec<Rollout>,
    /// More running pods on the node (wired by the testbed, adopted by
    /// every agent), beyond the three the upgrade uses.
    pub node_pods: usize,
    /// The `podfence` binary (podfence-cni beside it).
    pub podfence: PathBuf,
}

/// How an upgrade's next agent takes over from the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// As the DaemonSet's `maxSurge: 1`: the next agent starts while the
    /// old one enforces, and asks it to hand over once it has compiled;
    /// then the old one gets SIGTERM (and has nothing left to do).
    Surge,
    /// As `maxSurge: 0`: SIGTERM, and the next agent once the old one has
    /// exited.
    Replace,
}

impl Rollout {
    /// Its name on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Surge => "surge",
            Self::Replace => "replace",
        }
    }
}

/// Percentiles of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort_unstable();
        // Nearest rank: the smallest value with at least `q` of the sample
        // at or below it.
        let at = |per_mille: usize| {
            let i = (per_mille * sample.len()).div_ceil(1000).max(1) - 1;
            sample.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        Self {
            p50_ms: at(500),
            p99_ms: at(990),
            max_ms: at(1000),
        }
    }
}

/// The pod start part's figures.
#[derive(Clone, Debug, Default)]
pub struct PodStartReport {
    /// Pods started per chain.
    pub pods: usize,
    /// ADDs in flight at a time.
    pub at_once: usize,
    /// How many distinct pods they are replicas of.
    pub shapes: usize,
    /// podfence-cni's own ADD (the agent adopting the pod).
    pub podfence_cni_add: Percentiles,
    /// ptp then podfence-cni.
    pub chain_with: Percentiles,
    /// ptp alone.
    pub chain_without: Percentiles,
}

/// One upgrade's figures.
#[derive(Clone, Debug)]
pub struct UpgradeReport {
    /// How the next agent took over.
    pub rollout: Rollout,
    /// The longest time between two completed exchanges of the open
    /// connection (one every 10 ms otherwise), milliseconds.
    pub longest_silence_ms: f64,
    /// Exchanges completed while measuring.
    pub exchanges: u64,
    /// The connection's retransmitted segments (what the gap dropped).
    pub retransmitted: u64,
    /// Whether the connection survived.
    pub survived: bool,
    /// Datagrams the denied pod sent, and how many arrived (must be 0).
    pub denied_sent: u64,
    /// Of those, arrived.
    pub denied_passed: u64,
    /// From SIGTERM to the old agent's exit, milliseconds (with a surge,
    /// once the next one is ready).
    pub stop_ms: f64,
    /// Until the next agent is ready (enforcing), milliseconds: from the
    /// old agent's exit, or with a surge from its own start (while the old
    /// one enforces).
    pub start_ms: f64,
}

/// Both parts' figures.
#[derive(Clone, Debug, Default)]
pub struct LifecycleReport {
    /// Pods, namespaces, policies of the cluster.
    pub cluster: (usize, usize, usize),
    /// Pod start through the CNI chain.
    pub pod_start: Option<PodStartReport>,
    /// Each upgrade.
    pub upgrades: Vec<UpgradeReport>,
}

fn err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Percentiles {
    fn json(&self) -> Value {
        json!({"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms})
    }
}

impl LifecycleReport {
    /// The report as one JSON object.
    #[must_use]
    pub fn json(&self) -> Value {
        let (pods, namespaces, policies) = self.cluster;
        json!({
            "cluster": {"pods": pods, "namespaces": namespaces, "policies": policies},
            "pod_start": self.pod_start.as_ref().map(|s| json!({
                "pods": s.pods,
                "at_once": s.at_once,
                "shapes": s.shapes,
                "podfence_cni_add": s.podfence_cni_add.json(),
                "chain_with": s.chain_with.json(),
                "chain_without": s.chain_without.json(),
            })),
            "upgrades": self.upgrades.iter().map(|u| json!({
                "rollout": u.rollout.name(),
                "longest_silence_ms": u.longest_silence_ms,
                "exchanges": u.exchanges,
                "retransmitted": u.retransmitted,
                "survived": u.survived,
                "denied_sent": u.denied_sent,
                "denied_passed": u.denied_passed,
                "stop_ms": u.stop_ms,
                "start_ms": u.start_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Runs both parts.
pub fn run(options: &LifecycleOptions) -> Result<LifecycleReport, String> {
    let plugin = options.podfence.with_file_name("podfence-cni");
    if options.pods > 0 && !Path::new(CNI_BIN).join("ptp").exists() {
        return Err(format!(
            "no {CNI_BIN}/ptp (scripts/install-deps installs containernetworking-plugins)"
        ));
    }
    if options.pods > 0 && !plugin.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p podfence-cni",
            plugin.display()
        ));
    }
    let mut node_pods =
        podfence_control::sources::manifests::load_str(Path::new("node"), NODE_PODS)
            .map_err(|e| e.to_string())?
            .cluster;
    node_pods.pods.extend(idle_pods(options.node_pods)?.pods);
    let bed = Testbed::build(
        &node_pods,
        &TestbedOptions {
            session_ports: vec![SESSION_PORT],
            ..TestbedOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let dir = TempDir::new(&format!("{}-lifecycle", bed.prefix()))?;
    let new_pods = new_pods(options.shape, options.pods, options.shapes);
    let manifests = dir.0.join("cluster.json");
    write_manifests(&manifests, &node_pods, options.shape, &new_pods)?;
    let mut report = LifecycleReport {
        cluster: (
            options.shape.pods,
            options.shape.namespaces,
            options.shape.policies,
        ),
        ..LifecycleReport::default()
    };
    if options.pods > 0 {
        report.pod_start = Some(pod_start(options, &bed, &dir.0, &manifests, &new_pods)?);
    }
    for _ in 0..options.upgrades {
        for &rollout in &options.rollouts {
            report
                .upgrades
                .push(upgrade(options, rollout, &bed, &dir.0, &manifests)?);
        }
    }
    Ok(report)
}

/// `n` pods to start on this node, each with the labels and namespace of
/// one of `shapes` synthetic pods spread over the cluster (so that the
/// cluster's policies select them): pod `i` is like the `i % shapes`th.
fn new_pods(shape: Shape, n: usize, shapes: usize) -> Vec<Pod> {
    let cluster = synthetic::cluster(shape);
    let models: Vec<&Pod> = cluster.pods.values().map(AsRef::as_ref).collect();
    let shapes = shapes.clamp(1, n.max(1));
    (0..n)
        .map(|i| {
            let m = i % shapes;
            let model = models[m * models.len().max(1) / shapes % models.len().max(1)];
            Pod {
                name: format!("start-{i}"),
                node: Some(NODE.into()),
                ips: Vec::new(),
                ..model.clone()
            }
        })
        .collect()
}

fn write_manifests(
    path: &Path,
    node_pods: &Cluster,
    shape: Shape,
    new_pods: &[Pod],
) -> Result<(), String> {
    let synthetic = synthetic::cluster(shape);
    let mut items: Vec<Value> = Vec::new();
    for c in [node_pods, &synthetic] {
        items.extend(c.namespaces.values().map(|n| namespace_json(n)));
        items.extend(
            c.pods
                .values()
                .map(|p| pod_json(p, p.node.as_deref().unwrap_or("node-0"))),
        );
        items.extend(c.policies.values().map(|p| policy_json(p)));
    }
    items.extend(new_pods.iter().map(|p| pod_json(p, NODE)));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, list.to_string()).map_err(err("writing the manifests"))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self, String> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).map_err(err("temporary directory"))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `podfence run` in the node; killed on drop.
struct Agent {
    child: Child,
    ready: PathBuf,
}

impl Agent {
    /// `podfence run` with the ready file `dir/ready`, waiting until it
    /// is there.
    fn start(
        options: &LifecycleOptions,
        node: &str,
        (dir, ready): (&Path, &str),
        manifests: &Path,
        extra: &[&str],
    ) -> Result<Self, String> {
        let ready = dir.join(ready);
        let _ = std::fs::remove_file(&ready);
        let child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(&options.podfence)
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .args(["--node-name", NODE, "--deny-log", "none", "--ready-file"])
            .arg(&ready)
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(err("podfence run"))?;
        let mut agent = Self { child, ready };
        let deadline = Instant::now() + Duration::from_mins(5);
        while !agent.ready.exists() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("podfence run exited before it was ready: {status}"));
            }
            if Instant::now() > deadline {
                return Err("podfence run not ready in 300 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(agent)
    }

    /// SIGTERM, and the wait for its exit.
    fn terminate(mut self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(err("kill"))?;
        if !status.success() {
            return Err("kill -TERM failed".into());
        }
        let status = self.child.wait().map_err(err("wait"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("podfence run exited with {status}"))
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Network namespaces for pod sandboxes, deleted on drop.
struct Sandboxes(Vec<String>);

impl Sandboxes {
    fn new(prefix: &str, n: usize) -> Result<Self, String> {
        crate::testbed::install_signal_handler();
        let mut made = Self(Vec::with_capacity(n));
        for i in 0..n {
            let name = format!("{prefix}-s{i}");
            crate::testbed::run(&["ip", "netns", "add", &name]).map_err(|e| e.to_string())?;
            crate::testbed::register(&name);
            made.0.push(name);
        }
        Ok(made)
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for name in &self.0 {
            crate::testbed::delete_netns(name);
            crate::testbed::unregister(name);
        }
    }
}

/// `n` more running pods of this node (`lc/idle-i`, 10.244.2.0/23), which
/// no policy selects.
fn idle_pods(n: usize) -> Result<Cluster, String> {
    if n > 500 {
        return Err(format!("--node-pods {n}: at most 500"));
    }
    let mut yaml = String::new();
    for i in 0..n {
        let ip = format!("10.244.{}.{}", 2 + i / 250, 1 + i % 250);
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: lc, name: idle-{i}, labels: {{lc: idle}}}}\n\
             spec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        );
    }
    podfence_control::sources::manifests::load_str(Path::new("idle"), &yaml)
        .map(|m| m.cluster)
        .map_err(|e| e.to_string())
}

fn conflist(socket: Option<&Path>, ipam: &Path) -> Result<NetworkList, String> {
    let mut plugins = vec![json!({
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.73.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam,
        },
    })];
    if let Some(socket) = socket {
        plugins
            .push(json!({"type": "podfence-cni", "controlSocket": socket, "failMode": "closed"}));
    }
    NetworkList::parse(
        &json!({"cniVersion": "1.0.0", "name": "podfence-bench", "plugins": plugins}).to_string(),
    )
}

/// Starts every new pod through one chain, `at_once` at a time; each
/// ADD's plugin times. Every pod is deleted again afterwards.
fn start_pods(
    runtime: &mut Runtime,
    list: &NetworkList,
    sandboxes: &Sandboxes,
    new_pods: &[Pod],
    at_once: usize,
    round: &str,
) -> Result<Vec<Vec<Duration>>, String> {
    let pods: Vec<Attachment> = new_pods
        .iter()
        .zip(&sandboxes.0)
        .map(|(p, netns)| {
            Attachment::pod(
                &p.namespace,
                &p.name,
                &format!("{round}-{}", p.name),
                &Path::new("/run/netns").join(netns),
            )
        })
        .collect();
    let added = runtime.add_parallel(list, &pods, at_once, |_, _| {});
    let mut times = Vec::with_capacity(added.len());
    let mut first_error = None;
    for (pod, added) in pods.iter().zip(added) {
        match added {
            Ok(a) => times.push(a.times),
            Err(e) => {
                first_error.get_or_insert(format!("ADD of {}: {e}", pod.container_id));
            }
        }
        let _ = runtime.del(list, pod);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(times),
    }
}

fn pod_start(
    options: &LifecycleOptions,
    bed: &Testbed,
    dir: &Path,
    manifests: &Path,
    new_pods: &[Pod],
) -> Result<PodStartReport, String> {
    let node = bed.node_netns();
    let sandboxes = Sandboxes::new(bed.prefix(), new_pods.len())?;
    let plugin_dir = options
        .podfence
        .parent()
        .ok_or("the podfence binary has no directory")?
        .to_path_buf();
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), plugin_dir], node);
    let ipam = dir.join("ipam");
    let agent = Agent::start(options, node, (dir, "ready"), manifests, &[])?;
    let socket = dir.join("control.sock");
    let with = start_pods(
        &mut runtime,
        &conflist(Some(&socket), &ipam)?,
        &sandboxes,
        new_pods,
        options.at_once,
        "with",
    )?;
    let without = start_pods(
        &mut runtime,
        &conflist(None, &ipam)?,
        &sandboxes,
        new_pods,
        options.at_once,
        "without",
    )?;
    agent.terminate()?;
    Ok(PodStartReport {
        pods: new_pods.len(),
        at_once: options.at_once,
        shapes: options.shapes.clamp(1, options.pods.max(1)),
        podfence_cni_add: Percentiles::of(with.iter().map(|t| t[1]).collect()),
        chain_with: Percentiles::of(with.iter().map(|t| t.iter().sum()).collect()),
        chain_without: Percentiles::of(without.iter().map(|t| t.iter().sum()).collect()),
    })
}

/// Runs until stopped: an exchange every 10 ms on the connection.
fn ping(
    mut stream: TcpStream,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration, bool)> {
    std::thread::spawn(move || {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let (mut exchanges, mut longest) = (0, Duration::ZERO);
        let mut last = Instant::now();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            let ok = stream.write_all(b"ping").is_ok()
                && matches!(stream.read(&mut buf), Ok(n) if n > 0);
            if !ok {
                return (exchanges, longest.max(last.elapsed()), false);
            }
            exchanges += 1;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            std::thread::sleep(Duration::from_millis(10));
        }
        (exchanges, longest, true)
    })
}

/// The connection's retransmitted segments (`ss -ti` in the client).
fn retransmitted(netns: &str, dst: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-tin", "dst", dst])
        .output();
    let Ok(out) = out else { return 0 };
    let text = String::from_utf8_lossy(&out.stdout);
    // "retrans:0/3": now / in total.
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("retrans:"))
        .and_then(|r| r.split('/').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn upgrade(
    options: &LifecycleOptions,
    rollout: Rollout,
    bed: &Testbed,
    dir: &Path,
    manifests: &Path,
) -> Result<UpgradeReport, String> {
    let node = bed.node_netns();
    let pod = |key: &str| bed.pods()[key].netns.clone();
    let (client, server, denied) = (pod("lc/client"), pod("lc/server"), pod("lc/denied"));
    let table = dir.join("conntrack");
    let table_arg = table.display().to_string();
    let keep = ["--on-stop", "keep", "--conntrack-file", &table_arg];
    let old = Agent::start(options, node, (dir, "ready"), manifests, &keep)?;

    let server_addr: SocketAddr = format!("10.244.1.2:{SESSION_PORT}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let stream = in_netns(&client, || {
        TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))
    })
    .map_err(err("connecting the client to the server"))?;
    let knock_sink = in_netns(&server, || {
        let s = UdpSocket::bind(("0.0.0.0", KNOCK_PORT))?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(s)
    })
    .map_err(err("knock receiver"))?;
    let sender = in_netns(&denied, || UdpSocket::bind("0.0.0.0:0")).map_err(err("knocker"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if knock_sink.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let knocker = {
        let stop = Arc::clone(&stop);
        let dst: SocketAddr = SocketAddr::new(IpAddr::from([10, 244, 1, 2]), KNOCK_PORT);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sender.send_to(b"knock", dst).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        })
    };
    let pinger = ping(stream, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(500));
    let retrans_before = retransmitted(&client, "10.244.1.2");

    let next = ["--on-stop", "clean", "--conntrack-file", &table_arg];
    let (new, stop_ms, start_ms) = match rollout {
        Rollout::Replace => {
            let asked = Instant::now();
            old.terminate()?;
            let exited = Instant::now();
            let new = Agent::start(options, node, (dir, "ready"), manifests, &next);
            (new, exited - asked, exited.elapsed())
        }
        Rollout::Surge => {
            let started = Instant::now();
            let new = Agent::start(options, node, (dir, "ready-next"), manifests, &next);
            let ready = Instant::now();
            old.terminate()?;
            (new, ready.elapsed(), ready - started)
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    let retrans = retransmitted(&client, "10.244.1.2").saturating_sub(retrans_before);
    stop.store(true, Ordering::Relaxed);
    let (exchanges, longest, survived) = pinger.join().map_err(|_| "pinger panicked")?;
    let sent = knocker.join().map_err(|_| "knocker panicked")?;
    std::thread::sleep(Duration::from_millis(100));
    let _ = counter.join();
    // The next round (or the end) starts from a node without an agent.
    new?.terminate()?;
    Ok(UpgradeReport {
        rollout,
        longest_silence_ms: longest.as_secs_f64() * 1e3,
        exchanges,
        retransmitted: retrans,
        survived,
        denied_sent: sent,
        denied_passed: received.load(Ordering::Relaxed),
        stop_ms: stop_ms.as_secs_f64() * 1e3,
        start_ms: start_ms.as_secs_f64() * 1e3,
    })
}
