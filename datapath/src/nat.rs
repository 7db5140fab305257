//! Rewriting a packet for Service translation: one address and its port.
//!
//! A translated connection has two rewrites (VPP nat44's session model):
//! forward packets get the backend as destination, replies get the Service
//! address back as source ([`crate::conntrack::Nat`] keeps which). The
//! worker decides ([`Rewrite`]); the switch applies it to its staged copy of
//! the frame ([`apply`]), since the received frame is the port's, read-only.
//!
//! Checksums are updated incrementally (RFC 1624, through
//! [`crate::wire::checksum`]), never recomputed over the payload: the IPv4
//! header checksum for the address, the TCP or UDP checksum for the address
//! (pseudo-header) and the port, ICMPv6's for the address. An IPv4 UDP
//! checksum of 0 (none) stays 0; an updated UDP checksum of 0 is sent as
//! 0xffff. SCTP's CRC32c covers no address and cannot be updated
//! incrementally: it is recomputed over the packet after the port changed
//! (so a CRC the sender left to offload comes out complete too); a first
//! IPv4 fragment of SCTP keeps its CRC (the rest of the packet is not here).
//! A later fragment has no transport header: only its address changes.
//!
//! An ICMP or ICMPv6 error about a translated connection gets the rewrite
//! of the connection's packets in its own direction, applied as Linux's
//! `nf_nat_icmp_reply_translation` does: the quoted packet (which travelled
//! the other way) has its other end rewritten, with its IPv4 header
//! checksum and, where the quote holds it, its TCP or UDP checksum; the
//! error's own address only if it is the translated one (a router's error
//! keeps the router's address); the error's checksum follows every word
//! that changed (see [`apply`]).
//!
//! A TCP or UDP checksum the sender left begun, to be finished by the
//! transmitting device ([`crate::offload`]), is updated by [`apply_begun`]:
//! the field holds the folded pseudo-header sum, not complemented, so the
//! address change is added to it as it is (`field' = field + ~old + new`,
//! what Linux's `inet_proto_csum_replace4` does for `CHECKSUM_PARTIAL`) and
//! the port change not at all (the device sums the header as it leaves).
//!
//! Nothing here allocates; a frame that does not hold the headers the
//! parser found is left untouched and reported ([`ParseError`]).

use crate::conntrack::NatAddr;
use crate::flow::{Fragment, PacketMeta};
use crate::wire::checksum::{crc32c, update_u16, update_u32, update_u128};
use crate::wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, ParseError, SctpPacket, TcpPacket,
    UdpPacket, ip_proto,
};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The source: a reply, from the backend back to the Service address.
    Source,
    /// The destination: a forward packet, from the Service to the backend.
    Destination,
}

/// One rewrite of a packet: `side` becomes `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    /// Which end changes.
    pub side: Side,
    /// Its new address and port.
    pub to: NatAddr,
}

impl Rewrite {
    /// The packet's key after the rewrite.
    #[must_use]
    #[inline]
    pub fn key(&self, key: &crate::flow::FlowKey) -> crate::flow::FlowKey {
        match self.side {
            Side::Source => crate::flow::FlowKey {
                src: self.to.addr,
                src_port: self.to.port,
                ..*key
            },
            Side::Destination => crate::flow::FlowKey {
                dst: self.to.addr,
                dst_port: self.to.port,
                ..*key
            },
        }
    }
}

/// Applies `rewrite` to the IP packet in `frame` that `meta` describes (as
/// parsed from this frame); on an error the frame is unchanged.
pub fn apply(frame: &mut [u8], meta: &PacketMeta, rewrite: &Rewrite) -> Result<(), ParseError> {
    apply_as(frame, meta, rewrite, false)
}

/// [`apply`] to a TCP or UDP packet whose checksum is begun (the field
/// holds the pseudo-header sum, for the transmitting device to finish; see
/// the module doc): it stays begun, over the new addresses.
pub fn apply_begun(
    frame: &mut [u8],
    meta: &PacketMeta,
    rewrite: &Rewrite,
) -> Result<(), ParseError> {
    apply_as(frame, meta, rewrite, true)
}

/// A TCP or UDP checksum `c` after the address (`addr_update`, an RFC
/// 1624 update of a complete checksum) and the port changed. Complete: both
/// updated. Begun (the pseudo-header sum, folded, not complemented): the
/// address only, complemented in and out.
#[inline]
fn transport_sum(
    c: u16,
    begun: bool,
    addr_update: impl Fn(u16) -> u16,
    old_port: u16,
    new_port: u16,
) -> u16 {
    if begun {
        !addr_update(!c)
    } else {
        update_u16(addr_update(c), old_port, new_port)
    }
}

