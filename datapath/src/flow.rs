//! From a received frame to what the worker needs: the flow key and a few
//! header fields.
//!
//! [`parse_frame`] reads the link layer, the IP header (walking IPv6
//! extension headers) and the transport header once, through the checked
//! views of [`crate::wire`], and returns a [`PacketMeta`]: `Copy`, no
//! allocation, no reference into the frame. Malformed frames are a
//! [`ParseError`] the caller counts by reason; nothing here panics. A
//! non-first fragment parses with ports 0 and [`Fragment::Later`];
//! [`crate::fragments`] gives it its first fragment's verdict.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::link::LinkType;
use crate::wire::IpProtocol;
use crate::wire::ethernet::walk_vlan_tags;
use crate::wire::{
    EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, LinuxSll2Header,
    LinuxSllHeader, SctpPacket, TcpPacket, UdpPacket, ethertype, icmpv4, icmpv6, ip_proto,
};

pub use crate::wire::ParseError;

/// The five-tuple of a packet, in the packet's direction.
///
/// Addresses are numbers in a `u128` (an IPv4 address in the low 32 bits)
/// with a family flag, so one key type serves both families and compares as
/// a few integer comparisons (the layout of [`crate::conntrack::ConnKey`]).
/// For ICMP and ICMPv6 echo the identifier is both ports, so a request and
/// its reply are one connection; every other port-less protocol, and every
/// non-first fragment, has ports 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// Source port (or echo identifier, or 0).
    pub src_port: u16,
    /// Destination port (or echo identifier, or 0).
    pub dst_port: u16,
    /// IP protocol number of the transport header.
    pub protocol: u8,
    /// Whether the addresses are IPv6.
    pub ipv6: bool,
}

impl FlowKey {
    /// An IPv4 key.
    #[must_use]
    #[inline]
    pub fn v4(src: u32, dst: u32, protocol: u8, src_port: u16, dst_port: u16) -> Self {
        Self {
            src: u128::from(src),
            dst: u128::from(dst),
            src_port,
            dst_port,
            protocol,
            ipv6: false,
        }
    }

    /// An IPv6 key.
    #[must_use]
    #[inline]
    pub fn v6(src: u128, dst: u128, protocol: u8, src_port: u16, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
            ipv6: true,
        }
    }

    /// A key from `std` addresses; `None` when the families differ.
    #[must_use]
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(Self::v4(s.into(), d.into(), protocol, src_port, dst_port))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Some(Self::v6(s.into(), d.into(), protocol, src_port, dst_port))
            }
            _ => None,
        }
    }

    /// The same flow seen from the other end.
    #[must_use]
    #[inline]
    pub fn reversed(self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..self
        }
    }

    /// A direction-independent form: the key whose (address, port) source
    /// end is the smaller one, and whether that is `self` reversed. Both
    /// directions of a connection have the same canonical key.
    #[must_use]
    #[inline]
    pub fn canonical(self) -> (Self, bool) {
        if (self.src, self.src_port) <= (self.dst, self.dst_port) {
            (self, false)
        } else {
            (self.reversed(), true)
        }
    }

    /// The transport protocol.
    #[must_use]
    pub fn proto(&self) -> IpProtocol {
        IpProtocol(self.protocol)
    }

    /// Source address.
    #[must_use]
    pub fn src_ip(&self) -> IpAddr {
        ip(self.ipv6, self.src)
    }

    /// Destination address.
    #[must_use]
    pub fn dst_ip(&self) -> IpAddr {
        ip(self.ipv6, self.dst)
    }
}

fn ip(ipv6: bool, addr: u128) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::from(addr))
    } else {
        IpAddr::V4(Ipv4Addr::from(addr as u32))
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.proto();
        let (src, dst) = (self.src_ip(), self.dst_ip());
        let (sp, dp) = (self.src_port, self.dst_port);
        if self.ipv6 {
            write!(f, "{proto} [{src}]:{sp} -> [{dst}]:{dp}")
        } else {
            write!(f, "{proto} {src}:{sp} -> {dst}:{dp}")
        }
    }
}

/// Where a packet stands in fragmentation. `id` is the IPv4 16-bit or the
/// IPv6 32-bit identification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// A whole datagram (an IPv6 "atomic fragment", offset 0 without M, is
    /// one too).
    #[default]
    NotFragment,
    /// Offset 0 with more to come: has the transport header.
    First {
        /// Identification.
        id: u32,
    },
    /// A non-zero offset: no transport header, ports 0.
    Later {
        /// Identification.
        id: u32,
    },
}

/// ICMP or ICMPv6 type and code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpInfo {
    /// Message type.
    pub msg_type: u8,
    /// Message code.
    pub code: u8,
}

