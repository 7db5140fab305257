//! Random small clusters, policies and probes: the compiled tables must give
//! the reference evaluator's verdict on every probe.
//!
//! Addresses come from small ranges so that ipBlocks (and their excepts)
//! overlap pod addresses, outside addresses and node addresses; labels,
//! port names and ports come from small vocabularies so that selectors,
//! named ports and ranges hit often.

mod reference;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use podfence_control::compile::{CompileOptions, Compiler, Locality, NeedsCompile, compile};
use podfence_control::index::Cluster;
use podfence_control::model::{
    Action, ClusterNetworkPolicy, IpBlock, LabelSelector, Labels, NAMESPACE_NAME_LABEL, NamedPort,
    Namespace, NetworkPolicy, Node, Operator, Peer, Pod, PodPhase, PolicyApi, PolicyPort, PortSpec,
    Protocol, Requirement, Rule, Subject, Tier, TierPeer, TierRule,
};
use podfence_datapath::Prefix;
use podfence_datapath::Tables;
use podfence_datapath::tables::Decision;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use reference::Side;

const NAMESPACES: [&str; 4] = ["x", "y", "z", "w"];
const NODES: [&str; 2] = ["n1", "n2"];
const POD_KEYS: &[&str] = &["app", "tier", "env"];
const POD_VALUES: &[&str] = &["a", "b", "c"];
const NS_KEYS: &[&str] = &["env", "team", NAMESPACE_NAME_LABEL];
const NS_VALUES: &[&str] = &["a", "b", "x", "y"];
const PORT_NAMES: &[&str] = &["web", "dns"];
const NODE_KEYS: &[&str] = &["zone"];
const NODE_VALUES: &[&str] = &["a", "b"];
const NAMED_PORT_NUMBERS: &[u16] = &[53, 80, 81, 8080, 8081];
const RULE_PORTS: &[u16] = &[53, 80, 81, 443, 8080, 8081, 9000];
const PROBE_PORTS: &[u16] = &[53, 79, 80, 81, 82, 443, 8080, 8081, 9000];

/// Pod addresses use 16 slots per family; outside addresses the next 16,
/// the last two of which are the nodes' addresses.
const SLOTS: u8 = 16;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn v6(last: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last)))
}

fn node_ips(node: usize) -> Vec<IpAddr> {
    let last = 2 * SLOTS - 2 + node as u8;
    vec![v4(last), v6(last)]
}

/// An outside address: near the pods (inside the blocks' range) or far.
fn outside(k: u8, ipv4: bool) -> IpAddr {
    match (k, ipv4) {
        (0..16, true) => v4(SLOTS + k),
        (0..16, false) => v6(SLOTS + k),
        (16, true) => IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
        (16, false) => IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 1)),
        (_, true) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        (_, false) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    }
}

fn string(s: &&str) -> String {
    (*s).to_owned()
}

/// TCP most of the time, so that names, protocols and ports line up often.
/// A namespace, by position among the cluster's (modulo their number):
/// mostly one of the first two, so that policies and pods meet often.
fn namespace_slot() -> BoxedStrategy<usize> {
    prop_oneof![3 => 0..2usize, 1 => 0..4usize].boxed()
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![3 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
}

fn labels(keys: &'static [&'static str], values: &'static [&'static str]) -> BoxedStrategy<Labels> {
    prop::collection::btree_map(
        select(keys).prop_map(|k| string(&k)),
        select(values).prop_map(|v| string(&v)),
        0..=3,
    )
    .boxed()
}

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> BoxedStrategy<LabelSelector> {
    let requirement = (
        select(keys),
        0..4u8,
        prop::collection::vec(select(values), 1..=2),
    )
        .prop_map(|(key, op, values)| {
            let operator = [
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][usize::from(op)];
            let values = match operator {
                Operator::In | Operator::NotIn => values.iter().map(string).collect(),
                Operator::Exists | Operator::DoesNotExist => Vec::new(),
            };
            Requirement {
                key: string(&key),
                operator,
                values,
            }
        });
    let some = (
        labels(keys, values),
        prop::collection::vec(requirement, 0..=2),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels: match_labels.into_iter().collect(),
            match_expressions,
        });
    prop_oneof![2 => Just(LabelSelector::default()), 3 => some].boxed()
}

