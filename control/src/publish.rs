//! Compile-and-publish: the one place where a cluster state becomes the
//! table generation the workers read.
//!
//! A [`TablePublisher`] is shared (cloned) by whoever produces cluster
//! states (the manifest reload, the Kubernetes source) and by the agent,
//! whose workers read its [`Publisher`]. Generations are numbered here,
//! once, whatever publishes them.
//!
//! It also holds the pod addresses this node's CNI plugin reported
//! ([`OverlaidCluster`]): every state is compiled with them overlaid, so
//! that a pod the runtime just wired is in the tables before the API (or
//! the manifests) have its address, whichever source publishes next. The
//! overlaid state is kept, not remade: a CNI change replaces one pod, a
//! source's state is merged in by what changed. A pod the CNI adds that is
//! a replica of pods compiled already is not compiled in: it is added to
//! the tables in force ([`Compiler::add_replica`]); one it releases is
//! taken out of them ([`Compiler::remove_pod`]); both are compiled with the
//! next publish or [`TablePublisher::compile_deferred`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use podfence_datapath::conntrack::Conntrack;
use podfence_datapath::publish::{Generation, Publisher};
use podfence_datapath::{ServiceTable, Tables};
use tracing::{debug, info, warn};

use crate::compile::{CompileOptions, Compiler, Locality, ServiceCompiler, ServicesConfig};
use crate::index::{Cluster, OverlaidCluster};
use crate::metrics::ControlMetrics;
use crate::model::{ObjectKey, Pod};

/// What one publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The generation now in force.
    pub generation: u64,
    /// How long compiling took.
    pub compile_time: Duration,
}

/// The policy and the service compiler, kept together from one generation
/// to the next, with what the next compile starts from.
#[derive(Debug)]
struct Compilers {
    policies: Compiler,
    services: ServiceCompiler,
    /// The state last published, with the addresses from the CNI
    /// overlaid: what is compiled.
    state: OverlaidCluster,
    /// The compiler's notices of the last compile, logged when they change.
    notices: Vec<String>,
    /// The local pods' addresses in `state`, as of the last publish.
    local_addresses: Vec<IpAddr>,
    /// Pods of `state` added to the tables in force without a compile
    /// since the last ([`Compiler::add_replica`]).
    replicas: Vec<Arc<Pod>>,
    /// Pods of the last compile removed from the tables in force without a
    /// compile since ([`Compiler::remove_pod`]).
    removed: Vec<ObjectKey>,
}

/// What recording a pod's CNI addresses found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniRecorded {
    /// The pod is in the state published (and the generation now in force
    /// has it with these addresses, or with its own).
    Known,
    /// The pod is not in the state (yet): the addresses apply once it is.
    Unknown,
}

/// Compiles cluster states for one node and publishes them.
#[derive(Clone, Debug)]
pub struct TablePublisher {
    publisher: Publisher,
    locality: Locality,
    /// Remembers the last compile for the next; held while publishing, so
    /// generations go live in their order.
    compiler: Arc<Mutex<Compilers>>,
    generation: Arc<AtomicU64>,
    metrics: ControlMetrics,
    /// The connection table whose entries carry these generations, when it
    /// outlives the agent: generations are recorded there before they go
    /// live, and numbered above what an agent before recorded. Set once,
    /// for every clone: before the first publish, or after it when this
    /// agent takes over from one still running ([`Self::take_conntrack`]).
    /// The agent owns the table: once it lets go (handing over), the file
    /// is unlocked whatever clones of this remain.
    conntrack: Arc<OnceLock<Weak<Conntrack>>>,
}

impl TablePublisher {
    /// A publisher whose tables are empty (generation 0) until the first
    /// [`publish`](Self::publish); `options.generation` is unused.
    #[must_use]
    pub fn new(options: CompileOptions) -> Self {
        Self {
            publisher: Publisher::new(Tables::empty(0), ServiceTable::empty()),
            locality: options.locality.clone(),
            compiler: Arc::new(Mutex::new(Compilers {
                services: ServiceCompiler::new(options.locality.clone(), ServicesConfig::default()),
                policies: Compiler::new(options),
                state: OverlaidCluster::default(),
                notices: Vec::new(),
                local_addresses: Vec::new(),
                replicas: Vec::new(),
                removed: Vec::new(),
            })),
            generation: Arc::new(AtomicU64::new(0)),
            metrics: ControlMetrics::default(),
            conntrack: Arc::new(OnceLock::new()),
        }
    }

