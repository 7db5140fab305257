//! Replay speed: `podfence replay` on a large capture, next to tcpdump and
//! tshark reading the same file on the same machine.
//!
//! Why it exists: a replay rate on its own (the `classify` benchmark's last
//! row) does not tell someone with a directory of captures whether podfence
//! keeps up with the tools they already run over them. This puts the
//! numbers side by side, measured the same way: each tool is a child
//! process timed by the wall clock from spawn to exit, standard output to
//! `/dev/null`, and the tools take turns (A B C D A B C D ...) so that drift
//! in this machine's speed hits all of them alike.
//!
//! - `podfence replay --manifests DIR FILE`: parse, connection tracking,
//!   policy on every new connection, a summary (its `--json` one, read back
//!   for the packet count and podfence's own rate, which leaves out loading
//!   and compiling the manifests);
//! - `tcpdump -r FILE -w /dev/null`: read and rewrite every packet, no
//!   decoding (libpcap's reading speed);
//! - `tcpdump -n -r FILE`: decode and print one line per packet. On pod
//!   traffic this is slow for a reason of tcpdump's own: it keeps every
//!   address it prints in a 4,096-bucket table indexed by the low twelve
//!   bits of the address as stored in memory, which on a little-endian
//!   machine are the first octet and half the second, so all the addresses
//!   of a /16 pod network (10.128.0.0/16 here, 10.244.0.0/16 in kind and
//!   flannel clusters) share one bucket and every packet walks a list of
//!   them (about 10× slower than the same packets with their addresses
//!   reversed);
//! - `tshark -n -r FILE -c N`: dissect and print one line per packet, on
//!   the first N packets only (it is an order of magnitude slower);
//! - `tshark -q -r FILE -c N`: the same packets read, not dissected (with
//!   `-q` and no statistics asked for, tshark skips dissection), which
//!   shows what of tshark's time is dissection.
//!
//! Before the rounds, `tcpdump --count -r FILE` (untimed) checks that tcpdump
//! reads as many packets as were written, and puts the file in the page
//! cache.
//!
//! The inputs are generated once into a temporary directory that is removed
//! when the [`Workload`] is dropped (also on error): the synthetic cluster
//! ([`crate::synthetic`]) as one JSON `kind: List` manifest, and a pcap of
//! its traffic built with the frames of [`crate::pipeline`]. The traffic is
//! connection attempts of the synthetic mix, three allowed for every one
//! denied ([`crate::pipeline::mixed_attempts`]), each played out as a whole
//! exchange:
//!
//! - allowed TCP, 10 packets: SYN, SYN-ACK, ACK, a request and its ACK, a
//!   response and its ACK, FIN-ACK both ways, the last ACK;
//! - allowed UDP, 2: a query and its answer;
//! - allowed SCTP, 9: INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, SACK,
//!   SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE;
//! - a denied attempt, 2: its first packet and one retransmission.
//!
//! 4,096 connections are in flight at once, their packets interleaved at
//! random; the capture ends where the packet count is reached, cutting off
//! the connections still open. Every frame is 64 bytes on the wire, and
//! timestamps rise by 0.5 to 1.5 µs per packet (a capture of about 1 Mpps),
//! so no connection times out during the replay. With the default
//! cluster that is about one connection attempt per 7 packets, a quarter of
//! them denied; 17 % of the packets open a connection (or retransmit an
//! opening) and are classified against the policies, 7 % are denied, and
//! 98 % are TCP (the policies allow little UDP and SCTP).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use podfence_control::compile::{CompileOptions, compile};
use podfence_control::index::Cluster;
use podfence_datapath::conntrack::tcp_flags::{ACK, FIN, SYN};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::PortError;
use podfence_datapath::ports::capture::CaptureWriter;
use podfence_datapath::{IpProtocol, Tables};
use serde_json::{Value, json};

use crate::pipeline::{frame_into, mixed_attempts};
use crate::propagation::{namespace_json, pod_json, policy_json};
use crate::synthetic::{self, Attempt, Rng, Shape};

