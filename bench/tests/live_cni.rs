//! `podfence-cni` chained after Debian's real `ptp` and `host-local`
//! plugins, run through the CNI protocol as a runtime runs a conflist
//! (`podfence_bench::cni_runtime`), beside `podfence run --manifests` in a
//! testbed node. The new pod has no status address in the manifests (the
//! case where, without the plugin, it is never adopted): it must be
//! enforced the moment ADD returns. Needs root and
//! containernetworking-plugins (`scripts/install-deps`); skips otherwise.

mod common;

use common::AgentProcess;

use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use podfence_bench::cni_runtime::{Attachment, NetworkList, Runtime};
use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions, in_netns};
use podfence_testkit::netns::Netns;
use podfence_testkit::{Need, skip_unless};
use serde_json::{Value, json};

/// Pods a and b run (the testbed wires them); `new` is scheduled here but
/// has no address yet: the CNI chain gives it one. It accepts TCP 8080
/// from b only, and may send nothing.
const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {pod: b}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: new, labels: {app: new}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: web, containerPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: new-from-b-only}
spec:
  podSelector: {matchLabels: {app: new}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 8080}]
";

const CNI_BIN: &str = "/usr/lib/cni";
const PROBE: Duration = Duration::from_millis(700);

fn skip() -> bool {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return true;
    }
    if !Path::new(CNI_BIN).join("ptp").exists() {
        eprintln!(
            "SKIPPED: no {CNI_BIN}/ptp (scripts/install-deps installs containernetworking-plugins)"
        );
        return true;
    }
    false
}

/// The directory of `podfence-cni`, built beside this test.
fn plugin_dir() -> PathBuf {
    let dir = common::podfence()
        .parent()
        .expect("target dir")
        .to_path_buf();
    assert!(
        dir.join("podfence-cni").exists(),
        "podfence-cni is missing from {}: build it with `cargo build -p podfence-cni`",
        dir.display()
    );
    dir
}

/// ptp with host-local, then podfence-cni, as a node's conflist.
fn conflist(version: &str, socket: &Path, fail_mode: &str, ipam: &Path) -> NetworkList {
    let list = json!({
        "cniVersion": version,
        "name": "podfence-test",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.71.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam,
                },
            },
            {"type": "podfence-cni", "controlSocket": socket, "failMode": fail_mode},
        ],
    });
    NetworkList::parse(&list.to_string()).expect("conflist")
}

/// A pod sandbox: its network namespace, with a server on 8080 answering
/// `x/new`, and its attachment.
struct Sandbox {
    _server: Server,
    netns: Netns,
    attachment: Attachment,
}

impl Sandbox {
    fn new(container_id: &str) -> Self {
        Self::of("new", container_id)
    }

    /// A sandbox of pod `x/<name>`, whose server answers `x/<name>`.
    fn of(name: &str, container_id: &str) -> Self {
        let netns = Netns::new("pfcni").expect("pod namespace");
        let server = Server::start(netns.name(), 8080, format!("x/{name}"));
        let path = Path::new("/run/netns").join(netns.name());
        let attachment = Attachment::pod("x", name, container_id, &path);
        Self {
            _server: server,
            netns,
            attachment,
        }
    }
}

