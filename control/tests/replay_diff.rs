//! `podfence replay --candidate`: the same captures under the current and a
//! candidate policy state, and exactly the flows whose verdict changes.
//!
//! Captures are crafted from the conformance probes (../shared/conformance):
//! every probe of a case becomes one to three connections with replies, as
//! a cluster without policies would carry them. The expected changes come
//! from the cases' own expected verdicts, so the diff is checked against
//! the oracle, flow by flow and count by count.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use podfence_control::compile::{CompileOptions, compile};
use podfence_control::model::Protocol;
use podfence_control::probe::{self, Probe};
use podfence_control::replay::{
    self, Change, ChangedFlow, PodNames, PolicyPattern, ReplayOptions, StateChanges,
};
use podfence_control::sources::manifests::{self, Manifests};
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::capture::CaptureWriter;
use podfence_testkit::paths::conformance_dir;

fn cluster_yaml() -> PathBuf {
    conformance_dir().join("cluster.yaml")
}

fn case(name: &str) -> PathBuf {
    conformance_dir().join("cases").join(name)
}

fn policies(name: &str) -> PathBuf {
    case(name).join("policies.yaml")
}

/// A directory removed when dropped, also when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "podfence-replay-diff-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Flow identity as the tests name it: (src, dst, protocol, port).
type FlowId = (String, String, String, u16);

/// Expected connections and packets of a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    connections: u64,
    packets: u64,
}

/// Writes a capture of connection attempts with their replies.
struct Capture {
    writer: CaptureWriter,
    ts: u64,
    next_port: u16,
}

impl Capture {
    fn create(path: &Path) -> Self {
        Self {
            writer: CaptureWriter::create(path, LinkType::Ethernet).unwrap(),
            ts: 1_000_000_000,
            next_port: 10_000,
        }
    }

    fn frame(&mut self, src: IpAddr, dst: IpAddr, transport: Transport) {
        let frame = FrameSpec {
            src,
            dst,
            transport,
            payload_len: 0,
            payload_fill: 0,
        }
        .build();
        self.writer
            .write(&frame, frame.len() as u32, self.ts)
            .unwrap();
        self.ts += 1_000;
    }

    /// One connection from a fresh source port: TCP SYN, SYN-ACK, ACK; UDP
    /// request and reply; SCTP INIT and INIT ACK. Returns its packets.
    fn connect(&mut self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> u64 {
        let sport = self.next_port;
        self.next_port += 1;
        match protocol {
            Protocol::Tcp => {
                let tcp = |src_port, dst_port, flags| Transport::Tcp {
                    src_port,
                    dst_port,
                    flags,
                };
                self.frame(src, dst, tcp(sport, port, 0x02));
                self.frame(dst, src, tcp(port, sport, 0x12));
                self.frame(src, dst, tcp(sport, port, 0x10));
                3
            }
            Protocol::Udp => {
                self.frame(
                    src,
                    dst,
                    Transport::Udp {
                        src_port: sport,
                        dst_port: port,
                    },
                );
                self.frame(
                    dst,
                    src,
                    Transport::Udp {
                        src_port: port,
                        dst_port: sport,
                    },
                );
                2
            }
            Protocol::Sctp => {
                let sctp = |src_port, dst_port, chunk| Transport::Sctp {
                    src_port,
                    dst_port,
                    chunk,
                };
                self.frame(src, dst, sctp(sport, port, 1));
                self.frame(dst, src, sctp(port, sport, 2));
                2
            }
        }
    }

    fn finish(self) {
        self.writer.finish().unwrap();
    }
}

/// The probes of a case's expected.tsv with their verdicts.
fn probes(case_name: &str) -> Vec<(Probe, bool)> {
    probes_in(&case(case_name))
}

/// The probes of the expected.tsv in `dir` with their verdicts.
fn probes_in(dir: &Path) -> Vec<(Probe, bool)> {
    std::fs::read_to_string(dir.join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| (Probe::from_line(l).unwrap(), l.ends_with("\tallow")))
        .collect()
}

fn flow_id(p: &Probe) -> FlowId {
    (
        p.src.to_string(),
        p.dst.to_string(),
        p.protocol.to_string(),
        p.port,
    )
}

/// A capture of every probe of 001-no-policies (the same probes as every
/// case), probe `i` as `1 + i % 3` connections, in probe order, written to
/// `path`. Returns each flow's counts.
fn capture_all_probes(m: &Manifests, path: &Path) -> BTreeMap<FlowId, Counts> {
    let mut capture = Capture::create(path);
    let mut counts = BTreeMap::new();
    for (i, (p, _)) in probes("001-no-policies").iter().enumerate() {
        let (src, dst) = probe::resolve(&m.cluster, p).unwrap();
        let c: &mut Counts = counts.entry(flow_id(p)).or_default();
        for _ in 0..=(i % 3) {
            c.connections += 1;
            c.packets += capture.connect(src, dst, p.protocol, p.port);
        }
    }
    capture.finish();
    counts
}

/// The diff's flows as (change, flow id) → counts.
fn listed(changes: &[ChangedFlow], names: &PodNames) -> BTreeMap<(Change, FlowId), Counts> {
    let name = |a: IpAddr| names.pod(a).unwrap_or_else(|| format!("ext:{a}"));
    let mut out = BTreeMap::new();
    for f in changes {
        let id = (
            name(f.src),
            name(f.dst),
            podfence_datapath::IpProtocol(f.protocol).to_string(),
            f.port,
        );
        let old = out.insert(
            (f.change, id),
            Counts {
                connections: f.connections,
                packets: f.packets,
            },
        );
        assert!(old.is_none(), "a flow is listed once: {f:?}");
    }
    out
}

/// Loads `current`, overlays the candidate, compiles both and diffs.
struct Diffed {
    current: Manifests,
    candidate: Manifests,
    report: replay::DiffReport,
}

impl Diffed {
    /// [`Self::run`] of `--delete-policy pattern` on the current
    /// manifests, over one capture, one worker.
    fn deleting(current_paths: &[PathBuf], pattern: &str, capture: &PathBuf) -> Self {
        Self::run(
            current_paths,
            &[],
            &[pattern.parse().unwrap()],
            std::slice::from_ref(capture),
            1,
        )
    }

