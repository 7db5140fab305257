//! Pod addresses this node learned from its CNI plugin (`podfence-cni`),
//! before the cluster state has them.
//!
//! A pod's `status.podIPs` reaches the API, and then the agent, some time
//! after the runtime wired the pod; with manifests it may never. Until
//! then, the addresses the CNI chain assigned overlay the pod's empty
//! status. Once the state has addresses of its own for the pod, those win.
//! An entry is removed when the CNI releases the pod (DEL, or GC).
//!
//! [`OverlaidCluster`] keeps the state to compile (the source's, with the
//! CNI's addresses overlaid) up to date as either side changes, touching
//! only what changed: a CNI insert or release replaces one pod, a new
//! source state is merged in by comparing `Arc`s, and nothing is cloned
//! whole. An overlaid pod stays one `Arc` while neither its source object
//! nor its CNI entry changes, as the incremental compiler needs.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::Cluster;
use crate::model::{ObjectKey, Pod};

/// One pod's addresses from the CNI.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CniPod {
    /// The sandbox they were assigned to.
    container_id: String,
    /// The addresses, sorted.
    ips: Vec<IpAddr>,
    /// The source's pod that the overlaid state holds a copy of with these
    /// addresses; `None` while they are not overlaid (the pod is not in the
    /// state, has addresses of its own, or uses the host's network).
    replaced: Option<Arc<Pod>>,
}

/// A cluster state with the pod addresses the CNI reported overlaid (see
/// the module doc).
#[derive(Clone, Debug, Default)]
pub struct OverlaidCluster {
    /// The source's state with the overlay: what is compiled.
    cluster: Cluster,
    /// The CNI's entries, by pod.
    cni: BTreeMap<ObjectKey, CniPod>,
}

impl OverlaidCluster {
    /// The state with the CNI's addresses overlaid.
    #[must_use]
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Pod `key` as the source gave it (without the overlay).
    #[must_use]
    pub fn source_pod(&self, key: &ObjectKey) -> Option<&Arc<Pod>> {
        match self.cni.get(key).and_then(|c| c.replaced.as_ref()) {
            Some(source) => Some(source),
            None => self.cluster.pods.get(key),
        }
    }

    /// Makes `source` the source's state: the objects that are not the
    /// ones held (by `Arc`) are taken over, those gone are removed, and
    /// the pods among them get the CNI's addresses again where they need
    /// them. Costs a walk over the keys, and work for what changed only.
    pub fn update(&mut self, source: &Cluster) {
        let Cluster {
            namespaces,
            pods,
            policies,
            services,
            endpoint_slices,
            cluster_policies,
            nodes,
        } = &mut self.cluster;
        sync_map(namespaces, &source.namespaces);
        sync_map(policies, &source.policies);
        sync_map(services, &source.services);
        sync_map(endpoint_slices, &source.endpoint_slices);
        sync_map(cluster_policies, &source.cluster_policies);
        sync_map(nodes, &source.nodes);
        let cni = &self.cni;
        let changed = changed_entries(pods, &source.pods, |key, held, new| {
            let held_source = cni
                .get(key)
                .and_then(|c| c.replaced.as_ref())
                .unwrap_or(held);
            Arc::ptr_eq(held_source, new)
        });
        for (key, pod) in changed {
            self.place(&key, pod);
        }
    }

    /// Records that sandbox `container_id` of `pod` has `ips` (replacing an
    /// earlier sandbox's). Returns whether the overlaid state changed (the
    /// pod is in it, without addresses of its own, and did not have these).
    pub fn insert(&mut self, pod: &ObjectKey, container_id: &str, ips: &[IpAddr]) -> bool {
        let mut ips = ips.to_vec();
        ips.sort_unstable();
        ips.dedup();
        match self.cni.get_mut(pod) {
            Some(held) if held.container_id == container_id && held.ips == ips => return false,
            Some(held) => {
                container_id.clone_into(&mut held.container_id);
                held.ips = ips;
            }
            None => {
                self.cni.insert(
                    pod.clone(),
                    CniPod {
                        container_id: container_id.to_owned(),
                        ips,
                        replaced: None,
                    },
                );
            }
        }
        let source = self.source_pod(pod).cloned();
        self.place(pod, source)
    }

