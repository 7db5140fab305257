//! The Kubernetes API as a source: watchers for Namespaces, Pods and
//! NetworkPolicies feeding an index that is compiled and published.
//!
//! Each kind is watched with kube-runtime's `watcher` (list, then watch from
//! the list's resourceVersion; resumes from the last version seen after a
//! dropped stream, relists after 410 Gone, backs off on errors). Objects are
//! reduced to the model's small structs ([`Namespace::from_resource`] and
//! friends) as they arrive: labels, addresses, phase, node, ports, rules;
//! nothing else is kept.
//!
//! [`ClusterIndex`] applies the events:
//! - a relist (`Init` … `InitDone`) is buffered and replaces that kind's
//!   whole set at once, never half of it;
//! - nothing is published until every kind has listed once (the readiness
//!   gate), so the tables never reflect a half-known cluster;
//! - an object the model rejects is reported by name and skipped; the last
//!   good version of it (if any) stays, and so does everything else.
//!
//! [`run`] publishes one generation per debounce window: the first change
//! after a publish opens the window, changes within it join the generation,
//! and the generation carries the time of the oldest change it reflects. A
//! generation is published only when something changed, so while the API is
//! unreachable the tables in force stay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::agent::TablePublisher;
use crate::agent::metrics::{ControlMetrics, ObjectLabels};
use crate::model::{Cluster, ModelError, Namespace, NetworkPolicy, Pod};

/// The kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Namespaces.
    Namespace = 0,
    /// Pods.
    Pod = 1,
    /// NetworkPolicies.
    NetworkPolicy = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// An object reduced to what podfence uses.
#[derive(Clone, Debug)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
    /// A policy.
    NetworkPolicy(NetworkPolicy),
}

/// `(namespace, name)`; namespaces have an empty namespace.
pub type Key = (String, String);

/// One thing a watch stream said, already reduced.
#[derive(Debug)]
pub enum Change {
    /// A (re)list of the kind begins.
    ListStarted(Kind),
    /// An object of the list being made.
    Listed(Kind, Key, Result<Object, ModelError>),
    /// The list is complete.
    ListDone(Kind),
    /// An object was added or modified.
    Applied(Kind, Key, Result<Object, ModelError>),
    /// An object was deleted.
    Deleted(Kind, Key),
    /// The stream failed (it retries with backoff).
    Failed(Kind, String),
}

/// Counters of the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Events applied.
    pub events: u64,
    /// Objects skipped because the model rejects them.
    pub malformed: u64,
    /// Lists completed (the first per kind and every relist).
    pub lists: u64,
    /// Stream errors (each followed by a retry).
    pub errors: u64,
}

/// The cluster as the watch streams describe it.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    cluster: Cluster,
    /// Per kind, the relist being buffered: good objects, and the keys of
    /// rejected ones.
    relisting: [Option<(Vec<Object>, Vec<Key>)>; 3],
    listed: [bool; 3],
    stats: SourceStats,
    metrics: Option<ControlMetrics>,
}

fn kind_label(kind: Kind) -> ObjectLabels {
    vec![("kind", kind.name().to_owned())]
}

