//! The agent: enforces a cluster's policies on the pods of this node.
//!
//! [`Agent::start`] wires the parts together, in an order that never lets a
//! pod's traffic past the datapath once it is adopted (its caller,
//! [`supervisor`], has compiled and published the first tables):
//!
//! 1. find each local pod's host-side veth from the kernel's routes
//!    ([`plumbing::discover`]) and make sure the host-port pair exists;
//! 2. attach the XDP redirector to `pf-dp` and to every pod veth, open one
//!    AF_XDP port per interface and worker (queue `w` for worker `w`) and
//!    register it in that interface's XSKMAP;
//! 3. start the workers, each a [`Switch`] over its ports driven by a
//!    [`Worker`], pinned to a core, sharing one conntrack;
//! 4. route the pods' addresses through `pf-host` ([`plumbing::adopt`]).
//!
//! New generations are swapped in through [`TablePublisher`] without
//! stopping anything; [`Agent::reconcile`] adopts and releases pods.
//! [`Agent::stop`] undoes the start in reverse: routes
//! back to the CNI's, redirectors detached, workers stopped, the host-port
//! pair removed when this run made it. [`Agent::stop_with`]`(`[`OnStop::Keep`]`)`
//! stops the workers only and leaves the rest, and the connection table's
//! file ([`open_conntrack`]), for the next agent, as a crash does: the
//! redirectors stay attached with no socket bound, which drops pod traffic
//! (fail closed, or passes it with [`NoSocketAction::Pass`]) until the
//! next start replaces them atomically and takes the routes over in place.
//!
//! The agent runs in the calling thread's network namespace: its worker
//! threads inherit it.

pub mod cni;
pub mod cni_install;
pub mod control_socket;
pub mod denials;
pub mod metrics;
pub mod plumbing;
mod reaper;
pub mod removal;
mod rtnl;
pub mod spare_sockets;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podfence_bpf::{NoSocketAction, RedirectConfig, RedirectProgram, Redirector};
use podfence_datapath::conntrack::{Conntrack, Opened, StoreError, Timeouts};
use podfence_datapath::denials::DenialQueue;
use podfence_datapath::ports::wait::{ReadableWait, Wake};
use podfence_datapath::ports::xsk::{ChecksumOffload, XskConfig, XskPort};
use podfence_datapath::ports::{Port, PortError};
use podfence_datapath::stats::{Counters, WorkerStats};
use podfence_datapath::switch::{Fib, Route, StagedPort, Switch, SwitchError, SwitchStats};
use podfence_datapath::worker::{Worker, WorkerConfig, pin_to_core};
use tracing::{error, info, warn};

use crate::compile::{CompileOptions, Locality, ServicesConfig};
use crate::index::Cluster;
use crate::publish::TablePublisher;
use denials::DenialReporter;
pub use denials::{DenialOptions, DenyLog};
use metrics::{Health, RingCounters, WorkerCounters};
use plumbing::{Discovery, HostPair, PlumbingConfig};
use spare_sockets::SpareSockets;

/// Interfaces one loaded redirector program serves: a node's pods (the
/// kubelet's default maximum is 110) and the host port, with room.
const INTERFACES_PER_PROGRAM: u32 = 256;