    fn run(
        current_paths: &[PathBuf],
        candidate_paths: &[PathBuf],
        delete: &[PolicyPattern],
        captures: &[PathBuf],
        workers: usize,
    ) -> Self {
        let current = manifests::load(current_paths).unwrap();
        let candidate =
            replay::load_candidate(current_paths, &current, candidate_paths, delete).unwrap();
        let a = compile(&current.cluster, &CompileOptions::default()).tables;
        let b = compile(&candidate.cluster, &CompileOptions::default()).tables;
        let options = ReplayOptions {
            workers,
            ..ReplayOptions::default()
        };
        let report = replay::diff(&a, &b, captures, &options);
        Self {
            current,
            candidate,
            report,
        }
    }

    fn names(&self) -> PodNames {
        PodNames::new(&[&self.current.cluster, &self.candidate.cluster])
    }

    fn listed(&self) -> BTreeMap<(Change, FlowId), Counts> {
        listed(&self.report.changes, &self.names())
    }
}

/// The flows that change from case `before` to case `after` by their
/// expected verdicts, with the counts the capture gave them.
fn oracle_changes(
    before: &str,
    after: &str,
    counts: &BTreeMap<FlowId, Counts>,
    only: impl Fn(&Probe) -> bool,
) -> BTreeMap<(Change, FlowId), Counts> {
    let before: BTreeMap<FlowId, bool> = probes(before)
        .into_iter()
        .map(|(p, v)| (flow_id(&p), v))
        .collect();
    let mut out = BTreeMap::new();
    for (p, now) in probes(after) {
        let id = flow_id(&p);
        let was = before[&id];
        if was != now && only(&p) {
            let change = if was { Change::Break } else { Change::Open };
            out.insert((change, id.clone()), counts[&id]);
        }
    }
    out
}

fn total_connections(counts: &BTreeMap<FlowId, Counts>) -> u64 {
    counts.values().map(|c| c.connections).sum()
}

#[test]
fn deny_all_candidate_breaks_exactly_the_flows_the_case_denies() {
    let dir = TempDir::new("deny-all");
    let state = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&state, &capture);

