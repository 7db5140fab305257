//! Ctrl-C leaves nothing behind: this test runs its own binary again as a
//! child that builds a testbed and waits; the parent sends it SIGINT and
//! checks that the child died of the signal and that none of its namespaces
//! remain. Needs root and `ip netns`; skips otherwise.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use podfence_bench::testbed::{Testbed, TestbedOptions};
use podfence_testkit::{Need, skip_unless};

const CHILD_ENV: &str = "PODFENCE_TESTBED_SIGNAL_CHILD";

/// The child: builds the testbed, prints its namespaces, then waits to be
/// interrupted. Does nothing when run as an ordinary test.
#[test]
fn child_builds_and_waits() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let path = podfence_testkit::paths::conformance_dir().join("cluster.yaml");
    let cluster = podfence_control::sources::manifests::load(&[path])
        .expect("cluster.yaml loads")
        .cluster;
    let bed = Testbed::build(
        &cluster,
        &TestbedOptions {
            external: vec!["192.0.2.10".parse().unwrap()],
            external_ports: Vec::new(),
            ..TestbedOptions::default()
        },
    )
    .expect("testbed builds");
    println!("NAMESPACES {}", bed.namespaces().join(" "));
    std::thread::sleep(Duration::from_secs(30));
    panic!("not interrupted");
}

#[test]
fn sigint_removes_every_namespace() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "child_builds_and_waits", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let names: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("NAMESPACES ")
                .map(|n| n.split(' ').map(str::to_owned).collect())
        })
        .expect("child reports its namespaces");
    assert_eq!(names.len(), 11, "{names:?}");
    for n in &names {
        assert!(Path::new("/run/netns").join(n).exists(), "{n} exists");
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = child.wait().expect("child exits");
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    for n in &names {
        assert!(!Path::new("/run/netns").join(n).exists(), "{n} left behind");
    }
}