/// An ipBlock of one family, with 0-2 excepts, over the test's addresses.
fn ip_block(ipv4: bool) -> BoxedStrategy<IpBlock> {
    let lens: &'static [u8] = if ipv4 {
        &[0, 8, 27, 28, 29, 30, 31, 32]
    } else {
        &[0, 64, 123, 124, 125, 126, 127, 128]
    };
    let width: u8 = if ipv4 { 32 } else { 128 };
    let addr = move |k: u8| if ipv4 { v4(k) } else { v6(k) };
    let except = (0..2 * SLOTS, 0..=6u8);
    // Mostly based among the pods' addresses, sometimes among the others.
    let base = prop_oneof![3 => 0..SLOTS, 1 => SLOTS..2 * SLOTS];
    (base, select(lens), prop::collection::vec(except, 0..=2))
        .prop_map(move |(base, len, excepts)| {
            let cidr = Prefix::new(addr(base), len).unwrap();
            let mut except = Vec::new();
            for (offset, extra) in excepts {
                let len = (cidr.prefix_len() + 1).max(width - 6) + extra;
                if len > width {
                    continue;
                }
                let near = addr(offset);
                let at = if cidr.contains(near) {
                    near
                } else {
                    cidr.network()
                };
                let hole = Prefix::new(at, len).unwrap();
                if !except.contains(&hole) {
                    except.push(hole);
                }
            }
            IpBlock { cidr, except }
        })
        .boxed()
}

fn peer() -> BoxedStrategy<Peer> {
    prop_oneof![
        3 => selector(POD_KEYS, POD_VALUES).prop_map(|pods| Peer::Pods { namespaces: None, pods }),
        3 => (selector(NS_KEYS, NS_VALUES), selector(POD_KEYS, POD_VALUES))
            .prop_map(|(ns, pods)| Peer::Pods { namespaces: Some(ns), pods }),
        2 => ip_block(true).prop_map(Peer::IpBlock),
        2 => ip_block(false).prop_map(Peer::IpBlock),
    ]
    .boxed()
}

/// A port name and its protocol: mostly the name's usual one (web/TCP,
/// dns/UDP), sometimes any, so that names collide across protocols.
fn named_port_name() -> BoxedStrategy<(String, Protocol)> {
    let usual = |name: &str| {
        if name == "dns" {
            Protocol::Udp
        } else {
            Protocol::Tcp
        }
    };
    (
        select(PORT_NAMES),
        prop_oneof![2 => Just(None), 1 => protocol().prop_map(Some)],
    )
        .prop_map(move |(name, protocol)| (string(&name), protocol.unwrap_or_else(|| usual(name))))
        .boxed()
}

fn policy_port() -> BoxedStrategy<PolicyPort> {
    let spec = prop_oneof![
        1 => Just(PortSpec::Any),
        3 => (select(RULE_PORTS), select(RULE_PORTS))
            .prop_map(|(a, b)| PortSpec::Range(a.min(b), a.max(b))),
        2 => select(RULE_PORTS).prop_map(|a| PortSpec::Range(a, a)),
    ];
    prop_oneof![
        6 => (protocol(), spec).prop_map(|(protocol, port)| PolicyPort { protocol, port }),
        4 => named_port_name()
            .prop_map(|(name, protocol)| PolicyPort { protocol, port: PortSpec::Named(name) }),
    ]
    .boxed()
}

