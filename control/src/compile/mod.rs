//! Cluster state to datapath tables.
//!
//! The compiler does all of NetworkPolicy's set algebra once, so that the
//! datapath's classifier is a few lookups (see `podfence_datapath::tables`):
//!
//! - **peer selectors** (`podSelector`/`namespaceSelector` pairs) and
//!   **ipBlocks** are interned; each pod gets the set of selector peers it
//!   matches, each address range the set of ipBlocks that contain it (holes
//!   from `except` included), resolved by longest prefix;
//! - an **identity** is a distinct combination of those sets (plus, when
//!   egress rules use named ports, the pod's named ports): addresses that no
//!   rule can tell apart share one;
//! - a **group** is the list of policies that isolate a local pod in one
//!   direction (plus its named ports when those policies use named ports);
//!   pods with the same group share its allow entries;
//! - for each group and each identity some rule of the group admits, one
//!   entry holds the union of the admitted protocol/port ranges, each range
//!   tagged with its policy and rule for attribution.
//!
//! Compiling is incremental: a [`Compiler`] kept from one generation to the
//! next remembers, per object, what it derived from it (the selector peers
//! each pod matches, each policy's peers resolved, the ipBlock signature
//! maps, the pod and policy name lists) and recomputes that only for the
//! objects that changed, which it tells by the `Arc` each object is stored
//! in (see [`Cluster`]). When the identities, the groups and the policies
//! are all the last compile's, the groups' allow entries are too: the last
//! tables' are shared (`groups`). What it reuses gives the same tables as
//! compiling from scratch, identity and group numbers included.
//!
//! Named ports resolve per pod by name and protocol: for ingress on the
//! protected pod, for egress on the destination pod. For egress they resolve
//! only when the destination is a pod reached through a selector peer or a
//! rule without peers; a destination matched by an `ipBlock`, or an address
//! that is no pod, has no named ports.

mod groups;
mod identities;
mod memo;
mod pass;
mod peers;
mod replica;
mod services;
mod tiers;

use std::net::IpAddr;
use std::sync::Arc;

use podfence_datapath::Tables;

use crate::index::Cluster;
use crate::model::{ObjectKey, Pod};

use memo::{Memo, NameKey};
use pass::Pass;
pub use replica::NeedsCompile;
pub use services::{
    CompiledServices, ServiceCompiler, ServicesConfig, compile_services, compile_services_with,
};

/// Which pods this node enforces policy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locality {
    /// Every pod (offline evaluation of a whole cluster).
    AllPods,
    /// Pods whose `spec.nodeName` is this node; other pods are peers only.
    Node(String),
}

impl Locality {
    /// Whether `pod` is one of the pods enforced here.
    #[must_use]
    pub fn includes(&self, pod: &Pod) -> bool {
        match self {
            Self::AllPods => true,
            Self::Node(n) => pod.node.as_deref() == Some(n.as_str()),
        }
    }

    /// Addresses of the pods of `cluster` enforced here that policy applies
    /// to, sorted.
    #[must_use]
    pub fn addresses(&self, cluster: &Cluster) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = cluster
            .pods
            .values()
            .filter(|p| p.is_policy_endpoint() && self.includes(p))
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }
}

/// Compiler settings.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Generation number stamped on the tables.
    pub generation: u64,
    /// Which pods are enforced here.
    pub locality: Locality,
    /// A rule whose peers are more identities than this is stored once as a
    /// broad peer set (a bit per identity) instead of one entry per identity
    /// in every group that has it. Verdicts do not depend on it; table size
    /// and classify cost do.
    pub broad_threshold: usize,
    /// Addresses of this node beyond the `status.hostIPs` its pods report
    /// (the live agent passes every address of its host): traffic between
    /// them and the local pods is always allowed.
    pub node_addresses: Vec<IpAddr>,
    /// Audit every pod: policy is evaluated and what it would deny is
    /// reported, not dropped. Without it, only the pods of namespaces
    /// labelled [`AUDIT_LABEL`] are audited.
    pub audit: bool,
}

