//! kube-proxy's nftables rules for a cluster's Services, so that the testbed's
//! node translates ClusterIP traffic in the kernel as a kind node with
//! `kube-proxy --proxy-mode=nftables` does, and podfence is tested against
//! real coexistence.
//!
//! The rules have the shape kube-proxy's nftables proxier writes
//! (`pkg/proxy/nftables/proxier.go`), one table per family (`ip kube-proxy`,
//! `ip6 kube-proxy`):
//!
//! - `nat-prerouting` and `nat-output` (nat hooks, priority -100) jump to
//!   `services`, which looks the destination up in the verdict map
//!   `service-ips` (`ip daddr . meta l4proto . th dport vmap @service-ips`)
//!   and NodePorts in `service-nodeports` for the addresses of
//!   `nodeport-ips`;
//! - per Service port a chain `service-<hash>-<ns>/<name>/<proto>/<port>`
//!   (endpoints for `internalTrafficPolicy: Cluster`; `local-<hash>-…` for
//!   this node's endpoints under `Local`) that marks traffic from outside the
//!   cluster CIDR for masquerade and picks an endpoint with `numgen random
//!   mod N vmap { … }`; with ClientIP affinity, per-endpoint `affinity-…`
//!   sets are looked up first and updated by the endpoint chain;
//! - per endpoint a chain `endpoint-<hash>-<ns>/<name>/<proto>/<port>__<ip>/<port>`
//!   that marks hairpin traffic (source is the endpoint) for masquerade and
//!   DNATs (`meta l4proto tcp dnat to 10.244.1.5:8080`);
//! - for external IPs and NodePorts an `external-<hash>-…` chain that marks
//!   for masquerade and goes to the Service chain (kube-proxy's
//!   `externalTrafficPolicy: Cluster`, which the model does not carry);
//! - `mark-for-masquerade` (`mark or 0x4000`) and `masquerading` (nat
//!   postrouting: unmarked traffic returns, marked traffic is unmarked and
//!   masqueraded);
//! - the filter side: `no-endpoint-services` and `no-endpoint-nodeports`
//!   verdict maps checked for new connections on `forward`, `input` and
//!   `output`, sending Service ports without endpoints to `reject-chain`
//!   (`reject`: ICMP port unreachable, which a TCP connect sees as refused)
//!   or dropping them when endpoints exist elsewhere but none here
//!   (`internalTrafficPolicy: Local`); `cluster-ips-check` rejects other
//!   ports of a ClusterIP and drops unallocated addresses of the service
//!   CIDRs.
//!
//! Names are hashed with a fixed FNV-1a instead of kube-proxy's SHA-256
//! (base32, eight characters either way): the structure is kube-proxy's, the
//! hashes are not. The endpoints of every frontend come from
//! [`compile_services`], the same reduction of Services and EndpointSlices
//! podfence's datapath uses, then kube-proxy's categorization (ready
//! endpoints; serving-and-terminating ones when none is ready; this node's
//! only under `internalTrafficPolicy: Local`), so the kernel and podfence
//! agree on the backends.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use podfence_control::compile::{Locality, compile_services};
use podfence_control::index::Cluster;
use podfence_control::model::{Protocol, Service, ServiceType, SessionAffinity, TrafficPolicy};
use podfence_datapath::Prefix;
use podfence_datapath::services::{Backend, Endpoint};

use crate::nft::nft;

/// The table name, in both families.
pub const TABLE: &str = "kube-proxy";

/// kube-proxy's masquerade mark (`--masquerade-bit=14`).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// An address family: one table each, as kube-proxy runs one proxier per
/// family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `table ip kube-proxy`.
    V4,
    /// `table ip6 kube-proxy`.
    V6,
}

impl Family {
    /// The nftables family and address keyword (`ip`, `ip6`).
    #[must_use]
    pub fn nft(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip6",
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
        }
    }

    fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

/// What kube-proxy knows of its node besides the cluster.
#[derive(Clone, Debug)]
pub struct KubeProxyConfig {
    /// The node (`--hostname-override`): its endpoints are the local ones
    /// (`internalTrafficPolicy: Local`). [`Locality::AllPods`]: none is.
    pub locality: Locality,
    /// `--cluster-cidr` with `--detect-local-mode=ClusterCIDR`: traffic to a
    /// ClusterIP from outside these is masqueraded. Empty: no local
    /// detection, no such rule.
    pub cluster_cidrs: Vec<Prefix>,
    /// The service CIDRs: traffic to an unallocated address in them is
    /// dropped. Empty: no such rule.
    pub service_cidrs: Vec<Prefix>,
    /// `--nodeport-addresses` resolved: where NodePorts are open.
    pub node_port_addresses: Vec<IpAddr>,
    /// Families to write a table for, besides those of the Services'
    /// ClusterIPs.
    pub families: Vec<Family>,
}

