//! A port set's first match in bounded work: at build time each set of more
//! than [`SCAN_MAX`] port rules becomes sorted segments over `(protocol,
//! port)`, each naming the first rule (lowest policy, then rule) that
//! covers it. Classifying then costs one binary search over a set's
//! segments, whatever the number of rules in it; scanning the rules
//! themselves grew with the tier policies that select a pod (hundreds of
//! rules at 1,000 ClusterNetworkPolicies). Smaller sets, most of them, are
//! scanned: that is quicker than a search for a rule or two.

use super::{ANY_PROTOCOL, IpProtocol, PortRule};

/// No rule matches.
const NO_RULE: u32 = u32::MAX;

/// Sets of at most this many rules are scanned, not searched.
const SCAN_MAX: u32 = 4;

/// Where a port set's rules or segments are: a scanned set's rules
/// (`start..start + len` of the tables' port rules), or, with
/// [`SEGMENTS`] set in `len`, a searched set's segments, the first of
/// which (key 0, no protocol) holds its first every-protocol rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PortMatcher {
    start: u32,
    len: u32,
}

/// The flag of a searched set in [`PortMatcher::len`].
const SEGMENTS: u32 = 1 << 31;

/// From `key` (`protocol << 16 | first port`) up to the next segment's key,
/// `rule` (an index into the tables' port rules, or [`NO_RULE`]) is the
/// first match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PortSegment {
    key: u32,
    rule: u32,
}

fn key(protocol: u8, port: u16) -> u32 {
    (u32::from(protocol) << 16) | u32::from(port)
}

impl PortMatcher {
    /// Compiles `rules` (sorted: policy, rule, ...), which the tables keep
    /// at `base..`, appending its segments to `segments`. Each protocol a
    /// rule names gets segments covering ports 0 to 65535; every other
    /// protocol is matched by the first every-protocol rule alone.
    pub(super) fn build(rules: &[PortRule], base: u32, segments: &mut Vec<PortSegment>) -> Self {
        if rules.len() <= SCAN_MAX as usize {
            return Self {
                start: base,
                len: rules.len() as u32,
            };
        }
        let any = rules
            .iter()
            .position(|r| r.protocol == ANY_PROTOCOL)
            .map_or(NO_RULE, |i| base + i as u32);
        let start = segments.len() as u32;
        segments.push(PortSegment { key: 0, rule: any });
        let mut protocols: Vec<u8> = rules
            .iter()
            .map(|r| r.protocol)
            .filter(|&p| p != ANY_PROTOCOL)
            .collect();
        protocols.sort_unstable();
        protocols.dedup();
        let mut bounds: Vec<u16> = Vec::new();
        let mut first_rule: Vec<u32> = Vec::new();
        let mut next_open: Vec<usize> = Vec::new();
        for protocol in protocols {
            // Segment starts: 0, each rule's first port, the port after its last.
            bounds.clear();
            bounds.push(0);
            for r in rules.iter().filter(|r| r.protocol == protocol) {
                bounds.push(r.first);
                if let Some(after) = r.last.checked_add(1) {
                    bounds.push(after);
                }
            }
            bounds.sort_unstable();
            bounds.dedup();
            // Rules in precedence order each claim the segments they cover
            // that no earlier rule claimed (skipping claimed runs).
            first_rule.clear();
            first_rule.resize(bounds.len(), any);
            next_open.clear();
            next_open.extend(0..=bounds.len());
            for (i, r) in rules.iter().enumerate() {
                let index = base + i as u32;
                if r.protocol != protocol || r.first > r.last || index > any {
                    continue;
                }
                let lo = bounds.partition_point(|&b| b < r.first);
                let hi = bounds.partition_point(|&b| b <= r.last);
                let mut s = open_from(&mut next_open, lo);
                while s < hi {
                    first_rule[s] = index;
                    next_open[s] = s + 1;
                    s = open_from(&mut next_open, s + 1);
                }
            }
            // Neighbours with the same first rule are one segment.
            let protocol_start = segments.len();
            for (&b, &rule) in bounds.iter().zip(&first_rule) {
                if segments.len() > protocol_start
                    && segments.last().is_some_and(|s| s.rule == rule)
                {
                    continue;
                }
                segments.push(PortSegment {
                    key: key(protocol, b),
                    rule,
                });
            }
        }
        Self {
            start,
            len: (segments.len() as u32 - start) | SEGMENTS,
        }
    }

    /// The first rule matching `protocol` and `port`; `rules` and
    /// `segments` are the tables'.
    #[allow(
        clippy::inline_always,
        reason = "the classifier's inner step: out of line, it cost the common small sets a call"
    )]
    #[inline(always)]
    pub(super) fn first(
        self,
        rules: &[PortRule],
        segments: &[PortSegment],
        protocol: IpProtocol,
        port: u16,
    ) -> Option<PortRule> {
        if self.len & SEGMENTS == 0 {
            let own = &rules[self.start as usize..(self.start + self.len) as usize];
            return own.iter().find(|r| r.matches(protocol, port)).copied();
        }
        let len = self.len & !SEGMENTS;
        let own = &segments[self.start as usize..(self.start + len) as usize];
        let q = key(protocol.0, port);
        // The first segment has key 0: the partition point is at least 1.
        let s = own[own.partition_point(|s| s.key <= q) - 1];
        let rule = if s.key >> 16 == u32::from(protocol.0) {
            s.rule
        } else {
            own[0].rule
        };
        rules.get(rule as usize).copied()
    }
}

