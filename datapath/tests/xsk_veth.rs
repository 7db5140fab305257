//! AF_XDP ports against the kernel: each test builds its own network
//! namespace (`pfxsk-<pid>-<n>`) with a veth pair `pfxa-<pid>` /
//! `pfxb-<pid>`, attaches podfence's redirector to the `a` end, opens an
//! [`XskPort`] on its queue 0 and exchanges raw Ethernet frames with an
//! `AF_PACKET` socket on the `b` end (an oracle independent of the code under
//! test). Needs root; skips with the reason otherwise.
//!
//! IPv6 is disabled in the namespace and no interface has an address, so the
//! kernel sends nothing on its own and counts stay exact.

use std::time::{Duration, Instant};

use podfence_bpf::{AttachMode, RedirectConfig, Redirector, XdpMode};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::ports::xsk::{ChecksumOffload, PreparedXsk, XskConfig, XskMode, XskPort};
use podfence_datapath::ports::{ChecksumRequest, Port, RxDesc};
use podfence_datapath::wire::checksum::{fold, pseudo_header_sum};
use podfence_testkit::netns::{Netns, Snmp};
use podfence_testkit::packet::PacketSocket;
use podfence_testkit::{Need, skip_unless};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0xfa, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0xfa, 0x0b];

const NS_PREFIX: &str = "pfxsk";

/// The namespace and the names of the veth pair in it.
struct Testbed {
    netns: Netns,
    if_a: String,
    if_b: String,
}

impl Testbed {
    fn new() -> Option<Self> {
        if skip_unless(&[Need::Root, Need::Bpf, Need::Iproute2]) {
            return None;
        }
        let netns = Netns::new(NS_PREFIX)?;
        let pid = std::process::id();
        let bed = Self {
            netns,
            if_a: format!("pfxa-{pid}"),
            if_b: format!("pfxb-{pid}"),
        };
        bed.netns.disable_ipv6();
        bed.netns.add_veth((&bed.if_a, MAC_A), (&bed.if_b, MAC_B));
        bed.netns.set_up(&[&bed.if_a, &bed.if_b]);
        Some(bed)
    }

    /// Sets the MTU of both ends of the pair.
    fn set_mtu(&self, mtu: u32) {
        let mtu = mtu.to_string();
        for dev in [&self.if_a, &self.if_b] {
            self.netns.ip(&["link", "set", "dev", dev, "mtu", &mtu]);
        }
    }

    fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.netns.in_ns(f)
    }
}

/// An IPv4/UDP frame from `src` to `dst` carrying `seq`; its length varies
/// with `seq` (60..=250 bytes) so lengths are checked too.
fn frame(src: [u8; 6], dst: [u8; 6], seq: u32) -> Vec<u8> {
    let payload_len = 18 + (seq as usize * 7) % 190;
    let mut f = Vec::with_capacity(14 + 28 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(28 + payload_len).unwrap();
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 251, 0, 1, 10, 251, 0, 2]);
    let udp_len = u16::try_from(8 + payload_len).unwrap();
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend((4..payload_len).map(|i| (i as u32 ^ seq) as u8));
    f
}

/// Asserts `got == want`, saying where they differ (not printing them).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what} differs: {} bytes, expected {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// Receives from `port` until all of `expected` came or `wait` passed; checks
/// each frame against `expected` in order, releasing every batch.
fn receive_exactly(port: &mut XskPort, expected: &[Vec<u8>], wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut descs = [RxDesc::default(); 64];
    let mut got = 0;
    while got < expected.len() && Instant::now() < deadline {
        let n = port.recv(&mut descs).expect("recv");
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for d in &descs[..n] {
            assert!(got < expected.len(), "more frames than sent");
            let bytes = port.frame(d);
            assert_eq!(d.len as usize, bytes.len());
            assert_same(bytes, &expected[got], &format!("frame {got}"));
            got += 1;
        }
        port.release(&descs[..n]);
    }
    got
}

fn small_config() -> XskConfig {
    XskConfig {
        frame_count: 256,
        frame_size: 2048,
        rx_ring: 128,
        tx_ring: 128,
        fill_ring: 128,
        comp_ring: 128,
        ..XskConfig::default()
    }
}