/// What can stop the agent from starting or stopping cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An rtnetlink request failed (`request`: the equivalent `ip`
    /// command).
    #[error(
        "`{request}` failed: {source}{}",
        detail.as_ref().map(|d| format!(" (kernel: {d})")).unwrap_or_default()
    )]
    Netlink {
        /// What was asked, as the `ip` command that asks it.
        request: String,
        /// The errno the kernel answered with (or the socket's error).
        source: std::io::Error,
        /// The kernel's explanation (extended ACK), when it gives one.
        detail: Option<String>,
    },
    /// An rtnetlink reply could not be read.
    #[error("cannot read the kernel's answer to `{request}`: {message}")]
    NetlinkDecode {
        /// What was asked.
        request: String,
        /// The decoder's complaint.
        message: String,
    },
    /// A sysctl could not be written.
    #[error("cannot write {value} to /proc/sys/{key}: {source}")]
    Sysctl {
        /// Its path under `/proc/sys`.
        key: String,
        /// The value.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// An interface that should exist does not.
    #[error("interface {name} does not exist")]
    NoInterface {
        /// Its name.
        name: String,
    },
    /// The redirector could not be attached or a socket registered.
    #[error("XDP redirector on {iface}: {source}")]
    Redirector {
        /// The interface.
        iface: String,
        /// The loader's error.
        source: podfence_bpf::Error,
    },
    /// An AF_XDP port failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The switch could not be built.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// More workers than an interface has queues.
    #[error(
        "{workers} workers need {workers} receive queues on every interface, but {iface} has {queues} (use --workers {queues}, or give the veths more queues with `numrxqueues`)"
    )]
    NotEnoughQueues {
        /// Workers asked for.
        workers: usize,
        /// The interface with too few.
        iface: String,
        /// Its queues.
        queues: u32,
    },
    /// Stopped from another network namespace than it started in.
    #[error(
        "the agent must be stopped in the network namespace it started in (net:[{started:?}], not net:[{now:?}]); nothing was undone"
    )]
    WrongNamespace {
        /// Where it started.
        started: Option<u64>,
        /// Where the stop was asked for.
        now: Option<u64>,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    /// A worker's waker (an eventfd) could not be made.
    #[error("cannot create a worker's eventfd: {0} (is the open-files limit reached?)")]
    Wake(std::io::Error),
    /// The deny log or the capture file cannot be opened, or the thread
    /// writing them started.
    #[error("cannot start reporting denials (deny log, capture file): {0}")]
    Denials(std::io::Error),
    /// The connection table's file cannot be used.
    #[error(transparent)]
    Conntrack(#[from] StoreError),
}

impl AgentError {
    /// The errno of a failed rtnetlink request.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Denied packets queued for the reporter before more are dropped (and
/// counted).
const DENIALS_QUEUED: usize = 4096;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// This node's name; pods whose `spec.nodeName` is this name are
    /// enforced here. When no pod names a node (plain manifests), every pod
    /// is local.
    pub node_name: Option<String>,
    /// Host-port pair and routing table.
    pub plumbing: PlumbingConfig,
    /// The XDP redirector.
    pub redirect: RedirectConfig,
    /// AF_XDP sockets: the host-port pair's as is, the pods' with
    /// `pod_frames` frames ([`XskConfig::with_frames`]).
    pub xsk: XskConfig,
    /// Frames in each pod veth socket's UMEM (a power of two): 2 KiB each,
    /// locked, per pod and worker, faulted in as the pod starts.
    pub pod_frames: u32,
    /// Largest IP packet the datapath carries: the MTU of the pods' veths
    /// (set by the CNI) and of the host-port pair (set by the agent). Sockets
    /// carry frames of `mtu` + 22 bytes (Ethernet, two VLAN tags); beyond a
    /// chunk, as AF_XDP multi-buffer chains.
    pub mtu: u32,
    /// Worker settings (`revalidate`: cut established connections that a
    /// new generation denies, on their next packet).
    pub worker: WorkerConfig,
    /// Worker threads; worker `w` serves queue `w` of every interface.
    pub workers: usize,
    /// Pin worker `w` to core `w`.
    pub pin_workers: bool,
    /// Conntrack entries.
    pub conntrack_entries: usize,
    /// What an agent dropped without a stop (a start that failed midway,
    /// an error that unwinds the supervisor) leaves: with `true`, as
    /// [`OnStop::Keep`] (the fail mode decides pod traffic, as after a
    /// crash, and the next agent takes over); `false`, as [`OnStop::Clean`].
    /// Set with `--on-stop keep`: a new agent that fails to start must not
    /// hand the pods its predecessor left to the kernel unenforced.
    pub keep_on_drop: bool,
    /// A connection table the caller opened (e.g. from the file an agent
    /// before this one left, [`open_conntrack`]); `None`: a new one of
    /// `conntrack_entries` on the heap.
    pub conntrack: Option<Arc<Conntrack>>,
    /// Compiler broad-set threshold (see [`CompileOptions`]).
    pub broad_threshold: usize,
    /// Where the workers' counters are registered for `/metrics`.
    pub worker_counters: Arc<WorkerCounters>,
    /// What `/healthz` and `/readyz` report.
    pub health: Arc<Health>,
    /// Deny log and capture of denied packets.
    pub denials: DenialOptions,
    /// Audit every pod (see [`CompileOptions::audit`]).
    pub audit: bool,
    /// Which Services the datapath translates.
    pub services: ServicesConfig,
    /// AF_XDP sockets kept ready for pods yet to start (see
    /// [`spare_sockets`]); 0: each is made as its pod starts.
    pub spare_sockets: usize,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            node_name: None,
            plumbing: PlumbingConfig::default(),
            redirect: RedirectConfig::default(),
            xsk: XskConfig::default(),
            pod_frames: DEFAULT_POD_FRAMES,
            mtu: 1500,
            worker: WorkerConfig::default(),
            workers: 1,
            pin_workers: true,
            conntrack_entries: 1 << 18,
            conntrack: None,
            keep_on_drop: false,
            broad_threshold: CompileOptions::default().broad_threshold,
            worker_counters: Arc::default(),
            health: Arc::default(),
            denials: DenialOptions::default(),
            audit: false,
            services: ServicesConfig::default(),
            spare_sockets: DEFAULT_SPARE_SOCKETS,
        }
    }
}

/// Default of [`AgentOptions::spare_sockets`]: a burst of that many pod
/// sockets binds without waiting for UMEM memory.
pub const DEFAULT_SPARE_SOCKETS: usize = 8;

/// Default of [`AgentOptions::pod_frames`]: a 4 MiB UMEM per pod veth and
/// worker, half of [`XskConfig::default`]'s, which the host-port pair
/// keeps (it carries all of the node's traffic to and from pods). Half
/// again cost pod-to-pod TCP streams a quarter to a third of their rate
/// at MTU 1500; see docs/benchmarks.md.
pub const DEFAULT_POD_FRAMES: u32 = 2048;

/// Which pods this node enforces, per [`AgentOptions::node_name`].
#[must_use]
pub fn locality(cluster: &Cluster, node_name: Option<&str>) -> Locality {
    let any_node = cluster.pods.values().any(|p| p.node.is_some());
    match node_name {
        Some(name) if any_node => Locality::Node(name.to_owned()),
        _ => Locality::AllPods,
    }
}

/// Addresses of the pods `locality` makes local and that policy applies to.
#[must_use]
pub fn local_addresses(cluster: &Cluster, locality: &Locality) -> Vec<IpAddr> {
    locality.addresses(cluster)
}

/// What one worker did, reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Its switch's counters.
    pub switch: SwitchStats,
    /// Frames dropped for their length: its ports' AF_XDP chains longer
    /// than they carry, received or to send (the switch's own are
    /// `switch.too_long`).
    pub ports_oversize: u64,
    /// Receive/transmit errors it logged and went on after.
    pub port_errors: u64,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    options: AgentOptions,
    tables: TablePublisher,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<WorkerReport>>,
    stats: Vec<Arc<WorkerStats>>,
    conntrack: Arc<Conntrack>,
    redirectors: BTreeMap<String, Redirector>,
    /// The loaded redirector programs the interfaces share.
    programs: Vec<Arc<RedirectProgram>>,
    pair: Option<HostPair>,
    /// Switch port index of each interface (the same in every worker).
    port_of: BTreeMap<String, usize>,
    /// The index the next added port gets.
    next_port: usize,
    /// One channel per worker.
    commands: Vec<WorkerMailbox>,
    /// Families (is IPv4) whose rules are in place.
    rule_families: Vec<bool>,
    adopted: Vec<IpAddr>,
    /// Who finishes transport checksums, as the first port opened found
    /// (logged once; a port that differs is warned about).
    checksum_offload: Option<ChecksumOffload>,
    pods: Discovery,
    /// Pods' MACs the CNI reported, for pods the neighbour table does not
    /// know yet.
    known_macs: HashMap<IpAddr, [u8; 6]>,
    /// The network namespace it started in (inode of
    /// `/proc/thread-self/ns/net`).
    netns: Option<u64>,
    /// Every worker queues the packets policy drops here.
    denials: Arc<DenialQueue>,
    reporter: Option<DenialReporter>,
    /// Sockets made ahead for new pod interfaces (started once running).
    spares: Option<SpareSockets>,
    /// Closes the ports workers remove, off their threads.
    reaper: reaper::Reaper<XskPort>,
}