impl Default for KubeProxyConfig {
    fn default() -> Self {
        Self {
            locality: Locality::AllPods,
            cluster_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
            families: vec![Family::V4],
        }
    }
}

/// The generated rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeProxyRules {
    /// `nft -f` input: one `add …` command per line, as kube-proxy's
    /// transactions are written.
    pub text: String,
    /// The tables written.
    pub families: Vec<Family>,
    /// Service ports given a Service chain, over both families.
    pub service_ports: usize,
    /// Endpoint chains.
    pub endpoint_chains: usize,
    /// Service ports without endpoints (rejected or dropped).
    pub without_endpoints: usize,
}

/// kube-proxy's rules for `cluster`'s Services on the node `config`
/// describes. Services it does not proxy (headless, ExternalName, another
/// proxy's, without address) get nothing.
#[must_use]
pub fn rules(cluster: &Cluster, config: &KubeProxyConfig) -> KubeProxyRules {
    let table = compile_services(cluster, &config.locality).table;
    let services: Vec<&Service> = cluster
        .services
        .values()
        .map(AsRef::as_ref)
        .filter(|s| s.is_proxied())
        .collect();
    let mut families: BTreeSet<Family> = config.families.iter().copied().collect();
    families.extend(
        services
            .iter()
            .flat_map(|s| s.cluster_ips.iter().map(|&ip| Family::of(ip))),
    );
    let mut out = KubeProxyRules {
        text: String::new(),
        families: families.iter().copied().collect(),
        service_ports: 0,
        endpoint_chains: 0,
        without_endpoints: 0,
    };
    for family in families {
        let local = cidrs(family, &config.cluster_cidrs);
        let not_local = match local.as_slice() {
            [] => None,
            [one] => Some(format!("{} saddr != {one}", family.nft())),
            many => Some(format!(
                "{} saddr != {{ {} }}",
                family.nft(),
                many.join(", ")
            )),
        };
        let mut w = Writer {
            family,
            text: &mut out.text,
            not_local,
            cluster_ips: BTreeSet::new(),
        };
        w.base(config);
        for service in &services {
            let Some(&cluster_ip) = service
                .cluster_ips
                .iter()
                .find(|ip| Family::of(**ip) == family)
            else {
                continue;
            };
            for port in &service.ports {
                let Some(frontend) =
                    table.frontend(cluster_ip, port.protocol.ip_protocol(), port.port)
                else {
                    // Left out of the table (a ClusterIP claimed twice).
                    continue;
                };
                let sp = ServicePortRules::new(service, port, cluster_ip, frontend.endpoints());
                let counts = w.service_port(&sp);
                out.service_ports += usize::from(counts.0);
                out.endpoint_chains += counts.1;
                out.without_endpoints += usize::from(!sp.has_internal());
            }
        }
    }
    out
}

/// Installs `rules` in network namespace `netns` with `nft -f -`, replacing
/// kube-proxy tables already there (one transaction: nothing changes when
/// the text is refused). Nothing else in the namespace is touched.
pub fn install(netns: &str, rules: &KubeProxyRules) -> Result<(), String> {
    let mut text = String::new();
    for f in &rules.families {
        let _ = writeln!(text, "add table {} {TABLE}", f.nft());
        let _ = writeln!(text, "delete table {} {TABLE}", f.nft());
    }
    text.push_str(&rules.text);
    nft(netns, &["-f", "-"], Some(&text)).map(|_| ())
}

/// Deletes the kube-proxy tables of `families` from `netns`.
pub fn remove(netns: &str, families: &[Family]) -> Result<(), String> {
    for f in families {
        nft(netns, &["delete", "table", f.nft(), TABLE], None)?;
    }
    Ok(())
}

/// One Service port in one family, with kube-proxy's categorized endpoints.
struct ServicePortRules<'a> {
    service: &'a Service,
    protocol: &'static str,
    port_name: &'a str,
    port: u16,
    node_port: Option<u16>,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    /// Usable endpoints anywhere (`Cluster` policy).
    cluster: Vec<Backend>,
    /// Usable endpoints on this node (`Local` policy).
    local: Vec<Backend>,
}

/// Ready endpoints, or the serving and terminating ones when none is
/// ready (kube-proxy's `CategorizeEndpoints`).
fn usable<'e>(endpoints: impl Iterator<Item = &'e Endpoint> + Clone) -> Vec<Backend> {
    let ready: Vec<Backend> = endpoints
        .clone()
        .filter(|e| e.conditions.ready)
        .map(|e| e.backend)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .filter(|e| e.conditions.serving && e.conditions.terminating)
        .map(|e| e.backend)
        .collect()
}

