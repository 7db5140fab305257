//! The verdict of a fragmented datagram, from its first fragment to the
//! later ones.
//!
//! podfence never reassembles. Only the first fragment of a datagram carries
//! the transport header, so only it can be classified; every later fragment
//! parses with ports 0 and [`Fragment::Later`]. The worker remembers the
//! first fragment's verdict in a [`FragmentTable`] keyed by
//! [`FragmentKey`] (source, destination, protocol and identification, as
//! IPv4 reassembly does; IPv6 reassembly ignores the protocol, so its key
//! carries protocol 0) and applies it to the later fragments. The limits of
//! that choice:
//!
//! - A later fragment that arrives before its first fragment (reordering)
//!   finds no entry: the caller applies its default for unknown fragments.
//! - The table is bounded (fixed capacity, allocated once) and entries
//!   expire after a timeout. When a bucket is full the entry closest to
//!   expiry is evicted; the later fragments of that datagram then find no
//!   entry and get the default. Flooding first fragments can therefore
//!   cost other datagrams their verdict, never memory.
//! - Overlapping or duplicate fragments are not detected across packets:
//!   every first fragment is classified on its own and the last one stored
//!   wins. The one overlap that can rewrite TCP ports or flags after
//!   classification, an IPv4 TCP fragment at offset 8 (RFC 1858), is
//!   rejected by the parser as
//!   [`TinyTcpFragment`](crate::wire::ParseError::TinyTcpFragment), and a
//!   first fragment too short to hold its transport header is rejected as
//!   truncated.
//! - IPv4 identifications are 16 bits and wrap quickly on a busy host pair;
//!   a short timeout keeps a stale entry from matching a reused id.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use crate::flow::{FlowKey, Fragment, PacketMeta};

/// What identifies the fragments of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address.
    pub src: u128,
    /// Destination address.
    pub dst: u128,
    /// Identification.
    pub id: u32,
    /// IPv4 protocol; 0 for IPv6 (RFC 8200 reassembles by addresses and id,
    /// and a first fragment's final protocol can differ from the next
    /// header its later fragments carry).
    pub protocol: u8,
    /// Whether the addresses are IPv6.
    pub ipv6: bool,
}

impl FragmentKey {
    /// The key of the datagram a fragment with flow key `key` and
    /// identification `id` belongs to (ports are ignored).
    #[must_use]
    #[inline]
    pub fn new(key: &FlowKey, id: u32) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            id,
            protocol: if key.ipv6 { 0 } else { key.protocol },
            ipv6: key.ipv6,
        }
    }

    /// The key of a parsed fragment; `None` when it is not a fragment.
    #[must_use]
    #[inline]
    pub fn of(meta: &PacketMeta) -> Option<Self> {
        match meta.fragment {
            Fragment::NotFragment => None,
            Fragment::First { id } | Fragment::Later { id } => Some(Self::new(&meta.key, id)),
        }
    }
}

/// What [`FragmentTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentInsert {
    /// Stored in a free or expired slot.
    Inserted,
    /// The key was present (a duplicate first fragment): value replaced.
    Replaced,
    /// The bucket was full of live entries: the one closest to expiry was
    /// evicted.
    Evicted,
}

#[derive(Clone, Copy, Debug)]
struct FragmentSlot<V> {
    key: FragmentKey,
    value: V,
    expires_ns: u64,
}

/// Remembers a value (the worker's verdict) per fragmented datagram, from
/// its first fragment to its later ones. Bounded, allocated once, evicts
/// instead of failing; see the module docs for the limits. One per worker:
/// it takes `&mut self` and has no locks.
///
/// Set-associative: a key hashes to a bucket of [`FragmentTable::WAYS`]
/// slots, so a lookup reads at most four slots.
#[derive(Debug)]
pub struct FragmentTable<V> {
    slots: Box<[Option<FragmentSlot<V>>]>,
    bucket_mask: usize,
    timeout_ns: u64,
}

impl<V: Copy> FragmentTable<V> {
    /// Slots per bucket: a key may live in any of them.
    pub const WAYS: usize = 4;
    /// A reasonable capacity for one worker.
    pub const DEFAULT_CAPACITY: usize = 1024;
    /// A reasonable lifetime: the fragments of one datagram arrive within
    /// milliseconds of each other on a node, and a short life keeps a
    /// wrapped 16-bit IPv4 id from meeting a stale entry.
    pub const DEFAULT_TIMEOUT_NS: u64 = 2_000_000_000;