/// The calling thread's network namespace.
fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// A summary of a running agent.
#[derive(Clone, Debug)]
pub struct AgentStatus {
    /// Table generation in force.
    pub generation: u64,
    /// Pod interfaces served.
    pub pod_interfaces: Vec<String>,
    /// Pod addresses routed through the datapath.
    pub adopted: Vec<IpAddr>,
    /// Local pod addresses without a host route (not enforced).
    pub unrouted: Vec<IpAddr>,
    /// Counters of all workers.
    pub counters: Counters,
}

impl Agent {
    /// Starts enforcing on this node the tables that `tables` publishes
    /// (and that its other holders keep publishing, as the Kubernetes source
    /// does); `cluster` is the state they reflect, for finding the local
    /// pods. See the module doc for the order; on error, whatever was set up
    /// is undone.
    pub fn start(
        tables: TablePublisher,
        cluster: &Cluster,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        Self::start_with(tables, cluster, options, None)
    }

    /// The sockets of the pod veths a start on `cluster` will bind, made
    /// ahead: an agent taking over from a running one makes them while
    /// that one still enforces, so that pod traffic waits for binding them
    /// only (each new socket maps, faults in and registers its UMEM).
    #[must_use]
    pub fn pod_sockets_ahead(
        cluster: &Cluster,
        tables: &TablePublisher,
        options: &AgentOptions,
    ) -> SpareSockets {
        let pods = local_addresses(cluster, tables.locality()).len();
        SpareSockets::made_now(pod_xsk(options), pods * options.workers.max(1))
    }

    /// [`Self::start`], binding the pods' sockets made `ahead` first.
    pub fn start_with(
        tables: TablePublisher,
        cluster: &Cluster,
        options: AgentOptions,
        ahead: Option<SpareSockets>,
    ) -> Result<Self, AgentError> {
        let conntrack = options.conntrack.clone().unwrap_or_else(|| {
            Arc::new(Conntrack::new(
                options.conntrack_entries,
                Timeouts::default(),
            ))
        });
        options.worker_counters.set_conntrack(&conntrack);
        let denials = Arc::new(DenialQueue::new(DENIALS_QUEUED));
        let reporter = DenialReporter::start(
            Arc::clone(&denials),
            tables.publisher().clone(),
            tables.metrics().clone(),
            DenialOptions {
                node: options.node_name.clone(),
                ..options.denials.clone()
            },
        )
        .map_err(AgentError::Denials)?;
        let reaper = reaper::Reaper::start("pf-port-reaper").map_err(AgentError::Thread)?;
        let mut agent = Self {
            tables,
            stop: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            stats: Vec::new(),
            conntrack,
            redirectors: BTreeMap::new(),
            programs: Vec::new(),
            pair: None,
            port_of: BTreeMap::new(),
            next_port: 0,
            commands: Vec::new(),
            rule_families: Vec::new(),
            adopted: Vec::new(),
            checksum_offload: None,
            pods: Discovery::default(),
            known_macs: HashMap::new(),
            netns: current_netns(),
            denials,
            reporter: Some(reporter),
            spares: ahead,
            reaper,
            options,
        };
        // From here on, dropping `agent` undoes what was done.
        agent.bring_up(cluster)?;
        Ok(agent)
    }

    fn bring_up(&mut self, cluster: &Cluster) -> Result<(), AgentError> {
        let addrs = local_addresses(cluster, self.tables.locality());
        let plumbing = self.options.plumbing.clone();
        self.options.xsk = sized_for_mtu(&self.options);
        let pair = plumbing::host_pair(&plumbing, self.options.mtu)?;
        let dp_link = pair.dp.clone();
        self.pair = Some(pair);
        self.pods = plumbing::discover(&addrs, &plumbing.host_if, &self.known_macs)?;
        if !self.pods.unrouted.is_empty() {
            warn!(addresses = ?self.pods.unrouted, "local pod addresses without a route of their own are not enforced");
        }
        let mut links = vec![dp_link];
        links.extend(self.pods.pods.values().map(|p| p.link.clone()));
        let workers = self.options.workers.max(1);
        // ports[w][i] is worker w's port on links[i].
        let mut ports: Vec<Vec<XskPort>> = (0..workers).map(|_| Vec::new()).collect();
        for (index, link) in links.iter().enumerate() {
            for (w, port) in self.attach(link)?.into_iter().enumerate() {
                ports[w].push(port);
            }
            self.port_of.insert(link.name.clone(), index);
        }
        let (fib, adopted) = self.fib();
        let fib = Arc::new(fib);
        for (w, worker_ports) in ports.into_iter().enumerate() {
            self.spawn_worker(w, worker_ports, Arc::clone(&fib))?;
        }
        plumbing::adopt(&plumbing, &adopted)?;
        for addr in &adopted {
            if !self.rule_families.contains(&addr.is_ipv4()) {
                self.rule_families.push(addr.is_ipv4());
            }
        }
        self.next_port = links.len();
        self.adopted = adopted;
        // After the start's own sockets, which it made itself: the spares
        // are for pods that start from now on.
        self.spares = Some(
            SpareSockets::start(pod_xsk(&self.options), self.options.spare_sockets)
                .map_err(AgentError::Thread)?,
        );
        self.options
            .health
            .published
            .store(self.tables.generation() > 0, Ordering::Relaxed);
        info!(
            pods = self.pods.pods.len(),
            addresses = self.adopted.len(),
            workers,
            "enforcing"
        );
        Ok(())
    }

