//! What one fuzz input does: the first byte picks the link type, the rest
//! is the frame. The frame goes through `parse_frame`, whose result is
//! checked for internal consistency, through every header view, whose
//! accessors are all called, and, if it parsed as IP, through what the
//! switch may do to it: both rewrites of a Service translation (an ICMP
//! error's quote included) and the port unreachable answering it. Any
//! panic is a bug.
//!
//! Shared by the cargo-fuzz target and the plain test over the seeds.

use podfence_datapath::conntrack::NatAddr;
use podfence_datapath::flow::{Fragment, PacketMeta, ParseError, Parsed, parse_frame};
use podfence_datapath::fragments::FragmentKey;
use podfence_datapath::link::LinkType;
use podfence_datapath::nat::{Rewrite, Side};
use podfence_datapath::wire::{
    EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6ExtHeader, Ipv6FragmentHeader,
    Ipv6Packet, LinuxSll2Header, LinuxSllHeader, SctpPacket, TcpPacket, UdpPacket, ip_proto,
};
use podfence_datapath::{nat, reject};

/// The link type a selector byte stands for.
pub(crate) fn link_type(selector: u8) -> LinkType {
    match selector % 4 {
        0 => LinkType::Ethernet,
        1 => LinkType::RawIp,
        2 => LinkType::LinuxSll,
        _ => LinkType::LinuxSll2,
    }
}

/// Runs one input; returns the parse result for callers that check it.
pub(crate) fn run(data: &[u8]) -> Option<Result<Parsed, ParseError>> {
    let parsed = parse_checked(data)?;
    let frame = &data[1..];
    if let Ok(Parsed::Ip(meta)) = parsed {
        assert!(!meta.key.to_string().is_empty());
        rewrites(link_type(data[0]), frame, &meta);
    }
    views(frame);
    if let Some(rest) = frame.get(1..) {
        views(rest);
    }
    Some(parsed)
}

/// The `parse_frame` half of [`run`]: parse and check the result, without
/// the views.
pub(crate) fn parse_checked(data: &[u8]) -> Option<Result<Parsed, ParseError>> {
    let (&selector, frame) = data.split_first()?;
    let parsed = parse_frame(link_type(selector), frame);
    match parsed {
        Ok(Parsed::Ip(meta)) => check_meta(frame, &meta),
        Ok(Parsed::NotIp { ethertype }) => {
            assert!(
                ethertype != 0x0800 && ethertype != 0x86dd,
                "IP reported as not IP"
            );
        }
        Err(e) => {
            assert!(e.index() < ParseError::COUNT);
            assert!(!e.as_str().is_empty());
        }
    }
    Some(parsed)
}

fn check_meta(frame: &[u8], meta: &PacketMeta) {
    let l3 = usize::from(meta.l3_offset);
    assert!(l3 < frame.len());
    assert!(
        l3 + meta.l3_len as usize <= frame.len(),
        "IP packet runs past the frame"
    );
    let version = frame[l3] >> 4;
    assert_eq!(version, if meta.is_ipv6() { 6 } else { 4 });
    let ttl_at = if meta.is_ipv6() { 7 } else { 8 };
    assert_eq!(frame[l3 + ttl_at], meta.ttl);
    if let Some(l4) = meta.l4_offset {
        assert!(usize::from(l4) <= l3 + meta.l3_len as usize);
        assert!(!matches!(meta.fragment, Fragment::Later { .. }));
    } else {
        assert!(matches!(meta.fragment, Fragment::Later { .. }));
        assert_eq!((meta.key.src_port, meta.key.dst_port), (0, 0));
    }
    let key = meta.key;
    assert_eq!(key.reversed().reversed(), key);
    assert_eq!(key.canonical().0, key.reversed().canonical().0);
    if meta.tcp_flags != 0 {
        assert_eq!(key.protocol, ip_proto::TCP);
    }
    if meta.sctp_chunk.is_some() {
        assert_eq!(key.protocol, ip_proto::SCTP);
    }
    if meta.echo_reply {
        assert_eq!(key.src_port, key.dst_port);
    }
    if let Some(related) = meta.related {
        assert!(meta.icmp.is_some());
        assert_eq!(related.ipv6, key.ipv6);
    }
    assert_eq!(
        FragmentKey::of(meta).is_some(),
        meta.fragment != Fragment::NotFragment
    );
}

