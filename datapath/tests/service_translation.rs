//! Service translation through a worker and its switch: forward packets
//! leave for the backend with valid checksums, replies come back from the
//! Service address, policy is decided against the backend (an egress policy
//! allowing the backend pods admits a client that connects through the
//! ClusterIP; an ingress policy closing the backend denies it), frontends
//! without a usable backend refuse, and the backend a flow gets does not
//! depend on the worker.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::flow::{FlowKey, PacketMeta, Parsed, parse_frame};
use podfence_datapath::link::LinkType;
use podfence_datapath::nat::Rewrite;
use podfence_datapath::ports::RxDesc;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::services::{
    Endpoint, FrontendKey, NoBackend, ServiceOptions, ServiceTableBuilder,
};
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::switch::{Fib, Route, Switch};
use podfence_datapath::tables::Decision;
use podfence_datapath::wire::checksum::{
    address_range, data_sum, fold, internet_checksum, pseudo_header_sum,
};
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};
use podfence_datapath::{IpProtocol, ServiceTable, Tables};

use podfence_testkit::services::{self, DNS_V4, DNS_V6, ELSEWHERE, EMPTY, WEB};
use podfence_testkit::tables::{v4, v6};

const HOST: usize = 0;
const DNS: usize = 1;
const CLIENT: usize = 2;
const WEB_PORT: usize = 3;

fn fib() -> Fib {
    let route = |port: usize| Route {
        port,
        dst_mac: [2, 0, 0, 0, port as u8, 1],
        src_mac: [2, 0, 0, 0, port as u8, 2],
    };
    let mut fib = Fib::new(route(HOST));
    for (last, port) in [(1u8, DNS), (2, CLIENT), (3, WEB_PORT)] {
        fib.insert(v4(last), route(port));
        fib.insert(v6(u16::from(last)), route(port));
    }
    fib
}

fn build(src: IpAddr, dst: IpAddr, transport: Transport) -> Vec<u8> {
    FrameSpec {
        src,
        dst,
        transport,
        payload_len: 33,
        payload_fill: 0x5a,
    }
    .build()
}

fn udp(src_port: u16, dst_port: u16) -> Transport {
    Transport::Udp { src_port, dst_port }
}

fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Transport {
    Transport::Tcp {
        src_port,
        dst_port,
        flags,
    }
}

fn meta(frame: &[u8]) -> PacketMeta {
    match parse_frame(LinkType::Ethernet, frame).unwrap() {
        Parsed::Ip(m) => m,
        other @ Parsed::NotIp { .. } => panic!("{other:?}"),
    }
}

/// The frame's key, after checking its IPv4 header and transport checksums.
fn verified_key(frame: &[u8]) -> FlowKey {
    let m = meta(frame);
    let l3 = usize::from(m.l3_offset);
    let l4 = usize::from(m.l4_offset.unwrap());
    let end = l3 + m.l3_len as usize;
    if !m.is_ipv6() {
        assert_eq!(internet_checksum(&frame[l3..l4]), 0, "IPv4 header checksum");
    }
    let addrs = address_range(m.is_ipv6());
    let pseudo = pseudo_header_sum(
        &frame[l3 + addrs.start..l3 + addrs.end],
        m.key.protocol,
        (end - l4) as u32,
    );
    assert_eq!(
        fold(data_sum(pseudo, &frame[l4..end])),
        0xffff,
        "transport checksum"
    );
    m.key
}

/// A switch over the four ports, each port delivering `frames[i]`.
fn switch(frames: &[Vec<Vec<u8>>; 4]) -> Switch<MemoryPort> {
    let names = ["host", "dns", "client", "web"];
    let ports = frames
        .iter()
        .zip(names)
        .map(|(f, name)| {
            MemoryPort::new(name, LinkType::Ethernet, f.iter().map(Vec::as_slice), 1)
                .keeping_sent(64)
        })
        .collect();
    Switch::new(ports, Arc::new(fib()), 2048).unwrap()
}

fn drain(s: &mut Switch<MemoryPort>, w: &mut Worker<'_>, port: usize) {
    while s.run_batch(w, port).unwrap() > 0 {}
}

