//! `podfence run`: the agent, on manifests or the Kubernetes API, until
//! SIGINT or SIGTERM; the loop itself is the library's
//! [`Supervisor`].
//!
//! Manifests are reread when they change and on SIGHUP; a reread that
//! changes nothing publishes nothing, and manifests that no longer load are
//! reported while the tables in force stay.
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
//!
//! With `--cni-bin-dir` and `--cni-conf-dir` the agent installs
//! `podfence-cni` once it serves its control socket, chained into the
//! node's network configuration (checked again every five seconds, as the
//! network plugin may rewrite its file), and removes both at a clean stop.
//!
//! `--on-stop keep` leaves the datapath, the chaining and the connection
//! table (a file, `--conntrack-file`) for the next agent; with
//! `--daemonset`, the agent asks the API at stop whether its DaemonSet is
//! gone or going, and cleans instead if it is
//! ([`removal`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use podfence_bpf::{NoSocketAction, XdpMode};

use podfence_control::agent::cni_install::{self, CniInstall};
use podfence_control::agent::control_socket::{self, HandoverCall};
use podfence_control::agent::supervisor::{ClusterSource, Supervisor, SupervisorOptions, TakeOver};
use podfence_control::agent::{
    AgentOptions, DenialOptions, DenyLog, OnStop, fail_mode, open_conntrack, removal,
};
use podfence_control::compile::ServicesConfig;
use podfence_control::model::ObjectKey;
use podfence_control::sources::kube::{ApiTarget, SourceOptions};
use podfence_datapath::ports::xsk::BusyPoll;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

/// What pod traffic gets while no agent runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FailMode {
    /// Dropped.
    Closed,
    /// Passed to the kernel, unenforced.
    Open,
}

/// What a stopping agent leaves on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnStopArg {
    /// Nothing: the node as it was before the agent.
    Clean,
    /// Redirectors (fail mode in force), routes, the host-port pair, the
    /// CNI chaining and the connection table, for the next agent.
    Keep,
}

/// A feature switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// `NAMESPACE/NAME` of a Service or a DaemonSet.
fn parse_service_name(s: &str) -> Result<ObjectKey, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(format!("'{s}' is not NAMESPACE/NAME")),
    }
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