/// Everything the worker needs from one IP packet. `Copy`, no borrow of the
/// frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// The flow key in the packet's direction.
    pub key: FlowKey,
    /// Fragmentation state.
    pub fragment: Fragment,
    /// TCP flags (see [`crate::wire::tcp::flags`]); 0 for other protocols.
    pub tcp_flags: u8,
    /// SCTP: the type of the first chunk, if the packet has one (INIT = 1).
    pub sctp_chunk: Option<u8>,
    /// ICMP (over IPv4) or ICMPv6 (over IPv6): type and code.
    pub icmp: Option<IcmpInfo>,
    /// An ICMP or ICMPv6 echo reply: it answers, it does not open.
    pub echo_reply: bool,
    /// For an ICMP or ICMPv6 error: the key of the connection it refers to,
    /// oriented like the error (the quoted packet's key reversed, since the
    /// error travels back towards the quoted packet's sender).
    pub related: Option<FlowKey>,
    /// Offset of the IP header in the frame (TTL / hop-limit rewrite).
    pub l3_offset: u16,
    /// Offset of the transport header in the frame; `None` for a non-first
    /// fragment.
    pub l4_offset: Option<u16>,
    /// Length of the IP packet (header to end of payload, link padding
    /// excluded).
    pub l3_len: u32,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

impl PacketMeta {
    /// Whether this is an IPv6 packet.
    #[must_use]
    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.key.ipv6
    }

    /// A meta with no transport information yet.
    fn bare(key: FlowKey, fragment: Fragment, l3_offset: usize, l3_len: u32, ttl: u8) -> Self {
        Self {
            key,
            fragment,
            tcp_flags: 0,
            sctp_chunk: None,
            icmp: None,
            echo_reply: false,
            related: None,
            l3_offset: l3_offset as u16,
            l4_offset: None,
            l3_len,
            ttl,
        }
    }
}

/// The outcome of parsing one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An IPv4 or IPv6 packet.
    Ip(PacketMeta),
    /// Not IP (ARP, LLDP, ...): not podfence's business.
    NotIp {
        /// The payload's ethertype (after VLAN tags), or the cooked-capture
        /// protocol field.
        ethertype: u16,
    },
}

/// What kind of frame [`parse_frame_into`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An IPv4 or IPv6 packet: the meta was written.
    Ip,
    /// Not IP (ARP, LLDP, ...): the meta is untouched.
    NotIp {
        /// The payload's ethertype (after VLAN tags), or the cooked-capture
        /// protocol field.
        ethertype: u16,
    },
}

/// Parses one frame of the given framing.
#[inline]
pub fn parse_frame(link: LinkType, frame: &[u8]) -> Result<Parsed, ParseError> {
    let mut meta = PacketMeta::default();
    Ok(match parse_frame_into(link, frame, &mut meta)? {
        FrameKind::Ip => Parsed::Ip(meta),
        FrameKind::NotIp { ethertype } => Parsed::NotIp { ethertype },
    })
}

/// Parses one frame, writing the metadata of an IP packet straight into
/// `meta` (a worker's batch array), so that it is written once and not
/// copied. On an error `meta` may be partly written.
#[inline]
pub fn parse_frame_into(
    link: LinkType,
    frame: &[u8],
    meta: &mut PacketMeta,
) -> Result<FrameKind, ParseError> {
    if frame.is_empty() {
        return Err(ParseError::EmptyFrame);
    }
    let (ethertype, l3_offset) = match link {
        LinkType::Ethernet => {
            let eth = EthernetFrame::new_checked(frame)?;
            (eth.ethertype(), eth.header_len())
        }
        LinkType::RawIp => match frame[0] >> 4 {
            4 => (ethertype::IPV4, 0),
            6 => (ethertype::IPV6, 0),
            _ => return Err(ParseError::BadIpVersion),
        },
        LinkType::LinuxSll => {
            let sll = LinuxSllHeader::new_checked(frame)?;
            let walk = walk_vlan_tags(frame, LinuxSllHeader::<&[u8]>::HEADER_LEN, sll.protocol())?;
            (walk.ethertype, walk.payload_offset)
        }
        LinkType::LinuxSll2 => {
            let sll = LinuxSll2Header::new_checked(frame)?;
            let walk = walk_vlan_tags(frame, LinuxSll2Header::<&[u8]>::HEADER_LEN, sll.protocol())?;
            (walk.ethertype, walk.payload_offset)
        }
    };
    let l3 = &frame[l3_offset..];
    match ethertype {
        ethertype::IPV4 => parse_ipv4(l3, l3_offset, meta).map(|()| FrameKind::Ip),
        ethertype::IPV6 => parse_ipv6(l3, l3_offset, meta).map(|()| FrameKind::Ip),
        other => Ok(FrameKind::NotIp { ethertype: other }),
    }
}

