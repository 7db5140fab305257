//! Probes: real TCP connections and UDP exchanges from one namespace to
//! another, run one at a time or on a pool of threads.

use std::io::{self, Read};
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use podfence_control::model::Protocol;
use podfence_control::probe::{Endpoint, Probe};

use super::netns::in_netns;
use super::sctp::{SctpArrival, sctp_probe};
use super::sockets::{bind_fd, family, new_socket, sockaddr};
use super::{ProbeOutcome, Testbed, TestbedError, io_err};

impl Testbed {
    /// The namespace and addresses of an endpoint.
    fn endpoint(&self, e: &Endpoint) -> Result<(&str, Vec<IpAddr>), TestbedError> {
        match e {
            Endpoint::Pod { namespace, name } => {
                let key = format!("{namespace}/{name}");
                let pod = self.pods.get(&key).ok_or(TestbedError::UnknownPod(key))?;
                Ok((&pod.netns, pod.ips.clone()))
            }
            // A Service address: the kernel's DNAT (kube-proxy's rules in
            // the node) or the agent picks the namespace.
            Endpoint::External(ip) if self.service_ips.contains(ip) => Ok((&self.node, vec![*ip])),
            Endpoint::External(ip) => {
                // A node's own address (its NodePorts): that node.
                let mut nodes = std::iter::once(self.node.as_str()).chain(self.remote.as_deref());
                if let Some(node) = nodes.find(|n| self.node_addresses(n, true).contains(ip)) {
                    Ok((node, vec![*ip]))
                } else if self.external.contains(ip) {
                    Ok((&self.outside, vec![*ip]))
                } else {
                    Err(TestbedError::UnknownExternal(*ip))
                }
            }
            Endpoint::Service { .. } => Err(TestbedError::Service(e.to_string())),
        }
    }

    /// Performs the probe for real and says whether the exchange completed
    /// (TCP or UDP answer received, SCTP INIT seen at the destination).
    pub fn probe(&self, probe: &Probe, timeout: Duration) -> Result<bool, TestbedError> {
        Ok(self.probe_outcome(probe, timeout)?.completed())
    }

    /// Performs the probe for real and says what happened.
    pub fn probe_outcome(
        &self,
        probe: &Probe,
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        self.probe_outcome_via(probe, None, timeout)
    }

    /// Performs the probe for real, sent to one of `via` (a Service address
    /// of each family whose only backend is the destination pod) instead of
    /// the destination's own address when given, and says what happened.
    /// An SCTP probe through a Service is watched for at the destination
    /// pod, whatever its source address became on the way (kube-proxy
    /// masquerades a pod reaching itself through its Service).
    pub fn probe_outcome_via(
        &self,
        probe: &Probe,
        via: Option<&[IpAddr]>,
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let (src_ns, src_ips) = self.endpoint(&probe.src)?;
        let (dst_ns, dst_ips) = self.endpoint(&probe.dst)?;
        let no_family = || TestbedError::NoCommonFamily {
            src: probe.src.to_string(),
            dst: probe.dst.to_string(),
        };
        let (src, dst) = common_family(&src_ips, &dst_ips).ok_or_else(no_family)?;
        let send_to = match via {
            Some(via) => *via
                .iter()
                .find(|a| a.is_ipv4() == dst.is_ipv4())
                .ok_or_else(no_family)?,
            None => dst,
        };
        let what = || format!("probe {probe}");
        match probe.protocol {
            Protocol::Tcp => in_netns(src_ns, || {
                tcp_probe(SocketAddr::new(src, 0), send_to, probe.port, timeout)
            })
            .map_err(io_err(what())),
            Protocol::Udp => in_netns(src_ns, || udp_probe((src, 0), send_to, probe.port, timeout))
                .map_err(io_err(what())),
            Protocol::Sctp => {
                if via.is_none()
                    && matches!(probe.dst, Endpoint::External(ip) if self.service_ips.contains(&ip))
                {
                    return Err(TestbedError::Unsupported(format!(
                        "probe {probe}: an SCTP probe watches for its INIT at the destination, \
                         which a Service address does not name"
                    )));
                }
                let seen = SctpArrival {
                    src: via.is_none().then_some(src),
                    dst,
                };
                sctp_probe(src_ns, dst_ns, (src, send_to), seen, probe.port, timeout)
                    .map_err(io_err(what()))
            }
        }
    }

    /// A TCP connection or UDP exchange from the node namespace itself (the
    /// node's own traffic, source chosen by the kernel) to `dst`: what
    /// answered.
    pub fn probe_from_node(
        &self,
        protocol: Protocol,
        dst: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let any = if dst.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let what = || format!("{protocol} from the node to {}", SocketAddr::new(dst, port));
        match protocol {
            Protocol::Tcp => in_netns(&self.node, || {
                tcp_probe(SocketAddr::new(any, 0), dst, port, timeout)
            })
            .map_err(io_err(what())),
            Protocol::Udp => in_netns(&self.node, || udp_probe((any, 0), dst, port, timeout))
                .map_err(io_err(what())),
            Protocol::Sctp => Err(TestbedError::Unsupported(format!(
                "{}: no SCTP probe from the node",
                what()
            ))),
        }
    }

    /// A TCP connection from any namespace `netns` (a pod the testbed did
    /// not build, such as one a CNI chain wired; source address chosen by
    /// its routes) to `dst:port`: what answered.
    pub fn tcp_probe_from(
        netns: &str,
        dst: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let any = if dst.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        in_netns(netns, || {
            tcp_probe(SocketAddr::new(any, 0), dst, port, timeout)
        })
        .map_err(io_err(format!(
            "TCP from {netns} to {}",
            SocketAddr::new(dst, port)
        )))
    }

