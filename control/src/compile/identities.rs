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
    /// For each endpoint, the selector ids (live or not) that match it and
    /// its named-port profile: remembered for endpoints whose pod and
    /// namespace objects are unchanged, worked out for the rest; selectors
    /// new since the last compile are checked on every endpoint.
    pub(super) fn endpoint_facts(&self, memo: &mut Memo) -> (Vec<EndpointMemo>, bool) {
        if memo.profiles.items.is_empty() {
            memo.profiles.intern(Vec::new());
        }
        let known = memo.selectors_checked as usize;
        let mut previous = ByName::new(std::mem::take(&mut memo.endpoints));
        let mut facts = Vec::with_capacity(self.endpoints.len());
        let mut fresh = Vec::new();
        let mut namespace: Option<&Arc<Namespace>> = None;
        // The namespace's name as the tables have it, one for its pods.
        let mut namespace_name: Option<Arc<str>> = None;
        for (e, pod) in self.endpoints.iter().enumerate() {
            // Endpoints come by namespace: look each namespace up once.
            if e == 0 || self.endpoints[e - 1].namespace != pod.namespace {
                namespace = self.cluster.namespaces.get(&pod.namespace);
                namespace_name = None;
            }
            let same_pod = |m: &EndpointMemo| Arc::ptr_eq(&m.pod, pod);
            let held = previous.take_fast(same_pod, pod.name_key());
            let same = |m: &EndpointMemo| {
                Arc::ptr_eq(&m.pod, pod)
                    && match (&m.namespace, namespace) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            };
            let name = match held {
                Some(m) if same(&m) => {
                    namespace_name.get_or_insert_with(|| Arc::clone(&m.name.namespace));
                    facts.push(m);
                    continue;
                }
                // The pod's object changed, its name did not.
                Some(m) => m.name,
                None => ObjectName {
                    namespace: Arc::clone(
                        namespace_name.get_or_insert_with(|| pod.namespace.as_str().into()),
                    ),
                    name: pod.name.as_str().into(),
                },
            };
            let mut ports = pod.named_ports.clone();
            ports.sort();
            ports.dedup();
            facts.push(EndpointMemo {
                pod: Arc::clone(pod),
                name,
                namespace: namespace.cloned(),
                facts: EndpointFacts {
                    matched: Vec::new(),
                    profile: memo.profiles.intern(ports),
                },
            });
            fresh.push(e as u32);
        }
        let selectors = &memo.selectors.items;
        let mut is_fresh = vec![false; self.endpoints.len()];
        for &e in &fresh {
            is_fresh[e as usize] = true;
        }
        let mut candidates = Vec::new();
        for (sid, selector) in selectors.iter().enumerate() {
            let new = sid >= known;
            if !new && fresh.len() <= FEW_FRESH {
                for &e in &fresh {
                    let pod = self.endpoints[e as usize];
                    let namespace = self.cluster.namespaces.get(&pod.namespace);
                    if selector.matches(pod, namespace.map(AsRef::as_ref)) {
                        facts[e as usize].facts.matched.push(sid as u32);
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
        (facts, previous.same_names())
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
