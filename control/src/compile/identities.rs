//! Identities: addresses that no rule can tell apart share one. What each
//! endpoint contributes to its identity (the selector peers it matches, its
//! named ports) is remembered per pod and worked out again only for pods
//! or selectors that are new.

use std::sync::Arc;

use podfence_datapath::tables::ObjectName;

use super::memo::{ByName, EndpointFacts, EndpointMemo, Memo, NameKey};
use super::pass::Pass;
use super::peers::SelectorPeer;
use crate::model::{LabelSelector, Namespace};

/// Identity key: selector-peer signature (`NOT_A_POD` for other addresses),
/// ipBlock signature, and the named-port profile of a pod (0 when unused).
pub(super) type IdentityKey = (u32, u32, u32);
pub(super) const NOT_A_POD: u32 = u32::MAX;

/// Fresh endpoints up to this many are checked one by one against the
/// known selectors; more, and each selector scans its namespaces instead.
pub(super) const FEW_FRESH: usize = 64;

impl Pass<'_> {
    /// Finds the endpoints (the pods with addresses of their own, in name
    /// order, into `self.endpoints` and `self.by_namespace`) and, for each,
    /// the selector ids (live or not) that match it and its named-port
    /// profile: remembered for endpoints whose pod and namespace objects are
    /// unchanged, worked out for the rest; selectors new since the last
    /// compile are checked on every endpoint.
    pub(super) fn endpoint_facts(&mut self, memo: &mut Memo) -> (Vec<EndpointMemo>, bool) {
        if memo.profiles.items.is_empty() {
            memo.profiles.intern(Vec::new());
        }
        let known = memo.selectors_checked as usize;
        let mut last = std::mem::take(&mut memo.endpoints);
        let mut previous = ByName::new(&mut last);
        let mut facts = std::mem::take(&mut memo.spare_endpoints);
        facts.clear();
        facts.reserve(previous.len() + 64);
        let mut fresh = Vec::new();
        let cluster = self.cluster;
        // The namespace of the endpoints being walked (they come by
        // namespace): its object, its name as the tables have it (one `Arc`
        // for its pods), and where its endpoints start.
        let mut namespace: Option<&Arc<Namespace>> = None;
        let mut namespace_name: Option<Arc<str>> = None;
        let mut namespace_start = ("", 0);
        // Entries at the front of `previous` kept as they are, to be moved
        // to `facts` in one go.
        let mut kept = 0;
        for pod in cluster.pods.values() {
            // An endpoint of the last compile whose pod and namespace
            // objects are unchanged is known without reading the pod.
            if let Some(run) = &namespace_name
                && let Some(m) = previous.ahead(kept)
                && Arc::ptr_eq(&m.pod, pod)
                && Arc::ptr_eq(&m.name.namespace, run)
                && same_namespace_object(m, namespace)
            {
                kept += 1;
                self.endpoints.push(pod);
                continue;
            }
            previous.move_to(kept, &mut facts);
            kept = 0;
            let held = match previous.next_if(|m| Arc::ptr_eq(&m.pod, pod)) {
                Some(m) => Some(m),
                None if !pod.is_policy_endpoint() => continue,
                None => previous.take(pod.name_key()),
            };
            let e = facts.len() as u32;
            let same_namespace = match (&namespace_name, &held) {
                (None, _) => false,
                (Some(run), Some(m)) if Arc::ptr_eq(run, &m.name.namespace) => true,
                (Some(run), _) => **run == *pod.namespace,
            };
            let run = if same_namespace && let Some(run) = &namespace_name {
                run
            } else {
                if e > 0 {
                    self.by_namespace
                        .insert(namespace_start.0, namespace_start.1..e);
                }
                namespace_start = (pod.namespace.as_str(), e);
                namespace = cluster.namespaces.get(&pod.namespace);
                namespace_name.insert(held.as_ref().map_or_else(
                    || pod.namespace.as_str().into(),
                    |m| Arc::clone(&m.name.namespace),
                ))
            };
            self.endpoints.push(pod);
            let name = match held {
                Some(mut m) => {
                    if !Arc::ptr_eq(run, &m.name.namespace) {
                        // Share the namespace's name, so that the next
                        // compile tells it by pointer.
                        m.name.namespace = Arc::clone(run);
                    }
                    if Arc::ptr_eq(&m.pod, pod) && same_namespace_object(&m, namespace) {
                        facts.push(m);
                        continue;
                    }
                    // The pod's object changed, its name did not.
                    m.name
                }
                None => ObjectName {
                    namespace: Arc::clone(run),
                    name: pod.name.as_str().into(),
                },
            };
            let mut ports = pod.named_ports.clone();
            ports.sort();
            ports.dedup();
            let endpoint_facts = EndpointFacts {
                matched: Vec::new(),
                profile: memo.profiles.intern(ports),
            };
            let local = self.is_local(pod);
            facts.push(EndpointMemo::new(
                Arc::clone(pod),
                name,
                namespace.cloned(),
                local,
                endpoint_facts,
            ));
            fresh.push(e);
        }
        previous.move_to(kept, &mut facts);
        if !facts.is_empty() {
            self.by_namespace
                .insert(namespace_start.0, namespace_start.1..facts.len() as u32);
        }
        let same_names = previous.same_names();
        memo.spare_endpoints = last;
        self.match_selectors(memo, known, &fresh, &mut facts);
        (facts, same_names)
    }

    /// Adds to the endpoints' matched selectors the selectors new since the
    /// last compile (ids from `known` on), and every selector to the
    /// `fresh` endpoints (made anew this compile).
    fn match_selectors(
        &self,
        memo: &mut Memo,
        known: usize,
        fresh: &[u32],
        facts: &mut [EndpointMemo],
    ) {
        let selectors = &memo.selectors.items;
        let mut is_fresh = vec![false; self.endpoints.len()];
        for &e in fresh {
            is_fresh[e as usize] = true;
        }
        let mut candidates = Vec::new();
        for (sid, selector) in selectors.iter().enumerate() {
            let new = sid >= known;
            if !new && fresh.len() <= FEW_FRESH {
                for &e in fresh {
                    let pod = self.endpoints[e as usize];
                    let endpoint = &mut facts[e as usize];
                    if selector.matches(pod, endpoint.namespace.as_deref()) {
                        endpoint.facts.matched.push(sid as u32);
                    }
                }
                continue;
            }
            candidates.clear();
            match selector {
                SelectorPeer::InNamespace(ns, pods) => self.select_in(ns, pods, &mut candidates),
                SelectorPeer::InNamespaces(ns_sel, pods) => {
                    for ns in self.cluster.namespaces.values() {
                        if ns_sel.matches(&ns.labels) {
                            self.select_in(&ns.name, pods, &mut candidates);
                        }
                    }
                }
            }
            for &e in &candidates {
                if new || is_fresh[e as usize] {
                    facts[e as usize].facts.matched.push(sid as u32);
                }
            }
        }
        memo.selectors_checked = selectors.len() as u32;
    }

    /// Endpoints of `namespace` matching `selector`.
    pub(super) fn select_in(&self, namespace: &str, selector: &LabelSelector, out: &mut Vec<u32>) {
        if let Some(pods) = self.by_namespace.get(namespace) {
            out.extend(
                pods.clone()
                    .filter(|&i| selector.matches(&self.endpoints[i as usize].labels)),
            );
        }
    }
}

/// Whether `m` was made with the namespace object `namespace`.
fn same_namespace_object(m: &EndpointMemo, namespace: Option<&Arc<Namespace>>) -> bool {
    match (&m.namespace, namespace) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