    /// A TCP exchange from a fixed source port (what a client that reuses
    /// its port after the server closed does): what answered.
    pub fn tcp_exchange(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
        ports: (u16, u16),
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        self.exchange_from_port(Protocol::Tcp, src, dst, ports, timeout)
    }

    /// A UDP exchange from a fixed source port, so that repeated calls are
    /// one flow (one conntrack entry) and not one connection each.
    pub fn udp_exchange(
        &self,
        src: &Endpoint,
        dst: &Endpoint,
        ports: (u16, u16),
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        self.exchange_from_port(Protocol::Udp, src, dst, ports, timeout)
    }

    /// A TCP or UDP exchange from source port `ports.0` to `ports.1`.
    fn exchange_from_port(
        &self,
        protocol: Protocol,
        src: &Endpoint,
        dst: &Endpoint,
        ports: (u16, u16),
        timeout: Duration,
    ) -> Result<ProbeOutcome, TestbedError> {
        let (src_ns, src_ips) = self.endpoint(src)?;
        let (_, dst_ips) = self.endpoint(dst)?;
        let (s, d) =
            common_family(&src_ips, &dst_ips).ok_or_else(|| TestbedError::NoCommonFamily {
                src: src.to_string(),
                dst: dst.to_string(),
            })?;
        in_netns(src_ns, || match protocol {
            Protocol::Tcp => tcp_probe(SocketAddr::new(s, ports.0), d, ports.1, timeout),
            Protocol::Udp => udp_probe((s, ports.0), d, ports.1, timeout),
            Protocol::Sctp => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an exchange from a fixed port is TCP or UDP",
            )),
        })
        .map_err(io_err(format!(
            "{protocol} from {src} port {} to {dst} port {}",
            ports.0, ports.1
        )))
    }

    /// Runs probes on up to `parallelism` threads; whether each exchange
    /// completed, in input order.
    #[must_use]
    pub fn probe_all(
        &self,
        probes: &[Probe],
        timeout: Duration,
        parallelism: usize,
    ) -> Vec<Result<bool, TestbedError>> {
        self.probe_all_outcomes(probes, timeout, parallelism)
            .into_iter()
            .map(|r| r.map(|o| o.completed()))
            .collect()
    }

    /// Runs probes on up to `parallelism` threads; what each saw, in input
    /// order.
    #[must_use]
    pub fn probe_all_outcomes(
        &self,
        probes: &[Probe],
        timeout: Duration,
        parallelism: usize,
    ) -> Vec<Result<ProbeOutcome, TestbedError>> {
        self.probe_all_outcomes_via(probes, &|_| None, timeout, parallelism)
    }

    /// [`Self::probe_all_outcomes`], each probe sent to the addresses `via`
    /// gives it, if any (see [`Self::probe_outcome_via`]).
    #[must_use]
    pub fn probe_all_outcomes_via<'v>(
        &self,
        probes: &[Probe],
        via: &(dyn Fn(&Probe) -> Option<&'v [IpAddr]> + Sync),
        timeout: Duration,
        parallelism: usize,
    ) -> Vec<Result<ProbeOutcome, TestbedError>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<ProbeOutcome, TestbedError>>>> =
            Mutex::new((0..probes.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..parallelism.max(1).min(probes.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = probes.get(i) else { break };
                        let r = self.probe_outcome_via(p, via(p), timeout);
                        results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .map(|r| r.expect("every probe ran"))
            .collect()
    }
}

/// The first pair of addresses of one family.
fn common_family(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    src.iter().find_map(|s| {
        dst.iter()
            .find(|d| d.is_ipv4() == s.is_ipv4())
            .map(|d| (*s, *d))
    })
}

fn tcp_probe(
    src: SocketAddr,
    dst: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<ProbeOutcome> {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect_from(src, SocketAddr::new(dst, port), timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(ProbeOutcome::Refused),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(ProbeOutcome::NoAnswer),
        Err(e) => return Err(e),
    };
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok(if reply.is_empty() {
        ProbeOutcome::NoAnswer
    } else {
        ProbeOutcome::Answered(String::from_utf8_lossy(&reply).into_owned())
    })
}
/// A TCP connection from `src` (bound first, so the outside namespace with
/// several addresses sends from the right one; a port other than 0 is
/// bound with `SO_REUSEADDR`, so that it can be reused at once).
fn connect_from(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let fd = new_socket(
        family(src.ip()),
        libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
        libc::IPPROTO_TCP,
    )?;
    if src.port() != 0 {
        let one: libc::c_int = 1;
        // SAFETY: `one` is valid for reads of an int during the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    bind_fd(&fd, src)?;
    let (sa, len) = sockaddr(dst);
    // SAFETY: `sa` is a valid socket address of `len` bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut err: libc::c_int = 0;
        let mut elen = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `elen` are valid for getsockopt to write an int.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &raw mut elen,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn udp_probe(
    src: (IpAddr, u16),
    dst: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<ProbeOutcome> {
    let sock = UdpSocket::bind(SocketAddr::new(src.0, src.1))?;
    sock.connect(SocketAddr::new(dst, port))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    // Resend a few times: the first datagram may wait on neighbour state.
    let resend = timeout / 4;
    loop {
        match sock.send(b"probe") {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(ProbeOutcome::Refused);
            }
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ProbeOutcome::NoAnswer);
        }
        sock.set_read_timeout(Some(left.min(resend).max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                return Ok(ProbeOutcome::Answered(
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(ProbeOutcome::Refused);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}
