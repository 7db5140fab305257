//! The worker: receive a batch, parse, look up the connection, classify new
//! connections, and hand every packet with its verdict to an [`Output`].
//!
//! One worker runs per core (pinned); all share one [`Conntrack`] and read
//! the published tables once per batch. Nothing in the per-packet path
//! allocates, locks or makes a system call: descriptors live in an array
//! the worker owns, counters are added once per batch, and the fragment
//! table is allocated once.
//!
//! Decisions, per packet:
//! - a packet of a known connection passes (with the configured re-check
//!   against a newer table generation: a connection the new tables deny is
//!   cut on its next packet); if the connection is translated, the packet
//!   is too (forward: destination to the backend; reply: source back to the
//!   Service address);
//! - an ICMP error about a known connection passes; about a translated
//!   one, it is translated too (an error from the backend's side about a
//!   forward packet: the quote's backend back to the Service address, and
//!   the error's source if it is the backend; an error from the client about
//!   a reply: to the backend, quote included; see [`crate::nat`]);
//! - a packet that opens a connection (TCP SYN, SCTP INIT, ICMP echo
//!   request, any UDP or other datagram) is classified; if allowed, the
//!   connection is recorded;
//! - a packet without a connection addressed to a Service frontend of the
//!   batch's generation gets a backend (`Frontend::select`: the same for the
//!   same flow on every worker) and is classified as addressed to that
//!   backend, never to the Service address: policy applies after
//!   translation. If allowed, the connection is recorded with its
//!   translation ([`crate::conntrack::Nat`]; a closed TCP connection
//!   through another Service address that holds the same translated tuple,
//!   a client reusing its port, gives way: see
//!   [`Conntrack::insert_translated`]). A frontend without a usable
//!   backend refuses the attempt ([`Outcome::NoBackend`]): with no usable
//!   endpoint anywhere the worker asks the output to answer it with a port
//!   unreachable ([`Output::reject`], [`crate::reject`]: not to ICMP,
//!   broadcasts or resets, at most [`crate::reject::Budget::PER_SECOND`] a
//!   second per worker), as kube-proxy rejects; under
//!   `internalTrafficPolicy: Local` with none on this node it is dropped
//!   silently, as kube-proxy drops it. The worker only decides the rewrite
//!   ([`Rewrite`], handed to [`Output::translated`]);
//!   the switch applies it to its copy of the frame ([`crate::nat`]);
//!   packets received on the host port ([`Output::rx_is_host`]) are never
//!   translated: kube-proxy translates what the kernel sends;
//! - once per new generation, a translated connection's backend must still
//!   serve its frontend ([`crate::services::Frontend::serves`]): if not,
//!   the connection ends (both slots; [`Outcome::BackendGone`]), except
//!   that a UDP client's datagram is then translated anew to a current
//!   backend (endpoint churn);
//! - a connection opened by a packet from the host port is recorded so;
//!   packets towards its initiator go to [`Output::to_host`] (the reply
//!   rule: the kernel undoes its own translations);
//! - a mid-stream packet with no connection (TCP without SYN, SCTP other
//!   than INIT, an echo reply) is picked up loosely: allowed if the tables
//!   allow it in its own direction or as a reply in the other, so that a
//!   restart of podfence does not cut connections the policy allows;
//! - a non-first fragment gets the verdict of its first fragment (see
//!   [`crate::fragments::FragmentTable`]); without one, it is denied;
//! - a frame that does not parse gets the configured verdict and is counted
//!   as malformed; a frame that is not IP is not policy's business and passes.

use crate::conntrack::{self, ConnKey, Conntrack, Inserted, Nat, NatAddr, Signal};
use crate::flow::FrameKind;
use crate::nat::{Rewrite, Side};
use crate::ports::{MAX_BATCH, Port, PortError, RxDesc};
use crate::publish::TablesReader;
use crate::services::{Frontend, NoBackend, ServiceTable};
use crate::stats::{Counters, WorkerStats};
use crate::tables::{IpProtocol, Tables, Verdict};
use crate::wire::ip_proto;

/// What happens to frames that do not parse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MalformedAction {
    /// Drop them (fail closed).
    #[default]
    Drop,
    /// Let them through.
    Pass,
}

/// Worker settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Frames asked for per receive (at most [`MAX_BATCH`]).
    pub batch: usize,
    /// Re-check established connections against each new generation.
    pub revalidate: bool,
    /// Verdict for frames that do not parse.
    pub malformed: MalformedAction,
    /// Take time from frame timestamps (replays) instead of the clock.
    pub capture_time: bool,
    /// Fragment table entries.
    pub fragment_slots: usize,
    /// `Some((w, n))`: handle only the packets whose host pair hashes to
    /// shard `w` of `n` (and, for `w == 0`, the frames that do not parse);
    /// the others are reported as [`Outcome::Elsewhere`]. For workers that
    /// all read the same input, as replays do.
    pub shard: Option<(u32, u32)>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: MAX_BATCH,
            revalidate: true,
            malformed: MalformedAction::Drop,
            capture_time: false,
            fragment_slots: 1024,
            shard: None,
        }
    }
}

