//! Refusing an attempt on a Service without endpoints: an ICMP or ICMPv6
//! port unreachable back to the sender.
//!
//! kube-proxy sends the packets of a Service with no usable endpoint to a
//! plain `reject` (nftables; `REJECT` with iptables), which answers with
//! ICMP port unreachable (IPv4) or ICMPv6 port unreachable (IPv6) whatever
//! the transport: a TCP client's `connect` fails at once with
//! `ECONNREFUSED`, a connected UDP socket gets it on its next call. The
//! datapath does the same for the attempts the worker refuses
//! ([`crate::services::NoBackend::NoEndpoints`]): [`answerable`] says
//! whether a packet deserves an answer, [`port_unreachable`] writes the
//! answer into a transmit frame the caller owns (nothing is allocated), and
//! [`Budget`] limits how many a worker sends.
//!
//! The answer comes from the address the client addressed (the Service
//! address), goes to the client, swaps the Ethernet addresses (VLAN tags
//! are kept) and quotes the offending packet as RFC 1812 and RFC 4443 say:
//! as much of it as fits in 576 bytes (IPv4) or the IPv6 minimum MTU of
//! 1280 (IPv6), at least its IP header and 8 bytes, and no more than the
//! frame holds. Clients match the error to their socket by the quote.
//!
//! No answer (RFC 1122 3.2.2, RFC 4443 2.4 (e)) to an ICMP message, to a
//! frame sent to an Ethernet broadcast or multicast address, to a packet
//! whose source or destination is not one unicast host, to a non-first
//! fragment, or to a TCP reset.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::flow::{Fragment, PacketMeta};
use crate::link::LinkType;
use crate::wire::checksum::{
    address_range, data_sum, finish, internet_checksum, pseudo_header_sum,
};
use crate::wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, icmpv4, icmpv6, ip_proto, ipv4, ipv6, tcp,
};

/// Largest IPv4 answer (RFC 1812 4.3.2.3).
const MAX_ANSWER_V4: usize = 576;
/// Largest IPv6 answer: the minimum MTU (RFC 4443 2.4 (c)).
const MAX_ANSWER_V6: usize = 1280;
/// ICMP and ICMPv6 header length (type, code, checksum, 4 unused bytes).
const ICMP_HEADER: usize = 8;
/// TTL and hop limit of an answer.
const HOP_LIMIT: u8 = 64;

/// Whether a refused packet gets an answer (see the module doc).
#[must_use]
pub fn answerable(link: LinkType, frame: &[u8], meta: &PacketMeta) -> bool {
    let unicast_mac = frame.first().is_some_and(|b| b & 1 == 0);
    let key = &meta.key;
    let hosts = if key.ipv6 {
        let one = |a: u128| {
            let a = Ipv6Addr::from(a);
            !a.is_unspecified() && !a.is_multicast()
        };
        one(key.src) && one(key.dst)
    } else {
        let one = |a: u128| {
            let a = Ipv4Addr::from(a as u32);
            !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()
        };
        one(key.src) && one(key.dst)
    };
    let reset = key.protocol == ip_proto::TCP && meta.tcp_flags & tcp::flags::RST != 0;
    link == LinkType::Ethernet
        && unicast_mac
        && hosts
        && meta.icmp.is_none()
        && meta.related.is_none()
        && !matches!(meta.fragment, Fragment::Later { .. })
        && meta.l4_offset.is_some()
        && !reset
}

