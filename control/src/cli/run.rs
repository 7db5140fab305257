//! `podfence run`: the agent on manifests, until SIGINT or SIGTERM.
//!
//! SIGHUP rereads the manifests and publishes a new generation; manifests
//! that no longer load are reported and the tables in force stay.
//!
//! Every flag but `--in-cluster` can also be given in the environment, as
//! `PODFENCE_` and the flag's name in upper case with `_` for `-`
//! (`--fail-mode closed` is `PODFENCE_FAIL_MODE=closed`, `--no-pin` is
//! `PODFENCE_NO_PIN=true`), except `--node-name`, which is `NODE_NAME`; a
//! flag on the command line wins. Switches take `true`/`false` (also
//! `yes`/`no`, `on`/`off`, `1`/`0`); `PODFENCE_MANIFESTS` is one path. The
//! source stays a choice of the command line (a set `PODFENCE_MANIFESTS`
//! or `PODFENCE_KUBECONFIG` counts as choosing it). The DaemonSet's
//! ConfigMap (`deploy/configmap.yaml`) sets the agent up this way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use podfence_bpf::{NoSocketAction, XdpMode};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, mpsc};

use podfence_control::agent::control_socket::{self, ControlSocket, ControlState};
use podfence_control::agent::metrics::MetricsServer;
use podfence_control::agent::plumbing;
use podfence_control::agent::{
    Agent, AgentOptions, AgentStatus, DenialOptions, DenyLog, TablePublisher, fail_mode,
    local_addresses, locality,
};
use podfence_control::compile::{CompileOptions, Locality};
use podfence_control::model::Cluster;
use podfence_control::sources::kube::{ApiTarget, SourceOptions, SourceThread};
use podfence_control::sources::manifests;
use podfence_datapath::ports::xsk::BusyPoll;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

/// What pod traffic gets while no agent runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FailMode {
    /// Dropped.
    Closed,
    /// Passed to the kernel, unenforced.
    Open,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum XdpModeArg {
    /// Native where the driver has it, generic otherwise.
    Auto,
    /// Native (driver) mode or fail.
    Native,
    /// Generic (skb) mode.
    Generic,
}

/// How AF_XDP sockets bind.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum XskModeArg {
    /// Whatever the kernel chooses.
    Auto,
    /// Copy mode.
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