/// Why a packet got its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Part of a known connection.
    Established,
    /// An ICMP error about a known connection (handed on with the
    /// connection's rewrite if it is translated).
    Related,
    /// Opened a connection the tables allow.
    Opened(Verdict),
    /// Picked up mid-stream; `reversed`: allowed as a reply of a connection
    /// opened by the other side.
    PickedUp {
        /// The verdict that allowed it.
        verdict: Verdict,
        /// Whether the connection's initiator is this packet's destination.
        reversed: bool,
    },
    /// Denied as a new connection.
    Denied(Verdict),
    /// An established connection that a new table generation denies.
    Revoked(Verdict),
    /// Addressed to a Service frontend without a usable backend: refused
    /// ([`NoBackend::NoEndpoints`], as kube-proxy rejects: dropped, and
    /// answered through [`Output::reject`]) or dropped
    /// ([`NoBackend::NoLocalEndpoints`]).
    NoBackend(NoBackend),
    /// A packet of a translated connection whose backend the batch's
    /// generation no longer lists as serving its frontend (endpoint churn):
    /// the connection is ended (both its slots) and the packet dropped. Not
    /// a policy decision. (A UDP client's next datagram is not this: it is
    /// translated anew to a current backend.)
    BackendGone,
    /// A non-first fragment given its first fragment's verdict.
    Fragment {
        /// That verdict (deny when the first fragment was not seen).
        allowed: bool,
        /// The connection of the first fragment (this fragment's own key,
        /// without ports, when it was not seen).
        flow: ConnKey,
    },
    /// Another worker's shard: not looked at.
    Elsewhere,
    /// The frame did not parse.
    Malformed(crate::flow::ParseError),
    /// Not IP: passed to the kernel, not policy's business.
    NotIp,
}

impl Outcome {
    /// Whether the packet passes, given the action for malformed frames.
    #[must_use]
    pub fn passes(&self, malformed: MalformedAction) -> bool {
        match self {
            Self::Established
            | Self::Related
            | Self::Opened(_)
            | Self::PickedUp { .. }
            | Self::NotIp => true,
            Self::Denied(_)
            | Self::Revoked(_)
            | Self::NoBackend(_)
            | Self::BackendGone
            | Self::Elsewhere => false,
            Self::Fragment { allowed, .. } => *allowed,
            Self::Malformed(_) => malformed == MalformedAction::Pass,
        }
    }
}

/// Where processed packets go: transmit, drop, record.
pub trait Output {
    /// A batch decided by table generation `generation` begins.
    fn begin_batch(&mut self, generation: u64) {
        let _ = generation;
    }

    /// Whether the batch that begins was received on the host port (asked
    /// once per batch, after [`Output::begin_batch`]). Connections opened
    /// by such packets are recorded as coming from the host port (the reply
    /// rule, see [`Output::to_host`]), and such packets are never
    /// translated: only connections from local pods are, kube-proxy
    /// translates the rest in the kernel. By default, false.
    fn rx_is_host(&self) -> bool {
        false
    }

    /// One packet: its descriptor, bytes, parsed metadata (if it parsed),
    /// outcome, and whether it passes.
    fn packet(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&crate::flow::PacketMeta>,
        outcome: &Outcome,
        passes: bool,
    );

    /// [`Output::packet`] for a packet of a translated connection: `rewrite`
    /// is what forwarding it must change (for a denied one, the translation
    /// it was classified with). By default, the packet as it is.
    #[allow(clippy::too_many_arguments, reason = "packet's arguments and one")]
    fn translated(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&crate::flow::PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: &Rewrite,
    ) {
        let _ = rewrite;
        self.packet(desc, frame, meta, outcome, passes);
    }

    /// [`Output::packet`] (or [`Output::translated`], with `rewrite`) for
    /// a packet travelling towards the initiator of a connection whose
    /// first packet came from the host port: the reply rule says it leaves
    /// through the host port whatever its destination, so that the kernel
    /// undoes the translation it made (kube-proxy's NodePorts, external
    /// IPs, hostPorts, the node's own traffic) even when the initiator's
    /// address is a local pod's. By default, as any other packet.
    #[allow(clippy::too_many_arguments, reason = "packet's arguments and one")]
    fn to_host(
        &mut self,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&crate::flow::PacketMeta>,
        outcome: &Outcome,
        passes: bool,
        rewrite: Option<&Rewrite>,
    ) {
        match rewrite {
            Some(r) => self.translated(desc, frame, meta, outcome, passes, r),
            None => self.packet(desc, frame, meta, outcome, passes),
        }
    }

    /// Answers a packet the worker refused for want of a Service endpoint
    /// (after handing it to [`Output::packet`], which drops it) with an
    /// ICMP or ICMPv6 port unreachable to its sender
    /// ([`crate::reject::port_unreachable`]); returns whether an answer was
    /// sent. Asked only for packets that deserve one
    /// ([`crate::reject::answerable`]) and within the worker's budget. By
    /// default, none: an offline replay has no one to answer.
    fn reject(&mut self, desc: &RxDesc, frame: &[u8], meta: &crate::flow::PacketMeta) -> bool {
        let _ = (desc, frame, meta);
        false
    }