    /// Attaches the redirector to `link` and opens one port per worker
    /// (queue `w` for worker `w`), registered in its XSKMAP.
    fn attach(&mut self, link: &plumbing::Link) -> Result<Vec<XskPort>, AgentError> {
        let workers = self.options.workers.max(1);
        if (link.rx_queues as usize) < workers {
            return Err(AgentError::NotEnoughQueues {
                workers,
                iface: link.name.clone(),
                queues: link.rx_queues,
            });
        }
        let redirector =
            self.attach_redirector(&link.name)
                .map_err(|source| AgentError::Redirector {
                    iface: link.name.clone(),
                    source,
                })?;
        info!(iface = link.name, mode = %redirector.mode(), mtu = link.mtu, "redirector attached");
        self.check_mtu(link, redirector.mode())?;
        let host_port = self.pair.as_ref().is_some_and(|p| p.dp.name == link.name);
        let xsk = if host_port {
            self.options.xsk
        } else {
            pod_xsk(&self.options)
        };
        let mut ports = Vec::with_capacity(workers);
        for w in 0..workers {
            let queue = w as u32;
            let port = match self.spares.as_ref().and_then(|s| s.take(&xsk)) {
                Some(prepared) => prepared.bind(&link.name, queue)?,
                None => XskPort::open(&link.name, queue, &xsk)?,
            };
            self.note_checksum_offload(&link.name, port.checksum_offload());
            redirector
                .register_socket(w as u32, &port)
                .map_err(|source| AgentError::Redirector {
                    iface: link.name.clone(),
                    source,
                })?;
            ports.push(port);
        }
        self.redirectors.insert(link.name.clone(), redirector);
        Ok(ports)
    }

    /// Attaches the redirector program the agent's interfaces share (one
    /// more when all of its slots are taken): attaching a program already
    /// attached elsewhere spares the pod's start the kernel's XDP
    /// dispatcher update and its RCU grace period.
    fn attach_redirector(&mut self, iface: &str) -> Result<Redirector, podfence_bpf::Error> {
        let program = if let Some(program) = self.programs.iter().find(|p| p.has_free_slot()) {
            Arc::clone(program)
        } else {
            let program = RedirectProgram::load(&RedirectConfig {
                max_interfaces: INTERFACES_PER_PROGRAM,
                ..self.options.redirect.clone()
            })?;
            self.programs.push(Arc::clone(&program));
            program
        };
        Redirector::attach_shared(iface, &program)
    }

    /// Says at start who finishes the TCP/UDP checksums pods leave to
    /// offload ("checksum offload: AF_XDP TX metadata" or "checksum
    /// offload: software (why)"), and warns about a port that differs.
    fn note_checksum_offload(&mut self, iface: &str, mode: &ChecksumOffload) {
        match &self.checksum_offload {
            None => {
                info!("checksum offload: {mode}");
                self.options
                    .worker_counters
                    .set_checksum_offload(mode.is_offloaded());
                self.checksum_offload = Some(mode.clone());
            }
            Some(first) if first != mode => {
                warn!(iface, "checksum offload on this interface: {mode}");
            }
            Some(_) => {}
        }
    }

    /// Says, once per interface, when the datapath cannot carry its MTU:
    /// longer frames would be dropped (and counted), so the operator learns
    /// it at start rather than from a stalled transfer. In generic mode,
    /// the sender's unsegmented TSO/GSO packets reach the program too: the
    /// agent makes the kernel segment what it sends through its own
    /// `pf-host`, and warns for pod veths, whose sender is the pod.
    fn check_mtu(
        &self,
        link: &plumbing::Link,
        mode: podfence_bpf::AttachMode,
    ) -> Result<(), AgentError> {
        if let Some(problem) = mtu_shortfall(link.mtu, self.options.mtu, &self.options.xsk) {
            warn!(iface = link.name, mtu = link.mtu, %mode, "{problem}");
        }
        if mode != podfence_bpf::AttachMode::Generic {
            return Ok(());
        }
        let pair = self.pair.as_ref().filter(|p| p.dp.name == link.name);
        match pair {
            Some(pair) if pair.created => plumbing::segment_in_software(&pair.host.name)?,
            _ => warn!(
                iface = link.name,
                mtu = link.mtu,
                %mode,
                "generic XDP receives the peer's TCP segmentation offload unsegmented (up to \
                 64 KB), longer than the datapath carries: such packets are dropped and counted \
                 (podfence_frames_oversize) and bulk TCP stalls; use native XDP, or have the \
                 peer segment in software (ip link set <its interface> gso_max_segs 1)"
            ),
        }
        Ok(())
    }

    /// The forwarding table for the pods found, and the addresses to adopt.
    /// An address whose MAC is unknown is adopted all the same (its traffic
    /// must not bypass policy); without a route the switch sends frames for
    /// it to the host port, where they are dropped as hairpins.
    fn fib(&self) -> (Fib, Vec<IpAddr>) {
        let pair = self.pair.as_ref().expect("the pair exists while running");
        let mut fib = Fib::new(Route {
            port: 0,
            dst_mac: pair.host.mac,
            src_mac: pair.dp.mac,
        });
        let mut adopted = Vec::new();
        for pod in self.pods.pods.values() {
            let Some(&port) = self.port_of.get(&pod.link.name) else {
                continue;
            };
            for &(addr, mac) in &pod.addrs {
                if let Some(mac) = mac {
                    let route = Route {
                        port,
                        dst_mac: mac,
                        src_mac: pod.link.mac,
                    };
                    fib.insert(addr, route);
                }
                adopted.push(addr);
            }
        }
        (fib, adopted)
    }

