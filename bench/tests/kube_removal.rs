//! A stopping agent's question to the API, against the test API server
//! with the real kube client: is its DaemonSet still there (an upgrade:
//! keep the datapath for the next agent) or gone or going (an uninstall:
//! clean)? An API that does not answer in time means keep.

use std::time::{Duration, Instant};

use podfence_bench::apiserver::{ApiServer, Resource};
use podfence_control::agent::OnStop;
use podfence_control::agent::removal::{DaemonSetState, daemonset_state};
use podfence_control::model::ObjectKey;
use podfence_control::sources::kube::ApiTarget;
use serde_json::json;

/// A kubeconfig file, removed on drop.
struct Kubeconfig(std::path::PathBuf);

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn daemonset(deleting: bool) -> serde_json::Value {
    let mut metadata = json!({"name": "podfence", "namespace": "podfence-system", "uid": "u1"});
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-12-06T00:00:00Z");
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": {"app": "podfence"}},
            "template": {"metadata": {"labels": {"app": "podfence"}}, "spec": {"containers": []}},
        },
    })
}

#[test]
fn the_daemonset_decides_keep_or_clean_and_doubt_keeps() {
    let server = ApiServer::start().expect("server");
    let path = std::env::temp_dir().join(format!("pf-removal-{}", std::process::id()));
    std::fs::write(&path, server.kubeconfig()).expect("kubeconfig");
    let kubeconfig = Kubeconfig(path);
    let target = ApiTarget::Kubeconfig(kubeconfig.0.clone());
    let ds = ObjectKey::new("podfence-system", "podfence");
    let ask = |timeout| daemonset_state(&target, &ds, timeout);
    let second = Duration::from_secs(1);

    assert_eq!(ask(TIMEOUT), DaemonSetState::Gone);
    assert_eq!(ask(TIMEOUT).on_stop(), OnStop::Clean, "removed: clean");

    server.apply(daemonset(false)).expect("apply");
    assert_eq!(ask(TIMEOUT), DaemonSetState::Present);
    assert_eq!(ask(TIMEOUT).on_stop(), OnStop::Keep, "a rollout: keep");
    let other = ObjectKey::new("podfence-system", "another");
    assert_eq!(
        daemonset_state(&target, &other, TIMEOUT),
        DaemonSetState::Gone,
        "by name"
    );

    server.apply(daemonset(true)).expect("apply");
    assert_eq!(ask(TIMEOUT), DaemonSetState::Deleting);
    assert_eq!(
        ask(TIMEOUT).on_stop(),
        OnStop::Clean,
        "being deleted: clean"
    );

    server.apply(daemonset(false)).expect("apply");
    server.set_unavailable(true);
    let state = ask(TIMEOUT);
    assert!(matches!(state, DaemonSetState::Unknown(_)), "{state:?}");
    assert_eq!(state.on_stop(), OnStop::Keep, "no answer: keep");
    server.set_unavailable(false);

    server.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let state = ask(second);
    assert!(
        matches!(&state, DaemonSetState::Unknown(why) if why.contains("within")),
        "{state:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up in time"
    );
    assert_eq!(state.on_stop(), OnStop::Keep);
    server.set_delay(Duration::ZERO);

    server.delete(Resource::DaemonSets, "podfence-system", "podfence");
    assert_eq!(ask(TIMEOUT), DaemonSetState::Gone);
}

const TIMEOUT: Duration = Duration::from_secs(10);