    /// The batch is done (flush transmit queues here).
    fn end_batch(&mut self) {}
}

/// One worker's state.
#[derive(Debug)]
pub struct Worker<'a> {
    conntrack: &'a Conntrack,
    reader: TablesReader,
    fragments: crate::fragments::FragmentTable<FragmentVerdict>,
    stats: &'a WorkerStats,
    config: WorkerConfig,
    descs: [RxDesc; MAX_BATCH],
    kinds: [Result<crate::flow::FrameKind, crate::flow::ParseError>; MAX_BATCH],
    metas: [crate::flow::PacketMeta; MAX_BATCH],
    located: [crate::conntrack::Located; MAX_BATCH],
    /// Port unreachables this worker may still send.
    rejects: crate::reject::Budget,
}

/// What a first fragment leaves for the fragments that follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentVerdict {
    /// Whether it passed.
    pub allowed: bool,
    /// Its connection.
    pub flow: ConnKey,
    /// Its translation: the later fragments' addresses change too.
    pub rewrite: Option<Rewrite>,
    /// Whether it went to the host port by the reply rule: so do they.
    pub to_host: bool,
}

/// A packet's decision: its outcome, the rewrite of a translated
/// connection's packet, and whether the reply rule sends it to the host
/// port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decided {
    outcome: Outcome,
    rewrite: Option<Rewrite>,
    to_host: bool,
}

impl Decided {
    /// Forwarded by its destination, untranslated.
    fn plain(outcome: Outcome) -> Self {
        Self {
            outcome,
            rewrite: None,
            to_host: false,
        }
    }

    /// A packet of a known connection, untranslated; `to_host`: by the
    /// reply rule.
    #[inline]
    fn established(to_host: bool) -> Self {
        Self {
            outcome: Outcome::Established,
            rewrite: None,
            to_host,
        }
    }

    /// Forwarded by its destination after `rewrite` (if some).
    fn with(outcome: Outcome, rewrite: Option<Rewrite>) -> Self {
        Self {
            outcome,
            rewrite,
            to_host: false,
        }
    }

    /// Counts the packet's verdict into `c` and hands it to `out`.
    #[allow(
        clippy::inline_always,
        reason = "measured: out of line, the decision is copied through memory (store-forwarding stalls, docs/benchmarks.md)"
    )]
    #[inline(always)]
    fn finish(
        &self,
        c: &mut Counters,
        out: &mut impl Output,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&crate::flow::PacketMeta>,
        malformed: MalformedAction,
    ) {
        let passes = self.outcome.passes(malformed);
        count_verdict(c, &self.outcome, passes, desc.wire_len);
        self.emit(out, desc, frame, meta, passes);
    }

    /// Hands the packet to `out`: [`Output::to_host`] by the reply rule,
    /// else [`Output::translated`] with a rewrite, else [`Output::packet`].
    #[inline]
    fn emit(
        &self,
        out: &mut impl Output,
        desc: &RxDesc,
        frame: &[u8],
        meta: Option<&crate::flow::PacketMeta>,
        passes: bool,
    ) {
        let outcome = &self.outcome;
        match &self.rewrite {
            _ if self.to_host => {
                out.to_host(desc, frame, meta, outcome, passes, self.rewrite.as_ref());
            }
            Some(r) => out.translated(desc, frame, meta, outcome, passes, r),
            None => out.packet(desc, frame, meta, outcome, passes),
        }
    }
}

/// The port number a policy looks at: the destination port of port-carrying
/// protocols, 0 for the others.
#[inline]
fn policy_port(key: &ConnKey) -> u16 {
    match key.protocol {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => key.dst_port,
        _ => 0,
    }
}

/// How many packets ahead of its decision a packet's translated-entry slot
/// and NAT data are prefetched ([`Conntrack::prefetch_linked`]): far enough
/// for the loads to land, near enough that its own slot (prefetched in the
/// second pass) is cached when its tag is read.
const LINK_AHEAD: usize = 4;

/// Classifies a connection attempt in the direction of `key`.
#[inline]
#[must_use]
pub fn classify_key(tables: &Tables, key: &ConnKey) -> Verdict {
    let port = policy_port(key);
    let protocol = IpProtocol(key.protocol);
    if key.ipv6 {
        tables.classify_v6(key.src, key.dst, protocol, port)
    } else {
        tables.classify_v4(key.src as u32, key.dst as u32, protocol, port)
    }
}

impl<'a> Worker<'a> {
    /// A worker sharing `conntrack`, reading tables through `reader`,
    /// counting into `stats`.
    #[must_use]
    pub fn new(
        conntrack: &'a Conntrack,
        reader: TablesReader,
        stats: &'a WorkerStats,
        config: WorkerConfig,
    ) -> Self {
        Self {
            conntrack,
            reader,
            fragments: crate::fragments::FragmentTable::new(config.fragment_slots.max(1)),
            stats,
            config: WorkerConfig {
                batch: config.batch.clamp(1, MAX_BATCH),
                ..config
            },
            descs: [RxDesc::default(); MAX_BATCH],
            kinds: [Ok(crate::flow::FrameKind::NotIp { ethertype: 0 }); MAX_BATCH],
            metas: [crate::flow::PacketMeta::default(); MAX_BATCH],
            located: [crate::conntrack::Located::default(); MAX_BATCH],
            rejects: crate::reject::Budget::default(),
        }
    }

