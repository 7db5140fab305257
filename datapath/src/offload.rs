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
//!
//! # Leaving it to the transmitting kernel
//!
//! Where the port the frame leaves by takes TX checksum requests
//! ([`crate::ports::Port::checksum_offload`], AF_XDP TX metadata), the
//! switch does not finish a begun checksum: `begun` recognises it (the
//! field equals the folded pseudo-header sum; no sum over the segment) and
//! returns the request to send with the frame, and the kernel makes the skb
//! `CHECKSUM_PARTIAL` again, as the pod's stack had it. Requesting it for a
//! complete valid checksum that equals the pseudo-header sum by chance is
//! harmless: finishing a segment that verifies rewrites the same value. A
//! complete *wrong* checksum that equals it by chance (one in 65,536 wrong
//! ones; only crafted packets carry wrong checksums on a veth) comes out
//! right, where the software path would have left it wrong.
//!
//! A begun checksum stays begun through Service translation: the field
//! holds the pseudo-header sum, not complemented, so [`crate::nat`] adds
//! the address change to it as it is (`field' = field + ~old + new`) and
//! leaves the port change to the device's sum over the header.

use crate::flow::{Fragment, PacketMeta};
use crate::ports::ChecksumRequest;
use crate::wire::checksum::{address_range, data_sum, fold, pseudo_header_sum};
use crate::wire::{ip_proto, tcp, udp};

/// Where a frame's TCP or UDP checksum is, if it is begun: the transport
/// header's offset, the field's offset in it, the end of the IP packet.
#[inline]
fn locate_begun(frame: &[u8], meta: &PacketMeta) -> Option<(usize, usize, usize)> {
    let field = match meta.key.protocol {
        ip_proto::TCP => tcp::field::CHECKSUM.start,
        ip_proto::UDP => udp::field::CHECKSUM.start,
        _ => return None,
    };
    let (Fragment::NotFragment, Some(l4), None) = (meta.fragment, meta.l4_offset, meta.related)
    else {
        return None;
    };
    let l3 = usize::from(meta.l3_offset);
    let l4 = usize::from(l4);
    let end = (meta.l3_len as usize).checked_add(l3)?;
    if end > frame.len() || l4 + field + 2 > end {
        return None;
    }
    let len = (end - l4) as u32;
    let addrs = address_range(meta.is_ipv6());
    let addrs = &frame[l3 + addrs.start..l3 + addrs.end];
    let pseudo = fold(pseudo_header_sum(addrs, meta.key.protocol, len));
    let at = l4 + field;
    let current = u16::from_be_bytes([frame[at], frame[at + 1]]);
    (current == pseudo).then_some((l4, field, end))
}

/// What [`request_or_finish`] did with a frame's transport checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begun {
    /// Not a begun TCP/UDP checksum (complete, absent, another protocol,
    /// a fragment): nothing to do.
    No,
    /// Begun, left so: send the frame with this request.
    Request(ChecksumRequest),
    /// Begun, but the frame has bytes after the IP packet (Ethernet
    /// padding) that a device would sum too: finished here instead.
    Finished,
}

/// For a port that takes checksum requests: the request for the IP packet
/// in `frame` (described by `meta`) if its TCP or UDP checksum is begun,
/// the transmitting device to finish it (see the module doc); sums nothing
/// over the segment. A begun checksum the device could not finish right
/// (the packet does not end the frame) is finished here.
#[inline]
pub fn request_or_finish(frame: &mut [u8], meta: &PacketMeta) -> Begun {
    let Some((l4, field, end)) = locate_begun(frame, meta) else {
        return Begun::No;
    };
    match u16::try_from(l4) {
        Ok(start) if end == frame.len() => Begun::Request(ChecksumRequest {
            start,
            offset: field as u16,
        }),
        _ => {
            finish_located(frame, meta, l4, field, end);
            Begun::Finished
        }
    }
}

/// What a frame's begun checksum becomes on its way out of a port that
/// takes checksum requests (`offload`: [`request_or_finish`]) or not
/// ([`finish_partial`]).
#[inline]
pub fn settle(frame: &mut [u8], meta: &PacketMeta, offload: bool) -> Begun {
    if offload {
        request_or_finish(frame, meta)
    } else if finish_partial(frame, meta) {
        Begun::Finished
    } else {
        Begun::No
    }
}

/// Finishes a begun checksum as a device does for `request`: the
/// complement of the one's complement sum of `frame[start..]` (the field
/// holding the pseudo-header sum), 0 sent as 0xffff (Linux's
/// `skb_checksum_help`). Returns `false` if the request does not fit.
pub fn finish_request(frame: &mut [u8], request: ChecksumRequest) -> bool {
    let start = usize::from(request.start);
    let at = start + usize::from(request.offset);
    if at + 2 > frame.len() {
        return false;
    }
    let finished = match !fold(data_sum(0, &frame[start..])) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&finished.to_be_bytes());
    true
}

/// Finishes the TCP or UDP checksum of the IP packet in `frame` (described
/// by `meta`) if it is a begun one; returns whether it did.
pub fn finish_partial(frame: &mut [u8], meta: &PacketMeta) -> bool {
    let Some((l4, field, end)) = locate_begun(frame, meta) else {
        return false;
    };
    finish_located(frame, meta, l4, field, end)
}

/// [`finish_partial`] once the field is found begun.
fn finish_located(
    frame: &mut [u8],
    meta: &PacketMeta,
    l4: usize,
    field: usize,
    end: usize,
) -> bool {
    let at = l4 + field;
    let pseudo = u16::from_be_bytes([frame[at], frame[at + 1]]);
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
    fn begun_checksums_become_requests_the_device_finishes_right() {
        for mut f in frames() {
            let (at, good) = begin(&mut f);
            let meta = ip_meta(&f);
            let begun_copy = f.clone();
            let Begun::Request(request) = request_or_finish(&mut f, &meta) else {
                panic!("begun checksum not recognised");
            };
            assert_eq!(f, begun_copy, "a request leaves the frame as it is");
            let l4 = meta.l4_offset.unwrap();
            assert_eq!(request.start, l4);
            let tcp = meta.key.protocol == ip_proto::TCP;
            assert_eq!(request.offset, if tcp { 16 } else { 6 });
            assert_eq!(usize::from(l4 + request.offset), at);
            assert!(finish_request(&mut f, request));
            assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), good);
            // Complete now: no request, nothing changed.
            let done = f.clone();
            assert_eq!(request_or_finish(&mut f, &meta), Begun::No);
            assert_eq!(f, done);
        }
    }

    #[test]
    fn a_padded_frame_is_finished_not_requested() {
        for mut f in frames() {
            let (at, good) = begin(&mut f);
            // Ethernet padding after the IP packet: a device would sum it.
            f.extend_from_slice(&[0x55; 6]);
            let meta = ip_meta(&f);
            assert_eq!(request_or_finish(&mut f, &meta), Begun::Finished);
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
