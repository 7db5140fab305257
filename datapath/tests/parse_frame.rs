//! `parse_frame` on hand-built frames: every header type, every framing,
//! fragments, ICMP errors, and every error reason.

use std::collections::HashSet;

use podfence_datapath::flow::{Fragment, IcmpInfo, PacketMeta, ParseError, Parsed, parse_frame};
use podfence_datapath::fragments::FragmentKey;
use podfence_datapath::link::LinkType;
use podfence_testkit::frames::*;

fn meta(link: LinkType, frame: &[u8]) -> PacketMeta {
    match parse_frame(link, frame) {
        Ok(Parsed::Ip(m)) => m,
        other => panic!("expected an IP packet, got {other:?}"),
    }
}

fn eth(frame: &[u8]) -> PacketMeta {
    meta(LinkType::Ethernet, frame)
}

fn err(link: LinkType, frame: &[u8]) -> ParseError {
    match parse_frame(link, frame) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn v4(a: [u8; 4]) -> u128 {
    u128::from(u32::from_be_bytes(a))
}

fn v6(a: [u8; 16]) -> u128 {
    u128::from_be_bytes(a)
}

#[test]
fn ipv4_tcp_syn() {
    let ip = V4::new(6).packet(&tcp(40000, 80, SYN));
    let m = eth(&ethernet(ETH_IPV4, &ip));
    assert_eq!(m.key.src, v4(V4_A));
    assert_eq!(m.key.dst, v4(V4_B));
    assert_eq!(
        (m.key.src_port, m.key.dst_port, m.key.protocol),
        (40000, 80, 6)
    );
    assert!(!m.key.ipv6 && !m.is_ipv6());
    assert_eq!(m.tcp_flags, SYN);
    assert_eq!(m.fragment, Fragment::NotFragment);
    assert_eq!(
        (m.sctp_chunk, m.icmp, m.related, m.echo_reply),
        (None, None, None, false)
    );
    assert_eq!(m.l3_offset, 14);
    assert_eq!(m.l4_offset, Some(34));
    assert_eq!(m.l3_len, 44);
    assert_eq!(m.ttl, 64);
    assert_eq!(m.key.to_string(), "TCP 10.244.1.5:40000 -> 10.244.2.7:80");
}

#[test]
fn ipv6_tcp_syn_ack() {
    let ip = ipv6(6, V6_A, V6_B, &tcp(443, 40000, SYN | ACK));
    let m = eth(&ethernet(ETH_IPV6, &ip));
    assert_eq!((m.key.src, m.key.dst), (v6(V6_A), v6(V6_B)));
    assert_eq!(
        (m.key.src_port, m.key.dst_port, m.key.protocol),
        (443, 40000, 6)
    );
    assert!(m.is_ipv6());
    assert_eq!(m.tcp_flags, SYN | ACK);
    assert_eq!(
        (m.l3_offset, m.l4_offset, m.l3_len, m.ttl),
        (14, Some(54), 64, 64)
    );
    assert_eq!(m.key.to_string(), "TCP [fd00::a]:443 -> [fd00::b]:40000");
}

#[test]
fn udp_with_ethernet_padding() {
    let ip = V4::new(17).packet(&udp(5353, 53, b"q"));
    let frame = ethernet_padded(ETH_IPV4, &ip);
    assert_eq!(frame.len(), 60);
    let m = eth(&frame);
    assert_eq!(
        (m.key.src_port, m.key.dst_port, m.key.protocol),
        (5353, 53, 17)
    );
    assert_eq!(m.l3_len, 29, "padding is not part of the IP packet");
    assert_eq!(m.tcp_flags, 0);

    let ip = ipv6(17, V6_A, V6_B, &udp(5353, 53, b"q"));
    let m = eth(&ethernet_padded(ETH_IPV6, &ip));
    assert_eq!(
        (m.key.src_port, m.key.dst_port, m.key.protocol),
        (5353, 53, 17)
    );
}

#[test]
fn sctp_init_and_chunkless() {
    for (ethertype, ip) in [
        (ETH_IPV4, V4::new(132).packet(&sctp(5000, 2905, 0, 1))),
        (ETH_IPV6, ipv6(132, V6_A, V6_B, &sctp(5000, 2905, 0, 1))),
    ] {
        let m = eth(&ethernet(ethertype, &ip));
        assert_eq!(
            (m.key.src_port, m.key.dst_port, m.key.protocol),
            (5000, 2905, 132)
        );
        assert_eq!(m.sctp_chunk, Some(1));
    }
    let abort = V4::new(132).packet(&sctp(5000, 2905, 0xabcd, 6));
    assert_eq!(eth(&ethernet(ETH_IPV4, &abort)).sctp_chunk, Some(6));
    // A common header alone: no first chunk, still a valid packet.
    let bare = V4::new(132).packet(&sctp(5000, 2905, 1, 1)[..12]);
    let m = eth(&ethernet(ETH_IPV4, &bare));
    assert_eq!((m.key.dst_port, m.sctp_chunk), (2905, None));
}

#[test]
fn icmp_echo_request_and_reply_share_a_connection() {
    let request = eth(&ethernet(ETH_IPV4, &V4::new(1).packet(&echo(8, 0x77, 1))));
    let reply = eth(&ethernet(
        ETH_IPV4,
        &V4::new(1).addrs(V4_B, V4_A).packet(&echo(0, 0x77, 1)),
    ));
    assert_eq!((request.key.src_port, request.key.dst_port), (0x77, 0x77));
    assert_eq!(
        request.icmp,
        Some(IcmpInfo {
            msg_type: 8,
            code: 0
        })
    );
    assert!(!request.echo_reply && reply.echo_reply);
    assert_eq!(reply.key, request.key.reversed());
    assert_eq!(reply.key.canonical().0, request.key.canonical().0);

    let request = eth(&ethernet(
        ETH_IPV6,
        &ipv6(58, V6_A, V6_B, &echo(128, 0x66, 1)),
    ));
    let reply = eth(&ethernet(
        ETH_IPV6,
        &ipv6(58, V6_B, V6_A, &echo(129, 0x66, 1)),
    ));
    assert_eq!((request.key.src_port, request.key.protocol), (0x66, 58));
    assert!(!request.echo_reply && reply.echo_reply);
    assert_eq!(reply.key, request.key.reversed());
}

#[test]
fn icmp_error_names_the_connection_it_is_about() {
    // A UDP query from A to B, answered by "port unreachable" from B's
    // router to A.
    let query = V4::new(17).packet(&udp(5353, 53, b"query"));
    let query_key = eth(&ethernet(ETH_IPV4, &query)).key;
    for quoted in [&query[..28], &query[..]] {
        let error = V4::new(1)
            .addrs(V4_ROUTER, V4_A)
            .packet(&icmp(3, 3, [0; 4], quoted));
        let m = eth(&ethernet(ETH_IPV4, &error));
        assert_eq!(
            m.icmp,
            Some(IcmpInfo {
                msg_type: 3,
                code: 3
            })
        );
        assert_eq!((m.key.src_port, m.key.dst_port), (0, 0));
        assert_eq!(m.related, Some(query_key.reversed()));
    }

    // Time exceeded for an echo request: the identifier is the port.
    let ping = V4::new(1).packet(&echo(8, 0x77, 1));
    let ping_key = eth(&ethernet(ETH_IPV4, &ping)).key;
    let error = V4::new(1)
        .addrs(V4_ROUTER, V4_A)
        .packet(&icmp(11, 0, [0; 4], &ping[..28]));
    assert_eq!(
        eth(&ethernet(ETH_IPV4, &error)).related,
        Some(ping_key.reversed())
    );

    // Packet too big for a TCP segment, quoting an extension header.
    let mut rest = ext_header(6, 1);
    rest.extend(tcp(40000, 443, ACK));
    let segment = ipv6(60, V6_A, V6_B, &rest);
    let segment_key = eth(&ethernet(ETH_IPV6, &segment)).key;
    let error = ipv6(
        58,
        V6_ROUTER,
        V6_A,
        &icmp(2, 0, [0, 0, 5, 0xdc], &segment[..56]),
    );
    let m = eth(&ethernet(ETH_IPV6, &error));
    assert_eq!(
        m.icmp,
        Some(IcmpInfo {
            msg_type: 2,
            code: 0
        })
    );
    assert_eq!(m.related, Some(segment_key.reversed()));

    // An error about a non-first fragment: addresses and protocol only.
    let mut rest = frag_header(17, 64, false, 9);
    rest.extend_from_slice(&[0; 16]);
    let fragment = ipv6(44, V6_A, V6_B, &rest);
    let error = ipv6(58, V6_ROUTER, V6_A, &icmp(3, 0, [0; 4], &fragment));
    let related = eth(&ethernet(ETH_IPV6, &error)).related.unwrap();
    assert_eq!(
        (related.src, related.dst, related.protocol),
        (v6(V6_B), v6(V6_A), 17)
    );
    assert_eq!((related.src_port, related.dst_port), (0, 0));
}

#[test]
fn icmp_error_with_an_unreadable_quote_is_malformed() {
    let query = V4::new(17).packet(&udp(5353, 53, b"query"));
    // Cut inside the quoted IP header, and inside the quoted ports.
    for cut in [0, 10, 19, 20, 23] {
        let error = V4::new(1)
            .addrs(V4_ROUTER, V4_A)
            .packet(&icmp(3, 3, [0; 4], &query[..cut]));
        assert_eq!(
            err(LinkType::RawIp, &error),
            ParseError::BadIcmpInner,
            "{cut}"
        );
    }
    // 24 bytes hold the ports: enough.
    let error = V4::new(1)
        .addrs(V4_ROUTER, V4_A)
        .packet(&icmp(3, 3, [0; 4], &query[..24]));
    assert!(meta(LinkType::RawIp, &error).related.is_some());
    // An IPv6 header quoted in ICMP for IPv4.
    let v6_packet = ipv6(17, V6_A, V6_B, &udp(1, 2, b""));
    let error = V4::new(1).packet(&icmp(3, 0, [0; 4], &v6_packet));
    assert_eq!(err(LinkType::RawIp, &error), ParseError::BadIcmpInner);
    // A quoted extension chain that runs out.
    let mut rest = ext_header(6, 4);
    rest.extend(tcp(1, 2, SYN));
    let quoted = ipv6(0, V6_A, V6_B, &rest);
    let error = ipv6(58, V6_ROUTER, V6_A, &icmp(1, 0, [0; 4], &quoted[..60]));
    assert_eq!(err(LinkType::RawIp, &error), ParseError::BadIcmpInner);
}

#[test]
fn icmp_other_types_have_no_ports() {
    let ns = ipv6(58, V6_A, V6_B, &icmp(135, 0, [0; 4], &V6_B));
    let m = eth(&ethernet(ETH_IPV6, &ns));
    assert_eq!(
        m.icmp,
        Some(IcmpInfo {
            msg_type: 135,
            code: 0
        })
    );
    assert_eq!((m.key.src_port, m.key.dst_port, m.related), (0, 0, None));
    let timestamp = V4::new(1).packet(&icmp(13, 0, [0, 1, 0, 1], &[0; 12]));
    let m = eth(&ethernet(ETH_IPV4, &timestamp));
    assert_eq!((m.key.src_port, m.key.dst_port, m.related), (0, 0, None));
    // ICMP for IPv4 carried over IPv6 is just an unknown protocol there.
    let odd = ipv6(1, V6_A, V6_B, &echo(8, 1, 1));
    let m = eth(&ethernet(ETH_IPV6, &odd));
    assert_eq!((m.key.protocol, m.key.src_port, m.icmp), (1, 0, None));
}

#[test]
fn unknown_protocols_are_values() {
    let gre = V4::new(47).packet(&[0, 0, 0x08, 0x00]);
    let m = eth(&ethernet(ETH_IPV4, &gre));
    assert_eq!((m.key.protocol, m.key.src_port, m.key.dst_port), (47, 0, 0));
    assert_eq!(m.l4_offset, Some(34));
    let esp = ipv6(50, V6_A, V6_B, &[0, 0, 1, 0, 0, 0, 0, 1]);
    assert_eq!(eth(&ethernet(ETH_IPV6, &esp)).key.protocol, 50);
    let nothing = ipv6(59, V6_A, V6_B, &[]);
    assert_eq!(eth(&ethernet(ETH_IPV6, &nothing)).key.protocol, 59);
}

#[test]
fn vlan_and_qinq() {
    let ip = V4::new(6).packet(&tcp(40000, 80, SYN));
    let plain = eth(&ethernet(ETH_IPV4, &ip));
    let tagged = eth(&vlan(&[TPID_8021Q], ETH_IPV4, &ip));
    assert_eq!(tagged.key, plain.key);
    assert_eq!((tagged.l3_offset, tagged.l4_offset), (18, Some(38)));
    for outer in [TPID_8021AD, TPID_9100, TPID_8021Q] {
        let m = eth(&vlan(&[outer, TPID_8021Q], ETH_IPV4, &ip));
        assert_eq!((m.key, m.l3_offset), (plain.key, 22));
    }
    let three = vlan(&[TPID_8021AD, TPID_8021Q, TPID_8021Q], ETH_IPV4, &ip);
    assert_eq!(err(LinkType::Ethernet, &three), ParseError::TooManyVlanTags);
    let arp = vlan(&[TPID_8021Q], ETH_ARP, &[0; 28]);
    assert_eq!(
        parse_frame(LinkType::Ethernet, &arp),
        Ok(Parsed::NotIp { ethertype: ETH_ARP })
    );
}

#[test]
fn other_framings() {
    let ip4 = V4::new(17).packet(&udp(1000, 2000, b"x"));
    let ip6 = ipv6(17, V6_A, V6_B, &udp(1000, 2000, b"x"));
    for (ethertype, ip) in [(ETH_IPV4, &ip4), (ETH_IPV6, &ip6)] {
        let reference = eth(&ethernet(ethertype, ip));
        let raw = meta(LinkType::RawIp, ip);
        let cooked = meta(LinkType::LinuxSll, &sll(ethertype, ip));
        let cooked2 = meta(LinkType::LinuxSll2, &sll2(ethertype, ip));
        assert_eq!((raw.key, raw.l3_offset), (reference.key, 0));
        assert_eq!((cooked.key, cooked.l3_offset), (reference.key, 16));
        assert_eq!((cooked2.key, cooked2.l3_offset), (reference.key, 20));
        assert_eq!(
            cooked2.l4_offset.unwrap() - cooked2.l3_offset,
            raw.l4_offset.unwrap()
        );
    }
    // A VLAN tag kept in a cooked capture is walked as in Ethernet.
    let mut tagged = vec![0, 100];
    tagged.extend_from_slice(&ETH_IPV4.to_be_bytes());
    tagged.extend_from_slice(&ip4);
    let m = meta(LinkType::LinuxSll, &sll(TPID_8021Q, &tagged));
    assert_eq!(m.l3_offset, 20);
    assert_eq!(
        parse_frame(LinkType::LinuxSll2, &sll2(ETH_ARP, &[0; 28])),
        Ok(Parsed::NotIp { ethertype: ETH_ARP })
    );
    assert_eq!(err(LinkType::RawIp, &[0x50; 40]), ParseError::BadIpVersion);
    assert_eq!(err(LinkType::RawIp, &[]), ParseError::EmptyFrame);
    // The ethertype and the version nibble disagree.
    assert_eq!(
        err(LinkType::Ethernet, &ethernet(ETH_IPV6, &ip4)),
        ParseError::BadIpVersion
    );
    assert_eq!(
        err(LinkType::Ethernet, &ethernet(ETH_IPV4, &ip6)),
        ParseError::BadIpVersion
    );
}

#[test]
fn ipv4_options() {
    let ip = V4::new(6)
        .options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
        .packet(&tcp(40000, 80, SYN));
    let m = eth(&ethernet(ETH_IPV4, &ip));
    assert_eq!(m.l4_offset, Some(14 + 28));
    assert_eq!(
        (m.key.src_port, m.key.dst_port, m.tcp_flags),
        (40000, 80, SYN)
    );
    let max = V4::new(17).options(&[1; 40]).packet(&udp(1, 2, b""));
    assert_eq!(eth(&ethernet(ETH_IPV4, &max)).l4_offset, Some(14 + 60));
}

#[test]
fn ipv6_extension_headers() {
    let mut rest = ext_header(43, 1);
    rest.extend(ext_header(51, 3));
    rest.extend(ah_header(60, 4));
    rest.extend(ext_header(17, 2));
    rest.extend(udp(1000, 53, b"x"));
    let m = eth(&ethernet(ETH_IPV6, &ipv6(0, V6_A, V6_B, &rest)));
    assert_eq!(
        (m.key.protocol, m.key.src_port, m.key.dst_port),
        (17, 1000, 53)
    );
    assert_eq!(m.l4_offset, Some(14 + 40 + 8 + 24 + 24 + 16));
    assert_eq!(m.fragment, Fragment::NotFragment);

    let chain = |n: usize| {
        let mut rest = vec![];
        for i in 0..n {
            rest.extend(ext_header(if i + 1 == n { 6 } else { 60 }, 1));
        }
        rest.extend(tcp(1, 2, SYN));
        ethernet(ETH_IPV6, &ipv6(60, V6_A, V6_B, &rest))
    };
    assert_eq!(
        err(LinkType::Ethernet, &chain(9)),
        ParseError::TooManyIpv6Extensions
    );
    // Eight headers is the bound, and fine.
    let frame = chain(8);
    assert_eq!(eth(&frame).key.protocol, 6);
}

#[test]
fn ipv4_fragments() {
    let datagram = udp(1000, 2000, &[0xab; 64]);
    let first = V4::new(17).fragment(7, 0, true).packet(&datagram[..48]);
    let middle = V4::new(17).fragment(7, 48, true).packet(&datagram[48..64]);
    let last = V4::new(17).fragment(7, 64, false).packet(&datagram[64..]);
    let m = eth(&ethernet(ETH_IPV4, &first));
    assert_eq!(m.fragment, Fragment::First { id: 7 });
    assert_eq!(
        (m.key.src_port, m.key.dst_port),
        (1000, 2000),
        "UDP length spans fragments"
    );
    assert_eq!(m.l4_offset, Some(34));
    for later in [&middle, &last] {
        let l = eth(&ethernet(ETH_IPV4, later));
        assert_eq!(l.fragment, Fragment::Later { id: 7 });
        assert_eq!(
            (l.key.protocol, l.key.src_port, l.key.dst_port, l.l4_offset),
            (17, 0, 0, None)
        );
        assert_eq!(FragmentKey::of(&l), FragmentKey::of(&m));
    }
    assert!(FragmentKey::of(&m).is_some());

    // A first fragment too short for its TCP header is truncated.
    let short = V4::new(6)
        .fragment(8, 0, true)
        .packet(&tcp(1, 2, SYN)[..16]);
    assert_eq!(err(LinkType::RawIp, &short), ParseError::TruncatedTcp);
    // RFC 1858: a TCP fragment at offset 8 could rewrite the flags.
    let tiny = V4::new(6).fragment(8, 8, false).packet(&[0; 16]);
    assert_eq!(err(LinkType::RawIp, &tiny), ParseError::TinyTcpFragment);
    let tiny_udp = V4::new(17).fragment(8, 8, false).packet(&[0; 16]);
    assert_eq!(
        meta(LinkType::RawIp, &tiny_udp).fragment,
        Fragment::Later { id: 8 }
    );
}

#[test]
fn ipv6_fragments() {
    let datagram = tcp(40000, 443, SYN);
    // The first fragment has a destination-options header after the
    // fragment header; later fragments only name it as next header.
    let mut first = frag_header(60, 0, true, 0xdead_beef);
    first.extend(ext_header(6, 1));
    first.extend_from_slice(&datagram);
    let m = eth(&ethernet(ETH_IPV6, &ipv6(44, V6_A, V6_B, &first)));
    assert_eq!(m.fragment, Fragment::First { id: 0xdead_beef });
    assert_eq!(
        (m.key.protocol, m.key.src_port, m.key.dst_port),
        (6, 40000, 443)
    );
    assert_eq!(m.l4_offset, Some(14 + 40 + 8 + 8));

    let mut later = frag_header(60, 1232, false, 0xdead_beef);
    later.extend_from_slice(&[0; 24]);
    let l = eth(&ethernet(ETH_IPV6, &ipv6(44, V6_A, V6_B, &later)));
    assert_eq!(l.fragment, Fragment::Later { id: 0xdead_beef });
    assert_eq!((l.key.protocol, l.key.src_port, l.l4_offset), (60, 0, None));
    assert_eq!(
        FragmentKey::of(&l),
        FragmentKey::of(&m),
        "IPv6 fragments match without protocol"
    );

    // An atomic fragment (offset 0, no M) is a whole packet.
    let mut atomic = frag_header(6, 0, false, 5);
    atomic.extend_from_slice(&datagram);
    let a = eth(&ethernet(ETH_IPV6, &ipv6(44, V6_A, V6_B, &atomic)));
    assert_eq!((a.fragment, a.key.dst_port), (Fragment::NotFragment, 443));
    assert_eq!(FragmentKey::of(&a), None);
}

/// Frames whose IP packet ends exactly at the end of the frame: every
/// shorter prefix must be an error, and no prefix may panic.
#[test]
fn every_prefix_of_exact_frames_is_an_error() {
    let frames = [
        (
            LinkType::Ethernet,
            ethernet(ETH_IPV4, &V4::new(6).packet(&tcp(1, 2, SYN))),
        ),
        (
            LinkType::Ethernet,
            vlan(
                &[TPID_8021AD, TPID_8021Q],
                ETH_IPV6,
                &ipv6(17, V6_A, V6_B, &udp(1, 2, b"abc")),
            ),
        ),
        (
            LinkType::LinuxSll,
            sll(ETH_IPV4, &V4::new(132).packet(&sctp(1, 2, 0, 1))),
        ),
        (
            LinkType::LinuxSll2,
            sll2(ETH_IPV6, &ipv6(58, V6_A, V6_B, &echo(128, 1, 1))),
        ),
        (
            LinkType::RawIp,
            V4::new(1).packet(&icmp(
                3,
                1,
                [0; 4],
                &V4::new(6).packet(&tcp(1, 2, SYN))[..28],
            )),
        ),
    ];
    for (link, frame) in frames {
        assert!(matches!(parse_frame(link, &frame), Ok(Parsed::Ip(_))));
        for len in 0..frame.len() {
            assert!(
                parse_frame(link, &frame[..len]).is_err(),
                "{link:?} prefix {len}"
            );
        }
    }
}

/// With trailing padding, prefixes that still hold the whole IP packet
/// parse exactly like the full frame.
#[test]
fn prefixes_of_padded_frames() {
    let ip = V4::new(17).packet(&udp(1, 2, b"x"));
    let frame = ethernet_padded(ETH_IPV4, &ip);
    let full = parse_frame(LinkType::Ethernet, &frame);
    for len in 0..frame.len() {
        let prefix = parse_frame(LinkType::Ethernet, &frame[..len]);
        if len >= 14 + ip.len() {
            assert_eq!(prefix, full, "{len}");
        } else {
            assert!(prefix.is_err(), "{len}");
        }
    }
}

/// Every error reason has a frame that produces it, with lengths that are
/// consistent up to the layer at fault.
#[test]
#[allow(clippy::too_many_lines, reason = "one line per reason")]
fn every_error_reason_is_reachable() {
    use LinkType::{Ethernet, LinuxSll, LinuxSll2, RawIp};
    let raw_udp = |data: &[u8]| V4::new(17).packet(data);
    let mut bad_ihl = V4::new(6).packet(&tcp(1, 2, SYN));
    bad_ihl[0] = 0x44;
    let mut bad_total = V4::new(6).packet(&tcp(1, 2, SYN));
    bad_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    let mut bad_doff = tcp(1, 2, SYN);
    bad_doff[12] = 0x40;
    let mut long_udp = udp(1, 2, b"abcd");
    long_udp[4..6].copy_from_slice(&40u16.to_be_bytes());
    let mut short_udp = udp(1, 2, b"abcd");
    short_udp[4..6].copy_from_slice(&4u16.to_be_bytes());
    let mut too_many = vec![];
    for _ in 0..9 {
        too_many.extend(ext_header(0, 1));
    }
    let cases: Vec<(ParseError, LinkType, Vec<u8>)> = vec![
        (ParseError::EmptyFrame, Ethernet, vec![]),
        (ParseError::TruncatedEthernet, Ethernet, vec![0; 13]),
        (
            ParseError::TruncatedVlan,
            Ethernet,
            vlan(&[TPID_8021Q], ETH_IPV4, &[])[..16].to_vec(),
        ),
        (
            ParseError::TooManyVlanTags,
            Ethernet,
            vlan(&[TPID_8021Q; 3], ETH_IPV4, &[]),
        ),
        (ParseError::TruncatedSll, LinuxSll, vec![0; 15]),
        (ParseError::TruncatedSll, LinuxSll2, vec![0; 19]),
        (ParseError::BadIpVersion, RawIp, vec![0x70; 20]),
        (
            ParseError::TruncatedIpv4,
            RawIp,
            V4::new(6).packet(&[])[..19].to_vec(),
        ),
        (ParseError::BadIpv4HeaderLength, RawIp, bad_ihl),
        (ParseError::BadIpv4TotalLength, RawIp, bad_total),
        (
            ParseError::TinyTcpFragment,
            RawIp,
            V4::new(6).fragment(1, 8, true).packet(&[0; 8]),
        ),
        (
            ParseError::TruncatedIpv6,
            RawIp,
            ipv6(6, V6_A, V6_B, &[0; 8])[..47].to_vec(),
        ),
        (
            ParseError::TruncatedIpv6Extension,
            RawIp,
            ipv6(0, V6_A, V6_B, &[6, 1, 0, 0, 0, 0, 0, 0]),
        ),
        (
            ParseError::TooManyIpv6Extensions,
            RawIp,
            ipv6(0, V6_A, V6_B, &too_many),
        ),
        (
            ParseError::TruncatedTcp,
            RawIp,
            V4::new(6).packet(&tcp(1, 2, SYN)[..19]),
        ),
        (
            ParseError::BadTcpDataOffset,
            RawIp,
            V4::new(6).packet(&bad_doff),
        ),
        (ParseError::TruncatedUdp, RawIp, raw_udp(&[0; 7])),
        (ParseError::TruncatedUdp, RawIp, raw_udp(&long_udp)),
        (ParseError::BadUdpLength, RawIp, raw_udp(&short_udp)),
        (
            ParseError::TruncatedSctp,
            RawIp,
            V4::new(132).packet(&[0; 11]),
        ),
        (
            ParseError::TruncatedIcmp,
            RawIp,
            V4::new(1).packet(&[8, 0, 0, 0, 0, 0, 0]),
        ),
        (
            ParseError::TruncatedIcmpv6,
            RawIp,
            ipv6(58, V6_A, V6_B, &[128, 0, 0]),
        ),
        (
            ParseError::BadIcmpInner,
            RawIp,
            V4::new(1).packet(&icmp(3, 0, [0; 4], &[0x45])),
        ),
    ];
    let mut seen = HashSet::new();
    for (expected, link, frame) in &cases {
        assert_eq!(err(*link, frame), *expected, "{frame:02x?}");
        seen.insert(*expected);
    }
    let missing: Vec<_> = ParseError::ALL
        .iter()
        .filter(|e| !seen.contains(e))
        .collect();
    assert!(missing.is_empty(), "no test frame for {missing:?}");
}

#[test]
fn ttl_offset_points_at_the_header() {
    let ip = V4::new(6).packet(&tcp(1, 2, SYN));
    let frame = vlan(&[TPID_8021Q], ETH_IPV4, &ip);
    let m = eth(&frame);
    assert_eq!(frame[usize::from(m.l3_offset) + 8], m.ttl);
    let ip = ipv6(6, V6_A, V6_B, &tcp(1, 2, SYN));
    let frame = sll2(ETH_IPV6, &ip);
    let m = meta(LinkType::LinuxSll2, &frame);
    assert_eq!(frame[usize::from(m.l3_offset) + 7], m.ttl);
}
