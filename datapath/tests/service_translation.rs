//! Service translation through a worker and its switch: forward packets
//! leave for the backend with valid checksums, replies come back from the
//! Service address, policy is decided against the backend (an egress policy
//! allowing the backend pods admits a client that connects through the
//! ClusterIP; an ingress policy closing the backend denies it), frontends
//! without a usable backend refuse, and the backend a flow gets does not
//! depend on the worker.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    Backend, Conditions, Endpoint, FrontendKey, NoBackend, ServiceOptions, ServiceTableBuilder,
    TrafficPolicy,
};
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::switch::{Fib, Route, Switch};
use podfence_datapath::tables::Decision;
use podfence_datapath::wire::checksum::{
    address_range, data_sum, fold, internet_checksum, pseudo_header_sum,
};
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};
use podfence_datapath::{IpProtocol, ServiceTable, Tables};

use podfence_testkit::frames;
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
    let mut w = open_worker(&publisher, &conntrack, &stats);
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
    let mut w = open_worker(&publisher, &conntrack, &stats);
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
    let mut w = open_worker(&publisher, &conntrack, &stats);
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
    // Nothing forwarded; the two attempts without any endpoint answered
    // to their sender, the `Local` one dropped silently.
    assert_eq!(s.stats().forwarded, [0, 0, 2, 0]);
    assert_eq!((c.service_rejects, c.service_rejects_limited), (2, 0));
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
        let mut w = open_worker(&publisher, &conntrack, &stats);
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
    let mut w = open_worker(&publisher, &conntrack, &stats);
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
    let mut w = open_worker(&publisher, &conntrack, &stats);
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

/// A client that reuses its port after a passive close, for another
/// Service address that chooses the same backend: the closed connection's
/// entry gives way, and the new connection's replies come from the Service
/// it connected to (not the old one's address).
#[test]
fn a_reused_port_to_another_service_with_the_same_backend_is_a_new_connection() {
    use tcp_flags::{ACK, FIN, SYN};
    const FIRST: Ipv4Addr = Ipv4Addr::new(10, 96, 2, 1);
    const SECOND: Ipv4Addr = Ipv4Addr::new(10, 96, 2, 2);
    let backend = v4(3);
    let mut b = ServiceTableBuilder::new();
    let id = b.add_service("ns", "twice", ServiceOptions::default());
    let list = [Endpoint {
        backend: Backend {
            addr: backend,
            port: 8080,
        },
        conditions: Conditions::READY,
        local: true,
    }];
    for addr in [FIRST, SECOND] {
        let key = FrontendKey {
            addr: IpAddr::V4(addr),
            protocol: IpProtocol::TCP,
            port: 80,
        };
        b.add_frontend(id, key, &list).unwrap();
    }
    let publisher = Publisher::new(Tables::empty(1), b.build());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let client = v4(2);
    let to = |svc: Ipv4Addr, flags| build(client, IpAddr::V4(svc), tcp(4000, 80, flags));
    let back = |flags| build(backend, client, tcp(8080, 4000, flags));
    let source_of = |got: &(Outcome, bool, Option<Rewrite>)| {
        let r = got.2.expect("translated");
        (Ipv4Addr::from(r.to.addr as u32), r.to.port)
    };
    // A whole connection through FIRST, the backend closing first.
    let first = run(
        &mut w,
        &[
            to(FIRST, SYN),
            back(SYN | ACK),
            to(FIRST, ACK),
            back(FIN | ACK),
            to(FIRST, FIN | ACK),
            back(ACK),
        ],
    );
    assert!(
        matches!(first[0], (Outcome::Opened(_), true, Some(_))),
        "{first:?}"
    );
    assert_eq!(source_of(&first[1]), (FIRST, 80), "{first:?}");
    // The same client port to SECOND: a new connection, answered from SECOND.
    let second = run(&mut w, &[to(SECOND, SYN), back(SYN | ACK), to(SECOND, ACK)]);
    assert!(
        matches!(second[0], (Outcome::Opened(_), true, Some(_))),
        "{second:?}"
    );
    assert_eq!(backend_of(&second[0]), backend);
    assert_eq!(source_of(&second[1]), (SECOND, 80), "{second:?}");
    assert!(
        matches!(second[2], (Outcome::Established, true, Some(_))),
        "{second:?}"
    );
    // And back to FIRST once that one is closed too: the old alias is gone.
    let _ = run(&mut w, &[back(FIN | ACK), to(SECOND, FIN | ACK), back(ACK)]);
    let again = run(&mut w, &[to(FIRST, SYN), back(SYN | ACK)]);
    assert!(
        matches!(again[0], (Outcome::Opened(_), true, Some(_))),
        "{again:?}"
    );
    assert_eq!(source_of(&again[1]), (FIRST, 80), "{again:?}");
}

// Endpoint churn.