/// A TCP server in a namespace, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: &str, port: u16, answer: String) -> Self {
        let listener = in_netns(netns, move || {
            let l = TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .expect("server binds");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tcp(netns: &str, dst: IpAddr, port: u16) -> ProbeOutcome {
    Testbed::tcp_probe_from(netns, dst, port, PROBE).expect("probe runs")
}

fn answered(text: &str) -> ProbeOutcome {
    ProbeOutcome::Answered(text.into())
}

/// The pod's address in a result.
fn pod_ip(result: &Value) -> IpAddr {
    let address = result["ips"][0]["address"].as_str().expect("an address");
    address
        .split_once('/')
        .expect("address/len")
        .0
        .parse()
        .expect("IP")
}

/// The agent's `status` answer.
fn status(socket: &Path) -> Value {
    let reply = podfence_control::agent::control_socket::request(socket, "status")
        .expect("the agent answers");
    serde_json::from_str(&reply).expect("status is JSON")
}

fn adopted(socket: &Path) -> Vec<String> {
    status(socket)["adopted"]
        .as_array()
        .expect("adopted")
        .iter()
        .map(|a| a.as_str().expect("address").to_owned())
        .collect()
}

fn manifests_arg(path: &Path) -> [String; 2] {
    ["--manifests".into(), path.display().to_string()]
}

fn pod_netns(bed: &Testbed, key: &str) -> String {
    bed.pods()[key].netns.clone()
}

/// `CLUSTER` with `n` more pods like `new` (`x/new-0`...), no address yet.
fn cluster_with_new_pods(n: usize) -> String {
    let mut yaml = CLUSTER.to_owned();
    for i in 0..n {
        use std::fmt::Write as _;
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: x, name: new-{i}, labels: {{app: new}}}}\n\
             spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    ports: [{{name: web, containerPort: 8080}}]\n"
        );
    }
    yaml
}

#[test]
fn pods_added_in_parallel_are_each_enforced_at_their_first_packet() {
    const PODS: usize = 16;
    const AT_ONCE: usize = 8;
    if skip() {
        return;
    }
    let (bed, dir, manifests) = common::testbed_with_manifests(
        &cluster_with_new_pods(PODS),
        &TestbedOptions::default(),
        "cni-many",
    );
    let node = bed.node_netns().to_owned();
    let (a, b) = (pod_netns(&bed, "x/a"), pod_netns(&bed, "x/b"));
    let a_ip: IpAddr = "10.244.1.1".parse().expect("IP");
    let _agent = AgentProcess::start(&node, &manifests_arg(&manifests), &dir.0, &[]);
    let socket = dir.0.join("control.sock");
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), plugin_dir()], &node);
    let list = conflist("1.0.0", &socket, "closed", &dir.0.join("ipam"));
    let sandboxes: Vec<Sandbox> = (0..PODS)
        .map(|i| Sandbox::of(&format!("new-{i}"), &format!("many-{i}")))
        .collect();
    let pods: Vec<Attachment> = sandboxes.iter().map(|s| s.attachment.clone()).collect();
    // The first packets of each pod, sent the moment its ADD returns while
    // other ADDs are in flight: (a to it, b to it, it to a).
    let first = std::sync::Mutex::new(vec![None; PODS]);
    let results = runtime.add_parallel(&list, &pods, AT_ONCE, |i, added| {
        let ip = pod_ip(&added.results[1]);
        let seen = (
            tcp(&a, ip, 8080),
            tcp(&b, ip, 8080),
            tcp(sandboxes[i].netns.name(), a_ip, 80),
        );
        first.lock().expect("lock")[i] = Some((ip, seen));
    });
    let first = first.into_inner().expect("lock");
    for (i, result) in results.iter().enumerate() {
        let added = result
            .as_ref()
            .unwrap_or_else(|e| panic!("ADD of new-{i}: {e}"));
        assert_eq!(added.results[1], added.results[0], "prevResult unchanged");
        let (ip, (from_a, from_b, to_a)) = first[i].clone().expect("probed");
        assert_eq!(
            from_a,
            ProbeOutcome::NoAnswer,
            "new-{i} ({ip}): a denied at once"
        );
        assert_eq!(
            from_b,
            answered(&format!("x/new-{i}")),
            "new-{i}: b allowed at once"
        );
        assert_eq!(
            to_a,
            ProbeOutcome::NoAnswer,
            "new-{i}: its egress denied at once"
        );
    }
    let all = adopted(&socket);
    assert_eq!(all.len(), 2 + PODS, "{all:?}");
    for pod in &pods {
        runtime.del(&list, pod).expect("DEL");
    }
    assert_eq!(
        adopted(&socket),
        ["10.244.1.1", "10.244.1.2"],
        "all released"
    );
}

