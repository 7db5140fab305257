//! The candidate policy state of a diff: the current manifests with some
//! policies deleted and the candidate manifests overlaid, and what changes
//! between the two states.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::index::Cluster;
use crate::model::ClusterPolicyKey;
use crate::sources::manifests::{self, LoadErrors, Manifests};

/// Policies named by `--delete-policy`: `NAMESPACE/NAME`, where either part
/// may be `*` for any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPattern {
    /// The namespace, `None` for any.
    pub namespace: Option<String>,
    /// The name, `None` for any.
    pub name: Option<String>,
}

impl PolicyPattern {
    /// Whether it names the policy `namespace/name`.
    #[must_use]
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.name.as_deref().is_none_or(|n| n == name)
    }

    /// Whether it names one policy, without wildcards.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        self.namespace.is_some() && self.name.is_some()
    }
}

impl std::str::FromStr for PolicyPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let part = |p: &str| (p != "*").then(|| p.to_owned());
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: part(ns),
                    name: part(name),
                })
            }
            _ => Err(format!(
                "'{s}' is not NAMESPACE/NAME (either part may be *, e.g. 'shop/*')"
            )),
        }
    }
}

impl fmt::Display for PolicyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.namespace.as_deref().unwrap_or("*"),
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// Why the candidate state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The candidate manifests do not load.
    #[error("the candidate manifests cannot be used")]
    Load(#[source] LoadErrors),
    /// `--delete-policy` names a policy the current manifests do not have.
    #[error("--delete-policy {pattern}: the current manifests have no {kind} {name}")]
    NoSuchPolicy {
        /// The pattern as given.
        pattern: String,
        /// The kind it names.
        kind: &'static str,
        /// The policy's name (`namespace/name` for a NetworkPolicy).
        name: String,
    },
}

/// The candidate policy state: the current manifests with the policies
/// `delete` names removed, then the candidate manifests on top.
///
/// The candidate's objects (namespaces, pods, policies) replace the current
/// objects of the same kind, namespace and name and add new ones; nothing
/// else of the current state changes, so a file with one new policy asks
/// what that policy would do. `--delete-policy` patterns apply to the
/// current policies only: a policy the candidate defines stays, whatever
/// the patterns say. `current_paths` are the paths `current` was loaded
/// from (they are read again: the overlay is a load of all paths in order,
/// exactly as `--manifests CURRENT... CANDIDATE...` would be).
pub fn load_candidate(
    current_paths: &[PathBuf],
    current: &Manifests,
    candidate_paths: &[PathBuf],
    delete: &[PolicyPattern],
) -> Result<Manifests, CandidateError> {
    for p in delete.iter().filter(|p| p.is_exact()) {
        let (ns, name) = (p.namespace.as_deref(), p.name.as_deref());
        let cluster = &current.cluster;
        let found = cluster
            .policies
            .keys()
            .any(|k| Some(k.namespace.as_str()) == ns && Some(k.name.as_str()) == name)
            || cluster
                .cluster_policies
                .keys()
                .any(|k| p.matches(k.kind(), &k.name));
        if !found {
            let (kind, name) = match ns.and_then(|kind| ClusterPolicyKey::of_kind(kind, "")) {
                Some(key) => (key.kind(), name.unwrap_or_default().to_owned()),
                None => ("NetworkPolicy", p.to_string()),
            };
            return Err(CandidateError::NoSuchPolicy {
                pattern: p.to_string(),
                kind,
                name,
            });
        }
    }
    let mut out = if candidate_paths.is_empty() {
        current.clone()
    } else {
        let all: Vec<PathBuf> = current_paths
            .iter()
            .chain(candidate_paths)
            .cloned()
            .collect();
        manifests::load(&all).map_err(CandidateError::Load)?
    };
    if !delete.is_empty() {
        // Which policies the candidate itself defines (they are kept).
        let defined = if candidate_paths.is_empty() {
            Cluster::default()
        } else {
            manifests::load(candidate_paths)
                .map_err(CandidateError::Load)?
                .cluster
        };
        out.cluster.policies.retain(|key, _| {
            defined.policies.contains_key(key)
                || !delete.iter().any(|p| p.matches(&key.namespace, &key.name))
        });
        // Cluster-scoped policies are named KIND/NAME.
        out.cluster.cluster_policies.retain(|key, _| {
            defined.cluster_policies.contains_key(key)
                || !delete.iter().any(|p| p.matches(key.kind(), &key.name))
        });
    }
    Ok(out)
}

/// What the candidate changes in the cluster state, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Policies only the candidate has (`namespace/name`).
    pub policies_added: Vec<String>,
    /// Policies both have, with different content.
    pub policies_changed: Vec<String>,
    /// Policies only the current state has.
    pub policies_deleted: Vec<String>,
    /// Cluster-scoped policies only the candidate has (`Kind name`).
    pub cluster_policies_added: Vec<String>,
    /// Cluster-scoped policies both have, with different content.
    pub cluster_policies_changed: Vec<String>,
    /// Cluster-scoped policies only the current state has.
    pub cluster_policies_deleted: Vec<String>,
    /// Pods added, changed or gone.
    pub pods: usize,
    /// Namespaces added, changed or gone.
    pub namespaces: usize,
}

impl StateChanges {
    /// Compares two states.
    #[must_use]
    pub fn between(current: &Cluster, candidate: &Cluster) -> Self {
        let mut out = Self::default();
        for (k, p) in &candidate.policies {
            match current.policies.get(k) {
                None => out.policies_added.push(k.to_string()),
                Some(q) if q != p => out.policies_changed.push(k.to_string()),
                Some(_) => {}
            }
        }
        for k in current.policies.keys() {
            if !candidate.policies.contains_key(k) {
                out.policies_deleted.push(k.to_string());
            }
        }
        for (k, p) in &candidate.cluster_policies {
            match current.cluster_policies.get(k) {
                None => out.cluster_policies_added.push(k.to_string()),
                Some(q) if q != p => out.cluster_policies_changed.push(k.to_string()),
                Some(_) => {}
            }
        }
        for k in current.cluster_policies.keys() {
            if !candidate.cluster_policies.contains_key(k) {
                out.cluster_policies_deleted.push(k.to_string());
            }
        }
        out.pods = differing(&current.pods, &candidate.pods);
        out.namespaces = differing(&current.namespaces, &candidate.namespaces);
        out
    }

    /// Whether the states are the same.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.policies_added.is_empty()
            && self.policies_changed.is_empty()
            && self.policies_deleted.is_empty()
            && self.cluster_policies_added.is_empty()
            && self.cluster_policies_changed.is_empty()
            && self.cluster_policies_deleted.is_empty()
            && self.pods == 0
            && self.namespaces == 0
    }
}

impl fmt::Display for StateChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change to the cluster state");
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("adds", &self.policies_added),
            ("changes", &self.policies_changed),
            ("deletes", &self.policies_deleted),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} NetworkPolicy {}", list.join(", ")));
            }
        }
        for (what, list) in [
            ("adds", &self.cluster_policies_added),
            ("changes", &self.cluster_policies_changed),
            ("deletes", &self.cluster_policies_deleted),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        }
        if self.pods > 0 {
            parts.push(format!("changes {} pod(s)", self.pods));
        }
        if self.namespaces > 0 {
            parts.push(format!("changes {} namespace(s)", self.namespaces));
        }
        f.write_str(&parts.join("; "))
    }
}

fn differing<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    changed + b.keys().filter(|k| !a.contains_key(*k)).count()
}
