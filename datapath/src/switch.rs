//! The switch: where each passing packet goes and how it is rewritten.
//!
//! A [`Switch`] is the worker's [`Output`] on the live datapath. For every
//! packet that passes policy it looks the destination address up in a
//! forwarding table ([`Fib`]): a local pod's address leads to that pod's
//! port, everything else to the host port (the `pf-dp` end of the
//! `pf-host`/`pf-dp` veth pair, through which the kernel routes the node's,
//! remote nodes' and the outside's traffic). The frame is copied into a
//! staging buffer of the destination port, its MAC addresses are rewritten
//! (the route's peer MAC as destination, our MAC on that port as source) and,
//! when the switch itself routes it, its TTL or hop limit is decremented. At
//! the end of the batch each port with staged frames gets one
//! [`Port::send`] call.
//!
//! # Forwarding table
//!
//! A [`Fib`] is immutable once built, built off the hot path and swapped
//! whole between batches with [`Switch::set_fib`], like the policy tables: a
//! batch never sees half a table. Lookups are exact-match hashes of the
//! destination address (pods are host routes; anything else is not ours).
//!
//! # TTL and hop limit
//!
//! The switch replaces the kernel's routing hop only between two pods: a
//! packet received on a pod port for another local pod has its IPv4 TTL
//! decremented (with the incremental checksum update of RFC 1624, `HC' =
//! ~(~HC + ~m + m')`) or its IPv6 hop limit decremented (no checksum). It
//! does not decrement traffic to or from the host port: the kernel routes
//! that traffic itself (towards the node, remote nodes or the outside, and
//! from them to `pf-host`) and decrements it there, so decrementing it here
//! too would count one hop twice, and a TTL-1 packet for the node itself
//! must still reach it.
//!
//! A pod-to-pod packet whose TTL or hop limit would reach 0 is not switched:
//! it is counted ([`SwitchStats::ttl_expired`]) and handed to the host port
//! with its TTL untouched (MACs rewritten so that `pf-host` accepts it). The
//! kernel, routing it, finds it expired and sends the ICMP time exceeded (or
//! ICMPv6 hop limit exceeded) back to the sender, the way it would without
//! podfence; that error returns through the host port as a packet related to
//! the connection. Sending ICMP is the kernel's job, not the fast path's.
//!
//! # Other frames
//!
//! - Not IP ([`Outcome::NotIp`]) and passing: forwarded to the host port
//!   unchanged (MACs included). The XDP redirector passes ARP and neighbour
//!   discovery to the kernel itself, so these are rare.
//! - Malformed frames that pass (only with
//!   [`crate::worker::MalformedAction::Pass`]): forwarded to the host port
//!   unchanged, for the kernel to judge; counted as malformed either way.
//! - Denied, revoked and orphaned fragments: not forwarded, counted
//!   ([`SwitchStats::policy_dropped`]).
//! - [`Outcome::Elsewhere`]: another worker's packet, ignored.
//! - Frames that are not Ethernet (captures of raw IP or cooked frames have
//!   no MACs to rewrite), frames longer than the staging slots (sized to
//!   the ports' largest frame: jumbo frames, which AF_XDP ports receive as
//!   chains and hand over whole, fit when the agent's MTU says so), and frames
//!   whose destination is the port they came from (a hairpin; the host port
//!   would loop them through the kernel) are dropped and counted.
//!
//! # Checksums
//!
//! TCP and UDP checksums that the sender left to offload are finished
//! ([`crate::offload`]): an AF_XDP frame carries no offload state, so
//! nothing after the switch would. Unless the port the frame leaves by
//! takes checksum requests ([`Port::checksum_offload`]: AF_XDP TX
//! metadata): then the checksum stays begun (through a translation too,
//! [`crate::nat::apply_begun`]) and the frame is sent with the request
//! ([`Port::send_offloaded`]), so the kernel hands it on as
//! `CHECKSUM_PARTIAL`, as the sender's stack had it, and nobody sums the
//! segment. Counted in [`SwitchStats::checksums_finished`] and
//! [`SwitchStats::checksums_offloaded`].
//!
//! # Service translation
//!
//! For a packet of a translated connection the worker hands a
//! [`Rewrite`] ([`Output::translated`]): the switch routes by the
//! destination after translation (a forward packet goes to the backend's
//! port) and applies the rewrite to its staged copy ([`crate::nat`]),
//! after finishing an offloaded checksum (which is computed over the
//! addresses as received), or keeping it begun over the new addresses. A frame the rewrite cannot be applied to is
//! dropped and counted ([`SwitchStats::nat_failed`]): it must not leave
//! untranslated. Attempts on a Service without a usable backend are
//! dropped and counted ([`SwitchStats::service_refused`]); those the worker
//! answers ([`Output::reject`]) get an ICMP or ICMPv6 port unreachable,
//! built straight into a staging slot of the port they came in on
//! ([`crate::reject::port_unreachable`]). ICMP errors about translated
//! connections come with their rewrite like any packet of the connection
//! and are routed by their destination after it.
//!
//! # The reply rule
//!
//! A connection whose first packet came from the host port was possibly
//! translated by the kernel on its way here (kube-proxy's NodePorts,
//! external IPs, hostPorts, the node's own traffic, Services podfence leaves
//! alone) without being masqueraded, so its replies may be addressed to a
//! local pod that never sent to their source. The switch sends them back to
//! the host port, where the kernel undoes its translation and routes them
//! on. The switch tells the worker, once per batch, whether it received the
//! batch on the host port ([`Output::rx_is_host`]); the worker records it in
//! the connection's entry and hands replies of such connections to
//! [`Output::to_host`]. Counted in [`SwitchStats::reply_rule`] when the
//! destination alone would have led to a pod port. Packets of translated
//! connections whose backend is gone ([`Outcome::BackendGone`]) are
//! dropped and counted ([`SwitchStats::backend_gone`]).
//!
//! VLAN tags, if any, are kept as received (the MACs precede them; the IP
//! header is found at the parsed `l3_offset`).
//!
//! # Ports and the borrow checker
//!
//! The worker borrows its receive port mutably for the whole of
//! [`Worker::run_batch`], while the switch, as its output, must transmit on
//! any port, and for AF_XDP the receive and transmit sides of a socket are
//! one object. The switch therefore owns all its ports and receives through
//! them: [`Switch::run_batch`] takes the receive port out of its slot for the
//! duration of the worker's batch (an `Option::take`, no allocation), hands
//! it to the worker with the switch itself as output, and puts it back. A
//! forwarded frame for the port it came from is a hairpin and is dropped.
//! The one kind of frame that does go back out of the receive port, a port
//! unreachable answering its sender, is staged for it like any other and
//! sent once the port is back in its slot, after the batch: an AF_XDP
//! socket transmits on the same queue it receives on. A switch used as a
//! plain [`Output`] of some other port (no receive port of its own) works
//! too: every packet is then treated as received on a pod port, and an
//! answer goes to the route of its destination (the sender).
//!
//! # Allocation
//!
//! Staging buffers (`MAX_BATCH` frames of `max_frame` bytes per port) and
//! counters are allocated at construction; the per-packet path and the
//! flush copy and count only, and the slice of frames handed to `send` is
//! an array on the stack. Should more than `MAX_BATCH` frames for one port
//! arrive within one batch (a caller other than the worker), that port is
//! flushed early.
//!
//! No `unsafe`: frames are copied with slice operations, the rewrite is a
//! handful of bounds-checked stores.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::denials::{Denial, DenialKind, DenialQueue};
use crate::flow::PacketMeta;
use crate::link::LinkType;
use crate::nat::Rewrite;
use crate::offload::{Begun, settle};
use crate::ports::{ChecksumRequest, MAX_BATCH, Port, PortError, RxDesc};
use crate::wire::checksum;
use crate::worker::{Outcome, Output, Worker};