/// TCP PSH (the datapath's flag list has no use for it).
const PSH: u8 = 0x08;
/// Connections in flight at once in the generated traffic.
const IN_FLIGHT: usize = 4096;
/// Time of the first packet: 2026-01-01T00:00:00Z.
const START_NS: u64 = 1_767_225_600 * 1_000_000_000;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The podfence binary is not where it was looked for.
    #[error(
        "no podfence binary at {0}: build it with `cargo build --release -p podfence-control` \
         (or name one with --podfence PATH)"
    )]
    NoPodfence(PathBuf),
    /// A file or directory of the workload could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The capture could not be written.
    #[error("writing the capture: {0}")]
    Capture(#[from] PortError),
    /// A tool could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: io::Error,
    },
    /// A tool failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// A tool's output is not what it should be.
    #[error("`{command}`: {message}")]
    Output {
        /// The command line.
        command: String,
        /// What is wrong.
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

// ------------------------------------------------------------- workload --

/// One packet of a connection's exchange.
#[derive(Clone, Copy, Debug)]
struct Step {
    /// Sent by the responder.
    reply: bool,
    /// TCP flags.
    flags: u8,
    /// SCTP chunk type.
    chunk: u8,
}

const fn out(flags: u8, chunk: u8) -> Step {
    Step {
        reply: false,
        flags,
        chunk,
    }
}

const fn back(flags: u8, chunk: u8) -> Step {
    Step {
        reply: true,
        flags,
        chunk,
    }
}

const TCP_ALLOWED: [Step; 10] = [
    out(SYN, 0),
    back(SYN | ACK, 0),
    out(ACK, 0),
    out(PSH | ACK, 0),
    back(ACK, 0),
    back(PSH | ACK, 0),
    out(ACK, 0),
    out(FIN | ACK, 0),
    back(FIN | ACK, 0),
    out(ACK, 0),
];
const UDP_ALLOWED: [Step; 2] = [out(0, 0), back(0, 0)];
/// INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, SACK, SHUTDOWN, SHUTDOWN
/// ACK, SHUTDOWN COMPLETE.
const SCTP_ALLOWED: [Step; 9] = [
    out(0, 1),
    back(0, 2),
    out(0, 10),
    back(0, 11),
    out(0, 0),
    back(0, 3),
    out(0, 7),
    back(0, 8),
    out(0, 14),
];
const TCP_DENIED: [Step; 2] = [out(SYN, 0); 2];
const UDP_DENIED: [Step; 2] = [out(0, 0); 2];
const SCTP_DENIED: [Step; 2] = [out(0, 1); 2];

fn exchange(protocol: IpProtocol, allowed: bool) -> &'static [Step] {
    match (protocol, allowed) {
        (IpProtocol::UDP, true) => &UDP_ALLOWED,
        (IpProtocol::UDP, false) => &UDP_DENIED,
        (IpProtocol::SCTP, true) => &SCTP_ALLOWED,
        (IpProtocol::SCTP, false) => &SCTP_DENIED,
        (_, true) => &TCP_ALLOWED,
        (_, false) => &TCP_DENIED,
    }
}

/// A connection being played out.
#[derive(Clone, Copy, Debug)]
struct Connection {
    attempt: Attempt,
    src_port: u16,
    allowed: bool,
    steps: &'static [Step],
    next: usize,
}

/// What the generated capture holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mix {
    /// Packets.
    pub packets: u64,
    /// Connection attempts begun (those still open at the end are cut off).
    pub connections: u64,
    /// Of those, attempts the policies deny.
    pub connections_denied: u64,
    /// Packets of denied attempts: what a replay drops.
    pub packets_denied: u64,
    /// First packets of attempts and their retransmissions: the packets a
    /// replay classifies against the policies.
    pub opening_packets: u64,
    /// TCP packets.
    pub tcp_packets: u64,
    /// UDP packets.
    pub udp_packets: u64,
    /// SCTP packets.
    pub sctp_packets: u64,
}