    for workers in [1, 2] {
        let diffed = Diffed::run(
            &[cluster_yaml(), policies("001-no-policies")],
            &[policies("007-deny-all-ingress-and-egress")],
            &[],
            std::slice::from_ref(&capture),
            workers,
        );
        assert!(
            diffed.report.errors.is_empty(),
            "{:?}",
            diffed.report.errors
        );
        let expected = oracle_changes(
            "001-no-policies",
            "007-deny-all-ingress-and-egress",
            &counts,
            |_| true,
        );
        // Every flow from or to an x pod but a pod's own, over 80 and 81 in
        // three protocols: 3 pods × 8 other pods + 3 × 6 (y, z) + 3 × 2 × 2
        // (outside addresses, both ways) pairs.
        assert_eq!(expected.len(), (3 * 8 + 3 * 6 + 12) * 6);
        assert!(expected.keys().all(|(c, _)| *c == Change::Break));
        assert_eq!(diffed.listed(), expected, "{workers} worker(s)");

        // Sorted by connections, descending (all breaks).
        let order: Vec<u64> = diffed
            .report
            .changes
            .iter()
            .map(|f| f.connections)
            .collect();
        assert!(order.windows(2).all(|w| w[0] >= w[1]), "{order:?}");
        let breaks = diffed.report.totals(Change::Break);
        assert_eq!(breaks.flows, expected.len() as u64);
        assert_eq!(
            breaks.connections,
            expected.values().map(|c| c.connections).sum::<u64>()
        );
        assert_eq!(
            breaks.packets,
            expected.values().map(|c| c.packets).sum::<u64>()
        );
        assert_eq!(
            diffed.report.totals(Change::Open),
            replay::ChangeTotals::default()
        );
        assert_eq!(diffed.report.connections, total_connections(&counts));
        assert_eq!(
            diffed.report.packets,
            counts.values().map(|c| c.packets).sum::<u64>()
        );
    }
}