    /// Numbers generations above those an earlier agent recorded in
    /// `conntrack` (a table restored from its file) and records each one
    /// there before it goes live: a restored entry never carries the
    /// number of a generation of this agent, so the first packet of each
    /// restored connection is checked against this agent's tables (and
    /// cut if they deny it). Before the first publish.
    #[must_use]
    pub fn with_conntrack(self, conntrack: &Arc<Conntrack>) -> Self {
        let floor = conntrack.generation_floor();
        self.generation.store(floor, Ordering::Release);
        if floor > 0 {
            info!(
                after = floor,
                "table generations continue after those of the agent before"
            );
        }
        let _ = self.conntrack.set(Arc::downgrade(conntrack));
        self
    }

    /// Numbers generations above `generation` (that of an agent still
    /// running, which records it in the connection table this one takes
    /// over later). Before the first publish.
    #[must_use]
    pub fn numbered_after(self, generation: u64) -> Self {
        self.generation.store(generation, Ordering::Release);
        self
    }

    /// [`Self::with_conntrack`] once generations are in force: the table
    /// an agent handed over. When the generation in force is not above
    /// what that agent recorded (it published again while this one was
    /// starting), the state is compiled again above it, so that no
    /// restored entry escapes this agent's tables; returns that publish.
    pub fn take_conntrack(&self, conntrack: &Arc<Conntrack>) -> Option<Published> {
        let incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = conntrack.generation_floor();
        let in_force = self.generation.load(Ordering::Acquire);
        let _ = self.conntrack.set(Arc::downgrade(conntrack));
        if in_force > floor {
            conntrack.record_generation(in_force);
            return None;
        }
        info!(
            after = floor,
            in_force,
            "the agent before published past this one's generations; compiling above them"
        );
        self.generation.store(floor, Ordering::Release);
        Some(self.publish_locked(incremental, None))
    }

    /// Which Services the published generations translate (all of them by
    /// default); before the first publish.
    #[must_use]
    pub fn with_services(self, config: ServicesConfig) -> Self {
        self.compiler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .services = ServiceCompiler::new(self.locality.clone(), config);
        self
    }

    /// The control-plane metrics it updates (shared with the source).
    #[must_use]
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Which pods are enforced here.
    #[must_use]
    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    /// The swap the workers read.
    #[must_use]
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The generation in force (0: nothing published yet).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation in force and the cluster state it was compiled from
    /// (pods with addresses of their own, their namespaces, the policies),
    /// taken together.
    #[must_use]
    pub fn in_force(&self) -> (Cluster, Arc<Generation>) {
        let compiler = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = compiler.policies.compiled_state();
        for key in &compiler.removed {
            state.pods.remove(key);
        }
        for pod in &compiler.replicas {
            state.pods.insert(pod.key(), Arc::clone(pod));
            if let Some(ns) = compiler.state.cluster().namespaces.get(&pod.namespace) {
                state
                    .namespaces
                    .entry(ns.name.clone())
                    .or_insert_with(|| Arc::clone(ns));
            }
        }
        (state, self.publisher.current())
    }

    /// Pod `key` as the generation in force has it, if it is there (a pod
    /// with addresses, its own or the CNI's): [`Self::in_force`] for one
    /// pod, without making the whole state.
    #[must_use]
    pub fn in_force_pod(&self, key: &ObjectKey) -> Option<Arc<Pod>> {
        let compiler = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        if compiler.removed.contains(key) {
            return None;
        }
        let replica = || compiler.replicas.iter().find(|p| p.key() == *key);
        compiler
            .policies
            .compiled_pod(key)
            .or_else(replica)
            .cloned()
    }

    /// Compiles `cluster` into the next generation and swaps it in.
    /// `caused_at`: when the oldest change it reflects was seen.
    pub fn publish(&self, cluster: &Cluster, caused_at: Option<Instant>) -> Published {
        let mut incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        incremental.state.update(cluster);
        self.publish_locked(incremental, caused_at)
    }

