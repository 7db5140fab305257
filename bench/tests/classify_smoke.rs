//! `podfence-bench classify` at a small size: every row measures something,
//! the Service rows translate every packet, nothing allocates per packet,
//! Service traffic included, and the tier curve's traffic is partly decided
//! by ClusterNetworkPolicy rules. No timing is asserted.

use podfence_bench::alloc::CountingAllocator;
use podfence_bench::pipeline::{self, PipelineOptions};
use podfence_bench::synthetic::Shape;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

#[test]
fn the_pipeline_rows_run_and_service_traffic_allocates_nothing() {
    let shape = Shape {
        namespaces: 10,
        pods: 200,
        policies: 100,
        cluster_policies: 0,
    };
    let options = PipelineOptions {
        packets: 20_000,
        service_share: 1.0,
        curve: vec![1, 100],
        tier_curve: vec![1, 30],
        replay: false,
    };
    let r = pipeline::run(shape, &options, &ALLOC);
    for (what, v) in [
        ("parse", r.parse_mpps),
        ("established", r.established_mpps),
        ("new connections", r.new_conn_mpps),
        ("established through a Service", r.established_service_mpps),
        ("new connections through a Service", r.new_conn_service_mpps),
        ("two workers", r.two_workers_mpps),
    ] {
        assert!(v > 0.0, "{what}: {v}");
    }
    // The thread's CPU time per packet, where the kernel says it.
    if std::path::Path::new("/proc/thread-self/schedstat").exists() {
        assert!(r.established_cpu_ns > 0.0, "{}", r.established_cpu_ns);
        assert!(r.established_service_cpu_ns > 0.0);
    }
    assert_eq!(r.services, 100);
    assert!(
        (0.7..=0.8).contains(&r.allowed_share_service),
        "{}",
        r.allowed_share_service
    );
    // Every established packet and every allowed new connection through a
    // Service was rewritten.
    assert!(r.service_rewritten >= 20_000, "{}", r.service_rewritten);
    assert_eq!(r.service_allocs, 0, "allocations while translating");
    assert!(r.allocs_per_packet < 1e-3, "{}", r.allocs_per_packet);
    assert_eq!(r.curve.len(), 2);
    assert!(r.curve.iter().all(|&(_, m)| m > 0.0), "{:?}", r.curve);

    // The tier curve: a row per count, each measured; tiers decide part of
    // the traffic, more of it with more of them (ten kinds of guardrail
    // against one), never all of it.
    let counts: Vec<usize> = r.tier_curve.iter().map(|p| p.cluster_policies).collect();
    assert_eq!(counts, [1, 30]);
    for p in &r.tier_curve {
        assert!(p.new_conn_mpps > 0.0, "{p:?}");
        assert!(
            p.tier_decided_share > 0.0 && p.tier_decided_share < 0.5,
            "{p:?}"
        );
    }
    assert!(
        r.tier_curve[1].tier_decided_share > r.tier_curve[0].tier_decided_share,
        "{:?}",
        r.tier_curve
    );
}
