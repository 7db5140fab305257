//! Publication of table generations to the workers.
//!
//! A generation is the policy [`Tables`] and the [`ServiceTable`] of one
//! cluster state, immutable, behind one `Arc`; publishing is one atomic
//! pointer swap (arc-swap), so a batch never translates with the Services of
//! one state and classifies with the policies of another. Workers read through a per-worker
//! [`TablesReader`] at batch boundaries: while the generation is unchanged
//! that is one atomic load and no reference-count traffic, a swap never
//! blocks a worker, and a batch sees exactly one generation, never half a
//! table.
//!
//! A generation replaced is freed by the publisher, not by a worker:
//! freeing the tables of a 10k-pod cluster takes a millisecond or two,
//! which a worker would spend with every pod's traffic waiting. The
//! publisher keeps what it replaced until no reader holds it any more and
//! frees it at a later publish (or [`Publisher::free_retired`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use arc_swap::cache::Cache;

use crate::services::ServiceTable;
use crate::tables::Tables;

/// A published generation and when the change that caused it happened.
#[derive(Debug)]
pub struct Generation {
    /// The policy tables.
    pub tables: Tables,
    /// The Services of the same state. Shared with the previous generation
    /// when they did not change.
    pub services: Arc<ServiceTable>,
    /// When the oldest cluster event this generation reflects was seen
    /// (for propagation latency); `None` for the initial state.
    pub caused_at: Option<Instant>,
    /// When it was published.
    pub published_at: Instant,
}

/// The writer side: the control plane publishes here.
#[derive(Debug, Clone)]
pub struct Publisher {
    current: Arc<ArcSwap<Generation>>,
    /// Generations replaced that readers may still hold.
    retired: Arc<Mutex<Vec<Arc<Generation>>>>,
}

impl Publisher {
    /// Starts with `initial` and `services` in force.
    #[must_use]
    pub fn new(initial: Tables, services: impl Into<Arc<ServiceTable>>) -> Self {
        let g = Generation {
            tables: initial,
            services: services.into(),
            caused_at: None,
            published_at: Instant::now(),
        };
        Self {
            current: Arc::new(ArcSwap::from_pointee(g)),
            retired: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Puts `tables` and `services` in force together; readers see them at
    /// their next batch.
    pub fn publish(
        &self,
        tables: Tables,
        services: impl Into<Arc<ServiceTable>>,
        caused_at: Option<Instant>,
    ) {
        let g = Generation {
            tables,
            services: services.into(),
            caused_at,
            published_at: Instant::now(),
        };
        let replaced = self.current.swap(Arc::new(g));
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.push(replaced);
        free_unread(&mut retired);
    }

    /// Frees, on the calling thread, the generations replaced that no
    /// reader holds any more (a reader lets go of one at its next load).
    pub fn free_retired(&self) {
        free_unread(&mut self.retired.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Generations replaced and not freed yet.
    #[cfg(test)]
    fn retired(&self) -> usize {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The generation in force now.
    #[must_use]
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// A reader for one worker.
    #[must_use]
    pub fn reader(&self) -> TablesReader {
        TablesReader {
            cache: Cache::new(Arc::clone(&self.current)),
        }
    }
}

/// Drops the generations only `retired` holds. A count read as 1 stays 1:
/// a replaced generation is in no swap, so no reader can take it again.
fn free_unread(retired: &mut Vec<Arc<Generation>>) {
    retired.retain(|g| Arc::strong_count(g) > 1);
}

/// A worker's view of the published tables.
#[derive(Debug)]
pub struct TablesReader {
    cache: Cache<Arc<ArcSwap<Generation>>, Arc<Generation>>,
}

impl TablesReader {
    /// The newest generation; call once per batch and use it for the batch.
    #[inline]
    pub fn load(&mut self) -> &Generation {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::IpAddr;

    use crate::services::{Endpoint, FrontendKey, ServiceOptions, ServiceTableBuilder};
    use crate::wire::IpProtocol;

    fn one_service(backend: &str) -> ServiceTable {
        let mut b = ServiceTableBuilder::new();
        let s = b.add_service("ns", "svc", ServiceOptions::default());
        let frontend = FrontendKey {
            addr: "10.96.0.1".parse().unwrap(),
            protocol: IpProtocol::TCP,
            port: 80,
        };
        let addr: IpAddr = backend.parse().unwrap();
        b.add_frontend(s, frontend, &[Endpoint::ready(addr, 8080, true)])
            .unwrap();
        b.build()
    }

    fn backend_of(g: &Generation) -> Option<IpAddr> {
        let f = g
            .services
            .frontend("10.96.0.1".parse().unwrap(), IpProtocol::TCP, 80)?;
        Some(f.choose(0)?.addr)
    }

    #[test]
    fn readers_see_a_new_generation_at_their_next_load() {
        let p = Publisher::new(Tables::empty(1), ServiceTable::empty());
        let mut r = p.reader();
        assert_eq!(r.load().tables.generation(), 1);
        assert!(r.load().services.is_empty());
        p.publish(
            Tables::empty(2),
            one_service("10.0.0.1"),
            Some(Instant::now()),
        );
        assert_eq!(r.load().tables.generation(), 2);
        assert_eq!(backend_of(r.load()), Some("10.0.0.1".parse().unwrap()));
        assert!(r.load().caused_at.is_some());
        assert_eq!(p.current().tables.generation(), 2);
    }

    #[test]
    fn a_replaced_generation_is_freed_by_the_publisher_not_by_its_last_reader() {
        let p = Publisher::new(Tables::empty(1), ServiceTable::empty());
        let mut r = p.reader();
        assert_eq!(r.load().tables.generation(), 1);
        let first = Arc::downgrade(&p.current());
        p.publish(Tables::empty(2), ServiceTable::empty(), None);
        // The reader still has generation 1 in hand: it stays.
        assert!(first.upgrade().is_some());
        assert_eq!(p.retired(), 1);
        // The reader moves on; its release is not the last.
        assert_eq!(r.load().tables.generation(), 2);
        assert!(first.upgrade().is_some());
        p.free_retired();
        assert!(first.upgrade().is_none());
        assert_eq!(p.retired(), 0);
        // With no reader behind, a publish frees what it replaces at once.
        p.publish(Tables::empty(3), ServiceTable::empty(), None);
        assert_eq!(r.load().tables.generation(), 3);
        p.publish(Tables::empty(4), ServiceTable::empty(), None);
        assert_eq!(p.retired(), 1, "generation 3, which the reader holds");
        assert_eq!(r.load().tables.generation(), 4);
        p.publish(Tables::empty(5), ServiceTable::empty(), None);
        assert_eq!(p.retired(), 1, "generation 4 is held by the reader");
    }

    /// Policies and Services of one state go live together, and a state
    /// that changes only policies can keep the same service table.
    #[test]
    fn services_and_policies_swap_together() {
        let services = Arc::new(one_service("10.0.0.1"));
        let p = Publisher::new(Tables::empty(1), Arc::clone(&services));
        let mut r = p.reader();
        p.publish(Tables::empty(2), Arc::clone(&services), None);
        let g = r.load();
        assert_eq!(g.tables.generation(), 2);
        assert!(Arc::ptr_eq(&g.services, &services));
        p.publish(Tables::empty(3), one_service("10.0.0.2"), None);
        let g = r.load();
        assert_eq!(
            (g.tables.generation(), backend_of(g)),
            (3, Some("10.0.0.2".parse().unwrap()))
        );
    }
}
