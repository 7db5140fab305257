//! The Internet checksum (RFC 1071), its incremental update (RFC 1624) and
//! SCTP's CRC32c, in one place.
//!
//! Frames are checksummed in several places: the crafter fills fresh
//! headers, the switch rewrites the TTL, offload finishes checksums a pod
//! left to the device, and address translation rewrites addresses and
//! ports. They all build on the functions here.
//!
//! A *sum* is a one's-complement sum of big-endian 16-bit words carried in a
//! `u32`. [`data_sum`] returns it folded to 16 bits, so callers may add a
//! few more words (a protocol number, a length) before [`fold`] or
//! [`finish`]. Folding never turns a non-zero sum into 0, so a sum is the
//! same checksum however often it was folded on the way.
//!
//! Nothing here allocates.

use std::ops::Range;

use super::{ipv4, ipv6};

/// Adds the big-endian 16-bit words of `data` to `sum` (an odd last byte is
/// padded with zero); returns the sum folded to at most 16 bits.
#[must_use]
#[inline]
pub fn data_sum(sum: u32, data: &[u8]) -> u32 {
    // 32-bit words into a 64-bit accumulator: half the additions of 16-bit
    // words, and 2^16 = 1 in one's-complement arithmetic, so the folded
    // result is the same.
    let mut acc = u64::from(sum);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    u32::from(fold_u64(acc))
}

/// Folds a sum to 16 bits (not complemented). Only 0 folds to 0.
#[must_use]
#[inline]
pub fn fold(sum: u32) -> u16 {
    fold_u64(u64::from(sum))
}

