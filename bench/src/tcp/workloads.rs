//! The workloads of `podfence-bench tcp`, as users measure a CNI: iperf3
//! (TCP stream, UDP stream) and sockperf (request/response) run in the pod
//! namespaces with `ip netns exec`, their output parsed; the connection
//! rate with small clients and a server of our own (threads that entered
//! the pod namespaces), since netperf's TCP_CRR is not packaged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{CpuSpan, TcpError, timed};
use crate::testbed::{enter_netns, in_netns};

/// Bytes of a request and of a response (request/response, connection rate).
pub const MESSAGE: usize = 64;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// iperf3, one TCP stream.
    Stream1,
    /// iperf3, four TCP streams.
    Stream4,
    /// sockperf ping-pong over one TCP connection.
    Rr,
    /// Connect, request, response, close, by several clients.
    Crr,
    /// iperf3, one UDP stream, flat out.
    Udp,
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Self; 5] = [Self::Stream1, Self::Stream4, Self::Rr, Self::Crr, Self::Udp];

    /// Its name on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream1 => "stream1",
            Self::Stream4 => "stream4",
            Self::Rr => "rr",
            Self::Crr => "crr",
            Self::Udp => "udp",
        }
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Whether it moves a stream of bytes (CPU per GB applies).
    #[must_use]
    pub fn streams(self) -> bool {
        matches!(self, Self::Stream1 | Self::Stream4 | Self::Udp)
    }

    /// One line on what it is.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Stream1 => "TCP stream, 1 connection (iperf3)",
            Self::Stream4 => "TCP stream, 4 connections (iperf3 -P 4)",
            Self::Rr => {
                "TCP request/response, 64 bytes each way, 1 connection (sockperf ping-pong)"
            }
            Self::Crr => "TCP connect, 64-byte request, response, close, per second (Rust clients)",
            Self::Udp => "UDP stream, flat out (iperf3 -u -b 0): what arrives",
        }
    }
}

/// What a stream moved (iperf3's end summary).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamResult {
    /// Bytes the client sent.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// The receiver's measuring time, seconds.
    pub seconds: f64,
    /// TCP retransmissions (sender), when iperf3 reports them.
    pub retransmits: Option<u64>,
    /// UDP: datagrams sent and lost (`None` for TCP).
    pub udp_packets: Option<(u64, u64)>,
    /// Parallel streams.
    pub streams: u64,
    /// iperf3's block (write or datagram) size, bytes.
    pub block: u64,
}

impl StreamResult {
    /// Received bits per second, in billions.
    #[must_use]
    pub fn gbps(&self) -> f64 {
        self.bytes_received as f64 * 8.0 / self.seconds.max(1e-9) / 1e9
    }
}

/// Parses iperf3's `--json` output (the client's).
pub fn parse_iperf3(text: &str) -> Result<StreamResult, TcpError> {
    let bad = |what: &str| TcpError::Tool(format!("iperf3 JSON: {what}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(TcpError::Tool(format!("iperf3: {e}")));
    }
    let end = v.get("end").ok_or_else(|| bad("no `end`"))?;
    let u = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64);
    let sent = end
        .get("sum_sent")
        .ok_or_else(|| bad("no `end.sum_sent`"))?;
    let received = end
        .get("sum_received")
        .ok_or_else(|| bad("no `end.sum_received`"))?;
    let test_start = v.pointer("/start/test_start");
    let udp = test_start
        .and_then(|t| t.get("protocol"))
        .and_then(Value::as_str)
        == Some("UDP");
    let udp_packets = if udp {
        let sum = end.get("sum").ok_or_else(|| bad("no `end.sum` (UDP)"))?;
        Some((
            u(sum, "packets").ok_or_else(|| bad("no packets"))?,
            u(sum, "lost_packets").ok_or_else(|| bad("no lost_packets"))?,
        ))
    } else {
        None
    };
    Ok(StreamResult {
        bytes_sent: u(sent, "bytes").ok_or_else(|| bad("no sent bytes"))?,
        bytes_received: u(received, "bytes").ok_or_else(|| bad("no received bytes"))?,
        seconds: received
            .get("seconds")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no seconds"))?,
        retransmits: u(sent, "retransmits"),
        udp_packets,
        streams: test_start.and_then(|t| u(t, "num_streams")).unwrap_or(1),
        block: test_start.and_then(|t| u(t, "blksize")).unwrap_or(0),
    })
}

