//! End-to-end tests against the kernel: each test builds its own network
//! namespace (`pfbpf-<pid>-<n>`) with a veth pair `pfa`/`pfb`, attaches the
//! redirector to `pfa`, sends real frames from `pfb` and reads the counters
//! and the kernel's view of the interface. Needs root; skips otherwise.
//!
//! IPv6 is disabled in the namespace so the kernel sends nothing on its own
//! (no DAD, router solicitations or MLD), which keeps counter deltas exact.
//! Addresses (10.250.0.0/24) exist only inside the namespace.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use libbpf_rs::libbpf_sys;
use podfence_bpf::{
    AttachMode, AttachedProgram, Counters, Error, NoSocketAction, PROGRAM_NAME, RedirectConfig,
    RedirectProgram, Redirector, XdpMode, attached_programs,
};
use podfence_testkit::frames;
use podfence_testkit::netns::Netns;
use podfence_testkit::packet::send_frames;
use podfence_testkit::{Need, skip_unless};

const IF_XDP: &str = "pfa";
const IF_PEER: &str = "pfb";
const MAC_XDP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const IP_PEER: [u8; 4] = [10, 250, 0, 1];
const IP_XDP: [u8; 4] = [10, 250, 0, 2];

// ---------------------------------------------------------------- testbed --

/// A namespace `pfbpf-<pid>-<n>` with the veth pair (deleted on drop, also
/// when the test panics), or `None` (after saying why) if the test cannot
/// run here.
fn testbed() -> Option<Netns> {
    if skip_unless(&[Need::Root, Need::Bpf, Need::Iproute2]) {
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
    podfence_bpf::forward_libbpf_logs();
    let bed = Netns::new("pfbpf")?;
    bed.disable_ipv6();
    bed.add_veth((IF_XDP, MAC_XDP), (IF_PEER, MAC_PEER));
    bed.ip(&["addr", "add", "10.250.0.1/24", "dev", IF_PEER]);
    bed.set_up(&["lo", IF_XDP, IF_PEER]);
    Some(bed)
}

/// `ip -d link show dev pfa`, as the operator would check it.
fn link_details(bed: &Netns) -> String {
    bed.ip(&["-d", "link", "show", "dev", IF_XDP])
}

// ----------------------------------------------------------------- frames --

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    frames::ethernet_tagged(MAC_XDP, MAC_PEER, &[], ethertype, payload)
}

/// `tags` VLAN tags (outer 802.1ad, inner 802.1Q; VID 100) in front of
/// `inner`.
fn vlan(tags: usize, inner_type: u16, payload: &[u8]) -> Vec<u8> {
    let tags: Vec<(u16, u16)> = (0..tags)
        .map(|i| {
            let tpid = if i == 0 && tags > 1 { 0x88a8 } else { 0x8100 };
            (tpid, 100)
        })
        .collect();
    frames::ethernet_tagged(MAC_XDP, MAC_PEER, &tags, inner_type, payload)
}

fn ipv4_udp() -> Vec<u8> {
    frames::V4::new(17)
        .addrs(IP_PEER, IP_XDP)
        .host_sent()
        .packet(&frames::udp(12345, 9, b"pf!\n"))
}

/// From fe80::b to fe80::a, hop limit 255 (as neighbour discovery needs).
fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
    let fe80 = |last: u8| [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last];
    frames::ipv6_hop_limit(next_header, 255, fe80(0x0b), fe80(0x0a), payload)
}

fn arp_request() -> Vec<u8> {
    frames::arp_request(MAC_PEER, IP_PEER, [10, 250, 0, 9])
}

