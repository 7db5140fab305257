//! `podfence-bench tcp` end to end, very short: every path and every
//! workload at MTU 1500, one round. Checks the output is complete and sane
//! (bytes on every stream, transactions, connections, the denied port
//! reached only where nothing enforces, the JSON and the report), never
//! timings. Needs root, network namespaces, iperf3, sockperf and nft;
//! skips otherwise, saying so.

use std::time::Duration;

use podfence_bench::tcp::{self, Outcome, PATHS, PathKind, TcpOptions, Workload, report};
use podfence_testkit::{Need, skip_unless};

fn options() -> TcpOptions {
    TcpOptions {
        namespaces: 10,
        pods: 200,
        policies: 20,
        paths: PATHS.to_vec(),
        workloads: Workload::ALL.to_vec(),
        mtus: vec![1500],
        duration: Duration::from_millis(500),
        rounds: 1,
        crr_clients: 2,
        idle: Duration::from_millis(200),
        pod_frames: podfence_control::agent::DEFAULT_POD_FRAMES,
        progress: false,
    }
}

#[test]
fn every_path_and_workload_gives_complete_figures() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let options = options();
    let missing = tcp::missing_tools(&options);
    if !missing.is_empty() {
        eprintln!(
            "skipped: {} not installed (scripts/install-deps installs them)",
            missing.join(", ")
        );
        return;
    }
    let r = tcp::run(&options).expect("tcp benchmark");
    assert_eq!(r.results.len(), PATHS.len());
    for case in &r.results {
        let path = case.path.name();
        assert_eq!(case.mtu, 1500);
        assert_eq!(case.rounds.len(), 1, "{path}");
        let round = &case.rounds[0];
        let enforces = matches!(case.path, PathKind::Podfence | PathKind::Nftables);
        assert_eq!(
            round.denied_reached, !enforces,
            "{path}: a connection to the denied port completes exactly where nothing enforces"
        );
        let agent = matches!(case.path, PathKind::Podfence | PathKind::ForwardAll);
        assert_eq!(round.idle_agent_cores.is_some(), agent, "{path}");
        let workloads: Vec<Workload> = round.runs.iter().map(|m| m.workload).collect();
        assert_eq!(workloads, Workload::ALL, "{path}: every workload, in order");
        for m in &round.runs {
            let what = format!("{path} {}", m.workload.name());
            assert!(m.cpu.wall > 0.0, "{what}");
            match &m.outcome {
                Outcome::Stream(s) => {
                    assert!(s.bytes_received > 0, "{what}: bytes arrived");
                    assert!(s.bytes_sent >= s.bytes_received, "{what}");
                    let streams = if m.workload == Workload::Stream4 {
                        4
                    } else {
                        1
                    };
                    assert_eq!(s.streams, streams, "{what}");
                    assert_eq!(
                        s.udp_packets.is_some(),
                        m.workload == Workload::Udp,
                        "{what}"
                    );
                }
                Outcome::Rr(rr) => {
                    assert_eq!(m.workload, Workload::Rr);
                    assert!(rr.transactions > 0, "{what}: transactions");
                    assert!(rr.p50_us > 0.0 && rr.p99_us >= rr.p50_us, "{what}: {rr:?}");
                }
                Outcome::Crr(c) => {
                    assert_eq!(m.workload, Workload::Crr);
                    assert!(c.transactions > 0, "{what}: connections");
                    assert_eq!(c.clients, 2);
                }
            }
        }
    }
    // The JSON: complete, and it parses back.
    let text = report::json(&r).to_string();
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), PATHS.len() * Workload::ALL.len());
    for x in results {
        let per_s = x["per_second"].as_f64();
        match x["workload"].as_str() {
            Some("stream1" | "stream4" | "udp") => {
                assert!(x["gbps"].as_f64().is_some_and(|g| g > 0.0), "{x}");
                assert!(x["cpu_s_per_gb"].as_f64().is_some(), "{x}");
            }
            Some("rr" | "crr") => assert!(per_s.is_some_and(|p| p > 0.0), "{x}"),
            other => panic!("unexpected workload {other:?}"),
        }
    }
    let goals = v["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 6);
    for g in goals {
        assert!(g["value"].as_f64().is_some(), "every goal measured: {g}");
        assert!(g["met"].as_bool().is_some(), "{g}");
    }
    // The report and its charts.
    let dir = std::env::temp_dir().join(format!("pf-tcp-test-{}", std::process::id()));
    report::write(&dir, &r, "podfence-bench tcp (test)").expect("report");
    let md = std::fs::read_to_string(dir.join("tcp.md")).expect("tcp.md");
    assert!(md.contains("## Goals") && md.contains("tcp-crr.svg"));
    for f in [
        "tcp-stream.svg",
        "tcp-rr.svg",
        "tcp-crr.svg",
        "tcp-cpu.svg",
        "tcp.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