/// Where frames for one destination go, and the MACs they get there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the port in the switch.
    pub port: usize,
    /// Destination MAC: the pod's (or, for the host port, `pf-host`'s).
    pub dst_mac: [u8; 6],
    /// Source MAC: ours on that port (the pod's host-side veth, `pf-dp`).
    pub src_mac: [u8; 6],
}

/// The forwarding table: local pod addresses to their ports, everything
/// else to the host port. Immutable once shared (see the module doc).
#[derive(Clone, Debug)]
pub struct Fib {
    host: Route,
    v4: FxHashMap<u32, Route>,
    v6: FxHashMap<u128, Route>,
}

impl Fib {
    /// A table that sends everything to `host` (the host port's route).
    #[must_use]
    pub fn new(host: Route) -> Self {
        Self {
            host,
            v4: FxHashMap::default(),
            v6: FxHashMap::default(),
        }
    }

    /// Routes `addr` (a local pod's address) by `route`; returns the route
    /// it replaces.
    pub fn insert(&mut self, addr: IpAddr, route: Route) -> Option<Route> {
        match addr {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), route),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), route),
        }
    }

    /// The host port's route.
    #[must_use]
    pub fn host(&self) -> &Route {
        &self.host
    }

    /// The route of a local pod address, if it is one.
    #[must_use]
    #[inline]
    pub fn pod(&self, dst: u128, ipv6: bool) -> Option<&Route> {
        if ipv6 {
            self.v6.get(&dst)
        } else {
            u32::try_from(dst).ok().and_then(|a| self.v4.get(&a))
        }
    }

    /// The route for a destination: its pod's, or the host port's.
    #[must_use]
    #[inline]
    pub fn lookup(&self, dst: u128, ipv6: bool) -> &Route {
        self.pod(dst, ipv6).unwrap_or(&self.host)
    }

    /// Number of pod routes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether there are no pod routes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn max_port(&self) -> usize {
        self.v4
            .values()
            .chain(self.v6.values())
            .map(|r| r.port)
            .fold(self.host.port, usize::max)
    }
}

