//! Checksum offload through the running agent: TCP and UDP between two
//! pods, and TCP between the node and a pod, with the checksums pods leave
//! to offload finished by the kernel (AF_XDP TX metadata) and, forced, by
//! the datapath in software (`--checksum-offload software` on `podfence
//! run`, whose start-up line says which is in force). Either way payloads arrive byte-exact, no
//! receiver counts a checksum error (`/proc/net/snmp` `InCsumErrors`) and
//! TCP hardly retransmits; the switch's counters say which path carried
//! the begun checksums. Needs root; the TX metadata run skips, saying so,
//! only where the kernel lacks it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::echo::{pattern, tcp_echo};
use podfence_bench::testbed::{TestbedOptions, in_netns};
use podfence_control::agent::AgentOptions;
use podfence_control::agent::metrics::WorkerCounters;
use podfence_control::sources::manifests;
use podfence_testkit::{Need, skip_unless};

/// Bytes sent each way over TCP.
const TRANSFER: usize = 4 << 20;

/// Ports no testbed server uses.
const TCP_PORT: u16 = 5202;
const UDP_PORT: u16 = 5203;

/// The counters of a namespace's stack that say whether checksums were
/// right: UDP and TCP `InCsumErrors`, TCP `RetransSegs` and `OutSegs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Snmp {
    udp_csum_errors: u64,
    tcp_csum_errors: u64,
    retrans: u64,
    out_segs: u64,
}

fn snmp(netns: &str) -> Snmp {
    let counters = in_netns(netns, || Ok(podfence_testkit::netns::Snmp::read())).unwrap();
    Snmp {
        udp_csum_errors: counters.get("Udp", "InCsumErrors"),
        tcp_csum_errors: counters.get("Tcp", "InCsumErrors"),
        retrans: counters.get("Tcp", "RetransSegs"),
        out_segs: counters.get("Tcp", "OutSegs"),
    }
}

/// The client in namespace `client` sends `TRANSFER` bytes to pod b, which
/// echoes them; the echo must be what was sent.
fn tcp_echo_to_b(node: &LiveNode, client: &str) {
    let b = &node.testbed().pods()["x/b"];
    let data = pattern(TRANSFER, 7);
    let echo = tcp_echo(&b.netns, client, SocketAddr::new(b.ips[0], TCP_PORT), &data)
        .expect("echo through pod b");
    assert_eq!(echo.server_received, TRANSFER as u64);
    assert_eq!(echo.back.len(), TRANSFER, "bytes echoed");
    if let Some(at) = echo.back.iter().zip(&data).position(|(x, y)| x != y) {
        panic!("echo differs from what was sent at byte {at}");
    }
}

/// Pod a sends datagrams of many lengths to pod b, one at a time; each
/// must arrive byte-exact.
fn udp_datagrams(node: &LiveNode) {
    let (a, b) = (&node.testbed().pods()["x/a"], &node.testbed().pods()["x/b"]);
    let rx = in_netns(&b.netns, || UdpSocket::bind(("0.0.0.0", UDP_PORT))).expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = in_netns(&a.netns, || UdpSocket::bind(("0.0.0.0", 0))).expect("bind");
    let dst = SocketAddr::new(b.ips[0], UDP_PORT);
    let mut buf = vec![0u8; 2048];
    for (i, len) in (0..1473).step_by(37).chain([1472]).enumerate() {
        let data = pattern(len, i as u32);
        tx.send_to(&data, dst).expect("send");
        let (n, _) = rx.recv_from(&mut buf).expect("the datagram arrives");
        assert_eq!(&buf[..n], &data[..], "datagram {i} of {len} bytes");
    }
}

