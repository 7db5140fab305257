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

use podfence_bpf::{RedirectConfig, Redirector};
use podfence_datapath::ports::xsk::{XskConfig, XskMode, XskPort};
use podfence_datapath::ports::{Port, RxDesc};
use podfence_testkit::netns::Netns;
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
            assert_eq!(bytes, &expected[got][..], "frame {got} differs");
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
