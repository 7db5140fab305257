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
//!   fd70:6600::/126), holding every external address the caller asks for;
//! - with [`TestbedOptions::remote_node`], a second node `<prefix>-node2`
//!   holding the pods whose `spec.nodeName` names it, wired like `ptp`
//!   there too, behind an uplink (`pf-node2` in the first node, `pf-node1`
//!   in the second, 172.18.0.2 and .3/24, fc00:f853:ccd:e793::2 and ::3/64,
//!   kind's node network). Each node routes the other's pod addresses (the
//!   smallest prefix covering them) via the other's uplink address, as
//!   kindnet routes podCIDRs; the second node's default route goes through
//!   the first. No agent runs there; kube-proxy's rules do.
//!
//! Every pod answers TCP and UDP on its named container ports with
//! `ns/pod`; the outside namespace answers `ext:IP` on the ports in
//! [`TestbedOptions::external_ports`]. On [`TestbedOptions::session_ports`]
//! every pod keeps TCP connections open and answers every message. Servers are
//! threads of this process that entered the namespace (`setns`), polled
//! with a timeout and stopped on drop.
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
//!
//! One file per concern: `names` (prefix, namespace and veth names),
//! `netns` (entering namespaces, the cleanup registry and signal handler),
//! `commands` (`ip` and sysctl), `wiring` (node, pods, outside namespace),
//! `servers`, `probes` (TCP and UDP), `sctp` (the raw INIT probe) and
//! `sockets` (raw socket calls the probes share).

mod commands;
pub mod echo;
mod names;
mod netns;
mod probes;
mod sctp;
mod servers;
mod sockets;
mod wiring;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use podfence_control::compile::Locality;
use podfence_control::index::Cluster;
use podfence_control::model::{Pod, PodPhase, Protocol, Service};
use podfence_datapath::Prefix;

use crate::kube_proxy::{self, Family, KubeProxyConfig, KubeProxyRules};

pub(crate) use commands::{add_veth_pair, ip, run, sysctl};
pub use names::{
    IFNAME_MAX, NETNS_NAME_MAX, NODE_OUT_IF, NODE_UPLINK_IF, OUT_NODE_IF, REMOTE_UPLINK_IF,
    host_veth_name, pod_netns_name, run_prefix, sanitize,
};
pub(crate) use netns::{delete_netns, enter_netns, install_signal_handler, register, unregister};
pub use netns::{flush_conntrack, in_netns};
pub use sctp::{sctp_init, sctp_init_tagged};
pub use wiring::{
    GATEWAY_V4, GATEWAY_V6, UPLINK_NODE_V4, UPLINK_NODE_V6, UPLINK_REMOTE_V4, UPLINK_REMOTE_V6,
};

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
    /// The probe names a Service: the testbed probes pods and addresses.
    #[error("{0}: the testbed probes pods and addresses, not Services by name")]
    Service(String),
    /// The probe names an external address not given in the options.
    #[error("external address {0} is not in the testbed (add it to TestbedOptions::external)")]
    UnknownExternal(IpAddr),
    /// kube-proxy's rules could not be installed.
    #[error("installing kube-proxy's nftables rules: {0}")]
    KubeProxy(String),
    /// The probe cannot be done this way.
    #[error("{0}")]
    Unsupported(String),
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

/// Whether the node namespace gets kube-proxy's nftables rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubeProxyMode {
    /// When the cluster has Services kube-proxy would proxy (the default).
    #[default]
    WhenServices,
    /// Never: Service addresses are not translated in the kernel.
    Off,
}