    /// Compiles the last state given, with the CNI's addresses, and swaps
    /// it in; releases the lock once the generation is in force.
    fn publish_locked(
        &self,
        mut incremental: std::sync::MutexGuard<'_, Compilers>,
        caused_at: Option<Instant>,
    ) -> Published {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let Compilers {
            policies,
            services,
            state,
            notices,
            local_addresses,
            ..
        } = &mut *incremental;
        let cluster = state.cluster();
        let compiled = policies.compile(cluster, generation);
        *local_addresses = policies.local_addresses();
        let services = services.compile(cluster);
        for w in compiled.warnings.iter().chain(&services.warnings) {
            warn!(warning = %w, "compile");
        }
        if compiled.notices != *notices {
            for n in compiled.notices.iter().filter(|n| !notices.contains(n)) {
                warn!(notice = %n, "cluster network policy");
            }
            self.metrics
                .tier_notices
                .set(i64::try_from(compiled.notices.len()).unwrap_or(i64::MAX));
            notices.clone_from(&compiled.notices);
        }
        let compile_time = started.elapsed();
        let (pods, policies) = (cluster.pods.len(), cluster.policies.len());
        incremental.replicas.clear();
        incremental.removed.clear();
        self.swap_in(incremental, compiled.tables, services.table, caused_at);
        info!(
            generation,
            pods,
            policies,
            compile_ms = compile_time.as_secs_f64() * 1e3,
            since_change_ms = caused_at.map(|t| t.elapsed().as_secs_f64() * 1e3),
            "tables published"
        );
        self.metrics
            .compile_seconds
            .observe(compile_time.as_secs_f64());
        Published {
            generation,
            compile_time,
        }
    }

    /// Puts `tables` in force as the next generation, with `services`;
    /// releases the lock once they are.
    fn swap_in(
        &self,
        incremental: std::sync::MutexGuard<'_, Compilers>,
        tables: Tables,
        services: Arc<ServiceTable>,
        caused_at: Option<Instant>,
    ) {
        let generation = tables.generation();
        if let Some(conntrack) = self.conntrack.get().and_then(Weak::upgrade) {
            conntrack.record_generation(generation);
        }
        self.publisher.publish(tables, services, caused_at);
        self.generation.store(generation, Ordering::Release);
        drop(incremental);
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        if let Some(t) = caused_at {
            self.metrics
                .propagation_seconds
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// Adds the local pods `keys` of the state to the tables in force
    /// without compiling, when each is a replica ([`Compiler::add_replica`]),
    /// and puts the result in force; gives the lock back when some pod is
    /// not, for the caller to compile.
    fn add_replicas<'g>(
        &self,
        mut incremental: std::sync::MutexGuard<'g, Compilers>,
        keys: &[ObjectKey],
        caused_at: Instant,
    ) -> Result<(), std::sync::MutexGuard<'g, Compilers>> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let current = self.publisher.current();
        let mut tables: Option<Tables> = None;
        let mut added = Vec::with_capacity(keys.len());
        for key in keys {
            let Compilers {
                policies,
                state,
                replicas,
                ..
            } = &*incremental;
            let Some(pod) = state.cluster().pods.get(key) else {
                return Err(incremental);
            };
            if replicas.iter().chain(&added).any(|p| p.key() == *key) {
                return Err(incremental);
            }
            let namespace = state.cluster().namespaces.get(&pod.namespace);
            let last = tables.as_ref().unwrap_or(&current.tables);
            match policies.add_replica(last, pod, namespace, generation) {
                Ok(next) => tables = Some(next),
                Err(why) => {
                    debug!(pod = %key, %why, "compiling: not a replica");
                    return Err(incremental);
                }
            }
            added.push(Arc::clone(pod));
        }
        let Some(tables) = tables else {
            return Err(incremental);
        };
        let Compilers {
            replicas,
            local_addresses,
            ..
        } = &mut *incremental;
        local_addresses.extend(added.iter().flat_map(|p| p.ips.iter().copied()));
        local_addresses.sort_unstable();
        local_addresses.dedup();
        replicas.extend(added);
        let pods = keys.len() as u64;
        self.swap_in_uncompiled(
            incremental,
            tables,
            current,
            started,
            caused_at,
            ("added", pods),
        );
        Ok(())
    }