/// The churn tests' Service: TCP 80 to port 8080 and UDP 53 to port 5353
/// of `endpoints` (addresses and conditions; all on this node).
const CHURN: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 1);

fn churn_services(endpoints: &[(IpAddr, Conditions)]) -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    let id = b.add_service("ns", "churn", ServiceOptions::default());
    for (protocol, port, target) in [(IpProtocol::TCP, 80, 8080), (IpProtocol::UDP, 53, 5353)] {
        let list: Vec<Endpoint> = endpoints
            .iter()
            .map(|&(addr, conditions)| Endpoint {
                backend: Backend { addr, port: target },
                conditions,
                local: true,
            })
            .collect();
        let key = FrontendKey {
            addr: IpAddr::V4(CHURN),
            protocol,
            port,
        };
        b.add_frontend(id, key, &list).unwrap();
    }
    b.build()
}

fn ready(addr: IpAddr) -> (IpAddr, Conditions) {
    (addr, Conditions::READY)
}

/// The address a translated outcome went to (IPv4).
fn backend_of(got: &(Outcome, bool, Option<Rewrite>)) -> IpAddr {
    let r = got.2.expect("translated");
    IpAddr::V4(Ipv4Addr::from(r.to.addr as u32))
}

/// Client ports whose connections to the churn Service go to `a` and to
/// `b` respectively (the first of each among 4000..4100).
fn ports_to(w: &mut Worker<'_>, a: IpAddr, b: IpAddr) -> (u16, u16) {
    let frames: Vec<Vec<u8>> = (4000..4100u16)
        .map(|p| build(v4(2), IpAddr::V4(CHURN), tcp(p, 80, tcp_flags::SYN)))
        .collect();
    let got = run(w, &frames);
    let port = |want| 4000 + got.iter().position(|g| backend_of(g) == want).unwrap() as u16;
    (port(a), port(b))
}

#[test]
fn a_tcp_connection_whose_backend_is_gone_ends_on_its_next_packet() {
    let (b1, b2) = (v4(1), v4(3));
    for revalidate in [true, false] {
        let publisher = Publisher::new(Tables::empty(1), churn_services(&[ready(b1), ready(b2)]));
        let conntrack = Conntrack::new(1024, Timeouts::default());
        let stats = WorkerStats::default();
        let config = WorkerConfig {
            revalidate,
            ..WorkerConfig::default()
        };
        let mut w = Worker::new(&conntrack, publisher.reader(), &stats, config);
        let (to_b1, to_b2) = ports_to(&mut w, b1, b2);
        // b1 leaves the Service.
        publisher.publish(Tables::empty(2), churn_services(&[ready(b2)]), None);
        let ack = |p| build(v4(2), IpAddr::V4(CHURN), tcp(p, 80, tcp_flags::ACK));
        let got = run(&mut w, &[ack(to_b1), ack(to_b2)]);
        assert!(
            matches!(got[0], (Outcome::BackendGone, false, None)),
            "{revalidate}: {got:?}"
        );
        assert!(
            matches!(got[1], (Outcome::Established, true, Some(_))),
            "{revalidate}: {got:?}"
        );
        assert_eq!(backend_of(&got[1]), b2, "the other keeps its backend");
        let c = stats.snapshot();
        assert_eq!(c.service_backend_gone, 1);
        assert_eq!(c.revalidated, u64::from(revalidate));
        // Both slots went: a retransmission is a new mid-stream packet, to
        // a current backend (which resets it: the client fails at once).
        let again = run(&mut w, &[ack(to_b1)]);
        assert!(
            matches!(again[0], (Outcome::PickedUp { .. }, true, Some(_))),
            "{again:?}"
        );
        assert_eq!(backend_of(&again[0]), b2);
        assert_eq!(stats.snapshot().service_stale_aliases, 0);
        // A new connection uses the current set.
        let syn = run(
            &mut w,
            &[build(
                v4(2),
                IpAddr::V4(CHURN),
                tcp(to_b1 + 1000, 80, tcp_flags::SYN),
            )],
        );
        assert_eq!(backend_of(&syn[0]), b2);
    }
}

#[test]
fn a_reply_from_a_backend_that_is_gone_ends_the_connection_too() {
    let (b1, b2) = (v4(1), v4(3));
    let publisher = Publisher::new(Tables::empty(1), churn_services(&[ready(b1), ready(b2)]));
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (to_b1, _) = ports_to(&mut w, b1, b2);
    publisher.publish(Tables::empty(2), churn_services(&[ready(b2)]), None);
    let got = run(
        &mut w,
        &[build(b1, v4(2), tcp(8080, to_b1, tcp_flags::ACK))],
    );
    assert!(
        matches!(got[0], (Outcome::BackendGone, false, None)),
        "{got:?}"
    );
    assert_eq!(stats.snapshot().service_backend_gone, 1);
    // The alias went with the entry: the client's next packet is new.
    let next = run(
        &mut w,
        &[build(
            v4(2),
            IpAddr::V4(CHURN),
            tcp(to_b1, 80, tcp_flags::ACK),
        )],
    );
    assert!(
        matches!(next[0], (Outcome::PickedUp { .. }, true, Some(_))),
        "{next:?}"
    );
    let c = stats.snapshot();
    assert_eq!((c.service_stale_aliases, c.service_backend_gone), (0, 1));
}

