//! Upgrades without a gap, with the real `podfence run` process in a
//! testbed node: an agent stopped with `--on-stop keep` leaves its
//! redirectors (failing closed), routes, host-port pair, podfence-cni's
//! chaining and connection table to the next one, which takes them over
//! while a pod-to-pod connection and a Service connection stay open and a
//! denied peer knocks every 10 ms. Also: a table file of another layout
//! starts clean, and a clean stop (an uninstall) leaves nothing behind.
//! And a rollout with a surge: the next agent starts beside the old one and
//! takes over through a handover.
//! Needs root and `ip netns`; skips otherwise.

mod common;

use common::{AgentProcess, Speaker, node_state};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions, in_netns};
use podfence_testkit::netns;
use podfence_testkit::{Need, skip_unless};
use serde_json::{Value, json};

/// Node node-1: client x/a, server x/b (admits a only), the denied peer
/// x/c, and x/web behind the Service x/web (10.96.0.70:9000).
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
metadata: {namespace: x, name: c, labels: {pod: c}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: web, labels: {pod: web}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: t, containerPort: 80}]
status: {phase: Running, podIP: 10.244.1.4, podIPs: [{ip: 10.244.1.4}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {pod: web}
  clusterIPs: ['10.96.0.70']
  ports: [{name: s, port: 9000, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-slice, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ['10.244.1.4'], nodeName: node-1}]
ports: [{name: s, port: 9000}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: b-from-a-only}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
";

/// The session port of the testbed's servers (every message answered).
const SESSION_PORT: u16 = 7000;
/// Where x/b counts what the denied peer sends.
const KNOCK_PORT: u16 = 9999;
const TIMEOUT: Duration = Duration::from_secs(5);

fn skip() -> bool {
    skip_unless(&[Need::Root, Need::Netns])
}

fn manifests_arg(path: &Path) -> [String; 2] {
    ["--manifests".into(), path.display().to_string()]
}

fn pod_netns(bed: &Testbed, key: &str) -> String {
    bed.pods()[key].netns.clone()
}

/// A TCP connection from the pod's namespace, kept open.
fn connect(netns: &str, dst: &str) -> TcpStream {
    let dst: SocketAddr = dst.parse().expect("address");
    let stream = in_netns(netns, || TcpStream::connect_timeout(&dst, TIMEOUT))
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

/// One message and its answer on a session connection.
fn exchange(stream: &mut TcpStream) -> io::Result<String> {
    stream.write_all(b"ping")?;
    let mut buf = [0u8; 256];
    match stream.read(&mut buf)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

fn read_message(stream: &mut TcpStream) -> io::Result<String> {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// A thread that runs until told to stop, then hands back its result.
struct Running<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T> Running<T> {
    fn finish(mut self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("thread ends")
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the connection prober saw: exchanges done, the longest time
/// between two, the first error.
#[derive(Debug)]
struct Pings {
    exchanges: u64,
    longest_silence: Duration,
    error: Option<String>,
}

/// One exchange every 10 ms on `stream` until stopped.
fn ping(mut stream: TcpStream) -> Running<Pings> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let thread = std::thread::spawn(move || {
        let mut pings = Pings {
            exchanges: 0,
            longest_silence: Duration::ZERO,
            error: None,
        };
        let mut last = Instant::now();
        while !stopping.load(Ordering::Relaxed) {
            match exchange(&mut stream) {
                Ok(_) => {
                    pings.exchanges += 1;
                    pings.longest_silence = pings.longest_silence.max(last.elapsed());
                    last = Instant::now();
                }
                Err(e) => {
                    pings.error = Some(e.to_string());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        pings
    });
    Running {
        stop,
        thread: Some(thread),
    }
}

/// The denied peer: a datagram from `from` to `to` every 10 ms; the
/// receiver counts what arrives. Returns (sent, received) at the end.
fn knock(from: &str, to: &str, to_ip: &str) -> Running<(u64, u64)> {
    let knock_sink = in_netns(to, || {
        let s = UdpSocket::bind(("0.0.0.0", KNOCK_PORT))?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(s)
    })
    .expect("knock receiver");
    let sender = in_netns(from, || UdpSocket::bind("0.0.0.0:0")).expect("knock sender");
    let dst: SocketAddr = format!("{to_ip}:{KNOCK_PORT}").parse().expect("address");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counting = Arc::clone(&received);
    let stopping = Arc::clone(&stop);
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stopping.load(Ordering::Relaxed) {
            if knock_sink.recv(&mut buf).is_ok() {
                counting.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let stopping = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut sent = 0;
        while !stopping.load(Ordering::Relaxed) {
            if sender.send_to(b"knock", dst).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Late datagrams have 100 ms to arrive.
        std::thread::sleep(Duration::from_millis(100));
        let _ = counter.join();
        (sent, received.load(Ordering::Relaxed))
    });
    Running {
        stop,
        thread: Some(thread),
    }
}

/// The node's conflist (ptp alone) and the directories the agent installs
/// podfence-cni into.
struct CniDirs {
    bin: PathBuf,
    conf: PathBuf,
    file: PathBuf,
    original: Value,
}

impl CniDirs {
    fn new(dir: &Path) -> Self {
        let (bin, conf) = (dir.join("opt-cni-bin"), dir.join("net.d"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(&conf).expect("conf dir");
        let file = conf.join("10-ptp.conflist");
        let original = json!({
            "cniVersion": "1.0.0",
            "name": "podfence-test",
            "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.72.0.0/24"}}],
        });
        std::fs::write(&file, original.to_string()).expect("conflist");
        Self {
            bin,
            conf,
            file,
            original,
        }
    }

    fn flags(&self) -> Vec<String> {
        let plugin = common::podfence().with_file_name("podfence-cni");
        assert!(
            plugin.exists(),
            "build podfence-cni: cargo build -p podfence-cni"
        );
        vec![
            "--cni-bin-dir".into(),
            self.bin.display().to_string(),
            "--cni-conf-dir".into(),
            self.conf.display().to_string(),
            "--cni-plugin".into(),
            plugin.display().to_string(),
        ]
    }

    fn chained(&self) -> bool {
        let text = std::fs::read_to_string(&self.file).expect("conflist");
        let list: Value = serde_json::from_str(&text).expect("JSON");
        list["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["type"] == "podfence-cni"))
    }

    fn await_chained(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.chained() {
            assert!(
                Instant::now() < deadline,
                "podfence-cni not chained in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The names of the XDP programs attached to `iface` in `node`.
fn programs(node: &str, iface: &str) -> Vec<String> {
    let iface = iface.to_owned();
    in_netns(node, move || {
        podfence_bpf::attached_programs(iface.as_str()).map_err(io::Error::other)
    })
    .expect("query")
    .into_iter()
    .map(|p| p.name)
    .collect()
}

/// A testbed of [`CLUSTER`] with the node's CNI directories, and the flags
/// of an agent that keeps what it leaves (`keep`) and of one that cleans up
/// (`clean`), both with their connection table in `table`.
struct UpgradeBed {
    bed: Testbed,
    dir: common::TempDir,
    node: String,
    /// The node before any agent ran.
    before: String,
    cni: CniDirs,
    table: PathBuf,
    source: [String; 2],
    keep: Vec<String>,
    clean: Vec<String>,
}

impl UpgradeBed {
    fn new(options: &TestbedOptions, tag: &str) -> Self {
        let (bed, dir, manifests) = common::testbed_with_manifests(CLUSTER, options, tag);
        let node = bed.node_netns().to_owned();
        let before = node_state(&node);
        let cni = CniDirs::new(&dir.0);
        let table = dir.0.join("run").join("conntrack");
        let table_arg = table.display().to_string();
        let with_table = |on_stop: &str| {
            let mut flags = cni.flags();
            flags.extend(["--on-stop", on_stop, "--conntrack-file", &table_arg].map(String::from));
            flags
        };
        let (keep, clean) = (with_table("keep"), with_table("clean"));
        Self {
            source: manifests_arg(&manifests),
            bed,
            dir,
            node,
            before,
            cni,
            table,
            keep,
            clean,
        }
    }

    /// After a clean stop (an uninstall): the node as before, the conflist
    /// as it was, the plugin's binary and the table's file removed.
    fn assert_as_before(&self) {
        assert_eq!(node_state(&self.node), self.before, "nothing left behind");
        assert!(!self.table.exists(), "the connection table's file removed");
        let conflist = std::fs::read_to_string(&self.cni.file).expect("conflist");
        let after: Value = serde_json::from_str(&conflist).expect("JSON");
        assert_eq!(after, self.cni.original, "the conflist as it was");
        assert!(
            !self.cni.bin.join("podfence-cni").exists(),
            "the binary removed"
        );
    }
}

fn as_args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[test]
fn an_upgrade_keeps_enforcing_and_keeps_connections_and_an_uninstall_leaves_nothing() {
    if skip() {
        return;
    }
    let options = TestbedOptions {
        session_ports: vec![SESSION_PORT],
        own_ports: vec![9000],
        ..TestbedOptions::default()
    };
    let up = UpgradeBed::new(&options, "upgrade");
    let UpgradeBed {
        bed,
        dir,
        node,
        cni,
        table,
        source,
        ..
    } = &up;
    let (a, b, c) = (
        pod_netns(bed, "x/a"),
        pod_netns(bed, "x/b"),
        pod_netns(bed, "x/c"),
    );

    let old = AgentProcess::start(node, source, &dir.0, &as_args(&up.keep));
    cni.await_chained();
    let old_generation = old.generation();
    // The connections that live through the upgrade: pod to pod, and to a
    // Service whose backend speaks first after it.
    let mut session = connect(&a, &format!("10.244.1.2:{SESSION_PORT}"));
    assert_eq!(exchange(&mut session).expect("exchange"), "x/b");
    let speaker = Speaker::start(&pod_netns(bed, "x/web"), 9000);
    let mut service = connect(&a, "10.96.0.70:9000");
    speaker.say.send("hello".into()).expect("speaker runs");
    assert_eq!(read_message(&mut service).expect("hello"), "hello");
    assert_eq!(exchange(&mut service).expect("through the Service"), "pong");

    let pings = ping(session);
    let knocks = knock(&c, &b, "10.244.1.2");
    std::thread::sleep(Duration::from_millis(300));

    old.terminate();
    // Left for the next agent: redirectors (failing closed), routes, the
    // pair, the chaining and the table.
    let b_veth = &bed.pods()["x/b"].host_veth;
    assert_eq!(programs(node, b_veth), [podfence_bpf::PROGRAM_NAME]);
    assert_eq!(programs(node, "pf-dp"), [podfence_bpf::PROGRAM_NAME]);
    let routes = netns::ip(node, &["-4", "route", "show", "table", "7066"]);
    assert!(routes.contains("10.244.1.2 dev pf-host"), "{routes}");
    assert!(cni.chained(), "podfence-cni stays chained");
    assert!(cni.bin.join("podfence-cni").exists());
    assert!(table.exists(), "the connection table's file stays");
    // Nothing passes while no agent runs (fail closed).
    std::thread::sleep(Duration::from_millis(200));

    // The next agent, to be removed afterwards: `clean`.
    let new = AgentProcess::start(node, source, &dir.0, &as_args(&up.clean));
    assert!(
        new.generation() > old_generation,
        "generations continue above the old agent's ({} then {})",
        old_generation,
        new.generation()
    );
    // The backend speaks first: its packet finds the restored translated
    // connection and reaches the client from the Service address.
    speaker
        .say
        .send("after the upgrade".into())
        .expect("speaker runs");
    assert_eq!(
        read_message(&mut service).expect("the backend's first packet after the upgrade"),
        "after the upgrade"
    );
    assert_eq!(exchange(&mut service).expect("the client's turn"), "pong");
    std::thread::sleep(Duration::from_millis(300));

    let (sent, received) = knocks.finish();
    let pings = pings.finish();
    eprintln!(
        "upgrade: longest silence of the open connection {:?} ({} exchanges); denied knocks \
         {received} of {sent} passed",
        pings.longest_silence, pings.exchanges
    );
    assert_eq!(pings.error, None, "the connection survives the upgrade");
    assert!(pings.exchanges > 20, "{pings:?}");
    assert!(sent > 40, "the denied peer knocked: {sent}");
    assert_eq!(received, 0, "no denied packet passed");

    // Uninstall: the node as it was.
    new.terminate();
    up.assert_as_before();
}

#[test]
fn a_rollout_with_a_surge_hands_over_while_the_old_agent_enforces() {
    if skip() {
        return;
    }
    let options = TestbedOptions {
        session_ports: vec![SESSION_PORT],
        ..TestbedOptions::default()
    };
    let up = UpgradeBed::new(&options, "surge");
    let UpgradeBed {
        bed,
        dir,
        node,
        cni,
        table,
        source,
        ..
    } = &up;
    let (a, b, c) = (
        pod_netns(bed, "x/a"),
        pod_netns(bed, "x/b"),
        pod_netns(bed, "x/c"),
    );

    let old = AgentProcess::start(node, source, &dir.0, &as_args(&up.keep));
    cni.await_chained();
    let old_generation = old.generation();
    let mut session = connect(&a, &format!("10.244.1.2:{SESSION_PORT}"));
    assert_eq!(exchange(&mut session).expect("exchange"), "x/b");
    let pings = ping(session);
    let knocks = knock(&c, &b, "10.244.1.2");
    std::thread::sleep(Duration::from_millis(300));

    // The next agent starts beside the old one, as with `maxSurge: 1`:
    // the old one enforces while it compiles, then hands over.
    let log = dir.0.join("next.log");
    let new = AgentProcess::start_beside(node, source, &dir.0, &as_args(&up.clean), &log);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("the agent before handed the node over"),
        "the next agent took over through a handover: {text}"
    );
    assert!(
        new.generation() > old_generation,
        "generations continue above the old agent's ({} then {})",
        old_generation,
        new.generation()
    );
    std::thread::sleep(Duration::from_millis(300));
    // Handed over, the old one has nothing to undo at its SIGTERM (the
    // rollout deletes its pod once the new one is ready).
    old.terminate();
    let b_veth = &bed.pods()["x/b"].host_veth;
    assert_eq!(programs(node, b_veth), [podfence_bpf::PROGRAM_NAME]);
    assert!(cni.chained(), "podfence-cni stays chained");
    assert!(table.exists(), "the new agent's connection table");
    std::thread::sleep(Duration::from_millis(300));

    let (sent, received) = knocks.finish();
    let pings = pings.finish();
    eprintln!(
        "surge: longest silence of the open connection {:?} ({} exchanges); denied knocks \
         {received} of {sent} passed",
        pings.longest_silence, pings.exchanges
    );
    assert_eq!(pings.error, None, "the connection survives the handover");
    assert!(pings.exchanges > 40, "{pings:?}");
    assert!(sent > 60, "the denied peer knocked: {sent}");
    assert_eq!(received, 0, "no denied packet passed");
    let denied = Testbed::tcp_probe_from(
        &c,
        "10.244.1.2".parse().expect("IP"),
        SESSION_PORT,
        Duration::from_millis(700),
    )
    .expect("probe");
    assert_eq!(denied, ProbeOutcome::NoAnswer, "the new agent enforces");

    new.terminate();
    up.assert_as_before();
}

#[test]
fn a_table_of_another_layout_starts_clean() {
    if skip() {
        return;
    }
    let options = TestbedOptions {
        session_ports: vec![SESSION_PORT],
        ..TestbedOptions::default()
    };
    let (bed, dir, manifests) = common::testbed_with_manifests(CLUSTER, &options, "layout");
    let node = bed.node_netns().to_owned();
    let (a, c) = (pod_netns(&bed, "x/a"), pod_netns(&bed, "x/c"));
    let before = node_state(&node);
    let table = dir.0.join("conntrack");
    let log = dir.0.join("agent.log");
    let flags = [
        "--on-stop",
        "keep",
        "--conntrack-file",
        table.to_str().expect("path"),
    ];
    let source = manifests_arg(&manifests);
    let old = AgentProcess::start(&node, &source, &dir.0, &flags);
    let mut session = connect(&a, &format!("10.244.1.2:{SESSION_PORT}"));
    assert_eq!(exchange(&mut session).expect("exchange"), "x/b");
    old.terminate();

    // As if the next agent's layout were another: its version in the header.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&table)
            .expect("table file");
        let mut version = [0u8; 4];
        file.read_exact_at(&mut version, 8).expect("read");
        let bumped = u32::from_ne_bytes(version) + 1;
        file.write_all_at(&bumped.to_ne_bytes(), 8).expect("write");
    }
    let clean_flags = [
        "--on-stop",
        "clean",
        "--conntrack-file",
        table.to_str().expect("path"),
    ];
    let new = AgentProcess::start_logged(&node, &source, &dir.0, &clean_flags, Some(&log));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("does not fit this agent") && text.contains("layout version"),
        "the agent says it starts clean: {text}"
    );
    let version = {
        let bytes = std::fs::read(&table).expect("table file");
        u32::from_ne_bytes(bytes[8..12].try_into().expect("4 bytes"))
    };
    assert_eq!(
        version,
        podfence_datapath::conntrack::LAYOUT_VERSION,
        "rewritten"
    );
    // The open connection is picked up again by its next packet (policy
    // allows it); the denied peer stays denied.
    assert_eq!(exchange(&mut session).expect("picked up"), "x/b");
    let denied = Testbed::tcp_probe_from(
        &c,
        "10.244.1.2".parse().expect("IP"),
        SESSION_PORT,
        Duration::from_millis(700),
    )
    .expect("probe");
    assert_eq!(denied, ProbeOutcome::NoAnswer);
    new.terminate();
    assert_eq!(node_state(&node), before, "nothing left behind");
    assert!(!table.exists());
}

#[test]
fn a_next_agent_that_fails_to_start_leaves_the_node_failing_closed() {
    if skip() {
        return;
    }
    let options = TestbedOptions {
        session_ports: vec![SESSION_PORT],
        ..TestbedOptions::default()
    };
    let (bed, dir, manifests) = common::testbed_with_manifests(CLUSTER, &options, "failed-next");
    let node = bed.node_netns().to_owned();
    let (a, c) = (pod_netns(&bed, "x/a"), pod_netns(&bed, "x/c"));
    let before = node_state(&node);
    let table = dir.0.join("conntrack");
    let table_arg = table.to_str().expect("path");
    let keep = ["--on-stop", "keep", "--conntrack-file", table_arg];
    let source = manifests_arg(&manifests);
    let old = AgentProcess::start(&node, &source, &dir.0, &keep);
    let mut session = connect(&a, &format!("10.244.1.2:{SESSION_PORT}"));
    assert_eq!(exchange(&mut session).expect("exchange"), "x/b");
    old.terminate();

    // The next agent cannot start (a read-only /proc/sys: its sysctl
    // fails after it found the pair): what the old one left stays, and
    // nothing reaches a pod past the datapath.
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         exec ip netns exec {node} {} run --manifests {} --node-name node-1 \
         --control-socket none --no-metrics --on-stop keep --conntrack-file {table_arg}",
        common::podfence().display(),
        manifests.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    let b_veth = &bed.pods()["x/b"].host_veth;
    assert_eq!(
        programs(&node, b_veth),
        [podfence_bpf::PROGRAM_NAME],
        "{stderr}"
    );
    let routes = netns::ip(&node, &["-4", "route", "show", "table", "7066"]);
    assert!(routes.contains("10.244.1.2 dev pf-host"), "{routes}");
    assert!(table.exists(), "the table stays for the next try");
    let probe = |netns: &str| {
        Testbed::tcp_probe_from(
            netns,
            "10.244.1.2".parse().expect("IP"),
            SESSION_PORT,
            Duration::from_millis(700),
        )
        .expect("probe")
    };
    assert_eq!(probe(&c), ProbeOutcome::NoAnswer, "denied stays denied");
    assert_eq!(probe(&a), ProbeOutcome::NoAnswer, "failing closed");

    // A next agent that starts takes over, the connection included.
    let clean = ["--on-stop", "clean", "--conntrack-file", table_arg];
    let new = AgentProcess::start(&node, &source, &dir.0, &clean);
    assert_eq!(exchange(&mut session).expect("after the takeover"), "x/b");
    new.terminate();
    assert_eq!(node_state(&node), before, "nothing left behind");
}

#[test]
fn a_kept_connection_the_next_agents_policies_deny_is_cut() {
    if skip() {
        return;
    }
    let options = TestbedOptions {
        session_ports: vec![SESSION_PORT],
        ..TestbedOptions::default()
    };
    let (bed, dir, manifests) = common::testbed_with_manifests(CLUSTER, &options, "recheck");
    let node = bed.node_netns().to_owned();
    let a = pod_netns(&bed, "x/a");
    let table = dir.0.join("conntrack");
    let flags = [
        "--on-stop",
        "keep",
        "--conntrack-file",
        table.to_str().expect("path"),
    ];
    let source = manifests_arg(&manifests);
    let old = AgentProcess::start(&node, &source, &dir.0, &flags);
    let mut kept = connect(&a, &format!("10.244.1.2:{SESSION_PORT}"));
    let mut web = connect(&a, &format!("10.244.1.4:{SESSION_PORT}"));
    assert_eq!(exchange(&mut kept).expect("exchange"), "x/b");
    assert_eq!(exchange(&mut web).expect("exchange"), "x/web");
    old.terminate();

    // The next agent's policies: b talks to nobody now, either way (a
    // mid-stream packet is picked up if either direction is allowed).
    let closed = CLUSTER
        .replace(
            "  ingress:\n  - from: [{podSelector: {matchLabels: {pod: a}}}]\n",
            "",
        )
        .replace(
            "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]",
            "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress, Egress]",
        );
    assert!(closed.contains("policyTypes: [Ingress, Egress]") && !closed.contains("from:"));
    std::fs::write(&manifests, closed).expect("manifests");
    let new = AgentProcess::start(&node, &source, &dir.0, &flags);
    kept.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert!(
        exchange(&mut kept).is_err(),
        "re-checked against the new policies and cut"
    );
    assert_eq!(
        exchange(&mut web).expect("still allowed"),
        "x/web",
        "the others continue"
    );
    drop(new);
}