/// Writes the port unreachable answering the Ethernet `frame` (parsed as
/// `meta`) into `out`; returns the answer's length, or `None` when `frame`
/// does not hold what `meta` says or `out` cannot hold the answer's
/// headers and the quote's minimum (the offending IP header and 8 bytes).
#[must_use]
pub fn port_unreachable(frame: &[u8], meta: &PacketMeta, out: &mut [u8]) -> Option<usize> {
    let l3 = usize::from(meta.l3_offset);
    let l4 = usize::from(meta.l4_offset?);
    let v6 = meta.is_ipv6();
    // The offending IP packet as far as the frame holds it.
    let end = l3.checked_add(meta.l3_len as usize)?.min(frame.len());
    if l3 < 14 || l4 < l3 || end < l4 + 8 {
        return None;
    }
    let (ip_len, max_answer) = if v6 {
        (ipv6::field::DST_ADDR.end, MAX_ANSWER_V6)
    } else {
        (Ipv4Packet::<&[u8]>::MIN_HEADER_LEN, MAX_ANSWER_V4)
    };
    let icmp = l3 + ip_len;
    let quote_at = icmp + ICMP_HEADER;
    let room = out.len().checked_sub(quote_at)?;
    let quote_len = (end - l3).min(max_answer - ip_len - ICMP_HEADER).min(room);
    if quote_len < l4 - l3 + 8 {
        return None;
    }
    let total = quote_at + quote_len;
    let out = &mut out[..total];
    // Link header as received (VLAN tags, ethertype), addresses swapped.
    out[..l3].copy_from_slice(&frame[..l3]);
    out[..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[..6]);
    out[quote_at..].copy_from_slice(&frame[l3..l3 + quote_len]);
    let (client, service) = (meta.key.src, meta.key.dst);
    let icmp_len = total - icmp;
    if v6 {
        use ipv6::field;
        let ip = &mut out[l3..icmp];
        ip[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
        ip[field::PAYLOAD_LEN].copy_from_slice(&(icmp_len as u16).to_be_bytes());
        ip[field::NEXT_HEADER] = ip_proto::ICMPV6;
        ip[field::HOP_LIMIT] = HOP_LIMIT;
        ip[field::SRC_ADDR].copy_from_slice(&service.to_be_bytes());
        ip[field::DST_ADDR].copy_from_slice(&client.to_be_bytes());
    } else {
        use ipv4::field;
        let ip = &mut out[l3..icmp];
        ip[field::VER_IHL] = 0x45;
        // Precedence "internetwork control", as Linux sends its errors.
        ip[field::DSCP_ECN] = 0xc0;
        ip[field::LENGTH].copy_from_slice(&((total - l3) as u16).to_be_bytes());
        // Identification 0 with DF: an atomic datagram (RFC 6864).
        ip[field::IDENT].fill(0);
        ip[field::FLAGS_FRAG].copy_from_slice(&[0x40, 0]);
        ip[field::TTL] = HOP_LIMIT;
        ip[field::PROTOCOL] = ip_proto::ICMP;
        ip[field::SRC_ADDR].copy_from_slice(&(service as u32).to_be_bytes());
        ip[field::DST_ADDR].copy_from_slice(&(client as u32).to_be_bytes());
        Ipv4Packet::new_checked(&mut out[l3..])
            .ok()?
            .fill_checksum();
    }
    let (msg_type, code) = if v6 {
        (icmpv6::kind::DEST_UNREACHABLE, icmpv6::unreachable::PORT)
    } else {
        (icmpv4::kind::DEST_UNREACHABLE, icmpv4::unreachable::PORT)
    };
    out[icmp..quote_at].copy_from_slice(&[msg_type, code, 0, 0, 0, 0, 0, 0]);
    if v6 {
        let addrs = address_range(true);
        let pseudo = pseudo_header_sum(
            &out[l3 + addrs.start..l3 + addrs.end],
            ip_proto::ICMPV6,
            icmp_len as u32,
        );
        let sum = finish(data_sum(pseudo, &out[icmp..]));
        Icmpv6Packet::new_checked(&mut out[icmp..])
            .ok()?
            .set_checksum(sum);
    } else {
        let sum = internet_checksum(&out[icmp..]);
        Icmpv4Packet::new_checked(&mut out[icmp..])
            .ok()?
            .set_checksum(sum);
    }
    Some(total)
}

/// How many answers a worker may send: a token bucket of [`Budget::BURST`]
/// answers refilled at [`Budget::PER_SECOND`] (Linux's defaults for the
/// ICMP errors a host sends, `icmp_msgs_burst` and `icmp_msgs_per_sec`), so
/// that a client hammering a Service without endpoints cannot make the
/// datapath a packet amplifier. Refilled by the time of the asking packet:
/// a subtraction and a comparison per refused packet, nothing otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Credit in nanoseconds; an answer costs [`Self::COST_NS`].
    credit_ns: u64,
    /// When the credit was last brought up to date (`None`: never).
    last_ns: Option<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            credit_ns: Self::BURST * Self::COST_NS,
            last_ns: None,
        }
    }
}

impl Budget {
    /// Answers per second, sustained.
    pub const PER_SECOND: u64 = 1000;
    /// Answers in a burst.
    pub const BURST: u64 = 50;
    const COST_NS: u64 = 1_000_000_000 / Self::PER_SECOND;