/// Waits until the counters moved by at least `frames` since `before`, then
/// a little longer to catch stragglers, and returns the difference.
fn delta_after(r: &Redirector, before: Counters, frames: u64) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let delta = r.counters().unwrap() - before;
        if delta.total() >= frames || Instant::now() > deadline {
            std::thread::sleep(Duration::from_millis(100));
            return r.counters().unwrap() - before;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----------------------------------------------------------------- AF_XDP --

/// A minimal AF_XDP socket bound to a queue: UMEM, fill/completion/RX rings
/// created but never mapped or filled. Enough for the XSKMAP to accept it and
/// for `bpf_redirect_map` to succeed (the kernel then drops the frame for
/// want of a fill-ring buffer, after our program counted it as redirected).
struct Xsk {
    fd: OwnedFd,
    umem: *mut libc::c_void,
    len: usize,
}

impl Xsk {
    fn bind(ifname: &str, queue: u32) -> io::Result<Self> {
        let check = |ret: libc::c_int| {
            if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(ret)
            }
        };
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = check(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) })?;
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = 16 * 4096;
        // SAFETY: anonymous private mapping of `len` bytes; result checked.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let xsk = Self { fd, umem, len };
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: len as u64,
            chunk_size: 4096,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let set = |opt: libc::c_int, val: *const libc::c_void, size: usize| {
            // SAFETY: `val` points to a live value of `size` bytes of the type
            // the option expects.
            check(unsafe {
                libc::setsockopt(xsk.fd.as_raw_fd(), libc::SOL_XDP, opt, val, size as u32)
            })
        };
        set(
            libc::XDP_UMEM_REG,
            (&raw const reg).cast(),
            size_of::<libc::xdp_umem_reg>(),
        )?;
        let entries: libc::c_int = 16;
        for ring in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
        ] {
            set(ring, (&raw const entries).cast(), size_of::<libc::c_int>())?;
        }
        let name = CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp that outlives the call.
        check(unsafe {
            libc::bind(
                xsk.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_xdp>() as u32,
            )
        })?;
        Ok(xsk)
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: `umem` is the mapping of `len` bytes made in `bind`, not
        // used after this; the kernel keeps its own page references until
        // the socket (closed right after, with `fd`) releases them.
        unsafe { libc::munmap(self.umem, self.len) };
    }
}

// ------------------------------------------------------------------ tests --

fn attached(expect: &[(u32, AttachMode)]) {
    let progs = attached_programs(IF_XDP).unwrap();
    let got: Vec<(u32, AttachMode)> = progs.iter().map(|p| (p.id, p.mode)).collect();
    assert_eq!(got, expect, "programs on {IF_XDP}: {progs:?}");
    for p in &progs {
        assert_eq!(p.name, PROGRAM_NAME);
    }
}

/// The `ip -d link` line for an attached program: `prog/xdp id N`, plus the
/// mode keyword on the link line (`xdp` native, `xdpgeneric` generic).
fn assert_ip_link_shows(bed: &Netns, id: u32, mode: AttachMode) {
    let details = link_details(bed);
    assert!(
        details.contains(&format!("prog/xdp id {id} ")),
        "ip -d link: {details}"
    );
    let keyword = match mode {
        AttachMode::Native => " xdp ",
        AttachMode::Generic => " xdpgeneric ",
    };
    assert!(
        details.contains(keyword),
        "expected `{keyword}` in ip -d link: {details}"
    );
}

fn assert_ip_link_clean(bed: &Netns) {
    let details = link_details(bed);
    assert!(
        !details.contains("prog/xdp"),
        "XDP still attached: {details}"
    );
    assert!(!details.contains(" xdp"), "XDP still attached: {details}");
}

#[test]
fn classifies_frames_and_detaches_native() {
    let Some(bed) = testbed() else { return };
    let cfg = RedirectConfig {
        max_queues: 4,
        ..RedirectConfig::default()
    };
    let id = bed.in_ns(|| {
        let r = Redirector::attach(IF_XDP, &cfg).expect("attach");
        // veth implements native XDP, so Auto must not fall back.
        assert_eq!(r.mode(), AttachMode::Native);
        assert_eq!(r.ifname(), IF_XDP);
        attached(&[(r.program_id(), AttachMode::Native)]);
        r.program_id()
    });
    // The handle was dropped on the thread: dropping detached it.
    assert_ne!(id, 0);
    assert_ip_link_clean(&bed);
    bed.in_ns(|| attached(&[]));

    bed.in_ns(|| {
        let r = Redirector::attach(IF_XDP, &cfg).expect("attach");
        assert_ip_link_shows(&bed, r.program_id(), AttachMode::Native);
        check_frame_classes(&r);
        check_socket_redirect(&r);
        check_arp_from_ping(&r);
        r.detach().expect("detach");
        assert_ip_link_clean(&bed);
        attached(&[]);
    });
}