    fn tell_workers(&self, command: impl Fn() -> WorkerCommand) {
        for mailbox in &self.commands {
            mailbox.send(command());
        }
    }

    /// Brings the datapath in line with the local pods now at `addrs`:
    /// new pod interfaces are attached and their addresses routed through
    /// the datapath, gone ones are released, MACs are refreshed. Returns
    /// whether anything changed. Addresses without a host route yet are
    /// left for a later call.
    pub fn reconcile(&mut self, addrs: &[IpAddr]) -> Result<bool, AgentError> {
        let plumbing = self.options.plumbing.clone();
        let found = plumbing::discover(addrs, &plumbing.host_if, &self.known_macs)?;
        let old_pods = std::mem::replace(&mut self.pods, found);
        // Gone, or replaced by another interface of the same name.
        let gone: Vec<String> = old_pods
            .pods
            .iter()
            .filter(|(name, old)| {
                self.pods
                    .pods
                    .get(*name)
                    .is_none_or(|now| now.link != old.link)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            if let Some(index) = self.port_of.remove(name) {
                self.tell_workers(|| WorkerCommand::RemovePort(index));
            }
            if let Some(redirector) = self.redirectors.remove(name)
                && let Err(e) = redirector.detach()
            {
                // The veth usually went with the pod, and its program too.
                tracing::debug!(iface = name, error = %e, "detach of a gone pod's redirector");
            }
        }
        let new_links: Vec<plumbing::Link> = self
            .pods
            .pods
            .values()
            .filter(|p| !self.port_of.contains_key(&p.link.name))
            .map(|p| p.link.clone())
            .collect();
        // New ports before the table that routes to them.
        for link in &new_links {
            let index = self.next_port;
            let ports = self.attach(link)?;
            for (mailbox, port) in self.commands.iter().zip(ports) {
                let port = StagedPort::new(port, mailbox.max_frame);
                mailbox.send(WorkerCommand::AddPort(Box::new(port)));
            }
            self.port_of.insert(link.name.clone(), index);
            self.next_port += 1;
        }
        let (fib, adopted) = self.fib();
        let before: std::collections::HashSet<IpAddr> = self.adopted.iter().copied().collect();
        let now: std::collections::HashSet<IpAddr> = adopted.iter().copied().collect();
        // Addresses that go: back to the kernel before their route goes.
        for &addr in before.difference(&now) {
            plumbing::unroute(&plumbing, addr);
        }
        let changed_fib = old_pods != self.pods || !new_links.is_empty();
        if changed_fib {
            let fib = Arc::new(fib);
            self.tell_workers(|| WorkerCommand::SetFib(Arc::clone(&fib)));
        }
        for &addr in now.difference(&before) {
            if !before.iter().any(|b| b.is_ipv4() == addr.is_ipv4())
                && !self.rule_families.contains(&addr.is_ipv4())
            {
                plumbing::add_rules(&plumbing, addr)?;
                self.rule_families.push(addr.is_ipv4());
            }
            plumbing::route(&plumbing, addr)?;
        }
        let changed = changed_fib || !gone.is_empty() || before != now;
        if changed {
            info!(
                added = new_links.len(),
                removed = gone.len(),
                addresses = now.len(),
                unrouted = self.pods.unrouted.len(),
                "pods reconciled"
            );
        }
        self.adopted = adopted;
        Ok(changed)
    }

    fn spawn_worker(
        &mut self,
        index: usize,
        ports: Vec<XskPort>,
        fib: Arc<Fib>,
    ) -> Result<(), AgentError> {
        let max_frame = ports
            .iter()
            .map(XskPort::max_frame_len)
            .min()
            .unwrap_or(2048);
        let mut switch = Switch::new(ports, fib, max_frame)?;
        switch.set_denials(Arc::clone(&self.denials));
        let stats = Arc::new(WorkerStats::default());
        let conntrack = Arc::clone(&self.conntrack);
        let reader = self.tables.publisher().reader();
        let stop = Arc::clone(&self.stop);
        let (tx, commands) = mpsc::channel();
        let removed = self.reaper.sender();
        let wake = Arc::new(Wake::new().map_err(AgentError::Wake)?);
        self.commands.push(WorkerMailbox {
            tx,
            wake: Arc::clone(&wake),
            max_frame: switch.max_frame(),
        });
        let config = self.options.worker;
        let pin = self.options.pin_workers;
        let worker_stats = Arc::clone(&stats);
        let rings = Arc::new(RingCounters::default());
        self.options
            .worker_counters
            .add(Arc::clone(&stats), Arc::clone(&rings));
        let running = Arc::new(AtomicBool::new(true));
        self.options
            .health
            .workers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(&running));
        let handle = std::thread::Builder::new()
            .name(format!("pf-worker-{index}"))
            .spawn(move || {
                if pin && !pin_to_core(index) {
                    warn!(worker = index, "could not pin worker to its core");
                }
                // Cleared however the thread ends, for /healthz.
                let _running = RunningFlag(running);
                let mut worker = Worker::new(&conntrack, reader, &worker_stats, config);
                let inbox = Inbox {
                    commands,
                    wake: &wake,
                    removed,
                };
                let report = run_worker(index, &mut switch, &mut worker, &stop, &inbox, &rings);
                close_together(switch.into_ports());
                report
            })
            .map_err(AgentError::Thread)?;
        self.workers.push(handle);
        self.stats.push(stats);
        Ok(())
    }

    /// Remembers the MAC the CNI gave the pod at `addr` (used while the
    /// neighbour table has none); `None` forgets it.
    pub fn set_known_mac(&mut self, addr: IpAddr, mac: Option<[u8; 6]>) {
        match mac {
            Some(mac) => self.known_macs.insert(addr, mac),
            None => self.known_macs.remove(&addr),
        };
    }

