//! The node's plumbing: which interface each local pod is behind, and the
//! routes that make the kernel hand every packet for a local pod to the
//! datapath.
//!
//! Pods are found the way the `ptp` CNI plugin, kindnet and Calico leave
//! them: a /32 or /128 route per pod address in the main table, pointing at
//! the pod's host-side veth. Those routes are never touched. Adoption adds,
//! beside them:
//!
//! - the host-port pair `pf-host`/`pf-dp` (created if missing) with ARP off on
//!   `pf-host`, so the kernel addresses frames for pods to `pf-host`'s own
//!   MAC without neighbour resolution;
//! - a routing table of our own (`table`) holding one route per adopted pod
//!   address via `pf-host`, and a policy rule per family, at `priority + 1`
//!   (before the main table's 32766), that looks it up. A destination
//!   without a route in our table falls through to the main table.
//! - for failing open: `pf-dp` gets `pf-host`'s MAC, so that frames the
//!   kernel sends to `pf-host` are addressed to `pf-dp` too, and a rule at
//!   `priority` routes what the kernel takes in on `pf-dp` by the main
//!   table, straight to the pods. Only a redirector with no socket and the
//!   pass action lets frames reach the kernel there.
//!
//! Restoring deletes the rules and the table's routes, and then the pair
//! (when it is ours); the CNI's routes take over again. An agent that
//! stops with `--on-stop keep`, or crashes, leaves rules, routes and pair in
//! place, so pod traffic keeps going to `pf-host` where the redirector
//! drops it (fail closed), and the next start takes them over in place
//! ([`adopt`] replaces, never flushes first) with the original routes
//! untouched in the main table.
//!
//! Everything goes through `ip` (iproute2) in the
//! calling thread's network namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::process::Command;

use serde::Deserialize;
use tracing::{debug, info, warn};

use super::AgentError;

/// Where the plumbing goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlumbingConfig {
    /// Kernel side of the host-port pair.
    pub host_if: String,
    /// Datapath side of the host-port pair.
    pub dp_if: String,
    /// Routing table for the adopted pod routes.
    pub table: u32,
    /// Priority of the rules that look that table up.
    pub priority: u32,
}

impl Default for PlumbingConfig {
    fn default() -> Self {
        Self {
            host_if: "pf-host".into(),
            dp_if: "pf-dp".into(),
            table: 7066,
            priority: 90,
        }
    }
}

/// A network interface as the datapath needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Receive queues.
    pub rx_queues: u32,
    /// Its MTU (largest IP packet, Ethernet header not counted).
    pub mtu: u32,
}

/// A local pod's interface, with the pod addresses behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// The host-side veth.
    pub link: Link,
    /// Pod addresses routed to it, each with the pod's MAC when the
    /// kernel's neighbour table knows it.
    pub addrs: Vec<(IpAddr, Option<[u8; 6]>)>,
}

/// The host-port pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPair {
    /// `pf-host`.
    pub host: Link,
    /// `pf-dp`.
    pub dp: Link,
    /// Whether it is ours (made by this run or by an earlier one that
    /// crashed; marked with the alias [`PAIR_ALIAS`]) and goes on restore.
    pub created: bool,
}

/// What [`discover`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Pod interfaces, by name.
    pub pods: BTreeMap<String, PodLink>,
    /// Local pod addresses without a host route of their own.
    pub unrouted: Vec<IpAddr>,
}

