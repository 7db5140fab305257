//! Tables are swapped continuously while workers classify: every verdict
//! must be the one of the generation the worker loaded for its batch, which
//! proves that no batch sees half a table and that a swap never blocks; and
//! the Service backend of the batch is always the one published with its
//! policy tables.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use podfence_datapath::lpm::IntervalMap;
use podfence_datapath::publish::Publisher;
use podfence_datapath::services::{
    Endpoint, FrontendKey, ServiceOptions, ServiceTable, ServiceTableBuilder,
};
use podfence_datapath::tables::{
    Direction, Enforcement, IpProtocol, PodAddress, PortRule, Tables, TablesBuilder,
};

const PODS: u32 = 64;

fn pod_ip(i: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 0, 0, 1)) + i
}

/// Generation `g`: every pod isolated for ingress; pod `i` accepts TCP port
/// `80 + (i + g) % 7` from every other pod. So the allowed port of each pod
/// moves with the generation, and a verdict tells which generation gave it.
fn tables(g: u64) -> Tables {
    let mut b = TablesBuilder::new(g);
    let world = b.add_identity();
    let pods_identity = b.add_identity();
    b.set_other_addresses_v4(IntervalMap::from_prefixes([], world));
    b.set_other_addresses_v6(IntervalMap::from_prefixes([], world));
    for i in 0..PODS {
        let policy = b.add_policy("ns", &format!("p{i}"));
        let pod = b.add_pod("ns", &format!("pod{i}"));
        let group = b.add_group(Direction::Ingress, &[policy]);
        let port = 80 + ((u64::from(i) + g) % 7) as u16;
        let set = b.add_port_set(vec![PortRule {
            policy,
            rule: 0,
            protocol: 6,
            first: port,
            last: port,
            action: podfence_datapath::tables::RuleAction::Allow,
        }]);
        b.allow(group, pods_identity, set);
        let entry = PodAddress {
            identity: pods_identity,
            pod,
            egress: Enforcement::Open,
            ingress: Enforcement::Isolated(group),
            node: None,
            tiers: podfence_datapath::tables::TierGroups::NONE,
        };
        b.add_pod_address(IpAddr::V4(Ipv4Addr::from(pod_ip(i))), entry)
            .unwrap();
    }
    b.build()
}

const FRONTEND: FrontendKey = FrontendKey {
    addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
    protocol: IpProtocol::TCP,
    port: 80,
};

/// Generation `g`'s Services: one frontend whose one backend listens on a
/// port that tells the generation.
fn services(g: u64) -> ServiceTable {
    let mut b = ServiceTableBuilder::new();
    let s = b.add_service("ns", "svc", ServiceOptions::default());
    let backend = Endpoint::ready(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        backend_port(g),
        true,
    );
    b.add_frontend(s, FRONTEND, &[backend]).unwrap();
    b.build()
}

fn backend_port(g: u64) -> u16 {
    (g % 65_000) as u16 + 1
}

#[test]
fn verdicts_always_match_the_generation_of_the_batch() {
    let publisher = Publisher::new(tables(0), services(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_millis(1500);
    std::thread::scope(|s| {
        {
            let (publisher, stop, last_published) =
                (publisher.clone(), stop.clone(), last_published.clone());
            s.spawn(move || {
                let mut g = 1;
                while !stop.load(Ordering::Relaxed) {
                    publisher.publish(tables(g), services(g), None);
                    last_published.store(g, Ordering::Relaxed);
                    g += 1;
                }
            });
        }
        let mut workers = Vec::new();
        for w in 0..2u32 {
            let mut reader = publisher.reader();
            workers.push(s.spawn(move || {
                let (mut batches, mut generations_seen, mut last) = (0u64, 0u64, u64::MAX);
                while Instant::now() < deadline {
                    let current = reader.load();
                    let t = &current.tables;
                    let g = t.generation();
                    let backend = current
                        .services
                        .frontend(FRONTEND.addr, FRONTEND.protocol, FRONTEND.port)
                        .and_then(|f| f.choose(u64::from(w)))
                        .expect("a backend");
                    assert_eq!(backend.port, backend_port(g), "generation {g}");
                    if g != last {
                        generations_seen += 1;
                        last = g;
                    }
                    for n in 0..256u32 {
                        let (src, dst) = (pod_ip((n + w) % PODS), pod_ip((n * 7 + 3) % PODS));
                        if src == dst {
                            continue;
                        }
                        let port = 80 + (n % 7) as u16;
                        let allowed = t.classify_v4(src, dst, IpProtocol::TCP, port).is_allowed();
                        let dst_index = u64::from(dst - pod_ip(0));
                        let expected = u64::from(port) == 80 + (dst_index + g) % 7;
                        assert_eq!(
                            allowed, expected,
                            "generation {g}, {src:#x} -> {dst:#x}:{port}"
                        );
                    }
                    batches += 1;
                }
                (batches, generations_seen)
            }));
        }
        for w in workers {
            let (batches, generations_seen) = w.join().unwrap();
            assert!(batches > 100, "worker classified only {batches} batches");
            assert!(
                generations_seen > 2,
                "worker saw only {generations_seen} generations"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(last_published.load(Ordering::Relaxed) > 10);
}
