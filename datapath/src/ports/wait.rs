//! Sleeping until a port has frames or another thread has work for us:
//! idle workers (and the benchmark's sink) `poll` their sockets rather than
//! spin, and the agent ends that sleep when it sends a worker a command.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use super::xsk::XskPort;

/// Waits for frames on a set of ports, for idle workers: one `poll` system
/// call instead of spinning.
#[derive(Debug)]
pub struct ReadableWait {
    fds: Vec<libc::pollfd>,
    /// `fds[0]` is a [`Wake`].
    wake: bool,
}

impl ReadableWait {
    /// Watches `ports` (their sockets must outlive the waiter's use).
    #[must_use]
    pub fn new<'a>(ports: impl IntoIterator<Item = &'a XskPort>) -> Self {
        Self::with_wake(ports, None)
    }

    /// Watches `ports` and, if given, `wake`: a [`Wake::wake`] from another
    /// thread ends the wait at once (and is consumed by it).
    #[must_use]
    pub fn with_wake<'a>(
        ports: impl IntoIterator<Item = &'a XskPort>,
        wake: Option<&Wake>,
    ) -> Self {
        let fds = wake
            .map(Wake::fd)
            .into_iter()
            .chain(ports.into_iter().map(XskPort::fd))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Self {
            fds,
            wake: wake.is_some(),
        }
    }

    /// Waits until a port has frames to receive or `timeout` passes;
    /// returns whether one has. A signal ends the wait early (`Ok(false)`).
    pub fn wait(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a live, initialised array of `len` pollfds that
        // the kernel writes `revents` into during the call only.
        let ret = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        match ret {
            r if r > 0 => {
                if self.wake && self.fds[0].revents != 0 {
                    drain_eventfd(self.fds[0].fd);
                }
                Ok(true)
            }
            0 => Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Wakes a thread sleeping in [`ReadableWait::wait`] from another thread
/// (an `eventfd`): a worker told to add a port or to sync acts at once
/// rather than when its poll times out. One write per command, never per
/// packet.
#[derive(Debug)]
pub struct Wake {
    fd: std::os::fd::OwnedFd,
}

impl Wake {
    /// A new, unsignalled waker.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned here only.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Ends the current or next wait of the waiter watching this.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. The only
        // failure (EAGAIN: the counter is at its maximum) still leaves it
        // readable, which is all a wake needs.
        let _ = unsafe { libc::write(self.fd(), (&raw const one).cast(), 8) };
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::os::fd::AsFd for Wake {
    /// Readable once woken: for callers that poll it with other
    /// descriptors.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Resets a signalled eventfd (non-blocking: nothing to read is fine).
fn drain_eventfd(fd: RawFd) {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64 from an eventfd.
    let _ = unsafe { libc::read(fd, (&raw mut count).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_from_another_thread_ends_the_wait_and_is_consumed() {
        let wake = Wake::new().unwrap();
        let mut wait = ReadableWait::with_wake(std::iter::empty(), Some(&wake));
        assert!(
            !wait.wait(std::time::Duration::ZERO).unwrap(),
            "nothing signalled yet"
        );
        std::thread::scope(|s| {
            s.spawn(|| wake.wake());
            // Only the wake can end this wait before its minute is up.
            assert!(wait.wait(std::time::Duration::from_mins(1)).unwrap());
        });
        assert!(
            !wait.wait(std::time::Duration::ZERO).unwrap(),
            "the wake was consumed"
        );
        wake.wake();
        wake.wake();
        assert!(wait.wait(std::time::Duration::ZERO).unwrap());
        assert!(
            !wait.wait(std::time::Duration::ZERO).unwrap(),
            "two wakes, one wait"
        );
    }
}
