//! `podfence-bench propagation` end to end on a small cluster: every change
//! reaches a published generation (timings are for the benchmark, not
//! here), and the synthetic objects survive the trip through the API
//! server unchanged in meaning.

use std::time::Duration;

use podfence_bench::propagation::{self, namespace_json, pod_json, policy_json};
use podfence_bench::synthetic::{self, Shape};
use podfence_control::sources::manifests;

const SMALL: Shape = Shape {
    namespaces: 4,
    pods: 80,
    policies: 20,
    cluster_policies: 0,
};

#[test]
fn every_change_is_published() {
    let report = propagation::run(SMALL, 24, Duration::from_millis(5)).expect("runs");
    assert_eq!(report.latency_us.len(), 24);
    assert_eq!((report.pods, report.policies), (80, 20));
    assert!(report.initial_sync > Duration::ZERO);
}

#[test]
fn served_objects_read_back_as_the_same_cluster() {
    let cluster = synthetic::cluster(SMALL);
    let mut items: Vec<serde_json::Value> = cluster
        .namespaces
        .values()
        .map(|n| namespace_json(n))
        .collect();
    items.extend(cluster.pods.values().map(|p| pod_json(p, "node-0")));
    items.extend(cluster.policies.values().map(|p| policy_json(p)));
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let back = manifests::load_str(std::path::Path::new("list.json"), &list.to_string())
        .expect("loads")
        .cluster;
    assert_eq!(back.namespaces, cluster.namespaces);
    assert_eq!(back.policies, cluster.policies);
    for (key, pod) in &cluster.pods {
        let read = &back.pods[key];
        assert_eq!(
            (&read.labels, &read.ips, &read.named_ports),
            (&pod.labels, &pod.ips, &pod.named_ports)
        );
    }
}
