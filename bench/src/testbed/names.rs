//! Names of what the testbed makes: the per-run prefix, namespace and veth
//! names within the kernel's limits, and the MACs of pod veths.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest namespace name the testbed makes (a file name under /run/netns).
pub const NETNS_NAME_MAX: usize = 100;
/// Node side of the link to the outside namespace.
pub const NODE_OUT_IF: &str = "pf-out";
/// Outside side of the link to the node.
pub const OUT_NODE_IF: &str = "pf-node";
/// The first node's end of the uplink to the second node.
pub const NODE_UPLINK_IF: &str = "pf-node2";
/// The second node's end of the uplink to the first node.
pub const REMOTE_UPLINK_IF: &str = "pf-node1";

/// Makes prefixes unique within the process.
static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// A fresh per-run prefix: `pf` and four hex digits from the process id, the
/// time and a counter.
#[must_use]
pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
    let mix = std::process::id().wrapping_mul(0x9e37_79b9) ^ nanos ^ n.wrapping_mul(0x85eb_ca6b);
    format!("pf{:04x}", (mix ^ (mix >> 16)) & 0xffff)
}

/// Reduces `s` to `[a-z0-9-]` (everything else becomes `-`), for namespace
/// names.
#[must_use]
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect()
}

/// The namespace name of pod `index` (`<prefix>-<ns>-<pod>`, sanitized, at
/// most [`NETNS_NAME_MAX`] characters). When that name is already `taken`
/// (sanitizing or truncating made two pods alike), the index is appended.
#[must_use]
pub fn pod_netns_name<S: std::hash::BuildHasher>(
    prefix: &str,
    namespace: &str,
    pod: &str,
    index: usize,
    taken: &HashSet<String, S>,
) -> String {
    let mut name = format!("{prefix}-{}-{}", sanitize(namespace), sanitize(pod));
    name.truncate(NETNS_NAME_MAX);
    if taken.contains(&name) {
        let suffix = format!("-{index}");
        name.truncate(NETNS_NAME_MAX - suffix.len());
        name.push_str(&suffix);
    }
    name
}

/// The node-side veth of pod `index`: `pv<index>` (at most 15 characters).
#[must_use]
pub fn host_veth_name(index: usize) -> String {
    let name = format!("pv{index}");
    assert!(name.len() <= IFNAME_MAX, "{name} is too long");
    name
}

pub(super) fn mac(index: usize, side: u8) -> String {
    let i = index as u32;
    format!(
        "02:70:66:{:02x}:{:02x}:{side:02x}",
        (i >> 8) & 0xff,
        i & 0xff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = run_prefix();
        let b = run_prefix();
        assert_eq!(a.len(), 6);
        assert!(a.starts_with("pf"));
        assert_ne!(a, b);
    }

    #[test]
    fn names_are_sanitized_and_bounded() {
        let taken = HashSet::new();
        assert_eq!(
            pod_netns_name("pf1234", "kube-system", "CoreDNS_7.x", 3, &taken),
            "pf1234-kube-system-coredns-7-x"
        );
        let long = "a".repeat(253);
        let name = pod_netns_name("pf1234", "ns", &long, 7, &taken);
        assert_eq!(name.len(), NETNS_NAME_MAX);
        let taken: HashSet<String> = [name.clone()].into();
        let again = pod_netns_name("pf1234", "ns", &long, 8, &taken);
        assert_eq!(again.len(), NETNS_NAME_MAX);
        assert!(again.ends_with("-8"));
        assert_ne!(again, name);
        // Pods that sanitize alike get their index.
        let first = pod_netns_name("pf1234", "x", "a.b", 1, &HashSet::new());
        let taken: HashSet<String> = [first.clone()].into();
        assert_eq!(first, "pf1234-x-a-b");
        assert_eq!(
            pod_netns_name("pf1234", "x", "a-b", 2, &taken),
            "pf1234-x-a-b-2"
        );
        assert_eq!(host_veth_name(65_535), "pv65535");
        for n in [
            host_veth_name(999_999_999),
            NODE_OUT_IF.into(),
            OUT_NODE_IF.into(),
            NODE_UPLINK_IF.into(),
            REMOTE_UPLINK_IF.into(),
        ] {
            assert!(n.len() <= IFNAME_MAX, "{n}");
        }
        assert_eq!(mac(0x1234, 2), "02:70:66:12:34:02");
    }
}
