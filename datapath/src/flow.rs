//! From a received frame to what the worker needs: the flow key and a few
//! header fields, plus the table that gives non-first fragments the
//! verdict of their first fragment.
//!
//! [`parse_frame`] reads the link layer, the IP header (walking IPv6
//! extension headers) and the transport header once, through the checked
//! views of [`crate::wire`], and returns a [`PacketMeta`]: `Copy`, no
//! allocation, no reference into the frame. Malformed frames are a
//! [`ParseError`] the caller counts by reason; nothing here panics.
//!
//! # Fragments
//!
//! podfence never reassembles. Only the first fragment of a datagram carries
//! the transport header, so only it can be classified; every later fragment
//! parses with ports 0 and [`Fragment::Later`]. The worker remembers the
//! first fragment's verdict in a [`FragmentTable`] keyed by
//! [`FragmentKey`] (source, destination, protocol and identification, as
//! IPv4 reassembly does; IPv6 reassembly ignores the protocol, so its key
//! carries protocol 0) and applies it to the later fragments. The limits of
//! that choice:
//!
//! - A later fragment that arrives before its first fragment (reordering)
//!   finds no entry: the caller applies its default for unknown fragments.
//! - The table is bounded (fixed capacity, allocated once) and entries
//!   expire after a timeout. When a bucket is full the entry closest to
//!   expiry is evicted; the later fragments of that datagram then find no
//!   entry and get the default. Flooding first fragments can therefore
//!   cost other datagrams their verdict, never memory.
//! - Overlapping or duplicate fragments are not detected across packets:
//!   every first fragment is classified on its own and the last one stored
//!   wins. The one overlap that can rewrite TCP ports or flags after
//!   classification, an IPv4 TCP fragment at offset 8 (RFC 1858), is
//!   rejected as [`ParseError::TinyTcpFragment`], and a first fragment too
//!   short to hold its transport header is rejected as truncated.
//! - IPv4 identifications are 16 bits and wrap quickly on a busy host pair;
//!   a short timeout keeps a stale entry from matching a reused id.

use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxBuildHasher;

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

/// What identifies the fragments of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// Identification.
    pub id: u32,
    /// IPv4 protocol; 0 for IPv6 (RFC 8200 reassembles by addresses and id,
    /// and a first fragment's final protocol can differ from the next
    /// header its later fragments carry).
    pub protocol: u8,
    /// Whether the addresses are IPv6.
    pub ipv6: bool,
}

impl FragmentKey {
    /// The key of the datagram a fragment with flow key `key` and
    /// identification `id` belongs to (ports are ignored).
    #[must_use]
    #[inline]
    pub fn new(key: &FlowKey, id: u32) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            id,
            protocol: if key.ipv6 { 0 } else { key.protocol },
            ipv6: key.ipv6,
        }
    }

    /// The key of a parsed fragment; `None` when it is not a fragment.
    #[must_use]
    #[inline]
    pub fn of(meta: &PacketMeta) -> Option<Self> {
        match meta.fragment {
            Fragment::NotFragment => None,
            Fragment::First { id } | Fragment::Later { id } => Some(Self::new(&meta.key, id)),
        }
    }
}

/// What [`FragmentTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentInsert {
    /// Stored in a free or expired slot.
    Inserted,
    /// The key was present (a duplicate first fragment): value replaced.
    Replaced,
    /// The bucket was full of live entries: the one closest to expiry was
    /// evicted.
    Evicted,
}

#[derive(Clone, Copy, Debug)]
struct FragmentSlot<V> {
    key: FragmentKey,
    value: V,
    expires_ns: u64,
}

/// Remembers a value (the worker's verdict) per fragmented datagram, from
/// its first fragment to its later ones. Bounded, allocated once, evicts
/// instead of failing; see the module docs for the limits. One per worker:
/// it takes `&mut self` and has no locks.
///
/// Set-associative: a key hashes to a bucket of [`FragmentTable::WAYS`]
/// slots, so a lookup reads at most four slots.
#[derive(Debug)]
pub struct FragmentTable<V> {
    slots: Box<[Option<FragmentSlot<V>>]>,
    bucket_mask: usize,
    timeout_ns: u64,
}

impl<V: Copy> FragmentTable<V> {
    /// Slots per bucket: a key may live in any of them.
    pub const WAYS: usize = 4;
    /// A reasonable capacity for one worker.
    pub const DEFAULT_CAPACITY: usize = 1024;
    /// A reasonable lifetime: the fragments of one datagram arrive within
    /// milliseconds of each other on a node, and a short life keeps a
    /// wrapped 16-bit IPv4 id from meeting a stale entry.
    pub const DEFAULT_TIMEOUT_NS: u64 = 2_000_000_000;

