//! Finishing transport checksums that a sender left to offload.
//!
//! A pod's stack hands its veth TCP and UDP segments with the checksum only
//! begun (`CHECKSUM_PARTIAL`: the field holds the folded pseudo-header sum,
//! the device is to finish it). Between two veths the kernel never finishes
//! it: the receiving stack trusts the offload state carried in the skb. An
//! AF_XDP frame carries no such state, so a frame the switch forwards as
//! received would arrive with a checksum that does not verify and be
//! dropped. [`finish_partial`] recognises a begun checksum (the field equals
//! the folded pseudo-header sum and the segment does not verify) and
//! finishes it in software, as `skb_checksum_help` would. A complete
//! checksum, valid or not, is left as it is.
//!
//! Cost: the pseudo-header sum (a few additions) for every unfragmented TCP
//! or UDP segment; the segment's sum only when the field matches, that is
//! for the segments that need it.

use crate::flow::{Fragment, PacketMeta};
use crate::wire::checksum::{address_range, data_sum, fold, pseudo_header_sum};
use crate::wire::{ip_proto, tcp, udp};

/// Finishes the TCP or UDP checksum of the IP packet in `frame` (described
/// by `meta`) if it is a begun one; returns whether it did.
pub fn finish_partial(frame: &mut [u8], meta: &PacketMeta) -> bool {
    let field = match meta.key.protocol {
        ip_proto::TCP => tcp::field::CHECKSUM.start,
        ip_proto::UDP => udp::field::CHECKSUM.start,
        _ => return false,
    };
    let (Fragment::NotFragment, Some(l4)) = (meta.fragment, meta.l4_offset) else {
        return false;
    };
    let l3 = usize::from(meta.l3_offset);
    let l4 = usize::from(l4);
    let Some(end) = (meta.l3_len as usize).checked_add(l3) else {
        return false;
    };
    if end > frame.len() || l4 + field + 2 > end {
        return false;
    }
    let len = (end - l4) as u32;
    let addrs = address_range(meta.is_ipv6());
    let addrs = &frame[l3 + addrs.start..l3 + addrs.end];
    let pseudo = fold(pseudo_header_sum(addrs, meta.key.protocol, len));
    let at = l4 + field;
    let current = u16::from_be_bytes([frame[at], frame[at + 1]]);
    if current != pseudo {
        return false;
    }
    let segment = data_sum(0, &frame[l4..end]);
    // Already complete and valid (the field matching the pseudo-header sum
    // by chance): leave it.
    if fold(segment + u32::from(pseudo)) == 0xffff {
        return false;
    }
    let mut finished = !fold(segment);
    if finished == 0 && meta.key.protocol == ip_proto::UDP {
        // UDP transmits a zero checksum as all ones (0 means "none").
        finished = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&finished.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{FrameSpec, Transport};
    use crate::flow::{Parsed, parse_frame};
    use crate::link::LinkType;
    use std::net::IpAddr;

    fn frames() -> Vec<Vec<u8>> {
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut out = Vec::new();
        for (src, dst) in [
            (v4("10.0.0.1"), v4("10.0.0.2")),
            (v4("fd00::1"), v4("fd00::2")),
        ] {
            let tcp = Transport::Tcp {
                src_port: 40_000,
                dst_port: 80,
                flags: 0x18,
            };
            let udp = Transport::Udp {
                src_port: 40_000,
                dst_port: 53,
            };
            for transport in [tcp, udp] {
                for payload_len in [0usize, 1, 7, 1000] {
                    let spec = FrameSpec {
                        src,
                        dst,
                        transport,
                        payload_len,
                        payload_fill: 0xa5,
                    };
                    out.push(spec.build());
                }
            }
        }
        out
    }

    fn ip_meta(frame: &[u8]) -> PacketMeta {
        match parse_frame(LinkType::Ethernet, frame).unwrap() {
            Parsed::Ip(meta) => meta,
            other @ Parsed::NotIp { .. } => panic!("not IP: {other:?}"),
        }
    }

    /// Offset of the checksum field and what a sender with offload leaves
    /// there.
    fn begin(frame: &mut [u8]) -> (usize, u16) {
        let meta = ip_meta(frame);
        let l4 = usize::from(meta.l4_offset.unwrap());
        let at = l4
            + if meta.key.protocol == ip_proto::TCP {
                tcp::field::CHECKSUM.start
            } else {
                udp::field::CHECKSUM.start
            };
        let l3 = usize::from(meta.l3_offset);
        let end = l3 + meta.l3_len as usize;
        let addrs = address_range(meta.is_ipv6());
        let addrs = &frame[l3 + addrs.start..l3 + addrs.end];
        let pseudo = fold(pseudo_header_sum(
            addrs,
            meta.key.protocol,
            (end - l4) as u32,
        ));
        let good = u16::from_be_bytes([frame[at], frame[at + 1]]);
        frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        (at, good)
    }

    #[test]
    fn begun_checksums_are_finished_to_the_right_value() {
        for mut f in frames() {
            let (at, good) = begin(&mut f);
            let meta = ip_meta(&f);
            assert!(finish_partial(&mut f, &meta));
            assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), good);
        }
    }

    #[test]
    fn complete_checksums_are_left_alone() {
        for mut f in frames() {
            let copy = f.clone();
            let meta = ip_meta(&f);
            assert!(!finish_partial(&mut f, &meta));
            assert_eq!(f, copy);
            // A wrong but complete checksum too: the receiver must see it.
            let (at, _) = begin(&mut f.clone());
            f[at] ^= 0x40;
            let bad = f.clone();
            assert!(!finish_partial(&mut f, &meta));
            assert_eq!(f, bad);
        }
    }

    #[test]
    fn truncated_or_fragmented_input_is_not_touched() {
        let mut f = frames().remove(0);
        let (_, _) = begin(&mut f);
        let mut meta = ip_meta(&f);
        meta.l3_len += 100;
        assert!(!finish_partial(&mut f, &meta));
        meta.l3_len -= 100;
        meta.fragment = Fragment::First { id: 1 };
        assert!(!finish_partial(&mut f, &meta));
    }
}
