//! The generator's frames and what the sink reads back from them.
//!
//! Every frame is Ethernet, IPv4, then UDP or a TCP segment (ACK|PSH, no
//! SYN: a connection picked up mid-stream), then a 12-byte stamp: the
//! flow's sequence number (u32, big-endian) and the transmit time
//! (`CLOCK_MONOTONIC` nanoseconds, u64, big-endian), then zero padding to
//! the frame length. A flow is one source port: flow `f` sends from
//! `src_port_base + f`, to the allowed or the denied destination port.
//!
//! Per packet only the stamp, the TCP sequence number and the L4 checksum
//! change; [`Template::stamp`] rewrites those in place with an incremental
//! checksum, so a frame buffer that already holds its flow's template is not
//! copied again.

use std::net::Ipv4Addr;

use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::wire::checksum::{address_range, data_sum, finish, pseudo_header_sum};
use podfence_datapath::wire::{ip_proto, tcp, udp};

/// Bytes of the stamp after the L4 header.
pub const STAMP_LEN: usize = 12;
/// Ethernet + IPv4 + UDP header bytes.
const UDP_HEADERS: usize = 14 + 20 + 8;
/// Ethernet + IPv4 + TCP header bytes.
const TCP_HEADERS: usize = 14 + 20 + 20;
/// Bytes a wire adds to a frame and that rates in bit/s count: the FCS.
pub const FCS_LEN: usize = 4;
/// Smallest frame a wire carries (without FCS).
pub const MIN_FRAME: usize = 60;
/// TCP flags of the generated segments: ACK and PSH.
const TCP_ACK_PSH: u8 = 0x18;

/// What to send: addresses, sizes and the mix of flows.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficSpec {
    /// Source MAC (the generator's interface).
    pub src_mac: [u8; 6],
    /// Destination MAC (the next hop: the node's side of the pod's veth,
    /// or the sink's interface when sending to it directly).
    pub dst_mac: [u8; 6],
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Size on the wire, FCS included (64 for minimum-size packets). TCP
    /// segments are at least 70 bytes (54 bytes of headers, the stamp, the
    /// FCS).
    pub wire_size: usize,
    /// Flows (distinct source ports).
    pub flows: u32,
    /// Share of flows (and so of packets) that are TCP segments; the rest
    /// are UDP.
    pub tcp_share: f64,
    /// Share of flows (and so of packets) sent to the denied port.
    pub deny_share: f64,
    /// Destination port that policy allows.
    pub allowed_port: u16,
    /// Destination port that policy denies.
    pub denied_port: u16,
    /// Source port of flow 0.
    pub src_port_base: u16,
}

impl TrafficSpec {
    /// A spec with the benchmark's defaults between two addresses.
    #[must_use]
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src_mac: [0x02, 0x70, 0x67, 0, 0, 1],
            dst_mac: [0x02, 0x70, 0x67, 0, 0, 2],
            src,
            dst,
            wire_size: 64,
            flows: 64,
            tcp_share: 0.5,
            deny_share: 0.1,
            allowed_port: 5201,
            denied_port: 5202,
            src_port_base: 10_000,
        }
    }

    /// The flows, in order.
    #[must_use]
    pub fn flows(&self) -> Vec<Flow> {
        let n = self.flows.max(1);
        // Denied flows are spread over the TCP flows and over the UDP flows
        // alike, so that both protocols see denials.
        let mut rank = [0u32; 2];
        (0..n)
            .map(|f| {
                let tcp = picks(f, self.tcp_share);
                let r = &mut rank[usize::from(tcp)];
                let denied = picks(*r, self.deny_share);
                *r += 1;
                Flow {
                    index: f,
                    tcp,
                    denied,
                    src_port: self.src_port_base.wrapping_add(f as u16),
                    dst_port: if denied {
                        self.denied_port
                    } else {
                        self.allowed_port
                    },
                }
            })
            .collect()
    }

    /// Share of flows that are denied, as built (the requested share
    /// rounded to whole flows).
    #[must_use]
    pub fn actual_deny_share(&self) -> f64 {
        let flows = self.flows();
        flows.iter().filter(|f| f.denied).count() as f64 / flows.len() as f64
    }

    /// The frame length (without FCS) of a flow's packets.
    #[must_use]
    pub fn frame_len(&self, tcp: bool) -> usize {
        let headers = if tcp { TCP_HEADERS } else { UDP_HEADERS };
        (self.wire_size.saturating_sub(FCS_LEN))
            .max(headers + STAMP_LEN)
            .max(MIN_FRAME)
    }

    /// Templates of every flow, by flow index.
    #[must_use]
    pub fn templates(&self) -> Vec<Template> {
        self.flows()
            .iter()
            .map(|f| Template::new(self, f))
            .collect()
    }

    /// The flow a received frame belongs to and its stamp, if it is one of
    /// this spec's frames.
    #[must_use]
    pub fn parse(&self, frame: &[u8]) -> Option<Stamp> {
        parse(self, frame)
    }
}

