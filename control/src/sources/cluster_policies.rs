//! The cluster-scoped policy CRDs as a source: ClusterNetworkPolicy in the
//! newest version served (`v1beta1`, then `v1alpha2`), and the older
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`v1alpha1`) if served.
//!
//! A CRD may be missing, or be installed, upgraded or removed while the
//! agent runs: per kind, discovery decides which version to watch and is
//! asked again every `rediscover`; while a kind is not served it counts as
//! listed empty. The three kinds are one index kind (one set of tiers), so
//! their streams are merged ([`Merger`]): a relist of one kind is handed on
//! as a relist of all three, from what the others last listed, and nothing
//! is handed on until each has listed once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::runtime::watcher::Event as WatchEvent;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::index::{Change, Event};
use crate::model::{
    ClusterNetworkPolicy, ClusterPolicyKey, ModelError, ObjectKey, ObjectRef, PolicyApi,
};

/// The API group of all three kinds.
const GROUP: &str = "policy.networking.k8s.io";

/// Each kind read, with its versions, newest first.
const KINDS: [(&str, &[(&str, PolicyApi)]); 3] = [
    (
        "ClusterNetworkPolicy",
        &[
            ("v1beta1", PolicyApi::ClusterV1beta1),
            ("v1alpha2", PolicyApi::ClusterV1alpha2),
        ],
    ),
    ("AdminNetworkPolicy", &[("v1alpha1", PolicyApi::Admin)]),
    (
        "BaselineAdminNetworkPolicy",
        &[("v1alpha1", PolicyApi::BaselineAdmin)],
    ),
];

type Result<T, E = ModelError> = std::result::Result<T, E>;
type Tagged = (usize, Event<ClusterNetworkPolicy>);

/// The newest version of kind `k` (of [`KINDS`]) the server serves, if any.
async fn served(
    client: &Client,
    k: usize,
) -> Result<Option<(ApiResource, PolicyApi)>, kube::Error> {
    let group = match kube::discovery::group(client, GROUP).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (kind, versions) = KINDS[k];
    Ok(versions.iter().find_map(|&(version, api)| {
        group
            .versioned_resources(version)
            .into_iter()
            .find(|(r, _)| r.kind == kind)
            .map(|(r, _)| (r, api))
    }))
}

/// One object of `api` reduced to the model.
fn reduce(api: PolicyApi, o: &DynamicObject) -> Result<ClusterNetworkPolicy> {
    let value = serde_json::to_value(o).map_err(|e| ModelError {
        object: ObjectRef {
            kind: api.kind().into(),
            key: ObjectKey::cluster_scoped(o.name_any()),
        },
        field: String::new(),
        message: e.to_string(),
    })?;
    ClusterNetworkPolicy::from_value(api, &value)
}