#[inline]
fn fold_u64(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field for a sum: folded and complemented.
#[must_use]
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data`: 0 over a region that includes a correct
/// checksum field.
#[must_use]
#[inline]
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(data_sum(0, data))
}

/// Where the source and destination address lie, back to back, in an IPv4
/// or IPv6 header: the `addrs` of [`pseudo_header_sum`].
#[must_use]
#[inline]
pub fn address_range(ipv6: bool) -> Range<usize> {
    if ipv6 {
        ipv6::field::SRC_ADDR.start..ipv6::field::DST_ADDR.end
    } else {
        ipv4::field::SRC_ADDR.start..ipv4::field::DST_ADDR.end
    }
}

/// The sum of a TCP/UDP/ICMPv6 pseudo-header. `addrs` is the source and
/// destination address as they lie in the IP header (8 bytes for IPv4, 32
/// for IPv6), `len` the transport header plus data.
#[must_use]
#[inline]
pub fn pseudo_header_sum(addrs: &[u8], protocol: u8, len: u32) -> u32 {
    data_sum(u32::from(protocol) + (len >> 16) + (len & 0xffff), addrs)
}

/// The checksum after a 16-bit word it covers changed from `old` to `new`
/// (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
///
/// The result is what a full recompute gives whenever the covered data is
/// not all zeros (never the case for an IP header or a pseudo-header). A
/// UDP caller maps a result of 0 to 0xffff, as a full recompute does.
#[must_use]
#[inline]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    finish(u32::from(!checksum) + u32::from(!old) + u32::from(new))
}

/// [`update_u16`] for a 32-bit field (an IPv4 address, two ports).
#[must_use]
#[inline]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let words = |v: u32| u32::from((v >> 16) as u16) + u32::from(v as u16);
    let not_old = words(!old);
    finish(u32::from(!checksum) + not_old + words(new))
}

/// [`update_u16`] for a 128-bit field (an IPv6 address).
#[must_use]
#[inline]
pub fn update_u128(checksum: u16, old: u128, new: u128) -> u16 {
    let words = |v: u128| {
        (0..8)
            .map(|i| u32::from((v >> (16 * i)) as u16))
            .sum::<u32>()
    };
    finish(u32::from(!checksum) + words(!old) + words(new))
}

/// CRC32c (Castagnoli), SCTP's checksum (RFC 9260 appendix A); the caller
/// stores it little-endian.
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook sum: 16-bit words into a wide accumulator, folded once
    /// at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            sum += u64::from(*b) << if i % 2 == 0 { 8 } else { 0 };
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
        assert_eq!(internet_checksum(&[]), 0xffff);
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u32::MAX), 0xffff);
    }

    #[test]
    fn crc32c_test_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn pseudo_header_matches_the_spelled_out_header() {
        let addrs = [10, 0, 0, 1, 10, 0, 0, 2];
        let mut spelled = addrs.to_vec();
        spelled.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(
            finish(pseudo_header_sum(&addrs, 6, 20)),
            reference(&spelled)
        );
        // An IPv6 jumbo length: 32 bits.
        let addrs = [0xfd; 32];
        let mut spelled = addrs.to_vec();
        spelled.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 17]);
        assert_eq!(
            finish(pseudo_header_sum(&addrs, 17, 0x1_0002)),
            reference(&spelled)
        );
    }

    /// A non-zero word at offset 0 (an IP version, a pseudo-header's
    /// protocol), then `data`; `filler` at offset 2 lets a test steer the
    /// sum onto the edges.
    fn covered(data: &[u8], filler: u16) -> Vec<u8> {
        let mut v = vec![0x45, 0];
        v.extend_from_slice(&filler.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    /// `filler` that makes the checksum of `covered(data, filler)` 0x0000
    /// (the sum folds to 0xffff).
    fn filler_for_zero_checksum(data: &[u8]) -> u16 {
        let rest = fold(data_sum(0, &covered(data, 0)));
        0xffff - rest
    }

    fn word_at(v: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([v[at], v[at + 1]])
    }

    proptest! {
        #[test]
        fn data_sum_matches_the_textbook_sum(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            prop_assert_eq!(internet_checksum(&data), reference(&data));
            // Summing in two parts (the first of even length) is the same.
            let split = (split.min(data.len())) & !1;
            let sum = data_sum(data_sum(0, &data[..split]), &data[split..]);
            prop_assert_eq!(finish(sum), reference(&data));
        }

        #[test]
        fn incremental_u16_equals_full_recompute(
            data in proptest::collection::vec(any::<u8>(), 2..200),
            word in any::<usize>(),
            new in any::<u16>(),
            edge in 0u8..3,
        ) {
            let at = 4 + 2 * (word % (data.len() / 2));
            // Edge 1: the checksum before the change is 0x0000.
            let filler = if edge == 1 { filler_for_zero_checksum(&data) } else { 0x1234 };
            let before = covered(&data, filler);
            let old = word_at(&before, at);
            let mut after = before.clone();
            after[at..at + 2].fill(0);
            // Edge 2: the checksum after the change is 0x0000.
            let new = if edge == 2 { 0xffff - fold(data_sum(0, &after)) } else { new };
            after[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let hc = internet_checksum(&before);
            if edge == 1 {
                prop_assert_eq!(hc, 0x0000);
            }
            if edge == 2 {
                prop_assert_eq!(internet_checksum(&after), 0x0000);
            }
            prop_assert_eq!(update_u16(hc, old, new), internet_checksum(&after));
            // And back again.
            prop_assert_eq!(update_u16(internet_checksum(&after), new, old), hc);
        }

        #[test]
        fn incremental_u32_and_u128_equal_full_recompute(
            data in proptest::collection::vec(any::<u8>(), 40..120),
            old4 in any::<u32>(), new4 in any::<u32>(),
            old16 in any::<u128>(), new16 in any::<u128>(),
            zero_before in any::<bool>(),
        ) {
            // IPv4-like: a 32-bit field at offset 4.
            let mut v = covered(&data, 0);
            v[4..8].copy_from_slice(&old4.to_be_bytes());
            if zero_before {
                let filler = filler_for_zero_checksum(&v[4..]);
                v[2..4].copy_from_slice(&filler.to_be_bytes());
                prop_assert_eq!(internet_checksum(&v), 0);
            }
            let hc = internet_checksum(&v);
            v[4..8].copy_from_slice(&new4.to_be_bytes());
            prop_assert_eq!(update_u32(hc, old4, new4), internet_checksum(&v));

            // IPv6-like: a 128-bit field at offset 8.
            let mut v = covered(&data, 0);
            v[8..24].copy_from_slice(&old16.to_be_bytes());
            if zero_before {
                let filler = filler_for_zero_checksum(&v[4..]);
                v[2..4].copy_from_slice(&filler.to_be_bytes());
                prop_assert_eq!(internet_checksum(&v), 0);
            }
            let hc = internet_checksum(&v);
            v[8..24].copy_from_slice(&new16.to_be_bytes());
            prop_assert_eq!(update_u128(hc, old16, new16), internet_checksum(&v));
        }

        /// What address translation will do: a new destination address and
        /// port, every covering checksum updated incrementally, and the
        /// packet verifies as if built with them.
        #[test]
        fn translating_the_destination_keeps_every_checksum_valid(
            v6 in any::<bool>(),
            tcp in any::<bool>(),
            addrs in any::<(u128, u128, u128)>(),
            ports in any::<(u16, u16, u16)>(),
            payload_len in 0usize..64,
            payload_fill in any::<u8>(),
        ) {
            use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
            use crate::craft::{FrameSpec, Transport};
            use crate::wire::{Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ip_proto};

            let (src, dst, new_dst) = addrs;
            let (src_port, dst_port, new_port) = ports;
            let ip = |a: u128| if v6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::from(a as u32))
            };
            let transport = if tcp {
                Transport::Tcp { src_port, dst_port, flags: 0x02 }
            } else {
                Transport::Udp { src_port, dst_port }
            };
            let mut frame = FrameSpec {
                src: ip(src),
                dst: ip(dst),
                transport,
                payload_len,
                payload_fill,
            }
            .build();
            let l3 = 14;
            // The network layer: the new address, and for IPv4 its header
            // checksum. `addr_update` applies the same change to the
            // transport checksum (the pseudo-header covers the address).
            let (l4, addr_update): (usize, Box<dyn Fn(u16) -> u16>) = if v6 {
                let mut p = Ipv6Packet::new_checked(&mut frame[l3..]).unwrap();
                let old = p.dst();
                p.set_dst_addr(Ipv6Addr::from(new_dst));
                (l3 + 40, Box::new(move |c| update_u128(c, old, new_dst)))
            } else {
                let mut p = Ipv4Packet::new_checked(&mut frame[l3..]).unwrap();
                let (old, new) = (p.dst(), new_dst as u32);
                p.set_dst_addr(Ipv4Addr::from(new));
                p.set_checksum(update_u32(p.checksum(), old, new));
                prop_assert!(p.verify_checksum());
                (l3 + p.header_len(), Box::new(move |c| update_u32(c, old, new)))
            };
            let protocol = if tcp {
                let mut t = TcpPacket::new_checked(&mut frame[l4..]).unwrap();
                let c = update_u16(addr_update(t.checksum()), t.dst_port(), new_port);
                t.set_dst_port(new_port);
                t.set_checksum(c);
                ip_proto::TCP
            } else {
                let mut u = UdpPacket::new_checked(&mut frame[l4..]).unwrap();
                let c = update_u16(addr_update(u.checksum()), u.dst_port(), new_port);
                u.set_dst_port(new_port);
                u.set_checksum(if c == 0 { 0xffff } else { c });
                ip_proto::UDP
            };
            let range = address_range(v6);
            let pseudo = pseudo_header_sum(
                &frame[l3 + range.start..l3 + range.end],
                protocol,
                (frame.len() - l4) as u32,
            );
            prop_assert_eq!(finish(data_sum(pseudo, &frame[l4..])), 0);
            // The same as a frame built with the new destination.
            let transport = match transport {
                Transport::Tcp { src_port, flags, .. } => {
                    Transport::Tcp { src_port, dst_port: new_port, flags }
                }
                Transport::Udp { src_port, .. } => Transport::Udp { src_port, dst_port: new_port },
                other => other,
            };
            let rebuilt = FrameSpec {
                src: ip(src),
                dst: ip(new_dst),
                transport,
                payload_len,
                payload_fill,
            }
            .build();
            prop_assert_eq!(frame, rebuilt);
        }
    }
}
