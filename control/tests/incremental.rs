//! The incremental compiler against compiling from scratch.
//!
//! A cluster (the conformance cluster with every case's policies, renamed
//! apart) goes through long random sequences of the changes a watch
//! delivers: pods relabelled, moved, readdressed, deleted and recreated;
//! namespaces relabelled; policies added, deleted and edited; tier
//! policies (ClusterNetworkPolicy and the older kinds) added, deleted and
//! edited; nodes relabelled and readdressed. After each
//! change the tables of a [`Compiler`] that has seen every earlier state
//! must equal, field for field, those compiled from nothing.
//!
//! The same holds for the state with the CNI's addresses overlaid
//! ([`OverlaidCluster`]), kept as pods start, get sandboxes, lose them and
//! gain addresses of their own: it must equal the overlay made by cloning
//! the state, and compile like it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use podfence_control::compile::{
    AUDIT_LABEL, BROAD_THRESHOLD, CompileOptions, Compiled, Compiler, Locality, compile,
};
use podfence_control::index::{Cluster, OverlaidCluster};
use podfence_control::model::{
    ClusterNetworkPolicy, NetworkPolicy, Node, ObjectKey, Pod, PolicyPort, PortSpec, Protocol,
};
use podfence_control::sources::manifests;
use podfence_datapath::tables::IdentityId;
use podfence_testkit::paths::conformance_dir;

