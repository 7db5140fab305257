//! The service table on the path a worker will take for a new connection:
//! the destination's frontend, then the backend for the flow. Neither
//! allocates, and flows spread over the backends in proportion.

use std::net::{IpAddr, Ipv4Addr};

use podfence_datapath::IpProtocol;
use podfence_datapath::flow::FlowKey;
use podfence_datapath::services::{
    Backend, Endpoint, FrontendKey, ServiceOptions, ServiceTable, ServiceTableBuilder,
};

use podfence_testkit::counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const CLUSTER_IP: u32 = 0x0a60_0001; // 10.96.0.1

/// 200 Services of three backends each, on TCP port 80 of 10.96.0.1 + i.
fn table() -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    for i in 0..200u32 {
        let s = b.add_service("ns", &format!("svc{i}"), ServiceOptions::default());
        let frontend = FrontendKey {
            addr: IpAddr::V4(Ipv4Addr::from(CLUSTER_IP + i)),
            protocol: IpProtocol::TCP,
            port: 80,
        };
        let endpoints: Vec<Endpoint> = (0..3u32)
            .map(|j| {
                Endpoint::ready(
                    IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i * 4 + j)),
                    8080,
                    j == 0,
                )
            })
            .collect();
        b.add_frontend(s, frontend, &endpoints).unwrap();
    }
    b.build()
}

fn flow(client: u32, sport: u16, service: u32) -> FlowKey {
    FlowKey::v4(0x0a00_0000 + client, CLUSTER_IP + service, 6, sport, 80)
}

#[test]
fn lookup_and_choice_allocate_nothing() {
    let t = table();
    let before = counting::allocations();
    let mut chosen = 0u64;
    for n in 0..20_000u32 {
        let key = flow(n % 97, (n % 60_000) as u16, n % 250);
        if let Some(f) = t.destination(&key) {
            chosen += u64::from(f.select(&key).is_some());
        }
    }
    let allocations = counting::allocations() - before;
    assert_eq!(allocations, 0);
    // 200 of the 250 destinations are Services, all with backends.
    assert_eq!(chosen, 20_000 / 250 * 200);
}

#[test]
fn flows_spread_over_the_backends_in_proportion() {
    let t = table();
    let f = t.destination(&flow(0, 0, 7)).unwrap();
    let mut counts = std::collections::BTreeMap::<Backend, u32>::new();
    for client in 0..100u32 {
        for sport in 0..300u16 {
            *counts
                .entry(f.select(&flow(client, 1024 + sport, 7)).unwrap())
                .or_default() += 1;
        }
    }
    // 30,000 flows, 10,000 each expected; the standard deviation is 82, and
    // the hash is fixed, so ±5 % is far from chance and from flakiness.
    assert_eq!(counts.len(), 3);
    assert!(
        counts.values().all(|&c| c.abs_diff(10_000) < 500),
        "{counts:?}"
    );
}
