//! The agent's plumbing over rtnetlink, checked against what `ip -json`
//! reports, in a fresh network namespace per test: discovery of pods behind
//! `ptp`-like /32 and /128 routes, the host-port pair, our table's routes,
//! our rules, and their removal.

use std::collections::HashMap;
use std::net::IpAddr;

use podfence_control::agent::AgentError;
use podfence_control::agent::plumbing::{
    self, HostPair, Link, PAIR_ALIAS, PlumbingConfig, PodLink,
};
use podfence_testkit::netns::{Netns, mac_string};
use podfence_testkit::{Need, skip_unless};
use serde_json::Value;

fn ip(addr: &str) -> IpAddr {
    addr.parse().unwrap()
}

fn json(ns: &Netns, args: &[&str]) -> Value {
    let mut all = vec!["-json"];
    all.extend_from_slice(args);
    let text = ns.ip(&all);
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap()
}

/// `ip -json -d link show dev <name>`, as the plumbing describes a link.
fn oracle_link(ns: &Netns, name: &str) -> Link {
    let link = &json(ns, &["-d", "link", "show", "dev", name])[0];
    Link {
        name: link["ifname"].as_str().unwrap().to_owned(),
        mac: plumbing_mac(link["address"].as_str().unwrap()),
        rx_queues: u32::try_from(link["num_rx_queues"].as_u64().unwrap()).unwrap(),
        mtu: u32::try_from(link["mtu"].as_u64().unwrap()).unwrap(),
    }
}

fn plumbing_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Host-side veth `host` with the pod's end `pod` (MAC `pod_mac`), both up,
/// `rx` receive queues on the host side, as `ptp` leaves them (the pod's
/// end stays here: only the host side matters to discovery).
fn pod_veth(ns: &Netns, host: &str, pod: &str, pod_mac: [u8; 6], rx: &str) {
    ns.ip(&[
        "link",
        "add",
        host,
        "numrxqueues",
        rx,
        "type",
        "veth",
        "peer",
        "name",
        pod,
        "address",
        &mac_string(pod_mac),
    ]);
    ns.set_up(&[host, pod]);
}