/// A tier policy whose egress peers are nodes and networks, beside those of
/// the cases (which run on a cluster without Node objects).
const NODE_PEERS: &str = "apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: node-peers}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {matchLabels: {ns: x}}}
  egress:
  - {name: zone-a, action: Deny, to: [{nodes: {matchLabels: {zone: a}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
  - {name: pass-net, action: Pass, to: [{networks: [10.244.2.0/24, 172.18.0.0/30]}]}
";

/// The conformance cluster with each pod replicated eight times (so that
/// bulk changes touch more pods than the compiler checks one by one), and
/// every policy of every case with the case in its name; the tier policies
/// of the cases on that cluster, and two nodes.
fn universe() -> (Cluster, Vec<NetworkPolicy>, Vec<ClusterNetworkPolicy>) {
    let root = conformance_dir();
    let mut cluster = manifests::load(&[root.join("cluster.yaml")])
        .expect("../shared/conformance/cluster.yaml must load")
        .cluster;
    let originals: Vec<Pod> = cluster.pods.values().map(|p| Pod::clone(p)).collect();
    for copy in 1..8_u8 {
        for (i, pod) in originals.iter().enumerate() {
            let mut pod = pod.clone();
            pod.name = format!("{}-{copy}", pod.name);
            for ip in &mut pod.ips {
                *ip = match ip {
                    IpAddr::V4(_) => Ipv4Addr::new(10, 200, copy, i as u8).into(),
                    IpAddr::V6(_) => {
                        Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, u16::from(copy), i as u16).into()
                    }
                };
            }
            cluster.apply(pod);
        }
    }
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join("cases"))
        .expect("../shared/conformance/cases must exist beside the repository")
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut policies = Vec::new();
    for case in cases {
        let file = case.join("policies.yaml");
        if !file.exists() {
            continue;
        }
        let m = manifests::load(&[file]).unwrap();
        let tag = case.file_name().unwrap().to_string_lossy()[..3].to_owned();
        for p in m.cluster.policies.values() {
            let mut p = NetworkPolicy::clone(p);
            p.name = format!("{tag}-{}", p.name);
            policies.push(p);
        }
    }
    let mut tiers = Vec::new();
    let mut tier_cases: Vec<PathBuf> = ["cases-cnp", "cases-admin"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|case| {
            std::fs::read_to_string(case.join("cluster"))
                .map_or(true, |c| c.trim() == "cluster.yaml")
        })
        .collect();
    tier_cases.sort();
    for case in tier_cases {
        let m = manifests::load(&[case.join("policies.yaml")]).unwrap();
        let tag = case.file_name().unwrap().to_string_lossy()[..3].to_owned();
        tiers.extend(m.cluster.cluster_policies.values().map(|p| {
            let mut p = ClusterNetworkPolicy::clone(p);
            // BaselineAdminNetworkPolicies keep their one name.
            if p.name != "default" {
                p.name = format!("{tag}-{}", p.name);
            }
            p
        }));
    }
    let extra = manifests::load_str(std::path::Path::new("node-peers.yaml"), NODE_PEERS).unwrap();
    tiers.extend(
        extra
            .cluster
            .cluster_policies
            .values()
            .map(|p| ClusterNetworkPolicy::clone(p)),
    );
    for (n, name) in ["node-1", "node-2"].into_iter().enumerate() {
        cluster.apply(Node {
            name: name.into(),
            labels: [("zone".to_owned(), ["a", "b"][n].to_owned())].into(),
            addresses: vec![format!("172.18.0.{}", n + 1).parse().unwrap()],
        });
    }
    (cluster, policies, tiers)
}

/// xorshift64*: deterministic, enough to pick changes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

fn pick_pod(cluster: &Cluster, rng: &mut Rng) -> Option<Pod> {
    let n = cluster.pods.len();
    cluster
        .pods
        .values()
        .nth(rng.below(n))
        .map(|p| Pod::clone(p))
}

/// Applies one random change; returns what it did, for the failure message.
#[allow(clippy::too_many_lines, reason = "one arm per kind of change")]
fn change(
    cluster: &mut Cluster,
    policies: &[NetworkPolicy],
    tiers: &[ClusterNetworkPolicy],
    gone: &mut Vec<Pod>,
    rng: &mut Rng,
) -> String {
    match rng.below(13) {
        10 => {
            // A tier policy added (or replaced by the same again).
            let p = tiers[rng.below(tiers.len())].clone();
            let what = format!("{} applied", p.key());
            cluster.apply(p);
            what
        }
        11 => {
            // A tier policy deleted, or edited: another priority.
            let n = cluster.cluster_policies.len();
            let Some(key) = cluster.cluster_policies.keys().nth(rng.below(n)).cloned() else {
                return "nothing".into();
            };
            if rng.below(2) == 0 {
                cluster.cluster_policies.remove(&key);
                return format!("{key} deleted");
            }
            let mut p = ClusterNetworkPolicy::clone(&cluster.cluster_policies[&key]);
            p.priority = [1, 3, 10, 50][rng.below(4)];
            let what = format!("{key} priority {}", p.priority);
            cluster.apply(p);
            what
        }
        12 => {
            // A node relabelled or readdressed.
            let n = cluster.nodes.len();
            let Some(node) = cluster.nodes.values().nth(rng.below(n)) else {
                return "nothing".into();
            };
            let mut node = Node::clone(node);
            if rng.below(2) == 0 {
                node.labels
                    .insert("zone".into(), ["a", "b"][rng.below(2)].into());
            } else {
                node.addresses = vec![format!("172.18.0.{}", 1 + rng.below(4)).parse().unwrap()];
            }
            let what = format!(
                "node {} now {:?} {:?}",
                node.name, node.labels, node.addresses
            );
            cluster.apply(node);
            what
        }
        0 => {
            // A pod takes another pod's labels.
            let (Some(mut a), Some(b)) = (pick_pod(cluster, rng), pick_pod(cluster, rng)) else {
                return "nothing".into();
            };
            a.labels = b.labels.clone();
            let what = format!(
                "pod {}/{} relabelled like {}/{}",
                a.namespace, a.name, b.namespace, b.name
            );
            cluster.apply(a);
            what
        }
        1 => {
            // A pod's label edited in place (through the shared object).
            let n = cluster.pods.len();
            let Some(pod) = cluster.pods.values_mut().nth(rng.below(n)) else {
                return "nothing".into();
            };
            let pod = Arc::make_mut(pod);
            let value = ["a", "b", "c"][rng.below(3)];
            pod.labels.insert("pod".into(), value.into());
            format!(
                "pod {}/{} label pod={value} in place",
                pod.namespace, pod.name
            )
        }
        2 => {
            // A pod deleted, or an earlier one recreated.
            if !gone.is_empty() && rng.below(2) == 0 {
                let pod = gone.swap_remove(rng.below(gone.len()));
                let what = format!("pod {}/{} recreated", pod.namespace, pod.name);
                cluster.apply(pod);
                return what;
            }
            let Some(pod) = pick_pod(cluster, rng) else {
                return "nothing".into();
            };
            cluster.pods.remove(&pod.key());
            let what = format!("pod {}/{} deleted", pod.namespace, pod.name);
            gone.push(pod);
            what
        }
        3 => {
            // Two pods swap addresses (a restart that reuses an address).
            let (Some(mut a), Some(mut b)) = (pick_pod(cluster, rng), pick_pod(cluster, rng))
            else {
                return "nothing".into();
            };
            std::mem::swap(&mut a.ips, &mut b.ips);
            let what = format!(
                "pods {}/{} and {}/{} swap addresses",
                a.namespace, a.name, b.namespace, b.name
            );
            cluster.apply(a);
            cluster.apply(b);
            what
        }
        4 => {
            // A pod moves node (local or remote).
            let Some(mut pod) = pick_pod(cluster, rng) else {
                return "nothing".into();
            };
            pod.node = Some(["node-1", "node-2"][rng.below(2)].into());
            let what = format!("pod {}/{} on {:?}", pod.namespace, pod.name, pod.node);
            cluster.apply(pod);
            what
        }
        5 => {
            // A namespace label flips.
            let n = cluster.namespaces.len();
            let Some(ns) = cluster.namespaces.values().nth(rng.below(n)) else {
                return "nothing".into();
            };
            let mut ns = podfence_control::model::Namespace::clone(ns);
            let value = ["a", "b"][rng.below(2)];
            ns.labels.insert("ns".into(), value.into());
            // Audit mode comes and goes with a label too.
            if rng.below(2) == 0 {
                ns.labels.insert(AUDIT_LABEL.0.into(), AUDIT_LABEL.1.into());
            } else {
                ns.labels.remove(AUDIT_LABEL.0);
            }
            let what = format!("namespace {} label ns={value}", ns.name);
            cluster.apply(ns);
            what
        }
        6 => {
            // A rollout: every pod relabelled at once.
            let value = ["a", "b", "c"][rng.below(3)];
            for pod in cluster.pods.values_mut() {
                Arc::make_mut(pod).labels.insert("pod".into(), value.into());
            }
            format!("every pod pod={value}")
        }
        7 | 8 => {
            // A policy added (or replaced by the same again: a new object).
            let p = policies[rng.below(policies.len())].clone();
            let what = format!("policy {}/{} applied", p.namespace, p.name);
            cluster.apply(p);
            what
        }
        _ => {
            // A policy deleted, or edited to another policy's spec.
            let n = cluster.policies.len();
            let Some(key) = cluster.policies.keys().nth(rng.below(n)).cloned() else {
                return "nothing".into();
            };
            if rng.below(2) == 0 {
                cluster.policies.remove(&key);
                return format!("policy {key} deleted");
            }
            let other = &policies[rng.below(policies.len())];
            let mut edited = other.clone();
            edited.namespace.clone_from(&key.namespace);
            edited.name.clone_from(&key.name);
            cluster.apply(edited);
            format!(
                "policy {key} edited like {}/{}",
                other.namespace, other.name
            )
        }
    }
}

/// `incremental` (generation `step`) is what compiling `cluster` from
/// scratch with `options` gives; `log` says what the last steps changed.
fn assert_compiled_from_scratch(
    incremental: &Compiled,
    cluster: &Cluster,
    options: &CompileOptions,
    step: u64,
    log: &[impl std::fmt::Debug],
) {
    let scratch = compile(
        cluster,
        &CompileOptions {
            generation: step,
            ..options.clone()
        },
    );
    assert!(
        incremental.tables == scratch.tables,
        "{options:?}, step {step}: tables differ after {:?}",
        &log[log.len().saturating_sub(5)..]
    );
    assert_eq!(incremental.warnings, scratch.warnings, "step {step}");
    assert_eq!(incremental.notices, scratch.notices, "step {step}");
}

#[test]
fn incremental_tables_equal_tables_compiled_from_scratch() {
    let (start, policies, tiers) = universe();
    assert!(
        tiers.len() > 10,
        "too few tier policies in the conformance cases"
    );
    assert!(
        policies.len() > 30,
        "too few policies in the conformance cases"
    );
    let node_addresses: Vec<IpAddr> = vec!["172.18.0.9".parse().unwrap()];
    let settings = [
        (Locality::AllPods, usize::MAX, Vec::new()),
        (Locality::Node("node-1".into()), 0, node_addresses),
        (Locality::AllPods, 2, Vec::new()),
    ];
    for (seed, (locality, broad_threshold, node_addresses)) in settings.into_iter().enumerate() {
        let options = CompileOptions {
            generation: 0,
            locality,
            broad_threshold,
            node_addresses,
            audit: seed == 2,
        };
        let mut compiler = Compiler::new(options.clone());
        let mut cluster = start.clone();
        let mut gone = Vec::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed as u64 + 1));
        let mut log = Vec::new();
        for step in 1..=400_u64 {
            log.push(change(&mut cluster, &policies, &tiers, &mut gone, &mut rng));
            let incremental = compiler.compile(&cluster, step);
            assert_compiled_from_scratch(&incremental, &cluster, &options, step, &log);
            assert_eq!(
                compiler.local_addresses(),
                options.locality.addresses(&cluster),
                "step {step}"
            );
        }
        let changed: usize = log.iter().filter(|l| *l != "nothing").count();
        assert!(
            changed > 350,
            "only {changed} of 400 steps changed anything"
        );
    }
}

