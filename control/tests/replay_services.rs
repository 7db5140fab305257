//! Replay translates Service traffic as the live datapath does: a client
//! pod reaching two ClusterIPs, one whose backend its egress policy allows
//! (though the ClusterIP itself is no allowed peer) and one whose backend's
//! ingress policy denies it. Verdicts are decided, and attributed, against
//! the backends.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use podfence_control::compile::{CompileOptions, Locality, compile, compile_services};
use podfence_control::replay::{PacketVerdict, ReplayOptions, attribution, replay};
use podfence_control::sources::manifests;
use podfence_datapath::craft::{FrameSpec, Transport};
use podfence_datapath::link::LinkType;
use podfence_datapath::ports::capture::CaptureWriter;

const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {kubernetes.io/metadata.name: app}}
---
apiVersion: v1
kind: Pod
metadata: {namespace: app, name: client, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: app, name: dns, labels: {app: dns}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.3, podIPs: [{ip: 10.244.1.3}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: app, name: db, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.4, podIPs: [{ip: 10.244.1.4}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: app, name: client-egress}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: dns}}}]
    ports: [{protocol: UDP, port: 5353}]
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: TCP, port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: app, name: db-closed}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Service
metadata: {namespace: app, name: dns}
spec:
  clusterIP: 10.96.0.10
  selector: {app: dns}
  ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: app, name: dns-1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints: [{addresses: [10.244.1.3], nodeName: n1}]
---
apiVersion: v1
kind: Service
metadata: {namespace: app, name: db}
spec:
  clusterIP: 10.96.0.20
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: app, name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints: [{addresses: [10.244.1.4], nodeName: n1}]
";

/// Removes the file when dropped, also when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frame(src: &str, dst: &str, transport: Transport) -> Vec<u8> {
    FrameSpec {
        src: ip(src),
        dst: ip(dst),
        transport,
        payload_len: 20,
        payload_fill: 1,
    }
    .build()
}

#[test]
fn service_traffic_is_decided_against_the_backends() {
    let cluster = manifests::load_str(Path::new("services.yaml"), MANIFESTS)
        .unwrap()
        .cluster;
    let compiled = compile(&cluster, &CompileOptions::default());
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    let services = compile_services(&cluster, &Locality::AllPods);
    assert!(services.warnings.is_empty(), "{:?}", services.warnings);

    let capture = TempFile(std::env::temp_dir().join(format!(
        "podfence-replay-services-{}.pcap",
        std::process::id()
    )));
    let frames = [
        // DNS through the ClusterIP, and the backend's answer.
        frame(
            "10.244.1.2",
            "10.96.0.10",
            Transport::Udp {
                src_port: 40_000,
                dst_port: 53,
            },
        ),
        frame(
            "10.244.1.3",
            "10.244.1.2",
            Transport::Udp {
                src_port: 5353,
                dst_port: 40_000,
            },
        ),
        // The db Service: egress allows the backend, its ingress denies.
        frame(
            "10.244.1.2",
            "10.96.0.20",
            Transport::Tcp {
                src_port: 40_001,
                dst_port: 5432,
                flags: 0x02,
            },
        ),
    ];
    let mut writer = CaptureWriter::create(&capture.0, LinkType::Ethernet).unwrap();
    for (i, f) in frames.iter().enumerate() {
        writer
            .write(f, f.len() as u32, 1_000_000 * (i as u64 + 1))
            .unwrap();
    }
    writer.finish().unwrap();

    for workers in [1, 2] {
        let options = ReplayOptions {
            workers,
            keep_packet_verdicts: true,
            services: services.table.clone(),
            ..ReplayOptions::default()
        };
        let report = replay(
            compiled.tables.clone(),
            std::slice::from_ref(&capture.0),
            &options,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.packet_verdicts,
            [
                PacketVerdict::Allow,
                PacketVerdict::Allow,
                PacketVerdict::Deny
            ],
            "{workers} workers"
        );
        assert_eq!(report.counters.service_translated, 1);
        // Two flows: the reply counts in the DNS flow, under the ClusterIP.
        assert_eq!(report.flows.len(), 2, "{:?}", report.flows);
        let (dns, db) = (&report.flows[0], &report.flows[1]);
        assert_eq!((dns.packets, dns.allowed), (2, true));
        assert_eq!(
            attribution(&compiled.tables, dns.verdict.as_ref()),
            "egress=app/client-egress#0"
        );
        assert!(!db.allowed);
        assert_eq!(
            attribution(&compiled.tables, db.verdict.as_ref()),
            "egress=app/client-egress#1;ingress=app/db-closed"
        );
    }

    // Without the service table the ClusterIP is no allowed peer.
    let report = replay(
        compiled.tables.clone(),
        std::slice::from_ref(&capture.0),
        &ReplayOptions {
            keep_packet_verdicts: true,
            ..ReplayOptions::default()
        },
    );
    assert_eq!(report.packet_verdicts[0], PacketVerdict::Deny);
}