impl Mix {
    /// Counts the next packet of `connection`.
    fn count(&mut self, connection: &Connection) {
        if connection.next == 0 {
            self.connections += 1;
            self.connections_denied += u64::from(!connection.allowed);
        }
        self.packets += 1;
        self.packets_denied += u64::from(!connection.allowed);
        self.opening_packets += u64::from(!connection.allowed || connection.next == 0);
        match connection.attempt.protocol {
            IpProtocol::UDP => self.udp_packets += 1,
            IpProtocol::SCTP => self.sctp_packets += 1,
            _ => self.tcp_packets += 1,
        }
    }
}

/// The inputs of a measurement, in a temporary directory that is removed
/// on drop.
#[derive(Debug)]
pub struct Workload {
    dir: PathBuf,
    manifests: PathBuf,
    capture: PathBuf,
    shape: Shape,
    mix: Mix,
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new, empty directory of this process's under the system's temporary
/// directory.
fn create_temp_dir() -> Result<PathBuf, Error> {
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    loop {
        let dir = std::env::temp_dir().join(format!(
            "podfence-bench-replay-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
    }
}

impl Workload {
    /// Writes the manifests of the synthetic cluster of `shape` and a pcap
    /// of `packets` packets of its traffic (see the module documentation).
    pub fn generate(shape: Shape, packets: u64) -> Result<Self, Error> {
        let dir = create_temp_dir()?;
        // From here on, dropping `workload` (on error too) removes `dir`.
        let mut workload = Self {
            manifests: dir.join("manifests"),
            capture: dir.join("traffic.pcap"),
            dir,
            shape,
            mix: Mix::default(),
        };
        std::fs::create_dir(&workload.manifests).map_err(io_error(&workload.manifests))?;
        let cluster = synthetic::cluster(shape);
        write_manifests(&workload.manifests.join("cluster.json"), &cluster)?;
        let tables = compile(&cluster, &CompileOptions::default()).tables;
        workload.mix = write_capture(&workload.capture, shape, &tables, packets)?;
        Ok(workload)
    }

    /// The directory of manifests (for `--manifests`).
    #[must_use]
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// The capture.
    #[must_use]
    pub fn capture(&self) -> &Path {
        &self.capture
    }

    /// The cluster's size.
    #[must_use]
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// What the capture holds.
    #[must_use]
    pub fn mix(&self) -> &Mix {
        &self.mix
    }
}

/// The cluster as one `kind: List` of Kubernetes objects.
fn write_manifests(path: &Path, cluster: &Cluster) -> Result<(), Error> {
    let mut items: Vec<Value> = cluster
        .namespaces
        .values()
        .map(|n| namespace_json(n))
        .collect();
    items.extend(
        cluster
            .pods
            .values()
            .map(|p| pod_json(p, p.node.as_deref().unwrap_or("node-0"))),
    );
    items.extend(cluster.policies.values().map(|p| policy_json(p)));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let file = File::create(path).map_err(io_error(path))?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer(&mut writer, &list).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    writer.flush().map_err(io_error(path))
}

/// Writes `packets` packets of the cluster's traffic to a pcap at `path`.
fn write_capture(path: &Path, shape: Shape, tables: &Tables, packets: u64) -> Result<Mix, Error> {
    // Every attempt has at least two packets, and at most IN_FLIGHT are cut
    // off: this many attempts are never used up.
    let count = usize::try_from(packets / 2).unwrap_or(usize::MAX) + IN_FLIGHT;
    let attempts = mixed_attempts(tables, shape, count);
    let mut writer = CaptureWriter::create(path, LinkType::Ethernet)?;
    let mut slots: Vec<Option<Connection>> = vec![None; IN_FLIGHT];
    let mut rng = Rng::new(0x5eed);
    let mut mix = Mix::default();
    let (mut begun, mut timestamp_ns) = (0usize, START_NS);
    let mut frame = Vec::with_capacity(64);
    for _ in 0..packets {
        let slot = &mut slots[rng.below(IN_FLIGHT)];
        let connection = slot.get_or_insert_with(|| {
            let (attempt, src_port) = attempts[begun % attempts.len()];
            begun += 1;
            let allowed = tables
                .classify_v4(attempt.src, attempt.dst, attempt.protocol, attempt.port)
                .is_allowed();
            Connection {
                attempt,
                src_port,
                allowed,
                steps: exchange(attempt.protocol, allowed),
                next: 0,
            }
        });
        let step = connection.steps[connection.next];
        frame_into(
            &mut frame,
            &connection.attempt,
            connection.src_port,
            step.reply,
            step.flags,
            step.chunk,
        );
        timestamp_ns += 500 + rng.below(1001) as u64;
        writer.write(&frame, frame.len() as u32 + 4, timestamp_ns)?;
        mix.count(connection);
        connection.next += 1;
        if connection.next == connection.steps.len() {
            *slot = None;
        }
    }
    writer.finish()?;
    Ok(mix)
}

// ---------------------------------------------------------- measurement --

/// What is timed, in the order they take turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `podfence replay --json --manifests DIR FILE`.
    Podfence,
    /// `tcpdump -r FILE -w /dev/null`.
    TcpdumpRead,
    /// `tcpdump -n -r FILE`.
    TcpdumpPrint,
    /// `tshark -n -r FILE -c N`.
    Tshark,
    /// `tshark -q -r FILE -c N`.
    TsharkRead,
}

impl Tool {
    /// Every tool, in turn order.
    pub const ALL: [Self; 5] = [
        Self::Podfence,
        Self::TcpdumpRead,
        Self::TcpdumpPrint,
        Self::Tshark,
        Self::TsharkRead,
    ];

    /// The command, short.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Podfence => "podfence replay",
            Self::TcpdumpRead => "tcpdump -w /dev/null",
            Self::TcpdumpPrint => "tcpdump -n",
            Self::Tshark => "tshark -n",
            Self::TsharkRead => "tshark -q",
        }
    }

