//! The service table: Service addresses to the backends a new connection
//! may be translated to, and the deterministic choice among them.
//!
//! As with the policy [`tables`](crate::tables), the split is `rte_acl`'s:
//! the control plane describes each Service through [`ServiceTableBuilder`]
//! (plain values, no Kubernetes types), which does everything expensive once,
//! off the hot path: it applies kube-proxy's endpoint selection (ready
//! endpoints; serving-and-terminating ones when none is ready; this node's
//! only under `internalTrafficPolicy: Local`) and fills a Maglev lookup
//! table per frontend ([`maglev`]). The worker then does one hash lookup
//! ([`ServiceTable::frontend`]) and, for a new connection, one hash of the
//! flow and one indexed load ([`Frontend::select`]). Nothing allocates,
//! locks or calls the kernel on those paths.
//!
//! A frontend is what a client connects to: a ClusterIP (or external IP),
//! a protocol and a port. A Service with several ports or addresses has a
//! frontend for each; they share its [`ServiceId`], its name and its
//! options. A `ServiceTable` is immutable and published with the policy
//! tables of the same state ([`crate::publish::Generation`]).
//!
//! The choice depends only on the flow and the usable backends, never on
//! the worker, the process or the order the endpoints were given in: every
//! worker, and a restarted agent, picks the same backend for the same flow
//! ([`hash`] is fixed and seedless).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::flow::FlowKey;
use crate::tables::ObjectName;
use crate::wire::IpProtocol;

mod builder;
pub mod hash;
pub mod maglev;

pub use builder::{MAX_ENDPOINTS, ServiceBuildError, ServiceTableBuilder};
pub use hash::{client_hash, flow_hash};

/// A Service in the table, for attribution: `ServiceTable::service(id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

impl ServiceId {
    /// Position in the table's list of services.
    #[must_use]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// An endpoint's address and port: where a connection is translated to.
/// Its identity for consistent hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// The endpoint's address.
    pub addr: IpAddr,
    /// The target port.
    pub port: u16,
}

impl Backend {
    /// The address as a number (IPv4 in the low 32 bits, as in
    /// [`FlowKey`]) and whether it is IPv6.
    #[must_use]
    #[inline]
    pub fn addr_bits(&self) -> (u128, bool) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// An EndpointSlice entry's `conditions`, as kube-proxy reads them (the
/// control plane applies the API's defaults: `ready` absent is true,
/// `serving` absent is `ready`, `terminating` absent is false).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conditions {
    /// `ready`.
    pub ready: bool,
    /// `serving`.
    pub serving: bool,
    /// `terminating`.
    pub terminating: bool,
}

impl Conditions {
    /// Ready, serving, not terminating.
    pub const READY: Self = Self {
        ready: true,
        serving: true,
        terminating: false,
    };

    /// Serving but terminating: used only when no endpoint is ready.
    fn fallback(self) -> bool {
        self.serving && self.terminating
    }
}

/// One endpoint of a frontend as the control plane sees it: an
/// EndpointSlice entry reduced to what backend selection needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address and target port.
    pub backend: Backend,
    /// Its conditions.
    pub conditions: Conditions,
    /// Whether it runs on this node (`nodeName`).
    pub local: bool,
}

impl Endpoint {
    /// A ready endpoint.
    #[must_use]
    pub fn ready(addr: IpAddr, port: u16, local: bool) -> Self {
        Self {
            backend: Backend { addr, port },
            conditions: Conditions::READY,
            local,
        }
    }
}

/// `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// This node's endpoints only.
    Local,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// Each flow is hashed on its 5-tuple.
    #[default]
    None,
    /// A client keeps its backend for `timeout` after its last connection.
    /// The choice hashes the client address only; the per-client state that
    /// keeps it across endpoint changes lives outside this table.
    ClientIp {
        /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
        timeout: Duration,
    },
}

/// What applies to every frontend of a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceOptions {
    /// Which endpoints traffic from this node may reach.
    pub internal_traffic_policy: TrafficPolicy,
    /// How connections are spread.
    pub affinity: SessionAffinity,
}

/// A Service's name and options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub name: ObjectName,
    /// Its options.
    pub options: ServiceOptions,
}

/// An address, protocol and port a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// The ClusterIP or external IP.
    pub addr: IpAddr,
    /// TCP, UDP or SCTP.
    pub protocol: IpProtocol,
    /// The Service port.
    pub port: u16,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.protocol
        )
    }
}

/// Why a frontend has no usable backend, and what kube-proxy does then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoBackend {
    /// No endpoint is ready, nor serving and terminating, anywhere:
    /// kube-proxy rejects (ICMP unreachable, TCP reset).
    NoEndpoints,
    /// `internalTrafficPolicy: Local` and usable endpoints exist, but none
    /// on this node: kube-proxy drops.
    NoLocalEndpoints,
}

/// One frontend's backends and its Maglev table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    key: FrontendKey,
    service: ServiceId,
    affinity: SessionAffinity,
    /// Every endpoint given, sorted by backend, duplicates merged.
    endpoints: Box<[Endpoint]>,
    /// The usable ones, sorted: what `slots` index.
    backends: Box<[Backend]>,
    /// Maglev table (empty without backends); its length is prime.
    slots: Box<[u16]>,
    /// The table size (`slots.len()` when there are backends).
    size: u32,
    /// Set when `backends` is empty.
    no_backend: Option<NoBackend>,
    /// Whether the usable set is the serving-and-terminating fallback.
    terminating_fallback: bool,
}

impl Frontend {
    /// What clients connect to.
    #[must_use]
    pub fn key(&self) -> FrontendKey {
        self.key
    }

