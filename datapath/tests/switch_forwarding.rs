//! The switch forwards what the worker lets through: to the destination
//! pod's port with MACs rewritten and TTL / hop limit decremented, to the
//! host port for everything else (MACs rewritten, TTL left to the kernel),
//! nothing for denied packets, expired pod-to-pod packets to the kernel
//! unmodified, and frames for the port they came from nowhere.

use podfence_testkit::frames;
use podfence_testkit::tables::{two_pods, v4, v6};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use podfence_datapath::ServiceTable;
use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::Port;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::switch::{Fib, Route, Switch};
use podfence_datapath::wire::checksum::internet_checksum;
use podfence_datapath::worker::{Worker, WorkerConfig};

const HOST: usize = 0;
const POD_A: usize = 1;
const POD_B: usize = 2;

const PF_HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x01];
const PF_DP_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x02];
const POD_A_MAC: [u8; 6] = [0x0a, 0, 0, 0, 1, 0x01];
const VETH_A_MAC: [u8; 6] = [0x0a, 0, 0, 0, 1, 0x02];
const POD_B_MAC: [u8; 6] = [0x0a, 0, 0, 0, 2, 0x01];
const VETH_B_MAC: [u8; 6] = [0x0a, 0, 0, 0, 2, 0x02];

fn outside() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
}

fn fib() -> Fib {
    let mut fib = Fib::new(Route {
        port: HOST,
        dst_mac: PF_HOST_MAC,
        src_mac: PF_DP_MAC,
    });
    let a = Route {
        port: POD_A,
        dst_mac: POD_A_MAC,
        src_mac: VETH_A_MAC,
    };
    let b = Route {
        port: POD_B,
        dst_mac: POD_B_MAC,
        src_mac: VETH_B_MAC,
    };
    for (addr, route) in [(v4(1), a), (v6(1), a), (v4(2), b), (v6(2), b)] {
        assert!(fib.insert(addr, route).is_none());
    }
    fib
}

fn build(src: IpAddr, dst: IpAddr, transport: Transport, payload: usize) -> Vec<u8> {
    FrameSpec {
        src,
        dst,
        transport,
        payload_len: payload,
        payload_fill: 0x5a,
    }
    .build()
}

fn syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let t = Transport::Tcp {
        src_port: sport,
        dst_port: dport,
        flags: tcp_flags::SYN,
    };
    build(src, dst, t, 10)
}

fn udp(src: IpAddr, dst: IpAddr, sport: u16) -> Vec<u8> {
    build(
        src,
        dst,
        Transport::Udp {
            src_port: sport,
            dst_port: 53,
        },
        20,
    )
}