#[test]
fn both_sides_reasons_are_worded_as_explain_words_them() {
    let dir = TempDir::new("reasons");
    let state = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    capture_all_probes(&state, &capture);
    let diffed = Diffed::run(
        &[cluster_yaml()],
        &[policies("007-deny-all-ingress-and-egress")],
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    let names = diffed.names();
    let flow = diffed
        .report
        .changes
        .iter()
        .find(|f| {
            names.pod(f.src).as_deref() == Some("x/a")
                && names.pod(f.dst).as_deref() == Some("y/b")
                && f.protocol == 6
                && f.port == 80
        })
        .unwrap();
    assert_eq!(
        flow.describe(&names),
        "TCP x/a (10.244.1.1) → y/b (10.244.2.2) port 80"
    );
    let current_tables = compile(&diffed.current.cluster, &CompileOptions::default()).tables;
    let candidate_tables = compile(&diffed.candidate.cluster, &CompileOptions::default()).tables;
    assert_eq!(
        flow.explain(
            &names,
            &diffed.current.cluster,
            &current_tables,
            flow.current.as_ref()
        ),
        [
            "egress: allow — no NetworkPolicy selects source x/a for egress",
            "ingress: allow — no NetworkPolicy selects destination y/b for ingress",
        ]
    );
    assert_eq!(
        flow.explain(
            &names,
            &diffed.candidate.cluster,
            &candidate_tables,
            flow.candidate.as_ref()
        ),
        [
            "egress: deny — source x/a is isolated for egress by x/deny-all, and no egress rule \
             of it allows TCP from x/a (10.244.1.1) to y/b (10.244.2.2) port 80",
            "ingress: allow — no NetworkPolicy selects destination y/b for ingress",
        ]
    );
    assert_eq!(
        replay::attribution(&candidate_tables, flow.candidate.as_ref()),
        "egress=x/deny-all"
    );
    assert_eq!(
        StateChanges::between(&diffed.current.cluster, &diffed.candidate.cluster).to_string(),
        "adds NetworkPolicy x/deny-all"
    );
}

#[test]
fn candidate_equal_to_current_lists_nothing() {
    let dir = TempDir::new("same");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&m, &capture);
    let current = [
        cluster_yaml(),
        policies("015-peer-namespaceselector-matchlabels"),
    ];
    let d = Diffed::run(
        &current,
        &[policies("015-peer-namespaceselector-matchlabels")],
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    assert!(d.report.errors.is_empty(), "{:?}", d.report.errors);
    assert_eq!(d.report.changes, []);
    assert_eq!(d.report.connections, total_connections(&counts));
    assert!(
        StateChanges::between(&d.current.cluster, &d.candidate.cluster).is_empty(),
        "the same objects again change nothing"
    );
}

#[test]
fn candidate_that_opens_one_port_lists_exactly_those_flows() {
    let dir = TempDir::new("open-port");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&m, &capture);
    let allow = dir.path("allow-b-80.yaml");
    std::fs::write(
        &allow,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: allow-b-80, namespace: \"y\"}\n\
         spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - ports: [{protocol: TCP, port: 80}]\n",
    )
    .unwrap();
    // Current: y isolated for ingress, nothing allowed into it.
    let current = [
        cluster_yaml(),
        policies("003-deny-all-ingress-defaulted-policytypes"),
    ];
    let d = Diffed::run(
        &current,
        std::slice::from_ref(&allow),
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    assert!(d.report.errors.is_empty(), "{:?}", d.report.errors);
    // What opens: everything the current state denies into y/b on TCP 80
    // (everything is allowed without policies).
    let expected = oracle_changes(
        "003-deny-all-ingress-defaulted-policytypes",
        "001-no-policies",
        &counts,
        |p| p.dst.to_string() == "y/b" && p.protocol == Protocol::Tcp && p.port == 80,
    );
    // Eight other pods and two outside addresses.
    assert_eq!(expected.len(), 10);
    assert!(expected.keys().all(|(c, _)| *c == Change::Open));
    assert_eq!(d.listed(), expected);
    let opens = d.report.totals(Change::Open);
    assert_eq!(opens.flows, 10);
    assert_eq!(
        opens.connections,
        expected.values().map(|c| c.connections).sum::<u64>()
    );
    // Sorted by connections, descending, then by first packet.
    let order: Vec<(u64, u64)> = d
        .report
        .changes
        .iter()
        .map(|f| (f.connections, f.first_packet))
        .collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(order, sorted);

    let names = d.names();
    let b = compile(&d.candidate.cluster, &CompileOptions::default()).tables;
    let f = &d.report.changes[0];
    let why = f.explain(&names, &d.candidate.cluster, &b, f.candidate.as_ref());
    assert!(
        why[1].starts_with(
            "ingress: allow — destination y/b is isolated for ingress by y/allow-b-80, \
             y/just-a-selector; allowed by y/allow-b-80 ingress rule 0"
        ),
        "{why:?}"
    );
}

#[test]
fn deleting_a_policy_opens_what_it_denied() {
    let dir = TempDir::new("delete");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&m, &capture);
    let current = [
        cluster_yaml(),
        policies("003-deny-all-ingress-defaulted-policytypes"),
    ];
    let expected = oracle_changes(
        "003-deny-all-ingress-defaulted-policytypes",
        "001-no-policies",
        &counts,
        |_| true,
    );
    // Into each of the three y pods from the eight other pods and the two
    // outside addresses, over both ports and three protocols.
    assert_eq!(expected.len(), 3 * 10 * 6);
    for pattern in ["y/just-a-selector", "y/*", "*/*"] {
        let d = Diffed::deleting(&current, pattern, &capture);
        assert_eq!(d.listed(), expected, "--delete-policy {pattern}");
        assert_eq!(
            StateChanges::between(&d.current.cluster, &d.candidate.cluster).to_string(),
            "deletes NetworkPolicy y/just-a-selector"
        );
    }

    // A policy the candidate defines stays, whatever --delete-policy says:
    // `*/*` plus a directory of policies compares against exactly those.
    let d = Diffed::run(
        &current,
        &[policies("003-deny-all-ingress-defaulted-policytypes")],
        &["*/*".parse().unwrap()],
        std::slice::from_ref(&capture),
        1,
    );
    assert_eq!(d.report.changes, []);

    // Naming a policy that is not there is an error, not a silent no-op.
    let current_m = manifests::load(&current).unwrap();
    let e = replay::load_candidate(&current, &current_m, &[], &["y/nope".parse().unwrap()])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--delete-policy y/nope: the current manifests have no NetworkPolicy y/nope"
    );
    assert!("y".parse::<PolicyPattern>().is_err());
    assert!("y/a/b".parse::<PolicyPattern>().is_err());
}

