//! Namespaces: entering one on a thread, and the process-wide registry of
//! the testbed's namespaces that a SIGINT/SIGTERM handler deletes before
//! the process dies.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Namespaces of every live testbed, for the signal handler.
static REGISTRY: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Write end of the pipe the signal handler writes the signal number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static HANDLER: OnceLock<()> = OnceLock::new();

pub(crate) fn register(name: &str) {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name.to_owned());
}

pub(crate) fn unregister(name: &str) {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|n| n != name);
}

pub(crate) fn delete_netns(name: &str) {
    // Absent already is fine: deletion is idempotent.
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = u8::try_from(sig).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
        unsafe { libc::write(fd, std::ptr::addr_of!(byte).cast(), 1) };
    }
}

/// Installs (once) the SIGINT/SIGTERM handler: it hands the signal to a
/// thread that deletes every registered namespace, then dies of the signal.
pub(crate) fn install_signal_handler() {
    HANDLER.get_or_init(|| {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return;
        }
        // SAFETY: pipe2 just returned this descriptor; nothing else owns it.
        let mut reader = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        std::thread::Builder::new()
            .name("testbed-signals".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                if reader.read_exact(&mut byte).is_err() {
                    return;
                }
                let names = std::mem::take(
                    &mut *REGISTRY
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for name in names.iter().rev() {
                    delete_netns(name);
                }
                let sig = libc::c_int::from(byte[0]);
                // SAFETY: restoring the default action and re-raising the
                // signal are plain syscalls on valid signal numbers.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::raise(sig);
                }
            })
            .ok();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; the handler only calls
            // write(2), which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&raw mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(sig, &raw const action, std::ptr::null_mut());
            }
        }
    });
}

/// Enters namespace `name` on the calling thread.
pub(crate) fn enter_netns(name: &str) -> io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: `file` is an open namespace descriptor for the duration of the
    // call; setns only changes the calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and waits for it.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Deletes every IPv4 connection tracking entry of namespace `name`, as
/// `conntrack -F` does (one ctnetlink request, `IPCTNL_MSG_CT_DELETE` with
/// no tuple). Entries of one measured path must not meet the next: a
/// translated entry whose reply tuple is an untranslated path's flow makes
/// the kernel remap source ports, or drop the packet at confirmation.
pub fn flush_conntrack(name: &str) -> io::Result<()> {
    /// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE`.
    const CT_DELETE: u16 = (1 << 8) | 2;
    /// `NLM_F_REQUEST | NLM_F_ACK`.
    const FLAGS: u16 = 1 | 4;
    /// `NLMSG_ERROR`: the acknowledgement.
    const ERROR: u16 = 2;
    in_netns(name, || {
        // SAFETY: socket(2) with constant arguments reads no memory of ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // nlmsghdr (16 bytes), then nfgenmsg: family, version, resource id.
        let mut msg = [0u8; 20];
        msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&CT_DELETE.to_ne_bytes());
        msg[6..8].copy_from_slice(&FLAGS.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        msg[16] = libc::AF_INET as u8;
        // SAFETY: `msg` is valid for reads of its length; an unconnected
        // netlink socket sends to the kernel.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 256];
        // SAFETY: `reply` is valid for writes of its length.
        let got = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        let Ok(got) = usize::try_from(got) else {
            return Err(io::Error::last_os_error());
        };
        if got < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != ERROR {
            return Err(io::Error::other("ctnetlink: no acknowledgement"));
        }
        match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    })
}