/// Who finishes the TCP/UDP checksums pods leave to offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChecksumOffloadArg {
    /// The kernel, through AF_XDP TX metadata, where it can (Linux 6.11,
    /// copy mode); software elsewhere.
    Auto,
    /// The datapath, in software, always.
    Software,
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
    /// Who finishes the TCP/UDP checksums pods leave to offload: `auto`
    /// leaves them to the kernel through AF_XDP TX metadata where it can;
    /// `software` always finishes them in the datapath. The agent says at
    /// start which is in force.
    #[arg(long, env = "PODFENCE_CHECKSUM_OFFLOAD", value_enum, default_value_t = ChecksumOffloadArg::Auto)]
    checksum_offload: ChecksumOffloadArg,
    /// Largest IP packet the datapath carries: the pods' MTU (up to 9000;
    /// frames past one AF_XDP chunk travel as multi-buffer chains). Set on
    /// the host-port pair too.
    #[arg(
        long,
        env = "PODFENCE_MTU",
        default_value_t = 1500,
        value_name = "BYTES",
        value_parser = clap::value_parser!(u32).range(576..=9216)
    )]
    mtu: u32,
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
    /// Frames (2 KiB each) in the UMEM of each pod veth's AF_XDP socket, per
    /// worker: a power of two from 256 to 16384. More absorbs longer
    /// bursts to one pod; each costs locked memory and pod start time.
    #[arg(
        long,
        env = "PODFENCE_POD_FRAMES",
        default_value_t = podfence_control::agent::DEFAULT_POD_FRAMES,
        value_name = "N",
        value_parser = parse_pod_frames
    )]
    pod_frames: u32,
    /// AF_XDP sockets (each with its UMEM, see `--pod-frames`) kept ready so
    /// that a starting pod's interface only binds one (0: made as pods
    /// start).
    #[arg(
        long,
        env = "PODFENCE_SPARE_SOCKETS",
        default_value_t = podfence_control::agent::DEFAULT_SPARE_SOCKETS,
        value_name = "N"
    )]
    spare_sockets: usize,
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
    /// socket (`none`: do not). An agent already answering there is taken
    /// over from: it enforces until this one has compiled the cluster, then
    /// hands the node over (a DaemonSet rollout with a surge).
    #[arg(long, env = "PODFENCE_CONTROL_SOCKET", default_value = control_socket::DEFAULT_PATH, value_name = "PATH")]
    control_socket: PathBuf,
    /// Audit mode for every pod: policy is evaluated and what it would deny
    /// is logged and counted, not dropped. Without it, the pods of
    /// namespaces labelled podfence.io/enforcement=audit are audited.
    #[arg(long, env = "PODFENCE_AUDIT", value_parser = clap::builder::BoolishValueParser::new())]
    audit: bool,
    /// Translate Service addresses (ClusterIPs, external IPs) in the
    /// datapath, so that policy sees the backend pods; `off` leaves pods'
    /// Service traffic to kube-proxy or a CNI that replaces it.
    #[arg(long, env = "PODFENCE_SERVICES", value_enum, default_value_t = OnOff::On)]
    services: OnOff,
    /// Leave this Service to kube-proxy (NAMESPACE/NAME, repeatable; the
    /// variable takes a comma-separated list), e.g. kube-system/kube-dns
    /// when NodeLocal DNSCache takes over its address on the node.
    #[arg(
        long = "skip-service",
        env = "PODFENCE_SKIP_SERVICE",
        value_name = "NAMESPACE/NAME",
        value_delimiter = ',',
        value_parser = parse_service_name
    )]
    skip_service: Vec<ObjectKey>,
    /// Install podfence-cni into this CNI binary directory (the node's
    /// /opt/cni/bin) while the agent runs.
    #[arg(
        long,
        env = "PODFENCE_CNI_BIN_DIR",
        value_name = "DIR",
        requires = "cni_conf_dir"
    )]
    cni_bin_dir: Option<PathBuf>,
    /// Chain podfence-cni into the network configuration of this directory
    /// (the node's /etc/cni/net.d) while the agent runs.
    #[arg(
        long,
        env = "PODFENCE_CNI_CONF_DIR",
        value_name = "DIR",
        requires = "cni_bin_dir"
    )]
    cni_conf_dir: Option<PathBuf>,
    /// The podfence-cni binary to install (default: beside this one).
    #[arg(long, env = "PODFENCE_CNI_PLUGIN", value_name = "FILE")]
    cni_plugin: Option<PathBuf>,
    /// What to leave on the node at SIGINT or SIGTERM: `clean` undoes
    /// everything; `keep` leaves the XDP redirectors (the fail mode in
    /// force), the routes, the host-port pair, podfence-cni's chaining and
    /// the connection table for the next agent, which takes them over
    /// without a moment where pod traffic bypasses the datapath.
    #[arg(long, env = "PODFENCE_ON_STOP", value_enum, default_value_t = OnStopArg::Clean)]
    on_stop: OnStopArg,
    /// With --on-stop keep, the DaemonSet this agent runs in
    /// (NAMESPACE/NAME): at stop the agent asks the API about it, and
    /// cleans instead of keeping when it is gone or being deleted
    /// (podfence is being removed). Needs --in-cluster or --kubeconfig.
    #[arg(long, env = "PODFENCE_DAEMONSET", value_name = "NAMESPACE/NAME", value_parser = parse_service_name)]
    daemonset: Option<ObjectKey>,
    /// The connection table's file (a tmpfs such as /run: the next agent
    /// maps it and keeps the connections open; `none`: in memory). Default:
    /// /run/podfence/conntrack with --on-stop keep, memory otherwise.
    #[arg(long, env = "PODFENCE_CONNTRACK_FILE", value_name = "FILE")]
    conntrack_file: Option<PathBuf>,
    /// Denied packets captured per second at most.
    #[arg(
        long,
        env = "PODFENCE_CAPTURE_RATE",
        default_value_t = 1000,
        value_name = "N"
    )]
    capture_rate: u32,
}

