//! AF_XDP ports against the kernel: each test builds its own network
//! namespace (`pfxsk-<pid>-<n>`) with a veth pair `pfxa-<pid>` /
//! `pfxb-<pid>`, attaches podfence's redirector to the `a` end, opens an
//! [`XskPort`] on its queue 0 and exchanges raw Ethernet frames with an
//! `AF_PACKET` socket on the `b` end (an oracle independent of the code under
//! test). Needs root; skips with the reason otherwise.
//!
//! IPv6 is disabled in the namespace and no interface has an address, so the
//! kernel sends nothing on its own and counts stay exact.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use podfence_bpf::{RedirectConfig, Redirector};
use podfence_datapath::ports::xsk::{XskConfig, XskMode, XskPort};
use podfence_datapath::ports::{Port, RxDesc};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0xfa, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0xfa, 0x0b];

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A namespace with the veth pair, deleted on drop (also after a panic).
struct Testbed {
    ns: String,
    if_a: String,
    if_b: String,
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        return Some("kernel without the bpf() syscall".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) not installed".into());
    }
    None
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Testbed {
    fn new() -> Option<Self> {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let pid = std::process::id();
        let ns = format!("pfxsk-{pid}-{}", NEXT_NS.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip")
            .args(["netns", "add", &ns])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot create network namespace {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let bed = Self {
            ns,
            if_a: format!("pfxa-{pid}"),
            if_b: format!("pfxb-{pid}"),
        };
        bed.in_ns(|| {
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
        });
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        bed.ip(&[
            "link",
            "add",
            &bed.if_a,
            "address",
            &mac(MAC_A),
            "type",
            "veth",
            "peer",
            "name",
            &bed.if_b,
            "address",
            &mac(MAC_B),
        ]);
        for dev in [&bed.if_a, &bed.if_b] {
            bed.ip(&["link", "set", dev, "up"]);
        }
        Some(bed)
    }

    fn ip(&self, args: &[&str]) {
        let mut cmd = vec!["ip", "-n", &self.ns];
        cmd.extend_from_slice(args);
        run(&cmd);
    }

    /// Runs `f` on a thread inside the namespace; re-raises its panic.
    fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("netns file exists");
                // SAFETY: `file` is an open namespace fd for the duration of
                // the call; setns changes only this thread's namespace.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.ns]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "deleting netns {}: {}",
                self.ns,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("deleting netns {}: {e}", self.ns),
        }
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

/// A raw packet socket bound to one interface (inside the namespace).
struct Packet {
    fd: OwnedFd,
    ifindex: i32,
}

impl Packet {
    fn open(ifname: &str) -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "{ifname} not found");
        let ifindex = i32::try_from(ifindex).unwrap();
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is valid for its size and outlives the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
        // Room for every frame of a test (the default buffer holds ~200).
        let size: libc::c_int = 8 << 20;
        // SAFETY: `size` is valid for reads of its size during the call.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(ret, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
        Self { fd, ifindex }
    }

    fn send(&self, frames: &[Vec<u8>]) {
        for f in frames {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: `f` and `addr` are valid for the lengths given and
            // outlive the call.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                sent,
                isize::try_from(f.len()).unwrap(),
                "sendto: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Frames received from `src` until `count` arrived or `timeout` passed.
    fn collect_from(&self, src: [u8; 6], count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while got.len() < count && Instant::now() < deadline {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "recv: {e}");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let f = &buf[..usize::try_from(n).unwrap()];
            if f.len() >= 12 && f[6..12] == src {
                got.push(f.to_vec());
            }
        }
        got
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
        let peer = Packet::open(&bed.if_b);

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
