//! Small policy tables, built as the compiler would, for the worker and
//! switch tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podfence_datapath::Tables;
use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::tables::{Direction, Enforcement, PodAddress, PortRule, TablesBuilder};

/// Pod or test address `10.0.0.<last>`.
#[must_use]
pub fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// Pod or test address `fd00::<last>`.
#[must_use]
pub fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
}

/// Pods `ns/p1` (10.0.0.1, fd00::1) and `ns/p2` (10.0.0.2, fd00::2), both
/// with open egress. `p1` is isolated for ingress and accepts TCP
/// `open_port` (if any) from `p2`; `p2` is isolated for ingress with no rule
/// when `isolate_p2`, else open.
#[must_use]
pub fn two_pods(generation: u64, open_port: Option<u16>, isolate_p2: bool) -> Tables {
    let mut b = TablesBuilder::new(generation);
    let world = b.add_identity();
    let (id1, id2) = (b.add_identity(), b.add_identity());
    b.set_other_addresses_v4(IntervalMap::from_prefixes([], world));
    b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
    let policy = b.add_policy("ns", "web");
    let group = b.add_group(Direction::Ingress, &[policy]);
    let closed = b.add_group(Direction::Ingress, &[policy]);
    if let Some(port) = open_port {
        let rule = PortRule {
            policy,
            rule: 0,
            protocol: 6,
            first: port,
            last: port,
            action: podfence_datapath::tables::RuleAction::Allow,
        };
        let set = b.add_port_set(vec![rule]);
        b.allow(group, id2, set);
    }
    let p2_ingress = if isolate_p2 {
        Enforcement::Isolated(closed)
    } else {
        Enforcement::Open
    };
    for (last, identity, ingress) in [(1, id1, Enforcement::Isolated(group)), (2, id2, p2_ingress)]
    {
        let pod = b.add_pod("ns", &format!("p{last}"));
        for addr in [v4(last), v6(u16::from(last))] {
            let entry = PodAddress {
                identity,
                pod,
                egress: Enforcement::Open,
                ingress,
                node: None,
                tiers: podfence_datapath::tables::TierGroups::NONE,
            };
            b.add_pod_address(addr, entry).unwrap();
        }
    }
    b.build()
}