/// The last lines of defence: nothing may arrive that was not sent.
fn assert_quiet(port: &mut XskPort) {
    std::thread::sleep(Duration::from_millis(200));
    let mut descs = [RxDesc::default(); 64];
    let n = port.recv(&mut descs).expect("recv");
    port.release(&descs[..n]);
    assert_eq!(n, 0, "unexpected frames");
}

#[test]
fn receives_and_sends_through_a_veth_pair() {
    let Some(bed) = Testbed::new() else { return };
    bed.in_ns(|| {
        let redirector = Redirector::attach(bed.if_a.as_str(), &RedirectConfig::default())
            .expect("attach redirector");
        let config = small_config();
        let mut port = XskPort::open(&bed.if_a, 0, &config).expect("open XskPort");
        assert_eq!(port.mode(), XskMode::Copy, "veth has no zero-copy AF_XDP");
        redirector.register_socket(0, &port).expect("register");
        eprintln!(
            "redirector mode {}, port {port:?}, max frame {}",
            redirector.mode(),
            port.max_frame_len()
        );
        let peer = PacketSocket::open(&bed.if_b);

        // Receive 3x the UMEM in rounds: only works if released frames go
        // back on the fill ring.
        let rounds = 3 * config.frame_count / 64;
        let mut total_bytes = 0u64;
        for round in 0..rounds {
            let frames: Vec<Vec<u8>> = (0..64)
                .map(|i| frame(MAC_B, MAC_A, round * 64 + i))
                .collect();
            total_bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            peer.send(&frames);
            let got = receive_exactly(&mut port, &frames, Duration::from_secs(5));
            assert_eq!(got, 64, "round {round}: received {got} of 64");
        }
        assert_quiet(&mut port);
        let s = port.stats();
        assert_eq!(s.rx_frames, u64::from(rounds) * 64);
        assert_eq!(s.rx_bytes, total_bytes);

        // More than the rx half of the UMEM at once, nothing released: the
        // first 128 arrive, the rest is dropped by the kernel for want of
        // fill-ring buffers, and the ring statistics say so.
        let before = port.xsk_stats().expect("XDP_STATISTICS");
        let burst: Vec<Vec<u8>> = (0..160).map(|i| frame(MAC_B, MAC_A, 10_000 + i)).collect();
        peer.send(&burst);
        std::thread::sleep(Duration::from_millis(300));
        let got = receive_exactly(&mut port, &burst[..128], Duration::from_secs(5));
        assert_eq!(got, 128);
        assert_quiet(&mut port);
        let after = port.xsk_stats().expect("XDP_STATISTICS");
        eprintln!("ring stats before burst {before:?}, after {after:?}");
        assert!(
            after.rx_dropped - before.rx_dropped >= 32
                || after.rx_fill_ring_empty_descs - before.rx_fill_ring_empty_descs >= 32,
            "32 frames found no fill buffer: {before:?} -> {after:?}"
        );
        assert_eq!(after.rx_invalid_descs, 0);
        // And it recovers.
        let again: Vec<Vec<u8>> = (0..64).map(|i| frame(MAC_B, MAC_A, 20_000 + i)).collect();
        peer.send(&again);
        assert_eq!(
            receive_exactly(&mut port, &again, Duration::from_secs(5)),
            64
        );

        // Transmit 3x the tx half of the UMEM in batches of 32: completed
        // frames must be reclaimed for reuse.
        let tx_total = 3 * (config.frame_count / 2);
        let out: Vec<Vec<u8>> = (0..tx_total).map(|i| frame(MAC_A, MAC_B, i)).collect();
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while next < out.len() && Instant::now() < deadline {
            let end = (next + 32).min(out.len());
            let batch: Vec<&[u8]> = out[next..end].iter().map(Vec::as_slice).collect();
            // Accepted frames are a prefix of the batch (all fit a frame).
            next += port.send(&batch).expect("send");
        }
        assert_eq!(next, out.len(), "sent only {next} of {}", out.len());
        let received = peer.collect_from(MAC_A, out.len() + 1, Duration::from_secs(3));
        assert_eq!(received.len(), out.len(), "peer received a different count");
        for (i, (r, o)) in received.iter().zip(&out).enumerate() {
            assert_eq!(r, o, "frame {i} differs at the peer");
        }
        let s = port.stats();
        assert_eq!(s.tx_frames, u64::from(tx_total));
        assert_eq!(s.tx_bytes, out.iter().map(|f| f.len() as u64).sum::<u64>());
        let dropped_before = s.tx_dropped;

        // A frame that does not fit a UMEM frame is dropped and counted.
        let long = vec![0u8; port.max_frame_len() + 1];
        assert_eq!(port.send(&[&long]).expect("send"), 0);
        assert_eq!(port.stats().tx_dropped, dropped_before + 1);

        let ring = port.xsk_stats().expect("XDP_STATISTICS");
        assert_eq!(ring.tx_invalid_descs, 0, "{ring:?}");
        redirector.unregister(0).expect("unregister");
        drop(port);
        redirector.detach().expect("detach");
    });
}