/// Watches kind `k` in the version discovery finds, asked again every
/// `every`, sending its events tagged with `k`. Returns when `tx` closes.
async fn watch_kind(
    client: Client,
    k: usize,
    every: Duration,
    mut tx: futures::channel::mpsc::Sender<Tagged>,
) {
    let kind = KINDS[k].0;
    // `Some(None)`: listed empty while nothing is served.
    let mut watching: Option<Option<PolicyApi>> = None;
    loop {
        let (resource, api) = match served(&client, k).await {
            Err(e) => {
                if tx
                    .send((k, Event::Failed(format!("discovery: {e}"))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(None) => {
                if watching != Some(None) {
                    info!(kind, "not served: none is enforced");
                    for event in [Event::ListStarted, Event::ListDone] {
                        if tx.send((k, event)).await.is_err() {
                            return;
                        }
                    }
                    watching = Some(None);
                }
                tokio::time::sleep(every).await;
                continue;
            }
            Ok(Some(found)) => found,
        };
        info!(kind, version = api.api_version(), "watching");
        watching = Some(Some(api));
        let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let key = move |o: &DynamicObject| ClusterPolicyKey::new(api, &o.name_any());
        let events = watcher::watcher(objects, watcher::Config::default())
            .default_backoff()
            .map(move |event| match event {
                Ok(WatchEvent::Init) => Event::ListStarted,
                Ok(WatchEvent::InitApply(o)) => Event::Listed(key(&o), reduce(api, &o)),
                Ok(WatchEvent::InitDone) => Event::ListDone,
                Ok(WatchEvent::Apply(o)) => Event::Applied(key(&o), reduce(api, &o)),
                Ok(WatchEvent::Delete(o)) => Event::Deleted(key(&o)),
                Err(e) => Event::Failed(e.to_string()),
            });
        let mut events = std::pin::pin!(events);
        let mut check = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { break };
                    if tx.send((k, event)).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(check) => {
                    check = tokio::time::Instant::now() + every;
                    match served(&client, k).await {
                        Ok(Some((_, now))) if now == api => {}
                        // Another version, none, or discovery failing:
                        // look again from the top.
                        _ => break,
                    }
                }
            }
        }
    }
}

/// The changes of all three kinds as one index kind (see the module doc).
/// Runs as tasks of the current runtime.
pub(super) fn changes(
    client: &Client,
    every: Duration,
) -> impl Stream<Item = Change> + Send + use<> {
    let (tx, rx) = futures::channel::mpsc::channel::<Tagged>(256);
    for k in 0..KINDS.len() {
        tokio::spawn(watch_kind(client.clone(), k, every, tx.clone()));
    }
    let mut merger = Merger::default();
    rx.flat_map(move |(k, event)| {
        futures::stream::iter(merger.feed(k, event).into_iter().map(Change::from))
    })
}

/// What one kind last listed, and the list it is making.
#[derive(Default)]
struct Family {
    listed: bool,
    objects: BTreeMap<ClusterPolicyKey, Result<ClusterNetworkPolicy>>,
    relist: Option<BTreeMap<ClusterPolicyKey, Result<ClusterNetworkPolicy>>>,
}

/// Merges the events of the three kinds into events of one index kind.
#[derive(Default)]
pub(super) struct Merger {
    families: [Family; KINDS.len()],
}

impl Merger {
    fn all_listed(&self) -> bool {
        self.families.iter().all(|f| f.listed)
    }

    /// The events to hand on for event `event` of kind `k`.
    pub(super) fn feed(
        &mut self,
        k: usize,
        event: Event<ClusterNetworkPolicy>,
    ) -> Vec<Event<ClusterNetworkPolicy>> {
        let family = &mut self.families[k];
        match event {
            Event::ListStarted => {
                family.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::Listed(key, object) => {
                family.relist.get_or_insert_default().insert(key, object);
                Vec::new()
            }
            Event::ListDone => {
                family.objects = family.relist.take().unwrap_or_default();
                family.listed = true;
                if !self.all_listed() {
                    return Vec::new();
                }
                let mut out = vec![Event::ListStarted];
                for f in &self.families {
                    for (key, object) in &f.objects {
                        out.push(Event::Listed(key.clone(), object.clone()));
                    }
                }
                out.push(Event::ListDone);
                out
            }
            Event::Applied(key, object) => {
                family.objects.insert(key.clone(), object.clone());
                if self.all_listed() {
                    vec![Event::Applied(key, object)]
                } else {
                    Vec::new()
                }
            }
            Event::Deleted(key) => {
                family.objects.remove(&key);
                if self.all_listed() {
                    vec![Event::Deleted(key)]
                } else {
                    Vec::new()
                }
            }
            Event::Failed(message) => vec![Event::Failed(format!("{}: {message}", KINDS[k].0))],
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(api: PolicyApi, name: &str) -> ClusterNetworkPolicy {
        let doc = json!({"metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}}});
        ClusterNetworkPolicy::from_value(api, &doc).unwrap()
    }

    fn names(events: &[Event<ClusterNetworkPolicy>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::ListStarted => "start".to_owned(),
                Event::Listed(k, _) => format!("listed {k}"),
                Event::ListDone => "done".to_owned(),
                Event::Applied(k, _) => format!("applied {k}"),
                Event::Deleted(k) => format!("deleted {k}"),
                Event::Failed(m) => format!("failed {m}"),
            })
            .collect()
    }

    fn list(m: &mut Merger, k: usize, objects: &[ClusterNetworkPolicy]) -> Vec<String> {
        let mut out = m.feed(k, Event::ListStarted);
        for o in objects {
            out.extend(m.feed(k, Event::Listed(o.key(), Ok(o.clone()))));
        }
        out.extend(m.feed(k, Event::ListDone));
        names(&out)
    }

    #[test]
    fn nothing_is_handed_on_until_every_kind_listed_and_a_relist_covers_all() {
        let mut m = Merger::default();
        let cnp = policy(PolicyApi::ClusterV1beta1, "a");
        let anp = policy(PolicyApi::Admin, "a");
        assert!(list(&mut m, 0, std::slice::from_ref(&cnp)).is_empty());
        let early = m.feed(0, Event::Applied(cnp.key(), Ok(cnp.clone())));
        assert!(early.is_empty(), "held until every kind listed");
        assert!(list(&mut m, 1, std::slice::from_ref(&anp)).is_empty());
        assert_eq!(
            list(&mut m, 2, &[]),
            [
                "start",
                "listed ClusterNetworkPolicy a",
                "listed AdminNetworkPolicy a",
                "done"
            ]
        );
        // A relist of one kind keeps the others' objects.
        assert_eq!(
            list(&mut m, 0, &[]),
            ["start", "listed AdminNetworkPolicy a", "done"]
        );
        assert_eq!(
            names(&m.feed(1, Event::Deleted(anp.key()))),
            ["deleted AdminNetworkPolicy a"]
        );
        assert_eq!(
            names(&m.feed(2, Event::Failed("gone".into()))),
            ["failed BaselineAdminNetworkPolicy: gone"]
        );
    }
}
