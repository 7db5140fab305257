//! Wiring the namespaces: the node's link to the outside namespace, the
//! uplink between the two nodes, and each pod's veth, addresses, routes and
//! static neighbours.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::commands::{ip, sysctl};
use super::names::{NODE_OUT_IF, NODE_UPLINK_IF, OUT_NODE_IF, REMOTE_UPLINK_IF, mac};
use super::{Testbed, TestbedError, TestbedOptions, TestbedPod};
use podfence_datapath::Prefix;

/// Link-local IPv4 gateway of every pod, as the `ptp` plugin sets it up.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Link-local IPv6 gateway of every pod.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The node's address on the link to the outside namespace.
pub(super) const TRANSIT_NODE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 1);
const TRANSIT_OUT_V4: &str = "169.254.100.2";
/// The node's IPv6 address on the link to the outside namespace.
pub(super) const TRANSIT_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x6600, 0, 0, 0, 0, 0, 1);
const TRANSIT_OUT_V6: &str = "fd70:6600::2";
const TRANSIT_NODE_MAC: &str = "02:70:66:ff:ff:01";
const TRANSIT_OUT_MAC: &str = "02:70:66:ff:ff:02";

/// The first node's address on the uplink (kind's node network).
pub const UPLINK_NODE_V4: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// The second node's address on the uplink.
pub const UPLINK_REMOTE_V4: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
/// The first node's IPv6 address on the uplink.
pub const UPLINK_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, 2);
/// The second node's IPv6 address on the uplink.
pub const UPLINK_REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, 3);
const UPLINK_NODE_MAC: &str = "02:70:66:fe:fe:01";
const UPLINK_REMOTE_MAC: &str = "02:70:66:fe:fe:02";