/// What the switch may do to a parsed packet: translate either end (a
/// rewrite it refuses leaves the frame as it was; one it makes leaves a
/// frame that parses) and, for Ethernet, answer it with a port unreachable
/// (which parses and quotes it).
fn rewrites(link: LinkType, frame: &[u8], meta: &PacketMeta) {
    let addr = if meta.is_ipv6() {
        0xfd00_0000_0000_0000_0000_0000_0000_0001
    } else {
        0x0a00_0001
    };
    let to = NatAddr { addr, port: 8080 };
    for side in [Side::Source, Side::Destination] {
        let mut copy = frame.to_vec();
        if nat::apply(&mut copy, meta, &Rewrite { side, to }).is_ok() {
            assert!(
                matches!(parse_frame(link, &copy), Ok(Parsed::Ip(_))),
                "a rewrite left a frame that does not parse"
            );
        } else {
            assert_eq!(copy, frame, "a refused rewrite changed the frame");
        }
    }
    if link == LinkType::Ethernet {
        let mut out = [0u8; 1600];
        if let Some(n) = reject::port_unreachable(frame, meta, &mut out) {
            match parse_frame(link, &out[..n]) {
                Ok(Parsed::Ip(answer)) => assert!(answer.related.is_some(), "quotes nothing"),
                other => panic!("the answer does not parse: {other:?}"),
            }
        }
    }
}

/// Every view over `b`, every accessor of the ones that check out.
fn views(b: &[u8]) {
    link_views(b);
    ip_views(b);
    transport_views(b);
}

fn link_views(b: &[u8]) {
    if let Ok(e) = EthernetFrame::new_checked(b) {
        let _ = (
            e.dst_addr(),
            e.src_addr(),
            e.outer_ethertype(),
            e.ethertype(),
        );
        let tags = e.vlan_tags();
        let _ = (tags.outer_id(), tags.inner_id(), tags.tcis().len());
        assert_eq!(e.header_len() + e.payload().len(), b.len());
    }
    if let Ok(s) = LinuxSllHeader::new_checked(b) {
        let _ = (s.packet_type(), s.arphrd_type(), s.link_addr());
        let _ = (s.protocol(), s.payload());
    }
    if let Ok(s) = LinuxSll2Header::new_checked(b) {
        let _ = (s.protocol(), s.interface_index(), s.arphrd_type());
        let _ = (s.packet_type(), s.link_addr(), s.payload());
    }
}

fn ip_views(b: &[u8]) {
    let v4 = [
        Ipv4Packet::new_checked(b),
        Ipv4Packet::new_checked_embedded(b),
    ];
    for ip in v4.into_iter().flatten() {
        let _ = (ip.version(), ip.header_len(), ip.dscp(), ip.ecn());
        let _ = (ip.total_len(), ip.ident(), ip.dont_frag(), ip.more_frags());
        let _ = (ip.frag_offset(), ip.is_fragment(), ip.ttl(), ip.protocol());
        let _ = (ip.checksum(), ip.src_addr(), ip.dst_addr(), ip.options());
        let _ = (ip.verify_checksum(), ip.payload());
    }
    let v6 = [
        Ipv6Packet::new_checked(b),
        Ipv6Packet::new_checked_embedded(b),
    ];
    for ip in v6.into_iter().flatten() {
        let _ = (ip.version(), ip.traffic_class(), ip.flow_label());
        let _ = (ip.payload_len(), ip.next_header(), ip.hop_limit());
        let _ = (ip.src_addr(), ip.dst_addr(), ip.payload());
        if let Ok(ext) = ip.extensions() {
            assert!(ext.l4_offset <= ip.packet().len());
        }
    }
    if let Ok(h) = Ipv6ExtHeader::new_checked(b, b.first().copied().unwrap_or(0)) {
        let _ = (h.next_header(), h.header_len(), h.data());
    }
    if let Ok(h) = Ipv6FragmentHeader::new_checked(b) {
        let _ = (h.next_header(), h.frag_offset(), h.more_frags());
        let _ = (h.ident(), h.fragment());
    }
}

fn transport_views(b: &[u8]) {
    if let Ok(t) = TcpPacket::new_checked(b) {
        let _ = (t.src_port(), t.dst_port(), t.seq_number(), t.ack_number());
        let _ = (
            t.header_len(),
            t.flags(),
            t.syn(),
            t.ack(),
            t.fin(),
            t.rst(),
        );
        let _ = (
            t.window(),
            t.checksum(),
            t.urgent(),
            t.options(),
            t.payload(),
        );
    }
    let udp = [UdpPacket::new_checked(b), UdpPacket::new_checked_header(b)];
    for u in udp.into_iter().flatten() {
        let _ = (u.src_port(), u.dst_port(), u.len(), u.is_empty());
        let _ = (u.checksum(), u.payload());
    }
    if let Ok(s) = SctpPacket::new_checked(b) {
        let _ = (s.src_port(), s.dst_port(), s.verification_tag());
        let _ = (s.checksum(), s.first_chunk(), s.chunks());
    }
    if let Ok(i) = Icmpv4Packet::new_checked(b) {
        let _ = (i.msg_type(), i.code(), i.checksum(), i.echo_ident());
        let _ = (i.echo_seq(), i.is_error(), i.embedded(), i.payload());
    }
    if let Ok(i) = Icmpv6Packet::new_checked(b) {
        let _ = (i.msg_type(), i.code(), i.checksum(), i.echo_ident());
        let _ = (
            i.echo_seq(),
            i.mtu(),
            i.is_error(),
            i.embedded(),
            i.payload(),
        );
    }
}