/// Every class of frame, no socket bound: exact counts.
fn check_frame_classes(r: &Redirector) {
    let before = r.counters().unwrap();
    let udp6 = ipv6(17, &[0x30, 0x39, 0, 9, 0, 8, 0, 0]);
    let frames = vec![
        eth(0x0800, &ipv4_udp()),                            // fallback drop
        eth(0x86dd, &udp6),                                  // fallback drop
        eth(0x86dd, &ipv6(58, &[135, 0, 0, 0, 0, 0, 0, 0])), // ND solicitation: pass
        eth(0x86dd, &ipv6(58, &[128, 0, 0, 0, 0, 0, 0, 0])), // echo request: fallback drop
        eth(0x86dd, &ipv6(58, &[])),                         // no ICMPv6 header: fallback drop
        eth(0x0806, &arp_request()),                         // ARP: pass
        vlan(1, 0x0800, &ipv4_udp()),                        // 802.1Q IPv4: fallback drop
        vlan(2, 0x0806, &arp_request()),                     // QinQ ARP: pass
        vlan(3, 0x0800, &ipv4_udp()),                        // three tags: malformed
        eth(0x8100, &[0, 100]),                              // truncated tag: malformed
        eth(0x88b5, b"local experimental ethertype"),        // other: pass
    ];
    send_frames(IF_PEER, &frames);
    let d = delta_after(r, before, frames.len() as u64);
    let expected = Counters {
        redirected: 0,
        passed_neighbour: 3,
        passed_other: 1,
        fallback_dropped: 5,
        fallback_passed: 0,
        malformed: 2,
    };
    assert_eq!(d, expected);
}

/// With a socket on queue 0, IP goes to it and ARP still passes; without,
/// the fail-closed fallback applies again. Bad queues and fds are refused.
fn check_socket_redirect(r: &Redirector) {
    let xsk = Xsk::bind(IF_XDP, 0).expect("AF_XDP socket on pfa queue 0");
    r.register_socket(0, &xsk).expect("register");
    let before = r.counters().unwrap();
    let frames = vec![
        eth(0x0800, &ipv4_udp()),
        eth(0x86dd, &ipv6(17, &[0x30, 0x39, 0, 9, 0, 8, 0, 0])),
        eth(0x0806, &arp_request()),
    ];
    send_frames(IF_PEER, &frames);
    let d = delta_after(r, before, 3);
    assert_eq!(
        d,
        Counters {
            redirected: 2,
            passed_neighbour: 1,
            ..Counters::default()
        }
    );

    r.unregister(0).unwrap();
    r.unregister(0).expect("unregister is idempotent");
    let err = r.unregister(4).unwrap_err();
    assert!(
        matches!(err, Error::QueueOutOfRange { queue: 4, .. }),
        "{err}"
    );
    let before = r.counters().unwrap();
    send_frames(IF_PEER, &[eth(0x0800, &ipv4_udp())]);
    let d = delta_after(r, before, 1);
    assert_eq!(
        d,
        Counters {
            fallback_dropped: 1,
            ..Counters::default()
        }
    );

    let err = r.register_socket(4, &xsk).unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueOutOfRange {
                queue: 4,
                max_queues: 4,
                ..
            }
        ),
        "{err}"
    );
    let udp = std::net::UdpSocket::bind("10.250.0.1:0").unwrap();
    let err = r.register_socket(1, &udp).unwrap_err();
    assert!(
        matches!(err, Error::RegisterSocket { queue: 1, .. }),
        "{err}"
    );
}

/// Real neighbour resolution: ping an absent neighbour; the kernel's ARP
/// requests must reach pfa's stack, i.e. be passed and counted.
fn check_arp_from_ping(r: &Redirector) {
    let before = r.counters().unwrap();
    let args = [
        "-n",
        "-c",
        "2",
        "-i",
        "0.3",
        "-W",
        "1",
        "-I",
        IF_PEER,
        "10.250.0.9",
    ];
    // No reply is expected (nobody has 10.250.0.9), so the exit status is moot.
    if let Err(e) = Command::new("ping").args(args).output() {
        eprintln!("SKIPPED the ARP-from-ping check: cannot run ping: {e}");
        return;
    }
    let d = delta_after(r, before, 1);
    assert!(d.passed_neighbour >= 1, "ARP from ping not counted: {d:?}");
    assert_eq!(d.fallback_dropped + d.redirected + d.malformed, 0, "{d:?}");
}

