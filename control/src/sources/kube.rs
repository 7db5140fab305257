//! The Kubernetes API as a source: watchers for Namespaces, Pods, Nodes,
//! NetworkPolicies, Services, EndpointSlices and ClusterNetworkPolicies
//! feeding the [`ClusterIndex`], whose changes are compiled and published.
//!
//! ClusterNetworkPolicy (and the older AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy) are CRDs that may be missing, or installed,
//! changed or removed while the agent runs: discovery decides which version
//! to watch (ClusterNetworkPolicy: the newest served of `v1beta1`,
//! `v1alpha2`) and is asked again every [`SourceOptions::rediscover`];
//! while a kind is not served it is listed as empty, so readiness does not
//! wait for it (see `cluster_policies`).
//!
//! Each kind is watched with kube-runtime's `watcher` (list, then watch from
//! the list's resourceVersion; resumes from the last version seen after a
//! dropped stream, relists after 410 Gone, backs off on errors). Objects are
//! reduced to the model's small structs ([`Namespace::from_resource`] and
//! friends) as they arrive: labels, addresses, phase, node, ports, rules,
//! Service addresses and ports, endpoint conditions and topology; nothing
//! else is kept.
//!
//! [`ClusterIndex`] applies the events (relists swapped in whole, the
//! readiness gate, rejected objects, updates that change nothing the model
//! keeps: see [`crate::index`]).
//!
//! [`run`] publishes one generation per debounce window: the first change
//! after a publish opens the window, changes within it join the generation,
//! and the generation carries the time of the oldest change it reflects. A
//! generation is published only when something changed, so neither an
//! update of a pod's status nor an unreachable API publishes anything.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::runtime::watcher::Event as WatchEvent;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::index::{Change, ClusterIndex, Event, IndexStats, Indexed};
use crate::model::{EndpointSlice, ModelError, Namespace, NetworkPolicy, Node, Pod, Service};
use crate::publish::TablePublisher;

/// The changes of one kind's watch stream, reduced by `reduce`.
fn changes<R, K>(
    api: Api<R>,
    reduce: fn(&R) -> Result<K, ModelError>,
) -> impl Stream<Item = Change> + Send
where
    R: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K: Indexed,
{
    let key = |o: &R| K::key_of(&o.namespace().unwrap_or_default(), &o.name_any());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            Change::from(match event {
                Ok(WatchEvent::Init) => Event::<K>::ListStarted,
                Ok(WatchEvent::InitApply(o)) => Event::Listed(key(&o), reduce(&o)),
                Ok(WatchEvent::InitDone) => Event::ListDone,
                Ok(WatchEvent::Apply(o)) => Event::Applied(key(&o), reduce(&o)),
                Ok(WatchEvent::Delete(o)) => Event::Deleted(key(&o)),
                Err(e) => Event::Failed(e.to_string()),
            })
        })
}

/// Every watched kind's changes, merged; discovery is asked again every
/// `rediscover` (see the module doc). Spawns a task on the current runtime.
pub fn cluster_changes(
    client: &Client,
    rediscover: Duration,
) -> impl Stream<Item = Change> + Send + use<> {
    futures::stream::select_all([
        changes(
            Api::<core::Namespace>::all(client.clone()),
            Namespace::from_resource,
        )
        .boxed(),
        changes(Api::<core::Pod>::all(client.clone()), Pod::from_resource).boxed(),
        changes(
            Api::<net::NetworkPolicy>::all(client.clone()),
            NetworkPolicy::from_resource,
        )
        .boxed(),
        changes(
            Api::<core::Service>::all(client.clone()),
            Service::from_resource,
        )
        .boxed(),
        changes(
            Api::<discovery::EndpointSlice>::all(client.clone()),
            EndpointSlice::from_resource,
        )
        .boxed(),
        changes(Api::<core::Node>::all(client.clone()), Node::from_resource).boxed(),
        super::cluster_policies::changes(client, rediscover).boxed(),
    ])
}

/// How often discovery is asked again, by default, which
/// ClusterNetworkPolicy version the server serves (a CRD installed,
/// upgraded or removed).
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(30);

/// Source settings.
#[derive(Clone, Copy, Debug)]
pub struct SourceOptions {
    /// How long changes are gathered into one generation after the first.
    pub debounce: Duration,
    /// How often discovery is asked again which ClusterNetworkPolicy
    /// version is served.
    pub rediscover: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(5),
            rediscover: REDISCOVER_EVERY,
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
) -> IndexStats {
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
                if index.apply(change).changed() && pending.is_none() {
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
                        services = index.cluster().services.len(),
                        endpoint_slices = index.cluster().endpoint_slices.len(),
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

pub(crate) async fn client(target: &ApiTarget) -> Result<Client, SourceError> {
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
    thread: Option<std::thread::JoinHandle<Result<IndexStats, SourceError>>>,
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
                        cluster_changes(&client, options.rediscover),
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
    pub fn stop(mut self) -> Result<IndexStats, SourceError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<IndexStats, SourceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(SourceError::Client("the source thread panicked".into())),
            None => Ok(IndexStats::default()),
        }
    }
}

impl Drop for SourceThread {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