    /// A table of at least `capacity` slots whose entries live
    /// [`Self::DEFAULT_TIMEOUT_NS`].
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self::with_timeout(capacity, Self::DEFAULT_TIMEOUT_NS)
    }

    /// A table of at least `capacity` slots (rounded up to a power of two,
    /// at least [`Self::WAYS`]) whose entries live `timeout_ns`.
    #[must_use]
    pub fn with_timeout(capacity: usize, timeout_ns: u64) -> Self {
        let capacity = capacity.max(Self::WAYS).next_power_of_two();
        Self {
            slots: vec![None; capacity].into_boxed_slice(),
            bucket_mask: capacity / Self::WAYS - 1,
            timeout_ns,
        }
    }

    /// Number of slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Lifetime of an entry.
    #[must_use]
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns
    }

    /// Number of entries alive at `now_ns` (walks the table: not for the
    /// hot path).
    #[must_use]
    pub fn live(&self, now_ns: u64) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.expires_ns > now_ns)
            .count()
    }

    /// Forgets everything (on a policy change, say).
    pub fn clear(&mut self) {
        self.slots.fill(None);
    }

    #[inline]
    fn bucket(&self, key: &FragmentKey) -> std::ops::Range<usize> {
        let h = FxBuildHasher.hash_one(key);
        let h = h ^ (h >> 32);
        let start = (h as usize & self.bucket_mask) * Self::WAYS;
        start..start + Self::WAYS
    }

    /// Stores `value` for the datagram of a first fragment (flow key `key`,
    /// identification `id`) until `now_ns` plus the timeout.
    pub fn insert(&mut self, key: &FlowKey, id: u32, value: V, now_ns: u64) -> FragmentInsert {
        self.insert_key(FragmentKey::new(key, id), value, now_ns)
    }

    /// [`Self::insert`] by datagram key.
    pub fn insert_key(&mut self, key: FragmentKey, value: V, now_ns: u64) -> FragmentInsert {
        let expires_ns = now_ns.saturating_add(self.timeout_ns);
        let entry = Some(FragmentSlot {
            key,
            value,
            expires_ns,
        });
        let range = self.bucket(&key);
        let bucket = &mut self.slots[range];
        let mut free = None;
        let mut oldest = 0;
        let mut oldest_expiry = u64::MAX;
        for (i, slot) in bucket.iter().enumerate() {
            match slot {
                Some(s) if s.key == key => {
                    bucket[i] = entry;
                    return FragmentInsert::Replaced;
                }
                Some(s) if s.expires_ns > now_ns => {
                    if s.expires_ns < oldest_expiry {
                        (oldest, oldest_expiry) = (i, s.expires_ns);
                    }
                }
                _ => {
                    free.get_or_insert(i);
                }
            }
        }
        if let Some(i) = free {
            bucket[i] = entry;
            FragmentInsert::Inserted
        } else {
            bucket[oldest] = entry;
            FragmentInsert::Evicted
        }
    }

    /// The value stored for the datagram of a later fragment (flow key
    /// `key`, identification `id`), if its first fragment was seen and the
    /// entry has neither expired nor been evicted.
    #[must_use]
    #[inline]
    pub fn lookup(&self, key: &FlowKey, id: u32, now_ns: u64) -> Option<V> {
        self.lookup_key(&FragmentKey::new(key, id), now_ns)
    }

    /// [`Self::lookup`] by datagram key.
    #[must_use]
    #[inline]
    pub fn lookup_key(&self, key: &FragmentKey, now_ns: u64) -> Option<V> {
        self.slots[self.bucket(key)]
            .iter()
            .flatten()
            .find(|s| s.key == *key && s.expires_ns > now_ns)
            .map(|s| s.value)
    }

    /// Forgets a datagram, returning its value if it was alive.
    pub fn remove(&mut self, key: &FragmentKey, now_ns: u64) -> Option<V> {
        let range = self.bucket(key);
        let slot = self.slots[range]
            .iter_mut()
            .find(|s| s.is_some_and(|s| s.key == *key))?;
        let old = slot.take()?;
        (old.expires_ns > now_ns).then_some(old.value)
    }
}

impl<V: Copy> Default for FragmentTable<V> {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto;

    fn fkey(id: u32) -> FragmentKey {
        FragmentKey::new(&FlowKey::v4(1, 2, ip_proto::UDP, 0, 0), id)
    }