#[test]
fn a_pod_added_through_the_chain_is_enforced_when_add_returns() {
    if skip() {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "cni");
    let node = bed.node_netns().to_owned();
    let (a, b) = (pod_netns(&bed, "x/a"), pod_netns(&bed, "x/b"));
    let a_ip: IpAddr = "10.244.1.1".parse().expect("IP");
    let _agent = AgentProcess::start(&node, &manifests_arg(&manifests), &dir.0, &[]);
    let socket = dir.0.join("control.sock");
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), plugin_dir()], &node);

    // A new sandbox of the same pod each round: ADD, DEL, ADD again, in
    // every result version.
    for (round, version) in ["1.0.0", "0.4.0", "0.3.1"].into_iter().enumerate() {
        let list = conflist(version, &socket, "closed", &dir.0.join("ipam"));
        let sandbox = Sandbox::new(&format!("sandbox-{round}"));
        let pod = &sandbox.attachment;
        let results = runtime.add(&list, pod).expect("ADD through the chain");
        let ip = pod_ip(&results[1]);

        // In force the moment ADD returned: the first attempts decide.
        assert_eq!(
            tcp(&a, ip, 8080),
            ProbeOutcome::NoAnswer,
            "{version}: a is denied on the first try"
        );
        assert_eq!(
            tcp(&b, ip, 8080),
            answered("x/new"),
            "{version}: b is allowed, through the datapath"
        );
        assert_eq!(
            tcp(sandbox.netns.name(), a_ip, 80),
            ProbeOutcome::NoAnswer,
            "{version}: the pod's egress is denied"
        );
        // The result is ptp's, unchanged, in the list's version.
        assert_eq!(results[1], results[0], "{version}: prevResult unchanged");
        assert_eq!(results[1]["cniVersion"], version);
        assert!(adopted(&socket).contains(&ip.to_string()));
        if version == "0.3.1" {
            runtime
                .check(&list, pod)
                .expect_err("no CHECK before 0.4.0");
        } else {
            runtime.check(&list, pod).expect("CHECK: enforced");
        }

        if round == 0 {
            malformed_input_changes_nothing(&runtime, &list, pod, &socket);
            // podfence-cni's DEL alone: the pod is released, CHECK says
            // so, and the kernel's routes reach it again.
            let kept = runtime.kept_result(&list, pod).cloned();
            runtime
                .call("podfence-cni", "DEL", pod, &list.config(1, kept.as_ref()))
                .expect("DEL of podfence-cni");
            assert!(!adopted(&socket).contains(&ip.to_string()), "released");
            let unenforced = runtime.check(&list, pod).expect_err("CHECK fails");
            assert_eq!(unenforced.code(), Some(101), "{unenforced}");
            assert_eq!(tcp(&a, ip, 8080), answered("x/new"), "not enforced");
        }
        runtime.del(&list, pod).expect("DEL through the chain");
        runtime.del(&list, pod).expect("DEL again (idempotent)");
        assert!(!adopted(&socket).contains(&ip.to_string()), "released");
    }
}

/// Bad configurations and results are CNI errors, and the agent's tables
/// and pods stay as they were.
fn malformed_input_changes_nothing(
    runtime: &Runtime,
    list: &NetworkList,
    pod: &Attachment,
    socket: &Path,
) {
    let before = status(socket);
    let mut no_prev = list.config(1, None);
    let mut bad_mode = list.config(1, Some(&json!({"ips": [{"address": "10.71.0.99/24"}]})));
    bad_mode["failMode"] = json!("sideways");
    let no_ips = list.config(1, Some(&json!({"interfaces": [], "ips": []})));
    let bad_address = list.config(1, Some(&json!({"ips": [{"address": "10.71.0.99"}]})));
    no_prev["controlSocket"] = json!(socket);
    for (stdin, code) in [
        (b"{not json".to_vec(), 6),
        (no_prev.to_string().into_bytes(), 7),
        (bad_mode.to_string().into_bytes(), 6),
        (no_ips.to_string().into_bytes(), 7),
        (bad_address.to_string().into_bytes(), 7),
    ] {
        let out = runtime
            .run_plugin("podfence-cni", "ADD", pod, &stdin)
            .expect("runs");
        assert!(!out.success, "{}", String::from_utf8_lossy(&stdin));
        let error: Value = serde_json::from_str(&out.stdout).expect("a CNI error");
        assert_eq!(error["code"], code, "{}", out.stdout);
        assert!(error["msg"].is_string() && error["details"].is_string());
    }
    let after = status(socket);
    assert_eq!(after["generation"], before["generation"], "no new tables");
    assert_eq!(after["adopted"], before["adopted"], "no pod changed");
}

