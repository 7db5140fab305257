//! Replay agrees with `podfence probe` on every conformance case turned into
//! a capture: one connection attempt (TCP SYN, UDP datagram, SCTP INIT) per
//! probe, and the reply for each allowed one, replayed statefully through
//! the worker pipeline.

use std::net::IpAddr;
use std::path::PathBuf;

use podfence_control::compile::{CompileOptions, compile};
use podfence_control::model::Protocol;
use podfence_control::probe::{self, Probe};
use podfence_control::replay::{PacketVerdict, ReplayOptions, replay};
use podfence_control::sources::manifests;
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::capture::CaptureWriter;
use podfence_testkit::paths::conformance_dir;

/// Removes the file when dropped, also when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn transport(protocol: Protocol, src_port: u16, dst_port: u16, reply: bool) -> Transport {
    let (src_port, dst_port) = if reply {
        (dst_port, src_port)
    } else {
        (src_port, dst_port)
    };
    match protocol {
        Protocol::Tcp => Transport::Tcp {
            src_port,
            dst_port,
            flags: if reply { 0x12 } else { 0x02 },
        },
        Protocol::Udp => Transport::Udp { src_port, dst_port },
        Protocol::Sctp => Transport::Sctp {
            src_port,
            dst_port,
            chunk: if reply { 2 } else { 1 },
        },
    }
}

/// The cases of the conformance directories `dirs`, each with the cluster
/// manifest it runs on (`cluster.yaml`, or what its `cluster` file names).
fn cases(dirs: &[&str]) -> Vec<(PathBuf, PathBuf)> {
    let root = conformance_dir();
    let mut out = Vec::new();
    for dir in dirs {
        let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "no cases in {dir}");
        for case in cases {
            let cluster = std::fs::read_to_string(case.join("cluster"))
                .map_or_else(|_| "cluster.yaml".to_owned(), |s| s.trim().to_owned());
            out.push((root.join(cluster), case));
        }
    }
    out
}

#[test]
fn replay_agrees_with_probe_on_every_conformance_case() {
    replay_agrees_with_probe(&["cases"]);
}

#[test]
fn replay_agrees_with_probe_on_every_cluster_network_policy_case() {
    replay_agrees_with_probe(&["cases-cnp", "cases-admin"]);
}

fn replay_agrees_with_probe(dirs: &[&str]) {
    let cases = cases(dirs);
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (n, (cluster, case)) in cases.iter().enumerate() {
        let mut inputs = vec![cluster.clone()];
        if case.join("policies.yaml").exists() {
            inputs.push(case.join("policies.yaml"));
        }
        let m = manifests::load(&inputs).unwrap();
        let tables = compile(&m.cluster, &CompileOptions::default()).tables;
        let expected = std::fs::read_to_string(case.join("expected.tsv")).unwrap();

        let capture = TempFile(std::env::temp_dir().join(format!(
            "podfence-replay-{}-{}-{n}.pcap",
            std::process::id(),
            dirs[0]
        )));
        let mut writer = CaptureWriter::create(&capture.0, LinkType::Ethernet).unwrap();
        // (probe line, is reply, expected verdict)
        let mut packets: Vec<(String, bool, &str)> = Vec::new();
        let mut ts = 1_000_000_000u64;
        for (i, line) in expected
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
        {
            let want = line.rsplit('\t').next().unwrap();
            let p = Probe::from_line(line).unwrap();
            let (src, dst): (IpAddr, IpAddr) = probe::resolve(&m.cluster, &p).unwrap();
            let src_port = 20_000 + i as u16;
            let mut send = |reply: bool| {
                let (s, d) = if reply { (dst, src) } else { (src, dst) };
                let spec = FrameSpec {
                    src: s,
                    dst: d,
                    transport: transport(p.protocol, src_port, p.port, reply),
                    payload_len: 0,
                    payload_fill: 0,
                };
                let frame = spec.build();
                writer.write(&frame, frame.len() as u32, ts).unwrap();
                ts += 1_000;
            };
            send(false);
            packets.push((line.to_owned(), false, want));
            if want == "allow" {
                send(true);
                packets.push((line.to_owned(), true, "allow"));
            }
        }
        writer.finish().unwrap();

        let options = ReplayOptions {
            keep_packet_verdicts: true,
            workers: 1 + n % 2,
            ..ReplayOptions::default()
        };
        let report = replay(tables, std::slice::from_ref(&capture.0), &options);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.packet_verdicts.len(),
            packets.len(),
            "{}",
            case.display()
        );
        for ((line, reply, want), got) in packets.iter().zip(&report.packet_verdicts) {
            checked += 1;
            let want = if *want == "allow" {
                PacketVerdict::Allow
            } else {
                PacketVerdict::Deny
            };
            if *got != want {
                let what = if *reply { "reply" } else { "request" };
                mismatches.push(format!(
                    "{}: {line}: {what}: expected {want:?}, got {got:?}",
                    case.display()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} packets differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "{checked} packets in {} cases agree with probe",
        cases.len()
    );
}
