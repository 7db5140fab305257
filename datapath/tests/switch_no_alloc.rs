//! The switch allocates nothing per packet in steady state: a counting
//! global allocator watches a worker and its switch forward pod-to-pod,
//! pod-to-outside and IPv6 traffic, translate Service traffic (new and
//! established, ICMP errors about it, refused and answered without
//! endpoints), drop denied attempts and expired packets, and flush every
//! port once per batch.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::Port;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::services::{Endpoint, FrontendKey, ServiceOptions, ServiceTableBuilder};
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::switch::{Fib, Route, Switch};
use podfence_datapath::wire::checksum::{fold, pseudo_header_sum};
use podfence_datapath::worker::{Worker, WorkerConfig};
use podfence_datapath::{IpProtocol, ServiceTable};

use podfence_testkit::tables::{two_pods, v4, v6};
use podfence_testkit::{counting, frames as raw};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

fn frame(src: IpAddr, dst: IpAddr, transport: Transport) -> Vec<u8> {
    FrameSpec {
        src,
        dst,
        transport,
        payload_len: 100,
        payload_fill: 1,
    }
    .build()
}

/// An IPv4 TCP or UDP `frame` with its checksum begun, as a sender with
/// checksum offload hands it over (the folded pseudo-header sum).
fn begun(mut frame: Vec<u8>) -> Vec<u8> {
    let at = 34 + if frame[23] == 6 { 16 } else { 6 };
    let len = u32::try_from(frame.len() - 34).unwrap();
    let pseudo = fold(pseudo_header_sum(&frame[26..34], frame[23], len));
    frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    frame
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
    Transport::Tcp {
        src_port: sport,
        dst_port: dport,
        flags,
    }
}

/// Port 0 is the host port, port 1 pod .1's, port 2 pod .2's.
fn fib() -> Fib {
    let mut fib = Fib::new(Route {
        port: 0,
        dst_mac: [0x0a, 0, 0, 0, 0, 1],
        src_mac: [0x0a, 0, 0, 0, 0, 2],
    });
    for (last, port) in [(1u8, 1usize), (2, 2)] {
        let route = Route {
            port,
            dst_mac: [0x0a, 0, 0, 0, last, 1],
            src_mac: [0x0a, 0, 0, 0, last, 2],
        };
        fib.insert(v4(last), route);
        fib.insert(v6(u16::from(last)), route);
    }
    fib
}

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);

/// TCP 80 on [`SERVICE`] to pod .1's port 80; [`EMPTY`] without endpoints.
fn service_table() -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    let s = b.add_service("ns", "web", ServiceOptions::default());
    let key = |addr| FrontendKey {
        addr: IpAddr::V4(addr),
        protocol: IpProtocol::TCP,
        port: 80,
    };
    b.add_frontend(s, key(SERVICE), &[Endpoint::ready(v4(1), 80, true)])
        .unwrap();
    b.add_frontend(s, key(EMPTY), &[]).unwrap();
    b.build()
}

/// Passes over the trace: one to warm up, the rest measured.
const ROUNDS: u64 = 21;