#[test]
fn without_the_agent_closed_fails_and_open_passes() {
    if skip() {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "cni-down");
    let node = bed.node_netns().to_owned();
    let a = pod_netns(&bed, "x/a");
    let socket = dir.0.join("control.sock");
    let ipam = dir.0.join("ipam");
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), plugin_dir()], &node);

    // Closed: ADD fails with a CNI error; the runtime's DEL cleans up.
    let closed = conflist("1.0.0", &socket, "closed", &ipam);
    let sandbox = Sandbox::new("down-closed");
    let refused = runtime
        .add(&closed, &sandbox.attachment)
        .expect_err("ADD fails closed");
    assert_eq!(refused.code(), Some(11), "{refused}");
    runtime
        .del(&closed, &sandbox.attachment)
        .expect("DEL after a failed ADD");
    drop(sandbox);

    // Open: ADD succeeds with ptp's result, and the pod runs unenforced
    // (until the API reports its address to an agent).
    let open = conflist("1.0.0", &socket, "open", &ipam);
    let sandbox = Sandbox::new("down-open");
    let results = runtime
        .add(&open, &sandbox.attachment)
        .expect("ADD passes open");
    assert_eq!(results[1], results[0]);
    let ip = pod_ip(&results[1]);
    assert_eq!(tcp(&a, ip, 8080), answered("x/new"), "unenforced");
    runtime.del(&open, &sandbox.attachment).expect("DEL");
    drop(sandbox);

    // STATUS says whether ADD can be served; GC releases sandboxes gone.
    let status_of = |runtime: &Runtime, list: &NetworkList| {
        runtime.call(
            "podfence-cni",
            "STATUS",
            &Attachment::pod("", "", "", Path::new("")),
            &list.config(1, None),
        )
    };
    // STATUS and GC came with 1.1.0; ptp (1.1.1) is not called for them.
    let v11 = conflist("1.1.0", &socket, "closed", &ipam);
    let too_old = status_of(&runtime, &closed).expect_err("STATUS needs 1.1.0");
    assert_eq!(too_old.code(), Some(1), "{too_old}");
    let unavailable = status_of(&runtime, &v11).expect_err("no agent");
    assert_eq!(unavailable.code(), Some(50));
    let _agent = AgentProcess::start(&node, &manifests_arg(&manifests), &dir.0, &[]);
    status_of(&runtime, &v11).expect("STATUS with the agent");
    let sandbox = Sandbox::new("gc");
    let results = runtime.add(&closed, &sandbox.attachment).expect("ADD");
    let ip = pod_ip(&results[1]);
    assert_eq!(tcp(&a, ip, 8080), ProbeOutcome::NoAnswer, "enforced");
    let mut gc = v11.config(1, None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "another", "ifname": "eth0"}]);
    runtime
        .call(
            "podfence-cni",
            "GC",
            &Attachment::pod("", "", "", Path::new("")),
            &gc,
        )
        .expect("GC");
    assert_eq!(tcp(&a, ip, 8080), answered("x/new"), "collected");
    runtime.del(&closed, &sandbox.attachment).expect("DEL");
}

