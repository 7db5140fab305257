//! Tests that need root or a kernel feature skip where they cannot run,
//! and say why, instead of failing on a developer's machine.

use std::process::Command;

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Running as root.
    Root,
    /// iproute2's `ip` is installed.
    Iproute2,
    /// `ip netns` works (iproute2 installed, namespaces usable).
    Netns,
    /// The kernel has the bpf() syscall.
    Bpf,
}

impl Need {
    /// Why this need is not met here, if it is not.
    fn unmet(self) -> Option<String> {
        match self {
            Self::Root => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                (unsafe { libc::geteuid() } != 0).then(|| "not running as root".into())
            }
            Self::Iproute2 => Command::new("ip")
                .arg("-V")
                .output()
                .is_err()
                .then(|| "iproute2 (`ip`) not installed".into()),
            Self::Netns => match Command::new("ip").args(["netns", "list"]).output() {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(format!(
                    "`ip netns list` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => Some(format!("iproute2 (`ip`) not usable: {e}")),
            },
            Self::Bpf => (!std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled")
                .exists())
            .then(|| "kernel without the bpf() syscall".into()),
        }
    }
}

/// The first of `needs`, in order, that is not met here, as a reason.
#[must_use]
pub fn skip_reason(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|n| n.unmet())
}

/// Whether the test must skip: prints `SKIPPED: <why>` and returns true
/// when one of `needs` is not met.
#[must_use]
pub fn skip_unless(needs: &[Need]) -> bool {
    match skip_reason(needs) {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}
