//! Hand-built frames for the parser tests and the fuzz seeds.
//!
//! Plain byte assembly with no dependency on the parser, so a parser bug
//! cannot hide behind a matching builder bug. Lengths and IPv4 header
//! checksums are filled in; transport checksums are left 0 (the parser
//! does not read them).

#![allow(dead_code, reason = "each test crate uses a different subset")]

pub(crate) mod counting;
pub(crate) mod pods;

pub(crate) const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
pub(crate) const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
pub(crate) const V4_A: [u8; 4] = [10, 244, 1, 5];
pub(crate) const V4_B: [u8; 4] = [10, 244, 2, 7];
pub(crate) const V4_ROUTER: [u8; 4] = [10, 244, 0, 1];
pub(crate) const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
pub(crate) const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];
pub(crate) const V6_ROUTER: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

pub(crate) const ETH_IPV4: u16 = 0x0800;
pub(crate) const ETH_IPV6: u16 = 0x86dd;
pub(crate) const ETH_ARP: u16 = 0x0806;
pub(crate) const TPID_8021Q: u16 = 0x8100;
pub(crate) const TPID_8021AD: u16 = 0x88a8;
pub(crate) const TPID_9100: u16 = 0x9100;

pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;

/// Link-type selector byte of the fuzz target (first input byte).
pub(crate) const SEL_ETHERNET: u8 = 0;
pub(crate) const SEL_RAW: u8 = 1;
pub(crate) const SEL_SLL: u8 = 2;
pub(crate) const SEL_SLL2: u8 = 3;

pub(crate) fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    vlan(&[], ethertype, payload)
}

/// Ethernet with the given TPIDs as stacked tags (VID 100, 200, ...).
pub(crate) fn vlan(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = MAC_B.to_vec();
    v.extend_from_slice(&MAC_A);
    for (i, tpid) in tpids.iter().enumerate() {
        v.extend_from_slice(&tpid.to_be_bytes());
        v.extend_from_slice(&(100 * (i as u16 + 1)).to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Ethernet padded to the 60-byte minimum, as a NIC sends it.
pub(crate) fn ethernet_padded(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ethernet(ethertype, payload);
    if v.len() < 60 {
        v.resize(60, 0);
    }
    v
}

pub(crate) fn sll(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 4, 0, 1, 0, 6];
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&protocol.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub(crate) fn sll2(protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = protocol.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 0, 6]);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// IPv4 header fields a test may vary.
#[derive(Clone, Debug)]
pub(crate) struct V4 {
    pub(crate) src: [u8; 4],
    pub(crate) dst: [u8; 4],
    pub(crate) protocol: u8,
    pub(crate) ttl: u8,
    pub(crate) id: u16,
    pub(crate) more_frags: bool,
    pub(crate) frag_offset: u16,
    pub(crate) options: Vec<u8>,
}

impl V4 {
    pub(crate) fn new(protocol: u8) -> Self {
        Self {
            src: V4_A,
            dst: V4_B,
            protocol,
            ttl: 64,
            id: 0x1234,
            more_frags: false,
            frag_offset: 0,
            options: vec![],
        }
    }

    pub(crate) fn addrs(mut self, src: [u8; 4], dst: [u8; 4]) -> Self {
        self.src = src;
        self.dst = dst;
        self
    }

    pub(crate) fn fragment(mut self, id: u16, offset: u16, more: bool) -> Self {
        self.id = id;
        self.frag_offset = offset;
        self.more_frags = more;
        self
    }

    pub(crate) fn options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0);
        self.options = options.to_vec();
        self
    }

    pub(crate) fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let total = (header_len + payload.len()) as u16;
        let flags = if self.more_frags { 0x2000 } else { 0 } | (self.frag_offset / 8);
        let mut v = vec![0x40 | (header_len / 4) as u8, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&[self.ttl, self.protocol, 0, 0]);
        v.extend_from_slice(&self.src);
        v.extend_from_slice(&self.dst);
        v.extend_from_slice(&self.options);
        let sum = checksum(&v);
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv6 packet: fixed header plus `rest` (extension headers and
/// transport), with the payload length set to `rest.len()`.
pub(crate) fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, 64]);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(rest);
    v
}

/// A hop-by-hop, routing or destination-options header of `8 * units`
/// bytes (units >= 1) with PadN filling.
pub(crate) fn ext_header(next: u8, units: u8) -> Vec<u8> {
    let mut v = vec![next, units - 1, 1, units * 8 - 4];
    v.resize(usize::from(units) * 8, 0);
    v
}

