//! A network namespace per test: named uniquely within the machine, deleted
//! on drop (which deletes its veths), also when the test panics. Addresses
//! and links a test makes live only inside it.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Makes namespace names unique within this test process.
static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` (program and arguments) and returns its standard output;
/// panics with its output if it cannot run or fails.
#[allow(
    clippy::must_use_candidate,
    reason = "most commands run for their effect"
)]
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n <netns> <args>`: its standard output; panics if it fails.
#[allow(
    clippy::must_use_candidate,
    reason = "most commands run for their effect"
)]
pub fn ip(netns: &str, args: &[&str]) -> String {
    let mut cmd = vec!["ip", "-n", netns];
    cmd.extend_from_slice(args);
    run(&cmd)
}

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes a MAC.
#[must_use]
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A network namespace `<prefix>-<pid>-<n>`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace, or returns `None` after printing
    /// `SKIPPED: <why>` when `ip netns add` fails or cannot run.
    #[must_use]
    pub fn new(prefix: &str) -> Option<Self> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) if out.status.success() => Some(Self { name }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot create network namespace {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot create network namespace {name}: {e}");
                None
            }
        }
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <this> <args>`: its standard output; panics if it fails.
    #[allow(
        clippy::must_use_candidate,
        reason = "most commands run for their effect"
    )]
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&self.name, args)
    }

    /// Adds veth pair `a`/`b` with the given MACs (both ends down).
    pub fn add_veth(&self, (a, mac_a): (&str, [u8; 6]), (b, mac_b): (&str, [u8; 6])) {
        self.ip(&[
            "link",
            "add",
            a,
            "address",
            &mac_string(mac_a),
            "type",
            "veth",
            "peer",
            "name",
            b,
            "address",
            &mac_string(mac_b),
        ]);
    }

    /// Sets each of `devs` up, in order.
    pub fn set_up(&self, devs: &[&str]) {
        for dev in devs {
            self.ip(&["link", "set", dev, "up"]);
        }
    }

    /// Disables IPv6 in the namespace, so that the kernel sends nothing on
    /// its own (no DAD, router solicitations or MLD) and counts stay exact.
    /// A kernel without IPv6 has nothing to silence.
    pub fn disable_ipv6(&self) {
        self.in_ns(|| {
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
        });
    }

    /// Runs `f` on a thread that has entered the namespace, so that netlink,
    /// interface names and sockets all refer to the namespace's devices. A
    /// panic in `f` is re-raised here.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("netns file exists");
                // SAFETY: `file` is an open namespace fd for the duration of
                // the call; setns only changes this thread's namespace.
                let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "deleting netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("deleting netns {}: {e}", self.name),
        }
    }
}

/// `/proc/net/snmp` as the calling thread's network namespace counts it.
#[derive(Debug)]
pub struct Snmp(String);

impl Snmp {
    /// Reads the calling thread's namespace's counters; panics if it cannot.
    #[must_use]
    pub fn read() -> Self {
        Self(std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read /proc/net/snmp"))
    }

    /// The counter `name` (a column such as `InCsumErrors`) of `proto`
    /// (`Udp`, `Tcp`, ...); panics if there is none.
    #[must_use]
    pub fn get(&self, proto: &str, name: &str) -> u64 {
        let mut lines = self
            .0
            .lines()
            .filter(|l| l.strip_prefix(proto).is_some_and(|r| r.starts_with(": ")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {proto} counter {name}"));
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    }
}
