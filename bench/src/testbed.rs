//! A node built from network namespaces, so that policy verdicts can be
//! checked with real packets instead of table lookups.
//!
//! [`Testbed::build`] turns a [`Cluster`] into:
//!
//! - a node namespace `<prefix>-node` with IP forwarding on and one
//!   host-side veth `pv<i>` per pod (the agent, started there, adds its
//!   host-port pair `pf-host`/`pf-dp`; see [`crate::live`]);
//! - one namespace `<prefix>-<ns>-<pod>` per pod that has addresses of its
//!   own, wired like the CNI `ptp` plugin: `eth0` with the pod's addresses as
//!   /32 and /128, a default route via the link-local gateway 169.254.1.1
//!   (`fe80::1` for IPv6), and in the node a host route per pod address
//!   pointing at the pod's veth. Neighbours are static on both sides (and
//!   proxy ARP is on for the host veth), so no ARP/ND is needed to get going;
//! - an outside namespace `<prefix>-out` behind the node (transit link
//!   `pf-out` in the node, `pf-node` outside, 169.254.100.0/30 and
//!   fd70:6600::/126), holding every external address the caller asks for.
//!
//! Every pod answers TCP and UDP on its named container ports with
//! `ns/pod`; the outside namespace answers `ext:IP` on the ports in
//! [`TestbedOptions::external_ports`]. Servers are threads of this process
//! that entered the namespace (`setns`), polled with a timeout and stopped
//! on drop.
//!
//! This kernel has no SCTP, so an SCTP probe is an INIT chunk sent over a
//! raw IP socket in the source namespace and watched for with a packet socket
//! in the destination namespace.
//!
//! Names carry a per-run prefix (`pf` and four hex digits), so two runs never
//! collide. Everything the testbed creates lives inside its namespaces, and
//! dropping the testbed deletes them (which deletes their veths). The
//! namespace names are also kept in a process-wide registry that a
//! SIGINT/SIGTERM handler empties before the process dies, so Ctrl-C leaves
//! nothing behind either. The handler replaces any previous handler of those
//! two signals: after cleaning up it restores the default action and raises
//! the signal again.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use podfence_control::model::{Cluster, PodPhase, Protocol};
use podfence_control::probe::{Endpoint, Probe};
use podfence_datapath::craft::{FrameSpec, Transport};

/// Link-local IPv4 gateway of every pod, as the `ptp` plugin sets it up.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Link-local IPv6 gateway of every pod.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Node side of the link to the outside namespace.
pub const NODE_OUT_IF: &str = "pf-out";
/// Outside side of the link to the node.
pub const OUT_NODE_IF: &str = "pf-node";
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest namespace name the testbed makes (a file name under /run/netns).
pub const NETNS_NAME_MAX: usize = 100;

const TRANSIT_NODE_V4: &str = "169.254.100.1";
const TRANSIT_OUT_V4: &str = "169.254.100.2";
const TRANSIT_NODE_V6: &str = "fd70:6600::1";
const TRANSIT_OUT_V6: &str = "fd70:6600::2";
const TRANSIT_NODE_MAC: &str = "02:70:66:ff:ff:01";
const TRANSIT_OUT_MAC: &str = "02:70:66:ff:ff:02";
/// How often server threads look at their stop flag.
const SERVER_POLL_MS: i32 = 50;

/// Why the testbed could not be built or a probe could not be run.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// An `ip` command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error (or why it could not run).
        stderr: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The probe names a pod the testbed does not have.
    #[error("pod {0} is not in the testbed (unknown, host-network, finished or without address)")]
    UnknownPod(String),
    /// The probe names an external address not given in the options.
    #[error("external address {0} is not in the testbed (add it to TestbedOptions::external)")]
    UnknownExternal(IpAddr),
    /// Source and destination have no address family in common.
    #[error("{src} and {dst} have no address family in common")]
    NoCommonFamily {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// What the testbed holds besides the cluster's pods.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// Addresses of the outside namespace (`ext:` endpoints).
    pub external: Vec<IpAddr>,
    /// Ports on which the outside namespace answers, on every external
    /// address (TCP and UDP; SCTP needs no listener).
    pub external_ports: Vec<(Protocol, u16)>,
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// TCP or UDP: the destination answered with this text.
    Answered(String),
    /// SCTP: the INIT arrived in the destination namespace.
    Seen,
    /// The destination refused (TCP RST, ICMP port unreachable): the first
    /// packet got through, but nothing listens there.
    Refused,
    /// Nothing came back (or arrived) before the timeout.
    NoAnswer,
}