/// An AH header with `words` 4-byte words after the first 8 bytes.
pub(crate) fn ah_header(next: u8, words: u8) -> Vec<u8> {
    let mut v = vec![next, words];
    v.resize(8 + usize::from(words) * 4, 0xaa);
    v
}

pub(crate) fn frag_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut v = vec![next, 0];
    v.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v
}

pub(crate) fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    // Data offset 6: one MSS option.
    v.extend_from_slice(&[0x60, flags, 0xff, 0xff, 0, 0, 0, 0]);
    v.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    v
}

pub(crate) fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&(8 + data.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(data);
    v
}

/// An SCTP packet with one chunk of `chunk_type` (an INIT body for INIT).
pub(crate) fn sctp(src_port: u16, dst_port: u16, vtag: u32, chunk_type: u8) -> Vec<u8> {
    let mut v = src_port.to_be_bytes().to_vec();
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&vtag.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&[chunk_type, 0, 0, 20]);
    // INIT: initiate tag, a_rwnd, streams, initial TSN.
    v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
    v
}

pub(crate) fn icmp(msg_type: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = vec![msg_type, code, 0, 0];
    v.extend_from_slice(&rest);
    v.extend_from_slice(data);
    v
}

pub(crate) fn echo(msg_type: u8, id: u16, seq: u16) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    icmp(msg_type, 0, [a, b, c, d], b"podfence")
}