#[test]
fn overlay_replaces_same_named_objects_and_keeps_namespace_labels() {
    let dir = TempDir::new("overlay");
    // A candidate that relabels pod y/b (no longer tier=db) and replaces
    // nothing else: namespace y keeps its labels although the file only
    // names it.
    let pod = dir.path("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: \"y\", labels: {pod: b}}\n\
         spec: {nodeName: node-1, containers: [{name: c, image: i}]}\n\
         status: {phase: Running, podIP: 10.244.2.2, hostIP: 172.18.0.2}\n",
    )
    .unwrap();
    let current = manifests::load(&[cluster_yaml()]).unwrap();
    let candidate =
        replay::load_candidate(&[cluster_yaml()], &current, std::slice::from_ref(&pod), &[])
            .unwrap();
    assert_eq!(
        candidate.cluster.namespaces, current.cluster.namespaces,
        "namespaces the candidate only refers to keep their labels"
    );
    assert_eq!(candidate.cluster.pods.len(), 9);
    assert!(
        !candidate
            .cluster
            .pod("y", "b")
            .unwrap()
            .labels
            .contains_key("tier")
    );
    let changes = StateChanges::between(&current.cluster, &candidate.cluster);
    assert_eq!(changes.to_string(), "changes 1 pod(s)");
}

#[test]
fn a_connection_picked_up_as_a_reply_is_listed_in_the_direction_it_was_opened() {
    let dir = TempDir::new("pickup");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let ip = |ns, pod| m.cluster.pod(ns, pod).unwrap().ips[0];
    let (client, server) = (ip("y", "b"), ip("x", "a"));
    // The capture starts mid-stream, with the server's ACK.
    let capture = dir.path("mid.pcap");
    let mut c = Capture::create(&capture);
    let tcp = |src_port, dst_port| Transport::Tcp {
        src_port,
        dst_port,
        flags: 0x10,
    };
    c.frame(server, client, tcp(80, 40_000));
    c.frame(client, server, tcp(40_000, 80));
    c.frame(server, client, tcp(80, 40_000));
    c.finish();
    // Current: y isolated for ingress, so the ACK is allowed only as a reply
    // of y/b's connection to x/a:80; the candidate also isolates x.
    let d = Diffed::run(
        &[
            cluster_yaml(),
            policies("003-deny-all-ingress-defaulted-policytypes"),
        ],
        &[policies("007-deny-all-ingress-and-egress")],
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    let expected: BTreeMap<(Change, FlowId), Counts> = [(
        (
            Change::Break,
            ("y/b".into(), "x/a".into(), "TCP".into(), 80),
        ),
        Counts {
            connections: 1,
            packets: 3,
        },
    )]
    .into();
    assert_eq!(d.listed(), expected);
}

#[test]
fn protocols_without_ports_are_flows_of_their_addresses() {
    let dir = TempDir::new("icmp");
    let state = manifests::load(&[cluster_yaml()]).unwrap();
    let ip = |ns, pod| state.cluster.pod(ns, pod).unwrap().ips[0];
    let capture = dir.path("echo.pcap");
    let mut pcap = Capture::create(&capture);
    // Two pings (two identifiers) from y/c to x/b, each answered.
    for id in [7, 8] {
        pcap.frame(
            ip("y", "c"),
            ip("x", "b"),
            Transport::Echo { id, reply: false },
        );
        pcap.frame(
            ip("x", "b"),
            ip("y", "c"),
            Transport::Echo { id, reply: true },
        );
    }
    pcap.finish();
    let diffed = Diffed::run(
        &[cluster_yaml()],
        &[policies("007-deny-all-ingress-and-egress")],
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    let expected: BTreeMap<(Change, FlowId), Counts> = [(
        (
            Change::Break,
            ("y/c".into(), "x/b".into(), "ICMP".into(), 0),
        ),
        Counts {
            connections: 2,
            packets: 4,
        },
    )]
    .into();
    assert_eq!(diffed.listed(), expected);
    let names = diffed.names();
    let flow = &diffed.report.changes[0];
    assert_eq!(
        flow.describe(&names),
        "ICMP y/c (10.244.2.3) → x/b (10.244.1.2)"
    );
    let tables = compile(&diffed.candidate.cluster, &CompileOptions::default()).tables;
    assert_eq!(
        flow.explain(
            &names,
            &diffed.candidate.cluster,
            &tables,
            flow.candidate.as_ref()
        ),
        [
            "egress: allow — no NetworkPolicy selects source y/c for egress",
            "ingress: deny — destination x/b is isolated for ingress by x/deny-all, and no \
             ingress rule of it allows ICMP from y/c to x/b",
        ]
    );
}

/// A capture whose first connections are whole and whose rest is garbage.
fn corrupt_capture(state: &Manifests, path: &Path) -> BTreeMap<FlowId, Counts> {
    let mut capture = Capture::create(path);
    let mut counts = BTreeMap::new();
    for (src, dst) in [("x/b", "y/c"), ("z/a", "x/c")] {
        let attempt = Probe::from_line(&format!("{src}\t{dst}\tTCP\t81")).unwrap();
        let (src_ip, dst_ip) = probe::resolve(&state.cluster, &attempt).unwrap();
        let entry: &mut Counts = counts.entry(flow_id(&attempt)).or_default();
        entry.connections += 1;
        entry.packets += capture.connect(src_ip, dst_ip, Protocol::Tcp, 81);
    }
    capture.finish();
    let mut bytes = std::fs::read(path).unwrap();
    // A record header claiming a frame far larger than any snap length.
    bytes.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f,
    ]);
    bytes.extend_from_slice(&[0xab; 64]);
    std::fs::write(path, bytes).unwrap();
    counts
}

