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
//! Everything goes through rtnetlink (`rtnl`: one socket per
//! call, no process spawned) in the calling thread's network namespace,
//! but for the one sysctl, a write under `/proc/sys`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use tracing::{debug, info, warn};

use super::AgentError;
use super::rtnl::{Family, LinkChange, LinkEntry, RouteEntry, Rtnl, RuleSpec, TABLE_MAIN};

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

/// Alias marking a host-port pair made by podfence.
pub const PAIR_ALIAS: &str = "podfence host port";

/// Every global address of this network namespace's interfaces: the
/// addresses this node's traffic to its pods may come from.
pub fn host_addresses() -> Result<Vec<IpAddr>, AgentError> {
    let mut addrs: Vec<IpAddr> = Rtnl::open()?
        .addresses()?
        .into_iter()
        .filter(|a| a.global)
        .map(|a| a.addr)
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Writes `value` to `/proc/sys/<key>` (of the calling thread's network
/// namespace).
fn sysctl(key: &str, value: &str) -> Result<(), AgentError> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| AgentError::Sysctl {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
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

/// A host route's destination: the address of a route with a full-length
/// prefix.
fn host_route_dst(route: &RouteEntry) -> Option<IpAddr> {
    let dst = route.dst?;
    (route.prefix_len == Family::of(dst).host_prefix_len()).then_some(dst)
}

impl From<LinkEntry> for Link {
    fn from(entry: LinkEntry) -> Self {
        Self {
            mac: entry.mac.unwrap_or_default(),
            rx_queues: entry.rx_queues.unwrap_or(1).max(1),
            mtu: entry.mtu.unwrap_or(1500),
            name: entry.name,
        }
    }
}

/// The interface `name`, or `None` when there is none.
fn link(rtnl: &mut Rtnl, name: &str) -> Result<Option<Link>, AgentError> {
    Ok(rtnl.link(name)?.map(Link::from))
}

/// Finds the interface behind each of `addrs` (the local pods' addresses)
/// from the main table's host routes, and the pods' MACs from the
/// neighbour table (or, failing that, from `known_macs`: what the CNI
/// reported). Routes through `host_if` (ours) are skipped, as are routes
/// via a gateway (not a directly attached pod) and those of another type
/// than unicast (blackhole, unreachable, …).
pub fn discover<S: std::hash::BuildHasher>(
    addrs: &[IpAddr],
    host_if: &str,
    known_macs: &HashMap<IpAddr, [u8; 6], S>,
) -> Result<Discovery, AgentError> {
    let mut rtnl = Rtnl::open()?;
    // One dump each of routes (per family), links and neighbours, whatever
    // the pod count.
    let links: HashMap<u32, Link> = rtnl
        .links()?
        .into_iter()
        .map(|entry| (entry.index, Link::from(entry)))
        .collect();
    let wanted: HashSet<IpAddr> = addrs.iter().copied().collect();
    let mut link_of: HashMap<IpAddr, (u32, &Link)> = HashMap::new();
    for family in Family::BOTH {
        for route in rtnl.routes(family, TABLE_MAIN)? {
            let (true, Some(oif), None) = (route.unicast, route.oif, route.gateway) else {
                continue;
            };
            let Some(addr) = host_route_dst(&route) else {
                continue;
            };
            let Some(link) = links.get(&oif) else {
                continue;
            };
            if link.name != host_if && wanted.contains(&addr) {
                link_of.insert(addr, (oif, link));
            }
        }
    }
    let mut mac_of: HashMap<(u32, IpAddr), [u8; 6]> = HashMap::new();
    for neighbour in rtnl.neighbours()? {
        // NOARP entries resolve nothing (and `ip neigh show` hides them).
        if let (false, Some(mac)) = (neighbour.noarp, neighbour.lladdr) {
            mac_of.insert((neighbour.ifindex, neighbour.dst), mac);
        }
    }
    let mut found = Discovery::default();
    for &addr in addrs {
        let Some(&(index, link)) = link_of.get(&addr) else {
            found.unrouted.push(addr);
            continue;
        };
        let dev = &link.name;
        let mac = mac_of
            .get(&(index, addr))
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
    let mut rtnl = Rtnl::open()?;
    let (created, made_now) = if let Some(existing) = rtnl.link(&config.host_if)? {
        let ours = existing.alias.as_deref() == Some(PAIR_ALIAS);
        if ours {
            info!(
                host = config.host_if,
                "taking over the host-port pair of an earlier run"
            );
        }
        (ours, false)
    } else {
        rtnl.add_veth(&config.host_if, &config.dp_if)?;
        info!(
            host = config.host_if,
            dp = config.dp_if,
            "created the host-port pair"
        );
        (true, true)
    };
    let configured = configure_host_pair(&mut rtnl, config, created, mtu);
    if configured.is_err() && made_now {
        // Made by this call and unusable: not left behind.
        let _ = rtnl.delete_link(&config.host_if);
    }
    configured
}

/// Has the kernel segment in software what it sends through `dev`
/// (`gso_max_segs 1`): for `pf-host` when `pf-dp`'s redirector runs in
/// generic mode, which would otherwise see TSO/GSO packets of up to 64 KB.
/// (Native XDP on a veth turns its peer's offload off by itself.)
pub fn segment_in_software(dev: &str) -> Result<(), AgentError> {
    Rtnl::open()?.set_link(
        dev,
        &LinkChange {
            gso_max_segs: Some(1),
            ..LinkChange::default()
        },
    )
}

/// Marks the pair as podfence's and sets it up (ARP off, one MAC, `mtu`, no
/// reverse-path filter on pf-dp, both ends up).
fn configure_host_pair(
    rtnl: &mut Rtnl,
    config: &PlumbingConfig,
    created: bool,
    mtu: u32,
) -> Result<HostPair, AgentError> {
    if created {
        rtnl.set_link(
            &config.host_if,
            &LinkChange {
                alias: Some(PAIR_ALIAS),
                ..LinkChange::default()
            },
        )?;
    }
    let missing = |name: &str| AgentError::NoInterface {
        name: name.to_owned(),
    };
    let host = link(rtnl, &config.host_if)?.ok_or_else(|| missing(&config.host_if))?;
    rtnl.set_link(
        &config.host_if,
        &LinkChange {
            arp: Some(false),
            ..LinkChange::default()
        },
    )?;
    // Both ends share one MAC: frames the kernel sends to pf-host (addressed
    // to pf-host's own MAC, ARP being off) are then for pf-dp too, so that a
    // redirector failing open can pass them to the kernel on pf-dp.
    rtnl.set_link(
        &config.dp_if,
        &LinkChange {
            address: Some(host.mac),
            ..LinkChange::default()
        },
    )?;
    sysctl(&format!("net/ipv4/conf/{}/rp_filter", config.dp_if), "0")?;
    for dev in [&config.host_if, &config.dp_if] {
        rtnl.set_link(
            dev,
            &LinkChange {
                mtu: Some(mtu),
                up: Some(true),
                ..LinkChange::default()
            },
        )?;
    }
    // Both as configured (the MTU set above).
    Ok(HostPair {
        host: link(rtnl, &config.host_if)?.ok_or_else(|| missing(&config.host_if))?,
        dp: link(rtnl, &config.dp_if)?.ok_or_else(|| missing(&config.dp_if))?,
        created,
    })
}

/// Our policy rules for `family`: frames the kernel takes in on `pf-dp`
/// (only when the redirector fails open) are routed by the main table;
/// everything else looks up our table first.
fn rules(config: &PlumbingConfig, family: Family) -> [RuleSpec<'_>; 2] {
    [
        RuleSpec {
            family,
            priority: config.priority,
            iif: Some(&config.dp_if),
            table: TABLE_MAIN,
        },
        RuleSpec {
            family,
            priority: config.priority + 1,
            iif: None,
            table: config.table,
        },
    ]
}

/// Deletes our rules and flushes our table, whatever run left them.
fn clear_routes(config: &PlumbingConfig) -> Result<(), AgentError> {
    let mut rtnl = Rtnl::open()?;
    for family in Family::BOTH {
        for rule in rules(config, family) {
            // Each deletion removes one match; a crashed run left at most a
            // few.
            for _ in 0..16 {
                if rtnl.delete_rule(&rule).is_err() {
                    break;
                }
            }
        }
        if let Err(e) = rtnl.flush_table(family, config.table) {
            debug!(error = %e, "flush of our routing table");
        }
    }
    Ok(())
}

/// Sends every address of `pods` to `pf-host`: one route per address in our
/// table, and the rules that look it up. What an earlier run left (an
/// agent that stopped with `--on-stop keep`, or crashed) is taken over in
/// place: routes are replaced, not flushed first, and rules already there
/// stay, so that no moment sends a pod's traffic past the datapath; routes
/// of addresses no longer local go afterwards.
pub fn adopt(config: &PlumbingConfig, pods: &[IpAddr]) -> Result<(), AgentError> {
    let mut rtnl = Rtnl::open()?;
    let left = table_routes_with(&mut rtnl, config)?;
    let host = host_index(&mut rtnl, config)?;
    for &addr in pods {
        route_with(&mut rtnl, config, host, addr)?;
    }
    let wanted: HashSet<IpAddr> = pods.iter().copied().collect();
    for addr in left.iter().filter(|a| !wanted.contains(a)) {
        unroute_with(&mut rtnl, config, *addr);
    }
    let mut families: Vec<Family> = Vec::new();
    for &addr in pods {
        if !families.contains(&Family::of(addr)) {
            families.push(Family::of(addr));
        }
    }
    for family in families {
        add_rules_with(&mut rtnl, config, family)?;
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
    table_routes_with(&mut Rtnl::open()?, config)
}

fn table_routes_with(rtnl: &mut Rtnl, config: &PlumbingConfig) -> Result<Vec<IpAddr>, AgentError> {
    let mut found = Vec::new();
    for family in Family::BOTH {
        // An absent table is an empty one.
        let routes = rtnl.routes(family, config.table)?;
        found.extend(routes.iter().filter_map(host_route_dst));
    }
    Ok(found)
}

/// Which of our two rules (the `iif pf-dp` one, the table one) are in
/// place for `family`.
fn rules_present(
    rtnl: &mut Rtnl,
    config: &PlumbingConfig,
    family: Family,
) -> Result<[bool; 2], AgentError> {
    let present = rtnl.rules(family)?;
    Ok(rules(config, family).map(|rule| present.iter().any(|r| rule.matches(r))))
}

/// `pf-host`'s interface index.
fn host_index(rtnl: &mut Rtnl, config: &PlumbingConfig) -> Result<u32, AgentError> {
    rtnl.link(&config.host_if)?
        .map(|link| link.index)
        .ok_or_else(|| AgentError::NoInterface {
            name: config.host_if.clone(),
        })
}

/// Routes one pod address through `pf-host` (in our table).
pub fn route(config: &PlumbingConfig, addr: IpAddr) -> Result<(), AgentError> {
    let mut rtnl = Rtnl::open()?;
    let host = host_index(&mut rtnl, config)?;
    route_with(&mut rtnl, config, host, addr)
}

fn route_with(
    rtnl: &mut Rtnl,
    config: &PlumbingConfig,
    host: u32,
    addr: IpAddr,
) -> Result<(), AgentError> {
    rtnl.replace_route(
        addr,
        Family::of(addr).host_prefix_len(),
        (host, &config.host_if),
        config.table,
    )
}

/// Hands one pod address back to the main table. An address without a
/// route in our table is not an error.
pub fn unroute(config: &PlumbingConfig, addr: IpAddr) {
    match Rtnl::open() {
        Ok(mut rtnl) => unroute_with(&mut rtnl, config, addr),
        Err(e) => debug!(error = %e, "route removal"),
    }
}

fn unroute_with(rtnl: &mut Rtnl, config: &PlumbingConfig, addr: IpAddr) {
    if let Err(e) = rtnl.delete_route(addr, Family::of(addr).host_prefix_len(), config.table) {
        debug!(error = %e, "route removal");
    }
}

/// Adds our rules for the family of `family_of`, those not in place yet.
pub fn add_rules(config: &PlumbingConfig, family_of: IpAddr) -> Result<(), AgentError> {
    add_rules_with(&mut Rtnl::open()?, config, Family::of(family_of))
}

fn add_rules_with(
    rtnl: &mut Rtnl,
    config: &PlumbingConfig,
    family: Family,
) -> Result<(), AgentError> {
    let present = rules_present(rtnl, config, family)?;
    for (rule, present) in rules(config, family).into_iter().zip(present) {
        if !present {
            rtnl.add_rule(&rule)?;
        }
    }
    Ok(())
}

/// Undoes [`adopt`]: the CNI's routes take over at once.
pub fn restore(config: &PlumbingConfig) {
    if let Err(e) = clear_routes(config) {
        warn!(error = %e, "pod routes could not be handed back to the main table");
        return;
    }
    info!("pod routes handed back to the kernel's main table");
}

/// Removes the host-port pair if it is ours ([`HostPair::created`]).
pub fn remove_pair(pair: &HostPair) -> Result<(), AgentError> {
    if pair.created {
        Rtnl::open()?.delete_link(&pair.host.name)?;
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

    fn route(dst: Option<&str>, prefix_len: u8) -> RouteEntry {
        RouteEntry {
            dst: dst.map(|d| d.parse().unwrap()),
            prefix_len,
            oif: Some(2),
            gateway: None,
            table: TABLE_MAIN,
            unicast: true,
        }
    }

    #[test]
    fn only_full_length_routes_are_host_routes() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(host_route_dst(&route(Some("10.0.0.1"), 32)), Some(v4));
        assert_eq!(host_route_dst(&route(Some("10.0.0.0"), 24)), None);
        assert_eq!(host_route_dst(&route(Some("fd00::1"), 128)), Some(v6));
        assert_eq!(host_route_dst(&route(Some("fd00::"), 64)), None);
        // A /32 of an IPv6 address is not a host route.
        assert_eq!(host_route_dst(&route(Some("fd00::1"), 32)), None);
        // The default route has no destination.
        assert_eq!(host_route_dst(&route(None, 0)), None);
    }

    #[test]
    fn our_rules_look_up_main_for_pf_dp_then_our_table() {
        let config = PlumbingConfig::default();
        let [fail_open, ours] = rules(&config, Family::V6);
        assert_eq!(
            (fail_open.priority, fail_open.iif, fail_open.table),
            (90, Some("pf-dp"), TABLE_MAIN)
        );
        assert_eq!((ours.priority, ours.iif, ours.table), (91, None, 7066));
        assert!(
            [fail_open, ours]
                .iter()
                .all(|rule| rule.family == Family::V6)
        );
    }
}