/// `--pod-frames`: a power of two from 256 to 16384.
fn parse_pod_frames(arg: &str) -> Result<u32, String> {
    let frames: u32 = arg.parse().map_err(|e| format!("{arg:?}: {e}"))?;
    if frames.is_power_of_two() && (256..=16_384).contains(&frames) {
        Ok(frames)
    } else {
        Err(format!("{frames} is not a power of two from 256 to 16384"))
    }
}

fn options(args: &RunArgs) -> AgentOptions {
    let mut o = AgentOptions {
        node_name: args.node_name.clone(),
        workers: usize::from(args.workers),
        pin_workers: !args.no_pin,
        conntrack_entries: args.conntrack_entries,
        spare_sockets: args.spare_sockets,
        pod_frames: args.pod_frames,
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
    o.xsk.checksum_offload = args.checksum_offload == ChecksumOffloadArg::Auto;
    o.mtu = args.mtu;
    if args.busy_poll > 0 {
        o.xsk.busy_poll = Some(BusyPoll {
            usecs: args.busy_poll,
            budget: 64,
        });
    }
    o.worker.revalidate = !args.keep_established;
    o.audit = args.audit;
    o.services = ServicesConfig {
        enabled: args.services == OnOff::On,
        skip: args.skip_service.clone(),
    };
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

/// Where the cluster comes from.
fn source(args: &RunArgs) -> ClusterSource {
    if !args.manifests.is_empty() {
        return ClusterSource::Manifests(args.manifests.clone());
    }
    let target = match &args.kubeconfig {
        Some(path) => ApiTarget::Kubeconfig(path.clone()),
        None => ApiTarget::InCluster,
    };
    ClusterSource::Api(
        target,
        SourceOptions {
            debounce: Duration::from_millis(args.debounce_ms),
            ..SourceOptions::default()
        },
    )
}

/// What `--cni-bin-dir` and `--cni-conf-dir` ask to install, if they do.
fn cni_install(args: &RunArgs) -> Result<Option<CniInstall>> {
    let (Some(bin_dir), Some(conf_dir)) = (&args.cni_bin_dir, &args.cni_conf_dir) else {
        return Ok(None);
    };
    anyhow::ensure!(
        args.control_socket.to_str() != Some("none"),
        "--cni-bin-dir needs the control socket: podfence-cni asks the agent there"
    );
    let plugin = match &args.cni_plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary's directory")?
            .with_file_name(cni_install::PLUGIN),
    };
    Ok(Some(CniInstall {
        bin_dir: bin_dir.clone(),
        conf_dir: conf_dir.clone(),
        plugin,
        control_socket: args.control_socket.clone(),
        fail_mode: match args.fail_mode {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
        .into(),
    }))
}

/// Keeps podfence-cni installed; logs what changed and new errors only.
#[derive(Debug)]
struct CniKeeper {
    install: CniInstall,
    last: Option<Instant>,
    last_error: Option<String>,
}

impl CniKeeper {
    const EVERY: Duration = Duration::from_secs(5);

    fn maintain(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        match self.install.install() {
            Ok(done) => {
                self.last_error = None;
                if done.binary || done.config.1 {
                    info!(
                        binary = %self.install.bin_dir.join(cni_install::PLUGIN).display(),
                        config = %done.config.0.display(),
                        "podfence-cni installed and chained"
                    );
                }
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    warn!(
                        error = e,
                        "podfence-cni is not installed; retrying every 5 s"
                    );
                    self.last_error = Some(e);
                }
            }
        }
    }

    fn remove(&self) {
        match self.install.uninstall() {
            Ok(changed) => info!(configs = ?changed, "podfence-cni removed from the node"),
            Err(e) => warn!(error = %e, "removing podfence-cni"),
        }
    }
}

/// Where the connection table's file is, if it has one.
fn conntrack_file(args: &RunArgs) -> Option<PathBuf> {
    match &args.conntrack_file {
        Some(p) if p.to_str() == Some("none") => None,
        Some(p) => Some(p.clone()),
        None => (args.on_stop == OnStopArg::Keep).then(|| PathBuf::from(DEFAULT_CONNTRACK_FILE)),
    }
}

/// The connection table's file with `--on-stop keep`, by default.
const DEFAULT_CONNTRACK_FILE: &str = "/run/podfence/conntrack";

/// How long the stopping agent waits for the API's answer about its
/// DaemonSet (the DaemonSet's grace period is 60 s).
const DAEMONSET_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What to leave at this stop: `--on-stop`, and with `keep` and
/// `--daemonset`, what the API says of the DaemonSet.
fn on_stop(args: &RunArgs) -> OnStop {
    if args.on_stop == OnStopArg::Clean {
        return OnStop::Clean;
    }
    let (Some(daemonset), ClusterSource::Api(target, _)) = (&args.daemonset, source(args)) else {
        return OnStop::Keep;
    };
    let state = removal::daemonset_state(&target, daemonset, DAEMONSET_ASK_TIMEOUT);
    let decided = state.on_stop();
    info!(
        daemonset = %daemonset,
        answer = state.describe(),
        on_stop = ?decided,
        "upgrade or removal?"
    );
    decided
}

/// The agent's options, with its connection table opened when it lives in
/// a file (when taking over from a running agent, once it has handed over).
fn agent_options(args: &RunArgs, take_over: Option<&TakeOver>) -> Result<AgentOptions> {
    anyhow::ensure!(
        args.daemonset.is_none() || args.manifests.is_empty(),
        "--daemonset needs the Kubernetes API (--in-cluster or --kubeconfig)"
    );
    let mut agent = options(args);
    agent.keep_on_drop = args.on_stop == OnStopArg::Keep;
    if take_over.is_some() {
        return Ok(agent);
    }
    if let Some(path) = conntrack_file(args) {
        agent.conntrack = Some(
            open_conntrack(Some(&path), args.conntrack_entries)
                .context("cannot use the connection table's file")?,
        );
    }
    Ok(agent)
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
    let mut cni = cni_install(args)?.map(|install| CniKeeper {
        install,
        last: None,
        last_error: None,
    });
    let control_socket =
        (args.control_socket.to_str() != Some("none")).then(|| args.control_socket.clone());
    let take_over = control_socket
        .as_ref()
        .and_then(|socket| take_over(args, socket));
    let agent = agent_options(args, take_over.as_ref())?;
    info!(
        node = agent.node_name.as_deref().unwrap_or("(all pods local)"),
        fail = fail_mode(agent.redirect.no_socket_action),
        "starting"
    );
    let options = SupervisorOptions {
        agent,
        metrics_addr: (!args.no_metrics).then_some(args.metrics_addr),
        control_socket,
        take_over,
    };
    let stop_asked = |signals: &mut Signals| signals.pending().any(|s| s != SIGHUP);
    let Some(mut supervisor) =
        Supervisor::start(source(args), options, || stop_asked(&mut signals))?
    else {
        return Ok(());
    };
    let write_ready = |generation: u64| {
        if let Some(path) = &args.ready_file {
            std::fs::write(path, format!("{generation}\n"))
                .with_context(|| format!("cannot write {}", path.display()))
        } else {
            Ok(())
        }
    };
    write_ready(supervisor.agent().status().generation)?;
    let interval = (args.stats_interval > 0).then(|| Duration::from_secs(args.stats_interval));
    let mut last_stats = Instant::now();
    let mut handover = None;
    'running: loop {
        if let Some(call) = supervisor.handover_asked() {
            info!("a next agent takes the node over");
            handover = Some(call);
            break 'running;
        }
        for signal in signals.pending() {
            if signal != SIGHUP {
                info!(signal, "stopping");
                break 'running;
            }
            if let Some(generation) = supervisor.reload(Instant::now())
                && let Err(e) = write_ready(generation)
            {
                warn!(error = %e, "cannot update the ready file");
            }
        }
        if let Some(generation) = supervisor.tick()
            && let Err(e) = write_ready(generation)
        {
            warn!(error = %e, "cannot update the ready file");
        }
        // Once the control socket answers: the plugin can reach the agent.
        if let Some(cni) = &mut cni {
            cni.maintain();
        }
        if let Some(every) = interval
            && last_stats.elapsed() >= every
        {
            let s = supervisor.agent().status();
            info!(generation = s.generation, counters = ?s.counters, "stats");
            last_stats = Instant::now();
        }
        supervisor.idle(Duration::from_millis(50));
    }
    match handover {
        Some(call) => hand_over(args, supervisor, &call, &mut signals),
        None => stop(args, supervisor, cni.as_ref()),
    }
}

