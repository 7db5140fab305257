//! Probes to Services: policy applies after Service translation, per
//! backend, exactly as `classify` answers for each backend address
//! (docs/semantics.md, "Services"). The cluster is
//! tests/fixtures/services/cluster.yaml (its table of pods and Services is
//! at its top); the policies are its policies.yaml.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use podfence_control::compile::{CompileOptions, compile};
use podfence_control::index::Cluster;
use podfence_control::probe::{
    Answer, Probe, ProbeError, ServiceAnswer, ServiceExplanation, ServiceTables, answer, classify,
};
use podfence_control::sources::manifests;
use podfence_datapath::Tables;
use podfence_datapath::services::NoBackend;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/services")
}

struct World {
    cluster: Cluster,
    tables: Tables,
    services: ServiceTables,
}

fn world(with_policies: bool) -> World {
    let mut paths = vec![fixtures().join("cluster.yaml")];
    if with_policies {
        paths.push(fixtures().join("policies.yaml"));
    }
    let cluster = manifests::load(&paths).expect("fixtures load").cluster;
    let compiled = compile(&cluster, &CompileOptions::default());
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    let services = ServiceTables::compile(&cluster);
    assert!(services.warnings.is_empty(), "{:?}", services.warnings);
    World {
        cluster,
        tables: compiled.tables,
        services,
    }
}

