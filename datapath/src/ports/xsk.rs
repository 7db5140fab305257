//! AF_XDP ports: one socket per (interface, queue), each with its own UMEM.
//!
//! This is the module of the datapath that touches memory the kernel shares
//! with us (the UMEM and the four rings), which is why nearly all of the
//! datapath's `unsafe` is here. The socket, UMEM and rings are our own thin
//! layer over the kernel's interface (`ports::xdp`: libxdp 1.6, under
//! xsk-rs, cannot register a UMEM with TX metadata); what that layer leaves
//! to the caller, and what each `unsafe` block here upholds, is ownership
//! of frames: a frame is owned by
//! exactly one of the kernel (while on the fill or tx ring, until it comes
//! back on the rx or completion ring) or this port, and the port never reads
//! or writes a frame the kernel owns.
//!
//! # Frames
//!
//! The UMEM of `frame_count` frames is split in two at open: the first half
//! receives (it cycles fill ring → rx ring → the caller's batch → fill ring),
//! the second half transmits (free list → tx ring → completion ring → free
//! list). Rx frames the caller holds are the current batch only; the
//! [`Port`] contract (release a batch before the next `recv`) keeps the
//! kernel from starving, and [`XskPort::release`] hands the whole batch back
//! in one ring operation. All descriptor arrays are allocated at open;
//! `recv`, `frame`, `release` and `send` never allocate.
//!
//! # Frames longer than a chunk (multi-buffer)
//!
//! A frame longer than one UMEM chunk (jumbo MTUs) arrives as a chain of
//! descriptors, every one but the last flagged `XDP_PKT_CONTD`, when the
//! socket is bound with `XDP_USE_SG` ([`XskConfig::multi_buffer`]); without
//! it the kernel drops such frames silently. The port hands the caller
//! whole frames: a chain is copied, at `recv`, into a slot of a buffer
//! allocated at open (one slot of [`XskConfig::max_frame`] bytes per batch
//! entry; none when that fits in a chunk), and [`RxDesc::len`] is the
//! frame's total length. Parsing, policy, rewrite and checksum code thus see
//! one contiguous frame whatever its size. On `send`, a frame longer than a
//! chunk is split into a chain of tx frames. The kernel publishes a chain on
//! the rx ring at once, so a chain cut by the batch limit is completed from
//! the ring; a chain that does not fit (longer than `max_frame`, or
//! incomplete) is dropped and counted ([`PortStats::rx_oversize`]), as is a
//! frame to send that needs more than [`MAX_TX_BUFFERS`] chunks or more
//! than `max_frame` bytes ([`PortStats::tx_oversize`]): never silently.
//!
//! # Checksum offload (TX metadata)
//!
//! With [`XskConfig::checksum_offload`] the UMEM is registered with 16
//! bytes of TX metadata (`XDP_UMEM_TX_METADATA_LEN`, `struct
//! xsk_tx_metadata`) in the headroom just before each frame to send (data
//! starts `XDP_PACKET_HEADROOM`, 256 bytes, into its chunk, metadata 16
//! bytes before that). A frame sent with a [`ChecksumRequest`]
//! ([`Port::send_offloaded`]) gets `XDP_TXMD_FLAGS_CHECKSUM` with
//! `csum_start`/`csum_offset` there and `XDP_TX_METADATA` on its first
//! descriptor only (a chain's later buffers carry none). In copy mode the
//! kernel then builds a `CHECKSUM_PARTIAL` skb: the device, or for a veth
//! the receiving stack's trust, finishes it. Kernels before 6.11 refuse the
//! registration flag (EINVAL): the port then registers without metadata and
//! reports [`ChecksumOffload::Software`] with the reason, as it does for a
//! zero-copy socket (whether its driver implements the request is not
//! probed). [`XskPort::checksum_offload`] says which is in force.
//!
//! # Modes
//!
//! - Copy or zero-copy: [`XskConfig::zero_copy`] (`None` lets the kernel
//!   choose, `Some(true)` fails when the driver cannot do zero-copy,
//!   `Some(false)` forces copy). [`XskPort::mode`] reports what was bound.
//! - Native or generic XDP: the socket follows the XDP program that feeds
//!   it, so this is chosen where the redirector is attached
//!   (`podfence_bpf::RedirectConfig::mode`). Sockets are created with
//!   `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`, so libxdp never loads a program
//!   of its own; generic XDP implies copy mode.
//! - `need_wakeup` ([`XskConfig::need_wakeup`]): the kernel tells us when it
//!   needs a system call to go on (fill ring empty, tx ring to drain); the
//!   port then polls (rx) or calls `sendto(MSG_DONTWAIT)` (tx), otherwise it
//!   makes no system call at all. Without it, every `send` kicks the kernel.
//! - Busy polling ([`XskConfig::busy_poll`]): `SO_PREFER_BUSY_POLL`,
//!   `SO_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` are set on the socket; a
//!   failure is recorded ([`XskPort::busy_poll_error`]), not fatal. With busy
//!   polling, an empty `recv` polls the socket once to drive the driver.
//!
//! # Queues and workers
//!
//! An interface with several queues gets one [`XskPort`] per queue, each
//! registered for its queue in the redirector's XSKMAP (through
//! [`XskPort::fd`] / [`AsRawFd`]). Everything must happen in the interface's
//! network namespace: open, then register. A worker serving one queue calls
//! `Worker::run_batch` with its port; a worker serving several calls it with
//! each of its ports in turn (round robin). Ports are `Send`, not shared:
//! each belongs to exactly one worker thread.
//!
//! Dropping a port unmaps its rings, closes the socket and then unmaps the
//! UMEM (`ports::xdp::Socket`'s field order).

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::xdp::{
    Socket, SocketConfig, Step, TX_METADATA_LEN, XDP_PACKET_HEADROOM, checksum_request,
};
use super::{ChecksumRequest, MAX_BATCH, Port, PortError, PortStats, RxDesc};
use crate::link::LinkType;

