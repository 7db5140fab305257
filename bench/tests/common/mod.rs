//! Helpers shared by the bench's live tests (testbeds with manifests, the
//! agent process); general ones are in podfence-testkit.

#![allow(dead_code, reason = "each test file uses a part")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Removes a directory on drop, also when the test fails.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A testbed of the cluster in `yaml` and a temporary directory (removed
/// on drop) named after the testbed and `tag` that holds the YAML as
/// `cluster.yaml`, for `podfence run --manifests`.
pub(crate) fn testbed_with_manifests(
    yaml: &str,
    options: &podfence_bench::testbed::TestbedOptions,
    tag: &str,
) -> (podfence_bench::testbed::Testbed, TempDir, PathBuf) {
    let cluster = podfence_control::sources::manifests::load_str(Path::new("inline"), yaml)
        .expect("manifests load")
        .cluster;
    let bed = podfence_bench::testbed::Testbed::build(&cluster, options).expect("testbed");
    let dir = std::env::temp_dir().join(format!("{}-{tag}", bed.prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);
    let manifests = dir.0.join("cluster.yaml");
    std::fs::write(&manifests, yaml).expect("write manifests");
    (bed, dir, manifests)
}

/// The agent process; killed on drop.
pub(crate) struct AgentProcess {
    child: Child,
    ready: PathBuf,
}

impl AgentProcess {
    /// `podfence run SOURCE... --node-name node-1` in `node` (its control
    /// socket `DIR/control.sock`), waiting until it is ready.
    pub(crate) fn start(node: &str, source: &[String], dir: &Path, extra: &[&str]) -> Self {
        Self::start_logged(node, source, dir, extra, None)
    }

    /// [`Self::start`], its log (standard error) appended to `log`.
    pub(crate) fn start_logged(
        node: &str,
        source: &[String],
        dir: &Path,
        extra: &[&str],
        log: Option<&Path>,
    ) -> Self {
        Self::spawn(node, source, (dir, "ready"), extra, log)
    }

    /// [`Self::start_logged`] while another agent runs in `node` with the
    /// same `dir` (a rollout with a surge): its own ready file.
    pub(crate) fn start_beside(
        node: &str,
        source: &[String],
        dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Self {
        Self::spawn(node, source, (dir, "ready-next"), extra, Some(log))
    }

    fn spawn(
        node: &str,
        source: &[String],
        (dir, ready): (&Path, &str),
        extra: &[&str],
        log: Option<&Path>,
    ) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("agent log file"),
            ),
            None => Stdio::inherit(),
        };
        let ready = dir.join(ready);
        let _ = std::fs::remove_file(&ready);
        let child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(podfence())
            .arg("run")
            .args(source)
            .args(["--node-name", "node-1", "--ready-file"])
            .arg(&ready)
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("podfence run starts");
        let mut agent = Self { child, ready };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.ready.exists() {
            if let Some(status) = agent.child.try_wait().expect("wait") {
                panic!("podfence run exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "podfence run not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// The table generation in force, from the ready file (written at start
    /// and at every publish of a manifest change).
    pub(crate) fn generation(&self) -> u64 {
        let text = std::fs::read_to_string(&self.ready).expect("ready file");
        text.trim().parse().expect("a generation number")
    }

    fn signal(&mut self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub(crate) fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    pub(crate) fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "podfence run exited with {status}");
        assert!(!self.ready.exists(), "the ready file is removed at stop");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Everything in the node namespace that the agent could leave behind:
/// links (with any XDP program), policy rules, our table, routes.
pub(crate) fn node_state(node: &str) -> String {
    let mut state = String::new();
    for args in [
        &["-d", "-o", "link", "show"][..],
        &["-4", "rule", "show"],
        &["-6", "rule", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        let out = podfence_testkit::netns::ip(node, args);
        // Counters and link-local routes of the pair change by themselves.
        for line in out.lines() {
            let line: String = line
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(" noqueue state UP", "");
            state.push_str(&line);
            state.push('\n');
        }
    }
    state
}

/// A server in `netns` on `port` for one connection that answers every
/// message with "pong" and sends what it is handed on its own: a server
/// that speaks first.
pub(crate) struct Speaker {
    /// What to send next, unasked.
    pub(crate) say: std::sync::mpsc::Sender<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Speaker {
    pub(crate) fn start(netns: &str, port: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, mpsc};
        let listener = podfence_bench::testbed::in_netns(netns, move || {
            std::net::TcpListener::bind(("0.0.0.0", port))
        })
        .expect("speaker binds");
        listener.set_nonblocking(true).expect("nonblocking");
        let (say, said) = mpsc::channel::<String>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut stream = loop {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
            let mut buf = [0u8; 256];
            while !stopping.load(Ordering::Relaxed) {
                while let Ok(text) = said.try_recv() {
                    let _ = stream.write_all(text.as_bytes());
                }
                match stream.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {
                        let _ = stream.write_all(b"pong");
                    }
                    Err(_) => {}
                }
            }
        });
        Self {
            say,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `podfence` binary built beside this test.
pub(crate) fn podfence() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("podfence");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p podfence-control` (nextest --workspace does)",
        bin.display()
    );
    bin
}

/// `GET path` from inside `netns` to `addr`: the status line and the body.
pub(crate) fn http_get(netns: &str, addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = addr.to_owned();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let text = podfence_bench::testbed::in_netns(netns, move || {
        let mut stream = std::net::TcpStream::connect(addr.as_str())?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })
    .expect("HTTP request");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Namespace `x` with pods `a` (10.244.1.1) and `b` (10.244.1.2), no policy.
pub(crate) const TWO_PODS: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {pod: b}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
";
