//! The worker's stateful decisions: replies of allowed connections pass,
//! a connection that a new table generation denies is cut on its next
//! packet (or kept, when re-checking is off), mid-stream packets are picked
//! up in either direction, and fragments follow their first fragment.

use podfence_testkit::tables::{two_pods, v4};

use podfence_datapath::ServiceTable;
use podfence_datapath::conntrack::{Conntrack, Timeouts, tcp_flags};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::RxDesc;
use podfence_datapath::ports::memory::MemoryPort;
use podfence_datapath::publish::Publisher;
use podfence_datapath::stats::WorkerStats;
use podfence_datapath::worker::{Outcome, Output, Worker, WorkerConfig};

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
        payload_len: 0,
        payload_fill: 0,
    }
    .build()
}

#[derive(Default)]
struct Record(Vec<(Outcome, bool)>);

impl Output for Record {
    fn packet(
        &mut self,
        _: &RxDesc,
        _: &[u8],
        _: Option<&podfence_datapath::flow::PacketMeta>,
        outcome: &Outcome,
        passes: bool,
    ) {
        self.0.push((*outcome, passes));
    }
}

fn run(worker: &mut Worker<'_>, frames: &[Vec<u8>]) -> Vec<(Outcome, bool)> {
    let mut port = MemoryPort::new("t", LinkType::Ethernet, frames.iter().map(Vec::as_slice), 1);
    let mut out = Record::default();
    while worker.run_batch(&mut port, &mut out).unwrap() > 0 {}
    out.0
}

#[test]
fn new_generation_cuts_or_keeps_established_connections() {
    for revalidate in [true, false] {
        let publisher = Publisher::new(two_pods(1, Some(80), true), ServiceTable::empty());
        let (conntrack, stats) = (
            Conntrack::new(64, Timeouts::default()),
            WorkerStats::default(),
        );
        let config = WorkerConfig {
            revalidate,
            ..WorkerConfig::default()
        };
        let mut w = Worker::new(&conntrack, publisher.reader(), &stats, config);
        let opened = run(
            &mut w,
            &[
                tcp(2, 1, 4000, 80, tcp_flags::SYN),
                tcp(1, 2, 80, 4000, tcp_flags::SYN | tcp_flags::ACK),
            ],
        );
        assert!(
            matches!(opened[0], (Outcome::Opened(_), true)),
            "{opened:?}"
        );
        assert!(
            matches!(opened[1], (Outcome::Established, true)),
            "reply: {opened:?}"
        );

        publisher.publish(two_pods(2, None, true), ServiceTable::empty(), None);
        let after = run(
            &mut w,
            &[
                tcp(2, 1, 4000, 80, tcp_flags::ACK),
                tcp(2, 1, 4001, 80, tcp_flags::SYN),
            ],
        );
        if revalidate {
            assert!(
                matches!(after[0], (Outcome::Revoked(_), false)),
                "{after:?}"
            );
            assert_eq!(stats.snapshot().revoked, 1);
        } else {
            assert!(
                matches!(after[0], (Outcome::Established, true)),
                "{after:?}"
            );
        }
        assert!(
            matches!(after[1], (Outcome::Denied(_), false)),
            "new ones are denied: {after:?}"
        );
    }
}

#[test]
fn mid_stream_packets_are_picked_up_in_either_direction() {
    let publisher = Publisher::new(two_pods(1, Some(80), true), ServiceTable::empty());
    let (conntrack, stats) = (
        Conntrack::new(64, Timeouts::default()),
        WorkerStats::default(),
    );
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    let got = run(
        &mut w,
        &[
            // The server's reply arrives first (say, after a restart): its
            // own direction (.1:80 -> .2:5000) is not what policy allows,
            // the reverse is.
            tcp(1, 2, 80, 5000, tcp_flags::ACK),
            tcp(2, 1, 5000, 80, tcp_flags::ACK),
            // Mid-stream to a port nothing allows, either way.
            tcp(2, 1, 5001, 22, tcp_flags::ACK),
            // A SYN-ACK from outside with no SYN seen is no opening; it
            // passes as the reply of a connection .1 may open to .3.
            tcp(3, 1, 5002, 80, tcp_flags::SYN | tcp_flags::ACK),
        ],
    );
    assert!(
        matches!(got[0], (Outcome::PickedUp { reversed: true, .. }, true)),
        "{got:?}"
    );
    assert!(matches!(got[1], (Outcome::Established, true)), "{got:?}");
    assert!(matches!(got[2], (Outcome::Denied(_), false)), "{got:?}");
    assert!(
        matches!(got[3], (Outcome::PickedUp { reversed: true, .. }, true)),
        "{got:?}"
    );
    assert_eq!(stats.snapshot().picked_up, 2);
}

/// IPv4 fragments of one UDP datagram: the first carries the ports.
fn fragment(src: u8, dst: u8, id: u16, offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + payload.len()) as u16;
    let flags_off = (u16::from(more) << 13) | offset_units;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&flags_off.to_be_bytes());
    f.extend_from_slice(&[64, 17, 0, 0, 10, 0, 0, src, 10, 0, 0, dst]);
    let sum = podfence_datapath::wire::checksum::internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    // UDP isolated like TCP: pod .1 accepts nothing over UDP.
    let publisher = Publisher::new(two_pods(1, Some(80), true), ServiceTable::empty());
    let (conntrack, stats) = (
        Conntrack::new(64, Timeouts::default()),
        WorkerStats::default(),
    );
    let mut w = Worker::new(
        &conntrack,
        publisher.reader(),
        &stats,
        WorkerConfig::default(),
    );
    // UDP header (ports 6000 -> 53, length of the whole datagram) + 8 bytes.
    let mut first = vec![0x17, 0x70, 0x00, 0x35, 0x00, 0x18, 0, 0];
    first.extend_from_slice(&[0xaa; 8]);
    let got = run(
        &mut w,
        &[
            fragment(2, 1, 7, 0, true, &first),
            fragment(2, 1, 7, 2, false, &[0xbb; 8]),
            fragment(2, 1, 9, 2, false, &[0xcc; 8]), // its first fragment never came
        ],
    );
    assert!(matches!(got[0], (Outcome::Denied(_), false)), "{got:?}");
    assert!(
        matches!(got[1], (Outcome::Fragment { allowed: false, .. }, false)),
        "{got:?}"
    );
    assert!(
        matches!(got[2], (Outcome::Fragment { allowed: false, .. }, false)),
        "{got:?}"
    );
    let s = stats.snapshot();
    assert_eq!((s.fragments_followed, s.fragments_orphaned), (1, 1));
}