/// A descriptor of the rx and tx rings.
type FrameDesc = libc::xdp_desc;

const EMPTY_DESC: FrameDesc = FrameDesc {
    addr: 0,
    len: 0,
    options: 0,
};

/// `SO_PREFER_BUSY_POLL` (linux/asm-generic/socket.h), not in every libc.
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET` (linux/asm-generic/socket.h), not in every libc.
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// `XDP_PKT_CONTD` (linux/if_xdp.h): more buffers of this frame follow.
const XDP_PKT_CONTD: u32 = 1;

/// Most chunks a frame to send may span: the kernel's copy-mode limit
/// (`MAX_SKB_FRAGS`, 17, of which one is the linear part) minus a margin;
/// 9216 bytes need 5 chunks of 2048.
pub const MAX_TX_BUFFERS: usize = 16;

/// Busy-polling settings of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds to busy poll the device for.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy-poll round.
    pub budget: u32,
}

/// How an [`XskPort`] is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the UMEM (half receive, half transmit); even, at least 2.
    pub frame_count: u32,
    /// Bytes per frame: 2048 or 4096 (aligned chunks; a power of two).
    pub frame_size: u32,
    /// Rx ring entries (power of two).
    pub rx_ring: u32,
    /// Tx ring entries (power of two).
    pub tx_ring: u32,
    /// Fill ring entries (power of two, at least `frame_count / 2`).
    pub fill_ring: u32,
    /// Completion ring entries (power of two, at least `frame_count / 2`).
    pub comp_ring: u32,
    /// `None`: let the kernel choose; `Some(true)`: zero-copy or fail;
    /// `Some(false)`: copy.
    pub zero_copy: Option<bool>,
    /// Bind with `XDP_USE_NEED_WAKEUP` (system calls only when the kernel
    /// asks for them).
    pub need_wakeup: bool,
    /// Busy polling, if wanted.
    pub busy_poll: Option<BusyPoll>,
    /// Bind with `XDP_USE_SG`: frames longer than a chunk arrive and leave
    /// as chains of buffers (kernel >= 6.6). Without it, the kernel drops
    /// them on receive and `send` refuses them.
    pub multi_buffer: bool,
    /// Largest frame, all its buffers together, that the port receives and
    /// sends (Ethernet header included: an MTU of 9000 needs 9018, 9022 with
    /// two VLAN tags). At most one chunk (the default, 0, means one chunk)
    /// costs nothing; more reserves `max_frame` bytes per batch entry at
    /// open, where chains are made contiguous.
    pub max_frame: u32,
    /// Ask the kernel for TX checksum offload through TX metadata (see the
    /// module doc); `false` forces software. Where the kernel lacks it the
    /// port falls back to software either way.
    pub checksum_offload: bool,
}

impl XskConfig {
    /// This configuration with `frames` frames and every ring at most
    /// half of them (the fill and completion rings exactly half): a
    /// smaller UMEM for a port that carries less.
    #[must_use]
    pub fn with_frames(self, frames: u32) -> Self {
        let half = frames / 2;
        Self {
            frame_count: frames,
            fill_ring: half,
            comp_ring: half,
            rx_ring: self.rx_ring.min(half),
            tx_ring: self.tx_ring.min(half),
            ..self
        }
    }
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frame_count: 4096,
            frame_size: 2048,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 2048,
            comp_ring: 2048,
            zero_copy: None,
            need_wakeup: true,
            busy_poll: None,
            multi_buffer: true,
            max_frame: 0,
            checksum_offload: true,
        }
    }
}

/// How a socket is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// The kernel copies frames between its buffers and the UMEM.
    Copy,
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
}

/// Who finishes the transport checksums a port sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChecksumOffload {
    /// The kernel, from the request in each frame's TX metadata.
    TxMetadata,
    /// The sender, in software; why.
    Software(String),
}

impl ChecksumOffload {
    /// Whether the kernel finishes them.
    #[must_use]
    pub fn is_offloaded(&self) -> bool {
        matches!(self, Self::TxMetadata)
    }
}

impl fmt::Display for ChecksumOffload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TxMetadata => f.write_str("AF_XDP TX metadata"),
            Self::Software(why) => write!(f, "software ({why})"),
        }
    }
}

/// The kernel's ring statistics of a socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped for reasons other than invalid descriptors.
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the tx ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the tx ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket on one queue of one interface, with its own UMEM.
pub struct XskPort {
    name: String,
    queue: u32,
    config: XskConfig,
    mode: XskMode,
    busy_poll_error: Option<io::Error>,
    frame_size: usize,
    /// Bytes of one chunk (frame size minus the kernel's headroom).
    tx_capacity: usize,
    /// Largest frame received or sent, all buffers together.
    max_frame: usize,
    /// Who finishes checksums of frames sent with a request.
    checksum_offload: ChecksumOffload,
    socket: Socket,
    /// The current batch, as the rx ring described it (every buffer).
    rx_batch: Vec<FrameDesc>,
    rx_len: usize,
    /// Per frame of the batch: its first buffer's index in `rx_batch`.
    rx_first: Vec<u32>,
    /// Per frame of the batch: whether it is a chain, copied into `linear`.
    rx_chained: Vec<bool>,
    /// Frames in the batch.
    rx_frames: usize,
    /// Per UMEM frame index: the batch frame it starts (valid while in the batch).
    rx_slot: Vec<u32>,
    /// Chains of the batch made contiguous: one `max_frame` slot per frame.
    linear: Vec<u8>,
    /// Buffers of a chain cut off on the ring to skip before the next frame.
    rx_skip_chain: bool,
    /// Rx chunks (their addresses) the port owns that are not yet on the
    /// fill ring.
    fill_pending: Vec<u64>,
    /// Tx chunks (their addresses) free for `send`.
    tx_free: Vec<u64>,
    /// Frames of the send in progress, filled and about to be submitted.
    tx_batch: Vec<FrameDesc>,
    /// Scratch for the completion ring.
    comp_batch: Vec<u64>,
    /// Tx frames submitted and not yet completed.
    tx_outstanding: usize,
    stats: PortStats,
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskPort")
            .field("name", &self.name)
            .field("fd", &self.fd())
            .field("mode", &self.mode)
            .field("checksum_offload", &self.checksum_offload)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn invalid(port: &str, message: String) -> PortError {
    PortError::Io {
        port: port.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

fn queue_size(port: &str, what: &str, n: u32) -> Result<u32, PortError> {
    if n.is_power_of_two() {
        Ok(n)
    } else {
        Err(invalid(
            port,
            format!("{what} size {n} is not a power of two"),
        ))
    }
}

/// Explains an errno from socket creation or bind.
fn explain_create_error(
    ifname: &str,
    queue: u32,
    zero_copy: Option<bool>,
    e: &io::Error,
) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            "creating an AF_XDP socket needs CAP_NET_RAW (the datapath also needs \
             CAP_NET_ADMIN and CAP_BPF for its XDP program and CAP_IPC_LOCK for its \
             frames; run as root or grant them)"
                .to_owned()
        }
        Some(libc::EOPNOTSUPP) if zero_copy == Some(true) => format!(
            "the driver of {ifname} does not support zero-copy AF_XDP; use copy mode \
             (zero_copy: Some(false) or None)"
        ),
        Some(libc::EINVAL) => format!(
            "binding to queue {queue} of {ifname} was refused (EINVAL): the queue is out of \
             range for this interface, a ring or frame size is not accepted, or the kernel \
             lacks AF_XDP multi-buffer (XDP_USE_SG, Linux 6.6; turn multi_buffer off)"
        ),
        Some(libc::EBUSY) => {
            format!("queue {queue} of {ifname} already has an AF_XDP socket or UMEM bound")
        }
        Some(libc::ENOMEM | libc::ENOBUFS) => {
            "not enough memory for the UMEM or rings (check RLIMIT_MEMLOCK)".to_owned()
        }
        Some(libc::ENOPROTOOPT | libc::EAFNOSUPPORT) => {
            "the kernel does not support AF_XDP sockets".to_owned()
        }
        _ => "creating the AF_XDP socket failed".to_owned(),
    }
}

/// A [`PortError`] for a failed UMEM or socket creation, saying why.
fn create_error(
    name: &str,
    ifname: &str,
    queue: u32,
    config: &XskConfig,
    step: Step,
    source: &io::Error,
) -> PortError {
    let context = match step {
        Step::Socket => "",
        Step::UmemMemory | Step::UmemRegistration => "creating the UMEM: ",
        Step::Rings => "setting up the rings: ",
        Step::Bind => "binding: ",
    };
    let why = explain_create_error(ifname, queue, config.zero_copy, source);
    PortError::Io {
        port: name.to_owned(),
        source: io::Error::new(source.kind(), format!("{context}{why}: {source}")),
    }
}

/// Bind flags for `config`.
fn bind_flags(config: &XskConfig) -> u16 {
    let mut bind = match config.zero_copy {
        Some(true) => libc::XDP_ZEROCOPY,
        Some(false) => libc::XDP_COPY,
        None => 0,
    };
    if config.need_wakeup {
        bind |= libc::XDP_USE_NEED_WAKEUP;
    }
    if config.multi_buffer {
        bind |= libc::XDP_USE_SG;
    }
    bind
}

/// An AF_XDP socket made before the interface it will serve exists: its
/// UMEM mapped, faulted in and registered, its rings mapped; only binding
/// is left ([`PreparedXsk::bind`]). Most of a socket's cost (a few
/// milliseconds for the UMEM's pages) is paid here, so an agent can make
/// some ahead and spare a starting pod the wait. A prepared socket belongs
/// to the network namespace it was made in.
pub struct PreparedXsk {
    config: XskConfig,
    checksum_offload: ChecksumOffload,
    socket: Socket,
}

impl fmt::Debug for PreparedXsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedXsk")
            .field("fd", &self.socket.fd())
            .field("checksum_offload", &self.checksum_offload)
            .finish_non_exhaustive()
    }
}

impl PreparedXsk {
    /// Makes a socket for `config` in the calling thread's network
    /// namespace.
    pub fn new(config: &XskConfig) -> Result<Self, PortError> {
        Self::make("unbound AF_XDP socket", "its interface", 0, config)
    }

    /// [`Self::new`], with errors named for the port it is made for.
    fn make(name: &str, ifname: &str, queue: u32, config: &XskConfig) -> Result<Self, PortError> {
        XskPort::check_config(name, config)?;
        let mut socket_config = SocketConfig {
            frame_count: config.frame_count,
            frame_size: config.frame_size,
            fill_ring: queue_size(name, "fill ring", config.fill_ring)?,
            comp_ring: queue_size(name, "completion ring", config.comp_ring)?,
            rx_ring: queue_size(name, "rx ring", config.rx_ring)?,
            tx_ring: queue_size(name, "tx ring", config.tx_ring)?,
            tx_metadata: config.checksum_offload,
        };
        let mut checksum_offload = if config.checksum_offload {
            ChecksumOffload::TxMetadata
        } else {
            ChecksumOffload::Software("asked for software".to_owned())
        };
        let socket = match Socket::create(&socket_config) {
            Ok(socket) => socket,
            Err((Step::UmemRegistration, e))
                if config.checksum_offload && e.raw_os_error() == Some(libc::EINVAL) =>
            {
                // The kernel does not know XDP_UMEM_TX_METADATA_LEN (Linux
                // < 6.11): without TX metadata.
                checksum_offload = ChecksumOffload::Software(format!(
                    "the kernel refused TX metadata on the UMEM \
                     (XDP_UMEM_TX_METADATA_LEN, Linux 6.11): {e}"
                ));
                socket_config.tx_metadata = false;
                Socket::create(&socket_config)
                    .map_err(|(step, e)| create_error(name, ifname, queue, config, step, &e))?
            }
            Err((step, e)) => return Err(create_error(name, ifname, queue, config, step, &e)),
        };
        Ok(Self {
            config: *config,
            checksum_offload,
            socket,
        })
    }

    /// The configuration the socket was made for.
    #[must_use]
    pub fn config(&self) -> &XskConfig {
        &self.config
    }

    /// Binds the socket to `queue` of `ifname` (in the network namespace
    /// it was made in) and fills its fill ring. Register
    /// [`XskPort::fd`] in the redirector's XSKMAP for `queue` afterwards.
    pub fn bind(self, ifname: &str, queue: u32) -> Result<XskPort, PortError> {
        let name = format!("{ifname}:{queue}");
        let ifindex = ifindex(&name, ifname)?;
        self.bind_named(name, ifname, ifindex, queue)
    }

    fn bind_named(
        self,
        name: String,
        ifname: &str,
        ifindex: u32,
        queue: u32,
    ) -> Result<XskPort, PortError> {
        let Self {
            config,
            checksum_offload,
            socket,
        } = self;
        socket
            .bind(ifindex, queue, bind_flags(&config))
            .map_err(|e| create_error(&name, ifname, queue, &config, Step::Bind, &e))?;
        XskPort::new(name, queue, &config, checksum_offload, socket)
    }
}

/// The index of interface `ifname` in the calling thread's network
/// namespace.
fn ifindex(name: &str, ifname: &str) -> Result<u32, PortError> {
    let c_name = std::ffi::CString::new(ifname)
        .map_err(|_| invalid(name, format!("interface name {ifname:?} contains NUL")))?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the
    // call; if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(PortError::Io {
            port: name.to_owned(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {ifname} not found in this network namespace"),
            ),
        });
    }
    Ok(ifindex)
}

impl XskPort {
    /// Opens an AF_XDP socket on `queue` of `ifname` (in the calling
    /// thread's network namespace) and fills its fill ring. Register
    /// [`Self::fd`] in the redirector's XSKMAP for `queue` afterwards.
    pub fn open(ifname: &str, queue: u32, config: &XskConfig) -> Result<Self, PortError> {
        let name = format!("{ifname}:{queue}");
        // The interface first: a missing one fails before any memory is
        // touched.
        let ifindex = ifindex(&name, ifname)?;
        PreparedXsk::make(&name, ifname, queue, config)?.bind_named(name, ifname, ifindex, queue)
    }

    /// The port of a bound `socket`.
    fn new(
        name: String,
        queue: u32,
        config: &XskConfig,
        checksum_offload: ChecksumOffload,
        socket: Socket,
    ) -> Result<Self, PortError> {
        // Data to send starts after the kernel's headroom, as received data
        // does, leaving room for the TX metadata before it.
        let tx_capacity = config.frame_size as usize - XDP_PACKET_HEADROOM;
        let descs: Vec<u64> = (0..u64::from(config.frame_count))
            .map(|i| i * u64::from(config.frame_size))
            .collect();

        let half = (config.frame_count / 2) as usize;
        let mut fill_pending = Vec::with_capacity(half);
        fill_pending.extend_from_slice(&descs[..half]);
        let mut tx_free = Vec::with_capacity(descs.len() - half);
        tx_free.extend_from_slice(&descs[half..]);
        let batch_cap = (config.rx_ring as usize).max(config.comp_ring as usize);
        let max_frame = (config.max_frame as usize).max(tx_capacity);
        let linear = if max_frame > tx_capacity {
            vec![0; MAX_BATCH * max_frame]
        } else {
            Vec::new()
        };
        let mut port = Self {
            name,
            queue,
            config: *config,
            mode: XskMode::Copy,
            busy_poll_error: None,
            frame_size: config.frame_size as usize,
            tx_capacity,
            max_frame,
            checksum_offload,
            socket,
            rx_batch: vec![EMPTY_DESC; batch_cap],
            rx_len: 0,
            rx_first: vec![0; MAX_BATCH],
            rx_chained: vec![false; MAX_BATCH],
            rx_frames: 0,
            rx_slot: vec![u32::MAX; config.frame_count as usize],
            linear,
            rx_skip_chain: false,
            fill_pending,
            tx_free,
            tx_batch: Vec::with_capacity(batch_cap),
            comp_batch: vec![0; config.comp_ring as usize],
            tx_outstanding: 0,
            stats: PortStats::default(),
        };
        port.mode = port.query_mode()?;
        if port.mode == XskMode::ZeroCopy && port.checksum_offload.is_offloaded() {
            port.checksum_offload = ChecksumOffload::Software(
                "zero-copy socket: whether its driver honours TX checksum requests is not probed"
                    .to_owned(),
            );
        }
        if let Some(bp) = config.busy_poll {
            port.busy_poll_error = port.set_busy_poll(bp).err();
        }
        port.refill();
        Ok(port)
    }

    fn check_config(name: &str, c: &XskConfig) -> Result<(), PortError> {
        if c.frame_count < 2 || !c.frame_count.is_multiple_of(2) {
            return Err(invalid(
                name,
                format!("frame_count {} must be even and at least 2", c.frame_count),
            ));
        }
        let half = c.frame_count / 2;
        if c.fill_ring < half || c.comp_ring < half {
            return Err(invalid(
                name,
                format!(
                    "fill ring ({}) and completion ring ({}) must hold half the frames ({half})",
                    c.fill_ring, c.comp_ring
                ),
            ));
        }
        if !c.frame_size.is_power_of_two() {
            return Err(invalid(
                name,
                format!("frame_size {} is not a power of two", c.frame_size),
            ));
        }
        if c.max_frame > c.frame_size && !c.multi_buffer {
            return Err(invalid(
                name,
                format!(
                    "max_frame {} exceeds a chunk ({}): frames that long need multi_buffer",
                    c.max_frame, c.frame_size
                ),
            ));
        }
        if c.max_frame as usize > MAX_TX_BUFFERS * (c.frame_size as usize / 2) {
            return Err(invalid(
                name,
                format!(
                    "max_frame {} is too long for chunks of {} bytes",
                    c.max_frame, c.frame_size
                ),
            ));
        }
        Ok(())
    }

    /// Copy or zero-copy, as the kernel bound the socket (`XDP_OPTIONS`).
    fn query_mode(&self) -> Result<XskMode, PortError> {
        let mut opts = libc::xdp_options { flags: 0 };
        let mut len = size_of::<libc::xdp_options>() as libc::socklen_t;
        // SAFETY: `opts` and `len` are valid for writes of the sizes given
        // and outlive the call; the fd is this port's open socket.
        let ret = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&raw mut opts).cast(),
                &raw mut len,
            )
        };
        if ret != 0 {
            return Err(PortError::Io {
                port: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(if opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            XskMode::ZeroCopy
        } else {
            XskMode::Copy
        })
    }

    fn set_busy_poll(&self, bp: BusyPoll) -> io::Result<()> {
        let set = |opt: libc::c_int, value: u32, what: &str| -> io::Result<()> {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: `value` is a c_int valid for reads of its size for the
            // duration of the call; the fd is this port's open socket.
            let ret = unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const value).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret == 0 {
                Ok(())
            } else {
                let e = io::Error::last_os_error();
                Err(io::Error::new(e.kind(), format!("setsockopt({what}): {e}")))
            }
        };
        set(SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL")?;
        set(libc::SO_BUSY_POLL, bp.usecs, "SO_BUSY_POLL")?;
        set(SO_BUSY_POLL_BUDGET, bp.budget, "SO_BUSY_POLL_BUDGET")
    }

    /// The socket's file descriptor, for the redirector's XSKMAP.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.socket.fd()
    }

    /// The queue this port is bound to.
    #[must_use]
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Copy or zero-copy, as actually bound.
    #[must_use]
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    /// The configuration the port was opened with.
    #[must_use]
    pub fn config(&self) -> &XskConfig {
        &self.config
    }

    /// Why busy polling could not be enabled, if it was asked for and failed.
    #[must_use]
    pub fn busy_poll_error(&self) -> Option<&io::Error> {
        self.busy_poll_error.as_ref()
    }

    /// Largest frame [`Port::send`] accepts and `recv` delivers.
    #[must_use]
    pub fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    /// Bytes of one UMEM chunk: frames longer than this travel as chains.
    #[must_use]
    pub fn chunk_len(&self) -> usize {
        self.tx_capacity
    }

    /// The kernel's ring statistics (`XDP_STATISTICS`).
    pub fn xsk_stats(&self) -> Result<XskStats, PortError> {
        let s = self.socket.statistics().map_err(|source| PortError::Io {
            port: self.name.clone(),
            source,
        })?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Puts every rx frame the port holds outside a batch on the fill ring,
    /// in one ring operation when there is room for all of them.
    fn refill(&mut self) {
        if self.fill_pending.is_empty() {
            return;
        }
        let room = self.socket.fill.free() as usize;
        let n = room.min(self.fill_pending.len());
        if n == 0 {
            return;
        }
        let start = self.fill_pending.len() - n;
        // SAFETY: frames in `fill_pending` belong to this port's UMEM and are
        // owned by the port (never on the fill, rx, tx or completion ring,
        // and not lent out by `frame`: they left the batch in `release`);
        // after this call the kernel owns them until they come back on the
        // rx ring.
        let done = unsafe { self.socket.fill.produce(&self.fill_pending[start..]) };
        if done == n {
            self.fill_pending.truncate(start);
        }
    }

    /// Polls the socket without waiting: wakes the driver (need_wakeup) or
    /// drives it (busy polling).
    fn poll_rx(&mut self) {
        // Errors (EINTR, ...) only mean this poll did not happen; the next
        // recv tries again.
        self.socket.poll_rx();
    }

    /// Mask of a chunk's start address (aligned chunks).
    fn chunk_mask(&self) -> u64 {
        !(self.frame_size as u64 - 1)
    }

    /// Who finishes the checksums of frames sent with a request: the
    /// kernel (TX metadata) or, if it cannot, the sender (and why).
    #[must_use]
    pub fn checksum_offload(&self) -> &ChecksumOffload {
        &self.checksum_offload
    }

    /// Takes completed tx frames back into the free list.
    fn reclaim(&mut self) {
        if self.tx_outstanding == 0 {
            return;
        }
        // SAFETY: the descriptors are written by the completion ring only;
        // frames coming back on it were submitted by this port to its tx
        // ring, belong to its UMEM and are the port's again from here on.
        let n = unsafe { self.socket.comp.consume(&mut self.comp_batch) };
        let chunk = self.chunk_mask();
        self.tx_free
            .extend(self.comp_batch[..n].iter().map(|&addr| addr & chunk));
        self.tx_outstanding -= n;
    }

    /// Kicks the kernel until the tx ring is empty or a kick makes no
    /// progress. In copy mode each system call transmits at most 32
    /// descriptors (the kernel's `TX_BATCH_SIZE`) and leaves the rest on the
    /// ring until the next one, which on an idle port would never come; a
    /// batch of 64 frames, or of chains, needs several. In zero-copy mode
    /// the driver transmits asynchronously: one kick, no progress seen, done.
    fn drain_tx(&mut self) -> Result<(), PortError> {
        let size = self.config.tx_ring;
        let mut pending = self.socket.tx.pending();
        // Bounded: the ring cannot take more than this many kicks' worth.
        for _ in 0..=size / 32 {
            if pending == 0 {
                break;
            }
            self.kick_tx()?;
            let now = self.socket.tx.pending();
            if now >= pending {
                break;
            }
            pending = now;
        }
        Ok(())
    }

    /// Tells the kernel to transmit what is on the tx ring.
    fn kick_tx(&self) -> Result<(), PortError> {
        self.socket.wakeup_tx().map_err(|source| PortError::Io {
            port: self.name.clone(),
            source,
        })
    }
}

impl XskPort {
    /// [`Port::send`], with checksum requests (`requests[i]` for
    /// `frames[i]`; only when the kernel takes them).
    fn transmit(
        &mut self,
        frames: &[&[u8]],
        requests: &[Option<ChecksumRequest>],
    ) -> Result<usize, PortError> {
        self.reclaim();
        let chunk = self.tx_capacity;
        let need: usize = frames.iter().map(|f| f.len().div_ceil(chunk).max(1)).sum();
        if self.tx_free.len() < need && self.tx_outstanding > 0 {
            // Starved: make the kernel finish what it has, then look again.
            self.kick_tx()?;
            self.reclaim();
        }
        let room = self.socket.tx.free().min(need as u32) as usize;
        let mut dropped = 0u64;
        let mut bytes = 0u64;
        let mut sent = 0usize;
        let mut full = false;
        self.tx_batch.clear();
        for (f, frame) in frames.iter().enumerate() {
            let buffers = frame.len().div_ceil(chunk).max(1);
            if frame.len() > self.max_frame || buffers > MAX_TX_BUFFERS {
                self.stats.tx_oversize += 1;
                dropped += 1;
                continue;
            }
            if full || self.tx_batch.len() + buffers > room || self.tx_free.len() < buffers {
                // Ring or frames short: this one and the rest wait for the
                // caller, so that what is accepted stays a prefix.
                full = true;
                dropped += 1;
                continue;
            }
            // The request goes on the first buffer only.
            let mut request = requests.get(f).copied().flatten();
            let last = buffers - 1;
            let pieces = frame
                .chunks(chunk)
                .chain(frame.is_empty().then_some(&[][..]));
            for (i, piece) in pieces.enumerate() {
                let Some(base) = self.tx_free.pop() else {
                    unreachable!("tx_free holds `buffers` frames, checked above");
                };
                let addr = base + XDP_PACKET_HEADROOM as u64;
                let mut options = if i < last { XDP_PKT_CONTD } else { 0 };
                if let Some(r) = request.take() {
                    options |= libc::XDP_TX_METADATA;
                    let meta = addr - TX_METADATA_LEN as u64;
                    // SAFETY: the chunk was taken from the free list: the
                    // port owns it (it is on no ring) and holds no other
                    // view of it.
                    let at = unsafe { self.socket.bytes_mut(meta, TX_METADATA_LEN) };
                    at.expect("a chunk's headroom lies within the UMEM")
                        .copy_from_slice(&checksum_request(r.start, r.offset));
                }
                // SAFETY: as above; the data lies in the same chunk, after
                // the metadata.
                let data = unsafe { self.socket.bytes_mut(addr, piece.len()) };
                data.expect("a chunk's data lies within the UMEM")
                    .copy_from_slice(piece);
                self.tx_batch.push(FrameDesc {
                    addr,
                    len: piece.len() as u32,
                    options,
                });
            }
            bytes += frame.len() as u64;
            sent += 1;
        }
        let n = self.tx_batch.len();
        if n > 0 {
            // SAFETY: every frame in `tx_batch` is a filled tx frame of this
            // UMEM owned by the port; from here the kernel owns it until it
            // comes back on the completion ring. `room` ensured the ring has
            // space for all of them, so all are submitted (all-or-nothing),
            // chains whole.
            let done = unsafe { self.socket.tx.produce(&self.tx_batch) };
            if done == n {
                self.tx_outstanding += n;
                if !self.config.need_wakeup || self.socket.tx.needs_wakeup() {
                    self.drain_tx()?;
                }
                self.stats.tx_frames += sent as u64;
                self.stats.tx_bytes += bytes;
            } else {
                // Cannot happen after `free`; keep the frames anyway.
                let chunk = self.chunk_mask();
                self.tx_free
                    .extend(self.tx_batch.iter().map(|fd| fd.addr & chunk));
                dropped += sent as u64;
            }
            self.tx_batch.clear();
        }
        self.stats.tx_dropped += dropped;
        Ok(frames.len() - dropped as usize)
    }
}

/// Whether more buffers of the same frame follow `fd`.
fn is_contd(fd: &FrameDesc) -> bool {
    fd.options & XDP_PKT_CONTD != 0
}

impl XskPort {
    /// Groups the buffers of `rx_batch[..rx_len]` into frames, writes one
    /// descriptor per deliverable frame into `descs` and copies chains into
    /// `linear`; returns the frames delivered and their bytes. Buffers of
    /// frames not delivered stay in the batch and go back with it.
    fn gather(&mut self, descs: &mut [RxDesc]) -> (usize, u64) {
        let mut frames = 0;
        let mut bytes = 0u64;
        let mut i = 0;
        let n = self.rx_len;
        // The tail of a chain whose start was dropped: not a frame.
        while self.rx_skip_chain && i < n {
            self.rx_skip_chain = is_contd(&self.rx_batch[i]);
            i += 1;
        }
        while i < n {
            let first = i;
            let mut end = i;
            while end < n && is_contd(&self.rx_batch[end]) {
                end += 1;
            }
            if end == n {
                // Cut off on the ring (never seen: the kernel publishes a
                // chain whole): drop what arrived, skip the rest later.
                self.rx_skip_chain = true;
                self.stats.rx_oversize += 1;
                break;
            }
            i = end + 1;
            let len: usize = self.rx_batch[first..i]
                .iter()
                .map(|fd| fd.len as usize)
                .sum();
            let chained = i - first > 1;
            if chained && (len > self.max_frame || self.linear.is_empty()) {
                self.stats.rx_oversize += 1;
                continue;
            }
            if chained {
                let mut at = frames * self.max_frame;
                let mut whole = true;
                for fd in &self.rx_batch[first..i] {
                    // SAFETY: `fd` came from this port's rx ring in this
                    // batch: a frame of this UMEM the kernel no longer
                    // writes, of which the port takes no mutable view.
                    let piece = unsafe { self.socket.bytes(fd.addr, fd.len as usize) };
                    // A descriptor outside the UMEM (never seen): the
                    // frame is not delivered.
                    let Some(piece) = piece else {
                        whole = false;
                        break;
                    };
                    self.linear[at..at + piece.len()].copy_from_slice(piece);
                    at += piece.len();
                }
                if !whole {
                    self.stats.rx_oversize += 1;
                    continue;
                }
            }
            self.rx_slot[self.rx_batch[first].addr as usize / self.frame_size] = frames as u32;
            self.rx_first[frames] = first as u32;
            self.rx_chained[frames] = chained;
            descs[frames] = RxDesc {
                addr: self.rx_batch[first].addr,
                len: len as u32,
                wire_len: len as u32,
                timestamp_ns: 0,
                link: LinkType::Ethernet,
            };
            bytes += len as u64;
            frames += 1;
        }
        self.rx_frames = frames;
        (frames, bytes)
    }
}

impl AsRawFd for XskPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl Port for XskPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv(&mut self, descs: &mut [RxDesc]) -> Result<usize, PortError> {
        if self.rx_len != 0 {
            // The caller did not release the last batch: give it back now so
            // that no frame is lost from the fill cycle.
            let len = self.rx_len;
            let chunk = self.chunk_mask();
            self.fill_pending
                .extend(self.rx_batch[..len].iter().map(|fd| fd.addr & chunk));
            self.rx_len = 0;
            self.rx_frames = 0;
        }
        self.refill();
        if self.config.need_wakeup && self.socket.fill.needs_wakeup() {
            self.poll_rx();
        }
        // At most one descriptor per frame asked for: never more frames
        // than `descs` holds, even if all are single buffers.
        let want = descs.len().min(MAX_BATCH).min(self.rx_batch.len());
        // SAFETY: `rx_batch` holds no frame the port lends out (the batch
        // was emptied above); frames the rx ring returns were put on the
        // fill ring by this port, belong to its UMEM and are the port's
        // until `release`.
        let mut n = unsafe { self.socket.rx.consume(&mut self.rx_batch[..want]) };
        if n == 0 && self.config.busy_poll.is_some() {
            self.poll_rx();
            // SAFETY: as above.
            n = unsafe { self.socket.rx.consume(&mut self.rx_batch[..want]) };
        }
        // A chain cut by the batch limit: the kernel publishes a chain's
        // buffers together, so the rest is on the ring already.
        while n > 0 && n < self.rx_batch.len() && is_contd(&self.rx_batch[n - 1]) {
            // SAFETY: as above; `rx_batch[n..]` holds no lent frame.
            let more = unsafe { self.socket.rx.consume(&mut self.rx_batch[n..=n]) };
            if more == 0 {
                break;
            }
            n += more;
        }
        self.rx_len = n;
        let (frames, bytes) = self.gather(descs);
        self.stats.rx_frames += frames as u64;
        self.stats.rx_bytes += bytes;
        Ok(frames)
    }

    fn frame(&self, desc: &RxDesc) -> &[u8] {
        let index = desc.addr as usize / self.frame_size;
        let frame = self.rx_slot.get(index).copied().unwrap_or(u32::MAX) as usize;
        let first = self.rx_first.get(frame).copied().unwrap_or(u32::MAX) as usize;
        assert!(
            frame < self.rx_frames && first < self.rx_len && self.rx_batch[first].addr == desc.addr,
            "{}: descriptor {desc:?} is not of the current batch",
            self.name
        );
        if self.rx_chained[frame] {
            let start = frame * self.max_frame;
            let len = (desc.len as usize).min(self.max_frame);
            return &self.linear[start..start + len];
        }
        let fd = &self.rx_batch[first];
        // SAFETY: `fd` came from this port's rx ring in the current batch,
        // so it describes a frame of this UMEM that the kernel no longer
        // writes (it is on no ring until `release`), and the port takes
        // mutable views only of tx frames, never of rx frames.
        let data = unsafe { self.socket.bytes(fd.addr, fd.len as usize) };
        data.unwrap_or_default()
    }

    fn release(&mut self, _descs: &[RxDesc]) {
        // The whole batch goes back at once: the Port contract releases a
        // batch as a unit.
        let len = self.rx_len;
        let chunk = self.chunk_mask();
        self.fill_pending
            .extend(self.rx_batch[..len].iter().map(|fd| fd.addr & chunk));
        self.rx_len = 0;
        self.rx_frames = 0;
        self.refill();
    }

    fn send(&mut self, frames: &[&[u8]]) -> Result<usize, PortError> {
        self.transmit(frames, &[])
    }

    fn checksum_offload(&self) -> bool {
        self.checksum_offload.is_offloaded()
    }

    fn send_offloaded(
        &mut self,
        frames: &[&[u8]],
        requests: &[Option<ChecksumRequest>],
    ) -> Result<usize, PortError> {
        if !self.checksum_offload.is_offloaded() && requests.iter().any(Option::is_some) {
            return Err(PortError::Unsupported {
                port: self.name.clone(),
                operation: "checksum offload",
            });
        }
        self.transmit(frames, requests)
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs_before_touching_the_kernel() {
        let odd = XskConfig {
            frame_count: 3,
            ..XskConfig::default()
        };
        let err = XskPort::open("lo", 0, &odd).unwrap_err().to_string();
        assert!(err.contains("frame_count 3"), "{err}");
        let small_fill = XskConfig {
            fill_ring: 1024,
            ..XskConfig::default()
        };
        let err = XskPort::open("lo", 0, &small_fill).unwrap_err().to_string();
        assert!(err.contains("half the frames (2048)"), "{err}");
        let err = XskPort::open("no-such-if-xyz", 0, &XskConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("interface no-such-if-xyz not found"), "{err}");
    }

    #[test]
    fn fewer_frames_shrink_the_rings_to_half_of_them() {
        let pod = XskConfig::default().with_frames(1024);
        assert_eq!(
            (pod.frame_count, pod.fill_ring, pod.comp_ring),
            (1024, 512, 512)
        );
        assert_eq!((pod.rx_ring, pod.tx_ring), (512, 512));
        assert_eq!(pod.frame_size, XskConfig::default().frame_size);
        XskPort::check_config("pod", &pod).expect("a valid configuration");
        // More frames than the default: rx and tx rings stay as they were.
        let big = XskConfig::default().with_frames(16_384);
        assert_eq!(
            (big.fill_ring, big.rx_ring, big.tx_ring),
            (8192, 2048, 2048)
        );
        XskPort::check_config("big", &big).expect("a valid configuration");
    }

    #[test]
    fn explains_errnos() {
        let e = |code| io::Error::from_raw_os_error(code);
        assert!(explain_create_error("eth0", 0, None, &e(libc::EPERM)).contains("CAP_NET_RAW"));
        assert!(
            explain_create_error("eth0", 0, Some(true), &e(libc::EOPNOTSUPP))
                .contains("does not support zero-copy")
        );
        assert!(explain_create_error("eth0", 9, None, &e(libc::EINVAL)).contains("queue 9"));
    }
}
