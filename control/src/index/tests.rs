use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;

use super::*;
use crate::model::{
    ClusterNetworkPolicy, EndpointSlice, Namespace, NetworkPolicy, Node, ObjectKey, Pod, Service,
};

fn ns(name: &str) -> Namespace {
    Namespace::implicit(name)
}

fn policy(ns: &str, name: &str) -> NetworkPolicy {
    let np: net::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}}
    }))
    .unwrap();
    NetworkPolicy::from_resource(&np).unwrap()
}

fn bad(ns: &str, name: &str) -> ModelError {
    let np: net::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}
    }))
    .unwrap();
    NetworkPolicy::from_resource(&np).unwrap_err()
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn list<K: Indexed>(index: &mut ClusterIndex, objects: Vec<K>) -> Outcome {
    let _ = index.apply(Event::<K>::ListStarted);
    for o in objects {
        let _ = index.apply(Event::Listed(o.key(), Ok(o)));
    }
    index.apply(Event::<K>::ListDone)
}

/// A running pod as the API server reports it, with the fields podfence
/// does not keep set from `n`.
fn pod_resource(n: u32, labels: &serde_json::Value) -> core::Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "namespace": "a", "name": "web", "labels": labels,
            "resourceVersion": n.to_string(),
            "annotations": {"touched": n.to_string()},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": if n.is_multiple_of(2) { "True" } else { "False" }}],
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": n.is_multiple_of(2), "restartCount": n}],
        }
    }))
    .unwrap()
}

fn reduce(pod: &core::Pod) -> Pod {
    Pod::from_resource(pod).unwrap()
}

#[test]
fn ready_only_when_every_kind_listed() {
    let mut index = ClusterIndex::default();
    assert!(list(&mut index, vec![ns("a")]).changed());
    assert!(
        list::<Pod>(&mut index, vec![]).changed(),
        "a first list is a change even when empty: readiness moved"
    );
    let _ = list(&mut index, vec![policy("a", "p")]);
    let _ = list::<Service>(&mut index, vec![]);
    let _ = list::<Node>(&mut index, vec![]);
    let _ = list::<ClusterNetworkPolicy>(&mut index, vec![]);
    assert!(!index.ready(), "EndpointSlices not listed yet");
    assert!(list(&mut index, vec![reduce_slice(&slice_resource(0, true))]).changed());
    assert!(index.ready());
    assert_eq!(index.cluster().policies.len(), 1);
    assert_eq!(index.cluster().endpoint_slices.len(), 1);
}

/// Service a/web as the API server reports it, with the fields podfence
/// does not keep (metadata, status, fields it does not use) set from `n`.
fn service_resource(n: u32) -> core::Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "namespace": "a", "name": "web",
            "resourceVersion": n.to_string(),
            "annotations": {"touched": n.to_string()},
        },
        "spec": {
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": format!("p{n}")}],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "publishNotReadyAddresses": n.is_multiple_of(2),
        },
        "status": {"loadBalancer": {"ingress": [{"ip": format!("192.0.2.{n}")}]}},
    }))
    .unwrap()
}

/// EndpointSlice a/web-1 of Service web, its one endpoint `ready`, with the
/// fields podfence does not keep set from `n`.
fn slice_resource(n: u32, ready: bool) -> discovery::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "namespace": "a", "name": "web-1",
            "labels": {"kubernetes.io/service-name": "web"},
            "resourceVersion": n.to_string(),
            "generation": n,
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["10.0.0.5"],
            "conditions": {"ready": ready, "serving": true, "terminating": false},
            "nodeName": "n1",
            "hostname": format!("h{n}"),
            "targetRef": {"kind": "Pod", "namespace": "a", "name": "web", "resourceVersion": n.to_string()},
        }],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": format!("p{n}")}],
    }))
    .unwrap()
}

fn reduce_service(s: &core::Service) -> Service {
    Service::from_resource(s).unwrap()
}

fn reduce_slice(s: &discovery::EndpointSlice) -> EndpointSlice {
    EndpointSlice::from_resource(s).unwrap()
}