    /// Receives and processes one batch from `port`; returns the number of
    /// frames (0: nothing was waiting, or the port is finished).
    pub fn run_batch(
        &mut self,
        port: &mut dyn Port,
        out: &mut impl Output,
    ) -> Result<usize, PortError> {
        let n = port.recv(&mut self.descs[..self.config.batch])?;
        if n == 0 {
            return Ok(0);
        }
        let generation = self.reader.load();
        let tables = &generation.tables;
        let services = &*generation.services;
        out.begin_batch(tables.generation());
        let from_host = out.rx_is_host();
        let mut c = Counters {
            batches: 1,
            ..Counters::default()
        };
        let (shard, shards) = self.config.shard.unwrap_or((0, 1));
        let batch_now = if self.config.capture_time {
            0
        } else {
            self.conntrack.clock_ns()
        };
        // Parse the batch and prefetch in two stages (fingerprints, then
        // the matching entry), so that the conntrack's cache misses of the
        // whole batch overlap instead of stalling packet by packet.
        let batch = self.descs[..n]
            .iter()
            .zip(&mut self.kinds)
            .zip(&mut self.metas);
        for (((desc, kind), meta), located) in batch.zip(&mut self.located) {
            *kind = crate::flow::parse_frame_into(desc.link, port.frame(desc), meta);
            if *kind == Ok(crate::flow::FrameKind::Ip) {
                *located = self.conntrack.locate(&meta.key);
                self.conntrack.prefetch_bucket(located);
            }
        }
        for (kind, located) in self.kinds[..n].iter().zip(&self.located) {
            if *kind == Ok(crate::flow::FrameKind::Ip) {
                self.conntrack.prefetch_entry(located);
            }
        }
        let linked = if services.is_empty() { 0 } else { n };
        let batch = self.descs[..n].iter().zip(&self.kinds).zip(&self.metas);
        for (i, (((desc, kind), meta), located)) in batch.zip(&self.located).enumerate() {
            prefetch_linked(self.conntrack, &self.located, &self.kinds, i, linked);
            let frame = port.frame(desc);
            let now = if self.config.capture_time {
                desc.timestamp_ns
            } else {
                batch_now
            };
            let mine = match kind {
                Ok(crate::flow::FrameKind::Ip) => {
                    shards <= 1 || translated_shard(services, &meta.key, shards) == shard
                }
                _ => shard == 0,
            };
            if !mine {
                out.packet(desc, frame, None, &Outcome::Elsewhere, false);
                continue;
            }
            c.rx_packets += 1;
            c.rx_bytes += u64::from(desc.wire_len);
            // Each arm finishes its own packet: a decision merged from the
            // arms into one value would be copied through memory.
            let malformed = self.config.malformed;
            match kind {
                Ok(crate::flow::FrameKind::Ip) => {
                    let decider = Decider {
                        conntrack: self.conntrack,
                        tables,
                        services,
                        revalidate: self.config.revalidate,
                        from_host,
                        now,
                    };
                    let decision = decider.packet(&mut self.fragments, meta, located, &mut c);
                    decision.finish(&mut c, out, desc, frame, Some(meta), malformed);
                    if matches!(decision.outcome, Outcome::NoBackend(NoBackend::NoEndpoints)) {
                        answer_refused(&mut self.rejects, out, desc, frame, meta, now, &mut c);
                    }
                }
                Ok(crate::flow::FrameKind::NotIp { .. }) => {
                    c.not_ip += 1;
                    Decided::plain(Outcome::NotIp)
                        .finish(&mut c, out, desc, frame, None, malformed);
                }
                Err(e) => {
                    c.malformed += 1;
                    Decided::plain(Outcome::Malformed(*e))
                        .finish(&mut c, out, desc, frame, None, malformed);
                }
            }
        }
        port.release(&self.descs[..n]);
        out.end_batch();
        self.stats.add(&c);
        Ok(n)
    }
}

/// What the decisions of one batch share.
struct Decider<'a> {
    conntrack: &'a Conntrack,
    tables: &'a Tables,
    services: &'a ServiceTable,
    revalidate: bool,
    /// Whether the batch came from the host port.
    from_host: bool,
    /// Nanoseconds on the clock conntrack timeouts use.
    now: u64,
}

