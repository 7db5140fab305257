//! The connection table shared by all workers: bounded, lock-free.
//!
//! The two directions of a connection arrive on different ports, so on
//! different workers: the table is one, shared, and must never make a worker
//! wait. It is a fixed array of 64-byte slots allocated once (bounded
//! memory), open-addressed with a short probe window. Every field is an
//! atomic; a slot's `tag` packs a sequence number with the connection state,
//! so that:
//!
//! - readers validate a key with a seqlock read (no lock, no write);
//! - state transitions are one compare-and-swap on the tag, which fails if
//!   the slot was reused in between (the sequence number moved);
//! - writers claim a slot by moving its sequence number to odd, write, and
//!   publish with an even one.
//!
//! A full window evicts its least recently seen entry instead of failing.
//! Entries expire lazily by per-state timeouts: an expired slot is a free
//! slot. Each entry records the low 32 bits of the table generation that
//! allowed it, so a worker can re-check established connections when a new
//! generation is published.
//!
//! Slots are grouped in buckets of eight; a separate, compact array holds
//! one 8-bit fingerprint per slot (a word per bucket), so a lookup reads one
//! word that is usually cached and then at most the one slot whose
//! fingerprint matches, instead of eight cache lines.
//!
//! # Translated connections (NAT side data)
//!
//! A connection to a Service is translated, VPP nat44-style: one session,
//! two rewrites. Its packets arrive under two tuples: forward packets keep
//! the Service address (client → Service), replies come from the backend
//! (backend → client). As VPP keeps an in2out and an out2in hash entry, a
//! translated connection takes two slots:
//!
//! - the **translated entry**, keyed by the translated tuple (client →
//!   backend), holds the connection: its state, its generation, and as NAT
//!   data the original destination (Service address and port). Replies find
//!   it in the reverse direction and are rewritten from the backend back to
//!   the Service; re-checks classify its key, the backend's tuple.
//! - the **alias**, keyed by the original tuple (client → Service), holds
//!   the backend and a *link*: the slot index of the translated entry when
//!   it was recorded. A forward packet finds the alias by its own key (the
//!   one the worker located and prefetched), is rewritten to the backend
//!   and then reads the linked slot directly to advance the entry's state
//!   ([`Conntrack::lookup_linked`]): no hash, no fingerprint, and the slot
//!   was prefetched a few packets ahead ([`Conntrack::prefetch_linked`]).
//!   The link is a hint, validated like any read by the entry's key under
//!   its sequence number; a slot that no longer holds the entry (evicted,
//!   recorded elsewhere) falls back to a full lookup. An alias never
//!   changes state: it is stored in its protocol's longest-lived state and
//!   is only as good as its translated entry (an alias whose entry is gone is
//!   stale and removed by the worker).
//!
//! The NAT data (address and port, 24 bytes) lives in a parallel array
//! indexed like the slots, written while the slot's sequence number is odd
//! and read only for slots whose tag says they have some (a flag bit), then
//! validated against the sequence number. Lookups of untranslated flows
//! read what they read before plus one flag test; the slots stay 64 bytes.
//! Costs: 24 bytes more per slot of table memory, two slots per translated
//! connection, and for its forward packets a second slot access (the
//! linked one, prefetched with the NAT data). The link lives in the slot's
//! last four bytes, which were padding. An IPv4 connection keeps its NAT
//! data in its own slots instead: an alias its backend where entries keep
//! their generation (which an alias does not use), an entry its Service
//! where aliases keep their link, both ports in spare tag bits; none of its
//! packets reads a NAT record. A slot reused for another connection drops
//! its NAT data with its flags.
//!
//! # Connections from the host port
//!
//! A flag of the tag ([`Hit::from_host`]), set when the connection is
//! recorded ([`Conntrack::insert_at_from`]) and kept by every state change
//! (the CAS replaces the state byte only), says that its first packet came
//! from the host port: the worker sends its replies back there (the reply
//! rule). It costs no space and no extra load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use std::mem::size_of;

use super::ConnKey;
use super::state::{Signal, State, Timeouts, next_state};
use super::store::{self, Array, Mapping, Opened, StoreError};

/// The number of slots of a table asked for `capacity` entries.
fn slot_count(capacity: usize) -> usize {
    capacity.max(WINDOW).next_power_of_two()
}

/// Direction-independent words of a key, and whether the key is the reverse
/// of their order.
fn key_words(k: &ConnKey) -> ([u64; 5], bool) {
    let swap = (k.src, k.src_port) > (k.dst, k.dst_port);
    // Select without branches: replies and requests interleave at random.
    let m = u128::from(swap).wrapping_neg();
    let (a, b) = ((k.dst & m) | (k.src & !m), (k.src & m) | (k.dst & !m));
    let mp = u16::from(swap).wrapping_neg();
    let (pa, pb) = (
        (k.dst_port & mp) | (k.src_port & !mp),
        (k.src_port & mp) | (k.dst_port & !mp),
    );
    let meta = u64::from(pa)
        | (u64::from(pb) << 16)
        | (u64::from(k.protocol) << 32)
        | (u64::from(k.ipv6) << 40)
        | (1 << 41); // never all-zero: marks a written key
    (
        [(a >> 64) as u64, a as u64, (b >> 64) as u64, b as u64, meta],
        swap,
    )
}

/// The key of [`key_words`], oriented from `b` to `a` if `initiator_is_b`.
fn key_from_words(words: &[u64; 5], initiator_is_b: bool) -> ConnKey {
    let a = (u128::from(words[0]) << 64) | u128::from(words[1]);
    let b = (u128::from(words[2]) << 64) | u128::from(words[3]);
    let meta = words[4];
    let k = ConnKey {
        src: a,
        dst: b,
        src_port: (meta & 0xffff) as u16,
        dst_port: ((meta >> 16) & 0xffff) as u16,
        protocol: ((meta >> 32) & 0xff) as u8,
        ipv6: (meta >> 40) & 1 == 1,
    };
    if initiator_is_b { k.reversed() } else { k }
}

/// One side of a translation: an address (IPv4 in the low 32 bits, as in
/// [`ConnKey`]) and a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatAddr {
    /// The address.
    pub addr: u128,
    /// The port.
    pub port: u16,
}

/// What the entry of a translated connection keeps (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// The entry of the translated tuple (client → backend): replies get
    /// their source rewritten to `service`, the original destination.
    Translated {
        /// The Service address and port the client connected to.
        service: NatAddr,
    },
    /// The alias of the original tuple (client → Service): forward packets
    /// get their destination rewritten to `backend`; the connection's state
    /// is in the translated entry.
    Alias {
        /// The backend chosen.
        backend: NatAddr,
    },
}

