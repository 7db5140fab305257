//! `podfence-bench replay`'s measurement on a small capture: the capture
//! holds the packets asked for, in time order; `podfence replay` reads all
//! of them and applies the policies of the manifests written beside it;
//! tcpdump reads as many. Timings are not checked. Needs the `podfence`
//! binary built beside this test; skips when tcpdump is not installed.

mod common;

use std::process::Command;

use podfence_bench::replay_speed::{Settings, Tool, Workload, measure};
use podfence_bench::synthetic::Shape;
use podfence_datapath::ports::capture::CapturePort;
use podfence_datapath::ports::{MAX_BATCH, Port, RxDesc};

const PACKETS: u64 = 20_000;

/// Packets in `capture` and whether their timestamps rise strictly.
fn read_back(capture: &std::path::Path) -> (u64, bool) {
    let mut port = CapturePort::open(capture).expect("the capture opens");
    let mut descs = [RxDesc::default(); MAX_BATCH];
    let (mut packets, mut last, mut rising) = (0u64, 0u64, true);
    loop {
        let got = port.recv(&mut descs).expect("the capture reads");
        if got == 0 && port.finished() {
            break;
        }
        for d in &descs[..got] {
            rising &= d.timestamp_ns > last;
            last = d.timestamp_ns;
        }
        packets += got as u64;
        port.release(&descs[..got]);
    }
    (packets, rising)
}

#[test]
fn podfence_and_tcpdump_read_every_generated_packet() {
    if let Err(e) = Command::new("tcpdump").arg("--version").output() {
        eprintln!("SKIPPED: tcpdump is not installed ({e}); scripts/install-deps installs it");
        return;
    }
    let shape = Shape {
        namespaces: 10,
        pods: 1_000,
        policies: 100,
        cluster_policies: 0,
    };
    let workload = Workload::generate(shape, PACKETS).expect("the workload is written");
    let mix = workload.mix().clone();
    assert_eq!(mix.packets, PACKETS);
    assert_eq!(read_back(workload.capture()), (PACKETS, true));
    assert!(
        mix.connections_denied > 0 && mix.packets_denied < mix.packets / 2,
        "the traffic should be mostly allowed, some denied: {mix:?}"
    );

    let settings = Settings {
        podfence: common::podfence(),
        rounds: 1,
        tshark_packets: 2_000,
    };
    let report = measure(&workload, &settings, &mut |m| eprintln!("{m}")).expect("measures");

    let [summary] = report.summaries.as_slice() else {
        panic!("one podfence summary per round: {:?}", report.summaries);
    };
    assert_eq!(summary.packets, PACKETS);
    // The manifests are the cluster the traffic was made for: exactly the
    // packets of the attempts its policies deny are dropped, and every
    // connection starts inside the capture.
    assert_eq!(summary.denied, mix.packets_denied, "{summary:?} {mix:?}");
    assert_eq!(summary.allowed, PACKETS - mix.packets_denied);
    assert_eq!(summary.picked_up, 0);
    assert_eq!(report.tcpdump_count, Some(PACKETS));
    for tool in [Tool::Podfence, Tool::TcpdumpRead, Tool::TcpdumpPrint] {
        assert_eq!(report.row(tool).times.len(), 1, "{tool:?} ran once");
    }
    let tshark = report.row(Tool::Tshark);
    assert_eq!(tshark.packets, 2_000);
    assert_eq!(tshark.times.len(), usize::from(tshark.version.is_some()));

    let dir = workload.capture().parent().expect("a directory").to_owned();
    drop(workload);
    assert!(
        !dir.exists(),
        "{} is removed with the workload",
        dir.display()
    );
}