impl ProbeOutcome {
    /// Whether the exchange completed (answer received, INIT seen).
    #[must_use]
    pub fn completed(&self) -> bool {
        matches!(self, Self::Answered(_) | Self::Seen)
    }
}

/// A pod as the testbed built it.
#[derive(Clone, Debug)]
pub struct TestbedPod {
    /// `namespace/name`.
    pub key: String,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth in the node namespace.
    pub host_veth: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// A pod the testbed left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedPod {
    /// `namespace/name`.
    pub key: String,
    /// Why.
    pub reason: &'static str,
}

/// The node and its pods in network namespaces; removed on drop.
pub struct Testbed {
    prefix: String,
    node: String,
    outside: String,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    pods: BTreeMap<String, TestbedPod>,
    skipped: Vec<SkippedPod>,
    external: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Testbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Testbed")
            .field("prefix", &self.prefix)
            .field("namespaces", &self.namespaces)
            .field("skipped", &self.skipped)
            .field("external", &self.external)
            .finish_non_exhaustive()
    }
}

// ------------------------------------------------------------------ names --

/// Makes prefixes unique within the process.
static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// A fresh per-run prefix: `pf` and four hex digits from the process id, the
/// time and a counter.
#[must_use]
pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    let mix = std::process::id().wrapping_mul(0x9e37_79b9) ^ nanos ^ n.wrapping_mul(0x85eb_ca6b);
    format!("pf{:04x}", (mix ^ (mix >> 16)) & 0xffff)
}

/// Reduces `s` to `[a-z0-9-]` (everything else becomes `-`), for namespace
/// names.
#[must_use]
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect()
}

/// The namespace name of pod `index` (`<prefix>-<ns>-<pod>`, sanitized, at
/// most [`NETNS_NAME_MAX`] characters). When that name is already `taken`
/// (sanitizing or truncating made two pods alike), the index is appended.
#[must_use]
pub fn pod_netns_name<S: std::hash::BuildHasher>(
    prefix: &str,
    namespace: &str,
    pod: &str,
    index: usize,
    taken: &HashSet<String, S>,
) -> String {
    let mut name = format!("{prefix}-{}-{}", sanitize(namespace), sanitize(pod));
    name.truncate(NETNS_NAME_MAX);
    if taken.contains(&name) {
        let suffix = format!("-{index}");
        name.truncate(NETNS_NAME_MAX - suffix.len());
        name.push_str(&suffix);
    }
    name
}

/// The node-side veth of pod `index`: `pv<index>` (at most 15 characters).
#[must_use]
pub fn host_veth_name(index: usize) -> String {
    let name = format!("pv{index}");
    assert!(name.len() <= IFNAME_MAX, "{name} is too long");
    name
}

fn mac(index: usize, side: u8) -> String {
    let i = index as u32;
    format!(
        "02:70:66:{:02x}:{:02x}:{side:02x}",
        (i >> 8) & 0xff,
        i & 0xff
    )
}

// --------------------------------------------------------------- registry --

/// Namespaces of every live testbed, for the signal handler.
static REGISTRY: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Write end of the pipe the signal handler writes the signal number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static HANDLER: OnceLock<()> = OnceLock::new();

pub(crate) fn register(name: &str) {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name.to_owned());
}

pub(crate) fn unregister(name: &str) {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|n| n != name);
}

pub(crate) fn delete_netns(name: &str) {
    // Absent already is fine: deletion is idempotent.
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = u8::try_from(sig).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
        unsafe { libc::write(fd, std::ptr::addr_of!(byte).cast(), 1) };
    }
}

/// Installs (once) the SIGINT/SIGTERM handler: it hands the signal to a
/// thread that deletes every registered namespace, then dies of the signal.
pub(crate) fn install_signal_handler() {
    HANDLER.get_or_init(|| {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        // SAFETY: pipe2 just returned this descriptor; nothing else owns it.
        let mut reader = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        std::thread::Builder::new()
            .name("testbed-signals".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                if reader.read_exact(&mut byte).is_err() {
                    return;
                }
                let names = std::mem::take(
                    &mut *REGISTRY
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for name in names.iter().rev() {
                    delete_netns(name);
                }
                let sig = libc::c_int::from(byte[0]);
                // SAFETY: restoring the default action and re-raising the
                // signal are plain syscalls on valid signal numbers.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::raise(sig);
                }
            })
            .ok();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; the handler only calls
            // write(2), which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&raw mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &raw const action, std::ptr::null_mut());
            }
        }
    });
}

