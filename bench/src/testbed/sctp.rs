//! SCTP probes without SCTP in the kernel: an INIT chunk sent over a raw IP
//! socket in the source namespace, watched for with a packet socket in the
//! destination namespace.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use podfence_datapath::craft::{FrameSpec, Transport};

use super::ProbeOutcome;
use super::netns::in_netns;
use super::sockets::{bind_fd, family, new_socket, sockaddr};

/// Source ports of SCTP probes, so that a watcher recognizes its own INIT.
static NEXT_SCTP_PORT: AtomicU16 = AtomicU16::new(0);
/// The SCTP common header and INIT chunk from `src_port` to `dst_port`, with
/// its CRC32c: the IP payload of an INIT.
#[must_use]
pub fn sctp_init(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Vec<u8> {
    let frame = FrameSpec {
        src,
        dst,
        transport: Transport::Sctp {
            src_port,
            dst_port,
            chunk: 1,
        },
        payload_len: 0,
        payload_fill: 0,
    }
    .build();
    let l3 = if src.is_ipv4() { 20 } else { 40 };
    frame[14 + l3..].to_vec()
}

/// Where an INIT is expected to arrive: its destination address, and its
/// source address unless the way there may change it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SctpArrival {
    /// The source address it arrives with; `None`: any.
    pub src: Option<IpAddr>,
    /// The destination address it arrives with.
    pub dst: IpAddr,
}

/// [`sctp_init`] with initiate tag `tag` (the CRC32c recomputed), so that
/// the INIT can be recognized after a source translation has changed its
/// source address and port.
#[must_use]
pub fn sctp_init_tagged(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    tag: u32,
) -> Vec<u8> {
    let mut init = sctp_init(src, dst, src_port, dst_port);
    init[16..20].copy_from_slice(&tag.to_be_bytes());
    init[8..12].fill(0);
    let crc = podfence_datapath::wire::checksum::crc32c(&init);
    init[8..12].copy_from_slice(&crc.to_le_bytes());
    init
}

/// Whether `packet` (an IP packet) is the INIT from `src:src_port` to
/// `dst:dst_port` (when `src` is `None`, from any source address and port
/// with initiate tag `tag`: masquerading rewrites both).
fn is_our_init(
    packet: &[u8],
    src: Option<IpAddr>,
    dst: IpAddr,
    (src_port, tag): (u16, u32),
    dst_port: u16,
) -> bool {
    let (proto, s, d, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let s: [u8; 4] = packet[12..16].try_into().expect("4 bytes");
            let d: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
            (packet[9], IpAddr::from(s), IpAddr::from(d), ihl)
        }
        Some(6) if packet.len() >= 40 => {
            let s: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
            let d: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            (packet[6], IpAddr::from(s), IpAddr::from(d), 40)
        }
        _ => return false,
    };
    let Some(sctp) = packet.get(l4..l4 + 20) else {
        return false;
    };
    let source = match src {
        Some(src) => s == src && u16::from_be_bytes([sctp[0], sctp[1]]) == src_port,
        None => u32::from_be_bytes([sctp[16], sctp[17], sctp[18], sctp[19]]) == tag,
    };
    proto == podfence_datapath::wire::ip_proto::SCTP
        && source
        && d == dst
        && u16::from_be_bytes([sctp[2], sctp[3]]) == dst_port
        && sctp[12] == 1
}

/// A packet socket on every interface of the calling thread's namespace,
/// delivering IP packets (link headers stripped).
fn packet_socket() -> io::Result<OwnedFd> {
    let proto = libc::c_int::from((libc::ETH_P_ALL as u16).to_be());
    let fd = new_socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: `tv` is a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends an INIT from `src_ns` (addresses `sent.0` to `sent.1`, port
/// `port`) and watches `dst_ns` for its arrival as `arrival` says.
pub(super) fn sctp_probe(
    src_ns: &str,
    dst_ns: &str,
    sent: (IpAddr, IpAddr),
    arrival: SctpArrival,
    port: u16,
    timeout: Duration,
) -> io::Result<ProbeOutcome> {
    let (src, dst) = sent;
    let src_port = 20_000 + NEXT_SCTP_PORT.fetch_add(1, Ordering::Relaxed) % 40_000;
    let watcher = in_netns(dst_ns, packet_socket)?;
    let deadline = Instant::now() + timeout;
    // A tag of its own per probe (never 0, which INIT forbids).
    let tag = 0xcafe_0000 | u32::from(src_port);
    let init = sctp_init_tagged(src, dst, src_port, port, tag);
    in_netns(src_ns, || {
        let fd = new_socket(family(src), libc::SOCK_RAW, 132)?;
        bind_fd(&fd, SocketAddr::new(src, 0))?;
        let (sa, len) = sockaddr(SocketAddr::new(dst, 0));
        // SAFETY: `init` and `sa` are valid buffers of the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                init.as_ptr().cast(),
                init.len(),
                0,
                (&raw const sa).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })?;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                watcher.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        // Outgoing copies (the loopback's send side) are not arrivals.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        if is_our_init(
            &buf[..n.cast_unsigned()],
            arrival.src,
            arrival.dst,
            (src_port, tag),
            port,
        ) {
            return Ok(ProbeOutcome::Seen);
        }
    }
    Ok(ProbeOutcome::NoAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sctp_init_is_recognized() {
        let (s, d) = (IpAddr::from([10, 244, 1, 1]), IpAddr::from([10, 244, 2, 2]));
        let tag = 0xcafe_4000;
        let init = sctp_init_tagged(s, d, 4000, 80, tag);
        assert_eq!(init.len(), 32);
        let mut zeroed = init.clone();
        zeroed[8..12].fill(0);
        assert_eq!(
            init[8..12],
            podfence_datapath::wire::checksum::crc32c(&zeroed).to_le_bytes(),
            "the CRC covers the new tag"
        );
        let mut packet = vec![0x45, 0, 0, 52, 0, 0, 0x40, 0, 64, 132, 0, 0];
        packet.extend_from_slice(&[10, 244, 1, 1, 10, 244, 2, 2]);
        packet.extend_from_slice(&init);
        assert!(is_our_init(&packet, Some(s), d, (4000, tag), 80));
        assert!(
            is_our_init(&packet, None, d, (4001, tag), 80),
            "any source, by tag"
        );
        assert!(!is_our_init(&packet, None, d, (4000, tag + 1), 80));
        assert!(!is_our_init(&packet, Some(s), d, (4001, tag), 80));
        assert!(!is_our_init(&packet, Some(d), s, (4000, tag), 80));
        assert!(!is_our_init(&packet, None, s, (4000, tag), 80));
        packet[9] = 6;
        assert!(!is_our_init(&packet, Some(s), d, (4000, tag), 80));
    }
}
