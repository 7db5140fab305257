//! The agent running inside a testbed's node namespace, and the live
//! reachability matrix.
//!
//! [`LiveAgent`] runs the agent's [`Supervisor`] (as `podfence run` does,
//! with states handed over by the caller instead of files or the API) on a
//! thread of its own that entered the node namespace: the agent changes
//! routes and links of the namespace it runs in, and must be stopped there,
//! so every call is a message to that thread. Drop the agent before the
//! testbed (declare it after).
//!
//! [`LiveNode::probe`] performs probes as real connection attempts. A probe is
//! allowed when its first packet got through: an answer, a refusal (TCP RST
//! or ICMP port unreachable from a pod with nothing listening on that port)
//! or, for SCTP, the INIT seen at the destination. Silence until the timeout
//! is a deny.

use std::net::IpAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podfence_control::agent::supervisor::{
    ClusterSource, Supervisor, SupervisorError, SupervisorOptions,
};
use podfence_control::agent::{AgentError, AgentOptions, AgentStatus, OnStop, WorkerReport};
use podfence_control::compile::{CompileOptions, compile};
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{Endpoint, Probe, classify};

use crate::testbed::{ProbeOutcome, Testbed, TestbedError, TestbedOptions, enter_netns};

enum Request {
    Publish(Box<Cluster>, mpsc::Sender<u64>),
    Status(mpsc::Sender<AgentStatus>),
    Stop(OnStop, mpsc::Sender<Result<Vec<WorkerReport>, AgentError>>),
}

/// Why a live agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The node namespace could not be entered.
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns {
        /// Its name.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// The agent failed to start.
    #[error(transparent)]
    Start(#[from] SupervisorError),
    /// The agent failed to stop cleanly.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent's thread could not be started.
    #[error("cannot start the agent thread: {0}")]
    Thread(std::io::Error),
    /// The agent's thread is gone.
    #[error("the agent thread ended unexpectedly")]
    Gone,
}

/// An [`Agent`](podfence_control::agent::Agent) on its own thread in a network namespace.
#[derive(Debug)]
pub struct LiveAgent {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl LiveAgent {
    /// Starts the agent for `cluster` in namespace `netns`; returns once it
    /// enforces (or failed to start).
    pub fn start(netns: &str, cluster: &Cluster, options: AgentOptions) -> Result<Self, LiveError> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let (started_tx, started) = mpsc::channel::<Result<(), LiveError>>();
        let cluster = cluster.clone();
        let netns = netns.to_owned();
        let thread = std::thread::Builder::new()
            .name("pf-live-agent".into())
            .spawn(move || {
                if let Err(source) = enter_netns(&netns) {
                    let _ = started_tx.send(Err(LiveError::Netns { netns, source }));
                    return;
                }
                let options = SupervisorOptions {
                    agent: options,
                    ..SupervisorOptions::default()
                };
                let mut supervisor =
                    match Supervisor::start(ClusterSource::Given(cluster), options, || false) {
                        Ok(Some(supervisor)) => supervisor,
                        Ok(None) => unreachable!("never asked to stop while starting"),
                        Err(e) => {
                            let _ = started_tx.send(Err(e.into()));
                            return;
                        }
                    };
                let _ = started_tx.send(Ok(()));
                // A dropped sender (the handle dropped) stops the agent too.
                loop {
                    let request = match inbox.recv_timeout(Duration::from_millis(50)) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let _ = supervisor.tick();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    match request {
                        Request::Publish(cluster, reply) => {
                            let generation = supervisor
                                .apply_state(*cluster, Instant::now())
                                .unwrap_or_else(|| supervisor.agent().tables().generation());
                            let _ = reply.send(generation);
                        }
                        Request::Status(reply) => {
                            let _ = reply.send(supervisor.agent().status());
                        }
                        Request::Stop(on_stop, reply) => {
                            let _ = reply.send(supervisor.stop_with(on_stop));
                            return;
                        }
                    }
                }
                if let Err(e) = supervisor.stop() {
                    eprintln!("live agent: stop: {e}");
                }
            })
            .map_err(LiveError::Thread)?;
        let result = started.recv().unwrap_or(Err(LiveError::Gone));
        let live = Self {
            requests: Some(requests),
            thread: Some(thread),
        };
        result.map(|()| live)
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Request) -> Result<T, LiveError> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or(LiveError::Gone)?
            .send(make(tx))
            .map_err(|_| LiveError::Gone)?;
        rx.recv().map_err(|_| LiveError::Gone)
    }

    /// Hands the agent a new cluster state; returns the generation in force
    /// after it (unchanged when nothing the model keeps changed).
    pub fn publish(&self, cluster: &Cluster) -> Result<u64, LiveError> {
        self.ask(|tx| Request::Publish(Box::new(cluster.clone()), tx))
    }

    /// The agent's status.
    pub fn status(&self) -> Result<AgentStatus, LiveError> {
        self.ask(Request::Status)
    }

    /// Stops the agent cleanly and waits for it.
    pub fn stop(self) -> Result<Vec<WorkerReport>, LiveError> {
        self.stop_with(OnStop::Clean)
    }

    /// Stops the agent as `on_stop` says (keep: for the next agent, see
    /// `podfence run --on-stop`) and waits for it.
    pub fn stop_with(mut self, on_stop: OnStop) -> Result<Vec<WorkerReport>, LiveError> {
        let reports = self.ask(|tx| Request::Stop(on_stop, tx))?;
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Ok(reports?)
    }
}