/// What request/response measured (sockperf ping-pong, round trips).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RrResult {
    /// Median round trip, microseconds.
    pub p50_us: f64,
    /// 99th percentile round trip, microseconds.
    pub p99_us: f64,
    /// Round trips completed in the measured part.
    pub transactions: u64,
    /// The measured part, seconds.
    pub seconds: f64,
}

impl RrResult {
    /// Transactions per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        self.transactions as f64 / self.seconds.max(1e-9)
    }
}

/// Parses `sockperf ping-pong --full-rtt` output (colour codes and all).
pub fn parse_sockperf(text: &str) -> Result<RrResult, TcpError> {
    let bad = |what: &str| TcpError::Tool(format!("sockperf output: {what}"));
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    };
    let mut r = RrResult::default();
    let (mut p50, mut p99, mut valid) = (None, None, None);
    for line in plain.lines() {
        if line.contains("[Valid Duration]") {
            valid = Some((
                field(line, "RunTime=").and_then(|v| v.parse::<f64>().ok()),
                field(line, "ReceivedMessages=").and_then(|v| v.parse::<u64>().ok()),
            ));
        } else if let Some((_, v)) = line.split_once("percentile 50.000 =") {
            p50 = v.trim().parse().ok();
        } else if let Some((_, v)) = line.split_once("percentile 99.000 =") {
            p99 = v.trim().parse().ok();
        }
    }
    let (Some(seconds), Some(received)) = valid.ok_or_else(|| bad("no [Valid Duration] line"))?
    else {
        return Err(bad("[Valid Duration] without RunTime or ReceivedMessages"));
    };
    r.seconds = seconds;
    r.transactions = received;
    r.p50_us = p50.ok_or_else(|| bad("no 50th percentile"))?;
    r.p99_us = p99.ok_or_else(|| bad("no 99th percentile"))?;
    Ok(r)
}

/// What the connection-rate clients did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrrResult {
    /// Connect, request, response, close completed.
    pub transactions: u64,
    /// Attempts that failed (connect refused or timed out, short answer).
    pub failures: u64,
    /// Seconds the clients ran.
    pub seconds: f64,
    /// Clients.
    pub clients: usize,
}

impl CrrResult {
    /// Transactions per second.
    #[must_use]
    pub fn per_second(&self) -> f64 {
        self.transactions as f64 / self.seconds.max(1e-9)
    }
}

/// A command in network namespace `netns`.
fn in_ns(netns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).args(args);
    c
}

/// A server process in a pod namespace; killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    what: String,
}

