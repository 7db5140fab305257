//! Dual-stack wiring: two pods with IPv4 and IPv6 addresses, one
//! host-network pod and one finished pod (both skipped), an IPv6 outside
//! address. TCP, UDP and SCTP over IPv6 between pods and from outside, with
//! no agent running. Needs root and `ip netns`; skips otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podfence_bench::testbed::{ProbeOutcome, Testbed, TestbedOptions};
use podfence_control::model::Protocol;
use podfence_control::probe::Probe;
use podfence_testkit::{Need, skip_unless};

fn pod(name: &str, v4: &str, v6: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: d}}\n\
         spec:\n  containers:\n  - name: c\n    ports:\n    - {{name: t, containerPort: 80, protocol: TCP}}\n    \
         - {{name: u, containerPort: 53, protocol: UDP}}\n\
         status:\n  phase: Running\n  podIPs:\n  - ip: {v4}\n  - ip: {v6}\n---\n"
    )
}

#[test]
fn dual_stack_pods_and_skipped_pods() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mut text = pod("p", "10.60.0.1", "fd00:60::1") + &pod("q", "10.60.0.2", "fd00:60::2");
    text.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: d}\n\
         spec: {hostNetwork: true, containers: [{name: c}]}\n\
         status: {phase: Running, podIP: 172.18.0.2, hostIP: 172.18.0.2}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: f, namespace: d}\n\
         spec: {containers: [{name: c}]}\nstatus: {phase: Succeeded, podIP: 10.60.0.9}\n",
    );
    let cluster = podfence_control::sources::manifests::load_str(Path::new("dual.yaml"), &text)
        .expect("manifests load")
        .cluster;
    let bed = Testbed::build(
        &cluster,
        &TestbedOptions {
            external: vec!["2001:db8::10".parse().unwrap()],
            external_ports: vec![(Protocol::Tcp, 443)],
            ..TestbedOptions::default()
        },
    )
    .expect("testbed builds");
    assert_eq!(bed.pods().len(), 2);
    let skipped: Vec<&str> = bed.skipped().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(skipped, ["d/f", "d/h"]);
    let timeout = Duration::from_secs(2);
    let outcome = |line: &str| bed.probe_outcome(&Probe::from_line(line).unwrap(), timeout);
    // Pod to pod prefers the first family (IPv4), as the model's resolve does.
    assert_eq!(
        outcome("d/p\td/q\tTCP\t80").unwrap(),
        ProbeOutcome::Answered("d/q".into())
    );
    // From the IPv6-only outside, everything is IPv6.
    assert_eq!(
        outcome("ext:2001:db8::10\td/q\tTCP\t80").unwrap(),
        ProbeOutcome::Answered("d/q".into())
    );
    assert_eq!(
        outcome("ext:2001:db8::10\td/p\tUDP\t53").unwrap(),
        ProbeOutcome::Answered("d/p".into())
    );
    assert_eq!(
        outcome("ext:2001:db8::10\td/p\tSCTP\t80").unwrap(),
        ProbeOutcome::Seen
    );
    assert_eq!(
        outcome("d/q\text:2001:db8::10\tTCP\t443").unwrap(),
        ProbeOutcome::Answered("ext:2001:db8::10".into())
    );
    assert_eq!(
        outcome("d/q\text:2001:db8::10\tSCTP\t9").unwrap(),
        ProbeOutcome::Seen
    );
    let prefix = bed.prefix().to_owned();
    drop(bed);
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&prefix));
}
