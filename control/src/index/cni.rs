//! Pod addresses this node learned from its CNI plugin (`podfence-cni`),
//! before the cluster state has them.
//!
//! A pod's `status.podIPs` reaches the API, and then the agent, some time
//! after the runtime wired the pod; with manifests it may never. Until
//! then, the addresses the CNI chain assigned overlay the pod's empty
//! status: [`CniAddresses::overlay`] gives the cluster state with them, for
//! compiling. Once the state has addresses of its own for the pod, those
//! win. An entry is removed when the CNI releases the pod (DEL, or GC).

use std::borrow::Cow;
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
    /// The last pod overlaid and its overlaid copy, so that an unchanged
    /// pod keeps one `Arc` from one compile to the next.
    overlaid: Option<(Arc<Pod>, Arc<Pod>)>,
}

/// Pod addresses from the CNI, by pod (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct CniAddresses {
    pods: BTreeMap<ObjectKey, CniPod>,
}

impl CniAddresses {
    /// Records that sandbox `container_id` of `pod` has `ips` (replacing an
    /// earlier sandbox's). Returns whether anything changed.
    pub fn insert(&mut self, pod: ObjectKey, container_id: &str, ips: &[IpAddr]) -> bool {
        let mut ips = ips.to_vec();
        ips.sort_unstable();
        ips.dedup();
        if let Some(held) = self.pods.get(&pod)
            && held.container_id == container_id
            && held.ips == ips
        {
            return false;
        }
        self.pods.insert(
            pod,
            CniPod {
                container_id: container_id.to_owned(),
                ips,
                overlaid: None,
            },
        );
        true
    }

    /// Forgets `pod`'s addresses if they are sandbox `container_id`'s (a
    /// late release of an old sandbox leaves a newer one's). Returns
    /// whether there were any.
    pub fn remove(&mut self, pod: &ObjectKey, container_id: &str) -> bool {
        if self
            .pods
            .get(pod)
            .is_some_and(|held| held.container_id == container_id)
        {
            self.pods.remove(pod);
            true
        } else {
            false
        }
    }

    /// Forgets every pod whose sandbox is not one of `valid`; returns them.
    pub fn retain_containers(&mut self, valid: &[String]) -> Vec<ObjectKey> {
        let gone: Vec<ObjectKey> = self
            .pods
            .iter()
            .filter(|(_, p)| !valid.contains(&p.container_id))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &gone {
            self.pods.remove(key);
        }
        gone
    }

    /// The addresses recorded for `pod`, and the sandbox they are for.
    #[must_use]
    pub fn get(&self, pod: &ObjectKey) -> Option<(&str, &[IpAddr])> {
        self.pods
            .get(pod)
            .map(|p| (p.container_id.as_str(), p.ips.as_slice()))
    }

    /// Whether none are recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The addresses policy uses for `pod`: its own, or when it has none
    /// (and does not use the host's network), those recorded here.
    #[must_use]
    pub fn ips_of<'a>(&'a self, pod: &'a Pod) -> &'a [IpAddr] {
        if !pod.ips.is_empty() || pod.host_network {
            return &pod.ips;
        }
        self.pods.get(&pod.key()).map_or(&pod.ips, |p| &p.ips)
    }

    /// `cluster` with the recorded addresses given to the pods that have
    /// none of their own; borrowed when no pod needs them.
    pub fn overlay<'a>(&mut self, cluster: &'a Cluster) -> Cow<'a, Cluster> {
        let mut overlaid = Cow::Borrowed(cluster);
        for (key, cni) in &mut self.pods {
            let Some(pod) = cluster.pods.get(key) else {
                continue;
            };
            if !pod.ips.is_empty() || pod.host_network {
                continue;
            }
            let with_ips = match &cni.overlaid {
                Some((source, made)) if Arc::ptr_eq(source, pod) => Arc::clone(made),
                _ => {
                    let made = Arc::new(Pod {
                        ips: cni.ips.clone(),
                        ..Pod::clone(pod)
                    });
                    cni.overlaid = Some((Arc::clone(pod), Arc::clone(&made)));
                    made
                }
            };
            overlaid.to_mut().pods.insert(key.clone(), with_ips);
        }
        overlaid
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

    #[test]
    fn cni_addresses_fill_in_until_the_status_has_some() {
        let mut cluster = Cluster::default();
        cluster.apply(pod("new", &[]));
        cluster.apply(pod("old", &["10.0.0.9"]));
        let mut cni = CniAddresses::default();
        assert!(matches!(cni.overlay(&cluster), Cow::Borrowed(_)));
        let key = ObjectKey::new("x", "new");
        assert!(cni.insert(key.clone(), "c1", &[ip("10.1.0.5")]));
        assert!(!cni.insert(key.clone(), "c1", &[ip("10.1.0.5")]));
        let first = cni.overlay(&cluster).into_owned();
        assert_eq!(first.pods[&key].ips, [ip("10.1.0.5")]);
        assert!(Arc::ptr_eq(
            &first.pods[&ObjectKey::new("x", "old")],
            &cluster.pods[&ObjectKey::new("x", "old")]
        ));
        // The same pod overlaid again is the same allocation (for the
        // incremental compiler).
        let again = cni.overlay(&cluster).into_owned();
        assert!(Arc::ptr_eq(&first.pods[&key], &again.pods[&key]));
        assert_eq!(cni.ips_of(&cluster.pods[&key]), [ip("10.1.0.5")]);
        // The status wins once it has addresses.
        cluster.apply(pod("new", &["10.1.0.7"]));
        assert!(matches!(cni.overlay(&cluster), Cow::Borrowed(_)));
        assert_eq!(cni.ips_of(&cluster.pods[&key]), [ip("10.1.0.7")]);
    }

    #[test]
    fn releases_are_per_sandbox() {
        let mut cni = CniAddresses::default();
        let key = ObjectKey::new("x", "new");
        cni.insert(key.clone(), "c1", &[ip("10.1.0.5")]);
        cni.insert(key.clone(), "c2", &[ip("10.1.0.6")]);
        assert!(!cni.remove(&key, "c1"), "an old sandbox's release");
        assert_eq!(cni.get(&key), Some(("c2", &[ip("10.1.0.6")][..])));
        assert!(cni.remove(&key, "c2"));
        assert!(!cni.remove(&key, "c2"), "idempotent");
        cni.insert(key.clone(), "c3", &[ip("10.1.0.7")]);
        cni.insert(ObjectKey::new("x", "other"), "c4", &[ip("10.1.0.8")]);
        assert_eq!(cni.retain_containers(&["c4".into()]), [key]);
        assert!(!cni.is_empty());
    }
}