/// Static neighbours on the node-outside link, both families.
fn transit_neighbours(node: &str, out: &str, v6: bool) -> Result<(), TestbedError> {
    // Static neighbours: no resolution delay on the first packet.
    let mut pairs = vec![(TRANSIT_NODE_V4.to_string(), TRANSIT_OUT_V4)];
    if v6 {
        pairs.push((TRANSIT_NODE_V6.to_string(), TRANSIT_OUT_V6));
    }
    for (node_addr, out_addr) in &pairs {
        let node_addr = node_addr.as_str();
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

/// A node namespace's loopback up, forwarding on and reverse-path
/// filtering off (`v6`: IPv6 forwarding too).
pub(super) fn forwarding_node(netns: &str, v6: bool) -> Result<(), TestbedError> {
    ip(netns, &["link", "set", "lo", "up"])?;
    sysctl(
        netns,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ],
    )?;
    if v6 {
        sysctl(netns, &[("net.ipv6.conf.all.forwarding", "1")])?;
    }
    Ok(())
}

impl Testbed {
    /// A host route for `addr` in the node towards the outside namespace,
    /// where a real node's default route would send it.
    pub(super) fn route_to_outside(&self, addr: IpAddr) -> Result<(), TestbedError> {
        let (cidr, via, fam) = match addr {
            IpAddr::V4(a) => (format!("{a}/32"), TRANSIT_OUT_V4, "-4"),
            IpAddr::V6(a) => (format!("{a}/128"), TRANSIT_OUT_V6, "-6"),
        };
        ip(
            &self.node,
            &[
                fam,
                "route",
                "replace",
                &cidr,
                "via",
                via,
                "dev",
                NODE_OUT_IF,
            ],
        )
        .map(|_| ())
    }

    pub(super) fn build_outside(
        &mut self,
        options: &TestbedOptions,
        v6: bool,
    ) -> Result<(), TestbedError> {
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
        let (gw4, gw6) = (TRANSIT_NODE_V4.to_string(), TRANSIT_NODE_V6.to_string());
        ip(&out, &["route", "add", "default", "via", &gw4])?;
        if v6 {
            ip(&out, &["-6", "route", "add", "default", "via", &gw6])?;
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

    /// The second node: its namespace `remote`, forwarding on, and the
    /// uplink `pf-node2` (172.18.0.2, fc00:f853:ccd:e793::2) in the first
    /// node to `pf-node1` (…3) in the second, with static neighbours. The
    /// second node's default route goes through the first (the outside
    /// namespace and the ClusterIPs' routes are there).
    pub(super) fn build_remote_node(&mut self, remote: &str, v6: bool) -> Result<(), TestbedError> {
        let node = self.node.clone();
        self.add_netns(remote)?;
        forwarding_node(remote, v6)?;
        ip(
            &node,
            &[
                "link",
                "add",
                NODE_UPLINK_IF,
                "address",
                UPLINK_NODE_MAC,
                "type",
                "veth",
                "peer",
                "name",
                REMOTE_UPLINK_IF,
                "address",
                UPLINK_REMOTE_MAC,
                "netns",
                remote,
            ],
        )?;
        let mut ends = vec![(
            IpAddr::V4(UPLINK_NODE_V4),
            IpAddr::V4(UPLINK_REMOTE_V4),
            "24",
        )];
        if v6 {
            ends.push((
                IpAddr::V6(UPLINK_NODE_V6),
                IpAddr::V6(UPLINK_REMOTE_V6),
                "64",
            ));
        }
        for (here, there, len) in &ends {
            for (ns, dev, addr, peer, peer_mac) in [
                (
                    node.as_str(),
                    NODE_UPLINK_IF,
                    here,
                    there,
                    UPLINK_REMOTE_MAC,
                ),
                (remote, REMOTE_UPLINK_IF, there, here, UPLINK_NODE_MAC),
            ] {
                let cidr = format!("{addr}/{len}");
                let mut add = vec!["addr", "add", &cidr, "dev", dev];
                if addr.is_ipv6() {
                    add.push("nodad");
                }
                ip(ns, &add)?;
                let peer = peer.to_string();
                ip(
                    ns,
                    &[
                        "neigh",
                        "add",
                        &peer,
                        "lladdr",
                        peer_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                )?;
            }
        }
        ip(&node, &["link", "set", NODE_UPLINK_IF, "up"])?;
        ip(remote, &["link", "set", REMOTE_UPLINK_IF, "up"])?;
        for (here, _, _) in &ends {
            let via = here.to_string();
            let fam = if here.is_ipv4() { "-4" } else { "-6" };
            ip(remote, &[fam, "route", "add", "default", "via", &via])?;
        }
        Ok(())
    }

    /// A node's pod CIDR routed via the other node's uplink address (as
    /// kindnet routes each node's podCIDR): `cidr` in namespace `netns`,
    /// towards the node on the other end of its uplink. Replaces a route
    /// to the same prefix (pods spread over the address space make it the
    /// default route; the second node has that one already).
    pub(super) fn route_pod_cidr(&self, netns: &str, cidr: Prefix) -> Result<(), TestbedError> {
        let to_remote = netns == self.node;
        let (via, dev) = match (cidr.network().is_ipv4(), to_remote) {
            (true, true) => (IpAddr::V4(UPLINK_REMOTE_V4), NODE_UPLINK_IF),
            (true, false) => (IpAddr::V4(UPLINK_NODE_V4), REMOTE_UPLINK_IF),
            (false, true) => (IpAddr::V6(UPLINK_REMOTE_V6), NODE_UPLINK_IF),
            (false, false) => (IpAddr::V6(UPLINK_NODE_V6), REMOTE_UPLINK_IF),
        };
        let fam = if via.is_ipv4() { "-4" } else { "-6" };
        let (cidr, via) = (cidr.to_string(), via.to_string());
        ip(
            netns,
            &[fam, "route", "replace", &cidr, "via", &via, "dev", dev],
        )
        .map(|_| ())
    }

    /// A pod's namespace and veth, wired like `ptp` to the node namespace
    /// `node`, both ends with the testbed's MTU when it has one.
    pub(super) fn build_pod(
        &mut self,
        node: &str,
        pod: &TestbedPod,
        index: usize,
        queues: u32,
    ) -> Result<(), TestbedError> {
        let node = node.to_owned();
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
        if let Some(mtu) = self.mtu {
            let mtu = mtu.to_string();
            ip(ns, &["link", "set", "eth0", "mtu", &mtu])?;
            ip(&node, &["link", "set", hv, "mtu", &mtu])?;
        }
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
}