    /// Puts `tables`, made from `current` without a compile (its Services
    /// stay), in force, and counts the `change` (`added` or `removed`) of so
    /// many pods; `started`: when making them began.
    fn swap_in_uncompiled(
        &self,
        incremental: std::sync::MutexGuard<'_, Compilers>,
        tables: Tables,
        current: Arc<Generation>,
        started: Instant,
        caused_at: Instant,
        (change, pods): (&str, u64),
    ) {
        let generation = tables.generation();
        let services = Arc::clone(&current.services);
        drop(current);
        let took = started.elapsed();
        self.swap_in(incremental, tables, services, Some(caused_at));
        self.metrics
            .pods_without_compile
            .get_or_create(&vec![("change", change.to_owned())])
            .inc_by(pods);
        info!(
            generation,
            change,
            pods,
            took_ms = took.as_secs_f64() * 1e3,
            "tables published without a compile"
        );
    }

    /// Compiles the state when pods were added or removed without a
    /// compile since the last ([`Self::record_cni_addresses_of`],
    /// [`Self::forget_cni_addresses`]), so that the tables in force are
    /// numbered as a compile numbers them; what they decide does not
    /// change. Returns what it published, if it did.
    pub fn compile_deferred(&self) -> Option<Published> {
        let incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        if incremental.replicas.is_empty() && incremental.removed.is_empty() {
            return None;
        }
        Some(self.publish_locked(incremental, None))
    }

    /// Records that sandbox `container_id` of `pod` has `ips` (from the
    /// CNI) and, when the pod is in the state without addresses of its own
    /// (and did not have these already), publishes a generation with them.
    #[must_use]
    pub fn record_cni_addresses(
        &self,
        pod: ObjectKey,
        container_id: &str,
        ips: &[IpAddr],
    ) -> CniRecorded {
        self.record_cni_addresses_of(vec![(pod, container_id, ips)])[0]
    }

    /// [`Self::record_cni_addresses`] for several sandboxes at once, in
    /// order, with one publish for all (pods started together wait for one
    /// compile, not one each). Returns what each was.
    pub fn record_cni_addresses_of(
        &self,
        sandboxes: Vec<(ObjectKey, &str, &[IpAddr])>,
    ) -> Vec<CniRecorded> {
        let caused_at = Instant::now();
        let mut incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = Vec::new();
        let recorded = sandboxes
            .into_iter()
            .map(|(pod, container_id, ips)| {
                let known = incremental.state.source_pod(&pod).is_some();
                if incremental.state.insert(&pod, container_id, ips) {
                    changed.push(pod);
                }
                if known {
                    CniRecorded::Known
                } else {
                    CniRecorded::Unknown
                }
            })
            .collect();
        if !changed.is_empty()
            && let Err(incremental) = self.add_replicas(incremental, &changed, caused_at)
        {
            let _ = self.publish_locked(incremental, Some(caused_at));
        }
        recorded
    }

    /// Forgets the CNI's addresses of `pod` if they are sandbox
    /// `container_id`'s, publishing a generation without them when they
    /// were in force. Returns whether there were any.
    pub fn forget_cni_addresses(&self, pod: &ObjectKey, container_id: &str) -> bool {
        let caused_at = Instant::now();
        let mut incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let held = incremental.state.cluster().pods.get(pod).cloned();
        match incremental.state.remove(pod, container_id) {
            None => false,
            Some(changed) => {
                if changed && let Err(incremental) = self.remove_pod(incremental, held, caused_at) {
                    let _ = self.publish_locked(incremental, Some(caused_at));
                }
                true
            }
        }
    }

