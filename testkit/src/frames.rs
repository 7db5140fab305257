//! Frames assembled byte by byte, for parser, switch and redirector tests.
//!
//! Plain byte assembly with no dependency on the parser, so a parser bug
//! cannot hide behind a matching builder bug. Lengths and IPv4 header
//! checksums are filled in; transport checksums are left 0 (the parser
//! does not read them). The IPv4 header checksum is the datapath's one
//! checksum module's, which its own tests check against RFC 1071.

use podfence_datapath::wire::checksum::internet_checksum;

/// Source MAC of the builders.
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
/// Destination MAC of the builders.
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
/// Default IPv4 source, destination and an on-path router.
pub const V4_A: [u8; 4] = [10, 244, 1, 5];
pub const V4_B: [u8; 4] = [10, 244, 2, 7];
pub const V4_ROUTER: [u8; 4] = [10, 244, 0, 1];
/// Default IPv6 source, destination and an on-path router.
pub const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
pub const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
pub const V6_ROUTER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Ethertypes and VLAN TPIDs.
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const TPID_9100: u16 = 0x9100;

/// TCP flags.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// Link-type selector byte of the fuzz target (first input byte).
pub const SEL_ETHERNET: u8 = 0;
pub const SEL_RAW: u8 = 1;
pub const SEL_SLL: u8 = 2;
pub const SEL_SLL2: u8 = 3;

/// Ethernet from `src` to `dst` with VLAN `tags` (TPID, VID), outermost
/// first.
#[must_use]
pub fn ethernet_tagged(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = dst.to_vec();
    v.extend_from_slice(&src);
    for (tpid, vid) in tags {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&vid.to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Ethernet from [`MAC_A`] to [`MAC_B`].
#[must_use]
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    vlan(&[], ethertype, payload)
}

/// Ethernet from [`MAC_A`] to [`MAC_B`] with the given TPIDs as stacked
/// tags (VID 100, 200, ...).
#[must_use]
pub fn vlan(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let tags: Vec<(u16, u16)> = tpids
        .iter()
        .enumerate()
        .map(|(i, &tpid)| (tpid, 100 * (i as u16 + 1)))
        .collect();
    ethernet_tagged(MAC_B, MAC_A, &tags, ethertype, payload)
}

/// Ethernet padded to the 60-byte minimum, as a NIC sends it.
#[must_use]
pub fn ethernet_padded(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ethernet(ethertype, payload);
    if v.len() < 60 {
        v.resize(60, 0);
    }
    v
}

/// Linux cooked capture (SLL) from [`MAC_A`] carrying `protocol`.
#[must_use]
pub fn sll(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 4, 0, 1, 0, 6];
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&protocol.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Linux cooked capture v2 (SLL2) from [`MAC_A`] carrying `protocol`.
#[must_use]
pub fn sll2(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = protocol.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 0, 6]);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// IPv4 header fields a test may vary.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_frags: bool,
    pub frag_offset: u16,
    pub options: Vec<u8>,
}

impl V4 {
    /// From [`V4_A`] to [`V4_B`], TTL 64, not fragmented, no options.
    #[must_use]
    pub fn new(protocol: u8) -> Self {
        Self {
            src: V4_A,
            dst: V4_B,
            protocol,
            ttl: 64,
            id: 0x1234,
            dont_fragment: false,
            more_frags: false,
            frag_offset: 0,
            options: vec![],
        }
    }

    /// Source and destination.
    #[must_use]
    pub fn addrs(mut self, src: [u8; 4], dst: [u8; 4]) -> Self {
        self.src = src;
        self.dst = dst;
        self
    }

    /// A fragment: identification, byte offset (a multiple of 8) and the
    /// more-fragments flag.
    #[must_use]
    pub fn fragment(mut self, id: u16, offset: u16, more: bool) -> Self {
        self.id = id;
        self.frag_offset = offset;
        self.more_frags = more;
        self
    }

    /// Identification 1 and don't-fragment set, as a host's own stack
    /// sends a datagram.
    #[must_use]
    pub fn host_sent(mut self) -> Self {
        self.id = 1;
        self.dont_fragment = true;
        self
    }

    /// Options (a multiple of 4 bytes).
    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0);
        self.options = options.to_vec();
        self
    }

    /// The header (with its checksum) followed by `payload`.
    #[must_use]
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let total = (header_len + payload.len()) as u16;
        let flags = if self.dont_fragment { 0x4000 } else { 0 }
            | if self.more_frags { 0x2000 } else { 0 }
            | (self.frag_offset / 8);
        let mut v = vec![0x40 | (header_len / 4) as u8, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&[self.ttl, self.protocol, 0, 0]);
        v.extend_from_slice(&self.src);
        v.extend_from_slice(&self.dst);
        v.extend_from_slice(&self.options);
        let sum = internet_checksum(&v);
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }
}

/// An IPv6 packet: fixed header plus `rest` (extension headers and
/// transport), with the payload length set to `rest.len()`.
#[must_use]
pub fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], rest: &[u8]) -> Vec<u8> {
    ipv6_hop_limit(next, 64, src, dst, rest)
}

/// [`ipv6`] with the given hop limit (255 for neighbour discovery).
#[must_use]
pub fn ipv6_hop_limit(
    next: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
    rest: &[u8],
) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, hop_limit]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(rest);
    v
}

/// A hop-by-hop, routing or destination-options header of `8 * units`
/// bytes (units >= 1) with PadN filling.
#[must_use]
pub fn ext_header(next: u8, units: u8) -> Vec<u8> {
    let mut v = vec![next, units - 1, 1, units * 8 - 4];
    v.resize(usize::from(units) * 8, 0);
    v
}

/// An AH header with `words` 4-byte words after the first 8 bytes.
#[must_use]
pub fn ah_header(next: u8, words: u8) -> Vec<u8> {
    let mut v = vec![next, words];
    v.resize(8 + usize::from(words) * 4, 0xaa);
    v
}

/// An IPv6 fragment header: byte offset, more-fragments flag, id.
#[must_use]
pub fn frag_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// A TCP header with one MSS option.
#[must_use]
pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    // Data offset 6: one MSS option.
    v.extend_from_slice(&[0x60, flags, 0xff, 0xff, 0, 0, 0, 0]);
    v.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    v
}

/// A UDP header and `data`.
#[must_use]
pub fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(data);
    v
}

/// An SCTP packet with one chunk of `chunk_type` (an INIT body for INIT).
#[must_use]
pub fn sctp(src_port: u16, dst_port: u16, vtag: u32, chunk_type: u8) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&vtag.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&[chunk_type, 0, 0, 20]);
    // INIT: initiate tag, a_rwnd, streams, initial TSN.
    v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
    v
}

/// An ICMP or ICMPv6 message: type, code, the 4 bytes after the
/// checksum, then `data`.
#[must_use]
pub fn icmp(msg_type: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = vec![msg_type, code, 0, 0];
    v.extend_from_slice(&rest);
    v.extend_from_slice(data);
    v
}

/// An echo request or reply (`msg_type`) with `id` and `seq`.
#[must_use]
pub fn echo(msg_type: u8, id: u16, seq: u16) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    icmp(msg_type, 0, [a, b, c, d], b"podfence")
}

/// An ARP request (Ethernet, IPv4) from `sender_mac`/`sender_ip` asking
/// for `target_ip`.
#[must_use]
pub fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender_ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target_ip);
    arp
}