/// Counters of a switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Frames accepted by each port's `send`, by port index.
    pub forwarded: Vec<u64>,
    /// Packets denied by policy (denied, revoked, orphaned fragments).
    pub policy_dropped: u64,
    /// Frames that did not parse (dropped, or forwarded unchanged to the
    /// host port when the worker passes them).
    pub malformed: u64,
    /// Passing frames that are not IP (forwarded unchanged to the host port).
    pub not_ip: u64,
    /// Pod-to-pod packets whose TTL or hop limit would reach 0 (handed to
    /// the host port unmodified, for the kernel to answer).
    pub ttl_expired: u64,
    /// Staged frames a port did not accept (ring full, or `send` failed).
    pub tx_dropped: u64,
    /// `send` calls that failed (their frames count in `tx_dropped`).
    pub tx_errors: u64,
    /// Passing frames dropped because they are longer than a staging slot.
    pub too_long: u64,
    /// Passing frames dropped because they are not Ethernet (no MACs).
    pub not_ethernet: u64,
    /// Passing frames dropped because they would leave by the port they
    /// came in on.
    pub hairpin: u64,
    /// TCP/UDP checksums a pod left to offload, finished here (see
    /// [`crate::offload`]).
    pub checksums_finished: u64,
    /// Begun TCP/UDP checksums left to the transmitting kernel (sent with
    /// a checksum request, see [`crate::offload`]).
    pub checksums_offloaded: u64,
    /// Frames of translated connections rewritten (see [`crate::nat`]).
    pub translated: u64,
    /// Frames of translated connections dropped because the rewrite could
    /// not be applied (the frame does not hold the headers it parsed to).
    pub nat_failed: u64,
    /// Attempts on a Service frontend without a usable backend, dropped.
    pub service_refused: u64,
    /// Packets of translated connections whose backend is gone (endpoint
    /// churn, [`Outcome::BackendGone`]), dropped.
    pub backend_gone: u64,
    /// Packets sent to the host port by the reply rule (replies of
    /// connections opened from the host port) although their destination
    /// is a local pod.
    pub reply_rule: u64,
}

/// Why a switch cannot be built or given a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    /// A route names a port the switch does not have.
    #[error("forwarding table routes to port {port}, but the switch has {ports} ports")]
    NoSuchPort {
        /// The port named.
        port: usize,
        /// The number of ports.
        ports: usize,
    },
    /// Staging slots must hold at least an Ethernet and an IPv6 header.
    #[error("max frame length {0} is too small")]
    FrameTooSmall(usize),
}

/// Frames staged for one port during a batch.
struct Staging {
    /// `MAX_BATCH` slots of `max_frame` bytes.
    buf: Vec<u8>,
    lens: [usize; MAX_BATCH],
    /// Per slot, the checksum left to the port (only with `offload`).
    requests: [Option<ChecksumRequest>; MAX_BATCH],
    count: usize,
    /// Whether the port takes checksum requests.
    offload: bool,
}

impl Staging {
    fn new(max_frame: usize, offload: bool) -> Self {
        Self {
            buf: vec![0; MAX_BATCH * max_frame],
            lens: [0; MAX_BATCH],
            requests: [None; MAX_BATCH],
            count: 0,
            offload,
        }
    }
}

/// A port with its staging buffers ([`MAX_BATCH`] frames) made, for
/// [`Switch::add_port`]: made by whoever hands the port to the worker, so
/// that adding it costs the worker no allocation (a fresh megabyte of
/// zeroed heap took a worker 2 ms, with every pod's traffic waiting).
pub struct StagedPort<P> {
    port: P,
    staging: Staging,
}

impl<P: std::fmt::Debug> std::fmt::Debug for StagedPort<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedPort")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<P: Port> StagedPort<P> {
    /// `port`, staged for a switch whose [`Switch::max_frame`] is `max_frame`.
    #[must_use]
    pub fn new(port: P, max_frame: usize) -> Self {
        let staging = Staging::new(max_frame, port.checksum_offload());
        Self { port, staging }
    }
}

/// The switch: an [`Output`] that forwards passing packets to its ports.
/// See the module doc.
pub struct Switch<P: Port> {
    /// `None` for a removed port, and for the receive port during
    /// [`Switch::run_batch`]. Boxed: taking the receive port out and
    /// putting it back, for every port on every round, moves a pointer,
    /// not the port (an `XskPort` is most of a kilobyte).
    ports: Vec<Option<Box<P>>>,
    staging: Vec<Staging>,
    fib: Arc<Fib>,
    max_frame: usize,
    /// The port of the batch being processed, if the switch received it.
    rx: Option<usize>,
    stats: SwitchStats,
    /// Where denied packets go, if anyone explains them.
    denials: Option<Arc<DenialQueue>>,
    /// The table generation of the batch being processed.
    generation: u64,
    /// Wall-clock time of the batch's first denial (0: none yet).
    batch_unix_ns: u64,
    /// Denials of the batch that found the queue full: counted once per
    /// batch, not copied.
    denials_lost: u64,
}

