//! The AF_XDP traffic generator: transmit only, in batches, like xdpsock's
//! `txonly` mode.
//!
//! One [`Generator`] is one AF_XDP socket on one queue of an interface, with
//! a UMEM of its own used for transmission only (the socket's rx ring stays
//! empty: no XDP program redirects to it). Frames cycle free list → tx ring
//! → completion ring → free list. Each frame buffer remembers which flow's
//! template it holds, so a buffer that carries the same flow again is only
//! re-stamped (sequence number, transmit time, TCP sequence number,
//! checksum), not copied.
//!
//! In copy mode (every veth) the kernel transmits in the `sendto` system
//! call that the tx ring's need-wakeup flag asks for, at most
//! `XDP_MAX_TX_SKB_BUDGET` frames per call (32 by default; the generator
//! raises it to its batch size where the kernel has the option, 6.17+). In
//! zero-copy mode the `sendto` only kicks the driver.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::frames::{FCS_LEN, Template};
use super::{TrafficError, monotonic_ns};

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, kernel 6.17+).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// How a generator socket is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Interface to transmit on (in the calling thread's namespace).
    pub ifname: String,
    /// Queue to bind to.
    pub queue: u32,
    /// UMEM frames (all for transmission).
    pub frame_count: u32,
    /// Tx and completion ring entries (power of two).
    pub ring: u32,
    /// Frames put on the tx ring per round.
    pub batch: usize,
    /// `None`: the kernel chooses; `Some(true)`: zero-copy or fail;
    /// `Some(false)`: copy.
    pub zero_copy: Option<bool>,
}

impl GeneratorConfig {
    /// Defaults for `ifname`, queue 0.
    #[must_use]
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.to_owned(),
            queue: 0,
            frame_count: 4096,
            ring: 2048,
            batch: 64,
            zero_copy: None,
        }
    }
}

/// How fast to send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the interface takes frames.
    Max,
    /// This many packets per second, evenly spaced (in small bursts).
    Rate(f64),
}

/// What a generator run sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenReport {
    /// Frames put on the tx ring.
    pub sent: u64,
    /// Per flow (by flow index of the spec; flows of other generators 0).
    pub sent_per_flow: Vec<u64>,
    /// Bytes sent, on the wire (FCS included).
    pub wire_bytes: u64,
    /// From the first frame to the end of the run.
    pub elapsed: Duration,
    /// Frames the kernel reported done (completion ring) by the end.
    pub completed: u64,
    /// Rounds that found no free frame or no room on the ring (the
    /// interface did not take frames as fast as they were made).
    pub stalls: u64,
    /// `sendto` calls.
    pub wakeups: u64,
    /// Whether the kernel took the raised per-`sendto` budget (on every
    /// socket).
    pub budget_raised: bool,
}

impl GenReport {
    /// Packets per second.
    #[must_use]
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Adds another generator's report (run at the same time).
    pub fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.wire_bytes += other.wire_bytes;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.completed += other.completed;
        self.stalls += other.stalls;
        self.wakeups += other.wakeups;
        self.budget_raised &= other.budget_raised;
        if self.sent_per_flow.len() < other.sent_per_flow.len() {
            self.sent_per_flow.resize(other.sent_per_flow.len(), 0);
        }
        for (a, b) in self.sent_per_flow.iter_mut().zip(&other.sent_per_flow) {
            *a += b;
        }
    }
}

/// An AF_XDP socket that only transmits.
pub struct Generator {
    name: String,
    batch: usize,
    frame_size: usize,
    zero_copy: bool,
    budget_raised: bool,
    // Rings before the UMEM (xsk-rs keeps the UMEM alive for them anyway).
    tx: TxQueue,
    comp: CompQueue,
    _rx: RxQueue,
    _fill: FillQueue,
    umem: Umem,
    free: Vec<FrameDesc>,
    pending: Vec<FrameDesc>,
    comp_buf: Vec<FrameDesc>,
    /// Per UMEM frame: the flow whose template it holds (`u32::MAX`: none).
    frame_flow: Vec<u32>,
    outstanding: usize,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("name", &self.name)
            .field("zero_copy", &self.zero_copy)
            .field("budget_raised", &self.budget_raised)
            .finish_non_exhaustive()
    }
}

fn xsk_err(name: &str, what: &str, e: &dyn std::fmt::Display) -> TrafficError {
    TrafficError::Xsk {
        port: name.to_owned(),
        message: format!("{what}: {e}"),
    }
}

fn queue_size(name: &str, n: u32) -> Result<QueueSize, TrafficError> {
    QueueSize::new(n).map_err(|e| xsk_err(name, "ring size", &e))
}

