//! Building frames: Ethernet, IPv4 or IPv6, and a TCP, UDP, SCTP or ICMP
//! header with correct lengths and checksums.
//!
//! Benchmarks build their traces with it, tests build captures with it, and
//! the traffic generator builds what it sends. It writes into a caller's
//! buffer so that a generator can rebuild frames in place without
//! allocating.

use std::net::IpAddr;

use crate::wire::checksum::{
    address_range, crc32c, data_sum, finish, internet_checksum, pseudo_header_sum,
};
use crate::wire::{icmpv4, icmpv6, ip_proto, sctp};

/// The transport part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with these flags (see [`crate::conntrack::tcp_flags`]).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags byte.
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// SCTP with one chunk of this type (1 = INIT, 2 = INIT ACK, ...).
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Chunk type.
        chunk: u8,
    },
    /// ICMP (IPv4) or ICMPv6 echo: request or reply.
    Echo {
        /// Identifier.
        id: u16,
        /// Reply rather than request.
        reply: bool,
    },
}

/// A frame to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// Source address; both addresses must be of one family.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport header.
    pub transport: Transport,
    /// Payload bytes after the transport header (zeros, or `payload_fill`).
    pub payload_len: usize,
    /// Byte the payload is filled with.
    pub payload_fill: u8,
}

/// Source MAC address of crafted frames (locally administered).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// Destination MAC address of crafted frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

impl FrameSpec {
    /// Builds the frame into `out` (cleared first).
    ///
    /// # Panics
    /// When the addresses are of different families.
    pub fn build_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let v6 = match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => panic!("source and destination must be of one family"),
        };
        out.extend_from_slice(&DST_MAC);
        out.extend_from_slice(&SRC_MAC);
        out.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        let l3 = out.len();
        let (protocol, l4_len) = match self.transport {
            Transport::Tcp { .. } => (ip_proto::TCP, 20),
            Transport::Udp { .. } => (ip_proto::UDP, 8),
            Transport::Sctp { .. } => (ip_proto::SCTP, 12 + 20),
            Transport::Echo { .. } => (if v6 { ip_proto::ICMPV6 } else { ip_proto::ICMP }, 8),
        };
        let l4_total = l4_len + self.payload_len;
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + l4_total) as u16;
                out.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0]);
                out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
                let sum = internet_checksum(&out[l3..l3 + 20]);
                out[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&(l4_total as u16).to_be_bytes());
                out.extend_from_slice(&[protocol, 64]);
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
            }
            _ => unreachable!("families checked above"),
        }
        let l4 = out.len();
        match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
            }
            Transport::Udp { src_port, dst_port } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&(l4_total as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Transport::Sctp {
                src_port,
                dst_port,
                chunk,
            } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                // Verification tag 0 for INIT, else any; checksum filled below.
                let tag: u32 = if chunk == sctp::chunk::INIT {
                    0
                } else {
                    0x1234_5678
                };
                out.extend_from_slice(&tag.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                // One chunk: type, flags, length 20, then INIT-style fields
                // (initiate tag, a_rwnd, streams, initial TSN).
                out.extend_from_slice(&[chunk, 0, 0, 20]);
                out.extend_from_slice(&[
                    0xca, 0xfe, 0xba, 0xbe, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1,
                ]);
            }
            Transport::Echo { id, reply } => {
                let ty = match (v6, reply) {
                    (false, false) => icmpv4::kind::ECHO_REQUEST,
                    (false, true) => icmpv4::kind::ECHO_REPLY,
                    (true, false) => icmpv6::kind::ECHO_REQUEST,
                    (true, true) => icmpv6::kind::ECHO_REPLY,
                };
                out.extend_from_slice(&[ty, 0, 0, 0]);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&[0, 1]);
            }
        }
        out.resize(out.len() + self.payload_len, self.payload_fill);
        self.fill_l4_checksum(out, l3, l4, protocol, v6);
    }

    /// Builds the frame into a new vector.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(14 + 40 + 32 + self.payload_len);
        self.build_into(&mut v);
        v
    }

    fn fill_l4_checksum(&self, out: &mut [u8], l3: usize, l4: usize, protocol: u8, v6: bool) {
        let len = out.len() - l4;
        let pseudo = |out: &[u8]| {
            let addrs = address_range(v6);
            pseudo_header_sum(&out[l3 + addrs.start..l3 + addrs.end], protocol, len as u32)
        };
        let at = match self.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { .. } => 6,
            Transport::Echo { .. } => 2,
            Transport::Sctp { .. } => {
                let crc = crc32c(&out[l4..]);
                out[l4 + 8..l4 + 12].copy_from_slice(&crc.to_le_bytes());
                return;
            }
        };
        let base = if matches!(self.transport, Transport::Echo { .. }) && !v6 {
            0
        } else {
            pseudo(out)
        };
        let sum = finish(data_sum(base, &out[l4..]));
        let sum = if sum == 0 && matches!(self.transport, Transport::Udp { .. }) {
            0xffff
        } else {
            sum
        };
        out[l4 + at..l4 + at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: &str, dst: &str, transport: Transport) -> FrameSpec {
        FrameSpec {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            transport,
            payload_len: 0,
            payload_fill: 0,
        }
    }

    #[test]
    fn ipv4_tcp_syn_has_valid_checksums() {
        let f = spec(
            "10.0.0.1",
            "10.0.0.2",
            Transport::Tcp {
                src_port: 40000,
                dst_port: 80,
                flags: 2,
            },
        )
        .build();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(internet_checksum(&f[14..34]), 0, "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..]);
        assert_eq!(internet_checksum(&pseudo), 0, "TCP checksum");
    }

    #[test]
    fn udp_v6_and_lengths() {
        let mut s = spec(
            "fd00::1",
            "fd00::2",
            Transport::Udp {
                src_port: 1,
                dst_port: 53,
            },
        );
        s.payload_len = 10;
        let f = s.build();
        assert_eq!(f.len(), 14 + 40 + 8 + 10);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 18, "payload length");
        assert_eq!(u16::from_be_bytes([f[58], f[59]]), 18, "UDP length");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..54]);
        pseudo.extend_from_slice(&[0, 0, 0, 18, 0, 0, 0, 17]);
        pseudo.extend_from_slice(&f[54..]);
        assert_eq!(internet_checksum(&pseudo), 0);
    }

    #[test]
    fn sctp_crc32c_and_icmp_echo() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let f = spec(
            "10.0.0.1",
            "10.0.0.2",
            Transport::Sctp {
                src_port: 5,
                dst_port: 80,
                chunk: 1,
            },
        )
        .build();
        assert_eq!(f[23], 132);
        let mut body = f[34..].to_vec();
        let crc = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
        body[8..12].fill(0);
        assert_eq!(crc32c(&body), crc);
        let e = spec(
            "10.0.0.1",
            "10.0.0.2",
            Transport::Echo {
                id: 7,
                reply: false,
            },
        )
        .build();
        assert_eq!((e[34], internet_checksum(&e[34..])), (8, 0));
    }
}