/// Sets the TTL (IPv4, recomputing the header checksum) or hop limit.
fn with_ttl(mut f: Vec<u8>, ttl: u8) -> Vec<u8> {
    if f[12..14] == [0x86, 0xdd] {
        f[14 + 7] = ttl;
    } else {
        f[14 + 8] = ttl;
        f[14 + 10..14 + 12].fill(0);
        let sum = internet_checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    f
}

/// Pod .2 asks for .1, broadcast.
fn arp() -> Vec<u8> {
    let request = frames::arp_request(POD_B_MAC, [10, 0, 0, 2], [10, 0, 0, 1]);
    frames::ethernet_tagged([0xff; 6], POD_B_MAC, &[], frames::ETH_ARP, &request)
}

fn ttl_of(f: &[u8]) -> u8 {
    if f[12..14] == [0x86, 0xdd] {
        f[14 + 7]
    } else {
        f[14 + 8]
    }
}

fn assert_ipv4_header_valid(f: &[u8]) {
    assert_eq!(f[12..14], [0x08, 0x00]);
    assert_eq!(internet_checksum(&f[14..34]), 0, "IPv4 header checksum");
}

/// Everything after the MACs, except the TTL / hop limit and the IPv4
/// header checksum, is as received.
fn assert_same_packet(sent: &[u8], received: &[u8]) {
    assert_eq!(sent.len(), received.len());
    let mut a = sent[12..].to_vec();
    let mut b = received[12..].to_vec();
    for f in [&mut a, &mut b] {
        if f[..2] == [0x86, 0xdd] {
            f[2 + 7] = 0;
        } else {
            f[2 + 8] = 0;
            f[2 + 10..2 + 12].fill(0);
        }
    }
    assert_eq!(a, b);
}

fn port(name: &str, frames: &[Vec<u8>]) -> MemoryPort {
    MemoryPort::new(
        name,
        LinkType::Ethernet,
        frames.iter().map(Vec::as_slice),
        1,
    )
    .keeping_sent(100)
}

#[test]
fn switch_forwards_rewrites_and_drops() {
    // Received on pod B's port.
    let from_b = vec![
        syn(v4(2), v4(1), 4000, 80),              // 0: allowed, to pod A
        syn(v4(2), v4(1), 4001, 22),              // 1: denied
        udp(v4(2), outside(), 5000),              // 2: to the host port
        syn(v6(2), v6(1), 4002, 80),              // 3: IPv6, allowed, to pod A
        with_ttl(syn(v4(2), v4(1), 4003, 80), 1), // 4: expires
        with_ttl(syn(v6(2), v6(1), 4004, 80), 1), // 5: expires
        arp(),                                    // 6: not IP
        with_ttl(udp(v4(2), outside(), 5001), 1), // 7: TTL 1 to the kernel: fine
        syn(v6(2), v6(1), 4005, 443),             // 8: IPv6, denied
    ];
    // Received on the host port.
    let from_host = vec![
        udp(outside(), v4(2), 6000),  // 0: to pod B, not decremented
        udp(outside(), v4(1), 6001),  // 1: denied (pod A takes TCP 80 only)
        udp(outside(), v4(99), 6002), // 2: not a pod: would hairpin
    ];
    let ports = vec![port("host", &from_host), port("a", &[]), port("b", &from_b)];
    let mut switch = Switch::new(ports, Arc::new(fib()), 2048).unwrap();
    let publisher = Publisher::new(two_pods(1, Some(80), false), ServiceTable::empty());
    let conntrack = Conntrack::new(256, Timeouts::default());
    let stats = WorkerStats::default();
    let mut worker = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    while switch.run_batch(&mut worker, POD_B).unwrap() > 0 {}
    while switch.run_batch(&mut worker, HOST).unwrap() > 0 {}

    // Pod A got the two allowed connections, routed by the switch.
    let to_a = switch.port(POD_A).unwrap().sent();
    assert_eq!(to_a.len(), 2, "to pod A");
    for (sent, received) in to_a.iter().zip([&from_b[0], &from_b[3]]) {
        assert_eq!(sent[..6], POD_A_MAC);
        assert_eq!(sent[6..12], VETH_A_MAC);
        assert_eq!(ttl_of(sent), ttl_of(received) - 1);
        assert_eq!(ttl_of(sent), 63);
        assert_same_packet(sent, received);
    }
    assert_ipv4_header_valid(&to_a[0]);
    assert_eq!(to_a[1][12..14], [0x86, 0xdd]);

    // The host port: the outside-bound packets (TTL untouched, the kernel
    // routes them), the expired pod-to-pod ones (unmodified, for the
    // kernel's time exceeded) and the ARP frame (unchanged).
    let to_host = switch.port(HOST).unwrap().sent();
    let expected = [&from_b[2], &from_b[4], &from_b[5], &from_b[6], &from_b[7]];
    assert_eq!(to_host.len(), expected.len(), "to the host port");
    for (sent, received) in to_host.iter().zip(expected) {
        if received[12..14] == [0x08, 0x06] {
            assert_eq!(sent, received, "non-IP frames pass unchanged");
            continue;
        }
        assert_eq!(sent[..6], PF_HOST_MAC);
        assert_eq!(sent[6..12], PF_DP_MAC);
        assert_eq!(sent[12..], received[12..], "TTL and all else untouched");
        if sent[12..14] == [0x08, 0x00] {
            assert_ipv4_header_valid(sent);
        }
    }
    assert_eq!(ttl_of(&to_host[1]), 1);
    assert_eq!(ttl_of(&to_host[2]), 1);

    // Pod B got the packet from the outside, not decremented (the kernel
    // routed it to pf-host and decremented it already).
    let to_b = switch.port(POD_B).unwrap().sent();
    assert_eq!(to_b.len(), 1, "to pod B");
    assert_eq!(to_b[0][..6], POD_B_MAC);
    assert_eq!(to_b[0][6..12], VETH_B_MAC);
    assert_eq!(to_b[0][12..], from_host[0][12..]);
    assert_ipv4_header_valid(&to_b[0]);

    let s = switch.stats();
    assert_eq!(s.forwarded, [5, 2, 1]);
    assert_eq!(s.policy_dropped, 3, "{s:?}");
    assert_eq!(s.ttl_expired, 2);
    assert_eq!(s.not_ip, 1);
    assert_eq!(s.hairpin, 1);
    assert_eq!(
        (
            s.malformed,
            s.tx_dropped,
            s.tx_errors,
            s.too_long,
            s.not_ethernet
        ),
        (0, 0, 0, 0, 0)
    );
    let tx: Vec<u64> = (0..3)
        .map(|i| switch.port(i).unwrap().stats().tx_frames)
        .collect();
    assert_eq!(tx, [5, 2, 1], "one frame on the wire per forwarded packet");
}

/// A port that accepts only `accept` frames per `send` call and counts the
/// calls.
#[derive(Debug)]
struct Narrow {
    inner: MemoryPort,
    accept: usize,
    calls: usize,
}

impl Port for Narrow {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn recv(
        &mut self,
        descs: &mut [podfence_datapath::ports::RxDesc],
    ) -> Result<usize, podfence_datapath::ports::PortError> {
        self.inner.recv(descs)
    }
    fn frame(&self, desc: &podfence_datapath::ports::RxDesc) -> &[u8] {
        self.inner.frame(desc)
    }
    fn release(&mut self, descs: &[podfence_datapath::ports::RxDesc]) {
        self.inner.release(descs);
    }
    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, podfence_datapath::ports::PortError> {
        self.calls += 1;
        let n = frames.len().min(self.accept);
        self.inner.send(&frames[..n])
    }
    fn stats(&self) -> podfence_datapath::ports::PortStats {
        self.inner.stats()
    }
}

#[test]
fn one_send_per_port_and_batch_and_short_sends_count_as_tx_drops() {
    // Ten packets from pod B to the outside in one batch.
    let from_b: Vec<Vec<u8>> = (0..10).map(|i| udp(v4(2), outside(), 7000 + i)).collect();
    let narrow = |name, frames: &[Vec<u8>]| Narrow {
        inner: port(name, frames),
        accept: 4,
        calls: 0,
    };
    let ports = vec![narrow("host", &[]), narrow("a", &[]), narrow("b", &from_b)];
    let mut switch = Switch::new(ports, Arc::new(fib()), 2048).unwrap();
    let publisher = Publisher::new(two_pods(1, Some(80), false), ServiceTable::empty());
    let conntrack = Conntrack::new(256, Timeouts::default());
    let stats = WorkerStats::default();
    let mut worker = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    assert_eq!(switch.run_batch(&mut worker, POD_B).unwrap(), 10);
    assert_eq!(switch.port(HOST).unwrap().calls, 1, "one send per batch");
    assert_eq!(switch.port(POD_A).unwrap().calls, 0, "nothing staged");
    let s = switch.stats();
    assert_eq!(s.forwarded, [4, 0, 0]);
    assert_eq!(s.tx_dropped, 6);
    assert_eq!(switch.port(HOST).unwrap().inner.sent().len(), 4);
}

#[test]
fn a_new_fib_takes_effect_on_the_next_batch() {
    let frames = vec![udp(outside(), v4(2), 6000)];
    let ports = vec![port("host", &frames), port("a", &[]), port("b", &[])];
    let mut switch = Switch::new(ports, Arc::new(fib()), 2048).unwrap();
    let publisher = Publisher::new(two_pods(1, Some(80), false), ServiceTable::empty());
    let conntrack = Conntrack::new(256, Timeouts::default());
    let stats = WorkerStats::default();
    let mut worker = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    // Pod B moved to port 1 with a new MAC.
    let mut moved = fib();
    let new_mac = [0x0a, 0, 0, 0, 9, 9];
    moved.insert(
        v4(2),
        Route {
            port: POD_A,
            dst_mac: new_mac,
            src_mac: VETH_A_MAC,
        },
    );
    switch.set_fib(Arc::new(moved)).unwrap();
    assert_eq!(switch.run_batch(&mut worker, HOST).unwrap(), 1);
    let sent = switch.port(POD_A).unwrap().sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0][..6], new_mac);
    assert!(switch.port(POD_B).unwrap().sent().is_empty());
    let ports = switch.into_ports();
    assert_eq!(ports.len(), 3, "ports given back");
}