#[test]
fn a_corrupt_capture_is_a_per_file_error_and_nothing_else_is_lost() {
    let dir = TempDir::new("corrupt");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let first = dir.path("first.pcap");
    let bad = dir.path("bad.pcap");
    let last = dir.path("last.pcap");
    let mut counts = capture_all_probes(&m, &first);
    for (id, c) in corrupt_capture(&m, &bad) {
        let e = counts.entry(id).or_default();
        e.connections += c.connections;
        e.packets += c.packets;
    }
    // The third capture repeats the first with other source ports.
    {
        let mut capture = Capture::create(&last);
        capture.next_port = 30_000;
        for (i, (p, _)) in probes("001-no-policies").iter().enumerate() {
            let (src, dst) = probe::resolve(&m.cluster, p).unwrap();
            let c = counts.get_mut(&flow_id(p)).unwrap();
            for _ in 0..=(i % 3) {
                c.connections += 1;
                c.packets += capture.connect(src, dst, p.protocol, p.port);
            }
        }
        capture.finish();
    }
    let captures = [first, bad.clone(), last];
    let d = Diffed::run(
        &[cluster_yaml()],
        &[policies("007-deny-all-ingress-and-egress")],
        &[],
        &captures,
        2,
    );
    assert_eq!(d.report.errors.len(), 1, "{:?}", d.report.errors);
    assert_eq!(d.report.errors[0].path, bad);
    assert!(
        d.report.errors[0]
            .error
            .to_string()
            .contains(&*bad.to_string_lossy()),
        "{}",
        d.report.errors[0].error
    );
    let expected = oracle_changes(
        "001-no-policies",
        "007-deny-all-ingress-and-egress",
        &counts,
        |_| true,
    );
    assert_eq!(d.listed(), expected);
    assert_eq!(d.report.connections, total_connections(&counts));
}

fn podfence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podfence"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temporary directory holding [`small_capture`], and what the CLI tests
/// pass: the conformance cluster, the deny-all candidate and the capture.
fn cli_inputs(tag: &str) -> (TempDir, [String; 3]) {
    let dir = TempDir::new(tag);
    let state = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("small.pcap");
    small_capture(&state, &capture);
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let paths = [
        path(&cluster_yaml()),
        path(&policies("007-deny-all-ingress-and-egress")),
        path(&capture),
    ];
    (dir, paths)
}

/// A small capture: x/a → y/b TCP 80 twice, z/c → x/b UDP 81 once, y/a →
/// z/b TCP 80 once.
fn small_capture(state: &Manifests, path: &Path) {
    let mut capture = Capture::create(path);
    for (src, dst, proto, port, times) in [
        ("x/a", "y/b", Protocol::Tcp, 80, 2),
        ("z/c", "x/b", Protocol::Udp, 81, 1),
        ("y/a", "z/b", Protocol::Tcp, 80, 1),
    ] {
        let p = Probe {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: proto,
            port,
        };
        let (src_ip, dst_ip) = probe::resolve(&state.cluster, &p).unwrap();
        for _ in 0..times {
            capture.connect(src_ip, dst_ip, proto, port);
        }
    }
    capture.finish();
}