    /// A table of at least `capacity` slots whose entries live
    /// [`Self::DEFAULT_TIMEOUT_NS`].
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self::with_timeout(capacity, Self::DEFAULT_TIMEOUT_NS)
    }

    /// A table of at least `capacity` slots (rounded up to a power of two,
    /// at least [`Self::WAYS`]) whose entries live `timeout_ns`.
    #[must_use]
    pub fn with_timeout(capacity: usize, timeout_ns: u64) -> Self {
        let capacity = capacity.max(Self::WAYS).next_power_of_two();
        Self {
            slots: vec![None; capacity].into_boxed_slice(),
            bucket_mask: capacity / Self::WAYS - 1,
            timeout_ns,
        }
    }

    /// Number of slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Lifetime of an entry.
    #[must_use]
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// Number of entries alive at `now_ns` (walks the table: not for the
    /// hot path).
    #[must_use]
    pub fn live(&self, now_ns: u64) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.expires_ns > now_ns)
            .count()
    }

    /// Forgets everything (on a policy change, say).
    pub fn clear(&mut self) {
        self.slots.fill(None);
    }

    #[inline]
    fn bucket(&self, key: &FragmentKey) -> std::ops::Range<usize> {
        let h = FxBuildHasher.hash_one(key);
        let h = h ^ (h >> 32);
        let start = (h as usize & self.bucket_mask) * Self::WAYS;
        start..start + Self::WAYS
    }

    /// Stores `value` for the datagram of a first fragment (flow key `key`,
    /// identification `id`) until `now_ns` plus the timeout.
    pub fn insert(&mut self, key: &FlowKey, id: u32, value: V, now_ns: u64) -> FragmentInsert {
        self.insert_key(FragmentKey::new(key, id), value, now_ns)
    }

    /// [`Self::insert`] by datagram key.
    pub fn insert_key(&mut self, key: FragmentKey, value: V, now_ns: u64) -> FragmentInsert {
        let expires_ns = now_ns.saturating_add(self.timeout_ns);
        let entry = Some(FragmentSlot {
            key,
            value,
            expires_ns,
        });
        let range = self.bucket(&key);
        let bucket = &mut self.slots[range];
        let mut free = None;
        let mut oldest = 0;
        let mut oldest_expiry = u64::MAX;
        for (i, slot) in bucket.iter().enumerate() {
            match slot {
                Some(s) if s.key == key => {
                    bucket[i] = entry;
                    return FragmentInsert::Replaced;
                }
                Some(s) if s.expires_ns > now_ns => {
                    if s.expires_ns < oldest_expiry {
                        (oldest, oldest_expiry) = (i, s.expires_ns);
                    }
                }
                _ => {
                    free.get_or_insert(i);
                }
            }
        }
        if let Some(i) = free {
            bucket[i] = entry;
            FragmentInsert::Inserted
        } else {
            bucket[oldest] = entry;
            FragmentInsert::Evicted
        }
    }

    /// The value stored for the datagram of a later fragment (flow key
    /// `key`, identification `id`), if its first fragment was seen and the
    /// entry has neither expired nor been evicted.
    #[must_use]
    #[inline]
    pub fn lookup(&self, key: &FlowKey, id: u32, now_ns: u64) -> Option<V> {
        self.lookup_key(&FragmentKey::new(key, id), now_ns)
    }

    /// [`Self::lookup`] by datagram key.
    #[must_use]
    #[inline]
    pub fn lookup_key(&self, key: &FragmentKey, now_ns: u64) -> Option<V> {
        self.slots[self.bucket(key)]
            .iter()
            .flatten()
            .find(|s| s.key == *key && s.expires_ns > now_ns)
            .map(|s| s.value)
    }

    /// Forgets a datagram, returning its value if it was alive.
    pub fn remove(&mut self, key: &FragmentKey, now_ns: u64) -> Option<V> {
        let range = self.bucket(key);
        let slot = self.slots[range]
            .iter_mut()
            .find(|s| s.is_some_and(|s| s.key == *key))?;
        let old = slot.take()?;
        (old.expires_ns > now_ns).then_some(old.value)
    }
}

impl<V: Copy> Default for FragmentTable<V> {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
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

    fn fkey(id: u32) -> FragmentKey {
        FragmentKey::new(&FlowKey::v4(1, 2, ip_proto::UDP, 0, 0), id)
    }

