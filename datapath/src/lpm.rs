//! Longest-prefix match flattened into disjoint intervals.
//!
//! `ipBlock`s nest (a `cidr` with `except` holes, blocks inside blocks), but a
//! lookup only needs the value of the longest prefix containing an address.
//! [`IntervalMap::from_prefixes`] resolves the nesting once, when tables are
//! built, into a sorted array of interval starts; a lookup is one binary
//! search over plain integers with no pointer chasing.

use crate::prefix::{AddrBits, Cidr};

/// A total map from addresses of one family to values, piecewise constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntervalMap<A, V> {
    /// Sorted, first element is always `A::ZERO`.
    starts: Vec<A>,
    /// `values[i]` holds for `starts[i] ..= starts[i + 1] - 1`.
    values: Vec<V>,
}

impl<A: AddrBits, V: Copy + PartialEq> IntervalMap<A, V> {
    /// Builds the map in which every address takes the value of the longest
    /// prefix that contains it, or `default` where none does. Of two equal
    /// prefixes the later one wins.
    pub fn from_prefixes(prefixes: impl IntoIterator<Item = (Cidr<A>, V)>, default: V) -> Self {
        let mut sorted: Vec<(usize, Cidr<A>, V)> = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, (c, v))| (i, c, v))
            .collect();
        // Outer blocks before the blocks they contain; equal blocks in input order.
        sorted.sort_by_key(|&(i, c, _)| (c.first(), c.prefix_len(), i));

        let mut out = Builder {
            starts: Vec::new(),
            values: Vec::new(),
        };
        // Next address not yet assigned; `None` once past the end of the space.
        let mut cursor = Some(A::ZERO);
        let mut stack: Vec<(Cidr<A>, V)> = Vec::new();
        for (_, cidr, value) in sorted {
            while let Some(&(top, top_value)) = stack.last() {
                if top.last() >= cidr.first() {
                    break;
                }
                cursor = out.fill_to(cursor, top.last(), top_value);
                stack.pop();
            }
            if let Some(at) = cursor
                && at < cidr.first()
            {
                let outer = stack.last().map_or(default, |&(_, v)| v);
                out.push(at, outer);
                cursor = Some(cidr.first());
            }
            stack.push((cidr, value));
        }
        while let Some((top, top_value)) = stack.pop() {
            cursor = out.fill_to(cursor, top.last(), top_value);
        }
        if let Some(at) = cursor {
            out.push(at, default);
        }
        Self {
            starts: out.starts,
            values: out.values,
        }
    }

    /// The value at `addr`.
    #[inline]
    #[must_use]
    pub fn get(&self, addr: A) -> V {
        let idx = self.starts.partition_point(|&s| s <= addr);
        // `starts[0] == ZERO <= addr`, so `idx >= 1`.
        self.values[idx - 1]
    }

    /// Number of intervals.
    #[must_use]
    pub fn intervals(&self) -> usize {
        self.starts.len()
    }

    /// The intervals as `(first, value)` pairs in address order.
    pub fn iter(&self) -> impl Iterator<Item = (A, V)> + '_ {
        self.starts.iter().copied().zip(self.values.iter().copied())
    }

    /// Maps every value through `f`, merging neighbours that become equal.
    #[must_use]
    pub fn map<W: Copy + PartialEq>(&self, mut f: impl FnMut(V) -> W) -> IntervalMap<A, W> {
        let mut out = Builder {
            starts: Vec::new(),
            values: Vec::new(),
        };
        for (start, v) in self.iter() {
            out.push(start, f(v));
        }
        IntervalMap {
            starts: out.starts,
            values: out.values,
        }
    }
}

struct Builder<A, V> {
    starts: Vec<A>,
    values: Vec<V>,
}

impl<A: AddrBits, V: Copy + PartialEq> Builder<A, V> {
    fn push(&mut self, start: A, value: V) {
        if self.values.last() == Some(&value) {
            return;
        }
        self.starts.push(start);
        self.values.push(value);
    }