impl ServerProcess {
    /// Starts `args` in `netns` and waits until something listens on TCP
    /// `port` there.
    pub fn start(netns: &str, args: &[&str], port: u16) -> Result<Self, TcpError> {
        let child = in_ns(netns, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TcpError::Tool(format!("{}: {e}", args[0])))?;
        let mut server = Self {
            child,
            what: args[0].to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !listening(netns, port) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(TcpError::Tool(format!(
                    "{} server exited: {status}",
                    server.what
                )));
            }
            if Instant::now() > deadline {
                return Err(TcpError::Tool(format!(
                    "{} server: nothing listens on port {port} after 5 s",
                    server.what
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a TCP socket listens on `port` in `netns` (its /proc/net/tcp,
/// seen by a thread in it).
fn listening(netns: &str, port: u16) -> bool {
    let tables = in_netns(netns, || {
        let mut s = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
        s.push_str(&std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default());
        Ok(s)
    });
    tables.is_ok_and(|t| {
        let local = format!(":{port:04X}");
        // Fields: slot, local address, remote address, state (0A: LISTEN).
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().take(4).collect();
            f.len() == 4 && f[1].ends_with(&local) && f[3] == "0A"
        })
    })
}

/// Runs `args` in `netns` to completion (killed after `limit`); its
/// standard output.
fn run_client(netns: &str, args: &[&str], limit: Duration) -> Result<String, TcpError> {
    let mut child = in_ns(netns, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TcpError::Tool(format!("{}: {e}", args[0])))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| TcpError::Tool(format!("{}: {e}", args[0])))?
        {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    match status {
        None => Err(TcpError::Tool(format!(
            "`{}` still ran after {limit:?}; killed",
            args.join(" ")
        ))),
        // iperf3 reports its errors in the JSON, with a failing status.
        Some(s) if !s.success() && !out.trim_start().starts_with('{') => Err(TcpError::Tool(
            format!("`{}`: {s}: {}", args.join(" "), err.trim()),
        )),
        Some(_) => Ok(out),
    }
}

/// Whole seconds for tools that take no fractions (iperf3 3.12 reads
/// `-t 0.5` as 0, which means forever), at least 1.
#[must_use]
pub fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A stream workload (TCP with `streams` connections, or UDP flat out)
/// from `client_netns` to `dst:port`, where an iperf3 server runs in
/// `server_netns` for the run.
pub fn iperf3(
    client_netns: &str,
    server_netns: &str,
    to: SocketAddr,
    workload: Workload,
    duration: Duration,
) -> Result<(StreamResult, CpuSpan), TcpError> {
    let (port, p, dst) = (to.port(), to.port().to_string(), to.ip().to_string());
    let _server = ServerProcess::start(server_netns, &["iperf3", "-s", "-p", &p], port)?;
    let secs = whole_seconds(duration).to_string();
    let mut args = vec![
        "iperf3", "-c", &dst, "-p", &p, "-t", &secs, "-i", "0", "--json",
    ];
    match workload {
        Workload::Stream4 => args.extend(["-P", "4"]),
        Workload::Udp => args.extend(["-u", "-b", "0"]),
        _ => {}
    }
    timed(|| {
        parse_iperf3(&run_client(
            client_netns,
            &args,
            duration + Duration::from_secs(15),
        )?)
    })
}

/// Request/response: sockperf ping-pong over TCP, 64-byte messages, round
/// trips (`--full-rtt`).
pub fn sockperf(
    client_netns: &str,
    server_netns: &str,
    to: SocketAddr,
    duration: Duration,
) -> Result<(RrResult, CpuSpan), TcpError> {
    let (port, p, ip) = (to.port(), to.port().to_string(), to.ip().to_string());
    let _server = ServerProcess::start(
        server_netns,
        &[
            "sockperf",
            "sr",
            "--tcp",
            "--uc-reuseaddr",
            "-i",
            &ip,
            "-p",
            &p,
        ],
        port,
    )?;
    let secs = whole_seconds(duration).to_string();
    let m = MESSAGE.to_string();
    timed(|| {
        parse_sockperf(&run_client(
            client_netns,
            &[
                "sockperf",
                "ping-pong",
                "--tcp",
                "-i",
                &ip,
                "-p",
                &p,
                "-t",
                &secs,
                "-m",
                &m,
                "--full-rtt",
            ],
            duration + Duration::from_secs(15),
        )?)
    })
}

/// How often the server threads look at their stop flag.
const POLL_MS: i32 = 50;

/// Waits up to [`POLL_MS`] for `fd` to be readable.
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut p, 1, POLL_MS) > 0 }
}

/// The request/response server of the connection rate: `threads` threads
/// accepting on one listener; each connection gets one response to its
/// request, then is closed after the client closed.
struct CrrServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CrrServer {
    fn start(netns: &str, at: SocketAddr, threads: usize) -> Result<Self, TcpError> {
        let listener = in_netns(netns, || {
            let l = TcpListener::bind(at)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(|e| TcpError::Tool(format!("listening on {at} in {netns}: {e}")))?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            let h = std::thread::Builder::new()
                .name(format!("tcp-crr-srv-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if !readable(listener.as_raw_fd()) {
                            continue;
                        }
                        if let Ok((conn, _)) = listener.accept() {
                            let _ = answer(conn);
                        }
                    }
                })
                .map_err(|e| TcpError::Tool(format!("server thread: {e}")))?;
            handles.push(h);
        }
        Ok(Self {
            stop,
            threads: handles,
        })
    }
}

impl Drop for CrrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request in, one response out, then wait for the client to close.
fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; MESSAGE];
    conn.read_exact(&mut buf)?;
    conn.write_all(&buf)?;
    let _ = conn.read(&mut buf)?;
    Ok(())
}

/// One connect, request, response, close.
fn transaction(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    let request = [0x5au8; MESSAGE];
    s.write_all(&request)?;
    let mut response = [0u8; MESSAGE];
    s.read_exact(&mut response)?;
    if response != request {
        return Err(std::io::Error::other("wrong response"));
    }
    Ok(())
}

