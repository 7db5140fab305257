//! The servers every pod and external address runs: threads of this process
//! that entered the namespace and answer TCP and UDP with a fixed text.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
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
        reply: &str,
    ) -> Result<(), TestbedError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::clone(&self.stop);
        let (netns_owned, ips, ports, answer) = (
            netns.to_owned(),
            ips.to_vec(),
            ports.to_vec(),
            reply.to_owned(),
        );
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
    Udp(UdpSocket),
}

impl Server {
    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Udp(s) => s.as_raw_fd(),
        }
    }
}

fn bind_all(ips: &[IpAddr], ports: &[(Protocol, u16)]) -> io::Result<Vec<Server>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &ip in ips {
        for &(proto, port) in ports {
            if !seen.insert((ip, proto, port)) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            let with_addr = |e: io::Error| io::Error::new(e.kind(), format!("{proto} {addr}: {e}"));
            match proto {
                Protocol::Tcp => {
                    let l = TcpListener::bind(addr).map_err(with_addr)?;
                    l.set_nonblocking(true)?;
                    out.push(Server::Tcp(l));
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
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, SERVER_POLL_MS) };
        if n <= 0 {
            continue;
        }
        for (pfd, server) in fds.iter_mut().zip(sockets) {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            match server {
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