impl ClusterIndex {
    /// The cluster now.
    #[must_use]
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Whether every kind has been listed once.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.listed.iter().all(|&l| l)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    fn insert(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => self.cluster.apply_namespace(ns),
            Object::Pod(pod) => self.cluster.apply_pod(pod),
            Object::NetworkPolicy(np) => self.cluster.apply_policy(np),
        }
    }

    fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::Namespace => self.cluster.namespaces.remove(&key.1).is_some(),
            Kind::Pod => self.cluster.pods.remove(key).is_some(),
            Kind::NetworkPolicy => self.cluster.policies.remove(key).is_some(),
        }
    }

    fn take_kind(&mut self, kind: Kind) -> Vec<Object> {
        match kind {
            Kind::Namespace => std::mem::take(&mut self.cluster.namespaces)
                .into_values()
                .map(|o| Object::Namespace(Arc::unwrap_or_clone(o)))
                .collect(),
            Kind::Pod => std::mem::take(&mut self.cluster.pods)
                .into_values()
                .map(|o| Object::Pod(Arc::unwrap_or_clone(o)))
                .collect(),
            Kind::NetworkPolicy => std::mem::take(&mut self.cluster.policies)
                .into_values()
                .map(|o| Object::NetworkPolicy(Arc::unwrap_or_clone(o)))
                .collect(),
        }
    }

    /// An index that also counts into `metrics`.
    #[must_use]
    pub fn with_metrics(metrics: ControlMetrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    fn rejected(&mut self, kind: Kind, key: &Key, error: &ModelError) {
        self.stats.malformed += 1;
        if let Some(m) = &self.metrics {
            let labels = vec![
                ("kind", kind.name().to_owned()),
                ("namespace", key.0.clone()),
                ("name", key.1.clone()),
            ];
            m.rejected_objects.get_or_create(&labels).inc();
        }
        warn!(
            kind = kind.name(),
            namespace = key.0,
            name = key.1,
            error = %error,
            "object skipped: podfence cannot use it; its last good version (if any) stays"
        );
    }

    /// Applies one change; returns whether the cluster changed.
    pub fn apply(&mut self, change: Change) -> bool {
        self.stats.events += 1;
        match change {
            Change::ListStarted(kind) => {
                self.relisting[kind as usize] = Some((Vec::new(), Vec::new()));
                false
            }
            Change::Listed(kind, key, result) => {
                match result {
                    Ok(object) => self.relisting[kind as usize]
                        .get_or_insert_default()
                        .0
                        .push(object),
                    Err(e) => {
                        self.rejected(kind, &key, &e);
                        self.relisting[kind as usize]
                            .get_or_insert_default()
                            .1
                            .push(key);
                    }
                }
                false
            }
            Change::ListDone(kind) => {
                let (objects, rejected) = self.relisting[kind as usize].take().unwrap_or_default();
                let old: BTreeMap<Key, Object> = self
                    .take_kind(kind)
                    .into_iter()
                    .map(|o| (key_of(&o), o))
                    .collect();
                for object in objects {
                    self.insert(object);
                }
                for key in rejected {
                    if let Some(previous) = old.get(&key) {
                        self.insert(previous.clone());
                    }
                }
                self.stats.lists += 1;
                if let Some(m) = &self.metrics {
                    m.watch_lists.get_or_create(&kind_label(kind)).inc();
                }
                if !self.listed[kind as usize] {
                    info!(kind = kind.name(), "listed");
                }
                self.listed[kind as usize] = true;
                true
            }
            Change::Applied(kind, key, result) => match result {
                Ok(object) => {
                    self.insert(object);
                    true
                }
                Err(e) => {
                    self.rejected(kind, &key, &e);
                    false
                }
            },
            Change::Deleted(kind, key) => self.remove(kind, &key),
            Change::Failed(kind, error) => {
                self.stats.errors += 1;
                if let Some(m) = &self.metrics {
                    m.watch_errors.get_or_create(&kind_label(kind)).inc();
                }
                warn!(
                    kind = kind.name(),
                    error, "watch failed; retrying with backoff"
                );
                false
            }
        }
    }
}

fn key_of(object: &Object) -> Key {
    match object {
        Object::Namespace(ns) => (String::new(), ns.name.clone()),
        Object::Pod(p) => (p.namespace.clone(), p.name.clone()),
        Object::NetworkPolicy(np) => (np.namespace.clone(), np.name.clone()),
    }
}

/// The changes of one kind's watch stream.
fn changes<K>(
    api: Api<K>,
    kind: Kind,
    reduce: fn(&K) -> Result<Object, ModelError>,
) -> impl Stream<Item = Change> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| match event {
            Ok(Event::Init) => Change::ListStarted(kind),
            Ok(Event::InitApply(o)) => Change::Listed(kind, key(&o), reduce(&o)),
            Ok(Event::InitDone) => Change::ListDone(kind),
            Ok(Event::Apply(o)) => Change::Applied(kind, key(&o), reduce(&o)),
            Ok(Event::Delete(o)) => Change::Deleted(kind, key(&o)),
            Err(e) => Change::Failed(kind, e.to_string()),
        })
}