#[test]
fn service_and_slice_updates_the_model_does_not_keep_change_nothing() {
    let mut index = ClusterIndex::default();
    let _ = list(&mut index, vec![reduce_service(&service_resource(0))]);
    let _ = list(&mut index, vec![reduce_slice(&slice_resource(0, true))]);
    let svc = Arc::clone(&index.cluster().services[&key("a", "web")]);
    let slice = Arc::clone(&index.cluster().endpoint_slices[&key("a", "web-1")]);
    for n in 1..=3 {
        let s = reduce_service(&service_resource(n));
        assert_eq!(
            index.apply(Event::Applied(key("a", "web"), Ok(s))),
            Outcome::Unchanged,
            "service update {n}"
        );
        let s = reduce_slice(&slice_resource(n, true));
        assert_eq!(
            index.apply(Event::Applied(key("a", "web-1"), Ok(s))),
            Outcome::Unchanged,
            "slice update {n}"
        );
    }
    assert_eq!(index.stats().unchanged, 6);
    assert!(Arc::ptr_eq(
        &svc,
        &index.cluster().services[&key("a", "web")]
    ));
    assert!(Arc::ptr_eq(
        &slice,
        &index.cluster().endpoint_slices[&key("a", "web-1")]
    ));
    // An endpoint no longer ready is what backend choice sees.
    let not_ready = reduce_slice(&slice_resource(4, false));
    assert!(!not_ready.endpoints[0].ready);
    assert!(
        index
            .apply(Event::Applied(key("a", "web-1"), Ok(not_ready)))
            .changed()
    );
    assert!(!index.cluster().endpoint_slices[&key("a", "web-1")].endpoints[0].ready);
    // So is a port change of the Service.
    let mut moved = service_resource(5);
    moved.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    assert!(
        index
            .apply(Event::Applied(key("a", "web"), Ok(reduce_service(&moved))))
            .changed()
    );
}

#[test]
fn a_relist_replaces_the_whole_set_at_its_end() {
    let mut index = ClusterIndex::default();
    let _ = list(&mut index, vec![policy("a", "p"), policy("a", "q")]);
    let _ = index.apply(Event::<NetworkPolicy>::ListStarted);
    let r = policy("a", "r");
    let _ = index.apply(Event::Listed(key("a", "r"), Ok(r)));
    // Half listed: the old set is still in force.
    assert_eq!(index.cluster().policies.len(), 2);
    assert!(index.apply(Event::<NetworkPolicy>::ListDone).changed());
    let names: Vec<_> = index.cluster().policies.keys().cloned().collect();
    assert_eq!(names, vec![key("a", "r")]);
}

#[test]
fn a_rejected_object_keeps_its_last_good_version() {
    let mut index = ClusterIndex::default();
    let _ = list(&mut index, vec![policy("a", "p")]);
    let outcome = index.apply(Event::<NetworkPolicy>::Applied(
        key("a", "p"),
        Err(bad("a", "p")),
    ));
    assert_eq!(outcome, Outcome::Rejected);
    assert!(index.cluster().policies.contains_key(&key("a", "p")));
    // Also across a relist, beside the good objects of the list.
    let _ = index.apply(Event::<NetworkPolicy>::ListStarted);
    let _ = index.apply(Event::<NetworkPolicy>::Listed(
        key("a", "p"),
        Err(bad("a", "p")),
    ));
    let q = policy("a", "q");
    let _ = index.apply(Event::Listed(key("a", "q"), Ok(q)));
    let _ = index.apply(Event::<NetworkPolicy>::ListDone);
    assert_eq!(index.cluster().policies.len(), 2);
    assert_eq!(index.stats().malformed, 2);
}

#[test]
fn deletes_remove_and_report_change() {
    let mut index = ClusterIndex::default();
    let _ = list(&mut index, vec![ns("a"), ns("b")]);
    assert!(
        index
            .apply(Event::<Namespace>::Deleted("a".into()))
            .changed()
    );
    assert_eq!(
        index.apply(Event::<Namespace>::Deleted("a".into())),
        Outcome::Unchanged
    );
    assert_eq!(index.cluster().namespaces.len(), 1);
}

