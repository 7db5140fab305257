//! The seeds of the `parse_frame` fuzz target, built with the testkit's
//! frame builders (`fuzz_seeds` checks the committed files against them).

use podfence_testkit::frames::*;

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