/// The three kinds' changes, merged.
pub fn cluster_changes(client: &Client) -> impl Stream<Item = Change> + Send + use<> {
    futures::stream::select_all([
        changes(
            Api::<core::Namespace>::all(client.clone()),
            Kind::Namespace,
            |o| Namespace::from_resource(o).map(Object::Namespace),
        )
        .boxed(),
        changes(Api::<core::Pod>::all(client.clone()), Kind::Pod, |o| {
            Pod::from_resource(o).map(Object::Pod)
        })
        .boxed(),
        changes(
            Api::<net::NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            |o| NetworkPolicy::from_resource(o).map(Object::NetworkPolicy),
        )
        .boxed(),
    ])
}

/// Source settings.
#[derive(Clone, Copy, Debug)]
pub struct SourceOptions {
    /// How long changes are gathered into one generation after the first.
    pub debounce: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(5),
        }
    }
}

/// Applies `changes` and publishes through `tables` (see the module doc)
/// until `changes` ends or `stop` resolves. `on_publish` is called after
/// each publish with the index (the first call is the initial sync).
pub async fn run(
    changes: impl Stream<Item = Change> + Send,
    tables: &TablePublisher,
    options: SourceOptions,
    stop: impl std::future::Future<Output = ()>,
    mut on_publish: impl FnMut(&ClusterIndex, u64),
) -> SourceStats {
    let mut index = ClusterIndex::with_metrics(tables.metrics().clone());
    let mut changes = std::pin::pin!(changes);
    let mut stop = std::pin::pin!(stop);
    // When the oldest unpublished change was seen.
    let mut pending: Option<Instant> = None;
    let started = Instant::now();
    loop {
        let deadline = pending
            .filter(|_| index.ready())
            .map(|t| tokio::time::Instant::from_std(t + options.debounce));
        tokio::select! {
            () = &mut stop => break,
            change = changes.next() => {
                let Some(change) = change else { break };
                if index.apply(change) && pending.is_none() {
                    pending = Some(Instant::now());
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let first = tables.generation() == 0;
                let published = tables.publish(index.cluster(), pending.take());
                if first {
                    info!(
                        initial_sync_ms = started.elapsed().as_secs_f64() * 1e3,
                        namespaces = index.cluster().namespaces.len(),
                        pods = index.cluster().pods.len(),
                        policies = index.cluster().policies.len(),
                        "initial sync published"
                    );
                }
                on_publish(&index, published.generation);
            }
        }
    }
    index.stats()
}

/// Where the API is.
#[derive(Clone, Debug)]
pub enum ApiTarget {
    /// A kubeconfig file (its current context).
    Kubeconfig(std::path::PathBuf),
    /// The service account of the pod the agent runs in.
    InCluster,
}

/// Why the source could not connect.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The kubeconfig could not be used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No in-cluster configuration.
    #[error(
        "in-cluster configuration: {0} (is the agent running in a pod with a service account?)"
    )]
    InCluster(String),
    /// The client could not be built.
    #[error("kube client: {0}")]
    Client(String),
    /// The tokio runtime could not be started.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

async fn client(target: &ApiTarget) -> Result<Client, SourceError> {
    let config = match target {
        ApiTarget::Kubeconfig(path) => {
            let err = |message: String| SourceError::Kubeconfig {
                path: path.clone(),
                message,
            };
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| err(e.to_string()))?
        }
        ApiTarget::InCluster => {
            kube::Config::incluster().map_err(|e| SourceError::InCluster(e.to_string()))?
        }
    };
    Client::try_from(config).map_err(|e| SourceError::Client(e.to_string()))
}

/// The source on a thread of its own (with its own tokio runtime),
/// publishing through a [`TablePublisher`].
#[derive(Debug)]
pub struct SourceThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<SourceStats, SourceError>>>,
}

