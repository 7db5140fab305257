//! A thread that drops what the workers let go of: the ports of pods that
//! went. Closing an AF_XDP socket waits in the kernel for an RCU grace
//! period and unmapping its UMEM frees megabytes; a worker doing either
//! would keep the traffic of every pod it serves waiting for milliseconds
//! (8–16 ms measured per removed pod).

use std::sync::mpsc;
use std::thread::JoinHandle;

/// The thread, and the way to hand it things.
#[derive(Debug)]
pub(super) struct Reaper<T> {
    tx: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Reaper<T> {
    /// Starts the thread, named `name`.
    pub(super) fn start(name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<T>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || rx.into_iter().for_each(drop))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A handle to hand it things with (they are dropped where they are
    /// given once the thread has ended).
    pub(super) fn sender(&self) -> Handoff<T> {
        Handoff(self.tx.clone())
    }

    /// Once every [`Handoff`] is gone, waits until all they sent is
    /// dropped.
    pub(super) fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A worker's way to the [`Reaper`].
#[derive(Debug)]
pub(super) struct Handoff<T>(Option<mpsc::Sender<T>>);

impl<T> Handoff<T> {
    /// Gives `item` to the reaper to drop (dropped here when it is gone).
    pub(super) fn give(&self, item: T) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the thread it is dropped on.
    struct Noted(Arc<Mutex<Vec<String>>>);

    impl Drop for Noted {
        fn drop(&mut self) {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            self.0.lock().unwrap().push(name);
        }
    }

    #[test]
    fn what_is_handed_over_is_dropped_on_the_reaper_thread() {
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let mut reaper = Reaper::start("test-reaper").unwrap();
        let handoff = reaper.sender();
        let worker = std::thread::spawn({
            let dropped = Arc::clone(&dropped);
            move || {
                handoff.give(Noted(Arc::clone(&dropped)));
                handoff.give(Noted(dropped));
            }
        });
        worker.join().unwrap();
        reaper.finish();
        assert_eq!(*dropped.lock().unwrap(), ["test-reaper", "test-reaper"]);
    }
}
