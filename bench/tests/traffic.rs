//! The AF_XDP generator and sink: every frame sent arrives, counted per
//! flow, in order, with a latency; over the benchmark's own veth pair and
//! over two given interfaces (the `--nic` path, here a veth pair standing
//! in for a NIC's two ports). Needs root; skips otherwise.

use std::net::Ipv4Addr;
use std::time::Duration;

use podfence_bench::testbed::{self, in_netns};
use podfence_bench::traffic::frames::TrafficSpec;
use podfence_bench::traffic::generator::{GeneratorConfig, Pace};
use podfence_bench::traffic::sink::{Sink, SinkConfig};
use podfence_bench::traffic::{Namespaces, SelfCheck, Wire, generate, link_mac, self_check};
use podfence_testkit::netns;
use podfence_testkit::{Need, skip_unless};

fn spec() -> TrafficSpec {
    let mut spec = TrafficSpec::new(Ipv4Addr::new(10, 70, 0, 1), Ipv4Addr::new(10, 70, 0, 2));
    spec.flows = 16;
    spec
}

/// What both wires must show: the generator ran on its own and into the
/// sink, and what the sink got is what was sent, flow by flow.
fn check(r: &SelfCheck, flows: usize) {
    assert!(
        r.into_drop.sent > 0,
        "the generator sent nothing on its own"
    );
    let (sent, rx) = (&r.direct_sent, &r.direct_received);
    assert!(sent.sent > 0);
    // Foreign frames (IPv6 router solicitations of a link coming up) are
    // counted apart, never as a flow's.
    assert_eq!(rx.per_flow.len(), flows);
    assert_eq!(rx.per_flow.iter().sum::<u64>(), rx.received);
    for (flow, (&got, &was_sent)) in rx.per_flow.iter().zip(&sent.sent_per_flow).enumerate() {
        assert!(
            got <= was_sent,
            "flow {flow}: {got} received, {was_sent} sent"
        );
    }
    assert!(rx.received > 0, "nothing arrived");
    assert_eq!(rx.reordered, 0, "one queue cannot reorder");
    assert_eq!(
        rx.latency_ns.len(),
        rx.received,
        "every frame carries a timestamp"
    );
}

#[test]
fn generator_and_sink_over_their_own_veth_pair() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let r = self_check(
        &spec(),
        &Wire::Veth,
        1,
        Duration::from_millis(300),
        &[usize::MAX],
        Some(0),
    )
    .expect("self check");
    check(&r, 16);
}

#[test]
fn generator_and_sink_over_two_given_interfaces() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    // Two interfaces of one namespace, as a NIC's two ports would be.
    let mut namespaces = Namespaces::default();
    let ns = format!("{}-nic", testbed::run_prefix());
    namespaces.add(&ns).expect("namespace");
    netns::ip(
        &ns,
        &[
            "link", "add", "port0", "type", "veth", "peer", "name", "port1",
        ],
    );
    netns::ip(&ns, &["link", "set", "port0", "up"]);
    netns::ip(&ns, &["link", "set", "port1", "up"]);
    let wire = Wire::Nic {
        tx: "port0".into(),
        rx: "port1".into(),
        zero_copy: Some(false),
    };
    let r = in_netns(&ns, || {
        self_check(
            &spec(),
            &wire,
            1,
            Duration::from_millis(300),
            &[usize::MAX],
            Some(0),
        )
        .map_err(std::io::Error::other)
    })
    .expect("self check on two interfaces");
    check(&r, 16);
    assert!(!r.zero_copy, "copy mode was asked for");
}

#[test]
fn paced_traffic_arrives_whole() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mut namespaces = Namespaces::default();
    let ns = format!("{}-paced", testbed::run_prefix());
    namespaces.add(&ns).expect("namespace");
    netns::ip(
        &ns,
        &["link", "add", "tx0", "type", "veth", "peer", "name", "rx0"],
    );
    netns::ip(&ns, &["link", "set", "tx0", "up"]);
    netns::ip(&ns, &["link", "set", "rx0", "up"]);
    let mut spec = spec();
    spec.src_mac = link_mac(&ns, "tx0").expect("mac");
    spec.dst_mac = link_mac(&ns, "rx0").expect("mac");
    let sink = Sink::start(
        Some(&ns),
        SinkConfig {
            ifaces: vec!["rx0".into()],
            queues: 1,
            xdp_mode: podfence_bpf::XdpMode::Native,
            zero_copy: None,
            core: Some(0),
            spec: spec.clone(),
        },
    )
    .expect("sink");
    // 20,000 packets per second leaves every thread time to keep up.
    let sent = generate(
        Some(&ns),
        &GeneratorConfig::new("tx0"),
        1,
        &spec,
        Pace::Rate(20_000.0),
        Duration::from_millis(300),
        &[usize::MAX],
    )
    .expect("generator");
    let rx = sink
        .settle(Duration::from_millis(50), Duration::from_secs(2))
        .expect("sink report");
    sink.stop().expect("sink stops");
    assert!(sent.sent > 0);
    assert_eq!(rx.received, sent.sent, "paced traffic lost packets");
    assert_eq!(rx.per_flow, sent.sent_per_flow);
    assert_eq!(rx.gaps, 0);
}
