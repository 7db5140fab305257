//! Assembling a [`ServiceTable`], off the hot path: the control plane adds
//! each Service and, per address and port, its endpoints;
//! [`ServiceTableBuilder::add_frontend`] validates them, picks the usable
//! ones as kube-proxy does and fills the frontend's Maglev table.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use rustc_hash::FxHashMap;

use super::{
    Backend, Conditions, Endpoint, Frontend, FrontendKey, NoBackend, ServiceId, ServiceInfo,
    ServiceOptions, ServiceTable, TrafficPolicy, maglev, v4_key, v6_key,
};
use crate::tables::ObjectName;
use crate::wire::IpProtocol;

/// Most distinct endpoints one frontend may list: the largest Maglev table
/// size, so that every backend can hold a slot.
pub const MAX_ENDPOINTS: usize = maglev::TABLE_SIZES[maglev::TABLE_SIZES.len() - 1] as usize;

/// Why the builder refused a frontend. The table is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceBuildError {
    /// Two frontends with one address, protocol and port.
    #[error("{frontend} belongs to both service {first} and service {second}")]
    DuplicateFrontend {
        /// The frontend.
        frontend: FrontendKey,
        /// The Service that had it first (and keeps it).
        first: ObjectName,
        /// The Service that also claims it.
        second: ObjectName,
    },
    /// A backend of the other address family than its frontend.
    #[error("{frontend}: backend {backend} is of the other address family")]
    FamilyMismatch {
        /// The frontend.
        frontend: FrontendKey,
        /// The backend.
        backend: Backend,
    },
    /// A frontend on port 0.
    #[error("{frontend}: port 0")]
    FrontendPortZero {
        /// The frontend.
        frontend: FrontendKey,
    },
    /// A backend on port 0.
    #[error("{frontend}: backend {backend} on port 0")]
    BackendPortZero {
        /// The frontend.
        frontend: FrontendKey,
        /// The backend.
        backend: Backend,
    },
    /// A protocol Services do not have (only TCP, UDP and SCTP).
    #[error("{frontend}: protocol {} is not TCP, UDP or SCTP", frontend.protocol)]
    UnsupportedProtocol {
        /// The frontend.
        frontend: FrontendKey,
    },
    /// More distinct endpoints than [`MAX_ENDPOINTS`].
    #[error("{frontend}: {count} endpoints, at most {MAX_ENDPOINTS}")]
    TooManyEndpoints {
        /// The frontend.
        frontend: FrontendKey,
        /// How many it lists.
        count: usize,
    },
    /// A service id this builder did not hand out.
    #[error("unknown service id {}", .0.0)]
    UnknownService(ServiceId),
}

/// Assembles a [`ServiceTable`]; the control plane's compiler drives it.
#[derive(Debug, Default)]
pub struct ServiceTableBuilder {
    services: Vec<ServiceInfo>,
    frontends: BTreeMap<FrontendKey, Frontend>,
}

impl ServiceTableBuilder {
    /// An empty builder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a Service; its frontends are added with the id returned.
    pub fn add_service(
        &mut self,
        namespace: &str,
        name: &str,
        options: ServiceOptions,
    ) -> ServiceId {
        self.services.push(ServiceInfo {
            name: ObjectName {
                namespace: namespace.into(),
                name: name.into(),
            },
            options,
        });
        ServiceId(self.services.len() as u32 - 1)
    }