/// Enforce NetworkPolicy on this node's pods (root), from manifests or
/// the Kubernetes API.
///
/// Attaches the XDP redirector to each local pod's host-side veth (found
/// through the kernel's /32 and /128 routes) and to the host-port pair
/// pf-host/pf-dp, and routes the pods' addresses through it, until SIGINT
/// or SIGTERM puts everything back. SIGHUP rereads manifests. With
/// --kubeconfig or --in-cluster, nothing is enforced before every watch
/// has listed once; changes are published as they come.
#[derive(Args, Debug)]
#[allow(clippy::struct_excessive_bools, reason = "command-line flags")]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "kubeconfig", "in_cluster"])))]
pub(crate) struct RunArgs {
    /// Manifest files or directories (the policies, pods and namespaces to
    /// enforce; SIGHUP rereads them).
    #[arg(long, env = "PODFENCE_MANIFESTS", value_name = "PATH", num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Watch the Kubernetes API of this kubeconfig's current context.
    #[arg(long, env = "PODFENCE_KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Watch the Kubernetes API with the pod's service account.
    #[arg(long)]
    in_cluster: bool,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(
        long,
        env = "PODFENCE_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:9465"
    )]
    metrics_addr: std::net::SocketAddr,
    /// Serve no metrics or health endpoints.
    #[arg(long, env = "PODFENCE_NO_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    no_metrics: bool,
    /// Changes seen within this window after the first are published as
    /// one generation (Kubernetes source).
    #[arg(
        long,
        env = "PODFENCE_DEBOUNCE_MS",
        default_value_t = 5,
        value_name = "MS"
    )]
    debounce_ms: u64,
    /// This node's name: pods whose spec.nodeName is this are enforced here.
    /// Without it, or when no pod names a node, every pod is local.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// Worker threads; worker w serves queue w of every interface.
    #[arg(
        long,
        env = "PODFENCE_WORKERS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    workers: u16,
    /// What pod traffic gets while no agent runs.
    #[arg(long, env = "PODFENCE_FAIL_MODE", value_enum, default_value_t = FailMode::Closed)]
    fail_mode: FailMode,
    /// Keep established connections when a new generation would deny them
    /// (default: cut them on their next packet).
    #[arg(long, env = "PODFENCE_KEEP_ESTABLISHED", value_parser = clap::builder::BoolishValueParser::new())]
    keep_established: bool,
    /// XDP attach mode.
    #[arg(long, env = "PODFENCE_XDP_MODE", value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// AF_XDP bind mode.
    #[arg(long, env = "PODFENCE_XSK_MODE", value_enum, default_value_t = XskModeArg::Auto)]
    xsk_mode: XskModeArg,
    /// Busy poll the sockets for this many microseconds (0: off).
    #[arg(
        long,
        env = "PODFENCE_BUSY_POLL",
        default_value_t = 0,
        value_name = "USECS"
    )]
    busy_poll: u32,
    /// Do not pin worker w to core w.
    #[arg(long, env = "PODFENCE_NO_PIN", value_parser = clap::builder::BoolishValueParser::new())]
    no_pin: bool,
    /// Conntrack entries.
    #[arg(long, env = "PODFENCE_CONNTRACK_ENTRIES", default_value_t = 1 << 18, value_name = "N")]
    conntrack_entries: usize,
    /// Log the counters this often (0: only at stop).
    #[arg(
        long,
        env = "PODFENCE_STATS_INTERVAL",
        default_value_t = 0,
        value_name = "SECS"
    )]
    stats_interval: u64,
    /// Write this file once enforcing (its content: the table generation),
    /// and remove it at stop.
    #[arg(long, env = "PODFENCE_READY_FILE", value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Deny log: one JSON line per denied connection attempt, to standard
    /// output (`-`), appended to FILE, or `none`.
    #[arg(
        long,
        env = "PODFENCE_DENY_LOG",
        default_value = "-",
        value_name = "FILE"
    )]
    deny_log: String,
    /// Deny log lines per second for one source and destination address
    /// pair; the rest are counted in the pair's next line.
    #[arg(
        long,
        env = "PODFENCE_DENY_LOG_PER_PAIR",
        default_value_t = 1,
        value_name = "N"
    )]
    deny_log_per_pair: u32,
    /// Write denied packets to this pcapng file, each with its decision as
    /// a comment.
    #[arg(long, env = "PODFENCE_CAPTURE_DENIED", value_name = "FILE")]
    capture_denied: Option<PathBuf>,
    /// Size at which the capture file moves to FILE.1 and a new one starts.
    #[arg(
        long,
        env = "PODFENCE_CAPTURE_MAX_MIB",
        default_value_t = 64,
        value_name = "MIB"
    )]
    capture_max_mib: u64,
    /// Answer `podfence status` and `podfence explain --agent` on this Unix
    /// socket (`none`: do not).
    #[arg(long, env = "PODFENCE_CONTROL_SOCKET", default_value = control_socket::DEFAULT_PATH, value_name = "PATH")]
    control_socket: PathBuf,
    /// Audit mode for every pod: policy is evaluated and what it would deny
    /// is logged and counted, not dropped. Without it, the pods of
    /// namespaces labelled podfence.io/enforcement=audit are audited.
    #[arg(long, env = "PODFENCE_AUDIT", value_parser = clap::builder::BoolishValueParser::new())]
    audit: bool,
    /// Denied packets captured per second at most.
    #[arg(
        long,
        env = "PODFENCE_CAPTURE_RATE",
        default_value_t = 1000,
        value_name = "N"
    )]
    capture_rate: u32,
}

fn load_cluster(paths: &[PathBuf]) -> Result<Cluster> {
    let m = manifests::load(paths).context("the manifests cannot be used")?;
    if let Some(note) = m.skipped_note() {
        info!("{note}");
    }
    Ok(m.cluster)
}

fn options(args: &RunArgs) -> AgentOptions {
    let mut o = AgentOptions {
        node_name: args.node_name.clone(),
        workers: usize::from(args.workers),
        pin_workers: !args.no_pin,
        conntrack_entries: args.conntrack_entries,
        ..AgentOptions::default()
    };
    o.redirect.no_socket_action = match args.fail_mode {
        FailMode::Closed => NoSocketAction::Drop,
        FailMode::Open => NoSocketAction::Pass,
    };
    o.redirect.mode = match args.xdp_mode {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    };
    o.xsk.zero_copy = match args.xsk_mode {
        XskModeArg::Auto => None,
        XskModeArg::Copy => Some(false),
        XskModeArg::ZeroCopy => Some(true),
    };
    if args.busy_poll > 0 {
        o.xsk.busy_poll = Some(BusyPoll {
            usecs: args.busy_poll,
            budget: 64,
        });
    }
    o.worker.revalidate = !args.keep_established;
    o.audit = args.audit;
    o.denials = DenialOptions {
        node: None,
        log: match args.deny_log.as_str() {
            "none" => None,
            "-" => Some(DenyLog::Stdout),
            path => Some(DenyLog::File(path.into())),
        },
        log_per_pair: args.deny_log_per_pair,
        capture: args.capture_denied.clone(),
        capture_max_bytes: args.capture_max_mib.saturating_mul(1 << 20),
        capture_per_second: args.capture_rate,
    };
    o
}

