//! What a pod starting on a node costs the agent's tables, for
//! `podfence-bench compile`: its CNI addresses compiled in (what the adopt
//! of `podfence-cni` waits for), and, for a replica of a pod the node runs
//! already, added to the last tables without a compile
//! ([`Compiler::add_replica`]).
//!
//! The node starts with none of the cluster's pods; `pods` pods start on
//! it one after another, each with the namespace and labels of a
//! synthetic pod spread over the cluster (as `podfence-bench lifecycle`
//! starts them: mostly a new identity or group each), then as many
//! replicas of those (a rollout: the same namespace and labels).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use podfence_control::compile::{CompileOptions, Compiler, Locality};
use podfence_control::index::Cluster;
use podfence_control::model::Pod;

use crate::tcp::report::median;

/// The node the pods start on.
const NODE: &str = "starting-node";

/// Medians, in ms, of one pod's start.
#[derive(Clone, Copy, Debug)]
pub struct PodStartTimes {
    /// Pods started each way.
    pub pods: usize,
    /// A pod like one elsewhere in the cluster, compiled in.
    pub new_compile_ms: f64,
    /// A replica of a pod of the node, compiled in.
    pub replica_compile_ms: f64,
    /// The same replica added without a compile.
    pub replica_add_ms: f64,
    /// How many replicas [`Compiler::add_replica`] took (the others need a
    /// compile).
    pub replicas_added: usize,
}

/// Starts `pods` pods, then as many replicas of them, on a node of
/// `cluster` (see the module doc).
#[must_use]
pub fn pod_start_times(mut cluster: Cluster, pods: usize) -> PodStartTimes {
    let models: Vec<Pod> = cluster.pods.values().map(|p| Pod::clone(p)).collect();
    let node_ip = IpAddr::V4(Ipv4Addr::new(192, 168, 250, 1));
    let mut compiler = Compiler::new(CompileOptions {
        locality: Locality::Node(NODE.into()),
        node_addresses: vec![node_ip],
        ..CompileOptions::default()
    });
    let mut generation = 1;
    let mut last = compiler.compile(&cluster, generation).tables;
    let address =
        |n: usize| IpAddr::V4(Ipv4Addr::new(10, 250, (n / 250) as u8, (n % 250) as u8 + 1));
    let (mut new_compile, mut replica_compile, mut replica_add) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut added = 0;
    let mut started: Vec<Pod> = Vec::with_capacity(pods);
    for round in 0..2 {
        for i in 0..pods {
            let pod = if round == 0 {
                let model = &models[i * models.len() / pods.max(1) % models.len().max(1)];
                Pod {
                    name: format!("start-{i}"),
                    node: Some(NODE.into()),
                    ips: vec![address(i)],
                    host_ips: vec![node_ip],
                    ..model.clone()
                }
            } else {
                Pod {
                    name: format!("{}-next", started[i].name),
                    ips: vec![address(pods + i)],
                    ..started[i].clone()
                }
            };
            generation += 1;
            if round == 1 {
                let namespace = cluster.namespaces.get(&pod.namespace).cloned();
                let start = Instant::now();
                let tables = compiler.add_replica(&last, &pod, namespace.as_ref(), generation);
                replica_add.push(start.elapsed());
                added += usize::from(black_box(tables).is_ok());
            }
            cluster.apply(pod.clone());
            let start = Instant::now();
            last = compiler.compile(&cluster, generation).tables;
            let took = start.elapsed();
            if round == 0 {
                new_compile.push(took);
                started.push(pod);
            } else {
                replica_compile.push(took);
            }
        }
    }
    let ms =
        |v: Vec<Duration>| median(v.iter().map(|d| d.as_secs_f64() * 1e3).collect()).unwrap_or(0.0);
    PodStartTimes {
        pods,
        new_compile_ms: ms(new_compile),
        replica_compile_ms: ms(replica_compile),
        replica_add_ms: ms(replica_add),
        replicas_added: added,
    }
}

impl PodStartTimes {
    /// The figures as a JSON object.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "pods": self.pods,
            "new_compile_ms": self.new_compile_ms,
            "replica_compile_ms": self.replica_compile_ms,
            "replica_add_ms": self.replica_add_ms,
            "replicas_added": self.replicas_added,
        })
    }
}

impl std::fmt::Display for PodStartTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a pod starting on a node: compiled in {:.2} ms; a replica of one it runs: compiled in \
             {:.2} ms, added without a compile {:.3} ms ({} of {} added; medians)",
            self.new_compile_ms,
            self.replica_compile_ms,
            self.replica_add_ms,
            self.replicas_added,
            self.pods,
        )
    }
}