#[test]
fn a_udp_flow_whose_backend_is_gone_moves_to_a_current_backend() {
    let (b1, b2) = (v4(1), v4(3));
    let publisher = Publisher::new(Tables::empty(1), churn_services(&[ready(b1), ready(b2)]));
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    // A client port whose flow goes to b1 (the DNS pod's port, DNS = 1).
    let query = |p| build(v4(2), IpAddr::V4(CHURN), udp(p, 53));
    let frames: Vec<Vec<u8>> = (4000..4100).map(query).collect();
    let got = run(&mut w, &frames);
    let sport = 4000 + got.iter().position(|g| backend_of(g) == b1).unwrap() as u16;
    // b1 goes; the client keeps its socket and sends again.
    publisher.publish(Tables::empty(2), churn_services(&[ready(b2)]), None);
    let before = stats.snapshot();
    let mut s = switch(&[vec![], vec![], vec![query(sport)], vec![]]);
    drain(&mut s, &mut w, CLIENT);
    assert!(s.port(DNS).unwrap().sent().is_empty(), "nothing to b1");
    let sent = s.port(WEB_PORT).unwrap().sent().to_vec();
    assert_eq!(sent.len(), 1, "to b2");
    let k = verified_key(&sent[0]);
    assert_eq!(
        (k.dst, k.dst_port, k.src, k.src_port),
        (0x0a00_0003, 5353, 0x0a00_0002, sport)
    );
    let c = stats.snapshot();
    assert_eq!(c.service_backend_gone - before.service_backend_gone, 1);
    assert_eq!(c.service_translated - before.service_translated, 1);
    assert_eq!(c.denied, before.denied, "not dropped");
    // b2's answer comes back from the Service address.
    let mut s = switch(&[
        vec![],
        vec![],
        vec![],
        vec![build(b2, v4(2), udp(5353, sport))],
    ]);
    drain(&mut s, &mut w, WEB_PORT);
    let back = s.port(CLIENT).unwrap().sent().to_vec();
    assert_eq!(back.len(), 1);
    let k = verified_key(&back[0]);
    assert_eq!((k.src, k.src_port), (u128::from(u32::from(CHURN)), 53));
    assert_eq!(stats.snapshot().service_backend_gone, 1);
}

#[test]
fn a_connection_whose_backend_still_serves_survives_new_generations() {
    let (b1, b2) = (v4(1), v4(3));
    let publisher = Publisher::new(Tables::empty(1), churn_services(&[ready(b1), ready(b2)]));
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (to_b1, _) = ports_to(&mut w, b1, b2);
    let ack = build(v4(2), IpAddr::V4(CHURN), tcp(to_b1, 80, tcp_flags::ACK));
    // Another endpoint joins; then b1 terminates gracefully (not ready,
    // still serving): established connections finish, new ones avoid it.
    let terminating = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    let third = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4));
    let generations = [
        churn_services(&[ready(b1), ready(b2), ready(third)]),
        churn_services(&[(b1, terminating), ready(b2), ready(third)]),
    ];
    for (g, services) in (2..).zip(generations) {
        publisher.publish(Tables::empty(g), services, None);
        let got = run(&mut w, std::slice::from_ref(&ack));
        assert!(
            matches!(got[0], (Outcome::Established, true, Some(_))),
            "generation {g}: {got:?}"
        );
        assert_eq!(backend_of(&got[0]), b1);
    }
    let c = stats.snapshot();
    assert_eq!((c.service_backend_gone, c.revalidated), (0, 2));
    let syns: Vec<Vec<u8>> = (5000..5100u16)
        .map(|p| build(v4(2), IpAddr::V4(CHURN), tcp(p, 80, tcp_flags::SYN)))
        .collect();
    let fresh = run(&mut w, &syns);
    assert!(
        fresh.iter().all(|g| backend_of(g) != b1),
        "not for new connections"
    );
    // Not serving any more (or the Service gone): it ends.
    publisher.publish(
        Tables::empty(4),
        churn_services(&[
            (
                b1,
                Conditions {
                    serving: false,
                    ..terminating
                },
            ),
            ready(b2),
        ]),
        None,
    );
    let got = run(&mut w, std::slice::from_ref(&ack));
    assert!(
        matches!(got[0], (Outcome::BackendGone, false, None)),
        "{got:?}"
    );
}

// The reply rule.