fn rules(ns: &Netns, family: &str) -> Vec<(u64, Option<String>, String)> {
    json(ns, &[family, "rule", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["priority"].as_u64().unwrap_or(0),
                r["iif"].as_str().map(str::to_owned),
                r["table"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ours(rules: &[(u64, Option<String>, String)]) -> Vec<(u64, Option<String>, String)> {
    rules
        .iter()
        .filter(|r| r.0 == 90 || r.0 == 91)
        .cloned()
        .collect()
}

fn table_routes(ns: &Netns, family: &str) -> Vec<(String, String)> {
    // `ip route show table N` fails for an IPv4 table that does not exist.
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            ns.name(),
            "-json",
            family,
            "route",
            "show",
            "table",
            "7066",
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let routes: Value =
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap();
    let mut routes: Vec<(String, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["dev"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    routes.sort();
    routes
}

#[test]
fn discover_finds_pods_behind_host_routes_as_ip_reports_them() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    let mac_a = [0x02, 0x50, 0, 0, 0, 0x0a];
    let mac_b = [0x02, 0x50, 0, 0, 0, 0x0b];
    pod_veth(&ns, "veth-a", "pod-a", mac_a, "2");
    pod_veth(&ns, "veth-b", "pod-b", mac_b, "1");
    ns.ip(&["link", "set", "veth-b", "mtu", "1400"]);
    // Pod a: one IPv4 and one IPv6 address, both with neighbour entries.
    ns.ip(&["route", "add", "10.77.0.2/32", "dev", "veth-a"]);
    ns.ip(&["-6", "route", "add", "fd77::2/128", "dev", "veth-a"]);
    for addr in ["10.77.0.2", "fd77::2"] {
        ns.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac_string(mac_a),
            "dev",
            "veth-a",
            "nud",
            "permanent",
        ]);
    }
    // Pod b: no neighbour entry; its MAC comes from what the CNI said.
    ns.ip(&["route", "add", "10.77.0.3", "dev", "veth-b"]);
    // Pod c: no neighbour entry and none known.
    ns.ip(&["route", "add", "10.77.0.4/32", "dev", "veth-b"]);
    // Not pods: a route via a gateway, a prefix, a route through our own
    // pf-host, an address with no route at all, a blackhole route.
    ns.ip(&["addr", "add", "10.77.1.1/24", "dev", "veth-b"]);
    ns.ip(&["route", "add", "10.77.0.5/32", "via", "10.77.1.9"]);
    ns.ip(&["route", "add", "10.77.2.0/24", "dev", "veth-a"]);
    pod_veth(&ns, "pf-host", "pf-dp", [0x02, 0x50, 0, 0, 0, 0x0f], "1");
    ns.ip(&["route", "add", "10.77.0.6/32", "dev", "pf-host"]);
    ns.ip(&["route", "add", "blackhole", "10.77.0.8/32"]);
    let addrs = [
        "10.77.0.2",
        "fd77::2",
        "10.77.0.3",
        "10.77.0.4",
        "10.77.0.5",
        "10.77.2.1",
        "10.77.0.6",
        "10.77.0.7",
        "10.77.0.8",
    ]
    .map(ip);
    let known: HashMap<IpAddr, [u8; 6]> = [(ip("10.77.0.3"), mac_b)].into();

    let found = ns
        .in_ns(|| plumbing::discover(&addrs, "pf-host", &known))
        .unwrap();

    let expected_pods = [
        (
            "veth-a".to_owned(),
            PodLink {
                link: oracle_link(&ns, "veth-a"),
                addrs: vec![(ip("10.77.0.2"), Some(mac_a)), (ip("fd77::2"), Some(mac_a))],
            },
        ),
        (
            "veth-b".to_owned(),
            PodLink {
                link: oracle_link(&ns, "veth-b"),
                addrs: vec![(ip("10.77.0.3"), Some(mac_b)), (ip("10.77.0.4"), None)],
            },
        ),
    ]
    .into();
    assert_eq!(found.pods, expected_pods);
    assert_eq!(found.pods["veth-a"].link.rx_queues, 2);
    assert_eq!(found.pods["veth-b"].link.mtu, 1400);
    assert_eq!(
        found.unrouted,
        [
            "10.77.0.5",
            "10.77.2.1",
            "10.77.0.6",
            "10.77.0.7",
            "10.77.0.8"
        ]
        .map(ip)
    );
}

#[test]
fn host_addresses_are_the_global_ones() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    pod_veth(&ns, "veth-a", "pod-a", [0x02, 0x50, 0, 0, 0, 0x0a], "1");
    ns.set_up(&["lo"]);
    ns.ip(&["addr", "add", "10.77.1.1/24", "dev", "veth-a"]);
    ns.ip(&[
        "addr",
        "add",
        "10.77.1.2",
        "peer",
        "10.77.9.9",
        "dev",
        "pod-a",
    ]);
    ns.ip(&["addr", "add", "fd77:1::1/64", "dev", "veth-a", "nodad"]);
    // Link scope: not an address the node's traffic comes from.
    ns.ip(&[
        "addr",
        "add",
        "10.77.3.1/24",
        "dev",
        "veth-a",
        "scope",
        "link",
    ]);
    let found = ns.in_ns(plumbing::host_addresses).unwrap();
    // Loopback's and the link-local IPv6 addresses are not global; a
    // point-to-point address is the local end, not the peer.
    assert_eq!(found, ["10.77.1.1", "10.77.1.2", "fd77:1::1"].map(ip));
}

#[test]
fn the_host_pair_is_made_configured_taken_over_and_removed() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    let config = PlumbingConfig::default();
    let pair = ns.in_ns(|| plumbing::host_pair(&config, 1400)).unwrap();
    let expected = HostPair {
        host: oracle_link(&ns, "pf-host"),
        dp: oracle_link(&ns, "pf-dp"),
        created: true,
    };
    assert_eq!(pair, expected);
    assert_eq!(pair.host.mac, pair.dp.mac, "one MAC on both ends");
    assert_eq!((pair.host.mtu, pair.dp.mtu), (1400, 1400));
    let host = &json(&ns, &["-d", "link", "show", "dev", "pf-host"])[0];
    assert_eq!(host["ifalias"], PAIR_ALIAS);
    let flags: Vec<&str> = host["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        flags.contains(&"NOARP") && flags.contains(&"UP"),
        "{flags:?}"
    );
    assert_eq!(host["linkinfo"]["info_kind"], "veth");
    let dp = &json(&ns, &["link", "show", "dev", "pf-dp"])[0];
    assert!(dp["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let rp_filter =
        ns.in_ns(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/pf-dp/rp_filter").unwrap());
    assert_eq!(rp_filter.trim(), "0");

    // Segmentation in software on pf-host (generic XDP on pf-dp).
    ns.in_ns(|| plumbing::segment_in_software("pf-host"))
        .unwrap();
    let host = &json(&ns, &["-d", "link", "show", "dev", "pf-host"])[0];
    assert_eq!(host["gso_max_segs"], 1);

    // A later start takes the pair over (marked as ours) at a new MTU.
    let again = ns.in_ns(|| plumbing::host_pair(&config, 1500)).unwrap();
    assert!(again.created);
    assert_eq!(again.host.mac, pair.host.mac);
    assert_eq!(oracle_link(&ns, "pf-dp").mtu, 1500);

    ns.in_ns(|| plumbing::remove_pair(&again)).unwrap();
    assert!(
        json(&ns, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "pf-host" && l["ifname"] != "pf-dp")
    );
}

#[test]
fn a_pair_someone_else_made_is_used_but_not_removed() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    pod_veth(&ns, "pf-host", "pf-dp", [0x02, 0x50, 0, 0, 0, 0x0f], "1");
    let config = PlumbingConfig::default();
    let pair = ns.in_ns(|| plumbing::host_pair(&config, 1500)).unwrap();
    assert!(!pair.created);
    assert!(
        json(&ns, &["link", "show", "dev", "pf-host"])[0]
            .get("ifalias")
            .is_none()
    );
    ns.in_ns(|| plumbing::remove_pair(&pair)).unwrap();
    assert_eq!(oracle_link(&ns, "pf-host"), pair.host);
}

#[test]
fn pod_routes_and_rules_go_through_our_table_and_back() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    let config = PlumbingConfig::default();
    ns.in_ns(|| plumbing::host_pair(&config, 1500)).unwrap();
    // What an earlier run left: a pod address no longer local.
    ns.ip(&[
        "route",
        "add",
        "10.77.0.9/32",
        "dev",
        "pf-host",
        "table",
        "7066",
    ]);
    let before_v4 = rules(&ns, "-4");

    ns.in_ns(|| plumbing::adopt(&config, &[ip("10.77.0.2"), ip("fd77::2")]))
        .unwrap();
    assert_eq!(
        table_routes(&ns, "-4"),
        [("10.77.0.2".to_owned(), "pf-host".to_owned())]
    );
    assert_eq!(
        table_routes(&ns, "-6"),
        [("fd77::2".to_owned(), "pf-host".to_owned())]
    );
    let expected_rules = vec![
        (90, Some("pf-dp".to_owned()), "main".to_owned()),
        (91, None, "7066".to_owned()),
    ];
    assert_eq!(ours(&rules(&ns, "-4")), expected_rules);
    assert_eq!(ours(&rules(&ns, "-6")), expected_rules);

    // One more pod, one gone; rules already there are not added twice.
    ns.in_ns(|| {
        plumbing::add_rules(&config, ip("10.77.0.3"))?;
        plumbing::route(&config, ip("10.77.0.3"))?;
        plumbing::unroute(&config, ip("10.77.0.2"));
        // Unrouting what is not routed is no error.
        plumbing::unroute(&config, ip("10.77.0.2"));
        Ok::<_, AgentError>(())
    })
    .unwrap();
    assert_eq!(
        table_routes(&ns, "-4"),
        [("10.77.0.3".to_owned(), "pf-host".to_owned())]
    );
    assert_eq!(ours(&rules(&ns, "-4")), expected_rules);
    let mut left = ns.in_ns(|| plumbing::table_routes(&config)).unwrap();
    left.sort();
    assert_eq!(left, [ip("10.77.0.3"), ip("fd77::2")]);

    // Restoring hands everything back: no rule of ours, an empty table.
    ns.in_ns(|| plumbing::restore(&config));
    assert_eq!(rules(&ns, "-4"), before_v4);
    assert!(ours(&rules(&ns, "-6")).is_empty());
    assert!(table_routes(&ns, "-4").is_empty());
    assert!(table_routes(&ns, "-6").is_empty());
    assert!(
        ns.in_ns(|| plumbing::table_routes(&config))
            .unwrap()
            .is_empty()
    );
    // Restoring twice is harmless.
    ns.in_ns(|| plumbing::restore(&config));
}

#[test]
fn failures_name_the_request_and_the_kernels_errno() {
    if skip_unless(&[Need::Root, Need::Netns]) {
        return;
    }
    let Some(ns) = Netns::new("pf-rtnl") else {
        return;
    };
    let config = PlumbingConfig::default();
    // No pf-host: nothing to route through.
    let error = ns
        .in_ns(|| plumbing::route(&config, ip("10.77.0.2")))
        .unwrap_err();
    assert!(
        matches!(&error, AgentError::NoInterface { name } if name == "pf-host"),
        "{error}"
    );
    let error = ns
        .in_ns(|| plumbing::segment_in_software("no-such-dev"))
        .unwrap_err();
    assert_eq!(error.errno(), Some(19), "ENODEV: {error}");
    let text = error.to_string();
    assert!(
        text.contains("`ip link set no-such-dev gso_max_segs 1` failed")
            && text.contains("os error 19"),
        "{text}"
    );
    // A name the kernel refuses: the pair is not made, nothing is left.
    let long = PlumbingConfig {
        dp_if: "a-name-far-too-long-for-linux".into(),
        ..PlumbingConfig::default()
    };
    let error = ns.in_ns(|| plumbing::host_pair(&long, 1500)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("ip link add pf-host type veth peer name a-name-far-too-long-for-linux"),
        "{error}"
    );
    assert!(
        json(&ns, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] == "lo")
    );
}