/// Stops at SIGTERM or SIGINT, as `--on-stop` (and the API) say.
fn stop(args: &RunArgs, supervisor: Supervisor, cni: Option<&CniKeeper>) -> Result<()> {
    // Asked while the agent still enforces.
    let on_stop = on_stop(args);
    // Before the agent stops: new pods are not sent to a stopping agent.
    // Kept, the chaining stays: the plugin's fail mode decides new pods
    // until the next agent answers.
    if let Some(cni) = cni
        && on_stop == OnStop::Clean
    {
        cni.remove();
    }
    let status = supervisor.agent().status();
    let reports = supervisor
        .stop_with(on_stop)
        .context("the agent did not stop cleanly")?;
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    info!(counters = ?status.counters, "stopped");
    for (w, r) in reports.iter().enumerate() {
        info!(worker = w, switch = ?r.switch, port_errors = r.port_errors, "worker");
    }
    Ok(())
}

/// The agent answering on `socket`, if one does: this one takes over from
/// it (see [`TakeOver`]).
fn take_over(args: &RunArgs, socket: &std::path::Path) -> Option<TakeOver> {
    let generation = TakeOver::running_agent(socket)?;
    info!(
        socket = %socket.display(),
        generation,
        "an agent runs on this node: it enforces until this one has compiled the cluster, then hands over"
    );
    Some(TakeOver {
        socket: socket.to_owned(),
        generation,
        conntrack: conntrack_file(args).map(|path| (path, args.conntrack_entries)),
    })
}