/// A copy of pod `namespace/model` named `name` at `ip`.
fn pod_like(cluster: &Cluster, namespace: &str, model: &str, name: &str, ip: [u8; 4]) -> Pod {
    let key = ObjectKey::new(namespace, model);
    Pod {
        name: name.into(),
        ips: vec![Ipv4Addr::from(ip).into()],
        ..Pod::clone(&cluster.pods[&key])
    }
}

fn identity_of(compiled: &Compiled, ip: [u8; 4]) -> IdentityId {
    compiled.tables.peer(Ipv4Addr::from(ip).into()).identity
}

/// The group tables are taken from the last compile when a pod comes like
/// an existing one, and filled anew (like a compile from scratch) when it
/// brings a new identity, shifts the identities' numbering or a policy
/// changes.
#[test]
fn group_tables_are_reused_exactly_when_nothing_they_depend_on_changed() {
    let (mut cluster, policies, tiers) = universe();
    for p in policies {
        cluster.apply(p);
    }
    for t in tiers {
        cluster.apply(t);
    }
    let options = CompileOptions {
        locality: Locality::Node("node-1".into()),
        ..CompileOptions::default()
    };
    let mut compiler = Compiler::new(options.clone());
    let mut step = 1;
    let mut last = compiler.compile(&cluster, step);
    let mut compile_next = |cluster: &Cluster, what: &str, last: &mut Compiled| -> bool {
        step += 1;
        let next = compiler.compile(cluster, step);
        assert_compiled_from_scratch(&next, cluster, &options, step, &[what]);
        let reused = Arc::ptr_eq(next.tables.group_tables(), last.tables.group_tables());
        *last = next;
        reused
    };
    let local = |cluster: &Cluster, name: &str| {
        cluster.pods[&ObjectKey::new("x", name)].node.as_deref() == Some("node-1")
    };
    assert!(local(&cluster, "b-3"), "x/b-3 is on node-1");

    // Like x/b-3, after the first pod of its identity: reused.
    let model = identity_of(&last, [10, 200, 3, 1]);
    cluster.apply(pod_like(&cluster, "x", "b-3", "b-9", [10, 200, 9, 1]));
    assert!(compile_next(&cluster, "x/b-9 like x/b-3", &mut last));
    assert_eq!(identity_of(&last, [10, 200, 9, 1]), model);

    // New labels: a new identity, filled anew.
    let identities = last.tables.stats().identities;
    let mut fresh = pod_like(&cluster, "x", "b-3", "b-10", [10, 200, 9, 2]);
    fresh.labels.insert("pod".into(), "fresh".into());
    cluster.apply(fresh);
    assert!(!compile_next(&cluster, "x/b-10 with new labels", &mut last));
    assert!(
        last.tables.stats().identities > identities,
        "a new identity"
    );

    // Like x/c-2, named before every pod: the identities are numbered
    // otherwise, so filled anew.
    let model = identity_of(&last, [10, 200, 2, 2]);
    cluster.apply(pod_like(&cluster, "x", "c-2", "0-first", [10, 200, 9, 3]));
    assert!(!compile_next(&cluster, "x/0-first like x/c-2", &mut last));
    assert_ne!(identity_of(&last, [10, 200, 9, 3]), model, "renumbered");
    assert_eq!(
        identity_of(&last, [10, 200, 9, 3]),
        identity_of(&last, [10, 200, 2, 2])
    );

    // Reused again; then a policy edited right after: filled anew.
    cluster.apply(pod_like(&cluster, "x", "b-3", "b-11", [10, 200, 9, 4]));
    assert!(compile_next(&cluster, "x/b-11 like x/b-3", &mut last));
    let mut edited = NetworkPolicy::clone(
        cluster
            .policies
            .values()
            .find(|p| p.namespace == "x" && !p.ingress.is_empty())
            .expect("a policy of x with ingress rules"),
    );
    // Other ports only: the same peers, so the same identities.
    edited.ingress[0].ports = vec![PolicyPort {
        protocol: Protocol::Tcp,
        port: PortSpec::Range(1234, 1235),
    }];
    let what = format!("{}/{} on other ports", edited.namespace, edited.name);
    cluster.apply(edited);
    assert!(!compile_next(&cluster, &what, &mut last));
    // And the unchanged state after it compiles alike, reused.
    assert!(compile_next(&cluster, "nothing", &mut last));

    // A tier rule's ports edited: filled anew too.
    let mut tier = ClusterNetworkPolicy::clone(
        cluster
            .cluster_policies
            .values()
            .find(|p| p.name == "node-peers")
            .expect("the node-peers tier policy"),
    );
    tier.egress[0].ports = vec![PolicyPort {
        protocol: Protocol::Tcp,
        port: PortSpec::Range(81, 81),
    }];
    cluster.apply(tier);
    assert!(!compile_next(
        &cluster,
        "node-peers zone-a on 81",
        &mut last
    ));
    assert!(compile_next(&cluster, "nothing", &mut last));
}