impl<'a> ServicePortRules<'a> {
    fn new(
        service: &'a Service,
        port: &'a podfence_control::model::ServicePort,
        cluster_ip: IpAddr,
        endpoints: &[Endpoint],
    ) -> Self {
        let family = Family::of(cluster_ip);
        Self {
            service,
            protocol: match port.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            },
            port_name: &port.name,
            port: port.port,
            node_port: port.node_port.filter(|_| {
                matches!(
                    service.service_type,
                    ServiceType::NodePort | ServiceType::LoadBalancer
                )
            }),
            cluster_ip,
            external_ips: service
                .external_ips
                .iter()
                .copied()
                .filter(|ip| Family::of(*ip) == family)
                .collect(),
            cluster: usable(endpoints.iter()),
            local: usable(endpoints.iter().filter(|e| e.local)),
        }
    }

    fn local_policy(&self) -> bool {
        self.service.internal_traffic_policy == TrafficPolicy::Local
    }

    fn has_endpoints(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// The endpoints ClusterIP traffic goes to.
    fn internal(&self) -> &[Backend] {
        if self.local_policy() {
            &self.local
        } else {
            &self.cluster
        }
    }

    fn has_internal(&self) -> bool {
        !self.internal().is_empty()
    }

    fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }

    /// `ns/name/proto/port`, the base of every chain name.
    fn base(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.service.namespace, self.service.name, self.protocol, self.port_name
        )
    }

    /// `ns/name:port` (`ns/name` when the port is unnamed), for comments.
    fn display(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.service.namespace, self.service.name)
        } else {
            format!(
                "{}/{}:{}",
                self.service.namespace, self.service.name, self.port_name
            )
        }
    }

    fn chain(&self, kind: &str) -> String {
        hashed(kind, &self.base())
    }

    fn endpoint_base(&self, b: Backend) -> String {
        // Colons are not allowed in chain names.
        let ip = b.addr.to_string().replace(':', ".");
        format!("{}__{ip}/{}", self.base(), b.port)
    }

    fn endpoint_chain(&self, b: Backend) -> String {
        hashed("endpoint", &self.endpoint_base(b))
    }

    fn affinity_set(&self, b: Backend) -> String {
        hashed("affinity", &self.endpoint_base(b))
    }
}

/// `<kind>-<HASH>-<name>`, HASH being eight base32 characters of a hash of
/// `name` (kube-proxy's `hashAndTruncate` shape).
fn hashed(kind: &str, name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let hash: String = (0..8)
        .map(|i| char::from(ALPHABET[((h >> (59 - 5 * i)) & 31) as usize]))
        .collect();
    format!("{kind}-{hash}-{name}")
}

fn cidrs(family: Family, list: &[Prefix]) -> Vec<String> {
    list.iter()
        .filter(|p| Family::of(p.network()) == family)
        .map(ToString::to_string)
        .collect()
}

/// Which chains a Service port uses (kube-proxy's `usesClusterPolicyChain`
/// and friends).
#[derive(Clone, Copy)]
struct Uses {
    cluster: bool,
    local: bool,
    external: bool,
}

struct Plan {
    cluster_chain: String,
    local_chain: String,
    external_chain: String,
    local_policy: bool,
    /// Which of the three chains are written.
    uses: Uses,
    /// Endpoints some policy chain goes to: each gets a chain.
    reachable: BTreeSet<Backend>,
    /// ClientIP affinity's timeout.
    affinity: Option<u32>,
}

impl Plan {
    fn new(sp: &ServicePortRules<'_>) -> Self {
        let local_policy = sp.local_policy();
        let uses_cluster = !sp.cluster.is_empty() && (!local_policy || sp.externally_accessible());
        let uses_local = !sp.local.is_empty() && local_policy;
        let mut reachable = BTreeSet::new();
        if uses_cluster {
            reachable.extend(&sp.cluster);
        }
        if uses_local {
            reachable.extend(&sp.local);
        }
        Self {
            cluster_chain: sp.chain("service"),
            local_chain: sp.chain("local"),
            external_chain: sp.chain("external"),
            local_policy,
            uses: Uses {
                cluster: uses_cluster,
                local: uses_local,
                external: sp.has_endpoints() && sp.externally_accessible(),
            },
            reachable,
            affinity: match sp.service.session_affinity {
                SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
                SessionAffinity::None => None,
            },
        }
    }