fn probe(src: &str, dst: &str, protocol: &str, port: u16) -> Probe {
    Probe::from_fields(src, dst, protocol, &port.to_string()).expect("a probe")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl World {
    fn answer(&self, src: &str, dst: &str, protocol: &str, port: u16) -> Answer {
        answer(
            &self.cluster,
            &self.tables,
            &self.services,
            &probe(src, dst, protocol, port),
        )
        .unwrap_or_else(|e| panic!("{src} {dst} {protocol} {port}: {e}"))
    }

    fn service(&self, src: &str, dst: &str, protocol: &str, port: u16) -> ServiceAnswer {
        match self.answer(src, dst, protocol, port) {
            Answer::Service(s) => s,
            a @ Answer::Direct { .. } => panic!("{dst} is not answered as a Service: {a:?}"),
        }
    }

    fn error(&self, src: &str, dst: &str, protocol: &str, port: u16) -> ProbeError {
        answer(
            &self.cluster,
            &self.tables,
            &self.services,
            &probe(src, dst, protocol, port),
        )
        .expect_err("an error")
    }
}

#[test]
fn default_deny_egress_plus_dns_to_the_kube_dns_pods_allows_the_kube_dns_service() {
    let w = world(true);
    let dns = w.service("x/a", "svc:kube-system/kube-dns", "UDP", 53);
    assert_eq!(dns.service.to_string(), "kube-system/kube-dns");
    let backends: Vec<String> = dns
        .backends
        .iter()
        .map(|b| format!("{} {}", b.pod.as_ref().unwrap(), b.backend))
        .collect();
    assert_eq!(
        backends,
        [
            "kube-system/coredns-1 10.244.1.10:53",
            "kube-system/coredns-2 10.244.2.10:53"
        ]
    );
    assert!(dns.is_allowed(), "{dns:?}");
    assert!(
        w.service("x/a", "svc:kube-system/kube-dns", "TCP", 53)
            .is_allowed()
    );
    // The pods themselves, by address: allowed too.
    assert!(w.answer("x/a", "ext:10.244.1.10", "UDP", 53).is_allowed());
    // The ClusterIP given as an address is the same Service.
    let by_ip = w.service("x/a", "ext:10.96.0.10", "UDP", 53);
    assert_eq!(by_ip, dns);
    // Classified before translation, the ClusterIP would be denied: that
    // is what the Service answer corrects.
    let untranslated = classify(
        &w.cluster,
        &w.tables,
        &probe("x/a", "ext:10.96.0.10", "UDP", 53),
    )
    .unwrap();
    assert!(!untranslated.is_allowed());
    // Another Service: its backends are not allowed by x's egress.
    let web = w.service("x/a", "svc:y/web", "TCP", 80);
    assert!(!web.is_allowed());
    assert_eq!(web.allowed(), 0);
    assert!(!w.answer("x/a", "ext:10.96.0.20", "TCP", 80).is_allowed());
}

#[test]
fn each_backend_is_classified_as_its_address_and_target_port() {
    let w = world(true);
    for (src, dst, protocol, port) in [
        ("x/a", "svc:kube-system/kube-dns", "UDP", 53),
        ("z/c", "svc:y/web", "TCP", 80),
        ("x/a", "svc:y/web", "TCP", 80),
        ("y/web-1", "svc:y/web", "TCP", 80),
    ] {
        let s = w.service(src, dst, protocol, port);
        for b in &s.backends {
            let direct = probe(src, &b.endpoint().to_string(), protocol, b.backend.port);
            let verdict = classify(&w.cluster, &w.tables, &direct).unwrap();
            assert_eq!(b.verdict, verdict, "{src} {dst}: backend {}", b.backend);
        }
    }
}

#[test]
fn an_ingress_deny_on_one_backend_denies_the_service() {
    let w = world(true);
    let web = w.service("z/c", "svc:y/web", "TCP", 80);
    let verdicts: Vec<(String, bool)> = web
        .backends
        .iter()
        .map(|b| (b.pod.as_ref().unwrap().to_string(), b.verdict.is_allowed()))
        .collect();
    // web-1 admits its port 8080 (the target port, not the Service's 80);
    // web-2 admits nothing.
    assert_eq!(
        verdicts,
        [("y/web-1".to_owned(), true), ("y/web-2".to_owned(), false)]
    );
    assert_eq!(web.backends[0].backend.port, 8080);
    assert!(!web.is_allowed(), "allowed only when every backend is");
    assert_eq!(web.summary(), "1 of 2 backends allow it");
    // Without policies, both are.
    assert!(
        world(false)
            .service("z/c", "svc:y/web", "TCP", 80)
            .is_allowed()
    );
}

#[test]
fn a_service_without_usable_endpoints_is_denied_with_the_reason() {
    let w = world(false);
    let empty = w.service("x/a", "svc:y/empty", "TCP", 80);
    assert!(empty.backends.is_empty());
    assert_eq!(empty.no_backend, Some(NoBackend::NoEndpoints));
    assert!(!empty.is_allowed());
    assert!(
        empty.summary().contains("no usable endpoint"),
        "{}",
        empty.summary()
    );
    let draining = w.service("x/a", "svc:y/draining", "TCP", 80);
    assert_eq!(draining.endpoints, 1);
    assert!(!draining.is_allowed());
}

#[test]
fn internal_traffic_policy_local_uses_the_source_nodes_endpoints() {
    let w = world(true);
    let backend = |src: &str| {
        let s = w.service(src, "svc:y/local", "TCP", 80);
        s.backends
            .iter()
            .map(|b| b.pod.as_ref().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(backend("z/c"), ["y/web-2"], "z/c runs on n2");
    assert_eq!(backend("kube-system/coredns-1"), ["y/web-1"], "n1");
}

#[test]
fn services_that_are_not_translated_are_errors_naming_the_service_and_field() {
    let w = world(false);
    let message =
        |dst: &str, protocol: &str, port: u16| w.error("x/a", dst, protocol, port).to_string();
    assert_eq!(
        message("svc:y/nope", "TCP", 80),
        "unknown Service svc:y/nope"
    );
    let m = message("svc:kube-system/kube-dns", "TCP", 80);
    assert!(
        m.contains("kube-system/kube-dns")
            && m.contains("spec.ports")
            && m.contains("UDP 53 (dns)"),
        "{m}"
    );
    let m = message("svc:y/headless", "TCP", 80);
    assert!(
        m.contains("y/headless") && m.contains("headless") && m.contains("spec.clusterIP"),
        "{m}"
    );
    let m = message("svc:y/other", "TCP", 80);
    assert!(
        m.contains("y/other") && m.contains("service.kubernetes.io/service-proxy-name"),
        "{m}"
    );
    let e = answer(
        &w.cluster,
        &w.tables,
        &w.services,
        &probe("svc:y/web", "x/a", "TCP", 80),
    )
    .unwrap_err();
    assert!(matches!(e, ProbeError::ServiceSource(_)), "{e}");
    // An address and port that is no frontend is classified as it is.
    assert!(matches!(
        w.answer("x/a", "ext:10.96.0.20", "TCP", 8080),
        Answer::Direct { addresses, .. } if addresses.1 == ip("10.96.0.20")
    ));
}

#[test]
fn the_explanation_names_the_backends_and_the_deciding_policies() {
    let w = world(true);
    let p = probe("z/c", "svc:y/web", "TCP", 80);
    let Answer::Service(a) = answer(&w.cluster, &w.tables, &w.services, &p).unwrap() else {
        panic!("a Service");
    };
    let text = ServiceExplanation {
        probe: &p,
        answer: &a,
        tables: &w.tables,
        cluster: &w.cluster,
    }
    .to_string();
    assert!(
        text.starts_with(
            "deny: TCP from z/c (10.244.2.3) to Service y/web (frontend 10.96.0.20:80/TCP): 1 of 2 backends allow it"
        ),
        "{text}"
    );
    assert!(
        text.contains("policy applies after Service translation"),
        "{text}"
    );
    assert!(
        text.contains("backend y/web-1 (10.244.1.21) port 8080: allow"),
        "{text}"
    );
    assert!(
        text.contains("allowed by y/web-1-http ingress rule 0"),
        "{text}"
    );
    assert!(
        text.contains("backend y/web-2 (10.244.2.22) port 8080: deny"),
        "{text}"
    );
    assert!(
        text.contains("isolated for ingress by y/web-2-deny-ingress"),
        "{text}"
    );
}
