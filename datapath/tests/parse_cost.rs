//! Rough cost of `parse_frame` per frame, for a release build:
//! `cargo test --release -p podfence-datapath --test parse_cost -- --ignored --nocapture`.
//! Ignored by default: timings in a debug build or on a loaded CI machine
//! say nothing. It prints figures and asserts only that every frame parsed;
//! the allocation-free contract is `no_alloc.rs`'s.

use std::hint::black_box;
use std::time::Instant;

use podfence_datapath::flow::{Parsed, parse_frame};
use podfence_datapath::link::LinkType;
use podfence_testkit::frames::*;

#[test]
#[ignore = "timing: run in release with --ignored"]
fn parse_frame_cost() {
    const ROUNDS: u32 = 2_000_000;
    let frames = [
        ethernet(ETH_IPV4, &V4::new(6).packet(&tcp(40000, 80, SYN))),
        ethernet(ETH_IPV6, &ipv6(6, V6_A, V6_B, &tcp(40000, 443, SYN))),
        vlan(
            &[TPID_8021Q],
            ETH_IPV4,
            &V4::new(17).packet(&udp(5353, 53, b"q")),
        ),
        ethernet(ETH_IPV4, &V4::new(1).packet(&echo(8, 1, 1))),
    ];
    for frame in &frames {
        let start = Instant::now();
        let (mut ports, mut parsed) = (0u64, 0u32);
        for _ in 0..ROUNDS {
            if let Ok(Parsed::Ip(m)) = parse_frame(LinkType::Ethernet, black_box(frame)) {
                ports += u64::from(m.key.dst_port);
                parsed += 1;
            }
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(ROUNDS);
        eprintln!("{} bytes: {ns:.1} ns/frame ({ports})", frame.len());
        assert_eq!(parsed, ROUNDS, "every frame parses as IP");
    }
}
