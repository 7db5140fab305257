//! `podfence-bench veth` end to end on a small cluster: every path carries
//! the generator's traffic to the sink, and the paths that enforce policy
//! (podfence and the generated nftables rules, also through the sink's
//! ClusterIP: `podfence-svc` and `kube-proxy`) drop exactly the denied
//! flows and deliver the rest. Needs root and nft; skips otherwise.

use std::time::Duration;

use podfence_bench::traffic::frames::TrafficSpec;
use podfence_bench::veth::{self, Case, CaseResult, PathKind, VethOptions, report};
use podfence_testkit::{Need, skip_unless};

/// A small cluster, every path, one short round.
fn options() -> VethOptions {
    let mut spec = TrafficSpec::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv4Addr::UNSPECIFIED,
    );
    spec.flows = 32;
    spec.deny_share = 0.25;
    VethOptions {
        namespaces: 10,
        pods: 200,
        policies: 20,
        spec,
        cases: PathKind::ALL
            .into_iter()
            .map(|path| Case { path, policies: 20 })
            .collect(),
        rounds: 1,
        throughput: Duration::from_millis(200),
        check: Duration::from_millis(200),
        warmup: Duration::from_millis(50),
        latency_rate: Some(20_000.0),
        no_loss_fraction: None,
        queues: 1,
        gen_cores: vec![usize::MAX],
        sink_core: Some(0),
        rps_core: None,
        progress: false,
    }
}

#[test]
fn every_path_delivers_and_the_enforcing_ones_drop_the_denied_flows() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    if !podfence_bench::nft::available() {
        eprintln!("skipped: nft is not installed (scripts/install-deps installs nftables)");
        return;
    }
    let r = veth::run(&options()).expect("veth benchmark");
    assert_eq!(r.results.len(), PathKind::ALL.len());
    let flows = r.spec.flows();
    let denied_flows = flows.iter().filter(|f| f.denied).count() as u64;
    let flows = flows.len() as u64;
    assert!(denied_flows > 0);
    for result in &r.results {
        check_path(result, denied_flows, flows);
    }
    let json = report::json(&r);
    for key in [
        "podfence_mpps",
        "forward_all_mpps",
        "kernel_mpps",
        "nftables_mpps",
        "podfence_p99_us",
        "podfence_svc_mpps",
        "kube_proxy_mpps",
    ] {
        assert!(
            json[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {json}"
        );
    }
    let goals = json["goals"].as_array().expect("goals");
    assert!(
        goals
            .iter()
            .any(|g| g["goal"] == "podfence-svc >= 1.0 x kube-proxy" && !g["met"].is_null()),
        "{json}"
    );
    let table = report::table(&r);
    for path in PathKind::ALL {
        assert!(table.contains(path.name()), "{table}");
    }
}

/// One path's rounds: traffic went through, and policy was enforced where
/// the path enforces it.
fn check_path(result: &CaseResult, denied_flows: u64, flows: u64) {
    let path = result.case.path;
    let round = &result.rounds[0];
    let tp = &round.throughput;
    assert!(
        tp.sent > 0 && tp.received > 0,
        "{}: nothing went through",
        path.name()
    );
    // What the paced run sent is delivered, dropped by policy, or lost
    // where the benchmark says: on receive at a veth (its ring full
    // when the machine stalls a thread), nowhere else.
    let paced = round.latency.as_ref().expect("latency run");
    assert!(
        paced.lost() <= paced.veth_dropped_in + paced.veth_dropped_out,
        "{}: {} paced packets lost, {} + {} dropped at veths",
        path.name(),
        paced.lost(),
        paced.veth_dropped_in,
        paced.veth_dropped_out
    );
    assert!(!paced.latency_ns.is_empty(), "{}: no latency", path.name());
    if path.enforces() {
        assert_eq!(
            paced.received_denied,
            0,
            "{}: a denied flow got through",
            path.name()
        );
        assert_eq!(
            tp.received_denied,
            0,
            "{}: a denied flow got through",
            path.name()
        );
        // Packets go round robin over the flows: the denied flows' share
        // of them, give or take the last partial round and what a veth
        // lost before the policy saw it.
        let expected = paced.sent * denied_flows / flows;
        assert!(
            paced.policy_dropped <= expected + flows
                && paced.policy_dropped + paced.lost() + flows >= expected,
            "{}: dropped {} of {} packets, {expected} are denied",
            path.name(),
            paced.policy_dropped,
            paced.sent
        );
    } else {
        assert_eq!(paced.policy_dropped, 0, "{}", path.name());
        assert!(
            paced.received_denied > 0,
            "{}: no policy, yet denied flows dropped",
            path.name()
        );
    }
}
