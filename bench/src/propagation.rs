//! Propagation latency: from a change in the API to the table generation
//! that reflects it being live, through the test API server and the real
//! kube client.
//!
//! The synthetic cluster of [`crate::synthetic`] is served as Kubernetes
//! objects (pods spread over ten nodes; the source enforces `node-0`). The
//! source syncs once (timed), then single-object changes are applied one at
//! a time, each timed from the server's write to the end of the publish
//! that follows it: pod label flips, policy edits (a port changed) and pod
//! churn (a pod deleted or created), round robin.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use podfence_control::compile::{CompileOptions, Locality};
use podfence_control::index::Cluster;
use podfence_control::model::{
    LabelSelector, Namespace, NetworkPolicy, Operator, Peer, Pod, PolicyPort, PortSpec, Rule,
};
use podfence_control::publish::TablePublisher;
use podfence_control::sources::kube::{ApiTarget, SourceOptions, SourceThread};
use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Resource};
use crate::synthetic::{self, Shape};

/// Nodes the synthetic pods are spread over.
const NODES: usize = 10;

fn selector(s: &LabelSelector) -> Value {
    let labels: serde_json::Map<String, Value> = s
        .match_labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let expressions: Vec<Value> = s
        .match_expressions
        .iter()
        .map(|r| {
            let operator = match r.operator {
                Operator::In => "In",
                Operator::NotIn => "NotIn",
                Operator::Exists => "Exists",
                Operator::DoesNotExist => "DoesNotExist",
            };
            json!({"key": r.key, "operator": operator, "values": r.values})
        })
        .collect();
    json!({"matchLabels": labels, "matchExpressions": expressions})
}

fn rule(r: &Rule, peer_field: &str) -> Value {
    let peers: Vec<Value> = r
        .peers
        .iter()
        .map(|p| match p {
            Peer::Pods { namespaces, pods } => {
                let mut peer = json!({"podSelector": selector(pods)});
                if let Some(ns) = namespaces {
                    peer["namespaceSelector"] = selector(ns);
                }
                peer
            }
            Peer::IpBlock(b) => json!({"ipBlock": {
                "cidr": b.cidr.to_string(),
                "except": b.except.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }}),
        })
        .collect();
    let ports: Vec<Value> = r
        .ports
        .iter()
        .map(|PolicyPort { protocol, port }| match port {
            PortSpec::Any => json!({"protocol": protocol.as_str()}),
            PortSpec::Range(a, b) if a == b => json!({"protocol": protocol.as_str(), "port": a}),
            PortSpec::Range(a, b) => {
                json!({"protocol": protocol.as_str(), "port": a, "endPort": b})
            }
            PortSpec::Named(n) => json!({"protocol": protocol.as_str(), "port": n}),
        })
        .collect();
    let mut v = json!({ "ports": ports });
    v[peer_field] = json!(peers);
    v
}

/// A model namespace as a Kubernetes object.
#[must_use]
pub fn namespace_json(ns: &Namespace) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": ns.name, "labels": ns.labels}})
}

/// A model pod as a Kubernetes object, on node `node`.
#[must_use]
pub fn pod_json(p: &Pod, node: &str) -> Value {
    let ports: Vec<Value> = p
        .named_ports
        .iter()
        .map(|np| json!({"name": np.name, "containerPort": np.port, "protocol": np.protocol.as_str()}))
        .collect();
    let ips: Vec<Value> = p
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": p.namespace, "name": p.name, "labels": p.labels},
           "spec": {"nodeName": node, "containers": [{"name": "app", "ports": ports}]},
           "status": {"phase": "Running", "podIP": p.ips.first().map(ToString::to_string), "podIPs": ips}})
}

/// A model policy as a Kubernetes object.
#[must_use]
pub fn policy_json(np: &NetworkPolicy) -> Value {
    let mut types = Vec::new();
    if np.isolates_ingress {
        types.push("Ingress");
    }
    if np.isolates_egress {
        types.push("Egress");
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": np.namespace, "name": np.name},
           "spec": {"podSelector": selector(&np.pod_selector), "policyTypes": types,
                    "ingress": np.ingress.iter().map(|r| rule(r, "from")).collect::<Vec<_>>(),
                    "egress": np.egress.iter().map(|r| rule(r, "to")).collect::<Vec<_>>()}})
}

/// What a propagation run measured.
#[derive(Debug)]
pub struct Report {
    /// Pods served.
    pub pods: usize,
    /// Policies served.
    pub policies: usize,
    /// From the source's start to the first generation live.
    pub initial_sync: Duration,
    /// Change to table live, microseconds.
    pub latency_us: Histogram<u64>,
    /// Resident memory the source, its index and the tables added (the
    /// process's RSS after the sync minus before it).
    pub rss_delta_bytes: u64,
    /// The process's RSS after the changes.
    pub rss_bytes: u64,
}