fn apply_as(
    frame: &mut [u8],
    meta: &PacketMeta,
    rewrite: &Rewrite,
    begun: bool,
) -> Result<(), ParseError> {
    let l3 = usize::from(meta.l3_offset);
    let end = l3
        .checked_add(meta.l3_len as usize)
        .filter(|&e| e <= frame.len())
        .ok_or(if meta.is_ipv6() {
            ParseError::TruncatedIpv6
        } else {
            ParseError::TruncatedIpv4
        })?;
    let key = &meta.key;
    let (old_addr, old_port) = match rewrite.side {
        Side::Source => (key.src, key.src_port),
        Side::Destination => (key.dst, key.dst_port),
    };
    let new = rewrite.to;
    // The transport header, if this packet has one: checked before anything
    // is written.
    let l4 = match (meta.fragment, meta.l4_offset) {
        (Fragment::Later { .. }, _) | (_, None) => None,
        (_, Some(l4)) => Some(usize::from(l4)).filter(|&l4| l4 <= end),
    };
    if let (Some(l4), Some(related)) = (l4, meta.related) {
        return apply_icmp_error(frame, meta, &related, rewrite, l3..end, l4);
    }
    if let Some(l4) = l4 {
        check_transport(&frame[l4..end], key.protocol, meta.fragment)?;
    }
    // The address, and the IPv4 header checksum.
    if meta.is_ipv6() {
        let mut ip = Ipv6Packet::new_checked(&mut frame[l3..end])?;
        let addr = std::net::Ipv6Addr::from(new.addr);
        match rewrite.side {
            Side::Source => ip.set_src_addr(addr),
            Side::Destination => ip.set_dst_addr(addr),
        }
    } else {
        let mut ip = Ipv4Packet::new_checked(&mut frame[l3..end])?;
        let (old, addr) = (old_addr as u32, new.addr as u32);
        match rewrite.side {
            Side::Source => ip.set_src_addr(addr.into()),
            Side::Destination => ip.set_dst_addr(addr.into()),
        }
        let c = update_u32(ip.checksum(), old, addr);
        ip.set_checksum(c);
    }
    let Some(l4) = l4 else {
        return Ok(());
    };
    let l4 = &mut frame[l4..end];
    // The pseudo-header's address, then the port.
    let addr_update = |c: u16| {
        if meta.is_ipv6() {
            update_u128(c, old_addr, new.addr)
        } else {
            update_u32(c, old_addr as u32, new.addr as u32)
        }
    };
    match key.protocol {
        ip_proto::TCP => {
            let mut tcp = TcpPacket::new_checked(l4)?;
            let c = transport_sum(tcp.checksum(), begun, addr_update, old_port, new.port);
            match rewrite.side {
                Side::Source => tcp.set_src_port(new.port),
                Side::Destination => tcp.set_dst_port(new.port),
            }
            tcp.set_checksum(c);
        }
        ip_proto::UDP => {
            let mut udp = UdpPacket::new_checked_header(l4)?;
            let c = udp.checksum();
            match rewrite.side {
                Side::Source => udp.set_src_port(new.port),
                Side::Destination => udp.set_dst_port(new.port),
            }
            // (A begun one is never 0: it holds a pseudo-header sum.)
            if begun || c != 0 || meta.is_ipv6() {
                let c = transport_sum(c, begun, addr_update, old_port, new.port);
                udp.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        ip_proto::SCTP => {
            let whole = meta.fragment == Fragment::NotFragment;
            let mut sctp = SctpPacket::new_checked(&mut *l4)?;
            match rewrite.side {
                Side::Source => sctp.set_src_port(new.port),
                Side::Destination => sctp.set_dst_port(new.port),
            }
            if whole {
                l4[8..12].fill(0);
                let crc = crc32c(l4);
                l4[8..12].copy_from_slice(&crc.to_le_bytes());
            }
        }
        ip_proto::ICMPV6 => {
            // Its checksum covers the pseudo-header; ports are not rewritten.
            let mut icmp = Icmpv6Packet::new_checked(l4)?;
            let c = addr_update(icmp.checksum());
            icmp.set_checksum(c);
        }
        _ => {}
    }
    Ok(())
}

/// [`apply`] for an ICMP or ICMPv6 error about a translated connection
/// (`related`: the connection's key as the parser found it in the quote,
/// oriented like the error; `rewrite` is that key's rewrite). The error's
/// own address on the rewritten side changes only if it is the translated
/// address (an error from the backend; a router's keeps the router's); the
/// quoted packet, which travelled the other way, has the other end
/// rewritten: its address, its IPv4 header checksum, its port and, where
/// the quote holds it, its TCP or UDP checksum, all incrementally, as
/// Linux's `nf_nat_icmp_reply_translation` leaves them. SCTP's CRC32c
/// covers the whole quoted packet and stays as it is. Every changed word of
/// the message, and for ICMPv6 the pseudo-header's address, then updates
/// the error's own checksum (RFC 1624): every field is at an even offset of
/// the message. Nothing is written unless every field is there.
fn apply_icmp_error(
    frame: &mut [u8],
    meta: &PacketMeta,
    related: &crate::flow::FlowKey,
    rewrite: &Rewrite,
    ip: std::ops::Range<usize>,
    l4: usize,
) -> Result<(), ParseError> {
    use crate::wire::ipv4;
    let v6 = meta.is_ipv6();
    let end = ip.end;
    if v6 {
        Ipv6Packet::new_checked(&frame[ip.clone()])?;
    } else {
        Ipv4Packet::new_checked(&frame[ip.clone()])?;
    }
    let (old_addr, old_port) = match rewrite.side {
        Side::Source => (related.src, related.src_port),
        Side::Destination => (related.dst, related.dst_port),
    };
    let new = rewrite.to;
    let outer = match rewrite.side {
        Side::Source => meta.key.src,
        Side::Destination => meta.key.dst,
    } == old_addr;
    let quote = l4 + Icmpv4Packet::<&[u8]>::HEADER_LEN;
    let QuotedFields {
        addr_at,
        port_at,
        checksum_at,
        protocol,
    } = quoted_fields(frame, v6, quote..end, rewrite.side == Side::Destination)?;
    let read16 = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let addr_update = |c: u16| {
        if v6 {
            update_u128(c, old_addr, new.addr)
        } else {
            update_u32(c, old_addr as u32, new.addr as u32)
        }
    };
    let mut icmp_sum = if v6 {
        Icmpv6Packet::new_checked(&frame[l4..end])?.checksum()
    } else {
        Icmpv4Packet::new_checked(&frame[l4..end])?.checksum()
    };
    let write16 = |f: &mut [u8], at: usize, value: u16, icmp_sum: &mut u16| {
        *icmp_sum = update_u16(*icmp_sum, read16(f, at), value);
        f[at..at + 2].copy_from_slice(&value.to_be_bytes());
    };
    // The quoted address (and, IPv4, the quoted header checksum).
    icmp_sum = addr_update(icmp_sum);
    if v6 {
        frame[addr_at..addr_at + 16].copy_from_slice(&new.addr.to_be_bytes());
    } else {
        frame[addr_at..addr_at + 4].copy_from_slice(&(new.addr as u32).to_be_bytes());
        let at = quote + ipv4::field::CHECKSUM.start;
        let c = addr_update(read16(frame, at));
        write16(frame, at, c, &mut icmp_sum);
    }
    // The quoted port and transport checksum.
    if let Some(at) = port_at {
        write16(frame, at, new.port, &mut icmp_sum);
    }
    if let Some(at) = checksum_at {
        let c = read16(frame, at);
        if c != 0 || v6 || protocol == ip_proto::TCP {
            let c = update_u16(addr_update(c), old_port, new.port);
            let c = if c == 0 && protocol == ip_proto::UDP {
                0xffff
            } else {
                c
            };
            write16(frame, at, c, &mut icmp_sum);
        }
    }
    // The error's own address: its IPv4 header checksum, or the ICMPv6
    // pseudo-header.
    if outer {
        if v6 {
            let mut ip = Ipv6Packet::new_checked(&mut frame[ip])?;
            let addr = std::net::Ipv6Addr::from(new.addr);
            match rewrite.side {
                Side::Source => ip.set_src_addr(addr),
                Side::Destination => ip.set_dst_addr(addr),
            }
            icmp_sum = addr_update(icmp_sum);
        } else {
            let mut ip = Ipv4Packet::new_checked(&mut frame[ip])?;
            let addr = std::net::Ipv4Addr::from(new.addr as u32);
            match rewrite.side {
                Side::Source => ip.set_src_addr(addr),
                Side::Destination => ip.set_dst_addr(addr),
            }
            let c = update_u32(ip.checksum(), old_addr as u32, new.addr as u32);
            ip.set_checksum(c);
        }
    }
    if v6 {
        Icmpv6Packet::new_checked(&mut frame[l4..end])?.set_checksum(icmp_sum);
    } else {
        Icmpv4Packet::new_checked(&mut frame[l4..end])?.set_checksum(icmp_sum);
    }
    Ok(())
}

/// Where the fields of an ICMP error's quoted packet lie in the frame.
struct QuotedFields {
    /// The address that changes.
    addr_at: usize,
    /// The port that changes, if the quote has the transport header.
    port_at: Option<usize>,
    /// The TCP or UDP checksum, if the quote holds it.
    checksum_at: Option<usize>,
    /// The quoted packet's transport protocol.
    protocol: u8,
}

/// Finds the fields [`apply_icmp_error`] rewrites in the packet quoted at
/// `quote` (to the end of the error): its source end if `source`, else its
/// destination end.
fn quoted_fields(
    frame: &[u8],
    v6: bool,
    quote: std::ops::Range<usize>,
    source: bool,
) -> Result<QuotedFields, ParseError> {
    use crate::wire::{ipv4, ipv6, tcp, udp};
    let bad = ParseError::BadIcmpInner;
    let (start, end) = (quote.start, quote.end);
    let quoted = frame.get(quote).ok_or(bad)?;
    let (addr, l4, protocol) = if v6 {
        let q = Ipv6Packet::new_checked_embedded(quoted)?;
        let ext = q.extensions().map_err(|_| bad)?;
        let field = if source {
            ipv6::field::SRC_ADDR
        } else {
            ipv6::field::DST_ADDR
        };
        let first = ext.fragment.is_none_or(|f| f.offset == 0);
        (field.start, first.then_some(ext.l4_offset), ext.protocol)
    } else {
        let q = Ipv4Packet::new_checked_embedded(quoted)?;
        let field = if source {
            ipv4::field::SRC_ADDR
        } else {
            ipv4::field::DST_ADDR
        };
        let first = q.frag_offset() == 0;
        (field.start, first.then_some(q.header_len()), q.protocol())
    };
    // Ports lie alike in TCP, UDP and SCTP.
    let l4 = l4.map(|t| start + t);
    let port = if source {
        tcp::field::SRC_PORT.start
    } else {
        tcp::field::DST_PORT.start
    };
    let port_at = l4.filter(|&t| t + 4 <= end).map(|t| t + port);
    let checksum_at = l4.and_then(|t| {
        let at = match protocol {
            ip_proto::TCP => t + tcp::field::CHECKSUM.start,
            ip_proto::UDP => t + udp::field::CHECKSUM.start,
            _ => return None,
        };
        (at + 2 <= end).then_some(at)
    });
    Ok(QuotedFields {
        addr_at: start + addr,
        port_at,
        checksum_at,
        protocol,
    })
}

/// Checks that the transport header [`apply`] writes is there.
fn check_transport(l4: &[u8], protocol: u8, fragment: Fragment) -> Result<(), ParseError> {
    match protocol {
        ip_proto::TCP => TcpPacket::new_checked(l4).map(|_| ()),
        ip_proto::UDP => UdpPacket::new_checked_header(l4).map(|_| ()),
        ip_proto::SCTP => SctpPacket::new_checked(l4).map(|_| ()),
        ip_proto::ICMPV6 if fragment == Fragment::NotFragment => {
            Icmpv6Packet::new_checked(l4).map(|_| ())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{FrameSpec, Transport};
    use crate::flow::{Parsed, parse_frame};
    use crate::link::LinkType;
    use crate::offload::{Begun, finish_request, request_or_finish};
    use crate::wire::checksum::{
        address_range, data_sum, fold, internet_checksum, pseudo_header_sum,
    };
    use std::net::IpAddr;

    fn meta(frame: &[u8]) -> PacketMeta {
        match parse_frame(LinkType::Ethernet, frame).unwrap() {
            Parsed::Ip(m) => m,
            other @ Parsed::NotIp { .. } => panic!("{other:?}"),
        }
    }

    /// Whether the frame's IPv4 header and TCP/UDP checksums verify.
    fn verifies(frame: &[u8]) -> bool {
        let m = meta(frame);
        let l3 = usize::from(m.l3_offset);
        let end = l3 + m.l3_len as usize;
        let l4 = usize::from(m.l4_offset.unwrap());
        if !m.is_ipv6() && internet_checksum(&frame[l3..l4]) != 0 {
            return false;
        }
        let addrs = address_range(m.is_ipv6());
        let pseudo = pseudo_header_sum(
            &frame[l3 + addrs.start..l3 + addrs.end],
            m.key.protocol,
            (end - l4) as u32,
        );
        fold(data_sum(pseudo, &frame[l4..end])) == 0xffff
    }

    fn frames() -> Vec<(Vec<u8>, u128)> {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut out = Vec::new();
        for (src, dst, backend) in [
            ("10.0.0.1", "10.96.0.10", u128::from(0x0a00_0209u32)),
            (
                "fd00::1",
                "fd96::a",
                0xfd00_0000_0000_0000_0000_0000_0000_0209,
            ),
        ] {
            for transport in [
                Transport::Tcp {
                    src_port: 40_000,
                    dst_port: 53,
                    flags: 2,
                },
                Transport::Udp {
                    src_port: 40_000,
                    dst_port: 53,
                },
            ] {
                // 8940: a jumbo segment (MTU 9000), whose checksums cover
                // the whole payload yet are updated from the headers alone.
                for payload_len in [0, 3, 100, 8940] {
                    let spec = FrameSpec {
                        src: ip(src),
                        dst: ip(dst),
                        transport,
                        payload_len,
                        payload_fill: 0xc3,
                    };
                    out.push((spec.build(), backend));
                }
            }
        }
        out
    }

    /// What a sender with offload leaves: the field holding the folded
    /// pseudo-header sum.
    fn begin(frame: &mut [u8]) -> crate::ports::ChecksumRequest {
        let m = meta(frame);
        {
            let l3 = usize::from(m.l3_offset);
            let end = l3 + m.l3_len as usize;
            let l4 = usize::from(m.l4_offset.unwrap());
            let at = l4
                + if m.key.protocol == ip_proto::TCP {
                    16
                } else {
                    6
                };
            let addrs = address_range(m.is_ipv6());
            let pseudo = fold(pseudo_header_sum(
                &frame[l3 + addrs.start..l3 + addrs.end],
                m.key.protocol,
                (end - l4) as u32,
            ));
            frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        }
        match request_or_finish(frame, &m) {
            Begun::Request(request) => request,
            other => panic!("not recognised as begun: {other:?}"),
        }
    }

    #[test]
    fn begun_checksums_stay_begun_through_translation() {
        for (original, backend) in frames() {
            let m = meta(&original);
            let rewrites = [
                Rewrite {
                    side: Side::Destination,
                    to: NatAddr {
                        addr: backend,
                        port: 5353,
                    },
                },
                Rewrite {
                    side: Side::Source,
                    to: NatAddr {
                        addr: backend ^ 0x0101,
                        port: 61_000,
                    },
                },
            ];
            for rewrite in rewrites {
                // The complete checksum, updated as always.
                let mut complete = original.clone();
                apply(&mut complete, &m, &rewrite).unwrap();
                assert!(verifies(&complete));
                // The same packet, begun: translated, still begun over the
                // new addresses, and finished by the device, it is the same
                // frame to the byte.
                let mut partial = original.clone();
                let request = begin(&mut partial);
                apply_begun(&mut partial, &m, &rewrite).unwrap();
                let after = meta(&partial);
                assert_eq!(after.key, rewrite.key(&m.key));
                assert_eq!(
                    request_or_finish(&mut partial.clone(), &after),
                    Begun::Request(request),
                    "still recognised as begun after translation"
                );
                assert!(finish_request(&mut partial, request));
                assert_eq!(partial, complete, "{rewrite:?} of {:?}", m.key);
            }
        }
    }

    #[test]
    fn both_rewrites_keep_checksums_valid_and_undo_each_other() {
        for (original, backend) in frames() {
            assert!(verifies(&original));
            let m = meta(&original);
            let mut f = original.clone();
            let to_backend = Rewrite {
                side: Side::Destination,
                to: NatAddr {
                    addr: backend,
                    port: 5353,
                },
            };
            apply(&mut f, &m, &to_backend).unwrap();
            let after = meta(&f);
            assert_eq!(after.key, to_backend.key(&m.key));
            assert!(verifies(&f), "forward rewrite");
            // The reply's rewrite, applied to the reversed packet, is the
            // inverse: here, rewrite the destination back.
            let back = Rewrite {
                side: Side::Destination,
                to: NatAddr {
                    addr: m.key.dst,
                    port: m.key.dst_port,
                },
            };
            apply(&mut f, &after, &back).unwrap();
            assert_eq!(f, original);
            // Source side.
            let src = Rewrite {
                side: Side::Source,
                to: NatAddr {
                    addr: backend,
                    port: 1,
                },
            };
            let mut g = original.clone();
            apply(&mut g, &m, &src).unwrap();
            assert_eq!(meta(&g).key, src.key(&m.key));
            assert!(verifies(&g), "source rewrite");
        }
    }

    #[test]
    fn ipv4_udp_without_checksum_stays_without() {
        let (mut f, backend) = frames()
            .into_iter()
            .find(|(f, _)| {
                let m = meta(f);
                !m.is_ipv6() && m.key.protocol == ip_proto::UDP
            })
            .unwrap();
        let m = meta(&f);
        let at = usize::from(m.l4_offset.unwrap()) + 6;
        f[at..at + 2].fill(0);
        let r = Rewrite {
            side: Side::Destination,
            to: NatAddr {
                addr: backend,
                port: 5353,
            },
        };
        apply(&mut f, &m, &r).unwrap();
        assert_eq!(&f[at..at + 2], &[0, 0]);
        assert_eq!(meta(&f).key.dst_port, 5353);
    }

    #[test]
    fn sctp_crc_is_recomputed() {
        let spec = |dst: &str, dst_port| FrameSpec {
            src: "10.0.0.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport: Transport::Sctp {
                src_port: 7,
                dst_port,
                chunk: 1,
            },
            payload_len: 20,
            payload_fill: 1,
        };
        let mut f = spec("10.96.0.10", 80).build();
        let m = meta(&f);
        let r = Rewrite {
            side: Side::Destination,
            to: NatAddr {
                addr: 0x0a00_0209,
                port: 8080,
            },
        };
        apply(&mut f, &m, &r).unwrap();
        // Identical to a frame built for the backend, IP header included.
        let want = spec("10.0.2.9", 8080).build();
        assert_eq!(f, want);
    }

    #[test]
    fn an_icmp_error_quoting_udp_without_checksum_keeps_it_without() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // What the backend 10.0.0.1 got from the client, no UDP checksum.
        let mut quoted = FrameSpec {
            src: ip("10.0.0.2"),
            dst: ip("10.0.0.1"),
            transport: Transport::Udp {
                src_port: 4000,
                dst_port: 5353,
            },
            payload_len: 5,
            payload_fill: 9,
        }
        .build();
        quoted[14 + 20 + 6..14 + 20 + 8].fill(0);
        // Its port unreachable, to the client.
        let mut f = quoted[..14].to_vec();
        let total = (20 + 8 + quoted.len() - 14) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, ip_proto::ICMP, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let sum = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&quoted[14..]);
        let sum = internet_checksum(&f[34..]);
        f[36..38].copy_from_slice(&sum.to_be_bytes());
        let m = meta(&f);
        let service = Rewrite {
            side: Side::Source,
            to: NatAddr {
                addr: 0x0a60_000a,
                port: 53,
            },
        };
        apply(&mut f, &m, &service).unwrap();
        assert_eq!(&f[26..30], &[10, 96, 0, 10], "from the Service address");
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(internet_checksum(&f[34..]), 0, "ICMP checksum");
        let q = 42;
        assert_eq!(internet_checksum(&f[q..q + 20]), 0, "quoted header");
        assert_eq!(&f[q + 16..q + 20], &[10, 96, 0, 10]);
        assert_eq!(&f[q + 22..q + 24], &53u16.to_be_bytes());
        assert_eq!(&f[q + 26..q + 28], &[0, 0], "no checksum stays none");
    }

    #[test]
    fn truncated_frames_are_refused_untouched() {
        let (f, backend) = frames().remove(0);
        let m = meta(&f);
        let mut short = f[..f.len() - 1].to_vec();
        let copy = short.clone();
        let r = Rewrite {
            side: Side::Destination,
            to: NatAddr {
                addr: backend,
                port: 1,
            },
        };
        assert!(apply(&mut short, &m, &r).is_err());
        assert_eq!(short, copy);
    }
}