#[test]
fn open_errors_say_what_is_wrong() {
    let Some(bed) = Testbed::new() else { return };
    bed.in_ns(|| {
        let config = small_config();
        let err = XskPort::open("pfx-missing", 0, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");

        let err = XskPort::open(&bed.if_a, 7, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue 7"), "{err}");

        let zc = XskConfig {
            zero_copy: Some(true),
            ..config
        };
        let err = XskPort::open(&bed.if_a, 0, &zc).unwrap_err().to_string();
        assert!(err.contains("zero-copy"), "{err}");

        // Forced copy mode, without need_wakeup, with busy polling: opens,
        // and several ports on one interface (one per queue) each get their
        // own socket; the same queue twice is refused.
        let copy = XskConfig {
            zero_copy: Some(false),
            need_wakeup: false,
            busy_poll: Some(podfence_datapath::ports::xsk::BusyPoll {
                usecs: 20,
                budget: 64,
            }),
            ..config
        };
        let port = XskPort::open(&bed.if_a, 0, &copy).expect("copy mode");
        assert_eq!(port.mode(), XskMode::Copy);
        if let Some(e) = port.busy_poll_error() {
            eprintln!("busy polling not available here: {e}");
        }
        let err = XskPort::open(&bed.if_a, 0, &config)
            .unwrap_err()
            .to_string();
        eprintln!("second socket on queue 0: {err}");
        assert!(err.contains("queue 0"), "{err}");
    });
}

/// A socket made before its interface exists (as the agent keeps spares
/// for pods yet to start) binds to it later and carries frames both ways;
/// binding to a missing interface fails with its name.
#[test]
fn a_socket_prepared_ahead_binds_to_a_later_interface() {
    if skip_unless(&[Need::Root, Need::Bpf, Need::Iproute2]) {
        return;
    }
    let Some(netns) = Netns::new(NS_PREFIX) else {
        return;
    };
    netns.disable_ipv6();
    let config = small_config();
    let (missing, prepared) = netns.in_ns(|| {
        let missing = PreparedXsk::new(&config)
            .expect("prepare")
            .bind("pfx-missing", 0)
            .unwrap_err()
            .to_string();
        (missing, PreparedXsk::new(&config).expect("prepare"))
    });
    assert!(
        missing.contains("pfx-missing") && missing.contains("not found"),
        "{missing}"
    );
    assert_eq!(prepared.config(), &config);
    let pid = std::process::id();
    let (if_a, if_b) = (format!("pfxa-{pid}"), format!("pfxb-{pid}"));
    netns.add_veth((&if_a, MAC_A), (&if_b, MAC_B));
    netns.set_up(&[&if_a, &if_b]);
    netns.in_ns(|| {
        let redirector = Redirector::attach(if_a.as_str(), &RedirectConfig::default())
            .expect("attach redirector");
        let mut port = prepared.bind(&if_a, 0).expect("bind the prepared socket");
        redirector.register_socket(0, &port).expect("register");
        let peer = PacketSocket::open(&if_b);
        // More than the fill ring's frames, so the fill ring was filled at
        // bind and refilled since.
        for round in 0..4 {
            let frames: Vec<Vec<u8>> = (0..64)
                .map(|i| frame(MAC_B, MAC_A, round * 64 + i))
                .collect();
            peer.send(&frames);
            assert_eq!(
                receive_exactly(&mut port, &frames, Duration::from_secs(5)),
                64,
                "round {round}"
            );
        }
        let out: Vec<Vec<u8>> = (0..32).map(|i| frame(MAC_A, MAC_B, 1000 + i)).collect();
        let batch: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
        assert_eq!(port.send(&batch).expect("send"), out.len());
        let received = peer.collect_from(MAC_A, out.len() + 1, Duration::from_secs(3));
        assert_eq!(received, out);
        redirector.unregister(0).expect("unregister");
        drop(port);
        redirector.detach().expect("detach");
    });
}

/// An IPv4/UDP frame of exactly `len` bytes (Ethernet header included)
/// whose payload depends on `seq`.
fn sized_frame(src: [u8; 6], dst: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = frame(src, dst, seq);
    f.truncate(14 + 28 + 4);
    f.extend((f.len()..len).map(|i| (i as u32 ^ seq.rotate_left(8)) as u8));
    let total = u16::try_from(len - 14).unwrap();
    f[16..18].copy_from_slice(&total.to_be_bytes());
    let udp_len = u16::try_from(len - 14 - 20).unwrap();
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f
}

/// Room for a round of 90 frames of up to 6 chunks each, in and out.
fn jumbo_config() -> XskConfig {
    XskConfig {
        frame_count: 2048,
        frame_size: 2048,
        rx_ring: 1024,
        tx_ring: 1024,
        fill_ring: 1024,
        comp_ring: 1024,
        ..XskConfig::default()
    }
}

/// Opens queue 0 of `ifname`, waiting for the kernel to finish releasing a
/// socket closed just before (the release of its UMEM is deferred).
fn reopen(ifname: &str, config: &XskConfig) -> XskPort {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match XskPort::open(ifname, 0, config) {
            Ok(port) => return port,
            Err(e) if Instant::now() < deadline && e.to_string().contains("already has") => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open XskPort: {e}"),
        }
    }
}

/// Largest frame at MTU 9000 with two VLAN tags.
const JUMBO_FRAME: u32 = 9000 + 14 + 8;

/// MTU 9000 on both ends, in native and in generic XDP: 9014-byte frames
/// (five or six 2048-byte chunks) arrive whole and byte-exact among small
/// ones, and leave whole, in both directions; frames longer than the port
/// carries are counted, on receive and on send, and what follows them still
/// arrives.
#[test]
fn jumbo_frames_in_both_directions() {
    let Some(bed) = Testbed::new() else { return };
    bed.set_mtu(9000);
    for mode in [XdpMode::Native, XdpMode::Generic] {
        bed.in_ns(|| {
            let redirect = RedirectConfig {
                mode,
                ..RedirectConfig::default()
            };
            let redirector =
                Redirector::attach(bed.if_a.as_str(), &redirect).expect("attach redirector");
            let expected_mode = match mode {
                XdpMode::Generic => AttachMode::Generic,
                _ => AttachMode::Native,
            };
            assert_eq!(redirector.mode(), expected_mode);
            let config = XskConfig {
                max_frame: JUMBO_FRAME,
                ..jumbo_config()
            };
            let mut port = reopen(&bed.if_a, &config);
            assert_eq!(port.max_frame_len(), JUMBO_FRAME as usize);
            assert!(port.chunk_len() < 9014);
            redirector.register_socket(0, &port).expect("register");
            let peer = PacketSocket::open(&bed.if_b);

            // In: jumbo, small and in-between frames, in rounds larger than
            // a batch so that chains meet the batch limit.
            let sizes = [9014, 60, 1514, 9014, 4000, 9014, 1792, 1793, 3585];
            for round in 0..4u32 {
                let frames: Vec<Vec<u8>> = (0..90u32)
                    .map(|i| {
                        let len = sizes[(i as usize + round as usize) % sizes.len()];
                        sized_frame(MAC_B, MAC_A, round * 1000 + i, len)
                    })
                    .collect();
                peer.send(&frames);
                let got = receive_exactly(&mut port, &frames, Duration::from_secs(5));
                assert_eq!(got, frames.len(), "{mode:?} round {round}");
            }
            assert_quiet(&mut port);
            assert_eq!(port.stats().rx_oversize, 0);

            // Out: the same mix, in batches of 16.
            let out: Vec<Vec<u8>> = (0..144u32)
                .map(|i| sized_frame(MAC_A, MAC_B, 50_000 + i, sizes[i as usize % sizes.len()]))
                .collect();
            let mut next = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while next < out.len() && Instant::now() < deadline {
                let end = (next + 16).min(out.len());
                let batch: Vec<&[u8]> = out[next..end].iter().map(Vec::as_slice).collect();
                next += port.send(&batch).expect("send");
            }
            assert_eq!(next, out.len(), "{mode:?}: sent only {next}");
            let received = peer.collect_from(MAC_A, out.len() + 1, Duration::from_secs(3));
            assert_eq!(
                received.len(),
                out.len(),
                "{mode:?}: peer count; {:?}, {:?}",
                port.stats(),
                port.xsk_stats()
            );
            for (i, (r, o)) in received.iter().zip(&out).enumerate() {
                assert_same(r, o, &format!("{mode:?}: frame {i} at the peer"));
            }

            // Longer than the port carries: counted, not sent.
            let long = vec![0u8; JUMBO_FRAME as usize + 1];
            let before = port.stats();
            assert_eq!(port.send(&[&long]).expect("send"), 0);
            assert_eq!(port.stats().tx_oversize, before.tx_oversize + 1);
            assert_eq!(port.stats().tx_dropped, before.tx_dropped + 1);
            let ring = port.xsk_stats().expect("XDP_STATISTICS");
            assert_eq!(ring.tx_invalid_descs, 0, "{ring:?}");
            assert_eq!(ring.rx_invalid_descs, 0, "{ring:?}");
            redirector.unregister(0).expect("unregister");
            drop(port);

            // A port that carries 4000 bytes: a jumbo frame is counted as
            // oversize, and the frames around it arrive.
            let short = XskConfig {
                max_frame: 4000,
                ..jumbo_config()
            };
            let mut port = reopen(&bed.if_a, &short);
            redirector.register_socket(0, &port).expect("register");
            let small = sized_frame(MAC_B, MAC_A, 7, 100);
            let mid = sized_frame(MAC_B, MAC_A, 8, 3999);
            let jumbo = sized_frame(MAC_B, MAC_A, 9, 9014);
            peer.send(&[small.clone(), jumbo, mid.clone()]);
            let got = receive_exactly(&mut port, &[small, mid], Duration::from_secs(5));
            assert_eq!(got, 2, "{mode:?}");
            assert_eq!(port.stats().rx_oversize, 1, "{mode:?}");
            redirector.unregister(0).expect("unregister");
            drop(port);
            redirector.detach().expect("detach");
        });
    }
}

// Checksum offload through TX metadata.

/// An IPv4 TCP or UDP frame from `a` (10.251.0.1) to `b` (10.251.0.2) as a
/// stack with checksum offload hands it to its device: the checksum begun
/// (the folded pseudo-header sum in its field); and the request that
/// finishes it.
fn begun_frame(transport: Transport, payload_len: usize) -> (Vec<u8>, ChecksumRequest) {
    let mut f = FrameSpec {
        src: "10.251.0.1".parse().unwrap(),
        dst: "10.251.0.2".parse().unwrap(),
        transport,
        payload_len,
        payload_fill: 0xa7,
    }
    .build();
    f[..6].copy_from_slice(&MAC_B);
    f[6..12].copy_from_slice(&MAC_A);
    let l4 = 34;
    let offset = if matches!(transport, Transport::Tcp { .. }) {
        16
    } else {
        6
    };
    let len = u32::try_from(f.len() - l4).unwrap();
    let pseudo = fold(pseudo_header_sum(&f[26..34], f[23], len));
    f[l4 + offset..l4 + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    let request = ChecksumRequest {
        start: l4 as u16,
        offset: offset as u16,
    };
    (f, request)
}

/// Whether a SYN-ACK from `b`'s port 12347 to `a`'s `port` arrives within
/// half a second (other frames are released and ignored).
fn syn_ack_arrives(port: &mut XskPort, to_port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut descs = [RxDesc::default(); 64];
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        let n = port.recv(&mut descs).expect("recv");
        for d in &descs[..n] {
            let f = port.frame(d);
            seen |= f.len() >= 54
                && f[23] == 6
                && f[34..36] == 12347u16.to_be_bytes()
                && f[36..38] == to_port.to_be_bytes()
                && f[47] == 0x12;
        }
        port.release(&descs[..n]);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    seen
}

/// The kernel finishes checksums left to it in TX metadata, as this port
/// sends them (on veth, copy mode: the skb is `CHECKSUM_PARTIAL`, and the
/// receiving stack takes it): a begun UDP datagram, a jumbo one sent as a
/// chain (the request on its first buffer only), and a begun TCP SYN all
/// reach their sockets, with no checksum error counted. The same frames
/// sent without the request are dropped for their checksums and counted,
/// which is what shows the request did it. Skips where the kernel lacks TX
/// metadata (before Linux 6.11), saying so.
#[test]
fn the_kernel_finishes_checksums_requested_in_tx_metadata() {
    let Some(bed) = Testbed::new() else { return };
    bed.set_mtu(9000);
    bed.netns
        .ip(&["addr", "add", "10.251.0.2/24", "dev", &bed.if_b]);
    bed.netns.ip(&[
        "neigh",
        "add",
        "10.251.0.1",
        "lladdr",
        &podfence_testkit::netns::mac_string(MAC_A),
        "dev",
        &bed.if_b,
    ]);
    bed.in_ns(|| {
        let redirector = Redirector::attach(bed.if_a.as_str(), &RedirectConfig::default())
            .expect("attach redirector");
        let config = XskConfig {
            max_frame: JUMBO_FRAME,
            ..jumbo_config()
        };
        let mut port = XskPort::open(&bed.if_a, 0, &config).expect("open XskPort");
        if let ChecksumOffload::Software(why) = port.checksum_offload() {
            eprintln!("SKIPPED: this kernel lacks AF_XDP TX checksum metadata: {why}");
            return;
        }
        assert!(Port::checksum_offload(&port));
        redirector.register_socket(0, &port).expect("register");
        let udp_sock = std::net::UdpSocket::bind("10.251.0.2:12346").expect("bind UDP");
        udp_sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let tcp_listener = std::net::TcpListener::bind("10.251.0.2:12347").expect("listen");
        let mut buf = vec![0u8; 10_000];
        let udp = |len| {
            begun_frame(
                Transport::Udp {
                    src_port: 12345,
                    dst_port: 12346,
                },
                len,
            )
        };

        // Without the request: dropped by the receiver, counted.
        let errors = Snmp::read().get("Udp", "InCsumErrors");
        let (f, _) = udp(1000);
        assert_eq!(port.send(&[&f]).unwrap(), 1);
        assert!(
            udp_sock.recv(&mut buf).is_err(),
            "a begun checksum arrived unfinished and was taken"
        );
        assert_eq!(Snmp::read().get("Udp", "InCsumErrors"), errors + 1);

        // With it: the datagram arrives whole, one chunk or a chain.
        for len in [1000, 8000] {
            let (f, request) = udp(len);
            assert_eq!(port.send_offloaded(&[&f], &[Some(request)]).unwrap(), 1);
            let n = udp_sock.recv(&mut buf).expect("the datagram arrives");
            assert_eq!(&buf[..n], &f[42..], "payload of {len}");
        }
        assert_eq!(
            Snmp::read().get("Udp", "InCsumErrors"),
            errors + 1,
            "no new checksum error"
        );

        // TCP: a SYN is answered only if its checksum is right.
        let tcp_errors = Snmp::read().get("Tcp", "InCsumErrors");
        let syn = |src_port| {
            begun_frame(
                Transport::Tcp {
                    src_port,
                    dst_port: 12347,
                    flags: 0x02,
                },
                0,
            )
        };
        let (f, _) = syn(40_001);
        port.send(&[&f]).unwrap();
        assert!(
            !syn_ack_arrives(&mut port, 40_001),
            "unfinished SYN answered"
        );
        assert_eq!(Snmp::read().get("Tcp", "InCsumErrors"), tcp_errors + 1);
        let (f, request) = syn(40_002);
        port.send_offloaded(&[&f], &[Some(request)]).unwrap();
        assert!(
            syn_ack_arrives(&mut port, 40_002),
            "no SYN-ACK to a finished SYN"
        );
        assert_eq!(Snmp::read().get("Tcp", "InCsumErrors"), tcp_errors + 1);
        drop(tcp_listener);
        assert_eq!(port.xsk_stats().unwrap().tx_invalid_descs, 0);
    });
}