fn rule() -> BoxedStrategy<Rule> {
    (
        prop::collection::vec(peer(), 0..=2),
        prop::collection::vec(policy_port(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
        .boxed()
}

/// A policy in namespace slot `.0`, with `policyTypes` absent (`None`) or
/// explicit, defaulted as the API server does.
fn policy() -> BoxedStrategy<(usize, NetworkPolicy)> {
    let types = prop_oneof![
        Just(None),
        Just(Some((true, false))),
        Just(Some((false, true))),
        Just(Some((true, true)))
    ];
    (
        namespace_slot(),
        selector(POD_KEYS, POD_VALUES),
        types,
        prop::collection::vec(rule(), 0..=2),
        prop::collection::vec(rule(), 0..=2),
    )
        .prop_map(|(ns, pod_selector, types, ingress, egress)| {
            let (isolates_ingress, isolates_egress) = types.unwrap_or((true, !egress.is_empty()));
            let policy = NetworkPolicy {
                namespace: String::new(),
                name: String::new(),
                pod_selector,
                isolates_ingress,
                isolates_egress,
                ingress,
                egress,
            };
            (ns, policy)
        })
        .boxed()
}

/// A peer of a tier rule; `egress` peers may also be networks and nodes.
fn tier_peer(egress: bool) -> BoxedStrategy<TierPeer> {
    let pods = prop_oneof![
        3 => selector(NS_KEYS, NS_VALUES).prop_map(TierPeer::Namespaces),
        3 => (selector(NS_KEYS, NS_VALUES), selector(POD_KEYS, POD_VALUES))
            .prop_map(|(namespaces, pods)| TierPeer::Pods { namespaces, pods }),
        1 => Just(TierPeer::Unknown),
    ];
    if !egress {
        return pods.boxed();
    }
    prop_oneof![
        6 => pods,
        2 => (ip_block(true), ip_block(false), any::<bool>()).prop_map(|(a, b, both)| {
            TierPeer::Networks(if both { vec![a.cidr, b.cidr] } else { vec![a.cidr] })
        }),
        2 => selector(NODE_KEYS, NODE_VALUES).prop_map(TierPeer::Nodes),
        1 => Just(TierPeer::DomainNames(vec!["example.com".into()])),
    ]
    .boxed()
}

fn tier_rule(egress: bool) -> BoxedStrategy<TierRule> {
    let action = prop_oneof![Just(Action::Accept), Just(Action::Deny), Just(Action::Pass)];
    (
        action,
        prop::collection::vec(tier_peer(egress), 1..=2),
        prop::collection::vec(policy_port(), 0..=2),
    )
        .prop_map(|(action, peers, ports)| TierRule {
            name: String::new(),
            action,
            peers,
            ports,
        })
        .boxed()
}

/// A tier policy; priorities from a small set so that ties happen.
fn cluster_policy() -> BoxedStrategy<ClusterNetworkPolicy> {
    let tier = prop_oneof![Just(Tier::Admin), Just(Tier::Baseline)];
    let subject = prop_oneof![
        selector(NS_KEYS, NS_VALUES).prop_map(Subject::Namespaces),
        (selector(NS_KEYS, NS_VALUES), selector(POD_KEYS, POD_VALUES))
            .prop_map(|(namespaces, pods)| Subject::Pods { namespaces, pods }),
    ];
    (
        tier,
        0..3u32,
        subject,
        prop::collection::vec(tier_rule(false), 0..=2),
        prop::collection::vec(tier_rule(true), 0..=2),
    )
        .prop_map(
            |(tier, priority, subject, ingress, egress)| ClusterNetworkPolicy {
                api: PolicyApi::ClusterV1beta1,
                name: String::new(),
                tier,
                priority,
                subject,
                ingress,
                egress,
                unsupported: Vec::new(),
            },
        )
        .boxed()
}

#[derive(Clone, Copy, Debug)]
enum PodKind {
    Normal(PodPhase),
    HostNetwork,
    Finished(PodPhase),
    NoAddress,
}

/// Everything about a pod but its names and final addresses.
#[derive(Clone, Debug)]
struct PodDraft {
    namespace: usize,
    labels: Labels,
    node: Option<usize>,
    kind: PodKind,
    /// (has v4, has v6), at least one.
    families: (bool, bool),
    slots: (u8, u8),
    named_ports: Vec<NamedPort>,
}

fn pod_draft() -> BoxedStrategy<PodDraft> {
    let kind = prop_oneof![
        8 => select(&[PodPhase::Running, PodPhase::Pending, PodPhase::Unknown][..]).prop_map(PodKind::Normal),
        1 => Just(PodKind::HostNetwork),
        1 => select(&[PodPhase::Succeeded, PodPhase::Failed][..]).prop_map(PodKind::Finished),
        1 => Just(PodKind::NoAddress),
    ];
    let named =
        (named_port_name(), select(NAMED_PORT_NUMBERS)).prop_map(|((name, protocol), port)| {
            NamedPort {
                name,
                protocol,
                port,
            }
        });
    (
        namespace_slot(),
        labels(POD_KEYS, POD_VALUES),
        prop_oneof![Just(None), Just(Some(0)), Just(Some(1))],
        kind,
        prop_oneof![1 => Just((true, false)), 1 => Just((false, true)), 2 => Just((true, true))],
        (0..SLOTS, 0..SLOTS),
        prop::collection::vec(named, 0..=3),
    )
        .prop_map(
            |(namespace, labels, node, kind, families, slots, named_ports)| PodDraft {
                namespace,
                labels,
                node,
                kind,
                families,
                slots,
                named_ports,
            },
        )
        .boxed()
}

/// One end of a probe before addresses are chosen.
#[derive(Clone, Copy, Debug)]
enum EndDraft {
    Pod(Index),
    Outside(u8),
}

fn end_draft() -> BoxedStrategy<EndDraft> {
    prop_oneof![3 => any::<Index>().prop_map(EndDraft::Pod), 1 => (0..18u8).prop_map(EndDraft::Outside)]
        .boxed()
}

/// A probe's port: a number, or (with its protocol) one of the destination
/// pod's named ports.
#[derive(Clone, Copy, Debug)]
enum PortDraft {
    Number(u16),
    NamedOfDestination(Index),
}

/// A probe as the datapath sees it.
#[derive(Clone, Debug)]
struct ProbeCase {
    /// How the addresses were chosen, for messages.
    what: String,
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
}

#[derive(Clone)]
struct Case {
    cluster: Cluster,
    probes: Vec<ProbeCase>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:#?}", self.cluster)?;
        for p in &self.probes {
            writeln!(
                f,
                "probe {} {} -> {} {}/{}",
                p.what, p.src, p.dst, p.protocol, p.port
            )?;
        }
        Ok(())
    }
}

fn build_pods(namespaces: &[String], drafts: Vec<PodDraft>) -> Vec<Pod> {
    let mut taken_v4 = [false; SLOTS as usize];
    let mut taken_v6 = [false; SLOTS as usize];
    // Addresses of live pods are unique; a finished pod's may be reused.
    let claim = |taken: &mut [bool; SLOTS as usize], slot: u8, unique: bool| {
        let mut s = slot;
        while unique && taken[usize::from(s)] {
            s = (s + 1) % SLOTS;
        }
        if unique {
            taken[usize::from(s)] = true;
        }
        s
    };
    let mut pods = Vec::new();
    for (i, d) in drafts.into_iter().enumerate() {
        let namespace = namespaces[d.namespace % namespaces.len()].clone();
        let mut pod = Pod {
            namespace,
            name: format!("pod{i}"),
            labels: d.labels,
            node: d.node.map(|n| NODES[n].to_owned()),
            host_network: false,
            phase: PodPhase::Running,
            ips: Vec::new(),
            host_ips: d.node.map(node_ips).unwrap_or_default(),
            named_ports: d.named_ports,
        };
        let mut own_ips = |unique: bool| {
            let mut ips = Vec::new();
            if d.families.0 {
                ips.push(v4(claim(&mut taken_v4, d.slots.0, unique)));
            }
            if d.families.1 {
                ips.push(v6(claim(&mut taken_v6, d.slots.1, unique)));
            }
            ips
        };
        match d.kind {
            PodKind::Normal(phase) => {
                pod.phase = phase;
                pod.ips = own_ips(true);
            }
            PodKind::Finished(phase) => {
                pod.phase = phase;
                pod.ips = own_ips(false);
            }
            PodKind::HostNetwork => {
                let node = d.node.unwrap_or(0);
                pod.node = Some(NODES[node].to_owned());
                pod.host_network = true;
                pod.host_ips = node_ips(node);
                pod.ips = node_ips(node);
            }
            PodKind::NoAddress => pod.phase = PodPhase::Pending,
        }
        pods.push(pod);
    }
    pods
}

/// The address an end uses in one family, if it has one: a pod's own
/// address (a host-network pod's is its node's).
fn end_address(pods: &[Pod], end: EndDraft, ipv4: bool) -> Option<(String, IpAddr)> {
    match end {
        EndDraft::Outside(k) => Some(("ext".to_owned(), outside(k, ipv4))),
        EndDraft::Pod(i) => {
            let pod = i.get(pods);
            let ip = pod.ips.iter().copied().find(|ip| ip.is_ipv4() == ipv4)?;
            Some((pod.key().to_string(), ip))
        }
    }
}

fn case() -> impl Strategy<Value = Case> {
    let namespace = (any::<bool>(), labels(&["env", "team"], &["a", "b"]));
    // Most probes aim at one of the destination's named ports.
    let port = prop_oneof![
        1 => select(PROBE_PORTS).prop_map(PortDraft::Number),
        2 => any::<Index>().prop_map(PortDraft::NamedOfDestination),
    ];
    let probe = (any::<bool>(), end_draft(), end_draft(), protocol(), port);
    (
        prop::collection::vec(namespace, 2..=4),
        prop::collection::vec(pod_draft(), 2..=8),
        prop::collection::vec(policy(), 1..=5),
        prop::collection::vec(cluster_policy(), 0..=3),
        prop::collection::vec(labels(NODE_KEYS, NODE_VALUES), NODES.len()),
        prop::collection::vec(probe, 40),
    )
        .prop_map(|(namespaces, pods, policies, tiers, node_labels, probes)| {
            let mut cluster = Cluster::default();
            let names: Vec<String> = NAMESPACES[..namespaces.len()].iter().map(string).collect();
            for (name, (has_object, mut labels)) in names.iter().zip(namespaces) {
                if has_object {
                    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
                    cluster.apply(Namespace {
                        name: name.clone(),
                        labels,
                    });
                }
            }
            let pods = build_pods(&names, pods);
            for pod in &pods {
                cluster.apply(pod.clone());
            }
            for (i, (ns, mut policy)) in policies.into_iter().enumerate() {
                policy.namespace.clone_from(&names[ns % names.len()]);
                policy.name = format!("np{i}");
                cluster.apply(policy);
            }
            for (i, mut policy) in tiers.into_iter().enumerate() {
                // Admin policies come as either kind.
                if policy.tier == Tier::Admin && i % 2 == 1 {
                    policy.api = PolicyApi::Admin;
                }
                policy.name = format!("cnp{i}");
                cluster.apply(policy);
            }
            for (n, labels) in node_labels.into_iter().enumerate() {
                cluster.apply(Node {
                    name: NODES[n].to_owned(),
                    labels,
                    addresses: node_ips(n),
                });
            }
            cluster.add_implicit_namespaces();
            let probes = probes
                .into_iter()
                .filter_map(|(ipv4, src, dst_end, mut protocol, port)| {
                    let (src_name, src) = end_address(&pods, src, ipv4)?;
                    let (dst_name, dst) = end_address(&pods, dst_end, ipv4)?;
                    let port = match (port, dst_end) {
                        (PortDraft::Number(n), _) => n,
                        (PortDraft::NamedOfDestination(i), EndDraft::Pod(p)) => {
                            let ports = &p.get(&pods).named_ports;
                            if ports.is_empty() {
                                80
                            } else {
                                let named_port = i.get(ports);
                                protocol = named_port.protocol;
                                named_port.port
                            }
                        }
                        (PortDraft::NamedOfDestination(_), EndDraft::Outside(_)) => 8080,
                    };
                    Some(ProbeCase {
                        what: format!("{src_name} -> {dst_name}"),
                        src,
                        dst,
                        protocol,
                        port,
                    })
                })
                .collect();
            Case { cluster, probes }
        })
}

/// How the datapath sees an address: the live pod that owns it, or nothing.
fn side(cluster: &Cluster, ip: IpAddr) -> Side<'_> {
    cluster
        .pods
        .values()
        .find(|p| reference::is_endpoint(p) && p.ips.contains(&ip))
        .map_or(Side::Outside(ip), |p| Side::Pod(p, ip))
}

fn describe(side: &Side<'_>) -> String {
    match side {
        Side::Pod(p, ip) => format!("pod {} ({ip})", p.key()),
        Side::Outside(ip) => format!("outside address {ip}"),
    }
}

/// Compiles the whole cluster with `options` and checks every probe, and
/// each half of its verdict, against the reference.
fn check_whole_cluster(case: &Case, options: &CompileOptions) -> Result<(), TestCaseError> {
    let compiled = compile(&case.cluster, options);
    prop_assert!(
        compiled.warnings.is_empty(),
        "warnings: {:?}",
        compiled.warnings
    );
    check_every_probe(case, &compiled.tables)
}

/// Checks every probe, and each half of its verdict, against the
/// reference: `tables` enforce every pod of the case.
fn check_every_probe(case: &Case, tables: &Tables) -> Result<(), TestCaseError> {
    let cluster = &case.cluster;
    for p in &case.probes {
        let (src, dst) = (side(cluster, p.src), side(cluster, p.dst));
        let verdict = tables.classify(p.src, p.dst, p.protocol.ip_protocol(), p.port);
        let want = reference::allowed(cluster, &src, &dst, p.protocol, p.port);
        let what = format!(
            "{} ({} -> {}) {}/{}",
            p.what,
            describe(&src),
            describe(&dst),
            p.protocol,
            p.port
        );
        prop_assert_eq!(verdict.is_allowed(), want, "{}: got {:?}", what, verdict);
        if !reference::is_self_traffic(&src, &dst) && !reference::is_from_own_node(&src, &dst) {
            let egress = reference::egress_allowed(cluster, &src, &dst, p.protocol, p.port);
            let ingress = reference::ingress_allowed(cluster, &src, &dst, p.protocol, p.port);
            prop_assert_eq!(
                verdict.egress.is_allowed(),
                egress,
                "egress of {}: {:?}",
                what,
                verdict
            );
            prop_assert_eq!(
                verdict.ingress.is_allowed(),
                ingress,
                "ingress of {}: {:?}",
                what,
                verdict
            );
            prop_assert_eq!(
                verdict.egress == Decision::NotEnforced,
                src.endpoint().is_none(),
                "egress of {}: {:?}",
                what,
                verdict
            );
            prop_assert_eq!(
                verdict.ingress == Decision::NotEnforced,
                dst.endpoint().is_none(),
                "ingress of {}: {:?}",
                what,
                verdict
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whole cluster enforced here: every verdict, and each half of it,
    /// agrees with the reference.
    #[test]
    fn compiled_tables_agree_with_reference(case in case()) {
        check_whole_cluster(&case, &CompileOptions::default())?;
    }

    /// The same with rules stored as broad peer sets (a threshold this small
    /// makes most rules broad): verdicts must not depend on it.
    #[test]
    fn broad_peer_sets_agree_with_reference(case in case(), threshold in 0..4usize) {
        let options = CompileOptions { broad_threshold: threshold, ..CompileOptions::default() };
        check_whole_cluster(&case, &options)?;
    }

    /// Only the pods of node n1 enforced here: a local source's egress and a
    /// local destination's ingress agree with the reference's halves; pods
    /// elsewhere are not enforced.
    #[test]
    fn node_local_halves_agree_with_reference(case in case()) {
        let options = CompileOptions { locality: Locality::Node(NODES[0].to_owned()), ..CompileOptions::default() };
        let compiled = compile(&case.cluster, &options);
        prop_assert!(compiled.warnings.is_empty(), "warnings: {:?}", compiled.warnings);
        check_local_halves(&case, &compiled.tables)?;
    }

    /// A pod added to the tables of the state without it, without
    /// compiling, when the compiler finds it a replica: the verdicts are
    /// the reference's, as for a compile of the state with it.
    #[test]
    fn replicas_added_without_compiling_agree_with_reference(
        case in case(),
        which in any::<Index>(),
        copy in any::<bool>(),
        node_local in any::<bool>(),
    ) {
        check_replica(&case, which, copy, node_local)?;
    }

    /// A local pod removed from the tables of the state with it, without
    /// compiling, when the compiler can: the verdicts are the reference's
    /// for the state without it.
    #[test]
    fn pods_removed_without_compiling_agree_with_reference(
        case in case(),
        which in any::<Index>(),
        node_local in any::<bool>(),
    ) {
        check_removal(&case, which, node_local)?;
    }
}

/// Checks the probes of `tables` that enforce the pods of node n1 only: a
/// local source's egress and a local destination's ingress agree with the
/// reference's halves; pods elsewhere are not enforced.
fn check_local_halves(case: &Case, tables: &Tables) -> Result<(), TestCaseError> {
    let cluster = &case.cluster;
    let local = |side: &Side<'_>| {
        side.endpoint()
            .is_some_and(|p| p.node.as_deref() == Some(NODES[0]))
    };
    for p in &case.probes {
        let (src, dst) = (side(cluster, p.src), side(cluster, p.dst));
        let verdict = tables.classify(p.src, p.dst, p.protocol.ip_protocol(), p.port);
        let what = format!(
            "{} ({} -> {}) {}/{}",
            p.what,
            describe(&src),
            describe(&dst),
            p.protocol,
            p.port
        );
        if reference::is_self_traffic(&src, &dst) || reference::is_from_own_node(&src, &dst) {
            prop_assert!(verdict.is_allowed(), "{}: {:?}", what, verdict);
            continue;
        }
        if local(&src) {
            let want = reference::egress_allowed(cluster, &src, &dst, p.protocol, p.port);
            prop_assert_eq!(
                verdict.egress.is_allowed(),
                want,
                "egress of {}: {:?}",
                what,
                verdict
            );
        } else {
            prop_assert_eq!(verdict.egress, Decision::NotEnforced, "egress of {}", what);
        }
        if local(&dst) {
            let want = reference::ingress_allowed(cluster, &src, &dst, p.protocol, p.port);
            prop_assert_eq!(
                verdict.ingress.is_allowed(),
                want,
                "ingress of {}: {:?}",
                what,
                verdict
            );
        } else {
            prop_assert_eq!(
                verdict.ingress,
                Decision::NotEnforced,
                "ingress of {}",
                what
            );
        }
    }
    Ok(())
}

/// The options of [`check_replica`] and [`check_removal`]: every pod
/// enforced here, or those of node n1 (which also gives the compiler n1's
/// addresses).
fn replica_options(node_local: bool) -> CompileOptions {
    if node_local {
        CompileOptions {
            locality: Locality::Node(NODES[0].to_owned()),
            node_addresses: node_ips(0),
            ..CompileOptions::default()
        }
    } else {
        CompileOptions::default()
    }
}

/// The case's endpoints enforced under `options`.
fn local_endpoints<'c>(case: &'c Case, options: &CompileOptions) -> Vec<&'c Arc<Pod>> {
    case.cluster
        .pods
        .values()
        .filter(|p| reference::is_endpoint(p) && options.locality.includes(p))
        .collect()
}

/// Checks `tables` against the reference on `case`: every probe, or the
/// halves of node n1's pods (`node_local`).
fn check_enforced_here(
    case: &Case,
    tables: &Tables,
    node_local: bool,
) -> Result<(), TestCaseError> {
    if node_local {
        check_local_halves(case, tables)
    } else {
        check_every_probe(case, tables)
    }
}

/// [`Compiler::remove_pod`] on a case: a local endpoint of it (`which`)
/// goes from the tables of the case; when the compiler takes it out
/// without compiling, the tables must agree with the reference on the
/// state without it. Returns why not, if it did not.
fn check_removal(
    case: &Case,
    which: Index,
    node_local: bool,
) -> Result<Option<NeedsCompile>, TestCaseError> {
    let options = replica_options(node_local);
    let local = local_endpoints(case, &options);
    if local.is_empty() {
        return Ok(Some(NeedsCompile::NotALocalEndpoint));
    }
    let gone = Pod::clone(&***which.get(&local));
    let mut compiler = Compiler::new(options);
    let last = compiler.compile(&case.cluster, 1).tables;
    let tables = match compiler.remove_pod(&last, &gone, 2) {
        Ok(tables) => tables,
        Err(why) => return Ok(Some(why)),
    };
    let mut without = case.clone();
    without.cluster.delete::<Pod>(&gone.key());
    check_enforced_here(&without, &tables, node_local)?;
    Ok(None)
}

/// [`Compiler::add_replica`] on a case: a local endpoint of it (`which`)
/// is the pod that starts; the tables it is added to are those of the
/// state without it (`copy` false) or of the case, the pod then being a
/// copy of that endpoint at a free address, probed as it is (`copy`).
/// Enforced here: every pod, or those of node n1 (`node_local`, which
/// also gives the compiler n1's addresses). Returns why the pod was not
/// added, if it was not; when it was, the tables must agree with the
/// reference on the state with it.
fn check_replica(
    case: &Case,
    which: Index,
    copy: bool,
    node_local: bool,
) -> Result<Option<NeedsCompile>, TestCaseError> {
    let options = replica_options(node_local);
    let local = local_endpoints(case, &options);
    if local.is_empty() {
        return Ok(Some(NeedsCompile::NotALocalEndpoint));
    }
    let chosen = which.get(&local);
    let (before, with, pod) = if copy {
        let free = |ipv4: bool| {
            (0..SLOTS)
                .map(|s| if ipv4 { v4(s) } else { v6(s) })
                .find(|ip| case.cluster.pods.values().all(|p| !p.ips.contains(ip)))
        };
        let mut pod = Pod::clone(chosen);
        pod.name = format!("{}-copy", pod.name);
        for ip in &mut pod.ips {
            match free(ip.is_ipv4()) {
                Some(free) => *ip = free,
                None => return Ok(Some(NeedsCompile::NotALocalEndpoint)),
            }
        }
        // Every probe of the endpoint again, with the copy in its place.
        let moved = |ip: IpAddr| {
            chosen
                .ips
                .iter()
                .position(|&a| a == ip)
                .map_or(ip, |i| pod.ips[i])
        };
        let mut with = case.clone();
        with.cluster.apply(pod.clone());
        with.probes.extend(case.probes.iter().map(|p| ProbeCase {
            what: format!("{} (the copy)", p.what),
            src: moved(p.src),
            dst: moved(p.dst),
            ..p.clone()
        }));
        (case.cluster.clone(), with, pod)
    } else {
        let mut before = case.cluster.clone();
        before.delete::<Pod>(&chosen.key());
        (before, case.clone(), Pod::clone(chosen))
    };
    let mut compiler = Compiler::new(options);
    let last = compiler.compile(&before, 1).tables;
    let namespace = with.cluster.namespaces.get(&pod.namespace);
    let tables = match compiler.add_replica(&last, &pod, namespace, 2) {
        Ok(tables) => tables,
        Err(why) => return Ok(Some(why)),
    };
    prop_assert_eq!(tables.generation(), 2);
    check_enforced_here(&with, &tables, node_local)?;
    Ok(None)
}

/// Enough of the cases above add or remove the pod, and enough do not.
#[test]
fn replicas_are_added_and_pods_removed_often_and_refused_for_each_reason() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (case(), any::<Index>(), any::<bool>(), any::<bool>());
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        let (case, which, copy, node_local) = strategy.new_tree(&mut runner).unwrap().current();
        let outcome = check_replica(&case, which, copy, node_local).unwrap();
        let what = match outcome {
            None => format!("added (copy: {copy}, node-local: {node_local})"),
            Some(NeedsCompile::NewIdentity(_)) => "new identity".to_owned(),
            Some(NeedsCompile::NewGroup(_)) => "new group".to_owned(),
            Some(why) => why.to_string(),
        };
        *outcomes.entry(what).or_default() += 1;
    }
    let mut removals: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let (case, which, _, node_local) = strategy.new_tree(&mut runner).unwrap().current();
        let outcome = check_removal(&case, which, node_local).unwrap();
        let what = outcome.map_or_else(
            || format!("removed (node-local: {node_local})"),
            |why| why.to_string(),
        );
        *removals.entry(what).or_default() += 1;
    }
    assert_each_seen(
        &removals,
        &["removed (node-local: true)", "removed (node-local: false)"],
        20,
    );
    assert_each_seen(
        &outcomes,
        &[
            "added (copy: true, node-local: true)",
            "added (copy: true, node-local: false)",
            "added (copy: false, node-local: true)",
            "added (copy: false, node-local: false)",
            "new identity",
            "new group",
        ],
        5,
    );
}