    #[test]
    fn fragment_key_ignores_ports_and_ipv6_protocol() {
        let first = FlowKey::v4(1, 2, ip_proto::UDP, 1000, 53);
        let later = FlowKey::v4(1, 2, ip_proto::UDP, 0, 0);
        assert_eq!(FragmentKey::new(&first, 7), FragmentKey::new(&later, 7));
        assert_ne!(FragmentKey::new(&first, 7), FragmentKey::new(&first, 8));
        let tcp = FlowKey::v4(1, 2, ip_proto::TCP, 0, 0);
        assert_ne!(FragmentKey::new(&tcp, 7), FragmentKey::new(&later, 7));
        let first6 = FlowKey::v6(1, 2, ip_proto::TCP, 1, 2);
        let later6 = FlowKey::v6(1, 2, ip_proto::DESTINATION_OPTIONS, 0, 0);
        assert_eq!(FragmentKey::new(&first6, 7), FragmentKey::new(&later6, 7));
        assert_ne!(FragmentKey::new(&first6, 7), FragmentKey::new(&tcp, 7));
    }

    #[test]
    fn fragment_table_hit_miss_and_expiry() {
        let mut t = FragmentTable::with_timeout(16, 100);
        assert_eq!(t.capacity(), 16);
        assert_eq!(t.timeout_ns(), 100);
        let first = FlowKey::v4(1, 2, ip_proto::UDP, 1000, 53);
        let later = FlowKey::v4(1, 2, ip_proto::UDP, 0, 0);
        assert_eq!(
            t.lookup(&later, 7, 0),
            None,
            "later before first: no verdict"
        );
        assert_eq!(t.insert(&first, 7, true, 1000), FragmentInsert::Inserted);
        assert_eq!(t.lookup(&later, 7, 1050), Some(true));
        assert_eq!(t.lookup(&later, 8, 1050), None);
        assert_eq!(t.live(1050), 1);
        // A duplicate first fragment replaces the value and the expiry.
        assert_eq!(t.insert(&first, 7, false, 1050), FragmentInsert::Replaced);
        assert_eq!(t.lookup(&later, 7, 1149), Some(false));
        assert_eq!(t.lookup(&later, 7, 1150), None, "expired");
        assert_eq!(t.live(1150), 0);
        // An expired slot is reused without counting as an eviction.
        assert_eq!(t.insert_key(fkey(9), true, 2000), FragmentInsert::Inserted);
        assert_eq!(t.remove(&fkey(9), 2001), Some(true));
        assert_eq!(t.lookup_key(&fkey(9), 2001), None);
        assert_eq!(t.remove(&fkey(9), 2001), None);
        t.insert_key(fkey(10), true, 3000);
        t.clear();
        assert_eq!(t.lookup_key(&fkey(10), 3000), None);
    }

    #[test]
    fn fragment_table_evicts_the_oldest_when_full() {
        let mut t = FragmentTable::with_timeout(8, 1_000_000);
        let mut evicted = 0;
        for id in 0..64u32 {
            match t.insert_key(fkey(id), id, u64::from(id)) {
                FragmentInsert::Evicted => evicted += 1,
                FragmentInsert::Inserted => {}
                FragmentInsert::Replaced => panic!("distinct keys"),
            }
        }
        assert_eq!(evicted, 64 - 8, "a full table evicts instead of failing");
        assert_eq!(t.live(100), 8);
        // The newest entry of each bucket survives; the very last insert
        // is always present, the first ones are gone.
        assert_eq!(t.lookup_key(&fkey(63), 100), Some(63));
        let survivors: Vec<u32> = (0..64)
            .filter(|&id| t.lookup_key(&fkey(id), 100).is_some())
            .collect();
        assert_eq!(survivors.len(), 8);
        assert!(
            survivors.iter().all(|&id| id >= 64 - 8 * 4),
            "{survivors:?}"
        );
        // Within one bucket, the oldest (earliest expiry) goes first.
        let mut bucket_mates = vec![];
        let home = t.bucket(&fkey(0));
        for id in 1000..100_000u32 {
            if t.bucket(&fkey(id)) == home {
                bucket_mates.push(id);
                if bucket_mates.len() == 5 {
                    break;
                }
            }
        }
        let mut t = FragmentTable::with_timeout(8, 1_000_000);
        for (i, &id) in bucket_mates.iter().enumerate() {
            t.insert_key(fkey(id), id, i as u64);
        }
        assert_eq!(t.lookup_key(&fkey(bucket_mates[0]), 10), None);
        for &id in &bucket_mates[1..] {
            assert_eq!(t.lookup_key(&fkey(id), 10), Some(id));
        }
    }

    #[test]
    fn fragment_table_sizes() {
        let t = FragmentTable::<u8>::new(0);
        assert_eq!(t.capacity(), FragmentTable::<u8>::WAYS);
        assert_eq!(FragmentTable::<u8>::new(1000).capacity(), 1024);
        let d = FragmentTable::<u8>::default();
        assert_eq!(d.capacity(), FragmentTable::<u8>::DEFAULT_CAPACITY);
        assert_eq!(d.timeout_ns(), FragmentTable::<u8>::DEFAULT_TIMEOUT_NS);
    }
}