    #[test]
    fn fragment_key_ignores_ports_and_ipv6_protocol() {
        let first = FlowKey::v4(1, 2, ip_proto::UDP, 1000, 53);
        let later = FlowKey::v4(1, 2, ip_proto::UDP, 0, 0);
        assert_eq!(FragmentKey::new(&first, 7), FragmentKey::new(&later, 7));
        assert_ne!(FragmentKey::new(&first, 7), FragmentKey::new(&first, 8));
        let tcp = FlowKey::v4(1, 2, ip_proto::TCP, 0, 0);
        assert_ne!(FragmentKey::new(&tcp, 7), FragmentKey::new(&later, 7));
        let first6 = FlowKey::v6(1, 2, ip_proto::TCP, 1, 2);
        let later6 = FlowKey::v6(1, 2, ip_proto::DESTINATION_OPTIONS, 0, 0);
        assert_eq!(FragmentKey::new(&first6, 7), FragmentKey::new(&later6, 7));
        assert_ne!(FragmentKey::new(&first6, 7), FragmentKey::new(&tcp, 7));
    }

    #[test]
    fn fragment_table_hit_miss_and_expiry() {
        let mut t = FragmentTable::with_timeout(16, 100);
        assert_eq!(t.capacity(), 16);
        assert_eq!(t.timeout_ns(), 100);
        let first = FlowKey::v4(1, 2, ip_proto::UDP, 1000, 53);
        let later = FlowKey::v4(1, 2, ip_proto::UDP, 0, 0);
        assert_eq!(
            t.lookup(&later, 7, 0),
            None,
            "later before first: no verdict"
        );
        assert_eq!(t.insert(&first, 7, true, 1000), FragmentInsert::Inserted);
        assert_eq!(t.lookup(&later, 7, 1050), Some(true));
        assert_eq!(t.lookup(&later, 8, 1050), None);
        assert_eq!(t.live(1050), 1);
        // A duplicate first fragment replaces the value and the expiry.
        assert_eq!(t.insert(&first, 7, false, 1050), FragmentInsert::Replaced);
        assert_eq!(t.lookup(&later, 7, 1149), Some(false));
        assert_eq!(t.lookup(&later, 7, 1150), None, "expired");
        assert_eq!(t.live(1150), 0);
        // An expired slot is reused without counting as an eviction.
        assert_eq!(t.insert_key(fkey(9), true, 2000), FragmentInsert::Inserted);
        assert_eq!(t.remove(&fkey(9), 2001), Some(true));
        assert_eq!(t.lookup_key(&fkey(9), 2001), None);
        assert_eq!(t.remove(&fkey(9), 2001), None);
        t.insert_key(fkey(10), true, 3000);
        t.clear();
        assert_eq!(t.lookup_key(&fkey(10), 3000), None);
    }

    #[test]
    fn fragment_table_evicts_the_oldest_when_full() {
        let mut t = FragmentTable::with_timeout(8, 1_000_000);
        let mut evicted = 0;
        for id in 0..64u32 {
            match t.insert_key(fkey(id), id, u64::from(id)) {
                FragmentInsert::Evicted => evicted += 1,
                FragmentInsert::Inserted => {}
                FragmentInsert::Replaced => panic!("distinct keys"),
            }
        }
        assert_eq!(evicted, 64 - 8, "a full table evicts instead of failing");
        assert_eq!(t.live(100), 8);
        // The newest entry of each bucket survives; the very last insert
        // is always present, the first ones are gone.
        assert_eq!(t.lookup_key(&fkey(63), 100), Some(63));
        let survivors: Vec<u32> = (0..64)
            .filter(|&id| t.lookup_key(&fkey(id), 100).is_some())
            .collect();
        assert_eq!(survivors.len(), 8);
        assert!(
            survivors.iter().all(|&id| id >= 64 - 8 * 4),
            "{survivors:?}"
        );
        // Within one bucket, the oldest (earliest expiry) goes first.
        let mut bucket_mates = vec![];
        let home = t.bucket(&fkey(0));
        for id in 1000..100_000u32 {
            if t.bucket(&fkey(id)) == home {
                bucket_mates.push(id);
                if bucket_mates.len() == 5 {
                    break;
                }
            }
        }
        let mut t = FragmentTable::with_timeout(8, 1_000_000);
        for (i, &id) in bucket_mates.iter().enumerate() {
            t.insert_key(fkey(id), id, i as u64);
        }
        assert_eq!(t.lookup_key(&fkey(bucket_mates[0]), 10), None);
        for &id in &bucket_mates[1..] {
            assert_eq!(t.lookup_key(&fkey(id), 10), Some(id));
        }
    }

    #[test]
    fn fragment_table_sizes() {
        let t = FragmentTable::<u8>::new(0);
        assert_eq!(t.capacity(), FragmentTable::<u8>::WAYS);
        assert_eq!(FragmentTable::<u8>::new(1000).capacity(), 1024);
        let d = FragmentTable::<u8>::default();
        assert_eq!(d.capacity(), FragmentTable::<u8>::DEFAULT_CAPACITY);
        assert_eq!(d.timeout_ns(), FragmentTable::<u8>::DEFAULT_TIMEOUT_NS);
    }
}
