//! `podfence run --kubeconfig` in a testbed node, driven by the test API
//! server: a policy added and removed while a flow is open, a pod that
//! appears later adopted, one that goes released. The server
//! listens inside the node namespace (the agent's 127.0.0.1). Needs root;
//! skips otherwise.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::AgentProcess;
use podfence_bench::apiserver::{ApiServer, Resource};
use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions, in_netns};
use podfence_control::probe::Endpoint;
use podfence_control::sources::manifests;
use podfence_testkit::{Need, skip_unless};
use serde_json::{Value, json};

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [
               {"name": "u", "containerPort": 80, "protocol": "UDP"}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn isolate_b() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "x", "name": "isolate-b"},
           "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}})
}

#[test]
#[allow(clippy::too_many_lines, reason = "one live scenario, step by step")]
fn policies_and_pods_follow_the_api_live() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        pod("a", "10.244.1.1"),
        pod("b", "10.244.1.2"),
    ];
    // c is wired in the node from the start but reaches the API later.
    let mut wired = objects.clone();
    wired.push(pod("c", "10.244.1.3"));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": wired}).to_string();
    let cluster = manifests::load_str(Path::new("cluster.json"), &list)
        .expect("loads")
        .cluster;
    let bed = Testbed::build(&cluster, &TestbedOptions::default()).expect("testbed");
    let node = bed.node_netns().to_owned();
    let server = in_netns(&node, || ApiServer::start().map_err(std::io::Error::other))
        .expect("API server in the node");
    for o in objects {
        server.apply(o).expect("stored");
    }
    let dir = std::env::temp_dir().join(format!("{}-kube", bed.prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).expect("kubeconfig");
    let source = ["--kubeconfig".to_owned(), kubeconfig.display().to_string()];
    let agent = AgentProcess::start(&node, &source, &dir, &[]);

    let (a, b) = (
        Endpoint::Pod {
            namespace: "x".into(),
            name: "a".into(),
        },
        Endpoint::Pod {
            namespace: "x".into(),
            name: "b".into(),
        },
    );
    let timeout = Duration::from_millis(500);
    let flow = |port| bed.udp_exchange(&a, &b, (port, 80), timeout).expect("udp");
    assert!(
        matches!(flow(41_000), ProbeOutcome::Answered(_)),
        "allowed, no policy"
    );

    server.apply(isolate_b()).expect("stored");
    let applied = Instant::now();
    let mut port = 42_000;
    while matches!(flow(port), ProbeOutcome::Answered(_)) {
        assert!(
            applied.elapsed() < Duration::from_secs(10),
            "policy not enforced"
        );
        port += 1;
    }
    eprintln!(
        "policy added: new flows denied within {:?}",
        applied.elapsed()
    );
    assert_eq!(flow(41_000), ProbeOutcome::NoAnswer, "the open flow is cut");

    server.delete(Resource::NetworkPolicies, "x", "isolate-b");
    let deleted = Instant::now();
    while !matches!(flow(41_000), ProbeOutcome::Answered(_)) {
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "policy not removed"
        );
    }
    eprintln!(
        "policy removed: the flow answers again within {:?}",
        deleted.elapsed()
    );

    let metrics_addr = "127.0.0.1:9465";
    assert!(
        common::http_get(&node, metrics_addr, "/readyz")
            .0
            .contains("200")
    );
    assert!(
        common::http_get(&node, metrics_addr, "/healthz")
            .0
            .contains("200")
    );
    let (status, metrics) = common::http_get(&node, metrics_addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    for needle in [
        "podfence_table_generation 3",
        "podfence_propagation_seconds_count 3",
        "podfence_connections_denied_egress_total{worker=\"0\"} 0",
        "podfence_xsk_rx_invalid_descs_total{worker=\"0\"} 0",
        "podfence_watch_lists_total{kind=\"Pod\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    // How many packets met a revoked or denied flow depends on timing.
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{worker=\"0\"}} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert!(value("podfence_connections_revoked_total") >= 1);
    assert!(value("podfence_connections_denied_ingress_total") >= 2);

    // A pod that appears later is adopted; one that goes is released.
    let c = Endpoint::Pod {
        namespace: "x".into(),
        name: "c".into(),
    };
    let to_c = |port| bed.udp_exchange(&a, &c, (port, 80), timeout).expect("udp");
    assert!(
        matches!(to_c(43_000), ProbeOutcome::Answered(_)),
        "c not in the API: not enforced"
    );
    let mut isolate_c = isolate_b();
    isolate_c["metadata"]["name"] = json!("isolate-c");
    isolate_c["spec"]["podSelector"]["matchLabels"]["pod"] = json!("c");
    server.apply(isolate_c).expect("stored");
    server.apply(pod("c", "10.244.1.3")).expect("stored");
    let added = Instant::now();
    let mut port = 43_001;
    while matches!(to_c(port), ProbeOutcome::Answered(_)) {
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "new pod not adopted"
        );
        port += 1;
    }
    eprintln!(
        "pod added: adopted and isolated within {:?}",
        added.elapsed()
    );
    server.delete(Resource::Pods, "x", "c");
    let deleted = Instant::now();
    while !matches!(to_c(port), ProbeOutcome::Answered(_)) {
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "gone pod not released"
        );
        port += 1;
    }
    eprintln!("pod deleted: released within {:?}", deleted.elapsed());

    agent.terminate();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