    /// Adds a frontend of `service` with its endpoints (in any order; an
    /// endpoint listed twice, as during an EndpointSlice handover, counts
    /// once, with its most usable conditions). A frontend without usable
    /// endpoints is kept: the worker refuses or drops its connections.
    pub fn add_frontend(
        &mut self,
        service: ServiceId,
        frontend: FrontendKey,
        endpoints: &[Endpoint],
    ) -> Result<&Frontend, ServiceBuildError> {
        let info = self
            .services
            .get(service.index())
            .ok_or(ServiceBuildError::UnknownService(service))?;
        if ![IpProtocol::TCP, IpProtocol::UDP, IpProtocol::SCTP].contains(&frontend.protocol) {
            return Err(ServiceBuildError::UnsupportedProtocol { frontend });
        }
        if frontend.port == 0 {
            return Err(ServiceBuildError::FrontendPortZero { frontend });
        }
        for e in endpoints {
            let backend = e.backend;
            if backend.addr.is_ipv4() != frontend.addr.is_ipv4() {
                return Err(ServiceBuildError::FamilyMismatch { frontend, backend });
            }
            if backend.port == 0 {
                return Err(ServiceBuildError::BackendPortZero { frontend, backend });
            }
        }
        let endpoints = merged(endpoints);
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(ServiceBuildError::TooManyEndpoints {
                frontend,
                count: endpoints.len(),
            });
        }
        let slot = match self.frontends.entry(frontend) {
            Entry::Occupied(held) => {
                return Err(ServiceBuildError::DuplicateFrontend {
                    frontend,
                    first: self.services[held.get().service.index()].name.clone(),
                    second: info.name.clone(),
                });
            }
            Entry::Vacant(slot) => slot,
        };
        let options = info.options;
        let usable = usable(&endpoints, options.internal_traffic_policy);
        let backends: Box<[Backend]> = usable.backends.into();
        let size = maglev::table_size(endpoints.len());
        Ok(slot.insert(Frontend {
            key: frontend,
            service,
            affinity: options.affinity,
            slots: maglev::populate(&backends, size),
            backends,
            endpoints: endpoints.into(),
            size,
            no_backend: usable.none,
            terminating_fallback: usable.terminating,
        }))
    }

    /// Freezes the table.
    #[must_use]
    pub fn build(self) -> ServiceTable {
        let mut v4 = FxHashMap::default();
        let mut v6 = FxHashMap::default();
        let frontends: Vec<Frontend> = self.frontends.into_values().collect();
        for (i, f) in frontends.iter().enumerate() {
            let FrontendKey {
                addr,
                protocol,
                port,
            } = f.key;
            match addr {
                std::net::IpAddr::V4(a) => {
                    v4.insert(v4_key(u32::from(a), protocol, port), i as u32);
                }
                std::net::IpAddr::V6(a) => {
                    v6.insert(v6_key(u128::from(a), protocol, port), i as u32);
                }
            }
        }
        ServiceTable {
            v4,
            v6,
            frontends,
            services: self.services,
        }
    }
}

/// Sorted by backend, one entry per backend: of copies, the most usable.
fn merged(endpoints: &[Endpoint]) -> Vec<Endpoint> {
    let rank = |e: &Endpoint| {
        let c = e.conditions;
        (c.ready, c.serving, !c.terminating, e.local)
    };
    let mut v = endpoints.to_vec();
    v.sort_unstable_by(|a, b| a.backend.cmp(&b.backend).then(rank(b).cmp(&rank(a))));
    v.dedup_by_key(|e| e.backend);
    v
}

/// The endpoints new connections from this node may use.
#[derive(Debug, PartialEq, Eq)]
struct Usable {
    backends: Vec<Backend>,
    none: Option<NoBackend>,
    terminating: bool,
}