/// Whether item `i` is among those a `share` picks: spread evenly, exactly
/// `round(n * share)` of the first `n`.
fn picks(i: u32, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    let at = |k: u32| (f64::from(k) * share + 0.5).floor();
    at(i + 1) > at(i)
}

/// One flow of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Its index (source port minus the base).
    pub index: u32,
    /// TCP rather than UDP.
    pub tcp: bool,
    /// Sent to the denied port.
    pub denied: bool,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// What the sink reads from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Flow index.
    pub flow: u32,
    /// Sequence number within the flow.
    pub seq: u32,
    /// Transmit time, `CLOCK_MONOTONIC` nanoseconds.
    pub sent_ns: u64,
}

/// A flow's frame, ready to be stamped.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    tcp: bool,
    /// Offset of the L4 header.
    l4: usize,
    /// Offset of the stamp.
    stamp: usize,
    /// One's-complement sum (unfolded) of the pseudo-header and the segment
    /// with the checksum, the TCP sequence number and the stamp zeroed.
    base_sum: u32,
    /// TCP payload bytes per segment (the sequence number advances by it).
    payload: u32,
    /// Initial TCP sequence number.
    isn: u32,
}

impl Template {
    /// The template of `flow`.
    #[must_use]
    pub fn new(spec: &TrafficSpec, flow: &Flow) -> Self {
        let headers = if flow.tcp { TCP_HEADERS } else { UDP_HEADERS };
        let len = spec.frame_len(flow.tcp);
        let transport = if flow.tcp {
            Transport::Tcp {
                src_port: flow.src_port,
                dst_port: flow.dst_port,
                flags: TCP_ACK_PSH,
            }
        } else {
            Transport::Udp {
                src_port: flow.src_port,
                dst_port: flow.dst_port,
            }
        };
        let mut bytes = FrameSpec {
            src: spec.src.into(),
            dst: spec.dst.into(),
            transport,
            payload_len: len - headers,
            payload_fill: 0,
        }
        .build();
        bytes[0..6].copy_from_slice(&spec.dst_mac);
        bytes[6..12].copy_from_slice(&spec.src_mac);
        let l4 = 14 + 20;
        let csum_at = l4
            + if flow.tcp {
                tcp::field::CHECKSUM.start
            } else {
                udp::field::CHECKSUM.start
            };
        bytes[csum_at..csum_at + 2].fill(0);
        let isn = 0x1000_0000u32.wrapping_mul(flow.index.wrapping_add(1)) ^ 0x5a5a;
        if flow.tcp {
            bytes[l4 + 4..l4 + 8].fill(0);
        }
        let l4_len = bytes.len() - l4;
        let addrs = address_range(false);
        let protocol = if flow.tcp {
            ip_proto::TCP
        } else {
            ip_proto::UDP
        };
        let pseudo = pseudo_header_sum(
            &bytes[14 + addrs.start..14 + addrs.end],
            protocol,
            l4_len as u32,
        );
        let base = data_sum(pseudo, &bytes[l4..]);
        Self {
            bytes,
            tcp: flow.tcp,
            l4,
            stamp: headers,
            base_sum: base,
            payload: (len - headers) as u32,
            isn,
        }
    }

