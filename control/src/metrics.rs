//! Control-plane metrics: generation, compile time, propagation latency,
//! watch lists and errors, unchanged and rejected objects, denials.
//!
//! They are updated where they happen (the index, the publisher, the denial
//! reporter); [`crate::agent::metrics`] serves them over HTTP beside the
//! workers' counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming an object.
pub type ObjectLabels = Vec<(&'static str, String)>;

/// Control-plane metrics, shared by the publisher and the source.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// Generation in force.
    pub generation: Gauge,
    /// Seconds per compile.
    pub compile_seconds: Histogram,
    /// Pods the CNI added (`change="added"`, replicas) or released
    /// (`change="removed"`) put in force without a compile.
    pub pods_without_compile: Family<ObjectLabels, Counter>,
    /// Seconds from the oldest change a generation reflects to it being
    /// live.
    pub propagation_seconds: Histogram,
    /// Watch stream errors (each followed by a retry), by kind.
    pub watch_errors: Family<ObjectLabels, Counter>,
    /// Lists completed (initial and relists), by kind.
    pub watch_lists: Family<ObjectLabels, Counter>,
    /// Updates ignored because nothing podfence keeps changed, by kind.
    pub unchanged_updates: Family<ObjectLabels, Counter>,
    /// Objects skipped because podfence cannot use them, by kind, namespace
    /// and name.
    pub rejected_objects: Family<ObjectLabels, Counter>,
    /// Connection attempts and packets denied, by direction and by each
    /// isolating NetworkPolicy (a denial counts for every policy that
    /// isolates the pod in that direction) or by the ClusterNetworkPolicy
    /// (or AdminNetworkPolicy) rule that denied: labels `direction`,
    /// `kind`, `namespace` (empty for cluster-scoped kinds), `policy`,
    /// `tier` and `rule` (empty for NetworkPolicy).
    pub denials: Family<ObjectLabels, Counter>,
    /// Connection attempts that pods in audit mode let through although
    /// policy would deny them, by direction and isolating policy.
    pub audit_denials: Family<ObjectLabels, Counter>,
    /// Denied packets by (direction, `namespace/policy`), for `status`.
    pub denial_totals: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    /// Denied packets the reporter never saw: its queue was full.
    pub denials_lost: Counter,
    /// Denied packets decided by a generation no longer kept.
    pub denials_unattributed: Counter,
    /// Deny log lines held back by the per-pair rate.
    pub deny_log_held_back: Counter,
    /// Denied packets not captured: over the capture rate.
    pub captures_skipped: Counter,
    /// Notices about the tier policies in force: pairs of equal priority
    /// in one tier, and policies partly unsupported (`domainNames`).
    pub tier_notices: Gauge,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            generation: Gauge::default(),
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            pods_without_compile: Family::default(),
            propagation_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            watch_errors: Family::default(),
            watch_lists: Family::default(),
            unchanged_updates: Family::default(),
            rejected_objects: Family::default(),
            denials: Family::default(),
            audit_denials: Family::default(),
            denial_totals: Arc::default(),
            denials_lost: Counter::default(),
            denials_unattributed: Counter::default(),
            deny_log_held_back: Counter::default(),
            captures_skipped: Counter::default(),
            tier_notices: Gauge::default(),
        }
    }
}

impl ControlMetrics {
    /// Denied packets so far by direction and isolating policy.
    #[must_use]
    pub fn denial_totals(&self) -> Vec<((String, String), u64)> {
        self.denial_totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "podfence_tier_notices",
            "Notices about the ClusterNetworkPolicies in force: equal priorities in a tier (ordered by name), parts not enforced (domainNames)",
            self.tier_notices.clone(),
        );
        registry.register(
            "podfence_table_generation",
            "Policy table generation in force",
            self.generation.clone(),
        );
        registry.register(
            "podfence_compile_seconds",
            "Time to compile a table generation",
            self.compile_seconds.clone(),
        );
        registry.register(
            "podfence_pods_without_compile",
            "Pods the CNI added (change=added: like pods compiled already) or released (change=removed) put in force without a compile",
            self.pods_without_compile.clone(),
        );
        registry.register(
            "podfence_propagation_seconds",
            "From the oldest cluster change a generation reflects to the generation being live",
            self.propagation_seconds.clone(),
        );
        registry.register(
            "podfence_watch_errors",
            "Watch stream errors, each followed by a retry",
            self.watch_errors.clone(),
        );
        registry.register(
            "podfence_watch_lists",
            "Complete lists (initial and relists)",
            self.watch_lists.clone(),
        );
        registry.register(
            "podfence_unchanged_updates",
            "Updates ignored because nothing podfence keeps changed (no generation published)",
            self.unchanged_updates.clone(),
        );
        registry.register(
            "podfence_rejected_objects",
            "Objects skipped because podfence cannot use them; their last good version stays",
            self.rejected_objects.clone(),
        );
        registry.register(
            "podfence_denials",
            "Denied packets (connection attempts and revoked connections), by direction and isolating NetworkPolicy or denying tier rule",
            self.denials.clone(),
        );
        registry.register(
            "podfence_audit_denials",
            "Connection attempts passed in audit mode that policy would deny, by direction and isolating NetworkPolicy or denying tier rule",
            self.audit_denials.clone(),
        );
        registry.register(
            "podfence_denials_lost",
            "Denied packets not reported (deny log, capture, by-policy counts): the queue was full",
            self.denials_lost.clone(),
        );
        registry.register(
            "podfence_denials_unattributed",
            "Denied packets decided by a table generation no longer kept, not counted by policy",
            self.denials_unattributed.clone(),
        );
        registry.register(
            "podfence_deny_log_held_back",
            "Deny log lines held back by the per-address-pair rate (counted in the pair's next line)",
            self.deny_log_held_back.clone(),
        );
        registry.register(
            "podfence_captures_skipped",
            "Denied packets not captured because of the capture rate",
            self.captures_skipped.clone(),
        );
    }
}