/// A connection found in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The state after this packet.
    pub state: State,
    /// Whether the packet came from the responder.
    pub reply: bool,
    /// Low 32 bits of the generation that allowed (or last re-checked) it
    /// (meaningless for an alias: an IPv4 alias keeps its backend there).
    pub generation: u32,
    /// Whether the initiator is the canonical key's second endpoint (see
    /// [`Located::initiator`]).
    pub initiator_is_b: bool,
    /// Where it is, for [`Conntrack::set_generation`] and [`Conntrack::remove`].
    pub slot: usize,
    /// The translation, for an entry of a translated connection.
    pub nat: Option<Nat>,
    /// Whether the connection's first packet came from the host port (see
    /// [`Conntrack::insert_at_from`]): its replies go back there.
    pub from_host: bool,
    /// For an alias, the slot its translated entry was recorded in (a
    /// hint for [`Conntrack::lookup_linked`]).
    link: u32,
}

/// How an insert went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Into a free or expired slot.
    Fresh,
    /// By evicting the least recently seen live entry of its window.
    Evicted,
    /// The connection was already there (another worker was first).
    Existing,
    /// Every slot of the window was being written at once; nothing stored.
    Failed,
}

/// Slots per bucket (and fingerprints per fingerprint word).
const WINDOW: usize = 8;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bit `8 i + 7` set where byte `i` of `word` equals `fp` (and possibly,
/// spuriously, above such a byte: candidates are verified).
#[inline]
fn matching_bytes(word: u64, fp: u8) -> u64 {
    let x = word ^ (ONES * u64::from(fp));
    x.wrapping_sub(ONES) & !x & HIGHS
}
const INITIATOR_IS_B: u32 = 1 << 8;
/// The slot has NAT data (see [`NatSlot`]).
const HAS_NAT: u32 = 1 << 9;
/// The slot is the alias of a translated connection.
const ALIAS: u32 = 1 << 10;
/// The connection's first packet came from the host port (the reply rule).
const FROM_HOST: u32 = 1 << 11;
/// An IPv4 translated connection keeps its NAT data in its slots: an
/// alias its backend (the address in the `generation` field, unused by
/// aliases), an entry its Service (the address in the `link` field, unused
/// by entries), the port in the tag's bits 16–31 for both; their packets
/// read no NAT record.
const INLINE_V4: u32 = 1 << 12;

/// A slot's NAT data, beside the slots so that they stay 64 bytes.
#[derive(Debug, Default)]
struct NatSlot {
    addr_hi: AtomicU64,
    addr_lo: AtomicU64,
    port: AtomicU32,
}

/// The state an alias is stored in: its protocol's longest-lived one, since
/// it lives as long as its translated entry (checked on every hit).
fn alias_state(protocol: u8) -> State {
    match protocol {
        crate::wire::ip_proto::TCP => State::TcpEstablished,
        crate::wire::ip_proto::UDP => State::UdpReplied,
        crate::wire::ip_proto::SCTP => State::SctpEstablished,
        crate::wire::ip_proto::ICMP | crate::wire::ip_proto::ICMPV6 => State::IcmpEcho,
        _ => State::Other,
    }
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct Slot {
    /// `sequence << 32 | flags << 8 | state`; odd sequence: being written.
    tag: AtomicU64,
    key: [AtomicU64; 5],
    last_seen: AtomicU64,
    generation: AtomicU32,
    /// An alias's link: the slot index of its translated entry when it was
    /// recorded ([`NO_LINK`]: unknown). A hint, validated by the entry's
    /// key on use; it fills the slot's last four bytes. An IPv4 entry's
    /// Service address (see [`INLINE_V4`]).
    link: AtomicU32,
}

/// What one slot says about a key (see `Conntrack::probe`).
enum Probed {
    /// The slot does not hold the key: look further.
    NotHere,
    /// The slot holds it: the lookup's answer.
    Answer(Option<Hit>),
}

/// An alias without a known translated entry slot.
const NO_LINK: u32 = u32::MAX;

#[inline]
fn prefetch_read<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no architectural effect; the pointer
    // comes from a reference, so it is valid anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(p).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Key equality without a call to `memcmp`.
#[inline]
fn same_key(a: &[u64; 5], b: &[u64; 5]) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0
}

/// A key's place in the table (see [`Conntrack::locate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Located {
    words: [u64; 5],
    swapped: bool,
    bucket: usize,
    fp: u8,
}

impl Located {
    /// The key as the initiator of the connection `hit` sent it.
    #[must_use]
    pub fn initiator(&self, hit: &Hit) -> ConnKey {
        key_from_words(&self.words, hit.initiator_is_b)
    }
}

fn seq(tag: u64) -> u32 {
    (tag >> 32) as u32
}

/// The shared connection table.
///
/// Its arrays are on the heap ([`Conntrack::new`]) or in a file that
/// outlives the process ([`Conntrack::open`], see `store`); either way the
/// lookups index them from a base pointer fixed at construction.
#[derive(Debug)]
pub struct Conntrack {
    slots: Array<Slot>,
    /// NAT data per slot, valid where the slot's tag has [`HAS_NAT`].
    nat: Array<NatSlot>,
    /// One fingerprint byte per slot; 0: never used.
    fingerprints: Array<AtomicU64>,
    bucket_mask: usize,
    timeouts: Timeouts,
    /// The highest generation recorded, for a table on the heap.
    generations: AtomicU64,
    /// The file the arrays are mapped from, if they are. Declared after
    /// them: unmapped once they are gone.
    mapping: Option<Mapping>,
}