impl Decider<'_> {
    /// The decision for one parsed packet (see the module doc), its
    /// rewrite if it belongs to a translated connection, and whether the
    /// reply rule sends it to the host port.
    #[allow(
        clippy::inline_always,
        reason = "measured: out of line, the decision is copied through memory (store-forwarding stalls, docs/benchmarks.md)"
    )]
    #[inline(always)]
    fn packet(
        &self,
        fragments: &mut crate::fragments::FragmentTable<FragmentVerdict>,
        meta: &crate::flow::PacketMeta,
        located: &crate::conntrack::Located,
        c: &mut Counters,
    ) -> Decided {
        let now = self.now;
        let key = meta.key;
        if let crate::flow::Fragment::Later { id } = meta.fragment {
            if let Some(f) = fragments.lookup(&meta.key, id, now) {
                c.fragments_followed += 1;
                let outcome = Outcome::Fragment {
                    allowed: f.allowed,
                    flow: f.flow,
                };
                return Decided {
                    outcome,
                    rewrite: f.rewrite,
                    to_host: f.to_host,
                };
            }
            c.fragments_orphaned += 1;
            let outcome = Outcome::Fragment {
                allowed: false,
                flow: key,
            };
            return Decided::plain(outcome);
        }
        let decided = self.connection(meta, &key, located, c);
        if let crate::flow::Fragment::First { id } = meta.fragment {
            let verdict = FragmentVerdict {
                allowed: decided.outcome.passes(MalformedAction::Drop),
                flow: key,
                rewrite: decided.rewrite,
                to_host: decided.to_host,
            };
            fragments.insert(&meta.key, id, verdict, now);
        }
        decided
    }

    /// The decision for a packet that is not a later fragment.
    #[allow(
        clippy::inline_always,
        reason = "measured: out of line, the decision is copied through memory (store-forwarding stalls, docs/benchmarks.md)"
    )]
    #[inline(always)]
    fn connection(
        &self,
        meta: &crate::flow::PacketMeta,
        key: &ConnKey,
        located: &crate::conntrack::Located,
        c: &mut Counters,
    ) -> Decided {
        let Self {
            conntrack,
            tables,
            now,
            ..
        } = *self;
        let signal = Signal::new(meta.tcp_flags, meta.sctp_chunk);
        let generation = tables.generation() as u32;
        // The common cases inline: a connection the batch's generation
        // allowed, untranslated or translated. The rest (re-checked, ended,
        // new) is out of line, so that this path moves no large values
        // through memory.
        let found = conntrack.lookup_at(located, signal, now);
        let mut linked = None;
        if let Some(hit) = &found {
            match hit.nat {
                None if hit.generation == generation => {
                    c.conntrack_hits += 1;
                    return Decided::established(hit.from_host && hit.reply);
                }
                Some(Nat::Translated { service }) if hit.reply && hit.generation == generation => {
                    // A reply: from the backend back to the Service address.
                    c.conntrack_hits += 1;
                    let rewrite = Rewrite {
                        side: Side::Source,
                        to: service,
                    };
                    return Decided {
                        outcome: Outcome::Established,
                        rewrite: Some(rewrite),
                        to_host: hit.from_host,
                    };
                }
                Some(Nat::Alias { backend }) => {
                    // Forward, to the Service address: the connection's
                    // state is in the entry of the translated tuple.
                    let rewrite = Rewrite {
                        side: Side::Destination,
                        to: backend,
                    };
                    let entry =
                        conntrack.lookup_linked(hit, located, &rewrite.key(key), signal, now);
                    if let Some(e) = &entry
                        && e.generation == generation
                    {
                        c.conntrack_hits += 1;
                        return Decided::with(Outcome::Established, Some(rewrite));
                    }
                    linked = entry;
                }
                _ => {}
            }
        }
        self.not_plain(meta, located, found, linked, c)
    }

    /// [`Self::connection`] for a packet that is not part of a connection
    /// the batch's generation allowed: `found` is what its own key's lookup
    /// found, `linked` an alias's translated entry (see [`Self::known`]).
    #[inline(never)]
    fn not_plain(
        &self,
        meta: &crate::flow::PacketMeta,
        located: &crate::conntrack::Located,
        found: Option<conntrack::Hit>,
        linked: Option<conntrack::Hit>,
        c: &mut Counters,
    ) -> Decided {
        let key = &meta.key;
        let signal = Signal::new(meta.tcp_flags, meta.sctp_chunk);
        let Self {
            conntrack,
            tables,
            services,
            from_host,
            now,
            ..
        } = *self;
        let generation = tables.generation() as u32;
        if let Some(decided) = self.known(key, located, found, linked, c) {
            return decided;
        }
        if let Some(inner) = meta.related {
            // An ICMP error quotes the packet it is about, as that packet's
            // sender saw it; the error goes back towards that sender (the
            // parser reversed the quoted key: it is oriented like the
            // error). Towards the initiator of a connection that came from
            // the host port, it goes to the host port. About a translated
            // connection, it is translated as a packet of the connection
            // in its direction would be: found by the translated entry
            // (from the backend's side: back to the Service address) or by
            // the alias (from the client: to the backend).
            if let Some(hit) = conntrack.lookup(&inner, Signal::default(), now) {
                let rewrite = match hit.nat {
                    Some(Nat::Translated { service }) if hit.reply => Some(Rewrite {
                        side: Side::Source,
                        to: service,
                    }),
                    Some(Nat::Alias { backend }) if !hit.reply => Some(Rewrite {
                        side: Side::Destination,
                        to: backend,
                    }),
                    _ => None,
                };
                return Decided {
                    outcome: Outcome::Related,
                    rewrite,
                    to_host: hit.from_host && hit.reply,
                };
            }
        }
        // Only connections from local pods are translated: what comes from
        // the host port was translated by kube-proxy already, or is its to
        // translate (the kernel routes it here after its own rules).
        let mut hairpin = None;
        if !from_host && let Some(frontend) = services.destination(key) {
            match frontend.select(key) {
                Some(b) if b.addr_bits() == (key.src, key.ipv6) => hairpin = Some(b),
                _ => return self.open_translated(frontend, meta, key, located, signal, c),
            }
        }
        let record = |c: &mut Counters, initiator: &ConnKey, picked_up: bool| {
            let state = conntrack::initial_state(initiator.protocol, signal, picked_up);
            // The packet's own key is located already; a reversed one is
            // not, and its initiator is the packet's destination, whose
            // packets did not come from the host port (when they do, its
            // replies go there by their destination anyway).
            let inserted = if initiator == key {
                conntrack.insert_at_from(located, state, generation, now, from_host)
            } else {
                conntrack.insert(initiator, state, generation, now)
            };
            match inserted {
                Inserted::Fresh | Inserted::Existing => {}
                Inserted::Evicted => c.conntrack_evictions += 1,
                Inserted::Failed => c.conntrack_insert_failures += 1,
            }
        };
        // A pod reaching itself through its Service (left to the kernel,
        // see `is_hairpin`) is classified as addressed to its backend, that
        // is to itself: a pod can always reach itself, whatever its egress
        // policy says of the Service address.
        let verdict = match hairpin {
            Some(b) => classify_key(tables, &to_backend(key, b)),
            None => classify_key(tables, key),
        };
        let opens = !meta.echo_reply && conntrack::opens_connection(key.protocol, signal);
        if opens || verdict.is_allowed() {
            if verdict.is_allowed() {
                c.new_allowed += 1;
                if !opens {
                    c.picked_up += 1;
                }
                record(c, key, !opens);
                let outcome = if opens {
                    Outcome::Opened(verdict)
                } else {
                    Outcome::PickedUp {
                        verdict,
                        reversed: false,
                    }
                };
                return Decided::plain(outcome);
            }
            c.new_denied += 1;
            return Decided::plain(Outcome::Denied(verdict));
        }
        // Mid-stream and not allowed in its own direction: maybe a reply.
        let reverse = key.reversed();
        let back = classify_key(tables, &reverse);
        if back.is_allowed() {
            c.new_allowed += 1;
            c.picked_up += 1;
            record(c, &reverse, true);
            let outcome = Outcome::PickedUp {
                verdict: back,
                reversed: true,
            };
            return Decided::plain(outcome);
        }
        c.new_denied += 1;
        Decided::plain(Outcome::Denied(verdict))
    }

    /// The decision for a packet of a connection in the table (found by
    /// its own tuple, or, to a Service, by its alias and then the
    /// translated tuple); `None` when there is none, or when it was a UDP
    /// flow to a backend that is gone (the datagram is then new). `found`:
    /// what the lookup of the packet's own key found; `linked`: for an
    /// alias, its translated entry as [`Self::connection`] found it.
    fn known(
        &self,
        key: &ConnKey,
        located: &crate::conntrack::Located,
        mut found: Option<conntrack::Hit>,
        linked: Option<conntrack::Hit>,
        c: &mut Counters,
    ) -> Option<Decided> {
        let Self {
            conntrack,
            tables,
            revalidate,
            ..
        } = *self;
        let generation = tables.generation() as u32;
        // A translated connection: (the alias it was found by, the
        // initiator's key after translation, the rewrite).
        let mut translation = None;
        if let Some(hit) = found {
            match hit.nat {
                Some(Nat::Alias { backend }) => {
                    // Forward, to the Service address: the connection's
                    // state is in the entry of the translated tuple.
                    let rewrite = Rewrite {
                        side: Side::Destination,
                        to: backend,
                    };
                    let translated = rewrite.key(key);
                    found = linked;
                    if found.is_none() {
                        // The connection ended; its alias goes with it.
                        c.service_stale_aliases += 1;
                        conntrack.remove(&hit);
                    } else {
                        translation = Some((Some(hit), translated, rewrite));
                    }
                }
                Some(Nat::Translated { service }) if hit.reply => {
                    let rewrite = Rewrite {
                        side: Side::Source,
                        to: service,
                    };
                    translation = Some((None, located.initiator(&hit), rewrite));
                }
                _ => {}
            }
        }
        let hit = found?;
        if hit.generation != generation {
            // Endpoint churn: once per new generation, a translated
            // connection's backend must still serve its frontend.
            if let (Some((alias, initiator, _)), Some(Nat::Translated { service })) =
                (&translation, hit.nat)
                && !self.still_serves(initiator, service)
            {
                c.service_backend_gone += 1;
                conntrack.remove(&hit);
                match alias {
                    Some(alias) => conntrack.remove(alias),
                    None => self.remove_alias(initiator, service),
                }
                if initiator.protocol == ip_proto::UDP && !hit.reply {
                    // The client keeps its socket: its next datagram goes
                    // to a current backend, as a new flow.
                    return None;
                }
                c.conntrack_hits += 1;
                return Some(Decided::plain(Outcome::BackendGone));
            }
        }
        c.conntrack_hits += 1;
        if hit.generation != generation {
            if revalidate {
                c.revalidated += 1;
                let initiator = match &translation {
                    Some((Some(_), translated, _)) => *translated,
                    _ => located.initiator(&hit),
                };
                let v = match &translation {
                    Some(_) => classify_key(tables, &initiator),
                    None => classify_untranslated(tables, self.services, &initiator),
                };
                if !v.is_allowed() {
                    c.revoked += 1;
                    conntrack.remove(&hit);
                    if let Some((Some(alias), _, _)) = &translation {
                        conntrack.remove(alias);
                    }
                    return Some(Decided::plain(Outcome::Revoked(v)));
                }
                conntrack.set_generation(&hit, generation);
            } else if translation.is_some() {
                // Checked for churn above: not again until the next one.
                conntrack.set_generation(&hit, generation);
            }
        }
        Some(Decided {
            outcome: Outcome::Established,
            rewrite: translation.map(|(_, _, r)| r),
            to_host: hit.from_host && hit.reply,
        })
    }

    /// Whether the backend of a translated connection (`initiator`: client
    /// → backend) still serves the frontend it was chosen for (`service`)
    /// in the batch's generation; false when the frontend is gone too. A
    /// hash lookup and a binary search, once per connection and generation.
    fn still_serves(&self, initiator: &ConnKey, service: NatAddr) -> bool {
        let original = ConnKey {
            dst: service.addr,
            dst_port: service.port,
            ..*initiator
        };
        let backend = crate::services::Backend {
            addr: if initiator.ipv6 {
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(initiator.dst))
            } else {
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(initiator.dst as u32))
            },
            port: initiator.dst_port,
        };
        self.services
            .destination(&original)
            .is_some_and(|f| f.serves(backend))
    }

    /// Removes the alias (client → `service`) of the translated connection
    /// whose entry's initiator key is `initiator`, found from a reply.
    fn remove_alias(&self, initiator: &ConnKey, service: NatAddr) {
        let original = ConnKey {
            dst: service.addr,
            dst_port: service.port,
            ..*initiator
        };
        if let Some(alias) = self
            .conntrack
            .lookup(&original, Signal::default(), self.now)
            && matches!(alias.nat, Some(Nat::Alias { .. }))
        {
            self.conntrack.remove(&alias);
        }
    }

    /// A packet without a connection to a Service frontend: choose the
    /// backend, classify against it, record the translated connection.
    /// Mid-stream packets (an agent restarted under the connection) are
    /// translated and picked up the same way: the choice is the same while
    /// the endpoint set is.
    fn open_translated(
        &self,
        frontend: &Frontend,
        meta: &crate::flow::PacketMeta,
        key: &ConnKey,
        located: &crate::conntrack::Located,
        signal: Signal,
        c: &mut Counters,
    ) -> Decided {
        let Some(backend) = frontend.select(key) else {
            let reason = frontend.no_backend().unwrap_or(NoBackend::NoEndpoints);
            match reason {
                NoBackend::NoEndpoints => c.service_no_endpoint += 1,
                NoBackend::NoLocalEndpoints => c.service_no_local_endpoint += 1,
            }
            return Decided::plain(Outcome::NoBackend(reason));
        };
        let (addr, _) = backend.addr_bits();
        let rewrite = Rewrite {
            side: Side::Destination,
            to: NatAddr {
                addr,
                port: backend.port,
            },
        };
        let translated = rewrite.key(key);
        let verdict = classify_key(self.tables, &translated);
        if !verdict.is_allowed() {
            c.new_denied += 1;
            return Decided::with(Outcome::Denied(verdict), Some(rewrite));
        }
        let opens = !meta.echo_reply && conntrack::opens_connection(key.protocol, signal);
        c.new_allowed += 1;
        c.service_translated += 1;
        if !opens {
            c.picked_up += 1;
        }
        let state = conntrack::initial_state(key.protocol, signal, !opens);
        let generation = self.tables.generation() as u32;
        let inserted =
            self.conntrack
                .insert_translated(located, &translated, state, generation, self.now);
        for i in [inserted.0, inserted.1] {
            match i {
                Inserted::Fresh | Inserted::Existing => {}
                Inserted::Evicted => c.conntrack_evictions += 1,
                Inserted::Failed => c.conntrack_insert_failures += 1,
            }
        }
        let outcome = if opens {
            Outcome::Opened(verdict)
        } else {
            Outcome::PickedUp {
                verdict,
                reversed: false,
            }
        };
        Decided::with(outcome, Some(rewrite))
    }
}

