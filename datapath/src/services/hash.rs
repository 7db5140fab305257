//! Fixed, seedless hashes for backend choice.
//!
//! Every worker, and an agent restarted or upgraded under open connections,
//! must pick the same backend for the same flow, so nothing here depends on
//! the process: no random seed, no `std` hasher (whose algorithm may change
//! between releases). The construction absorbs 64-bit words through the
//! SplitMix64 finaliser (Stafford's "Mix13", a bijection in which every input
//! bit affects every output bit): `h = mix(h ^ word)`. The words go in a
//! fixed order, so the source and destination ends are not interchangeable
//! and the two directions of a flow hash differently. Each use starts from
//! its own constant, so a client hash and a flow hash of the same addresses
//! are unrelated, as are Maglev's two per-backend hashes.
//!
//! Cost: two multiplications per word, five words per flow; paid once per
//! new Service connection, never per packet.

use crate::flow::FlowKey;

use super::Backend;

const FLOW: u64 = 0x243f_6a88_85a3_08d3;
const CLIENT: u64 = 0x1319_8a2e_0370_7344;
pub(super) const OFFSET: u64 = 0xa409_3822_299f_31d0;
pub(super) const SKIP: u64 = 0x082e_fa98_ec4e_6c89;

/// SplitMix64's finaliser.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn absorb(start: u64, words: &[u64]) -> u64 {
    words.iter().fold(start, |h, &w| mix(h ^ w))
}

/// The hash of a flow's 5-tuple, in the packet's direction (the family
/// included): what a Frontend without session affinity chooses by.
#[must_use]
#[inline]
pub fn flow_hash(key: &FlowKey) -> u64 {
    absorb(
        FLOW,
        &[
            key.src as u64,
            (key.src >> 64) as u64,
            key.dst as u64,
            (key.dst >> 64) as u64,
            (u64::from(key.src_port) << 32)
                | (u64::from(key.dst_port) << 16)
                | (u64::from(key.protocol) << 8)
                | u64::from(key.ipv6),
        ],
    )
}

/// The hash of a flow's source address only: what a Frontend with ClientIP
/// session affinity chooses by, so that one client lands on one backend.
#[must_use]
#[inline]
pub fn client_hash(key: &FlowKey) -> u64 {
    absorb(
        CLIENT,
        &[key.src as u64, (key.src >> 64) as u64, u64::from(key.ipv6)],
    )
}

/// A backend's identity (address and port, never its position in a list),
/// hashed from `start`: Maglev's offset and skip.
pub(super) fn backend_hash(start: u64, b: &Backend) -> u64 {
    let (bits, v6) = b.addr_bits();
    absorb(
        start,
        &[
            bits as u64,
            (bits >> 64) as u64,
            (u64::from(b.port) << 8) | u64::from(v6),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn key(src: &str, sport: u16, dst: &str, dport: u16, protocol: u8) -> FlowKey {
        FlowKey::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            protocol,
            sport,
            dport,
        )
        .unwrap()
    }

    /// The values are part of the contract: agents of different builds on
    /// one node (an upgrade under open connections) must agree.
    #[test]
    fn hashes_are_fixed_across_processes_and_builds() {
        let k = key("10.0.0.1", 40000, "10.96.0.10", 53, 17);
        let k6 = key("fd00::1", 40000, "fd00:96::a", 53, 17);
        assert_eq!(flow_hash(&k), 0x8890_df59_b656_097c);
        assert_eq!(client_hash(&k), 0x8e72_46c2_d4c5_2730);
        assert_eq!(flow_hash(&k6), 0x06ba_8a5b_7373_e410);
    }

    #[test]
    fn every_field_of_the_tuple_counts() {
        let base = key("10.0.0.1", 40000, "10.96.0.10", 53, 17);
        let variants = [
            base,
            key("10.0.0.2", 40000, "10.96.0.10", 53, 17),
            key("10.0.0.1", 40001, "10.96.0.10", 53, 17),
            key("10.0.0.1", 40000, "10.96.0.11", 53, 17),
            key("10.0.0.1", 40000, "10.96.0.10", 54, 17),
            key("10.0.0.1", 40000, "10.96.0.10", 53, 6),
            key("::ffff:10.0.0.1", 40000, "::ffff:10.96.0.10", 53, 17),
        ];
        let hashes: HashSet<u64> = variants.iter().map(flow_hash).collect();
        assert_eq!(hashes.len(), variants.len());
    }

    #[test]
    fn client_hash_ignores_everything_but_the_source_address() {
        let a = key("10.0.0.1", 40000, "10.96.0.10", 53, 17);
        let b = key("10.0.0.1", 1234, "10.96.0.99", 80, 6);
        assert_eq!(client_hash(&a), client_hash(&b));
        assert_ne!(client_hash(&a), client_hash(&a.reversed()));
        assert_ne!(client_hash(&a), flow_hash(&a));
    }

    proptest! {
        /// Same tuple, same hash; the reverse direction hashes differently.
        #[test]
        fn deterministic_and_direction_sensitive(
            src in any::<u32>(), dst in any::<u32>(),
            sport in any::<u16>(), dport in any::<u16>(), protocol in any::<u8>(),
        ) {
            let k = FlowKey::v4(src, dst, protocol, sport, dport);
            let copy = FlowKey::v4(src, dst, protocol, sport, dport);
            prop_assert_eq!(flow_hash(&k), flow_hash(&copy));
            prop_assume!((src, sport) != (dst, dport));
            prop_assert_ne!(flow_hash(&k), flow_hash(&k.reversed()));
        }
    }
}