/// What arrives on pod .2's port: every path through the switch.
fn input_frames() -> Vec<Vec<u8>> {
    let outside = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut frames = Vec::new();
    for sport in 1000..1200u16 {
        frames.push(frame(v4(2), v4(1), tcp(sport, 80, tcp_flags::SYN))); // to pod .1
        frames.push(frame(v4(2), v4(1), tcp(sport, 80, tcp_flags::ACK))); // established
        frames.push(frame(v4(2), v4(1), tcp(sport, 22, tcp_flags::SYN))); // denied
        frames.push(frame(v6(2), v6(1), tcp(sport, 80, tcp_flags::SYN))); // IPv6
        let udp = Transport::Udp {
            src_port: sport,
            dst_port: 53,
        };
        frames.push(frame(v4(2), outside, udp)); // to the host port
        let svc = IpAddr::V4(SERVICE);
        frames.push(frame(v4(2), svc, tcp(sport, 80, tcp_flags::SYN))); // translated
        frames.push(frame(v4(2), svc, tcp(sport, 80, tcp_flags::ACK))); // by its alias
        frames.push(frame(
            v4(2),
            IpAddr::V4(EMPTY),
            tcp(sport, 80, tcp_flags::SYN),
        )); // refused, answered
        // The client's port unreachable about a reply from the Service:
        // translated to the backend, quote included.
        let reply = raw::V4::new(6)
            .addrs(SERVICE.octets(), [10, 0, 0, 2])
            .packet(&raw::tcp(80, sport, tcp_flags::SYN | tcp_flags::ACK));
        let error = raw::V4::new(1)
            .addrs([10, 0, 0, 2], SERVICE.octets())
            .packet(&raw::icmp(3, 3, [0; 4], &reply));
        frames.push(raw::ethernet(raw::ETH_IPV4, &error));
    }
    // Checksums left to offload: to pod .1's port, which takes checksum
    // requests (also through a translation), and to the host port, which
    // does not (finished in software).
    for sport in 2000..2050u16 {
        frames.push(begun(frame(v4(2), v4(1), tcp(sport, 80, tcp_flags::SYN))));
        frames.push(begun(frame(
            v4(2),
            IpAddr::V4(SERVICE),
            tcp(sport, 80, tcp_flags::SYN),
        )));
        let udp = Transport::Udp {
            src_port: sport,
            dst_port: 53,
        };
        frames.push(begun(frame(v4(2), outside, udp)));
    }
    let mut expiring = frame(v4(2), v4(1), tcp(999, 80, tcp_flags::SYN));
    expiring[14 + 8] = 1; // checksum now wrong; the switch does not check it
    frames.push(expiring);
    let truncated = frames[0][..20].to_vec(); // IPv4 ethertype, 6 bytes of header
    frames.push(truncated); // malformed (dropped by default)
    frames.push(vec![0xff; 20]); // not IP: to the host port unchanged
    frames
}

#[test]
fn switch_allocates_nothing_per_packet() {
    let publisher = Publisher::new(two_pods(1, Some(80), false), service_table());
    let frames = input_frames();

    let rx = MemoryPort::new(
        "p2",
        LinkType::Ethernet,
        frames.iter().map(Vec::as_slice),
        ROUNDS,
    );
    let ports = vec![
        MemoryPort::new("host", LinkType::Ethernet, [], 0),
        MemoryPort::new("p1", LinkType::Ethernet, [], 0).with_checksum_offload(),
        rx,
    ];
    let mut switch = Switch::new(ports, Arc::new(fib()), 2048).unwrap();
    let conntrack = Conntrack::new(1 << 12, Timeouts::default());
    let stats = WorkerStats::default();
    let mut worker = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );

    // Warm-up: one pass fills conntrack.
    let n = frames.len() as u64;
    while switch.port(2).unwrap().stats().rx_frames < n {
        switch.run_batch(&mut worker, 2).unwrap();
    }
    let warm = switch.stats().clone();
    let before = counting::allocations();
    while switch.run_batch(&mut worker, 2).unwrap() > 0 {}
    let allocations = counting::allocations() - before;

    let s = switch.stats();
    assert_eq!(switch.port(2).unwrap().stats().rx_frames, ROUNDS * n);
    assert!(s.forwarded[0] > warm.forwarded[0], "host port used: {s:?}");
    assert!(s.forwarded[1] > warm.forwarded[1], "pod port used: {s:?}");
    assert!(s.policy_dropped > warm.policy_dropped, "drops: {s:?}");
    assert!(s.ttl_expired > warm.ttl_expired, "expiry: {s:?}");
    assert!(s.malformed > warm.malformed, "malformed: {s:?}");
    assert!(s.not_ip > warm.not_ip, "not IP: {s:?}");
    assert!(s.translated > warm.translated, "translated: {s:?}");
    assert!(
        s.checksums_offloaded > warm.checksums_offloaded,
        "offloaded: {s:?}"
    );
    assert!(
        s.checksums_finished > warm.checksums_finished,
        "finished: {s:?}"
    );
    assert!(s.service_refused > warm.service_refused, "refused: {s:?}");
    assert!(
        s.forwarded[2] > warm.forwarded[2],
        "answers to the sender's port: {s:?}"
    );
    assert_eq!(
        allocations,
        0,
        "{allocations} allocations over {} packets",
        (ROUNDS - 1) * n
    );
}