/// What the testbed holds besides the cluster's pods.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// Addresses of the outside namespace (`ext:` endpoints).
    pub external: Vec<IpAddr>,
    /// Ports on which the outside namespace answers, on every external
    /// address (TCP and UDP; SCTP needs no listener).
    pub external_ports: Vec<(Protocol, u16)>,
    /// kube-proxy's rules for the cluster's Services in the node namespace.
    pub kube_proxy: KubeProxyMode,
    /// A second node: pods whose `spec.nodeName` is this name live in a
    /// namespace of their own behind an uplink, not in the node the agent
    /// runs in.
    pub remote_node: Option<String>,
    /// TCP ports on which every pod listens, keeps each connection open
    /// and answers every message it receives with `ns/pod` (instead of
    /// answering once and closing): for tests of long-lived connections.
    pub session_ports: Vec<u16>,
    /// TCP ports the pods' servers leave free, for a test's own server
    /// (one that speaks first, say), even where a container or an
    /// EndpointSlice names them.
    pub own_ports: Vec<u16>,
    /// MTU of the pods' veths, both ends (`None`: the kernel's 1500). The
    /// agent sets its host-port pair's from `AgentOptions::mtu`.
    pub mtu: Option<u32>,
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
    /// The node namespace it is wired to (the first node's, or the second
    /// node's with [`TestbedOptions::remote_node`]).
    pub node_netns: String,
    /// Host-side veth in its node namespace.
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
    /// The second node's namespace, with [`TestbedOptions::remote_node`].
    remote: Option<String>,
    /// The first node's name, when its pods give one.
    node_name: Option<String>,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    pods: BTreeMap<String, TestbedPod>,
    skipped: Vec<SkippedPod>,
    external: Vec<IpAddr>,
    /// ClusterIPs and external IPs of the Services kube-proxy's rules
    /// translate (`ext:` destinations reached through them).
    service_ips: Vec<IpAddr>,
    kube_proxy: Option<KubeProxyRules>,
    /// The pods' MTU, [`TestbedOptions::mtu`].
    mtu: Option<u32>,
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
            node_name: None,
            remote: options
                .remote_node
                .as_ref()
                .map(|_| format!("{prefix}-node2")),
            prefix,
            namespaces: Vec::new(),
            pods: BTreeMap::new(),
            skipped: Vec::new(),
            external: options.external.clone(),
            service_ips: Vec::new(),
            kube_proxy: None,
            mtu: options.mtu,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        // From here on, dropping `bed` (on error or panic) removes everything.
        let node = bed.node.clone();
        let outside = bed.outside.clone();
        bed.add_netns(&node)?;
        bed.add_netns(&outside)?;
        let proxied: Vec<&Service> = cluster
            .services
            .values()
            .map(AsRef::as_ref)
            .filter(|s| options.kube_proxy == KubeProxyMode::WhenServices && s.is_proxied())
            .collect();
        let any_v6 = options.external.iter().any(IpAddr::is_ipv6)
            || cluster
                .pods
                .values()
                .any(|p| p.ips.iter().any(IpAddr::is_ipv6))
            || proxied
                .iter()
                .any(|s| s.cluster_ips.iter().any(IpAddr::is_ipv6));

        wiring::forwarding_node(&node, any_v6)?;
        bed.build_outside(options, any_v6)?;
        if let Some(remote) = bed.remote.clone() {
            bed.build_remote_node(&remote, any_v6)?;
        }

        let mut taken = HashSet::new();
        for (index, pod) in cluster.pods.values().enumerate() {
            let key = pod.key().to_string();
            if let Some(reason) = skip_reason(pod) {
                eprintln!("testbed: skipping pod {key}: it {reason}");
                bed.skipped.push(SkippedPod { key, reason });
                continue;
            }
            let netns = pod_netns_name(&bed.prefix, &pod.namespace, &pod.name, index, &taken);
            taken.insert(netns.clone());
            let node_netns = match &bed.remote {
                Some(remote) if pod.node.is_some() && pod.node == options.remote_node => {
                    remote.clone()
                }
                _ => node.clone(),
            };
            let tp = TestbedPod {
                key: key.clone(),
                netns,
                node_netns,
                host_veth: host_veth_name(index),
                ips: pod.ips.clone(),
            };
            bed.build_pod(&tp.node_netns.clone(), &tp, index, queues.max(1))?;
            let mut ports: Vec<(Protocol, u16)> = pod
                .named_ports
                .iter()
                .map(|p| (p.protocol, p.port))
                .collect();
            // A Service's backend also answers on the target ports its
            // EndpointSlices give it (a numeric targetPort need not be a
            // named container port).
            ports.extend(slice_ports(cluster, &pod.ips));
            ports.retain(|&(p, n)| p != Protocol::Tcp || !options.own_ports.contains(&n));
            bed.start_server(&tp.netns, &tp.ips, &ports, &options.session_ports, &key)?;
            bed.pods.insert(key, tp);
        }
        bed.node_name = bed.node_name_of(cluster, &node);
        bed.route_pod_cidrs()?;
        if !proxied.is_empty() {
            bed.install_kube_proxy(cluster, &proxied, any_v6)?;
        }
        for &ext in &options.external {
            bed.start_server(
                &outside,
                &[ext],
                &options.external_ports,
                &[],
                &format!("ext:{ext}"),
            )?;
        }
        Ok(bed)
    }

    /// kube-proxy's rules in each node namespace, and a route for every
    /// ClusterIP in the first (a real node has a default route; this one has
    /// none, and the node's own connections need a route before
    /// `nat-output` DNATs them; the second node's default route leads
    /// there). A node counts as its pods' node when they name one.
    fn install_kube_proxy(
        &mut self,
        cluster: &Cluster,
        proxied: &[&Service],
        v6: bool,
    ) -> Result<(), TestbedError> {
        let built: Vec<&Pod> = cluster
            .pods
            .values()
            .filter(|p| self.pods.contains_key(&p.key().to_string()))
            .map(AsRef::as_ref)
            .collect();
        let on = |netns: &str| match self.node_name_of(cluster, netns) {
            Some(name) => Locality::Node(name),
            None => Locality::AllPods,
        };
        let pod_ips: Vec<IpAddr> = built.iter().flat_map(|p| p.ips.iter().copied()).collect();
        let cluster_cidrs = [false, true]
            .into_iter()
            .filter_map(|v6| {
                covering(
                    &pod_ips
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv6() == v6)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let mut families = vec![Family::V4];
        if v6 {
            families.push(Family::V6);
        }
        let node = self.node.clone();
        let mut config = KubeProxyConfig {
            locality: on(&node),
            cluster_cidrs,
            service_cidrs: Vec::new(),
            node_port_addresses: self.node_addresses(&node, v6),
            families,
        };
        let rules = kube_proxy::rules(cluster, &config);
        kube_proxy::install(&node, &rules).map_err(TestbedError::KubeProxy)?;
        if let Some(remote) = self.remote.clone() {
            config.locality = on(&remote);
            config.node_port_addresses = self.node_addresses(&remote, v6);
            let rules = kube_proxy::rules(cluster, &config);
            kube_proxy::install(&remote, &rules).map_err(TestbedError::KubeProxy)?;
        }
        let mut seen = BTreeSet::new();
        for s in proxied {
            for &addr in &s.cluster_ips {
                if seen.insert(addr) && !self.external.contains(&addr) {
                    self.route_to_outside(addr)?;
                }
            }
            self.service_ips
                .extend(s.cluster_ips.iter().chain(&s.external_ips).copied());
        }
        self.kube_proxy = Some(rules);
        Ok(())
    }

    /// With a second node, each node's pods routed from the other across
    /// the uplink.
    fn route_pod_cidrs(&self) -> Result<(), TestbedError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        for (here, there) in [(&self.node, remote), (remote, &self.node)] {
            for v6 in [false, true] {
                let addrs: Vec<IpAddr> = self
                    .pods
                    .values()
                    .filter(|p| &p.node_netns == here)
                    .flat_map(|p| p.ips.iter().copied())
                    .filter(|a| a.is_ipv6() == v6)
                    .collect();
                if let Some(cidr) = covering(&addrs) {
                    self.route_pod_cidr(there, cidr)?;
                }
            }
        }
        Ok(())
    }

    /// The `spec.nodeName` the pods wired to node namespace `netns` give,
    /// when they give exactly one.
    fn node_name_of(&self, cluster: &Cluster, netns: &str) -> Option<String> {
        let names: BTreeSet<&str> = cluster
            .pods
            .values()
            .filter(|p| {
                self.pods
                    .get(&p.key().to_string())
                    .is_some_and(|tp| tp.node_netns == netns)
            })
            .filter_map(|p| p.node.as_deref())
            .collect();
        match names.into_iter().collect::<Vec<_>>()[..] {
            [one] => Some(one.to_owned()),
            _ => None,
        }
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
}

// -------------------------------------------------------------- accessors --

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

    /// The first node's name: the `spec.nodeName` its pods give, when they
    /// all give one (an agent there is that node's).
    #[must_use]
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// The second node's namespace, with [`TestbedOptions::remote_node`].
    #[must_use]
    pub fn remote_netns(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// The addresses of node namespace `netns` (the first node's or the
    /// second's) on its links to the outside and to the other node: where
    /// its NodePorts are open. `v6`: IPv6 too.
    #[must_use]
    pub fn node_addresses(&self, netns: &str, v6: bool) -> Vec<IpAddr> {
        let mut addrs = Vec::new();
        if netns == self.node {
            addrs.push(IpAddr::V4(wiring::TRANSIT_NODE_V4));
            if self.remote.is_some() {
                addrs.push(IpAddr::V4(UPLINK_NODE_V4));
            }
            if v6 {
                addrs.push(IpAddr::V6(wiring::TRANSIT_NODE_V6));
                if self.remote.is_some() {
                    addrs.push(IpAddr::V6(UPLINK_NODE_V6));
                }
            }
        } else if self.remote.as_deref() == Some(netns) {
            addrs.push(IpAddr::V4(UPLINK_REMOTE_V4));
            if v6 {
                addrs.push(IpAddr::V6(UPLINK_REMOTE_V6));
            }
        }
        addrs
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

    /// kube-proxy's rules as installed in the node namespace, if any.
    #[must_use]
    pub fn kube_proxy_rules(&self) -> Option<&KubeProxyRules> {
        self.kube_proxy.as_ref()
    }

    /// The Service addresses kube-proxy's rules translate (reachable as
    /// `ext:` destinations).
    #[must_use]
    pub fn service_ips(&self) -> &[IpAddr] {
        &self.service_ips
    }

    /// The pods left out, and why.
    #[must_use]
    pub fn skipped(&self) -> &[SkippedPod] {
        &self.skipped
    }
}

/// Why the testbed leaves `pod` out, if it does.
fn skip_reason(pod: &Pod) -> Option<&'static str> {
    if pod.host_network {
        Some("uses the host network")
    } else if matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) {
        Some("has finished")
    } else if pod.ips.is_empty() {
        Some("has no address")
    } else {
        None
    }
}

/// The smallest prefix holding every address of `addrs` (one family).
fn covering(addrs: &[IpAddr]) -> Option<Prefix> {
    let first = *addrs.first()?;
    let bits = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let width: u32 = if first.is_ipv4() { 32 } else { 128 };
    let differ = addrs
        .iter()
        .fold(0u128, |acc, &a| acc | (bits(a) ^ bits(first)));
    let len = width - (128 - differ.leading_zeros()).min(width);
    Prefix::new(first, u8::try_from(len).ok()?)
}

/// The (protocol, port) pairs EndpointSlices give an endpoint at one of
/// `ips`.
fn slice_ports(cluster: &Cluster, ips: &[IpAddr]) -> Vec<(Protocol, u16)> {
    cluster
        .endpoint_slices
        .values()
        .filter(|s| s.endpoints.iter().any(|e| ips.contains(&e.address)))
        .flat_map(|s| s.ports.iter().filter_map(|p| Some((p.protocol, p.port?))))
        .collect()
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