impl<P: Port> fmt::Debug for Switch<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .ports
            .iter()
            .map(|p| p.as_ref().map_or("(receiving)", |p| p.name()))
            .collect();
        f.debug_struct("Switch")
            .field("ports", &names)
            .field("fib_routes", &self.fib.len())
            .field("max_frame", &self.max_frame)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Smallest staging slot: Ethernet with two VLAN tags and an IPv6 header.
const MIN_FRAME: usize = 22 + 40;

impl<P: Port> Switch<P> {
    /// A switch over `ports` (indexed as the routes of `fib` name them),
    /// staging up to [`MAX_BATCH`] frames of up to `max_frame` bytes per
    /// port and batch.
    pub fn new(ports: Vec<P>, fib: Arc<Fib>, max_frame: usize) -> Result<Self, SwitchError> {
        if max_frame < MIN_FRAME {
            return Err(SwitchError::FrameTooSmall(max_frame));
        }
        check_fib(&fib, ports.len())?;
        let staging = ports
            .iter()
            .map(|p| Staging::new(max_frame, p.checksum_offload()))
            .collect();
        let stats = SwitchStats {
            forwarded: vec![0; ports.len()],
            ..SwitchStats::default()
        };
        Ok(Self {
            ports: ports.into_iter().map(|p| Some(Box::new(p))).collect(),
            staging,
            fib,
            max_frame,
            rx: None,
            stats,
            denials: None,
            generation: 0,
            batch_unix_ns: 0,
            denials_lost: 0,
        })
    }

    /// Sends a copy of every packet that policy drops to `queue`.
    pub fn set_denials(&mut self, queue: Arc<DenialQueue>) {
        self.denials = Some(queue);
    }

    /// Queues a packet that policy dropped, if anyone explains them.
    fn record_denial(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: &PacketMeta,
        outcome: &Outcome,
        rewrite: Option<&Rewrite>,
    ) {
        let Some(queue) = &self.denials else {
            return;
        };
        let (kind, verdict) = match outcome {
            Outcome::Denied(v) => (DenialKind::Connection, *v),
            Outcome::Revoked(v) => (DenialKind::Revoked, *v),
            Outcome::Opened(v) if v.egress.is_policy_denial() || v.ingress.is_policy_denial() => {
                (DenialKind::Audited, *v)
            }
            _ => return,
        };
        if queue.is_full() {
            self.denials_lost += 1;
            return;
        }
        if self.batch_unix_ns == 0 {
            // Once per batch, and only in batches with denials.
            self.batch_unix_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
        }
        queue.push(Denial {
            unix_ns: self.batch_unix_ns,
            generation: self.generation,
            kind,
            // As classified: to the backend, for a Service.
            flow: rewrite.map_or(meta.key, |r| r.key(&meta.key)),
            verdict,
            ..Denial::of_frame(desc.link, frame, desc.wire_len)
        });
    }

    /// Replaces the forwarding table (between batches).
    pub fn set_fib(&mut self, fib: Arc<Fib>) -> Result<(), SwitchError> {
        check_fib(&fib, self.ports.len())?;
        self.fib = fib;
        Ok(())
    }

