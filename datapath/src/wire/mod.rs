//! Zero-copy views over the headers the fast path reads.
//!
//! A worker parses every frame it forwards, so parsing must be cheap, must
//! never allocate and must never panic on hostile input. Each header type is
//! a view over a byte buffer in the style of smoltcp's `wire` module: a
//! constructor `new_checked(buffer)` validates the lengths (and the few
//! fields that decide lengths) once, after which every accessor reads inside
//! the checked range and cannot panic. There is no unchecked constructor.
//!
//! Views are generic over `T: AsRef<[u8]>` so that a mutable buffer can get
//! setters later (TTL rewrite); the no-panic promise assumes `as_ref` returns
//! the same slice every time, as every std implementation does.
//!
//! Protocol numbers, ethertypes, ICMP types and SCTP chunk types are plain
//! values: an unknown one is not an error, only a malformed length is.
//! [`ParseError`] names the reasons a frame is rejected so callers can count
//! them.

use std::fmt;

pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod sll;
pub mod tcp;
pub mod udp;

pub use ethernet::{EthernetFrame, ethertype};
pub use icmpv4::Icmpv4Packet;
pub use icmpv6::Icmpv6Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::{Ipv6ExtHeader, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Packet};
pub use sctp::SctpPacket;
pub use sll::{LinuxSll2Header, LinuxSllHeader};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// IP protocol numbers the parser looks into. Any other value is carried as
/// is.
pub mod ip_proto {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating security payload (opaque: the walk stops here).
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 destination options.
    pub const DESTINATION_OPTIONS: u8 = 60;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

macro_rules! parse_errors {
    ($($(#[$doc:meta])* $name:ident => $label:literal, $message:literal;)*) => {
        /// Why a frame could not be parsed. Every variant is a counter label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ParseError {
            $($(#[$doc])* $name,)*
        }

        impl ParseError {
            /// Every reason, in [`ParseError::index`] order.
            pub const ALL: &'static [ParseError] = &[$(ParseError::$name,)*];

            /// A short `snake_case` label, suitable for a metrics label.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ParseError::$name => $label,)*
                }
            }

            /// A human-readable description.
            #[must_use]
            pub fn message(self) -> &'static str {
                match self {
                    $(ParseError::$name => $message,)*
                }
            }
        }
    };
}

parse_errors! {
    /// A zero-length frame.
    EmptyFrame => "empty_frame", "empty frame";
    /// Shorter than an Ethernet header.
    TruncatedEthernet => "truncated_ethernet", "frame shorter than an Ethernet header";
    /// A VLAN tag runs past the end of the frame.
    TruncatedVlan => "truncated_vlan", "VLAN tag runs past the end of the frame";
    /// More than two stacked VLAN tags.
    TooManyVlanTags => "too_many_vlan_tags", "more than two stacked VLAN tags";
    /// Shorter than a Linux cooked-capture header.
    TruncatedSll => "truncated_sll", "frame shorter than a Linux cooked-capture header";
    /// The IP version nibble does not match the framing (or is not 4 or 6).
    BadIpVersion => "bad_ip_version", "IP version does not match the link-layer protocol";
    /// Shorter than the IPv4 header it announces.
    TruncatedIpv4 => "truncated_ipv4", "IPv4 header or total length runs past the frame";
    /// IHL below 5.
    BadIpv4HeaderLength => "bad_ipv4_header_length", "IPv4 header length below 20 bytes";
    /// Total length below the header length.
    BadIpv4TotalLength => "bad_ipv4_total_length", "IPv4 total length below its header length";
    /// An IPv4 TCP fragment at offset 8 could overwrite the first fragment's
    /// TCP header (RFC 1858).
    TinyTcpFragment => "tiny_tcp_fragment", "IPv4 TCP fragment at offset 8 (RFC 1858)";
    /// Shorter than the IPv6 header or its payload length.
    TruncatedIpv6 => "truncated_ipv6", "IPv6 header or payload length runs past the frame";
    /// An IPv6 extension header runs past the end of the packet.
    TruncatedIpv6Extension => "truncated_ipv6_extension", "IPv6 extension header runs past the packet";
    /// More IPv6 extension headers than the walk allows.
    TooManyIpv6Extensions => "too_many_ipv6_extensions", "IPv6 extension header chain too long";
    /// Shorter than a TCP header.
    TruncatedTcp => "truncated_tcp", "TCP header runs past the packet";
    /// TCP data offset below 5.
    BadTcpDataOffset => "bad_tcp_data_offset", "TCP data offset below 20 bytes";
    /// Shorter than a UDP header or its length field.
    TruncatedUdp => "truncated_udp", "UDP header or length runs past the packet";
    /// UDP length field below 8.
    BadUdpLength => "bad_udp_length", "UDP length below 8 bytes";
    /// Shorter than the SCTP common header.
    TruncatedSctp => "truncated_sctp", "SCTP common header runs past the packet";
    /// Shorter than an ICMP header.
    TruncatedIcmp => "truncated_icmp", "ICMP header runs past the packet";
    /// Shorter than an ICMPv6 header.
    TruncatedIcmpv6 => "truncated_icmpv6", "ICMPv6 header runs past the packet";
    /// The packet embedded in an ICMP or ICMPv6 error cannot be read.
    BadIcmpInner => "bad_icmp_inner", "ICMP error does not embed a readable IP header and ports";
}

impl ParseError {
    /// Number of reasons: the size of a counter array indexed by
    /// [`ParseError::index`].
    pub const COUNT: usize = Self::ALL.len();

    /// A dense index in `0..COUNT`.
    #[must_use]
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ParseError {}

/// Reads a big-endian `u16` at `i`. Callers index only checked ranges.
#[inline]
pub(crate) fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Reads a big-endian `u32` at `i`. Callers index only checked ranges.
#[inline]
pub(crate) fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reads a big-endian `u128` at `i`. Callers index only checked ranges.
#[inline]
pub(crate) fn be128(b: &[u8], i: usize) -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b[i..i + 16]);
    u128::from_be_bytes(bytes)
}

/// The Internet checksum (RFC 1071) of `data`, folded and complemented: 0
/// over a region that includes a correct checksum field.
#[must_use]
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indices_dense() {
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.to_string().is_empty());
        }
        let mut labels: Vec<_> = ParseError::ALL.iter().map(|e| e.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ParseError::COUNT);
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
    }
}
