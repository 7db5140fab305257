//! AF_XDP sockets made before the pods that will use them.
//!
//! Most of what opening a pod's socket costs is its UMEM: 4 MiB mapped,
//! faulted in and registered, a millisecond or more per socket, while the
//! pod's `podfence-cni ADD` waits. A socket can be made before its
//! interface exists and bound later ([`PreparedXsk`]), so a thread of the
//! agent keeps a few ready (`--spare-sockets`) and makes new ones as they
//! are taken; a pod's attach only binds. When none is ready (a burst
//! larger than the pool), the attach makes its own as before.
//!
//! The thread is started by the agent's thread, so it makes the sockets in
//! the agent's network namespace, the one its interfaces are in.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use podfence_datapath::ports::xsk::{PreparedXsk, XskConfig};
use tracing::warn;

/// How long the maker waits after a failure before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Pool {
    ready: Vec<PreparedXsk>,
    stop: bool,
    /// The last failure was logged (not logged again until one succeeds).
    failing: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pool: Mutex<Pool>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool of prepared sockets for one socket configuration, refilled by a
/// thread of its own (see the module doc). Dropping it stops the thread
/// and closes the sockets not taken.
#[derive(Debug)]
pub struct SpareSockets {
    config: XskConfig,
    shared: Arc<Shared>,
    maker: Option<JoinHandle<()>>,
}

impl SpareSockets {
    /// Keeps `count` sockets for `config` ready (none and no thread when
    /// `count` is 0).
    pub fn start(config: XskConfig, count: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let maker = if count == 0 {
            None
        } else {
            let shared = Arc::clone(&shared);
            Some(
                std::thread::Builder::new()
                    .name("spare-sockets".into())
                    .spawn(move || make(&shared, &config, count))?,
            )
        };
        Ok(Self {
            config,
            shared,
            maker,
        })
    }

    /// `count` sockets for `config` made at once on the calling thread,
    /// with no maker behind them: for a start that will bind them all.
    /// Stops at the first failure (the attach then makes its own).
    #[must_use]
    pub fn made_now(config: XskConfig, count: usize) -> Self {
        let ready = (0..count)
            .map_while(|_| {
                PreparedXsk::new(&config)
                    .inspect_err(|e| warn!(error = %e, "making sockets ahead"))
                    .ok()
            })
            .collect();
        Self {
            config,
            shared: Arc::new(Shared {
                pool: Mutex::new(Pool {
                    ready,
                    ..Pool::default()
                }),
                changed: Condvar::new(),
            }),
            maker: None,
        }
    }

    /// A ready socket for `config`, if one is (the maker then makes
    /// another).
    #[must_use]
    pub fn take(&self, config: &XskConfig) -> Option<PreparedXsk> {
        if *config != self.config {
            return None;
        }
        let taken = self.shared.lock().ready.pop();
        if taken.is_some() {
            self.shared.changed.notify_all();
        }
        taken
    }

    /// Sockets ready now.
    #[must_use]
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Waits until `count` sockets are ready or `timeout` passed; returns
    /// how many are.
    #[must_use]
    pub fn wait_ready(&self, count: usize, timeout: Duration) -> usize {
        let pool = self.shared.lock();
        let (pool, _) = self
            .shared
            .changed
            .wait_timeout_while(pool, timeout, |p| p.ready.len() < count && !p.stop)
            .unwrap_or_else(PoisonError::into_inner);
        pool.ready.len()
    }
}

impl Drop for SpareSockets {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(maker) = self.maker.take() {
            let _ = maker.join();
        }
    }
}

/// The maker thread: tops the pool up to `count`, one socket at a time
/// (made without the lock held, so `take` never waits for one).
fn make(shared: &Shared, config: &XskConfig, count: usize) {
    let mut pool = shared.lock();
    loop {
        if pool.stop {
            return;
        }
        if pool.ready.len() >= count {
            pool = shared
                .changed
                .wait(pool)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        drop(pool);
        let made = PreparedXsk::new(config);
        pool = shared.lock();
        match made {
            Ok(socket) => {
                pool.ready.push(socket);
                pool.failing = false;
                shared.changed.notify_all();
            }
            Err(e) => {
                if !pool.failing {
                    warn!(error = %e, "making a spare AF_XDP socket (pods' sockets are made as they start)");
                    pool.failing = true;
                }
                pool = shared
                    .changed
                    .wait_timeout_while(pool, RETRY_AFTER, |p| !p.stop)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> XskConfig {
        XskConfig {
            frame_count: 64,
            rx_ring: 32,
            tx_ring: 32,
            fill_ring: 32,
            comp_ring: 32,
            ..XskConfig::default()
        }
    }

    /// Needs AF_XDP sockets (root); skips otherwise.
    fn can_make_sockets() -> bool {
        match PreparedXsk::new(&small()) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skipped: cannot make AF_XDP sockets here: {e}");
                false
            }
        }
    }

    #[test]
    fn keeps_the_pool_full_as_sockets_are_taken() {
        if !can_make_sockets() {
            return;
        }
        let spares = SpareSockets::start(small(), 3).expect("start");
        assert_eq!(spares.wait_ready(3, Duration::from_secs(10)), 3);
        let taken: Vec<PreparedXsk> = (0..3).filter_map(|_| spares.take(&small())).collect();
        assert_eq!(taken.len(), 3);
        assert!(taken.iter().all(|s| s.config() == &small()));
        assert_eq!(spares.wait_ready(3, Duration::from_secs(10)), 3, "refilled");
        // Never more than asked for.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(spares.ready(), 3);
        // A socket for another configuration is not in this pool.
        let other = XskConfig {
            frame_count: 128,
            ..small()
        };
        assert!(spares.take(&other).is_none());
    }

    #[test]
    fn sockets_made_now_are_there_at_once_and_not_made_again() {
        if !can_make_sockets() {
            return;
        }
        let ahead = SpareSockets::made_now(small(), 3);
        assert!(ahead.maker.is_none());
        assert_eq!(ahead.ready(), 3);
        let taken: Vec<PreparedXsk> = (0..4).filter_map(|_| ahead.take(&small())).collect();
        assert_eq!(taken.len(), 3, "as many as made");
        assert_eq!(ahead.ready(), 0, "none made after");
        // An invalid configuration: none, and no panic.
        let bad = XskConfig {
            frame_count: 3,
            ..small()
        };
        assert_eq!(SpareSockets::made_now(bad, 2).ready(), 0);
    }

    #[test]
    fn an_empty_pool_has_no_thread_and_gives_nothing() {
        let spares = SpareSockets::start(small(), 0).expect("start");
        assert!(spares.maker.is_none());
        assert!(spares.take(&small()).is_none());
        assert_eq!(spares.wait_ready(1, Duration::from_millis(10)), 0);
    }

    #[test]
    fn a_failing_maker_stops_when_dropped() {
        // An invalid configuration fails every time: the maker logs, waits
        // and must still stop promptly.
        let bad = XskConfig {
            frame_count: 3,
            ..small()
        };
        let spares = SpareSockets::start(bad, 2).expect("start");
        assert_eq!(spares.wait_ready(1, Duration::from_millis(50)), 0);
        drop(spares);
    }
}