/// The namespace label that puts its pods in audit mode.
pub const AUDIT_LABEL: (&str, &str) = ("podfence.io/enforcement", "audit");

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            generation: 1,
            locality: Locality::AllPods,
            broad_threshold: BROAD_THRESHOLD,
            node_addresses: Vec::new(),
            audit: false,
        }
    }
}

/// Compiled tables and what the compiler noticed on the way.
#[derive(Debug)]
pub struct Compiled {
    /// The tables.
    pub tables: Tables,
    /// Problems that did not stop compilation (e.g. two pods on one address).
    pub warnings: Vec<String>,
    /// Facts about the input worth reporting that are no problem with it:
    /// tier policies of equal priority (ordered by name), parts of tier
    /// policies that are not enforced (`domainNames`).
    pub notices: Vec<String>,
}

/// Default of [`CompileOptions::broad_threshold`].
pub const BROAD_THRESHOLD: usize = 32;

/// Compiles a cluster state into tables, from scratch.
#[must_use]
pub fn compile(cluster: &Cluster, options: &CompileOptions) -> Compiled {
    Compiler::new(options.clone()).compile(cluster, options.generation)
}

/// Compiles successive states of one cluster, each from what changed since
/// the last (see the module documentation).
pub struct Compiler {
    options: CompileOptions,
    memo: Memo,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("options", &self.options)
            .field("endpoints", &self.memo.endpoints.len())
            .field("policies", &self.memo.policies.len())
            .finish_non_exhaustive()
    }
}

impl Compiler {
    /// A compiler with nothing remembered; `options.generation` is unused.
    #[must_use]
    pub fn new(options: CompileOptions) -> Self {
        Self {
            options,
            memo: Memo::default(),
        }
    }

    /// Which pods are enforced here.
    #[must_use]
    pub fn locality(&self) -> &Locality {
        &self.options.locality
    }

    /// The part of the last compiled state that policy decides on: its
    /// pods with addresses of their own, their namespaces, and the policies
    /// (for explaining verdicts of the tables it gave).
    #[must_use]
    pub fn compiled_state(&self) -> Cluster {
        let mut cluster = Cluster::default();
        for m in &self.memo.endpoints {
            cluster.pods.insert(m.pod.key(), Arc::clone(&m.pod));
            if let Some(ns) = &m.namespace {
                cluster
                    .namespaces
                    .entry(ns.name.clone())
                    .or_insert_with(|| Arc::clone(ns));
            }
        }
        for m in &self.memo.policies {
            cluster
                .policies
                .insert(m.policy.key(), Arc::clone(&m.policy));
        }
        for p in &self.memo.tier_policies {
            cluster.cluster_policies.insert(p.key(), Arc::clone(p));
        }
        cluster
    }

    /// Pod `key` as the last compile had it, if it was one of its
    /// endpoints (a pod with addresses): one pod of [`Self::compiled_state`].
    #[must_use]
    pub fn compiled_pod(&self, key: &ObjectKey) -> Option<&Arc<Pod>> {
        let wanted = (key.namespace.as_str(), key.name.as_str());
        let endpoints = &self.memo.endpoints;
        endpoints
            .binary_search_by(|m| m.name_key().cmp(&wanted))
            .ok()
            .map(|i| &endpoints[i].pod)
    }

    /// Addresses of the last compile's pods enforced here, sorted, without
    /// duplicates: [`Locality::addresses`] of the state it compiled, read
    /// from what it remembers instead of a walk of every pod.
    #[must_use]
    pub fn local_addresses(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self
            .memo
            .endpoints
            .iter()
            .filter(|m| m.local)
            .flat_map(|m| m.ips().iter().copied())
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }

    /// Compiles `cluster` into tables numbered `generation`.
    pub fn compile(&mut self, cluster: &Cluster, generation: u64) -> Compiled {
        if self.memo.is_mostly_garbage() {
            self.memo = Memo::default();
        }
        Pass::new(cluster, &self.options, generation).run(&mut self.memo)
    }
}