    /// The forwarding table in use.
    #[must_use]
    pub fn fib(&self) -> &Arc<Fib> {
        &self.fib
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Number of ports.
    #[must_use]
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Port `index` (`None` if out of range, or while it is receiving).
    #[must_use]
    pub fn port(&self, index: usize) -> Option<&P> {
        self.ports.get(index).and_then(Option::as_deref)
    }

    /// Port `index`, mutably.
    pub fn port_mut(&mut self, index: usize) -> Option<&mut P> {
        self.ports.get_mut(index).and_then(Option::as_deref_mut)
    }

    /// The ports, giving the switch up.
    #[must_use]
    pub fn into_ports(self) -> Vec<P> {
        self.ports.into_iter().flatten().map(|p| *p).collect()
    }

    /// Adds a port (a pod that appeared); returns its index, the next one.
    /// Routes to it come with the next [`set_fib`](Self::set_fib). Its
    /// buffers are made already, for this switch's
    /// [`max_frame`](Self::max_frame) (made again here if not).
    pub fn add_port(&mut self, port: StagedPort<P>) -> usize {
        let StagedPort { port, staging } = port;
        let staging = if staging.buf.len() == MAX_BATCH * self.max_frame {
            staging
        } else {
            Staging::new(self.max_frame, port.checksum_offload())
        };
        self.staging.push(staging);
        self.ports.push(Some(Box::new(port)));
        self.stats.forwarded.push(0);
        self.ports.len() - 1
    }

    /// The longest frame a port's staging holds.
    #[must_use]
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Removes port `index` (a pod that went) and returns it; indices of the
    /// other ports do not change. Frames still staged for it are counted as
    /// dropped. Set a table without routes to it first.
    pub fn remove_port(&mut self, index: usize) -> Option<P> {
        let port = self.ports.get_mut(index)?.take().map(|p| *p);
        if let Some(staging) = self.staging.get_mut(index) {
            self.stats.tx_dropped += staging.count as u64;
            staging.count = 0;
        }
        port
    }

    /// Receives one batch on port `rx` and runs it through `worker` with this
    /// switch as output; returns the number of frames (0: nothing waiting,
    /// or the port was removed).
    ///
    /// # Panics
    /// When `rx` is not a port of this switch.
    pub fn run_batch(&mut self, worker: &mut Worker<'_>, rx: usize) -> Result<usize, PortError> {
        // An empty slot between batches is a removed port.
        let Some(mut port) = self.ports[rx].take() else {
            return Ok(0);
        };
        self.rx = Some(rx);
        let result = worker.run_batch(&mut *port, self);
        self.rx = None;
        self.ports[rx] = Some(port);
        // Answers to the receive port's senders.
        self.flush(rx);
        result
    }

    /// Sends the frames staged for `index` (one `send` call).
    fn flush(&mut self, index: usize) {
        let staging = &mut self.staging[index];
        let n = staging.count;
        if n == 0 {
            return;
        }
        staging.count = 0;
        let Some(port) = self.ports[index].as_mut() else {
            // Only the receive port is out, and what is staged for it
            // (answers) waits until it is back; count rather than lose
            // silently.
            self.stats.tx_dropped += n as u64;
            return;
        };
        let mut frames: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        let slots = staging.buf.chunks_exact(self.max_frame);
        for ((f, slot), &len) in frames.iter_mut().zip(slots).zip(&staging.lens[..n]) {
            *f = &slot[..len];
        }
        let sent = if staging.offload {
            port.send_offloaded(&frames[..n], &staging.requests[..n])
        } else {
            port.send(&frames[..n])
        };
        if let Ok(sent) = sent {
            let sent = sent.min(n);
            self.stats.forwarded[index] += sent as u64;
            self.stats.tx_dropped += (n - sent) as u64;
        } else {
            self.stats.tx_errors += 1;
            self.stats.tx_dropped += n as u64;
        }
    }

    /// Copies `frame` into a staging slot of `port` (flushing the port first
    /// if its slots are full); returns the copy, for rewriting.
    fn stage(&mut self, port: usize, frame: &[u8]) -> Option<&mut [u8]> {
        if frame.len() > self.max_frame {
            self.stats.too_long += 1;
            return None;
        }
        if self.rx == Some(port) {
            self.stats.hairpin += 1;
            return None;
        }
        if self.staging[port].count == MAX_BATCH {
            self.flush(port);
        }
        let staging = &mut self.staging[port];
        let i = staging.count;
        staging.count += 1;
        staging.lens[i] = frame.len();
        staging.requests[i] = None;
        let slot = &mut staging.buf[i * self.max_frame..i * self.max_frame + frame.len()];
        slot.copy_from_slice(frame);
        Some(slot)
    }

    /// Forwards a passing IP packet, translated if `rewrite` says so; to
    /// the host port whatever its destination if `to_host` (the reply
    /// rule).
    fn forward_ip(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: &PacketMeta,
        rewrite: Option<&Rewrite>,
        to_host: bool,
    ) {
        if desc.link != LinkType::Ethernet {
            self.stats.not_ethernet += 1;
            return;
        }
        let fib = &*self.fib;
        let host = *fib.host();
        let dst = rewrite.map_or(meta.key.dst, |r| r.key(&meta.key).dst);
        let mut route = *fib.lookup(dst, meta.key.ipv6);
        if to_host && route.port != host.port {
            // The kernel made this connection's translation; it undoes it.
            self.stats.reply_rule += 1;
            route = host;
        }
        let from_host = self.rx == Some(host.port);
        // The switch is the routing hop only from a pod to a pod.
        let routed = route.port != host.port && !from_host;
        let (route, decrement) = if routed && meta.ttl <= 1 {
            self.stats.ttl_expired += 1;
            (host, false)
        } else {
            (route, routed)
        };
        let l3 = usize::from(meta.l3_offset);
        let offload = self.staging[route.port].offload;
        let Some(out) = self.stage(route.port, frame) else {
            return;
        };
        out[..6].copy_from_slice(&route.dst_mac);
        out[6..12].copy_from_slice(&route.src_mac);
        if decrement {
            if meta.is_ipv6() {
                decrement_hop_limit(&mut out[l3..]);
            } else {
                decrement_ttl(&mut out[l3..]);
            }
        }
        // Pods' stacks, and the kernel sending through `pf-host`, may have
        // left checksums to offload: left to the kernel sending the frame
        // if it takes requests, else finished here (before any
        // translation: a begun checksum covers the addresses as received).
        let begun = settle(out, meta, offload);
        let translated = rewrite.map(|r| {
            match begun {
                Begun::Request(_) => crate::nat::apply_begun(out, meta, r),
                Begun::No | Begun::Finished => crate::nat::apply(out, meta, r),
            }
            .is_ok()
        });
        match begun {
            Begun::Request(request) => {
                let staging = &mut self.staging[route.port];
                staging.requests[staging.count - 1] = Some(request);
                self.stats.checksums_offloaded += 1;
            }
            Begun::Finished => self.stats.checksums_finished += 1,
            Begun::No => {}
        }
        match translated {
            Some(true) => self.stats.translated += 1,
            Some(false) => {
                // Never forward it untranslated: take it back.
                self.stats.nat_failed += 1;
                self.staging[route.port].count -= 1;
            }
            None => {}
        }
    }

    /// Forwards a passing frame that is not (parsed) IP to the host port,
    /// unchanged.
    fn forward_unchanged(&mut self, frame: &[u8]) {
        let host = self.fib.host().port;
        let _ = self.stage(host, frame);
    }
}

fn check_fib(fib: &Fib, ports: usize) -> Result<(), SwitchError> {
    let port = fib.max_port();
    if port >= ports {
        return Err(SwitchError::NoSuchPort { port, ports });
    }
    Ok(())
}

/// Decrements the TTL of the IPv4 header at the start of `ip`, updating its
/// header checksum incrementally (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m +
/// m')`, where `m` is the 16-bit word holding TTL and protocol).
pub fn decrement_ttl(ip: &mut [u8]) {
    use crate::wire::ipv4::field::{CHECKSUM, PROTOCOL, TTL};
    let old = u16::from_be_bytes([ip[TTL], ip[PROTOCOL]]);
    ip[TTL] = ip[TTL].wrapping_sub(1);
    let new = u16::from_be_bytes([ip[TTL], ip[PROTOCOL]]);
    let hc = u16::from_be_bytes([ip[CHECKSUM.start], ip[CHECKSUM.start + 1]]);
    ip[CHECKSUM].copy_from_slice(&checksum::update_u16(hc, old, new).to_be_bytes());
}

/// Decrements the hop limit of the IPv6 header at the start of `ip` (IPv6
/// has no header checksum).
pub fn decrement_hop_limit(ip: &mut [u8]) {
    use crate::wire::ipv6::field::HOP_LIMIT;
    ip[HOP_LIMIT] = ip[HOP_LIMIT].wrapping_sub(1);
}

impl<P: Port> Switch<P> {
    /// [`Output::packet`], [`Output::translated`] and [`Output::to_host`].
    #[allow(clippy::too_many_arguments, reason = "the outputs' arguments and one")]
    fn handle(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: Option<&Rewrite>,
        to_host: bool,
    ) {
        match outcome {
            Outcome::Elsewhere => return,
            Outcome::Malformed(_) => self.stats.malformed += 1,
            Outcome::NotIp if passes => self.stats.not_ip += 1,
            Outcome::NoBackend(_) => self.stats.service_refused += 1,
            Outcome::BackendGone => self.stats.backend_gone += 1,
            _ if !passes => self.stats.policy_dropped += 1,
            _ => {}
        }
        if let Some(meta) = meta {
            // Dropped, or passed in audit mode although policy would deny.
            if !passes || matches!(outcome, Outcome::Opened(_)) {
                self.record_denial(desc, frame, meta, outcome, rewrite);
            }
        }
        if !passes {
            return;
        }
        match meta {
            Some(meta) => self.forward_ip(desc, frame, meta, rewrite, to_host),
            None => self.forward_unchanged(frame),
        }
    }
}

impl<P: Port> Output for Switch<P> {
    fn packet(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
    ) {
        self.handle(desc, frame, meta, outcome, passes, None, false);
    }