    /// Whether an answer may be sent at `now_ns`.
    #[must_use]
    pub fn available(&mut self, now_ns: u64) -> bool {
        let elapsed = self.last_ns.map_or(0, |last| now_ns.saturating_sub(last));
        self.last_ns = Some(now_ns.max(self.last_ns.unwrap_or(0)));
        self.credit_ns = self
            .credit_ns
            .saturating_add(elapsed)
            .min(Self::BURST * Self::COST_NS);
        self.credit_ns >= Self::COST_NS
    }

    /// Takes one answer's worth (after [`Self::available`] said yes).
    pub fn spend(&mut self) {
        self.credit_ns = self.credit_ns.saturating_sub(Self::COST_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{FrameSpec, Transport};
    use crate::flow::{Parsed, parse_frame};

    fn frame(src: &str, dst: &str, transport: Transport) -> Vec<u8> {
        FrameSpec {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport,
            payload_len: 10,
            payload_fill: 1,
        }
        .build()
    }

    fn meta(frame: &[u8]) -> PacketMeta {
        match parse_frame(LinkType::Ethernet, frame).unwrap() {
            Parsed::Ip(m) => m,
            other @ Parsed::NotIp { .. } => panic!("{other:?}"),
        }
    }

    const UDP: Transport = Transport::Udp {
        src_port: 4000,
        dst_port: 53,
    };

    #[test]
    fn only_unicast_non_icmp_first_fragments_are_answered() {
        let ok = frame("10.0.0.2", "10.96.0.30", UDP);
        assert!(answerable(LinkType::Ethernet, &ok, &meta(&ok)));
        assert!(!answerable(LinkType::RawIp, &ok, &meta(&ok)));
        let mut multicast_mac = ok.clone();
        multicast_mac[0] = 0x01;
        assert!(!answerable(
            LinkType::Ethernet,
            &multicast_mac,
            &meta(&multicast_mac)
        ));
        for (src, dst) in [
            ("0.0.0.0", "10.96.0.30"),
            ("224.0.0.1", "10.96.0.30"),
            ("10.0.0.2", "255.255.255.255"),
            ("::", "fd96::30"),
            ("ff02::1", "fd96::30"),
            ("fd00::2", "ff02::1"),
        ] {
            let f = frame(src, dst, UDP);
            assert!(
                !answerable(LinkType::Ethernet, &f, &meta(&f)),
                "{src} {dst}"
            );
        }
        let rst = frame(
            "10.0.0.2",
            "10.96.0.30",
            Transport::Tcp {
                src_port: 1,
                dst_port: 80,
                flags: tcp::flags::RST | tcp::flags::ACK,
            },
        );
        assert!(!answerable(LinkType::Ethernet, &rst, &meta(&rst)));
        // An answer is an ICMP error: never answered in turn.
        let mut out = [0u8; 256];
        let n = port_unreachable(&ok, &meta(&ok), &mut out).unwrap();
        let answer = &out[..n];
        assert!(meta(answer).related.is_some());
        assert!(!answerable(LinkType::Ethernet, answer, &meta(answer)));
    }

    #[test]
    fn an_answer_needs_room_for_the_header_and_eight_bytes() {
        let f = frame("10.0.0.2", "10.96.0.30", UDP);
        let m = meta(&f);
        // Ethernet 14, IPv4 20, ICMP 8, quote of IPv4 20 and UDP 8.
        let mut out = [0u8; 14 + 20 + 8 + 28];
        assert_eq!(port_unreachable(&f, &m, &mut out[..69]), None);
        assert_eq!(port_unreachable(&f, &m, &mut out), Some(70));
        // A frame shorter than its meta says.
        assert_eq!(port_unreachable(&f[..40], &m, &mut [0; 256]), None);
    }

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let mut b = Budget::default();
        let mut sent = 0;
        while b.available(7) {
            b.spend();
            sent += 1;
        }
        assert_eq!(sent, Budget::BURST);
        // Half a millisecond later: nothing; a millisecond: one.
        assert!(!b.available(7 + 500_000));
        assert!(b.available(7 + 1_000_000));
        b.spend();
        assert!(!b.available(7 + 1_000_000));
        // A clock going backwards (another worker's capture time) earns
        // nothing and loses nothing.
        assert!(!b.available(3));
        // A long pause refills the burst, no more.
        let mut sent = 0;
        while b.available(60_000_000_000) {
            b.spend();
            sent += 1;
        }
        assert_eq!(sent, Budget::BURST);
    }
}