    /// Forgets `pod`'s addresses if they are sandbox `container_id`'s (a
    /// late release of an old sandbox leaves a newer one's). Returns
    /// `None` when there were none, else whether the overlaid state changed
    /// (they were overlaid).
    pub fn remove(&mut self, pod: &ObjectKey, container_id: &str) -> Option<bool> {
        if self
            .cni
            .get(pod)
            .is_none_or(|held| held.container_id != container_id)
        {
            return None;
        }
        Some(self.forget(pod))
    }

    /// Forgets every pod whose sandbox is not one of `valid`; returns them,
    /// and whether the overlaid state changed.
    pub fn retain_containers(&mut self, valid: &[String]) -> (Vec<ObjectKey>, bool) {
        let gone: Vec<ObjectKey> = self
            .cni
            .iter()
            .filter(|(_, p)| !valid.contains(&p.container_id))
            .map(|(key, _)| key.clone())
            .collect();
        let mut changed = false;
        for key in &gone {
            changed |= self.forget(key);
        }
        (gone, changed)
    }

    /// The addresses recorded for `pod`, and the sandbox they are for.
    #[must_use]
    pub fn cni_addresses(&self, pod: &ObjectKey) -> Option<(&str, &[IpAddr])> {
        self.cni
            .get(pod)
            .map(|p| (p.container_id.as_str(), p.ips.as_slice()))
    }

    /// Removes `pod`'s CNI entry and gives the state its source object
    /// back; returns whether the state changed.
    fn forget(&mut self, pod: &ObjectKey) -> bool {
        let Some(CniPod {
            replaced: Some(source),
            ..
        }) = self.cni.remove(pod)
        else {
            return false;
        };
        self.cluster.pods.insert(pod.clone(), source);
        true
    }

    /// Puts `source` (the source's pod `key`, or its absence) into the
    /// state, with the CNI's addresses when it needs them. Returns whether
    /// the state changed.
    fn place(&mut self, key: &ObjectKey, source: Option<Arc<Pod>>) -> bool {
        let entry = self.cni.get_mut(key);
        let placed = match (source, entry) {
            (Some(source), Some(cni)) if source.ips.is_empty() && !source.host_network => {
                let held = self.cluster.pods.get(key);
                let kept = cni
                    .replaced
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(r, &source))
                    && held.is_some_and(|made| made.ips == cni.ips);
                if kept {
                    return false;
                }
                let made = Arc::new(Pod {
                    ips: cni.ips.clone(),
                    ..Pod::clone(&source)
                });
                cni.replaced = Some(source);
                Some(made)
            }
            (source, entry) => {
                if let Some(cni) = entry {
                    cni.replaced = None;
                }
                source
            }
        };
        match placed {
            Some(pod) => {
                let same = self
                    .cluster
                    .pods
                    .get(key)
                    .is_some_and(|held| Arc::ptr_eq(held, &pod));
                if !same {
                    self.cluster.pods.insert(key.clone(), pod);
                }
                !same
            }
            None => self.cluster.pods.remove(key).is_some(),
        }
    }
}

/// The entries of `new` that `held` lacks or holds another object for
/// (`same` says whether a held object stands for the new one), and the
/// keys `new` no longer has (with `None`), in key order.
fn changed_entries<K: Ord + Clone, T>(
    held: &BTreeMap<K, Arc<T>>,
    new: &BTreeMap<K, Arc<T>>,
    same: impl Fn(&K, &Arc<T>, &Arc<T>) -> bool,
) -> Vec<(K, Option<Arc<T>>)> {
    let mut changed = Vec::new();
    let mut held = held.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        let order = match (held.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                let (key, _) = held.next().expect("peeked");
                changed.push((key.clone(), None));
            }
            Ordering::Greater => {
                let (key, object) = new.next().expect("peeked");
                changed.push((key.clone(), Some(Arc::clone(object))));
            }
            Ordering::Equal => {
                let (key, held_object) = held.next().expect("peeked");
                let (_, object) = new.next().expect("peeked");
                if !same(key, held_object, object) {
                    changed.push((key.clone(), Some(Arc::clone(object))));
                }
            }
        }
    }
    changed
}