    /// The interface the pod at `addr` is served on, and whether the
    /// datapath knows its MAC; `None` when `addr` is not adopted.
    #[must_use]
    pub fn served(&self, addr: IpAddr) -> Option<(&str, bool)> {
        if !self.adopted.contains(&addr) {
            return None;
        }
        self.pods.pods.values().find_map(|p| {
            let (_, mac) = p.addrs.iter().find(|(a, _)| *a == addr)?;
            self.port_of
                .contains_key(&p.link.name)
                .then_some((p.link.name.as_str(), mac.is_some()))
        })
    }

    /// Waits until every worker has applied the commands sent so far (new
    /// ports, forwarding tables) and is past the generation published
    /// before this call; `false` when one did not within `timeout`.
    #[must_use]
    pub fn sync_workers(&self, timeout: Duration) -> bool {
        let (done, synced) = mpsc::channel();
        let mut asked = 0;
        for mailbox in &self.commands {
            if mailbox.send(WorkerCommand::Sync(done.clone())) {
                asked += 1;
            }
        }
        let deadline = Instant::now() + timeout;
        (0..asked).all(|_| {
            synced
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
        })
    }

    /// Local pod addresses found without a host route of their own (not
    /// enforced until a later [`reconcile`](Self::reconcile) finds one).
    #[must_use]
    pub fn unrouted(&self) -> &[IpAddr] {
        &self.pods.unrouted
    }

    /// The compile-and-publish handle the workers read from.
    #[must_use]
    pub fn tables(&self) -> &TablePublisher {
        &self.tables
    }

    /// The agent's state and counters now.
    #[must_use]
    pub fn status(&self) -> AgentStatus {
        let mut counters = Counters::default();
        for s in &self.stats {
            counters += s.snapshot();
        }
        AgentStatus {
            generation: self.tables.generation(),
            pod_interfaces: self.pods.pods.keys().cloned().collect(),
            adopted: self.adopted.clone(),
            unrouted: self.pods.unrouted.clone(),
            counters,
        }
    }

    /// Stops cleanly: routes back to the kernel's, redirectors detached,
    /// workers stopped, the host-port pair removed if this run made it, the
    /// connection table's file (if any) removed.
    pub fn stop(self) -> Result<Vec<WorkerReport>, AgentError> {
        self.stop_with(OnStop::Clean)
    }

    /// Stops as `on_stop` says: [`OnStop::Clean`] as [`stop`](Self::stop);
    /// [`OnStop::Keep`] stops the workers and leaves, for the next agent,
    /// the redirectors attached with the fail mode in force, the routes,
    /// the host-port pair and the connection table's file.
    pub fn stop_with(mut self, on_stop: OnStop) -> Result<Vec<WorkerReport>, AgentError> {
        match on_stop {
            OnStop::Clean => self.tear_down(),
            OnStop::Keep => self.leave(),
        }
    }

    fn leave(&mut self) -> Result<Vec<WorkerReport>, AgentError> {
        // Never detached, whatever happens next: the next agent replaces
        // them atomically.
        for redirector in std::mem::take(&mut self.redirectors).into_values() {
            redirector.leave_attached();
        }
        self.pair = None;
        let here = current_netns();
        let reports = self.stop_workers();
        if here != self.netns {
            return Err(AgentError::WrongNamespace {
                started: self.netns,
                now: here,
            });
        }
        info!(
            addresses = self.adopted.len(),
            conntrack = ?self.conntrack.path(),
            live_connections = self.conntrack.live_entries(self.conntrack.clock_ns()),
            "stopped; redirectors, routes, host-port pair and connection table left for the next agent"
        );
        Ok(reports)
    }

    /// Stops the workers (their sockets close: the redirectors' no-socket
    /// action applies) and the denial reporter.
    fn stop_workers(&mut self) -> Vec<WorkerReport> {
        self.stop.store(true, Ordering::Relaxed);
        for mailbox in &self.commands {
            mailbox.wake.wake();
        }
        let mut reports = Vec::new();
        for handle in self.workers.drain(..) {
            if let Ok(report) = handle.join() {
                reports.push(report);
            } else {
                error!("a worker panicked");
            }
        }
        if let Some(reporter) = self.reporter.take() {
            reporter.stop();
        }
        self.reaper.finish();
        reports
    }

    fn tear_down(&mut self) -> Result<Vec<WorkerReport>, AgentError> {
        let here = current_netns();
        if here != self.netns {
            // Routes and links would be changed in the wrong namespace, and
            // a redirector's drop would detach by index there too: leave
            // them attached (fail mode in force) rather than touch another
            // namespace.
            self.stop.store(true, Ordering::Relaxed);
            for redirector in std::mem::take(&mut self.redirectors).into_values() {
                std::mem::forget(redirector);
            }
            self.pair = None;
            return Err(AgentError::WrongNamespace {
                started: self.netns,
                now: here,
            });
        }
        let mut first_error = None;
        plumbing::restore(&self.options.plumbing);
        for redirector in std::mem::take(&mut self.redirectors).into_values() {
            let iface = redirector.ifname().to_owned();
            if let Err(source) = redirector.detach() {
                error!(iface, error = %source, "detaching the redirector");
                first_error.get_or_insert(AgentError::Redirector { iface, source });
            }
        }
        let reports = self.stop_workers();
        if let Some(path) = self.conntrack.path() {
            match std::fs::remove_file(path) {
                Ok(()) => info!(path = %path.display(), "connection table file removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "removing the connection table file");
                }
            }
        }
        if let Some(pair) = self.pair.take()
            && let Err(e) = plumbing::remove_pair(&pair)
        {
            error!(error = %e, "removing the host-port pair");
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.workers.is_empty() || self.pair.is_some() || !self.redirectors.is_empty() {
            // Errors were logged.
            let _ = if self.options.keep_on_drop {
                self.leave()
            } else {
                self.tear_down()
            };
        }
    }
}

/// What a stopping agent leaves on the node (`podfence run --on-stop`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStop {
    /// Everything undone: the node as it was before the agent (an
    /// uninstall, or a node leaving podfence).
    #[default]
    Clean,
    /// Everything left for the next agent (an upgrade or a restart): the
    /// redirectors with the fail mode in force, the routes, the host-port
    /// pair and the connection table.
    Keep,
}