    /// What it does with every packet.
    #[must_use]
    pub fn work(self) -> &'static str {
        match self {
            Self::Podfence => "parse, track connections, apply policy",
            Self::TcpdumpRead => "read and rewrite, no decoding",
            Self::TcpdumpPrint => "decode, print one line per packet",
            Self::Tshark => "dissect, print one line per packet",
            Self::TsharkRead => "read only, no dissection (-q, no taps)",
        }
    }

    /// Its name in JSON keys.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Podfence => "podfence",
            Self::TcpdumpRead => "tcpdump_read",
            Self::TcpdumpPrint => "tcpdump_print",
            Self::Tshark => "tshark",
            Self::TsharkRead => "tshark_read",
        }
    }

    fn program(self, settings: &Settings) -> &Path {
        match self {
            Self::Podfence => &settings.podfence,
            Self::TcpdumpRead | Self::TcpdumpPrint => Path::new("tcpdump"),
            Self::Tshark | Self::TsharkRead => Path::new("tshark"),
        }
    }

    /// The command that reads `packets` packets of the workload's capture.
    fn command(self, workload: &Workload, settings: &Settings, packets: u64) -> Command {
        let mut command = Command::new(self.program(settings));
        match self {
            Self::Podfence => command
                .args(["replay", "--json", "--manifests"])
                .arg(workload.manifests())
                .arg(workload.capture()),
            Self::TcpdumpRead => command
                .arg("-r")
                .arg(workload.capture())
                .args(["-w", "/dev/null"]),
            Self::TcpdumpPrint => command.arg("-n").arg("-r").arg(workload.capture()),
            Self::Tshark => command
                .arg("-n")
                .arg("-r")
                .arg(workload.capture())
                .arg("-c")
                .arg(packets.to_string()),
            Self::TsharkRead => command
                .arg("-q")
                .arg("-r")
                .arg(workload.capture())
                .arg("-c")
                .arg(packets.to_string()),
        };
        command
    }
}