/// Each of `whats` was counted in `seen` at least `at_least` times.
fn assert_each_seen<K>(seen: &BTreeMap<K, usize>, whats: &[&str], at_least: usize)
where
    K: std::borrow::Borrow<str> + Ord + fmt::Debug,
{
    for &what in whats {
        assert!(
            seen.get(what).copied().unwrap_or(0) >= at_least,
            "{what} seen {seen:?}"
        );
    }
}

/// The generator reaches the shapes the properties are meant to cover.
#[test]
#[allow(clippy::too_many_lines, reason = "one note per shape")]
fn generator_covers_interesting_shapes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut allowed = 0;
    let mut denied = 0;
    for _ in 0..200 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let cluster = &case.cluster;
        let mut note = |what: &'static str, yes: bool| {
            if yes {
                *seen.entry(what).or_default() += 1;
            }
        };
        for pod in cluster.pods.values() {
            note("host-network pod", pod.host_network);
            note(
                "finished pod",
                matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed),
            );
            note("pod without address", pod.ips.is_empty());
            note("dual-stack pod", pod.ips.len() == 2 && !pod.host_network);
        }
        for policy in cluster.policies.values() {
            note("egress isolation", policy.isolates_egress);
            note(
                "ingress-only policy with egress rules",
                !policy.isolates_egress && !policy.egress.is_empty(),
            );
            for rule in policy.ingress.iter().chain(&policy.egress) {
                note("rule without peers", rule.peers.is_empty());
                for peer in &rule.peers {
                    match peer {
                        Peer::IpBlock(b) => {
                            note("ipBlock with except", !b.except.is_empty());
                            note("v6 ipBlock", matches!(b.cidr, Prefix::V6(_)));
                        }
                        Peer::Pods { namespaces, .. } => {
                            note("namespaceSelector", namespaces.is_some());
                        }
                    }
                }
                for port in &rule.ports {
                    note("named port", matches!(port.port, PortSpec::Named(_)));
                    note(
                        "port range",
                        matches!(port.port, PortSpec::Range(a, b) if a < b),
                    );
                    note("SCTP", port.protocol == Protocol::Sctp);
                }
            }
        }
        for policy in cluster.cluster_policies.values() {
            note("admin tier", policy.tier == Tier::Admin);
            note("baseline tier", policy.tier == Tier::Baseline);
            for rule in policy.ingress.iter().chain(&policy.egress) {
                note("pass rule", rule.action == Action::Pass);
                for peer in &rule.peers {
                    note("nodes peer", matches!(peer, TierPeer::Nodes(_)));
                    note("networks peer", matches!(peer, TierPeer::Networks(_)));
                    note("peer of an unknown kind", matches!(peer, TierPeer::Unknown));
                }
            }
        }
        for policy in cluster.cluster_policies.values() {
            note("admin tier", policy.tier == Tier::Admin);
            note("baseline tier", policy.tier == Tier::Baseline);
            for rule in policy.ingress.iter().chain(&policy.egress) {
                note("pass rule", rule.action == Action::Pass);
                for peer in &rule.peers {
                    note("nodes peer", matches!(peer, TierPeer::Nodes(_)));
                    note("networks peer", matches!(peer, TierPeer::Networks(_)));
                    note("peer of an unknown kind", matches!(peer, TierPeer::Unknown));
                }
            }
        }
        for p in &case.probes {
            let (src, dst) = (side(cluster, p.src), side(cluster, p.dst));
            note("v6 probe", p.src.is_ipv6());
            note("probe from outside", src.endpoint().is_none());
            note(
                "pod and its own node",
                reference::is_own_node_traffic(&src, &dst),
            );
            if reference::allowed(cluster, &src, &dst, p.protocol, p.port) {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    assert_each_seen(
        &seen,
        &[
            "host-network pod",
            "finished pod",
            "pod without address",
            "dual-stack pod",
            "egress isolation",
            "ingress-only policy with egress rules",
            "rule without peers",
            "ipBlock with except",
            "v6 ipBlock",
            "namespaceSelector",
            "named port",
            "port range",
            "SCTP",
            "v6 probe",
            "probe from outside",
            "pod and its own node",
            "admin tier",
            "baseline tier",
            "pass rule",
            "nodes peer",
            "networks peer",
            "peer of an unknown kind",
        ],
        5,
    );
    assert!(
        allowed > 200 && denied > 200,
        "allowed {allowed}, denied {denied}"
    );
}
