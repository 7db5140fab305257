//! The servers every pod and external address runs: threads of this process
//! that entered the namespace and answer TCP and UDP with a fixed text (on
//! session ports, every message of a connection kept open).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use podfence_control::model::Protocol;

use super::netns::enter_netns;
use super::{Testbed, TestbedError, io_err};

/// How often server threads look at their stop flag.
const SERVER_POLL_MS: i32 = 50;

impl Testbed {
    pub(super) fn start_server(
        &mut self,
        netns: &str,
        ips: &[IpAddr],
        ports: &[(Protocol, u16)],
        session_ports: &[u16],
        reply: &str,
    ) -> Result<(), TestbedError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::clone(&self.stop);
        let (netns_owned, ips, answer) = (netns.to_owned(), ips.to_vec(), reply.to_owned());
        // (protocol, port, session): a session port is one whatever else
        // the pod has on it.
        let mut ports: Vec<(Protocol, u16, bool)> = ports
            .iter()
            .filter(|&&(p, n)| p != Protocol::Tcp || !session_ports.contains(&n))
            .map(|&(p, n)| (p, n, false))
            .collect();
        ports.extend(session_ports.iter().map(|&n| (Protocol::Tcp, n, true)));
        let handle = std::thread::Builder::new()
            .name(format!("srv-{reply}"))
            .spawn(move || {
                let sockets = enter_netns(&netns_owned).and_then(|()| bind_all(&ips, &ports));
                match sockets {
                    Ok(sockets) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(&sockets, answer.as_bytes(), &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(io_err("spawning a server thread"))?;
        self.servers.push(handle);
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread died")))
            .map_err(io_err(format!(
                "starting the servers of {reply} in {netns}"
            )))
    }
}

// ---------------------------------------------------------------- servers --

enum Server {
    Tcp(TcpListener),
    /// Keeps accepted connections open, answering each message.
    Session(TcpListener),
    Udp(UdpSocket),
}

impl Server {
    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(l) | Self::Session(l) => l.as_raw_fd(),
            Self::Udp(s) => s.as_raw_fd(),
        }
    }
}

/// Binds every (protocol, port, session) on every address.
fn bind_all(ips: &[IpAddr], ports: &[(Protocol, u16, bool)]) -> io::Result<Vec<Server>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &ip in ips {
        for &(proto, port, session) in ports {
            if !seen.insert((ip, proto, port)) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("{proto} {addr}: {e}"));
            match proto {
                Protocol::Tcp => {
                    let l = TcpListener::bind(addr).map_err(with_addr)?;
                    l.set_nonblocking(true)?;
                    out.push(if session {
                        Server::Session(l)
                    } else {
                        Server::Tcp(l)
                    });
                }
                Protocol::Udp => {
                    let s = UdpSocket::bind(addr).map_err(with_addr)?;
                    s.set_nonblocking(true)?;
                    out.push(Server::Udp(s));
                }
                // No SCTP in this kernel: probes watch for the INIT instead.
                Protocol::Sctp => {}
            }
        }
    }
    Ok(out)
}

fn serve(sockets: &[Server], reply: &[u8], stop: &AtomicBool) {
    let pollfd = |fd: RawFd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds: Vec<libc::pollfd> = sockets.iter().map(|s| pollfd(s.fd())).collect();
    // Open session connections, polled after the listening sockets.
    let mut sessions: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        fds.truncate(sockets.len());
        fds.extend(sessions.iter().map(|s| pollfd(s.as_raw_fd())));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, SERVER_POLL_MS) };
        if n <= 0 {
            continue;
        }
        // Sessions first (indices shift as they close), then listeners.
        let mut i = sessions.len();
        while i > 0 {
            i -= 1;
            if fds[sockets.len() + i].revents == 0 {
                continue;
            }
            let open = match sessions[i].read(&mut buf) {
                Ok(0) => false,
                Ok(_) => sessions[i].write_all(reply).is_ok(),
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if !open {
                sessions.swap_remove(i);
            }
        }
        for (pfd, server) in fds.iter_mut().zip(sockets) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            match server {
                Server::Session(l) => {
                    while let Ok((stream, _)) = l.accept() {
                        // Answers are a few bytes: a nonblocking write of
                        // one fits in any socket buffer.
                        if stream.set_nonblocking(true).is_ok() {
                            sessions.push(stream);
                        }
                    }
                }
                Server::Tcp(l) => {
                    while let Ok((mut stream, _)) = l.accept() {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                        let _ = stream.write_all(reply);
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                Server::Udp(s) => {
                    while let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(reply, peer);
                    }
                }
            }
        }
    }
}