/// Counts a packet's verdict.
#[allow(
    clippy::inline_always,
    reason = "measured: part of the per-packet path, see `Decided::finish`"
)]
#[inline(always)]
fn count_verdict(c: &mut Counters, outcome: &Outcome, passes: bool, wire_len: u32) {
    if passes {
        c.allowed += 1;
        c.allowed_bytes += u64::from(wire_len);
    } else {
        c.denied += 1;
        c.denied_bytes += u64::from(wire_len);
    }
    if let Outcome::Denied(v) = outcome {
        c.new_denied_egress += u64::from(!v.egress.is_allowed());
        c.new_denied_ingress += u64::from(!v.ingress.is_allowed());
    }
}

/// Asks `out` to answer a packet refused for want of a Service endpoint,
/// if it deserves an answer and `budget` allows one at `now`.
fn answer_refused(
    budget: &mut crate::reject::Budget,
    out: &mut impl Output,
    desc: &RxDesc,
    frame: &[u8],
    meta: &crate::flow::PacketMeta,
    now: u64,
    c: &mut Counters,
) {
    if !crate::reject::answerable(desc.link, frame, meta) {
        return;
    }
    if !budget.available(now) {
        c.service_rejects_limited += 1;
    } else if out.reject(desc, frame, meta) {
        budget.spend();
        c.service_rejects += 1;
    }
}