/// A TCP frame of `len` bytes (Ethernet included) from `src` to `dst`.
fn jumbo_tcp(src: IpAddr, dst: IpAddr, sport: u16, len: usize) -> Vec<u8> {
    let headers = 14 + if src.is_ipv6() { 40 } else { 20 } + 20;
    let t = Transport::Tcp {
        src_port: sport,
        dst_port: 80,
        flags: tcp_flags::SYN,
    };
    let f = build(src, dst, t, len - headers);
    assert_eq!(f.len(), len);
    f
}

/// `f` with its TCP checksum only begun, as a pod's stack hands it to its
/// veth (the folded pseudo-header sum, `CHECKSUM_PARTIAL`).
fn begun(mut f: Vec<u8>) -> Vec<u8> {
    use podfence_datapath::wire::checksum::{address_range, fold, pseudo_header_sum};
    let ipv6 = f[12..14] == [0x86, 0xdd];
    let l4 = 14 + if ipv6 { 40 } else { 20 };
    let addrs = address_range(ipv6);
    let len = u32::try_from(f.len() - l4).unwrap();
    let pseudo = fold(pseudo_header_sum(
        &f[14 + addrs.start..14 + addrs.end],
        6,
        len,
    ));
    f[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
    f
}

/// Jumbo frames (MTU 9000: 9014 bytes) cross the switch whole when its
/// staging slots hold them: MACs and TTL rewritten, payload as sent, and a
/// checksum the pod left to offload finished over the whole payload. With
/// slots too short they are counted (`too_long`), not lost silently.
#[test]
fn jumbo_frames_are_switched_whole_or_counted() {
    let complete = [
        jumbo_tcp(v4(2), v4(1), 4100, 9014),
        jumbo_tcp(v6(2), v6(1), 4101, 9014),
        jumbo_tcp(v4(2), v4(1), 4102, 4000),
    ];
    let from_b: Vec<Vec<u8>> = complete.iter().cloned().map(begun).collect();
    for (sent, original) in from_b.iter().zip(&complete) {
        assert_ne!(sent, original, "the checksum was begun, not complete");
    }
    let run = |max_frame: usize| {
        let ports = vec![port("host", &[]), port("a", &[]), port("b", &from_b)];
        let mut switch = Switch::new(ports, Arc::new(fib()), max_frame).unwrap();
        let publisher = Publisher::new(two_pods(1, Some(80), false), ServiceTable::empty());
        let conntrack = Conntrack::new(256, Timeouts::default());
        let stats = WorkerStats::default();
        let mut worker = Worker::new(
            &conntrack,
            publisher.reader(),
            &stats,
            WorkerConfig::default(),
        );
        assert_eq!(switch.run_batch(&mut worker, POD_B).unwrap(), 3);
        let stats = switch.stats().clone();
        (switch.port(POD_A).unwrap().sent().to_vec(), stats)
    };

    let (to_a, stats) = run(9000 + 14 + 8);
    assert_eq!(stats.forwarded, [0, 3, 0]);
    assert_eq!(stats.too_long, 0);
    assert_eq!(stats.checksums_finished, 3);
    assert_eq!(to_a.len(), 3);
    for (received, original) in to_a.iter().zip(&complete) {
        assert_eq!(received[..6], POD_A_MAC);
        assert_eq!(received[6..12], VETH_A_MAC);
        assert_eq!(ttl_of(received), ttl_of(original) - 1);
        // Checksum finished: the frame is the complete one, TTL aside.
        assert_same_packet(original, received);
    }
    assert_ipv4_header_valid(&to_a[0]);

    let (to_a, stats) = run(2048);
    assert_eq!(stats.too_long, 3, "{stats:?}");
    assert_eq!(stats.forwarded, [0, 0, 0]);
    assert!(to_a.is_empty());
}