/// Runs `program args`, returning standard output.
fn run(program: &str, args: &[&str]) -> Result<String, AgentError> {
    debug!(command = %format!("{program} {}", args.join(" ")), "plumbing");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| AgentError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(AgentError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<T, AgentError> {
    let mut all = vec!["-json"];
    all.extend_from_slice(args);
    let text = run("ip", &all)?;
    // `ip -json` prints nothing at all for an empty list in some versions.
    let text = if text.trim().is_empty() { "[]" } else { &text };
    serde_json::from_str(text).map_err(|e| AgentError::Parse {
        command: format!("ip {}", all.join(" ")),
        message: e.to_string(),
    })
}

#[derive(Deserialize)]
struct RouteJson {
    dst: String,
    dev: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: String,
    dev: Option<String>,
    lladdr: Option<String>,
}

/// Alias marking a host-port pair made by podfence.
pub const PAIR_ALIAS: &str = "podfence host port";

#[derive(Deserialize)]
struct LinkJson {
    ifname: String,
    ifalias: Option<String>,
    address: Option<String>,
    num_rx_queues: Option<u32>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct AddrJson {
    #[serde(default)]
    addr_info: Vec<AddrInfoJson>,
}

#[derive(Deserialize)]
struct AddrInfoJson {
    local: Option<String>,
    scope: Option<String>,
}

/// Every global address of this network namespace's interfaces: the
/// addresses this node's traffic to its pods may come from.
pub fn host_addresses() -> Result<Vec<IpAddr>, AgentError> {
    let links: Vec<AddrJson> = ip_json(&["addr", "show"])?;
    let mut addrs: Vec<IpAddr> = links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter(|a| a.scope.as_deref() == Some("global"))
        .filter_map(|a| a.local.as_deref()?.parse().ok())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// Writes `value` to `/proc/sys/<key>` (of the calling thread's network
/// namespace).
fn sysctl(key: &str, value: &str) -> Result<(), AgentError> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|e| AgentError::Command {
        command: format!("sysctl {key}={value}"),
        stderr: e.to_string(),
    })
}

pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A host route's destination: a bare address, or one with a full-length
/// prefix.
fn host_route_dst(dst: &str) -> Option<IpAddr> {
    match dst.split_once('/') {
        None => dst.parse().ok(),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().ok()?;
            let full = if addr.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(addr)
        }
    }
}

fn link_json(name: &str) -> Result<Option<LinkJson>, AgentError> {
    match ip_json::<Vec<LinkJson>>(&["-d", "link", "show", "dev", name]) {
        Ok(links) => Ok(links.into_iter().next()),
        Err(AgentError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The interface `name`, or `None` when there is none.
fn link(name: &str) -> Result<Option<Link>, AgentError> {
    Ok(link_json(name)?.map(|l| Link {
        mac: l.address.as_deref().and_then(parse_mac).unwrap_or_default(),
        rx_queues: l.num_rx_queues.unwrap_or(1).max(1),
        mtu: l.mtu.unwrap_or(1500),
        name: l.ifname,
    }))
}

/// Finds the interface behind each of `addrs` (the local pods' addresses)
/// from the main table's host routes, and the pods' MACs from the
/// neighbour table (or, failing that, from `known_macs`: what the CNI
/// reported). Routes through `host_if` (ours) are skipped, as are routes
/// via a gateway (not a directly attached pod).
pub fn discover<S: std::hash::BuildHasher>(
    addrs: &[IpAddr],
    host_if: &str,
    known_macs: &HashMap<IpAddr, [u8; 6], S>,
) -> Result<Discovery, AgentError> {
    let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
    let mut dev_of: HashMap<IpAddr, String> = HashMap::new();
    for family in ["-4", "-6"] {
        let routes: Vec<RouteJson> = ip_json(&[family, "route", "show", "table", "main"])?;
        for r in routes {
            let (Some(dev), None) = (r.dev, r.gateway) else {
                continue;
            };
            let Some(addr) = host_route_dst(&r.dst) else {
                continue;
            };
            if dev != host_if && wanted.contains(&addr) {
                dev_of.insert(addr, dev);
            }
        }
    }
    // One listing of links and one of neighbours, whatever the pod count.
    let links: HashMap<String, Link> = ip_json::<Vec<LinkJson>>(&["-d", "link", "show"])?
        .into_iter()
        .map(|l| {
            let link = Link {
                mac: l.address.as_deref().and_then(parse_mac).unwrap_or_default(),
                rx_queues: l.num_rx_queues.unwrap_or(1).max(1),
                mtu: l.mtu.unwrap_or(1500),
                name: l.ifname,
            };
            (link.name.clone(), link)
        })
        .collect();
    let mut mac_of: HashMap<(String, IpAddr), [u8; 6]> = HashMap::new();
    for n in ip_json::<Vec<NeighJson>>(&["neigh", "show"])? {
        if let (Some(dev), Ok(ip), Some(mac)) = (
            n.dev,
            n.dst.parse::<IpAddr>(),
            n.lladdr.as_deref().and_then(parse_mac),
        ) {
            mac_of.insert((dev, ip), mac);
        }
    }
    let mut found = Discovery::default();
    for &addr in addrs {
        let Some((dev, link)) = dev_of.get(&addr).and_then(|d| Some((d, links.get(d)?))) else {
            found.unrouted.push(addr);
            continue;
        };
        let mac = mac_of
            .get(&(dev.clone(), addr))
            .or_else(|| known_macs.get(&addr))
            .copied();
        if mac.is_none() {
            warn!(%addr, dev, "no neighbour entry for the pod address: the datapath cannot reach it until the pod's MAC is known");
        }
        found
            .pods
            .entry(dev.clone())
            .or_insert_with(|| PodLink {
                link: link.clone(),
                addrs: Vec::new(),
            })
            .addrs
            .push((addr, mac));
    }
    Ok(found)
}

/// Makes sure the host-port pair exists and is up, with ARP off on
/// `pf-host`, one MAC on both ends and `mtu` on both.
pub fn host_pair(config: &PlumbingConfig, mtu: u32) -> Result<HostPair, AgentError> {
    let (created, made_now) = if let Some(existing) = link_json(&config.host_if)? {
        let ours = existing.ifalias.as_deref() == Some(PAIR_ALIAS);
        if ours {
            info!(
                host = config.host_if,
                "taking over the host-port pair of an earlier run"
            );
        }
        (ours, false)
    } else {
        run(
            "ip",
            &[
                "link",
                "add",
                &config.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &config.dp_if,
            ],
        )?;
        info!(
            host = config.host_if,
            dp = config.dp_if,
            "created the host-port pair"
        );
        (true, true)
    };
    let configured = configure_host_pair(config, created, mtu);
    if configured.is_err() && made_now {
        // Made by this call and unusable: not left behind.
        let _ = run("ip", &["link", "del", &config.host_if]);
    }
    configured
}

/// Has the kernel segment in software what it sends through `dev`
/// (`gso_max_segs 1`): for `pf-host` when `pf-dp`'s redirector runs in
/// generic mode, which would otherwise see TSO/GSO packets of up to 64 KB.
/// (Native XDP on a veth turns its peer's offload off by itself.)
pub fn segment_in_software(dev: &str) -> Result<(), AgentError> {
    run("ip", &["link", "set", dev, "gso_max_segs", "1"]).map(|_| ())
}

/// Marks the pair as podfence's and sets it up (ARP off, one MAC, `mtu`, no
/// reverse-path filter on pf-dp, both ends up).
fn configure_host_pair(
    config: &PlumbingConfig,
    created: bool,
    mtu: u32,
) -> Result<HostPair, AgentError> {
    if created {
        run("ip", &["link", "set", &config.host_if, "alias", PAIR_ALIAS])?;
    }
    let missing = |name: &str| AgentError::NoInterface {
        name: name.to_owned(),
    };
    let host = link(&config.host_if)?.ok_or_else(|| missing(&config.host_if))?;
    run("ip", &["link", "set", &config.host_if, "arp", "off"])?;
    // Both ends share one MAC: frames the kernel sends to pf-host (addressed
    // to pf-host's own MAC, ARP being off) are then for pf-dp too, so that a
    // redirector failing open can pass them to the kernel on pf-dp.
    run(
        "ip",
        &[
            "link",
            "set",
            &config.dp_if,
            "address",
            &format_mac(host.mac),
        ],
    )?;
    sysctl(&format!("net/ipv4/conf/{}/rp_filter", config.dp_if), "0")?;
    let mtu = mtu.to_string();
    for dev in [&config.host_if, &config.dp_if] {
        run("ip", &["link", "set", dev, "mtu", &mtu, "up"])?;
    }
    Ok(HostPair {
        host,
        dp: link(&config.dp_if)?.ok_or_else(|| missing(&config.dp_if))?,
        created,
    })
}

fn family_flag(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "-4" } else { "-6" }
}

/// Our policy rules, per family: frames the kernel takes in on `pf-dp`
/// (only when the redirector fails open) are routed by the main table;
/// everything else looks up our table first.
fn rules(config: &PlumbingConfig) -> [Vec<String>; 2] {
    let (table, priority) = (config.table, config.priority);
    [
        vec![
            "priority".into(),
            priority.to_string(),
            "iif".into(),
            config.dp_if.clone(),
            "lookup".into(),
            "main".into(),
        ],
        vec![
            "priority".into(),
            (priority + 1).to_string(),
            "lookup".into(),
            table.to_string(),
        ],
    ]
}

/// Deletes our rules and flushes our table, whatever run left them.
fn clear_routes(config: &PlumbingConfig) {
    let table = config.table.to_string();
    for family in ["-4", "-6"] {
        for rule in rules(config) {
            // Each `ip rule del` removes one match; a crashed run left at
            // most a few.
            let mut args = vec![family, "rule", "del"];
            args.extend(rule.iter().map(String::as_str));
            for _ in 0..16 {
                if run("ip", &args).is_err() {
                    break;
                }
            }
        }
        if let Err(e) = run("ip", &[family, "route", "flush", "table", &table]) {
            // An empty or absent table is not an error worth reporting.
            debug!(error = %e, "flush of our routing table");
        }
    }
}

/// Sends every address of `pods` to `pf-host`: one route per address in our
/// table, and the rules that look it up. What an earlier run left (an
/// agent that stopped with `--on-stop keep`, or crashed) is taken over in
/// place: routes are replaced, not flushed first, and rules already there
/// stay, so that no moment sends a pod's traffic past the datapath; routes
/// of addresses no longer local go afterwards.
pub fn adopt(config: &PlumbingConfig, pods: &[IpAddr]) -> Result<(), AgentError> {
    let left = table_routes(config)?;
    for &addr in pods {
        route(config, addr)?;
    }
    let wanted: HashSet<IpAddr> = pods.iter().copied().collect();
    for addr in left.iter().filter(|a| !wanted.contains(a)) {
        unroute(config, *addr);
    }
    let mut families: Vec<IpAddr> = Vec::new();
    for &addr in pods {
        if !families.iter().any(|f| f.is_ipv4() == addr.is_ipv4()) {
            families.push(addr);
        }
    }
    for family in families {
        add_rules(config, family)?;
    }
    if !left.is_empty() {
        info!(
            left = left.len(),
            "took over the pod routes an earlier run left"
        );
    }
    info!(
        addresses = pods.len(),
        table = config.table,
        "pod addresses routed through the datapath"
    );
    Ok(())
}

/// The pod addresses routed in our table (left by an earlier run).
pub fn table_routes(config: &PlumbingConfig) -> Result<Vec<IpAddr>, AgentError> {
    let table = config.table.to_string();
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        let routes: Vec<RouteJson> = match ip_json(&[family, "route", "show", "table", &table]) {
            Ok(routes) => routes,
            // An absent table is an empty one.
            Err(AgentError::Command { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        found.extend(routes.iter().filter_map(|r| host_route_dst(&r.dst)));
    }
    Ok(found)
}

#[derive(Deserialize)]
struct RuleJson {
    priority: Option<u32>,
    iif: Option<String>,
    table: Option<String>,
}

/// Which of our two rules (the `iif pf-dp` one, the table one) are in
/// place for the family of `family_of`.
fn rules_present(config: &PlumbingConfig, family_of: IpAddr) -> Result<[bool; 2], AgentError> {
    let rules: Vec<RuleJson> = ip_json(&[family_flag(family_of), "rule", "show"])?;
    let table = config.table.to_string();
    let has = |priority: u32, iif: Option<&str>, lookup: &str| {
        rules.iter().any(|r| {
            r.priority == Some(priority)
                && r.iif.as_deref() == iif
                && r.table.as_deref() == Some(lookup)
        })
    };
    Ok([
        has(config.priority, Some(&config.dp_if), "main"),
        has(config.priority + 1, None, &table),
    ])
}

fn host_prefix(addr: IpAddr) -> String {
    if addr.is_ipv4() {
        format!("{addr}/32")
    } else {
        format!("{addr}/128")
    }
}

/// Routes one pod address through `pf-host` (in our table).
pub fn route(config: &PlumbingConfig, addr: IpAddr) -> Result<(), AgentError> {
    let table = config.table.to_string();
    let dst = host_prefix(addr);
    let args = [
        family_flag(addr),
        "route",
        "replace",
        &dst,
        "dev",
        &config.host_if,
        "table",
        &table,
    ];
    run("ip", &args).map(drop)
}

/// Hands one pod address back to the main table. An address without a
/// route in our table is not an error.
pub fn unroute(config: &PlumbingConfig, addr: IpAddr) {
    let table = config.table.to_string();
    let dst = host_prefix(addr);
    if let Err(e) = run(
        "ip",
        &[family_flag(addr), "route", "del", &dst, "table", &table],
    ) {
        debug!(error = %e, "route removal");
    }
}

/// Adds our rules for the family of `family_of`, those not in place yet.
pub fn add_rules(config: &PlumbingConfig, family_of: IpAddr) -> Result<(), AgentError> {
    let present = rules_present(config, family_of)?;
    for (rule, present) in rules(config).into_iter().zip(present) {
        if present {
            continue;
        }
        let mut args = vec![family_flag(family_of), "rule", "add"];
        args.extend(rule.iter().map(String::as_str));
        run("ip", &args)?;
    }
    Ok(())
}

/// Undoes [`adopt`]: the CNI's routes take over at once.
pub fn restore(config: &PlumbingConfig) {
    clear_routes(config);
    info!("pod routes handed back to the kernel's main table");
}

/// Removes the host-port pair if it is ours ([`HostPair::created`]).
pub fn remove_pair(pair: &HostPair) -> Result<(), AgentError> {
    if pair.created {
        run("ip", &["link", "del", &pair.host.name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("02:50:66:00:00:0a"),
            Some([2, 0x50, 0x66, 0, 0, 10])
        );
        assert_eq!(parse_mac("02:50:66:00:00"), None);
        assert_eq!(parse_mac("02:50:66:00:00:0a:01"), None);
        assert_eq!(parse_mac("zz:50:66:00:00:0a"), None);
    }

    #[test]
    fn only_full_length_routes_are_host_routes() {
        assert_eq!(
            host_route_dst("10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            host_route_dst("10.0.0.1/32"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(host_route_dst("10.0.0.0/24"), None);
        assert_eq!(host_route_dst("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(host_route_dst("fd00::/64"), None);
        assert_eq!(
            host_route_dst("fd00::1/128"),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(host_route_dst("default"), None);
    }
}