    /// The chain ClusterIP traffic goes to.
    fn internal_chain(&self) -> &str {
        if self.local_policy {
            &self.local_chain
        } else {
            &self.cluster_chain
        }
    }
}

struct Writer<'t> {
    family: Family,
    text: &'t mut String,
    /// `ip saddr != 10.244.0.0/16`: traffic from outside the cluster
    /// CIDRs; `None` without local detection.
    not_local: Option<String>,
    /// Addresses already in `cluster-ips` (one element per ClusterIP).
    cluster_ips: BTreeSet<IpAddr>,
}

impl Writer<'_> {
    fn line(&mut self, what: &str) {
        let _ = writeln!(self.text, "add {what}");
    }

    fn add(&mut self, kind: &str, rest: &str) {
        let (f, t) = (self.family.nft(), TABLE);
        self.line(&format!("{kind} {f} {t} {rest}"));
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.add("rule", &format!("{chain} {rule}"));
    }

    fn element(&mut self, set: &str, element: &str) {
        self.add("element", &format!("{set} {{ {element} }}"));
    }

    /// Table, sets, maps, fixed chains and their rules.
    fn base(&mut self, config: &KubeProxyConfig) {
        self.declarations();
        self.base_rules(config);
    }

    /// The table, its sets and maps, and the fixed chains.
    fn declarations(&mut self) {
        let (f, t, a) = (self.family.nft(), TABLE, self.family.addr_type());
        let _ = writeln!(
            self.text,
            "add table {f} {t} {{ comment \"rules for kube-proxy\" ; }}"
        );
        for (name, comment) in [
            ("cluster-ips", "Active ClusterIPs"),
            ("nodeport-ips", "IPs that accept NodePort traffic"),
        ] {
            self.add(
                "set",
                &format!("{name} {{ type {a} ; comment \"{comment}\" ; }}"),
            );
        }
        for (name, key, comment) in [
            (
                "firewall-ips",
                format!("{a} . inet_proto . inet_service"),
                "destinations that are subject to LoadBalancerSourceRanges",
            ),
            (
                "no-endpoint-nodeports",
                "inet_proto . inet_service".to_owned(),
                "vmap to drop or reject packets to service nodeports with no endpoints",
            ),
            (
                "no-endpoint-services",
                format!("{a} . inet_proto . inet_service"),
                "vmap to drop or reject packets to services with no endpoints",
            ),
            (
                "service-ips",
                format!("{a} . inet_proto . inet_service"),
                "ClusterIP, ExternalIP and LoadBalancer IP traffic",
            ),
            (
                "service-nodeports",
                "inet_proto . inet_service".to_owned(),
                "NodePort traffic",
            ),
        ] {
            self.add(
                "map",
                &format!("{name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"),
            );
        }
        for (name, spec) in [
            ("cluster-ips-check", ""),
            (
                "filter-prerouting-pre-dnat",
                " { type filter hook prerouting priority -110 ; }",
            ),
            (
                "filter-output-pre-dnat",
                " { type filter hook output priority -110 ; }",
            ),
            (
                "filter-forward",
                " { type filter hook forward priority 0 ; }",
            ),
            ("filter-input", " { type filter hook input priority 0 ; }"),
            ("filter-output", " { type filter hook output priority 0 ; }"),
            ("firewall-check", ""),
            ("mark-for-masquerade", ""),
            ("masquerading", ""),
            ("nat-output", " { type nat hook output priority -100 ; }"),
            (
                "nat-postrouting",
                " { type nat hook postrouting priority 100 ; }",
            ),
            (
                "nat-prerouting",
                " { type nat hook prerouting priority -100 ; }",
            ),
            ("nodeport-endpoints-check", ""),
            (
                "reject-chain",
                " { comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }",
            ),
            ("services", ""),
            ("service-endpoints-check", ""),
        ] {
            self.add("chain", &format!("{name}{spec}"));
        }
    }

    /// The fixed chains' rules and the NodePort addresses.
    fn base_rules(&mut self, config: &KubeProxyConfig) {
        let f = self.family.nft();
        let mark = format!("{MASQUERADE_MARK:#x}");
        self.rule(
            "cluster-ips-check",
            &format!("{f} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
        );
        let service_cidrs = cidrs(self.family, &config.service_cidrs);
        if !service_cidrs.is_empty() {
            self.rule(
                "cluster-ips-check",
                &format!(
                    "{f} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
                    service_cidrs.join(", ")
                ),
            );
        }
        for (chain, rule) in [
            (
                "filter-prerouting-pre-dnat",
                "ct state new jump firewall-check",
            ),
            (
                "filter-forward",
                "ct state new jump service-endpoints-check",
            ),
            ("filter-forward", "ct state new jump cluster-ips-check"),
            ("filter-input", "ct state new jump nodeport-endpoints-check"),
            ("filter-input", "ct state new jump service-endpoints-check"),
            ("filter-output", "ct state new jump service-endpoints-check"),
            ("filter-output-pre-dnat", "ct state new jump firewall-check"),
            ("filter-output", "ct state new jump cluster-ips-check"),
        ] {
            self.rule(chain, rule);
        }
        self.rule(
            "firewall-check",
            &format!("{f} daddr . meta l4proto . th dport vmap @firewall-ips"),
        );
        self.rule("mark-for-masquerade", &format!("mark set mark or {mark}"));
        self.rule("masquerading", &format!("mark and {mark} == 0 return"));
        self.rule("masquerading", &format!("mark set mark xor {mark}"));
        self.rule("masquerading", "masquerade fully-random");
        self.rule("nat-output", "jump services");
        self.rule("nat-postrouting", "jump masquerading");
        self.rule("nat-prerouting", "jump services");
        self.rule(
            "nodeport-endpoints-check",
            &format!("{f} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        );
        self.rule("reject-chain", "reject");
        self.rule(
            "services",
            &format!("{f} daddr . meta l4proto . th dport vmap @service-ips"),
        );
        self.rule(
            "services",
            &format!("{f} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        );
        self.rule(
            "service-endpoints-check",
            &format!("{f} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
        );
        let family = self.family;
        for addr in config
            .node_port_addresses
            .iter()
            .filter(|a| Family::of(**a) == family)
        {
            self.element("nodeport-ips", &addr.to_string());
        }
    }

    /// The rules of one Service port in this family; whether it got a
    /// policy chain, and its endpoint chains.
    fn service_port(&mut self, sp: &ServicePortRules<'_>) -> (bool, usize) {
        let _ = writeln!(self.text, "# {}", sp.display());
        let plan = Plan::new(sp);
        // Declarations first: map elements and rules refer to them.
        self.declare(sp, &plan);
        self.capture(sp, &plan);
        self.chain_rules(sp, &plan);
        (plan.uses.cluster || plan.uses.local, plan.reachable.len())
    }

    fn declare(&mut self, sp: &ServicePortRules<'_>, plan: &Plan) {
        let a = self.family.addr_type();
        if let Some(timeout) = plan.affinity {
            for &b in &plan.reachable {
                self.add(
                    "set",
                    &format!(
                        "{} {{ type {a} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
                        sp.affinity_set(b)
                    ),
                );
            }
        }
        if plan.uses.cluster {
            self.add("chain", &plan.cluster_chain);
        }
        if plan.uses.local {
            self.add("chain", &plan.local_chain);
        }
        if plan.uses.external {
            self.add("chain", &plan.external_chain);
        }
        for &b in &plan.reachable {
            self.add("chain", &sp.endpoint_chain(b));
        }
    }

    /// Where the Service port's traffic is captured: `service-ips` and
    /// `service-nodeports`, or the no-endpoint maps.
    fn capture(&mut self, sp: &ServicePortRules<'_>, plan: &Plan) {
        let (proto, port) = (sp.protocol, sp.port);
        let key = |ip: IpAddr| format!("{ip} . {proto} . {port}");
        let comment = sp.display();
        let has_endpoints = sp.has_endpoints();
        if self.cluster_ips.insert(sp.cluster_ip) {
            self.element("cluster-ips", &sp.cluster_ip.to_string());
        }
        if sp.has_internal() {
            self.element(
                "service-ips",
                &format!("{} : goto {}", key(sp.cluster_ip), plan.internal_chain()),
            );
        } else {
            // No endpoint anywhere: rejected; none on this node under
            // internalTrafficPolicy Local: dropped.
            let verdict = if has_endpoints {
                "drop"
            } else {
                "goto reject-chain"
            };
            self.element(
                "no-endpoint-services",
                &format!("{} comment \"{comment}\" : {verdict}", key(sp.cluster_ip)),
            );
        }
        for &ip in &sp.external_ips {
            if has_endpoints {
                self.element(
                    "service-ips",
                    &format!("{} : goto {}", key(ip), plan.external_chain),
                );
            } else {
                self.element(
                    "no-endpoint-services",
                    &format!("{} comment \"{comment}\" : goto reject-chain", key(ip)),
                );
            }
        }
        if let Some(node_port) = sp.node_port {
            if has_endpoints {
                self.element(
                    "service-nodeports",
                    &format!("{proto} . {node_port} : goto {}", plan.external_chain),
                );
            } else {
                self.element(
                    "no-endpoint-nodeports",
                    &format!("{proto} . {node_port} comment \"{comment}\" : goto reject-chain"),
                );
            }
        }
    }

    /// The Service, external and endpoint chains' rules.
    fn chain_rules(&mut self, sp: &ServicePortRules<'_>, plan: &Plan) {
        let f = self.family.nft();
        let (proto, port) = (sp.protocol, sp.port);
        // ClusterIP traffic from outside the cluster is masqueraded.
        if sp.has_internal()
            && let Some(not_local) = self.not_local.clone()
        {
            self.rule(
                plan.internal_chain(),
                &format!(
                    "{f} daddr {} {proto} dport {port} {not_local} jump mark-for-masquerade",
                    sp.cluster_ip
                ),
            );
        }
        // externalTrafficPolicy Cluster: masquerade, then any endpoint.
        if plan.uses.external {
            self.rule(&plan.external_chain, "jump mark-for-masquerade");
            self.rule(
                &plan.external_chain,
                &format!("goto {}", plan.cluster_chain),
            );
        }
        let affinity = plan.affinity.is_some();
        if plan.uses.cluster {
            self.load_balance(sp, &plan.cluster_chain, &sp.cluster, affinity);
        }
        if plan.uses.local {
            self.load_balance(sp, &plan.local_chain, &sp.local, affinity);
        }
        for &b in &plan.reachable {
            let chain = sp.endpoint_chain(b);
            // Hairpin: the endpoint reaching itself is masqueraded.
            self.rule(
                &chain,
                &format!("{f} saddr {} jump mark-for-masquerade", b.addr),
            );
            if affinity {
                self.rule(
                    &chain,
                    &format!("update @{} {{ {f} saddr }}", sp.affinity_set(b)),
                );
            }
            self.rule(&chain, &format!("meta l4proto {proto} dnat to {b}"));
        }
    }

    /// The load-balancing rule of a policy chain (after the affinity
    /// lookups).
    fn load_balance(
        &mut self,
        sp: &ServicePortRules<'_>,
        chain: &str,
        endpoints: &[Backend],
        affinity: bool,
    ) {
        let f = self.family.nft();
        if affinity {
            for &b in endpoints {
                self.rule(
                    chain,
                    &format!(
                        "{f} saddr @{} goto {}",
                        sp.affinity_set(b),
                        sp.endpoint_chain(b)
                    ),
                );
            }
        }
        let vmap: Vec<String> = endpoints
            .iter()
            .enumerate()
            .map(|(i, &b)| format!("{i} : goto {}", sp.endpoint_chain(b)))
            .collect();
        self.rule(
            chain,
            &format!(
                "numgen random mod {} vmap {{ {} }}",
                endpoints.len(),
                vmap.join(" , ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CLUSTER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
status: {phase: Running, podIP: 10.244.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.3], nodeName: n1}
- {addresses: [10.244.1.9], nodeName: n1, conditions: {ready: false}}
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: web, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-1, namespace: x, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.2], nodeName: n1}, {addresses: [10.244.1.3], nodeName: n1}]
ports: [{name: web, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: x}
spec: {clusterIP: 10.96.0.40, internalTrafficPolicy: Local, ports: [{name: web, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: x, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.7], nodeName: n2}]
ports: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: x}
spec:
  clusterIPs: [10.96.0.50, 'fd00:96::50']
  ports: [{name: web, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-6, namespace: x, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
endpoints: [{addresses: ['fd00:244::3'], nodeName: n1}]
ports: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: x}
spec: {clusterIP: None, ports: [{port: 80}]}
";

    fn cluster() -> Cluster {
        podfence_control::sources::manifests::load_str(Path::new("kp.yaml"), CLUSTER)
            .expect("manifests load")
            .cluster
    }

    fn config() -> KubeProxyConfig {
        KubeProxyConfig {
            locality: Locality::Node("n1".into()),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            node_port_addresses: vec!["192.168.0.2".parse().unwrap()],
            families: vec![Family::V4],
        }
    }

    /// The lines of `text` containing every one of `parts`.
    fn lines<'t>(text: &'t str, parts: &[&str]) -> Vec<&'t str> {
        text.lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    fn one<'t>(text: &'t str, parts: &[&str]) -> &'t str {
        let found = lines(text, parts);
        assert_eq!(found.len(), 1, "{parts:?} in:\n{text}");
        found[0]
    }

    #[test]
    fn table_maps_and_fixed_chains() {
        let r = rules(&cluster(), &config());
        let t = &r.text;
        assert_eq!(r.families, [Family::V4, Family::V6]);
        assert!(t.starts_with("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n"));
        assert!(t.contains("add table ip6 kube-proxy"));
        one(
            t,
            &[
                "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict",
            ],
        );
        one(t, &["add map ip6 kube-proxy service-ips { type ipv6_addr"]);
        for chain in [
            "nat-prerouting { type nat hook prerouting priority -100 ; }",
            "nat-output { type nat hook output priority -100 ; }",
            "nat-postrouting { type nat hook postrouting priority 100 ; }",
            "filter-forward { type filter hook forward priority 0 ; }",
            "reject-chain",
        ] {
            one(t, &[&format!("add chain ip kube-proxy {chain}")]);
        }
        for rule in [
            "services ip daddr . meta l4proto . th dport vmap @service-ips",
            "services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            "nat-prerouting jump services",
            "nat-output jump services",
            "nat-postrouting jump masquerading",
            "mark-for-masquerade mark set mark or 0x4000",
            "masquerading mark and 0x4000 == 0 return",
            "masquerading mark set mark xor 0x4000",
            "masquerading masquerade fully-random",
            "filter-forward ct state new jump service-endpoints-check",
            "service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
            "cluster-ips-check ip daddr { 10.96.0.0/16 } drop",
            "reject-chain reject",
        ] {
            one(t, &[&format!("add rule ip kube-proxy {rule}")]);
        }
        one(
            t,
            &["add element ip kube-proxy nodeport-ips { 192.168.0.2 }"],
        );
        // The IPv6 table has no IPv4 addresses.
        assert!(lines(t, &["ip6 kube-proxy", "10.96."]).is_empty());
    }

    #[test]
    fn cluster_ip_to_service_chain_to_endpoint_dnat() {
        let t = rules(&cluster(), &config()).text;
        let element = one(t.as_str(), &["service-ips { 10.96.0.10 . tcp . 80 : goto "]);
        let chain = element
            .split("goto ")
            .nth(1)
            .unwrap()
            .trim_end_matches(" }");
        assert!(
            chain.starts_with("service-") && chain.ends_with("-x/web/tcp/http"),
            "{chain}"
        );
        assert_eq!(chain.len(), "service-".len() + 8 + "-x/web/tcp/http".len());
        one(&t, &[&format!("add chain ip kube-proxy {chain}")]);
        one(
            &t,
            &[&format!(
                "add rule ip kube-proxy {chain} ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
            )],
        );
        // Only the ready endpoint; named targetPort resolved by the slice.
        let lb = one(
            &t,
            &[&format!(
                "{chain} numgen random mod 1 vmap {{ 0 : goto endpoint-"
            )],
        );
        assert!(lb.ends_with("-x/web/tcp/http__10.244.1.3/8080 }"), "{lb}");
        assert!(lines(&t, &["10.244.1.9"]).is_empty());
        let ep = lines(
            &t,
            &["add chain ip kube-proxy endpoint-", "x/web/tcp/http__"],
        );
        assert_eq!(ep.len(), 1);
        let ep = ep[0].trim_start_matches("add chain ip kube-proxy ");
        one(
            &t,
            &[&format!(
                "add rule ip kube-proxy {ep} ip saddr 10.244.1.3 jump mark-for-masquerade"
            )],
        );
        one(
            &t,
            &[&format!(
                "add rule ip kube-proxy {ep} meta l4proto tcp dnat to 10.244.1.3:8080"
            )],
        );
        // UDP port: its own chain and DNAT target.
        one(
            &t,
            &[
                "service-ips { 10.96.0.10 . udp . 53 : goto service-",
                "-x/web/udp/dns }",
            ],
        );
        one(&t, &["meta l4proto udp dnat to 10.244.1.3:5353"]);
        one(
            &t,
            &["add element ip kube-proxy cluster-ips { 10.96.0.10 }"],
        );
    }

    #[test]
    fn services_without_endpoints_are_rejected_or_dropped() {
        let r = rules(&cluster(), &config());
        let t = &r.text;
        one(
            t,
            &[
                "add element ip kube-proxy no-endpoint-services { 10.96.0.20 . tcp . 80 comment \"x/empty\" : goto reject-chain }",
            ],
        );
        assert!(lines(t, &["service-ips { 10.96.0.20"]).is_empty());
        assert!(lines(t, &["x/empty/tcp/"]).is_empty(), "no chains");
        // internalTrafficPolicy Local with endpoints only on another node.
        one(
            t,
            &["no-endpoint-services { 10.96.0.40 . tcp . 80 comment \"x/local:web\" : drop }"],
        );
        assert!(lines(t, &["10.244.2.7"]).is_empty());
        // The dual-stack Service has no IPv4 endpoints: rejected in IPv4,
        // translated in IPv6.
        one(
            t,
            &["add element ip kube-proxy no-endpoint-services { 10.96.0.50 . tcp . 80"],
        );
        one(
            t,
            &["add element ip6 kube-proxy service-ips { fd00:96::50 . tcp . 80 : goto service-"],
        );
        one(
            t,
            &[
                "add rule ip6 kube-proxy endpoint-",
                "x/dual/tcp/web__fd00.244..3/80 meta l4proto tcp dnat to [fd00:244::3]:80",
            ],
        );
        assert_eq!(r.without_endpoints, 3);
        assert!(lines(t, &["headless"]).is_empty());
    }

    #[test]
    fn affinity_and_node_ports() {
        let t = rules(&cluster(), &config()).text;
        let sets = lines(
            &t,
            &["add set ip kube-proxy affinity-", "-x/sticky/tcp/web__"],
        );
        assert_eq!(sets.len(), 2, "{sets:?}");
        assert!(sets[0].ends_with("{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }"));
        assert_eq!(
            lines(&t, &["ip saddr @affinity-", "goto endpoint-"]).len(),
            2
        );
        assert_eq!(lines(&t, &["update @affinity-", "{ ip saddr }"]).len(), 2);
        one(
            &t,
            &[
                "numgen random mod 2 vmap { 0 : goto endpoint-",
                "__10.244.1.2/8080 , 1 : goto endpoint-",
                "__10.244.1.3/8080 }",
            ],
        );
        let np = one(
            &t,
            &["add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-"],
        );
        let external = np.split("goto ").nth(1).unwrap().trim_end_matches(" }");
        one(
            &t,
            &[&format!(
                "add rule ip kube-proxy {external} jump mark-for-masquerade"
            )],
        );
        one(
            &t,
            &[&format!("add rule ip kube-proxy {external} goto service-")],
        );
    }

    #[test]
    fn kernel_and_podfence_choose_the_same_endpoints() {
        let cluster = cluster();
        let config = config();
        let t = rules(&cluster, &config).text;
        let table = compile_services(&cluster, &config.locality).table;
        for f in table.frontends() {
            let key = f.key();
            let proto = match key.protocol {
                p if p == Protocol::Tcp.ip_protocol() => "tcp",
                p if p == Protocol::Udp.ip_protocol() => "udp",
                _ => "sctp",
            };
            let family = Family::of(key.addr).nft();
            let element = format!("{} . {proto} . {}", key.addr, key.port);
            if f.backends().is_empty() {
                one(
                    &t,
                    &[&format!(
                        "add element {family} kube-proxy no-endpoint-services {{ {element} "
                    )],
                );
                continue;
            }
            let line = one(
                &t,
                &[&format!(
                    "add element {family} kube-proxy service-ips {{ {element} : goto "
                )],
            );
            let chain = line.split("goto ").nth(1).unwrap().trim_end_matches(" }");
            let lb = one(
                &t,
                &[&format!(
                    "add rule {family} kube-proxy {chain} numgen random mod "
                )],
            );
            for b in f.backends() {
                let ip = b.addr.to_string().replace(':', ".");
                assert!(lb.contains(&format!("__{ip}/{} ", b.port)), "{b} in {lb}");
            }
            assert!(
                lb.contains(&format!("mod {} vmap", f.backends().len())),
                "{lb}"
            );
        }
    }

    #[test]
    fn no_local_detection_no_service_cidr() {
        let t = rules(
            &cluster(),
            &KubeProxyConfig {
                locality: Locality::Node("n1".into()),
                ..KubeProxyConfig::default()
            },
        )
        .text;
        assert!(lines(&t, &["saddr !="]).is_empty());
        assert!(lines(&t, &["Drop traffic to unallocated ClusterIPs"]).is_empty());
        assert!(lines(&t, &["add element ip kube-proxy nodeport-ips"]).is_empty());
    }

    /// `PODFENCE_KP_DUMP=path` writes the sample text (for `nft -c -f`).
    #[test]
    fn dump_when_asked() {
        if let Ok(path) = std::env::var("PODFENCE_KP_DUMP") {
            std::fs::write(path, rules(&cluster(), &config()).text).unwrap();
        }
    }

    #[test]
    fn names_are_hashed_like_kube_proxys() {
        let n = hashed("service", "ns1/svc1/tcp/p80");
        assert!(n.starts_with("service-") && n.ends_with("-ns1/svc1/tcp/p80"));
        let hash = &n["service-".len()..n.len() - "-ns1/svc1/tcp/p80".len()];
        assert_eq!(hash.len(), 8);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_ne!(n, hashed("service", "ns1/svc1/tcp/p81"));
        assert_eq!(n, hashed("service", "ns1/svc1/tcp/p80"));
    }
}