#[test]
fn forward_and_reply_are_translated_udp_and_tcp_ipv4_and_ipv6() {
    let publisher = Publisher::new(services::tables(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let (dns4, dns6) = (IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6));
    let (c4, c6, b4, b6) = (v4(2), v6(2), v4(1), v6(1));
    let syn = tcp_flags::SYN;
    let synack = tcp_flags::SYN | tcp_flags::ACK;
    let ack = tcp_flags::ACK;
    let client = vec![
        build(c4, dns4, udp(4000, 53)),
        build(c6, dns6, udp(4000, 53)),
        build(c4, dns4, tcp(4001, 53, syn)),
        build(c6, dns6, tcp(4001, 53, syn)),
    ];
    let replies = vec![
        build(b4, c4, udp(5353, 4000)),
        build(b6, c6, udp(5353, 4000)),
        build(b4, c4, tcp(5353, 4001, synack)),
        build(b6, c6, tcp(5353, 4001, synack)),
    ];
    let again = vec![
        build(c4, dns4, udp(4000, 53)),
        build(c4, dns4, tcp(4001, 53, ack)),
        build(c6, dns6, tcp(4001, 53, ack)),
    ];
    let mut s = switch(&[vec![], replies, client, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    drain(&mut s, &mut w, DNS);
    let after_first = stats.snapshot();
    assert_eq!(after_first.service_translated, 4);
    assert_eq!(after_first.denied, 0, "{after_first:?}");

    // Forward: to the backend's port, destination translated.
    let sent = s.port(DNS).unwrap().sent().to_vec();
    assert_eq!(sent.len(), 4);
    let keys: Vec<FlowKey> = sent.iter().map(|f| verified_key(f)).collect();
    for (k, (backend, proto)) in keys.iter().zip([(b4, 17), (b6, 17), (b4, 6), (b6, 6)]) {
        assert_eq!(
            k.dst,
            FlowKey::new(backend, backend, proto, 0, 0).unwrap().dst
        );
        assert_eq!(
            (k.dst_port, k.src_port, k.protocol),
            (5353, 4000 + u16::from(proto == 6), proto)
        );
    }
    // Replies: to the client, from the Service address and port.
    let back = s.port(CLIENT).unwrap().sent().to_vec();
    assert_eq!(back.len(), 4);
    for (f, service) in back.iter().zip([dns4, dns6, dns4, dns6]) {
        let k = verified_key(f);
        let want = FlowKey::new(service, service, k.protocol, 0, 0).unwrap();
        assert_eq!((k.src, k.src_port), (want.src, 53));
    }

    // Later forward packets are rewritten from the connection's entry.
    let mut s2 = switch(&[vec![], vec![], again, vec![]]);
    drain(&mut s2, &mut w, CLIENT);
    let sent = s2.port(DNS).unwrap().sent();
    assert_eq!(sent.len(), 3);
    for f in sent {
        assert_eq!(verified_key(f).dst_port, 5353);
    }
    let c = stats.snapshot();
    assert_eq!(c.service_translated, 4, "no new translation");
    assert_eq!(c.conntrack_hits - after_first.conntrack_hits, 3);
    assert_eq!(s.stats().translated + s2.stats().translated, 11);
}

#[derive(Default)]
struct Record(Vec<(Outcome, bool, Option<Rewrite>)>);

impl Output for Record {
    fn packet(&mut self, _: &RxDesc, _: &[u8], _: Option<&PacketMeta>, o: &Outcome, p: bool) {
        self.0.push((*o, p, None));
    }

    fn translated(
        &mut self,
        _: &RxDesc,
        _: &[u8],
        _: Option<&PacketMeta>,
        o: &Outcome,
        p: bool,
        r: &Rewrite,
    ) {
        self.0.push((*o, p, Some(*r)));
    }
}

fn run(w: &mut Worker<'_>, frames: &[Vec<u8>]) -> Vec<(Outcome, bool, Option<Rewrite>)> {
    let mut port = MemoryPort::new("t", LinkType::Ethernet, frames.iter().map(Vec::as_slice), 1);
    let mut out = Record::default();
    while w.run_batch(&mut port, &mut out).unwrap() > 0 {}
    out.0
}

#[test]
fn policy_applies_to_the_backend_not_the_service_address() {
    let publisher = Publisher::new(services::tables(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let got = run(
        &mut w,
        &[
            // Allowed: egress admits the dns pods on 5353, not 10.96.0.10.
            build(v4(2), IpAddr::V4(DNS_V4), udp(4000, 53)),
            // Not a frontend: the Service address itself, denied by egress.
            build(v4(2), IpAddr::V4(DNS_V4), udp(4000, 54)),
            // Egress allows web:8080, web's ingress denies.
            build(v4(2), IpAddr::V4(WEB), tcp(4002, 80, tcp_flags::SYN)),
            // The backend directly, untranslated: allowed the same.
            build(v4(2), v4(1), udp(4003, 5353)),
        ],
    );
    assert!(
        matches!(got[0], (Outcome::Opened(v), true, Some(_)) if v.egress.is_allowed()),
        "{got:?}"
    );
    assert!(
        matches!(got[1], (Outcome::Denied(v), false, None) if !v.egress.is_allowed()),
        "{got:?}"
    );
    let (Outcome::Denied(v), false, Some(r)) = got[2] else {
        panic!("{got:?}");
    };
    assert!(v.egress.is_allowed() && !v.ingress.is_allowed(), "{v:?}");
    assert_eq!(r.to.port, 8080, "classified as addressed to the backend");
    assert!(
        matches!(got[3], (Outcome::Opened(_), true, None)),
        "{got:?}"
    );
    let c = stats.snapshot();
    assert_eq!(
        (
            c.service_translated,
            c.new_denied_ingress,
            c.new_denied_egress
        ),
        (1, 1, 1)
    );
}

#[test]
fn frontends_without_usable_backends_refuse_and_count() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let mut s = switch(&[
        vec![],
        vec![],
        vec![
            build(v4(2), IpAddr::V4(EMPTY), tcp(4000, 80, tcp_flags::SYN)),
            build(v4(2), IpAddr::V4(EMPTY), tcp(4000, 80, tcp_flags::SYN)),
            build(v4(2), IpAddr::V4(ELSEWHERE), tcp(4001, 80, tcp_flags::SYN)),
        ],
        vec![],
    ]);
    drain(&mut s, &mut w, CLIENT);
    let c = stats.snapshot();
    assert_eq!((c.service_no_endpoint, c.service_no_local_endpoint), (2, 1));
    assert_eq!((c.denied, c.new_allowed, c.service_translated), (3, 0, 0));
    assert_eq!(s.stats().service_refused, 3);
    assert_eq!(s.stats().policy_dropped, 0, "not a policy decision");
    assert!(s.stats().forwarded.iter().all(|&n| n == 0));
    let got = run(
        &mut w,
        &[build(
            v4(2),
            IpAddr::V4(ELSEWHERE),
            tcp(4002, 80, tcp_flags::SYN),
        )],
    );
    assert!(matches!(
        got[0],
        (Outcome::NoBackend(NoBackend::NoLocalEndpoints), false, None)
    ));
}

#[test]
fn the_backend_of_a_flow_does_not_depend_on_the_worker() {
    let mut b = ServiceTableBuilder::new();
    let id = b.add_service("ns", "many", ServiceOptions::default());
    let endpoints: Vec<Endpoint> = (0..7u8)
        .map(|i| Endpoint::ready(IpAddr::V4(Ipv4Addr::new(10, 2, 0, i)), 8080, true))
        .collect();
    let key = FrontendKey {
        addr: IpAddr::V4(Ipv4Addr::new(10, 96, 1, 1)),
        protocol: IpProtocol::TCP,
        port: 80,
    };
    b.add_frontend(id, key, &endpoints).unwrap();
    let table: Arc<ServiceTable> = Arc::new(b.build());
    let frames: Vec<Vec<u8>> = (0..200u16)
        .map(|p| build(v4(2), key.addr, tcp(10_000 + p, 80, tcp_flags::SYN)))
        .collect();
    let backends = |_: u8| {
        let publisher = Publisher::new(Tables::empty(1), Arc::clone(&table));
        let conntrack = Conntrack::new(1024, Timeouts::default());
        let stats = WorkerStats::default();
        let mut w = Worker::new(
            &conntrack,
            publisher.reader(),
            &stats,
            WorkerConfig::default(),
        );
        run(&mut w, &frames)
            .into_iter()
            .map(|(_, _, r)| r.expect("translated").to)
            .collect::<Vec<_>>()
    };
    let (first, second) = (backends(0), backends(1));
    assert_eq!(first, second);
    let distinct: std::collections::BTreeSet<_> = first.iter().map(|b| b.addr).collect();
    assert_eq!(distinct.len(), 7, "200 flows reach every backend");
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_left_to_the_kernel() {
    let self_service = || {
        let mut b = ServiceTableBuilder::new();
        let id = b.add_service("ns", "self", ServiceOptions::default());
        let key = FrontendKey {
            addr: IpAddr::V4(Ipv4Addr::new(10, 96, 1, 2)),
            protocol: IpProtocol::TCP,
            port: 80,
        };
        // The client v4(2) is the Service's only backend.
        b.add_frontend(id, key, &[Endpoint::ready(v4(2), 8080, true)])
            .unwrap();
        (b.build(), key)
    };
    // The client's egress allows only the dns and web pods: not the
    // Service address, but the client itself, which it can always reach.
    let (table, key) = self_service();
    let publisher = Publisher::new(services::tables(1), table);
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let got = run(
        &mut w,
        &[build(v4(2), key.addr, tcp(4000, 80, tcp_flags::SYN))],
    );
    let (Outcome::Opened(v), true, None) = got[0] else {
        panic!("passed untranslated: {got:?}");
    };
    assert_eq!(
        (v.egress, v.ingress),
        (Decision::SelfTraffic, Decision::SelfTraffic),
        "classified as addressed to itself"
    );
    assert_eq!(stats.snapshot().service_translated, 0);
    // A new generation re-checks the connection the same way: it stays.
    publisher.publish(services::tables(2), self_service().0, None);
    let got = run(
        &mut w,
        &[build(v4(2), key.addr, tcp(4000, 80, tcp_flags::ACK))],
    );
    assert!(
        matches!(got[0], (Outcome::Established, true, None)),
        "{got:?}"
    );
    assert_eq!(
        (stats.snapshot().revalidated, stats.snapshot().revoked),
        (1, 0)
    );
}

#[test]
fn a_revoked_translated_connection_is_cut_in_both_directions() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let open = run(
        &mut w,
        &[build(v4(2), IpAddr::V4(WEB), tcp(4000, 80, tcp_flags::SYN))],
    );
    assert!(
        matches!(open[0], (Outcome::Opened(_), true, Some(_))),
        "{open:?}"
    );
    // The new generation closes web's ingress.
    publisher.publish(services::tables(2), services::services(), None);
    let got = run(
        &mut w,
        &[
            build(v4(2), IpAddr::V4(WEB), tcp(4000, 80, tcp_flags::ACK)),
            build(v4(3), v4(2), tcp(8080, 4000, tcp_flags::ACK)),
        ],
    );
    assert!(
        matches!(got[0], (Outcome::Revoked(_), false, None)),
        "{got:?}"
    );
    // The reply finds no connection: it is a new mid-stream packet, not
    // translated.
    assert!(
        matches!(
            got[1],
            (Outcome::PickedUp { .. } | Outcome::Denied(_), _, None)
        ),
        "{got:?}"
    );
    // And the alias went with the entry: the client's next packet is new.
    let again = run(
        &mut w,
        &[build(v4(2), IpAddr::V4(WEB), tcp(4000, 80, tcp_flags::ACK))],
    );
    assert!(
        matches!(again[0], (Outcome::Denied(_), false, Some(_))),
        "{again:?}"
    );
    assert_eq!(
        stats.snapshot().service_stale_aliases,
        0,
        "removed, not found stale"
    );
}
