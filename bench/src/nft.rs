//! The same policy as nftables rules with conntrack, the way iptables and
//! nftables enforcers do it: generated from the compiled tables that
//! podfence enforces, so that both paths enforce exactly the same verdicts.
//!
//! - **Peers** are the tables' identities. The IPv4 space is cut at every
//!   pod address and every `ipBlock` boundary of the cluster's policies;
//!   each piece resolves (through [`Tables::peer_v4`], as the datapath
//!   resolves a packet's addresses) to one identity, and every identity a
//!   rule names gets a named interval set of its pieces.
//! - **Rules**: per local pod and isolated direction, a chain with one rule
//!   per allowed identity and protocol (`ip saddr @id_7 tcp dport { 5201,
//!   30000-32767 } return`), then `drop`. What an identity is allowed is
//!   read from the classifier itself ([`Tables::decide`] at every port
//!   boundary of the group's rules), so a rule is exactly the compiled
//!   allow entry (plus the broad sets the identity is in).
//! - **Conntrack**: the `forward` hook accepts `established,related` first.
//!   With [`NftStyle::VerdictCache`] an allowed connection is also marked
//!   (`ct mark`) and its later packets accepted on the mark, so every flow
//!   walks the rules once, as every podfence flow is classified once. With
//!   [`NftStyle::EstablishedOnly`] only conntrack's own states are used:
//!   a flow that has seen no reply (one-way traffic such as the benchmark's)
//!   stays `new` and walks the rules on every packet, which is how
//!   iptables-style enforcers (`-m conntrack --ctstate
//!   RELATED,ESTABLISHED -j ACCEPT`, then the policy chains) behave.
//!
//! Node addresses, which NetworkPolicy never blocks towards their own pods,
//! need no rule: node traffic does not cross the `forward` hook. IPv6 is not
//! generated (the benchmark's traffic is IPv4).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use podfence_control::compile::Locality;
use podfence_control::index::Cluster;
use podfence_control::model::Peer;
use podfence_datapath::tables::{Enforcement, GroupId, IdentityId, PortRule, ResolvedPeer};
use podfence_datapath::wire::ip_proto;
use podfence_datapath::{IpProtocol, Prefix, Tables};

/// The table the benchmark installs.
pub const TABLE: &str = "podfence_bench";

/// How allowed connections are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftStyle {
    /// `ct mark`: each flow walks the rules once (the fair comparison).
    VerdictCache,
    /// `ct state established,related` only: one-way flows walk the rules on
    /// every packet.
    EstablishedOnly,
}

/// A generated ruleset.
#[derive(Clone, Debug)]
pub struct Ruleset {
    /// `nft -f` input.
    pub text: String,
    /// Chains: name, rules (the final drop included).
    pub chains: Vec<(String, usize)>,
    /// Named sets.
    pub sets: usize,
    /// Set elements over all sets.
    pub elements: usize,
    /// Where the rule that allows the `deep` peer sits: chain, position
    /// (1-based), rules in the chain.
    pub deep: Vec<(String, usize, usize)>,
}

/// What a peer identity may reach (or be reached on).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// Every protocol and port.
    Any,
    /// Per protocol, port ranges.
    Ports(Vec<(u8, Vec<(u16, u16)>)>),
}

const PROTOCOLS: [(u8, &str); 3] = [
    (ip_proto::TCP, "tcp"),
    (ip_proto::UDP, "udp"),
    (ip_proto::SCTP, "sctp"),
];

/// The identity of every piece of the IPv4 space: sorted, disjoint,
/// covering `[first, last]` pieces.
fn identity_pieces(cluster: &Cluster, tables: &Tables) -> Vec<(u32, u32, IdentityId)> {
    let mut cuts: BTreeSet<u64> = BTreeSet::from([0, 1 << 32]);
    for pod in cluster.pods.values() {
        for ip in &pod.ips {
            if let IpAddr::V4(a) = ip {
                let a = u64::from(u32::from(*a));
                cuts.insert(a);
                cuts.insert(a + 1);
            }
        }
    }
    for policy in cluster.policies.values() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for peer in &rule.peers {
                if let Peer::IpBlock(block) = peer {
                    for prefix in std::iter::once(&block.cidr).chain(&block.except) {
                        if let Prefix::V4(c) = prefix {
                            cuts.insert(u64::from(c.first()));
                            cuts.insert(u64::from(c.last()) + 1);
                        }
                    }
                }
            }
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut pieces: Vec<(u32, u32, IdentityId)> = Vec::with_capacity(cuts.len());
    for w in cuts.windows(2) {
        let (first, last) = (w[0] as u32, (w[1] - 1) as u32);
        let identity = tables.peer_v4(first).identity;
        match pieces.last_mut() {
            Some(p) if p.2 == identity && u64::from(p.1) + 1 == u64::from(first) => p.1 = last,
            _ => pieces.push((first, last, identity)),
        }
    }
    pieces
}

/// The direction of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Egress,
    Ingress,
}

