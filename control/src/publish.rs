//! Compile-and-publish: the one place where a cluster state becomes the
//! table generation the workers read.
//!
//! A [`TablePublisher`] is shared (cloned) by whoever produces cluster
//! states (the manifest reload, the Kubernetes source) and by the agent,
//! whose workers read its [`Publisher`]. Generations are numbered here,
//! once, whatever publishes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use podfence_datapath::publish::{Generation, Publisher};
use podfence_datapath::{ServiceTable, Tables};
use tracing::{info, warn};

use crate::compile::{CompileOptions, Compiler, Locality, ServiceCompiler, ServicesConfig};
use crate::index::Cluster;
use crate::metrics::ControlMetrics;

/// What one publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The generation now in force.
    pub generation: u64,
    /// How long compiling took.
    pub compile_time: Duration,
}

/// The policy and the service compiler, kept together from one generation
/// to the next.
#[derive(Debug)]
struct Compilers {
    policies: Compiler,
    services: ServiceCompiler,
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
            })),
            generation: Arc::new(AtomicU64::new(0)),
            metrics: ControlMetrics::default(),
        }
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
        (compiler.policies.compiled_state(), self.publisher.current())
    }

    /// Compiles `cluster` into the next generation and swaps it in.
    /// `caused_at`: when the oldest change it reflects was seen.
    pub fn publish(&self, cluster: &Cluster, caused_at: Option<Instant>) -> Published {
        let mut incremental = self.compiler.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let compiled = incremental.policies.compile(cluster, generation);
        let services = incremental.services.compile(cluster);
        for w in compiled.warnings.iter().chain(&services.warnings) {
            warn!(warning = %w, "compile");
        }
        let compile_time = started.elapsed();
        self.publisher
            .publish(compiled.tables, services.table, caused_at);
        self.generation.store(generation, Ordering::Release);
        drop(incremental);
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics
            .compile_seconds
            .observe(compile_time.as_secs_f64());
        if let Some(t) = caused_at {
            self.metrics
                .propagation_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        info!(
            generation,
            pods = cluster.pods.len(),
            policies = cluster.policies.len(),
            compile_ms = compile_time.as_secs_f64() * 1e3,
            since_change_ms = caused_at.map(|t| t.elapsed().as_secs_f64() * 1e3),
            "tables published"
        );
        Published {
            generation,
            compile_time,
        }
    }
}