/// Makes `held` hold the objects of `new`, touching only what differs.
fn sync_map<K: Ord + Clone, T>(held: &mut BTreeMap<K, Arc<T>>, new: &BTreeMap<K, Arc<T>>) {
    for (key, object) in changed_entries(held, new, |_, a, b| Arc::ptr_eq(a, b)) {
        match object {
            Some(object) => held.insert(key, object),
            None => held.remove(&key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodPhase;

    fn pod(name: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: crate::model::Labels::default(),
            node: None,
            host_network: false,
            phase: PodPhase::Pending,
            ips: ips.iter().map(|a| a.parse().unwrap()).collect(),
            host_ips: Vec::new(),
            named_ports: Vec::new(),
        }
    }

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("x", name)
    }

    /// The overlay as it was made before it was kept: a clone of the whole
    /// source state, the CNI's addresses given to its pods without any.
    fn cloned_overlay(source: &Cluster, overlaid: &OverlaidCluster) -> Cluster {
        let mut cluster = source.clone();
        for (key, pod) in &mut cluster.pods {
            if let Some((_, ips)) = overlaid.cni_addresses(key)
                && pod.ips.is_empty()
                && !pod.host_network
            {
                *pod = Arc::new(Pod {
                    ips: ips.to_vec(),
                    ..Pod::clone(pod)
                });
            }
        }
        cluster
    }

    /// The kept overlay equals the cloned one; pods the CNI has nothing
    /// for are the source's very objects, and each pod's source is known.
    fn check(source: &Cluster, overlaid: &OverlaidCluster) {
        assert_eq!(*overlaid.cluster(), cloned_overlay(source, overlaid));
        for (key, pod) in &source.pods {
            assert!(Arc::ptr_eq(overlaid.source_pod(key).unwrap(), pod), "{key}");
            if !Arc::ptr_eq(&overlaid.cluster().pods[key], pod) {
                assert!(overlaid.cni_addresses(key).is_some(), "{key}");
            }
        }
        for key in overlaid.cni.keys() {
            if !source.pods.contains_key(key) {
                assert!(overlaid.source_pod(key).is_none(), "{key}");
            }
        }
    }

    #[test]
    fn cni_addresses_fill_in_until_the_status_has_some() {
        let mut source = Cluster::default();
        source.apply(pod("new", &[]));
        source.apply(pod("old", &["10.0.0.9"]));
        let mut overlaid = OverlaidCluster::default();
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(Arc::ptr_eq(
            &overlaid.cluster().pods[&key("new")],
            &source.pods[&key("new")]
        ));

        assert!(overlaid.insert(&key("new"), "c1", &[ip("10.1.0.5")]));
        assert!(!overlaid.insert(&key("new"), "c1", &[ip("10.1.0.5")]));
        check(&source, &overlaid);
        assert_eq!(overlaid.cluster().pods[&key("new")].ips, [ip("10.1.0.5")]);
        let first = Arc::clone(&overlaid.cluster().pods[&key("new")]);

        // Another object changed: the overlaid pod is the same allocation
        // (for the incremental compiler).
        source.apply(pod("old", &["10.0.0.10"]));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(Arc::ptr_eq(&overlaid.cluster().pods[&key("new")], &first));

        // The source's pod replaced, still without addresses: overlaid anew.
        let mut relabelled = pod("new", &[]);
        relabelled.labels.insert("app".into(), "web".into());
        source.apply(relabelled);
        overlaid.update(&source);
        check(&source, &overlaid);
        assert_eq!(overlaid.cluster().pods[&key("new")].labels["app"], "web");

        // The status wins once it has addresses.
        source.apply(pod("new", &["10.1.0.7"]));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(Arc::ptr_eq(
            &overlaid.cluster().pods[&key("new")],
            &source.pods[&key("new")]
        ));
        assert_eq!(overlaid.cni_addresses(&key("new")).unwrap().0, "c1");
        // And the CNI's come back if the status loses them.
        source.apply(pod("new", &[]));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert_eq!(overlaid.cluster().pods[&key("new")].ips, [ip("10.1.0.5")]);
    }

    #[test]
    fn a_new_sandbox_replaces_the_addresses() {
        let mut source = Cluster::default();
        source.apply(pod("new", &[]));
        let mut overlaid = OverlaidCluster::default();
        overlaid.update(&source);
        assert!(overlaid.insert(&key("new"), "c1", &[ip("10.1.0.5")]));
        let first = Arc::clone(&overlaid.cluster().pods[&key("new")]);
        // The same addresses for another sandbox: nothing to compile.
        assert!(!overlaid.insert(&key("new"), "c2", &[ip("10.1.0.5")]));
        assert!(Arc::ptr_eq(&overlaid.cluster().pods[&key("new")], &first));
        assert_eq!(overlaid.cni_addresses(&key("new")).unwrap().0, "c2");
        assert!(overlaid.insert(&key("new"), "c3", &[ip("10.1.0.6"), ip("fd00::6")]));
        check(&source, &overlaid);
        assert_eq!(
            overlaid.cluster().pods[&key("new")].ips,
            [ip("10.1.0.6"), ip("fd00::6")]
        );
        assert_eq!(
            overlaid.remove(&key("new"), "c2"),
            None,
            "an old sandbox's release"
        );
        assert_eq!(overlaid.remove(&key("new"), "c3"), Some(true));
        check(&source, &overlaid);
        assert!(Arc::ptr_eq(
            &overlaid.cluster().pods[&key("new")],
            &source.pods[&key("new")]
        ));
    }

    #[test]
    fn entries_wait_for_their_pod_and_outlive_it() {
        let mut source = Cluster::default();
        let mut overlaid = OverlaidCluster::default();
        overlaid.update(&source);
        // Not in the state yet: recorded, the state unchanged.
        assert!(!overlaid.insert(&key("later"), "c1", &[ip("10.1.0.5")]));
        check(&source, &overlaid);
        assert!(overlaid.cluster().pods.is_empty());
        source.apply(pod("later", &[]));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert_eq!(overlaid.cluster().pods[&key("later")].ips, [ip("10.1.0.5")]);
        // The pod deleted from the state while the CNI still has it.
        source.pods.remove(&key("later"));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(overlaid.cluster().pods.is_empty());
        assert!(overlaid.cni_addresses(&key("later")).is_some());
        // Host-network pods keep the host's addresses.
        let mut host = pod("later", &[]);
        host.host_network = true;
        source.apply(host);
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(overlaid.cluster().pods[&key("later")].ips.is_empty());
    }

    #[test]
    fn releases_are_per_sandbox() {
        let mut source = Cluster::default();
        source.apply(pod("new", &[]));
        source.apply(pod("other", &[]));
        source.apply(pod("third", &["10.0.0.3"]));
        let mut overlaid = OverlaidCluster::default();
        overlaid.update(&source);
        overlaid.insert(&key("new"), "c1", &[ip("10.1.0.5")]);
        overlaid.insert(&key("new"), "c2", &[ip("10.1.0.6")]);
        assert_eq!(
            overlaid.remove(&key("new"), "c1"),
            None,
            "an old sandbox's release"
        );
        assert_eq!(
            overlaid.cni_addresses(&key("new")),
            Some(("c2", &[ip("10.1.0.6")][..]))
        );
        assert_eq!(overlaid.remove(&key("new"), "c2"), Some(true));
        assert_eq!(overlaid.remove(&key("new"), "c2"), None, "idempotent");
        check(&source, &overlaid);
        overlaid.insert(&key("new"), "c3", &[ip("10.1.0.7")]);
        overlaid.insert(&key("other"), "c4", &[ip("10.1.0.8")]);
        overlaid.insert(&key("third"), "c5", &[ip("10.1.0.9")]);
        overlaid.insert(&key("absent"), "c6", &[ip("10.1.0.10")]);
        check(&source, &overlaid);
        assert_eq!(
            overlaid.retain_containers(&["c4".into()]),
            (vec![key("absent"), key("new"), key("third")], true)
        );
        // Entries that were not overlaid: nothing to compile.
        overlaid.insert(&key("third"), "c7", &[ip("10.1.0.11")]);
        assert_eq!(
            overlaid.retain_containers(&["c4".into()]),
            (vec![key("third")], false)
        );
        check(&source, &overlaid);
        assert_eq!(overlaid.cluster().pods[&key("other")].ips, [ip("10.1.0.8")]);
        assert!(overlaid.cni_addresses(&key("new")).is_none());
    }

    #[test]
    fn other_kinds_follow_the_source() {
        use crate::model::Namespace;
        let mut source = Cluster::default();
        source.apply(Namespace::implicit("a"));
        source.apply(Namespace::implicit("b"));
        source.apply(pod("p", &[]));
        let mut overlaid = OverlaidCluster::default();
        overlaid.insert(&key("p"), "c1", &[ip("10.1.0.5")]);
        overlaid.update(&source);
        check(&source, &overlaid);
        let kept = Arc::clone(&overlaid.cluster().namespaces["a"]);
        source.namespaces.remove("b");
        source.apply(Namespace::implicit("c"));
        overlaid.update(&source);
        check(&source, &overlaid);
        assert!(Arc::ptr_eq(&overlaid.cluster().namespaces["a"], &kept));
        overlaid.update(&Cluster::default());
        check(&Cluster::default(), &overlaid);
    }
}