#[inline]
fn parse_ipv4(l3: &[u8], l3_offset: usize, meta: &mut PacketMeta) -> Result<(), ParseError> {
    let ip = Ipv4Packet::new_checked(l3)?;
    let protocol = ip.protocol();
    let id = u32::from(ip.ident());
    let fragment = match (ip.is_fragment(), ip.frag_offset()) {
        (false, _) => Fragment::NotFragment,
        (true, 0) => Fragment::First { id },
        (true, 8) if protocol == ip_proto::TCP => return Err(ParseError::TinyTcpFragment),
        (true, _) => Fragment::Later { id },
    };
    let key = FlowKey::v4(ip.src(), ip.dst(), protocol, 0, 0);
    *meta = PacketMeta::bare(
        key,
        fragment,
        l3_offset,
        u32::from(ip.total_len()),
        ip.ttl(),
    );
    if let Fragment::Later { .. } = fragment {
        return Ok(());
    }
    parse_l4(meta, ip.payload())?;
    meta.l4_offset = Some((l3_offset + ip.header_len()) as u16);
    Ok(())
}

#[inline]
fn parse_ipv6(l3: &[u8], l3_offset: usize, meta: &mut PacketMeta) -> Result<(), ParseError> {
    let ip = Ipv6Packet::new_checked(l3)?;
    let ext = ip.extensions()?;
    let fragment = match ext.fragment {
        Some(f) if f.offset != 0 => Fragment::Later { id: f.ident },
        Some(f) if f.more => Fragment::First { id: f.ident },
        _ => Fragment::NotFragment,
    };
    let key = FlowKey::v6(ip.src(), ip.dst(), ext.protocol, 0, 0);
    let packet = ip.packet();
    *meta = PacketMeta::bare(
        key,
        fragment,
        l3_offset,
        packet.len() as u32,
        ip.hop_limit(),
    );
    if let Fragment::Later { .. } = fragment {
        return Ok(());
    }
    parse_l4(meta, &packet[ext.l4_offset..])?;
    meta.l4_offset = Some((l3_offset + ext.l4_offset) as u16);
    Ok(())
}

/// Reads the transport header into `meta` (whose key has the addresses and
/// protocol).
#[inline]
fn parse_l4(meta: &mut PacketMeta, data: &[u8]) -> Result<(), ParseError> {
    let key = &mut meta.key;
    match (key.protocol, key.ipv6) {
        (ip_proto::TCP, _) => {
            let tcp = TcpPacket::new_checked(data)?;
            key.src_port = tcp.src_port();
            key.dst_port = tcp.dst_port();
            meta.tcp_flags = tcp.flags();
        }
        (ip_proto::UDP, _) => {
            // The length field of a fragmented datagram covers all its
            // fragments: only the header can be checked here.
            let udp = if meta.fragment == Fragment::NotFragment {
                UdpPacket::new_checked(data)?
            } else {
                UdpPacket::new_checked_header(data)?
            };
            key.src_port = udp.src_port();
            key.dst_port = udp.dst_port();
        }
        (ip_proto::SCTP, _) => {
            let sctp = SctpPacket::new_checked(data)?;
            key.src_port = sctp.src_port();
            key.dst_port = sctp.dst_port();
            meta.sctp_chunk = sctp.first_chunk().map(|c| c.kind);
        }
        (ip_proto::ICMP, false) => {
            let icmp = Icmpv4Packet::new_checked(data)?;
            meta.icmp = Some(IcmpInfo {
                msg_type: icmp.msg_type(),
                code: icmp.code(),
            });
            if let Some(id) = icmp.echo_ident() {
                (key.src_port, key.dst_port) = (id, id);
                meta.echo_reply = icmp.msg_type() == icmpv4::kind::ECHO_REPLY;
            } else if let Some(quoted) = icmp.embedded() {
                meta.related = Some(inner_key_v4(quoted)?.reversed());
            }
        }
        (ip_proto::ICMPV6, true) => {
            let icmp = Icmpv6Packet::new_checked(data)?;
            meta.icmp = Some(IcmpInfo {
                msg_type: icmp.msg_type(),
                code: icmp.code(),
            });
            if let Some(id) = icmp.echo_ident() {
                (key.src_port, key.dst_port) = (id, id);
                meta.echo_reply = icmp.msg_type() == icmpv6::kind::ECHO_REPLY;
            } else if let Some(quoted) = icmp.embedded() {
                meta.related = Some(inner_key_v6(quoted)?.reversed());
            }
        }
        _ => {}
    }
    Ok(())
}

