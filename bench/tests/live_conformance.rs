//! Every case of ../shared/conformance, live: the conformance cluster built
//! in network namespaces, the agent enforcing each case's policies in turn
//! (one published generation per case), every probe a real connection
//! attempt through the AF_XDP datapath. Then again through Services, as
//! upstream's e2e suite probes: every pod a ClusterIP Service of its own
//! (`PodServices`), every probe from a pod to a pod sent to that ClusterIP
//! and translated by the agent, with the verdict of the direct probe.
//! And the ClusterNetworkPolicy cases on the same cluster (cases-admin, and
//! the cases-cnp that name `cluster.yaml`). Needs root; skips otherwise.

use std::time::{Duration, Instant};

use podfence_bench::live::{LiveNode, externals};
use podfence_bench::pod_services::{PodServices, probed_ports};
use podfence_control::agent::AgentOptions;
use podfence_control::probe::Probe;
use podfence_control::sources::manifests;
use podfence_testkit::paths::conformance_dir;
use podfence_testkit::{Need, skip_unless};

#[test]
fn every_conformance_case_matches_live() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    run_cases(&["cases"], false);
}

#[test]
fn every_conformance_case_matches_live_through_services() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    run_cases(&["cases"], true);
}

#[test]
fn cluster_network_policy_cases_on_the_conformance_cluster_match_live() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    run_cases(&["cases-cnp", "cases-admin"], false);
}

/// The cases of `dirs` that run on `cluster.yaml`, sorted.
fn cases_on_the_conformance_cluster(dirs: &[&str]) -> Vec<std::path::PathBuf> {
    let root = conformance_dir();
    let mut cases: Vec<_> = dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(root.join(d))
                .expect("../shared/conformance cases must exist beside the repository")
        })
        .map(|e| e.expect("readable").path())
        .filter(|case| {
            std::fs::read_to_string(case.join("cluster"))
                .map_or(true, |c| c.trim() == "cluster.yaml")
        })
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no conformance cases");
    cases
}

/// Every case of `dirs` that runs on `cluster.yaml` live, through a Service
/// per pod when `via_services`.
fn run_cases(dirs: &[&str], via_services: bool) {
    let root = conformance_dir();
    let cases = cases_on_the_conformance_cluster(dirs);
    let probes_of = |case: &std::path::Path| -> Vec<(Probe, bool)> {
        std::fs::read_to_string(case.join("expected.tsv"))
            .expect("expected.tsv")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let verdict = l.rsplit('\t').next().expect("verdict column");
                (Probe::from_line(l).expect("probe"), verdict == "allow")
            })
            .collect()
    };
    let all: Vec<Probe> = cases
        .iter()
        .flat_map(|c| probes_of(c))
        .map(|(p, _)| p)
        .collect();
    let base = manifests::load(&[root.join("cluster.yaml")])
        .expect("cluster.yaml")
        .cluster;
    let testbed = externals(&all);
    let services = if via_services {
        PodServices::new(&base, &probed_ports(&all), &testbed.external).expect("services")
    } else {
        PodServices::default()
    };
    let node = LiveNode::start(&services.with(&base), &testbed, AgentOptions::default())
        .expect("testbed and agent start");
    let via = |p: &Probe| services.via(p);

    let mut mismatches = Vec::new();
    let mut total = 0;
    let mut through = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let policies = case.join("policies.yaml");
        let mut paths = vec![root.join("cluster.yaml")];
        if policies.exists() {
            paths.push(policies);
        }
        let cluster = services.with(&manifests::load(&paths).expect("case loads").cluster);
        node.agent().publish(&cluster).expect("publish");
        let expected = probes_of(case);
        let probes: Vec<Probe> = expected.iter().map(|(p, _)| p.clone()).collect();
        let started = Instant::now();
        let results = node
            .probe_via(&cluster, &probes, &via, Duration::from_secs(1), 64)
            .expect("probes run");
        for (r, (_, allow)) in results.iter().zip(&expected) {
            // The file's verdict and the compiled one agree (the offline
            // conformance test checks that); the live one must too.
            assert_eq!(r.expected, *allow, "{name}: {} offline", r.probe);
            if r.observed != *allow {
                mismatches.push(format!(
                    "{name}: {}: live {:?}, expected {}",
                    r.probe,
                    r.outcome,
                    if *allow { "allow" } else { "deny" }
                ));
            }
        }
        total += results.len();
        through += probes.iter().filter(|p| via(p).is_some()).count();
        eprintln!(
            "{name}: {} probes in {:.1} s",
            results.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let status = node.agent().status().expect("status");
    node.stop().expect("clean stop");
    assert!(
        mismatches.is_empty(),
        "{} of {total} live probes differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        status.counters.new_denied > 0 && status.counters.new_allowed > 0,
        "traffic went through the datapath: {:?}",
        status.counters
    );
    if via_services {
        assert!(
            status.counters.service_translated > 0,
            "connections were translated: {:?}",
            status.counters
        );
    }
    eprintln!(
        "{total} probes ({through} through Services) over {} cases matched live",
        cases.len()
    );
}
