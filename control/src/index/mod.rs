//! The cluster state, whatever it comes from.
//!
//! Sources (the Kubernetes watchers, the manifest files) turn what they read
//! into [`Event`]s of one kind each; [`ClusterIndex`] applies them to a
//! [`Cluster`] and says whether the cluster changed, so that a generation is
//! compiled and published only when something policy depends on did:
//! - an object equal to the one held (an update of conditions, annotations,
//!   `resourceVersion` or restart counts, which the model does not keep) is
//!   [`Outcome::Unchanged`] and the held `Arc` stays;
//! - a relist (`ListStarted` … `ListDone`) is buffered and replaces that
//!   kind's whole set at once, never half of it; objects equal to the held
//!   ones keep their `Arc`;
//! - nothing counts as ready until every kind has listed once (the readiness
//!   gate), so tables never reflect a half-known cluster;
//! - an object the model rejects is reported by name and skipped; its last
//!   good version (if any) stays, and so does everything else.
//!
//! The index does no I/O: sources feed it, [`crate::publish`] compiles what
//! it holds.

mod cluster;
mod cni;
mod kinds;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tracing::{info, warn};

pub use cluster::{Cluster, same_objects};
pub use cni::OverlaidCluster;
pub use kinds::{Indexed, Kind};

use crate::metrics::{ControlMetrics, ObjectLabels};
use crate::model::ModelError;

/// One thing a source said about one kind, already reduced to the model.
#[derive(Debug)]
pub enum Event<K: Indexed> {
    /// A (re)list of the kind begins.
    ListStarted,
    /// An object of the list being made.
    Listed(K::Key, Result<K, ModelError>),
    /// The list is complete.
    ListDone,
    /// An object was added or modified.
    Applied(K::Key, Result<K, ModelError>),
    /// An object was deleted.
    Deleted(K::Key),
    /// The source failed (it retries).
    Failed(String),
}

/// An [`Event`] of any kind, as a stream of several kinds carries it.
pub struct Change(Box<dyn ApplyEvent>);

impl<K: Indexed> From<Event<K>> for Change {
    fn from(event: Event<K>) -> Self {
        Self(Box::new(event))
    }
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event that knows its kind, so that a [`Change`] applies without a
/// `match` over kinds.
trait ApplyEvent: fmt::Debug + Send {
    fn apply_to(self: Box<Self>, index: &mut ClusterIndex) -> Outcome;
}

impl<K: Indexed> ApplyEvent for Event<K> {
    fn apply_to(self: Box<Self>, index: &mut ClusterIndex) -> Outcome {
        index.apply_event(*self)
    }
}

/// What applying an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// The cluster changed (or a kind listed for the first time): a new
    /// generation is due.
    Changed,
    /// Nothing the model keeps changed.
    Unchanged,
    /// Held for the end of a relist.
    Buffered,
    /// The object was rejected; its last good version stays.
    Rejected,
    /// The source reported an error.
    Failed,
}

impl Outcome {
    /// Whether a new generation is due.
    #[must_use]
    pub fn changed(self) -> bool {
        self == Self::Changed
    }
}

/// Changed if either changed, else unchanged.
impl std::ops::BitOr for Outcome {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        if self.changed() || other.changed() {
            Self::Changed
        } else {
            Self::Unchanged
        }
    }
}

/// Counters of the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Events applied.
    pub events: u64,
    /// Updates ignored because nothing the model keeps changed.
    pub unchanged: u64,
    /// Objects skipped because the model rejects them.
    pub malformed: u64,
    /// Lists completed (the first per kind and every relist).
    pub lists: u64,
    /// Source errors (each followed by a retry).
    pub errors: u64,
}

/// A relist being buffered: good objects, and the keys of rejected ones.
struct Relist<K: Indexed> {
    objects: Vec<K>,
    rejected: Vec<K::Key>,
}

impl<K: Indexed> Default for Relist<K> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

/// The cluster as a source describes it (see the module doc).
#[derive(Default)]
pub struct ClusterIndex {
    cluster: Cluster,
    /// Per kind, the relist being buffered (a `Relist<K>` of that kind).
    relisting: [Option<Box<dyn Any + Send>>; Kind::COUNT],
    listed: [bool; Kind::COUNT],
    stats: IndexStats,
    metrics: Option<ControlMetrics>,
}