/// The connection rate: `clients` threads in `client_netns`, each doing
/// connect, request, response, close to `to` for `duration`, against a
/// server in `server_netns`. Only completed transactions count.
pub fn crr(
    client_netns: &str,
    server_netns: &str,
    to: SocketAddr,
    clients: usize,
    duration: Duration,
) -> Result<(CrrResult, CpuSpan), TcpError> {
    let _server = CrrServer::start(server_netns, to, clients)?;
    timed(|| crr_clients(client_netns, to, clients, duration))
}

/// The clients of [`crr`].
fn crr_clients(
    client_netns: &str,
    to: SocketAddr,
    clients: usize,
    duration: Duration,
) -> Result<CrrResult, TcpError> {
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for i in 0..clients.max(1) {
        let (done, failed, netns) = (
            Arc::clone(&done),
            Arc::clone(&failed),
            client_netns.to_owned(),
        );
        let h = std::thread::Builder::new()
            .name(format!("tcp-crr-cli-{i}"))
            .spawn(move || -> std::io::Result<()> {
                enter_netns(&netns)?;
                while Instant::now() < deadline {
                    if transaction(to, Duration::from_secs(1)).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Refused or dropped: not a transaction. A short
                        // pause keeps a refusing path from spinning.
                        std::thread::sleep(Duration::from_millis(1));
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
            .map_err(|e| TcpError::Tool(format!("client thread: {e}")))?;
        handles.push(h);
    }
    for h in handles {
        h.join()
            .map_err(|_| TcpError::Tool("a client thread panicked".into()))?
            .map_err(|e| TcpError::Tool(format!("entering {client_netns}: {e}")))?;
    }
    Ok(CrrResult {
        transactions: done.load(Ordering::Relaxed),
        failures: failed.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        clients: clients.max(1),
    })
}

/// Whether one connect, request, response, close from `client_netns` to
/// `to` (a server listening in `server_netns`) completes within `timeout`.
pub fn reaches(
    client_netns: &str,
    server_netns: &str,
    to: SocketAddr,
    timeout: Duration,
) -> Result<bool, TcpError> {
    let _server = CrrServer::start(server_netns, to, 1)?;
    let ok = in_netns(client_netns, || Ok(transaction(to, timeout).is_ok()))
        .map_err(|e| TcpError::Tool(format!("entering {client_netns}: {e}")))?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_tcp_json_of_a_real_run_parses() {
        let r = parse_iperf3(include_str!("testdata/iperf3-tcp-2-streams.json")).unwrap();
        assert_eq!(r.streams, 2);
        assert_eq!(r.bytes_sent, 1_758_986_240);
        assert_eq!(r.bytes_received, 1_758_986_240);
        assert_eq!(r.retransmits, Some(8));
        assert_eq!(r.udp_packets, None);
        assert_eq!(r.block, 131_072);
        assert!((r.seconds - 1.000_775).abs() < 1e-9);
        assert!((r.gbps() - 14.061).abs() < 0.01, "{}", r.gbps());
    }

    #[test]
    fn iperf3_udp_json_counts_what_arrived() {
        let r = parse_iperf3(include_str!("testdata/iperf3-udp.json")).unwrap();
        assert_eq!(r.bytes_sent, 479_528_000);
        assert_eq!(r.bytes_received, 137_617_200);
        assert_eq!(r.udp_packets, Some((342_520, 244_222)));
        assert_eq!(r.retransmits, None);
    }

    #[test]
    fn iperf3_errors_and_garbage_are_errors() {
        let e = parse_iperf3(r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(parse_iperf3("").is_err());
        assert!(parse_iperf3(r#"{"end": {"sum_sent": {"bytes": 1}}}"#).is_err());
        assert!(parse_iperf3("[1, 2").is_err());
    }

    #[test]
    fn sockperf_output_of_a_real_run_parses() {
        let r = parse_sockperf(include_str!("testdata/sockperf-pp-tcp.txt")).unwrap();
        assert_eq!(r.transactions, 45_549);
        assert!((r.seconds - 0.550).abs() < 1e-9);
        assert!((r.p50_us - 5.032).abs() < 1e-9);
        assert!((r.p99_us - 7.575).abs() < 1e-9);
        assert!((r.per_second() - 45_549.0 / 0.55).abs() < 1e-6);
        assert!(parse_sockperf("sockperf: Test ended\n").is_err());
    }

    #[test]
    fn workloads_round_trip_their_names_and_tools_get_whole_seconds() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert_eq!(Workload::parse("tcp_crr"), None);
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2_100)), 3);
    }
}
