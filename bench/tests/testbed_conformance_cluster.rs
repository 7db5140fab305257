//! End-to-end check of the testbed's wiring: the conformance cluster built in
//! network namespaces with no agent running, so the kernel routes everything
//! and every probe of case 001 (no policies: everything allowed) must go
//! through. Needs root and `ip netns`; skips otherwise. All traffic stays
//! inside the namespaces the testbed makes.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions};
use podfence_control::index::Cluster;
use podfence_control::model::Protocol;
use podfence_control::probe::{Endpoint, Probe};
use podfence_testkit::paths::conformance_dir;
use podfence_testkit::{Need, skip_unless};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `dst` listens on `proto/port` (pods on their named ports, the
/// outside on the ports the test gives it).
fn listens(cluster: &Cluster, probe: &Probe, external_ports: &[(Protocol, u16)]) -> bool {
    match &probe.dst {
        Endpoint::Pod { namespace, name } => cluster.pod(namespace, name).is_some_and(|p| {
            p.named_ports
                .iter()
                .any(|np| np.protocol == probe.protocol && np.port == probe.port)
        }),
        Endpoint::External(_) => external_ports.contains(&(probe.protocol, probe.port)),
        Endpoint::Service { .. } => false,
    }
}

#[test]
fn conformance_cluster_is_fully_connected_without_agent() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let cluster =
        podfence_control::sources::manifests::load(&[conformance_dir().join("cluster.yaml")])
            .expect("cluster.yaml loads")
            .cluster;
    let expected =
        std::fs::read_to_string(conformance_dir().join("cases/001-no-policies/expected.tsv"))
            .expect("expected.tsv reads");
    let probes: Vec<Probe> = expected
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Probe::from_line(l).expect("probe line parses"))
        .collect();
    assert!(expected.lines().all(|l| l.ends_with("allow")));
    failed_build_leaves_nothing_behind(&cluster);

    let externals: Vec<IpAddr> = vec![
        "192.0.2.10".parse().unwrap(),
        "198.51.100.20".parse().unwrap(),
    ];
    let external_ports = vec![
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 81),
        (Protocol::Udp, 80),
        (Protocol::Udp, 81),
    ];
    let started = Instant::now();
    let bed = Testbed::build(
        &cluster,
        &TestbedOptions {
            external: externals.clone(),
            external_ports: external_ports.clone(),
            ..TestbedOptions::default()
        },
    )
    .expect("testbed builds");
    let prefix = bed.prefix().to_owned();
    eprintln!(
        "built {} namespaces with prefix {prefix} in {:?}",
        bed.namespaces().len(),
        started.elapsed()
    );
    assert_eq!(bed.pods().len(), 9, "every pod of cluster.yaml is built");
    assert!(bed.skipped().is_empty());
    assert_eq!(bed.namespaces().len(), 11);
    let listed = netns_list();
    for ns in bed.namespaces() {
        assert!(listed.contains(ns.as_str()), "{ns} exists");
    }

    // TCP and UDP probes to ports that have a listener: each must be answered.
    let timeout = Duration::from_millis(1500);
    let answered: Vec<Probe> = probes
        .iter()
        .filter(|p| p.protocol != Protocol::Sctp && listens(&cluster, p, &external_ports))
        .cloned()
        .collect();
    assert!(
        answered.len() > 300,
        "{} probes with listeners",
        answered.len()
    );
    all_complete(&bed, &answered, timeout, "TCP/UDP");
    spot_checks(&bed, timeout);

    // SCTP: every INIT of the case (pods, outside and self) is seen at its
    // destination.
    let sctp: Vec<Probe> = probes
        .iter()
        .filter(|p| p.protocol == Protocol::Sctp)
        .cloned()
        .collect();
    all_complete(&bed, &sctp, Duration::from_secs(1), "SCTP");
    let names = bed.namespaces().to_vec();
    drop(bed);
    let listed = netns_list();
    assert!(
        !listed.contains(&prefix),
        "namespaces left behind after drop:\n{listed}"
    );
    for ns in names {
        assert!(!Path::new("/run/netns").join(&ns).exists(), "{ns} removed");
    }
    eprintln!("total {:?}", started.elapsed());
}