#[test]
fn version_answers_every_supported_version() {
    let plugin = plugin_dir().join("podfence-cni");
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"cniVersion":"0.4.0"}"#)
        .expect("write");
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["cniVersion"], "0.4.0");
    assert_eq!(
        answer["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn the_agent_installs_the_plugin_while_it_runs() {
    if skip() {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "cni-install");
    let node = bed.node_netns().to_owned();
    let a = pod_netns(&bed, "x/a");
    let socket = dir.0.join("control.sock");
    // The node's directories: its network plugin's conflist (ptp), and an
    // empty binary directory.
    let (bin_dir, conf_dir) = (dir.0.join("opt-cni-bin"), dir.0.join("net.d"));
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let mut node_list = conflist("1.0.0", &socket, "closed", &dir.0.join("ipam"));
    node_list.plugins.truncate(1);
    let file = conf_dir.join("10-ptp.conflist");
    let original =
        json!({"cniVersion": "1.0.0", "name": "podfence-test", "plugins": node_list.plugins});
    std::fs::write(&file, original.to_string()).expect("conflist");

    let plugin = plugin_dir().join("podfence-cni");
    let (bin, conf) = (
        bin_dir.display().to_string(),
        conf_dir.display().to_string(),
    );
    let flags = [
        "--cni-bin-dir",
        &bin,
        "--cni-conf-dir",
        &conf,
        "--cni-plugin",
        plugin.to_str().expect("path"),
    ];
    let agent = AgentProcess::start(&node, &manifests_arg(&manifests), &dir.0, &flags);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let installed = loop {
        let text = std::fs::read_to_string(&file).expect("conflist");
        let list = NetworkList::parse(&text).expect("still a conflist");
        if list.plugins.len() == 2 {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not chained in 10 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        installed.plugins[0], original["plugins"][0],
        "ptp first, unchanged"
    );
    assert_eq!(
        installed.plugins[1],
        json!({"type": "podfence-cni", "controlSocket": socket, "failMode": "closed"})
    );
    assert_eq!(
        std::fs::read(bin_dir.join("podfence-cni")).expect("installed binary"),
        std::fs::read(&plugin).expect("built binary")
    );

    // The runtime, reading the node's directories, gets the pod enforced.
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), bin_dir.clone()], &node);
    let sandbox = Sandbox::new("installed");
    let results = runtime.add(&installed, &sandbox.attachment).expect("ADD");
    assert_eq!(tcp(&a, pod_ip(&results[1]), 8080), ProbeOutcome::NoAnswer);
    runtime.del(&installed, &sandbox.attachment).expect("DEL");

    // A clean stop takes both out again.
    agent.terminate();
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("conflist")).expect("JSON");
    assert_eq!(after, original, "the conflist as it was");
    assert!(!bin_dir.join("podfence-cni").exists(), "the binary removed");
}

#[test]
fn a_pod_the_agent_does_not_know_is_refused() {
    if skip() {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(CLUSTER, &TestbedOptions::default(), "cni-unknown");
    let node = bed.node_netns().to_owned();
    let _agent = AgentProcess::start(&node, &manifests_arg(&manifests), &dir.0, &[]);
    let socket = dir.0.join("control.sock");
    let mut runtime = Runtime::new(vec![CNI_BIN.into(), plugin_dir()], &node);
    let list = conflist("1.0.0", &socket, "closed", &dir.0.join("ipam"));
    let netns = Netns::new("pfcni").expect("pod namespace");
    let ghost = Attachment::pod(
        "x",
        "ghost",
        "ghost-sandbox",
        &Path::new("/run/netns").join(netns.name()),
    );
    // Not in the manifests: the agent cannot compile its policies, and
    // refuses once its time is up.
    let started = std::time::Instant::now();
    let refused = runtime.add(&list, &ghost).expect_err("refused");
    assert_eq!(refused.code(), Some(100), "{refused}");
    assert!(
        refused.to_string().contains("not in the tables in force"),
        "{refused}"
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(
        adopted(&socket),
        ["10.244.1.1", "10.244.1.2"],
        "nothing adopted"
    );
    runtime
        .del(&list, &ghost)
        .expect("DEL after the failed ADD");
}