// -------------------------------------------------------------- commands --

pub(crate) fn run(args: &[&str]) -> Result<String, TestbedError> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| TestbedError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <ns> <args>`.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String, TestbedError> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Adds veth pair `name`/`peer` in namespace `netns`, both ends with
/// `queues` transmit and receive queues, the peer moved to `peer_netns`
/// when given.
pub(crate) fn add_veth_pair(
    netns: &str,
    name: &str,
    peer: &str,
    peer_netns: Option<&str>,
    queues: u32,
) -> Result<(), TestbedError> {
    let q = queues.max(1).to_string();
    let mut args = vec![
        "link",
        "add",
        name,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ];
    if let Some(ns) = peer_netns {
        args.extend(["netns", ns]);
    }
    ip(netns, &args).map(|_| ())
}

/// Enters namespace `name` on the calling thread.
pub(crate) fn enter_netns(name: &str) -> io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: `file` is an open namespace descriptor for the duration of the
    // call; setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and waits for it.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

pub(crate) fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<(), TestbedError> {
    in_netns(ns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        }
        Ok(())
    })
    .map_err(io_err(format!("sysctl in {ns}")))
}

/// Static neighbours on the node-outside link, both families.
fn transit_neighbours(node: &str, out: &str, v6: bool) -> Result<(), TestbedError> {
    // Static neighbours: no resolution delay on the first packet.
    let mut pairs = vec![(TRANSIT_NODE_V4, TRANSIT_OUT_V4)];
    if v6 {
        pairs.push((TRANSIT_NODE_V6, TRANSIT_OUT_V6));
    }
    for (node_addr, out_addr) in pairs {
        ip(
            node,
            &[
                "neigh",
                "add",
                out_addr,
                "lladdr",
                TRANSIT_OUT_MAC,
                "dev",
                NODE_OUT_IF,
                "nud",
                "permanent",
            ],
        )?;
        ip(
            out,
            &[
                "neigh",
                "add",
                node_addr,
                "lladdr",
                TRANSIT_NODE_MAC,
                "dev",
                OUT_NODE_IF,
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- build --

impl Testbed {
    /// Builds the node, the pods and the outside namespace, and starts the
    /// servers. On failure everything made so far is removed.
    pub fn build(cluster: &Cluster, options: &TestbedOptions) -> Result<Self, TestbedError> {
        Self::build_with_queues(cluster, options, 1)
    }

    /// [`Self::build`] with pod veths of `queues` transmit and receive
    /// queues each (one per datapath worker; veths have one by default).
    pub fn build_with_queues(
        cluster: &Cluster,
        options: &TestbedOptions,
        queues: u32,
    ) -> Result<Self, TestbedError> {
        install_signal_handler();
        let mut prefix = run_prefix();
        for _ in 0..16 {
            if !std::path::Path::new(&format!("/run/netns/{prefix}-node")).exists() {
                break;
            }
            prefix = run_prefix();
        }
        let mut bed = Self {
            node: format!("{prefix}-node"),
            outside: format!("{prefix}-out"),
            prefix,
            namespaces: Vec::new(),
            pods: BTreeMap::new(),
            skipped: Vec::new(),
            external: options.external.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        // From here on, dropping `bed` (on error or panic) removes everything.
        let node = bed.node.clone();
        let outside = bed.outside.clone();
        bed.add_netns(&node)?;
        bed.add_netns(&outside)?;
        let any_v6 = options.external.iter().any(IpAddr::is_ipv6)
            || cluster
                .pods
                .values()
                .any(|p| p.ips.iter().any(IpAddr::is_ipv6));

        ip(&node, &["link", "set", "lo", "up"])?;
        sysctl(
            &node,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ],
        )?;
        if any_v6 {
            sysctl(&node, &[("net.ipv6.conf.all.forwarding", "1")])?;
        }
        bed.build_outside(options, any_v6)?;

        let mut taken = HashSet::new();
        for (index, pod) in cluster.pods.values().enumerate() {
            let key = pod.key();
            let reason = if pod.host_network {
                Some("uses the host network")
            } else if matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
                Some("has finished")
            } else if pod.ips.is_empty() {
                Some("has no address")
            } else {
                None
            };
            if let Some(reason) = reason {
                eprintln!("testbed: skipping pod {key}: it {reason}");
                bed.skipped.push(SkippedPod { key, reason });
                continue;
            }
            let netns = pod_netns_name(&bed.prefix, &pod.namespace, &pod.name, index, &taken);
            taken.insert(netns.clone());
            let tp = TestbedPod {
                key: key.clone(),
                netns,
                host_veth: host_veth_name(index),
                ips: pod.ips.clone(),
            };
            bed.build_pod(&tp, index, queues.max(1))?;
            let ports: Vec<(Protocol, u16)> = pod
                .named_ports
                .iter()
                .map(|p| (p.protocol, p.port))
                .collect();
            bed.start_server(&tp.netns, &tp.ips, &ports, &key)?;
            bed.pods.insert(key, tp);
        }
        for &ext in &options.external {
            bed.start_server(
                &outside,
                &[ext],
                &options.external_ports,
                &format!("ext:{ext}"),
            )?;
        }
        Ok(bed)
    }

    fn add_netns(&mut self, name: &str) -> Result<(), TestbedError> {
        register(name);
        if let Err(e) = run(&["ip", "netns", "add", name]) {
            unregister(name);
            return Err(e);
        }
        self.namespaces.push(name.to_owned());
        // A probe to a closed UDP port is answered by ICMP port unreachable;
        // hundreds of probes at once must not meet the kernel's ICMP rate
        // limits, or a refusal would look like a drop.
        sysctl(
            name,
            &[
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv4.icmp_msgs_per_sec", "1000000"),
                ("net.ipv4.icmp_msgs_burst", "1000000"),
            ],
        )?;
        // No duplicate address detection: addresses are usable at once, and
        // nothing else can own them inside the testbed.
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            sysctl(
                name,
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                    ("net.ipv6.icmp.ratelimit", "0"),
                ],
            )?;
        }
        Ok(())
    }

    fn build_outside(&mut self, options: &TestbedOptions, v6: bool) -> Result<(), TestbedError> {
        let (node, out) = (self.node.clone(), self.outside.clone());
        ip(&out, &["link", "set", "lo", "up"])?;
        ip(
            &node,
            &[
                "link",
                "add",
                NODE_OUT_IF,
                "address",
                TRANSIT_NODE_MAC,
                "type",
                "veth",
                "peer",
                "name",
                OUT_NODE_IF,
                "address",
                TRANSIT_OUT_MAC,
                "netns",
                &out,
            ],
        )?;
        ip(
            &node,
            &[
                "addr",
                "add",
                &format!("{TRANSIT_NODE_V4}/30"),
                "dev",
                NODE_OUT_IF,
            ],
        )?;
        ip(
            &out,
            &[
                "addr",
                "add",
                &format!("{TRANSIT_OUT_V4}/30"),
                "dev",
                OUT_NODE_IF,
            ],
        )?;
        if v6 {
            ip(
                &node,
                &[
                    "addr",
                    "add",
                    &format!("{TRANSIT_NODE_V6}/126"),
                    "dev",
                    NODE_OUT_IF,
                    "nodad",
                ],
            )?;
            ip(
                &out,
                &[
                    "addr",
                    "add",
                    &format!("{TRANSIT_OUT_V6}/126"),
                    "dev",
                    OUT_NODE_IF,
                    "nodad",
                ],
            )?;
        }
        ip(&node, &["link", "set", NODE_OUT_IF, "up"])?;
        ip(&out, &["link", "set", OUT_NODE_IF, "up"])?;
        transit_neighbours(&node, &out, v6)?;
        // Everything not outside is behind the node: pods answer through it.
        ip(&out, &["route", "add", "default", "via", TRANSIT_NODE_V4])?;
        if v6 {
            ip(
                &out,
                &["-6", "route", "add", "default", "via", TRANSIT_NODE_V6],
            )?;
        }
        for ext in &options.external {
            let (len, via, fam) = if ext.is_ipv4() {
                ("32", TRANSIT_OUT_V4, "-4")
            } else {
                ("128", TRANSIT_OUT_V6, "-6")
            };
            let cidr = format!("{ext}/{len}");
            let mut add = vec![fam, "addr", "add", &cidr, "dev", OUT_NODE_IF];
            if ext.is_ipv6() {
                add.push("nodad");
            }
            ip(&out, &add)?;
            ip(
                &node,
                &[fam, "route", "add", &cidr, "via", via, "dev", NODE_OUT_IF],
            )?;
        }
        Ok(())
    }

    fn build_pod(
        &mut self,
        pod: &TestbedPod,
        index: usize,
        queues: u32,
    ) -> Result<(), TestbedError> {
        let node = self.node.clone();
        self.add_netns(&pod.netns)?;
        let (host_mac, pod_mac) = (mac(index, 1), mac(index, 2));
        let ns = pod.netns.as_str();
        let hv = pod.host_veth.as_str();
        let q = queues.to_string();
        let mut add = vec!["link", "add", hv, "address", &host_mac];
        if queues > 1 {
            add.extend(["numtxqueues", &q, "numrxqueues", &q]);
        }
        add.extend(["type", "veth", "peer", "name", "eth0", "address", &pod_mac]);
        if queues > 1 {
            add.extend(["numtxqueues", &q, "numrxqueues", &q]);
        }
        add.extend(["netns", ns]);
        ip(&node, &add)?;
        ip(ns, &["link", "set", "lo", "up"])?;
        sysctl(&node, &[(&format!("net.ipv4.conf.{hv}.proxy_arp"), "1")])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
        ip(&node, &["link", "set", hv, "up"])?;
        let v6 = pod.ips.iter().any(IpAddr::is_ipv6);
        for addr in &pod.ips {
            let (cidr, fam) = match addr {
                IpAddr::V4(a) => (format!("{a}/32"), "-4"),
                IpAddr::V6(a) => (format!("{a}/128"), "-6"),
            };
            let mut add = vec![fam, "addr", "add", &cidr, "dev", "eth0"];
            if addr.is_ipv6() {
                add.push("nodad");
            }
            ip(ns, &add)?;
            ip(&node, &[fam, "route", "add", &cidr, "dev", hv])?;
            let a = addr.to_string();
            ip(
                &node,
                &[
                    fam,
                    "neigh",
                    "add",
                    &a,
                    "lladdr",
                    &pod_mac,
                    "dev",
                    hv,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        let gw4 = GATEWAY_V4.to_string();
        ip(ns, &["route", "add", &gw4, "dev", "eth0", "scope", "link"])?;
        ip(ns, &["route", "add", "default", "via", &gw4, "dev", "eth0"])?;
        ip(
            ns,
            &[
                "neigh",
                "add",
                &gw4,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        if v6 {
            let gw6 = GATEWAY_V6.to_string();
            ip(
                ns,
                &[
                    "-6",
                    "neigh",
                    "add",
                    &gw6,
                    "lladdr",
                    &host_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            )?;
            ip(
                ns,
                &["-6", "route", "add", "default", "via", &gw6, "dev", "eth0"],
            )?;
        }
        Ok(())
    }

    fn start_server(
        &mut self,
        netns: &str,
        ips: &[IpAddr],
        ports: &[(Protocol, u16)],
        reply: &str,
    ) -> Result<(), TestbedError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::clone(&self.stop);
        let (netns_owned, ips, ports, answer) = (
            netns.to_owned(),
            ips.to_vec(),
            ports.to_vec(),
            reply.to_owned(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("srv-{reply}"))
            .spawn(move || {
                let sockets = enter_netns(&netns_owned).and_then(|()| bind_all(&ips, &ports));
                match sockets {
                    Ok(sockets) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(&sockets, answer.as_bytes(), &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(io_err("spawning a server thread"))?;
        self.servers.push(handle);
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread died")))
            .map_err(io_err(format!(
                "starting the servers of {reply} in {netns}"
            )))
    }
}

// ---------------------------------------------------------------- servers --

enum Server {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Server {
    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Udp(s) => s.as_raw_fd(),
        }
    }
}

fn bind_all(ips: &[IpAddr], ports: &[(Protocol, u16)]) -> io::Result<Vec<Server>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &ip in ips {
        for &(proto, port) in ports {
            if !seen.insert((ip, proto, port)) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("{proto} {addr}: {e}"));
            match proto {
                Protocol::Tcp => {
                    let l = TcpListener::bind(addr).map_err(with_addr)?;
                    l.set_nonblocking(true)?;
                    out.push(Server::Tcp(l));
                }
                Protocol::Udp => {
                    let s = UdpSocket::bind(addr).map_err(with_addr)?;
                    s.set_nonblocking(true)?;
                    out.push(Server::Udp(s));
                }
                // No SCTP in this kernel: probes watch for the INIT instead.
                Protocol::Sctp => {}
            }
        }
    }
    Ok(out)
}

fn serve(sockets: &[Server], reply: &[u8], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, SERVER_POLL_MS) };
        if n <= 0 {
            continue;
        }
        for (pfd, server) in fds.iter_mut().zip(sockets) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            match server {
                Server::Tcp(l) => {
                    while let Ok((mut stream, _)) = l.accept() {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                        let _ = stream.write_all(reply);
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                Server::Udp(s) => {
                    while let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(reply, peer);
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------- probes --

/// Source ports of SCTP probes, so that a watcher recognizes its own INIT.
static NEXT_SCTP_PORT: AtomicU16 = AtomicU16::new(0);

impl Testbed {
    /// The per-run prefix of every namespace name.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node namespace (where the agent runs).
    #[must_use]
    pub fn node_netns(&self) -> &str {
        &self.node
    }

    /// The outside namespace (holding the external addresses).
    #[must_use]
    pub fn outside_netns(&self) -> &str {
        &self.outside
    }

    /// Every namespace the testbed made.
    #[must_use]
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The pods built, by `namespace/name`.
    #[must_use]
    pub fn pods(&self) -> &BTreeMap<String, TestbedPod> {
        &self.pods
    }

    /// The pods left out, and why.
    #[must_use]
    pub fn skipped(&self) -> &[SkippedPod] {
        &self.skipped
    }

    /// The namespace and addresses of an endpoint.
    fn endpoint(&self, e: &Endpoint) -> Result<(&str, Vec<IpAddr>), TestbedError> {
        match e {
            Endpoint::Pod { namespace, name } => {
                let key = format!("{namespace}/{name}");
                let pod = self.pods.get(&key).ok_or(TestbedError::UnknownPod(key))?;
                Ok((&pod.netns, pod.ips.clone()))
            }
            Endpoint::External(ip) => {
                if self.external.contains(ip) {
                    Ok((&self.outside, vec![*ip]))
                } else {
                    Err(TestbedError::UnknownExternal(*ip))
                }
            }
        }
    }

    /// Performs the probe for real and says whether the exchange completed
    /// (TCP or UDP answer received, SCTP INIT seen at the destination).
    pub fn probe(&self, probe: &Probe, timeout: Duration) -> Result<bool, TestbedError> {
        Ok(self.probe_outcome(probe, timeout)?.completed())
    }

    /// Performs the probe for real and says what happened.
    pub fn probe_outcome(
        &self,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let (src_ns, src_ips) = self.endpoint(&probe.src)?;
        let (dst_ns, dst_ips) = self.endpoint(&probe.dst)?;
        let (src, dst) =
            common_family(&src_ips, &dst_ips).ok_or_else(|| TestbedError::NoCommonFamily {
                src: probe.src.to_string(),
                dst: probe.dst.to_string(),
            })?;
        let what = || format!("probe {probe}");
        match probe.protocol {
            Protocol::Tcp => in_netns(src_ns, || tcp_probe(src, dst, probe.port, timeout))
                .map_err(io_err(what())),
            Protocol::Udp => in_netns(src_ns, || udp_probe((src, 0), dst, probe.port, timeout))
                .map_err(io_err(what())),
            Protocol::Sctp => {
                sctp_probe(src_ns, dst_ns, src, dst, probe.port, timeout).map_err(io_err(what()))
            }
        }
    }

    /// A UDP exchange from a fixed source port, so that repeated calls are
    /// one flow (one conntrack entry) and not one connection each.
    pub fn udp_exchange(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
        ports: (u16, u16),
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let (src_ns, src_ips) = self.endpoint(src)?;
        let (_, dst_ips) = self.endpoint(dst)?;
        let (s, d) =
            common_family(&src_ips, &dst_ips).ok_or_else(|| TestbedError::NoCommonFamily {
                src: src.to_string(),
                dst: dst.to_string(),
            })?;
        in_netns(src_ns, || udp_probe((s, ports.0), d, ports.1, timeout)).map_err(io_err(format!(
            "UDP from {src} port {} to {dst} port {}",
            ports.0, ports.1
        )))
    }

    /// Runs probes on up to `parallelism` threads; whether each exchange
    /// completed, in input order.
    #[must_use]
    pub fn probe_all(
        &self,
        probes: &[Probe],
        timeout: Duration,
        parallelism: usize,
    ) -> Vec<Result<bool, TestbedError>> {
        self.probe_all_outcomes(probes, timeout, parallelism)
            .into_iter()
            .map(|r| r.map(|o| o.completed()))
            .collect()
    }

    /// Runs probes on up to `parallelism` threads; what each saw, in input
    /// order.
    #[must_use]
    pub fn probe_all_outcomes(
        &self,
        probes: &[Probe],
        timeout: Duration,
        parallelism: usize,
    ) -> Vec<Result<ProbeOutcome, TestbedError>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<ProbeOutcome, TestbedError>>>> =
            Mutex::new((0..probes.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..parallelism.max(1).min(probes.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = probes.get(i) else { break };
                        let r = self.probe_outcome(p, timeout);
                        results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .map(|r| r.expect("every probe ran"))
            .collect()
    }
}

/// The first pair of addresses of one family.
fn common_family(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    src.iter().find_map(|s| {
        dst.iter()
            .find(|d| d.is_ipv4() == s.is_ipv4())
            .map(|d| (*s, *d))
    })
}

fn tcp_probe(src: IpAddr, dst: IpAddr, port: u16, timeout: Duration) -> io::Result<ProbeOutcome> {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect_from(src, SocketAddr::new(dst, port), timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(ProbeOutcome::Refused),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(ProbeOutcome::NoAnswer),
        Err(e) => return Err(e),
    };
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(if reply.is_empty() {
        ProbeOutcome::NoAnswer
    } else {
        ProbeOutcome::Answered(String::from_utf8_lossy(&reply).into_owned())
    })
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn family(ip: IpAddr) -> libc::c_int {
    if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn new_socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_fd(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` is a valid socket address of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP connection from `src` (bound first, so the outside namespace with
/// several addresses sends from the right one).
fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = new_socket(
        family(src),
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
        libc::IPPROTO_TCP,
    )?;
    bind_fd(&fd, SocketAddr::new(src, 0))?;
    let (sa, len) = sockaddr(dst);
    // SAFETY: `sa` is a valid socket address of `len` bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut err: libc::c_int = 0;
        let mut elen = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `elen` are valid for getsockopt to write an int.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &raw mut elen,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn udp_probe(
    src: (IpAddr, u16),
    dst: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<ProbeOutcome> {
    let sock = UdpSocket::bind(SocketAddr::new(src.0, src.1))?;
    sock.connect(SocketAddr::new(dst, port))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    // Resend a few times: the first datagram may wait on neighbour state.
    let resend = timeout / 4;
    loop {
        match sock.send(b"probe") {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(ProbeOutcome::Refused);
            }
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ProbeOutcome::NoAnswer);
        }
        sock.set_read_timeout(Some(left.min(resend).max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                return Ok(ProbeOutcome::Answered(
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(ProbeOutcome::Refused);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The SCTP common header and INIT chunk from `src_port` to `dst_port`, with
/// its CRC32c: the IP payload of an INIT.
#[must_use]
pub fn sctp_init(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Vec<u8> {
    let frame = FrameSpec {
        src,
        dst,
        transport: Transport::Sctp {
            src_port,
            dst_port,
            chunk: 1,
        },
        payload_len: 0,
        payload_fill: 0,
    }
    .build();
    let l3 = if src.is_ipv4() { 20 } else { 40 };
    frame[14 + l3..].to_vec()
}

/// Whether `packet` (an IP packet) is the INIT from `src:src_port` to
/// `dst:dst_port`.
fn is_our_init(packet: &[u8], src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> bool {
    let (proto, s, d, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let s: [u8; 4] = packet[12..16].try_into().expect("4 bytes");
            let d: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
            (packet[9], IpAddr::from(s), IpAddr::from(d), ihl)
        }
        Some(6) if packet.len() >= 40 => {
            let s: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
            let d: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            (packet[6], IpAddr::from(s), IpAddr::from(d), 40)
        }
        _ => return false,
    };
    let Some(sctp) = packet.get(l4..l4 + 13) else {
        return false;
    };
    proto == podfence_datapath::wire::ip_proto::SCTP
        && s == src
        && d == dst
        && u16::from_be_bytes([sctp[0], sctp[1]]) == src_port
        && u16::from_be_bytes([sctp[2], sctp[3]]) == dst_port
        && sctp[12] == 1
}

/// A packet socket on every interface of the calling thread's namespace,
/// delivering IP packets (link headers stripped).
fn packet_socket() -> io::Result<OwnedFd> {
    let proto = libc::c_int::from((libc::ETH_P_ALL as u16).to_be());
    let fd = new_socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: `tv` is a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn sctp_probe(
    src_ns: &str,
    dst_ns: &str,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<ProbeOutcome> {
    let src_port = 20_000 + NEXT_SCTP_PORT.fetch_add(1, Ordering::Relaxed) % 40_000;
    let watcher = in_netns(dst_ns, packet_socket)?;
    let deadline = Instant::now() + timeout;
    let init = sctp_init(src, dst, src_port, port);
    in_netns(src_ns, || {
        let fd = new_socket(family(src), libc::SOCK_RAW, 132)?;
        bind_fd(&fd, SocketAddr::new(src, 0))?;
        let (sa, len) = sockaddr(SocketAddr::new(dst, 0));
        // SAFETY: `init` and `sa` are valid buffers of the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                init.as_ptr().cast(),
                init.len(),
                0,
                (&raw const sa).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                watcher.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        // Outgoing copies (the loopback's send side) are not arrivals.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if is_our_init(&buf[..n.cast_unsigned()], src, dst, src_port, port) {
            return Ok(ProbeOutcome::Seen);
        }
    }
    Ok(ProbeOutcome::NoAnswer)
}

// ---------------------------------------------------------------- cleanup --

impl Testbed {
    /// Stops the servers and deletes every namespace (and thereby every veth)
    /// the testbed made. Idempotent; also done on drop.
    pub fn cleanup(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        for name in self.namespaces.drain(..).rev() {
            delete_netns(&name);
            unregister(&name);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = run_prefix();
        let b = run_prefix();
        assert_eq!(a.len(), 6);
        assert!(a.starts_with("pf"));
        assert_ne!(a, b);
    }

    #[test]
    fn names_are_sanitized_and_bounded() {
        let taken = HashSet::new();
        assert_eq!(
            pod_netns_name("pf1234", "kube-system", "CoreDNS_7.x", 3, &taken),
            "pf1234-kube-system-coredns-7-x"
        );
        let long = "a".repeat(253);
        let name = pod_netns_name("pf1234", "ns", &long, 7, &taken);
        assert_eq!(name.len(), NETNS_NAME_MAX);
        let taken: HashSet<String> = [name.clone()].into();
        let again = pod_netns_name("pf1234", "ns", &long, 8, &taken);
        assert_eq!(again.len(), NETNS_NAME_MAX);
        assert!(again.ends_with("-8"));
        assert_ne!(again, name);
        // Pods that sanitize alike get their index.
        let first = pod_netns_name("pf1234", "x", "a.b", 1, &HashSet::new());
        let taken: HashSet<String> = [first.clone()].into();
        assert_eq!(first, "pf1234-x-a-b");
        assert_eq!(
            pod_netns_name("pf1234", "x", "a-b", 2, &taken),
            "pf1234-x-a-b-2"
        );
        assert_eq!(host_veth_name(65_535), "pv65535");
        for n in [
            host_veth_name(999_999_999),
            NODE_OUT_IF.into(),
            OUT_NODE_IF.into(),
        ] {
            assert!(n.len() <= IFNAME_MAX, "{n}");
        }
        assert_eq!(mac(0x1234, 2), "02:70:66:12:34:02");
    }

    #[test]
    fn sctp_init_is_recognized() {
        let (s, d) = (IpAddr::from([10, 244, 1, 1]), IpAddr::from([10, 244, 2, 2]));
        let init = sctp_init(s, d, 4000, 80);
        assert_eq!(init.len(), 32);
        let mut packet = vec![0x45, 0, 0, 52, 0, 0, 0x40, 0, 64, 132, 0, 0];
        packet.extend_from_slice(&[10, 244, 1, 1, 10, 244, 2, 2]);
        packet.extend_from_slice(&init);
        assert!(is_our_init(&packet, s, d, 4000, 80));
        assert!(!is_our_init(&packet, s, d, 4001, 80));
        assert!(!is_our_init(&packet, d, s, 4000, 80));
        packet[9] = 6;
        assert!(!is_our_init(&packet, s, d, 4000, 80));
    }
}