/// The connection table of `options`: the file at `path` (restored if an
/// agent before left one of this layout; see [`Conntrack::open`]) or, with
/// no path, a new one on the heap. Says what it found in the log.
pub fn open_conntrack(
    path: Option<&std::path::Path>,
    entries: usize,
) -> Result<Arc<Conntrack>, AgentError> {
    let Some(path) = path else {
        return Ok(Arc::new(Conntrack::new(entries, Timeouts::default())));
    };
    let (table, opened) = Conntrack::open(path, entries, Timeouts::default())?;
    match &opened {
        Opened::Created => info!(path = %path.display(), "connection table created"),
        Opened::Restored => info!(
            path = %path.display(),
            live_connections = table.live_entries(table.clock_ns()),
            generations_above = table.generation_floor(),
            "connection table of the agent before restored"
        ),
        Opened::Mismatch(why) => warn!(
            path = %path.display(),
            why,
            "the connection table left there does not fit this agent: starting with an empty one (open connections are picked up by their next packets where policy allows)"
        ),
    }
    Ok(Arc::new(table))
}

/// A change a worker applies between batches.
enum WorkerCommand {
    /// A pod interface appeared: its port for this worker.
    AddPort(Box<StagedPort<XskPort>>),
    /// A pod interface went.
    RemovePort(usize),
    /// A new forwarding table.
    SetFib(Arc<Fib>),
    /// Answer once the commands before are applied (the next batch reads
    /// the generation in force).
    Sync(mpsc::Sender<()>),
}

/// Where the agent sends a worker its commands: the channel, and the waker
/// that ends the worker's sleep so it acts at once.
#[derive(Debug)]
struct WorkerMailbox {
    tx: mpsc::Sender<WorkerCommand>,
    wake: Arc<Wake>,
    /// Its switch's [`Switch::max_frame`], to stage new ports for.
    max_frame: usize,
}

impl WorkerMailbox {
    /// Sends `command` and wakes the worker; false if the worker is gone.
    fn send(&self, command: WorkerCommand) -> bool {
        let sent = self.tx.send(command).is_ok();
        if sent {
            self.wake.wake();
        }
        sent
    }
}

/// A worker's end of its [`WorkerMailbox`].
struct Inbox<'a> {
    commands: mpsc::Receiver<WorkerCommand>,
    wake: &'a Wake,
    /// Where removed ports go to be closed.
    removed: reaper::Handoff<XskPort>,
}

/// Clears a worker's running flag when the worker ends (also by panic).
struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// How long a worker keeps polling its ports after frames came before it
/// sleeps in poll(2): the answer to a request usually comes within it,
/// and is then taken without a wakeup. A time, not a count of rounds: a
/// round visits every port, and a node's hundred pods made a fixed count
/// of rounds cost milliseconds of CPU after every burst.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);

/// The sockets of `options`, with frames of its MTU whatever its size
/// (multi-buffer past a chunk).
fn sized_for_mtu(options: &AgentOptions) -> XskConfig {
    let mut xsk = options.xsk;
    xsk.max_frame = xsk.max_frame.max(frame_len(options.mtu));
    xsk
}

/// The sockets of pod veths under `options`.
fn pod_xsk(options: &AgentOptions) -> XskConfig {
    sized_for_mtu(options).with_frames(options.pod_frames)
}

/// Closes `ports` together: closing an AF_XDP socket waits in the kernel
/// for an RCU grace period (10–15 ms measured), so a node's hundred pod
/// sockets closed one after another would keep pod traffic waiting for
/// a second and a half at a handover or a kept stop; on threads of their
/// own the waits overlap.
fn close_together<P: Send>(ports: Vec<P>) {
    /// Threads at most; each closes its share in turn.
    const CLOSERS: usize = 64;
    let threads = ports.len().min(CLOSERS);
    let mut batches: Vec<Vec<P>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, port) in ports.into_iter().enumerate() {
        batches[i % threads].push(port);
    }
    std::thread::scope(|scope| {
        for batch in batches {
            // Without a thread, the batch is dropped here: closed all the same.
            let _ = std::thread::Builder::new()
                .name("pf-closer".into())
                .spawn_scoped(scope, move || drop(batch));
        }
    });
}

