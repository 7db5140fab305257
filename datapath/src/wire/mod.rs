//! Zero-copy views over the headers the fast path reads.
//!
//! A worker parses every frame it forwards, so parsing must be cheap, must
//! never allocate and must never panic on hostile input. Each header type is
//! a view over a byte buffer in the style of smoltcp's `wire` module: a
//! constructor `new_checked(buffer)` validates the lengths (and the few
//! fields that decide lengths) once, after which every accessor reads inside
//! the checked range and cannot panic. There is no unchecked constructor.
//!
//! Each header module names its fields' byte ranges in a `field` module.
//! Views are generic over `T: AsRef<[u8]>`; over a mutable buffer
//! (`T: AsMut<[u8]>` too) they have setters for the fields that forwarding
//! and address translation rewrite (addresses, ports, TTL, checksums). A
//! setter writes the field only: the caller updates the checksums that
//! cover it, incrementally, with [`checksum`]. The no-panic promise assumes
//! `as_ref` and `as_mut` return the same slice every time, as every std
//! implementation does.
//!
//! Protocol numbers, ethertypes, ICMP types and SCTP chunk types are plain
//! values: an unknown one is not an error, only a malformed length is.
//! [`ParseError`] names the reasons a frame is rejected so callers can count
//! them.

use std::fmt;

pub mod checksum;
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

/// An IP protocol number: IPv4's protocol field, IPv6's (last) next header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// ICMP.
    pub const ICMP: Self = Self(1);
    /// TCP.
    pub const TCP: Self = Self(6);
    /// UDP.
    pub const UDP: Self = Self(17);
    /// ICMPv6.
    pub const ICMPV6: Self = Self(58);
    /// SCTP.
    pub const SCTP: Self = Self(132);

    /// The protocol's usual name, if it has one here.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::ICMP => "ICMP",
            Self::TCP => "TCP",
            Self::UDP => "UDP",
            Self::ICMPV6 => "ICMPv6",
            Self::SCTP => "SCTP",
            _ => return None,
        })
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "proto-{}", self.0),
        }
    }
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// IP protocol numbers as plain bytes, for `match` patterns over a header
/// field or a flow key. Any other value is carried as is.
pub mod ip_proto {
    use super::IpProtocol;

    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = IpProtocol::ICMP.0;
    /// TCP.
    pub const TCP: u8 = IpProtocol::TCP.0;
    /// UDP.
    pub const UDP: u8 = IpProtocol::UDP.0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating security payload (opaque: the walk stops here).
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = IpProtocol::ICMPV6.0;
    /// IPv6 "no next header".
    pub const NO_NEXT_HEADER: u8 = 59;
    /// IPv6 destination options.
    pub const DESTINATION_OPTIONS: u8 = 60;
    /// SCTP.
    pub const SCTP: u8 = IpProtocol::SCTP.0;
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

/// Reads a big-endian `u16` from the start of `b`. Callers pass checked
/// ranges.
#[inline]
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads a big-endian `u32` from the start of `b`. Callers pass checked
/// ranges.
#[inline]
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a big-endian `u128` from the start of `b`. Callers pass checked
/// ranges.
#[inline]
pub(crate) fn be128(b: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&b[..16]);
    u128::from_be_bytes(bytes)
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
}