#[test]
fn updates_the_model_does_not_keep_change_nothing() {
    let metrics = ControlMetrics::default();
    let mut index = ClusterIndex::with_metrics(metrics.clone());
    let labels = serde_json::json!({"app": "web"});
    let _ = list(&mut index, vec![reduce(&pod_resource(0, &labels))]);
    let held = Arc::clone(&index.cluster().pods[&key("a", "web")]);
    // Conditions, readiness, annotations, resourceVersion, restart counts.
    for n in 1..=3 {
        let pod = reduce(&pod_resource(n, &labels));
        assert_eq!(
            index.apply(Event::Applied(key("a", "web"), Ok(pod))),
            Outcome::Unchanged,
            "update {n}"
        );
    }
    assert!(Arc::ptr_eq(&held, &index.cluster().pods[&key("a", "web")]));
    assert_eq!(index.stats().unchanged, 3);
    let pods = vec![("kind", "Pod".to_owned())];
    assert_eq!(metrics.unchanged_updates.get_or_create(&pods).get(), 3);
    // A label is what selectors see.
    let relabelled = reduce(&pod_resource(4, &serde_json::json!({"app": "db"})));
    assert!(
        index
            .apply(Event::Applied(key("a", "web"), Ok(relabelled)))
            .changed()
    );
    assert!(!Arc::ptr_eq(&held, &index.cluster().pods[&key("a", "web")]));
}

#[test]
fn a_relist_of_equal_objects_changes_nothing_and_keeps_the_arcs() {
    let mut index = ClusterIndex::default();
    let _ = list(&mut index, vec![policy("a", "p"), policy("a", "q")]);
    let held = Arc::clone(&index.cluster().policies[&key("a", "p")]);
    assert_eq!(
        list(&mut index, vec![policy("a", "q"), policy("a", "p")]),
        Outcome::Unchanged
    );
    assert!(Arc::ptr_eq(
        &held,
        &index.cluster().policies[&key("a", "p")]
    ));
    // One gone is a change.
    assert!(list(&mut index, vec![policy("a", "p")]).changed());
}

/// A whole cluster state built afresh (new allocations) from resources
/// whose fields podfence does not keep are set from `n`.
fn state(n: u32, namespaces: &[&str]) -> Cluster {
    let mut cluster = Cluster::default();
    for name in namespaces {
        cluster.apply(ns(name));
    }
    cluster.apply(policy("a", "p"));
    cluster.apply(reduce(&pod_resource(n, &serde_json::json!({"app": "web"}))));
    cluster.apply(reduce_service(&service_resource(n)));
    cluster.apply(reduce_slice(&slice_resource(n, true)));
    cluster
}

#[test]
fn replacing_every_kind_with_the_same_state_changes_nothing() {
    let mut index = ClusterIndex::default();
    assert!(index.replace_all(state(0, &["a"])).changed());
    assert!(index.ready());
    assert_eq!(index.cluster(), &state(0, &["a"]));
    let held = Arc::clone(&index.cluster().pods[&key("a", "web")]);
    assert_eq!(index.replace_all(state(7, &["a"])), Outcome::Unchanged);
    assert!(Arc::ptr_eq(&held, &index.cluster().pods[&key("a", "web")]));
    assert!(index.replace_all(state(7, &["a", "b"])).changed());
    assert_eq!(index.cluster().namespaces.len(), 2);
    assert!(Arc::ptr_eq(&held, &index.cluster().pods[&key("a", "web")]));
    let slice = Arc::clone(&index.cluster().endpoint_slices[&key("a", "web-1")]);
    let mut not_ready = state(8, &["a", "b"]);
    not_ready.apply(reduce_slice(&slice_resource(8, false)));
    assert!(index.replace_all(not_ready).changed());
    assert!(!Arc::ptr_eq(
        &slice,
        &index.cluster().endpoint_slices[&key("a", "web-1")]
    ));
    assert!(Arc::ptr_eq(&held, &index.cluster().pods[&key("a", "web")]));
}