/// How long [`Conntrack::open`] waits for a previous agent to let go of
/// the file.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Conntrack {
    /// A table of at least `capacity` entries (rounded up to a power of two,
    /// at least the probe window), allocated now and never grown.
    #[must_use]
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let n = slot_count(capacity);
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        let nat: Box<[NatSlot]> = (0..n).map(|_| NatSlot::default()).collect();
        let fingerprints: Box<[AtomicU64]> = (0..n / WINDOW).map(|_| AtomicU64::new(0)).collect();
        Self {
            slots: Array::boxed(slots),
            nat: Array::boxed(nat),
            fingerprints: Array::boxed(fingerprints),
            bucket_mask: n / WINDOW - 1,
            timeouts,
            generations: AtomicU64::new(0),
            mapping: None,
        }
    }

    /// The table of the file `path` (created if missing, under a tmpfs
    /// such as `/run` in production): what an earlier agent left there if
    /// it is a table of this layout, capacity and boot
    /// ([`Opened::Restored`]), an empty one otherwise. The file stays
    /// locked while the table lives; a previous holder is waited for up to
    /// 30 s.
    pub fn open(
        path: &std::path::Path,
        capacity: usize,
        timeouts: Timeouts,
    ) -> Result<(Self, Opened), StoreError> {
        Self::open_waiting(path, capacity, timeouts, LOCK_WAIT)
    }

    /// [`Self::open`], waiting up to `wait` for the lock.
    pub fn open_waiting(
        path: &std::path::Path,
        capacity: usize,
        timeouts: Timeouts,
        wait: std::time::Duration,
    ) -> Result<(Self, Opened), StoreError> {
        let n = slot_count(capacity);
        let (slot_bytes, nat_bytes) = (size_of::<Slot>(), size_of::<NatSlot>());
        let (mapping, opened) = store::open(path, n, slot_bytes, nat_bytes, wait)?;
        let (slots_at, nat_at, fps_at, _) = store::layout(n, slot_bytes, nat_bytes);
        // SAFETY: `layout` places the three arrays after the header at
        // 64-byte aligned offsets, each `n` (or `n / WINDOW`) elements long,
        // within the mapping `open` sized by the same layout; slots, NAT
        // data and fingerprints are atomics only, valid for any bytes, and
        // all-zero is the empty table. The arrays are fields of the table
        // declared before the mapping, so they go first.
        let (slots, nat, fingerprints) = unsafe {
            (
                mapping.array::<Slot>(slots_at, n),
                mapping.array::<NatSlot>(nat_at, n),
                mapping.array::<AtomicU64>(fps_at, n / WINDOW),
            )
        };
        Ok((
            Self {
                slots,
                nat,
                fingerprints,
                bucket_mask: n / WINDOW - 1,
                timeouts,
                generations: AtomicU64::new(0),
                mapping: Some(mapping),
            },
            opened,
        ))
    }

    /// The file the table is mapped from, if it is.
    #[must_use]
    pub fn path(&self) -> Option<&std::path::Path> {
        self.mapping.as_ref().map(Mapping::path)
    }

    /// The highest table generation recorded with
    /// [`record_generation`](Self::record_generation), by this process or,
    /// for a restored file, by the agent before: the next agent numbers its
    /// generations above it, so that no restored entry looks checked by a
    /// generation it was not checked by.
    #[must_use]
    pub fn generation_floor(&self) -> u64 {
        self.generation_record().load(Ordering::Acquire)
    }

    /// Records that generation `generation` is about to be published
    /// (before any entry can carry it). Not the hot path: once a publish.
    pub fn record_generation(&self, generation: u64) {
        self.generation_record()
            .fetch_max(generation, Ordering::AcqRel);
    }

    fn generation_record(&self) -> &AtomicU64 {
        self.mapping
            .as_ref()
            .map_or(&self.generations, Mapping::generation)
    }

    /// `CLOCK_MONOTONIC` in nanoseconds: the clock live workers pass as
    /// `now`, the same in every process of a boot, so that entries an
    /// earlier agent stamped age rightly in this one.
    #[must_use]
    pub fn clock_ns(&self) -> u64 {
        store::monotonic_ns()
    }

    /// Number of slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The bucket of a key and its fingerprint (never 0).
    #[inline]
    fn home(&self, words: &[u64; 5]) -> (usize, u8) {
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        for w in words {
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        ((h as usize) & self.bucket_mask, ((h >> 56) as u8) | 1)
    }

    /// Where `key` lives in the table: worked out once per packet and used
    /// by the prefetch stages and the lookup.
    #[inline]
    #[must_use]
    pub fn locate(&self, key: &ConnKey) -> Located {
        let (words, swapped) = key_words(key);
        let (bucket, fp) = self.home(&words);
        Located {
            words,
            swapped,
            bucket,
            fp,
        }
    }

    /// First stage of a batched lookup: starts loading the fingerprints of
    /// the bucket.
    #[inline]
    pub fn prefetch_bucket(&self, at: &Located) {
        prefetch_read(&self.fingerprints[at.bucket]);
    }

    /// Second stage, after [`Self::prefetch_bucket`] for the whole batch:
    /// starts loading the slot whose fingerprint matches (or, for a new
    /// connection, the first unused slot an insert would take).
    #[inline]
    pub fn prefetch_entry(&self, at: &Located) {
        let (bucket, fp) = (at.bucket, at.fp);
        let word = self.fingerprints[bucket].load(Ordering::Relaxed);
        let candidates = match matching_bytes(word, fp) {
            0 => matching_bytes(word, 0),
            c => c,
        };
        if candidates != 0 {
            let i = candidates.trailing_zeros() as usize / 8;
            prefetch_read(&self.slots[bucket * WINDOW + i]);
        }
    }

    /// Third stage, a few packets ahead of the decision (the slot of
    /// [`Self::prefetch_entry`] has arrived by then): if the matching slot
    /// has NAT data, starts loading it, and for an alias the slot of its
    /// translated entry too, so that a translated packet's second access
    /// ([`Self::lookup_linked`]) does not stall. Untranslated flows pay a
    /// flag test on a cached line.
    #[inline]
    pub fn prefetch_linked(&self, at: &Located) {
        let word = self.fingerprints[at.bucket].load(Ordering::Relaxed);
        let candidates = matching_bytes(word, at.fp);
        if candidates != 0 {
            let idx = at.bucket * WINDOW + candidates.trailing_zeros() as usize / 8;
            let slot = &self.slots[idx];
            let flags = slot.tag.load(Ordering::Relaxed) as u32;
            if flags & HAS_NAT != 0 {
                if flags & INLINE_V4 == 0 {
                    prefetch_read(&self.nat[idx]);
                }
                if flags & ALIAS != 0 {
                    let link = slot.link.load(Ordering::Relaxed) as usize;
                    if let Some(entry) = self.slots.get(link) {
                        prefetch_read(entry);
                    }
                }
            }
        }
    }

    fn live(&self, tag: u64, last_seen: u64, now: u64) -> bool {
        let s = State::from_bits(tag as u32);
        s != State::Free && now.saturating_sub(last_seen) <= self.timeouts.of(s)
    }

    /// Reads a slot's key consistently; `None` while it is being written.
    fn read_key(slot: &Slot) -> Option<(u64, [u64; 5])> {
        let t1 = slot.tag.load(Ordering::Acquire);
        if seq(t1) & 1 == 1 {
            return None;
        }
        let key = std::array::from_fn(|i| slot.key[i].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        let t2 = slot.tag.load(Ordering::Relaxed);
        (seq(t1) == seq(t2)).then_some((t2, key))
    }

    /// The NAT data of slot `idx`, read under the sequence number of `tag`;
    /// `None` if the slot was reused meanwhile.
    fn read_nat(&self, idx: usize, tag: u64) -> Option<NatAddr> {
        let n = &self.nat[idx];
        let hi = n.addr_hi.load(Ordering::Relaxed);
        let lo = n.addr_lo.load(Ordering::Relaxed);
        let port = n.port.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (seq(self.slots[idx].tag.load(Ordering::Relaxed)) == seq(tag)).then_some(NatAddr {
            addr: (u128::from(hi) << 64) | u128::from(lo),
            port: port as u16,
        })
    }

    /// Finds the connection of a packet and advances its state; `now` in
    /// nanoseconds (any monotonic clock, or capture time in replays).
    #[must_use]
    pub fn lookup(&self, key: &ConnKey, signal: Signal, now: u64) -> Option<Hit> {
        self.lookup_at(&self.locate(key), signal, now)
    }

    /// [`Self::lookup`] for a located key.
    #[must_use]
    pub fn lookup_at(&self, at: &Located, signal: Signal, now: u64) -> Option<Hit> {
        let Located {
            words,
            swapped,
            bucket,
            fp,
        } = *at;
        let mut candidates = matching_bytes(self.fingerprints[bucket].load(Ordering::Acquire), fp);
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize / 8;
            candidates &= candidates - 1;
            if let Probed::Answer(found) =
                self.probe(bucket * WINDOW + i, &words, swapped, signal, now, None)
            {
                return found;
            }
        }
        None
    }

    /// The translated entry of the connection whose alias is `alias`, for
    /// a forward packet: `translated` is the packet's key rewritten to the
    /// backend. The alias's link names the entry's slot, so this is one
    /// slot access (prefetched by [`Self::prefetch_linked`]) validated by
    /// the entry's key; if the slot no longer holds it (evicted, or the
    /// entry was recorded by another worker first), a full lookup. The
    /// hit's NAT data is the alias's key's destination, not read again.
    #[must_use]
    pub fn lookup_linked(
        &self,
        alias: &Hit,
        original: &Located,
        translated: &ConnKey,
        signal: Signal,
        now: u64,
    ) -> Option<Hit> {
        let (words, swapped) = key_words(translated);
        if alias.link != NO_LINK && (alias.link as usize) < self.slots.len() {
            let first = key_from_words(&original.words, original.swapped);
            let service = NatAddr {
                addr: first.dst,
                port: first.dst_port,
            };
            if let Probed::Answer(found) = self.probe(
                alias.link as usize,
                &words,
                swapped,
                signal,
                now,
                Some(service),
            ) {
                return found;
            }
        }
        self.lookup(translated, signal, now)
    }

    /// The lookup of slot `idx` for the key `words` (`swapped`: the
    /// packet's orientation): [`Probed::NotHere`] if the slot does not hold
    /// it (look further), otherwise the lookup's answer. `service`: the NAT data of
    /// a translated entry, when the caller knows it (not read then).
    #[inline]
    fn probe(
        &self,
        idx: usize,
        words: &[u64; 5],
        swapped: bool,
        signal: Signal,
        now: u64,
        service: Option<NatAddr>,
    ) -> Probed {
        let slot = &self.slots[idx];
        let Some((mut tag, k)) = Self::read_key(slot) else {
            return Probed::NotHere;
        };
        if !same_key(&k, words) || !self.live(tag, slot.last_seen.load(Ordering::Relaxed), now) {
            return Probed::NotHere;
        }
        let initiator_is_b = tag as u32 & INITIATOR_IS_B != 0;
        let reply = swapped != initiator_is_b;
        if tag as u32 & ALIAS != 0 {
            // Only forward packets are addressed to the Service; the
            // state lives in the translated entry.
            if reply {
                return Probed::NotHere;
            }
            let link = slot.link.load(Ordering::Relaxed);
            let backend = if tag as u32 & INLINE_V4 != 0 {
                let addr = slot.generation.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if seq(slot.tag.load(Ordering::Relaxed)) != seq(tag) {
                    return Probed::Answer(None);
                }
                NatAddr {
                    addr: u128::from(addr),
                    port: (tag as u32 >> 16) as u16,
                }
            } else {
                match self.read_nat(idx, tag) {
                    Some(b) => b,
                    None => return Probed::Answer(None),
                }
            };
            slot.last_seen.store(now, Ordering::Relaxed);
            return Probed::Answer(Some(Hit {
                state: State::from_bits(tag as u32),
                reply,
                generation: slot.generation.load(Ordering::Relaxed),
                initiator_is_b,
                slot: idx,
                nat: Some(Nat::Alias { backend }),
                from_host: false,
                link,
            }));
        }
        // Advance the state; a failed CAS means a concurrent update (or
        // reuse of the slot): re-read and retry a few times.
        for _ in 0..4 {
            let state = State::from_bits(tag as u32);
            let next = next_state(state, reply, signal);
            if next == state {
                break;
            }
            let new = (tag & !0xff) | next as u64;
            match slot
                .tag
                .compare_exchange(tag, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    tag = new;
                    break;
                }
                Err(t) if seq(t) == seq(tag) => tag = t,
                Err(_) => return Probed::Answer(None),
            }
        }
        let nat = if tag as u32 & HAS_NAT == 0 {
            None
        } else {
            let service = match service {
                Some(s) => s,
                None if tag as u32 & INLINE_V4 != 0 => {
                    let addr = slot.link.load(Ordering::Relaxed);
                    fence(Ordering::Acquire);
                    if seq(slot.tag.load(Ordering::Relaxed)) != seq(tag) {
                        return Probed::Answer(None);
                    }
                    NatAddr {
                        addr: u128::from(addr),
                        port: (tag as u32 >> 16) as u16,
                    }
                }
                None => match self.read_nat(idx, tag) {
                    Some(s) => s,
                    None => return Probed::Answer(None),
                },
            };
            Some(Nat::Translated { service })
        };
        slot.last_seen.store(now, Ordering::Relaxed);
        Probed::Answer(Some(Hit {
            state: State::from_bits(tag as u32),
            reply,
            generation: slot.generation.load(Ordering::Relaxed),
            initiator_is_b,
            slot: idx,
            nat,
            from_host: tag as u32 & FROM_HOST != 0,
            link: NO_LINK,
        }))
    }

    /// Records a connection opened by `initiator` (allowed by table
    /// generation `generation`).
    #[must_use = "a failed insert means replies will not be recognised"]
    pub fn insert(&self, initiator: &ConnKey, state: State, generation: u32, now: u64) -> Inserted {
        self.insert_at(&self.locate(initiator), state, generation, now)
    }

    /// [`Self::insert`] for a located key; the initiator is the key as
    /// located (not reversed).
    #[must_use = "a failed insert means replies will not be recognised"]
    pub fn insert_at(&self, at: &Located, state: State, generation: u32, now: u64) -> Inserted {
        self.insert_with(at, state, 0, None, NO_LINK, generation, now)
            .0
    }

    /// [`Self::insert_at`], recording whether the connection's first packet
    /// came from the host port: the switch sends the replies of such a
    /// connection back to the host port whatever their destination, so
    /// that the kernel undoes its own translations (kube-proxy's NodePorts,
    /// hostPorts, the node's traffic). The flag is a bit of the slot's tag,
    /// written with it; [`Hit::from_host`] reads it.
    #[must_use = "a failed insert means replies will not be recognised"]
    pub fn insert_at_from(
        &self,
        at: &Located,
        state: State,
        generation: u32,
        now: u64,
        from_host: bool,
    ) -> Inserted {
        let flags = if from_host { FROM_HOST } else { 0 };
        self.insert_with(at, state, flags, None, NO_LINK, generation, now)
            .0
    }

    /// Records a translated connection (see the module doc): the entry of
    /// `translated` (the initiator's key with the backend as destination)
    /// with `service`, the original destination, and the alias of
    /// `original` (located: the packet's own key) with `backend`. The entry
    /// goes in first, so that a packet finding the alias finds it too. A
    /// new TCP connection (`state` SYN sent) takes over an entry of its
    /// translated tuple left by a closed connection through another Service
    /// address (see `take_over_closed`). Returns how each insert went: the
    /// entry's, then the alias's.
    #[must_use = "a failed insert means replies will not be recognised"]
    pub fn insert_translated(
        &self,
        original: &Located,
        translated: &ConnKey,
        state: State,
        generation: u32,
        now: u64,
    ) -> (Inserted, Inserted) {
        let first = key_from_words(&original.words, original.swapped);
        let service = NatAddr {
            addr: first.dst,
            port: first.dst_port,
        };
        let backend = NatAddr {
            addr: translated.dst,
            port: translated.dst_port,
        };
        // An IPv4 entry keeps the Service address in its link (unused by
        // entries) and the port in its tag: its replies read no NAT record.
        let (entry_flags, entry_nat, entry_link) = if translated.ipv6 {
            (HAS_NAT, Some(service), NO_LINK)
        } else {
            (
                HAS_NAT | INLINE_V4 | (u32::from(service.port) << 16),
                None,
                service.addr as u32,
            )
        };
        let at = self.locate(translated);
        let insert_entry = || {
            self.insert_with(
                &at,
                state,
                entry_flags,
                entry_nat,
                entry_link,
                generation,
                now,
            )
        };
        let (mut entry, mut link) = insert_entry();
        if entry == Inserted::Existing
            && state == State::TcpSynSent
            && self.take_over_closed(link, &at, service, now)
        {
            (entry, link) = insert_entry();
        }
        let (inline, alias_generation) = if translated.ipv6 {
            (0, generation)
        } else {
            (
                INLINE_V4 | (u32::from(backend.port) << 16),
                backend.addr as u32,
            )
        };
        let (alias, _) = self.insert_with(
            original,
            alias_state(translated.protocol),
            HAS_NAT | ALIAS | inline,
            Some(backend),
            link,
            alias_generation,
            now,
        );
        (entry, alias)
    }

    /// Makes room for a new TCP connection through `service` whose
    /// translated tuple (client → backend, located `at`) the entry in slot
    /// `idx` holds for a closed connection through another Service address:
    /// the client reused its port after a passive close and both Services
    /// chose the same backend. Left in place, that entry would answer for
    /// the new connection and rewrite its replies to the old address. It
    /// goes, with its alias, as netfilter evicts a closing TCP connection
    /// whose reply tuple a new translation needs; a connection not closed
    /// stays. Returns whether it went.
    fn take_over_closed(&self, idx: u32, at: &Located, service: NatAddr, now: u64) -> bool {
        if idx as usize >= self.slots.len() {
            return false;
        }
        let Probed::Answer(Some(old)) = self.probe(
            idx as usize,
            &at.words,
            at.swapped,
            Signal::default(),
            now,
            None,
        ) else {
            return false;
        };
        let Some(Nat::Translated { service: held }) = old.nat else {
            return false;
        };
        if held == service || !matches!(old.state, State::TcpTimeWait | State::TcpClosed) {
            return false;
        }
        self.remove(&old);
        let alias = ConnKey {
            dst: held.addr,
            dst_port: held.port,
            ..key_from_words(&at.words, at.swapped)
        };
        if let Some(hit) = self.lookup(&alias, Signal::default(), now)
            && matches!(hit.nat, Some(Nat::Alias { .. }))
        {
            self.remove(&hit);
        }
        true
    }

    /// An insert with the flags and NAT data of a translated connection's
    /// slot (none for others) and, for an alias, the link to its entry;
    /// returns how it went and the slot the key is in ([`NO_LINK`]: none).
    #[allow(clippy::too_many_arguments, reason = "an insert's arguments and three")]
    fn insert_with(
        &self,
        at: &Located,
        state: State,
        extra: u32,
        nat: Option<NatAddr>,
        link: u32,
        generation: u32,
        now: u64,
    ) -> (Inserted, u32) {
        let Located {
            words,
            swapped,
            bucket,
            fp,
        } = *at;
        for _attempt in 0..4 {
            let word = self.fingerprints[bucket].load(Ordering::Acquire);
            // Already there?
            let mut candidates = matching_bytes(word, fp);
            while candidates != 0 {
                let idx = bucket * WINDOW + candidates.trailing_zeros() as usize / 8;
                candidates &= candidates - 1;
                let slot = &self.slots[idx];
                if let Some((tag, k)) = Self::read_key(slot)
                    && same_key(&k, &words)
                    && self.live(tag, slot.last_seen.load(Ordering::Relaxed), now)
                {
                    return (Inserted::Existing, idx as u32);
                }
            }
            // A never-used slot (fingerprint 0; the lowest flagged byte is
            // exact) needs no look at the others.
            let unused = matching_bytes(word, 0);
            let mut victim: Option<(usize, u64, u64)> = None; // (idx, tag, last_seen)
            let mut victim_live = true;
            if unused != 0 {
                let idx = bucket * WINDOW + unused.trailing_zeros() as usize / 8;
                let tag = self.slots[idx].tag.load(Ordering::Acquire);
                if seq(tag) & 1 == 0 && State::from_bits(tag as u32) == State::Free {
                    victim = Some((idx, tag, 0));
                    victim_live = false;
                }
            }
            // Otherwise a free or expired slot, or the least recently seen.
            let scan = if victim.is_none() { WINDOW } else { 0 };
            for i in 0..scan {
                let idx = bucket * WINDOW + i;
                let slot = &self.slots[idx];
                let Some((tag, k)) = Self::read_key(slot) else {
                    continue;
                };
                let seen = slot.last_seen.load(Ordering::Relaxed);
                let live = self.live(tag, seen, now);
                if live && same_key(&k, &words) {
                    return (Inserted::Existing, idx as u32);
                }
                let better = match victim {
                    None => true,
                    Some((_, _, vseen)) => {
                        (victim_live && !live) || (victim_live == live && seen < vseen)
                    }
                };
                if better {
                    victim = Some((idx, tag, seen));
                    victim_live = live;
                }
            }
            let Some((idx, tag, _)) = victim else {
                continue;
            };
            let slot = &self.slots[idx];
            let claimed = (u64::from(seq(tag).wrapping_add(1)) << 32) | (tag & 0xffff_ffff);
            if slot
                .tag
                .compare_exchange(tag, claimed, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            for (w, v) in slot.key.iter().zip(words) {
                w.store(v, Ordering::Relaxed);
            }
            slot.last_seen.store(now, Ordering::Relaxed);
            slot.generation.store(generation, Ordering::Relaxed);
            slot.link.store(link, Ordering::Relaxed);
            if let Some(n) = nat {
                let r = &self.nat[idx];
                r.addr_hi.store((n.addr >> 64) as u64, Ordering::Relaxed);
                r.addr_lo.store(n.addr as u64, Ordering::Relaxed);
                r.port.store(u32::from(n.port), Ordering::Relaxed);
            }
            // The fingerprint before the publication, so that a reader that
            // sees the entry also finds it.
            let shift = (idx % WINDOW) * 8;
            let fps = &self.fingerprints[bucket];
            let mut old = fps.load(Ordering::Relaxed);
            loop {
                let new = (old & !(0xff << shift)) | (u64::from(fp) << shift);
                match fps.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(o) => old = o,
                }
            }
            let flags = extra | if swapped { INITIATOR_IS_B } else { 0 };
            let published =
                (u64::from(seq(claimed).wrapping_add(1)) << 32) | u64::from(flags | state as u32);
            slot.tag.store(published, Ordering::Release);
            let how = if victim_live {
                Inserted::Evicted
            } else {
                Inserted::Fresh
            };
            return (how, idx as u32);
        }
        (Inserted::Failed, NO_LINK)
    }

    /// Records that the connection in `hit` was re-checked against generation
    /// `generation` and is still allowed.
    pub fn set_generation(&self, hit: &Hit, generation: u32) {
        self.slots[hit.slot]
            .generation
            .store(generation, Ordering::Relaxed);
    }

    /// Forgets the connection found as `hit` (no longer allowed). Does
    /// nothing if the slot was reused since.
    pub fn remove(&self, hit: &Hit) {
        let slot = &self.slots[hit.slot];
        let tag = slot.tag.load(Ordering::Acquire);
        if State::from_bits(tag as u32) == State::Free {
            return;
        }
        let freed = tag & !0xffff_ffff; // same sequence, state Free
        let _ = slot
            .tag
            .compare_exchange(tag, freed, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Live entries at `now` (scans the whole table: for metrics, not the
    /// hot path).
    #[must_use]
    pub fn live_entries(&self, now: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                self.live(
                    s.tag.load(Ordering::Relaxed),
                    s.last_seen.load(Ordering::Relaxed),
                    now,
                )
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tcp_flags;
    use crate::conntrack::test_support::{SEC, key, tcp};
    use crate::wire::ip_proto;

    #[test]
    fn full_window_evicts_least_recently_seen() {
        let ct = Conntrack::new(WINDOW, Timeouts::default());
        for p in 0..WINDOW as u16 {
            assert_eq!(
                ct.insert(
                    &key(p, 80, ip_proto::UDP),
                    State::UdpReplied,
                    1,
                    u64::from(p) * SEC
                ),
                Inserted::Fresh
            );
        }
        // Touch the oldest so that the second oldest is evicted.
        assert!(
            ct.lookup(&key(0, 80, ip_proto::UDP), Signal::default(), 20 * SEC)
                .is_some()
        );
        assert_eq!(
            ct.insert(&key(99, 80, ip_proto::UDP), State::UdpReplied, 1, 21 * SEC),
            Inserted::Evicted
        );
        assert!(
            ct.lookup(&key(1, 80, ip_proto::UDP), Signal::default(), 22 * SEC)
                .is_none()
        );
        assert!(
            ct.lookup(&key(0, 80, ip_proto::UDP), Signal::default(), 22 * SEC)
                .is_some()
        );
        assert!(
            ct.lookup(&key(99, 80, ip_proto::UDP), Signal::default(), 22 * SEC)
                .is_some()
        );
        assert_eq!(
            ct.insert(&key(99, 80, ip_proto::UDP), State::UdpReplied, 1, 23 * SEC),
            Inserted::Existing
        );
    }

    #[test]
    fn generation_and_removal() {
        let ct = Conntrack::new(64, Timeouts::default());
        let k = key(1, 2, ip_proto::UDP);
        let _ = ct.insert(&k, State::UdpReplied, 3, 0);
        let h = ct.lookup(&k, Signal::default(), 1).unwrap();
        assert_eq!(h.generation, 3);
        ct.set_generation(&h, 4);
        assert_eq!(ct.lookup(&k, Signal::default(), 2).unwrap().generation, 4);
        ct.remove(&h);
        assert!(ct.lookup(&k, Signal::default(), 3).is_none());
    }

    #[test]
    fn the_host_port_flag_stays_through_state_changes() {
        let ct = Conntrack::new(64, Timeouts::default());
        let from_host = key(1, 80, ip_proto::TCP);
        let from_pod = key(2, 80, ip_proto::TCP);
        let at = ct.locate(&from_host);
        let _ = ct.insert_at_from(&at, State::TcpSynSent, 1, 0, true);
        let _ = ct.insert_at_from(&ct.locate(&from_pod), State::TcpSynSent, 1, 0, false);
        let synack = tcp(tcp_flags::SYN | tcp_flags::ACK);
        let back = ct.lookup(&from_host.reversed(), synack, 1).unwrap();
        assert!(back.from_host && back.reply);
        assert_ne!(back.state, State::TcpSynSent, "advanced, flag kept");
        let fwd = ct.lookup(&from_host, tcp(tcp_flags::ACK), 2).unwrap();
        assert!(fwd.from_host && !fwd.reply);
        assert!(
            !ct.lookup(&from_pod.reversed(), synack, 1)
                .unwrap()
                .from_host
        );
        let _ = ct.insert(&key(3, 80, ip_proto::UDP), State::UdpUnreplied, 1, 0);
        let plain = ct.lookup(&key(3, 80, ip_proto::UDP), Signal::default(), 1);
        assert!(!plain.unwrap().from_host);
    }

    #[test]
    fn ipv6_keys_and_canonical_round_trip() {
        let k = ConnKey {
            src: u128::MAX - 5,
            dst: 7,
            src_port: 1,
            dst_port: 2,
            protocol: ip_proto::ICMPV6,
            ipv6: true,
        };
        for initiator in [k, k.reversed()] {
            let (w, swapped) = key_words(&initiator);
            assert_eq!(key_from_words(&w, swapped), initiator);
        }
        let ct = Conntrack::new(16, Timeouts::default());
        let _ = ct.insert(&k, State::IcmpEcho, 1, 0);
        assert!(
            ct.lookup(&k.reversed(), Signal::default(), 1)
                .unwrap()
                .reply
        );
        let v4 = ConnKey { ipv6: false, ..k };
        assert!(
            ct.lookup(&v4, Signal::default(), 1).is_none(),
            "families never match"
        );
    }

    #[test]
    fn concurrent_workers_insert_and_find_both_directions() {
        let ct = std::sync::Arc::new(Conntrack::new(1 << 12, Timeouts::default()));
        let flows: Vec<ConnKey> = (0..1000u16).map(|p| key(p, 443, ip_proto::TCP)).collect();
        std::thread::scope(|s| {
            for w in 0..2 {
                let (ct, flows) = (ct.clone(), &flows);
                s.spawn(move || {
                    for (i, f) in flows.iter().enumerate() {
                        if i % 2 == w {
                            let _ = ct.insert(f, State::TcpEstablished, 1, 0);
                        }
                    }
                    for f in flows {
                        // Spin until the other worker's insert is visible.
                        while ct.lookup(&f.reversed(), tcp(tcp_flags::ACK), 1).is_none() {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
        });
        assert_eq!(ct.live_entries(2), 1000);
    }

    /// Client 10.0.0.1:sp → Service 10.96.0.10:53, backend 10.0.0.9:5353.
    fn service_keys(sp: u16, proto: u8) -> (ConnKey, ConnKey) {
        let original = ConnKey {
            dst: 0x0a60_000a,
            ..key(sp, 53, proto)
        };
        let translated = ConnKey {
            dst: 0x0a00_0009,
            dst_port: 5353,
            ..original
        };
        (original, translated)
    }

    #[test]
    fn translated_connection_is_found_in_both_directions() {
        let ct = Conntrack::new(64, Timeouts::default());
        let (original, translated) = service_keys(4000, ip_proto::UDP);
        let inserted = ct.insert_translated(
            &ct.locate(&original),
            &translated,
            State::UdpUnreplied,
            1,
            0,
        );
        assert_eq!(inserted, (Inserted::Fresh, Inserted::Fresh));
        let service = NatAddr {
            addr: 0x0a60_000a,
            port: 53,
        };
        let backend = NatAddr {
            addr: 0x0a00_0009,
            port: 5353,
        };
        // Forward: the alias, by the packet's own tuple.
        let alias = ct.lookup(&original, Signal::default(), 1).unwrap();
        assert_eq!(alias.nat, Some(Nat::Alias { backend }));
        assert!(!alias.reply);
        // Then the entry, by the translated tuple.
        let fwd = ct.lookup(&translated, Signal::default(), 1).unwrap();
        assert_eq!(fwd.nat, Some(Nat::Translated { service }));
        assert_eq!(fwd.state, State::UdpUnreplied);
        // The reply, backend → client.
        let back = ct
            .lookup(&translated.reversed(), Signal::default(), 2)
            .unwrap();
        assert!(back.reply);
        assert_eq!(back.nat, Some(Nat::Translated { service }));
        assert_eq!(back.state, State::UdpReplied, "the entry has the state");
        // Nothing addressed from the Service address matches the alias.
        assert!(
            ct.lookup(&original.reversed(), Signal::default(), 3)
                .is_none()
        );
        // Untranslated connections carry none.
        let plain = key(1, 2, ip_proto::UDP);
        let _ = ct.insert(&plain, State::UdpUnreplied, 1, 0);
        assert_eq!(ct.lookup(&plain, Signal::default(), 1).unwrap().nat, None);
    }

    #[test]
    fn ipv6_translation_round_trips() {
        let ct = Conntrack::new(64, Timeouts::default());
        let original = ConnKey {
            src: 0xfd00 << 112 | 0x1,
            dst: 0xfd96 << 112 | 0xa,
            src_port: 999,
            dst_port: 443,
            protocol: ip_proto::TCP,
            ipv6: true,
        };
        let translated = ConnKey {
            dst: u128::MAX - 3,
            dst_port: 8443,
            ..original
        };
        let _ = ct.insert_translated(&ct.locate(&original), &translated, State::TcpSynSent, 1, 0);
        let back = ct
            .lookup(
                &translated.reversed(),
                tcp(tcp_flags::SYN | tcp_flags::ACK),
                1,
            )
            .unwrap();
        assert_eq!(
            back.nat,
            Some(Nat::Translated {
                service: NatAddr {
                    addr: original.dst,
                    port: 443
                }
            })
        );
        assert_eq!(
            ct.lookup(&original, tcp(tcp_flags::ACK), 2).unwrap().nat,
            Some(Nat::Alias {
                backend: NatAddr {
                    addr: u128::MAX - 3,
                    port: 8443
                }
            })
        );
    }

    #[test]
    fn eviction_drops_the_nat_data_with_the_slot() {
        // One bucket: every insert competes for its eight slots.
        let ct = Conntrack::new(WINDOW, Timeouts::default());
        let (original, translated) = service_keys(4000, ip_proto::UDP);
        let _ = ct.insert_translated(&ct.locate(&original), &translated, State::UdpReplied, 1, 0);
        // Eight newer plain connections evict both slots.
        for p in 0..WINDOW as u16 {
            let k = key(100 + p, 80, ip_proto::UDP);
            let _ = ct.insert(&k, State::UdpReplied, 1, (1 + u64::from(p)) * SEC);
        }
        let now = 20 * SEC;
        assert!(ct.lookup(&original, Signal::default(), now).is_none());
        assert!(
            ct.lookup(&translated.reversed(), Signal::default(), now)
                .is_none()
        );
        for p in 0..WINDOW as u16 {
            let hit = ct.lookup(&key(100 + p, 80, ip_proto::UDP), Signal::default(), now);
            assert_eq!(hit.unwrap().nat, None, "reused slots carry no NAT data");
        }
    }

    #[test]
    fn the_alias_links_its_entry_and_a_stale_link_falls_back_to_a_lookup() {
        let ct = Conntrack::new(64, Timeouts::default());
        let (original, translated) = service_keys(4000, ip_proto::UDP);
        let at = ct.locate(&original);
        let _ = ct.insert_translated(&at, &translated, State::UdpUnreplied, 1, 0);
        let alias = ct.lookup_at(&at, Signal::default(), 1).unwrap();
        let entry = ct.lookup(&translated, Signal::default(), 1).unwrap();
        assert_eq!(
            alias.link as usize, entry.slot,
            "linked to the entry's slot"
        );
        let fwd = ct
            .lookup_linked(&alias, &at, &translated, Signal::default(), 2)
            .unwrap();
        assert_eq!(
            (fwd.slot, fwd.nat, fwd.reply),
            (entry.slot, entry.nat, false)
        );
        // The entry gone and recorded again elsewhere: the link is stale
        // (its slot holds another key), the full lookup finds it.
        ct.remove(&entry);
        assert!(
            ct.lookup_linked(&alias, &at, &translated, Signal::default(), 3)
                .is_none()
        );
        let stale = Hit {
            link: (entry.slot as u32 + 1) % 64,
            ..alias
        };
        let _ = ct.insert(&translated, State::UdpReplied, 1, 3);
        let found = ct
            .lookup_linked(&stale, &at, &translated, Signal::default(), 4)
            .unwrap();
        assert_eq!(found.state, State::UdpReplied);
        let unlinked = Hit {
            link: NO_LINK,
            ..alias
        };
        assert!(
            ct.lookup_linked(&unlinked, &at, &translated, Signal::default(), 5)
                .is_some()
        );
    }

    #[test]
    fn removed_translated_entry_leaves_a_stale_alias_the_caller_removes() {
        let ct = Conntrack::new(64, Timeouts::default());
        let (original, translated) = service_keys(4000, ip_proto::TCP);
        let _ = ct.insert_translated(
            &ct.locate(&original),
            &translated,
            State::TcpEstablished,
            1,
            0,
        );
        let entry = ct.lookup(&translated, tcp(tcp_flags::ACK), 1).unwrap();
        ct.remove(&entry);
        let alias = ct.lookup(&original, tcp(tcp_flags::ACK), 2).unwrap();
        assert!(ct.lookup(&translated, tcp(tcp_flags::ACK), 2).is_none());
        ct.remove(&alias);
        assert!(ct.lookup(&original, tcp(tcp_flags::ACK), 3).is_none());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::conntrack::tcp_flags;
    use crate::conntrack::test_support::{key, tcp};
    use crate::wire::ip_proto;
    use std::path::PathBuf;
    use std::time::Duration;

    /// A table file path of this test alone, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("podfence-ct-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir.join("conntrack"))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    const _: () = assert!(size_of::<Slot>() == 64 && size_of::<NatSlot>() == 24);

    #[test]
    fn a_table_file_keeps_its_connections_for_the_next_process() {
        let file = TempFile::new("restore");
        let plain = key(1, 80, ip_proto::TCP);
        let (original, translated) = (
            ConnKey {
                dst: 0x0a60_000a,
                ..key(2, 53, ip_proto::UDP)
            },
            ConnKey {
                dst: 0x0a00_0009,
                dst_port: 5353,
                ..key(2, 53, ip_proto::UDP)
            },
        );
        let now;
        {
            let (ct, opened) = Conntrack::open(&file.0, 100, Timeouts::default()).unwrap();
            assert_eq!(opened, Opened::Created);
            assert_eq!(ct.capacity(), 128);
            assert_eq!(ct.path(), Some(file.0.as_path()));
            now = ct.clock_ns();
            let _ = ct.insert(&plain, State::TcpEstablished, 7, now);
            let _ = ct.insert_translated(
                &ct.locate(&original),
                &translated,
                State::UdpReplied,
                7,
                now,
            );
            ct.record_generation(7);
            ct.record_generation(5);
            assert_eq!(ct.generation_floor(), 7, "the highest is kept");
        }
        let (ct, opened) = Conntrack::open(&file.0, 100, Timeouts::default()).unwrap();
        assert_eq!(opened, Opened::Restored);
        assert_eq!(ct.generation_floor(), 7);
        let later = ct.clock_ns();
        assert!(later >= now, "one clock across processes of a boot");
        let hit = ct
            .lookup(&plain.reversed(), tcp(tcp_flags::ACK), later)
            .unwrap();
        assert!(hit.reply);
        assert_eq!((hit.state, hit.generation), (State::TcpEstablished, 7));
        // The translated connection, found by a reply first (the backend
        // speaks first after the restart) and by a forward packet.
        let back = ct
            .lookup(&translated.reversed(), Signal::default(), later)
            .unwrap();
        assert_eq!(
            back.nat,
            Some(Nat::Translated {
                service: NatAddr {
                    addr: 0x0a60_000a,
                    port: 53
                }
            })
        );
        let alias = ct.lookup(&original, Signal::default(), later).unwrap();
        assert!(matches!(alias.nat, Some(Nat::Alias { backend }) if backend.port == 5353));
        assert_eq!(ct.live_entries(later), 3);
    }

    #[test]
    fn another_layout_capacity_or_file_starts_clean() {
        let file = TempFile::new("mismatch");
        {
            let (ct, _) = Conntrack::open(&file.0, 64, Timeouts::default()).unwrap();
            let _ = ct.insert(
                &key(1, 80, ip_proto::TCP),
                State::TcpEstablished,
                1,
                ct.clock_ns(),
            );
            ct.record_generation(3);
        }
        let (ct, opened) = Conntrack::open(&file.0, 256, Timeouts::default()).unwrap();
        assert!(
            matches!(&opened, Opened::Mismatch(why) if why.contains("bytes")),
            "{opened:?}"
        );
        assert_eq!(ct.live_entries(ct.clock_ns()), 0);
        assert_eq!(ct.generation_floor(), 0);
        let _ = ct.insert(
            &key(1, 80, ip_proto::TCP),
            State::TcpEstablished,
            1,
            ct.clock_ns(),
        );
        drop(ct);
        // Another layout version in the header.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file.0)
                .unwrap();
            f.write_all_at(&(store::LAYOUT_VERSION + 1).to_ne_bytes(), 8)
                .unwrap();
        }
        let (ct, opened) = Conntrack::open(&file.0, 256, Timeouts::default()).unwrap();
        assert!(
            matches!(&opened, Opened::Mismatch(why) if why.contains("layout version")),
            "{opened:?}"
        );
        assert_eq!(ct.live_entries(ct.clock_ns()), 0);
        drop(ct);
        // Not a table at all.
        std::fs::write(&file.0, vec![7u8; 8192]).unwrap();
        let (_, opened) = Conntrack::open(&file.0, 256, Timeouts::default()).unwrap();
        assert!(matches!(&opened, Opened::Mismatch(_)), "{opened:?}");
    }

    #[test]
    fn one_process_holds_a_table_file_at_a_time() {
        let file = TempFile::new("lock");
        let (held, _) = Conntrack::open(&file.0, 64, Timeouts::default()).unwrap();
        let second =
            Conntrack::open_waiting(&file.0, 64, Timeouts::default(), Duration::from_millis(30));
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
        drop(held);
        assert!(Conntrack::open_waiting(&file.0, 64, Timeouts::default(), Duration::ZERO).is_ok());
    }
}