/// kube-proxy's `CategorizeEndpoints` (pkg/proxy/topology.go) for traffic
/// from this node: the ready endpoints, or when none is ready the serving
/// and terminating ones; under `Local` the same rule over this node's
/// endpoints alone. `endpoints` is sorted, and so is the result.
fn usable(endpoints: &[Endpoint], policy: TrafficPolicy) -> Usable {
    let any = endpoints
        .iter()
        .any(|e| e.conditions.ready || e.conditions.fallback());
    let candidates = || {
        endpoints
            .iter()
            .filter(move |e| policy == TrafficPolicy::Cluster || e.local)
    };
    let pick = |keep: fn(Conditions) -> bool| -> Vec<Backend> {
        candidates()
            .filter(|e| keep(e.conditions))
            .map(|e| e.backend)
            .collect()
    };
    let ready = pick(|c| c.ready);
    if !ready.is_empty() {
        return Usable {
            backends: ready,
            none: None,
            terminating: false,
        };
    }
    let fallback = pick(Conditions::fallback);
    let none = if !fallback.is_empty() {
        None
    } else if any {
        Some(NoBackend::NoLocalEndpoints)
    } else {
        Some(NoBackend::NoEndpoints)
    };
    Usable {
        terminating: !fallback.is_empty(),
        backends: fallback,
        none,
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::flow::FlowKey;
    use crate::services::SessionAffinity;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn fe(addr: &str, port: u16) -> FrontendKey {
        FrontendKey {
            addr: ip(addr),
            protocol: IpProtocol::TCP,
            port,
        }
    }

    const READY: Conditions = Conditions::READY;
    /// Serving and terminating: the fallback.
    const DRAINING: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    /// Terminating and no longer serving.
    const GONE: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: true,
    };
    /// Not ready, not terminating.
    const UNREADY: Conditions = Conditions {
        ready: false,
        serving: false,
        terminating: false,
    };
    /// Serving but not ready and not terminating (not a state the API
    /// produces, and never used).
    const ODD: Conditions = Conditions {
        ready: false,
        serving: true,
        terminating: false,
    };

    fn ep(addr: &str, conditions: Conditions, local: bool) -> Endpoint {
        Endpoint {
            backend: Backend {
                addr: ip(addr),
                port: 8080,
            },
            conditions,
            local,
        }
    }

    fn addrs(backends: &[Backend]) -> Vec<String> {
        backends.iter().map(|b| b.addr.to_string()).collect()
    }

    fn one(policy: TrafficPolicy, endpoints: &[Endpoint]) -> Frontend {
        let mut b = ServiceTableBuilder::new();
        let s = b.add_service(
            "ns",
            "svc",
            ServiceOptions {
                internal_traffic_policy: policy,
                affinity: SessionAffinity::None,
            },
        );
        b.add_frontend(s, fe("10.96.0.1", 80), endpoints)
            .unwrap()
            .clone()
    }

    #[test]
    fn refuses_duplicates_families_port_zero_and_other_protocols() {
        let mut b = ServiceTableBuilder::new();
        let a = b.add_service("ns", "a", ServiceOptions::default());
        let c = b.add_service("ns", "c", ServiceOptions::default());
        b.add_frontend(a, fe("10.96.0.1", 80), &[]).unwrap();
        let err = b.add_frontend(c, fe("10.96.0.1", 80), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.96.0.1:80/TCP belongs to both service ns/a and service ns/c"
        );
        let v6 = ep("fd00::1", READY, false);
        assert_eq!(
            b.add_frontend(c, fe("10.96.0.2", 80), &[v6]),
            Err(ServiceBuildError::FamilyMismatch {
                frontend: fe("10.96.0.2", 80),
                backend: v6.backend
            })
        );
        assert!(matches!(
            b.add_frontend(c, fe("10.96.0.2", 0), &[]),
            Err(ServiceBuildError::FrontendPortZero { .. })
        ));
        let mut zero = ep("10.0.0.1", READY, false);
        zero.backend.port = 0;
        assert!(matches!(
            b.add_frontend(c, fe("10.96.0.2", 80), &[zero]),
            Err(ServiceBuildError::BackendPortZero { .. })
        ));
        let icmp = FrontendKey {
            protocol: IpProtocol::ICMP,
            ..fe("10.96.0.2", 80)
        };
        assert!(matches!(
            b.add_frontend(c, icmp, &[]),
            Err(ServiceBuildError::UnsupportedProtocol { .. })
        ));
        assert_eq!(
            b.add_frontend(ServiceId(9), fe("10.96.0.3", 80), &[]),
            Err(ServiceBuildError::UnknownService(ServiceId(9)))
        );
        // Refusals leave nothing behind; the first claim stands.
        let t = b.build();
        assert_eq!(t.stats().frontends, 1);
        let held = t.frontend(ip("10.96.0.1"), IpProtocol::TCP, 80).unwrap();
        assert_eq!(t.service(held.service()).name.name.as_ref(), "a");
        // Same address and port, other protocol: another frontend.
        let mut b = ServiceTableBuilder::new();
        let a = b.add_service("ns", "a", ServiceOptions::default());
        b.add_frontend(a, fe("10.96.0.1", 53), &[]).unwrap();
        let udp = FrontendKey {
            protocol: IpProtocol::UDP,
            ..fe("10.96.0.1", 53)
        };
        b.add_frontend(a, udp, &[]).unwrap();
    }

    #[test]
    fn too_many_endpoints_is_refused() {
        let many: Vec<Endpoint> = (0..=MAX_ENDPOINTS as u32)
            .map(|i| Endpoint::ready(IpAddr::V4((0x0a00_0000 + i).into()), 80, false))
            .collect();
        let mut b = ServiceTableBuilder::new();
        let s = b.add_service("ns", "big", ServiceOptions::default());
        assert_eq!(
            b.add_frontend(s, fe("10.96.0.1", 80), &many).unwrap_err(),
            ServiceBuildError::TooManyEndpoints {
                frontend: fe("10.96.0.1", 80),
                count: MAX_ENDPOINTS + 1
            }
        );
        assert_eq!(
            b.add_frontend(s, fe("10.96.0.1", 80), &many[1..])
                .unwrap()
                .backends()
                .len(),
            MAX_ENDPOINTS
        );
    }

    #[test]
    fn ready_endpoints_only_while_any_is_ready() {
        let f = one(
            TrafficPolicy::Cluster,
            &[
                ep("10.0.0.3", DRAINING, false),
                ep("10.0.0.1", READY, false),
                ep("10.0.0.2", UNREADY, false),
                ep("10.0.0.4", READY, true),
            ],
        );
        assert_eq!(addrs(f.backends()), ["10.0.0.1", "10.0.0.4"]);
        assert_eq!(f.no_backend(), None);
        assert!(!f.uses_terminating());
        assert_eq!(f.endpoints().len(), 4);
        assert!(f.is_usable(f.backends()[0]));
        let not_ready = f.endpoints()[1].backend;
        assert!(!f.is_usable(not_ready));
        assert!(!f.endpoint(not_ready).unwrap().conditions.ready);
    }

    #[test]
    fn serving_terminating_endpoints_when_none_is_ready() {
        let f = one(
            TrafficPolicy::Cluster,
            &[
                ep("10.0.0.1", DRAINING, false),
                // Terminating but no longer serving: never used.
                ep("10.0.0.2", GONE, false),
                // Serving, neither ready nor terminating: never used.
                ep("10.0.0.3", ODD, false),
            ],
        );
        assert_eq!(addrs(f.backends()), ["10.0.0.1"]);
        assert!(f.uses_terminating());
        assert!(f.choose(12345).is_some());
    }

    #[test]
    fn local_policy_uses_this_nodes_endpoints_by_the_same_rule() {
        let endpoints = [
            ep("10.0.0.1", READY, false),
            ep("10.0.0.2", DRAINING, true),
            ep("10.0.0.3", READY, true),
        ];
        let f = one(TrafficPolicy::Local, &endpoints);
        assert_eq!(addrs(f.backends()), ["10.0.0.3"]);
        // No local ready one: the local serving-and-terminating one, even
        // though a remote one is ready.
        let f = one(TrafficPolicy::Local, &endpoints[..2]);
        assert_eq!(addrs(f.backends()), ["10.0.0.2"]);
        assert!(f.uses_terminating());
        // Usable endpoints elsewhere only: kube-proxy drops.
        let f = one(TrafficPolicy::Local, &endpoints[..1]);
        assert!(f.backends().is_empty());
        assert_eq!(f.no_backend(), Some(NoBackend::NoLocalEndpoints));
        assert_eq!(f.choose(1), None);
    }

    #[test]
    fn no_usable_endpoint_is_kept_and_reported() {
        for endpoints in [
            &[][..],
            &[ep("10.0.0.1", GONE, true)][..],
            &[ep("10.0.0.1", ODD, true)][..],
        ] {
            for policy in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
                let f = one(policy, endpoints);
                assert_eq!(f.no_backend(), Some(NoBackend::NoEndpoints));
                assert_eq!(f.choose(0), None);
                assert_eq!(f.choose(u64::MAX), None);
            }
        }
        let mut b = ServiceTableBuilder::new();
        let s = b.add_service("ns", "empty", ServiceOptions::default());
        b.add_frontend(s, fe("10.96.0.9", 80), &[]).unwrap();
        let t = b.build();
        assert!(t.frontend(ip("10.96.0.9"), IpProtocol::TCP, 80).is_some());
        assert_eq!(t.stats().without_backends, 1);
    }

    #[test]
    fn an_endpoint_listed_twice_counts_once_with_its_best_conditions() {
        let stale = ep("10.0.0.1", DRAINING, false);
        let fresh = ep("10.0.0.1", READY, false);
        let a = one(TrafficPolicy::Cluster, &[stale, fresh]);
        let b = one(TrafficPolicy::Cluster, &[fresh, stale]);
        assert_eq!(a, b);
        assert_eq!(a.endpoints(), [fresh]);
        assert!(!a.uses_terminating());
    }

    /// The table depends on the endpoint set, not on the order it came in.
    #[test]
    fn same_table_from_the_same_endpoints_in_any_order() {
        let mut endpoints: Vec<Endpoint> = (0..40u32)
            .map(|i| {
                let addr = IpAddr::V4((0x0a00_0000 + i * 3).into());
                let mut e = Endpoint::ready(addr, 8080, i % 2 == 0);
                e.conditions.ready = i % 5 != 0;
                e
            })
            .collect();
        let first = one(TrafficPolicy::Cluster, &endpoints);
        endpoints.reverse();
        endpoints.swap(3, 17);
        let second = one(TrafficPolicy::Cluster, &endpoints);
        assert_eq!(first, second);
        assert_eq!(first.backends().len(), 32);
        assert_eq!(first.table_size(), 4093);
    }

    #[test]
    fn lookups_by_address_and_by_flow_agree() {
        let mut b = ServiceTableBuilder::new();
        let dns = b.add_service("kube-system", "kube-dns", ServiceOptions::default());
        let sticky = b.add_service(
            "ns",
            "sticky",
            ServiceOptions {
                internal_traffic_policy: TrafficPolicy::Cluster,
                affinity: SessionAffinity::ClientIp {
                    timeout: Duration::from_hours(3),
                },
            },
        );
        let udp = |addr: &str| FrontendKey {
            addr: ip(addr),
            protocol: IpProtocol::UDP,
            port: 53,
        };
        let v4: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint::ready(ip(&format!("10.0.1.{i}")), 53, false))
            .collect();
        let v6: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint::ready(ip(&format!("fd00:1::{i}")), 53, false))
            .collect();
        b.add_frontend(dns, udp("10.96.0.10"), &v4).unwrap();
        b.add_frontend(dns, udp("fd00:96::a"), &v6).unwrap();
        b.add_frontend(sticky, fe("10.96.0.20", 443), &v4).unwrap();
        let t = b.build();
        assert_eq!(t.stats().frontends, 3);
        assert_eq!(t.stats().services, 2);

        let q = FlowKey::new(ip("10.0.0.5"), ip("10.96.0.10"), 17, 40000, 53).unwrap();
        let f = t.destination(&q).unwrap();
        assert_eq!(
            f,
            t.frontend(ip("10.96.0.10"), IpProtocol::UDP, 53).unwrap()
        );
        assert_eq!(
            t.service(f.service()).name.to_string(),
            "kube-system/kube-dns"
        );
        let chosen = f.select(&q).unwrap();
        assert!(f.is_usable(chosen));
        assert_eq!(f.select(&q), f.choose(flow_hash_of(&q)));
        let q6 = FlowKey::new(ip("fd00::5"), ip("fd00:96::a"), 17, 40000, 53).unwrap();
        assert!(
            t.destination(&q6)
                .unwrap()
                .select(&q6)
                .unwrap()
                .addr
                .is_ipv6()
        );
        // Not a frontend: another port, protocol or address.
        assert!(t.destination(&FlowKey { dst_port: 54, ..q }).is_none());
        assert!(t.destination(&FlowKey { protocol: 6, ..q }).is_none());
        assert!(t.frontend(ip("10.96.0.11"), IpProtocol::UDP, 53).is_none());

        // ClientIP affinity: every connection of a client to one backend.
        let sticky = t.frontend(ip("10.96.0.20"), IpProtocol::TCP, 443).unwrap();
        let from = |sport| FlowKey::new(ip("10.0.0.5"), ip("10.96.0.20"), 6, sport, 443).unwrap();
        let first = sticky.select(&from(1)).unwrap();
        assert!((2..200).all(|p| sticky.select(&from(p)) == Some(first)));
        // Without affinity the same client's flows spread.
        let spread: std::collections::HashSet<_> = (1..200)
            .map(|p| f.select(&FlowKey { src_port: p, ..q }).unwrap())
            .collect();
        assert_eq!(spread.len(), 3);
    }

    fn flow_hash_of(k: &FlowKey) -> u64 {
        crate::services::flow_hash(k)
    }
}
