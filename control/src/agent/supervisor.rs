//! The agent's run loop: a cluster source wired to the publisher, the
//! datapath kept in line with the local pods, and the servers that report
//! on it.
//!
//! `podfence run` and the testbed's live agent both run a [`Supervisor`]:
//! it starts from a [`ClusterSource`], and each [`tick`](Supervisor::tick)
//! picks up what changed since the last:
//! - manifests are watched and reread once a change settles (and on
//!   [`reload`](Supervisor::reload), for SIGHUP); the Kubernetes API is
//!   watched on a thread of its own, which publishes as it goes;
//! - either way the cluster state goes through a [`ClusterIndex`], so a
//!   reload or an update that changes nothing the model keeps publishes
//!   nothing;
//! - the local pods' addresses are reconciled with the datapath at once
//!   when they change, every second while some have no route yet (the CNI
//!   may add it after the API reports the pod), every ten seconds otherwise
//!   (a MAC may change);
//! - the CNI plugin's requests from the control socket are served
//!   ([`super::cni`]): an adopt publishes a generation with the pod's CNI
//!   addresses (a replica of compiled pods is added to the tables in force
//!   without a compile, a released pod taken out of them alike, and both
//!   compiled once requests stop for a second), adopts its veth at once,
//!   and is answered once the workers have it all; the reconcile above
//!   stays the safety net for pods wired while no agent ran.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use podfence_datapath::conntrack::StoreError;
use tracing::{error, info, warn};

use super::cni::{ADOPT_TIMEOUT, CniCall, CniRequest, PodRequest};
use super::control_socket::{self, ControlSocket, ControlState, HandoverCall};
use super::metrics::MetricsServer;
use super::{Agent, AgentError, AgentOptions, AgentStatus, OnStop, WorkerReport, plumbing};
use crate::compile::{CompileOptions, Locality};
use crate::index::{Cluster, ClusterIndex};
use crate::publish::TablePublisher;
use crate::sources::kube::{ApiTarget, SourceError, SourceOptions, SourceThread};
use crate::sources::manifests::{self, LoadErrors};

/// Where the cluster state comes from.
#[derive(Clone, Debug)]
pub enum ClusterSource {
    /// Manifest files and directories, reread when they change.
    Manifests(Vec<PathBuf>),
    /// The Kubernetes API, watched.
    Api(ApiTarget, SourceOptions),
    /// States the caller hands over whole, the first here and the next
    /// ones with [`Supervisor::apply_state`] (the testbed's live agent).
    Given(Cluster),
}

/// How the supervisor runs, beyond the agent's own options.
#[derive(Clone, Debug, Default)]
pub struct SupervisorOptions {
    /// The agent.
    pub agent: AgentOptions,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (from before the
    /// first sync).
    pub metrics_addr: Option<SocketAddr>,
    /// Answer `podfence status` and `explain --agent` on this socket.
    pub control_socket: Option<PathBuf>,
    /// An agent still runs on this node: take over from it once the
    /// cluster is compiled.
    pub take_over: Option<TakeOver>,
}

/// How long a next agent waits for one that did not hand over to let go
/// of the connection table (its pod is deleted once the next one is ready
/// for `minReadySeconds`, then it has its grace period to stop).
const STOPPING_AGENT_WAIT: Duration = Duration::from_mins(5);

/// Taking the node over from an agent that still enforces there (a
/// DaemonSet rollout with a surge): it goes on enforcing while this one
/// lists and compiles the cluster; then, asked over its control socket, it
/// stops its workers and lets go of the connection table, the metrics
/// port and the socket, leaving the XDP programs (failing closed), the
/// routes and the pair, which this one then takes over as after a `keep`
/// stop. Pod traffic waits only for that exchange, not for this agent's
/// start.
#[derive(Clone, Debug)]
pub struct TakeOver {
    /// Its control socket.
    pub socket: PathBuf,
    /// The table generation it had in force: this one numbers above it.
    pub generation: u64,
    /// The connection table's file, and its capacity, opened once handed
    /// over (the agent before holds its lock until then).
    pub conntrack: Option<(PathBuf, usize)>,
}

impl TakeOver {
    /// The generation in force of the agent answering on `socket`, if one
    /// does.
    #[must_use]
    pub fn running_agent(socket: &std::path::Path) -> Option<u64> {
        let answer = control_socket::request(socket, "status").ok()?;
        let status: serde_json::Value = serde_json::from_str(answer.trim()).ok()?;
        status.get("generation")?.as_u64()
    }