    /// Removes `held`, a local pod as the state had it, from the tables in
    /// force without compiling, when it is gone from the state (or has no
    /// addresses any more) and [`Compiler::remove_pod`] can; gives the lock
    /// back otherwise, for the caller to compile.
    fn remove_pod<'g>(
        &self,
        mut incremental: std::sync::MutexGuard<'g, Compilers>,
        held: Option<Arc<Pod>>,
        caused_at: Instant,
    ) -> Result<(), std::sync::MutexGuard<'g, Compilers>> {
        let Some(held) = held else {
            return Err(incremental);
        };
        let key = held.key();
        let now = incremental.state.cluster().pods.get(&key);
        if now.is_some_and(|p| p.is_policy_endpoint()) || !held.is_policy_endpoint() {
            return Err(incremental);
        }
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let current = self.publisher.current();
        let tables = match incremental
            .policies
            .remove_pod(&current.tables, &held, generation)
        {
            Ok(tables) => tables,
            Err(why) => {
                debug!(pod = %key, %why, "compiling: not removed alone");
                return Err(incremental);
            }
        };
        let Compilers {
            replicas,
            removed,
            local_addresses,
            ..
        } = &mut *incremental;
        local_addresses.retain(|a| !held.ips.contains(a));
        let before = replicas.len();
        replicas.retain(|p| p.key() != key);
        if replicas.len() == before {
            removed.push(key);
        }
        self.swap_in_uncompiled(
            incremental,
            tables,
            current,
            started,
            caused_at,
            ("removed", 1),
        );
        Ok(())
    }

    /// Forgets the CNI's addresses of every sandbox not in `valid`,
    /// publishing a generation without them when some were in force;
    /// returns the pods.
    pub fn retain_cni_addresses(&self, valid: &[String]) -> Vec<ObjectKey> {
        let mut incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let (gone, changed) = incremental.state.retain_containers(valid);
        if changed {
            let _ = self.publish_locked(incremental, Some(Instant::now()));
        }
        gone
    }

    /// The sandbox and addresses the CNI reported for `pod`, if any.
    #[must_use]
    pub fn cni_addresses(&self, pod: &ObjectKey) -> Option<(String, Vec<IpAddr>)> {
        let incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        incremental
            .state
            .cni_addresses(pod)
            .map(|(id, ips)| (id.to_owned(), ips.to_vec()))
    }

    /// Addresses of the local pods policy applies to in the state last
    /// published, the CNI's included: what the datapath must adopt.
    #[must_use]
    pub fn local_addresses(&self) -> Vec<IpAddr> {
        let incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        incremental.local_addresses.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkPolicy, PodPhase};

    fn pod(name: &str, ips: &[IpAddr]) -> crate::model::Pod {
        crate::model::Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: crate::model::Labels::default(),
            node: None,
            host_network: false,
            phase: PodPhase::Pending,
            ips: ips.to_vec(),
            host_ips: Vec::new(),
            named_ports: Vec::new(),
        }
    }

    #[test]
    fn generations_continue_above_those_a_restored_table_recorded() {
        use podfence_datapath::conntrack::Timeouts;
        let table = Arc::new(Conntrack::new(64, Timeouts::default()));
        // As an agent before left it.
        table.record_generation(41);
        let tables = TablePublisher::new(CompileOptions::default()).with_conntrack(&table);
        assert_eq!(tables.generation(), 41, "in force: none of ours yet");
        let published = tables.publish(&Cluster::default(), None);
        assert_eq!(published.generation, 42);
        assert_eq!(tables.publisher().current().tables.generation(), 42);
        assert_eq!(table.generation_floor(), 42, "recorded for the next agent");
        // Without a table: from 1, as always.
        let plain = TablePublisher::new(CompileOptions::default());
        assert_eq!(plain.publish(&Cluster::default(), None).generation, 1);
    }

    #[test]
    fn a_table_taken_over_later_keeps_generations_above_the_agent_befores() {
        use podfence_datapath::conntrack::Timeouts;
        // The agent before had 7 in force when asked: this one publishes 8.
        let tables = TablePublisher::new(CompileOptions::default()).numbered_after(7);
        assert_eq!(tables.publish(&Cluster::default(), None).generation, 8);
        let handed_over = Arc::new(Conntrack::new(64, Timeouts::default()));
        handed_over.record_generation(7);
        assert!(tables.clone().take_conntrack(&handed_over).is_none());
        assert_eq!(
            handed_over.generation_floor(),
            8,
            "the generation in force is recorded"
        );
        assert_eq!(tables.publish(&Cluster::default(), None).generation, 9);
        assert_eq!(
            handed_over.generation_floor(),
            9,
            "and each one after, by every clone"
        );

        // It published twice more meanwhile: this one compiles above them.
        let tables = TablePublisher::new(CompileOptions::default()).numbered_after(7);
        let _ = tables.publish(&Cluster::default(), None);
        let handed_over = Arc::new(Conntrack::new(64, Timeouts::default()));
        handed_over.record_generation(9);
        let again = tables.take_conntrack(&handed_over).expect("a publish");
        assert_eq!(again.generation, 10);
        assert_eq!(tables.publisher().current().tables.generation(), 10);
        assert_eq!(handed_over.generation_floor(), 10);
    }

    #[test]
    fn replicas_added_and_pods_released_wait_for_a_compile_until_one_is_due() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let tables = TablePublisher::new(CompileOptions::default());
        let mut cluster = Cluster::default();
        let labelled = |name: &str, app: &str, ips: &[IpAddr]| {
            let mut p = pod(name, ips);
            p.labels.insert("app".into(), app.into());
            p
        };
        cluster.apply(labelled("web-1", "web", &[ip("10.0.0.1")]));
        cluster.apply(labelled("web-0", "web", &[]));
        cluster.apply(labelled("db-0", "db", &[]));
        // Only web may reach db: web and db are told apart.
        let policy = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
