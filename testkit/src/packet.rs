//! Raw frames on an interface through `AF_PACKET` sockets: an oracle
//! independent of the code under test, for sending into it and reading
//! what it sent.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Sends raw Ethernet frames out of `ifname` (call inside the namespace).
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "{ifname} not found");
    for frame in frames {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        addr.sll_ifindex = i32::try_from(ifindex).unwrap();
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths given and
        // outlive the call; `sock` is open.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            isize::try_from(frame.len()).unwrap(),
            "sendto: {}",
            io::Error::last_os_error()
        );
    }
}

/// A raw packet socket bound to one interface (inside the namespace).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens a non-blocking `AF_PACKET` socket bound to `ifname` (call it
    /// inside the namespace), with room for every frame of a test.
    #[must_use]
    pub fn open(ifname: &str) -> Self {
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

    /// Sends each frame out of the interface, as it is.
    pub fn send(&self, frames: &[Vec<u8>]) {
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
    #[must_use]
    pub fn collect_from(&self, src: [u8; 6], count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
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