/// Called first by the test above (one test, so that no other build runs
/// while the namespace list is compared).
fn failed_build_leaves_nothing_behind(cluster: &Cluster) {
    // The same external address twice: the second `ip addr add` fails after
    // the node and the outside namespace exist.
    let ext: IpAddr = "192.0.2.10".parse().unwrap();
    let err = Testbed::build(
        cluster,
        &TestbedOptions {
            external: vec![ext, ext],
            external_ports: Vec::new(),
            ..TestbedOptions::default()
        },
    )
    .expect_err("a duplicate address fails the build");
    let message = err.to_string();
    assert!(message.contains("192.0.2.10"), "{err}");
    // The failing command names a namespace of this build: `pfXXXX-...`.
    // Other testbed tests may run at the same time, so look for this
    // build's prefix only.
    let prefix = message
        .match_indices("pf")
        .map(|(i, _)| &message[i..])
        .find(|s| s.len() > 7 && s[2..6].bytes().all(|b| b.is_ascii_hexdigit()) && &s[6..7] == "-")
        .map_or_else(
            || panic!("the error names no testbed namespace: {message}"),
            |s| &s[..7],
        );
    let listed = netns_list();
    let left: Vec<&str> = listed.lines().filter(|l| l.starts_with(prefix)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Runs `probes` in parallel and asserts that every one completed.
fn all_complete(bed: &Testbed, probes: &[Probe], timeout: Duration, what: &str) {
    let t = Instant::now();
    let results = bed.probe_all(probes, timeout, 32);
    let failed: Vec<String> = probes
        .iter()
        .zip(&results)
        .filter(|(_, r)| !matches!(r, Ok(true)))
        .map(|(p, r)| format!("{p}: {r:?}"))
        .collect();
    eprintln!("{} {what} probes in {:?}", probes.len(), t.elapsed());
    assert!(
        failed.is_empty(),
        "{what} probes failed:\n{}",
        failed.join("\n")
    );
}

/// Single probes whose outcome says more than allow/deny.
fn spot_checks(bed: &Testbed, timeout: Duration) {
    // The answer names the pod that answered, so routing went to the right one.
    let probe = Probe::from_line("x/a\ty/b\tTCP\t80").unwrap();
    assert_eq!(
        bed.probe_outcome(&probe, timeout).unwrap(),
        ProbeOutcome::Answered("y/b".into())
    );
    let probe = Probe::from_line("ext:198.51.100.20\tz/c\tUDP\t8080").unwrap();
    assert_eq!(
        bed.probe_outcome(&probe, timeout).unwrap(),
        ProbeOutcome::Answered("z/c".into())
    );
    let probe = Probe::from_line("z/c\text:192.0.2.10\tTCP\t81").unwrap();
    assert_eq!(
        bed.probe_outcome(&probe, timeout).unwrap(),
        ProbeOutcome::Answered("ext:192.0.2.10".into())
    );
    // Ports without a listener: the first packet arrives and is refused.
    for line in [
        "x/a\ty/b\tTCP\t79",
        "x/a\tx/c\tTCP\t8080",
        "y/a\tz/b\tUDP\t82",
    ] {
        let probe = Probe::from_line(line).unwrap();
        assert_eq!(
            bed.probe_outcome(&probe, timeout).unwrap(),
            ProbeOutcome::Refused,
            "{line}"
        );
    }
    // Unknown endpoints are errors, not verdicts.
    assert!(
        bed.probe(&Probe::from_line("x/nope\tx/a\tTCP\t80").unwrap(), timeout)
            .is_err()
    );
    assert!(
        bed.probe(
            &Probe::from_line("ext:192.0.2.200\tx/a\tTCP\t80").unwrap(),
            timeout
        )
        .is_err()
    );
}