impl SourceThread {
    /// Connects to `target` and runs [`run`] until [`stop`](Self::stop).
    /// `on_publish` runs on the source thread after every publish.
    pub fn spawn(
        target: ApiTarget,
        tables: TablePublisher,
        options: SourceOptions,
        on_publish: impl FnMut(&ClusterIndex, u64) + Send + 'static,
    ) -> Result<Self, SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SourceError::Runtime)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pf-kube-source".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let client = client(&target).await?;
                    let stopped = async {
                        let _ = stopped.await;
                    };
                    Ok(run(
                        cluster_changes(&client),
                        &tables,
                        options,
                        stopped,
                        on_publish,
                    )
                    .await)
                })
            })
            .map_err(SourceError::Runtime)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether the source thread ended (it only does on a connection
    /// setup error, or after [`stop`](Self::stop)).
    #[must_use]
    pub fn finished(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Stops the source and returns its counters.
    pub fn stop(mut self) -> Result<SourceStats, SourceError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<SourceStats, SourceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(SourceError::Client("the source thread panicked".into())),
            None => Ok(SourceStats::default()),
        }
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkPolicy;

    fn ns(name: &str) -> Object {
        Object::Namespace(Namespace::implicit(name))
    }

    fn policy(ns: &str, name: &str) -> Object {
        let np: net::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        Object::NetworkPolicy(NetworkPolicy::from_resource(&np).unwrap())
    }

    fn bad(ns: &str, name: &str) -> ModelError {
        let np: net::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}
        }))
        .unwrap();
        NetworkPolicy::from_resource(&np).unwrap_err()
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    fn list(index: &mut ClusterIndex, kind: Kind, objects: Vec<Object>) {
        index.apply(Change::ListStarted(kind));
        for o in objects {
            index.apply(Change::Listed(kind, key_of(&o), Ok(o)));
        }
        index.apply(Change::ListDone(kind));
    }

    #[test]
    fn ready_only_when_every_kind_listed() {
        let mut index = ClusterIndex::default();
        list(&mut index, Kind::Namespace, vec![ns("a")]);
        list(&mut index, Kind::Pod, vec![]);
        assert!(!index.ready());
        list(&mut index, Kind::NetworkPolicy, vec![policy("a", "p")]);
        assert!(index.ready());
        assert_eq!(index.cluster().policies.len(), 1);
    }

    #[test]
    fn a_relist_replaces_the_whole_set_at_its_end() {
        let mut index = ClusterIndex::default();
        list(
            &mut index,
            Kind::NetworkPolicy,
            vec![policy("a", "p"), policy("a", "q")],
        );
        index.apply(Change::ListStarted(Kind::NetworkPolicy));
        let r = policy("a", "r");
        index.apply(Change::Listed(Kind::NetworkPolicy, key("a", "r"), Ok(r)));
        // Half listed: the old set is still in force.
        assert_eq!(index.cluster().policies.len(), 2);
        assert!(index.apply(Change::ListDone(Kind::NetworkPolicy)));
        let names: Vec<_> = index.cluster().policies.keys().cloned().collect();
        assert_eq!(names, vec![key("a", "r")]);
    }

    #[test]
    fn a_rejected_object_keeps_its_last_good_version() {
        let mut index = ClusterIndex::default();
        list(&mut index, Kind::NetworkPolicy, vec![policy("a", "p")]);
        let changed = index.apply(Change::Applied(
            Kind::NetworkPolicy,
            key("a", "p"),
            Err(bad("a", "p")),
        ));
        assert!(!changed);
        assert!(index.cluster().policies.contains_key(&key("a", "p")));
        // Also across a relist, beside the good objects of the list.
        index.apply(Change::ListStarted(Kind::NetworkPolicy));
        index.apply(Change::Listed(
            Kind::NetworkPolicy,
            key("a", "p"),
            Err(bad("a", "p")),
        ));
        let q = policy("a", "q");
        index.apply(Change::Listed(Kind::NetworkPolicy, key("a", "q"), Ok(q)));
        index.apply(Change::ListDone(Kind::NetworkPolicy));
        assert_eq!(index.cluster().policies.len(), 2);
        assert_eq!(index.stats().malformed, 2);
    }

    #[test]
    fn deletes_remove_and_report_change() {
        let mut index = ClusterIndex::default();
        list(&mut index, Kind::Namespace, vec![ns("a"), ns("b")]);
        assert!(index.apply(Change::Deleted(Kind::Namespace, key("", "a"))));
        assert!(!index.apply(Change::Deleted(Kind::Namespace, key("", "a"))));
        assert_eq!(index.cluster().namespaces.len(), 1);
    }
}