/// Spins through the ports while there is traffic; [`SPIN_BEFORE_SLEEP`]
/// after the last frames, sleeps in `poll` until a port has frames, a
/// command comes (its [`Wake`]) or 50 ms pass (to see `stop`).
fn run_worker(
    index: usize,
    switch: &mut Switch<XskPort>,
    worker: &mut Worker<'_>,
    stop: &AtomicBool,
    inbox: &Inbox<'_>,
    rings: &RingCounters,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let waiter = |s: &Switch<XskPort>| {
        ReadableWait::with_wake(
            (0..s.port_count()).filter_map(|i| s.port(i)),
            Some(inbox.wake),
        )
    };
    let mut wait = waiter(switch);
    // When frames last came, while the worker polls its ports without
    // sleeping (`None`: it sleeps as soon as a round finds nothing).
    let mut last_frames: Option<Instant> = None;
    let mut last_error: Option<Instant> = None;
    let mut last_rings = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // The kernel's ring counters: one system call per port, once a
        // second, never per packet.
        if last_rings.elapsed() >= Duration::from_secs(1) {
            publish_ring_stats(switch, rings);
            last_rings = Instant::now();
        }
        while let Ok(command) = inbox.commands.try_recv() {
            match command {
                WorkerCommand::AddPort(port) => {
                    switch.add_port(*port);
                }
                WorkerCommand::RemovePort(i) => {
                    if let Some(port) = switch.remove_port(i) {
                        inbox.removed.give(port);
                    }
                }
                WorkerCommand::SetFib(fib) => {
                    if let Err(e) = switch.set_fib(fib) {
                        error!(worker = index, error = %e, "forwarding table refused; the old one stays");
                    }
                }
                WorkerCommand::Sync(done) => {
                    let _ = done.send(());
                }
            }
            wait = waiter(switch);
        }
        let mut frames = 0;
        for rx in 0..switch.port_count() {
            match switch.run_batch(worker, rx) {
                Ok(n) => frames += n,
                Err(e) => {
                    report.port_errors += 1;
                    // One line a second at most: a vanished interface must
                    // not flood the log.
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        let port = switch.port(rx).map_or("?", |p| p.name());
                        warn!(worker = index, port, error = %e, "port error");
                        last_error = Some(Instant::now());
                    }
                }
            }
        }
        if frames > 0 {
            last_frames = Some(Instant::now());
        } else if last_frames.is_none_or(|t| t.elapsed() >= SPIN_BEFORE_SLEEP) {
            last_frames = None;
            if let Err(e) = wait.wait(Duration::from_millis(50)) {
                warn!(worker = index, error = %e, "poll");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    report.switch = switch.stats().clone();
    report.ports_oversize = (0..switch.port_count())
        .filter_map(|i| switch.port(i))
        .map(|p| p.stats().rx_oversize + p.stats().tx_oversize)
        .sum();
    report
}

/// Sums the ring statistics of the worker's sockets into `rings`.
fn publish_ring_stats(switch: &Switch<XskPort>, rings: &RingCounters) {
    let mut sum = [0u64; 6];
    let mut oversize = switch.stats().too_long;
    for port in (0..switch.port_count()).filter_map(|i| switch.port(i)) {
        let stats = port.stats();
        oversize += stats.rx_oversize + stats.tx_oversize;
        if let Ok(s) = port.xsk_stats() {
            for (total, v) in sum.iter_mut().zip([
                s.rx_dropped,
                s.rx_ring_full,
                s.rx_fill_ring_empty_descs,
                s.rx_invalid_descs,
                s.tx_invalid_descs,
                s.tx_ring_empty_descs,
            ]) {
                *total += v;
            }
        }
    }
    for (counter, v) in [
        &rings.rx_dropped,
        &rings.rx_ring_full,
        &rings.fill_ring_empty,
        &rings.rx_invalid_descs,
        &rings.tx_invalid_descs,
        &rings.tx_ring_empty,
    ]
    .into_iter()
    .zip(sum)
    {
        counter.store(v, Ordering::Relaxed);
    }
    rings.oversize.store(oversize, Ordering::Relaxed);
}

/// Why the datapath (MTU `datapath_mtu`, sockets `xsk`) cannot carry the
/// packets of an interface of MTU `mtu`, and what is needed; `None` when
/// it can.
#[must_use]
pub fn mtu_shortfall(mtu: u32, datapath_mtu: u32, xsk: &XskConfig) -> Option<String> {
    // A chunk less the kernel's XDP headroom.
    let chunk = xsk.frame_size.saturating_sub(256);
    if !xsk.multi_buffer && frame_len(mtu) > chunk {
        return Some(format!(
            "MTU {mtu} needs AF_XDP multi-buffer (XDP_USE_SG, Linux 6.6), which is off: \
             frames longer than a chunk ({chunk} bytes) are dropped by the kernel"
        ));
    }
    (mtu > datapath_mtu).then(|| {
        format!(
            "MTU {mtu} exceeds the datapath's ({datapath_mtu}): longer packets are dropped \
             and counted (podfence_frames_oversize); start the agent with --mtu {mtu}"
        )
    })
}

/// The longest frame of an MTU: Ethernet header and two VLAN tags.
#[must_use]
pub fn frame_len(mtu: u32) -> u32 {
    mtu.saturating_add(14 + 8)
}

/// Whether pod traffic passes while no agent runs, for messages.
#[must_use]
pub fn fail_mode(action: NoSocketAction) -> &'static str {
    match action {
        NoSocketAction::Drop => "closed (pod traffic is dropped while no agent runs)",
        NoSocketAction::Pass => "open (pod traffic bypasses policy while no agent runs)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops, and the threads they happened on.
    struct Closed(Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>);

    impl Drop for Closed {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(std::thread::current().id());
        }
    }

    #[test]
    fn ports_are_all_closed_together_off_the_callers_thread() {
        for n in [0, 1, 3, 64, 65, 150] {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            close_together((0..n).map(|_| Closed(Arc::clone(&seen))).collect());
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), n, "every one closed before it returns");
            assert!(!seen.contains(&std::thread::current().id()));
            let threads: std::collections::BTreeSet<_> =
                seen.iter().map(|t| format!("{t:?}")).collect();
            assert_eq!(threads.len(), n.min(64), "{n} ports");
        }
    }

    #[test]
    fn mtu_shortfall_names_what_is_needed() {
        let xsk = XskConfig::default();
        assert_eq!(mtu_shortfall(1500, 1500, &xsk), None);
        assert_eq!(mtu_shortfall(9000, 9000, &xsk), None);
        assert_eq!(mtu_shortfall(1500, 9000, &xsk), None);
        let too_big = mtu_shortfall(9000, 1500, &xsk).expect("a shortfall");
        assert!(too_big.contains("MTU 9000"), "{too_big}");
        assert!(too_big.contains("--mtu 9000"), "{too_big}");
        let no_sg = XskConfig {
            multi_buffer: false,
            ..XskConfig::default()
        };
        assert_eq!(mtu_shortfall(1500, 1500, &no_sg), None);
        let single = mtu_shortfall(9000, 9000, &no_sg).expect("a shortfall");
        assert!(single.contains("multi-buffer"), "{single}");
        assert!(single.contains("1792 bytes"), "{single}");
    }

    #[test]
    fn frames_of_an_mtu() {
        assert_eq!(frame_len(1500), 1522);
        assert_eq!(frame_len(9000), 9022);
    }
}
