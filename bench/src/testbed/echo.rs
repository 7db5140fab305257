//! A byte-exact TCP echo between two namespaces, for the live tests that
//! push bulk data through the datapath (jumbo frames, checksum offload).

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::netns::in_netns;

/// Position-dependent bytes (`seed` varies them), so that a lost, repeated
/// or reordered stretch shows.
#[must_use]
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ seed).wrapping_mul(2_654_435_761).to_be_bytes()[i % 4])
        .collect()
}

/// What a [`tcp_echo`] exchange gave.
#[derive(Debug)]
pub struct Echo {
    /// Bytes the server received (and sent back).
    pub server_received: u64,
    /// What came back to the client.
    pub back: Vec<u8>,
    /// The client connection's maximum segment size (`TCP_MAXSEG`).
    pub mss: u32,
}

/// Sends `data` over TCP from namespace `client` to `dst`, where a server
/// in namespace `server` (listening on `dst`'s port) echoes it back; the
/// client sends and reads at once, so the transfer runs both ways.
pub fn tcp_echo(server: &str, client: &str, dst: SocketAddr, data: &[u8]) -> io::Result<Echo> {
    let listener = in_netns(server, || TcpListener::bind(("0.0.0.0", dst.port())))?;
    let echo_server = std::thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut writer = conn.try_clone()?;
        io::copy(&mut conn, &mut writer)
    });
    let stream = in_netns(client, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mss = mss(&stream)?;
    let sent = data.to_vec();
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::with_capacity(data.len());
    (&stream).read_to_end(&mut back)?;
    joined(sender.join())?;
    let server_received = joined(echo_server.join())?;
    Ok(Echo {
        server_received,
        back,
        mss,
    })
}

/// A thread's result, a panic as an error.
fn joined<T>(result: std::thread::Result<io::Result<T>>) -> io::Result<T> {
    result.unwrap_or_else(|_| Err(io::Error::other("echo thread panicked")))
}

/// The connection's maximum segment size (`TCP_MAXSEG`).
fn mss(stream: &TcpStream) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of their sizes for the
    // duration of the call; the fd is the stream's open socket.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(value).map_err(|_| io::Error::other("negative TCP_MAXSEG"))
}