/// The first segment at or after `s` that no rule claimed yet (path
/// halving over `next_open`).
fn open_from(next_open: &mut [usize], mut s: usize) -> usize {
    while next_open[s] != s {
        let next = next_open[next_open[s]];
        next_open[s] = next;
        s = next;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{PolicyId, RuleAction};
    use crate::wire::ip_proto;

    fn rule(policy: u32, protocol: u8, first: u16, last: u16) -> PortRule {
        PortRule {
            policy: PolicyId(policy),
            rule: 0,
            protocol,
            first,
            last,
            action: RuleAction::Allow,
        }
    }

    /// The first rule by a scan, as the rules define it.
    fn scan(rules: &[PortRule], protocol: IpProtocol, port: u16) -> Option<PortRule> {
        rules.iter().find(|r| r.matches(protocol, port)).copied()
    }

    #[test]
    fn segments_give_the_scan_s_first_match() {
        let sets: Vec<Vec<PortRule>> = vec![
            vec![],
            vec![rule(0, ip_proto::TCP, 80, 80)],
            vec![rule(0, ip_proto::TCP, 0, u16::MAX)],
            vec![
                rule(0, ip_proto::TCP, 8000, 8999),
                rule(1, ip_proto::TCP, 8080, 8080),
                rule(2, ip_proto::UDP, 53, 53),
                rule(3, ANY_PROTOCOL, 0, u16::MAX),
                rule(4, ip_proto::TCP, 1, 65_535),
                rule(5, ip_proto::SCTP, 30_000, 32_767),
            ],
            vec![
                rule(0, ip_proto::UDP, 65_535, 65_535),
                rule(1, ip_proto::UDP, 10, 20),
                rule(2, ip_proto::UDP, 15, 30),
                rule(3, ip_proto::UDP, 0, 12),
                rule(4, ip_proto::UDP, 25, 65_535),
            ],
        ];
        let probes = [
            0, 1, 9, 10, 12, 13, 15, 20, 21, 25, 30, 31, 53, 79, 80, 81, 7999, 8000, 8080, 8081,
            8999, 9000, 29_999, 30_000, 32_767, 32_768, 65_534, 65_535,
        ];
        let protocols = [
            IpProtocol::TCP,
            IpProtocol::UDP,
            IpProtocol::SCTP,
            IpProtocol::ICMP,
        ];
        let mut all = vec![rule(9, ip_proto::TCP, 1, 1)];
        let mut segments = vec![PortSegment { key: 0, rule: 0 }];
        for (n, rules) in sets.iter().enumerate() {
            let base = all.len() as u32;
            all.extend_from_slice(rules);
            let m = PortMatcher::build(rules, base, &mut segments);
            assert_eq!(m.len & SEGMENTS == 0, rules.len() <= SCAN_MAX as usize);
            for protocol in protocols {
                for port in probes {
                    assert_eq!(
                        m.first(&all, &segments, protocol, port),
                        scan(rules, protocol, port),
                        "set {n}, {protocol:?} {port}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Any sorted set, any probe: the segments' answer is the scan's.
        #[test]
        fn any_set_matches_its_scan(
            raw in proptest::collection::vec(
                (0u32..6, 0u16..3, 0usize..4, 0u16..12, 0u16..12, proptest::bool::ANY),
                0..24,
            ),
            probes in proptest::collection::vec((0usize..5, 0u16..14, proptest::bool::ANY), 1..40),
        ) {
            const PROTOCOLS: [u8; 4] = [ANY_PROTOCOL, ip_proto::TCP, ip_proto::UDP, ip_proto::SCTP];
            // Small ports so that ranges overlap; `wide` puts the ends at
            // the top of the range too.
            let at = |p: u16, wide: bool| if wide && p >= 10 { u16::MAX - (13 - p) } else { p };
            let mut rules: Vec<PortRule> = raw
                .iter()
                .map(|&(policy, r, proto, a, b, wide)| PortRule {
                    rule: r,
                    ..rule(policy, PROTOCOLS[proto], at(a.min(b), wide), at(a.max(b), wide))
                })
                .collect();
            rules.sort_unstable();
            rules.dedup();
            let mut segments = Vec::new();
            let m = PortMatcher::build(&rules, 0, &mut segments);
            for (proto, port, wide) in probes {
                let protocol = IpProtocol([0, ip_proto::TCP, ip_proto::UDP, ip_proto::SCTP, ip_proto::ICMP][proto]);
                let port = at(port, wide);
                proptest::prop_assert_eq!(m.first(&rules, &segments, protocol, port), scan(&rules, protocol, port));
            }
        }
    }
}