/// Every seed of the `parse_frame` fuzz target: a file name and the input
/// (link selector byte, then the frame). Names starting with `bad_` must
/// not parse; all others must.
#[allow(clippy::too_many_lines, reason = "one line per seed")]
pub(crate) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |sel: u8, frame: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(frame);
        v
    };
    let syn4 = V4::new(6).packet(&tcp(40000, 80, SYN));
    let syn6 = ipv6(6, V6_A, V6_B, &tcp(40000, 443, SYN));
    let udp4 = V4::new(17).packet(&udp(5353, 53, b"query"));
    let udp6 = ipv6(17, V6_A, V6_B, &udp(5353, 53, b"query"));
    let sctp4 = V4::new(132).packet(&sctp(5000, 2905, 0, 1));
    let sctp6 = ipv6(132, V6_A, V6_B, &sctp(5000, 2905, 0, 1));
    let ping4 = V4::new(1).packet(&echo(8, 0x77, 1));
    let reply4 = V4::new(1).addrs(V4_B, V4_A).packet(&echo(0, 0x77, 1));
    let ping6 = ipv6(58, V6_A, V6_B, &echo(128, 0x66, 1));
    let unreach4 = {
        let quoted = V4::new(17).packet(&udp(5353, 53, b"query"));
        V4::new(1)
            .addrs(V4_ROUTER, V4_A)
            .packet(&icmp(3, 3, [0; 4], &quoted[..28]))
    };
    let too_big6 = {
        let quoted = ipv6(6, V6_A, V6_B, &tcp(40000, 443, ACK));
        ipv6(58, V6_ROUTER, V6_A, &icmp(2, 0, [0, 0, 5, 0xdc], &quoted))
    };
    let exceeded4_echo = {
        let quoted = V4::new(1).packet(&echo(8, 0x77, 1));
        V4::new(1)
            .addrs(V4_ROUTER, V4_A)
            .packet(&icmp(11, 0, [0; 4], &quoted[..28]))
    };
    let frag4_first = V4::new(17)
        .fragment(7, 0, true)
        .packet(&udp(1000, 2000, &[0xab; 64])[..48]);
    let frag4_later = V4::new(17).fragment(7, 48, false).packet(&[0xab; 24]);
    let frag6_first = {
        let mut rest = frag_header(17, 0, true, 0xdead_beef);
        rest.extend_from_slice(&udp(1000, 2000, &[0xab; 64])[..48]);
        ipv6(44, V6_A, V6_B, &rest)
    };
    let frag6_later = {
        let mut rest = frag_header(17, 48, false, 0xdead_beef);
        rest.extend_from_slice(&[0xab; 24]);
        ipv6(44, V6_A, V6_B, &rest)
    };
    let ext6 = {
        let mut rest = ext_header(43, 1);
        rest.extend(ext_header(51, 2));
        rest.extend(ah_header(60, 4));
        rest.extend(ext_header(6, 1));
        rest.extend(tcp(40000, 22, SYN));
        ipv6(0, V6_A, V6_B, &rest)
    };
    let ext6_too_long = {
        let mut rest = vec![];
        for _ in 0..9 {
            rest.extend(ext_header(60, 1));
        }
        rest.extend(tcp(1, 2, SYN));
        ipv6(60, V6_A, V6_B, &rest)
    };
    let opts4 = V4::new(6)
        .options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
        .packet(&tcp(40000, 80, SYN | ACK));
    let gre4 = V4::new(47).packet(&[0, 0, 0x08, 0x00]);
    let esp6 = ipv6(50, V6_A, V6_B, &[0, 0, 1, 0, 0, 0, 0, 1, 0xee, 0xee]);
    let arp = [0, 1, 8, 0, 6, 4, 0, 1].to_vec();

    vec![
        (
            "eth_ipv4_tcp_syn",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &syn4)),
        ),
        (
            "eth_ipv6_tcp_syn",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &syn6)),
        ),
        (
            "eth_ipv4_udp_padded",
            with(SEL_ETHERNET, ethernet_padded(ETH_IPV4, &udp4)),
        ),
        (
            "eth_ipv6_udp",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &udp6)),
        ),
        (
            "eth_ipv4_sctp_init",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &sctp4)),
        ),
        (
            "eth_ipv6_sctp_init",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &sctp6)),
        ),
        (
            "eth_ipv4_icmp_echo_request",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &ping4)),
        ),
        (
            "eth_ipv4_icmp_echo_reply",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &reply4)),
        ),
        (
            "eth_ipv6_icmpv6_echo_request",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &ping6)),
        ),
        (
            "eth_ipv4_icmp_port_unreachable",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &unreach4)),
        ),
        (
            "eth_ipv4_icmp_time_exceeded_echo",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &exceeded4_echo)),
        ),
        (
            "eth_ipv6_icmpv6_packet_too_big",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &too_big6)),
        ),
        (
            "eth_ipv4_fragment_first",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &frag4_first)),
        ),
        (
            "eth_ipv4_fragment_later",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &frag4_later)),
        ),
        (
            "eth_ipv6_fragment_first",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &frag6_first)),
        ),
        (
            "eth_ipv6_fragment_later",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &frag6_later)),
        ),
        (
            "eth_ipv6_extension_chain",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &ext6)),
        ),
        (
            "eth_ipv4_options",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &opts4)),
        ),
        (
            "eth_ipv4_gre",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &gre4)),
        ),
        (
            "eth_ipv6_esp",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &esp6)),
        ),
        ("eth_arp", with(SEL_ETHERNET, ethernet(ETH_ARP, &arp))),
        (
            "vlan_ipv4_tcp",
            with(SEL_ETHERNET, vlan(&[TPID_8021Q], ETH_IPV4, &syn4)),
        ),
        (
            "qinq_ipv6_udp",
            with(
                SEL_ETHERNET,
                vlan(&[TPID_8021AD, TPID_8021Q], ETH_IPV6, &udp6),
            ),
        ),
        (
            "qinq_9100_ipv4_udp",
            with(
                SEL_ETHERNET,
                vlan(&[TPID_9100, TPID_8021Q], ETH_IPV4, &udp4),
            ),
        ),
        ("sll_ipv4_tcp", with(SEL_SLL, sll(ETH_IPV4, &syn4))),
        ("sll_ipv6_udp", with(SEL_SLL, sll(ETH_IPV6, &udp6))),
        ("sll2_ipv4_udp", with(SEL_SLL2, sll2(ETH_IPV4, &udp4))),
        ("sll2_ipv6_icmpv6", with(SEL_SLL2, sll2(ETH_IPV6, &ping6))),
        ("raw_ipv4_tcp", with(SEL_RAW, syn4.clone())),
        ("raw_ipv6_sctp", with(SEL_RAW, sctp6.clone())),
        (
            "bad_three_vlan_tags",
            with(
                SEL_ETHERNET,
                vlan(&[TPID_8021AD, TPID_8021Q, TPID_8021Q], ETH_IPV4, &syn4),
            ),
        ),
        (
            "bad_ipv6_extension_chain_too_long",
            with(SEL_ETHERNET, ethernet(ETH_IPV6, &ext6_too_long)),
        ),
        (
            "bad_truncated_ethernet",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &syn4)[..10].to_vec()),
        ),
        (
            "bad_truncated_ipv4",
            with(SEL_ETHERNET, ethernet(ETH_IPV4, &syn4)[..30].to_vec()),
        ),
        ("bad_truncated_raw_ipv4", with(SEL_RAW, syn4[..30].to_vec())),
        (
            "bad_truncated_tcp",
            with(SEL_RAW, V4::new(6).packet(&tcp(1, 2, SYN)[..10])),
        ),
        ("bad_truncated_ipv6", with(SEL_RAW, syn6[..50].to_vec())),
        (
            "bad_truncated_sll",
            with(SEL_SLL, sll(ETH_IPV4, &[])[..12].to_vec()),
        ),
        ("bad_raw_version", with(SEL_RAW, vec![0x50; 40])),
    ]
}