/// Where a run is in its round robin over the flows, and each flow's next
/// sequence number.
struct SendOrder<'a> {
    flows: &'a [u32],
    next: usize,
    seq: Vec<u32>,
}

impl Generator {
    /// Opens the socket (in the calling thread's network namespace). A
    /// queue still held by a socket closed a moment ago (the kernel lets go
    /// of it asynchronously) is tried again for up to a second.
    pub fn open(config: &GeneratorConfig) -> Result<Self, TrafficError> {
        let name = format!("{}:{}", config.ifname, config.queue);
        let frame_size = 2048u32;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size).map_err(|e| xsk_err(&name, "frame size", &e))?)
            .fill_queue_size(queue_size(&name, config.ring)?)
            .comp_queue_size(queue_size(&name, config.ring)?)
            .frame_headroom(0)
            .build()
            .map_err(|e| xsk_err(&name, "UMEM configuration", &e))?;
        let count = NonZeroU32::new(config.frame_count.max(2))
            .ok_or_else(|| xsk_err(&name, "frame count", &"zero"))?;
        let (umem, descs) =
            Umem::new(umem_config, count, false).map_err(|e| xsk_err(&name, "UMEM", &e))?;
        let mut bind = match config.zero_copy {
            Some(true) => BindFlags::XDP_ZEROCOPY,
            Some(false) => BindFlags::XDP_COPY,
            None => BindFlags::empty(),
        };
        bind |= BindFlags::XDP_USE_NEED_WAKEUP;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(queue_size(&name, 64)?)
            .tx_queue_size(queue_size(&name, config.ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(XdpFlags::empty())
            .bind_flags(bind)
            .build();
        let c_name = std::ffi::CString::new(config.ifname.as_str())
            .map_err(|e| xsk_err(&name, "interface name", &e))?;
        let mut tries = 0;
        let (tx, rx, rings) = loop {
            // SAFETY: the UMEM is fresh and only this socket uses it; its
            // frames reach the kernel only through this generator's tx ring.
            let created = unsafe {
                xsk_rs::Socket::new(
                    socket_config,
                    &umem,
                    &Interface::new(c_name.clone()),
                    config.queue,
                )
            };
            match created {
                Ok(socket) => break socket,
                Err(e) => {
                    let source = std::error::Error::source(&e);
                    let busy = source
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .and_then(io::Error::raw_os_error)
                        == Some(libc::EBUSY);
                    if busy && tries < 50 {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let why = source.map(ToString::to_string).unwrap_or_default();
                    return Err(xsk_err(
                        &name,
                        "creating the AF_XDP socket (root, an existing interface and queue, \
                         and for zero-copy a driver that has it)",
                        &format!("{e} {why}"),
                    ));
                }
            }
        };
        let (fill, comp) =
            rings.ok_or_else(|| xsk_err(&name, "rings", &"libxdp returned no fill/comp rings"))?;
        let fd = tx.fd().as_raw_fd();
        let zero_copy = query_zero_copy(fd).map_err(|e| xsk_err(&name, "XDP_OPTIONS", &e))?;
        let budget = u32::try_from(config.batch.max(32))
            .unwrap_or(u32::MAX)
            .min(config.ring);
        // SAFETY: `budget` is a u32 valid for reads of its size during the
        // call; `fd` is the open socket.
        let budget_raised = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                (&raw const budget).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        } == 0;
        let frames = descs.len();
        Ok(Self {
            name,
            batch: config.batch.clamp(1, config.ring as usize),
            frame_size: frame_size as usize,
            zero_copy,
            budget_raised,
            tx,
            comp,
            _rx: rx,
            _fill: fill,
            umem,
            free: descs,
            pending: Vec::with_capacity(config.ring as usize),
            comp_buf: vec![FrameDesc::default(); config.ring as usize],
            frame_flow: vec![u32::MAX; frames],
            outstanding: 0,
        })
    }

    /// Whether the socket is bound in zero-copy mode.
    #[must_use]
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Whether the kernel took the raised per-`sendto` budget.
    #[must_use]
    pub fn budget_raised(&self) -> bool {
        self.budget_raised
    }

    fn reclaim(&mut self) {
        if self.outstanding == 0 {
            return;
        }
        // SAFETY: completed frames were put on this socket's tx ring by
        // `send_round` and belong to its UMEM; from here they are ours.
        let n = unsafe { self.comp.consume(&mut self.comp_buf) };
        self.free.extend_from_slice(&self.comp_buf[..n]);
        self.outstanding -= n;
    }

    /// Takes `n` free frames, stamps the next `n` packets of `order` into
    /// them and queues them in `pending`.
    fn stamp(
        &mut self,
        n: usize,
        templates: &[Template],
        order: &mut SendOrder<'_>,
        now: u64,
        report: &mut GenReport,
    ) {
        self.pending.clear();
        for _ in 0..n {
            let flow = order.flows[order.next] as usize;
            order.next += 1;
            if order.next == order.flows.len() {
                order.next = 0;
            }
            let template = &templates[flow];
            let mut fd = self.free.pop().expect("n <= free frames");
            let index = fd.addr() / self.frame_size;
            let fresh = self.frame_flow[index] != flow as u32;
            {
                // SAFETY: `fd` came off the free list: a frame of this
                // UMEM that neither the kernel (on no ring) nor any other
                // view here refers to.
                let mut data = unsafe { self.umem.data_mut(&mut fd) };
                data.cursor().set_pos(template.len());
                template.stamp(data.contents_mut(), order.seq[flow], now, fresh);
            }
            self.frame_flow[index] = flow as u32;
            order.seq[flow] = order.seq[flow].wrapping_add(1);
            report.sent_per_flow[flow] += 1;
            report.wire_bytes += (template.len() + FCS_LEN) as u64;
            self.pending.push(fd);
        }
    }

    /// Sends `flows` round robin (`templates[f]` is flow `f`'s frame) at
    /// `pace` for `duration` or until `stop`; returns what was sent.
    /// Sequence numbers start at 0 for every flow.
    #[allow(
        clippy::cast_sign_loss,
        reason = "rates and times are positive; float to int casts saturate"
    )]
    pub fn run(
        &mut self,
        templates: &[Template],
        flows: &[u32],
        pace: Pace,
        duration: Duration,
        stop: &AtomicBool,
    ) -> GenReport {
        let mut report = GenReport {
            sent_per_flow: vec![0; templates.len()],
            budget_raised: self.budget_raised,
            ..GenReport::default()
        };
        if flows.is_empty() {
            return report;
        }
        let mut order = SendOrder {
            flows,
            next: 0,
            seq: vec![0; templates.len()],
        };
        let start = monotonic_ns();
        let end = start + duration.as_nanos() as u64;
        let ns_per_packet = match pace {
            Pace::Max => 0.0,
            Pace::Rate(r) => 1e9 / r.max(1.0),
        };
        // Paced runs send small bursts, so that latency is not a burst's.
        let burst = match pace {
            Pace::Max => self.batch,
            Pace::Rate(r) => ((r * 20e-6).ceil() as usize).clamp(1, self.batch),
        };
        let mut last_check = 0u32;
        loop {
            let now = monotonic_ns();
            if now >= end {
                break;
            }
            last_check += 1;
            if last_check >= 64 {
                last_check = 0;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            let mut want = burst;
            if let Pace::Rate(_) = pace {
                let due = ((now - start) as f64 / ns_per_packet) as u64 + 1;
                let behind = due.saturating_sub(report.sent) as usize;
                if behind == 0 {
                    let wait_ns = (report.sent as f64 * ns_per_packet) as u64 + start - now;
                    if wait_ns > 60_000 {
                        std::thread::sleep(Duration::from_nanos(wait_ns - 50_000));
                    } else {
                        // Leave the core to a sink or a datapath sharing it.
                        std::thread::yield_now();
                    }
                    continue;
                }
                want = want.min(behind);
            }
            self.reclaim();
            let room = self.tx.nb_free(want as u32) as usize;
            let n = want.min(room).min(self.free.len());
            if n == 0 {
                report.stalls += 1;
                // The kernel transmits (copy mode) or is kicked (zero-copy)
                // only when asked.
                if self.tx.needs_wakeup() {
                    report.wakeups += 1;
                    let _ = self.tx.wakeup();
                }
                continue;
            }
            self.stamp(n, templates, &mut order, now, &mut report);
            // SAFETY: every frame in `pending` is a stamped frame of this
            // UMEM that we own; the ring had room for all of them (checked
            // above), and the kernel owns them until they complete.
            let done = unsafe { self.tx.produce(&self.pending) };
            debug_assert_eq!(done, n);
            self.outstanding += done;
            report.sent += done as u64;
            if self.tx.needs_wakeup() {
                report.wakeups += 1;
                let _ = self.tx.wakeup();
            }
        }
        report.elapsed = Duration::from_nanos(monotonic_ns() - start);
        // Let the kernel finish what is on the ring (bounded).
        let deadline = monotonic_ns() + 200_000_000;
        while self.outstanding > 0 && monotonic_ns() < deadline {
            if self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            self.reclaim();
            std::hint::spin_loop();
        }
        report.completed = report.sent - self.outstanding as u64;
        report
    }
}

fn query_zero_copy(fd: i32) -> io::Result<bool> {
    let mut opts = libc::xdp_options { flags: 0 };
    let mut len = size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: `opts` and `len` are valid for writes of the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            (&raw mut opts).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
}