/// How to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The podfence binary.
    pub podfence: PathBuf,
    /// Rounds: each tool runs once per round.
    pub rounds: usize,
    /// Packets tshark reads (the first of the capture).
    pub tshark_packets: u64,
}

/// One tool's measurement.
#[derive(Clone, Debug)]
pub struct Row {
    /// The tool.
    pub tool: Tool,
    /// The first line of its `--version`; `None` when it is not installed.
    pub version: Option<String>,
    /// Packets it reads.
    pub packets: u64,
    /// Wall time of each round.
    pub times: Vec<Duration>,
}

impl Row {
    /// Seconds of each round.
    #[must_use]
    pub fn seconds(&self) -> Vec<f64> {
        self.times.iter().map(Duration::as_secs_f64).collect()
    }

    /// Millions of packets per second of each round.
    #[must_use]
    pub fn mpps(&self) -> Vec<f64> {
        self.seconds()
            .iter()
            .map(|s| self.packets as f64 / s / 1e6)
            .collect()
    }
}

/// What `podfence replay --json` printed.
#[derive(Clone, Debug, PartialEq)]
pub struct PodfenceSummary {
    /// Packets replayed.
    pub packets: u64,
    /// Packets that passed.
    pub allowed: u64,
    /// Packets dropped by policy.
    pub denied: u64,
    /// Connections picked up mid-stream.
    pub picked_up: u64,
    /// Time of the pipeline alone (after loading and compiling).
    pub seconds: f64,
    /// Its rate over that time.
    pub mpps: f64,
}

impl PodfenceSummary {
    fn parse(stdout: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(stdout).ok()?;
        Some(Self {
            packets: v["packets"].as_u64()?,
            allowed: v["allowed"].as_u64()?,
            denied: v["denied"].as_u64()?,
            picked_up: v["picked_up"].as_u64()?,
            seconds: v["seconds"].as_f64()?,
            mpps: v["mpps"].as_f64()?,
        })
    }
}

/// The machine measured on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub vcpus: usize,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This one, from `/proc`.
    #[must_use]
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, name: &str| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        };
        let cpu = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .unwrap_or_else(|| "unknown".to_owned());
        let listed = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count();
        let vcpus = if listed > 0 {
            listed
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Self { cpu, vcpus, kernel }
    }
}

/// Everything measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The cluster.
    pub shape: Shape,
    /// The capture's traffic.
    pub mix: Mix,
    /// The capture's size in bytes.
    pub capture_bytes: u64,
    /// One per tool, in [`Tool::ALL`] order.
    pub rows: Vec<Row>,
    /// podfence's summary of each round.
    pub summaries: Vec<PodfenceSummary>,
    /// What `tcpdump --count` read, when tcpdump is installed.
    pub tcpdump_count: Option<u64>,
    /// Where.
    pub machine: Machine,
}

impl Report {
    /// The row of `tool`.
    #[must_use]
    pub fn row(&self, tool: Tool) -> &Row {
        self.rows
            .iter()
            .find(|r| r.tool == tool)
            .expect("a row per tool")
    }

    /// podfence's own rate (the pipeline alone) of each round.
    #[must_use]
    pub fn podfence_own_mpps(&self) -> Vec<f64> {
        self.summaries.iter().map(|s| s.mpps).collect()
    }
}

/// The first line `program --version` prints; `None` when it cannot be
/// started.
fn version(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let first = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    Some(
        first(&output.stdout)
            .or_else(|| first(&output.stderr))
            .unwrap_or_else(|| program.display().to_string()),
    )
}