impl fmt::Debug for ClusterIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterIndex")
            .field("cluster", &self.cluster)
            .field("listed", &self.listed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn kind_label(kind: Kind) -> ObjectLabels {
    vec![("kind", kind.name().to_owned())]
}

impl ClusterIndex {
    /// An index that also counts into `metrics`.
    #[must_use]
    pub fn with_metrics(metrics: ControlMetrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

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
    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// Applies one change of any kind.
    pub fn apply(&mut self, change: impl Into<Change>) -> Outcome {
        change.into().0.apply_to(self)
    }

    /// Replaces every kind with the objects of `cluster`, as if each kind
    /// had been relisted (a manifest reload): objects equal to the held ones
    /// keep their `Arc`, and a state that changes nothing is
    /// [`Outcome::Unchanged`].
    pub fn replace_all(&mut self, cluster: Cluster) -> Outcome {
        cluster.relist_into(self)
    }

    /// One complete list of a kind.
    fn relist<K: Indexed>(&mut self, objects: BTreeMap<K::Key, Arc<K>>) -> Outcome {
        let _ = self.apply_event(Event::<K>::ListStarted);
        for (key, object) in objects {
            let _ = self.apply_event(Event::Listed(key, Ok(Arc::unwrap_or_clone(object))));
        }
        self.apply_event(Event::<K>::ListDone)
    }

    /// Applies one event of kind `K`.
    pub fn apply_event<K: Indexed>(&mut self, event: Event<K>) -> Outcome {
        self.stats.events += 1;
        match event {
            Event::ListStarted => {
                self.relisting[K::KIND.index()] = Some(Box::new(Relist::<K>::default()));
                Outcome::Buffered
            }
            Event::Listed(_, Ok(object)) => {
                self.relist_buffer::<K>().objects.push(object);
                Outcome::Buffered
            }
            Event::Listed(key, Err(error)) => {
                self.rejected::<K>(&key, &error);
                self.relist_buffer::<K>().rejected.push(key);
                Outcome::Rejected
            }
            Event::ListDone => self.list_done::<K>(),
            Event::Applied(_, Ok(object)) => {
                let held = K::objects(&self.cluster).get(&object.key());
                if held.is_some_and(|held| **held == object) {
                    self.unchanged::<K>();
                    Outcome::Unchanged
                } else {
                    self.cluster.apply(object);
                    Outcome::Changed
                }
            }
            Event::Applied(key, Err(error)) => {
                self.rejected::<K>(&key, &error);
                Outcome::Rejected
            }
            Event::Deleted(key) => {
                if self.cluster.delete::<K>(&key) {
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                }
            }
            Event::Failed(error) => {
                self.stats.errors += 1;
                if let Some(m) = &self.metrics {
                    m.watch_errors.get_or_create(&kind_label(K::KIND)).inc();
                }
                warn!(
                    kind = K::KIND.name(),
                    error, "watch failed; retrying with backoff"
                );
                Outcome::Failed
            }
        }
    }

    fn relist_buffer<K: Indexed>(&mut self) -> &mut Relist<K> {
        self.relisting[K::KIND.index()]
            .get_or_insert_with(|| Box::new(Relist::<K>::default()))
            .downcast_mut::<Relist<K>>()
            .expect("a kind's relist buffer holds objects of that kind")
    }

    /// Swaps the buffered list in for the kind's whole set.
    fn list_done<K: Indexed>(&mut self) -> Outcome {
        let relist = self.relisting[K::KIND.index()]
            .take()
            .and_then(|b| b.downcast::<Relist<K>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        let old = std::mem::take(K::objects_mut(&mut self.cluster));
        let mut new = BTreeMap::new();
        for object in relist.objects {
            let key = object.key();
            let kept = old.get(&key).filter(|held| ***held == object).cloned();
            new.insert(key, kept.unwrap_or_else(|| Arc::new(object)));
        }
        for key in relist.rejected {
            if let Some(previous) = old.get(&key) {
                new.insert(key, Arc::clone(previous));
            }
        }
        let same = same_objects(&old, &new);
        *K::objects_mut(&mut self.cluster) = new;
        self.stats.lists += 1;
        if let Some(m) = &self.metrics {
            m.watch_lists.get_or_create(&kind_label(K::KIND)).inc();
        }
        let first = !self.listed[K::KIND.index()];
        if first {
            info!(kind = K::KIND.name(), "listed");
        }
        self.listed[K::KIND.index()] = true;
        if first || !same {
            Outcome::Changed
        } else {
            self.unchanged::<K>();
            Outcome::Unchanged
        }
    }

    fn unchanged<K: Indexed>(&mut self) {
        self.stats.unchanged += 1;
        if let Some(m) = &self.metrics {
            m.unchanged_updates
                .get_or_create(&kind_label(K::KIND))
                .inc();
        }
    }

    fn rejected<K: Indexed>(&mut self, key: &K::Key, error: &ModelError) {
        self.stats.malformed += 1;
        let key = K::object_key(key);
        if let Some(m) = &self.metrics {
            let labels = vec![
                ("kind", K::KIND.name().to_owned()),
                ("namespace", key.namespace.clone()),
                ("name", key.name.clone()),
            ];
            m.rejected_objects.get_or_create(&labels).inc();
        }
        warn!(
            kind = K::KIND.name(),
            namespace = key.namespace,
            name = key.name,
            error = %error,
            "object skipped: podfence cannot use it; its last good version (if any) stays"
        );
    }
}

#[cfg(test)]
mod tests;