/// Leaves the node to the agent that asked (see [`TakeOver`]): stops as
/// with `keep` (podfence-cni stays chained), answers, then waits for
/// SIGTERM with nothing left to undo: the pod of a surge's old agent is
/// deleted once the new one is ready, and an exit before that would have
/// the kubelet restart it.
fn hand_over(
    args: &RunArgs,
    supervisor: Supervisor,
    call: &HandoverCall,
    signals: &mut Signals,
) -> Result<()> {
    // The compiled state is freed once the next agent has its answer:
    // what it waits for is the workers' sockets closed and the connection
    // table let go (the agent owns it), not this.
    let compiled = supervisor.agent().tables().clone();
    let stopped = supervisor.stop_with(OnStop::Keep);
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    let answer = match &stopped {
        Ok(_) => serde_json::json!({"handed_over": true}).to_string(),
        Err(e) => format!("error: {e}"),
    };
    let _ = call.reply.send(answer);
    drop(compiled);
    stopped.context("the agent did not stop cleanly for the next one")?;
    info!(
        "handed over; the next agent enforces this node. Waiting for SIGTERM, with nothing to undo"
    );
    for signal in signals.forever() {
        if signal != SIGHUP {
            info!(signal, "stopping (handed over: nothing to undo)");
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_pod_frames;

    #[test]
    fn pod_frames_are_a_power_of_two_in_range() {
        assert_eq!(parse_pod_frames("2048"), Ok(2048));
        assert_eq!(parse_pod_frames("256"), Ok(256));
        assert_eq!(parse_pod_frames("16384"), Ok(16_384));
        for bad in ["3000", "128", "32768", "0"] {
            let err = parse_pod_frames(bad).unwrap_err();
            assert!(
                err.contains("power of two from 256 to 16384"),
                "{bad}: {err}"
            );
        }
        assert!(parse_pod_frames("many").is_err());
    }
}