/// The CNI's entries as the test keeps them: by pod, sandbox and addresses.
type CniEntries = std::collections::BTreeMap<ObjectKey, (String, Vec<IpAddr>)>;

/// The overlay made the plain way: the whole state cloned, the CNI's
/// addresses given to the pods without any of their own.
fn cloned_overlay(source: &Cluster, cni: &CniEntries) -> Cluster {
    let mut cluster = source.clone();
    for (key, pod) in &mut cluster.pods {
        if let Some((_, ips)) = cni.get(key)
            && pod.ips.is_empty()
            && !pod.host_network
        {
            *pod = Arc::new(Pod {
                ips: ips.clone(),
                ..Pod::clone(pod)
            });
        }
    }
    cluster
}

/// Applies one change of a starting pod's: its status loses its addresses
/// (a pod the API has no address for yet), or the CNI records, releases or
/// collects sandboxes. Returns what it did.
fn cni_change(
    cluster: &mut Cluster,
    overlaid: &mut OverlaidCluster,
    cni: &mut CniEntries,
    gone: &[Pod],
    rng: &mut Rng,
    sandbox: &mut u32,
) -> String {
    match rng.below(6) {
        0 => {
            let Some(mut pod) = pick_pod(cluster, rng) else {
                return "nothing".into();
            };
            pod.ips.clear();
            let what = format!("pod {} without addresses", pod.key());
            cluster.apply(pod);
            what
        }
        1..=3 => {
            // Mostly pods that wait for addresses, some that have their
            // own, some that are not in the state.
            let waiting: Vec<ObjectKey> = cluster
                .pods
                .values()
                .filter(|p| p.ips.is_empty())
                .map(|p| p.key())
                .collect();
            let key = match rng.below(4) {
                0 | 1 if !waiting.is_empty() => waiting[rng.below(waiting.len())].clone(),
                2 if !gone.is_empty() => gone[rng.below(gone.len())].key(),
                _ => match pick_pod(cluster, rng) {
                    Some(p) => p.key(),
                    None => return "nothing".into(),
                },
            };
            // A new sandbox, or the same one again.
            let id = match cni.get(&key) {
                Some((id, _)) if rng.below(3) == 0 => id.clone(),
                _ => {
                    *sandbox += 1;
                    format!("c{sandbox}")
                }
            };
            let n = (*sandbox % 250) as u8;
            let mut ips: Vec<IpAddr> =
                vec![Ipv4Addr::new(10, 250, n, 1 + rng.below(3) as u8).into()];
            if rng.below(3) == 0 {
                ips.push(Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, u16::from(n)).into());
            }
            overlaid.insert(&key, &id, &ips);
            ips.sort_unstable();
            let what = format!("CNI {key} {id} {ips:?}");
            cni.insert(key, (id, ips));
            what
        }
        4 => {
            // A release: of the sandbox recorded, or of an older one.
            let n = cni.len();
            let Some((key, (id, _))) = cni.iter().nth(rng.below(n)) else {
                return "nothing".into();
            };
            let (key, id) = (key.clone(), id.clone());
            if rng.below(4) == 0 {
                assert_eq!(overlaid.remove(&key, "c0"), None, "an old sandbox's");
                return format!("CNI release {key} c0");
            }
            assert!(overlaid.remove(&key, &id).is_some());
            cni.remove(&key);
            format!("CNI release {key} {id}")
        }
        _ => {
            // A collection that keeps about half.
            let valid: Vec<String> = cni
                .values()
                .filter(|_| rng.below(2) == 0)
                .map(|(id, _)| id.clone())
                .collect();
            let (released, _) = overlaid.retain_containers(&valid);
            let expected: Vec<ObjectKey> = cni
                .iter()
                .filter(|(_, (id, _))| !valid.contains(id))
                .map(|(key, _)| key.clone())
                .collect();
            assert_eq!(released, expected);
            cni.retain(|_, (id, _)| valid.contains(id));
            format!("CNI gc keeps {}", valid.len())
        }
    }
}