    fn translated(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: &Rewrite,
    ) {
        self.handle(desc, frame, meta, outcome, passes, Some(rewrite), false);
    }

    fn to_host(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: Option<&Rewrite>,
    ) {
        self.handle(desc, frame, meta, outcome, passes, rewrite, true);
    }

    fn rx_is_host(&self) -> bool {
        self.rx == Some(self.fib.host().port)
    }

    fn begin_batch(&mut self, generation: u64) {
        self.generation = generation;
        self.batch_unix_ns = 0;
    }

    fn reject(&mut self, desc: &RxDesc, frame: &[u8], meta: &PacketMeta) -> bool {
        if desc.link != LinkType::Ethernet {
            return false;
        }
        let port = self
            .rx
            .unwrap_or_else(|| self.fib.lookup(meta.key.src, meta.key.ipv6).port);
        if self.staging[port].count == MAX_BATCH {
            if self.rx == Some(port) {
                // Out of its slot: it cannot be flushed early.
                self.stats.tx_dropped += 1;
                return false;
            }
            self.flush(port);
        }
        let staging = &mut self.staging[port];
        let i = staging.count;
        let slot = &mut staging.buf[i * self.max_frame..(i + 1) * self.max_frame];
        let Some(len) = crate::reject::port_unreachable(frame, meta, slot) else {
            return false;
        };
        staging.lens[i] = len;
        staging.requests[i] = None;
        staging.count += 1;
        true
    }

