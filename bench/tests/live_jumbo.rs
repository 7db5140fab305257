//! TCP between two pods, and between the node and a pod, through the
//! running agent, at MTU 9000 and at 1500: several MB each way, byte-exact. At 9000 the segments are jumbo frames
//! (MSS near 8948), which cross the datapath as AF_XDP multi-buffer chains:
//! received by the frags-aware redirector, made whole by the port, switched,
//! and sent to the other pod's veth as a chain; in native XDP (what `auto`
//! gets on a jumbo veth) and in generic. Needs root; skips otherwise.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use podfence_bench::live::LiveNode;
use podfence_bench::testbed::{TestbedOptions, in_netns};
use podfence_bpf::{AttachMode, XdpMode, attached_programs};
use podfence_control::agent::AgentOptions;
use podfence_control::sources::manifests;
use podfence_testkit::{Need, skip_unless};

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {kubernetes.io/metadata.name: x}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {pod: a}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.1, podIPs: [{ip: 10.244.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {pod: b}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
";

/// Bytes sent each way.
const TRANSFER: usize = 8 << 20;

/// A port no testbed server uses.
const PORT: u16 = 5201;

/// The bytes of the transfer: position-dependent, so that a lost, repeated
/// or reordered stretch shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[i % 4])
        .collect()
}

/// The connection's maximum segment size (`TCP_MAXSEG`).
fn mss(stream: &TcpStream) -> u32 {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of their sizes for the
    // duration of the call; the fd is the stream's open socket.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    assert_eq!(ret, 0, "TCP_MAXSEG: {}", io::Error::last_os_error());
    u32::try_from(value).expect("positive")
}

/// The client in namespace `client` sends `TRANSFER` bytes to pod b, which
/// echoes them; the client checks what came back. Returns the MSS of its
/// connection.
fn echo_transfer(node: &LiveNode, client: &str) -> u32 {
    let b = &node.testbed().pods()["x/b"];
    let listener = in_netns(&b.netns, || TcpListener::bind(("0.0.0.0", PORT))).expect("listen");
    let server = std::thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut writer = conn.try_clone()?;
        io::copy(&mut conn, &mut writer)
    });
    let dst = SocketAddr::new(b.ips[0], PORT);
    let stream = in_netns(client, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .expect("the client connects to pod b");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mss = mss(&stream);
    let data = pattern(TRANSFER);
    let sent = data.clone();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::with_capacity(TRANSFER);
    (&stream).read_to_end(&mut back).expect("read the echo");
    sender.join().unwrap().expect("send");
    let echoed = server.join().unwrap().expect("echo server");
    assert_eq!(echoed, TRANSFER as u64, "bytes pod b received");
    assert_eq!(back.len(), TRANSFER, "bytes pod a got back");
    if let Some(at) = back.iter().zip(&data).position(|(x, y)| x != y) {
        panic!("echo differs from what was sent at byte {at}");
    }
    mss
}

/// Runs the echo transfer at `mtu` (testbed veths and agent alike), the
/// redirectors attached in `mode`, and checks the agent dropped nothing for
/// its length.
fn transfer_at(mtu: u32, mode: XdpMode) -> u32 {
    let cluster = manifests::load_str(std::path::Path::new("inline"), CLUSTER)
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