#[test]
fn generic_mode_and_fail_open_fallback() {
    let Some(bed) = testbed() else { return };
    bed.in_ns(|| {
        let cfg = RedirectConfig {
            mode: XdpMode::Generic,
            no_socket_action: NoSocketAction::Pass,
            ..RedirectConfig::default()
        };
        let r = Redirector::attach(IF_XDP, &cfg).expect("attach generic");
        assert_eq!(r.mode(), AttachMode::Generic);
        assert_eq!(r.no_socket_action(), NoSocketAction::Pass);
        assert_ip_link_shows(&bed, r.program_id(), AttachMode::Generic);
        attached(&[(r.program_id(), AttachMode::Generic)]);

        let before = r.counters().unwrap();
        send_frames(
            IF_PEER,
            &[eth(0x0800, &ipv4_udp()), eth(0x0806, &arp_request())],
        );
        let d = delta_after(&r, before, 2);
        assert_eq!(
            d,
            Counters {
                fallback_passed: 1,
                passed_neighbour: 1,
                ..Counters::default()
            }
        );

        drop(r);
        assert_ip_link_clean(&bed);
    });
}

#[test]
fn replaces_what_a_crashed_run_left_behind() {
    let Some(bed) = testbed() else { return };
    bed.in_ns(|| {
        // Crash in generic mode: the program stays attached (fail closed).
        let generic = RedirectConfig {
            mode: XdpMode::Generic,
            ..RedirectConfig::default()
        };
        let crashed = Redirector::attach(IF_XDP, &generic).expect("attach");
        let old = crashed.program_id();
        std::mem::forget(crashed);
        attached(&[(old, AttachMode::Generic)]);

        // A fresh start in Auto mode moves to native and removes the leftover.
        let r = Redirector::attach(IF_XDP, &RedirectConfig::default()).expect("re-attach");
        assert_ne!(r.program_id(), old);
        assert_eq!(r.mode(), AttachMode::Native);
        attached(&[(r.program_id(), AttachMode::Native)]);
        assert_ip_link_shows(&bed, r.program_id(), AttachMode::Native);
        r.detach().expect("detach");
        attached(&[]);
        assert_ip_link_clean(&bed);

        // Crash in native mode, restart in native mode: atomic replace. The
        // stale handle is kept this time, to check that its late detach (the
        // kernel checks the expected program) leaves the new program alone.
        let native = RedirectConfig {
            mode: XdpMode::Native,
            ..RedirectConfig::default()
        };
        let stale = Redirector::attach(IF_XDP, &native).expect("attach");
        let old = stale.program_id();
        attached(&[(old, AttachMode::Native)]);
        let r = Redirector::attach(IF_XDP, &native).expect("replace");
        assert_ne!(r.program_id(), old);
        attached(&[(r.program_id(), AttachMode::Native)]);
        stale.detach().expect("a stale detach is not an error");
        attached(&[(r.program_id(), AttachMode::Native)]);
        drop(r);
        attached(&[]);
        assert_ip_link_clean(&bed);
    });
}

#[test]
fn falls_back_to_generic_without_driver_support() {
    let Some(bed) = testbed() else { return };
    // The loopback driver has no native XDP (and this is the namespace's
    // own loopback, which nothing else uses meanwhile).
    bed.in_ns(|| {
        let native = RedirectConfig {
            mode: XdpMode::Native,
            ..RedirectConfig::default()
        };
        let err = Redirector::attach("lo", &native).unwrap_err();
        match &err {
            Error::Attach {
                mode: AttachMode::Native,
                source,
                ..
            } => {
                assert_eq!(source.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}");
            }
            other => panic!("expected a native attach error, got {other}"),
        }
        assert!(attached_programs("lo").unwrap().is_empty());

        let r = Redirector::attach("lo", &RedirectConfig::default()).expect("auto");
        assert_eq!(r.mode(), AttachMode::Generic);
        let progs = attached_programs("lo").unwrap();
        assert_eq!(progs.len(), 1);
        assert_eq!(
            (progs[0].id, progs[0].mode),
            (r.program_id(), AttachMode::Generic)
        );
        r.detach().unwrap();
        assert!(attached_programs("lo").unwrap().is_empty());
    });
}

