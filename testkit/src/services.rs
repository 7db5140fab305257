//! A client, its backends and their Services, for the translation tests.
//!
//! Pods (all local):
//! - `ns/client` at 10.0.0.2 and fd00::2, isolated for egress: it may reach
//!   the `dns` pods on UDP and TCP 5353 and the `web` pods on TCP 8080,
//!   nothing else (the Service addresses included, as "allow DNS to the
//!   kube-dns pods" policies are written);
//! - `ns/dns` at 10.0.0.1 and fd00::1, open for ingress;
//! - `ns/web` at 10.0.0.3 and fd00::3, isolated for ingress with no rule.
//!
//! Services: [`DNS_V4`] and [`DNS_V6`] (UDP and TCP 53 to `dns`:5353),
//! [`WEB`] (TCP 80 to `web`:8080), [`EMPTY`] (TCP 80, no endpoint) and
//! [`ELSEWHERE`] (TCP 80, `internalTrafficPolicy: Local`, its only
//! endpoint on another node).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::services::{
    Endpoint, FrontendKey, ServiceOptions, ServiceTable, ServiceTableBuilder, TrafficPolicy,
};
use podfence_datapath::tables::{Direction, Enforcement, PodAddress, PortRule, TablesBuilder};
use podfence_datapath::{IpProtocol, Tables};

use crate::tables::{v4, v6};

/// The DNS Service's IPv4 ClusterIP.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The DNS Service's IPv6 ClusterIP.
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd96, 0, 0, 0, 0, 0, 0, 0xa);
/// The web Service's ClusterIP.
pub const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// A Service without endpoints.
pub const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// A `Local` Service whose endpoint is on another node.
pub const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

/// The pods' policy tables (see the module doc).
#[must_use]
pub fn tables(generation: u64) -> Tables {
    let mut b = TablesBuilder::new(generation);
    let world = b.add_identity();
    let (client_id, dns_id, web_id) = (b.add_identity(), b.add_identity(), b.add_identity());
    b.set_other_addresses_v4(IntervalMap::from_prefixes([], world));
    b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
    let egress_policy = b.add_policy("ns", "allow-dns-and-web");
    let ingress_policy = b.add_policy("ns", "web-closed");
    let egress = b.add_group(Direction::Egress, &[egress_policy]);
    let closed = b.add_group(Direction::Ingress, &[ingress_policy]);
    let rule = |rule, protocol, port| PortRule {
        policy: egress_policy,
        rule,
        protocol,
        first: port,
        last: port,
        action: podfence_datapath::tables::RuleAction::Allow,
    };
    let dns = b.add_port_set(vec![rule(0, 17, 5353), rule(0, 6, 5353)]);
    b.allow(egress, dns_id, dns);
    let web = b.add_port_set(vec![rule(1, 6, 8080)]);
    b.allow(egress, web_id, web);
    let pods = [
        (
            "client",
            2,
            client_id,
            Enforcement::Isolated(egress),
            Enforcement::Open,
        ),
        ("dns", 1, dns_id, Enforcement::Open, Enforcement::Open),
        (
            "web",
            3,
            web_id,
            Enforcement::Open,
            Enforcement::Isolated(closed),
        ),
    ];
    for (name, last, identity, egress, ingress) in pods {
        let pod = b.add_pod("ns", name);
        for addr in [v4(last), v6(u16::from(last))] {
            let entry = PodAddress {
                identity,
                pod,
                egress,
                ingress,
                node: None,
                tiers: podfence_datapath::tables::TierGroups::NONE,
            };
            b.add_pod_address(addr, entry).expect("distinct addresses");
        }
    }
    b.build()
}

/// The Services (see the module doc).
#[must_use]
pub fn services() -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    let dns = b.add_service("kube-system", "kube-dns", ServiceOptions::default());
    for (addr, backend) in [(IpAddr::V4(DNS_V4), v4(1)), (IpAddr::V6(DNS_V6), v6(1))] {
        for protocol in [IpProtocol::UDP, IpProtocol::TCP] {
            let key = FrontendKey {
                addr,
                protocol,
                port: 53,
            };
            b.add_frontend(dns, key, &[Endpoint::ready(backend, 5353, true)])
                .expect("valid frontend");
        }
    }
    let tcp80 = |addr: Ipv4Addr| FrontendKey {
        addr: IpAddr::V4(addr),
        protocol: IpProtocol::TCP,
        port: 80,
    };
    let web = b.add_service("ns", "web", ServiceOptions::default());
    b.add_frontend(web, tcp80(WEB), &[Endpoint::ready(v4(3), 8080, true)])
        .expect("valid frontend");
    let empty = b.add_service("ns", "empty", ServiceOptions::default());
    b.add_frontend(empty, tcp80(EMPTY), &[])
        .expect("valid frontend");
    let local = ServiceOptions {
        internal_traffic_policy: TrafficPolicy::Local,
        ..ServiceOptions::default()
    };
    let elsewhere = b.add_service("ns", "elsewhere", local);
    let remote = Endpoint::ready(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)), 8080, false);
    b.add_frontend(elsewhere, tcp80(ELSEWHERE), &[remote])
        .expect("valid frontend");
    b.build()
}