    fn end_batch(&mut self) {
        // The receive port's frames wait until it is back in its slot.
        let rx = self.rx;
        for index in (0..self.staging.len()).filter(|&i| Some(i) != rx) {
            self.flush(index);
        }
        if self.denials_lost > 0
            && let Some(queue) = &self.denials
        {
            queue.count_lost(std::mem::take(&mut self.denials_lost));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{FrameSpec, Transport};
    use crate::ports::memory::MemoryPort;
    use crate::wire::checksum::internet_checksum;
    use std::net::Ipv4Addr;

    fn frame(ttl: u8) -> Vec<u8> {
        let mut f = FrameSpec {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            transport: Transport::Udp {
                src_port: 1,
                dst_port: 2,
            },
            payload_len: 3,
            payload_fill: 7,
        }
        .build();
        f[14 + 8] = ttl;
        f[14 + 10..14 + 12].fill(0);
        let sum = internet_checksum(&f[14..34]);
        f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn incremental_ttl_update_matches_a_full_checksum() {
        // Every TTL, including checksums that wrap around 0x0000/0xffff.
        for ttl in 1..=255u8 {
            for fill in [0u16, 0x00ff, 0xfeff, 0xffff] {
                let mut f = frame(ttl);
                // Vary the identification so the checksum takes many values.
                f[14 + 4..14 + 6].copy_from_slice(&fill.to_be_bytes());
                f[14 + 10..14 + 12].fill(0);
                let sum = internet_checksum(&f[14..34]);
                f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
                decrement_ttl(&mut f[14..]);
                assert_eq!(f[14 + 8], ttl - 1);
                assert_eq!(internet_checksum(&f[14..34]), 0, "ttl {ttl} id {fill:#x}");
            }
        }
    }

    #[test]
    fn fib_routes_pods_and_defaults_to_host() {
        let host = Route {
            port: 0,
            dst_mac: [1; 6],
            src_mac: [2; 6],
        };
        let pod = Route {
            port: 1,
            dst_mac: [3; 6],
            src_mac: [4; 6],
        };
        let mut fib = Fib::new(host);
        assert!(fib.is_empty());
        fib.insert("10.0.0.2".parse().unwrap(), pod);
        fib.insert("fd00::2".parse().unwrap(), pod);
        assert_eq!(fib.len(), 2);
        assert_eq!(*fib.lookup(0x0a00_0002, false), pod);
        assert_eq!(*fib.lookup(0x0a00_0003, false), host);
        // The IPv4 address as an IPv6 number is another address.
        assert_eq!(*fib.lookup(0x0a00_0002, true), host);
        let v6 = u128::from("fd00::2".parse::<std::net::Ipv6Addr>().unwrap());
        assert_eq!(*fib.lookup(v6, true), pod);
        assert_eq!(*fib.lookup(v6, false), host);
    }

    #[test]
    fn ports_come_and_go_without_renumbering() {
        let route = |port| Route {
            port,
            dst_mac: [0; 6],
            src_mac: [0; 6],
        };
        let memory = |name| MemoryPort::new(name, LinkType::Ethernet, [], 0);
        let mut s = Switch::new(vec![memory("host")], Arc::new(Fib::new(route(0))), 2048).unwrap();
        assert_eq!(s.add_port(StagedPort::new(memory("pod-a"), 2048)), 1);
        // Staged for another frame length: staged again for this switch's.
        assert_eq!(s.add_port(StagedPort::new(memory("pod-b"), 9022)), 2);
        assert_eq!(s.staging[2].buf.len(), MAX_BATCH * s.max_frame());
        let mut fib = Fib::new(route(0));
        fib.insert("10.0.0.2".parse().unwrap(), route(2));
        s.set_fib(Arc::new(fib)).unwrap();
        assert_eq!(
            s.remove_port(1).map(|p| p.name().to_owned()),
            Some("pod-a".into())
        );
        assert!(s.port(1).is_none());
        assert_eq!(s.port(2).map(Port::name), Some("pod-b"));
        assert_eq!(s.port_count(), 3);
        let conntrack = crate::conntrack::Conntrack::new(64, crate::conntrack::Timeouts::default());
        let publisher =
            crate::publish::Publisher::new(crate::Tables::empty(1), crate::ServiceTable::empty());
        let stats = crate::stats::WorkerStats::default();
        let mut worker = Worker::new(
            &conntrack,
            publisher.reader(),
            &stats,
            crate::worker::WorkerConfig::default(),
        );
        assert_eq!(
            s.run_batch(&mut worker, 1).unwrap(),
            0,
            "a removed port receives nothing"
        );
    }

    #[test]
    fn routes_to_missing_ports_are_refused() {
        let route = |port| Route {
            port,
            dst_mac: [0; 6],
            src_mac: [0; 6],
        };
        let mut fib = Fib::new(route(0));
        fib.insert("10.0.0.9".parse().unwrap(), route(2));
        let ports = vec![MemoryPort::new("a", LinkType::Ethernet, [], 0)];
        let err = Switch::new(ports, Arc::new(fib), 2048).unwrap_err();
        assert_eq!(err, SwitchError::NoSuchPort { port: 2, ports: 1 });
        let ports = vec![MemoryPort::new("a", LinkType::Ethernet, [], 0)];
        let mut s = Switch::new(ports, Arc::new(Fib::new(route(0))), 2048).unwrap();
        let mut bad = Fib::new(route(0));
        bad.insert("10.0.0.9".parse().unwrap(), route(1));
        assert!(s.set_fib(Arc::new(bad)).is_err());
        assert_eq!(s.fib().len(), 0, "the old table stays");
        let ports = vec![MemoryPort::new("a", LinkType::Ethernet, [], 0)];
        assert_eq!(
            Switch::new(ports, Arc::new(Fib::new(route(0))), 10).unwrap_err(),
            SwitchError::FrameTooSmall(10)
        );
    }

    #[test]
    fn more_than_a_batch_for_one_port_is_flushed_early() {
        let host = Route {
            port: 0,
            dst_mac: [1; 6],
            src_mac: [2; 6],
        };
        let ports = vec![MemoryPort::new("host", LinkType::Ethernet, [], 0).keeping_sent(1000)];
        let mut s = Switch::new(ports, Arc::new(Fib::new(host)), 128).unwrap();
        let f = frame(64);
        let mut meta = PacketMeta::default();
        let parsed = crate::flow::parse_frame_into(LinkType::Ethernet, &f, &mut meta);
        assert_eq!(parsed, Ok(crate::flow::FrameKind::Ip));
        let desc = RxDesc::default();
        for _ in 0..MAX_BATCH + 5 {
            s.packet(&desc, &f, Some(&meta), &Outcome::Established, true);
        }
        assert_eq!(s.stats().forwarded, [MAX_BATCH as u64]);
        s.end_batch();
        assert_eq!(s.stats().forwarded, [MAX_BATCH as u64 + 5]);
        let sent = s.port(0).unwrap().sent();
        assert_eq!(sent.len(), MAX_BATCH + 5);
        // To the host port: MACs rewritten, TTL untouched.
        assert_eq!(&sent[0][..6], &[1; 6]);
        assert_eq!(&sent[0][6..12], &[2; 6]);
        assert_eq!(sent[0][12..], f[12..]);
    }

    #[test]
    fn denials_beyond_a_full_queue_are_counted_once_per_batch_not_copied() {
        let host = Route {
            port: 0,
            dst_mac: [1; 6],
            src_mac: [2; 6],
        };
        let ports = vec![MemoryPort::new("host", LinkType::Ethernet, [], 0)];
        let mut s = Switch::new(ports, Arc::new(Fib::new(host)), 2048).unwrap();
        let queue = Arc::new(DenialQueue::new(2));
        s.set_denials(Arc::clone(&queue));
        let f = frame(64);
        let mut meta = PacketMeta::default();
        crate::flow::parse_frame_into(LinkType::Ethernet, &f, &mut meta).unwrap();
        let denied = Outcome::Denied(crate::tables::Verdict {
            egress: crate::tables::Decision::NotEnforced,
            ingress: crate::tables::Decision::Denied {
                group: crate::tables::GroupId(0),
            },
            passed: crate::tables::Passed::NONE,
        });
        s.begin_batch(7);
        for _ in 0..5 {
            s.packet(&RxDesc::default(), &f, Some(&meta), &denied, false);
        }
        assert_eq!(queue.lost(), 0, "counted at the end of the batch");
        s.end_batch();
        assert_eq!(queue.lost(), 3);
        let first = queue.pop().expect("queued");
        assert_eq!((first.generation, first.packet()), (7, &f[..]));
        assert!(queue.pop().is_some() && queue.pop().is_none());
        assert_eq!(s.stats().policy_dropped, 5);
    }
}