/// What `identity` is allowed by the group that isolates `local` on `side`.
fn allowed(
    tables: &Tables,
    local: ResolvedPeer,
    side: Side,
    group: GroupId,
    identity: IdentityId,
) -> Option<Allowed> {
    let other = ResolvedPeer {
        identity,
        pod: None,
        node: None,
    };
    let passes = |protocol: u8, port: u16| {
        let p = IpProtocol(protocol);
        match side {
            Side::Egress => tables.decide(local, other, p, port).egress.is_allowed(),
            Side::Ingress => tables.decide(other, local, p, port).ingress.is_allowed(),
        }
    };
    // Only a rule without ports allows a protocol that has none (ICMP).
    if passes(ip_proto::ICMP, 0) {
        return Some(Allowed::Any);
    }
    let mut rules: Vec<PortRule> = tables
        .allowed_ports(group, identity)
        .map(<[PortRule]>::to_vec)
        .unwrap_or_default();
    for &(_, set) in tables.broad_rules(group) {
        rules.extend_from_slice(tables.port_set(set));
    }
    let mut out = Vec::new();
    for (proto, _) in PROTOCOLS {
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0, 1 << 16]);
        for r in rules.iter().filter(|r| r.protocol == proto) {
            cuts.insert(u32::from(r.first));
            cuts.insert(u32::from(r.last) + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for w in cuts.windows(2) {
            let (first, last) = (w[0] as u16, (w[1] - 1) as u16);
            if passes(proto, first) {
                match ranges.last_mut() {
                    Some(r) if u32::from(r.1) + 1 == u32::from(first) => r.1 = last,
                    _ => ranges.push((first, last)),
                }
            }
        }
        if !ranges.is_empty() {
            out.push((proto, ranges));
        }
    }
    (!out.is_empty()).then_some(Allowed::Ports(out))
}

/// The peers allowed by `group` on `side` of `local`, grouped by what they
/// are allowed: identities that get the same ports share one rule (and one
/// set), so there are as many rules as distinct port sets, in order of
/// their first identity; the `deep` peer's class goes last.
fn classes<'a>(
    tables: &Tables,
    local: ResolvedPeer,
    side: Side,
    group: GroupId,
    identities: impl Iterator<Item = &'a IdentityId>,
    deep: Option<IdentityId>,
) -> Vec<(Allowed, Vec<IdentityId>)> {
    let mut classes: Vec<(Allowed, Vec<IdentityId>)> = Vec::new();
    for &id in identities {
        let Some(allowed) = allowed(tables, local, side, group, id) else {
            continue;
        };
        match classes.iter_mut().find(|c| c.0 == allowed) {
            Some(c) => c.1.push(id),
            None => classes.push((allowed, vec![id])),
        }
    }
    if let Some(deep) = deep
        && let Some(at) = classes.iter().position(|c| c.1.contains(&deep))
    {
        let c = classes.remove(at);
        classes.push(c);
    }
    classes
}