/// The process's resident set size.
#[must_use]
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Serves `shape`, syncs, applies `changes` single-object changes and
/// measures each.
pub fn run(shape: Shape, changes: usize, debounce: Duration) -> Result<Report, String> {
    let cluster: Cluster = synthetic::cluster(shape);
    let server = ApiServer::start().map_err(|e| e.to_string())?;
    let pods: Vec<&Pod> = cluster.pods.values().map(AsRef::as_ref).collect();
    for ns in cluster.namespaces.values() {
        server
            .apply(namespace_json(ns))
            .map_err(|e| e.to_string())?;
    }
    for (i, p) in pods.iter().enumerate() {
        server
            .apply(pod_json(p, &format!("node-{}", i % NODES)))
            .map_err(|e| e.to_string())?;
    }
    let policies: Vec<&NetworkPolicy> = cluster.policies.values().map(AsRef::as_ref).collect();
    for np in &policies {
        server.apply(policy_json(np)).map_err(|e| e.to_string())?;
    }
    let kubeconfig = std::env::temp_dir().join(format!("pf-propagation-{}", std::process::id()));
    std::fs::write(&kubeconfig, server.kubeconfig()).map_err(|e| e.to_string())?;

    let before = rss_bytes();
    let tables = TablePublisher::new(CompileOptions {
        locality: Locality::Node("node-0".into()),
        broad_threshold: 32,
        ..CompileOptions::default()
    });
    let (tx, published) = mpsc::channel::<Instant>();
    let started = Instant::now();
    let source = SourceThread::spawn(
        ApiTarget::Kubeconfig(kubeconfig.clone()),
        tables,
        SourceOptions {
            debounce,
            ..SourceOptions::default()
        },
        move |_, _| {
            let _ = tx.send(Instant::now());
        },
    )
    .map_err(|e| e.to_string())?;
    let wait = |what: &str| {
        published
            .recv_timeout(Duration::from_mins(1))
            .map_err(|_| format!("no publish within 60 s after {what}"))
    };
    let initial_sync = wait("the start")?.duration_since(started);
    let rss_delta_bytes = rss_bytes().saturating_sub(before);
    let _ = std::fs::remove_file(&kubeconfig);

    let mut latency_us = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut churned: Vec<Value> = Vec::new();
    for i in 0..changes {
        let pod = pods[(i * 7919) % pods.len()];
        let node = format!("node-{}", (i * 7919) % pods.len() % NODES);
        let t0 = Instant::now();
        match i % 4 {
            0 => {
                // Flip a label policies select on.
                let mut p = pod_json(pod, &node);
                let tier = p["metadata"]["labels"]["tier"].as_str().unwrap_or("web");
                let flipped = if tier == "web" { "api" } else { "web" };
                p["metadata"]["labels"]["tier"] = json!(flipped);
                server.apply(p).map_err(|e| e.to_string())?;
            }
            1 => {
                // Edit a policy: another port in its first rule (a policy
                // without rules gets one: a write that changes nothing
                // publishes nothing).
                let np = policies[(i * 104_729) % policies.len()];
                let mut v = policy_json(np);
                let ports = json!([{"protocol": "TCP", "port": 1000 + (i % 5000)}]);
                let first = ["ingress", "egress"]
                    .into_iter()
                    .find(|dir| v["spec"][dir].get(0).is_some());
                match first {
                    Some(dir) => v["spec"][dir][0]["ports"] = ports,
                    None => v["spec"]["ingress"] = json!([{"ports": ports}]),
                }
                server.apply(v).map_err(|e| e.to_string())?;
            }
            2 => {
                // Churn: a pod goes.
                let gone = pod_json(pod, &node);
                server.delete(Resource::Pods, &pod.namespace, &pod.name);
                churned.push(gone);
            }
            _ => {
                // Churn: a pod comes (back).
                let back = churned.pop().ok_or("nothing to bring back")?;
                server.apply(back).map_err(|e| e.to_string())?;
            }
        }
        let live = wait("a change")?;
        let us = live.duration_since(t0).as_micros() as u64;
        latency_us.record(us.max(1)).map_err(|e| e.to_string())?;
    }
    let rss = rss_bytes();
    source.stop().map_err(|e| e.to_string())?;
    Ok(Report {
        pods: cluster.pods.len(),
        policies: cluster.policies.len(),
        initial_sync,
        latency_us,
        rss_delta_bytes,
        rss_bytes: rss,
    })
}