#[test]
fn cni_addresses_kept_overlaid_compile_like_the_cloned_overlay() {
    let (start, policies, tiers) = universe();
    let node_addresses: Vec<IpAddr> = vec!["172.18.0.9".parse().unwrap()];
    let settings = [
        (Locality::AllPods, BROAD_THRESHOLD, Vec::new()),
        (Locality::Node("node-1".into()), 0, node_addresses),
    ];
    for (seed, (locality, broad_threshold, node_addresses)) in settings.into_iter().enumerate() {
        let options = CompileOptions {
            generation: 0,
            locality,
            broad_threshold,
            node_addresses,
            audit: false,
        };
        let mut compiler = Compiler::new(options.clone());
        let mut cluster = start.clone();
        let mut overlaid = OverlaidCluster::default();
        let mut cni = CniEntries::new();
        let (mut gone, mut sandbox) = (Vec::new(), 0);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (seed as u64 + 1));
        let mut log = Vec::new();
        let mut overlaid_pods = 0;
        for step in 1..=300_u64 {
            log.push(if rng.below(2) == 0 {
                cni_change(
                    &mut cluster,
                    &mut overlaid,
                    &mut cni,
                    &gone,
                    &mut rng,
                    &mut sandbox,
                )
            } else {
                change(&mut cluster, &policies, &tiers, &mut gone, &mut rng)
            });
            overlaid.update(&cluster);
            let expected = cloned_overlay(&cluster, &cni);
            assert!(
                *overlaid.cluster() == expected,
                "step {step}: the kept overlay differs after {:?}",
                &log[log.len().saturating_sub(5)..]
            );
            for (key, pod) in &cluster.pods {
                assert!(Arc::ptr_eq(overlaid.source_pod(key).unwrap(), pod));
            }
            overlaid_pods += cni
                .keys()
                .filter(|k| cluster.pods.get(*k).is_some_and(|p| p.ips.is_empty()))
                .count();
            let incremental = compiler.compile(overlaid.cluster(), step);
            assert_compiled_from_scratch(&incremental, &expected, &options, step, &log);
        }
        assert!(
            overlaid_pods > 300,
            "the CNI's addresses were overlaid on only {overlaid_pods} pod-steps"
        );
    }
}