    /// Assigns `value` from `cursor` through `last`; returns the next cursor.
    fn fill_to(&mut self, cursor: Option<A>, last: A, value: V) -> Option<A> {
        match cursor {
            Some(at) if at <= last => {
                self.push(at, value);
                last.checked_next()
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }
    fn c4(s: &str, len: u8) -> Cidr<u32> {
        Cidr::new(v4(s), len)
    }

    #[test]
    fn empty_map_is_default_everywhere() {
        let m = IntervalMap::<u32, u8>::from_prefixes([], 7);
        assert_eq!(m.get(0), 7);
        assert_eq!(m.get(u32::MAX), 7);
        assert_eq!(m.intervals(), 1);
    }

    #[test]
    fn nested_blocks_take_the_longest() {
        let m = IntervalMap::from_prefixes(
            [
                (c4("10.0.0.0", 8), 1),
                (c4("10.1.0.0", 16), 2),
                (c4("10.1.2.0", 24), 3),
            ],
            0,
        );
        assert_eq!(m.get(v4("9.255.255.255")), 0);
        assert_eq!(m.get(v4("10.0.0.0")), 1);
        assert_eq!(m.get(v4("10.1.0.0")), 2);
        assert_eq!(m.get(v4("10.1.2.77")), 3);
        assert_eq!(m.get(v4("10.1.3.0")), 2);
        assert_eq!(m.get(v4("10.2.0.0")), 1);
        assert_eq!(m.get(v4("11.0.0.0")), 0);
    }

    #[test]
    fn whole_space_and_edges() {
        let m = IntervalMap::from_prefixes(
            [
                (c4("0.0.0.0", 0), 1),
                (c4("255.255.255.255", 32), 2),
                (c4("0.0.0.0", 32), 3),
            ],
            0,
        );
        assert_eq!(m.get(0), 3);
        assert_eq!(m.get(1), 1);
        assert_eq!(m.get(u32::MAX - 1), 1);
        assert_eq!(m.get(u32::MAX), 2);
    }

    #[test]
    fn later_duplicate_wins() {
        let m = IntervalMap::from_prefixes([(c4("10.0.0.0", 8), 1), (c4("10.0.0.0", 8), 2)], 0);
        assert_eq!(m.get(v4("10.9.9.9")), 2);
    }

    #[test]
    fn ipv6() {
        let a = u128::from("2001:db8::".parse::<std::net::Ipv6Addr>().unwrap());
        let m = IntervalMap::from_prefixes([(Cidr::new(a, 32), 5u8)], 0);
        assert_eq!(m.get(a + 12345), 5);
        assert_eq!(m.get(a - 1), 0);
        assert_eq!(m.get(u128::MAX), 0);
    }

    proptest! {
        #[test]
        fn agrees_with_naive_longest_match(
            blocks in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u8..8), 0..24),
            probes in proptest::collection::vec(any::<u32>(), 1..64),
        ) {
            // Concentrate addresses so that blocks overlap often.
            let blocks: Vec<(Cidr<u32>, u8)> = blocks
                .into_iter()
                .map(|(a, l, v)| (Cidr::new(a & 0xF0F0_0000, l), v + 1))
                .collect();
            let m = IntervalMap::from_prefixes(blocks.clone(), 0);
            for p in probes.into_iter().chain(blocks.iter().flat_map(|(c, _)| [c.first(), c.last()])) {
                let mut best: Option<(u8, usize)> = None;
                for (i, (c, _)) in blocks.iter().enumerate() {
                    if c.contains(p) && best.is_none_or(|(l, _)| c.prefix_len() >= l) {
                        best = Some((c.prefix_len(), i));
                    }
                }
                let want = best.map_or(0, |(_, i)| blocks[i].1);
                prop_assert_eq!(m.get(p), want, "address {:#x}", p);
            }
        }
    }
}