#[test]
fn cli_lists_breaks_with_the_reasons_that_differ_and_a_summary() {
    let (_dir, [cluster, deny, cap]) = cli_inputs("cli-text");
    let (cluster, deny, cap) = (cluster.as_str(), deny.as_str(), cap.as_str());

    // The capture may trail the candidate paths.
    let out = podfence(&["replay", "--manifests", cluster, "--candidate", deny, cap]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "candidate: adds NetworkPolicy x/deny-all\n\
         would break (allowed now, denied under the candidate):\n  \
         2 connections, 6 packets: TCP x/a (10.244.1.1) → y/b (10.244.2.2) port 80 (first packet 1)\n    \
         current:   egress: allow — no NetworkPolicy selects source x/a for egress\n    \
         candidate: egress: deny — source x/a is isolated for egress by x/deny-all, and no egress rule of it allows TCP from x/a (10.244.1.1) to y/b (10.244.2.2) port 80\n  \
         1 connection, 2 packets: UDP z/c (10.244.3.3) → x/b (10.244.1.2) port 81 (first packet 7)\n    \
         current:   ingress: allow — no NetworkPolicy selects destination x/b for ingress\n    \
         candidate: ingress: deny — destination x/b is isolated for ingress by x/deny-all, and no ingress rule of it allows UDP from z/c (10.244.3.3) to x/b (10.244.1.2) port 81\n\
         would open (denied now, allowed under the candidate): none\n\
         summary: 2 flows (3 connections, 8 packets) would break, 0 flows (0 connections, 0 packets) would open; \
         1 of 4 connections unchanged; 11 packets in 1 capture file (0 with errors)\n"
    );
}