impl Drop for LiveAgent {
    fn drop(&mut self) {
        // Closing the channel makes the thread stop the agent.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a probe's outcome means its first packet got through.
#[must_use]
pub fn reached(outcome: &ProbeOutcome) -> bool {
    !matches!(outcome, ProbeOutcome::NoAnswer)
}

/// One probe done live, beside the verdict the policies prescribe.
#[derive(Clone, Debug)]
pub struct LiveProbe {
    /// The attempt.
    pub probe: Probe,
    /// What happened.
    pub outcome: ProbeOutcome,
    /// Whether its first packet got through.
    pub observed: bool,
    /// The policy verdict (`podfence probe`).
    pub expected: bool,
}

/// External addresses and the ports probed on them, for the testbed's
/// outside namespace.
#[must_use]
pub fn externals(probes: &[Probe]) -> TestbedOptions {
    let mut options = TestbedOptions::default();
    for p in probes {
        for e in [&p.src, &p.dst] {
            if let Endpoint::External(ip) = e
                && !options.external.contains(ip)
            {
                options.external.push(*ip);
            }
        }
        if matches!(p.dst, Endpoint::External(_))
            && p.protocol != Protocol::Sctp
            && !options.external_ports.contains(&(p.protocol, p.port))
        {
            options.external_ports.push((p.protocol, p.port));
        }
    }
    options
}

/// A testbed node with the agent running in it.
#[derive(Debug)]
pub struct LiveNode {
    // Field order is drop order: the agent stops before the testbed goes.
    agent: LiveAgent,
    bed: Testbed,
}

/// Why a live run failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveNodeError {
    /// The testbed could not be built.
    #[error(transparent)]
    Testbed(#[from] TestbedError),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] LiveError),
    /// A probe names what the cluster does not have.
    #[error(transparent)]
    Probe(#[from] podfence_control::probe::ProbeError),
}

impl LiveNode {
    /// Builds the testbed for `cluster` (plus `options`' outside addresses)
    /// and starts the agent in its node namespace, enforcing `cluster`.
    /// With a second node, an agent given no node name is the first
    /// node's ([`Testbed::node_name`]), so the second node's pods are not
    /// local to it.
    pub fn start(
        cluster: &Cluster,
        options: &TestbedOptions,
        mut agent: AgentOptions,
    ) -> Result<Self, LiveNodeError> {
        let bed = Testbed::build(cluster, options)?;
        if agent.node_name.is_none() && bed.remote_netns().is_some() {
            agent.node_name = bed.node_name().map(str::to_owned);
        }
        let agent = LiveAgent::start(bed.node_netns(), cluster, agent)?;
        Ok(Self { agent, bed })
    }

    /// The testbed.
    #[must_use]
    pub fn testbed(&self) -> &Testbed {
        &self.bed
    }

    /// The agent.
    #[must_use]
    pub fn agent(&self) -> &LiveAgent {
        &self.agent
    }

    /// Performs `probes` live against the policies of `cluster` (which the
    /// agent must enforce) and sets each beside its policy verdict.
    pub fn probe(
        &self,
        cluster: &Cluster,
        probes: &[Probe],
        timeout: Duration,
        parallelism: usize,
    ) -> Result<Vec<LiveProbe>, LiveNodeError> {
        self.probe_via(cluster, probes, &|_| None, timeout, parallelism)
    }

    /// [`Self::probe`], each probe sent to the addresses `via` gives it (a
    /// Service of the destination pod's own, see
    /// [`crate::pod_services::PodServices::via`]) instead of the pod's. The
    /// verdict expected is the direct probe's: policy applies to the
    /// backend, after translation.
    pub fn probe_via<'v>(
        &self,
        cluster: &Cluster,
        probes: &[Probe],
        via: &(dyn Fn(&Probe) -> Option<&'v [IpAddr]> + Sync),
        timeout: Duration,
        parallelism: usize,
    ) -> Result<Vec<LiveProbe>, LiveNodeError> {
        let tables = compile(cluster, &CompileOptions::default()).tables;
        let expected = probes
            .iter()
            .map(|p| classify(cluster, &tables, p).map(|v| v.is_allowed()))
            .collect::<Result<Vec<bool>, _>>()?;
        let outcomes = self
            .bed
            .probe_all_outcomes_via(probes, via, timeout, parallelism);
        probes
            .iter()
            .zip(outcomes)
            .zip(expected)
            .map(|((probe, outcome), expected)| {
                let outcome = outcome?;
                Ok(LiveProbe {
                    probe: probe.clone(),
                    observed: reached(&outcome),
                    outcome,
                    expected,
                })
            })
            .collect()
    }

    /// Stops the agent cleanly, then removes the testbed.
    pub fn stop(self) -> Result<Vec<WorkerReport>, LiveNodeError> {
        let Self { agent, bed } = self;
        let reports = agent.stop();
        drop(bed);
        Ok(reports?)
    }
}