/// `key` addressed to `backend` instead.
fn to_backend(key: &ConnKey, backend: crate::services::Backend) -> ConnKey {
    ConnKey {
        dst: backend.addr_bits().0,
        dst_port: backend.port,
        ..*key
    }
}

/// [`classify_key`] for a flow the worker does not translate: a pod
/// reaching itself through its Service ([`is_hairpin`]) is classified as
/// addressed to its backend, that is to itself.
fn classify_untranslated(tables: &Tables, services: &ServiceTable, key: &ConnKey) -> Verdict {
    match services
        .destination(key)
        .and_then(|f| f.select(key))
        .filter(|b| b.addr_bits() == (key.src, key.ipv6))
    {
        Some(b) => classify_key(tables, &to_backend(key, b)),
        None => classify_key(tables, key),
    }
}

/// [`LINK_AHEAD`] packets after packet `i`, the NAT data and a translated
/// entry's slot (what a translated packet reads after its own slot), among
/// the first `linked` packets of the batch (0 in a batch without Services).
#[inline]
fn prefetch_linked(
    conntrack: &Conntrack,
    located: &[crate::conntrack::Located],
    kinds: &[Result<FrameKind, crate::flow::ParseError>],
    i: usize,
    linked: usize,
) {
    let ahead = i + LINK_AHEAD;
    if ahead < linked && kinds[ahead] == Ok(FrameKind::Ip) {
        conntrack.prefetch_linked(&located[ahead]);
    }
}