    /// Makes the pods' sockets, asks the agent before to hand over, and
    /// starts on what it leaves.
    fn start_agent(
        self,
        tables: TablePublisher,
        cluster: &Cluster,
        mut options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        let ahead = Agent::pod_sockets_ahead(cluster, &tables, &options);
        self.complete(&tables, &mut options)?;
        Agent::start_with(tables, cluster, options, Some(ahead))
    }

    /// Asks the agent before to hand over and opens the table it leaves.
    /// An agent that does not answer (it is stopping, or gone) leaves the
    /// same once it has stopped: the table's lock is waited for.
    fn complete(self, tables: &TablePublisher, agent: &mut AgentOptions) -> Result<(), AgentError> {
        let asked = Instant::now();
        let handed_over = match control_socket::request(&self.socket, "handover") {
            Ok(answer) if !answer.starts_with("error:") => {
                info!(
                    took_ms = asked.elapsed().as_secs_f64() * 1e3,
                    "the agent before handed the node over"
                );
                true
            }
            Ok(answer) => {
                warn!(
                    answer = answer.trim(),
                    "the agent before did not hand over; taking over what it leaves when it stops"
                );
                false
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "the agent before did not answer; taking over what it leaves when it stops"
                );
                false
            }
        };
        if let Some((path, entries)) = self.conntrack {
            // One that does not hand over (it is stopping, or too old to
            // know how) holds the table until its pod goes: wait for that.
            let waited = Instant::now();
            let conntrack = loop {
                match super::open_conntrack(Some(&path), entries) {
                    Err(AgentError::Conntrack(StoreError::Locked { .. }))
                        if !handed_over && waited.elapsed() < STOPPING_AGENT_WAIT => {}
                    opened => break opened?,
                }
            };
            let _ = tables.take_conntrack(&conntrack);
            agent.conntrack = Some(conntrack);
        }
        Ok(())
    }
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The manifests cannot be used.
    #[error("the manifests cannot be used: {0}")]
    Manifests(LoadErrors),
    /// The Kubernetes source could not start, or ended before its first
    /// sync.
    #[error("the Kubernetes source: {0}")]
    Source(#[from] SourceError),
    /// The Kubernetes source ended before its first sync without saying why.
    #[error("the Kubernetes source ended before its first sync")]
    SourceEnded,
    /// The metrics server could not start.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The agent could not start.
    #[error("the agent cannot start: {0}")]
    Agent(#[from] AgentError),
}

/// The running source.
enum Running {
    /// Files, reread when they change.
    Manifests {
        paths: Vec<PathBuf>,
        watch: Option<ManifestWatch>,
        index: ClusterIndex,
    },
    /// The API, watched on its thread; the local pods' addresses after each
    /// publish that changed them.
    Api {
        thread: SourceThread,
        addresses: mpsc::Receiver<Vec<IpAddr>>,
    },
    /// States handed over by the caller.
    Given { index: ClusterIndex },
}

/// A running agent with its source (see the module doc).
pub struct Supervisor {
    // Field order is drop order: the source stops before the agent.
    source: Running,
    agent: Agent,
    pods: PodTracker,
    cni: Option<CniRequests>,
    handover: Option<mpsc::Receiver<HandoverCall>>,
    status: Arc<Mutex<Option<AgentStatus>>>,
    status_refreshed: Instant,
    _control: Option<ControlSocket>,
    _metrics: Option<MetricsServer>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

fn load(paths: &[PathBuf]) -> Result<Cluster, LoadErrors> {
    let m = manifests::load(paths)?;
    if let Some(note) = m.skipped_note() {
        info!("{note}");
    }
    Ok(m.cluster)
}

impl Supervisor {
    /// Starts the source and the agent. With the API, nothing is enforced
    /// before every kind has listed once; `should_stop` is asked meanwhile,
    /// and `Ok(None)` means it said stop.
    pub fn start(
        source: ClusterSource,
        options: SupervisorOptions,
        should_stop: impl FnMut() -> bool,
    ) -> Result<Option<Self>, SupervisorError> {
        let SupervisorOptions {
            agent: agent_options,
            metrics_addr,
            control_socket,
            take_over,
        } = options;
        let given = match &source {
            ClusterSource::Manifests(paths) => {
                Some(load(paths).map_err(SupervisorError::Manifests)?)
            }
            ClusterSource::Given(cluster) => Some(cluster.clone()),
            ClusterSource::Api(..) => None,
        };
        let node = agent_options.node_name.as_deref();
        let locality = match (&given, node) {
            (Some(cluster), node) => super::locality(cluster, node),
            (None, Some(name)) => Locality::Node(name.to_owned()),
            (None, None) => {
                warn!("no --node-name (or NODE_NAME): every pod of the cluster counts as local");
                Locality::AllPods
            }
        };
        let tables = TablePublisher::new(CompileOptions {
            generation: 0,
            locality,
            broad_threshold: agent_options.broad_threshold,
            node_addresses: plumbing::host_addresses()?,
            audit: agent_options.audit,
        })
        .with_services(agent_options.services.clone());
        let tables = match (&agent_options.conntrack, &take_over) {
            (Some(conntrack), _) => tables.with_conntrack(conntrack),
            (None, Some(from)) => tables.numbered_after(from.generation),
            (None, None) => tables,
        };
        let reported = (
            Arc::clone(&agent_options.worker_counters),
            Arc::clone(&agent_options.health),
        );
        // Taking over, the port is the running agent's until it hands over.
        let mut metrics = match (metrics_addr, &take_over) {
            (Some(addr), None) => Some(start_metrics(addr, &tables, &reported, Duration::ZERO)?),
            _ => None,
        };
        let worker_counters = Arc::clone(&agent_options.worker_counters);
        let (running, first_list) = match (source, given) {
            (ClusterSource::Api(target, source_options), _) => {
                let Some(started) = start_from_api(target, source_options, &tables, should_stop)?
                else {
                    return Ok(None);
                };
                started
            }
            (source, Some(cluster)) => {
                let mut index = ClusterIndex::with_metrics(tables.metrics().clone());
                let _ = index.replace_all(cluster);
                tables.publish(index.cluster(), None);
                let running = match source {
                    ClusterSource::Manifests(paths) => Running::Manifests {
                        watch: ManifestWatch::start(&paths),
                        paths,
                        index,
                    },
                    _ => Running::Given { index },
                };
                (running, None)
            }
            (_, None) => unreachable!("only the API source starts without a state"),
        };
        let cluster = match (&running, &first_list) {
            (_, Some(cluster)) => cluster,
            (Running::Manifests { index, .. } | Running::Given { index }, None) => index.cluster(),
            (Running::Api { .. }, None) => unreachable!("the API source gives its first list"),
        };
        let taking_over = take_over.is_some();
        let agent = match take_over {
            Some(from) => from.start_agent(tables, cluster, agent_options)?,
            None => Agent::start(tables, cluster, agent_options)?,
        };
        if let (Some(addr), true) = (metrics_addr, taking_over) {
            // The agent before lets go of the port as it hands over.
            let wait = Duration::from_secs(5);
            metrics = Some(start_metrics(addr, agent.tables(), &reported, wait)?);
        }
        let status = agent.status();
        let pods = PodTracker::new(&status);
        let status = Arc::new(Mutex::new(Some(status)));
        let (control, queues) = control_socket
            .and_then(|path| start_control(&path, &agent, &status, worker_counters))
            .unzip();
        let (cni, handover) = queues.unzip();
        Ok(Some(Self {
            agent,
            source: running,
            pods,
            cni,
            handover,
            status,
            status_refreshed: Instant::now(),
            _control: control,
            _metrics: metrics,
        }))
    }

    /// The agent.
    #[must_use]
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// A next agent's request to take the node over, if one came: the
    /// caller stops with [`OnStop::Keep`] and then answers it (see
    /// [`TakeOver`]).
    #[must_use]
    pub fn handover_asked(&self) -> Option<HandoverCall> {
        self.handover.as_ref()?.try_recv().ok()
    }

    /// One turn of the loop: settled manifest changes are reread, the
    /// local pods reconciled when due, the status the control socket
    /// reports refreshed once a second. Returns the generation a manifest
    /// change published, if one did.
    pub fn tick(&mut self) -> Option<u64> {
        let mut published = None;
        match &mut self.source {
            Running::Manifests { watch, .. } => {
                if let Some(seen) = watch.as_mut().and_then(ManifestWatch::settled) {
                    published = self.reload(seen);
                }
            }
            Running::Api { addresses, .. } => {
                if let Some(latest) = addresses.try_iter().last() {
                    self.pods.set(latest);
                }
            }
            Running::Given { .. } => {}
        }
        self.serve_cni();
        self.pods.maintain(&mut self.agent);
        if self.status_refreshed.elapsed() >= Duration::from_secs(1) {
            *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.agent.status());
            self.status_refreshed = Instant::now();
            // Generations the workers have moved on from, freed here.
            self.agent.tables().publisher().free_retired();
        }
        published
    }

    /// Rereads the manifests (SIGHUP); `seen` is when the reason to was
    /// noticed. Returns the generation published, if the state changed. A
    /// manifest that no longer loads leaves the tables in force.
    pub fn reload(&mut self, seen: Instant) -> Option<u64> {
        let Running::Manifests { paths, .. } = &self.source else {
            info!("SIGHUP: the Kubernetes source has nothing to reread");
            return None;
        };
        match load(paths) {
            Ok(cluster) => self.apply_state(cluster, seen),
            Err(e) => {
                error!(error = %e, "reload failed; the tables in force stay");
                None
            }
        }
    }

    /// Replaces the cluster state with `cluster` (manifests, or a state
    /// handed over by the caller): publishes a generation if anything the
    /// model keeps changed, and reconciles the local pods at once. Returns
    /// the generation published; `None` when nothing changed (or the source
    /// is the API, whose state is its own).
    pub fn apply_state(&mut self, cluster: Cluster, seen: Instant) -> Option<u64> {
        let (Running::Manifests { index, .. } | Running::Given { index }) = &mut self.source else {
            warn!("a state handed to an agent that watches the API is ignored");
            return None;
        };
        if !index.replace_all(cluster).changed() {
            info!("the cluster state is unchanged; no generation published");
            return None;
        }
        let tables = self.agent.tables();
        let generation = tables.publish(index.cluster(), Some(seen)).generation;
        self.pods.set(tables.local_addresses());
        self.pods.maintain(&mut self.agent);
        Some(generation)
    }

    /// Serves the CNI plugin's requests and answers the adopts that are in
    /// force or out of time (see the module doc).
    fn serve_cni(&mut self) {
        let Some(mut cni) = self.cni.take() else {
            return;
        };
        let calls: Vec<CniCall> = cni
            .early
            .take()
            .into_iter()
            .chain(cni.calls.try_iter())
            .collect();
        if !calls.is_empty() {
            cni.last_call = Instant::now();
        }
        if !calls.is_empty() || !cni.pending.is_empty() {
            self.serve_cni_calls(&mut cni, calls);
        } else if cni.last_call.elapsed() >= COMPILE_DEFERRED_AFTER {
            // Pods added or removed without a compile, compiled once
            // requests stop coming.
            let _ = self.agent.tables().compile_deferred();
        }
        self.cni = Some(cni);
    }

    fn serve_cni_calls(&mut self, cni: &mut CniRequests, calls: Vec<CniCall>) {
        let tables = self.agent.tables().clone();
        let Taken {
            changed,
            mut after_sync,
            checks,
        } = self.take_cni_calls(cni, calls);
        // While adopts wait (for a route, for the pod in the cluster
        // state), the datapath is reconciled five times a second.
        if changed || cni.last_reconcile.elapsed() >= Duration::from_millis(200) {
            self.pods.set(tables.local_addresses());
            self.pods.force();
            self.pods.maintain(&mut self.agent);
            cni.last_reconcile = Instant::now();
        }
        for (reply, pod) in checks {
            let answer = match enforcement_gap(&self.agent, &tables, &pod) {
                None => Ok(serde_json::json!({"enforced": true}).to_string()),
                Some(why) => Err(format!("not enforced: {why}")),
            };
            let _ = reply.send(answer);
        }
        let now = Instant::now();
        let mut timed_out = false;
        for adopt in std::mem::take(&mut cni.pending) {
            match enforcement_gap(&self.agent, &tables, &adopt.pod) {
                None => {
                    let answer = serde_json::json!({
                        "generation": tables.generation(),
                        "addresses": adopt.pod.addresses,
                    });
                    after_sync.push((adopt.reply, answer.to_string()));
                }
                Some(why) if now >= adopt.deadline => {
                    warn!(pod = %adopt.pod.key(), why, "CNI adopt refused: not in force in time");
                    if tables.forget_cni_addresses(&adopt.pod.key(), &adopt.pod.container_id) {
                        for &addr in &adopt.pod.addresses {
                            self.agent.set_known_mac(addr, None);
                        }
                    }
                    timed_out = true;
                    let _ = adopt
                        .reply
                        .send(Err(format!("not enforced within {ADOPT_TIMEOUT:?}: {why}")));
                }
                Some(_) => cni.pending.push(adopt),
            }
        }
        if timed_out {
            self.pods.set(tables.local_addresses());
            self.pods.force();
        }
        if !after_sync.is_empty() {
            // `podfence status` shows the change once the plugin returns.
            *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.agent.status());
            self.status_refreshed = Instant::now();
            let synced = self.agent.sync_workers(Duration::from_secs(1));
            for (reply, answer) in after_sync {
                let _ = reply.send(if synced {
                    Ok(answer)
                } else {
                    Err("the workers did not apply the change in time".into())
                });
            }
        }
    }

    /// Waits up to `max` between ticks, less when a CNI request comes (a
    /// pod waits to start): the caller's loop then ticks at once.
    pub fn idle(&mut self, max: Duration) {
        match &mut self.cni {
            Some(cni) if cni.early.is_none() => {
                cni.early = cni.calls.recv_timeout(max).ok();
            }
            _ => std::thread::sleep(max),
        }
    }

    /// Applies the new requests to the tables: adopts become pending,
    /// releases and collections are done.
    fn take_cni_calls(&mut self, cni: &mut CniRequests, calls: Vec<CniCall>) -> Taken {
        let tables = self.agent.tables().clone();
        let mut changed = false;
        // Answers due once the workers have applied what this round did.
        let mut after_sync: Vec<(Reply, String)> = Vec::new();
        let mut checks: Vec<(Reply, PodRequest)> = Vec::new();
        // Adopts are recorded together (one publish for the pods that came
        // at once), before any release or collection that follows them.
        let mut adopts: Vec<(PodRequest, Reply)> = Vec::new();
        for CniCall { request, reply } in calls {
            if !matches!(request, CniRequest::Adopt(_)) {
                changed |= self.record_adopts(cni, std::mem::take(&mut adopts));
            }
            match request {
                CniRequest::Adopt(pod) => adopts.push((pod, reply)),
                CniRequest::Release(pod) => {
                    let key = pod.key();
                    let held = tables.cni_addresses(&key);
                    let released = tables.forget_cni_addresses(&key, &pod.container_id);
                    if released {
                        for addr in held.into_iter().flat_map(|(_, ips)| ips) {
                            self.agent.set_known_mac(addr, None);
                        }
                        changed = true;
                    }
                    cni.pending.retain(|p| {
                        let same = p.pod.key() == key && p.pod.container_id == pod.container_id;
                        if same {
                            let _ = p.reply.send(Err("released before it was enforced".into()));
                        }
                        !same
                    });
                    info!(pod = %key, container = pod.container_id, released, "CNI release");
                    after_sync.push((reply, serde_json::json!({"released": released}).to_string()));
                }
                CniRequest::Check(pod) => checks.push((reply, pod)),
                CniRequest::Gc(gc) => {
                    let gone = tables.retain_cni_addresses(&gc.valid_container_ids);
                    changed |= !gone.is_empty();
                    let gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
                    info!(released = ?gone, "CNI garbage collection");
                    after_sync.push((reply, serde_json::json!({"released": gone}).to_string()));
                }
            }
        }
        changed |= self.record_adopts(cni, adopts);
        Taken {
            changed,
            after_sync,
            checks,
        }
    }

    /// Records the addresses of `adopts` (one publish for all) and makes
    /// them pending; returns whether there were any.
    fn record_adopts(&mut self, cni: &mut CniRequests, adopts: Vec<(PodRequest, Reply)>) -> bool {
        if adopts.is_empty() {
            return false;
        }
        for (pod, _) in &adopts {
            if let Ok(Some(mac)) = pod.mac() {
                for &addr in &pod.addresses {
                    self.agent.set_known_mac(addr, Some(mac));
                }
            }
        }
        let sandboxes = adopts
            .iter()
            .map(|(pod, _)| {
                (
                    pod.key(),
                    pod.container_id.as_str(),
                    pod.addresses.as_slice(),
                )
            })
            .collect();
        let recorded = self.agent.tables().record_cni_addresses_of(sandboxes);
        for ((pod, reply), known) in adopts.into_iter().zip(recorded) {
            info!(pod = %pod.key(), container = pod.container_id, addresses = ?pod.addresses, ?known, "CNI adopt");
            cni.pending.push(PendingAdopt {
                pod,
                reply,
                deadline: Instant::now() + ADOPT_TIMEOUT,
            });
        }
        true
    }

    /// Stops the source, then the agent.
    pub fn stop(self) -> Result<Vec<WorkerReport>, AgentError> {
        self.stop_with(OnStop::Clean)
    }

    /// Stops the source, then the agent as `on_stop` says
    /// ([`Agent::stop_with`]).
    pub fn stop_with(self, on_stop: OnStop) -> Result<Vec<WorkerReport>, AgentError> {
        let Self { agent, source, .. } = self;
        if let Running::Api { thread, .. } = source {
            match thread.stop() {
                Ok(counters) => info!(?counters, "Kubernetes source stopped"),
                Err(e) => error!(error = %e, "Kubernetes source"),
            }
        }
        agent.stop_with(on_stop)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`, waiting up to
/// `wait` for the port to be free.
fn start_metrics(
    addr: SocketAddr,
    tables: &TablePublisher,
    (counters, health): &(
        Arc<super::metrics::WorkerCounters>,
        Arc<super::metrics::Health>,
    ),
    wait: Duration,
) -> Result<MetricsServer, SupervisorError> {
    let deadline = Instant::now() + wait;
    loop {
        match MetricsServer::start(
            addr,
            tables.metrics(),
            Arc::clone(counters),
            Arc::clone(health),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            started => return started.map_err(|source| SupervisorError::Metrics { addr, source }),
        }
    }
}

/// The control socket at `path`, and the queues of the CNI requests and
/// handovers it takes; `None`, with a warning, when it cannot listen.
fn start_control(
    path: &std::path::Path,
    agent: &Agent,
    status: &Arc<Mutex<Option<AgentStatus>>>,
    workers: Arc<super::metrics::WorkerCounters>,
) -> Option<(ControlSocket, (CniRequests, mpsc::Receiver<HandoverCall>))> {
    let (calls_tx, calls) = mpsc::channel();
    let (handover_tx, handover) = mpsc::channel();
    let state = ControlState {
        tables: agent.tables().clone(),
        status: Arc::clone(status),
        workers,
        cni: Some(calls_tx),
        handover: Some(handover_tx),
    };
    let socket = ControlSocket::start(path, state)
        .inspect_err(|e| {
            warn!(path = %path.display(), error = %e,
                "no control socket: `podfence status`, `explain --agent` and podfence-cni will not reach this agent");
        })
        .ok()?;
    let cni = CniRequests {
        calls,
        early: None,
        pending: Vec::new(),
        last_reconcile: Instant::now(),
        last_call: Instant::now(),
    };
    Some((socket, (cni, handover)))
}

/// Watches the API until every kind has listed once (nothing is enforced
/// before: the tables would reflect a half-known cluster); the source
/// and that first state, for the agent to start on. `None` when
/// `should_stop` said stop meanwhile.
fn start_from_api(
    target: ApiTarget,
    options: SourceOptions,
    tables: &TablePublisher,
    mut should_stop: impl FnMut() -> bool,
) -> Result<Option<(Running, Option<Cluster>)>, SupervisorError> {
    let (first_tx, first) = mpsc::channel::<Cluster>();
    let mut first_tx = Some(first_tx);
    // After each publish, the local pods' addresses when they changed, for
    // the agent to adopt new pods and release gone ones.
    let (addresses_tx, addresses) = mpsc::channel::<Vec<IpAddr>>();
    let published = tables.clone();
    let mut last = Vec::new();
    let thread = SourceThread::spawn(target, tables.clone(), options, move |index, _| {
        if let Some(tx) = first_tx.take() {
            let _ = tx.send(index.cluster().clone());
        }
        // With the CNI's addresses of pods the API has none for yet.
        let now = published.local_addresses();
        if now != last {
            let _ = addresses_tx.send(now.clone());
            last = now;
        }
    })?;
    info!("waiting for the first full list of every watched kind");
    let cluster = loop {
        if should_stop() {
            info!("stopping before the first sync");
            let _ = thread.stop();
            return Ok(None);
        }
        match first.recv_timeout(Duration::from_millis(50)) {
            Ok(cluster) => break cluster,
            Err(mpsc::RecvTimeoutError::Timeout) if !thread.finished() => {}
            Err(_) => {
                return Err(thread
                    .stop()
                    .err()
                    .map_or(SupervisorError::SourceEnded, Into::into));
            }
        }
    };
    Ok(Some((Running::Api { thread, addresses }, Some(cluster))))
}

/// Keeps the agent's adopted pods in line with the local pods' addresses
/// (see the module doc for when).
struct PodTracker {
    addrs: Vec<IpAddr>,
    changed: bool,
    last: Instant,
}

impl PodTracker {
    fn new(status: &AgentStatus) -> Self {
        let mut addrs: Vec<IpAddr> = status
            .adopted
            .iter()
            .chain(&status.unrouted)
            .copied()
            .collect();
        addrs.sort_unstable();
        Self {
            addrs,
            changed: false,
            last: Instant::now(),
        }
    }

    fn set(&mut self, addrs: Vec<IpAddr>) {
        if addrs != self.addrs {
            self.addrs = addrs;
            self.changed = true;
        }
    }

    /// Reconciles at the next [`maintain`](Self::maintain).
    fn force(&mut self) {
        self.changed = true;
    }

    fn maintain(&mut self, agent: &mut Agent) {
        let every = if agent.unrouted().is_empty() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        };
        if !self.changed && self.last.elapsed() < every {
            return;
        }
        self.changed = false;
        self.last = Instant::now();
        if let Err(e) = agent.reconcile(&self.addrs) {
            error!(error = %e, "adopting or releasing pods failed; retrying later");
        }
    }
}

/// How long after the last CNI request the pods added to or removed from
/// the tables without a compile ([`TablePublisher::compile_deferred`]) are
/// compiled.
const COMPILE_DEFERRED_AFTER: Duration = Duration::from_secs(1);

/// Where a CNI request's answer goes.
type Reply = mpsc::Sender<Result<String, String>>;

/// What a round of CNI requests left to do.
struct Taken {
    /// The tables' CNI addresses changed: reconcile now.
    changed: bool,
    /// Answers due once the workers have applied the round.
    after_sync: Vec<(Reply, String)>,
    /// Checks to answer after the reconcile.
    checks: Vec<(Reply, PodRequest)>,
}

/// The CNI plugin's requests, and the adopts waiting to be in force.
struct CniRequests {
    calls: mpsc::Receiver<CniCall>,
    /// A call [`Supervisor::idle`] woke up for, served by the next tick.
    early: Option<CniCall>,
    pending: Vec<PendingAdopt>,
    last_reconcile: Instant,
    /// When the last request came.
    last_call: Instant,
}

struct PendingAdopt {
    pod: PodRequest,
    reply: Reply,
    deadline: Instant,
}

/// Why `pod` is not enforced at its addresses: `None` when it is (the
/// tables in force have it at each, local; the datapath serves each on a
/// pod port, MAC known).
fn enforcement_gap(agent: &Agent, tables: &TablePublisher, pod: &PodRequest) -> Option<String> {
    let key = pod.key();
    let Some(held) = tables.in_force_pod(&key) else {
        return Some(format!(
            "pod {key} is not in the tables in force (not in the agent's cluster state yet, finished, or using the host's network)"
        ));
    };
    if !tables.locality().includes(&held) {
        return Some(format!("pod {key} is not on this node"));
    }
    for &addr in &pod.addresses {
        if !held.ips.contains(&addr) {
            return Some(format!(
                "the tables in force have pod {key} at {:?}, not {addr}",
                held.ips
            ));
        }
        match agent.served(addr) {
            None => {
                return Some(format!(
                    "{addr} is not routed through the datapath (no host route of its own to the pod's veth)"
                ));
            }
            Some((iface, false)) => {
                return Some(format!("the MAC of {addr} behind {iface} is unknown"));
            }
            Some(_) => {}
        }
    }
    None
}

/// Changes to the manifest files and directories, gathered until they
/// settle (editors and `kubectl` write in several steps).
struct ManifestWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    /// When the first unhandled change was seen, and the last.
    pending: Option<(Instant, Instant)>,
}

impl ManifestWatch {
    const SETTLE: Duration = Duration::from_millis(100);

    /// Watches `paths` (directories recursively); `None`, with a warning,
    /// when the system cannot (SIGHUP still works).
    fn start(paths: &[PathBuf]) -> Option<Self> {
        use notify::Watcher;
        let (tx, events) = mpsc::channel();
        let mut watcher = match notify::recommended_watcher(tx) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the manifests; SIGHUP rereads them");
                return None;
            }
        };
        for path in paths {
            if let Err(e) = watcher.watch(path, notify::RecursiveMode::Recursive) {
                warn!(path = %path.display(), error = %e, "cannot watch; SIGHUP rereads it");
            }
        }
        Some(Self {
            _watcher: watcher,
            events,
            pending: None,
        })
    }

    /// When the oldest change was seen, once changes have settled.
    fn settled(&mut self) -> Option<Instant> {
        for event in self.events.try_iter() {
            let Ok(event) = event else { continue };
            if event.kind.is_access() {
                continue;
            }
            let now = Instant::now();
            self.pending = Some(self.pending.map_or((now, now), |(first, _)| (first, now)));
        }
        let (first, last) = self.pending?;
        if last.elapsed() < Self::SETTLE {
            return None;
        }
        self.pending = None;
        Some(first)
    }
}