/// A worker over the test pods with no policy, and the Services.
fn open_worker<'a>(
    publisher: &Publisher,
    conntrack: &'a Conntrack,
    stats: &'a WorkerStats,
) -> Worker<'a> {
    Worker::new(
        conntrack,
        publisher.reader(),
        stats,
        WorkerConfig::default(),
    )
}

#[test]
fn replies_of_connections_from_the_host_port_go_back_to_the_host_port() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (syn, synack, ack) = (
        tcp_flags::SYN,
        tcp_flags::SYN | tcp_flags::ACK,
        tcp_flags::ACK,
    );
    // The kernel translated the client pod's connections (kube-proxy: a
    // Service podfence leaves alone, a NodePort, a hostPort) without
    // masquerading them: they arrive from the host port, client → web.
    let from_host = vec![
        build(v4(2), v4(3), tcp(4000, 8080, syn)),
        build(v6(2), v6(3), tcp(4000, 8080, syn)),
        build(v4(2), v4(3), udp(4001, 8080)),
    ];
    let mut s = switch(&[from_host, vec![], vec![], vec![]]);
    drain(&mut s, &mut w, HOST);
    assert_eq!(s.port(WEB_PORT).unwrap().sent().len(), 3, "by destination");
    // web's replies are addressed to the client pod, but go back to the
    // host port, for the kernel to undo its translation.
    let replies = vec![
        build(v4(3), v4(2), tcp(8080, 4000, synack)),
        build(v6(3), v6(2), tcp(8080, 4000, synack)),
        build(v4(3), v4(2), udp(8080, 4001)),
    ];
    let mut s = switch(&[vec![], vec![], vec![], replies.clone()]);
    drain(&mut s, &mut w, WEB_PORT);
    assert!(s.port(CLIENT).unwrap().sent().is_empty(), "not to the pod");
    let sent = s.port(HOST).unwrap().sent().to_vec();
    assert_eq!(sent.len(), 3);
    for (f, r) in sent.iter().zip(&replies) {
        assert_eq!(f[..6], [2, 0, 0, 0, HOST as u8, 1], "pf-host's MAC");
        assert_eq!(f[12..], r[12..], "unchanged: the kernel routes it");
    }
    assert_eq!(s.stats().reply_rule, 3);
    // So does an ICMP error about the client's datagram (related).
    let quoted = build(v4(2), v4(3), udp(4001, 8080));
    let error = frames::V4::new(1)
        .addrs([10, 0, 0, 3], [10, 0, 0, 2])
        .packet(&frames::icmp(3, 3, [0; 4], &quoted[14..14 + 28]));
    let mut s = switch(&[
        vec![],
        vec![],
        vec![],
        vec![frames::ethernet(frames::ETH_IPV4, &error)],
    ]);
    drain(&mut s, &mut w, WEB_PORT);
    assert_eq!(
        s.port(HOST).unwrap().sent().len(),
        1,
        "related, to the host"
    );
    assert_eq!(s.stats().reply_rule, 1);
    // The connection's own direction still goes by destination.
    let mut s = switch(&[
        vec![build(v4(2), v4(3), tcp(4000, 8080, ack))],
        vec![],
        vec![],
        vec![],
    ]);
    drain(&mut s, &mut w, HOST);
    assert_eq!(s.port(WEB_PORT).unwrap().sent().len(), 1);
    // A connection the client pod opens itself is unaffected: web's reply
    // goes straight to the client's port.
    let mut s = switch(&[
        vec![],
        vec![],
        vec![build(v4(2), v4(3), tcp(4002, 8080, syn))],
        vec![build(v4(3), v4(2), tcp(8080, 4002, synack))],
    ]);
    drain(&mut s, &mut w, CLIENT);
    drain(&mut s, &mut w, WEB_PORT);
    assert_eq!(s.port(WEB_PORT).unwrap().sent().len(), 1);
    assert_eq!(s.port(CLIENT).unwrap().sent().len(), 1);
    assert!(s.port(HOST).unwrap().sent().is_empty());
    assert_eq!(s.stats().reply_rule, 0);
    assert_eq!(stats.snapshot().denied, 0);
}

#[test]
fn packets_from_the_host_port_to_a_service_address_are_not_translated() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let outside = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let mut s = switch(&[
        vec![
            build(outside, IpAddr::V4(DNS_V4), udp(4000, 53)),
            build(outside, IpAddr::V4(WEB), tcp(4001, 80, tcp_flags::SYN)),
        ],
        vec![],
        vec![],
        vec![],
    ]);
    drain(&mut s, &mut w, HOST);
    let c = stats.snapshot();
    assert_eq!(c.service_translated, 0, "kube-proxy's to translate");
    assert_eq!(c.new_allowed, 2);
    assert!(s.port(DNS).unwrap().sent().is_empty());
    assert!(s.port(WEB_PORT).unwrap().sent().is_empty());
    // Untranslated, they would go back where they came from.
    assert_eq!(s.stats().hairpin, 2);
    // The same from a local pod is translated.
    let mut s = switch(&[
        vec![],
        vec![],
        vec![build(v4(2), IpAddr::V4(DNS_V4), udp(4000, 53))],
        vec![],
    ]);
    drain(&mut s, &mut w, CLIENT);
    assert_eq!(stats.snapshot().service_translated, 1);
    assert_eq!(s.port(DNS).unwrap().sent().len(), 1);
}

