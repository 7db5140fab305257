//! The running agent answers questions on a local socket: `podfence status`
//! (ports, workers, table generation, conntrack use, top denying policies)
//! and `podfence explain --agent` (a verdict from the tables in force, with
//! their generation).
//!
//! It also takes the CNI plugin's requests (`podfence-cni`): `adopt`,
//! `release`, `check` and `gc` (see [`super::cni`]), handed to the
//! supervisor, and `ping`; and a next agent's `handover` (see
//! [`super::supervisor::TakeOver`]), answered once this agent has stopped
//! enforcing and let go of what it leaves.
//!
//! One request line per connection, one answer, then the connection
//! closes: `status`, `ping`, `explain` and a probe line (`SRC DST PROTO
//! PORT`, tab- or space-separated), or a CNI verb and a JSON object.
//! Answers are JSON for `status`, `ping` and the CNI verbs and text for
//! `explain`; an error answer starts with `error:`. Each connection is
//! answered on a thread of its own, so an adopt that waits does not hold
//! up the others.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use podfence_datapath::ports::wait::Wake;
use rustix::event::{PollFd, PollFlags, Timespec};
use serde_json::json;
use tracing::warn;

use super::AgentStatus;
use super::cni::{ANSWER_TIMEOUT, CniCall, CniRequest};
use super::metrics::WorkerCounters;
use crate::probe::{self, Answer, Explanation, Probe, ServiceExplanation, ServiceTables};
use crate::publish::TablePublisher;

/// Default path of the socket.
pub const DEFAULT_PATH: &str = "/run/podfence/control.sock";

/// Policies listed by `status` as the top denying ones.
const TOP_DENYING: usize = 10;

/// What the answers are made from.
#[derive(Clone, Debug)]
pub struct ControlState {
    /// The tables in force and the state they were compiled from.
    pub tables: TablePublisher,
    /// The agent's status, refreshed by its owner.
    pub status: Arc<Mutex<Option<AgentStatus>>>,
    /// Worker and conntrack counters.
    pub workers: Arc<WorkerCounters>,
    /// Where the CNI plugin's requests go (the supervisor); without it
    /// they are refused.
    pub cni: Option<mpsc::Sender<CniCall>>,
    /// Where a next agent's `handover` goes (the run loop, through the
    /// supervisor); without it, it is refused.
    pub handover: Option<mpsc::Sender<HandoverCall>>,
}

/// A next agent asks this one to stop and leave the node to it: answered
/// on `reply` once the workers have stopped and the connection table, the
/// metrics port and this socket are let go.
#[derive(Debug)]
pub struct HandoverCall {
    /// Where the answer goes.
    pub reply: mpsc::Sender<String>,
}

