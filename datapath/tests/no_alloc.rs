//! The worker allocates nothing per packet in steady state: a counting
//! global allocator watches a pass over new connections, established
//! traffic, denied attempts, fragments' neighbours and malformed frames.

use podfence_datapath::ServiceTable;
use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::RxDesc;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};

use podfence_testkit::counting;
use podfence_testkit::tables::{two_pods, v4};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

struct Tally {
    passed: u64,
    dropped: u64,
}

impl Output for Tally {
    fn packet(
        &mut self,
        _: &RxDesc,
        _: &[u8],
        _: Option<&podfence_datapath::flow::PacketMeta>,
        _: &Outcome,
        passes: bool,
    ) {
        if passes {
            self.passed += 1;
        } else {
            self.dropped += 1;
        }
    }
}

fn tcp(src: u8, dst: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let transport = Transport::Tcp {
        src_port: sport,
        dst_port: dport,
        flags,
    };
    FrameSpec {
        src: v4(src),
        dst: v4(dst),
        transport,
        payload_len: 6,
        payload_fill: 0,
    }
    .build()
}

#[test]
fn worker_allocates_nothing_per_packet() {
    // Pod .1 accepts TCP 80 from pod .2 only.
    let publisher = Publisher::new(two_pods(1, Some(80), false), ServiceTable::empty());

    let mut frames = Vec::new();
    for sport in 1000..1400u16 {
        frames.push(tcp(2, 1, sport, 80, tcp_flags::SYN)); // allowed, new
        frames.push(tcp(1, 2, 80, sport, tcp_flags::SYN | tcp_flags::ACK)); // reply
        frames.push(tcp(2, 1, sport, 80, tcp_flags::ACK)); // established
        frames.push(tcp(3, 1, sport, 80, tcp_flags::SYN)); // denied
        frames.push(tcp(2, 1, sport, 22, tcp_flags::ACK)); // mid-stream, denied both ways
    }
    frames.push(vec![0xff; 20]); // malformed
    let conntrack = Conntrack::new(1 << 12, Timeouts::default());
    let stats = WorkerStats::default();
    let mut worker = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let mut out = Tally {
        passed: 0,
        dropped: 0,
    };
    let run = |worker: &mut Worker<'_>, out: &mut Tally, rounds| {
        let mut port = MemoryPort::new(
            "t",
            LinkType::Ethernet,
            frames.iter().map(Vec::as_slice),
            rounds,
        );
        let before = counting::allocations();
        while worker.run_batch(&mut port, out).unwrap() > 0 {}
        counting::allocations() - before
    };
    run(&mut worker, &mut out, 1); // warm-up: conntrack filled, caches built
    let (passed, dropped) = (out.passed, out.dropped);
    let allocations = run(&mut worker, &mut out, 20);
    let packets = (out.passed - passed) + (out.dropped - dropped);
    assert_eq!(packets, 20 * frames.len() as u64);
    assert!(
        out.passed > passed && out.dropped > dropped,
        "both verdicts exercised"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over {packets} packets"
    );
}
