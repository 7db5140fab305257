//! Per-action packet counters read from the program's per-CPU array.
//!
//! The BPF side increments one u64 per CPU without atomics; this module owns
//! the index layout (mirroring `enum counter` in `redirect.bpf.c`) and the
//! summation over CPUs.

use std::ops::Sub;

/// One counter slot of the `counters` map. The discriminant is the map key and
/// must match `enum counter` in `redirect.bpf.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// IPv4/IPv6 frames handed to an AF_XDP socket.
    Redirected = 0,
    /// ARP and ICMPv6 neighbour discovery (types 133..=137) passed to the kernel.
    PassedNeighbour = 1,
    /// Frames of other ethertypes passed to the kernel.
    PassedOther = 2,
    /// IPv4/IPv6 frames dropped because no socket was bound to their queue.
    FallbackDropped = 3,
    /// IPv4/IPv6 frames passed to the kernel because no socket was bound.
    FallbackPassed = 4,
    /// Frames dropped as malformed: truncated Ethernet/VLAN header, or more
    /// than two VLAN tags.
    Malformed = 5,
}

impl Counter {
    /// Every counter, in map-key order.
    pub const ALL: [Self; 6] = [
        Self::Redirected,
        Self::PassedNeighbour,
        Self::PassedOther,
        Self::FallbackDropped,
        Self::FallbackPassed,
        Self::Malformed,
    ];

    /// Number of slots; the loader checks the map has exactly this many.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The map key.
    #[must_use]
    pub fn key(self) -> u32 {
        self as u32
    }
}

/// Totals over all CPUs since the program was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// See [`Counter::Redirected`].
    pub redirected: u64,
    /// See [`Counter::PassedNeighbour`].
    pub passed_neighbour: u64,
    /// See [`Counter::PassedOther`].
    pub passed_other: u64,
    /// See [`Counter::FallbackDropped`].
    pub fallback_dropped: u64,
    /// See [`Counter::FallbackPassed`].
    pub fallback_passed: u64,
    /// See [`Counter::Malformed`].
    pub malformed: u64,
}

impl Counters {
    /// The value of one counter.
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::Redirected => self.redirected,
            Counter::PassedNeighbour => self.passed_neighbour,
            Counter::PassedOther => self.passed_other,
            Counter::FallbackDropped => self.fallback_dropped,
            Counter::FallbackPassed => self.fallback_passed,
            Counter::Malformed => self.malformed,
        }
    }

    /// A mutable reference to one counter.
    fn slot(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Redirected => &mut self.redirected,
            Counter::PassedNeighbour => &mut self.passed_neighbour,
            Counter::PassedOther => &mut self.passed_other,
            Counter::FallbackDropped => &mut self.fallback_dropped,
            Counter::FallbackPassed => &mut self.fallback_passed,
            Counter::Malformed => &mut self.malformed,
        }
    }

    /// Frames seen by the program (the sum of all counters).
    #[must_use]
    pub fn total(&self) -> u64 {
        Counter::ALL
            .iter()
            .map(|&c| self.get(c))
            .fold(0, u64::wrapping_add)
    }

    /// Sets `counter` to the sum of the per-CPU values read from the map.
    /// Each value is one native-endian u64; shorter values are ignored.
    pub(crate) fn add_per_cpu(&mut self, counter: Counter, per_cpu: &[Vec<u8>]) {
        let sum = per_cpu
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(u64::from_ne_bytes)
            .fold(0, u64::wrapping_add);
        let slot = self.slot(counter);
        *slot = slot.wrapping_add(sum);
    }
}

impl Sub for Counters {
    type Output = Self;

    /// Per-counter difference (wrapping), for "what happened since" checks.
    fn sub(self, rhs: Self) -> Self {
        let mut out = Self::default();
        for c in Counter::ALL {
            *out.slot(c) = self.get(c).wrapping_sub(rhs.get(c));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dense_and_ordered() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.key() as usize, i);
        }
        assert_eq!(Counter::COUNT, 6);
    }

    #[test]
    fn sums_per_cpu_values() {
        let mut c = Counters::default();
        let per_cpu = vec![
            3u64.to_ne_bytes().to_vec(),
            0u64.to_ne_bytes().to_vec(),
            39u64.to_ne_bytes().to_vec(),
        ];
        c.add_per_cpu(Counter::FallbackDropped, &per_cpu);
        assert_eq!(c.fallback_dropped, 42);
        assert_eq!(c.total(), 42);
        c.add_per_cpu(
            Counter::Redirected,
            &[u64::MAX.to_ne_bytes().to_vec(), vec![2, 0]],
        );
        assert_eq!(c.redirected, u64::MAX, "short values are ignored");
    }

    #[test]
    fn difference() {
        let a = Counters {
            redirected: 10,
            malformed: 1,
            ..Counters::default()
        };
        let b = Counters {
            redirected: 4,
            ..Counters::default()
        };
        let d = a - b;
        assert_eq!(d.redirected, 6);
        assert_eq!(d.malformed, 1);
        assert_eq!(d.get(Counter::PassedOther), 0);
    }
}