/// The key of the IPv4 packet quoted in an ICMP error, in its own
/// direction.
fn inner_key_v4(quoted: &[u8]) -> Result<FlowKey, ParseError> {
    let ip = Ipv4Packet::new_checked_embedded(quoted).map_err(|_| ParseError::BadIcmpInner)?;
    let protocol = ip.protocol();
    let (src_port, dst_port) = if ip.frag_offset() == 0 {
        inner_ports(false, protocol, ip.payload())?
    } else {
        (0, 0)
    };
    Ok(FlowKey::v4(
        ip.src(),
        ip.dst(),
        protocol,
        src_port,
        dst_port,
    ))
}

/// The key of the IPv6 packet quoted in an ICMPv6 error, in its own
/// direction.
fn inner_key_v6(quoted: &[u8]) -> Result<FlowKey, ParseError> {
    let ip = Ipv6Packet::new_checked_embedded(quoted).map_err(|_| ParseError::BadIcmpInner)?;
    let ext = ip.extensions().map_err(|_| ParseError::BadIcmpInner)?;
    let (src_port, dst_port) = match ext.fragment {
        Some(f) if f.offset != 0 => (0, 0),
        _ => inner_ports(true, ext.protocol, &ip.packet()[ext.l4_offset..])?,
    };
    Ok(FlowKey::v6(
        ip.src(),
        ip.dst(),
        ext.protocol,
        src_port,
        dst_port,
    ))
}

/// Ports (or the echo identifier) from the first bytes of a quoted
/// transport header; RFC 792 and RFC 4443 quote at least 8.
fn inner_ports(ipv6: bool, protocol: u8, data: &[u8]) -> Result<(u16, u16), ParseError> {
    let echo = match (protocol, ipv6) {
        (ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP, _) => false,
        (ip_proto::ICMP, false) if data.first().is_some_and(|&t| icmpv4::is_echo(t)) => true,
        (ip_proto::ICMPV6, true) if data.first().is_some_and(|&t| icmpv6::is_echo(t)) => true,
        _ => return Ok((0, 0)),
    };
    match (echo, data) {
        (true, [_, _, _, _, a, b, ..]) => {
            let id = u16::from_be_bytes([*a, *b]);
            Ok((id, id))
        }
        (false, [a, b, c, d, ..]) => {
            Ok((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])))
        }
        _ => Err(ParseError::BadIcmpInner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: u32, sp: u16, dst: u32, dp: u16) -> FlowKey {
        FlowKey::v4(src, dst, ip_proto::TCP, sp, dp)
    }

    #[test]
    fn reversed_and_canonical() {
        let k = key(2, 80, 1, 40000);
        let r = k.reversed();
        assert_eq!((r.src, r.src_port, r.dst, r.dst_port), (1, 40000, 2, 80));
        assert_eq!(r.reversed(), k);
        assert_eq!(k.canonical(), (r, true));
        assert_eq!(r.canonical(), (r, false));
        // Same address, ports decide.
        let same = key(1, 9, 1, 7);
        assert_eq!(same.canonical(), (same.reversed(), true));
        assert!(!same.reversed().canonical().1);
    }

    #[test]
    fn keys_from_std_addresses() {
        let v4_a: IpAddr = "10.0.0.1".parse().unwrap();
        let v4_b: IpAddr = "10.0.0.2".parse().unwrap();
        let key = FlowKey::new(v4_a, v4_b, 17, 1, 2).unwrap();
        assert_eq!(key, FlowKey::v4(0x0a00_0001, 0x0a00_0002, 17, 1, 2));
        assert_eq!((key.src_ip(), key.dst_ip()), (v4_a, v4_b));
        assert_eq!(key.proto(), IpProtocol::UDP);
        let v6_c: IpAddr = "fd00::1".parse().unwrap();
        let v6_d: IpAddr = "fd00::2".parse().unwrap();
        let key6 = FlowKey::new(v6_c, v6_d, 132, 1, 2).unwrap();
        assert!(key6.ipv6);
        assert_eq!((key6.src_ip(), key6.dst_ip()), (v6_c, v6_d));
        assert_eq!(key6.to_string(), "SCTP [fd00::1]:1 -> [fd00::2]:2");
        assert_eq!(FlowKey::new(v4_a, v6_c, 6, 1, 2), None);
        // The same number in different families is a different key.
        assert_ne!(FlowKey::v4(1, 2, 6, 3, 4), FlowKey::v6(1, 2, 6, 3, 4));
    }
}