// Refusal: a Service without endpoints answers its client.

/// An IPv6 Service address without endpoints.
const EMPTY_V6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0x30);

/// Services without endpoints on TCP 80 and UDP 53, at [`EMPTY`] and
/// [`EMPTY_V6`], and a `Local` one on UDP 53 at [`ELSEWHERE`] whose only
/// endpoint is on another node.
fn empty_services() -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    let id = b.add_service("ns", "empty", ServiceOptions::default());
    for addr in [IpAddr::V4(EMPTY), IpAddr::V6(EMPTY_V6)] {
        for (protocol, port) in [(IpProtocol::TCP, 80), (IpProtocol::UDP, 53)] {
            let key = FrontendKey {
                addr,
                protocol,
                port,
            };
            b.add_frontend(id, key, &[]).unwrap();
        }
    }
    let local = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let id = b.add_service("ns", "elsewhere", local);
    let key = FrontendKey {
        addr: IpAddr::V4(ELSEWHERE),
        protocol: IpProtocol::UDP,
        port: 53,
    };
    let remote = Endpoint::ready(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)), 8080, false);
    b.add_frontend(id, key, &[remote]).unwrap();
    b.build()
}

/// An address as the flow keys hold it.
fn bits(addr: IpAddr) -> u128 {
    FlowKey::new(addr, addr, 0, 0, 0).unwrap().src
}

/// The ICMP or ICMPv6 message of `frame`, after checking its IPv4 header
/// checksum and its own checksum (over the pseudo-header for ICMPv6): the
/// frame's meta and the quoted packet.
fn verified_icmp(frame: &[u8]) -> (PacketMeta, Vec<u8>) {
    let m = meta(frame);
    let l3 = usize::from(m.l3_offset);
    let l4 = usize::from(m.l4_offset.unwrap());
    let end = l3 + m.l3_len as usize;
    assert_eq!(end, frame.len(), "the IP packet fills the frame");
    let start = if m.is_ipv6() {
        let addrs = address_range(true);
        let len = (end - l4) as u32;
        pseudo_header_sum(&frame[l3 + addrs.start..l3 + addrs.end], 58, len)
    } else {
        assert_eq!(internet_checksum(&frame[l3..l4]), 0, "IPv4 header checksum");
        0
    };
    assert_eq!(
        fold(data_sum(start, &frame[l4..end])),
        0xffff,
        "ICMP checksum"
    );
    (m, frame[l4 + 8..end].to_vec())
}

/// Checks a quoted packet: its IPv4 header checksum and, when the quote is
/// the whole packet, its transport checksum.
fn verify_quote(quote: &[u8], whole: bool) {
    if quote[0] >> 4 == 4 {
        let header = usize::from(quote[0] & 0xf) * 4;
        assert_eq!(internet_checksum(&quote[..header]), 0, "quoted IPv4 header");
    }
    if whole {
        let Ok(Parsed::Ip(m)) = parse_frame(LinkType::RawIp, quote) else {
            panic!("the quote is a whole packet");
        };
        let l4 = usize::from(m.l4_offset.unwrap());
        let addrs = address_range(m.is_ipv6());
        let pseudo = pseudo_header_sum(
            &quote[addrs.clone()],
            m.key.protocol,
            (quote.len() - l4) as u32,
        );
        assert_eq!(
            fold(data_sum(pseudo, &quote[l4..])),
            0xffff,
            "quoted transport checksum"
        );
    }
}

/// An Ethernet frame holding an ICMP (IPv4) or ICMPv6 error from `src` to
/// `dst` that quotes `quote`, its checksums filled.
fn icmp_error(src: IpAddr, dst: IpAddr, msg_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
    let mut msg = frames::icmp(msg_type, code, [0; 4], quote);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let sum = internet_checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
            let ip = frames::V4::new(1)
                .addrs(s.octets(), d.octets())
                .packet(&msg);
            frames::ethernet(frames::ETH_IPV4, &ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let addrs = [s.octets(), d.octets()].concat();
            let pseudo = pseudo_header_sum(&addrs, 58, msg.len() as u32);
            let sum = !fold(data_sum(pseudo, &msg));
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
            frames::ethernet(
                frames::ETH_IPV6,
                &frames::ipv6(58, s.octets(), d.octets(), &msg),
            )
        }
        _ => panic!("one family"),
    }
}

/// The IP packet of an untagged Ethernet frame.
fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