/// How long a handover may take to be answered.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// The socket server; stopped (and its socket removed) on drop.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Ends the server's wait at once when it is to stop (a handover
    /// waits for it).
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens on `path` (its directory is created; a stale socket there is
    /// replaced).
    pub fn start(path: &Path, state: ControlState) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by a running agent", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::new()?);
        let (stopping, woken) = (Arc::clone(&stop), Arc::clone(&wake));
        let thread = std::thread::Builder::new()
            .name("podfence-control".into())
            .spawn(move || serve(&listener, &state, &stopping, &woken))?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, state: &ControlState, stop: &AtomicBool, wake: &Wake) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("podfence-control-request".into())
                    .spawn(move || {
                        if let Err(e) = answer(stream, &state) {
                            warn!(error = %e, "control socket request");
                        }
                    });
                if let Err(e) = spawned {
                    warn!(error = %e, "control socket: cannot start a thread for a request");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Until a client connects (a pod's ADD waits on it) or
                // the server is to stop.
                wait_readable(listener, wake, Duration::from_secs(1));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Sleeps until `listener` has a connection to accept, `wake` is woken or
/// `timeout` passes.
fn wait_readable(listener: &UnixListener, wake: &Wake, timeout: Duration) {
    let mut fds = [
        PollFd::new(listener, PollFlags::IN),
        PollFd::new(wake, PollFlags::IN),
    ];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
        // EINTR, or worse: never spin.
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn answer(stream: UnixStream, state: &ControlState) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(MAX_REQUEST)
        .read_line(&mut line)?;
    let line = line.trim();
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let reply = match verb {
        "status" => status(state),
        "ping" => json!({"ready": state.cni.is_some()}).to_string(),
        "explain" => explain(state, rest),
        "handover" => handover(state),
        _ => match CniRequest::parse(verb, rest) {
            Some(Ok(request)) => cni(state, request),
            Some(Err(e)) => format!("error: {e}"),
            None => format!(
                "error: unknown request {line:?} (ask `status` or `explain SRC DST PROTO PORT`)"
            ),
        },
    };
    let mut stream = stream;
    stream.write_all(reply.as_bytes())?;
    stream.write_all(b"\n")
}

/// Asks the run loop to hand the node over and waits until it has.
fn handover(state: &ControlState) -> String {
    let Some(run_loop) = &state.handover else {
        return "error: this agent does not hand over".into();
    };
    let (reply, answer) = mpsc::channel();
    if run_loop.send(HandoverCall { reply }).is_err() {
        return "error: the agent is stopping".into();
    }
    match answer.recv_timeout(HANDOVER_TIMEOUT) {
        Ok(answer) => answer,
        Err(mpsc::RecvTimeoutError::Timeout) => "error: the agent did not hand over in time".into(),
        Err(mpsc::RecvTimeoutError::Disconnected) => "error: the agent is stopping".into(),
    }
}

/// Hands `request` to the supervisor and waits for its answer.
fn cni(state: &ControlState, request: CniRequest) -> String {
    let Some(supervisor) = &state.cni else {
        return "error: this agent takes no CNI requests".into();
    };
    let (reply, answer) = mpsc::channel();
    if supervisor.send(CniCall { request, reply }).is_err() {
        return "error: the agent is stopping".into();
    }
    match answer.recv_timeout(ANSWER_TIMEOUT) {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => format!("error: {why}"),
        Err(mpsc::RecvTimeoutError::Timeout) => "error: the agent did not answer in time".into(),
        Err(mpsc::RecvTimeoutError::Disconnected) => "error: the agent is stopping".into(),
    }
}

fn status(state: &ControlState) -> String {
    let agent = state
        .status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let generation = state.tables.generation();
    let conntrack = state
        .workers
        .conntrack_usage()
        .map(|(live, capacity)| json!({"live": live, "capacity": capacity}));
    let mut top: Vec<(u64, String, String)> = state
        .tables
        .metrics()
        .denial_totals()
        .into_iter()
        .map(|((direction, policy), n)| (n, direction, policy))
        .collect();
    top.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    let top: Vec<_> = top
        .into_iter()
        .take(TOP_DENYING)
        .map(
            |(n, direction, policy)| json!({"policy": policy, "direction": direction, "denied": n}),
        )
        .collect();
    let body = match agent {
        Some(s) => json!({
            "generation": generation,
            "workers": state.workers.worker_count(),
            "pod_interfaces": s.pod_interfaces,
            "adopted": s.adopted,
            "unrouted": s.unrouted,
            "counters": {
                "rx_packets": s.counters.rx_packets,
                "allowed_packets": s.counters.allowed,
                "denied_packets": s.counters.denied,
                "connections_allowed": s.counters.new_allowed,
                "connections_denied": s.counters.new_denied,
                "connections_revoked": s.counters.revoked,
                "malformed_packets": s.counters.malformed,
            },
            "conntrack": conntrack,
            "top_denying_policies": top,
        }),
        None => json!({"generation": generation, "starting": true}),
    };
    body.to_string()
}

fn explain(state: &ControlState, probe_line: &str) -> String {
    let fields: Vec<&str> = probe_line.split_whitespace().collect();
    let probe = match Probe::from_line(&fields.join("\t")) {
        Ok(p) => p,
        Err(e) => return format!("error: {e}"),
    };
    let (cluster, generation) = state.tables.in_force();
    let services = ServiceTables::node(Arc::clone(&generation.services));
    let tables = &generation.tables;
    match probe::answer(&cluster, tables, &services, &probe) {
        Err(e) => format!("error: {e} (in table generation {})", tables.generation()),
        Ok(Answer::Direct { addresses, verdict }) => Explanation {
            probe: &probe,
            addresses,
            verdict,
            tables,
            cluster: &cluster,
        }
        .to_string(),
        Ok(Answer::Service(answer)) => ServiceExplanation {
            probe: &probe,
            answer: &answer,
            tables,
            cluster: &cluster,
        }
        .to_string(),
    }
}

/// Asks the agent listening on `path`; returns its answer.
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}
