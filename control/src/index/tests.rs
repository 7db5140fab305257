use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;

use super::*;
use crate::model::{Namespace, NetworkPolicy, ObjectKey, Pod};

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
    assert!(!index.ready());
    let _ = list(&mut index, vec![policy("a", "p")]);
    assert!(index.ready());
    assert_eq!(index.cluster().policies.len(), 1);
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
}