/// Loads `r0 = XDP_PASS; exit` under another name, as some other tool would.
fn load_foreign_program() -> OwnedFd {
    let mut mov = libbpf_sys::bpf_insn {
        code: 0xb7,
        imm: 2,
        ..Default::default()
    }; // r0 = 2
    mov.set_dst_reg(0);
    let exit = libbpf_sys::bpf_insn {
        code: 0x95,
        ..Default::default()
    };
    let insns = [mov, exit];
    // SAFETY: the name and licence are NUL-terminated literals, `insns` holds
    // the given number of instructions, and null options mean defaults.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_XDP,
            c"other_xdp".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as libbpf_sys::size_t,
            std::ptr::null_mut(),
        )
    };
    assert!(
        fd >= 0,
        "loading foreign program: {}",
        io::Error::from_raw_os_error(-fd)
    );
    // SAFETY: bpf_prog_load returned a fresh fd that nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn refuses_foreign_program_unless_told() {
    let Some(bed) = testbed() else { return };
    bed.in_ns(|| {
        let foreign = load_foreign_program();
        let name = CString::new(IF_XDP).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: `foreign` is an open XDP program fd; null opts are allowed.
        let ret = unsafe {
            libbpf_sys::bpf_xdp_attach(
                i32::try_from(ifindex).unwrap(),
                foreign.as_raw_fd(),
                libbpf_sys::XDP_FLAGS_SKB_MODE,
                std::ptr::null(),
            )
        };
        assert_eq!(ret, 0, "attach foreign: {}", io::Error::from_raw_os_error(-ret));

        let err = Redirector::attach(IF_XDP, &RedirectConfig::default()).unwrap_err();
        assert!(
            matches!(&err, Error::ForeignProgram { name, mode: AttachMode::Generic, .. } if name == "other_xdp"),
            "{err}"
        );
        assert!(err.to_string().contains("ip link set dev pfa xdp off"), "{err}");
        let progs = attached_programs(IF_XDP).unwrap();
        assert!(matches!(progs.as_slice(), [AttachedProgram { name, .. }] if name == "other_xdp"));

        let cfg = RedirectConfig { replace_foreign: true, ..RedirectConfig::default() };
        let r = Redirector::attach(IF_XDP, &cfg).expect("replace foreign");
        attached(&[(r.program_id(), r.mode())]);
        r.detach().expect("detach");
        attached(&[]);
    });
    assert_ip_link_clean(&bed);
}

#[test]
fn reports_missing_interface() {
    let Some(bed) = testbed() else { return };
    bed.in_ns(|| {
        let err = Redirector::attach("pf-nope", &RedirectConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "interface pf-nope not found");
        let err = Redirector::attach(
            IF_XDP,
            &RedirectConfig {
                max_queues: 0,
                ..RedirectConfig::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::InvalidQueueCount { got: 0, .. }),
            "{err}"
        );
    });
}

/// Native XDP on a veth whose peer MTU is 9000: the kernel refuses a
/// program without frags support there (veth: ERANGE, "Peer MTU is too
/// large to set XDP"); the redirector is built with `xdp.frags`, so it
/// attaches natively and still classifies a jumbo frame by its linear part.
#[test]
fn attaches_natively_to_jumbo_veth() {
    let Some(bed) = testbed() else { return };
    bed.ip(&["link", "set", "dev", IF_XDP, "mtu", "9000"]);
    bed.ip(&["link", "set", "dev", IF_PEER, "mtu", "9000"]);
    let native = RedirectConfig {
        mode: XdpMode::Native,
        ..RedirectConfig::default()
    };
    bed.in_ns(|| {
        let r = Redirector::attach(IF_XDP, &native).expect("native attach at MTU 9000");
        assert_eq!(r.mode(), AttachMode::Native);
        attached(&[(r.program_id(), AttachMode::Native)]);
        // A 9000-byte IPv4 frame and a small one: both IP, no socket bound,
        // so both are counted as dropped by the fail-closed fallback.
        let before = r.counters().unwrap();
        let mut jumbo = ipv4_udp();
        jumbo.resize(9000 - 14, 0xab);
        let frames = vec![eth(0x0800, &jumbo), eth(0x0800, &ipv4_udp())];
        send_frames(IF_PEER, &frames);
        let d = delta_after(&r, before, 2);
        assert_eq!(d.fallback_dropped, 2, "{d:?}");
        assert_eq!(d.malformed, 0, "{d:?}");
        r.detach().expect("detach");
    });
}