/// Whether the backend a flow to `frontend` gets is its own client: a pod
/// reaching itself through its Service. The worker leaves such a flow
/// untranslated for the kernel, where kube-proxy translates it and
/// masquerades it so that the reply comes back through it (the switch
/// forwards no frame back out of the port it came in on, and the pod would
/// drop a packet from its own address arriving from outside). It is
/// classified as addressed to its backend, itself: a pod can always reach
/// itself, whatever its egress policy says of the Service address (the
/// masqueraded flow then comes back from the node's address).
fn is_hairpin(frontend: &Frontend, key: &ConnKey) -> bool {
    frontend
        .select(key)
        .is_some_and(|b| b.addr_bits() == (key.src, key.ipv6))
}

/// [`host_pair_shard`] of a packet as translated: a packet to a Service
/// frontend counts as addressed to the backend it would get, so that it
/// meets its replies (from the backend) on one shard. For replays, whose
/// service table does not change under them.
fn translated_shard(services: &ServiceTable, key: &ConnKey, shards: u32) -> u32 {
    let translated = services
        .destination(key)
        .filter(|f| !is_hairpin(f, key))
        .and_then(|f| f.select(key))
        .map(|b| ConnKey {
            dst: b.addr_bits().0,
            dst_port: b.port,
            ..*key
        });
    host_pair_shard(translated.as_ref().unwrap_or(key), shards)
}

/// Which of `shards` a packet's host pair belongs to: symmetric in source
/// and destination and blind to ports, so that both directions of a
/// connection and every fragment of a datagram land on the same shard.
#[must_use]
pub fn host_pair_shard(k: &crate::flow::FlowKey, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let (a, b) = (k.src.min(k.dst), k.src.max(k.dst));
    let mut h = (a as u64) ^ ((a >> 64) as u64).rotate_left(17);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b as u64) ^ ((b >> 64) as u64).rotate_left(29);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(k.protocol);
    h ^= h >> 32;
    (h % u64::from(shards)) as u32
}

/// Gives the calling thread the lowest scheduling priority (nice 19), for
/// threads that must run only when the workers leave time.
pub fn lowest_priority() -> std::io::Result<()> {
    // SAFETY: setpriority(2) with PRIO_PROCESS and id 0 changes the calling
    // thread's nice value on Linux; it reads and writes no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins the calling thread to the `index`-th core the process may run on
/// (modulo their number; `usize::MAX` is the last); returns whether it
/// worked.
#[must_use]
pub fn pin_to_core(index: usize) -> bool {
    match core_affinity::get_core_ids() {
        Some(cores) if !cores.is_empty() => {
            let i = if index == usize::MAX {
                cores.len() - 1
            } else {
                index % cores.len()
            };
            core_affinity::set_for_current(cores[i])
        }
        _ => false,
    }
}