fn ports_text(ranges: &[(u16, u16)]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// Generates the ruleset for the local pods of `locality`. `deep`: a peer
/// address whose rules go last in every chain (to measure traffic allowed
/// by a rule deep in the table). `mark`: the `ct mark` value of
/// [`NftStyle::VerdictCache`] (a new one per installation, so that
/// conntrack entries of an earlier one do not count).
#[must_use]
pub fn ruleset(
    cluster: &Cluster,
    tables: &Tables,
    locality: &Locality,
    style: NftStyle,
    deep: Option<Ipv4Addr>,
    mark: u32,
) -> Ruleset {
    let pieces = identity_pieces(cluster, tables);
    let deep_identity = deep.map(|a| tables.peer_v4(u32::from(a)).identity);
    let mut by_identity: BTreeMap<IdentityId, Vec<(u32, u32)>> = BTreeMap::new();
    for &(a, b, id) in &pieces {
        by_identity.entry(id).or_default().push((a, b));
    }
    let mut sets: Vec<(String, Vec<(u32, u32)>)> = Vec::new();
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut jumps: Vec<String> = Vec::new();
    let mut deep_at = Vec::new();
    let mut locals: Vec<(String, Ipv4Addr)> = cluster
        .pods
        .values()
        .filter(|p| p.is_policy_endpoint() && locality.includes(p))
        .filter_map(|p| crate::traffic::first_v4(&p.ips).map(|a| (p.key().to_string(), a)))
        .collect();
    locals.sort();
    for (i, (key, addr)) in locals.iter().enumerate() {
        let local = tables.peer_v4(u32::from(*addr));
        let Some(pod) = local.pod else { continue };
        for (side, enforcement, prefix, field) in [
            (Side::Egress, pod.egress, "eg", "daddr"),
            (Side::Ingress, pod.ingress, "in", "saddr"),
        ] {
            let Enforcement::Isolated(group) = enforcement else {
                continue;
            };
            let name = format!("{prefix}_{i}");
            let classes = classes(
                tables,
                local,
                side,
                group,
                by_identity.keys(),
                deep_identity,
            );
            let mut rules = Vec::new();
            for (k, (allowed, ids)) in classes.iter().enumerate() {
                let set = format!("{name}_{k}");
                let mut pieces: Vec<(u32, u32)> = ids
                    .iter()
                    .flat_map(|id| by_identity[id].iter().copied())
                    .collect();
                pieces.sort_unstable();
                let mut merged: Vec<(u32, u32)> = Vec::with_capacity(pieces.len());
                for (a, b) in pieces {
                    match merged.last_mut() {
                        Some(m) if u64::from(m.1) + 1 == u64::from(a) => m.1 = b,
                        _ => merged.push((a, b)),
                    }
                }
                sets.push((set.clone(), merged));
                let first_rule = rules.len() + 1;
                match allowed {
                    Allowed::Any => rules.push(format!("ip {field} @{set} return")),
                    Allowed::Ports(per_proto) => {
                        for (proto, ranges) in per_proto {
                            let pname = PROTOCOLS
                                .iter()
                                .find(|p| p.0 == *proto)
                                .map_or("tcp", |p| p.1);
                            rules.push(format!(
                                "ip {field} @{set} {pname} dport {} return",
                                ports_text(ranges)
                            ));
                        }
                    }
                }
                if deep_identity.is_some_and(|d| ids.contains(&d)) {
                    deep_at.push((name.clone(), first_rule, 0));
                }
            }
            rules.push(format!("counter name \"denied\" drop  # {key} {side:?}"));
            for d in deep_at.iter_mut().filter(|d| d.0 == name) {
                d.2 = rules.len();
            }
            let jump_field = if side == Side::Egress {
                "saddr"
            } else {
                "daddr"
            };
            jumps.push(format!("ip {jump_field} {addr} jump {name}"));
            chains.push((name, rules));
        }
    }
    let (text, elements) = render(&sets, &chains, &jumps, style, mark);
    Ruleset {
        text,
        chains: chains.iter().map(|(n, r)| (n.clone(), r.len())).collect(),
        sets: sets.len(),
        elements,
        deep: deep_at,
    }
}

/// The `nft -f` text of the table, and the number of set elements.
fn render(
    sets: &[(String, Vec<(u32, u32)>)],
    chains: &[(String, Vec<String>)],
    jumps: &[String],
    style: NftStyle,
    mark: u32,
) -> (String, usize) {
    let mut text = String::new();
    let _ = writeln!(text, "table inet {TABLE} {{");
    let _ = writeln!(text, "  counter denied {{ }}");
    let mut elements = 0;
    for (set, pieces) in sets {
        let items: Vec<String> = pieces
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    Ipv4Addr::from(a).to_string()
                } else {
                    format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
                }
            })
            .collect();
        elements += items.len();
        let _ = writeln!(
            text,
            "  set {set} {{\n    type ipv4_addr; flags interval;\n    elements = {{ {} }}\n  }}",
            items.join(", ")
        );
    }
    for (name, rules) in chains {
        let _ = writeln!(text, "  chain {name} {{");
        for r in rules {
            let _ = writeln!(text, "    {r}");
        }
        let _ = writeln!(text, "  }}");
    }
    let _ = writeln!(text, "  chain forward {{");
    let _ = writeln!(
        text,
        "    type filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(text, "    ct state established,related counter accept");
    if style == NftStyle::VerdictCache {
        let _ = writeln!(text, "    ct mark {mark:#010x} counter accept");
    }
    for j in jumps {
        let _ = writeln!(text, "    {j}");
    }
    if style == NftStyle::VerdictCache {
        let _ = writeln!(text, "    counter ct mark set {mark:#010x}");
    }
    let _ = writeln!(text, "  }}");
    let _ = writeln!(text, "}}");
    (text, elements)
}

/// Runs `nft` in network namespace `netns` with `stdin` as input.
pub(crate) fn nft(netns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "nft"]).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot run nft: {e} (install nftables: `apt-get install nftables`, or scripts/install-deps)")
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let head: String = err.lines().take(6).collect::<Vec<_>>().join("\n");
        return Err(format!("nft {}: {head}", args.join(" ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `nft` can be run.
#[must_use]
pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The benchmark's table installed in a namespace; deleted on drop.
#[derive(Debug)]
pub struct Installed {
    netns: String,
}

impl Installed {
    /// Installs `ruleset` in `netns` (replacing a table of the same name).
    pub fn install(netns: &str, ruleset: &Ruleset) -> Result<Self, String> {
        let _ = nft(netns, &["delete", "table", "inet", TABLE], None);
        nft(netns, &["-f", "-"], Some(&ruleset.text))?;
        Ok(Self {
            netns: netns.to_owned(),
        })
    }

    /// Packets the rules dropped so far.
    pub fn denied(&self) -> Result<u64, String> {
        let out = nft(
            &self.netns,
            &["-j", "list", "counter", "inet", TABLE, "denied"],
            None,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("nft -j output: {e}"))?;
        v["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .ok_or_else(|| "nft -j: no counter in the output".to_owned())
    }

    /// Deletes the table.
    pub fn remove(mut self) -> Result<(), String> {
        let netns = std::mem::take(&mut self.netns);
        nft(&netns, &["delete", "table", "inet", TABLE], None).map(|_| ())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.netns.is_empty() {
            let _ = nft(&self.netns, &["delete", "table", "inet", TABLE], None);
        }
    }
}