#[test]
fn cli_json_has_totals_and_both_sides_of_each_flow() {
    let (_dir, [cluster, deny, cap]) = cli_inputs("cli-json");
    let (cluster, deny, cap) = (cluster.as_str(), deny.as_str(), cap.as_str());

    // JSON: the same, for machines.
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        "--candidate",
        deny,
        "--json",
        "--workers",
        "2",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["would_break"],
        serde_json::json!({"flows": 2, "connections": 3, "packets": 8})
    );
    assert_eq!(
        v["would_open"],
        serde_json::json!({"flows": 0, "connections": 0, "packets": 0})
    );
    assert_eq!(v["connections"], 4);
    assert_eq!(v["connections_unchanged"], 1);
    assert_eq!(v["packets"], 11);
    assert_eq!(
        v["candidate"]["policies_added"],
        serde_json::json!(["x/deny-all"])
    );
    let first = &v["changes"][0];
    assert_eq!(first["change"], "break");
    assert_eq!(first["protocol"], "TCP");
    assert_eq!(first["src"], "10.244.1.1");
    assert_eq!(first["src_pod"], "x/a");
    assert_eq!(first["dst_pod"], "y/b");
    assert_eq!(first["port"], 80);
    assert_eq!(first["connections"], 2);
    assert_eq!(first["packets"], 6);
    assert_eq!(first["current"]["verdict"], "allow");
    assert_eq!(first["current"]["policy"], "-");
    assert_eq!(first["candidate"]["verdict"], "deny");
    assert_eq!(first["candidate"]["policy"], "egress=x/deny-all");
    assert_eq!(v["changes"].as_array().unwrap().len(), 2);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn cli_fail_on_break_and_open_are_status_3() {
    let (_dir, [cluster, deny, cap]) = cli_inputs("cli-status");
    let (cluster, deny, cap) = (cluster.as_str(), deny.as_str(), cap.as_str());

    // --fail-on-break: status 3 when something would break, 0 otherwise.
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        "--candidate",
        deny,
        "--fail-on-break",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("3 connection(s) in 2 flow(s) would break"),
        "{}",
        text(&out.stderr)
    );
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        deny,
        "--delete-policy",
        "x/deny-all",
        "--fail-on-break",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("summary: 0 flows (0 connections, 0 packets) would break, 2 flows (3 connections, 8 packets) would open;"),
        "{}",
        text(&out.stdout)
    );
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        deny,
        "--delete-policy",
        "x/deny-all",
        "--fail-on-open",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn cli_unusable_input_is_status_1_and_usage_errors_2() {
    let (dir, [cluster, deny, cap]) = cli_inputs("cli-errors");
    let (cluster, deny, cap) = (cluster.as_str(), deny.as_str(), cap.as_str());

    // A capture that cannot be read: reported by name, status 1, the others
    // still compared.
    let bad = dir.path("bad.pcap");
    std::fs::write(&bad, b"\xd4\xc3\xb2\xa1garbage").unwrap();
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        "--candidate",
        deny,
        "--fail-on-break",
        bad.to_str().unwrap(),
        cap,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&*bad.to_string_lossy()),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("2 flows (3 connections, 8 packets) would break"),
        "{}",
        text(&out.stdout)
    );

    // Unusable input and usage errors.
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        "--delete-policy",
        "x/nope",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = podfence(&[
        "replay",
        "--manifests",
        cluster,
        "--candidate",
        "/nonexistent/podfence.yaml",
        "--json",
        cap,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the candidate manifests cannot be used")
            && text(&out.stderr).contains("/nonexistent/podfence.yaml"),
        "{}",
        text(&out.stderr)
    );
    for args in [
        vec!["replay", "--manifests", cluster, "--fail-on-break", cap],
        vec![
            "replay",
            "--manifests",
            cluster,
            "--candidate",
            deny,
            "--flows",
            "/dev/null",
            cap,
        ],
        vec![
            "replay",
            "--manifests",
            cluster,
            "--delete-policy",
            "x",
            cap,
        ],
    ] {
        let out = podfence(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_cluster_network_policy_candidate_breaks_exactly_what_it_denies() {
    const CNP: &str = "../cases-cnp/921-cnp-deny-beats-networkpolicy-allow";
    let dir = TempDir::new("cnp");
    let state = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&state, &capture);
    let diffed = Diffed::run(
        &[cluster_yaml(), policies("001-no-policies")],
        &[policies(CNP)],
        &[],
        std::slice::from_ref(&capture),
        1,
    );
    assert!(
        diffed.report.errors.is_empty(),
        "{:?}",
        diffed.report.errors
    );
    let expected = oracle_changes("001-no-policies", CNP, &counts, |_| true);
    assert!(!expected.is_empty());
    assert!(expected.keys().all(|(c, _)| *c == Change::Break));
    assert_eq!(diffed.listed(), expected);
    // Each break is explained by the admin tier's rule.
    let tables = compile(&diffed.candidate.cluster, &CompileOptions::default()).tables;
    let names = diffed.names();
    for f in &diffed.report.changes {
        let why = f.explain(
            &names,
            &diffed.candidate.cluster,
            &tables,
            f.candidate.as_ref(),
        );
        assert!(
            why.iter().any(|l| l.contains(
                "deny — admin tier: ClusterNetworkPolicy/deny-y-to-x (priority 10) ingress rule 0 \"deny-from-y\""
            )),
            "{why:?}"
        );
    }
}

#[test]
fn deleting_a_cluster_network_policy_opens_what_it_denied() {
    let dir = TempDir::new("delete-cnp");
    let m = manifests::load(&[cluster_yaml()]).unwrap();
    let capture = dir.path("all.pcap");
    let counts = capture_all_probes(&m, &capture);
    let cnp_case = conformance_dir()
        .join("cases-cnp")
        .join("921-cnp-deny-beats-networkpolicy-allow");
    let current = [cluster_yaml(), cnp_case.join("policies.yaml")];
    // Without the ClusterNetworkPolicy, x's NetworkPolicy allows all its
    // ingress and nothing else is isolated: every probe the case denies
    // opens, nothing breaks.
    let expected: BTreeMap<_, _> = probes_in(&cnp_case)
        .into_iter()
        .filter(|(_, allowed)| !allowed)
        .map(|(p, _)| {
            let id = flow_id(&p);
            ((Change::Open, id.clone()), counts[&id])
        })
        .collect();
    assert!(!expected.is_empty());
    for (pattern, state) in [
        (
            "ClusterNetworkPolicy/deny-y-to-x",
            "deletes ClusterNetworkPolicy deny-y-to-x",
        ),
        (
            "ClusterNetworkPolicy/*",
            "deletes ClusterNetworkPolicy deny-y-to-x",
        ),
        (
            "*/*",
            "deletes NetworkPolicy x/allow-all-ingress; deletes ClusterNetworkPolicy deny-y-to-x",
        ),
    ] {
        let d = Diffed::deleting(&current, pattern, &capture);
        assert_eq!(d.listed(), expected, "--delete-policy {pattern}");
        assert_eq!(
            StateChanges::between(&d.current.cluster, &d.candidate.cluster).to_string(),
            state,
            "--delete-policy {pattern}"
        );
    }
    let current_m = manifests::load(&current).unwrap();
    let e = replay::load_candidate(
        &current,
        &current_m,
        &[],
        &["AdminNetworkPolicy/deny-y-to-x".parse().unwrap()],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--delete-policy AdminNetworkPolicy/deny-y-to-x: the current manifests have no \
         AdminNetworkPolicy deny-y-to-x"
    );
}