    /// The frame's length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty (never: a frame has headers).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The template's bytes (stamp zero, checksum unset).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes the packet with sequence number `seq` and transmit time
    /// `sent_ns` into `out`. With `fresh`, `out` is first filled with the
    /// template; otherwise it must already hold this template's frame (from
    /// an earlier `stamp`) and only the fields that change are rewritten.
    ///
    /// # Panics
    /// When `out` is shorter than the frame.
    #[inline]
    pub fn stamp(&self, out: &mut [u8], seq: u32, sent_ns: u64, fresh: bool) {
        let out = &mut out[..self.bytes.len()];
        if fresh {
            out.copy_from_slice(&self.bytes);
        }
        let s = self.stamp;
        out[s..s + 4].copy_from_slice(&seq.to_be_bytes());
        out[s + 4..s + 12].copy_from_slice(&sent_ns.to_be_bytes());
        let mut sum = self.base_sum;
        sum += (seq >> 16) + (seq & 0xffff);
        for k in 0..4 {
            sum += ((sent_ns >> (16 * k)) & 0xffff) as u32;
        }
        let l4 = self.l4;
        if self.tcp {
            let tcp_seq = self.isn.wrapping_add(seq.wrapping_mul(self.payload));
            out[l4 + 4..l4 + 8].copy_from_slice(&tcp_seq.to_be_bytes());
            sum += (tcp_seq >> 16) + (tcp_seq & 0xffff);
            let csum = finish(sum);
            out[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
        } else {
            let csum = match finish(sum) {
                0 => 0xffff,
                c => c,
            };
            out[l4 + 6..l4 + 8].copy_from_slice(&csum.to_be_bytes());
        }
    }
}

fn parse(spec: &TrafficSpec, frame: &[u8]) -> Option<Stamp> {
    if frame.len() < UDP_HEADERS + STAMP_LEN || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip[0] >> 4 != 4 || ip[12..16] != spec.src.octets() || ip[16..20] != spec.dst.octets() {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = ip.get(ihl..)?;
    let header = match ip[9] {
        ip_proto::UDP => 8,
        ip_proto::TCP => usize::from(l4.get(tcp::field::DATA_OFFSET)? >> 4) * 4,
        _ => return None,
    };
    let src_port = u16::from_be_bytes([l4[0], l4[1]]);
    let dst_port = u16::from_be_bytes([l4[2], l4[3]]);
    let flow = u32::from(src_port.wrapping_sub(spec.src_port_base));
    if flow >= spec.flows.max(1) || (dst_port != spec.allowed_port && dst_port != spec.denied_port)
    {
        return None;
    }
    let stamp = l4.get(header..header + STAMP_LEN)?;
    Some(Stamp {
        flow,
        seq: u32::from_be_bytes(stamp[0..4].try_into().expect("4 bytes")),
        sent_ns: u64::from_be_bytes(stamp[4..12].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podfence_datapath::wire::checksum::internet_checksum;

    fn spec() -> TrafficSpec {
        TrafficSpec::new(Ipv4Addr::new(10, 128, 0, 100), Ipv4Addr::new(10, 128, 0, 0))
    }

    /// The L4 checksum verifies (pseudo-header included).
    fn l4_verifies(frame: &[u8]) -> bool {
        let mut pseudo = frame[26..34].to_vec();
        pseudo.push(0);
        pseudo.push(frame[23]);
        pseudo.extend_from_slice(&((frame.len() - 34) as u16).to_be_bytes());
        pseudo.extend_from_slice(&frame[34..]);
        internet_checksum(&pseudo) == 0
    }

    #[test]
    fn shares_are_exact_and_spread() {
        let mut s = spec();
        s.flows = 100;
        s.deny_share = 0.25;
        s.tcp_share = 0.5;
        let flows = s.flows();
        let denied = flows.iter().filter(|f| f.denied).count();
        assert!((24..=26).contains(&denied), "{denied}");
        assert_eq!(flows.iter().filter(|f| f.tcp).count(), 50);
        assert!((s.actual_deny_share() - denied as f64 / 100.0).abs() < 1e-9);
        // Both kinds of flow are denied.
        assert!(flows.iter().any(|f| f.denied && f.tcp));
        assert!(flows.iter().any(|f| f.denied && !f.tcp));
        s.deny_share = 0.0;
        assert!(s.flows().iter().all(|f| !f.denied));
        s.deny_share = 1.0;
        assert!(s.flows().iter().all(|f| f.denied));
    }

    #[test]
    fn stamped_frames_verify_and_parse_back() {
        let mut s = spec();
        s.flows = 4;
        s.tcp_share = 0.5;
        for wire in [64, 128, 1518] {
            s.wire_size = wire;
            for t in s.templates() {
                let mut buf = vec![0xeeu8; 2048];
                for (i, (seq, ts)) in [(0u32, 0u64), (1, 123_456_789), (u32::MAX, u64::MAX)]
                    .into_iter()
                    .enumerate()
                {
                    t.stamp(&mut buf, seq, ts, i == 0);
                    let frame = &buf[..t.len()];
                    assert!(frame.len() >= MIN_FRAME);
                    assert_eq!(internet_checksum(&frame[14..34]), 0, "IPv4 header");
                    assert!(l4_verifies(frame), "L4 checksum, wire {wire}, seq {seq}");
                    let st = s.parse(frame).expect("parses");
                    assert_eq!((st.seq, st.sent_ns), (seq, ts));
                }
            }
        }
        s.wire_size = 64;
        let flows = s.flows();
        let templates = s.templates();
        let of = |tcp: bool| &templates[flows.iter().position(|f| f.tcp == tcp).unwrap()];
        assert_eq!(
            of(true).len(),
            66,
            "TCP at minimum size: 54 bytes of headers and the stamp"
        );
        assert_eq!(of(false).len(), 60, "UDP at minimum size");
    }

    #[test]
    fn foreign_frames_are_ignored() {
        let s = spec();
        let mut buf = vec![0u8; 128];
        let t = &s.templates()[3];
        t.stamp(&mut buf, 7, 9, true);
        let frame = buf[..t.len()].to_vec();
        assert_eq!(s.parse(&frame).map(|st| st.flow), Some(3));
        let mut other = frame.clone();
        other[26] = 1; // another source address
        assert_eq!(s.parse(&other), None);
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(s.parse(&arp), None);
        let mut port = frame;
        port[34..36].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(s.parse(&port), None);
    }
}
