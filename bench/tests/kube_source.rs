//! The Kubernetes source with the real kube client against the in-repo test
//! API server: initial sync, every kind of change, a stream cut mid-way,
//! 410 Gone, a malformed object, slow responses and a server unreachable at
//! start. Verdicts are read from the tables the source publishes; Services
//! and EndpointSlices from the cluster state it publishes them from.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use podfence_bench::apiserver::{ApiServer, Resource};
use podfence_control::compile::{CompileOptions, Locality};
use podfence_control::index::{Cluster, IndexStats};
use podfence_control::model::{ObjectKey, PolicyApi};
use podfence_control::publish::TablePublisher;
use podfence_control::sources::kube::{ApiTarget, SourceOptions, SourceThread};
use podfence_datapath::IpProtocol;
use serde_json::{Value, json};

fn namespace(name: &str) -> Value {
    json!({"kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn pod(ns: &str, name: &str, ip: &str, labels: &Value) -> Value {
    json!({"kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
           "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// Pod a, labelled as a client.
fn client_a() -> Value {
    pod(
        "x",
        "a",
        "10.244.1.1",
        &json!({"pod": "a", "role": "client"}),
    )
}

/// Ingress to `pod: b` only from pods labelled `role: client`.
fn only_clients_to_b() -> Value {
    json!({"kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "b-clients"},
           "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}})
}

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

struct Harness {
    server: ApiServer,
    tables: TablePublisher,
    /// Each publish: its generation and the cluster state it was made from.
    published: mpsc::Receiver<(u64, Cluster)>,
    source: Option<SourceThread>,
    _kubeconfig: TempFile,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Harness {
    /// A server holding namespace x with pods a and b, and a source
    /// connected to it (not yet synced when `unavailable`).
    fn start(unavailable: bool) -> Self {
        Self::start_with(unavailable, SourceOptions::default())
    }

    /// [`Self::start`] with source settings of its own.
    fn start_with(unavailable: bool, options: SourceOptions) -> Self {
        let server = ApiServer::start().expect("server");
        server.apply(namespace("x")).unwrap();
        server
            .apply(pod("x", "a", "10.244.1.1", &json!({"pod": "a"})))
            .unwrap();
        server
            .apply(pod("x", "b", "10.244.1.2", &json!({"pod": "b"})))
            .unwrap();
        server.set_unavailable(unavailable);
        let path = std::env::temp_dir().join(format!(
            "pf-kubeconfig-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
        let tables = TablePublisher::new(CompileOptions {
            locality: Locality::Node("node-1".into()),
            broad_threshold: 32,
            ..CompileOptions::default()
        });
        let (tx, published) = mpsc::channel();
        let source = SourceThread::spawn(
            ApiTarget::Kubeconfig(path.clone()),
            tables.clone(),
            options,
            move |index, generation| {
                let _ = tx.send((generation, index.cluster().clone()));
            },
        )
        .expect("source starts");
        Self {
            server,
            tables,
            published,
            source: Some(source),
            _kubeconfig: TempFile(path),
        }
    }

    /// Waits for the next publish.
    fn next_generation(&self, within: Duration) -> Option<u64> {
        self.next_publish(within).map(|(generation, _)| generation)
    }

    /// Waits for the next publish; its generation and cluster state.
    fn next_publish(&self, within: Duration) -> Option<(u64, Cluster)> {
        self.published.recv_timeout(within).ok()
    }

    /// Waits for a published cluster state for which `wanted` holds.
    fn await_state(&self, wanted: impl Fn(&Cluster) -> bool, what: &str) -> (u64, Cluster) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (generation, cluster) = self
                .next_publish(left)
                .unwrap_or_else(|| panic!("timed out waiting: {what}"));
            if wanted(&cluster) {
                return (generation, cluster);
            }
        }
    }

    /// Waits until `a → b` TCP/80 has the wanted verdict.
    fn await_verdict(&self, allowed: bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.allowed() != Some(allowed) {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            let _ = self.next_generation(Duration::from_millis(200));
        }
    }

    fn allowed(&self) -> Option<bool> {
        if self.tables.generation() == 0 {
            return None;
        }
        let generation = self.tables.publisher().current();
        Some(
            generation
                .tables
                .classify_v4(A.into(), B.into(), IpProtocol::TCP, 80)
                .is_allowed(),
        )
    }

    fn stop(mut self) -> IndexStats {
        self.source
            .take()
            .expect("running")
            .stop()
            .expect("clean stop")
    }
}

/// An admin ClusterNetworkPolicy denying ingress to `pod: b` from every
/// namespace.
fn admin_deny_to_b() -> Value {
    json!({"kind": "ClusterNetworkPolicy", "metadata": {"name": "guard-b"},
           "spec": {"tier": "Admin", "priority": 5,
                    "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}},
                    "ingress": [{"name": "none", "action": "Deny", "from": [{"namespaces": {}}]}]}})
}

#[test]
fn cluster_network_policy_crd_installed_upgraded_and_removed_while_running() {
    let h = Harness::start_with(
        false,
        SourceOptions {
            rediscover: Duration::from_millis(100),
            ..SourceOptions::default()
        },
    );
    h.next_generation(Duration::from_secs(20))
        .expect("initial sync without the CRD");
    h.await_verdict(true, "no policy: allowed");
    h.server
        .apply(
            json!({"kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                      "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]}}),
        )
        .unwrap();
    h.await_state(|c| c.nodes.contains_key("node-1"), "node watched");

    h.server.install_crd(Some("v1alpha2"));
    h.server.apply(admin_deny_to_b()).unwrap();
    h.await_verdict(false, "CRD installed later: its policy enforced");
    h.server.install_crd(Some("v1beta1"));
    let (_, cluster) = h.await_state(
        |c| {
            c.cluster_policies
                .values()
                .any(|p| p.api == PolicyApi::ClusterV1beta1)
        },
        "the newer version watched after an upgrade",
    );
    assert_eq!(cluster.cluster_policies.len(), 1);
    assert_eq!(h.allowed(), Some(false));
    h.server.install_crd(None);
    h.await_verdict(true, "CRD removed: nothing enforced");

    // The older kinds, if served, on the same tiers.
    h.server.install_admin_crds(true);
    h.server
        .apply(
            json!({"kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
                      "spec": {"subject": {"namespaces": {}},
                               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}),
        )
        .unwrap();
    h.await_verdict(false, "BaselineAdminNetworkPolicy enforced");
    h.server
        .apply(json!({"kind": "AdminNetworkPolicy", "metadata": {"name": "let-a"},
                      "spec": {"priority": 1, "subject": {"namespaces": {}},
                               "ingress": [{"action": "Allow", "from": [{"pods": {
                                   "namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}}]}]}}))
        .unwrap();
    h.await_verdict(true, "AdminNetworkPolicy Allow before the baseline");
    // A CNP again beside them: its admin Deny at priority 5 comes after the
    // ANP's Allow at priority 1.
    h.server.install_crd(Some("v1beta1"));
    h.server.apply(admin_deny_to_b()).unwrap();
    let (_, cluster) = h.await_state(|c| c.cluster_policies.len() == 3, "three kinds");
    assert_eq!(cluster.cluster_policies.len(), 3);
    assert_eq!(h.allowed(), Some(true));
    h.server.install_admin_crds(false);
    h.await_verdict(false, "only the CNP left");
    h.stop();
}

#[test]
fn initial_sync_and_every_kind_of_change() {
    let h = Harness::start(false);
    let first = h
        .next_generation(Duration::from_secs(20))
        .expect("initial sync");
    assert_eq!(first, 1);
    h.await_verdict(true, "no policy: allowed");

    // Policy added: a is not a client.
    h.server.apply(only_clients_to_b()).unwrap();
    h.await_verdict(false, "policy isolates b");
    // Pod label change: a becomes a client.
    h.server.apply(client_a()).unwrap();
    h.await_verdict(true, "a labelled client");
    // Policy edited: clients from namespaces labelled team=web only.
    let mut edited = only_clients_to_b();
    edited["spec"]["ingress"][0]["from"][0]["namespaceSelector"] =
        json!({"matchLabels": {"team": "web"}});
    h.server.apply(edited).unwrap();
    h.await_verdict(false, "policy edited");
    // Namespace label change makes x such a namespace.
    let mut x = namespace("x");
    x["metadata"]["labels"]["team"] = json!("web");
    h.server.apply(x).unwrap();
    h.await_verdict(true, "namespace labelled");
    // Policy deleted.
    h.server.delete(Resource::NetworkPolicies, "x", "b-clients");
    h.server.apply(only_clients_to_b()).unwrap();
    h.server.delete(Resource::NetworkPolicies, "x", "b-clients");
    h.await_verdict(true, "policy deleted");
    // Pod deleted and back without the label: isolation applies to the new one.
    h.server.apply(only_clients_to_b()).unwrap();
    h.server.delete(Resource::Pods, "x", "a");
    h.server
        .apply(pod("x", "a", "10.244.1.1", &json!({"pod": "a"})))
        .unwrap();
    h.await_verdict(false, "pod recreated without the label");
    let stats = h.stop();
    assert_eq!(stats.malformed, 0);
    assert_eq!(
        stats.lists,
        podfence_control::index::Kind::COUNT as u64,
        "one list per kind: {stats:?}"
    );
}

/// Pod a as the kubelet keeps rewriting it: readiness, conditions,
/// restart count and an annotation from `n`, labels unchanged.
fn client_a_status(n: u32) -> Value {
    let mut a = pod("x", "a", "10.244.1.1", &json!({"pod": "a"}));
    a["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/restartedAt": n.to_string()});
    let ready = if n.is_multiple_of(2) { "True" } else { "False" };
    a["status"]["conditions"] = json!([{"type": "Ready", "status": ready}]);
    a["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "",
        "ready": n.is_multiple_of(2), "restartCount": n}]);
    a
}

#[test]
fn updates_of_what_policy_ignores_publish_no_generation() {
    let h = Harness::start(false);
    assert_eq!(h.next_generation(Duration::from_secs(20)), Some(1));
    h.server.apply(only_clients_to_b()).unwrap();
    h.await_verdict(false, "policy isolates b");
    let before = h.tables.generation();
    for n in 1..=4 {
        let version = h.server.apply(client_a_status(n)).unwrap();
        assert!(
            version > 0,
            "the server gives each update a resourceVersion"
        );
    }
    // Long past the debounce: a generation for those updates would be out.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(h.tables.generation(), before);
    // A label is what selectors see: that publishes.
    h.server.apply(client_a()).unwrap();
    h.await_verdict(true, "a labelled client");
    assert_eq!(h.tables.generation(), before + 1);
    let stats = h.stop();
    assert_eq!(stats.unchanged, 4, "{stats:?}");
}

#[test]
fn a_cut_stream_resumes_and_410_relists() {
    let h = Harness::start(false);
    h.next_generation(Duration::from_secs(20))
        .expect("initial sync");
    h.await_verdict(true, "synced");
    h.server.cut_watches();
    h.server.apply(only_clients_to_b()).unwrap();
    h.await_verdict(false, "change after a cut stream");
    h.server.expire_history();
    h.server.delete(Resource::NetworkPolicies, "x", "b-clients");
    h.await_verdict(true, "change after 410 Gone");
    let stats = h.stop();
    assert!(stats.lists > 5, "410 made the watcher relist: {stats:?}");
}

#[test]
fn a_malformed_object_is_skipped_and_the_rest_applies() {
    let h = Harness::start(false);
    h.next_generation(Duration::from_secs(20))
        .expect("initial sync");
    h.server.apply(only_clients_to_b()).unwrap();
    h.await_verdict(false, "policy in force");
    // The same policy made invalid: its last good version stays.
    let mut broken = only_clients_to_b();
    broken["spec"]["ingress"][0]["from"][0] = json!({"ipBlock": {"cidr": "10.0.0.0/99"}});
    h.server.apply(broken).unwrap();
    // A good change after it still applies.
    h.server.apply(client_a()).unwrap();
    h.await_verdict(true, "later change applied, old policy kept");
    let stats = h.stop();
    assert_eq!(stats.malformed, 1, "{stats:?}");
}

#[test]
fn slow_responses_still_sync() {
    let h = Harness::start(false);
    h.server.set_delay(Duration::from_millis(300));
    h.next_generation(Duration::from_secs(20))
        .expect("initial sync");
    h.server.apply(only_clients_to_b()).unwrap();
    h.await_verdict(false, "change through a slow server");
    h.stop();
}

#[test]
fn unreachable_at_start_publishes_nothing_until_it_answers() {
    let h = Harness::start(true);
    assert_eq!(h.next_generation(Duration::from_secs(2)), None);
    assert_eq!(
        h.tables.generation(),
        0,
        "nothing published before a full list"
    );
    let refused = h.server.requests();
    assert!(
        refused >= 5,
        "every kind tried and was refused: {refused} requests"
    );
    h.server.set_unavailable(false);
    h.next_generation(Duration::from_secs(30))
        .expect("sync once reachable");
    h.await_verdict(true, "synced late");
    h.stop();
}

/// Service x/web on port 80 to the backends' port `http`.
fn web_service() -> Value {
    json!({"kind": "Service", "metadata": {"namespace": "x", "name": "web"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "selector": {"pod": "b"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
           "status": {"loadBalancer": {}}})
}

/// Service web's EndpointSlice: pod b, `ready` or not, with what podfence
/// does not keep (the hostname, the pod's resourceVersion, the
/// appProtocol, an annotation) set from `n`.
fn web_slice(n: u32, ready: bool) -> Value {
    json!({"kind": "EndpointSlice",
           "metadata": {"namespace": "x", "name": "web-abcde",
                        "labels": {"kubernetes.io/service-name": "web",
                                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                        "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": n.to_string()}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.1.2"],
                          "conditions": {"ready": ready, "serving": ready, "terminating": false},
                          "nodeName": "node-1", "hostname": format!("b-{n}"),
                          "targetRef": {"kind": "Pod", "namespace": "x", "name": "b",
                                        "resourceVersion": n.to_string()}}],
           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": format!("p{n}")}]})
}

#[test]
fn services_and_endpoint_slices_reach_the_index() {
    let h = Harness::start(false);
    let (first, cluster) = h
        .next_publish(Duration::from_secs(20))
        .expect("initial sync waits for Services and EndpointSlices too");
    assert_eq!(first, 1);
    assert!(cluster.services.is_empty() && cluster.endpoint_slices.is_empty());

    h.server.apply(web_service()).unwrap();
    h.server.apply(web_slice(0, true)).unwrap();
    let (_, cluster) = h.await_state(
        |c| !c.services.is_empty() && !c.endpoint_slices.is_empty(),
        "the Service and its slice",
    );
    let web = &cluster.services[&ObjectKey::new("x", "web")];
    assert!(web.is_proxied() && web.has_selector);
    assert_eq!(
        web.cluster_ips,
        vec![std::net::IpAddr::from([10, 96, 0, 10])]
    );
    assert_eq!(web.ports[0].port, 80);
    let slice = &cluster.endpoint_slices[&ObjectKey::new("x", "web-abcde")];
    assert_eq!(slice.service.as_deref(), Some("web"));
    assert_eq!(slice.endpoints[0].address, std::net::IpAddr::from(B));
    assert!(slice.endpoints[0].ready);
    assert_eq!(slice.endpoints[0].node.as_deref(), Some("node-1"));
    assert_eq!(slice.ports[0].port, Some(80));

    // What the endpoint controller rewrites without changing a backend.
    let before = h.tables.generation();
    for n in 1..=3 {
        h.server.apply(web_slice(n, true)).unwrap();
    }
    // Long past the debounce: a generation for those updates would be out.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(h.tables.generation(), before);

    // A backend no longer ready is what backend choice sees: that publishes.
    h.server.apply(web_slice(4, false)).unwrap();
    let (generation, cluster) = h.await_state(
        |c| {
            c.endpoint_slices
                .get(&ObjectKey::new("x", "web-abcde"))
                .is_some_and(|s| !s.endpoints[0].ready)
        },
        "the endpoint not ready",
    );
    assert_eq!(generation, before + 1);
    assert!(!cluster.endpoint_slices[&ObjectKey::new("x", "web-abcde")].endpoints[0].serving);

    // Deleted: gone from the index.
    h.server.delete(Resource::EndpointSlices, "x", "web-abcde");
    h.server.delete(Resource::Services, "x", "web");
    h.await_state(
        |c| c.services.is_empty() && c.endpoint_slices.is_empty(),
        "both deleted",
    );
    let stats = h.stop();
    assert_eq!(stats.unchanged, 3, "{stats:?}");
    assert_eq!(stats.malformed, 0, "{stats:?}");
}

/// Against a real cluster when `PODFENCE_TEST_KUBECONFIG` names a
/// kubeconfig: the source lists every kind and publishes (read-only; the
/// fault tests above need the test server).
#[test]
fn a_real_cluster_syncs_when_given() {
    let Some(path) = std::env::var_os("PODFENCE_TEST_KUBECONFIG") else {
        eprintln!("SKIPPED: PODFENCE_TEST_KUBECONFIG is not set (no real cluster to sync with)");
        return;
    };
    let tables = TablePublisher::new(CompileOptions {
        locality: Locality::AllPods,
        broad_threshold: 32,
        ..CompileOptions::default()
    });
    let (tx, published) = mpsc::channel();
    let source = SourceThread::spawn(
        ApiTarget::Kubeconfig(PathBuf::from(path)),
        tables.clone(),
        SourceOptions::default(),
        move |index, generation| {
            let _ = tx.send((generation, index.cluster().namespaces.len()));
        },
    )
    .expect("source starts");
    let (generation, namespaces) = published
        .recv_timeout(Duration::from_mins(1))
        .expect("initial sync within a minute");
    assert_eq!(generation, 1);
    assert!(namespaces > 0, "a cluster has namespaces");
    source.stop().expect("clean stop");
}