#[test]
fn a_service_without_endpoints_answers_port_unreachable_to_its_sender() {
    let publisher = Publisher::new(Tables::empty(1), empty_services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (e4, e6) = (IpAddr::V4(EMPTY), IpAddr::V6(EMPTY_V6));
    let long = |src, dst, transport, payload_len| {
        FrameSpec {
            src,
            dst,
            transport,
            payload_len,
            payload_fill: 0x5a,
        }
        .build()
    };
    let attempts = vec![
        build(v4(2), e4, tcp(4000, 80, tcp_flags::SYN)),
        build(v4(2), e4, udp(4001, 53)),
        build(v6(2), e6, tcp(4002, 80, tcp_flags::SYN)),
        build(v6(2), e6, udp(4003, 53)),
        // Longer than an answer quotes.
        long(v4(2), e4, udp(4004, 53), 1000),
        long(v6(2), e6, udp(4005, 53), 1400),
    ];
    let mut s = switch(&[vec![], vec![], attempts.clone(), vec![]]);
    drain(&mut s, &mut w, CLIENT);
    let c = stats.snapshot();
    assert_eq!(
        (c.service_no_endpoint, c.service_rejects, c.denied),
        (6, 6, 6)
    );
    assert_eq!(s.stats().service_refused, 6);
    assert_eq!(
        s.stats().forwarded,
        [0, 0, 6, 0],
        "answers only, to the sender's port"
    );
    let answers = s.port(CLIENT).unwrap().sent();
    assert_eq!(answers.len(), 6);
    for (answer, attempt) in answers.iter().zip(&attempts) {
        let asked = meta(attempt);
        let v6 = asked.is_ipv6();
        let (m, quote) = verified_icmp(answer);
        assert_eq!(
            (&answer[..6], &answer[6..12], &answer[12..14]),
            (&attempt[6..12], &attempt[..6], &attempt[12..14]),
            "Ethernet addresses swapped"
        );
        // From the Service address to the client, port unreachable.
        assert_eq!((m.key.src, m.key.dst), (asked.key.dst, asked.key.src));
        assert_eq!(m.key.ipv6, v6);
        let (protocol, unreachable) = if v6 { (58, (1, 4)) } else { (1, (3, 3)) };
        assert_eq!(m.key.protocol, protocol);
        let icmp = m.icmp.unwrap();
        assert_eq!((icmp.msg_type, icmp.code), unreachable);
        assert_eq!(m.ttl, 64);
        // It quotes the attempt (the client's stack finds its socket so),
        // as much as fits in 576 bytes (IPv4) or 1280 (IPv6).
        assert_eq!(m.related, Some(asked.key.reversed()));
        let (headers, limit) = if v6 { (48, 1280) } else { (28, 576) };
        let ip = ip_of(attempt);
        assert_eq!(quote, ip[..ip.len().min(limit - headers)]);
        assert_eq!(m.l3_len as usize, (headers + quote.len()).min(limit));
        verify_quote(&quote, ip.len() <= limit - headers);
    }
}

#[test]
fn no_answer_to_resets_broadcasts_local_only_services_or_beyond_the_budget() {
    let publisher = Publisher::new(Tables::empty(1), empty_services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    // Frames of a memory port carry time 0: the budget sees one instant.
    let config = WorkerConfig {
        capture_time: true,
        ..WorkerConfig::default()
    };
    let mut w = Worker::new(&conntrack, publisher.reader(), &stats, config);
    let e4 = IpAddr::V4(EMPTY);
    let mut broadcast = build(v4(2), e4, udp(4001, 53));
    broadcast[..6].fill(0xff);
    let quiet = vec![
        build(v4(2), e4, tcp(4000, 80, tcp_flags::RST)),
        broadcast,
        // internalTrafficPolicy Local, no endpoint here: dropped, as
        // kube-proxy drops it.
        build(v4(2), IpAddr::V4(ELSEWHERE), udp(4002, 53)),
    ];
    let mut s = switch(&[vec![], vec![], quiet, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    let c = stats.snapshot();
    assert_eq!((c.service_no_endpoint, c.service_no_local_endpoint), (2, 1));
    assert_eq!((c.service_rejects, c.service_rejects_limited), (0, 0));
    assert_eq!(s.stats().forwarded, [0, 0, 0, 0]);
    // An output that cannot answer (an offline replay) is not asked to
    // send anything and nothing counts as sent.
    let got = run(&mut w, &[build(v4(2), e4, udp(4003, 53))]);
    assert!(matches!(
        got[0],
        (Outcome::NoBackend(NoBackend::NoEndpoints), false, None)
    ));
    assert_eq!(stats.snapshot().service_rejects, 0);
    // A flood at one instant: a burst is answered, the rest counted.
    let flood: Vec<Vec<u8>> = (0..60)
        .map(|i| build(v4(2), e4, udp(5000 + i, 53)))
        .collect();
    let mut s = switch(&[vec![], vec![], flood, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    let c = stats.snapshot();
    let burst = podfence_datapath::reject::Budget::BURST;
    assert_eq!(
        (c.service_rejects, c.service_rejects_limited),
        (burst, 60 - burst)
    );
    assert_eq!(s.stats().forwarded, [0, 0, burst, 0]);
}

// ICMP errors about translated connections.

#[test]
fn icmp_errors_from_the_backend_side_reach_the_client_from_the_service_address() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (dns4, dns6) = (IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6));
    let (c4, c6, b4, b6) = (v4(2), v6(2), v4(1), v6(1));
    let client = vec![
        build(c4, dns4, udp(4000, 53)),
        build(c6, dns6, udp(4000, 53)),
        build(c4, dns4, tcp(4001, 53, tcp_flags::SYN)),
        build(c6, dns6, tcp(4001, 53, tcp_flags::SYN)),
    ];
    let mut s = switch(&[vec![], vec![], client, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    // As the backend received them: to b4/b6:5353.
    let delivered = s.port(DNS).unwrap().sent().to_vec();
    assert_eq!(delivered.len(), 4);
    // The backend refuses the datagrams, quoting them whole; a router on
    // the way (behind the host port) refuses the segments, quoting IP
    // header and 8 bytes (RFC 792), so the TCP checksum is not quoted.
    let backend = vec![
        icmp_error(b4, c4, 3, 3, ip_of(&delivered[0])),
        icmp_error(b6, c6, 1, 4, ip_of(&delivered[1])),
    ];
    let (r4, r6) = (
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
        "fd01::1".parse::<IpAddr>().unwrap(),
    );
    let router = vec![
        icmp_error(r4, c4, 11, 0, &ip_of(&delivered[2])[..28]),
        icmp_error(r6, c6, 3, 0, &ip_of(&delivered[3])[..48]),
    ];
    let mut s = switch(&[router, backend, vec![], vec![]]);
    drain(&mut s, &mut w, DNS);
    drain(&mut s, &mut w, HOST);
    let got = s.port(CLIENT).unwrap().sent();
    assert_eq!(got.len(), 4, "every error reaches the client");
    let want = [
        (dns4, dns4, c4, 17, 4000, true),
        (dns6, dns6, c6, 17, 4000, true),
        (r4, dns4, c4, 6, 4001, false),
        (r6, dns6, c6, 6, 4001, false),
    ];
    for (f, (from, service, client, protocol, port, whole)) in got.iter().zip(want) {
        let (m, quote) = verified_icmp(f);
        assert_eq!(
            (m.key.src, m.key.dst),
            (bits(from), bits(client)),
            "from the Service address if the backend sent it, else as sent"
        );
        // The quote is the packet as the client sent it.
        let q = m.related.unwrap().reversed();
        assert_eq!(
            (q.src, q.src_port, q.dst, q.dst_port, q.protocol),
            (bits(client), port, bits(service), 53, protocol)
        );
        verify_quote(&quote, whole);
    }
    assert_eq!(s.stats().translated, 4);
}

#[test]
fn icmp_errors_from_the_client_about_a_reply_reach_the_backend() {
    let publisher = Publisher::new(Tables::empty(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let (dns4, dns6) = (IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6));
    let (c4, c6, b4, b6) = (v4(2), v6(2), v4(1), v6(1));
    let client = vec![
        build(c4, dns4, udp(4000, 53)),
        build(c6, dns6, udp(4000, 53)),
    ];
    let replies = vec![
        build(b4, c4, udp(5353, 4000)),
        build(b6, c6, udp(5353, 4000)),
    ];
    let mut s = switch(&[vec![], replies, client, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    drain(&mut s, &mut w, DNS);
    // As the client received them: from the Service address.
    let received = s.port(CLIENT).unwrap().sent().to_vec();
    assert_eq!(received.len(), 2);
    // The client's socket is gone: port unreachable, to the Service
    // address the reply came from.
    let errors = vec![
        icmp_error(c4, dns4, 3, 3, ip_of(&received[0])),
        icmp_error(c6, dns6, 1, 4, ip_of(&received[1])),
    ];
    let mut s = switch(&[vec![], vec![], errors, vec![]]);
    drain(&mut s, &mut w, CLIENT);
    let got = s.port(DNS).unwrap().sent();
    assert_eq!(got.len(), 2, "to the backend's port");
    for (f, (client, backend)) in got.iter().zip([(c4, b4), (c6, b6)]) {
        let (m, quote) = verified_icmp(f);
        assert_eq!((m.key.src, m.key.dst), (bits(client), bits(backend)));
        // The quote is the reply as the backend sent it.
        let q = m.related.unwrap().reversed();
        assert_eq!(
            (q.src, q.src_port, q.dst, q.dst_port),
            (bits(backend), 5353, bits(client), 4000)
        );
        verify_quote(&quote, true);
    }
    let c = stats.snapshot();
    assert_eq!((c.denied, c.service_translated), (0, 2));
}

// Checksum offload: begun checksums through the switch.

/// `frame` as a sender with checksum offload hands it over: its TCP or UDP
/// checksum field holding the folded pseudo-header sum.
fn begin(mut frame: Vec<u8>) -> Vec<u8> {
    let m = meta(&frame);
    let l3 = usize::from(m.l3_offset);
    let l4 = usize::from(m.l4_offset.unwrap());
    let end = l3 + m.l3_len as usize;
    let at = l4 + if m.key.protocol == 6 { 16 } else { 6 };
    let addrs = address_range(m.is_ipv6());
    let pseudo = fold(pseudo_header_sum(
        &frame[l3 + addrs.start..l3 + addrs.end],
        m.key.protocol,
        (end - l4) as u32,
    ));
    frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    frame
}

/// Runs `client` frames (from the client pod) and then `replies` (from the
/// DNS backend) through a fresh worker and a switch whose ports take
/// checksum requests or not; returns the switch.
fn run_offloaded(client: &[Vec<u8>], replies: &[Vec<u8>], offload: bool) -> Switch<MemoryPort> {
    let publisher = Publisher::new(services::tables(1), services::services());
    let conntrack = Conntrack::new(1024, Timeouts::default());
    let stats = WorkerStats::default();
    let mut w = open_worker(&publisher, &conntrack, &stats);
    let inputs = [vec![], replies.to_vec(), client.to_vec(), vec![]];
    let ports = inputs
        .iter()
        .zip(["host", "dns", "client", "web"])
        .map(|(f, name)| {
            let p = MemoryPort::new(name, LinkType::Ethernet, f.iter().map(Vec::as_slice), 1)
                .keeping_sent(64);
            if offload {
                p.with_checksum_offload()
            } else {
                p
            }
        })
        .collect();
    let mut s = Switch::new(ports, Arc::new(fib()), 2048).unwrap();
    drain(&mut s, &mut w, CLIENT);
    drain(&mut s, &mut w, DNS);
    s
}

#[test]
fn begun_checksums_are_left_to_offloading_ports_through_translation() {
    let (dns4, dns6) = (IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6));
    let (c4, c6, b4, b6) = (v4(2), v6(2), v4(1), v6(1));
    let syn = tcp_flags::SYN;
    let synack = tcp_flags::SYN | tcp_flags::ACK;
    // Through the Service (translated), and pod to pod (not translated);
    // the last one complete, as a raw socket would send it.
    let client = vec![
        begin(build(c4, dns4, udp(4000, 53))),
        begin(build(c6, dns6, udp(4000, 53))),
        begin(build(c4, dns4, tcp(4001, 53, syn))),
        begin(build(c6, dns6, tcp(4001, 53, syn))),
        begin(build(c4, b4, tcp(4002, 5353, syn))),
        build(c4, b4, udp(4003, 5353)),
    ];
    let replies = vec![
        begin(build(b4, c4, udp(5353, 4000))),
        begin(build(b6, c6, udp(5353, 4000))),
        begin(build(b4, c4, tcp(5353, 4001, synack))),
        begin(build(b6, c6, tcp(5353, 4001, synack))),
    ];
    let software = run_offloaded(&client, &replies, false);
    let offloaded = run_offloaded(&client, &replies, true);
    assert_eq!(software.stats().checksums_finished, 9);
    assert_eq!(software.stats().checksums_offloaded, 0);
    assert_eq!(offloaded.stats().checksums_finished, 0);
    assert_eq!(offloaded.stats().checksums_offloaded, 9);
    assert_eq!(offloaded.stats().translated, 8);
    for port in [DNS, CLIENT] {
        let want = software.port(port).unwrap().sent();
        let got = offloaded.port(port).unwrap();
        assert_eq!(got.sent().len(), want.len());
        assert!(
            software
                .port(port)
                .unwrap()
                .sent_requests()
                .iter()
                .all(Option::is_none)
        );
        for (i, ((frame, request), want)) in got
            .sent()
            .iter()
            .zip(got.sent_requests())
            .zip(want)
            .enumerate()
        {
            let complete = i == 5 && port == DNS;
            assert_eq!(request.is_none(), complete, "port {port} frame {i}");
            let mut frame = frame.clone();
            if let Some(request) = *request {
                // Still begun: the device finishing it gives what the
                // software path sent, to the byte.
                assert_eq!(
                    usize::from(request.start),
                    usize::from(meta(&frame).l4_offset.unwrap())
                );
                assert!(podfence_datapath::offload::finish_request(
                    &mut frame, request
                ));
            }
            verified_key(&frame);
            assert_eq!(&frame, want, "port {port} frame {i}");
        }
    }
}