#[test]
fn one_program_serves_several_interfaces_each_in_its_slot() {
    const IF_2: &str = "pfc";
    const IF_2_PEER: &str = "pfd";
    const IF_3: &str = "pfe";
    let Some(bed) = testbed() else { return };
    bed.add_veth(
        (IF_2, [0x02, 0, 0, 0, 0, 0x0c]),
        (IF_2_PEER, [0x02, 0, 0, 0, 0, 0x0d]),
    );
    bed.add_veth(
        (IF_3, [0x02, 0, 0, 0, 0, 0x0e]),
        ("pff", [0x02, 0, 0, 0, 0, 0x0f]),
    );
    bed.set_up(&[IF_2, IF_2_PEER, IF_3, "pff"]);
    bed.in_ns(|| {
        let program = RedirectProgram::load(&RedirectConfig {
            max_queues: 4,
            max_interfaces: 2,
            ..RedirectConfig::default()
        })
        .expect("load");
        let a = Redirector::attach_shared(IF_XDP, &program).expect("attach pfa");
        let c = Redirector::attach_shared(IF_2, &program).expect("attach pfc");
        assert_eq!(a.program_id(), c.program_id());
        assert_eq!(attached_programs(IF_2).unwrap()[0].id, program.program_id());
        attached(&[(program.program_id(), AttachMode::Native)]);
        assert!(!program.has_free_slot());
        let err = Redirector::attach_shared(IF_3, &program).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NoFreeSlot {
                    max_interfaces: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            attached_programs(IF_3).unwrap().is_empty(),
            "a refused attach leaves nothing"
        );

        // A socket on pfa's queue 0 takes pfa's IP frames only: pfc has no
        // socket in its slot, and each interface counts its own frames.
        let xsk = Xsk::bind(IF_XDP, 0).expect("AF_XDP socket on pfa queue 0");
        a.register_socket(0, &xsk).expect("register");
        let (before_a, before_c) = (a.counters().unwrap(), c.counters().unwrap());
        send_frames(
            IF_PEER,
            &[eth(0x0800, &ipv4_udp()), eth(0x0806, &arp_request())],
        );
        let to_c = frames::ethernet_tagged(
            [0x02, 0, 0, 0, 0, 0x0c],
            [0x02, 0, 0, 0, 0, 0x0d],
            &[],
            0x0800,
            &ipv4_udp(),
        );
        send_frames(IF_2_PEER, &[to_c.clone(), to_c]);
        let d_a = delta_after(&a, before_a, 2);
        let d_c = delta_after(&c, before_c, 2);
        assert_eq!(
            d_a,
            Counters {
                redirected: 1,
                passed_neighbour: 1,
                ..Counters::default()
            }
        );
        assert_eq!(
            d_c,
            Counters {
                fallback_dropped: 2,
                ..Counters::default()
            }
        );

        // Detaching one leaves the other served; its slot goes to the next
        // interface, with counters from zero.
        a.detach().expect("detach pfa");
        attached(&[]);
        assert_eq!(attached_programs(IF_2).unwrap()[0].id, program.program_id());
        assert!(program.has_free_slot());
        let e = Redirector::attach_shared(IF_3, &program).expect("attach pfe in the freed slot");
        assert_eq!(e.counters().unwrap(), Counters::default());
        let before_c = c.counters().unwrap();
        let to_c = frames::ethernet_tagged(
            [0x02, 0, 0, 0, 0, 0x0c],
            [0x02, 0, 0, 0, 0, 0x0d],
            &[],
            0x0806,
            &arp_request(),
        );
        send_frames(IF_2_PEER, &[to_c]);
        assert_eq!(
            delta_after(&c, before_c, 1),
            Counters {
                passed_neighbour: 1,
                ..Counters::default()
            }
        );
        drop((c, e));
        assert!(attached_programs(IF_2).unwrap().is_empty());
        assert!(attached_programs(IF_3).unwrap().is_empty());
    });
}
