//! Publication of table generations to the workers.
//!
//! A generation is one immutable [`Tables`] value behind an `Arc`; publishing
//! is one atomic pointer swap (arc-swap). Workers read through a per-worker
//! [`TablesReader`] at batch boundaries: while the generation is unchanged
//! that is one atomic load and no reference-count traffic, a swap never
//! blocks a worker, and a batch sees exactly one generation, never half a
//! table. The previous generation is freed when its last reader moves on.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use arc_swap::cache::Cache;

use crate::tables::Tables;

/// A published generation and when the change that caused it happened.
#[derive(Debug)]
pub struct Generation {
    /// The tables.
    pub tables: Tables,
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
}

impl Publisher {
    /// Starts with `initial` in force.
    #[must_use]
    pub fn new(initial: Tables) -> Self {
        let g = Generation {
            tables: initial,
            caused_at: None,
            published_at: Instant::now(),
        };
        Self {
            current: Arc::new(ArcSwap::from_pointee(g)),
        }
    }

    /// Puts `tables` in force; readers see it at their next batch.
    pub fn publish(&self, tables: Tables, caused_at: Option<Instant>) {
        let g = Generation {
            tables,
            caused_at,
            published_at: Instant::now(),
        };
        self.current.store(Arc::new(g));
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

    #[test]
    fn readers_see_a_new_generation_at_their_next_load() {
        let p = Publisher::new(Tables::empty(1));
        let mut r = p.reader();
        assert_eq!(r.load().tables.generation(), 1);
        p.publish(Tables::empty(2), Some(Instant::now()));
        assert_eq!(r.load().tables.generation(), 2);
        assert!(r.load().caused_at.is_some());
        assert_eq!(p.current().tables.generation(), 2);
    }
}