    /// The Service it belongs to.
    #[must_use]
    pub fn service(&self) -> ServiceId {
        self.service
    }

    /// The Service's session affinity.
    #[must_use]
    pub fn affinity(&self) -> SessionAffinity {
        self.affinity
    }

    /// The hash a flow is chosen by: the 5-tuple, or the client address
    /// alone under ClientIP affinity.
    #[must_use]
    #[inline]
    pub fn hash(&self, flow: &FlowKey) -> u64 {
        match self.affinity {
            SessionAffinity::None => flow_hash(flow),
            SessionAffinity::ClientIp { .. } => client_hash(flow),
        }
    }

    /// The backend for a flow hash; `None` when no backend is usable (see
    /// [`no_backend`](Self::no_backend)).
    #[must_use]
    #[inline]
    pub fn choose(&self, hash: u64) -> Option<Backend> {
        let slot = *self.slots.get(maglev::slot(hash, self.slots.len()))?;
        self.backends.get(usize::from(slot)).copied()
    }

    /// The backend for a new flow to this frontend.
    #[must_use]
    #[inline]
    pub fn select(&self, flow: &FlowKey) -> Option<Backend> {
        self.choose(self.hash(flow))
    }

    /// The usable backends, sorted.
    #[must_use]
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Whether new connections may go to `backend`.
    #[must_use]
    pub fn is_usable(&self, backend: Backend) -> bool {
        self.backends.binary_search(&backend).is_ok()
    }

    /// Whether an established connection may keep `backend`: the frontend
    /// lists it and it is still serving (ready, or terminating but serving:
    /// a pod shutting down gracefully finishes its connections, as under
    /// kube-proxy, whose conntrack cleanup removes the entries of endpoints
    /// that no longer serve). A superset of [`is_usable`](Self::is_usable),
    /// which is about new connections. One binary search, no allocation.
    #[must_use]
    #[inline]
    pub fn serves(&self, backend: Backend) -> bool {
        self.endpoint(backend).is_some_and(|e| e.conditions.serving)
    }

    /// Every endpoint the control plane gave, usable or not, sorted.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint at `backend`, if the frontend lists it.
    #[must_use]
    pub fn endpoint(&self, backend: Backend) -> Option<&Endpoint> {
        self.endpoints
            .binary_search_by(|e| e.backend.cmp(&backend))
            .ok()
            .map(|i| &self.endpoints[i])
    }

    /// Why there is no usable backend; `None` when there is one.
    #[must_use]
    pub fn no_backend(&self) -> Option<NoBackend> {
        self.no_backend
    }

    /// Whether no endpoint was ready and the serving-and-terminating ones
    /// are used instead.
    #[must_use]
    pub fn uses_terminating(&self) -> bool {
        self.terminating_fallback
    }

    /// The Maglev table size `M` (a prime).
    #[must_use]
    pub fn table_size(&self) -> u32 {
        self.size
    }
}

/// Sizes of a service table, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Services.
    pub services: usize,
    /// Frontends.
    pub frontends: usize,
    /// Frontends without a usable backend.
    pub without_backends: usize,
    /// Usable backends over all frontends.
    pub backends: usize,
    /// Maglev slots over all frontends.
    pub slots: usize,
}

/// One immutable generation of Services: frontend to backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Address, protocol and port packed into one word, to a frontend.
    v4: FxHashMap<u64, u32>,
    v6: FxHashMap<(u128, u32), u32>,
    /// Sorted by key.
    frontends: Vec<Frontend>,
    services: Vec<ServiceInfo>,
}

#[inline]
fn v4_key(addr: u32, protocol: IpProtocol, port: u16) -> u64 {
    (u64::from(addr) << 32) | (u64::from(protocol.0) << 16) | u64::from(port)
}

#[inline]
fn v6_key(addr: u128, protocol: IpProtocol, port: u16) -> (u128, u32) {
    (addr, (u32::from(protocol.0) << 16) | u32::from(port))
}

impl ServiceTable {
    /// No Services: nothing is translated.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether the table has no frontend.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// The frontend at `addr`, `protocol`, `port`: one hash lookup.
    #[must_use]
    #[inline]
    pub fn frontend(&self, addr: IpAddr, protocol: IpProtocol, port: u16) -> Option<&Frontend> {
        let i = match addr {
            IpAddr::V4(a) => self.v4.get(&v4_key(u32::from(a), protocol, port)),
            IpAddr::V6(a) => self.v6.get(&v6_key(u128::from(a), protocol, port)),
        }?;
        self.frontends.get(*i as usize)
    }

    /// The frontend a flow is addressed to, if its destination is one.
    #[must_use]
    #[inline]
    pub fn destination(&self, flow: &FlowKey) -> Option<&Frontend> {
        let protocol = IpProtocol(flow.protocol);
        let i = if flow.ipv6 {
            self.v6.get(&v6_key(flow.dst, protocol, flow.dst_port))
        } else {
            self.v4
                .get(&v4_key(flow.dst as u32, protocol, flow.dst_port))
        }?;
        self.frontends.get(*i as usize)
    }

    /// Every frontend, sorted by key.
    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.frontends.iter()
    }

    /// A Service's name and options.
    #[must_use]
    pub fn service(&self, id: ServiceId) -> &ServiceInfo {
        &self.services[id.index()]
    }

    /// Sizes, for reports.
    #[must_use]
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            services: self.services.len(),
            frontends: self.frontends.len(),
            without_backends: self
                .frontends
                .iter()
                .filter(|f| f.no_backend.is_some())
                .count(),
            backends: self.frontends.iter().map(|f| f.backends.len()).sum(),
            slots: self.frontends.iter().map(|f| f.slots.len()).sum(),
        }
    }
}