/// Runs `command` to its end (standard output kept or thrown away); the
/// wall time from spawn to exit.
fn run_timed(mut command: Command, keep_stdout: bool) -> Result<(Duration, Output), Error> {
    command
        .stdin(Stdio::null())
        .stdout(if keep_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let shown = format!("{command:?}");
    let spawn_error = |source| Error::Spawn {
        command: shown.clone(),
        source,
    };
    let start = Instant::now();
    let output = command
        .spawn()
        .and_then(std::process::Child::wait_with_output)
        .map_err(spawn_error)?;
    let elapsed = start.elapsed();
    if !output.status.success() {
        return Err(Error::Failed {
            command: shown,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok((elapsed, output))
}

/// The packets tcpdump reads in `capture` (`tcpdump --count`, which prints
/// `N packets` on standard output in 4.99, on standard error in its manual).
fn tcpdump_count(capture: &Path) -> Result<u64, Error> {
    let mut command = Command::new("tcpdump");
    command.arg("--count").arg("-r").arg(capture);
    let shown = format!("{command:?}");
    let (_, output) = run_timed(command, true)?;
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    printed
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let n = l.strip_suffix(" packets").or(l.strip_suffix(" packet"))?;
            n.parse().ok()
        })
        .ok_or_else(|| Error::Output {
            command: shown,
            message: format!("no `N packets` line in what it printed: {}", printed.trim()),
        })
}

/// Times every installed tool on the workload's capture, `settings.rounds`
/// times in turn; `progress` hears what is being done.
pub fn measure(
    workload: &Workload,
    settings: &Settings,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, Error> {
    if !settings.podfence.is_file() {
        return Err(Error::NoPodfence(settings.podfence.clone()));
    }
    let mix = workload.mix().clone();
    let tshark_packets = settings.tshark_packets.min(mix.packets);
    let mut rows: Vec<Row> = Tool::ALL
        .iter()
        .map(|&tool| Row {
            tool,
            version: version(tool.program(settings)),
            packets: if matches!(tool, Tool::Tshark | Tool::TsharkRead) {
                tshark_packets
            } else {
                mix.packets
            },
            times: Vec::new(),
        })
        .collect();
    let capture = workload.capture();
    // Untimed: check tcpdump's count, and bring the file into the page cache.
    let tcpdump = rows
        .iter()
        .any(|r| r.tool == Tool::TcpdumpRead && r.version.is_some());
    let tcpdump_count = if tcpdump {
        progress("tcpdump --count: checking the packet count");
        let n = tcpdump_count(capture)?;
        if n != mix.packets {
            return Err(Error::Output {
                command: format!("tcpdump --count -r {}", capture.display()),
                message: format!("read {n} packets, {} were written", mix.packets),
            });
        }
        Some(n)
    } else {
        let mut file = File::open(capture).map_err(io_error(capture))?;
        io::copy(&mut file, &mut io::sink()).map_err(io_error(capture))?;
        None
    };
    let mut summaries = Vec::new();
    let rounds = settings.rounds.max(1);
    for round in 1..=rounds {
        progress(&format!("round {round} of {rounds}"));
        for row in rows.iter_mut().filter(|r| r.version.is_some()) {
            let command = row.tool.command(workload, settings, tshark_packets);
            let shown = format!("{command:?}");
            let (elapsed, output) = run_timed(command, row.tool == Tool::Podfence)?;
            if row.tool == Tool::Podfence {
                let summary = PodfenceSummary::parse(&output.stdout)
                    .filter(|s| s.packets == mix.packets)
                    .ok_or_else(|| Error::Output {
                        command: shown,
                        message: format!(
                            "expected a JSON summary of {} packets, got: {}",
                            mix.packets,
                            String::from_utf8_lossy(&output.stdout).trim()
                        ),
                    })?;
                summaries.push(summary);
            }
            row.times.push(elapsed);
        }
    }
    Ok(Report {
        shape: workload.shape(),
        mix,
        capture_bytes: std::fs::metadata(capture).map_or(0, |m| m.len()),
        rows,
        summaries,
        tcpdump_count,
        machine: Machine::this(),
    })
}