";
        let policy = crate::sources::manifests::load_str(std::path::Path::new("db.yaml"), policy)
            .unwrap()
            .cluster;
        for p in policy.policies.values() {
            cluster.apply(NetworkPolicy::clone(p));
        }
        tables.publish(&cluster, None);
        let pod_at = |addr: &str| {
            let generation = tables.publisher().current();
            let peer = generation.tables.peer(ip(addr)).pod.unwrap();
            generation.tables.pod(peer.pod).to_string()
        };

        // Like web-1: added, numbered after it (a compile puts web-0 first).
        let web_0 = ObjectKey::new("x", "web-0");
        let _ = tables.record_cni_addresses(web_0.clone(), "c1", &[ip("10.0.0.2")]);
        assert_eq!(tables.generation(), 2);
        let current = tables.publisher().current();
        let added = current.tables.peer(ip("10.0.0.2")).pod.unwrap();
        assert_eq!(added.pod.0, 1, "appended");
        assert_eq!(pod_at("10.0.0.2"), "x/web-0");
        assert_eq!(added.identity, current.tables.peer(ip("10.0.0.1")).identity);
        assert_eq!(tables.in_force_pod(&web_0).unwrap().ips, [ip("10.0.0.2")]);
        assert!(tables.in_force().0.pods.contains_key(&web_0));
        assert_eq!(tables.local_addresses(), [ip("10.0.0.1"), ip("10.0.0.2")]);

        let added = tables
            .metrics()
            .pods_without_compile
            .get_or_create(&vec![("change", "added".to_owned())])
            .get();
        assert_eq!(added, 1);

        // Its own identity: compiled, and web-0 with it.
        let db_0 = ObjectKey::new("x", "db-0");
        let _ = tables.record_cni_addresses(db_0.clone(), "c2", &[ip("10.0.0.3")]);
        assert_eq!(tables.generation(), 3);
        assert_eq!(tables.compile_deferred(), None, "nothing left to compile");
        let current = tables.publisher().current();
        assert_eq!(current.tables.peer(ip("10.0.0.2")).pod.unwrap().pod.0, 1);
        assert_eq!(current.tables.peer(ip("10.0.0.1")).pod.unwrap().pod.0, 2);
        assert_ne!(
            current.tables.peer(ip("10.0.0.3")).identity,
            current.tables.peer(ip("10.0.0.1")).identity
        );

        // Another replica, then the compile that numbers it as a compile does.
        cluster.apply(labelled("web-2", "web", &[]));
        tables.publish(&cluster, None);
        let web_2 = ObjectKey::new("x", "web-2");
        let _ = tables.record_cni_addresses(web_2.clone(), "c3", &[ip("10.0.0.4")]);
        assert_eq!(tables.generation(), 5);
        assert_eq!(pod_at("10.0.0.4"), "x/web-2");
        let before = tables.publisher().current();
        let published = tables.compile_deferred().expect("a replica to compile");
        assert_eq!(published.generation, 6);
        let after = tables.publisher().current();
        assert_eq!(after.tables.peer(ip("10.0.0.4")).pod.unwrap().pod.0, 3);
        for (a, b) in [("10.0.0.1", "10.0.0.4"), ("10.0.0.4", "10.0.0.3")] {
            let tcp = podfence_datapath::tables::IpProtocol::TCP;
            assert_eq!(
                before.tables.classify(ip(a), ip(b), tcp, 80).is_allowed(),
                after.tables.classify(ip(a), ip(b), tcp, 80).is_allowed()
            );
        }
        assert_eq!(tables.compile_deferred(), None);

        // Released: taken out of the tables alone, then compiled out.
        let tcp = podfence_datapath::tables::IpProtocol::TCP;
        let allowed = |a: &str, b: &str| {
            let current = tables.publisher().current();
            current.tables.classify(ip(a), ip(b), tcp, 80).is_allowed()
        };
        assert!(allowed("10.0.0.4", "10.0.0.3"), "web-2 may reach db");
        assert!(tables.forget_cni_addresses(&web_2, "c3"));
        assert_eq!(tables.generation(), 7);
        let current = tables.publisher().current();
        assert_eq!(current.tables.peer(ip("10.0.0.4")).pod, None);
        assert!(
            !allowed("10.0.0.4", "10.0.0.3"),
            "its address is no web pod's"
        );
        assert!(allowed("10.0.0.1", "10.0.0.3"));
        assert_eq!(tables.in_force_pod(&web_2), None);
        assert!(!tables.in_force().0.pods.contains_key(&web_2));
        assert!(!tables.local_addresses().contains(&ip("10.0.0.4")));
        let published = tables.compile_deferred().expect("a removal to compile");
        assert_eq!(published.generation, 8);
        assert_eq!(tables.in_force_pod(&web_2), None);
        assert!(!allowed("10.0.0.4", "10.0.0.3"));
        assert_eq!(tables.compile_deferred(), None);
    }

    #[test]
    fn cni_addresses_are_compiled_in_until_forgotten() {
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        let tables = TablePublisher::new(CompileOptions::default());
        let mut cluster = Cluster::default();
        cluster.apply(pod("new", &[]));
        cluster.apply(pod("old", &[other]));
        tables.publish(&cluster, None);
        assert_eq!(tables.local_addresses(), [other]);
        let key = ObjectKey::new("x", "new");

        // A pod the state does not have yet: recorded, nothing published.
        let later = ObjectKey::new("x", "later");
        assert_eq!(
            tables.record_cni_addresses(later.clone(), "c0", &["10.1.0.6".parse().unwrap()]),
            CniRecorded::Unknown
        );
        assert_eq!(tables.generation(), 1);

        assert_eq!(
            tables.record_cni_addresses(key.clone(), "c1", &[ip]),
            CniRecorded::Known
        );
        assert_eq!(tables.generation(), 2, "published at once");
        let (in_force, generation) = tables.in_force();
        assert_eq!(in_force.pods[&key].ips, [ip]);
        assert_eq!(
            tables.in_force_pod(&key),
            Some(Arc::clone(&in_force.pods[&key]))
        );
        assert_eq!(
            tables
                .in_force_pod(&ObjectKey::new("x", "old"))
                .unwrap()
                .ips,
            [other]
        );
        assert_eq!(tables.in_force_pod(&later), None, "not in the state");
        assert_eq!(generation.tables.generation(), 2);
        assert_eq!(tables.local_addresses(), [other, ip]);
        // The next state the source publishes keeps them.
        tables.publish(&cluster, None);
        assert_eq!(tables.in_force().0.pods[&key].ips, [ip]);

        // Another sandbox's release leaves them; the pod's own takes them.
        assert!(!tables.forget_cni_addresses(&key, "c0"));
        assert!(tables.forget_cni_addresses(&key, "c1"));
        assert!(!tables.in_force().0.pods.contains_key(&key));
        assert_eq!(tables.in_force_pod(&key), None);
        assert_eq!(tables.local_addresses(), [other]);
        assert_eq!(tables.retain_cni_addresses(&[]), [later]);
    }
}