/// Runs the traffic through an agent whose ports leave checksums to the
/// kernel (`offload`) or finish them in software. Returns `false` when
/// the kernel lacks TX metadata and `offload` was asked for.
fn traffic(offload: bool) -> bool {
    let cluster = manifests::load_str(std::path::Path::new("inline"), common::TWO_PODS)
        .expect("loads")
        .cluster;
    let counters = Arc::new(WorkerCounters::default());
    let mut agent = AgentOptions {
        worker_counters: Arc::clone(&counters),
        ..AgentOptions::default()
    };
    agent.xsk.checksum_offload = offload;
    let node = LiveNode::start(&cluster, &TestbedOptions::default(), agent)
        .expect("testbed and agent start");
    match counters.checksum_offload() {
        Some(false) if offload => {
            eprintln!(
                "SKIPPED: this kernel lacks AF_XDP TX checksum metadata (the agent fell back \
                 to software; see its start-up line)"
            );
            node.stop().expect("agent stops cleanly");
            return false;
        }
        mode => assert_eq!(mode, Some(offload), "the mode the agent reports"),
    }
    let bed = node.testbed();
    let namespaces = [
        bed.pods()["x/a"].netns.clone(),
        bed.pods()["x/b"].netns.clone(),
        bed.node_netns().to_owned(),
    ];
    let before: Vec<Snmp> = namespaces.iter().map(|n| snmp(n)).collect();
    udp_datagrams(&node);
    tcp_echo_to_b(&node, &namespaces[0]);
    tcp_echo_to_b(&node, &namespaces[2]);
    let after: Vec<Snmp> = namespaces.iter().map(|n| snmp(n)).collect();
    for ((ns, b), a) in namespaces.iter().zip(&before).zip(&after) {
        assert_eq!(
            (a.udp_csum_errors, a.tcp_csum_errors),
            (b.udp_csum_errors, b.tcp_csum_errors),
            "{ns}: checksum errors counted"
        );
        let (retrans, sent) = (a.retrans - b.retrans, a.out_segs - b.out_segs);
        eprintln!("{ns}: {sent} TCP segments sent, {retrans} retransmitted");
        assert!(
            retrans * 100 <= sent.max(100),
            "{ns}: {retrans} of {sent} retransmitted"
        );
    }
    let reports = node.stop().expect("agent stops cleanly");
    let offloaded: u64 = reports.iter().map(|r| r.switch.checksums_offloaded).sum();
    let finished: u64 = reports.iter().map(|r| r.switch.checksums_finished).sum();
    eprintln!("offload {offload}: {offloaded} checksums left to the kernel, {finished} finished");
    if offload {
        assert!(
            offloaded > 100,
            "begun checksums left to the kernel: {offloaded}"
        );
    } else {
        assert_eq!(offloaded, 0);
        assert!(
            finished > 100,
            "begun checksums finished in software: {finished}"
        );
    }
    true
}

#[test]
fn tcp_and_udp_with_checksums_left_to_the_kernel() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    traffic(true);
}

#[test]
fn tcp_and_udp_with_checksums_finished_in_software() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    assert!(traffic(false));
}

/// `podfence run` says at start who finishes checksums: the kernel by
/// default (where it can), software when told.
#[test]
fn the_agent_says_at_start_who_finishes_checksums() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let (bed, dir, manifests) =
        common::testbed_with_manifests(common::TWO_PODS, &TestbedOptions::default(), "csum");
    let source = [
        "--manifests".to_owned(),
        manifests.to_string_lossy().into_owned(),
    ];
    let log = dir.0.join("agent.log");
    for (extra, want) in [
        (
            &["--checksum-offload", "software"][..],
            "checksum offload: software (asked for software)",
        ),
        (&[][..], "checksum offload: "),
    ] {
        let _ = std::fs::remove_file(&log);
        let agent = common::AgentProcess::start_logged(
            bed.node_netns(),
            &source,
            &dir.0,
            extra,
            Some(&log),
        );
        agent.terminate();
        let text = std::fs::read_to_string(&log).expect("agent log");
        let line = text
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no {want:?} in the log:\n{text}"));
        eprintln!("{line}");
        if extra.is_empty() && !line.contains("AF_XDP TX metadata") {
            eprintln!("SKIPPED (default run): this kernel lacks AF_XDP TX checksum metadata");
        }
    }
}