/// Keeps the agent's adopted pods in line with the local pods' addresses:
/// at once when they change, every second while some have no route yet
/// (the CNI may add it after the API reports the pod), every ten seconds
/// otherwise (a MAC may change).
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

/// Rereads the manifests, publishes them and updates the pods to adopt; a
/// manifest that no longer loads leaves the tables in force.
fn reload_manifests(
    paths: &[PathBuf],
    seen: Instant,
    agent: &Agent,
    pods: &mut PodTracker,
    ready_file: Option<&std::path::Path>,
) {
    match load_cluster(paths) {
        Ok(cluster) => {
            let generation = agent.publish(&cluster, Some(seen));
            pods.set(local_addresses(&cluster, agent.tables().locality()));
            if let Some(path) = ready_file
                && let Err(e) = std::fs::write(path, format!("{generation}\n"))
            {
                warn!(error = %e, "cannot update the ready file");
            }
        }
        Err(e) => error!(
            error = format!("{e:#}"),
            "reload failed; the tables in force stay"
        ),
    }
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

/// Where the cluster state comes from.
enum Source {
    /// Files, reread when they change and on SIGHUP.
    Manifests(Vec<PathBuf>, Option<ManifestWatch>),
    /// The Kubernetes API, watched.
    Kube(SourceThread, mpsc::Receiver<Vec<IpAddr>>),
}

/// Runs the agent until SIGINT or SIGTERM.
pub(crate) fn run(args: &RunArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (tests) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    podfence_bpf::forward_libbpf_logs();

    // Installed before the start, so a Ctrl-C during it is not lost: it is
    // acted on once the start returns.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    let opts = options(args);
    let worker_counters = Arc::clone(&opts.worker_counters);
    info!(
        node = opts.node_name.as_deref().unwrap_or("(all pods local)"),
        fail = fail_mode(opts.redirect.no_socket_action),
        "starting"
    );
    let Some((mut agent, mut source, _metrics)) = start(args, opts, &mut signals)? else {
        return Ok(());
    };
    let status = agent.status();
    if !status.unrouted.is_empty() {
        warn!(addresses = ?status.unrouted, "local pod addresses without a route of their own are not enforced");
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", status.generation))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let shared_status = Arc::new(Mutex::new(Some(status.clone())));
    let _control = control_socket(
        args,
        ControlState {
            tables: agent.tables().clone(),
            status: Arc::clone(&shared_status),
            workers: worker_counters,
        },
    );
    let interval = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    let mut last_stats = Instant::now();
    let mut status_refreshed = Instant::now();
    let mut pods = PodTracker::new(&status);
    'running: loop {
        let mut reload = None;
        for signal in signals.pending() {
            if signal != SIGHUP {
                info!(signal, "stopping");
                break 'running;
            }
            reload = Some(Instant::now());
        }
        if let Source::Manifests(paths, watch) = &mut source {
            if let Some(watch) = watch {
                reload = reload.or_else(|| watch.settled());
            }
            if let Some(seen) = reload {
                reload_manifests(paths, seen, &agent, &mut pods, args.ready_file.as_deref());
            }
        } else if reload.is_some() {
            info!("SIGHUP: the Kubernetes source has nothing to reread");
        }
        if let Source::Kube(_, addrs) = &source
            && let Some(latest) = addrs.try_iter().last()
        {
            pods.set(latest);
        }
        pods.maintain(&mut agent);
        if status_refreshed.elapsed() >= Duration::from_secs(1) {
            *shared_status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(agent.status());
            status_refreshed = Instant::now();
        }
        if let Some(every) = interval
            && last_stats.elapsed() >= every
        {
            let s = agent.status();
            info!(generation = s.generation, counters = ?s.counters, "stats");
            last_stats = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // No more generations from the source, then the datapath.
    if let Source::Kube(thread, _) = source {
        match thread.stop() {
            Ok(counters) => info!(?counters, "Kubernetes source stopped"),
            Err(e) => error!(error = %e, "Kubernetes source"),
        }
    }
    let status = agent.status();
    let reports = agent.stop().context("the agent did not stop cleanly")?;
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    info!(counters = ?status.counters, "stopped");
    for (w, r) in reports.iter().enumerate() {
        info!(worker = w, switch = ?r.switch, port_errors = r.port_errors, "worker");
    }
    Ok(())
}

/// Serves `podfence status` and `explain --agent`, unless asked not to; an
/// agent without its socket still enforces.
fn control_socket(args: &RunArgs, state: ControlState) -> Option<ControlSocket> {
    if args.control_socket.to_str() == Some("none") {
        return None;
    }
    ControlSocket::start(&args.control_socket, state)
        .inspect_err(|e| {
            warn!(path = %args.control_socket.display(), error = %e,
                "no control socket: `podfence status` and `explain --agent` will not reach this agent");
        })
        .ok()
}

/// Loads or watches the cluster, serves metrics and starts the agent;
/// `None` when a signal asked to stop before the start.
fn start(
    args: &RunArgs,
    opts: AgentOptions,
    signals: &mut Signals,
) -> Result<Option<(Agent, Source, Option<MetricsServer>)>> {
    let manifests = if args.manifests.is_empty() {
        None
    } else {
        Some(load_cluster(&args.manifests)?)
    };
    let locality = match (&manifests, &opts.node_name) {
        (Some(cluster), node) => locality(cluster, node.as_deref()),
        (None, Some(name)) => Locality::Node(name.clone()),
        (None, None) => {
            warn!("no --node-name (or NODE_NAME): every pod of the cluster counts as local");
            Locality::AllPods
        }
    };
    let tables = TablePublisher::new(CompileOptions {
        generation: 0,
        locality,
        broad_threshold: opts.broad_threshold,
        node_addresses: plumbing::host_addresses()?,
        audit: opts.audit,
    });
    let metrics = if args.no_metrics {
        None
    } else {
        let addr = args.metrics_addr;
        Some(
            MetricsServer::start(
                addr,
                tables.metrics(),
                Arc::clone(&opts.worker_counters),
                Arc::clone(&opts.health),
            )
            .with_context(|| format!("cannot serve metrics on {addr}"))?,
        )
    };
    let (agent, source) = if let Some(cluster) = manifests {
        tables.publish(&cluster, None);
        let agent = Agent::start_with(tables, &cluster, opts).context("the agent cannot start")?;
        let watch = ManifestWatch::start(&args.manifests);
        (agent, Source::Manifests(args.manifests.clone(), watch))
    } else {
        let target = match &args.kubeconfig {
            Some(path) => ApiTarget::Kubeconfig(path.clone()),
            None => ApiTarget::InCluster,
        };
        let Some(started) = start_from_api(target, tables, args, opts, signals)? else {
            return Ok(None);
        };
        started
    };
    Ok(Some((agent, source, metrics)))
}

/// Watches the API until every kind has listed once (nothing is enforced
/// before: the tables would reflect a half-known cluster), then starts the
/// agent on that state. `None` when a signal asked to stop meanwhile.
fn start_from_api(
    target: ApiTarget,
    tables: TablePublisher,
    args: &RunArgs,
    opts: AgentOptions,
    signals: &mut Signals,
) -> Result<Option<(Agent, Source)>> {
    let (first_tx, first) = mpsc::channel::<Cluster>();
    let mut first_tx = Some(first_tx);
    // After each publish, the local pods' addresses when they changed, for
    // the agent to adopt new pods and release gone ones.
    let (addrs_tx, addrs) = mpsc::channel::<Vec<IpAddr>>();
    let locality = tables.locality().clone();
    let mut last_addrs = Vec::new();
    let source = SourceThread::spawn(
        target,
        tables.clone(),
        SourceOptions {
            debounce: Duration::from_millis(args.debounce_ms),
        },
        move |index, _| {
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(index.cluster().clone());
            }
            let now = local_addresses(index.cluster(), &locality);
            if now != last_addrs {
                let _ = addrs_tx.send(now.clone());
                last_addrs = now;
            }
        },
    )
    .context("the Kubernetes source cannot start")?;
    info!("waiting for the first full list of namespaces, pods and policies");
    let cluster = loop {
        if let Some(signal) = signals.pending().find(|&s| s != SIGHUP) {
            info!(signal, "stopping before the first sync");
            let _ = source.stop();
            return Ok(None);
        }
        match first.recv_timeout(Duration::from_millis(50)) {
            Ok(cluster) => break cluster,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !source.finished() => {}
            Err(_) => {
                return Err(source.stop().err().map_or_else(
                    || anyhow::anyhow!("the Kubernetes source ended"),
                    Into::into,
                ));
            }
        }
    };
    let agent = Agent::start_with(tables, &cluster, opts).context("the agent cannot start")?;
    Ok(Some((agent, Source::Kube(source, addrs))))
}
