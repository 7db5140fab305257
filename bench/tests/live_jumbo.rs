//! TCP between two pods, and between the node and a pod, through the
//! running agent, at MTU 9000 and at 1500: several MB each way, byte-exact. At 9000 the segments are jumbo frames
//! (MSS near 8948), which cross the datapath as AF_XDP multi-buffer chains:
//! received by the frags-aware redirector, made whole by the port, switched,
//! and sent to the other pod's veth as a chain; in native XDP (what `auto`
//! gets on a jumbo veth) and in generic. Needs root; skips otherwise.

mod common;

use std::io;
use std::net::SocketAddr;

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::echo::{pattern, tcp_echo};
use podfence_bench::testbed::{TestbedOptions, in_netns};
use podfence_bpf::{AttachMode, XdpMode, attached_programs};
use podfence_control::agent::AgentOptions;
use podfence_control::sources::manifests;
use podfence_testkit::{Need, skip_unless};

/// Bytes sent each way.
const TRANSFER: usize = 8 << 20;

/// A port no testbed server uses.
const PORT: u16 = 5201;

/// The client in namespace `client` sends `TRANSFER` bytes to pod b, which
/// echoes them; the client checks what came back. Returns the MSS of its
/// connection.
fn echo_transfer(node: &LiveNode, client: &str) -> u32 {
    let b = &node.testbed().pods()["x/b"];
    let data = pattern(TRANSFER, 0);
    let echo = tcp_echo(&b.netns, client, SocketAddr::new(b.ips[0], PORT), &data)
        .expect("echo through pod b");
    assert_eq!(
        echo.server_received, TRANSFER as u64,
        "bytes pod b received"
    );
    assert_eq!(echo.back.len(), TRANSFER, "bytes pod a got back");
    if let Some(at) = echo.back.iter().zip(&data).position(|(x, y)| x != y) {
        panic!("echo differs from what was sent at byte {at}");
    }
    echo.mss
}

/// Runs the echo transfer at `mtu` (testbed veths and agent alike), the
/// redirectors attached in `mode`, and checks the agent dropped nothing for
/// its length.
fn transfer_at(mtu: u32, mode: XdpMode) -> u32 {
    let cluster = manifests::load_str(std::path::Path::new("inline"), common::TWO_PODS)
        .expect("loads")
        .cluster;
    let options = TestbedOptions {
        mtu: Some(mtu),
        ..TestbedOptions::default()
    };
    let mut agent = AgentOptions {
        mtu,
        ..AgentOptions::default()
    };
    agent.redirect.mode = mode;
    let expected = match mode {
        XdpMode::Generic => AttachMode::Generic,
        _ => AttachMode::Native,
    };
    let node = LiveNode::start(&cluster, &options, agent).expect("testbed and agent start");
    // Auto: the redirector went native on the pods' veths, jumbo or not.
    let bed = node.testbed();
    for pod in bed.pods().values() {
        let progs = in_netns(bed.node_netns(), || {
            attached_programs(pod.host_veth.as_str()).map_err(io::Error::other)
        })
        .expect("query XDP");
        let modes: Vec<AttachMode> = progs.iter().map(|p| p.mode).collect();
        assert_eq!(modes, [expected], "{}", pod.host_veth);
    }
    if mode == XdpMode::Generic {
        // Generic XDP sees what a pod's stack hands its veth before
        // segmentation (TSO/GSO: up to 64 KB), longer than any MTU the
        // datapath carries; the agent warns. The documented remedy: the
        // pods segment in software.
        for pod in bed.pods().values() {
            let out = std::process::Command::new("ip")
                .args(["-n", &pod.netns, "link", "set", "eth0", "gso_max_segs", "1"])
                .output()
                .expect("ip");
            assert!(out.status.success(), "{out:?}");
        }
    }
    // Pod to pod, then node to pod (through pf-host and pf-dp).
    let mss = echo_transfer(&node, &bed.pods()["x/a"].netns);
    echo_transfer(&node, bed.node_netns());
    let reports = node.stop().expect("agent stops cleanly");
    let too_long: u64 = reports.iter().map(|r| r.switch.too_long).sum();
    let forwarded: u64 = reports.iter().flat_map(|r| &r.switch.forwarded).sum();
    let oversize: u64 = reports.iter().map(|r| r.ports_oversize).sum();
    assert_eq!(
        (too_long, oversize),
        (0, 0),
        "frames dropped for their length (switch, ports)"
    );
    assert!(
        forwarded as usize >= 4 * TRANSFER / 9000,
        "the transfer did not cross the datapath ({forwarded} frames forwarded)"
    );
    mss
}

#[test]
fn tcp_between_pods_at_mtu_9000_is_byte_exact() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mss = transfer_at(9000, XdpMode::Auto);
    assert!(mss > 8000, "MSS {mss}: no jumbo frames");
}

#[test]
fn tcp_between_pods_at_mtu_9000_in_generic_mode_is_byte_exact() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mss = transfer_at(9000, XdpMode::Generic);
    assert!(mss > 8000, "MSS {mss}: no jumbo frames");
}

#[test]
fn tcp_between_pods_at_mtu_1500_is_byte_exact() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mss = transfer_at(1500, XdpMode::Auto);
    assert!(mss <= 1460, "MSS {mss} at MTU 1500");
}
